//! Standalone ONNX export of DIM encoders.
