//! Image embedding with ONNX Runtime and similarity search with an HNSW index (no libtorch):
//! [`embedder`] is the library API, [`embed_job`] the dim-embed pipeline, [`manifest`] and
//! [`npy`] the embeddings directory, and [`index`] the dim-search index.

pub mod collection;
pub mod embed_job;
pub mod embedder;
mod flat_graph;
pub mod index;
pub mod manifest;
pub mod npy;
pub mod reduced_jpeg;
pub mod runtime;
pub mod session;
