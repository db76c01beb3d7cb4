//! The similarity index: an HNSW graph (hnsw_rs) over an embeddings directory's vectors, saved
//! as a directory (`index.json`, the graph dump, the vectors and the manifest) and loaded back,
//! plus exact search and recall evaluation against it.
//!
//! hnsw_rs keeps a node's link list full by dropping its farthest link, so an outlier, or one of
//! two near-duplicates, can lose every link that leads to it and become unreachable. The build
//! therefore searches every indexed vector for itself; the rows that do not come back are listed
//! in `index.json` and scored exactly on every search, so each indexed row stays findable.
//!
//! hnsw_rs builds, saves and loads the graph; searches run on a flat copy of its links
//! ([`crate::flat_graph`]). [`SearchIndex::open`] reads the directory, loads hnsw_rs's dump and
//! copies the links out, so the index it returns owns everything it searches; loading the dump
//! is much cheaper than rebuilding the graph on every load (about 1.8 s for 9,000 1024-d vectors
//! on 2 cores).
//!
//! An index built with a post-processing transform ([`dim_vectors::post_process`], `--pca D`) stores
//! it beside the vectors, which stay as embedded: the graph holds the transformed rows, and
//! every query, by vector, by row or by image, is transformed the same way before it is
//! searched. An index without one has no `post_process` entry in `index.json` and searches the
//! vectors as embedded.

use crate::flat_graph::FlatGraph;
use crate::vector_distance::{DistDot, DistL2};
use dim_vectors::distance::Metric;
use dim_vectors::manifest::{self, MANIFEST_FILE, Manifest, ManifestError, ModelIdentity};
use dim_vectors::npy::{self, Matrix, NpyError};
use dim_vectors::post_process::{Pca, PcaDescription, PcaSpec, PostProcessError};
use hnsw_rs::prelude::{AnnT, Distance, Hnsw, HnswIo};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File name of the index description.
pub const INDEX_FILE: &str = "index.json";
/// File name of the vectors (all manifest rows, as given, including held-out ones).
pub const VECTORS_FILE: &str = "vectors.npy";
/// Base name of hnsw_rs's dump files (`graph.hnsw.graph`, `graph.hnsw.data`).
pub const GRAPH_BASENAME: &str = "graph";
/// Version of the index directory layout.
pub const INDEX_FORMAT_VERSION: u32 = 1;
/// hnsw_rs's cap on layers.
const MAX_LAYERS: usize = 16;
/// Results and candidate-list size of the build's search of each indexed vector for itself.
const SELF_CHECK_K: usize = 2;
const SELF_CHECK_EF: usize = 10;

/// Graph construction parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IndexParams {
    /// Comparison.
    pub metric: Metric,
    /// Links per node and layer (hnsw_rs's `max_nb_connection`; at most 256).
    pub m: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Rows left out of the graph, as queries for [`evaluate`] that the index has not seen.
    pub hold_out: usize,
    /// A PCA (and whitening) to fit on the indexed rows and apply to every vector; none when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_process: Option<PcaSpec>,
}

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams { metric: Metric::Cosine, m: 16, ef_construction: 200, hold_out: 0, post_process: None }
    }
}

/// The contents of `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexInfo {
    /// Layout version.
    pub format_version: u32,
    /// Toolkit version that built it.
    pub toolkit_version: String,
    /// The model and feature of the vectors.
    pub model: ModelIdentity,
    /// Construction parameters.
    pub params: IndexParams,
    /// Vectors in the graph.
    pub count: usize,
    /// Manifest rows left out of the graph (the last `hold_out` rows of a fixed shuffle).
    pub held_out: Vec<usize>,
    /// Indexed rows the graph did not return for their own vector; searches score them exactly.
    #[serde(default)]
    pub unreachable: Vec<usize>,
    /// Seconds spent inserting into the graph and searching it for every indexed row.
    pub build_seconds: f64,
    /// The post-processing transform fitted on the indexed rows and stored beside them, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_process: Option<PcaDescription>,
}

impl IndexInfo {
    /// Reads and checks `index.json` of the index in `dir`, without loading the index.
    pub fn read(dir: &Path) -> Result<Self, IndexError> {
        let info_path = dir.join(INDEX_FILE);
        let text = std::fs::read_to_string(&info_path)
            .map_err(|e| io_error(&info_path)(format!("{e} (is this a dim-search index directory?)")))?;
        let info: IndexInfo = serde_json::from_str(&text).map_err(|e| io_error(&info_path)(e.to_string()))?;
        if info.format_version != INDEX_FORMAT_VERSION {
            return Err(io_error(&info_path)(format!("unknown index format {}", info.format_version)));
        }
        Ok(info)
    }
}

/// The copy of the embeddings' manifest that the index in `dir` was built from, without
/// loading the index.
pub fn read_index_manifest(dir: &Path) -> Result<Manifest, IndexError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io_error(dir)(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| io_error(&path)(e.to_string()))
}

/// Errors building, loading or searching an index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The embeddings directory is unusable.
    #[error(transparent)]
    Embeddings(#[from] ManifestError),
    /// A vectors file is unusable.
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// The post-processing transform cannot be fitted, stored or loaded.
    #[error(transparent)]
    PostProcess(#[from] PostProcessError),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A parameter is out of range.
    #[error("invalid parameter: {0}")]
    Parameter(String),
    /// A query does not fit the index.
    #[error("query does not fit the index: {0}")]
    Query(String),
}

fn io_error(path: &Path) -> impl Fn(String) -> IndexError + '_ {
    move |message| IndexError::Io { path: path.to_path_buf(), message }
}

enum Graph<'a> {
    Cosine(Hnsw<'a, f32, DistDot>),
    L2(Hnsw<'a, f32, DistL2>),
}

impl Graph<'_> {
    fn new(params: &IndexParams, count: usize) -> Self {
        let max_elements = count.max(1);
        match params.metric {
            Metric::Cosine => {
                Graph::Cosine(Hnsw::new(params.m, max_elements, MAX_LAYERS, params.ef_construction, DistDot))
            }
            Metric::L2 => {
                Graph::L2(Hnsw::new(params.m, max_elements, MAX_LAYERS, params.ef_construction, DistL2))
            }
        }
    }

    /// Inserts the first item alone, then the rest in parallel: hnsw_rs links a point only once
    /// an entry point exists, so two points inserted together into an empty graph could both
    /// stay unlinked.
    fn insert(&mut self, items: &[(&[f32], usize)]) {
        let Some((first, rest)) = items.split_first() else { return };
        let rest = rest.to_vec();
        match self {
            Graph::Cosine(h) => {
                h.insert_slice(*first);
                h.parallel_insert_slice(&rest);
                h.set_searching_mode(true);
            }
            Graph::L2(h) => {
                h.insert_slice(*first);
                h.parallel_insert_slice(&rest);
                h.set_searching_mode(true);
            }
        }
    }

    /// Copies the links out into a [`FlatGraph`] over `vectors` (every row, in graph space).
    fn flatten(&self, vectors: Vec<f32>, dim: usize, metric: Metric) -> FlatGraph {
        let rows = vectors.len() / dim.max(1);
        let (links, entry) = match self {
            Graph::Cosine(h) => links_of(h, rows),
            Graph::L2(h) => links_of(h, rows),
        };
        FlatGraph::new(&links, entry, vectors, dim, metric)
    }

    /// The `rows` rows of `dim` values the graph holds, row-major by origin id, in graph space;
    /// rows it does not hold are zero. An error when a point does not fit.
    fn stored_rows(&self, rows: usize, dim: usize) -> Result<Vec<f32>, String> {
        match self {
            Graph::Cosine(h) => rows_of(h, rows, dim),
            Graph::L2(h) => rows_of(h, rows, dim),
        }
    }

    fn dump(&self, dir: &Path) -> Result<(), IndexError> {
        match self {
            Graph::Cosine(h) => h.file_dump(dir, GRAPH_BASENAME),
            Graph::L2(h) => h.file_dump(dir, GRAPH_BASENAME),
        }
        .map(|_| ())
        .map_err(|e| io_error(dir)(format!("cannot write the graph: {e:#}")))
    }
}

/// `links[layer][row]` of every point in an hnsw_rs graph over `rows` rows, and a point on its
/// top layer.
fn links_of<D: Distance<f32> + Send + Sync>(
    graph: &Hnsw<'_, f32, D>,
    rows: usize,
) -> (Vec<Vec<Vec<u32>>>, Option<u32>) {
    let mut links: Vec<Vec<Vec<u32>>> = Vec::new();
    let mut entry: Option<(u8, u32)> = None;
    for point in graph.get_point_indexation() {
        let row = point.get_origin_id() as u32;
        let level = point.get_point_id().0;
        if entry.is_none_or(|(top, _)| level > top) {
            entry = Some((level, row));
        }
        for (layer, neighbours) in
            point.get_neighborhood_id().into_iter().enumerate().take(usize::from(level) + 1)
        {
            if links.len() <= layer {
                links.resize_with(layer + 1, || vec![Vec::new(); rows]);
            }
            links[layer][row as usize] = neighbours.iter().map(|n| n.d_id as u32).collect();
        }
    }
    (links, entry.map(|(_, row)| row))
}

/// The vectors of the points of an hnsw_rs graph, at their origin ids in a `[rows, dim]` matrix;
/// an error when a point does not fit it (a graph from another index).
fn rows_of<D: Distance<f32> + Send + Sync>(
    graph: &Hnsw<'_, f32, D>,
    rows: usize,
    dim: usize,
) -> Result<Vec<f32>, String> {
    let mut values = vec![0f32; rows * dim];
    for point in graph.get_point_indexation() {
        let (row, vector) = (point.get_origin_id(), point.get_v());
        if row >= rows || vector.len() != dim {
            return Err(format!(
                "the graph holds a {}-d point for row {row}, but the index has {rows} rows of {dim}; rebuild the index",
                vector.len()
            ));
        }
        values[row * dim..(row + 1) * dim].copy_from_slice(vector);
    }
    Ok(values)
}

/// The indexed rows that a search for their own vector does not return.
fn rows_missed_by_own_vector(graph: &FlatGraph, rows: &[usize]) -> Vec<usize> {
    rows.par_iter()
        .copied()
        .filter(|&row| {
            !graph.search(graph.row(row), SELF_CHECK_K, SELF_CHECK_EF).iter().any(|&(found, _)| found == row)
        })
        .collect()
}

/// Brings a vector into the space the graph compares in: unit length for cosine, unchanged for
/// L2.
fn to_graph_space(metric: Metric, vector: &[f32]) -> Vec<f32> {
    match metric {
        Metric::Cosine => {
            let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
            let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            vector.iter().map(|v| v * scale).collect()
        }
        Metric::L2 => vector.to_vec(),
    }
}

/// One vector as embedded brought into graph space: post-processed if the index is, then
/// prepared for the metric.
fn vector_to_graph_space(
    metric: Metric,
    post_process: Option<&Pca>,
    vector: &[f32],
) -> Result<Vec<f32>, PostProcessError> {
    Ok(match post_process {
        Some(pca) => to_graph_space(metric, &pca.apply(vector)?),
        None => to_graph_space(metric, vector),
    })
}

/// The width of the graph's rows: the post-processing's output, or the vectors as embedded.
fn graph_dim(post_process: Option<&Pca>, embedded_dim: usize) -> usize {
    post_process.map_or(embedded_dim, |pca| pca.description().dims)
}

/// Every row of `vectors` (as embedded) in graph space, row-major, and the graph's width.
fn graph_space_rows(
    metric: Metric,
    post_process: Option<&Pca>,
    vectors: &Matrix,
) -> Result<(Vec<f32>, usize), IndexError> {
    let values = match post_process {
        Some(pca) => Cow::Owned(pca.apply_rows(&vectors.values)?),
        None => Cow::Borrowed(&vectors.values[..]),
    };
    let dim = graph_dim(post_process, vectors.cols);
    let rows = values.par_chunks(dim.max(1)).flat_map_iter(|row| to_graph_space(metric, row)).collect();
    Ok((rows, dim))
}

/// Turns a graph distance into the score shown to users: cosine similarity or L2 distance.
fn score(metric: Metric, distance: f32) -> f32 {
    match metric {
        Metric::Cosine => 1.0 - distance,
        Metric::L2 => distance,
    }
}

/// SplitMix64: reproducible hold-outs and evaluation noise without a random-number dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal sample (Box–Muller).
    fn next_gaussian(&mut self) -> f32 {
        let u1 = self.next_unit().max(f64::MIN_POSITIVE);
        let u2 = self.next_unit();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// A reproducible shuffle of `0..count`.
fn shuffled(count: usize, seed: u64) -> Vec<usize> {
    let mut random = SplitMix64(seed);
    let mut order: Vec<usize> = (0..count).collect();
    for i in (1..count).rev() {
        order.swap(i, (random.next_u64() % (i as u64 + 1)) as usize);
    }
    order
}

/// Builds an index from an embeddings directory into `out` (replaced atomically: the new
/// directory is completed beside it, then renamed into place).
pub fn build(embeddings: &Path, out: &Path, params: &IndexParams) -> Result<IndexInfo, IndexError> {
    let manifest = Manifest::read(embeddings)?;
    let vectors = npy::read_matrix(&embeddings.join(manifest::EMBEDDINGS_FILE))?;
    build_from_vectors(manifest, &vectors, out, params)
}

fn check_params(params: &IndexParams) -> Result<(), IndexError> {
    if params.m == 0 || params.m > 256 {
        return Err(IndexError::Parameter(format!("--m must be in 1..=256, got {}", params.m)));
    }
    if params.ef_construction == 0 {
        return Err(IndexError::Parameter("--ef-construction must be at least 1".into()));
    }
    Ok(())
}

/// Builds an index over `vectors` (as embedded), whose rows `manifest` describes in order, into
/// `out`, as [`build`] does for an embeddings directory.
pub fn build_from_vectors(
    manifest: Manifest,
    vectors: &Matrix,
    out: &Path,
    params: &IndexParams,
) -> Result<IndexInfo, IndexError> {
    if manifest.count != vectors.rows
        || manifest.rows.len() != vectors.rows
        || manifest.model.dim != vectors.cols
    {
        return Err(IndexError::Parameter(format!(
            "the manifest describes {} rows of {} values, the vectors are {} rows of {}",
            manifest.rows.len(),
            manifest.model.dim,
            vectors.rows,
            vectors.cols
        )));
    }
    check_params(params)?;
    if params.hold_out >= vectors.rows.max(1) {
        return Err(IndexError::Parameter(format!(
            "--hold-out {} leaves nothing to index ({} rows)",
            params.hold_out, vectors.rows
        )));
    }
    let mut held_out: Vec<usize> =
        shuffled(vectors.rows, 0x00D1_0000).split_off(vectors.rows - params.hold_out);
    held_out.sort_unstable();
    let indexed: Vec<usize> = (0..vectors.rows).filter(|i| held_out.binary_search(i).is_err()).collect();

    let post_process = match &params.post_process {
        Some(spec) => {
            let fitted_on: Cow<[f32]> = if held_out.is_empty() {
                Cow::Borrowed(&vectors.values)
            } else {
                Cow::Owned(indexed.iter().flat_map(|&i| vectors.row(i).iter().copied()).collect())
            };
            Some(Pca::fit(&fitted_on, vectors.cols, spec)?)
        }
        None => None,
    };
    let (prepared, dim) = graph_space_rows(params.metric, post_process.as_ref(), vectors)?;
    let items: Vec<(&[f32], usize)> =
        indexed.iter().map(|&i| (&prepared[i * dim..(i + 1) * dim], i)).collect();
    let mut graph = Graph::new(params, items.len());
    let started = Instant::now();
    graph.insert(&items);
    let unreachable = rows_missed_by_own_vector(&graph.flatten(prepared, dim, params.metric), &indexed);
    let build_seconds = started.elapsed().as_secs_f64();

    let info = IndexInfo {
        format_version: INDEX_FORMAT_VERSION,
        toolkit_version: dim_models::TOOLKIT_VERSION.to_string(),
        model: manifest.model.clone(),
        params: *params,
        count: indexed.len(),
        held_out,
        unreachable,
        build_seconds,
        post_process: post_process.as_ref().map(|pca| pca.description().clone()),
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| io_error(parent)(e.to_string()))?;
    let staging = tempfile::Builder::new()
        .prefix(".index.")
        .tempdir_in(parent)
        .map_err(|e| io_error(parent)(e.to_string()))?;
    graph.dump(staging.path())?;
    npy::write_matrix(&staging.path().join(VECTORS_FILE), vectors.cols.max(1), &vectors.values)
        .map_err(|e| io_error(&staging.path().join(VECTORS_FILE))(e.to_string()))?;
    manifest::write_json(&staging.path().join(MANIFEST_FILE), &manifest)?;
    if let Some(pca) = &post_process {
        pca.save(staging.path())?;
    }
    manifest::write_json(&staging.path().join(INDEX_FILE), &info)?;
    replace_dir(staging, out)?;
    Ok(info)
}

/// Copies the index directory `from` to `out` (replaced atomically, as [`build`] replaces it).
pub fn copy(from: &Path, out: &Path) -> Result<(), IndexError> {
    IndexInfo::read(from)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| io_error(parent)(e.to_string()))?;
    let staging = tempfile::Builder::new()
        .prefix(".index.")
        .tempdir_in(parent)
        .map_err(|e| io_error(parent)(e.to_string()))?;
    for entry in std::fs::read_dir(from).map_err(|e| io_error(from)(e.to_string()))? {
        let entry = entry.map_err(|e| io_error(from)(e.to_string()))?;
        let target = staging.path().join(entry.file_name());
        std::fs::copy(entry.path(), &target).map_err(|e| io_error(&target)(e.to_string()))?;
    }
    replace_dir(staging, out)
}

/// Moves the finished staging directory to `out`, replacing an older index there.
fn replace_dir(staging: tempfile::TempDir, out: &Path) -> Result<(), IndexError> {
    if out.exists() {
        if !out.join(INDEX_FILE).exists()
            && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true)
        {
            return Err(io_error(out)("exists and is not an index directory; refusing to replace it".into()));
        }
        let old = out.with_extension("old-index");
        std::fs::rename(out, &old).map_err(|e| io_error(out)(e.to_string()))?;
        std::fs::rename(staging.keep(), out).map_err(|e| io_error(out)(e.to_string()))?;
        std::fs::remove_dir_all(&old).map_err(|e| io_error(&old)(e.to_string()))?;
    } else {
        std::fs::rename(staging.keep(), out).map_err(|e| io_error(out)(e.to_string()))?;
    }
    Ok(())
}

/// Reads and checks an index directory and loads its graph. hnsw_rs's loaded graph borrows the
/// `HnswIo` loader that read it (its issue #19); both live only until the links are copied out.
fn open_index(dir: &Path) -> Result<SearchIndex, IndexError> {
    let info = IndexInfo::read(dir)?;
    let manifest = read_index_manifest(dir)?;
    let vectors = npy::read_matrix(&dir.join(VECTORS_FILE))?;
    if vectors.rows != manifest.count || info.count + info.held_out.len() != manifest.count {
        return Err(io_error(dir)("index files disagree on the number of rows; rebuild the index".into()));
    }
    let post_process = match &info.post_process {
        Some(description) => Some(Pca::load(dir, description)?),
        None => None,
    };
    let mut loader = HnswIo::new(dir, GRAPH_BASENAME);
    let load_error = |e: anyhow::Error| IndexError::Io {
        path: dir.join(format!("{GRAPH_BASENAME}.hnsw.graph")),
        message: format!("cannot load the graph: {e:#}"),
    };
    let metric = info.params.metric;
    let loaded = match metric {
        Metric::Cosine => Graph::Cosine(loader.load_hnsw::<f32, DistDot>().map_err(load_error)?),
        Metric::L2 => Graph::L2(loader.load_hnsw::<f32, DistL2>().map_err(load_error)?),
    };
    // The graph holds its rows as they were inserted, in graph space: no need to transform
    // every row again. The held-out rows it does not hold are transformed here.
    let dim = graph_dim(post_process.as_ref(), vectors.cols);
    let mut rows = loaded.stored_rows(vectors.rows, dim).map_err(|message| IndexError::Io {
        path: dir.join(format!("{GRAPH_BASENAME}.hnsw.data")),
        message,
    })?;
    for &row in &info.held_out {
        let transformed = vector_to_graph_space(metric, post_process.as_ref(), vectors.row(row))?;
        rows[row * dim..(row + 1) * dim].copy_from_slice(&transformed);
    }
    let graph = loaded.flatten(rows, dim, metric);
    Ok(SearchIndex { info, manifest, vectors, post_process, graph })
}

/// One search result. In JSON the path is written losslessly: `path`, plus `path_bytes_hex`
/// for a name that is not UTF-8 ([`dim_models::path_record`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "HitJson")]
pub struct Hit {
    /// 1-based rank.
    pub rank: usize,
    /// Manifest row.
    pub row: usize,
    /// Cosine similarity (higher is closer) or L2 distance (lower is closer).
    pub score: f32,
    /// The image file.
    pub path: PathBuf,
}

/// [`Hit`] as JSON holds it.
#[derive(Serialize)]
struct HitJson {
    rank: usize,
    row: usize,
    score: f32,
    #[serde(flatten)]
    path: dim_models::path_record::PathRecord,
}

impl From<Hit> for HitJson {
    fn from(hit: Hit) -> Self {
        HitJson {
            rank: hit.rank,
            row: hit.row,
            score: hit.score,
            path: dim_models::path_record::PathRecord::of(&hit.path),
        }
    }
}

/// A loaded, searchable index; it owns everything it searches.
pub struct SearchIndex {
    /// `index.json`.
    pub info: IndexInfo,
    /// The rows' files.
    pub manifest: Manifest,
    /// All rows' vectors as embedded (held-out rows included).
    pub vectors: Matrix,
    /// The post-processing transform applied to every row and query, if any.
    pub post_process: Option<Pca>,
    /// The graph, which also holds every row in the graph's space for exact scoring.
    graph: FlatGraph,
}

impl SearchIndex {
    /// Opens the index directory `dir`: reads and checks its files and loads the graph.
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        open_index(dir)
    }

    /// Brings a query vector (as embedded) into graph space: the index's post-processing, then
    /// the metric's preparation. Every search path goes through here.
    pub fn query_to_graph_space(&self, query: &[f32]) -> Result<Vec<f32>, IndexError> {
        if query.len() != self.info.model.dim {
            return Err(IndexError::Query(format!(
                "vector has {} values, the index holds {}-d vectors",
                query.len(),
                self.info.model.dim
            )));
        }
        Ok(vector_to_graph_space(self.info.params.metric, self.post_process.as_ref(), query)?)
    }

    fn hits(&self, found: Vec<(usize, f32)>) -> Vec<Hit> {
        found
            .into_iter()
            .enumerate()
            .map(|(i, (row, distance))| Hit {
                rank: i + 1,
                row,
                score: score(self.info.params.metric, distance),
                path: self.manifest.rows[row].path.clone(),
            })
            .collect()
    }

    /// The `k` nearest indexed rows to `query` (a vector as embedded), searching with `ef`.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>, IndexError> {
        let query = self.query_to_graph_space(query)?;
        let found = self.graph.search(&query, k, ef);
        Ok(self.hits(self.with_unreachable(&query, found, k)))
    }

    /// The exact `k` nearest indexed rows by brute force.
    pub fn exact_search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, IndexError> {
        Ok(self.hits(self.exact(&self.query_to_graph_space(query)?, k)))
    }

    /// Merges the exactly scored unreachable rows into the graph's `found` and keeps the `k` best.
    fn with_unreachable(&self, query: &[f32], mut found: Vec<(usize, f32)>, k: usize) -> Vec<(usize, f32)> {
        if self.info.unreachable.is_empty() {
            return found;
        }
        for &row in &self.info.unreachable {
            if !found.iter().any(|&(r, _)| r == row) {
                found.push((row, self.graph.distance_to_row(query, row)));
            }
        }
        found.sort_by(|a, b| a.1.total_cmp(&b.1));
        found.truncate(k);
        found
    }

    fn exact(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        let mut all: Vec<(usize, f32)> = (0..self.vectors.rows)
            .filter(|i| self.info.held_out.binary_search(i).is_err())
            .map(|i| (i, self.graph.distance_to_row(query, i)))
            .collect();
        let k = k.min(all.len());
        if k == 0 {
            return Vec::new();
        }
        all.select_nth_unstable_by(k - 1, |a, b| a.1.total_cmp(&b.1));
        all.truncate(k);
        all.sort_by(|a, b| a.1.total_cmp(&b.1));
        all
    }
}

/// Where evaluation queries came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuerySource {
    /// Rows held out at build time: real vectors the graph has never seen.
    HeldOut,
    /// Indexed rows plus Gaussian noise of 0.3× their length (when nothing was held out).
    Perturbed,
}

/// Recall and speed of the graph against exact search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Where the queries came from.
    pub query_source: QuerySource,
    /// Number of queries.
    pub queries: usize,
    /// Neighbours per query.
    pub k: usize,
    /// Search candidate list size.
    pub ef: usize,
    /// Mean fraction of the exact k nearest found.
    pub recall_at_k: f64,
    /// Queries per second, all queries searched in parallel (best of three runs).
    pub queries_per_second: f64,
    /// Queries per second by exact brute force (queries in parallel), for comparison.
    pub exact_queries_per_second: f64,
    /// Seconds the graph took to build.
    pub build_seconds: f64,
    /// Vectors in the graph.
    pub indexed: usize,
}

/// Timed repetitions of each evaluation search.
const SEARCH_REPEATS: usize = 3;

/// Measures recall@k and queries/s on up to `queries` queries, once per `ef` value (the exact
/// neighbours are computed once).
pub fn evaluate(
    index: &SearchIndex,
    queries: usize,
    k: usize,
    efs: &[usize],
) -> Result<Vec<Evaluation>, IndexError> {
    if k == 0 {
        return Err(IndexError::Parameter("-k must be at least 1".into()));
    }
    let (query_source, raw): (QuerySource, Vec<Vec<f32>>) = if index.info.held_out.is_empty() {
        let mut noise = SplitMix64(0x5EED);
        let rows = shuffled(index.vectors.rows, 0x0E7A_1000);
        let perturbed =
            rows.into_iter().take(queries).map(|i| perturb(index.vectors.row(i), 0.3, &mut noise)).collect();
        (QuerySource::Perturbed, perturbed)
    } else {
        let rows = index.info.held_out.iter().take(queries).map(|&i| index.vectors.row(i).to_vec()).collect();
        (QuerySource::HeldOut, rows)
    };
    if raw.is_empty() {
        return Err(IndexError::Parameter("no queries to evaluate".into()));
    }
    let prepared: Vec<Vec<f32>> =
        raw.iter().map(|q| index.query_to_graph_space(q)).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let exact: Vec<Vec<(usize, f32)>> = prepared.par_iter().map(|q| index.exact(q, k)).collect();
    let exact_seconds = started.elapsed().as_secs_f64();
    let mut evaluations = Vec::with_capacity(efs.len());
    for &ef in efs {
        // The fastest of a few identical runs: the others mostly measure other processes.
        let mut search_seconds = f64::INFINITY;
        let mut found = Vec::new();
        for _ in 0..SEARCH_REPEATS {
            let started = Instant::now();
            found = prepared
                .par_iter()
                .map(|query| index.with_unreachable(query, index.graph.search(query, k, ef), k))
                .collect();
            search_seconds = search_seconds.min(started.elapsed().as_secs_f64());
        }
        let recall = found
            .iter()
            .zip(&exact)
            .map(|(got, want)| {
                let hits = want.iter().filter(|(row, _)| got.iter().any(|(g, _)| g == row)).count();
                hits as f64 / want.len().max(1) as f64
            })
            .sum::<f64>()
            / exact.len() as f64;
        evaluations.push(Evaluation {
            query_source,
            queries: prepared.len(),
            k,
            ef,
            recall_at_k: recall,
            queries_per_second: prepared.len() as f64 / search_seconds.max(1e-9),
            exact_queries_per_second: prepared.len() as f64 / exact_seconds.max(1e-9),
            build_seconds: index.info.build_seconds,
            indexed: index.info.count,
        });
    }
    Ok(evaluations)
}

/// `vector` plus Gaussian noise whose expected length is `relative` times the vector's.
fn perturb(vector: &[f32], relative: f32, random: &mut SplitMix64) -> Vec<f32> {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    let sigma = relative * norm / (vector.len().max(1) as f32).sqrt();
    vector.iter().map(|v| v + sigma * random.next_gaussian()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::tap::Feature;
    use dim_vectors::manifest::{MANIFEST_FORMAT_VERSION, ManifestRow};

    /// An index over `vectors` whose graph leaves out `orphan`, as hnsw_rs can leave a row
    /// without incoming links, with `listed` as the rows the build found unreachable.
    fn search_with_orphan(vectors: &Matrix, orphan: usize, listed: Vec<usize>, query: &[f32]) -> Vec<Hit> {
        let params = IndexParams::default();
        let (prepared, dim) = graph_space_rows(params.metric, None, vectors).unwrap();
        let items: Vec<(&[f32], usize)> = (0..vectors.rows)
            .filter(|&i| i != orphan)
            .map(|i| (&prepared[i * dim..(i + 1) * dim], i))
            .collect();
        let mut hnsw = Graph::new(&params, items.len());
        hnsw.insert(&items);
        let graph = hnsw.flatten(prepared, dim, params.metric);
        let model = ModelIdentity {
            checkpoint_sha256: "test".into(),
            preset: "basic32x32".into(),
            feature: Feature::Embedding,
            dim: vectors.cols,
        };
        let info = IndexInfo {
            format_version: INDEX_FORMAT_VERSION,
            toolkit_version: dim_models::TOOLKIT_VERSION.into(),
            model: model.clone(),
            params,
            count: vectors.rows,
            held_out: Vec::new(),
            unreachable: listed,
            build_seconds: 0.0,
            post_process: None,
        };
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            toolkit_version: dim_models::TOOLKIT_VERSION.into(),
            model,
            embeddings_sha256: None,
            search_recipe: None,
            count: vectors.rows,
            rows: (0..vectors.rows)
                .map(|i| ManifestRow { path: PathBuf::from(format!("/v/{i}.png")), size: 1, mtime_ns: 0 })
                .collect(),
        };
        let index = SearchIndex { info, manifest, vectors: vectors.clone(), post_process: None, graph };
        index.search(query, 3, 64).unwrap()
    }

    #[test]
    fn a_row_the_graph_cannot_reach_is_still_found_when_listed_as_unreachable() {
        let mut random = SplitMix64(3);
        let (rows, cols) = (200, 24);
        let values = (0..rows * cols).map(|_| random.next_gaussian()).collect();
        let vectors = Matrix { rows, cols, values };
        let orphan = 17;
        let query = vectors.row(orphan).to_vec();

        let unlisted = search_with_orphan(&vectors, orphan, Vec::new(), &query);
        assert!(unlisted.iter().all(|hit| hit.row != orphan), "{unlisted:?}");

        let listed = search_with_orphan(&vectors, orphan, vec![orphan], &query);
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].row, orphan, "{listed:?}");
        assert!((listed[0].score - 1.0).abs() < 1e-4, "{listed:?}");
        assert_eq!(
            &listed[1..],
            &unlisted[..2].iter().map(|h| Hit { rank: h.rank + 1, ..h.clone() }).collect::<Vec<_>>()[..]
        );
    }
}
