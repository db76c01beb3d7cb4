//! A cache of decoded, preprocessed images for datasets that decode files (image folders): the
//! first epoch decodes each file once and keeps its pixels as bytes, and later epochs read them
//! back instead of decoding again. In memory when the collection fits, else in a file beside the
//! checkpoint, which a resumed run reuses.
//!
//! Every preprocessed value is an 8-bit level divided by 255 ([`image_to_input`] ends in 8-bit
//! grey or RGB), so one byte per value holds it exactly; a sample that would not round-trip
//! exactly is simply not cached.
//!
//! [`image_to_input`]: dim_models::preprocess::image_to_input

use super::{DataError, Dataset, Sample};
use dim_models::preprocess::InputSpec;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// File name of the on-disk cache inside a run's directory.
pub const CACHE_FILE: &str = "decoded-images.cache";

/// Where [`DecodedCache`] keeps the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CachePolicy {
    /// In memory when the whole collection takes at most a quarter of the available memory,
    /// else in a file beside the checkpoint.
    #[default]
    Auto,
    /// In memory.
    Memory,
    /// In `decoded-images.cache` beside the checkpoint, reused by a resumed run.
    File,
    /// Decode every file again in every epoch.
    Off,
}

/// Leading bytes of the cache file.
const MAGIC: &[u8; 8] = b"DIMDEC1\n";
/// Magic, the 32-byte key, the example count and the values per example.
const HEADER_LEN: u64 = 8 + 32 + 8 + 8;
/// Marks a record as written in the file's state block.
const FILLED: u8 = 1;
/// Stored in a record's label field for an unlabelled example.
const NO_LABEL: u32 = u32::MAX;

/// A dataset whose examples are decoded once and then served from the cache.
pub struct DecodedCache {
    inner: Arc<dyn Dataset>,
    store: Store,
}

enum Store {
    Memory(Vec<OnceLock<CachedSample>>),
    File(FileStore),
}

struct CachedSample {
    levels: Box<[u8]>,
    label: Option<u32>,
}

/// Header, then one state byte per example, then one fixed-size record per example: the label
/// (u32 LE) and the levels. A record's state byte is written after the record, so a run killed
/// between the two leaves the example uncached rather than half-written.
struct FileStore {
    file: File,
    path: PathBuf,
    filled: Vec<AtomicBool>,
    values: usize,
    /// Set after a failed write (e.g. a full disk): the run goes on decoding.
    write_failed: AtomicBool,
}

impl DecodedCache {
    /// Wraps `inner` by `policy`; `Off` (or a dataset that does not decode files) returns it as
    /// it is. A file cache whose key (the data fingerprint and preprocessing) matches is reused;
    /// any other file at that path is replaced.
    pub fn wrap(
        inner: Arc<dyn Dataset>,
        policy: CachePolicy,
        dir: &Path,
    ) -> Result<Arc<dyn Dataset>, DataError> {
        if !inner.decodes_files() {
            return Ok(inner);
        }
        let bytes = inner.len() as u64 * inner.input_spec().len() as u64;
        let in_memory = match policy {
            CachePolicy::Off => return Ok(inner),
            CachePolicy::Memory => true,
            CachePolicy::File => false,
            CachePolicy::Auto => bytes <= memory_budget(),
        };
        let store = if in_memory {
            Store::Memory((0..inner.len()).map(|_| OnceLock::new()).collect())
        } else {
            Store::File(FileStore::open(&dir.join(CACHE_FILE), &*inner)?)
        };
        Ok(Arc::new(DecodedCache { inner, store }))
    }

    fn cached(&self, index: usize) -> Option<Sample> {
        let to_sample = |levels: &[u8], label: Option<u32>| Sample {
            pixels: levels.iter().map(|&level| f32::from(level) / 255.0).collect(),
            label,
        };
        match &self.store {
            Store::Memory(slots) => slots.get(index)?.get().map(|s| to_sample(&s.levels, s.label)),
            Store::File(store) => {
                let (levels, label) = store.read(index)?;
                Some(to_sample(&levels, label))
            }
        }
    }

    fn keep(&self, index: usize, sample: &Sample) {
        let Some(levels) = exact_levels(&sample.pixels) else { return };
        match &self.store {
            Store::Memory(slots) => {
                if let Some(slot) = slots.get(index) {
                    let _ = slot.set(CachedSample { levels, label: sample.label });
                }
            }
            Store::File(store) => store.write(index, &levels, sample.label),
        }
    }
}

impl Dataset for DecodedCache {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn input_spec(&self) -> InputSpec {
        self.inner.input_spec()
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        if let Some(sample) = self.cached(index) {
            return Ok(sample);
        }
        let sample = self.inner.get(index)?;
        self.keep(index, &sample);
        Ok(sample)
    }
    fn fingerprint(&self) -> String {
        self.inner.fingerprint()
    }
    fn describe(&self) -> String {
        let place = match &self.store {
            Store::Memory(_) => "decoded images cached in memory".to_string(),
            Store::File(store) => format!("decoded images cached in {}", store.path.display()),
        };
        format!("{}; {place}", self.inner.describe())
    }
    fn decodes_files(&self) -> bool {
        false
    }
}

/// The 8-bit levels of `pixels`, when every value is exactly a level divided by 255.
fn exact_levels(pixels: &[f32]) -> Option<Box<[u8]>> {
    pixels
        .iter()
        .map(|&value| {
            let level = (value * 255.0).round();
            let fits = (0.0..=255.0).contains(&level) && f32::from(level as u8) / 255.0 == value;
            fits.then_some(level as u8)
        })
        .collect()
}

/// A quarter of the memory the kernel reports as available (1 GiB when it cannot be read).
fn memory_budget() -> u64 {
    let available_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        info.lines()
            .find_map(|line| line.strip_prefix("MemAvailable:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    available_kib.map_or(1 << 30, |kib| kib * 1024 / 4)
}

/// What a cache file must have been written for: the data (by fingerprint), the preprocessing
/// and the example count.
fn cache_key(dataset: &dyn Dataset) -> [u8; 32] {
    let spec = dataset.input_spec();
    let description = format!(
        "{}|{}|{}x{}|{:?}|{:?}|{}",
        dataset.fingerprint(),
        dataset.len(),
        spec.channels,
        spec.size,
        spec.resize,
        spec.background,
        spec.len()
    );
    Sha256::digest(description.as_bytes()).into()
}

impl FileStore {
    fn open(path: &Path, dataset: &dyn Dataset) -> Result<Self, DataError> {
        let io_error = |source| DataError::Io { path: path.to_path_buf(), source };
        let (count, values) = (dataset.len(), dataset.input_spec().len());
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&cache_key(dataset));
        header.extend_from_slice(&(count as u64).to_le_bytes());
        header.extend_from_slice(&(values as u64).to_le_bytes());

        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| DataError::Io { path: parent.to_path_buf(), source })?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_error)?;
        let mut existing = vec![0u8; HEADER_LEN as usize];
        let reusable = file.read_exact_at(&mut existing, 0).is_ok() && existing == header;
        let states = if reusable {
            let mut states = vec![0u8; count];
            file.read_exact_at(&mut states, HEADER_LEN).map_err(io_error)?;
            states
        } else {
            // Start over: zero length first, so that no record of an earlier cache survives as
            // "filled", then the full (sparse) size.
            file.set_len(0).map_err(io_error)?;
            let record_len = 4 + values as u64;
            file.set_len(HEADER_LEN + count as u64 * (1 + record_len)).map_err(io_error)?;
            file.write_all_at(&header, 0).map_err(io_error)?;
            vec![0u8; count]
        };
        Ok(FileStore {
            file,
            path: path.to_path_buf(),
            filled: states.into_iter().map(|state| AtomicBool::new(state == FILLED)).collect(),
            values,
            write_failed: AtomicBool::new(false),
        })
    }

    fn record_offset(&self, index: usize) -> u64 {
        let count = self.filled.len() as u64;
        HEADER_LEN + count + index as u64 * (4 + self.values as u64)
    }

    fn read(&self, index: usize) -> Option<(Vec<u8>, Option<u32>)> {
        if !self.filled.get(index)?.load(Ordering::Acquire) {
            return None;
        }
        let mut record = vec![0u8; 4 + self.values];
        self.file.read_exact_at(&mut record, self.record_offset(index)).ok()?;
        let label = u32::from_le_bytes(record[..4].try_into().expect("four bytes"));
        record.drain(..4);
        Some((record, (label != NO_LABEL).then_some(label)))
    }

    fn write(&self, index: usize, levels: &[u8], label: Option<u32>) {
        if self.write_failed.load(Ordering::Relaxed) || index >= self.filled.len() {
            return;
        }
        let mut record = Vec::with_capacity(4 + levels.len());
        record.extend_from_slice(&label.unwrap_or(NO_LABEL).to_le_bytes());
        record.extend_from_slice(levels);
        let written = self
            .file
            .write_all_at(&record, self.record_offset(index))
            .and_then(|()| self.file.write_all_at(&[FILLED], HEADER_LEN + index as u64));
        match written {
            Ok(()) => self.filled[index].store(true, Ordering::Release),
            Err(error) => {
                if !self.write_failed.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "warning: cannot write the decoded-image cache {} ({error}); decoding every epoch instead",
                        self.path.display()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::FolderDataset;
    use dim_models::preprocess::{Background, ResizePolicy};
    use image::{GrayAlphaImage, LumaA, Rgb, RgbImage, Rgba, RgbaImage};

    const SPEC: InputSpec =
        InputSpec { channels: 3, size: 16, resize: ResizePolicy::Pad, background: Background::White };

    /// Opaque RGB, transparent RGBA and grey+alpha images of several sizes, in two classes.
    fn write_collection(dir: &Path) {
        for class in ["a", "b"] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
        }
        for k in 0..6u32 {
            let class = if k % 2 == 0 { "a" } else { "b" };
            let path = dir.join(class).join(format!("{k}.png"));
            match k % 3 {
                0 => RgbImage::from_fn(20 + k, 11, |x, y| {
                    Rgb([(x * 12) as u8, (y * 20) as u8, (k * 40) as u8])
                })
                .save(path),
                1 => RgbaImage::from_fn(9, 23, |x, y| Rgba([200, (x * 25) as u8, 10, (y * 11) as u8]))
                    .save(path),
                _ => GrayAlphaImage::from_fn(16, 16, |x, y| LumaA([(x * 16) as u8, ((x + y) * 8) as u8]))
                    .save(path),
            }
            .unwrap();
        }
    }

    fn remove_images(dir: &Path) {
        for class in ["a", "b"] {
            std::fs::remove_dir_all(dir.join(class)).unwrap();
        }
    }

    #[test]
    fn cached_examples_are_exactly_the_decoded_ones_and_need_no_file_after_the_first_pass() {
        for policy in [CachePolicy::Memory, CachePolicy::File] {
            let images = tempfile::tempdir().unwrap();
            let run = tempfile::tempdir().unwrap();
            write_collection(images.path());
            let folder: Arc<dyn Dataset> = Arc::new(FolderDataset::open(images.path(), SPEC).unwrap());
            let decoded: Vec<Sample> = (0..folder.len()).map(|i| folder.get(i).unwrap()).collect();
            let cache = DecodedCache::wrap(Arc::clone(&folder), policy, run.path()).unwrap();
            assert_eq!(cache.fingerprint(), folder.fingerprint());
            assert!(!cache.decodes_files());
            for (index, expected) in decoded.iter().enumerate() {
                assert_eq!(&cache.get(index).unwrap(), expected, "{policy:?} first pass #{index}");
            }
            remove_images(images.path());
            assert!(folder.get(0).is_err(), "the files are gone");
            for (index, expected) in decoded.iter().enumerate() {
                // Bit for bit, labels included.
                assert_eq!(&cache.get(index).unwrap(), expected, "{policy:?} from the cache #{index}");
            }
            assert_eq!(run.path().join(CACHE_FILE).exists(), policy == CachePolicy::File);
        }
    }

    #[test]
    fn a_cache_file_is_reused_for_the_same_data_only() {
        let parent = tempfile::tempdir().unwrap();
        let (images, moved) = (parent.path().join("images"), parent.path().join("moved"));
        let run = tempfile::tempdir().unwrap();
        write_collection(&images);
        let folder: Arc<dyn Dataset> = Arc::new(FolderDataset::open(&images, SPEC).unwrap());
        let expected: Vec<Sample> = (0..folder.len()).map(|i| folder.get(i).unwrap()).collect();
        let first = DecodedCache::wrap(Arc::clone(&folder), CachePolicy::File, run.path()).unwrap();
        // Only the first four examples are decoded before the "run" ends.
        for index in 0..4 {
            first.get(index).unwrap();
        }
        drop(first);

        // With the files moved away the dataset cannot decode, so whatever comes back is read
        // from the file the first run left.
        std::fs::rename(&images, &moved).unwrap();
        let reopened = DecodedCache::wrap(Arc::clone(&folder), CachePolicy::File, run.path()).unwrap();
        for (index, sample) in expected.iter().enumerate().take(4) {
            assert_eq!(&reopened.get(index).unwrap(), sample, "#{index} from the reused file");
        }
        assert!(reopened.get(4).is_err(), "never cached, so it is decoded, and its file is gone");
        drop(reopened);

        // Changed data has another fingerprint: the old records are not served.
        std::fs::rename(&moved, &images).unwrap();
        RgbImage::from_pixel(30, 30, Rgb([1, 2, 3])).save(images.join("a/0.png")).unwrap();
        let changed: Arc<dyn Dataset> = Arc::new(FolderDataset::open(&images, SPEC).unwrap());
        assert_ne!(changed.fingerprint(), folder.fingerprint());
        let fresh = changed.get(0).unwrap();
        assert_ne!(fresh, expected[0]);
        let cache = DecodedCache::wrap(Arc::clone(&changed), CachePolicy::File, run.path()).unwrap();
        assert_eq!(cache.get(0).unwrap(), fresh);
        assert_eq!(cache.get(1).unwrap(), expected[1]);
    }

    #[test]
    fn values_that_are_not_eight_bit_levels_are_not_cached() {
        assert_eq!(exact_levels(&[0.0, 1.0, 128.0 / 255.0]).as_deref(), Some(&[0u8, 255, 128][..]));
        assert!(exact_levels(&[0.5]).is_none());
        assert!(exact_levels(&[-1.0 / 255.0]).is_none());
        assert!(exact_levels(&[f32::NAN]).is_none());
    }
}
