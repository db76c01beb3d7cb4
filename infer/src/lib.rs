//! Image embedding with ONNX Runtime and similarity search.

pub mod runtime;
