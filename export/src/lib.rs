//! Standalone ONNX export of DIM encoders: reads a dim-train checkpoint (no libtorch), describes
//! the encoder as a small graph with BatchNorm folded ([`graph`]), and writes it as an ONNX model
//! with the shared metadata ([`onnx_writer`]).
//!
//! ```no_run
//! use dim_export::{ExportOptions, export};
//! use dim_models::tap::Tap;
//! use dim_models::onnx_metadata::SearchRecipe;
//! let options = ExportOptions {
//!     checkpoint_dir: "runs/fashion/checkpoint".into(),
//!     out: "model.onnx".into(),
//!     embedding_source: Tap::Conv,
//!     search_recipe: Some(SearchRecipe::new(256, true)),
//! };
//! let summary = export(&options)?;
//! println!("{} bytes, checkpoint {}", summary.bytes, summary.metadata.checkpoint_sha256);
//! # Ok::<(), dim_export::ExportError>(())
//! ```

pub mod batch_norm_folding;
pub mod checkpoint;
pub mod error;
pub mod graph;
pub mod onnx_writer;

pub use checkpoint::EncoderCheckpoint;
pub use error::ExportError;
pub use graph::EncoderGraph;

use dim_models::TOOLKIT_VERSION;
use dim_models::onnx_metadata::{ModelMetadata, OutputInfo, SearchRecipe};
use dim_models::onnx_schema;
use dim_models::tap::Tap;
use prost::Message;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What to export and where.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Checkpoint directory (`config.json` + `weights.safetensors`).
    pub checkpoint_dir: PathBuf,
    /// Destination `.onnx` file, written atomically.
    pub out: PathBuf,
    /// The tap the `embedding` output normalises.
    pub embedding_source: Tap,
    /// The search post-processing recommended in the metadata, if any.
    pub search_recipe: Option<SearchRecipe>,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The metadata stored in the model.
    pub metadata: ModelMetadata,
    /// Size of the model file.
    pub bytes: usize,
}

/// Reads the checkpoint, builds the graph and writes the model. On any error nothing is
/// written at `options.out`.
pub fn export(options: &ExportOptions) -> Result<ExportSummary, ExportError> {
    let checkpoint = EncoderCheckpoint::read(&options.checkpoint_dir)?;
    let graph = EncoderGraph::build(&checkpoint, options.embedding_source);
    let metadata = ModelMetadata {
        search_recipe: options.search_recipe,
        ..model_metadata(&checkpoint, &graph, options.embedding_source)
    };
    let bytes = onnx_writer::encode_model(&graph, &metadata);
    dim_models::atomic_file::write_bytes_atomically(&options.out, &bytes)
        .map_err(|cause| ExportError::Write { path: options.out.clone(), cause })?;
    Ok(ExportSummary { metadata, bytes: bytes.len() })
}

/// The `metadata_props` contract for a model exported from `checkpoint`.
pub fn model_metadata(
    checkpoint: &EncoderCheckpoint,
    graph: &EncoderGraph,
    embedding_source: Tap,
) -> ModelMetadata {
    let config = &checkpoint.config;
    ModelMetadata {
        preset: config.encoder.preset,
        input: config.input_spec(),
        outputs: graph.outputs.iter().map(|o| OutputInfo { name: o.name.clone(), dim: o.width }).collect(),
        embedding_source,
        training_digest: config.training_digest(),
        training_recipe: config.training_recipe(),
        checkpoint_sha256: checkpoint.weights_sha256.clone(),
        toolkit_version: TOOLKIT_VERSION.to_string(),
        search_recipe: None,
    }
}

/// Records `recipe` (or its absence) as the recommended search post-processing of the existing
/// model at `path`, rewriting the file atomically; the graph and every other metadata entry are
/// kept as they are. Returns the model's new metadata.
pub fn set_search_recipe(path: &Path, recipe: Option<SearchRecipe>) -> Result<ModelMetadata, ExportError> {
    let model_error = |cause: String| ExportError::Model { path: path.to_path_buf(), cause };
    let bytes = std::fs::read(path).map_err(|e| model_error(e.to_string()))?;
    let mut model = onnx_schema::ModelProto::decode(bytes.as_slice())
        .map_err(|e| model_error(format!("not an ONNX model: {e}")))?;
    let props: HashMap<String, String> = model
        .metadata_props
        .iter()
        .filter_map(|entry| Some((entry.key.clone()?, entry.value.clone()?)))
        .collect();
    let mut metadata = ModelMetadata::from_props(&props).map_err(|e| model_error(e.to_string()))?;
    metadata.search_recipe = recipe;
    let updated: Vec<(String, String)> = metadata.to_props();
    // Every key this toolkit writes (the recipe's included, even when it is now absent) is
    // replaced; keys it does not know are kept.
    let with_recipe = ModelMetadata { search_recipe: Some(SearchRecipe::new(1, false)), ..metadata.clone() };
    let own_keys: Vec<String> = with_recipe.to_props().into_iter().map(|(key, _)| key).collect();
    model.metadata_props.retain(|entry| entry.key.as_ref().is_none_or(|key| !own_keys.contains(key)));
    model.metadata_props.extend(
        updated
            .into_iter()
            .map(|(key, value)| onnx_schema::StringStringEntryProto { key: Some(key), value: Some(value) }),
    );
    dim_models::atomic_file::write_bytes_atomically(path, &model.encode_to_vec())
        .map_err(|cause| ExportError::Write { path: path.to_path_buf(), cause })?;
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::checkpoint::{
        CHECKPOINT_FORMAT_VERSION, CONFIG_FILE, CheckpointConfig, WEIGHTS_FILE, sha256_hex,
    };
    use dim_models::onnx_schema::ModelProto;
    use dim_models::parameters::encoder_parameters;
    use dim_models::preprocess::ResizePolicy;
    use dim_models::{EncoderConfig, Preset};
    use prost::Message;
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;
    use std::path::Path;

    /// A tensor to store: name, dtype, shape and little-endian bytes.
    type StoredTensor = (String, Dtype, Vec<usize>, Vec<u8>);

    fn config() -> CheckpointConfig {
        CheckpointConfig {
            format_version: CHECKPOINT_FORMAT_VERSION,
            toolkit_version: TOOLKIT_VERSION.into(),
            encoder: EncoderConfig::new(Preset::Basic32x32, 1).unwrap(),
            resize: ResizePolicy::Pad,
            background: dim_models::preprocess::Background::White,
            epoch: 1,
            step: 10,
            data_fingerprint: "test".into(),
            training: serde_json::json!({"estimator": "jsd"}),
        }
    }

    /// Every encoder tensor of the contract, plus a critic tensor that export must ignore.
    fn contract_tensors() -> Vec<StoredTensor> {
        let f32_bytes = |len: usize| -> Vec<u8> {
            (0..len).flat_map(|i| ((i % 13) as f32 * 0.1 + 0.5).to_le_bytes()).collect()
        };
        let mut tensors: Vec<StoredTensor> = encoder_parameters(&config().encoder)
            .into_iter()
            .map(|spec| {
                let len = spec.shape.iter().product();
                (spec.name, Dtype::F32, spec.shape, f32_bytes(len))
            })
            .collect();
        tensors.push(("local_critic.block.weight".into(), Dtype::F32, vec![2, 2], f32_bytes(4)));
        tensors
    }

    fn write_checkpoint(dir: &Path, config_json: &serde_json::Value, tensors: &[StoredTensor]) {
        std::fs::write(dir.join(CONFIG_FILE), serde_json::to_vec_pretty(config_json).unwrap()).unwrap();
        let views = tensors.iter().map(|(name, dtype, shape, bytes)| {
            (name.clone(), TensorView::new(*dtype, shape.clone(), bytes).unwrap())
        });
        std::fs::write(dir.join(WEIGHTS_FILE), safetensors::serialize(views, None).unwrap()).unwrap();
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        names.sort();
        names
    }

    /// Exports `dir` into a fresh output directory and returns the result and that directory's listing.
    fn export_from(dir: &Path) -> (Result<ExportSummary, ExportError>, Vec<String>) {
        let out_dir = tempfile::tempdir().unwrap();
        let options = ExportOptions {
            checkpoint_dir: dir.to_path_buf(),
            out: out_dir.path().join("model.onnx"),
            embedding_source: Tap::Y,
            search_recipe: None,
        };
        (export(&options), listing(out_dir.path()))
    }

    fn assert_fails_cleanly(dir: &Path, expected_message: &str) {
        let (result, files) = export_from(dir);
        let message = result.expect_err("export should fail").to_string();
        assert!(message.contains(expected_message), "`{message}` lacks `{expected_message}`");
        assert!(files.is_empty(), "output directory holds {files:?}");
    }

    #[test]
    fn a_valid_checkpoint_exports_a_model_with_metadata_and_ignores_critic_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let black = CheckpointConfig { background: dim_models::preprocess::Background::Black, ..config() };
        write_checkpoint(dir.path(), &serde_json::to_value(&black).unwrap(), &contract_tensors());
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("model.onnx");
        let options = ExportOptions {
            checkpoint_dir: dir.path().into(),
            out: out.clone(),
            embedding_source: Tap::Y,
            search_recipe: Some(SearchRecipe::new(32, true)),
        };
        let summary = export(&options).unwrap();
        assert_eq!(listing(out_dir.path()), ["model.onnx"]);

        let model = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
        assert_eq!(model.producer_name.as_deref(), Some(onnx_writer::PRODUCER_NAME));
        let props: std::collections::HashMap<String, String> = model
            .metadata_props
            .into_iter()
            .map(|p| (p.key.unwrap_or_default(), p.value.unwrap_or_default()))
            .collect();
        let metadata = ModelMetadata::from_props(&props).unwrap();
        assert_eq!(metadata, summary.metadata);
        assert_eq!(metadata.embedding_source, Tap::Y);
        assert_eq!(props["dim.background"], "black", "the checkpoint's background reaches dim-embed");
        assert_eq!(metadata.input.background, dim_models::preprocess::Background::Black);
        assert!(props["dim.preprocessing"].contains("EXIF orientation applied; alpha composited over black"));
        assert_eq!(metadata.output_dim("embedding"), Some(64));
        assert_eq!(metadata.output_dim("conv"), Some(4096));
        let weights = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
        assert_eq!(metadata.checkpoint_sha256, sha256_hex(&weights));
        assert_eq!(metadata.training_digest, black.training_digest());
        assert_eq!(metadata.search_recipe, Some(SearchRecipe::new(32, true)));

        // The recipe of an existing model is rewritten in place; the graph and other keys stay.
        let graph_before = model.graph.clone();
        let mut extended = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
        extended.metadata_props.push(dim_models::onnx_schema::StringStringEntryProto {
            key: Some("user.note".into()),
            value: Some("kept".into()),
        });
        std::fs::write(&out, extended.encode_to_vec()).unwrap();
        let updated = set_search_recipe(&out, Some(SearchRecipe::new(16, false))).unwrap();
        let reread = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
        assert_eq!(reread.graph, graph_before);
        let props: std::collections::HashMap<String, String> = reread
            .metadata_props
            .iter()
            .map(|p| (p.key.clone().unwrap_or_default(), p.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(props.len(), reread.metadata_props.len(), "no key is written twice");
        assert_eq!(props["user.note"], "kept");
        assert_eq!(ModelMetadata::from_props(&props).unwrap(), updated);
        assert_eq!(
            updated,
            ModelMetadata { search_recipe: Some(SearchRecipe::new(16, false)), ..metadata.clone() }
        );
        let cleared = set_search_recipe(&out, None).unwrap();
        assert_eq!(cleared.search_recipe, None);
        let reread = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
        assert!(reread.metadata_props.iter().all(|p| p.key.as_deref() != Some("dim.search_post_processing")));

        std::fs::write(&out, b"not a model").unwrap();
        let error = set_search_recipe(&out, None).unwrap_err().to_string();
        assert!(error.contains("not an ONNX model"), "{error}");
    }

    #[test]
    fn a_missing_tensor_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = contract_tensors();
        tensors.retain(|t| t.0 != "encoder.conv2.bn.running_var");
        write_checkpoint(dir.path(), &serde_json::to_value(config()).unwrap(), &tensors);
        assert_fails_cleanly(dir.path(), "lacks the encoder tensor `encoder.conv2.bn.running_var`");
    }

    #[test]
    fn an_extra_encoder_tensor_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = contract_tensors();
        tensors.push(("encoder.conv4.conv.weight".into(), Dtype::F32, vec![1], vec![0; 4]));
        write_checkpoint(dir.path(), &serde_json::to_value(config()).unwrap(), &tensors);
        assert_fails_cleanly(
            dir.path(),
            "`encoder.conv4.conv.weight`, which the basic32x32 preset does not have",
        );
    }

    #[test]
    fn a_shape_mismatch_names_the_tensor_and_both_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = contract_tensors();
        let bias = tensors.iter_mut().find(|t| t.0 == "encoder.y.linear.bias").unwrap();
        (bias.2, bias.3) = (vec![63], vec![0; 63 * 4]);
        write_checkpoint(dir.path(), &serde_json::to_value(config()).unwrap(), &tensors);
        assert_fails_cleanly(dir.path(), "`encoder.y.linear.bias` has shape [63], expected [64]");
    }

    #[test]
    fn a_non_f32_tensor_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = contract_tensors();
        let bias = tensors.iter_mut().find(|t| t.0 == "encoder.y.linear.bias").unwrap();
        (bias.1, bias.3) = (Dtype::F64, vec![0; 64 * 8]);
        write_checkpoint(dir.path(), &serde_json::to_value(config()).unwrap(), &tensors);
        assert_fails_cleanly(dir.path(), "`encoder.y.linear.bias` has dtype F64, expected F32");
    }

    #[test]
    fn nan_weights_and_negative_variances_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = contract_tensors();
        let weight = tensors.iter_mut().find(|t| t.0 == "encoder.fc1.linear.weight").unwrap();
        weight.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        write_checkpoint(dir.path(), &serde_json::to_value(config()).unwrap(), &tensors);
        assert_fails_cleanly(dir.path(), "`encoder.fc1.linear.weight` holds NaN or infinite values");

        let mut tensors = contract_tensors();
        let variance = tensors.iter_mut().find(|t| t.0 == "encoder.conv1.bn.running_var").unwrap();
        variance.3[..4].copy_from_slice(&(-0.5f32).to_le_bytes());
        write_checkpoint(dir.path(), &serde_json::to_value(config()).unwrap(), &tensors);
        assert_fails_cleanly(dir.path(), "`encoder.conv1.bn.running_var` holds a negative variance");
    }

    #[test]
    fn truncated_weights_and_config_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &serde_json::to_value(config()).unwrap(), &contract_tensors());
        let weights = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
        std::fs::write(dir.path().join(WEIGHTS_FILE), &weights[..weights.len() / 2]).unwrap();
        assert_fails_cleanly(dir.path(), "is not a valid safetensors file");
        std::fs::remove_file(dir.path().join(WEIGHTS_FILE)).unwrap();
        assert_fails_cleanly(dir.path(), "cannot read");

        let config_path = dir.path().join(CONFIG_FILE);
        let text = std::fs::read(&config_path).unwrap();
        std::fs::write(&config_path, &text[..text.len() / 2]).unwrap();
        assert_fails_cleanly(dir.path(), "is not a valid checkpoint config");
    }

    #[test]
    fn an_unknown_preset_is_named_with_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut json = serde_json::to_value(config()).unwrap();
        json["encoder"]["preset"] = "resnet50".into();
        write_checkpoint(dir.path(), &json, &contract_tensors());
        assert_fails_cleanly(
            dir.path(),
            "unknown preset `resnet50` (known: basic32x32, basic64x64, alex64x64, resnet19_32x32, \
             resnet34_32x32, foldresnet19_32x32)",
        );
    }
}
