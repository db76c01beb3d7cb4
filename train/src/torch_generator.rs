//! A turn-taking lock for unit tests: libtorch's random generator is global to the process and
//! the test harness runs tests on parallel threads, so a test that seeds it and expects its
//! numbers must not share it with another test drawing from it at the same time. `cargo xtask
//! test` runs dim-train's tests on one thread for the same reason (not every test that draws
//! takes this lock); the lock keeps the seeded tests apart under a plain `cargo test`.

use std::sync::{Mutex, MutexGuard};

static GENERATOR: Mutex<()> = Mutex::new(());

/// Holds the generator until the guard drops (a test that panicked while holding it leaves it
/// usable).
pub(crate) fn exclusive() -> MutexGuard<'static, ()> {
    GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
