//! `type1 bench`: the series' cost table (spec F11: map, unmap, teardown, with and without the
//! flush) from four workloads, against the machine's floors measured in the same run.
//!
//! * **host**: a guest of `--guest-size` in the region sizes QEMU's q35 uses (640 KiB, the rest
//!   of the low 2 GiB, and everything above 4 GiB) plus an `--aperture` (a GPU BAR's worth of
//!   memory), mapped into the non-coherent group's domain with real pins (io_uring) and real
//!   CLFLUSHOPT; then the aperture unmapped; then teardown by detaching the last group. The
//!   memory is faulted in once, before (its cost is the `fault-in` floor), and written before
//!   every run so that each starts with dirty lines; `--reps` rounds, medians.
//! * **emulated**: what an unmodified program sees through `/dev/vfio` (`crate::emulated`).
//! * **sim**: the same phases on the simulator, at a size it holds (`--sim-size`, scaled).
//! * **qemu**: an unmodified QEMU boots a small Linux guest (`scripts/guest.sh`) with the
//!   non-coherent device under the emulation and quits, timed as whole processes against the
//!   same boot without the device and with `-mem-prealloc` (median of interleaved rounds);
//!   map, unmap and teardown times come from the last round's trace `ns` stamps.
//!
//! Floors over the host workload's own first buffer: faulting in, `memset`, CLFLUSHOPT with
//! the lines clean and dirty. Output: a table, `--json FILE`, `--plot FILE.svg`.

use std::path::Path;
use std::time::Instant;

pub(crate) use crate::model::{
    gib, median, qemu_regions, row, BenchOpts, Floors, Row, APERTURE_IOVA,
};
use crate::scale::{scale, scale_table};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use type1_core::{Config, Container, GroupId, MapRequest, Platform, UnmapRequest, PAGE_SIZE};
use type1_host::{floor, sys, HostConfig, HostPlatform};

/// The cover letter's ratios (with flush / without), spec F11.
const COVER: [(&str, f64); 3] = [("map", 1.85), ("unmap", 4.36), ("teardown", 3.40)];

/// Parses a size: `4G`, `512M`, `64K`, or bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 4G or 512M)"))?;
    n.checked_mul(mul)
        .filter(|v| *v > 0 && v % PAGE_SIZE == 0)
        .ok_or_else(|| format!("{s:?}: a size must be a positive multiple of 4K"))
}

#[derive(Serialize)]
struct Report<'a> {
    floor: Floors,
    rows: &'a [Row],
    qemu_boot: Option<QemuBoot>,
    /// The nvme workload: guest block I/O on the emulated controller against QEMU's NVMe.
    #[serde(skip_serializing_if = "Option::is_none")]
    nvme: Option<crate::nvmebench::NvmeBench>,
    /// Why a workload did not run, if one did not.
    skipped: Option<String>,
}

/// Whole-process wall time of the qemu workload's boots (medians of interleaved runs).
#[derive(Clone, Debug, Serialize)]
pub struct QemuBoot {
    /// Runs of each kind.
    pub runs: usize,
    /// Without the device, with `-mem-prealloc`, ns.
    pub baseline_ns: u64,
    /// With the device under the emulation, per policy, ns.
    pub policies: Vec<(String, u64)>,
}

/// Boots of each kind the qemu workload times (the median is reported).
const QEMU_RUNS: usize = 5;

/// Map, unmap (the aperture) and teardown of one policy on `p`, over memory at `base` (guest)
/// and `ap` (aperture): nanoseconds of each phase.
fn phases<P: Platform>(
    p: &mut P,
    policy: &str,
    guest: u64,
    base: u64,
    aperture: u64,
    ap: u64,
) -> Result<[u64; 3]> {
    let mut c = Container::new(Config::default(), policy).map_err(|e| anyhow!("{e}"))?;
    c.add_group(p, GroupId(1))
        .map_err(|e| anyhow!("group 1: {e}"))?;
    c.set_iommu(p, type1_core::IommuType::Type1v2)
        .map_err(|e| anyhow!("SET_IOMMU: {e}"))?;
    let t1 = c.iommu_mut().map_err(|e| anyhow!("{e}"))?;
    let mut regions: Vec<(u64, u64, u64)> = qemu_regions(guest)
        .into_iter()
        .map(|(iova, off, size)| (iova, base + off, size))
        .collect();
    regions.push((APERTURE_IOVA, ap, aperture));
    let t = Instant::now();
    for (iova, vaddr, size) in &regions {
        let r = MapRequest {
            flags: type1_core::MapFlags::RW,
            vaddr: *vaddr,
            iova: *iova,
            size: *size,
        };
        t1.map_dma(p, r)
            .map_err(|e| anyhow!("MAP_DMA iova 0x{iova:x} size 0x{size:x}: {e}"))?;
    }
    let map = t.elapsed().as_nanos() as u64;
    let t = Instant::now();
    let un = UnmapRequest {
        flags: type1_core::UnmapFlags::default(),
        iova: APERTURE_IOVA,
        size: aperture,
        bitmap: None,
    };
    t1.unmap_dma(p, un)
        .map_err(|e| anyhow!("UNMAP_DMA of the aperture: {e}"))?;
    let unmap = t.elapsed().as_nanos() as u64;
    let t = Instant::now();
    c.remove_group(p, GroupId(1))
        .map_err(|e| anyhow!("detach: {e}"))?;
    let teardown = t.elapsed().as_nanos() as u64;
    c.close(p);
    Ok([map, unmap, teardown])
}

/// A size that does not fit: a clear error before anything is pinned.
fn check_fits(what: &str, bytes: u64) -> Result<()> {
    let avail = floor::mem_available().unwrap_or(u64::MAX);
    // Room for the floors' second buffer and the rest of the machine.
    if bytes.saturating_add(bytes / 8) > avail {
        bail!(
            "{what} needs {} MiB of memory to pin; this machine has {} MiB available \
             (try a smaller --guest-size / --aperture)",
            bytes >> 20,
            avail >> 20
        );
    }
    if !sys::has_cap_ipc_lock() {
        let limit = sys::memlock_limit_pages().saturating_mul(PAGE_SIZE);
        if bytes > limit {
            bail!(
                "{what} pins {} MiB but RLIMIT_MEMLOCK is {} MiB without CAP_IPC_LOCK \
                 (raise it with `ulimit -l` or run as root)",
                bytes >> 20,
                limit >> 20
            );
        }
    }
    Ok(())
}

fn host(o: &BenchOpts, bar: &indicatif::ProgressBar, rows: &mut Vec<Row>) -> Result<Floors> {
    let total = o.guest + o.aperture;
    check_fits(
        &format!(
            "the host workload (guest {} + aperture {})",
            gib(o.guest),
            gib(o.aperture)
        ),
        total,
    )?;
    let pages = |b: u64| b / PAGE_SIZE;
    let g = sys::AnonMap::aligned(o.guest, 1 << 30).map_err(|e| anyhow!("mmap: {e}"))?;
    let a = sys::AnonMap::aligned(o.aperture, 1 << 30).map_err(|e| anyhow!("mmap: {e}"))?;
    for m in [&g, &a] {
        let _ = sys::madvise(m.addr(), m.len(), libc::MADV_NOHUGEPAGE);
    }
    // Floors over the guest's own bytes. Faulting in is measured once and kept out of the
    // runs (it is the kernel's page zeroing, the same with or without the flush, and the
    // noisiest part of a MAP on a virtual machine): the memory stays faulted in from here on,
    // as a guest's RAM is with -mem-prealloc.
    let fb = floor::Buffer::of(&g);
    bar.set_message("floors");
    let populate = fb.populate();
    floor::Buffer::of(&a).populate();
    let fill = fb.fill();
    let clean = fb.flush_clean();
    let dirty = fb.flush_dirty();
    let n = pages(o.guest) as f64;
    let floors = Floors {
        flush_ns_per_page_clean: clean * 1e9 / n,
        flush_ns_per_page_dirty: dirty * 1e9 / n,
        memset_ns_per_page: fill * 1e9 / n,
        populate_ns_per_page: populate * 1e9 / n,
        cpu_hz: floor::cpu_hz().unwrap_or(0.0),
    };
    bar.inc(1);
    let workload = format!("guest {} + aperture {}", gib(o.guest), gib(o.aperture));
    // One unrecorded run first (a first io_uring, first page-table allocations), then `reps`
    // rounds over the policies, interleaved so that drift in the machine spreads over all.
    // (row label, policy, flush threads): every policy on one core, and `seed` on more.
    let mut variants: Vec<(String, String, usize)> = o
        .policies
        .iter()
        .map(|p| (p.clone(), p.clone(), 1))
        .collect();
    if o.flush_threads > 1 && o.policies.iter().any(|p| p == "seed") {
        let n = o.flush_threads;
        variants.push((format!("seed@{n}cpu"), "seed".into(), n));
    }
    let mut times: Vec<Vec<[u64; 3]>> = vec![Vec::new(); variants.len()];
    let mut order: Vec<(usize, bool)> = vec![(0, false)];
    for _ in 0..o.reps.max(1) {
        order.extend((0..variants.len()).map(|i| (i, true)));
    }
    for (i, record) in order {
        let (label, policy, threads) = &variants[i];
        bar.set_message(format!(
            "host {label}{}",
            if record { "" } else { " (warm-up)" }
        ));
        // Every run starts from the same state: every line written (dirty), as freshly zeroed
        // guest memory is.
        floor::Buffer::of(&g).fill();
        floor::Buffer::of(&a).fill();
        let mut p = HostPlatform::new(HostConfig::default());
        p.set_flush_threads(*threads);
        let t = phases(&mut p, policy, o.guest, g.addr(), o.aperture, a.addr())?;
        if record {
            times[i].push(t);
            if times[i].len() == o.reps.max(1) {
                bar.inc(1);
            }
        }
    }
    for ((policy, ..), t) in variants.iter().zip(times) {
        let m = |k: usize| median(t.iter().map(|x| x[k]).collect());
        rows.push(row("host", &workload, "map", policy, pages(total), m(0)));
        rows.push(row(
            "host",
            &workload,
            "unmap",
            policy,
            pages(o.aperture),
            m(1),
        ));
        rows.push(row(
            "host",
            &workload,
            "teardown",
            policy,
            pages(o.guest),
            m(2),
        ));
    }
    Ok(floors)
}

fn sim(o: &BenchOpts, bar: &indicatif::ProgressBar, rows: &mut Vec<Row>) -> Result<()> {
    // The host workload's shape, scaled to `sim_size`.
    let total = o.guest + o.aperture;
    let scale =
        |b: u64| ((b as u128 * o.sim_size as u128 / total as u128) as u64) & !(PAGE_SIZE - 1);
    let (guest, aperture) = (
        scale(o.guest).max(1 << 20),
        scale(o.aperture).max(PAGE_SIZE),
    );
    let frames = (guest + aperture) / PAGE_SIZE + 4096;
    let workload = format!("guest {} + aperture {} (scaled)", gib(guest), gib(aperture));
    for policy in &o.policies {
        bar.set_message(format!("sim {policy}"));
        // No MMIO window: the default one sits at 4 GiB, inside the larger machines.
        let desc = type1_sim::MachineDesc {
            memory_frames: frames,
            mmio: Vec::new(),
            ..Default::default()
        };
        let mut s = type1_sim::Sim::new(desc)
            .map_err(|e| anyhow!("--sim-size {}: simulator: {e}", gib(o.sim_size)))?;
        let mm = s.create_process("bench");
        // A VMM with CAP_IPC_LOCK, as the host workload runs (the simulator's default limit
        // is a small RLIMIT_MEMLOCK).
        s.set_cap_ipc_lock(mm, true);
        s.set_current(Some(mm));
        let (base, ap) = (1u64 << 32, 1u64 << 36);
        s.mmap_anon(mm, base, guest, true)
            .map_err(|e| anyhow!("sim mmap: {e}"))?;
        s.mmap_anon(mm, ap, aperture, true)
            .map_err(|e| anyhow!("sim mmap: {e}"))?;
        let [m, u, t] = phases(&mut s, policy, guest, base, aperture, ap)?;
        let pages = |b: u64| b / PAGE_SIZE;
        rows.push(row(
            "sim",
            &workload,
            "map",
            policy,
            pages(guest + aperture),
            m,
        ));
        rows.push(row("sim", &workload, "unmap", policy, pages(aperture), u));
        rows.push(row("sim", &workload, "teardown", policy, pages(guest), t));
        bar.inc(1);
    }
    Ok(())
}

fn qemu_args(kernel: &str, initrd: &str, mem: u64, device: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-m",
        &format!("{}M", mem >> 20),
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "null",
        "-no-reboot",
        "-kernel",
        kernel,
        "-initrd",
        initrd,
        "-append",
        "console=ttyS0 panic=-1 quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if device {
        a.extend(["-device".into(), "vfio-pci,host=0000:00:05.0".into()]);
    } else {
        a.push("-mem-prealloc".into());
    }
    a
}

fn qemu(
    o: &BenchOpts,
    bar: &indicatif::ProgressBar,
    rows: &mut Vec<Row>,
) -> Result<Option<QemuBoot>> {
    check_fits(
        &format!("the qemu workload (-m {})", gib(o.qemu_mem)),
        o.qemu_mem,
    )?;
    let has_qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_qemu {
        bail!("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
    }
    let library = type1_exec::find_library()
        .ok_or_else(|| anyhow!("the qemu workload needs libtype1_preload.so next to type1"))?;
    let (kernel, initrd) = crate::guest::guest_image()?;
    let dir = type1_exec::private_dir(&std::env::temp_dir())?;
    let workload = format!("linux boot, -m {}", gib(o.qemu_mem));
    // Whole-process wall time, as a user times it: the boots interleaved (plain, then each
    // policy, QEMU_RUNS rounds) so that drift in the machine spreads over all of them.
    let mut plain = Vec::new();
    let mut walls: Vec<Vec<u64>> = vec![Vec::new(); o.policies.len()];
    for round in 0..QEMU_RUNS {
        bar.set_message(format!(
            "qemu round {}/{QEMU_RUNS}: plain (-mem-prealloc)",
            round + 1
        ));
        let t = Instant::now();
        let st = std::process::Command::new("qemu-system-x86_64")
            .args(qemu_args(&kernel, &initrd, o.qemu_mem, false))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot run qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
        if !st.success() {
            bail!("qemu without the device exited with {st}");
        }
        plain.push(t.elapsed().as_nanos() as u64);
        for (i, policy) in o.policies.iter().enumerate() {
            bar.set_message(format!("qemu round {}/{QEMU_RUNS}: {policy}", round + 1));
            // The last round is traced, for the map, unmap and teardown rows; the others are
            // not (a trace costs time of its own).
            let last = round + 1 == QEMU_RUNS;
            let trace = dir.join(format!("qemu-{policy}.jsonl"));
            let opts = type1_exec::ExecOptions {
                library: library.clone(),
                trace: last.then(|| trace.clone()),
                policy: Some(policy.clone()),
                machine: None,
            };
            let t = Instant::now();
            let st = type1_exec::run(
                &opts,
                Path::new("qemu-system-x86_64"),
                &qemu_args(&kernel, &initrd, o.qemu_mem, true),
            )
            .context("cannot run qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
            if !st.success() {
                bail!("qemu with the device ({policy}) exited with {st}");
            }
            let wall = t.elapsed().as_nanos() as u64;
            if !last {
                walls[i].push(wall);
                continue;
            }
            walls[i].push(wall);
            let text = std::fs::read_to_string(&trace).unwrap_or_default();
            let ph = type1_exec::timeline::phases(&text);
            for (phase, pages, ns) in [
                ("map", ph.map_pages, ph.map_ns),
                ("unmap", ph.unmap_pages, ph.unmap_ns),
                ("teardown", ph.teardown_pages, ph.teardown_ns),
            ] {
                rows.push(row("qemu", &workload, phase, policy, pages, ns));
            }
        }
        bar.inc(1);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Some(QemuBoot {
        runs: QEMU_RUNS,
        baseline_ns: median(plain),
        policies: o
            .policies
            .iter()
            .cloned()
            .zip(walls.into_iter().map(median))
            .collect(),
    }))
}

/// Runs the benchmark and prints its table.
pub fn run(o: &BenchOpts) -> Result<()> {
    if o.scale {
        let rows = scale(o.scale_max)?;
        print!("{}", scale_table(&rows));
        if let Some(path) = &o.json {
            std::fs::write(
                path,
                serde_json::to_vec_pretty(&serde_json::json!({ "scale": rows }))?,
            )
            .with_context(|| format!("cannot write {}", path.display()))?;
        }
        return Ok(());
    }
    for p in &o.policies {
        Container::new(Config::default(), p).map_err(|e| anyhow!("--policies {p:?}: {e}"))?;
    }
    for w in &o.workloads {
        if !matches!(w.as_str(), "host" | "emulated" | "sim" | "qemu" | "nvme") {
            bail!("--workloads {w:?}: expected host, emulated, sim, qemu or nvme");
        }
    }
    let has = |w: &str| o.workloads.iter().any(|x| x == w);
    let multi = o.flush_threads > 1 && o.policies.iter().any(|p| p == "seed");
    // Progress: a step per policy per workload, the host floors (and the multi-core
    // variant), and for qemu a step per round of boots.
    let per_policy = o
        .workloads
        .iter()
        .filter(|w| *w != "qemu" && *w != "nvme")
        .count() as u64;
    let steps = o.policies.len() as u64 * per_policy
        + u64::from(has("host")) * (1 + u64::from(multi))
        + u64::from(has("qemu")) * QEMU_RUNS as u64
        + u64::from(has("nvme")) * crate::nvmebench::ROUNDS as u64;
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    let mut floors = Floors::default();
    if has("host") {
        floors = host(o, &bar, &mut rows)?;
        crate::hostthp::run(o, &bar, &mut rows)?;
    }
    if has("emulated") {
        crate::emulated::run(o, &bar, &mut rows)?;
    }
    if has("sim") {
        sim(o, &bar, &mut rows)?;
    }
    // The qemu workload needs QEMU, the guest and the library; by default (all workloads)
    // a machine without them still gets the host and sim rows, and is told what is missing.
    let mut skipped = None;
    let boot = if has("qemu") {
        let asked_alone = o.workloads.iter().all(|w| w == "qemu");
        match qemu(o, &bar, &mut rows) {
            Ok(b) => b,
            Err(e) if !asked_alone => {
                skipped = Some(format!("qemu workload skipped: {e:#}"));
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let nvme = if has("nvme") {
        Some(crate::nvmebench::nvme(&bar)?)
    } else {
        None
    };
    bar.finish_and_clear();
    if !rows.is_empty() || boot.is_some() {
        print!("{}", table(&floors, &rows, boot.as_ref()));
    }
    if let Some(n) = &nvme {
        print!("{}", crate::nvmebench::table(n));
    }
    if let Some(why) = &skipped {
        eprintln!("type1 bench: {why}");
    }
    if let Some(path) = &o.json {
        let r = Report {
            floor: floors,
            rows: &rows,
            qemu_boot: boot,
            nvme,
            skipped,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&r)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &o.plot {
        crate::plot::bars(path, &floors, &rows)
            .with_context(|| format!("cannot draw {}", path.display()))?;
    }
    Ok(())
}

/// The table: per platform, phase and policy, total time, ns and cycles per page, the ratio
/// to `none` next to the cover letter's, and the flush added per page against the floor.
pub fn table(f: &Floors, rows: &[Row], boot: Option<&QemuBoot>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if f.flush_ns_per_page_clean > 0.0 {
        let _ = writeln!(
            s,
            "floors (ns per 4 KiB page): flush clean {:.0}, flush dirty {:.0}, memset {:.0}, fault-in {:.0}{}",
            f.flush_ns_per_page_clean,
            f.flush_ns_per_page_dirty,
            f.memset_ns_per_page,
            f.populate_ns_per_page,
            if f.cpu_hz > 0.0 {
                format!("; CPU {:.0} MHz", f.cpu_hz / 1e6)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        s,
        "{:8} {:9} {:11} {:>9} {:>11} {:>9} {:>10} {:>7} {:>7} {:>12}",
        "platform",
        "phase",
        "policy",
        "pages",
        "total ms",
        "ns/page",
        "cyc/page",
        "x none",
        "cover",
        "added/floor"
    );
    for r in rows {
        let none = rows
            .iter()
            .find(|x| x.platform == r.platform && x.phase == r.phase && x.policy == "none");
        let ratio = none
            .filter(|n| n.ns > 0)
            .map(|n| format!("{:.2}", r.ns as f64 / n.ns as f64))
            .unwrap_or_else(|| "-".into());
        let cover = COVER
            .iter()
            .find(|(p, _)| *p == r.phase)
            .map(|(_, c)| format!("{c:.2}"))
            .unwrap_or_default();
        // The flush added per page, as a multiple of the dirty-line floor. Not for the
        // simulator: its flush is a model, and under `none` it also records every violation
        // it detects, so the difference says nothing about CLFLUSHOPT.
        let added = match none {
            Some(n)
                if r.platform != "sim"
                    && r.policy != "none"
                    && f.flush_ns_per_page_dirty > 0.0
                    && r.pages > 0 =>
            {
                format!(
                    "{:.2}",
                    (r.ns_per_page - n.ns_per_page) / f.flush_ns_per_page_dirty
                )
            }
            _ => "-".into(),
        };
        let cyc = if f.cpu_hz > 0.0 {
            format!("{:.0}", r.ns_per_page * f.cpu_hz / 1e9)
        } else {
            "-".into()
        };
        let _ = writeln!(
            s,
            "{:8} {:9} {:11} {:>9} {:>11.2} {:>9.0} {:>10} {:>7} {:>7} {:>12}",
            r.platform,
            r.phase,
            r.policy,
            r.pages,
            r.ns as f64 / 1e6,
            r.ns_per_page,
            cyc,
            ratio,
            cover,
            added
        );
    }
    let _ = write!(s, "{}", path_summary(rows));
    if let Some(b) = boot.filter(|b| b.baseline_ns > 0) {
        let _ = writeln!(
            s,
            "qemu boot to poweroff, whole process, median of {} interleaved runs: {:.2} s without the device (-mem-prealloc)",
            b.runs,
            b.baseline_ns as f64 / 1e9
        );
        for (policy, ns) in &b.policies {
            let _ = writeln!(
                s,
                "qemu boot with the device under the emulation, policy {policy}: {:.2} s, {:.2}x",
                *ns as f64 / 1e9,
                *ns as f64 / b.baseline_ns as f64
            );
        }
    }
    s
}

/// What a user sees against the engine, from the `emulated` rows and the `host` rows of the
/// same run: each figure with the ratio it is judged by.
fn path_summary(rows: &[Row]) -> String {
    use std::fmt::Write;
    let find = |platform: &str, phase: &str, policy: &str| {
        rows.iter()
            .find(|r| r.platform == platform && r.phase == phase && r.policy == policy)
    };
    let mut s = String::new();
    if let (Some(e), Some(h)) = (find("emulated", "map", "none"), find("host", "map", "none")) {
        if h.ns_per_page > 0.0 {
            let _ = writeln!(
                s,
                "through /dev/vfio: MAP_DMA (none) {:.1} ns/page, {:.2}x the in-process host row",
                e.ns_per_page,
                e.ns_per_page / h.ns_per_page
            );
        }
    }
    if let Some(f) = find("emulated", "flush-thp", "floor").filter(|f| f.ns > 0) {
        let ratio = |phase: &str, policy: &str| {
            find("emulated", phase, policy).map(|r| r.ns as f64 / f.ns as f64)
        };
        if let Some(r) = ratio("map-thp", "none") {
            let _ = writeln!(s, "through /dev/vfio: MAP_DMA of prefaulted THP (none) {r:.2}x the clean-line flush of its bytes");
        }
        if let Some(r) = ratio("map-thp-iommufd", "none") {
            let _ = writeln!(s, "through /dev/iommu: IOAS_MAP of prefaulted THP (none) {r:.2}x the clean-line flush of its bytes");
        }
        for (phase, dev) in [("map-thp", "/dev/vfio"), ("map-thp-iommufd", "/dev/iommu")] {
            if let (Some(e), Some(h)) =
                (find("emulated", phase, "none"), find("host", phase, "none"))
            {
                if h.ns > 0 {
                    let _ = writeln!(
                        s,
                        "through {dev}: {phase} (none) {:.2}x the same map in process",
                        e.ns as f64 / h.ns as f64
                    );
                }
            }
        }
        for phase in [
            "map-thp",
            "unmap-thp",
            "map-thp-iommufd",
            "unmap-thp-iommufd",
        ] {
            if let (Some(seed), Some(none)) = (ratio(phase, "seed"), ratio(phase, "none")) {
                let dev = if phase.ends_with("iommufd") {
                    "/dev/iommu"
                } else {
                    "/dev/vfio"
                };
                let _ = writeln!(
                    s,
                    "through {dev}: flush seed adds on {phase}: {:.2}x the clean-line flush",
                    seed - none
                );
            }
        }
    }
    for (phase, what) in [
        ("reg-read", "BAR0 register read"),
        ("xfer-4k", "4 KiB transfer"),
    ] {
        if let Some(r) = rows
            .iter()
            .find(|r| r.platform == "emulated" && r.phase == phase)
        {
            let _ = writeln!(
                s,
                "through /dev/vfio: {what} median {:.1} us",
                r.ns as f64 / 1e3
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8192"), Ok(8192));
        assert!(parse_size("1x").unwrap_err().contains("unknown unit"));
        assert!(parse_size("3").unwrap_err().contains("multiple of 4K"));
        assert!(parse_size("big").unwrap_err().contains("not a size"));
    }

    #[test]
    fn qemu_regions_cover_the_guest_like_q35() {
        let r = qemu_regions(4 << 30);
        assert_eq!(r[0], (0, 0, 640 << 10));
        assert_eq!(r[1], (0xc_0000, 0xc_0000, (2 << 30) - 0xc_0000));
        assert_eq!(r[2], (4 << 30, 2 << 30, 2 << 30));
        let covered: u64 = r.iter().map(|x| x.2).sum();
        assert_eq!(
            covered,
            (4 << 30) - (0xc_0000 - (640 << 10)),
            "all but the VGA hole"
        );
    }

    #[test]
    fn the_sim_workload_runs_every_phase() {
        let _turn = crate::model::HEAP.lock().unwrap_or_else(|p| p.into_inner());
        let o = BenchOpts {
            guest: 8 << 20,
            aperture: 2 << 20,
            sim_size: 4 << 20,
            qemu_mem: 256 << 20,
            policies: vec!["none".into(), "seed".into()],
            workloads: vec!["sim".into()],
            json: None,
            plot: None,
            reps: 1,
            scale: false,
            scale_max: 0,
            flush_threads: 1,
        };
        let mut rows = Vec::new();
        sim(&o, &indicatif::ProgressBar::hidden(), &mut rows).unwrap();
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|r| r.pages > 0 && r.ns > 0), "{rows:?}");
        let t = table(&Floors::default(), &rows, None);
        assert!(t.contains("teardown"), "{t}");
    }
}
