//! Writing and reading checkpoint directories (the contract in `dim_models::checkpoint`):
//! `weights.safetensors` with every variable including BatchNorm running statistics,
//! `optimizer.safetensors` with the Adam states, and `config.json`, each written atomically and
//! config.json last, so a directory with a config always holds a complete checkpoint.

use crate::model::encoder::Encoder;
use dim_models::atomic_file;
use dim_models::checkpoint::{CONFIG_FILE, CheckpointConfig, CheckpointError, OPTIMIZER_FILE, WEIGHTS_FILE};
use dim_models::parameters::ENCODER_PREFIX;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor, nn};

/// Errors writing or reading a checkpoint's tensors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointIoError {
    /// The config could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] CheckpointError),
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A safetensors file is malformed.
    #[error("{path} is not a valid safetensors file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A variable is missing from the weights file.
    #[error("{path} has no tensor `{name}`")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The variable.
        name: String,
    },
    /// A stored tensor's shape differs from the variable's.
    #[error("{path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The variable.
        name: String,
        /// Stored shape.
        found: Vec<i64>,
        /// Expected shape.
        expected: Vec<i64>,
    },
    /// A tensor of an unsupported element type.
    #[error("tensor `{name}` has unsupported element type {kind}")]
    UnsupportedKind {
        /// The tensor.
        name: String,
        /// Its element type.
        kind: String,
    },
}

/// Serialises named f32/i64 tensors as safetensors bytes (copied to the CPU first).
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, CheckpointIoError> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let cpu = tensor.detach().to_device(Device::Cpu).contiguous();
        let shape: Vec<usize> = cpu.size().iter().map(|&d| d as usize).collect();
        let (dtype, bytes): (Dtype, Vec<u8>) = match cpu.kind() {
            Kind::Float => {
                let values =
                    Vec::<f32>::try_from(cpu.flatten(0, -1)).expect("a float tensor converts to f32");
                (Dtype::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            Kind::Int64 => {
                let values =
                    Vec::<i64>::try_from(cpu.flatten(0, -1)).expect("an int64 tensor converts to i64");
                (Dtype::I64, values.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            kind => {
                return Err(CheckpointIoError::UnsupportedKind {
                    name: name.clone(),
                    kind: format!("{kind:?}"),
                });
            }
        };
        buffers.push((name.clone(), dtype, shape, bytes));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CheckpointIoError::Format { path: PathBuf::new(), reason: e.to_string() })?;
    safetensors::serialize(views, None)
        .map_err(|e| CheckpointIoError::Format { path: PathBuf::new(), reason: e.to_string() })
}

/// Reads every tensor of a safetensors file onto the CPU.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>, CheckpointIoError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointIoError::Io { path: path.into(), source })?;
    let format_error = |reason: String| CheckpointIoError::Format { path: path.into(), reason };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| format_error(e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, view) in file.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::I64 => Kind::Int64,
            other => return Err(format_error(format!("tensor `{name}` has unsupported dtype {other:?}"))),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor =
            Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| format_error(e.to_string()))?;
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// Copies the stored tensors into every variable of `store` whose name satisfies `wanted`.
fn load_variables(
    store: &nn::VarStore,
    path: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<(), CheckpointIoError> {
    let stored = read_tensors(path)?;
    tch::no_grad(|| {
        for (name, mut variable) in store.variables() {
            if !wanted(&name) {
                continue;
            }
            let source = stored
                .get(&name)
                .ok_or_else(|| CheckpointIoError::MissingTensor { path: path.into(), name: name.clone() })?;
            if source.size() != variable.size() {
                return Err(CheckpointIoError::Shape {
                    path: path.into(),
                    name,
                    found: source.size(),
                    expected: variable.size(),
                });
            }
            variable.copy_(source);
        }
        Ok(())
    })
}

/// Writes a complete checkpoint into `dir`: weights, optimiser state, then config.json.
pub fn save_checkpoint(
    dir: &Path,
    store: &nn::VarStore,
    optimizer_state: &[(String, Tensor)],
    config: &CheckpointConfig,
    also_commit: Vec<atomic_file::StagedFile>,
) -> Result<(), CheckpointIoError> {
    let stage = |file: &str, bytes: &[u8]| {
        let path = dir.join(file);
        atomic_file::stage(&path, |out| out.write_all(bytes))
            .map_err(|source| CheckpointIoError::Io { path, source })
    };
    let mut variables: Vec<(String, Tensor)> = store.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let config_json = serde_json::to_vec_pretty(config)
        .map_err(|source| CheckpointIoError::Io { path: dir.join(CONFIG_FILE), source: source.into() })?;
    let mut staged = vec![
        stage(WEIGHTS_FILE, &safetensors_bytes(&variables)?)?,
        stage(OPTIMIZER_FILE, &safetensors_bytes(optimizer_state)?)?,
        stage(CONFIG_FILE, &config_json)?,
    ];
    staged.extend(also_commit);
    // One change for all the files: a kill between the renames is finished by the next run
    // ([`recover_interrupted_save`]), so weights, optimiser state, config and whatever else
    // belongs to this checkpoint (the training log) never disagree.
    atomic_file::commit_together(dir, staged)
        .map_err(|source| CheckpointIoError::Io { path: dir.to_path_buf(), source })
}

/// Cleans up after a killed run: completes a checkpoint save it left halfway through its
/// renames, then removes the files it had staged for a save it never committed (the checkpoint's
/// own and `also_committed`, the names given to [`save_checkpoint`]'s `also_commit`).
pub fn recover_interrupted_save(dir: &Path, also_committed: &[&str]) -> Result<(), CheckpointIoError> {
    atomic_file::finish_interrupted_commit(dir)
        .map_err(|source| CheckpointIoError::Io { path: dir.to_path_buf(), source })?;
    let staged: Vec<&str> = [WEIGHTS_FILE, OPTIMIZER_FILE, CONFIG_FILE]
        .into_iter()
        .chain(also_committed.iter().copied())
        .collect();
    atomic_file::remove_abandoned_staged_files(dir, &staged);
    Ok(())
}

/// Loads every variable of `store` from the checkpoint in `dir`.
pub fn load_weights(dir: &Path, store: &nn::VarStore) -> Result<(), CheckpointIoError> {
    load_variables(store, &dir.join(WEIGHTS_FILE), |_| true)
}

/// Reads the optimiser state of the checkpoint in `dir`.
pub fn load_optimizer_state(dir: &Path) -> Result<HashMap<String, Tensor>, CheckpointIoError> {
    read_tensors(&dir.join(OPTIMIZER_FILE))
}

/// Loads only the encoder of a checkpoint (critics and discriminator are left out), in
/// evaluation use: callers run it with `forward_taps(images, false)`.
pub fn load_encoder(
    dir: &Path,
    device: Device,
) -> Result<(nn::VarStore, Encoder, CheckpointConfig), CheckpointIoError> {
    let config = CheckpointConfig::read(dir)?;
    let store = nn::VarStore::new(device);
    let encoder = Encoder::new(&store.root(), config.encoder);
    let prefix = format!("{ENCODER_PREFIX}.");
    load_variables(&store, &dir.join(WEIGHTS_FILE), |name| name.starts_with(&prefix))?;
    Ok((store, encoder, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::checkpoint::CHECKPOINT_FORMAT_VERSION;
    use dim_models::preprocess::ResizePolicy;
    use dim_models::{EncoderConfig, Preset};

    fn config(encoder: EncoderConfig) -> CheckpointConfig {
        CheckpointConfig {
            format_version: CHECKPOINT_FORMAT_VERSION,
            toolkit_version: dim_models::TOOLKIT_VERSION.into(),
            encoder,
            resize: ResizePolicy::Pad,
            background: dim_models::preprocess::Background::White,
            epoch: 1,
            step: 10,
            data_fingerprint: "test".into(),
            training: serde_json::json!({}),
        }
    }

    #[test]
    fn an_encoder_round_trips_with_its_running_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let encoder_config = EncoderConfig::new(Preset::Basic32x32, 1).unwrap();
        let store = nn::VarStore::new(Device::Cpu);
        let encoder = Encoder::new(&store.root(), encoder_config);
        let _critic = crate::model::critics::LocalCritic::new(&store.root(), 128, 64, 16);
        // A training-mode pass moves the BatchNorm running statistics off their initial values.
        let images = Tensor::rand([4, 1, 32, 32], (Kind::Float, Device::Cpu));
        let _ = encoder.forward_taps(&images, true);
        let state = vec![("opt.step".to_string(), Tensor::from(7i64))];
        save_checkpoint(dir.path(), &store, &state, &config(encoder_config), vec![]).unwrap();

        let (_loaded_store, loaded, loaded_config) = load_encoder(dir.path(), Device::Cpu).unwrap();
        assert_eq!(loaded_config, config(encoder_config));
        let expected = encoder.forward_taps(&images, false).y;
        let actual = loaded.forward_taps(&images, false).y;
        assert!((expected - actual).abs().max().double_value(&[]) < 1e-6);
        assert_eq!(load_optimizer_state(dir.path()).unwrap()["opt.step"].int64_value(&[]), 7);

        let other = nn::VarStore::new(Device::Cpu);
        let _bigger_critic = crate::model::critics::LocalCritic::new(&other.root(), 128, 64, 32);
        assert!(matches!(load_weights(dir.path(), &other), Err(CheckpointIoError::Shape { .. })));
    }

    #[test]
    fn a_truncated_weights_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let encoder_config = EncoderConfig::new(Preset::Basic32x32, 1).unwrap();
        let store = nn::VarStore::new(Device::Cpu);
        let _encoder = Encoder::new(&store.root(), encoder_config);
        save_checkpoint(dir.path(), &store, &[], &config(encoder_config), vec![]).unwrap();
        let weights = dir.path().join(WEIGHTS_FILE);
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
        let error = load_encoder(dir.path(), Device::Cpu).unwrap_err();
        assert!(matches!(error, CheckpointIoError::Format { .. }), "{error}");
    }
}
