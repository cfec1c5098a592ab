//! The calling process as the uAPI layer sees it: its memory and its file descriptors.
//!
//! Every ioctl argument is a user pointer (or an integer). The layer never dereferences it: it
//! asks a [`Caller`] to copy bytes in and out, exactly like the kernel's `copy_from_user` and
//! `copy_to_user`, which fail with EFAULT rather than crash. The broker implements this trait
//! over the requesting process (reads from the argument bytes the request carries, or through
//! a callback into the process; writes sent back with the answer); scenarios' raw lines over
//! scratch memory; tests use `FakeCaller` (feature `testing`), a sparse byte store.

#[cfg(any(test, feature = "testing"))]
use std::collections::BTreeMap;

use type1_core::Errno;

use crate::Object;

/// The process issuing ioctls.
pub trait Caller {
    /// `copy_from_user`: fills `buf` from user address `addr`, or EFAULT.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// `copy_to_user`: writes `data` at user address `addr`, or EFAULT.
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno>;
    /// What the caller's fd `fd` is: `Ok(Some(obj))` for an emulated object, `Ok(None)` for an
    /// open fd of something else, EBADF when `fd` is not open.
    fn object_of_fd(&self, fd: i32) -> Result<Option<Object>, Errno>;
    /// Installs a new fd (close-on-exec, as the kernel's `O_CLOEXEC`) for `obj` and returns it.
    fn new_fd(&mut self, obj: Object) -> Result<i32, Errno>;
    /// The file behind the caller's `fd` (an eventfd for `SET_IRQS`), held from now on as
    /// the kernel's `eventfd_ctx_fdget` holds it; EBADF if `fd` is not open. Callers that
    /// cannot hand files over answer EINVAL.
    fn event_fd(&mut self, fd: i32) -> Result<std::fs::File, Errno> {
        let _ = fd;
        Err(Errno::EINVAL)
    }
}

/// Little-endian field readers over a copied-in struct.
pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

/// Little-endian `u64` at `off` (0 when out of range; callers copy in enough bytes).
pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Stores a little-endian `u32` at `off` if it fits.
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Stores a little-endian `u64` at `off` if it fits.
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Copies in `n` bytes at `addr`.
pub(crate) fn read_vec(c: &mut dyn Caller, addr: u64, n: usize) -> Result<Vec<u8>, Errno> {
    let mut v = vec![0u8; n];
    c.read(addr, &mut v)?;
    Ok(v)
}

/// `copy_struct_from_user`: the `size` bytes the user gave of a struct this kernel knows as
/// `ksize` bytes, zero-extended to `ksize`; E2BIG when the user's struct is longer and its
/// extra bytes are not all zero (read a page at a time).
pub(crate) fn read_struct(
    c: &mut dyn Caller,
    addr: u64,
    size: usize,
    ksize: usize,
) -> Result<Vec<u8>, Errno> {
    let mut v = read_vec(c, addr, size.min(ksize))?;
    v.resize(ksize, 0);
    let mut at = ksize;
    while at < size {
        let n = (size - at).min(4096);
        if read_vec(c, addr + at as u64, n)?.iter().any(|b| *b != 0) {
            return Err(Errno::E2BIG);
        }
        at += n;
    }
    Ok(v)
}

/// `strndup_user(addr, max)`: a NUL-terminated string of fewer than `max` bytes. EFAULT on a
/// fault, EINVAL when no NUL comes within `max` bytes. Reads page by page so that a string
/// ending just before an unmapped page is fine.
pub(crate) fn read_cstr(c: &mut dyn Caller, addr: u64, max: usize) -> Result<Vec<u8>, Errno> {
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < max {
        let to_page_end = PAGE - (at % PAGE);
        let n = (to_page_end as usize).min(max - out.len());
        let mut buf = vec![0u8; n];
        c.read(at, &mut buf)?;
        if let Some(z) = buf.iter().position(|b| *b == 0) {
            out.extend_from_slice(&buf[..z]);
            return Ok(out);
        }
        out.extend_from_slice(&buf);
        at = at.checked_add(n as u64).ok_or(Errno::EFAULT)?;
    }
    Err(Errno::EINVAL)
}

#[cfg(any(test, feature = "testing"))]
/// A fake process for tests: byte regions at chosen addresses (anything else faults), a
/// table of fds, and fd allocation from 3 upwards.
#[derive(Debug, Default)]
pub struct FakeCaller {
    regions: BTreeMap<u64, (Vec<u8>, bool)>,
    fds: BTreeMap<i32, Option<Object>>,
    next_fd: i32,
    files: BTreeMap<i32, std::fs::File>,
}

#[cfg(any(test, feature = "testing"))]
impl FakeCaller {
    /// Opens a new fd for `file` (what `event_fd` hands over; a pipe's writing end
    /// stands for an eventfd in tests). Returns the fd number.
    pub fn add_file(&mut self, file: std::fs::File) -> i32 {
        let fd = self.add_fd(None);
        self.files.insert(fd, file);
        fd
    }

    /// An empty process (fds 0 to 2 open, not emulated).
    pub fn new() -> FakeCaller {
        let mut c = FakeCaller {
            next_fd: 3,
            ..Default::default()
        };
        for fd in 0..3 {
            c.fds.insert(fd, None);
        }
        c
    }

    /// Maps `len` zero bytes at `addr`, writable unless `read_only`.
    pub fn map(&mut self, addr: u64, len: usize, read_only: bool) {
        self.regions.insert(addr, (vec![0; len], read_only));
    }

    /// Sets bytes at `addr` regardless of protection (test setup).
    pub fn poke(&mut self, addr: u64, data: &[u8]) {
        let (base, r) = self
            .region_mut(addr, data.len())
            .expect("poke into a mapped region");
        let off = (addr - base) as usize;
        r.0[off..off + data.len()].copy_from_slice(data);
    }

    /// Reads bytes at `addr` (test inspection).
    pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        let (base, r) = self
            .regions
            .range(..=addr)
            .next_back()
            .expect("peek into a mapped region");
        let off = (addr - base) as usize;
        r.0[off..off + len].to_vec()
    }

    /// Registers an fd of the fake process (what `open` would return).
    pub fn add_fd(&mut self, obj: Option<Object>) -> i32 {
        let fd = self.next_fd;
        self.next_fd += 1;
        self.fds.insert(fd, obj);
        fd
    }

    /// The object behind an fd.
    pub fn fd_object(&self, fd: i32) -> Option<Object> {
        self.fds.get(&fd).copied().flatten()
    }

    /// Forgets an fd.
    pub fn remove_fd(&mut self, fd: i32) {
        self.fds.remove(&fd);
    }

    fn region_mut(&mut self, addr: u64, len: usize) -> Option<(u64, &mut (Vec<u8>, bool))> {
        let (base, r) = self.regions.range_mut(..=addr).next_back()?;
        let off = addr - base;
        let end = off.checked_add(len as u64)?;
        (end <= r.0.len() as u64).then_some((*base, r))
    }
}

#[cfg(any(test, feature = "testing"))]
impl Caller for FakeCaller {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let (base, r) = self.region_mut(addr, buf.len()).ok_or(Errno::EFAULT)?;
        let off = (addr - base) as usize;
        buf.copy_from_slice(&r.0[off..off + buf.len()]);
        Ok(())
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let (base, r) = self.region_mut(addr, data.len()).ok_or(Errno::EFAULT)?;
        if r.1 {
            return Err(Errno::EFAULT);
        }
        let off = (addr - base) as usize;
        r.0[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn object_of_fd(&self, fd: i32) -> Result<Option<Object>, Errno> {
        self.fds.get(&fd).copied().ok_or(Errno::EBADF)
    }

    fn new_fd(&mut self, obj: Object) -> Result<i32, Errno> {
        Ok(self.add_fd(Some(obj)))
    }

    fn event_fd(&mut self, fd: i32) -> Result<std::fs::File, Errno> {
        let f = self.files.get(&fd).ok_or(Errno::EBADF)?;
        f.try_clone().map_err(|_| Errno::EBADF)
    }
}
