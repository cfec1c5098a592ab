//! The interposed libc symbols, one module per concern: `paths` (what a path stands for),
//! `open` (opens and every close route), `io` (ioctl and the read/write family), `mem`
//! (device mmap and the memory hooks that keep pins true), `stat` (how emulated files look)
//! and `proc` (dup, fcntl, wait). This module holds what they share: errno, the next
//! definition of a symbol, and `on_emulated`, the entry of every emulated call.
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

/// A hook whose real function cannot be found fails with ENOSYS: sets errno and returns the
/// function's own failure value (`-1`, `MAP_FAILED`, a null pointer, `EOF`).
fn enosys<T>(failed: T) -> T {
    set_errno(Errno(libc::ENOSYS));
    failed
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
    /// `/dev/iommu`.
    Iommu,
    /// `/dev/vfio/devices`.
    DevicesDir,
    /// `/dev/vfio/devices/vfioN`: the cdev of the machine's N-th device (its name, N).
    Cdev(String, usize),
    /// `/sys/bus/pci/devices/<bdf>/vfio-dev`: the directory naming the cdev (bdf, N).
    VfioDevDir(String, usize),
    /// An emulated character device named with a trailing slash: ENOTDIR.
    NotDir,
    NotOurs,
}

mod io;
mod mem;
mod open;
mod paths;
mod proc;
mod stat;

#[allow(unused_imports)]
use {io::*, mem::*, open::*, paths::*, proc::*, stat::*};

/// Runs an operation on an emulated fd; `None` if `fd` is not emulated (or re-entered).
/// `unknown`: also ask the broker about a socket this process has not seen (an fd inherited
/// across exec or received over `SCM_RIGHTS`). The call runs with the thread's signals
/// deferred (`state::deferring_signals`); a file of a broker that is gone answers EIO. Only
/// the emulation's own code can re-enter here on the same thread, and gets EDEADLK.
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
            let inst = state::instance_of(fd);
            if inst != 0 && inst != client::instance() {
                return Some(Err(Errno::EIO));
            }
            let obj = if unknown {
                state::object_of_unknown(fd)
            } else {
                state::object_of(fd)
            }?;
            // (A file seen only now, by `object_of_unknown`, is the current broker's.)
            let inst = if inst == 0 { client::instance() } else { inst };
            Some(client::about_file(inst, || f(obj)))
        })
        .unwrap_or(Some(Err(Errno::EIO)))
    })?;
    // A call that succeeds leaves errno alone, whatever the emulation's own calls did to it.
    set_errno(saved);
    Some(r)
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
        crate::answer::pin_callbacks()
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
static INIT: extern "C" fn() = at_load;

/// The constructor: the broker's callbacks are answered by [`crate::answer`], then the
/// process's state is set up ([`state::at_load`]).
extern "C" fn at_load() {
    client::install(crate::answer::SIDE);
    state::at_load();
}

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
        let dma = type1_uapi::device::PciDevice::new().config_space();
        assert_eq!(sys_attr(&dma, "vendor"), b"0x1234\n");
        assert_eq!(sys_attr(&dma, "device"), b"0x11e8\n");
        assert_eq!(sys_attr(&dma, "class"), b"0xff0000\n");
        let nvme = type1_uapi::nvme::reset_config();
        assert_eq!(sys_attr(&nvme, "device"), b"0x7e01\n");
        assert_eq!(sys_attr(&nvme, "class"), b"0x010802\n");
        let config = sys_attr(&dma, "config");
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
