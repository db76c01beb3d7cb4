//! Cross-view training end to end on generated labelled patterns: the loss falls, retrieval on
//! held-out images ends better than the untrained encoder's (logged by the retrieval check), and
//! a run interrupted mid-epoch resumes to exactly the uninterrupted weights.

use dim_models::checkpoint::CheckpointConfig;
use dim_models::preprocess::{Background, InputSpec, ResizePolicy};
use dim_train::data::views::ViewMode;
use dim_train::data::{DataError, Dataset, Sample};
use dim_train::eval::features::{LabelledImages, random_encoder, read_labelled_images};
use dim_train::fit::retrieval_check::{RetrievalCheck, precision_at_k};
use dim_train::fit::settings::TrainSettings;
use dim_train::fit::trainer::{self, RunEnd, RunOptions};
use dim_train::model::estimators::Estimator;
use dim_train::model::objective::{GlobalToGlobal, ObjectiveWeights};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tch::Device;

mod common;
use common::exclusive_torch;

/// Grey 32×32 patterns of four kinds (the label: vertical stripes, horizontal stripes, a
/// checkerboard, concentric rings), each with its own period, phase, centre, faint contrast and a
/// mean level anywhere from dark to bright, drawn from the example's index and `salt`, plus a
/// little noise. Every kind is its own mirror image, so flips keep the label; the mean level,
/// which dominates an untrained encoder's features, is what brightness jitter teaches to ignore.
struct Patterns {
    count: usize,
    salt: u64,
}

impl Patterns {
    fn value(&self, index: usize, slot: u64) -> f32 {
        // A small integer hash, so that train and test sets (other salts) differ.
        let mut x = (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.salt.wrapping_add(slot << 32);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        (x % 10_000) as f32 / 10_000.0
    }
}

impl Dataset for Patterns {
    fn len(&self) -> usize {
        self.count
    }
    fn input_spec(&self) -> InputSpec {
        InputSpec { channels: 1, size: 32, resize: ResizePolicy::Pad, background: Background::White }
    }
    fn num_classes(&self) -> Option<usize> {
        Some(4)
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        use std::f32::consts::TAU;
        let class = index % 4;
        let period = 4.0 + 5.0 * self.value(index, 1);
        let phase = TAU * self.value(index, 2);
        let contrast = 0.06 + 0.08 * self.value(index, 3);
        let mean = 0.15 + 0.7 * self.value(index, 4);
        let (centre_row, centre_col) = (8.0 + 16.0 * self.value(index, 6), 8.0 + 16.0 * self.value(index, 7));
        let pixels = (0..32 * 32)
            .map(|p| {
                let (row, col) = ((p / 32) as f32, (p % 32) as f32);
                let wave = |x: f32| (TAU * x / period + phase).sin();
                let pattern = match class {
                    0 => wave(col),
                    1 => wave(row),
                    2 => wave(col).signum() * wave(row).signum(),
                    _ => wave((row - centre_row).hypot(col - centre_col)),
                };
                let noise = self.value(index * 1024 + p, 5) * 0.04 - 0.02;
                (mean + contrast * pattern + noise).clamp(0.0, 1.0)
            })
            .collect();
        Ok(Sample { pixels, label: Some(class as u32) })
    }
    fn fingerprint(&self) -> String {
        format!("patterns-{}-{}", self.count, self.salt)
    }
    fn describe(&self) -> String {
        format!("{} generated patterns", self.count)
    }
}

fn cross_view_settings(epochs: usize) -> TrainSettings {
    TrainSettings {
        epochs,
        batch_size: 32,
        critic_width: 64,
        lr: 1e-3,
        views: ViewMode::Cross,
        weights: ObjectiveWeights { alpha: 0.0, beta: 1.0, gamma: 0.0 },
        estimator: Estimator::Nce,
        global_to_global: GlobalToGlobal { weight: 1.0, temperature: 0.2 },
        score_clip: 10.0,
        score_penalty: 1e-3,
        ..TrainSettings::new("generated".into())
    }
}

fn options(dir: &Path, retrieval: Option<Arc<RetrievalCheck>>) -> RunOptions {
    RunOptions { retrieval, ..common::options(dir) }
}

fn held_out() -> LabelledImages {
    let test = Patterns { count: 400, salt: 99 };
    read_labelled_images(&test, None, 0, &indicatif::ProgressBar::hidden()).unwrap()
}

#[test]
fn cross_view_training_lowers_the_loss_and_searches_better_than_the_untrained_encoder() {
    let _turn = exclusive_torch();
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let settings = cross_view_settings(4);
    let split = held_out();
    let check = Arc::new(RetrievalCheck::new(&split, 2).unwrap());
    let config = dim_models::EncoderConfig::new(settings.preset, 1).unwrap();
    // Session::new seeds libtorch with the run's seed before creating the variables, so this is
    // the run's own starting point.
    let (_store, untrained) = random_encoder(config, settings.seed, Device::Cpu);
    let before = precision_at_k(&untrained, &split, Device::Cpu).unwrap();

    let data = Arc::new(Patterns { count: 512, salt: 1 });
    let outcome =
        trainer::train(&settings, data, None, &options(dir.path(), Some(Arc::clone(&check)))).unwrap();
    assert_eq!(outcome.end, RunEnd::Completed);
    let log = trainer::read_log(dir.path()).unwrap();
    let checked: Vec<Option<f64>> = log.iter().map(|record| record.retrieval_precision_at_10).collect();
    assert!(checked[0].is_none() && checked[1].is_some() && checked[2].is_none(), "{checked:?}");
    let after = checked[3].expect("the check runs on epoch 4");
    eprintln!("held-out precision@10: untrained {before:.4}, by epoch {checked:?}");
    assert!(after > before + 0.05, "precision@10 {before:.4} → {after:.4}");
    let (first, last) = (&log[0], &log[3]);
    assert!(last.loss < first.loss, "loss did not fall: {} → {}", first.loss, last.loss);
    assert!(
        first.local_loss.is_some() && first.global_to_global_loss.is_some() && first.prior_loss.is_none()
    );

    let saved = CheckpointConfig::read(dir.path()).unwrap();
    assert_eq!(saved.training["views"], "cross");
    assert_eq!(saved.training["global_to_global"]["weight"], 1.0);
    assert_eq!(saved.training["augmentation"]["min_area"], 0.3);
    assert_eq!(trainer::Resume::read(dir.path()).unwrap().settings(), &settings);
}

#[test]
fn a_cross_view_run_interrupted_mid_epoch_resumes_to_the_uninterrupted_weights() {
    let _turn = exclusive_torch();
    tch::set_num_threads(2);
    let data: Arc<dyn Dataset> = Arc::new(Patterns { count: 96, salt: 2 });
    let settings = TrainSettings { batch_size: 16, ..cross_view_settings(2) };
    let straight = tempfile::tempdir().unwrap();
    trainer::train(&settings, Arc::clone(&data), None, &options(straight.path(), None)).unwrap();

    let interrupted = tempfile::tempdir().unwrap();
    let stopping = options(interrupted.path(), None);
    stopping.stop.store(true, Ordering::SeqCst);
    let outcome = trainer::train(&settings, Arc::clone(&data), None, &stopping).unwrap();
    assert_eq!(outcome.end, RunEnd::Interrupted);
    assert_eq!(CheckpointConfig::read(interrupted.path()).unwrap().step, 1);
    trainer::train(
        &settings,
        Arc::clone(&data),
        Some(&trainer::Resume::read(interrupted.path()).unwrap()),
        &options(interrupted.path(), None),
    )
    .unwrap();
    let difference = trainer::max_weight_difference(straight.path(), interrupted.path()).unwrap();
    assert!(difference < 1e-6, "weights differ by {difference}");

    // One augmented view for both sides trains too, and records its mode.
    let same = tempfile::tempdir().unwrap();
    let one_view = TrainSettings {
        views: ViewMode::Same,
        global_to_global: GlobalToGlobal::default(),
        ..settings.clone()
    };
    let outcome = trainer::train(&one_view, Arc::clone(&data), None, &options(same.path(), None)).unwrap();
    assert!(
        outcome.epochs.iter().all(|record| record.loss.is_finite() && record.global_to_global_loss.is_none())
    );
    assert_eq!(CheckpointConfig::read(same.path()).unwrap().training["views"], "same");
}
