//! Reduced-size JPEG decoding: a JPEG much larger than the model input is decoded at 1/2, 1/4 or
//! 1/8 scale straight from its DCT coefficients (`jpeg-decoder`'s `scale`), which skips most of
//! the decoding work for camera-sized photos. The scale is chosen so the decoded image keeps at
//! least twice the model's input resolution, and the usual preprocessing then filters it down, so
//! the input stays anti-aliased; the embedding benchmark measures the agreement with full decoding.
//! The EXIF orientation is applied as the full decoder applies it.

use dim_models::preprocess::{self, InputSpec};
use image::{DynamicImage, GrayImage, RgbImage};

/// The decoded image is kept at least this many times the model's input side.
const OVERSAMPLING: u32 = 2;

/// Whether `bytes` start like a JPEG file.
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decodes a JPEG at the smallest DCT scale that keeps `OVERSAMPLING` × the input size on the
/// shorter side. Returns `None` whenever the plain decoder should handle the file instead: not a
/// baseline-decodable JPEG, no reduction possible, a pixel format other than 8-bit grey or RGB
/// (CMYK, 16-bit), more than `max_pixels` pixels, or any decoding error (so errors are reported
/// the same way for every file).
pub fn decode_reduced(bytes: &[u8], spec: &InputSpec, max_pixels: u64) -> Option<DynamicImage> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    preprocess::check_pixel_count(width, height, max_pixels).ok()?;
    let wanted_short_side = OVERSAMPLING * spec.size as u32;
    let short_side = width.min(height);
    // The largest reduction is 1/8; below twice that there is nothing to gain.
    if short_side < 2 * wanted_short_side {
        return None;
    }
    let requested_width = (u64::from(width) * u64::from(wanted_short_side)).div_ceil(u64::from(short_side));
    let requested_height = (u64::from(height) * u64::from(wanted_short_side)).div_ceil(u64::from(short_side));
    decoder.set_max_decoding_buffer_size(usize::try_from(max_pixels.saturating_mul(4)).unwrap_or(usize::MAX));
    let (scaled_width, scaled_height) =
        decoder.scale(requested_width as u16, requested_height as u16).ok()?;
    let pixels = decoder.decode().ok()?;
    let (scaled_width, scaled_height) = (u32::from(scaled_width), u32::from(scaled_height));
    let orientation = preprocess::exif_orientation(decoder.exif_data());
    let mut image = match decoder.info()?.pixel_format {
        jpeg_decoder::PixelFormat::L8 => {
            GrayImage::from_raw(scaled_width, scaled_height, pixels).map(DynamicImage::ImageLuma8)
        }
        jpeg_decoder::PixelFormat::RGB24 => {
            RgbImage::from_raw(scaled_width, scaled_height, pixels).map(DynamicImage::ImageRgb8)
        }
        _ => None,
    }?;
    image.apply_orientation(orientation);
    Some(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dim_models::preprocess::{self, Background, ResizePolicy};

    fn encode(image: &RgbImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 92).encode_image(image).unwrap();
        bytes
    }

    #[test]
    fn a_large_jpeg_is_decoded_reduced_and_preprocesses_like_the_full_decode() {
        let spec =
            InputSpec { channels: 1, size: 32, resize: ResizePolicy::Pad, background: Background::White };
        let photo = RgbImage::from_fn(1024, 768, |x, y| {
            image::Rgb([(x / 4) as u8, (y / 3) as u8, ((x + y) / 7) as u8])
        });
        let bytes = encode(&photo);
        assert!(is_jpeg(&bytes));
        let reduced = decode_reduced(&bytes, &spec, preprocess::DEFAULT_MAX_PIXELS)
            .expect("a 1024x768 JPEG is reduced");
        assert_eq!(
            (reduced.width(), reduced.height()),
            (128, 96),
            "1/8 scale keeps ≥ 64 px on the short side"
        );
        let full = preprocess::decode_bytes(&bytes, preprocess::DEFAULT_MAX_PIXELS).unwrap();
        let a = preprocess::image_to_input(&reduced, &spec);
        let b = preprocess::image_to_input(&full, &spec);
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 0.05, "largest input difference {worst}");

        let small = encode(&RgbImage::new(100, 80));
        assert!(
            decode_reduced(&small, &spec, preprocess::DEFAULT_MAX_PIXELS).is_none(),
            "too small to reduce"
        );
        assert!(decode_reduced(b"\xFF\xD8\xFFnot really", &spec, preprocess::DEFAULT_MAX_PIXELS).is_none());
        assert!(
            decode_reduced(&bytes, &spec, 1024 * 767).is_none(),
            "over the pixel cap: the full decoder reports it"
        );
    }
}
