//! The `.npy` format (version 1.0) for float32 matrices in C order, written and read here so that
//! embeddings open directly with `numpy.load` and nothing else is needed to read them back.

use std::io::{self, Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy aligns the data to 64 bytes; the header (magic, version, length, dict) is padded to that.
const HEADER_ALIGN: usize = 64;

/// Errors reading an `.npy` file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a float32 2-D C-order `.npy` file.
    #[error("{path} is not a little-endian float32 2-D C-order .npy file: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The header for a `[rows, cols]` little-endian float32 C-order array, padded so the data
/// starts on a 64-byte boundary.
pub fn header(rows: usize, cols: usize) -> Vec<u8> {
    header_of_at_least(rows, cols, 0)
}

/// [`header`] padded with spaces to at least `min_len` bytes (and to a 64-byte boundary), so that
/// a header written for an upper bound on the rows can be overwritten in place once the count is
/// known: the header of fewer rows is never longer.
pub fn header_of_at_least(rows: usize, cols: usize, min_len: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // magic (6) + version (2) + header length (2) + dict + padding spaces + newline
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let aligned = unpadded.max(min_len).next_multiple_of(HEADER_ALIGN);
    let padding = aligned - unpadded;
    let header_len = dict.len() + padding + 1;
    let mut out = Vec::with_capacity(unpadded + padding);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', padding));
    out.push(b'\n');
    out
}

/// Writes rows of f32 values as little-endian bytes.
pub fn write_rows(out: &mut dyn Write, values: &[f32]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    out.write_all(&bytes)
}

/// Writes a whole `[rows, cols]` matrix atomically.
pub fn write_matrix(path: &Path, cols: usize, values: &[f32]) -> io::Result<()> {
    assert!(cols > 0 && values.len().is_multiple_of(cols), "matrix values must fill whole rows");
    dim_models::atomic_file::write_atomically(path, |out| {
        out.write_all(&header(values.len() / cols, cols))?;
        write_rows(out, values)
    })
}

/// A float32 matrix read from an `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row-major values.
    pub values: Vec<f32>,
}

impl Matrix {
    /// Row `index`.
    pub fn row(&self, index: usize) -> &[f32] {
        &self.values[index * self.cols..(index + 1) * self.cols]
    }
}

/// An open `.npy` file positioned at its first row, for reading rows one by one.
pub struct RowReader {
    reader: io::BufReader<std::fs::File>,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
}

impl RowReader {
    /// Opens a float32 2-D C-order `.npy` file (a 1-D file reads as one row) and checks that its
    /// length matches its shape.
    pub fn open(path: &Path) -> Result<Self, NpyError> {
        let name = path.display().to_string();
        let io_error = |source| NpyError::Io { path: name.clone(), source };
        let format_error = |reason: &str| NpyError::Format { path: name.clone(), reason: reason.to_string() };
        let file = std::fs::File::open(path).map_err(io_error)?;
        let file_len = file.metadata().map_err(io_error)?.len();
        let mut reader = io::BufReader::new(file);
        let mut preamble = [0u8; 10];
        reader.read_exact(&mut preamble).map_err(|_| format_error("too short"))?;
        if &preamble[..6] != MAGIC {
            return Err(format_error("bad magic"));
        }
        let (header_len, preamble_len) = match preamble[6] {
            1 => (usize::from(u16::from_le_bytes([preamble[8], preamble[9]])), 10),
            2 | 3 => {
                let mut rest = [0u8; 2];
                reader.read_exact(&mut rest).map_err(|_| format_error("truncated header"))?;
                (u32::from_le_bytes([preamble[8], preamble[9], rest[0], rest[1]]) as usize, 12)
            }
            _ => return Err(format_error("unknown version")),
        };
        let mut dict = vec![0u8; header_len];
        reader.read_exact(&mut dict).map_err(|_| format_error("truncated header"))?;
        let dict = String::from_utf8_lossy(&dict);
        if !dict.contains("'descr': '<f4'") {
            return Err(format_error("dtype is not <f4"));
        }
        if !dict.contains("'fortran_order': False") {
            return Err(format_error("Fortran order"));
        }
        let shape = dict
            .split("'shape':")
            .nth(1)
            .and_then(|s| s.split('(').nth(1))
            .and_then(|s| s.split(')').next())
            .ok_or_else(|| format_error("no shape"))?;
        let dims: Vec<usize> = shape
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| format_error("bad shape")))
            .collect::<Result<_, _>>()?;
        let (rows, cols) = match dims.as_slice() {
            [cols] => (1, *cols),
            [rows, cols] => (*rows, *cols),
            _ => return Err(format_error("not 1-D or 2-D")),
        };
        let data_len = file_len - (preamble_len + header_len) as u64;
        if data_len != (rows * cols * 4) as u64 {
            return Err(format_error(&format!("expected {} data bytes, found {data_len}", rows * cols * 4)));
        }
        Ok(RowReader { reader, rows, cols })
    }

    /// Reads the next row into `row` (which must hold `cols` values).
    pub fn read_row(&mut self, row: &mut [f32]) -> io::Result<()> {
        let mut bytes = vec![0u8; row.len() * 4];
        self.reader.read_exact(&mut bytes)?;
        for (value, b) in row.iter_mut().zip(bytes.chunks_exact(4)) {
            *value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }
}

/// Reads a whole float32 2-D C-order `.npy` file.
pub fn read_matrix(path: &Path) -> Result<Matrix, NpyError> {
    let mut reader = RowReader::open(path)?;
    let mut bytes = Vec::with_capacity(reader.rows * reader.cols * 4);
    reader
        .reader
        .read_to_end(&mut bytes)
        .map_err(|source| NpyError::Io { path: path.display().to_string(), source })?;
    let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(Matrix { rows: reader.rows, cols: reader.cols, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_64_byte_aligned_and_a_matrix_round_trips() {
        for (rows, cols) in [(0, 1), (3, 64), (123_456, 4096)] {
            assert_eq!(header(rows, cols).len() % 64, 0);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let values: Vec<f32> = (0..12).map(|v| v as f32 * 0.5 - 1.0).collect();
        write_matrix(&path, 4, &values).unwrap();
        let matrix = read_matrix(&path).unwrap();
        assert_eq!((matrix.rows, matrix.cols), (3, 4));
        assert_eq!(matrix.row(2), &values[8..]);

        std::fs::write(&path, b"not numpy").unwrap();
        assert!(matches!(read_matrix(&path), Err(NpyError::Format { .. })));
    }

    #[test]
    fn a_header_for_fewer_rows_pads_to_the_reserved_length_and_still_reads() {
        // 64 rows' header reserves room; 9 rows (one digit fewer) is written over it in place.
        let reserved = header(64, 3).len();
        assert_eq!(header_of_at_least(9, 3, reserved).len(), reserved);
        assert_eq!(header_of_at_least(9, 3, 0), header(9, 3));
        // Longer than it needs to be, it is padded to the next 64-byte boundary and still reads.
        let padded = header_of_at_least(9, 3, reserved + 1);
        assert_eq!(padded.len(), reserved + 64);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let values: Vec<f32> = (0..27).map(|v| v as f32).collect();
        let mut bytes = padded;
        values.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        std::fs::write(&path, bytes).unwrap();
        let matrix = read_matrix(&path).unwrap();
        assert_eq!((matrix.rows, matrix.cols), (9, 3));
        assert_eq!(matrix.row(8), &values[24..]);
    }
}
