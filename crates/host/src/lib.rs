//! # type1-host: the type1 engine's platform on the real machine, for the calling process
//!
//! [`HostPlatform`] implements [`type1_core::Platform`] for the process it runs in, as the
//! kernel's VFIO works on the memory of the ioctl caller. Under the emulation the engine runs
//! in the broker (`type1-broker`), not in the client: each client process's preload library
//! answers the broker's pin, unpin, flush and device-DMA callbacks with a `HostPlatform` of
//! its own, and the broker keeps one that never pins as the IOMMU (domains and page tables).
//! `type1 bench`'s `host` rows and `benches/map.rs` run the engine on it directly, in one
//! process:
//!
//! * **pinning** holds pages the way VFIO does (`pin_user_pages(FOLL_LONGTERM)`): each pin call
//!   registers the range as an io_uring fixed buffer ([`uring`]). A pinned page stays the
//!   device's until unpin whatever the program does to its mappings (`munmap`, `mremap`,
//!   `MADV_DONTNEED`, `ftruncate`, fork, VADDR update); `VM_LOCKED` and the program's own
//!   `mlock`s are never touched and no memory region is split. Writable long-term pins of
//!   shared regular-file mappings are refused (EFAULT) as in Linux 6.5+. The frames handed to
//!   the engine are the emulated IOMMU's *bus frames*, one contiguous range per pin call (see
//!   `BUS_PFN_BASE`), never host physical addresses; the real frames, read from
//!   `/proc/self/pagemap` (one read per call) when the process may see them, only serve to
//!   check later that a mapping still holds the pinned page. Where io_uring cannot hold a
//!   page (io_uring disabled, `TYPE1_PIN=track`, or a read-only pin of memory that cannot be
//!   registered writable), the pin is *tracked* by address only, and every later use checks that the program still maps the page there:
//!   if not, the device faults and a notice says why, once;
//! * **accounting**: `locked_vm` of the engine's charges checked against RLIMIT_MEMLOCK
//!   (`prlimit64`), bypassed by CAP_IPC_LOCK (`capget`), as the kernel does. The process's own
//!   `mlock()`s are not counted (the kernel would count them too);
//! * **IOMMU**: software domains, one [`type1_core::IoPageTable`] each (2 MiB and 1 GiB leaves
//!   where IOVA and physical alignment allow), one unit per configured IOMMU, with or without
//!   snoop control;
//! * **cache maintenance**: `flush_cache(pa, len)` finds the pinned runs holding `pa..`, checks
//!   once per span of runs that the CPU still maps them where the records say, and flushes those
//!   lines with CLFLUSHOPT, CLWB or CLFLUSH (CPUID) between MFENCEs, as `clflush_cache_range`
//!   does. A pinned page whose last CPU mapping goes away is flushed right then
//!   ([`HostPlatform::cpu_unmap_prepare`], called by the preload library's `munmap`, `mremap`,
//!   `madvise` and `ftruncate` hooks): no CPU can dirty it afterwards, so the series' unpin
//!   flush has already happened. The trace's `cpu_flush` events say which way each went;
//! * **device memory (peer-to-peer)**: a device BAR mapped into the process ([`HostPlatform::map_mmio`])
//!   is PFNMAP memory: pinning it returns *reserved* pfns in a range of its own (from
//!   [`MMIO_PFN_BASE`]), which the engine neither refcounts nor charges and flushes only if
//!   [`TaskMemory::pfn_memtype`] says the memory is cacheable. The records follow `mremap` and
//!   `munmap` of the BAR mapping;
//! * **device DMA**: [`HostPlatform::dma`] translates an IOVA through a domain's page table and
//!   copies to or from the page it reaches: a pinned page through its io_uring buffer
//!   (`READ_FIXED`/`WRITE_FIXED`), device memory through the BAR's backing
//!   ([`HostPlatform::set_bar_backing`]), checking the mapping's protection.
//!
//! Neighbours: `type1-core` defines the seam; `type1-sim` is the simulated twin;
//! `type1-preload` calls this platform to answer the broker's callbacks, and `type1-broker`
//! keeps its IOMMU domains in one. All system calls are raw (`sys`), so an interposing
//! library never sees them.

pub mod alloc_count;
mod dma;
pub mod fds;
pub mod floor;
pub mod flush;
mod hold;
pub mod pins;
pub mod procfs;
pub mod shm;
pub mod sock;
pub mod sys;
pub mod tracefile;
pub mod uring;
pub mod vfio_client;

use std::collections::BTreeMap;

use type1_core::{
    iopt::TableStats, DomainId, Errno, Event, GroupId, GroupInfo, IovaRange, MemType, MmId,
    PinnedPage, PlatformError, ResvKind, ResvRegion, SoftDomains, Task, PAGE_SHIFT, PAGE_SIZE,
};
use type1_core::{
    CacheMaintenance, DeviceDma, DmaFault, EmulatedDevices, SoftIommu, TaskMemory, Tracing,
};

pub use flush::FlushInsn;
use pins::{Holder, PinStore};
use uring::Ring;

/// The one address space of the host platform: the calling process.
pub const SELF_MM: MmId = MmId(1);

/// The emulated IOMMU's bus frames for pinned RAM start here, above any real RAM. Each pin call
/// gets a contiguous range of them, congruent to its virtual address modulo 1 GiB, and the
/// next call continues the range when it continues the virtual range: the engine then sees a
/// whole mapping as one contiguous run, and the page tables use 2 MiB and 1 GiB leaves where
/// the IOVA allows. The real frames (when pagemap shows them) are kept only to check that a
/// mapping still holds the pinned page; they never reach the engine or the trace.
const BUS_PFN_BASE: u64 = 1 << 44;

/// Bus frames per 1 GiB: the congruence modulus of a fresh range.
const GIB_PAGES: u64 = 1 << 18;

/// Device memory (BAR) pfns start here: above real RAM, below the synthetic RAM pfns.
pub const MMIO_PFN_BASE: u64 = 1 << 40;

/// Page sizes of the host's software IOMMU domains.
const PGSIZES: u64 = (1 << 12) | (1 << 21) | (1 << 30);

/// How pins hold pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinMode {
    /// io_uring fixed buffers (the default; falls back to `Track` if io_uring is unusable).
    Uring,
    /// Addresses only (`TYPE1_PIN=track`): right only while the program leaves pinned
    /// mappings alone.
    Track,
}

#[derive(Clone, Copy, Debug)]
struct MmioPage {
    /// Where the page is mapped now, if anywhere.
    vaddr: Option<u64>,
    memtype: MemType,
}

/// The span of virtual addresses the platform's records may care about (pinned pages and
/// mapped device memory), readable without whatever lock guards the platform: memory hooks
/// of the preload library check it first and let calls on other memory pass without waiting
/// for an engine call in progress. Conservative: it grows with every pin and BAR mapping, and
/// empties only when no record is left.
#[derive(Debug)]
pub struct CpuWatch {
    lo: std::sync::atomic::AtomicU64,
    hi: std::sync::atomic::AtomicU64,
}

impl Default for CpuWatch {
    fn default() -> Self {
        CpuWatch {
            lo: std::sync::atomic::AtomicU64::new(u64::MAX),
            hi: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl CpuWatch {
    /// Whether `[addr, addr + len)` may hold pinned pages or device memory.
    pub fn intersects(&self, addr: u64, len: u64) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        let (lo, hi) = (self.lo.load(Acquire), self.hi.load(Acquire));
        lo < hi && addr < hi && addr.saturating_add(len.max(1)) > lo
    }

    /// Whether no record exists.
    pub fn is_empty(&self) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.lo.load(Acquire) >= self.hi.load(Acquire)
    }

    fn widen(&self, addr: u64, len: u64) {
        use std::sync::atomic::Ordering::AcqRel;
        self.lo.fetch_min(addr, AcqRel);
        self.hi.fetch_max(addr.saturating_add(len), AcqRel);
    }

    fn clear(&self) {
        use std::sync::atomic::Ordering::Release;
        self.hi.store(0, Release);
        self.lo.store(u64::MAX, Release);
    }
}

/// Pages pinned per `pin_user_pages` call at most (the engine asks again for the rest).
const PIN_CHUNK: u64 = pins::MAX_RUN;
/// An IOMMU unit of the host machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitConfig {
    /// Whether its domains can enforce cache coherency (snoop control).
    pub snoop_control: bool,
}

/// What the host platform emulates: IOMMU units and which group sits behind which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Units by index.
    pub units: Vec<UnitConfig>,
    /// Group number → unit index.
    pub groups: BTreeMap<u32, usize>,
}

impl Default for HostConfig {
    /// Group 0 behind a coherent unit, group 1 behind one without snoop control.
    fn default() -> Self {
        HostConfig {
            units: vec![
                UnitConfig {
                    snoop_control: true,
                },
                UnitConfig {
                    snoop_control: false,
                },
            ],
            groups: [(0, 0), (1, 1)].into_iter().collect(),
        }
    }
}

/// Counters of what the platform did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// `flush_cache` calls.
    pub flush_calls: u64,
    /// Cache lines flushed.
    pub lines_flushed: u64,
    /// Pages a flush could not reach: no CPU mapping and no flush when the last one went
    /// (a route the preload hooks do not see), or a pfn never pinned.
    pub pages_unresolved: u64,
    /// Pages whose flush had already happened when their last CPU mapping went away.
    pub pages_flushed_at_unmap: u64,
    /// Pages pinned (calls × pages).
    pub pages_pinned: u64,
    /// Pages pinned by address only ([`PinMode::Track`]).
    pub pages_tracked: u64,
    /// Unpins of pages that were not pinned (an engine bug; always 0).
    pub stray_unpins: u64,
}

/// What the platform's bookkeeping costs, for the benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Live pin registrations (io_uring buffers or tracked ranges).
    pub registrations: usize,
    /// Pages pinned.
    pub pinned_pages: u64,
    /// Estimated heap bytes of the pin records.
    pub pin_heap_bytes: u64,
    /// Leaves of every domain's page table, summed.
    pub tables: TableStats,
}

/// Where trace events go.
enum Sink {
    None,
    File(tracefile::TraceFile),
    Memory(Vec<Event>),
}

/// The platform for the calling process. See the crate documentation.
pub struct HostPlatform {
    cfg: HostConfig,
    locked_vm: u64,
    pagemap: Option<(i32, i32)>, // (pid, fd)
    /// Whether pagemap shows real PFNs (`None` until first read).
    real_pfns: Option<bool>,
    /// The bounce pipe of device DMA through io_uring (created on first use).
    bounce: Option<(i32, i32)>,
    /// Where the last pin call's virtual range and bus range ended.
    last_end: Option<(u64, u64)>,
    pins: PinStore,
    mode: PinMode,
    rings: Vec<Ring>,
    next_synth: u64,
    /// The software IOMMU's domains (the bookkeeping every software platform shares).
    domains: SoftDomains,
    /// Device memory mapped in the process: vaddr page → pfn, and every pfn ever mapped.
    mmio_pages: BTreeMap<u64, u64>,
    mmio_pfns: BTreeMap<u64, MmioPage>,
    /// BAR memory reachable without the program's mappings: first pfn → (pages, vaddr).
    bars: BTreeMap<u64, (u64, u64)>,
    /// Which file backs each BAR backing (first pfn → inode), to replace stale ones.
    bar_files: BTreeMap<u64, u64>,
    flush: (FlushInsn, u64),
    /// Threads a large flush is spread over (1: the series' single-core flush).
    flush_threads: usize,
    /// While a [`CacheMaintenance::flush_cache_batch`] resolves its ranges: the CPU spans to flush.
    deferred: Option<Vec<(u64, u64)>>,
    stats: HostStats,
    sink: Sink,
    notices: Vec<&'static str>,
    watch: std::sync::Arc<CpuWatch>,
    /// Overrides of the task's credentials (tests).
    task_override: Option<Task>,
}

impl std::fmt::Debug for HostPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPlatform")
            .field("cfg", &self.cfg)
            .field("locked_vm", &self.locked_vm)
            .field("mode", &self.mode)
            .field("pins", &self.pins.counts())
            .field("domains", &self.domains.len())
            .field("flush", &self.flush)
            .field("stats", &self.stats)
            .finish()
    }
}

fn perr(errno: Errno, what: impl Into<String>) -> PlatformError {
    PlatformError::new(errno, what)
}

impl HostPlatform {
    /// A platform with the given units and groups.
    pub fn new(cfg: HostConfig) -> HostPlatform {
        let domains = SoftDomains::new(
            cfg.units.iter().map(|u| u.snoop_control).collect(),
            cfg.groups.iter().map(|(g, u)| (*g, *u)),
            PGSIZES,
        );
        HostPlatform {
            cfg,
            locked_vm: 0,
            pagemap: None,
            real_pfns: None,
            bounce: None,
            last_end: None,
            pins: PinStore::default(),
            mode: PinMode::Uring,
            rings: Vec::new(),
            next_synth: BUS_PFN_BASE,
            domains,
            mmio_pages: BTreeMap::new(),
            mmio_pfns: BTreeMap::new(),
            bars: BTreeMap::new(),
            bar_files: BTreeMap::new(),
            flush: flush::detect_flush(),
            flush_threads: 1,
            deferred: None,
            stats: HostStats::default(),
            sink: Sink::None,
            notices: Vec::new(),
            watch: std::sync::Arc::default(),
            task_override: None,
        }
    }

    /// The span of addresses the records care about, shared with whoever needs it without
    /// holding the platform.
    pub fn cpu_watch(&self) -> std::sync::Arc<CpuWatch> {
        self.watch.clone()
    }

    /// Empties the watch once nothing is pinned and no device memory is mapped.
    fn maybe_unwatch(&self) {
        if self.pins.is_empty() && self.mmio_pages.is_empty() {
            self.watch.clear();
        }
    }

    /// Makes the first io_uring now (pins take it later), so that a process that drops
    /// CAP_IPC_LOCK after opening VFIO keeps rings that io_uring does not charge to its
    /// RLIMIT_MEMLOCK (VFIO's limit is the engine's to apply). Failure is not an error here:
    /// the first pin tries again and says why.
    pub fn prepare(&mut self) {
        if self.mode == PinMode::Uring && self.rings.is_empty() {
            if let Ok(r) = Ring::new(uring::slots_for(0)) {
                self.rings.push(r);
            }
        }
    }

    /// Chooses how pins hold pages (before the first pin).
    pub fn set_pin_mode(&mut self, mode: PinMode) {
        self.mode = mode;
    }

    /// How pins hold pages now ([`PinMode::Track`] after io_uring turned out unusable).
    pub fn pin_mode(&self) -> PinMode {
        self.mode
    }

    /// Writes the trace as JSON lines (`{"seq":N,"pid":P,"ev":...}`, `docs/trace.md`) to the
    /// run's trace `TYPE1_TRACE=base`: this process's own file of it ([`tracefile`]).
    pub fn trace_to_path(&mut self, base: std::ffi::OsString) -> Result<(), Errno> {
        self.sink = Sink::File(tracefile::TraceFile::open(base)?);
        Ok(())
    }

    /// Keeps trace events in memory (see [`Self::events`]).
    pub fn trace_to_memory(&mut self) {
        self.sink = Sink::Memory(Vec::new());
    }

    /// Events kept by [`Self::trace_to_memory`].
    pub fn events(&self) -> &[Event] {
        match &self.sink {
            Sink::Memory(v) => v,
            _ => &[],
        }
    }

    /// Replaces what [`TaskMemory::current`] reports (tests of the accounting rules).
    pub fn set_task_override(&mut self, task: Option<Task>) {
        self.task_override = task;
    }

    /// The flush instruction in use and the line size.
    pub fn flush_insn(&self) -> (FlushInsn, u64) {
        self.flush
    }

    /// Counters.
    pub fn stats(&self) -> HostStats {
        self.stats
    }

    /// What the bookkeeping costs now.
    pub fn memory(&self) -> MemoryStats {
        let (registrations, pinned_pages) = self.pins.counts();
        let mut tables = TableStats::default();
        for (_, d) in self.domains.iter() {
            let t = d.table.stats();
            tables.leaves_4k += t.leaves_4k;
            tables.leaves_2m += t.leaves_2m;
            tables.leaves_1g += t.leaves_1g;
            tables.mapped += t.mapped;
            tables.heap_bytes += t.heap_bytes;
        }
        MemoryStats {
            registrations,
            pinned_pages,
            pin_heap_bytes: self.pins.heap_bytes(),
            tables,
        }
    }

    /// Number of pinned pages (counting a page pinned twice twice).
    pub fn pinned_frames(&self) -> usize {
        self.pins.counts().1 as usize
    }

    /// Number of live domains.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// The user virtual address the CPU maps a pinned pfn at, if the records know one.
    pub fn vaddr_of_pfn(&self, pfn: u64) -> Option<u64> {
        let (id, i) = self.pins.find(pfn)?;
        self.pins.run(id)?.cpu.map(|v| v + i * PAGE_SIZE)
    }

    /// Says `msg` on stderr, once per `key` in the life of the platform.
    fn notice(&mut self, key: &'static str, msg: &str) {
        if !self.notices.contains(&key) {
            self.notices.push(key);
            let _ = sys::write_all(2, format!("type1: {msg}\n").as_bytes());
        }
    }

    /// Writes one trace line made elsewhere (a JSON object without `seq` and `pid`, which the
    /// trace file adds): the broker's engine events for this process.
    pub fn trace_json(&mut self, json_object: &str) {
        if let Sink::File(f) = &mut self.sink {
            f.write(json_object);
        }
    }

    fn emit(&mut self, event: &Event) {
        if let Sink::File(f) = &mut self.sink {
            if let Ok(json) = serde_json::to_string(event) {
                f.write(&json);
            }
        }
    }
}

impl HostPlatform {
    /// Drops every pin this platform holds (the mappings they served are gone with the broker
    /// that held them).
    pub fn unpin_all(&mut self) {
        for h in self.pins.drain() {
            self.release(h);
        }
    }
}

impl Drop for HostPlatform {
    fn drop(&mut self) {
        self.unpin_all();
        self.rings.clear();
        if let Some((r, w)) = self.bounce.take() {
            sys::close(r);
            sys::close(w);
        }
        if let Some((_, fd)) = self.pagemap.take() {
            sys::close(fd);
        }
        // The trace file closes itself.
    }
}

impl TaskMemory for HostPlatform {
    fn current(&self) -> Option<Task> {
        if let Some(t) = self.task_override {
            return Some(t);
        }
        Some(Task {
            mm: SELF_MM,
            cap_ipc_lock: sys::has_cap_ipc_lock(),
            memlock_limit_pages: sys::memlock_limit_pages(),
        })
    }

    fn mm_alive(&self, mm: MmId) -> bool {
        mm == SELF_MM
    }

    fn locked_vm(&self, _mm: MmId) -> u64 {
        self.locked_vm
    }

    fn account(&mut self, _mm: MmId, delta: i64, enforce_limit: bool) -> Result<(), PlatformError> {
        if delta > 0 && enforce_limit {
            let limit = self
                .current()
                .map(|t| t.memlock_limit_pages)
                .unwrap_or(u64::MAX);
            if self.locked_vm.saturating_add(delta as u64) > limit {
                return Err(perr(
                    Errno::ENOMEM,
                    format!(
                        "locked_vm {} + {delta} pages exceeds RLIMIT_MEMLOCK {limit}",
                        self.locked_vm
                    ),
                ));
            }
        }
        self.locked_vm = self.locked_vm.saturating_add_signed(delta);
        Ok(())
    }

    fn pin_user_pages(
        &mut self,
        _mm: MmId,
        vaddr: type1_core::Vaddr,
        npages: u64,
        write: bool,
    ) -> Result<Vec<PinnedPage>, PlatformError> {
        let vaddr = vaddr.0;
        let what = || format!("pin vaddr 0x{vaddr:x}");
        if vaddr % PAGE_SIZE != 0 || npages == 0 {
            return Err(perr(Errno::EINVAL, what()));
        }
        let n = npages.min(PIN_CHUNK);
        let end = vaddr.saturating_add(n * PAGE_SIZE);
        // Device memory: reserved pfns, neither faulted in nor held (follow_fault_pfn).
        let mut mmio = Vec::new();
        for (&page, &pfn) in self.mmio_pages.range(vaddr..end) {
            if page != vaddr + mmio.len() as u64 * PAGE_SIZE {
                break;
            }
            mmio.push(PinnedPage {
                pfn,
                reserved: true,
            });
        }
        if !mmio.is_empty() {
            return Ok(mmio);
        }
        // Ordinary memory up to the next device page.
        let n = match self.mmio_pages.range(vaddr..end).next() {
            Some((&page, _)) => (page - vaddr) / PAGE_SIZE,
            None => n,
        };
        // Seen by the memory hooks before the pages are held (a concurrent munmap of them
        // waits for this call instead of slipping past the records).
        self.watch.widen(vaddr, n * PAGE_SIZE);
        let (holder, n) = self.hold(vaddr, n, write).map_err(|e| perr(e, what()))?;
        // The real frames of the first and last page (to check mappings later), which also
        // shows the pages are there.
        let last = vaddr + (n - 1) * PAGE_SIZE;
        let ends = (self.pagemap(vaddr, 1), self.pagemap(last, 1));
        let (first_real, last_real) = match ends {
            (Ok(a), Ok(b)) if a.len() == 1 && b.len() == 1 => (a[0], b[0]),
            (a, b) => {
                // Gone between the pin and the read-back (another thread unmapped it).
                self.release(holder);
                let e = a.err().or(b.err()).unwrap_or(Errno::EFAULT);
                return Err(perr(e, what()));
            }
        };
        let visible = *self.real_pfns.get_or_insert(first_real != 0);
        let first = self.bus_frames(vaddr, n);
        self.pins.add(
            holder,
            vaddr,
            first,
            n,
            visible.then_some((first_real, last_real)),
        );
        self.stats.pages_pinned += n;
        Ok((first..first + n)
            .map(|pfn| PinnedPage {
                pfn,
                reserved: false,
            })
            .collect())
    }

    fn unpin_page(&mut self, pfn: u64, dirty: bool) {
        self.unpin_pages(pfn, 1, dirty);
    }

    fn unpin_pages(&mut self, pfn: u64, npages: u64, _dirty: bool) {
        let (released, stray) = self.pins.unpin(pfn, npages);
        self.stats.stray_unpins += stray;
        let any = !released.is_empty();
        for h in released {
            self.release(h);
        }
        if any {
            self.maybe_unwatch();
        }
    }

    fn pfn_is_reserved(&self, pfn: u64) -> bool {
        !self.mmio_pfns.is_empty() && self.mmio_pfns.contains_key(&pfn)
    }

    fn pfn_memtype(&self, pfn: u64) -> MemType {
        if self.mmio_pfns.is_empty() {
            return MemType::Wb;
        }
        self.mmio_pfns
            .get(&pfn)
            .map(|m| m.memtype)
            .unwrap_or(MemType::Wb)
    }

    fn mm_read(
        &mut self,
        _mm: MmId,
        vaddr: type1_core::Vaddr,
        buf: &mut [u8],
    ) -> Result<(), PlatformError> {
        let vaddr = vaddr.0;
        sys::read_user(vaddr, buf).map_err(|e| perr(e, format!("read 0x{vaddr:x}")))
    }

    fn mm_write(
        &mut self,
        _mm: MmId,
        vaddr: type1_core::Vaddr,
        data: &[u8],
    ) -> Result<(), PlatformError> {
        let vaddr = vaddr.0;
        sys::write_user(vaddr, data).map_err(|e| perr(e, format!("write 0x{vaddr:x}")))
    }
}

/// The IOMMU is software: [`SoftDomains`], the whole of `Iommu` from `type1_core`; groups
/// reserve the MSI window, as on x86.
impl SoftIommu for HostPlatform {
    fn soft_domains(&self) -> &SoftDomains {
        &self.domains
    }

    fn soft_domains_mut(&mut self) -> &mut SoftDomains {
        &mut self.domains
    }

    fn soft_group_info(&self, _group: GroupId) -> GroupInfo {
        GroupInfo {
            emulated: false,
            reserved: vec![ResvRegion {
                range: IovaRange {
                    start: 0xfee0_0000,
                    last: 0xfeef_ffff,
                },
                kind: ResvKind::Msi,
            }],
            msi_isolated: true,
        }
    }
}

impl CacheMaintenance for HostPlatform {
    fn flush_cache(&mut self, pa: type1_core::Pa, len: u64) {
        self.do_flush_cache(pa.0, len);
    }

    fn flush_cache_batch(&mut self, ranges: &[(type1_core::Pa, u64)]) {
        let ranges: Vec<(u64, u64)> = ranges.iter().map(|&(pa, len)| (pa.0, len)).collect();
        self.do_flush_cache_batch(&ranges);
    }
}

impl EmulatedDevices for HostPlatform {}

impl Tracing for HostPlatform {
    fn trace(&mut self, event: Event) {
        self.emit(&event);
        if let Sink::Memory(v) = &mut self.sink {
            v.push(event);
        }
    }
}
