//! Feature extraction for probes: reads a labelled split into memory, runs a frozen encoder over
//! it in eval mode and returns one feature matrix per tap (conv flattened, fc, Y), plus the
//! baselines' features (raw pixels, and a randomly initialised encoder of the same shape).

use crate::data::Dataset;
use crate::model::encoder::Encoder;
use dim_models::EncoderConfig;
use dim_models::tap::Tap;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;
use tch::{Device, Kind, Tensor, nn};

/// What a probe reads: one of the encoder's taps, or the input pixels in [0, 1], flattened (the
/// raw-pixel baseline's only representation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Representation {
    /// An encoder tap.
    Tap(Tap),
    /// The input pixels.
    Pixels,
}

impl Representation {
    /// Every representation, in the order `--help` lists them.
    pub const ALL: [Representation; 4] = [
        Representation::Tap(Tap::Conv),
        Representation::Tap(Tap::Fc),
        Representation::Tap(Tap::Y),
        Representation::Pixels,
    ];

    /// The name in tables, files and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Representation::Tap(tap) => tap.name(),
            Representation::Pixels => "pixels",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Representation::Tap(tap) => tap.description(),
            Representation::Pixels => {
                "The input pixels in [0, 1], flattened (the raw-pixel baseline's only tap)"
            }
        }
    }
}

impl fmt::Display for Representation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Representation> for &'static str {
    fn from(representation: Representation) -> Self {
        representation.name()
    }
}

impl TryFrom<String> for Representation {
    type Error = String;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        Representation::ALL
            .into_iter()
            .find(|representation| representation.name() == name)
            .ok_or_else(|| format!("unknown representation `{name}` (known: conv, fc, y, pixels)"))
    }
}

impl clap::ValueEnum for Representation {
    fn value_variants<'a>() -> &'a [Self] {
        &Representation::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.description()))
    }
}

/// Why a split could not be read for probing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeatureError {
    /// An example has no label; probes need labels.
    #[error("example {index} has no label; probes need a labelled dataset ({dataset})")]
    Unlabelled {
        /// The example.
        index: usize,
        /// The dataset's description.
        dataset: String,
    },
    /// Nothing could be read.
    #[error("no readable examples in {dataset} ({skipped} skipped)")]
    Empty {
        /// The dataset's description.
        dataset: String,
        /// How many examples failed to decode.
        skipped: usize,
    },
    /// The encoder does not take the dataset's images.
    #[error("the encoder takes {expected:?} inputs but the dataset yields {found:?}")]
    InputMismatch {
        /// (channels, size) the encoder takes.
        expected: (usize, usize),
        /// (channels, size) the dataset yields.
        found: (usize, usize),
    },
}

/// An example that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedExample {
    /// Index in the dataset.
    pub index: usize,
    /// The decoding error.
    pub reason: String,
}

/// A split held in memory.
#[derive(Debug)]
pub struct LabelledImages {
    /// `[N, C, H, W]` f32 in [0, 1] on the CPU.
    pub images: Tensor,
    /// `[N]` i64 on the CPU.
    pub labels: Tensor,
    /// Dataset indices of the rows, in row order.
    pub indices: Vec<usize>,
    /// Examples that failed to decode and were left out.
    pub skipped: Vec<SkippedExample>,
}

/// Examples decoded per parallel chunk while reading a split.
const READ_CHUNK: usize = 1024;

/// Reads a split into memory, decoding in parallel. With `limit`, a seeded random subset of that
/// many examples is read (a prefix would be one class for folder datasets sorted by class).
/// Examples that fail to decode are skipped and listed; an unlabelled example is an error.
pub fn read_labelled_images(
    dataset: &dyn Dataset,
    limit: Option<usize>,
    seed: u64,
    progress: &indicatif::ProgressBar,
) -> Result<LabelledImages, FeatureError> {
    let mut chosen: Vec<usize> = (0..dataset.len()).collect();
    if let Some(limit) = limit.filter(|&l| l < chosen.len()) {
        chosen.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        chosen.truncate(limit);
        // Reading in index order keeps file access sequential.
        chosen.sort_unstable();
    }
    let spec = dataset.input_spec();
    progress.set_length(chosen.len() as u64);
    let mut pixels = Vec::with_capacity(chosen.len() * spec.len());
    let mut labels = Vec::with_capacity(chosen.len());
    let mut indices = Vec::with_capacity(chosen.len());
    let mut skipped = Vec::new();
    for chunk in chosen.chunks(READ_CHUNK) {
        let samples: Vec<_> = chunk.par_iter().map(|&index| (index, dataset.get(index))).collect();
        for (index, sample) in samples {
            match sample {
                Ok(sample) => {
                    let label = sample
                        .label
                        .ok_or_else(|| FeatureError::Unlabelled { index, dataset: dataset.describe() })?;
                    pixels.extend_from_slice(&sample.pixels);
                    labels.push(i64::from(label));
                    indices.push(index);
                }
                Err(error) => skipped.push(SkippedExample { index, reason: error.to_string() }),
            }
        }
        progress.inc(chunk.len() as u64);
    }
    if labels.is_empty() {
        return Err(FeatureError::Empty { dataset: dataset.describe(), skipped: skipped.len() });
    }
    let shape = [labels.len() as i64, spec.channels as i64, spec.size as i64, spec.size as i64];
    Ok(LabelledImages {
        images: Tensor::from_slice(&pixels).view(shape),
        labels: Tensor::from_slice(&labels),
        indices,
        skipped,
    })
}

/// The raw-pixel baseline: images flattened to `[N, C·H·W]`.
pub fn pixel_features(images: &Tensor) -> Tensor {
    images.flatten(1, -1)
}

/// Runs `encoder` frozen (eval-mode BatchNorm, no gradients) over `images` in batches on
/// `device` and returns each requested tap as a `[N, D]` CPU f32 matrix, in the order asked
/// ([`Representation::Pixels`] gives the flattened input).
pub fn encoder_features(
    encoder: &Encoder,
    images: &Tensor,
    taps: &[Representation],
    batch_size: usize,
    device: Device,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<(Representation, Tensor)>, FeatureError> {
    let config = encoder.config();
    let size = images.size();
    let found = (size[1] as usize, size[3] as usize);
    let expected = (config.in_channels, config.input_size());
    if found != expected || size[2] != size[3] {
        return Err(FeatureError::InputMismatch { expected, found });
    }
    let _guard = tch::no_grad_guard();
    let rows = size[0];
    let batch = batch_size.max(1) as i64;
    progress.set_length(rows as u64);
    let mut parts: Vec<Vec<Tensor>> = taps.iter().map(|_| Vec::new()).collect();
    let mut start = 0;
    while start < rows {
        let len = batch.min(rows - start);
        let outputs = encoder.forward_taps(&images.narrow(0, start, len).to_device(device), false);
        for (tap, part) in taps.iter().zip(parts.iter_mut()) {
            let features = match tap {
                Representation::Tap(Tap::Conv) => outputs.conv.flatten(1, -1),
                Representation::Tap(Tap::Fc) => outputs.fc.shallow_clone(),
                Representation::Tap(Tap::Y) => outputs.y.shallow_clone(),
                Representation::Pixels => pixel_features(&images.narrow(0, start, len)),
            };
            part.push(features.to_device(Device::Cpu).to_kind(Kind::Float));
        }
        start += len;
        progress.inc(len as u64);
    }
    Ok(taps.iter().copied().zip(parts.iter().map(|p| Tensor::cat(p, 0))).collect())
}

/// Standard deviations below this are treated as 1, so that constant features (a padding pixel,
/// a dead ReLU unit) stay at zero instead of being blown up by a division by ~0.
const MIN_STANDARD_DEVIATION: f64 = 1e-6;

/// Standardises `[N, D]` train and test features with the train split's per-dimension mean and
/// standard deviation.
pub fn standardise(train: &Tensor, test: &Tensor) -> (Tensor, Tensor) {
    let _guard = tch::no_grad_guard();
    let mean = train.mean_dim(0, true, Kind::Float);
    let std = train.std_dim(0, false, true);
    let std = std.where_self(&std.ge(MIN_STANDARD_DEVIATION), &std.ones_like());
    let scale = |x: &Tensor| (x - &mean) / &std;
    (scale(train), scale(test))
}

/// A randomly initialised encoder of the given shape, the "random" baseline. Initialisation is
/// seeded so that runs are comparable.
pub fn random_encoder(config: EncoderConfig, seed: u64, device: Device) -> (nn::VarStore, Encoder) {
    tch::manual_seed(seed as i64);
    let store = nn::VarStore::new(device);
    let encoder = Encoder::new(&store.root(), config);
    (store, encoder)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::{DataError, Sample};
    use dim_models::Preset;
    use dim_models::preprocess::{Background, InputSpec, ResizePolicy};

    /// A generated in-memory dataset: class 1 images are bright in the top half, class 0 in the
    /// bottom half, plus noise; `broken` lists indices that fail to decode.
    pub struct GeneratedImages {
        pub spec: InputSpec,
        pub len: usize,
        pub broken: Vec<usize>,
    }

    impl GeneratedImages {
        pub fn new(channels: usize, size: usize, len: usize) -> Self {
            GeneratedImages {
                spec: InputSpec { channels, size, resize: ResizePolicy::Pad, background: Background::White },
                len,
                broken: vec![],
            }
        }
    }

    impl Dataset for GeneratedImages {
        fn len(&self) -> usize {
            self.len
        }
        fn input_spec(&self) -> InputSpec {
            self.spec
        }
        fn num_classes(&self) -> Option<usize> {
            Some(2)
        }
        fn get(&self, index: usize) -> Result<Sample, DataError> {
            if self.broken.contains(&index) {
                return Err(DataError::Format {
                    path: format!("image-{index}").into(),
                    reason: "corrupt".into(),
                });
            }
            let label = (index % 2) as u32;
            let size = self.spec.size;
            let pixels = (0..self.spec.len())
                .map(|i| {
                    let row = (i / size) % size;
                    let bright = (row < size / 2) == (label == 1);
                    let noise = ((index * 7919 + i * 104_729) % 1000) as f32 / 1000.0;
                    if bright { 0.6 + 0.4 * noise } else { 0.4 * noise }
                })
                .collect();
            Ok(Sample { pixels, label: Some(label) })
        }
        fn fingerprint(&self) -> String {
            format!("generated-{}", self.len)
        }
        fn describe(&self) -> String {
            format!("generated images ({})", self.len)
        }
    }

    #[test]
    fn reading_skips_broken_examples_and_limits_by_a_seeded_subset() {
        let mut dataset = GeneratedImages::new(1, 8, 20);
        dataset.broken = vec![3, 4];
        let hidden = indicatif::ProgressBar::hidden();
        let all = read_labelled_images(&dataset, None, 0, &hidden).unwrap();
        assert_eq!(all.images.size(), [18, 1, 8, 8]);
        assert_eq!(all.skipped.iter().map(|s| s.index).collect::<Vec<_>>(), [3, 4]);
        assert!(all.skipped[0].reason.contains("corrupt"));

        let some = read_labelled_images(&dataset, Some(6), 7, &hidden).unwrap();
        let again = read_labelled_images(&dataset, Some(6), 7, &hidden).unwrap();
        assert_eq!(some.indices, again.indices);
        assert_eq!(some.indices.len() + some.skipped.len(), 6);
        let labels: Vec<i64> = some.labels.try_into().unwrap();
        let expected: Vec<i64> = some.indices.iter().map(|&i| (i % 2) as i64).collect();
        assert_eq!(labels, expected);
    }

    #[test]
    fn every_tap_of_basic32x32_has_the_preset_width() {
        let config = EncoderConfig::new(Preset::Basic32x32, 1).unwrap();
        let (_store, encoder) = random_encoder(config, 0, Device::Cpu);
        let images = Tensor::rand([5, 1, 32, 32], (Kind::Float, Device::Cpu));
        let hidden = indicatif::ProgressBar::hidden();
        let taps = [
            Representation::Tap(Tap::Conv),
            Representation::Tap(Tap::Fc),
            Representation::Tap(Tap::Y),
            Representation::Pixels,
        ];
        let features = encoder_features(&encoder, &images, &taps, 2, Device::Cpu, &hidden).unwrap();
        let widths: Vec<(Representation, Vec<i64>)> = features.iter().map(|(t, f)| (*t, f.size())).collect();
        assert_eq!(
            widths,
            [
                (Representation::Tap(Tap::Conv), vec![5, 4096]),
                (Representation::Tap(Tap::Fc), vec![5, 1024]),
                (Representation::Tap(Tap::Y), vec![5, 64]),
                (Representation::Pixels, vec![5, 1024])
            ]
        );
        // Batching must not change the result: eval mode makes each row independent.
        let whole =
            encoder_features(&encoder, &images, &[Representation::Tap(Tap::Y)], 5, Device::Cpu, &hidden)
                .unwrap();
        assert!(whole[0].1.allclose(&features[2].1, 1e-5, 1e-5, false));

        let wrong = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let err = encoder_features(&encoder, &wrong, &taps, 2, Device::Cpu, &hidden).unwrap_err();
        assert!(matches!(err, FeatureError::InputMismatch { .. }), "{err}");
    }
}
