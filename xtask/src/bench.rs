//! `cargo xtask bench`: re-runs the project's benchmarks and refreshes `bench/results/`.
//!
//! Each benchmark is a folder `bench/<name>/` with an executable `run` script that builds what it
//! needs in release mode, runs our implementation and its baseline in the same script, and writes
//! `bench/results/<name>.md` (and `.json`) stamped with the machine, the command and the date.

use std::path::Path;
use std::process::Command;

/// Runs the named benchmarks, or all of them.
pub fn run(root: &Path, names: &[String]) -> Result<(), String> {
    crate::environment::setup(root, false)?;
    let bench_dir = root.join("bench");
    let mut available: Vec<String> = std::fs::read_dir(&bench_dir)
        .map_err(|e| format!("cannot list {}: {e}", bench_dir.display()))?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("run").is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    available.sort();
    let chosen: Vec<String> = if names.is_empty() { available.clone() } else { names.to_vec() };
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
    if failed.is_empty() {
        eprintln!("==> reports refreshed in bench/results/");
        Ok(())
    } else {
        Err(format!("benchmarks failed: {}", failed.join(", ")))
    }
}
