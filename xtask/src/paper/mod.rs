//! `cargo xtask paper <table> --data DIR`: reproduces one of the DIM paper's tables. Every row
//! the toolkit can train is trained with `dim-train` at the official code's settings and scored
//! with `dim-eval probe --protocol paper` on the conv, fc and Y taps; the paper's numbers and ours
//! are written side by side to `<out>/table.md` and `<out>/table.json` (atomically, together).
//!
//! Full runs take hours on a GPU, so on a CPU they are refused with an estimate measured from a
//! few training steps; `--smoke` runs the same pipeline with tiny budgets to check the plumbing,
//! and its numbers are labelled as smoke numbers.

mod report;
mod tables;

use report::{RowResult, TableReport};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tables::{PaperTable, TrainingRun};

/// Usage of `cargo xtask paper`.
pub const USAGE: &str = "\
cargo xtask paper <table> --data DIR [--out DIR] [--device cpu|cuda|cuda:N] [--smoke]

Tables:
  cifar10         Table 1, CIFAR-10: DIM(L) with the DV, JSD and infoNCE estimators (basic32x32)
  cifar100        Table 1, CIFAR-100: the same rows
  stl10           Table 1, STL-10: the same rows (alex64x64 on 64x64 inputs, flips)
  resnet-cifar10  DIM against CPC on CIFAR-10: resnet19_32x32 and foldresnet19_32x32 (strided crops)

Options:
  --data DIR      the dataset's binary version: cifar-10-batches-bin, cifar-100-binary or
                  stl10_binary (the folder holding the .bin files)
  --out DIR       where runs, probe reports and the table go (default paper-results/<table>, or
                  paper-results/<table>-smoke with --smoke); an interrupted full run resumes
  --device D      cpu (default), cuda or cuda:N; full runs need a GPU (build with
                  `cargo xtask setup --gpu` first) and are refused on cpu with an estimate
  --smoke         the whole pipeline with tiny budgets (a few steps, a 2-epoch probe on a few
                  hundred images): checks the plumbing; its numbers reproduce nothing
";

/// Training images of the measured run behind a CPU estimate (a few steps of 64).
const ESTIMATE_IMAGES: usize = 320;

/// The command line of `cargo xtask paper`.
#[derive(Debug, Clone, PartialEq)]
struct PaperArgs {
    table: &'static PaperTable,
    data: PathBuf,
    out: PathBuf,
    device: String,
    smoke: bool,
}

fn parse_args(root: &Path, args: &[String]) -> Result<PaperArgs, String> {
    let mut table = None;
    let (mut data, mut out, mut device, mut smoke) = (None, None, "cpu".to_string(), false);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value =
            |flag: &str| rest.next().cloned().ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"));
        match arg.as_str() {
            "--data" => data = Some(PathBuf::from(value("--data")?)),
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--device" => device = value("--device")?,
            "--smoke" => smoke = true,
            flag if flag.starts_with('-') => return Err(format!("unknown option `{flag}`\n\n{USAGE}")),
            name if table.is_none() => {
                table = Some(tables::find(name).ok_or_else(|| {
                    let known: Vec<&str> = tables::TABLES.iter().map(|t| t.name).collect();
                    format!("unknown table `{name}` (known: {})", known.join(", "))
                })?)
            }
            extra => return Err(format!("unexpected argument `{extra}`\n\n{USAGE}")),
        }
    }
    let table = table.ok_or_else(|| format!("name a table\n\n{USAGE}"))?;
    let data = data.ok_or_else(|| format!("--data DIR is required\n\n{USAGE}"))?;
    let valid_device = device == "cpu"
        || device == "cuda"
        || device.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
    if !valid_device {
        return Err(format!("--device must be cpu, cuda or cuda:N, not `{device}`"));
    }
    let out = out.unwrap_or_else(|| {
        let name = if smoke { format!("{}-smoke", table.name) } else { table.name.to_string() };
        root.join("paper-results").join(name)
    });
    Ok(PaperArgs { table, data, out, device, smoke })
}

/// Runs `cargo xtask paper` with the arguments after `paper`.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    if args.iter().any(|arg| arg == "-h" || arg == "--help") {
        print!("{USAGE}");
        return Ok(());
    }
    let args = parse_args(root, args)?;
    let table = args.table;
    check_data(table, &args.data)?;
    if !args.smoke && args.device == "cpu" {
        return Err(refusal_with_estimate(table, &args.data, &build_binaries(root, false)?)?);
    }
    let binaries = build_binaries(root, !args.smoke)?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let started = Instant::now();
    let mut results = Vec::new();
    for row in table.rows {
        let Some(run) = row.ours else {
            results.push(RowResult { row: *row, ours: None });
            continue;
        };
        let checkpoint = args.out.join("runs").join(run.key);
        let probe_json = args.out.join("probes").join(format!("{}.json", run.key));
        train(&binaries, &args, &run, &checkpoint)?;
        if !args.smoke && report::probe_report_is_current(&probe_json, &checkpoint) {
            eprintln!("==> {} already probed with the paper protocol: {}", run.key, probe_json.display());
        } else {
            probe(&binaries, &args, &checkpoint, &probe_json)?;
        }
        let ours = report::read_probe_report(&probe_json, &checkpoint)?;
        results.push(RowResult { row: *row, ours: Some(ours) });
    }
    let report = TableReport::new(table, &args.data, &args.device, args.smoke, results);
    report.write(&args.out)?;
    eprintln!(
        "==> wrote {} and table.json in {:.0} s{}",
        args.out.join("table.md").display(),
        started.elapsed().as_secs_f64(),
        if args.smoke { " (smoke run: these numbers reproduce nothing)" } else { "" }
    );
    print!("{}", report.markdown());
    Ok(())
}

/// Checks that `data` holds the files of the table's dataset.
fn check_data(table: &PaperTable, data: &Path) -> Result<(), String> {
    if !data.is_dir() {
        return Err(format!("--data {} is not a directory", data.display()));
    }
    let missing: Vec<&str> =
        table.dataset.required_files.iter().copied().filter(|name| !data.join(name).is_file()).collect();
    if !missing.is_empty() {
        return Err(format!(
            "--data {} does not hold {}: missing {}",
            data.display(),
            table.dataset.name,
            missing.join(", ")
        ));
    }
    Ok(())
}

/// Where the built dim-train and dim-eval live.
#[derive(Debug, Clone)]
struct Binaries {
    train: PathBuf,
    eval: PathBuf,
}

/// Builds dim-train and dim-eval (release for full runs, the test profile's debug build for smoke
/// runs and estimates) and returns their paths.
fn build_binaries(root: &Path, release: bool) -> Result<Binaries, String> {
    let mut args = vec!["build", "--quiet", "-p", "dim-train", "--bins"];
    if release {
        args.push("--release");
    }
    crate::cargo(&args)?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let dir = target.join(if release { "release" } else { "debug" });
    Ok(Binaries { train: dir.join("dim-train"), eval: dir.join("dim-eval") })
}

/// Runs `program` with `args`, echoing the command; fails with the step's name.
fn run_step(program: &Path, args: &[String]) -> Result<(), String> {
    let name = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    eprintln!("==> {name} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    if status.success() { Ok(()) } else { Err(format!("{name} failed ({status})")) }
}

/// How much of a run dim-train does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// The official number of epochs.
    Full,
    /// One epoch over [`ESTIMATE_IMAGES`] images at the full settings, to time it.
    Measure,
    /// One epoch over 128 images with a narrow critic, to check the plumbing.
    Smoke,
}

/// The dim-train arguments of `run` on `data` under `budget`.
fn training_args(run: &TrainingRun, table: &PaperTable, data: &Path, budget: Budget) -> Vec<String> {
    let mut args: Vec<String> = [
        "--data",
        &data.display().to_string(),
        "--format",
        table.dataset.train_format,
        "--preset",
        run.preset.name(),
        "--channels",
        "3",
        "--resize",
        table.dataset.resize,
        "--mode",
        run.mode,
        "--estimator",
        run.estimator,
        "--batch",
        "64",
        "--lr",
        "1e-4",
        "--seed",
        "0",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    if run.flip {
        args.push("--flip".into());
    }
    let (epochs, critic_width, limit) = match budget {
        Budget::Full => (run.epochs, run.critic_width, None),
        Budget::Measure => (1, run.critic_width, Some(ESTIMATE_IMAGES)),
        Budget::Smoke => (1, 32, Some(128)),
    };
    args.extend(["--epochs".into(), epochs.to_string(), "--critic-width".into(), critic_width.to_string()]);
    if let Some(limit) = limit {
        args.extend(["--limit".into(), limit.to_string()]);
    }
    if budget == Budget::Smoke {
        // Steps this small are dominated by starting libtorch's thread pool, the more so on a
        // loaded machine (4.7 s instead of 12.9 s for the smoke training on 2 busy cores).
        args.extend(["--threads".into(), "1".into()]);
    }
    args
}

/// Trains (or resumes) one run's checkpoint.
fn train(binaries: &Binaries, args: &PaperArgs, run: &TrainingRun, checkpoint: &Path) -> Result<(), String> {
    let resumable = checkpoint.join("config.json").is_file();
    if args.smoke && checkpoint.exists() {
        // Smoke checkpoints are scratch: start each smoke run afresh.
        std::fs::remove_dir_all(checkpoint)
            .map_err(|e| format!("cannot clear {}: {e}", checkpoint.display()))?;
    }
    let budget = if args.smoke { Budget::Smoke } else { Budget::Full };
    let mut step = training_args(run, args.table, &args.data, budget);
    if resumable && !args.smoke {
        let epochs = run.epochs.to_string();
        step = vec!["--resume".into(), checkpoint.display().to_string(), "--epochs".into(), epochs];
        step.push("--quiet".into());
    } else {
        step.extend(["--out".into(), checkpoint.display().to_string()]);
    }
    step.extend(["--device".into(), args.device.clone()]);
    run_step(&binaries.train, &step)
}

/// Scores a checkpoint with the paper's probe protocol.
fn probe(binaries: &Binaries, args: &PaperArgs, checkpoint: &Path, out: &Path) -> Result<(), String> {
    let mut step: Vec<String> = [
        "probe",
        "--checkpoint",
        &checkpoint.display().to_string(),
        "--data",
        &args.data.display().to_string(),
        "--format",
        args.table.dataset.probe_format,
        "--probes",
        "mlp",
        "--protocol",
        "paper",
        "--taps",
        "conv,fc,y",
        "--baselines",
        "--device",
        &args.device,
        "--out",
        &out.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    if args.smoke {
        let budget = ["--mlp-epochs", "2", "--limit-train", "256", "--limit-test", "128", "--threads", "1"];
        step.extend(budget.map(String::from));
    }
    run_step(&binaries.eval, &step)
}

/// Measures a few training steps of the table's first run on this CPU and returns the message
/// refusing the full run, with the time it would take.
fn refusal_with_estimate(table: &PaperTable, data: &Path, binaries: &Binaries) -> Result<String, String> {
    let runs: Vec<TrainingRun> = table.rows.iter().filter_map(|row| row.ours).collect();
    let first = runs[0];
    let scratch = std::env::temp_dir().join(format!("dim-paper-estimate-{}", std::process::id()));
    let mut args = training_args(&first, table, data, Budget::Measure);
    args.extend(["--out".into(), scratch.display().to_string(), "--device".into(), "cpu".into()]);
    eprintln!(
        "==> measuring {ESTIMATE_IMAGES} training images of `{}` on this CPU for an estimate",
        first.key
    );
    let measured = run_step(&binaries.train, &args).and_then(|()| report::images_per_second(&scratch));
    let _ = std::fs::remove_dir_all(&scratch);
    let images_per_second = measured?;
    let images: usize = runs.iter().map(|run| run.epochs * table.dataset.train_images).sum();
    let hours = images as f64 / images_per_second / 3600.0;
    Ok(format!(
        "refusing a full `{}` run on the CPU: it trains {} run(s) over {} images in all, and this CPU trained \
         `{}` at {images_per_second:.0} images/s (measured just now on up to {ESTIMATE_IMAGES} images, one \
         epoch including warm-up), so training alone would take about {hours:.0} hours ({:.1} days), before the \
         1000-epoch probes. Run it with --device cuda on a GPU build (`cargo xtask setup --gpu`), or pass \
         --smoke to check the pipeline with tiny budgets.",
        table.name,
        runs.len(),
        images,
        first.key,
        hours / 24.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<PaperArgs, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        parse_args(Path::new("/repo"), &args)
    }

    #[test]
    fn arguments_name_a_table_its_data_and_optionally_the_rest() {
        let args = parse(&["cifar100", "--data", "/d", "--smoke"]).unwrap();
        assert_eq!(args.table.name, "cifar100");
        assert_eq!(args.out, Path::new("/repo/paper-results/cifar100-smoke"));
        assert_eq!((args.device.as_str(), args.smoke), ("cpu", true));
        let args = parse(&["--device", "cuda:1", "stl10", "--data", "/d", "--out", "/o"]).unwrap();
        assert_eq!(
            (args.table.name, args.device.as_str(), args.out.as_path()),
            ("stl10", "cuda:1", Path::new("/o"))
        );
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        let error = |args: &[&str]| parse(args).unwrap_err();
        assert!(error(&["imagenet", "--data", "/d"]).contains("unknown table `imagenet` (known: cifar10"));
        assert!(error(&["cifar10", "--data", "/d", "--fast"]).contains("unknown option `--fast`"));
        assert!(error(&["cifar10"]).contains("--data DIR is required"));
        assert!(error(&["--data", "/d"]).contains("name a table"));
        assert!(error(&["cifar10", "--data"]).contains("--data needs a value"));
        assert!(error(&["cifar10", "--data", "/d", "--device", "gpu"]).contains("cpu, cuda or cuda:N"));
        assert!(error(&["cifar10", "cifar100", "--data", "/d"]).contains("unexpected argument `cifar100`"));
    }

    #[test]
    fn smoke_runs_train_a_few_steps_and_full_runs_use_the_official_budget() {
        let table = tables::find("stl10").unwrap();
        let run = table.rows.iter().find_map(|row| row.ours).unwrap();
        let full = training_args(&run, table, Path::new("/d"), Budget::Full).join(" ");
        for expected in
            ["--epochs 200", "--critic-width 2048", "--batch 64", "--lr 1e-4", "--flip", "--mode dim-l"]
        {
            assert!(full.contains(expected), "{expected} in {full}");
        }
        assert!(full.contains("--preset alex64x64") && full.contains("--resize stretch"), "{full}");
        assert!(full.contains("--format stl10-with-unlabelled"), "{full}");
        assert!(!full.contains("--limit"), "{full}");
        let smoke = training_args(&run, table, Path::new("/d"), Budget::Smoke).join(" ");
        assert!(smoke.contains("--epochs 1") && smoke.contains("--limit 128"), "{smoke}");
        let measure = training_args(&run, table, Path::new("/d"), Budget::Measure).join(" ");
        assert!(measure.contains("--critic-width 2048") && measure.contains("--limit 320"), "{measure}");
    }

    #[test]
    fn a_data_directory_without_the_dataset_files_is_named_with_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data_batch_1.bin"), b"").unwrap();
        let error = check_data(tables::find("cifar10").unwrap(), dir.path()).unwrap_err();
        assert!(error.contains("missing data_batch_2.bin"), "{error}");
        assert!(error.contains("test_batch.bin"), "{error}");
        let error = check_data(tables::find("cifar10").unwrap(), &dir.path().join("absent")).unwrap_err();
        assert!(error.contains("is not a directory"), "{error}");
    }
}
