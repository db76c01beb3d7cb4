//! Deep InfoMax training on libtorch, and the evaluation of what it learns. The modules, by
//! concern:
//!
//! - [`model`]: the encoder presets as tch modules, the critics, the MI estimators (JSD,
//!   infoNCE, DV), adversarial prior matching, the paper's levers (extra global vectors,
//!   occlusion) and the objective that puts them together into the loss.
//! - [`data`]: IDX, CIFAR, STL-10 and image-folder readers, the batch loader, the decoded-image
//!   cache and the augmented views of cross-view training.
//! - [`fit`] (`dim-train`): the settings that determine a run, the training loop, Adam with
//!   saved state, checkpoints, precision@10 while training, the device choice and the glibc heap
//!   settings for libtorch.
//! - [`eval`] (`dim-eval`): the harness every evaluation shares (a checkpoint's frozen encoder,
//!   its baselines and the labelled splits), the probes (linear, MLP, k-NN), retrieval through
//!   `dim-vectors`, the paper's other measures (MS-SSIM, MINE, NDM) and the supervised baseline.
//! - [`cli`]: the command-line argument groups `dim-train` and `dim-eval` share.

pub mod cli;
pub mod data;
pub mod eval;
pub mod fit;
pub mod model;
#[cfg(test)]
mod torch_generator;
