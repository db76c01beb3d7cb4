//! The model: the encoder presets as tch modules, the critics and the MI estimators, adversarial
//! prior matching, the paper's levers (extra global vectors, occlusion) and the objective that
//! puts them together into the loss.

pub mod critics;
pub mod encoder;
pub mod estimators;
pub mod extra_globals;
pub mod objective;
pub mod occlusion;
pub mod prior;
