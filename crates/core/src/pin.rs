//! Remote pinning, unpinning and the cache-flush points around them (P1 to P6, F3, F5, F9).
//!
//! These are free functions over disjoint borrows (the platform, the policy, one mapping) so
//! that the engine can hold a mapping mutably while it talks to the platform. The only remote
//! unpin routine is [`unpin_remote`], and it is where F5's flush lives: every path that drops
//! remote pins (UNMAP, release, detach, MAP unwind, replay unwind) goes through it.

use std::collections::VecDeque;

use crate::{
    platform::{FlushReason, PinnedPage, Platform, Task},
    policy::FlushPolicy,
    trace::Event,
    type1::Dma,
    Pa, PinError, Result, PAGE_SHIFT, PAGE_SIZE, PIN_BATCH,
};

/// Pages pinned ahead of use (`struct vfio_batch`); leftovers carry to the next chunk.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pages: VecDeque<PinnedPage>,
    capacity: usize,
}

impl Batch {
    /// A batch of the platform's size (`capacity` pages; one page with hugepages disabled).
    pub fn new(disable_hugepages: bool, capacity: u64) -> Batch {
        Batch {
            pages: VecDeque::new(),
            capacity: if disable_hugepages {
                1
            } else {
                usize::try_from(capacity).unwrap_or(PIN_BATCH).max(1)
            },
        }
    }

    /// Releases leftovers that were pinned but never mapped (P5): no flush, no accounting.
    /// Consecutive normal frames go back in one platform call.
    pub fn release<P: Platform + ?Sized>(&mut self, p: &mut P, dma: &Dma) {
        let mut run: Option<(u64, u64)> = None;
        while let Some(pg) = self.pages.pop_front() {
            if pg.reserved {
                continue;
            }
            run = match run {
                Some((s, n)) if s + n == pg.pfn => Some((s, n + 1)),
                Some((s, n)) => {
                    p.unpin_pages(s, n, dma.prot.write);
                    Some((pg.pfn, 1))
                }
                None => Some((pg.pfn, 1)),
            };
        }
        if let Some((s, n)) = run {
            p.unpin_pages(s, n, dma.prot.write);
        }
    }
}

/// A physically contiguous run of pinned pages of one reserved-ness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub pfn: u64,
    pub npages: u64,
}

/// Pins the next contiguous chunk of `dma` at `vaddr` (at most `npage` pages) from the caller's
/// address space, charging the mapping (P1, P2). `limit` is the caller's RLIMIT_MEMLOCK in pages,
/// read once per MAP or replay. On error nothing of this chunk stays pinned or charged.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pin_pages_remote<P: Platform + ?Sized>(
    p: &mut P,
    dma: &mut Dma,
    caller: Task,
    vaddr: u64,
    npage: u64,
    limit: u64,
    batch: &mut Batch,
    disable_hugepages: bool,
) -> Result<Chunk> {
    let iova0 = dma.iova + (vaddr - dma.vaddr);
    let mut pinned: u64 = 0;
    let mut lock_acct: u64 = 0;
    let mut first: Option<PinnedPage> = None;
    // `mm->locked_vm` does not change while this chunk is pinned (the charge is made at the
    // end): read once, when the first page needs it.
    let mut locked_base: Option<u64> = None;
    let result: Result<()> = (|| {
        while pinned < npage {
            if batch.pages.is_empty() {
                let want = (npage - pinned).min(batch.capacity as u64);
                let got = p.pin_user_pages(
                    caller.mm,
                    crate::Vaddr(vaddr + pinned * PAGE_SIZE),
                    want,
                    dma.prot.write,
                )?;
                if got.is_empty() {
                    return Err(PinError::NothingPinned(vaddr).into());
                }
                batch.pages.extend(got);
            }
            while let Some(&pg) = batch.pages.front() {
                match first {
                    None => first = Some(pg),
                    Some(f) => {
                        if pg.pfn != f.pfn + pinned || pg.reserved != f.reserved {
                            return Ok(());
                        }
                    }
                }
                let iova = iova0 + pinned * PAGE_SIZE;
                if !pg.reserved && !dma.pfn_list.contains_key(&iova) {
                    if !dma.lock_cap
                        && *locked_base.get_or_insert_with(|| p.locked_vm(caller.mm))
                            + lock_acct
                            + 1
                            > limit
                    {
                        return Err(PinError::Memlock { limit, iova }.into());
                    }
                    lock_acct += 1;
                }
                batch.pages.pop_front();
                pinned += 1;
                if pinned == npage {
                    return Ok(());
                }
            }
            if disable_hugepages {
                return Ok(());
            }
        }
        Ok(())
    })();
    let result = result.and_then(|()| lock_acct_dma(p, dma, lock_acct as i64, false));
    match (result, first) {
        (Ok(()), Some(f)) if pinned > 0 => {
            p.trace(Event::Pin {
                iova: iova0,
                npages: pinned,
                pfn: f.pfn,
                external: false,
            });
            Ok(Chunk {
                pfn: f.pfn,
                npages: pinned,
            })
        }
        (Ok(()), _) => Err(PinError::NothingPinned(vaddr).into()),
        (Err(e), first) => {
            if let Some(f) = first {
                if !f.reserved {
                    for i in 0..pinned {
                        p.unpin_page(f.pfn + i, dma.prot.write);
                    }
                }
            }
            batch.release(p, dma);
            Err(e)
        }
    }
}

/// The physically contiguous run that `domain` maps at `base + off`, not past `base + size`:
/// `(phys, len)`, or `None` when that page has no translation (callers then skip one page).
/// The walk every read-back path shares: unmap (P6), replay and its unwind (A2).
pub(crate) fn phys_run<P: Platform + ?Sized>(
    p: &P,
    domain: crate::DomainId,
    base: u64,
    off: u64,
    size: u64,
) -> Option<(u64, u64)> {
    p.iova_to_phys_run(domain, crate::Iova(base + off), (size - off).max(PAGE_SIZE))
        .map(|(pa, len)| (pa.0, len))
}

/// `vfio_lock_acct`: charges (or uncharges) `npage` pages to the mapping's address space, with
/// the limit enforced unless the mapper had CAP_IPC_LOCK. `async_` mirrors the kernel flag:
/// when the address space is gone, an async adjustment is silently skipped (P4).
pub(crate) fn lock_acct_dma<P: Platform + ?Sized>(
    p: &mut P,
    dma: &mut Dma,
    npage: i64,
    async_: bool,
) -> Result<()> {
    if npage == 0 {
        return Ok(());
    }
    if !p.mm_alive(dma.mm) {
        // ESRCH in the kernel; callers that pass async ignore it, a sync charge cannot happen
        // without the mm (the caller is the mapper).
        return if async_ {
            Ok(())
        } else {
            Err(PinError::MmGone.into())
        };
    }
    p.account(dma.mm, npage, npage > 0 && !dma.lock_cap)?;
    dma.locked_vm = dma.locked_vm.wrapping_add_signed(npage);
    Ok(())
}

/// The byte ranges of a run of pages that the policy's classifier (F9) says to flush, and
/// how many pages it skips.
fn flush_ranges<P: Platform + ?Sized>(
    p: &P,
    policy: &dyn FlushPolicy,
    pfn: u64,
    npages: u64,
    out: &mut Vec<(Pa, u64)>,
) -> u64 {
    let mut skipped = 0;
    let mut run: Option<(u64, u64)> = None;
    let mut i = 0;
    while i < npages {
        let f = pfn + i;
        let (reserved, memtype, k) = p.pfn_kind_run(f, npages - i);
        let k = k.clamp(1, npages - i);
        if policy.flush_pfn(reserved, memtype) {
            run = match run {
                Some((s, n)) if s + n == f => Some((s, n + k)),
                Some((s, n)) => {
                    out.push((Pa(s << PAGE_SHIFT), n << PAGE_SHIFT));
                    Some((f, k))
                }
                None => Some((f, k)),
            };
        } else {
            skipped += k;
        }
        i += k;
    }
    if let Some((s, n)) = run {
        out.push((Pa(s << PAGE_SHIFT), n << PAGE_SHIFT));
    }
    skipped
}

/// Flushes a run of pages for `reason`, classifying each pfn (F9). Emits one `flush` event.
pub(crate) fn flush_run<P: Platform + ?Sized>(
    p: &mut P,
    policy: &dyn FlushPolicy,
    reason: FlushReason,
    iova: u64,
    pfn: u64,
    npages: u64,
) {
    let mut ranges = Vec::new();
    let skipped = flush_ranges(p, policy, pfn, npages, &mut ranges);
    for (pa, len) in ranges {
        p.flush_cache(pa, len);
    }
    p.trace(Event::Flush {
        reason,
        iova,
        npages,
        pa: pfn << PAGE_SHIFT,
        skipped,
    });
}

/// F5 for a batch of runs `(iova, pfn, npages)` about to be unpinned: one platform batch (which
/// may spread over cores), then one `flush` event per run, as [`flush_run`] emits.
pub(crate) fn flush_runs_for_unpin<P: Platform + ?Sized>(
    p: &mut P,
    policy: &dyn FlushPolicy,
    runs: &[(u64, u64, u64)],
) {
    let mut ranges = Vec::new();
    let skipped: Vec<u64> = runs
        .iter()
        .map(|&(_, pfn, n)| flush_ranges(p, policy, pfn, n, &mut ranges))
        .collect();
    p.flush_cache_batch(&ranges);
    for (&(iova, pfn, npages), skipped) in runs.iter().zip(skipped) {
        p.trace(Event::Flush {
            reason: FlushReason::Unpin,
            iova,
            npages,
            pa: pfn << PAGE_SHIFT,
            skipped,
        });
    }
}

/// `vfio_unpin_pages_remote` (P4) with F5: flush the run first if the policy says so, then
/// release the pins. Returns the number of normal pages released; with `do_accounting` the
/// charge is adjusted by (external pins in the run − released).
pub(crate) fn unpin_remote<P: Platform + ?Sized>(
    p: &mut P,
    policy: &dyn FlushPolicy,
    dma: &mut Dma,
    iova: u64,
    pfn: u64,
    npage: u64,
    do_accounting: bool,
) -> u64 {
    if npage == 0 {
        return 0;
    }
    if policy.flush_on_unpin(dma.is_noncoherent, dma.prot) {
        flush_run(p, policy, FlushReason::Unpin, iova, pfn, npage);
    }
    release_remote(p, dma, iova, pfn, npage, do_accounting)
}

/// [`unpin_remote`] without the flush: for runs whose F5 flush the caller has just done
/// ([`flush_runs_for_unpin`]).
pub(crate) fn release_remote<P: Platform + ?Sized>(
    p: &mut P,
    dma: &mut Dma,
    iova: u64,
    pfn: u64,
    npage: u64,
    do_accounting: bool,
) -> u64 {
    if npage == 0 {
        return 0;
    }
    let mut unlocked = 0;
    let mut locked = 0;
    // Normal pages are released by maximal runs (one platform call each).
    let mut run: Option<(u64, u64)> = None;
    let mut i = 0;
    while i < npage {
        let (reserved, _, k) = p.pfn_kind_run(pfn + i, npage - i);
        let k = k.clamp(1, npage - i);
        if !reserved {
            run = match run {
                Some((s, n)) => Some((s, n + k)),
                None => Some((pfn + i, k)),
            };
            unlocked += k;
            if !dma.pfn_list.is_empty() {
                let lo = iova + i * PAGE_SIZE;
                locked += dma.pfn_list.range(lo..lo + k * PAGE_SIZE).count() as u64;
            }
        } else if let Some((s, n)) = run.take() {
            p.unpin_pages(s, n, dma.prot.write);
        }
        i += k;
    }
    if let Some((s, n)) = run {
        p.unpin_pages(s, n, dma.prot.write);
    }
    p.trace(Event::Unpin {
        iova,
        npages: npage,
        pfn,
        external: false,
    });
    if do_accounting {
        // Uncharging never fails; a vanished mm is skipped.
        let _ = lock_acct_dma(p, dma, locked as i64 - unlocked as i64, true);
    }
    unlocked
}
