//! Finding the image files of a collection, for training and embedding alike, robust to what
//! real folders hold: symbolic links are followed to files and directories, but a directory is
//! entered once however many paths lead to it (compared by device and inode, so a link back to a
//! parent cannot loop), a file reached by two paths is taken once, and links that dangle or loop
//! are reported with a reason instead of being silently dropped or followed forever.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Extensions (lower case) picked up when a directory is searched.
pub const IMAGE_EXTENSIONS: &[&str] =
    &["png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp", "pnm", "pgm", "ppm", "tga", "qoi"];

/// A path the walk could not use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkProblem {
    /// The path as the walk met it.
    pub path: PathBuf,
    /// Why it was left out.
    pub reason: String,
}

/// A file's identity on this machine: device and inode.
type FileId = (u64, u64);

/// Image files found so far, in the order they were found, without duplicates.
#[derive(Debug, Default)]
pub struct ImageWalk {
    files: Vec<PathBuf>,
    problems: Vec<WalkProblem>,
    entered_dirs: HashSet<FileId>,
    /// Each taken file's index in `files`.
    taken_files: HashMap<FileId, usize>,
}

impl ImageWalk {
    /// An empty walk.
    pub fn new() -> Self {
        ImageWalk::default()
    }

    /// Adds every image file (by extension) under `dir`, depth first with each directory's
    /// entries sorted by name, so the order is the same on every run.
    pub fn add_dir(&mut self, dir: &Path) {
        let mut ancestors = Vec::new();
        match fs::metadata(dir) {
            Ok(metadata) => self.enter(dir, file_id(&metadata), &mut ancestors),
            Err(error) => self.problem(dir, describe_error(&error)),
        }
    }

    /// Adds one named file, whatever its extension (the format is told by the content). Returns
    /// false when it was not added: a problem or another path to a file already taken (both
    /// reported), or the very path already taken (ignored).
    pub fn add_file(&mut self, path: &Path) -> bool {
        match fs::metadata(path) {
            Ok(metadata) if metadata.is_file() => self.take(path, file_id(&metadata)),
            Ok(_) => {
                self.problem(path, "not a regular file".into());
                false
            }
            Err(error) => {
                self.problem(path, describe_error(&error));
                false
            }
        }
    }

    /// The image files and what was left out, both in walk order.
    pub fn finish(self) -> (Vec<PathBuf>, Vec<WalkProblem>) {
        (self.files, self.problems)
    }

    fn problem(&mut self, path: &Path, reason: String) {
        self.problems.push(WalkProblem { path: path.to_path_buf(), reason });
    }

    fn take(&mut self, path: &Path, id: FileId) -> bool {
        match self.taken_files.get(&id) {
            None => {
                self.taken_files.insert(id, self.files.len());
                self.files.push(path.to_path_buf());
                true
            }
            Some(&index) if self.files[index] == path => false,
            Some(&index) => {
                let reason = format!("the same file as {}", crate::path_record::display(&self.files[index]));
                self.problem(path, reason);
                false
            }
        }
    }

    fn enter(&mut self, dir: &Path, id: FileId, ancestors: &mut Vec<FileId>) {
        if ancestors.contains(&id) {
            self.problem(dir, "symbolic link loop: leads back to a directory above it".into());
            return;
        }
        if !self.entered_dirs.insert(id) {
            self.problem(dir, "directory already walked through another path".into());
            return;
        }
        let mut entries: Vec<_> = match fs::read_dir(dir) {
            Ok(entries) => entries.filter_map(Result::ok).map(|entry| entry.path()).collect(),
            Err(error) => {
                self.problem(dir, format!("cannot list directory: {}", describe_error(&error)));
                return;
            }
        };
        entries.sort();
        ancestors.push(id);
        for path in entries {
            // `metadata` follows links: a link counts as what it points to.
            let metadata = match fs::metadata(&path) {
                Ok(metadata) => metadata,
                Err(error) => {
                    let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
                    if is_link || has_image_extension(&path) {
                        self.problem(&path, describe_error(&error));
                    }
                    continue;
                }
            };
            if metadata.is_dir() {
                self.enter(&path, file_id(&metadata), ancestors);
            } else if metadata.is_file() && has_image_extension(&path) {
                self.take(&path, file_id(&metadata));
            }
        }
        ancestors.pop();
    }
}

fn file_id(metadata: &fs::Metadata) -> FileId {
    (metadata.dev(), metadata.ino())
}

/// Linux's errno for too many levels of symbolic links (`io::ErrorKind::FilesystemLoop` is
/// not stable yet).
const ELOOP: i32 = 40;

fn describe_error(error: &std::io::Error) -> String {
    if error.raw_os_error() == Some(ELOOP) {
        return "symbolic link loop".into();
    }
    match error.kind() {
        ErrorKind::NotFound => "no such file or directory (or a dangling symbolic link)".into(),
        _ => error.to_string(),
    }
}

/// Whether `path` ends in one of [`IMAGE_EXTENSIONS`] (any case).
fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn loops_second_links_and_dangling_links_are_walked_once_or_reported() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("photos/sub")).unwrap();
        fs::create_dir_all(root.join("dir.png")).unwrap();
        for name in ["photos/a.png", "photos/sub/b.JPG", "photos/notes.txt", "dir.png/c.gif"] {
            fs::write(root.join(name), b"x").unwrap();
        }
        symlink(root.join("photos"), root.join("photos/sub/loop")).unwrap();
        symlink(root.join("photos"), root.join("second")).unwrap();
        symlink(root.join("photos/a.png"), root.join("photos/z_link.png")).unwrap();
        symlink(root.join("missing.png"), root.join("photos/dangling.png")).unwrap();
        symlink("self_loop.png", root.join("self_loop.png")).unwrap();

        let mut walk = ImageWalk::new();
        walk.add_dir(root);
        assert!(!walk.add_file(&root.join("photos/a.png")), "already taken, by this very path");
        assert!(!walk.add_file(&root.join("second/a.png")), "already taken, by another path");
        let (files, problems) = walk.finish();
        let relative: Vec<_> =
            files.iter().map(|f| f.strip_prefix(root).unwrap().to_str().unwrap()).collect();
        assert_eq!(relative, ["dir.png/c.gif", "photos/a.png", "photos/sub/b.JPG"]);
        let same_as_a = format!("the same file as {}", root.join("photos/a.png").display());
        let reasons: Vec<_> = problems
            .iter()
            .map(|p| (p.path.strip_prefix(root).unwrap().to_str().unwrap(), p.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("photos/dangling.png", "no such file or directory (or a dangling symbolic link)"),
                ("photos/sub/loop", "symbolic link loop: leads back to a directory above it"),
                ("photos/z_link.png", same_as_a.as_str()),
                ("second", "directory already walked through another path"),
                ("self_loop.png", "symbolic link loop"),
                ("second/a.png", same_as_a.as_str()),
            ]
        );
    }
}
