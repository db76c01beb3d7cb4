//! Training and evaluation data: IDX (MNIST/Fashion-MNIST), CIFAR-10/100 binaries and image
//! folders, all yielding CHW f32 images in [0, 1] fitted to the encoder's input, plus a batch
//! loader that shuffles by seed, decodes in parallel and prefetches.

mod cifar;
mod fingerprint;
mod folder;
mod idx;
mod loader;

pub use cifar::{CifarDataset, CifarKind};
pub use folder::FolderDataset;
pub use idx::IdxDataset;
pub use loader::{Augment, Batch, EpochBatches, LoaderOptions, batches_per_epoch, epoch_batches};

use dim_models::preprocess::InputSpec;
use std::path::Path;
use std::sync::Arc;

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

/// Which reader [`open_dataset`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DataFormat {
    /// Decide from the directory's file names or the file's magic bytes.
    #[default]
    Auto,
    /// MNIST/Fashion-MNIST IDX files, gzipped or not.
    Idx,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// CIFAR-100 binary files (fine labels).
    Cifar100,
    /// A folder of image files, labelled by first-level subfolder when every image has one.
    Folder,
}

/// Which part of a dataset with a fixed train/test split to read. Image folders have no split
/// and ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Split {
    /// The training examples.
    #[default]
    Train,
    /// The held-out test examples.
    Test,
}

/// Opens the dataset at `path`, preprocessing every example to `spec`.
///
/// `path` may be a directory laid out as the format ships (e.g. `train-images-idx3-ubyte.gz`
/// beside `t10k-images-idx3-ubyte.gz`, or `data_batch_1.bin` … `test_batch.bin`), a single
/// IDX images file or CIFAR `.bin` file, or a folder of images.
pub fn open_dataset(
    path: &Path,
    format: DataFormat,
    split: Split,
    spec: InputSpec,
) -> Result<Arc<dyn Dataset>, DataError> {
    let format = match format {
        DataFormat::Auto => detect_format(path)?,
        chosen => chosen,
    };
    Ok(match format {
        DataFormat::Idx => Arc::new(IdxDataset::open(path, split, spec)?),
        DataFormat::Cifar10 => Arc::new(CifarDataset::open(path, CifarKind::Cifar10, split, spec)?),
        DataFormat::Cifar100 => Arc::new(CifarDataset::open(path, CifarKind::Cifar100, split, spec)?),
        DataFormat::Folder => Arc::new(FolderDataset::open(path, spec)?),
        DataFormat::Auto => unreachable!("detect_format picks a concrete format"),
    })
}

/// Guesses the format from a directory's file names or a file's first bytes.
fn detect_format(path: &Path) -> Result<DataFormat, DataError> {
    let metadata = std::fs::metadata(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    if metadata.is_dir() {
        if idx::find_images_file(path, Split::Train).is_some()
            || idx::find_images_file(path, Split::Test).is_some()
        {
            return Ok(DataFormat::Idx);
        }
        if CifarKind::Cifar10.has_split_files(path) {
            return Ok(DataFormat::Cifar10);
        }
        if CifarKind::Cifar100.has_split_files(path) {
            return Ok(DataFormat::Cifar100);
        }
        return Ok(DataFormat::Folder);
    }
    if idx::has_idx_magic(path)? {
        return Ok(DataFormat::Idx);
    }
    Err(DataError::Format {
        path: path.into(),
        reason: "cannot tell the dataset format: not a directory and not an IDX file; \
                 pass --format (idx, cifar10, cifar100 or folder)"
            .into(),
    })
}
