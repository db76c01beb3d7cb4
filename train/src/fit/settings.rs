//! The trainer's settings: everything that determines a training run's result, checked once and
//! saved in every checkpoint's config so a run can be resumed or reproduced exactly.

use crate::data::DataFormat;
use crate::data::views::{ViewAugmentation, ViewMode};
use crate::fit::optim::AdamConfig;
use crate::model::estimators::Estimator;
use crate::model::estimators::ScoreStabiliser;
use crate::model::objective::{GlobalToGlobal, Levers, Mode, ObjectiveWeights};
use dim_models::Preset;
use dim_models::preprocess::{Background, ResizePolicy};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Settings of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Dataset path (directory or file).
    pub data: PathBuf,
    /// Dataset format (saved by its command-line name: `auto`, `idx`, `cifar10`, ...).
    pub format: DataFormat,
    /// Encoder architecture.
    pub preset: Preset,
    /// Input channels (1 or 3).
    pub channels: usize,
    /// How images are fitted to the input size.
    pub resize: ResizePolicy,
    /// What transparent pixels are composited over (runs saved before it was recorded dropped
    /// alpha, and resume that way).
    #[serde(default = "Background::legacy")]
    pub background: Background,
    /// Total number of epochs to train.
    pub epochs: usize,
    /// Images per batch (every other image in the batch provides negatives).
    pub batch_size: usize,
    /// Named weighting the weights came from.
    pub mode: Mode,
    /// α, β, γ (the mode's, or overridden).
    pub weights: ObjectiveWeights,
    /// MI estimator.
    pub estimator: Estimator,
    /// Critic embedding width U.
    pub critic_width: usize,
    /// Adam learning rate (both optimisers).
    pub lr: f64,
    /// Adam first-moment decay.
    pub beta1: f64,
    /// Adam second-moment decay.
    pub beta2: f64,
    /// Seed of the initial weights, the data order, the augmentation and the prior samples.
    pub seed: u64,
    /// Random horizontal flips.
    pub flip: bool,
    /// Random-crop padding in pixels (0 = none).
    pub crop_padding: usize,
    /// Use only the first this-many examples.
    pub limit: Option<usize>,
    /// Side in pixels of the random square blanked before the global vector is computed
    /// (0 = none; runs saved before it existed had none).
    #[serde(default)]
    pub occlusion_size: usize,
    /// Global vectors computed from the local map besides Y for the local term (0 = only Y; runs
    /// saved before it existed had none).
    #[serde(default)]
    pub extra_globals: usize,
    /// Which images the MI terms see: as loaded, one augmented view, or two views across
    /// (runs saved before it existed trained on the images as loaded).
    #[serde(default)]
    pub views: ViewMode,
    /// The ranges the augmented views are drawn from (used when `views` is not `off`).
    #[serde(default)]
    pub augmentation: ViewAugmentation,
    /// The global-to-global term across views (off in runs saved before it existed).
    #[serde(default)]
    pub global_to_global: GlobalToGlobal,
    /// Soft-clipping scale of the critics' scores, c·tanh(s/c); 0 = none.
    #[serde(default)]
    pub score_clip: f64,
    /// Weight of the mean squared critic score added to the loss; 0 = none.
    #[serde(default)]
    pub score_penalty: f64,
}

/// Why settings are unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl TrainSettings {
    /// Settings with the official defaults for `data`: basic32x32, grey, pad, alpha over white, DIM(L), JSD,
    /// U = 2048, batch 64, Adam 1e-4 (0.5, 0.999), seed 0.
    pub fn new(data: PathBuf) -> Self {
        let adam = AdamConfig::dim_default();
        TrainSettings {
            data,
            format: DataFormat::Auto,
            preset: Preset::Basic32x32,
            channels: 1,
            resize: ResizePolicy::Pad,
            background: Background::White,
            epochs: 1,
            batch_size: 64,
            mode: Mode::DimL,
            weights: Mode::DimL.weights(),
            estimator: Estimator::Jsd,
            critic_width: 2048,
            lr: adam.lr,
            beta1: adam.beta1,
            beta2: adam.beta2,
            seed: 0,
            flip: false,
            crop_padding: 0,
            limit: None,
            occlusion_size: 0,
            extra_globals: 0,
            views: ViewMode::Off,
            augmentation: ViewAugmentation::default(),
            global_to_global: GlobalToGlobal::default(),
            score_clip: 0.0,
            score_penalty: 0.0,
        }
    }

    /// Checks the values serde and clap cannot.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |message: String| Err(SettingsError::Invalid(message));
        if self.batch_size < 2 {
            return invalid(format!(
                "batch size must be at least 2 (negatives come from the other images), got {}",
                self.batch_size
            ));
        }
        if self.critic_width == 0 {
            return invalid("critic width must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return invalid(format!("learning rate must be positive, got {}", self.lr));
        }
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return invalid(format!("{name} must be in [0, 1), got {beta}"));
            }
        }
        let ObjectiveWeights { alpha, beta, gamma } = self.weights;
        if [alpha, beta, gamma].iter().any(|w| !w.is_finite() || *w < 0.0) {
            return invalid(format!(
                "alpha, beta and gamma must be finite and ≥ 0, got {alpha}, {beta}, {gamma}"
            ));
        }
        let GlobalToGlobal { weight: delta, temperature } = self.global_to_global;
        if !(delta.is_finite() && delta >= 0.0) {
            return invalid(format!("the global-to-global weight must be finite and ≥ 0, got {delta}"));
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            return invalid(format!("the global-to-global temperature must be positive, got {temperature}"));
        }
        if delta > 0.0 && self.views != ViewMode::Cross {
            return invalid("the global-to-global term compares two views: it needs --views cross".into());
        }
        if alpha == 0.0 && beta == 0.0 && delta == 0.0 {
            return invalid(
                "alpha, beta and the global-to-global weight are all 0: there is no mutual-information \
                 term to train"
                    .into(),
            );
        }
        for (name, value) in [("score clip", self.score_clip), ("score penalty", self.score_penalty)] {
            if !(value.is_finite() && value >= 0.0) {
                return invalid(format!("the {name} must be finite and ≥ 0, got {value}"));
            }
        }
        if self.views != ViewMode::Off {
            self.augmentation.validate().map_err(SettingsError::Invalid)?;
        }
        if self.limit == Some(0) {
            return invalid("--limit must be at least 1".into());
        }
        if !matches!(self.channels, 1 | 3) {
            return invalid(format!("channels must be 1 or 3, got {}", self.channels));
        }
        let input_size = self.preset.input_size();
        if self.occlusion_size >= input_size {
            return invalid(format!(
                "the occlusion size must be smaller than the {input_size}-pixel input, got {}",
                self.occlusion_size
            ));
        }
        if self.extra_globals > 0 && beta == 0.0 {
            return invalid("extra global vectors are scored by the local term, but beta is 0".into());
        }
        Ok(())
    }

    /// The optional levers on the MI terms.
    pub fn levers(&self) -> Levers {
        Levers {
            occlusion_size: self.occlusion_size,
            extra_globals: self.extra_globals,
            stabiliser: ScoreStabiliser { clip: self.score_clip, penalty: self.score_penalty },
            global_to_global: self.global_to_global,
        }
    }

    /// The optimisers' hyper-parameters.
    pub fn adam(&self) -> AdamConfig {
        AdamConfig { lr: self.lr, beta1: self.beta1, beta2: self.beta2, ..AdamConfig::dim_default() }
    }
}

/// What a checkpoint's `training` field holds: the settings and how far into the next epoch the
/// run had got when it was saved (non-zero only after an interruption).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// The run's settings.
    #[serde(flatten)]
    pub settings: TrainSettings,
    /// Batches of epoch `epoch` (0-based: the first unfinished one) already trained on.
    pub batches_into_epoch: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_refused_with_a_reason() {
        let settings = TrainSettings::new("data".into());
        settings.validate().unwrap();
        let broken = [
            TrainSettings { batch_size: 1, ..settings.clone() },
            TrainSettings { lr: 0.0, ..settings.clone() },
            TrainSettings {
                weights: ObjectiveWeights { alpha: 0.0, beta: 0.0, gamma: 1.0 },
                ..settings.clone()
            },
            TrainSettings { limit: Some(0), ..settings.clone() },
            TrainSettings { occlusion_size: 32, ..settings.clone() },
            TrainSettings {
                mode: Mode::DimG,
                weights: Mode::DimG.weights(),
                extra_globals: 2,
                ..settings.clone()
            },
        ];
        for bad in broken {
            let SettingsError::Invalid(message) = bad.validate().unwrap_err();
            assert!(!message.is_empty());
        }
        let state = TrainingState { settings, batches_into_epoch: 3 };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["estimator"], "jsd");
        assert_eq!(json["mode"], "dim-l");
        assert_eq!(serde_json::from_value::<TrainingState>(json).unwrap(), state);
    }

    #[test]
    fn the_levers_round_trip_and_settings_saved_without_them_still_load() {
        let settings =
            TrainSettings { occlusion_size: 8, extra_globals: 3, ..TrainSettings::new("data".into()) };
        settings.validate().unwrap();
        assert_eq!(settings.levers(), Levers { occlusion_size: 8, extra_globals: 3, ..Levers::default() });
        let state = TrainingState { settings, batches_into_epoch: 0 };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!((json["occlusion_size"].as_u64(), json["extra_globals"].as_u64()), (Some(8), Some(3)));
        assert_eq!(serde_json::from_value::<TrainingState>(json.clone()).unwrap(), state);

        let mut old = json;
        let fields = old.as_object_mut().unwrap();
        for field in [
            "occlusion_size",
            "extra_globals",
            "views",
            "augmentation",
            "global_to_global",
            "score_clip",
            "score_penalty",
        ] {
            fields.remove(field);
        }
        let loaded = serde_json::from_value::<TrainingState>(old).unwrap();
        assert_eq!(loaded.settings.levers(), Levers::default());
        assert_eq!(loaded.settings, TrainSettings { occlusion_size: 0, extra_globals: 0, ..state.settings });
    }

    #[test]
    fn cross_view_settings_round_trip_and_inconsistent_ones_are_refused() {
        let cross = TrainSettings {
            views: ViewMode::Cross,
            weights: ObjectiveWeights { alpha: 0.0, beta: 0.0, gamma: 0.0 },
            global_to_global: GlobalToGlobal { weight: 1.0, temperature: 0.1 },
            score_clip: 10.0,
            score_penalty: 1e-3,
            augmentation: ViewAugmentation { min_area: 0.5, ..ViewAugmentation::default() },
            ..TrainSettings::new("data".into())
        };
        cross.validate().unwrap();
        let json =
            serde_json::to_value(TrainingState { settings: cross.clone(), batches_into_epoch: 0 }).unwrap();
        assert_eq!(json["views"], "cross");
        assert_eq!(json["augmentation"]["min_area"], 0.5);
        assert_eq!(serde_json::from_value::<TrainingState>(json).unwrap().settings, cross);
        let levers = cross.levers();
        assert_eq!(levers.stabiliser, ScoreStabiliser { clip: 10.0, penalty: 1e-3 });
        for bad in [
            TrainSettings { views: ViewMode::Same, ..cross.clone() },
            TrainSettings {
                global_to_global: GlobalToGlobal { weight: 0.0, temperature: 0.1 },
                ..cross.clone()
            },
            TrainSettings {
                global_to_global: GlobalToGlobal { weight: 1.0, temperature: 0.0 },
                ..cross.clone()
            },
            TrainSettings { score_clip: -1.0, ..cross.clone() },
            TrainSettings {
                augmentation: ViewAugmentation { max_area: 2.0, ..ViewAugmentation::default() },
                ..cross.clone()
            },
        ] {
            let SettingsError::Invalid(message) = bad.validate().unwrap_err();
            assert!(!message.is_empty());
        }
    }
}
