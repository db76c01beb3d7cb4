//! `NativeIndex`: a dim-search index directory opened for search (batched queries in parallel,
//! the GIL released), built from numpy vectors, or copied atomically to where it is saved.

use crate::embedding::NativeEmbedder;
use crate::errors::{self, Kind};
use dim_index::index::{self, IndexError, IndexParams, SearchIndex};
use dim_models::onnx_metadata::SearchRecipe;
use dim_models::tap::Feature;
use dim_vectors::distance::Metric;
use dim_vectors::manifest::{MANIFEST_FORMAT_VERSION, Manifest, ManifestRow, ModelIdentity};
use dim_vectors::npy::Matrix;
use dim_vectors::post_process::{DEFAULT_WHITEN_EPS, PcaSpec, PostProcessChoice};
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray2};
use pyo3::prelude::*;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Queries searched between two checks for Ctrl-C.
const QUERIES_PER_CHECK: usize = 4096;

/// Identity recorded for vectors that no embedder of this package made.
const EXTERNAL: &str = "external";

/// An opened index.
#[pyclass(frozen, module = "dim_toolkit._native")]
pub struct NativeIndex {
    index: SearchIndex,
}

/// The row numbers and scores of a batch of searches.
type SearchResult<'py> = (Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>);

pub fn index_error(error: IndexError) -> PyErr {
    match error {
        IndexError::Query(_) => errors::from_error(Kind::Dimension, "", error),
        other => errors::from_error(Kind::General, "", other),
    }
}

/// The post-processing for `rows` vectors: `pca` dimensions (0: none) when given, else the
/// model's recommended recipe when the collection is large enough for it, as `dim-search build`
/// chooses.
pub fn post_process(
    pca: Option<usize>,
    whiten: bool,
    recipe: Option<SearchRecipe>,
    rows: usize,
) -> Option<PcaSpec> {
    PostProcessChoice::from_flags(pca, whiten, DEFAULT_WHITEN_EPS).resolve(recipe, rows)
}

pub fn index_params(
    metric: &str,
    m: usize,
    ef_construction: usize,
    hold_out: usize,
    post_process: Option<PcaSpec>,
) -> PyResult<IndexParams> {
    let metric: Metric = metric.parse().map_err(errors::bad_argument)?;
    Ok(IndexParams { metric, m, ef_construction, hold_out, post_process })
}

#[pymethods]
impl NativeIndex {
    /// Opens an index directory written by `dim-search build` or by this package.
    #[staticmethod]
    fn open(py: Python<'_>, dir: PathBuf) -> PyResult<Self> {
        let index = py.detach(|| SearchIndex::open(&dir)).map_err(index_error)?;
        Ok(NativeIndex { index })
    }

    /// The `k` nearest indexed rows of each query (rows of a (Q, D) array, vectors as embedded):
    /// row numbers (-1 where fewer than `k` rows are indexed) and scores (cosine similarity, or
    /// L2 distance; NaN where there is no row), best first.
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray2<'py, f32>,
        k: usize,
        ef: usize,
        exact: bool,
    ) -> PyResult<SearchResult<'py>> {
        let queries = queries.as_array();
        let (count, width) = queries.dim();
        if width != self.index.info.model.dim {
            return Err(errors::raise(
                Kind::Dimension,
                format!(
                    "query does not fit the index: vector has {width} values, the index holds {}-d vectors",
                    self.index.info.model.dim
                ),
            ));
        }
        let values: Vec<f32> = queries.iter().copied().collect();
        let mut ids = vec![-1i64; count * k];
        let mut scores = vec![f32::NAN; count * k];
        let rows_per_check = QUERIES_PER_CHECK.max(1);
        for start in (0..count).step_by(rows_per_check) {
            let end = (start + rows_per_check).min(count);
            py.detach(|| {
                ids[start * k..end * k]
                    .par_chunks_mut(k.max(1))
                    .zip(scores[start * k..end * k].par_chunks_mut(k.max(1)))
                    .enumerate()
                    .try_for_each(|(offset, (ids, scores))| {
                        let query = &values[(start + offset) * width..(start + offset + 1) * width];
                        let hits = if exact {
                            self.index.exact_search(query, k)?
                        } else {
                            self.index.search(query, k, ef.max(k))?
                        };
                        for (slot, hit) in hits.iter().take(k).enumerate() {
                            ids[slot] = hit.row as i64;
                            scores[slot] = hit.score;
                        }
                        Ok::<(), IndexError>(())
                    })
            })
            .map_err(index_error)?;
            py.check_signals()?;
        }
        let shape = (count, k);
        let ids = ndarray::Array2::from_shape_vec(shape, ids).expect("count × k ids");
        let scores = ndarray::Array2::from_shape_vec(shape, scores).expect("count × k scores");
        Ok((ids.into_pyarray(py), scores.into_pyarray(py)))
    }

    /// Every row's file (or name), in row order.
    #[getter]
    fn paths(&self) -> Vec<PathBuf> {
        self.index.manifest.rows.iter().map(|row| row.path.clone()).collect()
    }

    /// All rows' vectors as embedded, (N, D).
    #[getter]
    fn vectors<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f32>> {
        let Matrix { rows, cols, values } = &self.index.vectors;
        ndarray::Array2::from_shape_vec((*rows, *cols), values.clone()).expect("rows × cols").into_pyarray(py)
    }

    /// `index.json` as JSON.
    #[getter]
    fn info_json(&self) -> String {
        serde_json::to_string(&self.index.info).expect("the index info serialises")
    }
}

/// Builds an index over `vectors` (N, D) into `out`; row `i` is named `names[i]` (a file path,
/// or any name). The vectors' model is `embedder`'s when given, else recorded as external.
#[pyfunction]
#[pyo3(signature = (vectors, names, embedder, out, metric, pca, whiten, m, ef_construction))]
#[allow(clippy::too_many_arguments)] // the Python signature, keyword by keyword
pub fn build_index_from_vectors(
    py: Python<'_>,
    vectors: PyReadonlyArray2<'_, f32>,
    names: Vec<PathBuf>,
    embedder: Option<&NativeEmbedder>,
    out: PathBuf,
    metric: &str,
    pca: Option<usize>,
    whiten: bool,
    m: usize,
    ef_construction: usize,
) -> PyResult<String> {
    let view = vectors.as_array();
    let (rows, cols) = view.dim();
    if names.len() != rows {
        return Err(errors::raise(Kind::Dimension, format!("{rows} vectors but {} names", names.len())));
    }
    let (model, recipe) = match embedder {
        Some(embedder) => (embedder.identity(), embedder.lock().metadata().search_recipe),
        None => (
            ModelIdentity {
                checkpoint_sha256: EXTERNAL.into(),
                preset: EXTERNAL.into(),
                feature: Feature::Embedding,
                dim: cols,
            },
            None,
        ),
    };
    if model.dim != cols {
        return Err(errors::raise(
            Kind::Dimension,
            format!(
                "the vectors have {cols} values, the embedder's `{}` has {}",
                model.feature.name(),
                model.dim
            ),
        ));
    }
    let params = index_params(metric, m, ef_construction, 0, post_process(pca, whiten, recipe, rows))?;
    let matrix = Matrix { rows, cols, values: view.iter().copied().collect() };
    let info = py
        .detach(|| {
            let manifest = Manifest {
                format_version: MANIFEST_FORMAT_VERSION,
                toolkit_version: dim_models::TOOLKIT_VERSION.to_string(),
                model,
                embeddings_sha256: None,
                search_recipe: recipe,
                count: rows,
                rows: names.iter().map(|name| row_of(name)).collect(),
            };
            index::build_from_vectors(manifest, &matrix, &out, &params)
        })
        .map_err(index_error)?;
    Ok(serde_json::to_string(&info).expect("the index info serialises"))
}

/// A manifest row for `name`: the file's identity when it is one, else the name alone.
fn row_of(name: &Path) -> ManifestRow {
    ManifestRow::stat(name).unwrap_or_else(|_| ManifestRow { path: name.to_path_buf(), size: 0, mtime_ns: 0 })
}

/// Copies the index directory `from` to `out`, replacing an index there atomically.
#[pyfunction]
pub fn copy_index(py: Python<'_>, from: PathBuf, out: PathBuf) -> PyResult<()> {
    py.detach(|| index::copy(&from, &out)).map_err(index_error)
}
