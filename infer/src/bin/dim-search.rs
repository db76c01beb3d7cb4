//! dim-search: builds an HNSW index over an embeddings directory (optionally on PCA-reduced,
//! whitened vectors), publishes one into PostgreSQL with pgvector, answers similarity queries
//! from either, measures recall against exact search, and measures the retrieval quality of a
//! labelled embeddings directory.

use anyhow::Context;
use clap::{ArgGroup, Args as ClapArgs, Parser, Subcommand};
use dim_index::duplicates::{self, DuplicateParams};
use dim_index::embeddings_retrieval::{EmbeddingsReport, LabelSource};
use dim_index::index::{self, Hit, IndexParams, SearchIndex};
use dim_infer::embedder::{Embedder, EmbedderOptions};
use dim_infer::image_search::QueryModel;
use dim_infer::pgvector_store::{self, PublishOptions, PublishedTable, QuerySpace};
use dim_infer::session::ExecutionProvider;
use dim_vectors::distance::Metric;
use dim_vectors::manifest::{Manifest, ModelIdentity};
use dim_vectors::npy;
use dim_vectors::post_process::{DEFAULT_WHITEN_EPS, PcaSpec, PostProcessChoice};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Similarity search over dim-embed outputs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build an index from an embeddings directory.
    Build {
        /// The dim-embed output directory.
        #[arg(long)]
        embeddings: PathBuf,
        /// The index directory to write (replaced if it holds an index).
        #[arg(long)]
        out: PathBuf,
        /// cosine or l2.
        #[arg(long, default_value = "cosine")]
        metric: Metric,
        /// Links per node and layer.
        #[arg(long, default_value_t = 16)]
        m: usize,
        /// Candidate list size while building.
        #[arg(long, default_value_t = 200)]
        ef_construction: usize,
        /// Rows to leave out of the graph as unseen queries for `eval`.
        #[arg(long, default_value_t = 0)]
        hold_out: usize,
        #[command(flatten)]
        post_process: PostProcessArgs,
    },
    /// Load an embeddings directory into a PostgreSQL table with pgvector (created with an HNSW
    /// index if missing). Reruns send only new or changed rows; several shard directories can
    /// be published into one table at once; another model's vectors are refused.
    Publish {
        /// The dim-embed output directory.
        #[arg(long)]
        embeddings: PathBuf,
        /// The server: a postgresql:// URL or a `key=value` connection string.
        #[arg(long, value_name = "URL")]
        postgres: String,
        /// The table (lower-case letters, digits, underscores).
        #[arg(long)]
        table: String,
        /// Rows per transaction.
        #[arg(long, default_value_t = 10_000)]
        batch_rows: usize,
        /// Links per node and layer of the pgvector HNSW index.
        #[arg(long, default_value_t = 16)]
        m: usize,
        /// Candidate list size while building the pgvector HNSW index.
        #[arg(long, default_value_t = 200)]
        ef_construction: usize,
        /// The post-processing fitted (on this directory) when the publish creates the table, as
        /// for `build`; an existing table keeps its own.
        #[command(flatten)]
        post_process: PostProcessArgs,
    },
    /// Find the nearest images to query images, rows or vectors, in an index directory or a
    /// published PostgreSQL table.
    #[command(group(ArgGroup::new("store").required(true).args(["index", "postgres"])))]
    Query {
        /// The index directory.
        #[arg(long)]
        index: Option<PathBuf>,
        /// Search a table published with `dim-search publish` on this server instead.
        #[arg(long, value_name = "URL", requires = "table")]
        postgres: Option<String>,
        /// The published table (with --postgres).
        #[arg(long, requires = "postgres")]
        table: Option<String>,
        /// Query images (embedded with the index's model).
        #[arg(long, num_args = 1.., conflicts_with_all = ["row", "vector"])]
        image: Vec<PathBuf>,
        /// Query with the vector of this manifest row (with --postgres: the row it was published from).
        #[arg(long, conflicts_with = "vector")]
        row: Option<usize>,
        /// Query with each row of this float32 .npy file.
        #[arg(long)]
        vector: Option<PathBuf>,
        /// Results per query.
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Search candidate list size.
        #[arg(long, default_value_t = 64)]
        ef: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The model for image queries (default: the shipped model); must be the index's model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Execution provider for image queries: cpu or cuda.
        #[arg(long, default_value = "cpu")]
        ep: ExecutionProvider,
    },
    /// List groups of near-duplicate images in an index: rows whose cosine similarity reaches
    /// --threshold are linked, and linked rows form groups. Writes JSON and an HTML contact sheet.
    Duplicates {
        /// The index directory (built with the cosine metric).
        #[arg(long)]
        index: PathBuf,
        /// Cosine similarity at or above which two images are near-duplicates. The defaults were
        /// chosen on the duplicate benchmark (bench/results/duplicates.md) for vectors without
        /// whitening: 0.9964 for the `duplicate` feature (embed with `dim-embed --feature
        /// duplicate`, which also matches brightened and mirrored copies), 0.9994 for
        /// `embedding`. Required for other features and for an index built with --whiten.
        #[arg(long)]
        threshold: Option<f32>,
        /// Neighbours each image searches.
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Search candidate list size.
        #[arg(long, default_value_t = 64)]
        ef: usize,
        /// Write the groups (members and linking pairs with scores) as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a standalone HTML contact sheet of the groups here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Groups drawn in the contact sheet (largest first).
        #[arg(long, default_value_t = 200)]
        html_groups: usize,
    },
    /// Measure recall@k against exact search, and queries/s.
    Eval {
        /// The index directory.
        #[arg(long)]
        index: PathBuf,
        /// Number of queries (held-out rows if the index has them, else perturbed rows).
        #[arg(long, default_value_t = 1000)]
        queries: usize,
        /// Neighbours per query.
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Search candidate list sizes (comma-separated; one measurement each).
        #[arg(long, value_delimiter = ',', default_value = "64")]
        ef: Vec<usize>,
        /// Where to save the JSON report (default: INDEX/eval.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure retrieval quality over a labelled embeddings directory by exact search (every
    /// row queries all the others): precision@k (micro and macro), mAP@k and k-NN accuracy,
    /// as embedded and, with --pca, after PCA fitted on the same rows.
    #[command(group(ArgGroup::new("label_source").required(true).args(["labels_from_folder", "labels"])))]
    Retrieval {
        /// The dim-embed output directory.
        #[arg(long)]
        embeddings: PathBuf,
        /// Label each row by the name of the folder holding its file.
        #[arg(long)]
        labels_from_folder: bool,
        /// Label each row by a line of this text file (one line per manifest row, in order).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Neighbours per query.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        /// cosine or l2.
        #[arg(long, default_value = "cosine")]
        metric: Metric,
        #[command(flatten)]
        post_process: PostProcessArgs,
        /// Where to save the JSON report.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// The collection-fitted post-processing of vectors.
#[derive(ClapArgs, Debug)]
struct PostProcessArgs {
    /// Centre and project onto the top D principal components of the vectors (0: none). Without
    /// it, `build` applies the model's recommended post-processing (recorded in the model and the
    /// manifest as `search_recipe`) when the collection is large enough for it.
    #[arg(long, value_name = "D")]
    pca: Option<usize>,
    /// Also divide each component by the square root of its variance + --whiten-eps.
    #[arg(long, requires = "pca")]
    whiten: bool,
    /// Added to each variance before whitening.
    #[arg(long, default_value_t = DEFAULT_WHITEN_EPS, requires = "whiten")]
    whiten_eps: f64,
}

impl PostProcessArgs {
    /// The post-processing to fit on `embeddings` (less `hold_out` rows): the one asked for, or
    /// else the model's recommended one when the collection is large enough for it, said on stderr.
    fn resolve(&self, embeddings: &std::path::Path, hold_out: usize) -> anyhow::Result<Option<PcaSpec>> {
        let choice = self.choice();
        if let PostProcessChoice::Given(spec) = choice {
            return Ok(spec);
        }
        let manifest = Manifest::read(embeddings)?;
        let indexed = manifest.count.saturating_sub(hold_out);
        let recommended = choice.resolve(manifest.search_recipe, indexed);
        match (manifest.search_recipe, recommended) {
            (Some(recipe), Some(_)) => eprintln!(
                "dim-search: applying the model's recommended {} (pass --pca 0 for none)",
                recipe.describe()
            ),
            (Some(recipe), None) => eprintln!(
                "dim-search: the model recommends {} from {} images; {indexed} is too few, so none",
                recipe.describe(),
                recipe.min_rows
            ),
            (None, _) => {}
        }
        Ok(recommended)
    }

    fn choice(&self) -> PostProcessChoice {
        PostProcessChoice::from_flags(self.pca, self.whiten, self.whiten_eps)
    }

    /// The post-processing given on the command line, if any (`retrieval` scores only that).
    fn asked(&self) -> Option<PcaSpec> {
        match self.choice() {
            PostProcessChoice::Given(spec) => spec,
            PostProcessChoice::Recommended => None,
        }
    }
}

fn main() {
    if let Err(error) = run(Args::parse().command) {
        eprintln!("dim-search: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Build { embeddings, out, metric, m, ef_construction, hold_out, post_process } => {
            let post_process = post_process.resolve(&embeddings, hold_out)?;
            let params = IndexParams { metric, m, ef_construction, hold_out, post_process };
            let info = index::build(&embeddings, &out, &params).context("cannot build the index")?;
            let dims = match &info.post_process {
                Some(pca) => format!(
                    "{}-d PCA{} of {}-d, {:.1}% of the variance, fitted in {:.2} s",
                    pca.dims,
                    if pca.whiten { " whitened" } else { "" },
                    pca.input_dim,
                    100.0 * pca.retained_variance,
                    pca.fit_seconds
                ),
                None => format!("{}-d", info.model.dim),
            };
            println!(
                "indexed {} vectors ({dims}, {}) in {:.2} s, held out {}; index in {}",
                info.count,
                metric.name(),
                info.build_seconds,
                info.held_out.len(),
                out.display()
            );
            if !info.unreachable.is_empty() {
                println!(
                    "{} rows were not found by their own vector in the graph; every search scores them exactly",
                    info.unreachable.len()
                );
            }
        }
        Command::Publish { embeddings, postgres, table, batch_rows, m, ef_construction, post_process } => {
            let mut client = pgvector_store::connect(&postgres)?;
            let options = PublishOptions {
                table: table.clone(),
                batch_rows,
                m,
                ef_construction,
                post_process: post_process.resolve(&embeddings, 0)?,
                show_progress: std::io::stderr().is_terminal(),
            };
            let summary = pgvector_store::publish(&mut client, &embeddings, &options)?;
            if let Some(pca) = &summary.post_process {
                let when = if summary.created {
                    "fitted now on these rows"
                } else {
                    "fitted when the table was created"
                };
                eprintln!("dim-search: table {table} holds vectors after {} ({when})", pca.spec().describe());
            }
            println!(
                "published {} rows in {} batches ({:.0} rows/s), {} already current; table {table} holds {} rows",
                summary.published,
                summary.batches,
                summary.published as f64 / summary.seconds.max(1e-9),
                summary.unchanged,
                summary.table_rows
            );
        }
        Command::Query { index: Some(index), image, row, vector, k, ef, json, model, ep, .. } => {
            let loaded = SearchIndex::open(&index)?;
            let queries: Vec<(String, Vec<f32>)> = if let Some(row) = row {
                if row >= loaded.vectors.rows {
                    anyhow::bail!(
                        "--row {row} is out of range: the index has rows 0..{}",
                        loaded.vectors.rows
                    );
                }
                vec![(format!("row {row}"), loaded.vectors.row(row).to_vec())]
            } else {
                let store = format!("the index {}", index.display());
                external_queries(&loaded.info.model, &store, &image, vector, model, ep)?
            };
            let mut results = Vec::new();
            for (name, query) in &queries {
                results.push((name.clone(), loaded.search(query, k, ef)?));
            }
            print_results(&results, json)?;
        }
        Command::Query {
            postgres: Some(url),
            table: Some(table),
            image,
            row,
            vector,
            k,
            ef,
            json,
            model,
            ep,
            ..
        } => {
            let mut client = pgvector_store::connect(&url)?;
            let published = PublishedTable::open(&mut client, &table)?;
            let (queries, space): (Vec<(String, Vec<f32>)>, QuerySpace) = if let Some(row) = row {
                let vector = published
                    .row_vector(&mut client, row)?
                    .with_context(|| format!("table {table} has no row published from row {row}"))?;
                (vec![(format!("row {row}"), vector)], QuerySpace::Stored)
            } else {
                let store = format!("the table {table}");
                (external_queries(&published.model, &store, &image, vector, model, ep)?, QuerySpace::Embedded)
            };
            let mut results = Vec::new();
            for (name, query) in &queries {
                results.push((name.clone(), published.search(&mut client, query, space, k, ef)?));
            }
            print_results(&results, json)?;
        }
        Command::Query { .. } => anyhow::bail!("give --index DIR, or --postgres URL with --table NAME"),
        Command::Duplicates { index, threshold, k, ef, json, html, html_groups } => {
            let loaded = SearchIndex::open(&index)?;
            let feature = loaded.info.model.feature;
            let threshold = match threshold {
                Some(threshold) => threshold,
                None => {
                    if let Some(pca) = loaded.info.post_process.as_ref().filter(|pca| pca.whiten) {
                        anyhow::bail!(
                            "the index is whitened ({}-d PCA) and the default thresholds were chosen on unwhitened \
                             vectors: pass --threshold, or build the index with --pca 0",
                            pca.dims
                        );
                    }
                    duplicates::default_threshold(feature).ok_or_else(|| {
                        anyhow::anyhow!(
                            "no default threshold for feature `{}`: pass --threshold, or embed with \
                             `dim-embed --feature duplicate` (made for near-duplicates)",
                            feature.name()
                        )
                    })?
                }
            };
            let report = duplicates::find(&loaded, &DuplicateParams { threshold, k, ef })?;
            println!(
                "{} groups of near-duplicates ({} images, {} pairs at cosine >= {threshold}) among {} images",
                report.groups.len(),
                report.images_in_groups,
                report.pair_count,
                report.rows_searched
            );
            for (number, group) in report.groups.iter().take(10).enumerate() {
                let names: Vec<String> =
                    group.members.iter().map(|m| dim_models::path_record::display(&m.file)).collect();
                println!("  group {}: {}", number + 1, names.join("  "));
            }
            if let Some(path) = json {
                write_output(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
                println!("groups in {}", path.display());
            }
            if let Some(path) = html {
                let page = duplicates::contact_sheet(
                    &report,
                    html_groups,
                    128,
                    dim_models::preprocess::configured_max_pixels(),
                );
                write_output(&path, page.as_bytes())?;
                println!("contact sheet in {}", path.display());
            }
        }
        Command::Eval { index, queries, k, ef, out } => {
            let loaded = SearchIndex::open(&index)?;
            let evaluations = index::evaluate(&loaded, queries, k, &ef)?;
            let report = serde_json::to_string_pretty(&evaluations)?;
            let path = out.unwrap_or_else(|| index.join("eval.json"));
            write_output(&path, report.as_bytes())?;
            println!("{report}");
        }
        Command::Retrieval { embeddings, labels_from_folder, labels, k, metric, post_process, json } => {
            let source = match labels {
                Some(path) => LabelSource::File(path),
                None if labels_from_folder => LabelSource::ParentFolders,
                None => anyhow::bail!("give a label source: --labels-from-folder or --labels FILE"),
            };
            let report =
                EmbeddingsReport::evaluate(&embeddings, &source, k, metric, post_process.asked().as_ref())
                    .context("cannot evaluate retrieval")?;
            print!("{}", report.table());
            if let Some(path) = json {
                write_output(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
                println!("report in {}", path.display());
            }
        }
    }
    Ok(())
}

/// Writes a report or page atomically, naming the file on failure.
fn write_output(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    dim_models::atomic_file::write_bytes_atomically(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Query vectors from a `.npy` file or from images, for `store` (named in errors) holding
/// `identity`'s vectors.
fn external_queries(
    identity: &ModelIdentity,
    store: &str,
    images: &[PathBuf],
    vector: Option<PathBuf>,
    model: Option<PathBuf>,
    ep: ExecutionProvider,
) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    if let Some(path) = vector {
        let matrix = npy::read_matrix(&path)?;
        Ok((0..matrix.rows)
            .map(|i| (format!("{} row {i}", path.display()), matrix.row(i).to_vec()))
            .collect())
    } else if !images.is_empty() {
        let model = model.unwrap_or_else(dim_models::shipped_model::path);
        let embedder = Embedder::try_new(EmbedderOptions {
            model,
            feature: identity.feature,
            execution_provider: ep,
            ..EmbedderOptions::default()
        })
        .context("cannot load the query model")?;
        Ok(QueryModel::for_vectors(embedder, identity, store)?.embed_files(images)?)
    } else {
        anyhow::bail!("give a query: --image FILE..., --row N or --vector FILE.npy");
    }
}

fn print_results(results: &[(String, Vec<Hit>)], json: bool) -> anyhow::Result<()> {
    if json {
        let value: Vec<_> = results
            .iter()
            .map(|(query, hits)| serde_json::json!({ "query": query, "results": hits }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    for (query, hits) in results {
        println!("query: {query}");
        println!("{:>4}  {:>9}  path", "rank", "score");
        for hit in hits {
            println!("{:>4}  {:>9.5}  {}", hit.rank, hit.score, dim_models::path_record::display(&hit.path));
        }
    }
    Ok(())
}
