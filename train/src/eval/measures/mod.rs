//! The DIM paper's other measures of a representation, scored on frozen features: MS-SSIM of
//! images reconstructed from a tap ([`ms_ssim`]), a MINE estimate of I(X; Y) ([`mine`]) and the
//! neural dependency measure of Y's factors ([`ndm`]). This module holds what they share: the
//! run settings, reading a checkpoint, its baselines and the data splits once, the training
//! schedule of the measures' own small networks, and the JSON report.

pub mod mine;
pub mod ms_ssim;
pub mod ndm;

use crate::eval::features::{LabelledImages, Representation, standardise};
use crate::eval::harness::{
    Baseline, CheckpointSummary, EvalError, EvalSource, Extraction, Progress, ReadSplits, Sampling,
    SplitSummary, load_encoders, read_splits, utc_timestamp, write_report_json,
};
use crate::model::encoder::Encoder;
use dim_models::EncoderConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Which data a measure's run reads, and which models it scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasureSettings {
    /// The DIM checkpoint and the dataset: the measure's networks train on its train split and
    /// are scored on its test split.
    #[serde(flatten)]
    pub source: EvalSource,
    /// Encoder taps measured.
    pub taps: Vec<Representation>,
    /// Unlearned baselines measured beside the checkpoint.
    pub baselines: Vec<Baseline>,
    /// A supervised checkpoint (`dim-eval train-supervised`) measured as a further baseline.
    pub supervised: Option<PathBuf>,
    /// Train examples read (a seeded subset); all when `None`.
    pub limit_train: Option<usize>,
    /// The test subset, the seed of the subsets and the random encoder, and the
    /// feature-extraction batch size.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Minibatch schedule of a measure's own network (decoder, critic or discriminator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasureSchedule {
    /// Optimiser steps.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Adam learning rate (betas 0.5 and 0.999, as in the official DIM runs).
    pub learning_rate: f64,
    /// Seeds initialisation and batch order.
    pub seed: u64,
}

impl MeasureSchedule {
    /// Checks the schedule against a training set of `rows` examples.
    pub fn validate(&self, rows: usize) -> Result<(), MeasureError> {
        if self.steps == 0 {
            return Err(MeasureError::Option("steps must be at least 1".into()));
        }
        if self.batch_size < 2 {
            return Err(MeasureError::Option("the batch size must be at least 2".into()));
        }
        if self.batch_size > rows {
            return Err(MeasureError::Option(format!(
                "the batch size {} exceeds the {rows} training examples",
                self.batch_size
            )));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(MeasureError::Option(format!(
                "the learning rate must be positive, got {}",
                self.learning_rate
            )));
        }
        Ok(())
    }

    /// Adam over `store`'s variables at the schedule's learning rate.
    pub(crate) fn optimizer(&self, store: &tch::nn::VarStore) -> Result<tch::nn::Optimizer, MeasureError> {
        use tch::nn::OptimizerConfig;
        Ok(tch::nn::Adam { beta1: 0.5, beta2: 0.999, wd: 0.0, eps: 1e-8, amsgrad: false }
            .build(store, self.learning_rate)?)
    }

    /// Calls `step` with the row indices (CPU i64) of each of the schedule's batches: full
    /// batches of a reshuffled pass over `rows` examples, a new pass whenever one runs out (the
    /// official evaluation drops the last partial batch too). Seed tch first.
    pub(crate) fn for_each_batch(
        &self,
        rows: usize,
        progress: &indicatif::ProgressBar,
        mut step: impl FnMut(&Tensor) -> Result<(), MeasureError>,
    ) -> Result<(), MeasureError> {
        let (rows, batch) = (rows as i64, self.batch_size as i64);
        progress.set_length(self.steps as u64);
        let mut order = Tensor::randperm(rows, (Kind::Int64, Device::Cpu));
        let mut start = 0;
        for _ in 0..self.steps {
            if start + batch > rows {
                order = Tensor::randperm(rows, (Kind::Int64, Device::Cpu));
                start = 0;
            }
            step(&order.narrow(0, start, batch))?;
            start += batch;
            progress.inc(1);
        }
        Ok(())
    }
}

/// Why a measure could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// Loading the checkpoint, the data or the features failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The measure is undefined for a model or tap.
    #[error("{measure} does not apply to {what}: {why}")]
    NotApplicable {
        /// The measure.
        measure: &'static str,
        /// The model or tap.
        what: String,
        /// Why.
        why: &'static str,
    },
    /// Inputs disagree in shape.
    #[error("bad input: {0}")]
    Shape(String),
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Option(String),
    /// Training diverged.
    #[error("{0} became non-finite during training; lower the learning rate")]
    Diverged(&'static str),
    /// A measure failed on one model and tap.
    #[error("{measure} on {model}/{tap}")]
    Model {
        /// The measure.
        measure: &'static str,
        /// The model.
        model: String,
        /// The tap.
        tap: Representation,
        /// The cause.
        source: Box<MeasureError>,
    },
    /// libtorch reported an error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// The JSON report could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// One model's frozen features of one tap, with the images they came from.
#[derive(Debug)]
pub struct TapData<'a> {
    /// `[N_train, D]` f32 features, standardised with the train split's per-dimension mean and
    /// standard deviation (see [`run_measure`]).
    pub train_features: Tensor,
    /// `[N_test, D]` f32 features, standardised with the train split's statistics.
    pub test_features: Tensor,
    /// `[N_train, C, H, W]` images in [0, 1].
    pub train_images: &'a Tensor,
    /// `[N_test, C, H, W]` images in [0, 1].
    pub test_images: &'a Tensor,
    /// The checkpoint's encoder shape, which a measure's own image networks copy.
    pub encoder: EncoderConfig,
}

/// A measure's result on one model and tap: a name per column for the table, and its values.
pub trait MeasureScore: Serialize {
    /// Column headers, in the order of [`MeasureScore::values`].
    fn columns() -> &'static [&'static str];
    /// The values shown in the table.
    fn values(&self) -> Vec<f64>;
}

/// One measure on one tap of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasureEntry<S> {
    /// "checkpoint", "supervised", "random" or "raw".
    pub model: String,
    /// The tap measured.
    pub tap: Representation,
    /// Feature width.
    pub dims: usize,
    /// The result.
    pub score: S,
    /// Wall-clock seconds the measure took (feature extraction excluded).
    pub seconds: f64,
}

/// A finished measure run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasureReport<O, S> {
    /// "ms-ssim", "mine" or "ndm".
    pub measure: String,
    /// What was read and which models were measured.
    pub settings: MeasureSettings,
    /// The measure's own options (network, schedule).
    pub options: O,
    /// How the measure is computed, and where it departs from the official code.
    pub method: String,
    /// The checkpoint.
    pub checkpoint: CheckpointSummary,
    /// The supervised checkpoint, when one was measured.
    pub supervised: Option<CheckpointSummary>,
    /// The train split.
    pub train: SplitSummary,
    /// The test split.
    pub test: SplitSummary,
    /// Device the networks ran on.
    pub device: String,
    /// When the run finished (UTC, RFC 3339).
    pub date: String,
    /// Toolkit version.
    pub toolkit_version: String,
    /// Every result, in run order.
    pub entries: Vec<MeasureEntry<S>>,
}

impl<O: Serialize, S: MeasureScore> MeasureReport<O, S> {
    /// A plain-text table: one row per model/tap, one column per value of the score.
    pub fn table(&self) -> String {
        let labels: Vec<String> =
            self.entries.iter().map(|e| format!("{}/{} ({}d)", e.model, e.tap, e.dims)).collect();
        let first = labels.iter().map(String::len).chain(["model/tap".len()]).max().unwrap_or(0);
        let cells: Vec<Vec<String>> = self
            .entries
            .iter()
            .map(|e| e.score.values().iter().map(|v| format!("{v:.4}")).collect())
            .collect();
        let widths: Vec<usize> = S::columns()
            .iter()
            .enumerate()
            .map(|(i, c)| cells.iter().map(|row| row[i].len()).chain([c.len()]).max().unwrap_or(0))
            .collect();
        let mut out = format!("{:<first$}", "model/tap");
        for (column, width) in S::columns().iter().zip(&widths) {
            out.push_str(&format!("  {column:>width$}"));
        }
        out.push('\n');
        for (label, row) in labels.iter().zip(&cells) {
            out.push_str(&format!("{label:<first$}"));
            for (cell, width) in row.iter().zip(&widths) {
                out.push_str(&format!("  {cell:>width$}"));
            }
            out.push('\n');
        }
        out
    }

    /// Writes the report as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<(), MeasureError> {
        write_report_json(self, path).map_err(|source| MeasureError::Write { path: path.into(), source })
    }
}

/// How a measure presents itself to [`run_measure`]: its name, options and method note for the
/// report, and whether it refuses the raw-pixel baseline.
pub struct MeasureRun<'a, O> {
    /// Its name in reports and errors.
    pub name: &'static str,
    /// Its options, recorded in the report.
    pub options: &'a O,
    /// Its method note, recorded in the report.
    pub method: &'static str,
    /// Why raw pixels cannot be measured, if they cannot.
    pub raw_not_applicable: Option<&'static str>,
}

/// Reads the checkpoint, its baselines and the data once, then calls `measure` on every tap of
/// every model (checkpoint, supervised, random, raw pixels) and collects the report.
///
/// Features are standardised per dimension with the train split's statistics first. Mutual
/// information and total correlation are unchanged by such invertible per-dimension maps, and a
/// decoder's first linear layer absorbs them, so the measures' values are not altered; their
/// networks only train better than on features whose scale differs by orders of magnitude
/// between encoders.
pub fn run_measure<O: Clone + Serialize, S: MeasureScore>(
    settings: &MeasureSettings,
    run: MeasureRun<'_, O>,
    device: Device,
    progress: Progress,
    mut measure: impl FnMut(&TapData<'_>, &indicatif::ProgressBar) -> Result<S, MeasureError>,
) -> Result<MeasureReport<O, S>, MeasureError> {
    let taps: Vec<Representation> =
        settings.taps.iter().copied().filter(|&t| t != Representation::Pixels).collect();
    if let Some(why) = run.raw_not_applicable
        && settings.baselines.contains(&Baseline::Raw)
    {
        return Err(MeasureError::NotApplicable { measure: run.name, what: "raw pixels".into(), why });
    }
    if taps.is_empty() && !settings.baselines.contains(&Baseline::Raw) {
        return Err(MeasureError::Option("no encoder taps and no raw-pixel baseline selected".into()));
    }
    let models = load_encoders(&settings.source.checkpoint, settings.supervised.as_deref(), device)?;
    let encoder_config = models.config.encoder;
    let ReadSplits { train: (train_summary, train), test: (test_summary, test), .. } = read_splits(
        &settings.source,
        settings.limit_train,
        &settings.sampling,
        models.config.input_spec(),
        progress,
    )?;

    let extraction = Extraction { taps: &taps, batch_size: settings.sampling.batch_size, device, progress };
    let mut entries = Vec::new();
    let measure_model = |model: &str, encoder: Option<&Encoder>| -> Result<(), MeasureError> {
        let features =
            |images: &LabelledImages, split: &str| -> Result<Vec<(Representation, Tensor)>, MeasureError> {
                let features = extraction.features(encoder, images, || format!("{model} features, {split}"));
                Ok(features.map_err(EvalError::from)?)
            };
        for ((tap, train_features), (_, test_features)) in
            features(&train, "train")?.into_iter().zip(features(&test, "test")?)
        {
            let dims = train_features.size()[1] as usize;
            let (train_features, test_features) = standardise(&train_features, &test_features);
            let data = TapData {
                train_features,
                test_features,
                train_images: &train.images,
                test_images: &test.images,
                encoder: encoder_config,
            };
            let bar = progress.bar(format!("{} on {model}/{tap}", run.name));
            let started = Instant::now();
            let score = measure(&data, &bar).map_err(|source| MeasureError::Model {
                measure: run.name,
                model: model.into(),
                tap,
                source: Box::new(source),
            })?;
            bar.finish_and_clear();
            let seconds = started.elapsed().as_secs_f64();
            let shown: Vec<String> = S::columns()
                .iter()
                .zip(score.values())
                .map(|(column, value)| format!("{column} {value:.4}"))
                .collect();
            progress.note(format!("{model}/{tap} {}: {} ({seconds:.1} s)", run.name, shown.join(", ")));
            entries.push(MeasureEntry { model: model.into(), tap, dims, score, seconds });
        }
        Ok(())
    };

    models.for_each_model(&taps, &settings.baselines, settings.sampling.seed, device, measure_model)?;

    Ok(MeasureReport {
        measure: run.name.into(),
        settings: settings.clone(),
        options: run.options.clone(),
        method: run.method.into(),
        checkpoint: models.checkpoint,
        supervised: models.supervised.map(|(_, _, summary)| summary),
        train: train_summary,
        test: test_summary,
        device: format!("{device:?}"),
        date: utc_timestamp(std::time::SystemTime::now()),
        toolkit_version: dim_models::TOOLKIT_VERSION.into(),
        entries,
    })
}

/// Rows per forward pass when a trained measure network scores a whole split.
pub(crate) const SCORING_CHUNK: i64 = 1024;

/// Applies `forward` to `rows` of `inputs` in chunks on `device` without gradients and
/// concatenates the results on the CPU.
pub(crate) fn forward_in_chunks(
    inputs: &Tensor,
    device: Device,
    forward: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    let _guard = tch::no_grad_guard();
    let rows = inputs.size()[0];
    let mut parts = Vec::new();
    let mut start = 0;
    while start < rows {
        let len = SCORING_CHUNK.min(rows - start);
        parts.push(forward(&inputs.narrow(0, start, len).to_device(device)).to_device(Device::Cpu));
        start += len;
    }
    Tensor::cat(&parts, 0)
}

/// Fails with [`MeasureError::Diverged`] when `loss` is not finite.
pub(crate) fn ensure_finite(loss: &Tensor, what: &'static str) -> Result<(), MeasureError> {
    if loss.isfinite().all().int64_value(&[]) == 1 { Ok(()) } else { Err(MeasureError::Diverged(what)) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::mine::{MineOptions, image_mine_score};
    use super::ms_ssim::{METHOD, MsSsimOptions, reconstruction_score};
    use super::ndm::{NdmOptions, feature_ndm_score};
    use super::*;
    use dim_models::tap::Tap;

    /// One libtorch thread for the measures' tiny networks: they gain nothing from intra-op
    /// parallelism, and on a busy two-core machine spin-waiting workers slow them tenfold.
    pub(crate) fn single_threaded() {
        tch::set_num_threads(1);
    }
    use crate::data::DataFormat;
    use crate::eval::harness::tests::{write_checkpoint, write_checkpoint_with_channels, write_idx};

    pub(crate) fn settings(
        dir: &Path,
        taps: Vec<Representation>,
        baselines: Vec<Baseline>,
    ) -> MeasureSettings {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        write_idx(&data, "train", 64);
        write_idx(&data, "t10k", 24);
        let checkpoint = dir.join("checkpoint");
        write_checkpoint(&checkpoint);
        MeasureSettings {
            source: EvalSource { checkpoint, data, test_data: None, format: DataFormat::Auto },
            taps,
            baselines,
            supervised: None,
            limit_train: None,
            sampling: Sampling { limit_test: Some(16), seed: 0, batch_size: 32 },
        }
    }

    fn quick_decoder() -> MsSsimOptions {
        MsSsimOptions {
            schedule: MeasureSchedule { steps: 40, batch_size: 16, learning_rate: 3e-3, seed: 0 },
            width: 16,
        }
    }

    #[test]
    fn ms_ssim_runs_on_every_model_and_the_json_reads_back() {
        single_threaded();
        let dir = tempfile::tempdir().unwrap();
        let mut settings =
            settings(dir.path(), vec![Representation::Tap(Tap::Y)], vec![Baseline::Raw, Baseline::Random]);
        let supervised = dir.path().join("supervised");
        write_checkpoint(&supervised);
        settings.supervised = Some(supervised);
        let options = quick_decoder();
        let run = MeasureRun { name: "ms-ssim", options: &options, method: METHOD, raw_not_applicable: None };
        let report = run_measure(&settings, run, Device::Cpu, Progress { visible: false }, |data, bar| {
            reconstruction_score(data, &options, Device::Cpu, bar)
        })
        .unwrap();
        assert_eq!((report.train.examples, report.test.examples), (64, 16));
        let rows: Vec<(&str, Representation, usize)> =
            report.entries.iter().map(|e| (e.model.as_str(), e.tap, e.dims)).collect();
        assert_eq!(
            rows,
            [
                ("checkpoint", Representation::Tap(Tap::Y), 64),
                ("supervised", Representation::Tap(Tap::Y), 64),
                ("random", Representation::Tap(Tap::Y), 64),
                ("raw", Representation::Pixels, 1024),
            ]
        );
        for entry in &report.entries {
            let score = &entry.score;
            assert!(score.ms_ssim > 0.0 && score.ms_ssim < 1.0 && score.ssim < 1.0, "{entry:?}");
            assert_eq!(score.scales, 5);
        }
        // 40 steps from the pixels themselves already beat a blank grey guess (MSE 0.1 or more
        // on these half-bright images).
        let raw = report.entries.last().unwrap();
        assert!(raw.score.mse < 0.08, "{raw:?}");
        let table = report.table();
        assert_eq!(table.lines().count(), 1 + 4, "{table}");
        assert!(table.lines().next().unwrap().contains("ms-ssim"));

        let json = dir.path().join("out").join("ms-ssim.json");
        report.write_json(&json).unwrap();
        let read: MeasureReport<MsSsimOptions, ms_ssim::MsSsimScore> =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(
            (&read.settings, &read.options, &read.checkpoint),
            (&report.settings, &options, &report.checkpoint)
        );
        assert_eq!(read.entries.len(), report.entries.len());
        for (read, written) in read.entries.iter().zip(&report.entries) {
            assert_eq!(
                (&read.model, read.tap, read.score.scales),
                (&written.model, written.tap, written.score.scales)
            );
            let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
            assert!(
                close(read.score.ms_ssim, written.score.ms_ssim) && close(read.score.mse, written.score.mse)
            );
        }
    }

    #[test]
    fn a_supervised_checkpoint_of_another_input_and_a_missing_checkpoint_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(dir.path(), vec![Representation::Tap(Tap::Y)], vec![]);
        let supervised = dir.path().join("supervised");
        write_checkpoint_with_channels(&supervised, 3);
        settings.supervised = Some(supervised);
        let options = quick_decoder();
        let run =
            || MeasureRun { name: "ms-ssim", options: &options, method: METHOD, raw_not_applicable: None };
        let measure = |data: &TapData<'_>, bar: &indicatif::ProgressBar| {
            reconstruction_score(data, &options, Device::Cpu, bar)
        };
        let err =
            run_measure(&settings, run(), Device::Cpu, Progress { visible: false }, measure).unwrap_err();
        assert!(matches!(err, MeasureError::Eval(EvalError::SupervisedInput { .. })), "{err}");

        settings.supervised = None;
        settings.source.checkpoint = dir.path().join("nowhere");
        let err =
            run_measure(&settings, run(), Device::Cpu, Progress { visible: false }, measure).unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
    }

    #[test]
    fn mine_runs_on_the_checkpoint_and_the_random_encoder_and_refuses_raw_pixels() {
        single_threaded();
        let dir = tempfile::tempdir().unwrap();
        let mut settings =
            settings(dir.path(), vec![Representation::Tap(Tap::Y)], vec![Baseline::Random, Baseline::Raw]);
        let options = MineOptions {
            schedule: MeasureSchedule { steps: 10, batch_size: 16, learning_rate: 1e-3, seed: 0 },
            units: 32,
        };
        let run = || MeasureRun {
            name: "mine",
            options: &options,
            method: mine::METHOD,
            raw_not_applicable: Some("I(X; X) is infinite"),
        };
        let measure = |data: &TapData<'_>, bar: &indicatif::ProgressBar| {
            image_mine_score(data, &options, Device::Cpu, bar)
        };
        let err =
            run_measure(&settings, run(), Device::Cpu, Progress { visible: false }, measure).unwrap_err();
        assert!(matches!(err, MeasureError::NotApplicable { .. }), "{err}");
        assert!(err.to_string().contains("raw pixels"), "{err}");

        settings.baselines = vec![Baseline::Random];
        let report =
            run_measure(&settings, run(), Device::Cpu, Progress { visible: false }, measure).unwrap();
        let rows: Vec<(&str, Representation)> =
            report.entries.iter().map(|e| (e.model.as_str(), e.tap)).collect();
        assert_eq!(
            rows,
            [("checkpoint", Representation::Tap(Tap::Y)), ("random", Representation::Tap(Tap::Y))]
        );
        assert!(report.entries.iter().all(|e| e.score.mi.is_finite() && e.score.train_mi.is_finite()));
        assert_eq!(report.measure, "mine");
    }

    #[test]
    fn ndm_runs_on_the_checkpoint_and_raw_pixels() {
        single_threaded();
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), vec![Representation::Tap(Tap::Y)], vec![Baseline::Raw]);
        let options = NdmOptions {
            schedule: MeasureSchedule { steps: 5, batch_size: 32, learning_rate: 1e-4, seed: 0 },
        };
        let run =
            MeasureRun { name: "ndm", options: &options, method: ndm::METHOD, raw_not_applicable: None };
        let report = run_measure(&settings, run, Device::Cpu, Progress { visible: false }, |data, bar| {
            feature_ndm_score(data, &options, Device::Cpu, bar)
        })
        .unwrap();
        let rows: Vec<(&str, Representation, usize)> =
            report.entries.iter().map(|e| (e.model.as_str(), e.tap, e.dims)).collect();
        assert_eq!(
            rows,
            [("checkpoint", Representation::Tap(Tap::Y), 64), ("raw", Representation::Pixels, 1024)]
        );
        assert!(report.entries.iter().all(|e| e.score.ndm.is_finite() && e.score.kl.is_finite()));
        assert!(report.table().lines().next().unwrap().contains("ndm"));
    }
}
