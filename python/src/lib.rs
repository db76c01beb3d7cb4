//! `dim_toolkit._native`, the compiled half of the Python package: [`embedding`] wraps the
//! embedder (files and numpy images in, numpy vectors out), [`search`] the index (build, open,
//! search, copy), [`jobs`] the folder-level jobs that write what `dim-embed` and `dim-search
//! build` write, and [`errors`] turns the library's errors into the package's exceptions. The
//! Python side (`python/py/dim_toolkit`) is the public API; this module is its engine.

mod embedding;
mod errors;
mod jobs;
mod search;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", dim_models::TOOLKIT_VERSION)?;
    module.add_class::<embedding::NativeEmbedder>()?;
    module.add_class::<search::NativeIndex>()?;
    module.add_function(wrap_pyfunction!(search::build_index_from_vectors, module)?)?;
    module.add_function(wrap_pyfunction!(search::copy_index, module)?)?;
    module.add_function(wrap_pyfunction!(jobs::embed_folder, module)?)?;
    module.add_function(wrap_pyfunction!(jobs::build_index, module)?)?;
    module.add_function(wrap_pyfunction!(onnx_runtime_library, module)?)?;
    Ok(())
}

/// The ONNX Runtime library the package loads (`ORT_DYLIB_PATH`, which the package sets from
/// the installed `onnxruntime` wheel before importing this module).
#[pyfunction]
fn onnx_runtime_library() -> Option<std::path::PathBuf> {
    dim_infer::runtime::library_path()
}
