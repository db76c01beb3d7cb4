//! Linear probe: multinomial logistic regression on frozen features, trained with minibatch Adam
//! for a fixed number of epochs.

use super::{ProbeData, ProbeError, ProbeScore, TrainingSchedule, accuracy};
use tch::{Device, nn, nn::OptimizerConfig};

/// Default schedule: enough for logistic regression on standardised features to converge on
/// 60,000 × 4,096 features in well under a minute on two CPU cores.
pub fn default_schedule() -> TrainingSchedule {
    TrainingSchedule {
        epochs: 30,
        batch_size: 256,
        learning_rate: 1e-3,
        weight_decay: 0.0,
        lr_drop_epochs: vec![20],
        seed: 0,
    }
}

/// Trains logistic regression on the train split and scores it on both splits.
pub fn train_linear_probe(
    data: &ProbeData,
    schedule: &TrainingSchedule,
    device: Device,
    progress: &indicatif::ProgressBar,
) -> Result<ProbeScore, ProbeError> {
    schedule.validate()?;
    tch::manual_seed(schedule.seed as i64);
    let store = nn::VarStore::new(device);
    let classifier =
        nn::linear(store.root() / "linear", data.dims() as i64, data.num_classes as i64, Default::default());
    let mut optimizer =
        nn::Adam { wd: schedule.weight_decay, ..Default::default() }.build(&store, schedule.learning_rate)?;
    schedule
        .run(data, device, &mut optimizer, progress, |x, y| x.apply(&classifier).cross_entropy_for_logits(y));
    let logits_of = |x: &tch::Tensor| x.apply(&classifier);
    Ok(ProbeScore {
        test_accuracy: accuracy(&data.test_features, &data.test_labels, device, logits_of),
        train_accuracy: Some(accuracy(&data.train_features, &data.train_labels, device, logits_of)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::probes::test_data::{probe_data, separable};
    use tch::{Kind, Tensor};

    fn quick_schedule() -> TrainingSchedule {
        TrainingSchedule { epochs: 20, batch_size: 32, learning_rate: 1e-2, ..default_schedule() }
    }

    #[test]
    fn separable_features_are_classified_almost_perfectly() {
        let data = probe_data(separable(400, 16, 1), separable(200, 16, 2), 2).standardised();
        let score =
            train_linear_probe(&data, &quick_schedule(), Device::Cpu, &indicatif::ProgressBar::hidden())
                .unwrap();
        assert!(score.test_accuracy > 0.97, "{score:?}");
        assert!(score.train_accuracy.unwrap() > 0.97, "{score:?}");
    }

    #[test]
    fn random_labels_give_chance_accuracy_on_the_test_split() {
        let (train_x, _) = separable(400, 16, 3);
        let (test_x, _) = separable(1000, 16, 4);
        tch::manual_seed(5);
        let train_y = Tensor::randint(2, [400], (Kind::Int64, Device::Cpu));
        let test_y = Tensor::randint(2, [1000], (Kind::Int64, Device::Cpu));
        let data = probe_data((train_x, train_y), (test_x, test_y), 2).standardised();
        let score =
            train_linear_probe(&data, &quick_schedule(), Device::Cpu, &indicatif::ProgressBar::hidden())
                .unwrap();
        assert!((0.4..0.6).contains(&score.test_accuracy), "{score:?}");
    }

    #[test]
    fn zero_epochs_are_refused() {
        let data = probe_data(separable(10, 2, 1), separable(10, 2, 2), 2);
        let schedule = TrainingSchedule { epochs: 0, ..quick_schedule() };
        let err = train_linear_probe(&data, &schedule, Device::Cpu, &indicatif::ProgressBar::hidden());
        assert!(matches!(err, Err(ProbeError::Option(_))));
    }
}
