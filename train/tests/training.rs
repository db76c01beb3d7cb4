//! End-to-end tests of the training loop on tiny generated datasets: the loss falls, resuming
//! (after an epoch or mid-epoch) reproduces an uninterrupted run, a non-finite loss keeps the last
//! good checkpoint, and the discriminator's step leaves the encoder alone.

use dim_models::checkpoint::{CheckpointConfig, WEIGHTS_FILE};
use dim_models::preprocess::{Background, InputSpec, ResizePolicy};
use dim_models::{EncoderConfig, Preset};
use dim_train::data::{CachePolicy, DataError, DataFormat, Dataset, Sample};
use dim_train::fit::optim::{Adam, AdamConfig};
use dim_train::fit::settings::TrainSettings;
use dim_train::fit::trainer::{self, RunEnd, RunOptions, TrainError};
use dim_train::model::estimators::Estimator;
use dim_train::model::objective::{DimModel, Levers, Mode};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor, nn};

mod common;
use common::{exclusive_torch, options};

/// Two visually distinct kinds of 32×32 grey image (a bright square in the top-left or the
/// bottom-right quadrant) with per-example noise; `poisoned` turns every pixel into NaN, and the
/// `unreadable` examples fail to load.
struct Blobs {
    count: usize,
    poisoned: Arc<AtomicBool>,
    unreadable: Vec<usize>,
}

impl Blobs {
    fn new(count: usize) -> Self {
        Blobs { count, poisoned: Arc::new(AtomicBool::new(false)), unreadable: Vec::new() }
    }
}

impl Dataset for Blobs {
    fn len(&self) -> usize {
        self.count
    }
    fn input_spec(&self) -> InputSpec {
        InputSpec { channels: 1, size: 32, resize: ResizePolicy::Pad, background: Background::White }
    }
    fn num_classes(&self) -> Option<usize> {
        Some(2)
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        if self.unreadable.contains(&index) {
            return Err(DataError::Format {
                path: format!("example-{index}").into(),
                reason: "unreadable".into(),
            });
        }
        if self.poisoned.load(Ordering::SeqCst) {
            return Ok(Sample { pixels: vec![f32::NAN; 32 * 32], label: Some(0) });
        }
        let class = index % 2;
        let offset = 4 + (index / 2) % 8;
        let pixels = (0..32 * 32)
            .map(|p| {
                let (row, col) = (p / 32, p % 32);
                let (r, c) = if class == 0 { (row, col) } else { (31 - row, 31 - col) };
                let inside = (offset..offset + 10).contains(&r) && (offset..offset + 10).contains(&c);
                let noise = ((p * 7919 + index * 104_729) % 97) as f32 / 970.0;
                if inside { 0.9 - noise } else { noise }
            })
            .collect();
        Ok(Sample { pixels, label: Some(class as u32) })
    }
    fn fingerprint(&self) -> String {
        format!("blobs-{}", self.count)
    }
    fn describe(&self) -> String {
        format!("{} generated blobs", self.count)
    }
}

fn settings(epochs: usize) -> TrainSettings {
    TrainSettings {
        epochs,
        batch_size: 8,
        critic_width: 32,
        lr: 1e-3,
        ..TrainSettings::new("generated".into())
    }
}

#[test]
fn dim_l_training_makes_the_loss_fall_and_logs_every_epoch() {
    let _turn = exclusive_torch();
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let outcome = trainer::train(&settings(4), Arc::new(Blobs::new(32)), None, &options(dir.path())).unwrap();
    assert_eq!(outcome.end, RunEnd::Completed);
    let log = trainer::read_log(dir.path()).unwrap();
    // JSON keeps about 16 significant digits, so compare the read-back log with a tolerance.
    assert_eq!(log.len(), outcome.epochs.len());
    for (read, returned) in log.iter().zip(&outcome.epochs) {
        assert_eq!((read.epoch, read.step), (returned.epoch, returned.step));
        assert!((read.loss - returned.loss).abs() < 1e-9);
    }
    assert_eq!(log.len(), 4);
    assert_eq!(log.last().unwrap().step, 16);
    let (first, last) = (&log[0], &log[3]);
    assert!(last.loss < first.loss, "loss did not fall: {} → {}", first.loss, last.loss);
    assert!(last.mi_estimate > first.mi_estimate);
    assert!(first.prior_loss.is_some() && first.discriminator_loss.is_some() && first.global_loss.is_none());
    for record in &log {
        // Every stage of a step is timed, images/s divides by the steps' time, and the steps fit
        // inside the epoch's wall time.
        let stages = record.stage_seconds.expect("the log keeps each epoch's stage times");
        for seconds in
            [stages.batch_to_device, stages.views, stages.reading_losses, stages.waiting_for_loader]
        {
            assert!(seconds >= 0.0, "{stages:?}");
        }
        assert!(stages.forward > 0.0 && stages.update > 0.0, "{stages:?}");
        assert!(
            stages.step_seconds() + stages.waiting_for_loader <= record.seconds,
            "{stages:?} in {} s",
            record.seconds
        );
        let images_per_second = 4.0 * 8.0 / stages.step_seconds();
        assert!((record.images_per_second - images_per_second).abs() < 1e-6 * images_per_second);
    }
    let config = CheckpointConfig::read(dir.path()).unwrap();
    assert_eq!((config.epoch, config.step), (4, 16));
    assert_eq!(config.training["estimator"], "jsd");
    assert_eq!(config.data_fingerprint, "blobs-32");
}

#[test]
fn resuming_after_an_epoch_or_mid_epoch_reproduces_an_uninterrupted_run() {
    let _turn = exclusive_torch();
    tch::set_num_threads(2);
    let data: Arc<dyn Dataset> = Arc::new(Blobs::new(16));
    let straight = tempfile::tempdir().unwrap();
    trainer::train(&settings(2), Arc::clone(&data), None, &options(straight.path())).unwrap();

    // One epoch, then a second call that resumes for the second.
    let split = tempfile::tempdir().unwrap();
    trainer::train(&settings(1), Arc::clone(&data), None, &options(split.path())).unwrap();
    let resume = trainer::Resume::read(split.path()).unwrap();
    assert_eq!(resume.settings(), &settings(1));
    let again =
        trainer::train(&settings(2), Arc::clone(&data), Some(&resume), &options(split.path())).unwrap();
    assert_eq!(again.epochs.len(), 1);
    let difference = trainer::max_weight_difference(straight.path(), split.path()).unwrap();
    assert!(difference < 1e-6, "weights differ by {difference}");

    // Interrupted after the first step of the first epoch (as Ctrl-C does), then resumed.
    let interrupted = tempfile::tempdir().unwrap();
    let stopping = options(interrupted.path());
    stopping.stop.store(true, Ordering::SeqCst);
    let outcome = trainer::train(&settings(2), Arc::clone(&data), None, &stopping).unwrap();
    assert_eq!(outcome.end, RunEnd::Interrupted);
    let config = CheckpointConfig::read(interrupted.path()).unwrap();
    assert_eq!((config.epoch, config.step), (0, 1));
    assert_eq!(config.training["batches_into_epoch"], 1);
    trainer::train(
        &settings(2),
        Arc::clone(&data),
        Some(&trainer::Resume::read(interrupted.path()).unwrap()),
        &options(interrupted.path()),
    )
    .unwrap();
    let difference = trainer::max_weight_difference(straight.path(), interrupted.path()).unwrap();
    assert!(difference < 1e-6, "weights differ by {difference}");
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let _turn = exclusive_torch();
    tch::set_num_threads(2);
    let blobs = Blobs::new(16);
    let poisoned = Arc::clone(&blobs.poisoned);
    let data: Arc<dyn Dataset> = Arc::new(blobs);
    let dir = tempfile::tempdir().unwrap();
    trainer::train(&settings(1), Arc::clone(&data), None, &options(dir.path())).unwrap();
    let weights_before = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();

    poisoned.store(true, Ordering::SeqCst);
    let error = trainer::train(
        &settings(2),
        Arc::clone(&data),
        Some(&trainer::Resume::read(dir.path()).unwrap()),
        &options(dir.path()),
    )
    .unwrap_err();
    assert!(matches!(error, TrainError::NonFiniteLoss { epoch: 2, step: 3, .. }), "{error}");
    assert!(error.to_string().contains("last good checkpoint"), "{error}");
    assert_eq!(std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap(), weights_before);
    assert_eq!(CheckpointConfig::read(dir.path()).unwrap().epoch, 1);
    assert_eq!(trainer::read_log(dir.path()).unwrap().len(), 1);
}

#[test]
fn resuming_on_other_data_is_refused() {
    let _turn = exclusive_torch();
    let dir = tempfile::tempdir().unwrap();
    trainer::train(&settings(1), Arc::new(Blobs::new(16)), None, &options(dir.path())).unwrap();
    let error = trainer::train(
        &settings(2),
        Arc::new(Blobs::new(24)),
        Some(&trainer::Resume::read(dir.path()).unwrap()),
        &options(dir.path()),
    )
    .unwrap_err();
    assert!(matches!(error, TrainError::DataChanged { .. }), "{error}");
    let error =
        trainer::train(&settings(1), Arc::new(Blobs::new(4)), None, &options(dir.path())).unwrap_err();
    assert!(matches!(error, TrainError::TooFewExamples { .. }), "{error}");
}

#[test]
fn the_discriminator_step_changes_only_the_discriminator() {
    // Creating the variables draws from libtorch's global generator, which the reproducibility
    // tests must have to themselves.
    let _turn = exclusive_torch();
    let store = nn::VarStore::new(Device::Cpu);
    let config = EncoderConfig::new(Preset::Basic32x32, 1).unwrap();
    let model =
        DimModel::new(&store.root(), config, Mode::DimL.weights(), Estimator::Jsd, 16, Levers::default());
    let prior: Vec<(String, Tensor)> = store
        .variables()
        .into_iter()
        .filter(|(name, t)| name.starts_with("prior.") && t.requires_grad())
        .collect();
    let mut optimizer = Adam::new("discriminator", AdamConfig::dim_default(), prior);
    let snapshot = |prefix: &str| -> Vec<(String, Tensor)> {
        let mut vars: Vec<_> = store
            .variables()
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, t)| (name, t.copy()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    };
    let encoder_before = snapshot("encoder.");
    let prior_before = snapshot("prior.");

    let images = Tensor::rand([8, 1, 32, 32], (Kind::Float, Device::Cpu));
    // The encoder's forward pass (training mode) moves BatchNorm statistics; snapshot after it.
    let loss = model.encoder_loss(&images);
    let encoder_after_forward = snapshot("encoder.");
    // Leave encoder gradients in place, to check the discriminator's update ignores them.
    loss.total.backward();
    let discriminator_loss = model.discriminator.as_ref().unwrap().discriminator_loss(&loss.y);
    optimizer.minimise(&discriminator_loss.total);

    let changed = |before: &[(String, Tensor)], after: &[(String, Tensor)]| {
        before.iter().zip(after).filter(|((_, a), (_, b))| !a.equal(b)).count()
    };
    assert_eq!(changed(&encoder_after_forward, &snapshot("encoder.")), 0);
    assert_eq!(changed(&prior_before, &snapshot("prior.")), prior_before.len());
    assert!(changed(&encoder_before, &encoder_after_forward) > 0, "BatchNorm statistics should move");
}

#[test]
fn dim_g_with_infonce_and_dim_l_with_dv_train_without_error() {
    let _turn = exclusive_torch();
    for (mode, estimator) in [(Mode::DimG, Estimator::Nce), (Mode::DimL, Estimator::Dv)] {
        let dir = tempfile::tempdir().unwrap();
        let run = TrainSettings { mode, weights: mode.weights(), estimator, ..settings(1) };
        let outcome = trainer::train(&run, Arc::new(Blobs::new(16)), None, &options(dir.path())).unwrap();
        let record = &outcome.epochs[0];
        assert!(record.loss.is_finite(), "{mode:?} {estimator:?}");
        assert_eq!(record.global_loss.is_some(), mode == Mode::DimG);
        assert_eq!(record.local_loss.is_some(), mode == Mode::DimL);
        let weights = dim_train::fit::checkpoint::read_tensors(&dir.path().join(WEIGHTS_FILE)).unwrap();
        assert_eq!(weights.keys().any(|name| name.starts_with("global_critic.")), mode == Mode::DimG);
        assert_eq!(weights.keys().any(|name| name.starts_with("local_critic.")), mode == Mode::DimL);
    }
}

#[test]
fn occlusion_and_extra_globals_each_and_together_lower_the_loss_and_are_saved() {
    let _turn = exclusive_torch();
    tch::set_num_threads(2);
    for (occlusion_size, extra_globals) in [(8, 0), (0, 2), (8, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let run = TrainSettings { occlusion_size, extra_globals, ..settings(2) };
        trainer::train(&run, Arc::new(Blobs::new(48)), None, &options(dir.path())).unwrap();
        let log = trainer::read_log(dir.path()).unwrap();
        let (first, last) = (&log[0], &log[1]);
        let lever = format!("occlusion {occlusion_size}, extra globals {extra_globals}");
        eprintln!(
            "{lever}: {} → {}, local {:?} → {:?}",
            first.loss, last.loss, first.local_loss, last.local_loss
        );
        assert!(last.loss < first.loss, "{lever}: loss did not fall: {} → {}", first.loss, last.loss);
        assert!(last.local_loss < first.local_loss, "{lever}");

        let config = CheckpointConfig::read(dir.path()).unwrap();
        assert_eq!(config.training["occlusion_size"], occlusion_size);
        assert_eq!(config.training["extra_globals"], extra_globals);
        assert_eq!(trainer::Resume::read(dir.path()).unwrap().settings(), &run);
        let weights = dim_train::fit::checkpoint::read_tensors(&dir.path().join(WEIGHTS_FILE)).unwrap();
        assert_eq!(
            weights.keys().any(|name| name.starts_with("extra_globals.")),
            extra_globals > 0,
            "{lever}"
        );
        // The exported encoder's tensors are exactly the parameter-name contract's.
        let contract = dim_models::parameters::encoder_parameters(&config.encoder);
        let mut expected: Vec<String> = contract.into_iter().map(|spec| spec.name).collect();
        let mut saved: Vec<String> =
            weights.into_keys().filter(|name| name.starts_with("encoder.")).collect();
        expected.sort();
        saved.sort();
        assert_eq!(saved, expected, "{lever}");
    }
}

/// Writes `count` grey 32×32 PNGs into class folders, one with a Latin-1 (not UTF-8) name.
fn write_image_folder(dir: &Path, count: usize) {
    use std::os::unix::ffi::OsStringExt;
    for i in 0..count {
        let class = if i % 2 == 0 {
            std::ffi::OsString::from("squares")
        } else {
            std::ffi::OsString::from_vec(b"caf\xe9".to_vec())
        };
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        let corner = if i % 2 == 0 { 0 } else { 16 };
        let image = image::GrayImage::from_fn(32, 32, |x, y| {
            let inside = (corner..corner + 16).contains(&x) && (corner..corner + 16).contains(&y);
            image::Luma([if inside { 220 } else { ((x * 7 + y * 3 + i as u32 * 11) % 60) as u8 }])
        });
        image.save(folder.join(format!("{i:03}.png"))).unwrap();
    }
}

#[test]
fn dim_train_killed_with_sigkill_resumes_from_its_last_checkpoint_to_the_uninterrupted_result() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("images");
    write_image_folder(&data, 64);
    let train = |out: &Path, resume: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dim-train"));
        if resume {
            command.arg("--resume").arg(out);
        } else {
            command.arg("--data").arg(&data).arg("--out").arg(out);
        }
        command
            .args(["--epochs", "6", "--batch", "16", "--critic-width", "32", "--lr", "1e-3"])
            .args(["--device", "cpu", "--threads", "1", "--quiet"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let straight = temp.path().join("straight");
    let finished = train(&straight, false).wait_with_output().unwrap();
    assert!(finished.status.success(), "{}", String::from_utf8_lossy(&finished.stderr));
    assert_eq!(CheckpointConfig::read(&straight).unwrap().epoch, 6);

    let killed = temp.path().join("killed");
    let epoch_saved = || CheckpointConfig::read(&killed).map_or(0, |config| config.epoch);
    let mut kills = 0;
    // Each attempt is killed a different moment after it has saved one more epoch, so the kills
    // fall in training, in saving and between the renames of a commit; then it is resumed.
    for (attempt, delay_ms) in [0u64, 3, 11, 29, 53, 97, 151, 0, 7, 19].into_iter().enumerate() {
        let at_start = epoch_saved();
        if at_start == 6 {
            break;
        }
        let mut child = train(&killed, at_start > 0);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "attempt {attempt} failed");
                break;
            }
            if epoch_saved() > at_start {
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    assert!(kills >= 1, "the run was never killed");
    // A kill can fall after the last save's config rename but before its log rename; what a user
    // runs next (`dim-train --resume`) finishes that save and removes abandoned staged files.
    trainer::Resume::read(&killed).unwrap();
    assert_eq!(CheckpointConfig::read(&killed).unwrap().epoch, 6, "never finished after {kills} kills");
    let difference = trainer::max_weight_difference(&straight, &killed).unwrap();
    assert!(difference < 1e-6, "after {kills} kills the weights differ by {difference}");
    let epochs: Vec<usize> = trainer::read_log(&killed).unwrap().iter().map(|record| record.epoch).collect();
    assert_eq!(epochs, [1, 2, 3, 4, 5, 6], "each epoch logged once, with its checkpoint");
    let leftovers: Vec<String> = std::fs::read_dir(&killed)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp") || name.contains("journal"))
        .collect();
    assert!(leftovers.is_empty(), "files staged by killed runs remain: {leftovers:?}");
}

#[test]
fn the_decoded_image_cache_changes_no_loss_whichever_store_holds_it() {
    let _turn = exclusive_torch();
    tch::set_num_threads(2);
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("images");
    write_image_folder(&data, 32);
    let run_settings = TrainSettings { data: data.clone(), format: DataFormat::Folder, ..settings(2) };
    let mut runs = Vec::new();
    for policy in [CachePolicy::Off, CachePolicy::Memory, CachePolicy::File] {
        let dir = temp.path().join(format!("{policy:?}"));
        let dataset = trainer::open_training_data(&run_settings).unwrap();
        let options = RunOptions { decoded_cache: policy, ..options(&dir) };
        let outcome = trainer::train(&run_settings, dataset, None, &options).unwrap();
        assert_eq!(outcome.end, RunEnd::Completed);
        assert_eq!(
            dir.join(dim_train::data::CACHE_FILE).is_file(),
            policy == CachePolicy::File,
            "{policy:?}"
        );
        let losses: Vec<(f64, f64)> = outcome.epochs.iter().map(|e| (e.loss, e.mi_estimate)).collect();
        runs.push((policy, losses));
    }
    let (_, uncached) = &runs[0];
    assert_eq!(uncached.len(), 2);
    for (policy, losses) in &runs[1..] {
        assert_eq!(losses, uncached, "{policy:?} changed the losses");
    }
}

#[test]
fn the_dataset_held_on_the_device_trains_exactly_like_the_host_loader_and_resumes() {
    let _turn = exclusive_torch();
    tch::set_num_threads(2);
    let data: Arc<dyn Dataset> = Arc::new(Blobs { unreadable: vec![3, 11], ..Blobs::new(16) });
    let run_settings = TrainSettings { flip: true, crop_padding: 3, ..settings(2) };
    let temp = tempfile::tempdir().unwrap();
    let host_dir = temp.path().join("host");
    let host = trainer::train(&run_settings, Arc::clone(&data), None, &options(&host_dir)).unwrap();
    let on_device = |dir: &Path| RunOptions { data_on_device: true, ..options(dir) };
    let resident_dir = temp.path().join("resident");
    let resident = trainer::train(&run_settings, Arc::clone(&data), None, &on_device(&resident_dir)).unwrap();
    let losses = |outcome: &trainer::TrainOutcome| -> Vec<(f64, f64)> {
        outcome.epochs.iter().map(|e| (e.loss, e.mi_estimate)).collect()
    };
    assert_eq!(losses(&resident), losses(&host));
    assert_eq!(resident.skipped, host.skipped);
    assert_eq!(host.skipped.len(), 4, "both unreadable examples, in each of two epochs: {:?}", host.skipped);
    assert_eq!(trainer::max_weight_difference(&host_dir, &resident_dir).unwrap(), 0.0);

    // Interrupted after one step, then resumed mid-epoch from the device-held data.
    let interrupted = temp.path().join("interrupted");
    let stopping = on_device(&interrupted);
    stopping.stop.store(true, Ordering::SeqCst);
    let outcome = trainer::train(&run_settings, Arc::clone(&data), None, &stopping).unwrap();
    assert_eq!(outcome.end, RunEnd::Interrupted);
    let resume = trainer::Resume::read(&interrupted).unwrap();
    trainer::train(&run_settings, Arc::clone(&data), Some(&resume), &on_device(&interrupted)).unwrap();
    let difference = trainer::max_weight_difference(&host_dir, &interrupted).unwrap();
    assert!(difference < 1e-6, "weights differ by {difference}");
}
