//! The emulated NVMe controller under a real driver (issue 24): an unmodified QEMU under
//! `type1 exec` assigns it to a Linux guest with `-device vfio-pci,host=0000:00:06.0`, and the
//! guest kernel's own `nvme` driver binds it and gives `/dev/nvme0n1`. The guest writes a
//! 64 MiB pattern with `O_DIRECT` and reads it back (`tests/guest/nvme.c`); the function is
//! unplugged and plugged again from QEMU's monitor and the guest reads and writes again; a
//! second boot finds the data. The trace tells the series' five-step story for the NVMe
//! function as `guest.rs` does for the DMA engine.
//!
//! The machine is a file of the test's (`TYPE1_MACHINE`): the coherent DMA engine in group 0
//! (it holds the container across the unplug), the NVMe controller in group 2 behind the unit
//! without snoop control, its namespace a 128 MiB file in the test's temporary directory.

mod common;
use common::guest::*;
use common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MACHINE: &str = "[[unit]]
id = 0
ops = 1
snoop_control = true
[[unit]]
id = 1
ops = 1
snoop_control = false
[[group]]
id = 0
unit = 0
devices = [\"0000:00:04.0\"]
[[group]]
id = 2
unit = 1
devices = [\"0000:00:06.0\"]
[[nvme]]
device = \"0000:00:06.0\"
path = \"NSPATH\"
size = 134217728
";

/// Shell lines that wait for the namespace to appear (`!`: to go).
fn wait_line(gone: bool) -> String {
    let test = if gone { "-e" } else { "! -e" };
    format!("i=0; while [ {test} /dev/nvme0n1 ] && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done\n")
}

/// The initramfs of `scripts/guest.sh` with `/init` (running `script` after mounting proc,
/// sysfs and devtmpfs) and `/nvme` appended.
fn initrd(base: &str, prog: &Path, script: &str, out: &Path) {
    let init = format!(
        "#!/bin/sh\nmount -t proc proc /proc\nmount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\necho type1-guest-up\n{}{script}",
        wait_line(false)
    );
    let mut img = std::fs::read(base).expect("read the guest initramfs");
    pad4(&mut img);
    let nvme = std::fs::read(prog).expect("read the guest program");
    img.extend_from_slice(&cpio(&[
        ("init", 0o755, init.as_bytes()),
        ("nvme", 0o755, &nvme),
    ]));
    std::fs::write(out, img).expect("write the initramfs");
}

/// `type1 exec` of QEMU with the DMA engine and, behind a PCIe root port, the NVMe function;
/// serial to `serial`, the monitor on `mon`.
fn qemu(lib: &Path, dir: &Path, kernel: &str, initrd: &Path) -> Command {
    let mut cmd = Command::new(type1_exe());
    cmd.env("TYPE1_MACHINE", dir.join("machine.toml"))
        .args(["exec", "--library", lib.to_str().unwrap()])
        .arg("--trace")
        .arg(dir.join("trace.jsonl"))
        .args([
            "--",
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            "tcg",
        ])
        .args(["-m", "256", "-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("serial.txt").display()))
        .arg("-monitor")
        .arg(format!(
            "unix:{},server,nowait",
            dir.join("mon.sock").display()
        ))
        .args(["-kernel", kernel, "-initrd"])
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1"])
        .args(["-device", "vfio-pci,host=0000:00:04.0,id=d0"])
        .args(["-device", "pcie-root-port,id=rp1,chassis=1"])
        .args(["-device", "vfio-pci,host=0000:00:06.0,bus=rp1,id=nv0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = tmp(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_guests_own_nvme_driver_keeps_its_data_across_a_replug_and_a_second_boot() {
    let Some(lib) = library() else { return };
    let Some(prog) = compile_guest("nvme") else {
        return;
    };
    let Some((kernel, base)) = guest_image() else {
        return;
    };
    let dir = fresh_dir("nvme-guest");
    let ns = dir.join("ns.img");
    std::fs::write(
        dir.join("machine.toml"),
        MACHINE.replace("NSPATH", ns.to_str().unwrap()),
    )
    .unwrap();
    let serial = dir.join("serial.txt");
    let trace = dir.join("trace.jsonl");
    let serial_text = || std::fs::read_to_string(&serial).unwrap_or_default();

    // First boot: write, then the replug, then read and write again.
    let first = format!(
        "/nvme write 64 7\necho nvme-pass-1\n{}echo nvme-gone\n{}echo nvme-back\n\
         /nvme verify 64 7\nNVME_OFF=64 /nvme write 8 9\necho nvme-pass-2\n\
         while true; do sleep 1; done\n",
        wait_line(true),
        wait_line(false)
    );
    let img1 = dir.join("initrd1.img");
    initrd(&base, &prog, &first, &img1);
    let mut q = qemu(&lib, &dir, &kernel, &img1)
        .spawn()
        .expect("type1 exec runs");
    let mut step = |what: &str, ok: bool| {
        if !ok {
            let _ = q.kill();
            panic!(
                "{what}\nserial:\n{}\ntrace tail: {:?}",
                serial_text(),
                events(&trace).iter().rev().take(5).collect::<Vec<_>>()
            );
        }
    };
    step(
        "the guest boots",
        wait_for(180, || serial_text().contains("type1-guest-up")),
    );
    step(
        "the guest's nvme driver binds the function and the pattern reads back",
        wait_for(600, || {
            serial_text().contains("nvme-pass-1") || serial_text().contains("nvme FAIL")
        }) && serial_text().contains("nvme ok write 64"),
    );
    let mut mon = None;
    step(
        "the monitor listens",
        wait_for(30, || {
            mon = std::os::unix::net::UnixStream::connect(dir.join("mon.sock")).ok();
            mon.is_some()
        }),
    );
    let mut mon = mon.unwrap();
    mon.write_all(b"device_del nv0\n").unwrap();
    step(
        "device_del removes the namespace from the guest",
        wait_for(120, || serial_text().contains("nvme-gone")),
    );
    step(
        "and detaches group 2",
        wait_for(60, || {
            events(&trace)
                .iter()
                .any(|v| v["ev"] == "detach" && v["group"] == 2)
        }),
    );
    mon.write_all(b"device_add vfio-pci,host=0000:00:06.0,bus=rp1,id=nv1\n")
        .unwrap();
    step(
        "after device_add the data is there and writes work again",
        wait_for(600, || {
            serial_text().contains("nvme-pass-2") || serial_text().contains("nvme FAIL")
        }) && serial_text().contains("nvme ok verify 64")
            && serial_text().contains("nvme ok write 8"),
    );
    mon.write_all(b"quit\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while q.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = match q.try_wait().unwrap() {
        Some(_) => q.wait_with_output().unwrap(),
        None => {
            let _ = q.kill();
            panic!("QEMU did not quit");
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The story, in the trace's order, for group 2.
    let evs = events(&trace);
    let (_, end2) = assert_series_story(&evs, 2);
    let nvme_dma = |v: &serde_json::Value| v["ev"] == "dma" && v["device"] == "0000:00:06.0";
    assert!(
        evs.iter()
            .any(|v| nvme_dma(v) && v["snoop"] == false && v["dir"] == "write"),
        "the controller's transfers are no-snoop in the non-coherent domain"
    );
    assert!(
        evs[end2..].iter().any(nvme_dma),
        "the replugged controller moves data"
    );
    assert!(
        !evs.iter().any(|v| v["ev"] == "fault"),
        "a well-behaved driver causes no fault"
    );

    // Second boot: the data is in the file.
    let second_boot = "/nvme verify 64 7\nNVME_OFF=64 /nvme verify 8 9\npoweroff -f\n";
    let img2 = dir.join("initrd2.img");
    initrd(&base, &prog, second_boot, &img2);
    let _ = std::fs::remove_file(&serial);
    let out = output_within(qemu(&lib, &dir, &kernel, &img2), 600)
        .expect("the second boot powers off within 600 s");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let text = serial_text();
    assert!(
        text.contains("nvme ok verify 64") && text.contains("nvme ok verify 8"),
        "the second boot finds both patterns\n{text}"
    );
}

/// A hostile driver in the guest (`tests/guest/nvme_hostile.c`): with the nvme driver unbound
/// it writes random values into every register and doorbell, absurd queue sizes, random
/// commands with PRPs it may own or that lie beyond guest RAM; the controller answers with
/// errors or `CSTS.CFS`, QEMU stays up, and after a function reset the guest's own driver
/// brings the controller back and I/O works.
#[test]
fn a_hostile_guest_driver_gets_errors_or_cfs_and_a_reset_recovers_the_controller() {
    let Some(lib) = library() else { return };
    let Some(prog) = compile_guest("nvme") else {
        return;
    };
    let Some(hostile) = compile_guest("nvme_hostile") else {
        return;
    };
    let Some((kernel, base)) = guest_image() else {
        return;
    };
    let dir = fresh_dir("nvme-hostile");
    std::fs::write(
        dir.join("machine.toml"),
        MACHINE.replace("NSPATH", dir.join("ns.img").to_str().unwrap()),
    )
    .unwrap();
    let script = "/nvme_hostile\n/nvme write 8 5\npoweroff -f\n";
    let init = format!(
        "#!/bin/sh\nmount -t proc proc /proc\nmount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\necho type1-guest-up\n{}{script}",
        wait_line(false)
    );
    let mut img = std::fs::read(&base).expect("read the guest initramfs");
    pad4(&mut img);
    let (p, h) = (
        std::fs::read(&prog).unwrap(),
        std::fs::read(&hostile).unwrap(),
    );
    img.extend_from_slice(&cpio(&[
        ("init", 0o755, init.as_bytes()),
        ("nvme", 0o755, &p),
        ("nvme_hostile", 0o755, &h),
    ]));
    let initrd = dir.join("initrd.img");
    std::fs::write(&initrd, img).unwrap();
    let out = output_within(qemu(&lib, &dir, &kernel, &initrd), 600)
        .expect("the guest powers off within 600 s");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let serial = std::fs::read_to_string(dir.join("serial.txt")).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(0),
        "QEMU stays up\n{serial}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        serial.contains("unreachable admin queue -> CFS"),
        "the known outcome\n{serial}"
    );
    assert!(serial.contains("nvme-hostile ok"), "{serial}");
    assert!(
        serial.contains("nvme ok write 8"),
        "I/O works after the reset\n{serial}"
    );
    let evs = events(&dir.join("trace.jsonl"));
    assert!(
        evs.iter()
            .any(|v| v["ev"] == "fault" && v["source"] == "nvme"),
        "the controller's fatal status is in the trace"
    );
    assert!(
        evs.iter()
            .any(|v| v["ev"] == "op" && v["op"] == "DEVICE_RESET"),
        "the guest's reset reached the device"
    );
}
