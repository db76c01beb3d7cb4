//! Image decoding and preprocessing shared by training (image folders, IDX, CIFAR), embedding
//! and every other consumer, so all sides feed the encoder identically: decode with a pixel cap,
//! turn the image upright by its EXIF orientation, composite any alpha channel over the model's
//! background, convert to grey or RGB, fit to the input size by the model's [`ResizePolicy`], and
//! lay out as CHW f32 in [0, 1]. The encoder itself scales [0, 1] to [−1, 1].

use image::{
    DynamicImage, GenericImageView, GrayImage, ImageDecoder, ImageReader, Limits, Rgb32FImage, RgbImage,
    imageops::FilterType, metadata::Orientation,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
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

/// What transparent pixels become: images with an alpha channel are composited over this colour
/// before anything else sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    /// Composite over white (the default for new models: clip art, icons and logos are drawn on
    /// white far more often than on black).
    White,
    /// Composite over black.
    Black,
    /// Drop the alpha channel, so transparent pixels show whatever colour they hide. What models
    /// made before the background was recorded did; kept for them only.
    Ignore,
}

impl Background {
    /// The background's name in files and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Background::White => "white",
            Background::Black => "black",
            Background::Ignore => "ignore",
        }
    }

    /// What models and checkpoints that do not record a background were made with.
    pub fn legacy() -> Self {
        Background::Ignore
    }

    /// The colour in [0, 1], or `None` when alpha is dropped.
    fn level(self) -> Option<f32> {
        match self {
            Background::White => Some(1.0),
            Background::Black => Some(0.0),
            Background::Ignore => None,
        }
    }
}

impl std::str::FromStr for Background {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Background::White, Background::Black, Background::Ignore]
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown background `{s}` (known: white, black, ignore)"))
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
    /// What transparent pixels are composited over.
    pub background: Background,
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

    /// A one-line description of the whole preprocessing, for model metadata and model cards.
    pub fn describe(&self) -> String {
        let alpha = match self.background {
            Background::Ignore => "alpha dropped".to_string(),
            other => format!("alpha composited over {}", other.name()),
        };
        let colour = if self.channels == 1 { "grey" } else { "RGB" };
        let fit = match self.resize {
            ResizePolicy::Pad => format!("shrunk to fit {0}x{0} if larger, centred on black", self.size),
            ResizePolicy::Stretch => format!("resized to {0}x{0} (triangle filter)", self.size),
        };
        format!("decode; EXIF orientation applied; {alpha}; {colour}; {fit}; CHW float32 in [0,1]")
    }
}

/// Default cap on an image's pixel count (width × height): 256 Mpx, about 1 GB as RGBA8.
pub const DEFAULT_MAX_PIXELS: u64 = 256 * 1024 * 1024;
/// The environment variable that sets the pixel cap for every tool.
pub const MAX_PIXELS_VARIABLE: &str = "DIM_MAX_IMAGE_PIXELS";

/// The pixel cap in force: [`MAX_PIXELS_VARIABLE`] when it holds a number, else
/// [`DEFAULT_MAX_PIXELS`].
pub fn configured_max_pixels() -> u64 {
    std::env::var(MAX_PIXELS_VARIABLE).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_MAX_PIXELS)
}

/// Decoders may allocate this many bytes per allowed pixel (16-bit RGBA plus working space).
const DECODE_BYTES_PER_PIXEL: u64 = 10;

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
    /// The image has more pixels than allowed.
    #[error(
        "image is {width}x{height} ({} Mpx), above the limit of {} Mpx; raise it with \
         --max-image-pixels {} or DIM_MAX_IMAGE_PIXELS={2} (decoding needs about {} MB of memory)",
        mega(u64::from(*width) * u64::from(*height)),
        mega(*limit),
        u64::from(*width) * u64::from(*height),
        u64::from(*width) * u64::from(*height) * 4 / 1_000_000
    )]
    TooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The pixel limit in force.
        limit: u64,
    },
    /// The format was not recognised or the data is corrupt or truncated.
    #[error("cannot decode image: {0}")]
    Decode(#[from] image::ImageError),
}

fn mega(pixels: u64) -> String {
    format!("{:.1}", pixels as f64 / 1e6)
}

/// Decodes an image file upright, with at most `max_pixels` pixels. The format is guessed from
/// the content, not the name.
pub fn decode_file(path: &Path, max_pixels: u64) -> Result<DynamicImage, ImageError> {
    decode_bytes(&std::fs::read(path)?, max_pixels)
}

/// Decodes in-memory image bytes upright (EXIF orientation applied), refusing images of more
/// than `max_pixels` pixels before any pixel memory is allocated.
pub fn decode_bytes(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    // The header alone gives the size, so an oversized image is refused with its real
    // dimensions before a decoder reserves any pixel memory.
    let mut probe = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    probe.no_limits();
    let (width, height) = probe.into_dimensions()?;
    check_pixel_count(width, height, max_pixels)?;
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(width.max(1));
    limits.max_image_height = Some(height.max(1));
    limits.max_alloc = Some(max_pixels.saturating_mul(DECODE_BYTES_PER_PIXEL).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder()?;
    // A broken EXIF block is no reason to lose an image that decodes: it is shown as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Refuses images of more than `max_pixels` pixels.
pub fn check_pixel_count(width: u32, height: u32, max_pixels: u64) -> Result<(), ImageError> {
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooLarge { width, height, limit: max_pixels });
    }
    Ok(())
}

/// The orientation an EXIF block (as stored in a JPEG APP1 segment, without the `Exif\0\0`
/// prefix) asks for; no or unreadable EXIF means none.
pub fn exif_orientation(exif: Option<&[u8]>) -> Orientation {
    exif.and_then(Orientation::from_exif_chunk).unwrap_or(Orientation::NoTransforms)
}

/// Converts a decoded (upright) image to the encoder's input layout: CHW, f32 in [0, 1].
/// Any pixel type works (8/16-bit, float, grey+alpha, RGBA); alpha is composited over
/// `spec.background` first.
pub fn image_to_input(image: &DynamicImage, spec: &InputSpec) -> Vec<f32> {
    image_to_input_with_region(image, spec).0
}

/// Where an image's own pixels lie on the input canvas: all of it, except for the border that
/// [`ResizePolicy::Pad`] adds around an image that is not square.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRegion {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

/// [`image_to_input`], and where the image's pixels lie on the canvas.
pub fn image_to_input_with_region(image: &DynamicImage, spec: &InputSpec) -> (Vec<f32>, ContentRegion) {
    let opaque = composite_alpha(image, spec.background);
    let (fitted, region) = fit(&opaque, spec);
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
    (out, region)
}

/// Mean that [`normalise_contrast`] gives an image's pixels.
pub const NORMALISED_MEAN: f32 = 0.5;
/// Standard deviation that [`normalise_contrast`] gives an image's pixels.
pub const NORMALISED_STD: f32 = 0.25;
/// Images whose pixels vary less than this (one 8-bit level) are flat and left as they are:
/// stretching them would turn sensor and JPEG noise into structure, and every flat image of any
/// brightness into the same one.
pub const FLAT_BELOW_STD: f32 = 1.0 / 255.0;

/// Per-image contrast normalisation of an input laid out by [`image_to_input`]: the pixels of
/// `region` (all channels together, so colours keep their ratios) are shifted and scaled to
/// [`NORMALISED_MEAN`] and [`NORMALISED_STD`], then clamped to [0, 1]; the padding border is left
/// black. A brightness or contrast change of the whole image (an affine map of its values) then
/// gives the same input, up to clipping and rounding. Flat images are left as they are.
pub fn normalise_contrast(input: &mut [f32], spec: &InputSpec, region: ContentRegion) {
    let plane = spec.size * spec.size;
    let indices: Vec<usize> = (0..spec.channels)
        .flat_map(|channel| (region.y..region.y + region.height).map(move |row| (channel, row)))
        .flat_map(|(channel, row)| {
            let start = channel * plane + row * spec.size + region.x;
            start..start + region.width
        })
        .collect();
    if indices.is_empty() {
        return;
    }
    let count = indices.len() as f64;
    let mean = indices.iter().map(|&i| f64::from(input[i])).sum::<f64>() / count;
    let variance = indices.iter().map(|&i| (f64::from(input[i]) - mean).powi(2)).sum::<f64>() / count;
    let std = variance.sqrt();
    if std < f64::from(FLAT_BELOW_STD) {
        return;
    }
    let gain = f64::from(NORMALISED_STD) / std;
    for &i in &indices {
        input[i] = ((f64::from(input[i]) - mean) * gain + f64::from(NORMALISED_MEAN)).clamp(0.0, 1.0) as f32;
    }
}

/// The image with its alpha channel composited over `background` (no alpha channel, or
/// [`Background::Ignore`]: the image as it is).
fn composite_alpha(image: &DynamicImage, background: Background) -> Cow<'_, DynamicImage> {
    let Some(level) = background.level().filter(|_| image.color().has_alpha()) else {
        return Cow::Borrowed(image);
    };
    let back = level * 255.0;
    Cow::Owned(match image {
        DynamicImage::ImageLumaA8(grey_alpha) => {
            let (width, height) = grey_alpha.dimensions();
            DynamicImage::ImageLuma8(GrayImage::from_fn(width, height, |x, y| {
                let [value, alpha] = grey_alpha.get_pixel(x, y).0;
                image::Luma([blend_u8(value, alpha, back)])
            }))
        }
        DynamicImage::ImageRgba8(rgba) => {
            let (width, height) = rgba.dimensions();
            DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
                let [r, g, b, alpha] = rgba.get_pixel(x, y).0;
                image::Rgb([blend_u8(r, alpha, back), blend_u8(g, alpha, back), blend_u8(b, alpha, back)])
            }))
        }
        // 16-bit and float images keep their precision through the blend.
        other => {
            let rgba = other.to_rgba32f();
            let (width, height) = rgba.dimensions();
            DynamicImage::ImageRgb32F(Rgb32FImage::from_fn(width, height, |x, y| {
                let [r, g, b, alpha] = rgba.get_pixel(x, y).0;
                let alpha = alpha.clamp(0.0, 1.0);
                image::Rgb([r, g, b].map(|c| c * alpha + level * (1.0 - alpha)))
            }))
        }
    })
}

fn blend_u8(value: u8, alpha: u8, background: f32) -> u8 {
    let alpha = f32::from(alpha) / 255.0;
    (f32::from(value) * alpha + background * (1.0 - alpha)).round() as u8
}

/// Fits an image to `spec.size` × `spec.size` by the policy; says where its pixels landed.
fn fit<'a>(image: &'a DynamicImage, spec: &InputSpec) -> (Cow<'a, DynamicImage>, ContentRegion) {
    let size = spec.size as u32;
    let (width, height) = image.dimensions();
    let whole = ContentRegion { x: 0, y: 0, width: spec.size, height: spec.size };
    if (width, height) == (size, size) {
        return (Cow::Borrowed(image), whole);
    }
    match spec.resize {
        ResizePolicy::Stretch => (Cow::Owned(image.resize_exact(size, size, FilterType::Triangle)), whole),
        ResizePolicy::Pad => {
            let inner = if width > size || height > size {
                Cow::Owned(image.resize(size, size, FilterType::Triangle))
            } else {
                Cow::Borrowed(image)
            };
            let mut canvas = DynamicImage::new(size, size, inner.color());
            let x = (size - inner.width()) / 2;
            let y = (size - inner.height()) / 2;
            image::imageops::overlay(&mut canvas, inner.as_ref(), i64::from(x), i64::from(y));
            let region = ContentRegion {
                x: x as usize,
                y: y as usize,
                width: inner.width() as usize,
                height: inner.height() as usize,
            };
            (Cow::Owned(canvas), region)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayAlphaImage, ImageFormat, LumaA, Rgb, Rgba, RgbaImage};

    const GREY_32: InputSpec =
        InputSpec { channels: 1, size: 32, resize: ResizePolicy::Pad, background: Background::White };
    const RGB_4: InputSpec =
        InputSpec { channels: 3, size: 4, resize: ResizePolicy::Stretch, background: Background::White };

    #[test]
    fn pad_centres_a_28x28_image_with_a_black_border() {
        let image = DynamicImage::ImageLuma8(GrayImage::from_pixel(28, 28, image::Luma([255])));
        let input = image_to_input(&image, &GREY_32);
        assert_eq!(input.len(), 1024);
        assert_eq!(input[0], 0.0);
        assert_eq!(input[2 * 32 + 2], 1.0);
        assert_eq!(input[29 * 32 + 29], 1.0);
        assert_eq!(input[30 * 32 + 30], 0.0);
        assert_eq!(input.iter().filter(|&&v| v == 1.0).count(), 28 * 28);
    }

    #[test]
    fn pad_reports_where_the_image_landed_and_stretch_covers_the_canvas() {
        let wide = DynamicImage::ImageLuma8(GrayImage::from_pixel(400, 300, image::Luma([9])));
        let (_, region) = image_to_input_with_region(&wide, &GREY_32);
        assert_eq!(region, ContentRegion { x: 0, y: 4, width: 32, height: 24 });
        let (_, region) = image_to_input_with_region(&wide, &RGB_4);
        assert_eq!(region, ContentRegion { x: 0, y: 0, width: 4, height: 4 });
    }

    #[test]
    fn contrast_normalisation_sets_mean_and_spread_and_undoes_brightness_and_contrast_changes() {
        // A 30x20 image on a 32x32 canvas (1-pixel border left and right, 6 rows top and bottom)
        // holding every level 0..60 equally often, so no value lands beyond the clamp at 1.73 sigma.
        let pixel = |x: u32, y: u32, gain: u32, offset: u32| {
            image::Luma([(offset + gain * ((x + 30 * y) % 60)) as u8])
        };
        let dim = DynamicImage::ImageLuma8(GrayImage::from_fn(30, 20, |x, y| pixel(x, y, 1, 40)));
        let bright = DynamicImage::ImageLuma8(GrayImage::from_fn(30, 20, |x, y| pixel(x, y, 2, 60)));
        let normalised = |image: &DynamicImage| {
            let (mut input, region) = image_to_input_with_region(image, &GREY_32);
            assert_eq!(region, ContentRegion { x: 1, y: 6, width: 30, height: 20 });
            normalise_contrast(&mut input, &GREY_32, region);
            (input, region)
        };
        let (dim_input, region) = normalised(&dim);
        let (bright_input, _) = normalised(&bright);
        let content: Vec<f32> = (region.y..region.y + region.height)
            .flat_map(|row| dim_input[row * 32 + 1..row * 32 + 31].to_vec())
            .collect();
        let mean = content.iter().sum::<f32>() / content.len() as f32;
        let std = (content.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / content.len() as f32).sqrt();
        assert!((mean - NORMALISED_MEAN).abs() < 1e-5, "mean {mean}");
        assert!((std - NORMALISED_STD).abs() < 1e-5, "std {std}");
        // The border stays black.
        assert!(dim_input[..32 * 6].iter().all(|&v| v == 0.0));
        assert_eq!(dim_input[6 * 32], 0.0);
        // Twice the contrast and brighter: the same input (the values are affine in each other
        // exactly, so only float rounding differs).
        for (a, b) in dim_input.iter().zip(&bright_input) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn flat_images_are_left_as_they_are_by_contrast_normalisation() {
        let flat = DynamicImage::ImageLuma8(GrayImage::from_pixel(32, 32, image::Luma([61])));
        let (mut input, region) = image_to_input_with_region(&flat, &GREY_32);
        let before = input.clone();
        normalise_contrast(&mut input, &GREY_32, region);
        assert_eq!(input, before);
    }

    #[test]
    fn rgb_is_laid_out_channel_first_and_scaled_to_unit_range() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, Rgb([255, 0, 51])));
        let input = image_to_input(&image, &RGB_4);
        assert!(input[..16].iter().all(|&v| v == 1.0));
        assert!(input[16..32].iter().all(|&v| v == 0.0));
        assert!(input[32..].iter().all(|&v| (v - 0.2).abs() < 1e-6));
    }

    #[test]
    fn empty_garbage_and_oversized_images_are_typed_errors_that_say_how_to_raise_the_limit() {
        assert!(matches!(decode_bytes(&[], DEFAULT_MAX_PIXELS), Err(ImageError::Empty)));
        assert!(matches!(
            decode_bytes(b"this is not an image", DEFAULT_MAX_PIXELS),
            Err(ImageError::Decode(_))
        ));
        let png = encode(&DynamicImage::ImageRgb8(RgbImage::new(100, 60)), ImageFormat::Png);
        let error = decode_bytes(&png, 5_999).unwrap_err();
        assert!(matches!(error, ImageError::TooLarge { width: 100, height: 60, limit: 5_999 }));
        let message = error.to_string();
        assert!(message.contains("100x60") && message.contains("--max-image-pixels 6000"), "{message}");
        assert_eq!(decode_bytes(&png, 6_000).unwrap().dimensions(), (100, 60));
    }

    #[test]
    fn alpha_is_composited_over_the_background_and_ignore_keeps_the_hidden_colour() {
        // Left column fully transparent red, right column opaque blue; at the input size, so
        // nothing is resized and plane R reads [left, right] on each row.
        let rgba =
            RgbaImage::from_fn(
                2,
                2,
                |x, _| if x == 0 { Rgba([255, 0, 0, 0]) } else { Rgba([0, 0, 255, 255]) },
            );
        let image = DynamicImage::ImageRgba8(rgba);
        let spec = InputSpec { size: 2, ..RGB_4 };
        let white = image_to_input(&image, &spec);
        assert_eq!(&white[..2], &[1.0, 0.0], "R: white background, then blue's 0");
        assert_eq!(&white[8..10], &[1.0, 1.0], "B: white, then blue");
        let black = image_to_input(&image, &InputSpec { background: Background::Black, ..spec });
        assert_eq!(&black[..2], &[0.0, 0.0]);
        let ignored = image_to_input(&image, &InputSpec { background: Background::Ignore, ..spec });
        assert_eq!(&ignored[..2], &[1.0, 0.0], "the hidden red shows when alpha is dropped");

        let half = DynamicImage::ImageLumaA8(GrayAlphaImage::from_pixel(1, 1, LumaA([0, 128])));
        let grey = InputSpec { channels: 1, size: 1, ..RGB_4 };
        let value = image_to_input(&half, &grey)[0];
        assert!(
            (value - 127.0 / 255.0).abs() < 1e-6,
            "half-transparent black over white is mid grey: {value}"
        );

        let deep = DynamicImage::ImageRgba16(image::ImageBuffer::from_pixel(1, 1, Rgba([0u16, 0, 0, 0])));
        assert_eq!(image_to_input(&deep, &InputSpec { size: 1, ..RGB_4 }), [1.0, 1.0, 1.0]);
    }

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        image.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        bytes
    }
}
