//! The embeddings directory contract (dim-embed → dim-search): `embeddings.npy` rows are
//! described by `manifest.json` (model identity, feature, width, the sha256 of the vectors file,
//! and each row's file identity), and `skipped.json` lists the files that could not be embedded.
//!
//! Paths are written losslessly ([`dim_models::path_record`]): `path` is a string, and a name
//! that is not UTF-8 also gets `path_bytes_hex`, its raw bytes. The three files are staged and
//! renamed together, vectors first; the digest in the manifest tells a manifest that does not
//! describe the vectors beside it (a run killed between the renames) from one that does.

use crate::npy;
use dim_models::atomic_file::{self, StagedFile};
use dim_models::onnx_metadata::{ModelMetadata, SearchRecipe};
use dim_models::path_record::{PathRecord, PathRecordError};
use dim_models::tap::Feature;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// File name of the vectors in an embeddings directory.
pub const EMBEDDINGS_FILE: &str = "embeddings.npy";
/// File name of the manifest.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the skipped-file report.
pub const SKIPPED_FILE: &str = "skipped.json";
/// Version of the manifest layout.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Which model made a set of vectors: two sets mix only when these are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// sha256 of the checkpoint's weights (the model's identity).
    pub checkpoint_sha256: String,
    /// Encoder preset name.
    pub preset: String,
    /// The output used.
    pub feature: Feature,
    /// Vector width.
    pub dim: usize,
}

impl ModelIdentity {
    /// The identity of `feature` (of width `dim`) of a model.
    pub fn of(metadata: &ModelMetadata, feature: Feature, dim: usize) -> Self {
        ModelIdentity {
            checkpoint_sha256: metadata.checkpoint_sha256.clone(),
            preset: metadata.preset.name().to_string(),
            feature,
            dim,
        }
    }

    /// Why `other` cannot be mixed with this identity, if it cannot.
    pub fn mismatch(&self, other: &ModelIdentity) -> Option<String> {
        if self.checkpoint_sha256 != other.checkpoint_sha256 {
            Some(format!(
                "model digest {} differs from {}",
                short(&other.checkpoint_sha256),
                short(&self.checkpoint_sha256)
            ))
        } else if self.feature != other.feature {
            Some(format!("feature `{}` differs from `{}`", other.feature.name(), self.feature.name()))
        } else if self.dim != other.dim {
            Some(format!("dimension {} differs from {}", other.dim, self.dim))
        } else {
            None
        }
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// An image that could not be embedded, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SkippedJson", try_from = "SkippedJson")]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// [`Skipped`] as `skipped.json` holds it: the path losslessly ([`PathRecord`]).
#[derive(Serialize, Deserialize)]
struct SkippedJson {
    #[serde(flatten)]
    path: PathRecord,
    reason: String,
}

impl From<Skipped> for SkippedJson {
    fn from(skipped: Skipped) -> Self {
        SkippedJson { path: PathRecord::of(&skipped.path), reason: skipped.reason }
    }
}

impl TryFrom<SkippedJson> for Skipped {
    type Error = PathRecordError;
    fn try_from(json: SkippedJson) -> Result<Self, Self::Error> {
        Ok(Skipped { path: json.path.to_path_buf()?, reason: json.reason })
    }
}

/// One row of `embeddings.npy`: the file it came from and that file's identity when embedded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "ManifestRowJson", try_from = "ManifestRowJson")]
pub struct ManifestRow {
    /// Absolute path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
}

/// [`ManifestRow`] as JSON holds it.
#[derive(Serialize, Deserialize)]
struct ManifestRowJson {
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_bytes_hex: Option<String>,
    size: u64,
    mtime_ns: u128,
}

impl From<ManifestRow> for ManifestRowJson {
    fn from(row: ManifestRow) -> Self {
        let PathRecord { path, path_bytes_hex } = PathRecord::of(&row.path);
        ManifestRowJson { path, path_bytes_hex, size: row.size, mtime_ns: row.mtime_ns }
    }
}

impl TryFrom<ManifestRowJson> for ManifestRow {
    type Error = PathRecordError;
    fn try_from(json: ManifestRowJson) -> Result<Self, Self::Error> {
        let path = PathRecord { path: json.path, path_bytes_hex: json.path_bytes_hex }.to_path_buf()?;
        Ok(ManifestRow { path, size: json.size, mtime_ns: json.mtime_ns })
    }
}

impl ManifestRow {
    /// The current identity of the file at `path`.
    pub fn stat(path: &Path) -> std::io::Result<Self> {
        let metadata = std::fs::metadata(path)?;
        let mtime_ns = metadata.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Ok(ManifestRow { path: path.to_path_buf(), size: metadata.len(), mtime_ns })
    }
}

/// Describes every row of `embeddings.npy`, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version.
    pub format_version: u32,
    /// Toolkit version that wrote it.
    pub toolkit_version: String,
    /// The model and feature.
    pub model: ModelIdentity,
    /// Lower-case hex sha256 of the `embeddings.npy` these rows describe (absent in manifests
    /// written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings_sha256: Option<String>,
    /// The model's recommended search post-processing (`dim.search_post_processing`), which
    /// `dim-search build` applies unless told otherwise; absent when the model has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_recipe: Option<SearchRecipe>,
    /// Number of rows.
    pub count: usize,
    /// One entry per row.
    pub rows: Vec<ManifestRow>,
}

/// Errors reading an embeddings directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("{path} is not a dim-embed manifest: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest and the vectors disagree.
    #[error("{dir}: {reason} (rerun dim-embed with --force to rebuild it)")]
    Inconsistent {
        /// The embeddings directory.
        dir: PathBuf,
        /// What disagrees.
        reason: String,
    },
    /// The vectors file is unreadable.
    #[error(transparent)]
    Npy(#[from] npy::NpyError),
    /// A value could not be turned into JSON.
    #[error("cannot write {path} as JSON: {source}")]
    Serialize {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl Manifest {
    /// Reads `manifest.json` from an embeddings directory and checks it against the shape of
    /// `embeddings.npy` there.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ManifestError::Io { path: path.clone(), source })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|source| ManifestError::Parse { path: path.clone(), source })?;
        let inconsistent = |reason: String| ManifestError::Inconsistent { dir: dir.to_path_buf(), reason };
        if manifest.format_version != MANIFEST_FORMAT_VERSION {
            return Err(inconsistent(format!("unknown manifest format {}", manifest.format_version)));
        }
        if manifest.count != manifest.rows.len() {
            return Err(inconsistent(format!(
                "manifest count {} but {} rows",
                manifest.count,
                manifest.rows.len()
            )));
        }
        let vectors_path = dir.join(EMBEDDINGS_FILE);
        let vectors = npy::RowReader::open(&vectors_path)?;
        if vectors.rows != manifest.count || vectors.cols != manifest.model.dim {
            return Err(inconsistent(format!(
                "{EMBEDDINGS_FILE} is [{}, {}] but the manifest describes [{}, {}]",
                vectors.rows, vectors.cols, manifest.count, manifest.model.dim
            )));
        }
        if let Some(expected) = &manifest.embeddings_sha256 {
            let found = file_sha256(&vectors_path)
                .map_err(|source| ManifestError::Io { path: vectors_path.clone(), source })?;
            if &found != expected {
                return Err(inconsistent(format!(
                    "{EMBEDDINGS_FILE} is not the file the manifest describes (sha256 {} instead of {}; \
                     was a run interrupted?)",
                    short(&found),
                    short(expected)
                )));
            }
        }
        Ok(manifest)
    }

    /// Stages `manifest.json` for `dir` (see [`atomic_file::stage`]).
    pub fn stage(&self, dir: &Path) -> Result<StagedFile, ManifestError> {
        stage_json(&dir.join(MANIFEST_FILE), self)
    }
}

/// Stages `skipped.json` for `dir`.
pub fn stage_skipped(dir: &Path, skipped: &[Skipped]) -> Result<StagedFile, ManifestError> {
    stage_json(&dir.join(SKIPPED_FILE), &skipped)
}

/// Writes `value` as pretty JSON to a staged file for `path`.
pub fn stage_json<T: Serialize>(path: &Path, value: &T) -> Result<StagedFile, ManifestError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|source| ManifestError::Serialize { path: path.to_path_buf(), source })?;
    atomic_file::stage(path, |out| out.write_all(text.as_bytes()))
        .map_err(|source| ManifestError::Io { path: path.to_path_buf(), source })
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ManifestError> {
    stage_json(path, value)?.commit().map_err(|source| ManifestError::Io { path: path.to_path_buf(), source })
}

/// Lower-case hex sha256 of a file's contents, read in blocks.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    reader_sha256(std::fs::File::open(path)?)
}

/// Lower-case hex sha256 of everything `reader` yields, read in blocks.
pub fn reader_sha256(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let read = reader.read(&mut block)?;
        if read == 0 {
            break;
        }
        hasher.update(&block[..read]);
    }
    Ok(dim_models::checkpoint::to_hex(&hasher.finalize()))
}
