//! Adversarial prior matching: a discriminator tells `sigmoid(Y)` from samples of the uniform
//! prior on [0, 1]^64. The discriminator is trained on its own loss (GAN loss plus a gradient
//! penalty) with its own optimiser and step; the encoder only receives the non-saturating
//! generator loss.

use tch::{Kind, Tensor, nn, nn::Module};

/// Variable prefix of the discriminator.
pub const PRIOR_PREFIX: &str = "prior";
/// Weight of the discriminator's gradient penalty (the official value).
pub const GRADIENT_PENALTY_WEIGHT: f64 = 1.0;

/// The prior discriminator: FC1000 → ReLU → FC200 → ReLU → FC1.
#[derive(Debug)]
pub struct Discriminator {
    layers: nn::Sequential,
}

/// The discriminator's loss and its parts.
#[derive(Debug)]
pub struct DiscriminatorLoss {
    /// GAN loss + penalty, to minimise over the discriminator's variables.
    pub total: Tensor,
    /// Zero-centred gradient penalty on prior and encoded samples.
    pub penalty: Tensor,
}

impl Discriminator {
    /// Creates the discriminator under `root / "prior"` for vectors of width `y_dim`.
    pub fn new(root: &nn::Path, y_dim: usize) -> Self {
        let path = root / PRIOR_PREFIX;
        let layers = nn::seq()
            .add(nn::linear(&path / "fc1", y_dim as i64, 1000, Default::default()))
            .add_fn(Tensor::relu)
            .add(nn::linear(&path / "fc2", 1000, 200, Default::default()))
            .add_fn(Tensor::relu)
            .add(nn::linear(&path / "fc3", 200, 1, Default::default()));
        Discriminator { layers }
    }

    /// Logits `[N]` that each row of `samples` `[N, Y]` comes from the prior.
    pub fn logits(&self, samples: &Tensor) -> Tensor {
        self.layers.forward(samples).squeeze_dim(1)
    }

    /// The encoder's non-saturating generator loss `−log σ(D(sigmoid(Y)))` (mean). The caller
    /// minimises it over the encoder's variables only (`Adam::minimise` computes no gradients
    /// for the discriminator's).
    pub fn generator_loss(&self, y: &Tensor) -> Tensor {
        self.logits(&y.sigmoid()).neg().softplus().mean(Kind::Float)
    }

    /// The discriminator's loss on a batch of encoder outputs `y` (detached here, so the encoder
    /// is untouched): `softplus(−D(prior)) + softplus(D(sigmoid(Y)))` plus the gradient penalty
    /// `mean ‖∇ₓD(x)‖²` at both kinds of sample. Prior samples come from torch's generator, so
    /// seeding torch makes them reproducible.
    pub fn discriminator_loss(&self, y: &Tensor) -> DiscriminatorLoss {
        let encoded = y.detach().sigmoid().set_requires_grad(true);
        let prior = Tensor::rand(encoded.size(), (Kind::Float, encoded.device())).set_requires_grad(true);
        let prior_logits = self.logits(&prior);
        let encoded_logits = self.logits(&encoded);
        let gan =
            prior_logits.neg().softplus().mean(Kind::Float) + encoded_logits.softplus().mean(Kind::Float);
        // create_graph so the penalty itself can be differentiated w.r.t. the discriminator.
        let gradients = Tensor::run_backward(
            &[prior_logits.sum(Kind::Float), encoded_logits.sum(Kind::Float)],
            &[&prior, &encoded],
            true,
            true,
        );
        let penalty = gradients
            .iter()
            .map(|g| g.square().sum_dim_intlist([1].as_slice(), false, Kind::Float).mean(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, encoded.device())), |sum, p| sum + p)
            / gradients.len() as f64;
        DiscriminatorLoss { total: gan + &penalty * GRADIENT_PENALTY_WEIGHT, penalty }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn the_discriminator_loss_reaches_only_the_discriminator_and_includes_the_penalty() {
        let store = nn::VarStore::new(Device::Cpu);
        let discriminator = Discriminator::new(&store.root(), 64);
        let source = Tensor::randn([8, 64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = &source * 2.0;
        let loss = discriminator.discriminator_loss(&y);
        assert!(loss.penalty.double_value(&[]) > 0.0);
        loss.total.backward();
        assert!(!source.grad().defined(), "the encoder side must get no gradient");
        let weight = &store.variables()["prior.fc1.weight"];
        assert!(weight.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert_eq!(store.variables().len(), 6);
        assert!(store.variables().keys().all(|name| name.starts_with("prior.")));
    }

    #[test]
    fn the_generator_loss_pushes_encodings_towards_what_the_discriminator_calls_prior() {
        let store = nn::VarStore::new(Device::Cpu);
        let discriminator = Discriminator::new(&store.root(), 64);
        let y = Tensor::randn([4, 64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let before = discriminator.logits(&y.sigmoid()).mean(Kind::Float).double_value(&[]);
        discriminator.generator_loss(&y).backward();
        let moved = tch::no_grad(|| &y - y.grad() * 10.0);
        let after = discriminator.logits(&moved.sigmoid()).mean(Kind::Float).double_value(&[]);
        assert!(after > before, "{before} → {after}");
    }
}
