//! Writes a checkpoint directory with random encoder weights and BatchNorm statistics, named by
//! the parameter-name contract, so benchmarks can export a model of any preset without training:
//! `cargo run --release -p dim-export --example random_checkpoint -- --preset basic32x32 --out DIR`.

use anyhow::Context;
use clap::Parser;
use dim_models::atomic_file::write_bytes_atomically;
use dim_models::checkpoint::{CHECKPOINT_FORMAT_VERSION, CONFIG_FILE, CheckpointConfig, WEIGHTS_FILE};
use dim_models::parameters::encoder_parameters;
use dim_models::preprocess::ResizePolicy;
use dim_models::{EncoderConfig, Preset};
use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::{Dtype, tensor::TensorView};
use std::path::PathBuf;

/// Write a checkpoint with random encoder weights (for benchmarks).
#[derive(Debug, Parser)]
struct Args {
    /// Encoder preset.
    #[arg(long, default_value = "basic32x32")]
    preset: Preset,
    /// Input channels (1 or 3).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint directory to create.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let encoder = EncoderConfig::new(args.preset, args.channels)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    // PyTorch's default init bound for a layer's weight and bias is 1/√fan_in; BatchNorm gets
    // statistics near the identity so activations stay in a realistic range. Each layer's
    // weight precedes its bias in the contract, so the weight sets the bound for both.
    let mut bound = 1.0f32;
    for spec in encoder_parameters(&encoder) {
        let is_batch_norm = spec.name.contains(".bn.");
        let range = match spec.name.rsplit('.').next() {
            Some("running_var") => 0.5..1.5,
            Some("running_mean" | "bias") if is_batch_norm => -0.1..0.1,
            Some("weight") if is_batch_norm => 0.75..1.25,
            Some("weight") => {
                bound = 1.0 / (spec.shape[1..].iter().product::<usize>() as f32).sqrt();
                -bound..bound
            }
            _ => -bound..bound,
        };
        let len: usize = spec.shape.iter().product();
        let bytes = (0..len).flat_map(|_| rng.random_range(range.clone()).to_le_bytes()).collect();
        tensors.push((spec.name, spec.shape, bytes));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let weights = safetensors::serialize(views, None)?;
    write_bytes_atomically(&args.out.join(WEIGHTS_FILE), &weights)
        .with_context(|| format!("cannot write {}", args.out.display()))?;

    let config = CheckpointConfig {
        format_version: CHECKPOINT_FORMAT_VERSION,
        toolkit_version: dim_models::TOOLKIT_VERSION.into(),
        encoder,
        resize: ResizePolicy::Pad,
        background: dim_models::preprocess::Background::White,
        epoch: 0,
        step: 0,
        data_fingerprint: "random weights".into(),
        training: serde_json::json!({ "random_checkpoint_seed": args.seed }),
    };
    // The config goes last: a directory with a config always holds complete weights.
    write_bytes_atomically(&args.out.join(CONFIG_FILE), &serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("wrote {} with random {} weights", args.out.display(), args.preset);
    Ok(())
}
