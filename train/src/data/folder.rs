//! Image-folder datasets: every image file under a directory, found by the toolkit's one
//! collection walk ([`dim_models::image_walk`]: sorted, links followed, each directory and file
//! once), labelled by first-level subfolder when every image sits in one, decoded on demand.

use super::fingerprint::Fingerprint;
use super::{DataError, Dataset, Sample};
use dim_models::image_walk::{IMAGE_EXTENSIONS, ImageWalk, WalkProblem};
use dim_models::path_record;
use dim_models::preprocess::{InputSpec, configured_max_pixels, decode_file, image_to_input};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The image files under a directory, decoded when asked for.
#[derive(Debug)]
pub struct FolderDataset {
    root: PathBuf,
    /// Absolute paths, sorted by their path relative to `root`.
    files: Vec<PathBuf>,
    /// Per file, the index of its first-level subfolder in `class_names`, when labelled.
    labels: Option<Vec<u32>>,
    class_names: Vec<String>,
    spec: InputSpec,
    fingerprint: String,
    /// Paths the walk left out (dangling or looping links, second paths to the same file).
    left_out: Vec<WalkProblem>,
}

impl FolderDataset {
    /// Scans `root` recursively. Fails if `root` cannot be read or holds no image files; single
    /// unreadable images are found later, by [`Dataset::get`].
    pub fn open(root: &Path, spec: InputSpec) -> Result<Self, DataError> {
        if let Err(source) = std::fs::read_dir(root) {
            return Err(DataError::Io { path: root.into(), source });
        }
        let mut walk = ImageWalk::new();
        walk.add_dir(root);
        let (files, left_out) = walk.finish();
        if files.is_empty() {
            return Err(DataError::Format {
                path: root.into(),
                reason: format!("no image files ({}) found here or below", IMAGE_EXTENSIONS.join(", ")),
            });
        }
        // The first-level folder of each file, or None for files directly in `root`.
        let first_folders: Vec<Option<String>> = files
            .iter()
            .map(|file| {
                let relative = file.strip_prefix(root).ok()?;
                let mut components = relative.components();
                let first = components.next()?;
                // Escaped, not lossy: two non-UTF-8 folder names stay two classes.
                components.next().map(|_| path_record::display(Path::new(first.as_os_str())))
            })
            .collect();
        let (labels, class_names) = if first_folders.iter().all(Option::is_some) {
            let mut class_names: Vec<String> = first_folders.iter().flatten().cloned().collect();
            class_names.sort();
            class_names.dedup();
            let labels = first_folders
                .iter()
                .flatten()
                .map(|folder| class_names.binary_search(folder).expect("collected above") as u32)
                .collect();
            (Some(labels), class_names)
        } else {
            (None, Vec::new())
        };

        let mut fingerprint = Fingerprint::new("folder");
        fingerprint.add_number(files.len() as u64);
        for file in &files {
            let relative = file.strip_prefix(root).unwrap_or(file);
            fingerprint.add_bytes(relative.as_os_str().as_bytes());
            // Size and modification time stand in for the content, which would mean reading
            // every image; a file that cannot be stat'ed now just contributes zeros.
            let metadata = std::fs::metadata(file).ok();
            fingerprint.add_number(metadata.as_ref().map_or(0, |m| m.len()));
            let modified = metadata
                .and_then(|m| m.modified().ok())
                .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |since| since.as_nanos() as u64);
            fingerprint.add_number(modified);
        }
        let fingerprint = fingerprint.finish();

        Ok(FolderDataset {
            root: root.to_path_buf(),
            files,
            labels,
            class_names,
            spec,
            fingerprint,
            left_out,
        })
    }

    /// Class names (the first-level subfolders, sorted); empty when unlabelled.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The image files, in dataset index order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn input_spec(&self) -> InputSpec {
        self.spec
    }

    fn num_classes(&self) -> Option<usize> {
        self.labels.as_ref().map(|_| self.class_names.len())
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let path = self.files.get(index).ok_or_else(|| DataError::Format {
            path: self.root.clone(),
            reason: format!("example {index} requested but the folder holds {}", self.files.len()),
        })?;
        let image = decode_file(path, configured_max_pixels())
            .map_err(|source| DataError::Image { path: path.clone(), source })?;
        let pixels = image_to_input(&image, &self.spec);
        let label = self.labels.as_ref().map(|labels| labels[index]);
        Ok(Sample { pixels, label })
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn decodes_files(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        let classes = match self.labels {
            Some(_) => format!("{} classes", self.class_names.len()),
            None => "unlabelled".to_string(),
        };
        let left_out = match self.left_out.first() {
            None => String::new(),
            Some(first) => format!(
                "; {} paths left out, e.g. {}: {}",
                self.left_out.len(),
                path_record::display(&first.path),
                first.reason
            ),
        };
        format!(
            "image folder {} ({} images, {classes}{left_out})",
            path_record::display(&self.root),
            self.files.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::preprocess::{Background, ResizePolicy};
    use image::{Rgb, RgbImage};

    const RGB_8: InputSpec =
        InputSpec { channels: 3, size: 8, resize: ResizePolicy::Stretch, background: Background::White };

    fn write_png(path: &Path, value: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_pixel(8, 8, Rgb([value, value, value])).save(path).unwrap();
    }

    #[test]
    fn class_subfolders_become_sorted_labels_and_files_sort_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("dog/b.png"), 10);
        write_png(&dir.path().join("dog/nested/a.PNG"), 20);
        write_png(&dir.path().join("cat/z.png"), 30);
        std::fs::write(dir.path().join("cat/notes.txt"), "not an image").unwrap();

        let data = FolderDataset::open(dir.path(), RGB_8).unwrap();
        assert_eq!(data.class_names(), ["cat", "dog"]);
        assert_eq!(data.len(), 3);
        let relative: Vec<_> = data.files().iter().map(|f| f.strip_prefix(dir.path()).unwrap()).collect();
        assert_eq!(relative, [Path::new("cat/z.png"), Path::new("dog/b.png"), Path::new("dog/nested/a.PNG")]);
        let labels: Vec<_> = (0..3).map(|i| data.get(i).unwrap().label).collect();
        assert_eq!(labels, [Some(0), Some(1), Some(1)]);
        assert!((data.get(2).unwrap().pixels[0] - 20.0 / 255.0).abs() < 1e-6);
        assert_eq!(data.fingerprint(), FolderDataset::open(dir.path(), RGB_8).unwrap().fingerprint());
    }

    #[test]
    fn a_loose_file_makes_the_folder_unlabelled() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("dog/b.png"), 10);
        write_png(&dir.path().join("loose.png"), 20);
        let data = FolderDataset::open(dir.path(), RGB_8).unwrap();
        assert_eq!(data.num_classes(), None);
        assert_eq!(data.get(0).unwrap().label, None);
    }

    #[test]
    fn corrupt_image_is_an_image_error_and_empty_folder_a_format_error() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a/good.png"), 10);
        std::fs::write(dir.path().join("a/broken.jpg"), b"\xff\xd8\xff not really a jpeg").unwrap();
        let data = FolderDataset::open(dir.path(), RGB_8).unwrap();
        assert!(matches!(data.get(0), Err(DataError::Image { path, .. }) if path.ends_with("a/broken.jpg")));

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(FolderDataset::open(empty.path(), RGB_8), Err(DataError::Format { .. })));
    }

    #[test]
    fn fingerprint_changes_when_a_file_changes_size() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a/one.png"), 10);
        let before = FolderDataset::open(dir.path(), RGB_8).unwrap().fingerprint();
        RgbImage::from_fn(8, 8, |x, y| Rgb([(x * 30) as u8, (y * 30) as u8, 7]))
            .save(dir.path().join("a/one.png"))
            .unwrap();
        assert_ne!(before, FolderDataset::open(dir.path(), RGB_8).unwrap().fingerprint());
    }
}
