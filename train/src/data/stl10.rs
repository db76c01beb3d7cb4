//! STL-10 binary dataset (`stl10_binary/`): 96×96 RGB images stored as three column-major
//! planes per image (`train_X.bin`, `test_X.bin`, `unlabeled_X.bin`) and one label byte 1–10 per
//! image (`train_y.bin`, `test_y.bin`), read whole into memory and checked for truncation.
//!
//! The train split is the 5,000 labelled images, or with the unlabelled 100,000 appended (labels
//! absent) for self-supervised training, as the official DIM code trains on STL-10.

use super::fingerprint::Fingerprint;
use super::{DataError, Dataset, Sample, Split};
use dim_models::preprocess::{InputSpec, image_to_input};
use image::{DynamicImage, RgbImage};
use std::path::{Path, PathBuf};

/// STL-10 images are 96×96.
const SIDE: usize = 96;
/// Bytes of one image: three 96×96 planes (red, green, blue).
const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// STL-10 has ten classes, labelled 1 to 10 in the files.
const CLASSES: usize = 10;

/// The STL-10 files a directory must hold for `split`: images and, where labelled, labels.
fn split_files(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train_X.bin", "train_y.bin"),
        Split::Test => ("test_X.bin", "test_y.bin"),
    }
}

/// The unlabelled images' file.
const UNLABELLED_FILE: &str = "unlabeled_X.bin";

/// Whether `dir` holds STL-10 image files for either split.
pub(crate) fn has_split_files(dir: &Path) -> bool {
    [Split::Train, Split::Test].into_iter().any(|split| dir.join(split_files(split).0).is_file())
}

/// An STL-10 split in memory.
#[derive(Debug)]
pub struct Stl10Dataset {
    source: PathBuf,
    /// Whole images, one after another: labelled first, then any unlabelled.
    images: Vec<u8>,
    /// Class indices 0–9 of the labelled images (the first `labels.len()` images).
    labels: Vec<u8>,
    count: usize,
    spec: InputSpec,
    fingerprint: String,
}

fn format_error(path: &Path, reason: String) -> DataError {
    DataError::Format { path: path.into(), reason }
}

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    if !path.is_file() {
        return Err(format_error(path, "missing: an STL-10 binary directory holds this file".into()));
    }
    std::fs::read(path).map_err(|source| DataError::Io { path: path.into(), source })
}

/// Reads an images file, checking it holds whole 96×96×3 images.
fn read_images(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read(path)?;
    if bytes.is_empty() || bytes.len() % IMAGE_BYTES != 0 {
        return Err(format_error(
            path,
            format!(
                "truncated or not STL-10: {} bytes is not a whole number of {IMAGE_BYTES}-byte 96x96 RGB images",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

impl Stl10Dataset {
    /// Opens `split` of the STL-10 binary directory `dir`; with `with_unlabelled`, the train
    /// split also holds the unlabelled images.
    pub fn open(dir: &Path, split: Split, with_unlabelled: bool, spec: InputSpec) -> Result<Self, DataError> {
        let (images_name, labels_name) = split_files(split);
        let mut images = read_images(&dir.join(images_name))?;
        let labels_path = dir.join(labels_name);
        let labels = read(&labels_path)?;
        if labels.len() * IMAGE_BYTES != images.len() {
            return Err(format_error(
                &labels_path,
                format!("holds {} labels for {} images", labels.len(), images.len() / IMAGE_BYTES),
            ));
        }
        if let Some(bad) = labels.iter().position(|&label| !(1..=CLASSES as u8).contains(&label)) {
            return Err(format_error(
                &labels_path,
                format!("label {} of image {bad} is outside 1..=10", labels[bad]),
            ));
        }
        let labels: Vec<u8> = labels.iter().map(|label| label - 1).collect();
        let mut files = 2u64;
        if with_unlabelled && split == Split::Train {
            images.extend_from_slice(&read_images(&dir.join(UNLABELLED_FILE))?);
            files += 1;
        }
        let count = images.len() / IMAGE_BYTES;
        let fingerprint = Fingerprint::new("STL-10")
            .add_number(files)
            .add_number(count as u64)
            .add_number(labels.len() as u64)
            .add_content_sample(&images)
            .add_content_sample(&labels)
            .finish();
        Ok(Stl10Dataset { source: dir.to_path_buf(), images, labels, count, spec, fingerprint })
    }
}

impl Dataset for Stl10Dataset {
    fn len(&self) -> usize {
        self.count
    }

    fn input_spec(&self) -> InputSpec {
        self.spec
    }

    fn num_classes(&self) -> Option<usize> {
        Some(CLASSES)
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.count {
            return Err(format_error(
                &self.source,
                format!("example {index} requested but the data holds {}", self.count),
            ));
        }
        let planes = &self.images[index * IMAGE_BYTES..(index + 1) * IMAGE_BYTES];
        let plane = SIDE * SIDE;
        // Planes are column-major: pixel (x, y) sits at x·96 + y.
        let rgb = RgbImage::from_fn(SIDE as u32, SIDE as u32, |x, y| {
            let at = x as usize * SIDE + y as usize;
            image::Rgb([planes[at], planes[plane + at], planes[2 * plane + at]])
        });
        // The shared preprocessing resizes to the encoder's input as the embedder does.
        let pixels = image_to_input(&DynamicImage::ImageRgb8(rgb), &self.spec);
        Ok(Sample { pixels, label: self.labels.get(index).map(|&label| u32::from(label)) })
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn describe(&self) -> String {
        let unlabelled = self.count - self.labels.len();
        let extra = if unlabelled > 0 { format!(", {unlabelled} of them unlabelled") } else { String::new() };
        format!("STL-10 {} ({} images{extra}, {CLASSES} classes)", self.source.display(), self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::preprocess::{Background, ResizePolicy};

    const RGB_96: InputSpec =
        InputSpec { channels: 3, size: 96, resize: ResizePolicy::Stretch, background: Background::White };

    /// One image whose red plane is 0 except the byte at column-major offset 96 (x 1, y 0),
    /// green is `green` everywhere and blue 0.
    fn image(green: u8) -> Vec<u8> {
        let mut bytes = vec![0u8; IMAGE_BYTES];
        bytes[SIDE] = 255;
        bytes[SIDE * SIDE..2 * SIDE * SIDE].fill(green);
        bytes
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn planes_are_read_column_major_and_labels_from_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "train_X.bin", &[image(10), image(20)].concat());
        write(dir.path(), "train_y.bin", &[1, 10]);
        let data = Stl10Dataset::open(dir.path(), Split::Train, false, RGB_96).unwrap();
        assert_eq!(data.len(), 2);
        let sample = data.get(1).unwrap();
        assert_eq!(sample.label, Some(9));
        let plane = SIDE * SIDE;
        // CHW output: red at (x 1, y 0) is index 1 of the red plane, not index 96.
        assert_eq!((sample.pixels[1], sample.pixels[SIDE]), (1.0, 0.0));
        assert!((sample.pixels[plane] - 20.0 / 255.0).abs() < 1e-6);
        assert_eq!(data.get(0).unwrap().label, Some(0));
        assert!(data.get(2).is_err());
    }

    #[test]
    fn the_unlabelled_images_join_only_the_train_split_and_carry_no_label() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "train_X.bin", &image(1));
        write(dir.path(), "train_y.bin", &[3]);
        write(dir.path(), "test_X.bin", &image(2));
        write(dir.path(), "test_y.bin", &[4]);
        write(dir.path(), "unlabeled_X.bin", &[image(5), image(6), image(7)].concat());
        let train = Stl10Dataset::open(dir.path(), Split::Train, true, RGB_96).unwrap();
        assert_eq!(train.len(), 4);
        assert_eq!((train.get(0).unwrap().label, train.get(3).unwrap().label), (Some(2), None));
        assert!(train.describe().contains("3 of them unlabelled"), "{}", train.describe());
        let test = Stl10Dataset::open(dir.path(), Split::Test, true, RGB_96).unwrap();
        assert_eq!(test.len(), 1);
        assert_ne!(train.fingerprint(), test.fingerprint());
        assert!(has_split_files(dir.path()));
    }

    #[test]
    fn truncated_images_bad_labels_and_missing_files_are_format_errors() {
        let dir = tempfile::tempdir().unwrap();
        let reason = |result: Result<Stl10Dataset, DataError>| match result {
            Err(DataError::Format { reason, .. }) => reason,
            other => panic!("expected a format error, got {other:?}"),
        };
        let missing = reason(Stl10Dataset::open(dir.path(), Split::Test, false, RGB_96));
        assert!(missing.contains("missing"), "{missing}");
        write(dir.path(), "test_X.bin", &image(1)[..IMAGE_BYTES - 1]);
        let truncated = reason(Stl10Dataset::open(dir.path(), Split::Test, false, RGB_96));
        assert!(truncated.contains("not a whole number"), "{truncated}");
        write(dir.path(), "test_X.bin", &image(1));
        write(dir.path(), "test_y.bin", &[0]);
        let label = reason(Stl10Dataset::open(dir.path(), Split::Test, false, RGB_96));
        assert!(label.contains("outside 1..=10"), "{label}");
        write(dir.path(), "test_y.bin", &[1, 2]);
        let count = reason(Stl10Dataset::open(dir.path(), Split::Test, false, RGB_96));
        assert!(count.contains("2 labels for 1 images"), "{count}");
    }
}
