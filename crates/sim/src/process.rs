//! Processes: their regions (anonymous memory, faulted in on first touch, or PFNMAP MMIO),
//! page tables and CPU loads and stores through the write-back cache.

use std::collections::BTreeMap;

use type1_core::{Errno, MemType, MmId, PlatformError, PAGE_SHIFT, PAGE_SIZE};

use crate::{
    memory::{DEFAULT_MEMLOCK_LIMIT_PAGES, FOLIO_PAGES, LINE_SIZE},
    perr, Sim,
};

/// What backs a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegionKind {
    Anon,
    Mmio { base_pfn: u64 },
}

/// A mapped virtual range of a process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub len: u64,
    pub writable: bool,
    pub kind: RegionKind,
}

/// The processes of the machine. Invariant: `current`, when set, names a process of `procs`
/// (an `MmId` is an index into it; processes are never removed, only marked dead).
#[derive(Clone, Debug, Default)]
pub(crate) struct Tasks {
    pub procs: Vec<Process>,
    pub current: Option<MmId>,
}

impl Tasks {
    /// Broken invariants of this part (see the type), one line each.
    pub(crate) fn invariant_errors(&self) -> Vec<String> {
        match self.current {
            Some(mm) if mm.0 as usize >= self.procs.len() => {
                vec![format!("current process {mm:?} does not exist")]
            }
            _ => Vec::new(),
        }
    }
}

/// A process (address space).
#[derive(Clone, Debug)]
pub(crate) struct Process {
    pub name: String,
    pub alive: bool,
    pub regions: BTreeMap<u64, Region>,
    /// Virtual page number -> pfn, anonymous pages only.
    pub pt: BTreeMap<u64, u64>,
    /// Transparent huge pages: 2 MiB virtual page number -> first of its 512 frames.
    pub huge: BTreeMap<u64, u64>,
    pub locked_vm: u64,
    pub memlock_limit_pages: u64,
    pub cap_ipc_lock: bool,
}

/// log2 of a transparent huge page's size (2 MiB).
const HUGE_SHIFT: u32 = 21;

/// The 4 KiB page of `vaddr` within its huge page.
fn huge_index(vaddr: u64) -> u64 {
    (vaddr >> PAGE_SHIFT) & (FOLIO_PAGES - 1)
}

pub(crate) fn check_range(vaddr: u64, len: u64) -> Result<u64, PlatformError> {
    if vaddr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 {
        return Err(perr(
            Errno::EINVAL,
            format!("vaddr 0x{vaddr:x} or len 0x{len:x} is zero or not page aligned"),
        ));
    }
    vaddr.checked_add(len - 1).ok_or_else(|| {
        perr(
            Errno::EINVAL,
            format!("vaddr 0x{vaddr:x} + len 0x{len:x} wraps"),
        )
    })
}

impl Sim {
    // ---- frames a page fault takes (zeroed through the cache) ----------------------------

    /// Takes the most recently freed frame, bumps its generation and zeroes it through the
    /// cache (dirty zero lines; RAM keeps the previous owner's bytes).
    pub(crate) fn alloc_frame(&mut self) -> Option<u64> {
        let pfn = self.mem.pop_free()?;
        self.init_frame(pfn);
        Some(pfn)
    }

    /// Takes a transparent huge page: 512 fresh frames, 2 MiB aligned, each set up as
    /// [`Self::alloc_frame`] sets up one. Returns the first.
    pub(crate) fn alloc_folio(&mut self) -> Option<u64> {
        let base = self.mem.pop_folio()?;
        for pfn in base..base + FOLIO_PAGES {
            self.init_frame(pfn);
        }
        Some(base)
    }

    /// A frame just taken off the free list: a new generation, mapped, zeroed through the
    /// cache.
    fn init_frame(&mut self, pfn: u64) {
        let f = &mut self.mem.frames[pfn as usize];
        f.gen += 1;
        f.in_use = true;
        f.exposed = false;
        self.obs.stats.frames_allocated += 1;
        self.cache.fill_zero_dirty(pfn);
        self.note_pfn(pfn);
    }

    /// Creates a process with an empty address space, the default RLIMIT_MEMLOCK and no
    /// CAP_IPC_LOCK.
    pub fn create_process(&mut self, name: &str) -> MmId {
        self.tasks.procs.push(Process {
            name: name.to_string(),
            alive: true,
            regions: BTreeMap::new(),
            pt: BTreeMap::new(),
            huge: BTreeMap::new(),
            locked_vm: 0,
            memlock_limit_pages: DEFAULT_MEMLOCK_LIMIT_PAGES,
            cap_ipc_lock: false,
        });
        MmId(self.tasks.procs.len() as u32 - 1)
    }

    /// Makes `mm` the calling task of subsequent engine calls (`None`: no user context).
    pub fn set_current(&mut self, mm: Option<MmId>) {
        self.tasks.current = mm;
    }

    /// The process name of `mm`.
    pub fn process_name(&self, mm: MmId) -> Option<&str> {
        self.tasks.procs.get(mm.0 as usize).map(|p| p.name.as_str())
    }

    /// Every process id, dead or alive.
    pub fn processes(&self) -> Vec<MmId> {
        (0..self.tasks.procs.len() as u32).map(MmId).collect()
    }

    /// Sets the RLIMIT_MEMLOCK of `mm`, in pages (ignored for an unknown mm).
    pub fn set_memlock_limit(&mut self, mm: MmId, pages: u64) {
        if let Some(p) = self.tasks.procs.get_mut(mm.0 as usize) {
            p.memlock_limit_pages = pages;
        }
    }

    /// Grants or revokes CAP_IPC_LOCK for `mm` (ignored for an unknown mm).
    pub fn set_cap_ipc_lock(&mut self, mm: MmId, cap: bool) {
        if let Some(p) = self.tasks.procs.get_mut(mm.0 as usize) {
            p.cap_ipc_lock = cap;
        }
    }

    /// Process teardown: the address space dies and every region is unmapped (pinned frames
    /// stay allocated until their last pin drops).
    pub fn exit_process(&mut self, mm: MmId) {
        let Some(p) = self.tasks.procs.get_mut(mm.0 as usize) else {
            return;
        };
        if !p.alive {
            return;
        }
        p.alive = false;
        self.note_all();
        let p = &mut self.tasks.procs[mm.0 as usize];
        p.regions.clear();
        let pt = std::mem::take(&mut p.pt);
        let huge = std::mem::take(&mut p.huge);
        let folios = huge.into_values().flat_map(|base| base..base + FOLIO_PAGES);
        for pfn in pt.into_values().chain(folios) {
            self.release_frame(pfn);
        }
    }

    pub(crate) fn proc_ref(&self, mm: MmId) -> Result<&Process, PlatformError> {
        match self.tasks.procs.get(mm.0 as usize) {
            Some(p) if p.alive => Ok(p),
            Some(_) => Err(perr(Errno::EFAULT, format!("mm {mm} has exited"))),
            None => Err(perr(Errno::EFAULT, format!("mm {mm} does not exist"))),
        }
    }

    pub(crate) fn proc_mut(&mut self, mm: MmId) -> Result<&mut Process, PlatformError> {
        match self.tasks.procs.get_mut(mm.0 as usize) {
            Some(p) if p.alive => Ok(p),
            Some(_) => Err(perr(Errno::EFAULT, format!("mm {mm} has exited"))),
            None => Err(perr(Errno::EFAULT, format!("mm {mm} does not exist"))),
        }
    }

    pub(crate) fn add_region(
        &mut self,
        mm: MmId,
        vaddr: u64,
        len: u64,
        region: Region,
    ) -> Result<(), PlatformError> {
        let last = check_range(vaddr, len)?;
        let p = self.proc_mut(mm)?;
        let overlap = p
            .regions
            .range(..=last)
            .next_back()
            .is_some_and(|(s, r)| s + (r.len - 1) >= vaddr);
        if overlap {
            return Err(perr(
                Errno::EEXIST,
                format!("mm {mm}: vaddr 0x{vaddr:x} len 0x{len:x} overlaps an existing region"),
            ));
        }
        p.regions.insert(vaddr, region);
        self.note_vpn(mm, vaddr, len);
        Ok(())
    }

    /// Maps anonymous memory (faulted in on first touch).
    pub fn mmap_anon(
        &mut self,
        mm: MmId,
        vaddr: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), PlatformError> {
        self.add_region(
            mm,
            vaddr,
            len,
            Region {
                len,
                writable,
                kind: RegionKind::Anon,
            },
        )
    }

    /// Maps MMIO pfns `base_pfn..` (PFNMAP, e.g. a BAR) with host memory type `memtype`. The
    /// pfns must lie outside RAM; if a described MMIO range covers them its memtype must match,
    /// otherwise the range is registered with `memtype`.
    pub fn mmap_mmio(
        &mut self,
        mm: MmId,
        vaddr: u64,
        len: u64,
        base_pfn: u64,
        memtype: MemType,
        writable: bool,
    ) -> Result<(), PlatformError> {
        check_range(vaddr, len)?;
        let npages = len >> PAGE_SHIFT;
        let end = base_pfn
            .checked_add(npages)
            .filter(|e| *e <= crate::machine::MAX_PFN)
            .ok_or_else(|| {
                perr(
                    Errno::EINVAL,
                    format!("base_pfn 0x{base_pfn:x} + {npages} pages is too high"),
                )
            })?;
        if base_pfn <= self.desc.memory_frames {
            return Err(perr(
                Errno::EINVAL,
                format!("base_pfn 0x{base_pfn:x} lies in RAM"),
            ));
        }
        let mut uncovered = Vec::new();
        let mut p = base_pfn;
        while p < end {
            match self.mem.mmio_ranges.iter().find(|r| r.contains(p)) {
                Some(r) if r.memtype != memtype => {
                    return Err(perr(
                        Errno::EINVAL,
                        format!("pfn 0x{p:x} is {:?} mmio, not {memtype:?}", r.memtype),
                    ))
                }
                Some(r) => p = r.base_pfn + r.npages,
                None => {
                    let next = self
                        .mem
                        .mmio_ranges
                        .iter()
                        .filter(|r| r.base_pfn > p)
                        .map(|r| r.base_pfn)
                        .min()
                        .unwrap_or(end)
                        .min(end);
                    uncovered.push(crate::MmioDesc {
                        base_pfn: p,
                        npages: next - p,
                        memtype,
                    });
                    p = next;
                }
            }
        }
        self.add_region(
            mm,
            vaddr,
            len,
            Region {
                len,
                writable,
                kind: RegionKind::Mmio { base_pfn },
            },
        )?;
        self.mem.mmio_ranges.extend(uncovered);
        Ok(())
    }

    /// Unmaps `[vaddr, vaddr + len)`, splitting regions as needed. Frames are freed unless
    /// pinned.
    pub fn munmap(&mut self, mm: MmId, vaddr: u64, len: u64) -> Result<(), PlatformError> {
        let last = check_range(vaddr, len)?;
        self.proc_ref(mm)?;
        self.note_vpn(mm, vaddr, len);
        let p = self.proc_mut(mm)?;
        let hits: Vec<(u64, Region)> = p
            .regions
            .range(..=last)
            .filter(|(s, r)| *s + (r.len - 1) >= vaddr)
            .map(|(s, r)| (*s, *r))
            .collect();
        for (s, r) in hits {
            p.regions.remove(&s);
            let rlast = s + (r.len - 1);
            if s < vaddr {
                p.regions.insert(
                    s,
                    Region {
                        len: vaddr - s,
                        ..r
                    },
                );
            }
            if rlast > last {
                let ns = last + 1;
                let kind = match r.kind {
                    RegionKind::Anon => RegionKind::Anon,
                    RegionKind::Mmio { base_pfn } => RegionKind::Mmio {
                        base_pfn: base_pfn + ((ns - s) >> PAGE_SHIFT),
                    },
                };
                p.regions.insert(
                    ns,
                    Region {
                        len: rlast - last,
                        writable: r.writable,
                        kind,
                    },
                );
            }
        }
        // A huge page the range touches is split into 512 small ones first, as the kernel
        // splits a THP that is partly unmapped.
        let hits: Vec<(u64, u64)> = p
            .huge
            .range(vaddr >> HUGE_SHIFT..=last >> HUGE_SHIFT)
            .map(|(h, b)| (*h, *b))
            .collect();
        for (h, base) in hits {
            p.huge.remove(&h);
            for i in 0..FOLIO_PAGES {
                p.pt.insert((h << (HUGE_SHIFT - PAGE_SHIFT)) + i, base + i);
            }
        }
        let vpns: Vec<u64> =
            p.pt.range(vaddr >> PAGE_SHIFT..=last >> PAGE_SHIFT)
                .map(|(k, _)| *k)
                .collect();
        let mut pfns = Vec::with_capacity(vpns.len());
        for v in vpns {
            if let Some(pfn) = p.pt.remove(&v) {
                pfns.push(pfn);
            }
        }
        for pfn in pfns {
            self.release_frame(pfn);
        }
        Ok(())
    }

    /// The frame behind `vaddr` of `mm` without faulting it in: `(pfn, reserved)`.
    pub fn translate(&self, mm: MmId, vaddr: u64) -> Option<(u64, bool)> {
        let p = self.tasks.procs.get(mm.0 as usize).filter(|p| p.alive)?;
        let (s, r) = p.regions.range(..=vaddr).next_back()?;
        if vaddr - s >= r.len {
            return None;
        }
        match r.kind {
            RegionKind::Anon => {
                p.pt.get(&(vaddr >> PAGE_SHIFT))
                    .copied()
                    .or_else(|| Some(p.huge.get(&(vaddr >> HUGE_SHIFT))? + huge_index(vaddr)))
                    .map(|pfn| (pfn, false))
            }
            RegionKind::Mmio { base_pfn } => Some((base_pfn + ((vaddr - s) >> PAGE_SHIFT), true)),
        }
    }

    /// The frame behind `vaddr`, faulting anonymous memory in. EFAULT if unbacked or if `write`
    /// hits a read-only region; ENOMEM when RAM is exhausted.
    pub(crate) fn fault_in(
        &mut self,
        mm: MmId,
        vaddr: u64,
        write: bool,
    ) -> Result<(u64, bool), PlatformError> {
        let (s, kind) = self.region_at(mm, vaddr, write)?;
        if let RegionKind::Mmio { base_pfn } = kind {
            return Ok((base_pfn + ((vaddr - s) >> PAGE_SHIFT), true));
        }
        let vpn = vaddr >> PAGE_SHIFT;
        let p = self.proc_ref(mm)?;
        if let Some(pfn) = p.pt.get(&vpn) {
            return Ok((*pfn, false));
        }
        let hv = vaddr >> HUGE_SHIFT;
        if let Some(base) = p.huge.get(&hv) {
            return Ok((base + huge_index(vaddr), false));
        }
        // With transparent huge pages, a 2 MiB block that one anonymous region covers whole
        // is faulted in as one huge page while aligned fresh frames are left.
        let block = hv << HUGE_SHIFT;
        let covers = p.regions.get(&s).is_some_and(|r| {
            s <= block
                && block
                    .checked_add(1 << HUGE_SHIFT)
                    .is_some_and(|e| e <= s + r.len)
        });
        if self.desc.thp && covers {
            if let Some(base) = self.alloc_folio() {
                self.tasks.procs[mm.0 as usize].huge.insert(hv, base);
                self.note_vpn(mm, block, 1 << HUGE_SHIFT);
                return Ok((base + huge_index(vaddr), false));
            }
        }
        let pfn = self
            .alloc_frame()
            .ok_or_else(|| perr(Errno::ENOMEM, "out of simulated RAM"))?;
        self.tasks.procs[mm.0 as usize].pt.insert(vpn, pfn);
        self.note_vpn(mm, vaddr, PAGE_SIZE);
        Ok((pfn, false))
    }

    pub(crate) fn cpu_access(
        &mut self,
        mm: MmId,
        vaddr: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(&mut Sim, u64, bool, std::ops::Range<usize>),
    ) -> Result<(), PlatformError> {
        if len == 0 {
            return Ok(());
        }
        vaddr.checked_add(len as u64 - 1).ok_or_else(|| {
            perr(
                Errno::EFAULT,
                format!("vaddr 0x{vaddr:x} + {len} bytes wraps"),
            )
        })?;
        // Validate every page first so a failing access changes nothing.
        let mut pages = Vec::new();
        let mut done = 0usize;
        while done < len {
            let va = vaddr + done as u64;
            let n = ((PAGE_SIZE - va % PAGE_SIZE) as usize).min(len - done);
            self.region_at(mm, va, write)?;
            pages.push((va, done..done + n));
            done += n;
        }
        for (va, range) in pages {
            let (pfn, reserved) = self.fault_in(mm, va, write)?;
            f(
                self,
                (pfn << PAGE_SHIFT) | (va % PAGE_SIZE),
                reserved,
                range,
            );
        }
        Ok(())
    }

    /// The region holding `vaddr` (its start and kind). EFAULT if unbacked, or if `write` hits
    /// a read-only region.
    pub(crate) fn region_at(
        &self,
        mm: MmId,
        vaddr: u64,
        write: bool,
    ) -> Result<(u64, RegionKind), PlatformError> {
        let p = self.proc_ref(mm)?;
        let unbacked = || {
            perr(
                Errno::EFAULT,
                format!("mm {mm}: vaddr 0x{vaddr:x} is not mapped"),
            )
        };
        let (s, r) = p.regions.range(..=vaddr).next_back().ok_or_else(unbacked)?;
        if vaddr - s >= r.len {
            return Err(unbacked());
        }
        if write && !r.writable {
            return Err(perr(
                Errno::EFAULT,
                format!("mm {mm}: vaddr 0x{vaddr:x} is read-only"),
            ));
        }
        Ok((*s, r.kind))
    }

    /// CPU store into `mm` at `vaddr` (through the cache).
    pub fn cpu_write(&mut self, mm: MmId, vaddr: u64, data: &[u8]) -> Result<(), PlatformError> {
        self.cpu_access(mm, vaddr, data.len(), true, |s, pa, reserved, r| {
            s.phys_cpu_write(pa, reserved, &data[r]);
        })
    }

    /// CPU load from `mm` at `vaddr` (through the cache).
    pub fn cpu_read(&mut self, mm: MmId, vaddr: u64, buf: &mut [u8]) -> Result<(), PlatformError> {
        let len = buf.len();
        let mut out = vec![0u8; len];
        self.cpu_access(mm, vaddr, len, false, |s, pa, reserved, r| {
            s.phys_cpu_read(pa, reserved, &mut out[r]);
        })?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    /// CPU memset of `len` bytes of `mm` at `vaddr` to `byte`.
    pub fn cpu_fill(
        &mut self,
        mm: MmId,
        vaddr: u64,
        len: u64,
        byte: u8,
    ) -> Result<(), PlatformError> {
        if len > 1 << 30 {
            return Err(perr(
                Errno::EINVAL,
                format!("cpu_fill len 0x{len:x} exceeds 1 GiB"),
            ));
        }
        let len = len as usize;
        let data = vec![byte; len];
        self.cpu_write(mm, vaddr, &data)
    }

    pub(crate) fn phys_cpu_write(&mut self, pa: u64, reserved: bool, data: &[u8]) {
        if reserved {
            let off = (pa % PAGE_SIZE) as usize;
            self.mmio_page_mut(pa >> PAGE_SHIFT)[off..off + data.len()].copy_from_slice(data);
            return;
        }
        let mut done = 0;
        while done < data.len() {
            let a = pa + done as u64;
            let off = (a % LINE_SIZE) as usize;
            let n = (LINE_SIZE as usize - off).min(data.len() - done);
            self.cpu_write_line(a / LINE_SIZE, off, &data[done..done + n]);
            done += n;
        }
    }

    pub(crate) fn phys_cpu_read(&mut self, pa: u64, reserved: bool, buf: &mut [u8]) {
        if reserved {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.mmio_byte(pa + i as u64);
            }
            return;
        }
        let mut done = 0;
        while done < buf.len() {
            let a = pa + done as u64;
            let off = (a % LINE_SIZE) as usize;
            let n = (LINE_SIZE as usize - off).min(buf.len() - done);
            self.cpu_read_line(a / LINE_SIZE, off, &mut buf[done..done + n]);
            done += n;
        }
    }
}
