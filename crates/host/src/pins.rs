//! The host platform's pin records: which pages are held, by what, and where the CPU maps them.
//!
//! One `pin_user_pages` call makes one *registration* (an io_uring buffer slot, or an
//! address-only record when io_uring cannot hold the pages) of virtually contiguous pages,
//! which the platform gives a contiguous range of frame numbers (see the crate docs: the
//! emulated IOMMU's bus frames). A registration starts as one *run*; runs are split only where
//! the program unmaps or moves part of one. A run is what everything else works on:
//! * the engine unpins by pfn: [`PinStore::unpin`] clears the pages' bits in their runs and
//!   hands back a registration once none of its pages is pinned any more (the kernel drops the
//!   slot's pins then);
//! * a flush or a DMA names a physical address: [`PinStore::find`] finds the run holding it
//!   (a page pinned twice sits in two runs; either serves);
//! * the program's `munmap`/`mremap`/`madvise` name virtual addresses: [`PinStore::cpu_runs`]
//!   finds the runs mapped there, [`PinStore::set_cpu`] records where (or that nowhere) the
//!   CPU maps them afterwards, splitting runs at the edges of the range.
//!
//! Runs never exceed [`MAX_RUN`] pages (one pin call), which bounds every lookup.

use std::collections::{BTreeSet, HashMap};

use type1_core::PAGE_SIZE;

/// Pages of the longest run (the host platform pins at most this many per call).
pub const MAX_RUN: u64 = 512;

/// What holds a registration's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// An io_uring fixed buffer: ring index, slot, and the buffer's address when registered.
    Ring {
        /// Index of the ring in the platform's ring list.
        ring: usize,
        /// Buffer slot.
        slot: u32,
        /// The buffer's first address at registration (fixed-buffer I/O addresses are
        /// offsets from it, whatever the process has mapped there since).
        base: u64,
    },
    /// Nothing holds the pages: they are only remembered by address (io_uring unavailable, or
    /// memory io_uring cannot register). The page stays the device's only while the program
    /// leaves its mapping alone; every use checks that it still does.
    Track,
}

#[derive(Debug)]
struct Reg {
    holder: Holder,
    live: u64,
    npages: u64,
    /// The real frames of the first and the last page, when pagemap shows them (to check that
    /// a mapping still holds the pinned pages).
    real: Option<(u64, u64)>,
}

/// What a run is, without its liveness bitmap: a copy callers can keep while they call on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunInfo {
    /// First pfn.
    pub first_pfn: u64,
    /// Pages.
    pub npages: u64,
    /// Page offset of the run's first page in its registration.
    pub reg_page: u64,
    /// Where the CPU maps the first page now; `None` once that mapping went away.
    pub cpu: Option<u64>,
    /// Where the CPU mapped the first page last (for a re-check after `None`).
    pub last_cpu: u64,
    /// The CPU mapping still exists but cannot be read (`mprotect`); it may come back.
    pub hidden: bool,
}

/// A contiguous run of one registration's pages.
#[derive(Clone, Debug)]
struct Run {
    /// First pfn.
    pub first_pfn: u64,
    /// Pages.
    pub npages: u64,
    reg: u64,
    /// Page offset of the run's first page in its registration.
    pub reg_page: u64,
    /// Where the CPU maps the first page now; `None` once that mapping went away.
    pub cpu: Option<u64>,
    /// Where the CPU mapped the first page last (for a re-check after `None`).
    pub last_cpu: u64,
    /// The CPU mapping still exists but cannot be read (`mprotect`); it may come back.
    pub hidden: bool,
    live: Vec<u64>,
    nlive: u64,
}

impl Run {
    fn info(&self) -> RunInfo {
        RunInfo {
            first_pfn: self.first_pfn,
            npages: self.npages,
            reg_page: self.reg_page,
            cpu: self.cpu,
            last_cpu: self.last_cpu,
            hidden: self.hidden,
        }
    }

    fn is_live(&self, i: u64) -> bool {
        self.live[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn clear(&mut self, i: u64) {
        self.live[(i / 64) as usize] &= !(1 << (i % 64));
        self.nlive -= 1;
    }

    fn contains(&self, pfn: u64) -> bool {
        pfn >= self.first_pfn && pfn - self.first_pfn < self.npages
    }

    /// Pages `[from, to)` of this run as a new run (bits copied).
    fn slice(&self, from: u64, to: u64) -> Run {
        let n = to - from;
        let mut live = vec![0u64; n.div_ceil(64) as usize];
        let mut nlive = 0;
        for i in 0..n {
            if self.is_live(from + i) {
                live[(i / 64) as usize] |= 1 << (i % 64);
                nlive += 1;
            }
        }
        Run {
            first_pfn: self.first_pfn + from,
            npages: n,
            reg: self.reg,
            reg_page: self.reg_page + from,
            cpu: self.cpu.map(|v| v + from * PAGE_SIZE),
            last_cpu: self.last_cpu + from * PAGE_SIZE,
            hidden: self.hidden,
            live,
            nlive,
        }
    }
}

/// A run's identity in the store.
pub type RunId = u64;

/// The pin records. See the module documentation.
#[derive(Debug, Default)]
pub struct PinStore {
    regs: HashMap<u64, Reg>,
    runs: HashMap<RunId, Run>,
    by_pfn: BTreeSet<(u64, RunId)>,
    by_cpu: BTreeSet<(u64, RunId)>,
    next: u64,
}

impl PinStore {
    fn fresh(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn insert_run(&mut self, run: Run) -> RunId {
        let id = self.fresh();
        self.by_pfn.insert((run.first_pfn, id));
        if let Some(v) = run.cpu {
            self.by_cpu.insert((v, id));
        }
        self.runs.insert(id, run);
        id
    }

    fn remove_run(&mut self, id: RunId) -> Option<Run> {
        let run = self.runs.remove(&id)?;
        self.by_pfn.remove(&(run.first_pfn, id));
        if let Some(v) = run.cpu {
            self.by_cpu.remove(&(v, id));
        }
        Some(run)
    }

    /// Records a registration of `npages` pages mapped from `vaddr` on, held by `holder`, with
    /// frames `first_pfn..` and, if known, the real frames of its first and last page.
    pub fn add(
        &mut self,
        holder: Holder,
        vaddr: u64,
        first_pfn: u64,
        npages: u64,
        real: Option<(u64, u64)>,
    ) {
        let reg = self.fresh();
        self.regs.insert(
            reg,
            Reg {
                holder,
                live: npages,
                npages,
                real,
            },
        );
        let mut live = vec![u64::MAX; npages.div_ceil(64) as usize];
        if npages % 64 != 0 {
            if let Some(last) = live.last_mut() {
                *last = (1u64 << (npages % 64)) - 1;
            }
        }
        self.insert_run(Run {
            first_pfn,
            npages,
            reg,
            reg_page: 0,
            cpu: Some(vaddr),
            last_cpu: vaddr,
            hidden: false,
            live,
            nlive: npages,
        });
    }

    /// The real frames of page `i` and page `i + n - 1` of run `id`, each where known: pagemap
    /// showed it at pin time and the page is the first or last of its registration.
    pub fn edges(&self, id: RunId, i: u64, n: u64) -> (Option<u64>, Option<u64>) {
        let Some(r) = self.runs.get(&id) else {
            return (None, None);
        };
        let Some(reg) = self.regs.get(&r.reg) else {
            return (None, None);
        };
        let Some((first, last)) = reg.real else {
            return (None, None);
        };
        let reg_pages = reg.npages;
        let at = |p: u64| match p {
            0 => Some(first),
            p if p + 1 == reg_pages => Some(last),
            _ => None,
        };
        (at(r.reg_page + i), at(r.reg_page + i + n - 1))
    }

    /// A run holding `pfn` (with that page still pinned): `(id, page index in the run)`.
    /// Prefers a run the CPU still maps.
    pub fn find(&self, pfn: u64) -> Option<(RunId, u64)> {
        let lo = (pfn.saturating_sub(MAX_RUN - 1), 0);
        let mut any = None;
        for &(_, id) in self.by_pfn.range(lo..=(pfn, u64::MAX)) {
            let r = &self.runs[&id];
            if r.contains(pfn) && r.is_live(pfn - r.first_pfn) {
                if r.cpu.is_some() {
                    return Some((id, pfn - r.first_pfn));
                }
                any = any.or(Some((id, pfn - r.first_pfn)));
            }
        }
        any
    }

    /// The run `id`.
    pub fn run(&self, id: RunId) -> Option<RunInfo> {
        self.runs.get(&id).map(Run::info)
    }

    /// What holds run `id`'s pages.
    pub fn holder(&self, id: RunId) -> Option<Holder> {
        let r = self.runs.get(&id)?;
        self.regs.get(&r.reg).map(|g| g.holder)
    }

    /// Drops one pin of each page `pfn..pfn + npages`. Returns the holders whose last pinned
    /// page this was (to be released), and the pages that were not pinned (a caller bug).
    pub fn unpin(&mut self, pfn: u64, npages: u64) -> (Vec<Holder>, u64) {
        let mut released = Vec::new();
        let mut stray = 0;
        let mut at = pfn;
        let end = pfn + npages;
        while at < end {
            let Some((id, mut i)) = self.find(at) else {
                stray += 1;
                at += 1;
                continue;
            };
            let Some(run) = self.runs.get_mut(&id) else {
                break;
            };
            let reg_id = run.reg;
            let mut cleared = 0;
            while i < run.npages && at < end && run.is_live(i) {
                run.clear(i);
                cleared += 1;
                i += 1;
                at += 1;
            }
            let empty = run.nlive == 0;
            if empty {
                self.remove_run(id);
            }
            if let Some(reg) = self.regs.get_mut(&reg_id) {
                reg.live -= cleared;
                if reg.live == 0 {
                    let holder = reg.holder;
                    self.regs.remove(&reg_id);
                    released.push(holder);
                }
            }
        }
        (released, stray)
    }

    /// Splits run `id` at page `at` (0 < at < npages) into a head and a tail run; either is
    /// dropped if none of its pages is pinned. Returns their ids.
    fn split(&mut self, id: RunId, at: u64) -> (Option<RunId>, Option<RunId>) {
        let Some(run) = self.remove_run(id) else {
            return (None, None);
        };
        let (a, b) = (run.slice(0, at), run.slice(at, run.npages));
        let a = (a.nlive > 0).then(|| self.insert_run(a));
        let b = (b.nlive > 0).then(|| self.insert_run(b));
        (a, b)
    }

    /// Runs the CPU maps inside `[addr, addr + len)`, split so that each lies wholly inside:
    /// their ids.
    pub fn cpu_runs(&mut self, addr: u64, len: u64) -> Vec<RunId> {
        let end = addr.saturating_add(len);
        let lo = addr.saturating_sub((MAX_RUN - 1) * PAGE_SIZE);
        let hits: Vec<RunId> = self
            .by_cpu
            .range((lo, 0)..(end, 0))
            .map(|&(_, id)| id)
            .collect();
        let mut out = Vec::new();
        for mut id in hits {
            let Some(r) = self.runs.get(&id) else {
                continue;
            };
            let (Some(v), n) = (r.cpu, r.npages) else {
                continue;
            };
            let v_end = v + n * PAGE_SIZE;
            if v_end <= addr || v >= end {
                continue;
            }
            if v < addr {
                match self.split(id, (addr - v) / PAGE_SIZE).1 {
                    Some(t) => id = t,
                    None => continue,
                }
            }
            let Some(r) = self.runs.get(&id) else {
                continue;
            };
            let (v, n) = (r.cpu.unwrap_or(addr), r.npages);
            if v + n * PAGE_SIZE > end {
                match self.split(id, (end - v) / PAGE_SIZE).0 {
                    Some(h) => id = h,
                    None => continue,
                }
            }
            out.push(id);
        }
        out
    }

    /// Records where the CPU maps run `id`'s first page now (`None`: nowhere).
    pub fn set_cpu(&mut self, id: RunId, cpu: Option<u64>) {
        let Some(r) = self.runs.get_mut(&id) else {
            return;
        };
        if let Some(v) = r.cpu {
            self.by_cpu.remove(&(v, id));
        }
        r.cpu = cpu;
        r.hidden = false;
        if let Some(v) = cpu {
            r.last_cpu = v;
            self.by_cpu.insert((v, id));
        }
    }

    /// Records that run `id`'s mapping can no longer be read (it still exists).
    pub fn hide(&mut self, id: RunId) {
        self.set_cpu(id, None);
        if let Some(r) = self.runs.get_mut(&id) {
            r.hidden = true;
        }
    }

    /// Hidden runs whose mapping lies wholly inside `[addr, addr + len)`.
    pub fn hidden_in(&self, addr: u64, len: u64) -> Vec<RunId> {
        let end = addr.saturating_add(len);
        self.runs
            .iter()
            .filter(|(_, r)| {
                r.hidden && r.last_cpu >= addr && r.last_cpu + r.npages * PAGE_SIZE <= end
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }

    /// Registrations alive, and pages still pinned in them.
    pub fn counts(&self) -> (usize, u64) {
        (self.regs.len(), self.regs.values().map(|r| r.live).sum())
    }

    /// Every holder (for release at teardown).
    pub fn drain(&mut self) -> Vec<Holder> {
        self.runs.clear();
        self.by_pfn.clear();
        self.by_cpu.clear();
        self.regs.drain().map(|(_, r)| r.holder).collect()
    }

    /// Estimated heap bytes of the records.
    pub fn heap_bytes(&self) -> u64 {
        let run = std::mem::size_of::<Run>() as u64 + 8 + 48;
        let live: u64 = self.runs.values().map(|r| r.live.len() as u64 * 8).sum();
        self.regs.len() as u64 * (std::mem::size_of::<Reg>() as u64 + 16)
            + self.runs.len() as u64 * run
            + live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn registration_is_one_run_released_at_its_last_unpin() {
        let mut s = PinStore::default();
        s.add(Holder::Track, 0x10000, 100, 5, Some((7, 4)));
        assert_eq!(s.counts(), (1, 5));
        let (id, i) = s.find(101).unwrap();
        assert_eq!(i, 1);
        assert_eq!(s.edges(id, 0, 5), (Some(7), Some(4)));
        assert_eq!(s.edges(id, 1, 2), (None, None), "only the edges are known");
        assert_eq!(s.find(105), None);
        let (rel, stray) = s.unpin(100, 3);
        assert!(rel.is_empty() && stray == 0);
        assert_eq!(s.find(101), None, "unpinned pages are gone");
        let (rel, stray) = s.unpin(103, 2);
        assert_eq!((rel, stray), (vec![Holder::Track], 0));
        assert_eq!(s.counts(), (0, 0));
        assert_eq!(s.unpin(103, 1).1, 1, "a stray unpin is reported");
    }

    #[test]
    fn overlapping_frames_need_one_unpin_each() {
        let mut s = PinStore::default();
        s.add(Holder::Track, 0x10000, 7, 1, None);
        s.add(Holder::Track, 0x10000, 7, 1, None);
        assert_eq!(s.unpin(7, 1).0.len(), 1);
        assert!(s.find(7).is_some());
        assert_eq!(s.unpin(7, 1).0.len(), 1);
        assert!(s.find(7).is_none());
    }

    #[test]
    fn cpu_ranges_split_runs_at_their_edges() {
        let mut s = PinStore::default();
        s.add(Holder::Track, 0x100000, 10, 6, None);
        // Unmap pages 2 and 3 of the run.
        let ids = s.cpu_runs(0x100000 + 2 * P, 2 * P);
        assert_eq!(ids.len(), 1);
        let r = s.run(ids[0]).expect("run");
        assert_eq!((r.first_pfn, r.npages, r.cpu), (12, 2, Some(0x102000)));
        s.set_cpu(ids[0], None);
        assert_eq!(s.run(s.find(12).unwrap().0).unwrap().cpu, None);
        assert_eq!(s.run(s.find(11).unwrap().0).unwrap().cpu, Some(0x100000));
        assert_eq!(s.run(s.find(14).unwrap().0).unwrap().cpu, Some(0x104000));
        // Move the last two pages elsewhere.
        for id in s.cpu_runs(0x104000, 2 * P) {
            s.set_cpu(id, Some(0x900000));
        }
        assert_eq!(s.run(s.find(15).unwrap().0).unwrap().cpu, Some(0x900000));
        assert!(s.cpu_runs(0x104000, 2 * P).is_empty());
        assert_eq!(s.unpin(10, 6), (vec![Holder::Track], 0));
        assert_eq!(s.counts(), (0, 0));
    }
}
