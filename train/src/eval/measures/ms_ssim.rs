//! How much of the image a tap keeps: a decoder trained on the frozen features to reconstruct the
//! input (mean squared error, as in the official DIM evaluation), scored on held-out images by
//! multi-scale SSIM (Wang, Simoncelli and Bovik 2003) and by single-scale SSIM.
//!
//! SSIM uses the official code's filter: an 11×11 Gaussian window with σ = 1.5, zero "same"
//! padding, and constants C1 = (0.01·L)², C2 = (0.03·L)² with L = 1 for images in [0, 1].

use super::{MeasureError, MeasureSchedule, MeasureScore, TapData, ensure_finite, forward_in_chunks};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

/// Side of the Gaussian window.
pub const WINDOW_SIZE: i64 = 11;
/// Standard deviation of the Gaussian window, in pixels.
pub const WINDOW_SIGMA: f64 = 1.5;
/// Luminance constant C1 = (K1·L)² with L = 1.
pub const C1: f64 = 0.01 * 0.01;
/// Contrast constant C2 = (K2·L)² with L = 1.
pub const C2: f64 = 0.03 * 0.03;
/// Wang et al.'s weights of the five scales, finest first.
pub const MS_SSIM_WEIGHTS: [f64; 5] = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333];

/// What the JSON records about how the measure is computed.
pub const METHOD: &str = "A decoder (Linear to width x 4 x 4 + BatchNorm + ReLU, then transposed convs \
     4/2/1 halving the channels + BatchNorm + ReLU up to the input size, then a 3x3 conv without bias and tanh; \
     the official basic32x32 decoder at width 512) is trained with Adam on the mean squared error between its \
     output and the image scaled to [-1, 1], on the train split's frozen features, standardised per dimension. Held-out images and their \
     reconstructions (mapped back to [0, 1]) are compared by MS-SSIM (Wang et al. 2003: 2x2 average pooling between \
     scales, weights 0.0448/0.2856/0.3001/0.2363/0.1333, contrast-structure at the finer scales and full SSIM at the \
     coarsest, negative terms clamped to 0; fewer scales with the weights renormalised when the image is smaller \
     than 16 pixels) and by single-scale SSIM, which is what the official code's `ms_ssim` function computes. Both \
     use an 11x11 Gaussian window (sigma 1.5) with zero padding and C1 = 0.01^2, C2 = 0.03^2 for data range 1; the \
     official code applies those constants to images in [-1, 1]. The learning rate is constant (the official run \
     drops it x0.1 at epochs 50 and 100).";

/// Decoder and training options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsSsimOptions {
    /// The decoder's schedule (official: batch 64, lr 1e-4).
    pub schedule: MeasureSchedule,
    /// Channels of the decoder's 4×4 starting map (official: 512).
    pub width: usize,
}

/// Reconstruction quality on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsSsimScore {
    /// Mean MS-SSIM of test images and their reconstructions, in [0, 1].
    pub ms_ssim: f64,
    /// Mean single-scale SSIM (the official code's "MS_SSIM" value).
    pub ssim: f64,
    /// Mean squared error per pixel on the [0, 1] scale.
    pub mse: f64,
    /// Scales MS-SSIM used.
    pub scales: usize,
}

impl MeasureScore for MsSsimScore {
    fn columns() -> &'static [&'static str] {
        &["ms-ssim", "ssim", "mse"]
    }

    fn values(&self) -> Vec<f64> {
        vec![self.ms_ssim, self.ssim, self.mse]
    }
}

/// The normalised `[C, 1, 11, 11]` Gaussian window for a depthwise convolution over `channels`.
fn gaussian_window(channels: i64, device: Device) -> Tensor {
    let centre = (WINDOW_SIZE / 2) as f64;
    let taps: Vec<f64> = (0..WINDOW_SIZE)
        .map(|i| (-(i as f64 - centre).powi(2) / (2.0 * WINDOW_SIGMA.powi(2))).exp())
        .collect();
    let total: f64 = taps.iter().sum();
    let line =
        Tensor::from_slice(&taps.iter().map(|t| (t / total) as f32).collect::<Vec<_>>()).to_device(device);
    let window = line.unsqueeze(1).matmul(&line.unsqueeze(0));
    window.expand([channels, 1, WINDOW_SIZE, WINDOW_SIZE], false).contiguous()
}

/// Per image, the mean SSIM map and the mean contrast-structure map at one scale: `([N], [N])`.
fn ssim_and_contrast_structure(a: &Tensor, b: &Tensor) -> (Tensor, Tensor) {
    let channels = a.size()[1];
    let window = gaussian_window(channels, a.device());
    let blur = |x: &Tensor| {
        x.conv2d(&window, None::<Tensor>, [1, 1], [WINDOW_SIZE / 2, WINDOW_SIZE / 2], [1, 1], channels)
    };
    let (mean_a, mean_b) = (blur(a), blur(b));
    let variance_a = blur(&(a * a)) - &mean_a * &mean_a;
    let variance_b = blur(&(b * b)) - &mean_b * &mean_b;
    let covariance = blur(&(a * b)) - &mean_a * &mean_b;
    let contrast_structure = (covariance * 2.0 + C2) / (variance_a + variance_b + C2);
    let luminance = (&mean_a * &mean_b * 2.0 + C1) / (mean_a.square() + mean_b.square() + C1);
    let per_image = |map: &Tensor| map.flatten(1, -1).mean_dim(1, false, Kind::Float);
    (per_image(&(luminance * &contrast_structure)), per_image(&contrast_structure))
}

/// Checks that `a` and `b` are `[N, C, H, W]` batches of the same shape.
fn check_pair(a: &Tensor, b: &Tensor) -> Result<(), MeasureError> {
    if a.dim() != 4 || a.size() != b.size() {
        return Err(MeasureError::Shape(format!(
            "SSIM compares two [N, C, H, W] batches of one shape, got {:?} and {:?}",
            a.size(),
            b.size()
        )));
    }
    Ok(())
}

/// Single-scale SSIM of each image pair of two `[N, C, H, W]` batches in [0, 1]: `[N]`.
pub fn ssim(a: &Tensor, b: &Tensor) -> Result<Tensor, MeasureError> {
    check_pair(a, b)?;
    Ok(ssim_and_contrast_structure(&a.to_kind(Kind::Float), &b.to_kind(Kind::Float)).0)
}

/// Scales MS-SSIM uses for images whose shorter side is `side`: five, or as many as halvings
/// leave at least one pixel.
pub fn ms_ssim_scales(side: i64) -> usize {
    let mut scales = 1;
    let mut side = side;
    while scales < MS_SSIM_WEIGHTS.len() && side >= 2 {
        side /= 2;
        scales += 1;
    }
    scales
}

/// MS-SSIM of each image pair of two `[N, C, H, W]` batches in [0, 1]: `[N]`.
pub fn ms_ssim(a: &Tensor, b: &Tensor) -> Result<Tensor, MeasureError> {
    check_pair(a, b)?;
    let size = a.size();
    let scales = ms_ssim_scales(size[2].min(size[3]));
    let weights = &MS_SSIM_WEIGHTS[..scales];
    let total: f64 = weights.iter().sum();
    let (mut a, mut b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    let mut product = Tensor::ones([size[0]], (Kind::Float, a.device()));
    for (scale, weight) in weights.iter().enumerate() {
        let (full, contrast_structure) = ssim_and_contrast_structure(&a, &b);
        // The coarsest scale contributes luminance too; a negative term has no real power.
        let term = if scale + 1 == scales { full } else { contrast_structure };
        product *= term.relu().pow_tensor_scalar(weight / total);
        if scale + 1 < scales {
            let pool = |x: &Tensor| x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
            (a, b) = (pool(&a), pool(&b));
        }
    }
    Ok(product)
}

/// Reconstructs images from a tap's features.
#[derive(Debug)]
struct Decoder {
    input: nn::Linear,
    input_norm: nn::BatchNorm,
    width: i64,
    upsampling: Vec<(nn::ConvTranspose2D, nn::BatchNorm)>,
    output: nn::Conv2D,
}

/// Side of the decoder's starting map.
const START_SIDE: i64 = 4;

impl Decoder {
    /// A decoder from `dims` features to `channels × size × size` images, starting from a
    /// `width × 4 × 4` map; `size` must be 4 times a power of two.
    fn new(root: &nn::Path, dims: i64, channels: i64, size: i64, width: i64) -> Result<Self, MeasureError> {
        let mut doublings = 0;
        while START_SIDE << doublings < size {
            doublings += 1;
        }
        if START_SIDE << doublings != size {
            return Err(MeasureError::Shape(format!(
                "the decoder builds images of 4 times a power of two pixels, not {size}"
            )));
        }
        if width >> doublings < 1 {
            return Err(MeasureError::Option(format!(
                "a decoder width of {width} cannot be halved {doublings} times; use at least {}",
                1i64 << doublings
            )));
        }
        let upsampling = (0..doublings)
            .map(|layer| {
                let (from, to) = (width >> layer, width >> (layer + 1));
                let config = nn::ConvTransposeConfig { stride: 2, padding: 1, ..Default::default() };
                let path = root / format!("up{layer}");
                (
                    nn::conv_transpose2d(&path / "conv", from, to, 4, config),
                    nn::batch_norm2d(&path / "bn", to, Default::default()),
                )
            })
            .collect();
        let output_config = nn::ConvConfig { padding: 1, bias: false, ..Default::default() };
        Ok(Decoder {
            input: nn::linear(root / "input", dims, width * START_SIDE * START_SIDE, Default::default()),
            input_norm: nn::batch_norm1d(
                root / "input_bn",
                width * START_SIDE * START_SIDE,
                Default::default(),
            ),
            width,
            upsampling,
            output: nn::conv2d(root / "output", width >> doublings, channels, 3, output_config),
        })
    }

    /// Images in [−1, 1] from `[N, dims]` features.
    fn forward_t(&self, features: &Tensor, train: bool) -> Tensor {
        let mut x = features
            .apply(&self.input)
            .apply_t(&self.input_norm, train)
            .relu()
            .view([-1, self.width, START_SIDE, START_SIDE]);
        for (conv, norm) in &self.upsampling {
            x = x.apply(conv).apply_t(norm, train).relu();
        }
        x.apply(&self.output).tanh()
    }
}

/// Trains a decoder on the train split's features and scores its reconstructions of the test
/// split.
pub fn reconstruction_score(
    data: &TapData<'_>,
    options: &MsSsimOptions,
    device: Device,
    progress: &indicatif::ProgressBar,
) -> Result<MsSsimScore, MeasureError> {
    let schedule = &options.schedule;
    let rows = data.train_features.size()[0];
    if data.train_images.size()[0] != rows || data.test_images.size()[0] != data.test_features.size()[0] {
        return Err(MeasureError::Shape("features and images differ in number of rows".into()));
    }
    schedule.validate(rows as usize)?;
    let image_size = data.train_images.size();
    tch::manual_seed(schedule.seed as i64);
    let store = nn::VarStore::new(device);
    let decoder = Decoder::new(
        &store.root(),
        data.train_features.size()[1],
        image_size[1],
        image_size[2],
        options.width as i64,
    )?;
    let mut optimizer = schedule.optimizer(&store)?;
    schedule.for_each_batch(rows as usize, progress, |batch| {
        let features = data.train_features.index_select(0, batch).to_device(device);
        let target = data.train_images.index_select(0, batch).to_device(device) * 2.0 - 1.0;
        let loss = decoder.forward_t(&features, true).mse_loss(&target, tch::Reduction::Mean);
        ensure_finite(&loss, "the decoder's loss")?;
        optimizer.backward_step(&loss);
        Ok(())
    })?;

    let reconstructions = forward_in_chunks(&data.test_features, device, |features| {
        (decoder.forward_t(features, false) + 1.0) / 2.0
    });
    let _guard = tch::no_grad_guard();
    let originals = data.test_images.to_kind(Kind::Float);
    let mean = |t: Tensor| t.mean(Kind::Float).double_value(&[]);
    Ok(MsSsimScore {
        ms_ssim: mean(ms_ssim(&originals, &reconstructions)?),
        ssim: mean(ssim(&originals, &reconstructions)?),
        mse: mean((&originals - &reconstructions).square()),
        scales: ms_ssim_scales(image_size[2]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(values: &[f32], side: i64) -> Tensor {
        Tensor::from_slice(values).view([1, 1, side, side])
    }

    #[test]
    fn an_identical_pair_scores_one_and_noise_lowers_the_score_steadily() {
        tch::manual_seed(3);
        // A smooth 32×32 image with structure at several scales.
        let ramp = Tensor::arange(32, (Kind::Float, Device::Cpu)) / 31.0;
        let clean =
            (ramp.unsqueeze(0) * ramp.unsqueeze(1) * 0.6 + (ramp * 12.0).sin().unsqueeze(0) * 0.2 + 0.2)
                .view([1, 1, 32, 32])
                .repeat([2, 1, 1, 1]);
        let same = ms_ssim(&clean, &clean.copy()).unwrap();
        assert!(same.allclose(&Tensor::ones([2], (Kind::Float, Device::Cpu)), 1e-5, 1e-5, false), "{same}");
        assert_eq!(ms_ssim_scales(32), 5);
        let noise = Tensor::randn([2, 1, 32, 32], (Kind::Float, Device::Cpu));
        let scores: Vec<f64> = [0.02, 0.05, 0.1, 0.2, 0.4]
            .iter()
            .map(|level| {
                let noisy = (&clean + &noise * *level).clamp(0.0, 1.0);
                ms_ssim(&clean, &noisy).unwrap().mean(Kind::Float).double_value(&[])
            })
            .collect();
        assert!(scores.windows(2).all(|w| w[1] < w[0]), "{scores:?}");
        assert!(scores[0] < 1.0 && scores[4] < 0.85, "{scores:?}");
    }

    #[test]
    fn ssim_of_a_tiny_pair_matches_an_independent_computation() {
        // Reference: plain Python, by direct sums over the zero-padded 11×11 Gaussian window
        // (no convolution routine), for a = [[0.2, 0.8], [0.5, 0.1]], b = [[0.3, 0.6], [0.5, 0.4]]:
        //   g = [exp(-(k-5)**2 / 4.5) for k in range(11)]; g = [v / sum(g) for v in g]
        //   at pixel (i, j) a window weight for pixel (p, q) is g[p-i+5] * g[q-j+5];
        //   mu = sum w x, var = sum w x^2 - mu^2, cov = sum w x y - mu_x mu_y,
        //   ssim(i, j) = (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2)),
        //   mean over the four pixels = 0.9006633, and with contrast-structure alone 0.9072573;
        //   the 2×2 average-pooled pair (0.4 against 0.45, 1×1) has SSIM 0.9868614.
        // Every pixel sees the same weights here (a 2×2 image sits inside every window), so the
        // four terms are equal; that shortcut was not used by the reference.
        let a = image(&[0.2, 0.8, 0.5, 0.1], 2);
        let b = image(&[0.3, 0.6, 0.5, 0.4], 2);
        let value = ssim(&a, &b).unwrap().double_value(&[0]);
        assert!((value - 0.9006633).abs() < 1e-5, "{value}");
        let (_, contrast_structure) = ssim_and_contrast_structure(&a, &b);
        assert!((contrast_structure.double_value(&[0]) - 0.9072573).abs() < 1e-5);
        // Two scales for a 2×2 image: cs at 2×2 (weight 0.0448), full SSIM of the 1×1 means.
        assert_eq!(ms_ssim_scales(2), 2);
        let coarse = 0.9868614f64;
        let total = MS_SSIM_WEIGHTS[0] + MS_SSIM_WEIGHTS[1];
        let expected =
            0.9072573f64.powf(MS_SSIM_WEIGHTS[0] / total) * coarse.powf(MS_SSIM_WEIGHTS[1] / total);
        let multi = ms_ssim(&a, &b).unwrap().double_value(&[0]);
        assert!((multi - expected).abs() < 1e-5, "{multi} vs {expected}");
    }

    #[test]
    fn mismatched_batches_are_refused() {
        let a = Tensor::zeros([1, 1, 4, 4], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([1, 1, 4, 5], (Kind::Float, Device::Cpu));
        assert!(matches!(ms_ssim(&a, &b), Err(MeasureError::Shape(_))));
    }
}
