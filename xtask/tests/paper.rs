//! `cargo xtask paper` end to end on CIFAR-10-format files written by the test: the smoke run
//! trains and probes every DIM row and writes the table, a full run on the CPU is refused with a
//! measured estimate, and the ResNet table's smoke run trains both ResNet presets.

use std::path::Path;
use std::process::{Command, Output};

/// Writes CIFAR-10 binary batches: `per_file` records per file, labels cycling through the ten
/// classes, each class with its own colour ramp.
fn write_cifar10(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let names =
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"];
    for (file, name) in names.iter().enumerate() {
        let mut bytes = Vec::with_capacity(per_file * 3073);
        for index in 0..per_file {
            let label = index % 10;
            bytes.push(label as u8);
            for channel in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        let ramp = if channel == label % 3 { x } else { y };
                        bytes.push(((label * 25 + ramp * 3 + index + file) % 256) as u8);
                    }
                }
            }
        }
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
}

fn xtask_paper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).arg("paper").args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `table`'s smoke run on CIFAR-10 files of `per_file` records; returns the work directory
/// (holding `out/`) and the table's JSON.
fn smoke_run(table: &str, per_file: usize) -> (tempfile::TempDir, serde_json::Value) {
    let temp = tempfile::tempdir().unwrap();
    let (data, out) = (temp.path().join("cifar"), temp.path().join("out"));
    write_cifar10(&data, per_file);
    let started = std::time::Instant::now();
    let output =
        xtask_paper(&[table, "--data", data.to_str().unwrap(), "--smoke", "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    eprintln!("{table} smoke run: {:.1} s", started.elapsed().as_secs_f64());
    let json = serde_json::from_slice(&std::fs::read(out.join("table.json")).unwrap()).unwrap();
    (temp, json)
}

#[test]
fn the_smoke_run_trains_and_probes_every_dim_row_and_writes_a_labelled_table() {
    let (temp, table) = smoke_run("cifar10", 60);
    let markdown = std::fs::read_to_string(temp.path().join("out/table.md")).unwrap();
    assert!(markdown.contains("SMOKE RUN"), "{markdown}");
    assert!(markdown.contains("| DIM(L) JSD | 73.25 |"), "{markdown}");
    assert!(markdown.contains("| VAE | 60.71 | not trained here |"), "{markdown}");
    assert_eq!(table["table"], "cifar10");
    assert_eq!(table["smoke"], true);
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    let ours: Vec<&serde_json::Value> = rows.iter().filter(|row| !row["ours"].is_null()).collect();
    assert_eq!(ours.len(), 3, "{table}");
    for row in ours {
        let score = &row["ours"];
        assert_eq!(score["protocol"], "paper");
        assert_eq!(score["protocol_changes"][0], "epochs 2 (paper protocol: 1000)");
        assert_eq!(score["epochs_trained"], 1);
        assert_eq!(score["examples"], serde_json::json!([256, 60]));
        for tap in score["tap_accuracy"].as_array().unwrap() {
            let accuracy = tap[1].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&accuracy), "{tap}");
        }
        let best = row["ours_best_accuracy"].as_f64().unwrap();
        let max = score["tap_accuracy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[1].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(best, max);
        assert!(Path::new(score["checkpoint"].as_str().unwrap()).join("config.json").is_file());
    }
}

#[test]
fn a_full_run_on_the_cpu_is_refused_with_a_measured_estimate() {
    let temp = tempfile::tempdir().unwrap();
    let (data, out) = (temp.path().join("cifar"), temp.path().join("out"));
    write_cifar10(&data, 20);
    let output = xtask_paper(&["cifar100", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("does not hold CIFAR-100 (binary version): missing train.bin"));

    let output = xtask_paper(&["cifar10", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("refusing a full `cifar10` run on the CPU"), "{stderr}");
    assert!(stderr.contains("images/s (measured just now"), "{stderr}");
    assert!(stderr.contains("--smoke"), "{stderr}");
    assert!(!out.join("table.md").exists());
}

#[test]
fn the_resnet_table_smoke_run_trains_both_resnets_end_to_end() {
    let (_temp, table) = smoke_run("resnet-cifar10", 20);
    let trained: Vec<&serde_json::Value> =
        table["rows"].as_array().unwrap().iter().filter(|row| !row["ours"].is_null()).collect();
    assert_eq!(trained.len(), 2, "{table}");
    let mut presets = Vec::new();
    for row in trained {
        assert_eq!(row["ours"]["epochs_trained"], 1, "{row}");
        let checkpoint = std::path::Path::new(row["ours"]["checkpoint"].as_str().unwrap());
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(checkpoint.join("config.json")).unwrap()).unwrap();
        presets.push(config["encoder"]["preset"].as_str().unwrap().to_string());
    }
    assert_eq!(presets, ["resnet19_32x32", "foldresnet19_32x32"]);
}
