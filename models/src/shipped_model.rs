//! The shipped default model, compiled into every binary that uses it, so that a binary copied
//! or installed anywhere (`cargo install --path infer`) still has it.
//!
//! ONNX Runtime opens models from files, so the first run writes the compiled-in bytes once to
//! [`path`]: `$XDG_CACHE_HOME/dim-toolkit/models/<name>-<version>/model.onnx` (or under
//! `$HOME/.cache`, or the system's temporary directory when neither is set), atomically, and
//! later runs use that file after checking that it still holds the same bytes.

use crate::atomic_file;
use std::io;
use std::path::{Path, PathBuf};

/// The shipped default model's folder under `models/` in the repository.
pub const NAME: &str = "fashion-mnist-cross-view";

/// The ONNX file of `models/fashion-mnist-cross-view/`.
static MODEL_ONNX: &[u8] = include_bytes!("../fashion-mnist-cross-view/model.onnx");

/// Where this binary keeps its copy of the shipped default model (written by [`materialise`]).
pub fn path() -> PathBuf {
    path_under(&cache_root())
}

/// Writes the compiled-in model to [`path`] unless the file there already holds its bytes, and
/// returns the path.
pub fn materialise() -> io::Result<PathBuf> {
    materialise_under(&cache_root())
}

/// `$XDG_CACHE_HOME`, else `$HOME/.cache`, else the temporary directory.
fn cache_root() -> PathBuf {
    let set = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    set("XDG_CACHE_HOME")
        .or_else(|| set("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
}

fn path_under(cache: &Path) -> PathBuf {
    cache
        .join("dim-toolkit")
        .join("models")
        .join(format!("{NAME}-{}", crate::TOOLKIT_VERSION))
        .join("model.onnx")
}

fn materialise_under(cache: &Path) -> io::Result<PathBuf> {
    let path = path_under(cache);
    if std::fs::read(&path).is_ok_and(|existing| existing == MODEL_ONNX) {
        return Ok(path);
    }
    let dir = path.parent().expect("the model path has a folder");
    std::fs::create_dir_all(dir)
        .and_then(|()| atomic_file::write_bytes_atomically(&path, MODEL_ONNX))
        .map_err(|error| {
            let message = format!(
                "cannot write the shipped default model to {}: {error} (pass --model PATH instead)",
                path.display()
            );
            io::Error::new(error.kind(), message)
        })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_bytes_are_the_repository_model_and_are_written_once_then_kept() {
        let repository_copy =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fashion-mnist-cross-view/model.onnx"));
        assert!(repository_copy.expect("the shipped model is in the repository") == MODEL_ONNX);

        let cache = tempfile::tempdir().unwrap();
        let written = materialise_under(cache.path()).unwrap();
        assert!(written.starts_with(cache.path()) && written.ends_with("model.onnx"));
        assert!(std::fs::read(&written).unwrap() == MODEL_ONNX);

        std::fs::write(&written, b"truncated").unwrap();
        assert_eq!(materialise_under(cache.path()).unwrap(), written);
        assert!(std::fs::read(&written).unwrap() == MODEL_ONNX, "a damaged copy is rewritten");
    }
}
