//! The harness every `dim-eval` evaluation shares: what it reads (a checkpoint's frozen encoder
//! and a labelled dataset, [`EvalSource`], sampled and encoded as [`Sampling`] says), the models
//! it scores beside the checkpoint (a supervised encoder, a random one, raw pixels) in one order,
//! their features per tap, the progress lines, the identity of what was read for the report,
//! and the errors.

use crate::data::{DataError, DataFormat, Dataset, Split, open_dataset};
use crate::eval::features::{
    FeatureError, LabelledImages, Representation, SkippedExample, encoder_features, pixel_features,
    random_encoder, read_labelled_images,
};
use crate::eval::probes::{ProbeError, ProbeKind};
use crate::fit::checkpoint::{CheckpointIoError, load_encoder};
use crate::model::encoder::Encoder;
use dim_models::checkpoint::{CheckpointConfig, WEIGHTS_FILE, sha256_hex};
use dim_models::preprocess::InputSpec;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Tensor, nn};

/// A comparison model evaluated beside the checkpoint.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// The input pixels themselves (one tap, "pixels").
    Raw,
    /// An encoder of the checkpoint's shape with seeded random weights, never trained.
    Random,
}

/// What an evaluation reads: the checkpoint under evaluation and the labelled data it is scored
/// on. Every evaluation's settings start with these fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSource {
    /// Checkpoint directory.
    pub checkpoint: PathBuf,
    /// Dataset: its train split trains (or fits) what the evaluation trains, its test split is
    /// scored.
    pub data: PathBuf,
    /// A separate dataset for the test split, for sources without one (image folders).
    pub test_data: Option<PathBuf>,
    /// Dataset format.
    pub format: DataFormat,
}

/// How an evaluation samples the test split and encodes the images. Every evaluation's settings
/// hold these fields after its own choice of models and train subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Test examples read (a seeded subset); all when `None`.
    pub limit_test: Option<usize>,
    /// Seeds the subsets, the random encoder and whatever the evaluation trains.
    pub seed: u64,
    /// Images per encoder forward pass during feature extraction.
    pub batch_size: usize,
}

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The checkpoint could not be loaded.
    #[error("cannot load checkpoint {path}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// The cause.
        source: CheckpointIoError,
    },
    /// The weights file could not be read for its digest.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A dataset could not be opened.
    #[error("cannot open the {split} split of {path}")]
    Data {
        /// The dataset.
        path: PathBuf,
        /// "train" or "test".
        split: &'static str,
        /// The cause (boxed: data errors are large and this path is cold).
        source: Box<DataError>,
    },
    /// The supervised checkpoint's input differs from the DIM checkpoint's.
    #[error(
        "the supervised checkpoint {path} takes {found} input, the DIM checkpoint {expected}; train it with the same --channels and preset"
    )]
    SupervisedInput {
        /// The supervised checkpoint.
        path: PathBuf,
        /// The DIM checkpoint's input.
        expected: String,
        /// The supervised checkpoint's input.
        found: String,
    },
    /// The train and test splits are the same data.
    #[error(
        "{0} has no separate test split (train and test are the same data); pass --test-data with a held-out set"
    )]
    NoTestSplit(String),
    /// A split could not be read into features.
    #[error(transparent)]
    Features(#[from] FeatureError),
    /// A probe failed.
    #[error("{probe} probe on {model}/{tap}")]
    Probe {
        /// The model.
        model: String,
        /// The tap.
        tap: Representation,
        /// The probe.
        probe: ProbeKind,
        /// The cause.
        source: ProbeError,
    },
    /// A tap's features do not form valid probe input.
    #[error("features of {model}/{tap}")]
    ProbeInput {
        /// The model.
        model: String,
        /// The tap.
        tap: Representation,
        /// The cause.
        source: ProbeError,
    },
    /// Nothing to do.
    #[error("nothing to evaluate: {0}")]
    Nothing(String),
    /// The JSON report could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Identity of the evaluated checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    /// Its directory.
    pub path: PathBuf,
    /// sha256 of `weights.safetensors`: the model's identity.
    pub weights_sha256: String,
    /// sha256 of its training settings.
    pub training_digest: String,
    /// Its config.
    pub config: CheckpointConfig,
}

/// What was read from one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    /// The dataset's own description.
    pub description: String,
    /// The dataset's fingerprint.
    pub fingerprint: String,
    /// Examples used.
    pub examples: usize,
    /// Examples that failed to decode and were left out.
    pub skipped: Vec<SkippedExample>,
}

/// Progress bars on stderr, or none (for tests and quiet runs). When stderr is not a terminal
/// (a log file), bars are replaced by one line per stage.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Whether progress is reported at all.
    pub visible: bool,
}

impl Progress {
    /// A bar with `message`, drawn only when visible on a terminal.
    pub fn bar(&self, message: String) -> ProgressBar {
        if !self.visible {
            return ProgressBar::hidden();
        }
        if !std::io::stderr().is_terminal() {
            eprintln!("{message} ...");
            return ProgressBar::hidden();
        }
        let style = ProgressStyle::with_template("{msg:>32} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
            .expect("the progress template is valid")
            .progress_chars("=> ");
        ProgressBar::new(0).with_style(style).with_message(message)
    }

    /// Prints a line of progress (a finished step) when visible.
    pub fn note(&self, line: String) {
        if self.visible {
            eprintln!("{line}");
        }
    }
}

/// The encoder under evaluation and, when asked for, a supervised baseline taking the same input.
pub(crate) struct LoadedEncoders {
    /// The evaluated checkpoint's variables (kept alive with its encoder).
    pub _store: nn::VarStore,
    /// The evaluated encoder.
    pub encoder: Encoder,
    /// Its checkpoint's configuration.
    pub config: CheckpointConfig,
    /// Its identity.
    pub checkpoint: CheckpointSummary,
    /// The supervised baseline's variables, encoder and identity.
    pub supervised: Option<(nn::VarStore, Encoder, CheckpointSummary)>,
}

/// Loads the checkpoint at `checkpoint` and, when given, the supervised checkpoint at
/// `supervised`, which must take the same input (channels and size).
pub(crate) fn load_encoders(
    checkpoint: &Path,
    supervised: Option<&Path>,
    device: Device,
) -> Result<LoadedEncoders, EvalError> {
    let checkpoint_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EvalError::Checkpoint { path, source }
    };
    let (store, encoder, config) = load_encoder(checkpoint, device).map_err(checkpoint_error(checkpoint))?;
    let summary = checkpoint_summary(checkpoint, &config)?;
    let supervised = match supervised {
        Some(path) => {
            let (store, model, supervised_config) =
                load_encoder(path, device).map_err(checkpoint_error(path))?;
            let (expected, found) = (config.input_spec(), supervised_config.input_spec());
            if (expected.channels, expected.size) != (found.channels, found.size) {
                return Err(EvalError::SupervisedInput {
                    path: path.to_path_buf(),
                    expected: format!("{}x{}x{}", expected.channels, expected.size, expected.size),
                    found: format!("{}x{}x{}", found.channels, found.size, found.size),
                });
            }
            Some((store, model, checkpoint_summary(path, &supervised_config)?))
        }
        None => None,
    };
    Ok(LoadedEncoders { _store: store, encoder, config, checkpoint: summary, supervised })
}

impl LoadedEncoders {
    /// Calls `score` with every model an evaluation scores, in table order: the checkpoint, the
    /// supervised baseline and the random encoder when `taps` names an encoder tap, then raw
    /// pixels (no encoder). The random encoder is made at its turn, seeded by `seed`, so that
    /// what ran before it draws from libtorch's generator as it always has.
    pub(crate) fn for_each_model<E>(
        &self,
        taps: &[Representation],
        baselines: &[Baseline],
        seed: u64,
        device: Device,
        mut score: impl FnMut(&str, Option<&Encoder>) -> Result<(), E>,
    ) -> Result<(), E> {
        if !taps.is_empty() {
            score("checkpoint", Some(&self.encoder))?;
            if let Some((_, supervised, _)) = &self.supervised {
                score("supervised", Some(supervised))?;
            }
            if baselines.contains(&Baseline::Random) {
                let (_random_store, random) = random_encoder(self.config.encoder, seed, device);
                score("random", Some(&random))?;
            }
        }
        if baselines.contains(&Baseline::Raw) {
            score("raw", None)?;
        }
        Ok(())
    }
}

/// How an evaluation extracts a model's features: which encoder taps, in batches of what size,
/// on which device, with which progress display.
pub(crate) struct Extraction<'a> {
    /// The encoder taps (never [`Representation::Pixels`]).
    pub taps: &'a [Representation],
    /// Images per encoder forward pass.
    pub batch_size: usize,
    /// Where the encoders run.
    pub device: Device,
    /// Progress display.
    pub progress: Progress,
}

impl Extraction<'_> {
    /// The features of `images`: one `[N, D]` matrix per tap of `encoder` (behind a progress bar
    /// showing `message`), or the flattened pixels as the one tap when there is no encoder.
    pub(crate) fn features(
        &self,
        encoder: Option<&Encoder>,
        images: &LabelledImages,
        message: impl FnOnce() -> String,
    ) -> Result<Vec<(Representation, Tensor)>, FeatureError> {
        let Some(encoder) = encoder else {
            return Ok(vec![(Representation::Pixels, pixel_features(&images.images))]);
        };
        let bar = self.progress.bar(message());
        let features =
            encoder_features(encoder, &images.images, self.taps, self.batch_size, self.device, &bar);
        bar.finish_and_clear();
        features
    }
}

/// The identity of the checkpoint in `dir`, whose config has been read as `config`.
fn checkpoint_summary(dir: &Path, config: &CheckpointConfig) -> Result<CheckpointSummary, EvalError> {
    let weights_path = dir.join(WEIGHTS_FILE);
    let weights =
        std::fs::read(&weights_path).map_err(|source| EvalError::Io { path: weights_path, source })?;
    Ok(CheckpointSummary {
        path: dir.to_path_buf(),
        weights_sha256: sha256_hex(&weights),
        training_digest: config.training_digest(),
        config: config.clone(),
    })
}

/// The opened train and test datasets.
struct Splits {
    train: Arc<dyn Dataset>,
    test: Arc<dyn Dataset>,
}

/// Opens the train split of `data` and the test split of `test_data` (or of `data`) and makes
/// sure they are different data.
fn open_splits(
    data: &Path,
    test_data: Option<&Path>,
    format: DataFormat,
    spec: InputSpec,
) -> Result<Splits, EvalError> {
    let open = |path: &Path, split: Split, name: &'static str| {
        open_dataset(path, format, split, spec).map_err(|source| EvalError::Data {
            path: path.into(),
            split: name,
            source: Box::new(source),
        })
    };
    let train = open(data, Split::Train, "train")?;
    let test = open(test_data.unwrap_or(data), Split::Test, "test")?;
    if train.fingerprint() == test.fingerprint() {
        return Err(EvalError::NoTestSplit(train.describe()));
    }
    Ok(Splits { train, test })
}

/// The train and test splits of an evaluation's data, read into memory.
pub(crate) struct ReadSplits {
    /// The train split as opened.
    pub train_set: Arc<dyn Dataset>,
    /// What was read from the train split, and its images.
    pub train: (SplitSummary, LabelledImages),
    /// What was read from the test split, and its images.
    pub test: (SplitSummary, LabelledImages),
}

/// Opens the train and test splits of `source` for input `spec` (see [`open_splits`]) and reads
/// `limit_train` train and `sampling.limit_test` test examples of them.
pub(crate) fn read_splits(
    source: &EvalSource,
    limit_train: Option<usize>,
    sampling: &Sampling,
    spec: InputSpec,
    progress: Progress,
) -> Result<ReadSplits, EvalError> {
    let Splits { train: train_set, test: test_set } =
        open_splits(&source.data, source.test_data.as_deref(), source.format, spec)?;
    let train = read_split(&*train_set, limit_train, sampling.seed, "reading train split", progress)?;
    let test = read_split(&*test_set, sampling.limit_test, sampling.seed, "reading test split", progress)?;
    Ok(ReadSplits { train_set, train, test })
}

/// Reads one split into memory with a progress bar.
pub(crate) fn read_split(
    dataset: &dyn Dataset,
    limit: Option<usize>,
    seed: u64,
    message: &str,
    progress: Progress,
) -> Result<(SplitSummary, LabelledImages), EvalError> {
    let bar = progress.bar(message.into());
    let images = read_labelled_images(dataset, limit, seed, &bar)?;
    bar.finish_and_clear();
    let summary = SplitSummary {
        description: dataset.describe(),
        fingerprint: dataset.fingerprint(),
        examples: images.indices.len(),
        skipped: images.skipped.clone(),
    };
    Ok((summary, images))
}

/// `time` as RFC 3339 in UTC, e.g. `2026-11-23T19:20:05Z` (days to civil date after Howard
/// Hinnant's public-domain algorithm, to avoid a date-time dependency for one field).
pub(crate) fn utc_timestamp(time: std::time::SystemTime) -> String {
    let seconds = time.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Writes an evaluation report as pretty JSON, atomically.
pub fn write_report_json(report: &impl Serialize, path: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(report).expect("reports serialise");
    dim_models::atomic_file::write_bytes_atomically(path, &json)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fit::checkpoint::save_checkpoint;
    use dim_models::checkpoint::CHECKPOINT_FORMAT_VERSION;
    use dim_models::preprocess::ResizePolicy;
    use dim_models::{EncoderConfig, Preset};

    /// Writes an uncompressed IDX pair: class 1 images have a bright top half, class 0 a bright
    /// bottom half, with varying brightness.
    pub(crate) fn write_idx(dir: &Path, prefix: &str, count: usize) {
        let side = 28usize;
        let mut images = Vec::new();
        for word in [0x0803u32, count as u32, side as u32, side as u32] {
            images.extend_from_slice(&word.to_be_bytes());
        }
        let mut labels = Vec::new();
        for word in [0x0801u32, count as u32] {
            labels.extend_from_slice(&word.to_be_bytes());
        }
        for index in 0..count {
            let label = (index % 2) as u8;
            labels.push(label);
            for row in 0..side {
                for column in 0..side {
                    let bright = (row < side / 2) == (label == 1);
                    let level = (index * 37 + row * 11 + column * 5) % 80;
                    images.push(if bright { 150 + level as u8 } else { level as u8 });
                }
            }
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }

    pub(crate) fn write_checkpoint(dir: &Path) {
        write_checkpoint_with_channels(dir, 1);
    }

    /// A seeded random basic32x32 checkpoint taking `channels` input channels.
    pub(crate) fn write_checkpoint_with_channels(dir: &Path, channels: usize) {
        let encoder = EncoderConfig::new(Preset::Basic32x32, channels).unwrap();
        let (store, _encoder) = random_encoder(encoder, 11, Device::Cpu);
        let config = CheckpointConfig {
            format_version: CHECKPOINT_FORMAT_VERSION,
            toolkit_version: dim_models::TOOLKIT_VERSION.into(),
            encoder,
            resize: ResizePolicy::Pad,
            background: dim_models::preprocess::Background::White,
            epoch: 0,
            step: 0,
            data_fingerprint: "generated".into(),
            training: serde_json::json!({"objective": "none"}),
        };
        save_checkpoint(dir, &store, &[], &config, vec![]).unwrap();
    }

    /// Writes `count` 10×10 PNGs per class folder, class `b` bright on top and `a` below.
    pub(crate) fn write_folder(root: &Path, count: u32) {
        for (class, bright_top) in [("a", false), ("b", true)] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for index in 0..count {
                let image = image::GrayImage::from_fn(10, 10, |_, y| {
                    let bright = (y < 5) == bright_top;
                    image::Luma([if bright { 200 + index as u8 } else { 20 + index as u8 }])
                });
                image.save(root.join(class).join(format!("{index}.png"))).unwrap();
            }
        }
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let at = |s: u64| utc_timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
