//! The probe evaluation behind `dim-eval`: reads a checkpoint's encoder and a labelled dataset's
//! train and test splits, extracts features per tap for the checkpoint and for the baselines
//! (raw pixels, a randomly initialised encoder), runs every requested probe on every tap, and
//! reports a table and a JSON file.

use crate::checkpoint::{CheckpointIoError, load_encoder};
use crate::data::{DataError, DataFormat, Dataset, Split, open_dataset};
use crate::encoder::Encoder;
use crate::features::{
    FeatureError, LabelledImages, SkippedExample, Tap, encoder_features, pixel_features, random_encoder,
    read_labelled_images,
};
use crate::probes::knn::{KnnOptions, knn_probe};
use crate::probes::linear::train_linear_probe;
use crate::probes::mlp::{MlpRecipe, train_mlp_probe};
use crate::probes::{ProbeData, ProbeError, ProbeKind, ProbeScore, TrainingSchedule};
use dim_models::checkpoint::{CheckpointConfig, WEIGHTS_FILE, sha256_hex};
use dim_models::preprocess::InputSpec;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
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

/// Everything a probe run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// Checkpoint directory.
    pub checkpoint: PathBuf,
    /// Dataset (its train and test splits are used).
    pub data: PathBuf,
    /// A separate dataset for the test split, for sources without one (image folders).
    pub test_data: Option<PathBuf>,
    /// Dataset format.
    #[serde(with = "data_format_name")]
    pub format: DataFormat,
    /// Probes to run, in table column order.
    pub probes: Vec<ProbeKind>,
    /// Encoder taps to probe.
    pub taps: Vec<Tap>,
    /// Baselines evaluated beside the checkpoint.
    pub baselines: Vec<Baseline>,
    /// Read at most this many training examples (a seeded random subset).
    pub limit_train: Option<usize>,
    /// Read at most this many test examples (a seeded random subset).
    pub limit_test: Option<usize>,
    /// Seeds the subsets, the random encoder and every probe.
    pub seed: u64,
    /// Images per encoder forward pass during feature extraction.
    pub batch_size: usize,
    /// Linear probe schedule.
    pub linear: TrainingSchedule,
    /// MLP probe recipe: its protocol, architecture, optimiser and schedule.
    pub mlp: MlpRecipe,
    /// k-NN settings.
    pub knn: KnnOptions,
}

/// Serde for [`DataFormat`] by its command-line name, so the JSON says `"idx"`, not a debug name.
pub(crate) mod data_format_name {
    use crate::data::DataFormat;
    use clap::ValueEnum;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(format: &DataFormat, serializer: S) -> Result<S::Ok, S::Error> {
        let value = format.to_possible_value().expect("every data format has a name");
        serializer.serialize_str(value.get_name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DataFormat, D::Error> {
        let name = String::deserialize(deserializer)?;
        DataFormat::from_str(&name, true).map_err(D::Error::custom)
    }
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
        tap: Tap,
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
        tap: Tap,
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

/// One probe on one tap of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeEntry {
    /// "checkpoint", "random" or "raw".
    pub model: String,
    /// The tap probed.
    pub tap: Tap,
    /// The probe.
    pub probe: ProbeKind,
    /// Test accuracy in [0, 1].
    pub test_accuracy: f64,
    /// Train accuracy in [0, 1], for trained probes.
    pub train_accuracy: Option<f64>,
    /// Feature width.
    pub dims: usize,
    /// Wall-clock seconds the probe took (feature extraction excluded).
    pub seconds: f64,
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

/// A finished evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The settings it ran with.
    pub settings: EvalSettings,
    /// The MLP probe's recipe in one line, and where its protocol's settings come from.
    pub mlp_protocol_note: String,
    /// The checkpoint.
    pub checkpoint: CheckpointSummary,
    /// The train split.
    pub train: SplitSummary,
    /// The test split.
    pub test: SplitSummary,
    /// Number of classes.
    pub num_classes: usize,
    /// Device the encoders and probes ran on.
    pub device: String,
    /// When the evaluation finished (UTC, RFC 3339).
    pub date: String,
    /// Toolkit version.
    pub toolkit_version: String,
    /// Every result, in run order.
    pub entries: Vec<ProbeEntry>,
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

/// The evaluated models' features for one split: (model, tap, `[N, D]`).
type ModelFeatures = Vec<(String, Tap, Tensor)>;

/// Runs the evaluation described by `settings` on `device`.
pub fn evaluate(
    settings: &EvalSettings,
    device: Device,
    progress: Progress,
) -> Result<EvalReport, EvalError> {
    if settings.probes.is_empty() {
        return Err(EvalError::Nothing("no probes selected".into()));
    }
    let taps: Vec<Tap> = settings.taps.iter().copied().filter(|&t| t != Tap::Pixels).collect();
    if taps.is_empty() && !settings.baselines.contains(&Baseline::Raw) {
        return Err(EvalError::Nothing("no encoder taps and no raw-pixel baseline selected".into()));
    }
    let checkpoint_error = |source| EvalError::Checkpoint { path: settings.checkpoint.clone(), source };
    let (_store, encoder, config) = load_encoder(&settings.checkpoint, device).map_err(checkpoint_error)?;
    let checkpoint = checkpoint_summary(&settings.checkpoint, &config)?;

    let spec = config.input_spec();
    let Splits { train: train_set, test: test_set } =
        open_splits(&settings.data, settings.test_data.as_deref(), settings.format, spec)?;
    let train =
        read_split(&*train_set, settings.limit_train, settings.seed, "reading train split", progress)?;
    let test = read_split(&*test_set, settings.limit_test, settings.seed, "reading test split", progress)?;
    let num_classes = [&train.1, &test.1]
        .iter()
        .map(|images| images.labels.max().int64_value(&[]) as usize + 1)
        .chain(train_set.num_classes())
        .max()
        .expect("the list is not empty");

    let mut entries = Vec::new();
    let mut run_model = |model: &str, train_features: ModelFeatures, test_features: ModelFeatures| {
        for ((_, tap, train_x), (_, _, test_x)) in train_features.into_iter().zip(test_features) {
            let (train_y, test_y) = (train.1.labels.shallow_clone(), test.1.labels.shallow_clone());
            let raw = ProbeData::new(train_x, train_y, test_x, test_y, num_classes)
                .map_err(|source| EvalError::ProbeInput { model: model.into(), tap, source })?;
            // Every probe reads standardised features except an MLP whose protocol reads the
            // encoder's activations as they are (the official code's classifier).
            let reads_raw = |probe: ProbeKind| probe == ProbeKind::Mlp && !settings.mlp.standardise_features;
            let standardised = settings.probes.iter().any(|&p| !reads_raw(p)).then(|| raw.standardised());
            for &probe in &settings.probes {
                let data = match &standardised {
                    Some(standardised) if !reads_raw(probe) => standardised,
                    _ => &raw,
                };
                let bar = progress.bar(format!("{probe} probe on {model}/{tap}"));
                let started = Instant::now();
                let score = run_probe(probe, data, settings, device, &bar)
                    .map_err(|source| EvalError::Probe { model: model.into(), tap, probe, source })?;
                bar.finish_and_clear();
                let seconds = started.elapsed().as_secs_f64();
                progress.note(format!(
                    "{model}/{tap} {probe}: test accuracy {:.2}% ({seconds:.1} s)",
                    100.0 * score.test_accuracy
                ));
                entries.push(ProbeEntry {
                    model: model.into(),
                    tap,
                    probe,
                    test_accuracy: score.test_accuracy,
                    train_accuracy: score.train_accuracy,
                    dims: data.dims(),
                    seconds,
                });
            }
        }
        Ok::<(), EvalError>(())
    };

    if !taps.is_empty() {
        let features = |images: &LabelledImages, split: &str| {
            let bar = progress.bar(format!("checkpoint features, {split}"));
            let result = encoder_features(&encoder, &images.images, &taps, settings.batch_size, device, &bar);
            bar.finish_and_clear();
            result.map(|f| f.into_iter().map(|(tap, x)| ("checkpoint".to_string(), tap, x)).collect())
        };
        run_model("checkpoint", features(&train.1, "train")?, features(&test.1, "test")?)?;
    }
    for baseline in baselines_in_order(&settings.baselines) {
        match baseline {
            Baseline::Random if !taps.is_empty() => {
                let (_random_store, random) = random_encoder(config.encoder, settings.seed, device);
                let features = |images: &LabelledImages, split: &str| {
                    let bar = progress.bar(format!("random-encoder features, {split}"));
                    let result =
                        encoder_features(&random, &images.images, &taps, settings.batch_size, device, &bar);
                    bar.finish_and_clear();
                    result.map(|f| f.into_iter().map(|(tap, x)| ("random".to_string(), tap, x)).collect())
                };
                run_model("random", features(&train.1, "train")?, features(&test.1, "test")?)?;
            }
            Baseline::Random => {}
            Baseline::Raw => {
                let pixels = |images: &LabelledImages| {
                    vec![("raw".to_string(), Tap::Pixels, pixel_features(&images.images))]
                };
                run_model("raw", pixels(&train.1), pixels(&test.1))?;
            }
        }
    }

    Ok(EvalReport {
        settings: settings.clone(),
        mlp_protocol_note: format!(
            "{}. Source: {}.",
            settings.mlp.describe(),
            settings.mlp.protocol.source()
        ),
        checkpoint,
        train: train.0,
        test: test.0,
        num_classes,
        device: format!("{device:?}"),
        date: utc_timestamp(std::time::SystemTime::now()),
        toolkit_version: dim_models::TOOLKIT_VERSION.into(),
        entries,
    })
}

/// The encoder under evaluation and, when asked for, a supervised baseline taking the same input.
pub(crate) struct LoadedEncoders {
    /// The evaluated checkpoint's variables (kept alive with its encoder).
    pub store: nn::VarStore,
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
    Ok(LoadedEncoders { store, encoder, config, checkpoint: summary, supervised })
}

/// The identity of the checkpoint in `dir`, whose config has been read as `config`.
pub(crate) fn checkpoint_summary(
    dir: &Path,
    config: &CheckpointConfig,
) -> Result<CheckpointSummary, EvalError> {
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

/// Random before raw, whatever order they were asked in, so the table reads from learned to
/// unlearned representations.
fn baselines_in_order(baselines: &[Baseline]) -> Vec<Baseline> {
    let mut ordered = baselines.to_vec();
    ordered.sort_by_key(|b| match b {
        Baseline::Random => 0,
        Baseline::Raw => 1,
    });
    ordered.dedup();
    ordered
}

/// The opened train and test datasets.
pub(crate) struct Splits {
    pub(crate) train: Arc<dyn Dataset>,
    pub(crate) test: Arc<dyn Dataset>,
}

/// Opens the train split of `data` and the test split of `test_data` (or of `data`) and makes
/// sure they are different data.
pub(crate) fn open_splits(
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

fn run_probe(
    probe: ProbeKind,
    data: &ProbeData,
    settings: &EvalSettings,
    device: Device,
    bar: &ProgressBar,
) -> Result<ProbeScore, ProbeError> {
    match probe {
        ProbeKind::Linear => train_linear_probe(data, &settings.linear, device, bar),
        ProbeKind::Mlp => train_mlp_probe(data, &settings.mlp, device, bar),
        ProbeKind::Knn => knn_probe(data, &settings.knn, device, bar),
    }
}

impl EvalReport {
    /// A plain-text table: one row per model/tap, one column per probe, cells "test% (train%)".
    pub fn table(&self) -> String {
        let probes = &self.settings.probes;
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        for entry in &self.entries {
            let label = format!("{}/{} ({}d)", entry.model, entry.tap, entry.dims);
            let index = match rows.iter().position(|(l, _)| *l == label) {
                Some(index) => index,
                None => {
                    rows.push((label, vec!["-".to_string(); probes.len()]));
                    rows.len() - 1
                }
            };
            let column =
                probes.iter().position(|&p| p == entry.probe).expect("entries use the selected probes");
            rows[index].1[column] = match entry.train_accuracy {
                Some(train) => format!("{:.2} ({:.2})", 100.0 * entry.test_accuracy, 100.0 * train),
                None => format!("{:.2}", 100.0 * entry.test_accuracy),
            };
        }
        let first_width = rows.iter().map(|(l, _)| l.len()).chain(["model/tap".len()]).max().unwrap_or(0);
        let widths: Vec<usize> = probes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                rows.iter().map(|(_, cells)| cells[i].len()).chain([p.name().len()]).max().unwrap_or(0)
            })
            .collect();
        let mut out = format!("{:<first_width$}", "model/tap");
        for (probe, width) in probes.iter().zip(&widths) {
            out.push_str(&format!("  {:>width$}", probe.name()));
        }
        out.push('\n');
        for (label, cells) in &rows {
            out.push_str(&format!("{label:<first_width$}"));
            for (cell, width) in cells.iter().zip(&widths) {
                out.push_str(&format!("  {cell:>width$}"));
            }
            out.push('\n');
        }
        out.push_str("test accuracy % (train accuracy % for trained probes)\n");
        if probes.contains(&ProbeKind::Mlp) {
            out.push_str(&self.settings.mlp.describe());
            out.push('\n');
        }
        out
    }

    /// Writes the report as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<(), EvalError> {
        let json = serde_json::to_vec_pretty(self).expect("reports serialise");
        dim_models::atomic_file::write_bytes_atomically(path, &json)
            .map_err(|source| EvalError::Write { path: path.into(), source })
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checkpoint::save_checkpoint;
    use crate::probes::knn::Vote;
    use crate::probes::mlp::MlpProtocol;
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

    fn quick(schedule: TrainingSchedule) -> TrainingSchedule {
        TrainingSchedule { epochs: 3, batch_size: 16, lr_drop_epochs: vec![], ..schedule }
    }

    #[test]
    fn every_probe_runs_on_every_tap_and_baseline_and_the_json_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        write_idx(&data, "train", 48);
        write_idx(&data, "t10k", 20);
        let checkpoint = dir.path().join("checkpoint");
        write_checkpoint(&checkpoint);
        let settings = EvalSettings {
            checkpoint,
            data,
            test_data: None,
            format: DataFormat::Auto,
            probes: vec![ProbeKind::Linear, ProbeKind::Mlp, ProbeKind::Knn],
            taps: vec![Tap::Conv, Tap::Fc, Tap::Y],
            baselines: vec![Baseline::Raw, Baseline::Random],
            limit_train: Some(40),
            limit_test: None,
            seed: 0,
            batch_size: 16,
            linear: quick(crate::probes::linear::default_schedule()),
            // The paper's MLP reads raw features while the other probes read standardised ones.
            mlp: MlpRecipe {
                schedule: quick(MlpProtocol::Paper.recipe(0).schedule),
                ..MlpProtocol::Paper.recipe(0)
            },
            knn: KnnOptions { k: 5, vote: Vote::Majority, chunk_rows: 8 },
        };
        let report = evaluate(&settings, Device::Cpu, Progress { visible: false }).unwrap();
        assert_eq!((report.train.examples, report.test.examples), (40, 20));
        assert_eq!(report.entries.len(), (3 + 3 + 1) * 3);
        let rows: Vec<(&str, Tap, usize)> =
            report.entries.iter().step_by(3).map(|e| (e.model.as_str(), e.tap, e.dims)).collect();
        assert_eq!(
            rows,
            [
                ("checkpoint", Tap::Conv, 4096),
                ("checkpoint", Tap::Fc, 1024),
                ("checkpoint", Tap::Y, 64),
                ("random", Tap::Conv, 4096),
                ("random", Tap::Fc, 1024),
                ("random", Tap::Y, 64),
                ("raw", Tap::Pixels, 1024),
            ]
        );
        // The two classes differ in which half is bright: raw pixels separate them.
        let raw_knn = report.entries.iter().find(|e| e.model == "raw" && e.probe == ProbeKind::Knn).unwrap();
        assert!(raw_knn.test_accuracy > 0.9, "{raw_knn:?}");
        assert!(report.entries.iter().all(|e| (e.probe == ProbeKind::Knn) == e.train_accuracy.is_none()));
        assert_eq!(report.checkpoint.weights_sha256.len(), 64);

        let table = report.table();
        assert_eq!(table.lines().count(), 1 + 7 + 2, "{table}");
        assert!(
            table.contains("mlp probe, paper protocol: Linear-200 then Dropout, BatchNorm, ReLU"),
            "{table}"
        );
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(header, ["model/tap", "linear", "mlp", "knn"]);
        assert!(table.contains("raw/pixels (1024d)"), "{table}");

        let json = dir.path().join("out").join("results.json");
        report.write_json(&json).unwrap();
        let read: EvalReport = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(read, report);
        let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(value["settings"]["format"], "auto");
        assert_eq!(value["entries"][0]["probe"], "linear");
        assert_eq!(value["settings"]["mlp"]["protocol"], "paper");
        assert_eq!(value["settings"]["mlp"]["standardise_features"], false);
        assert!(value["mlp_protocol_note"].as_str().unwrap().contains("rdevon/DIM"), "{value}");
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
    fn an_image_folder_needs_a_separate_test_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (train, test) = (dir.path().join("train"), dir.path().join("test"));
        write_folder(&train, 6);
        write_folder(&test, 3);
        let checkpoint = dir.path().join("checkpoint");
        write_checkpoint(&checkpoint);
        let mut settings = EvalSettings {
            checkpoint,
            data: train,
            test_data: None,
            format: DataFormat::Folder,
            probes: vec![ProbeKind::Knn],
            taps: vec![Tap::Y],
            baselines: vec![Baseline::Raw],
            limit_train: None,
            limit_test: None,
            seed: 0,
            batch_size: 4,
            linear: crate::probes::linear::default_schedule(),
            mlp: MlpProtocol::Fast.recipe(0),
            knn: KnnOptions { k: 3, ..KnnOptions::default() },
        };
        let err = evaluate(&settings, Device::Cpu, Progress { visible: false }).unwrap_err();
        assert!(matches!(err, EvalError::NoTestSplit(_)), "{err}");
        assert!(err.to_string().contains("--test-data"), "{err}");

        settings.test_data = Some(test);
        let report = evaluate(&settings, Device::Cpu, Progress { visible: false }).unwrap();
        assert_eq!((report.train.examples, report.test.examples, report.num_classes), (12, 6, 2));
        let raw = report.entries.iter().find(|e| e.model == "raw").unwrap();
        assert_eq!(raw.test_accuracy, 1.0, "{raw:?}");
    }

    #[test]
    fn a_missing_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EvalSettings {
            checkpoint: dir.path().join("nowhere"),
            data: dir.path().into(),
            test_data: None,
            format: DataFormat::Auto,
            probes: vec![ProbeKind::Knn],
            taps: vec![Tap::Y],
            baselines: vec![],
            limit_train: None,
            limit_test: None,
            seed: 0,
            batch_size: 16,
            linear: crate::probes::linear::default_schedule(),
            mlp: MlpProtocol::Fast.recipe(0),
            knn: KnnOptions::default(),
        };
        let err = evaluate(&settings, Device::Cpu, Progress { visible: false }).unwrap_err();
        assert!(matches!(err, EvalError::Checkpoint { .. }), "{err}");
        assert!(err.to_string().contains("nowhere"), "{err}");
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let at = |s: u64| utc_timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
