//! Image embedding with ONNX Runtime and similarity search with an HNSW index (no libtorch):
//! [`embedder`] is the library API, [`embed_job`] the dim-embed pipeline, [`manifest`] the
//! embeddings directory (and `parquet_metadata` its optional table, with the `parquet` feature),
//! [`index`] the dim-search index, `pgvector_store` the same search in PostgreSQL (with the
//! `postgres` feature), [`duplicates`] near-duplicate groups,
//! [`html_preview`] images in pages, and [`embeddings_retrieval`] the retrieval measures of a
//! labelled embeddings directory. The vector maths under them (`.npy`, metrics, PCA, exact-search
//! measures) is the `dim-vectors` crate.

pub mod collection;
pub mod duplicates;
pub mod embed_job;
pub mod embedder;
pub mod embeddings_retrieval;
mod flat_graph;
pub mod graph_pruning;
pub mod html_preview;
pub mod index;
pub mod manifest;
#[cfg(feature = "parquet")]
pub mod parquet_metadata;
#[cfg(feature = "postgres")]
pub mod pgvector_store;
pub mod reduced_jpeg;
pub mod runtime;
pub mod session;
pub mod shard;
mod vector_distance;
