//! The write-back CPU cache: 64-byte lines, Absent, Clean or Dirty, unbounded capacity.
//!
//! Only RAM frames are ever cached (CPU access to MMIO goes straight to the device backing).
//! A line is written back to RAM only by an explicit flush ([`crate::Sim::writeback_all`],
//! [`crate::Sim::evict_all`], `flush_cache`) or by a snooping device write; nothing evicts on
//! its own. The *coherent view* of a byte is its cache line if present, else RAM.

use std::collections::BTreeMap;

use type1_core::PAGE_SHIFT;

use crate::{memory::LINES_PER_PAGE, Sim};

/// Cache line size in bytes.
pub const LINE_SIZE: u64 = 64;
/// log2 of [`LINE_SIZE`].
pub const LINE_SHIFT: u32 = 6;

/// One present line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub data: [u8; LINE_SIZE as usize],
    pub dirty: bool,
}

/// The cache: present lines keyed by line number (`pa >> 6`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Cache {
    pub lines: BTreeMap<u64, Line>,
}

impl Sim {
    /// RAM contents of a line (line number `pa >> 6`) of a RAM frame.
    pub(crate) fn ram_line(&self, line: u64) -> [u8; LINE_SIZE as usize] {
        let pfn = line / LINES_PER_PAGE as u64;
        let l = (line % LINES_PER_PAGE as u64) as usize;
        let mut out = [crate::memory::INITIAL_RAM_BYTE; LINE_SIZE as usize];
        if let Some(d) = self.frames.get(pfn as usize).and_then(|f| f.data.as_ref()) {
            let o = l * LINE_SIZE as usize;
            out.copy_from_slice(&d.ram[o..o + LINE_SIZE as usize]);
        }
        out
    }

    /// Writes `bytes` into RAM of `line` at `off`, stamping the line with the frame's generation.
    pub(crate) fn ram_write(&mut self, line: u64, off: usize, bytes: &[u8]) {
        let pfn = line / LINES_PER_PAGE as u64;
        let l = (line % LINES_PER_PAGE as u64) as usize;
        let Some(f) = self.frames.get_mut(pfn as usize) else {
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
        let Some(l) = self.cache.lines.get_mut(&line) else {
            return false;
        };
        if !l.dirty {
            return false;
        }
        l.dirty = false;
        let data = l.data;
        self.ram_write(line, 0, &data);
        true
    }

    /// CPU read of part of one line (fills it Clean when absent).
    pub(crate) fn cpu_read_line(&mut self, line: u64, off: usize, buf: &mut [u8]) {
        if !self.cache.lines.contains_key(&line) {
            let data = self.ram_line(line);
            self.cache.lines.insert(line, Line { data, dirty: false });
        }
        let l = &self.cache.lines[&line];
        buf.copy_from_slice(&l.data[off..off + buf.len()]);
    }

    /// CPU write of part of one line (fills it when absent, then marks it Dirty).
    pub(crate) fn cpu_write_line(&mut self, line: u64, off: usize, data: &[u8]) {
        if !self.cache.lines.contains_key(&line) {
            let d = self.ram_line(line);
            self.cache.lines.insert(
                line,
                Line {
                    data: d,
                    dirty: false,
                },
            );
        }
        let l = self.cache.lines.get_mut(&line).expect("just filled");
        l.data[off..off + data.len()].copy_from_slice(data);
        l.dirty = true;
    }

    /// Coherent view of part of a line, without filling the cache.
    pub(crate) fn coherent_line(&self, line: u64) -> [u8; LINE_SIZE as usize] {
        match self.cache.lines.get(&line) {
            Some(l) => l.data,
            None => self.ram_line(line),
        }
    }

    /// Writes back every dirty line; lines stay present and become Clean.
    pub fn writeback_all(&mut self) {
        let dirty: Vec<u64> = self
            .cache
            .lines
            .iter()
            .filter(|(_, l)| l.dirty)
            .map(|(k, _)| *k)
            .collect();
        for line in dirty {
            self.writeback_line(line);
        }
    }

    /// Writes back every dirty line, then drops every line.
    pub fn evict_all(&mut self) {
        self.writeback_all();
        self.cache.lines.clear();
    }

    /// Number of present lines, and how many of them are dirty.
    pub fn cache_lines(&self) -> (usize, usize) {
        (
            self.cache.lines.len(),
            self.cache.lines.values().filter(|l| l.dirty).count(),
        )
    }

    /// Whether the line holding `pa` is present, and dirty: `None` if absent.
    pub fn line_state(&self, pa: u64) -> Option<bool> {
        self.cache.lines.get(&(pa >> LINE_SHIFT)).map(|l| l.dirty)
    }

    /// Bytes of frame `pfn` where a present cache line differs from RAM.
    pub fn incoherent_bytes(&self, pfn: u64) -> u64 {
        if !self.is_ram(pfn) {
            return 0;
        }
        let first = pfn * LINES_PER_PAGE as u64;
        self.cache
            .lines
            .range(first..first + LINES_PER_PAGE as u64)
            .map(|(k, l)| {
                let ram = self.ram_line(*k);
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
        self.stats.flush_calls += 1;
        if len == 0 {
            return;
        }
        let Some(last) = pa.checked_add(len - 1) else {
            self.violate(
                "contract",
                format!("flush_cache pa 0x{pa:x} len 0x{len:x} wraps"),
            );
            return;
        };
        let (first_pfn, last_pfn) = (pa >> PAGE_SHIFT, last >> PAGE_SHIFT);
        self.stats.pages_flushed += last_pfn - first_pfn + 1;
        for pfn in first_pfn..=last_pfn {
            if self.is_ram(pfn) {
                let f = &mut self.frames[pfn as usize];
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
                "flush_uncached",
                format!("flush_cache of {mt:?} pfn 0x{pfn:x} (machine check on real hardware)"),
            );
        }
        let lines: Vec<u64> = self
            .cache
            .lines
            .range(pa >> LINE_SHIFT..=last >> LINE_SHIFT)
            .map(|(k, _)| *k)
            .collect();
        for line in lines {
            if self.writeback_line(line) {
                self.stats.lines_written_back += 1;
            }
            self.cache.lines.remove(&line);
        }
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
            match self.mmio_ranges.iter().find(|r| r.contains(p)) {
                Some(r) if r.memtype.is_cacheable() => p = r.base_pfn + r.npages,
                _ => return Some(p),
            }
        }
    }
}
