//! The interposed libc symbols.
//!
//! Each hook decides whether its path or fd is emulated; if not (or when called from inside
//! the emulation, see `state::guarded`), it calls the next definition of the symbol
//! (`dlsym(RTLD_NEXT)`). Variadic C prototypes (`open`, `ioctl`) are defined with fixed arity,
//! which the x86-64 SysV calling convention makes equivalent for the argument counts used.

#![allow(clippy::missing_safety_doc)] // Safety contracts are libc's, documented by glibc.

use crate::files::Looks;
use std::{
    ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr, CString},
    sync::atomic::{AtomicUsize, Ordering},
};

use type1_core::{Errno, MemType, PAGE_SIZE};
use type1_uapi::{device::BAR2_SIZE, Object};

use crate::client;
use crate::state::{self, guarded, SYSFS_PCI};
use type1_broker::machine::Machine;
use type1_broker::wire::{Msg, Obj, Request};

type OffT = libc::off_t;

/// This thread's errno.
fn errno() -> Errno {
    // SAFETY: __errno_location returns this thread's errno slot.
    Errno(unsafe { *libc::__errno_location() })
}

fn set_errno(e: Errno) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e.0 };
}

/// Resolves (once) and returns the next definition of a symbol.
macro_rules! real {
    ($name:literal, $ty:ty) => {{
        static P: AtomicUsize = AtomicUsize::new(0);
        let mut p = P.load(Ordering::Relaxed);
        if p == 0 {
            // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds the definition after ours.
            p = unsafe { libc::dlsym(libc::RTLD_NEXT, concat!($name, "\0").as_ptr().cast()) }
                as usize;
            P.store(p, Ordering::Relaxed);
        }
        if p == 0 {
            None
        } else {
            // SAFETY: the symbol named `$name` has the C prototype `$ty` in glibc.
            Some(unsafe { std::mem::transmute::<usize, $ty>(p) })
        }
    }};
}

/// What a path names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Container,
    Group(u32),
    /// Under an emulated prefix but nothing there: ENOENT.
    Missing,
    /// `/sys/bus/pci/devices/<bdf>`.
    SysDev(String),
    /// `/sys/bus/pci/devices/<bdf>/iommu_group`.
    GroupLink(u32),
    /// A read-only attribute of `/sys/bus/pci/devices/<bdf>`: `vendor`, `device`, `class`,
    /// `revision`, `config` (see [`sys_attr`]).
    SysAttr(String, &'static str),
    /// `/dev/vfio` itself.
    Dir,
    /// An emulated character device named with a trailing slash: ENOTDIR.
    NotDir,
    NotOurs,
}

/// The sysfs attributes of an emulated device that can be read.
const SYS_ATTRS: [&str; 5] = ["vendor", "device", "class", "revision", "config"];

/// The contents of sysfs attribute `attr` of an emulated device, as the kernel prints them:
/// the IDs in hexadecimal with a newline, `config` the 256 bytes of a function's configuration
/// space. Every emulated device is the same function (docs/device.md), and these are its
/// values at reset: the `config` file is a copy of the reset state, not a live view of one
/// device's registers (COMMAND, the MSI enable bits), which only its owner's device fd gives.
fn sys_attr(attr: &str) -> Vec<u8> {
    let c = type1_uapi::device::PciDevice::new().config_space();
    let u16_at = |o: usize| u16::from_le_bytes([c[o], c[o + 1]]);
    match attr {
        "vendor" => format!("0x{:04x}\n", u16_at(0)).into_bytes(),
        "device" => format!("0x{:04x}\n", u16_at(2)).into_bytes(),
        "class" => format!("0x{:02x}{:02x}{:02x}\n", c[0x0b], c[0x0a], c[0x09]).into_bytes(),
        "revision" => format!("0x{:02x}\n", c[0x08]).into_bytes(),
        _ => c[..256.min(c.len())].to_vec(),
    }
}

/// Opens a sysfs attribute: a sealed-size memfd holding its contents, read-only (EACCES for
/// writing: none of these is writable to a user here).
fn open_sys_attr(attr: &str, flags: c_int) -> Result<c_int, Errno> {
    if flags & libc::O_ACCMODE != libc::O_RDONLY {
        return Err(Errno(libc::EACCES));
    }
    let fd = type1_host::sys::memfd(c"type1-sysfs", flags & libc::O_CLOEXEC != 0)?;
    let data = sys_attr(attr);
    if let Err(e) = type1_host::sys::pwrite(fd, &data, 0) {
        type1_host::sys::close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// Whether a path may name something emulated at all (cheap; most paths do not).
fn may_be_ours(path: &[u8]) -> bool {
    path.windows(4)
        .any(|w| w == b"vfio" || w == b"/sys" || w == b"sys/")
}

fn classify(m: &Machine, path: &[u8]) -> Kind {
    if !may_be_ours(path) || path.first() != Some(&b'/') {
        return Kind::NotOurs;
    }
    let Ok(p) = std::str::from_utf8(path) else {
        return Kind::NotOurs;
    };
    let (norm, trailing) = crate::files::normalise(p);
    let p = norm.as_str();
    if p == "/dev/vfio" {
        return Kind::Dir;
    }
    if let Some(rest) = p.strip_prefix("/dev/vfio/") {
        let k = if rest == "vfio" {
            Kind::Container
        } else {
            match rest.parse::<u32>() {
                Ok(n) if m.has_group(n) && !rest.starts_with('+') => Kind::Group(n),
                _ => return Kind::Missing,
            }
        };
        return if trailing { Kind::NotDir } else { k };
    }
    if let Some(rest) = p.strip_prefix(SYSFS_PCI) {
        let rest = rest.trim_end_matches('/');
        let (bdf, tail) = match rest.split_once('/') {
            Some((b, t)) => (b, Some(t)),
            None => (rest, None),
        };
        let Some(g) = m.group_of(bdf) else {
            return Kind::NotOurs;
        };
        return match tail {
            None => Kind::SysDev(bdf.to_string()),
            Some("iommu_group") => Kind::GroupLink(g),
            Some(t) => match SYS_ATTRS.iter().find(|a| **a == t) {
                Some(a) => Kind::SysAttr(bdf.to_string(), a),
                None => Kind::Missing,
            },
        };
    }
    Kind::NotOurs
}

/// What `path` names relative to `dirfd` (`AT_FDCWD`: the working directory), as `openat`
/// resolves it.
unsafe fn path_kind_at(dirfd: c_int, path: *const c_char) -> Kind {
    if path.is_null() {
        return Kind::NotOurs;
    }
    // SAFETY: a non-null path argument of an open/stat call is a NUL-terminated string.
    let p = unsafe { CStr::from_ptr(path) }.to_bytes();
    if p.first() == Some(&b'/') || p.is_empty() {
        return classify(state::machine(), p);
    }
    // A relative path: worth resolving only if it, or the directory, may be ours.
    let in_standin = dirfd >= 0
        && crate::files::have_standins()
        && crate::files::standin_of(dirfd) == Some(crate::files::Standin::Dir);
    if !in_standin && !may_be_ours(p) {
        return Kind::NotOurs;
    }
    let base = if in_standin {
        Some("/dev/vfio".to_string())
    } else if dirfd == libc::AT_FDCWD {
        type1_host::sys::cwd()
    } else {
        type1_host::sys::fd_path(dirfd)
    };
    let Some(base) = base else {
        return Kind::NotOurs;
    };
    let Ok(rel) = std::str::from_utf8(p) else {
        return Kind::NotOurs;
    };
    classify(state::machine(), format!("{base}/{rel}").as_bytes())
}

unsafe fn path_kind(path: *const c_char) -> Kind {
    // SAFETY: forwarded contract of the caller.
    unsafe { path_kind_at(libc::AT_FDCWD, path) }
}

/// Opens an emulated object; `None` if `path` (relative to `dirfd`) is not emulated.
unsafe fn emulated_open(dirfd: c_int, path: *const c_char, flags: c_int) -> Option<c_int> {
    // SAFETY: forwarded contract of the caller.
    let kind = unsafe { path_kind_at(dirfd, path) };
    // The directory, and `O_PATH` handles (the driver's `open` never runs for them): the
    // stand-in files.
    let standin = match kind {
        Kind::Dir => Some(None),
        Kind::Container if flags & libc::O_PATH != 0 => Some(Some("vfio".to_string())),
        Kind::Group(n) if flags & libc::O_PATH != 0 => Some(Some(n.to_string())),
        _ => None,
    };
    if let Some(name) = standin {
        return Some(open_standin(name.as_deref(), flags));
    }
    let saved = errno();
    let r = match kind {
        Kind::NotOurs => return None,
        Kind::Container | Kind::Group(_) => guarded(|| -> Result<c_int, Errno> {
            state::check_config()?;
            let group = match kind {
                Kind::Group(n) => Some(n),
                _ => None,
            };
            let r = client::request(Request::Open(group), &[], &[])?;
            let lost = r.fds_lost;
            let (Msg::Opened(obj), Some(&fd)) = (r.msg, r.fds.first()) else {
                for f in r.fds {
                    type1_host::sys::close(f);
                }
                // The file could not be installed: this process is at RLIMIT_NOFILE, as the
                // kernel's open would say (the broker releases the file it never got).
                return Err(Errno(if lost { libc::EMFILE } else { libc::EIO }));
            };
            if flags & libc::O_CLOEXEC == 0 {
                let _ = type1_host::sock::set_cloexec(fd, false);
            }
            state::track(fd, obj.into());
            Ok(fd)
        }),
        Kind::NotDir => Ok(Err(Errno(libc::ENOTDIR))),
        Kind::SysAttr(_, a) => Ok(open_sys_attr(a, flags)),
        // Sysfs directories and links are not opened by VFIO users.
        Kind::Missing | Kind::SysDev(_) | Kind::GroupLink(_) | Kind::Dir => Ok(Err(Errno::ENOENT)),
    };
    Some(match r {
        Ok(Ok(fd)) => {
            set_errno(saved);
            fd
        }
        Ok(Err(e)) => {
            set_errno(e);
            -1
        }
        // Re-entered or panicked: never pass an emulated path through.
        Err(_) => {
            set_errno(Errno::EIO);
            -1
        }
    })
}

/// The groups of the machine (the stand-in directory's entries).
fn group_numbers() -> Vec<u32> {
    state::machine().groups.iter().map(|g| g.id).collect()
}

/// Opens the stand-in of `/dev/vfio` (`name` `None`) or of a file in it, with `flags`.
fn open_standin(name: Option<&str>, flags: c_int) -> c_int {
    let r = guarded(|| -> Result<c_int, Errno> {
        let dir = crate::files::standin_dir(&group_numbers())?;
        let path = match name {
            None => dir,
            Some(n) => format!("{dir}/{n}"),
        };
        let c = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
        // Never creates or truncates: the stand-ins stay empty.
        let flags = flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL);
        type1_host::sys::open(&c, flags, 0)
    });
    match r {
        Ok(Ok(fd)) => fd,
        Ok(Err(e)) => {
            set_errno(e);
            -1
        }
        Err(_) => {
            set_errno(Errno::EIO);
            -1
        }
    }
}

type OpenFn = unsafe extern "C" fn(*const c_char, c_int, c_uint) -> c_int;
type Open2Fn = unsafe extern "C" fn(*const c_char, c_int) -> c_int;
type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, c_uint) -> c_int;

macro_rules! open_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `open`-family entry point.
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
            // SAFETY: forwarded contract of the caller.
            if let Some(r) = unsafe { emulated_open(libc::AT_FDCWD, path, flags) } {
                return r;
            }
            match real!($lit, OpenFn) {
                // SAFETY: the real function with the caller's arguments.
                Some(f) => unsafe { f(path, flags, mode) },
                None => {
                    set_errno(Errno(libc::ENOSYS));
                    -1
                }
            }
        }
    };
}
open_hook!(open, "open");
open_hook!(open64, "open64");

macro_rules! open2_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed fortified `open` entry point.
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int) -> c_int {
            // SAFETY: forwarded contract of the caller.
            if let Some(r) = unsafe { emulated_open(libc::AT_FDCWD, path, flags) } {
                return r;
            }
            match real!($lit, Open2Fn) {
                // SAFETY: the real function with the caller's arguments.
                Some(f) => unsafe { f(path, flags) },
                None => {
                    set_errno(Errno(libc::ENOSYS));
                    -1
                }
            }
        }
    };
}
open2_hook!(__open_2, "__open_2");
open2_hook!(__open64_2, "__open64_2");

macro_rules! openat_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `openat` entry point (paths relative to `dirfd` resolved as the kernel
        /// would, `/dev/vfio` directory fds included).
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dirfd: c_int,
            path: *const c_char,
            flags: c_int,
            mode: c_uint,
        ) -> c_int {
            // SAFETY: forwarded contract of the caller.
            if let Some(r) = unsafe { emulated_open(dirfd, path, flags) } {
                return r;
            }
            match real!($lit, OpenatFn) {
                // SAFETY: the real function with the caller's arguments.
                Some(f) => unsafe { f(dirfd, path, flags, mode) },
                None => {
                    set_errno(Errno(libc::ENOSYS));
                    -1
                }
            }
        }
    };
}
openat_hook!(openat, "openat");
openat_hook!(openat64, "openat64");

/// Interposed `close`: the last close of an emulated object, then the real close. The
/// emulation's own fds are not the program's to close: EBADF, as for an fd it never opened.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if type1_host::sys::internal(fd) {
        set_errno(Errno::EBADF);
        return -1;
    }
    let ours = state::maybe_emulated(fd) && guarded(|| state::forget(fd)).unwrap_or(false);
    let r = match real!("close", unsafe extern "C" fn(c_int) -> c_int) {
        // SAFETY: the real function with the caller's argument.
        Some(f) => unsafe { f(fd) },
        None => {
            set_errno(Errno(libc::ENOSYS));
            -1
        }
    };
    if ours {
        synced_after_close();
    }
    r
}

/// After the close of an emulated file: the broker has given it its last-close consequences
/// (if it was the last reference) before the close returns, as the kernel's release does.
/// Keeps the caller's errno.
fn synced_after_close() {
    let saved = errno();
    let _ = guarded(state::sync);
    set_errno(saved);
}

/// `close_range(first, last, flags)` that leaves the emulation's own fds open, then the last
/// close of every emulated object that loses its last fd there.
fn close_range_keeping_internal(first: u32, last: u32, flags: u32) -> Result<(), Errno> {
    let sys_close_range = |a: u32, b: u32| -> Result<(), Errno> {
        // SAFETY: close_range only closes (or marks close-on-exec) descriptors.
        let r = unsafe { libc::syscall(libc::SYS_close_range, a, b, flags) };
        if r < 0 {
            Err(Errno(
                std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EINVAL),
            ))
        } else {
            Ok(())
        }
    };
    if first > last {
        return Err(Errno::EINVAL);
    }
    if flags & libc::CLOSE_RANGE_CLOEXEC != 0 {
        // Nothing closes now; the emulation's fds are close-on-exec already.
        return sys_close_range(first, last);
    }
    // Forget the emulated fds first, as `close` does (a number closed below may be reused
    // at once by another thread).
    let hi = i32::try_from(last).unwrap_or(i32::MAX);
    let lo = i32::try_from(first).unwrap_or(i32::MAX);
    let ours = guarded(|| state::forget_range(lo, hi)).unwrap_or(false);
    let mut from = u64::from(first);
    for fd in type1_host::sys::internal_in(first, last) {
        if u64::from(fd) > from {
            sys_close_range(from as u32, fd - 1)?;
        }
        from = u64::from(fd) + 1;
    }
    let r = if from <= u64::from(last) {
        sys_close_range(from as u32, last)
    } else {
        Ok(())
    };
    if ours {
        synced_after_close();
    }
    r
}

/// Interposed `close_range`: see `close_range_keeping_internal`.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    match close_range_keeping_internal(first, last, flags as u32) {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// Interposed `closefrom`: `close_range(lowfd, ~0U, 0)`, keeping the emulation's own fds.
#[no_mangle]
pub unsafe extern "C" fn closefrom(lowfd: c_int) {
    let _ = close_range_keeping_internal(lowfd.max(0) as u32, u32::MAX, 0);
}

/// Interposed `fclose`: a stream over an emulated fd (`fdopen`) closes it, with the
/// consequences of a close.
#[no_mangle]
pub unsafe extern "C" fn fclose(stream: *mut libc::FILE) -> c_int {
    let Some(real) = real!("fclose", unsafe extern "C" fn(*mut libc::FILE) -> c_int) else {
        set_errno(Errno(libc::ENOSYS));
        return libc::EOF;
    };
    let fd = if stream.is_null() {
        -1
    } else {
        // SAFETY: `stream` is the caller's open stream (fclose's own precondition).
        unsafe { libc::fileno(stream) }
    };
    // The fd is closed whatever fclose returns: forget it first, as `close` does.
    let ours =
        fd >= 0 && state::maybe_emulated(fd) && guarded(|| state::forget(fd)).unwrap_or(false);
    // SAFETY: the real function with the caller's argument.
    let r = unsafe { real(stream) };
    if ours {
        synced_after_close();
    }
    r
}

/// Runs an operation on an emulated fd; `None` if `fd` is not emulated (or re-entered).
/// `unknown`: also ask the broker about a socket this process has not seen (an fd inherited
/// across exec or received over `SCM_RIGHTS`). A call on an emulated fd from a signal handler
/// that interrupted an emulated call on the same thread cannot run (this thread's connection
/// to the broker is mid-request) and must not reach the real file behind the fd: it fails
/// with EDEADLK.
fn on_emulated<R>(
    fd: c_int,
    unknown: bool,
    f: impl FnOnce(Object) -> Result<R, Errno>,
) -> Option<Result<R, Errno>> {
    if state::in_hook() {
        // The emulation's own code (signals are deferred during emulated calls, so a program's
        // handler never gets here while one runs on its thread).
        return state::maybe_emulated(fd).then_some(Err(Errno(libc::EDEADLK)));
    }
    let saved = errno();
    let r = state::deferring_signals(|| {
        guarded(|| {
            // A file is checked against the broker that is there now: a forked child, or a
            // process whose broker died, connects first (and finds old files stale).
            if state::maybe_emulated(fd) && client::ensure_current().is_err() {
                return Some(Err(Errno::EIO));
            }
            if state::stale(fd) {
                return Some(Err(Errno::EIO));
            }
            let obj = if unknown {
                state::object_of_unknown(fd)
            } else {
                state::object_of(fd)
            }?;
            Some(client::about_file(state::instance_of(fd), || f(obj)))
        })
        .unwrap_or(Some(Err(Errno::EIO)))
    })?;
    // A call that succeeds leaves errno alone, whatever the emulation's own calls did to it.
    set_errno(saved);
    Some(r)
}

/// A copy of the memory an ioctl argument points to, for the broker to read the argument
/// without calling back: the `argsz` the struct starts with (at most a page), never past the
/// end of the page `arg` is in (which is readable if its first bytes are). Nothing for an
/// integer argument or unreadable memory; the broker then asks for what it needs.
fn read_ahead(arg: u64) -> Vec<u8> {
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
const VFIO_TYPE: u64 = b';' as u64;

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
            None => {
                set_errno(Errno(libc::ENOSYS));
                -1
            }
        },
    }
}

/// Device region access; EINVAL on a container or group fd (the kernel has no read for them).
fn emulated_rw(fd: c_int, buf: *mut c_void, count: usize, off: OffT, write: bool) -> Option<isize> {
    emulated_io(fd, &[(buf as u64, count)], Some(off), write)
}

/// `read`/`write` and their vector and positioned forms on an emulated fd (`None`: not
/// emulated): EINVAL on a container or group (their files have no read or write); on a device
/// the region the offset falls in answers, at `off` or (`None`) at the file's position, which
/// then advances. Segments are done in order and a short transfer ends the call, as the kernel
/// does for a file without vector operations.
fn emulated_io(fd: c_int, segs: &[(u64, usize)], off: Option<OffT>, write: bool) -> Option<isize> {
    // A register access at an offset: from the shared image, without a lock, a request or a
    // signal mask (re-entrant: a signal handler's access in the middle of another works).
    if let (Some(o), [(buf, len)]) = (off, segs) {
        if let Some(regs) = u64::try_from(o).ok().and(state::fast_regs(fd)) {
            let saved = errno();
            let r = bar0_access(&regs, o as u64, *buf, *len, write);
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
fn device_chunk(
    dev: u32,
    file: u64,
    pos: Option<u64>,
    buf: u64,
    len: usize,
    write: bool,
) -> Result<usize, Errno> {
    if let Some(bar_off) = pos.and_then(bar2_offset) {
        let (_, _, bar) = state::device_info(dev)?;
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
fn bar0_local(
    dev: u32,
    pos: u64,
    buf: u64,
    len: usize,
    write: bool,
) -> Result<Option<usize>, Errno> {
    if pos
        .checked_add(len as u64)
        .is_none_or(|end| end > type1_uapi::device::BAR0_SIZE)
        || len == 0
    {
        return Ok(None);
    }
    let regs = state::device_regs(dev)?;
    bar0_access(&regs, pos, buf, len, write)
}

/// [`bar0_local`] on a device's image: `Ok(None)` when the model must see the access (or it
/// is not inside BAR0).
fn bar0_access(
    regs: &type1_host::shm::SharedMem,
    pos: u64,
    buf: u64,
    len: usize,
    write: bool,
) -> Result<Option<usize>, Errno> {
    use type1_uapi::device::{plain_write, BAR0_SIZE};
    if pos
        .checked_add(len as u64)
        .is_none_or(|end| end > BAR0_SIZE)
        || len == 0
    {
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
unsafe fn segments(iov: *const libc::iovec, iovcnt: c_int) -> Option<Vec<(u64, usize)>> {
    if !(0..=libc::UIO_MAXIOV).contains(&iovcnt) || (iov.is_null() && iovcnt > 0) {
        return None;
    }
    // SAFETY: the caller's array of `iovcnt` iovecs (readv's contract).
    let v = unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) };
    Some(v.iter().map(|i| (i.iov_base as u64, i.iov_len)).collect())
}

/// Vector I/O on an emulated fd; `None` if not emulated.
unsafe fn emulated_iov(
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
                None => {
                    set_errno(Errno(libc::ENOSYS));
                    -1
                }
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
        None => {
            set_errno(Errno(libc::ENOSYS));
            -1
        }
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
                None => {
                    set_errno(Errno(libc::ENOSYS));
                    -1
                }
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
                None => {
                    set_errno(Errno(libc::ENOSYS));
                    -1
                }
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
                None => {
                    set_errno(Errno(libc::ENOSYS));
                    -1
                }
            }
        }
    };
}
piov2_hook!(preadv2, "preadv2", false);
piov2_hook!(pwritev2, "pwritev2", true);

/// The offset inside BAR2 of device file offset `pos`, if it lies in BAR2's region.
fn bar2_offset(pos: u64) -> Option<u64> {
    type1_broker::server::bar2_offset(pos)
}

/// BAR2 `pread`/`pwrite`: the bytes of the device's memory file (what an `mmap` of BAR2
/// shows), `fd`.
fn bar2_rw(
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
    let nr = if write {
        libc::SYS_pwrite64
    } else {
        libc::SYS_pread64
    };
    // SAFETY: the caller's buffer of at least `count >= n` bytes, as pread/pwrite's contract
    // says; the fd is the device's memfd and `off` is inside it.
    let r = unsafe { libc::syscall(nr, fd, buf, n, off as libc::off_t) };
    if r < 0 {
        return Err(Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ));
    }
    Ok(r as isize)
}

type PreadFn = unsafe extern "C" fn(c_int, *mut c_void, usize, OffT) -> isize;
type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, usize, OffT) -> isize;

macro_rules! pread_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `pread`.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            buf: *mut c_void,
            count: usize,
            off: OffT,
        ) -> isize {
            if let Some(r) = emulated_rw(fd, buf, count, off, false) {
                return r;
            }
            match real!($lit, PreadFn) {
                // SAFETY: the real function with the caller's arguments.
                Some(f) => unsafe { f(fd, buf, count, off) },
                None => {
                    set_errno(Errno(libc::ENOSYS));
                    -1
                }
            }
        }
    };
}
pread_hook!(pread, "pread");
pread_hook!(pread64, "pread64");

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
        None => {
            set_errno(Errno(libc::ENOSYS));
            -1
        }
    }
}

macro_rules! pwrite_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `pwrite`.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            buf: *const c_void,
            count: usize,
            off: OffT,
        ) -> isize {
            if let Some(r) = emulated_rw(fd, buf as *mut c_void, count, off, true) {
                return r;
            }
            match real!($lit, PwriteFn) {
                // SAFETY: the real function with the caller's arguments.
                Some(f) => unsafe { f(fd, buf, count, off) },
                None => {
                    set_errno(Errno(libc::ENOSYS));
                    -1
                }
            }
        }
    };
}
pwrite_hook!(pwrite, "pwrite");
pwrite_hook!(pwrite64, "pwrite64");

type MmapFn = unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, c_int, OffT) -> *mut c_void;

/// `mmap` of a device fd, as vfio-pci allows it: only BAR2 (the one region with the `MMAP`
/// flag), `MAP_SHARED`, page-aligned and inside the region. The pages come from the fd's
/// memfd and are recorded as the device's memory (reserved pfns of type UC) so that they can
/// be the `vaddr` of a MAP_DMA (peer-to-peer). `Err` is the errno.
fn device_mmap(
    real: MmapFn,
    dev: u32,
    args: (*mut c_void, usize, c_int, c_int, c_int, OffT),
) -> Result<*mut c_void, Errno> {
    let (addr, len, prot, flags, fd, off) = args;
    let pos = u64::try_from(off).map_err(|_| Errno::EINVAL)?;
    let bar_off = bar2_offset(pos).ok_or(Errno::EINVAL)?;
    let len64 = len as u64;
    if flags & libc::MAP_SHARED == 0
        || len == 0
        || bar_off % PAGE_SIZE != 0
        || bar_off.checked_add(len64).is_none_or(|end| end > BAR2_SIZE)
    {
        return Err(Errno::EINVAL);
    }
    let _ = fd;
    let (_, ordinal, bar) = state::device_info(dev)?;
    let ordinal = u64::from(ordinal);
    // SAFETY: the real mmap with the caller's address, length, protection and flags, on the
    // device's memory file at an offset inside it.
    let p = unsafe { real(addr, len, prot, flags, bar, bar_off as OffT) };
    if p == libc::MAP_FAILED {
        return Err(Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOMEM),
        ));
    }
    let bar_pfn = type1_host::MMIO_PFN_BASE + ordinal * (BAR2_SIZE / PAGE_SIZE);
    let first_pfn = bar_pfn + bar_off / PAGE_SIZE;
    // Peer-to-peer DMA reaches the BAR through the emulation's own mapping of it, so that it
    // follows the device, not whatever the program maps at the address later.
    let host = state::host()?;
    let mut host = host.lock();
    host.set_bar_backing(bar_pfn, BAR2_SIZE / PAGE_SIZE, bar)?;
    host.map_mmio(p as u64, len64.div_ceil(PAGE_SIZE), first_pfn, MemType::Uc);
    Ok(p)
}

macro_rules! mmap_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `mmap`: BAR2 of an emulated device is mappable, nothing else emulated is.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            addr: *mut c_void,
            len: usize,
            prot: c_int,
            flags: c_int,
            fd: c_int,
            off: OffT,
        ) -> *mut c_void {
            let Some(real) = real!($lit, MmapFn) else {
                set_errno(Errno(libc::ENOSYS));
                return libc::MAP_FAILED;
            };
            if fd >= 0 && state::in_hook() && state::maybe_emulated(fd) {
                set_errno(Errno(libc::EDEADLK)); // see `on_emulated`
                return libc::MAP_FAILED;
            }
            let obj = if fd >= 0 && flags & libc::MAP_ANONYMOUS == 0 {
                guarded(|| state::object_of(fd)).ok().flatten()
            } else {
                None
            };
            if let Some(obj) = obj {
                let r = match obj {
                    Object::Device(dev) => {
                        guarded(|| device_mmap(real, dev, (addr, len, prot, flags, fd, off)))
                            .unwrap_or(Err(Errno::EIO))
                    }
                    _ => Err(Errno::ENODEV),
                };
                return match r {
                    Ok(p) => p,
                    Err(e) => {
                        set_errno(e);
                        libc::MAP_FAILED
                    }
                };
            }
            let fixed = flags & libc::MAP_FIXED != 0;
            if fixed {
                with_platform(addr as u64, len as u64, |p| {
                    p.cpu_unmap_prepare(addr as u64, len as u64)
                });
            }
            // SAFETY: the real function with the caller's arguments.
            let p = unsafe { real(addr, len, prot, flags, fd, off) };
            if p != libc::MAP_FAILED && fixed {
                // Whatever was mapped there (pinned pages, device memory) is gone.
                with_platform(p as u64, len as u64, |pl| {
                    pl.cpu_unmapped(p as u64, len as u64);
                    pl.unmap_mmio(p as u64, len as u64);
                });
            }
            p
        }
    };
}
mmap_hook!(mmap, "mmap");
mmap_hook!(mmap64, "mmap64");

/// Runs `f` on the host platform if `[addr, addr + len)` may hold pinned pages or device
/// memory (the platform's watch); otherwise, and before the emulation has state, does nothing
/// and takes no lock. Never builds the state.
fn with_platform(addr: u64, len: u64, f: impl FnOnce(&mut type1_host::HostPlatform)) {
    if watched(addr, len) {
        on_platform(f);
    }
}

/// Runs `f` on the host platform (its own lock only: a MAP_DMA in progress holds it only
/// between two of its platform calls), if the emulation has state.
fn on_platform(f: impl FnOnce(&mut type1_host::HostPlatform)) {
    let _ = guarded(|| {
        if let Some(p) = state::existing_host() {
            f(&mut p.lock());
        }
    });
}

/// Whether `[addr, addr + len)` may hold pinned pages or device memory.
fn watched(addr: u64, len: u64) -> bool {
    state::watch().is_some_and(|w| w.intersects(addr, len))
}

/// Whether anything is pinned or mapped from a device at all.
fn watching() -> bool {
    state::watch().is_some_and(|w| !w.is_empty())
}

/// Interposed `munmap`: pinned pages mapped there get their unpin flush now (no CPU can reach
/// them afterwards) and stay the device's; device memory there is no longer reachable.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    let Some(real) = real!("munmap", unsafe extern "C" fn(*mut c_void, usize) -> c_int) else {
        set_errno(Errno(libc::ENOSYS));
        return -1;
    };
    let (a, l) = (addr as u64, len as u64);
    with_platform(a, l, |p| p.cpu_unmap_prepare(a, l));
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { real(addr, len) };
    if r == 0 {
        with_platform(a, l, |p| {
            p.cpu_unmapped(addr as u64, len as u64);
            p.unmap_mmio(addr as u64, len as u64);
        });
    }
    r
}

/// Interposed `mremap` (fixed arity: the optional new address is always passed): pinned pages
/// and device memory follow the move; a shrunk tail, or whatever `MREMAP_FIXED` replaces, is
/// unmapped as by `munmap`.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    let Some(real) = real!(
        "mremap",
        unsafe extern "C" fn(*mut c_void, usize, usize, c_int, *mut c_void) -> *mut c_void
    ) else {
        set_errno(Errno(libc::ENOSYS));
        return libc::MAP_FAILED;
    };
    let (o, ol, nl) = (old as u64, old_len as u64, new_len as u64);
    let fixed = flags & libc::MREMAP_FIXED != 0;
    // The old range, or the target `MREMAP_FIXED` replaces, may hold records.
    let hit = watched(o, ol) || (fixed && watched(new_addr as u64, nl));
    let on_platform = |f: &mut dyn FnMut(&mut type1_host::HostPlatform)| {
        if hit {
            on_platform(|p| f(p));
        }
    };
    on_platform(&mut |p| {
        if nl < ol {
            p.cpu_unmap_prepare(o + nl, ol - nl);
        }
        if fixed {
            p.cpu_unmap_prepare(new_addr as u64, nl);
        }
    });
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { real(old, old_len, new_len, flags, new_addr) };
    if r != libc::MAP_FAILED {
        on_platform(&mut |p| {
            if nl < ol {
                p.cpu_unmapped(o + nl, ol - nl);
                p.unmap_mmio(o + nl, ol - nl);
            }
            p.cpu_moved(o, ol.min(nl), r as u64);
        });
    }
    r
}

/// Interposed `mprotect`: pinned pages whose mapping loses read access get their unpin flush
/// now (no flush instruction may touch them while they stay unreadable) and are flushed
/// through the mapping again once it is readable.
#[no_mangle]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int {
    let Some(real) = real!(
        "mprotect",
        unsafe extern "C" fn(*mut c_void, usize, c_int) -> c_int
    ) else {
        set_errno(Errno(libc::ENOSYS));
        return -1;
    };
    let (a, l) = (addr as u64, len as u64);
    let hides = prot & libc::PROT_READ == 0;
    if hides {
        with_platform(a, l, |p| p.cpu_unmap_prepare(a, l));
    }
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { real(addr, len, prot) };
    if r == 0 {
        with_platform(a, l, |p| {
            if hides {
                p.cpu_hidden(a, l)
            } else {
                p.cpu_revealed(a, l)
            }
        });
    }
    r
}

/// Interposed `madvise`: advice that drops a range's pages from the page tables
/// (`MADV_DONTNEED`, `MADV_DONTNEED_LOCKED`, `MADV_REMOVE`) leaves pinned pages held by the
/// device and unreachable by the CPU, so they get their unpin flush now. Other advice, such as
/// `MADV_FREE` (a pinned page is never freed), passes through.
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    let Some(real) = real!(
        "madvise",
        unsafe extern "C" fn(*mut c_void, usize, c_int) -> c_int
    ) else {
        set_errno(Errno(libc::ENOSYS));
        return -1;
    };
    const MADV_DONTNEED_LOCKED: c_int = 24;
    let zaps = matches!(
        advice,
        libc::MADV_DONTNEED | libc::MADV_REMOVE | MADV_DONTNEED_LOCKED
    );
    let (a, l) = (addr as u64, len as u64);
    if zaps {
        with_platform(a, l, |p| p.cpu_unmap_prepare(a, l));
    }
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { real(addr, len, advice) };
    if r == 0 && zaps {
        with_platform(a, l, |p| p.cpu_unmapped(a, l));
    }
    r
}

/// Bytes `[from, to)` of `fd`'s file are about to leave it: pinned pages the process maps from
/// there get their unpin flush now. Returns the ranges to forget once the call succeeded.
fn file_shrinking(fd: c_int, from: u64, to: u64) -> Vec<(u64, u64)> {
    if !watching() || from >= to {
        return Vec::new();
    }
    let ranges = type1_host::sys::file_mappings(fd, from, to);
    for &(v, l) in &ranges {
        with_platform(v, l, |p| p.cpu_unmap_prepare(v, l));
    }
    ranges
}

fn file_shrunk(ranges: &[(u64, u64)]) {
    for &(v, l) in ranges {
        with_platform(v, l, |p| p.cpu_unmapped(v, l));
    }
}

macro_rules! ftruncate_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `ftruncate`: pages cut off a file are no longer mapped by the process;
        /// pinned ones stay the device's and get their unpin flush now.
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, len: OffT) -> c_int {
            let Some(real) = real!($lit, unsafe extern "C" fn(c_int, OffT) -> c_int) else {
                set_errno(Errno(libc::ENOSYS));
                return -1;
            };
            let ranges = match (u64::try_from(len), watching()) {
                (Ok(l), true) => match type1_host::sys::fstat_id(fd) {
                    Ok((_, _, size)) if l < size => {
                        file_shrinking(fd, l.div_ceil(4096) * 4096, size)
                    }
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            // SAFETY: the real function with the caller's arguments.
            let r = unsafe { real(fd, len) };
            if r == 0 {
                file_shrunk(&ranges);
            }
            r
        }
    };
}
ftruncate_hook!(ftruncate, "ftruncate");
ftruncate_hook!(ftruncate64, "ftruncate64");

macro_rules! fallocate_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `fallocate`: a punched hole is handled as a truncation of that range.
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, mode: c_int, off: OffT, len: OffT) -> c_int {
            let Some(real) = real!(
                $lit,
                unsafe extern "C" fn(c_int, c_int, OffT, OffT) -> c_int
            ) else {
                set_errno(Errno(libc::ENOSYS));
                return -1;
            };
            let ranges = match (u64::try_from(off), u64::try_from(len)) {
                (Ok(o), Ok(l)) if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 => {
                    // Only whole pages leave the file.
                    file_shrinking(fd, o.div_ceil(4096) * 4096, (o.saturating_add(l)) & !4095)
                }
                _ => Vec::new(),
            };
            // SAFETY: the real function with the caller's arguments.
            let r = unsafe { real(fd, mode, off, len) };
            if r == 0 {
                file_shrunk(&ranges);
            }
            r
        }
    };
}
fallocate_hook!(fallocate, "fallocate");
fallocate_hook!(fallocate64, "fallocate64");

/// For the stat family: the real path to stat instead and how to present it, or the errno;
/// `None` if not emulated.
fn stat_substitute(kind: &Kind) -> Option<Result<(CString, Option<Looks>), Errno>> {
    let standin = |name: Option<String>, looks: Looks| {
        guarded(|| {
            let dir = crate::files::standin_dir(&group_numbers())?;
            let p = match name {
                None => dir,
                Some(n) => format!("{dir}/{n}"),
            };
            CString::new(p)
                .map(|c| (c, Some(looks)))
                .map_err(|_| Errno::EINVAL)
        })
        .unwrap_or(Err(Errno::EIO))
    };
    match kind {
        Kind::NotOurs => None,
        Kind::Dir => Some(standin(None, Looks::Dir)),
        Kind::Container => Some(standin(Some("vfio".into()), Looks::Container)),
        Kind::Group(n) => Some(standin(Some(n.to_string()), Looks::Group(*n))),
        Kind::SysDev(_) | Kind::GroupLink(_) => Some(Ok((c"/sys".into(), None))),
        // A regular sysfs file every Linux has (sysfs reports a page as the size of all).
        Kind::SysAttr(..) => Some(Ok((c"/sys/kernel/uevent_seqnum".into(), None))),
        Kind::Missing => Some(Err(Errno::ENOENT)),
        Kind::NotDir => Some(Err(Errno(libc::ENOTDIR))),
    }
}

/// How an open fd must be presented by `fstat`: an emulated object or a stand-in.
fn fd_looks(fd: c_int) -> Option<Looks> {
    if state::in_hook() {
        return None;
    }
    guarded(|| {
        if let Some(o) = state::object_of(fd) {
            return Some(Looks::from(o));
        }
        if crate::files::have_standins() {
            return crate::files::standin_of(fd).map(Looks::from);
        }
        None
    })
    .ok()
    .flatten()
}

type StatFn = unsafe extern "C" fn(*const c_char, *mut libc::stat) -> c_int;

macro_rules! stat_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `stat`-family entry point.
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, buf: *mut libc::stat) -> c_int {
            // SAFETY: forwarded contract of the caller.
            let kind = unsafe { path_kind(path) };
            let (sub, looks) = match stat_substitute(&kind) {
                None => (None, None),
                Some(Ok((p, l))) => (Some(p), l),
                Some(Err(e)) => {
                    set_errno(e);
                    return -1;
                }
            };
            let path = sub.as_ref().map_or(path, |p| p.as_ptr());
            let Some(f) = real!($lit, StatFn) else {
                set_errno(Errno(libc::ENOSYS));
                return -1;
            };
            // SAFETY: the real function, with a valid path and the caller's buffer.
            let r = unsafe { f(path, buf) };
            if let (0, Some(l), false) = (r, looks, buf.is_null()) {
                // SAFETY: the call filled the caller's buffer.
                crate::files::patch_stat(unsafe { &mut *buf }, l);
            }
            r
        }
    };
}
stat_hook!(stat, "stat");
stat_hook!(stat64, "stat64");
stat_hook!(lstat, "lstat");
stat_hook!(lstat64, "lstat64");

type FstatFn = unsafe extern "C" fn(c_int, *mut libc::stat) -> c_int;

macro_rules! fstat_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `fstat`: an emulated fd is the character device (or anonymous inode) it
        /// stands for, not the socket behind it.
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, buf: *mut libc::stat) -> c_int {
            let Some(f) = real!($lit, FstatFn) else {
                set_errno(Errno(libc::ENOSYS));
                return -1;
            };
            // SAFETY: the real function with the caller's arguments.
            let r = unsafe { f(fd, buf) };
            if r == 0 && !buf.is_null() {
                if let Some(l) = fd_looks(fd) {
                    // SAFETY: the call filled the caller's buffer.
                    crate::files::patch_stat(unsafe { &mut *buf }, l);
                }
            }
            r
        }
    };
}
fstat_hook!(fstat, "fstat");
fstat_hook!(fstat64, "fstat64");

/// What a `*at` stat call must stat instead (if anything) and how to present its result:
/// `AT_EMPTY_PATH` on an emulated fd as `fstat`, paths relative to `dirfd` as `stat`; the
/// errno for a path that fails.
unsafe fn stat_at_target(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
) -> Result<(Option<CString>, Option<Looks>), Errno> {
    // SAFETY: a non-null path is NUL-terminated (the *at calls' contract).
    let empty = !path.is_null() && unsafe { *path } == 0;
    if empty && flags & libc::AT_EMPTY_PATH != 0 {
        return Ok((None, fd_looks(dirfd)));
    }
    // SAFETY: forwarded contract of the caller.
    match stat_substitute(&unsafe { path_kind_at(dirfd, path) }) {
        None => Ok((None, None)),
        Some(Ok((p, l))) => Ok((Some(p), l)),
        Some(Err(e)) => Err(e),
    }
}

type FstatatFn = unsafe extern "C" fn(c_int, *const c_char, *mut libc::stat, c_int) -> c_int;

macro_rules! fstatat_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `fstatat`: `AT_EMPTY_PATH` on an emulated fd as `fstat`; paths as
        /// `stat`, relative to `dirfd`.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dirfd: c_int,
            path: *const c_char,
            buf: *mut libc::stat,
            flags: c_int,
        ) -> c_int {
            let Some(f) = real!($lit, FstatatFn) else {
                set_errno(Errno(libc::ENOSYS));
                return -1;
            };
            // SAFETY: forwarded contract of the caller.
            let (sub, looks) = match unsafe { stat_at_target(dirfd, path, flags) } {
                Ok(t) => t,
                Err(e) => {
                    set_errno(e);
                    return -1;
                }
            };
            let path = sub.as_ref().map_or(path, |p| p.as_ptr());
            // SAFETY: the real function, with a valid path and the caller's buffer.
            let r = unsafe { f(dirfd, path, buf, flags) };
            if let (0, Some(l), false) = (r, looks, buf.is_null()) {
                // SAFETY: the call filled the caller's buffer.
                crate::files::patch_stat(unsafe { &mut *buf }, l);
            }
            r
        }
    };
}
fstatat_hook!(fstatat, "fstatat");
fstatat_hook!(fstatat64, "fstatat64");

/// Interposed `statx` (what Rust's `std::fs::metadata` uses).
#[no_mangle]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: c_uint,
    buf: *mut libc::statx,
) -> c_int {
    // SAFETY: forwarded contract of the caller.
    let (sub, looks) = match unsafe { stat_at_target(dirfd, path, flags) } {
        Ok(t) => t,
        Err(e) => {
            set_errno(e);
            return -1;
        }
    };
    let path = sub.as_ref().map_or(path, |p| p.as_ptr());
    let Some(f) = real!(
        "statx",
        unsafe extern "C" fn(c_int, *const c_char, c_int, c_uint, *mut libc::statx) -> c_int
    ) else {
        set_errno(Errno(libc::ENOSYS));
        return -1;
    };
    // SAFETY: the real function, with a valid path and the caller's buffer.
    let r = unsafe { f(dirfd, path, flags, mask, buf) };
    if let (0, Some(l), false) = (r, looks, buf.is_null()) {
        // SAFETY: the call filled the caller's buffer.
        crate::files::patch_statx(unsafe { &mut *buf }, l);
    }
    r
}

/// Interposed `opendir`: `/dev/vfio` lists the container and the groups.
#[no_mangle]
pub unsafe extern "C" fn opendir(path: *const c_char) -> *mut libc::DIR {
    let Some(f) = real!(
        "opendir",
        unsafe extern "C" fn(*const c_char) -> *mut libc::DIR
    ) else {
        set_errno(Errno(libc::ENOSYS));
        return std::ptr::null_mut();
    };
    // SAFETY: forwarded contract of the caller.
    let kind = unsafe { path_kind(path) };
    let sub = match stat_substitute(&kind) {
        Some(Ok((p, Some(Looks::Dir)))) => Some(p),
        Some(Ok(_)) | None => None,
        Some(Err(e)) => {
            set_errno(e);
            return std::ptr::null_mut();
        }
    };
    if matches!(kind, Kind::Container | Kind::Group(_)) {
        set_errno(Errno(libc::ENOTDIR));
        return std::ptr::null_mut();
    }
    let path = sub.as_ref().map_or(path, |p| p.as_ptr());
    // SAFETY: the real function with a valid path.
    unsafe { f(path) }
}

/// Interposed `readlink`: the emulated devices' `iommu_group` links.
#[no_mangle]
pub unsafe extern "C" fn readlink(path: *const c_char, buf: *mut c_char, size: usize) -> isize {
    // SAFETY: forwarded contract of the caller.
    let kind = unsafe { path_kind(path) };
    match kind {
        Kind::NotOurs => {}
        // The kernel checks the size before it looks the path up.
        _ if size == 0 => {
            set_errno(Errno::EINVAL);
            return -1;
        }
        Kind::GroupLink(n) => {
            let target = format!("../../../../kernel/iommu_groups/{n}");
            let len = target.len().min(size);
            return match type1_host::sys::write_user(buf as u64, &target.as_bytes()[..len]) {
                Ok(()) => len as isize,
                Err(e) => {
                    set_errno(e);
                    -1
                }
            };
        }
        Kind::Missing => {
            set_errno(Errno::ENOENT);
            return -1;
        }
        _ => {
            set_errno(Errno::EINVAL); // not a link
            return -1;
        }
    }
    match real!(
        "readlink",
        unsafe extern "C" fn(*const c_char, *mut c_char, usize) -> isize
    ) {
        // SAFETY: the real function with the caller's arguments.
        Some(f) => unsafe { f(path, buf, size) },
        None => {
            set_errno(Errno(libc::ENOSYS));
            -1
        }
    }
}

/// Interposed `realpath`: emulated paths resolve to themselves (group links to their
/// target); paths under an emulated device that do not exist are ENOENT.
#[no_mangle]
pub unsafe extern "C" fn realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char {
    // SAFETY: forwarded contract of the caller.
    let kind = unsafe { path_kind(path) };
    let answer: Option<String> = match &kind {
        Kind::NotOurs => None,
        Kind::Missing => {
            set_errno(Errno::ENOENT);
            return std::ptr::null_mut();
        }
        Kind::SysDev(bdf) => Some(format!("{SYSFS_PCI}{bdf}")),
        Kind::SysAttr(bdf, a) => Some(format!("{SYSFS_PCI}{bdf}/{a}")),
        Kind::GroupLink(n) => Some(format!("/sys/kernel/iommu_groups/{n}")),
        Kind::Container => Some("/dev/vfio/vfio".into()),
        Kind::Group(n) => Some(format!("/dev/vfio/{n}")),
        Kind::Dir => Some("/dev/vfio".into()),
        Kind::NotDir => {
            set_errno(Errno(libc::ENOTDIR));
            return std::ptr::null_mut();
        }
    };
    if let Some(s) = answer {
        let bytes = s.as_bytes();
        let out = if resolved.is_null() {
            // SAFETY: malloc of a small size; the caller frees it, as realpath's contract says.
            let p = unsafe { libc::malloc(bytes.len() + 1) } as *mut c_char;
            if p.is_null() {
                set_errno(Errno::ENOMEM);
                return p;
            }
            p
        } else {
            resolved
        };
        // SAFETY: `out` holds at least PATH_MAX bytes (caller's buffer) or was just allocated
        // with room for the string and its NUL; our strings are far shorter than PATH_MAX.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), out as *mut u8, bytes.len());
            *out.add(bytes.len()) = 0;
        }
        return out;
    }
    match real!(
        "realpath",
        unsafe extern "C" fn(*const c_char, *mut c_char) -> *mut c_char
    ) {
        // SAFETY: the real function with the caller's arguments.
        Some(f) => unsafe { f(path, resolved) },
        None => {
            set_errno(Errno(libc::ENOSYS));
            std::ptr::null_mut()
        }
    }
}

/// After a successful duplication, `newfd` stands for what `oldfd` stands for.
fn track_dup(oldfd: c_int, newfd: c_int) {
    // Neither fd emulated (the common case): nothing to track, and no lock to wait for.
    if newfd < 0 || !(state::maybe_emulated(oldfd) || state::maybe_emulated(newfd)) {
        return;
    }
    if guarded(|| state::dup_fd(oldfd, newfd)).unwrap_or(false) {
        synced_after_close();
    }
}

/// Interposed `dup`.
#[no_mangle]
pub unsafe extern "C" fn dup(oldfd: c_int) -> c_int {
    let Some(f) = real!("dup", unsafe extern "C" fn(c_int) -> c_int) else {
        set_errno(Errno(libc::ENOSYS));
        return -1;
    };
    // SAFETY: the real function with the caller's argument.
    let r = unsafe { f(oldfd) };
    track_dup(oldfd, r);
    r
}

/// Interposed `dup2`: an emulated `newfd` is closed first, as the kernel does.
#[no_mangle]
pub unsafe extern "C" fn dup2(oldfd: c_int, newfd: c_int) -> c_int {
    let Some(f) = real!("dup2", unsafe extern "C" fn(c_int, c_int) -> c_int) else {
        set_errno(Errno(libc::ENOSYS));
        return -1;
    };
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { f(oldfd, newfd) };
    track_dup(oldfd, r);
    r
}

/// Interposed `dup3`.
#[no_mangle]
pub unsafe extern "C" fn dup3(oldfd: c_int, newfd: c_int, flags: c_int) -> c_int {
    let Some(f) = real!("dup3", unsafe extern "C" fn(c_int, c_int, c_int) -> c_int) else {
        set_errno(Errno(libc::ENOSYS));
        return -1;
    };
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { f(oldfd, newfd, flags) };
    track_dup(oldfd, r);
    r
}

type FcntlFn = unsafe extern "C" fn(c_int, c_int, c_ulong) -> c_int;

macro_rules! fcntl_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `fcntl` (fixed arity: one integer or pointer argument): `F_DUPFD` and
        /// `F_DUPFD_CLOEXEC` of an emulated fd are tracked.
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
            let Some(f) = real!($lit, FcntlFn) else {
                set_errno(Errno(libc::ENOSYS));
                return -1;
            };
            // SAFETY: the real function with the caller's arguments.
            let r = unsafe { f(fd, cmd, arg) };
            if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
                track_dup(fd, r);
            }
            r
        }
    };
}
fcntl_hook!(fcntl, "fcntl");
fcntl_hook!(fcntl64, "fcntl64");

/// After a `wait` family call reaped a child: the files only that child held are closed (the
/// kernel closes them in `exit`, before the parent wakes), so their last-close consequences
/// happen before the call returns, as in the kernel. Only for processes that use the broker.
fn after_wait(r: libc::pid_t) {
    if r > 0 && !state::in_hook() && client::connected() {
        synced_after_close();
    }
}

/// Interposed `waitpid`.
#[no_mangle]
pub unsafe extern "C" fn waitpid(
    pid: libc::pid_t,
    status: *mut c_int,
    options: c_int,
) -> libc::pid_t {
    let Some(f) = real!(
        "waitpid",
        unsafe extern "C" fn(libc::pid_t, *mut c_int, c_int) -> libc::pid_t
    ) else {
        set_errno(Errno(libc::ENOSYS));
        return -1;
    };
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { f(pid, status, options) };
    after_wait(r);
    r
}

/// Interposed `wait`.
#[no_mangle]
pub unsafe extern "C" fn wait(status: *mut c_int) -> libc::pid_t {
    let Some(f) = real!("wait", unsafe extern "C" fn(*mut c_int) -> libc::pid_t) else {
        set_errno(Errno(libc::ENOSYS));
        return -1;
    };
    // SAFETY: the real function with the caller's argument.
    let r = unsafe { f(status) };
    after_wait(r);
    r
}

/// Interposed `wait4`.
#[no_mangle]
pub unsafe extern "C" fn wait4(
    pid: libc::pid_t,
    status: *mut c_int,
    options: c_int,
    ru: *mut libc::rusage,
) -> libc::pid_t {
    let Some(f) = real!(
        "wait4",
        unsafe extern "C" fn(libc::pid_t, *mut c_int, c_int, *mut libc::rusage) -> libc::pid_t
    ) else {
        set_errno(Errno(libc::ENOSYS));
        return -1;
    };
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { f(pid, status, options, ru) };
    after_wait(r);
    r
}

/// Interposed `waitid`.
#[no_mangle]
pub unsafe extern "C" fn waitid(
    idtype: libc::idtype_t,
    id: libc::id_t,
    info: *mut libc::siginfo_t,
    options: c_int,
) -> c_int {
    let Some(f) = real!(
        "waitid",
        unsafe extern "C" fn(libc::idtype_t, libc::id_t, *mut libc::siginfo_t, c_int) -> c_int
    ) else {
        set_errno(Errno(libc::ENOSYS));
        return -1;
    };
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { f(idtype, id, info, options) };
    if r == 0 && options & libc::WNOWAIT == 0 {
        after_wait(1);
    }
    r
}

extern "C" fn at_exit() {
    state::release_all();
    let _ = guarded(crate::files::remove_standins);
    let _ = guarded(write_wire_stats);
}

/// `TYPE1_WIRE_STATS=FILE`: this process's traffic with the broker (`wire::WireStats`, and
/// the pin callbacks it answered) as one JSON object, written at exit (tests hold the
/// protocol to its bound with it).
fn write_wire_stats() -> Result<(), Errno> {
    let Some(path) = type1_host::sys::secure_var("TYPE1_WIRE_STATS") else {
        return Ok(());
    };
    let s = type1_broker::wire::stats();
    let text = format!(
        "{{\"sent\":{},\"largest_sent\":{},\"received\":{},\"largest_received\":{},\"pin_callbacks\":{}}}\n",
        s.sent,
        s.largest_sent,
        s.received,
        s.largest_received,
        client::pin_callbacks()
    );
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let fd = type1_host::sys::open(
        &c,
        libc::O_WRONLY
            | libc::O_CREAT
            | libc::O_TRUNC
            | libc::O_CLOEXEC
            | libc::O_NOFOLLOW
            | libc::O_NONBLOCK,
        0o600,
    )?;
    let r = type1_host::sys::write_all(fd, text.as_bytes());
    type1_host::sys::close(fd);
    r
}

/// Runs when the library is loaded: the fork handlers (no lock is held across `fork`) and
/// the emulated files inherited across exec.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = state::at_load;

/// Runs at process exit (also after `main` returns without closing anything, as QEMU does).
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = at_exit;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_paths() {
        let m = Machine::from_toml(
            r#"
[[unit]]
id = 0
ops = 1
snoop_control = true
[[unit]]
id = 1
ops = 1
snoop_control = false
[[group]]
id = 0
unit = 0
devices = ["0000:00:04.0"]
[[group]]
id = 1
unit = 1
devices = ["0000:00:05.0"]
"#,
        )
        .unwrap();
        let classify = |p: &[u8]| classify(&m, p);
        assert_eq!(classify(b"/dev/vfio/vfio"), Kind::Container);
        assert_eq!(classify(b"/dev/vfio/1"), Kind::Group(1));
        assert_eq!(classify(b"/dev/vfio/7"), Kind::Missing);
        assert_eq!(classify(b"/dev/vfio/devices/x"), Kind::Missing);
        assert_eq!(classify(b"/dev/null"), Kind::NotOurs);
        assert_eq!(
            classify(b"/sys/bus/pci/devices/0000:00:05.0"),
            Kind::SysDev("0000:00:05.0".into())
        );
        assert_eq!(
            classify(b"/sys/bus/pci/devices/0000:00:05.0/"),
            Kind::SysDev("0000:00:05.0".into())
        );
        assert_eq!(
            classify(b"/sys/bus/pci/devices/0000:00:04.0/iommu_group"),
            Kind::GroupLink(0)
        );
        assert_eq!(
            classify(b"/sys/bus/pci/devices/0000:00:04.0/subsystem"),
            Kind::Missing
        );
        assert_eq!(
            classify(b"/sys/bus/pci/devices/0000:00:05.0/vendor"),
            Kind::SysAttr("0000:00:05.0".into(), "vendor")
        );
        assert_eq!(sys_attr("vendor"), b"0x1234\n");
        assert_eq!(sys_attr("device"), b"0x11e8\n");
        assert_eq!(sys_attr("class"), b"0xff0000\n");
        let config = sys_attr("config");
        assert_eq!(
            (config.len(), &config[..4]),
            (256, &[0x34, 0x12, 0xe8, 0x11][..])
        );
        assert_eq!(
            classify(b"/sys/bus/pci/devices/0000:00:09.0"),
            Kind::NotOurs
        );
    }
}
