//! Adam written on tensors so that its state (moments and step count) can be saved and restored:
//! tch's own optimiser keeps that state inside libtorch where it cannot be read, so resuming with
//! it would silently restart the moments. The model's parameters live in one flat buffer, so a
//! step is a few kernels for the whole model rather than several per tensor.

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

/// Adam over a fixed, named set of variables, kept in one flat buffer.
///
/// On construction every variable's storage moves into a view of one flat parameter buffer
/// (memory layout kept, channels-last included), and the moments and gradients get flat buffers
/// of the same layout. A step copies each gradient into its view, then updates the whole model
/// with five element-wise kernels instead of five per variable: on a GPU a small model's step is
/// bound by kernel launches, not arithmetic. Nothing else may replace the variables' storage
/// afterwards (`set_data`); copying into them (`copy_`, as loading a checkpoint does) is fine.
pub struct Adam {
    name: String,
    config: AdamConfig,
    step: i64,
    variables: Vec<(String, Tensor)>,
    /// The flat buffers and each variable's views into them.
    flat: FlatBuffers,
    views: Vec<VariableViews>,
}

/// One buffer each for the parameters, the two moments and the gradients, laid out alike.
struct FlatBuffers {
    parameters: Tensor,
    first_moments: Tensor,
    second_moments: Tensor,
    /// The step's gradients, then (once folded into the moments) the update's denominator, so
    /// a step allocates nothing.
    gradients: Tensor,
}

/// A variable's windows into the [`FlatBuffers`] (its parameter window is the variable itself).
struct VariableViews {
    first_moment: Tensor,
    second_moment: Tensor,
    gradient: Tensor,
}

/// The step-dependent scalars of one Adam update.
struct UpdateScalars {
    first_weight: f64,
    second_weight: f64,
    root_scale: f64,
    offset: f64,
}

impl Adam {
    /// An optimiser called `name` (the prefix of its saved state) over `variables`, which all
    /// live on one device with one kind. Their values are kept; their storage becomes the flat
    /// buffer's.
    pub fn new(name: &str, config: AdamConfig, mut variables: Vec<(String, Tensor)>) -> Self {
        // A fixed order keeps the state layout independent of HashMap iteration order.
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let total: i64 = variables.iter().map(|(_, variable)| variable.numel() as i64).sum();
        let options = variables
            .first()
            .map_or((Kind::Float, tch::Device::Cpu), |(_, variable)| (variable.kind(), variable.device()));
        let flat = FlatBuffers {
            parameters: Tensor::zeros([total], options),
            first_moments: Tensor::zeros([total], options),
            second_moments: Tensor::zeros([total], options),
            gradients: Tensor::zeros([total], options),
        };
        let mut views = Vec::with_capacity(variables.len());
        let mut offset = 0;
        tch::no_grad(|| {
            for (_, variable) in &mut variables {
                let size = variable.size();
                let stride = dense_strides(variable);
                let window = |buffer: &Tensor| buffer.as_strided(size.as_slice(), stride.as_slice(), offset);
                let parameter = window(&flat.parameters);
                parameter.shallow_clone().copy_(variable);
                variable.set_data(&parameter);
                views.push(VariableViews {
                    first_moment: window(&flat.first_moments),
                    second_moment: window(&flat.second_moments),
                    gradient: window(&flat.gradients),
                });
                offset += variable.numel() as i64;
            }
        });
        Adam { name: name.to_string(), config, step: 0, variables, flat, views }
    }

    /// Number of updates taken.
    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// One Adam update down the gradient of the scalar `loss` with respect to this optimiser's
    /// variables. The gradients are computed for these variables only and handed to the update
    /// directly: nothing is accumulated into (or left on) any variable's `.grad`, so no
    /// gradients need zeroing and other modules in the graph get none. Variables the loss does
    /// not depend on are left alone, moments included.
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
        let scalars = UpdateScalars {
            first_weight: 1.0 - beta1,
            second_weight: 1.0 - beta2,
            root_scale: -1.0 / (step_size * second_correction.sqrt()),
            offset: -eps / step_size,
        };
        tch::no_grad(|| {
            for (view, gradient) in self.views.iter_mut().zip(&gradients).filter(|(_, g)| g.defined()) {
                view.gradient.copy_(gradient);
            }
            if gradients.iter().all(Tensor::defined) {
                let FlatBuffers { parameters, first_moments, second_moments, gradients } = &mut self.flat;
                update(parameters, gradients, first_moments, second_moments, &scalars);
            } else {
                // Moments of variables without a gradient must not decay: update the others
                // one by one.
                for (((_, variable), view), _) in self
                    .variables
                    .iter_mut()
                    .zip(&mut self.views)
                    .zip(&gradients)
                    .filter(|(_, g)| g.defined())
                {
                    let VariableViews { first_moment, second_moment, gradient } = view;
                    update(variable, gradient, first_moment, second_moment, &scalars);
                }
            }
        });
    }

    /// The state as named tensors: `{name}.step`, and `{name}.exp_avg.{var}` /
    /// `{name}.exp_avg_sq.{var}` for every variable.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = vec![(format!("{}.step", self.name), Tensor::from(self.step))];
        for ((variable, _), view) in self.variables.iter().zip(&self.views) {
            state.push((format!("{}.exp_avg.{variable}", self.name), view.first_moment.shallow_clone()));
            state.push((format!("{}.exp_avg_sq.{variable}", self.name), view.second_moment.shallow_clone()));
        }
        state
    }

    /// Restores the state saved by [`Adam::state`]; tensors of other optimisers are ignored.
    pub fn load_state(&mut self, saved: &HashMap<String, Tensor>) -> Result<(), OptimizerStateError> {
        let get = |name: String| saved.get(&name).ok_or(OptimizerStateError::Missing(name));
        let step = get(format!("{}.step", self.name))?;
        let mut restored_step = 0;
        tch::no_grad(|| {
            for ((variable, value), view) in self.variables.iter().zip(&mut self.views) {
                for (kind, target) in
                    [("exp_avg", &mut view.first_moment), ("exp_avg_sq", &mut view.second_moment)]
                {
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

/// Adam's in-place update of `parameters` from `gradients` (which it overwrites) and the moments.
fn update(
    parameters: &mut Tensor,
    gradients: &mut Tensor,
    first_moments: &mut Tensor,
    second_moments: &mut Tensor,
    scalars: &UpdateScalars,
) {
    let _ = first_moments.lerp_(gradients, scalars.first_weight);
    let _ = gradients.square_();
    let _ = second_moments.lerp_(gradients, scalars.second_weight);
    let _ =
        second_moments.sqrt_out(gradients).g_mul_scalar_(scalars.root_scale).g_add_scalar_(scalars.offset);
    let _ = parameters.addcdiv_(first_moments, gradients);
}

/// `tensor`'s strides when its elements fill a block of memory without gaps or overlaps
/// (contiguous or any permutation of it, such as channels-last), else contiguous strides.
fn dense_strides(tensor: &Tensor) -> Vec<i64> {
    let size = tensor.size();
    let stride = tensor.stride();
    let mut dimensions: Vec<usize> = (0..size.len()).filter(|&d| size[d] != 1).collect();
    dimensions.sort_by_key(|&d| stride[d]);
    let mut expected = 1;
    for &d in &dimensions {
        if stride[d] != expected {
            return contiguous_strides(&size);
        }
        expected *= size[d];
    }
    stride
}

fn contiguous_strides(size: &[i64]) -> Vec<i64> {
    let mut strides = vec![1; size.len()];
    for d in (0..size.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * size[d + 1];
    }
    strides
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

    #[test]
    fn the_whole_model_update_equals_the_update_variable_by_variable() {
        // The flat update runs when every variable has a gradient; an unused variable sends the
        // same step down the per-variable path. Both must move the used variables identically.
        let make = || {
            let a = Tensor::from_slice(&[0.3f32, -1.2, 2.5, 0.0, 0.7, -0.1]).set_requires_grad(true);
            let b = Tensor::from_slice(&[1.5f32, -0.5, 0.25]).reshape([3, 1]).set_requires_grad(true);
            (a, b)
        };
        let loss = |a: &Tensor, b: &Tensor| (a * a * a).sum(Kind::Float) + (b.exp() * 2.0).sum(Kind::Float);
        let ((a, b), (c, d)) = (make(), make());
        let mut flat = Adam::new(
            "flat",
            AdamConfig::dim_default(),
            vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())],
        );
        let unused = Tensor::from_slice(&[4.0f32]).set_requires_grad(true);
        let mut one_by_one = Adam::new(
            "one_by_one",
            AdamConfig::dim_default(),
            vec![("a".into(), c.shallow_clone()), ("b".into(), d.shallow_clone()), ("u".into(), unused)],
        );
        for _ in 0..4 {
            flat.minimise(&loss(&a, &b));
            one_by_one.minimise(&loss(&c, &d));
        }
        for (x, y) in [(&a, &c), (&b, &d)] {
            assert_eq!(
                Vec::<f32>::try_from(x.flatten(0, -1)).unwrap(),
                Vec::<f32>::try_from(y.flatten(0, -1)).unwrap()
            );
        }
    }

    #[test]
    fn variables_keep_their_values_and_memory_layout_inside_the_flat_buffer() {
        // A channels-last conv weight [2, 3, 2, 2] stays channels-last, and a transposed
        // (non-dense after narrowing) tensor is laid out contiguously.
        let values = Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).reshape([2, 3, 2, 2]);
        let channels_last =
            values.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]).set_requires_grad(true);
        let gappy = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).reshape([3, 4]).narrow(1, 0, 2);
        let gappy_values = gappy.copy();
        let gappy = gappy.set_requires_grad(true);
        let expected_strides = channels_last.stride();
        let _adam = Adam::new(
            "layout",
            AdamConfig::dim_default(),
            vec![("w".into(), channels_last.shallow_clone()), ("g".into(), gappy.shallow_clone())],
        );
        assert_eq!(channels_last.stride(), expected_strides);
        assert!(channels_last.equal(&values));
        assert_eq!(gappy.stride(), vec![2, 1]);
        assert!(gappy.equal(&gappy_values));
    }
}
