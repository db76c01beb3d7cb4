//! Why an export failed. Every variant names the file or tensor at fault, so a user can tell a
//! damaged checkpoint from one written by an incompatible trainer. Each message is complete by
//! itself (causes are part of it, not a separate `source`), so printing the error chain with
//! `{:#}` shows every fact once.

use dim_models::checkpoint::CheckpointError;
use dim_models::preset::PresetError;
use std::path::PathBuf;

/// Errors from reading a checkpoint or writing a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// `config.json` is missing, unreadable, corrupt or of another layout version.
    #[error("{0}")]
    Config(CheckpointError),
    /// `config.json` names an encoder preset this toolkit does not know.
    #[error("{path} names an unknown encoder: {cause}")]
    UnknownPreset {
        /// The config file.
        path: PathBuf,
        /// The preset error, naming the known presets.
        cause: PresetError,
    },
    /// The weights file cannot be read.
    #[error("cannot read {path}: {cause}")]
    ReadWeights {
        /// The weights file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The weights file is not valid safetensors (corrupt or truncated).
    #[error("{path} is not a valid safetensors file (corrupt or truncated?): {cause}")]
    CorruptWeights {
        /// The weights file.
        path: PathBuf,
        /// The parser's complaint.
        cause: safetensors::SafeTensorError,
    },
    /// A tensor the encoder needs is absent.
    #[error("{path} lacks the encoder tensor `{name}`")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// An `encoder.*` tensor that the preset does not have: the checkpoint was written for
    /// another architecture.
    #[error(
        "{path} holds the encoder tensor `{name}`, which the {preset} preset does not have \
         (checkpoint written for another architecture?)"
    )]
    UnexpectedTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The preset the config names.
        preset: String,
    },
    /// A tensor has the wrong shape for the preset.
    #[error("encoder tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The tensor's name.
        name: String,
        /// Shape the preset requires.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is not float32.
    #[error("encoder tensor `{name}` has dtype {found}, expected F32")]
    DType {
        /// The tensor's name.
        name: String,
        /// Dtype in the file.
        found: String,
    },
    /// A tensor holds NaN or infinite values, or a BatchNorm variance is negative: folding
    /// would turn the whole model into NaN.
    #[error("encoder tensor `{name}` holds {problem} (did training diverge?)")]
    BadValues {
        /// The tensor's name.
        name: String,
        /// What is wrong, e.g. "NaN or infinite values".
        problem: &'static str,
    },
    /// An existing model cannot be read or is not a dim-export model.
    #[error("cannot use the model {path}: {cause}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        cause: String,
    },
    /// The model file could not be written.
    #[error("cannot write {path}: {cause}")]
    Write {
        /// The destination.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
}
