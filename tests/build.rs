//! Lets the end-to-end test executables, which link libtorch through dim-train, find it at run
//! time without `LD_LIBRARY_PATH` (tch's own rpath does not reach downstream executables).

fn main() {
    // torch-sys exports the libtorch library directory to crates that depend on it directly.
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
