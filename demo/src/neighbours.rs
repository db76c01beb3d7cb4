//! Queries every indexed image against the index and scores the answers by class: the mean
//! precision@k (the share of the k nearest other images that have the query's class).

use anyhow::Context;
use dim_index::index::{Hit, SearchIndex};
use rayon::prelude::*;
use serde::Serialize;

/// The neighbours of one query image (itself excluded).
pub struct QueryResult {
    /// Manifest row of the query.
    pub row: usize,
    /// Its `k` nearest other rows, nearest first.
    pub hits: Vec<Hit>,
}

/// Precision@k over all queries, overall and per class.
#[derive(Debug, Serialize)]
pub struct Precision {
    /// k.
    pub k: usize,
    /// Number of queries.
    pub queries: usize,
    /// Mean over all queries.
    pub mean: f64,
    /// Mean over the queries of each class, by label.
    pub per_class: Vec<f64>,
}

/// Searches the `k` nearest neighbours of every indexed row, dropping the row itself.
pub fn query_all(index: &SearchIndex, k: usize, ef: usize) -> anyhow::Result<Vec<QueryResult>> {
    (0..index.vectors.rows)
        .into_par_iter()
        .map(|row| {
            let hits = index
                .search(index.vectors.row(row), k + 1, ef.max(k + 1))
                .with_context(|| format!("query for row {row}"))?;
            let hits: Vec<Hit> = hits
                .into_iter()
                .filter(|hit| hit.row != row)
                .take(k)
                .enumerate()
                .map(|(i, hit)| Hit { rank: i + 1, ..hit })
                .collect();
            Ok(QueryResult { row, hits })
        })
        .collect()
}

/// Mean precision@k given each row's label.
pub fn precision_at_k(results: &[QueryResult], labels: &[usize], k: usize, classes: usize) -> Precision {
    let mut sums = vec![0.0f64; classes];
    let mut counts = vec![0usize; classes];
    for result in results {
        let label = labels[result.row];
        let same = result.hits.iter().take(k).filter(|hit| labels[hit.row] == label).count();
        sums[label] += same as f64 / k as f64;
        counts[label] += 1;
    }
    let total: f64 = sums.iter().sum();
    Precision {
        k,
        queries: results.len(),
        mean: total / results.len().max(1) as f64,
        per_class: sums.iter().zip(&counts).map(|(s, &c)| if c == 0 { 0.0 } else { s / c as f64 }).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn hit(row: usize) -> Hit {
        Hit { rank: 0, row, score: 0.0, path: PathBuf::new() }
    }

    #[test]
    fn precision_counts_same_class_neighbours_by_hand() {
        // labels: rows 0,1 class 0; rows 2,3 class 1.
        let labels = [0, 0, 1, 1];
        let results = vec![
            QueryResult { row: 0, hits: vec![hit(1), hit(2)] }, // 1 of 2 same class
            QueryResult { row: 1, hits: vec![hit(0), hit(3)] }, // 1 of 2
            QueryResult { row: 2, hits: vec![hit(3), hit(1)] }, // 1 of 2
            QueryResult { row: 3, hits: vec![hit(2), hit(0)] }, // 1 of 2
        ];
        let p = precision_at_k(&results, &labels, 2, 2);
        assert_eq!(p.mean, 0.5);
        let p1 = precision_at_k(&results, &labels, 1, 2);
        // With k = 1 every first neighbour has the query's class.
        assert_eq!(p1.mean, 1.0);
        assert_eq!(p1.per_class, vec![1.0, 1.0]);
    }
}
