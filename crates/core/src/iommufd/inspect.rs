//! What checkers read of a context: its pins and charges as engine views, the state a failed
//! call must leave as it found it, and its own invariants.

use std::collections::BTreeMap;

use super::*;
use crate::{Prot, PAGE_SHIFT};

impl Ictx {
    /// What the context pins and charges, in the shape of type1 mapping views for the
    /// simulator's engine cross-check: one view per pages object, whose pinned pages are
    /// listed as `external_pins` `(iova, pfn, 1)` and whose `locked_vm` is what the object
    /// charged (none for an owner with CAP_IPC_LOCK, as `IOPT_PAGES_ACCOUNT_NONE`). The views
    /// carry no size, so the checker counts pins and charges from them and leaves page-table
    /// contents to the machine's own checks (stale reads, flush order, unpin while mapped).
    pub fn pin_views(&self) -> Vec<crate::MappingView> {
        self.pages
            .iter()
            .map(|(pid, pg)| {
                let external_pins: Vec<(u64, u64, u32)> = pg
                    .users
                    .iter()
                    .zip(&pg.pfns)
                    .enumerate()
                    .filter(|(_, (u, _))| **u > 0)
                    .map(|(k, (_, pfn))| (pg.owner.uptr + ((k as u64) << PAGE_SHIFT), *pfn, 1))
                    .collect();
                crate::MappingView {
                    // A key unique within the context; no page lies behind it (size 0).
                    iova: u64::from(*pid) << PAGE_SHIFT,
                    size: 0,
                    vaddr: pg.owner.uptr,
                    prot: Prot {
                        read: true,
                        write: pg.owner.writable,
                    },
                    mm: pg.owner.mm,
                    iommu_mapped: !external_pins.is_empty(),
                    vaddr_invalid: false,
                    is_noncoherent: pg.flagged,
                    locked_vm: if pg.owner.lock_cap {
                        0
                    } else {
                        external_pins.len() as u64
                    },
                    external_pins,
                }
            })
            .collect()
    }

    /// The context's state without its id counters and without the flush policy's own
    /// books (the pages' sticky bits, the IOASes' non-coherent counts): what a failed call
    /// must leave exactly as it found it. The policy's books are judged by their consequences
    /// (a missing flush is a violation), as type1's flag is (F5): a bit may over-approximate,
    /// and 5/5's count is wrong after a failed coherent fill, which is one of its holes.
    pub fn residue(&self) -> String {
        let pages: Vec<_> = self
            .pages
            .iter()
            .map(|(id, p)| (id, p.owner, p.refs, &p.users, &p.pfns))
            .collect();
        let mut objs = self.objs.clone();
        for o in objs.values_mut() {
            if let Obj::Ioas(i) = o {
                i.noncoherent = 0;
            }
        }
        format!(
            "{objs:?}{pages:?}{:?}{:?}",
            self.vfio_ioas, self.account_mode
        )
    }

    /// The context's own invariants: every page's user count is the number of (area, HWPT)
    /// pairs that map it, a pinned page has a frame, areas do not overlap, every area's pages
    /// object exists and counts it, and HWPTs and IOASes name each other.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut users: BTreeMap<u32, Vec<u32>> = self
            .pages
            .iter()
            .map(|(id, p)| (*id, vec![0; p.users.len()]))
            .collect();
        let mut refs: BTreeMap<u32, u32> = BTreeMap::new();
        for (id, o) in &self.objs {
            let Obj::Ioas(i) = o else { continue };
            let mut prev: Option<u64> = None;
            for (s, a) in &i.areas {
                if prev.is_some_and(|l| *s <= l) || a.last < *s {
                    return Err(format!("ioas {id}: area 0x{s:x} overlaps or is empty"));
                }
                prev = Some(a.last);
                let u = users
                    .get_mut(&a.pages)
                    .ok_or_else(|| format!("ioas {id}: area 0x{s:x} has no pages object"))?;
                *refs.entry(a.pages).or_insert(0) += 1;
                let end = a.first_page + a.npages(*s);
                if end as usize > u.len() {
                    return Err(format!("ioas {id}: area 0x{s:x} runs past its pages"));
                }
                for k in a.first_page..end {
                    u[k as usize] += i.hwpts.len() as u32;
                }
            }
            for h in &i.hwpts {
                if self.hwpt(*h).map(|x| x.ioas) != Ok(*id) {
                    return Err(format!("ioas {id}: hwpt {h} is not bound to it"));
                }
            }
        }
        for (id, p) in &self.pages {
            if refs.get(id).copied().unwrap_or(0) != p.refs {
                return Err(format!("pages {id}: {} refs, areas say otherwise", p.refs));
            }
            if users[id] != p.users {
                return Err(format!(
                    "pages {id}: users {:?}, (area, hwpt) pairs {:?}",
                    p.users, users[id]
                ));
            }
        }
        Ok(())
    }

    /// The sticky flush bit of the pages behind `iova` of an IOAS (None if no area maps it).
    pub fn flagged(&self, ioas: u32, iova: u64) -> Option<bool> {
        let (_, a) = self.ioas(ioas).ok()?.areas.range(..=iova).next_back()?;
        (iova <= a.last).then(|| self.pages.get(&a.pages).is_some_and(|p| p.flagged))
    }
}
