//! The process-wide emulation state: the `Vfio` subsystem and the fd → object table.

use std::{
    cell::Cell,
    collections::HashMap,
    ffi::CString,
    sync::{Mutex, MutexGuard},
};

use type1_core::{Config, Errno};
use type1_host::{sys, HostConfig, HostPlatform};
use type1_uapi::{Caller, GroupSpec, Object, Vfio};

/// Where emulated PCI devices appear in sysfs.
pub const SYSFS_PCI: &str = "/sys/bus/pci/devices/";

/// `(group, device)` of the default machine.
pub const DEFAULT_DEVICES: [(u32, &str); 2] = [(0, "0000:00:04.0"), (1, "0000:00:05.0")];

pub(crate) struct State {
    pub vfio: Vfio<HostPlatform>,
    pub fds: HashMap<i32, Object>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the re-entrancy guard set. `Err(())` when the guard was already set (the
/// call comes from inside the emulation and must go straight to libc) or `f` panicked (a bug;
/// the caller answers EIO rather than unwinding into C).
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, ()> {
    let entered = IN_HOOK.try_with(|g| !g.replace(true)).unwrap_or(false);
    if !entered {
        return Err(());
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let _ = IN_HOOK.try_with(|g| g.set(false));
    r.map_err(|_| ())
}

fn build() -> Result<State, Errno> {
    let mut platform = HostPlatform::new(HostConfig::default());
    if let Some(path) = std::env::var_os("TYPE1_TRACE") {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(c) = CString::new(path.as_bytes()) {
            if let Ok(fd) = sys::open(
                &c,
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o644,
            ) {
                platform.trace_to_fd(fd);
            }
        }
    }
    let policy = std::env::var("TYPE1_POLICY").unwrap_or_else(|_| "seed".to_string());
    let groups: Vec<GroupSpec> = DEFAULT_DEVICES
        .iter()
        .map(|(g, d)| GroupSpec {
            id: *g,
            devices: vec![d.to_string()],
        })
        .collect();
    let vfio = Vfio::new(platform, &groups, Config::default(), &policy)?;
    Ok(State {
        vfio,
        fds: HashMap::new(),
    })
}

/// The state, built on first use. `Err` if the configuration is invalid (bad policy).
pub(crate) fn lock() -> Result<MutexGuard<'static, Option<State>>, Errno> {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        *g = Some(build()?);
    }
    Ok(g)
}

/// Whether `fd` is emulated (without building the state).
pub(crate) fn object_of(fd: i32) -> Option<Object> {
    let g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    g.as_ref().and_then(|s| s.fds.get(&fd).copied())
}

/// A fresh real fd to stand for an emulated object.
pub(crate) fn memfd(name: &std::ffi::CStr, cloexec: bool) -> Result<i32, Errno> {
    let flags = if cloexec { libc::MFD_CLOEXEC } else { 0 };
    // SAFETY: `name` is a valid NUL-terminated string.
    let r = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), flags) };
    if r < 0 {
        Err(Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EMFILE),
        ))
    } else {
        Ok(r as i32)
    }
}

/// The calling process for the uAPI layer.
pub(crate) struct ProcessCaller<'a> {
    pub fds: &'a mut HashMap<i32, Object>,
}

impl Caller for ProcessCaller<'_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        sys::read_user(addr, buf)
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        sys::write_user(addr, data)
    }

    fn object_of_fd(&self, fd: i32) -> Result<Option<Object>, Errno> {
        if let Some(o) = self.fds.get(&fd) {
            return Ok(Some(*o));
        }
        // SAFETY: F_GETFD only queries the descriptor table.
        let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) };
        if r < 0 {
            Err(Errno::EBADF)
        } else {
            Ok(None)
        }
    }

    fn new_fd(&mut self, obj: Object) -> Result<i32, Errno> {
        let fd = memfd(c"vfio-device", true)?;
        self.fds.insert(fd, obj);
        Ok(fd)
    }
}

/// Process exit: release everything as the kernel does when the process's fds are closed.
pub(crate) fn release_all() {
    let _ = guarded(|| {
        let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_mut() {
            s.vfio.release_all();
            s.fds.clear();
        }
        // Dropping the platform closes the trace fd.
        *g = None;
    });
}
