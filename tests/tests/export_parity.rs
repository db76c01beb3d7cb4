//! The exported ONNX graph reproduces the tch encoder: for every preset, a checkpoint written by
//! dim-train is exported by dim-export and run in ONNX Runtime, and every output (conv, fc, y,
//! embedding) matches `forward_taps(train = false)` on random inputs and on real image content.
//! The model also passes ONNX's own full checker, dim-infer reads back its metadata, and the
//! exporter reads exactly the encoder variables the trainer creates.

use dim_export::{EncoderCheckpoint, ExportOptions, export};
use dim_infer::embedder::{Embedder, EmbedderOptions};
use dim_models::checkpoint::{CHECKPOINT_FORMAT_VERSION, CheckpointConfig};
use dim_models::onnx_metadata::{INPUT_NAME, OUTPUT_CONV, OUTPUT_EMBEDDING, OUTPUT_FC, OUTPUT_Y};
use dim_models::parameters::ENCODER_PREFIX;
use dim_models::preprocess::{Background, InputSpec, ResizePolicy, image_to_input};
use dim_models::tap::Tap;
use dim_models::{EncoderConfig, Preset};
use dim_train::data::CachePolicy;
use dim_train::data::views::ViewMode;
use dim_train::fit::checkpoint::save_checkpoint;
use dim_train::fit::settings::TrainSettings;
use dim_train::fit::trainer::{self, RunEnd, RunOptions};
use dim_train::model::critics::LocalCritic;
use dim_train::model::encoder::Encoder;
use dim_train::model::objective::GlobalToGlobal;
use image::{DynamicImage, Rgb, RgbImage};
use ort::session::Session;
use ort::value::TensorRef;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tch::{Device, Kind, Tensor, nn};

/// Largest absolute difference accepted between ONNX Runtime and libtorch.
const TOLERANCE: f32 = 1e-4;

/// A trained-looking encoder: BatchNorm running statistics from a few train-mode passes and
/// non-trivial BatchNorm affine parameters, so that folding is really exercised.
fn encoder_with_statistics(config: EncoderConfig, seed: i64) -> (nn::VarStore, Encoder) {
    tch::manual_seed(seed);
    let store = nn::VarStore::new(Device::Cpu);
    let encoder = Encoder::new(&store.root(), config);
    // Critic tensors live in the same weights file; the exporter must ignore them.
    LocalCritic::new(&store.root(), config.tap_dims().local[0], config.tap_dims().y, 8);
    let size = config.input_size() as i64;
    tch::no_grad(|| {
        for _ in 0..4 {
            let images = Tensor::rand([6, config.in_channels as i64, size, size], (Kind::Float, Device::Cpu));
            encoder.forward_taps(&images, true);
        }
        for (name, mut variable) in store.variables() {
            if name.starts_with(ENCODER_PREFIX) && (name.ends_with("bn.weight") || name.ends_with("bn.bias"))
            {
                let perturbation = Tensor::rand_like(&variable) * 0.5 - 0.25;
                variable.copy_(&(&variable + perturbation));
            }
        }
    });
    (store, encoder)
}

fn write_checkpoint(dir: &Path, store: &nn::VarStore, config: EncoderConfig) {
    let checkpoint_config = CheckpointConfig {
        format_version: CHECKPOINT_FORMAT_VERSION,
        toolkit_version: dim_models::TOOLKIT_VERSION.into(),
        encoder: config,
        resize: ResizePolicy::Pad,
        background: dim_models::preprocess::Background::White,
        epoch: 1,
        step: 4,
        data_fingerprint: "generated".into(),
        training: serde_json::json!({"objective": "parity test"}),
    };
    save_checkpoint(dir, store, &[], &checkpoint_config, vec![]).unwrap();
}

/// Images with real structure (gradients, stripes, a disc, flat fields) and sizes other than
/// the model's, so the shared preprocessing (padding, resizing, grey conversion) is exercised.
fn generated_images(count: usize) -> Vec<DynamicImage> {
    (0..count)
        .map(|k| {
            let (width, height) = (24 + 9 * k as u32, 40 - 3 * k as u32);
            let image = RgbImage::from_fn(width, height, |x, y| {
                let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
                let disc = (fx - 0.5).powi(2) + (fy - 0.5).powi(2) < 0.09;
                let stripes = (x / (2 + k as u32)).is_multiple_of(2);
                match k % 3 {
                    0 => Rgb([(fx * 255.0) as u8, (fy * 255.0) as u8, if disc { 255 } else { 30 }]),
                    1 => Rgb([if stripes { 230 } else { 10 }, 128, ((fx + fy) * 127.0) as u8]),
                    _ => Rgb([if disc { 200 } else { 0 }, if disc { 40 } else { 255 }, (k * 40) as u8]),
                }
            });
            DynamicImage::ImageRgb8(image)
        })
        .collect()
}

fn tensor_values(tensor: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(tensor.flatten(0, -1).contiguous()).unwrap()
}

/// The reference outputs computed with libtorch, by output name.
fn reference_outputs(
    encoder: &Encoder,
    input: &[f32],
    shape: [usize; 4],
    source: &str,
) -> Vec<(&'static str, Vec<f32>)> {
    let images = Tensor::from_slice(input).view(shape.map(|d| d as i64));
    let taps = tch::no_grad(|| encoder.forward_taps(&images, false));
    let conv = taps.conv.flatten(1, -1);
    let source_tap = match source {
        OUTPUT_CONV => &conv,
        OUTPUT_FC => &taps.fc,
        _ => &taps.y,
    };
    let norm = source_tap.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
    let embedding = source_tap / norm;
    vec![
        (OUTPUT_CONV, tensor_values(&conv)),
        (OUTPUT_FC, tensor_values(&taps.fc)),
        (OUTPUT_Y, tensor_values(&taps.y)),
        (OUTPUT_EMBEDDING, tensor_values(&embedding)),
    ]
}

fn assert_outputs_match(
    session: &mut Session,
    encoder: &Encoder,
    input: &[f32],
    shape: [usize; 4],
    source: &str,
) {
    let expected = reference_outputs(encoder, input, shape, source);
    let outputs =
        session.run(ort::inputs![INPUT_NAME => TensorRef::from_array_view((shape, input)).unwrap()]).unwrap();
    for (name, reference) in expected {
        let (onnx_shape, values) = outputs[name].try_extract_tensor::<f32>().unwrap();
        assert_eq!(onnx_shape[0], shape[0] as i64, "{name}: batch dimension");
        assert_eq!(values.len(), reference.len(), "{name}: element count");
        let max_diff = values.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let scale = reference.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        assert!(
            max_diff <= TOLERANCE,
            "{name} at batch {}: max |onnx − torch| = {max_diff:e} (values up to {scale})",
            shape[0]
        );
        assert!(scale > 0.0, "{name} is all zeros: the comparison would prove nothing");
    }
}

/// The set-up environment's Python (`.dim-env/venv/bin/python`, set by `.cargo/config.toml`).
fn python() -> PathBuf {
    std::env::var_os("DIM_PYTHON")
        .map(PathBuf::from)
        .or_else(|| option_env!("DIM_PYTHON").map(PathBuf::from))
        .expect("DIM_PYTHON is set by .cargo/config.toml (run `cargo xtask setup`)")
}

fn assert_onnx_checker_passes(model: &Path) {
    let output = Command::new(python())
        .args(["-c", "import onnx, sys; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)"])
        .arg(model)
        .output()
        .expect("the configured Python runs");
    assert!(
        output.status.success(),
        "onnx.checker rejected {}: {}",
        model.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Memory order of the conv weights when the checkpoint is written.
#[derive(Clone, Copy, PartialEq)]
enum WeightLayout {
    Contiguous,
    /// NHWC, as dim-train keeps them by default for speed; the checkpoint must still hold the
    /// logical [out, in, k, k] order.
    ChannelsLast,
}

fn check_preset(preset: Preset, channels: usize, source: Tap, layout: WeightLayout, seed: i64) {
    let config = EncoderConfig::new(preset, channels).unwrap();
    let (store, encoder) = encoder_with_statistics(config, seed);
    if layout == WeightLayout::ChannelsLast {
        for (_, mut variable) in store.variables() {
            if variable.dim() == 4 {
                let reordered = variable.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                tch::no_grad(|| variable.set_data(&reordered));
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let checkpoint_dir = dir.path().join("checkpoint");
    write_checkpoint(&checkpoint_dir, &store, config);
    check_export_matches(&checkpoint_dir, &store, &encoder, source);
}

/// Exports the checkpoint at `checkpoint_dir`, which holds `store`'s variables, and checks the
/// model against `encoder` in ONNX Runtime at batch 1 and 7. Returns the directory holding the
/// exported `model.onnx`.
fn check_export_matches(
    checkpoint_dir: &Path,
    store: &nn::VarStore,
    encoder: &Encoder,
    source: Tap,
) -> tempfile::TempDir {
    let config = *encoder.config();
    let preset = config.preset;
    // The exporter reads exactly the encoder variables the trainer creates.
    let trainer_names: BTreeSet<String> =
        store.variables().into_keys().filter(|n| n.starts_with(&format!("{ENCODER_PREFIX}."))).collect();
    let exporter_names: BTreeSet<String> =
        EncoderCheckpoint::read(checkpoint_dir).unwrap().tensors.into_keys().collect();
    assert_eq!(trainer_names, exporter_names, "{preset}");

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    let options = ExportOptions {
        checkpoint_dir: checkpoint_dir.to_path_buf(),
        out: model.clone(),
        embedding_source: source,
        search_recipe: None,
    };
    let summary = export(&options).unwrap();
    assert_eq!(summary.metadata.embedding_source, source);
    assert_onnx_checker_passes(&model);

    let environment = dim_infer::runtime::ensure_initialised().unwrap();
    let mut session = Session::builder(environment).unwrap().commit_from_file(&model).unwrap();
    // The inference side reads back exactly the metadata the exporter wrote.
    assert_eq!(dim_infer::session::read_metadata(&session).unwrap(), summary.metadata);
    let (channels, size) = (config.in_channels, config.input_size());
    let spec = InputSpec { channels, size, resize: ResizePolicy::Pad, background: Background::White };
    for batch in [1, 7] {
        let shape = [batch, channels, size, size];
        let random = tensor_values(&Tensor::rand(shape.map(|d| d as i64), (Kind::Float, Device::Cpu)));
        assert_outputs_match(&mut session, encoder, &random, shape, source.name());
        let images: Vec<f32> =
            generated_images(batch).iter().flat_map(|image| image_to_input(image, &spec)).collect();
        assert_outputs_match(&mut session, encoder, &images, shape, source.name());
    }
    dir
}

#[test]
fn basic32x32_grey_with_channels_last_weights_matches_libtorch() {
    check_preset(Preset::Basic32x32, 1, Tap::Conv, WeightLayout::ChannelsLast, 1);
}

#[test]
fn basic32x32_rgb_matches_libtorch() {
    check_preset(Preset::Basic32x32, 3, Tap::Fc, WeightLayout::Contiguous, 2);
}

#[test]
fn basic64x64_matches_libtorch() {
    check_preset(Preset::Basic64x64, 3, Tap::Y, WeightLayout::Contiguous, 3);
}

#[test]
fn alex64x64_with_channels_last_weights_matches_libtorch() {
    check_preset(Preset::Alex64x64, 3, Tap::Conv, WeightLayout::ChannelsLast, 4);
}

#[test]
fn resnet19_with_channels_last_weights_matches_libtorch() {
    check_preset(Preset::ResNet19_32x32, 3, Tap::Conv, WeightLayout::ChannelsLast, 5);
}

#[test]
fn resnet34_grey_matches_libtorch() {
    check_preset(Preset::ResNet34_32x32, 1, Tap::Fc, WeightLayout::Contiguous, 6);
}

#[test]
fn foldresnet19_on_strided_crops_matches_libtorch() {
    check_preset(Preset::FoldResNet19_32x32, 3, Tap::Y, WeightLayout::Contiguous, 7);
}

/// How the trainer runs in these tests: on the CPU into `dir`, quietly, channels-last.
fn cpu_run_options(dir: &Path) -> RunOptions {
    RunOptions {
        out_dir: dir.to_path_buf(),
        device: Device::Cpu,
        stop: Arc::new(AtomicBool::new(false)),
        progress: false,
        channels_last: true,
        decoded_cache: CachePolicy::Auto,
        data_on_device: false,
        retrieval: None,
    }
}

/// The ResNet on strided crops, trained a few real steps by dim-train's trainer (DIM(L), JSD,
/// prior), exports to a graph that reproduces it.
#[test]
fn foldresnet19_trained_a_few_steps_exports_and_matches_libtorch() {
    let data = tempfile::tempdir().unwrap();
    for (index, image) in generated_images(12).iter().enumerate() {
        image.save(data.path().join(format!("image{index:02}.png"))).unwrap();
    }
    let run = tempfile::tempdir().unwrap();
    let settings = TrainSettings {
        preset: Preset::FoldResNet19_32x32,
        channels: 3,
        batch_size: 6,
        critic_width: 32,
        lr: 1e-3,
        ..TrainSettings::new(data.path().to_path_buf())
    };
    let dataset = trainer::open_training_data(&settings).unwrap();
    let options = cpu_run_options(run.path());
    let outcome = trainer::train(&settings, dataset, None, &options).unwrap();
    assert_eq!(outcome.end, RunEnd::Completed);
    assert_eq!(outcome.epochs.last().unwrap().step, 2);
    assert!(outcome.epochs[0].loss.is_finite());
    let (store, encoder, config) = dim_train::fit::checkpoint::load_encoder(run.path(), Device::Cpu).unwrap();
    assert_eq!(config.encoder.preset, Preset::FoldResNet19_32x32);
    let exported = check_export_matches(run.path(), &store, &encoder, Tap::Conv);

    // dim-embed's embedder reads the files and gives the encoder's normalised conv tap.
    let options = EmbedderOptions { model: exported.path().join("model.onnx"), ..EmbedderOptions::default() };
    let mut embedder = Embedder::try_new(options).unwrap();
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(data.path()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let embedded = embedder.embed(&files, 5).unwrap();
    assert!(embedded.skipped.is_empty());
    assert_eq!(embedded.dim, 1024 * 7 * 7);
    let spec = config.input_spec();
    let inputs: Vec<f32> =
        files.iter().flat_map(|file| image_to_input(&image::open(file).unwrap(), &spec)).collect();
    let reference = reference_outputs(&encoder, &inputs, [files.len(), 3, 32, 32], OUTPUT_CONV);
    let (_, expected) = reference.iter().find(|(name, _)| *name == OUTPUT_EMBEDDING).unwrap();
    let max_diff = embedded.vectors.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert_eq!(embedded.vectors.len(), expected.len());
    assert!(max_diff <= TOLERANCE, "dim-embed differs from libtorch by {max_diff:e}");
}

/// An encoder trained across two augmented views (with the view critic and the
/// global-to-global term beside it) exports the same way: the views exist only in training, the
/// graph reproduces the encoder, and the metadata records the recipe.
#[test]
fn basic32x32_trained_across_views_exports_and_matches_libtorch() {
    let data = tempfile::tempdir().unwrap();
    for (index, image) in generated_images(12).iter().enumerate() {
        image.save(data.path().join(format!("image{index:02}.png"))).unwrap();
    }
    let run = tempfile::tempdir().unwrap();
    let settings = TrainSettings {
        epochs: 2,
        batch_size: 6,
        critic_width: 32,
        lr: 1e-3,
        views: ViewMode::Cross,
        global_to_global: GlobalToGlobal { weight: 1.0, temperature: 0.2 },
        score_clip: 10.0,
        ..TrainSettings::new(data.path().to_path_buf())
    };
    let dataset = trainer::open_training_data(&settings).unwrap();
    let options = cpu_run_options(run.path());
    let outcome = trainer::train(&settings, dataset, None, &options).unwrap();
    assert_eq!(outcome.end, RunEnd::Completed);
    assert!(outcome.epochs.iter().all(|record| record.global_to_global_loss.is_some()));
    let (store, encoder, _) = dim_train::fit::checkpoint::load_encoder(run.path(), Device::Cpu).unwrap();
    let exported = check_export_matches(run.path(), &store, &encoder, Tap::Conv);
    let environment = dim_infer::runtime::ensure_initialised().unwrap();
    let session =
        Session::builder(environment).unwrap().commit_from_file(exported.path().join("model.onnx")).unwrap();
    let recipe = dim_infer::session::read_metadata(&session).unwrap().training_recipe.unwrap();
    let recipe: serde_json::Value = serde_json::from_str(&recipe).unwrap();
    assert_eq!(recipe["views"], "cross");
    assert_eq!(recipe["global_to_global"]["weight"], 1.0);
    assert!(recipe.get("data").is_none(), "the recipe leaves the machine's data path out");
}
