//! `dim-train`: learns a Deep InfoMax encoder on a folder of images, IDX or CIFAR files and
//! writes checkpoints (weights, optimiser state, config and a per-epoch log) to a directory.

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use dim_models::Preset;
use dim_models::preprocess::{Background, ResizePolicy};
use dim_train::data::{CachePolicy, DataFormat};
use dim_train::device::DeviceRequest;
use dim_train::estimators::Estimator;
use dim_train::objective::{Levers, Mode};
use dim_train::settings::TrainSettings;
use dim_train::trainer::{self, RunEnd, RunOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Train a Deep InfoMax (Hjelm et al., ICLR 2019) image encoder.
///
/// Example: dim-train --data /usr/share/datasets/fashion-mnist --out runs/fmnist --epochs 10
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Training data: an IDX or CIFAR directory or file, an STL-10 binary directory, or a folder of
    /// images.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Data format.
    #[arg(long, value_enum, default_value_t = DataFormat::Auto)]
    format: DataFormat,
    /// Encoder architecture: basic32x32, basic64x64, alex64x64, or the ResNets resnet19_32x32,
    /// resnet34_32x32 and foldresnet19_32x32 (on 7×7 strided 8×8 crops).
    #[arg(long, default_value = "basic32x32")]
    preset: Preset,
    /// Input channels: 1 (grey) or 3 (RGB).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// How images of another size are fitted to the input: pad or stretch.
    #[arg(long, default_value = "pad")]
    resize: ResizePolicy,
    /// What transparent pixels (PNG/WebP/TIFF alpha) are composited over: white, black, or
    /// ignore (drop alpha, as models before this option did). Recorded in the checkpoint and the
    /// exported model, and applied identically by dim-embed.
    #[arg(long, default_value = "white")]
    background: Background,
    /// Checkpoint directory (default with --resume: the resumed directory).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Total number of epochs (with --resume: the new total).
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per batch; the other images of a batch are the negatives.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Objective preset: dim-l (α 0, β 1, γ 0.1) or dim-g (α 1, β 0, γ 1).
    #[arg(long, value_enum, default_value_t = Mode::DimL)]
    mode: Mode,
    /// Override α, the weight of the global MI term.
    #[arg(long)]
    alpha: Option<f64>,
    /// Override β, the weight of the local MI term.
    #[arg(long)]
    beta: Option<f64>,
    /// Override γ, the weight of the prior-matching term.
    #[arg(long)]
    gamma: Option<f64>,
    /// Mutual-information estimator.
    #[arg(long, value_enum, default_value_t = Estimator::Jsd)]
    estimator: Estimator,
    /// Critic embedding width U (official 2048; 512 trains about 7× faster on CPU).
    #[arg(long, default_value_t = 2048)]
    critic_width: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Seed for weights, data order, augmentation and prior samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random horizontal flips.
    #[arg(long)]
    flip: bool,
    /// Random crops after padding each side by this many pixels.
    #[arg(long, default_value_t = 0)]
    crop_padding: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    threads: Option<usize>,
    /// Continue the run saved in this checkpoint directory (its settings are used).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Compute the global vector from a copy of each image with a random PIXELS×PIXELS square
    /// blanked (mid-grey), while the local features still see the whole image: the DIM paper's
    /// occlusion, a harder local MI task. 0 = off.
    #[arg(long, value_name = "PIXELS", default_value_t = 0)]
    occlusion_size: usize,
    /// Score N more global vectors, from a 3×3 conv over the local map and average pooling,
    /// against every location besides Y, averaging the local losses: the DIM paper's multiple
    /// globals. A training aid outside the exported encoder. 0 = only Y.
    #[arg(long, value_name = "N", default_value_t = 0)]
    extra_globals: usize,
    /// Use only the first N examples (for quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Keep tensors in the default NCHW memory order instead of channels-last (NHWC).
    #[arg(long)]
    no_channels_last: bool,
    /// Where an image folder's decoded images are kept after the first epoch, so later epochs
    /// (and a resumed run, with `file`) do not decode them again: auto (memory when they take
    /// at most a quarter of the available memory, else a file in --out), memory, file or off.
    #[arg(long, value_enum, default_value_t = CachePolicy::Auto)]
    decoded_cache: CachePolicy,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn settings_from(args: &Args) -> anyhow::Result<TrainSettings> {
    if let Some(dir) = &args.resume {
        let mut settings =
            trainer::resume_settings(dir).with_context(|| format!("cannot resume from {}", dir.display()))?;
        if let Some(epochs) = args.epochs {
            settings.epochs = epochs;
        }
        if let Some(data) = &args.data {
            settings.data = data.clone();
        }
        return Ok(settings);
    }
    let Some(data) = &args.data else { bail!("--data is required") };
    let mut weights = args.mode.weights();
    weights.alpha = args.alpha.unwrap_or(weights.alpha);
    weights.beta = args.beta.unwrap_or(weights.beta);
    weights.gamma = args.gamma.unwrap_or(weights.gamma);
    let format = args.format.to_possible_value().expect("every format has a name");
    Ok(TrainSettings {
        format: format.get_name().to_string(),
        preset: args.preset,
        channels: args.channels,
        resize: args.resize,
        background: args.background,
        epochs: args.epochs.unwrap_or(10),
        batch_size: args.batch,
        mode: args.mode,
        weights,
        estimator: args.estimator,
        critic_width: args.critic_width,
        lr: args.lr,
        seed: args.seed,
        flip: args.flip,
        crop_padding: args.crop_padding,
        limit: args.limit,
        occlusion_size: args.occlusion_size,
        extra_globals: args.extra_globals,
        ..TrainSettings::new(data.clone())
    })
}

fn run(args: &Args) -> anyhow::Result<RunEnd> {
    let settings = settings_from(args)?;
    settings.validate()?;
    let out_dir = match (&args.out, &args.resume) {
        (Some(out), _) => out.clone(),
        (None, Some(resume)) => resume.clone(),
        (None, None) => bail!("--out is required"),
    };
    let device = args.device.resolve()?;
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads as i32);
    }
    let dataset = trainer::open_training_data(&settings)?;
    eprintln!("data: {}", dataset.describe());
    eprintln!(
        "model: {} ({} channel(s)), {:?} α {} β {} γ {}, {} estimator, critic width {}, device {:?}",
        settings.preset,
        settings.channels,
        settings.mode,
        settings.weights.alpha,
        settings.weights.beta,
        settings.weights.gamma,
        settings.estimator.name(),
        settings.critic_width,
        device
    );
    if settings.levers() != Levers::default() {
        eprintln!(
            "levers: occlusion {} px, {} extra global vector(s)",
            settings.occlusion_size, settings.extra_globals
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let handler_flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C means "now": the last complete checkpoint stays on disk.
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted: finishing the current step and saving a checkpoint (Ctrl-C again to quit now)"
        );
    })
    .context("cannot install the Ctrl-C handler")?;

    let options = RunOptions {
        out_dir: out_dir.clone(),
        device,
        stop,
        progress: !args.quiet,
        channels_last: !args.no_channels_last,
        decoded_cache: args.decoded_cache,
    };
    let outcome = trainer::train(&settings, dataset, args.resume.as_deref(), &options)?;
    for record in &outcome.epochs {
        eprintln!(
            "epoch {}: loss {:.4}, MI {:.4} nats, {:.0} images/s, {:.1} s",
            record.epoch, record.loss, record.mi_estimate, record.images_per_second, record.seconds
        );
    }
    if !outcome.skipped.is_empty() {
        eprintln!("skipped {} unreadable example(s):", outcome.skipped.len());
        for (index, reason) in &outcome.skipped {
            eprintln!("  #{index}: {reason}");
        }
    }
    match outcome.end {
        RunEnd::Completed => eprintln!("checkpoint: {}", out_dir.display()),
        RunEnd::Interrupted => {
            eprintln!("interrupted; resume with: dim-train --resume {}", out_dir.display())
        }
    }
    Ok(outcome.end)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !dim_train::heap::keep_freed_tensor_memory() {
        eprintln!("warning: glibc refused the heap settings; running on, with more page faults");
    }
    match run(&args) {
        Ok(RunEnd::Completed) => ExitCode::SUCCESS,
        Ok(RunEnd::Interrupted) => ExitCode::from(130),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
