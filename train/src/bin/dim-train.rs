//! `dim-train`: learns a Deep InfoMax encoder on a folder of images, IDX or CIFAR files and
//! writes checkpoints (weights, optimiser state, config and a per-epoch log) to a directory.

use anyhow::{Context, bail};
use clap::Parser;
use dim_models::Preset;
use dim_models::preprocess::{Background, ResizePolicy};
use dim_train::cli::{DeviceArg, FormatArg};
use dim_train::data::CachePolicy;
use dim_train::data::views::{ViewAugmentation, ViewMode};
use dim_train::fit::retrieval_check::RetrievalCheck;
use dim_train::fit::settings::TrainSettings;
use dim_train::fit::trainer::{self, Resume, RunEnd, RunOptions};
use dim_train::model::estimators::Estimator;
use dim_train::model::objective::{GlobalToGlobal, Levers, Mode};
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
    #[command(flatten)]
    format: FormatArg,
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
    #[command(flatten)]
    device: DeviceArg,
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
    /// Which images the MI terms see: off (as loaded, the DIM paper), same (one augmented view
    /// for both sides) or cross (two augmented views, each view's global vector scored against
    /// the other's local features: the DIM authors' follow-up, AMDIM). Views are made on the
    /// training device.
    #[arg(long, value_enum, default_value_t = ViewMode::Off)]
    views: ViewMode,
    /// Smallest random-crop area of a view, as a share of the image.
    #[arg(long, value_name = "SHARE", default_value_t = ViewAugmentation::default().min_area)]
    view_min_area: f64,
    /// Largest random-crop area of a view, as a share of the image.
    #[arg(long, value_name = "SHARE", default_value_t = ViewAugmentation::default().max_area)]
    view_max_area: f64,
    /// Smallest crop aspect ratio (width / height) of a view.
    #[arg(long, value_name = "RATIO", default_value_t = ViewAugmentation::default().min_aspect)]
    view_min_aspect: f64,
    /// Largest crop aspect ratio (width / height) of a view.
    #[arg(long, value_name = "RATIO", default_value_t = ViewAugmentation::default().max_aspect)]
    view_max_aspect: f64,
    /// Probability that a view is mirrored left to right.
    #[arg(long, value_name = "P", default_value_t = ViewAugmentation::default().flip_probability)]
    view_flip_probability: f64,
    /// Brightness jitter of a view: factors in [1 − B, 1 + B].
    #[arg(long, value_name = "B", default_value_t = ViewAugmentation::default().brightness)]
    view_brightness: f64,
    /// Contrast jitter of a view: factors in [1 − C, 1 + C].
    #[arg(long, value_name = "C", default_value_t = ViewAugmentation::default().contrast)]
    view_contrast: f64,
    /// Saturation jitter of an RGB view: factors in [1 − S, 1 + S].
    #[arg(long, value_name = "S", default_value_t = ViewAugmentation::default().saturation)]
    view_saturation: f64,
    /// Probability that an RGB view is turned grey.
    #[arg(long, value_name = "P", default_value_t = ViewAugmentation::default().grey_probability)]
    view_grey_probability: f64,
    /// Weight of the global-to-global infoNCE term across the two views (needs --views cross;
    /// 0 = off).
    #[arg(long, value_name = "WEIGHT", default_value_t = 0.0)]
    global_to_global: f64,
    /// Temperature of the global-to-global term's cosine similarities.
    #[arg(long, value_name = "TAU", default_value_t = GlobalToGlobal::default().temperature)]
    global_to_global_temperature: f64,
    /// Soft-clip the critics' scores to C·tanh(s/C) before the estimator (AMDIM uses 10; 0 = off).
    #[arg(long, value_name = "C", default_value_t = 0.0)]
    score_clip: f64,
    /// Add this weight times the mean squared critic score to the loss (AMDIM uses about 1e-3;
    /// 0 = off).
    #[arg(long, value_name = "WEIGHT", default_value_t = 0.0)]
    score_penalty: f64,
    /// Every N epochs, embed a held-out labelled split (the data's test split, or
    /// --retrieval-data) and log its precision@10 by exact cosine search on the conv features
    /// (what dim-embed writes by default) in train_log.jsonl and the progress output. 0 = never.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retrieval_every: usize,
    /// Images of the held-out split searched (a seeded subset).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    retrieval_images: usize,
    /// A labelled folder of class folders to search instead of the data's test split (image
    /// folders have none).
    #[arg(long, value_name = "DIR")]
    retrieval_data: Option<PathBuf>,
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
    /// Decode the whole dataset once onto the training device (--device) and gather each batch
    /// there, flip and crop included, instead of copying every batch from the host: the same
    /// batches, for GPUs where the copy and the loader bound the step. Needs the decoded
    /// dataset to fit in the device's memory (4 bytes per pixel and channel). The decoded-image
    /// cache is then kept only when --decoded-cache file asks for it.
    #[arg(long)]
    data_on_device: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn settings_from(args: &Args, resume: Option<&Resume>) -> anyhow::Result<TrainSettings> {
    if let Some(resume) = resume {
        let mut settings = resume.settings().clone();
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
    Ok(TrainSettings {
        format: args.format.format,
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
        views: args.views,
        augmentation: ViewAugmentation {
            min_area: args.view_min_area,
            max_area: args.view_max_area,
            min_aspect: args.view_min_aspect,
            max_aspect: args.view_max_aspect,
            flip_probability: args.view_flip_probability,
            brightness: args.view_brightness,
            contrast: args.view_contrast,
            saturation: args.view_saturation,
            grey_probability: args.view_grey_probability,
        },
        global_to_global: GlobalToGlobal {
            weight: args.global_to_global,
            temperature: args.global_to_global_temperature,
        },
        score_clip: args.score_clip,
        score_penalty: args.score_penalty,
        ..TrainSettings::new(data.clone())
    })
}

fn run(args: &Args) -> anyhow::Result<RunEnd> {
    let resume = args
        .resume
        .as_deref()
        .map(|dir| Resume::read(dir).with_context(|| format!("cannot resume from {}", dir.display())))
        .transpose()?;
    let settings = settings_from(args, resume.as_ref())?;
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
            "levers: occlusion {} px, {} extra global vector(s), score clip {}, score penalty {}",
            settings.occlusion_size, settings.extra_globals, settings.score_clip, settings.score_penalty
        );
    }
    if settings.views != ViewMode::Off {
        let a = &settings.augmentation;
        eprintln!(
            "views: {} (crop area {}–{}, aspect {:.3}–{:.3}, flip {}, brightness ±{}, contrast ±{}{}), \
             global-to-global weight {} τ {}",
            settings.views.name(),
            a.min_area,
            a.max_area,
            a.min_aspect,
            a.max_aspect,
            a.flip_probability,
            a.brightness,
            a.contrast,
            if settings.channels == 3 {
                format!(", saturation ±{}, grey {}", a.saturation, a.grey_probability)
            } else {
                String::new()
            },
            settings.global_to_global.weight,
            settings.global_to_global.temperature
        );
    }

    let retrieval = if args.retrieval_every > 0 {
        let check = RetrievalCheck::open(
            &settings.data,
            args.retrieval_data.as_deref(),
            settings.format,
            dataset.input_spec(),
            &*dataset,
            args.retrieval_images,
            args.retrieval_every,
        )?;
        eprintln!(
            "retrieval check: precision@10 on {} held-out images every {} epoch(s)",
            check.len(),
            check.every()
        );
        Some(Arc::new(check))
    } else {
        None
    };
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
        data_on_device: args.data_on_device,
        retrieval,
    };
    let outcome = trainer::train(&settings, dataset, resume.as_ref(), &options)?;
    for record in &outcome.epochs {
        let stages =
            record.stage_seconds.map(|stages| format!(" ({})", stages.describe())).unwrap_or_default();
        eprintln!(
            "epoch {}: loss {:.4}, MI {:.4} nats, {:.0} images/s{stages}, {:.1} s",
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
    if !dim_train::fit::heap::keep_freed_tensor_memory() {
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
