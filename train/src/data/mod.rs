//! Training and evaluation data: IDX (MNIST/Fashion-MNIST), CIFAR-10/100 and STL-10 binaries
//! and image folders, all yielding CHW f32 images in [0, 1] fitted to the encoder's input, plus a
//! batch loader that shuffles by seed, decodes in parallel and prefetches, the same batches
//! gathered from a dataset held on the training device ([`ResidentData`]), a cache that decodes
//! each image file only once per run, the augmented [`views`] of cross-view training, and the
//! [`device_upload`] that puts host values on the device without waiting for it.

mod cifar;
mod decoded_cache;
pub mod device_upload;
mod fingerprint;
mod folder;
mod idx;
mod loader;
mod resident;
mod stl10;
pub mod views;

pub use cifar::{CifarDataset, CifarKind};
pub use decoded_cache::{CACHE_FILE, CachePolicy, DecodedCache};
pub use folder::FolderDataset;
pub use idx::IdxDataset;
pub use loader::{Augment, Batch, EpochBatches, LoaderOptions, batches_per_epoch, epoch_batches};
pub use resident::{DoesNotFit, ResidentData, ResidentEpoch};
pub use stl10::Stl10Dataset;

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

impl From<dim_models::idx::IdxError> for DataError {
    fn from(error: dim_models::idx::IdxError) -> Self {
        match error {
            dim_models::idx::IdxError::Io { path, source } => DataError::Io { path, source },
            dim_models::idx::IdxError::Format { path, reason } => DataError::Format { path, reason },
            other => DataError::Format { path: std::path::PathBuf::new(), reason: other.to_string() },
        }
    }
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
    /// Whether [`Dataset::get`] decodes an image file (worth a [`DecodedCache`] when the same
    /// examples are read every epoch).
    fn decodes_files(&self) -> bool {
        false
    }
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
    /// STL-10 binary files (`stl10_binary/`): the labelled train and test splits.
    Stl10,
    /// STL-10 binary files with the 100,000 unlabelled images added to the train split, for
    /// self-supervised training (the test split is unchanged).
    Stl10WithUnlabelled,
    /// A folder of image files, labelled by first-level subfolder when every image has one.
    Folder,
}

/// Serialised by its command-line name (`"idx"`, `"stl10-with-unlabelled"`), as checkpoints and
/// reports record it.
impl serde::Serialize for DataFormat {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use clap::ValueEnum;
        let value = self.to_possible_value().expect("every data format has a name");
        serializer.serialize_str(value.get_name())
    }
}

/// Read by its command-line name, in any case.
impl<'de> serde::Deserialize<'de> for DataFormat {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use clap::ValueEnum;
        let name = <String as serde::Deserialize>::deserialize(deserializer)?;
        DataFormat::from_str(&name, true).map_err(serde::de::Error::custom)
    }
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
        DataFormat::Stl10 => Arc::new(Stl10Dataset::open(path, split, false, spec)?),
        DataFormat::Stl10WithUnlabelled => Arc::new(Stl10Dataset::open(path, split, true, spec)?),
        DataFormat::Folder => Arc::new(FolderDataset::open(path, spec)?),
        DataFormat::Auto => unreachable!("detect_format picks a concrete format"),
    })
}

/// Guesses the format from a directory's file names or a file's first bytes.
fn detect_format(path: &Path) -> Result<DataFormat, DataError> {
    let metadata = std::fs::metadata(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    if metadata.is_dir() {
        if dim_models::idx::find_images_file(path, idx::split_prefix(Split::Train)).is_some()
            || dim_models::idx::find_images_file(path, idx::split_prefix(Split::Test)).is_some()
        {
            return Ok(DataFormat::Idx);
        }
        if CifarKind::Cifar10.has_split_files(path) {
            return Ok(DataFormat::Cifar10);
        }
        if CifarKind::Cifar100.has_split_files(path) {
            return Ok(DataFormat::Cifar100);
        }
        if stl10::has_split_files(path) {
            return Ok(DataFormat::Stl10);
        }
        return Ok(DataFormat::Folder);
    }
    if dim_models::idx::has_idx_magic(path)? {
        return Ok(DataFormat::Idx);
    }
    Err(DataError::Format {
        path: path.into(),
        reason: "cannot tell the dataset format: not a directory and not an IDX file; \
                 pass --format (idx, cifar10, cifar100, stl10 or folder)"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::preprocess::{Background, ResizePolicy};
    use image::{Luma, Rgb, RgbImage};

    const GREY_32: InputSpec =
        InputSpec { channels: 1, size: 32, resize: ResizePolicy::Pad, background: Background::White };

    fn idx_images(count: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        for value in [0x0000_0803u32, count, 28, 28] {
            bytes.extend_from_slice(&value.to_be_bytes());
        }
        bytes.resize(16 + count as usize * 784, 7);
        bytes
    }

    #[test]
    fn auto_detects_each_layout() {
        let idx_dir = tempfile::tempdir().unwrap();
        std::fs::write(idx_dir.path().join("t10k-images-idx3-ubyte"), idx_images(2)).unwrap();
        let data = open_dataset(idx_dir.path(), DataFormat::Auto, Split::Test, GREY_32).unwrap();
        assert!(data.describe().starts_with("IDX"), "{}", data.describe());
        let single = idx_dir.path().join("t10k-images-idx3-ubyte");
        assert_eq!(open_dataset(&single, DataFormat::Auto, Split::Train, GREY_32).unwrap().len(), 2);

        let cifar10 = tempfile::tempdir().unwrap();
        std::fs::write(cifar10.path().join("test_batch.bin"), vec![3u8; 3073]).unwrap();
        let data = open_dataset(cifar10.path(), DataFormat::Auto, Split::Test, GREY_32).unwrap();
        assert!(data.describe().starts_with("CIFAR-10 "), "{}", data.describe());

        let cifar100 = tempfile::tempdir().unwrap();
        std::fs::write(cifar100.path().join("test.bin"), vec![3u8; 3074]).unwrap();
        let data = open_dataset(cifar100.path(), DataFormat::Auto, Split::Test, GREY_32).unwrap();
        assert!(data.describe().starts_with("CIFAR-100 "), "{}", data.describe());

        let folder = tempfile::tempdir().unwrap();
        image::GrayImage::from_pixel(5, 5, Luma([1])).save(folder.path().join("one.png")).unwrap();
        let data = open_dataset(folder.path(), DataFormat::Auto, Split::Train, GREY_32).unwrap();
        assert!(data.describe().starts_with("image folder"), "{}", data.describe());

        let unknown = folder.path().join("one.png");
        let error = open_dataset(&unknown, DataFormat::Auto, Split::Train, GREY_32).err().unwrap();
        assert!(error.to_string().contains("--format"), "{error}");
        let missing = folder.path().join("absent");
        assert!(matches!(
            open_dataset(&missing, DataFormat::Auto, Split::Train, GREY_32),
            Err(DataError::Io { .. })
        ));
    }

    #[test]
    fn loader_skips_and_reports_a_corrupt_image_in_a_class_folder() {
        let dir = tempfile::tempdir().unwrap();
        for (class, count) in [("apple", 3), ("pear", 4)] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for i in 0..count {
                RgbImage::from_pixel(6, 6, Rgb([i * 40, 0, 0]))
                    .save(dir.path().join(format!("{class}/{i}.png")))
                    .unwrap();
            }
        }
        std::fs::write(dir.path().join("pear/zz-corrupt.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
        let spec =
            InputSpec { channels: 3, size: 8, resize: ResizePolicy::Pad, background: Background::White };
        let data = open_dataset(dir.path(), DataFormat::Folder, Split::Train, spec).unwrap();
        assert_eq!((data.len(), data.num_classes()), (8, Some(2)));

        let options = LoaderOptions { batch_size: 3, seed: 5, ..LoaderOptions::default() };
        let mut batches = epoch_batches(data, &options, 0);
        let loaded: Vec<Batch> = batches.by_ref().collect();
        assert_eq!(loaded.iter().map(|batch| batch.len).sum::<usize>(), 7);
        assert!(loaded.iter().all(|batch| batch.images.len() == batch.len * spec.len()));
        let mut labels: Vec<i64> = loaded.iter().flat_map(|batch| batch.labels.clone().unwrap()).collect();
        labels.sort();
        assert_eq!(labels, [0, 0, 0, 1, 1, 1, 1]);
        let skipped = batches.skipped();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0, 7, "the corrupt file sorts last");
        assert!(skipped[0].1.contains("zz-corrupt.png"), "{}", skipped[0].1);
    }
}
