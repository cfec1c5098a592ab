//! The machine's floors for the benchmarks (`type1 bench`, `benches/map.rs`): what the
//! hardware and the kernel cost for the same bytes with nothing of type1 in the way.
//!
//! Every function takes a buffer the caller owns, mapped read-write for `len` bytes, and
//! returns seconds.

use std::time::Instant;

use crate::{flush, sys};

/// Flushes every line of `[addr, addr + len)` with the instruction CPUID offers.
///
/// # Safety
/// The range must be mapped and readable for its whole length.
pub unsafe fn flush_all(addr: u64, len: u64) {
    let (insn, line) = flush::detect_flush();
    let mut at = 0;
    while at < len {
        let n = (len - at).min(2 << 20);
        // SAFETY: per this function's contract.
        unsafe { flush::flush_range(insn, line, addr + at, n) };
        at += n;
    }
}

/// The buffer a floor measures.
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    addr: u64,
    len: u64,
}

impl Buffer {
    /// The floors' view of `map` (which must stay mapped while the value is used).
    pub fn of(map: &sys::AnonMap) -> Buffer {
        Buffer {
            addr: map.addr(),
            len: map.len(),
        }
    }

    /// Seconds to fault every page in (`MADV_POPULATE_WRITE`); only the first call on fresh
    /// memory measures anything.
    pub fn populate(&self) -> f64 {
        let t = Instant::now();
        let _ = sys::madvise(self.addr, self.len, libc::MADV_POPULATE_WRITE);
        t.elapsed().as_secs_f64()
    }

    /// Seconds to write every byte (`memset`): the memory bandwidth floor.
    pub fn fill(&self) -> f64 {
        let t = Instant::now();
        // SAFETY: the buffer is the caller's, mapped read-write for its length.
        unsafe { std::ptr::write_bytes(self.addr as *mut u8, 0x5a, self.len as usize) };
        t.elapsed().as_secs_f64()
    }

    /// Seconds to flush every line when none is cached (flushed once before).
    pub fn flush_clean(&self) -> f64 {
        // SAFETY: the buffer is mapped for its whole length.
        unsafe { flush_all(self.addr, self.len) };
        let t = Instant::now();
        // SAFETY: as above.
        unsafe { flush_all(self.addr, self.len) };
        t.elapsed().as_secs_f64()
    }

    /// Seconds to flush every line while dirty: each 256 KiB is written, then flushed; only
    /// the flushes are timed.
    pub fn flush_dirty(&self) -> f64 {
        let (insn, line) = flush::detect_flush();
        let chunk = (256u64 << 10).min(self.len);
        let mut dirty = 0.0;
        let mut at = 0;
        while at < self.len {
            let n = chunk.min(self.len - at);
            // SAFETY: the buffer is the caller's, mapped read-write for its length.
            unsafe { std::ptr::write_bytes((self.addr + at) as *mut u8, 0xa5, n as usize) };
            let t = Instant::now();
            // SAFETY: as above.
            unsafe { flush::flush_range(insn, line, self.addr + at, n) };
            dirty += t.elapsed().as_secs_f64();
            at += n;
        }
        dirty
    }
}

/// The CPU's clock in Hz as the kernel reports it (`cpu MHz` of `/proc/cpuinfo`), for cycles
/// per page; `None` if it does not say.
pub fn cpu_hz() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("cpu MHz")?.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|mhz| mhz * 1e6)
}

/// Bytes of memory available now (`MemAvailable` of `/proc/meminfo`).
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}
