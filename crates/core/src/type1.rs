//! The type1 backend instance (the kernel's `struct vfio_iommu`): its state and invariants.
//!
//! One [`Type1`] exists per container after a successful SET_IOMMU (C7). Its operations are
//! spread over sibling modules by concern: `map` (MAP/UNMAP, pinning, the flush points),
//! `attach` (attach, detach, replay, the valid IOVA list), `dirty` (dirty tracking), `external`
//! (mdev-style pins and `dma_rw`) and `info` (GET_INFO). Every operation takes the platform as
//! `&mut P` ([`crate::Platform`]); the instance itself owns only bookkeeping.
//!
//! Concurrency: the kernel guards all of this with `iommu->lock`. Here every mutating method
//! takes `&mut self`, which is the same exclusion; the one place where the kernel drops the lock
//! (U5, device notification) is modelled as a platform call followed by a restart.

use std::collections::BTreeMap;

use crate::{
    policy::FlushPolicy, DomainId, DomainInfo, GroupId, IovaRange, MmId, Prot,
    DEFAULT_DMA_ENTRY_LIMIT, PAGE_MASK_BITMAP, PAGE_SIZE,
};

/// Module parameters of type1 (S3), sampled when an instance is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `dma_entry_limit`: maximum number of mappings.
    pub dma_entry_limit: u32,
    /// `disable_hugepages`: pin and map one page at a time.
    pub disable_hugepages: bool,
    /// `allow_unsafe_interrupts`: accept groups without MSI isolation.
    pub allow_unsafe_interrupts: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dma_entry_limit: DEFAULT_DMA_ENTRY_LIMIT,
            disable_hugepages: false,
            allow_unsafe_interrupts: false,
        }
    }
}

/// A group record (S5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupRec {
    pub id: GroupId,
    pub pinned_page_dirty_scope: bool,
}

/// A linked IOMMU domain (S4).
#[derive(Clone, Debug)]
pub(crate) struct Domain {
    pub id: DomainId,
    pub info: DomainInfo,
    pub groups: Vec<GroupRec>,
    pub enforce_cache_coherency: bool,
}

/// An external pin of one page (`struct vfio_pfn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Vpfn {
    pub pfn: u64,
    pub refcount: u32,
}

/// A DMA mapping (`struct vfio_dma`, S6).
#[derive(Clone, Debug)]
pub(crate) struct Dma {
    pub iova: u64,
    pub vaddr: u64,
    /// Bytes pinned and mapped so far; the requested size once MAP completes.
    pub size: u64,
    pub prot: Prot,
    pub iommu_mapped: bool,
    pub lock_cap: bool,
    pub vaddr_invalid: bool,
    pub mm: MmId,
    /// Pages this mapping has charged to `mm`.
    pub locked_vm: u64,
    /// External pins keyed by iova.
    pub pfn_list: BTreeMap<u64, Vpfn>,
    /// Dirty bitmap, one bit per PG page, present only while tracking.
    pub bitmap: Option<Vec<u64>>,
    /// F2: some page may have been reachable by a non-coherent domain since it was pinned.
    pub is_noncoherent: bool,
}

impl Dma {
    /// The public view of this mapping.
    pub fn view(&self) -> MappingView {
        MappingView {
            iova: self.iova,
            size: self.size,
            vaddr: self.vaddr,
            prot: self.prot,
            mm: self.mm,
            iommu_mapped: self.iommu_mapped,
            vaddr_invalid: self.vaddr_invalid,
            is_noncoherent: self.is_noncoherent,
            locked_vm: self.locked_vm,
            external_pins: self
                .pfn_list
                .iter()
                .map(|(i, v)| (*i, v.pfn, v.refcount))
                .collect(),
        }
    }

    /// Last byte (inclusive). Mappings have a non-zero size once inserted, except transiently.
    pub fn last(&self) -> u64 {
        self.iova.wrapping_add(self.size.max(1) - 1)
    }
}

/// Public, read-only view of a mapping, for inspection and invariant checking.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct MappingView {
    /// First IOVA.
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
    /// User virtual address.
    pub vaddr: u64,
    /// Protection.
    pub prot: Prot,
    /// Address space of the mapper.
    pub mm: MmId,
    /// Pinned and present in every domain.
    pub iommu_mapped: bool,
    /// Marked invalid by an UNMAP with VADDR.
    pub vaddr_invalid: bool,
    /// F2 flag.
    pub is_noncoherent: bool,
    /// Pages charged to `mm` by this mapping.
    pub locked_vm: u64,
    /// External pins: (iova, pfn, refcount).
    pub external_pins: Vec<(u64, u64, u32)>,
}

/// Public view of a domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct DomainView {
    /// Platform handle.
    pub id: DomainId,
    /// Groups attached, in attach order.
    pub groups: Vec<GroupId>,
    /// Whether the domain enforces cache coherency.
    pub coherent: bool,
}

/// The type1 backend instance. See the module documentation.
/// A clone is a deep copy (model checking branches from a state).
#[derive(Clone, Debug)]
pub struct Type1 {
    pub(crate) cfg: Config,
    pub(crate) v2: bool,
    /// Head first: index 0 is the reference domain used for IOVA->PA look-ups (S1).
    pub(crate) domains: Vec<Domain>,
    pub(crate) iova_list: Vec<IovaRange>,
    pub(crate) dmas: BTreeMap<u64, Dma>,
    pub(crate) emulated_groups: Vec<GroupRec>,
    pub(crate) devices: Vec<crate::DeviceId>,
    pub(crate) dma_avail: u32,
    pub(crate) vaddr_invalid_count: u32,
    pub(crate) pgsize_bitmap: u64,
    pub(crate) num_non_pinned_groups: u32,
    pub(crate) dirty_page_tracking: bool,
    /// F1: number of linked domains that do not enforce coherency.
    pub(crate) noncoherent_domains: u32,
    pub(crate) policy: &'static dyn FlushPolicy,
}

impl Type1 {
    /// Opens an instance of the given type (S2).
    pub fn open(
        iommu_type: crate::IommuType,
        cfg: Config,
        policy: &'static dyn FlushPolicy,
    ) -> Type1 {
        let v2 = iommu_type == crate::IommuType::Type1v2;
        Type1 {
            cfg,
            v2,
            domains: Vec::new(),
            iova_list: Vec::new(),
            dmas: BTreeMap::new(),
            emulated_groups: Vec::new(),
            devices: Vec::new(),
            dma_avail: cfg.dma_entry_limit,
            vaddr_invalid_count: 0,
            pgsize_bitmap: PAGE_MASK_BITMAP,
            num_non_pinned_groups: 0,
            dirty_page_tracking: false,
            noncoherent_domains: 0,
            policy,
        }
    }

    /// PG: the smallest IOMMU page size in force (S9).
    pub fn pgsize(&self) -> u64 {
        1u64 << self.pgsize_bitmap.trailing_zeros()
    }

    /// Whether this is a TYPE1v2 instance.
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// The flush policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// F1: number of linked non-coherent domains.
    pub fn noncoherent_domains(&self) -> u32 {
        self.noncoherent_domains
    }

    /// Remaining mapping slots.
    pub fn dma_avail(&self) -> u32 {
        self.dma_avail
    }

    /// Number of mappings with an invalidated vaddr.
    pub fn vaddr_invalid_count(&self) -> u32 {
        self.vaddr_invalid_count
    }

    /// Whether dirty tracking is on.
    pub fn dirty_tracking(&self) -> bool {
        self.dirty_page_tracking
    }

    /// The valid IOVA list (S8); empty means every IOVA is valid.
    pub fn iova_list(&self) -> &[IovaRange] {
        &self.iova_list
    }

    /// The page-size bitmap (S9).
    pub fn pgsize_bitmap(&self) -> u64 {
        self.pgsize_bitmap
    }

    /// Whether any emulated (IOMMU-less) group is attached.
    pub fn has_emulated_groups(&self) -> bool {
        !self.emulated_groups.is_empty()
    }

    /// Every mapping, in IOVA order.
    pub fn mappings(&self) -> Vec<MappingView> {
        self.dmas.values().map(Dma::view).collect()
    }

    /// The mapping containing `iova`, if any.
    pub fn mapping_at(&self, iova: u64) -> Option<MappingView> {
        let key = self.find_dma(iova, 1)?;
        Some(self.dmas[&key].view())
    }

    /// Linked domains, head first.
    pub fn domains(&self) -> Vec<DomainView> {
        self.domains
            .iter()
            .map(|d| DomainView {
                id: d.id,
                groups: d.groups.iter().map(|g| g.id).collect(),
                coherent: d.enforce_cache_coherency,
            })
            .collect()
    }

    /// Emulated groups attached.
    pub fn emulated_groups(&self) -> Vec<GroupId> {
        self.emulated_groups.iter().map(|g| g.id).collect()
    }

    /// Whether the group is attached to this instance.
    pub fn has_group(&self, group: GroupId) -> bool {
        self.emulated_groups.iter().any(|g| g.id == group)
            || self
                .domains
                .iter()
                .any(|d| d.groups.iter().any(|g| g.id == group))
    }

    /// VFIO_DMA_CC_IOMMU (C6, F1): 1 iff no linked domain is non-coherent.
    pub fn dma_cc_iommu(&self) -> bool {
        self.noncoherent_domains == 0
    }

    /// Start (key) of the first mapping overlapping `[start, start + size)`, like
    /// `vfio_find_dma`. `size` of 0 is treated as 1.
    pub(crate) fn find_dma(&self, start: u64, size: u64) -> Option<u64> {
        let last = start.saturating_add(size.max(1) - 1);
        // Mappings never overlap, so only the last one starting at or before `last` can.
        let (k, d) = self.dmas.range(..=last).next_back()?;
        (d.last() >= start).then_some(*k)
    }

    /// Debug-build check of the S7 invariants that the engine alone can see.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut prev_last: Option<u64> = None;
        let mut invalid = 0;
        for d in self.dmas.values() {
            if let Some(pl) = prev_last {
                if d.iova <= pl {
                    return Err(format!("mappings overlap at 0x{:x}", d.iova));
                }
            }
            prev_last = Some(d.last());
            if d.vaddr_invalid {
                invalid += 1;
            }
            if !self.domains.is_empty() && !d.iommu_mapped {
                return Err(format!(
                    "mapping 0x{:x} not iommu_mapped with domains",
                    d.iova
                ));
            }
            if self.domains.is_empty() && d.iommu_mapped {
                return Err(format!(
                    "mapping 0x{:x} iommu_mapped without domains",
                    d.iova
                ));
            }
            if d.iova % PAGE_SIZE != 0 || d.size % PAGE_SIZE != 0 {
                return Err(format!("mapping 0x{:x} misaligned", d.iova));
            }
        }
        if invalid != self.vaddr_invalid_count {
            return Err(format!(
                "vaddr_invalid_count {} but {} invalid mappings",
                self.vaddr_invalid_count, invalid
            ));
        }
        if self.dma_avail as usize + self.dmas.len() != self.cfg.dma_entry_limit as usize {
            return Err("dma_avail + mappings != limit".into());
        }
        let nc = self
            .domains
            .iter()
            .filter(|d| !d.enforce_cache_coherency)
            .count() as u32;
        if nc != self.noncoherent_domains {
            return Err(format!(
                "noncoherent_domains {} but {} non-coherent domains linked",
                self.noncoherent_domains, nc
            ));
        }
        Ok(())
    }
}
