//! `cargo xtask bench --check`: compares every same-run ratio a benchmark writes (a JSON number
//! under a key named `ratio`, `ratio_*` or `*_ratio*`) with the last committed report, and fails
//! when one drops more than 10% below it. Reports from another kind of machine (another CPU model
//! or core count) are not compared, since their ratios need not carry over.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// A ratio may fall to this fraction of the committed one before the gate fails.
pub const ALLOWED_FRACTION: f64 = 0.9;

/// The committed reports: file name → JSON, from `git show HEAD:bench/results/<file>`.
pub fn committed_reports(root: &Path) -> Result<BTreeMap<String, Value>, String> {
    let listing = Command::new("git")
        .args(["ls-tree", "--name-only", "HEAD", "bench/results/"])
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run git to read the committed reports: {e}"))?;
    if !listing.status.success() {
        return Err(format!("git ls-tree failed: {}", String::from_utf8_lossy(&listing.stderr).trim()));
    }
    let mut reports = BTreeMap::new();
    for path in String::from_utf8_lossy(&listing.stdout).lines().filter(|p| p.ends_with(".json")) {
        let shown = Command::new("git")
            .args(["show", &format!("HEAD:{path}")])
            .current_dir(root)
            .output()
            .map_err(|e| format!("cannot run git show: {e}"))?;
        if let Ok(json) = serde_json::from_slice::<Value>(&shown.stdout) {
            let name = path.trim_start_matches("bench/results/").to_string();
            reports.insert(name, json);
        }
    }
    Ok(reports)
}

/// One ratio of a report compared with its committed value.
#[derive(Debug, Clone, PartialEq)]
pub struct RatioChange {
    /// Where it sits in the JSON, e.g. `results[1].ratio`.
    pub path: String,
    /// The committed value.
    pub committed: f64,
    /// The new value, or `None` when the new report lacks it.
    pub new: Option<f64>,
}

impl RatioChange {
    /// Whether this change fails the gate: a drop past [`ALLOWED_FRACTION`], or a lost ratio.
    pub fn regressed(&self) -> bool {
        self.new.is_none_or(|new| new < ALLOWED_FRACTION * self.committed)
    }
}

/// The outcome of comparing one report with its committed version.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    /// The reports come from different kinds of machine.
    OtherMachine {
        /// The committed report's machine.
        committed: String,
        /// The new report's machine.
        new: String,
    },
    /// Every ratio of the committed report, against the new one.
    Compared(Vec<RatioChange>),
}

/// Compares the ratios of `new` with those of `committed`.
pub fn compare(committed: &Value, new: &Value) -> Comparison {
    let (committed_machine, new_machine) = (machine_kind(committed), machine_kind(new));
    if committed_machine != new_machine {
        return Comparison::OtherMachine { committed: committed_machine, new: new_machine };
    }
    let new_ratios = ratios(new);
    Comparison::Compared(
        ratios(committed)
            .into_iter()
            .map(|(path, committed)| RatioChange { new: new_ratios.get(&path).copied(), path, committed })
            .collect(),
    )
}

/// Every ratio in a report, by its path.
pub fn ratios(report: &Value) -> BTreeMap<String, f64> {
    fn walk(value: &Value, path: &str, key: &str, found: &mut BTreeMap<String, f64>) {
        match value {
            Value::Object(map) => {
                for (child_key, child) in map {
                    let child_path =
                        if path.is_empty() { child_key.clone() } else { format!("{path}.{child_key}") };
                    walk(child, &child_path, child_key, found);
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{index}]"), key, found);
                }
            }
            Value::Number(number) if is_ratio_key(key) => {
                if let Some(value) = number.as_f64() {
                    found.insert(path.to_string(), value);
                }
            }
            _ => {}
        }
    }
    let mut found = BTreeMap::new();
    walk(report, "", "", &mut found);
    found
}

fn is_ratio_key(key: &str) -> bool {
    key == "ratio" || key.starts_with("ratio_") || key.contains("_ratio")
}

/// The CPU model and core count a report was measured on, as the reports write them: either a
/// `machine` object with `cpu` and `cores`, or a `machine` string whose load-average part (and
/// anything after it) is left out.
pub fn machine_kind(report: &Value) -> String {
    match report.get("machine") {
        Some(Value::Object(machine)) => {
            let cpu = machine.get("cpu").and_then(Value::as_str).unwrap_or("unknown CPU");
            let cores = machine.get("cores").map(Value::to_string).unwrap_or_else(|| "?".into());
            format!("{cpu}, {cores} cores")
        }
        Some(Value::String(machine)) => {
            let kept: Vec<&str> = machine
                .split(", ")
                .take_while(|part| !part.starts_with("load average"))
                .map(str::trim)
                .collect();
            kept.join(", ")
        }
        _ => "unknown machine".to_string(),
    }
}

/// Prints the comparison of every report that differs from its committed version; returns the
/// regressions as lines.
pub fn check(root: &Path, committed: &BTreeMap<String, Value>) -> Vec<String> {
    let mut regressions = Vec::new();
    for (name, committed_report) in committed {
        let path = root.join("bench/results").join(name);
        let Ok(text) = std::fs::read(&path) else { continue };
        let Ok(new_report) = serde_json::from_slice::<Value>(&text) else {
            regressions.push(format!("{name}: the new report is not JSON"));
            continue;
        };
        if &new_report == committed_report {
            // Not rewritten by the benchmarks that ran.
            continue;
        }
        match compare(committed_report, &new_report) {
            Comparison::OtherMachine { committed, new } => {
                eprintln!("==> {name}: not compared: committed on `{committed}`, measured now on `{new}`");
            }
            Comparison::Compared(changes) if changes.is_empty() => {
                eprintln!("==> {name}: no ratios to compare");
            }
            Comparison::Compared(changes) => {
                eprintln!(
                    "==> {name}: ratios against the committed report (fails below {ALLOWED_FRACTION}×)"
                );
                for change in changes {
                    let new = change.new.map_or("missing".to_string(), |v| format!("{v:.3}"));
                    let relative =
                        change.new.map_or(String::new(), |v| format!(" ({:.2}×)", v / change.committed));
                    let verdict = if change.regressed() { "REGRESSED" } else { "ok" };
                    eprintln!("    {verdict:9} {}: {:.3} -> {new}{relative}", change.path, change.committed);
                    if change.regressed() {
                        regressions.push(format!("{name} {}: {:.3} -> {new}", change.path, change.committed));
                    }
                }
            }
        }
    }
    regressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(machine: Value, ratio: f64, other_ratio: f64) -> Value {
        json!({
            "machine": machine,
            "date": "today",
            "results": [
                {"channels": 1, "ratio": ratio, "images_per_second": 900.0},
                {"channels": 3, "ratio_vs_channels_last": other_ratio, "calibration": 0.5}
            ],
            "epoch2_ratio_to_cifar": 1.0
        })
    }

    #[test]
    fn ratios_are_found_by_key_wherever_they_sit() {
        let found = ratios(&report(json!("cpu, 2 cores"), 1.2, 0.8));
        let paths: Vec<&str> = found.keys().map(String::as_str).collect();
        // "calibration" contains "ratio" but is not one.
        assert_eq!(paths, ["epoch2_ratio_to_cifar", "results[0].ratio", "results[1].ratio_vs_channels_last"]);
        assert_eq!(found["results[0].ratio"], 1.2);
    }

    #[test]
    fn a_drop_past_ten_percent_or_a_lost_ratio_fails_and_a_smaller_drop_passes() {
        let machine = json!({"cpu": "Xeon", "cores": 2, "load_average_at_end": 1.5});
        let committed = report(machine.clone(), 1.0, 2.0);
        let Comparison::Compared(changes) = compare(&committed, &report(machine.clone(), 0.91, 1.79)) else {
            panic!("same machine")
        };
        let regressed: Vec<(&str, bool)> = changes.iter().map(|c| (c.path.as_str(), c.regressed())).collect();
        assert_eq!(
            regressed,
            [
                ("epoch2_ratio_to_cifar", false),
                ("results[0].ratio", false),
                ("results[1].ratio_vs_channels_last", true)
            ]
        );
        let mut without = report(machine, 1.0, 2.0);
        without["results"][0].as_object_mut().unwrap().remove("ratio");
        let Comparison::Compared(changes) = compare(&committed, &without) else { panic!("same machine") };
        assert!(changes.iter().any(|c| c.path == "results[0].ratio" && c.new.is_none() && c.regressed()));
    }

    #[test]
    fn reports_from_another_machine_kind_are_not_compared_but_load_does_not_matter() {
        let committed = report(json!("AMD EPYC, 2 cores, load average 1.72"), 1.0, 1.0);
        let same_kind = report(json!("AMD EPYC, 2 cores, load average 3.10"), 0.5, 0.5);
        assert!(matches!(compare(&committed, &same_kind), Comparison::Compared(_)));
        let other = report(json!("AMD EPYC, 16 cores, load average 1.0"), 0.5, 0.5);
        assert_eq!(
            compare(&committed, &other),
            Comparison::OtherMachine {
                committed: "AMD EPYC, 2 cores".into(),
                new: "AMD EPYC, 16 cores".into()
            }
        );
        let object = json!({"machine": {"cpu": "Xeon", "cores": 2, "load_average_at_end": 1.9}});
        assert_eq!(machine_kind(&object), "Xeon, 2 cores");
    }
}
