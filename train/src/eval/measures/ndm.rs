//! The neural dependency measure (NDM) of a representation: how far its factors are from
//! independent. A discriminator learns to tell frozen features Y from Y with every dimension
//! shuffled independently across the batch (a sample of the product of Y's marginals); its
//! Donsker–Varadhan estimate of KL(P(Y) ‖ Π_k P(Y_k)), the total correlation, is the measure.
//!
//! As in the official DIM evaluation, the discriminator is Linear(D→1000)-ReLU-Linear(1000→200)-
//! ReLU-Linear(200→1), trained on the f-divergence form of the KL divergence
//! (`E_P[T] − E_Q[exp(T − 1)]`), and the DV form (`E_P[T] − log E_Q[exp T]`) is reported.

use super::{MeasureError, MeasureSchedule, MeasureScore, TapData, ensure_finite, forward_in_chunks};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

/// Hidden widths of the official NDM discriminator.
pub const HIDDEN_UNITS: [i64; 2] = [1000, 200];

/// What the JSON records about how the measure is computed.
pub const METHOD: &str = "The official NDM evaluation: a discriminator Linear(D -> 1000)-ReLU-Linear(1000 -> 200)-\
     ReLU-Linear(200 -> 1) is trained with Adam on the f-divergence (KL) objective E_P[T] - E_Q[exp(T - 1)], where P \
     is a batch of the train split's frozen features (standardised per dimension, which leaves the total correlation unchanged) and Q the same batch with every dimension permuted \
     independently. The reported NDM is the Donsker-Varadhan estimate E_P[T] - log E_Q[exp T] on the test split \
     (all of it as P, one seeded per-dimension shuffle of it as Q), as the official code reports; the KL form on \
     the test split is given beside it. The official run uses batches of 10,000 and lr 1e-4 with drops x0.1 at \
     epochs 500 and 750; the learning rate here is constant.";

/// Discriminator training options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NdmOptions {
    /// The discriminator's schedule (official: batch 10,000, lr 1e-4).
    pub schedule: MeasureSchedule,
}

/// The discriminator's estimates, in nats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NdmScore {
    /// The DV estimate on the test split: the NDM.
    pub ndm: f64,
    /// The f-divergence (KL) estimate on the test split, the objective the discriminator trains on.
    pub kl: f64,
    /// The DV estimate on as many train examples, for comparison (a much higher value means the
    /// discriminator overfits).
    pub train_ndm: f64,
}

impl MeasureScore for NdmScore {
    fn columns() -> &'static [&'static str] {
        &["ndm (nats)", "kl", "train ndm"]
    }

    fn values(&self) -> Vec<f64> {
        vec![self.ndm, self.kl, self.train_ndm]
    }
}

/// `x` (`[N, D]`) with each column permuted by its own random permutation of the rows: samples
/// of the product of the columns' marginals. Seed tch first.
pub fn shuffle_each_dimension(x: &Tensor) -> Tensor {
    let order = Tensor::rand(x.size(), (Kind::Float, x.device())).argsort(0, false);
    x.gather(0, &order, false)
}

/// The discriminator.
#[derive(Debug)]
struct Discriminator {
    layers: [nn::Linear; 3],
}

impl Discriminator {
    fn new(root: &nn::Path, dims: i64) -> Self {
        let [first, second] = HIDDEN_UNITS;
        let linear = |name: &str, from, to| nn::linear(root / name, from, to, Default::default());
        Discriminator {
            layers: [
                linear("hidden1", dims, first),
                linear("hidden2", first, second),
                linear("output", second, 1),
            ],
        }
    }

    /// Scores `[N, D]` → `[N]`.
    fn forward(&self, x: &Tensor) -> Tensor {
        let [first, second, output] = &self.layers;
        x.apply(first).relu().apply(second).relu().apply(output).squeeze_dim(1)
    }
}

/// E_P[T] − E_Q[exp(T − 1)], the f-divergence lower bound on KL(P ‖ Q).
fn kl_bound(joint: &Tensor, shuffled: &Tensor) -> Tensor {
    joint.mean(Kind::Float) - (shuffled - 1.0).exp().mean(Kind::Float)
}

/// E_P[T] − log E_Q[exp T], the Donsker–Varadhan lower bound on KL(P ‖ Q).
fn dv_bound(joint: &Tensor, shuffled: &Tensor) -> Tensor {
    let rows = shuffled.size()[0] as f64;
    joint.mean(Kind::Float) - (shuffled.logsumexp([0], false) - rows.ln())
}

/// Trains the discriminator on `train` (`[N, D]`) and estimates the total correlation of `test`.
pub fn train_ndm(
    train: &Tensor,
    test: &Tensor,
    options: &NdmOptions,
    device: Device,
    progress: &indicatif::ProgressBar,
) -> Result<NdmScore, MeasureError> {
    if train.dim() != 2 || test.dim() != 2 || train.size()[1] != test.size()[1] {
        return Err(MeasureError::Shape(format!(
            "NDM needs [N, D] train and test features of one width, got {:?} and {:?}",
            train.size(),
            test.size()
        )));
    }
    if train.size()[1] < 2 {
        return Err(MeasureError::Shape("NDM needs at least 2 dimensions to shuffle".into()));
    }
    let rows = train.size()[0];
    let test_rows = test.size()[0];
    if test_rows < 2 {
        return Err(MeasureError::Shape("NDM needs at least 2 test rows".into()));
    }
    let schedule = &options.schedule;
    schedule.validate(rows as usize)?;
    tch::manual_seed(schedule.seed as i64);
    let store = nn::VarStore::new(device);
    let discriminator = Discriminator::new(&store.root(), train.size()[1]);
    let mut optimizer = schedule.optimizer(&store)?;
    schedule.for_each_batch(rows as usize, progress, |batch| {
        let joint = train.index_select(0, batch).to_device(device);
        let shuffled = shuffle_each_dimension(&joint);
        let loss = -kl_bound(&discriminator.forward(&joint), &discriminator.forward(&shuffled));
        ensure_finite(&loss, "the discriminator's KL bound")?;
        optimizer.backward_step(&loss);
        Ok(())
    })?;

    let score = |features: &Tensor| {
        let shuffled = shuffle_each_dimension(features);
        let joint = forward_in_chunks(features, device, |x| discriminator.forward(x));
        let shuffled = forward_in_chunks(&shuffled, device, |x| discriminator.forward(x));
        (dv_bound(&joint, &shuffled).double_value(&[]), kl_bound(&joint, &shuffled).double_value(&[]))
    };
    // A seed of its own for the held-out shuffles, so that they do not depend on the step count.
    tch::manual_seed(schedule.seed.wrapping_add(1) as i64);
    let (ndm, kl) = score(test);
    let (train_ndm, _) = score(&train.narrow(0, 0, test_rows.min(rows)));
    Ok(NdmScore { ndm, kl, train_ndm })
}

/// NDM of a model's frozen tap features.
pub fn feature_ndm_score(
    data: &TapData<'_>,
    options: &NdmOptions,
    device: Device,
    progress: &indicatif::ProgressBar,
) -> Result<NdmScore, MeasureError> {
    train_ndm(&data.train_features, &data.test_features, options, device, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(features: impl Fn(i64) -> Tensor) -> NdmScore {
        crate::eval::measures::tests::single_threaded();
        tch::manual_seed(5);
        let (train, test) = (features(2000), features(1000));
        let options = NdmOptions {
            schedule: MeasureSchedule { steps: 200, batch_size: 512, learning_rate: 1e-4, seed: 2 },
        };
        train_ndm(&train, &test, &options, Device::Cpu, &indicatif::ProgressBar::hidden()).unwrap()
    }

    fn gaussian(rows: i64) -> Tensor {
        Tensor::randn([rows, 4], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn independent_factors_score_about_zero() {
        let independent = estimate(gaussian);
        assert!(independent.ndm.abs() < 0.05, "{independent:?}");
    }

    #[test]
    fn a_duplicated_factor_scores_well_above_zero() {
        // The first factor repeated as the second: Y lies on the plane y0 = y1, which the
        // shuffled samples almost never do.
        let duplicated = estimate(|rows| {
            let factors = gaussian(rows);
            Tensor::cat(&[factors.narrow(1, 0, 1), factors.narrow(1, 0, 3)], 1)
        });
        assert!(duplicated.ndm > 0.5, "{duplicated:?}");
    }

    #[test]
    fn shuffling_keeps_each_column_s_values_and_breaks_their_pairing() {
        tch::manual_seed(0);
        let column = Tensor::arange(1000, (Kind::Float, Device::Cpu)).unsqueeze(1);
        let x = Tensor::cat(&[&column, &column], 1);
        let shuffled = shuffle_each_dimension(&x);
        for k in 0..2 {
            let sorted = shuffled.select(1, k).sort(0, false).0;
            assert!(sorted.equal(&column.squeeze_dim(1)), "column {k} lost values");
        }
        let still_paired =
            shuffled.select(1, 0).eq_tensor(&shuffled.select(1, 1)).sum(Kind::Int64).int64_value(&[]);
        assert!(still_paired < 10, "{still_paired} rows kept their pairing");
    }

    #[test]
    fn the_bounds_match_a_hand_computation() {
        // T(P) = {1, 3}, T(Q) = {0, 1}: KL form 2 − (e⁻¹ + 1)/2 = 1.3160603;
        // DV form 2 − ln((1 + e)/2) = 1.3798855.
        let joint = Tensor::from_slice(&[1.0f32, 3.0]);
        let shuffled = Tensor::from_slice(&[0.0f32, 1.0]);
        assert!((kl_bound(&joint, &shuffled).double_value(&[]) - 1.3160603).abs() < 1e-6);
        assert!((dv_bound(&joint, &shuffled).double_value(&[]) - 1.3798855).abs() < 1e-6);
    }
}
