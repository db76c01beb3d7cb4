//! The checkpoint contract (train → export): a directory holding `weights.safetensors`
//! (tensors named by [`crate::parameters`]), `optimizer.safetensors` (for resuming) and
//! `config.json` ([`CheckpointConfig`]).

use crate::preprocess::{Background, InputSpec, ResizePolicy};
use crate::preset::EncoderConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Weights of the encoder, critics and discriminator.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// Optimiser state (Adam moments and step counts), needed only to resume.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The [`CheckpointConfig`] as JSON.
pub const CONFIG_FILE: &str = "config.json";
/// Version of this layout; bumped on incompatible changes.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

/// Everything about a checkpoint except its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// Layout version, [`CHECKPOINT_FORMAT_VERSION`] when written by this toolkit.
    pub format_version: u32,
    /// Version of the toolkit that wrote it.
    pub toolkit_version: String,
    /// The encoder architecture.
    pub encoder: EncoderConfig,
    /// How images of another size were fitted to the input during training.
    pub resize: ResizePolicy,
    /// What transparent pixels were composited over; checkpoints written before it was recorded
    /// dropped alpha.
    #[serde(default = "Background::legacy")]
    pub background: Background,
    /// Number of completed epochs.
    pub epoch: usize,
    /// Number of completed optimiser steps.
    pub step: u64,
    /// Digest identifying the training data (source, sizes, content sample).
    pub data_fingerprint: String,
    /// The trainer's full settings (objective, estimator, optimiser, seed, ...).
    pub training: serde_json::Value,
}

/// Errors reading a checkpoint directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `config.json` is not valid.
    #[error("{path} is not a valid checkpoint config")]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// Written by an incompatible layout version.
    #[error(
        "checkpoint format version {found} is not supported (this toolkit reads {CHECKPOINT_FORMAT_VERSION})"
    )]
    Version {
        /// The version found.
        found: u32,
    },
    /// The encoder configuration is invalid.
    #[error("invalid encoder in checkpoint config: {0}")]
    Encoder(#[from] crate::preset::PresetError),
}

impl CheckpointConfig {
    /// Reads and validates `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self, CheckpointError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
        let config: CheckpointConfig =
            serde_json::from_str(&text).map_err(|source| CheckpointError::Config { path, source })?;
        if config.format_version != CHECKPOINT_FORMAT_VERSION {
            return Err(CheckpointError::Version { found: config.format_version });
        }
        config.encoder.validate()?;
        Ok(config)
    }

    /// What the encoder takes as input, exactly as training fed it.
    pub fn input_spec(&self) -> InputSpec {
        InputSpec {
            channels: self.encoder.in_channels,
            size: self.encoder.input_size(),
            resize: self.resize,
            background: self.background,
        }
    }

    /// The training settings without the machine-local ones (the data path, `--limit`'s
    /// bookkeeping of an interrupted epoch), as compact JSON: what the model metadata records as
    /// its recipe. `None` when the checkpoint holds no settings object.
    pub fn training_recipe(&self) -> Option<String> {
        let mut recipe = self.training.as_object()?.clone();
        for machine_local in ["data", "batches_into_epoch"] {
            recipe.remove(machine_local);
        }
        Some(serde_json::Value::Object(recipe).to_string())
    }

    /// Short sha256 digest of the training settings, to tell models apart.
    pub fn training_digest(&self) -> String {
        let canonical = serde_json::to_vec(&self.training).expect("JSON values serialise");
        sha256_hex(&canonical)
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// `bytes` as lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Preset;

    #[test]
    fn config_round_trips_and_rejects_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let config = CheckpointConfig {
            format_version: CHECKPOINT_FORMAT_VERSION,
            toolkit_version: crate::TOOLKIT_VERSION.into(),
            encoder: EncoderConfig::new(Preset::Basic32x32, 1).unwrap(),
            resize: ResizePolicy::Pad,
            background: Background::White,
            epoch: 3,
            step: 42,
            data_fingerprint: "abc".into(),
            training: serde_json::json!({"estimator": "jsd"}),
        };
        assert_eq!(config.training_recipe().as_deref(), Some(r#"{"estimator":"jsd"}"#));
        let with_path = CheckpointConfig {
            training: serde_json::json!({"data": "/home/me/images", "views": "cross", "batches_into_epoch": 3}),
            ..config.clone()
        };
        assert_eq!(with_path.training_recipe().as_deref(), Some(r#"{"views":"cross"}"#));
        let json = serde_json::to_vec_pretty(&config).unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), &json).unwrap();
        assert_eq!(CheckpointConfig::read(dir.path()).unwrap(), config);

        let mut legacy = serde_json::to_value(&config).unwrap();
        legacy.as_object_mut().unwrap().remove("background");
        std::fs::write(dir.path().join(CONFIG_FILE), serde_json::to_vec(&legacy).unwrap()).unwrap();
        assert_eq!(CheckpointConfig::read(dir.path()).unwrap().background, Background::Ignore);

        let mut old = config.clone();
        old.format_version = 0;
        std::fs::write(dir.path().join(CONFIG_FILE), serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(matches!(CheckpointConfig::read(dir.path()), Err(CheckpointError::Version { found: 0 })));

        std::fs::write(dir.path().join(CONFIG_FILE), &json[..json.len() / 2]).unwrap();
        assert!(matches!(CheckpointConfig::read(dir.path()), Err(CheckpointError::Config { .. })));
    }
}
