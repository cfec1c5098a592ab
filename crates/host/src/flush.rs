//! Cache maintenance: `flush_cache` finds the pinned runs holding a bus range, checks that the
//! CPU still maps them, and flushes their lines (CLFLUSHOPT, CLWB or CLFLUSH between fences),
//! on one thread or, for large batches, several. The instructions themselves (CPUID's choice,
//! the fenced line loop) are here too.

use super::*;

impl HostPlatform {
    pub(crate) fn flush_lines(&mut self, v: u64, len: u64) {
        if let Some(d) = self.deferred.as_mut() {
            d.push((v, len));
            return;
        }
        self.flush_spans(&[(v, len)]);
    }

    /// Flushes CPU address spans, spread over `flush_threads` threads when they add up to at
    /// least [`Self::PARALLEL_FLUSH_MIN`]. Every span was checked mapped by its caller.
    pub(crate) fn flush_spans(&mut self, spans: &[(u64, u64)]) {
        let (insn, line) = self.flush;
        let flush = move |parts: &[(u64, u64)]| -> u64 {
            parts
                .iter()
                .map(|&(a, n)| {
                    // SAFETY: `[a, a + n)` lies within a span that the caller checked is
                    // mapped in this process (`maps`, `sys::mapped`); the mapping cannot go
                    // away during this platform call, whose caller holds the platform (the
                    // munmap hooks take it too). The flush only writes back and invalidates.
                    unsafe { flush::flush_range(insn, line, a, n) }
                })
                .sum()
        };
        let total: u64 = spans.iter().map(|s| s.1).sum();
        let threads = self.flush_threads.max(1) as u64;
        if threads == 1 || total < Self::PARALLEL_FLUSH_MIN {
            self.stats.lines_flushed += flush(spans);
            return;
        }
        // Cut the spans into `threads` shares of about equal bytes, at page boundaries. A
        // line flush by any core writes the line back from, and drops it in, every core's
        // cache, so a share may run anywhere; each share fences on its own core, and the
        // scope joins them all before the unpins that follow.
        let share = total.div_ceil(threads).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let mut shares: Vec<Vec<(u64, u64)>> = vec![Vec::new()];
        let mut room = share;
        for &(mut a, mut n) in spans {
            while n > 0 {
                if room == 0 {
                    shares.push(Vec::new());
                    room = share;
                }
                let take = n.min(room);
                shares
                    .last_mut()
                    .expect("one share at least")
                    .push((a, take));
                (a, n, room) = (a + take, n - take, room - take);
            }
        }
        let lines: u64 = std::thread::scope(|s| {
            let (first, rest) = shares.split_first().expect("one share at least");
            let others: Vec<_> = rest.iter().map(|sh| s.spawn(move || flush(sh))).collect();
            let mine = flush(first);
            mine + others
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .sum::<u64>()
        });
        self.stats.lines_flushed += lines;
    }

    /// Spreads flushes of at least [`Self::PARALLEL_FLUSH_MIN`] bytes over `n` threads (1, the
    /// default, keeps every flush on the calling thread, as the series does).
    pub fn set_flush_threads(&mut self, n: usize) {
        self.flush_threads = n.max(1);
    }

    /// The smallest flush worth spreading over threads (a thread costs tens of µs; CLFLUSHOPT
    /// goes through 4 MiB in about half a millisecond).
    pub const PARALLEL_FLUSH_MIN: u64 = 4 << 20;

    pub(crate) fn cpu_flush_event(&mut self, pfn: u64, npages: u64, via: &'static str) {
        self.trace(Event::CpuFlush {
            pa: pfn << PAGE_SHIFT,
            npages,
            via,
        });
    }

    /// Pages a span may cover at most (one check, one pass of flush instructions).
    pub(crate) const SPAN_PAGES: u64 = 1 << 15;

    /// Flushes the span that starts with pages `i..i + n` of run `id` and goes on through the
    /// runs that continue it both in frames and in CPU addresses (at most `left` pages), if
    /// that is more than this one run and the CPU maps all of it: the pages flushed.
    /// `None` leaves the work to [`Self::flush_pinned`], run by run.
    pub(crate) fn flush_span(&mut self, id: pins::RunId, i: u64, n: u64, left: u64) -> Option<u64> {
        let first = self.pins.run(id)?;
        let v0 = first.cpu? + i * PAGE_SIZE;
        let pfn0 = first.first_pfn + i;
        let (edge0, _) = self.pins.edges(id, i, n);
        let (mut total, mut last) = (n, (id, i, n));
        while total < left.min(Self::SPAN_PAGES) {
            let Some((next, 0)) = self.pins.find(pfn0 + total) else {
                break;
            };
            let r = self.pins.run(next)?;
            if r.cpu != Some(v0 + total * PAGE_SIZE) {
                break;
            }
            let m = r.npages.min(left - total);
            last = (next, 0, m);
            total += m;
        }
        if total == n {
            return None;
        }
        let (_, edge1) = self.pins.edges(last.0, last.1, last.2);
        if !self.maps(v0, total, (edge0, edge1)) {
            return None;
        }
        self.flush_lines(v0, total * PAGE_SIZE);
        self.cpu_flush_event(pfn0, total, "mapping");
        Some(total)
    }

    /// Flushes pinned pages `pfn..pfn + n` of one run (`id`, from page `i`).
    pub(crate) fn flush_pinned(&mut self, id: pins::RunId, i: u64, n: u64) {
        let Some(run) = self.pins.run(id) else {
            return;
        };
        let pfn = run.first_pfn + i;
        let edges = self.pins.edges(id, i, n);
        let known = edges.0.is_some() || edges.1.is_some();
        let now = run.cpu.map(|v| v + i * PAGE_SIZE);
        if let Some(v) = now.filter(|v| self.maps(*v, n, edges)) {
            self.flush_lines(v, n * PAGE_SIZE);
            self.cpu_flush_event(pfn, n, "mapping");
            return;
        }
        // The mapping went away. Where the real frames are known, it may have come back (a
        // shared page mapped again at the same place): flush through it.
        let again = run.last_cpu + i * PAGE_SIZE;
        if now.is_none() && known && !run.hidden && self.maps(again, n, edges) {
            self.flush_lines(again, n * PAGE_SIZE);
            self.cpu_flush_event(pfn, n, "mapping");
        } else if now.is_none() {
            self.stats.pages_flushed_at_unmap += n;
            self.cpu_flush_event(pfn, n, "unmap");
        } else {
            self.stats.pages_unresolved += n;
            self.cpu_flush_event(pfn, n, "unreachable");
        }
    }

    /// `Platform::flush_cache`.
    pub(crate) fn do_flush_cache(&mut self, pa: u64, len: u64) {
        self.stats.flush_calls += 1;
        let end = pa.saturating_add(len);
        let mut at = pa & !(PAGE_SIZE - 1);
        while at < end {
            let pfn = at >> PAGE_SHIFT;
            if let Some(m) = self.mmio_pfns.get(&pfn).copied() {
                // Cacheable device memory: through the program's mapping of it, if any.
                match m.vaddr.filter(|v| self.maps(*v, 1, (None, None))) {
                    Some(v) => self.flush_lines(v, PAGE_SIZE),
                    None => self.stats.pages_unresolved += 1,
                }
                at += PAGE_SIZE;
                continue;
            }
            let Some((id, i)) = self.pins.find(pfn) else {
                self.stats.pages_unresolved += 1;
                self.cpu_flush_event(pfn, 1, "unreachable");
                at += PAGE_SIZE;
                continue;
            };
            let left = (end - at).div_ceil(PAGE_SIZE);
            let n = self
                .pins
                .run(id)
                .map_or(1, |r| (r.npages - i).min(left))
                .max(1);
            // Runs that continue this one in frames and in CPU addresses are flushed with it:
            // one check and one pass over the whole span.
            if let Some(total) = self.flush_span(id, i, n, left) {
                at += total * PAGE_SIZE;
                continue;
            }
            self.flush_pinned(id, i, n);
            at += n * PAGE_SIZE;
        }
    }

    /// `Platform::flush_cache_batch`: every range resolved to CPU spans first, then flushed
    /// on the threads.
    pub(crate) fn do_flush_cache_batch(&mut self, ranges: &[(u64, u64)]) {
        if self.flush_threads <= 1 {
            for &(pa, len) in ranges {
                self.do_flush_cache(pa, len);
            }
            return;
        }
        // Resolve every range to CPU spans first, then flush them all on the threads.
        self.deferred = Some(Vec::new());
        for &(pa, len) in ranges {
            self.do_flush_cache(pa, len);
        }
        let spans = self.deferred.take().unwrap_or_default();
        self.flush_spans(&spans);
    }
}

/// Cache-line maintenance instruction chosen by CPUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushInsn {
    /// CLFLUSHOPT (`CPUID.7.0:EBX[23]`).
    Clflushopt,
    /// CLWB (`CPUID.7.0:EBX[24]`): writes back without necessarily invalidating.
    Clwb,
    /// CLFLUSH (`CPUID.1:EDX[19]`).
    Clflush,
    /// None available (not x86-64): flushes are counted but do nothing.
    None,
}

/// Detects the best flush instruction and the cache-line size (`CPUID.1:EBX[15:8] * 8`).
pub fn detect_flush() -> (FlushInsn, u64) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        let l1 = __cpuid(1);
        let line = (((l1.ebx >> 8) & 0xff) as u64 * 8).max(16);
        let max = __cpuid(0).eax;
        let ebx7 = if max >= 7 { __cpuid_count(7, 0).ebx } else { 0 };
        let insn = if ebx7 & (1 << 23) != 0 {
            FlushInsn::Clflushopt
        } else if ebx7 & (1 << 24) != 0 {
            FlushInsn::Clwb
        } else if l1.edx & (1 << 19) != 0 {
            FlushInsn::Clflush
        } else {
            FlushInsn::None
        };
        (insn, line)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (FlushInsn::None, 64)
    }
}

/// `clflush_cache_range` of the series: a full fence, one instruction per line of
/// `[addr, addr + len)`, a full fence. `addr` must be mapped and readable in this process
/// (the caller checks that with [`crate::sys::mapped`] right before).
///
/// # Safety
/// Every byte of `[addr, addr + len)` must be mapped in this process: a flush of an unmapped
/// line raises a page fault (SIGSEGV).
pub unsafe fn flush_range(insn: FlushInsn, line: u64, addr: u64, len: u64) -> u64 {
    if len == 0 || insn == FlushInsn::None {
        return 0;
    }
    let start = addr & !(line - 1);
    let end = addr + len;
    let mut n = 0;
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: MFENCE has no memory operands.
        unsafe { std::arch::x86_64::_mm_mfence() };
        let mut p = start;
        while p < end {
            // SAFETY: `p` lies in `[addr & !(line-1), addr + len)`, mapped per this function's
            // contract (lines never cross pages); the flush instructions only write back and
            // invalidate the line and never change its contents.
            unsafe {
                match insn {
                    FlushInsn::Clflushopt => {
                        std::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags))
                    }
                    FlushInsn::Clwb => {
                        std::arch::asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags))
                    }
                    FlushInsn::Clflush => std::arch::x86_64::_mm_clflush(p as *const u8),
                    FlushInsn::None => {}
                }
            }
            p += line;
            n += 1;
        }
        // SAFETY: MFENCE has no memory operands.
        unsafe { std::arch::x86_64::_mm_mfence() };
    }
    n
}
