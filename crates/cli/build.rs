//! Carries the LD_PRELOAD library and the broker inside a release `type1`, so that
//! `cargo install --path crates/cli` gives a `type1 exec` that runs with nothing else
//! installed (`src/embedded.rs` writes them out on first use).
//!
//! In a release build (the profile `cargo install` uses) this script builds the package
//! `type1-preload` (the cdylib `libtype1_preload.so`) and the `type1-broker` binary from the
//! same workspace with the same cargo, into a target directory of its own under `OUT_DIR`,
//! and hands their paths to the compiler (`TYPE1_EMBED_LIBRARY`, `TYPE1_EMBED_BROKER`, cfg
//! `type1_embedded`). Debug builds, and `TYPE1_EMBED=0`, embed nothing: `type1` then finds the
//! library next to itself, where a workspace build leaves it. The library cannot be an
//! ordinary dependency: `type1` must not link its interposed symbols.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(type1_embedded)");
    println!("cargo::rerun-if-env-changed=TYPE1_EMBED");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    if !release || env::var("TYPE1_EMBED").as_deref() == Ok("0") {
        return;
    }
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.join("../..");
    let workspace = root.join("Cargo.toml");
    // Everything the library and the broker are built from.
    for dir in ["core", "uapi", "host", "preload", "broker", "machine"] {
        println!(
            "cargo::rerun-if-changed={}",
            root.join("crates").join(dir).display()
        );
    }
    println!(
        "cargo::rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target = out.join("embed-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "type1-preload",
            "-p",
            "type1-broker",
        ])
        .arg("--manifest-path")
        .arg(&workspace)
        .arg("--target-dir")
        .arg(&target)
        // The outer build's target settings are not this one's.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env("TYPE1_EMBED", "0")
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run cargo to build the preload library and the broker: {e}")
        });
    assert!(
        status.success(),
        "building type1-preload for embedding failed ({status}); set TYPE1_EMBED=0 to build \
         type1 without the library inside"
    );
    let built = target.join("release");
    let pair = [
        ("TYPE1_EMBED_LIBRARY", built.join("libtype1_preload.so")),
        ("TYPE1_EMBED_BROKER", built.join("type1-broker")),
    ];
    for (var, path) in &pair {
        assert!(
            Path::new(path).is_file(),
            "{} was not built",
            path.display()
        );
        println!("cargo::rustc-env={var}={}", path.display());
    }
    println!("cargo::rustc-cfg=type1_embedded");
}
