//! The `type1-broker` executable itself. Besides what it checks, this test makes `cargo test
//! --workspace` build the binary (cargo builds a package's binaries for its integration
//! tests), which the preload library starts from next to itself in the tests of other crates.

use std::process::Command;

#[test]
fn the_broker_needs_a_name_and_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_type1-broker"))
        .env_remove("LD_PRELOAD")
        .output()
        .expect("the broker runs");
    assert_eq!(out.status.code(), Some(2), "usage error");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("usage: type1-broker NAME"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
