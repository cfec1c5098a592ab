//! Physical page frames, processes and their address spaces.
//!
//! RAM frames are numbered `1..=memory_frames` (pfn 0 is never used). A frame's RAM is created
//! lazily, filled with [`INITIAL_RAM_BYTE`], and keeps its contents when the frame is freed and
//! handed out again. The free list is LIFO. Every allocation bumps the frame's generation and
//! zeroes it *through the cache*: the 64 lines become Dirty zeros, RAM is untouched. Each RAM
//! line remembers the generation at which it was last written, which is how a device read of
//! an earlier owner's data is recognised.
//!
//! A process owns regions (anonymous memory, faulted in on first touch, or PFNMAP MMIO), a page
//! table, and the RLIMIT_MEMLOCK books the engine charges. A frame is freed when no process
//! maps it and no pin holds it.

use std::collections::BTreeMap;

use type1_core::{Errno, MemType, MmId, PinnedPage, PlatformError, PAGE_SHIFT, PAGE_SIZE};

use crate::{cache::LINE_SIZE, perr, Kind, Sim};

/// The byte every RAM frame holds before anything writes it (boot-time garbage).
pub const INITIAL_RAM_BYTE: u8 = 0xa5;
/// Cache lines per page.
pub(crate) const LINES_PER_PAGE: usize = (PAGE_SIZE / LINE_SIZE) as usize;
/// Default RLIMIT_MEMLOCK of a new process, in pages (64 MiB).
pub const DEFAULT_MEMLOCK_LIMIT_PAGES: u64 = 16384;

/// RAM of a frame that has been written at least once.
#[derive(Clone, Debug)]
pub(crate) struct FrameData {
    pub ram: Box<[u8]>,
    /// Generation of the frame when each line's RAM was last written.
    pub line_gen: [u64; LINES_PER_PAGE],
    /// Hash of `ram` and `line_gen` for state digests, computed once per content: clones of
    /// the machine share the data, so the model checker hashes each page version once.
    hash: std::sync::OnceLock<u64>,
}

impl FrameData {
    /// The content hash (see [`crate::Sim::state_digest`]).
    pub(crate) fn content_hash(&self) -> u64 {
        *self.hash.get_or_init(|| {
            use std::hash::{Hash, Hasher};
            let mut h = crate::StateHasher::default();
            (&self.ram, &self.line_gen).hash(&mut h);
            h.finish()
        })
    }
}

/// A RAM page frame.
#[derive(Clone, Debug, Default)]
pub(crate) struct Frame {
    /// Shared between clones of the machine until written (model checking branches a lot).
    pub data: Option<std::sync::Arc<FrameData>>,
    pub pins: u32,
    /// Bumped at every allocation.
    pub gen: u64,
    /// Mapped by a process page table.
    pub in_use: bool,
    /// Writable by a non-coherent domain since it was last pinned.
    pub exposed: bool,
    /// Domain page-table entries plus unsynced IOTLB entries pointing at the frame.
    pub iommu_refs: u32,
    /// IOMMU entries (and unsynced IOTLB entries) of non-coherent domains with write access.
    pub nc_write_refs: u32,
    /// Flushed at least once since it was last pinned (protocol check `missing_map_flush`).
    pub flushed_since_pin: bool,
    /// Mapped into a non-coherent domain and not flushed since it left every domain
    /// (protocol check `missing_unpin_flush`, F5's ordering rule).
    pub needs_unpin_flush: bool,
}

impl Frame {
    pub(crate) fn data_mut(&mut self) -> &mut FrameData {
        let d = self.data.get_or_insert_with(|| {
            std::sync::Arc::new(FrameData {
                ram: vec![INITIAL_RAM_BYTE; PAGE_SIZE as usize].into_boxed_slice(),
                line_gen: [0; LINES_PER_PAGE],
                hash: std::sync::OnceLock::new(),
            })
        });
        let d = std::sync::Arc::make_mut(d);
        // The caller is about to change the content.
        d.hash = std::sync::OnceLock::new();
        d
    }
}

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

/// A process (address space).
#[derive(Clone, Debug)]
pub(crate) struct Process {
    pub name: String,
    pub alive: bool,
    pub regions: BTreeMap<u64, Region>,
    /// Virtual page number -> pfn, anonymous pages only.
    pub pt: BTreeMap<u64, u64>,
    pub locked_vm: u64,
    pub memlock_limit_pages: u64,
    pub cap_ipc_lock: bool,
}

fn check_range(vaddr: u64, len: u64) -> Result<u64, PlatformError> {
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
    // ---- processes -------------------------------------------------------------------------

    /// Creates a process with an empty address space, the default RLIMIT_MEMLOCK and no
    /// CAP_IPC_LOCK.
    pub fn create_process(&mut self, name: &str) -> MmId {
        self.procs.push(Process {
            name: name.to_string(),
            alive: true,
            regions: BTreeMap::new(),
            pt: BTreeMap::new(),
            locked_vm: 0,
            memlock_limit_pages: DEFAULT_MEMLOCK_LIMIT_PAGES,
            cap_ipc_lock: false,
        });
        MmId(self.procs.len() as u32 - 1)
    }

    /// Makes `mm` the calling task of subsequent engine calls (`None`: no user context).
    pub fn set_current(&mut self, mm: Option<MmId>) {
        self.current = mm;
    }

    /// The process name of `mm`.
    pub fn process_name(&self, mm: MmId) -> Option<&str> {
        self.procs.get(mm.0 as usize).map(|p| p.name.as_str())
    }

    /// Every process id, dead or alive.
    pub fn processes(&self) -> Vec<MmId> {
        (0..self.procs.len() as u32).map(MmId).collect()
    }

    /// Sets the RLIMIT_MEMLOCK of `mm`, in pages (ignored for an unknown mm).
    pub fn set_memlock_limit(&mut self, mm: MmId, pages: u64) {
        if let Some(p) = self.procs.get_mut(mm.0 as usize) {
            p.memlock_limit_pages = pages;
        }
    }

    /// Grants or revokes CAP_IPC_LOCK for `mm` (ignored for an unknown mm).
    pub fn set_cap_ipc_lock(&mut self, mm: MmId, cap: bool) {
        if let Some(p) = self.procs.get_mut(mm.0 as usize) {
            p.cap_ipc_lock = cap;
        }
    }

    /// Process teardown: the address space dies and every region is unmapped (pinned frames
    /// stay allocated until their last pin drops).
    pub fn exit_process(&mut self, mm: MmId) {
        let Some(p) = self.procs.get_mut(mm.0 as usize) else {
            return;
        };
        if !p.alive {
            return;
        }
        p.alive = false;
        p.regions.clear();
        let pt = std::mem::take(&mut p.pt);
        for pfn in pt.into_values() {
            self.release_frame(pfn);
        }
    }

    pub(crate) fn proc_ref(&self, mm: MmId) -> Result<&Process, PlatformError> {
        match self.procs.get(mm.0 as usize) {
            Some(p) if p.alive => Ok(p),
            Some(_) => Err(perr(Errno::EFAULT, format!("mm {mm} has exited"))),
            None => Err(perr(Errno::EFAULT, format!("mm {mm} does not exist"))),
        }
    }

    fn proc_mut(&mut self, mm: MmId) -> Result<&mut Process, PlatformError> {
        match self.procs.get_mut(mm.0 as usize) {
            Some(p) if p.alive => Ok(p),
            Some(_) => Err(perr(Errno::EFAULT, format!("mm {mm} has exited"))),
            None => Err(perr(Errno::EFAULT, format!("mm {mm} does not exist"))),
        }
    }

    // ---- regions ---------------------------------------------------------------------------

    fn add_region(
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
            match self.mmio_ranges.iter().find(|r| r.contains(p)) {
                Some(r) if r.memtype != memtype => {
                    return Err(perr(
                        Errno::EINVAL,
                        format!("pfn 0x{p:x} is {:?} mmio, not {memtype:?}", r.memtype),
                    ))
                }
                Some(r) => p = r.base_pfn + r.npages,
                None => {
                    let next = self
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
        self.mmio_ranges.extend(uncovered);
        Ok(())
    }

    /// Unmaps `[vaddr, vaddr + len)`, splitting regions as needed. Frames are freed unless
    /// pinned.
    pub fn munmap(&mut self, mm: MmId, vaddr: u64, len: u64) -> Result<(), PlatformError> {
        let last = check_range(vaddr, len)?;
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
        let p = self.procs.get(mm.0 as usize).filter(|p| p.alive)?;
        let (s, r) = p.regions.range(..=vaddr).next_back()?;
        if vaddr - s >= r.len {
            return None;
        }
        match r.kind {
            RegionKind::Anon => p.pt.get(&(vaddr >> PAGE_SHIFT)).map(|pfn| (*pfn, false)),
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
        if let Some(pfn) = self.proc_ref(mm)?.pt.get(&vpn) {
            return Ok((*pfn, false));
        }
        let pfn = self
            .alloc_frame()
            .ok_or_else(|| perr(Errno::ENOMEM, "out of simulated RAM"))?;
        self.procs[mm.0 as usize].pt.insert(vpn, pfn);
        Ok((pfn, false))
    }

    // ---- frames ----------------------------------------------------------------------------

    /// Takes the most recently freed frame, bumps its generation and zeroes it through the
    /// cache (dirty zero lines; RAM keeps the previous owner's bytes).
    fn alloc_frame(&mut self) -> Option<u64> {
        let pfn = self.free.pop()?;
        let f = &mut self.frames[pfn as usize];
        f.gen += 1;
        f.in_use = true;
        f.exposed = false;
        self.stats.frames_allocated += 1;
        let first = pfn * LINES_PER_PAGE as u64;
        for line in first..first + LINES_PER_PAGE as u64 {
            self.cache.insert(
                line,
                crate::cache::Line {
                    data: [0; LINE_SIZE as usize],
                    dirty: true,
                },
            );
        }
        Some(pfn)
    }

    /// A process stopped mapping `pfn`: free it unless pinned.
    fn release_frame(&mut self, pfn: u64) {
        let Some(f) = self.frames.get_mut(pfn as usize) else {
            return;
        };
        f.in_use = false;
        if f.pins == 0 {
            self.free.push(pfn);
        }
    }

    /// Pin count of a RAM frame (0 for anything else).
    pub fn frame_pins(&self, pfn: u64) -> u32 {
        if self.is_ram(pfn) {
            self.frames[pfn as usize].pins
        } else {
            0
        }
    }

    /// Allocation generation of a RAM frame (0 if never allocated).
    pub fn frame_generation(&self, pfn: u64) -> u64 {
        if self.is_ram(pfn) {
            self.frames[pfn as usize].gen
        } else {
            0
        }
    }

    /// Number of frames currently pinned.
    pub fn pinned_frames(&self) -> u64 {
        self.frames.iter().filter(|f| f.pins > 0).count() as u64
    }

    /// Frames currently pinned, with their pin counts.
    pub fn pinned_frame_list(&self) -> Vec<(u64, u32)> {
        self.frames
            .iter()
            .enumerate()
            .filter(|(_, f)| f.pins > 0)
            .map(|(i, f)| (i as u64, f.pins))
            .collect()
    }

    /// Raw RAM bytes at physical address `pa` (no cache involved); MMIO reads its backing.
    pub fn ram_read(&self, pa: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let a = pa.wrapping_add(i as u64);
            *b = if self.is_ram(a >> PAGE_SHIFT) {
                self.ram_line(a >> crate::cache::LINE_SHIFT)[(a % LINE_SIZE) as usize]
            } else {
                self.mmio_byte(a)
            };
        }
    }

    /// Coherent (CPU) view of physical address `pa`, without filling the cache.
    pub fn coherent_read(&self, pa: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let a = pa.wrapping_add(i as u64);
            *b = if self.is_ram(a >> PAGE_SHIFT) {
                self.coherent_line(a >> crate::cache::LINE_SHIFT)[(a % LINE_SIZE) as usize]
            } else {
                self.mmio_byte(a)
            };
        }
    }

    pub(crate) fn mmio_byte(&self, pa: u64) -> u8 {
        self.mmio_store
            .get(&(pa >> PAGE_SHIFT))
            .map_or(0, |p| p[(pa % PAGE_SIZE) as usize])
    }

    pub(crate) fn mmio_page_mut(&mut self, pfn: u64) -> &mut [u8] {
        self.mmio_store
            .entry(pfn)
            .or_insert_with(|| vec![0; PAGE_SIZE as usize].into_boxed_slice())
    }

    /// Host memory type of a pfn: RAM is WB, described MMIO has its type, the rest is UC.
    pub(crate) fn memtype_of(&self, pfn: u64) -> MemType {
        if self.is_ram(pfn) {
            return MemType::Wb;
        }
        self.mmio_ranges
            .iter()
            .find(|r| r.contains(pfn))
            .map_or(MemType::Uc, |r| r.memtype)
    }

    // ---- CPU access ------------------------------------------------------------------------

    fn cpu_access(
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
    fn region_at(
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

    fn phys_cpu_write(&mut self, pa: u64, reserved: bool, data: &[u8]) {
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

    fn phys_cpu_read(&mut self, pa: u64, reserved: bool, buf: &mut [u8]) {
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

    // ---- pins and accounting (the platform operations) --------------------------------------

    pub(crate) fn do_pin(
        &mut self,
        mm: MmId,
        vaddr: u64,
        npages: u64,
        write: bool,
    ) -> Result<Vec<PinnedPage>, PlatformError> {
        self.inject("pin")?;
        self.inject("translate")?;
        if npages == 0 || vaddr % PAGE_SIZE != 0 {
            self.violate(
                Kind::Contract,
                format!("pin_user_pages vaddr 0x{vaddr:x} npages {npages}"),
            );
            return Err(perr(
                Errno::EINVAL,
                format!("pin vaddr 0x{vaddr:x} npages {npages}"),
            ));
        }
        let mut out = Vec::new();
        for i in 0..npages {
            let Some(va) = vaddr.checked_add(i << PAGE_SHIFT) else {
                break;
            };
            match self.fault_in(mm, va, write) {
                Ok((pfn, reserved)) => {
                    if !reserved {
                        let f = &mut self.frames[pfn as usize];
                        if f.pins == 0 {
                            f.flushed_since_pin = false;
                            f.needs_unpin_flush = false;
                        }
                        f.pins += 1;
                    }
                    out.push(PinnedPage { pfn, reserved });
                }
                Err(e) if out.is_empty() => return Err(perr(e.errno, format!("pin {}", e.what))),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    pub(crate) fn do_unpin(&mut self, pfn: u64) {
        if !self.is_ram(pfn) {
            self.violate_at(
                Kind::Contract,
                Some(pfn),
                None,
                format!("unpin_page of reserved or invalid pfn 0x{pfn:x}"),
            );
            return;
        }
        let f = &mut self.frames[pfn as usize];
        if f.pins == 0 {
            self.violate_at(
                Kind::Contract,
                Some(pfn),
                None,
                format!("unpin_page of pfn 0x{pfn:x} with no pin (underflow)"),
            );
            return;
        }
        f.pins -= 1;
        if f.pins > 0 {
            return;
        }
        let (refs, exposed, in_use) = (f.iommu_refs, f.exposed, f.in_use);
        let needs_flush = f.needs_unpin_flush;
        f.exposed = false;
        f.needs_unpin_flush = false;
        if needs_flush {
            self.violate_at(
                Kind::MissingUnpinFlush,
                Some(pfn),
                None,
                format!("pfn 0x{pfn:x} lost its last pin without a cache flush after it left the non-coherent domain (F5)"),
            );
        }
        if refs > 0 {
            self.violate_at(
                Kind::UnpinWhileMapped,
                Some(pfn),
                None,
                format!("pfn 0x{pfn:x} lost its last pin while {refs} IOMMU entries (mapped or unsynced) still point at it"),
            );
        }
        if exposed {
            let bad = self.incoherent_bytes(pfn);
            if bad > 0 {
                self.stats.stale_after_unpin_bytes += bad;
                self.violate_at(
                    Kind::UnflushedUnpin,
                Some(pfn),
                None,
                    format!("pfn 0x{pfn:x} was reachable by a non-coherent domain and lost its last pin with {bad} bytes where cache and RAM differ"),
                );
            }
        }
        if !in_use {
            self.free.push(pfn);
        }
    }

    pub(crate) fn do_account(
        &mut self,
        mm: MmId,
        delta: i64,
        enforce_limit: bool,
    ) -> Result<(), PlatformError> {
        let alive = self.procs.get(mm.0 as usize).is_some_and(|p| p.alive);
        if !alive || delta == 0 {
            return Ok(());
        }
        if delta > 0 {
            self.inject("account")?;
        }
        let p = &mut self.procs[mm.0 as usize];
        if delta > 0 {
            let new = p.locked_vm.saturating_add(delta as u64);
            if enforce_limit && new > p.memlock_limit_pages {
                return Err(perr(
                    Errno::ENOMEM,
                    format!(
                        "mm {mm}: locked_vm {} + {delta} exceeds RLIMIT_MEMLOCK {} pages",
                        p.locked_vm, p.memlock_limit_pages
                    ),
                ));
            }
            p.locked_vm = new;
        } else {
            let d = delta.unsigned_abs();
            if d > p.locked_vm {
                let have = p.locked_vm;
                p.locked_vm = 0;
                self.violate(
                    Kind::Accounting,
                    format!("mm {mm}: locked_vm {have} uncharged by {d} (underflow)"),
                );
            } else {
                p.locked_vm -= d;
            }
        }
        Ok(())
    }

    /// `locked_vm` of `mm` in pages (0 for an unknown mm).
    pub fn locked_vm(&self, mm: MmId) -> u64 {
        self.procs.get(mm.0 as usize).map_or(0, |p| p.locked_vm)
    }

    /// Whether `mm` exists and has not exited.
    pub fn mm_alive(&self, mm: MmId) -> bool {
        self.procs.get(mm.0 as usize).is_some_and(|p| p.alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineDesc;

    fn sim() -> Sim {
        Sim::new(MachineDesc::default()).unwrap()
    }

    #[test]
    fn zeroing_through_cache_leaves_old_ram_and_flush_writes_back() {
        let mut s = sim();
        let a = s.create_process("a");
        s.mmap_anon(a, 0x1000, PAGE_SIZE, true).unwrap();
        s.cpu_fill(a, 0x1000, PAGE_SIZE, 0x5e).unwrap();
        s.writeback_all();
        let (pfn, _) = s.translate(a, 0x1000).unwrap();
        s.exit_process(a);
        let b = s.create_process("b");
        s.mmap_anon(b, 0x8000, PAGE_SIZE, true).unwrap();
        let mut buf = [1u8; 16];
        s.cpu_read(b, 0x8000, &mut buf).unwrap();
        assert_eq!(buf, [0; 16], "CPU sees zeros");
        assert_eq!(
            s.translate(b, 0x8000),
            Some((pfn, false)),
            "LIFO reuse of the freed frame"
        );
        let mut ram = [0u8; 16];
        s.ram_read(pfn << PAGE_SHIFT, &mut ram);
        assert_eq!(
            ram, [0x5e; 16],
            "RAM still holds the previous owner's bytes"
        );
        assert_eq!(s.incoherent_bytes(pfn), PAGE_SIZE);
        s.do_flush_cache(pfn << PAGE_SHIFT, PAGE_SIZE);
        s.ram_read(pfn << PAGE_SHIFT, &mut ram);
        assert_eq!(ram, [0; 16]);
        assert_eq!(s.incoherent_bytes(pfn), 0);
        assert_eq!(
            s.line_state(pfn << PAGE_SHIFT),
            None,
            "flush drops the line"
        );
        assert_eq!(s.stats().lines_written_back, LINES_PER_PAGE as u64);
    }

    #[test]
    fn fresh_ram_is_garbage_and_pinned_frames_survive_exit() {
        let mut s = sim();
        let a = s.create_process("a");
        s.mmap_anon(a, 0x1000, 2 * PAGE_SIZE, true).unwrap();
        let pinned = s.do_pin(a, 0x1000, 2, true).unwrap();
        assert_eq!(pinned.len(), 2);
        let pfn = pinned[0].pfn;
        let mut ram = [0u8; 4];
        s.ram_read(pfn << PAGE_SHIFT, &mut ram);
        assert_eq!(ram, [INITIAL_RAM_BYTE; 4]);
        s.exit_process(a);
        assert_eq!(s.frame_pins(pfn), 1);
        assert!(!s.free.contains(&pfn), "pinned frame is not freed");
        s.do_unpin(pfn);
        assert_eq!(s.free.last(), Some(&pfn), "freed at its last unpin");
        s.do_unpin(pfn);
        assert_eq!(
            s.violations().last().map(|v| v.kind.as_str()),
            Some("contract")
        );
    }

    #[test]
    fn pin_and_access_errors() {
        let mut s = sim();
        let a = s.create_process("a");
        s.mmap_anon(a, 0x1000, PAGE_SIZE, false).unwrap();
        assert_eq!(
            s.do_pin(a, 0x1000, 1, true).unwrap_err().errno,
            Errno::EFAULT
        );
        assert_eq!(
            s.do_pin(a, 0x5000, 1, false).unwrap_err().errno,
            Errno::EFAULT
        );
        assert_eq!(
            s.cpu_write(a, 0x1000, &[1]).unwrap_err().errno,
            Errno::EFAULT
        );
        assert_eq!(
            s.mmap_anon(a, 0x1000, PAGE_SIZE, true).unwrap_err().errno,
            Errno::EEXIST
        );
        assert_eq!(
            s.mmap_anon(a, 0x1001, PAGE_SIZE, true).unwrap_err().errno,
            Errno::EINVAL
        );
        assert_eq!(
            s.mmap_anon(a, !0xfff, 2 * PAGE_SIZE, true)
                .unwrap_err()
                .errno,
            Errno::EINVAL
        );
        // Partial pin at the region end.
        s.mmap_anon(a, 0x10000, PAGE_SIZE, true).unwrap();
        assert_eq!(s.do_pin(a, 0x10000, 4, true).unwrap().len(), 1);
        // Accounting limit.
        s.set_memlock_limit(a, 2);
        assert!(s.do_account(a, 2, true).is_ok());
        assert_eq!(s.do_account(a, 1, true).unwrap_err().errno, Errno::ENOMEM);
        assert!(s.do_account(a, 1, false).is_ok());
        assert!(s.do_account(a, -3, true).is_ok());
        assert_eq!(s.locked_vm(a), 0);
    }

    #[test]
    fn munmap_splits_regions() {
        let mut s = sim();
        let a = s.create_process("a");
        s.mmap_anon(a, 0x10000, 4 * PAGE_SIZE, true).unwrap();
        s.cpu_fill(a, 0x10000, 4 * PAGE_SIZE, 1).unwrap();
        s.munmap(a, 0x11000, PAGE_SIZE).unwrap();
        assert!(s.translate(a, 0x10000).is_some());
        assert!(s.translate(a, 0x11000).is_none());
        assert!(s.translate(a, 0x12000).is_some());
        assert_eq!(
            s.cpu_write(a, 0x11000, &[1]).unwrap_err().errno,
            Errno::EFAULT
        );
        s.mmap_mmio(a, 0x100000, 4 * PAGE_SIZE, 0x10_0100, MemType::Wb, true)
            .unwrap();
        s.munmap(a, 0x101000, PAGE_SIZE).unwrap();
        assert_eq!(s.translate(a, 0x102000), Some((0x10_0102, true)));
        assert!(
            s.mmap_mmio(a, 0x200000, PAGE_SIZE, 0x10_0000, MemType::Wb, true)
                .is_err(),
            "memtype mismatch"
        );
        assert!(
            s.mmap_mmio(a, 0x200000, PAGE_SIZE, 5, MemType::Wb, true)
                .is_err(),
            "RAM pfn"
        );
    }
}
