//! dim-embed on what real collections hold: names that are not UTF-8, symbolic link loops,
//! dangling links, second links to one folder, a directory named like an image, EXIF-rotated
//! photos, transparent PNGs and empty files; and SIGKILL at random moments followed by a rerun.
//! The shipped model embeds; every test runs the real binary or the library's job.

use dim_infer::embedder::{Embedder, EmbedderOptions};
use dim_vectors::manifest::{EMBEDDINGS_FILE, MANIFEST_FILE, Manifest, SKIPPED_FILE};
use image::{DynamicImage, GrayAlphaImage, ImageFormat, LumaA, Rgb, RgbImage, Rgba, RgbaImage};
use std::ffi::OsString;
use std::io::Cursor;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const DIM_EMBED: &str = env!("CARGO_BIN_EXE_dim-embed");

fn dim_embed(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(DIM_EMBED).args(args).output().expect("dim-embed runs")
}

fn latin1(name: &[u8]) -> OsString {
    OsString::from_vec(name.to_vec())
}

/// A smooth, asymmetric test picture (so every rotation and flip of it differs).
fn photo(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
        let disc = ((u - 0.3).powi(2) + (v - 0.35).powi(2)).sqrt() < 0.18;
        let bar = (0.6..0.85).contains(&u) && v > 0.5;
        let base = [40.0 + 150.0 * u, 30.0 + 180.0 * v * v, 200.0 - 120.0 * u * v];
        let pixel = if disc {
            [250.0, 240.0, 30.0]
        } else if bar {
            [20.0, 20.0, 120.0]
        } else {
            base
        };
        Rgb(pixel.map(|c| c as u8))
    })
}

/// The image as a camera stores it when its EXIF orientation tag says `value`: the inverse of
/// the transform a viewer applies.
fn stored_for(upright: &DynamicImage, value: u8) -> DynamicImage {
    match value {
        1 => upright.clone(),
        2 => upright.fliph(),
        3 => upright.rotate180(),
        4 => upright.flipv(),
        5 => upright.fliph().rotate270(),
        6 => upright.rotate270(),
        7 => upright.fliph().rotate90(),
        8 => upright.rotate90(),
        _ => unreachable!("EXIF orientations are 1 to 8"),
    }
}

/// A quality-95 JPEG carrying an APP1 EXIF segment with only the orientation tag.
fn jpeg_with_orientation(image: &DynamicImage, value: u8) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95).encode_image(&image.to_rgb8()).unwrap();
    let tiff =
        [b"MM\0\x2a\0\0\0\x08".as_slice(), &[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, value, 0, 0, 0, 0, 0, 0]]
            .concat();
    let length = (2 + 6 + tiff.len()) as u16;
    [&jpeg[..2], &[0xFF, 0xE1], &length.to_be_bytes(), b"Exif\0\0", &tiff, &jpeg[2..]].concat()
}

fn png(image: &DynamicImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).unwrap();
    bytes
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn an_odd_collection_embeds_every_valid_image_once_and_lists_the_rest_with_reasons() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("collection");
    let upright = DynamicImage::ImageRgb8(photo(96, 64));
    for value in 1..=8 {
        write(
            &root.join(format!("photos/orient_{value}.jpg")),
            &jpeg_with_orientation(&stored_for(&upright, value), value),
        );
    }
    write(&root.join("photos/upright.png"), &png(&upright));
    let cafe = root.join("latin1").join(latin1(b"caf\xe9.png"));
    write(&cafe, &png(&DynamicImage::ImageRgb8(photo(30, 40))));
    let resume_dir = root.join(latin1(b"r\xe9sum\xe9"));
    write(&resume_dir.join("x.png"), &png(&DynamicImage::ImageRgb8(photo(20, 20))));
    write(&root.join("x.png/inner.png"), &png(&DynamicImage::ImageRgb8(photo(24, 16))));
    let rgba = RgbaImage::from_fn(32, 32, |x, y| {
        if (x + y) % 2 == 0 { Rgba([10, 200, 10, 0]) } else { Rgba([0, 0, 0, 255]) }
    });
    write(&root.join("alpha/rgba.png"), &png(&DynamicImage::ImageRgba8(rgba)));
    let grey_alpha = GrayAlphaImage::from_fn(20, 30, |x, _| LumaA([(x * 12) as u8, (x * 12) as u8]));
    write(&root.join("alpha/la.png"), &png(&DynamicImage::ImageLumaA8(grey_alpha)));
    write(&root.join("empty.png"), b"");
    symlink(root.join("photos"), root.join("photos/loop_to_parent")).unwrap();
    symlink(root.join("nowhere.png"), root.join("dangling.png")).unwrap();
    symlink(root.join("photos"), root.join("second_link")).unwrap();

    let out = temp.path().join("out");
    let output = dim_embed(&[root.as_os_str(), "--out".as_ref(), out.as_os_str()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "dim-embed failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut expected: Vec<PathBuf> =
        ["alpha/la.png", "alpha/rgba.png"].iter().map(|p| root.join(p)).collect();
    expected.push(cafe.clone());
    expected.extend((1..=8).map(|value| root.join(format!("photos/orient_{value}.jpg"))));
    expected.push(root.join("photos/upright.png"));
    expected.push(resume_dir.join("x.png"));
    expected.push(root.join("x.png/inner.png"));
    let manifest = Manifest::read(&out).unwrap();
    let rows: Vec<PathBuf> = manifest.rows.iter().map(|row| row.path.clone()).collect();
    assert_eq!(rows, expected, "each valid image once, in walk order, non-UTF-8 names intact");
    assert_eq!(manifest.count, 14);

    let skipped: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join(SKIPPED_FILE)).unwrap()).unwrap();
    let reasons: Vec<(String, String)> = skipped
        .iter()
        .map(|s| {
            let path = s["path"].as_str().unwrap();
            let relative = path.strip_prefix(root.to_str().unwrap()).unwrap().trim_start_matches('/');
            (relative.to_string(), s["reason"].as_str().unwrap().to_string())
        })
        .collect();
    let reason_of =
        |name: &str| reasons.iter().find(|(path, _)| path == name).map(|(_, reason)| reason.as_str());
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reason_of("dangling.png").unwrap().contains("dangling"), "{reasons:?}");
    assert!(reason_of("photos/loop_to_parent").unwrap().contains("loop"), "{reasons:?}");
    assert!(reason_of("second_link").unwrap().contains("already walked"), "{reasons:?}");
    assert!(reason_of("empty.png").unwrap().contains("empty"), "{reasons:?}");

    // The manifest's JSON maps each row back to its file from Python, non-UTF-8 names included.
    let python = std::env::var_os("DIM_PYTHON").expect("DIM_PYTHON is set by .cargo/config.toml");
    let script = "import json, os, sys, numpy\n\
                  m = json.load(open(sys.argv[1]))\n\
                  paths = [bytes.fromhex(r['path_bytes_hex']) if 'path_bytes_hex' in r else r['path'] for r in m['rows']]\n\
                  assert all(os.stat(p).st_size == r['size'] for p, r in zip(paths, m['rows']))\n\
                  print(sum(isinstance(p, bytes) for p in paths), numpy.load(sys.argv[2]).shape[0])";
    let checked = Command::new(python)
        .args([
            "-c".as_ref(),
            script.as_ref(),
            out.join(MANIFEST_FILE).as_os_str(),
            out.join(EMBEDDINGS_FILE).as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    assert_eq!(String::from_utf8_lossy(&checked.stdout).trim(), "2 14", "two byte-named rows, 14 vectors");

    // dim-search reports the Latin-1 row losslessly too.
    let index = temp.path().join("index");
    let search = env!("CARGO_BIN_EXE_dim-search");
    let built = Command::new(search)
        .args([
            "build".as_ref(),
            "--embeddings".as_ref(),
            out.as_os_str(),
            "--out".as_ref(),
            index.as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let cafe_row = rows.iter().position(|p| *p == cafe).unwrap().to_string();
    let query = Command::new(search)
        .args([
            "query".as_ref(),
            "--index".as_ref(),
            index.as_os_str(),
            "--row".as_ref(),
            cafe_row.as_ref(),
            "-k".as_ref(),
            "1".as_ref(),
            "--json".as_ref(),
        ])
        .output()
        .unwrap();
    assert!(query.status.success(), "{}", String::from_utf8_lossy(&query.stderr));
    let results: serde_json::Value = serde_json::from_slice(&query.stdout).unwrap();
    let hit = &results[0]["results"][0];
    let record: dim_models::path_record::PathRecord = serde_json::from_value(hit.clone()).unwrap();
    assert_eq!(record.to_path_buf().unwrap(), cafe, "{hit}");
    assert!(record.path.ends_with("caf\\xe9.png"), "{hit}");

    // A rerun reuses every row and reports the same skips.
    let rerun = dim_embed(&[root.as_os_str(), "--out".as_ref(), out.as_os_str()]);
    assert!(rerun.status.success());
    assert!(
        String::from_utf8_lossy(&rerun.stdout).contains("embedded 0 images"),
        "{}",
        String::from_utf8_lossy(&rerun.stdout)
    );
    assert_eq!(Manifest::read(&out).unwrap().rows, manifest.rows);
}

#[test]
fn every_exif_orientation_embeds_like_the_upright_photo() {
    let temp = tempfile::tempdir().unwrap();
    let mut embedder = Embedder::try_new(EmbedderOptions::default()).unwrap();
    // 96x64 decodes in full; 640x480 takes the reduced-DCT JPEG path.
    for (width, height) in [(96, 64), (640, 480)] {
        let upright = DynamicImage::ImageRgb8(photo(width, height));
        let reference = temp.path().join(format!("upright_{width}.png"));
        write(&reference, &png(&upright));
        let mut files = vec![reference];
        for value in 1..=8 {
            let path = temp.path().join(format!("orient_{width}_{value}.jpg"));
            write(&path, &jpeg_with_orientation(&stored_for(&upright, value), value));
            files.push(path);
        }
        let embeddings = embedder.embed(&files, 16).unwrap();
        assert!(embeddings.skipped.is_empty(), "{:?}", embeddings.skipped);
        for value in 1..=8 {
            let similarity = cosine(embeddings.row(0), embeddings.row(value));
            assert!(similarity >= 0.999, "{width}x{height}, orientation {value}: cosine {similarity}");
        }
        // Without the tag, a rotated photo is a different picture: the check above can fail.
        let untagged = temp.path().join(format!("untagged_{width}.png"));
        write(&untagged, &png(&stored_for(&upright, 6)));
        let plain = embedder.embed(&[files[0].clone(), untagged], 2).unwrap();
        assert!(cosine(plain.row(0), plain.row(1)) < 0.99, "rotation must change the embedding");
    }
}

fn write_collection(dir: &Path, range: std::ops::Range<u32>) {
    for i in range {
        let image = RgbImage::from_fn(40, 40, |x, y| {
            Rgb([
                ((x * (i % 7 + 1) + y * 3) % 256) as u8,
                ((y * (i % 5 + 2) + i) % 256) as u8,
                ((x + y + i * 9) % 256) as u8,
            ])
        });
        write(&dir.join(format!("img_{i:04}.png")), &png(&DynamicImage::ImageRgb8(image)));
    }
}

/// The manifest rows' paths and the raw vectors file of a finished run.
fn result_of(out: &Path) -> (Vec<PathBuf>, Vec<u8>) {
    let manifest = Manifest::read(out).unwrap();
    (
        manifest.rows.into_iter().map(|row| row.path).collect(),
        std::fs::read(out.join(EMBEDDINGS_FILE)).unwrap(),
    )
}

#[test]
fn a_run_killed_at_any_moment_then_rerun_gives_the_rows_of_a_clean_run() {
    let temp = tempfile::tempdir().unwrap();
    let images = temp.path().join("images");
    write_collection(&images, 0..300);
    let run = |out: &Path| {
        Command::new(DIM_EMBED)
            .args([images.as_os_str(), "--out".as_ref(), out.as_os_str(), "--batch".as_ref(), "8".as_ref()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let clean = temp.path().join("clean");
    assert!(run(&clean).wait().unwrap().success());
    let (clean_rows, clean_vectors) = result_of(&clean);
    assert_eq!(clean_rows.len(), 300);

    // From model loading through embedding and committing to after the end.
    for (attempt, delay_ms) in [20u64, 60, 120, 200, 300, 450, 650, 900, 1300, 2000].into_iter().enumerate() {
        let out = temp.path().join(format!("killed_{attempt}"));
        let mut child = run(&out);
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(run(&out).wait().unwrap().success(), "rerun after a kill at {delay_ms} ms");
        let (rows, vectors) = result_of(&out);
        assert_eq!(rows, clean_rows, "rows after a kill at {delay_ms} ms");
        assert!(
            vectors == clean_vectors,
            "vectors after a kill at {delay_ms} ms differ from the clean run's"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp") || name.ends_with(".spool") || name.contains("journal"))
            .collect();
        assert!(leftovers.is_empty(), "leftovers after a kill at {delay_ms} ms: {leftovers:?}");
    }

    // A rerun over a grown collection, killed midway, then finished: the clean run's rows.
    let grown = temp.path().join("grown");
    write_collection(&images, 300..360);
    let clean_grown = temp.path().join("clean_grown");
    assert!(run(&clean_grown).wait().unwrap().success());
    let (grown_rows, grown_vectors) = result_of(&clean_grown);
    for delay_ms in [150u64, 400] {
        let _ = std::fs::remove_dir_all(&grown);
        std::fs::create_dir_all(&grown).unwrap();
        for name in [EMBEDDINGS_FILE, MANIFEST_FILE, SKIPPED_FILE] {
            std::fs::copy(clean.join(name), grown.join(name)).unwrap();
        }
        let mut child = run(&grown);
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(run(&grown).wait().unwrap().success());
        let (rows, vectors) = result_of(&grown);
        assert_eq!(rows, grown_rows, "grown collection, kill at {delay_ms} ms");
        let floats = |bytes: &[u8]| {
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>()
        };
        let worst = floats(&vectors)
            .iter()
            .zip(floats(&grown_vectors))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert_eq!(vectors.len(), grown_vectors.len());
        assert!(worst < 1e-6, "grown collection, kill at {delay_ms} ms: vectors differ by {worst}");
    }
}

#[test]
fn vectors_that_the_manifest_does_not_describe_are_never_reused() {
    let temp = tempfile::tempdir().unwrap();
    let (first, second) = (temp.path().join("first"), temp.path().join("second"));
    write_collection(&first, 0..20);
    write_collection(&second, 100..120);
    let embed = |images: &Path, out: &Path| {
        let output = dim_embed(&[images.as_os_str(), "--out".as_ref(), out.as_os_str()]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        output
    };
    let (out, other) = (temp.path().join("out"), temp.path().join("other"));
    embed(&first, &out);
    embed(&second, &other);
    let clean = result_of(&out);
    // The state a kill between the renames of an older layout would leave: the vectors of
    // another run under this run's manifest, with the same shape.
    std::fs::copy(other.join(EMBEDDINGS_FILE), out.join(EMBEDDINGS_FILE)).unwrap();
    let output = embed(&first, &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not reused") && stderr.contains("sha256"), "{stderr}");
    assert_eq!(result_of(&out), clean);
}
