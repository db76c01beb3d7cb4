//! Model-only throughput: runs the model on pre-made input tensors (no file reading or decoding),
//! the compute-bound ceiling that the embedding benchmark compares dim-embed against.
//!
//! usage: model_throughput MODEL BATCH THREADS IMAGES

use dim_infer::embedder::{Embedder, EmbedderOptions};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 5, "usage: model_throughput MODEL BATCH THREADS IMAGES");
    let (batch, threads, images): (usize, usize, usize) =
        (args[2].parse()?, args[3].parse()?, args[4].parse()?);
    anyhow::ensure!(batch > 0, "batch must be at least 1");
    let mut embedder = Embedder::try_new(EmbedderOptions {
        model: args[1].clone().into(),
        threads,
        ..EmbedderOptions::default()
    })?;
    let per_image = embedder.input_spec().len();
    // Mid-grey with a ramp: real-looking values; the work does not depend on them.
    let inputs: Vec<f32> = (0..batch * per_image).map(|i| (i % 251) as f32 / 250.0).collect();
    embedder.run_batch(&inputs)?;
    let started = Instant::now();
    let mut done = 0;
    while done < images {
        let count = batch.min(images - done);
        embedder.run_batch(&inputs[..count * per_image])?;
        done += count;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"images\": {done}, \"seconds\": {seconds:.4}, \"images_per_second\": {:.1}}}",
        done as f64 / seconds
    );
    Ok(())
}
