//! Mutual-information estimators on critic scores (JSD, infoNCE, Donsker–Varadhan), exactly as the
//! DIM paper and its official code define them.
//!
//! Every estimator takes scores `u` of shape `[N, N, L]`: `u[i, j, l]` scores the global vector of
//! image `i` against location `l` of image `j`'s local map. Positive pairs are `j = i`; negatives
//! are every `j ≠ i` at every location.

use serde::{Deserialize, Serialize};
use std::f64::consts::LN_2;
use tch::{Kind, Tensor};

/// Which lower bound on mutual information is maximised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    /// Jensen–Shannon divergence (the official default).
    Jsd,
    /// infoNCE (noise-contrastive estimation).
    Nce,
    /// Donsker–Varadhan representation of the KL divergence (MINE-style).
    Dv,
}

impl Estimator {
    /// The estimator's name on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Estimator::Jsd => "jsd",
            Estimator::Nce => "nce",
            Estimator::Dv => "dv",
        }
    }

    /// Loss to minimise and the MI estimate for scores `[N, N, L]` (N ≥ 2).
    pub fn estimate(self, scores: &Tensor) -> MiEstimate {
        match self {
            Estimator::Jsd => jsd(scores),
            Estimator::Nce => info_nce(scores),
            Estimator::Dv => donsker_varadhan(scores),
        }
    }
}

/// An estimator's output: scalar tensors.
#[derive(Debug)]
pub struct MiEstimate {
    /// The loss to minimise (differentiable).
    pub loss: Tensor,
    /// The mutual-information estimate in nats (for logs).
    pub mi: Tensor,
}

/// `[N, N, 1]` boolean mask, true where `j = i` (the positive pairs).
fn positive_mask(scores: &Tensor) -> Tensor {
    let n = scores.size()[0];
    Tensor::eye(n, (Kind::Bool, scores.device())).unsqueeze(-1)
}

/// Positive scores `u[i, i, l]` as `[N, L]`.
fn positives(scores: &Tensor) -> Tensor {
    // diagonal() puts the diagonal dimension last: [L, N]; transpose to [N, L].
    scores.diagonal(0, 0, 1).transpose(0, 1)
}

/// Sum of `values` `[N, N, L]` over the negative entries (`j ≠ i`): the whole sum less the
/// positives', which needs no mask and no masked copy of the scores.
fn sum_over_negatives(values: &Tensor) -> Tensor {
    values.sum(Kind::Float) - positives(values).sum(Kind::Float)
}

/// JSD: `E_pos = mean(log 2 − softplus(−u_pos))`, `E_neg = mean(softplus(−u_neg) + u_neg − log 2)`,
/// loss `E_neg − E_pos`, MI estimate `E_pos − E_neg`.
///
/// Computed from one softplus of all the scores: `softplus(−u) + u = softplus(u)`, so
/// `E_neg = mean(softplus(u_neg)) − log 2` and `E_pos = log 2 − mean(softplus(u_pos) − u_pos)`.
fn jsd(scores: &Tensor) -> MiEstimate {
    let [n, _, l] = scores.size()[..] else { unreachable!("scores are [N, N, L]") };
    let softplus = scores.softplus();
    let positive_term = LN_2 - (positives(&softplus) - positives(scores)).mean(Kind::Float);
    let negative_term = sum_over_negatives(&softplus) / (n * (n - 1) * l) as f64 - LN_2;
    let loss = &negative_term - &positive_term;
    let mi = loss.neg().detach();
    MiEstimate { loss, mi }
}

/// infoNCE: for each `(i, l)`, a log-softmax over the positive `u[i, i, l]` and every negative
/// `u[i, j, l']` (`j ≠ i`, all `l'`); loss `−mean(log p_pos)`, MI estimate `log K − loss` with
/// `K = 1 + (N − 1)·L` candidates.
fn info_nce(scores: &Tensor) -> MiEstimate {
    let [n, _, l] = scores.size()[..] else { unreachable!("scores are [N, N, L]") };
    let mask = positive_mask(scores);
    // −inf removes the positives from the negatives' log-sum-exp exactly (the official code uses
    // −10, which still lets them leak in a little).
    let negatives_lse = scores.masked_fill(&mask, f64::NEG_INFINITY).reshape([n, n * l]).logsumexp([1], true); // [N, 1]
    let positive = positives(scores); // [N, L]
    let log_probability = &positive - positive.logaddexp(&negatives_lse);
    let loss = log_probability.mean(Kind::Float).neg();
    let candidates = (1 + (n - 1) * l) as f64;
    let mi = (loss.neg() + candidates.ln()).detach();
    MiEstimate { loss, mi }
}

/// Donsker–Varadhan: `E_pos = mean(u_pos)`, `E_neg = log mean exp(u_neg)` (log-sum-exp keeps it
/// stable), loss `E_neg − E_pos`, MI estimate `E_pos − E_neg`.
fn donsker_varadhan(scores: &Tensor) -> MiEstimate {
    let [n, _, l] = scores.size()[..] else { unreachable!("scores are [N, N, L]") };
    let mask = positive_mask(scores);
    let positive_term = positives(scores).mean(Kind::Float);
    let negatives = (n * (n - 1) * l) as f64;
    let negative_term =
        scores.masked_fill(&mask, f64::NEG_INFINITY).flatten(0, -1).logsumexp([0], false) - negatives.ln();
    let loss = &negative_term - &positive_term;
    let mi = loss.neg().detach();
    MiEstimate { loss, mi }
}

/// AMDIM's stabilisers of critic scores: soft clipping `c·tanh(s/c)` before the estimator, and
/// a penalty `λ·mean(s²)` on the raw scores added to the loss. Both off by default (the DIM
/// paper uses neither).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScoreStabiliser {
    /// Clipping scale `c`; 0 = no clipping.
    pub clip: f64,
    /// Penalty weight `λ`; 0 = no penalty.
    pub penalty: f64,
}

impl ScoreStabiliser {
    /// `estimator`'s estimate on the (clipped) scores, its loss carrying the penalty.
    pub fn estimate(self, estimator: Estimator, scores: &Tensor) -> MiEstimate {
        let clipped =
            if self.clip > 0.0 { (scores / self.clip).tanh() * self.clip } else { scores.shallow_clone() };
        let mut estimate = estimator.estimate(&clipped);
        if self.penalty > 0.0 {
            estimate.loss += scores.square().mean(Kind::Float) * self.penalty;
        }
        estimate
    }
}

/// The global-to-global infoNCE across two views: `a` and `b` are `[N, D]` embeddings of the
/// two views of the same N images, compared by cosine similarity over `temperature`. Each row of
/// `a` must pick its own image among the N rows of `b`, and each row of `b` among those of `a`;
/// the loss is the mean of both cross-entropies, the MI estimate `ln N − loss`.
pub fn global_to_global(a: &Tensor, b: &Tensor, temperature: f64) -> MiEstimate {
    let n = a.size()[0];
    let a = a / a.norm_scalaropt_dim(2, [1].as_slice(), true).clamp_min(1e-12);
    let b = b / b.norm_scalaropt_dim(2, [1].as_slice(), true).clamp_min(1e-12);
    let logits = a.matmul(&b.transpose(0, 1)) / temperature; // [N, N]
    let a_to_b = logits.log_softmax(1, Kind::Float).diagonal(0, 0, 1).mean(Kind::Float);
    let b_to_a = logits.log_softmax(0, Kind::Float).diagonal(0, 0, 1).mean(Kind::Float);
    let loss = (a_to_b + b_to_a) * -0.5;
    let mi = (loss.neg() + (n as f64).ln()).detach();
    MiEstimate { loss, mi }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn scores(values: &[f32], shape: [i64; 3]) -> Tensor {
        Tensor::from_slice(values).reshape(shape).set_requires_grad(true)
    }

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    /// N = 2, L = 1: u[0][0] = 1, u[0][1] = −1, u[1][0] = 0.5, u[1][1] = 2.
    /// Positives {1, 2}; negatives {−1, 0.5}.
    const TWO_BY_TWO: [f32; 4] = [1.0, -1.0, 0.5, 2.0];

    #[test]
    fn jsd_matches_the_hand_computation() {
        // softplus(x) = ln(1 + eˣ); ln 2 = 0.6931472.
        // E_pos = mean(ln2 − softplus(−1), ln2 − softplus(−2))
        //       = mean(0.6931472 − 0.3132617, 0.6931472 − 0.1269280) = mean(0.3798855, 0.5662192)
        //       = 0.4730523
        // E_neg = mean(softplus(1) − 1 − ln2, softplus(−0.5) + 0.5 − ln2)
        //       = mean(1.3132617 − 1 − 0.6931472, 0.4740770 + 0.5 − 0.6931472)
        //       = mean(−0.3798855, 0.2809298) = −0.0494778
        // loss = E_neg − E_pos = −0.5225302; MI estimate = 0.5225302.
        let u = scores(&TWO_BY_TWO, [2, 2, 1]);
        let estimate = Estimator::Jsd.estimate(&u);
        assert!((value(&estimate.loss) - -0.5225302).abs() < 1e-6, "{}", value(&estimate.loss));
        assert!((value(&estimate.mi) - 0.5225302).abs() < 1e-6);
    }

    #[test]
    fn dv_matches_the_hand_computation() {
        // E_pos = mean(1, 2) = 1.5
        // E_neg = ln(mean(e⁻¹, e^0.5)) = ln((0.3678794 + 1.6487213) / 2) = ln(1.0083004) = 0.0082661
        // loss = 0.0082661 − 1.5 = −1.4917339
        let u = scores(&TWO_BY_TWO, [2, 2, 1]);
        let estimate = Estimator::Dv.estimate(&u);
        assert!((value(&estimate.loss) - -1.4917339).abs() < 1e-6, "{}", value(&estimate.loss));
        assert!((value(&estimate.mi) - 1.4917339).abs() < 1e-6);
    }

    #[test]
    fn nce_matches_the_hand_computation_with_negatives_from_every_location() {
        // N = 2, L = 2: u[0][0] = (1, 0), u[0][1] = (2, −1), u[1][0] = (0, 0), u[1][1] = (1, 1).
        // Negatives of i = 0: u[0][1][·] = {2, −1}; of i = 1: u[1][0][·] = {0, 0}.
        // (0,0): logits {1, 2, −1}: lse = ln(e + e² + e⁻¹) = ln(10.4752173) = 2.3490122; log p = −1.3490122
        // (0,1): logits {0, 2, −1}: lse = ln(1 + e² + e⁻¹) = ln(8.7569355) = 2.1698460;  log p = −2.1698460
        // (1,0), (1,1): logits {1, 0, 0}: lse = ln(e + 2) = ln(4.7182818) = 1.5514447; log p = −0.5514447
        // loss = (1.3490122 + 2.1698460 + 2 · 0.5514447) / 4 = 1.1554369
        // MI estimate = ln 3 − loss = 1.0986123 − 1.1554369 = −0.0568246
        let u = scores(&[1.0, 0.0, 2.0, -1.0, 0.0, 0.0, 1.0, 1.0], [2, 2, 2]);
        let estimate = Estimator::Nce.estimate(&u);
        assert!((value(&estimate.loss) - 1.1554369).abs() < 1e-6, "{}", value(&estimate.loss));
        assert!((value(&estimate.mi) - -0.0568246).abs() < 1e-6);
    }

    #[test]
    fn every_estimator_matches_the_hand_computation_for_three_images() {
        // With N = 3, L = 1 and every positive 1, every negative 0:
        // JSD: E_pos = ln2 − softplus(−1) = 0.3798855, E_neg = softplus(0) − ln2 = 0 → loss −0.3798855.
        // DV: E_pos = 1, E_neg = ln(mean(e⁰)) = 0 → loss −1.
        // NCE: logits {1, 0, 0} for every (i, l): loss = ln(e + 2) − 1 = 0.5514447.
        let values: Vec<f32> = (0..9).map(|k| if k % 4 == 0 { 1.0 } else { 0.0 }).collect();
        let expected = [(Estimator::Jsd, -0.3798855), (Estimator::Dv, -1.0), (Estimator::Nce, 0.5514447)];
        for (estimator, loss) in expected {
            let estimate = estimator.estimate(&scores(&values, [3, 3, 1]));
            assert!((value(&estimate.loss) - loss).abs() < 1e-6, "{estimator:?}: {}", value(&estimate.loss));
        }
    }

    /// The estimators written out term by term as the official code does, with a mask over the
    /// negatives: what the fused forms above must reproduce.
    fn written_out(estimator: Estimator, scores: &Tensor) -> Tensor {
        let [n, _, l] = scores.size()[..] else { unreachable!() };
        let mask = positive_mask(scores);
        let negatives = (n * (n - 1) * l) as f64;
        let positive = positives(scores);
        match estimator {
            Estimator::Jsd => {
                let e_pos = (positive.neg().softplus().neg() + LN_2).mean(Kind::Float);
                let e_neg =
                    (scores.neg().softplus() + scores - LN_2).masked_fill(&mask, 0.0).sum(Kind::Float)
                        / negatives;
                e_neg - e_pos
            }
            Estimator::Nce => {
                let negatives_lse =
                    scores.masked_fill(&mask, f64::NEG_INFINITY).reshape([n, n * l]).logsumexp([1], true);
                let all = Tensor::stack(&[positive.shallow_clone(), negatives_lse.expand([n, l], false)], 0)
                    .logsumexp([0], false);
                (positive - all).mean(Kind::Float).neg()
            }
            Estimator::Dv => unreachable!("the DV estimator is computed as written"),
        }
    }

    #[test]
    fn the_fused_estimators_match_the_written_out_ones_in_value_and_gradient() {
        let _turn = crate::torch_generator::exclusive();
        tch::manual_seed(11);
        for estimator in [Estimator::Jsd, Estimator::Nce] {
            for (n, l, spread) in [(2, 1, 1.0), (5, 7, 3.0), (16, 64, 10.0), (8, 4, 40.0)] {
                let values = Tensor::randn([n, n, l], (Kind::Float, tch::Device::Cpu)) * spread;
                let fused_scores = values.copy().set_requires_grad(true);
                let written_scores = values.copy().set_requires_grad(true);
                let fused = estimator.estimate(&fused_scores).loss;
                let written = written_out(estimator, &written_scores);
                fused.backward();
                written.backward();
                // Float32 sums of up to 16·16·64 terms in another order: agreement to 1e-5,
                // relative to the loss and to the largest gradient entry.
                let (fused, written) = (value(&fused), value(&written));
                let tolerance = 1e-5 * written.abs().max(1.0);
                assert!((fused - written).abs() <= tolerance, "{estimator:?} {n}x{l}: {fused} vs {written}");
                let written_gradient = written_scores.grad();
                let gradient_gap = (fused_scores.grad() - &written_gradient).abs().max().double_value(&[]);
                let largest = written_gradient.abs().max().double_value(&[]);
                assert!(
                    gradient_gap <= 1e-5 * largest,
                    "{estimator:?} {n}x{l}: gradients differ by {gradient_gap}"
                );
            }
        }
    }

    #[test]
    fn gradients_raise_positive_scores_and_lower_negative_ones() {
        for estimator in [Estimator::Jsd, Estimator::Nce, Estimator::Dv] {
            let u = scores(&[1.0, 0.0, 2.0, -1.0, 0.0, 0.5, 1.0, 1.0], [2, 2, 2]);
            estimator.estimate(&u).loss.backward();
            let grad = u.grad();
            // Gradient descent moves against the gradient: a positive score must have a negative
            // gradient (the loss falls as it rises) and a negative score a positive one.
            for (i, j, l) in [(0, 0, 0), (1, 1, 1)] {
                assert!(grad.double_value(&[i, j, l]) < 0.0, "{estimator:?} positive ({i},{j},{l})");
            }
            for (i, j, l) in [(0, 1, 0), (1, 0, 1)] {
                assert!(grad.double_value(&[i, j, l]) > 0.0, "{estimator:?} negative ({i},{j},{l})");
            }
            assert!(grad.isfinite().all().int64_value(&[]) == 1);
        }
    }

    #[test]
    fn global_to_global_matches_the_hand_computation() {
        // a = (1, 0), (0, 1); b = (1, 0), (0.6, 0.8) (unit rows already); τ = 0.5.
        // cos(a_i, b_j) = [[1, 0.6], [0, 0.8]]; logits = [[2, 1.2], [0, 1.6]].
        // Rows (a → b): log p(0) = 2 − ln(e² + e^1.2) = 2 − 2.3711007 = −0.3711007;
        //               log p(1) = 1.6 − ln(1 + e^1.6) = 1.6 − 1.7839007 = −0.1839007.
        // Columns (b → a): log p(0) = 2 − ln(e² + 1) = 2 − 2.1269280 = −0.1269280;
        //                  log p(1) = 1.6 − ln(e^1.2 + e^1.6) = 1.6 − 2.1130153 = −0.5130153.
        // loss = (0.3711007 + 0.1839007 + 0.1269280 + 0.5130153) / 4 = 0.2987362;
        // MI estimate = ln 2 − loss = 0.3944110.
        let a = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).reshape([2, 2]);
        let b = Tensor::from_slice(&[1.0f32, 0.0, 0.6, 0.8]).reshape([2, 2]);
        let estimate = global_to_global(&a, &b, 0.5);
        assert!((value(&estimate.loss) - 0.2987362).abs() < 1e-6, "{}", value(&estimate.loss));
        assert!((value(&estimate.mi) - 0.3944110).abs() < 1e-6);
        // Only directions count: scaling a row changes nothing.
        let scaled = global_to_global(&(&a * 3.0), &b, 0.5);
        assert!((value(&scaled.loss) - 0.2987362).abs() < 1e-6);
    }

    #[test]
    fn the_stabiliser_clips_scores_and_adds_the_squared_score_penalty() {
        // Clip c = 1 on TWO_BY_TWO: tanh(1) = 0.7615942, tanh(−1) = −0.7615942, tanh(0.5) = 0.4621172,
        // tanh(2) = 0.9640276. DV on them: E_pos = (0.7615942 + 0.9640276) / 2 = 0.8628109;
        // E_neg = ln((e^−0.7615942 + e^0.4621172) / 2) = ln((0.4669215 + 1.5874313) / 2) = 0.0268137.
        // loss = −0.8359972. Penalty λ = 0.1 on the raw scores: mean(1, 1, 0.25, 4) = 1.5625 → +0.15625.
        let u = scores(&TWO_BY_TWO, [2, 2, 1]);
        let clipped = ScoreStabiliser { clip: 1.0, penalty: 0.0 }.estimate(Estimator::Dv, &u);
        assert!((value(&clipped.loss) - -0.8359972).abs() < 1e-6, "{}", value(&clipped.loss));
        let both = ScoreStabiliser { clip: 1.0, penalty: 0.1 }.estimate(Estimator::Dv, &u);
        assert!((value(&both.loss) - (-0.8359972 + 0.15625)).abs() < 1e-6);
        assert!(
            (value(&both.mi) - value(&clipped.mi)).abs() < 1e-9,
            "the penalty is not part of the MI estimate"
        );
        let off = ScoreStabiliser::default().estimate(Estimator::Dv, &u);
        assert!((value(&off.loss) - -1.4917339).abs() < 1e-6);
    }
}
