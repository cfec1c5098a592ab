//! End-to-end tests of the `type1` binary, as a user runs it.

use std::process::Command;

fn type1(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_type1"))
        .args(args)
        .output()
        .expect("type1 runs")
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn attack_leaks_without_the_series_and_not_with_it() {
    let none = json(&type1(&["attack", "--policy", "none", "--json"]));
    assert_eq!(none["policy"], "none");
    assert!(none["leaked_bytes"].as_u64().unwrap() > 0, "{none}");
    assert!(
        none["stale_after_unpin_bytes"].as_u64().unwrap() > 0,
        "{none}"
    );
    assert_eq!(none["flushes"], 0);
    let seed = json(&type1(&["attack", "--policy", "seed", "--json"]));
    assert_eq!(seed["leaked_bytes"], 0, "{seed}");
    assert_eq!(seed["stale_after_unpin_bytes"], 0, "{seed}");
    assert!(seed["flushes"].as_u64().unwrap() >= 2, "{seed}");
}

#[test]
fn demo_trace_has_exactly_the_two_flush_episodes() {
    let dir = std::env::temp_dir().join(format!("type1-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("demo.jsonl");
    let out = type1(&["demo", "--trace", trace.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("step 2") && text.contains("FLUSH"), "{text}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut last = 0;
    for l in &lines {
        let s = l["seq"].as_u64().unwrap();
        assert!(s > last, "seq increases");
        last = s;
        assert!(l["ev"].is_string());
    }
    let flushes: Vec<&str> = lines
        .iter()
        .filter(|l| l["ev"] == "flush")
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(flushes, ["replay", "unpin"]);
    // The replay flush precedes the map into the new domain; the unpin flush follows the unmap.
    let pos = |pred: &dyn Fn(&serde_json::Value) -> bool| lines.iter().position(pred).unwrap();
    let replay = pos(&|l| l["ev"] == "flush" && l["reason"] == "replay");
    let attach_nc = pos(&|l| l["ev"] == "attach" && l["coherent"] == false);
    let unpin_flush = pos(&|l| l["ev"] == "flush" && l["reason"] == "unpin");
    let unpin = pos(&|l| l["ev"] == "unpin");
    assert!(attach_nc < replay && replay < unpin_flush && unpin_flush < unpin);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn run_reports_file_and_line_of_a_failure() {
    let dir = std::env::temp_dir().join(format!("type1-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.scn");
    std::fs::write(
        &f,
        "process p\ncontainer c\nattach c 0\nset_iommu c v2\nexpect extension c 4 0\n",
    )
    .unwrap();
    let out = type1(&["run", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad.scn:5:"), "{text}");
    std::fs::write(&f, "process p\nmap c 0x1 zz\n").unwrap();
    let out = type1(&["run", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bad.scn:2:"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unknown_policy_is_a_clear_error() {
    let out = type1(&["attack", "--policy", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}

/// The `type1` binary is not itself interposed: its own reads of `/dev/vfio/*` go to the real
/// file system (where there is no such file here), never to the emulation.
#[test]
fn the_cli_does_its_own_io_for_real() {
    if std::path::Path::new("/dev/vfio/0").exists() {
        return; // a real VFIO host: nothing to show
    }
    let out = type1(&["run", "/dev/vfio/0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read /dev/vfio/0"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PASS"));
}

#[test]
fn check_inside_an_operation_writes_a_content_counterexample_that_replays() {
    let dir = std::env::temp_dir().join(format!("type1-check-inside-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scn = dir.join("ce.scn");
    let out = type1(&[
        "check",
        "--policy",
        "flag-after-map",
        "--dma-inside",
        "--content-only",
        "--mappings",
        "1",
        "--out",
        scn.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = std::fs::read_to_string(&scn).unwrap();
    assert!(text.contains("--dma-inside --content-only"), "{text}");
    assert!(text.contains("_after "), "no access inside: {text}");
    let run = type1(&["run", scn.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        !run.status.success() && stdout.contains("unflushed_unpin"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reader_that_stops_early_ends_the_output_without_a_panic() {
    use std::io::BufRead;
    let files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "scn"))
        .collect();
    assert!(files.len() > 5);
    // Every file 20 times: the run lasts far longer than reading one line and closing.
    let mut child = Command::new(env!("CARGO_BIN_EXE_type1"))
        .arg("run")
        .args(files.iter().cycle().take(files.len() * 20))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The pipe's reading end is closed here, as `| head -1` does.
    assert!(first.starts_with("PASS"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}

/// Issue 21: `demo` and `attack` on the iommufd path, patch 5/5's flushes.
#[test]
fn the_iommufd_path_tells_the_same_stories() {
    let none = json(&type1(&[
        "attack",
        "--iommufd",
        "--policy",
        "none",
        "--json",
    ]));
    assert_eq!(none["via"], "iommufd");
    assert!(none["leaked_bytes"].as_u64().unwrap() > 0, "{none}");
    assert!(
        none["stale_after_unpin_bytes"].as_u64().unwrap() > 0,
        "{none}"
    );
    for p in ["seed", "seed-fixed"] {
        let fixed = json(&type1(&["attack", "--iommufd", "--policy", p, "--json"]));
        assert_eq!(fixed["leaked_bytes"], 0, "{fixed}");
        assert_eq!(fixed["stale_after_unpin_bytes"], 0, "{fixed}");
        assert_eq!(fixed["violations"], serde_json::json!([]), "{fixed}");
    }
    // The demo: the fill of the non-coherent HWPT flushes before its map (and before the
    // device is attached to it); the unmap flushes after the unmap and before the unpin.
    let dir = std::env::temp_dir().join(format!("type1-demo-ifd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("demo.jsonl");
    let out = type1(&["demo", "--iommufd", "--trace", trace.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("flag = true (sticky)"), "{text}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let flushes: Vec<&str> = lines
        .iter()
        .filter(|l| l["ev"] == "flush")
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(flushes, ["map", "unpin"]);
    let pos = |pred: &dyn Fn(&serde_json::Value) -> bool| lines.iter().position(pred).unwrap();
    let fill = pos(&|l| l["ev"] == "flush" && l["reason"] == "map");
    let map_nc = pos(&|l| l["ev"] == "map" && l["domain"] == 2);
    let attach_nc = pos(&|l| l["ev"] == "attach" && l["coherent"] == false);
    let unpin_flush = pos(&|l| l["ev"] == "flush" && l["reason"] == "unpin");
    let unmap = pos(&|l| l["ev"] == "unmap" && l["domain"] == 1);
    let unpin = pos(&|l| l["ev"] == "unpin");
    assert!(fill < map_nc && map_nc < attach_nc, "{lines:?}");
    assert!(unmap < unpin_flush && unpin_flush < unpin, "{lines:?}");
    let _ = std::fs::remove_dir_all(dir);
    // A type1 policy iommufd does not have is a clear error naming the option.
    let out = type1(&["attack", "--iommufd", "--policy", "eager"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--iommufd") && err.contains("eager"), "{err}");
}
