//! Thumbnails of collection rows, made on demand: the row's file (never a client-given path) is
//! decoded upright under the pixel cap, scaled to fit a bounded square, composited over white
//! and encoded as JPEG. Results are kept in a cache bounded by total bytes, and each carries an
//! ETag derived from the file's size and modification time, so a changed file gets a new tag.

use dim_models::preprocess;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Side of the square a thumbnail fits in when the request does not say.
pub const DEFAULT_SIZE: u32 = 192;
/// Smallest side a request may ask for.
pub const MIN_SIZE: u32 = 16;
/// Largest side a request may ask for.
pub const MAX_SIZE: u32 = 512;

/// An encoded thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    /// JPEG bytes.
    pub jpeg: Arc<[u8]>,
    /// Quoted entity tag.
    pub etag: String,
}

/// Why a row's thumbnail cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ThumbnailError {
    /// The file is gone or unreadable.
    #[error("the file of row {row} cannot be read: {source}")]
    Unreadable {
        /// The row.
        row: usize,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not decode (or exceeds the pixel cap).
    #[error("the file of row {row} cannot be decoded: {reason}")]
    Undecodable {
        /// The row.
        row: usize,
        /// The decoder's reason.
        reason: String,
    },
}

/// Made thumbnails, oldest evicted first once their bytes pass the budget.
pub struct ThumbnailCache {
    budget_bytes: usize,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<(usize, u32), Thumbnail>,
    order: VecDeque<(usize, u32)>,
    bytes: usize,
}

impl ThumbnailCache {
    /// An empty cache holding up to `budget_bytes` of JPEG data.
    pub fn new(budget_bytes: usize) -> Self {
        ThumbnailCache { budget_bytes, state: Mutex::new(CacheState::default()) }
    }

    /// The thumbnail of `row` (whose file is `path`) fitting a `size` square, from the cache
    /// when the file has not changed since it was made.
    pub fn get(
        &self,
        row: usize,
        path: &Path,
        size: u32,
        max_pixels: u64,
    ) -> Result<Thumbnail, ThumbnailError> {
        let metadata =
            std::fs::metadata(path).map_err(|source| ThumbnailError::Unreadable { row, source })?;
        let etag = entity_tag(row, size, metadata.len(), metadata.mtime(), metadata.mtime_nsec());
        if let Some(cached) = self.lock().entries.get(&(row, size)).filter(|t| t.etag == etag) {
            return Ok(cached.clone());
        }
        let bytes = std::fs::read(path).map_err(|source| ThumbnailError::Unreadable { row, source })?;
        let image = preprocess::decode_bytes(&bytes, max_pixels)
            .map_err(|error| ThumbnailError::Undecodable { row, reason: error.to_string() })?;
        let jpeg = dim_index::html_preview::encode_preview(&image, size)
            .map_err(|reason| ThumbnailError::Undecodable { row, reason })?;
        let thumbnail = Thumbnail { jpeg: jpeg.into(), etag };
        self.insert((row, size), thumbnail.clone());
        Ok(thumbnail)
    }

    fn insert(&self, key: (usize, u32), thumbnail: Thumbnail) {
        let mut state = self.lock();
        let added = thumbnail.jpeg.len();
        if let Some(old) = state.entries.insert(key, thumbnail) {
            state.bytes -= old.jpeg.len();
            state.order.retain(|k| *k != key);
        }
        state.bytes += added;
        state.order.push_back(key);
        while state.bytes > self.budget_bytes && state.order.len() > 1 {
            let oldest = state.order.pop_front().expect("the order is not empty");
            if let Some(evicted) = state.entries.remove(&oldest) {
                state.bytes -= evicted.jpeg.len();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Thumbnails held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no thumbnail is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn entity_tag(row: usize, size: u32, len: u64, mtime: i64, mtime_nsec: i64) -> String {
    let digest = Sha256::digest(format!("{row}:{size}:{len}:{mtime}.{mtime_nsec}").as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, width: u32, height: u32, alpha: u8) {
        image::RgbaImage::from_pixel(width, height, image::Rgba([0, 0, 0, alpha])).save(path).unwrap();
    }

    #[test]
    fn a_thumbnail_fits_its_square_keeps_its_aspect_and_is_cached_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.png");
        write_png(&path, 400, 100, 255);
        let cache = ThumbnailCache::new(1 << 20);
        let first = cache.get(3, &path, 64, 1 << 30).unwrap();
        let decoded = image::load_from_memory(&first.jpeg).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (64, 16));
        assert_eq!(cache.get(3, &path, 64, 1 << 30).unwrap(), first);
        assert_eq!(cache.len(), 1);

        // A transparent image of another size: new tag, composited over white.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_png(&path, 10, 20, 0);
        let second = cache.get(3, &path, 64, 1 << 30).unwrap();
        assert_ne!(second.etag, first.etag);
        let decoded = image::load_from_memory(&second.jpeg).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (10, 20), "small images are not enlarged");
        assert!(decoded.pixels().all(|p| p.0.iter().all(|&c| c > 245)), "transparent shows white");
    }

    #[test]
    fn the_cache_stays_within_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ThumbnailCache::new(1);
        for row in 0..3 {
            let path = dir.path().join(format!("{row}.png"));
            write_png(&path, 30, 30, 255);
            cache.get(row, &path, 32, 1 << 30).unwrap();
        }
        assert_eq!(cache.len(), 1, "only the newest entry survives a tiny budget");
    }

    #[test]
    fn missing_undecodable_and_oversized_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ThumbnailCache::new(1 << 20);
        let missing = cache.get(0, &dir.path().join("gone.png"), 64, 1 << 30).unwrap_err();
        assert!(matches!(missing, ThumbnailError::Unreadable { row: 0, .. }), "{missing}");
        let junk = dir.path().join("junk.png");
        std::fs::write(&junk, b"not an image").unwrap();
        let undecodable = cache.get(1, &junk, 64, 1 << 30).unwrap_err();
        assert!(matches!(undecodable, ThumbnailError::Undecodable { row: 1, .. }), "{undecodable}");
        let big = dir.path().join("big.png");
        write_png(&big, 100, 100, 255);
        let oversized = cache.get(2, &big, 64, 99).unwrap_err();
        assert!(oversized.to_string().contains("row 2"), "{oversized}");
    }
}
