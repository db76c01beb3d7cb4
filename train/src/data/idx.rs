//! MNIST-style IDX datasets (MNIST, Fashion-MNIST): u8 image and label files, gzipped or plain,
//! validated against their headers and held in memory (60 000 × 28 × 28 bytes is small).

use super::fingerprint::Fingerprint;
use super::{DataError, Dataset, Sample, Split};
use dim_models::idx::{self, IdxImages};
use dim_models::preprocess::{InputSpec, image_to_input};
use image::{DynamicImage, GrayImage};
use std::path::{Path, PathBuf};

/// An IDX images file, with its labels file when one lies beside it.
#[derive(Debug)]
pub struct IdxDataset {
    images_path: PathBuf,
    /// `count` images of `rows` × `cols` bytes, row-major, one after another.
    pixels: Vec<u8>,
    count: usize,
    rows: usize,
    cols: usize,
    labels: Option<Vec<u8>>,
    num_classes: Option<usize>,
    spec: InputSpec,
    fingerprint: String,
}

impl IdxDataset {
    /// Opens an images file, or the split's images file in a directory, and the labels beside it.
    ///
    /// In a directory the train split is `train-images-idx3-ubyte[.gz]` and the test split
    /// `t10k-images-idx3-ubyte[.gz]`. Labels are optional; when present their count must match.
    pub fn open(path: &Path, split: Split, spec: InputSpec) -> Result<Self, DataError> {
        let images_path = if path.is_dir() {
            idx::find_images_file(path, split_prefix(split)).ok_or_else(|| DataError::Format {
                path: path.into(),
                reason: format!(
                    "no {prefix}-images-idx3-ubyte or {prefix}-images-idx3-ubyte.gz in this directory",
                    prefix = split_prefix(split)
                ),
            })?
        } else {
            path.to_path_buf()
        };
        let IdxImages { count, rows, cols, pixels } = idx::read_images(&images_path)?;
        let labels = match idx::labels_path_for(&images_path) {
            Some(labels_path) => {
                let labels = idx::read_labels(&labels_path)?;
                if labels.len() != count {
                    return Err(DataError::Format {
                        path: labels_path,
                        reason: format!(
                            "holds {} labels but {} holds {count} images",
                            labels.len(),
                            images_path.display()
                        ),
                    });
                }
                Some(labels)
            }
            None => None,
        };
        let num_classes =
            labels.as_ref().map(|labels| labels.iter().max().map_or(0, |&max| max as usize + 1));

        let mut fingerprint = Fingerprint::new("idx");
        fingerprint.add_number(count as u64).add_number(rows as u64).add_number(cols as u64);
        fingerprint.add_content_sample(&pixels);
        if let Some(labels) = &labels {
            fingerprint.add_content_sample(labels);
        }
        let fingerprint = fingerprint.finish();

        Ok(IdxDataset { images_path, pixels, count, rows, cols, labels, num_classes, spec, fingerprint })
    }
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.count
    }

    fn input_spec(&self) -> InputSpec {
        self.spec
    }

    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.count {
            return Err(DataError::Format {
                path: self.images_path.clone(),
                reason: format!("example {index} requested but the file holds {}", self.count),
            });
        }
        let image_bytes = self.rows * self.cols;
        let raw = self.pixels[index * image_bytes..(index + 1) * image_bytes].to_vec();
        let grey = GrayImage::from_raw(self.cols as u32, self.rows as u32, raw)
            .expect("slice length is rows × cols by construction");
        // The shared preprocessing pads 28×28 to the input size exactly as the embedder does,
        // and replicates grey into three channels for RGB models.
        let pixels = image_to_input(&DynamicImage::ImageLuma8(grey), &self.spec);
        let label = self.labels.as_ref().map(|labels| u32::from(labels[index]));
        Ok(Sample { pixels, label })
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn describe(&self) -> String {
        let classes = match self.num_classes {
            Some(classes) => format!("{classes} classes"),
            None => "unlabelled".to_string(),
        };
        format!(
            "IDX {} ({} images of {}×{}, {classes})",
            self.images_path.display(),
            self.count,
            self.rows,
            self.cols
        )
    }
}

/// File-name prefix of a split's IDX files.
pub(crate) fn split_prefix(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::idx::{IMAGES_MAGIC, LABELS_MAGIC};
    use dim_models::preprocess::{Background, ResizePolicy};
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    const GREY_32: InputSpec =
        InputSpec { channels: 1, size: 32, resize: ResizePolicy::Pad, background: Background::White };

    fn images_bytes(count: usize, rows: usize, cols: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for value in [IMAGES_MAGIC, count as u32, rows as u32, cols as u32] {
            bytes.extend_from_slice(&value.to_be_bytes());
        }
        // Image i is filled with the value i * 10, so examples can be told apart.
        for i in 0..count {
            bytes.extend(std::iter::repeat_n((i * 10) as u8, rows * cols));
        }
        bytes
    }

    fn labels_bytes(labels: &[u8]) -> Vec<u8> {
        let mut bytes = LABELS_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        bytes.extend_from_slice(labels);
        bytes
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn format_reason(result: Result<IdxDataset, DataError>) -> (PathBuf, String) {
        match result {
            Err(DataError::Format { path, reason }) => (path, reason),
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn gzipped_directory_split_is_read_padded_and_labelled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), gzip(&images_bytes(3, 28, 28)))
            .unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte.gz"), gzip(&labels_bytes(&[4, 0, 9])))
            .unwrap();
        std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), images_bytes(2, 28, 28)).unwrap();

        let train = IdxDataset::open(dir.path(), Split::Train, GREY_32).unwrap();
        assert_eq!(train.len(), 3);
        assert_eq!(train.num_classes(), Some(10));
        let sample = train.get(2).unwrap();
        assert_eq!(sample.label, Some(9));
        assert_eq!(sample.pixels.len(), 32 * 32);
        // 28×28 is centred with a 2-pixel black border.
        assert_eq!(sample.pixels[0], 0.0);
        assert!((sample.pixels[2 * 32 + 2] - 20.0 / 255.0).abs() < 1e-6);

        let test = IdxDataset::open(dir.path(), Split::Test, GREY_32).unwrap();
        assert_eq!(test.len(), 2);
        assert_eq!(test.num_classes(), None);
        assert_eq!(test.get(1).unwrap().label, None);
        assert_ne!(train.fingerprint(), test.fingerprint());
    }

    #[test]
    fn plain_images_file_gives_the_same_pixels_as_gzipped_and_rgb_replicates_grey() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain-images-idx3-ubyte");
        let zipped = dir.path().join("zipped.bin");
        std::fs::write(&plain, images_bytes(2, 28, 28)).unwrap();
        std::fs::write(&zipped, gzip(&images_bytes(2, 28, 28))).unwrap();
        assert!(idx::has_idx_magic(&plain).unwrap() && idx::has_idx_magic(&zipped).unwrap());
        let a = IdxDataset::open(&plain, Split::Train, GREY_32).unwrap();
        let b = IdxDataset::open(&zipped, Split::Train, GREY_32).unwrap();
        assert_eq!(a.get(1).unwrap(), b.get(1).unwrap());
        assert_eq!(a.fingerprint(), b.fingerprint());

        let rgb = IdxDataset::open(&plain, Split::Train, InputSpec { channels: 3, ..GREY_32 }).unwrap();
        let pixels = rgb.get(1).unwrap().pixels;
        assert_eq!(pixels.len(), 3 * 1024);
        assert_eq!(pixels[..1024], pixels[1024..2048]);
        assert_eq!(pixels[..1024], a.get(1).unwrap().pixels[..]);
    }

    #[test]
    fn truncated_images_file_names_the_file_and_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte");
        let mut bytes = images_bytes(3, 28, 28);
        bytes.truncate(bytes.len() - 100);
        std::fs::write(&path, bytes).unwrap();
        let (error_path, reason) = format_reason(IdxDataset::open(&path, Split::Train, GREY_32));
        assert_eq!(error_path, path);
        assert!(reason.contains("truncated"), "{reason}");
        assert!(reason.contains(&(16 + 3 * 784).to_string()), "{reason}");
        assert!(reason.contains(&(16 + 3 * 784 - 100).to_string()), "{reason}");
    }

    #[test]
    fn truncated_gzip_stream_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte.gz");
        let zipped = gzip(&images_bytes(3, 28, 28));
        std::fs::write(&path, &zipped[..zipped.len() / 2]).unwrap();
        let (error_path, reason) = format_reason(IdxDataset::open(&path, Split::Train, GREY_32));
        assert_eq!(error_path, path);
        assert!(reason.contains("gzip"), "{reason}");
    }

    #[test]
    fn truncated_labels_file_is_reported_against_the_labels_file() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("train-images-idx3-ubyte");
        let labels = dir.path().join("train-labels-idx1-ubyte");
        std::fs::write(&images, images_bytes(3, 28, 28)).unwrap();
        let mut bytes = labels_bytes(&[1, 2, 3]);
        bytes.pop();
        std::fs::write(&labels, bytes).unwrap();
        let (error_path, reason) = format_reason(IdxDataset::open(&images, Split::Train, GREY_32));
        assert_eq!(error_path, labels);
        assert!(reason.contains("truncated") && reason.contains("3 labels"), "{reason}");
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte");
        // A labels file where an images file belongs.
        std::fs::write(&path, labels_bytes(&[0; 20])).unwrap();
        assert!(!idx::has_idx_magic(&path).unwrap());
        let (_, reason) = format_reason(IdxDataset::open(&path, Split::Train, GREY_32));
        assert!(reason.contains("magic number is 0x00000801"), "{reason}");
    }

    #[test]
    fn label_count_must_match_image_count() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("train-images-idx3-ubyte");
        std::fs::write(&images, images_bytes(3, 28, 28)).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), labels_bytes(&[1, 2])).unwrap();
        let (_, reason) = format_reason(IdxDataset::open(&images, Split::Train, GREY_32));
        assert!(reason.contains("2 labels") && reason.contains("3 images"), "{reason}");
    }

    #[test]
    fn directory_without_the_split_says_which_file_it_wanted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), images_bytes(1, 28, 28)).unwrap();
        let (_, reason) = format_reason(IdxDataset::open(dir.path(), Split::Test, GREY_32));
        assert!(reason.contains("t10k-images-idx3-ubyte"), "{reason}");
    }
}
