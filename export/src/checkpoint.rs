//! Reads a dim-train checkpoint without libtorch: the config through the shared contract and
//! exactly the encoder tensors of the parameter-name contract from `weights.safetensors`.

use crate::error::ExportError;
use dim_models::checkpoint::{CheckpointConfig, CheckpointError, WEIGHTS_FILE, sha256_hex};
use dim_models::parameters::{ENCODER_PREFIX, encoder_parameters};
use dim_models::preset::Preset;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// A float32 tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values.
    pub values: Vec<f32>,
}

/// The parts of a checkpoint an export needs.
#[derive(Debug, Clone)]
pub struct EncoderCheckpoint {
    /// The checkpoint's config.
    pub config: CheckpointConfig,
    /// Every encoder tensor of the parameter-name contract, by full name.
    pub tensors: BTreeMap<String, WeightTensor>,
    /// Lower-case hex sha256 of the weights file: the model's identity.
    pub weights_sha256: String,
}

impl EncoderCheckpoint {
    /// Reads `dir/config.json` and the encoder tensors of `dir/weights.safetensors`. Critic and
    /// prior tensors are ignored; any `encoder.*` tensor outside the contract is an error.
    pub fn read(dir: &Path) -> Result<Self, ExportError> {
        let config = CheckpointConfig::read(dir).map_err(explain_config_error)?;
        let path = dir.join(WEIGHTS_FILE);
        let bytes =
            std::fs::read(&path).map_err(|cause| ExportError::ReadWeights { path: path.clone(), cause })?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|cause| ExportError::CorruptWeights { path: path.clone(), cause })?;

        let specs = encoder_parameters(&config.encoder);
        let expected: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let encoder_prefix = format!("{ENCODER_PREFIX}.");
        let mut unexpected: Vec<String> = file
            .names()
            .into_iter()
            .filter(|name| name.starts_with(&encoder_prefix) && !expected.contains(name))
            .map(str::to_string)
            .collect();
        unexpected.sort();
        if let Some(name) = unexpected.into_iter().next() {
            let preset = config.encoder.preset.name().to_string();
            return Err(ExportError::UnexpectedTensor { path, name, preset });
        }

        let mut tensors = BTreeMap::new();
        for spec in specs {
            let view = file
                .tensor(&spec.name)
                .map_err(|_| ExportError::MissingTensor { path: path.clone(), name: spec.name.clone() })?;
            if view.dtype() != Dtype::F32 {
                return Err(ExportError::DType { name: spec.name, found: view.dtype().to_string() });
            }
            if view.shape() != spec.shape.as_slice() {
                return Err(ExportError::Shape {
                    name: spec.name,
                    expected: spec.shape,
                    found: view.shape().to_vec(),
                });
            }
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            if !values.iter().all(|v| v.is_finite()) {
                return Err(ExportError::BadValues { name: spec.name, problem: "NaN or infinite values" });
            }
            if spec.name.ends_with(".running_var") && values.iter().any(|&v| v < 0.0) {
                return Err(ExportError::BadValues { name: spec.name, problem: "a negative variance" });
            }
            tensors.insert(spec.name, WeightTensor { shape: spec.shape, values });
        }
        Ok(EncoderCheckpoint { config, tensors, weights_sha256: sha256_hex(&bytes) })
    }

    /// The tensor `name`; [`Self::read`] guarantees every contract tensor is present.
    pub fn tensor(&self, name: &str) -> &WeightTensor {
        &self.tensors[name]
    }
}

/// Turns serde's "unknown variant" for the preset into a dedicated error that names the preset
/// and lists the known ones; every other config error passes through unchanged.
fn explain_config_error(error: CheckpointError) -> ExportError {
    if let CheckpointError::Config { path, .. } = &error {
        let named = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|json| json.pointer("/encoder/preset").and_then(|v| v.as_str()).map(str::to_string));
        if let Some(Err(cause)) = named.map(|name| name.parse::<Preset>()) {
            return ExportError::UnknownPreset { path: path.clone(), cause };
        }
    }
    ExportError::Config(error)
}
