//! Deep InfoMax training on libtorch, and the evaluation of what it learns. The modules, by
//! concern:
//!
//! - **The model:** [`encoder`] (the presets as tch modules), [`critics`], [`estimators`] (JSD,
//!   infoNCE, DV), [`prior`] (adversarial prior matching), [`extra_globals`] and [`occlusion`]
//!   (the paper's levers), and [`objective`], which puts them together into the loss.
//! - **Data:** [`data`] (IDX, CIFAR, STL-10, image folders, the decoded-image cache) and [`views`]
//!   (augmented views for cross-view training).
//! - **Fitting:** [`settings`] (everything that determines a run), [`trainer`] (the loop),
//!   [`optim`] (Adam with saved state), [`checkpoint`], [`retrieval_check`] (precision@10 while
//!   training), [`device`] and [`heap`] (glibc allocator settings for libtorch).
//! - **Evaluation** (`dim-eval`): [`features`] (frozen taps of a labelled split), [`evaluation`]
//!   and [`probes`] (linear, MLP, k-NN), [`retrieval_evaluation`] (exact-search retrieval through
//!   `dim-vectors`), [`measures`] (MS-SSIM, MINE, NDM) and [`supervised`] (the supervised
//!   baseline encoder).

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
