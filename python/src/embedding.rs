//! `NativeEmbedder`: an exported model loaded once, embedding image files or numpy images in
//! chunks of the batch size with the GIL released, checking for Ctrl-C between chunks.

use crate::errors::{self, Kind};
use dim_infer::embedder::{EmbedError, Embedder, EmbedderOptions};
use dim_infer::session::ExecutionProvider;
use dim_models::tap::Feature;
use dim_vectors::manifest::ModelIdentity;
use image::{DynamicImage, GrayAlphaImage, GrayImage, RgbImage, RgbaImage};
use numpy::{IntoPyArray, PyArray2, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// The loaded model. Calls from several Python threads take turns on the one session.
#[pyclass(frozen, module = "dim_toolkit._native")]
pub struct NativeEmbedder {
    embedder: Mutex<Embedder>,
    batch_size: usize,
}

/// What `embed_files` returns: the vectors of the embedded files, their positions in the input
/// list, and the skipped files' positions with the reasons.
type FileEmbeddings<'py> = (Bound<'py, PyArray2<f32>>, Vec<usize>, Vec<(usize, String)>);

impl NativeEmbedder {
    pub fn lock(&self) -> MutexGuard<'_, Embedder> {
        // A panic inside ONNX Runtime cannot leave the embedder half-updated: it holds no state
        // between runs, so a poisoned lock is still usable.
        self.embedder.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Which model and output made this embedder's vectors, as manifests record it.
    pub fn identity(&self) -> ModelIdentity {
        let embedder = self.lock();
        embedder.identity()
    }

    fn vectors<'py>(&self, py: Python<'py>, values: Vec<f32>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let dim = self.lock().dim();
        let rows = values.len() / dim.max(1);
        let array = ndarray::Array2::from_shape_vec((rows, dim), values)
            .map_err(|e| errors::raise(Kind::General, e.to_string()))?;
        Ok(array.into_pyarray(py))
    }
}

fn embed_error(error: EmbedError) -> PyErr {
    match error {
        EmbedError::Session(_) | EmbedError::NoSuchFeature { .. } => {
            errors::from_error(Kind::Model, "cannot load the model", error)
        }
        other => errors::from_error(Kind::General, "", other),
    }
}

#[pymethods]
impl NativeEmbedder {
    #[new]
    #[pyo3(signature = (model, feature, provider, threads, batch_size, strict_provider))]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        feature: &str,
        provider: &str,
        threads: usize,
        batch_size: usize,
        strict_provider: bool,
    ) -> PyResult<Self> {
        let feature: Feature = feature.parse().map_err(errors::bad_argument)?;
        let execution_provider: ExecutionProvider = provider.parse().map_err(errors::bad_argument)?;
        if batch_size == 0 {
            return Err(errors::bad_argument("batch_size must be at least 1"));
        }
        let options = EmbedderOptions {
            model,
            feature,
            threads,
            execution_provider,
            strict_execution_provider: strict_provider,
            ..EmbedderOptions::default()
        };
        let embedder = py.detach(|| Embedder::try_new(options)).map_err(embed_error)?;
        Ok(NativeEmbedder { embedder: Mutex::new(embedder), batch_size })
    }

    /// Vector width.
    #[getter]
    fn dim(&self) -> usize {
        self.lock().dim()
    }

    /// The output used, by its command-line name.
    #[getter]
    fn feature(&self) -> &'static str {
        self.lock().feature().name()
    }

    /// The model file.
    #[getter]
    fn model_path(&self) -> PathBuf {
        self.lock().model_path().to_path_buf()
    }

    /// The execution provider in use and, when it is not the requested one, why.
    #[getter]
    fn provider(&self) -> (&'static str, Option<String>) {
        let embedder = self.lock();
        let (provider, reason) = embedder.execution_provider();
        (provider.name(), reason.map(str::to_string))
    }

    /// The model's metadata as JSON.
    #[getter]
    fn metadata_json(&self) -> String {
        let embedder = self.lock();
        let metadata = embedder.metadata();
        let parsed = |text: &Option<String>| {
            text.as_deref().map(|t| serde_json::from_str(t).unwrap_or(serde_json::Value::String(t.into())))
        };
        serde_json::json!({
            "preset": metadata.preset.name(),
            "input_channels": metadata.input.channels,
            "input_size": metadata.input.size,
            "preprocessing": metadata.input.describe(),
            "outputs": metadata.outputs,
            "embedding_source": metadata.embedding_source,
            "training_recipe": parsed(&metadata.training_recipe),
            "search_recipe": metadata.search_recipe,
            "checkpoint_sha256": metadata.checkpoint_sha256,
            "training_digest": metadata.training_digest,
            "toolkit_version": metadata.toolkit_version,
        })
        .to_string()
    }

    /// The model identity that manifests and indexes record, as JSON.
    #[getter]
    fn identity_json(&self) -> String {
        serde_json::to_string(&self.identity()).expect("the identity serialises")
    }

    /// Embeds image files. Unreadable files are skipped with their reasons.
    fn embed_files<'py>(&self, py: Python<'py>, paths: Vec<PathBuf>) -> PyResult<FileEmbeddings<'py>> {
        let mut values = Vec::new();
        let mut embedded = Vec::with_capacity(paths.len());
        let mut skipped = Vec::new();
        for (chunk_index, chunk) in paths.chunks(self.batch_size).enumerate() {
            let result = py.detach(|| self.lock().embed(chunk, self.batch_size)).map_err(embed_error)?;
            values.extend(result.vectors);
            // `embed` keeps the input order and leaves the skipped files out.
            let mut done = result.paths.iter().peekable();
            for (offset, path) in chunk.iter().enumerate() {
                let position = chunk_index * self.batch_size + offset;
                if done.peek() == Some(&path) {
                    done.next();
                    embedded.push(position);
                } else {
                    let reason = result
                        .skipped
                        .iter()
                        .find(|s| &s.path == path)
                        .map_or_else(|| "not embedded".to_string(), |s| s.reason.clone());
                    skipped.push((position, reason));
                }
            }
            py.check_signals()?;
        }
        Ok((self.vectors(py, values)?, embedded, skipped))
    }

    /// Embeds uint8 images given as arrays of shape (H, W) or (H, W, C), C in 1..=4 (grey, grey
    /// + alpha, RGB, RGBA), with the same preprocessing as image files.
    fn embed_arrays<'py>(
        &self,
        py: Python<'py>,
        images: Vec<PyReadonlyArrayDyn<'py, u8>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let mut values = Vec::new();
        for (chunk_index, chunk) in images.chunks(self.batch_size).enumerate() {
            let decoded = chunk
                .iter()
                .enumerate()
                .map(|(offset, array)| to_image(array, chunk_index * self.batch_size + offset))
                .collect::<PyResult<Vec<_>>>()?;
            let vectors =
                py.detach(|| self.lock().embed_images(&decoded, self.batch_size)).map_err(embed_error)?;
            values.extend(vectors);
            py.check_signals()?;
        }
        self.vectors(py, values)
    }
}

/// A numpy image as the image crate's, by its shape.
fn to_image(array: &PyReadonlyArrayDyn<'_, u8>, position: usize) -> PyResult<DynamicImage> {
    let view = array.as_array();
    let shape = view.shape().to_vec();
    let shape_error = || {
        errors::raise(
            Kind::Dimension,
            format!(
                "image {position} has shape {shape:?}: expected (height, width) or (height, width, channels) \
                 with 1 to 4 channels"
            ),
        )
    };
    let (height, width, channels) = match shape[..] {
        [h, w] => (h, w, 1),
        [h, w, c] if (1..=4).contains(&c) => (h, w, c),
        _ => return Err(shape_error()),
    };
    if height == 0 || width == 0 {
        return Err(shape_error());
    }
    let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(shape_error());
    };
    let pixels: Vec<u8> = view.iter().copied().collect(); // logical (row-major) order
    let image = match channels {
        1 => GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8),
        2 => GrayAlphaImage::from_raw(w, h, pixels).map(DynamicImage::ImageLumaA8),
        3 => RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8),
        _ => RgbaImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgba8),
    };
    image.ok_or_else(shape_error)
}
