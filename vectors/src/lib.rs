//! Vector maths shared by training and inference, with no model runtime behind it:
//! [`npy`] reads and writes the `.npy` matrices every tool exchanges, [`manifest`] is the
//! embeddings directory they travel in (dim-embed writes it, the index reads it), [`distance`] says how
//! vectors are compared ([`distance::Metric`]) and holds the SIMD kernels every search runs on,
//! [`post_process`] is the collection-fitted PCA (and whitening), and [`retrieval`] the exact-search
//! retrieval measures (precision@k, mAP@k, k-NN accuracy) of labelled vectors.

pub mod distance;
pub mod manifest;
pub mod npy;
pub mod post_process;
pub mod retrieval;
