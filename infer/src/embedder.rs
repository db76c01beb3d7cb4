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
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

    /// Embeds files in chunks of `batch_size`, decoding the next chunks on every core while the
    /// model runs the current one ([`decode_ahead`]). Files that cannot be decoded are skipped with
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
            0,
            |batch| {
                out.skipped.extend(
                    batch.failed.into_iter().map(|(path, reason)| Skipped { path: path.clone(), reason }),
                );
                out.paths.extend(batch.decoded.into_iter().cloned());
                out.vectors.extend(self.run_batch(&batch.inputs)?);
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

/// Batches each decoding thread may run ahead of the consumer: with every thread on one batch
/// and this many per thread decoded and waiting, memory stays bounded whatever the collection
/// size, and the model never waits while a thread is still busy.
const BATCHES_AHEAD_PER_THREAD: usize = 2;

/// One batch of items with their files decoded, for the model.
#[derive(Debug)]
pub(crate) struct DecodedBatch<'a, T> {
    /// The items whose files decoded, in order.
    pub decoded: Vec<&'a T>,
    /// Their model inputs, back to back in the same order.
    pub inputs: Vec<f32>,
    /// The items whose files could not be decoded, in order, with the reason.
    pub failed: Vec<(&'a T, String)>,
}

/// Decodes `batch` (`path_of` names each item's file) one file after the other.
fn decode_batch<'a, T>(
    preprocessor: Preprocessor,
    batch: &'a [T],
    path_of: impl Fn(&T) -> &Path,
) -> DecodedBatch<'a, T> {
    let mut decoded_batch =
        DecodedBatch { decoded: Vec::with_capacity(batch.len()), inputs: Vec::new(), failed: Vec::new() };
    decoded_batch.inputs.reserve(batch.len() * preprocessor.spec.len());
    for item in batch {
        match preprocessor.prepare_file(path_of(item)) {
            Ok(input) => {
                decoded_batch.inputs.extend_from_slice(&input);
                decoded_batch.decoded.push(item);
            }
            Err(error) => decoded_batch.failed.push((item, error.to_string())),
        }
    }
    decoded_batch
}

/// The number of threads `decode_threads` asks for: 0 means one per core.
fn decoding_threads(decode_threads: usize) -> usize {
    match decode_threads {
        0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        threads => threads,
    }
}

/// How far the decoding threads may run ahead: the consumer's position, and whether it stopped.
struct DecodeGate {
    /// (batches handed to the consumer, the consumer stopped).
    state: std::sync::Mutex<(usize, bool)>,
    moved: std::sync::Condvar,
}

impl DecodeGate {
    /// Waits until batch `index` lies fewer than `ahead` batches past the consumer; false when
    /// the consumer stopped instead.
    fn wait_for_room(&self, index: usize, ahead: usize) -> bool {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = self
            .moved
            .wait_while(state, |(handed_over, stopped)| !*stopped && index >= *handed_over + ahead)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        !state.1
    }

    fn update(&self, change: impl FnOnce(&mut (usize, bool))) {
        change(&mut self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        self.moved.notify_all();
    }
}

/// Stops the gate when dropped by a panicking thread.
struct StopOnPanic<'a>(&'a DecodeGate);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.update(|(_, stopped)| *stopped = true);
        }
    }
}

/// Decodes the files of `items` (`path_of` names each item's file) in batches of `batch_size`
/// on `decode_threads` threads (0: one per core), each thread taking the next batch as soon as it
/// finishes one, and hands every batch to `consume` on this thread, in order. Decoding runs up
/// to [`BATCHES_AHEAD_PER_THREAD`] batches per thread ahead of `consume`, so it overlaps the
/// model without a pause between batches. An error from `consume` stops both sides and is
/// returned; otherwise the time `consume` waited for decoding is.
pub(crate) fn decode_ahead<'a, T: Sync, E>(
    preprocessor: Preprocessor,
    items: &'a [T],
    path_of: impl Fn(&T) -> &Path + Sync,
    batch_size: usize,
    decode_threads: usize,
    mut consume: impl FnMut(DecodedBatch<'a, T>) -> Result<(), E>,
) -> Result<Duration, E> {
    let batches: Vec<&'a [T]> = items.chunks(batch_size.max(1)).collect();
    let threads = decoding_threads(decode_threads).clamp(1, batches.len().max(1));
    let ahead = threads * BATCHES_AHEAD_PER_THREAD;
    let next_batch = AtomicUsize::new(0);
    let gate = DecodeGate { state: std::sync::Mutex::new((0, false)), moved: std::sync::Condvar::new() };
    std::thread::scope(|scope| {
        // Unbounded, because the gate bounds what is in it.
        let (sender, receiver) = std::sync::mpsc::channel();
        for _ in 0..threads {
            let sender = sender.clone();
            let (batches, next_batch, gate, path_of) = (&batches, &next_batch, &gate, &path_of);
            scope.spawn(move || {
                // A decoder that panics stops the others, so the consumer's wait for its batch
                // ends; the scope then re-raises the panic.
                let _stop_others_on_panic = StopOnPanic(gate);
                loop {
                    // Batches are claimed in order, so the one the consumer waits for is never
                    // held back by the gate.
                    let index = next_batch.fetch_add(1, Ordering::Relaxed);
                    if index >= batches.len() || !gate.wait_for_room(index, ahead) {
                        return;
                    }
                    let decoded = decode_batch(preprocessor, batches[index], path_of);
                    if sender.send((index, decoded)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(sender);
        let mut waiting = BTreeMap::new();
        let mut waited = Duration::ZERO;
        let mut consume_in_order = || {
            for index in 0..batches.len() {
                let batch = loop {
                    if let Some(batch) = waiting.remove(&index) {
                        break batch;
                    }
                    let started = Instant::now();
                    // Every sender gone before this batch came means a decoding thread
                    // panicked: the scope re-raises that panic when it ends.
                    let Ok((decoded_index, decoded)) = receiver.recv() else { return Ok(()) };
                    waited += started.elapsed();
                    waiting.insert(decoded_index, decoded);
                };
                gate.update(|(handed_over, _)| *handed_over = index + 1);
                consume(batch)?;
            }
            Ok(())
        };
        let result = consume_in_order();
        gate.update(|(_, stopped)| *stopped = true);
        drop(receiver);
        result.map(|()| waited)
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
    use dim_models::preprocess::{Background, ResizePolicy};
    use std::sync::atomic::AtomicUsize;

    fn preprocessor() -> Preprocessor {
        Preprocessor {
            spec: InputSpec {
                channels: 1,
                size: 8,
                resize: ResizePolicy::Pad,
                background: Background::Black,
            },
            reduced_jpeg: true,
            max_image_pixels: 1 << 20,
            normalise_contrast: false,
        }
    }

    /// `count` files: 6×6 grey PNGs whose pixels are all `k`, except that every seventh file
    /// (k = 3, 10, 17, …) is not an image.
    fn collection(dir: &Path, count: usize) -> Vec<PathBuf> {
        (0..count)
            .map(|k| {
                let path = dir.join(format!("{k:03}.png"));
                if k % 7 == 3 {
                    std::fs::write(&path, b"not an image").unwrap();
                } else {
                    image::GrayImage::from_pixel(6, 6, image::Luma([k as u8])).save(&path).unwrap();
                }
                path
            })
            .collect()
    }

    #[test]
    fn decoding_ahead_hands_over_every_batch_in_order_whatever_the_threads() {
        let dir = tempfile::tempdir().unwrap();
        let files = collection(dir.path(), 61);
        let preprocessor = preprocessor();
        let expected: Vec<(usize, Result<Vec<f32>, String>)> = files
            .iter()
            .enumerate()
            .map(|(k, path)| (k, preprocessor.prepare_file(path).map_err(|e| e.to_string())))
            .collect();
        for (batch_size, threads) in [(1, 1), (4, 2), (8, 3), (16, 8), (64, 2), (5, 40)] {
            let mut batches = 0;
            let mut handed_over = Vec::new();
            decode_ahead(
                preprocessor,
                &files,
                |path| path,
                batch_size,
                threads,
                |batch| {
                    let first = handed_over.len();
                    let expected_files = &files[first..(first + batch_size).min(files.len())];
                    assert_eq!(batch.decoded.len() + batch.failed.len(), expected_files.len());
                    assert_eq!(batch.inputs.len(), batch.decoded.len() * preprocessor.spec.len());
                    let mut inputs = batch.inputs.chunks_exact(preprocessor.spec.len());
                    let mut failed = batch.failed.into_iter();
                    let mut decoded = batch.decoded.into_iter().peekable();
                    // Put the batch back in file order: decoded and failed items each keep theirs.
                    for (k, file) in (first..).zip(expected_files) {
                        if decoded.peek() == Some(&file) {
                            decoded.next();
                            handed_over.push((k, Ok(inputs.next().unwrap().to_vec())));
                        } else {
                            let (path, reason) = failed.next().unwrap();
                            assert_eq!(path, file);
                            handed_over.push((k, Err(reason)));
                        }
                    }
                    batches += 1;
                    Ok::<(), ()>(())
                },
            )
            .unwrap();
            assert_eq!(batches, files.len().div_ceil(batch_size), "batch {batch_size}, {threads} threads");
            assert_eq!(handed_over, expected, "batch {batch_size}, {threads} threads");
        }
        assert_eq!(expected.iter().filter(|(_, result)| result.is_err()).count(), 9);
    }

    #[test]
    fn decoding_stays_a_bounded_number_of_batches_ahead_of_a_slow_consumer() {
        let dir = tempfile::tempdir().unwrap();
        let files = collection(dir.path(), 80);
        let decoded_files = AtomicUsize::new(0);
        let (batch_size, threads) = (2, 3);
        let mut consumed = 0;
        decode_ahead(
            preprocessor(),
            &files,
            |path| {
                decoded_files.fetch_add(1, Ordering::SeqCst);
                path
            },
            batch_size,
            threads,
            |batch| {
                consumed += 1;
                std::thread::sleep(Duration::from_millis(3));
                // The batches handed over, those waiting and one in hand per thread.
                let limit = (consumed + threads * BATCHES_AHEAD_PER_THREAD + threads) * batch_size;
                let started = decoded_files.load(Ordering::SeqCst);
                assert!(
                    started <= limit,
                    "{started} files decoded after {consumed} batches; at most {limit}"
                );
                assert_eq!(batch.decoded.len() + batch.failed.len(), batch_size);
                Ok::<(), ()>(())
            },
        )
        .unwrap();
        assert_eq!(consumed, 40);
    }

    #[test]
    fn an_error_from_the_consumer_stops_the_decoding_and_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let files = collection(dir.path(), 40);
        let decoded_files = AtomicUsize::new(0);
        let mut calls = 0;
        let result = decode_ahead(
            preprocessor(),
            &files,
            |path| {
                decoded_files.fetch_add(1, Ordering::SeqCst);
                path
            },
            1,
            4,
            |_| {
                calls += 1;
                if calls == 2 { Err("the model failed") } else { Ok(()) }
            },
        );
        assert_eq!(result.unwrap_err(), "the model failed");
        assert_eq!(calls, 2);
        // Decoding stopped within its window instead of running through the whole collection.
        assert!(decoded_files.load(Ordering::SeqCst) <= 2 + 4 * BATCHES_AHEAD_PER_THREAD + 4);
    }

    #[test]
    fn a_panicking_decoder_ends_the_pipeline_with_its_panic_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let files = collection(dir.path(), 30);
        let outcome = std::panic::catch_unwind(|| {
            decode_ahead(
                preprocessor(),
                &files,
                |path| {
                    assert!(!path.ends_with("004.png"), "decoder bug");
                    path
                },
                1,
                3,
                |_| Ok::<(), ()>(()),
            )
        });
        assert!(outcome.is_err());
    }

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
