//! `cargo xtask bench`: re-runs the project's benchmarks and refreshes `bench/results/`.
//!
//! Each benchmark is a folder `bench/<name>/` with an executable `run` script that builds what it
//! needs in release mode, runs our implementation and its baseline in the same script, and writes
//! `bench/results/<name>.md` (and `.json`) stamped with the machine, the command and the date.
//! With `--check`, the new reports' ratios are compared with the committed ones
//! ([`crate::regression_gate`]).

use std::path::Path;
use std::process::Command;

/// Runs the named benchmarks, or all of them; `--check` among the arguments also compares the
/// new reports with the committed ones and fails on a regression.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let check = args.iter().any(|arg| arg == "--check");
    let names: Vec<String> = args.iter().filter(|arg| *arg != "--check").cloned().collect();
    if let Some(flag) = names.iter().find(|name| name.starts_with('-')) {
        return Err(format!("unknown option `{flag}` for bench (known: --check)"));
    }
    let committed = if check { Some(crate::regression_gate::committed_reports(root)?) } else { None };
    crate::environment::setup(root, false)?;
    let bench_dir = root.join("bench");
    let mut available: Vec<String> = std::fs::read_dir(&bench_dir)
        .map_err(|e| format!("cannot list {}: {e}", bench_dir.display()))?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("run").is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    available.sort();
    let chosen: Vec<String> = if names.is_empty() { available.clone() } else { names };
    for name in &chosen {
        if !available.contains(name) {
            return Err(format!("unknown benchmark `{name}` (available: {})", available.join(", ")));
        }
    }
    let mut failed = Vec::new();
    for name in &chosen {
        eprintln!("==> bench {name}");
        let status = Command::new(bench_dir.join(name).join("run"))
            .current_dir(root)
            .status()
            .map_err(|e| format!("cannot start bench/{name}/run: {e}"))?;
        if !status.success() {
            eprintln!("bench {name} failed ({status})");
            failed.push(name.clone());
        }
    }
    if !failed.is_empty() {
        return Err(format!("benchmarks failed: {}", failed.join(", ")));
    }
    eprintln!("==> reports refreshed in bench/results/");
    if let Some(committed) = committed {
        let regressions = crate::regression_gate::check(root, &committed);
        if !regressions.is_empty() {
            return Err(format!(
                "{} ratio(s) fell more than 10% below the committed report:\n  {}",
                regressions.len(),
                regressions.join("\n  ")
            ));
        }
        eprintln!("==> no ratio fell more than 10% below the committed reports");
    }
    Ok(())
}
