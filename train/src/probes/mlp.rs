//! The DIM paper's nonlinear probe: Linear(D→200) → BatchNorm → ReLU → Dropout(0.1) →
//! Linear(200→classes), trained with Adam on frozen features.
//!
//! The paper trains with Adam at 1e-4 for a long run, dividing the learning rate by 10 at epochs
//! 50 and 100. That schedule is available (`epochs: 150, learning_rate: 1e-4, lr_drop_epochs:
//! [50, 100]`), but the default is a short one (20 epochs at 1e-3, drops at 10 and 15) so that a
//! probe on 60,000 × 4,096 features finishes in a few minutes on two CPU cores.

use super::{ProbeData, ProbeError, ProbeScore, TrainingSchedule, accuracy};
use tch::{Device, Tensor, nn, nn::ModuleT, nn::OptimizerConfig};

/// Hidden units of the paper's probe.
pub const HIDDEN_UNITS: i64 = 200;
/// Dropout probability of the paper's probe.
pub const DROPOUT: f64 = 0.1;

/// Default schedule (a shortened version of the paper's; see the module docs).
pub fn default_schedule() -> TrainingSchedule {
    TrainingSchedule {
        epochs: 20,
        batch_size: 128,
        learning_rate: 1e-3,
        weight_decay: 0.0,
        lr_drop_epochs: vec![10, 15],
        seed: 0,
    }
}

/// The probe network.
#[derive(Debug)]
struct MlpProbe {
    hidden: nn::Linear,
    batch_norm: nn::BatchNorm,
    output: nn::Linear,
}

impl MlpProbe {
    fn new(root: &nn::Path, dims: i64, classes: i64) -> Self {
        MlpProbe {
            hidden: nn::linear(root / "hidden", dims, HIDDEN_UNITS, Default::default()),
            batch_norm: nn::batch_norm1d(root / "bn", HIDDEN_UNITS, Default::default()),
            output: nn::linear(root / "output", HIDDEN_UNITS, classes, Default::default()),
        }
    }
}

impl ModuleT for MlpProbe {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.hidden)
            .apply_t(&self.batch_norm, train)
            .relu()
            .dropout(DROPOUT, train)
            .apply(&self.output)
    }
}

/// Trains the MLP probe on the train split and scores it (in eval mode) on both splits.
pub fn train_mlp_probe(
    data: &ProbeData,
    schedule: &TrainingSchedule,
    device: Device,
    progress: &indicatif::ProgressBar,
) -> Result<ProbeScore, ProbeError> {
    schedule.validate()?;
    if data.train_len() < 2 {
        return Err(ProbeError::Shape("the MLP probe's BatchNorm needs at least 2 training rows".into()));
    }
    tch::manual_seed(schedule.seed as i64);
    let store = nn::VarStore::new(device);
    let probe = MlpProbe::new(&store.root(), data.dims() as i64, data.num_classes as i64);
    let mut optimizer =
        nn::Adam { wd: schedule.weight_decay, ..Default::default() }.build(&store, schedule.learning_rate)?;
    schedule.run(data, device, &mut optimizer, progress, |x, y| {
        probe.forward_t(x, true).cross_entropy_for_logits(y)
    });
    let logits_of = |x: &Tensor| probe.forward_t(x, false);
    Ok(ProbeScore {
        test_accuracy: accuracy(&data.test_features, &data.test_labels, device, logits_of),
        train_accuracy: Some(accuracy(&data.train_features, &data.train_labels, device, logits_of)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::linear::train_linear_probe;
    use crate::probes::test_data::{probe_data, xor};

    #[test]
    fn learns_xor_which_the_linear_probe_cannot() {
        let data = probe_data(xor(1000, 1), xor(500, 2), 2).standardised();
        let schedule =
            TrainingSchedule { epochs: 40, batch_size: 64, learning_rate: 1e-2, ..default_schedule() };
        let hidden = indicatif::ProgressBar::hidden();
        let mlp = train_mlp_probe(&data, &schedule, Device::Cpu, &hidden).unwrap();
        let linear = train_linear_probe(&data, &schedule, Device::Cpu, &hidden).unwrap();
        assert!(mlp.test_accuracy > 0.9, "mlp {mlp:?}");
        assert!(linear.test_accuracy < 0.7, "linear {linear:?}");
    }
}
