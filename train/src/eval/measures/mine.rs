//! A MINE estimate of the mutual information I(X; Y) between images X and a frozen tap Y: a
//! Donsker–Varadhan critic trained after the fact (the encoder stays fixed), reporting the DV
//! lower bound on held-out pairs.
//!
//! The critic is separable, T(x, y) = ⟨φ(x), ψ(y)⟩ ("encode and dot", as DIM's own critics):
//! φ is a freshly initialised encoder of the checkpoint's preset followed by a linear layer (or an
//! MLP when X is a vector), ψ an MLP. One batch then scores every x against every y, and the DV
//! estimator of [`crate::model::estimators`] takes the diagonal as samples of the joint and the rest as
//! samples of the product of marginals.

use super::{MeasureError, MeasureSchedule, MeasureScore, TapData, ensure_finite, forward_in_chunks};
use crate::model::encoder::Encoder;
use crate::model::estimators::Estimator;
use dim_models::EncoderConfig;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

/// What the JSON records about how the measure is computed.
pub const METHOD: &str = "MINE without the moving-average gradient correction: a separable critic \
     T(x, y) = <phi(x), psi(y)> is trained with Adam, on features standardised with the train split's per-dimension mean and std (which leaves I(X; Y) unchanged), to maximise the Donsker-Varadhan bound \
     E_joint[T] - log E_marginals[exp T] on the train split, where each batch pairs every image with every \
     other image's features as marginal samples. phi is a freshly initialised encoder of the checkpoint's \
     preset (its Y output) followed by Linear(64 -> units); psi is Linear-ReLU-Linear-ReLU-Linear with units \
     hidden and output units. The reported value is the DV bound on the test split with every pair of \
     distinct test examples as a marginal sample. The encoder under test is frozen; the DIM repository has no \
     MINE evaluation to follow, so the critic's architecture is this toolkit's choice.";

/// Critic and training options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MineOptions {
    /// The critic's schedule.
    pub schedule: MeasureSchedule,
    /// Width of the critic's hidden layers and of the embeddings it dots.
    pub units: usize,
}

/// The DV bound, in nats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MineScore {
    /// On the test split: the estimate of I(X; Y).
    pub mi: f64,
    /// On as many train examples, for comparison (a much higher value means the critic overfits).
    pub train_mi: f64,
}

impl MeasureScore for MineScore {
    fn columns() -> &'static [&'static str] {
        &["mi (nats)", "train mi"]
    }

    fn values(&self) -> Vec<f64> {
        vec![self.mi, self.train_mi]
    }
}

/// What X is, and so which network embeds it.
#[derive(Debug, Clone, Copy)]
pub enum CriticInput {
    /// Images of an encoder preset's input shape: embedded by a fresh encoder of that preset.
    Images(EncoderConfig),
    /// `[N, D]` vectors: embedded by an MLP.
    Vectors,
}

/// Linear → ReLU → Linear → ReLU → Linear.
#[derive(Debug)]
struct Mlp {
    layers: [nn::Linear; 3],
}

impl Mlp {
    fn new(root: &nn::Path, dims: i64, units: i64) -> Self {
        let linear = |name: &str, from| nn::linear(root / name, from, units, Default::default());
        Mlp { layers: [linear("hidden1", dims), linear("hidden2", units), linear("output", units)] }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let [first, second, output] = &self.layers;
        x.apply(first).relu().apply(second).relu().apply(output)
    }
}

/// φ, the critic's embedding of X.
#[derive(Debug)]
enum XEmbedding {
    Images { encoder: Encoder, output: nn::Linear },
    Vectors(Mlp),
}

impl XEmbedding {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            XEmbedding::Images { encoder, output } => encoder.forward_taps(x, train).y.apply(output),
            XEmbedding::Vectors(mlp) => mlp.forward(x),
        }
    }
}

/// The DV bound over all pairs of two embedded sets: the mean diagonal score minus the log of the
/// mean exponentiated off-diagonal score (in row chunks, so N² scores never sit in memory).
fn dv_bound_of_all_pairs(x_embedded: &Tensor, y_embedded: &Tensor) -> f64 {
    let rows = x_embedded.size()[0];
    let joint = (x_embedded * y_embedded).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float);
    let mut chunk_lse = Vec::new();
    let mut start = 0;
    while start < rows {
        let len = super::SCORING_CHUNK.min(rows - start);
        let scores = x_embedded.narrow(0, start, len).matmul(&y_embedded.transpose(0, 1));
        let own = Tensor::arange_start(start, start + len, (Kind::Int64, scores.device())).unsqueeze(1);
        let diagonal = Tensor::zeros_like(&scores).to_kind(Kind::Bool).scatter_value(1, &own, 1);
        chunk_lse.push(scores.masked_fill(&diagonal, f64::NEG_INFINITY).flatten(0, -1).logsumexp([0], true));
        start += len;
    }
    let marginal = Tensor::cat(&chunk_lse, 0).logsumexp([0], false) - ((rows * (rows - 1)) as f64).ln();
    (joint - marginal).double_value(&[])
}

/// Trains a DV critic on paired `train_x`, `train_y` and returns its bound on the test pairs.
pub fn train_mine(
    (train_x, train_y): (&Tensor, &Tensor),
    (test_x, test_y): (&Tensor, &Tensor),
    input: CriticInput,
    options: &MineOptions,
    device: Device,
    progress: &indicatif::ProgressBar,
) -> Result<MineScore, MeasureError> {
    let rows = train_x.size()[0];
    let test_rows = test_x.size()[0];
    if train_y.size()[0] != rows || test_y.size()[0] != test_rows || train_y.dim() != 2 || test_y.dim() != 2 {
        return Err(MeasureError::Shape("X and Y must pair row for row, and Y be [N, D]".into()));
    }
    if test_rows < 2 {
        return Err(MeasureError::Shape("the DV bound needs at least 2 test pairs".into()));
    }
    if options.units == 0 {
        return Err(MeasureError::Option("the critic needs at least 1 unit".into()));
    }
    let schedule = &options.schedule;
    schedule.validate(rows as usize)?;
    tch::manual_seed(schedule.seed as i64);
    let store = nn::VarStore::new(device);
    let root = store.root();
    let units = options.units as i64;
    let x_embedding = match input {
        CriticInput::Images(config) => {
            let encoder = Encoder::new(&(&root / "x"), config);
            let output =
                nn::linear(&root / "x_output", config.tap_dims().y as i64, units, Default::default());
            XEmbedding::Images { encoder, output }
        }
        CriticInput::Vectors => {
            if train_x.dim() != 2 {
                return Err(MeasureError::Shape(format!(
                    "vector X must be [N, D], got {:?}",
                    train_x.size()
                )));
            }
            XEmbedding::Vectors(Mlp::new(&(&root / "x"), train_x.size()[1], units))
        }
    };
    let y_mlp = Mlp::new(&(&root / "y"), train_y.size()[1], units);
    // Dividing the dot product by √units keeps the initial scores near 1 whatever the width; the
    // DV bound's exponential diverges from the scores of hundreds a raw dot product starts at.
    let score_scale = 1.0 / (units as f64).sqrt();
    let y_embedding = |y: &Tensor| y_mlp.forward(y) * score_scale;
    let mut optimizer = schedule.optimizer(&store)?;
    schedule.for_each_batch(rows as usize, progress, |batch| {
        let x = x_embedding.forward_t(&train_x.index_select(0, batch).to_device(device), true);
        let y = y_embedding(&train_y.index_select(0, batch).to_device(device));
        let scores = x.matmul(&y.transpose(0, 1)).unsqueeze(-1);
        let loss = Estimator::Dv.estimate(&scores).loss;
        ensure_finite(&loss, "the critic's DV bound")?;
        optimizer.backward_step(&loss);
        Ok(())
    })?;

    let bound = |x: &Tensor, y: &Tensor| {
        let x_embedded = forward_in_chunks(x, device, |x| x_embedding.forward_t(x, false));
        let y_embedded = forward_in_chunks(y, device, |y| y_embedding(y));
        let _guard = tch::no_grad_guard();
        dv_bound_of_all_pairs(&x_embedded, &y_embedded)
    };
    let compared = test_rows.min(rows);
    Ok(MineScore {
        mi: bound(test_x, test_y),
        train_mi: bound(&train_x.narrow(0, 0, compared), &train_y.narrow(0, 0, compared)),
    })
}

/// MINE between a model's input images and its frozen tap features; the critic's image network
/// is an encoder of the checkpoint's preset.
pub fn image_mine_score(
    data: &TapData<'_>,
    options: &MineOptions,
    device: Device,
    progress: &indicatif::ProgressBar,
) -> Result<MineScore, MeasureError> {
    train_mine(
        (data.train_images, &data.train_features),
        (data.test_images, &data.test_features),
        CriticInput::Images(data.encoder),
        options,
        device,
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rows` pairs of `dims`-dimensional Gaussians, coordinate k of X correlated with
    /// coordinate k of Y by `rho` and independent of everything else.
    fn correlated_gaussians(rows: i64, dims: i64, rho: f64) -> (Tensor, Tensor) {
        let x = Tensor::randn([rows, dims], (Kind::Float, Device::Cpu));
        let noise = Tensor::randn([rows, dims], (Kind::Float, Device::Cpu));
        let y = &x * rho + noise * (1.0 - rho * rho).sqrt();
        (x, y)
    }

    fn estimate(rho: f64) -> MineScore {
        crate::eval::measures::tests::single_threaded();
        // Seeded numbers: no other test may draw from the generator while this one trains.
        let _turn = crate::torch_generator::exclusive();
        tch::manual_seed(21);
        let (train_x, train_y) = correlated_gaussians(4000, 2, rho);
        let (test_x, test_y) = correlated_gaussians(1000, 2, rho);
        let options = MineOptions {
            schedule: MeasureSchedule { steps: 400, batch_size: 256, learning_rate: 2e-3, seed: 1 },
            units: 64,
        };
        let hidden = indicatif::ProgressBar::hidden();
        train_mine(
            (&train_x, &train_y),
            (&test_x, &test_y),
            CriticInput::Vectors,
            &options,
            Device::Cpu,
            &hidden,
        )
        .unwrap()
    }

    #[test]
    fn recovers_the_mutual_information_of_correlated_gaussians() {
        // I = -1/2 · Σ_k log(1 - ρ²) = -log(1 - 0.64) = 1.0217 nats for two pairs at ρ = 0.8.
        let analytic = -(1.0f64 - 0.8 * 0.8).ln();
        let correlated = estimate(0.8);
        assert!((correlated.mi - analytic).abs() < 0.15, "{correlated:?} vs {analytic}");
        let independent = estimate(0.0);
        assert!(independent.mi.abs() < 0.05, "{independent:?}");
    }

    #[test]
    fn the_bound_over_all_pairs_matches_a_hand_computation() {
        // x·y scores: [[1, 0], [0, 2]] → joint mean 1.5, off-diagonal {0, 0} → log mean exp 0.
        let x = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let y = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        assert!((dv_bound_of_all_pairs(&x, &y) - 1.5).abs() < 1e-6);
        // Scores [[0, 1, 2], [1, 0, 0], [0, 0, 3]] → joint 1, marginal log((e+e²+e+1+1+1)/6).
        let x = Tensor::eye(3, (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0.0f32, 1.0, 0.0, 1.0, 0.0, 0.0, 2.0, 0.0, 3.0]).view([3, 3]);
        let e = std::f64::consts::E;
        let expected = 1.0 - ((2.0 * e + e * e + 3.0) / 6.0).ln();
        assert!((dv_bound_of_all_pairs(&x, &y) - expected).abs() < 1e-5, "{expected}");
    }
}
