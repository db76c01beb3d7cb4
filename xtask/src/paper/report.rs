//! The paper-table report: reads what dim-train and dim-eval wrote for each run, and writes the
//! paper's numbers beside ours as Markdown and JSON.

use super::tables::{PaperTable, Row};
use dim_models::atomic_file;
use dim_models::checkpoint::{WEIGHTS_FILE, sha256_hex};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The taps the paper's classifier reads, in table order, as dim-eval names them.
pub const TAPS: [&str; 3] = ["conv", "fc", "y"];

/// What one of our runs scored under the paper's probe protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunScore {
    /// The run's checkpoint directory.
    pub checkpoint: PathBuf,
    /// The dim-eval report it was read from.
    pub probe_report: PathBuf,
    /// Test accuracy in % per tap, in [`TAPS`] order (None where the tap was not probed).
    pub tap_accuracy: Vec<(String, Option<f64>)>,
    /// The probe protocol dim-eval recorded.
    pub protocol: String,
    /// Settings the probe changed from its protocol (smoke runs shorten it).
    pub protocol_changes: Vec<String>,
    /// Train and test examples the probe used.
    pub examples: (u64, u64),
    /// Epochs the checkpoint was trained for.
    pub epochs_trained: u64,
}

impl RunScore {
    /// The best tap and its accuracy.
    pub fn best(&self) -> Option<(&str, f64)> {
        self.tap_accuracy
            .iter()
            .filter_map(|(tap, accuracy)| accuracy.map(|a| (tap.as_str(), a)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// A row of the table with our result, if we ran it.
#[derive(Debug, Clone, PartialEq)]
pub struct RowResult {
    /// The table's row.
    pub row: Row,
    /// Our score.
    pub ours: Option<RunScore>,
}

/// Reads the MLP accuracies of the checkpoint's taps from a dim-eval probe report.
pub fn read_probe_report(path: &Path, checkpoint: &Path) -> Result<RunScore, String> {
    let report = read_json(path)?;
    let bad = |what: &str| format!("{} is not a dim-eval probe report: {what}", path.display());
    let entries = report["entries"].as_array().ok_or_else(|| bad("no entries"))?;
    let accuracy = |tap: &str| {
        entries
            .iter()
            .find(|e| e["model"] == "checkpoint" && e["probe"] == "mlp" && e["tap"] == tap)
            .and_then(|e| e["test_accuracy"].as_f64())
            .map(|a| 100.0 * a)
    };
    let mlp = &report["settings"]["mlp"];
    let protocol = mlp["protocol"].as_str().ok_or_else(|| bad("no settings.mlp.protocol"))?.to_string();
    let protocol_changes = mlp["overrides"]
        .as_array()
        .ok_or_else(|| bad("no settings.mlp.overrides"))?
        .iter()
        .filter_map(|change| change.as_str().map(String::from))
        .collect();
    let count = |split: &str| report[split]["examples"].as_u64().ok_or_else(|| bad("no example counts"));
    Ok(RunScore {
        checkpoint: checkpoint.to_path_buf(),
        probe_report: path.to_path_buf(),
        tap_accuracy: TAPS.iter().map(|tap| (tap.to_string(), accuracy(tap))).collect(),
        protocol,
        protocol_changes,
        examples: (count("train")?, count("test")?),
        epochs_trained: report["checkpoint"]["config"]["epoch"].as_u64().ok_or_else(|| bad("no epoch"))?,
    })
}

/// Whether `path` is a paper-protocol probe report, unchanged from the protocol, of the weights
/// now in `checkpoint` (so a rerun after an interruption need not probe it again).
pub fn probe_report_is_current(path: &Path, checkpoint: &Path) -> bool {
    let (Ok(report), Ok(weights)) = (read_json(path), std::fs::read(checkpoint.join(WEIGHTS_FILE))) else {
        return false;
    };
    let mlp = &report["settings"]["mlp"];
    mlp["protocol"] == "paper"
        && mlp["overrides"].as_array().is_some_and(|changes| changes.is_empty())
        && report["checkpoint"]["weights_sha256"] == sha256_hex(&weights).as_str()
}

/// Training throughput of the last epoch dim-train logged in `checkpoint`.
pub fn images_per_second(checkpoint: &Path) -> Result<f64, String> {
    let path = checkpoint.join("train_log.jsonl");
    let log = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let last = log.lines().last().ok_or_else(|| format!("{} is empty", path.display()))?;
    let record: Value = serde_json::from_str(last).map_err(|e| format!("{}: {e}", path.display()))?;
    record["images_per_second"]
        .as_f64()
        .filter(|rate| *rate > 0.0)
        .ok_or_else(|| format!("{} has no images_per_second", path.display()))
}

fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// A finished table: the paper's numbers and ours.
#[derive(Debug, Clone, PartialEq)]
pub struct TableReport {
    table: &'static PaperTable,
    data: PathBuf,
    device: String,
    smoke: bool,
    rows: Vec<RowResult>,
}

/// One row of `table.json`.
#[derive(Debug, Serialize)]
struct JsonRow<'a> {
    model: &'a str,
    published_accuracy: Option<f64>,
    ours: Option<&'a RunScore>,
    ours_best_tap: Option<&'a str>,
    ours_best_accuracy: Option<f64>,
}

/// `table.json`.
#[derive(Debug, Serialize)]
struct JsonTable<'a> {
    table: &'a str,
    title: &'a str,
    published_source: &'a str,
    smoke: bool,
    note: &'a str,
    dataset: &'a str,
    data: &'a Path,
    device: &'a str,
    probe: &'a str,
    rows: Vec<JsonRow<'a>>,
}

const SMOKE_NOTE: &str = "SMOKE RUN: one epoch on 128 training images, a 2-epoch probe on a few hundred images. \
     These numbers check that the pipeline runs; they are not a reproduction of the paper.";
const FULL_NOTE: &str =
    "Full run at the official code's training settings; probe: dim-eval --protocol paper.";
const PROBE: &str = "dim-eval probe --probes mlp --protocol paper --taps conv,fc,y (the official code's \
     classifier: Linear-200, Dropout 0.1, BatchNorm, ReLU, Linear; Adam 1e-4, betas 0.5/0.999, lr x0.1 \
     at epochs 50 and 100, batch 64, 1000 epochs); test accuracy after the last epoch";

impl TableReport {
    /// Collects the rows of one run of `table`.
    pub fn new(
        table: &'static PaperTable,
        data: &Path,
        device: &str,
        smoke: bool,
        rows: Vec<RowResult>,
    ) -> Self {
        TableReport { table, data: data.to_path_buf(), device: device.to_string(), smoke, rows }
    }

    /// The Markdown table.
    pub fn markdown(&self) -> String {
        let mut out = format!("# {}\n\n", self.table.title);
        if self.smoke {
            out.push_str(&format!("**{SMOKE_NOTE}**\n\n"));
        } else {
            out.push_str(&format!("{FULL_NOTE}\n\n"));
        }
        let ours = if self.smoke { "smoke" } else { "ours" };
        out.push_str(&format!(
            "| model | paper | {ours}, best tap | {ours} conv | {ours} fc | {ours} Y |\n|---|---|---|---|---|---|\n"
        ));
        let percent = |value: Option<f64>| value.map_or("—".to_string(), |v| format!("{v:.2}"));
        for result in &self.rows {
            let published = percent(result.row.published);
            match &result.ours {
                None => out.push_str(&format!(
                    "| {} | {published} | not trained here | — | — | — |\n",
                    result.row.model
                )),
                Some(score) => {
                    let best = score.best().map_or("—".to_string(), |(tap, a)| format!("{a:.2} ({tap})"));
                    let taps: Vec<String> = score.tap_accuracy.iter().map(|(_, a)| percent(*a)).collect();
                    out.push_str(&format!(
                        "| {} | {published} | {best} | {} |\n",
                        result.row.model,
                        taps.join(" | ")
                    ));
                }
            }
        }
        out.push_str(&format!(
            "\nTest accuracy in %. Paper: {}. Ours: {PROBE}; \"best tap\" is the best of conv, fc and Y.\n\
             Dataset: {} at `{}`; device: {}.\n",
            self.table.source,
            self.table.dataset.name,
            self.data.display(),
            self.device
        ));
        let changed: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| r.ours.as_ref().map(|s| (r.row.model, s)))
            .filter(|(_, s)| !s.protocol_changes.is_empty())
            .map(|(model, s)| format!("{model}: {}", s.protocol_changes.join(", ")))
            .collect();
        if !changed.is_empty() {
            out.push_str(&format!(
                "Probe settings changed from the paper protocol: {}.\n",
                changed.join("; ")
            ));
        }
        out
    }

    fn json(&self) -> String {
        let rows = self
            .rows
            .iter()
            .map(|result| JsonRow {
                model: result.row.model,
                published_accuracy: result.row.published,
                ours: result.ours.as_ref(),
                ours_best_tap: result.ours.as_ref().and_then(|s| s.best()).map(|(tap, _)| tap),
                ours_best_accuracy: result.ours.as_ref().and_then(|s| s.best()).map(|(_, a)| a),
            })
            .collect();
        let table = JsonTable {
            table: self.table.name,
            title: self.table.title,
            published_source: self.table.source,
            smoke: self.smoke,
            note: if self.smoke { SMOKE_NOTE } else { FULL_NOTE },
            dataset: self.table.dataset.name,
            data: &self.data,
            device: &self.device,
            probe: PROBE,
            rows,
        };
        serde_json::to_string_pretty(&table).expect("the table serialises")
    }

    /// Writes `table.md` and `table.json` into `dir`, both or neither.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        let stage = |name: &str, text: String| {
            atomic_file::stage(&dir.join(name), |file| std::io::Write::write_all(file, text.as_bytes()))
                .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
        };
        let files = vec![stage("table.md", self.markdown())?, stage("table.json", self.json())?];
        atomic_file::commit_together(dir, files)
            .map_err(|e| format!("cannot commit the table in {}: {e}", dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_report_is_reused_only_for_the_same_weights_under_the_unchanged_paper_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let (checkpoint, report) = (dir.path().join("run"), dir.path().join("probe.json"));
        std::fs::create_dir(&checkpoint).unwrap();
        std::fs::write(checkpoint.join(WEIGHTS_FILE), b"weights").unwrap();
        let write = |protocol: &str, overrides: Vec<&str>, weights: &[u8]| {
            let json = serde_json::json!({
                "settings": {"mlp": {"protocol": protocol, "overrides": overrides}},
                "checkpoint": {"weights_sha256": sha256_hex(weights)},
            });
            std::fs::write(&report, json.to_string()).unwrap();
        };
        assert!(!probe_report_is_current(&report, &checkpoint), "no report yet");
        write("paper", vec![], b"weights");
        assert!(probe_report_is_current(&report, &checkpoint));
        write("paper", vec![], b"older weights");
        assert!(!probe_report_is_current(&report, &checkpoint));
        write("paper", vec!["epochs 2 (paper protocol: 1000)"], b"weights");
        assert!(!probe_report_is_current(&report, &checkpoint));
        write("fast", vec![], b"weights");
        assert!(!probe_report_is_current(&report, &checkpoint));
    }
}
