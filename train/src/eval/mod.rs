//! Evaluation of frozen encoders (`dim-eval`): the harness every evaluation shares (the
//! checkpoint, its baselines and the labelled splits, read once), frozen features, the probe
//! evaluation and its probes, retrieval, the paper's other measures and the supervised baseline.

pub mod features;
pub mod harness;
pub mod measures;
pub mod probes;
pub mod probing;
pub mod retrieval;
pub mod supervised;
