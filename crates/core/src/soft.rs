//! Software IOMMU domains, written once for every platform that has no hardware ones.
//!
//! [`SoftDomains`] is the bookkeeping around [`IoPageTable`] that the host platform, the uAPI
//! layer's test double and [`Lean`] share: domain ids, the IOMMU unit each domain belongs to,
//! which groups a domain holds, snoop control, and one page table per domain. Its rules are
//! the simulator's (`type1-sim`, which models domains in more detail and checks its callers):
//! an unknown group or domain is ENODEV, a group behind another unit is EINVAL, and a group is
//! in at most one domain at a time (attaching it again is EINVAL).
//!
//! A platform that keeps its domains in one implements [`SoftIommu`] (where they are, and what
//! a group reserves) and gets the whole of `Iommu` from the blanket implementation here.
//!
//! [`Lean`] is the least platform the engine runs on: pins are frame numbers and nothing else,
//! the IOMMU is [`SoftDomains`], a flush does nothing. What the heap grows by while mappings
//! exist on it is the engine's own memory (and its page tables'), which is what `type1 bench
//! --scale` measures with it. Both are under the platform contract suite
//! (`crates/modeltest/tests/contract.rs`) with every other implementation of the seam.

use std::collections::BTreeMap;

use crate::platform::{CacheMaintenance, DeviceDma, EmulatedDevices, Iommu, TaskMemory, Tracing};
use crate::{
    DomainId, DomainInfo, Errno, GroupId, GroupInfo, IoPageTable, Iova, IovaRange, MemType, MmId,
    Pa, PinnedPage, PlatformError, Prot, Task, PAGE_SHIFT,
};

/// One software domain.
#[derive(Clone, Debug)]
pub struct SoftDomain {
    /// The IOMMU unit it belongs to (an index into the units given to [`SoftDomains::new`]).
    pub unit: usize,
    /// Snoop control was asked for and granted.
    pub enforcing: bool,
    /// The groups attached, in attach order.
    pub groups: Vec<GroupId>,
    /// Its page table.
    pub table: IoPageTable,
}

/// Software IOMMU domains over a fixed set of units and groups. See the module documentation.
#[derive(Clone, Debug)]
pub struct SoftDomains {
    /// Per unit: whether it can enforce cache coherency (snoop control).
    units: Vec<bool>,
    /// Group -> its unit.
    groups: BTreeMap<u32, usize>,
    domains: BTreeMap<u32, SoftDomain>,
    next: u32,
    pgsizes: u64,
}

fn perr(errno: Errno, what: impl Into<String>) -> PlatformError {
    PlatformError::new(errno, what)
}

impl SoftDomains {
    /// Domains over `units` (per unit: snoop control) and `groups` (group -> unit index),
    /// with page tables offering the page sizes of `pgsize_bitmap`.
    pub fn new(
        units: Vec<bool>,
        groups: impl IntoIterator<Item = (u32, usize)>,
        pgsize_bitmap: u64,
    ) -> SoftDomains {
        SoftDomains {
            units,
            groups: groups.into_iter().collect(),
            domains: BTreeMap::new(),
            next: 0,
            pgsizes: pgsize_bitmap,
        }
    }

    /// The unit of `group`; ENODEV for a group that does not exist.
    pub fn unit_of(&self, group: GroupId) -> Result<usize, PlatformError> {
        self.groups
            .get(&group.0)
            .copied()
            .ok_or_else(|| perr(Errno::ENODEV, format!("group {group} does not exist")))
    }

    /// `Iommu::domain_info`: one driver, a 48-bit aperture, the table's page sizes.
    pub fn info(&self) -> DomainInfo {
        DomainInfo {
            ops: 1,
            aperture: IovaRange {
                start: 0,
                last: (1 << 48) - 1,
            },
            pgsize_bitmap: self.pgsizes,
        }
    }

    /// `Iommu::domain_alloc`: a new, empty domain on `group`'s unit.
    pub fn alloc(&mut self, group: GroupId) -> Result<DomainId, PlatformError> {
        let unit = self.unit_of(group)?;
        self.next += 1;
        self.domains.insert(
            self.next,
            SoftDomain {
                unit,
                enforcing: false,
                groups: Vec::new(),
                table: IoPageTable::new(self.pgsizes),
            },
        );
        Ok(DomainId(self.next))
    }

    /// `Iommu::domain_enforce_cache_coherency`: granted when the domain's unit has snoop
    /// control.
    pub fn enforce(&mut self, domain: DomainId) -> bool {
        let Some(d) = self.domains.get_mut(&domain.0) else {
            return false;
        };
        let snoop = self.units.get(d.unit).copied().unwrap_or(false);
        d.enforcing |= snoop;
        snoop
    }

    /// `Iommu::domain_free`.
    pub fn free(&mut self, domain: DomainId) {
        self.domains.remove(&domain.0);
    }

    /// `Iommu::attach_group`.
    pub fn attach(&mut self, domain: DomainId, group: GroupId) -> Result<(), PlatformError> {
        let unit = self.unit_of(group)?;
        if let Some((other, _)) = self.domains.iter().find(|(_, d)| d.groups.contains(&group)) {
            return Err(perr(
                Errno::EINVAL,
                format!("group {group} is already attached to domain {other}"),
            ));
        }
        let d = self
            .domains
            .get_mut(&domain.0)
            .ok_or_else(|| perr(Errno::ENODEV, format!("domain {domain} does not exist")))?;
        if d.unit != unit {
            return Err(perr(
                Errno::EINVAL,
                format!("group {group} is behind another IOMMU unit than domain {domain}"),
            ));
        }
        d.groups.push(group);
        Ok(())
    }

    /// `Iommu::detach_group`.
    pub fn detach(&mut self, domain: DomainId, group: GroupId) {
        if let Some(d) = self.domains.get_mut(&domain.0) {
            d.groups.retain(|g| *g != group);
        }
    }

    /// `Iommu::iommu_map`: EEXIST over an existing entry (the engine never asks for one).
    pub fn map(
        &mut self,
        domain: DomainId,
        iova: Iova,
        pa: Pa,
        size: u64,
        prot: Prot,
    ) -> Result<(), PlatformError> {
        let d = self
            .domains
            .get_mut(&domain.0)
            .ok_or_else(|| perr(Errno::ENODEV, format!("domain {domain} does not exist")))?;
        d.table
            .map(iova.0, pa.0, size, prot)
            .map_err(|e| perr(e, format!("iommu_map iova {iova} size 0x{size:x}")))
    }

    /// `Iommu::iommu_unmap`: the bytes unmapped, stopping at the first hole.
    pub fn unmap(&mut self, domain: DomainId, iova: Iova, size: u64) -> u64 {
        self.domains
            .get_mut(&domain.0)
            .map_or(0, |d| d.table.unmap(iova.0, size))
    }

    /// `Iommu::iova_to_phys`.
    pub fn translate(&self, domain: DomainId, iova: Iova) -> Option<Pa> {
        self.domains
            .get(&domain.0)?
            .table
            .translate(iova.0)
            .map(|x| Pa(x.0))
    }

    /// What a device DMA at `iova` reaches: the address, if the entry allows a write to
    /// memory (`to_memory`) or a read.
    pub fn dma_target(
        &self,
        domain: DomainId,
        iova: u64,
        to_memory: bool,
    ) -> Result<u64, crate::DmaFault> {
        let d = self
            .domains
            .get(&domain.0)
            .ok_or(crate::DmaFault::Unmapped)?;
        let (pa, prot) = d.table.translate(iova).ok_or(crate::DmaFault::Unmapped)?;
        if (to_memory && !prot.write) || (!to_memory && !prot.read) {
            return Err(crate::DmaFault::Permission);
        }
        Ok(pa)
    }

    /// `Iommu::iova_to_phys_run`.
    pub fn run(&self, domain: DomainId, iova: Iova, max: u64) -> Option<(Pa, u64)> {
        let (pa, len) = self.domains.get(&domain.0)?.table.run(iova.0, max)?;
        Some((Pa(pa), len))
    }

    /// A live domain.
    pub fn get(&self, domain: DomainId) -> Option<&SoftDomain> {
        self.domains.get(&domain.0)
    }

    /// The live domains, by id.
    pub fn iter(&self) -> impl Iterator<Item = (DomainId, &SoftDomain)> {
        self.domains.iter().map(|(id, d)| (DomainId(*id), d))
    }

    /// Number of live domains.
    pub fn len(&self) -> usize {
        self.domains.len()
    }

    /// Whether no domain is alive.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}

/// A platform whose IOMMU is [`SoftDomains`]: it says where its domains are (and, if its
/// groups reserve IOVA ranges, what [`Iommu::group_info`] answers for a group that exists);
/// the whole of [`Iommu`] comes with it, one implementation for every such platform.
pub trait SoftIommu {
    /// The domains.
    fn soft_domains(&self) -> &SoftDomains;

    /// The domains, to change them.
    fn soft_domains_mut(&mut self) -> &mut SoftDomains;

    /// What [`Iommu::group_info`] answers for a group that exists. The default: a physical
    /// group with no reserved ranges, MSI isolated.
    fn soft_group_info(&self, _group: GroupId) -> GroupInfo {
        GroupInfo {
            emulated: false,
            reserved: Vec::new(),
            msi_isolated: true,
        }
    }
}

impl<T: SoftIommu> Iommu for T {
    fn group_info(&self, group: GroupId) -> Result<GroupInfo, PlatformError> {
        self.soft_domains().unit_of(group)?;
        Ok(self.soft_group_info(group))
    }

    fn domain_alloc(&mut self, group: GroupId) -> Result<DomainId, PlatformError> {
        self.soft_domains_mut().alloc(group)
    }

    fn domain_info(&self, _domain: DomainId) -> DomainInfo {
        self.soft_domains().info()
    }

    fn domain_enforce_cache_coherency(&mut self, domain: DomainId) -> bool {
        self.soft_domains_mut().enforce(domain)
    }

    fn domain_free(&mut self, domain: DomainId) {
        self.soft_domains_mut().free(domain)
    }

    fn attach_group(&mut self, domain: DomainId, group: GroupId) -> Result<(), PlatformError> {
        self.soft_domains_mut().attach(domain, group)
    }

    fn detach_group(&mut self, domain: DomainId, group: GroupId) {
        self.soft_domains_mut().detach(domain, group)
    }

    /// EEXIST over an existing entry: the engine never asks for one, and this says so.
    fn iommu_map(
        &mut self,
        domain: DomainId,
        iova: Iova,
        pa: Pa,
        size: u64,
        prot: Prot,
    ) -> Result<(), PlatformError> {
        self.soft_domains_mut().map(domain, iova, pa, size, prot)
    }

    fn iommu_unmap(&mut self, domain: DomainId, iova: Iova, size: u64) -> u64 {
        self.soft_domains_mut().unmap(domain, iova, size)
    }

    fn iotlb_sync(&mut self, _domain: DomainId) {}

    fn iova_to_phys(&self, domain: DomainId, iova: Iova) -> Option<Pa> {
        self.soft_domains().translate(domain, iova)
    }

    fn iova_to_phys_run(&self, domain: DomainId, iova: Iova, max: u64) -> Option<(Pa, u64)> {
        self.soft_domains().run(domain, iova, max)
    }
}

/// The least platform the engine runs on. See the module documentation.
///
/// Group 0 sits behind a unit with snoop control, group 1 behind one without. The calling
/// task has CAP_IPC_LOCK; any address pins (pfn = vaddr >> 12, at most 512 pages a call).
/// Bytes written through `mm_write` are kept, others read as zero.
#[derive(Clone, Debug)]
pub struct Lean {
    domains: SoftDomains,
    locked: u64,
    written: BTreeMap<u64, u8>,
}

impl Default for Lean {
    fn default() -> Self {
        Lean {
            domains: SoftDomains::new(vec![true, false], [(0, 0), (1, 1)], 0x4020_1000),
            locked: 0,
            written: BTreeMap::new(),
        }
    }
}

impl TaskMemory for Lean {
    fn current(&self) -> Option<Task> {
        Some(Task {
            mm: MmId(1),
            cap_ipc_lock: true,
            memlock_limit_pages: u64::MAX,
        })
    }

    fn mm_alive(&self, _mm: MmId) -> bool {
        true
    }

    fn locked_vm(&self, _mm: MmId) -> u64 {
        self.locked
    }

    fn account(&mut self, _mm: MmId, delta: i64, _enforce: bool) -> Result<(), PlatformError> {
        self.locked = self.locked.saturating_add_signed(delta);
        Ok(())
    }

    fn pin_user_pages(
        &mut self,
        _mm: MmId,
        vaddr: crate::Vaddr,
        npages: u64,
        _write: bool,
    ) -> Result<Vec<PinnedPage>, PlatformError> {
        let vaddr = vaddr.0;
        Ok((0..npages.min(512))
            .map(|i| PinnedPage {
                pfn: (vaddr >> PAGE_SHIFT) + i,
                reserved: false,
            })
            .collect())
    }

    fn unpin_page(&mut self, _pfn: u64, _dirty: bool) {}

    fn pfn_is_reserved(&self, _pfn: u64) -> bool {
        false
    }

    fn pfn_memtype(&self, _pfn: u64) -> MemType {
        MemType::Wb
    }

    fn mm_read(
        &mut self,
        _mm: MmId,
        vaddr: crate::Vaddr,
        buf: &mut [u8],
    ) -> Result<(), PlatformError> {
        let vaddr = vaddr.0;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self
                .written
                .get(&vaddr.wrapping_add(i as u64))
                .copied()
                .unwrap_or(0);
        }
        Ok(())
    }

    fn mm_write(
        &mut self,
        _mm: MmId,
        vaddr: crate::Vaddr,
        data: &[u8],
    ) -> Result<(), PlatformError> {
        let vaddr = vaddr.0;
        for (i, b) in data.iter().enumerate() {
            self.written.insert(vaddr.wrapping_add(i as u64), *b);
        }
        Ok(())
    }
}

impl SoftIommu for Lean {
    fn soft_domains(&self) -> &SoftDomains {
        &self.domains
    }

    fn soft_domains_mut(&mut self) -> &mut SoftDomains {
        &mut self.domains
    }
}

impl CacheMaintenance for Lean {
    fn flush_cache(&mut self, _pa: crate::Pa, _len: u64) {}
}

impl EmulatedDevices for Lean {}

impl Tracing for Lean {}

/// No devices: every DMA is unreachable.
impl DeviceDma for Lean {}
