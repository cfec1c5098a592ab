//! Physical page frames (processes and their address spaces are in `process.rs`, pins and
//! RLIMIT_MEMLOCK accounting in `pin.rs`).
//!
//! RAM frames are numbered `1..=memory_frames` (pfn 0 is never used). A frame's RAM is created
//! lazily, filled with [`INITIAL_RAM_BYTE`], and keeps its contents when the frame is freed and
//! handed out again. The free list is LIFO. Every allocation (a page fault, `process.rs`) bumps
//! the frame's generation and zeroes it *through the cache*: the 64 lines become Dirty zeros,
//! RAM is untouched. Each RAM
//! line remembers the generation at which it was last written, which is how a device read of
//! an earlier owner's data is recognised.
//!
//! A frame is freed when no process maps it and no pin holds it.

use type1_core::{MemType, PAGE_SHIFT, PAGE_SIZE};

use crate::Sim;

/// Cache line size in bytes: RAM is read, written and stamped a line at a time.
pub const LINE_SIZE: u64 = 64;
/// log2 of [`LINE_SIZE`].
pub const LINE_SHIFT: u32 = 6;
/// The byte every RAM frame holds before anything writes it (boot-time garbage).
pub const INITIAL_RAM_BYTE: u8 = 0xa5;
/// Cache lines per page.
pub(crate) const LINES_PER_PAGE: usize = (PAGE_SIZE / LINE_SIZE) as usize;
/// 4 KiB pages in a transparent huge page (2 MiB).
pub(crate) const FOLIO_PAGES: u64 = 512;
/// Default RLIMIT_MEMLOCK of a new process, in pages (64 MiB).
pub const DEFAULT_MEMLOCK_LIMIT_PAGES: u64 = 16384;

/// Physical memory. The free frames are those never handed out (`fresh..=last`, handed out in
/// ascending order) and those freed since, a LIFO stack on top of them: a just-freed frame is
/// the next one handed out. Invariants (checked as frames go on the free list,
/// [`Memory::push_free`]): every pfn on `free` is a RAM frame (`1..frames.len()`), is free
/// once, is mapped by no process and pinned by nothing.
#[derive(Clone, Debug)]
pub(crate) struct Memory {
    /// Frame records, indexed by pfn (index 0 unused).
    pub frames: Vec<Frame>,
    /// Freed pfns, LIFO.
    pub free: Vec<u64>,
    /// The lowest pfn never handed out.
    pub fresh: u64,
    /// Bytes of MMIO pages that were written, by pfn.
    pub mmio_store: std::collections::BTreeMap<u64, Box<[u8]>>,
    /// The machine's MMIO windows.
    pub mmio_ranges: Vec<crate::MmioDesc>,
    /// The last all-zero RAM page handed out (every line written at its generation): shared
    /// by every frame of that generation whose zeroed lines were all written back at once
    /// (see [`Self::zero_data`]).
    pub zero_page: Option<std::sync::Arc<FrameData>>,
    /// Breaches of the invariants found so far.
    pub broken: Vec<String>,
}

/// Fails when the frame table of `n` frames would not fit in the memory this host has
/// available (`MemAvailable`, when it can be read), before anything is allocated. Tables
/// under 64 MiB (1.6 Mi frames) are not checked: machines are built often (every scenario
/// run, sweep and model test) and those always fit.
pub(crate) fn check_room(n: u64) -> Result<(), String> {
    let need = (n + 1).saturating_mul(std::mem::size_of::<Frame>() as u64);
    if need < 64 << 20 {
        return Ok(());
    }
    let avail = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    match avail {
        Some(a) if need > a => Err(format!(
            "memory_frames = {n} needs a {} MiB frame table; {} MiB is available",
            need >> 20,
            a >> 20
        )),
        _ => Ok(()),
    }
}

impl Memory {
    /// RAM of a page whose 64 lines were all written with zeros at generation `gen`.
    pub(crate) fn zero_data(&mut self, gen: u64) -> std::sync::Arc<FrameData> {
        match &self.zero_page {
            Some(d) if d.line_gen[0] == gen => std::sync::Arc::clone(d),
            _ => {
                let d = std::sync::Arc::new(FrameData {
                    ram: vec![0; PAGE_SIZE as usize].into_boxed_slice(),
                    line_gen: [gen; LINES_PER_PAGE],
                    hash: std::sync::OnceLock::new(),
                });
                self.zero_page = Some(std::sync::Arc::clone(&d));
                d
            }
        }
    }

    /// Puts `pfn` on the free list, checking this part's invariants as it does (constant
    /// time, whatever the machine's size): a RAM frame, not free already, unmapped and
    /// unpinned. A breach is kept for [`Self::invariant_errors`].
    pub(crate) fn push_free(&mut self, pfn: u64) {
        let fresh = pfn >= self.fresh;
        match self.frames.get_mut(pfn as usize).filter(|_| pfn != 0) {
            None => self
                .broken
                .push(format!("free list given pfn 0x{pfn:x}, not a RAM frame")),
            Some(fr) => {
                if fr.free || fresh {
                    self.broken
                        .push(format!("pfn 0x{pfn:x} is put on the free list twice"));
                } else if fr.in_use || fr.pins > 0 {
                    self.broken.push(format!(
                        "free pfn 0x{pfn:x} is mapped ({}) or pinned ({})",
                        fr.in_use, fr.pins
                    ));
                }
                fr.free = true;
            }
        }
        self.free.push(pfn);
    }

    /// Takes the most recently freed frame off the free list, else the lowest fresh one.
    pub(crate) fn pop_free(&mut self) -> Option<u64> {
        let pfn = match self.free.pop() {
            Some(pfn) => pfn,
            None if (self.fresh as usize) < self.frames.len() => {
                self.fresh += 1;
                return Some(self.fresh - 1);
            }
            None => return None,
        };
        if let Some(fr) = self.frames.get_mut(pfn as usize) {
            fr.free = false;
        }
        Some(pfn)
    }

    /// Takes 512 fresh frames whose first is 2 MiB aligned (a transparent huge page), if
    /// enough are left; fresh frames skipped to align go on the free list.
    pub(crate) fn pop_folio(&mut self) -> Option<u64> {
        let base = self.fresh.next_multiple_of(FOLIO_PAGES);
        if base + FOLIO_PAGES > self.frames.len() as u64 {
            return None;
        }
        for pfn in self.fresh..base {
            self.frames[pfn as usize].free = true;
            self.free.push(pfn);
        }
        self.fresh = base + FOLIO_PAGES;
        Some(base)
    }

    /// Broken invariants of this part (see the type), one line each.
    pub(crate) fn invariant_errors(&self) -> Vec<String> {
        self.broken.clone()
    }
}

/// RAM of a frame that has been written at least once.
#[derive(Clone, Debug)]
pub(crate) struct FrameData {
    pub ram: Box<[u8]>,
    /// Generation of the frame when each line's RAM was last written.
    pub line_gen: [u64; LINES_PER_PAGE],
    /// Hash of `ram` and `line_gen` for state digests, computed once per content: clones of
    /// the machine share the data, so the model checker hashes each page version once.
    hash: std::sync::OnceLock<u64>,
}

impl FrameData {
    /// The content hash (see [`crate::Sim::state_digest`]).
    pub(crate) fn content_hash(&self) -> u64 {
        *self.hash.get_or_init(|| {
            use std::hash::{Hash, Hasher};
            let mut h = crate::StateHasher::default();
            (&self.ram, &self.line_gen).hash(&mut h);
            h.finish()
        })
    }
}

/// A RAM page frame.
#[derive(Clone, Debug, Default)]
pub(crate) struct Frame {
    /// Shared between clones of the machine until written (model checking branches a lot).
    pub data: Option<std::sync::Arc<FrameData>>,
    pub pins: u32,
    /// Bumped at every allocation.
    pub gen: u64,
    /// Mapped by a process page table.
    pub in_use: bool,
    /// Writable by a non-coherent domain since it was last pinned.
    pub exposed: bool,
    /// Domain page-table entries plus unsynced IOTLB entries pointing at the frame.
    pub iommu_refs: u32,
    /// IOMMU entries (and unsynced IOTLB entries) of non-coherent domains with write access.
    pub nc_write_refs: u32,
    /// On the free list.
    pub free: bool,
    /// Flushed at least once since it was last pinned (protocol check `missing_map_flush`).
    pub flushed_since_pin: bool,
    /// Mapped into a non-coherent domain and not flushed since it left every domain
    /// (protocol check `missing_unpin_flush`, F5's ordering rule).
    pub needs_unpin_flush: bool,
}

impl Frame {
    pub(crate) fn data_mut(&mut self) -> &mut FrameData {
        let d = self.data.get_or_insert_with(|| {
            std::sync::Arc::new(FrameData {
                ram: vec![INITIAL_RAM_BYTE; PAGE_SIZE as usize].into_boxed_slice(),
                line_gen: [0; LINES_PER_PAGE],
                hash: std::sync::OnceLock::new(),
            })
        });
        let d = std::sync::Arc::make_mut(d);
        // The caller is about to change the content.
        d.hash = std::sync::OnceLock::new();
        d
    }
}

impl Sim {
    // ---- processes -------------------------------------------------------------------------

    // ---- regions ---------------------------------------------------------------------------

    // ---- frames ----------------------------------------------------------------------------

    /// A process stopped mapping `pfn`: free it unless pinned.
    pub(crate) fn release_frame(&mut self, pfn: u64) {
        let Some(f) = self.mem.frames.get_mut(pfn as usize) else {
            return;
        };
        f.in_use = false;
        self.obs.changes.pfn.add(pfn, pfn + 1);
        if f.pins == 0 {
            self.mem.push_free(pfn);
        }
    }

    /// Pin count of a RAM frame (0 for anything else).
    pub fn frame_pins(&self, pfn: u64) -> u32 {
        if self.is_ram(pfn) {
            self.mem.frames[pfn as usize].pins
        } else {
            0
        }
    }

    /// Allocation generation of a RAM frame (0 if never allocated).
    pub fn frame_generation(&self, pfn: u64) -> u64 {
        if self.is_ram(pfn) {
            self.mem.frames[pfn as usize].gen
        } else {
            0
        }
    }

    /// Number of frames currently pinned.
    pub fn pinned_frames(&self) -> u64 {
        self.mem.frames.iter().filter(|f| f.pins > 0).count() as u64
    }

    /// Frames currently pinned, with their pin counts.
    pub fn pinned_frame_list(&self) -> Vec<(u64, u32)> {
        self.mem
            .frames
            .iter()
            .enumerate()
            .filter(|(_, f)| f.pins > 0)
            .map(|(i, f)| (i as u64, f.pins))
            .collect()
    }

    /// Raw RAM bytes at physical address `pa` (no cache involved); MMIO reads its backing.
    pub fn ram_read(&self, pa: u64, buf: &mut [u8]) {
        self.read_lines(pa, buf, |s, line| s.ram_line(line));
    }

    /// Fills `buf` from `pa` a line (or the part of one inside `buf`) at a time: RAM lines
    /// from `line_of`, anything else from the MMIO backing.
    pub(crate) fn read_lines(
        &self,
        pa: u64,
        buf: &mut [u8],
        line_of: impl Fn(&Self, u64) -> [u8; LINE_SIZE as usize],
    ) {
        let mut k = 0;
        while k < buf.len() {
            let a = pa.wrapping_add(k as u64);
            let off = (a % LINE_SIZE) as usize;
            let m = (LINE_SIZE as usize - off).min(buf.len() - k);
            let out = &mut buf[k..k + m];
            if self.is_ram(a >> PAGE_SHIFT) {
                out.copy_from_slice(&line_of(self, a >> LINE_SHIFT)[off..off + m]);
            } else {
                for (i, b) in out.iter_mut().enumerate() {
                    *b = self.mmio_byte(a.wrapping_add(i as u64));
                }
            }
            k += m;
        }
    }

    pub(crate) fn mmio_byte(&self, pa: u64) -> u8 {
        self.mem
            .mmio_store
            .get(&(pa >> PAGE_SHIFT))
            .map_or(0, |p| p[(pa % PAGE_SIZE) as usize])
    }

    pub(crate) fn mmio_page_mut(&mut self, pfn: u64) -> &mut [u8] {
        self.mem
            .mmio_store
            .entry(pfn)
            .or_insert_with(|| vec![0; PAGE_SIZE as usize].into_boxed_slice())
    }

    /// Host memory type of a pfn: RAM is WB, described MMIO has its type, the rest is UC.
    pub(crate) fn memtype_of(&self, pfn: u64) -> MemType {
        if self.is_ram(pfn) {
            return MemType::Wb;
        }
        self.mem
            .mmio_ranges
            .iter()
            .find(|r| r.contains(pfn))
            .map_or(MemType::Uc, |r| r.memtype)
    }

    // ---- CPU access ------------------------------------------------------------------------

    // ---- pins and accounting (the platform operations) --------------------------------------
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineDesc;
    use type1_core::Errno;

    fn sim() -> Sim {
        Sim::new(MachineDesc::default()).unwrap()
    }

    #[test]
    fn fresh_ram_is_garbage_and_pinned_frames_survive_exit() {
        let mut s = sim();
        let a = s.create_process("a");
        s.mmap_anon(a, 0x1000, 2 * PAGE_SIZE, true).unwrap();
        let pinned = s.do_pin(a, 0x1000, 2, true).unwrap();
        assert_eq!(pinned.len(), 2);
        let pfn = pinned[0].pfn;
        let mut ram = [0u8; 4];
        s.ram_read(pfn << PAGE_SHIFT, &mut ram);
        assert_eq!(ram, [INITIAL_RAM_BYTE; 4]);
        s.exit_process(a);
        assert_eq!(s.frame_pins(pfn), 1);
        assert!(!s.mem.free.contains(&pfn), "pinned frame is not freed");
        s.do_unpin(pfn);
        assert_eq!(s.mem.free.last(), Some(&pfn), "freed at its last unpin");
        s.do_unpin(pfn);
        assert_eq!(
            s.violations().last().map(|v| v.kind.as_str()),
            Some("contract")
        );
    }

    #[test]
    fn pin_and_access_errors() {
        let mut s = sim();
        let a = s.create_process("a");
        s.mmap_anon(a, 0x1000, PAGE_SIZE, false).unwrap();
        assert_eq!(
            s.do_pin(a, 0x1000, 1, true).unwrap_err().errno,
            Errno::EFAULT
        );
        assert_eq!(
            s.do_pin(a, 0x5000, 1, false).unwrap_err().errno,
            Errno::EFAULT
        );
        assert_eq!(
            s.cpu_write(a, 0x1000, &[1]).unwrap_err().errno,
            Errno::EFAULT
        );
        assert_eq!(
            s.mmap_anon(a, 0x1000, PAGE_SIZE, true).unwrap_err().errno,
            Errno::EEXIST
        );
        assert_eq!(
            s.mmap_anon(a, 0x1001, PAGE_SIZE, true).unwrap_err().errno,
            Errno::EINVAL
        );
        assert_eq!(
            s.mmap_anon(a, !0xfff, 2 * PAGE_SIZE, true)
                .unwrap_err()
                .errno,
            Errno::EINVAL
        );
        // Partial pin at the region end.
        s.mmap_anon(a, 0x10000, PAGE_SIZE, true).unwrap();
        assert_eq!(s.do_pin(a, 0x10000, 4, true).unwrap().len(), 1);
        // Accounting limit.
        s.set_memlock_limit(a, 2);
        assert!(s.do_account(a, 2, true).is_ok());
        assert_eq!(s.do_account(a, 1, true).unwrap_err().errno, Errno::ENOMEM);
        assert!(s.do_account(a, 1, false).is_ok());
        assert!(s.do_account(a, -3, true).is_ok());
        assert_eq!(s.locked_vm(a), 0);
    }

    #[test]
    fn munmap_splits_regions() {
        let mut s = sim();
        let a = s.create_process("a");
        s.mmap_anon(a, 0x10000, 4 * PAGE_SIZE, true).unwrap();
        s.cpu_fill(a, 0x10000, 4 * PAGE_SIZE, 1).unwrap();
        s.munmap(a, 0x11000, PAGE_SIZE).unwrap();
        assert!(s.translate(a, 0x10000).is_some());
        assert!(s.translate(a, 0x11000).is_none());
        assert!(s.translate(a, 0x12000).is_some());
        assert_eq!(
            s.cpu_write(a, 0x11000, &[1]).unwrap_err().errno,
            Errno::EFAULT
        );
        s.mmap_mmio(a, 0x100000, 4 * PAGE_SIZE, 0x10_0100, MemType::Wb, true)
            .unwrap();
        s.munmap(a, 0x101000, PAGE_SIZE).unwrap();
        assert_eq!(s.translate(a, 0x102000), Some((0x10_0102, true)));
        assert!(
            s.mmap_mmio(a, 0x200000, PAGE_SIZE, 0x10_0000, MemType::Wb, true)
                .is_err(),
            "memtype mismatch"
        );
        assert!(
            s.mmap_mmio(a, 0x200000, PAGE_SIZE, 5, MemType::Wb, true)
                .is_err(),
            "RAM pfn"
        );
    }
}
