//! Opens and closes: emulated `/dev/vfio` files and stand-ins, and every close route
//! (`close`, `close_range`, `closefrom`, `fclose`) with the last-close synchronisation.

use super::*;

/// Opens an emulated object; `None` if `path` (relative to `dirfd`) is not emulated.
pub(super) unsafe fn emulated_open(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
) -> Option<c_int> {
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
        Kind::Container | Kind::Group(_) | Kind::Iommu | Kind::Cdev(..) => {
            guarded(|| -> Result<c_int, Errno> {
                state::check_config()?;
                let req = match &kind {
                    Kind::Group(n) => Request::Open(Some(*n)),
                    Kind::Iommu => Request::OpenIommu,
                    Kind::Cdev(name, _) => Request::OpenCdev(name.clone()),
                    _ => Request::Open(None),
                };
                let r = client::request(req, &[], &[])?;
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
                if let Kind::Cdev(_, k) = &kind {
                    crate::files::note_cdev(fd, u32::try_from(*k).unwrap_or(u32::MAX));
                }
                Ok(fd)
            })
        }
        Kind::NotDir => Ok(Err(Errno(libc::ENOTDIR))),
        Kind::SysAttr(bdf, a) => Ok(open_sys_attr(&bdf, a, flags)),
        // Sysfs directories and links are not opened by VFIO users.
        Kind::Missing
        | Kind::SysDev(_)
        | Kind::GroupLink(_)
        | Kind::Dir
        | Kind::DevicesDir
        | Kind::VfioDevDir(..) => Ok(Err(Errno::ENOENT)),
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
pub(super) fn group_numbers() -> Vec<u32> {
    state::machine().groups.iter().map(|g| g.id).collect()
}

/// Opens the stand-in of `/dev/vfio` (`name` `None`) or of a file in it, with `flags`.
pub(super) fn open_standin(name: Option<&str>, flags: c_int) -> c_int {
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

pub(super) type OpenFn = unsafe extern "C" fn(*const c_char, c_int, c_uint) -> c_int;
pub(super) type Open2Fn = unsafe extern "C" fn(*const c_char, c_int) -> c_int;
pub(super) type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, c_uint) -> c_int;

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
                None => enosys(-1),
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
                None => enosys(-1),
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
                None => enosys(-1),
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
    if type1_host::fds::internal(fd) {
        set_errno(Errno::EBADF);
        return -1;
    }
    let ours = state::maybe_emulated(fd) && guarded(|| state::forget(fd)).unwrap_or(false);
    let r = match real!("close", unsafe extern "C" fn(c_int) -> c_int) {
        // SAFETY: the real function with the caller's argument.
        Some(f) => unsafe { f(fd) },
        None => enosys(-1),
    };
    if ours {
        synced_after_close();
    }
    r
}

/// After the close of an emulated file: the broker has given it its last-close consequences
/// (if it was the last reference) before the close returns, as the kernel's release does.
/// Keeps the caller's errno.
pub(super) fn synced_after_close() {
    let saved = errno();
    let _ = guarded(state::sync);
    set_errno(saved);
}

/// `close_range(first, last, flags)` that leaves the emulation's own fds open, then the last
/// close of every emulated object that loses its last fd there.
pub(super) fn close_range_keeping_internal(first: u32, last: u32, flags: u32) -> Result<(), Errno> {
    let sys_close_range = |a: u32, b: u32| type1_host::sys::close_range(a, b, flags);
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
    for fd in type1_host::fds::internal_in(first, last) {
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
        return enosys(libc::EOF);
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
