//! Image embedding with ONNX Runtime and similarity search with an HNSW index (no libtorch):
//! [`embedder`] is the library API, [`embed_job`] the dim-embed pipeline, [`manifest`] and
//! [`npy`] the embeddings directory (and [`parquet_metadata`] its optional table), [`index`] the
//! dim-search index, [`post_process`] the collection-fitted PCA (and whitening) it can apply,
//! [`pgvector_store`] the same search in PostgreSQL, [`duplicates`] near-duplicate groups,
//! [`html_preview`] images in pages, and [`retrieval`] the exact-search retrieval measures
//! (precision@k, mAP@k, k-NN accuracy) of a labelled collection.

pub mod collection;
pub mod duplicates;
pub mod embed_job;
pub mod embedder;
mod flat_graph;
pub mod graph_pruning;
pub mod html_preview;
pub mod index;
pub mod manifest;
pub mod npy;
pub mod parquet_metadata;
pub mod pgvector_store;
pub mod post_process;
pub mod reduced_jpeg;
pub mod retrieval;
pub mod runtime;
pub mod session;
pub mod shard;
mod vector_distance;
