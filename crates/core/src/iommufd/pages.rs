//! The pages layer: an area is filled into domains batch by batch (pin what is not pinned,
//! flush if the policy says so, map), and released in the series' order (unmap, flush,
//! unpin, uncharge). Each page of a pages object is pinned once, however many areas and
//! domains map it.

use super::*;
use crate::{
    trace::Event, DomainId, Errno, FlushReason, Iova, Pa, Platform, Prot, PAGE_SHIFT, PAGE_SIZE,
};

impl Ictx {
    /// Maps `area` (at `iova`) into `domains`, batch by batch: pin what is not pinned yet,
    /// flush if the policy says so, map into each domain. On failure every batch done is
    /// unmapped and unpinned again, and the error returned.
    pub(super) fn fill<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
        iova: u64,
        area: &Area,
        domains: &[(DomainId, bool)],
    ) -> Result<(), Errno> {
        // 5/5 decides on the IOAS's count, not on the domains being filled.
        let noncoherent = self.ioas(ioas)?.noncoherent > 0;
        let large = !self.ioas(ioas)?.disable_large_pages;
        let npages = area.npages(iova);
        let flagged = self.pages.get(&area.pages).is_some_and(|pg| pg.flagged);
        let (set, flush) = self.policy.on_fill(flagged, noncoherent);
        if set {
            if let Some(pg) = self.pages.get_mut(&area.pages) {
                pg.flagged = true;
            }
        }
        let batch = self
            .batch_pages
            .unwrap_or_else(|| p.pin_batch_pages())
            .max(1);
        let mut done = 0u64;
        while done < npages {
            let n = batch.min(npages - done);
            let biova = iova + (done << PAGE_SHIFT);
            let first = area.first_page + done;
            if let Err(e) = self.fill_batch(p, biova, area, first, n, domains, flush, large) {
                self.unfill(p, iova, area, done, domains);
                return Err(e);
            }
            done += n;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill_batch<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        iova: u64,
        area: &Area,
        first: u64,
        n: u64,
        domains: &[(DomainId, bool)],
        flush: bool,
        large: bool,
    ) -> Result<(), Errno> {
        let fills = domains.len() as u32;
        self.pin_slice(p, area.pages, first, n, fills)?;
        let runs = self.runs(area.pages, first, n);
        if flush {
            let mut off = 0;
            for &(pfn, k) in &runs {
                let at = iova + (off << PAGE_SHIFT);
                crate::pin::flush_run(p, &CLASSIFIER, FlushReason::Map, at, pfn, k);
                off += k;
            }
        }
        for (di, &(d, _)) in domains.iter().enumerate() {
            if let Err(e) = map_runs(p, d, iova, &runs, area.prot, large) {
                for &(u, _) in &domains[..di] {
                    unmap_range(p, u, iova, n);
                }
                self.release_slice(p, area.pages, first, n, iova, fills);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The first `npages` pages of `area` leave `domains`: unmapped, then released.
    pub(super) fn unfill<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        iova: u64,
        area: &Area,
        npages: u64,
        domains: &[(DomainId, bool)],
    ) {
        if npages == 0 {
            return;
        }
        for &(d, _) in domains {
            unmap_range(p, d, iova, npages);
        }
        let fills = domains.len() as u32;
        self.release_slice(p, area.pages, area.first_page, npages, iova, fills);
    }

    /// Pins pages `[first, first + n)` of a pages object that no domain maps yet, charging
    /// them; adds `users` users (one per domain being filled) to every page of the slice.
    /// All or nothing.
    pub(super) fn pin_slice<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        pid: u32,
        first: u64,
        n: u64,
        users: u32,
    ) -> Result<(), Errno> {
        let owner = self.pages.get(&pid).ok_or(Errno::ENOENT)?.owner;
        let mut fresh: Vec<(u64, u64)> = Vec::new(); // (page index, count) pinned here
        let mut i = first;
        let mut result = Ok(());
        'outer: while i < first + n {
            let users = &self.pages.get(&pid).ok_or(Errno::ENOENT)?.users;
            if users[i as usize] > 0 {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < first + n && users[j as usize] == 0 {
                j += 1;
            }
            // Charge first (as iommufd does before it pins), then pin [i, j).
            if let Err(e) = charge(p, owner, (j - i) as i64) {
                result = Err(e);
                break;
            }
            let mut k = i;
            while k < j {
                let vaddr = owner.uptr + (k << PAGE_SHIFT);
                match p.pin_user_pages(owner.mm, crate::Vaddr(vaddr), j - k, owner.writable) {
                    Ok(got) => {
                        let bad = got.iter().position(|x| x.reserved);
                        let good = bad.unwrap_or(got.len());
                        let slot = self.pages.get_mut(&pid).ok_or(Errno::ENOENT)?;
                        for (x, page) in got[..good].iter().enumerate() {
                            slot.pfns[(k + x as u64) as usize] = page.pfn;
                        }
                        if good > 0 {
                            p.trace(Event::Pin {
                                iova: vaddr,
                                npages: good as u64,
                                pfn: got[0].pfn,
                                external: false,
                            });
                            fresh.push((k, good as u64));
                        }
                        k += good as u64;
                        if bad.is_some() {
                            // PFNMAP/MMIO: iommufd pins only struct pages (EFAULT).
                            let _ = charge(p, owner, -((j - k) as i64));
                            result = Err(Errno::EFAULT);
                            break 'outer;
                        }
                    }
                    Err(e) => {
                        let _ = charge(p, owner, -((j - k) as i64));
                        result = Err(e.errno);
                        break 'outer;
                    }
                }
            }
            i = j;
        }
        if let Err(e) = result {
            for (k, c) in fresh.into_iter().rev() {
                for x in k..k + c {
                    if let Some(pg) = self.pages.get_mut(&pid) {
                        p.unpin_page(std::mem::take(&mut pg.pfns[x as usize]), false);
                    }
                }
                let _ = charge(p, owner, -(c as i64));
            }
            return Err(e);
        }
        let slot = self.pages.get_mut(&pid).ok_or(Errno::ENOENT)?;
        for u in &mut slot.users[first as usize..(first + n) as usize] {
            *u += users;
        }
        Ok(())
    }

    /// Drops `fills` users (one per domain leaving) of every page of the slice; pages left
    /// with none are flushed (if the policy says so), unpinned and uncharged, run by run.
    pub(super) fn release_slice<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        pid: u32,
        first: u64,
        n: u64,
        iova: u64,
        fills: u32,
    ) {
        let policy = self.policy;
        let Some(pg) = self.pages.get_mut(&pid) else {
            return;
        };
        let mut gone: Vec<(u64, u64, u64)> = Vec::new(); // (iova, pfn, count)
        for k in first..first + n {
            let u = &mut pg.users[k as usize];
            let was = *u;
            *u = u.saturating_sub(fills);
            if was > 0 && *u == 0 {
                // A page with no user has no frame: forget it, so that equal states compare
                // equal (checker merging, the fault sweep's residue).
                let pfn = std::mem::take(&mut pg.pfns[k as usize]);
                let at = iova + ((k - first) << PAGE_SHIFT);
                match gone.last_mut() {
                    Some((_, s, c)) if *s + *c == pfn => *c += 1,
                    _ => gone.push((at, pfn, 1)),
                }
            }
        }
        let (flagged, owner) = (pg.flagged, pg.owner);
        let total: u64 = gone.iter().map(|g| g.2).sum();
        if policy.flush_on_unpin(flagged) {
            crate::pin::flush_runs_for_unpin(p, &CLASSIFIER, &gone);
        }
        for &(at, pfn, c) in &gone {
            p.unpin_pages(pfn, c, owner.writable);
            p.trace(Event::Unpin {
                iova: at,
                npages: c,
                pfn,
                external: false,
            });
        }
        if total > 0 {
            let _ = charge(p, owner, -(total as i64));
        }
        if policy == FillPolicy::SeedRepin {
            if let Some(pg) = self.pages.get_mut(&pid) {
                if pg.users.iter().all(|u| *u == 0) {
                    pg.flagged = false;
                }
            }
        }
    }

    /// The frames of pages `[first, first + n)` as contiguous runs `(pfn, count)`.
    pub(super) fn runs(&self, pid: u32, first: u64, n: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        if let Some(pg) = self.pages.get(&pid) {
            for k in first..first + n {
                let pfn = pg.pfns[k as usize];
                match out.last_mut() {
                    Some((s, c)) if *s + *c == pfn => *c += 1,
                    _ => out.push((pfn, 1)),
                }
            }
        }
        out
    }
}

/// Charges (or, negative, uncharges) pages of a pages object; the limit applies to a charge
/// by a task without CAP_IPC_LOCK.
pub(super) fn charge<P: Platform + ?Sized>(p: &mut P, owner: Owner, n: i64) -> Result<(), Errno> {
    if n == 0 || owner.lock_cap {
        return Ok(());
    }
    p.account(owner.mm, n, n > 0).map_err(|e| e.errno)
}

/// Maps runs of frames at `iova` into a domain, run by run (page by page without large
/// pages); on failure what this call mapped is unmapped.
pub(super) fn map_runs<P: Platform + ?Sized>(
    p: &mut P,
    d: DomainId,
    iova: u64,
    runs: &[(u64, u64)],
    prot: Prot,
    large: bool,
) -> Result<(), Errno> {
    let mut off = 0u64;
    for &(pfn, n) in runs {
        let step = if large { n } else { 1 };
        let mut k = 0;
        while k < n {
            let at = iova + ((off + k) << PAGE_SHIFT);
            let pa = (pfn + k) << PAGE_SHIFT;
            if let Err(e) = p.iommu_map(d, Iova(at), Pa(pa), step << PAGE_SHIFT, prot) {
                unmap_range(p, d, iova, off + k);
                return Err(e.errno);
            }
            p.trace(Event::Map {
                domain: d,
                iova: at,
                npages: step,
                pa,
            });
            k += step;
        }
        off += n;
    }
    Ok(())
}

/// Unmaps `npages` pages at `iova` from a domain and syncs its IOTLB.
pub(super) fn unmap_range<P: Platform + ?Sized>(p: &mut P, d: DomainId, iova: u64, npages: u64) {
    if npages == 0 {
        return;
    }
    let mut done = 0;
    let size = npages << PAGE_SHIFT;
    while done < size {
        let n = p.iommu_unmap(d, Iova(iova + done), size - done);
        if n == 0 {
            done += PAGE_SIZE;
        } else {
            done += n;
        }
    }
    p.iotlb_sync(d);
    p.trace(Event::Unmap {
        domain: d,
        iova,
        npages,
    });
}
