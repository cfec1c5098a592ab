//! The process-wide emulation state: the `Vfio` subsystem and the fd → object table.

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::CString,
    sync::{Condvar, Mutex, MutexGuard, OnceLock},
};

use crate::shared::SharedHost;
use type1_core::{Config, DomainId, Errno};
use type1_host::{sys, DmaError, HostConfig, HostPlatform, PinMode, UnitConfig};
use type1_uapi::{
    device::{DmaFault, BAR2_SIZE, FAULT_PERMISSION, FAULT_UNMAPPED},
    Caller, GroupSpec, Object, Vfio,
};

/// Where emulated PCI devices appear in sysfs.
pub const SYSFS_PCI: &str = "/sys/bus/pci/devices/";

/// `(group, device)` of the default machine.
pub const DEFAULT_DEVICES: [(u32, &str); 2] = [(0, "0000:00:04.0"), (1, "0000:00:05.0")];

/// The machine the library emulates: groups with their devices, and the host platform's
/// IOMMU units.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    pub groups: Vec<GroupSpec>,
    pub host: HostConfig,
}

impl Machine {
    fn default_machine() -> Machine {
        Machine {
            groups: DEFAULT_DEVICES
                .iter()
                .map(|(g, d)| GroupSpec {
                    id: *g,
                    devices: vec![d.to_string()],
                })
                .collect(),
            host: HostConfig::default(),
        }
    }

    /// The machine of a `type1-sim` description (`docs/machine.md`): its units (only
    /// `snoop_control` matters here) and groups with their device names, which become the
    /// devices' sysfs names and `VFIO_GROUP_GET_DEVICE_FD` names. Emulated (IOMMU-less)
    /// groups are not supported by the host platform.
    pub fn from_toml(text: &str) -> Result<Machine, String> {
        let desc = type1_sim::machine::MachineDesc::from_toml_str(text)?;
        desc.validate()?;
        let index: BTreeMap<u32, usize> = desc
            .units
            .iter()
            .enumerate()
            .map(|(i, u)| (u.id, i))
            .collect();
        let units = desc
            .units
            .iter()
            .map(|u| UnitConfig {
                snoop_control: u.snoop_control,
            })
            .collect();
        let mut groups = Vec::new();
        let mut map = BTreeMap::new();
        for g in &desc.groups {
            let unit = match g.unit {
                Some(u) if !g.emulated => u,
                _ => {
                    return Err(format!(
                        "group {}: emulated groups are not supported here",
                        g.id
                    ))
                }
            };
            map.insert(g.id, index[&unit]);
            groups.push(GroupSpec {
                id: g.id,
                devices: g.devices.clone(),
            });
        }
        Ok(Machine {
            groups,
            host: HostConfig { units, groups: map },
        })
    }

    /// The group of device `name`.
    pub fn group_of(&self, name: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|g| g.devices.iter().any(|d| d == name))
            .map(|g| g.id)
    }

    /// Whether group `id` exists.
    pub fn has_group(&self, id: u32) -> bool {
        self.groups.iter().any(|g| g.id == id)
    }
}

fn read_file_raw(path: &[u8]) -> Result<String, Errno> {
    let c = CString::new(path).map_err(|_| Errno::EINVAL)?;
    let fd = sys::open_ro(&c)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let r = loop {
        match sys::pread(fd, &mut buf, out.len() as u64) {
            Ok(0) => break Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    sys::close(fd);
    r?;
    String::from_utf8(out).map_err(|_| Errno::EINVAL)
}

static MACHINE: OnceLock<Machine> = OnceLock::new();

/// The machine: `TYPE1_MACHINE=FILE` or the default. The file is read with raw system calls
/// (no hook runs). An unreadable or invalid file is reported on stderr and leaves a machine
/// with no groups, so that every group open fails with ENOENT.
pub(crate) fn machine() -> &'static Machine {
    MACHINE.get_or_init(|| {
        use std::os::unix::ffi::OsStrExt;
        let Some(path) = std::env::var_os("TYPE1_MACHINE") else {
            return Machine::default_machine();
        };
        let r = read_file_raw(path.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|t| Machine::from_toml(&t));
        r.unwrap_or_else(|e| {
            let msg = format!(
                "type1-preload: TYPE1_MACHINE={}: {e}\n",
                path.to_string_lossy()
            );
            let _ = sys::write_all(2, msg.as_bytes());
            Machine {
                groups: Vec::new(),
                host: HostConfig {
                    units: Vec::new(),
                    groups: BTreeMap::new(),
                },
            }
        })
    })
}

pub(crate) struct State {
    pub vfio: Vfio<SharedHost>,
    pub fds: FdTable,
    /// Containers checked out for a MAP_DMA or UNMAP_DMA running without the state lock.
    pub busy: BTreeSet<u32>,
}

/// Signalled whenever a checked-out container comes back.
static RETURNED: Condvar = Condvar::new();

/// The host platform, shared (set when the state is built). The memory hooks use it without
/// the state lock.
pub(crate) static PLATFORM: OnceLock<SharedHost> = OnceLock::new();

/// The fds in the table. Lets every hook on a file that is not ours (the common case) pass
/// through without waiting for the state lock, which a long MAP_DMA in another thread may hold.
static EMULATED_FDS: sys::FdSet = sys::FdSet::new();

/// Whether `fd` may be emulated, without taking the state lock: `false` is certain.
pub(crate) fn maybe_emulated(fd: i32) -> bool {
    if sys::FdSet::covers(fd) {
        EMULATED_FDS.contains(fd)
    } else {
        fd >= 0 // beyond the set: ask the table
    }
}

/// The fd → object table, mirrored in [`EMULATED_FDS`]. Each entry remembers the identity
/// (device, inode) of the memfd that stands for the object, so that an fd number closed by a
/// route no hook saw (`syscall(SYS_close)`, ...) and reused for a real file is never answered
/// by the emulation.
#[derive(Debug, Default)]
pub(crate) struct FdTable {
    map: HashMap<i32, (Object, (u64, u64))>,
}

/// The identity of the file `fd` refers to now.
fn identity(fd: i32) -> Option<(u64, u64)> {
    sys::fstat_id(fd).ok().map(|(dev, ino, _)| (dev, ino))
}

impl FdTable {
    /// The object `fd` stands for, if the fd still refers to its file.
    pub fn get(&self, fd: &i32) -> Option<&Object> {
        let (obj, id) = self.map.get(fd)?;
        (identity(*fd) == Some(*id)).then_some(obj)
    }

    /// Records that `fd` (open now) stands for `obj`.
    pub fn insert(&mut self, fd: i32, obj: Object) {
        let Some(id) = identity(fd) else {
            return;
        };
        EMULATED_FDS.set(fd, true);
        self.map.insert(fd, (obj, id));
    }

    pub fn remove(&mut self, fd: &i32) -> Option<Object> {
        EMULATED_FDS.set(*fd, false);
        self.map.remove(fd).map(|(o, _)| o)
    }

    pub fn refers_to(&self, obj: Object) -> bool {
        self.map.values().any(|(o, _)| *o == obj)
    }

    /// An fd that stands for `obj` now, if any.
    pub fn fd_of(&self, obj: Object) -> Option<i32> {
        self.map
            .iter()
            .find(|(fd, (o, id))| *o == obj && identity(**fd) == Some(*id))
            .map(|(fd, _)| *fd)
    }

    /// Entries whose fd no longer refers to their file (closed by a route no hook saw).
    pub fn stale(&self) -> Vec<i32> {
        self.map
            .iter()
            .filter(|(fd, (_, id))| identity(**fd) != Some(*id))
            .map(|(fd, _)| *fd)
            .collect()
    }

    /// Emulated fds in `[first, last]`.
    pub fn in_range(&self, first: i32, last: i32) -> Vec<i32> {
        self.map
            .keys()
            .copied()
            .filter(|fd| (first..=last).contains(fd))
            .collect()
    }

    pub fn clear(&mut self) {
        for fd in self.map.keys().copied().collect::<Vec<_>>() {
            self.remove(&fd);
        }
    }
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside the emulation already (a hook called from the emulation's
/// own code, or from a signal handler that interrupted an emulated call).
pub(crate) fn in_hook() -> bool {
    IN_HOOK.try_with(|g| g.get()).unwrap_or(true)
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

/// The platform's watch (set when the state is built): the memory hooks (`munmap`, `mremap`,
/// `madvise`, `ftruncate`, ...) consult the pin records only for ranges it covers, and pass
/// everything else straight through without waiting for the state lock.
pub(crate) static WATCH: OnceLock<std::sync::Arc<type1_host::CpuWatch>> = OnceLock::new();

fn build() -> Result<State, Errno> {
    let m = machine();
    let mut platform = HostPlatform::new(m.host.clone());
    match std::env::var("TYPE1_PIN").as_deref() {
        Ok("track") => platform.set_pin_mode(PinMode::Track),
        Ok("uring") | Err(_) => {}
        Ok(other) => {
            let msg = format!("type1-preload: TYPE1_PIN={other}: expected uring or track\n");
            let _ = sys::write_all(2, msg.as_bytes());
            return Err(Errno::EINVAL);
        }
    }
    platform.prepare();
    let _ = WATCH.set(platform.cpu_watch());
    if let Some(path) = std::env::var_os("TYPE1_TRACE") {
        if let Err(e) = platform.trace_to_path(path.clone()) {
            let msg = format!(
                "type1-preload: TYPE1_TRACE={}: {e}; no trace\n",
                path.to_string_lossy()
            );
            let _ = sys::write_all(2, msg.as_bytes());
        }
    }
    let policy = std::env::var("TYPE1_POLICY").unwrap_or_else(|_| "seed".to_string());
    let shared = SharedHost::new(platform);
    let mut vfio = Vfio::new(shared.clone(), &m.groups, Config::default(), &policy)?;
    let _ = PLATFORM.set(shared);
    vfio.set_dma_access(host_dma);
    Ok(State {
        vfio,
        fds: FdTable::default(),
        busy: BTreeSet::new(),
    })
}

/// Device DMA on the host platform, as `type1-uapi` asks for it.
fn host_dma(
    p: &mut SharedHost,
    domain: DomainId,
    iova: u64,
    buf: &mut [u8],
    to_memory: bool,
) -> Result<(), DmaFault> {
    p.lock()
        .dma(domain, iova, buf, to_memory)
        .map_err(|e| DmaFault {
            iova,
            reason: match e {
                DmaError::Permission => FAULT_PERMISSION,
                DmaError::Unmapped | DmaError::Unreachable => FAULT_UNMAPPED,
            },
        })
}

/// Waits (releasing the lock) until `done` says the state may be used.
fn wait_until(
    mut g: MutexGuard<'static, Option<State>>,
    done: impl Fn(&State) -> bool,
) -> MutexGuard<'static, Option<State>> {
    while g.as_ref().is_some_and(|s| !done(s)) {
        g = RETURNED.wait(g).unwrap_or_else(|p| p.into_inner());
    }
    g
}

/// Runs `f` on the state if it has been built (never builds it), once no container is
/// checked out.
pub(crate) fn with_existing<R>(f: impl FnOnce(&mut State) -> R) -> Option<R> {
    let g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let mut g = wait_until(g, |s| s.busy.is_empty());
    g.as_mut().map(f)
}

/// The state, built on first use, once no container is checked out. `Err` if the
/// configuration is invalid (bad policy).
pub(crate) fn lock() -> Result<MutexGuard<'static, Option<State>>, Errno> {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        *g = Some(build()?);
    }
    Ok(wait_until(g, |s| s.busy.is_empty()))
}

/// The state, once container `id` is not checked out (others may be: an ioctl on one
/// container does not wait for a MAP_DMA on another).
pub(crate) fn lock_container(id: u32) -> Result<MutexGuard<'static, Option<State>>, Errno> {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        *g = Some(build()?);
    }
    Ok(wait_until(g, |s| !s.busy.contains(&id)))
}

/// Runs MAP_DMA or UNMAP_DMA (`req`) on container `id` with the container checked out of the
/// state: the state lock is held only to take it out and put it back, so other containers,
/// groups, devices and memory calls go on meanwhile; calls that need this container wait.
pub(crate) fn container_ioctl_unlocked(
    id: u32,
    req: u64,
    arg: u64,
    caller: &mut dyn Caller,
) -> Result<i64, Errno> {
    let detached = {
        let mut g = lock_container(id)?;
        let s = g.as_mut().ok_or(Errno::EIO)?;
        let d = s.vfio.detach_container(id).ok_or(Errno::EBADF)?;
        s.busy.insert(id);
        d
    };
    let mut detached = detached;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        detached.ioctl(Object::Container(id), req, arg, caller)
    }));
    {
        let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_mut() {
            s.vfio.reattach(detached);
            s.busy.remove(&id);
        }
    }
    RETURNED.notify_all();
    r.unwrap_or(Err(Errno::EIO))
}

/// Whether `fd` is emulated (without building the state).
pub(crate) fn object_of(fd: i32) -> Option<Object> {
    if !maybe_emulated(fd) {
        return None;
    }
    // Only the fd table is read: no need to wait for checked-out containers. An fd closed by
    // a route no hook saw (and maybe reused) answers `None`; `collect_stale` forgets it.
    let g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    g.as_ref().and_then(|s| s.fds.get(&fd).copied())
}

/// Forgets every fd that no longer refers to its file (closed by a route no hook saw), with
/// the consequences of a last close; run before decisions that depend on what is open.
pub(crate) fn collect_stale(s: &mut State) {
    for fd in s.fds.stale() {
        drop_fd(s, fd);
    }
}

/// Forgets `fd`; the object's last close (no other fd refers to it, after `dup`s) has the
/// kernel's consequences.
pub(crate) fn drop_fd(s: &mut State, fd: i32) {
    if let Some(obj) = s.fds.remove(&fd) {
        if !s.fds.refers_to(obj) {
            s.vfio.close(obj);
        }
    }
}

/// `newfd` now refers to what `oldfd` refers to (after a successful `dup*`/`F_DUPFD*`). A
/// `newfd` that was emulated was closed by the call.
pub(crate) fn dup_fd(s: &mut State, oldfd: i32, newfd: i32) {
    if oldfd == newfd {
        return;
    }
    drop_fd(s, newfd);
    if let Some(obj) = s.fds.get(&oldfd).copied() {
        s.fds.insert(newfd, obj);
    }
}

/// The calling process for a container's MAP_DMA and UNMAP_DMA, which only copy from and to
/// user memory (they never look up or install an fd).
pub(crate) struct MemoryCaller;

impl Caller for MemoryCaller {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        sys::read_user(addr, buf)
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        sys::write_user(addr, data)
    }

    fn object_of_fd(&self, _fd: i32) -> Result<Option<Object>, Errno> {
        Err(Errno::EBADF)
    }

    fn new_fd(&mut self, _obj: Object) -> Result<i32, Errno> {
        Err(Errno::EINVAL)
    }
}

/// The calling process for the uAPI layer.
pub(crate) struct ProcessCaller<'a> {
    pub fds: &'a mut FdTable,
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
        // A device already open: the new fd shares its file (one BAR2 memory, one device).
        if let Some(old) = self.fds.fd_of(obj) {
            // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor.
            let r = unsafe { libc::syscall(libc::SYS_fcntl, old, libc::F_DUPFD_CLOEXEC, 0) };
            if r < 0 {
                return Err(Errno(libc::EMFILE));
            }
            self.fds.insert(r as i32, obj);
            return Ok(r as i32);
        }
        let fd = sys::memfd(c"vfio-device", true)?;
        // The device fd's memfd backs BAR2 (device memory): `mmap` and `pread` of the region
        // both reach these bytes.
        // SAFETY: ftruncate on the memfd just created.
        if unsafe { libc::ftruncate(fd, BAR2_SIZE as libc::off_t) } != 0 {
            sys::close(fd);
            return Err(Errno(libc::ENOMEM));
        }
        self.fds.insert(fd, obj);
        Ok(fd)
    }
}

/// The state lock and the platform's, as the forking thread holds them.
type ForkLocks = (
    MutexGuard<'static, Option<State>>,
    Option<MutexGuard<'static, HostPlatform>>,
);

thread_local! {
    /// The locks held by the forking thread from `fork`'s prepare handler to its parent or
    /// child handler.
    static FORK_GUARD: std::cell::RefCell<Option<ForkLocks>> =
        const { std::cell::RefCell::new(None) };
}

extern "C" fn fork_prepare() {
    // No other thread is inside the emulation when fork copies the process (no container is
    // checked out, nobody holds the platform), so the child never starts with a lock held by
    // a thread it does not have. Not when this thread is inside it itself (a fork from a
    // signal handler that interrupted an emulated call).
    if in_hook() {
        return;
    }
    let g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let g = wait_until(g, |s| s.busy.is_empty());
    let p = PLATFORM
        .get()
        .map(|p| p.mutex().lock().unwrap_or_else(|e| e.into_inner()));
    let _ = FORK_GUARD.try_with(|f| *f.borrow_mut() = Some((g, p)));
}

extern "C" fn fork_release() {
    // The platform's lock first (taken last).
    let _ = FORK_GUARD.try_with(|f| {
        if let Some((g, p)) = f.borrow_mut().take() {
            drop(p);
            drop(g);
        }
    });
}

/// Registers the fork handlers (`pthread_atfork`), once, when the library is loaded.
pub(crate) extern "C" fn register_fork_handlers() {
    // SAFETY: three `extern "C" fn()` handlers that live as long as the library.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_release), Some(fork_release));
    }
}

/// Process exit: release everything as the kernel does when the process's fds are closed.
pub(crate) fn release_all() {
    let _ = guarded(|| {
        let g = STATE.lock().unwrap_or_else(|p| p.into_inner());
        let mut g = wait_until(g, |s| s.busy.is_empty());
        if let Some(s) = g.as_mut() {
            s.vfio.release_all();
            s.fds.clear();
        }
        // Dropping the platform closes the trace fd.
        *g = None;
    });
}
