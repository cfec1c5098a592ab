//! Areas of an IOAS: `IOMMU_IOAS_MAP` (and the compat MAP_DMA), `IOAS_COPY` and
//! `IOAS_UNMAP`, with IOVA checks and allocation.

use super::*;
use crate::{DomainId, Errno, IovaRange, Platform, Prot, PAGE_SHIFT, PAGE_SIZE};

impl Ictx {
    // ---- map, copy, unmap ---------------------------------------------------------------------

    pub(super) fn check_iova<P: Platform + ?Sized>(
        &self,
        p: &P,
        ioas: u32,
        iova: u64,
        length: u64,
    ) -> Result<(), Errno> {
        let i = self.ioas(ioas)?;
        if iova % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let r = IovaRange::from_size(iova, length).ok_or(Errno::EOVERFLOW)?;
        if self.reserved(p, i).iter().any(|x| x.overlaps(&r)) {
            return Err(Errno::EINVAL);
        }
        if overlapping(&i.areas, r).next().is_some() {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    /// `iopt_alloc_iova`: the lowest free IOVA inside the allowed ranges (all of
    /// `[PAGE_SIZE, 2^64 - PAGE_SIZE)` without any), outside reserved ranges and areas, aligned
    /// like the user address up to 2 MiB.
    pub(super) fn alloc_iova<P: Platform + ?Sized>(
        &self,
        p: &P,
        ioas: u32,
        addr: u64,
        length: u64,
    ) -> Result<u64, Errno> {
        if length == 0 || length >= u64::MAX / 2 {
            return Err(Errno::EOVERFLOW);
        }
        let i = self.ioas(ioas)?;
        let pow = length.next_power_of_two();
        let mut align = if addr == 0 {
            pow
        } else {
            pow.min(1u64 << addr.trailing_zeros())
        };
        align = align.clamp(PAGE_SIZE, 2 << 20);
        let allowed = if i.allowed.is_empty() {
            vec![IovaRange {
                start: PAGE_SIZE,
                last: u64::MAX - PAGE_SIZE,
            }]
        } else {
            i.allowed.clone()
        };
        let mut used = self.reserved(p, i);
        used.extend(i.areas.iter().map(|(s, a)| IovaRange {
            start: *s,
            last: a.last,
        }));
        used.sort();
        for a in allowed {
            for h in holes(&used) {
                let Some(lo) = h.start.max(a.start).checked_next_multiple_of(align) else {
                    continue;
                };
                let hi = h.last.min(a.last);
                if lo <= hi && hi - lo >= length - 1 {
                    return Ok(lo);
                }
            }
        }
        Err(Errno::ENOSPC)
    }

    /// `IOMMU_IOAS_MAP` (and the compat MAP_DMA): a new pages object over the user range, one
    /// area over it, filled into every domain of the IOAS. Returns the IOVA.
    pub fn map<P: Platform + ?Sized>(&mut self, p: &mut P, req: IoasMap) -> Result<u64, Errno> {
        let task = p.current().ok_or(Errno::ENODEV)?;
        self.ioas(req.ioas)?;
        req.uptr.checked_add(req.length).ok_or(Errno::EOVERFLOW)?;
        if req.length == 0 || req.length > u64::MAX - PAGE_SIZE {
            return Err(Errno::EINVAL);
        }
        // Areas are page granular here (the IOAS alignment is the base page).
        if req.length % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let iova = match req.iova {
            Some(iova) => {
                self.check_iova(p, req.ioas, iova, req.length)?;
                iova
            }
            None => self.alloc_iova(p, req.ioas, req.uptr, req.length)?,
        };
        if req.uptr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let npages = req.length >> PAGE_SHIFT;
        self.next_pages += 1;
        let pid = self.next_pages;
        self.pages.insert(
            pid,
            Pages {
                owner: Owner {
                    mm: task.mm,
                    uptr: req.uptr,
                    writable: req.prot.write,
                    lock_cap: task.cap_ipc_lock,
                },
                refs: 0,
                users: vec![0; npages as usize],
                pfns: vec![0; npages as usize],
                flagged: false,
            },
        );
        let r = self.insert_area(p, req.ioas, iova, pid, 0, npages, req.prot);
        if self.pages.get(&pid).is_some_and(|pg| pg.refs == 0) {
            self.pages.remove(&pid);
        }
        r.map(|_| iova)
    }

    /// `IOMMU_IOAS_COPY`: new areas in `dst` over the pages behind `[src_iova, +length)` of
    /// `src`, which must be covered by whole areas without holes (ENOENT otherwise).
    #[allow(clippy::too_many_arguments)]
    pub fn copy<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        src: u32,
        src_iova: u64,
        length: u64,
        dst: u32,
        dst_iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64, Errno> {
        if length == 0 || length % PAGE_SIZE != 0 || src_iova % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let r = IovaRange::from_size(src_iova, length).ok_or(Errno::EOVERFLOW)?;
        // The slices, in order, with no hole.
        let mut slices = Vec::new();
        let mut at = r.start;
        for (s, a) in overlapping(&self.ioas(src)?.areas, r) {
            if s > at {
                return Err(Errno::ENOENT);
            }
            let skip = (at - s) >> PAGE_SHIFT;
            let end = a.last.min(r.last);
            let pg = self.pages.get(&a.pages).ok_or(Errno::ENOENT)?;
            if prot.write && !pg.owner.writable {
                return Err(Errno::EPERM);
            }
            slices.push((a.pages, a.first_page + skip, (end - at + 1) >> PAGE_SHIFT));
            if end == r.last {
                at = u64::MAX;
                break;
            }
            at = end + 1;
        }
        if at != u64::MAX {
            return Err(Errno::ENOENT);
        }
        self.ioas(dst)?;
        let iova = match dst_iova {
            Some(i) => {
                self.check_iova(p, dst, i, length)?;
                i
            }
            None => self.alloc_iova(p, dst, 0, length)?,
        };
        let mut done: Vec<u64> = Vec::new();
        let mut cur = iova;
        for (pid, first, n) in slices {
            if let Err(e) = self.insert_area(p, dst, cur, pid, first, n, prot) {
                for d in done.into_iter().rev() {
                    self.remove_area(p, dst, d);
                }
                return Err(e);
            }
            done.push(cur);
            cur += n << PAGE_SHIFT;
        }
        Ok(iova)
    }

    /// Inserts one area and fills it into every domain of the IOAS (`iopt_fill_domains_pages`);
    /// on failure nothing of it remains.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_area<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
        iova: u64,
        pid: u32,
        first_page: u64,
        npages: u64,
        prot: Prot,
    ) -> Result<(), Errno> {
        let area = Area {
            last: iova + (npages << PAGE_SHIFT) - 1,
            pages: pid,
            first_page,
            prot,
        };
        let hwpts = self.ioas(ioas)?.hwpts.clone();
        let domains: Vec<(DomainId, bool)> = hwpts
            .iter()
            .filter_map(|h| self.hwpt(*h).ok())
            .map(|h| (h.domain, h.coherent))
            .collect();
        if !domains.is_empty() {
            self.fill(p, ioas, iova, &area, &domains)?;
        }
        if let Some(pg) = self.pages.get_mut(&pid) {
            pg.refs += 1;
        }
        self.ioas_mut(ioas)?.areas.insert(iova, area);
        Ok(())
    }

    /// Removes one area: out of every domain, then released; the pages object goes with its
    /// last area.
    pub(super) fn remove_area<P: Platform + ?Sized>(&mut self, p: &mut P, ioas: u32, iova: u64) {
        let Ok(i) = self.ioas_mut(ioas) else {
            return;
        };
        let Some(area) = i.areas.remove(&iova) else {
            return;
        };
        let hwpts = i.hwpts.clone();
        let domains: Vec<(DomainId, bool)> = hwpts
            .iter()
            .filter_map(|h| self.hwpt(*h).ok())
            .map(|h| (h.domain, h.coherent))
            .collect();
        let n = area.npages(iova);
        self.unfill(p, iova, &area, n, &domains);
        if let Some(pg) = self.pages.get_mut(&area.pages) {
            pg.refs -= 1;
            if pg.refs == 0 {
                self.pages.remove(&area.pages);
            }
        }
    }

    /// Splits the area holding `at` (if any) so that `at` is the last byte of an area
    /// (`iopt_cut_iova`, used by the compat TYPE1 unmap once large pages are off).
    pub(super) fn cut(&mut self, ioas: u32, at: u64) -> Result<(), Errno> {
        let i = self.ioas_mut(ioas)?;
        let Some((&s, a)) = i.areas.range(..=at).next_back() else {
            return Ok(());
        };
        if a.last <= at || (at + 1) % PAGE_SIZE != 0 {
            return Ok(());
        }
        let mut right = a.clone();
        let left_pages = (at + 1 - s) >> PAGE_SHIFT;
        right.first_page += left_pages;
        if let Some(a) = i.areas.get_mut(&s) {
            a.last = at;
        }
        let pid = right.pages;
        i.areas.insert(at + 1, right);
        if let Some(pg) = self.pages.get_mut(&pid) {
            pg.refs += 1;
        }
        Ok(())
    }

    /// `IOMMU_IOAS_UNMAP` of `[iova, iova + length)`, area by area in IOVA order: an area that
    /// starts before the range or ends after it stops the walk with ENOENT (areas removed
    /// before it stay removed). Returns the bytes unmapped. `cut` first splits areas at both
    /// ends (compat TYPE1).
    pub fn unmap<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
        iova: u64,
        length: u64,
        cut: bool,
    ) -> (u64, Result<(), Errno>) {
        if let Err(e) = self.ioas(ioas) {
            return (0, Err(e));
        }
        if length == 0 {
            return (0, Err(Errno::EINVAL));
        }
        let Some(r) = IovaRange::from_size(iova, length) else {
            return (0, Err(Errno::EOVERFLOW));
        };
        if cut {
            if let Err(e) = self
                .cut(ioas, r.last)
                .and_then(|_| match iova.checked_sub(1) {
                    Some(b) => self.cut(ioas, b),
                    None => Ok(()),
                })
            {
                return (0, Err(e));
            }
        }
        self.unmap_range(p, ioas, r)
    }

    /// Unmaps every area of the IOAS.
    pub fn unmap_all<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
    ) -> (u64, Result<(), Errno>) {
        self.unmap_range(p, ioas, IovaRange::FULL)
    }

    pub(super) fn unmap_range<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
        r: IovaRange,
    ) -> (u64, Result<(), Errno>) {
        let mut unmapped = 0;
        loop {
            let Ok(i) = self.ioas(ioas) else {
                return (unmapped, Err(Errno::ENOENT));
            };
            let Some((s, a)) = overlapping(&i.areas, r).next() else {
                return (unmapped, Ok(()));
            };
            if s < r.start || a.last > r.last {
                return (unmapped, Err(Errno::ENOENT));
            }
            unmapped += a.last - s + 1;
            self.remove_area(p, ioas, s);
        }
    }
}
