//! Post-processing of vectors fitted on a collection: centring on the collection's mean,
//! projection onto its top D principal components (PCA), and optionally whitening, each
//! component divided by √(variance + eps) so that every kept direction has unit variance.
//!
//! `dim-search build --pca D` fits it on the indexed vectors, stores it in the index directory
//! ([`MEAN_FILE`], [`COMPONENTS_FILE`], [`VARIANCES_FILE`], each readable with `numpy.load`)
//! and describes it in `index.json` ([`PcaDescription`]); every indexed row and every query is
//! then projected by the same [`Pca::apply`] before the metric's own preparation (unit length
//! for cosine). `dim-search retrieval --pca D` fits it on the collection it scores.
//!
//! The covariance is accumulated in f64 by blocked matrix products. Its leading eigenpairs come
//! from faer's symmetric eigensolver or, for 1024 columns or more with at most half of them kept,
//! from subspace iteration with Rayleigh–Ritz steps: matrix products only, about 2.5x faster than
//! the full decomposition for 256 of 4096 columns, with eigenvalues within 1e-6 of its own; it
//! falls back to the full decomposition if it does not converge. With fewer rows than dimensions
//! the N × N Gram matrix of the centred rows is decomposed instead (same non-zero eigenvalues;
//! components are the centred rows combined by its eigenvectors), so a few hundred 4096-d
//! vectors do not need a 4096² problem.
//! The variance is normalised by N − 1, as numpy's `cov` does. A component's sign is fixed so
//! that its entry of largest magnitude is positive.

use crate::distance;
use crate::npy::{self, NpyError};
use dim_models::onnx_metadata::SearchRecipe;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The mean the vectors are centred on, `[1, input_dim]`.
pub const MEAN_FILE: &str = "pca_mean.npy";
/// The principal components, one per row, largest variance first, `[dims, input_dim]`.
pub const COMPONENTS_FILE: &str = "pca_components.npy";
/// The variance along each component (eigenvalues of the covariance), `[1, dims]`.
pub const VARIANCES_FILE: &str = "pca_variances.npy";
/// Default `eps` added to each variance before whitening.
pub const DEFAULT_WHITEN_EPS: f64 = 1e-6;

/// Rows centred and multiplied together per step when accumulating the covariance.
const COVARIANCE_CHUNK: usize = 1024;

/// From this many columns on (when at most half as many components are kept), the leading
/// eigenpairs of the covariance come from subspace iteration rather than a full decomposition.
const SUBSPACE_MIN_COLS: usize = 1024;

/// Subspace iteration stops when every kept Ritz pair (θ, y) has ‖C y − θ y‖ at most this times
/// the largest eigenvalue.
const SUBSPACE_TOLERANCE: f64 = 1e-6;

/// Iterations of subspace iteration before falling back to the full decomposition.
const SUBSPACE_MAX_ITERATIONS: usize = 200;

/// What to fit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PcaSpec {
    /// Dimensions to keep.
    pub dims: usize,
    /// Divide each component by √(variance + eps).
    pub whiten: bool,
    /// Added to each variance before whitening (guards near-zero variances).
    pub eps: f64,
}

impl PcaSpec {
    /// A readable name, e.g. "pca 256 + whitening".
    pub fn describe(&self) -> String {
        format!("pca {}{}", self.dims, if self.whiten { " + whitening" } else { "" })
    }

    /// What `recipe` asks for a collection of `rows` vectors: its PCA when the collection is
    /// large enough for it ([`SearchRecipe::applies_to`]), else nothing.
    pub fn recommended(recipe: Option<SearchRecipe>, rows: usize) -> Option<PcaSpec> {
        recipe.filter(|recipe| recipe.applies_to(rows)).map(|recipe| PcaSpec {
            dims: recipe.pca_dims,
            whiten: recipe.whiten,
            eps: DEFAULT_WHITEN_EPS,
        })
    }
}

/// Which post-processing a collection gets: the one asked for (`--pca D`, `D = 0` for none) or,
/// when none was asked for, the model's recommended recipe if the collection is large enough
/// for it. dim-search, dim-serve and the Python package all choose by it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PostProcessChoice {
    /// This one, or none.
    Given(Option<PcaSpec>),
    /// [`PcaSpec::recommended`] for the collection.
    Recommended,
}

impl PostProcessChoice {
    /// From a `--pca D` option (absent: [`PostProcessChoice::Recommended`]; 0: none) with its
    /// whitening flag and eps.
    pub fn from_flags(pca: Option<usize>, whiten: bool, eps: f64) -> Self {
        match pca {
            None => PostProcessChoice::Recommended,
            Some(0) => PostProcessChoice::Given(None),
            Some(dims) => PostProcessChoice::Given(Some(PcaSpec { dims, whiten, eps })),
        }
    }

    /// The post-processing for a collection of `rows` vectors from a model recommending `recipe`.
    pub fn resolve(self, recipe: Option<SearchRecipe>, rows: usize) -> Option<PcaSpec> {
        match self {
            PostProcessChoice::Given(spec) => spec,
            PostProcessChoice::Recommended => PcaSpec::recommended(recipe, rows),
        }
    }
}

/// What was fitted: the `post_process` entry of `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcaDescription {
    /// Width of the vectors it takes.
    pub input_dim: usize,
    /// Width of the vectors it gives (components kept).
    pub dims: usize,
    /// Whether each component is divided by √(variance + eps).
    pub whiten: bool,
    /// Added to each variance before whitening.
    pub eps: f64,
    /// Rows it was fitted on.
    pub fitted_rows: usize,
    /// Share of the fitted rows' total variance along the kept components.
    pub retained_variance: f64,
    /// Seconds the fit took.
    pub fit_seconds: f64,
}

impl PcaDescription {
    /// The parameters it was fitted with.
    pub fn spec(&self) -> PcaSpec {
        PcaSpec { dims: self.dims, whiten: self.whiten, eps: self.eps }
    }
}

/// Errors fitting, storing or loading a post-processing transform.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostProcessError {
    /// A parameter is out of range for the data.
    #[error("invalid post-processing parameter: {0}")]
    Parameter(String),
    /// The eigensolver failed.
    #[error("the eigendecomposition of the covariance did not converge")]
    NoConvergence,
    /// A stored transform's file is unreadable.
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// A stored transform's file could not be written or does not fit its description.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A fitted centring + PCA (+ whitening) transform.
#[derive(Debug, Clone, PartialEq)]
pub struct Pca {
    description: PcaDescription,
    mean: Vec<f32>,
    /// Row-major `[dims, input_dim]`.
    components: Vec<f32>,
    variances: Vec<f32>,
    /// What each projection is multiplied by: 1/√(variance + eps) when whitening, else 1.
    scales: Vec<f32>,
}

impl Pca {
    /// Fits the transform on the row-major `[rows, cols]` matrix `values`.
    pub fn fit(values: &[f32], cols: usize, spec: &PcaSpec) -> Result<Self, PostProcessError> {
        let started = Instant::now();
        if cols == 0 || !values.len().is_multiple_of(cols) {
            return Err(PostProcessError::Parameter(format!(
                "{} values do not make rows of {cols}",
                values.len()
            )));
        }
        let rows = values.len() / cols;
        if spec.dims == 0 || spec.dims > cols {
            return Err(PostProcessError::Parameter(format!(
                "--pca must be in 1..={cols} for {cols}-d vectors, got {}",
                spec.dims
            )));
        }
        if rows <= spec.dims {
            return Err(PostProcessError::Parameter(format!(
                "--pca {} needs more than {} rows to fit on, got {rows}",
                spec.dims, spec.dims
            )));
        }
        if !(spec.eps.is_finite() && spec.eps >= 0.0) {
            return Err(PostProcessError::Parameter(format!(
                "eps must be finite and >= 0, got {}",
                spec.eps
            )));
        }
        let mean = column_means(values, cols);
        let (components, variances, total_variance) = if rows > cols {
            principal_axes_from_covariance(values, cols, &mean, spec.dims)?
        } else {
            principal_axes_from_gram(values, cols, &mean, spec.dims)?
        };
        let kept: f64 = variances.iter().sum();
        let description = PcaDescription {
            input_dim: cols,
            dims: spec.dims,
            whiten: spec.whiten,
            eps: spec.eps,
            fitted_rows: rows,
            retained_variance: if total_variance > 0.0 { (kept / total_variance).min(1.0) } else { 1.0 },
            fit_seconds: started.elapsed().as_secs_f64(),
        };
        Ok(Pca::from_parts(
            description,
            mean.iter().map(|&m| m as f32).collect(),
            components,
            variances.iter().map(|&v| v as f32).collect(),
        ))
    }

    /// The transform from its stored parts (as [`Pca::mean`], [`Pca::components`] and
    /// [`Pca::variances`] give them); the scales follow from the description.
    pub fn from_parts(
        description: PcaDescription,
        mean: Vec<f32>,
        components: Vec<f32>,
        variances: Vec<f32>,
    ) -> Self {
        let scales = variances
            .iter()
            .map(|&v| {
                if description.whiten { (1.0 / (f64::from(v) + description.eps).sqrt()) as f32 } else { 1.0 }
            })
            .collect();
        Pca { description, mean, components, variances, scales }
    }

    /// What was fitted.
    pub fn description(&self) -> &PcaDescription {
        &self.description
    }

    /// The mean the vectors are centred on.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The variance along each kept component, largest first.
    pub fn variances(&self) -> &[f32] {
        &self.variances
    }

    /// The kept components, row-major `[dims, input_dim]`, largest variance first.
    pub fn components(&self) -> &[f32] {
        &self.components
    }

    /// Transforms one vector of `input_dim` values into `dims` values. Every row goes through
    /// this same arithmetic, so a vector gives the same bits alone or in a matrix.
    pub fn apply(&self, vector: &[f32]) -> Result<Vec<f32>, PostProcessError> {
        if vector.len() != self.description.input_dim {
            return Err(PostProcessError::Parameter(format!(
                "vector has {} values, the transform takes {}",
                vector.len(),
                self.description.input_dim
            )));
        }
        let mut out = vec![0f32; self.description.dims];
        self.apply_into(vector, &mut Vec::with_capacity(vector.len()), &mut out);
        Ok(out)
    }

    /// Transforms every row of the row-major matrix `values` (`input_dim` wide), in parallel.
    pub fn apply_rows(&self, values: &[f32]) -> Result<Vec<f32>, PostProcessError> {
        let (input, dims) = (self.description.input_dim, self.description.dims);
        if !values.len().is_multiple_of(input) {
            return Err(PostProcessError::Parameter(format!(
                "{} values do not make rows of {input}",
                values.len()
            )));
        }
        let mut out = vec![0f32; values.len() / input * dims];
        out.par_chunks_mut(dims).zip(values.par_chunks(input)).for_each_init(
            || Vec::with_capacity(input),
            |centred, (out, row)| self.apply_into(row, centred, out),
        );
        Ok(out)
    }

    fn apply_into(&self, row: &[f32], centred: &mut Vec<f32>, out: &mut [f32]) {
        centred.clear();
        centred.extend(row.iter().zip(&self.mean).map(|(x, m)| x - m));
        let input = self.description.input_dim;
        for ((value, component), scale) in
            out.iter_mut().zip(self.components.chunks_exact(input)).zip(&self.scales)
        {
            *value = distance::dot(centred, component) * scale;
        }
    }

    /// Writes the transform's files into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PostProcessError> {
        let (input, dims) = (self.description.input_dim, self.description.dims);
        for (name, cols, values) in [
            (MEAN_FILE, input, &self.mean),
            (COMPONENTS_FILE, input, &self.components),
            (VARIANCES_FILE, dims, &self.variances),
        ] {
            let path = dir.join(name);
            npy::write_matrix(&path, cols, values)
                .map_err(|e| PostProcessError::File { path: path.clone(), message: e.to_string() })?;
        }
        Ok(())
    }

    /// Reads the transform that `description` describes from its files in `dir`.
    pub fn load(dir: &Path, description: &PcaDescription) -> Result<Self, PostProcessError> {
        let (input, dims) = (description.input_dim, description.dims);
        let read = |name: &str, rows: usize, cols: usize| -> Result<Vec<f32>, PostProcessError> {
            let path = dir.join(name);
            let matrix = npy::read_matrix(&path)?;
            if (matrix.rows, matrix.cols) != (rows, cols) {
                return Err(PostProcessError::File {
                    path,
                    message: format!(
                        "is [{}, {}] but index.json describes [{rows}, {cols}]; rebuild the index",
                        matrix.rows, matrix.cols
                    ),
                });
            }
            Ok(matrix.values)
        };
        let mean = read(MEAN_FILE, 1, input)?;
        let components = read(COMPONENTS_FILE, dims, input)?;
        let variances = read(VARIANCES_FILE, 1, dims)?;
        Ok(Pca::from_parts(description.clone(), mean, components, variances))
    }
}

/// The mean of each column, in f64.
fn column_means(values: &[f32], cols: usize) -> Vec<f64> {
    let rows = values.len() / cols;
    let sums = values
        .par_chunks(cols * COVARIANCE_CHUNK)
        .map(|block| {
            let mut sums = vec![0f64; cols];
            for row in block.chunks_exact(cols) {
                sums.iter_mut().zip(row).for_each(|(s, &v)| *s += f64::from(v));
            }
            sums
        })
        .reduce(
            || vec![0f64; cols],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    sums.into_iter().map(|s| s / rows as f64).collect()
}

/// Rows `block` (row-major, `mean.len()` wide) minus `mean`, as an f64 matrix.
fn centred(block: &[f32], mean: &[f64]) -> Mat<f64> {
    let cols = mean.len();
    Mat::from_fn(block.len() / cols, cols, |i, j| f64::from(block[i * cols + j]) - mean[j])
}

/// `dst = alpha · lhs · rhs` (or `+=` with [`Accum::Add`]) on the lower triangle of `dst` only, for
/// products known to be symmetric.
fn lower_triangle_of_product(
    dst: MatMut<'_, f64>,
    accum: Accum,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    alpha: f64,
) {
    use faer::linalg::matmul::triangular::{BlockStructure, matmul};
    let full = BlockStructure::Rectangular;
    matmul(dst, BlockStructure::TriangularLower, accum, lhs, full, rhs, full, alpha, Par::rayon(0));
}

/// The lower triangle of the `cols × cols` covariance (N − 1) of the rows: all that the
/// eigensolvers read.
fn lower_covariance(values: &[f32], cols: usize, mean: &[f64]) -> Mat<f64> {
    let rows = values.len() / cols;
    let norm = 1.0 / (rows - 1) as f64;
    let mut covariance = Mat::<f64>::zeros(cols, cols);
    for block in values.chunks(cols * COVARIANCE_CHUNK) {
        let x = centred(block, mean);
        lower_triangle_of_product(covariance.as_mut(), Accum::Add, x.transpose(), x.as_ref(), norm);
    }
    covariance
}

/// (components row-major `[dims, cols]`, their variances, the total variance) from the leading
/// eigenpairs of the `cols × cols` covariance.
fn principal_axes_from_covariance(
    values: &[f32],
    cols: usize,
    mean: &[f64],
    dims: usize,
) -> Result<(Vec<f32>, Vec<f64>, f64), PostProcessError> {
    let covariance = lower_covariance(values, cols, mean);
    let total_variance = (0..cols).map(|i| covariance[(i, i)]).sum();
    let leading = if cols >= SUBSPACE_MIN_COLS && dims * 2 <= cols {
        leading_by_subspace_iteration(&covariance, dims)?
    } else {
        None
    };
    let (vectors, values) = match leading {
        Some(found) => found,
        None => leading_by_full_decomposition(&covariance, dims)?,
    };
    let mut components = Vec::with_capacity(dims * cols);
    for column in 0..dims {
        components.extend(signed_component(vectors.col(column).iter().copied()));
    }
    Ok((components, values.into_iter().map(|v| v.max(0.0)).collect(), total_variance))
}

/// Leading eigenvectors (as the columns of a matrix) and their eigenvalues, largest first.
type Eigenpairs = (Mat<f64>, Vec<f64>);

/// The `dims` leading eigenpairs of the symmetric matrix whose lower triangle is `lower`, from
/// its full eigendecomposition.
fn leading_by_full_decomposition(lower: &Mat<f64>, dims: usize) -> Result<Eigenpairs, PostProcessError> {
    let cols = lower.ncols();
    let eigen = lower.self_adjoint_eigen(Side::Lower).map_err(|_| PostProcessError::NoConvergence)?;
    let (vectors, values) = (eigen.U(), eigen.S().column_vector());
    // Eigenvalues come in increasing order: the last `dims` columns, backwards.
    let leading = Mat::from_fn(cols, dims, |i, j| vectors[(i, cols - 1 - j)]);
    Ok((leading, (0..dims).map(|j| values[cols - 1 - j]).collect()))
}

/// The same by subspace iteration with Rayleigh–Ritz steps (block power iteration on a basis
/// wider than `dims`), which needs matrix products only and so costs a fraction of a full
/// decomposition when few components are kept of many columns. `None` when the Ritz pairs have
/// not converged within [`SUBSPACE_MAX_ITERATIONS`]: the caller then decomposes in full.
fn leading_by_subspace_iteration(
    lower: &Mat<f64>,
    dims: usize,
) -> Result<Option<Eigenpairs>, PostProcessError> {
    let cols = lower.ncols();
    let width = (dims + (dims / 2).max(16)).min(cols);
    let symmetric = Mat::from_fn(cols, cols, |i, j| if i >= j { lower[(i, j)] } else { lower[(j, i)] });
    // A fixed pseudo-random start, so fits are reproducible.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let start = Mat::from_fn(cols, width, |_, _| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    });
    let mut basis = start.qr().compute_thin_Q();
    for _ in 0..SUBSPACE_MAX_ITERATIONS {
        let image = &symmetric * &basis;
        let projected = basis.transpose() * &image;
        let eigen = projected.self_adjoint_eigen(Side::Lower).map_err(|_| PostProcessError::NoConvergence)?;
        let (rotation, ritz_values) = (eigen.U(), eigen.S().column_vector());
        let ritz_vectors = &basis * rotation;
        let ritz_images = &image * rotation;
        // Ritz values come in increasing order: the leading `dims` are the last columns.
        let largest = ritz_values[width - 1].abs().max(f64::MIN_POSITIVE);
        let converged = (width - dims..width).all(|column| {
            let residual: f64 = ritz_images
                .col(column)
                .iter()
                .zip(ritz_vectors.col(column).iter())
                .map(|(cy, y)| (cy - ritz_values[column] * y).powi(2))
                .sum::<f64>()
                .sqrt();
            residual <= SUBSPACE_TOLERANCE * largest
        });
        if converged {
            let leading = Mat::from_fn(cols, dims, |i, j| ritz_vectors[(i, width - 1 - j)]);
            return Ok(Some((leading, (0..dims).map(|j| ritz_values[width - 1 - j]).collect())));
        }
        basis = ritz_images.qr().compute_thin_Q();
    }
    Ok(None)
}

/// The same from the `rows × rows` Gram matrix G = X Xᵀ / (N − 1) of the centred rows X: its
/// eigenvectors u with eigenvalue μ give the covariance's eigenvectors Xᵀu / √((N − 1) μ) with
/// the same eigenvalue.
fn principal_axes_from_gram(
    values: &[f32],
    cols: usize,
    mean: &[f64],
    dims: usize,
) -> Result<(Vec<f32>, Vec<f64>, f64), PostProcessError> {
    let rows = values.len() / cols;
    let x = centred(values, mean);
    let mut gram = Mat::<f64>::zeros(rows, rows);
    let norm = 1.0 / (rows - 1) as f64;
    lower_triangle_of_product(gram.as_mut(), Accum::Replace, x.as_ref(), x.transpose(), norm);
    let total_variance: f64 = (0..rows).map(|i| gram[(i, i)]).sum();
    let eigen = gram.self_adjoint_eigen(Side::Lower).map_err(|_| PostProcessError::NoConvergence)?;
    let (vectors, eigenvalues) = (eigen.U(), eigen.S().column_vector());
    // Directions with no variance have no defined component in this form.
    let negligible = total_variance * 1e-12;
    let mut components = Vec::with_capacity(dims * cols);
    let mut variances = Vec::with_capacity(dims);
    for column in (rows - dims..rows).rev() {
        let variance = eigenvalues[column];
        if variance <= negligible {
            return Err(PostProcessError::Parameter(format!(
                "--pca {dims}: the {rows} rows vary along only {} directions",
                rows - 1 - column
            )));
        }
        let u: MatRef<'_, f64> = vectors.subcols(column, 1);
        let combined = x.transpose() * u;
        let scale = 1.0 / ((rows - 1) as f64 * variance).sqrt();
        components.extend(signed_component(combined.col(0).iter().map(|&v| v * scale)));
        variances.push(variance);
    }
    Ok((components, variances, total_variance))
}

/// A component as f32 with its sign fixed: the entry of largest magnitude (the first, on a tie)
/// is positive.
fn signed_component(entries: impl Iterator<Item = f64>) -> Vec<f32> {
    let entries: Vec<f64> = entries.collect();
    let largest = entries.iter().copied().fold(0.0f64, |best, v| if v.abs() > best.abs() { v } else { best });
    let sign = if largest < 0.0 { -1.0 } else { 1.0 };
    entries.into_iter().map(|v| (v * sign) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_is_what_was_asked_else_the_recipe_from_its_minimum_collection() {
        let recipe = SearchRecipe { pca_dims: 256, whiten: true, min_rows: 5120 };
        let recommended = PostProcessChoice::from_flags(None, false, 1e-3);
        assert_eq!(recommended, PostProcessChoice::Recommended);
        assert_eq!(recommended.resolve(Some(recipe), 5119), None, "too few rows");
        let applied = recommended.resolve(Some(recipe), 5120).unwrap();
        assert_eq!((applied.dims, applied.whiten, applied.eps), (256, true, DEFAULT_WHITEN_EPS));
        assert_eq!(recommended.resolve(None, 100_000), None, "a model without a recipe");

        let none = PostProcessChoice::from_flags(Some(0), true, 1e-3);
        assert_eq!(none.resolve(Some(recipe), 100_000), None, "--pca 0 wins over the recipe");
        let given = PostProcessChoice::from_flags(Some(64), false, 1e-3).resolve(Some(recipe), 10);
        assert_eq!(given, Some(PcaSpec { dims: 64, whiten: false, eps: 1e-3 }));
    }

    /// Correlated Gaussian-like rows: `latent` independent sources of decreasing scale mixed
    /// into `cols` columns, plus a little noise and an offset.
    fn correlated(rows: usize, cols: usize, latent: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        let mut uniform = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mixing: Vec<f32> = (0..latent * cols).map(|_| uniform()).collect();
        let mut values = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            let sources: Vec<f32> = (0..latent).map(|s| uniform() * (latent - s) as f32).collect();
            for c in 0..cols {
                let mixed: f32 = (0..latent).map(|s| sources[s] * mixing[s * cols + c]).sum();
                values.push(mixed + 0.05 * uniform() + c as f32 * 0.1);
            }
        }
        values
    }

    /// The covariance (N − 1) of the row-major `[rows, cols]` matrix, in f64.
    fn covariance(values: &[f32], cols: usize) -> Vec<f64> {
        let rows = values.len() / cols;
        let mean = column_means(values, cols);
        let mut cov = vec![0f64; cols * cols];
        for row in values.chunks_exact(cols) {
            for i in 0..cols {
                for j in 0..cols {
                    cov[i * cols + j] += (f64::from(row[i]) - mean[i]) * (f64::from(row[j]) - mean[j]);
                }
            }
        }
        cov.iter().map(|c| c / (rows - 1) as f64).collect()
    }

    #[test]
    fn whitening_gives_identity_covariance_on_the_fitted_rows() {
        let (rows, cols, dims) = (500, 12, 6);
        let values = correlated(rows, cols, 8, 1);
        let pca = Pca::fit(&values, cols, &PcaSpec { dims, whiten: true, eps: 0.0 }).unwrap();
        let transformed = pca.apply_rows(&values).unwrap();
        let cov = covariance(&transformed, dims);
        for i in 0..dims {
            for j in 0..dims {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((cov[i * dims + j] - want).abs() < 1e-4, "cov[{i}][{j}] = {}", cov[i * dims + j]);
            }
        }
    }

    #[test]
    fn without_whitening_the_projections_are_uncorrelated_with_the_fitted_variances_largest_first() {
        let (rows, cols, dims) = (400, 10, 4);
        let values = correlated(rows, cols, 6, 2);
        let pca = Pca::fit(&values, cols, &PcaSpec { dims, whiten: false, eps: DEFAULT_WHITEN_EPS }).unwrap();
        let cov = covariance(&pca.apply_rows(&values).unwrap(), dims);
        let variances = pca.variances();
        assert!(variances.windows(2).all(|w| w[0] >= w[1]), "{variances:?}");
        for i in 0..dims {
            for j in 0..dims {
                let want = if i == j { f64::from(variances[i]) } else { 0.0 };
                assert!((cov[i * dims + j] - want).abs() < 1e-3 * f64::from(variances[0]), "[{i}][{j}]");
            }
        }
        let description = pca.description();
        assert_eq!((description.input_dim, description.dims, description.fitted_rows), (cols, dims, rows));
        assert!(description.retained_variance > 0.5 && description.retained_variance <= 1.0);
    }

    #[test]
    fn the_gram_path_for_fewer_rows_than_dimensions_agrees_with_the_covariance_path() {
        // 30 rows of 40 columns: the Gram path. The same rows repeated twice give 60 > 40 rows,
        // the covariance path, with the same mean and a covariance scaled by 2 · 29/59 = 58/59.
        let (rows, cols, dims) = (30, 40, 5);
        let values = correlated(rows, cols, 6, 3);
        let gram = Pca::fit(&values, cols, &PcaSpec { dims, whiten: false, eps: 0.0 }).unwrap();
        let doubled: Vec<f32> = values.iter().chain(&values).copied().collect();
        let covariance = Pca::fit(&doubled, cols, &PcaSpec { dims, whiten: false, eps: 0.0 }).unwrap();
        for (a, b) in gram.components().iter().zip(covariance.components()) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        for (a, b) in gram.variances().iter().zip(covariance.variances()) {
            assert!((f64::from(*a) * 58.0 / 59.0 - f64::from(*b)).abs() < 1e-4 * f64::from(*a), "{a} vs {b}");
        }
    }

    #[test]
    fn subspace_iteration_finds_the_leading_eigenpairs_of_the_full_decomposition() {
        // 1,100 columns from 48 sources of distinct scales: the 32 leading eigenpairs are well
        // separated, so each eigenvector is defined up to its sign.
        let (rows, cols, dims) = (2500, 1100, 32);
        let data = correlated(rows, cols, 48, 11);
        let covariance = lower_covariance(&data, cols, &column_means(&data, cols));
        let (full_vectors, full_values) = leading_by_full_decomposition(&covariance, dims).unwrap();
        let (vectors, values) =
            leading_by_subspace_iteration(&covariance, dims).unwrap().expect("subspace iteration converges");
        for j in 0..dims {
            let relative = (values[j] - full_values[j]).abs() / full_values[j];
            assert!(relative < 1e-6, "eigenvalue {j}: {} vs {}", values[j], full_values[j]);
            let cosine: f64 = full_vectors.col(j).iter().zip(vectors.col(j).iter()).map(|(a, b)| a * b).sum();
            assert!(cosine.abs() > 1.0 - 1e-6, "eigenvector {j}: |cosine| {}", cosine.abs());
        }
        // `fit` takes this path at this width, and keeps the same variances.
        let pca = Pca::fit(&data, cols, &PcaSpec { dims, whiten: false, eps: 0.0 }).unwrap();
        for (fitted, full) in pca.variances().iter().zip(&full_values) {
            assert!((f64::from(*fitted) - full).abs() < 1e-5 * full, "{fitted} vs {full}");
        }
    }

    #[test]
    fn a_saved_transform_loads_back_identical_and_transforms_alike_alone_or_in_a_matrix() {
        let (rows, cols) = (200, 16);
        let values = correlated(rows, cols, 10, 4);
        let pca = Pca::fit(&values, cols, &PcaSpec { dims: 7, whiten: true, eps: 1e-3 }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        pca.save(dir.path()).unwrap();
        let loaded = Pca::load(dir.path(), pca.description()).unwrap();
        assert_eq!(loaded, pca);
        let all = loaded.apply_rows(&values).unwrap();
        for (row, transformed) in values.chunks_exact(cols).zip(all.chunks_exact(7)) {
            assert_eq!(pca.apply(row).unwrap(), transformed);
        }

        let mut wrong = pca.description().clone();
        wrong.dims = 8;
        assert!(matches!(Pca::load(dir.path(), &wrong), Err(PostProcessError::File { .. })));
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        let values = correlated(20, 8, 4, 5);
        let spec = |dims| PcaSpec { dims, whiten: false, eps: 0.0 };
        assert!(Pca::fit(&values, 8, &spec(0)).is_err());
        assert!(Pca::fit(&values, 8, &spec(9)).is_err());
        assert!(Pca::fit(&values[..8 * 3], 8, &spec(3)).is_err(), "3 rows cannot fit 3 components");
        assert!(Pca::fit(&values, 8, &PcaSpec { eps: -1.0, ..spec(2) }).is_err());
        let pca = Pca::fit(&values, 8, &spec(2)).unwrap();
        assert!(pca.apply(&values[..7]).is_err());
    }
}
