//! The platform seam: everything the engine needs from the machine it runs on.
//!
//! The engine ([`crate::Container`]) never touches memory, an IOMMU or a cache directly. It
//! asks an implementation of [`Platform`] to pin and translate user pages, to keep the
//! RLIMIT_MEMLOCK books of an address space, to build and tear down IOMMU domains and their
//! page tables, and to flush CPU cache lines. Five implementations exist: the simulated
//! machine (`type1-sim`, the default, which checks every call it receives), the real host
//! (`type1-host`), the broker's (`type1-broker`, which keeps the IOMMU and calls memory work
//! back into the owning process), the uAPI layer's test double (`type1_uapi::testing`) and
//! the engine-only platform of `type1 bench --scale` ([`crate::Lean`]). The contract suite
//! (`crates/modeltest/tests/contract.rs`) runs all five. The three whose IOMMU is software
//! (host, test double, `Lean`; the broker's is a host platform's) keep their domains in
//! [`crate::SoftDomains`].
//!
//! The seam is split by concern, so that an implementation (or a reader) takes one part at a
//! time: [`TaskMemory`] (the caller, its pins, books and user copies), [`Iommu`] (groups,
//! domains, page tables), [`CacheMaintenance`] (the series' flushes), [`EmulatedDevices`]
//! (mdev-style pinners and U5), [`Tracing`] and [`DeviceDma`] (what devices do to memory, for
//! the uAPI layer's device models). [`Platform`] is all six together and is what the engine
//! takes.
//!
//! The contract, stated once for every method below:
//! * fallible methods either succeed completely or fail with no effect;
//! * release methods (`unpin_page`, `iommu_unmap`, `detach_group`, `domain_free`) never fail;
//! * all addresses are bytes, typed by what they address (`Iova`, `Pa`, `Vaddr`); a `pfn` is a
//!   page frame number (a `u64` still); sizes are multiples of [`crate::PAGE_SIZE`] unless
//!   said otherwise.

use crate::{
    trace::Event, DeviceId, DomainId, Errno, GroupId, Iova, IovaRange, MemType, MmId, Pa, Prot,
    ResvRegion, Vaddr,
};

/// A failure reported by the platform, with the errno the kernel would propagate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {errno}")]
pub struct PlatformError {
    /// The errno to propagate.
    pub errno: Errno,
    /// What failed, for messages (`"pin vaddr 0x1000"`).
    pub what: String,
}

impl PlatformError {
    /// A new error.
    pub fn new(errno: Errno, what: impl Into<String>) -> Self {
        PlatformError {
            errno,
            what: what.into(),
        }
    }
}

/// The task on whose behalf the engine is running (the ioctl caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// Its address space.
    pub mm: MmId,
    /// `capable(CAP_IPC_LOCK)`: bypasses RLIMIT_MEMLOCK (P2).
    pub cap_ipc_lock: bool,
    /// RLIMIT_MEMLOCK of the task, in pages.
    pub memlock_limit_pages: u64,
}

/// One page returned by [`TaskMemory::pin_user_pages`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinnedPage {
    /// Its frame.
    pub pfn: u64,
    /// A reserved or invalid pfn (MMIO, PFNMAP): not refcounted, never released nor charged.
    pub reserved: bool,
}

/// What the platform knows about a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group has no IOMMU behind it (mdev-style emulated devices, A1 step 3).
    pub emulated: bool,
    /// The group's IOMMU reserved regions.
    pub reserved: Vec<ResvRegion>,
    /// Whether interrupts of the group are isolated (IRQ remapping, A1 step 10).
    pub msi_isolated: bool,
}

/// Static facts of an IOMMU domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    /// Identity of the IOMMU driver ("ops"); only domains with equal ops are shared (A1 step 12).
    pub ops: u32,
    /// The aperture (geometry).
    pub aperture: IovaRange,
    /// Page sizes the domain supports.
    pub pgsize_bitmap: u64,
}

/// Why a flush is issued (trace and policy vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushReason {
    /// Before the first map of a chunk into any domain (F3).
    Map,
    /// Before mapping into a newly attached non-coherent domain (F4).
    Replay,
    /// Right before an unpin of remote pins (F5).
    Unpin,
}

/// The calling task, its address space and its books: who calls, pinning and unpinning its
/// pages, RLIMIT_MEMLOCK accounting, and CPU copies to and from its memory.
pub trait TaskMemory {
    // ---- the calling task and its address space -------------------------------------------

    /// The task making the current call, or `None` when there is no user context (ENODEV, P1).
    fn current(&self) -> Option<Task>;

    /// Whether the address space still exists.
    fn mm_alive(&self, mm: MmId) -> bool;

    /// Pages currently charged to `mm` (`mm->locked_vm`).
    fn locked_vm(&self, mm: MmId) -> u64;

    /// Adds `delta` pages to `mm`'s locked_vm. When `delta > 0` and `enforce_limit`, fails with
    /// ENOMEM (changing nothing) if the result would exceed the RLIMIT_MEMLOCK of the process
    /// owning `mm`. A negative delta never fails.
    fn account(&mut self, mm: MmId, delta: i64, enforce_limit: bool) -> Result<(), PlatformError>;

    // ---- pinning ------------------------------------------------------------------------------

    /// Pins up to `npages` pages of `mm` starting at `vaddr` (long-term pin, write intent when
    /// `write`), faulting them in as needed. Returns at least one page on success, possibly
    /// fewer than asked. EFAULT for an unbacked address or a write pin of read-only memory.
    fn pin_user_pages(
        &mut self,
        mm: MmId,
        vaddr: Vaddr,
        npages: u64,
        write: bool,
    ) -> Result<Vec<PinnedPage>, PlatformError>;

    /// Drops one pin of a normal page, marking it dirty when `dirty` (P3). Never called for
    /// reserved pfns.
    fn unpin_page(&mut self, pfn: u64, dirty: bool);

    /// Drops one pin of each of the `npages` normal pages from `pfn` on: the same as
    /// [`Self::unpin_page`] for each, in one call (platforms that keep pins by run override it).
    fn unpin_pages(&mut self, pfn: u64, npages: u64, dirty: bool) {
        for i in 0..npages {
            self.unpin_page(pfn + i, dirty);
        }
    }

    /// How many pages the engine asks [`Self::pin_user_pages`] for at most in one call (its pin
    /// batch, `struct vfio_batch`): the kernel's 512 by default. A platform whose pin calls
    /// cost a round trip (the broker's) asks for more, so that a mapping pins in few calls;
    /// what is pinned ahead and not used is released as the kernel releases a batch's leftovers.
    fn pin_batch_pages(&self) -> u64 {
        crate::PIN_BATCH as u64
    }

    /// Whether `pfn` is reserved or invalid (MMIO): such pfns are neither refcounted nor charged.
    fn pfn_is_reserved(&self, pfn: u64) -> bool;

    /// The frames from `pfn` on (at most `max`, at least one) that share `pfn`'s reserved-ness
    /// and memory type: `(reserved, memtype, count)`. The default answers for one frame;
    /// platforms that keep frames by run answer for the whole run in one lookup.
    fn pfn_kind_run(&self, pfn: u64, max: u64) -> (bool, MemType, u64) {
        let _ = max;
        (self.pfn_is_reserved(pfn), self.pfn_memtype(pfn), 1)
    }

    /// The host memory type of `pfn` (PAT/MTRR view), used by the flush classifier (F9).
    fn pfn_memtype(&self, pfn: u64) -> MemType;

    /// CPU copy from `mm` at `vaddr` (dma_rw, P9). EFAULT if unbacked.
    fn mm_read(&mut self, mm: MmId, vaddr: Vaddr, buf: &mut [u8]) -> Result<(), PlatformError>;

    /// CPU copy into `mm` at `vaddr` (dma_rw, P9). EFAULT if unbacked or read-only.
    fn mm_write(&mut self, mm: MmId, vaddr: Vaddr, data: &[u8]) -> Result<(), PlatformError>;
}

/// Groups and IOMMU domains: allocation, attachment, snoop control, page tables and the IOTLB.
pub trait Iommu {
    // ---- groups and IOMMU domains ---------------------------------------------------------

    /// Facts about a group. ENODEV if the platform has no such group.
    fn group_info(&self, group: GroupId) -> Result<GroupInfo, PlatformError>;

    /// Allocates a paging domain suitable for the group's first device.
    fn domain_alloc(&mut self, group: GroupId) -> Result<DomainId, PlatformError>;

    /// Facts about a live domain.
    fn domain_info(&self, domain: DomainId) -> DomainInfo;

    /// The domain's `enforce_cache_coherency` operation: tries to make every DMA through the
    /// domain snoop the CPU caches; returns whether it succeeded (S4).
    fn domain_enforce_cache_coherency(&mut self, domain: DomainId) -> bool;

    /// Frees a domain with no group attached and no mapping left.
    fn domain_free(&mut self, domain: DomainId);

    /// Attaches all devices of `group` to `domain`.
    fn attach_group(&mut self, domain: DomainId, group: GroupId) -> Result<(), PlatformError>;

    /// Detaches the group from the domain.
    fn detach_group(&mut self, domain: DomainId, group: GroupId);

    /// Maps `[iova, iova + size)` to `[pa, pa + size)` with `prot` (IOMMU_CACHE is implied, M3).
    /// The range must not be mapped already. The two addresses have types of their own, so
    /// that a call cannot swap them.
    fn iommu_map(
        &mut self,
        domain: DomainId,
        iova: Iova,
        pa: Pa,
        size: u64,
        prot: Prot,
    ) -> Result<(), PlatformError>;

    /// Unmaps from `iova` on, up to `size` bytes; returns the bytes actually unmapped (it stops
    /// at the first hole). The IOTLB may still hold the entries until [`Self::iotlb_sync`].
    fn iommu_unmap(&mut self, domain: DomainId, iova: Iova, size: u64) -> u64;

    /// Invalidates the domain's IOTLB: after it returns no device uses an unmapped entry.
    fn iotlb_sync(&mut self, domain: DomainId);

    /// Reads back the physical address an IOVA translates to in `domain`.
    fn iova_to_phys(&self, domain: DomainId, iova: Iova) -> Option<Pa>;

    /// The physically contiguous run `domain` maps from the page-aligned `iova` on, at most
    /// `max` bytes (at least one page): `(pa, len)`, or `None` when `iova` has no translation.
    /// The default reads back page by page; a platform whose page table knows its runs answers
    /// in one lookup.
    fn iova_to_phys_run(&self, domain: DomainId, iova: Iova, max: u64) -> Option<(Pa, u64)> {
        let phys = self.iova_to_phys(domain, iova)?;
        let mut len = crate::PAGE_SIZE;
        while len < max && self.iova_to_phys(domain, Iova(iova.0 + len)) == Some(Pa(phys.0 + len)) {
            len += crate::PAGE_SIZE;
        }
        Some((phys, len))
    }

    /// Installs the software-MSI cookie on a domain (A1 step 15).
    fn install_msi_cookie(&mut self, _domain: DomainId) -> Result<(), PlatformError> {
        Ok(())
    }
}

/// CPU cache maintenance (the series' flushes).
pub trait CacheMaintenance {
    // ---- cache maintenance -----------------------------------------------------------------

    /// Writes back and invalidates every CPU cache line of `[pa, pa + len)` (clflushopt with
    /// fences). Only called for cacheable memory: the engine's classifier decides (F9).
    fn flush_cache(&mut self, pa: Pa, len: u64);

    /// [`Self::flush_cache`] of every range of a batch, all done when this returns; the
    /// engine uses it for the unpin flushes (F5) of a batch of unmapped runs, right before it
    /// unpins them. A platform may spread the batch over several cores.
    fn flush_cache_batch(&mut self, ranges: &[(Pa, u64)]) {
        for &(pa, len) in ranges {
            self.flush_cache(pa, len);
        }
    }
}

/// Emulated (mdev-style) devices, which pin pages themselves and must give them up (U5).
pub trait EmulatedDevices {
    // ---- emulated devices (external pins) ----------------------------------------------------

    /// Tells an emulated device that `[iova, iova + size)` is going away (U5). The device must
    /// drop its external pins there; it answers with the `(iova, npages)` runs to unpin,
    /// which the engine then releases as if the device had called `unpin_pages`.
    fn notify_dma_unmap(&mut self, _device: DeviceId, _iova: u64, _size: u64) -> Vec<(u64, u64)> {
        Vec::new()
    }
}

/// Observation: the engine's events, in order.
pub trait Tracing {
    // ---- observation -------------------------------------------------------------------------

    /// Receives every engine event, in order (the trace). The default drops them.
    fn trace(&mut self, _event: Event) {}
}

/// Why a device's DMA through an IOMMU domain did not reach memory (the one fault type of the
/// seam: every platform reports these three, and the broker's wire carries them as they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DmaFault {
    /// No entry at the IOVA, or no such domain.
    Unmapped,
    /// The entry does not allow the access (a write through a read-only entry).
    Permission,
    /// The entry points at a page this platform cannot reach (a pin held by another process,
    /// device memory no longer mapped), or the platform has no device DMA at all.
    Unreachable,
}

impl std::fmt::Display for DmaFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DmaFault::Unmapped => "unmapped",
            DmaFault::Permission => "permission denied",
            DmaFault::Unreachable => "unreachable",
        })
    }
}

/// Devices: what a device behind a domain does to memory, through the domain's page table.
/// Not an engine call: the uAPI layer's device models use it (a register write that starts a
/// transfer), so that the same device code runs on every platform.
pub trait DeviceDma {
    // ---- devices -----------------------------------------------------------------------------

    /// A device behind `domain` writes `buf` to memory at `iova` (`to_memory`, which needs
    /// the entry's write permission) or reads `buf.len()` bytes from it (needs read). The
    /// access lies within one page. The default: no device reaches memory on this platform.
    fn device_dma(
        &mut self,
        domain: DomainId,
        iova: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaFault> {
        let _ = (domain, iova, buf, to_memory);
        Err(DmaFault::Unreachable)
    }

    /// The same DMA over several segments `(iova, len)`, each within one page, of one buffer
    /// (`buf` holds their bytes in order): [`DeviceDma::device_dma`] on each in turn, which a
    /// platform may do in fewer steps. On a fault, the segments before the one that faulted
    /// are done; `Err` gives that segment's index and the fault.
    fn device_dma_vec(
        &mut self,
        domain: DomainId,
        segs: &[(u64, usize)],
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), (usize, DmaFault)> {
        let mut at = 0;
        for (i, &(iova, n)) in segs.iter().enumerate() {
            let Some(part) = buf.get_mut(at..at + n) else {
                return Err((i, DmaFault::Unreachable));
            };
            self.device_dma(domain, iova, part, to_memory)
                .map_err(|f| (i, f))?;
            at += n;
        }
        Ok(())
    }

    /// The same DMA between the segments and the file `fd` at offset `file_off` (a device
    /// whose data lives in a file, as an NVMe namespace does): `to_memory` puts the file's
    /// bytes into the segments, else the segments' bytes into the file. `None`: this platform
    /// cannot do it without the caller's copy (which then reads the file itself and uses
    /// [`DeviceDma::device_dma_vec`]); nothing was done. The default: `None`.
    fn device_dma_file(
        &mut self,
        domain: DomainId,
        segs: &[(u64, usize)],
        fd: i32,
        file_off: u64,
        to_memory: bool,
    ) -> Option<Result<(), (usize, DmaFault)>> {
        let _ = (domain, segs, fd, file_off, to_memory);
        None
    }
}

/// The machine the engine runs on: every concern of the seam. See the module documentation
/// for the common contract; `crates/modeltest/tests/contract.rs` checks it for each
/// implementation. Implement the six parts; this trait comes with them.
pub trait Platform:
    TaskMemory + Iommu + CacheMaintenance + EmulatedDevices + Tracing + DeviceDma
{
}

impl<T: TaskMemory + Iommu + CacheMaintenance + EmulatedDevices + Tracing + DeviceDma + ?Sized>
    Platform for T
{
}
