//! IOMMU units, groups, domains, their page tables and IOTLBs.
//!
//! A domain belongs to the unit of the group it was allocated for; a group can only attach to
//! a domain of its own unit, even when another unit has the same `ops` (that is how "attaching
//! to an existing compatible domain fails" happens). Page tables map 4 KiB IOVA pages to pfns.
//! `iommu_unmap` moves entries to the domain's unsynced IOTLB set until `iotlb_sync`; a frame
//! whose last pin drops while any page table or unsynced IOTLB still points at it is an
//! `unpin_while_mapped` violation. Mapping a RAM frame into a domain that does not enforce
//! coherency with write access marks it *exposed* until its next last unpin.

use type1_core::{
    DomainId, DomainInfo, Errno, GroupId, GroupInfo, IoPageTable, IovaRange, PlatformError, Prot,
    ResvRegion, PAGE_SHIFT, PAGE_SIZE,
};

use crate::{perr, GroupDesc, Sim, UnitDesc, ViolationKind};

/// An IOMMU unit.
#[derive(Clone, Debug)]
pub(crate) struct Unit {
    pub ops: u32,
    pub snoop_control: bool,
    pub aperture: IovaRange,
    pub pgsize_bitmap: u64,
    pub reserved: Vec<ResvRegion>,
    pub msi_isolated: bool,
}

impl Unit {
    pub(crate) fn from_desc(u: &UnitDesc) -> Unit {
        Unit {
            ops: u.ops,
            snoop_control: u.snoop_control,
            aperture: u.aperture(),
            pgsize_bitmap: u.pgsize_bitmap(),
            reserved: u.reserved_regions(),
            msi_isolated: u.msi_isolated.unwrap_or(true),
        }
    }
}

/// An IOMMU group.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    pub unit: Option<u32>,
    pub reserved: Vec<ResvRegion>,
    pub attached: Option<DomainId>,
}

impl Group {
    pub(crate) fn from_desc(g: &GroupDesc) -> Group {
        Group {
            unit: g.unit,
            reserved: g.reserved.iter().map(|r| r.region()).collect(),
            attached: None,
        }
    }
}

/// A page-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pte {
    pub pfn: u64,
    pub prot: Prot,
}

/// A domain's page table: the shared software IOMMU table of `type1-core`
/// ([`IoPageTable`]), seen through page-number accessors that give one entry per 4 KiB page
/// (the checker and the IOTLB model reason per page). It keeps 4 KiB leaves, or, on a machine
/// with transparent huge pages, the unit's larger leaves where the mapping allows them (a
/// 1 TiB guest then takes 2 MiB leaves, not 2^28 entries).
#[derive(Clone, Debug)]
pub(crate) struct PageTable(IoPageTable);

impl Default for PageTable {
    fn default() -> Self {
        PageTable(IoPageTable::new(PAGE_SIZE))
    }
}

impl PageTable {
    /// A table with leaves of the sizes in `pgsize_bitmap`.
    fn with_pgsizes(pgsize_bitmap: u64) -> Self {
        PageTable(IoPageTable::new(pgsize_bitmap))
    }

    /// Unmaps from page `page` on, at most `max` pages but not past the leaf holding it:
    /// `(pages unmapped, first pfn, prot)`, none if `page` is not mapped. A leaf only partly
    /// unmapped keeps the rest mapped.
    fn take(&mut self, page: u64, max: u64) -> Option<(u64, u64, Prot)> {
        let iova = page << PAGE_SHIFT;
        let (start, leaf) = self.0.leaf_containing(iova)?;
        let n = ((start + leaf.size - iova) >> PAGE_SHIFT).clamp(1, max.max(1));
        self.0.unmap(iova, n << PAGE_SHIFT);
        Some((n, (leaf.pa + (iova - start)) >> PAGE_SHIFT, leaf.prot))
    }

    /// The entry of IOVA page `page`.
    pub fn get(&self, page: &u64) -> Option<Pte> {
        let (pa, prot) = self.0.translate(page << PAGE_SHIFT)?;
        Some(Pte {
            pfn: pa >> PAGE_SHIFT,
            prot,
        })
    }

    /// Maps `n` pages from IOVA page `first` to frames from `pfn` (the caller checked that
    /// none is mapped).
    fn map(&mut self, first: u64, n: u64, pfn: u64, prot: Prot) {
        let _ = self.0.map(
            first << PAGE_SHIFT,
            pfn << PAGE_SHIFT,
            n << PAGE_SHIFT,
            prot,
        );
    }

    /// The first mapped page in `[first, first + n)`.
    fn first_in(&self, first: u64, n: u64) -> Option<u64> {
        self.0
            .first_mapped(first << PAGE_SHIFT, n << PAGE_SHIFT)
            .map(|a| a >> PAGE_SHIFT)
    }

    /// Every entry, in IOVA order, one per 4 KiB page: `(page, entry)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Pte)> + '_ {
        self.0.leaves().flat_map(|(iova, l)| {
            (0..l.size >> PAGE_SHIFT).map(move |i| {
                (
                    (iova >> PAGE_SHIFT) + i,
                    Pte {
                        pfn: (l.pa >> PAGE_SHIFT) + i,
                        prot: l.prot,
                    },
                )
            })
        })
    }

    /// Mapped pages.
    pub fn len(&self) -> u64 {
        self.0.stats().mapped >> PAGE_SHIFT
    }
}

/// A live domain.
#[derive(Clone, Debug)]
pub(crate) struct Domain {
    pub unit: u32,
    pub enforcing: bool,
    pub groups: Vec<GroupId>,
    /// IOVA page number -> entry.
    pub pt: PageTable,
    /// Unmapped but not yet invalidated, as runs: (first IOVA page, first pfn, pages, whether
    /// the entries let a non-snooping device write the frames).
    pub stale: Vec<(u64, u64, u64, bool)>,
}

/// The I/O side of the machine. Invariants (checked by `Sim::check_hardware`): every group
/// names a unit that exists; a domain's groups are attached groups whose unit is the domain's,
/// and each attached group is in exactly the domain it names; every device's group exists;
/// `next_domain` is above every live domain id.
#[derive(Clone, Debug)]
pub(crate) struct Hardware {
    pub units: std::collections::BTreeMap<u32, Unit>,
    pub groups: std::collections::BTreeMap<GroupId, Group>,
    pub devices: Vec<crate::device::Device>,
    pub domains: std::collections::BTreeMap<DomainId, Domain>,
    pub next_domain: u32,
    /// Emulated devices' external pins: device -> IOVA -> count.
    pub ext_pins:
        std::collections::BTreeMap<type1_core::DeviceId, std::collections::BTreeMap<u64, u32>>,
}

impl Hardware {
    /// Broken invariants of this part (see the type), one line each.
    pub(crate) fn invariant_errors(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for (id, g) in &self.groups {
            if let Some(u) = g.unit.filter(|u| !self.units.contains_key(u)) {
                errs.push(format!("group {id} names unit {u}, which does not exist"));
            }
            if let Some(d) = g.attached {
                if !self
                    .domains
                    .get(&d)
                    .is_some_and(|dom| dom.groups.contains(id))
                {
                    errs.push(format!(
                        "group {id} says domain {d}, which does not list it"
                    ));
                }
            }
        }
        for (d, dom) in &self.domains {
            if d.0 >= self.next_domain {
                errs.push(format!(
                    "domain {d} is not below next_domain {}",
                    self.next_domain
                ));
            }
            for g in &dom.groups {
                match self.groups.get(g) {
                    Some(gr) if gr.attached == Some(*d) && gr.unit == Some(dom.unit) => {}
                    _ => errs.push(format!(
                        "domain {d} lists group {g}, not attached to it behind unit {}",
                        dom.unit
                    )),
                }
            }
        }
        for dev in &self.devices {
            if !self.groups.contains_key(&dev.group) {
                errs.push(format!(
                    "device {} is in group {}, which does not exist",
                    dev.name, dev.group
                ));
            }
        }
        errs
    }
}

impl Sim {
    /// Counts an IOMMU entry (or unsynced IOTLB entry) pointing at `pfn`; `nc_write` when it
    /// lets a device write the frame without snooping.
    fn iommu_ref(&mut self, pfn: u64, up: bool, nc_write: bool) {
        if self.is_ram(pfn) {
            let f = &mut self.mem.frames[pfn as usize];
            if up {
                f.iommu_refs += 1;
                f.nc_write_refs += u32::from(nc_write);
            } else {
                f.iommu_refs = f.iommu_refs.saturating_sub(1);
                f.nc_write_refs = f.nc_write_refs.saturating_sub(u32::from(nc_write));
            }
        }
    }

    pub(crate) fn do_group_info(&self, group: GroupId) -> Result<GroupInfo, PlatformError> {
        let g = self
            .hw
            .groups
            .get(&group)
            .ok_or_else(|| perr(Errno::ENODEV, format!("group {group} does not exist")))?;
        let Some(u) = g.unit.and_then(|u| self.hw.units.get(&u)) else {
            return Ok(GroupInfo {
                emulated: true,
                reserved: Vec::new(),
                msi_isolated: true,
            });
        };
        let mut reserved = u.reserved.clone();
        reserved.extend(g.reserved.iter().copied());
        Ok(GroupInfo {
            emulated: false,
            reserved,
            msi_isolated: u.msi_isolated,
        })
    }

    pub(crate) fn do_domain_alloc(&mut self, group: GroupId) -> Result<DomainId, PlatformError> {
        let g = self
            .hw
            .groups
            .get(&group)
            .ok_or_else(|| perr(Errno::ENODEV, format!("group {group} does not exist")))?;
        let Some(unit) = g.unit else {
            return Err(perr(
                Errno::EINVAL,
                format!("group {group} is emulated and has no IOMMU"),
            ));
        };
        self.inject(crate::FaultPoint::DomainAlloc)?;
        let id = DomainId(self.hw.next_domain);
        self.hw.next_domain += 1;
        self.hw.domains.insert(
            id,
            Domain {
                unit,
                enforcing: false,
                groups: Vec::new(),
                pt: if self.desc.thp {
                    PageTable::with_pgsizes(self.hw.units[&unit].pgsize_bitmap)
                } else {
                    PageTable::default()
                },
                stale: Vec::new(),
            },
        );
        Ok(id)
    }

    pub(crate) fn do_domain_info(&self, domain: DomainId) -> DomainInfo {
        match self
            .hw
            .domains
            .get(&domain)
            .and_then(|d| self.hw.units.get(&d.unit))
        {
            Some(u) => DomainInfo {
                ops: u.ops,
                aperture: u.aperture,
                pgsize_bitmap: u.pgsize_bitmap,
            },
            None => DomainInfo {
                ops: 0,
                aperture: IovaRange { start: 0, last: 0 },
                pgsize_bitmap: PAGE_SIZE,
            },
        }
    }

    pub(crate) fn do_enforce(&mut self, domain: DomainId) -> bool {
        let Some(d) = self.hw.domains.get_mut(&domain) else {
            self.violate(
                ViolationKind::Contract,
                format!("enforce_cache_coherency on dead domain {domain}"),
            );
            return false;
        };
        let snoop = self.hw.units.get(&d.unit).is_some_and(|u| u.snoop_control);
        if snoop {
            d.enforcing = true;
        }
        snoop
    }

    pub(crate) fn do_attach(
        &mut self,
        domain: DomainId,
        group: GroupId,
    ) -> Result<(), PlatformError> {
        let Some(d) = self.hw.domains.get(&domain) else {
            self.violate(
                ViolationKind::Contract,
                format!("attach of group {group} to dead domain {domain}"),
            );
            return Err(perr(
                Errno::ENODEV,
                format!("domain {domain} does not exist"),
            ));
        };
        let dunit = d.unit;
        let g = self
            .hw
            .groups
            .get(&group)
            .ok_or_else(|| perr(Errno::ENODEV, format!("group {group} does not exist")))?;
        match g.unit {
            None => return Err(perr(Errno::EINVAL, format!("group {group} is emulated"))),
            Some(u) if u != dunit => {
                return Err(perr(
                    Errno::EINVAL,
                    format!(
                    "group {group} sits behind unit {u}, domain {domain} belongs to unit {dunit}"
                ),
                ))
            }
            _ => {}
        }
        if let Some(other) = g.attached {
            return Err(perr(
                Errno::EINVAL,
                format!("group {group} is already attached to domain {other}"),
            ));
        }
        self.inject(crate::FaultPoint::Attach)?;
        self.hw.groups.get_mut(&group).expect("checked").attached = Some(domain);
        self.hw
            .domains
            .get_mut(&domain)
            .expect("checked")
            .groups
            .push(group);
        Ok(())
    }

    pub(crate) fn do_detach(&mut self, domain: DomainId, group: GroupId) {
        let ok = self
            .hw
            .groups
            .get(&group)
            .is_some_and(|g| g.attached == Some(domain));
        if !ok {
            self.violate(
                ViolationKind::Contract,
                format!("detach of group {group} from domain {domain} it is not attached to"),
            );
            return;
        }
        self.hw.groups.get_mut(&group).expect("checked").attached = None;
        if let Some(d) = self.hw.domains.get_mut(&domain) {
            d.groups.retain(|g| *g != group);
        }
    }

    pub(crate) fn do_domain_free(&mut self, domain: DomainId) {
        let Some(d) = self.hw.domains.remove(&domain) else {
            self.violate(
                ViolationKind::Contract,
                format!("domain_free of dead domain {domain}"),
            );
            return;
        };
        // Freeing a domain that still maps pages is legal (type1 frees a detached domain
        // without unmapping it first); freeing one with groups attached is not.
        if !d.groups.is_empty() {
            self.violate(
                ViolationKind::Contract,
                format!(
                    "domain_free of domain {domain} with {} groups attached",
                    d.groups.len()
                ),
            );
        }
        for g in &d.groups {
            if let Some(g) = self.hw.groups.get_mut(g) {
                g.attached = None;
            }
        }
        for (_, pte) in d.pt.iter() {
            self.iommu_ref(pte.pfn, false, !d.enforcing && pte.prot.write);
        }
        for &(_, pfn, n, ncw) in &d.stale {
            for p in pfn..pfn + n {
                self.iommu_ref(p, false, ncw);
            }
        }
    }

    pub(crate) fn do_iommu_map(
        &mut self,
        domain: DomainId,
        iova: u64,
        pa: u64,
        size: u64,
        prot: Prot,
    ) -> Result<(), PlatformError> {
        let what = format!("iommu_map domain {domain} iova 0x{iova:x} pa 0x{pa:x} size 0x{size:x}");
        let Some(d) = self.hw.domains.get(&domain) else {
            self.violate(ViolationKind::Contract, format!("{what}: dead domain"));
            return Err(perr(Errno::ENODEV, what));
        };
        if size == 0 || iova % PAGE_SIZE != 0 || pa % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 {
            self.violate(
                ViolationKind::Contract,
                format!("{what}: zero or unaligned"),
            );
            return Err(perr(Errno::EINVAL, what));
        }
        let Some(range) = IovaRange::from_size(iova, size) else {
            return Err(perr(Errno::EINVAL, format!("{what}: iova wraps")));
        };
        if pa.checked_add(size - 1).is_none() {
            return Err(perr(Errno::EINVAL, format!("{what}: pa wraps")));
        }
        let unit = &self.hw.units[&d.unit];
        if !unit.aperture.contains(&range) {
            return Err(perr(
                Errno::EINVAL,
                format!(
                    "{what}: outside aperture 0x{:x}..=0x{:x}",
                    unit.aperture.start, unit.aperture.last
                ),
            ));
        }
        let (first, n) = (iova >> PAGE_SHIFT, size >> PAGE_SHIFT);
        let physical: u64 =
            self.desc.memory_frames + self.mem.mmio_ranges.iter().map(|r| r.npages).sum::<u64>();
        if n > physical {
            return Err(perr(
                Errno::EINVAL,
                format!("{what}: more pages than the machine has"),
            ));
        }
        if let Some(p) = d.pt.first_in(first, n) {
            let at = p << PAGE_SHIFT;
            self.violate(
                ViolationKind::Contract,
                format!("{what}: iova 0x{at:x} is already mapped"),
            );
            return Err(perr(Errno::EEXIST, what));
        }
        let enforcing = d.enforcing;
        self.inject(crate::FaultPoint::IommuMap)?;
        let pfn0 = pa >> PAGE_SHIFT;
        let d = self.hw.domains.get_mut(&domain).expect("checked");
        d.pt.map(first, n, pfn0, prot);
        self.note_iova(domain, first, n);
        for i in 0..n {
            self.iommu_ref(pfn0 + i, true, !enforcing && prot.write);
            if !enforcing && self.is_ram(pfn0 + i) {
                let f = &mut self.mem.frames[(pfn0 + i) as usize];
                // Only a device that can write the frame behind the cache can leave cache and
                // RAM disagreeing after exposure (F0); reads need the map flush only.
                if prot.write {
                    f.exposed = true;
                    f.needs_unpin_flush = true;
                }
                if f.pins > 0 && !f.flushed_since_pin {
                    self.violate(
                        ViolationKind::MissingMapFlush,
                        format!("pfn 0x{:x} mapped into non-coherent domain {domain} without a cache flush since it was pinned (F3, F4)", pfn0 + i),
                    );
                }
            }
        }
        Ok(())
    }

    pub(crate) fn do_iommu_unmap(&mut self, domain: DomainId, iova: u64, size: u64) -> u64 {
        let Some(d) = self.hw.domains.get_mut(&domain) else {
            self.violate(
                ViolationKind::Contract,
                format!("iommu_unmap on dead domain {domain}"),
            );
            return 0;
        };
        if iova % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 {
            self.violate(
                ViolationKind::Contract,
                format!("iommu_unmap domain {domain} iova 0x{iova:x} size 0x{size:x} unaligned"),
            );
            return 0;
        }
        let mut done = 0u64;
        while done < size {
            let Some(a) = iova.checked_add(done) else {
                break;
            };
            let page = a >> PAGE_SHIFT;
            let Some((n, pfn, prot)) = d.pt.take(page, (size - done) >> PAGE_SHIFT) else {
                break;
            };
            let nc_write = !d.enforcing && prot.write;
            d.stale.push((page, pfn, n, nc_write));
            done += n << PAGE_SHIFT;
        }
        self.note_iova(domain, iova >> PAGE_SHIFT, done >> PAGE_SHIFT);
        done
    }

    pub(crate) fn do_iotlb_sync(&mut self, domain: DomainId) {
        let Some(d) = self.hw.domains.get_mut(&domain) else {
            self.violate(
                ViolationKind::Contract,
                format!("iotlb_sync on dead domain {domain}"),
            );
            return;
        };
        let stale = std::mem::take(&mut d.stale);
        for (_, pfn, n, ncw) in stale {
            for p in pfn..pfn + n {
                self.iommu_ref(p, false, ncw);
            }
        }
    }

    pub(crate) fn do_iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        let d = self.hw.domains.get(&domain)?;
        d.pt.get(&(iova >> PAGE_SHIFT))
            .map(|p| (p.pfn << PAGE_SHIFT) | (iova % PAGE_SIZE))
    }

    // ---- inspection ------------------------------------------------------------------------

    /// Live domains, in id order.
    pub fn live_domains(&self) -> Vec<DomainId> {
        self.hw.domains.keys().copied().collect()
    }

    /// How a domain's page table is made: leaves by size, pages mapped.
    pub fn domain_leaves(&self, domain: DomainId) -> Option<type1_core::iopt::TableStats> {
        Some(self.hw.domains.get(&domain)?.pt.0.stats())
    }

    /// Every entry of a domain's page table, one per page: `(iova, pfn, prot)`.
    pub fn domain_entries(&self, domain: DomainId) -> Vec<(u64, u64, Prot)> {
        self.hw
            .domains
            .get(&domain)
            .map(|d| {
                d.pt.iter()
                    .map(|(p, e)| (p << PAGE_SHIFT, e.pfn, e.prot))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether a live domain enforces cache coherency (`None` for a dead domain).
    pub fn domain_enforces(&self, domain: DomainId) -> Option<bool> {
        self.hw.domains.get(&domain).map(|d| d.enforcing)
    }

    /// Groups attached to a live domain.
    pub fn domain_groups(&self, domain: DomainId) -> Vec<GroupId> {
        self.hw
            .domains
            .get(&domain)
            .map(|d| d.groups.clone())
            .unwrap_or_default()
    }

    /// The domain a group is attached to.
    pub fn group_domain(&self, group: GroupId) -> Option<DomainId> {
        self.hw.groups.get(&group).and_then(|g| g.attached)
    }

    /// Every IOMMU-backed group: `(group id, its unit has snoop control, first device name)`.
    /// Emulated groups are left out.
    pub fn iommu_groups(&self) -> Vec<(u32, bool, String)> {
        self.hw
            .groups
            .iter()
            .filter_map(|(id, g)| {
                let u = self.hw.units.get(&g.unit?)?;
                let dev = self
                    .hw
                    .devices
                    .iter()
                    .find(|d| d.group == *id)
                    .map(|d| d.name.clone())
                    .unwrap_or_default();
                Some((id.0, u.snoop_control, dev))
            })
            .collect()
    }

    /// Every group id of the machine.
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.hw.groups.keys().copied().collect()
    }

    /// Whether a frame is marked as reachable by a non-coherent domain since its last pin.
    pub fn frame_exposed(&self, pfn: u64) -> bool {
        self.is_ram(pfn) && self.mem.frames[pfn as usize].exposed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineDesc;

    /// Unmapping inside a 2 MiB leaf takes exactly the pages asked for, and the rest of the
    /// leaf stays mapped to the same frames.
    #[test]
    fn a_partial_unmap_of_a_large_leaf_keeps_the_rest() {
        let mut pt = PageTable::with_pgsizes((1 << 12) | (1 << 21));
        pt.map(512, 512, 1024, Prot::RW);
        assert_eq!(pt.0.stats().leaves_2m, 1);
        assert_eq!(pt.take(512 + 10, 5), Some((5, 1024 + 10, Prot::RW)));
        assert_eq!(pt.len(), 507);
        assert_eq!(pt.get(&(512 + 9)).map(|p| p.pfn), Some(1024 + 9));
        assert_eq!(pt.get(&(512 + 10)), None);
        assert_eq!(pt.get(&(512 + 15)).map(|p| p.pfn), Some(1024 + 15));
        assert_eq!(pt.iter().count(), 507);
        assert_eq!(pt.take(512 + 12, 3), None);
    }

    #[test]
    fn map_over_existing_entry_is_rejected() {
        let mut s = Sim::new(MachineDesc::default()).unwrap();
        let d = s.do_domain_alloc(GroupId(0)).unwrap();
        s.do_attach(d, GroupId(0)).unwrap();
        s.do_iommu_map(d, 0x10000, 0x5000, 2 * PAGE_SIZE, Prot::RW)
            .unwrap();
        let e = s
            .do_iommu_map(d, 0x11000, 0x9000, PAGE_SIZE, Prot::RW)
            .unwrap_err();
        assert_eq!(e.errno, Errno::EEXIST);
        assert_eq!(s.violations().last().unwrap().kind, "contract");
        assert_eq!(
            s.do_iova_to_phys(d, 0x11008),
            Some(0x6008),
            "old entry kept"
        );
        // Outside the aperture: EINVAL, no violation.
        let n = s.violations().len();
        let e = s
            .do_iommu_map(d, 1 << 48, 0x5000, PAGE_SIZE, Prot::RW)
            .unwrap_err();
        assert_eq!(e.errno, Errno::EINVAL);
        assert_eq!(s.violations().len(), n);
        // Unmap stops at the first hole.
        assert_eq!(s.do_iommu_unmap(d, 0x10000, 4 * PAGE_SIZE), 2 * PAGE_SIZE);
        s.do_iotlb_sync(d);
        s.do_detach(d, GroupId(0));
        s.do_domain_free(d);
        assert_eq!(s.violations().len(), n);
    }

    #[test]
    fn attach_needs_same_unit_and_free_group() {
        let mut s = Sim::new(MachineDesc::default()).unwrap();
        let d0 = s.do_domain_alloc(GroupId(0)).unwrap();
        assert_eq!(
            s.do_attach(d0, GroupId(1)).unwrap_err().errno,
            Errno::EINVAL,
            "other unit, same ops"
        );
        s.do_attach(d0, GroupId(0)).unwrap();
        let d1 = s.do_domain_alloc(GroupId(0)).unwrap();
        assert_eq!(
            s.do_attach(d1, GroupId(0)).unwrap_err().errno,
            Errno::EINVAL,
            "already attached"
        );
        assert_eq!(
            s.do_domain_alloc(GroupId(2)).unwrap_err().errno,
            Errno::EINVAL,
            "emulated"
        );
        assert_eq!(
            s.do_domain_alloc(GroupId(9)).unwrap_err().errno,
            Errno::ENODEV
        );
        assert!(s.do_enforce(d0));
        let d2 = s.do_domain_alloc(GroupId(1)).unwrap();
        assert!(!s.do_enforce(d2));
        assert!(s.do_group_info(GroupId(2)).unwrap().emulated);
        assert_eq!(
            s.do_group_info(GroupId(9)).unwrap_err().errno,
            Errno::ENODEV
        );
    }
}
