//! Devices and HWPTs: bind and unbind, HWPT allocation (filled at once; 5/5's count of
//! non-coherent HWPTs), attach with replace, detach, and the context's close.

use super::*;
use crate::{trace::Event, DomainId, Errno, GroupId, Platform, ResvKind};

impl Ictx {
    // ---- devices and HWPTs --------------------------------------------------------------------

    /// `VFIO_DEVICE_BIND_IOMMUFD`: a device object for the group's device.
    pub fn bind(&mut self, group: GroupId) -> u32 {
        self.insert(Obj::Device(Idev { group, hwpt: None }))
    }

    /// The unbind at the device file's close: detach, then the object goes.
    pub fn unbind<P: Platform + ?Sized>(&mut self, p: &mut P, idev: u32) {
        self.detach(p, idev);
        self.objs.remove(&idev);
    }

    /// Adds a domain to an IOAS: every area is filled into it (`iopt_table_add_domain`); on
    /// failure the areas done are unfilled and the domain is left empty.
    pub(super) fn add_domain<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
        d: DomainId,
        coherent: bool,
    ) -> Result<(), Errno> {
        let areas: Vec<(u64, Area)> = self
            .ioas(ioas)?
            .areas
            .iter()
            .map(|(s, a)| (*s, a.clone()))
            .collect();
        // An area outside the new domain's aperture: the aperture's complement is reserved in
        // the IOAS, and reserving over an area is EADDRINUSE (`iopt_reserve_iova`).
        let ap = p.domain_info(d).aperture;
        if areas.iter().any(|(s, a)| *s < ap.start || a.last > ap.last) {
            return Err(EADDRINUSE);
        }
        for (k, (s, a)) in areas.iter().enumerate() {
            if let Err(e) = self.fill(p, ioas, *s, a, &[(d, coherent)]) {
                for (s2, a2) in areas[..k].iter().rev() {
                    self.unfill(p, *s2, a2, a2.npages(*s2), &[(d, coherent)]);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// `IOMMU_HWPT_ALLOC` (paging, no flags): a domain for the device's IOMMU over the IOAS,
    /// filled, attached to nothing.
    pub fn hwpt_alloc<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        idev: u32,
        ioas: u32,
    ) -> Result<u32, Errno> {
        let group = self.idev(idev)?.group;
        self.ioas(ioas)?;
        let (d, coherent) = new_domain(p, group)?;
        self.hwpt_new(p, d, coherent, ioas, false)
    }

    /// A HWPT over the IOAS with a fresh domain `d`, filled; on failure `d` is freed.
    pub(super) fn hwpt_new<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        d: DomainId,
        coherent: bool,
        ioas: u32,
        auto: bool,
    ) -> Result<u32, Errno> {
        // 5/5 counts a non-coherent HWPT before its domain is filled...
        if !coherent {
            self.count_noncoherent(ioas, 1);
        }
        if let Err(e) = self.add_domain(p, ioas, d, coherent) {
            // ... and uncounts on this error path, as posted whatever the coherency.
            if !coherent || self.policy.uncounts_any_failed_hwpt() {
                self.count_noncoherent(ioas, -1);
            }
            p.domain_free(d);
            return Err(e);
        }
        let id = self.insert(Obj::Hwpt(Hwpt {
            ioas,
            domain: d,
            coherent,
            auto,
            devices: Vec::new(),
        }));
        if let Ok(i) = self.ioas_mut(ioas) {
            i.hwpts.push(id);
        }
        Ok(id)
    }

    pub(super) fn free_hwpt<P: Platform + ?Sized>(&mut self, p: &mut P, id: u32) {
        let Ok(h) = self.hwpt(id).cloned() else {
            return;
        };
        let areas: Vec<(u64, Area)> = self
            .ioas(h.ioas)
            .map(|i| i.areas.iter().map(|(s, a)| (*s, a.clone())).collect())
            .unwrap_or_default();
        for (s, a) in areas.iter().rev() {
            self.unfill(p, *s, a, a.npages(*s), &[(h.domain, h.coherent)]);
        }
        if let Ok(i) = self.ioas_mut(h.ioas) {
            i.hwpts.retain(|x| *x != id);
        }
        if !h.coherent {
            self.count_noncoherent(h.ioas, -1);
        }
        self.objs.remove(&id);
        p.domain_free(h.domain);
    }

    /// Raises or lowers an IOAS's count of non-coherent HWPTs, wrapping as a C `unsigned int`.
    pub(super) fn count_noncoherent(&mut self, ioas: u32, by: i32) {
        if let Ok(i) = self.ioas_mut(ioas) {
            i.noncoherent = i.noncoherent.wrapping_add_signed(by);
        }
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: to a HWPT by id, or to an IOAS, where an automatic
    /// HWPT of the same IOMMU and coherency is shared or a new one made. A device already
    /// attached is moved (replace). Returns the HWPT id. EINVAL for an IOAS whose areas the
    /// device's reserved regions overlap (EADDRINUSE) or a HWPT of another IOMMU.
    pub fn attach<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        idev: u32,
        pt: u32,
    ) -> Result<u32, Errno> {
        let group = self.idev(idev)?.group;
        let target = match self.obj_type(pt)? {
            ObjType::Hwpt => pt,
            ObjType::Ioas => self.auto_hwpt(p, group, pt)?,
            ObjType::Device => return Err(Errno::EINVAL),
        };
        if self.idev(idev)?.hwpt == Some(target) {
            return Ok(target);
        }
        let h = self.hwpt(target)?.clone();
        // The device's reserved regions must not cover an area of the IOAS.
        let resv = p.group_info(group).map_err(|e| e.errno)?.reserved;
        let areas = &self.ioas(h.ioas)?.areas;
        if resv
            .iter()
            .filter(|x| x.kind != ResvKind::DirectRelaxable)
            .any(|x| overlapping(areas, x.range).next().is_some())
        {
            self.drop_unused_auto(p, target);
            return Err(EADDRINUSE);
        }
        // A replace (the device is attached elsewhere) is atomic in the kernel: on failure
        // the device stays where it was. The platform attaches one domain at a time, so the
        // old one is left, the new one tried, and the old one taken back if that fails.
        let old = self.idev(idev)?.hwpt;
        let old_domain = old.and_then(|o| self.hwpt(o).ok()).map(|x| x.domain);
        if let Some(d) = old_domain {
            p.detach_group(d, group);
        }
        if let Err(e) = p.attach_group(h.domain, group) {
            if let Some(d) = old_domain {
                // Back to a domain the group was just attached to: the kernel's revert
                // (`__iommu_group_set_domain_nofail`) cannot fail.
                let _ = p.attach_group(d, group);
            }
            self.drop_unused_auto(p, target);
            return Err(e.errno);
        }
        if let Some(o) = old {
            self.forget_attachment(p, idev, o, group);
        }
        p.trace(Event::Attach {
            group,
            domain: h.domain,
            coherent: h.coherent,
            new_domain: h.devices.is_empty(),
        });
        if let Some(Obj::Hwpt(hw)) = self.objs.get_mut(&target) {
            hw.devices.push(idev);
        }
        self.idev_mut(idev)?.hwpt = Some(target);
        Ok(target)
    }

    /// The automatic HWPT a device attaching to `ioas` uses: an existing one of the same
    /// IOMMU (ops) and coherency as a domain for the device (which is then freed), else a
    /// new one over that domain.
    pub(super) fn auto_hwpt<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        group: GroupId,
        ioas: u32,
    ) -> Result<u32, Errno> {
        let hwpts = self.ioas(ioas)?.hwpts.clone();
        let (d, coherent) = new_domain(p, group)?;
        let ops = p.domain_info(d).ops;
        for h in hwpts {
            if let Ok(x) = self.hwpt(h) {
                if x.auto && x.coherent == coherent && p.domain_info(x.domain).ops == ops {
                    p.domain_free(d);
                    return Ok(h);
                }
            }
        }
        self.hwpt_new(p, d, coherent, ioas, true)
    }

    pub(super) fn drop_unused_auto<P: Platform + ?Sized>(&mut self, p: &mut P, hwpt: u32) {
        if self
            .hwpt(hwpt)
            .is_ok_and(|h| h.auto && h.devices.is_empty())
        {
            self.free_hwpt(p, hwpt);
        }
    }

    pub(super) fn detach_from<P: Platform + ?Sized>(&mut self, p: &mut P, idev: u32, hwpt: u32) {
        let Ok(group) = self.idev(idev).map(|d| d.group) else {
            return;
        };
        let Ok(h) = self.hwpt(hwpt) else {
            return;
        };
        p.detach_group(h.domain, group);
        self.forget_attachment(p, idev, hwpt, group);
    }

    /// The bookkeeping of a detach whose platform side is done: the HWPT forgets the device
    /// (and goes if it was automatic and this was its last), the device its HWPT.
    pub(super) fn forget_attachment<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        idev: u32,
        hwpt: u32,
        group: GroupId,
    ) {
        let Ok(h) = self.hwpt(hwpt).cloned() else {
            return;
        };
        if let Some(Obj::Hwpt(hw)) = self.objs.get_mut(&hwpt) {
            hw.devices.retain(|d| *d != idev);
        }
        let freed = h.auto && h.devices.len() == 1;
        p.trace(Event::Detach {
            group,
            domain: h.domain,
            freed,
        });
        if let Ok(d) = self.idev_mut(idev) {
            d.hwpt = None;
        }
        self.drop_unused_auto(p, hwpt);
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT` (and unbind): an automatic HWPT left without devices
    /// is destroyed. Nothing happens for a device attached to nothing.
    pub fn detach<P: Platform + ?Sized>(&mut self, p: &mut P, idev: u32) {
        if let Some(h) = self.idev(idev).ok().and_then(|d| d.hwpt) {
            self.detach_from(p, idev, h);
        }
    }

    /// The last close of `/dev/iommu`: devices are already unbound by their files; every
    /// HWPT, then every IOAS, goes.
    pub fn close<P: Platform + ?Sized>(&mut self, p: &mut P) {
        for d in self.ids_of(ObjType::Device) {
            self.unbind(p, d);
        }
        for h in self.ids_of(ObjType::Hwpt) {
            self.free_hwpt(p, h);
        }
        let ioases: Vec<u32> = self.objs.keys().copied().collect();
        for i in ioases {
            let _ = self.destroy(p, i);
        }
    }
}
