//! Encoder architecture presets (basic32x32, basic64x64, alex64x64, and the ResNets of the
//! DIM-versus-CPC comparison, one of them on strided crops) described as plain data, so that the
//! trainer builds tch modules and the exporter emits ONNX nodes from the same source.

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
    /// The official code's `resnet19_32x32`: a 3×3/2 conv, six bottleneck residual blocks
    /// (two at 64, two at 128, two at 256 bottleneck channels, the first of each later pair
    /// strided), FC1024, Y64; input 32×32.
    #[serde(rename = "resnet19_32x32")]
    ResNet19_32x32,
    /// The official code's `resnet34_32x32`: as `resnet19_32x32` with 3, 1 + 5 and 1 + 2
    /// blocks per stage.
    #[serde(rename = "resnet34_32x32")]
    ResNet34_32x32,
    /// The official code's `foldresnet19_32x32`, the encoder of the DIM-versus-CPC comparison:
    /// the image is cut into 7×7 overlapping 8×8 crops (stride 4), each crop goes through
    /// `resnet19_32x32`'s trunk to a 1024×1×1 feature, and the crop features, folded back into
    /// their grid, form the local map M (1024×7×7); then FC1024 and Y64.
    #[serde(rename = "foldresnet19_32x32")]
    FoldResNet19_32x32,
}

impl Preset {
    /// Every preset, in documentation order.
    pub const ALL: [Preset; 6] = [
        Preset::Basic32x32,
        Preset::Basic64x64,
        Preset::Alex64x64,
        Preset::ResNet19_32x32,
        Preset::ResNet34_32x32,
        Preset::FoldResNet19_32x32,
    ];

    /// The preset's name as used on command lines and in files.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Basic32x32 => "basic32x32",
            Preset::Basic64x64 => "basic64x64",
            Preset::Alex64x64 => "alex64x64",
            Preset::ResNet19_32x32 => "resnet19_32x32",
            Preset::ResNet34_32x32 => "resnet34_32x32",
            Preset::FoldResNet19_32x32 => "foldresnet19_32x32",
        }
    }

    /// Square input side length in pixels.
    pub fn input_size(self) -> usize {
        match self {
            Preset::Basic32x32
            | Preset::ResNet19_32x32
            | Preset::ResNet34_32x32
            | Preset::FoldResNet19_32x32 => 32,
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
    #[error("unknown preset `{0}` (known: {known})", known = Preset::ALL.map(Preset::name).join(", "))]
    UnknownPreset(String),
    /// Only grey (1) and RGB (3) inputs are supported.
    #[error("in_channels must be 1 or 3, got {0}")]
    BadChannels(usize),
}

/// One layer of an encoder. Convs have no bias and are followed by BatchNorm and ReLU; linears
/// have a bias and optionally BatchNorm and ReLU; residual blocks hold their own convs.
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
    /// A bottleneck residual block (see [`Bottleneck`]).
    Bottleneck(Bottleneck),
    /// Strided crops: `[N, C, H, W]` → `[N·G², C, crop, crop]`, the `G × G` grid of overlapping
    /// `crop × crop` patches taken every `stride` pixels, in row-major grid order per image.
    StridedCrops {
        /// Patch side.
        crop: usize,
        /// Distance between neighbouring patches.
        stride: usize,
    },
    /// Folds per-crop features `[N·G², C, h, w]` back into their grid: `[N, C·h·w, G, G]`
    /// (channel `c·h·w + y·w + x` holds the crop's feature `c` at `(y, x)`).
    FoldCrops {
        /// Side `G` of the crop grid.
        grid: usize,
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

/// A bottleneck residual block as the official code builds it: a 1×1 conv to `width` channels, a
/// 3×3 conv (`stride`, padding 1) and a 1×1 conv to `out_channels`, each with BatchNorm and the
/// first two with ReLU; the input is added (through a 1×1/`stride` conv with BatchNorm when the
/// shape changes) and ReLU follows the sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bottleneck {
    /// Input channels.
    pub in_channels: usize,
    /// Channels inside the block.
    pub width: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Stride of the 3×3 conv (and of the shortcut conv).
    pub stride: usize,
}

/// One bias-free conv of a residual block, followed by BatchNorm; its variables live under
/// `{block}.{part}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockConv {
    /// Name within the block: `reduce`, `spatial`, `expand` or `shortcut`.
    pub part: &'static str,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
}

impl Bottleneck {
    /// The residual branch: reduce (ReLU after), spatial (ReLU after), expand (no ReLU).
    pub fn branch(&self) -> [BlockConv; 3] {
        let conv = |part, in_channels, out_channels, kernel, stride, padding| BlockConv {
            part,
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
        };
        [
            conv("reduce", self.in_channels, self.width, 1, 1, 0),
            conv("spatial", self.width, self.width, 3, self.stride, 1),
            conv("expand", self.width, self.out_channels, 1, 1, 0),
        ]
    }

    /// The shortcut's conv, when the block changes the shape (else the input is added as is).
    pub fn shortcut(&self) -> Option<BlockConv> {
        (self.in_channels != self.out_channels || self.stride != 1).then_some(BlockConv {
            part: "shortcut",
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kernel: 1,
            stride: self.stride,
            padding: 0,
        })
    }

    /// Every conv of the block, branch first.
    pub fn convs(&self) -> Vec<BlockConv> {
        self.branch().into_iter().chain(self.shortcut()).collect()
    }
}

/// Side of the grid of `crop`-pixel patches taken every `stride` pixels across `size` pixels.
pub fn crop_grid(size: usize, crop: usize, stride: usize) -> usize {
    (size - crop) / stride + 1
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
            Preset::ResNet19_32x32 | Preset::ResNet34_32x32 => {
                let mut layers = vec![conv(1, c, 64, 3, 2, 1)];
                layers.extend(residual_blocks(64, self.residual_stages()));
                layers
            }
            Preset::FoldResNet19_32x32 => {
                let grid = crop_grid(self.input_size(), CROP_SIDE, CROP_STRIDE);
                let mut layers = vec![Layer {
                    name: "crops".into(),
                    kind: LayerKind::StridedCrops { crop: CROP_SIDE, stride: CROP_STRIDE },
                }];
                layers.push(conv(1, c, 64, 3, 2, 1));
                layers.extend(residual_blocks(64, self.residual_stages()));
                layers.push(Layer { name: "fold".into(), kind: LayerKind::FoldCrops { grid } });
                layers
            }
        }
    }

    /// The ResNet presets' stages as (bottleneck width, stride of the first block, blocks),
    /// as the official configurations list them; empty for the other presets.
    fn residual_stages(&self) -> &'static [(usize, usize, usize)] {
        match self.preset {
            Preset::ResNet19_32x32 | Preset::FoldResNet19_32x32 => {
                &[(64, 1, 2), (128, 2, 1), (128, 1, 1), (256, 2, 1), (256, 1, 1)]
            }
            Preset::ResNet34_32x32 => &[(64, 1, 3), (128, 2, 1), (128, 1, 5), (256, 2, 1), (256, 1, 2)],
            Preset::Basic32x32 | Preset::Basic64x64 | Preset::Alex64x64 => &[],
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
            // The official `local_task_idx` 2: after the first strided block (512×8×8), behind
            // conv1 and the first stage's blocks.
            Preset::ResNet19_32x32 | Preset::ResNet34_32x32 => 1 + self.residual_stages()[0].2,
            // The folded crop features (1024×7×7), the trunk's last layer.
            Preset::FoldResNet19_32x32 => self.conv_layers().len() - 1,
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
            Preset::Alex64x64 => vec![fc(1, conv_len, 4096), fc(2, 4096, 4096)],
            _ => vec![fc(1, conv_len, self.hidden_width())],
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

    /// The input image as (channels, height, width).
    pub fn input_shape(&self) -> [usize; 3] {
        [self.in_channels, self.input_size(), self.input_size()]
    }

    /// Output (channels, height, width) of each layer of [`Self::conv_layers`], per crop
    /// between a `StridedCrops` layer and its `FoldCrops`.
    pub fn trunk_output_shapes(&self) -> Vec<[usize; 3]> {
        let mut shape = self.input_shape();
        self.conv_layers()
            .iter()
            .map(|layer| {
                shape = output_shape(shape, &layer.kind);
                shape
            })
            .collect()
    }

    /// Sizes of M and of the conv, fc and Y taps, derived by walking the layers.
    pub fn tap_dims(&self) -> TapDims {
        let shapes = self.trunk_output_shapes();
        let local = shapes[self.local_layer_index()];
        let conv = *shapes.last().expect("every preset has a trunk");
        TapDims { local, conv, fc: self.hidden_width(), y: Y_DIM }
    }

    /// Width of the hidden FC layers (the "fc" tap).
    fn hidden_width(&self) -> usize {
        match self.preset {
            Preset::Alex64x64 => 4096,
            _ => 1024,
        }
    }
}

/// Patch side of the strided-crop presets (the official `crop_size`).
pub const CROP_SIDE: usize = 8;
/// Distance between neighbouring patches: half the patch, as the official code takes them.
pub const CROP_STRIDE: usize = CROP_SIDE / 2;

/// Bottleneck blocks `block1`, `block2`, ... for `stages` of (width, first stride, count), the
/// first taking `in_channels`; each block expands to four times its width.
fn residual_blocks(in_channels: usize, stages: &[(usize, usize, usize)]) -> Vec<Layer> {
    let mut layers = Vec::new();
    let mut channels = in_channels;
    for &(width, first_stride, count) in stages {
        for repeat in 0..count {
            let stride = if repeat == 0 { first_stride } else { 1 };
            let block = Bottleneck { in_channels: channels, width, out_channels: 4 * width, stride };
            layers.push(Layer {
                name: format!("block{}", layers.len() + 1),
                kind: LayerKind::Bottleneck(block),
            });
            channels = block.out_channels;
        }
    }
    layers
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
        LayerKind::Bottleneck(block) => {
            [block.out_channels, spatial(h, 3, block.stride, 1), spatial(w, 3, block.stride, 1)]
        }
        LayerKind::StridedCrops { crop, .. } => [c, crop, crop],
        LayerKind::FoldCrops { grid } => [c * h * w, grid, grid],
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
    fn resnet_taps_follow_the_official_configurations() {
        // resnet19_32x32: local_task_idx 2 → 512×8×8; classifier conv = layer 5 → 1024×4×4.
        let resnet19 = EncoderConfig::new(Preset::ResNet19_32x32, 3).unwrap();
        let dims = resnet19.tap_dims();
        assert_eq!((dims.local, dims.conv, dims.fc, dims.y), ([512, 8, 8], [1024, 4, 4], 1024, 64));
        let blocks: Vec<Bottleneck> = resnet19
            .conv_layers()
            .iter()
            .filter_map(|layer| match layer.kind {
                LayerKind::Bottleneck(block) => Some(block),
                _ => None,
            })
            .collect();
        let strides: Vec<usize> = blocks.iter().map(|b| b.stride).collect();
        assert_eq!(strides, [1, 1, 2, 1, 2, 1]);
        // Shortcut convs exactly where the shape changes: 64→256, 256→512/2, 512→1024/2.
        let shortcuts: Vec<bool> = blocks.iter().map(|b| b.shortcut().is_some()).collect();
        assert_eq!(shortcuts, [true, false, true, false, true, false]);
        assert_eq!(
            blocks[2].branch().map(|c| (c.out_channels, c.kernel, c.stride)),
            [(128, 1, 1), (128, 3, 2), (512, 1, 1)]
        );

        let resnet34 = EncoderConfig::new(Preset::ResNet34_32x32, 1).unwrap();
        assert_eq!(resnet34.conv_layers().len(), 1 + 3 + 1 + 5 + 1 + 2);
        assert_eq!(resnet34.tap_dims().local, [512, 8, 8]);
        assert_eq!(resnet34.tap_dims().conv, [1024, 4, 4]);

        // foldresnet19_32x32: 7×7 crops of 8×8, each to 1024×1×1, folded to 1024×7×7.
        let fold = EncoderConfig::new(Preset::FoldResNet19_32x32, 3).unwrap();
        assert_eq!(crop_grid(32, CROP_SIDE, CROP_STRIDE), 7);
        let dims = fold.tap_dims();
        assert_eq!((dims.local, dims.conv, dims.fc), ([1024, 7, 7], [1024, 7, 7], 1024));
        assert_eq!(fold.local_layer_index(), fold.conv_layers().len() - 1);
    }

    #[test]
    fn presets_parse_by_name_and_reject_unknown_ones() {
        for preset in Preset::ALL {
            assert_eq!(preset.name().parse::<Preset>().unwrap(), preset);
        }
        assert!(matches!("resnet".parse::<Preset>(), Err(PresetError::UnknownPreset(_))));
        for preset in Preset::ALL {
            let json = serde_json::to_string(&preset).unwrap();
            assert_eq!(json, format!("\"{}\"", preset.name()));
        }
        assert_eq!(EncoderConfig::new(Preset::Basic32x32, 2), Err(PresetError::BadChannels(2)));
    }
}
