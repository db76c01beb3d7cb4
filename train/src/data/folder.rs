//! Image-folder datasets: every image file under a directory, found by a sorted recursive scan,
//! labelled by first-level subfolder when every image sits in one, decoded on demand.

use super::fingerprint::Fingerprint;
use super::{DataError, Dataset, Sample};
use dim_models::preprocess::{InputSpec, decode_file, image_to_input};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// File extensions (lower case) taken as images.
const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

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
}

impl FolderDataset {
    /// Scans `root` recursively. Fails if `root` cannot be read or holds no image files; single
    /// unreadable images are found later, by [`Dataset::get`].
    pub fn open(root: &Path, spec: InputSpec) -> Result<Self, DataError> {
        let mut files = Vec::new();
        collect_images(root, &mut files)?;
        files.sort();
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
                let relative = file.strip_prefix(root).expect("scanned below root");
                let mut components = relative.components();
                let first = components.next()?;
                components.next().map(|_| first.as_os_str().to_string_lossy().into_owned())
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
            let relative = file.strip_prefix(root).expect("scanned below root");
            fingerprint.add_bytes(relative.to_string_lossy().as_bytes());
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

        Ok(FolderDataset { root: root.to_path_buf(), files, labels, class_names, spec, fingerprint })
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
        let image = decode_file(path).map_err(|source| DataError::Image { path: path.clone(), source })?;
        let pixels = image_to_input(&image, &self.spec);
        let label = self.labels.as_ref().map(|labels| labels[index]);
        Ok(Sample { pixels, label })
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn describe(&self) -> String {
        let classes = match self.labels {
            Some(_) => format!("{} classes", self.class_names.len()),
            None => "unlabelled".to_string(),
        };
        format!("image folder {} ({} images, {classes})", self.root.display(), self.files.len())
    }
}

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| IMAGE_EXTENSIONS.contains(&extension.to_ascii_lowercase().as_str()))
}

/// Adds the image files under `dir` to `files`, following subdirectories.
fn collect_images(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let io_error = |source| DataError::Io { path: dir.into(), source };
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| DataError::Io { path: path.clone(), source })?;
        // Symlinks are followed through `metadata` so linked class folders work.
        let is_dir = file_type.is_dir() || (file_type.is_symlink() && path.is_dir());
        if is_dir {
            collect_images(&path, files)?;
        } else if is_image_file(&path) {
            files.push(path);
        }
    }
    Ok(())
}
