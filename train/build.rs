//! Makes binaries and test executables that link libtorch find it at run time without
//! `LD_LIBRARY_PATH`, and (feature `cuda`) keeps the link to libtorch_cuda.

fn main() {
    // torch-sys exports the libtorch library directory to crates that depend on it directly.
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    // `--as-needed` would drop libtorch_cuda, which nothing references by symbol, and CUDA would
    // then never be available.
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
