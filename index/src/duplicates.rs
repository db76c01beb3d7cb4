//! Near-duplicate finding over a dim-search index: every indexed row searches its `k` nearest
//! neighbours, pairs scoring at least the cosine threshold are linked, and linked rows form
//! groups (connected components, so a chain of near-copies is one group). Reported as JSON
//! (groups with their members and every linking pair) and as a standalone HTML contact sheet.
//!
//! Scores are in the index's space: an index built with whitening (the shipped model's
//! recommended post-processing on large collections) spreads scores differently from the raw
//! vectors the default thresholds were chosen on, so pass a threshold for such an index or build
//! the index with `--pca 0`. The `duplicate` feature (`dim-embed --feature duplicate`) is made
//! for this search: it does not move under brightness and contrast changes or mirroring.

use crate::html_preview::{escape, file_preview, jpeg_data_uri};
use crate::index::{IndexError, SearchIndex};
use dim_models::path_record::PathRecord;
use dim_models::tap::Feature;
use dim_vectors::distance::Metric;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Default threshold for the `duplicate` feature: chosen on the duplicate benchmark
/// (`cargo xtask bench duplicates`, bench/results/duplicates.md) as the loosest cosine with pair
/// precision of at least 0.95 on its calibration photos, for the shipped model without
/// post-processing.
pub const DUPLICATE_FEATURE_THRESHOLD: f32 = 0.9964;

/// Default threshold for the `embedding` feature, chosen the same way (its unrelated photo crops
/// already score above 0.99 with each other, so it sits very close to 1).
pub const EMBEDDING_FEATURE_THRESHOLD: f32 = 0.9994;

/// The default threshold for vectors of `feature`, where the benchmark chose one.
pub fn default_threshold(feature: Feature) -> Option<f32> {
    match feature {
        Feature::Duplicate => Some(DUPLICATE_FEATURE_THRESHOLD),
        Feature::Embedding => Some(EMBEDDING_FEATURE_THRESHOLD),
        Feature::Tap(_) => None,
    }
}

/// How to look for near-duplicates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DuplicateParams {
    /// Cosine similarity at or above which a pair is linked.
    pub threshold: f32,
    /// Neighbours each row searches (a group larger than `k` + 1 is still found through chains).
    pub k: usize,
    /// Search candidate list size.
    pub ef: usize,
}

/// One image of a group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupMember {
    /// Manifest row.
    pub row: usize,
    /// The file, written losslessly.
    #[serde(flatten)]
    pub path: PathRecord,
    /// The file's path.
    #[serde(skip)]
    pub file: PathBuf,
}

/// Two linked rows and their similarity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkedPair {
    /// The smaller row.
    pub a: usize,
    /// The larger row.
    pub b: usize,
    /// Cosine similarity.
    pub score: f32,
}

/// Rows linked to each other, directly or through others.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DuplicateGroup {
    /// Members, by row.
    pub members: Vec<GroupMember>,
    /// The pairs that link them, best first.
    pub pairs: Vec<LinkedPair>,
}

/// What [`find`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DuplicateReport {
    /// The parameters.
    pub threshold: f32,
    /// Neighbours searched per row.
    pub k: usize,
    /// Search candidate list size.
    pub ef: usize,
    /// The index's post-processing, if any (`PcaSpec::describe`'s words).
    pub post_processing: Option<String>,
    /// Indexed rows searched.
    pub rows_searched: usize,
    /// Linked pairs.
    pub pair_count: usize,
    /// Images in some group.
    pub images_in_groups: usize,
    /// Groups, largest first.
    pub groups: Vec<DuplicateGroup>,
}

/// Finds the groups of near-duplicates among the indexed rows of `index`.
pub fn find(index: &SearchIndex, params: &DuplicateParams) -> Result<DuplicateReport, IndexError> {
    if index.info.params.metric != Metric::Cosine {
        return Err(IndexError::Query(
            "near-duplicates are scored by cosine similarity: build the index with --metric cosine".into(),
        ));
    }
    let held_out: std::collections::HashSet<usize> = index.info.held_out.iter().copied().collect();
    let rows: Vec<usize> = (0..index.vectors.rows).filter(|row| !held_out.contains(row)).collect();
    let found: Vec<Vec<LinkedPair>> = rows
        .par_iter()
        .map(|&row| {
            let hits = index.search(index.vectors.row(row), params.k + 1, params.ef.max(params.k + 1))?;
            Ok(hits
                .into_iter()
                .filter(|hit| hit.row != row && hit.score >= params.threshold)
                .map(|hit| LinkedPair { a: row.min(hit.row), b: row.max(hit.row), score: hit.score })
                .collect())
        })
        .collect::<Result<_, IndexError>>()?;
    // A pair is found from both ends (or from one, when the other end's list is full): keep one.
    let mut pairs: BTreeMap<(usize, usize), f32> = BTreeMap::new();
    for pair in found.into_iter().flatten() {
        let score = pairs.entry((pair.a, pair.b)).or_insert(pair.score);
        *score = score.max(pair.score);
    }

    let mut components = DisjointSets::new(index.vectors.rows);
    for &(a, b) in pairs.keys() {
        components.join(a, b);
    }
    let mut grouped: BTreeMap<usize, (Vec<usize>, Vec<LinkedPair>)> = BTreeMap::new();
    for (&(a, b), &score) in &pairs {
        grouped.entry(components.root(a)).or_default().1.push(LinkedPair { a, b, score });
    }
    for (members, links) in grouped.values_mut() {
        let mut rows: Vec<usize> = links.iter().flat_map(|pair| [pair.a, pair.b]).collect();
        rows.sort_unstable();
        rows.dedup();
        *members = rows;
        links.sort_by(|x, y| y.score.total_cmp(&x.score).then((x.a, x.b).cmp(&(y.a, y.b))));
    }
    let mut groups: Vec<DuplicateGroup> = grouped
        .into_values()
        .map(|(members, pairs)| DuplicateGroup {
            members: members
                .into_iter()
                .map(|row| {
                    let file = index.manifest.rows[row].path.clone();
                    GroupMember { row, path: PathRecord::of(&file), file }
                })
                .collect(),
            pairs,
        })
        .collect();
    groups
        .sort_by(|x, y| y.members.len().cmp(&x.members.len()).then(x.members[0].row.cmp(&y.members[0].row)));
    Ok(DuplicateReport {
        threshold: params.threshold,
        k: params.k,
        ef: params.ef,
        post_processing: index.info.post_process.as_ref().map(|pca| pca.spec().describe()),
        rows_searched: rows.len(),
        pair_count: pairs.len(),
        images_in_groups: groups.iter().map(|group| group.members.len()).sum(),
        groups,
    })
}

/// Union-find over rows, with path halving.
struct DisjointSets {
    parent: Vec<usize>,
}

impl DisjointSets {
    fn new(len: usize) -> Self {
        DisjointSets { parent: (0..len).collect() }
    }

    fn root(&mut self, mut row: usize) -> usize {
        while self.parent[row] != row {
            self.parent[row] = self.parent[self.parent[row]];
            row = self.parent[row];
        }
        row
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.root(a), self.root(b));
        if a != b {
            self.parent[a.max(b)] = a.min(b);
        }
    }
}

/// A standalone HTML page showing the first `max_groups` groups as rows of thumbnails (JPEG data
/// URIs, `thumbnail_size` px), each image captioned with its row and file name.
pub fn contact_sheet(
    report: &DuplicateReport,
    max_groups: usize,
    thumbnail_size: u32,
    max_pixels: u64,
) -> String {
    let shown = &report.groups[..report.groups.len().min(max_groups)];
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Near-duplicates</title><style>\
         body{{font-family:sans-serif;margin:1.5em;color:#222}}section{{border-top:1px solid #ccc;padding:.6em 0}}\
         figure{{display:inline-block;margin:.3em;vertical-align:top;width:{w}px}}\
         img{{max-width:{w}px;max-height:{w}px;display:block;background:#eee}}\
         figcaption{{font-size:11px;word-break:break-all}}.missing{{width:{w}px;height:{w}px;background:#fdd}}\
         </style></head><body><h1>Near-duplicates</h1><p>{groups} groups, {images} images, {pairs} pairs at \
         cosine &ge; {threshold}{pp}; showing {shown}.</p>",
        w = thumbnail_size,
        groups = report.groups.len(),
        images = report.images_in_groups,
        pairs = report.pair_count,
        threshold = report.threshold,
        pp =
            report.post_processing.as_deref().map(|p| format!(" (index: {})", escape(p))).unwrap_or_default(),
        shown = shown.len(),
    );
    for (number, group) in shown.iter().enumerate() {
        let best = group.pairs.first().map_or(0.0, |pair| pair.score);
        let worst = group.pairs.last().map_or(0.0, |pair| pair.score);
        let _ = write!(
            html,
            "<section><h3>group {} &middot; {} images &middot; cosine {worst:.3}&ndash;{best:.3}</h3>",
            number + 1,
            group.members.len()
        );
        for member in &group.members {
            let name = member.file.file_name().map(|n| dim_models::path_record::display(Path::new(n)));
            let caption = format!("row {} &middot; {}", member.row, escape(&name.unwrap_or_default()));
            match file_preview(&member.file, thumbnail_size, max_pixels) {
                Ok(jpeg) => {
                    let _ = write!(
                        html,
                        "<figure><img alt=\"\" src=\"{}\" title=\"{}\"><figcaption>{caption}</figcaption></figure>",
                        jpeg_data_uri(&jpeg),
                        escape(&member.path.path)
                    );
                }
                Err(reason) => {
                    let _ = write!(
                        html,
                        "<figure><div class=\"missing\" title=\"{}\"></div><figcaption>{caption}</figcaption></figure>",
                        escape(&reason)
                    );
                }
            }
        }
        html.push_str("</section>");
    }
    html.push_str("</body></html>\n");
    html
}
