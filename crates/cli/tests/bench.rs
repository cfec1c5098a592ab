//! `type1 bench` as a user runs it (issue 12): a small host and sim run writes the table, the
//! JSON and the plot; a size that does not fit fails before anything is pinned.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

#[test]
fn bench_writes_table_json_and_plot() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (json, plot) = (dir.join("bench.json"), dir.join("bench.svg"));
    let out = Command::new(type1_exe())
        .args([
            "bench",
            "--guest-size",
            "64M",
            "--aperture",
            "16M",
            "--sim-size",
            "8M",
        ])
        .args([
            "--workloads",
            "host,sim",
            "--policies",
            "none,seed",
            "--reps",
            "1",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("type1 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("floors (ns per 4 KiB page): flush clean"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["floor"]["flush_ns_per_page_clean"].as_f64().unwrap() > 0.0);
    assert!(v["floor"]["flush_ns_per_page_dirty"].as_f64().unwrap() > 0.0);
    let rows = v["rows"].as_array().unwrap();
    for platform in ["host", "sim"] {
        for phase in ["map", "unmap", "teardown"] {
            for policy in ["none", "seed"] {
                let r = rows
                    .iter()
                    .find(|r| {
                        r["platform"] == platform && r["phase"] == phase && r["policy"] == policy
                    })
                    .unwrap_or_else(|| panic!("no row {platform} {phase} {policy}: {v}"));
                assert!(r["pages"].as_u64().unwrap() > 0, "{r}");
                assert!(r["ns"].as_u64().unwrap() > 0, "{r}");
                assert!(r["ns_per_page"].as_f64().unwrap() > 0.0, "{r}");
            }
        }
    }
    // The host map covers the guest and the aperture; the unmap, the aperture.
    let host_map = rows
        .iter()
        .find(|r| r["platform"] == "host" && r["phase"] == "map")
        .unwrap();
    assert_eq!(host_map["pages"], (80u64 << 20) / 4096);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("host: ns per 4 KiB page"),
        "{svg}"
    );
}

#[test]
fn bench_refuses_a_size_that_does_not_fit_before_pinning() {
    let out = Command::new(type1_exe())
        .args(["bench", "--guest-size", "64T", "--workloads", "host"])
        .output()
        .expect("type1 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("needs 67109888 MiB of memory to pin"),
        "{stderr}"
    );
    assert!(stderr.contains("available"), "{stderr}");
}

#[test]
fn bench_names_a_bad_argument() {
    let out = Command::new(type1_exe())
        .args(["bench", "--guest-size", "4Q"])
        .output()
        .expect("type1 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--guest-size") && stderr.contains("unknown unit"),
        "{stderr}"
    );
    let out = Command::new(type1_exe())
        .args(["bench", "--policies", "bogus", "--workloads", "sim"])
        .output()
        .expect("type1 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--policies \"bogus\""), "{stderr}");
}
