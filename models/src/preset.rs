//! Encoder architecture presets (basic32x32, basic64x64, alex64x64) described as plain data, so
//! that the trainer builds tch modules and the exporter emits ONNX nodes from the same source.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A named encoder architecture from the DIM paper's official code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// CIFAR-sized: three 4×4/2 convs, FC1024, Y64; input 32×32.
    Basic32x32,
    /// Four 4×4/2 convs, FC1024, Y64; input 64×64.
    Basic64x64,
    /// AlexNet-like (STL-10, Tiny ImageNet): five 3×3 convs, three max-pools, FC4096 ×2, Y64.
    Alex64x64,
}

impl Preset {
    /// Every preset, in documentation order.
    pub const ALL: [Preset; 3] = [Preset::Basic32x32, Preset::Basic64x64, Preset::Alex64x64];

    /// The preset's name as used on command lines and in files.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Basic32x32 => "basic32x32",
            Preset::Basic64x64 => "basic64x64",
            Preset::Alex64x64 => "alex64x64",
        }
    }

    /// Square input side length in pixels.
    pub fn input_size(self) -> usize {
        match self {
            Preset::Basic32x32 => 32,
            Preset::Basic64x64 | Preset::Alex64x64 => 64,
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Preset {
    type Err = PresetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| PresetError::UnknownPreset(s.to_string()))
    }
}

/// Errors from choosing or validating an encoder configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresetError {
    /// The name matches no preset.
    #[error("unknown preset `{0}` (known: basic32x32, basic64x64, alex64x64)")]
    UnknownPreset(String),
    /// Only grey (1) and RGB (3) inputs are supported.
    #[error("in_channels must be 1 or 3, got {0}")]
    BadChannels(usize),
}

/// One layer of an encoder. Convs have no bias and are followed by BatchNorm and ReLU; linears
/// have a bias and optionally BatchNorm and ReLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `conv(in→out, k, stride, pad)` (no bias) → BatchNorm2d → ReLU.
    Conv {
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Square kernel size.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Zero padding on each side.
        padding: usize,
    },
    /// Max-pool with a square window.
    MaxPool {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding (with −inf) on each side.
        padding: usize,
    },
    /// `linear(in→out)` (with bias), then BatchNorm1d → ReLU when `batch_norm_relu`.
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
        /// Whether BatchNorm1d and ReLU follow.
        batch_norm_relu: bool,
    },
}

/// A named layer; the name is the parameter-name prefix (see [`crate::parameters`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Stable name, e.g. `conv2` or `fc1`.
    pub name: String,
    /// What the layer computes.
    pub kind: LayerKind,
}

/// Sizes of the encoder's feature taps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapDims {
    /// Local feature map M as (channels, height, width).
    pub local: [usize; 3],
    /// Last convolutional map as (channels, height, width); the "conv" tap is it flattened.
    pub conv: [usize; 3],
    /// Width of the "fc" tap (the hidden layer before Y).
    pub fc: usize,
    /// Width of the global vector Y.
    pub y: usize,
}

impl TapDims {
    /// Length of the flattened conv tap.
    pub fn conv_len(&self) -> usize {
        self.conv.iter().product()
    }
}

/// Width of the global vector Y in every preset.
pub const Y_DIM: usize = 64;

/// An encoder: a preset and its number of input channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// The architecture.
    pub preset: Preset,
    /// 1 for grey images, 3 for RGB.
    pub in_channels: usize,
}

impl EncoderConfig {
    /// Builds a validated configuration.
    pub fn new(preset: Preset, in_channels: usize) -> Result<Self, PresetError> {
        let config = EncoderConfig { preset, in_channels };
        config.validate()?;
        Ok(config)
    }

    /// Checks the fields that serde cannot.
    pub fn validate(&self) -> Result<(), PresetError> {
        match self.in_channels {
            1 | 3 => Ok(()),
            other => Err(PresetError::BadChannels(other)),
        }
    }

    /// Square input side length.
    pub fn input_size(&self) -> usize {
        self.preset.input_size()
    }

    /// The convolutional trunk, in order; the local map M is the output of the
    /// layer at [`Self::local_layer_index`].
    pub fn conv_layers(&self) -> Vec<Layer> {
        let conv = |n: usize, in_channels, out_channels, kernel, stride, padding| Layer {
            name: format!("conv{n}"),
            kind: LayerKind::Conv { in_channels, out_channels, kernel, stride, padding },
        };
        let pool = |n: usize| Layer {
            name: format!("pool{n}"),
            kind: LayerKind::MaxPool { kernel: 3, stride: 2, padding: 1 },
        };
        let c = self.in_channels;
        match self.preset {
            Preset::Basic32x32 => {
                vec![conv(1, c, 64, 4, 2, 1), conv(2, 64, 128, 4, 2, 1), conv(3, 128, 256, 4, 2, 1)]
            }
            Preset::Basic64x64 => vec![
                conv(1, c, 64, 4, 2, 1),
                conv(2, 64, 128, 4, 2, 1),
                conv(3, 128, 256, 4, 2, 1),
                conv(4, 256, 512, 4, 2, 1),
            ],
            Preset::Alex64x64 => vec![
                conv(1, c, 96, 3, 1, 1),
                pool(1),
                conv(2, 96, 192, 3, 1, 1),
                pool(2),
                conv(3, 192, 384, 3, 1, 1),
                conv(4, 384, 384, 3, 1, 1),
                conv(5, 384, 192, 3, 1, 1),
                pool(3),
            ],
        }
    }

    /// Index into [`Self::conv_layers`] of the layer whose output is the local map M.
    pub fn local_layer_index(&self) -> usize {
        match self.preset {
            // after conv2: 128×8×8
            Preset::Basic32x32 => 1,
            // after conv3: 256×8×8
            Preset::Basic64x64 => 2,
            // after conv2 and its pool: 192×16×16
            Preset::Alex64x64 => 3,
        }
    }

    /// The fully connected head after flattening the conv map; the last layer gives Y.
    pub fn fc_layers(&self) -> Vec<Layer> {
        let conv_len = self.tap_dims().conv_len();
        let fc = |n: usize, in_features, out_features| Layer {
            name: format!("fc{n}"),
            kind: LayerKind::Linear { in_features, out_features, batch_norm_relu: true },
        };
        let hidden = match self.preset {
            Preset::Basic32x32 | Preset::Basic64x64 => vec![fc(1, conv_len, 1024)],
            Preset::Alex64x64 => vec![fc(1, conv_len, 4096), fc(2, 4096, 4096)],
        };
        let last_width = match hidden.last().map(|l| l.kind) {
            Some(LayerKind::Linear { out_features, .. }) => out_features,
            _ => conv_len,
        };
        let mut layers = hidden;
        layers.push(Layer {
            name: "y".into(),
            kind: LayerKind::Linear { in_features: last_width, out_features: Y_DIM, batch_norm_relu: false },
        });
        layers
    }

    /// Sizes of M and of the conv, fc and Y taps, derived by walking the layers.
    pub fn tap_dims(&self) -> TapDims {
        let mut shape = [self.in_channels, self.input_size(), self.input_size()];
        let mut local = shape;
        for (index, layer) in self.conv_layers().iter().enumerate() {
            shape = output_shape(shape, &layer.kind);
            if index == self.local_layer_index() {
                local = shape;
            }
        }
        let fc = match self.preset {
            Preset::Basic32x32 | Preset::Basic64x64 => 1024,
            Preset::Alex64x64 => 4096,
        };
        TapDims { local, conv: shape, fc, y: Y_DIM }
    }
}

/// Output (channels, height, width) of a conv or pool layer.
fn output_shape([c, h, w]: [usize; 3], kind: &LayerKind) -> [usize; 3] {
    let spatial = |size: usize, kernel: usize, stride: usize, padding: usize| {
        (size + 2 * padding - kernel) / stride + 1
    };
    match *kind {
        LayerKind::Conv { out_channels, kernel, stride, padding, .. } => {
            [out_channels, spatial(h, kernel, stride, padding), spatial(w, kernel, stride, padding)]
        }
        LayerKind::MaxPool { kernel, stride, padding } => {
            [c, spatial(h, kernel, stride, padding), spatial(w, kernel, stride, padding)]
        }
        LayerKind::Linear { .. } => [c, h, w],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_dims_match_the_paper() {
        let basic32 = EncoderConfig::new(Preset::Basic32x32, 3).unwrap().tap_dims();
        assert_eq!(basic32.local, [128, 8, 8]);
        assert_eq!(basic32.conv, [256, 4, 4]);
        assert_eq!((basic32.fc, basic32.y), (1024, 64));
        let basic64 = EncoderConfig::new(Preset::Basic64x64, 1).unwrap().tap_dims();
        assert_eq!(basic64.local, [256, 8, 8]);
        assert_eq!(basic64.conv, [512, 4, 4]);
        let alex = EncoderConfig::new(Preset::Alex64x64, 3).unwrap().tap_dims();
        assert_eq!(alex.local, [192, 16, 16]);
        assert_eq!(alex.conv, [192, 8, 8]);
        assert_eq!(alex.fc, 4096);
    }

    #[test]
    fn presets_parse_by_name_and_reject_unknown_ones() {
        for preset in Preset::ALL {
            assert_eq!(preset.name().parse::<Preset>().unwrap(), preset);
        }
        assert!(matches!("resnet".parse::<Preset>(), Err(PresetError::UnknownPreset(_))));
        assert_eq!(EncoderConfig::new(Preset::Basic32x32, 2), Err(PresetError::BadChannels(2)));
    }
}
