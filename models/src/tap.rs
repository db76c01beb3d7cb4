//! The encoder's outputs by name, one enum for every crate: [`Tap`] is a layer the encoder
//! exposes (training evaluates it, export writes it as a graph output and normalises one of them
//! into `embedding`), and [`Feature`] is what an embeddings directory holds: a tap, the
//! `embedding` output, or the near-duplicate feature made from it.

use crate::onnx_metadata::{OUTPUT_CONV, OUTPUT_EMBEDDING, OUTPUT_FC, OUTPUT_Y};
use crate::preset::TapDims;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A layer of the encoder that is read out as a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tap {
    /// The last convolutional map, flattened.
    Conv,
    /// The hidden fully connected layer before Y.
    Fc,
    /// The global vector Y.
    Y,
}

impl Tap {
    /// Every tap, from the input side.
    pub const ALL: [Tap; 3] = [Tap::Conv, Tap::Fc, Tap::Y];

    /// The tap's name on command lines, in tables and metadata; also its exported graph output.
    pub fn name(self) -> &'static str {
        match self {
            Tap::Conv => OUTPUT_CONV,
            Tap::Fc => OUTPUT_FC,
            Tap::Y => OUTPUT_Y,
        }
    }

    /// What the tap is, in a sentence (command-line help).
    pub fn description(self) -> &'static str {
        match self {
            Tap::Conv => "The last convolutional map, flattened",
            Tap::Fc => "The hidden fully connected layer before Y",
            Tap::Y => "The global vector Y",
        }
    }

    /// The tap's width in an encoder with these dimensions.
    pub fn width(self, dims: &TapDims) -> usize {
        match self {
            Tap::Conv => dims.conv_len(),
            Tap::Fc => dims.fc,
            Tap::Y => dims.y,
        }
    }
}

impl fmt::Display for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name(s, &Tap::ALL, Tap::name, "tap")
    }
}

/// Which vector an embedder produces for an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Feature {
    /// The L2-normalised search feature (the exported `embedding` output).
    #[default]
    Embedding,
    /// One of the encoder's taps as it is.
    Tap(Tap),
    /// For near-duplicate finding: the `embedding` output of the image and of its mirror image,
    /// each from a contrast-normalised input (`preprocess::normalise_contrast`), averaged and
    /// L2-normalised. Brightness and contrast changes and left-right mirroring leave it
    /// (nearly) unchanged; it costs two model runs per image.
    Duplicate,
}

impl Feature {
    /// Every feature, in the order `--help` lists them.
    pub const ALL: [Feature; 5] = [
        Feature::Embedding,
        Feature::Tap(Tap::Conv),
        Feature::Tap(Tap::Fc),
        Feature::Tap(Tap::Y),
        Feature::Duplicate,
    ];

    /// The feature's name on command lines, in manifests, Parquet files and database registries.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Duplicate => "duplicate",
            other => other.output_name(),
        }
    }

    /// The exported model's output the feature is made from.
    pub fn output_name(self) -> &'static str {
        match self {
            Feature::Embedding | Feature::Duplicate => OUTPUT_EMBEDDING,
            Feature::Tap(tap) => tap.name(),
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Feature {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name(s, &Feature::ALL, Feature::name, "feature")
    }
}

impl From<Feature> for &'static str {
    fn from(feature: Feature) -> Self {
        feature.name()
    }
}

impl TryFrom<String> for Feature {
    type Error = String;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

/// The member of `all` called `name`, or an error listing the known names.
fn parse_name<T: Copy>(
    name: &str,
    all: &[T],
    name_of: fn(T) -> &'static str,
    what: &str,
) -> Result<T, String> {
    all.iter().copied().find(|&item| name_of(item) == name).ok_or_else(|| {
        let known: Vec<&str> = all.iter().map(|&item| name_of(item)).collect();
        format!("unknown {what} `{name}` (known: {})", known.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_exported_outputs_and_parse_back() {
        assert_eq!(Tap::ALL.map(Tap::name), ["conv", "fc", "y"]);
        assert_eq!(Feature::ALL.map(Feature::name), ["embedding", "conv", "fc", "y", "duplicate"]);
        assert_eq!(Feature::Duplicate.output_name(), "embedding");
        for tap in Tap::ALL {
            assert_eq!(tap.name().parse::<Tap>(), Ok(tap));
        }
        for feature in Feature::ALL {
            assert_eq!(feature.name().parse::<Feature>(), Ok(feature));
        }
        assert_eq!("pixels".parse::<Tap>(), Err("unknown tap `pixels` (known: conv, fc, y)".to_string()));
        assert_eq!(
            "pixels".parse::<Feature>(),
            Err("unknown feature `pixels` (known: embedding, conv, fc, y, duplicate)".to_string())
        );
    }

    #[test]
    fn json_holds_the_names() {
        assert_eq!(serde_json::to_string(&Tap::Fc).unwrap(), "\"fc\"");
        assert_eq!(serde_json::to_string(&Feature::Tap(Tap::Y)).unwrap(), "\"y\"");
        assert_eq!(serde_json::to_string(&Feature::Duplicate).unwrap(), "\"duplicate\"");
        assert_eq!(serde_json::from_str::<Feature>("\"conv\"").unwrap(), Feature::Tap(Tap::Conv));
        assert!(serde_json::from_str::<Feature>("\"pixels\"").is_err());
    }

    #[test]
    fn widths_follow_the_preset() {
        let dims = TapDims { local: [128, 8, 8], conv: [256, 4, 4], fc: 1024, y: 64 };
        assert_eq!(Tap::ALL.map(|tap| tap.width(&dims)), [4096, 1024, 64]);
    }
}
