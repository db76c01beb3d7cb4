//! The index's distances as hnsw_rs takes them, for its build and for the searches of
//! [`crate::flat_graph`], on dim-vectors' SIMD kernels.
//!
//! hnsw_rs's own `DistDot` and `DistL2` sum into a single vector register, so every step waits
//! for the previous addition, and never use AVX-512; [`dim_vectors::distance`]'s kernels keep four
//! independent sums of the widest registers.
//!
//! [`DistDot`] and [`DistL2`] carry the same names as hnsw_rs's distances on purpose: hnsw_rs
//! records the short type name of the distance in its graph dump and checks it on loading, and
//! these compute the same distances, so indexes built before and after load alike.

use dim_vectors::distance::{dot, squared_l2};
use hnsw_rs::prelude::Distance;

/// `1 - a·b`, clamped at 0: the cosine distance of vectors of unit length.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DistDot;

/// The Euclidean distance `|a - b|`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DistL2;

impl Distance<f32> for DistDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

impl Distance<f32> for DistL2 {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        squared_l2(a, b).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_distances_are_the_cosine_and_euclidean_ones() {
        let a = [0.6, 0.8, 0.0];
        let b = [0.0, 0.6, 0.8];
        assert!((DistDot.eval(&a, &b) - (1.0 - 0.48)).abs() < 1e-6);
        assert_eq!(DistDot.eval(&a, &a.map(|v| v * 1.01)), 0.0, "clamped at 0");
        assert!((DistL2.eval(&a, &b) - (0.36f32 + 0.04 + 0.64).sqrt()).abs() < 1e-6);
    }
}
