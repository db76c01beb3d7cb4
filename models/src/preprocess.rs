//! Image decoding and preprocessing shared by training (image folders, IDX, CIFAR) and
//! embedding, so both sides feed the encoder identically: decode with size limits, convert to
//! grey or RGB, fit to the input size by the model's [`ResizePolicy`], and lay out as CHW f32 in
//! [0, 1]. The encoder itself scales [0, 1] to [−1, 1].

use image::{DynamicImage, GenericImageView, ImageReader, Limits, imageops::FilterType};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::Path;

/// How an image whose size differs from the model's input is fitted to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizePolicy {
    /// Shrink to fit if larger (keeping the aspect ratio), then centre on a black canvas.
    /// Fashion-MNIST's 28×28 becomes 32×32 with a 2-pixel border.
    Pad,
    /// Resize to exactly the input size (aspect ratio not kept).
    Stretch,
}

impl ResizePolicy {
    /// The policy's name in files and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            ResizePolicy::Pad => "pad",
            ResizePolicy::Stretch => "stretch",
        }
    }
}

impl std::str::FromStr for ResizePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pad" => Ok(ResizePolicy::Pad),
            "stretch" => Ok(ResizePolicy::Stretch),
            other => Err(format!("unknown resize policy `{other}` (known: pad, stretch)")),
        }
    }
}

/// What the encoder expects as input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSpec {
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Square side length.
    pub size: usize,
    /// How other sizes are fitted.
    pub resize: ResizePolicy,
}

impl InputSpec {
    /// Number of f32 values per image.
    pub fn len(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// Always false: an input has at least one value.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Largest accepted width or height; bigger images are refused rather than exhausting memory.
pub const MAX_IMAGE_SIDE: u32 = 20_000;
/// Largest decoder allocation.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// Why an image could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    /// The file is empty.
    #[error("empty file (0 bytes)")]
    Empty,
    /// The format was not recognised or the data is corrupt or truncated.
    #[error("cannot decode image: {0}")]
    Decode(#[from] image::ImageError),
}

/// Decodes an image file with size limits. The format is guessed from the content, not the name.
pub fn decode_file(path: &Path) -> Result<DynamicImage, ImageError> {
    decode_bytes(&std::fs::read(path)?)
}

/// Decodes in-memory image bytes with size limits.
pub fn decode_bytes(bytes: &[u8]) -> Result<DynamicImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    Ok(reader.decode()?)
}

/// Converts a decoded image to the encoder's input layout: CHW, f32 in [0, 1].
/// Any pixel type works (8/16-bit, float, grey+alpha, RGBA); alpha is dropped.
pub fn image_to_input(image: &DynamicImage, spec: &InputSpec) -> Vec<f32> {
    let fitted = fit(image, spec);
    let size = spec.size;
    let mut out = vec![0.0f32; spec.len()];
    if spec.channels == 1 {
        let grey = fitted.to_luma8();
        for (dst, src) in out.iter_mut().zip(grey.as_raw()) {
            *dst = f32::from(*src) / 255.0;
        }
    } else {
        let rgb = fitted.to_rgb8();
        let plane = size * size;
        for (i, pixel) in rgb.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = f32::from(pixel[c]) / 255.0;
            }
        }
    }
    out
}

/// Fits an image to `spec.size` × `spec.size` by the policy.
fn fit(image: &DynamicImage, spec: &InputSpec) -> DynamicImage {
    let size = spec.size as u32;
    let (width, height) = image.dimensions();
    if (width, height) == (size, size) {
        return image.clone();
    }
    match spec.resize {
        ResizePolicy::Stretch => image.resize_exact(size, size, FilterType::Triangle),
        ResizePolicy::Pad => {
            let inner = if width > size || height > size {
                image.resize(size, size, FilterType::Triangle)
            } else {
                image.clone()
            };
            let mut canvas = DynamicImage::new(size, size, inner.color());
            let x = (size - inner.width()) / 2;
            let y = (size - inner.height()) / 2;
            image::imageops::overlay(&mut canvas, &inner, i64::from(x), i64::from(y));
            canvas
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    #[test]
    fn pad_centres_a_28x28_image_with_a_black_border() {
        let image = DynamicImage::ImageLuma8(GrayImage::from_pixel(28, 28, Luma([255])));
        let spec = InputSpec { channels: 1, size: 32, resize: ResizePolicy::Pad };
        let input = image_to_input(&image, &spec);
        assert_eq!(input.len(), 1024);
        assert_eq!(input[0], 0.0);
        assert_eq!(input[2 * 32 + 2], 1.0);
        assert_eq!(input[29 * 32 + 29], 1.0);
        assert_eq!(input[30 * 32 + 30], 0.0);
        assert_eq!(input.iter().filter(|&&v| v == 1.0).count(), 28 * 28);
    }

    #[test]
    fn rgb_is_laid_out_channel_first_and_scaled_to_unit_range() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, Rgb([255, 0, 51])));
        let spec = InputSpec { channels: 3, size: 4, resize: ResizePolicy::Stretch };
        let input = image_to_input(&image, &spec);
        assert!(input[..16].iter().all(|&v| v == 1.0));
        assert!(input[16..32].iter().all(|&v| v == 0.0));
        assert!(input[32..].iter().all(|&v| (v - 0.2).abs() < 1e-6));
    }

    #[test]
    fn empty_and_garbage_bytes_are_errors() {
        assert!(matches!(decode_bytes(&[]), Err(ImageError::Empty)));
        assert!(matches!(decode_bytes(b"this is not an image"), Err(ImageError::Decode(_))));
    }
}
