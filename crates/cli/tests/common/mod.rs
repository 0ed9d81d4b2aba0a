//! Helpers shared by the test binaries that may use the lab (`lab.rs`, `lab_xdp.rs`,
//! `readme.rs`): who may run them, and the lock that keeps them from using the one global lab
//! at the same time.
//!
//! Every test binary compiles this module on its own and uses a subset of it.
#![allow(dead_code)]

pub mod kv;
pub mod lab;

use std::fs::File;

/// The lock every lab test takes; benchmark scripts using the lab should take it too.
pub const TEST_LOCK_PATH: &str = "/tmp/melange-lab-tests.lock";

/// Whether the effective user is root.
pub fn is_root() -> bool {
    melange_sys::testenv::is_root()
}

/// Whether a root-only test should run: yes as root, a failure in CI without root, else a skip.
pub fn root_or_skip() -> bool {
    melange_sys::testenv::root_or_skip("lab test")
}

/// Serializes lab tests across test binaries; released when dropped.
pub fn test_lock() -> File {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(TEST_LOCK_PATH)
        .expect("the test lock file can be created in /tmp");
    file.lock().expect("locking the lab test lock");
    // The melange processes this test starts (`demo`, `bench`) must not wait for the lock
    // their parent holds.
    std::env::set_var("MELANGE_LAB_LOCK_HELD", "1");
    file
}
