//! The C programs of `tests/c/`, each compiled with gcc against `<linux/vfio.h>` and run as
//! its own process under `LD_PRELOAD=libtype1_preload.so`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use type1_preload::exec::{find_library, run, summarize, ExecOptions};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compiles `tests/c/<name>.c`; `None` (test skipped) when gcc is absent.
fn compile(name: &str) -> Option<PathBuf> {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let src = repo().join("tests/c").join(format!("{name}.c"));
    let st = Command::new("gcc")
        .args(["-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .status();
    match st {
        Ok(s) if s.success() => Some(out),
        Ok(s) => panic!("gcc failed on {}: {s}", src.display()),
        Err(_) => {
            eprintln!("skipped: no gcc");
            None
        }
    }
}

fn lib() -> PathBuf {
    find_library().expect("libtype1_preload.so is built with the package")
}

/// Runs a compiled program with the library; returns (success, stdout+stderr, trace text).
fn run_preloaded(exe: &Path, trace_name: &str) -> (bool, String, String) {
    let trace = Path::new(env!("CARGO_TARGET_TMPDIR")).join(trace_name);
    let out = Command::new(exe)
        .env("LD_PRELOAD", lib())
        .env("TYPE1_TRACE", &trace)
        .output()
        .expect("run program");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        text,
        std::fs::read_to_string(&trace).unwrap_or_default(),
    )
}

#[test]
fn vfio_rst_flow() {
    let Some(exe) = compile("flow") else { return };
    let (ok, out, trace) = run_preloaded(&exe, "flow.jsonl");
    assert!(ok, "{out}");
    assert!(out.contains("flow ok"));
    let s = summarize(&trace);
    assert_eq!(s.bad_lines, 0);
    assert!(s.events.get("map").copied().unwrap_or(0) >= 1, "{trace}");
    assert_eq!(
        s.flushes.values().sum::<u64>(),
        0,
        "coherent group: no flush\n{trace}"
    );
}

#[test]
fn error_paths_give_exact_errnos() {
    let Some(exe) = compile("errors") else { return };
    let (ok, out, _) = run_preloaded(&exe, "errors.jsonl");
    assert!(ok, "{out}");
    assert!(out.contains("errors ok"));
}

fn lines_with(trace: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<u64> {
    trace
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| pred(v))
        .map(|v| v["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn noncoherent_map_and_unmap_flush_in_order_and_exit_releases() {
    let Some(exe) = compile("flush") else { return };
    let (ok, out, trace) = run_preloaded(&exe, "flush.jsonl");
    assert!(ok, "{out}");
    let ev = |name: &'static str| move |v: &serde_json::Value| v["ev"] == name;
    let flush = |reason: &'static str| {
        move |v: &serde_json::Value| v["ev"] == "flush" && v["reason"] == reason
    };
    let map_flushes = lines_with(&trace, flush("map"));
    let maps = lines_with(&trace, ev("map"));
    let unpin_flushes = lines_with(&trace, flush("unpin"));
    let unpins = lines_with(&trace, ev("unpin"));
    assert!(!map_flushes.is_empty() && !maps.is_empty(), "{trace}");
    assert!(
        map_flushes[0] < maps[0],
        "flush(map) before the first map\n{trace}"
    );
    assert!(!unpin_flushes.is_empty() && !unpins.is_empty(), "{trace}");
    assert!(
        unpin_flushes[0] < unpins[0],
        "flush(unpin) before the first unpin\n{trace}"
    );
    // Both mappings were unpinned: the second one by the exit-time release.
    let unpinned: u64 = trace
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["ev"] == "unpin")
        .map(|v| v["npages"].as_u64().unwrap())
        .sum();
    assert_eq!(unpinned, 32, "{trace}");
    assert!(
        trace.contains("\"GROUP_RELEASE\""),
        "exit released the group\n{trace}"
    );
    assert!(lines_with(&trace, ev("detach")).len() == 1, "{trace}");
}

#[test]
fn policy_none_does_not_flush() {
    let Some(exe) = compile("flush") else { return };
    let trace = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flush-none.jsonl");
    let opts = ExecOptions {
        library: lib(),
        trace: Some(trace.clone()),
        policy: Some("none".into()),
    };
    let st = run(&opts, &exe, &[]).unwrap();
    assert!(st.success());
    let s = summarize(&std::fs::read_to_string(&trace).unwrap());
    assert_eq!(s.flushes.values().sum::<u64>(), 0, "{s}");
    assert!(s.events["unpin"] >= 2);
}
