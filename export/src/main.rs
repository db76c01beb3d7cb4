//! `dim-export`: writes a dim-train checkpoint's encoder as a standalone ONNX model.

use anyhow::Context;
use clap::Parser;
use dim_export::{EmbeddingSource, ExportOptions, export};
use std::path::PathBuf;
use std::process::ExitCode;

/// Export a DIM encoder checkpoint as an ONNX model (no libtorch needed).
///
/// The model takes `image` float32 [N, C, H, W] in [0, 1] and outputs `conv`, `fc`, `y` and the
/// L2-normalised `embedding`; its metadata carries everything dim-embed needs.
#[derive(Debug, Parser)]
#[command(name = "dim-export", version)]
struct Args {
    /// Checkpoint directory written by dim-train (config.json + weights.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Destination .onnx file (written atomically; never left half-written).
    #[arg(long)]
    out: PathBuf,
    /// Tap that the `embedding` output L2-normalises: conv, fc or y.
    #[arg(long, default_value = "conv")]
    embedding_source: EmbeddingSource,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let options = ExportOptions {
        checkpoint_dir: args.checkpoint,
        out: args.out,
        embedding_source: args.embedding_source,
    };
    let summary =
        export(&options).with_context(|| format!("cannot export {}", options.checkpoint_dir.display()))?;
    let metadata = &summary.metadata;
    println!(
        "wrote {} ({} bytes): {} with {} channel(s), embedding = L2-normalised {}, checkpoint sha256 {}",
        options.out.display(),
        summary.bytes,
        metadata.preset,
        metadata.input.channels,
        metadata.embedding_source,
        metadata.checkpoint_sha256
    );
    Ok(())
}
