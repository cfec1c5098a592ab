//! Device DMA through the software IOMMU (translate an IOVA, copy to or from the page it
//! reaches: a pinned page through its io_uring buffer, device memory through the BAR's backing),
//! and the records of device memory (BARs) mapped into the process.

use super::*;

/// Device DMA through the software IOMMU to the pinned page or device memory: [`HostPlatform::dma`].
impl DeviceDma for HostPlatform {
    fn device_dma(
        &mut self,
        domain: DomainId,
        iova: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaFault> {
        self.dma(domain, iova, buf, to_memory)
    }
}

impl HostPlatform {
    /// Device DMA of `buf.len()` bytes at `iova` through `domain`, within one page: to memory
    /// (`to_memory`, needs the mapping's write permission) or from it (needs read).
    pub fn dma(
        &mut self,
        domain: DomainId,
        iova: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaFault> {
        debug_assert!(iova % PAGE_SIZE + buf.len() as u64 <= PAGE_SIZE);
        let pa = self.translate(domain, iova, to_memory)?;
        self.dma_frame(pa, buf, to_memory)
    }

    /// The bus address `iova` translates to in `domain`, if the mapping allows the access (a
    /// write to memory when `to_memory`, a read otherwise).
    pub fn translate(&self, domain: DomainId, iova: u64, to_memory: bool) -> Result<u64, DmaFault> {
        self.domains.dma_target(domain, iova, to_memory)
    }

    /// Device DMA of `buf.len()` bytes at bus address `pa` (within one page), which this
    /// platform pinned or maps as device memory: the IOMMU's part is done (the broker
    /// translates for devices shared between processes).
    pub fn dma_frame(&mut self, pa: u64, buf: &mut [u8], to_memory: bool) -> Result<(), DmaFault> {
        let (pfn, off) = (pa >> PAGE_SHIFT, pa % PAGE_SIZE);
        if let Some(m) = self.mmio_pfns.get(&pfn).copied() {
            let v = self
                .bar_vaddr(pfn)
                .or(m.vaddr)
                .ok_or(DmaFault::Unreachable)?;
            return Self::copy_user(v + off, buf, to_memory);
        }
        let (id, i) = self.pins.find(pfn).ok_or(DmaFault::Unreachable)?;
        let run = self.pins.run(id).ok_or(DmaFault::Unreachable)?;
        match self.pins.holder(id) {
            Some(Holder::Ring { ring, slot, base }) => {
                let addr = base + (run.reg_page + i) * PAGE_SIZE + off;
                let dir = if to_memory {
                    uring::Dir::ToPage
                } else {
                    uring::Dir::FromPage
                };
                let bounce = self.bounce_fd().map_err(|_| DmaFault::Unreachable)?;
                let r = self
                    .rings
                    .get_mut(ring)
                    .ok_or(DmaFault::Unreachable)
                    .and_then(|r| {
                        r.transfer(slot, addr, buf, dir, bounce)
                            .map_err(|_| DmaFault::Unreachable)
                    });
                if r.is_err() && self.rings.get(ring).is_some_and(|r| !r.owned()) {
                    self.notice(
                        "fork",
                        "a forked child's device reached for pages its parent pinned; the \
                         emulation holds them in the parent only, so the device faults",
                    );
                }
                r
            }
            Some(Holder::Track) => {
                let v = run.cpu.map(|v| v + i * PAGE_SIZE);
                let edges = self.pins.edges(id, i, 1);
                match v.filter(|v| self.maps(*v, 1, edges)) {
                    Some(v) => Self::copy_user(v + off, buf, to_memory),
                    None => {
                        self.notice(
                            "track-lost",
                            "a page pinned by address only is no longer mapped where it was \
                             pinned; the kernel would still reach it, this emulation cannot \
                             (io_uring unavailable, TYPE1_PIN=track, or a read-only pin of \
                             memory io_uring cannot register): the device faults instead",
                        );
                        Err(DmaFault::Unreachable)
                    }
                }
            }
            None => Err(DmaFault::Unreachable),
        }
    }

    pub(crate) fn copy_user(v: u64, buf: &mut [u8], to_memory: bool) -> Result<(), DmaFault> {
        let r = if to_memory {
            sys::write_user(v, buf)
        } else {
            sys::read_user(v, buf)
        };
        r.map_err(|_| DmaFault::Unreachable)
    }

    pub(crate) fn bar_vaddr(&self, pfn: u64) -> Option<u64> {
        let (&first, &(n, v)) = self.bars.range(..=pfn).next_back()?;
        (pfn - first < n).then_some(v + (pfn - first) * PAGE_SIZE)
    }

    /// What holds pinned frame `pfn`, for a process that may need to reach it without this
    /// platform: the ring's fd, the buffer slot, and the address of the page inside the
    /// buffer as it was registered. `None` for frames held otherwise (tracked pins, device
    /// memory).
    pub fn pin_ref(&self, pfn: u64) -> Option<(i32, u32, u64)> {
        let (id, i) = self.pins.find(pfn)?;
        let run = self.pins.run(id)?;
        match self.pins.holder(id)? {
            Holder::Ring { ring, slot, base } => {
                let fd = self.rings.get(ring)?.fd();
                Some((fd, slot, base + (run.reg_page + i) * PAGE_SIZE))
            }
            Holder::Track => None,
        }
    }

    /// Device memory with frames `first_pfn..first_pfn + npages` lives in the file `fd` (from
    /// offset 0): the platform maps it once, privately, so that DMA to those frames reaches it
    /// whatever the program maps or unmaps. A new file for the same frames replaces the old.
    pub fn set_bar_backing(&mut self, first_pfn: u64, npages: u64, fd: i32) -> Result<(), Errno> {
        let (_, ino, _) = sys::fstat_id(fd)?;
        if self.bar_files.get(&first_pfn) == Some(&ino) {
            return Ok(());
        }
        // SAFETY: a fresh shared mapping at a kernel-chosen address.
        let v = unsafe { sys::mmap_rw(0, npages * PAGE_SIZE, libc::MAP_SHARED, fd, 0)? };
        if let Some((n, old)) = self.bars.insert(first_pfn, (npages, v)) {
            // SAFETY: the platform's own earlier backing mapping, unused from now on.
            let _ = unsafe { sys::munmap(old, n * PAGE_SIZE) };
        }
        self.bar_files.insert(first_pfn, ino);
        Ok(())
    }

    /// Records that device memory (a BAR) is mapped at `vaddr` for `npages` pages, with frames
    /// `first_pfn..` (each at least [`MMIO_PFN_BASE`]) of memory type `memtype`. Pinning those
    /// pages then returns these reserved pfns.
    pub fn map_mmio(&mut self, vaddr: u64, npages: u64, first_pfn: u64, memtype: MemType) {
        self.watch.widen(vaddr, npages * PAGE_SIZE);
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
        let (first, end) = (vaddr & !(PAGE_SIZE - 1), vaddr.saturating_add(len));
        let gone: Vec<(u64, u64)> = self
            .mmio_pages
            .range(first..end)
            .map(|(v, p)| (*v, *p))
            .collect();
        for (page, pfn) in gone {
            self.mmio_pages.remove(&page);
            if let Some(m) = self.mmio_pfns.get_mut(&pfn) {
                if m.vaddr == Some(page) {
                    m.vaddr = None;
                }
            }
        }
        self.maybe_unwatch();
    }
}
