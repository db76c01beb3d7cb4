//! The collection a server answers for: an index paired with the model that embeds uploaded
//! queries ([`ImageSearch`], which checks that model), and each row's path relative to the collection root. Every
//! search, whether by image, row or vector, ends in [`ServedCollection::search_vector`].

use dim_index::index::{Hit, IndexError};
use dim_infer::embedder::{EmbedError, Embedder};
use dim_infer::image_search::{ImageSearch, ImageSearchError};
use dim_models::path_record::PathRecord;
use dim_vectors::manifest::ModelIdentity;
use image::DynamicImage;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Why a collection cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectionError {
    /// The index cannot be opened, or the query model is not its model.
    #[error(transparent)]
    Search(#[from] ImageSearchError),
    /// The index holds no rows.
    #[error("the index {0} holds no images")]
    Empty(PathBuf),
}

/// A search result as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResult {
    /// 1-based rank.
    pub rank: usize,
    /// Cosine similarity (higher is closer) or L2 distance (lower is closer).
    pub score: f32,
    /// Manifest row.
    pub row: usize,
    /// The file's path relative to the collection root (absolute when it lies outside it),
    /// with `path_bytes_hex` for a name that is not UTF-8.
    #[serde(flatten)]
    pub path: PathRecord,
    /// Where its thumbnail is served.
    pub thumbnail: String,
}

/// What `GET /api/collection` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionSummary {
    /// Rows that can be returned (the index's rows; rows held out at build time are not).
    pub count: usize,
    /// Rows in the manifest, held-out rows included (each can still be a query).
    pub rows: usize,
    /// The collection root that result paths are relative to.
    pub root: PathRecord,
    /// The model and feature of the vectors.
    pub model: ModelIdentity,
    /// The query model file.
    pub model_path: PathRecord,
    /// cosine or l2.
    pub metric: String,
    /// The index's construction parameters, post-processing included.
    pub index: dim_index::index::IndexParams,
    /// The post-processing fitted at build time, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_process: Option<dim_vectors::post_process::PcaDescription>,
    /// Neighbours returned when a request does not say.
    pub default_k: usize,
    /// Largest `k` a request may ask for.
    pub max_k: usize,
    /// Search breadth used when a request does not say (at least `k`).
    pub default_ef: usize,
}

/// An index ready to answer queries.
pub struct ServedCollection {
    search: ImageSearch,
    root: PathBuf,
    relative_paths: Vec<PathRecord>,
    /// Rows in the graph, for picking a random image.
    indexed_rows: Vec<usize>,
    max_image_pixels: u64,
}

/// Neighbours returned when a request does not say.
pub const DEFAULT_K: usize = 12;
/// Largest `k` a request may ask for.
pub const MAX_K: usize = 1000;
/// Search breadth when a request does not say (raised to `k` when smaller).
pub const DEFAULT_EF: usize = 64;

impl ServedCollection {
    /// Opens the index in `dir` and checks that `embedder` makes the vectors it holds. Result
    /// paths are given relative to `root`, or to the deepest directory holding every row's file
    /// when `root` is `None`.
    pub fn open(
        dir: &Path,
        embedder: Embedder,
        root: Option<PathBuf>,
        max_image_pixels: u64,
    ) -> Result<Self, CollectionError> {
        let search = ImageSearch::open(dir, embedder)?;
        let index = &search.index;
        if index.info.count == 0 {
            return Err(CollectionError::Empty(dir.to_path_buf()));
        }
        let paths: Vec<&Path> = index.manifest.rows.iter().map(|row| row.path.as_path()).collect();
        let root = root.unwrap_or_else(|| common_ancestor(&paths));
        let relative_paths =
            paths.iter().map(|path| PathRecord::of(path.strip_prefix(&root).unwrap_or(path))).collect();
        let indexed_rows =
            (0..index.manifest.count).filter(|row| index.info.held_out.binary_search(row).is_err()).collect();
        Ok(ServedCollection { search, root, relative_paths, indexed_rows, max_image_pixels })
    }

    /// Rows in the manifest (every one can be a query).
    pub fn rows(&self) -> usize {
        self.search.index.manifest.count
    }

    /// Rows a search can return (the index's; held-out rows are not).
    pub fn indexed_count(&self) -> usize {
        self.search.index.info.count
    }

    /// Width of the vectors as embedded.
    pub fn dim(&self) -> usize {
        self.search.index.info.model.dim
    }

    /// The pixel cap for uploaded and thumbnailed images.
    pub fn max_image_pixels(&self) -> u64 {
        self.max_image_pixels
    }

    /// The file of `row`, if the row exists.
    pub fn row_path(&self, row: usize) -> Option<&Path> {
        self.search.index.manifest.rows.get(row).map(|r| r.path.as_path())
    }

    /// The stored vector of `row` (as embedded), if the row exists.
    pub fn row_vector(&self, row: usize) -> Option<&[f32]> {
        (row < self.rows()).then(|| self.search.index.vectors.row(row))
    }

    /// An indexed row drawn uniformly.
    pub fn random_row(&self) -> usize {
        use rand::seq::IndexedRandom;
        *self.indexed_rows.choose(&mut rand::rng()).expect("an open collection is not empty")
    }

    /// The summary `GET /api/collection` returns.
    pub fn summary(&self) -> CollectionSummary {
        let info = &self.search.index.info;
        CollectionSummary {
            count: info.count,
            rows: self.rows(),
            root: PathRecord::of(&self.root),
            model: info.model.clone(),
            model_path: PathRecord::of(self.search.query_model.model_path()),
            metric: info.params.metric.name().into(),
            index: info.params,
            post_process: info.post_process.clone(),
            default_k: DEFAULT_K,
            max_k: MAX_K.min(info.count),
            default_ef: DEFAULT_EF,
        }
    }

    /// The `k` nearest rows to `vector` (as embedded), searching with `ef`.
    pub fn search_vector(
        &self,
        vector: &[f32],
        k: usize,
        ef: usize,
    ) -> Result<Vec<SearchResult>, IndexError> {
        let hits = self.search.index.search(vector, k, ef.max(k))?;
        Ok(hits.into_iter().map(|hit| self.result(hit)).collect())
    }

    fn result(&self, hit: Hit) -> SearchResult {
        SearchResult {
            rank: hit.rank,
            score: hit.score,
            row: hit.row,
            path: self.relative_paths[hit.row].clone(),
            thumbnail: format!("/thumbnails/{}", hit.row),
        }
    }

    /// Embeds one decoded image with the query model. Blocks while another embedding runs.
    pub fn embed(&self, image: &DynamicImage) -> Result<Vec<f32>, EmbedError> {
        self.search.query_model.embed_image(image)
    }
}

/// The deepest directory that holds every path (`/` when they share nothing).
fn common_ancestor(paths: &[&Path]) -> PathBuf {
    let Some(first) = paths.first() else { return PathBuf::from("/") };
    let mut ancestor = first.parent().unwrap_or(Path::new("/")).to_path_buf();
    for path in &paths[1..] {
        while !path.starts_with(&ancestor) {
            if !ancestor.pop() {
                return PathBuf::from("/");
            }
        }
    }
    ancestor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_ancestor_is_the_deepest_shared_directory() {
        let paths = [Path::new("/a/b/c/1.png"), Path::new("/a/b/d/2.png"), Path::new("/a/b/3.png")];
        assert_eq!(common_ancestor(&paths), Path::new("/a/b"));
        assert_eq!(common_ancestor(&[Path::new("/a/b/1.png")]), Path::new("/a/b"));
        assert_eq!(common_ancestor(&[Path::new("/x/1.png"), Path::new("/y/2.png")]), Path::new("/"));
        // Components, not characters: /a/bc is not under /a/b.
        assert_eq!(common_ancestor(&[Path::new("/a/b/1.png"), Path::new("/a/bc/2.png")]), Path::new("/a"));
    }
}
