//! [`SharedMem`]: a small memory file mapped shared, read and written with the widths a CPU
//! uses for device registers.
//!
//! The broker keeps each emulated device's BAR0 image (registers and buffer) in one; every
//! process that uses the device maps the same file (`type1-preload`), so that register reads
//! and writes to plain registers cost a load or a store instead of a round trip to the broker,
//! as an uncached access to real registers costs no system call. The model in the broker
//! (`type1_uapi::device::PciDevice`) loads the plain registers before it acts and stores what
//! it changed after (`Bar0Mirror`).
//!
//! Aligned accesses of 1, 2, 4 or 8 bytes are single atomic loads or stores, so a reader never
//! sees half of a 64-bit register another process is writing; other accesses go byte by byte.
//! Every access is bounds-checked: nothing outside the mapping is ever touched.

use std::sync::atomic::{AtomicI32, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use type1_core::Errno;

use crate::sys;

/// A shared mapping of a memory file (the file's fd is kept, for sending to other processes).
#[derive(Debug)]
pub struct SharedMem {
    /// The memory file, or -1 once disowned.
    fd: AtomicI32,
    addr: u64,
    len: u64,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics below; the raw
// address is never handed out.
unsafe impl Send for SharedMem {}
// SAFETY: as above: concurrent accesses are atomic loads and stores.
unsafe impl Sync for SharedMem {}

impl SharedMem {
    /// A new zero-filled memory file of `len` bytes (close-on-exec), mapped here.
    pub fn create(name: &std::ffi::CStr, len: u64) -> Result<SharedMem, Errno> {
        let fd = sys::memfd(name, true)?;
        if let Err(e) = sys::ftruncate(fd, len) {
            sys::close(fd);
            return Err(e);
        }
        Self::map(fd, len).inspect_err(|_| sys::close(fd))
    }

    /// Maps the memory file `fd` (taken over: closed with the mapping), which must be at least
    /// `len` bytes long.
    pub fn map(fd: i32, len: u64) -> Result<SharedMem, Errno> {
        let (_, _, size) = sys::fstat_id(fd)?;
        if size < len || len == 0 {
            return Err(Errno::EINVAL);
        }
        // SAFETY: a new mapping (no MAP_FIXED) replaces nothing.
        let addr = unsafe { sys::mmap_rw(0, len, libc::MAP_SHARED, fd, 0)? };
        Ok(SharedMem {
            fd: AtomicI32::new(fd),
            addr,
            len,
        })
    }

    /// The memory file (to send to another process; it stays owned here); -1 once disowned.
    pub fn fd(&self) -> i32 {
        self.fd.load(Ordering::Relaxed)
    }

    /// Forgets the memory file's descriptor (a forked child whose copy of it was closed by
    /// other means): the mapping stays, and nothing closes that number later.
    pub fn disown_fd(&self) {
        self.fd.store(-1, Ordering::Relaxed);
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty (never: a mapping has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn range(&self, off: u64, n: usize) -> Option<u64> {
        let end = off.checked_add(n as u64)?;
        (end <= self.len).then(|| self.addr + off)
    }

    /// Copies bytes at `off` into `buf`; false (nothing read) if the range is outside.
    pub fn load(&self, off: u64, buf: &mut [u8]) -> bool {
        let Some(a) = self.range(off, buf.len()) else {
            return false;
        };
        // SAFETY: `[a, a + buf.len())` lies inside the live shared mapping (checked above);
        // each pointer is aligned for the atomic type it is cast to (checked by `a % size`).
        unsafe {
            match buf.len() {
                8 if a % 8 == 0 => buf.copy_from_slice(
                    &AtomicU64::from_ptr(a as *mut u64)
                        .load(Ordering::Acquire)
                        .to_ne_bytes(),
                ),
                4 if a % 4 == 0 => buf.copy_from_slice(
                    &AtomicU32::from_ptr(a as *mut u32)
                        .load(Ordering::Acquire)
                        .to_ne_bytes(),
                ),
                2 if a % 2 == 0 => buf.copy_from_slice(
                    &AtomicU16::from_ptr(a as *mut u16)
                        .load(Ordering::Acquire)
                        .to_ne_bytes(),
                ),
                _ => {
                    // Bytes up to an 8-byte boundary, then whole words, then the tail.
                    let mut i = 0usize;
                    while i < buf.len() {
                        let at = a + i as u64;
                        if at % 8 == 0 && buf.len() - i >= 8 {
                            let w = AtomicU64::from_ptr(at as *mut u64).load(Ordering::Acquire);
                            buf[i..i + 8].copy_from_slice(&w.to_ne_bytes());
                            i += 8;
                        } else {
                            buf[i] = AtomicU8::from_ptr(at as *mut u8).load(Ordering::Acquire);
                            i += 1;
                        }
                    }
                }
            }
        }
        true
    }

    /// Stores `data` at `off`; false (nothing written) if the range is outside.
    pub fn store(&self, off: u64, data: &[u8]) -> bool {
        let Some(a) = self.range(off, data.len()) else {
            return false;
        };
        let word = |n: usize| {
            let mut w = [0u8; 8];
            w[..n].copy_from_slice(data);
            w
        };
        // SAFETY: as in `load`: inside the mapping, aligned for each atomic type used.
        unsafe {
            match data.len() {
                8 if a % 8 == 0 => AtomicU64::from_ptr(a as *mut u64)
                    .store(u64::from_ne_bytes(word(8)), Ordering::Release),
                4 if a % 4 == 0 => {
                    let w = word(4);
                    AtomicU32::from_ptr(a as *mut u32).store(
                        u32::from_ne_bytes([w[0], w[1], w[2], w[3]]),
                        Ordering::Release,
                    )
                }
                2 if a % 2 == 0 => AtomicU16::from_ptr(a as *mut u16)
                    .store(u16::from_ne_bytes([data[0], data[1]]), Ordering::Release),
                _ => {
                    let mut i = 0usize;
                    while i < data.len() {
                        let at = a + i as u64;
                        if at % 8 == 0 && data.len() - i >= 8 {
                            let mut w = [0u8; 8];
                            w.copy_from_slice(&data[i..i + 8]);
                            AtomicU64::from_ptr(at as *mut u64)
                                .store(u64::from_ne_bytes(w), Ordering::Release);
                            i += 8;
                        } else {
                            AtomicU8::from_ptr(at as *mut u8).store(data[i], Ordering::Release);
                            i += 1;
                        }
                    }
                }
            }
        }
        true
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: the mapping is this value's own; no reference into it outlives `self`.
        let _ = unsafe { sys::munmap(self.addr, self.len) };
        let fd = self.fd();
        if fd >= 0 {
            sys::close(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_of_one_file_see_each_others_stores() {
        let a = SharedMem::create(c"shm-test", 8192).unwrap();
        let b = SharedMem::map(sys::dup_cloexec(a.fd()).unwrap(), 8192).unwrap();
        assert!(a.store(8, &0x1122_3344_5566_7788u64.to_le_bytes()));
        let mut w = [0u8; 8];
        assert!(b.load(8, &mut w));
        assert_eq!(u64::from_le_bytes(w), 0x1122_3344_5566_7788);
        assert!(b.store(0x1001, &[1, 2, 3]), "unaligned, odd length");
        let mut x = [0u8; 5];
        assert!(a.load(0x1000, &mut x));
        assert_eq!(x, [0, 1, 2, 3, 0]);
        assert!(!a.store(8190, &[0; 4]), "past the end: refused");
        assert!(
            !a.load(u64::MAX, &mut [0; 1]),
            "overflowing offset: refused"
        );
        assert!(SharedMem::map(sys::dup_cloexec(a.fd()).unwrap(), 8193).is_err());
    }
}
