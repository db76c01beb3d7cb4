//! The contracts every dim-toolkit crate shares, with no libtorch and no ONNX Runtime:
//! encoder presets ([`preset`]) and their outputs by name ([`tap`]), parameter names ([`parameters`]), the checkpoint layout
//! ([`checkpoint`]), the exported model's metadata ([`onnx_metadata`]) and ONNX schema
//! ([`onnx_schema`]), image preprocessing
//! ([`preprocess`]), finding a collection's images ([`image_walk`]), lossless paths in JSON
//! ([`path_record`]), the IDX format ([`idx`]), atomic file writes ([`atomic_file`]) and the
//! shipped default model, compiled in ([`shipped_model`]).

pub mod atomic_file;
pub mod checkpoint;
pub mod idx;
pub mod image_walk;
pub mod onnx_metadata;
pub mod onnx_schema;
pub mod parameters;
pub mod path_record;
pub mod preprocess;
pub mod preset;
pub mod shipped_model;
pub mod tap;

pub use preset::{BlockConv, Bottleneck, EncoderConfig, Layer, LayerKind, Preset, TapDims};

/// The toolkit's version, recorded in checkpoints and exported models.
pub const TOOLKIT_VERSION: &str = env!("CARGO_PKG_VERSION");
