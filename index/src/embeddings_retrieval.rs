//! Retrieval measures of a dim-embed output directory: its rows labelled by the folder holding
//! each file or by a labels file, scored by [`dim_vectors::retrieval`]'s exact search as embedded
//! and after a PCA fitted on the same rows. `dim-search retrieval` prints and saves the
//! [`EmbeddingsReport`].

use dim_vectors::distance::Metric;
use dim_vectors::manifest::{self, Manifest, ManifestError};
use dim_vectors::npy::{self, NpyError};
use dim_vectors::post_process::{Pca, PcaSpec, PostProcessError};
use dim_vectors::retrieval::{Labels, RetrievalError, RetrievalRun};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Errors scoring an embeddings directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddingsRetrievalError {
    /// The embeddings directory is unusable.
    #[error(transparent)]
    Embeddings(#[from] ManifestError),
    /// The vectors file is unusable.
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// The post-processing cannot be fitted.
    #[error(transparent)]
    PostProcess(#[from] PostProcessError),
    /// The labels or the search are unusable.
    #[error(transparent)]
    Retrieval(#[from] RetrievalError),
}

/// Scores the vectors of an embeddings directory as embedded and, with `post_process`, after a
/// PCA fitted on all of them (the same rows it is scored on, as an index built with it would be).
pub fn evaluate_embeddings(
    embeddings: &Path,
    labels: &Labels,
    k: usize,
    metric: Metric,
    post_process: Option<&PcaSpec>,
) -> Result<Vec<RetrievalRun>, EmbeddingsRetrievalError> {
    // Read for its checks of the vectors file against the manifest.
    Manifest::read(embeddings)?;
    evaluate_checked_embeddings(embeddings, labels, k, metric, post_process)
}

/// [`evaluate_embeddings`] for a directory whose manifest has already been read and checked.
fn evaluate_checked_embeddings(
    embeddings: &Path,
    labels: &Labels,
    k: usize,
    metric: Metric,
    post_process: Option<&PcaSpec>,
) -> Result<Vec<RetrievalRun>, EmbeddingsRetrievalError> {
    let vectors = npy::read_matrix(&embeddings.join(manifest::EMBEDDINGS_FILE))?;
    if labels.of_row.len() != vectors.rows {
        return Err(RetrievalError::Input(format!(
            "{} labels for {} rows",
            labels.of_row.len(),
            vectors.rows
        ))
        .into());
    }
    let labels = &labels.of_row;
    let mut runs = vec![RetrievalRun::measure(
        "embedded".into(),
        &vectors.values,
        vectors.cols,
        None,
        labels,
        k,
        metric,
    )?];
    if let Some(spec) = post_process {
        let pca = Pca::fit(&vectors.values, vectors.cols, spec)?;
        let transformed = pca.apply_rows(&vectors.values)?;
        let fitted = Some(pca.description().clone());
        runs.push(RetrievalRun::measure(
            spec.describe(),
            &transformed,
            spec.dims,
            fitted,
            labels,
            k,
            metric,
        )?);
    }
    Ok(runs)
}

/// Where the labels of an embeddings directory's rows come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelSource {
    /// The name of the folder holding each row's file.
    ParentFolders,
    /// A text file with one label per manifest row, in order.
    File(PathBuf),
}

/// [`evaluate_embeddings`] with its inputs: what `dim-search retrieval` prints and saves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbeddingsReport {
    /// The dim-embed output directory.
    pub embeddings: String,
    /// How vectors were compared.
    pub metric: Metric,
    /// Neighbours asked for per query.
    pub k_requested: usize,
    /// Label names, by label number.
    pub classes: Vec<String>,
    /// As embedded, then post-processed when asked.
    pub runs: Vec<RetrievalRun>,
}

impl EmbeddingsReport {
    /// Labels the rows of `embeddings` from `source` and scores them by [`evaluate_embeddings`].
    pub fn evaluate(
        embeddings: &Path,
        source: &LabelSource,
        k: usize,
        metric: Metric,
        post_process: Option<&PcaSpec>,
    ) -> Result<Self, EmbeddingsRetrievalError> {
        let manifest = Manifest::read(embeddings)?;
        let labels = match source {
            LabelSource::ParentFolders => {
                Labels::from_parent_folders(manifest.rows.iter().map(|row| row.path.as_path()))
            }
            LabelSource::File(path) => Labels::from_file(path, manifest.count)?,
        };
        let runs = evaluate_checked_embeddings(embeddings, &labels, k, metric, post_process)?;
        Ok(EmbeddingsReport {
            embeddings: embeddings.display().to_string(),
            metric,
            k_requested: k,
            classes: labels.names,
            runs,
        })
    }

    /// A plain-text table, one row per run.
    pub fn table(&self) -> String {
        let Some(first) = self.runs.first() else { return String::new() };
        let k = first.scores.k;
        let mut out = format!(
            "{} queries, {} classes, {} search, k = {k}\n",
            first.scores.queries,
            self.classes.len(),
            self.metric.name()
        );
        out.push_str(&format!(
            "{:<24} {:>5} {:>10} {:>10} {:>8} {:>8} {:>9}\n",
            "vectors",
            "dims",
            format!("P@{k} micro"),
            format!("P@{k} macro"),
            format!("mAP@{k}"),
            format!("{k}-NN acc"),
            "search s"
        ));
        for run in &self.runs {
            let s = &run.scores;
            out.push_str(&format!(
                "{:<24} {:>5} {:>10.4} {:>10.4} {:>8.4} {:>8.4} {:>9.2}\n",
                run.vectors,
                run.dims,
                s.precision_at_k_micro,
                s.precision_at_k_macro,
                s.map_at_k,
                s.knn_accuracy,
                run.search_seconds
            ));
        }
        out
    }
}
