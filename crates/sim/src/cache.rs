//! The write-back CPU cache: 64-byte lines, Absent, Clean or Dirty, unbounded capacity.
//!
//! Only RAM frames are ever cached (CPU access to MMIO goes straight to the device backing).
//! A line is written back to RAM only by an explicit flush ([`crate::Sim::writeback_all`],
//! [`crate::Sim::evict_all`], `flush_cache`) or by a snooping device write; nothing evicts on
//! its own. The *coherent view* of a byte is its cache line if present, else RAM.
//!
//! Lines are kept in copy-on-write blocks of one frame. A freshly zeroed frame shares one
//! block of 64 dirty zero lines with every other such frame, and flushing it whole leaves the
//! shared all-zero RAM of its generation (`memory::Memory::zero_data`): what the line-by-line
//! path would leave, without a page of memory or 64 hashes per frame.

use std::collections::BTreeMap;
use std::sync::Arc;

use type1_core::PAGE_SHIFT;

use crate::{
    memory::{LINES_PER_PAGE, LINE_SHIFT, LINE_SIZE},
    Sim, ViolationKind,
};

/// One present line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub data: [u8; LINE_SIZE as usize],
    pub dirty: bool,
}

/// The lines of one page frame (copy-on-write between clones of the machine).
#[derive(Clone, Debug)]
struct Block {
    lines: [Option<Line>; LINES_PER_PAGE],
}

/// The cache: present lines, grouped by page frame, with a digest kept up to date as lines
/// change (a sum of per-line hashes). Blocks are shared between clones of the machine until
/// written, and a state digest does not rehash every line: both matter when the model checker
/// branches millions of times.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cache {
    blocks: BTreeMap<u64, Arc<Block>>,
    /// Frames all of whose lines hold [`ZERO_DIRTY`] and that no line access has touched
    /// since, as ranges (no block each: a 1 TiB guest is faulted in as one range). Counted in
    /// `present` and `sum` like any line; a frame gets a block of its own when a line of it
    /// is written.
    /// Shared between clones of the machine until changed.
    zero: Arc<crate::incheck::RangeSet>,
    present: usize,
    sum: u64,
}

/// A line just zeroed by the CPU: what every line of a freshly allocated frame holds.
const ZERO_DIRTY: Line = Line {
    data: [0; LINE_SIZE as usize],
    dirty: true,
};

/// The block of a freshly allocated frame, shared by every such frame until one is written
/// (zeroing a page through the cache then costs no allocation and no line hashing).
static ZERO_BLOCK: std::sync::LazyLock<Arc<Block>> = std::sync::LazyLock::new(|| {
    Arc::new(Block {
        lines: [Some(ZERO_DIRTY); LINES_PER_PAGE],
    })
});

/// Hash of a line's content (data and dirty bit).
fn content_hash(l: &Line) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = crate::StateHasher::default();
    (&l.data, l.dirty).hash(&mut h);
    h.finish()
}

/// [`content_hash`] of [`ZERO_DIRTY`], computed once.
fn zero_dirty_hash() -> u64 {
    static ZD: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ZD.get_or_init(|| content_hash(&ZERO_DIRTY))
}

/// The digest term of `line` holding content of hash `content`: both mixed (splitmix64's
/// finalizer), so that the cache's digest is a sum over lines.
fn mix(line: u64, content: u64) -> u64 {
    let mut z = line
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(content);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The digest term of `line` holding `l`.
fn line_hash(line: u64, l: &Line) -> u64 {
    let content = if *l == ZERO_DIRTY {
        zero_dirty_hash()
    } else {
        content_hash(l)
    };
    mix(line, content)
}

/// The sum of the digest terms of frame `pfn` holding [`ZERO_BLOCK`].
fn zero_block_sum(pfn: u64) -> u64 {
    let zd = zero_dirty_hash();
    let first = pfn * LINES_PER_PAGE as u64;
    (first..first + LINES_PER_PAGE as u64).fold(0u64, |s, line| s.wrapping_add(mix(line, zd)))
}

fn split(line: u64) -> (u64, usize) {
    (
        line / LINES_PER_PAGE as u64,
        (line % LINES_PER_PAGE as u64) as usize,
    )
}

impl Cache {
    pub(crate) fn get(&self, line: u64) -> Option<&Line> {
        let (pfn, i) = split(line);
        match self.blocks.get(&pfn) {
            Some(b) => b.lines[i].as_ref(),
            None if self.zero.contains(pfn) => Some(&ZERO_DIRTY),
            None => None,
        }
    }

    /// The slot of `line`, for writing (its block is unshared first).
    fn slot(&mut self, line: u64) -> &mut Option<Line> {
        let (pfn, i) = split(line);
        if self.zero.contains(pfn) {
            Arc::make_mut(&mut self.zero).remove(pfn, pfn + 1);
            self.blocks.insert(pfn, Arc::clone(&ZERO_BLOCK));
        }
        let b = self.blocks.entry(pfn).or_insert_with(|| {
            Arc::new(Block {
                lines: [None; LINES_PER_PAGE],
            })
        });
        &mut Arc::make_mut(b).lines[i]
    }

    pub(crate) fn insert(&mut self, line: u64, l: Line) {
        let mut sum = self.sum.wrapping_add(line_hash(line, &l));
        let slot = self.slot(line);
        match slot.replace(l) {
            Some(old) => sum = sum.wrapping_sub(line_hash(line, &old)),
            None => self.present += 1,
        }
        self.sum = sum;
    }

    pub(crate) fn remove(&mut self, line: u64) -> Option<Line> {
        self.get(line)?;
        let (pfn, _) = split(line);
        let old = self.slot(line).take()?;
        self.present -= 1;
        self.sum = self.sum.wrapping_sub(line_hash(line, &old));
        if self.blocks[&pfn].lines.iter().all(Option::is_none) {
            self.blocks.remove(&pfn);
        }
        Some(old)
    }

    /// Changes a present line; false when absent.
    pub(crate) fn modify(&mut self, line: u64, f: impl FnOnce(&mut Line)) -> bool {
        let Some(&before) = self.get(line) else {
            return false;
        };
        let mut l = before;
        f(&mut l);
        self.sum = self
            .sum
            .wrapping_sub(line_hash(line, &before))
            .wrapping_add(line_hash(line, &l));
        *self.slot(line) = Some(l);
        true
    }

    /// Fills every line of frame `pfn` with dirty zeros (a CPU zeroing the page). Without a
    /// line of the frame present this shares [`ZERO_BLOCK`].
    pub(crate) fn fill_zero_dirty(&mut self, pfn: u64) {
        let first = pfn * LINES_PER_PAGE as u64;
        if self.blocks.contains_key(&pfn) {
            for line in first..first + LINES_PER_PAGE as u64 {
                self.insert(line, ZERO_DIRTY);
            }
            return;
        }
        if self.zero.contains(pfn) {
            return;
        }
        Arc::make_mut(&mut self.zero).add(pfn, pfn + 1);
        self.present += LINES_PER_PAGE;
        self.sum = self.sum.wrapping_add(zero_block_sum(pfn));
    }

    /// Drops the frames of `[first, end)` that hold only their zeroed lines, untouched: the
    /// ranges they formed.
    pub(crate) fn take_zero_frames(&mut self, first: u64, end: u64) -> Vec<(u64, u64)> {
        if self.zero.within(first, end).is_empty() {
            return Vec::new();
        }
        let taken = Arc::make_mut(&mut self.zero).remove(first, end);
        for &(a, b) in &taken {
            for pfn in a..b {
                self.sum = self.sum.wrapping_sub(zero_block_sum(pfn));
            }
            self.present -= (b - a) as usize * LINES_PER_PAGE;
        }
        taken
    }

    /// Removes every line of frame `pfn`: `None` if none is present, else whether the frame
    /// held exactly the lines [`Self::fill_zero_dirty`] left (all present, dirty, zero) and
    /// its present lines, in order (none listed for the shared block itself).
    pub(crate) fn take_frame(&mut self, pfn: u64) -> Option<(bool, Vec<(u64, Line)>)> {
        if !self.take_zero_frames(pfn, pfn + 1).is_empty() {
            return Some((true, Vec::new()));
        }
        let b = self.blocks.remove(&pfn)?;
        if Arc::ptr_eq(&b, &ZERO_BLOCK) {
            self.present -= LINES_PER_PAGE;
            self.sum = self.sum.wrapping_sub(zero_block_sum(pfn));
            return Some((true, Vec::new()));
        }
        let first = pfn * LINES_PER_PAGE as u64;
        let lines: Vec<(u64, Line)> = b
            .lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((first + i as u64, (*l)?)))
            .collect();
        for (line, l) in &lines {
            self.sum = self.sum.wrapping_sub(line_hash(*line, l));
        }
        self.present -= lines.len();
        let zero = lines.len() == LINES_PER_PAGE && lines.iter().all(|(_, l)| *l == ZERO_DIRTY);
        Some((zero, lines))
    }

    pub(crate) fn clear(&mut self) {
        self.blocks.clear();
        self.zero = Default::default();
        self.present = 0;
        self.sum = 0;
    }

    /// Frames `first..=last` with at least one present line, in order.
    pub(crate) fn frames_in(&self, first: u64, last: u64) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .blocks
            .range(first..=last)
            .map(|(pfn, _)| *pfn)
            .collect();
        for (a, b) in self.zero.within(first, last.saturating_add(1)) {
            v.extend(a..b);
        }
        v.sort_unstable();
        v
    }

    /// Present lines numbered `first..=last`, in order, with their dirty bit.
    pub(crate) fn present_in(&self, first: u64, last: u64) -> Vec<(u64, bool)> {
        let mut v = Vec::new();
        let per = LINES_PER_PAGE as u64;
        for pfn in self.frames_in(first / per, last / per) {
            for i in 0..per {
                let line = pfn * per + i;
                if let (Some(l), true) = (self.get(line), (first..=last).contains(&line)) {
                    v.push((line, l.dirty));
                }
            }
        }
        v
    }

    /// Every present line with its dirty bit.
    pub(crate) fn present(&self) -> Vec<(u64, bool)> {
        self.present_in(0, u64::MAX)
    }

    /// Present lines.
    pub(crate) fn len(&self) -> usize {
        self.present
    }

    /// Equal for equal sets of lines.
    pub(crate) fn digest(&self) -> (u64, usize) {
        (self.sum, self.present)
    }
}

impl Sim {
    /// RAM contents of a line (line number `pa >> 6`) of a RAM frame.
    pub(crate) fn ram_line(&self, line: u64) -> [u8; LINE_SIZE as usize] {
        let pfn = line / LINES_PER_PAGE as u64;
        let l = (line % LINES_PER_PAGE as u64) as usize;
        let mut out = [crate::memory::INITIAL_RAM_BYTE; LINE_SIZE as usize];
        if let Some(d) = self
            .mem
            .frames
            .get(pfn as usize)
            .and_then(|f| f.data.as_ref())
        {
            let o = l * LINE_SIZE as usize;
            out.copy_from_slice(&d.ram[o..o + LINE_SIZE as usize]);
        }
        out
    }

    /// Writes `bytes` into RAM of `line` at `off`, stamping the line with the frame's generation.
    pub(crate) fn ram_write(&mut self, line: u64, off: usize, bytes: &[u8]) {
        let pfn = line / LINES_PER_PAGE as u64;
        let l = (line % LINES_PER_PAGE as u64) as usize;
        let Some(f) = self.mem.frames.get_mut(pfn as usize) else {
            return;
        };
        let gen = f.gen;
        let d = f.data_mut();
        let o = l * LINE_SIZE as usize + off;
        d.ram[o..o + bytes.len()].copy_from_slice(bytes);
        d.line_gen[l] = gen;
    }

    /// Writes a line back if it is dirty (it stays present and becomes clean). Returns whether
    /// anything was written.
    pub(crate) fn writeback_line(&mut self, line: u64) -> bool {
        let data = match self.cache.get(line) {
            Some(l) if l.dirty => l.data,
            _ => return false,
        };
        self.cache.modify(line, |l| l.dirty = false);
        self.ram_write(line, 0, &data);
        true
    }

    /// CPU read of part of one line (fills it Clean when absent).
    pub(crate) fn cpu_read_line(&mut self, line: u64, off: usize, buf: &mut [u8]) {
        if let Some(l) = self.cache.get(line) {
            buf.copy_from_slice(&l.data[off..off + buf.len()]);
            return;
        }
        let data = self.ram_line(line);
        buf.copy_from_slice(&data[off..off + buf.len()]);
        self.cache.insert(line, Line { data, dirty: false });
    }

    /// CPU write of part of one line (fills it when absent, then marks it Dirty).
    pub(crate) fn cpu_write_line(&mut self, line: u64, off: usize, data: &[u8]) {
        let mut l = match self.cache.get(line) {
            Some(l) => *l,
            None => Line {
                data: self.ram_line(line),
                dirty: false,
            },
        };
        l.data[off..off + data.len()].copy_from_slice(data);
        l.dirty = true;
        self.cache.insert(line, l);
    }

    /// Coherent (CPU) view of physical address `pa`, without filling the cache.
    pub fn coherent_read(&self, pa: u64, buf: &mut [u8]) {
        self.read_lines(pa, buf, |s, line| s.coherent_line(line));
    }

    /// Coherent view of part of a line, without filling the cache.
    pub(crate) fn coherent_line(&self, line: u64) -> [u8; LINE_SIZE as usize] {
        match self.cache.get(line) {
            Some(l) => l.data,
            None => self.ram_line(line),
        }
    }

    /// Writes back every dirty line; lines stay present and become Clean.
    pub fn writeback_all(&mut self) {
        let dirty: Vec<u64> = self
            .cache
            .present()
            .into_iter()
            .filter(|(_, dirty)| *dirty)
            .map(|(k, _)| k)
            .collect();
        for line in dirty {
            self.writeback_line(line);
        }
    }

    /// Writes back every dirty line, then drops every line.
    pub fn evict_all(&mut self) {
        self.writeback_all();
        self.cache.clear();
    }

    /// Number of present lines, and how many of them are dirty.
    pub fn cache_lines(&self) -> (usize, usize) {
        (
            self.cache.len(),
            self.cache.present().iter().filter(|(_, d)| *d).count(),
        )
    }

    /// Whether the line holding `pa` is present, and dirty: `None` if absent.
    pub fn line_state(&self, pa: u64) -> Option<bool> {
        self.cache.get(pa >> LINE_SHIFT).map(|l| l.dirty)
    }

    /// Bytes of frame `pfn` where a present cache line differs from RAM.
    pub fn incoherent_bytes(&self, pfn: u64) -> u64 {
        if !self.is_ram(pfn) {
            return 0;
        }
        let first = pfn * LINES_PER_PAGE as u64;
        self.cache
            .present_in(first, first + LINES_PER_PAGE as u64 - 1)
            .into_iter()
            .filter_map(|(k, _)| Some((k, self.cache.get(k)?)))
            .map(|(k, l)| {
                let ram = self.ram_line(k);
                l.data
                    .iter()
                    .zip(ram.iter())
                    .filter(|(a, b)| a != b)
                    .count() as u64
            })
            .sum()
    }

    /// The `flush_cache` platform operation: writes back and drops every line overlapping
    /// `[pa, pa + len)`. Flushing uncached MMIO is recorded as a `flush_uncached` violation.
    pub(crate) fn do_flush_cache(&mut self, pa: u64, len: u64) {
        self.obs.stats.flush_calls += 1;
        if len == 0 {
            return;
        }
        let Some(last) = pa.checked_add(len - 1) else {
            self.violate(
                ViolationKind::Contract,
                format!("flush_cache pa 0x{pa:x} len 0x{len:x} wraps"),
            );
            return;
        };
        let (first_pfn, last_pfn) = (pa >> PAGE_SHIFT, last >> PAGE_SHIFT);
        self.obs.stats.pages_flushed += last_pfn - first_pfn + 1;
        for pfn in first_pfn..=last_pfn {
            if self.is_ram(pfn) {
                let f = &mut self.mem.frames[pfn as usize];
                f.flushed_since_pin = true;
                if f.nc_write_refs == 0 {
                    // Flushed after the last non-coherent writer left: no stale line can
                    // remain, later CPU writes are ordinary coherent ones.
                    f.needs_unpin_flush = false;
                    f.exposed = false;
                }
            }
        }
        // Reserved pfns: only the memtype matters (they are never cached here).
        if let Some(pfn) = self.first_uncached_pfn(first_pfn, last_pfn) {
            let mt = self.memtype_of(pfn);
            self.violate(
                ViolationKind::FlushUncached,
                format!("flush_cache of {mt:?} pfn 0x{pfn:x} (machine check on real hardware)"),
            );
        }
        let (first_line, last_line) = (pa >> LINE_SHIFT, last >> LINE_SHIFT);
        // Whole frames still holding their zeroed lines, untouched, in bulk (a 1 TiB guest's
        // map flush is one range here).
        let whole_first = first_line.div_ceil(LINES_PER_PAGE as u64);
        let whole_end = (last_line + 1) / LINES_PER_PAGE as u64;
        for (a, b) in self.cache.take_zero_frames(whole_first, whole_end) {
            for pfn in a..b {
                self.write_back_zeroed(pfn);
            }
        }
        for pfn in self.cache.frames_in(first_pfn, last_pfn) {
            let page_first = pfn * LINES_PER_PAGE as u64;
            let page_last = page_first + LINES_PER_PAGE as u64 - 1;
            if first_line <= page_first && page_last <= last_line {
                self.flush_frame_lines(pfn);
                continue;
            }
            // Part of the frame: line by line.
            let lines: Vec<u64> = self
                .cache
                .present_in(first_line.max(page_first), last_line.min(page_last))
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            for line in lines {
                if self.writeback_line(line) {
                    self.obs.stats.lines_written_back += 1;
                }
                self.cache.remove(line);
            }
        }
    }

    /// Writes back and drops every line of frame `pfn`. A frame that still holds exactly the
    /// zeros its allocation left gets the shared all-zero RAM of its generation, which is what
    /// writing its 64 lines back one by one would leave.
    fn flush_frame_lines(&mut self, pfn: u64) {
        let Some((zero, lines)) = self.cache.take_frame(pfn) else {
            return;
        };
        if zero {
            self.write_back_zeroed(pfn);
            return;
        }
        for (line, l) in lines {
            if l.dirty {
                self.ram_write(line, 0, &l.data);
                self.obs.stats.lines_written_back += 1;
            }
        }
    }

    /// What writing back the 64 dirty zero lines of a freshly zeroed frame leaves: the shared
    /// all-zero RAM of its generation (only RAM frames are ever zeroed through the cache).
    fn write_back_zeroed(&mut self, pfn: u64) {
        if let Some(gen) = self.mem.frames.get(pfn as usize).map(|f| f.gen) {
            let data = self.mem.zero_data(gen);
            self.mem.frames[pfn as usize].data = Some(data);
        }
        self.obs.stats.lines_written_back += LINES_PER_PAGE as u64;
    }

    /// The first pfn of `first..=last` that is neither RAM nor cacheable MMIO.
    fn first_uncached_pfn(&self, first: u64, last: u64) -> Option<u64> {
        let mut p = first;
        loop {
            if p > last {
                return None;
            }
            if self.is_ram(p) {
                p = self.desc.memory_frames + 1;
                continue;
            }
            match self.mem.mmio_ranges.iter().find(|r| r.contains(p)) {
                Some(r) if r.memtype.is_cacheable() => p = r.base_pfn + r.npages,
                _ => return Some(p),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use type1_core::{PAGE_SHIFT, PAGE_SIZE};

    #[test]
    fn zeroing_through_cache_leaves_old_ram_and_flush_writes_back() {
        let mut s = Sim::new(crate::MachineDesc::default()).unwrap();
        let a = s.create_process("a");
        s.mmap_anon(a, 0x1000, PAGE_SIZE, true).unwrap();
        s.cpu_fill(a, 0x1000, PAGE_SIZE, 0x5e).unwrap();
        s.writeback_all();
        let (pfn, _) = s.translate(a, 0x1000).unwrap();
        s.exit_process(a);
        let b = s.create_process("b");
        s.mmap_anon(b, 0x8000, PAGE_SIZE, true).unwrap();
        let mut buf = [1u8; 16];
        s.cpu_read(b, 0x8000, &mut buf).unwrap();
        assert_eq!(buf, [0; 16], "CPU sees zeros");
        assert_eq!(
            s.translate(b, 0x8000),
            Some((pfn, false)),
            "LIFO reuse of the freed frame"
        );
        let mut ram = [0u8; 16];
        s.ram_read(pfn << PAGE_SHIFT, &mut ram);
        assert_eq!(
            ram, [0x5e; 16],
            "RAM still holds the previous owner's bytes"
        );
        assert_eq!(s.incoherent_bytes(pfn), PAGE_SIZE);
        s.do_flush_cache(pfn << PAGE_SHIFT, PAGE_SIZE);
        s.ram_read(pfn << PAGE_SHIFT, &mut ram);
        assert_eq!(ram, [0; 16]);
        assert_eq!(s.incoherent_bytes(pfn), 0);
        assert_eq!(
            s.line_state(pfn << PAGE_SHIFT),
            None,
            "flush drops the line"
        );
        assert_eq!(s.stats().lines_written_back, LINES_PER_PAGE as u64);
    }

    fn line(b: u8, dirty: bool) -> Line {
        Line {
            data: [b; LINE_SIZE as usize],
            dirty,
        }
    }

    #[test]
    fn the_digest_depends_on_the_lines_not_on_how_they_got_there() {
        let mut a = Cache::default();
        a.insert(5, line(1, true));
        a.insert(70, line(2, false));
        let mut b = Cache::default();
        b.insert(70, line(9, true));
        b.insert(3, line(3, false));
        b.insert(5, line(1, false));
        b.remove(3);
        assert!(b.modify(70, |l| *l = line(2, false)));
        assert_ne!(a.digest(), b.digest(), "line 5 differs in its dirty bit");
        assert!(b.modify(5, |l| l.dirty = true));
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.present(), vec![(5, true), (70, false)]);
        assert_eq!(b.present(), a.present());
        assert!(!b.modify(6, |l| l.dirty = false), "absent line");
        assert_eq!(b.remove(6), None);
        b.clear();
        assert_eq!(b.digest(), Cache::default().digest());
    }

    /// Flushing a whole freshly zeroed page at once (the shared zero block, the shared zero
    /// RAM) leaves exactly what flushing it line by line leaves: the same RAM bytes and line
    /// generations, counters, cache and state digest. A write to one zeroed page does not
    /// reach another that shares its block.
    #[test]
    fn a_whole_page_flush_equals_a_line_by_line_one() {
        use crate::{MachineDesc, Sim};
        use type1_core::{CacheMaintenance, PAGE_SIZE};
        let setup = || {
            let mut s = Sim::new(MachineDesc::default()).unwrap();
            let mm = s.create_process("p");
            s.mmap_anon(mm, 0x10000, 2 * PAGE_SIZE, true).unwrap();
            // Fault both pages in (zeroed through the cache), then dirty one line of the
            // second one.
            let mut b = [0u8; 1];
            s.cpu_read(mm, 0x10000, &mut b).unwrap();
            s.cpu_write(mm, 0x11000 + 64, &[7]).unwrap();
            let pa = |s: &Sim, va| s.translate(mm, va).unwrap().0 * PAGE_SIZE;
            let (p0, p1) = (pa(&s, 0x10000), pa(&s, 0x11000));
            (s, p0, p1)
        };
        let (mut whole, p0, p1) = setup();
        let (mut lines, _, _) = setup();
        assert_ne!(p0, p1);
        whole.flush_cache(type1_core::Pa(p0), PAGE_SIZE);
        whole.flush_cache(type1_core::Pa(p1), PAGE_SIZE);
        for pa in [p0, p1] {
            for half in [0, PAGE_SIZE / 2] {
                lines.flush_cache(type1_core::Pa(pa + half), PAGE_SIZE / 2);
            }
        }
        for pa in [p0, p1] {
            let pfn = (pa / PAGE_SIZE) as usize;
            let (a, b) = (
                whole.mem.frames[pfn].data.as_ref().unwrap(),
                lines.mem.frames[pfn].data.as_ref().unwrap(),
            );
            assert_eq!((&a.ram, a.line_gen), (&b.ram, b.line_gen), "pfn {pfn}");
        }
        let ram1 = &whole.mem.frames[(p1 / PAGE_SIZE) as usize]
            .data
            .as_ref()
            .unwrap()
            .ram;
        assert_eq!(ram1[64], 7, "the written line reached RAM");
        assert!(ram1.iter().enumerate().all(|(i, b)| i == 64 || *b == 0));
        assert_eq!(
            whole.stats().lines_written_back,
            lines.stats().lines_written_back
        );
        assert_eq!(whole.stats().lines_written_back, 128);
        assert_eq!(whole.cache_lines(), (0, 0));
        assert_eq!(whole.state_digest(), lines.state_digest());
    }

    #[test]
    fn clones_share_blocks_until_written() {
        let mut a = Cache::default();
        a.insert(1, line(1, true));
        let mut b = a.clone();
        b.insert(2, line(2, true));
        b.remove(1);
        assert_eq!(a.present(), vec![(1, true)]);
        assert_eq!(b.present(), vec![(2, true)]);
        assert_eq!(a.present_in(0, 0), vec![]);
        assert_eq!(a.len(), 1);
    }
}
