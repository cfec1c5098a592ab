//! The broker's frame numbering: each process numbers the frames it pins itself; the broker
//! gives every pinned run a range of its own bus frames (congruent to the process's modulo
//! 1 GiB, so that large IOMMU pages stay possible) and remembers whose frames they are
//! ([`Frames`], [`Run`]).

use super::*;

/// The broker's first bus frame.
pub(super) const GLOBAL_PFN_BASE: u64 = 1 << 44;
/// Congruence kept between a process's frames and the broker's (1 GiB of frames).
pub(super) const ALIGN_PFNS: u64 = 1 << 18;

/// A run of the broker's frames that stands for a process's frames.
#[derive(Clone, Debug)]
pub(super) struct Run {
    pub(super) npages: u64,
    pub(super) client: u32,
    pub(super) local: u64,
    pub(super) reserved: bool,
    pub(super) memtype: MemType,
    /// Pinned frames of the run not unpinned yet.
    pub(super) live: u64,
    /// The ring buffer holding the run: the ring, its slot, the first page's registered
    /// address.
    pub(super) held: Option<(Arc<HeldRing>, u32, u64)>,
}

#[derive(Debug, Default)]
pub(super) struct Frames {
    pub(super) runs: BTreeMap<u64, Run>,
    pub(super) next: u64,
}

impl Frames {
    pub(super) fn find(&self, pfn: u64) -> Option<(u64, Run)> {
        let (&first, r) = self.runs.range(..=pfn).next_back()?;
        (pfn - first < r.npages).then(|| (first, r.clone()))
    }

    /// Runs of the broker's frames for the process's `runs` (each held by its ring, if any),
    /// as the pages the engine gets.
    pub(super) fn add(
        &mut self,
        client: u32,
        runs: impl IntoIterator<Item = (FrameRun, Option<(Arc<HeldRing>, u32, u64)>)>,
    ) -> Vec<PinnedPage> {
        let mut out = Vec::new();
        for (f, held) in runs {
            let n = f.npages;
            let next = self.next.max(GLOBAL_PFN_BASE);
            let mut first = next - next % ALIGN_PFNS + f.pfn % ALIGN_PFNS;
            if first < next {
                first += ALIGN_PFNS;
            }
            self.next = first + n;
            self.runs.insert(
                first,
                Run {
                    npages: n,
                    client,
                    local: f.pfn,
                    reserved: f.reserved,
                    memtype: f.memtype,
                    live: if f.reserved { 0 } else { n },
                    held,
                },
            );
            out.extend((0..n).map(|k| PinnedPage {
                pfn: first + k,
                reserved: f.reserved,
            }));
        }
        out
    }

    /// The pieces of `[pfn, pfn + npages)`: `(broker first, run start, pages, run)`.
    pub(super) fn pieces(&self, pfn: u64, npages: u64) -> Vec<(u64, u64, u64, Run)> {
        let mut out = Vec::new();
        let (mut at, end) = (pfn, pfn.saturating_add(npages));
        while at < end {
            match self.find(at) {
                Some((first, r)) => {
                    let n = (first + r.npages - at).min(end - at);
                    out.push((at, first, n, r));
                    at += n;
                }
                None => {
                    // Not ours: skip to the next run.
                    at = self
                        .runs
                        .range(at..)
                        .next()
                        .map_or(end, |(f, _)| *f)
                        .min(end);
                }
            }
        }
        out
    }
}

/// The process frames behind pieces of the broker's (`Frames::pieces`), per process, as runs
/// `(first frame, frames)` in the process's numbering, merged where they continue each other.
pub(super) fn local_runs(
    pieces: impl IntoIterator<Item = (u64, u64, u64, Run)>,
) -> BTreeMap<u32, Vec<(u64, u64)>> {
    let mut out: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for (at, first, n, r) in pieces {
        let local = r.local + (at - first);
        let runs = out.entry(r.client).or_default();
        match runs.last_mut() {
            Some((s, k)) if *s + *k == local => *k += n,
            _ => runs.push((local, n)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pfn: u64, npages: u64) -> (FrameRun, Option<(Arc<HeldRing>, u32, u64)>) {
        let r = FrameRun {
            pfn,
            npages,
            reserved: false,
            memtype: MemType::Wb,
            held: None,
        };
        (r, None)
    }

    #[test]
    fn runs_keep_congruence_and_split_where_frames_do() {
        let mut f = Frames::default();
        let local = (1u64 << 44) + 5;
        let pages = f.add(7, [run(local, 2), run(local + 9, 1)]);
        assert_eq!(pages.len(), 3);
        assert_eq!(pages[0].pfn % ALIGN_PFNS, local % ALIGN_PFNS);
        assert_eq!(pages[1].pfn, pages[0].pfn + 1);
        assert_eq!(pages[2].pfn % ALIGN_PFNS, (local + 9) % ALIGN_PFNS);
        assert_eq!(
            f.runs.len(),
            2,
            "each of the process's runs is a run of the broker's"
        );
        let (first, run) = f.find(pages[1].pfn).unwrap();
        assert_eq!((first, run.client, run.local), (pages[0].pfn, 7, local));
        let p = f.pieces(pages[0].pfn, 2);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].2, 2);
        assert!(f.find(pages[2].pfn + 1).is_none());
    }
}
