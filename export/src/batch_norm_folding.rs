//! Folds an inference-mode BatchNorm into the layer before it. BatchNorm with running statistics
//! is the per-channel affine map `x ↦ s·x + (β − s·μ)` with `s = γ / √(σ² + ε)`, so a conv or
//! linear layer followed by it equals one layer with rows of `W` scaled by `s` and bias
//! `s·(b − μ) + β`. The arithmetic runs in f64 so the folded f32 weights are correctly rounded.

use dim_models::parameters::BATCH_NORM_EPSILON;

/// A BatchNorm layer's four per-channel tensors.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormStats<'a> {
    /// Scale γ.
    pub weight: &'a [f32],
    /// Shift β.
    pub bias: &'a [f32],
    /// Running mean μ.
    pub running_mean: &'a [f32],
    /// Running variance σ².
    pub running_var: &'a [f32],
}

/// Weight and bias of a layer with a BatchNorm folded in.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedLayer {
    /// Weight, same layout as the input weight (output channel first).
    pub weight: Vec<f32>,
    /// One bias per output channel.
    pub bias: Vec<f32>,
}

/// Folds `stats` into a layer whose `weight` has the output channel as its outermost dimension
/// (conv `[out, in, k, k]` or linear `[out, in]`) and whose bias is `bias` (`None` for the
/// bias-free convs).
pub fn fold(weight: &[f32], bias: Option<&[f32]>, stats: BatchNormStats<'_>) -> FoldedLayer {
    let channels = stats.weight.len();
    let row = weight.len() / channels;
    let scale: Vec<f64> = stats
        .weight
        .iter()
        .zip(stats.running_var)
        .map(|(&gamma, &var)| f64::from(gamma) / (f64::from(var) + BATCH_NORM_EPSILON).sqrt())
        .collect();
    let folded_weight = weight
        .chunks_exact(row)
        .zip(&scale)
        .flat_map(|(values, &s)| values.iter().map(move |&w| (f64::from(w) * s) as f32))
        .collect();
    let folded_bias = (0..channels)
        .map(|c| {
            let b = bias.map_or(0.0, |b| f64::from(b[c]));
            (scale[c] * (b - f64::from(stats.running_mean[c])) + f64::from(stats.bias[c])) as f32
        })
        .collect();
    FoldedLayer { weight: folded_weight, bias: folded_bias }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: linear layer then BatchNorm, evaluated directly in f64.
    fn linear_then_batch_norm(
        weight: &[f32],
        bias: &[f32],
        stats: BatchNormStats<'_>,
        input: &[f32],
    ) -> Vec<f64> {
        let inputs = input.len();
        (0..bias.len())
            .map(|o| {
                let z: f64 =
                    (0..inputs).map(|i| f64::from(weight[o * inputs + i]) * f64::from(input[i])).sum();
                let z = z + f64::from(bias[o]);
                let normalised = (z - f64::from(stats.running_mean[o]))
                    / (f64::from(stats.running_var[o]) + BATCH_NORM_EPSILON).sqrt();
                normalised * f64::from(stats.weight[o]) + f64::from(stats.bias[o])
            })
            .collect()
    }

    fn apply(folded: &FoldedLayer, input: &[f32]) -> Vec<f64> {
        let inputs = input.len();
        folded
            .bias
            .iter()
            .enumerate()
            .map(|(o, &b)| {
                let z: f64 =
                    (0..inputs).map(|i| f64::from(folded.weight[o * inputs + i]) * f64::from(input[i])).sum();
                z + f64::from(b)
            })
            .collect()
    }

    #[test]
    fn folded_linear_layer_matches_linear_then_batch_norm() {
        let weight = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75];
        let bias = [0.1, -0.2];
        let stats = BatchNormStats {
            weight: &[1.5, 0.3],
            bias: &[-0.4, 0.9],
            running_mean: &[0.7, -1.2],
            running_var: &[0.09, 4.0],
        };
        let folded = fold(&weight, Some(&bias), stats);
        for input in [[1.0, 2.0, 3.0], [-0.5, 0.0, 0.25], [0.0, 0.0, 0.0]] {
            let expected = linear_then_batch_norm(&weight, &bias, stats, &input);
            let found = apply(&folded, &input);
            for (e, f) in expected.iter().zip(&found) {
                assert!((e - f).abs() < 1e-5, "expected {expected:?}, found {found:?}");
            }
        }
    }

    #[test]
    fn a_conv_without_bias_gets_the_batch_norm_shift_as_bias() {
        // Two output channels of a 1-input-channel 1×1 conv: each "row" is one weight.
        let stats = BatchNormStats {
            weight: &[2.0, 1.0],
            bias: &[0.5, -1.0],
            running_mean: &[1.0, 3.0],
            running_var: &[4.0 - BATCH_NORM_EPSILON as f32, 1.0 - BATCH_NORM_EPSILON as f32],
        };
        let folded = fold(&[3.0, -2.0], None, stats);
        // s = γ/√(σ²+ε) = [1, 1]; bias = β − s·μ.
        assert!((folded.weight[0] - 3.0).abs() < 1e-6 && (folded.weight[1] + 2.0).abs() < 1e-6);
        assert!((folded.bias[0] + 0.5).abs() < 1e-6 && (folded.bias[1] + 4.0).abs() < 1e-6);
    }
}
