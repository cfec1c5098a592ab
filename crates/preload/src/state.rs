//! The process's side of the emulation: which of its fds stand for which broker object, its
//! host platform (its own pins, flushes and DMA, `type1-host`), the re-entrancy guard, and the
//! fork handlers.
//!
//! The objects themselves (containers, groups, devices, the engine) live in the broker
//! (`type1-broker`, reached through [`crate::client`]), shared by every process that holds
//! their files, as in the kernel.

use std::{
    cell::Cell,
    collections::HashMap,
    sync::{
        atomic::{AtomicPtr, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
};
use type1_host::fds;

use crate::shared::SharedHost;
use type1_broker::machine::{self, Machine};
use type1_broker::wire::{Msg, Request};
use type1_core::Errno;
use type1_host::{sys, CpuWatch, HostPlatform, PinMode};
use type1_uapi::Object;

pub use type1_broker::machine::{DEFAULT_DEVICES, SYSFS_PCI};

static MACHINE: OnceLock<Machine> = OnceLock::new();

/// The machine: `TYPE1_MACHINE=FILE` or the default. The file is read with raw system calls
/// (no hook runs). An unreadable or invalid file is reported on stderr and leaves a machine
/// with no groups, so that every group open fails with ENOENT.
pub(crate) fn machine() -> &'static Machine {
    MACHINE.get_or_init(|| {
        machine::from_path(sys::secure_var("TYPE1_MACHINE")).unwrap_or_else(|e| {
            let _ = sys::write_all(2, format!("type1-preload: {e}\n").as_bytes());
            machine::empty()
        })
    })
}

/// The fds in the table. Lets every hook on a file that is not ours (the common case) pass
/// through without taking a lock.
static EMULATED_FDS: fds::FdSet = fds::FdSet::new();

/// Whether `fd` may be emulated, without taking a lock: `false` is certain.
pub(crate) fn maybe_emulated(fd: i32) -> bool {
    if fds::FdSet::covers(fd) {
        EMULATED_FDS.contains(fd)
    } else {
        fd >= 0 // beyond the set: ask the table
    }
}

/// The fd → object table, mirrored in [`EMULATED_FDS`]. Each entry remembers the identity
/// (device, inode) of the socket that is the object's file, so that an fd number closed by a
/// route no hook saw (`syscall(SYS_close)`, ...) and reused for a real file is never answered
/// by the emulation.
#[derive(Debug, Default)]
pub(crate) struct FdTable {
    /// fd → (object, identity of its file, the broker instance it belongs to).
    map: HashMap<i32, (Object, (u64, u64), u64)>,
    /// Devices' names, ordinals and BAR2 memory files (internal fds), by device id.
    bars: HashMap<u32, (String, u32, i32)>,
    /// Devices' BAR0 images, shared with the broker (`type1_host::shm`), by device id.
    regs: HashMap<u32, std::sync::Arc<type1_host::shm::SharedMem>>,
}

/// The identity of the file `fd` refers to now.
fn identity(fd: i32) -> Option<(u64, u64)> {
    sys::fstat_id(fd).ok().map(|(dev, ino, _)| (dev, ino))
}

impl FdTable {
    /// The object `fd` stands for, if the fd still refers to its file.
    fn get(&self, fd: i32) -> Option<Object> {
        let (obj, id, _) = self.map.get(&fd)?;
        (identity(fd) == Some(*id)).then_some(*obj)
    }

    /// The broker instance `fd`'s file came from (0: not a known emulated file).
    fn instance_of(&self, fd: i32) -> u64 {
        self.map.get(&fd).map_or(0, |(_, _, inst)| *inst)
    }

    fn insert(&mut self, fd: i32, obj: Object) {
        let Some(id) = identity(fd) else {
            return;
        };
        EMULATED_FDS.set(fd, true);
        self.map.insert(fd, (obj, id, crate::client::instance()));
        if matches!(obj, Object::Device(_)) {
            publish_fast(self);
        }
    }

    fn remove(&mut self, fd: i32) -> Option<Object> {
        EMULATED_FDS.set(fd, false);
        let o = self.map.remove(&fd).map(|(o, _, _)| o);
        if matches!(o, Some(Object::Device(_))) {
            publish_fast(self);
        }
        o
    }

    /// Emulated fds in `[first, last]`.
    fn in_range(&self, first: i32, last: i32) -> Vec<i32> {
        self.map
            .keys()
            .copied()
            .filter(|fd| (first..=last).contains(fd))
            .collect()
    }
}

static TABLE: Mutex<Option<FdTable>> = Mutex::new(None);

fn table() -> MutexGuard<'static, Option<FdTable>> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// One device fd whose register image is mapped here: what a register access needs, readable
/// without a lock (see [`fast_regs`]).
#[derive(Clone, Debug)]
struct FastEntry {
    fd: i32,
    id: (u64, u64),
    instance: u64,
    regs: std::sync::Arc<type1_host::shm::SharedMem>,
}

/// The device fds of [`FastEntry`], published whole: readers load the pointer and never lock,
/// so a register access is re-entrant (a signal handler's access in the middle of another
/// works). A new list replaces the old one under the table lock; old lists are never freed (a
/// reader may still hold one), which costs a small list per change of the device fds: opens,
/// dups and closes of device fds, few in any program.
static FAST: std::sync::atomic::AtomicPtr<Vec<FastEntry>> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Rebuilds [`FAST`] from the table (called with the table locked).
fn publish_fast(t: &FdTable) {
    let list: Vec<FastEntry> = t
        .map
        .iter()
        .filter_map(|(fd, (obj, id, inst))| match obj {
            Object::Device(d) => t.regs.get(d).map(|r| FastEntry {
                fd: *fd,
                id: *id,
                instance: *inst,
                regs: r.clone(),
            }),
            _ => None,
        })
        .collect();
    // Leaked on purpose: see FAST.
    let new = Box::into_raw(Box::new(list));
    FAST.store(new, std::sync::atomic::Ordering::Release);
}

/// The register image behind device fd `fd`, without taking a lock, if `fd` still refers to
/// that device's file and its broker is the current one.
pub(crate) fn fast_regs(fd: i32) -> Option<std::sync::Arc<type1_host::shm::SharedMem>> {
    let p = FAST.load(std::sync::atomic::Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: every list FAST ever points to was leaked by `publish_fast` and is never freed
    // or changed after it is published.
    let list = unsafe { &*p };
    let e = list.iter().find(|e| e.fd == fd)?;
    // Only in a process that is a client now (a forked child goes the slow way until it has
    // connected), of the broker the file belongs to.
    (e.instance == crate::client::instance()
        && crate::client::connected()
        && identity(fd) == Some(e.id))
    .then(|| e.regs.clone())
}

/// The object `fd` stands for, if it is one this process knows and the fd still refers to
/// its file. Takes no lock for the common case (an fd that is not emulated).
pub(crate) fn object_of(fd: i32) -> Option<Object> {
    if !maybe_emulated(fd) {
        return None;
    }
    table().as_ref().and_then(|t| t.get(fd))
}

/// The broker instance `fd`'s file came from (0 if it is not a known emulated file). A file
/// of an instance that is not the current one belongs to a broker that is gone: a new broker
/// is a new machine, so every call on it fails with EIO and nothing is asked about it.
pub(crate) fn instance_of(fd: i32) -> u64 {
    if !maybe_emulated(fd) {
        return 0;
    }
    table().as_ref().map_or(0, |t| t.instance_of(fd))
}

/// [`object_of`], and for an fd this process has not seen (inherited across `exec`,
/// received over `SCM_RIGHTS`, from `pidfd_getfd`): whether it is one of the broker's files.
/// Only sockets are asked about, and only by the calls that need it (VFIO ioctls).
pub(crate) fn object_of_unknown(fd: i32) -> Option<Object> {
    if let Some(o) = object_of(fd) {
        return Some(o);
    }
    sys::fstat_id(fd).ok()?;
    type1_host::sock::socket_inode(fd)?;
    let r = crate::client::request(Request::Identify, &[], &[fd]).ok()?;
    match r.msg {
        Msg::Object(Some(o)) => {
            let o = Object::from(o);
            track(fd, o);
            if let Object::Device(d) = o {
                // Mapped now rather than at some later register access (see the ioctl hook).
                let _ = device_regs(d);
            }
            Some(o)
        }
        _ => None,
    }
}

/// What the process's `fd` is, for the broker: an object, another open file (`None`), or
/// EBADF.
pub(crate) fn object_of_fd(fd: i32) -> Result<Option<Object>, Errno> {
    if let Some(o) = object_of(fd) {
        return Ok(Some(o));
    }
    if sys::fd_open(fd) {
        Ok(None)
    } else {
        Err(Errno::EBADF)
    }
}

/// Records that `fd` (open now) stands for `obj`.
pub(crate) fn track(fd: i32, obj: Object) {
    note_emulated_files();
    let mut g = table();
    let t = g.get_or_insert_with(FdTable::default);
    t.insert(fd, obj);
}

/// Forgets `fd` (about to be closed, or closed by a duplication over it); whether it was
/// emulated.
pub(crate) fn forget(fd: i32) -> bool {
    if !maybe_emulated(fd) {
        return false;
    }
    table().as_mut().and_then(|t| t.remove(fd)).is_some()
}

/// Forgets the emulated fds in `[first, last]`; whether there were any.
pub(crate) fn forget_range(first: i32, last: i32) -> bool {
    let mut g = table();
    let Some(t) = g.as_mut() else {
        return false;
    };
    let fds = t.in_range(first, last);
    for fd in &fds {
        t.remove(*fd);
    }
    !fds.is_empty()
}

/// `newfd` now refers to what `oldfd` refers to (after a successful `dup*`/`F_DUPFD*`); an
/// emulated `newfd` was closed by the call. Whether a file of ours was closed.
pub(crate) fn dup_fd(oldfd: i32, newfd: i32) -> bool {
    if oldfd == newfd {
        return false;
    }
    let mut g = table();
    let t = g.get_or_insert_with(FdTable::default);
    let closed = t.remove(newfd).is_some();
    // `oldfd` still refers to its file, and `newfd` now to the same one.
    // (The duplicate belongs to the same broker instance as the original.)
    if let Some((obj, id, inst)) = t.map.get(&oldfd).copied() {
        EMULATED_FDS.set(newfd, true);
        t.map.insert(newfd, (obj, id, inst));
        if matches!(obj, Object::Device(_)) {
            publish_fast(t);
        }
    }
    closed
}

/// A device's name, its index among the machine's devices, and its BAR2 memory file (-1: the
/// function has none, as an NVMe controller).
pub(crate) fn device_info(dev: u32) -> Result<(String, u32, i32), Errno> {
    if let Some(i) = table().as_ref().and_then(|t| t.bars.get(&dev).cloned()) {
        return Ok(i);
    }
    let r = crate::client::request(Request::DeviceInfo(dev), &[], &[])?;
    let (fd, regs, name, ordinal) = match (r.msg, r.fds.as_slice()) {
        (Msg::Device { name, ordinal }, [bar, regs]) => {
            let fd = type1_host::uring::move_high(*bar);
            let regs = type1_host::shm::SharedMem::map(
                type1_host::uring::move_high(*regs),
                type1_uapi::device::BAR0_SIZE,
            )
            .ok()
            .map(std::sync::Arc::new);
            (fd, regs, name, ordinal)
        }
        (Msg::Device { name, ordinal }, []) => (-1, None, name, ordinal),
        (_, fds) => {
            for f in fds {
                sys::close(*f);
            }
            return Err(Errno::EIO);
        }
    };
    let info = (name, ordinal, fd);
    let mut g = table();
    let t = g.get_or_insert_with(FdTable::default);
    if let Some(old) = t.bars.get(&dev) {
        // Another thread asked at the same time.
        if fd >= 0 {
            sys::close(fd);
        }
        return Ok(old.clone());
    }
    t.bars.insert(dev, info.clone());
    if let Some(m) = regs {
        t.regs.insert(dev, m);
        publish_fast(t);
    }
    Ok(info)
}

/// Device `dev`'s BAR0 image, shared with the broker (asked for once); `None` for a function
/// whose every register access must reach its model (an NVMe controller).
pub(crate) fn device_regs(
    dev: u32,
) -> Result<Option<std::sync::Arc<type1_host::shm::SharedMem>>, Errno> {
    if let Some(m) = table().as_ref().and_then(|t| t.regs.get(&dev).cloned()) {
        return Ok(Some(m));
    }
    device_info(dev)?;
    Ok(table().as_ref().and_then(|t| t.regs.get(&dev).cloned()))
}

/// The emulated fds this process knows.
fn all_fds() -> Vec<i32> {
    table()
        .as_ref()
        .map(|t| t.map.keys().copied().collect())
        .unwrap_or_default()
}

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

thread_local! {
    static DEFERRING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (an emulated call) with the thread's asynchronous signals blocked, then restores
/// the thread's mask: a handler for a signal that arrives meanwhile runs once the call has
/// completed, as the kernel runs handlers on the way back to user space, and a handler's own
/// emulated calls then always work. The synchronous fault signals (SIGSEGV, SIGBUS, SIGFPE,
/// SIGILL, SIGTRAP) stay open, and SIGKILL and SIGSTOP cannot be blocked. Costs two system
/// calls (about 0.35 µs here); nested uses cost nothing.
pub(crate) fn deferring_signals<R>(f: impl FnOnce() -> R) -> R {
    if DEFERRING.try_with(|d| d.replace(true)).unwrap_or(true) {
        return f();
    }
    // SAFETY: sigset_t is a plain C bitmask; all-zero is a valid (empty) value, and the libc
    // calls only write the sets we pass.
    let old = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
        ] {
            libc::sigdelset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    };
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = DEFERRING.try_with(|d| d.set(false));
            // SAFETY: restores the mask saved above; the set lives across the call.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
        }
    }
    let _restore = Restore(old);
    f()
}

/// Marks the calling thread (the emulation's own service thread) as inside the emulation for
/// good: every libc call it makes goes straight through.
pub(crate) fn enter_for_good() {
    let _ = IN_HOOK.try_with(|g| g.set(true));
}

/// The host platform of this process: its pins, flushes and DMA. Rebuilt in a forked child.
static HOST: Mutex<Option<SharedHost>> = Mutex::new(None);

/// The platform's watch: the memory hooks (`munmap`, `mremap`, `madvise`, `ftruncate`, ...)
/// consult the pin records only for ranges it covers, and pass everything else straight
/// through. Read without a lock (a memory hook may run in a signal handler); each platform's
/// watch is leaked, so a pointer read here stays valid for the life of the process.
static WATCH: AtomicPtr<CpuWatch> = AtomicPtr::new(std::ptr::null_mut());

fn build_host() -> Result<SharedHost, Errno> {
    let mut platform = HostPlatform::new(machine().host.clone());
    let pin = sys::secure_var("TYPE1_PIN").map(|v| v.to_string_lossy().into_owned());
    match pin.as_deref() {
        Some("track") => platform.set_pin_mode(PinMode::Track),
        Some("uring") | None => {}
        Some(other) => {
            let msg = format!("type1-preload: TYPE1_PIN={other}: expected uring or track\n");
            let _ = sys::write_all(2, msg.as_bytes());
            return Err(Errno::EINVAL);
        }
    }
    platform.prepare();
    if let Some(path) = sys::secure_var("TYPE1_TRACE") {
        if let Err(e) = platform.trace_to_path(path.clone()) {
            let msg = format!(
                "type1-preload: TYPE1_TRACE={}: {e}; no trace\n",
                path.to_string_lossy()
            );
            let _ = sys::write_all(2, msg.as_bytes());
        }
    }
    let w = Arc::into_raw(platform.cpu_watch()) as *mut CpuWatch;
    WATCH.store(w, Ordering::Release);
    Ok(SharedHost::new(platform))
}

/// The host platform, built on first use. `Err` for an invalid `TYPE1_PIN`.
pub(crate) fn host() -> Result<SharedHost, Errno> {
    let mut g = HOST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = g.as_ref() {
        return Ok(h.clone());
    }
    let h = build_host()?;
    *g = Some(h.clone());
    Ok(h)
}

/// The host platform if it has been built (never builds it).
pub(crate) fn existing_host() -> Option<SharedHost> {
    HOST.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The platform's watch, if the platform has been built.
pub(crate) fn watch() -> Option<&'static CpuWatch> {
    let p = WATCH.load(Ordering::Acquire);
    // SAFETY: a non-null pointer here came from `Arc::into_raw` and is never released.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// The configuration errors the broker would find, reported here (on stderr, and as EINVAL
/// for the open that needs the broker) rather than in a detached process.
pub(crate) fn check_config() -> Result<(), Errno> {
    let policy = sys::secure_var("TYPE1_POLICY")
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| "seed".to_string());
    if type1_core::Container::new(type1_core::Config::default(), &policy).is_err() {
        let msg = format!("type1-preload: TYPE1_POLICY={policy}: expected seed or none\n");
        let _ = sys::write_all(2, msg.as_bytes());
        return Err(Errno::EINVAL);
    }
    host().map(|_| ())
}

/// Waits until the broker has given every file closed so far its last-close consequences (the
/// kernel releases within `close`, and within the `exit` of a child its parent waits for).
pub(crate) fn sync() {
    if crate::client::connected() {
        let _ = crate::client::request(Request::Sync, &[], &[]);
    }
}

/// The locks a fork must not copy while another thread holds them.
type ForkLocks = (
    MutexGuard<'static, Option<FdTable>>,
    MutexGuard<'static, Option<SharedHost>>,
    MutexGuard<'static, Option<(i32, u32, i32)>>,
    Box<dyn std::any::Any>,
);

thread_local! {
    /// The locks held by the forking thread from `fork`'s prepare handler to its parent or
    /// child handler.
    static FORK_GUARD: std::cell::RefCell<Option<ForkLocks>> =
        const { std::cell::RefCell::new(None) };
}

extern "C" fn fork_prepare() {
    // Not when this thread is inside the emulation itself (a fork from a signal handler that
    // interrupted an emulated call): it holds some of these.
    if in_hook() {
        return;
    }
    // A one-time initialisation another thread is running would never finish in the child:
    // wait for it here.
    let _ = guarded(machine);
    let locks = (
        table(),
        HOST.lock().unwrap_or_else(|p| p.into_inner()),
        crate::client::service_lock(),
        Box::new(crate::files::fork_lock()) as Box<dyn std::any::Any>,
    );
    let _ = FORK_GUARD.try_with(|f| *f.borrow_mut() = Some(locks));
}

extern "C" fn fork_parent() {
    let _ = FORK_GUARD.try_with(|f| drop(f.borrow_mut().take()));
}

extern "C" fn fork_child() {
    let _ = FORK_GUARD.try_with(|f| {
        if let Some((t, mut host, mut service, standins)) = f.borrow_mut().take() {
            // The parent's platform describes the parent's pins, held through rings the
            // parent shares with this child: never released from here (that would unpin the
            // parent's pages). Its internal fds are closed below; the child builds its own
            // platform when it needs one.
            if let Some(h) = host.take() {
                std::mem::forget(h);
            }
            WATCH.store(std::ptr::null_mut(), Ordering::Release);
            *service = None;
            let mut t = t;
            if let Some(t) = t.as_mut() {
                // Closed below with the other internal fds. The register images stay
                // mapped (the same files the broker serves the child): only their fds go.
                t.bars.clear();
                for m in t.regs.values() {
                    m.disown_fd();
                }
            }
            drop((t, host, service, standins));
        }
    });
    crate::client::forget_after_fork();
    // The parent's rings, connections, trace and bounce files.
    for fd in fds::internal_in(0, u32::MAX) {
        sys::close(fd as i32);
    }
}

/// Set in the environment once a process of the run has had an emulated file, so that an
/// image it execs (QEMU's live update keeps its VFIO fds) looks for inherited ones at load.
const INHERIT: &str = "TYPE1_INHERIT";

/// Notes in the environment that this process has emulated files (see [`INHERIT`]).
pub(crate) fn note_emulated_files() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os(INHERIT).is_none() {
            // SAFETY: valid NUL-terminated strings. Set once per process, when its first
            // emulated file opens; a program thread reading the environment at that moment
            // is the one race left, as with any setenv.
            unsafe { libc::setenv(c"TYPE1_INHERIT".as_ptr(), c"1".as_ptr(), 1) };
        }
    });
}

/// At load, in an image exec'd by a process that had emulated files: the sockets it
/// inherited that are the broker's files are known from the start, so that `pread`, `mmap`
/// and `read` on them work before any VFIO ioctl names them.
fn adopt_inherited() {
    if sys::secure_var(INHERIT).is_none() {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd: &i32| !fds::internal(*fd))
        .filter(|fd| type1_host::sock::socket_inode(*fd).is_some())
        .collect();
    for fd in fds {
        let _ = object_of_unknown(fd);
    }
}

/// Runs once when the library is loaded: the fork handlers (no lock is held across `fork`),
/// and the emulated files inherited across exec.
pub(crate) extern "C" fn at_load() {
    // SAFETY: three `extern "C" fn()` handlers that live as long as the library.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
    }
    // The machine is known from the start (before any thread could be reading it at a fork).
    let _ = guarded(machine);
    let _ = guarded(adopt_inherited);
}

/// Process exit: every emulated fd is closed, as the kernel does for an exiting process, and
/// the broker gives the files whose last reference this was their consequences while this
/// process can still answer (unpin with its flush, unaccount, trace).
pub(crate) fn release_all() {
    let _ = guarded(|| {
        let fds = all_fds();
        if fds.is_empty() {
            return;
        }
        for fd in fds {
            forget(fd);
            sys::close(fd);
        }
        sync();
    });
}
