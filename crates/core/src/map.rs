//! MAP_DMA, UNMAP_DMA and mapping removal (M1 to M3, U1 to U9, V1, V3, P6).
//!
//! Order matters everywhere in this file: each check comes at the position the kernel makes it,
//! so that the first failing check decides the errno, and no state changes before the last
//! check that can fail without unwinding.

use std::collections::BTreeMap;

use crate::{
    abi::*,
    pin::{flush_run, lock_acct_dma, phys_run, pin_pages_remote, unpin_remote, Batch},
    platform::{FlushReason, Platform},
    trace::Event,
    type1::{Dma, Type1},
    BitmapError, Error, Iova, IovaRange, MapError, Pa, PinError, Prot, Result, UnmapError,
    DIRTY_BITMAP_SIZE_MAX, PAGE_SHIFT, PAGE_SIZE,
};

/// What a MAP_DMA asks for (M1): new mappings with these permissions, or (`vaddr`, V2) a new
/// user address for mappings that exist. Both set, or neither, is EINVAL in the engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapFlags {
    /// `VFIO_DMA_MAP_FLAG_READ` and `_WRITE`.
    pub prot: Prot,
    /// `VFIO_DMA_MAP_FLAG_VADDR`.
    pub vaddr: bool,
}

impl MapFlags {
    /// Read and write: what a VMM maps guest RAM with.
    pub const RW: MapFlags = MapFlags {
        prot: Prot {
            read: true,
            write: true,
        },
        vaddr: false,
    };

    /// The flags word of `struct vfio_iommu_type1_dma_map`: EINVAL for unknown bits (M1.2, the
    /// ioctl's first check).
    pub fn decode(flags: u32) -> Result<MapFlags> {
        if flags & !(MAP_FLAG_READ | MAP_FLAG_WRITE | MAP_FLAG_VADDR) != 0 {
            return Err(MapError::UnknownFlags(flags).into());
        }
        Ok(MapFlags {
            prot: Prot {
                read: flags & MAP_FLAG_READ != 0,
                write: flags & MAP_FLAG_WRITE != 0,
            },
            vaddr: flags & MAP_FLAG_VADDR != 0,
        })
    }
}

/// A MAP_DMA request (`struct vfio_iommu_type1_dma_map` without `argsz`, flags decoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRequest {
    /// What is asked.
    pub flags: MapFlags,
    /// User virtual address.
    pub vaddr: u64,
    /// IOVA.
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A user dirty bitmap (`struct vfio_bitmap`), already copied in.
#[derive(Debug)]
pub struct UserBitmap<'a> {
    /// Page size each bit stands for.
    pub pgsize: u64,
    /// Size of the user buffer in bytes.
    pub size: u64,
    /// The buffer (zeroed by the caller, D5).
    pub data: &'a mut [u64],
}

/// How an UNMAP_DMA unmaps (U1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapFlags {
    /// `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`: the request carries a bitmap.
    pub get_dirty_bitmap: bool,
    /// `VFIO_DMA_UNMAP_FLAG_ALL`: every mapping (iova and size must be 0).
    pub all: bool,
    /// `VFIO_DMA_UNMAP_FLAG_VADDR`: invalidate the user addresses only (V1).
    pub vaddr: bool,
}

impl UnmapFlags {
    /// The flags word of `struct vfio_iommu_type1_dma_unmap`: EINVAL for unknown bits, and for
    /// GET_DIRTY_BITMAP with ALL or VADDR (U1.2, U1.3, the ioctl's first checks).
    pub fn decode(flags: u32) -> Result<UnmapFlags> {
        if flags & !(UNMAP_FLAG_GET_DIRTY_BITMAP | UNMAP_FLAG_ALL | UNMAP_FLAG_VADDR) != 0 {
            return Err(UnmapError::UnknownFlags(flags).into());
        }
        let f = UnmapFlags {
            get_dirty_bitmap: flags & UNMAP_FLAG_GET_DIRTY_BITMAP != 0,
            all: flags & UNMAP_FLAG_ALL != 0,
            vaddr: flags & UNMAP_FLAG_VADDR != 0,
        };
        if f.get_dirty_bitmap && (f.all || f.vaddr) {
            return Err(UnmapError::BitmapWithAllOrVaddr.into());
        }
        Ok(f)
    }
}

/// An UNMAP_DMA request.
#[derive(Debug)]
pub struct UnmapRequest<'a> {
    /// How.
    pub flags: UnmapFlags,
    /// IOVA.
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
    /// The bitmap, with GET_DIRTY_BITMAP.
    pub bitmap: Option<UserBitmap<'a>>,
}

/// `verify_bitmap_size` (U1, D4): the bitmap must hold `npages` bits and be at most 2^28 bytes.
pub(crate) fn verify_bitmap_size(npages: u64, bitmap_size: u64) -> Result<()> {
    let bad = BitmapError::BadSize {
        size: bitmap_size,
        npages,
    };
    if npages == 0 || bitmap_size == 0 || bitmap_size > DIRTY_BITMAP_SIZE_MAX {
        return Err(bad.into());
    }
    if bitmap_size < npages.div_ceil(64) * 8 {
        return Err(bad.into());
    }
    Ok(())
}

impl Type1 {
    /// U3 and D4 step 6: the boundary (`iova` or `last`) that falls strictly inside a
    /// mapping, with that mapping's key, if one does (the callers' EINVAL).
    pub(crate) fn bisected(&self, iova: u64, last: u64) -> Option<(u64, u64)> {
        if let Some(k) = self.find_dma(iova, 1) {
            if k != iova {
                return Some((iova, k));
            }
        }
        if let Some(k) = self.find_dma(last, 1) {
            if self.dmas[&k].last() != last {
                return Some((last, k));
            }
        }
        None
    }

    /// VFIO_IOMMU_MAP_DMA (M1). The caller's task comes from the platform.
    pub fn map_dma<P: Platform + ?Sized>(&mut self, p: &mut P, req: MapRequest) -> Result<()> {
        let MapRequest {
            flags,
            vaddr,
            iova,
            size,
        } = req;
        // M1.2 (unknown flags) is `MapFlags::decode`'s, at the edge.
        // M1.4, M1.5 (NEW): size 0, then wrap of iova or vaddr.
        if size == 0 {
            return Err(MapError::SizeZero.into());
        }
        if iova.checked_add(size - 1).is_none() {
            return Err(MapError::IovaWraps { iova, size }.into());
        }
        if vaddr.checked_add(size - 1).is_none() {
            return Err(MapError::VaddrWraps { vaddr, size }.into());
        }
        // M1.6: prot vs VADDR.
        let MapFlags {
            prot,
            vaddr: set_vaddr,
        } = flags;
        let has_prot = prot.read || prot.write;
        if has_prot == set_vaddr {
            return Err(if set_vaddr {
                MapError::VaddrWithProt
            } else {
                MapError::NoProt
            }
            .into());
        }
        // M1.7: alignment to PG.
        let pg = self.pgsize();
        if size % pg != 0 || iova % pg != 0 || vaddr % pg != 0 {
            return Err(MapError::Unaligned {
                iova,
                vaddr,
                size,
                pgsize: pg,
            }
            .into());
        }
        // M1.9: overlap, or V3.
        let existing = self.find_dma(iova, size);
        if set_vaddr {
            return self.update_vaddr(p, existing, iova, size, vaddr);
        }
        if existing.is_some() {
            return Err(MapError::Exists { iova, size }.into());
        }
        // M1.10
        if self.dma_avail == 0 {
            return Err(MapError::EntryLimit.into());
        }
        // M1.11: inside one valid range.
        let range = IovaRange {
            start: iova,
            last: iova + (size - 1),
        };
        if !self.iova_list.is_empty() && !self.iova_list.iter().any(|r| r.contains(&range)) {
            return Err(MapError::OutsideValidIova {
                start: range.start,
                last: range.last,
            }
            .into());
        }
        let Some(task) = p.current() else {
            return Err(PinError::NoUserContext.into());
        };
        // M1.13: insert at size 0.
        self.dma_avail -= 1;
        let mut dma = Dma {
            iova,
            vaddr,
            size: 0,
            prot,
            iommu_mapped: false,
            lock_cap: task.cap_ipc_lock,
            vaddr_invalid: false,
            mm: task.mm,
            locked_vm: 0,
            pfn_list: BTreeMap::new(),
            bitmap: None,
            is_noncoherent: false,
        };
        // M1.14
        if self.domains.is_empty() {
            dma.size = size;
            self.dmas.insert(iova, dma);
        } else {
            self.dmas.insert(iova, dma);
            if let Err(e) = self.pin_map_dma(p, iova, size) {
                self.remove_dma(p, iova);
                return Err(e);
            }
        }
        // M1.15
        if self.dirty_page_tracking {
            let pgshift = pg.trailing_zeros();
            if let Err(e) = self.dma_bitmap_alloc(iova, pgshift) {
                self.remove_dma(p, iova);
                return Err(e);
            }
        }
        let nc = self.noncoherent_domains;
        let policy = self.policy;
        if let Some(d) = self.dmas.get_mut(&iova) {
            d.is_noncoherent = policy.flag_after_map(d.is_noncoherent, nc);
        }
        Ok(())
    }

    /// `vfio_pin_map_dma`: pins the mapping chunk by chunk and maps each chunk into every
    /// domain. On error the caller removes the mapping (which unwinds what was done).
    fn pin_map_dma<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        key: u64,
        map_size: u64,
    ) -> Result<()> {
        let task = p.current().ok_or(Error::Pin(PinError::NoUserContext))?;
        let limit = task.memlock_limit_pages;
        let nc = self.noncoherent_domains;
        let disable_hp = self.cfg.disable_hugepages;
        let Type1 {
            dmas,
            domains,
            policy,
            ..
        } = self;
        let policy = &**policy;
        let dma = dmas.get_mut(&key).expect("mapping inserted by caller");
        // F3: the flag is set before the chunk loop so that every unwind unpin flushes too.
        dma.is_noncoherent = policy.flag_before_map(nc);
        let mut batch = Batch::new(disable_hp, p.pin_batch_pages());
        let mut remaining = map_size;
        let mut ret = Ok(());
        while remaining > 0 {
            let vaddr = dma.vaddr + dma.size;
            let iova = dma.iova + dma.size;
            let chunk = match pin_pages_remote(
                p,
                dma,
                task,
                vaddr,
                remaining >> PAGE_SHIFT,
                limit,
                &mut batch,
                disable_hp,
            ) {
                Ok(c) => c,
                Err(e) => {
                    ret = Err(e);
                    break;
                }
            };
            if policy.flush_on_map(dma.is_noncoherent, nc) {
                flush_run(p, policy, FlushReason::Map, iova, chunk.pfn, chunk.npages);
            }
            if let Err(e) = iommu_map_all(p, domains, iova, chunk.pfn, chunk.npages, dma.prot) {
                unpin_remote(p, policy, dma, iova, chunk.pfn, chunk.npages, true);
                batch.release(p, dma);
                ret = Err(e);
                break;
            }
            remaining -= chunk.npages << PAGE_SHIFT;
            dma.size += chunk.npages << PAGE_SHIFT;
        }
        batch.release(p, dma);
        dma.iommu_mapped = true;
        ret
    }

    /// V3: re-validate an invalidated vaddr (MAP with the VADDR flag).
    fn update_vaddr<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        existing: Option<u64>,
        iova: u64,
        size: u64,
        vaddr: u64,
    ) -> Result<()> {
        let Some(key) = existing else {
            return Err(MapError::NotFound { iova }.into());
        };
        let dma = self.dmas.get_mut(&key).expect("found");
        if !dma.vaddr_invalid || dma.iova != iova || dma.size != size {
            return Err(MapError::NotInvalidated(dma.iova).into());
        }
        let task = p.current().ok_or(Error::Pin(PinError::NoUserContext))?;
        if task.mm != dma.mm {
            // vfio_change_dma_owner: charge the new mm first, then uncharge the old one.
            let npage = dma.locked_vm as i64;
            if npage > 0 {
                p.account(task.mm, npage, !task.cap_ipc_lock)?;
                if p.mm_alive(dma.mm) {
                    let _ = p.account(dma.mm, -npage, false);
                }
            }
            dma.mm = task.mm;
            dma.lock_cap = task.cap_ipc_lock;
        }
        dma.vaddr = vaddr;
        dma.vaddr_invalid = false;
        self.vaddr_invalid_count -= 1;
        Ok(())
    }

    /// VFIO_IOMMU_UNMAP_DMA (U1 to U9). Returns the size to write back.
    pub fn unmap_dma<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        mut req: UnmapRequest<'_>,
    ) -> Result<u64> {
        // U1.2, U1.3 (unknown flags, bad combinations) are `UnmapFlags::decode`'s.
        let UnmapFlags {
            get_dirty_bitmap: get_bitmap,
            all: unmap_all,
            vaddr: invalidate_vaddr,
        } = req.flags;
        // U1.4
        if get_bitmap {
            let Some(bm) = req.bitmap.as_ref() else {
                return Err(BitmapError::Missing.into());
            };
            if bm.pgsize == 0 || !bm.pgsize.is_power_of_two() {
                return Err(BitmapError::BadPgsize(bm.pgsize).into());
            }
            verify_bitmap_size(req.size >> bm.pgsize.trailing_zeros(), bm.size)?;
        }
        // U2
        if invalidate_vaddr && !self.emulated_groups.is_empty() {
            return Err(UnmapError::VaddrWithEmulated.into());
        }
        let pg = self.pgsize();
        let iova = req.iova;
        let size = req.size;
        if iova % pg != 0 {
            return Err(UnmapError::Unaligned { iova, pgsize: pg }.into());
        }
        let last = if unmap_all {
            if iova != 0 || size != 0 {
                return Err(UnmapError::AllWithRange.into());
            }
            u64::MAX
        } else {
            if size == 0 || size % pg != 0 {
                return Err(UnmapError::BadSize { size, pgsize: pg }.into());
            }
            iova.checked_add(size - 1)
                .ok_or(Error::Unmap(UnmapError::Wraps { iova, size }))?
        };
        if get_bitmap {
            let bm = req.bitmap.as_ref().expect("checked");
            if !self.dirty_page_tracking {
                return Err(BitmapError::TrackingOff.into());
            }
            if bm.pgsize != pg {
                return Err(BitmapError::WrongPgsize {
                    pgsize: bm.pgsize,
                    want: pg,
                }
                .into());
            }
        }

        let mut unmapped: u64 = 0;
        let mut retry: Option<(u64, u32)> = None;
        'again: loop {
            // U3: v2 never bisects a mapping.
            if self.v2 && !unmap_all {
                if let Some((at, mapping)) = self.bisected(iova, last) {
                    return Err(UnmapError::Bisects { at, mapping }.into());
                }
            }
            let keys: Vec<u64> = self
                .dmas
                .range(..=last)
                .filter(|(_, d)| d.last() >= iova)
                .map(|(k, _)| *k)
                .collect();
            let mut invalidated: Vec<u64> = Vec::new();
            for k in keys {
                let d = &self.dmas[&k];
                // U4: v1 stops at a mapping that starts before the request.
                if !self.v2 && iova > d.iova {
                    break;
                }
                if invalidate_vaddr {
                    // V1
                    if d.vaddr_invalid {
                        for r in &invalidated {
                            self.dmas.get_mut(r).expect("present").vaddr_invalid = false;
                            self.vaddr_invalid_count -= 1;
                        }
                        return Err(UnmapError::AlreadyInvalid(k).into());
                    }
                    let d = self.dmas.get_mut(&k).expect("present");
                    d.vaddr_invalid = true;
                    self.vaddr_invalid_count += 1;
                    unmapped += d.size;
                    invalidated.push(k);
                    continue;
                }
                if !d.pfn_list.is_empty() {
                    // U5: ask the devices to unpin, then restart from the validation.
                    let (dsize, diova) = (d.size, d.iova);
                    let tries = match retry {
                        Some((rk, n)) if rk == k => n + 1,
                        _ => 0,
                    };
                    if tries > 10 {
                        return Err(UnmapError::DevicesKeepPins(k).into());
                    }
                    retry = Some((k, tries));
                    self.notify_devices(p, diova, dsize);
                    continue 'again;
                }
                let dsize = d.size;
                if let Some(bm) = req.bitmap.as_mut() {
                    self.update_user_bitmap(bm.data, k, iova, pg)?;
                }
                unmapped += dsize;
                self.remove_dma(p, k);
            }
            break;
        }
        Ok(unmapped)
    }

    /// U5: notifies every registered device and applies the unpins they answer with.
    pub(crate) fn notify_devices<P: Platform + ?Sized>(&mut self, p: &mut P, iova: u64, size: u64) {
        for dev in self.devices.clone() {
            for (run_iova, npages) in p.notify_dma_unmap(dev, iova, size) {
                self.unpin_pages(p, run_iova, npages);
            }
        }
    }

    /// `vfio_remove_dma` (U7): unmap from every domain, unpin, unaccount, free. Never fails.
    pub(crate) fn remove_dma<P: Platform + ?Sized>(&mut self, p: &mut P, key: u64) {
        // Teardown never fails: external pins still held (only possible at release, when the
        // devices are already gone) are dropped here instead of leaking.
        self.drop_external_pins(p, key);
        self.unmap_unpin(p, key, true);
        let dma = self.dmas.remove(&key).expect("mapping to remove exists");
        if dma.vaddr_invalid {
            self.vaddr_invalid_count -= 1;
        }
        self.dma_avail += 1;
    }

    /// `vfio_unmap_unpin` (P6). Returns the pages released when `do_accounting` is false.
    pub(crate) fn unmap_unpin<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        key: u64,
        do_accounting: bool,
    ) -> u64 {
        let Type1 {
            dmas,
            domains,
            policy,
            ..
        } = self;
        let policy = &**policy;
        let dma = dmas.get_mut(&key).expect("mapping exists");
        if dma.size == 0 || domains.is_empty() {
            return 0;
        }
        let head = domains[0].id;
        for d in &domains[1..] {
            let n = p.iommu_unmap(d.id, Iova(dma.iova), dma.size);
            p.trace(Event::Unmap {
                domain: d.id,
                iova: dma.iova,
                npages: n >> PAGE_SHIFT,
            });
            p.iotlb_sync(d.id);
        }
        let mut queue: Vec<(u64, u64, u64)> = Vec::new();
        let mut unlocked = 0;
        let mut off: u64 = 0;
        while off < dma.size {
            let iova = dma.iova + off;
            let Some((phys, len)) = phys_run(p, head, dma.iova, off, dma.size) else {
                off += PAGE_SIZE;
                continue;
            };
            let mut n = p.iommu_unmap(head, Iova(iova), len);
            if n > 0 {
                p.trace(Event::Unmap {
                    domain: head,
                    iova,
                    npages: n >> PAGE_SHIFT,
                });
                queue.push((iova, phys, n));
                if queue.len() >= 512 {
                    unlocked += sync_unpin(p, policy, dma, head, &mut queue);
                }
            } else {
                // Slow path: a synchronous unmap followed by an immediate unpin.
                n = p.iommu_unmap(head, Iova(iova), len);
                if n == 0 {
                    break;
                }
                p.iotlb_sync(head);
                p.trace(Event::Unmap {
                    domain: head,
                    iova,
                    npages: n >> PAGE_SHIFT,
                });
                unlocked += unpin_remote(
                    p,
                    policy,
                    dma,
                    iova,
                    phys >> PAGE_SHIFT,
                    n >> PAGE_SHIFT,
                    false,
                );
            }
            off += n;
        }
        dma.iommu_mapped = false;
        unlocked += sync_unpin(p, policy, dma, head, &mut queue);
        // F2: all remote pins are gone, the flag may be cleared.
        dma.is_noncoherent = false;
        if do_accounting {
            let _ = lock_acct_dma(p, dma, -(unlocked as i64), true);
            return 0;
        }
        unlocked
    }

    /// Drops every external pin of a mapping (release path only).
    fn drop_external_pins<P: Platform + ?Sized>(&mut self, p: &mut P, key: u64) {
        let acct = self.domains.is_empty();
        let dma = self.dmas.get_mut(&key).expect("mapping exists");
        let pins = std::mem::take(&mut dma.pfn_list);
        for (iova, v) in pins {
            if !p.pfn_is_reserved(v.pfn) {
                p.unpin_page(v.pfn, dma.prot.write);
                p.trace(Event::Unpin {
                    iova,
                    npages: 1,
                    pfn: v.pfn,
                    external: true,
                });
                if acct {
                    let _ = lock_acct_dma(p, dma, -1, true);
                }
            }
        }
    }
}

/// `vfio_sync_unpin`: syncs the IOTLB, then unpins every queued run (each through F5).
fn sync_unpin<P: Platform + ?Sized>(
    p: &mut P,
    policy: &dyn crate::policy::FlushPolicy,
    dma: &mut Dma,
    head: crate::DomainId,
    queue: &mut Vec<(u64, u64, u64)>,
) -> u64 {
    if queue.is_empty() {
        return 0;
    }
    p.iotlb_sync(head);
    let runs: Vec<(u64, u64, u64)> = queue
        .drain(..)
        .map(|(iova, phys, len)| (iova, phys >> PAGE_SHIFT, len >> PAGE_SHIFT))
        .collect();
    // F5: every run of the batch is flushed (one platform batch, which may use several
    // cores) before any of them is unpinned.
    if policy.flush_on_unpin(dma.is_noncoherent, dma.prot) {
        crate::pin::flush_runs_for_unpin(p, policy, &runs);
    }
    let mut unlocked = 0;
    for (iova, pfn, npages) in runs {
        unlocked += crate::pin::release_remote(p, dma, iova, pfn, npages, false);
    }
    unlocked
}

/// `vfio_iommu_map` (M2): maps a chunk into every domain, unwinding on failure.
pub(crate) fn iommu_map_all<P: Platform + ?Sized>(
    p: &mut P,
    domains: &[crate::type1::Domain],
    iova: u64,
    pfn: u64,
    npages: u64,
    prot: Prot,
) -> Result<()> {
    for (i, d) in domains.iter().enumerate() {
        if let Err(e) = p.iommu_map(
            d.id,
            Iova(iova),
            Pa(pfn << PAGE_SHIFT),
            npages << PAGE_SHIFT,
            prot,
        ) {
            for prev in domains[..i].iter().rev() {
                let n = p.iommu_unmap(prev.id, Iova(iova), npages << PAGE_SHIFT);
                p.iotlb_sync(prev.id);
                p.trace(Event::Unmap {
                    domain: prev.id,
                    iova,
                    npages: n >> PAGE_SHIFT,
                });
            }
            return Err(e.into());
        }
        p.trace(Event::Map {
            domain: d.id,
            iova,
            npages,
            pa: pfn << PAGE_SHIFT,
        });
    }
    Ok(())
}
