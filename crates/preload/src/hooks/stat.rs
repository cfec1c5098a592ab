//! The stat family, `opendir`, `readlink` and `realpath`: how emulated files and the
//! `/dev/vfio` stand-ins look.

use super::*;

/// For the stat family: the real path to stat instead and how to present it, or the errno;
/// `None` if not emulated.
pub(super) fn stat_substitute(kind: &Kind) -> Option<Result<(CString, Option<Looks>), Errno>> {
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
        Kind::Iommu => Some(standin(Some("iommu".into()), Looks::Iommu)),
        Kind::DevicesDir => Some(extra_dir(None)),
        Kind::Cdev(_, k) => Some(
            extra_dir(Some(format!("devices/vfio{k}"))).map(|(path, _)| {
                (
                    path,
                    Some(Looks::Cdev(u32::try_from(*k).unwrap_or(u32::MAX))),
                )
            }),
        ),
        Kind::VfioDevDir(_, k) => Some(extra_dir(Some(format!("vfio-dev/{k}")))),
        // A regular sysfs file every Linux has (sysfs reports a page as the size of all).
        Kind::SysAttr(..) => Some(Ok((c"/sys/kernel/uevent_seqnum".into(), None))),
        Kind::Missing => Some(Err(Errno::ENOENT)),
        Kind::NotDir => Some(Err(Errno(libc::ENOTDIR))),
    }
}

/// The stand-in for `/dev/vfio/devices` (`None`), a cdev in it, or a sysfs `vfio-dev`
/// directory: made under the stand-in directory on first use, presented as they are.
fn extra_dir(sub: Option<String>) -> Result<(CString, Option<Looks>), Errno> {
    guarded(|| {
        let n = state::machine().devices().count();
        let p = crate::files::standin_tree(&group_numbers(), n)?;
        let path = match sub {
            None => format!("{p}/devices"),
            Some(s) => format!("{p}/{s}"),
        };
        CString::new(path)
            .map(|c| (c, None))
            .map_err(|_| Errno::EINVAL)
    })
    .unwrap_or(Err(Errno::EIO))
}

/// How an open fd must be presented by `fstat`: an emulated object or a stand-in.
pub(super) fn fd_looks(fd: c_int) -> Option<Looks> {
    if state::in_hook() {
        return None;
    }
    guarded(|| {
        if let Some(o) = state::object_of(fd) {
            if let (type1_uapi::Object::Device(_), Some(k)) = (o, crate::files::cdev_of(fd)) {
                return Some(Looks::Cdev(k));
            }
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

pub(super) type StatFn = unsafe extern "C" fn(*const c_char, *mut libc::stat) -> c_int;

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
                return enosys(-1);
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

pub(super) type FstatFn = unsafe extern "C" fn(c_int, *mut libc::stat) -> c_int;

macro_rules! fstat_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `fstat`: an emulated fd is the character device (or anonymous inode) it
        /// stands for, not the socket behind it.
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, buf: *mut libc::stat) -> c_int {
            let Some(f) = real!($lit, FstatFn) else {
                return enosys(-1);
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
pub(super) unsafe fn stat_at_target(
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

pub(super) type FstatatFn =
    unsafe extern "C" fn(c_int, *const c_char, *mut libc::stat, c_int) -> c_int;

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
                return enosys(-1);
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
        return enosys(-1);
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
        return enosys(std::ptr::null_mut());
    };
    // SAFETY: forwarded contract of the caller.
    let kind = unsafe { path_kind(path) };
    let sub = match stat_substitute(&kind) {
        Some(Ok((p, Some(Looks::Dir)))) => Some(p),
        Some(Ok((p, None))) if matches!(kind, Kind::DevicesDir | Kind::VfioDevDir(..)) => Some(p),
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
        None => enosys(-1),
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
        Kind::Iommu => Some("/dev/iommu".into()),
        Kind::DevicesDir => Some("/dev/vfio/devices".into()),
        Kind::Cdev(_, k) => Some(format!("/dev/vfio/devices/vfio{k}")),
        Kind::VfioDevDir(bdf, _) => Some(format!("{SYSFS_PCI}{bdf}/vfio-dev")),
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
        None => enosys(std::ptr::null_mut()),
    }
}
