//! Fitting: the settings that determine a run, the training loop, Adam with saved state,
//! checkpoints, the retrieval check while training, the device choice and the glibc heap
//! settings for libtorch.

pub mod checkpoint;
pub mod device;
pub mod heap;
pub mod optim;
pub mod retrieval_check;
pub mod settings;
pub mod trainer;
