//! Deep InfoMax training on libtorch.

pub mod device;
