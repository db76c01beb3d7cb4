//! The installed-binary check: `cargo install` dim-embed into a scratch root, run it from a
//! directory outside the repository with an empty cache and no `--model`, and compare its
//! vectors with the repository build's on the shipped model file. It shows that the default model
//! travels inside the binary rather than being found through the source tree.

use crate::environment::run_checked;
use std::fs;
use std::path::Path;
use std::process::Command;

/// Installs dim-embed from `root` (reusing the debug build in `root/target`) and checks it.
pub fn check(root: &Path) -> Result<(), String> {
    let target = root.join("target");
    let install_root = target.join("installed");
    let _ = fs::remove_dir_all(&install_root);
    eprintln!("==> cargo install --path infer --bin dim-embed (debug, into {})", install_root.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_checked(
        Command::new(cargo)
            .args(["install", "--quiet", "--locked", "--debug", "--bin", "dim-embed", "--path"])
            .arg(root.join("infer"))
            .arg("--root")
            .arg(&install_root)
            .env("CARGO_TARGET_DIR", &target),
        "cargo install could not install dim-embed",
    )?;

    let scratch = std::env::temp_dir().join(format!("dim-installed-check-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    let images = scratch.join("images");
    fs::create_dir_all(&images).map_err(|e| format!("cannot create {}: {e}", images.display()))?;
    // Three 28x28 grey gradients as binary PGM (a header and the bytes; dim-embed reads it).
    for shade in [40u8, 120, 220] {
        let mut pgm = b"P5\n28 28\n255\n".to_vec();
        pgm.extend((0..28u32 * 28).map(|i| shade.wrapping_add((i % 28 * 7 + i / 28 * 3) as u8)));
        let path = images.join(format!("shade-{shade}.pgm"));
        fs::write(&path, pgm).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let result = compare(root, &install_root.join("bin").join("dim-embed"), &scratch);
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// Runs the installed binary without `--model` and the repository's with the model file, and
/// compares what they wrote.
fn compare(root: &Path, installed: &Path, scratch: &Path) -> Result<(), String> {
    let cache = scratch.join("cache");
    run_checked(
        Command::new(installed)
            .args(["images", "--out", "installed", "--threads", "1"])
            .current_dir(scratch)
            .env("XDG_CACHE_HOME", &cache)
            .env_remove("ORT_DYLIB_PATH"),
        "the installed dim-embed failed outside the repository",
    )?;
    run_checked(
        Command::new(root.join("target").join("debug").join("dim-embed"))
            .arg(scratch.join("images"))
            .arg("--out")
            .arg(scratch.join("repository"))
            .arg("--model")
            .arg(root.join("models").join("fashion-mnist-cross-view").join("model.onnx"))
            .args(["--threads", "1"]),
        "the repository's dim-embed failed",
    )?;
    let read = |dir: &str| {
        let path = scratch.join(dir).join("embeddings.npy");
        fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    if read("installed")? != read("repository")? {
        return Err(
            "the installed dim-embed's default model gives other vectors than the shipped model".into()
        );
    }
    let copies = fs::read_dir(cache.join("dim-toolkit").join("models")).map(|dir| dir.count()).unwrap_or(0);
    if copies != 1 {
        return Err(format!(
            "expected the shipped model written once under {}, found {copies}",
            cache.display()
        ));
    }
    eprintln!(
        "    the installed dim-embed, run from {}, gives the shipped model's vectors",
        scratch.display()
    );
    Ok(())
}
