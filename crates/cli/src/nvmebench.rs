//! `type1 bench --workloads nvme`: block I/O in a Linux guest on the emulated NVMe controller,
//! against QEMU's own emulated NVMe (`-device nvme`) as the anchor, in one run.
//!
//! The same guest (`scripts/guest.sh`, with `tests/guest/nvme.c` built static and appended to
//! its initramfs) boots twice per round: once under `type1 exec` with the controller assigned
//! (`-device vfio-pci,host=0000:00:06.0`, the machine of [`MACHINE`]), once plainly with
//! `-device nvme` on a raw drive. Both read the same namespace file, filled beforehand (so
//! both read from the host's page cache). The guest times 4 KiB `O_DIRECT` random reads and
//! 1 MiB sequential reads; rounds interleave the two, and the medians are reported with their
//! ratio. Source tree only (the guest's script and program live there).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::guest::guest_image;
use crate::model::median;

/// The machine of the assigned run: the controller alone, behind the unit without snoop
/// control, its namespace `NSPATH`.
const MACHINE: &str = "[[unit]]\nid = 0\nops = 1\nsnoop_control = false\n\
                       [[group]]\nid = 2\nunit = 0\ndevices = [\"0000:00:06.0\"]\n\
                       [[nvme]]\ndevice = \"0000:00:06.0\"\npath = \"NSPATH\"\n";

/// Namespace size.
const NS_BYTES: u64 = 256 << 20;
/// Rounds (each boots both guests).
pub(crate) const ROUNDS: usize = 3;
/// Seconds of each of the guest's two measurements.
const SECS: u32 = 4;

/// One configuration's medians.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct NvmeFigures {
    /// 4 KiB random reads per second.
    pub iops: f64,
    /// 1 MiB sequential reads, MB/s.
    pub mbps: f64,
}

/// The result: ours, QEMU's, and ours / QEMU's.
#[derive(Clone, Debug, Serialize)]
pub struct NvmeBench {
    /// Rounds of each.
    pub rounds: usize,
    /// Seconds of each measurement in the guest.
    pub secs: u32,
    /// The emulated controller through `/dev/vfio` (`type1 exec`, vfio-pci).
    pub assigned: NvmeFigures,
    /// QEMU's emulated NVMe.
    pub qemu_nvme: NvmeFigures,
    /// `assigned.iops / qemu_nvme.iops`.
    pub iops_ratio: f64,
    /// `assigned.mbps / qemu_nvme.mbps`.
    pub mbps_ratio: f64,
    /// Every round's figures, assigned then QEMU's.
    pub samples: Vec<(NvmeFigures, NvmeFigures)>,
}

/// Pads `out` with NULs to a multiple of 4 bytes.
fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Appends regular files `(name, mode, data)` to `out` as a `newc` cpio archive with its
/// trailer (Linux unpacks an archive appended to an initramfs after the first).
fn append_cpio(out: &mut Vec<u8>, files: &[(&str, u32, &[u8])]) {
    let trailer: (&str, u32, &[u8]) = ("TRAILER!!!", 0, &[]);
    for (i, (name, mode, data)) in files.iter().chain([&trailer]).enumerate() {
        let mode = if *name == "TRAILER!!!" {
            0
        } else {
            0o100_000 | mode
        };
        let ino = if *name == "TRAILER!!!" {
            0
        } else {
            i as u32 + 1
        };
        let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(format!("{:08X}{:08X}", name.len() + 1, 0).as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    }
}

/// Builds `tests/guest/nvme.c` statically into `dir`.
fn guest_program(dir: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/guest/nvme.c");
    if !src.exists() {
        bail!("the nvme workload needs tests/guest/nvme.c (run type1 bench from the source tree)");
    }
    let out = dir.join("nvme");
    let o = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .context("cannot run gcc (apt-get install gcc libc6-dev)")?;
    if !o.status.success() {
        bail!(
            "gcc -static {} failed (apt-get install libc6-dev): {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(out)
}

/// `nvme bench iops=N mbps=M` in a serial log.
fn figures(serial: &str) -> Option<NvmeFigures> {
    let line = serial.lines().find(|l| l.starts_with("nvme bench "))?;
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))?
            .parse()
            .ok()
    };
    Some(NvmeFigures {
        iops: field("iops=")?,
        mbps: field("mbps=")?,
    })
}

fn qemu_args(kernel: &str, initrd: &Path, serial: &Path, device: &[String]) -> Vec<String> {
    let mut a: Vec<String> = ["-machine", "q35", "-accel", "tcg", "-m", "256"]
        .into_iter()
        .chain(["-nodefaults", "-display", "none", "-no-reboot"])
        .map(String::from)
        .collect();
    a.extend([
        "-serial".into(),
        format!("file:{}", serial.display()),
        "-kernel".into(),
        kernel.into(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        "console=ttyS0 panic=-1 quiet".into(),
    ]);
    a.extend(device.iter().cloned());
    a
}

/// Runs the workload.
pub fn nvme(bar: &indicatif::ProgressBar) -> Result<NvmeBench> {
    let library = type1_exec::find_library()
        .ok_or_else(|| anyhow!("the nvme workload needs libtype1_preload.so next to type1"))?;
    let (kernel, base) = guest_image()?;
    let dir = type1_exec::private_dir(&std::env::temp_dir())?;
    let prog = guest_program(&dir)?;
    // The namespace, filled, so that both controllers read data from the page cache.
    let ns = dir.join("ns.img");
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i ^ i >> 9) as u8).collect();
    let mut data = Vec::with_capacity(NS_BYTES as usize);
    while (data.len() as u64) < NS_BYTES {
        data.extend_from_slice(&chunk);
    }
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ns).context("cannot create the namespace file")?;
        f.write_all(&data)
            .context("cannot write the namespace file")?;
        // On disk before anything is timed: writeback of the fresh file during a measurement
        // would slow whichever controller it met.
        f.sync_all().context("cannot sync the namespace file")?;
    }
    drop(data);
    let machine = dir.join("machine.toml");
    std::fs::write(
        &machine,
        MACHINE.replace("NSPATH", &ns.display().to_string()),
    )?;
    let init = format!(
        "#!/bin/sh\nmount -t proc proc /proc\nmount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         i=0; while [ ! -e /dev/nvme0n1 ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done\n\
         /nvme bench {SECS}\npoweroff -f\n"
    );
    let mut img = std::fs::read(&base).context("cannot read the guest initramfs")?;
    pad4(&mut img);
    let p = std::fs::read(&prog)?;
    append_cpio(
        &mut img,
        &[("init", 0o755, init.as_bytes()), ("nvme", 0o755, &p)],
    );
    let initrd = dir.join("initrd.img");
    std::fs::write(&initrd, img)?;
    let serial = dir.join("serial.txt");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        bar.set_message(format!("nvme round {}/{ROUNDS}: assigned", round + 1));
        let _ = std::fs::remove_file(&serial);
        let opts = type1_exec::ExecOptions {
            library: library.clone(),
            trace: None,
            policy: Some("seed".into()),
            machine: Some(machine.clone()),
        };
        let dev = ["-device".to_string(), "vfio-pci,host=0000:00:06.0".into()];
        let st = type1_exec::run(
            &opts,
            Path::new("qemu-system-x86_64"),
            &qemu_args(&kernel, &initrd, &serial, &dev),
        )
        .context("cannot run qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
        let log = std::fs::read_to_string(&serial).unwrap_or_default();
        ours.push(
            figures(&log)
                .ok_or_else(|| anyhow!("the assigned guest gave no figures ({st}):\n{log}"))?,
        );
        bar.set_message(format!("nvme round {}/{ROUNDS}: -device nvme", round + 1));
        let _ = std::fs::remove_file(&serial);
        let dev = [
            "-drive".to_string(),
            format!("file={},if=none,id=ns,format=raw", ns.display()),
            "-device".into(),
            "nvme,drive=ns,serial=anchor".into(),
        ];
        let st = std::process::Command::new("qemu-system-x86_64")
            .args(qemu_args(&kernel, &initrd, &serial, &dev))
            .stdin(std::process::Stdio::null())
            .status()
            .context("cannot run qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
        let log = std::fs::read_to_string(&serial).unwrap_or_default();
        theirs.push(
            figures(&log)
                .ok_or_else(|| anyhow!("the -device nvme guest gave no figures ({st}):\n{log}"))?,
        );
        bar.inc(1);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let med = |v: &[NvmeFigures], f: fn(&NvmeFigures) -> f64| {
        median(v.iter().map(|x| (f(x) * 1000.0) as u64).collect()) as f64 / 1000.0
    };
    let assigned = NvmeFigures {
        iops: med(&ours, |f| f.iops),
        mbps: med(&ours, |f| f.mbps),
    };
    let qemu_nvme = NvmeFigures {
        iops: med(&theirs, |f| f.iops),
        mbps: med(&theirs, |f| f.mbps),
    };
    Ok(NvmeBench {
        samples: ours.iter().copied().zip(theirs.iter().copied()).collect(),
        rounds: ROUNDS,
        secs: SECS,
        iops_ratio: assigned.iops / qemu_nvme.iops,
        mbps_ratio: assigned.mbps / qemu_nvme.mbps,
        assigned,
        qemu_nvme,
    })
}

/// The table of the result.
pub fn table(b: &NvmeBench) -> String {
    format!(
        "nvme (guest O_DIRECT reads, medians of {} rounds of {} s each)\n\
         {:<34} {:>12} {:>12}\n\
         {:<34} {:>12.0} {:>12.1}\n\
         {:<34} {:>12.0} {:>12.1}\n\
         {:<34} {:>12.2} {:>12.2}\n",
        b.rounds,
        b.secs,
        "",
        "4K rand IOPS",
        "1M seq MB/s",
        "assigned (vfio-pci, type1 exec)",
        b.assigned.iops,
        b.assigned.mbps,
        "QEMU -device nvme",
        b.qemu_nvme.iops,
        b.qemu_nvme.mbps,
        "ratio (assigned / QEMU)",
        b.iops_ratio,
        b.mbps_ratio
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_the_guests_line() {
        let f = figures("boot\nnvme bench iops=1234 mbps=56.7\n").unwrap();
        assert_eq!((f.iops, f.mbps), (1234.0, 56.7));
        assert!(figures("nvme FAIL open").is_none());
    }

    #[test]
    fn the_appended_archive_is_newc_with_a_trailer() {
        let mut a = Vec::new();
        append_cpio(&mut a, &[("init", 0o755, b"abcde")]);
        assert_eq!(&a[..6], b"070701");
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..121], b"abcde");
        assert_eq!(&a[234..245], b"TRAILER!!!\0");
        assert_eq!(a.len() % 4, 0);
    }
}
