//! The dim-embed job: embeds a collection into an embeddings directory with bounded memory
//! (decoding threads work a few batches ahead while ONNX Runtime runs the current one), skips bad
//! files with their reasons, times its stages, and on a rerun embeds only new or changed files.
//!
//! Killed at any moment (SIGKILL included), a job leaves the directory as the last finished run
//! left it, or halfway through committing its three files, which the next run completes from the
//! commit journal ([`atomic_file::commit_together`]) before anything else. Should the vectors
//! still not be the ones the manifest describes (its digest says), the next run says so and
//! embeds everything again. Either way its result has the rows a clean run would have. A lock
//! file keeps two jobs out of one directory, and leftovers of killed runs are removed.

use crate::embedder::{EmbedError, Embedder, decode_ahead};
use dim_models::atomic_file::{self, StagedFile};
use dim_vectors::manifest::{
    self, EMBEDDINGS_FILE, MANIFEST_FILE, MANIFEST_FORMAT_VERSION, Manifest, ManifestError, ManifestRow,
    ModelIdentity, Skipped,
};
use dim_vectors::npy;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Held (as an advisory lock) by the job writing a directory.
pub const LOCK_FILE: &str = ".dim-embed.lock";

/// What to embed and where.
#[derive(Debug, Clone, Default)]
pub struct EmbedJob {
    /// Files to embed (see [`crate::collection::gather`]).
    pub files: Vec<PathBuf>,
    /// Inputs already found unusable while gathering; reported with the others.
    pub skipped_inputs: Vec<Skipped>,
    /// The embeddings directory.
    pub out_dir: PathBuf,
    /// Images per model run.
    pub batch_size: usize,
    /// Threads decoding images ahead of the model (0: one per core).
    pub decode_threads: usize,
    /// Re-embed everything, even when the directory holds vectors from another model or feature.
    pub force: bool,
    /// Draw a progress bar on stderr.
    pub show_progress: bool,
    /// Set (from another thread, e.g. on Ctrl-C) to stop the job after the chunk it is on:
    /// nothing is committed and the directory keeps what the previous run left.
    pub stop: Option<Arc<AtomicBool>>,
}

/// What a job did.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedSummary {
    /// Files embedded in this run.
    pub embedded: usize,
    /// Rows kept from the previous run (file unchanged).
    pub reused: usize,
    /// Rows of the previous run dropped (file changed, gone, or no longer listed).
    pub dropped: usize,
    /// Rows now in `embeddings.npy`.
    pub total_rows: usize,
    /// Files that could not be embedded, with reasons.
    pub skipped: Vec<Skipped>,
    /// Wall time of the embedding itself.
    pub seconds: f64,
    /// Where the embedding's wall time went.
    pub stages: StageTimes,
    /// Why the previous run's vectors could not be reused, when there were some and they could
    /// not (an interrupted run): everything was embedded again.
    pub discarded_previous: Option<String>,
}

/// Where an embedding's wall time went, as seen from the thread that runs the model: decoding
/// runs on other threads at the same time, so the three need not add up to the wall time (the
/// rest is the progress bar and the bookkeeping between batches).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StageTimes {
    /// Waiting for the decoding threads to deliver the next batch: long when decoding, not the
    /// model, bounds the rate (more `decode_threads` or cores would help).
    pub waiting_for_decoding: Duration,
    /// Running the model.
    pub model: Duration,
    /// Writing the vectors to the staged `embeddings.npy`.
    pub writing: Duration,
}

impl StageTimes {
    /// "model 80%, waiting for decoding 15%, writing 2%" of `seconds`.
    pub fn describe(&self, seconds: f64) -> String {
        let share = |stage: Duration| 100.0 * stage.as_secs_f64() / seconds.max(1e-9);
        format!(
            "model {:.0}%, waiting for decoding {:.0}%, writing {:.0}%",
            share(self.model),
            share(self.waiting_for_decoding),
            share(self.writing)
        )
    }
}

/// Errors that stop a job (a bad image never does).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedJobError {
    /// The directory holds vectors from a different model, feature or width.
    #[error(
        "{dir} holds embeddings from another model or feature ({reason}); refusing to mix them: \
         use another --out, or --force to re-embed everything"
    )]
    ModelMismatch {
        /// The embeddings directory.
        dir: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The previous vectors could not be read while reusing them.
    #[error("cannot reuse the previous run: {0}")]
    Previous(#[source] ManifestError),
    /// Another job holds the directory's lock.
    #[error("{dir} is being written by another dim-embed (it holds {LOCK_FILE}); wait for it to finish")]
    Busy {
        /// The embeddings directory.
        dir: PathBuf,
    },
    /// Writing the outputs failed.
    #[error(transparent)]
    Output(#[from] ManifestError),
    /// Embedding failed (the model, not an image).
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// [`EmbedJob::stop`] was set; nothing was written.
    #[error("interrupted; {dir} keeps what the previous run left")]
    Interrupted {
        /// The embeddings directory.
        dir: PathBuf,
    },
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> EmbedJobError + '_ {
    move |source| EmbedJobError::Output(ManifestError::Io { path: path.to_path_buf(), source })
}

/// Runs the job: embeds what is new or changed and rewrites the directory's files atomically.
pub fn run(embedder: &mut Embedder, job: &EmbedJob) -> Result<EmbedSummary, EmbedJobError> {
    if job.batch_size == 0 {
        return Err(EmbedError::ZeroBatchSize.into());
    }
    let identity = embedder.identity();
    std::fs::create_dir_all(&job.out_dir).map_err(io_error(&job.out_dir))?;
    let _lock = lock_directory(&job.out_dir)?;
    atomic_file::finish_interrupted_commit(&job.out_dir).map_err(io_error(&job.out_dir))?;
    remove_leftovers(&job.out_dir);
    let (previous, discarded_previous) = previous_manifest(&job.out_dir, &identity, job.force)?;
    let previous_rows: HashMap<&Path, (usize, &ManifestRow)> = previous
        .as_ref()
        .map(|m| m.rows.iter().enumerate().map(|(i, row)| (row.path.as_path(), (i, row))).collect())
        .unwrap_or_default();

    let mut skipped = job.skipped_inputs.clone();
    let mut kept: Vec<(usize, ManifestRow)> = Vec::new();
    let mut to_embed: Vec<ManifestRow> = Vec::new();
    for path in &job.files {
        match ManifestRow::stat(path) {
            Ok(row) => match previous_rows.get(path.as_path()) {
                Some((index, old)) if **old == row => kept.push((*index, row)),
                _ => to_embed.push(row),
            },
            Err(error) => {
                skipped.push(Skipped { path: path.clone(), reason: format!("cannot stat: {error}") })
            }
        }
    }
    kept.sort_by_key(|(index, _)| *index);

    let StagedVectors { file: vectors, sha256: embeddings_sha256, new_rows, seconds, stages } =
        stage_vectors(embedder, job, &kept, &to_embed, &mut skipped)?;
    let total_rows = kept.len() + new_rows.len();
    let rows: Vec<ManifestRow> =
        kept.iter().map(|(_, row)| row.clone()).chain(new_rows.iter().cloned()).collect();
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        toolkit_version: dim_models::TOOLKIT_VERSION.to_string(),
        model: identity,
        embeddings_sha256: Some(embeddings_sha256),
        search_recipe: embedder.metadata().search_recipe,
        count: rows.len(),
        rows,
    };
    // Everything is written before anything is renamed, so a full disk or a bad value leaves
    // the previous run's files as they were.
    let manifest_file = manifest.stage(&job.out_dir)?;
    let skipped_file = manifest::stage_skipped(&job.out_dir, &skipped)?;
    atomic_file::commit_together(&job.out_dir, vec![vectors, manifest_file, skipped_file])
        .map_err(io_error(&job.out_dir))?;
    Ok(EmbedSummary {
        embedded: new_rows.len(),
        reused: kept.len(),
        dropped: previous.map_or(0, |m| m.count - kept.len()),
        total_rows,
        skipped,
        seconds,
        stages,
        discarded_previous,
    })
}

/// Takes the directory's lock for the life of the returned file.
fn lock_directory(dir: &Path) -> Result<File, EmbedJobError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(EmbedJobError::Busy { dir: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(source)) => Err(io_error(&path)(source)),
    }
}

/// Removes the staged files a killed run left behind (the lock says none is in use).
fn remove_leftovers(dir: &Path) {
    atomic_file::remove_abandoned_staged_files(
        dir,
        &[EMBEDDINGS_FILE, MANIFEST_FILE, manifest::SKIPPED_FILE],
    );
}

/// The previous run's manifest when its rows can be reused, else why they cannot (`None`
/// without a reason: there was no previous run, or `force`).
fn previous_manifest(
    dir: &Path,
    identity: &ModelIdentity,
    force: bool,
) -> Result<(Option<Manifest>, Option<String>), EmbedJobError> {
    if force || !dir.join(MANIFEST_FILE).exists() {
        return Ok((None, None));
    }
    let manifest = match Manifest::read(dir) {
        Ok(manifest) => manifest,
        // A torn or damaged previous run costs a full re-embedding, never wrong rows.
        Err(error @ (ManifestError::Inconsistent { .. } | ManifestError::Npy(_))) => {
            return Ok((None, Some(error.to_string())));
        }
        Err(error) => return Err(EmbedJobError::Previous(error)),
    };
    if let Some(reason) = manifest.model.mismatch(identity) {
        return Err(EmbedJobError::ModelMismatch { dir: dir.to_path_buf(), reason });
    }
    Ok((Some(manifest), None))
}

/// Embeds `files`, appending raw little-endian rows to `out` and timing the stages into
/// `stages`; returns the rows embedded.
fn embed_into(
    embedder: &mut Embedder,
    files: &[ManifestRow],
    job: &EmbedJob,
    out: &mut dyn Write,
    skipped: &mut Vec<Skipped>,
    stages: &mut StageTimes,
) -> Result<Vec<ManifestRow>, EmbedJobError> {
    let progress = progress_bar(files.len() as u64, "images", job.show_progress);
    let preprocessor = embedder.preprocessor();
    let mut embedded = Vec::with_capacity(files.len());
    let vectors_path = job.out_dir.join(EMBEDDINGS_FILE);
    let write_error = io_error(&vectors_path);
    let waiting_for_decoding = decode_ahead(
        preprocessor,
        files,
        |row| &row.path,
        job.batch_size,
        job.decode_threads,
        |batch| {
            if job.stop.as_ref().is_some_and(|stop| stop.load(Ordering::Relaxed)) {
                return Err(EmbedJobError::Interrupted { dir: job.out_dir.clone() });
            }
            let batch_len = batch.decoded.len() + batch.failed.len();
            skipped.extend(
                batch.failed.into_iter().map(|(row, reason)| Skipped { path: row.path.clone(), reason }),
            );
            let model_started = Instant::now();
            let vectors = embedder.run_batch(&batch.inputs)?;
            let writing_started = Instant::now();
            stages.model += writing_started - model_started;
            npy::write_rows(out, &vectors).map_err(&write_error)?;
            stages.writing += writing_started.elapsed();
            progress.inc(batch_len as u64);
            embedded.extend(batch.decoded.into_iter().cloned());
            Ok(())
        },
    )?;
    stages.waiting_for_decoding = waiting_for_decoding;
    progress.finish_and_clear();
    Ok(embedded)
}

/// A progress bar over `len` `units` on stderr, or a hidden one when `show` is false.
pub(crate) fn progress_bar(len: u64, units: &str, show: bool) -> ProgressBar {
    let target = if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {units}  {{per_sec}}  ETA {{eta}}"
        ))
        .expect("the progress template is valid"),
    );
    bar
}

/// `embeddings.npy` staged, with what went into it.
struct StagedVectors {
    file: StagedFile,
    sha256: String,
    /// The rows embedded in this run, in file order after the kept ones.
    new_rows: Vec<ManifestRow>,
    /// Wall time of the embedding itself.
    seconds: f64,
    /// Where that time went.
    stages: StageTimes,
}

/// Stages `embeddings.npy` in one pass: the kept rows of the previous file (in their order), then
/// the rows embedded now, written as they come. The header is written first for every row that
/// might come and rewritten in place for those that did (skipped files have none); the digest is
/// then taken over the finished file.
fn stage_vectors(
    embedder: &mut Embedder,
    job: &EmbedJob,
    kept: &[(usize, ManifestRow)],
    to_embed: &[ManifestRow],
    skipped: &mut Vec<Skipped>,
) -> Result<StagedVectors, EmbedJobError> {
    let path = job.out_dir.join(EMBEDDINGS_FILE);
    let dim = embedder.dim();
    let mut previous = if kept.is_empty() {
        None
    } else {
        Some(npy::RowReader::open(&path).map_err(|e| EmbedJobError::Previous(e.into()))?)
    };
    // An embedding error stops the staging; it is kept here and returned in place of the I/O
    // error that unwinds `stage`.
    let mut embed_error = None;
    let mut embedded = None;
    let mut sha256 = String::new();
    let staged = atomic_file::stage(&path, |out| {
        let reserved = npy::header(kept.len() + to_embed.len(), dim);
        out.write_all(&reserved)?;
        if let Some(reader) = previous.as_mut() {
            let mut row = vec![0.0f32; dim];
            let mut next = 0;
            for (index, _) in kept {
                // Kept rows are in file order, so the old file is read once, front to back.
                while next <= *index {
                    reader.read_row(&mut row)?;
                    next += 1;
                }
                npy::write_rows(out, &row)?;
            }
        }
        let started = Instant::now();
        let mut stages = StageTimes::default();
        let new_rows = match embed_into(embedder, to_embed, job, out, skipped, &mut stages) {
            Ok(rows) => rows,
            Err(error) => {
                embed_error = Some(error);
                return Err(std::io::Error::other("embedding stopped"));
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&npy::header_of_at_least(kept.len() + new_rows.len(), dim, reserved.len()))?;
        out.flush()?;
        let mut finished: &File = out.get_ref();
        finished.seek(SeekFrom::Start(0))?;
        sha256 = manifest::reader_sha256(finished)?;
        embedded = Some((new_rows, seconds, stages));
        Ok(())
    });
    match (staged, embedded) {
        (Ok(file), Some((new_rows, seconds, stages))) => {
            Ok(StagedVectors { file, sha256, new_rows, seconds, stages })
        }
        (result, _) => Err(embed_error.unwrap_or_else(|| {
            io_error(&path)(result.err().unwrap_or_else(|| std::io::Error::other("nothing was staged")))
        })),
    }
}
