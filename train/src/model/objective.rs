//! The DIM objective: the encoder with its critics and prior discriminator, and the loss
//! `α·global + β·local + γ·prior (+ δ·global-to-global)` for the encoder side, on the images as
//! loaded or across two augmented views, with the optional levers (occlusion of the global view,
//! extra global vectors, AMDIM's score stabilisers).

use crate::model::critics::{GlobalCritic, LocalCritic, ViewCritic};
use crate::model::encoder::{Encoder, Statistics};
use crate::model::estimators::{Estimator, MiEstimate, ScoreStabiliser, global_to_global};
use crate::model::extra_globals::ExtraGlobals;
use crate::model::occlusion::Occlusion;
use crate::model::prior::Discriminator;
use dim_models::EncoderConfig;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

/// The paper's named weightings of the three terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Local MI only, with a light prior: α = 0, β = 1, γ = 0.1 (the paper's best).
    DimL,
    /// Global MI with the prior: α = 1, β = 0, γ = 1.
    DimG,
}

/// Weights of the global MI, local MI and prior terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveWeights {
    /// α, weight of the global MI loss.
    pub alpha: f64,
    /// β, weight of the local MI loss.
    pub beta: f64,
    /// γ, weight of the prior-matching (generator) loss.
    pub gamma: f64,
}

impl Mode {
    /// The mode's weights.
    pub fn weights(self) -> ObjectiveWeights {
        match self {
            Mode::DimL => ObjectiveWeights { alpha: 0.0, beta: 1.0, gamma: 0.1 },
            Mode::DimG => ObjectiveWeights { alpha: 1.0, beta: 0.0, gamma: 1.0 },
        }
    }
}

/// The global-to-global infoNCE term across two views: its weight and temperature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GlobalToGlobal {
    /// δ, the term's weight; 0 = off.
    pub weight: f64,
    /// Temperature τ of the cosine similarities.
    pub temperature: f64,
}

impl Default for GlobalToGlobal {
    /// Off, with τ = 0.2 ready for when it is turned on.
    fn default() -> Self {
        GlobalToGlobal { weight: 0.0, temperature: 0.2 }
    }
}

/// The optional levers on the MI terms; the default turns them all off.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Levers {
    /// Side in pixels of the square blanked in each image before the global side (Y for the MI
    /// terms, and the extra globals) is computed; 0 = no occlusion.
    pub occlusion_size: usize,
    /// Global vectors computed from M besides Y, scored by the local critic (β > 0); 0 = only Y.
    pub extra_globals: usize,
    /// Soft clipping and squared-score penalty of the local and global critics' scores.
    pub stabiliser: ScoreStabiliser,
    /// The global-to-global term (cross-view training only).
    pub global_to_global: GlobalToGlobal,
}

/// The encoder side's loss for one batch and its parts (scalars).
#[derive(Debug)]
pub struct EncoderLoss {
    /// `α·global + β·local + γ·generator + δ·global-to-global`, to minimise over the encoder and
    /// critics.
    pub total: Tensor,
    /// The global critic's estimate when α > 0.
    pub global: Option<MiEstimate>,
    /// The local critic's estimate when β > 0 (averaged over Y and the extra globals, and over
    /// both directions across views).
    pub local: Option<MiEstimate>,
    /// The global-to-global estimate when δ > 0.
    pub global_to_global: Option<MiEstimate>,
    /// The generator loss when γ > 0.
    pub prior: Option<Tensor>,
    /// The batch's Y (of the whole images, or of both views), for the discriminator's step.
    pub y: Tensor,
}

/// The encoder with the critics and discriminator its objective needs (a term with weight 0
/// gets no module, so it costs nothing).
#[derive(Debug)]
pub struct DimModel {
    /// The encoder being learned.
    pub encoder: Encoder,
    /// Local critic, when β > 0.
    pub local_critic: Option<LocalCritic>,
    /// Global critic, when α > 0.
    pub global_critic: Option<GlobalCritic>,
    /// View critic, when the global-to-global term is on.
    pub view_critic: Option<ViewCritic>,
    /// Prior discriminator, when γ > 0.
    pub discriminator: Option<Discriminator>,
    /// Extra global vectors, when asked for and β > 0.
    pub extra_globals: Option<ExtraGlobals>,
    occlusion: Option<Occlusion>,
    weights: ObjectiveWeights,
    estimator: Estimator,
    stabiliser: ScoreStabiliser,
    temperature: f64,
    global_to_global_weight: f64,
}

/// One pairing the MI terms score: the local maps, and the global side (Y and the map the extra
/// globals are computed from) that is paired with them.
struct Pairing {
    local: Tensor,
    global_local: Tensor,
    y: Tensor,
}

impl DimModel {
    /// Creates every module's variables under `root` (the occlusion size must be smaller than
    /// the input, as `TrainSettings::validate` checks).
    pub fn new(
        root: &nn::Path,
        config: EncoderConfig,
        weights: ObjectiveWeights,
        estimator: Estimator,
        critic_width: usize,
        levers: Levers,
    ) -> Self {
        let dims = config.tap_dims();
        let local_term = weights.beta != 0.0;
        let global_to_global = levers.global_to_global;
        DimModel {
            encoder: Encoder::new(root, config),
            local_critic: local_term.then(|| LocalCritic::new(root, dims.local[0], dims.y, critic_width)),
            global_critic: (weights.alpha != 0.0).then(|| GlobalCritic::new(root, &config, critic_width)),
            view_critic: (global_to_global.weight != 0.0)
                .then(|| ViewCritic::new(root, dims.y, critic_width)),
            discriminator: (weights.gamma != 0.0).then(|| Discriminator::new(root, dims.y)),
            extra_globals: (local_term && levers.extra_globals > 0)
                .then(|| ExtraGlobals::new(root, dims.local[0], dims.y, levers.extra_globals)),
            occlusion: Occlusion::new(levers.occlusion_size),
            weights,
            estimator,
            stabiliser: levers.stabiliser,
            temperature: global_to_global.temperature,
            global_to_global_weight: global_to_global.weight,
        }
    }

    /// The encoder side's loss on images `[N, C, H, W]` in [0, 1] (training mode), with the
    /// global side computed from randomly occluded copies when occlusion is on.
    pub fn encoder_loss(&self, images: &Tensor) -> EncoderLoss {
        let global_view = self.occlusion.map(|occlusion| occlusion.occlude(images));
        self.encoder_loss_on_views(images, global_view.as_ref())
    }

    /// The encoder side's loss with the global side of the MI terms (Y and the extra globals)
    /// computed from `global_view` when given, else from `images`. The local maps, and the Y that
    /// the prior shapes, always come from `images`: they are what the exported encoder sees.
    pub fn encoder_loss_on_views(&self, images: &Tensor, global_view: Option<&Tensor>) -> EncoderLoss {
        let whole = self.encoder.forward_taps_with(images, Statistics::Batch);
        let viewed = global_view.map(|view| self.encoder.forward_taps_with(view, Statistics::BatchUntracked));
        let global_side = viewed.as_ref().unwrap_or(&whole);
        let pairing = Pairing {
            local: whole.local.shallow_clone(),
            global_local: global_side.local.shallow_clone(),
            y: global_side.y.shallow_clone(),
        };
        self.loss_of_pairings(&[pairing], None, whole.y)
    }

    /// The cross-view loss on two views `[N, C, H, W]` of the same N images: the global side of
    /// each view is scored against the local maps of the other (both directions, averaged), the
    /// global-to-global term compares the two views' Y, and the prior shapes the Y of both. The
    /// views go through the encoder as one batch of 2N; with occlusion, the global side comes
    /// from occluded copies of the views.
    pub fn cross_view_loss(&self, view_a: &Tensor, view_b: &Tensor) -> EncoderLoss {
        let n = view_a.size()[0];
        let views = Tensor::cat(&[view_a, view_b], 0);
        let global_views = self.occlusion.map(|occlusion| occlusion.occlude(&views));
        let whole = self.encoder.forward_taps_with(&views, Statistics::Batch);
        let viewed =
            global_views.map(|view| self.encoder.forward_taps_with(&view, Statistics::BatchUntracked));
        let global_side = viewed.as_ref().unwrap_or(&whole);
        let half = |tensor: &Tensor, index: i64| tensor.narrow(0, index * n, n);
        let pairing = |local_half: i64, global_half: i64| Pairing {
            local: half(&whole.local, local_half),
            global_local: half(&global_side.local, global_half),
            y: half(&global_side.y, global_half),
        };
        let views_y = (half(&whole.y, 0), half(&whole.y, 1));
        self.loss_of_pairings(&[pairing(1, 0), pairing(0, 1)], Some(views_y), whole.y)
    }

    /// Scores each pairing with the MI terms (averaging over pairings), adds the
    /// global-to-global term on `views_y` and the prior on `prior_y`.
    fn loss_of_pairings(
        &self,
        pairings: &[Pairing],
        views_y: Option<(Tensor, Tensor)>,
        prior_y: Tensor,
    ) -> EncoderLoss {
        let mut total = Tensor::zeros([], (Kind::Float, prior_y.device()));
        let global = self.global_critic.as_ref().map(|critic| {
            let estimates = pairings
                .iter()
                .map(|pairing| {
                    self.stabiliser.estimate(self.estimator, &critic.scores(&pairing.local, &pairing.y, true))
                })
                .collect();
            let estimate = mean_estimate(estimates);
            total += &estimate.loss * self.weights.alpha;
            estimate
        });
        let local = self.local_critic.as_ref().map(|critic| {
            let mut estimates = Vec::new();
            for pairing in pairings {
                let mut globals = vec![pairing.y.shallow_clone()];
                if let Some(extra_globals) = &self.extra_globals {
                    globals.extend(extra_globals.forward(&pairing.global_local, true));
                }
                estimates.extend(
                    critic
                        .scores_for_each(&pairing.local, &globals, true)
                        .iter()
                        .map(|scores| self.stabiliser.estimate(self.estimator, scores)),
                );
            }
            let estimate = mean_estimate(estimates);
            total += &estimate.loss * self.weights.beta;
            estimate
        });
        let global_to_global = match (&self.view_critic, views_y) {
            (Some(critic), Some((y_a, y_b))) => {
                let estimate =
                    global_to_global(&critic.embed(&y_a, true), &critic.embed(&y_b, true), self.temperature);
                total += &estimate.loss * self.global_to_global_weight;
                Some(estimate)
            }
            _ => None,
        };
        let prior = self.discriminator.as_ref().map(|discriminator| {
            let loss = discriminator.generator_loss(&prior_y);
            total += &loss * self.weights.gamma;
            loss
        });
        EncoderLoss { total, global, local, global_to_global, prior, y: prior_y }
    }
}

/// The mean loss and MI estimate of one term's estimates (one per global vector).
fn mean_estimate(estimates: Vec<MiEstimate>) -> MiEstimate {
    let (losses, mis): (Vec<Tensor>, Vec<Tensor>) =
        estimates.into_iter().map(|estimate| (estimate.loss, estimate.mi)).unzip();
    MiEstimate {
        loss: Tensor::stack(&losses, 0).mean(Kind::Float),
        mi: Tensor::stack(&mis, 0).mean(Kind::Float),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::Preset;
    use dim_models::parameters::encoder_parameters;
    use std::collections::BTreeSet;
    use tch::Device;

    const LOCAL_ONLY: ObjectiveWeights = ObjectiveWeights { alpha: 0.0, beta: 1.0, gamma: 0.0 };

    fn model(store: &nn::VarStore, weights: ObjectiveWeights, levers: Levers) -> DimModel {
        let config = EncoderConfig::new(Preset::Basic32x32, 1).unwrap();
        DimModel::new(&store.root(), config, weights, Estimator::Jsd, 32, levers)
    }

    fn images() -> Tensor {
        Tensor::rand([4, 1, 32, 32], (Kind::Float, Device::Cpu))
    }

    fn has_gradient(tensor: &Tensor) -> bool {
        let grad = tensor.grad();
        grad.defined() && grad.abs().sum(Kind::Float).double_value(&[]) > 0.0
    }

    #[test]
    fn gradients_reach_the_encoder_through_the_occluded_and_the_whole_view() {
        let _turn = crate::torch_generator::exclusive();
        for weights in [LOCAL_ONLY, ObjectiveWeights { alpha: 1.0, beta: 0.0, gamma: 0.0 }] {
            let store = nn::VarStore::new(Device::Cpu);
            let model = model(&store, weights, Levers { occlusion_size: 8, ..Levers::default() });
            let whole = images().set_requires_grad(true);
            let occluded = model.occlusion.unwrap().occlude(&whole.detach()).set_requires_grad(true);
            let loss = model.encoder_loss_on_views(&whole, Some(&occluded));
            loss.total.backward();
            // The whole images reach the loss only through M, the occluded ones only through Y.
            assert!(has_gradient(&whole), "{weights:?}");
            assert!(has_gradient(&occluded), "{weights:?}");
            let variables = store.variables();
            assert!(has_gradient(&variables["encoder.conv1.conv.weight"]));
            assert!(has_gradient(&variables["encoder.y.linear.weight"]), "Y's layer gets no gradient");
        }
    }

    #[test]
    fn occlusion_changes_only_the_global_side() {
        let _turn = crate::torch_generator::exclusive();
        let store = nn::VarStore::new(Device::Cpu);
        let model = model(&store, LOCAL_ONLY, Levers { occlusion_size: 16, ..Levers::default() });
        let images = images();
        let plain = model.encoder_loss_on_views(&images, None);
        let same_view = model.encoder_loss_on_views(&images, Some(&images));
        let occluded = model.encoder_loss(&images);
        let local_loss = |loss: &EncoderLoss| loss.local.as_ref().unwrap().loss.double_value(&[]);
        assert!((local_loss(&plain) - local_loss(&same_view)).abs() < 1e-5);
        assert!((local_loss(&plain) - local_loss(&occluded)).abs() > 1e-6);
        assert!(plain.y.allclose(&occluded.y, 1e-5, 1e-5, false), "the prior's Y must be the whole image's");
    }

    #[test]
    fn extra_globals_get_gradients_and_leave_the_encoder_names_alone() {
        let _turn = crate::torch_generator::exclusive();
        for extra_globals in [1, 3] {
            let store = nn::VarStore::new(Device::Cpu);
            let model = model(&store, Mode::DimL.weights(), Levers { extra_globals, ..Levers::default() });
            let loss = model.encoder_loss(&images());
            assert!(loss.total.double_value(&[]).is_finite());
            assert_eq!(loss.local.as_ref().unwrap().loss.size(), Vec::<i64>::new());
            loss.total.backward();
            let variables = store.variables();
            assert!(has_gradient(&variables["extra_globals.conv.weight"]), "{extra_globals}");
            assert!(has_gradient(&variables["encoder.conv1.conv.weight"]));
            let config = model.encoder.config();
            let contract: BTreeSet<String> =
                encoder_parameters(config).into_iter().map(|spec| spec.name).collect();
            let encoder_names: BTreeSet<String> =
                variables.into_keys().filter(|name| name.starts_with("encoder.")).collect();
            assert_eq!(encoder_names, contract);
        }
    }

    #[test]
    fn the_local_term_averages_the_estimates_of_y_and_the_extra_globals() {
        let _turn = crate::torch_generator::exclusive();
        let store = nn::VarStore::new(Device::Cpu);
        let model = model(&store, LOCAL_ONLY, Levers { extra_globals: 2, ..Levers::default() });
        let images = images();
        // Run in evaluation mode so repeated passes give the same numbers.
        let taps = model.encoder.forward_taps(&images, false);
        let critic = model.local_critic.as_ref().unwrap();
        let mut globals = vec![taps.y.shallow_clone()];
        globals.extend(model.extra_globals.as_ref().unwrap().forward(&taps.local, false));
        let each: Vec<f64> = critic
            .scores_for_each(&taps.local, &globals, false)
            .iter()
            .map(|scores| Estimator::Jsd.estimate(scores).loss.double_value(&[]))
            .collect();
        let alone =
            Estimator::Jsd.estimate(&critic.scores(&taps.local, &taps.y, false)).loss.double_value(&[]);
        assert!((each[0] - alone).abs() < 1e-6);
        let estimates = each
            .iter()
            .map(|&loss| MiEstimate { loss: Tensor::from(loss), mi: Tensor::from(-loss) })
            .collect();
        let mean = mean_estimate(estimates);
        assert!((mean.loss.double_value(&[]) - each.iter().sum::<f64>() / 3.0).abs() < 1e-6);
    }

    #[test]
    fn extra_globals_need_the_local_term() {
        let _turn = crate::torch_generator::exclusive();
        let store = nn::VarStore::new(Device::Cpu);
        let model = model(&store, Mode::DimG.weights(), Levers { extra_globals: 2, ..Levers::default() });
        assert!(model.extra_globals.is_none());
    }

    #[test]
    fn cross_view_loss_on_identical_views_equals_the_plain_loss_and_feeds_every_module() {
        let _turn = crate::torch_generator::exclusive();
        let store = nn::VarStore::new(Device::Cpu);
        let levers = Levers {
            global_to_global: GlobalToGlobal { weight: 0.5, temperature: 0.2 },
            stabiliser: ScoreStabiliser { clip: 10.0, penalty: 1e-3 },
            ..Levers::default()
        };
        let model = model(&store, ObjectiveWeights { alpha: 0.5, beta: 1.0, gamma: 0.1 }, levers);
        let images = images();
        // Two copies of one batch give BatchNorm the same statistics as the batch alone, and each
        // direction then pairs an image's Y with its own local map: the plain objective.
        let plain = model.encoder_loss(&images);
        let cross = model.cross_view_loss(&images, &images);
        let value = |estimate: &Option<MiEstimate>| estimate.as_ref().unwrap().loss.double_value(&[]);
        assert!((value(&plain.local) - value(&cross.local)).abs() < 1e-4);
        assert!((value(&plain.global) - value(&cross.global)).abs() < 1e-4);
        assert_eq!(cross.y.size(), [8, 64], "the prior sees the Y of both views");
        assert!(plain.global_to_global.is_none(), "one view has no global-to-global term");

        let other = images.flip([3]);
        let loss = model.cross_view_loss(&images, &other);
        assert!((value(&loss.local) - value(&plain.local)).abs() > 1e-6);
        assert!(value(&loss.global_to_global).is_finite());
        loss.total.backward();
        let variables = store.variables();
        for name in [
            "encoder.conv1.conv.weight",
            "encoder.y.linear.weight",
            "local_critic.local.hidden.weight",
            "global_critic.global.output.weight",
            "view_critic.hidden.weight",
        ] {
            assert!(has_gradient(&variables[name]), "{name} gets no gradient");
        }
    }

    #[test]
    fn global_to_global_alone_trains_the_encoder_through_the_view_critic() {
        let _turn = crate::torch_generator::exclusive();
        let store = nn::VarStore::new(Device::Cpu);
        let levers = Levers {
            global_to_global: GlobalToGlobal { weight: 1.0, temperature: 0.2 },
            ..Levers::default()
        };
        let model = model(&store, ObjectiveWeights { alpha: 0.0, beta: 0.0, gamma: 0.0 }, levers);
        assert!(model.local_critic.is_none() && model.global_critic.is_none());
        let images = images();
        let loss = model.cross_view_loss(&images, &images.flip([3]));
        assert!(loss.local.is_none() && loss.global.is_none());
        let estimate = loss.global_to_global.as_ref().unwrap();
        assert!((loss.total.double_value(&[]) - estimate.loss.double_value(&[])).abs() < 1e-6);
        loss.total.backward();
        assert!(has_gradient(&store.variables()["encoder.conv1.conv.weight"]));
    }
}
