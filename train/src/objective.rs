//! The DIM objective: the encoder with its critics and prior discriminator, and the loss
//! `α·global + β·local + γ·prior` for the encoder side.

use crate::critics::{GlobalCritic, LocalCritic};
use crate::encoder::Encoder;
use crate::estimators::{Estimator, MiEstimate};
use crate::prior::Discriminator;
use dim_models::EncoderConfig;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

/// The paper's named weightings of the three terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Local MI only, with a light prior: α = 0, β = 1, γ = 0.1 (the paper's best).
    DimL,
    /// Global MI with the prior: α = 1, β = 0, γ = 1.
    DimG,
}

/// Weights of the global MI, local MI and prior terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveWeights {
    /// α, weight of the global MI loss.
    pub alpha: f64,
    /// β, weight of the local MI loss.
    pub beta: f64,
    /// γ, weight of the prior-matching (generator) loss.
    pub gamma: f64,
}

impl Mode {
    /// The mode's weights.
    pub fn weights(self) -> ObjectiveWeights {
        match self {
            Mode::DimL => ObjectiveWeights { alpha: 0.0, beta: 1.0, gamma: 0.1 },
            Mode::DimG => ObjectiveWeights { alpha: 1.0, beta: 0.0, gamma: 1.0 },
        }
    }
}

/// The encoder side's loss for one batch and its parts (scalars).
#[derive(Debug)]
pub struct EncoderLoss {
    /// `α·global + β·local + γ·generator`, to minimise over the encoder and critics.
    pub total: Tensor,
    /// The global critic's estimate when α > 0.
    pub global: Option<MiEstimate>,
    /// The local critic's estimate when β > 0.
    pub local: Option<MiEstimate>,
    /// The generator loss when γ > 0.
    pub prior: Option<Tensor>,
    /// The batch's Y, for the discriminator's step.
    pub y: Tensor,
}

/// The encoder with the critics and discriminator its objective needs (a term with weight 0
/// gets no module, so it costs nothing).
#[derive(Debug)]
pub struct DimModel {
    /// The encoder being learned.
    pub encoder: Encoder,
    /// Local critic, when β > 0.
    pub local_critic: Option<LocalCritic>,
    /// Global critic, when α > 0.
    pub global_critic: Option<GlobalCritic>,
    /// Prior discriminator, when γ > 0.
    pub discriminator: Option<Discriminator>,
    weights: ObjectiveWeights,
    estimator: Estimator,
}

impl DimModel {
    /// Creates every module's variables under `root`.
    pub fn new(
        root: &nn::Path,
        config: EncoderConfig,
        weights: ObjectiveWeights,
        estimator: Estimator,
        critic_width: usize,
    ) -> Self {
        let dims = config.tap_dims();
        DimModel {
            encoder: Encoder::new(root, config),
            local_critic: (weights.beta != 0.0)
                .then(|| LocalCritic::new(root, dims.local[0], dims.y, critic_width)),
            global_critic: (weights.alpha != 0.0).then(|| GlobalCritic::new(root, &config, critic_width)),
            discriminator: (weights.gamma != 0.0).then(|| Discriminator::new(root, dims.y)),
            weights,
            estimator,
        }
    }

    /// The encoder side's loss on images `[N, C, H, W]` in [0, 1] (training mode).
    pub fn encoder_loss(&self, images: &Tensor) -> EncoderLoss {
        let taps = self.encoder.forward_taps(images, true);
        let mut total = Tensor::zeros([], (Kind::Float, images.device()));
        let global = self.global_critic.as_ref().map(|critic| {
            let estimate = self.estimator.estimate(&critic.scores(&taps.local, &taps.y, true));
            total += &estimate.loss * self.weights.alpha;
            estimate
        });
        let local = self.local_critic.as_ref().map(|critic| {
            let estimate = self.estimator.estimate(&critic.scores(&taps.local, &taps.y, true));
            total += &estimate.loss * self.weights.beta;
            estimate
        });
        let prior = self.discriminator.as_ref().map(|discriminator| {
            let loss = discriminator.generator_loss(&taps.y);
            total += &loss * self.weights.gamma;
            loss
        });
        EncoderLoss { total, global, local, prior, y: taps.y }
    }
}
