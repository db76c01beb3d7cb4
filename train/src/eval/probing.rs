//! The probe evaluation behind `dim-eval`: reads a checkpoint's encoder and a labelled dataset's
//! train and test splits, extracts features per tap for the checkpoint and for the baselines
//! (raw pixels, a randomly initialised encoder), runs every requested probe on every tap, and
//! reports a table and a JSON file.

use crate::eval::features::Representation;
use crate::eval::harness::{
    Baseline, CheckpointSummary, EvalError, EvalSource, Extraction, LoadedEncoders, Progress, ReadSplits,
    Sampling, SplitSummary, load_encoders, read_splits, utc_timestamp, write_report_json,
};
use crate::eval::probes::knn::{KnnOptions, knn_probe};
use crate::eval::probes::linear::train_linear_probe;
use crate::eval::probes::mlp::{MlpRecipe, train_mlp_probe};
use crate::eval::probes::{ProbeData, ProbeError, ProbeKind, ProbeScore, TrainingSchedule};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::Device;

/// Everything a probe run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// The checkpoint and the dataset (its train and test splits are used).
    #[serde(flatten)]
    pub source: EvalSource,
    /// Probes to run, in table column order.
    pub probes: Vec<ProbeKind>,
    /// Encoder taps to probe.
    pub taps: Vec<Representation>,
    /// Baselines evaluated beside the checkpoint.
    pub baselines: Vec<Baseline>,
    /// Read at most this many training examples (a seeded random subset).
    pub limit_train: Option<usize>,
    /// The test subset, the seed of the subsets, the random encoder and every probe, and the
    /// feature-extraction batch size.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Linear probe schedule.
    pub linear: TrainingSchedule,
    /// MLP probe recipe: its protocol, architecture, optimiser and schedule.
    pub mlp: MlpRecipe,
    /// k-NN settings.
    pub knn: KnnOptions,
}

/// One probe on one tap of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeEntry {
    /// "checkpoint", "random" or "raw".
    pub model: String,
    /// The tap probed.
    pub tap: Representation,
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

/// Runs the evaluation described by `settings` on `device`.
pub fn evaluate(
    settings: &EvalSettings,
    device: Device,
    progress: Progress,
) -> Result<EvalReport, EvalError> {
    if settings.probes.is_empty() {
        return Err(EvalError::Nothing("no probes selected".into()));
    }
    let taps: Vec<Representation> =
        settings.taps.iter().copied().filter(|&t| t != Representation::Pixels).collect();
    if taps.is_empty() && !settings.baselines.contains(&Baseline::Raw) {
        return Err(EvalError::Nothing("no encoder taps and no raw-pixel baseline selected".into()));
    }
    let models = load_encoders(&settings.source.checkpoint, None, device)?;
    let ReadSplits { train_set, train, test } = read_splits(
        &settings.source,
        settings.limit_train,
        &settings.sampling,
        models.config.input_spec(),
        progress,
    )?;
    let num_classes = [&train.1, &test.1]
        .iter()
        .map(|images| images.labels.max().int64_value(&[]) as usize + 1)
        .chain(train_set.num_classes())
        .max()
        .expect("the list is not empty");

    let extraction = Extraction { taps: &taps, batch_size: settings.sampling.batch_size, device, progress };
    let mut entries = Vec::new();
    let probe_model = |model: &str, encoder: Option<&_>| {
        let shown = if model == "random" { "random-encoder" } else { model };
        let features = |images, split: &str| {
            extraction.features(encoder, images, || format!("{shown} features, {split}"))
        };
        let (train_features, test_features) = (features(&train.1, "train")?, features(&test.1, "test")?);
        for ((tap, train_x), (_, test_x)) in train_features.into_iter().zip(test_features) {
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
    models.for_each_model(&taps, &settings.baselines, settings.sampling.seed, device, probe_model)?;
    let LoadedEncoders { checkpoint, .. } = models;

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
        write_report_json(self, path).map_err(|source| EvalError::Write { path: path.into(), source })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::DataFormat;
    use crate::eval::harness::tests::{write_checkpoint, write_folder, write_idx};
    use crate::eval::probes::knn::Vote;
    use crate::eval::probes::mlp::MlpProtocol;
    use dim_models::tap::Tap;

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
            source: EvalSource { checkpoint, data, test_data: None, format: DataFormat::Auto },
            probes: vec![ProbeKind::Linear, ProbeKind::Mlp, ProbeKind::Knn],
            taps: vec![
                Representation::Tap(Tap::Conv),
                Representation::Tap(Tap::Fc),
                Representation::Tap(Tap::Y),
            ],
            baselines: vec![Baseline::Raw, Baseline::Random],
            limit_train: Some(40),
            sampling: Sampling { limit_test: None, seed: 0, batch_size: 16 },
            linear: quick(crate::eval::probes::linear::default_schedule()),
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
        let rows: Vec<(&str, Representation, usize)> =
            report.entries.iter().step_by(3).map(|e| (e.model.as_str(), e.tap, e.dims)).collect();
        assert_eq!(
            rows,
            [
                ("checkpoint", Representation::Tap(Tap::Conv), 4096),
                ("checkpoint", Representation::Tap(Tap::Fc), 1024),
                ("checkpoint", Representation::Tap(Tap::Y), 64),
                ("random", Representation::Tap(Tap::Conv), 4096),
                ("random", Representation::Tap(Tap::Fc), 1024),
                ("random", Representation::Tap(Tap::Y), 64),
                ("raw", Representation::Pixels, 1024),
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

    #[test]
    fn an_image_folder_needs_a_separate_test_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (train, test) = (dir.path().join("train"), dir.path().join("test"));
        write_folder(&train, 6);
        write_folder(&test, 3);
        let checkpoint = dir.path().join("checkpoint");
        write_checkpoint(&checkpoint);
        let mut settings = EvalSettings {
            source: EvalSource { checkpoint, data: train, test_data: None, format: DataFormat::Folder },
            probes: vec![ProbeKind::Knn],
            taps: vec![Representation::Tap(Tap::Y)],
            baselines: vec![Baseline::Raw],
            limit_train: None,
            sampling: Sampling { limit_test: None, seed: 0, batch_size: 4 },
            linear: crate::eval::probes::linear::default_schedule(),
            mlp: MlpProtocol::Fast.recipe(0),
            knn: KnnOptions { k: 3, ..KnnOptions::default() },
        };
        let err = evaluate(&settings, Device::Cpu, Progress { visible: false }).unwrap_err();
        assert!(matches!(err, EvalError::NoTestSplit(_)), "{err}");
        assert!(err.to_string().contains("--test-data"), "{err}");

        settings.source.test_data = Some(test);
        let report = evaluate(&settings, Device::Cpu, Progress { visible: false }).unwrap();
        assert_eq!((report.train.examples, report.test.examples, report.num_classes), (12, 6, 2));
        let raw = report.entries.iter().find(|e| e.model == "raw").unwrap();
        assert_eq!(raw.test_accuracy, 1.0, "{raw:?}");
    }

    #[test]
    fn a_missing_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EvalSettings {
            source: EvalSource {
                checkpoint: dir.path().join("nowhere"),
                data: dir.path().into(),
                test_data: None,
                format: DataFormat::Auto,
            },
            probes: vec![ProbeKind::Knn],
            taps: vec![Representation::Tap(Tap::Y)],
            baselines: vec![],
            limit_train: None,
            sampling: Sampling { limit_test: None, seed: 0, batch_size: 16 },
            linear: crate::eval::probes::linear::default_schedule(),
            mlp: MlpProtocol::Fast.recipe(0),
            knn: KnnOptions::default(),
        };
        let err = evaluate(&settings, Device::Cpu, Progress { visible: false }).unwrap_err();
        assert!(matches!(err, EvalError::Checkpoint { .. }), "{err}");
        assert!(err.to_string().contains("nowhere"), "{err}");
    }
}
