//! Loading the ONNX Runtime shared library: `ORT_DYLIB_PATH` at run time, else the path baked in
//! at build time by `.cargo/config.toml`, so binaries run outside cargo too.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The ONNX Runtime library this process uses.
pub fn library_path() -> Option<PathBuf> {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .or_else(|| option_env!("ORT_DYLIB_PATH").map(PathBuf::from))
}

/// Loads ONNX Runtime and creates its environment once per process; the environment is kept
/// for the life of the process, and every session is built in it.
pub fn ensure_initialised() -> Result<&'static ort::environment::Environment, String> {
    static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let path = library_path().ok_or_else(|| {
                "ONNX Runtime library not configured: run `cargo xtask setup`, or set ORT_DYLIB_PATH \
                 to libonnxruntime.so"
                    .to_string()
            })?;
            if !path.exists() {
                return Err(format!(
                    "ONNX Runtime library {} does not exist: run `cargo xtask setup`, or set \
                     ORT_DYLIB_PATH to libonnxruntime.so",
                    path.display()
                ));
            }
            ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
                .with_name("dim-toolkit")
                .build()
                .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    #[test]
    fn onnx_runtime_loads_from_the_configured_library() {
        super::ensure_initialised().unwrap();
    }
}
