//! `cargo xtask`: the project's chores (set-up, tests, demo, benchmarks, the paper's tables) as
//! one entry point.

mod bench;
mod environment;
mod installed_binaries;
mod paper;
mod python_package;
mod regression_gate;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
cargo xtask <command> [options]

Commands:
  setup [--gpu]     Create (once) the pinned Python environment holding libtorch and
                    ONNX Runtime, and link it at .dim-env/ so plain cargo commands work.
                    --gpu installs onnxruntime-gpu (CUDA execution provider) instead.
  test              setup, then cargo fmt --check, clippy -D warnings and every test
                    (an installed dim-embed run outside the repository; the Python package:
                    wheel, fresh environment, pytest).
  test-python       only the Python package's part of `test` (needs the debug dim-embed,
                    dim-search and dim-train that `cargo build --bins` makes).
  demo              the main job: embed the Fashion-MNIST test images with the shipped
                    model, index them, query them, and write demo-output/index.html. Sets up
                    ONNX Runtime only (requirements-inference.lock) unless an environment is
                    already there; no libtorch.
  bench [NAME...] [--check]
                    setup, then re-run the benchmarks (all, or the named folders of bench/)
                    and refresh bench/results/. --check then compares every same-run ratio
                    with the last committed report and fails when one is more than 10% lower
                    (reports from another CPU model or core count are not compared).
  paper <table> --data DIR [--out DIR] [--device cpu|cuda|cuda:N] [--smoke]
                    Train and probe the rows of one of the DIM paper's tables (cifar10,
                    cifar100, stl10, resnet-cifar10) at the official settings and write the
                    paper's numbers beside ours. `cargo xtask paper --help` for details.

Environment:
  DIM_TOOLKIT_CACHE  where Python environments are kept (default ~/.cache/dim-toolkit)
  DIM_PYTHON3        the Python interpreter used to create them (default python3)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => environment::setup(&workspace_root(), args[1..].iter().any(|a| a == "--gpu")),
        Some("test") => run_tests(),
        Some("test-python") => {
            python_package::test(&workspace_root(), &workspace_root().join("target").join("debug"))
        }
        Some("demo") => run_demo(&args[1..]),
        Some("bench") => bench::run(&workspace_root(), &args[1..]),
        Some("paper") => paper::run(&workspace_root(), &args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The repository root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits inside the workspace").to_path_buf()
}

/// Runs `cargo <args>` in the workspace root, failing with the step's name.
fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("==> cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("`cargo {}` failed ({status})", args.join(" "))) }
}

fn run_tests() -> Result<(), String> {
    let started = std::time::Instant::now();
    environment::setup(&workspace_root(), false)?;
    environment::ensure_browser()?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    cargo(&["test", "--workspace", "--exclude", "dim-train", "--exclude", "dim-python"])?;
    installed_binaries::check(&workspace_root())?;
    // libtorch's random generator is global to the process, so a test that seeds it can be
    // thrown off by another drawing from it on a parallel thread; dim-train's tests run one at a
    // time (about 35 s more than in parallel).
    cargo(&["test", "-p", "dim-train", "--", "--test-threads=1"])?;
    // The Python package is tested as users get it: a wheel in a fresh environment, checked
    // against the debug dim-embed, dim-search and dim-train the steps above built.
    python_package::test(&workspace_root(), &workspace_root().join("target").join("debug"))?;
    eprintln!("==> all checks passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn run_demo(extra: &[String]) -> Result<(), String> {
    let root = workspace_root();
    // The demo is inference only: ONNX Runtime, not the libtorch environment.
    environment::setup_inference(&root)?;
    let fashion_dir = environment::ensure_fashion_mnist()?;
    let mut args = vec![
        "run".to_string(),
        "--release".into(),
        "--quiet".into(),
        "-p".into(),
        "dim-demo".into(),
        "--".into(),
        "--fashion-mnist".into(),
        fashion_dir.display().to_string(),
    ];
    args.extend(extra.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cargo(&refs)
}
