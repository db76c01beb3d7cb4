//! The retrieval evaluation behind `dim-eval retrieval`: every image of a labelled test split
//! queries all the others by exact nearest-neighbour search, for each tap of the checkpoint and
//! of the baselines (the supervised encoder, a random encoder, raw pixels), as extracted and
//! after a centring + PCA (+ whitening) transform fitted on the train split's features. Scores
//! are dim-vectors' precision@k (micro and macro), mAP@k and k-NN accuracy, so they are the
//! numbers `dim-search retrieval` gives for the same vectors.

use crate::data::{DataError, Split, open_dataset};
use crate::eval::features::{LabelledImages, Representation};
use crate::eval::harness::{
    Baseline, CheckpointSummary, EvalError, EvalSource, Extraction, Progress, Sampling, SplitSummary,
    load_encoders, read_split, utc_timestamp, write_report_json,
};
use crate::model::encoder::Encoder;
use dim_vectors::distance::Metric;
use dim_vectors::post_process::{Pca, PcaSpec, PostProcessError};
use dim_vectors::retrieval::{RetrievalError, RetrievalRun};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Everything a retrieval run needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalSettings {
    /// The DIM checkpoint and the dataset: its test split is searched, its train split fits the
    /// post-processing.
    #[serde(flatten)]
    pub source: EvalSource,
    /// Encoder taps to score.
    pub taps: Vec<Representation>,
    /// Unlearned baselines scored beside the checkpoint.
    pub baselines: Vec<Baseline>,
    /// A supervised checkpoint (`dim-eval train-supervised`) scored as a further baseline.
    pub supervised: Option<PathBuf>,
    /// Neighbours per query.
    pub k: usize,
    /// How vectors are compared.
    pub metric: Metric,
    /// The post-processing scored beside the raw features, if any.
    pub post_process: Option<PcaSpec>,
    /// Train examples the post-processing is fitted on (a seeded subset); all when `None`.
    pub limit_fit: Option<usize>,
    /// The searched subset, the seed of the subsets and the random encoder, and the
    /// feature-extraction batch size.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Why a retrieval evaluation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetrievalEvalError {
    /// Loading the checkpoint, the data or the features failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// Scoring failed.
    #[error("retrieval on {model}/{tap}")]
    Retrieval {
        /// The model.
        model: String,
        /// The tap.
        tap: Representation,
        /// The cause.
        source: RetrievalError,
    },
    /// The post-processing could not be fitted.
    #[error("post-processing of {model}/{tap}")]
    PostProcess {
        /// The model.
        model: String,
        /// The tap.
        tap: Representation,
        /// The cause.
        source: PostProcessError,
    },
}

/// One tap of one model, searched with one post-processing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalEntry {
    /// "checkpoint", "supervised", "random" or "raw".
    pub model: String,
    /// The tap.
    pub tap: Representation,
    /// The vectors (`vectors` is "none", or e.g. "pca 256 + whitening"), their width, the
    /// fitted transform if any, the search time and the measures.
    #[serde(flatten)]
    pub run: RetrievalRun,
}

/// A finished retrieval evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalReport {
    /// The settings it ran with.
    pub settings: RetrievalSettings,
    /// The DIM checkpoint.
    pub checkpoint: CheckpointSummary,
    /// The supervised checkpoint, when one was scored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervised: Option<CheckpointSummary>,
    /// The searched split: every example queries all the others.
    pub searched: SplitSummary,
    /// What the post-processing was fitted on: the train split, or the searched split itself
    /// when the data has no separate train split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fitted_on: Option<SplitSummary>,
    /// Device the encoders ran on.
    pub device: String,
    /// When the evaluation finished (UTC, RFC 3339).
    pub date: String,
    /// Toolkit version.
    pub toolkit_version: String,
    /// Every result, in run order.
    pub entries: Vec<RetrievalEntry>,
}

/// Runs the retrieval evaluation described by `settings` on `device`.
pub fn evaluate_retrieval(
    settings: &RetrievalSettings,
    device: Device,
    progress: Progress,
) -> Result<RetrievalReport, RetrievalEvalError> {
    let taps: Vec<Representation> =
        settings.taps.iter().copied().filter(|&t| t != Representation::Pixels).collect();
    let source = &settings.source;
    let models = load_encoders(&source.checkpoint, settings.supervised.as_deref(), device)?;

    let spec = models.config.input_spec();
    let open = |path: &Path, split: Split, name: &'static str| {
        open_dataset(path, source.format, split, spec).map_err(|source: DataError| EvalError::Data {
            path: path.into(),
            split: name,
            source: Box::new(source),
        })
    };
    let seed = settings.sampling.seed;
    let searched_set = open(source.test_data.as_deref().unwrap_or(&source.data), Split::Test, "test")?;
    let (searched_summary, searched) =
        read_split(&*searched_set, settings.sampling.limit_test, seed, "reading searched split", progress)?;
    let fit = match settings.post_process {
        None => None,
        Some(_) => {
            let train_set = open(&source.data, Split::Train, "train")?;
            if train_set.fingerprint() == searched_set.fingerprint() {
                progress.note(format!(
                    "{} has no separate train split: the post-processing is fitted on the searched images",
                    train_set.describe()
                ));
                Some((searched_summary.clone(), None))
            } else {
                let (summary, images) =
                    read_split(&*train_set, settings.limit_fit, seed, "reading train split", progress)?;
                Some((summary, Some(images)))
            }
        }
    };
    let fit_images = fit.as_ref().map(|(_, images)| images.as_ref().unwrap_or(&searched));
    let labels: Vec<u32> = Vec::<i64>::try_from(&searched.labels)
        .map_err(|error| EvalError::Nothing(format!("labels of the searched split are unreadable: {error}")))?
        .into_iter()
        .map(|label| label as u32)
        .collect();

    let extraction = Extraction { taps: &taps, batch_size: settings.sampling.batch_size, device, progress };
    let mut entries = Vec::new();
    let score_model = |model: &str, encoder: Option<&Encoder>| -> Result<(), RetrievalEvalError> {
        let features =
            |images: &LabelledImages, split: &str| -> Result<Vec<(Representation, Tensor)>, EvalError> {
                Ok(extraction.features(encoder, images, || format!("{model} features, {split}"))?)
            };
        let searched_features = features(&searched, "searched")?;
        let fit_features = match fit_images {
            Some(images) => Some(features(images, "fit")?),
            None => None,
        };
        for (index, (tap, values)) in searched_features.into_iter().enumerate() {
            let (values, dims) = to_rows(&values);
            let retrieval_error = |source| RetrievalEvalError::Retrieval { model: model.into(), tap, source };
            let measure = |name: String, values: &[f32], dims, fitted| {
                RetrievalRun::measure(name, values, dims, fitted, &labels, settings.k, settings.metric)
                    .map(|run| RetrievalEntry { model: model.into(), tap, run })
                    .map_err(retrieval_error)
            };
            let entry = measure("none".into(), &values, dims, None)?;
            progress.note(entry.summary_line(settings.k));
            entries.push(entry);
            let (Some(spec), Some(fit_features)) = (settings.post_process, &fit_features) else {
                continue;
            };
            let (fit_values, _) = to_rows(&fit_features[index].1);
            let post_process_error =
                |source| RetrievalEvalError::PostProcess { model: model.into(), tap, source };
            // A tap narrower than the requested width keeps all its directions; a fit on few
            // rows keeps what they span.
            let fit_rows = fit_values.len() / dims;
            let spec = PcaSpec { dims: spec.dims.min(dims).min(fit_rows.saturating_sub(1)).max(1), ..spec };
            let pca = Pca::fit(&fit_values, dims, &spec).map_err(post_process_error)?;
            let transformed = pca.apply_rows(&values).map_err(post_process_error)?;
            let entry = measure(spec.describe(), &transformed, spec.dims, Some(pca.description().clone()))?;
            progress.note(entry.summary_line(settings.k));
            entries.push(entry);
        }
        Ok(())
    };

    models.for_each_model(&taps, &settings.baselines, seed, device, score_model)?;
    if entries.is_empty() {
        return Err(EvalError::Nothing("no encoder taps and no raw-pixel baseline selected".into()).into());
    }
    Ok(RetrievalReport {
        settings: settings.clone(),
        checkpoint: models.checkpoint,
        supervised: models.supervised.map(|(_, _, summary)| summary),
        searched: searched_summary,
        fitted_on: fit.map(|(summary, _)| summary),
        device: format!("{device:?}"),
        date: utc_timestamp(std::time::SystemTime::now()),
        toolkit_version: dim_models::TOOLKIT_VERSION.into(),
        entries,
    })
}

/// A `[N, D]` feature tensor as row-major f32 values and its width.
fn to_rows(features: &Tensor) -> (Vec<f32>, usize) {
    let dims = features.size()[1] as usize;
    let flat = features.to_kind(Kind::Float).contiguous().view(-1);
    (Vec::<f32>::try_from(&flat).expect("a CPU f32 tensor converts to a Vec"), dims)
}

impl RetrievalEntry {
    fn summary_line(&self, k: usize) -> String {
        format!(
            "{}/{} {} ({}d): precision@{k} {:.4} micro, {:.4} macro",
            self.model,
            self.tap,
            self.run.vectors,
            self.run.dims,
            self.run.scores.precision_at_k_micro,
            self.run.scores.precision_at_k_macro
        )
    }
}

impl RetrievalReport {
    /// A plain-text table, one row per entry.
    pub fn table(&self) -> String {
        let k = self.settings.k;
        let header = [
            "model/tap".to_string(),
            "post-processing".to_string(),
            "dims".to_string(),
            format!("p@{k} micro"),
            format!("p@{k} macro"),
            format!("mAP@{k}"),
            format!("{k}-NN acc"),
        ];
        let rows: Vec<[String; 7]> = self
            .entries
            .iter()
            .map(|entry| {
                [
                    format!("{}/{}", entry.model, entry.tap),
                    entry.run.vectors.clone(),
                    entry.run.dims.to_string(),
                    format!("{:.4}", entry.run.scores.precision_at_k_micro),
                    format!("{:.4}", entry.run.scores.precision_at_k_macro),
                    format!("{:.4}", entry.run.scores.map_at_k),
                    format!("{:.4}", entry.run.scores.knn_accuracy),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|column| {
                rows.iter().map(|row| row[column].len()).chain([header[column].len()]).max().unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (column, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if column < 2 {
                    out.push_str(&format!("{cell:<width$}  "));
                } else {
                    out.push_str(&format!("{cell:>width$}  "));
                }
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
            out
        };
        let mut out = line(&header);
        for row in &rows {
            out.push_str(&line(row));
        }
        out.push_str(&format!(
            "{} queries over {} classes, {} search; each query excluded from its own neighbours\n",
            self.searched.examples,
            self.entries.first().map_or(0, |entry| entry.run.scores.classes),
            self.settings.metric.name()
        ));
        out
    }

    /// Writes the report as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<(), EvalError> {
        write_report_json(self, path).map_err(|source| EvalError::Write { path: path.into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DataFormat;
    use crate::eval::harness::tests::{
        write_checkpoint, write_checkpoint_with_channels, write_folder, write_idx,
    };
    use dim_models::tap::Tap;
    use dim_vectors::post_process::DEFAULT_WHITEN_EPS;
    use dim_vectors::retrieval;

    fn settings(checkpoint: PathBuf, data: PathBuf) -> RetrievalSettings {
        RetrievalSettings {
            source: EvalSource { checkpoint, data, test_data: None, format: DataFormat::Auto },
            taps: vec![
                Representation::Tap(Tap::Conv),
                Representation::Tap(Tap::Fc),
                Representation::Tap(Tap::Y),
            ],
            baselines: vec![Baseline::Raw, Baseline::Random],
            supervised: None,
            k: 5,
            metric: Metric::Cosine,
            post_process: Some(PcaSpec { dims: 16, whiten: true, eps: DEFAULT_WHITEN_EPS }),
            limit_fit: Some(40),
            sampling: Sampling { limit_test: None, seed: 0, batch_size: 16 },
        }
    }

    #[test]
    fn every_tap_of_every_model_is_scored_raw_and_post_processed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        write_idx(&data, "train", 48);
        write_idx(&data, "t10k", 20);
        let (checkpoint, supervised) = (dir.path().join("dim"), dir.path().join("supervised"));
        write_checkpoint(&checkpoint);
        write_checkpoint(&supervised);
        let mut settings = settings(checkpoint, data.clone());
        settings.supervised = Some(supervised);
        let report = evaluate_retrieval(&settings, Device::Cpu, Progress { visible: false }).unwrap();

        let rows: Vec<(&str, Representation, &str, usize)> = report
            .entries
            .iter()
            .map(|e| (e.model.as_str(), e.tap, e.run.vectors.as_str(), e.run.dims))
            .collect();
        let mut expected = Vec::new();
        for model in ["checkpoint", "supervised", "random"] {
            for (tap, dims) in [
                (Representation::Tap(Tap::Conv), 4096),
                (Representation::Tap(Tap::Fc), 1024),
                (Representation::Tap(Tap::Y), 64),
            ] {
                expected.push((model, tap, "none", dims));
                expected.push((model, tap, "pca 16 + whitening", 16));
            }
        }
        expected.push(("raw", Representation::Pixels, "none", 1024));
        expected.push(("raw", Representation::Pixels, "pca 16 + whitening", 16));
        assert_eq!(rows, expected);
        assert_eq!(report.searched.examples, 20);
        assert_eq!(report.fitted_on.as_ref().unwrap().examples, 40);
        assert!(report.entries.iter().all(|e| e.run.scores.queries == 20 && e.run.scores.k == 5));
        let fitted = report.entries[1].run.post_process.as_ref().unwrap();
        assert_eq!((fitted.input_dim, fitted.dims, fitted.fitted_rows), (4096, 16, 40));

        // The raw-pixel row is dim-vectors' score of the test images themselves, in file order.
        let test_set =
            open_dataset(&data, DataFormat::Auto, Split::Test, report.checkpoint.config.input_spec())
                .unwrap();
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for index in 0..test_set.len() {
            let sample = test_set.get(index).unwrap();
            pixels.extend(sample.pixels);
            labels.push(sample.label.unwrap());
        }
        let direct = retrieval::evaluate(&pixels, 1024, &labels, 5, Metric::Cosine).unwrap();
        let raw = &report.entries[report.entries.len() - 2];
        assert_eq!(raw.run.scores, direct);
        // Bright top half against bright bottom half: pixels separate the two classes.
        assert!(raw.run.scores.precision_at_k_micro > 0.9, "{raw:?}");

        let table = report.table();
        assert_eq!(table.lines().count(), 1 + 20 + 1, "{table}");
        assert!(
            table.lines().any(|l| l.starts_with("raw/pixels") && l.contains("pca 16 + whitening")),
            "{table}"
        );
        let json = dir.path().join("out").join("retrieval.json");
        report.write_json(&json).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(value["entries"].as_array().unwrap().len(), 20);
        assert_eq!(
            value["entries"][0]["precision_at_k_micro"],
            report.entries[0].run.scores.precision_at_k_micro
        );
        assert_eq!(value["settings"]["format"], "auto");
        assert_eq!(value["settings"]["metric"], "cosine");
        assert!(value["supervised"]["path"].as_str().unwrap().ends_with("supervised"), "{value}");
    }

    #[test]
    fn a_folder_without_a_train_split_fits_on_the_searched_images() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("folder");
        write_folder(&folder, 6);
        let checkpoint = dir.path().join("dim");
        write_checkpoint(&checkpoint);
        let mut settings = settings(checkpoint, folder);
        settings.taps = vec![Representation::Tap(Tap::Y)];
        settings.baselines = vec![Baseline::Raw];
        // The generated images vary along two directions only.
        settings.post_process = Some(PcaSpec { dims: 2, whiten: false, eps: DEFAULT_WHITEN_EPS });
        let report = evaluate_retrieval(&settings, Device::Cpu, Progress { visible: false }).unwrap();
        assert_eq!(report.searched.examples, 12);
        assert_eq!(report.fitted_on.as_ref().unwrap(), &report.searched);
        assert_eq!(report.entries.iter().map(|e| e.run.dims).collect::<Vec<_>>(), [64, 2, 1024, 2]);
        assert_eq!(report.entries[1].run.vectors, "pca 2");
        assert_eq!(report.entries[2].run.scores.precision_at_k_micro, 1.0, "{:?}", report.entries[2]);
    }

    #[test]
    fn a_supervised_encoder_of_another_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        write_idx(&data, "train", 8);
        write_idx(&data, "t10k", 8);
        let (checkpoint, supervised) = (dir.path().join("dim"), dir.path().join("supervised"));
        write_checkpoint(&checkpoint);
        write_checkpoint_with_channels(&supervised, 3);
        let mut settings = settings(checkpoint, data);
        settings.supervised = Some(supervised);
        let err = evaluate_retrieval(&settings, Device::Cpu, Progress { visible: false }).unwrap_err();
        assert!(matches!(err, RetrievalEvalError::Eval(EvalError::SupervisedInput { .. })), "{err}");
        assert!(err.to_string().contains("3x32x32"), "{err}");
    }
}
