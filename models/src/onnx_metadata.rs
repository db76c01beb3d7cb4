//! The exported-model contract (export → infer): tensor names and the `metadata_props` keys that
//! carry everything the inference side needs to preprocess images and interpret outputs.

use crate::preprocess::{Background, InputSpec, ResizePolicy};
use crate::preset::Preset;
use crate::tap::Tap;
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
/// The training recipe (objective, views, optimiser), JSON; absent from models exported before it.
const KEY_TRAINING_RECIPE: &str = "dim.training_recipe";
/// The recommended collection-fitted post-processing for search ([`SearchRecipe`]); absent in
/// models exported before it was recorded, which recommend none.
const KEY_SEARCH_RECIPE: &str = "dim.search_post_processing";

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

/// How the model's makers recommend post-processing its vectors for similarity search: centre
/// them and keep the top `pca_dims` principal components of the collection (whitened when
/// `whiten`), fitted by the index on the collection itself, once it has at least `min_rows`
/// images (below that the fit is too noisy to help). Recorded as JSON under
/// `dim.search_post_processing`; `dim-search build` and `dim-serve` apply it unless told
/// otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchRecipe {
    /// Principal components kept.
    pub pca_dims: usize,
    /// Divide each component by its standard deviation.
    pub whiten: bool,
    /// Smallest collection the recipe is applied to.
    pub min_rows: usize,
}

impl SearchRecipe {
    /// Rows per kept dimension below which a fitted whitening hurt retrieval in our ablation
    /// (`bench/results/retrieval-ablation.md`: 256 dimensions on 1,797 and 5,000 images).
    pub const ROWS_PER_DIMENSION: usize = 20;

    /// The recipe keeping `pca_dims` components, applied from `ROWS_PER_DIMENSION` rows per
    /// component.
    pub fn new(pca_dims: usize, whiten: bool) -> Self {
        SearchRecipe { pca_dims, whiten, min_rows: pca_dims * Self::ROWS_PER_DIMENSION }
    }

    /// Whether a collection of `rows` images gets the recipe.
    pub fn applies_to(&self, rows: usize) -> bool {
        rows >= self.min_rows && rows > self.pca_dims
    }

    /// A readable name, e.g. "pca 256 + whitening".
    pub fn describe(&self) -> String {
        format!("pca {}{}", self.pca_dims, if self.whiten { " + whitening" } else { "" })
    }
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
    /// Which tap the `embedding` output normalises.
    pub embedding_source: Tap,
    /// sha256 of the checkpoint's training settings.
    pub training_digest: String,
    /// How the encoder was trained: the checkpoint's settings without machine-local ones (the
    /// data path), as JSON; `None` for models exported before it was recorded.
    pub training_recipe: Option<String>,
    /// sha256 of the checkpoint's weights file: the model's identity.
    pub checkpoint_sha256: String,
    /// Toolkit version that exported it.
    pub toolkit_version: String,
    /// The recommended search post-processing, if any.
    pub search_recipe: Option<SearchRecipe>,
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
            (KEY_EMBEDDING_SOURCE, self.embedding_source.name().to_string()),
            (KEY_TRAINING_DIGEST, self.training_digest.clone()),
            (KEY_CHECKPOINT_DIGEST, self.checkpoint_sha256.clone()),
            (KEY_TOOLKIT, self.toolkit_version.clone()),
        ]
        .into_iter()
        .chain(self.training_recipe.clone().map(|recipe| (KEY_TRAINING_RECIPE, recipe)))
        .chain(self.search_recipe.map(|recipe| {
            (KEY_SEARCH_RECIPE, serde_json::to_string(&recipe).expect("the recipe serialises"))
        }))
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
        let search_recipe = match props.get(KEY_SEARCH_RECIPE) {
            Some(json) => Some(serde_json::from_str(json).map_err(|_| invalid(KEY_SEARCH_RECIPE, json))?),
            None => None,
        };
        Ok(ModelMetadata {
            preset,
            input: InputSpec { channels: parse(KEY_CHANNELS)?, size: parse(KEY_SIZE)?, resize, background },
            outputs,
            embedding_source: {
                let name = get(KEY_EMBEDDING_SOURCE)?;
                name.parse().map_err(|_| invalid(KEY_EMBEDDING_SOURCE, name))?
            },
            training_digest: get(KEY_TRAINING_DIGEST)?.clone(),
            training_recipe: props.get(KEY_TRAINING_RECIPE).cloned(),
            checkpoint_sha256: get(KEY_CHECKPOINT_DIGEST)?.clone(),
            toolkit_version: get(KEY_TOOLKIT)?.clone(),
            search_recipe,
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
            embedding_source: Tap::Conv,
            training_digest: "t".into(),
            training_recipe: Some(r#"{"views":"cross"}"#.into()),
            checkpoint_sha256: "c".into(),
            toolkit_version: "0.1.0".into(),
            search_recipe: Some(SearchRecipe::new(256, true)),
        };
        let props: HashMap<_, _> = metadata.to_props().into_iter().collect();
        assert_eq!(ModelMetadata::from_props(&props).unwrap(), metadata);
        assert_eq!(props["dim.search_post_processing"], r#"{"pca_dims":256,"whiten":true,"min_rows":5120}"#);

        assert_eq!(props["dim.training_recipe"], r#"{"views":"cross"}"#);
        let mut without_training_recipe = props.clone();
        without_training_recipe.remove(KEY_TRAINING_RECIPE);
        assert_eq!(ModelMetadata::from_props(&without_training_recipe).unwrap().training_recipe, None);
        let mut without_recipe = props.clone();
        without_recipe.remove(KEY_SEARCH_RECIPE);
        assert_eq!(ModelMetadata::from_props(&without_recipe).unwrap().search_recipe, None);
        let mut bad_recipe = props.clone();
        bad_recipe.insert(KEY_SEARCH_RECIPE.into(), "pca".into());
        let error = ModelMetadata::from_props(&bad_recipe).unwrap_err().to_string();
        assert!(error.contains("dim.search_post_processing"), "{error}");
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

    #[test]
    fn a_recipe_applies_only_to_collections_large_enough_for_its_fit() {
        let recipe = SearchRecipe::new(256, true);
        assert_eq!(recipe.min_rows, 5120);
        assert!(!recipe.applies_to(5119));
        assert!(recipe.applies_to(5120));
        assert_eq!(recipe.describe(), "pca 256 + whitening");
        let tiny = SearchRecipe { pca_dims: 8, whiten: false, min_rows: 0 };
        assert!(!tiny.applies_to(8), "a fit needs more rows than dimensions");
        assert!(tiny.applies_to(9));
    }
}
