//! Extra global vectors (the DIM paper's "multiple globals" lever): a 3×3 convolution over the
//! local map M, then BatchNorm, ReLU and average pooling, gives several summaries of the image
//! besides Y, each scored against every location by the local critic. The module is a training aid
//! only: its variables live under their own prefix, outside the exported encoder's.

use crate::model::encoder::batch_norm_config;
use tch::{Tensor, nn};

/// Variable prefix of the extra-globals layer.
pub const EXTRA_GLOBALS_PREFIX: &str = "extra_globals";

/// `count` extra global vectors of Y's width from the local map.
#[derive(Debug)]
pub struct ExtraGlobals {
    conv: nn::Conv2D,
    batch_norm: nn::BatchNorm,
    count: i64,
    width: i64,
}

impl ExtraGlobals {
    /// Creates the layer under `root / "extra_globals"` for M with `local_channels` channels,
    /// giving `count` (≥ 1) vectors of `width` (Y's width) each.
    pub fn new(root: &nn::Path, local_channels: usize, width: usize, count: usize) -> Self {
        let path = root / EXTRA_GLOBALS_PREFIX;
        let (count, width) = (count as i64, width as i64);
        let conv_config = nn::ConvConfig { padding: 1, bias: false, ..Default::default() };
        ExtraGlobals {
            conv: nn::conv2d(&path / "conv", local_channels as i64, count * width, 3, conv_config),
            batch_norm: nn::batch_norm2d(&path / "bn", count * width, batch_norm_config()),
            count,
            width,
        }
    }

    /// The vectors, each `[N, width]`, for local maps `[N, C, h, w]`.
    pub fn forward(&self, local: &Tensor, train: bool) -> Vec<Tensor> {
        let n = local.size()[0];
        let pooled = local.apply(&self.conv).apply_t(&self.batch_norm, train).relu().mean_dim(
            [2i64, 3].as_slice(),
            false,
            None,
        ); // [N, count · width]
        pooled.reshape([n, self.count, self.width]).unbind(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn gives_count_vectors_of_the_width_under_its_own_prefix() {
        let _turn = crate::torch_generator::exclusive();
        for count in [1, 3] {
            let store = nn::VarStore::new(Device::Cpu);
            let extra = ExtraGlobals::new(&store.root(), 128, 64, count);
            let local = Tensor::rand([4, 128, 8, 8], (Kind::Float, Device::Cpu));
            let vectors = extra.forward(&local, true);
            assert_eq!(vectors.len(), count);
            for vector in &vectors {
                assert_eq!(vector.size(), [4, 64]);
            }
            for name in store.variables().keys() {
                assert!(name.starts_with("extra_globals."), "{name} is outside the prefix");
            }
            assert_eq!(store.variables()["extra_globals.conv.weight"].size(), [count as i64 * 64, 128, 3, 3]);
        }
    }
}
