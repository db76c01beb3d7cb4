//! Tests of the collection-fitted post-processing (PCA, whitening) through the index and the
//! command line, against numpy's PCA, and of `dim-search retrieval` on labelled embeddings.

use dim_index::embeddings_retrieval::evaluate_embeddings;
use dim_index::index::{self, INDEX_FILE, IndexParams, SearchIndex};
use dim_vectors::distance::Metric;
use dim_vectors::manifest::{EMBEDDINGS_FILE, MANIFEST_FILE, MANIFEST_FORMAT_VERSION, Manifest};
use dim_vectors::npy;
use dim_vectors::post_process::{COMPONENTS_FILE, MEAN_FILE, Pca, PcaSpec, VARIANCES_FILE};
use dim_vectors::retrieval::Labels;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The set-up environment's Python (`.dim-env/venv/bin/python`, set by `.cargo/config.toml`).
fn python() -> PathBuf {
    std::env::var_os("DIM_PYTHON")
        .map(PathBuf::from)
        .or_else(|| option_env!("DIM_PYTHON").map(PathBuf::from))
        .expect("DIM_PYTHON is set by .cargo/config.toml (run `cargo xtask setup`)")
}

fn search(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dim-search")).args(args).output().unwrap()
}

fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Rows in `classes` clusters: cluster centres far apart along random directions, members
/// spread around them, with a few large-variance nuisance columns shared by all.
fn clustered(rows: usize, dim: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut state = seed;
    let mut uniform = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centres: Vec<f32> = (0..classes * dim).map(|_| uniform() * 4.0).collect();
    let mut values = Vec::with_capacity(rows * dim);
    let mut labels = Vec::with_capacity(rows);
    for row in 0..rows {
        let class = row % classes;
        labels.push(class);
        for c in 0..dim {
            let nuisance = if c < 3 { uniform() * 12.0 } else { 0.0 };
            values.push(centres[class * dim + c] + uniform() + nuisance + 1.0);
        }
    }
    (values, labels)
}

/// Writes an embeddings directory holding `values` (`dim` wide); row `i` is the file
/// `/data/<class>/<i>.png` for its label. The manifest is written as JSON so that the test does
/// not depend on optional fields of the manifest type.
fn write_embeddings(dir: &Path, dim: usize, values: &[f32], labels: &[usize]) {
    std::fs::create_dir_all(dir).unwrap();
    npy::write_matrix(&dir.join(EMBEDDINGS_FILE), dim, values).unwrap();
    let rows: Vec<serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, class)| serde_json::json!({ "path": format!("/data/class_{class}/{i}.png"), "size": 1, "mtime_ns": 0 }))
        .collect();
    let manifest = serde_json::json!({
        "format_version": MANIFEST_FORMAT_VERSION,
        "toolkit_version": dim_models::TOOLKIT_VERSION,
        "model": { "checkpoint_sha256": "random", "preset": "basic32x32", "feature": "embedding", "dim": dim },
        "count": labels.len(),
        "rows": rows,
    });
    std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    Manifest::read(dir).unwrap();
}

#[test]
fn an_index_built_with_pca_stores_it_and_every_query_path_transforms_alike() {
    let temp = tempfile::tempdir().unwrap();
    let (dim, rows) = (48, 300);
    let (values, labels) = clustered(rows, dim, 5, 1);
    let embeddings = temp.path().join("emb");
    write_embeddings(&embeddings, dim, &values, &labels);

    let index_dir = temp.path().join("index");
    let spec = PcaSpec { dims: 16, whiten: true, eps: 1e-6 };
    let params = IndexParams { hold_out: 20, post_process: Some(spec), ..IndexParams::default() };
    let info = index::build(&embeddings, &index_dir, &params).unwrap();
    let description = info.post_process.clone().unwrap();
    assert_eq!((description.input_dim, description.dims, description.fitted_rows), (dim, 16, rows - 20));
    assert!(description.whiten && description.eps == 1e-6);
    for file in [MEAN_FILE, COMPONENTS_FILE, VARIANCES_FILE] {
        assert!(index_dir.join(file).exists(), "{file}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(index_dir.join(INDEX_FILE)).unwrap()).unwrap();
    assert_eq!(json["post_process"]["dims"], 16);
    assert_eq!(json["post_process"]["fitted_rows"], rows - 20);

    let index = SearchIndex::open(&index_dir).unwrap();
    // The stored transform is the one fitted on the indexed (not held-out) rows.
    let indexed: Vec<f32> = (0..rows)
        .filter(|i| !info.held_out.contains(i))
        .flat_map(|i| values[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    let refit = Pca::fit(&indexed, dim, &spec).unwrap();
    let stored = index.post_process.clone().unwrap();
    for (a, b) in stored.components().iter().zip(refit.components()) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    for row in (0..rows).filter(|i| !info.held_out.contains(i)) {
        let query = &values[row * dim..(row + 1) * dim];
        let hits = index.search(query, 5, 64).unwrap();
        assert_eq!(hits[0].row, row, "row {row}: {hits:?}");
        assert!((hits[0].score - 1.0).abs() < 1e-4, "{hits:?}");
        assert_eq!(index.exact_search(query, 1).unwrap()[0].row, row);
        let expected = stored.apply(query).unwrap();
        let norm = expected.iter().map(|v| v * v).sum::<f32>().sqrt();
        let graph_space = index.query_to_graph_space(query).unwrap();
        assert!(graph_space.iter().zip(&expected).all(|(g, e)| (g * norm - e).abs() < 1e-4 * norm));
    }
    // Held-out rows (not in the graph) are queries like any other: the graph finds their exact
    // nearest indexed row.
    for &row in &info.held_out {
        let query = &values[row * dim..(row + 1) * dim];
        assert_eq!(index.search(query, 1, 64).unwrap()[0].row, index.exact_search(query, 1).unwrap()[0].row);
    }
    let evaluation = &index::evaluate(&index, 20, 5, &[64]).unwrap()[0];
    assert!(evaluation.recall_at_k > 0.9, "{evaluation:?}");

    // The command line: --row and --vector of the same row give the library's hits.
    let row = 7;
    let library = index.search(&values[row * dim..(row + 1) * dim], 4, 64).unwrap();
    let vector_file = temp.path().join("query.npy");
    npy::write_matrix(&vector_file, dim, &values[row * dim..(row + 1) * dim]).unwrap();
    let query = |how: &[&OsStr]| -> serde_json::Value {
        let mut args: Vec<&OsStr> =
            vec!["query".as_ref(), "--index".as_ref(), index_dir.as_os_str(), "-k".as_ref(), "4".as_ref()];
        args.extend_from_slice(how);
        args.push("--json".as_ref());
        serde_json::from_str(&succeeded(&search(&args))).unwrap()
    };
    let by_row = query(&["--row".as_ref(), "7".as_ref()]);
    let by_vector = query(&["--vector".as_ref(), vector_file.as_os_str()]);
    assert_eq!(by_row[0]["results"], by_vector[0]["results"]);
    let rows_found: Vec<u64> =
        by_row[0]["results"].as_array().unwrap().iter().map(|hit| hit["row"].as_u64().unwrap()).collect();
    assert_eq!(rows_found, library.iter().map(|hit| hit.row as u64).collect::<Vec<_>>());
    let scores: Vec<f64> = by_vector[0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| hit["score"].as_f64().unwrap())
        .collect();
    for (cli, lib) in scores.iter().zip(&library) {
        assert!((cli - f64::from(lib.score)).abs() < 1e-6, "{cli} vs {}", lib.score);
    }

    // `eval` goes through the same transform, and the command line builds the same index.
    succeeded(&search(&[
        "eval".as_ref(),
        "--index".as_ref(),
        index_dir.as_os_str(),
        "-k".as_ref(),
        "5".as_ref(),
    ]));
    let cli_index = temp.path().join("cli-index");
    let stdout = succeeded(&search(&[
        "build".as_ref(),
        "--embeddings".as_ref(),
        embeddings.as_os_str(),
        "--out".as_ref(),
        cli_index.as_os_str(),
        "--pca".as_ref(),
        "16".as_ref(),
        "--whiten".as_ref(),
    ]));
    assert!(stdout.contains("16-d PCA whitened of 48-d"), "{stdout}");
    let error = search(&[
        "build".as_ref(),
        "--embeddings".as_ref(),
        embeddings.as_os_str(),
        "--out".as_ref(),
        cli_index.as_os_str(),
        "--whiten".as_ref(),
    ]);
    assert!(!error.status.success(), "--whiten without --pca is refused");
}

#[test]
fn an_index_built_without_post_processing_is_as_before() {
    let temp = tempfile::tempdir().unwrap();
    let (dim, rows) = (24, 200);
    let (values, labels) = clustered(rows, dim, 4, 2);
    write_embeddings(temp.path(), dim, &values, &labels);
    let index_dir = temp.path().join("index");
    let info = index::build(temp.path(), &index_dir, &IndexParams::default()).unwrap();
    assert!(info.post_process.is_none());
    for file in [MEAN_FILE, COMPONENTS_FILE, VARIANCES_FILE] {
        assert!(!index_dir.join(file).exists(), "{file}");
    }
    // index.json keeps its earlier shape: no post-processing entry in it or in its parameters.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(index_dir.join(INDEX_FILE)).unwrap()).unwrap();
    assert!(json.get("post_process").is_none() && json["params"].get("post_process").is_none(), "{json}");

    let index = SearchIndex::open(&index_dir).unwrap();
    assert!(index.post_process.is_none());
    // Exact search still ranks by the cosine of the vectors as embedded.
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        dot / (norm(a) * norm(b))
    };
    for row in [0, 13, 99, 199] {
        let query = &values[row * dim..(row + 1) * dim];
        let mut brute: Vec<(f64, usize)> =
            (0..rows).map(|i| (cosine(query, &values[i * dim..(i + 1) * dim]), i)).collect();
        brute.sort_by(|a, b| b.0.total_cmp(&a.0));
        let exact = index.exact_search(query, 5).unwrap();
        for (hit, (similarity, i)) in exact.iter().zip(&brute) {
            assert_eq!(hit.row, *i);
            assert!((f64::from(hit.score) - similarity).abs() < 1e-4);
        }
        assert_eq!(index.search(query, 1, 64).unwrap()[0].row, row);
    }
}

#[test]
fn the_pca_matches_numpys_for_more_and_for_fewer_rows_than_dimensions() {
    let temp = tempfile::tempdir().unwrap();
    for (rows, cols, dims) in [(200, 12, 5), (10, 30, 6)] {
        let (values, _) = clustered(rows, cols, 3, rows as u64);
        let path = temp.path().join(format!("x{rows}.npy"));
        npy::write_matrix(&path, cols, &values).unwrap();
        // The same definition: covariance normalised by N - 1, eigenvectors of the largest
        // eigenvalues first, each signed so that its largest-magnitude entry is positive.
        let script = "import json, sys, numpy as np\n\
                      x = np.load(sys.argv[1]).astype(np.float64); d = int(sys.argv[2])\n\
                      w, v = np.linalg.eigh(np.cov(x, rowvar=False))\n\
                      order = np.argsort(w)[::-1][:d]; w = w[order]; v = v[:, order].T\n\
                      v *= np.sign(v[np.arange(d), np.abs(v).argmax(axis=1)])[:, None]\n\
                      print(json.dumps({'mean': x.mean(0).tolist(), 'components': v.tolist(), 'variances': w.tolist()}))";
        let output = Command::new(python())
            .args(["-c".as_ref(), script.as_ref(), path.as_os_str(), dims.to_string().as_ref()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let numpy: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let pca = Pca::fit(&values, cols, &PcaSpec { dims, whiten: false, eps: 0.0 }).unwrap();
        let want = |key: &str| -> Vec<f64> {
            let flat = |v: &serde_json::Value| v.as_f64().unwrap();
            match &numpy[key] {
                serde_json::Value::Array(items) if items[0].is_array() => {
                    items.iter().flat_map(|row| row.as_array().unwrap().iter().map(flat)).collect()
                }
                serde_json::Value::Array(items) => items.iter().map(flat).collect(),
                other => panic!("{other}"),
            }
        };
        for (a, b) in pca.components().iter().zip(want("components")) {
            assert!((f64::from(*a) - b).abs() < 1e-4, "{rows}x{cols}: component {a} vs numpy {b}");
        }
        for (a, b) in pca.variances().iter().zip(want("variances")) {
            assert!(
                (f64::from(*a) - b).abs() < 1e-4 * b.abs().max(1.0),
                "{rows}x{cols}: variance {a} vs numpy {b}"
            );
        }
        // The mean numpy centres on is the one the transform subtracts.
        let projected = pca.apply(&values[..cols]).unwrap();
        let mean = want("mean");
        let components = want("components");
        for (j, value) in projected.iter().enumerate() {
            let by_numpy: f64 =
                (0..cols).map(|c| (f64::from(values[c]) - mean[c]) * components[j * cols + c]).sum();
            assert!((f64::from(*value) - by_numpy).abs() < 1e-3, "{value} vs {by_numpy}");
        }
    }
}

#[test]
fn retrieval_scores_a_labelled_embeddings_directory_with_and_without_pca() {
    let temp = tempfile::tempdir().unwrap();
    let (dim, rows) = (32, 240);
    let (values, labels) = clustered(rows, dim, 6, 3);
    let embeddings = temp.path().join("emb");
    write_embeddings(&embeddings, dim, &values, &labels);

    let manifest = Manifest::read(&embeddings).unwrap();
    let folders = Labels::from_parent_folders(manifest.rows.iter().map(|row| row.path.as_path()));
    assert_eq!(folders.names, (0..6).map(|c| format!("class_{c}")).collect::<Vec<_>>());
    assert_eq!(folders.of_row, labels.iter().map(|&c| c as u32).collect::<Vec<_>>());
    let spec = PcaSpec { dims: 8, whiten: true, eps: 1e-6 };
    let runs = evaluate_embeddings(&embeddings, &folders, 5, Metric::Cosine, Some(&spec)).unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[0].vectors.as_str(), runs[0].dims), ("embedded", dim));
    assert_eq!((runs[1].vectors.as_str(), runs[1].dims), ("pca 8 + whitening", 8));
    for run in &runs {
        let s = &run.scores;
        assert_eq!((s.queries, s.classes, s.k), (rows, 6, 5));
        for value in [s.precision_at_k_micro, s.precision_at_k_macro, s.map_at_k, s.knn_accuracy] {
            assert!((0.0..=1.0).contains(&value), "{run:?}");
        }
    }
    // Whitening takes out the large shared nuisance columns that blur the clusters.
    assert!(runs[1].scores.precision_at_k_micro > runs[0].scores.precision_at_k_micro, "{runs:?}");
    assert!(runs[1].scores.precision_at_k_micro > 0.9, "{runs:?}");

    let report = temp.path().join("retrieval.json");
    let stdout = succeeded(&search(&[
        "retrieval".as_ref(),
        "--embeddings".as_ref(),
        embeddings.as_os_str(),
        "--labels-from-folder".as_ref(),
        "--k".as_ref(),
        "5".as_ref(),
        "--pca".as_ref(),
        "8".as_ref(),
        "--whiten".as_ref(),
        "--json".as_ref(),
        report.as_os_str(),
    ]));
    assert!(stdout.contains("240 queries, 6 classes") && stdout.contains("pca 8 + whitening"), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 2);
    assert_eq!(json["runs"][1]["post_process"]["dims"], 8);
    let micro = json["runs"][1]["precision_at_k_micro"].as_f64().unwrap();
    assert!((micro - runs[1].scores.precision_at_k_micro).abs() < 1e-12);

    // Labels from a file, one line per row, score the same as the folders they name.
    let labels_file = temp.path().join("labels.txt");
    let lines: Vec<String> = labels.iter().map(|c| format!("class_{c}")).collect();
    std::fs::write(&labels_file, lines.join("\n")).unwrap();
    let from_file = Labels::from_file(&labels_file, rows).unwrap();
    assert_eq!(from_file, folders);
    assert!(Labels::from_file(&labels_file, rows + 1).is_err());

    let no_labels = search(&["retrieval".as_ref(), "--embeddings".as_ref(), embeddings.as_os_str()]);
    assert!(!no_labels.status.success(), "a label source is required");
}
