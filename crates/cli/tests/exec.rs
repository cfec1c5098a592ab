//! `type1 exec` end to end: an unmodified C program under the LD_PRELOAD emulation.
//!
//! Builds nothing with cargo: it needs `libtype1_preload.so`, which `cargo test --workspace`
//! leaves under `target/<profile>/deps/` (a cdylib member of the workspace) and `cargo build`
//! next to the `type1` binary; `type1 exec` finds either by itself. Without the library, gcc
//! (for the C programs) or `qemu-system-x86_64` (for the QEMU tests) a test says so and passes,
//! except under `CI=true`, where it fails and names what to install.

mod common;
use common::*;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// Compiles `tests/c/<name>.c` with gcc into the test's temporary directory, as `exec-<as_>`
/// (tests run in parallel: each needs its own executable).
fn compile(name: &str, as_: &str) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/c")
        .join(format!("{name}.c"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("exec-{as_}"));
    match Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => Some(out),
        Ok(s) => panic!("gcc failed on {}: {s}", src.display()),
        Err(_) => {
            missing("gcc", "apt-get install gcc");
            None
        }
    }
}

fn exec(args: &[&str], program: &[&str]) -> Output {
    Command::new(type1_exe())
        .arg("exec")
        .args(args)
        .arg("--")
        .args(program)
        .output()
        .expect("type1 runs")
}

#[test]
fn exec_runs_a_c_program_and_summarizes_its_trace() {
    let Some(_) = library() else { return };
    let Some(prog) = compile("flush", "flush-seed") else {
        return;
    };
    let trace = Path::new(env!("CARGO_TARGET_TMPDIR")).join("exec-flush.jsonl");
    let out = exec(
        &["--trace", trace.to_str().unwrap()],
        &[prog.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("flush ok"));
    assert!(stderr.contains("exited with exit status: 0"), "{stderr}");
    assert!(flush_count(&stderr, "map") > 0, "{stderr}");
    assert!(flush_count(&stderr, "unpin") > 0, "{stderr}");
    assert!(!stderr.contains("error "), "no failed operation\n{stderr}");
    // The summary counts what the trace file holds.
    let text = std::fs::read_to_string(&trace).expect("trace written");
    let maps = text
        .lines()
        .filter(|l| l.contains(r#""ev":"map""#))
        .count()
        .to_string();
    assert!(
        stderr
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["map", maps.as_str()]),
        "{stderr}"
    );
}

#[test]
fn exec_with_policy_none_does_not_flush() {
    let Some(_) = library() else { return };
    let Some(prog) = compile("flush", "flush-none") else {
        return;
    };
    let out = exec(&["--policy", "none"], &[prog.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        flush_count(&stderr, "map") + flush_count(&stderr, "unpin"),
        0,
        "{stderr}"
    );
    assert!(stderr.contains("unpin"), "{stderr}");
    // Issue 14: the default trace is in a fresh private directory, itself private, so that no
    // other user can plant a link at its name or read the trace.
    let path = stderr
        .lines()
        .find_map(|l| l.split("; trace ").nth(1))
        .map(PathBuf::from)
        .expect("the trace path is printed");
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap();
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert!(std::fs::symlink_metadata(dir).unwrap().is_dir());
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    assert_eq!(mode(&path), 0o600, "{}", path.display());
    assert!(
        dir.file_name().unwrap().to_string_lossy().len() > "type1-exec-".len() + 8,
        "an unpredictable name: {}",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn exec_finds_the_library_and_passes_the_exit_code_through() {
    let Some(_) = library() else { return };
    let out = exec(&[], &["/bin/sh", "-c", "exit 3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("exited with exit status: 3"), "{stderr}");
}

/// Runs an unmodified QEMU (`qemu-system-x86_64`, Debian's 7.2) with `-device vfio-pci` under
/// `type1 exec`, paused (`-S`), and quits it from the monitor. QEMU maps guest RAM at start-up
/// and never unmaps at quit: the process-exit release must unmap, flush and unpin.
fn qemu(host: &str, trace: &Path) -> Option<Output> {
    use std::io::Write;
    library()?;
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        missing("qemu-system-x86_64", "apt-get install qemu-system-x86");
        return None;
    }
    let mut child = Command::new(type1_exe())
        .args(["exec", "--trace", trace.to_str().unwrap(), "--"])
        .args([
            "qemu-system-x86_64",
            "-M",
            "q35",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-S", "-monitor", "stdio", "-device"])
        .arg(format!("vfio-pci,host={host}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("type1 runs");
    child.stdin.take().unwrap().write_all(b"quit\n").unwrap();
    Some(child.wait_with_output().unwrap())
}

#[test]
fn unmodified_qemu_maps_guest_ram_for_the_noncoherent_device() {
    let trace = Path::new(env!("CARGO_TARGET_TMPDIR")).join("exec-qemu-nc.jsonl");
    let Some(out) = qemu("0000:00:05.0", &trace) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        flush_count(&stderr, "map") > 0,
        "guest RAM flushed before the map\n{stderr}"
    );
    assert_eq!(
        flush_count(&stderr, "map"),
        flush_count(&stderr, "unpin"),
        "every run flushed again before its unpin at exit\n{stderr}"
    );
    let text = std::fs::read_to_string(&trace).expect("trace written");
    assert!(
        text.contains(r#""ev":"attach","group":1"#),
        "group 1 attached"
    );
    assert!(text
        .lines()
        .any(|l| l.contains(r#""ev":"attach""#) && l.contains(r#""coherent":false"#)));
}

#[test]
fn unmodified_qemu_with_the_coherent_device_needs_no_flush() {
    let trace = Path::new(env!("CARGO_TARGET_TMPDIR")).join("exec-qemu-c.jsonl");
    let Some(out) = qemu("0000:00:04.0", &trace) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        flush_count(&stderr, "map") + flush_count(&stderr, "unpin"),
        0,
        "{stderr}"
    );
    assert!(
        stderr.contains("unpin"),
        "guest RAM released at exit\n{stderr}"
    );
}

/// An unmodified QEMU boots a real Linux guest (Debian's cloud kernel, a busybox initramfs
/// built by `scripts/guest.sh`) to poweroff with the non-coherent device assigned: guest RAM is
/// pinned and flushed at map, and every run flushed again at the exit-time unpin.
#[test]
fn unmodified_qemu_boots_a_linux_guest_with_the_device() {
    let Some(lib) = library() else { return };
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        missing("qemu-system-x86_64", "apt-get install qemu-system-x86");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/guest.sh");
    let guest = Command::new("bash").arg(&script).output();
    let paths = match guest {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        other => {
            missing(
                "a guest kernel from Debian packages",
                &format!("scripts/guest.sh failed: {other:?}"),
            );
            return;
        }
    };
    let (kernel, initrd) = paths.split_once(' ').expect("two paths");
    let trace = Path::new(env!("CARGO_TARGET_TMPDIR")).join("exec-qemu-boot.jsonl");
    let mut cmd = Command::new(type1_exe());
    cmd.args(["exec", "--library", lib.to_str().unwrap()])
        .args(["--trace", trace.to_str().unwrap(), "--"])
        .args(["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg"])
        .args([
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-no-reboot", "-kernel", kernel, "-initrd", initrd])
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args(["-device", "vfio-pci,host=0000:00:05.0"]);
    let out = output_within(cmd, 300).expect("the guest boots and powers off within 300 s");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("type1-guest-up"), "{stdout}\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(flush_count(&stderr, "map") > 0, "{stderr}");
    assert_eq!(
        flush_count(&stderr, "map"),
        flush_count(&stderr, "unpin"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&trace).expect("trace written");
    assert!(
        !text.contains(r#""via":"unreachable""#),
        "every unpin flush reached its pages"
    );
}

/// Issue 9 item 7: a statically linked program never loads the library; `type1 exec` says so
/// before it runs, rather than letting the program fail on a missing /dev/vfio unexplained.
#[test]
fn exec_says_when_a_program_is_statically_linked() {
    let Some(_) = library() else { return };
    let src = Path::new(env!("CARGO_TARGET_TMPDIR")).join("static-hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void){puts(\"hi\");return 0;}\n",
    )
    .unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("static-hello");
    match Command::new("gcc")
        .arg("-static")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(_) => {
            missing("a static C library", "apt-get install libc6-dev");
            return;
        }
        Err(_) => {
            missing("gcc", "apt-get install gcc");
            return;
        }
    }
    let r = exec(&[], &[out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("is statically linked: LD_PRELOAD has no effect"),
        "{stderr}"
    );
    let dynamic = compile("flow", "flow-dynamic").expect("gcc works");
    let r = exec(&[], &[dynamic.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&r.stderr).contains("statically linked"));
}

/// Issue 20: `type1 exec` gives a run a broker under a random name and holds it for the
/// whole run: a process that waits until the broker would have gone idle cannot take the
/// name.
#[test]
fn exec_holds_its_brokers_name_for_the_whole_run() {
    let Some(exe) = compile("takename", "takename") else {
        return;
    };
    let out = Command::new(type1_exe())
        .args(["exec", "--"])
        .arg(&exe)
        .env_remove("TYPE1_BROKER")
        .output()
        .expect("type1 exec");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("held"), "{text}");
}
