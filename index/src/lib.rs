//! Similarity search over an embeddings directory, with no model runtime behind it: [`index`]
//! builds, saves and opens the dim-search index (an HNSW graph, a flat graph for small
//! collections, and exact search beside them) and measures its recall, [`duplicates`] finds
//! near-duplicate groups in it, [`embeddings_retrieval`] scores a labelled embeddings directory
//! by exact search, and [`html_preview`] puts images into the pages they produce. The embeddings
//! directory itself is `dim_vectors::manifest`; the embedder that writes it and answers image
//! queries is `dim-infer`.

pub mod duplicates;
pub mod embeddings_retrieval;
mod flat_graph;
pub mod html_preview;
pub mod index;
mod vector_distance;
