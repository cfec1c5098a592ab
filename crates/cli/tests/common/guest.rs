//! The guest of `scripts/guest.sh` for the tests that boot it under QEMU: its kernel and
//! initramfs, static programs and kernel modules built for it, initramfs archives appended to
//! it, and reading a run's serial output and trace as it goes.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::missing;

pub fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// Compiles `tests/guest/NAME.c` statically into the test's temporary directory
/// (`guest-NAME`).
pub fn compile_guest(name: &str) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/guest/{name}.c"));
    let out = tmp(&format!("guest-{name}"));
    // gcc answers the bare name when it has no such file.
    match Command::new("gcc").arg("-print-file-name=libc.a").output() {
        Err(_) => {
            missing("gcc", "apt-get install gcc");
            return None;
        }
        Ok(o) if !Path::new(String::from_utf8_lossy(&o.stdout).trim()).is_absolute() => {
            missing(
                "a static C library (libc.a) for gcc -static",
                "apt-get install libc6-dev",
            );
            return None;
        }
        Ok(_) => {}
    }
    let o = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("gcc runs");
    assert!(
        o.status.success(),
        "gcc -static failed on {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    Some(out)
}

/// QEMU is there, and the guest of `scripts/guest.sh` (built or cached): `(kernel, initrd)`.
pub fn guest_image() -> Option<(String, String)> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        missing("qemu-system-x86_64", "apt-get install qemu-system-x86");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/guest.sh");
    match Command::new("bash").arg(&script).output() {
        Ok(o) if o.status.success() => {
            let paths = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let (k, i) = paths.split_once(' ').expect("two paths");
            Some((k.to_string(), i.to_string()))
        }
        other => {
            missing(
                "a guest kernel from Debian packages",
                &format!("scripts/guest.sh failed: {other:?}"),
            );
            None
        }
    }
}

/// Pads `out` with NULs to a multiple of 4 bytes.
pub fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Appends one entry to a `newc` cpio archive (`out` starts the archive, so offsets in it
/// are offsets in the archive): the "070701" header of 13 hexadecimal fields (inode, mode,
/// uid, gid, nlink, mtime, file size, dev major and minor, rdev major and minor, name size
/// with its NUL, check), the NUL-terminated name padded to 4 bytes, the data padded to 4.
pub fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let size = u32::try_from(data.len()).expect("a file under 4 GiB");
    let namesize = u32::try_from(name.len() + 1).expect("a short name");
    let fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// A `newc` cpio archive of regular files `(name, mode, data)`, with its trailer.
pub fn cpio(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, mode, data)) in files.iter().enumerate() {
        let ino = u32::try_from(i + 1).expect("few files");
        cpio_entry(&mut out, ino, name, 0o100_000 | mode, data);
    }
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// Waits up to `secs` seconds for `done`, checking every 200 ms.
pub fn wait_for(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    done()
}

/// The parsed lines of a trace file, as they are now.
pub fn events(trace: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn is_attach_of(v: &serde_json::Value, group: u64) -> bool {
    v["ev"] == "attach" && v["group"] == group
}

/// Builds the guest kernel module of `tests/guest/kmod` with `scripts/guest-kmod.sh` (against
/// the guest kernel's own headers, from Debian packages): the `.ko` path.
pub fn guest_module(name: &str) -> Option<PathBuf> {
    if Command::new("make").arg("--version").output().is_err() {
        missing(
            "make (to build the guest's test driver)",
            "apt-get install make",
        );
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tmp("guest-kmod");
    let o = Command::new("bash")
        .arg(root.join("scripts/guest-kmod.sh"))
        .arg(root.join("tests/guest/kmod"))
        .arg(&out)
        .output()
        .expect("bash runs");
    assert!(
        o.status.success(),
        "scripts/guest-kmod.sh failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ko = out.join(format!("{name}.ko"));
    assert!(ko.exists(), "no {}", ko.display());
    Some(ko)
}

/// The series' five-step story for group `group` in a trace of a VMM run with a replug
/// (`evs` in order): the first attach is non-coherent and replays with a flush (step 2), the
/// device_del detaches (3), the device_add attaches again and replays without a flush: the
/// flag is sticky (4), and the unpin at the VMM's exit flushes (5). Returns the indices of
/// the second attach and of the end of its SET_CONTAINER.
pub fn assert_series_story(evs: &[serde_json::Value], group: u64) -> (usize, usize) {
    let flush = |v: &serde_json::Value, reason: &str| v["ev"] == "flush" && v["reason"] == reason;
    let ret_after = |from: usize| {
        (from..evs.len())
            .find(|i| evs[*i]["ev"] == "ret" && evs[*i]["op"] == "GROUP_SET_CONTAINER")
            .expect("SET_CONTAINER returns")
    };
    let first = evs.iter().position(|v| is_attach_of(v, group)).unwrap();
    assert_eq!(evs[first]["coherent"], false);
    let end1 = ret_after(first);
    assert!(
        evs[first..end1].iter().any(|v| flush(v, "replay")),
        "step 2: the first non-coherent attach replays with a flush"
    );
    let detach = (end1..evs.len())
        .find(|i| evs[*i]["ev"] == "detach" && evs[*i]["group"] == group)
        .expect("step 3: detach at device_del");
    let second = (detach..evs.len())
        .find(|i| is_attach_of(&evs[*i], group))
        .expect("step 4: attach at device_add");
    let end2 = ret_after(second);
    assert!(
        !evs[second..end2].iter().any(|v| v["ev"] == "flush"),
        "step 4: the flag is sticky, the replug replays without a flush"
    );
    assert!(
        evs[end2..].iter().any(|v| flush(v, "unpin")),
        "step 5: the unpin at the VMM's exit flushes"
    );
    (second, end2)
}
