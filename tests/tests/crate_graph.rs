//! The crate graph stays layered: training builds none of the inference side's native code or
//! services (ONNX Runtime bindings, hnsw_rs, Parquet, PostgreSQL), and the inference library's
//! users build without the Parquet and PostgreSQL outputs that only its CLIs write.

use std::process::Command;

/// The packages `cargo tree` lists for `package`'s normal and build dependencies.
fn dependencies_of(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "--frozen",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn dim_train_builds_without_the_inference_side() {
    let packages = dependencies_of("dim-train");
    assert!(packages.iter().any(|p| p == "tch"), "dim-train's tree looks wrong: {packages:?}");
    assert!(packages.iter().any(|p| p == "dim-vectors"));
    for unwanted in
        ["dim-infer", "dim-index", "ort", "ort-sys", "hnsw_rs", "parquet", "postgres", "pgvector", "mozjpeg"]
    {
        assert!(!packages.iter().any(|p| p == unwanted), "dim-train depends on {unwanted}");
    }
}

#[test]
fn the_index_builds_without_a_model_runtime() {
    let packages = dependencies_of("dim-index");
    assert!(packages.iter().any(|p| p == "hnsw_rs"), "dim-index's tree looks wrong: {packages:?}");
    for unwanted in ["dim-infer", "ort", "ort-sys", "tch", "mozjpeg", "parquet", "postgres"] {
        assert!(!packages.iter().any(|p| p == unwanted), "dim-index depends on {unwanted}");
    }
}

#[test]
fn the_parquet_and_postgres_outputs_stay_with_the_clis_that_write_them() {
    for package in ["dim-serve", "dim-demo", "dim-python"] {
        let packages = dependencies_of(package);
        assert!(packages.iter().any(|p| p == "dim-infer"), "{package}'s tree looks wrong: {packages:?}");
        for unwanted in ["parquet", "postgres", "pgvector"] {
            assert!(!packages.iter().any(|p| p == unwanted), "{package} depends on {unwanted}");
        }
    }
    let cli = dependencies_of("dim-infer");
    assert!(cli.iter().any(|p| p == "parquet") && cli.iter().any(|p| p == "postgres"));
}
