//! Gathering the images to embed: files named on the command line, directories searched
//! recursively for image extensions ([`dim_models::image_walk`]: links followed, every directory
//! and file taken once), and list files with one path per line.

use dim_models::image_walk::ImageWalk;
use dim_vectors::manifest::Skipped;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Errors gathering inputs: only a list file that cannot be read stops the run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectionError {
    /// The list file cannot be read.
    #[error("cannot read list file {}: {source}", dim_models::path_record::display(path))]
    ListFile {
        /// The list file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The files to embed (absolute, in a stable order, each file once however many paths reach
/// it) and the named or found inputs that could not be used.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collection {
    /// Files to embed.
    pub files: Vec<PathBuf>,
    /// Inputs left out, with reasons: missing files, dangling or looping links, second paths
    /// to a file or directory already taken.
    pub skipped: Vec<Skipped>,
}

/// Gathers files from `paths` (files or directories) and from the lines of each `list_files`.
/// Files named explicitly are taken whatever their extension (the format is guessed from the
/// content); directories contribute only files with an image extension. List files are read as
/// bytes, so a listed name need not be UTF-8.
pub fn gather(paths: &[PathBuf], list_files: &[PathBuf]) -> Result<Collection, CollectionError> {
    let mut named = Vec::with_capacity(paths.len());
    for path in paths {
        named.push(absolute(path));
    }
    for list in list_files {
        let bytes =
            std::fs::read(list).map_err(|source| CollectionError::ListFile { path: list.clone(), source })?;
        let base = list.parent().unwrap_or(Path::new("."));
        for line in bytes.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line).trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            // Relative lines are relative to the list file, so a list travels with its images.
            let path = Path::new(OsStr::from_bytes(line));
            named.push(absolute(&if path.is_absolute() { path.to_path_buf() } else { base.join(path) }));
        }
    }
    let mut walk = ImageWalk::new();
    for path in named {
        if path.is_dir() {
            walk.add_dir(&path);
        } else {
            walk.add_file(&path);
        }
    }
    let (files, problems) = walk.finish();
    let skipped = problems.into_iter().map(|p| Skipped { path: p.path, reason: p.reason }).collect();
    Ok(Collection { files, skipped })
}

/// `path` made absolute without resolving links (so manifests show the paths users gave);
/// a path that cannot be made absolute (no current directory) stays as given.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
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
