//! Retrieval while training: every few epochs the encoder embeds a held-out labelled split
//! (conv tap, as `dim-embed` writes it by default), every image queries all the others by exact
//! cosine search, and precision@k goes into `train_log.jsonl` and the progress line.

use crate::data::{DataFormat, Dataset, Split, open_dataset};
use crate::eval::features::{LabelledImages, Representation, encoder_features, read_labelled_images};
use crate::model::encoder::Encoder;
use dim_models::preprocess::InputSpec;
use dim_models::tap::Tap;
use dim_vectors::distance::Metric;
use dim_vectors::retrieval::{nearest_neighbours, score};
use std::path::Path;
use tch::{Device, Tensor};

/// Neighbours scored per query.
pub const RETRIEVAL_K: usize = 10;

/// A held-out labelled split in memory, and how often it is searched. The pixels are kept as
/// plain values (a tensor is not `Sync`), so the check can be shared across threads.
#[derive(Debug, Clone)]
pub struct RetrievalCheck {
    every: usize,
    pixels: Vec<f32>,
    shape: [i64; 4],
    labels: Vec<u32>,
}

/// Why the held-out split cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetrievalCheckError {
    /// The split could not be opened.
    #[error("cannot open the held-out split of {path}")]
    Open {
        /// The data path.
        path: std::path::PathBuf,
        /// The cause.
        source: crate::data::DataError,
    },
    /// The training data has no separate test split and none was given.
    #[error(
        "{0} has no held-out split (an image folder is its own test split): pass --retrieval-data with \
         a folder of class folders that training does not use"
    )]
    NoHeldOutSplit(String),
    /// The split is unlabelled, empty or of another shape.
    #[error(transparent)]
    Features(#[from] crate::eval::features::FeatureError),
    /// Too few images to search.
    #[error("the held-out split has {0} readable image(s); retrieval needs at least 2")]
    TooFew(usize),
    /// The search failed.
    #[error(transparent)]
    Search(#[from] dim_vectors::retrieval::RetrievalError),
}

impl RetrievalCheck {
    /// Reads up to `limit` images (a seeded subset) of the test split of `data`, or of
    /// `separate` when given. `training` is the training set, whose split must differ.
    pub fn open(
        data: &Path,
        separate: Option<&Path>,
        format: DataFormat,
        spec: InputSpec,
        training: &dyn Dataset,
        limit: usize,
        every: usize,
    ) -> Result<Self, RetrievalCheckError> {
        let path = separate.unwrap_or(data);
        let format = if separate.is_some() { DataFormat::Auto } else { format };
        let dataset = open_dataset(path, format, Split::Test, spec)
            .map_err(|source| RetrievalCheckError::Open { path: path.into(), source })?;
        if dataset.fingerprint() == training.fingerprint() {
            return Err(RetrievalCheckError::NoHeldOutSplit(dataset.describe()));
        }
        let split = read_labelled_images(&*dataset, Some(limit), 0, &indicatif::ProgressBar::hidden())?;
        RetrievalCheck::new(&split, every)
    }

    /// The check of `split`, searched after every `every` epochs (0 counts as 1).
    pub fn new(split: &LabelledImages, every: usize) -> Result<Self, RetrievalCheckError> {
        let rows = split.indices.len();
        if rows < 2 {
            return Err(RetrievalCheckError::TooFew(rows));
        }
        let size = split.images.size();
        Ok(RetrievalCheck {
            every: every.max(1),
            pixels: Vec::<f32>::try_from(split.images.flatten(0, -1))
                .expect("split images are f32 on the CPU"),
            shape: [size[0], size[1], size[2], size[3]],
            labels: labels_of(split),
        })
    }

    /// Images searched.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split is empty (never: [`RetrievalCheck::new`] needs two images).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Epochs between checks.
    pub fn every(&self) -> usize {
        self.every
    }

    /// Whether the check runs after `epoch` (1-based).
    pub fn due(&self, epoch: usize) -> bool {
        epoch.is_multiple_of(self.every)
    }

    /// Precision@10 (micro) of the encoder's conv features on the split, by exact cosine search.
    pub fn precision(&self, encoder: &Encoder, device: Device) -> Result<f64, RetrievalCheckError> {
        let images = Tensor::from_slice(&self.pixels).view(self.shape);
        precision_of(encoder, &images, &self.labels, device)
    }
}

/// Precision@[`RETRIEVAL_K`] (micro) of `encoder`'s conv features over `split`, every image
/// querying all the others by exact cosine search (evaluation-mode BatchNorm).
pub fn precision_at_k(
    encoder: &Encoder,
    split: &LabelledImages,
    device: Device,
) -> Result<f64, RetrievalCheckError> {
    precision_of(encoder, &split.images, &labels_of(split), device)
}

fn labels_of(split: &LabelledImages) -> Vec<u32> {
    Vec::<i64>::try_from(&split.labels)
        .expect("labels are i64 on the CPU")
        .into_iter()
        .map(|label| label as u32)
        .collect()
}

fn precision_of(
    encoder: &Encoder,
    images: &Tensor,
    labels: &[u32],
    device: Device,
) -> Result<f64, RetrievalCheckError> {
    let progress = indicatif::ProgressBar::hidden();
    let features =
        encoder_features(encoder, images, &[Representation::Tap(Tap::Conv)], 256, device, &progress)?;
    let conv = &features[0].1;
    let cols = conv.size()[1] as usize;
    let values = Vec::<f32>::try_from(conv.flatten(0, -1)).expect("features are f32 on the CPU");
    let neighbours = nearest_neighbours(&values, cols, RETRIEVAL_K, Metric::Cosine)?;
    Ok(score(&neighbours, labels)?.precision_at_k_micro)
}
