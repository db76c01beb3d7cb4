//! `dim-demo`, the main job: writes the Fashion-MNIST test images as PNG files (first run only),
//! embeds them with the shipped model, builds an HNSW index with the default post-processing
//! (centring + PCA-whitening fitted on the collection), queries every image against it, prints a
//! few queries with their neighbours and the mean precision@10, sets the model's exact-search
//! precision@10 beside raw pixels' on the same queries (as embedded and post-processed alike),
//! and writes a contact sheet (`index.html`) and a JSON summary.

mod contact_sheet;
mod fashion_png;
mod neighbours;

use anyhow::Context;
use clap::Parser;
use dim_index::index::{self, IndexParams, SearchIndex};
use dim_infer::embed_job::{self, EmbedJob};
use dim_infer::embedder::{Embedder, EmbedderOptions};
use dim_models::atomic_file::write_bytes_atomically;
use dim_models::preprocess;
use dim_models::tap::Feature;
use dim_vectors::distance::Metric;
use dim_vectors::post_process::{Pca, PcaSpec};
use dim_vectors::retrieval::{self, RetrievalScores};
use fashion_png::CLASS_NAMES;
use rayon::prelude::*;
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
    /// Principal components kept by the index's post-processing (0: none, search as embedded).
    #[arg(long, default_value_t = 256)]
    pca: usize,
    /// Keep the PCA's variances instead of whitening the components.
    #[arg(long)]
    no_whiten: bool,
}

/// One line of the comparison: a representation's exact-search retrieval scores.
#[derive(serde::Serialize)]
struct ComparisonRow {
    features: String,
    dims: usize,
    #[serde(flatten)]
    scores: RetrievalScores,
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
            decode_threads: 0,
            force: false,
            show_progress: true,
            stop: None,
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
    let post_process =
        (args.pca > 0).then_some(PcaSpec { dims: args.pca, whiten: !args.no_whiten, eps: 1e-6 });
    let params = IndexParams { post_process, ..IndexParams::default() };
    let info = index::build(&embeddings_dir, &index_dir, &params)?;
    eprintln!("indexed {} vectors in {:.1} s", info.count, info.build_seconds);

    let index = SearchIndex::open(&index_dir)?;
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

    let comparison = compare_with_pixels(&index, &labels, &embedder, args)?;
    println!("\nexact search, every test image a query (cosine):");
    println!("{:<44} {:>5} {:>8} {:>8} {:>8}", "features", "dims", "p@10", "macro", "k-NN");
    for row in &comparison {
        println!(
            "{:<44} {:>5} {:>8.4} {:>8.4} {:>8.4}",
            row.features,
            row.dims,
            row.scores.precision_at_k_micro,
            row.scores.precision_at_k_macro,
            row.scores.knn_accuracy
        );
    }

    let html = contact_sheet::render(&contact_sheet::Sheet {
        model: &model_path,
        comparison: &comparison.iter().map(|row| (row.features.as_str(), &row.scores)).collect::<Vec<_>>(),
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
        "exact_search_comparison": comparison,
        "classes": CLASS_NAMES,
        "index": {
            "m": info.params.m,
            "ef_construction": info.params.ef_construction,
            "ef": args.ef,
            "post_process": info.post_process,
        },
        "queries_per_second": precision.queries as f64 / query_seconds,
    });
    write_bytes_atomically(
        &args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary_json)?.as_bytes(),
    )?;
    println!("contact sheet: {}", html_path.display());
    Ok(())
}

/// Exact-search retrieval of the model's vectors and of the raw pixels the model sees (its own
/// preprocessing of the same files), each as embedded and through the same kind of
/// post-processing as the index (fitted on this collection), so the page shows what the model adds.
fn compare_with_pixels(
    index: &dim_index::index::SearchIndex,
    labels: &[usize],
    embedder: &Embedder,
    args: &Args,
) -> anyhow::Result<Vec<ComparisonRow>> {
    let labels: Vec<u32> = labels.iter().map(|&label| label as u32).collect();
    let spec = embedder.input_spec();
    let pixels: Vec<Vec<f32>> = index
        .manifest
        .rows
        .par_iter()
        .map(|row| {
            let image = preprocess::decode_file(&row.path, preprocess::configured_max_pixels())
                .with_context(|| format!("cannot read {}", row.path.display()))?;
            Ok(preprocess::image_to_input(&image, &spec))
        })
        .collect::<anyhow::Result<_>>()?;
    let pixels = pixels.concat();
    let model = index.vectors.values.as_slice();
    let mut sets = vec![
        (
            format!("model `{}` as embedded", embedder.metadata().embedding_source),
            model.to_vec(),
            index.vectors.cols,
        ),
        ("raw pixels as the model sees them".to_string(), pixels.clone(), spec.len()),
    ];
    if let Some(pca) = &index.post_process {
        let description = pca.description();
        let name = format!("PCA {}{}", description.dims, if description.whiten { " whitened" } else { "" });
        let pixel_pca = Pca::fit(
            &pixels,
            spec.len(),
            &PcaSpec {
                dims: description.dims.min(spec.len() - 1),
                whiten: description.whiten,
                eps: description.eps,
            },
        )?;
        sets.insert(1, (format!("model + {name} (the index)"), pca.apply_rows(model)?, description.dims));
        sets.push((
            format!("raw pixels + {name}"),
            pixel_pca.apply_rows(&pixels)?,
            pixel_pca.description().dims,
        ));
    }
    sets.into_iter()
        .map(|(features, values, dims)| {
            let scores = retrieval::evaluate(&values, dims, &labels, args.k, Metric::Cosine)?;
            Ok(ComparisonRow { features, dims, scores })
        })
        .collect()
}
