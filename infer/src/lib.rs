//! Image embedding with ONNX Runtime (no libtorch): [`embedder`] is the library API (on
//! [`session`], [`runtime`], [`graph_pruning`] and [`reduced_jpeg`]), [`collection`] lists a
//! collection's images, [`embed_job`] is the dim-embed pipeline that writes an embeddings
//! directory (`dim_vectors::manifest`), [`shard`] splits and merges that job across machines, and
//! `parquet_metadata` writes its optional table (with the `parquet` feature). [`image_search`] pairs
//! stored vectors with the model that embeds their queries. The binaries dim-embed and dim-search
//! live here too; search itself is the `dim-index` crate, and
//! `pgvector_store` the same search in PostgreSQL (with the `postgres` feature).

pub mod collection;
pub mod embed_job;
pub mod embedder;
pub mod graph_pruning;
pub mod image_search;
#[cfg(feature = "parquet")]
pub mod parquet_metadata;
#[cfg(feature = "postgres")]
pub mod pgvector_store;
pub mod reduced_jpeg;
pub mod runtime;
pub mod session;
pub mod shard;
