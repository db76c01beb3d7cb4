//! The HNSW graph that hnsw_rs built, copied into flat arrays next to the vectors it links, and
//! the HNSW search over it.
//!
//! hnsw_rs keeps every vector in its own allocation and every link as a reference-counted
//! pointer, and its search allocates for each node it visits. Searching the same graph over one
//! contiguous vector matrix, row-numbered link lists and a visited bitset returns the same kind
//! of result with far less work per visited node. hnsw_rs still builds, saves and loads the graph.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::vector_distance::{DistDot, DistL2};
use dim_vectors::distance;
use dim_vectors::distance::Metric;
use hnsw_rs::prelude::Distance;

/// The links of one layer in compressed-row form: row `r` links to
/// `targets[offsets[r]..offsets[r + 1]]`.
struct Layer {
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Layer {
    fn from_lists(lists: &[Vec<u32>]) -> Self {
        let mut offsets = Vec::with_capacity(lists.len() + 1);
        let mut targets = Vec::with_capacity(lists.iter().map(Vec::len).sum());
        offsets.push(0);
        for list in lists {
            targets.extend_from_slice(list);
            offsets.push(u32::try_from(targets.len()).expect("fewer than 2^32 links per layer"));
        }
        Layer { offsets, targets }
    }

    fn links(&self, row: u32) -> &[u32] {
        let row = row as usize;
        &self.targets[self.offsets[row] as usize..self.offsets[row + 1] as usize]
    }
}

/// A distance and the row it belongs to, ordered by distance (then row).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// A searchable HNSW graph over the rows of a vector matrix.
pub(crate) struct FlatGraph {
    /// Layer 0 first; every row has a (possibly empty) list in every layer.
    layers: Vec<Layer>,
    /// Where searches start: a row on the top layer.
    entry: Option<u32>,
    /// All rows, row-major, in the graph's space.
    vectors: Vec<f32>,
    dim: usize,
    metric: Metric,
    /// Wide rows also as 8-bit codes, which the walk scores before the nearest it kept are
    /// scored again exactly.
    codes: Option<RowCodes>,
}

impl FlatGraph {
    /// `links[layer][row]` lists the rows that `row` links to on `layer`; `entry` is a row on
    /// the top layer (None for an empty graph); `vectors` holds every row, `dim` values each.
    pub(crate) fn new(
        links: &[Vec<Vec<u32>>],
        entry: Option<u32>,
        vectors: Vec<f32>,
        dim: usize,
        metric: Metric,
    ) -> Self {
        let codes = (dim >= CODED_MIN_DIM).then(|| RowCodes::new(&vectors, dim));
        FlatGraph {
            layers: links.iter().map(|l| Layer::from_lists(l)).collect(),
            entry,
            vectors,
            dim,
            metric,
            codes,
        }
    }

    /// Row `row` in graph space.
    pub(crate) fn row(&self, row: usize) -> &[f32] {
        &self.vectors[row * self.dim..(row + 1) * self.dim]
    }

    /// The graph's distance from `query` (in graph space) to `row`.
    pub(crate) fn distance_to_row(&self, query: &[f32], row: usize) -> f32 {
        let vector = self.row(row);
        match self.metric {
            Metric::Cosine => DistDot.eval(vector, query),
            Metric::L2 => DistL2.eval(vector, query),
        }
    }

    /// The (up to) `k` nearest rows found with a candidate list of `ef`, nearest first.
    ///
    /// With 8-bit codes the walk compares codes, then the `ef` nearest it kept are scored again
    /// from the f32 rows and the best `k` of those returned, with their exact distances.
    pub(crate) fn search(&self, query: &[f32], k: usize, ef: usize) -> Vec<(usize, f32)> {
        let mut found = match &self.codes {
            Some(codes) => {
                let coded = CodedQuery::new(query);
                let mut kept = self.walk(k, ef, |row| codes.distance(&coded, row as usize, self.metric));
                for (row, distance) in &mut kept {
                    *distance = self.distance_to_row(query, *row);
                }
                kept
            }
            None => self.walk(k, ef, |row| self.distance_to_row(query, row as usize)),
        };
        found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        found.truncate(k);
        found
    }

    /// The HNSW search under `distance` (from the query to a row): a greedy walk down the upper
    /// layers, then a best-first search of layer 0 keeping the `ef` (at least `k`) nearest seen,
    /// returned unsorted.
    fn walk(&self, k: usize, ef: usize, distance_to: impl Fn(u32) -> f32) -> Vec<(usize, f32)> {
        let Some(mut current) = self.entry else { return Vec::new() };
        let mut current_distance = distance_to(current);
        // Upper layers: walk greedily to the nearest node each layer offers.
        for layer in self.layers.iter().skip(1).rev() {
            loop {
                let mut moved = false;
                for &next in layer.links(current) {
                    let distance = distance_to(next);
                    if distance < current_distance {
                        (current, current_distance) = (next, distance);
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        // Layer 0: best-first search keeping the `ef` nearest seen.
        let ef = ef.max(k).max(1);
        let rows = self.vectors.len() / self.dim.max(1);
        let mut visited = vec![0u64; rows.div_ceil(64)];
        visited[current as usize / 64] |= 1 << (current % 64);
        let mut candidates = BinaryHeap::from([Reverse(Scored(current_distance, current))]);
        let mut nearest = BinaryHeap::from([Scored(current_distance, current)]);
        let mut unvisited = Vec::new();
        while let Some(Reverse(Scored(distance, row))) = candidates.pop() {
            let farthest_kept = nearest.peek().map_or(f32::INFINITY, |s| s.0);
            if nearest.len() >= ef && distance > farthest_kept {
                break;
            }
            unvisited.clear();
            for &next in self.layers[0].links(row) {
                let (word, bit) = (next as usize / 64, 1u64 << (next % 64));
                if visited[word] & bit == 0 {
                    visited[word] |= bit;
                    unvisited.push(next);
                }
            }
            for &next in &unvisited {
                let distance = distance_to(next);
                if nearest.len() < ef || distance < nearest.peek().map_or(f32::INFINITY, |s| s.0) {
                    candidates.push(Reverse(Scored(distance, next)));
                    nearest.push(Scored(distance, next));
                    if nearest.len() > ef {
                        nearest.pop();
                    }
                }
            }
        }
        nearest.into_iter().map(|Scored(d, row)| (row as usize, d)).collect()
    }
}

/// Rows at least this wide are also kept as 8-bit codes: their f32 rows (16 KiB at 4096-d) make
/// the walk wait on memory, and a code is a quarter of that.
const CODED_MIN_DIM: usize = 1024;

/// Every row as signed 8-bit codes scaled to its largest magnitude, with the scale and the
/// row's exact squared length.
struct RowCodes {
    codes: Vec<i8>,
    scales: Vec<f32>,
    squared_lengths: Vec<f32>,
    dim: usize,
}

/// A vector quantised to codes like a row.
struct CodedQuery {
    codes: Vec<i8>,
    scale: f32,
    squared_length: f32,
}

/// `vector`'s codes and their scale: `vector ≈ scale × codes`.
fn quantise(vector: &[f32], codes: &mut Vec<i8>) -> f32 {
    let largest = vector.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
    codes.extend(vector.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8));
    scale
}

impl CodedQuery {
    fn new(query: &[f32]) -> Self {
        let mut codes = Vec::with_capacity(query.len());
        let scale = quantise(query, &mut codes);
        CodedQuery { codes, scale, squared_length: distance::dot(query, query) }
    }
}

impl RowCodes {
    fn new(vectors: &[f32], dim: usize) -> Self {
        let rows = vectors.len() / dim;
        let mut codes = Vec::with_capacity(vectors.len());
        let mut scales = Vec::with_capacity(rows);
        let mut squared_lengths = Vec::with_capacity(rows);
        for row in vectors.chunks_exact(dim) {
            scales.push(quantise(row, &mut codes));
            squared_lengths.push(distance::dot(row, row));
        }
        RowCodes { codes, scales, squared_lengths, dim }
    }

    /// The graph's distance from `query` to `row`, from their codes.
    fn distance(&self, query: &CodedQuery, row: usize, metric: Metric) -> f32 {
        let codes = &self.codes[row * self.dim..(row + 1) * self.dim];
        let dot = distance::dot_i8(&query.codes, codes) as f32 * query.scale * self.scales[row];
        match metric {
            Metric::Cosine => (1.0 - dot).max(0.0),
            Metric::L2 => (query.squared_length + self.squared_lengths[row] - 2.0 * dot).max(0.0).sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five points on a line, 0..=4 at x = 0, 1, 2, 3, 4, linked as a chain on layer 0, with
    /// row 0 alone on layer 1 as the entry: a search for x = 3.9 must walk the chain to row 4.
    fn chain() -> FlatGraph {
        let layer0 = vec![vec![1], vec![0, 2], vec![1, 3], vec![2, 4], vec![3]];
        let layer1 = vec![Vec::new(); 5];
        let vectors = (0..5).map(|x| x as f32).collect();
        FlatGraph::new(&[layer0, layer1], Some(0), vectors, 1, Metric::L2)
    }

    #[test]
    fn search_walks_the_links_and_returns_the_nearest_first() {
        let found = chain().search(&[3.9], 3, 8);
        let rows: Vec<usize> = found.iter().map(|&(row, _)| row).collect();
        assert_eq!(rows, [4, 3, 2]);
        assert!((found[0].1 - 0.1).abs() < 1e-6 && (found[2].1 - 1.9).abs() < 1e-6, "{found:?}");
    }

    /// 300 pseudo-random unit vectors of `CODED_MIN_DIM` values, every row linked to every
    /// other on layer 0 (so the walk sees them all), entry row 0.
    fn wide_complete_graph(metric: Metric) -> (FlatGraph, Vec<f32>) {
        let (rows, dim) = (300, CODED_MIN_DIM);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut vectors: Vec<f32> = (0..rows * dim)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        for row in vectors.chunks_exact_mut(dim) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
        }
        let layer0: Vec<Vec<u32>> =
            (0..rows as u32).map(|r| (0..rows as u32).filter(|&o| o != r).collect()).collect();
        let query: Vec<f32> =
            vectors[..dim].iter().zip(&vectors[dim..2 * dim]).map(|(a, b)| a + 0.5 * b).collect();
        let norm = query.iter().map(|v| v * v).sum::<f32>().sqrt();
        let query = query.iter().map(|v| v / norm).collect();
        (FlatGraph::new(&[layer0], Some(0), vectors, dim, metric), query)
    }

    #[test]
    fn a_coded_search_returns_the_exact_nearest_with_exact_distances() {
        for metric in [Metric::Cosine, Metric::L2] {
            let (graph, query) = wide_complete_graph(metric);
            assert!(graph.codes.is_some(), "rows of {CODED_MIN_DIM} values are coded");
            let rows = graph.vectors.len() / graph.dim;
            let mut exact: Vec<(usize, f32)> =
                (0..rows).map(|r| (r, graph.distance_to_row(&query, r))).collect();
            exact.sort_by(|a, b| a.1.total_cmp(&b.1));
            let found = graph.search(&query, 5, 300);
            assert_eq!(found, exact[..5].to_vec(), "{metric:?}");
        }
    }

    #[test]
    fn codes_score_close_to_the_f32_rows() {
        let (graph, query) = wide_complete_graph(Metric::Cosine);
        let codes = graph.codes.as_ref().unwrap();
        let coded = CodedQuery::new(&query);
        for row in 0..300 {
            let exact = graph.distance_to_row(&query, row);
            let approximate = codes.distance(&coded, row, Metric::Cosine);
            assert!((exact - approximate).abs() < 0.01, "row {row}: {exact} vs {approximate}");
        }
    }

    #[test]
    fn an_empty_graph_finds_nothing() {
        let graph = FlatGraph::new(&[], None, Vec::new(), 4, Metric::Cosine);
        assert!(graph.search(&[0.5; 4], 3, 8).is_empty());
    }
}
