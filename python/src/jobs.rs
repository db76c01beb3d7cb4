//! The folder-level jobs, writing exactly what the command-line tools write: `embed_folder` is
//! `dim-embed` (an embeddings directory) and `build_index` is `dim-search build` (an index
//! directory). A job runs on its own thread while the calling thread waits with the GIL released
//! and checks for Ctrl-C, which stops the job without committing anything.

use crate::embedding::NativeEmbedder;
use crate::errors::{self, Kind};
use crate::search::{index_error, index_params, post_process};
use dim_index::index;
use dim_infer::collection;
use dim_infer::embed_job::{self, EmbedJob, EmbedJobError};
use dim_vectors::manifest::Manifest;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a waiting job checks for Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Embeds the image files, directories and list files in `inputs` into the embeddings
/// directory `out` (incrementally, as `dim-embed` does); returns the run's summary as JSON.
#[pyfunction]
#[pyo3(signature = (inputs, lists, out, embedder, force, progress))]
pub fn embed_folder(
    py: Python<'_>,
    inputs: Vec<PathBuf>,
    lists: Vec<PathBuf>,
    out: PathBuf,
    embedder: Py<NativeEmbedder>,
    force: bool,
    progress: bool,
) -> PyResult<String> {
    if inputs.is_empty() && lists.is_empty() {
        return Err(errors::bad_argument("no inputs: name image files or directories, or list files"));
    }
    let gathered = py
        .detach(|| collection::gather(&inputs, &lists))
        .map_err(|e| errors::from_error(Kind::General, "", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let job = EmbedJob {
        files: gathered.files,
        skipped_inputs: gathered.skipped,
        out_dir: out,
        batch_size: embedder.get().batch_size(),
        decode_threads: 0,
        force,
        show_progress: progress,
        stop: Some(stop.clone()),
    };
    let worker = {
        let embedder = embedder.clone_ref(py);
        std::thread::spawn(move || embed_job::run(&mut embedder.get().lock(), &job))
    };
    while !worker.is_finished() {
        py.detach(|| std::thread::sleep(SIGNAL_CHECK));
        if let Err(interrupt) = py.check_signals() {
            stop.store(true, Ordering::Relaxed);
            let _ = py.detach(|| worker.join());
            return Err(interrupt);
        }
    }
    let summary = py
        .detach(|| worker.join())
        .map_err(|_| errors::raise(Kind::General, "the embedding thread panicked"))?
        .map_err(|error| match error {
            EmbedJobError::Embed(_) => errors::from_error(Kind::Model, "", error),
            other => errors::from_error(Kind::General, "", other),
        })?;
    let skipped: Vec<_> = summary
        .skipped
        .iter()
        .map(|s| serde_json::json!({"path": s.path.to_string_lossy(), "reason": s.reason}))
        .collect();
    Ok(serde_json::json!({
        "embedded": summary.embedded,
        "reused": summary.reused,
        "dropped": summary.dropped,
        "rows": summary.total_rows,
        "seconds": summary.seconds,
        "stage_seconds": {
            "model": summary.stages.model.as_secs_f64(),
            "waiting_for_decoding": summary.stages.waiting_for_decoding.as_secs_f64(),
            "writing": summary.stages.writing.as_secs_f64(),
        },
        "skipped": skipped,
        "discarded_previous": summary.discarded_previous,
    })
    .to_string())
}

/// Builds an index from the embeddings directory `embeddings` into `out`, choosing the
/// post-processing as `dim-search build` does; returns `index.json` as JSON.
#[pyfunction]
#[pyo3(signature = (embeddings, out, metric, pca, whiten, m, ef_construction, hold_out))]
#[allow(clippy::too_many_arguments)] // the Python signature, keyword by keyword
pub fn build_index(
    py: Python<'_>,
    embeddings: PathBuf,
    out: PathBuf,
    metric: &str,
    pca: Option<usize>,
    whiten: bool,
    m: usize,
    ef_construction: usize,
    hold_out: usize,
) -> PyResult<String> {
    let manifest = Manifest::read(&embeddings).map_err(|e| errors::from_error(Kind::General, "", e))?;
    let rows = manifest.count.saturating_sub(hold_out);
    let params = index_params(
        metric,
        m,
        ef_construction,
        hold_out,
        post_process(pca, whiten, manifest.search_recipe, rows),
    )?;
    let info = py.detach(|| index::build(&embeddings, &out, &params)).map_err(index_error)?;
    Ok(serde_json::to_string(&info).expect("the index info serialises"))
}
