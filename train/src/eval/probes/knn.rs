//! k-nearest-neighbour probe: cosine similarity between L2-normalised features, each test row
//! voting among its k most similar training rows. Similarities are computed a chunk of test rows
//! at a time, so 10,000 × 60,000 × 4,096 needs only one chunk's similarity matrix in memory.

use super::{ProbeData, ProbeError, ProbeScore};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// How the k neighbours' labels are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Vote {
    /// Each neighbour counts once; ties go to the class with the larger summed similarity.
    Majority,
    /// Each neighbour counts with its cosine similarity.
    Weighted,
}

/// k-NN settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnOptions {
    /// Neighbours consulted per test row.
    pub k: usize,
    /// How their labels are combined.
    pub vote: Vote,
    /// Test rows per similarity chunk.
    pub chunk_rows: usize,
}

impl Default for KnnOptions {
    fn default() -> Self {
        KnnOptions { k: 20, vote: Vote::Majority, chunk_rows: 256 }
    }
}

/// Scores the test split by k-NN against the train split (k-NN is not trained, so there is no
/// train accuracy).
pub fn knn_probe(
    data: &ProbeData,
    options: &KnnOptions,
    device: Device,
    progress: &indicatif::ProgressBar,
) -> Result<ProbeScore, ProbeError> {
    if options.k == 0 || options.chunk_rows == 0 {
        return Err(ProbeError::Option("k and the chunk size must be at least 1".into()));
    }
    let _guard = tch::no_grad_guard();
    let train_rows = data.train_len();
    let k = options.k.min(train_rows) as i64;
    let train = l2_normalised(&data.train_features.to_device(device));
    let train_labels = data.train_labels.to_device(device);
    let classes = data.num_classes as i64;
    let test_rows = data.test_features.size()[0];
    let chunk = options.chunk_rows as i64;
    progress.set_length(test_rows as u64);
    let mut correct = 0i64;
    let mut start = 0;
    while start < test_rows {
        let len = chunk.min(test_rows - start);
        let queries = l2_normalised(&data.test_features.narrow(0, start, len).to_device(device));
        let similarities = queries.matmul(&train.transpose(0, 1));
        let (top, neighbours) = similarities.topk(k, 1, true, true);
        let neighbour_labels = train_labels.index_select(0, &neighbours.flatten(0, -1)).view([len, k]);
        let weights = match options.vote {
            // The similarity term sums to less than 1/4 over all k neighbours, so it can only
            // separate classes with equal counts.
            Vote::Majority => top.ones_like() + &top / (4 * k) as f64,
            Vote::Weighted => top,
        };
        let votes =
            Tensor::zeros([len, classes], (Kind::Float, device)).scatter_add(1, &neighbour_labels, &weights);
        let predicted = votes.argmax(1, false);
        let truth = data.test_labels.narrow(0, start, len).to_device(device);
        correct += predicted.eq_tensor(&truth).sum(Kind::Int64).int64_value(&[]);
        start += len;
        progress.inc(len as u64);
    }
    Ok(ProbeScore { test_accuracy: correct as f64 / test_rows as f64, train_accuracy: None })
}

/// Rows scaled to unit length; all-zero rows stay zero.
fn l2_normalised(x: &Tensor) -> Tensor {
    let norms = x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
    x / norms
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four training points in known directions and two queries whose neighbours can be worked
    /// out by hand (cosines after normalisation are in the comments of the test below).
    fn hand_checked(k: usize, vote: Vote) -> f64 {
        let train = Tensor::from_slice2(&[
            [1.0f32, 0.0], // class 0, east
            [0.9, 0.3],    // class 0, east-north-east
            [0.0, 2.0],    // class 1, north (length does not matter for cosine)
            [-1.0, 0.1],   // class 2, west
        ]);
        let train_labels = Tensor::from_slice(&[0i64, 0, 1, 2]);
        let test = Tensor::from_slice2(&[[0.2f32, 1.0], [-1.0, -0.2]]);
        let test_labels = Tensor::from_slice(&[1i64, 2]);
        let data = ProbeData::new(train, train_labels, test, test_labels, 3).unwrap();
        let options = KnnOptions { k, vote, chunk_rows: 1 };
        knn_probe(&data, &options, Device::Cpu, &indicatif::ProgressBar::hidden()).unwrap().test_accuracy
    }

    #[test]
    fn neighbours_vote_as_worked_out_by_hand() {
        // Query 1 (class 1) cosines: north 0.98, ENE 0.50, east 0.20, west −0.10.
        // Query 2 (class 2) cosines: west 0.96, north −0.20, east −0.98, ENE −0.99.
        // k = 1: north → 1 (right); west → 2 (right).
        assert_eq!(hand_checked(1, Vote::Majority), 1.0);
        // k = 3: query 1 gets classes 1, 0, 0 → 0 (wrong); query 2 gets 2, 1, 0, a three-way tie
        // that goes to the most similar class, 2 (right).
        assert_eq!(hand_checked(3, Vote::Majority), 0.5);
        // Weighted k = 3: query 1 has class 1 at 0.98 against class 0 at 0.50 + 0.20 → 1 (right);
        // query 2 has class 2 at 0.96 → 2 (right).
        assert_eq!(hand_checked(3, Vote::Weighted), 1.0);
        // k beyond the training set uses all four rows: class 0 has two votes in both queries.
        assert_eq!(hand_checked(10, Vote::Majority), 0.0);
    }

    #[test]
    fn k_of_zero_is_refused() {
        let x = Tensor::from_slice2(&[[1.0f32, 0.0]]);
        let y = Tensor::from_slice(&[0i64]);
        let data = ProbeData::new(x.copy(), y.copy(), x, y, 1).unwrap();
        let options = KnnOptions { k: 0, ..Default::default() };
        assert!(knn_probe(&data, &options, Device::Cpu, &indicatif::ProgressBar::hidden()).is_err());
    }
}
