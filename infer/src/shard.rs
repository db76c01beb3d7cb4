//! Splitting a collection's embedding across machines and joining the parts.
//!
//! `dim-embed --shard I/N` keeps the inputs whose path falls in shard `I` of `N`: a stable hash
//! (FNV-1a, 64-bit) of the path's bytes as gathered (absolute, links not resolved), taken modulo
//! `N`. Shards never overlap and together hold every input, on any machine that sees the same
//! paths. Each shard is an ordinary embeddings directory, incremental on reruns.
//!
//! [`merge`] joins shard directories into one: every shard must hold the same model, feature and
//! width, no file may appear in two shards, and the rows are ordered by path (component by
//! component), which is the order a single `dim-embed` run over one folder gives. The output is
//! written like a `dim-embed` run's (all three files committed together).

use dim_models::atomic_file;
use dim_vectors::manifest::Skipped;
use dim_vectors::manifest::{self, EMBEDDINGS_FILE, Manifest, ManifestError, ManifestRow, SKIPPED_FILE};
use dim_vectors::npy::{self, NpyError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Shard `index` of `count` (`index` in `0..count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: usize,
    /// How many shards there are.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("a shard is I/N with 0 <= I < N, e.g. 0/4; got {text:?}");
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) =
            (index.trim().parse().map_err(|_| bad())?, count.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether `path` belongs to this shard.
    pub fn contains(&self, path: &Path) -> bool {
        (path_hash(path) % self.count as u64) as usize == self.index
    }
}

/// FNV-1a over the path's bytes: stable across runs, machines and toolkit versions.
fn path_hash(path: &Path) -> u64 {
    path.as_os_str().as_bytes().iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Why shards cannot be merged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// No shard directories were given.
    #[error("no shard directories to merge")]
    NoShards,
    /// A shard directory is unusable.
    #[error("shard {dir}: {source}")]
    Shard {
        /// The shard directory.
        dir: PathBuf,
        /// The cause.
        source: ManifestError,
    },
    /// A shard's vectors cannot be read.
    #[error("shard {dir}: {source}")]
    Vectors {
        /// The shard directory.
        dir: PathBuf,
        /// The cause.
        source: NpyError,
    },
    /// Two shards hold vectors of different models or features.
    #[error(
        "shard {dir} holds another model or feature than {first} ({reason}); merge shards of one run only"
    )]
    ModelMismatch {
        /// The first shard.
        first: PathBuf,
        /// The disagreeing shard.
        dir: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A file appears in two shards.
    #[error("{path} is in two shards, {first} and {second}: were they made with the same --shard I/N?")]
    Overlap {
        /// The file.
        path: String,
        /// One shard.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// The output is one of the shards.
    #[error("the output {0} is one of the shards; merge into a new directory")]
    OutputIsShard(PathBuf),
    /// Writing the output failed.
    #[error(transparent)]
    Output(#[from] ManifestError),
}

/// What a merge wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSummary {
    /// Rows in the merged directory.
    pub rows: usize,
    /// Files the shards skipped, all listed in the merged `skipped.json`.
    pub skipped: usize,
}

/// Merges the embeddings directories `shards` into `out` (see the module documentation).
pub fn merge(out: &Path, shards: &[PathBuf]) -> Result<MergeSummary, MergeError> {
    let first_dir = shards.first().ok_or(MergeError::NoShards)?;
    let out_abs = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    let mut manifests = Vec::with_capacity(shards.len());
    for dir in shards {
        if std::path::absolute(dir).unwrap_or_else(|_| dir.clone()) == out_abs {
            return Err(MergeError::OutputIsShard(out.to_path_buf()));
        }
        let manifest =
            Manifest::read(dir).map_err(|source| MergeError::Shard { dir: dir.clone(), source })?;
        manifests.push(manifest);
    }
    let model = manifests[0].model.clone();
    for (dir, manifest) in shards.iter().zip(&manifests).skip(1) {
        if let Some(reason) = model.mismatch(&manifest.model) {
            return Err(MergeError::ModelMismatch { first: first_dir.clone(), dir: dir.clone(), reason });
        }
    }
    let mut owner: HashMap<&Path, &PathBuf> = HashMap::new();
    for (dir, manifest) in shards.iter().zip(&manifests) {
        for row in &manifest.rows {
            if let Some(first) = owner.insert(row.path.as_path(), dir) {
                return Err(MergeError::Overlap {
                    path: dim_models::path_record::display(&row.path),
                    first: first.clone(),
                    second: dir.clone(),
                });
            }
        }
    }
    // (path, shard, row in shard), ordered by path as a single run over one folder orders it.
    let mut order: Vec<(&ManifestRow, usize, usize)> = manifests
        .iter()
        .enumerate()
        .flat_map(|(shard, manifest)| manifest.rows.iter().enumerate().map(move |(row, r)| (r, shard, row)))
        .collect();
    order.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    let mut vectors = Vec::with_capacity(shards.len());
    for dir in shards {
        let matrix = npy::read_matrix(&dir.join(EMBEDDINGS_FILE))
            .map_err(|source| MergeError::Vectors { dir: dir.clone(), source })?;
        vectors.push(matrix);
    }
    let mut skipped: Vec<Skipped> = Vec::new();
    for dir in shards {
        let path = dir.join(SKIPPED_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|source| MergeError::Shard {
                dir: dir.clone(),
                source: ManifestError::Io { path: path.clone(), source },
            })?;
            let listed: Vec<Skipped> = serde_json::from_str(&text).map_err(|source| MergeError::Shard {
                dir: dir.clone(),
                source: ManifestError::Parse { path: path.clone(), source },
            })?;
            skipped.extend(listed);
        }
    }
    skipped.sort_by(|a, b| a.path.cmp(&b.path));

    std::fs::create_dir_all(out).map_err(|source| ManifestError::Io { path: out.to_path_buf(), source })?;
    let vectors_path = out.join(EMBEDDINGS_FILE);
    let mut hasher = Sha256::new();
    let staged_vectors = atomic_file::stage(&vectors_path, |file| {
        let header = npy::header(order.len(), model.dim);
        hasher.update(&header);
        file.write_all(&header)?;
        for &(_, shard, row) in &order {
            let values = vectors[shard].row(row);
            let mut bytes = Vec::with_capacity(values.len() * 4);
            npy::write_rows(&mut bytes, values)?;
            hasher.update(&bytes);
            file.write_all(&bytes)?;
        }
        Ok(())
    })
    .map_err(|source| ManifestError::Io { path: vectors_path.clone(), source })?;
    let rows: Vec<ManifestRow> = order.iter().map(|(row, _, _)| (*row).clone()).collect();
    let merged = Manifest {
        format_version: manifests[0].format_version,
        toolkit_version: dim_models::TOOLKIT_VERSION.to_string(),
        model,
        embeddings_sha256: Some(dim_models::checkpoint::to_hex(&hasher.finalize())),
        search_recipe: manifests[0].search_recipe,
        count: rows.len(),
        rows,
    };
    let staged_manifest = merged.stage(out)?;
    let staged_skipped = manifest::stage_skipped(out, &skipped)?;
    atomic_file::commit_together(out, vec![staged_vectors, staged_manifest, staged_skipped])
        .map_err(|source| ManifestError::Io { path: out.to_path_buf(), source })?;
    Ok(MergeSummary { rows: merged.count, skipped: skipped.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition_paths_without_overlap() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        for bad in ["4/4", "0/0", "1", "a/3", "-1/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, count: 3 }).collect();
        let mut sizes = [0usize; 3];
        for i in 0..300 {
            let path = PathBuf::from(format!("/photos/{}/{i}.jpg", i % 7));
            let owners: Vec<usize> = shards.iter().filter(|s| s.contains(&path)).map(|s| s.index).collect();
            assert_eq!(owners.len(), 1, "{path:?} is in exactly one shard");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| n > 60), "the hash spreads paths: {sizes:?}");
        // Stable: FNV-1a of "a" is a published constant.
        assert_eq!(path_hash(Path::new("a")), 0xaf63_dc4c_8601_ec8c);
    }
}
