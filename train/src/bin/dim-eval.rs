//! `dim-eval`: scores frozen encoders with probes (linear, the paper's MLP, k-NN) on each tap
//! against raw-pixel and random-encoder baselines, measures nearest-neighbour retrieval and the
//! DIM paper's other measures (MS-SSIM of reconstructions, MINE, NDM) the same way, and trains
//! the supervised baseline.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dim_models::preprocess::{Background, ResizePolicy};
use dim_models::{EncoderConfig, Preset};
use dim_train::cli::{DeviceArg, FormatArg};
use dim_train::eval::features::Representation;
use dim_train::eval::harness::{Baseline, EvalSource, Progress, Sampling, SplitSummary};
use dim_train::eval::measures::mine::{self, MineOptions};
use dim_train::eval::measures::ms_ssim::{self, MsSsimOptions};
use dim_train::eval::measures::ndm::{self, NdmOptions};
use dim_train::eval::measures::{
    MeasureError, MeasureRun, MeasureSchedule, MeasureScore, MeasureSettings, TapData, run_measure,
};
use dim_train::eval::probes::knn::{KnnOptions, Vote};
use dim_train::eval::probes::mlp::{MlpProtocol, ScheduleOverrides};
use dim_train::eval::probes::{ProbeKind, TrainingSchedule, linear};
use dim_train::eval::probing::{EvalSettings, evaluate};
use dim_train::eval::retrieval::{RetrievalSettings, evaluate_retrieval};
use dim_train::eval::supervised::{SupervisedJob, SupervisedOptions, run_supervised_job};
use dim_vectors::distance::Metric;
use dim_vectors::post_process::{DEFAULT_WHITEN_EPS, PcaSpec};
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::Device;

/// Evaluate Deep InfoMax encoders with probes, and train the supervised baseline.
///
/// Without a subcommand, runs `probe`. Example:
///   dim-eval --checkpoint runs/fmnist --data /usr/share/datasets/fashion-mnist --out results.json
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about,
    after_long_help = PROBE_NOTES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    probe: ProbeArgs,
}

// Parsed once per run, so the size gap between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Train probes on a checkpoint's frozen features and on the baselines; print a table and
    /// write JSON (the default).
    #[command(after_long_help = PROBE_NOTES)]
    Probe(ProbeArgs),
    /// Measure nearest-neighbour retrieval: every test image queries all the others
    /// (precision@k micro and macro, mAP@k, k-NN accuracy) for each tap of the checkpoint and of
    /// the baselines, as extracted and after PCA whitening fitted on the train split.
    #[command(after_long_help = RETRIEVAL_NOTES)]
    Retrieval(RetrievalArgs),
    /// Train a decoder on a tap's frozen features to reconstruct the input, and score held-out
    /// reconstructions by MS-SSIM (and single-scale SSIM), for the checkpoint and the baselines.
    #[command(after_long_help = MS_SSIM_NOTES)]
    MsSsim(MsSsimArgs),
    /// Estimate I(X; Y) between images and a frozen tap with MINE: a Donsker-Varadhan critic
    /// trained after the fact, reporting its bound on held-out pairs.
    #[command(after_long_help = MINE_NOTES)]
    Mine(MineArgs),
    /// Measure how dependent a tap's dimensions are (NDM): a discriminator trained to tell the
    /// features from the same features with each dimension shuffled across the batch, reporting
    /// its Donsker-Varadhan estimate of the total correlation on held-out data.
    #[command(after_long_help = NDM_NOTES)]
    Ndm(NdmArgs),
    /// Train the same encoder end to end with labels (linear classifier on Y, cross-entropy,
    /// Adam betas 0.5/0.999 as in DIM runs) and write a checkpoint that `probe` reads.
    TrainSupervised(SupervisedArgs),
}

/// Notes shown after the probe options in `--help`.
const PROBE_NOTES: &str = "\
Notes:
  The MLP probe follows a named --protocol:
    fast   Linear-200, BatchNorm, ReLU, Dropout 0.1, Linear on standardised features; Adam lr 1e-3,
           betas 0.9/0.999, x0.1 at epochs 10 and 15, batch 128, 20 epochs (minutes on 2 CPU cores
           for 60,000 x 4,096 features).
    paper  the official DIM code's classifier: Linear-200, Dropout 0.1, BatchNorm, ReLU, Linear
           (PyTorch's default init) on the encoder's raw activations; Adam lr 1e-4, betas 0.5/0.999,
           x0.1 at epochs 50 and 100, batch 64, 1000 epochs (hours on a CPU; use a GPU).
  --mlp-epochs, --mlp-lr, --mlp-lr-drops and --probe-batch replace the protocol's values; the JSON
  records the protocol, every setting used and each one changed from the protocol.
  The linear and k-NN probes read features standardised with the train split's mean and std; k-NN
  then uses cosine similarity. Both splits are held in memory as f32 (60,000 32x32 grey images take
  250 MB, their conv features 1 GB).";

/// Notes shown after the retrieval options in `--help`.
const RETRIEVAL_NOTES: &str = "\
Examples:
  dim-eval retrieval --checkpoint runs/fmnist --data /usr/share/datasets/fashion-mnist \\
      --supervised runs/supervised --out retrieval.json

Notes:
  An existing dim-embed output is scored by `dim-search retrieval --embeddings DIR`, with the
  same measures.
  The searched split is the test split (or --test-data); the PCA is fitted on up to --limit-fit
  train images, or on the searched images when the data has no separate train split. A tap
  narrower than --pca keeps all its directions. Scores are those of `dim-search retrieval`: the
  query is excluded from its own neighbours, and ties rank the lower row first.";

/// Notes shown after the ms-ssim options in `--help`.
const MS_SSIM_NOTES: &str = "\
Example:
  dim-eval ms-ssim --checkpoint runs/fmnist --data /usr/share/datasets/fashion-mnist --tap y,fc \\
      --steps 2000 --out ms-ssim.json

Notes:
  The decoder is the official DIM evaluation's (Linear to 512x4x4, transposed convs to the input
  size, tanh), trained with Adam (betas 0.5/0.999) on the mean squared error; --width narrows it
  for CPU runs. The official run trains for 150 epochs at batch 64 (lr x0.1 at 50 and 100); the
  step budget here is yours to set, and the JSON records it. Raw pixels are an upper reference:
  the decoder only has to learn the identity.";

/// Notes shown after the mine options in `--help`.
const MINE_NOTES: &str = "\
Example:
  dim-eval mine --checkpoint runs/fmnist --data /usr/share/datasets/fashion-mnist --tap y \\
      --steps 2000 --out mine.json

Notes:
  The critic is T(x, y) = <phi(x), psi(y)> / sqrt(units): phi a fresh encoder of the checkpoint's
  preset plus a linear layer, psi an MLP. It is trained on the train split (every other image of a
  batch serves as a marginal sample) and the bound is reported on the test split over every pair
  of distinct test images. Raw pixels have no finite I(X; X) and are not a baseline here.";

/// Notes shown after the ndm options in `--help`.
const NDM_NOTES: &str = "\
Example:
  dim-eval ndm --checkpoint runs/fmnist --data /usr/share/datasets/fashion-mnist --tap y \\
      --steps 1000 --out ndm.json

Notes:
  The discriminator is the official one (Linear-1000, ReLU, Linear-200, ReLU, Linear-1), trained on
  the KL f-divergence objective as the official code does; the JSON reports its DV estimate (the
  NDM) and its KL estimate on the test split. 0 means independent factors. The official run uses
  batches of 10,000 for 1,000 epochs; the defaults here are CPU-sized.";

/// The checkpoint and the data every evaluation reads. The help texts are the measures'; `probe`
/// and `retrieval` give their own.
#[derive(Debug, Args)]
struct SourceArgs {
    /// Checkpoint directory of the DIM encoder to measure.
    #[arg(long, required = true)]
    checkpoint: Option<PathBuf>,
    /// Dataset with train and test splits (IDX or CIFAR directory, or a folder of class
    /// subfolders with --test-data).
    #[arg(long, required = true)]
    data: Option<PathBuf>,
    /// Separate held-out dataset, for sources without a test split.
    #[arg(long)]
    test_data: Option<PathBuf>,
    #[command(flatten)]
    format: FormatArg,
}

impl SourceArgs {
    fn source(self) -> anyhow::Result<EvalSource> {
        Ok(EvalSource {
            checkpoint: self.checkpoint.context("--checkpoint is required")?,
            data: self.data.context("--data is required")?,
            test_data: self.test_data,
            format: self.format.format,
        })
    }
}

/// How every evaluation samples the test split and runs the encoders. The help texts are the
/// measures'; `probe` and `retrieval` give their own where they differ.
#[derive(Debug, Args)]
struct SamplingArgs {
    /// Use a seeded random subset of this many test examples.
    #[arg(long)]
    limit_test: Option<usize>,
    /// Seed for subsets, the random encoder and the measure's network.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU threads for libtorch and decoding (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    device: DeviceArg,
    /// Images per encoder pass during feature extraction.
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

impl SamplingArgs {
    /// Sizes the thread pools and resolves the device.
    fn start(&self) -> anyhow::Result<Device> {
        set_threads(self.threads)?;
        Ok(self.device.resolve()?)
    }

    fn sampling(&self) -> Sampling {
        Sampling { limit_test: self.limit_test, seed: self.seed, batch_size: self.batch }
    }
}

/// What every measure reads and which models it scores.
#[derive(Debug, Args)]
struct MeasureArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Encoder taps to measure, comma-separated (conv is the last conv map flattened).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "y")]
    tap: Vec<Representation>,
    /// Checkpoint of a supervised encoder (`dim-eval train-supervised`) measured as a baseline.
    #[arg(long)]
    supervised: Option<PathBuf>,
    /// Use a seeded random subset of this many training examples.
    #[arg(long)]
    limit_train: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

impl MeasureArgs {
    fn settings(self, baselines: Vec<Baseline>) -> anyhow::Result<MeasureSettings> {
        Ok(MeasureSettings {
            source: self.source.source()?,
            taps: self.tap,
            baselines,
            supervised: self.supervised,
            limit_train: self.limit_train,
            sampling: self.sampling.sampling(),
        })
    }
}

/// MS-SSIM run settings.
#[derive(Debug, Args)]
struct MsSsimArgs {
    #[command(flatten)]
    common: MeasureArgs,
    /// Baselines, comma-separated: raw (pixels) and random (untrained encoder, seeded). Give
    /// `--baselines` with no value for none.
    #[arg(long, value_enum, value_delimiter = ',', num_args = 0.., default_value = "raw,random")]
    baselines: Vec<Baseline>,
    /// Decoder optimiser steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Images per decoder step (official: 64).
    #[arg(long, default_value_t = 64)]
    train_batch: usize,
    /// Decoder Adam learning rate (official: 1e-4).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Channels of the decoder's 4x4 starting map (official: 512).
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// JSON report path (written atomically).
    #[arg(long, default_value = "ms-ssim.json")]
    out: PathBuf,
}

/// MINE run settings.
#[derive(Debug, Args)]
struct MineArgs {
    #[command(flatten)]
    common: MeasureArgs,
    /// Baselines, comma-separated: random (untrained encoder, seeded). Give `--baselines` with
    /// no value for none.
    #[arg(long, value_enum, value_delimiter = ',', num_args = 0.., default_value = "random")]
    baselines: Vec<Baseline>,
    /// Critic optimiser steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Pairs per critic step (each batch also gives batch x (batch - 1) marginal pairs).
    #[arg(long, default_value_t = 128)]
    train_batch: usize,
    /// Critic Adam learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Width of the critic's MLP and of its embeddings.
    #[arg(long, default_value_t = 256)]
    units: usize,
    /// JSON report path (written atomically).
    #[arg(long, default_value = "mine.json")]
    out: PathBuf,
}

/// NDM run settings.
#[derive(Debug, Args)]
struct NdmArgs {
    #[command(flatten)]
    common: MeasureArgs,
    /// Baselines, comma-separated: raw (pixels) and random (untrained encoder, seeded). Give
    /// `--baselines` with no value for none.
    #[arg(long, value_enum, value_delimiter = ',', num_args = 0.., default_value = "random")]
    baselines: Vec<Baseline>,
    /// Discriminator optimiser steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Feature rows per discriminator step, shuffled against themselves (official: 10000).
    #[arg(long, default_value_t = 1000)]
    train_batch: usize,
    /// Discriminator Adam learning rate (official: 1e-4).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// JSON report path (written atomically).
    #[arg(long, default_value = "ndm.json")]
    out: PathBuf,
}

/// Retrieval run settings.
#[derive(Debug, Args)]
#[command(
    mut_arg("checkpoint", |arg| arg.help("Checkpoint directory of the DIM encoder to score")),
    mut_arg("data", |arg| {
        arg.help("Labelled dataset (IDX or CIFAR directory, or a folder of class subfolders)")
    }),
    mut_arg("test_data", |arg| arg.help("Separate dataset to search, for sources without a test split")),
    mut_arg("limit_test", |arg| arg.help("Use a seeded random subset of this many searched images")),
    mut_arg("seed", |arg| arg.help("Seed for subsets and the random encoder")),
    mut_arg("threads", |arg| arg.help("CPU threads for libtorch, decoding and search (default: all cores)")),
)]
struct RetrievalArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Encoder taps to score, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "conv,fc,y")]
    taps: Vec<Representation>,
    /// Baselines, comma-separated: raw (pixels) and random (untrained encoder, seeded). Give
    /// `--baselines` with no value for none.
    #[arg(long, value_enum, value_delimiter = ',', num_args = 0.., default_value = "raw,random")]
    baselines: Vec<Baseline>,
    /// Checkpoint of a supervised encoder (`dim-eval train-supervised`) scored as a baseline.
    #[arg(long)]
    supervised: Option<PathBuf>,
    /// Neighbours per query.
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// cosine or l2.
    #[arg(long, default_value = "cosine")]
    metric: Metric,
    /// Post-processing scored beside the raw features: centring + PCA to D dimensions (0: none).
    #[arg(long, value_name = "D", default_value_t = 256)]
    pca: usize,
    /// Keep the PCA's variances (no whitening).
    #[arg(long)]
    no_whiten: bool,
    /// Train images the PCA is fitted on (a seeded subset).
    #[arg(long, default_value_t = 10_000)]
    limit_fit: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// JSON report path (written atomically).
    #[arg(long, default_value = "retrieval.json")]
    out: PathBuf,
}

/// Probe run settings.
#[derive(Debug, Args)]
#[command(
    mut_arg("checkpoint", |arg| arg.help("Checkpoint directory (config.json + weights.safetensors)")),
    mut_arg("data", |arg| {
        arg.help("Labelled dataset with train and test splits (IDX, CIFAR or STL-10 binary directory)")
    }),
    mut_arg("test_data", |arg| {
        arg.help("Separate test set, for sources without a test split (image folders)")
    }),
    mut_arg("seed", |arg| arg.help("Seed for subsets, the random encoder and the probes")),
)]
struct ProbeArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Probes to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "linear,mlp,knn")]
    probes: Vec<ProbeKind>,
    /// Encoder taps to probe, comma-separated (conv is the last conv map flattened).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "conv,fc,y")]
    taps: Vec<Representation>,
    /// Baselines, comma-separated: raw (pixels) and random (untrained encoder, seeded). Give
    /// `--baselines` with no value for none.
    #[arg(long, value_enum, value_delimiter = ',', num_args = 0.., default_value = "raw,random")]
    baselines: Vec<Baseline>,
    /// JSON report path (written atomically).
    #[arg(long, default_value = "results.json")]
    out: PathBuf,
    /// Use a seeded random subset of this many training examples.
    #[arg(long)]
    limit_train: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Linear probe epochs.
    #[arg(long, default_value_t = linear::default_schedule().epochs)]
    linear_epochs: usize,
    /// Linear probe Adam learning rate.
    #[arg(long, default_value_t = linear::default_schedule().learning_rate)]
    linear_lr: f64,
    /// Linear probe weight decay (L2).
    #[arg(long, default_value_t = 0.0)]
    linear_weight_decay: f64,
    /// Linear probe epochs at which the learning rate drops ×0.1.
    #[arg(long, value_delimiter = ',', default_value = "20")]
    linear_lr_drops: Vec<usize>,
    /// MLP probe protocol: fast (a shortened schedule) or paper (the official DIM code's
    /// classifier and optimiser settings); see the notes below.
    #[arg(long, value_enum, default_value_t = MlpProtocol::Fast)]
    protocol: MlpProtocol,
    /// MLP probe epochs (default: the protocol's; fast 20, paper 1000).
    #[arg(long)]
    mlp_epochs: Option<usize>,
    /// MLP probe Adam learning rate (default: the protocol's; fast 1e-3, paper 1e-4).
    #[arg(long)]
    mlp_lr: Option<f64>,
    /// MLP probe epochs at which the learning rate drops ×0.1 (default: the protocol's; fast
    /// 10,15, paper 50,100).
    #[arg(long, value_delimiter = ',')]
    mlp_lr_drops: Option<Vec<usize>>,
    /// Minibatch size of the linear and MLP probes (default: 128 for the linear probe, the
    /// protocol's for the MLP: fast 128, paper 64).
    #[arg(long)]
    probe_batch: Option<usize>,
    /// Neighbours consulted by the k-NN probe.
    #[arg(long, default_value_t = 20)]
    knn_k: usize,
    /// How the k-NN neighbours vote.
    #[arg(long, value_enum, default_value_t = Vote::Majority)]
    knn_vote: Vote,
}

/// Supervised baseline settings.
#[derive(Debug, Args)]
struct SupervisedArgs {
    /// Labelled training data (IDX or CIFAR directory or file, or a folder of class subfolders).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    format: FormatArg,
    /// Encoder architecture (basic32x32, basic64x64, alex64x64).
    #[arg(long, default_value = "basic32x32")]
    preset: Preset,
    /// Input channels: 1 (grey) or 3 (RGB).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// How images of another size are fitted to the input: pad or stretch.
    #[arg(long, default_value = "pad")]
    resize: ResizePolicy,
    /// What transparent pixels are composited over: white, black or ignore (drop alpha).
    #[arg(long, default_value = "white")]
    background: Background,
    /// Passes over the training split (match the DIM run's for a like-for-like comparison).
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Adam learning rate (DIM's official value).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Seed for weights and data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint directory to write; must not already hold a checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// CPU threads for libtorch and decoding (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    device: DeviceArg,
}

fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(threads) = threads {
        anyhow::ensure!(threads > 0, "--threads must be at least 1");
        tch::set_num_threads(threads as i32);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("cannot size the thread pool")?;
    }
    Ok(())
}

/// The linear probe's minibatch size unless --probe-batch is given.
const LINEAR_PROBE_BATCH: usize = 128;

fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    let device = args.sampling.start()?;
    let seed = args.sampling.seed;
    let schedule = |epochs, batch_size, learning_rate, weight_decay, lr_drop_epochs| TrainingSchedule {
        epochs,
        batch_size,
        learning_rate,
        weight_decay,
        lr_drop_epochs,
        seed,
    };
    let settings = EvalSettings {
        source: args.source.source()?,
        probes: args.probes,
        taps: args.taps,
        baselines: args.baselines,
        limit_train: args.limit_train,
        sampling: args.sampling.sampling(),
        linear: schedule(
            args.linear_epochs,
            args.probe_batch.unwrap_or(LINEAR_PROBE_BATCH),
            args.linear_lr,
            args.linear_weight_decay,
            args.linear_lr_drops,
        ),
        mlp: args.protocol.recipe(seed).with_overrides(ScheduleOverrides {
            epochs: args.mlp_epochs,
            batch_size: args.probe_batch,
            learning_rate: args.mlp_lr,
            lr_drop_epochs: args.mlp_lr_drops,
        }),
        knn: KnnOptions { k: args.knn_k, vote: args.knn_vote, ..KnnOptions::default() },
    };
    let report = evaluate(&settings, device, Progress { visible: true })?;
    print_skipped("train", &report.train);
    print_skipped("test", &report.test);
    print!("{}", report.table());
    report.write_json(&args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn retrieval(args: RetrievalArgs) -> anyhow::Result<()> {
    set_threads(args.sampling.threads)?;
    let post_process = (args.pca > 0).then_some(PcaSpec {
        dims: args.pca,
        whiten: !args.no_whiten,
        eps: DEFAULT_WHITEN_EPS,
    });
    anyhow::ensure!(args.k > 0, "-k must be at least 1");
    let settings = RetrievalSettings {
        source: args.source.source()?,
        taps: args.taps,
        baselines: args.baselines,
        supervised: args.supervised,
        k: args.k,
        metric: args.metric,
        post_process,
        limit_fit: Some(args.limit_fit),
        sampling: args.sampling.sampling(),
    };
    let report = evaluate_retrieval(&settings, args.sampling.device.resolve()?, Progress { visible: true })?;
    print_skipped("searched", &report.searched);
    print!("{}", report.table());
    report.write_json(&args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Lists the examples of `split` that could not be read, if any.
fn print_skipped(split: &str, summary: &SplitSummary) {
    if !summary.skipped.is_empty() {
        eprintln!("skipped {} unreadable {split} examples:", summary.skipped.len());
        for skipped in &summary.skipped {
            eprintln!("  #{}: {}", skipped.index, skipped.reason);
        }
    }
}

/// The schedule of a measure's own network from its command line, seeded by `seed`.
fn measure_schedule(steps: usize, batch_size: usize, learning_rate: f64, seed: u64) -> MeasureSchedule {
    MeasureSchedule { steps, batch_size, learning_rate, seed }
}

/// Runs one measure (`label` in errors) on the checkpoint and data of `common`, with the options
/// `options` makes from the seed, prints its table and skipped examples and writes its JSON.
fn measure<O: Clone + Serialize, S: MeasureScore>(
    common: MeasureArgs,
    baselines: Vec<Baseline>,
    out: &Path,
    label: &str,
    options: impl FnOnce(u64) -> O,
    run: impl FnOnce(&O) -> MeasureRun<'_, O>,
    score: impl Fn(&TapData<'_>, &O, Device, &ProgressBar) -> Result<S, MeasureError>,
) -> anyhow::Result<()> {
    let device = common.sampling.start()?;
    let options = options(common.sampling.seed);
    let settings = common.settings(baselines)?;
    let report = run_measure(&settings, run(&options), device, Progress { visible: true }, |data, bar| {
        score(data, &options, device, bar)
    })
    .with_context(|| format!("cannot measure {label} of {}", settings.source.checkpoint.display()))?;
    print_skipped("train", &report.train);
    print_skipped("test", &report.test);
    print!("{}", report.table());
    report.write_json(out)?;
    println!("wrote {}", out.display());
    Ok(())
}

fn measure_ms_ssim(args: MsSsimArgs) -> anyhow::Result<()> {
    let options = |seed| MsSsimOptions {
        schedule: measure_schedule(args.steps, args.train_batch, args.lr, seed),
        width: args.width,
    };
    measure(
        args.common,
        args.baselines,
        &args.out,
        "MS-SSIM",
        options,
        |options| MeasureRun { name: "ms-ssim", options, method: ms_ssim::METHOD, raw_not_applicable: None },
        ms_ssim::reconstruction_score,
    )
}

fn measure_mine(args: MineArgs) -> anyhow::Result<()> {
    let options = |seed| MineOptions {
        schedule: measure_schedule(args.steps, args.train_batch, args.lr, seed),
        units: args.units,
    };
    measure(
        args.common,
        args.baselines,
        &args.out,
        "MINE",
        options,
        |options| MeasureRun {
            name: "mine",
            options,
            method: mine::METHOD,
            raw_not_applicable: Some("I(X; X) of continuous pixels is infinite; use --baselines random"),
        },
        mine::image_mine_score,
    )
}

fn measure_ndm(args: NdmArgs) -> anyhow::Result<()> {
    let options =
        |seed| NdmOptions { schedule: measure_schedule(args.steps, args.train_batch, args.lr, seed) };
    measure(
        args.common,
        args.baselines,
        &args.out,
        "NDM",
        options,
        |options| MeasureRun { name: "ndm", options, method: ndm::METHOD, raw_not_applicable: None },
        ndm::feature_ndm_score,
    )
}

fn train_supervised(args: SupervisedArgs) -> anyhow::Result<()> {
    set_threads(args.threads)?;
    let job = SupervisedJob {
        data: args.data,
        format: args.format.format,
        encoder: EncoderConfig::new(args.preset, args.channels)?,
        resize: args.resize,
        background: args.background,
        options: SupervisedOptions {
            epochs: args.epochs,
            batch_size: args.batch,
            learning_rate: args.lr,
            seed: args.seed,
        },
        out: args.out,
    };
    let report = run_supervised_job(&job, args.device.resolve()?, Progress { visible: true })?;
    if !report.skipped.is_empty() {
        eprintln!("skipped {} unreadable training examples:", report.skipped.len());
        for (index, reason) in &report.skipped {
            eprintln!("  #{index}: {reason}");
        }
    }
    if let Some(accuracy) = report.test_accuracy {
        println!("test accuracy of encoder + classifier: {:.2}%", 100.0 * accuracy);
    }
    println!("wrote checkpoint {}", job.out.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !dim_train::fit::heap::keep_freed_tensor_memory() {
        eprintln!("warning: glibc refused the heap settings; running on, with more page faults");
    }
    let result = match cli.command {
        Some(Command::Probe(args)) => probe(args),
        Some(Command::Retrieval(args)) => retrieval(args),
        Some(Command::MsSsim(args)) => measure_ms_ssim(args),
        Some(Command::Mine(args)) => measure_mine(args),
        Some(Command::Ndm(args)) => measure_ndm(args),
        Some(Command::TrainSupervised(args)) => train_supervised(args),
        None => probe(cli.probe),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
