//! The embedding API: [`Embedder::try_new`] loads an exported DIM model once, then
//! [`Embedder::embed`] turns image files (or [`Embedder::embed_images`] decoded images) into
//! feature vectors, in chunks of `batch_size`, with the same preprocessing the trainer uses.

use crate::reduced_jpeg;
use crate::session::{self, ExecutionProvider, ModelSession, SessionError, SessionOptions};
use dim_models::onnx_metadata::{INPUT_NAME, ModelMetadata};
use dim_models::preprocess::{self, ImageError, InputSpec};
use dim_models::shipped_model;
use dim_models::tap::Feature;
use dim_vectors::manifest::{ModelIdentity, Skipped};
use image::DynamicImage;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions};
use ort::value::TensorRef;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// What to load and how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedderOptions {
    /// The exported model (`.onnx` with DIM metadata); by default the shipped model's copy at
    /// [`shipped_model::path`], written there from the binary on first use.
    pub model: PathBuf,
    /// The output to use.
    pub feature: Feature,
    /// ONNX Runtime intra-op threads; 0 lets it choose.
    pub threads: usize,
    /// The requested execution provider.
    pub execution_provider: ExecutionProvider,
    /// Fail instead of falling back to the CPU.
    pub strict_execution_provider: bool,
    /// Decode large JPEGs at a reduced DCT scale (see [`crate::reduced_jpeg`]).
    pub reduced_jpeg: bool,
    /// Images with more pixels are skipped with a message saying how to raise the cap.
    pub max_image_pixels: u64,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            model: shipped_model::path(),
            feature: Feature::Embedding,
            threads: 0,
            execution_provider: ExecutionProvider::Cpu,
            strict_execution_provider: false,
            reduced_jpeg: true,
            max_image_pixels: preprocess::configured_max_pixels(),
        }
    }
}

/// Errors embedding images. A single unreadable image is not an error: it is reported in
/// [`Embeddings::skipped`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The model could not be loaded.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The model has no output for the requested feature.
    #[error("model {model} has no `{feature}` output (it has: {available})")]
    NoSuchFeature {
        /// The model file.
        model: PathBuf,
        /// The requested feature.
        feature: &'static str,
        /// The outputs the model has.
        available: String,
    },
    /// The compiled-in default model could not be written where ONNX Runtime can open it.
    #[error("{0}")]
    ShippedModel(std::io::Error),
    /// A batch size of zero was asked for.
    #[error("batch size must be at least 1")]
    ZeroBatchSize,
    /// ONNX Runtime failed while running the model.
    #[error("running the model failed: {0}")]
    Run(String),
}

/// The result of embedding a list of files.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// Vector width.
    pub dim: usize,
    /// Row-major vectors, one per entry of `paths`.
    pub vectors: Vec<f32>,
    /// The embedded files, in input order.
    pub paths: Vec<PathBuf>,
    /// The files that could not be embedded.
    pub skipped: Vec<Skipped>,
}

impl Embeddings {
    /// Vector `index`.
    pub fn row(&self, index: usize) -> &[f32] {
        &self.vectors[index * self.dim..(index + 1) * self.dim]
    }
}

/// Turns image files into model inputs; cheap to copy into decoding threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preprocessor {
    /// What the model takes.
    pub spec: InputSpec,
    /// Decode large JPEGs at a reduced DCT scale.
    pub reduced_jpeg: bool,
    /// Pixel cap per image.
    pub max_image_pixels: u64,
    /// Normalise each image's contrast ([`preprocess::normalise_contrast`]), as
    /// [`Feature::Duplicate`] does.
    pub normalise_contrast: bool,
}

impl Preprocessor {
    /// Reads, decodes and preprocesses one file into the model's input layout.
    pub fn prepare_file(&self, path: &Path) -> Result<Vec<f32>, ImageError> {
        let bytes = std::fs::read(path)?;
        let reduced = if self.reduced_jpeg && reduced_jpeg::is_jpeg(&bytes) {
            reduced_jpeg::decode_reduced(&bytes, &self.spec, self.max_image_pixels)
        } else {
            None
        };
        let image = match reduced {
            Some(image) => image,
            None => preprocess::decode_bytes(&bytes, self.max_image_pixels)?,
        };
        Ok(self.prepare_image(&image))
    }

    /// Preprocesses one decoded image into the model's input layout.
    pub fn prepare_image(&self, image: &DynamicImage) -> Vec<f32> {
        if !self.normalise_contrast {
            return preprocess::image_to_input(image, &self.spec);
        }
        let (mut input, region) = preprocess::image_to_input_with_region(image, &self.spec);
        preprocess::normalise_contrast(&mut input, &self.spec, region);
        input
    }
}

/// A loaded model ready to embed images.
pub struct Embedder {
    model: ModelSession,
    model_path: PathBuf,
    feature: Feature,
    dim: usize,
    preprocessor: Preprocessor,
    /// Asks ONNX Runtime for the chosen output only (the session's graph has been cut down to
    /// it, so the layers only the others need, such as the fc and Y layers for `conv`, never run).
    run_options: RunOptions<HasSelectedOutputs>,
}

impl Embedder {
    /// Loads the model and checks that it has the requested feature.
    ///
    /// ```no_run
    /// use dim_infer::embedder::{Embedder, EmbedderOptions};
    /// let mut embedder = Embedder::try_new(EmbedderOptions::default())?;
    /// let embeddings = embedder.embed(&["shirt.png".into()], 64)?;
    /// println!("{} vectors of width {}", embeddings.paths.len(), embeddings.dim);
    /// # Ok::<(), dim_infer::embedder::EmbedError>(())
    /// ```
    pub fn try_new(options: EmbedderOptions) -> Result<Self, EmbedError> {
        let session_options = SessionOptions {
            threads: options.threads,
            execution_provider: options.execution_provider,
            strict_execution_provider: options.strict_execution_provider,
            only_output: Some(options.feature.output_name().to_string()),
        };
        if options.model == shipped_model::path() {
            shipped_model::materialise().map_err(EmbedError::ShippedModel)?;
        }
        let model = session::build_session(&options.model, &session_options)?;
        let feature = options.feature;
        let dim =
            model.metadata.output_dim(feature.output_name()).ok_or_else(|| EmbedError::NoSuchFeature {
                model: options.model.clone(),
                feature: feature.name(),
                available: model
                    .metadata
                    .outputs
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let run_options = RunOptions::new()
            .map_err(|e| EmbedError::Run(e.to_string()))?
            .with_outputs(OutputSelector::no_default().with(feature.output_name()));
        let preprocessor = Preprocessor {
            spec: model.metadata.input,
            reduced_jpeg: options.reduced_jpeg,
            max_image_pixels: options.max_image_pixels,
            normalise_contrast: feature == Feature::Duplicate,
        };
        Ok(Embedder { model, model_path: options.model, feature, dim, preprocessor, run_options })
    }

    /// The model's metadata.
    pub fn metadata(&self) -> &ModelMetadata {
        &self.model.metadata
    }

    /// The model file.
    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// The feature this embedder produces.
    pub fn feature(&self) -> Feature {
        self.feature
    }

    /// Vector width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Which model and output make this embedder's vectors, as manifests and indexes record it;
    /// vectors of another identity cannot be mixed with these ([`ModelIdentity::mismatch`]).
    pub fn identity(&self) -> ModelIdentity {
        ModelIdentity::of(&self.model.metadata, self.feature, self.dim)
    }

    /// The execution provider in use, and why the requested one was not, if it was not.
    pub fn execution_provider(&self) -> (ExecutionProvider, Option<&str>) {
        (self.model.execution_provider, self.model.fallback_reason.as_deref())
    }

    /// What the model takes as input.
    pub fn input_spec(&self) -> InputSpec {
        self.model.metadata.input
    }

    /// The file-to-input conversion this embedder uses.
    pub fn preprocessor(&self) -> Preprocessor {
        self.preprocessor
    }

    /// Embeds files in chunks of `batch_size`, decoding the next chunk in parallel while the model
    /// runs the current one ([`decode_ahead`]). Files that cannot be decoded are skipped with
    /// their reason.
    pub fn embed(&mut self, inputs: &[PathBuf], batch_size: usize) -> Result<Embeddings, EmbedError> {
        if batch_size == 0 {
            return Err(EmbedError::ZeroBatchSize);
        }
        let mut out =
            Embeddings { dim: self.dim, vectors: Vec::new(), paths: Vec::new(), skipped: Vec::new() };
        let preprocessor = self.preprocessor();
        decode_ahead(
            preprocessor,
            inputs,
            |path| path,
            batch_size,
            |chunk| {
                let mut batch = Vec::with_capacity(chunk.len() * preprocessor.spec.len());
                for (path, result) in chunk {
                    match result {
                        Ok(input) => {
                            batch.extend_from_slice(&input);
                            out.paths.push(path.clone());
                        }
                        Err(reason) => out.skipped.push(Skipped { path: path.clone(), reason }),
                    }
                }
                out.vectors.extend(self.run_batch(&batch)?);
                Ok::<(), EmbedError>(())
            },
        )?;
        Ok(out)
    }

    /// Embeds decoded images in chunks of `batch_size`; returns row-major vectors.
    pub fn embed_images(
        &mut self,
        images: &[DynamicImage],
        batch_size: usize,
    ) -> Result<Vec<f32>, EmbedError> {
        if batch_size == 0 {
            return Err(EmbedError::ZeroBatchSize);
        }
        let preprocessor = self.preprocessor();
        let mut vectors = Vec::with_capacity(images.len() * self.dim);
        for chunk in images.chunks(batch_size) {
            let batch: Vec<f32> =
                chunk.par_iter().flat_map_iter(|image| preprocessor.prepare_image(image)).collect();
            vectors.extend(self.run_batch(&batch)?);
        }
        Ok(vectors)
    }

    /// Runs the model on preprocessed inputs (`[N, C, H, W]` values laid out back to back) and
    /// returns the feature as row-major `[N, dim]`.
    pub fn run_batch(&mut self, inputs: &[f32]) -> Result<Vec<f32>, EmbedError> {
        let spec = self.model.metadata.input;
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        assert!(inputs.len().is_multiple_of(spec.len()), "inputs must hold whole images");
        let count = inputs.len() / spec.len();
        if self.feature != Feature::Duplicate {
            return self.run_model(inputs, count);
        }
        // The images and their mirror images in one run; each image's two unit vectors are
        // averaged and normalised again.
        let mut both = inputs.to_vec();
        both.extend(mirrored(inputs, spec.size));
        let outputs = self.run_model(&both, 2 * count)?;
        let (plain, mirror) = outputs.split_at(count * self.dim);
        let mut averaged: Vec<f32> = plain.iter().zip(mirror).map(|(a, b)| a + b).collect();
        for row in averaged.chunks_exact_mut(self.dim) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
            row.iter_mut().for_each(|v| *v /= norm);
        }
        Ok(averaged)
    }

    /// One model run on `count` inputs; the selected output as row-major `[count, dim]`.
    fn run_model(&mut self, inputs: &[f32], count: usize) -> Result<Vec<f32>, EmbedError> {
        let spec = self.model.metadata.input;
        let shape = [count, spec.channels, spec.size, spec.size];
        let run_error = |e: ort::Error| EmbedError::Run(e.to_string());
        let tensor = TensorRef::from_array_view((shape, inputs)).map_err(run_error)?;
        let outputs = self
            .model
            .session
            .run_with_options(ort::inputs![INPUT_NAME => tensor], &self.run_options)
            .map_err(run_error)?;
        let name = self.feature.output_name();
        let (out_shape, values) = outputs[name].try_extract_tensor::<f32>().map_err(run_error)?;
        if values.len() != count * self.dim {
            return Err(EmbedError::Run(format!(
                "output `{name}` has shape {out_shape:?}, expected [{count}, {}]",
                self.dim
            )));
        }
        Ok(values.to_vec())
    }
}

/// Decoded chunks waiting for the consumer; with the one being decoded and the one being
/// consumed this bounds memory to a few chunks whatever the collection size.
const CHUNKS_IN_FLIGHT: usize = 2;

/// Decodes the files of `items` (`path_of` names each item's file) chunk by chunk of
/// `batch_size` on a producer thread, each chunk in parallel, and hands every decoded chunk (the
/// items with their model input or the reason they could not be decoded, in order) to `consume`
/// on this thread, so decoding the next chunk overlaps consuming this one. An error from
/// `consume` stops both sides and is returned.
pub(crate) fn decode_ahead<'a, T: Sync, E>(
    preprocessor: Preprocessor,
    items: &'a [T],
    path_of: impl Fn(&T) -> &Path + Sync,
    batch_size: usize,
    mut consume: impl FnMut(Vec<(&'a T, Result<Vec<f32>, String>)>) -> Result<(), E>,
) -> Result<(), E> {
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel(CHUNKS_IN_FLIGHT);
        let path_of = &path_of;
        scope.spawn(move || {
            for chunk in items.chunks(batch_size.max(1)) {
                let decoded: Vec<(&T, Result<Vec<f32>, String>)> = chunk
                    .par_iter()
                    .map(|item| (item, preprocessor.prepare_file(path_of(item)).map_err(|e| e.to_string())))
                    .collect();
                if sender.send(decoded).is_err() {
                    return; // the consumer stopped on an error
                }
            }
        });
        // Returning drops the receiver, which ends the producer at its next chunk.
        receiver.into_iter().try_for_each(&mut consume)
    })
}

/// Inputs laid out as `[N, C, size, size]` with every row reversed: each image mirrored left to
/// right.
fn mirrored(inputs: &[f32], size: usize) -> Vec<f32> {
    inputs.chunks_exact(size).flat_map(|row| row.iter().rev().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirroring_reverses_every_row_of_every_channel_and_image() {
        // Two 2-channel 3x3 images, values 0..36 in layout order.
        let inputs: Vec<f32> = (0..36).map(|v| v as f32).collect();
        let flipped = mirrored(&inputs, 3);
        assert_eq!(&flipped[..6], &[2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
        assert_eq!(&flipped[33..], &[35.0, 34.0, 33.0]);
        assert_eq!(mirrored(&flipped, 3), inputs);
    }
}
