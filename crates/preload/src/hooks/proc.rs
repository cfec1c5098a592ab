//! Descriptors and processes: `dup`, `fcntl` duplication, and the `wait` family (a child's
//! last closes happen before its parent's wait returns).

use super::*;

/// After a successful duplication, `newfd` stands for what `oldfd` stands for.
pub(super) fn track_dup(oldfd: c_int, newfd: c_int) {
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
        return enosys(-1);
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
        return enosys(-1);
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
        return enosys(-1);
    };
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { f(oldfd, newfd, flags) };
    track_dup(oldfd, r);
    r
}

pub(super) type FcntlFn = unsafe extern "C" fn(c_int, c_int, c_ulong) -> c_int;

macro_rules! fcntl_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `fcntl` (fixed arity: one integer or pointer argument): `F_DUPFD` and
        /// `F_DUPFD_CLOEXEC` of an emulated fd are tracked.
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
            let Some(f) = real!($lit, FcntlFn) else {
                return enosys(-1);
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
pub(super) fn after_wait(r: libc::pid_t) {
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
        return enosys(-1);
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
        return enosys(-1);
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
        return enosys(-1);
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
        return enosys(-1);
    };
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { f(idtype, id, info, options) };
    if r == 0 && options & libc::WNOWAIT == 0 {
        after_wait(1);
    }
    r
}
