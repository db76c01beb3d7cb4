//! Property tests of the decode-and-preprocess path: arbitrary bytes, every kind of truncation
//! and random bit flips of valid PNG, JPEG, GIF, WebP and TIFF files must each end as an input
//! vector or a typed error: never a panic, a hang, or an allocation beyond the pixel cap.

use dim_models::preprocess::{Background, ImageError, InputSpec, ResizePolicy, decode_bytes, image_to_input};
use image::{DynamicImage, ImageFormat, Rgba, RgbaImage};
use std::io::Cursor;
use std::sync::mpsc;
use std::time::Duration;

/// A cap far below what a flipped header could ask for, so a wrong size is refused, not allocated.
const MAX_PIXELS: u64 = 1 << 20;
const SPEC: InputSpec =
    InputSpec { channels: 3, size: 16, resize: ResizePolicy::Pad, background: Background::White };
/// Mutations per format.
const FLIPPED_VARIANTS: usize = 300;
const RANDOM_INPUTS: usize = 300;
/// No single decode may take longer than this (a hang fails the test instead of stalling CI).
const PER_INPUT_BUDGET: Duration = Duration::from_secs(20);

/// A small deterministic generator (xorshift64*), so a failure names a reproducible case.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn sample_image() -> DynamicImage {
    DynamicImage::ImageRgba8(RgbaImage::from_fn(37, 23, |x, y| {
        Rgba([(x * 7) as u8, (y * 11) as u8, ((x + y) * 5) as u8, if (x + y) % 3 == 0 { 0 } else { 255 }])
    }))
}

fn encoded(format: ImageFormat) -> Vec<u8> {
    let image = match format {
        // Baseline JPEG has no alpha.
        ImageFormat::Jpeg => DynamicImage::ImageRgb8(sample_image().to_rgb8()),
        _ => sample_image(),
    };
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
    bytes
}

/// Decodes and preprocesses `bytes` on a worker thread; panics (failing the test) when the
/// worker panics or runs past the budget, naming the case.
fn must_end_cleanly(bytes: Vec<u8>, case: &str) -> Result<(), ImageError> {
    let (sender, receiver) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let outcome = decode_bytes(&bytes, MAX_PIXELS).map(|image| image_to_input(&image, &SPEC));
        let _ = sender.send(outcome);
    });
    match receiver.recv_timeout(PER_INPUT_BUDGET) {
        Ok(outcome) => {
            worker.join().unwrap();
            outcome.map(|input| assert_eq!(input.len(), SPEC.len(), "{case}: wrong input length"))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{case}: decoding took longer than {PER_INPUT_BUDGET:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{case}: decoding panicked"),
    }
}

const FORMATS: [ImageFormat; 5] =
    [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Gif, ImageFormat::WebP, ImageFormat::Tiff];

#[test]
fn valid_files_of_every_format_decode() {
    for format in FORMATS {
        must_end_cleanly(encoded(format), &format!("{format:?} intact")).unwrap();
    }
}

#[test]
fn every_truncation_ends_in_an_input_or_a_typed_error() {
    for format in FORMATS {
        let bytes = encoded(format);
        // Every length through the headers, then a spread over the data.
        let lengths = (0..bytes.len().min(300)).chain((300..bytes.len()).step_by(97));
        for length in lengths {
            let _ = must_end_cleanly(bytes[..length].to_vec(), &format!("{format:?} cut to {length} bytes"));
        }
    }
}

#[test]
fn bit_flips_end_in_an_input_or_a_typed_error() {
    let mut random = Xorshift(0x9E37_79B9_7F4A_7C15);
    for format in FORMATS {
        let bytes = encoded(format);
        for variant in 0..FLIPPED_VARIANTS {
            let mut flipped = bytes.clone();
            let flips = 1 + random.below(8);
            for _ in 0..flips {
                let at = random.below(flipped.len());
                flipped[at] ^= 1 << random.below(8);
            }
            let _ = must_end_cleanly(flipped, &format!("{format:?} variant {variant} ({flips} bit flips)"));
        }
    }
}

#[test]
fn arbitrary_bytes_and_valid_magic_with_garbage_end_cleanly() {
    let mut random = Xorshift(42);
    let magics: [&[u8]; 6] =
        [b"\x89PNG\r\n\x1a\n", b"\xFF\xD8\xFF", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ", b"II*\0", b"MM\0*"];
    for case in 0..RANDOM_INPUTS {
        let length = random.below(4096);
        let mut bytes: Vec<u8> = (0..length).map(|_| random.next() as u8).collect();
        if case % 2 == 0 {
            let magic = magics[random.below(magics.len())];
            bytes.splice(0..0, magic.iter().copied());
        }
        let _ = must_end_cleanly(bytes, &format!("random input {case}"));
    }
}

#[test]
fn a_header_that_claims_a_huge_image_is_refused_before_decoding() {
    // A PNG signature, an IHDR chunk claiming 100000 x 100000 pixels and an empty IDAT chunk.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend(100_000u32.to_be_bytes());
    png.extend(100_000u32.to_be_bytes());
    png.extend([8, 6, 0, 0, 0]);
    let crc = png_crc(&png[12..]);
    png.extend(crc.to_be_bytes());
    png.extend(b"\0\0\0\0IDAT");
    png.extend(png_crc(b"IDAT").to_be_bytes());
    match must_end_cleanly(png, "huge IHDR") {
        Err(ImageError::TooLarge { width: 100_000, height: 100_000, .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

/// PNG's CRC-32 (polynomial 0xEDB88320) of a chunk's type and data.
fn png_crc(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
