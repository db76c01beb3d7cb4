//! Deep InfoMax training on libtorch: encoders, critics, estimators, prior matching, data
//! loading, checkpoints and frozen-encoder probes.

pub mod checkpoint;
pub mod critics;
pub mod data;
pub mod device;
pub mod encoder;
pub mod estimators;
pub mod evaluation;
pub mod extra_globals;
pub mod features;
pub mod heap;
pub mod measures;
pub mod objective;
pub mod occlusion;
pub mod optim;
pub mod prior;
pub mod probes;
pub mod retrieval_check;
pub mod retrieval_evaluation;
pub mod settings;
pub mod supervised;
#[cfg(test)]
mod torch_generator;
pub mod trainer;
pub mod views;
