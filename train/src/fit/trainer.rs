//! The training loop: builds the model and optimisers from [`TrainSettings`], runs epochs over the
//! batch loader (encoder step, then a separate discriminator step), logs each epoch to
//! `train_log.jsonl`, checkpoints at every epoch end and on interruption, resumes exactly, and
//! stops on a non-finite loss without overwriting the last good checkpoint.

use crate::data::device_upload::upload;
use crate::data::views::{ViewMode, make_views};
use crate::data::{
    Augment, Batch, CachePolicy, DataError, Dataset, DecodedCache, DoesNotFit, EpochBatches, LoaderOptions,
    ResidentData, ResidentEpoch, Sample, batches_per_epoch, epoch_batches,
};
use crate::fit::checkpoint::{self, CheckpointIoError};
use crate::fit::optim::{Adam, OptimizerStateError};
use crate::fit::retrieval_check::{RetrievalCheck, RetrievalCheckError};
use crate::fit::settings::{SettingsError, TrainSettings, TrainingState};
use crate::model::objective::DimModel;
use crate::model::prior::PRIOR_PREFIX;
use dim_models::EncoderConfig;
use dim_models::atomic_file::{self, StagedFile};
use dim_models::checkpoint::{CHECKPOINT_FORMAT_VERSION, CheckpointConfig};
use dim_models::preprocess::InputSpec;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};

/// Name of the per-epoch JSON-lines log in the checkpoint directory.
pub const LOG_FILE: &str = "train_log.jsonl";

/// Errors that end a training run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The settings are unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The data could not be opened.
    #[error("cannot open the training data")]
    Data(#[source] DataError),
    /// The decoded dataset does not fit on the device.
    #[error(transparent)]
    DataOnDevice(#[from] DoesNotFit),
    /// The dataset holds fewer examples than one batch.
    #[error("the dataset has {examples} usable example(s), fewer than one batch of {batch_size}")]
    TooFewExamples {
        /// Examples available.
        examples: usize,
        /// The batch size.
        batch_size: usize,
    },
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointIoError),
    /// The saved optimiser state does not fit the model.
    #[error("the checkpoint's optimizer state does not fit this model")]
    OptimizerState(#[from] OptimizerStateError),
    /// The checkpoint's `training` field is not this trainer's settings.
    #[error("the checkpoint's training settings cannot be read: {0}")]
    ResumeSettings(serde_json::Error),
    /// The data differs from the data the checkpoint was trained on.
    #[error(
        "the data fingerprint {found} differs from the checkpoint's {expected}: resuming on other data \
         would not continue the same run"
    )]
    DataChanged {
        /// The checkpoint's fingerprint.
        expected: String,
        /// The data's fingerprint now.
        found: String,
    },
    /// A loss became NaN or infinite.
    #[error(
        "the {term} loss became {value} at epoch {epoch}, step {step}; stopped without saving, the last \
         good checkpoint is kept (try a lower --lr or a smaller --critic-width)"
    )]
    NonFiniteLoss {
        /// Which loss.
        term: &'static str,
        /// Its value.
        value: f64,
        /// 1-based epoch.
        epoch: usize,
        /// Optimiser step (1-based) that produced it.
        step: u64,
    },
    /// The settings cannot be recorded in the checkpoint's JSON config.
    #[error("cannot record the settings in the checkpoint (is the --data path valid UTF-8?): {0}")]
    RecordSettings(#[source] serde_json::Error),
    /// The held-out retrieval check failed.
    #[error("the held-out retrieval check failed")]
    RetrievalCheck(#[from] RetrievalCheckError),
    /// The log could not be written.
    #[error("cannot write {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How a run is executed (not part of the result, so not saved in checkpoints).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Checkpoint directory.
    pub out_dir: PathBuf,
    /// Compute device.
    pub device: Device,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Show a progress bar per epoch.
    pub progress: bool,
    /// Keep conv weights and inputs in channels-last (NHWC) memory order, which libtorch's CPU
    /// convolutions run faster on; the numbers are the same up to rounding.
    pub channels_last: bool,
    /// Where an image folder's decoded images are kept after the first epoch.
    pub decoded_cache: CachePolicy,
    /// Hold the decoded dataset on `device` and gather batches there (the same batches).
    pub data_on_device: bool,
    /// Precision@10 on a held-out labelled split every few epochs, when given.
    pub retrieval: Option<Arc<RetrievalCheck>>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Every epoch finished.
    Completed,
    /// Stopped by the stop flag; a checkpoint was saved first.
    Interrupted,
}

/// One epoch's record in `train_log.jsonl`. Means are over the steps this process ran: for an
/// epoch resumed after an interruption, over the steps after the resume.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Optimiser steps completed after this epoch.
    pub step: u64,
    /// Mean encoder-side loss `α·global + β·local + γ·prior`.
    pub loss: f64,
    /// Mean global MI loss (when α > 0).
    pub global_loss: Option<f64>,
    /// Mean local MI loss (when β > 0).
    pub local_loss: Option<f64>,
    /// Mean global-to-global loss (when that term is on; absent from logs written before it).
    #[serde(default)]
    pub global_to_global_loss: Option<f64>,
    /// Mean generator loss (when γ > 0).
    pub prior_loss: Option<f64>,
    /// Mean discriminator loss (when γ > 0).
    pub discriminator_loss: Option<f64>,
    /// Mean MI estimate of the local (or, without it, the global) term, in nats.
    pub mi_estimate: f64,
    /// Training throughput: images over the steps' time, from the batch being handed over by the
    /// loader to the optimisers' updates (the loader's own wait, checkpointing and checks are
    /// outside it; `seconds` has them).
    pub images_per_second: f64,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
    /// Examples the loader skipped as unreadable.
    pub skipped_examples: usize,
    /// Where the epoch's steps spent their time (absent from logs written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_seconds: Option<StepStages>,
    /// Precision@10 of the conv features on the held-out split, exact cosine search (on the
    /// epochs the retrieval check ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval_precision_at_10: Option<f64>,
}

/// Seconds an epoch spent in each stage of its steps, summed over the steps. On a GPU the host only
/// queues kernels, so `forward` and `update` are the host's time to launch them and
/// `reading_losses` is the wait for the device to finish: a step whose reading share is near zero
/// is bound by the host (launches, data), one where it dominates is bound by the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct StepStages {
    /// Waiting for the host loader to hand over a batch (not part of images/s).
    pub waiting_for_loader: f64,
    /// Putting the batch on the device: the copy from the host, or the gather from the data held
    /// there.
    pub batch_to_device: f64,
    /// Drawing and making the augmented views, and the inputs' channels-last copy.
    pub views: f64,
    /// Building the losses of the encoder and the discriminator.
    pub forward: f64,
    /// Reading the losses to the host, which waits for the device.
    pub reading_losses: f64,
    /// The backward passes and optimiser updates.
    pub update: f64,
}

impl StepStages {
    /// The seconds of the training steps, the time images/s divides by: everything but waiting
    /// for the loader.
    pub fn step_seconds(&self) -> f64 {
        self.batch_to_device + self.views + self.forward + self.reading_losses + self.update
    }

    /// Each stage's share of the step time, e.g. "forward 31%, reading losses 2%, update 60%, …",
    /// and the loader's wait in seconds when there was one.
    pub fn describe(&self) -> String {
        let total = self.step_seconds().max(f64::MIN_POSITIVE);
        let share = |name: &str, seconds: f64| format!("{name} {:.0}%", 100.0 * seconds / total);
        let mut text = [
            share("batch to device", self.batch_to_device),
            share("views", self.views),
            share("forward", self.forward),
            share("reading losses", self.reading_losses),
            share("update", self.update),
        ]
        .join(", ");
        if self.waiting_for_loader >= 0.05 {
            text += &format!("; waited {:.1} s for the loader", self.waiting_for_loader);
        }
        text
    }
}

/// The result of [`train`].
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// How it ended.
    pub end: RunEnd,
    /// Records of the epochs finished in this call.
    pub epochs: Vec<EpochRecord>,
    /// Examples skipped as unreadable, as (index, reason), over this call.
    pub skipped: Vec<(usize, String)>,
}

/// Running sums of one epoch's step values.
#[derive(Debug, Default)]
struct EpochTotals {
    steps: usize,
    images: usize,
    loss: f64,
    global: Option<f64>,
    local: Option<f64>,
    global_to_global: Option<f64>,
    prior: Option<f64>,
    discriminator: Option<f64>,
    mi: f64,
    stages: StepStages,
}

fn add(sum: &mut Option<f64>, value: Option<f64>) {
    if let Some(value) = value {
        *sum = Some(sum.unwrap_or(0.0) + value);
    }
}

/// The values of one training step.
#[derive(Debug)]
struct StepValues {
    loss: f64,
    global: Option<f64>,
    local: Option<f64>,
    global_to_global: Option<f64>,
    prior: Option<f64>,
    discriminator: Option<f64>,
    mi: f64,
}

/// What one step trains on: the images (as loaded or one augmented view) or two views.
enum StepInputs {
    Images(Tensor),
    Views(Tensor, Tensor),
}

/// The first `limit` examples of a dataset (`--limit`).
struct Prefix {
    inner: Arc<dyn Dataset>,
    limit: usize,
}

impl Dataset for Prefix {
    fn len(&self) -> usize {
        self.inner.len().min(self.limit)
    }
    fn input_spec(&self) -> InputSpec {
        self.inner.input_spec()
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        self.inner.get(index)
    }
    fn fingerprint(&self) -> String {
        format!("{}:first{}", self.inner.fingerprint(), self.len())
    }
    fn describe(&self) -> String {
        format!("{} (first {} used)", self.inner.describe(), self.len())
    }
    fn decodes_files(&self) -> bool {
        self.inner.decodes_files()
    }
}

/// The model, its optimisers and its progress.
struct Session {
    settings: TrainSettings,
    encoder_config: EncoderConfig,
    store: nn::VarStore,
    model: DimModel,
    encoder_optimizer: Adam,
    discriminator_optimizer: Option<Adam>,
    epoch: usize,
    step: u64,
    batches_into_epoch: usize,
    data_fingerprint: String,
}

impl Session {
    fn new(
        settings: TrainSettings,
        device: Device,
        channels_last: bool,
        data_fingerprint: String,
    ) -> Result<Self, TrainError> {
        let encoder_config = EncoderConfig::new(settings.preset, settings.channels)
            .map_err(|e| SettingsError::Invalid(e.to_string()))?;
        // Seeds the initial weights (and the critics' near-identity shortcuts).
        tch::manual_seed(settings.seed as i64);
        let store = nn::VarStore::new(device);
        let model = DimModel::new(
            &store.root(),
            encoder_config,
            settings.weights,
            settings.estimator,
            settings.critic_width,
            settings.levers(),
        );
        if channels_last {
            for (_, mut variable) in store.variables() {
                if variable.dim() == 4 {
                    let reordered = to_channels_last(&variable);
                    tch::no_grad(|| variable.set_data(&reordered));
                }
            }
        }
        let prior_prefix = format!("{PRIOR_PREFIX}.");
        let (prior, rest): (Vec<_>, Vec<_>) = store
            .variables()
            .into_iter()
            .filter(|(_, variable)| variable.requires_grad())
            .partition(|(name, _)| name.starts_with(&prior_prefix));
        let encoder_optimizer = Adam::new("encoder_and_critics", settings.adam(), rest);
        let discriminator_optimizer =
            (!prior.is_empty()).then(|| Adam::new("discriminator", settings.adam(), prior));
        Ok(Session {
            settings,
            encoder_config,
            store,
            model,
            encoder_optimizer,
            discriminator_optimizer,
            epoch: 0,
            step: 0,
            batches_into_epoch: 0,
            data_fingerprint,
        })
    }

    fn optimizer_state(&self) -> Vec<(String, Tensor)> {
        let mut state = self.encoder_optimizer.state();
        if let Some(optimizer) = &self.discriminator_optimizer {
            state.extend(optimizer.state());
        }
        state
    }

    /// Checkpoints into `dir`, with `record` appended to the training log in the same commit.
    fn save(&self, dir: &Path, record: Option<&EpochRecord>) -> Result<(), TrainError> {
        let state =
            TrainingState { settings: self.settings.clone(), batches_into_epoch: self.batches_into_epoch };
        let config = CheckpointConfig {
            format_version: CHECKPOINT_FORMAT_VERSION,
            toolkit_version: dim_models::TOOLKIT_VERSION.into(),
            encoder: self.encoder_config,
            resize: self.settings.resize,
            background: self.settings.background,
            epoch: self.epoch,
            step: self.step,
            data_fingerprint: self.data_fingerprint.clone(),
            training: serde_json::to_value(&state).map_err(TrainError::RecordSettings)?,
        };
        let log = record.map(|record| stage_log_with(&dir.join(LOG_FILE), record)).transpose()?;
        checkpoint::save_checkpoint(
            dir,
            &self.store,
            &self.optimizer_state(),
            &config,
            log.into_iter().collect(),
        )?;
        Ok(())
    }

    fn restore(
        &mut self,
        dir: &Path,
        config: &CheckpointConfig,
        batches_into_epoch: usize,
    ) -> Result<(), TrainError> {
        checkpoint::load_weights(dir, &self.store)?;
        let saved = checkpoint::load_optimizer_state(dir)?;
        self.encoder_optimizer.load_state(&saved)?;
        if let Some(optimizer) = &mut self.discriminator_optimizer {
            optimizer.load_state(&saved)?;
        }
        self.epoch = config.epoch;
        self.step = config.step;
        self.batches_into_epoch = batches_into_epoch;
        Ok(())
    }

    /// The next step's inputs from a batch `[N, C, H, W]` on the device: the views are drawn
    /// from a generator seeded by the run's seed and the step number, so a resumed run draws the
    /// same views as an uninterrupted one.
    fn step_inputs(&self, images: Tensor, channels_last: bool) -> StepInputs {
        let layout = |tensor: Tensor| if channels_last { to_channels_last(&tensor) } else { tensor };
        let mut rng = StdRng::seed_from_u64(
            self.settings.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(self.step + 1),
        );
        let count = images.size()[0] as usize;
        let mut view = || {
            let draws = self.settings.augmentation.draw(&mut rng, count, self.settings.channels);
            tch::no_grad(|| layout(make_views(&images, &draws)))
        };
        match self.settings.views {
            ViewMode::Off => StepInputs::Images(layout(images.shallow_clone())),
            ViewMode::Same => StepInputs::Images(view()),
            ViewMode::Cross => {
                let first = view();
                StepInputs::Views(first, view())
            }
        }
    }

    /// One encoder step and, with a prior term, one discriminator step, timed into `stages`.
    fn train_step(&mut self, inputs: &StepInputs, stages: &mut StepStages) -> Result<StepValues, TrainError> {
        let epoch = self.epoch + 1;
        let step = self.step + 1;
        let started = Instant::now();
        // Seeding per step (not only per epoch) makes a run resumed mid-epoch draw the same prior
        // samples as an uninterrupted one.
        tch::manual_seed((self.settings.seed as i64).wrapping_mul(1_000_003).wrapping_add(step as i64));
        let check = |term: &'static str, value: f64| {
            if value.is_finite() {
                Ok(value)
            } else {
                Err(TrainError::NonFiniteLoss { term, value, epoch, step })
            }
        };
        let loss = match inputs {
            StepInputs::Images(images) => self.model.encoder_loss(images),
            StepInputs::Views(first, second) => self.model.cross_view_loss(first, second),
        };
        // The discriminator's loss reads only Y, detached, and its own weights, which the
        // encoder's update leaves alone (it computes no gradients for them), so it is built
        // before either update and read with the rest.
        let discriminator_loss = match (&self.model.discriminator, &self.discriminator_optimizer) {
            (Some(discriminator), Some(_)) => Some(discriminator.discriminator_loss(&loss.y)),
            _ => None,
        };
        let built = Instant::now();
        let mi = loss.local.as_ref().or(loss.global.as_ref()).or(loss.global_to_global.as_ref());
        // Every value is read before the updates are launched, in one transfer: a device that
        // queues work (CUDA) then runs the backward passes and the optimisers while the host
        // prepares the next batch, instead of waiting for them once per value read afterwards.
        let [total, global, local, global_to_global, prior, mi, discriminator] = read_scalars([
            Some(&loss.total),
            loss.global.as_ref().map(|e| &e.loss),
            loss.local.as_ref().map(|e| &e.loss),
            loss.global_to_global.as_ref().map(|e| &e.loss),
            loss.prior.as_ref(),
            mi.map(|e| &e.mi),
            discriminator_loss.as_ref().map(|l| &l.total),
        ]);
        let read = Instant::now();
        let total = check("total", total.expect("the total loss is always read"))?;
        let discriminator = discriminator.map(|value| check("discriminator", value)).transpose()?;
        self.encoder_optimizer.minimise(&loss.total);
        if let (Some(loss), Some(optimizer)) = (&discriminator_loss, &mut self.discriminator_optimizer) {
            optimizer.minimise(&loss.total);
        }
        stages.forward += (built - started).as_secs_f64();
        stages.reading_losses += (read - built).as_secs_f64();
        stages.update += read.elapsed().as_secs_f64();
        self.step = step;
        Ok(StepValues {
            loss: total,
            global,
            local,
            global_to_global,
            prior,
            discriminator,
            mi: mi.unwrap_or(0.0),
        })
    }
}

/// The scalars that are present, copied to the host in one transfer (one wait for the device
/// rather than one per value); each value is exactly what reading it on its own gives.
fn read_scalars<const N: usize>(scalars: [Option<&Tensor>; N]) -> [Option<f64>; N] {
    let present: Vec<Tensor> = scalars.iter().flatten().map(|scalar| scalar.detach().reshape([1])).collect();
    let mut values = if present.is_empty() {
        Vec::new()
    } else {
        let host = Tensor::cat(&present, 0).to_kind(Kind::Double).to_device(Device::Cpu);
        Vec::<f64>::try_from(&host).expect("a 1-d tensor of doubles converts to a Vec")
    }
    .into_iter();
    scalars.map(|scalar| scalar.and_then(|_| values.next()))
}

/// Opens the dataset named by the settings, cut to `--limit`.
pub fn open_training_data(settings: &TrainSettings) -> Result<Arc<dyn Dataset>, TrainError> {
    let spec = InputSpec {
        channels: settings.channels,
        size: settings.preset.input_size(),
        resize: settings.resize,
        background: settings.background,
    };
    let dataset = crate::data::open_dataset(&settings.data, settings.format, crate::data::Split::Train, spec)
        .map_err(TrainError::Data)?;
    Ok(match settings.limit {
        Some(limit) => Arc::new(Prefix { inner: dataset, limit }),
        None => dataset,
    })
}

/// A checkpoint to continue, read once: its directory, its config and the training state saved
/// in it.
#[derive(Debug, Clone)]
pub struct Resume {
    dir: PathBuf,
    config: CheckpointConfig,
    state: TrainingState,
}

impl Resume {
    /// Reads the checkpoint in `dir`, first completing or rolling back a save that an
    /// interruption left unfinished.
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        checkpoint::recover_interrupted_save(dir, &[LOG_FILE])?;
        let config = CheckpointConfig::read(dir).map_err(CheckpointIoError::from)?;
        let state: TrainingState =
            serde_json::from_value(config.training.clone()).map_err(TrainError::ResumeSettings)?;
        Ok(Resume { dir: dir.to_path_buf(), config, state })
    }

    /// The settings the run was saved with.
    pub fn settings(&self) -> &TrainSettings {
        &self.state.settings
    }
}

/// Trains on `dataset` with `settings`, continuing the checkpoint read as `resume` when given, and
/// checkpointing into `options.out_dir`.
pub fn train(
    settings: &TrainSettings,
    dataset: Arc<dyn Dataset>,
    resume: Option<&Resume>,
    options: &RunOptions,
) -> Result<TrainOutcome, TrainError> {
    settings.validate()?;
    let loader = LoaderOptions {
        batch_size: settings.batch_size,
        shuffle: true,
        seed: settings.seed,
        // A short last batch would change the number of negatives and BatchNorm's statistics.
        drop_last: true,
        augment: Augment { flip: settings.flip, crop_padding: settings.crop_padding },
        prefetch_batches: 4,
    };
    let batch_count = batches_per_epoch(dataset.len(), &loader);
    if batch_count == 0 {
        return Err(TrainError::TooFewExamples { examples: dataset.len(), batch_size: settings.batch_size });
    }
    // Data held on the device is decoded once per run, so a cache in memory would only hold a
    // second copy of it; a cache file asked for by name still spares a resumed run the decoding.
    let cache_policy = match options.decoded_cache {
        CachePolicy::Auto | CachePolicy::Memory if options.data_on_device => CachePolicy::Off,
        policy => policy,
    };
    let dataset = DecodedCache::wrap(dataset, cache_policy, &options.out_dir).map_err(TrainError::Data)?;
    let mut session =
        Session::new(settings.clone(), options.device, options.channels_last, dataset.fingerprint())?;
    if let Some(Resume { dir, config, state }) = resume {
        if config.data_fingerprint != session.data_fingerprint {
            return Err(TrainError::DataChanged {
                expected: config.data_fingerprint.clone(),
                found: session.data_fingerprint,
            });
        }
        session.restore(dir, config, state.batches_into_epoch)?;
    }

    let spec = dataset.input_spec();
    let image_shape = [spec.channels as i64, spec.size as i64, spec.size as i64];
    let resident = if options.data_on_device {
        if options.progress {
            eprintln!("dim-train: decoding {} examples onto {:?}", dataset.len(), options.device);
        }
        Some(ResidentData::load(&*dataset, options.device)?)
    } else {
        None
    };
    let mut outcome = TrainOutcome { end: RunEnd::Completed, epochs: Vec::new(), skipped: Vec::new() };
    while session.epoch < settings.epochs {
        let epoch_started = Instant::now();
        let bar = progress_bar(options.progress, batch_count, session.epoch + 1, settings.epochs);
        let mut totals = EpochTotals::default();
        let mut batches = match &resident {
            Some(resident) => EpochSource::Resident(resident.epoch(&loader, session.epoch)),
            None => EpochSource::Host {
                batches: epoch_batches(Arc::clone(&dataset), &loader, session.epoch),
                image_shape,
                device: options.device,
            },
        };
        let mut to_skip = session.batches_into_epoch;
        bar.inc(to_skip as u64);
        let mut interrupted = false;
        while let Some(images) = batches.next_batch(std::mem::take(&mut to_skip), &mut totals.stages) {
            let batch_len = images.size()[0] as usize;
            if batch_len < 2 {
                // Too many unreadable examples left a batch without negatives.
                session.batches_into_epoch += 1;
                continue;
            }
            let views_started = Instant::now();
            let inputs = session.step_inputs(images, options.channels_last);
            totals.stages.views += views_started.elapsed().as_secs_f64();
            let values = session.train_step(&inputs, &mut totals.stages)?;
            totals.steps += 1;
            totals.images += batch_len;
            totals.loss += values.loss;
            totals.mi += values.mi;
            add(&mut totals.global, values.global);
            add(&mut totals.local, values.local);
            add(&mut totals.global_to_global, values.global_to_global);
            add(&mut totals.prior, values.prior);
            add(&mut totals.discriminator, values.discriminator);
            session.batches_into_epoch += 1;
            bar.set_message(format!(
                "loss {:.4}  MI {:.4}  {:.0} img/s",
                totals.loss / totals.steps as f64,
                totals.mi / totals.steps as f64,
                totals.images as f64 / totals.stages.step_seconds()
            ));
            bar.inc(1);
            if options.stop.load(Ordering::SeqCst) {
                interrupted = true;
                break;
            }
        }
        drop(bar);
        let skipped = batches.skipped();
        if interrupted && session.batches_into_epoch < batch_count {
            session.save(&options.out_dir, None)?;
            outcome.skipped.extend(skipped);
            outcome.end = RunEnd::Interrupted;
            return Ok(outcome);
        }
        session.epoch += 1;
        session.batches_into_epoch = 0;
        let mut record =
            epoch_record(&session, &totals, epoch_started.elapsed().as_secs_f64(), skipped.len());
        if let Some(check) = options.retrieval.as_ref().filter(|check| check.due(session.epoch)) {
            let precision = check.precision(&session.model.encoder, options.device)?;
            if options.progress {
                eprintln!("epoch {}: held-out precision@10 {precision:.4}", session.epoch);
            }
            record.retrieval_precision_at_10 = Some(precision);
        }
        session.save(&options.out_dir, Some(&record))?;
        outcome.skipped.extend(skipped);
        outcome.epochs.push(record);
        if interrupted {
            // Stopped on the epoch's last step: the epoch-end checkpoint above is the one to keep.
            outcome.end = RunEnd::Interrupted;
            return Ok(outcome);
        }
    }
    Ok(outcome)
}

/// Where an epoch's batches come from: the host loader (copied to the device per step) or the
/// dataset held on the device. Both yield the same images.
enum EpochSource<'a> {
    Host { batches: EpochBatches, image_shape: [i64; 3], device: Device },
    Resident(ResidentEpoch<'a>),
}

impl EpochSource<'_> {
    /// The epoch's left-out examples so far, as (dataset index, reason).
    fn skipped(&self) -> Vec<(usize, String)> {
        match self {
            EpochSource::Host { batches, .. } => batches.skipped(),
            EpochSource::Resident(epoch) => epoch.skipped(),
        }
    }

    /// The next `[N, C, S, S]` batch on the training device after passing over `skip` batches
    /// (resuming mid-epoch: those are not put on the device), timed into `stages`.
    fn next_batch(&mut self, skip: usize, stages: &mut StepStages) -> Option<Tensor> {
        let started = Instant::now();
        match self {
            EpochSource::Host { batches, image_shape, device } => {
                let batch = batches.nth(skip);
                let handed_over = Instant::now();
                stages.waiting_for_loader += (handed_over - started).as_secs_f64();
                let images = batch.map(|batch| host_images(&batch, *image_shape, *device));
                stages.batch_to_device += handed_over.elapsed().as_secs_f64();
                images
            }
            EpochSource::Resident(epoch) => {
                let images = epoch.nth(skip);
                stages.batch_to_device += started.elapsed().as_secs_f64();
                images
            }
        }
    }
}

/// A host batch as `[N, C, S, S]` on `device`.
fn host_images(batch: &Batch, image_shape: [i64; 3], device: Device) -> Tensor {
    upload(&batch.images, device).reshape([batch.len as i64, image_shape[0], image_shape[1], image_shape[2]])
}

/// The same values with NHWC strides: tch has no memory-format argument, but libtorch picks its
/// channels-last kernels from the strides alone.
fn to_channels_last(tensor: &Tensor) -> Tensor {
    tensor.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

fn progress_bar(visible: bool, batches: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(batches as u64);
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
        .expect("the template is valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}

fn epoch_record(session: &Session, totals: &EpochTotals, seconds: f64, skipped: usize) -> EpochRecord {
    let steps = totals.steps.max(1) as f64;
    let mean = |sum: Option<f64>| sum.map(|s| s / steps);
    let step_seconds = totals.stages.step_seconds();
    EpochRecord {
        epoch: session.epoch,
        step: session.step,
        loss: totals.loss / steps,
        global_loss: mean(totals.global),
        local_loss: mean(totals.local),
        global_to_global_loss: mean(totals.global_to_global),
        prior_loss: mean(totals.prior),
        discriminator_loss: mean(totals.discriminator),
        mi_estimate: totals.mi / steps,
        images_per_second: if step_seconds > 0.0 { totals.images as f64 / step_seconds } else { 0.0 },
        seconds,
        skipped_examples: skipped,
        stage_seconds: Some(totals.stages),
        retrieval_precision_at_10: None,
    }
}

/// Stages the (small) log with `record` appended, to be committed with the epoch's checkpoint, so
/// a crash never leaves a torn line nor a log that disagrees with the checkpoint.
fn stage_log_with(path: &Path, record: &EpochRecord) -> Result<StagedFile, TrainError> {
    let log_error = |source| TrainError::Log { path: path.into(), source };
    let mut text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(log_error(error)),
    };
    text.push_str(&serde_json::to_string(record).map_err(|e| log_error(e.into()))?);
    text.push('\n');
    atomic_file::stage(path, |out| out.write_all(text.as_bytes())).map_err(log_error)
}

/// Reads `train_log.jsonl` back.
pub fn read_log(dir: &Path) -> Result<Vec<EpochRecord>, TrainError> {
    let path = dir.join(LOG_FILE);
    let text =
        std::fs::read_to_string(&path).map_err(|source| TrainError::Log { path: path.clone(), source })?;
    text.lines()
        .map(|line| {
            serde_json::from_str(line).map_err(|e| TrainError::Log { path: path.clone(), source: e.into() })
        })
        .collect()
}

/// Largest absolute difference between the variables of two checkpoints' weights (for tests and
/// reproducibility checks).
pub fn max_weight_difference(a: &Path, b: &Path) -> Result<f64, TrainError> {
    let first = checkpoint::read_tensors(&a.join(dim_models::checkpoint::WEIGHTS_FILE))?;
    let second = checkpoint::read_tensors(&b.join(dim_models::checkpoint::WEIGHTS_FILE))?;
    let mut largest = 0.0f64;
    for (name, tensor) in &first {
        let other = second
            .get(name)
            .ok_or_else(|| CheckpointIoError::MissingTensor { path: b.into(), name: name.clone() })?;
        let difference =
            (tensor.to_kind(Kind::Double) - other.to_kind(Kind::Double)).abs().max().double_value(&[]);
        largest = largest.max(difference);
    }
    Ok(largest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_scalars_together_gives_each_value_as_read_alone_in_its_place() {
        let values = [0.1f32, -3.25e-7, 12_345.678, f32::NAN];
        let tensors: Vec<Tensor> = values.iter().map(|&v| Tensor::from(v)).collect();
        let read = read_scalars([
            Some(&tensors[0]),
            None,
            Some(&tensors[1]),
            Some(&tensors[2]),
            None,
            Some(&tensors[3]),
        ]);
        assert_eq!(read[0], Some(tensors[0].double_value(&[])));
        assert_eq!(read[1], None);
        assert_eq!(read[2], Some(tensors[1].double_value(&[])));
        assert_eq!(read[3], Some(f64::from(values[2])));
        assert_eq!(read[4], None);
        assert!(read[5].is_some_and(f64::is_nan), "a NaN stays NaN so the finiteness check still sees it");
        assert_eq!(read_scalars::<2>([None, None]), [None, None]);
    }

    #[test]
    fn stage_shares_are_of_the_step_time_and_the_loaders_wait_is_given_apart() {
        let stages = StepStages {
            waiting_for_loader: 2.0,
            batch_to_device: 0.5,
            views: 1.0,
            forward: 3.0,
            reading_losses: 0.5,
            update: 5.0,
        };
        assert_eq!(stages.step_seconds(), 10.0);
        assert_eq!(
            stages.describe(),
            "batch to device 5%, views 10%, forward 30%, reading losses 5%, update 50%; waited 2.0 s for the loader"
        );
        let unhindered = StepStages { waiting_for_loader: 0.01, ..stages };
        assert!(!unhindered.describe().contains("loader"), "{}", unhindered.describe());
        assert!(StepStages::default().describe().starts_with("batch to device 0%"));
    }

    #[test]
    fn reading_scalars_leaves_the_graph_for_the_backward_pass() {
        let weight = Tensor::from(2.0f32).set_requires_grad(true);
        let loss = &weight * &weight;
        let [value] = read_scalars([Some(&loss)]);
        assert_eq!(value, Some(4.0));
        loss.backward();
        assert_eq!(weight.grad().double_value(&[]), 4.0);
    }
}
