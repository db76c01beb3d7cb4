//! The Python package's checks: build the wheel with maturin, install it into a fresh virtual
//! environment with nothing but its own dependencies, run the smoke script there, then add
//! pytest and Pillow and run python/tests against the installed wheel.

use crate::environment::{base_python, run_checked};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set for cargo's own processes (.cargo/config.toml); the installed package must find ONNX
/// Runtime through the onnxruntime wheel instead.
const ORT_VARIABLE: &str = "ORT_DYLIB_PATH";

/// Builds, installs and tests the wheel; `binaries` holds the dim-embed, dim-search and
/// dim-train the tests compare with.
pub fn test(root: &Path, binaries: &Path) -> Result<(), String> {
    let work = root.join("target").join("python");
    let lock = root.join("python").join("requirements-test.lock");
    let tools = venv(&work.join("tools"), false)?;
    install(&tools, &lock, &["maturin"])?;

    let wheels = work.join("wheels");
    let _ = fs::remove_dir_all(&wheels);
    eprintln!("==> maturin build (python/)");
    run_checked(
        Command::new(tools.join("maturin"))
            .args(["build", "--quiet", "--profile", "dev", "--manifest-path"])
            .arg(root.join("python").join("Cargo.toml"))
            .arg("--out")
            .arg(&wheels)
            .arg("--interpreter")
            .arg(tools.join("python")),
        "maturin could not build the wheel",
    )?;
    let wheel = fs::read_dir(&wheels)
        .map_err(|e| format!("cannot list {}: {e}", wheels.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or("maturin wrote no wheel")?;

    eprintln!("==> installing {} into a fresh environment", wheel.display());
    let fresh = venv(&work.join("fresh"), true)?;
    install(&fresh, &lock, &[wheel.as_os_str().to_str().ok_or("wheel path is not UTF-8")?])?;
    run_checked(
        Command::new(fresh.join("python"))
            .arg(root.join("python").join("tests").join("smoke.py"))
            .env_remove(ORT_VARIABLE)
            .current_dir(&work),
        "the wheel does not work on its own (python/tests/smoke.py)",
    )?;
    install(&fresh, &lock, &["pytest", "pillow"])?;
    eprintln!("==> pytest python/tests");
    run_checked(
        Command::new(fresh.join("python"))
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(root.join("python").join("tests"))
            .env("DIM_EMBED", binaries.join("dim-embed"))
            .env("DIM_SEARCH", binaries.join("dim-search"))
            .env("DIM_TRAIN", binaries.join("dim-train"))
            .env_remove(ORT_VARIABLE)
            .current_dir(&work),
        "the Python package's tests failed",
    )
}

/// The `bin/` of a virtual environment at `dir`, created when missing (or afresh when `fresh`).
fn venv(dir: &Path, fresh: bool) -> Result<PathBuf, String> {
    if fresh && dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    if !dir.join("bin").join("python").exists() {
        run_checked(
            Command::new(base_python()?.program).args(["-m", "venv"]).arg(dir),
            "python3 -m venv failed: install the venv module (Debian/Ubuntu: `apt-get install python3-venv`)",
        )?;
    }
    Ok(dir.join("bin"))
}

/// `pip install` of `packages`, each pinned by the lock file.
fn install(bin: &Path, lock: &Path, packages: &[&str]) -> Result<(), String> {
    run_checked(
        Command::new(bin.join("python"))
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "-c"])
            .arg(lock)
            .args(packages),
        "pip could not install the Python package's test dependencies (is PyPI reachable?)",
    )
}
