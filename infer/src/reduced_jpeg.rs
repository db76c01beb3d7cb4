//! Reduced-size JPEG decoding: a JPEG much larger than the model input is decoded at 1/2, 1/4 or
//! 1/8 scale straight from its DCT coefficients (libjpeg-turbo's scaled decoding, through the
//! `mozjpeg` crate, which builds it from source), which skips most of the decoding work for
//! camera-sized photos. The scale is chosen so the decoded image keeps at least twice the model's
//! input resolution, and the usual preprocessing then filters it down, so the input stays
//! anti-aliased; the embedding benchmark measures the agreement with full decoding.
//! The EXIF orientation is applied as the full decoder applies it.

use dim_models::preprocess::{self, InputSpec};
use image::{DynamicImage, GrayImage, RgbImage};
use mozjpeg::{ColorSpace, Decompress, Marker};

/// The decoded image is kept at least this many times the model's input side.
const OVERSAMPLING: u32 = 2;

/// The identifier that starts an EXIF APP1 segment.
const EXIF_PREFIX: &[u8] = b"Exif\0\0";

/// Whether `bytes` start like a JPEG file.
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decodes a JPEG at the smallest DCT scale that keeps `OVERSAMPLING` × the input size on the
/// shorter side. Returns `None` whenever the plain decoder should handle the file instead: no
/// reduction possible, a colour space other than grey or YCbCr/RGB (CMYK, YCCK), more than
/// `max_pixels` pixels, or any decoding error (so errors are reported the same way for every
/// file). A truncated file decodes as far as it goes, as the full decoder decodes it.
pub fn decode_reduced(bytes: &[u8], spec: &InputSpec, max_pixels: u64) -> Option<DynamicImage> {
    // libjpeg reports fatal errors by unwinding out of the C code; not every `mozjpeg` call turns
    // that back into an error, so the whole decoding is caught here.
    std::panic::catch_unwind(|| decode_scaled(bytes, spec, max_pixels)).ok().flatten()
}

fn decode_scaled(bytes: &[u8], spec: &InputSpec, max_pixels: u64) -> Option<DynamicImage> {
    let mut decompress = Decompress::with_markers(&[Marker::APP(1)]).from_mem(bytes).ok()?;
    let (width, height) = (u32::try_from(decompress.width()).ok()?, u32::try_from(decompress.height()).ok()?);
    preprocess::check_pixel_count(width, height, max_pixels).ok()?;
    let wanted_short_side = OVERSAMPLING * spec.size as u32;
    let short_side = width.min(height);
    // The largest reduction is 1/8; below twice that there is nothing to gain.
    let reduction = [8, 4, 2].into_iter().find(|r| short_side / r >= wanted_short_side)?;
    let exif =
        decompress.markers().find_map(|marker| marker.data.strip_prefix(EXIF_PREFIX).map(<[u8]>::to_vec));
    decompress.scale((8 / reduction) as u8);
    let grey = match decompress.color_space() {
        ColorSpace::JCS_GRAYSCALE => true,
        ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB => false,
        _ => return None,
    };
    let mut started = if grey { decompress.grayscale() } else { decompress.rgb() }.ok()?;
    let (scaled_width, scaled_height) =
        (u32::try_from(started.width()).ok()?, u32::try_from(started.height()).ok()?);
    let pixels: Vec<u8> = started.read_scanlines().ok()?;
    started.finish().ok()?;
    let mut image = if grey {
        DynamicImage::ImageLuma8(GrayImage::from_raw(scaled_width, scaled_height, pixels)?)
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_raw(scaled_width, scaled_height, pixels)?)
    };
    image.apply_orientation(preprocess::exif_orientation(exif.as_deref()));
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
    fn bit_flips_and_truncations_end_in_an_image_or_none() {
        let spec =
            InputSpec { channels: 3, size: 28, resize: ResizePolicy::Pad, background: Background::White };
        let photo = RgbImage::from_fn(640, 480, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8])
        });
        let bytes = encode(&photo);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut flipped = bytes.clone();
            let position = (state % bytes.len() as u64) as usize;
            flipped[position] ^= 1 << (state >> 61);
            if let Some(image) = decode_reduced(&flipped, &spec, preprocess::DEFAULT_MAX_PIXELS) {
                assert!(image.width() >= 56 && image.height() >= 56, "{}x{}", image.width(), image.height());
            }
            let cut = &bytes[..(state % bytes.len() as u64) as usize];
            let _ = decode_reduced(cut, &spec, preprocess::DEFAULT_MAX_PIXELS);
        }
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

        // A grey JPEG decodes as grey.
        let mut grey_bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut grey_bytes, 92)
            .encode_image(&DynamicImage::ImageRgb8(photo.clone()).to_luma8())
            .unwrap();
        let grey = decode_reduced(&grey_bytes, &spec, preprocess::DEFAULT_MAX_PIXELS).expect("reduced");
        assert!(matches!(grey, DynamicImage::ImageLuma8(_)), "{:?}", grey.color());

        let small = encode(&RgbImage::new(100, 80));
        assert!(
            decode_reduced(&small, &spec, preprocess::DEFAULT_MAX_PIXELS).is_none(),
            "too small to reduce"
        );
        assert!(decode_reduced(b"\xFF\xD8\xFFnot really", &spec, preprocess::DEFAULT_MAX_PIXELS).is_none());
        // A damaged header is an error caught here (libjpeg unwinds out of C), never a crash.
        let mut damaged = bytes.clone();
        damaged[2..200].fill(0x5A);
        assert!(decode_reduced(&damaged, &spec, preprocess::DEFAULT_MAX_PIXELS).is_none());
        assert!(
            decode_reduced(&bytes, &spec, 1024 * 767).is_none(),
            "over the pixel cap: the full decoder reports it"
        );
    }
}
