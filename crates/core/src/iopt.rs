//! [`IoPageTable`]: one software IOMMU page table, shared by every platform that needs one.
//!
//! An IOMMU driver maps a range with the largest page sizes that the IOVA and physical
//! alignment allow (`iommu_pgsize`). This table does the same: `map(iova, pa, size)` becomes
//! leaves of 4 KiB, 2 MiB or 1 GiB (whatever the domain's `pgsize_bitmap` offers), each one
//! entry, so a physically contiguous run costs a handful of entries instead of one per page.
//! It is *assertive* in the way of iommufd's mock domain: mapping over an existing entry is
//! EEXIST, and every call checks its arguments, so a caller that breaks the
//! [`crate::Platform`] contract is told so instead of silently corrupting the table.
//!
//! It is the one software page table of the project: `type1-host` keeps its domains in it,
//! `type1-uapi`'s test double does too, and the simulator (`type1-sim`) uses it with 4 KiB
//! leaves, and 2 MiB leaves on a machine with transparent huge pages (`thp`).

use std::collections::BTreeMap;

use crate::{Errno, Prot, PAGE_SIZE};

/// One leaf: `size` bytes at an IOVA mapped to `pa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Physical address of the leaf's first byte.
    pub pa: u64,
    /// Leaf size in bytes (a page size of the table).
    pub size: u64,
    /// Access rights.
    pub prot: Prot,
}

/// Counts of a table's leaves by size, and what they cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// 4 KiB leaves.
    pub leaves_4k: u64,
    /// 2 MiB leaves.
    pub leaves_2m: u64,
    /// 1 GiB leaves.
    pub leaves_1g: u64,
    /// Bytes mapped.
    pub mapped: u64,
    /// Estimated heap bytes of the table (B-tree nodes at their typical fill).
    pub heap_bytes: u64,
}

/// A software IOMMU page table. See the module documentation.
#[derive(Clone, Debug)]
pub struct IoPageTable {
    pgsizes: u64,
    leaves: BTreeMap<u64, Leaf>,
}

impl IoPageTable {
    /// An empty table offering the page sizes in `pgsize_bitmap` (bit `n` = `1 << n` bytes;
    /// 4 KiB is always offered).
    pub fn new(pgsize_bitmap: u64) -> IoPageTable {
        IoPageTable {
            pgsizes: pgsize_bitmap | PAGE_SIZE,
            leaves: BTreeMap::new(),
        }
    }

    /// The largest offered page size that fits `iova`, `pa` and `left` bytes.
    fn pgsize(&self, iova: u64, pa: u64, left: u64) -> u64 {
        let align = (iova | pa).trailing_zeros().min(63);
        let fit = 63 - left.leading_zeros();
        let max = align.min(fit);
        let mask = if max >= 63 {
            self.pgsizes
        } else {
            self.pgsizes & ((2u64 << max) - 1)
        };
        1u64 << (63 - mask.leading_zeros())
    }

    /// The leaf containing `iova`: `(leaf iova, leaf)`.
    fn leaf_at(&self, iova: u64) -> Option<(u64, Leaf)> {
        let (&start, &leaf) = self.leaves.range(..=iova).next_back()?;
        (iova - start < leaf.size).then_some((start, leaf))
    }

    /// Maps `[iova, iova + size)` to `[pa, pa + size)`. EINVAL for unaligned or empty ranges and
    /// ones that wrap, EEXIST (changing nothing) if any byte is mapped already.
    pub fn map(&mut self, iova: u64, pa: u64, size: u64, prot: Prot) -> Result<(), Errno> {
        if size == 0
            || (iova | pa | size) % PAGE_SIZE != 0
            || iova.checked_add(size - 1).is_none()
            || pa.checked_add(size - 1).is_none()
        {
            return Err(Errno::EINVAL);
        }
        let last = iova + (size - 1);
        if self.leaf_at(iova).is_some() || self.leaves.range(iova..=last).next().is_some() {
            return Err(Errno::EEXIST);
        }
        let mut done = 0;
        while done < size {
            let s = self.pgsize(iova + done, pa + done, size - done);
            self.leaves.insert(
                iova + done,
                Leaf {
                    pa: pa + done,
                    size: s,
                    prot,
                },
            );
            done += s;
        }
        Ok(())
    }

    /// Re-maps the part of a leaf at `start` that lies in `[from, to)` (the rest was removed).
    fn reinsert(&mut self, start: u64, leaf: Leaf, from: u64, to: u64) {
        let (from, to) = (from.max(start), to.min(start + leaf.size));
        let mut at = from;
        while at < to {
            let pa = leaf.pa + (at - start);
            let s = self.pgsize(at, pa, to - at);
            self.leaves.insert(
                at,
                Leaf {
                    pa,
                    size: s,
                    prot: leaf.prot,
                },
            );
            at += s;
        }
    }

    /// Unmaps from `iova` on, up to `size` bytes, stopping at the first hole; returns the bytes
    /// unmapped. A leaf that straddles either end is split, never unmapped beyond the range.
    pub fn unmap(&mut self, iova: u64, size: u64) -> u64 {
        let end = iova.saturating_add(size);
        let mut at = iova;
        while at < end {
            let Some((start, leaf)) = self.leaf_at(at) else {
                break;
            };
            self.leaves.remove(&start);
            if start < at {
                self.reinsert(start, leaf, start, at);
            }
            let leaf_end = start + leaf.size;
            if leaf_end > end {
                self.reinsert(start, leaf, end, leaf_end);
            }
            at = leaf_end.min(end);
        }
        at - iova
    }

    /// The first mapped address in `[iova, iova + size)`, if any (page-aligned start).
    pub fn first_mapped(&self, iova: u64, size: u64) -> Option<u64> {
        if size == 0 {
            return None;
        }
        if self.leaf_at(iova).is_some() {
            return Some(iova);
        }
        let last = iova.saturating_add(size - 1);
        self.leaves.range(iova..=last).next().map(|(i, _)| *i)
    }

    /// The translation of `iova`: `(pa, prot)`.
    pub fn translate(&self, iova: u64) -> Option<(u64, Prot)> {
        self.leaf_at(iova)
            .map(|(start, l)| (l.pa + (iova - start), l.prot))
    }

    /// The physically contiguous run mapped from `iova` on, at most `max` bytes:
    /// `(pa, len)`, with `len` a multiple of pages (from `iova`'s page).
    pub fn run(&self, iova: u64, max: u64) -> Option<(u64, u64)> {
        let page = iova & !(PAGE_SIZE - 1);
        let (start, leaf) = self.leaf_at(page)?;
        let pa = leaf.pa + (page - start);
        let mut len = (start + leaf.size - page).min(max);
        while len < max {
            match self.leaves.get(&(page + len)) {
                Some(l) if l.pa == pa + len => len = (len + l.size).min(max),
                _ => break,
            }
        }
        Some((pa + (iova - page), len.max(PAGE_SIZE)))
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The leaf holding `iova`: `(its first IOVA, leaf)`.
    pub fn leaf_containing(&self, iova: u64) -> Option<(u64, Leaf)> {
        self.leaf_at(iova)
    }

    /// Every leaf, in IOVA order: `(iova, leaf)`.
    pub fn leaves(&self) -> impl Iterator<Item = (u64, Leaf)> + '_ {
        self.leaves.iter().map(|(i, l)| (*i, *l))
    }

    /// Leaf counts and the table's estimated memory.
    pub fn stats(&self) -> TableStats {
        let mut s = TableStats::default();
        for l in self.leaves.values() {
            match l.size {
                x if x >= 1 << 30 => s.leaves_1g += 1,
                x if x >= 1 << 21 => s.leaves_2m += 1,
                _ => s.leaves_4k += 1,
            }
            s.mapped += l.size;
        }
        // A B-tree leaf node holds up to 11 entries and is about 2/3 full on average.
        let entry = std::mem::size_of::<(u64, Leaf)>() as u64;
        s.heap_bytes = (self.leaves.len() as u64 * entry * 3).div_ceil(2);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Prot = Prot {
        read: true,
        write: true,
    };
    const ALL: u64 = (1 << 12) | (1 << 21) | (1 << 30);

    #[test]
    fn aligned_runs_become_large_leaves() {
        let mut t = IoPageTable::new(ALL);
        // 1 GiB + 2 MiB + 4 KiB, all aligned: three leaves.
        let size = (1 << 30) + (1 << 21) + 4096;
        t.map(1 << 30, 1 << 31, size, RW).unwrap();
        let s = t.stats();
        assert_eq!((s.leaves_1g, s.leaves_2m, s.leaves_4k), (1, 1, 1));
        assert_eq!(s.mapped, size);
        assert_eq!(t.translate((1 << 30) + 5), Some(((1 << 31) + 5, RW)));
        assert_eq!(t.run(1 << 30, u64::MAX), Some((1 << 31, size)));
    }

    #[test]
    fn misaligned_physical_address_keeps_small_leaves() {
        let mut t = IoPageTable::new(ALL);
        t.map(1 << 21, (1 << 21) + 4096, 1 << 21, RW).unwrap();
        assert_eq!(t.stats().leaves_4k, 512);
        let mut only4k = IoPageTable::new(0);
        only4k.map(1 << 30, 1 << 30, 1 << 21, RW).unwrap();
        assert_eq!(only4k.stats().leaves_4k, 512);
    }

    #[test]
    fn overlap_is_eexist_and_changes_nothing() {
        let mut t = IoPageTable::new(ALL);
        t.map(0x10000, 0x10000, 0x4000, RW).unwrap();
        assert_eq!(t.map(0xf000, 0x90000, 0x2000, RW), Err(Errno::EEXIST));
        assert_eq!(t.map(0x13000, 0x90000, 0x1000, RW), Err(Errno::EEXIST));
        assert_eq!(t.map(0x0, 0x0, 0x0, RW), Err(Errno::EINVAL));
        assert_eq!(t.map(0x100, 0x0, 0x1000, RW), Err(Errno::EINVAL));
        assert_eq!(t.stats().mapped, 0x4000);
        assert_eq!(t.translate(0xf000), None);
        assert_eq!(t.first_mapped(0x0, 0x11000), Some(0x10000));
        assert_eq!(t.first_mapped(0x12000, 0x100), Some(0x12000));
        assert_eq!(t.first_mapped(0x14000, 0x10000), None);
    }

    #[test]
    fn unmap_splits_straddling_leaves_and_stops_at_holes() {
        let mut t = IoPageTable::new(ALL);
        t.map(0, 0, 1 << 21, RW).unwrap();
        assert_eq!(t.stats().leaves_2m, 1);
        // Middle page out of a 2 MiB leaf: both sides stay mapped.
        assert_eq!(t.unmap(0x5000, 0x1000), 0x1000);
        assert_eq!(t.translate(0x5000), None);
        assert_eq!(t.translate(0x4000).map(|x| x.0), Some(0x4000));
        assert_eq!(t.translate(0x6000).map(|x| x.0), Some(0x6000));
        assert_eq!(t.stats().mapped, (1 << 21) - 0x1000);
        // From 0x3000 on: two pages, then the hole.
        assert_eq!(t.unmap(0x3000, 1 << 21), 0x2000);
        assert_eq!(t.unmap(0x3000, 0x1000), 0, "a hole unmaps nothing");
        assert_eq!(t.run(0x1000, u64::MAX), Some((0x1000, 0x2000)));
    }
}
