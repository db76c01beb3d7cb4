//! Deep InfoMax training on libtorch: encoders, critics, estimators, prior matching, data
//! loading, checkpoints and frozen-encoder probes.

pub mod checkpoint;
pub mod critics;
pub mod data;
pub mod device;
pub mod encoder;
pub mod estimators;
pub mod evaluation;
pub mod features;
pub mod objective;
pub mod optim;
pub mod prior;
pub mod probes;
pub mod settings;
pub mod supervised;
pub mod trainer;
