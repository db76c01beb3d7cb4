//! The pinned Python environments: the full one carries libtorch (for `tch`) and ONNX Runtime
//! (for `ort`) with the tests' and benchmarks' judges; the inference layer carries ONNX Runtime
//! alone, which is all the main job (`cargo xtask demo`) needs.
//!
//! Environments live in a per-user cache keyed by the lock file's digest, so every clone on a
//! machine (CI's fresh clones included) shares one 4.8 GB install, and changing a pin creates a new
//! environment instead of mutating an old one. A completion marker is written last: an interrupted
//! or failed install is never mistaken for a good one and is rebuilt from scratch on the next run.

use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const COMPLETE_MARKER: &str = ".dim-toolkit-complete";
const ORT_LIBRARY: &str = "onnxruntime/capi/libonnxruntime.so.1.31.1";
const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// What an environment carries.
#[derive(Debug, Clone, Copy)]
enum Layer {
    /// ONNX Runtime (and numpy, which it needs): enough to embed, index and search.
    Inference,
    /// Everything: libtorch for training, ONNX Runtime, and the tests' and benchmarks' judges.
    Full { gpu: bool },
}

impl Layer {
    fn lock_name(self) -> &'static str {
        match self {
            Layer::Inference => "requirements-inference.lock",
            Layer::Full { gpu: false } => "requirements.lock",
            Layer::Full { gpu: true } => "requirements-gpu.lock",
        }
    }

    fn variant(self) -> &'static str {
        match self {
            Layer::Inference => "inference",
            Layer::Full { gpu: false } => "cpu",
            Layer::Full { gpu: true } => "gpu",
        }
    }

    /// What a complete environment imports.
    fn imports(self) -> &'static str {
        match self {
            Layer::Inference => "onnxruntime, numpy",
            Layer::Full { .. } => "torch, onnxruntime, onnx, numpy",
        }
    }

    /// Files a complete environment holds, relative to its site-packages.
    fn required_files(self) -> &'static [&'static str] {
        match self {
            Layer::Inference => &[ORT_LIBRARY],
            Layer::Full { .. } => &["torch/lib/libtorch_cpu.so", "torch/include", ORT_LIBRARY],
        }
    }

    fn size(self) -> &'static str {
        match self {
            Layer::Inference => "~170 MB",
            Layer::Full { .. } => "~5 GB",
        }
    }
}

/// Creates the full environment if needed and (re)links `.dim-env/` in the workspace to it.
pub fn setup(root: &Path, gpu: bool) -> Result<(), String> {
    let python = base_python()?;
    let layer = Layer::Full { gpu };
    let env_dir = environment_dir(root, &python, layer)?;
    use_environment(root, &python, layer, &env_dir)
}

/// Makes ONNX Runtime available to the inference binaries with the least set-up: the library
/// already linked at `.dim-env/`, else the full CPU environment when it exists, else the small
/// inference environment (created if needed). libtorch is left to [`setup`].
pub fn setup_inference(root: &Path) -> Result<(), String> {
    let linked = root.join(".dim-env").join("libonnxruntime.so");
    if fs::canonicalize(&linked).is_ok_and(|target| target.ends_with(ORT_LIBRARY)) {
        eprintln!("==> ONNX Runtime ready: {}", linked.display());
        return Ok(());
    }
    let python = base_python()?;
    let full = Layer::Full { gpu: false };
    let full_dir = environment_dir(root, &python, full)?;
    if full_dir.join(COMPLETE_MARKER).is_file() {
        return use_environment(root, &python, full, &full_dir);
    }
    let env_dir = environment_dir(root, &python, Layer::Inference)?;
    use_environment(root, &python, Layer::Inference, &env_dir)
}

/// The cache folder of `layer`'s environment, keyed by its lock file and the Python version.
fn environment_dir(root: &Path, python: &BasePython, layer: Layer) -> Result<PathBuf, String> {
    let lock_path = root.join(layer.lock_name());
    let lock =
        fs::read_to_string(&lock_path).map_err(|e| format!("cannot read {}: {e}", lock_path.display()))?;
    let digest = hex_prefix(&Sha256::digest(format!("{lock}\n{}", python.version)));
    Ok(cache_dir()?.join(format!("env-{}-{digest}", layer.variant())))
}

/// Installs `layer`'s environment into `env_dir` unless it is complete, and links `.dim-env/`
/// to it.
fn use_environment(root: &Path, python: &BasePython, layer: Layer, env_dir: &Path) -> Result<(), String> {
    if !env_dir.join(COMPLETE_MARKER).is_file() {
        install(python, env_dir, &root.join(layer.lock_name()), layer)?;
    }
    let site_packages = PathBuf::from(
        fs::read_to_string(env_dir.join(COMPLETE_MARKER))
            .map_err(|e| format!("cannot read the environment marker: {e}"))?
            .trim(),
    );
    link_workspace(root, env_dir, &site_packages, layer)?;
    eprintln!("==> environment ready: {} ({})", env_dir.display(), layer.variant());
    Ok(())
}

pub(crate) struct BasePython {
    pub(crate) program: String,
    version: String,
}

pub(crate) fn base_python() -> Result<BasePython, String> {
    let program = std::env::var("DIM_PYTHON3").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&program)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .map_err(|e| {
            format!(
                "`{program}` not found ({e}). Install Python 3.10 or newer with pip and venv \
                 (Debian/Ubuntu: `apt-get install python3 python3-venv python3-pip`), \
                 or point DIM_PYTHON3 at an interpreter."
            )
        })?;
    if !output.status.success() {
        return Err(format!("`{program}` does not run: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Ok(BasePython { program, version })
}

fn cache_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("DIM_TOOLKIT_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("dim-toolkit"));
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache").join("dim-toolkit"))
        .ok_or_else(|| "neither DIM_TOOLKIT_CACHE, XDG_CACHE_HOME nor HOME is set".to_string())
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn install(python: &BasePython, env_dir: &Path, lock_path: &Path, layer: Layer) -> Result<(), String> {
    eprintln!(
        "==> creating the Python environment {} from {} (one-time, {})",
        env_dir.display(),
        lock_path.display(),
        layer.size()
    );
    if env_dir.exists() {
        eprintln!("    removing an incomplete earlier attempt");
        fs::remove_dir_all(env_dir).map_err(|e| format!("cannot remove {}: {e}", env_dir.display()))?;
    }
    fs::create_dir_all(env_dir.parent().expect("cache dir has a parent"))
        .map_err(|e| format!("cannot create the cache directory: {e}"))?;
    let result = create_and_fill(python, env_dir, lock_path, layer);
    if result.is_err() {
        let _ = fs::remove_dir_all(env_dir);
    }
    result
}

fn create_and_fill(
    python: &BasePython,
    env_dir: &Path,
    lock_path: &Path,
    layer: Layer,
) -> Result<(), String> {
    run_checked(
        Command::new(&python.program).arg("-m").arg("venv").arg(env_dir),
        "python3 -m venv failed: install the venv module (Debian/Ubuntu: `apt-get install python3-venv`)",
    )?;
    let env_python = env_dir.join("bin").join("python");
    run_checked(
        Command::new(&env_python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--no-cache-dir",
                "-r",
            ])
            .arg(lock_path),
        "pip could not install the pinned wheels. Check that PyPI is reachable (or that \
         PIP_INDEX_URL points at a mirror) and that there is ~6 GB of free disk, then rerun \
         `cargo xtask setup`",
    )?;
    let probe = Command::new(&env_python)
        .arg("-c")
        .arg(format!("import sysconfig, {}; print(sysconfig.get_paths()['purelib'])", layer.imports()))
        .output()
        .map_err(|e| format!("cannot run the new environment's python: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "the new environment does not import its packages:\n{}",
            String::from_utf8_lossy(&probe.stderr)
        ));
    }
    let site_packages = String::from_utf8_lossy(&probe.stdout).trim().to_string();
    for required in layer.required_files() {
        let path = Path::new(&site_packages).join(required);
        if !path.exists() {
            return Err(format!("the environment lacks {}", path.display()));
        }
    }
    fs::write(env_dir.join(COMPLETE_MARKER), format!("{site_packages}\n"))
        .map_err(|e| format!("cannot write the completion marker: {e}"))
}

pub(crate) fn run_checked(command: &mut Command, hint: &str) -> Result<(), String> {
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{hint} ({status})")),
        Err(e) => Err(format!("{hint} ({e})")),
    }
}

/// Points `.dim-env/{venv,torch,libonnxruntime.so}` at the full environment, or only
/// `libonnxruntime.so` at the inference one (Python is `.dim-env/venv/bin/python`: a venv is only
/// recognised through its own `bin/`). Each link is replaced by rename, so a concurrent cargo
/// build never sees a missing path.
fn link_workspace(root: &Path, env_dir: &Path, site_packages: &Path, layer: Layer) -> Result<(), String> {
    let links = root.join(".dim-env");
    fs::create_dir_all(&links).map_err(|e| format!("cannot create {}: {e}", links.display()))?;
    // An earlier layout linked the interpreter directly, which hid the venv from Python.
    let _ = fs::remove_file(links.join("python"));
    let mut targets = vec![("libonnxruntime.so", site_packages.join(ORT_LIBRARY))];
    if let Layer::Full { .. } = layer {
        targets.push(("venv", env_dir.to_path_buf()));
        targets.push(("torch", site_packages.join("torch")));
    }
    for (name, target) in targets {
        let link = links.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        let staging = links.join(format!(".{name}.tmp"));
        let _ = fs::remove_file(&staging);
        std::os::unix::fs::symlink(&target, &staging)
            .and_then(|()| fs::rename(&staging, &link))
            .map_err(|e| format!("cannot link {} -> {}: {e}", link.display(), target.display()))?;
    }
    Ok(())
}

/// Returns the Fashion-MNIST IDX directory, installing Debian's package when it is missing and
/// this user may do so; otherwise says exactly how to get it.
pub fn ensure_fashion_mnist() -> Result<PathBuf, String> {
    let dir = std::env::var_os("DIM_FASHION_MNIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR));
    let present = |dir: &Path| dir.join("t10k-images-idx3-ubyte.gz").is_file();
    if present(&dir) {
        return Ok(dir);
    }
    eprintln!(
        "==> Fashion-MNIST not found at {}; trying `apt-get install dataset-fashion-mnist`",
        dir.display()
    );
    apt_install_as_root(&["dataset-fashion-mnist"]);
    if present(&dir) {
        return Ok(dir);
    }
    Err(format!(
        "Fashion-MNIST is missing at {}. Get it with `sudo apt-get update && sudo apt-get install \
         dataset-fashion-mnist` (Debian/Ubuntu), or download the four *-ubyte.gz files from \
         https://github.com/zalandoresearch/fashion-mnist into a folder and set \
         DIM_FASHION_MNIST=<that folder>.",
        dir.display()
    ))
}

/// Installs Debian packages with apt-get when running as root; otherwise does nothing (the
/// caller then says how to get what is missing).
fn apt_install_as_root(packages: &[&str]) {
    let is_root =
        Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if is_root {
        let _ = Command::new("apt-get").arg("update").arg("-qq").status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
}

/// The headless browser of dim-serve's page test: Debian's chromium and chromedriver,
/// installed when missing and this user may do so (about 30 s); otherwise says how to get them.
pub fn ensure_browser() -> Result<(), String> {
    let chromium =
        std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    let driver =
        std::env::var_os("CHROMEDRIVER").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromedriver".into());
    let present = || chromium.is_file() && driver.is_file();
    if present() {
        return Ok(());
    }
    eprintln!("==> headless Chromium not found; trying `apt-get install chromium chromium-driver`");
    apt_install_as_root(&["chromium", "chromium-driver"]);
    if present() {
        return Ok(());
    }
    Err(format!(
        "the browser test needs {} and {}: `sudo apt-get install chromium chromium-driver` \
         (Debian/Ubuntu), or set CHROMIUM and CHROMEDRIVER to a Chromium and its matching chromedriver",
        chromium.display(),
        driver.display()
    ))
}
