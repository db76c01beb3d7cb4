//! The exported-model contract (export → infer): tensor names and the `metadata_props` keys that
//! carry everything the inference side needs to preprocess images and interpret outputs.

use crate::preprocess::{Background, InputSpec, ResizePolicy};
use crate::preset::Preset;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Name of the graph input: float32 `[N, C, H, W]` in [0, 1].
pub const INPUT_NAME: &str = "image";
/// Documented range of the input values; the graph scales them to [−1, 1] itself.
pub const INPUT_RANGE: &str = "[0,1]";
/// The flattened last conv map.
pub const OUTPUT_CONV: &str = "conv";
/// The hidden FC layer before Y.
pub const OUTPUT_FC: &str = "fc";
/// The global vector Y.
pub const OUTPUT_Y: &str = "y";
/// The L2-normalised default search feature.
pub const OUTPUT_EMBEDDING: &str = "embedding";

const KEY_FORMAT: &str = "dim.format_version";
const KEY_PRESET: &str = "dim.preset";
const KEY_CHANNELS: &str = "dim.input_channels";
const KEY_SIZE: &str = "dim.input_size";
const KEY_RANGE: &str = "dim.input_range";
const KEY_RESIZE: &str = "dim.resize_policy";
/// Absent in models exported before it was recorded: those drop alpha ([`Background::legacy`]).
const KEY_BACKGROUND: &str = "dim.background";
/// Always `applied`: decoding turns every image upright by its EXIF orientation.
const KEY_ORIENTATION: &str = "dim.exif_orientation";
/// A readable account of the whole preprocessing ([`InputSpec::describe`]); informative only.
const KEY_PREPROCESSING: &str = "dim.preprocessing";
const KEY_OUTPUTS: &str = "dim.outputs";
const KEY_EMBEDDING_SOURCE: &str = "dim.embedding_source";
const KEY_TRAINING_DIGEST: &str = "dim.training_config_sha256";
const KEY_CHECKPOINT_DIGEST: &str = "dim.checkpoint_sha256";
const KEY_TOOLKIT: &str = "dim.toolkit_version";

/// Version of the metadata layout.
pub const METADATA_FORMAT_VERSION: u32 = 1;

/// One graph output and its width.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// Output tensor name.
    pub name: String,
    /// Feature width (the output is `[N, dim]`).
    pub dim: usize,
}

/// Everything an exported model says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMetadata {
    /// Encoder preset.
    pub preset: Preset,
    /// Input channels, size and resize policy.
    pub input: InputSpec,
    /// Outputs in graph order.
    pub outputs: Vec<OutputInfo>,
    /// Which tap (`conv`, `fc` or `y`) the `embedding` output normalises.
    pub embedding_source: String,
    /// sha256 of the checkpoint's training settings.
    pub training_digest: String,
    /// sha256 of the checkpoint's weights file: the model's identity.
    pub checkpoint_sha256: String,
    /// Toolkit version that exported it.
    pub toolkit_version: String,
}

/// Errors reading metadata from a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// A required key is absent: the file was not exported by dim-export.
    #[error("model metadata lacks `{0}`; was this model exported by dim-export?")]
    Missing(&'static str),
    /// A key's value cannot be parsed.
    #[error("model metadata `{key}` has an invalid value `{value}`")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
    },
}

impl ModelMetadata {
    /// The key/value pairs to store as the model's `metadata_props`.
    pub fn to_props(&self) -> Vec<(String, String)> {
        // Names and widths only: serialising them cannot fail.
        let outputs = serde_json::to_string(&self.outputs).expect("outputs serialise");
        [
            (KEY_FORMAT, METADATA_FORMAT_VERSION.to_string()),
            (KEY_PRESET, self.preset.name().to_string()),
            (KEY_CHANNELS, self.input.channels.to_string()),
            (KEY_SIZE, self.input.size.to_string()),
            (KEY_RANGE, INPUT_RANGE.to_string()),
            (KEY_RESIZE, self.input.resize.name().to_string()),
            (KEY_BACKGROUND, self.input.background.name().to_string()),
            (KEY_ORIENTATION, "applied".to_string()),
            (KEY_PREPROCESSING, self.input.describe()),
            (KEY_OUTPUTS, outputs),
            (KEY_EMBEDDING_SOURCE, self.embedding_source.clone()),
            (KEY_TRAINING_DIGEST, self.training_digest.clone()),
            (KEY_CHECKPOINT_DIGEST, self.checkpoint_sha256.clone()),
            (KEY_TOOLKIT, self.toolkit_version.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Parses the model's `metadata_props`.
    pub fn from_props(props: &HashMap<String, String>) -> Result<Self, MetadataError> {
        let get = |key: &'static str| props.get(key).ok_or(MetadataError::Missing(key));
        let parse = |key: &'static str| -> Result<usize, MetadataError> {
            let value = get(key)?;
            value.parse().map_err(|_| MetadataError::Invalid { key, value: value.clone() })
        };
        let invalid =
            |key: &'static str, value: &str| MetadataError::Invalid { key, value: value.to_string() };
        let format = parse(KEY_FORMAT)?;
        if format != METADATA_FORMAT_VERSION as usize {
            return Err(invalid(KEY_FORMAT, &format.to_string()));
        }
        let range = get(KEY_RANGE)?;
        if range != INPUT_RANGE {
            return Err(invalid(KEY_RANGE, range));
        }
        let preset_name = get(KEY_PRESET)?;
        let preset = preset_name.parse().map_err(|_| invalid(KEY_PRESET, preset_name))?;
        let resize_name = get(KEY_RESIZE)?;
        let resize: ResizePolicy = resize_name.parse().map_err(|_| invalid(KEY_RESIZE, resize_name))?;
        let background = match props.get(KEY_BACKGROUND) {
            Some(name) => name.parse().map_err(|_| invalid(KEY_BACKGROUND, name))?,
            None => Background::legacy(),
        };
        let outputs_json = get(KEY_OUTPUTS)?;
        let outputs = serde_json::from_str(outputs_json).map_err(|_| invalid(KEY_OUTPUTS, outputs_json))?;
        Ok(ModelMetadata {
            preset,
            input: InputSpec { channels: parse(KEY_CHANNELS)?, size: parse(KEY_SIZE)?, resize, background },
            outputs,
            embedding_source: get(KEY_EMBEDDING_SOURCE)?.clone(),
            training_digest: get(KEY_TRAINING_DIGEST)?.clone(),
            checkpoint_sha256: get(KEY_CHECKPOINT_DIGEST)?.clone(),
            toolkit_version: get(KEY_TOOLKIT)?.clone(),
        })
    }

    /// Width of the named output, if the model has it.
    pub fn output_dim(&self, name: &str) -> Option<usize> {
        self.outputs.iter().find(|o| o.name == name).map(|o| o.dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_props_and_missing_keys_are_named() {
        let metadata = ModelMetadata {
            preset: Preset::Basic32x32,
            input: InputSpec {
                channels: 1,
                size: 32,
                resize: ResizePolicy::Pad,
                background: Background::White,
            },
            outputs: vec![
                OutputInfo { name: OUTPUT_CONV.into(), dim: 4096 },
                OutputInfo { name: OUTPUT_EMBEDDING.into(), dim: 4096 },
            ],
            embedding_source: OUTPUT_CONV.into(),
            training_digest: "t".into(),
            checkpoint_sha256: "c".into(),
            toolkit_version: "0.1.0".into(),
        };
        let props: HashMap<_, _> = metadata.to_props().into_iter().collect();
        assert_eq!(ModelMetadata::from_props(&props).unwrap(), metadata);
        assert_eq!(metadata.output_dim(OUTPUT_EMBEDDING), Some(4096));

        assert!(props["dim.preprocessing"].contains("EXIF orientation applied"));

        let mut legacy = props.clone();
        legacy.remove(KEY_BACKGROUND);
        assert_eq!(ModelMetadata::from_props(&legacy).unwrap().input.background, Background::Ignore);

        let mut partial = props.clone();
        partial.remove(KEY_PRESET);
        let error = ModelMetadata::from_props(&partial).unwrap_err().to_string();
        assert!(error.contains("dim.preset"), "{error}");
    }
}
