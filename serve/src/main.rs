//! `dim-serve`: serves an image collection for similarity search over HTTP, with a web page.

use anyhow::Context;
use clap::Parser;
use dim_index::index::{IndexInfo, IndexParams};
use dim_infer::embedder::{Embedder, EmbedderOptions};
use dim_infer::session::ExecutionProvider;
use dim_models::tap::Feature;
use dim_serve::api::{AppState, ServerConfig, router};
use dim_serve::collection::ServedCollection;
use dim_serve::prepare;
use dim_vectors::distance::Metric;
use dim_vectors::post_process::{DEFAULT_WHITEN_EPS, PcaSpec, PostProcessChoice};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Search an image collection by similarity, over HTTP and in the browser.
///
/// `dim-serve photos/` embeds what is new in the folder (incrementally), builds or updates its
/// index, and serves it; `dim-serve --index idx/` serves an index made by `dim-search build`.
/// Open the printed address for the page; the JSON API is described in the README.
#[derive(Debug, Parser)]
#[command(version, about, long_about, after_long_help = NOTES)]
struct Args {
    /// A folder of images to embed, index and serve.
    #[arg(required_unless_present = "index", conflicts_with = "index")]
    folder: Option<PathBuf>,
    /// Serve this existing dim-search index instead.
    #[arg(long)]
    index: Option<PathBuf>,
    /// The model that embeds uploaded queries (and, for a folder, the collection); must be the
    /// index's model. Default: the shipped model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Require this bearer token on every request (`Authorization: Bearer TOKEN`, or
    /// `?token=TOKEN` in the page's URL). Also read from DIM_SERVE_TOKEN.
    #[arg(long, env = "DIM_SERVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Result paths are shown relative to this directory (default: the folder, or the deepest
    /// directory holding every indexed file).
    #[arg(long)]
    root: Option<PathBuf>,
    /// For a folder: where its embeddings and index are kept (default: a directory under
    /// ~/.cache/dim-toolkit/serve named after the folder).
    #[arg(long)]
    state: Option<PathBuf>,
    /// For a folder: the model output to index.
    #[arg(long, default_value = "embedding")]
    feature: Feature,
    /// For a folder: cosine or l2.
    #[arg(long, default_value = "cosine")]
    metric: Metric,
    /// For a folder: centre and project onto the top D principal components before indexing
    /// (0: none). Default: the model's recommended post-processing when the folder holds
    /// enough images for it.
    #[arg(long, value_name = "D")]
    pca: Option<usize>,
    /// For a folder, with --pca: also whiten each component.
    #[arg(long, requires = "pca")]
    whiten: bool,
    /// Largest upload accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = 16 << 20)]
    max_upload_bytes: usize,
    /// Seconds a request may take before it is answered with 503.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
    /// Uploads decoded and embedded at once; more get 503 until one finishes.
    #[arg(long, default_value_t = 4)]
    max_concurrent_embeds: usize,
    /// Images with more pixels are refused (uploads) or not thumbnailed.
    #[arg(long)]
    max_image_pixels: Option<u64>,
    /// Execution provider for the query model: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    ep: ExecutionProvider,
    /// ONNX Runtime threads (0 lets it choose).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

const NOTES: &str = "\
Examples:
  dim-serve ~/photos                       # embed, index and serve on http://127.0.0.1:8080/
  dim-serve --index idx/ --listen 0.0.0.0:9000 --token \"$(openssl rand -hex 16)\"
  curl -s localhost:8080/api/collection
  curl -s --data-binary @query.jpg 'localhost:8080/api/search/image?k=5'

Safety: binds 127.0.0.1 unless --listen says otherwise; thumbnails are served by row id only,
never by a path from the client; Ctrl-C stops accepting and finishes requests in flight.";

fn main() {
    if let Err(error) = run(Args::parse()) {
        eprintln!("dim-serve: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let max_image_pixels =
        args.max_image_pixels.unwrap_or_else(dim_models::preprocess::configured_max_pixels);
    let model = args.model.clone().unwrap_or_else(dim_models::shipped_model::path);
    let embedder_for = |feature| {
        Embedder::try_new(EmbedderOptions {
            model: model.clone(),
            feature,
            threads: args.threads,
            execution_provider: args.ep,
            max_image_pixels,
            ..EmbedderOptions::default()
        })
        .with_context(|| format!("cannot load the model {}", model.display()))
    };
    let (index, embedder, root) = match (&args.folder, &args.index) {
        (Some(folder), _) => {
            let state = args.state.clone().unwrap_or_else(|| prepare::default_state_dir(folder));
            let mut embedder = embedder_for(args.feature)?;
            let post_process = PostProcessChoice::from_flags(args.pca, args.whiten, DEFAULT_WHITEN_EPS);
            let params = IndexParams { metric: args.metric, ..IndexParams::default() };
            eprintln!("dim-serve: preparing {} (state in {})", folder.display(), state.display());
            let prepared = prepare::prepare_folder(folder, &state, &mut embedder, &params, post_process)?;
            let summary = &prepared.embedding;
            eprintln!(
                "dim-serve: embedded {} new images, kept {}, dropped {}, skipped {}; index {} ({})",
                summary.embedded,
                summary.reused,
                summary.dropped,
                summary.skipped.len(),
                if prepared.rebuilt_index { "built" } else { "unchanged" },
                prepared.post_process.as_ref().map_or("no post-processing".to_string(), PcaSpec::describe)
            );
            let root = args.root.clone().or_else(|| std::path::absolute(folder).ok());
            (prepared.index, embedder, root)
        }
        (None, Some(index)) => {
            let info = IndexInfo::read(index).context("cannot open the index")?;
            (index.clone(), embedder_for(info.model.feature)?, args.root.clone())
        }
        (None, None) => anyhow::bail!("give a folder to serve, or --index DIR"),
    };
    let collection = ServedCollection::open(&index, embedder, root, max_image_pixels)?;
    let config = ServerConfig {
        token: args.token.filter(|token| !token.is_empty()),
        max_upload_bytes: args.max_upload_bytes,
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        max_concurrent_embeds: args.max_concurrent_embeds.max(1),
        ..ServerConfig::default()
    };
    let rows = collection.indexed_count();
    let protected = config.token.is_some();
    let app = router(Arc::new(AppState::new(collection, config)));

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr().context("cannot read the bound address")?;
        let shutdown = shutdown_signal()?;
        println!(
            "dim-serve: {rows} images; listening on http://{address}/{}",
            if protected { " (token required)" } else { "" }
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("the server stopped with an error")?;
        eprintln!("dim-serve: stopped");
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so a signal sent as soon as the address is printed is not missed (or,
/// where the parent ignores SIGINT, dropped).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        eprintln!("dim-serve: shutting down; finishing requests in flight");
    })
}
