//! Issue 23: `cargo install --path crates/cli` into an empty root gives a `type1` whose `exec`
//! runs an unmodified VFIO program with nothing else installed: the release build carries the
//! LD_PRELOAD library and the broker (`build.rs`, `src/embedded.rs`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn an_installed_type1_runs_exec_with_nothing_else_installed() {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("install-test");
    let _ = std::fs::remove_dir_all(&tmp);
    let root = tmp.join("root");
    std::fs::create_dir_all(&root).unwrap();
    // Its own target directory, kept between runs (a later run rebuilds only what changed).
    let target = repo().join("target/install-test");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["install", "--quiet", "--path"])
        .arg(repo().join("crates/cli"))
        .arg("--root")
        .arg(&root)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("TYPE1_EMBED")
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The root holds the binary and cargo's bookkeeping, no library or broker.
    let bin: Vec<String> = std::fs::read_dir(root.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(bin, ["type1"], "{bin:?}");

    let flow = tmp.join("flow");
    match Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&flow)
        .arg(repo().join("tests/c/flow.c"))
        .status()
    {
        Ok(s) => assert!(s.success(), "gcc failed on tests/c/flow.c"),
        Err(_) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "gcc is required under CI=true: apt-get install gcc"
            );
            eprintln!("skipped: no gcc");
            return;
        }
    }
    // A clean environment: no cargo, no workspace, a temporary directory of its own.
    let scratch = tmp.join("tmpdir");
    std::fs::create_dir_all(&scratch).unwrap();
    let out = Command::new(root.join("bin/type1"))
        .args(["exec", "--"])
        .arg(&flow)
        .current_dir(&tmp)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &tmp)
        .env("TMPDIR", &scratch)
        .output()
        .expect("the installed type1 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("flow ok"), "{stdout}{stderr}");
    assert!(stderr.contains("exited with exit status: 0"), "{stderr}");
    assert!(
        stderr.contains("map 1") && stderr.contains("unpin 1"),
        "{stderr}"
    );
    // The library and broker it wrote out for the run are gone; the trace stays.
    let left: Vec<PathBuf> = walk(&scratch);
    assert!(
        left.iter()
            .all(|p| p.file_name().is_some_and(|n| n == "trace.jsonl")),
        "{left:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}
