//! From a folder to a servable index: embeds what is new or changed since the last start
//! (dim-embed's incremental job, with its progress bar), and rebuilds the index only when the
//! embeddings or the index parameters changed. Everything lives in a state directory outside
//! the collection, so the photo folder is never written to.

use dim_index::index::{self, IndexInfo, IndexParams};
use dim_infer::collection;
use dim_infer::embed_job::{self, EmbedJob, EmbedSummary};
use dim_infer::embedder::Embedder;
use dim_vectors::manifest::{MANIFEST_FILE, Manifest};
use dim_vectors::post_process::{PcaSpec, PostProcessChoice};
use sha2::{Digest, Sha256};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// The embeddings directory inside a state directory.
pub const EMBEDDINGS_DIR: &str = "embeddings";
/// The index directory inside a state directory.
pub const INDEX_DIR: &str = "index";

/// What preparing a folder did.
#[derive(Debug)]
pub struct Prepared {
    /// The index to serve.
    pub index: PathBuf,
    /// The embedding run.
    pub embedding: EmbedSummary,
    /// Whether the index was (re)built; false when the previous one still matched.
    pub rebuilt_index: bool,
    /// The post-processing the index applies.
    pub post_process: Option<PcaSpec>,
}

/// Where a folder's state is kept by default: a directory under the user's cache named after
/// the folder's absolute path.
pub fn default_state_dir(folder: &Path) -> PathBuf {
    let absolute = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
    let digest = Sha256::digest(absolute.as_os_str().as_encoded_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("dim-toolkit").join("serve").join(name)
}

/// Embeds `folder` into `state/embeddings` and makes sure `state/index` is an index of exactly
/// those rows built with `params` and the chosen post-processing.
pub fn prepare_folder(
    folder: &Path,
    state: &Path,
    embedder: &mut Embedder,
    params: &IndexParams,
    post_process: PostProcessChoice,
) -> anyhow::Result<Prepared> {
    anyhow::ensure!(folder.is_dir(), "{} is not a directory", folder.display());
    let gathered = collection::gather(&[folder.to_path_buf()], &[])?;
    anyhow::ensure!(!gathered.files.is_empty(), "no images found under {}", folder.display());
    std::fs::create_dir_all(state).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the state directory {}: {e} (choose another with --state)",
            state.display()
        )
    })?;
    let embeddings = state.join(EMBEDDINGS_DIR);
    let job = EmbedJob {
        files: gathered.files,
        skipped_inputs: gathered.skipped,
        out_dir: embeddings.clone(),
        batch_size: 64,
        decode_threads: 0,
        force: false,
        show_progress: std::io::stderr().is_terminal(),
        stop: None,
    };
    let embedding = embed_job::run(embedder, &job)?;
    let post_process = post_process.resolve(embedder.metadata().search_recipe, embedding.total_rows);
    let params = IndexParams { post_process, ..*params };
    let index = state.join(INDEX_DIR);
    let rebuilt_index = if index_matches(&index, &embeddings, &params) {
        false
    } else {
        index::build(&embeddings, &index, &params)?;
        true
    };
    Ok(Prepared { index, embedding, rebuilt_index, post_process })
}

/// Whether the index in `index` was built with `params` from the current contents of
/// `embeddings` (same vectors digest, same rows). Only the JSON files are read: the embedding
/// job has just checked and committed the vectors, and serving loads the index anyway.
fn index_matches(index: &Path, embeddings: &Path, params: &IndexParams) -> bool {
    let current = std::fs::read_to_string(embeddings.join(MANIFEST_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<Manifest>(&text).ok());
    let (Ok(info), Ok(indexed), Some(current)) =
        (IndexInfo::read(index), index::read_index_manifest(index), current)
    else {
        return false;
    };
    info.params == *params
        && current.embeddings_sha256.is_some()
        && indexed.embeddings_sha256 == current.embeddings_sha256
        && indexed.rows == current.rows
}
