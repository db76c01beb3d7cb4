//! Writes the Fashion-MNIST test images out as PNG files, one folder per class, so the demo
//! embeds a real image collection the way a user's own would be embedded.

use anyhow::{Context, bail};
use dim_models::atomic_file::write_bytes_atomically;
use dim_models::idx;
use image::{GrayImage, ImageFormat};
use rayon::prelude::*;
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Fashion-MNIST's class names, by label.
pub const CLASS_NAMES: [&str; 10] =
    ["tshirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"];

/// Written last, once every PNG is in place.
const COMPLETE_MARKER: &str = ".complete";

/// The PNG collection: one path per test image, in test-set order, and its label.
pub struct PngCollection {
    /// `dir/<class>/<index>.png`.
    pub files: Vec<PathBuf>,
    /// Label of each file.
    pub labels: Vec<usize>,
}

/// Returns the collection under `dir`, writing the PNGs from the IDX files in `fashion_dir` when
/// they are not all there yet.
pub fn ensure_test_pngs(fashion_dir: &Path, dir: &Path) -> anyhow::Result<PngCollection> {
    let images_path = idx::find_images_file(fashion_dir, "t10k")
        .with_context(|| format!("no t10k-images-idx3-ubyte[.gz] in {}", fashion_dir.display()))?;
    let labels_path = idx::labels_path_for(&images_path)
        .with_context(|| format!("no labels file beside {}", images_path.display()))?;
    let labels = idx::read_labels(&labels_path)?;
    if let Some(bad) = labels.iter().find(|&&l| usize::from(l) >= CLASS_NAMES.len()) {
        bail!("{}: label {bad} is not a Fashion-MNIST class", labels_path.display());
    }
    let labels: Vec<usize> = labels.into_iter().map(usize::from).collect();
    let files: Vec<PathBuf> = labels
        .iter()
        .enumerate()
        .map(|(index, &label)| dir.join(CLASS_NAMES[label]).join(format!("{index:05}.png")))
        .collect();
    if dir.join(COMPLETE_MARKER).is_file() {
        return Ok(PngCollection { files, labels });
    }

    eprintln!("writing the {} Fashion-MNIST test images as PNG files to {}", files.len(), dir.display());
    let images = idx::read_images(&images_path)?;
    if images.count != labels.len() {
        bail!("{} holds {} images but {} labels", images_path.display(), images.count, labels.len());
    }
    files.par_iter().enumerate().try_for_each(|(index, path)| -> anyhow::Result<()> {
        let image = GrayImage::from_raw(images.cols as u32, images.rows as u32, images.image(index).to_vec())
            .expect("IDX image has rows × cols bytes");
        let mut png = Vec::new();
        image.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)?;
        write_bytes_atomically(path, &png).with_context(|| format!("cannot write {}", path.display()))
    })?;
    write_bytes_atomically(&dir.join(COMPLETE_MARKER), b"")?;
    Ok(PngCollection { files, labels })
}
