//! Helpers shared by dim-train's integration tests: turn-taking on libtorch's generator and the
//! run options of a quiet CPU run.

use dim_train::data::CachePolicy;
use dim_train::fit::trainer::RunOptions;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use tch::Device;

/// libtorch's random generator is global to the process and the test harness runs tests on
/// parallel threads, so runs that must be reproducible take turns.
static TORCH_GENERATOR: Mutex<()> = Mutex::new(());

pub fn exclusive_torch() -> MutexGuard<'static, ()> {
    TORCH_GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A run on the CPU into `dir`, without progress output, channels-last, no retrieval check.
pub fn options(dir: &Path) -> RunOptions {
    RunOptions {
        out_dir: dir.to_path_buf(),
        device: Device::Cpu,
        stop: Arc::new(AtomicBool::new(false)),
        progress: false,
        channels_last: true,
        decoded_cache: CachePolicy::Auto,
        data_on_device: false,
        retrieval: None,
    }
}
