//! Images in HTML pages (dim-serve's thumbnails, contact sheets): previews decoded upright under
//! the pixel cap, scaled to fit a square (never enlarged), composited over white and encoded as
//! JPEG; data URIs for standalone pages; and escaping of text placed in HTML.

use dim_models::preprocess;
use image::{DynamicImage, RgbImage};
use std::path::Path;

/// JPEG quality of previews.
pub const JPEG_QUALITY: u8 = 85;

/// The JPEG preview of the image file at `path`, fitting a `size` square.
pub fn file_preview(path: &Path, size: u32, max_pixels: u64) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|error| error.to_string())?;
    let image = preprocess::decode_bytes(&bytes, max_pixels).map_err(|error| error.to_string())?;
    encode_preview(&image, size)
}

/// Scales `image` to fit a `size` square (never enlarging), composites alpha over white and
/// encodes JPEG.
pub fn encode_preview(image: &DynamicImage, size: u32) -> Result<Vec<u8>, String> {
    let scaled = if image.width() > size || image.height() > size {
        image.thumbnail(size, size)
    } else {
        image.clone()
    };
    let rgba = scaled.to_rgba8();
    let rgb = RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over_white =
            |c: u8| ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a)) + 127) / 255) as u8;
        image::Rgb([over_white(r), over_white(g), over_white(b)])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode_image(&rgb)
        .map_err(|error| error.to_string())?;
    Ok(jpeg)
}

/// `jpeg` as a `data:` URI, for a page that must stand alone.
pub fn jpeg_data_uri(jpeg: &[u8]) -> String {
    use base64::Engine as _;
    format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(jpeg))
}

/// `text` with `&`, `<`, `>` and `"` escaped, for element text and quoted attributes.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
