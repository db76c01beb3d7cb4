//! End-to-end tests of dim-infer on generated images and a small generated model: embedding with
//! odd inputs, incremental reruns, the `.npy` and manifest contract, index build/load/search,
//! recall, the two command-line tools, the Parquet table, and publishing to a real PostgreSQL
//! server with pgvector.

use dim_index::index::{self, IndexParams, QuerySource, SearchIndex};
use dim_infer::embed_job::{self, EmbedJob, EmbedJobError};
use dim_infer::embedder::{EmbedError, Embedder, EmbedderOptions};
use dim_infer::graph_pruning;
use dim_infer::session::{self, SessionError, SessionOptions};
use dim_models::onnx_metadata::{INPUT_NAME, ModelMetadata, OutputInfo};
use dim_models::preprocess::{Background, InputSpec, ResizePolicy};
use dim_models::preset::Preset;
use dim_models::tap::{Feature, Tap};
use dim_vectors::distance::Metric;
use dim_vectors::manifest::{EMBEDDINGS_FILE, MANIFEST_FORMAT_VERSION, Manifest, ManifestRow, ModelIdentity};
use dim_vectors::npy;
use image::{DynamicImage, ImageBuffer, LumaA, Rgb, RgbImage};
use ort::value::TensorRef;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod postgres_server;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The set-up environment's Python (`.dim-env/venv/bin/python`, set by `.cargo/config.toml`).
fn python() -> PathBuf {
    std::env::var_os("DIM_PYTHON")
        .map(PathBuf::from)
        .or_else(|| option_env!("DIM_PYTHON").map(PathBuf::from))
        .expect("DIM_PYTHON is set by .cargo/config.toml (run `cargo xtask setup`)")
}

fn run_python(args: &[&std::ffi::OsStr]) -> String {
    let output = Command::new(python()).args(args).output().expect("the configured Python runs");
    assert!(output.status.success(), "python {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn test_metadata(checkpoint_sha256: &str) -> ModelMetadata {
    let output = |name: &str, dim| OutputInfo { name: name.into(), dim };
    ModelMetadata {
        preset: Preset::Basic32x32,
        input: InputSpec { channels: 1, size: 32, resize: ResizePolicy::Pad, background: Background::White },
        outputs: vec![output("conv", 1024), output("fc", 64), output("y", 16), output("embedding", 64)],
        embedding_source: Tap::Fc,
        training_digest: "test-training".into(),
        training_recipe: None,
        checkpoint_sha256: checkpoint_sha256.into(),
        toolkit_version: dim_models::TOOLKIT_VERSION.into(),
        search_recipe: None,
    }
}

/// Writes the random-projection test model (see `fixtures/make_test_model.py`) with the metadata
/// `ModelMetadata::to_props` gives, or with none.
fn write_model(dir: &Path, checkpoint_sha256: &str, with_metadata: bool) -> PathBuf {
    write_model_with(dir, &test_metadata(checkpoint_sha256), with_metadata)
}

/// [`write_model`] with the given metadata.
fn write_model_with(dir: &Path, metadata: &ModelMetadata, with_metadata: bool) -> PathBuf {
    let checkpoint_sha256 = &metadata.checkpoint_sha256;
    let props: HashMap<String, String> = metadata.to_props().into_iter().collect();
    let props_path = dir.join(format!("{checkpoint_sha256}-props.json"));
    std::fs::write(&props_path, serde_json::to_string(&props).unwrap()).unwrap();
    let model = dir.join(format!("{checkpoint_sha256}-{with_metadata}.onnx"));
    let script = Path::new(FIXTURES).join("make_test_model.py");
    let mut args = vec![script.as_os_str(), model.as_os_str(), props_path.as_os_str()];
    if !with_metadata {
        args.push("--no-metadata".as_ref());
    }
    run_python(&args);
    model
}

/// A blocky random RGB image: unrelated to every other seed's image in pixel space.
fn pattern(seed: u64, width: u32, height: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u8
    };
    let blocks: Vec<[u8; 3]> = (0..64).map(|_| [next(), next(), next()]).collect();
    RgbImage::from_fn(width, height, |x, y| Rgb(blocks[((y * 8 / height) * 8 + x * 8 / width) as usize]))
}

fn embedder(model: &Path) -> Embedder {
    Embedder::try_new(EmbedderOptions {
        model: model.to_path_buf(),
        threads: 1,
        ..EmbedderOptions::default()
    })
    .unwrap()
}

fn job(files: Vec<PathBuf>, out: &Path) -> EmbedJob {
    EmbedJob {
        files,
        skipped_inputs: Vec::new(),
        out_dir: out.to_path_buf(),
        batch_size: 8,
        decode_threads: 0,
        force: false,
        show_progress: false,
        stop: None,
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    dim_infer::collection::gather(&[dir.to_path_buf()], &[]).unwrap().files
}

#[test]
fn odd_inputs_are_embedded_or_skipped_and_each_image_finds_itself_then_its_near_duplicate() {
    let temp = tempfile::tempdir().unwrap();
    let model = write_model(temp.path(), "model-a", true);
    let images = temp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for seed in 0..30 {
        pattern(seed, 48, 40).save(images.join(format!("base_{seed:02}.png"))).unwrap();
    }
    let base0 = DynamicImage::ImageRgb8(pattern(0, 48, 40));
    base0
        .resize_exact(96, 80, image::imageops::FilterType::Triangle)
        .save(images.join("dup_resized.png"))
        .unwrap();
    let mut noised = pattern(1, 48, 40);
    for (i, pixel) in noised.pixels_mut().enumerate() {
        let delta = (i * 7919 % 13) as i16 - 6;
        pixel.0 = pixel.0.map(|v| (i16::from(v) + delta).clamp(0, 255) as u8);
    }
    noised.save(images.join("dup_noised.png")).unwrap();
    // Embedded: 16-bit RGB, grey+alpha, CMYK JPEG and a 144-megapixel PNG.
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(40, 40, |x, y| Rgb([(x * 1600) as u16, (y * 1600) as u16, 30000]));
    deep.save(images.join("deep16.png")).unwrap();
    ImageBuffer::from_fn(30, 20, |x, _| LumaA([(x * 8) as u8, 128]))
        .save(images.join("grey_alpha.png"))
        .unwrap();
    run_python(&[Path::new(FIXTURES).join("make_odd_images.py").as_os_str(), images.as_os_str()]);
    // Skipped: truncated PNG, empty file, text named .jpg.
    let whole = std::fs::read(images.join("base_05.png")).unwrap();
    std::fs::write(images.join("truncated.png"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(images.join("empty.png"), b"").unwrap();
    std::fs::write(images.join("text.jpg"), b"just some text, not a JPEG").unwrap();

    let out = temp.path().join("embeddings");
    let mut embedder = embedder(&model);
    let summary = embed_job::run(&mut embedder, &job(files_in(&images), &out)).unwrap();
    let mut skipped: Vec<_> =
        summary.skipped.iter().map(|s| s.path.file_name().unwrap().to_str().unwrap().to_string()).collect();
    skipped.sort();
    assert_eq!(skipped, ["empty.png", "text.jpg", "truncated.png"], "{:?}", summary.skipped);
    assert!(summary.skipped.iter().all(|s| !s.reason.is_empty()));
    assert_eq!(summary.embedded, 36);
    assert_eq!(summary.total_rows, 36);

    let manifest = Manifest::read(&out).unwrap();
    assert_eq!(manifest.format_version, MANIFEST_FORMAT_VERSION);
    assert_eq!(manifest.model, ModelIdentity::of(embedder.metadata(), Feature::Embedding, 64));
    let reread: Manifest = serde_json::from_str(&serde_json::to_string(&manifest).unwrap()).unwrap();
    assert_eq!(reread, manifest);
    let skipped_json: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("skipped.json")).unwrap()).unwrap();
    assert_eq!(skipped_json.len(), 3);

    // numpy reads the same matrix, and the rows are the embedder's own output.
    let matrix = npy::read_matrix(&out.join(EMBEDDINGS_FILE)).unwrap();
    let numpy_summary = run_python(&[
        "-c".as_ref(),
        "import numpy, sys; a = numpy.load(sys.argv[1]); print(a.dtype, a.shape, repr(float(a.sum())))"
            .as_ref(),
        out.join(EMBEDDINGS_FILE).as_os_str(),
    ]);
    let sum: f64 = matrix.values.iter().map(|&v| f64::from(v)).sum();
    let fields: Vec<&str> = numpy_summary.split_whitespace().collect();
    assert_eq!(&fields[..3], ["float32", "(36,", "64)"]);
    assert!((fields[3].parse::<f64>().unwrap() - sum).abs() < 1e-3, "{numpy_summary} vs {sum}");
    let row_of = |name: &str| manifest.rows.iter().position(|r| r.path.ends_with(name)).unwrap();
    let direct = embedder.embed(&[images.join("base_03.png")], 4).unwrap();
    let stored = matrix.row(row_of("base_03.png"));
    assert!(direct.row(0).iter().zip(stored).all(|(a, b)| (a - b).abs() < 1e-5));

    let index_dir = temp.path().join("index");
    let info = index::build(&out, &index_dir, &IndexParams::default()).unwrap();
    assert_eq!(info.count, 36);
    let index = SearchIndex::open(&index_dir).unwrap();
    for row in 0..matrix.rows {
        let hits = index.search(matrix.row(row), 3, 64).unwrap();
        assert_eq!(hits[0].row, row, "row {row} did not find itself first: {hits:?}");
        assert!((hits[0].score - 1.0).abs() < 1e-3);
    }
    for (original, duplicate) in [("base_00.png", "dup_resized.png"), ("base_01.png", "dup_noised.png")] {
        let hits = index.search(matrix.row(row_of(original)), 36, 64).unwrap();
        assert!(hits[1].path.ends_with(duplicate), "{original}: {hits:?}");
        let unrelated_best = hits.iter().skip(2).map(|h| h.score).fold(f32::MIN, f32::max);
        assert!(hits[1].score > unrelated_best + 0.02, "{original}: {hits:?}");
    }
}

#[test]
fn a_rerun_embeds_only_new_or_changed_files_and_another_model_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let model = write_model(temp.path(), "model-a", true);
    let images = temp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for seed in 0..10 {
        pattern(seed, 32, 32).save(images.join(format!("a_{seed}.png"))).unwrap();
    }
    let out = temp.path().join("embeddings");
    let mut embedder = embedder(&model);
    let first = embed_job::run(&mut embedder, &job(files_in(&images), &out)).unwrap();
    assert_eq!((first.embedded, first.reused), (10, 0));
    let before = npy::read_matrix(&out.join(EMBEDDINGS_FILE)).unwrap();

    for seed in 10..13 {
        pattern(seed, 32, 32).save(images.join(format!("b_{seed}.png"))).unwrap();
    }
    // A changed file (other size) is embedded again; its old row is dropped.
    pattern(99, 40, 40).save(images.join("a_4.png")).unwrap();
    let second = embed_job::run(&mut embedder, &job(files_in(&images), &out)).unwrap();
    assert_eq!((second.embedded, second.reused, second.dropped, second.total_rows), (4, 9, 1, 13));
    let manifest = Manifest::read(&out).unwrap();
    let after = npy::read_matrix(&out.join(EMBEDDINGS_FILE)).unwrap();
    for (old_row, row) in Manifest::read(&out).unwrap().rows.iter().take(9).enumerate() {
        assert_eq!(*row, ManifestRow::stat(&row.path).unwrap());
        let old_index = if old_row >= 4 { old_row + 1 } else { old_row };
        assert_eq!(after.row(old_row), before.row(old_index), "kept rows keep their vectors");
    }
    assert!(manifest.rows[9..].iter().any(|r| r.path.ends_with("a_4.png")));

    let third = embed_job::run(&mut embedder, &job(files_in(&images), &out)).unwrap();
    assert_eq!((third.embedded, third.reused), (0, 13));

    // A stopped job (Ctrl-C in the Python package) commits nothing: the directory keeps the
    // previous run's files byte for byte.
    pattern(98, 36, 36).save(images.join("a_5.png")).unwrap();
    let files_before: Vec<Vec<u8>> =
        [EMBEDDINGS_FILE, "manifest.json"].iter().map(|f| std::fs::read(out.join(f)).unwrap()).collect();
    let stop = Some(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)));
    let error =
        embed_job::run(&mut embedder, &EmbedJob { stop, ..job(files_in(&images), &out) }).unwrap_err();
    assert!(matches!(error, EmbedJobError::Interrupted { .. }), "{error}");
    let files_after: Vec<Vec<u8>> =
        [EMBEDDINGS_FILE, "manifest.json"].iter().map(|f| std::fs::read(out.join(f)).unwrap()).collect();
    assert!(files_before == files_after, "an interrupted job changed the directory");
    let resumed = embed_job::run(&mut embedder, &job(files_in(&images), &out)).unwrap();
    assert_eq!((resumed.embedded, resumed.reused), (1, 12));

    let other_model = write_model(temp.path(), "model-b", true);
    let mut other = self::embedder(&other_model);
    let error = embed_job::run(&mut other, &job(files_in(&images), &out)).unwrap_err();
    assert!(matches!(error, EmbedJobError::ModelMismatch { .. }), "{error}");
    assert!(error.to_string().contains("--force"), "{error}");
    let mut fc = Embedder::try_new(EmbedderOptions {
        model: model.clone(),
        feature: Feature::Tap(Tap::Fc),
        ..Default::default()
    })
    .unwrap();
    let error = embed_job::run(&mut fc, &job(files_in(&images), &out)).unwrap_err();
    assert!(error.to_string().contains("feature `fc`"), "{error}");

    let forced =
        embed_job::run(&mut other, &EmbedJob { force: true, ..job(files_in(&images), &out) }).unwrap();
    assert_eq!((forced.embedded, forced.reused), (13, 0));
    assert_eq!(Manifest::read(&out).unwrap().model.checkpoint_sha256, "model-b");
}

#[test]
fn bad_options_and_models_without_metadata_are_refused_clearly() {
    let temp = tempfile::tempdir().unwrap();
    let model = write_model(temp.path(), "model-a", true);
    let mut embedder = embedder(&model);
    assert!(matches!(embedder.embed(&[], 0), Err(EmbedError::ZeroBatchSize)));
    let error = embed_job::run(&mut embedder, &EmbedJob { batch_size: 0, ..job(Vec::new(), temp.path()) });
    assert!(error.unwrap_err().to_string().contains("batch size"));

    let bare = write_model(temp.path(), "model-a", false);
    let error = Embedder::try_new(EmbedderOptions { model: bare, ..Default::default() }).err().unwrap();
    assert!(matches!(error, EmbedError::Session(SessionError::Metadata { .. })), "{error}");
    assert!(error.to_string().contains("dim-export"), "{error}");

    let missing = temp.path().join("nope.onnx");
    let error = Embedder::try_new(EmbedderOptions { model: missing, ..Default::default() }).err().unwrap();
    assert!(error.to_string().contains("does not exist"), "{error}");
}

#[test]
fn each_feature_of_the_shipped_model_runs_on_a_graph_cut_to_its_output_with_the_whole_graphs_values() {
    let model = dim_models::shipped_model::materialise().unwrap();
    let bytes = std::fs::read(&model).unwrap();
    let kept = |output: &str| {
        let pruned = graph_pruning::prune_to_output(&bytes, output).unwrap();
        assert!(pruned.nodes_kept < pruned.nodes_total, "{output}: {pruned:?}");
        pruned.nodes_kept
    };
    // conv needs neither fc nor y; fc has one layer less than y; embedding normalises conv.
    assert!(kept("conv") < kept("fc") && kept("fc") < kept("y") && kept("conv") < kept("embedding"));

    let whole =
        session::build_session(&model, &SessionOptions { threads: 1, ..SessionOptions::default() }).unwrap();
    let spec = whole.metadata.input;
    let count = 5;
    let inputs: Vec<f32> = (0..count * spec.len()).map(|i| ((i * 7919) % 1000) as f32 / 999.0).collect();
    let mut whole_session = whole.session;
    let tensor =
        TensorRef::from_array_view(([count, spec.channels, spec.size, spec.size], inputs.as_slice()))
            .unwrap();
    let outputs = whole_session.run(ort::inputs![INPUT_NAME => tensor]).unwrap();
    for feature in [Feature::Tap(Tap::Conv), Feature::Tap(Tap::Fc), Feature::Tap(Tap::Y), Feature::Embedding]
    {
        let (_, expected) = outputs[feature.output_name()].try_extract_tensor::<f32>().unwrap();
        let mut embedder = Embedder::try_new(EmbedderOptions {
            model: model.clone(),
            feature,
            threads: 1,
            ..EmbedderOptions::default()
        })
        .unwrap();
        let got = embedder.run_batch(&inputs).unwrap();
        assert_eq!(got.len(), expected.len(), "{feature:?}");
        let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "{feature:?}: the pruned graph differs by up to {worst}");
    }
}

/// Writes an embeddings directory holding `vectors` (row-major, `dim` wide) with made-up paths.
fn write_embeddings(dir: &Path, dim: usize, vectors: &[f32]) {
    npy::write_matrix(&dir.join(EMBEDDINGS_FILE), dim, vectors).unwrap();
    let count = vectors.len() / dim;
    let identity = ModelIdentity {
        checkpoint_sha256: "random".into(),
        preset: "basic32x32".into(),
        feature: Feature::Embedding,
        dim,
    };
    Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        toolkit_version: dim_models::TOOLKIT_VERSION.into(),
        model: identity,
        embeddings_sha256: None,
        search_recipe: None,
        count,
        rows: (0..count)
            .map(|i| ManifestRow { path: PathBuf::from(format!("/v/{i}.png")), size: 1, mtime_ns: 0 })
            .collect(),
    }
    .stage(dir)
    .unwrap()
    .commit()
    .unwrap();
}

fn random_vectors(count: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..count * dim)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn recall_at_10_on_held_out_random_vectors_is_at_least_0_95_for_both_metrics() {
    let temp = tempfile::tempdir().unwrap();
    let dim = 32;
    write_embeddings(temp.path(), dim, &random_vectors(2000, dim, 11));
    for metric in [Metric::Cosine, Metric::L2] {
        let index_dir = temp.path().join(metric.name());
        let params = IndexParams { metric, hold_out: 200, ..IndexParams::default() };
        index::build(temp.path(), &index_dir, &params).unwrap();
        let index = SearchIndex::open(&index_dir).unwrap();
        let evaluations = index::evaluate(&index, 200, 10, &[64]).unwrap();
        let evaluation = &evaluations[0];
        assert_eq!(evaluation.query_source, QuerySource::HeldOut);
        assert_eq!((evaluation.queries, evaluation.indexed), (200, 1800));
        assert!(evaluation.recall_at_k >= 0.95, "{metric:?}: {evaluation:?}");
        // The graph and brute force agree on the nearest neighbour of a held-out row.
        let query = index.vectors.row(index.info.held_out[0]).to_vec();
        assert_eq!(
            index.search(&query, 1, 64).unwrap()[0].row,
            index.exact_search(&query, 1).unwrap()[0].row
        );
        assert!(index.search(&query[1..], 1, 64).is_err(), "a query of the wrong width is refused");
    }
}

#[test]
fn the_command_line_tools_embed_build_query_and_refuse_another_model() {
    let temp = tempfile::tempdir().unwrap();
    let model = write_model(temp.path(), "model-a", true);
    let other = write_model(temp.path(), "model-b", true);
    let images = temp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for seed in 0..6 {
        pattern(seed, 32, 32).save(images.join(format!("p_{seed}.png"))).unwrap();
    }
    std::fs::write(images.join("broken.png"), b"\x89PNG").unwrap();
    let run = |program: &str, args: &[&std::ffi::OsStr]| Command::new(program).args(args).output().unwrap();
    let embed = env!("CARGO_BIN_EXE_dim-embed");
    let search = env!("CARGO_BIN_EXE_dim-search");
    let out = temp.path().join("embeddings");
    let output = run(
        embed,
        &[images.as_os_str(), "--model".as_ref(), model.as_os_str(), "--out".as_ref(), out.as_os_str()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("embedded 6 images") && stdout.contains("skipped 1 files"), "{stdout}");

    let index_dir = temp.path().join("index");
    let output = run(
        search,
        &[
            "build".as_ref(),
            "--embeddings".as_ref(),
            out.as_os_str(),
            "--out".as_ref(),
            index_dir.as_os_str(),
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let query = images.join("p_2.png");
    let output = run(
        search,
        &[
            "query".as_ref(),
            "--index".as_ref(),
            index_dir.as_os_str(),
            "--image".as_ref(),
            query.as_os_str(),
            "--model".as_ref(),
            model.as_os_str(),
            "-k".as_ref(),
            "3".as_ref(),
            "--json".as_ref(),
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let first = &results[0]["results"][0];
    assert_eq!(first["rank"], 1);
    assert!(first["path"].as_str().unwrap().ends_with("p_2.png"), "{results}");

    let output = run(
        search,
        &[
            "query".as_ref(),
            "--index".as_ref(),
            index_dir.as_os_str(),
            "--image".as_ref(),
            query.as_os_str(),
            "--model".as_ref(),
            other.as_os_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("is not the model the index"), "{stderr}");

    let output = run(
        embed,
        &[
            images.as_os_str(),
            "--model".as_ref(),
            model.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--batch".as_ref(),
            "0".as_ref(),
        ],
    );
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("batch size"));
}

#[test]
fn build_applies_the_models_recommended_post_processing_to_collections_large_enough() {
    let temp = tempfile::tempdir().unwrap();
    let recipe = dim_models::onnx_metadata::SearchRecipe { pca_dims: 3, whiten: true, min_rows: 8 };
    let metadata = ModelMetadata { search_recipe: Some(recipe), ..test_metadata("model-recipe") };
    let model = write_model_with(temp.path(), &metadata, true);
    let images = temp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for seed in 0..10 {
        pattern(seed, 32, 32).save(images.join(format!("p_{seed}.png"))).unwrap();
    }
    let out = temp.path().join("embeddings");
    let embedded = embed_job::run(&mut embedder(&model), &job(files_in(&images), &out)).unwrap();
    assert_eq!(embedded.total_rows, 10);
    assert_eq!(Manifest::read(&out).unwrap().search_recipe, Some(recipe), "the manifest carries the recipe");

    let build = |name: &str, extra: &[&str]| {
        let index_dir = temp.path().join(name);
        let output = Command::new(env!("CARGO_BIN_EXE_dim-search"))
            .args([
                "build".as_ref(),
                "--embeddings".as_ref(),
                out.as_os_str(),
                "--out".as_ref(),
                index_dir.as_os_str(),
            ])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(index_dir.join("index.json")).unwrap()).unwrap();
        (info["post_process"].clone(), stderr)
    };
    let (applied, note) = build("recommended", &[]);
    assert_eq!((applied["dims"].as_u64(), applied["whiten"].as_bool()), (Some(3), Some(true)), "{applied}");
    assert!(note.contains("recommended pca 3 + whitening"), "{note}");
    let (declined, _) = build("none", &["--pca", "0"]);
    assert!(declined.is_null(), "--pca 0 turns it off: {declined}");
    let (own, _) = build("own", &["--pca", "2"]);
    assert_eq!((own["dims"].as_u64(), own["whiten"].as_bool()), (Some(2), Some(false)));
    let (too_few, note) = build("small", &["--hold-out", "3"]);
    assert!(too_few.is_null(), "7 indexed rows are below the recipe's 8: {too_few}");
    assert!(note.contains("too few"), "{note}");
}

#[test]
fn shards_embedded_apart_and_merged_equal_a_single_run() {
    let temp = tempfile::tempdir().unwrap();
    let model = write_model(temp.path(), "model-shards", true);
    let other = write_model(temp.path(), "model-other", true);
    let images = temp.path().join("images");
    for (folder, seeds) in [("a", 0..5), ("b", 5..12)] {
        std::fs::create_dir_all(images.join(folder)).unwrap();
        for seed in seeds {
            pattern(seed, 32, 32).save(images.join(folder).join(format!("p_{seed}.png"))).unwrap();
        }
    }
    std::fs::write(images.join("b").join("broken.png"), b"\x89PNG").unwrap();
    let embed = |extra: &[&std::ffi::OsStr]| {
        let output = Command::new(env!("CARGO_BIN_EXE_dim-embed")).args(extra).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let run_into = |out: &Path, model: &Path, shard: Option<&str>| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            images.as_os_str(),
            "--model".as_ref(),
            model.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--parquet".as_ref(),
        ];
        if let Some(shard) = shard {
            args.extend([std::ffi::OsStr::new("--shard"), std::ffi::OsStr::new(shard)]);
        }
        let (ok, log) = embed(&args);
        assert!(ok, "{log}");
        log
    };
    let single = temp.path().join("single");
    run_into(&single, &model, None);
    let shards: Vec<PathBuf> = (0..3).map(|i| temp.path().join(format!("shard{i}"))).collect();
    for (i, dir) in shards.iter().enumerate() {
        run_into(dir, &model, Some(&format!("{i}/3")));
    }
    let counts: Vec<usize> = shards.iter().map(|dir| Manifest::read(dir).unwrap().count).collect();
    assert_eq!(counts.iter().sum::<usize>(), 12, "shards cover every image once: {counts:?}");
    assert!(counts.iter().all(|&n| n < 12), "no shard holds everything: {counts:?}");
    assert!(
        run_into(&shards[1], &model, Some("1/3")).contains("embedded 0 images"),
        "a shard rerun is incremental"
    );

    let merged = temp.path().join("merged");
    let mut args: Vec<&std::ffi::OsStr> = vec!["merge".as_ref(), merged.as_os_str()];
    args.extend(shards.iter().map(|dir| dir.as_os_str()));
    let (ok, log) = embed(&args);
    assert!(ok && log.contains("12 rows, 1 skipped"), "{log}");
    // The shards' metadata tables are merged from their own facts, without reading the files.
    assert!(log.contains("wrote 12 rows") && log.contains("0 files read, 12 facts reused"), "{log}");
    assert_eq!(read_parquet(&merged)["rows"], read_parquet(&single)["rows"]);
    let (single_manifest, merged_manifest) =
        (Manifest::read(&single).unwrap(), Manifest::read(&merged).unwrap());
    assert_eq!(merged_manifest.rows, single_manifest.rows, "same rows in the same order");
    assert_eq!(merged_manifest.model, single_manifest.model);
    let (a, b) = (
        npy::read_matrix(&single.join(EMBEDDINGS_FILE)).unwrap(),
        npy::read_matrix(&merged.join(EMBEDDINGS_FILE)).unwrap(),
    );
    assert_eq!((a.rows, a.cols), (b.rows, b.cols));
    assert!(a.values.iter().zip(&b.values).all(|(x, y)| (x - y).abs() < 1e-5), "the same vectors");
    let skipped = |dir: &Path| std::fs::read_to_string(dir.join("skipped.json")).unwrap();
    assert_eq!(skipped(&merged), skipped(&single));

    let overlap = embed(&[
        "merge".as_ref(),
        temp.path().join("twice").as_os_str(),
        shards[0].as_os_str(),
        shards[0].as_os_str(),
    ]);
    assert!(!overlap.0 && overlap.1.contains("is in two shards"), "{}", overlap.1);
    let foreign = temp.path().join("foreign");
    run_into(&foreign, &other, Some("0/3"));
    let mixed = embed(&[
        "merge".as_ref(),
        temp.path().join("mixed").as_os_str(),
        shards[1].as_os_str(),
        foreign.as_os_str(),
    ]);
    assert!(!mixed.0 && mixed.1.contains("another model or feature"), "{}", mixed.1);
}

/// The table of `dir/metadata.parquet` as pyarrow reads it, beside hashlib's and PIL's facts.
fn read_parquet(dir: &Path) -> serde_json::Value {
    let script = Path::new(FIXTURES).join("read_parquet.py");
    serde_json::from_str(&run_python(&[script.as_os_str(), dir.as_os_str()])).unwrap()
}

#[test]
fn metadata_parquet_is_read_by_pyarrow_matches_hashlib_and_pil_and_stays_current() {
    use std::os::unix::ffi::OsStrExt;
    let temp = tempfile::tempdir().unwrap();
    let model = write_model(temp.path(), "model-parquet", true);
    let images = temp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for seed in 0..4 {
        pattern(seed, 24 + seed as u32, 16).save(images.join(format!("p_{seed}.png"))).unwrap();
    }
    let odd_name = images.join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    pattern(9, 20, 30).save(&odd_name).unwrap();
    // A 40x20 JPEG whose EXIF orientation (6) turns it upright to 20x40.
    let rotated = images.join("rotated.jpg");
    run_python(&[
        "-c".as_ref(),
        "import sys; from PIL import Image; im = Image.new('RGB', (40, 20), 'red'); e = Image.Exif(); \
         e[0x0112] = 6; im.save(sys.argv[1], exif=e)"
            .as_ref(),
        rotated.as_os_str(),
    ]);
    let embed = |args: &[&std::ffi::OsStr]| {
        let output = Command::new(env!("CARGO_BIN_EXE_dim-embed")).args(args).output().unwrap();
        let log =
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{log}");
        log
    };
    let out = temp.path().join("embeddings");
    let embed_folder = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            images.as_os_str(),
            "--model".as_ref(),
            model.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        embed(&args)
    };
    let log = embed_folder(&["--parquet"]);
    assert!(log.contains("wrote 6 rows") && log.contains("6 files read, 0 facts reused"), "{log}");

    let check_current = |expect_unavailable: &[&str]| {
        let manifest = Manifest::read(&out).unwrap();
        let read = read_parquet(&out);
        let columns: Vec<String> = read["schema"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("{}:{}", c[0].as_str().unwrap(), c[1].as_str().unwrap()))
            .collect();
        assert_eq!(
            columns,
            [
                "row:int64",
                "path:string",
                "path_bytes:binary",
                "size_bytes:int64",
                "mtime_ns:int64",
                "sha256:string",
                "width:int32",
                "height:int32",
                "model_sha256:string",
                "feature:string"
            ]
        );
        assert_eq!(read["metadata"]["dim.embeddings_sha256"], manifest.embeddings_sha256.clone().unwrap());
        assert_eq!(read["metadata"]["dim.model_sha256"], "model-parquet");
        let rows = read["rows"].as_array().unwrap();
        assert_eq!(rows.len(), manifest.count);
        for (index, (entry, expected)) in rows.iter().zip(&manifest.rows).enumerate() {
            let table = &entry["table"];
            let record = dim_models::path_record::PathRecord::of(&expected.path);
            assert_eq!(table["row"], index);
            assert_eq!(table["path"], record.path);
            assert_eq!(table["path_bytes"].as_str(), record.path_bytes_hex.as_deref());
            assert_eq!(table["size_bytes"], expected.size);
            assert_eq!(table["mtime_ns"].as_u64().map(u128::from), Some(expected.mtime_ns));
            assert_eq!(
                (&table["model_sha256"], &table["feature"]),
                (&"model-parquet".into(), &"embedding".into())
            );
            let name = expected.path.file_name().unwrap().to_string_lossy().into_owned();
            if expect_unavailable.contains(&name.as_str()) {
                assert!(table["sha256"].is_null() && table["width"].is_null(), "{name}: {table}");
            } else {
                let independent = &entry["independent"];
                for key in ["sha256", "width", "height"] {
                    assert_eq!(table[key], independent[key], "{name} {key}");
                }
            }
        }
        rows.iter()
            .map(|entry| {
                let table = &entry["table"];
                (
                    table["path"].as_str().unwrap().rsplit('/').next().unwrap().to_string(),
                    table["width"].clone(),
                    table["height"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let sizes = check_current(&[]);
    assert!(sizes.contains(&("rotated.jpg".into(), 20.into(), 40.into())), "{sizes:?}");
    assert!(sizes.contains(&("caf\\xe9.png".into(), 20.into(), 30.into())), "{sizes:?}");

    // A later run without --parquet keeps the table current and reads only the changed file.
    std::fs::remove_file(images.join("p_0.png")).unwrap();
    pattern(7, 33, 17).save(images.join("p_1.png")).unwrap();
    let log = embed_folder(&[]);
    assert!(log.contains("wrote 5 rows") && log.contains("1 files read, 4 facts reused"), "{log}");
    check_current(&[]);

    // export-parquet on a directory whose file has since vanished: its facts are null.
    std::fs::remove_file(out.join("metadata.parquet")).unwrap();
    std::fs::remove_file(images.join("p_2.png")).unwrap();
    let log = embed(&["export-parquet".as_ref(), out.as_os_str()]);
    assert!(log.contains("wrote 5 rows") && log.contains("1 files are gone or changed"), "{log}");
    check_current(&["p_2.png"]);
}

#[test]
fn pgvector_publishing_resumes_after_kill_takes_concurrent_shards_refuses_another_model_and_answers_like_the_index()
 {
    let server = postgres_server::PostgresServer::start(&python());
    let url = server.url();
    let temp = tempfile::tempdir().unwrap();
    let model = write_model(temp.path(), "model-pg", true);
    let other = write_model(temp.path(), "model-pg-other", true);
    let images = temp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for seed in 0..40 {
        pattern(seed, 32, 32).save(images.join(format!("p_{seed:02}.png"))).unwrap();
    }
    let tool = |program: &str, args: &[&std::ffi::OsStr]| {
        let output = Command::new(program).args(args).output().unwrap();
        let log =
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), log)
    };
    let embed = env!("CARGO_BIN_EXE_dim-embed");
    let search = env!("CARGO_BIN_EXE_dim-search");
    let embed_into = |out: &Path, model: &Path, shard: Option<String>| {
        let mut args: Vec<std::ffi::OsString> =
            vec![images.clone().into(), "--model".into(), model.into(), "--out".into(), out.into()];
        if let Some(shard) = shard {
            args.extend(["--shard".into(), shard.into()]);
        }
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (ok, log) = tool(embed, &args);
        assert!(ok, "{log}");
    };
    let publish_args = |dir: &Path, table: &str, batch: &str| -> Vec<std::ffi::OsString> {
        vec![
            "publish".into(),
            "--embeddings".into(),
            dir.into(),
            "--postgres".into(),
            url.clone().into(),
            "--table".into(),
            table.into(),
            "--batch-rows".into(),
            batch.into(),
            // Tables get the collection-fitted PCA (whitened) a dim-search index gets; the kill
            // test's random vectors go in as they are.
            "--pca".into(),
            if table == "killed" { "0" } else { "8" }.into(),
            "--whiten".into(),
        ]
    };
    let publish = |dir: &Path, table: &str, batch: &str| {
        let args = publish_args(dir, table, batch);
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        tool(search, &args)
    };
    let single = temp.path().join("single");
    embed_into(&single, &model, None);

    let (ok, log) = publish(&single, "photos", "7");
    assert!(
        ok && log.contains("published 40 rows in 6 batches")
            && log.contains("holds 40 rows")
            && log.contains("after pca 8 + whitening (fitted now"),
        "{log}\nserver log:\n{}",
        server.log()
    );
    let (ok, log) = publish(&single, "photos", "7");
    assert!(ok && log.contains("published 0 rows") && log.contains("40 already current"), "{log}");

    // The same queries give the same answers as a local index over the same vectors.
    let index_dir = temp.path().join("index");
    let (ok, log) = tool(
        search,
        &[
            "build".as_ref(),
            "--embeddings".as_ref(),
            single.as_os_str(),
            "--out".as_ref(),
            index_dir.as_os_str(),
            "--pca".as_ref(),
            "8".as_ref(),
            "--whiten".as_ref(),
        ],
    );
    assert!(ok, "{log}");
    let query_image = images.join("p_03.png");
    let answers = |store: &[&std::ffi::OsStr], query: &[&std::ffi::OsStr]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["query".as_ref()];
        args.extend(store);
        args.extend(query);
        args.extend(["-k".as_ref(), "8".as_ref(), "--json".as_ref(), "--model".as_ref(), model.as_os_str()]);
        let (ok, log) = tool(search, &args);
        assert!(ok, "{log}");
        let value: serde_json::Value = serde_json::from_str(&log[..log.rfind(']').unwrap() + 1]).unwrap();
        value
    };
    let local_store = ["--index".as_ref(), index_dir.as_os_str()];
    let pg_store = ["--postgres".as_ref(), url.as_ref(), "--table".as_ref(), "photos".as_ref()];
    for query in [vec!["--image".as_ref(), query_image.as_os_str()], vec!["--row".as_ref(), "11".as_ref()]] {
        let (local, remote) = (answers(&local_store, &query), answers(&pg_store, &query));
        let (local, remote) =
            (local[0]["results"].as_array().unwrap(), remote[0]["results"].as_array().unwrap());
        assert_eq!(local.len(), 8);
        assert_eq!(local.len(), remote.len());
        for (a, b) in local.iter().zip(remote) {
            assert_eq!(
                (&a["rank"], &a["row"], &a["path"]),
                (&b["rank"], &b["row"], &b["path"]),
                "{local:?} {remote:?}"
            );
            let (x, y) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    // Another model's vectors are refused; so is a table name that is not a plain identifier.
    let foreign = temp.path().join("foreign");
    embed_into(&foreign, &other, None);
    let (ok, log) = publish(&foreign, "photos", "7");
    assert!(!ok && log.contains("holds vectors of another model"), "{log}");
    let (ok, log) = publish(&single, "photos; drop table photos", "7");
    assert!(!ok && log.contains("is not allowed"), "{log}");

    // Four shard processes publishing into one table at once end with exactly the union.
    let shards: Vec<PathBuf> = (0..4).map(|i| temp.path().join(format!("shard{i}"))).collect();
    for (i, dir) in shards.iter().enumerate() {
        embed_into(dir, &model, Some(format!("{i}/4")));
    }
    let children: Vec<std::process::Child> = shards
        .iter()
        .map(|dir| {
            Command::new(search)
                .args(publish_args(dir, "sharded", "3"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let expected: std::collections::BTreeSet<Vec<u8>> = Manifest::read(&single)
        .unwrap()
        .rows
        .iter()
        .map(|row| std::os::unix::ffi::OsStrExt::as_bytes(row.path.as_os_str()).to_vec())
        .collect();
    let found: Vec<Vec<u8>> =
        client.query("SELECT path_bytes FROM sharded", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(found.len(), 40, "no row twice");
    assert_eq!(found.into_iter().collect::<std::collections::BTreeSet<_>>(), expected);

    // kill -9 in the middle of a publish: whole batches are in, and a rerun sends the rest.
    let many = temp.path().join("many");
    let total = 4000;
    write_embeddings(&many, 16, &random_vectors(total, 16, 5));
    let mut child = Command::new(search)
        .args(publish_args(&many, "killed", "10"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let count = |client: &mut postgres::Client| -> Option<i64> {
        client.query_one("SELECT count(*) FROM killed", &[]).ok().map(|row| row.get(0))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count(&mut client).unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "the publish never committed a batch");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // A COMMIT the server received before the kill may still land after it: wait until the
    // count holds still.
    let mut at_kill = count(&mut client).unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = count(&mut client).unwrap();
        if now == at_kill {
            break;
        }
        at_kill = now;
    }
    assert!(at_kill < total as i64, "the publish finished before it was killed ({at_kill} rows)");
    assert_eq!(at_kill % 10, 0, "only whole batches are committed: {at_kill}");
    let (ok, log) = publish(&many, "killed", "10");
    assert!(ok, "{log}");
    assert!(log.contains(&format!("published {} rows", total as i64 - at_kill)), "{log}");
    assert_eq!(count(&mut client), Some(total as i64));
    let indexes: Vec<String> = client
        .query("SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%USING hnsw%' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(indexes, ["killed_embedding_hnsw", "photos_embedding_hnsw", "sharded_embedding_hnsw"]);
}

#[test]
fn near_duplicates_form_groups_whose_pairs_match_exact_cosine_and_the_contact_sheet_shows_them() {
    let temp = tempfile::tempdir().unwrap();
    let model = write_model(temp.path(), "model-dups", true);
    let images = temp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for seed in 0..24 {
        pattern(seed, 48, 40).save(images.join(format!("base_{seed:02}.png"))).unwrap();
    }
    let base0 = DynamicImage::ImageRgb8(pattern(0, 48, 40));
    base0
        .resize_exact(96, 80, image::imageops::FilterType::Triangle)
        .save(images.join("copy0_resized.png"))
        .unwrap();
    base0.save_with_format(images.join("copy0_reencoded.jpg"), image::ImageFormat::Jpeg).unwrap();
    DynamicImage::ImageRgb8(pattern(5, 48, 40))
        .resize_exact(72, 60, image::imageops::FilterType::Triangle)
        .save(images.join("copy5_resized.png"))
        .unwrap();
    let tool = |program: &str, args: &[&std::ffi::OsStr]| {
        let output = Command::new(program).args(args).output().unwrap();
        let log =
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{log}");
        log
    };
    let (embed, search) = (env!("CARGO_BIN_EXE_dim-embed"), env!("CARGO_BIN_EXE_dim-search"));
    let out = temp.path().join("embeddings");
    tool(
        embed,
        &[images.as_os_str(), "--model".as_ref(), model.as_os_str(), "--out".as_ref(), out.as_os_str()],
    );
    let index_dir = temp.path().join("index");
    tool(
        search,
        &[
            "build".as_ref(),
            "--embeddings".as_ref(),
            out.as_os_str(),
            "--out".as_ref(),
            index_dir.as_os_str(),
            "--pca".as_ref(),
            "0".as_ref(),
        ],
    );
    // The threshold sits between the copies' similarity to their originals and the best
    // similarity of two distinct patterns, both computed here by exact cosine.
    let manifest = Manifest::read(&out).unwrap();
    let matrix = npy::read_matrix(&out.join(EMBEDDINGS_FILE)).unwrap();
    let row_of = |name: &str| manifest.rows.iter().position(|r| r.path.ends_with(name)).unwrap();
    let cosine = |a: usize, b: usize| {
        let (x, y) = (matrix.row(a), matrix.row(b));
        let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        let norm = |v: &[f32]| v.iter().map(|p| p * p).sum::<f32>().sqrt();
        dot / (norm(x) * norm(y))
    };
    let copies = [
        ("base_00.png", "copy0_resized.png"),
        ("base_00.png", "copy0_reencoded.jpg"),
        ("base_05.png", "copy5_resized.png"),
    ];
    let weakest_copy = copies.iter().map(|(a, b)| cosine(row_of(a), row_of(b))).fold(f32::MAX, f32::min);
    let strongest_distinct = (0..24)
        .flat_map(|a| (a + 1..24).map(move |b| (a, b)))
        .map(|(a, b)| cosine(row_of(&format!("base_{a:02}.png")), row_of(&format!("base_{b:02}.png"))))
        .fold(f32::MIN, f32::max);
    assert!(
        weakest_copy > strongest_distinct + 0.01,
        "copies {weakest_copy} vs distinct {strongest_distinct}"
    );
    let threshold = format!("{}", (weakest_copy + strongest_distinct) / 2.0);

    let json = temp.path().join("dups.json");
    let html = temp.path().join("dups.html");
    let log = tool(
        search,
        &[
            "duplicates".as_ref(),
            "--index".as_ref(),
            index_dir.as_os_str(),
            "--threshold".as_ref(),
            threshold.as_ref(),
            "--json".as_ref(),
            json.as_os_str(),
            "--html".as_ref(),
            html.as_os_str(),
        ],
    );
    assert!(log.contains("2 groups of near-duplicates (5 images"), "{log}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let groups = report["groups"].as_array().unwrap();
    let names = |group: &serde_json::Value| -> Vec<String> {
        group["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["path"].as_str().unwrap().rsplit('/').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&groups[0]), ["base_00.png", "copy0_reencoded.jpg", "copy0_resized.png"]);
    assert_eq!(names(&groups[1]), ["base_05.png", "copy5_resized.png"]);
    for group in groups {
        for pair in group["pairs"].as_array().unwrap() {
            let (a, b) = (pair["a"].as_u64().unwrap() as usize, pair["b"].as_u64().unwrap() as usize);
            let score = pair["score"].as_f64().unwrap() as f32;
            assert!((score - cosine(a, b)).abs() < 1e-4, "pair {a}-{b}: {score} vs {}", cosine(a, b));
        }
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<section>").count(), 2);
    assert_eq!(page.matches("src=\"data:image/jpeg;base64,").count(), 5, "every member has a thumbnail");

    // Without --threshold the feature's calibrated default is used; a feature without one is
    // refused with what to do.
    let log = tool(search, &["duplicates".as_ref(), "--index".as_ref(), index_dir.as_os_str()]);
    assert!(log.contains("pairs at cosine >= 0.9994"), "{log}");
    let fc_out = temp.path().join("fc-embeddings");
    let fc_index = temp.path().join("fc-index");
    let feature_args = ["--feature".as_ref(), "fc".as_ref(), "--out".as_ref(), fc_out.as_os_str()];
    tool(
        embed,
        &[&[images.as_os_str(), "--model".as_ref(), model.as_os_str()][..], &feature_args[..]].concat(),
    );
    let build = ["build", "--embeddings"].map(std::ffi::OsStr::new);
    tool(search, &[&build[..], &[fc_out.as_os_str(), "--out".as_ref(), fc_index.as_os_str()][..]].concat());
    let refused = Command::new(search)
        .args(["duplicates".as_ref(), "--index".as_ref(), fc_index.as_os_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("no default threshold for feature `fc`") && stderr.contains("--feature duplicate"),
        "{stderr}"
    );
}

#[test]
fn the_duplicate_feature_does_not_move_under_mirroring_or_brightness_and_contrast_changes() {
    let temp = tempfile::tempdir().unwrap();
    let model = write_model(temp.path(), "model-duplicate-feature", true);
    let base = pattern(3, 48, 40);
    let mirror = image::imageops::flip_horizontal(&base);
    // Brighter and flatter, without clipping: every channel value v becomes 40 + 0.6 v.
    let mut changed = base.clone();
    changed.pixels_mut().for_each(|p| p.0 = p.0.map(|v| (40.0 + 0.6 * f32::from(v)).round() as u8));
    let other = pattern(4, 48, 40);
    let images: Vec<DynamicImage> =
        [base, mirror, changed, other].into_iter().map(DynamicImage::ImageRgb8).collect();
    let vectors = |feature| {
        let mut embedder = Embedder::try_new(EmbedderOptions {
            model: model.clone(),
            feature,
            threads: 1,
            ..Default::default()
        })
        .unwrap();
        let dim = embedder.dim();
        let flat = embedder.embed_images(&images, 3).unwrap();
        flat.chunks_exact(dim).map(<[f32]>::to_vec).collect::<Vec<_>>()
    };
    let cosine = |x: &[f32], y: &[f32]| {
        let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        let norm = |v: &[f32]| v.iter().map(|p| p * p).sum::<f32>().sqrt();
        dot / (norm(x) * norm(y))
    };
    let duplicate = vectors(Feature::Duplicate);
    let plain = vectors(Feature::Embedding);
    for vector in &duplicate {
        let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit length, got {norm}");
    }
    let (mirror, changed, other) = (
        cosine(&duplicate[0], &duplicate[1]),
        cosine(&duplicate[0], &duplicate[2]),
        cosine(&duplicate[0], &duplicate[3]),
    );
    assert!(mirror > 1.0 - 1e-5, "mirror image: {mirror}");
    assert!(changed > 0.999, "brightness and contrast change: {changed}");
    assert!(other < changed - 0.01, "another image {other} vs the changed copy {changed}");
    // The plain embedding of the same model does move: the invariances are the feature's doing.
    let (plain_mirror, plain_changed) = (cosine(&plain[0], &plain[1]), cosine(&plain[0], &plain[2]));
    assert!(plain_mirror < mirror - 1e-3, "plain embedding of the mirror image: {plain_mirror}");
    assert!(plain_changed < changed - 1e-3, "plain embedding of the changed copy: {plain_changed}");
}
