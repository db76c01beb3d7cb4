//! Model-only throughput: runs the model on pre-made input tensors (no file reading or decoding),
//! the compute-bound ceiling that the embedding benchmark compares dim-embed against. By default
//! the model runs as dim-embed runs it, on the graph cut down to the `embedding` output; with
//! `whole` it runs the whole graph, as ONNX Runtime runs a model file when asked for one output.
//!
//! usage: model_throughput MODEL BATCH THREADS IMAGES [whole]

use dim_infer::embedder::{Embedder, EmbedderOptions};
use dim_infer::session::{self, SessionOptions};
use dim_models::onnx_metadata::{INPUT_NAME, OUTPUT_EMBEDDING};
use ort::session::{OutputSelector, RunOptions};
use ort::value::TensorRef;
use std::time::Instant;

/// One model run on `count` images' inputs.
type ModelRun = Box<dyn FnMut(&[f32], usize) -> anyhow::Result<()>>;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let whole = match args.get(5).map(String::as_str) {
        None => false,
        Some("whole") => true,
        Some(other) => anyhow::bail!("unknown mode `{other}` (known: whole)"),
    };
    anyhow::ensure!(
        args.len() == 5 || args.len() == 6,
        "usage: model_throughput MODEL BATCH THREADS IMAGES [whole]"
    );
    let (batch, threads, images): (usize, usize, usize) =
        (args[2].parse()?, args[3].parse()?, args[4].parse()?);
    anyhow::ensure!(batch > 0, "batch must be at least 1");
    let mut run: ModelRun;
    let per_image;
    if whole {
        let model = session::build_session(
            args[1].as_ref(),
            &SessionOptions { threads, ..SessionOptions::default() },
        )?;
        let spec = model.metadata.input;
        per_image = spec.len();
        let mut session = model.session;
        let options = RunOptions::new()?.with_outputs(OutputSelector::no_default().with(OUTPUT_EMBEDDING));
        run = Box::new(move |inputs, count| {
            let tensor = TensorRef::from_array_view(([count, spec.channels, spec.size, spec.size], inputs))?;
            session.run_with_options(ort::inputs![INPUT_NAME => tensor], &options)?;
            Ok(())
        });
    } else {
        let mut embedder = Embedder::try_new(EmbedderOptions {
            model: args[1].clone().into(),
            threads,
            ..EmbedderOptions::default()
        })?;
        per_image = embedder.input_spec().len();
        run = Box::new(move |inputs, _| {
            embedder.run_batch(inputs)?;
            Ok(())
        });
    }
    // Mid-grey with a ramp: real-looking values; the work does not depend on them.
    let inputs: Vec<f32> = (0..batch * per_image).map(|i| (i % 251) as f32 / 250.0).collect();
    run(&inputs, batch)?;
    let started = Instant::now();
    let mut done = 0;
    while done < images {
        let count = batch.min(images - done);
        run(&inputs[..count * per_image], count)?;
        done += count;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"images\": {done}, \"seconds\": {seconds:.4}, \"images_per_second\": {:.1}}}",
        done as f64 / seconds
    );
    Ok(())
}
