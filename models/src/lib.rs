//! The contracts every dim-toolkit crate shares, with no libtorch and no ONNX Runtime:
//! encoder presets ([`preset`]), parameter names ([`parameters`]), the checkpoint layout
//! ([`checkpoint`]), the exported model's metadata ([`onnx_metadata`]), image preprocessing
//! ([`preprocess`]), finding a collection's images ([`image_walk`]), lossless paths in JSON
//! ([`path_record`]), the IDX format ([`idx`]) and atomic file writes ([`atomic_file`]).

pub mod atomic_file;
pub mod checkpoint;
pub mod idx;
pub mod image_walk;
pub mod onnx_metadata;
pub mod parameters;
pub mod path_record;
pub mod preprocess;
pub mod preset;

pub use preset::{BlockConv, Bottleneck, EncoderConfig, Layer, LayerKind, Preset, TapDims};

/// The toolkit's version, recorded in checkpoints and exported models.
pub const TOOLKIT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Path of the shipped default model, relative to the repository root.
pub const DEFAULT_MODEL_RELATIVE_PATH: &str = "models/fashion-mnist-cross-view/model.onnx";

/// Absolute path of the shipped default model in this source tree.
pub fn default_model_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fashion-mnist-cross-view").join("model.onnx")
}
