//! The IDX file format of MNIST and Fashion-MNIST: u8 image and label files, gzipped or plain,
//! validated against their headers. Training datasets and the demo's PNG export both read it here.

use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Header lengths: magic plus one u32 per dimension.
const IMAGES_HEADER_BYTES: usize = 16;
const LABELS_HEADER_BYTES: usize = 8;

/// Why an IDX file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdxError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The contents do not match the format.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The images of an IDX images file: `count` images of `rows` × `cols` bytes, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// All pixels, one image after another.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// The bytes of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        let len = self.rows * self.cols;
        &self.pixels[index * len..(index + 1) * len]
    }
}

/// Reads and validates an IDX images file.
pub fn read_images(path: &Path) -> Result<IdxImages, IdxError> {
    let mut bytes = read_maybe_gzipped(path)?;
    let (count, rows, cols) = parse_images_header(path, &bytes)?;
    bytes.drain(..IMAGES_HEADER_BYTES);
    Ok(IdxImages { count, rows, cols, pixels: bytes })
}

/// Reads and validates an IDX labels file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, IdxError> {
    parse_labels(path, &read_maybe_gzipped(path)?)
}

/// The images file `<prefix>-images-idx3-ubyte[.gz]` in `dir` (prefix `train` or `t10k`), if present.
pub fn find_images_file(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let stem = format!("{prefix}-images-idx3-ubyte");
    [stem.clone(), format!("{stem}.gz")].into_iter().map(|name| dir.join(name)).find(|path| path.is_file())
}

/// The labels file beside an images file (`images-idx3` → `labels-idx1`), if present.
pub fn labels_path_for(images_path: &Path) -> Option<PathBuf> {
    let name = images_path.file_name()?.to_str()?;
    if !name.contains("images-idx3") {
        return None;
    }
    let labels_path = images_path.with_file_name(name.replace("images-idx3", "labels-idx1"));
    labels_path.is_file().then_some(labels_path)
}

/// Whether the file starts with the IDX images magic, after gunzipping when it is gzipped.
pub fn has_idx_magic(path: &Path) -> Result<bool, IdxError> {
    let io_error = |source| IdxError::Io { path: path.into(), source };
    let mut head = Vec::with_capacity(4);
    let file = std::fs::File::open(path).map_err(io_error)?;
    file.take(4).read_to_end(&mut head).map_err(io_error)?;
    if head.starts_with(&GZIP_MAGIC) {
        let file = std::fs::File::open(path).map_err(io_error)?;
        head.clear();
        // A corrupt stream is simply "not IDX" here; opening it reports the real problem.
        if MultiGzDecoder::new(file).take(4).read_to_end(&mut head).is_err() {
            return Ok(false);
        }
    }
    Ok(head.len() == 4 && u32::from_be_bytes([head[0], head[1], head[2], head[3]]) == IMAGES_MAGIC)
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic bytes.
fn read_maybe_gzipped(path: &Path) -> Result<Vec<u8>, IdxError> {
    let raw = std::fs::read(path).map_err(|source| IdxError::Io { path: path.into(), source })?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let mut decompressed = Vec::new();
    MultiGzDecoder::new(raw.as_slice()).read_to_end(&mut decompressed).map_err(|error| IdxError::Format {
        path: path.into(),
        reason: format!("corrupt or truncated gzip stream: {error}"),
    })?;
    Ok(decompressed)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes(bytes[offset..offset + 4].try_into().expect("four bytes"))
}

/// Checks an images file's magic, dimensions and length; returns (count, rows, cols).
fn parse_images_header(path: &Path, bytes: &[u8]) -> Result<(usize, usize, usize), IdxError> {
    let format_error = |reason: String| IdxError::Format { path: path.into(), reason };
    if bytes.len() < IMAGES_HEADER_BYTES {
        return Err(format_error(format!(
            "truncated: an IDX images header needs {IMAGES_HEADER_BYTES} bytes, the file holds {}",
            bytes.len()
        )));
    }
    let magic = read_u32(bytes, 0);
    if magic != IMAGES_MAGIC {
        return Err(format_error(format!(
            "not an IDX images file: magic number is {magic:#010x}, expected {IMAGES_MAGIC:#010x} \
             (unsigned bytes, 3 dimensions)"
        )));
    }
    let (count, rows, cols) =
        (read_u32(bytes, 4) as usize, read_u32(bytes, 8) as usize, read_u32(bytes, 12) as usize);
    if rows == 0 || cols == 0 {
        return Err(format_error(format!("images have an empty dimension ({rows}×{cols})")));
    }
    let expected = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .and_then(|n| n.checked_add(IMAGES_HEADER_BYTES))
        .ok_or_else(|| format_error(format!("header sizes overflow: {count} images of {rows}×{cols}")))?;
    check_length(path, bytes.len(), expected, &format!("{count} images of {rows}×{cols}"))?;
    Ok((count, rows, cols))
}

/// Checks a labels file's magic and length; returns the labels.
fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, IdxError> {
    let format_error = |reason: String| IdxError::Format { path: path.into(), reason };
    if bytes.len() < LABELS_HEADER_BYTES {
        return Err(format_error(format!(
            "truncated: an IDX labels header needs {LABELS_HEADER_BYTES} bytes, the file holds {}",
            bytes.len()
        )));
    }
    let magic = read_u32(bytes, 0);
    if magic != LABELS_MAGIC {
        return Err(format_error(format!(
            "not an IDX labels file: magic number is {magic:#010x}, expected {LABELS_MAGIC:#010x} \
             (unsigned bytes, 1 dimension)"
        )));
    }
    let count = read_u32(bytes, 4) as usize;
    check_length(path, bytes.len(), LABELS_HEADER_BYTES + count, &format!("{count} labels"))?;
    Ok(bytes[LABELS_HEADER_BYTES..].to_vec())
}

/// Reports a file (after decompression) shorter or longer than its header promises.
fn check_length(path: &Path, actual: usize, expected: usize, promised: &str) -> Result<(), IdxError> {
    let reason = if actual < expected {
        format!(
            "truncated: header says {promised}, which needs {expected} bytes, but the file holds {actual}"
        )
    } else if actual > expected {
        format!("header says {promised}, which needs {expected} bytes, but the file holds {actual}")
    } else {
        return Ok(());
    };
    Err(IdxError::Format { path: path.into(), reason })
}
