//! The data of `type1 bench` shared by its workloads (`bench`, `emulated`) and its renderers
//! (`plot`): what to run ([`BenchOpts`]), one measured phase ([`Row`]), the machine's floors
//! ([`Floors`]), the host workload's layout ([`qemu_regions`], [`APERTURE_IOVA`]), the THP
//! buffer both THP measurements map ([`prefaulted_thp`]), and [`median`]. It
//! depends on none of them, so the modules that use it do not depend on each other.

use std::path::PathBuf;

use serde::Serialize;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOpts {
    /// Guest RAM of the host workload, bytes.
    pub guest: u64,
    /// Aperture, bytes.
    pub aperture: u64,
    /// Total size of the sim workload, bytes.
    pub sim_size: u64,
    /// Guest RAM of the qemu workload, bytes.
    pub qemu_mem: u64,
    /// Policies.
    pub policies: Vec<String>,
    /// Workloads (`host`, `emulated`, `sim`, `qemu`).
    pub workloads: Vec<String>,
    /// `--json FILE`.
    pub json: Option<PathBuf>,
    /// `--plot FILE.svg`.
    pub plot: Option<PathBuf>,
    /// Rounds of the host workload (medians).
    pub reps: usize,
    /// `--scale` instead of the workloads.
    pub scale: bool,
    /// Largest simulated guest of `--scale` (bytes).
    pub scale_max: u64,
    /// Cores for the extra `seed@Ncpu` host rows (1: none).
    pub flush_threads: usize,
}

/// One measured phase.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `host`, `sim` or `qemu`.
    pub platform: String,
    /// What ran (`guest 4G + aperture 1G`).
    pub workload: String,
    /// `map`, `unmap` or `teardown`.
    pub phase: String,
    /// Flush policy.
    pub policy: String,
    /// 4 KiB pages the phase moved.
    pub pages: u64,
    /// Nanoseconds.
    pub ns: u64,
    /// Nanoseconds per page.
    pub ns_per_page: f64,
}

/// The floors, ns per 4 KiB page.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Floors {
    /// CLFLUSHOPT (or what CPUID offers) of every line, none cached.
    pub flush_ns_per_page_clean: f64,
    /// The same with every line dirty.
    pub flush_ns_per_page_dirty: f64,
    /// `memset`.
    pub memset_ns_per_page: f64,
    /// Faulting fresh anonymous memory in (`MADV_POPULATE_WRITE`).
    pub populate_ns_per_page: f64,
    /// CPU clock, Hz (0 if unknown).
    pub cpu_hz: f64,
}

/// A row of `platform`, `workload`, `phase` and `policy`: `pages` moved in `ns`.
pub(crate) fn row(
    platform: &str,
    workload: &str,
    phase: &str,
    policy: &str,
    pages: u64,
    ns: u64,
) -> Row {
    Row {
        platform: platform.into(),
        workload: workload.into(),
        phase: phase.into(),
        policy: policy.into(),
        pages,
        ns,
        ns_per_page: if pages == 0 {
            0.0
        } else {
            ns as f64 / pages as f64
        },
    }
}

/// `b` bytes as `NG` or `NM`.
pub(crate) fn gib(b: u64) -> String {
    if b % (1 << 30) == 0 {
        format!("{}G", b >> 30)
    } else {
        format!("{}M", b >> 20)
    }
}

/// The regions QEMU's q35 machine maps for `guest` bytes of RAM: `(iova, offset in the
/// buffer, size)`.
pub(crate) fn qemu_regions(guest: u64) -> Vec<(u64, u64, u64)> {
    let low = guest.min(2 << 30);
    let mut v = vec![(0, 0, (640 << 10).min(low))];
    if low > 0xc_0000 {
        v.push((0xc_0000, 0xc_0000, low - 0xc_0000));
    }
    if guest > low {
        v.push((4 << 30, low, guest - low));
    }
    v
}

/// Where the aperture sits in the IOVA space (above any guest RAM here).
pub(crate) const APERTURE_IOVA: u64 = 1 << 40;

/// The heap counter is the process's: tests that allocate much, or measure it, take turns.
#[cfg(test)]
pub(crate) static HEAP: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// IOVA of the THP buffer (above the host workload's regions).
pub const THP_IOVA: u64 = 1 << 44;
/// Rounds of MAP and UNMAP of the THP buffer (medians), in process and through the files.
pub const THP_ROUNDS: usize = 5;

/// Bytes of the THP buffer a run maps: 512 MiB, or the guest's size if that is smaller.
pub fn thp_bytes(o: &BenchOpts) -> u64 {
    (512u64 << 20).min(o.guest)
}

/// The THP buffer: 2 MiB aligned, transparent huge pages asked for, faulted in and written.
pub fn prefaulted_thp(bytes: u64) -> Result<type1_host::sys::AnonMap, type1_core::Errno> {
    let m = type1_host::sys::AnonMap::aligned(bytes, 2 << 20)?;
    let _ = type1_host::sys::madvise(m.addr(), m.len(), libc::MADV_HUGEPAGE);
    let b = type1_host::floor::Buffer::of(&m);
    b.populate();
    b.fill();
    Ok(m)
}

/// The median of measurements (the upper middle of an even count; 0 for none).
pub fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}
