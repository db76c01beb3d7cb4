//! The HNSW graph that hnsw_rs built, copied into flat arrays next to the vectors it links, and
//! the HNSW search over it.
//!
//! hnsw_rs keeps every vector in its own allocation and every link as a reference-counted
//! pointer, and its search allocates for each node it visits. Searching the same graph over one
//! contiguous vector matrix, row-numbered link lists and a visited bitset returns the same kind
//! of result with far less work per visited node. hnsw_rs still builds, saves and loads the graph.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::index::Metric;
use crate::vector_distance::{self, DistDot, DistL2};
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
        FlatGraph {
            layers: links.iter().map(|l| Layer::from_lists(l)).collect(),
            entry,
            vectors,
            dim,
            metric,
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
    pub(crate) fn search(&self, query: &[f32], k: usize, ef: usize) -> Vec<(usize, f32)> {
        let Some(mut current) = self.entry else { return Vec::new() };
        let mut current_distance = self.distance_to_row(query, current as usize);
        // Upper layers: walk greedily to the nearest node each layer offers.
        for layer in self.layers.iter().skip(1).rev() {
            loop {
                let mut moved = false;
                for &next in layer.links(current) {
                    let distance = self.distance_to_row(query, next as usize);
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
            // The unvisited neighbours, their rows' loads started before any is scored.
            unvisited.clear();
            for &next in self.layers[0].links(row) {
                let (word, bit) = (next as usize / 64, 1u64 << (next % 64));
                if visited[word] & bit == 0 {
                    visited[word] |= bit;
                    vector_distance::prefetch(self.row(next as usize));
                    unvisited.push(next);
                }
            }
            for &next in &unvisited {
                let distance = self.distance_to_row(query, next as usize);
                if nearest.len() < ef || distance < nearest.peek().map_or(f32::INFINITY, |s| s.0) {
                    candidates.push(Reverse(Scored(distance, next)));
                    nearest.push(Scored(distance, next));
                    if nearest.len() > ef {
                        nearest.pop();
                    }
                }
            }
        }
        let mut found: Vec<(usize, f32)> =
            nearest.into_iter().map(|Scored(d, row)| (row as usize, d)).collect();
        found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        found.truncate(k);
        found
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

    #[test]
    fn an_empty_graph_finds_nothing() {
        let graph = FlatGraph::new(&[], None, Vec::new(), 4, Metric::Cosine);
        assert!(graph.search(&[0.5; 4], 3, 8).is_empty());
    }
}
