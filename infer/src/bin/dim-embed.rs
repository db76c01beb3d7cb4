//! dim-embed: embeds image files, directories and lists with an exported DIM model into
//! `embeddings.npy` + `manifest.json` + `skipped.json`, incrementally.

use anyhow::Context;
use clap::{Parser, Subcommand};
use dim_infer::collection;
use dim_infer::embed_job::{self, EmbedJob};
use dim_infer::embedder::{Embedder, EmbedderOptions};
use dim_infer::parquet_metadata::{self, KnownFacts, METADATA_FILE};
use dim_infer::session::ExecutionProvider;
use dim_infer::shard::{self, Shard};
use dim_models::tap::Feature;
use dim_vectors::manifest::Manifest;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Embed images with an exported DIM model (ONNX Runtime).
///
/// To split a collection across machines, run `--shard I/N` (I = 0..N-1) on each with its own
/// --out, then `dim-embed merge OUT SHARD_DIR...`.
#[derive(Parser, Debug)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Join shard directories (from `--shard I/N` runs) into one, as a single run would have
    /// written it: rows ordered by path; every shard must hold the same model and feature, and
    /// no file may be in two shards.
    Merge {
        /// The merged embeddings directory to write.
        out: PathBuf,
        /// The shard directories.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
    },
    /// Write metadata.parquet for an existing embeddings directory: one row per embedding, in
    /// order, with path, row, size, mtime, sha256, upright width and height, model digest and
    /// feature. Files whose facts an earlier metadata.parquet there already holds are not read.
    ExportParquet {
        /// The embeddings directory.
        dir: PathBuf,
    },
}

/// Embedding settings.
#[derive(clap::Args, Debug)]
struct Args {
    /// Image files or directories (searched recursively for image extensions). A first input
    /// named like a subcommand (`merge`, `export-parquet`) is read as that subcommand: write
    /// `./merge` for a folder of that name.
    inputs: Vec<PathBuf>,
    /// A file listing one image path per line (relative paths are relative to the list).
    #[arg(long)]
    list: Vec<PathBuf>,
    /// The exported model (default: the shipped Fashion-MNIST model, compiled into the binary).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output directory for embeddings.npy, manifest.json and skipped.json.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Embed only shard I of N (0 <= I < N): the inputs whose path hashes to I. Shards never
    /// overlap and together cover every input.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Images per model run.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// ONNX Runtime threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Threads decoding images a few batches ahead of the model (0: one per core). The closing
    /// line says how long the model waited for them.
    #[arg(long, default_value_t = 0)]
    decode_threads: usize,
    /// Which output to store: embedding, conv, fc or y; or duplicate, for `dim-search
    /// duplicates`: the embedding made invariant to brightness, contrast and mirroring (contrast-
    /// normalised input, averaged with its mirror image; two model runs per image).
    #[arg(long, default_value = "embedding")]
    feature: Feature,
    /// Execution provider: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    ep: ExecutionProvider,
    /// Fail instead of falling back to the CPU when the provider is unavailable.
    #[arg(long)]
    strict_ep: bool,
    /// Also write metadata.parquet (see `dim-embed export-parquet --help`). Once a directory has
    /// one, every later run keeps it up to date.
    #[arg(long)]
    parquet: bool,
    /// Re-embed everything, replacing vectors from another model or feature.
    #[arg(long)]
    force: bool,
    /// Decode every JPEG at full size (default: large JPEGs are decoded at a reduced DCT scale).
    #[arg(long)]
    full_jpeg_decode: bool,
    /// Skip images with more pixels than this (width × height), before decoding them. Default:
    /// DIM_MAX_IMAGE_PIXELS if set, else 268435456 (256 Mpx, about 1 GB decoded).
    #[arg(long)]
    max_image_pixels: Option<u64>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Merge { out, shards }) => merge(&out, &shards),
        Some(Command::ExportParquet { dir }) => {
            let tables = [dir.join(METADATA_FILE)];
            write_parquet(&dir, &tables)
        }
        None => run(cli.args),
    };
    if let Err(error) = result {
        eprintln!("dim-embed: error: {error:#}");
        std::process::exit(1);
    }
}

fn merge(out: &std::path::Path, shards: &[PathBuf]) -> anyhow::Result<()> {
    let summary = shard::merge(out, shards)?;
    println!(
        "merged {} shards: {} rows, {} skipped files; in {}",
        shards.len(),
        summary.rows,
        summary.skipped,
        dim_models::path_record::display(out)
    );
    let tables: Vec<PathBuf> = shards.iter().map(|dir| dir.join(METADATA_FILE)).collect();
    if tables.iter().any(|table| table.exists()) {
        write_parquet(out, &tables)?;
    }
    Ok(())
}

/// Writes `dir/metadata.parquet`, reusing the facts in `tables` (earlier metadata files).
fn write_parquet(dir: &std::path::Path, tables: &[PathBuf]) -> anyhow::Result<()> {
    let manifest = Manifest::read(dir)?;
    let known = KnownFacts::read(tables);
    let summary = parquet_metadata::write(dir, &manifest, &known, std::io::stderr().is_terminal())?;
    println!(
        "wrote {} rows to {} ({} files read, {} facts reused)",
        summary.rows,
        dim_models::path_record::display(&dir.join(METADATA_FILE)),
        summary.read,
        summary.reused
    );
    if summary.unavailable > 0 {
        println!(
            "{} files are gone or changed since they were embedded: their sha256, width and height are null",
            summary.unavailable
        );
    }
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.inputs.is_empty() && args.list.is_empty() {
        anyhow::bail!("no inputs: name image files or directories, or pass --list FILE");
    }
    let out = args.out.clone().context("--out is required")?;
    let mut collection = collection::gather(&args.inputs, &args.list)?;
    if let Some(shard) = args.shard {
        collection.files.retain(|path| shard.contains(path));
        collection.skipped.retain(|skipped| shard.contains(&skipped.path));
    }
    let mut embedder = Embedder::try_new(EmbedderOptions {
        model: args.model.unwrap_or_else(dim_models::shipped_model::path),
        feature: args.feature,
        threads: args.threads,
        execution_provider: args.ep,
        strict_execution_provider: args.strict_ep,
        reduced_jpeg: !args.full_jpeg_decode,
        max_image_pixels: args.max_image_pixels.unwrap_or_else(dim_models::preprocess::configured_max_pixels),
    })
    .context("cannot load the model")?;
    if let (provider, Some(reason)) = embedder.execution_provider() {
        eprintln!("dim-embed: {reason}; running on {}", provider.name());
    }
    let job = EmbedJob {
        files: collection.files,
        skipped_inputs: collection.skipped,
        out_dir: out.clone(),
        batch_size: args.batch,
        decode_threads: args.decode_threads,
        force: args.force,
        show_progress: std::io::stderr().is_terminal(),
        stop: None,
    };
    let summary = embed_job::run(&mut embedder, &job)?;
    let table = out.join(METADATA_FILE);
    let write_table = args.parquet || table.exists();
    if let Some(reason) = &summary.discarded_previous {
        eprintln!(
            "dim-embed: the previous run's vectors were not reused ({reason}); embedded everything again"
        );
    }
    println!(
        "embedded {} images in {:.1} s ({:.0} images/s; {}), kept {} unchanged, dropped {}; {} rows of \
         {} `{}` values in {}",
        summary.embedded,
        summary.seconds,
        summary.embedded as f64 / summary.seconds.max(1e-9),
        summary.stages.describe(summary.seconds),
        summary.reused,
        summary.dropped,
        summary.total_rows,
        embedder.dim(),
        embedder.feature().name(),
        dim_models::path_record::display(&out)
    );
    if !summary.skipped.is_empty() {
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for skipped in &summary.skipped {
            *reasons.entry(skipped.reason.as_str()).or_default() += 1;
        }
        println!("skipped {} files (listed in skipped.json):", summary.skipped.len());
        for (reason, count) in reasons {
            println!("  {count} × {reason}");
        }
    }
    if write_table {
        write_parquet(&out, &[table])?;
    }
    Ok(())
}
