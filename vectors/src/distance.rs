//! How vectors are compared ([`Metric`]) and the distance kernels behind every search: `a·b`,
//! `|a - b|²` and the exact dot product of 8-bit codes, on the widest SIMD the CPU offers
//! (AVX-512, AVX2 with FMA, or SSE2, chosen at run time by `pulp`).
//!
//! The float kernels keep four independent sums of the widest registers and fuse the multiply
//! into the add, so no step waits for the previous addition.

use pulp::{Arch, Simd, WithSimd};
use serde::{Deserialize, Serialize};

/// How vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity (vectors are L2-normalised first); score is the cosine.
    #[default]
    Cosine,
    /// Euclidean distance; score is the distance.
    L2,
}

impl Metric {
    /// The metric's name on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "l2" => Ok(Metric::L2),
            other => Err(format!("unknown metric `{other}` (known: cosine, l2)")),
        }
    }
}

/// `a·b` over the common length of `a` and `b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    Arch::new().dispatch(Kernel { a: &a[..n], b: &b[..n], op: Op::Dot })
}

/// `|a - b|²` over the common length of `a` and `b`.
pub fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    Arch::new().dispatch(Kernel { a: &a[..n], b: &b[..n], op: Op::SquaredL2 })
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Dot,
    SquaredL2,
}

/// One reduction over two slices of the same length.
struct Kernel<'a> {
    a: &'a [f32],
    b: &'a [f32],
    op: Op,
}

impl WithSimd for Kernel<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        let Kernel { a, b, op } = self;
        let (a_vectors, a_tail) = S::as_simd_f32s(a);
        let (b_vectors, b_tail) = S::as_simd_f32s(b);
        let term = |x: S::f32s, y: S::f32s, sum: S::f32s| match op {
            Op::Dot => simd.mul_add_e_f32s(x, y, sum),
            Op::SquaredL2 => {
                let d = simd.sub_f32s(x, y);
                simd.mul_add_e_f32s(d, d, sum)
            }
        };
        let zero = simd.splat_f32s(0.0);
        let mut sums = [zero; 4];
        let blocks = a_vectors.len() / 4 * 4;
        for (x, y) in a_vectors[..blocks].chunks_exact(4).zip(b_vectors[..blocks].chunks_exact(4)) {
            for lane in 0..4 {
                sums[lane] = term(x[lane], y[lane], sums[lane]);
            }
        }
        for (&x, &y) in a_vectors[blocks..].iter().zip(&b_vectors[blocks..]) {
            sums[0] = term(x, y, sums[0]);
        }
        let tail = term(simd.partial_load_f32s(a_tail), simd.partial_load_f32s(b_tail), zero);
        let total = simd
            .add_f32s(simd.add_f32s(sums[0], sums[1]), simd.add_f32s(sums[2], simd.add_f32s(sums[3], tail)));
        simd.reduce_sum_f32s(total)
    }
}

/// `a·b` of two code vectors over their common length, exactly (in i32).
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    Arch::new().dispatch(CodeDot { a: &a[..n], b: &b[..n] })
}

/// The dot product of 8-bit codes. Integer sums may be reordered freely, so plain Rust,
/// compiled inside pulp's dispatch for the CPU's instruction set, vectorises on its own
/// (widening multiply-adds).
struct CodeDot<'a> {
    a: &'a [i8],
    b: &'a [i8],
}

impl WithSimd for CodeDot<'_> {
    type Output = i32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> i32 {
        self.a.iter().zip(self.b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs of every length from 0 to 200 (covering each SIMD path's full blocks, single
    /// vectors and tails), with values of mixed sign.
    fn pairs() -> impl Iterator<Item = (Vec<f32>, Vec<f32>)> {
        (0..=200).map(|n| {
            let a = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let b = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
            (a, b)
        })
    }

    fn exact_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
    }

    fn exact_squared_l2(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum()
    }

    #[test]
    fn dot_matches_a_double_precision_sum_at_every_length() {
        for (a, b) in pairs() {
            let want = exact_dot(&a, &b);
            let got = dot(&a, &b);
            assert!(
                (f64::from(got) - want).abs() < 1e-4 * (1.0 + want.abs()),
                "n {}: {got} vs {want}",
                a.len()
            );
        }
    }

    #[test]
    fn squared_l2_matches_a_double_precision_sum_at_every_length() {
        for (a, b) in pairs() {
            let want = exact_squared_l2(&a, &b);
            let got = squared_l2(&a, &b);
            assert!((f64::from(got) - want).abs() < 1e-4 * (1.0 + want), "n {}: {got} vs {want}", a.len());
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_sums() {
        for (a, b) in pairs() {
            let scalar = pulp::Scalar::new();
            let want = (
                scalar.vectorize(Kernel { a: &a, b: &b, op: Op::Dot }),
                scalar.vectorize(Kernel { a: &a, b: &b, op: Op::SquaredL2 }),
            );
            let got = (dot(&a, &b), squared_l2(&a, &b));
            let tolerance = |w: f32| 1e-4 * (1.0 + w.abs());
            assert!((got.0 - want.0).abs() < tolerance(want.0), "n {}: {got:?} vs {want:?}", a.len());
            assert!((got.1 - want.1).abs() < tolerance(want.1), "n {}: {got:?} vs {want:?}", a.len());
        }
    }

    #[test]
    fn code_dot_is_exact_at_every_length() {
        for n in 0..=300usize {
            let a: Vec<i8> = (0..n).map(|i| (i * 37 % 255) as i32 - 127).map(|v| v as i8).collect();
            let b: Vec<i8> = (0..n).map(|i| (i * 91 % 251) as i32 - 125).map(|v| v as i8).collect();
            let want: i32 = a.iter().zip(&b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
            assert_eq!(dot_i8(&a, &b), want, "n {n}");
        }
        assert_eq!(dot_i8(&[-127; 4096], &[-127; 4096]), 4096 * 127 * 127);
    }
}
