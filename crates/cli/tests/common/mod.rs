//! Helpers shared by the `type1` integration tests: the binary, the library it preloads, what
//! to do when a tool is missing, and running a child with a deadline.

#![allow(dead_code)] // each test file uses its own subset

pub mod guest;

use std::{
    path::PathBuf,
    process::{Command, Output},
};

/// The `type1` binary under test.
pub fn type1_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_type1"))
}

/// Passes (skips) a test that cannot run for want of `what`, saying so; under `CI=true` fails
/// it instead, naming what to install.
pub fn missing(what: &str, install: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} is required under CI=true: {install}"
    );
    eprintln!("skipped: {what} not available ({install})");
}

/// The library `type1 exec` will use (found as it finds it).
pub fn library() -> Option<PathBuf> {
    let lib = type1_exec::find_library_near(&type1_exe());
    if lib.is_none() {
        missing(
            "libtype1_preload.so",
            "cargo test --workspace or cargo build builds it",
        );
    }
    // The library starts the broker it finds next to itself; only a workspace build (or
    // `cargo build -p type1-broker`) makes it.
    if lib
        .as_deref()
        .is_some_and(|l| type1_exec::find_broker_near(l).is_none())
    {
        missing(
            "the type1-broker executable next to libtype1_preload.so",
            "cargo test --workspace or cargo build -p type1-broker builds it",
        );
        return None;
    }
    lib
}

/// The count of `flush/<reason>` lines of `type1 exec`'s summary on stderr.
pub fn flush_count(stderr: &str, reason: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("flush/{reason}")))
        .filter_map(|rest| rest.trim().parse::<u64>().ok())
        .sum()
}

/// Runs `cmd` to completion or kills it after `secs` seconds: its output, or `None` on timeout.
pub fn output_within(mut cmd: Command, secs: u64) -> Option<Output> {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Some(child.wait_with_output().expect("output"));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
