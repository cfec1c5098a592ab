//! I/O on emulated fds: `ioctl` (through the broker), and the read/write family on device
//! fds (BAR0 from the shared register image or the broker, BAR2 from its memory file).

use super::*;

/// A copy of the memory an ioctl argument points to, for the broker to read the argument
/// without calling back: the `argsz` the struct starts with (at most a page), never past the
/// end of the page `arg` is in (which is readable if its first bytes are). Nothing for an
/// integer argument or unreadable memory; the broker then asks for what it needs.
pub(super) fn read_ahead(arg: u64) -> Vec<u8> {
    if arg < PAGE_SIZE {
        return Vec::new();
    }
    let mut head = [0u8; 4];
    if type1_host::sys::read_user(arg, &mut head).is_err() {
        return Vec::new();
    }
    let argsz = u64::from(u32::from_le_bytes(head)).clamp(4, PAGE_SIZE);
    let n = argsz.min(PAGE_SIZE - arg % PAGE_SIZE) as usize;
    let mut v = vec![0u8; n];
    match type1_host::sys::read_user(arg, &mut v) {
        Ok(()) => v,
        Err(_) => head.to_vec(),
    }
}

/// The ioctl type of every VFIO request (`VFIO_TYPE`, `';'`).
pub(super) const VFIO_TYPE: u64 = b';' as u64;

/// Interposed `ioctl` (fixed arity: one pointer-sized argument).
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    // c_ulong is u64 here but u32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let req64 = u64::from(req);
    // Only a VFIO request makes an fd this process has not seen worth asking about.
    let vfio = (req64 >> 8) & 0xff == VFIO_TYPE;
    let emulated = on_emulated(fd, vfio, |obj| {
        let pre = read_ahead(arg as u64);
        let req = Request::Ioctl {
            obj: Obj::from(obj),
            req: req64,
            arg: arg as u64,
            pre: arg as u64,
        };
        let r = client::request(req, &pre, &[])?;
        let Msg::Done(v, writes) = r.msg else {
            return Err(Errno::EIO);
        };
        // The ioctl's copies to user memory, in order.
        let mut at = 0usize;
        for (addr, len) in writes {
            let data = r.payload.get(at..at + len as usize).ok_or(Errno::EIO)?;
            type1_host::sys::write_user(addr, data).map_err(|_| Errno::EFAULT)?;
            at += len as usize;
        }
        if v < 0 {
            return Err(Errno(-v as i32));
        }
        if req64 == type1_uapi::nr::VFIO_GROUP_GET_DEVICE_FD {
            // The device's shared register image is mapped now, not at the first register
            // access: a mapping made later could land in a hole the program has just
            // unmapped and is about to map again with MAP_FIXED.
            if let Some(Object::Device(d)) = state::object_of(v as i32) {
                let _ = state::device_regs(d);
            }
        }
        Ok(v)
    });
    match emulated {
        Some(Ok(v)) => v as c_int,
        Some(Err(e)) => {
            set_errno(e);
            -1
        }
        None => match real!(
            "ioctl",
            unsafe extern "C" fn(c_int, c_ulong, *mut c_void) -> c_int
        ) {
            // SAFETY: the real function with the caller's arguments.
            Some(f) => unsafe { f(fd, req, arg) },
            None => enosys(-1),
        },
    }
}

/// Device region access; EINVAL on a container or group fd (the kernel has no read for them).
pub(super) fn emulated_rw(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    off: OffT,
    write: bool,
) -> Option<isize> {
    emulated_io(fd, &[(buf as u64, count)], Some(off), write)
}

/// `read`/`write` and their vector and positioned forms on an emulated fd (`None`: not
/// emulated): EINVAL on a container or group (their files have no read or write); on a device
/// the region the offset falls in answers, at `off` or (`None`) at the file's position, which
/// then advances. Segments are done in order and a short transfer ends the call, as the kernel
/// does for a file without vector operations.
pub(super) fn emulated_io(
    fd: c_int,
    segs: &[(u64, usize)],
    off: Option<OffT>,
    write: bool,
) -> Option<isize> {
    // A register access at an offset: from the shared image, without a lock, a request or a
    // signal mask (re-entrant: a signal handler's access in the middle of another works).
    if let (Some(o), [(buf, len)]) = (off, segs) {
        if let (Ok(pos), Some(regs)) = (u64::try_from(o), state::fast_regs(fd)) {
            let saved = errno();
            let r = bar0_access(&regs, pos, *buf, *len, write);
            set_errno(saved);
            if let Ok(Some(n)) = r {
                return Some(n as isize);
            }
        }
    }
    let r = on_emulated(fd, false, |obj| {
        let Object::Device(dev) = obj else {
            return Err(Errno::EINVAL);
        };
        let mut pos = match off {
            Some(o) => Some(u64::try_from(o).map_err(|_| Errno::EINVAL)?),
            None => None,
        };
        let file = match pos {
            Some(_) => 0,
            None => type1_host::sock::socket_inode(fd).ok_or(Errno::EBADF)?,
        };
        let mut done = 0usize;
        for &(buf, len) in segs {
            let mut at = 0usize;
            while at < len {
                let want = (len - at).min(type1_broker::wire::MAX_COPY);
                let n = match device_chunk(dev, file, pos, buf + at as u64, want, write) {
                    Ok(n) => n,
                    Err(e) if done == 0 => return Err(e),
                    Err(_) => return Ok(done as isize),
                };
                done += n;
                at += n;
                if let Some(p) = pos.as_mut() {
                    *p += n as u64;
                }
                if n < want {
                    return Ok(done as isize);
                }
            }
        }
        Ok(done as isize)
    })?;
    Some(match r {
        Ok(n) => n,
        Err(e) => {
            set_errno(e);
            -1
        }
    })
}

/// One transfer of at most `MAX_COPY` bytes with device `dev`: BAR2 at an explicit offset
/// straight through the device's memory file, everything else by the broker.
pub(super) fn device_chunk(
    dev: u32,
    file: u64,
    pos: Option<u64>,
    buf: u64,
    len: usize,
    write: bool,
) -> Result<usize, Errno> {
    if let Some(bar_off) = pos.and_then(bar2_offset) {
        let (_, _, bar) = state::device_info(dev)?;
        if bar < 0 {
            // No BAR2 (an NVMe controller): an absent region.
            return Err(Errno::EINVAL);
        }
        return bar2_rw(bar, buf as *mut c_void, len, bar_off, write).map(|n| n as usize);
    }
    if let Some(n) = pos.and_then(|p| bar0_local(dev, p, buf, len, write).transpose()) {
        return n;
    }
    let mut tmp = vec![0u8; if write { len } else { 0 }];
    if write {
        type1_host::sys::read_user(buf, &mut tmp)?;
    }
    let req = Request::DeviceRw {
        dev,
        pos,
        file,
        len: len as u32,
        write,
    };
    let r = client::request(req, &tmp, &[])?;
    match r.msg {
        Msg::Value(n) if write => Ok(n as usize),
        Msg::Data if !write => {
            type1_host::sys::write_user(buf, &r.payload)?;
            Ok(r.payload.len())
        }
        _ => Err(Errno::EIO),
    }
}

/// A BAR0 access at an explicit offset answered from the device's shared register image, as a
/// load or store costs on hardware: every read inside BAR0, and writes that only store a value
/// (`type1_uapi::device::plain_write`). `Ok(None)`: the broker's model must see it.
pub(super) fn bar0_local(
    dev: u32,
    pos: u64,
    buf: u64,
    len: usize,
    write: bool,
) -> Result<Option<usize>, Errno> {
    if !in_bar0(pos, len) {
        return Ok(None);
    }
    let Some(regs) = state::device_regs(dev)? else {
        return Ok(None);
    };
    bar0_access(&regs, pos, buf, len, write)
}

/// Whether `len` bytes (at least one) at `pos` lie inside BAR0's region.
fn in_bar0(pos: u64, len: usize) -> bool {
    len > 0
        && pos
            .checked_add(len as u64)
            .is_some_and(|end| end <= type1_uapi::device::BAR0_SIZE)
}

/// [`bar0_local`] on a device's image: `Ok(None)` when the model must see the access (or it
/// is not inside BAR0).
pub(super) fn bar0_access(
    regs: &type1_host::shm::SharedMem,
    pos: u64,
    buf: u64,
    len: usize,
    write: bool,
) -> Result<Option<usize>, Errno> {
    use type1_uapi::device::{is_plain, plain_write};
    if !in_bar0(pos, len) {
        return Ok(None);
    }
    // A write the model must see: decided without reading the caller's bytes.
    if write && !is_plain(pos, len) {
        return Ok(None);
    }
    let mut tmp = [0u8; 64];
    let mut big = Vec::new();
    let data: &mut [u8] = if len <= tmp.len() {
        &mut tmp[..len]
    } else {
        big.resize(len, 0);
        &mut big
    };
    if write {
        type1_host::sys::read_user(buf, data)?;
        let Some(bytes) = plain_write(pos, data) else {
            return Ok(None);
        };
        regs.store(pos, &bytes);
    } else {
        regs.load(pos, data);
        type1_host::sys::write_user(buf, data)?;
    }
    Ok(Some(len))
}

/// The segments of an `iovec` array (`None` if `iovcnt` is out of range: EINVAL).
pub(super) unsafe fn segments(iov: *const libc::iovec, iovcnt: c_int) -> Option<Vec<(u64, usize)>> {
    if !(0..=libc::UIO_MAXIOV).contains(&iovcnt) || (iov.is_null() && iovcnt > 0) {
        return None;
    }
    // SAFETY: the caller's array of `iovcnt` iovecs (readv's contract).
    let v = unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) };
    Some(v.iter().map(|i| (i.iov_base as u64, i.iov_len)).collect())
}

/// Vector I/O on an emulated fd; `None` if not emulated.
pub(super) unsafe fn emulated_iov(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: Option<OffT>,
    write: bool,
) -> Option<isize> {
    if !state::maybe_emulated(fd) {
        return None;
    }
    // SAFETY: forwarded contract of the caller.
    match unsafe { segments(iov, iovcnt) } {
        Some(segs) => emulated_io(fd, &segs, off, write),
        None => state::object_of(fd).map(|_| {
            set_errno(Errno::EINVAL);
            -1
        }),
    }
}

macro_rules! rw_hook {
    ($name:ident, $lit:literal, $buf:ty, $write:expr) => {
        /// Interposed `read`/`write`: emulated fds answer as vfio's files do.
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, buf: $buf, count: usize) -> isize {
            if state::maybe_emulated(fd) {
                if let Some(r) = emulated_io(fd, &[(buf as u64, count)], None, $write) {
                    return r;
                }
            }
            match real!($lit, unsafe extern "C" fn(c_int, $buf, usize) -> isize) {
                // SAFETY: the real function with the caller's arguments.
                Some(f) => unsafe { f(fd, buf, count) },
                None => enosys(-1),
            }
        }
    };
}
rw_hook!(read, "read", *mut c_void, false);
rw_hook!(write, "write", *const c_void, true);

/// Interposed fortified `read`.
#[no_mangle]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    buflen: usize,
) -> isize {
    if state::maybe_emulated(fd) {
        if let Some(r) = emulated_io(fd, &[(buf as u64, count.min(buflen))], None, false) {
            return r;
        }
    }
    match real!(
        "__read_chk",
        unsafe extern "C" fn(c_int, *mut c_void, usize, usize) -> isize
    ) {
        // SAFETY: the real function with the caller's arguments.
        Some(f) => unsafe { f(fd, buf, count, buflen) },
        None => enosys(-1),
    }
}

macro_rules! iov_hook {
    ($name:ident, $lit:literal, $write:expr) => {
        /// Interposed `readv`/`writev`.
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> isize {
            // SAFETY: forwarded contract of the caller.
            if let Some(r) = unsafe { emulated_iov(fd, iov, iovcnt, None, $write) } {
                return r;
            }
            match real!(
                $lit,
                unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> isize
            ) {
                // SAFETY: the real function with the caller's arguments.
                Some(f) => unsafe { f(fd, iov, iovcnt) },
                None => enosys(-1),
            }
        }
    };
}
iov_hook!(readv, "readv", false);
iov_hook!(writev, "writev", true);

macro_rules! piov_hook {
    ($name:ident, $lit:literal, $write:expr) => {
        /// Interposed `preadv`/`pwritev`.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            iov: *const libc::iovec,
            iovcnt: c_int,
            off: OffT,
        ) -> isize {
            // SAFETY: forwarded contract of the caller.
            if let Some(r) = unsafe { emulated_iov(fd, iov, iovcnt, Some(off), $write) } {
                return r;
            }
            match real!(
                $lit,
                unsafe extern "C" fn(c_int, *const libc::iovec, c_int, OffT) -> isize
            ) {
                // SAFETY: the real function with the caller's arguments.
                Some(f) => unsafe { f(fd, iov, iovcnt, off) },
                None => enosys(-1),
            }
        }
    };
}
piov_hook!(preadv, "preadv", false);
piov_hook!(preadv64, "preadv64", false);
piov_hook!(pwritev, "pwritev", true);
piov_hook!(pwritev64, "pwritev64", true);

macro_rules! piov2_hook {
    ($name:ident, $lit:literal, $write:expr) => {
        /// Interposed `preadv2`/`pwritev2` (offset -1: the file position; flags ignored, as
        /// vfio's files have no vector operations to take them).
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            iov: *const libc::iovec,
            iovcnt: c_int,
            off: OffT,
            flags: c_int,
        ) -> isize {
            let at = (off != -1).then_some(off);
            // SAFETY: forwarded contract of the caller.
            if let Some(r) = unsafe { emulated_iov(fd, iov, iovcnt, at, $write) } {
                return r;
            }
            match real!(
                $lit,
                unsafe extern "C" fn(c_int, *const libc::iovec, c_int, OffT, c_int) -> isize
            ) {
                // SAFETY: the real function with the caller's arguments.
                Some(f) => unsafe { f(fd, iov, iovcnt, off, flags) },
                None => enosys(-1),
            }
        }
    };
}
piov2_hook!(preadv2, "preadv2", false);
piov2_hook!(pwritev2, "pwritev2", true);

/// The offset inside BAR2 of device file offset `pos`, if it lies in BAR2's region.
pub(super) fn bar2_offset(pos: u64) -> Option<u64> {
    type1_broker::server::bar2_offset(pos)
}

/// BAR2 `pread`/`pwrite`: the bytes of the device's memory file (what an `mmap` of BAR2
/// shows), `fd`.
pub(super) fn bar2_rw(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    off: u64,
    write: bool,
) -> Result<isize, Errno> {
    if off >= BAR2_SIZE {
        return Ok(0);
    }
    let n = count.min((BAR2_SIZE - off) as usize);
    // SAFETY: the caller's buffer of at least `count >= n` bytes, as pread/pwrite's contract
    // says; the fd is the device's memfd.
    let r = unsafe { type1_host::sys::pread_pwrite_raw(fd, buf, n, off, write) }?;
    Ok(r as isize)
}

pub(super) type PreadFn = unsafe extern "C" fn(c_int, *mut c_void, usize, OffT) -> isize;
pub(super) type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, usize, OffT) -> isize;

macro_rules! positioned_hook {
    ($name:ident, $lit:literal, $buf:ty, $real:ty, $write:expr) => {
        #[doc = concat!("Interposed `", $lit, "`.")]
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, buf: $buf, count: usize, off: OffT) -> isize {
            if let Some(r) = emulated_rw(fd, buf as *mut c_void, count, off, $write) {
                return r;
            }
            match real!($lit, $real) {
                // SAFETY: the real function with the caller's arguments.
                Some(f) => unsafe { f(fd, buf, count, off) },
                None => enosys(-1),
            }
        }
    };
}
positioned_hook!(pread, "pread", *mut c_void, PreadFn, false);
positioned_hook!(pread64, "pread64", *mut c_void, PreadFn, false);
positioned_hook!(pwrite, "pwrite", *const c_void, PwriteFn, true);
positioned_hook!(pwrite64, "pwrite64", *const c_void, PwriteFn, true);

/// Interposed fortified `pread64`.
#[no_mangle]
pub unsafe extern "C" fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    off: OffT,
    buflen: usize,
) -> isize {
    if let Some(r) = emulated_rw(fd, buf, count.min(buflen), off, false) {
        return r;
    }
    match real!(
        "__pread64_chk",
        unsafe extern "C" fn(c_int, *mut c_void, usize, OffT, usize) -> isize
    ) {
        // SAFETY: the real function with the caller's arguments.
        Some(f) => unsafe { f(fd, buf, count, off, buflen) },
        None => enosys(-1),
    }
}

pub(super) type MmapFn =
    unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, c_int, OffT) -> *mut c_void;
