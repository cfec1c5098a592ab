//! # type1-host: the type1 engine's platform on the real machine, for the calling process
//!
//! [`HostPlatform`] implements [`type1_core::Platform`] for the process it runs in (the
//! LD_PRELOAD library runs the engine inside the client, as the kernel runs it on behalf of
//! the ioctl caller):
//!
//! * **pinning**: pages are faulted in (`MADV_POPULATE_READ`/`WRITE`), locked (`mlock`) and
//!   translated through `/proc/self/pagemap`. An unbacked address, or a write pin of
//!   read-only memory, is EFAULT. PFNs are real when the process may read them (root);
//!   otherwise pagemap reads zeros and the platform hands out stable synthetic PFNs instead.
//!   Transparent huge pages show up as runs of contiguous PFNs, which the engine coalesces;
//! * **accounting**: `locked_vm` of the engine's charges checked against RLIMIT_MEMLOCK
//!   (`prlimit64`), bypassed by CAP_IPC_LOCK (`capget`), as the kernel does. The process's own
//!   `mlock()`s are not counted (the kernel would count them too);
//! * **IOMMU**: software domains with page tables in a `BTreeMap`, one unit per configured
//!   IOMMU, with or without snoop control;
//! * **cache maintenance**: `flush_cache(pa, len)` flushes the lines of the user virtual
//!   addresses that map `pa` (user space cannot address physical memory, so the platform keeps
//!   a pfn → vaddr map of its pins) with CLFLUSHOPT, CLWB or CLFLUSH (CPUID), between MFENCEs
//!   as `clflush_cache_range` does.
//!
//! * **device memory (peer-to-peer)**: a device BAR mapped into the process ([`HostPlatform::map_mmio`])
//!   is PFNMAP memory: pinning it returns *reserved* pfns in a range of its own (from
//!   [`MMIO_PFN_BASE`]; the host's pagemap has nothing useful to say about such memory), which
//!   the engine neither refcounts nor charges and flushes only if [`Platform::pfn_memtype`]
//!   says the memory is cacheable;
//! * **device DMA**: [`HostPlatform::dma`] translates an IOVA through a domain's page table
//!   and copies to or from the page it reaches (pinned RAM or mapped device memory), checking
//!   the mapping's protection.
//!
//! Neighbours: `type1-core` defines the seam; `type1-sim` is the simulated twin;
//! `type1-preload` drives this platform through `type1-uapi`. All system calls are raw
//! (`sys`), so an interposing library never sees them.

pub mod sys;

use std::collections::{BTreeMap, HashMap};

use type1_core::{
    DomainId, DomainInfo, Errno, Event, GroupId, GroupInfo, IovaRange, MemType, MmId, PinnedPage,
    Platform, PlatformError, Prot, ResvKind, ResvRegion, Task, PAGE_SHIFT, PAGE_SIZE,
};

pub use sys::FlushInsn;

/// The one address space of the host platform: the calling process.
pub const SELF_MM: MmId = MmId(1);

/// Synthetic PFNs (when pagemap hides real ones) start here, above any real RAM.
const SYNTH_PFN_BASE: u64 = 1 << 44;

/// Device memory (BAR) pfns start here: above real RAM, below the synthetic RAM pfns.
pub const MMIO_PFN_BASE: u64 = 1 << 40;

/// Why [`HostPlatform::dma`] could not reach memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// No page-table entry at the IOVA (or no such domain).
    Unmapped,
    /// The entry does not allow the access.
    Permission,
    /// The entry's page is no longer reachable from this process.
    Unreachable,
}

#[derive(Clone, Copy, Debug)]
struct MmioPage {
    /// Where the page is mapped now, if anywhere.
    vaddr: Option<u64>,
    memtype: MemType,
}

/// Pages pinned per `pin_user_pages` call at most (the engine asks again for the rest).
const PIN_CHUNK: u64 = 512;

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

#[derive(Debug)]
struct Domain {
    unit: usize,
    enforcing: bool,
    groups: Vec<GroupId>,
    /// iova page → (pa page, prot).
    ptes: BTreeMap<u64, (u64, Prot)>,
}

#[derive(Clone, Copy, Debug)]
struct PinRec {
    vaddr: u64,
    count: u64,
}

/// Counters of what the platform did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// `flush_cache` calls.
    pub flush_calls: u64,
    /// Cache lines flushed.
    pub lines_flushed: u64,
    /// Pages asked to be flushed that had no known user mapping (not flushed).
    pub pages_unresolved: u64,
    /// Pages pinned (calls × pages).
    pub pages_pinned: u64,
}

/// Where trace events go.
enum Sink {
    None,
    Fd(i32),
    Memory(Vec<Event>),
}

/// The platform for the calling process. See the crate documentation.
pub struct HostPlatform {
    cfg: HostConfig,
    locked_vm: u64,
    pagemap: Option<(i32, i32)>, // (pid, fd)
    pins: HashMap<u64, PinRec>,
    vpins: HashMap<u64, u64>,
    synth: HashMap<u64, u64>, // vaddr page → synthetic pfn
    next_synth: u64,
    domains: BTreeMap<u32, Domain>,
    next_domain: u32,
    /// Device memory mapped in the process: vaddr page → pfn, and every pfn ever mapped.
    mmio_pages: HashMap<u64, u64>,
    mmio_pfns: BTreeMap<u64, MmioPage>,
    flush: (FlushInsn, u64),
    stats: HostStats,
    sink: Sink,
    seq: u64,
    /// Overrides of the task's credentials (tests).
    task_override: Option<Task>,
}

impl std::fmt::Debug for HostPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPlatform")
            .field("cfg", &self.cfg)
            .field("locked_vm", &self.locked_vm)
            .field("pinned_pfns", &self.pins.len())
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
        HostPlatform {
            cfg,
            locked_vm: 0,
            pagemap: None,
            pins: HashMap::new(),
            vpins: HashMap::new(),
            synth: HashMap::new(),
            next_synth: SYNTH_PFN_BASE,
            domains: BTreeMap::new(),
            next_domain: 0,
            mmio_pages: HashMap::new(),
            mmio_pfns: BTreeMap::new(),
            flush: sys::detect_flush(),
            stats: HostStats::default(),
            sink: Sink::None,
            seq: 0,
            task_override: None,
        }
    }

    /// Writes the trace as JSON lines (`{"seq":N,"ev":...}`, `docs/trace.md`) to `fd`, which
    /// the platform then owns.
    pub fn trace_to_fd(&mut self, fd: i32) {
        self.sink = Sink::Fd(fd);
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

    /// Replaces what [`Platform::current`] reports (tests of the accounting rules).
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

    /// Number of distinct pinned frames.
    pub fn pinned_frames(&self) -> usize {
        self.pins.len()
    }

    /// Number of live domains.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// The user virtual address a pinned pfn is mapped at.
    pub fn vaddr_of_pfn(&self, pfn: u64) -> Option<u64> {
        self.pins.get(&pfn).map(|r| r.vaddr)
    }

    /// Translates `iova` through `domain` and on to this process's virtual address, for DMA
    /// emulation: `(vaddr, prot)`.
    pub fn iova_to_vaddr(&self, domain: DomainId, iova: u64) -> Option<(u64, Prot)> {
        let d = self.domains.get(&domain.0)?;
        let (pfn, prot) = *d.ptes.get(&(iova >> PAGE_SHIFT))?;
        let v = self.vaddr_of_any_pfn(pfn)?;
        Some((v + (iova & (PAGE_SIZE - 1)), prot))
    }

    fn vaddr_of_any_pfn(&self, pfn: u64) -> Option<u64> {
        match self.pins.get(&pfn) {
            Some(r) => Some(r.vaddr),
            None => self.mmio_pfns.get(&pfn)?.vaddr,
        }
    }

    /// Device DMA of `buf.len()` bytes at `iova` through `domain`, within one page: to memory
    /// (`to_memory`, needs the mapping's write permission) or from it (needs read).
    pub fn dma(
        &mut self,
        domain: DomainId,
        iova: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaError> {
        debug_assert!(iova % PAGE_SIZE + buf.len() as u64 <= PAGE_SIZE);
        let d = self.domains.get(&domain.0).ok_or(DmaError::Unmapped)?;
        let (pfn, prot) = *d
            .ptes
            .get(&(iova >> PAGE_SHIFT))
            .ok_or(DmaError::Unmapped)?;
        if (to_memory && !prot.write) || (!to_memory && !prot.read) {
            return Err(DmaError::Permission);
        }
        let v = self.vaddr_of_any_pfn(pfn).ok_or(DmaError::Unreachable)? + iova % PAGE_SIZE;
        let r = if to_memory {
            sys::write_user(v, buf)
        } else {
            sys::read_user(v, buf)
        };
        r.map_err(|_| DmaError::Unreachable)
    }

    /// Records that device memory (a BAR) is mapped at `vaddr` for `npages` pages, with frames
    /// `first_pfn..` (each at least [`MMIO_PFN_BASE`]) of memory type `memtype`. Pinning those
    /// pages then returns these reserved pfns.
    pub fn map_mmio(&mut self, vaddr: u64, npages: u64, first_pfn: u64, memtype: MemType) {
        for i in 0..npages {
            let (page, pfn) = (vaddr + i * PAGE_SIZE, first_pfn + i);
            self.mmio_pages.insert(page, pfn);
            self.mmio_pfns.insert(
                pfn,
                MmioPage {
                    vaddr: Some(page),
                    memtype,
                },
            );
        }
    }

    /// `munmap` of `[vaddr, vaddr + len)`: device memory there is no longer mapped (its pfns
    /// stay reserved, as the BAR still exists).
    pub fn unmap_mmio(&mut self, vaddr: u64, len: u64) {
        if self.mmio_pages.is_empty() {
            return;
        }
        let first = vaddr & !(PAGE_SIZE - 1);
        let mut page = first;
        while page < vaddr.saturating_add(len) {
            if let Some(pfn) = self.mmio_pages.remove(&page) {
                if let Some(m) = self.mmio_pfns.get_mut(&pfn) {
                    if m.vaddr == Some(page) {
                        m.vaddr = None;
                    }
                }
            }
            page += PAGE_SIZE;
        }
    }

    fn pagemap_fd(&mut self) -> Result<i32, Errno> {
        let pid = sys::getpid();
        match self.pagemap {
            Some((p, fd)) if p == pid => Ok(fd),
            other => {
                if let Some((_, fd)) = other {
                    sys::close(fd); // inherited across fork: it describes the parent
                }
                let fd = sys::open_ro(c"/proc/self/pagemap")?;
                self.pagemap = Some((pid, fd));
                Ok(fd)
            }
        }
    }

    /// Faults in `n` pages at `vaddr` (write intent if `write`): the number of leading pages
    /// that could be faulted in.
    fn populate(vaddr: u64, n: u64, write: bool) -> u64 {
        let advice = if write {
            libc::MADV_POPULATE_WRITE
        } else {
            libc::MADV_POPULATE_READ
        };
        if sys::madvise(vaddr, n * PAGE_SIZE, advice).is_ok() {
            return n;
        }
        (0..n)
            .take_while(|i| sys::madvise(vaddr + i * PAGE_SIZE, PAGE_SIZE, advice).is_ok())
            .count() as u64
    }

    fn translate(&mut self, vaddr: u64, n: u64) -> Result<Vec<u64>, Errno> {
        let fd = self.pagemap_fd()?;
        let mut raw = vec![0u8; (n * 8) as usize];
        let got = sys::pread(fd, &mut raw, (vaddr >> PAGE_SHIFT) * 8)?;
        let mut out = Vec::new();
        for i in 0..(got / 8) as u64 {
            let e = u64::from_le_bytes(
                raw[(i * 8) as usize..(i * 8 + 8) as usize]
                    .try_into()
                    .unwrap_or([0; 8]),
            );
            if e >> 63 == 0 {
                break; // not present
            }
            let pfn = e & ((1 << 55) - 1);
            let page = vaddr + i * PAGE_SIZE;
            if pfn == 0 {
                // No CAP_SYS_ADMIN: pagemap hides PFNs. Hand out a stable synthetic one.
                let next = &mut self.next_synth;
                let s = *self.synth.entry(page).or_insert_with(|| {
                    *next += 1;
                    *next
                });
                out.push(s);
            } else {
                out.push(pfn);
            }
        }
        Ok(out)
    }

    fn unpin_vaddr(&mut self, vaddr: u64) {
        if let Some(c) = self.vpins.get_mut(&vaddr) {
            *c -= 1;
            if *c == 0 {
                self.vpins.remove(&vaddr);
                sys::munlock(vaddr, PAGE_SIZE);
            }
        }
    }

    fn emit(&mut self, event: &Event) {
        if let Sink::Fd(fd) = self.sink {
            self.seq += 1;
            if let Ok(json) = serde_json::to_string(event) {
                let line = format!(
                    "{{\"seq\":{},{}\n",
                    self.seq,
                    json.strip_prefix('{').unwrap_or(&json)
                );
                let _ = sys::write_all(fd, line.as_bytes());
            }
        }
    }
}

impl Drop for HostPlatform {
    fn drop(&mut self) {
        if let Some((_, fd)) = self.pagemap.take() {
            sys::close(fd);
        }
        if let Sink::Fd(fd) = self.sink {
            sys::close(fd);
        }
    }
}

impl Platform for HostPlatform {
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
        vaddr: u64,
        npages: u64,
        write: bool,
    ) -> Result<Vec<PinnedPage>, PlatformError> {
        let what = || format!("pin vaddr 0x{vaddr:x}");
        if vaddr % PAGE_SIZE != 0 || npages == 0 {
            return Err(perr(Errno::EINVAL, what()));
        }
        let n = npages.min(PIN_CHUNK);
        // Device memory: reserved pfns, neither faulted in nor locked (follow_fault_pfn).
        let mmio: Vec<PinnedPage> = (0..n)
            .map_while(|i| self.mmio_pages.get(&(vaddr + i * PAGE_SIZE)))
            .map(|&pfn| PinnedPage {
                pfn,
                reserved: true,
            })
            .collect();
        if !mmio.is_empty() {
            return Ok(mmio);
        }
        // Ordinary memory up to the next device page.
        let n = (0..n)
            .take_while(|i| !self.mmio_pages.contains_key(&(vaddr + i * PAGE_SIZE)))
            .count() as u64;
        let n = Self::populate(vaddr, n, write);
        if n == 0 {
            return Err(perr(Errno::EFAULT, what()));
        }
        // Lock what is not locked by an earlier pin of ours.
        for i in 0..n {
            let page = vaddr + i * PAGE_SIZE;
            if !self.vpins.contains_key(&page) {
                if let Err(e) = sys::mlock(page, PAGE_SIZE) {
                    // Undo the locks of this call.
                    for j in 0..i {
                        let p = vaddr + j * PAGE_SIZE;
                        if !self.vpins.contains_key(&p) {
                            sys::munlock(p, PAGE_SIZE);
                        }
                    }
                    let errno = if e == Errno::EPERM || e == Errno::EAGAIN {
                        Errno::ENOMEM
                    } else {
                        e
                    };
                    return Err(perr(errno, format!("mlock 0x{page:x}")));
                }
            }
        }
        let pfns = self.translate(vaddr, n).map_err(|e| perr(e, what()))?;
        let got = pfns.len() as u64;
        // Unlock pages locked above that are not being returned.
        for i in got..n {
            let p = vaddr + i * PAGE_SIZE;
            if !self.vpins.contains_key(&p) {
                sys::munlock(p, PAGE_SIZE);
            }
        }
        if pfns.is_empty() {
            return Err(perr(Errno::EFAULT, what()));
        }
        let mut out = Vec::with_capacity(pfns.len());
        for (i, pfn) in pfns.into_iter().enumerate() {
            let page = vaddr + i as u64 * PAGE_SIZE;
            *self.vpins.entry(page).or_default() += 1;
            let rec = self.pins.entry(pfn).or_insert(PinRec {
                vaddr: page,
                count: 0,
            });
            rec.count += 1;
            out.push(PinnedPage {
                pfn,
                reserved: false,
            });
        }
        self.stats.pages_pinned += got;
        Ok(out)
    }

    fn unpin_page(&mut self, pfn: u64, _dirty: bool) {
        let Some(rec) = self.pins.get_mut(&pfn) else {
            return;
        };
        rec.count -= 1;
        let vaddr = rec.vaddr;
        if rec.count == 0 {
            self.pins.remove(&pfn);
        }
        self.unpin_vaddr(vaddr);
    }

    fn pfn_is_reserved(&self, pfn: u64) -> bool {
        self.mmio_pfns.contains_key(&pfn)
    }

    fn pfn_memtype(&self, pfn: u64) -> MemType {
        self.mmio_pfns
            .get(&pfn)
            .map(|m| m.memtype)
            .unwrap_or(MemType::Wb)
    }

    fn mm_read(&mut self, _mm: MmId, vaddr: u64, buf: &mut [u8]) -> Result<(), PlatformError> {
        sys::read_user(vaddr, buf).map_err(|e| perr(e, format!("read 0x{vaddr:x}")))
    }

    fn mm_write(&mut self, _mm: MmId, vaddr: u64, data: &[u8]) -> Result<(), PlatformError> {
        sys::write_user(vaddr, data).map_err(|e| perr(e, format!("write 0x{vaddr:x}")))
    }

    fn group_info(&self, group: GroupId) -> Result<GroupInfo, PlatformError> {
        if !self.cfg.groups.contains_key(&group.0) {
            return Err(perr(Errno::ENODEV, format!("group {group} does not exist")));
        }
        Ok(GroupInfo {
            emulated: false,
            reserved: vec![ResvRegion {
                range: IovaRange {
                    start: 0xfee0_0000,
                    last: 0xfeef_ffff,
                },
                kind: ResvKind::Msi,
            }],
            msi_isolated: true,
        })
    }

    fn domain_alloc(&mut self, group: GroupId) -> Result<DomainId, PlatformError> {
        let unit = *self
            .cfg
            .groups
            .get(&group.0)
            .ok_or_else(|| perr(Errno::ENODEV, format!("group {group}")))?;
        self.next_domain += 1;
        self.domains.insert(
            self.next_domain,
            Domain {
                unit,
                enforcing: false,
                groups: Vec::new(),
                ptes: BTreeMap::new(),
            },
        );
        Ok(DomainId(self.next_domain))
    }

    fn domain_info(&self, _domain: DomainId) -> DomainInfo {
        DomainInfo {
            ops: 1,
            aperture: IovaRange {
                start: 0,
                last: (1 << 48) - 1,
            },
            pgsize_bitmap: (1 << 12) | (1 << 21) | (1 << 30),
        }
    }

    fn domain_enforce_cache_coherency(&mut self, domain: DomainId) -> bool {
        let Some(d) = self.domains.get_mut(&domain.0) else {
            return false;
        };
        let snoop = self.cfg.units.get(d.unit).is_some_and(|u| u.snoop_control);
        if snoop {
            d.enforcing = true;
        }
        snoop
    }

    fn domain_free(&mut self, domain: DomainId) {
        self.domains.remove(&domain.0);
    }

    fn attach_group(&mut self, domain: DomainId, group: GroupId) -> Result<(), PlatformError> {
        let unit = *self
            .cfg
            .groups
            .get(&group.0)
            .ok_or_else(|| perr(Errno::ENODEV, format!("group {group}")))?;
        let d = self
            .domains
            .get_mut(&domain.0)
            .ok_or_else(|| perr(Errno::ENODEV, format!("domain {domain}")))?;
        if d.unit != unit {
            return Err(perr(
                Errno::EINVAL,
                format!("group {group} is behind another IOMMU unit"),
            ));
        }
        if d.groups.contains(&group) {
            return Err(perr(
                Errno::EINVAL,
                format!("group {group} already attached"),
            ));
        }
        d.groups.push(group);
        Ok(())
    }

    fn detach_group(&mut self, domain: DomainId, group: GroupId) {
        if let Some(d) = self.domains.get_mut(&domain.0) {
            d.groups.retain(|g| *g != group);
        }
    }

    fn iommu_map(
        &mut self,
        domain: DomainId,
        iova: u64,
        pa: u64,
        size: u64,
        prot: Prot,
    ) -> Result<(), PlatformError> {
        let d = self
            .domains
            .get_mut(&domain.0)
            .ok_or_else(|| perr(Errno::ENODEV, format!("domain {domain}")))?;
        let (ip, pp, n) = (iova >> PAGE_SHIFT, pa >> PAGE_SHIFT, size >> PAGE_SHIFT);
        if (0..n).any(|i| d.ptes.contains_key(&(ip + i))) {
            return Err(perr(
                Errno::EEXIST,
                format!("iova 0x{iova:x} already mapped"),
            ));
        }
        for i in 0..n {
            d.ptes.insert(ip + i, (pp + i, prot));
        }
        Ok(())
    }

    fn iommu_unmap(&mut self, domain: DomainId, iova: u64, size: u64) -> u64 {
        let Some(d) = self.domains.get_mut(&domain.0) else {
            return 0;
        };
        let mut done = 0;
        while done < size && d.ptes.remove(&((iova + done) >> PAGE_SHIFT)).is_some() {
            done += PAGE_SIZE;
        }
        done
    }

    fn iotlb_sync(&mut self, _domain: DomainId) {}

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        let d = self.domains.get(&domain.0)?;
        d.ptes
            .get(&(iova >> PAGE_SHIFT))
            .map(|(pp, _)| (pp << PAGE_SHIFT) | (iova & (PAGE_SIZE - 1)))
    }

    fn flush_cache(&mut self, pa: u64, len: u64) {
        self.stats.flush_calls += 1;
        let (insn, line) = self.flush;
        let end = pa.saturating_add(len);
        let mut at = pa;
        while at < end {
            let pfn = at >> PAGE_SHIFT;
            let page_end = ((pfn + 1) << PAGE_SHIFT).min(end);
            let vaddr = self.pins.get(&pfn).map(|r| r.vaddr);
            // The page must still be mapped at the address it was pinned from (the user may
            // have unmapped it since; the kernel's pins do not care, a user-space flush would
            // fault). Device memory: where it is mapped now, if anywhere.
            let still = match vaddr {
                Some(v) => {
                    Some(v).filter(|v| self.translate(*v, 1).ok().as_deref() == Some(&[pfn][..]))
                }
                None => self.mmio_pfns.get(&pfn).and_then(|m| m.vaddr),
            };
            match still {
                Some(v) => {
                    let v = v + (at & (PAGE_SIZE - 1));
                    // SAFETY: pagemap just showed the page present at `v`'s page, and
                    // `[at, page_end)` stays inside that page.
                    self.stats.lines_flushed +=
                        unsafe { sys::flush_range(insn, line, v, page_end - at) };
                }
                None => self.stats.pages_unresolved += 1,
            }
            at = page_end;
        }
    }

    fn trace(&mut self, event: Event) {
        self.emit(&event);
        if let Sink::Memory(v) = &mut self.sink {
            v.push(event);
        }
    }
}
