//! Raw system calls of the host platform.
//!
//! Everything here goes through `libc::syscall` rather than the libc wrappers, so that the
//! LD_PRELOAD library (which interposes `open`, `pread`, `close`, ...) never sees its own
//! internal I/O and cannot recurse into its hooks or deadlock on its tables.

use type1_core::Errno;

/// The calling thread's errno after a failed system call.
pub fn errno() -> Errno {
    Errno(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// A raw system call's result: the value, or the errno when negative.
pub(crate) fn check(r: libc::c_long) -> Result<libc::c_long, Errno> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `openat(AT_FDCWD, path, O_RDONLY|O_CLOEXEC)`.
pub fn open_ro(path: &std::ffi::CStr) -> Result<i32, Errno> {
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
            0,
        )
    };
    check(r).map(|fd| fd as i32)
}

/// `openat(AT_FDCWD, path, flags, mode)`.
pub fn open(path: &std::ffi::CStr, flags: i32, mode: u32) -> Result<i32, Errno> {
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags, mode) };
    check(r).map(|fd| fd as i32)
}

/// `close(fd)` (and `fd` is no longer [`crate::fds::internal`]).
pub fn close(fd: i32) {
    crate::fds::set_internal(fd, false);
    // SAFETY: closing a descriptor has no memory-safety preconditions.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// `pread64(fd, buf, off)`; returns the bytes read.
pub fn pread(fd: i32, buf: &mut [u8], off: u64) -> Result<usize, Errno> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pread64,
            fd,
            buf.as_mut_ptr(),
            buf.len(),
            off as libc::off_t,
        )
    };
    check(r).map(|n| n as usize)
}

/// CPUs this thread may run on (`sched_getaffinity`, one raw call, no file read: safe in a
/// forked child and in a signal handler); 1 if unknown.
pub fn cpus_allowed() -> usize {
    let mut set = [0u64; 16];
    // SAFETY: `set` is a valid buffer of its own size for the kernel's CPU mask.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            0,
            std::mem::size_of_val(&set),
            set.as_mut_ptr(),
        )
    };
    if r <= 0 {
        return 1;
    }
    let words = (r as usize / 8).min(set.len());
    set[..words]
        .iter()
        .map(|w| w.count_ones() as usize)
        .sum::<usize>()
        .max(1)
}

/// Random bytes from the kernel (`getrandom`): for names and identities nobody can predict.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: `b` is valid for writes of 8 bytes.
    let r = unsafe { libc::syscall(libc::SYS_getrandom, b.as_mut_ptr(), 8usize, 0) };
    if r == 8 {
        u64::from_ne_bytes(b)
    } else {
        // No getrandom: the clock and the pid, unique if not secret.
        monotonic_ns() ^ (u64::from(getpid() as u32) << 40)
    }
}

/// `read(fd, buf)`; returns the bytes read.
pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let r = unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) };
    check(r).map(|n| n as usize)
}

/// A pipe, both ends non-blocking and close-on-exec: `(read end, write end)`.
pub fn pipe_nonblock() -> Result<(i32, i32), Errno> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid out-parameter for two descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pipe2,
            fds.as_mut_ptr(),
            libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    check(r).map(|_| (fds[0], fds[1]))
}

/// `write(fd, data)`, all of it (retrying short writes).
pub fn write_all(fd: i32, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for reads of `data.len()` bytes.
        let r = unsafe { libc::syscall(libc::SYS_write, fd, data.as_ptr(), data.len()) };
        let n = check(r)? as usize;
        data = &data[n.min(data.len())..];
    }
    Ok(())
}

/// The calling process's real user id.
pub fn getuid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// The calling process's id.
pub fn getpid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_getpid) as i32 }
}

/// `madvise(addr, len, advice)` on user addresses; the kernel validates the range.
pub fn madvise(addr: u64, len: u64, advice: i32) -> Result<(), Errno> {
    // SAFETY: madvise with POPULATE/HUGEPAGE advice never invalidates memory the program uses;
    // a bad range is reported as an error by the kernel.
    let r = unsafe { libc::syscall(libc::SYS_madvise, addr, len, advice) };
    check(r).map(|_| ())
}

/// `mlock(addr, len)`.
pub fn mlock(addr: u64, len: u64) -> Result<(), Errno> {
    // SAFETY: mlock only changes residency of existing mappings; bad ranges are errors.
    let r = unsafe { libc::syscall(libc::SYS_mlock, addr, len) };
    check(r).map(|_| ())
}

/// `munlock(addr, len)`.
pub fn munlock(addr: u64, len: u64) {
    // SAFETY: munlock only changes residency of existing mappings; bad ranges are errors.
    unsafe { libc::syscall(libc::SYS_munlock, addr, len) };
}

fn vm_rw(addr: u64, local: *mut libc::c_void, len: usize, write: bool) -> Result<(), Errno> {
    let nr = if write {
        libc::SYS_process_vm_writev
    } else {
        libc::SYS_process_vm_readv
    };
    let mut done = 0usize;
    // The kernel may transfer less than asked (it pins the remote pages in batches and can
    // stop early, e.g. at a page not yet faulted in); go on from where it stopped.
    while done < len {
        let liov = libc::iovec {
            iov_base: local.wrapping_byte_add(done),
            iov_len: len - done,
        };
        let riov = libc::iovec {
            iov_base: (addr + done as u64) as *mut libc::c_void,
            iov_len: len - done,
        };
        // SAFETY: the local iovec describes the rest of a buffer owned by the caller and valid
        // for `len` bytes; the remote iovec is checked by the kernel, which reports a bad
        // address as an error instead of faulting.
        let r = unsafe {
            libc::syscall(
                nr,
                getpid(),
                &liov as *const libc::iovec,
                1usize,
                &riov as *const libc::iovec,
                1usize,
                0usize, // unsigned long flags: pass full width through the variadic call
            )
        };
        match check(r) {
            Ok(n) if n > 0 => done += n as usize,
            // Nothing transferred, or an error: a fault of the user range.
            _ => return Err(Errno::EFAULT),
        }
    }
    Ok(())
}

/// `copy_from_user` on this process: EFAULT for any unreadable byte, never a crash.
pub fn read_user(addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    vm_rw(addr, buf.as_mut_ptr().cast(), buf.len(), false)
}

/// `copy_to_user` on this process: EFAULT for any unwritable byte (including read-only
/// memory), never a crash.
pub fn write_user(addr: u64, data: &[u8]) -> Result<(), Errno> {
    vm_rw(addr, data.as_ptr() as *mut libc::c_void, data.len(), true)
}

/// `CAP_IPC_LOCK` (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`; version 3 uses two of them (capabilities 0-31, 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's capability sets (`capget`), or `None` if the call failed.
fn capget() -> Option<(CapHeader, [CapData; 2])> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a valid header and the two-element data array _LINUX_CAPABILITY_VERSION_3
    // requires; the kernel writes only into `data`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    (r == 0).then_some((hdr, data))
}

/// Whether the calling thread has CAP_IPC_LOCK in its effective set (`capget`).
pub fn has_cap_ipc_lock() -> bool {
    capget().is_some_and(|(_, d)| d[0].effective & (1 << CAP_IPC_LOCK) != 0)
}

/// Drops CAP_IPC_LOCK from the calling thread's effective and permitted sets (`capset`), so that
/// RLIMIT_MEMLOCK applies to it from now on. Irreversible for the thread.
pub fn drop_cap_ipc_lock() -> Result<(), Errno> {
    let (mut hdr, mut data) = capget().ok_or_else(errno)?;
    data[0].effective &= !(1 << CAP_IPC_LOCK);
    data[0].permitted &= !(1 << CAP_IPC_LOCK);
    // SAFETY: the header and data array just filled by capget; capset only changes this
    // thread's credentials.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// RLIMIT_MEMLOCK (soft) in pages; `u64::MAX` for infinity.
pub fn memlock_limit_pages() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid out-parameter.
    let r = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            libc::RLIMIT_MEMLOCK,
            std::ptr::null::<libc::rlimit>(),
            &mut rl,
        )
    };
    if r != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    rl.rlim_cur >> 12
}

/// An anonymous private mapping owned by this value (unmapped on drop), for tests and DMA
/// buffers. Its contents are only reachable through [`read_user`]/[`write_user`] or raw
/// pointers the user takes responsibility for.
#[derive(Debug)]
pub struct AnonMap {
    addr: u64,
    len: u64,
}

impl AnonMap {
    /// Maps `len` bytes (rounded up to pages), readable and writable unless `read_only`.
    pub fn new(len: u64, read_only: bool) -> Result<AnonMap, Errno> {
        let len = len.div_ceil(4096) * 4096;
        let prot = if read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address aliases nothing.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mmap,
                0usize,
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0i64,
            )
        };
        let addr = check(r)? as u64;
        Ok(AnonMap { addr, len })
    }

    /// Maps `len` bytes aligned to `align` (a power of two), by over-allocating and trimming.
    pub fn aligned(len: u64, align: u64) -> Result<AnonMap, Errno> {
        let big = AnonMap::new(len + align, false)?;
        let start = (big.addr + align - 1) & !(align - 1);
        let (head, tail_start) = (start - big.addr, start + len.div_ceil(4096) * 4096);
        let tail = big.addr + big.len - tail_start;
        let (base, total) = (big.addr, big.len);
        std::mem::forget(big);
        // SAFETY: trimming pieces of the mapping just created, which nothing else uses.
        unsafe {
            if head > 0 {
                libc::syscall(libc::SYS_munmap, base, head);
            }
            if tail > 0 {
                libc::syscall(libc::SYS_munmap, tail_start, tail);
            }
        }
        let _ = total;
        Ok(AnonMap {
            addr: start,
            len: len.div_ceil(4096) * 4096,
        })
    }

    /// First address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the mapping is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this value; nobody holds references into it.
        unsafe { libc::syscall(libc::SYS_munmap, self.addr, self.len) };
    }
}

/// `pwrite64(fd, data, off)`; returns the bytes written.
pub fn pwrite(fd: i32, data: &[u8], off: u64) -> Result<usize, Errno> {
    // SAFETY: `data` is valid for reads of `data.len()` bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pwrite64,
            fd,
            data.as_ptr(),
            data.len(),
            off as libc::off_t,
        )
    };
    check(r).map(|n| n as usize)
}

/// `memfd_create(name, MFD_CLOEXEC if cloexec)`.
pub fn memfd(name: &std::ffi::CStr, cloexec: bool) -> Result<i32, Errno> {
    let flags = if cloexec { libc::MFD_CLOEXEC } else { 0 };
    // SAFETY: `name` is a valid NUL-terminated string.
    let r = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), flags) };
    check(r).map(|fd| fd as i32)
}

/// `munmap(addr, len)`.
///
/// # Safety
/// Nothing may use the range afterwards (the caller owns it).
pub unsafe fn munmap(addr: u64, len: u64) -> Result<(), Errno> {
    // SAFETY: per this function's contract.
    let r = unsafe { libc::syscall(libc::SYS_munmap, addr, len) };
    check(r).map(|_| ())
}

/// `mmap(addr, len, PROT_READ|PROT_WRITE, flags, fd, off)`: a new mapping; with `MAP_FIXED`
/// in `flags` it replaces what was at `addr`.
///
/// # Safety
/// With `MAP_FIXED`, nothing may use what was mapped at `[addr, addr + len)` before.
pub unsafe fn mmap_rw(addr: u64, len: u64, flags: i32, fd: i32, off: u64) -> Result<u64, Errno> {
    // SAFETY: per this function's contract.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            addr,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            off,
        )
    };
    check(r).map(|a| a as u64)
}

/// `fstat(fd)`.
fn fstat(fd: i32) -> Result<libc::stat, Errno> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-parameter for fstat.
    let r = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    check(r)?;
    Ok(st)
}

/// `(st_dev, st_ino, st_size)` of an open file (`fstat`).
pub fn fstat_id(fd: i32) -> Result<(u64, u64, u64), Errno> {
    fstat(fd).map(|st| (st.st_dev, st.st_ino, st.st_size as u64))
}

/// `(st_mode, st_uid)` of an open file (`fstat`).
pub fn fstat_mode(fd: i32) -> Result<(u32, u32), Errno> {
    fstat(fd).map(|st| (st.st_mode, st.st_uid))
}

/// The calling process's effective user id.
pub fn geteuid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_geteuid) as u32 }
}

/// Opens `path` read-only for a configuration or trace read: never blocks in `open` (a FIFO
/// there would hang the program), never follows a last-component symlink, and refuses
/// anything but a regular file (EINVAL).
pub fn open_regular_ro(path: &std::ffi::CStr) -> Result<i32, Errno> {
    let fd = open(
        path,
        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOFOLLOW,
        0,
    )?;
    match fstat_mode(fd) {
        Ok((mode, _)) if mode & libc::S_IFMT == libc::S_IFREG => Ok(fd),
        Ok(_) => {
            close(fd);
            Err(Errno::EINVAL)
        }
        Err(e) => {
            close(fd);
            Err(e)
        }
    }
}

/// Whether every page of `[addr, addr + len)` lies in a mapping of this process (`mincore`
/// fails with ENOMEM on a hole), so that touching or flushing it cannot raise SIGSEGV.
pub fn mapped(addr: u64, len: u64) -> bool {
    let mut vec = vec![0u8; len.div_ceil(4096) as usize];
    // SAFETY: `vec` has one byte per page of the range, as mincore requires; the kernel checks
    // the range itself.
    let r = unsafe { libc::syscall(libc::SYS_mincore, addr, len, vec.as_mut_ptr()) };
    r == 0
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: i32, mode: u32) -> Result<(), Errno> {
    // SAFETY: fchmod has no memory-safety preconditions.
    check(unsafe { libc::syscall(libc::SYS_fchmod, fd, mode) }).map(|_| ())
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: i32, len: u64) -> Result<(), Errno> {
    // SAFETY: ftruncate has no memory-safety preconditions.
    let r = unsafe { libc::syscall(libc::SYS_ftruncate, fd, len as libc::off_t) };
    check(r).map(|_| ())
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, 0)`: a close-on-exec duplicate.
pub fn dup_cloexec(fd: i32) -> Result<i32, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor.
    let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_DUPFD_CLOEXEC, 0) };
    check(r).map(|fd| fd as i32)
}

/// Closes every descriptor from `first` on (`close_range`).
pub fn close_from(first: u32) {
    // SAFETY: close_range only closes descriptors.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

/// Becomes a daemon: forks, the parent exits at once (so that whoever spawned it can reap it
/// right away), the child leaves the session. Call before any thread is started.
pub fn daemonize() -> Result<(), Errno> {
    // SAFETY: the process is single-threaded here (this function's contract), so the child
    // may go on running ordinary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(errno());
    }
    if pid > 0 {
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: setsid has no memory-safety preconditions.
    unsafe { libc::setsid() };
    Ok(())
}

/// Whether `path` names an executable file (`faccessat(X_OK)`).
pub fn executable(path: &std::ffi::CStr) -> bool {
    // SAFETY: `path` is a valid NUL-terminated string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_faccessat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::X_OK,
        )
    };
    r == 0
}

/// `mkdirat(AT_FDCWD, path, mode)`.
pub fn mkdir(path: &std::ffi::CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: `path` is a valid NUL-terminated string.
    let r = unsafe { libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, path.as_ptr(), mode) };
    check(r).map(|_| ())
}

/// The path an open fd refers to (`/proc/self/fd/N`).
pub fn fd_path(fd: i32) -> Option<String> {
    let link = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is writable for its length; `link` is NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_readlinkat,
            libc::AT_FDCWD,
            link.as_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    let n = check(r).ok()? as usize;
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// The working directory.
pub fn cwd() -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is writable for its length.
    let r = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    let n = check(r).ok()? as usize;
    let s = &buf[..n.saturating_sub(1)]; // without the NUL
    String::from_utf8(s.to_vec()).ok()
}

/// `pidfd_open(pid, 0)`: a handle on a process that stays valid (and names no other process)
/// after it exits.
pub fn pidfd_open(pid: i32) -> Result<i32, Errno> {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    check(r).map(|fd| fd as i32)
}

/// `pidfd_getfd(pidfd, fd, 0)`: a duplicate of another process's fd (close-on-exec). Needs
/// the right to ptrace it (same user, not made undumpable, no stricter Yama policy).
pub fn pidfd_getfd(pidfd: i32, fd: i32) -> Result<i32, Errno> {
    // SAFETY: pidfd_getfd only creates a descriptor.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
    check(r).map(|fd| fd as i32)
}

/// Whether the process runs in secure-execution mode (`getauxval(AT_SECURE)`: setuid, setgid
/// or file capabilities), in which its environment is not to be trusted.
pub fn secure_execution() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// `secure_getenv`: an environment variable, or nothing in secure-execution mode.
pub fn secure_var(name: &str) -> Option<std::ffi::OsString> {
    if secure_execution() {
        return None;
    }
    std::env::var_os(name)
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the machine, so that the
/// trace lines of several processes (and of the broker) can be put on one timeline.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Takes ownership of `fd` (just received, referred to by nothing else) as a `File`, closed
/// when dropped.
pub fn own(fd: i32) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller hands over an open descriptor that nothing else owns or closes.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

/// `close_range(first, last, flags)`.
pub fn close_range(first: u32, last: u32, flags: u32) -> Result<(), Errno> {
    // SAFETY: close_range only closes (or marks close-on-exec) descriptors.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) }).map(|_| ())
}

/// `pread64`/`pwrite64` (`write`) of `n` bytes at `buf`, at `off` in `fd`: the bytes moved.
///
/// # Safety
/// `buf` must be valid for `n` bytes: writable for a read, readable for a write.
pub unsafe fn pread_pwrite_raw(
    fd: i32,
    buf: *mut libc::c_void,
    n: usize,
    off: u64,
    write: bool,
) -> Result<usize, Errno> {
    let nr = if write {
        libc::SYS_pwrite64
    } else {
        libc::SYS_pread64
    };
    // SAFETY: the buffer is valid for `n` bytes, per this function's contract; the kernel
    // checks the fd and the offset.
    let r = unsafe { libc::syscall(nr, fd, buf, n, off as libc::off_t) };
    check(r).map(|n| n as usize)
}

/// Whether `fd` is open (`fcntl(F_GETFD)` succeeds).
pub fn fd_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) >= 0 }
}

/// `wait4(pid, &status, 0, NULL)`: waits for a child of this process to exit; its status.
pub fn wait_child(pid: i32) -> Result<i32, Errno> {
    let mut status = 0i32;
    // SAFETY: wait4 writes the status word, which lives across the call; no rusage is asked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_wait4,
            pid,
            &mut status as *mut i32,
            0,
            std::ptr::null_mut::<libc::rusage>(),
        )
    };
    check(r).map(|_| status)
}

/// `fdatasync(fd)`: the file's data (and what is needed to read it back) reaches the disk.
pub fn fdatasync(fd: i32) -> Result<(), Errno> {
    // SAFETY: fdatasync has no memory-safety preconditions.
    check(unsafe { libc::syscall(libc::SYS_fdatasync, fd) }).map(|_| ())
}

/// The capacity of the pipe `fd` in bytes (`F_GETPIPE_SZ`).
pub fn pipe_capacity(fd: i32) -> Result<usize, Errno> {
    // SAFETY: F_GETPIPE_SZ only queries the pipe.
    check(unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETPIPE_SZ) }).map(|n| n as usize)
}
