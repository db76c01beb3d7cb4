//! Retrieval quality of a labelled collection of vectors: every row queries all the others by
//! exact nearest-neighbour search (cosine or L2, the query itself excluded), and the neighbours
//! are scored against the labels as precision@k (micro and macro), mAP@k and k-NN accuracy.
//!
//! The search is a blocked matrix product (query blocks in parallel with rayon, database blocks
//! in turn) with a running top-k per query kept by partial selection, so memory stays at one
//! score tile per thread whatever the collection size.
//!
//! Definitions, for a query q with label y(q), its k' = min(k, N - 1) nearest other rows
//! n_1..n_k' (nearest first; equal scores rank the lower row first), rel_i = 1 when
//! y(n_i) = y(q), and R(q) the number of other rows labelled y(q):
//! - precision@k(q) = (Σ_i rel_i) / k'. *Micro* is its mean over all queries; *macro* is the mean
//!   over labels of the mean over that label's queries, so small classes weigh as much as large.
//! - AP@k(q) = (1 / min(k', R(q))) · Σ_i rel_i · precision@i(q): the precision at each relevant
//!   neighbour, normalised by the most relevant neighbours the top k' could hold, so a query
//!   whose every possible relevant item is ranked first scores 1. mAP@k is its mean over queries.
//! - k-NN accuracy: the share of queries whose label wins the vote of their k' neighbours; a tie
//!   goes to the tied label held by the nearest neighbour.
//!
//! A query with no other row of its label (R(q) = 0) cannot be answered correctly: it scores 0
//! on every measure and still counts among the queries.
//!
//! [`RetrievalRun::measure`] scores one version of the vectors (as embedded, or after a PCA of
//! [`crate::post_process`]); dim-infer's `embeddings_retrieval` reads a dim-embed output
//! directory for it, and dim-train's evaluation scores encoder taps with it.

use crate::distance::Metric;
use crate::post_process::PcaDescription;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use serde::Serialize;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Query rows scored together against one database block.
const QUERY_BLOCK: usize = 256;
/// Database rows in one score tile (with [`QUERY_BLOCK`], a 4 MiB tile per thread).
const DATABASE_BLOCK: usize = 4096;

/// Errors evaluating retrieval.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetrievalError {
    /// The inputs do not fit together or are out of range.
    #[error("invalid retrieval input: {0}")]
    Input(String),
    /// A labels file is unusable.
    #[error("{path}: {message}")]
    Labels {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The nearest other rows of every row of a matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    /// Neighbours per row: min(k, rows - 1).
    pub k: usize,
    /// Row-major `[rows, k]`: the neighbours of row `q` are `rows[q * k..(q + 1) * k]`,
    /// nearest first.
    pub rows: Vec<u32>,
}

impl Neighbours {
    /// The neighbours of row `query`, nearest first.
    pub fn of(&self, query: usize) -> &[u32] {
        &self.rows[query * self.k..(query + 1) * self.k]
    }
}

/// Retrieval measures of one set of vectors (see the module documentation for definitions).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalScores {
    /// Neighbours scored per query (min(k, queries - 1)).
    pub k: usize,
    /// Number of queries (every row).
    pub queries: usize,
    /// Number of distinct labels.
    pub classes: usize,
    /// Mean precision@k over queries.
    pub precision_at_k_micro: f64,
    /// Mean over labels of the mean precision@k of that label's queries.
    pub precision_at_k_macro: f64,
    /// Mean average precision over the top k, normalised by min(k, relevant items).
    pub map_at_k: f64,
    /// Share of queries whose label wins the majority vote of their k neighbours.
    pub knn_accuracy: f64,
}

/// Finds the `k` nearest other rows of every row of the row-major `[rows, cols]` matrix
/// `values` by exact search: cosine similarity (rows compared at unit length; a zero row has
/// similarity 0 to everything) or L2 distance.
pub fn nearest_neighbours(
    values: &[f32],
    cols: usize,
    k: usize,
    metric: Metric,
) -> Result<Neighbours, RetrievalError> {
    nearest_neighbours_in_blocks(values, cols, k, metric, QUERY_BLOCK, DATABASE_BLOCK)
}

fn nearest_neighbours_in_blocks(
    values: &[f32],
    cols: usize,
    k: usize,
    metric: Metric,
    query_block: usize,
    database_block: usize,
) -> Result<Neighbours, RetrievalError> {
    if cols == 0 || !values.len().is_multiple_of(cols) {
        return Err(RetrievalError::Input(format!(
            "{} values do not make rows of {cols} columns",
            values.len()
        )));
    }
    if k == 0 {
        return Err(RetrievalError::Input("k must be at least 1".into()));
    }
    let count = values.len() / cols;
    if count < 2 {
        return Err(RetrievalError::Input(format!("need at least 2 rows to retrieve from, got {count}")));
    }
    if u32::try_from(count).is_err() {
        return Err(RetrievalError::Input(format!("{count} rows are more than 2^32")));
    }
    let k = k.min(count - 1);
    let database = Database::new(values, cols, metric);
    let mut neighbours = vec![0u32; count * k];
    neighbours.par_chunks_mut(query_block * k).enumerate().for_each(|(block, out)| {
        let first = block * query_block;
        let queries = out.len() / k;
        let query_values = &database.values[first * cols..(first + queries) * cols];
        let mut best: Vec<TopK> = (0..queries).map(|_| TopK::new(k)).collect();
        let mut tile = vec![0f32; queries * database_block];
        for start in (0..count).step_by(database_block) {
            let width = database_block.min(count - start);
            let tile = &mut tile[..queries * width];
            database.score_tile(query_values, queries, start, width, tile);
            for (offset, (top, scores)) in best.iter_mut().zip(tile.chunks_exact(width)).enumerate() {
                let query = first + offset;
                for (column, &score) in scores.iter().enumerate() {
                    let row = start + column;
                    if row != query {
                        top.offer(score, row as u32);
                    }
                }
            }
        }
        for (top, out) in best.into_iter().zip(out.chunks_exact_mut(k)) {
            out.copy_from_slice(&top.into_sorted_rows());
        }
    });
    Ok(Neighbours { k, rows: neighbours })
}

/// The rows to search, prepared so that a higher tile score means nearer.
struct Database<'a> {
    /// Unit-length rows for cosine, the rows as given for L2.
    values: Cow<'a, [f32]>,
    cols: usize,
    /// For L2, each row's squared length: the score is 2 q·x − |x|², which ranks rows as −|q − x|²
    /// does for a fixed query.
    squared_norms: Option<Vec<f32>>,
}

impl<'a> Database<'a> {
    fn new(values: &'a [f32], cols: usize, metric: Metric) -> Self {
        match metric {
            Metric::Cosine => {
                let mut unit = values.to_vec();
                unit.par_chunks_mut(cols).for_each(|row| {
                    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                    row.iter_mut().for_each(|v| *v *= scale);
                });
                Database { values: Cow::Owned(unit), cols, squared_norms: None }
            }
            Metric::L2 => {
                let squared_norms =
                    values.par_chunks(cols).map(|row| row.iter().map(|v| v * v).sum()).collect();
                Database { values: Cow::Borrowed(values), cols, squared_norms: Some(squared_norms) }
            }
        }
    }

    /// Scores `queries` rows of `query_values` against database rows `start..start + width`
    /// into the row-major `[queries, width]` `tile`.
    fn score_tile(&self, query_values: &[f32], queries: usize, start: usize, width: usize, tile: &mut [f32]) {
        let cols = self.cols;
        let block = &self.values[start * cols..(start + width) * cols];
        let lhs = MatRef::from_row_major_slice(query_values, queries, cols);
        let rhs = MatRef::from_row_major_slice(block, width, cols).transpose();
        let dst = MatMut::from_row_major_slice_mut(tile, queries, width);
        let (alpha, squared_norms) = match &self.squared_norms {
            None => (1.0, None),
            Some(norms) => (2.0, Some(&norms[start..start + width])),
        };
        // One thread per query block already keeps every core busy.
        faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, alpha, Par::Seq);
        if let Some(norms) = squared_norms {
            for scores in tile.chunks_exact_mut(width) {
                scores.iter_mut().zip(norms).for_each(|(score, norm)| *score -= norm);
            }
        }
    }
}

/// Higher score first, then lower row: the order of neighbours.
fn nearer(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The `k` best (score, row) pairs offered so far. Candidates collect in a buffer that is cut
/// back to the best `k` by partial selection whenever it holds `2k`; the k-th best score so far
/// then turns away most later candidates without touching the buffer.
struct TopK {
    k: usize,
    candidates: Vec<(f32, u32)>,
    /// The k-th best score after the last cut; rows arrive in increasing order, so a later row
    /// with an equal score ranks below it.
    floor: f32,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK { k, candidates: Vec::with_capacity(2 * k), floor: f32::NEG_INFINITY }
    }

    fn offer(&mut self, score: f32, row: u32) {
        if self.candidates.len() < self.k || score > self.floor {
            self.candidates.push((score, row));
            if self.candidates.len() >= 2 * self.k {
                self.cut();
            }
        }
    }

    fn cut(&mut self) {
        if self.candidates.len() > self.k {
            self.candidates.select_nth_unstable_by(self.k - 1, nearer);
            self.candidates.truncate(self.k);
        }
        if self.candidates.len() == self.k {
            self.floor = self.candidates.iter().map(|c| c.0).fold(f32::INFINITY, f32::min);
        }
    }

    fn into_sorted_rows(mut self) -> Vec<u32> {
        self.cut();
        self.candidates.sort_unstable_by(nearer);
        self.candidates.into_iter().map(|(_, row)| row).collect()
    }
}

/// Scores `neighbours` (of every row) against `labels` (one per row).
pub fn score(neighbours: &Neighbours, labels: &[u32]) -> Result<RetrievalScores, RetrievalError> {
    let queries = labels.len();
    let k = neighbours.k;
    if k == 0 || neighbours.rows.len() != queries * k {
        return Err(RetrievalError::Input(format!(
            "{queries} labels for {} neighbours, {k} per row",
            neighbours.rows.len()
        )));
    }
    // Dense class numbers, so that any u32 labels index small tables.
    let distinct: BTreeSet<u32> = labels.iter().copied().collect();
    let class_of: BTreeMap<u32, usize> = distinct.into_iter().enumerate().map(|(i, l)| (l, i)).collect();
    let classes: Vec<usize> = labels.iter().map(|label| class_of[label]).collect();
    let mut class_sizes = vec![0usize; class_of.len()];
    for &class in &classes {
        class_sizes[class] += 1;
    }
    let per_query: Vec<QueryScores> = (0..queries)
        .into_par_iter()
        .map(|query| {
            let class = classes[query];
            let relevant_total = class_sizes[class] - 1;
            let found = neighbours.of(query);
            let mut hits = 0usize;
            let mut precision_sum = 0.0;
            for (rank, &row) in found.iter().enumerate() {
                if classes[row as usize] == class {
                    hits += 1;
                    precision_sum += hits as f64 / (rank + 1) as f64;
                }
            }
            let winner = vote(found.iter().map(|&row| classes[row as usize]));
            QueryScores {
                precision: hits as f64 / k as f64,
                average_precision: if relevant_total == 0 {
                    0.0
                } else {
                    precision_sum / k.min(relevant_total) as f64
                },
                voted_right: relevant_total > 0 && winner == Some(class),
            }
        })
        .collect();
    let mut class_precision = vec![0.0f64; class_sizes.len()];
    for (&class, query) in classes.iter().zip(&per_query) {
        class_precision[class] += query.precision;
    }
    let macro_precision =
        class_precision.iter().zip(&class_sizes).map(|(sum, &size)| sum / size as f64).sum::<f64>()
            / class_sizes.len() as f64;
    let mean = |of: fn(&QueryScores) -> f64| per_query.iter().map(of).sum::<f64>() / queries as f64;
    Ok(RetrievalScores {
        k,
        queries,
        classes: class_sizes.len(),
        precision_at_k_micro: mean(|q| q.precision),
        precision_at_k_macro: macro_precision,
        map_at_k: mean(|q| q.average_precision),
        knn_accuracy: mean(|q| f64::from(u8::from(q.voted_right))),
    })
}

/// One query's contributions to the measures.
struct QueryScores {
    precision: f64,
    average_precision: f64,
    voted_right: bool,
}

/// The class with the most votes among neighbour classes given nearest first; a tie goes to
/// the tied class seen first. None without votes.
fn vote(classes: impl Iterator<Item = usize>) -> Option<usize> {
    // (class, votes, rank of its nearest voter); k is small, so a linear scan beats a map.
    let mut tally: Vec<(usize, usize, usize)> = Vec::new();
    for (rank, class) in classes.enumerate() {
        match tally.iter_mut().find(|entry| entry.0 == class) {
            Some(entry) => entry.1 += 1,
            None => tally.push((class, 1, rank)),
        }
    }
    tally.iter().max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2))).map(|entry| entry.0)
}

/// Retrieval measures of the row-major `[rows, cols]` matrix `values` labelled by `labels`.
pub fn evaluate(
    values: &[f32],
    cols: usize,
    labels: &[u32],
    k: usize,
    metric: Metric,
) -> Result<RetrievalScores, RetrievalError> {
    Ok(RetrievalRun::measure(String::new(), values, cols, None, labels, k, metric)?.scores)
}

/// Labels of rows, numbered densely, with their names (`names[label]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// One label per row.
    pub of_row: Vec<u32>,
    /// The name of each label, sorted.
    pub names: Vec<String>,
}

impl Labels {
    /// Numbers distinct keys in sorted order.
    fn from_keys<K: Ord + Clone>(keys: Vec<K>, name: impl Fn(&K) -> String) -> Self {
        let numbers: BTreeMap<K, u32> =
            keys.iter().cloned().collect::<BTreeSet<K>>().into_iter().zip(0..).collect();
        let names = numbers.keys().map(name).collect();
        Labels { of_row: keys.iter().map(|key| numbers[key]).collect(), names }
    }

    /// Each row's label is the name of the folder that holds its file.
    pub fn from_parent_folders<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Self {
        let folders: Vec<OsString> = paths
            .into_iter()
            .map(|path| path.parent().and_then(Path::file_name).unwrap_or_default().to_os_string())
            .collect();
        Labels::from_keys(folders, |folder| folder.to_string_lossy().into_owned())
    }

    /// One label per line of a text file, in row order.
    pub fn from_file(path: &Path, rows: usize) -> Result<Self, RetrievalError> {
        let labels_error = |message: String| RetrievalError::Labels { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| labels_error(e.to_string()))?;
        let lines: Vec<String> = text.lines().map(|line| line.trim().to_string()).collect();
        if lines.len() != rows {
            return Err(labels_error(format!("has {} lines for {rows} rows", lines.len())));
        }
        Ok(Labels::from_keys(lines, String::clone))
    }
}

/// The retrieval measures of one version of the vectors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalRun {
    /// Which vectors: `embedded` or the post-processing applied.
    pub vectors: String,
    /// Their width.
    pub dims: usize,
    /// The post-processing fitted on the collection, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_process: Option<PcaDescription>,
    /// Seconds spent on the exact search of every row.
    pub search_seconds: f64,
    /// The measures.
    #[serde(flatten)]
    pub scores: RetrievalScores,
}

impl RetrievalRun {
    /// Searches the row-major `[rows, dims]` matrix `values` exactly (every row a query, itself
    /// excluded) and scores the neighbours against `labels`, one per row; `vectors` names them.
    pub fn measure(
        vectors: String,
        values: &[f32],
        dims: usize,
        post_process: Option<PcaDescription>,
        labels: &[u32],
        k: usize,
        metric: Metric,
    ) -> Result<RetrievalRun, RetrievalError> {
        if values.len() != labels.len() * dims {
            return Err(RetrievalError::Input(format!(
                "{} labels for {} values of width {dims}",
                labels.len(),
                values.len()
            )));
        }
        let started = Instant::now();
        let neighbours = nearest_neighbours(values, dims, k, metric)?;
        let search_seconds = started.elapsed().as_secs_f64();
        Ok(RetrievalRun { vectors, dims, post_process, search_seconds, scores: score(&neighbours, labels)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six points on a line, labelled A = 0 or B = 1:
    ///
    /// | row | x  | label |
    /// |-----|----|-------|
    /// | 0   | 0  | A     |
    /// | 1   | 1  | A     |
    /// | 2   | 3  | A     |
    /// | 3   | 8  | A     |
    /// | 4   | 12 | B     |
    /// | 5   | 13 | B     |
    const LINE: [f32; 6] = [0.0, 1.0, 3.0, 8.0, 12.0, 13.0];
    const LINE_LABELS: [u32; 6] = [0, 0, 0, 0, 1, 1];

    #[test]
    fn neighbours_on_a_line_by_l2_with_a_tie_going_to_the_lower_row() {
        // Distances to the two nearest other rows:
        // row 0: row 1 (1), row 2 (3)
        // row 1: row 0 (1), row 2 (2)
        // row 2: row 1 (2), row 0 (3)
        // row 3: row 4 (4), then rows 2 and 5 tie at 5: row 2 ranks first
        // row 4: row 5 (1), row 3 (4)
        // row 5: row 4 (1), row 3 (5)
        let found = nearest_neighbours(&LINE, 1, 2, Metric::L2).unwrap();
        assert_eq!(found.k, 2);
        assert_eq!(found.rows, [1, 2, 0, 2, 1, 0, 4, 2, 5, 3, 4, 3]);
    }

    #[test]
    fn measures_on_the_line_match_the_hand_computed_values() {
        // Relevance of the two neighbours (same label as the query), and R = other rows of the
        // query's label (A: 3, B: 1):
        // row 0: A A -> [1, 1]  precision 1    AP (1/1 + 2/2) / min(2, 3) = 1
        // row 1: A A -> [1, 1]  precision 1    AP 1
        // row 2: A A -> [1, 1]  precision 1    AP 1
        // row 3: B A -> [0, 1]  precision 1/2  AP (1/2) / min(2, 3) = 1/4
        // row 4: B A -> [1, 0]  precision 1/2  AP (1/1) / min(2, 1) = 1
        // row 5: B A -> [1, 0]  precision 1/2  AP 1
        // micro precision = (1 + 1 + 1 + 1/2 + 1/2 + 1/2) / 6 = 0.75
        // macro precision = ((1 + 1 + 1 + 1/2) / 4 + (1/2 + 1/2) / 2) / 2 = (0.875 + 0.5) / 2 = 0.6875
        // mAP = (1 + 1 + 1 + 1/4 + 1 + 1) / 6 = 0.875
        // k-NN votes: rows 0-2 A A -> A (right); row 3 B A, a tie won by the nearest -> B (wrong);
        // rows 4 and 5 B A -> B (right): accuracy 5/6.
        let scores = evaluate(&LINE, 1, &LINE_LABELS, 2, Metric::L2).unwrap();
        assert_eq!((scores.k, scores.queries, scores.classes), (2, 6, 2));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(scores.precision_at_k_micro, 0.75), "{scores:?}");
        assert!(close(scores.precision_at_k_macro, 0.6875), "{scores:?}");
        assert!(close(scores.map_at_k, 0.875), "{scores:?}");
        assert!(close(scores.knn_accuracy, 5.0 / 6.0), "{scores:?}");
    }

    #[test]
    fn cosine_ranks_by_angle_where_l2_ranks_by_distance() {
        // Query row 0 = (1, 0). By angle: row 1 (10, 1) at cos 0.995, row 2 (0.5, 0.5) at
        // 0.707, row 3 (0, 1) at 0. By distance: row 2 (0.71), row 3 (1.41), row 1 (9.06).
        let values = [1.0, 0.0, 10.0, 1.0, 0.5, 0.5, 0.0, 1.0];
        let cosine = nearest_neighbours(&values, 2, 3, Metric::Cosine).unwrap();
        assert_eq!(cosine.of(0), [1, 2, 3]);
        let l2 = nearest_neighbours(&values, 2, 3, Metric::L2).unwrap();
        assert_eq!(l2.of(0), [2, 3, 1]);
    }

    #[test]
    fn k_beyond_the_collection_is_cut_to_every_other_row_and_a_singleton_class_scores_zero() {
        // Rows 0 and 1 (label 0) see each other; row 2 (label 1) has nothing relevant.
        let values = [0.0, 1.0, 5.0];
        let scores = evaluate(&values, 1, &[0, 0, 1], 10, Metric::L2).unwrap();
        assert_eq!(scores.k, 2);
        // precision: rows 0, 1 -> 1/2 each (one relevant in two), row 2 -> 0: micro 1/3.
        assert!((scores.precision_at_k_micro - 1.0 / 3.0).abs() < 1e-12, "{scores:?}");
        // AP: rows 0, 1 -> (1/1) / min(2, 1) = 1, row 2 -> 0: mAP 2/3.
        assert!((scores.map_at_k - 2.0 / 3.0).abs() < 1e-12, "{scores:?}");
        // k-NN: row 0 votes 1 (label 0, nearest) and 2 (label 1): tie -> label 0, right; same
        // for row 1; row 2 cannot be right.
        assert!((scores.knn_accuracy - 2.0 / 3.0).abs() < 1e-12, "{scores:?}");
    }

    #[test]
    fn blocked_search_agrees_with_brute_force_across_block_edges() {
        let (rows, cols, k) = (203, 7, 5);
        let mut state = 17u64;
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        for metric in [Metric::Cosine, Metric::L2] {
            let blocked = nearest_neighbours_in_blocks(&values, cols, k, metric, 16, 50).unwrap();
            let database = Database::new(&values, cols, metric);
            for query in 0..rows {
                let q = &values[query * cols..(query + 1) * cols];
                let mut all: Vec<(f64, usize)> = (0..rows)
                    .filter(|&row| row != query)
                    .map(|row| {
                        let x = &values[row * cols..(row + 1) * cols];
                        let distance = match metric {
                            Metric::L2 => q.iter().zip(x).map(|(a, b)| f64::from(a - b).powi(2)).sum(),
                            Metric::Cosine => {
                                let unit = &database.values;
                                let dot: f64 = unit[query * cols..(query + 1) * cols]
                                    .iter()
                                    .zip(&unit[row * cols..(row + 1) * cols])
                                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                                    .sum();
                                -dot
                            }
                        };
                        (distance, row)
                    })
                    .collect();
                all.sort_by(|a, b| a.0.total_cmp(&b.0));
                let want: Vec<u32> = all[..k].iter().map(|&(_, row)| row as u32).collect();
                assert_eq!(blocked.of(query), want, "{metric:?} query {query}");
            }
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(evaluate(&LINE, 1, &LINE_LABELS, 0, Metric::L2).is_err());
        assert!(evaluate(&LINE, 1, &LINE_LABELS[..5], 2, Metric::L2).is_err());
        assert!(evaluate(&LINE[..1], 1, &LINE_LABELS[..1], 2, Metric::L2).is_err());
        assert!(nearest_neighbours(&LINE, 4, 2, Metric::L2).is_err());
    }
}
