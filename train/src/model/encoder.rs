//! DIM encoders built as tch modules from the framework-neutral presets in `dim_models`, with the
//! local map M and the conv, fc and Y taps exposed. Variables live under the names of the
//! parameter-name contract (`encoder.conv1.conv.weight`, ...), which the exporter reads.

use dim_models::parameters::{BATCH_NORM_EPSILON, ENCODER_PREFIX};
use dim_models::{BlockConv, EncoderConfig, Layer, LayerKind};
use tch::{Tensor, nn};

/// A bias-free conv followed by BatchNorm, under `path / "conv"` and `path / "bn"`.
#[derive(Debug)]
pub(crate) struct ConvBatchNorm {
    conv: nn::Conv2D,
    batch_norm: nn::BatchNorm,
}

impl ConvBatchNorm {
    fn new(
        path: &nn::Path,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        let conv_config = nn::ConvConfig {
            stride: stride as i64,
            padding: padding as i64,
            bias: false,
            ..Default::default()
        };
        ConvBatchNorm {
            conv: nn::conv2d(
                path / "conv",
                in_channels as i64,
                out_channels as i64,
                kernel as i64,
                conv_config,
            ),
            batch_norm: nn::batch_norm2d(path / "bn", out_channels as i64, batch_norm_config()),
        }
    }

    fn of_block(path: &nn::Path, conv: &BlockConv) -> Self {
        Self::new(
            &(path / conv.part),
            conv.in_channels,
            conv.out_channels,
            conv.kernel,
            conv.stride,
            conv.padding,
        )
    }

    /// conv → BatchNorm (no activation).
    fn forward_with(&self, x: &Tensor, statistics: Statistics) -> Tensor {
        statistics.normalise(&self.batch_norm, &x.apply(&self.conv))
    }
}

/// One layer of the convolutional trunk.
// A model holds a handful of these, so the size gap between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum TrunkLayer {
    Conv(ConvBatchNorm),
    MaxPool { kernel: i64, stride: i64, padding: i64 },
    Bottleneck { branch: [ConvBatchNorm; 3], shortcut: Option<ConvBatchNorm> },
    StridedCrops { crop: i64, stride: i64 },
    FoldCrops { grid: i64 },
}

impl TrunkLayer {
    /// Creates a trunk layer's variables under `path / layer.name` (the global critic builds its
    /// copy of the encoder's later layers with this too).
    pub(crate) fn new(path: &nn::Path, layer: &Layer) -> Self {
        let block = path / layer.name.as_str();
        match layer.kind {
            LayerKind::Conv { in_channels, out_channels, kernel, stride, padding } => TrunkLayer::Conv(
                ConvBatchNorm::new(&block, in_channels, out_channels, kernel, stride, padding),
            ),
            LayerKind::MaxPool { kernel, stride, padding } => {
                TrunkLayer::MaxPool { kernel: kernel as i64, stride: stride as i64, padding: padding as i64 }
            }
            LayerKind::Bottleneck(bottleneck) => TrunkLayer::Bottleneck {
                branch: bottleneck.branch().map(|conv| ConvBatchNorm::of_block(&block, &conv)),
                shortcut: bottleneck.shortcut().map(|conv| ConvBatchNorm::of_block(&block, &conv)),
            },
            LayerKind::StridedCrops { crop, stride } => {
                TrunkLayer::StridedCrops { crop: crop as i64, stride: stride as i64 }
            }
            LayerKind::FoldCrops { grid } => TrunkLayer::FoldCrops { grid: grid as i64 },
            LayerKind::Linear { .. } => unreachable!("the trunk holds no linear layers"),
        }
    }

    /// Applies the layer (conv → BatchNorm → ReLU, a pool, a residual block, or a crop step).
    pub(crate) fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_with(x, Statistics::of_mode(train))
    }

    /// Applies the layer with BatchNorm normalising by `statistics`.
    fn forward_with(&self, x: &Tensor, statistics: Statistics) -> Tensor {
        match self {
            TrunkLayer::Conv(conv) => conv.forward_with(x, statistics).relu(),
            TrunkLayer::MaxPool { kernel, stride, padding } => {
                x.max_pool2d([*kernel, *kernel], [*stride, *stride], [*padding, *padding], [1, 1], false)
            }
            TrunkLayer::Bottleneck { branch: [reduce, spatial, expand], shortcut } => {
                let h = reduce.forward_with(x, statistics).relu();
                let h = spatial.forward_with(&h, statistics).relu();
                let h = expand.forward_with(&h, statistics);
                let residual = match shortcut {
                    Some(conv) => conv.forward_with(x, statistics),
                    None => x.shallow_clone(),
                };
                (h + residual).relu()
            }
            TrunkLayer::StridedCrops { crop, stride } => strided_crops(x, *crop, *stride),
            TrunkLayer::FoldCrops { grid } => fold_crops(x, *grid),
        }
    }
}

/// `[N, C, H, W]` → `[N·G², C, crop, crop]`: the overlapping patches every `stride` pixels, in
/// row-major grid order within each image.
pub fn strided_crops(images: &Tensor, crop: i64, stride: i64) -> Tensor {
    let channels = images.size()[1];
    images
        .unfold(2, crop, stride)
        .unfold(3, crop, stride) // [N, C, G, G, crop, crop]
        .permute([0, 2, 3, 1, 4, 5])
        .reshape([-1, channels, crop, crop])
}

/// `[N·G², C, h, w]` → `[N, C·h·w, G, G]`: each crop's features back at its grid position.
pub fn fold_crops(features: &Tensor, grid: i64) -> Tensor {
    let [_, channels, height, width] = features.size()[..] else { unreachable!("crop features are 4-D") };
    let per_crop = channels * height * width;
    features.reshape([-1, grid * grid, per_crop]).permute([0, 2, 1]).reshape([-1, per_crop, grid, grid])
}

/// Which statistics the encoder's BatchNorm layers normalise with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistics {
    /// The running statistics (evaluation).
    Running,
    /// The batch's own, folded into the running statistics (training).
    Batch,
    /// The batch's own, leaving the running statistics alone: for a training view that the
    /// exported encoder never sees (an occluded one), whose statistics must not leak into it.
    BatchUntracked,
}

impl Statistics {
    /// `Batch` in training mode, `Running` otherwise.
    pub fn of_mode(train: bool) -> Self {
        if train { Statistics::Batch } else { Statistics::Running }
    }

    fn normalise(self, batch_norm: &nn::BatchNorm, x: &Tensor) -> Tensor {
        match self {
            Statistics::Running => x.apply_t(batch_norm, false),
            Statistics::Batch => x.apply_t(batch_norm, true),
            // Without running buffers libtorch normalises by the batch and updates nothing.
            Statistics::BatchUntracked => Tensor::batch_norm(
                x,
                batch_norm.ws.as_ref(),
                batch_norm.bs.as_ref(),
                None::<&Tensor>,
                None::<&Tensor>,
                true,
                0.0,
                BATCH_NORM_EPSILON,
                true,
            ),
        }
    }
}

/// One layer of the fully connected head.
#[derive(Debug)]
struct HeadLayer {
    linear: nn::Linear,
    batch_norm: Option<nn::BatchNorm>,
}

/// The encoder's outputs for a batch.
#[derive(Debug)]
pub struct Taps {
    /// Local feature map M, `[N, C, h, w]`.
    pub local: Tensor,
    /// Last conv map, `[N, C, h, w]` (the "conv" tap is it flattened).
    pub conv: Tensor,
    /// Hidden FC features before Y, `[N, fc]` (after BatchNorm and ReLU).
    pub fc: Tensor,
    /// Global vector Y, `[N, 64]`.
    pub y: Tensor,
}

/// A DIM encoder.
#[derive(Debug)]
pub struct Encoder {
    config: EncoderConfig,
    trunk: Vec<TrunkLayer>,
    head: Vec<HeadLayer>,
}

pub(crate) fn batch_norm_config() -> nn::BatchNormConfig {
    nn::BatchNormConfig { eps: BATCH_NORM_EPSILON, ..Default::default() }
}

impl Encoder {
    /// Creates the encoder's variables under `root / "encoder"`.
    pub fn new(root: &nn::Path, config: EncoderConfig) -> Self {
        let path = root / ENCODER_PREFIX;
        let trunk = config.conv_layers().iter().map(|layer| TrunkLayer::new(&path, layer)).collect();
        let head = config
            .fc_layers()
            .into_iter()
            .map(|layer| match layer.kind {
                LayerKind::Linear { in_features, out_features, batch_norm_relu } => {
                    let block = &path / layer.name.as_str();
                    HeadLayer {
                        linear: nn::linear(
                            &block / "linear",
                            in_features as i64,
                            out_features as i64,
                            Default::default(),
                        ),
                        batch_norm: batch_norm_relu.then(|| {
                            nn::batch_norm1d(&block / "bn", out_features as i64, batch_norm_config())
                        }),
                    }
                }
                _ => unreachable!("the head holds only linear layers"),
            })
            .collect();
        Encoder { config, trunk, head }
    }

    /// The architecture this encoder was built from.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Runs the encoder on images `[N, C, H, W]` with values in [0, 1] (scaled to [−1, 1] here,
    /// exactly as the exported ONNX graph does). `train` selects BatchNorm's batch statistics.
    pub fn forward_taps(&self, images: &Tensor, train: bool) -> Taps {
        self.forward_taps_with(images, Statistics::of_mode(train))
    }

    /// [`Encoder::forward_taps`] with BatchNorm normalising by `statistics`.
    pub fn forward_taps_with(&self, images: &Tensor, statistics: Statistics) -> Taps {
        let mut x = images * 2.0 - 1.0;
        let mut local = None;
        for (index, layer) in self.trunk.iter().enumerate() {
            x = layer.forward_with(&x, statistics);
            if index == self.config.local_layer_index() {
                local = Some(x.shallow_clone());
            }
        }
        let conv = x;
        let mut h = conv.flatten(1, -1);
        let mut fc = None;
        let last = self.head.len() - 1;
        for (index, layer) in self.head.iter().enumerate() {
            h = h.apply(&layer.linear);
            if let Some(batch_norm) = &layer.batch_norm {
                h = statistics.normalise(batch_norm, &h).relu();
            }
            if index + 1 == last {
                fc = Some(h.shallow_clone());
            }
        }
        Taps {
            local: local.expect("the local layer index lies inside the trunk"),
            conv,
            fc: fc.expect("every preset has a hidden FC layer"),
            y: h,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::Preset;
    use dim_models::parameters::encoder_parameters;
    use std::collections::BTreeMap;
    use tch::{Device, Kind};

    #[test]
    fn variables_follow_the_parameter_name_contract_and_taps_have_preset_sizes() {
        for preset in Preset::ALL {
            let config = EncoderConfig::new(preset, 3).unwrap();
            let store = nn::VarStore::new(Device::Cpu);
            let encoder = Encoder::new(&store.root(), config);
            let created: BTreeMap<String, Vec<usize>> = store
                .variables()
                .into_iter()
                .map(|(name, t)| (name, t.size().into_iter().map(|d| d as usize).collect()))
                .collect();
            let contract: BTreeMap<String, Vec<usize>> =
                encoder_parameters(&config).into_iter().map(|s| (s.name, s.shape)).collect();
            assert_eq!(created, contract, "{preset}");

            let size = config.input_size() as i64;
            let images = Tensor::rand([2, 3, size, size], (Kind::Float, Device::Cpu));
            let taps = encoder.forward_taps(&images, false);
            let dims = config.tap_dims();
            let as_i64 = |d: [usize; 3]| d.map(|v| v as i64).to_vec();
            assert_eq!(taps.local.size()[1..], as_i64(dims.local)[..]);
            assert_eq!(taps.conv.size()[1..], as_i64(dims.conv)[..]);
            assert_eq!(taps.fc.size(), [2, dims.fc as i64]);
            assert_eq!(taps.y.size(), [2, dims.y as i64]);
        }
    }

    #[test]
    fn strided_crops_cut_the_half_overlapping_grid_and_fold_puts_each_crop_back_in_place() {
        // Two 1×16×16 images whose pixel (y, x) holds 1000·image + 16·y + x; 8×8 crops every 4
        // pixels make a 3×3 grid per image.
        let images = (Tensor::arange(256, (Kind::Float, Device::Cpu)).view([1, 1, 16, 16])
            + Tensor::from_slice(&[0.0f32, 1000.0]).view([2, 1, 1, 1]))
        .contiguous();
        let crops = strided_crops(&images, 8, 4);
        assert_eq!(crops.size(), [2 * 9, 1, 8, 8]);
        for image in 0..2i64 {
            for (grid_y, grid_x) in (0..3i64).flat_map(|y| (0..3i64).map(move |x| (y, x))) {
                let crop = image * 9 + grid_y * 3 + grid_x;
                for (y, x) in [(0, 0), (0, 7), (7, 0), (5, 3)] {
                    let expected = 1000 * image + 16 * (4 * grid_y + y) + 4 * grid_x + x;
                    assert_eq!(
                        crops.double_value(&[crop, 0, y, x]),
                        expected as f64,
                        "crop {crop} ({y}, {x})"
                    );
                }
            }
        }

        // Per-crop features [N·9, 2, 1, 1] holding 10·crop + channel fold to [N, 2, 3, 3].
        let features = (Tensor::arange(18, (Kind::Float, Device::Cpu)).view([18, 1, 1, 1]) * 10.0
            + Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2, 1, 1]))
        .contiguous();
        let folded = fold_crops(&features, 3);
        assert_eq!(folded.size(), [2, 2, 3, 3]);
        assert_eq!(folded.double_value(&[0, 1, 0, 2]), 21.0);
        assert_eq!(folded.double_value(&[1, 0, 2, 1]), 160.0);
        // A crop feature map of 2×2 lands in channels c·4 + y·2 + x.
        let wide = Tensor::arange(9 * 4, (Kind::Float, Device::Cpu)).view([9, 1, 2, 2]);
        let folded = fold_crops(&wide, 3);
        assert_eq!(folded.size(), [1, 4, 3, 3]);
        assert_eq!(folded.double_value(&[0, 3, 1, 2]), (5 * 4 + 3) as f64);
    }

    #[test]
    fn untracked_batch_statistics_normalise_like_training_but_leave_the_running_ones_alone() {
        let _turn = crate::torch_generator::exclusive();
        let config = EncoderConfig::new(Preset::Basic32x32, 1).unwrap();
        let store = nn::VarStore::new(Device::Cpu);
        let encoder = Encoder::new(&store.root(), config);
        let running = || {
            let variables = store.variables();
            ["encoder.conv1.bn.running_mean", "encoder.fc1.bn.running_var"].map(|name| variables[name].copy())
        };
        let images = Tensor::rand([4, 1, 32, 32], (Kind::Float, Device::Cpu));
        let before = running();
        let untracked = encoder.forward_taps_with(&images, Statistics::BatchUntracked);
        for (after, before) in running().iter().zip(&before) {
            assert!(after.equal(before), "running statistics moved");
        }
        let tracked = encoder.forward_taps_with(&images, Statistics::Batch);
        assert!(untracked.y.allclose(&tracked.y, 1e-5, 1e-5, false));
        assert!(untracked.local.allclose(&tracked.local, 1e-5, 1e-5, false));
        assert!(running().iter().zip(&before).all(|(after, before)| !after.equal(before)));
    }
}
