//! Attach, detach and replay (A1 to A4), the valid IOVA list (S8) and the page-size bitmap (S9).
//!
//! Attach validates everything against a *copy* of the IOVA list and commits it only at the end,
//! so a failed attach leaves the list, the mappings and the domains as they were. Replay maps
//! every existing mapping into the new domain and, on failure, unwinds in reverse (A2), with the
//! F4/F5 flush rules applied to both directions.

use crate::{
    pin::{flush_run, phys_run, pin_pages_remote, unpin_remote, Batch, Chunk},
    platform::{FlushReason, Platform},
    trace::Event,
    type1::{Domain, GroupRec, Type1},
    AttachError, DomainId, Error, GroupId, Iova, IovaRange, Pa, PinError, Result, ResvKind,
    ResvRegion, PAGE_MASK_BITMAP, PAGE_SHIFT, PAGE_SIZE,
};

/// Clips a sorted IOVA list to an aperture, or creates it from the aperture (`aper_resize`).
fn aper_resize(list: &mut Vec<IovaRange>, aperture: IovaRange) {
    if list.is_empty() {
        list.push(aperture);
        return;
    }
    list.retain(|r| r.overlaps(&aperture));
    for r in list.iter_mut() {
        r.start = r.start.max(aperture.start);
        r.last = r.last.min(aperture.last);
    }
}

/// Subtracts non-relaxable reserved regions from a list (`resv_exclude`).
fn resv_exclude(list: &mut Vec<IovaRange>, resv: &[ResvRegion]) -> Result<()> {
    for r in resv.iter().filter(|r| r.kind != ResvKind::DirectRelaxable) {
        let mut out = Vec::with_capacity(list.len() + 1);
        for n in list.drain(..) {
            if !n.overlaps(&r.range) {
                out.push(n);
                continue;
            }
            if n.start < r.range.start {
                out.push(IovaRange {
                    start: n.start,
                    last: r.range.start - 1,
                });
            }
            if n.last > r.range.last {
                out.push(IovaRange {
                    start: r.range.last + 1,
                    last: n.last,
                });
            }
        }
        *list = out;
    }
    if list.is_empty() {
        return Err(AttachError::NoIovaLeft.into());
    }
    Ok(())
}

/// Flushes, run by run, the pages of `[iova + from, iova + size)` as the head domain maps them.
fn flush_rest<P: Platform + ?Sized>(
    p: &mut P,
    policy: &dyn crate::policy::FlushPolicy,
    head: DomainId,
    iova: u64,
    from: u64,
    size: u64,
) {
    let mut off = from;
    while off < size {
        let at = iova + off;
        let Some((phys, len)) = phys_run(p, head, iova, off, size) else {
            off += PAGE_SIZE;
            continue;
        };
        flush_run(
            p,
            policy,
            FlushReason::Replay,
            at,
            phys >> PAGE_SHIFT,
            len >> PAGE_SHIFT,
        );
        off += len;
    }
}

impl Type1 {
    fn any_dma_in(&self, start: u64, last: u64) -> bool {
        start <= last
            && self
                .find_dma(start, (last - start).saturating_add(1))
                .is_some()
    }

    /// `vfio_iommu_aper_conflict` (A1 step 6).
    fn aper_conflict(&self, ap: IovaRange) -> bool {
        let (Some(first), Some(last)) = (self.iova_list.first(), self.iova_list.last()) else {
            return false;
        };
        if ap.start > last.last || ap.last < first.start {
            return true;
        }
        (ap.start > first.start && self.any_dma_in(first.start, ap.start - 1))
            || (ap.last < last.last && self.any_dma_in(ap.last + 1, last.last))
    }

    /// `vfio_update_pgsize_bitmap` (S9).
    fn update_pgsize_bitmap(&mut self) {
        let mut bm = if self.domains.is_empty() {
            PAGE_MASK_BITMAP
        } else {
            u64::MAX
        };
        for d in &self.domains {
            bm &= d.info.pgsize_bitmap;
        }
        if bm & (PAGE_SIZE - 1) != 0 {
            bm &= PAGE_MASK_BITMAP;
            bm |= PAGE_SIZE;
        }
        self.pgsize_bitmap = bm;
    }

    /// attach_group (A1). `emulated` comes from the platform's group facts.
    pub fn attach_group<P: Platform + ?Sized>(&mut self, p: &mut P, group: GroupId) -> Result<()> {
        if self.vaddr_invalid_count > 0 {
            return Err(AttachError::VaddrInvalid.into());
        }
        if self.has_group(group) {
            return Err(AttachError::Attached(group).into());
        }
        let ginfo = p.group_info(group)?;
        if ginfo.emulated {
            self.emulated_groups.push(GroupRec {
                id: group,
                pinned_page_dirty_scope: true,
            });
            p.trace(Event::Attach {
                group,
                domain: DomainId(u32::MAX),
                coherent: true,
                new_domain: false,
            });
            return Ok(());
        }
        let dom = p.domain_alloc(group)?;
        if let Err(e) = p.attach_group(dom, group) {
            p.domain_free(dom);
            return Err(e.into());
        }
        match self.attach_new_domain(p, group, dom, &ginfo) {
            Ok(()) => Ok(()),
            Err((e, attached)) => {
                if attached {
                    p.detach_group(dom, group);
                }
                p.domain_free(dom);
                Err(e)
            }
        }
    }

    /// A1 steps 6 to 17 once the group sits in a fresh domain. On error reports whether the
    /// group is still attached to `dom`.
    fn attach_new_domain<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        group: GroupId,
        dom: DomainId,
        ginfo: &crate::platform::GroupInfo,
    ) -> std::result::Result<(), (Error, bool)> {
        let info = p.domain_info(dom);
        if self.aper_conflict(info.aperture) {
            return Err((AttachError::Aperture.into(), true));
        }
        for r in &ginfo.reserved {
            if r.kind != ResvKind::DirectRelaxable && self.any_dma_in(r.range.start, r.range.last) {
                return Err((
                    AttachError::Reserved {
                        start: r.range.start,
                        last: r.range.last,
                    }
                    .into(),
                    true,
                ));
            }
        }
        let mut iova_copy = self.iova_list.clone();
        aper_resize(&mut iova_copy, info.aperture);
        resv_exclude(&mut iova_copy, &ginfo.reserved).map_err(|e| (e, true))?;
        let has_hw_msi = ginfo.reserved.iter().any(|r| r.kind == ResvKind::Msi);
        let sw_msi = !has_hw_msi && ginfo.reserved.iter().any(|r| r.kind == ResvKind::SwMsi);
        if !self.cfg.allow_unsafe_interrupts && !ginfo.msi_isolated {
            return Err((AttachError::MsiIsolation(group).into(), true));
        }
        let enforce = p.domain_enforce_cache_coherency(dom);
        // A1 step 12: try to share an existing compatible domain.
        let mut still_attached = true;
        for i in 0..self.domains.len() {
            let d = &self.domains[i];
            if d.info.ops != info.ops || d.enforce_cache_coherency != enforce {
                continue;
            }
            let did = d.id;
            p.detach_group(dom, group);
            if p.attach_group(did, group).is_ok() {
                p.domain_free(dom);
                self.domains[i].groups.push(GroupRec {
                    id: group,
                    pinned_page_dirty_scope: false,
                });
                p.trace(Event::Attach {
                    group,
                    domain: did,
                    coherent: enforce,
                    new_domain: false,
                });
                self.iova_list = iova_copy;
                self.num_non_pinned_groups += 1;
                return Ok(());
            }
            if let Err(e) = p.attach_group(dom, group) {
                still_attached = false;
                return Err((e.into(), still_attached));
            }
        }
        let _ = still_attached;
        p.trace(Event::Attach {
            group,
            domain: dom,
            coherent: enforce,
            new_domain: true,
        });
        self.replay(p, dom, enforce).map_err(|e| (e, true))?;
        if sw_msi {
            if let Err(e) = p.install_msi_cookie(dom) {
                if e.errno != crate::Errno::ENODEV {
                    self.unreplay_all(p, dom);
                    return Err((e.into(), true));
                }
            }
        }
        self.domains.insert(
            0,
            Domain {
                id: dom,
                info,
                groups: vec![GroupRec {
                    id: group,
                    pinned_page_dirty_scope: false,
                }],
                enforce_cache_coherency: enforce,
            },
        );
        // F1: link wrapper.
        if !enforce {
            self.noncoherent_domains += 1;
        }
        self.update_pgsize_bitmap();
        self.iova_list = iova_copy;
        self.num_non_pinned_groups += 1;
        Ok(())
    }

    /// Replay (A2) with F4's flush on first exposure to a non-coherent domain.
    fn replay<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        new: DomainId,
        coherent: bool,
    ) -> Result<()> {
        let task = p.current();
        let head = self.domains.first().map(|d| d.id);
        let disable_hp = self.cfg.disable_hugepages;
        let keys: Vec<u64> = self.dmas.keys().copied().collect();
        let mut failed: Option<(usize, Error)> = None;
        'outer: for (idx, &k) in keys.iter().enumerate() {
            let Type1 { dmas, policy, .. } = &mut *self;
            let policy = &**policy;
            let dma = dmas.get_mut(&k).expect("present");
            let decision = policy.on_replay(dma.is_noncoherent, coherent);
            dma.is_noncoherent = decision.flag;
            let mut batch = Batch::new(disable_hp, p.pin_batch_pages());
            let mut off = 0;
            while off < dma.size {
                let iova = dma.iova + off;
                let chunk = if dma.iommu_mapped {
                    let h = head.expect("mapped implies a head domain");
                    let Some((phys, len)) = phys_run(p, h, dma.iova, off, dma.size) else {
                        off += PAGE_SIZE;
                        continue;
                    };
                    Chunk {
                        pfn: phys >> PAGE_SHIFT,
                        npages: len >> PAGE_SHIFT,
                    }
                } else {
                    let Some(task) = task else {
                        failed = Some((idx, PinError::NoUserContext.into()));
                        break 'outer;
                    };
                    let npage = (dma.size - off) >> PAGE_SHIFT;
                    match pin_pages_remote(
                        p,
                        dma,
                        task,
                        dma.vaddr + off,
                        npage,
                        task.memlock_limit_pages,
                        &mut batch,
                        disable_hp,
                    ) {
                        Ok(c) => c,
                        Err(e) => {
                            failed = Some((idx, e));
                            break 'outer;
                        }
                    }
                };
                if decision.flush {
                    flush_run(
                        p,
                        policy,
                        FlushReason::Replay,
                        iova,
                        chunk.pfn,
                        chunk.npages,
                    );
                }
                let size = chunk.npages << PAGE_SHIFT;
                if let Err(e) =
                    p.iommu_map(new, Iova(iova), Pa(chunk.pfn << PAGE_SHIFT), size, dma.prot)
                {
                    if !dma.iommu_mapped {
                        unpin_remote(p, policy, dma, iova, chunk.pfn, chunk.npages, true);
                        batch.release(p, dma);
                    } else if decision.flush && policy.flush_rest_on_failed_replay() {
                        // The flag set by this replay survives the unwind (F5), and the next
                        // replay into a non-coherent domain will skip the flush because of it:
                        // flush the chunks this replay never reached, so that the flag keeps
                        // meaning "every page was flushed while pinned".
                        let h = head.expect("mapped implies a head domain");
                        flush_rest(p, policy, h, dma.iova, off + size, dma.size);
                    }
                    failed = Some((idx, e.into()));
                    break 'outer;
                }
                p.trace(Event::Map {
                    domain: new,
                    iova,
                    npages: chunk.npages,
                    pa: chunk.pfn << PAGE_SHIFT,
                });
                off += size;
            }
            batch.release(p, dma);
        }
        if let Some((idx, e)) = failed {
            for &k in keys[..=idx].iter().rev() {
                self.replay_unwind_one(p, new, k);
            }
            return Err(e);
        }
        for d in self.dmas.values_mut() {
            d.iommu_mapped = true;
        }
        Ok(())
    }

    /// Undoes the replay of one mapping into `new` (A2 unwind, F5).
    fn replay_unwind_one<P: Platform + ?Sized>(&mut self, p: &mut P, new: DomainId, k: u64) {
        let Type1 { dmas, policy, .. } = &mut *self;
        let policy = &**policy;
        let dma = dmas.get_mut(&k).expect("present");
        if dma.iommu_mapped {
            // Only N's mapping goes; the flag set by this replay is kept (F5).
            let n = p.iommu_unmap(new, Iova(dma.iova), dma.size);
            p.iotlb_sync(new);
            p.trace(Event::Unmap {
                domain: new,
                iova: dma.iova,
                npages: n >> PAGE_SHIFT,
            });
            return;
        }
        let mut off = 0;
        while off < dma.size {
            let iova = dma.iova + off;
            let Some((phys, len)) = phys_run(p, new, dma.iova, off, dma.size) else {
                off += PAGE_SIZE;
                continue;
            };
            let n = p.iommu_unmap(new, Iova(iova), len);
            p.iotlb_sync(new);
            p.trace(Event::Unmap {
                domain: new,
                iova,
                npages: n >> PAGE_SHIFT,
            });
            unpin_remote(
                p,
                policy,
                dma,
                iova,
                phys >> PAGE_SHIFT,
                len >> PAGE_SHIFT,
                true,
            );
            off += len;
        }
        // Cleared only after the pages were unpinned (and flushed), F5.
        dma.is_noncoherent = false;
    }

    /// Undoes a complete replay (an error after replay, A1 step 15).
    fn unreplay_all<P: Platform + ?Sized>(&mut self, p: &mut P, new: DomainId) {
        let had_domains = !self.domains.is_empty();
        let keys: Vec<u64> = self.dmas.keys().copied().collect();
        for &k in keys.iter().rev() {
            if !had_domains {
                self.dmas.get_mut(&k).expect("present").iommu_mapped = false;
            }
            self.replay_unwind_one(p, new, k);
        }
    }

    /// detach_group (A3, A4). Never fails; unknown groups are ignored.
    pub fn detach_group<P: Platform + ?Sized>(&mut self, p: &mut P, group: GroupId) {
        let update_dirty_scope;
        if let Some(i) = self.emulated_groups.iter().position(|g| g.id == group) {
            let g = self.emulated_groups.remove(i);
            update_dirty_scope = !g.pinned_page_dirty_scope;
            p.trace(Event::Detach {
                group,
                domain: DomainId(u32::MAX),
                freed: false,
            });
            if self.emulated_groups.is_empty() && self.domains.is_empty() {
                self.unmap_unpin_all(p);
            }
        } else if let Some(di) = self
            .domains
            .iter()
            .position(|d| d.groups.iter().any(|g| g.id == group))
        {
            let mut iova_copy = self.iova_list.clone();
            let dom = self.domains[di].id;
            p.detach_group(dom, group);
            let gi = self.domains[di]
                .groups
                .iter()
                .position(|g| g.id == group)
                .expect("found");
            let g = self.domains[di].groups.remove(gi);
            update_dirty_scope = !g.pinned_page_dirty_scope;
            let empty = self.domains[di].groups.is_empty();
            if empty {
                if self.domains.len() == 1 {
                    if self.emulated_groups.is_empty() {
                        self.unmap_unpin_all(p);
                    } else {
                        self.unmap_unpin_reaccount(p);
                    }
                }
                let d = self.domains.remove(di);
                // F1: unlink wrapper.
                if !d.enforce_cache_coherency {
                    self.noncoherent_domains -= 1;
                }
                p.domain_free(d.id);
                self.aper_expand(&mut iova_copy);
                self.update_pgsize_bitmap();
            }
            p.trace(Event::Detach {
                group,
                domain: dom,
                freed: empty,
            });
            if let Ok(list) = self.resv_refresh(p, &iova_copy) {
                self.iova_list = list;
            }
        } else {
            return;
        }
        if update_dirty_scope {
            self.num_non_pinned_groups -= 1;
            if self.dirty_page_tracking {
                self.populate_bitmap_full();
            }
        }
    }

    fn aper_expand(&self, copy: &mut [IovaRange]) {
        if copy.is_empty() {
            return;
        }
        let mut ap = IovaRange::FULL;
        for d in &self.domains {
            ap.start = ap.start.max(d.info.aperture.start);
            ap.last = ap.last.min(d.info.aperture.last);
        }
        copy[0].start = ap.start;
        let n = copy.len();
        copy[n - 1].last = ap.last;
    }

    fn resv_refresh<P: Platform + ?Sized>(
        &self,
        p: &P,
        copy: &[IovaRange],
    ) -> Result<Vec<IovaRange>> {
        let mut resv = Vec::new();
        for d in &self.domains {
            for g in &d.groups {
                resv.extend(p.group_info(g.id)?.reserved);
            }
        }
        let (Some(f), Some(l)) = (copy.first(), copy.last()) else {
            return Err(AttachError::NoIovaLeft.into());
        };
        let mut list = vec![IovaRange {
            start: f.start,
            last: l.last,
        }];
        resv_exclude(&mut list, &resv)?;
        Ok(list)
    }

    /// `vfio_iommu_unmap_unpin_all`: removes every mapping.
    pub(crate) fn unmap_unpin_all<P: Platform + ?Sized>(&mut self, p: &mut P) {
        let keys: Vec<u64> = self.dmas.keys().copied().collect();
        for k in keys {
            self.remove_dma(p, k);
        }
    }

    /// `vfio_iommu_unmap_unpin_reaccount`: drop all remote pins, keep the mappings, and leave
    /// only the external pins charged (A3).
    fn unmap_unpin_reaccount<P: Platform + ?Sized>(&mut self, p: &mut P) {
        let keys: Vec<u64> = self.dmas.keys().copied().collect();
        for k in keys {
            let unlocked = self.unmap_unpin(p, k, false);
            let dma = self.dmas.get_mut(&k).expect("present");
            let locked = dma
                .pfn_list
                .values()
                .filter(|v| !p.pfn_is_reserved(v.pfn))
                .count() as i64;
            let _ = crate::pin::lock_acct_dma(p, dma, locked - unlocked as i64, true);
        }
    }

    /// Container release (C8): emulated groups, then mappings, then domains, then the list.
    pub fn release<P: Platform + ?Sized>(&mut self, p: &mut P) {
        self.emulated_groups.clear();
        self.unmap_unpin_all(p);
        while let Some(d) = self.domains.first().cloned() {
            for g in &d.groups {
                p.detach_group(d.id, g.id);
                p.trace(Event::Detach {
                    group: g.id,
                    domain: d.id,
                    freed: true,
                });
            }
            if !d.enforce_cache_coherency {
                self.noncoherent_domains -= 1;
            }
            p.domain_free(d.id);
            self.domains.remove(0);
        }
        self.iova_list.clear();
        self.update_pgsize_bitmap();
        debug_assert_eq!(
            self.noncoherent_domains, 0,
            "F1 counter reaches 0 at release"
        );
    }
}
