//! Training and evaluation data: IDX (MNIST/Fashion-MNIST), CIFAR-10/100 binaries and image
//! folders, all yielding CHW f32 images in [0, 1] fitted to the encoder's input, plus a batch
//! loader that shuffles by seed, decodes in parallel and prefetches.

use dim_models::preprocess::InputSpec;

/// One decoded, preprocessed example.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// CHW pixels in [0, 1], `InputSpec::len()` values.
    pub pixels: Vec<f32>,
    /// Class index, when the source has labels.
    pub label: Option<u32>,
}

/// Why an example or a data source could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file's contents do not match its format.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, e.g. "truncated: header says 60000 images, file holds 59999".
        reason: String,
    },
    /// One image could not be decoded (folder datasets skip these and report them).
    #[error("{path}: {source}")]
    Image {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: dim_models::preprocess::ImageError,
    },
}

/// A random-access collection of examples.
pub trait Dataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Shape every example is preprocessed to.
    fn input_spec(&self) -> InputSpec;
    /// Number of classes when labelled.
    fn num_classes(&self) -> Option<usize>;
    /// Reads and preprocesses example `index` (no augmentation).
    fn get(&self, index: usize) -> Result<Sample, DataError>;
    /// Stable digest of the source (kind, paths, sizes and a content sample).
    fn fingerprint(&self) -> String;
    /// One line for logs, e.g. "Fashion-MNIST IDX (60000 images, 10 classes)".
    fn describe(&self) -> String;
}
