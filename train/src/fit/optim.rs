//! Adam written on tensors so that its state (moments and step count) can be saved and restored:
//! tch's own optimiser keeps that state inside libtorch where it cannot be read, so resuming with
//! it would silently restart the moments.

use std::collections::HashMap;
use tch::{Kind, Tensor};

/// Adam's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator for stability.
    pub eps: f64,
}

impl AdamConfig {
    /// The official DIM settings: lr 1e-4, betas (0.5, 0.999).
    pub fn dim_default() -> Self {
        AdamConfig { lr: 1e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8 }
    }
}

/// Errors restoring optimiser state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptimizerStateError {
    /// A tensor the optimiser needs is not in the saved state.
    #[error("optimizer state has no tensor `{0}`")]
    Missing(String),
    /// A saved tensor has the wrong shape.
    #[error("optimizer state tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// Its saved shape.
        found: Vec<i64>,
        /// The variable's shape.
        expected: Vec<i64>,
    },
}

/// Adam over a fixed, named set of variables.
#[derive(Debug)]
pub struct Adam {
    name: String,
    config: AdamConfig,
    step: i64,
    variables: Vec<(String, Tensor)>,
    first_moments: Vec<Tensor>,
    second_moments: Vec<Tensor>,
    /// One buffer per variable for the update's intermediate values, so that a step allocates
    /// nothing.
    scratch: Vec<Tensor>,
}

impl Adam {
    /// An optimiser called `name` (the prefix of its saved state) over `variables`.
    pub fn new(name: &str, config: AdamConfig, mut variables: Vec<(String, Tensor)>) -> Self {
        // A fixed order keeps the state layout independent of HashMap iteration order.
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |variables: &[(String, Tensor)]| variables.iter().map(|(_, v)| v.zeros_like()).collect();
        Adam {
            name: name.to_string(),
            config,
            step: 0,
            first_moments: zeros(&variables),
            second_moments: zeros(&variables),
            scratch: zeros(&variables),
            variables,
        }
    }

    /// Number of updates taken.
    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// One Adam update down the gradient of the scalar `loss` with respect to this optimiser's
    /// variables. The gradients are computed for these variables only and handed to the update
    /// directly: nothing is accumulated into (or left on) any variable's `.grad`, so no
    /// gradients need zeroing and other modules in the graph get none. Variables the loss does
    /// not depend on are left alone.
    pub fn minimise(&mut self, loss: &Tensor) {
        let variables: Vec<&Tensor> = self.variables.iter().map(|(_, variable)| variable).collect();
        let gradients = Tensor::run_backward(&[loss], &variables, false, false);
        self.step += 1;
        let AdamConfig { lr, beta1, beta2, eps } = self.config;
        let first_correction = 1.0 - beta1.powi(self.step as i32);
        let second_correction = 1.0 - beta2.powi(self.step as i32);
        let step_size = lr / first_correction;
        // x ← x − step·m / (√v / √c₂ + ε) is computed as x ← x + m / d with
        // d = √v·(−1 / (step·√c₂)) − ε / step, all in place.
        let root_scale = -1.0 / (step_size * second_correction.sqrt());
        let offset = -eps / step_size;
        tch::no_grad(|| {
            for (((variable, grad), (m, v)), scratch) in self
                .variables
                .iter_mut()
                .map(|(_, variable)| variable)
                .zip(&gradients)
                .zip(self.first_moments.iter_mut().zip(self.second_moments.iter_mut()))
                .zip(self.scratch.iter_mut())
            {
                if !grad.defined() {
                    continue;
                }
                let _ = m.lerp_(grad, 1.0 - beta1);
                let _ = grad.mul_out(scratch, grad);
                let _ = v.lerp_(scratch, 1.0 - beta2);
                let _ = v.sqrt_out(scratch).g_mul_scalar_(root_scale).g_add_scalar_(offset);
                let _ = variable.addcdiv_(m, scratch);
            }
        });
    }

    /// The state as named tensors: `{name}.step`, and `{name}.exp_avg.{var}` /
    /// `{name}.exp_avg_sq.{var}` for every variable.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = vec![(format!("{}.step", self.name), Tensor::from(self.step))];
        for ((variable, _), (m, v)) in
            self.variables.iter().zip(self.first_moments.iter().zip(self.second_moments.iter()))
        {
            state.push((format!("{}.exp_avg.{variable}", self.name), m.shallow_clone()));
            state.push((format!("{}.exp_avg_sq.{variable}", self.name), v.shallow_clone()));
        }
        state
    }

    /// Restores the state saved by [`Adam::state`]; tensors of other optimisers are ignored.
    pub fn load_state(&mut self, saved: &HashMap<String, Tensor>) -> Result<(), OptimizerStateError> {
        let get = |name: String| saved.get(&name).ok_or(OptimizerStateError::Missing(name));
        let step = get(format!("{}.step", self.name))?;
        let mut restored_step = 0;
        tch::no_grad(|| {
            for ((variable, value), (m, v)) in
                self.variables.iter().zip(self.first_moments.iter_mut().zip(self.second_moments.iter_mut()))
            {
                for (kind, target) in [("exp_avg", m), ("exp_avg_sq", v)] {
                    let name = format!("{}.{kind}.{variable}", self.name);
                    let source = get(name.clone())?;
                    if source.size() != value.size() {
                        return Err(OptimizerStateError::Shape {
                            name,
                            found: source.size(),
                            expected: value.size(),
                        });
                    }
                    target.copy_(source);
                }
            }
            restored_step = step.to_kind(Kind::Int64).int64_value(&[]);
            Ok(())
        })?;
        self.step = restored_step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn matches_the_adam_update_rule_computed_by_hand() {
        // One variable x = 1 with loss x² (gradient 2), lr 0.1, betas (0.5, 0.999), eps 1e-8.
        // Step 1: m = 0.5·0 + 0.5·2 = 1, v = 0.001·4 = 0.004; m̂ = 1/0.5 = 2, v̂ = 0.004/0.001 = 4;
        //         x = 1 − 0.1·2/(2 + 1e-8) = 0.9.
        // Step 2: gradient 1.8; m = 0.5·1 + 0.5·1.8 = 1.4, v = 0.999·0.004 + 0.001·3.24 = 0.007236;
        //         m̂ = 1.4/0.75 = 1.8666667, v̂ = 0.007236/0.001999 = 3.6198099, √v̂ = 1.9025798;
        //         x = 0.9 − 0.1·1.8666667/1.9025798 = 0.8018876.
        let x = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let config = AdamConfig { lr: 0.1, beta1: 0.5, beta2: 0.999, eps: 1e-8 };
        let mut adam = Adam::new("test", config, vec![("x".into(), x.shallow_clone())]);
        for expected in [0.9, 0.8018876] {
            adam.minimise(&x.square().sum(Kind::Float));
            assert!((x.double_value(&[0]) - expected).abs() < 1e-6, "{}", x.double_value(&[0]));
        }
        assert_eq!(adam.step_count(), 2);
    }

    #[test]
    fn follows_the_textbook_update_on_several_variables_and_skips_unused_ones() {
        // The in-place update (folded scaling, lerp for v) against Adam written out in f64.
        let a = Tensor::from_slice(&[0.3f32, -1.2, 2.5, 0.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[1.5f32, -0.5]).reshape([2, 1]).set_requires_grad(true);
        let unused = Tensor::from_slice(&[4.0f32]).set_requires_grad(true);
        let config = AdamConfig { lr: 0.05, beta1: 0.5, beta2: 0.999, eps: 1e-8 };
        let mut adam = Adam::new(
            "test",
            config,
            vec![
                ("a".into(), a.shallow_clone()),
                ("b".into(), b.shallow_clone()),
                ("u".into(), unused.shallow_clone()),
            ],
        );
        let loss = |a: &Tensor, b: &Tensor| (a * a * a).sum(Kind::Float) + (b.exp() * 2.0).sum(Kind::Float);
        let mut expected: Vec<Vec<f64>> =
            [&a, &b].iter().map(|t| Vec::<f64>::try_from(t.flatten(0, -1)).unwrap()).collect();
        let mut moments = [(vec![0.0; 4], vec![0.0; 4]), (vec![0.0; 2], vec![0.0; 2])];
        for step in 1..=5 {
            let gradients = [
                expected[0].iter().map(|x| 3.0 * x * x).collect::<Vec<f64>>(),
                expected[1].iter().map(|x| 2.0 * x.exp()).collect(),
            ];
            for ((values, (m, v)), grad) in expected.iter_mut().zip(moments.iter_mut()).zip(&gradients) {
                for i in 0..values.len() {
                    m[i] = config.beta1 * m[i] + (1.0 - config.beta1) * grad[i];
                    v[i] = config.beta2 * v[i] + (1.0 - config.beta2) * grad[i] * grad[i];
                    let m_hat = m[i] / (1.0 - config.beta1.powi(step));
                    let v_hat = v[i] / (1.0 - config.beta2.powi(step));
                    values[i] -= config.lr * m_hat / (v_hat.sqrt() + config.eps);
                }
            }
            adam.minimise(&loss(&a, &b));
        }
        for (tensor, values) in [&a, &b].iter().zip(&expected) {
            let found = Vec::<f64>::try_from(tensor.flatten(0, -1)).unwrap();
            for (found, expected) in found.iter().zip(values) {
                assert!((found - expected).abs() < 1e-5, "{found} vs {expected}");
            }
        }
        assert_eq!(unused.double_value(&[0]), 4.0);
        assert!(!a.grad().defined() && !b.grad().defined(), "gradients must not be left on the variables");
    }

    #[test]
    fn state_round_trips_and_reproduces_the_next_update() {
        let make = || Tensor::from_slice(&[0.5f32, -1.0, 2.0]).set_requires_grad(true);
        let train = |adam: &mut Adam, x: &Tensor| adam.minimise(&(x * x * x).sum(Kind::Float));
        let x = make();
        let mut adam = Adam::new("enc", AdamConfig::dim_default(), vec![("x".into(), x.shallow_clone())]);
        train(&mut adam, &x);
        let saved: HashMap<String, Tensor> = adam.state().into_iter().map(|(n, t)| (n, t.copy())).collect();

        let y = tch::no_grad(|| x.copy()).set_requires_grad(true);
        let mut restored = Adam::new("enc", AdamConfig::dim_default(), vec![("x".into(), y.shallow_clone())]);
        restored.load_state(&saved).unwrap();
        assert_eq!(restored.step_count(), 1);
        train(&mut adam, &x);
        train(&mut restored, &y);
        assert_eq!(Vec::<f32>::try_from(&x).unwrap(), Vec::<f32>::try_from(&y).unwrap());

        let mut other = Adam::new("disc", AdamConfig::dim_default(), vec![("x".into(), make())]);
        assert!(matches!(other.load_state(&saved), Err(OptimizerStateError::Missing(_))));
    }
}
