//! How file paths are written into JSON outputs (manifests, skip reports, search results)
//! without loss: Unix file names are bytes, JSON strings are Unicode, so a name that is not
//! valid UTF-8 (Latin-1 names from older disks and archives) gets an escaped text form plus its
//! raw bytes in hex.
//!
//! In JSON a path is the field `path` (always a string) and, only when the name is not valid
//! UTF-8, the field `path_bytes_hex` beside it. The string is then the name with every byte
//! that is not part of valid UTF-8 written as `\xNN`; it is for people, the hex is the file.
//! Python maps a row back to its file with
//! `bytes.fromhex(row["path_bytes_hex"]) if "path_bytes_hex" in row else row["path"]`
//! (both forms open with `open()` and `os.stat()`).

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// A path as JSON carries it: the text and, for names that are not UTF-8, the raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRecord {
    /// The path itself when it is valid UTF-8; otherwise its escaped form.
    pub path: String,
    /// The path's bytes in lower-case hex; present only when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes_hex: Option<String>,
}

/// Why a recorded path cannot be turned back into a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`path_bytes_hex` of {path:?} is not an even-length hex string")]
pub struct PathRecordError {
    /// The escaped text of the record.
    pub path: String,
}

impl PathRecord {
    /// The record of `path`.
    pub fn of(path: &Path) -> Self {
        let bytes = path.as_os_str().as_bytes();
        match std::str::from_utf8(bytes) {
            Ok(text) => PathRecord { path: text.to_string(), path_bytes_hex: None },
            Err(_) => {
                PathRecord { path: escaped(bytes), path_bytes_hex: Some(crate::checkpoint::to_hex(bytes)) }
            }
        }
    }

    /// The path the record describes.
    pub fn to_path_buf(&self) -> Result<PathBuf, PathRecordError> {
        let Some(hex) = &self.path_bytes_hex else {
            return Ok(PathBuf::from(&self.path));
        };
        let invalid = || PathRecordError { path: self.path.clone() };
        if !hex.len().is_multiple_of(2) {
            return Err(invalid());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(invalid)?;
        Ok(PathBuf::from(OsString::from_vec(bytes)))
    }
}

/// The text of `bytes` with every byte outside valid UTF-8 sequences written as `\xNN`.
fn escaped(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

/// `path` for messages and tables: exact when UTF-8, otherwise with every byte outside valid
/// UTF-8 sequences written as `\xNN`.
pub fn display(path: &Path) -> String {
    escaped(path.as_os_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_paths_are_plain_strings_and_latin1_names_round_trip_through_hex() {
        let plain = PathRecord::of(Path::new("/photos/été/a.png"));
        assert_eq!(plain.path, "/photos/été/a.png");
        assert_eq!(serde_json::to_value(&plain).unwrap(), serde_json::json!({"path": "/photos/été/a.png"}));

        // "caf\xe9.png": é in Latin-1 is the lone byte 0xE9.
        let latin1 = PathBuf::from(OsString::from_vec(b"/photos/caf\xe9.png".to_vec()));
        let record = PathRecord::of(&latin1);
        assert_eq!(record.path, "/photos/caf\\xe9.png");
        assert_eq!(record.path_bytes_hex.as_deref(), Some("2f70686f746f732f636166e92e706e67"));
        let json = serde_json::to_string(&record).unwrap();
        let back: PathRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_path_buf().unwrap(), latin1);
        assert_eq!(display(&latin1), "/photos/caf\\xe9.png");

        let broken = PathRecord { path: "x".into(), path_bytes_hex: Some("abc".into()) };
        assert!(broken.to_path_buf().is_err());
        let not_hex = PathRecord { path: "x".into(), path_bytes_hex: Some("zz".into()) };
        assert!(not_hex.to_path_buf().is_err());
    }
}
