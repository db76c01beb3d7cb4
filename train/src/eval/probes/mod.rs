//! Frozen-encoder probes: classifiers trained on features from the train split and scored on the
//! test split, to measure how much label information a representation exposes. Three kinds: a
//! linear probe ([`linear`]), the DIM paper's one-hidden-layer MLP probe ([`mlp`]) and cosine
//! k-nearest neighbours ([`knn`]).

pub mod knn;
pub mod linear;
pub mod mlp;

use crate::eval::features::standardise;
use serde::{Deserialize, Serialize};
use std::fmt;
use tch::{Device, Kind, Tensor};

/// Which classifier a probe trains.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// Multinomial logistic regression.
    Linear,
    /// One hidden layer of 200 units with BatchNorm, ReLU and dropout (the DIM paper's nonlinear
    /// probe), trained by a named protocol (fast or paper).
    Mlp,
    /// k-nearest neighbours by cosine similarity.
    Knn,
}

impl ProbeKind {
    /// The probe's name in tables, files and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Linear => "linear",
            ProbeKind::Mlp => "mlp",
            ProbeKind::Knn => "knn",
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a probe could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Features and labels disagree in shape, or a split is empty.
    #[error("bad probe input: {0}")]
    Shape(String),
    /// A label lies outside `0..num_classes`.
    #[error("label {label} is outside 0..{num_classes}")]
    Label {
        /// The offending label.
        label: i64,
        /// Number of classes.
        num_classes: usize,
    },
    /// An option is out of range (zero epochs, zero batch size, k = 0, ...).
    #[error("invalid probe option: {0}")]
    Option(String),
    /// libtorch reported an error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Train and test features with their labels, ready for any probe.
#[derive(Debug)]
pub struct ProbeData {
    /// `[N_train, D]` f32.
    pub train_features: Tensor,
    /// `[N_train]` i64 in `0..num_classes`.
    pub train_labels: Tensor,
    /// `[N_test, D]` f32.
    pub test_features: Tensor,
    /// `[N_test]` i64 in `0..num_classes`.
    pub test_labels: Tensor,
    /// Number of classes.
    pub num_classes: usize,
}

impl ProbeData {
    /// Checks shapes and label ranges and converts features to f32 and labels to i64.
    pub fn new(
        train_features: Tensor,
        train_labels: Tensor,
        test_features: Tensor,
        test_labels: Tensor,
        num_classes: usize,
    ) -> Result<Self, ProbeError> {
        let check = |name: &str, features: &Tensor, labels: &Tensor| -> Result<(), ProbeError> {
            let (f, l) = (features.size(), labels.size());
            if f.len() != 2 || l.len() != 1 || f[0] != l[0] {
                return Err(ProbeError::Shape(format!(
                    "{name} features {f:?} and labels {l:?} must be [N, D] and [N]"
                )));
            }
            if f[0] == 0 || f[1] == 0 {
                return Err(ProbeError::Shape(format!("{name} features {f:?} are empty")));
            }
            let (min, max) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
            for label in [min, max] {
                if label < 0 || label >= num_classes as i64 {
                    return Err(ProbeError::Label { label, num_classes });
                }
            }
            Ok(())
        };
        check("train", &train_features, &train_labels)?;
        check("test", &test_features, &test_labels)?;
        if train_features.size()[1] != test_features.size()[1] {
            return Err(ProbeError::Shape(format!(
                "train features have {} dims but test features have {}",
                train_features.size()[1],
                test_features.size()[1]
            )));
        }
        Ok(ProbeData {
            train_features: train_features.to_kind(Kind::Float),
            train_labels: train_labels.to_kind(Kind::Int64),
            test_features: test_features.to_kind(Kind::Float),
            test_labels: test_labels.to_kind(Kind::Int64),
            num_classes,
        })
    }

    /// Standardises both splits with the train split's per-dimension mean and standard deviation,
    /// so probe learning rates and k-NN similarities do not depend on each feature's scale.
    pub fn standardised(&self) -> Self {
        let (train_features, test_features) = standardise(&self.train_features, &self.test_features);
        ProbeData {
            train_features,
            train_labels: self.train_labels.shallow_clone(),
            test_features,
            test_labels: self.test_labels.shallow_clone(),
            num_classes: self.num_classes,
        }
    }

    /// Feature width D.
    pub fn dims(&self) -> usize {
        self.train_features.size()[1] as usize
    }

    /// Number of training examples.
    pub fn train_len(&self) -> usize {
        self.train_features.size()[0] as usize
    }
}

/// What a probe achieved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeScore {
    /// Accuracy on the test split, in [0, 1].
    pub test_accuracy: f64,
    /// Accuracy on the train split, for probes that are trained (None for k-NN).
    pub train_accuracy: Option<f64>,
}

/// Rows scored per forward pass when measuring accuracy, to bound memory.
const SCORING_CHUNK: i64 = 4096;

/// Fraction of rows of `features` whose arg-max under `logits_of` equals `labels`; runs on
/// `device` in chunks without gradients.
fn accuracy(
    features: &Tensor,
    labels: &Tensor,
    device: Device,
    logits_of: impl Fn(&Tensor) -> Tensor,
) -> f64 {
    let _guard = tch::no_grad_guard();
    let rows = features.size()[0];
    let mut correct = 0i64;
    let mut start = 0;
    while start < rows {
        let len = SCORING_CHUNK.min(rows - start);
        let x = features.narrow(0, start, len).to_device(device);
        let y = labels.narrow(0, start, len).to_device(device);
        let predicted = logits_of(&x).argmax(1, false);
        correct += predicted.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
        start += len;
    }
    correct as f64 / rows as f64
}

/// Epoch-based minibatch schedule shared by the trained probes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingSchedule {
    /// Passes over the training features.
    pub epochs: usize,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// L2 penalty added to the gradients by Adam.
    pub weight_decay: f64,
    /// Epochs (counted from 0) at whose start the learning rate is multiplied by 0.1.
    pub lr_drop_epochs: Vec<usize>,
    /// Seeds initialisation, shuffling and dropout.
    pub seed: u64,
}

impl TrainingSchedule {
    fn validate(&self) -> Result<(), ProbeError> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(ProbeError::Option("epochs and batch size must be at least 1".into()));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(ProbeError::Option(format!(
                "learning rate must be positive, got {}",
                self.learning_rate
            )));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(ProbeError::Option(format!("weight decay must be ≥ 0, got {}", self.weight_decay)));
        }
        Ok(())
    }

    /// Learning rate in force during `epoch`.
    fn learning_rate_at(&self, epoch: usize) -> f64 {
        let drops = self.lr_drop_epochs.iter().filter(|&&e| e <= epoch).count();
        self.learning_rate * 0.1f64.powi(drops as i32)
    }

    /// Runs the schedule: each epoch shuffles the training rows and calls `step` on every
    /// minibatch (features and labels on `device`), then reports to `progress`.
    fn run(
        &self,
        data: &ProbeData,
        device: Device,
        optimizer: &mut tch::nn::Optimizer,
        progress: &indicatif::ProgressBar,
        step: impl Fn(&Tensor, &Tensor) -> Tensor,
    ) {
        let rows = data.train_len() as i64;
        let batch = self.batch_size as i64;
        progress.set_length(self.epochs as u64);
        for epoch in 0..self.epochs {
            optimizer.set_lr(self.learning_rate_at(epoch));
            let order = Tensor::randperm(rows, (Kind::Int64, Device::Cpu));
            let mut start = 0;
            while start < rows {
                let len = batch.min(rows - start);
                // A final batch of one row would break BatchNorm's batch statistics.
                if len < 2 && start > 0 {
                    break;
                }
                let rows_taken = order.narrow(0, start, len);
                let x = data.train_features.index_select(0, &rows_taken).to_device(device);
                let y = data.train_labels.index_select(0, &rows_taken).to_device(device);
                optimizer.backward_step(&step(&x, &y));
                start += len;
            }
            progress.inc(1);
        }
    }
}

#[cfg(test)]
pub(crate) mod test_data {
    //! Generated feature sets shared by the probe tests.

    use super::ProbeData;
    use tch::{Kind, Tensor};

    /// Two Gaussian blobs per class in `dims` dimensions, far apart along the first axis.
    pub fn separable(rows: i64, dims: i64, seed: i64) -> (Tensor, Tensor) {
        tch::manual_seed(seed);
        let labels = Tensor::randint(2, [rows], (Kind::Int64, tch::Device::Cpu));
        let features = Tensor::randn([rows, dims], (Kind::Float, tch::Device::Cpu));
        let shift = (labels.to_kind(Kind::Float) * 2.0 - 1.0) * 3.0;
        let _ = features.narrow(1, 0, 1).g_add_(&shift.unsqueeze(1));
        (features, labels)
    }

    /// Points in the square [−1, 1]² labelled by the XOR of their coordinates' signs.
    pub fn xor(rows: i64, seed: i64) -> (Tensor, Tensor) {
        tch::manual_seed(seed);
        let features = Tensor::rand([rows, 2], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
        let positive = features.gt(0.0).to_kind(Kind::Int64);
        let labels = (positive.select(1, 0) + positive.select(1, 1)).remainder(2);
        (features, labels)
    }

    /// Builds probe data from two generated splits.
    pub fn probe_data(train: (Tensor, Tensor), test: (Tensor, Tensor), classes: usize) -> ProbeData {
        ProbeData::new(train.0, train.1, test.0, test.1, classes).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardising_uses_train_statistics_and_leaves_constant_features_at_zero() {
        let train = Tensor::from_slice2(&[[1.0f32, 5.0], [3.0, 5.0]]);
        let test = Tensor::from_slice2(&[[2.0f32, 5.0], [5.0, 7.0]]);
        let labels = Tensor::from_slice(&[0i64, 1]);
        let data = ProbeData::new(train, labels.shallow_clone(), test, labels, 2).unwrap().standardised();
        let got: Vec<f32> = data.test_features.flatten(0, -1).try_into().unwrap();
        assert_eq!(got, vec![0.0, 0.0, 3.0, 2.0]);
    }

    #[test]
    fn mismatched_shapes_and_labels_out_of_range_are_refused() {
        let x = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
        let short = Tensor::from_slice(&[0i64, 1]);
        let bad = Tensor::from_slice(&[0i64, 1, 5]);
        let good = Tensor::from_slice(&[0i64, 1, 1]);
        let err = ProbeData::new(x.copy(), short, x.copy(), good.copy(), 2).unwrap_err();
        assert!(matches!(err, ProbeError::Shape(_)), "{err}");
        let err = ProbeData::new(x.copy(), bad, x.copy(), good, 2).unwrap_err();
        assert!(matches!(err, ProbeError::Label { label: 5, num_classes: 2 }), "{err}");
    }

    #[test]
    fn learning_rate_drops_tenfold_at_each_listed_epoch() {
        let schedule = TrainingSchedule {
            epochs: 10,
            batch_size: 8,
            learning_rate: 1.0,
            weight_decay: 0.0,
            lr_drop_epochs: vec![3, 6],
            seed: 0,
        };
        let rates: Vec<f64> = [0, 2, 3, 5, 6, 9].map(|e| schedule.learning_rate_at(e)).to_vec();
        let expected = [1.0, 1.0, 0.1, 0.1, 0.01, 0.01];
        for (got, want) in rates.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{rates:?}");
        }
    }
}
