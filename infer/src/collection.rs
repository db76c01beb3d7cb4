//! Finding the images to embed: files named on the command line, directories searched
//! recursively for image extensions, and list files with one path per line.

use crate::embedder::Skipped;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Extensions (lower case) picked up when a directory is searched.
pub const IMAGE_EXTENSIONS: &[&str] =
    &["png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp", "pnm", "pgm", "ppm", "tga", "qoi"];

/// Errors gathering inputs: only a list file that cannot be read stops the run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectionError {
    /// The list file cannot be read.
    #[error("cannot read list file {path}: {source}")]
    ListFile {
        /// The list file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The files to embed (absolute, in a stable order, without duplicates) and the named inputs
/// that could not be used.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collection {
    /// Files to embed.
    pub files: Vec<PathBuf>,
    /// Inputs that are neither readable files nor directories.
    pub skipped: Vec<Skipped>,
}

/// Gathers files from `paths` (files or directories) and from the lines of each `list_files`.
/// Files named explicitly are taken whatever their extension (the format is guessed from the
/// content); directories contribute only files with an image extension.
pub fn gather(paths: &[PathBuf], list_files: &[PathBuf]) -> Result<Collection, CollectionError> {
    let mut named = paths.to_vec();
    for list in list_files {
        let text = std::fs::read_to_string(list)
            .map_err(|source| CollectionError::ListFile { path: list.clone(), source })?;
        let base = list.parent().unwrap_or(Path::new("."));
        named.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(
            |line| {
                // Relative lines are relative to the list file, so a list travels with its images.
                let path = Path::new(line);
                if path.is_absolute() { path.to_path_buf() } else { base.join(path) }
            },
        ));
    }
    let mut collection = Collection::default();
    let mut seen = HashSet::new();
    for path in named {
        if path.is_dir() {
            let mut found = Vec::new();
            walk(&path, &mut found, &mut collection.skipped);
            found.sort();
            for file in found {
                add(file, &mut collection, &mut seen);
            }
        } else if path.is_file() {
            add(path, &mut collection, &mut seen);
        } else {
            collection.skipped.push(Skipped { path, reason: "no such file or directory".into() });
        }
    }
    Ok(collection)
}

fn add(path: PathBuf, collection: &mut Collection, seen: &mut HashSet<PathBuf>) {
    match std::path::absolute(&path) {
        Ok(absolute) if absolute.to_str().is_none() => {
            // Manifests are JSON, which cannot carry such a path faithfully.
            collection.skipped.push(Skipped { path, reason: "path is not valid UTF-8".into() })
        }
        Ok(absolute) => {
            if seen.insert(absolute.clone()) {
                collection.files.push(absolute);
            }
        }
        Err(error) => collection.skipped.push(Skipped { path, reason: error.to_string() }),
    }
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>, skipped: &mut Vec<Skipped>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            skipped
                .push(Skipped { path: dir.to_path_buf(), reason: format!("cannot list directory: {error}") });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, found, skipped);
        } else if has_image_extension(&path) {
            found.push(path);
        }
    }
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_searched_recursively_lists_are_relative_and_missing_inputs_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        for name in ["a/one.PNG", "a/b/two.jpg", "a/notes.txt", "three.bin"] {
            std::fs::write(root.join(name), b"x").unwrap();
        }
        std::fs::write(root.join("list.txt"), "three.bin\n# comment\n\na/b/two.jpg\n").unwrap();
        let collection =
            gather(&[root.join("a"), root.join("missing.png")], &[root.join("list.txt")]).unwrap();
        let names: Vec<_> =
            collection.files.iter().map(|p| p.strip_prefix(root).unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["a/b/two.jpg", "a/one.PNG", "three.bin"]);
        assert_eq!(collection.skipped.len(), 1);
        assert!(collection.skipped[0].path.ends_with("missing.png"));
        assert!(gather(&[], &[root.join("nope.txt")]).is_err());
    }
}
