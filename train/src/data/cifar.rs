//! CIFAR-10 and CIFAR-100 binary datasets: fixed-size records of label byte(s) and 32×32 RGB
//! planes, read whole into memory and checked for truncation.

use super::fingerprint::Fingerprint;
use super::{DataError, Dataset, Sample, Split};
use dim_models::preprocess::{InputSpec, image_to_input};
use image::{DynamicImage, RgbImage};
use std::path::{Path, PathBuf};

/// CIFAR images are 32×32.
const SIDE: usize = 32;
/// Bytes of one image: three 32×32 colour planes (red, green, blue).
const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

/// Which CIFAR binary layout to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// 1 label byte per record, 10 classes.
    Cifar10,
    /// A coarse and a fine label byte per record; the fine label (100 classes) is used.
    Cifar100,
}

impl CifarKind {
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }

    fn record_bytes(self) -> usize {
        self.label_bytes() + IMAGE_BYTES
    }

    fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "CIFAR-10",
            CifarKind::Cifar100 => "CIFAR-100",
        }
    }

    /// The files a split is made of, as the archives ship them.
    fn split_files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (CifarKind::Cifar10, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (CifarKind::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (CifarKind::Cifar100, Split::Train) => vec!["train.bin".into()],
            (CifarKind::Cifar100, Split::Test) => vec!["test.bin".into()],
        }
    }

    /// Whether `dir` holds this kind's files for either split.
    pub(crate) fn has_split_files(self, dir: &Path) -> bool {
        [Split::Train, Split::Test]
            .into_iter()
            .any(|split| self.split_files(split).iter().any(|name| dir.join(name).is_file()))
    }
}

/// A CIFAR split (or one `.bin` file) in memory.
#[derive(Debug)]
pub struct CifarDataset {
    kind: CifarKind,
    source: PathBuf,
    /// Whole records, one after another, from every file in order.
    records: Vec<u8>,
    count: usize,
    spec: InputSpec,
    fingerprint: String,
}

impl CifarDataset {
    /// Opens one `.bin` file, or the split's files in a directory (all of them must be present).
    pub fn open(path: &Path, kind: CifarKind, split: Split, spec: InputSpec) -> Result<Self, DataError> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let files: Vec<PathBuf> = kind.split_files(split).iter().map(|name| path.join(name)).collect();
            if let Some(missing) = files.iter().find(|file| !file.is_file()) {
                return Err(DataError::Format {
                    path: path.into(),
                    reason: format!(
                        "{} {split:?} split needs {}, which is missing",
                        kind.name(),
                        missing.file_name().map(|name| name.to_string_lossy()).unwrap_or_default()
                    ),
                });
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        let record_bytes = kind.record_bytes();
        let mut records = Vec::new();
        for file in &files {
            let bytes = std::fs::read(file).map_err(|source| DataError::Io { path: file.clone(), source })?;
            if bytes.is_empty() || bytes.len() % record_bytes != 0 {
                return Err(DataError::Format {
                    path: file.clone(),
                    reason: format!(
                        "truncated or not {}: {} bytes is not a whole number of {record_bytes}-byte records \
                         ({} whole records and {} bytes over)",
                        kind.name(),
                        bytes.len(),
                        bytes.len() / record_bytes,
                        bytes.len() % record_bytes
                    ),
                });
            }
            records.extend_from_slice(&bytes);
        }
        let count = records.len() / record_bytes;
        if let Some(bad) = (0..count)
            .find(|&i| usize::from(records[i * record_bytes + kind.label_bytes() - 1]) >= kind.num_classes())
        {
            return Err(DataError::Format {
                path: path.into(),
                reason: format!(
                    "record {bad} has label {}, but {} has {} classes; is this the other CIFAR format?",
                    records[bad * record_bytes + kind.label_bytes() - 1],
                    kind.name(),
                    kind.num_classes()
                ),
            });
        }
        let fingerprint = Fingerprint::new(kind.name())
            .add_number(files.len() as u64)
            .add_number(count as u64)
            .add_content_sample(&records)
            .finish();
        Ok(CifarDataset { kind, source: path.to_path_buf(), records, count, spec, fingerprint })
    }
}

impl Dataset for CifarDataset {
    fn len(&self) -> usize {
        self.count
    }

    fn input_spec(&self) -> InputSpec {
        self.spec
    }

    fn num_classes(&self) -> Option<usize> {
        Some(self.kind.num_classes())
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.count {
            return Err(DataError::Format {
                path: self.source.clone(),
                reason: format!("example {index} requested but the data holds {}", self.count),
            });
        }
        let record = &self.records[index * self.kind.record_bytes()..(index + 1) * self.kind.record_bytes()];
        let (label_bytes, planes) = record.split_at(self.kind.label_bytes());
        let plane = SIDE * SIDE;
        let mut interleaved = Vec::with_capacity(IMAGE_BYTES);
        for i in 0..plane {
            interleaved.extend_from_slice(&[planes[i], planes[plane + i], planes[2 * plane + i]]);
        }
        let rgb = RgbImage::from_raw(SIDE as u32, SIDE as u32, interleaved)
            .expect("three 32×32 planes make a 32×32 RGB image");
        // Going through the shared preprocessing keeps grey conversion and resizing identical to
        // what the embedder does with image files.
        let pixels = image_to_input(&DynamicImage::ImageRgb8(rgb), &self.spec);
        Ok(Sample { pixels, label: Some(u32::from(label_bytes[label_bytes.len() - 1])) })
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn describe(&self) -> String {
        format!(
            "{} {} ({} images, {} classes)",
            self.kind.name(),
            self.source.display(),
            self.count,
            self.kind.num_classes()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::preprocess::{Background, ResizePolicy};

    const RGB_32: InputSpec =
        InputSpec { channels: 3, size: 32, resize: ResizePolicy::Pad, background: Background::White };

    /// Records whose red plane is `seed`, green `seed + 1` and blue `seed + 2`, with the given
    /// label bytes in front.
    fn records(kind: CifarKind, labels: &[u8], seed: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &label in labels {
            if kind == CifarKind::Cifar100 {
                bytes.push(label / 5); // coarse label, ignored
            }
            bytes.push(label);
            for channel in 0..3u8 {
                bytes.extend(std::iter::repeat_n(seed + channel, SIDE * SIDE));
            }
        }
        bytes
    }

    fn format_reason(result: Result<CifarDataset, DataError>) -> (PathBuf, String) {
        match result {
            Err(DataError::Format { path, reason }) => (path, reason),
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn cifar10_train_split_reads_all_five_batches_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for i in 1..=5u8 {
            let path = dir.path().join(format!("data_batch_{i}.bin"));
            std::fs::write(path, records(CifarKind::Cifar10, &[i, 9 - i], i * 10)).unwrap();
        }
        std::fs::write(dir.path().join("test_batch.bin"), records(CifarKind::Cifar10, &[7], 200)).unwrap();
        assert!(CifarKind::Cifar10.has_split_files(dir.path()));
        assert!(!CifarKind::Cifar100.has_split_files(dir.path()));

        let train = CifarDataset::open(dir.path(), CifarKind::Cifar10, Split::Train, RGB_32).unwrap();
        assert_eq!((train.len(), train.num_classes()), (10, Some(10)));
        let sample = train.get(4).unwrap(); // first record of data_batch_3
        assert_eq!(sample.label, Some(3));
        assert_eq!(sample.pixels.len(), 3 * 1024);
        for (channel, plane) in sample.pixels.chunks(1024).enumerate() {
            let expected = f32::from(30 + channel as u8) / 255.0;
            assert!(plane.iter().all(|&v| (v - expected).abs() < 1e-6), "channel {channel}");
        }
        let test = CifarDataset::open(dir.path(), CifarKind::Cifar10, Split::Test, RGB_32).unwrap();
        assert_eq!((test.len(), test.get(0).unwrap().label), (1, Some(7)));
        assert_ne!(train.fingerprint(), test.fingerprint());
    }

    #[test]
    fn cifar100_uses_the_fine_label_and_grey_specs_convert() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.bin"), records(CifarKind::Cifar100, &[99, 42], 60)).unwrap();
        let grey = InputSpec { channels: 1, ..RGB_32 };
        let data = CifarDataset::open(dir.path(), CifarKind::Cifar100, Split::Train, grey).unwrap();
        assert_eq!(data.num_classes(), Some(100));
        let sample = data.get(0).unwrap();
        assert_eq!(sample.label, Some(99));
        assert_eq!(sample.pixels.len(), 1024);
        // Grey lies between the darkest and brightest channel.
        assert!(sample.pixels.iter().all(|&v| (60.0 / 255.0..=62.0 / 255.0).contains(&v)));
        assert_eq!(data.get(1).unwrap().label, Some(42));
    }

    #[test]
    fn truncated_file_reports_whole_records_and_leftover_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test_batch.bin");
        let mut bytes = records(CifarKind::Cifar10, &[1, 2, 3], 0);
        bytes.truncate(bytes.len() - 10);
        std::fs::write(&path, bytes).unwrap();
        let (error_path, reason) =
            format_reason(CifarDataset::open(&path, CifarKind::Cifar10, Split::Test, RGB_32));
        assert_eq!(error_path, path);
        assert!(
            reason.contains("truncated") && reason.contains("2 whole records and 3063 bytes over"),
            "{reason}"
        );
    }

    #[test]
    fn missing_split_file_and_out_of_range_labels_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data_batch_1.bin"), records(CifarKind::Cifar10, &[1], 0)).unwrap();
        let (_, reason) =
            format_reason(CifarDataset::open(dir.path(), CifarKind::Cifar10, Split::Train, RGB_32));
        assert!(reason.contains("data_batch_2.bin"), "{reason}");

        let path = dir.path().join("data_batch_1.bin");
        std::fs::write(&path, records(CifarKind::Cifar10, &[1, 12], 0)).unwrap();
        let (_, reason) = format_reason(CifarDataset::open(&path, CifarKind::Cifar10, Split::Train, RGB_32));
        assert!(reason.contains("record 1 has label 12"), "{reason}");
    }
}
