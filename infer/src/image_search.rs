//! Searching stored vectors by image: [`QueryModel`] is the model that embeds the queries,
//! checked once, when it is paired with the vectors (an index directory or a PostgreSQL table),
//! to be the model they were made with; [`ImageSearch`] is an index paired with its query model,
//! which dim-serve answers from and dim-search's image queries use.

use crate::embedder::{EmbedError, Embedder};
use dim_index::index::{IndexError, SearchIndex};
use dim_vectors::manifest::ModelIdentity;
use image::DynamicImage;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The query model is not the model the stored vectors were made with.
#[derive(Debug, thiserror::Error)]
#[error(
    "model {} is not the model {store} was built with ({reason}); pass that model with --model, or rebuild {store}",
    model.display()
)]
pub struct ModelMismatch {
    /// The query model file.
    pub model: PathBuf,
    /// The vectors, as a phrase: "the index DIR" or "the table NAME".
    pub store: String,
    /// What differs.
    pub reason: String,
}

/// Why a query could not be embedded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The model failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// A query image could not be read or decoded.
    #[error("cannot use query image {}: {reason}", dim_models::path_record::display(path))]
    Image {
        /// The image file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Why an index cannot be searched by image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageSearchError {
    /// The index directory is unusable.
    #[error("cannot open the index {}", path.display())]
    Index {
        /// The index directory.
        path: PathBuf,
        /// The cause.
        source: IndexError,
    },
    /// The query model is not the index's.
    #[error(transparent)]
    ModelMismatch(#[from] ModelMismatch),
}

/// An embedder known to make the same vectors as the ones it will be compared with. Embedding
/// takes `&self`: callers on several threads take turns on the one ONNX Runtime session.
pub struct QueryModel {
    embedder: Mutex<Embedder>,
    /// Kept apart from the embedder so that reading it never waits for a running embedding.
    model_path: PathBuf,
}

impl QueryModel {
    /// Pairs `embedder` with vectors made by `vectors` (`store` names them in the error), or
    /// says what differs.
    pub fn for_vectors(
        embedder: Embedder,
        vectors: &ModelIdentity,
        store: impl Into<String>,
    ) -> Result<Self, ModelMismatch> {
        let model_path = embedder.model_path().to_path_buf();
        if let Some(reason) = vectors.mismatch(&embedder.identity()) {
            return Err(ModelMismatch { model: model_path, store: store.into(), reason });
        }
        Ok(QueryModel { embedder: Mutex::new(embedder), model_path })
    }

    /// The model file.
    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// Embeds one decoded image. Blocks while another embedding runs.
    pub fn embed_image(&self, image: &DynamicImage) -> Result<Vec<f32>, EmbedError> {
        self.embedder().embed_images(std::slice::from_ref(image), 1)
    }

    /// Embeds image files, each named by its displayable path, and fails on the first file that
    /// cannot be used: a query is asked for, so none is skipped silently.
    pub fn embed_files(&self, paths: &[PathBuf]) -> Result<Vec<(String, Vec<f32>)>, QueryError> {
        let embeddings = self.embedder().embed(paths, 64)?;
        if let Some(skipped) = embeddings.skipped.first() {
            return Err(QueryError::Image { path: skipped.path.clone(), reason: skipped.reason.clone() });
        }
        Ok(embeddings
            .paths
            .iter()
            .enumerate()
            .map(|(i, path)| (dim_models::path_record::display(path), embeddings.row(i).to_vec()))
            .collect())
    }

    fn embedder(&self) -> MutexGuard<'_, Embedder> {
        // A panic inside ONNX Runtime's call leaves the embedder as it was: keep using it.
        self.embedder.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An index and the model that embeds its queries, checked against each other once.
pub struct ImageSearch {
    /// The index.
    pub index: SearchIndex,
    /// The model its image queries go through.
    pub query_model: QueryModel,
}

impl ImageSearch {
    /// Opens the index in `dir` and pairs it with `embedder`.
    pub fn open(dir: &Path, embedder: Embedder) -> Result<Self, ImageSearchError> {
        let index = SearchIndex::open(dir)
            .map_err(|source| ImageSearchError::Index { path: dir.to_path_buf(), source })?;
        let store = format!("the index {}", dir.display());
        let query_model = QueryModel::for_vectors(embedder, &index.info.model, store)?;
        Ok(ImageSearch { index, query_model })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedder::EmbedderOptions;

    fn shipped_embedder() -> Embedder {
        Embedder::try_new(EmbedderOptions::default()).expect("the shipped model loads")
    }

    #[test]
    fn the_model_the_vectors_came_from_is_accepted_and_embeds_a_query() {
        let embedder = shipped_embedder();
        let identity = embedder.identity();
        let query_model = QueryModel::for_vectors(embedder, &identity, "the table t").expect("same model");
        let image = DynamicImage::new_luma8(28, 28);
        assert_eq!(query_model.embed_image(&image).expect("embeds").len(), identity.dim);
    }

    #[test]
    fn another_model_is_refused_naming_the_vectors_and_what_differs() {
        let embedder = shipped_embedder();
        let mut other = embedder.identity();
        other.checkpoint_sha256 = "0".repeat(64);
        let error = QueryModel::for_vectors(embedder, &other, "the table t").err().expect("refused");
        assert_eq!(error.store, "the table t");
        assert!(error.reason.starts_with("model digest"), "{}", error.reason);
        let message = error.to_string();
        assert!(message.contains("is not the model the table t was built with"), "{message}");
    }

    #[test]
    fn an_unreadable_query_image_is_an_error_naming_it() {
        let embedder = shipped_embedder();
        let identity = embedder.identity();
        let query_model = QueryModel::for_vectors(embedder, &identity, "the index i").expect("same model");
        let dir = tempfile::tempdir().expect("temporary directory");
        let broken = dir.path().join("broken.png");
        std::fs::write(&broken, b"not a png").expect("write");
        let error = query_model.embed_files(std::slice::from_ref(&broken)).expect_err("refused");
        assert!(matches!(&error, QueryError::Image { path, .. } if path == &broken), "{error}");
    }
}
