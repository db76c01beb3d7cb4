//! `dim-demo`, the main job: writes the Fashion-MNIST test images as PNG files (first run only),
//! embeds them with the shipped model, builds an HNSW index, queries every image against it,
//! prints a few queries with their neighbours and the mean precision@10, and writes a contact
//! sheet (`index.html`) and a JSON summary.

mod contact_sheet;
mod fashion_png;
mod neighbours;

use anyhow::Context;
use clap::Parser;
use dim_infer::embed_job::{self, EmbedJob};
use dim_infer::embedder::{Embedder, EmbedderOptions, Feature};
use dim_infer::index::{self, IndexFiles, IndexParams};
use dim_models::atomic_file::write_bytes_atomically;
use fashion_png::CLASS_NAMES;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Embed, index and search the Fashion-MNIST test set with a DIM encoder.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Folder with Fashion-MNIST's t10k-*-ubyte.gz files.
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    fashion_mnist: PathBuf,
    /// Exported model (default: the shipped model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where the PNG files are written (once).
    #[arg(long, default_value = "data/fashion-mnist-test")]
    images: PathBuf,
    /// Output folder: embeddings, index, summary.json and index.html.
    #[arg(long, default_value = "demo-output")]
    out: PathBuf,
    /// Neighbours per query.
    #[arg(short, default_value_t = 10)]
    k: usize,
    /// HNSW search breadth.
    #[arg(long, default_value_t = 64)]
    ef: usize,
    /// Queries printed and drawn on the contact sheet.
    #[arg(long, default_value_t = 12)]
    show: usize,
    /// Images per model run.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// ONNX Runtime threads (0: its choice).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let collection = fashion_png::ensure_test_pngs(&args.fashion_mnist, &args.images)?;
    let mut options =
        EmbedderOptions { feature: Feature::Embedding, threads: args.threads, ..Default::default() };
    if let Some(model) = &args.model {
        options.model = model.clone();
    }
    let mut embedder = Embedder::try_new(options)?;
    let model_path = embedder.model_path().to_path_buf();
    eprintln!(
        "model: {} ({}-d {})",
        model_path.display(),
        embedder.dim(),
        embedder.metadata().embedding_source
    );

    // One cache per model: a new shipped model re-embeds instead of being refused by the
    // embeddings directory of the previous one.
    let digest = &embedder.metadata().checkpoint_sha256;
    let embeddings_dir = args.out.join(format!("embeddings-{}", &digest[..digest.len().min(12)]));
    let started = Instant::now();
    let summary = embed_job::run(
        &mut embedder,
        &EmbedJob {
            files: collection.files.clone(),
            skipped_inputs: Vec::new(),
            out_dir: embeddings_dir.clone(),
            batch_size: args.batch,
            force: false,
            show_progress: true,
        },
    )?;
    eprintln!(
        "embedded {} new, reused {}, skipped {} in {:.1} s",
        summary.embedded,
        summary.reused,
        summary.skipped.len(),
        started.elapsed().as_secs_f64()
    );
    for skipped in &summary.skipped {
        eprintln!("  skipped {}: {}", skipped.path.display(), skipped.reason);
    }

    let index_dir = args.out.join("index");
    let info = index::build(&embeddings_dir, &index_dir, &IndexParams::default())?;
    eprintln!("indexed {} vectors in {:.1} s", info.count, info.build_seconds);

    let mut files = IndexFiles::open(&index_dir)?;
    let index = files.load()?;
    let label_of_path: std::collections::HashMap<&std::path::Path, usize> =
        collection.files.iter().map(PathBuf::as_path).zip(collection.labels.iter().copied()).collect();
    let labels: Vec<usize> = index
        .manifest
        .rows
        .iter()
        .map(|row| {
            label_of_path
                .get(row.path.as_path())
                .copied()
                .with_context(|| format!("{} is not a Fashion-MNIST test image", row.path.display()))
        })
        .collect::<anyhow::Result<_>>()?;

    let started = Instant::now();
    let results = neighbours::query_all(&index, args.k, args.ef)?;
    let query_seconds = started.elapsed().as_secs_f64();
    let precision = neighbours::precision_at_k(&results, &labels, args.k, CLASS_NAMES.len());

    let stride = (results.len() / args.show.max(1)).max(1);
    let shown: Vec<&neighbours::QueryResult> = results.iter().step_by(stride).take(args.show).collect();
    println!("\nA few queries and their {} nearest neighbours (class, cosine similarity):", args.k);
    for query in shown.iter().take(5) {
        let label = labels[query.row];
        println!("query {:05} [{}]", query.row, CLASS_NAMES[label]);
        for hit in &query.hits {
            let mark = if labels[hit.row] == label { ' ' } else { '✗' };
            println!(
                "   {:>2}. {:<11} {:.3} {mark} {}",
                hit.rank,
                CLASS_NAMES[labels[hit.row]],
                hit.score,
                hit.path.display()
            );
        }
    }
    println!(
        "\nmean precision@{} over all {} test images as queries: {:.4} ({:.0} queries/s)",
        args.k,
        precision.queries,
        precision.mean,
        precision.queries as f64 / query_seconds
    );

    let html = contact_sheet::render(&contact_sheet::Sheet {
        model: &model_path,
        precision: &precision,
        queries: &shown,
        files: &index.manifest.rows.iter().map(|row| row.path.clone()).collect::<Vec<_>>(),
        labels: &labels,
    })?;
    let html_path = args.out.join("index.html");
    write_bytes_atomically(&html_path, html.as_bytes())?;
    let summary_json = serde_json::json!({
        "model": model_path,
        "checkpoint_sha256": embedder.metadata().checkpoint_sha256,
        "feature": "embedding",
        "embedding_source": embedder.metadata().embedding_source,
        "images": collection.files.len(),
        "skipped": summary.skipped.len(),
        "precision": precision,
        "classes": CLASS_NAMES,
        "index": { "m": info.params.m, "ef_construction": info.params.ef_construction, "ef": args.ef },
        "queries_per_second": precision.queries as f64 / query_seconds,
    });
    write_bytes_atomically(
        &args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary_json)?.as_bytes(),
    )?;
    println!("contact sheet: {}", html_path.display());
    Ok(())
}
