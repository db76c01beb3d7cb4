//! The "encode and dot" critics of the official DIM code: the local critic scores the global
//! vector Y against every location of the local map M, the global critic scores Y against the
//! whole of M. Scores come out as `[N, N, L]` for the estimators. The view critic embeds Y for
//! the global-to-global term across two augmented views.

use crate::model::encoder::{TrunkLayer, batch_norm_config};
use dim_models::{EncoderConfig, LayerKind};
use tch::{Kind, Tensor, nn, nn::Module};

/// Variable prefix of the local critic.
pub const LOCAL_CRITIC_PREFIX: &str = "local_critic";
/// Variable prefix of the global critic.
pub const GLOBAL_CRITIC_PREFIX: &str = "global_critic";
/// Variable prefix of the view critic (the global-to-global term).
pub const VIEW_CRITIC_PREFIX: &str = "view_critic";

/// A 1×1 "conv" block over feature vectors `[P, in] → [P, U]`:
/// `LayerNorm(W₂·ReLU(BN(W₁·x)) + S·x)`, with the shortcut `S` initialised near identity.
///
/// A 1×1 convolution is a linear map applied at every location, so the block runs on
/// `[positions, channels]` rows; BatchNorm over those rows uses the same statistics as
/// BatchNorm2d over `(N, h, w)`.
#[derive(Debug)]
struct EncodeBlock {
    hidden: nn::Linear,
    batch_norm: nn::BatchNorm,
    output: nn::Linear,
    shortcut: nn::Linear,
    layer_norm: nn::LayerNorm,
}

impl EncodeBlock {
    fn new(path: &nn::Path, in_features: i64, width: i64) -> Self {
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        let shortcut = nn::linear(path / "shortcut", in_features, width, no_bias);
        // Start the shortcut as (almost) the identity on the first min(in, U) channels, as the
        // official code does, so the block initially passes the features through and the
        // residual branch learns a correction.
        tch::no_grad(|| {
            let near_identity = Tensor::eye_m(width, in_features, (Kind::Float, path.device()))
                + Tensor::empty([width, in_features], (Kind::Float, path.device())).uniform_(-0.01, 0.01);
            let diagonal = Tensor::eye_m(width, in_features, (Kind::Bool, path.device()));
            let mut weight = shortcut.ws.shallow_clone();
            weight.copy_(&near_identity.masked_fill(&diagonal, 1.0));
        });
        EncodeBlock {
            hidden: nn::linear(path / "hidden", in_features, width, no_bias),
            batch_norm: nn::batch_norm1d(path / "bn", width, batch_norm_config()),
            output: nn::linear(path / "output", width, width, Default::default()),
            shortcut,
            layer_norm: nn::layer_norm(path / "layer_norm", vec![width], Default::default()),
        }
    }

    fn forward(&self, rows: &Tensor, train: bool) -> Tensor {
        let residual = rows.apply(&self.hidden).apply_t(&self.batch_norm, train).relu().apply(&self.output);
        (residual + rows.apply(&self.shortcut)).apply(&self.layer_norm)
    }
}

/// Local critic: `u(i, j, l) = ⟨φ(Y_i), ψ(M_j at l)⟩`.
#[derive(Debug)]
pub struct LocalCritic {
    local_block: EncodeBlock,
    global_block: EncodeBlock,
}

impl LocalCritic {
    /// Creates the critic under `root / "local_critic"` for M with `local_channels` channels,
    /// Y of width `y_dim`, and embedding width `width` (U).
    pub fn new(root: &nn::Path, local_channels: usize, y_dim: usize, width: usize) -> Self {
        let path = root / LOCAL_CRITIC_PREFIX;
        LocalCritic {
            local_block: EncodeBlock::new(&(&path / "local"), local_channels as i64, width as i64),
            global_block: EncodeBlock::new(&(&path / "global"), y_dim as i64, width as i64),
        }
    }

    /// Scores `[N, N, L]` for local maps `[N, C, h, w]` and global vectors `[N, Y]`.
    pub fn scores(&self, local: &Tensor, y: &Tensor, train: bool) -> Tensor {
        let mut scores = self.scores_for_each(local, std::slice::from_ref(y), train);
        scores.swap_remove(0)
    }

    /// Scores `[N, N, L]` of each of several sets of global vectors `[N, Y]` against the same
    /// local maps `[N, C, h, w]`, embedding the (far more numerous) locations only once. Each set
    /// is embedded on its own, so BatchNorm sees one kind of global vector at a time.
    pub fn scores_for_each(&self, local: &Tensor, globals: &[Tensor], train: bool) -> Vec<Tensor> {
        let [n, c, h, w] = local.size()[..] else { panic!("local map must be [N, C, h, w]") };
        let rows = local.permute([0, 2, 3, 1]).reshape([n * h * w, c]);
        let local_embedded = self.local_block.forward(&rows, train).transpose(0, 1); // [U, N·L]
        globals
            .iter()
            .map(|global| {
                let global_embedded = self.global_block.forward(global, train); // [N, U]
                global_embedded.matmul(&local_embedded).reshape([n, n, h * w])
            })
            .collect()
    }
}

/// One layer of the global critic's copy of the encoder's remaining layers.
// A model holds a handful of these, so the size gap between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum RemainingLayer {
    Trunk(TrunkLayer),
    Linear { linear: nn::Linear, batch_norm: nn::BatchNorm },
}

/// Global critic: a copy of the encoder's layers after M (convs and hidden FC layers) then a
/// linear map to U encodes M; `Y → Linear(Y → U)`; the score is their dot product.
#[derive(Debug)]
pub struct GlobalCritic {
    remaining: Vec<RemainingLayer>,
    local_output: nn::Linear,
    global_output: nn::Linear,
}

impl GlobalCritic {
    /// Creates the critic under `root / "global_critic"`.
    pub fn new(root: &nn::Path, config: &EncoderConfig, width: usize) -> Self {
        let path = root / GLOBAL_CRITIC_PREFIX;
        let local_path = &path / "local";
        let mut remaining = Vec::new();
        for layer in config.conv_layers().iter().skip(config.local_layer_index() + 1) {
            remaining.push(RemainingLayer::Trunk(TrunkLayer::new(&local_path, layer)));
        }
        let fc_layers = config.fc_layers();
        let hidden_layers = &fc_layers[..fc_layers.len() - 1];
        let mut features = config.tap_dims().conv_len() as i64;
        for layer in hidden_layers {
            let LayerKind::Linear { in_features, out_features, .. } = layer.kind else {
                unreachable!("fc_layers holds only linear layers")
            };
            let block = &local_path / layer.name.as_str();
            remaining.push(RemainingLayer::Linear {
                linear: nn::linear(
                    &block / "linear",
                    in_features as i64,
                    out_features as i64,
                    Default::default(),
                ),
                batch_norm: nn::batch_norm1d(&block / "bn", out_features as i64, batch_norm_config()),
            });
            features = out_features as i64;
        }
        let width = width as i64;
        GlobalCritic {
            remaining,
            local_output: nn::linear(&local_path / "output", features, width, Default::default()),
            global_output: nn::linear(
                &path / "global" / "output",
                config.tap_dims().y as i64,
                width,
                Default::default(),
            ),
        }
    }

    /// Scores `[N, N, 1]` for local maps `[N, C, h, w]` and global vectors `[N, Y]`.
    pub fn scores(&self, local: &Tensor, y: &Tensor, train: bool) -> Tensor {
        let mut x = local.shallow_clone();
        for layer in &self.remaining {
            x = match layer {
                RemainingLayer::Trunk(layer) => layer.forward_t(&x, train),
                RemainingLayer::Linear { linear, batch_norm } => {
                    x.flatten(1, -1).apply(linear).apply_t(batch_norm, train).relu()
                }
            };
        }
        let local_embedded = x.flatten(1, -1).apply(&self.local_output); // [N, U]
        let global_embedded = self.global_output.forward(y); // [N, U]
        global_embedded.matmul(&local_embedded.transpose(0, 1)).unsqueeze(-1)
    }
}

/// View critic: embeds the global vectors of two views, `Y → φ(Y)` with the local critic's block
/// shape, for [`crate::model::estimators::global_to_global`].
#[derive(Debug)]
pub struct ViewCritic {
    block: EncodeBlock,
}

impl ViewCritic {
    /// Creates the critic under `root / "view_critic"` for Y of width `y_dim`.
    pub fn new(root: &nn::Path, y_dim: usize, width: usize) -> Self {
        ViewCritic { block: EncodeBlock::new(&(root / VIEW_CRITIC_PREFIX), y_dim as i64, width as i64) }
    }

    /// The embeddings `[N, U]` of global vectors `[N, Y]`.
    pub fn embed(&self, y: &Tensor, train: bool) -> Tensor {
        self.block.forward(y, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::Preset;
    use tch::Device;

    #[test]
    fn critics_score_every_pair_and_live_under_their_own_prefixes() {
        let config = EncoderConfig::new(Preset::Basic32x32, 1).unwrap();
        let store = nn::VarStore::new(Device::Cpu);
        let local_critic = LocalCritic::new(&store.root(), 128, 64, 32);
        let global_critic = GlobalCritic::new(&store.root(), &config, 32);
        let local = Tensor::rand([3, 128, 8, 8], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
        assert_eq!(local_critic.scores(&local, &y, true).size(), [3, 3, 64]);
        assert_eq!(global_critic.scores(&local, &y, true).size(), [3, 3, 1]);
        for name in store.variables().keys() {
            assert!(
                name.starts_with("local_critic.") || name.starts_with("global_critic."),
                "{name} is outside the critic prefixes"
            );
        }
        assert!(store.variables().contains_key("global_critic.local.conv3.conv.weight"));
        assert!(store.variables().contains_key("global_critic.local.fc1.linear.weight"));
    }

    #[test]
    fn the_global_critic_of_a_resnet_copies_the_blocks_after_the_local_map() {
        let config = EncoderConfig::new(Preset::ResNet19_32x32, 3).unwrap();
        let store = nn::VarStore::new(Device::Cpu);
        let global_critic = GlobalCritic::new(&store.root(), &config, 16);
        let [channels, height, width] = config.tap_dims().local.map(|d| d as i64);
        let local = Tensor::rand([2, channels, height, width], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([2, 64], (Kind::Float, Device::Cpu));
        assert_eq!(global_critic.scores(&local, &y, true).size(), [2, 2, 1]);
        let variables = store.variables();
        // M is block3's output: blocks 4 to 6 are copied, the earlier ones are not.
        assert!(variables.contains_key("global_critic.local.block4.reduce.conv.weight"));
        assert!(variables.contains_key("global_critic.local.block5.shortcut.bn.running_mean"));
        assert!(variables.contains_key("global_critic.local.block6.expand.conv.weight"));
        assert!(!variables.keys().any(|name| name.contains("block3") || name.contains("conv1")));
    }

    #[test]
    fn local_scores_are_dot_products_of_the_embedded_vectors() {
        let store = nn::VarStore::new(Device::Cpu);
        let critic = LocalCritic::new(&store.root(), 4, 3, 8);
        let local = Tensor::randn([2, 4, 2, 1], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([2, 3], (Kind::Float, Device::Cpu));
        let scores = critic.scores(&local, &y, false);
        // Location l = 1 of image j = 0, against Y of image i = 1, computed directly.
        let column = local.select(0, 0).select(1, 1).select(1, 0).unsqueeze(0); // [1, 4]
        let psi = critic.local_block.forward(&column, false);
        let phi = critic.global_block.forward(&y.select(0, 1).unsqueeze(0), false);
        let direct = (psi * phi).sum(Kind::Float).double_value(&[]);
        assert!((scores.double_value(&[1, 0, 1]) - direct).abs() < 1e-4);
    }

    #[test]
    fn the_shortcut_starts_near_identity() {
        let store = nn::VarStore::new(Device::Cpu);
        let _critic = LocalCritic::new(&store.root(), 4, 3, 8);
        let weight = &store.variables()["local_critic.local.shortcut.weight"];
        assert_eq!(weight.size(), [8, 4]);
        let off_identity = weight - Tensor::eye_m(8, 4, (Kind::Float, Device::Cpu));
        assert!(off_identity.abs().max().double_value(&[]) <= 0.01);
        assert_eq!(weight.double_value(&[2, 2]), 1.0);
    }
}
