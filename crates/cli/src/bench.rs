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

pub(crate) use crate::model::{gib, qemu_regions, row, BenchOpts, Floors, Row, APERTURE_IOVA};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use type1_core::{CacheMaintenance, EmulatedDevices, Iommu, TaskMemory, Tracing};
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
    c.set_iommu(p, 3).map_err(|e| anyhow!("SET_IOMMU: {e}"))?;
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

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
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

/// The guest of `scripts/guest.sh` (source tree only): `(kernel, initrd)`.
fn guest_image() -> Result<(String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/guest.sh");
    if !script.exists() {
        bail!("the qemu workload needs scripts/guest.sh (run type1 bench from the source tree)");
    }
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .context("cannot run scripts/guest.sh with bash")?;
    if !out.status.success() {
        bail!(
            "scripts/guest.sh failed (it needs apt-get and the Debian archive): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (k, i) = text
        .split_once(' ')
        .ok_or_else(|| anyhow!("scripts/guest.sh printed {text:?}"))?;
    Ok((k.to_string(), i.to_string()))
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
    let (kernel, initrd) = guest_image()?;
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

/// The least platform the engine runs on: pins are frame numbers and nothing else, the IOMMU
/// a software page table (`IoPageTable`), a flush does nothing. What the heap grows by while
/// mappings exist on it is the engine's own memory (and those page tables').
#[derive(Default)]
struct Lean {
    tables: std::collections::BTreeMap<u32, type1_core::IoPageTable>,
    next: u32,
    locked: u64,
}

impl TaskMemory for Lean {
    fn current(&self) -> Option<type1_core::Task> {
        Some(type1_core::Task {
            mm: type1_core::MmId(1),
            cap_ipc_lock: true,
            memlock_limit_pages: u64::MAX,
        })
    }

    fn mm_alive(&self, _mm: type1_core::MmId) -> bool {
        true
    }

    fn locked_vm(&self, _mm: type1_core::MmId) -> u64 {
        self.locked
    }

    fn account(
        &mut self,
        _mm: type1_core::MmId,
        delta: i64,
        _enforce: bool,
    ) -> Result<(), type1_core::PlatformError> {
        self.locked = self.locked.saturating_add_signed(delta);
        Ok(())
    }

    fn pin_user_pages(
        &mut self,
        _mm: type1_core::MmId,
        vaddr: u64,
        npages: u64,
        _write: bool,
    ) -> Result<Vec<type1_core::PinnedPage>, type1_core::PlatformError> {
        Ok((0..npages.min(512))
            .map(|i| type1_core::PinnedPage {
                pfn: (vaddr >> 12) + i,
                reserved: false,
            })
            .collect())
    }

    fn unpin_page(&mut self, _pfn: u64, _dirty: bool) {}

    fn pfn_is_reserved(&self, _pfn: u64) -> bool {
        false
    }

    fn pfn_memtype(&self, _pfn: u64) -> type1_core::MemType {
        type1_core::MemType::Wb
    }

    fn mm_read(
        &mut self,
        _mm: type1_core::MmId,
        _vaddr: u64,
        buf: &mut [u8],
    ) -> Result<(), type1_core::PlatformError> {
        buf.fill(0);
        Ok(())
    }

    fn mm_write(
        &mut self,
        _mm: type1_core::MmId,
        _vaddr: u64,
        _data: &[u8],
    ) -> Result<(), type1_core::PlatformError> {
        Ok(())
    }
}

impl Iommu for Lean {
    fn group_info(
        &self,
        _group: GroupId,
    ) -> Result<type1_core::GroupInfo, type1_core::PlatformError> {
        Ok(type1_core::GroupInfo {
            emulated: false,
            reserved: Vec::new(),
            msi_isolated: true,
        })
    }

    fn domain_alloc(
        &mut self,
        _group: GroupId,
    ) -> Result<type1_core::DomainId, type1_core::PlatformError> {
        self.next += 1;
        self.tables
            .insert(self.next, type1_core::IoPageTable::new(0x4020_1000));
        Ok(type1_core::DomainId(self.next))
    }

    fn domain_info(&self, _domain: type1_core::DomainId) -> type1_core::DomainInfo {
        type1_core::DomainInfo {
            ops: 1,
            aperture: type1_core::IovaRange {
                start: 0,
                last: (1 << 48) - 1,
            },
            pgsize_bitmap: 0x4020_1000,
        }
    }

    fn domain_enforce_cache_coherency(&mut self, _domain: type1_core::DomainId) -> bool {
        false
    }

    fn domain_free(&mut self, domain: type1_core::DomainId) {
        self.tables.remove(&domain.0);
    }

    fn attach_group(
        &mut self,
        _domain: type1_core::DomainId,
        _group: GroupId,
    ) -> Result<(), type1_core::PlatformError> {
        Ok(())
    }

    fn detach_group(&mut self, _domain: type1_core::DomainId, _group: GroupId) {}

    fn iommu_map(
        &mut self,
        domain: type1_core::DomainId,
        iova: u64,
        pa: u64,
        size: u64,
        prot: type1_core::Prot,
    ) -> Result<(), type1_core::PlatformError> {
        let t = self.tables.get_mut(&domain.0).ok_or_else(|| {
            type1_core::PlatformError::new(type1_core::Errno::ENODEV, "no domain")
        })?;
        t.map(iova, pa, size, prot)
            .map_err(|e| type1_core::PlatformError::new(e, "iommu_map"))
    }

    fn iommu_unmap(&mut self, domain: type1_core::DomainId, iova: u64, size: u64) -> u64 {
        self.tables
            .get_mut(&domain.0)
            .map_or(0, |t| t.unmap(iova, size))
    }

    fn iotlb_sync(&mut self, _domain: type1_core::DomainId) {}

    fn iova_to_phys(&self, domain: type1_core::DomainId, iova: u64) -> Option<u64> {
        self.tables.get(&domain.0)?.translate(iova).map(|x| x.0)
    }

    fn iova_to_phys_run(
        &self,
        domain: type1_core::DomainId,
        iova: u64,
        max: u64,
    ) -> Option<(u64, u64)> {
        self.tables.get(&domain.0)?.run(iova, max)
    }
}

impl CacheMaintenance for Lean {
    fn flush_cache(&mut self, _pa: u64, _len: u64) {}
}

impl EmulatedDevices for Lean {}

impl Tracing for Lean {}

/// Where the `i`th of `n` mappings of `pages_each` pages starts in the process: one-page
/// mappings a page apart (never adjacent), larger ones a 2 MiB gap apart so that each stays
/// 2 MiB aligned, a single one at `base`.
fn scale_vaddr(base: u64, i: u64, n: u64, pages_each: u64) -> u64 {
    let stride = match (n, pages_each) {
        (1, _) => 0,
        (_, 1) => 2 * PAGE_SIZE,
        _ => pages_each * PAGE_SIZE + (2 << 20),
    };
    base + i * stride
}

/// The map and unmap phases of `--scale` on platform `p` (whose current task maps memory at
/// [`scale_vaddr`] from `base`), into a non-coherent domain of group 1 under `seed`: the map
/// phase's and the unmap phase's nanoseconds, and the heap bytes kept while everything is
/// mapped.
fn scale_phases<P: type1_core::Platform>(
    p: &mut P,
    base: u64,
    n: u64,
    pages_each: u64,
    mut mapped: impl FnMut(&mut P, &type1_core::Type1) -> Result<()>,
) -> Result<(f64, f64, f64)> {
    let config = Config {
        dma_entry_limit: u32::MAX,
        ..Config::default()
    };
    let mut c = Container::new(config, "seed").map_err(|e| anyhow!("{e}"))?;
    c.add_group(p, GroupId(1))
        .map_err(|e| anyhow!("group 1: {e}"))?;
    c.set_iommu(p, 3).map_err(|e| anyhow!("SET_IOMMU: {e}"))?;
    let t1 = c.iommu_mut().map_err(|e| anyhow!("{e}"))?;
    let before = type1_host::alloc_count::live_bytes();
    let t = Instant::now();
    for i in 0..n {
        let r = MapRequest {
            flags: type1_core::MapFlags::RW,
            vaddr: scale_vaddr(base, i, n, pages_each),
            // From 4 GiB up: clear of the x86 MSI window, whatever the size.
            iova: (1 << 32) + i * pages_each * PAGE_SIZE,
            size: pages_each * PAGE_SIZE,
        };
        t1.map_dma(p, r).map_err(|e| anyhow!("MAP_DMA {i}: {e}"))?;
    }
    let map_ns = t.elapsed().as_nanos() as f64;
    let bytes = type1_host::alloc_count::live_bytes().saturating_sub(before) as f64;
    mapped(p, t1)?;
    let t = Instant::now();
    let all = UnmapRequest {
        flags: type1_core::UnmapFlags {
            all: true,
            ..Default::default()
        },
        iova: 0,
        size: 0,
        bitmap: None,
    };
    t1.unmap_dma(p, all)
        .map_err(|e| anyhow!("UNMAP_DMA all: {e}"))?;
    let unmap_ns = t.elapsed().as_nanos() as f64;
    c.close(p);
    Ok((map_ns, unmap_ns, bytes))
}

/// What the engine alone costs for `n` mappings of `pages_each` pages on [`Lean`] (see
/// [`scale_phases`]). A single mapping's vaddr and IOVA are 1 GiB aligned and its frames
/// contiguous, as memory backed by 2 MiB (or 1 GiB) pages is, so the IOMMU takes large leaves.
fn engine_run(n: u64, pages_each: u64) -> Result<(f64, f64, f64)> {
    scale_phases(&mut Lean::default(), 1 << 40, n, pages_each, |_, _| Ok(()))
}

/// Map and unmap nanoseconds and heap bytes kept, from [`scale_phases`].
type Phases = (f64, f64, f64);

/// Pages past which `--scale` does not time the simulator's check (a walk of everything
/// takes a while there).
const CHECK_PAGES_MAX: u64 = 1 << 23;

/// [`scale_phases`] on a simulator just large enough, with transparent huge pages if `thp`;
/// also the nanoseconds of the engine check with everything mapped, by a full walk and
/// incrementally after a one-page change (NaN past [`CHECK_PAGES_MAX`]).
fn scale_on_sim(n: u64, pages_each: u64, thp: bool) -> Result<(Phases, (f64, f64))> {
    let total = n * pages_each;
    // Frames for the pages, and room: every other page of the process is mapped on the
    // mappings axis so that no two mappings are adjacent, and huge pages start 2 MiB aligned.
    let frames = total * if n > 1 && pages_each == 1 { 2 } else { 1 } + 2048;
    // No MMIO window: the default one sits at 4 GiB, inside the larger machines here.
    let desc = type1_sim::MachineDesc {
        memory_frames: frames,
        mmio: Vec::new(),
        thp,
        ..Default::default()
    };
    let mut s = type1_sim::Sim::new(desc).map_err(|e| anyhow!("simulator: {e}"))?;
    let mm = s.create_process("scale");
    s.set_cap_ipc_lock(mm, true);
    s.set_current(Some(mm));
    let base = 1u64 << 32;
    let span = scale_vaddr(base, n - 1, n, pages_each) + pages_each * PAGE_SIZE - base;
    s.mmap_anon(mm, base, span, true)
        .map_err(|e| anyhow!("sim mmap: {e}"))?;
    // One page outside every mapping, for a change the checker must look at.
    s.mmap_anon(mm, base - PAGE_SIZE, PAGE_SIZE, true)
        .map_err(|e| anyhow!("sim mmap: {e}"))?;
    let mut checks = (f64::NAN, f64::NAN);
    let phases = scale_phases(&mut s, base, n, pages_each, |s, t1| {
        if total > CHECK_PAGES_MAX {
            return Ok(());
        }
        let views = [type1_sim::EngineView::of(t1)];
        // A walk of everything, then the incremental check brought up to date (a walk too),
        // then what it costs after a one-page change.
        s.set_check_mode(type1_sim::CheckMode::Full);
        let t = Instant::now();
        let full = s.check_engine(&views);
        checks.0 = t.elapsed().as_nanos() as f64;
        s.set_check_mode(type1_sim::CheckMode::Incremental);
        s.check_engine(&views);
        s.cpu_write(mm, base - PAGE_SIZE, &[1])
            .map_err(|e| anyhow!("sim write: {e}"))?;
        let t = Instant::now();
        let inc = s.check_engine(&views);
        checks.1 = t.elapsed().as_nanos() as f64;
        if !full.is_empty() || !inc.is_empty() {
            bail!(
                "the simulator's check found {:?}",
                full.iter().chain(&inc).next()
            );
        }
        Ok(())
    })?;
    Ok((phases, checks))
}

/// Heap bytes the engine keeps for `n` mappings of `pages_each` pages, on [`Lean`].
fn engine_bytes(n: u64, pages_each: u64) -> Result<f64> {
    Ok(engine_run(n, pages_each)?.2)
}

/// One point of `--scale`: the engine on the simulator with `n` mappings of `pages` pages.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRow {
    /// `mappings` (n one-page mappings) or `pages` (one mapping of n pages).
    pub axis: String,
    /// Mappings.
    pub mappings: u64,
    /// Pages in all.
    pub pages: u64,
    /// Nanoseconds per MAP_DMA'd page (map phase).
    pub map_ns_per_page: f64,
    /// Nanoseconds per mapping of the map phase.
    pub map_ns_per_mapping: f64,
    /// Nanoseconds per page of the unmap phase (UNMAP_DMA of everything).
    pub unmap_ns_per_page: f64,
    /// Heap bytes the engine and the simulator keep while everything is mapped, per mapping.
    pub bytes_per_mapping: f64,
    /// The same per page.
    pub bytes_per_page: f64,
    /// Heap bytes of the engine alone (on a platform that keeps nothing per page but its
    /// IOMMU page table), per mapping.
    pub engine_bytes_per_mapping: f64,
    /// The same per page.
    pub engine_bytes_per_page: f64,
    /// Nanoseconds of the simulator's engine check by a full walk, everything mapped.
    pub check_full_ns: f64,
    /// Nanoseconds of the incremental check after a one-page change.
    pub check_step_ns: f64,
}

/// `--scale`: how time and memory grow with the number of mappings (one page each, 1 Ki to
/// 64 Ki - 1) and with the pages of one mapping (16 MiB to 32 GiB), on the simulator with the
/// `seed` policy and a non-coherent domain; then (axis `engine`) the engine alone on
/// [`Lean`], up to a 1 TiB guest in 2 MiB-aligned memory, which the simulator's per-page model
/// cannot hold. Memory is the heap the process keeps (the binary counts its allocations), so
/// on the simulator axes it covers the engine and the simulator's own records.
pub fn scale(max_bytes: u64) -> Result<Vec<ScaleRow>> {
    let mut rows = Vec::new();
    let fits = |pages: u64| pages * PAGE_SIZE <= max_bytes;
    // With transparent huge pages: 8 GiB to `max_bytes` in one mapping, and 65535 mappings
    // of 16 MiB (1 TiB in all) if that fits.
    let thp: Vec<(&str, u64, u64)> = [1u64 << 21, 1 << 24, 1 << 26, 1 << 28]
        .into_iter()
        .filter(|p| fits(*p))
        .map(|p| ("thp", 1, p))
        .chain(fits(65535 * 4096).then_some(("thp", 65535, 4096)))
        .collect();
    let points: Vec<(&str, u64, u64)> = [1024u64, 4096, 16384, 65535]
        .iter()
        .map(|n| ("mappings", *n, 1u64))
        .chain(
            [4096u64, 65536, 524288, 1 << 21, 1 << 23]
                .iter()
                .map(|p| ("pages", 1, *p)),
        )
        // The engine on a platform with nothing per page: 1 GiB, 16 GiB, 128 GiB and 1 TiB
        // in one mapping; 1 Ki and 64 Ki - 1 one-page mappings; 64 Ki - 1 mappings of 16 MiB
        // (1 TiB in all).
        .chain(
            [1u64 << 18, 1 << 22, 1 << 25, 1 << 28]
                .iter()
                .map(|p| ("engine", 1, *p)),
        )
        .chain([(1024u64, 1u64), (65535, 1), (65535, 4096)].map(|(n, p)| ("engine", n, p)))
        .chain(thp)
        .collect();
    for (axis, n, pages_each) in points {
        let total = n * pages_each;
        // Map and unmap time, and heap bytes kept by everything (NaN: not measured), then
        // by the engine alone.
        let ((map_ns, unmap_ns, bytes), engine, (check_full, check_inc)) = if axis == "engine" {
            // The engine alone, past what the simulator's per-page model holds.
            let (m, u, e) = engine_run(n, pages_each)?;
            ((m, u, f64::NAN), e, (f64::NAN, f64::NAN))
        } else {
            let (phases, checks) = scale_on_sim(n, pages_each, axis == "thp")?;
            (phases, engine_bytes(n, pages_each)?, checks)
        };
        rows.push(ScaleRow {
            axis: axis.to_string(),
            mappings: n,
            pages: total,
            map_ns_per_page: map_ns / total as f64,
            map_ns_per_mapping: map_ns / n as f64,
            unmap_ns_per_page: unmap_ns / total as f64,
            bytes_per_mapping: bytes / n as f64,
            bytes_per_page: bytes / total as f64,
            engine_bytes_per_mapping: engine / n as f64,
            engine_bytes_per_page: engine / total as f64,
            check_full_ns: check_full,
            check_step_ns: check_inc,
        });
    }
    Ok(rows)
}

/// The `--scale` table.
pub fn scale_table(rows: &[ScaleRow]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:9} {:>9} {:>9} {:>12} {:>14} {:>14} {:>10} {:>8} {:>16} {:>13} {:>14} {:>13}",
        "axis",
        "mappings",
        "pages",
        "map ns/page",
        "map ns/mapping",
        "unmap ns/page",
        "B/mapping",
        "B/page",
        "engine B/mapping",
        "engine B/page",
        "check full µs",
        "check step µs"
    );
    // Rows of the engine alone have no simulator memory.
    let opt = |v: f64, prec: usize| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.prec$}")
        }
    };
    for r in rows {
        let _ = writeln!(
            s,
            "{:9} {:>9} {:>9} {:>12.0} {:>14.0} {:>14.0} {:>10} {:>8} {:>16.1} {:>13.3} {:>14} {:>13}",
            r.axis,
            r.mappings,
            r.pages,
            r.map_ns_per_page,
            r.map_ns_per_mapping,
            r.unmap_ns_per_page,
            opt(r.bytes_per_mapping, 0),
            opt(r.bytes_per_page, 1),
            r.engine_bytes_per_mapping,
            r.engine_bytes_per_page,
            opt(r.check_full_ns / 1e3, 0),
            opt(r.check_step_ns / 1e3, 1)
        );
    }
    s
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
        if !matches!(w.as_str(), "host" | "emulated" | "sim" | "qemu") {
            bail!("--workloads {w:?}: expected host, emulated, sim or qemu");
        }
    }
    let has = |w: &str| o.workloads.iter().any(|x| x == w);
    let multi = o.flush_threads > 1 && o.policies.iter().any(|p| p == "seed");
    // Progress: a step per policy per workload, the host floors (and the multi-core
    // variant), and for qemu a step per round of boots.
    let per_policy = o.workloads.iter().filter(|w| *w != "qemu").count() as u64;
    let steps = o.policies.len() as u64 * per_policy
        + u64::from(has("host")) * (1 + u64::from(multi))
        + u64::from(has("qemu")) * QEMU_RUNS as u64;
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    let mut floors = Floors::default();
    if has("host") {
        floors = host(o, &bar, &mut rows)?;
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
    bar.finish_and_clear();
    print!("{}", table(&floors, &rows, boot.as_ref()));
    if let Some(why) = &skipped {
        eprintln!("type1 bench: {why}");
    }
    if let Some(path) = &o.json {
        let r = Report {
            floor: floors,
            rows: &rows,
            qemu_boot: boot,
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
        for phase in ["map-thp", "unmap-thp"] {
            if let (Some(seed), Some(none)) = (ratio(phase, "seed"), ratio(phase, "none")) {
                let _ = writeln!(
                    s,
                    "through /dev/vfio: flush seed adds on {phase}: {:.2}x the clean-line flush",
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

    /// The heap counter is the process's: tests that allocate much, or measure it, take turns.
    static HEAP: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Every kind of `--scale` point runs at a small size: 4 KiB pages and 2 MiB pages, one
    /// mapping and several, the simulator's checks (which must find nothing) timed below the
    /// check limit, and the table shows what was not measured as `-`.
    #[test]
    fn every_kind_of_scale_point_runs() {
        let _turn = HEAP.lock().unwrap_or_else(|p| p.into_inner());
        for (n, pages, thp) in [
            (1, 1024, false),
            (8, 1, false),
            (1, 1024, true),
            (3, 512, true),
        ] {
            let ((map, unmap, _), (full, step)) = scale_on_sim(n, pages, thp).unwrap();
            assert!(map > 0.0 && unmap > 0.0, "{n} x {pages}, thp {thp}");
            assert!(
                full > 0.0 && step > 0.0,
                "{n} x {pages}, thp {thp}: checks timed"
            );
        }
        let (map, _, bytes) = engine_run(2, 512).unwrap();
        assert!(map > 0.0 && bytes > 0.0);
        let row = ScaleRow {
            axis: "engine".into(),
            mappings: 1,
            pages: 1,
            map_ns_per_page: 1.0,
            map_ns_per_mapping: 1.0,
            unmap_ns_per_page: 1.0,
            bytes_per_mapping: f64::NAN,
            bytes_per_page: f64::NAN,
            engine_bytes_per_mapping: 1.0,
            engine_bytes_per_page: 1.0,
            check_full_ns: f64::NAN,
            check_step_ns: f64::NAN,
        };
        let t = scale_table(&[row]);
        assert!(
            !t.contains("NaN") && t.lines().nth(1).unwrap().contains(" - "),
            "{t}"
        );
    }

    #[test]
    fn the_engine_keeps_a_bounded_record_per_mapping_and_almost_nothing_per_page() {
        let _turn = HEAP.lock().unwrap_or_else(|p| p.into_inner());
        // The binary's counting allocator is installed in this test binary too.
        let per_mapping = engine_bytes(256, 1).unwrap() / 256.0;
        assert!(
            per_mapping > 0.0 && per_mapping < 1024.0,
            "{per_mapping} B per mapping"
        );
        let per_page = engine_bytes(1, 65536).unwrap() / 65536.0;
        assert!(per_page < 1.0, "{per_page} B per page of one large mapping");
    }

    #[test]
    fn the_sim_workload_runs_every_phase() {
        let _turn = HEAP.lock().unwrap_or_else(|p| p.into_inner());
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
