//! The process's connections to the broker (`type1-broker`): connecting (and starting the
//! broker), requests, and the loops that receive the broker's callbacks. What a callback
//! makes this process do (pin, unpin, flush, copy its memory, device DMA on pages it pinned)
//! is [`crate::answer`]'s, installed here at load ([`install`]): this module knows nothing of
//! the process's fd table or host platform, which ask the broker through it.
//!
//! Each process has one *service* connection, answered by a service thread (callbacks caused
//! by other processes, or by a last close no request waited for), and each thread that makes
//! requests has a connection of its own, on which it answers the callbacks of its own
//! requests. All of them are the emulation's internal fds (above the program's, EBADF to its
//! `close`, close-on-exec). A forked child starts with none: it connects again, as a new
//! client, and its pins are its own.
//!
//! The first process that needs the broker starts it: `type1-broker` next to
//! `libtype1_preload.so` (or `TYPE1_BROKER_BIN`), serving `@type1-broker/<uid>/<name>`, where
//! the name is `TYPE1_BROKER` or a digest of the configuration (`TYPE1_MACHINE`,
//! `TYPE1_POLICY`).

use std::cell::RefCell;
use std::ffi::CString;
use std::sync::{Mutex, MutexGuard};
use type1_broker::wire::{self, Callback, Msg, Received, Request, TaskCreds};
use type1_core::Errno;
use type1_host::procfs;
use type1_host::{sock, sys};

/// The service connection of this process: `(pid, client id, fd)`.
static SERVICE: Mutex<Option<(i32, u32, i32)>> = Mutex::new(None);
/// The pid in [`SERVICE`] (0: none), readable without its lock: [`connected`] is asked on the
/// lock-free register path, which a signal handler may enter while this thread holds the lock.
static SERVICE_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// A message to send back: the message, its payload, the fds that go with it.
pub(crate) type Reply = (Msg, Vec<u8>, Vec<i32>);

/// What this process does when the broker calls back, given once at load by the library's
/// constructor (the answering side uses the fd table and the host platform, which make
/// requests through this module: injected, the two do not depend on each other).
#[derive(Clone, Copy)]
pub(crate) struct ProcessSide {
    /// The answer to one callback (its payload, the fds that came with it, and whether some
    /// could not be installed).
    pub answer: fn(Callback, Vec<u8>, Vec<i32>, bool) -> Reply,
    /// A trace line the broker recorded for this process.
    pub trace: fn(&str),
    /// The broker this process used is gone and another serves now: nothing may stay pinned
    /// for the old one's mappings.
    pub broker_replaced: fn(),
    /// Runs first on the service thread, which must never enter the library's hooks.
    pub enter_service: fn(),
}

static SIDE: std::sync::OnceLock<ProcessSide> = std::sync::OnceLock::new();

/// Installs the answering side (once; later calls change nothing).
pub(crate) fn install(side: ProcessSide) {
    let _ = SIDE.set(side);
}

/// Before [`install`] (it never is: the constructor runs before any request can be made)
/// every callback fails with EIO.
fn side() -> ProcessSide {
    SIDE.get().copied().unwrap_or(ProcessSide {
        answer: |_, _, _, _| (Msg::Err(libc::EIO), Vec::new(), Vec::new()),
        trace: |_| {},
        broker_replaced: || {},
        enter_service: || {},
    })
}

/// This thread's request connection: `(pid, fd)`, closed when the thread exits.
struct ReqConn(Option<(i32, i32)>);

impl Drop for ReqConn {
    fn drop(&mut self) {
        if let Some((pid, fd)) = self.0.take() {
            if pid == sys::getpid() {
                sys::close(fd);
            }
        }
    }
}

thread_local! {
    static REQ: RefCell<ReqConn> = const { RefCell::new(ReqConn(None)) };
    /// The broker instance this thread's request connection goes to.
    static REQ_INSTANCE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The broker's socket name for this process's configuration.
pub(crate) fn broker_name() -> String {
    let var = |k: &str| {
        sys::secure_var(k)
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let config = format!(
        "machine={}\npolicy={}",
        var("TYPE1_MACHINE"),
        var("TYPE1_POLICY")
    );
    wire::socket_name(
        sys::secure_var("TYPE1_BROKER")
            .map(|v| v.to_string_lossy().into_owned())
            .as_deref(),
        sys::getuid(),
        &config,
    )
}

/// The broker executable: `TYPE1_BROKER_BIN`, or `type1-broker` in this library's directory
/// (or its parent, for cargo's `deps/`).
fn broker_exe() -> Option<CString> {
    if let Some(p) = sys::secure_var("TYPE1_BROKER_BIN") {
        use std::os::unix::ffi::OsStringExt;
        return CString::new(p.into_vec()).ok();
    }
    // SAFETY: an all-zero Dl_info is a valid value of this plain C struct.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let here = broker_exe as *const libc::c_void;
    // SAFETY: `here` is an address inside this library; `info` is a valid out-parameter.
    if unsafe { libc::dladdr(here, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr filled `dli_fname` with a NUL-terminated path that lives as long as the
    // library.
    let lib = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_bytes();
    let dir = match lib.iter().rposition(|b| *b == b'/') {
        Some(i) => &lib[..i],
        None => b".".as_slice(),
    };
    // Next to the library, or one level up when the library is cargo's copy in `deps/`.
    [b"/type1-broker".as_slice(), b"/../type1-broker".as_slice()]
        .iter()
        .filter_map(|tail| CString::new([dir, tail].concat()).ok())
        .find(|p| sys::executable(p))
}

fn report(msg: &str) {
    let _ = sys::write_all(2, format!("type1-preload: {msg}\n").as_bytes());
}

/// Starts the broker for `name` and waits until it listens (it detaches itself).
fn spawn_broker(name: &str) -> Result<(), Errno> {
    let Some(exe) = broker_exe() else {
        report("cannot locate type1-broker (set TYPE1_BROKER_BIN)");
        return Err(Errno(libc::ENODEV));
    };
    let arg0 = c"type1-broker";
    let arg1 = CString::new(name).map_err(|_| Errno::EINVAL)?;
    let argv = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    // The broker inherits the configuration, never the preload library; in secure-execution
    // mode not even the configuration.
    let secure = sys::secure_execution();
    let env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != "LD_PRELOAD")
        .filter(|(k, _)| !(secure && k.to_string_lossy().starts_with("TYPE1_")))
        .filter_map(|(k, v)| {
            use std::os::unix::ffi::OsStrExt;
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            CString::new(e).ok()
        })
        .collect();
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: an all-zero posix_spawn_file_actions_t is what init expects to initialise.
    let mut fa: libc::posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
    let mut pid: libc::pid_t = 0;
    // SAFETY: `fa` is initialised before use and destroyed after; every string is
    // NUL-terminated and outlives the call; argv and envp are NULL-terminated arrays.
    let r = unsafe {
        libc::posix_spawn_file_actions_init(&mut fa);
        for fd in 0..3 {
            let mode = if fd == 0 {
                libc::O_RDONLY
            } else {
                libc::O_WRONLY
            };
            libc::posix_spawn_file_actions_addopen(&mut fa, fd, c"/dev/null".as_ptr(), mode, 0);
        }
        let r = libc::posix_spawn(
            &mut pid,
            exe.as_ptr(),
            &fa,
            std::ptr::null(),
            argv.as_ptr() as *const *mut libc::c_char,
            envp.as_ptr() as *const *mut libc::c_char,
        );
        libc::posix_spawn_file_actions_destroy(&mut fa);
        r
    };
    if r != 0 {
        report(&format!(
            "cannot start {}: {}",
            exe.to_string_lossy(),
            Errno(r)
        ));
        return Err(Errno(libc::ENODEV));
    }
    // It exits as soon as it listens (its detached child serves).
    let _ = sys::wait_child(pid);
    Ok(())
}

/// How long a connection may take to be accepted and welcomed (a process that took the
/// broker's name and never answers must not hang the program).
const CONNECT_MS: u64 = 5000;

/// Who holds the broker's name, for a message.
fn holders(name: &str) -> String {
    let pids = sock::abstract_holders(name);
    if pids.is_empty() {
        return "another process".to_string();
    }
    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    format!("pid {}", list.join(", pid "))
}

/// A connection that said hello (`client`: `None` for the service connection): its fd, the id
/// the broker answered with and the broker's instance. ESRCH: the broker does not know
/// `client` (it is not the broker that gave the id).
fn connect(client: Option<u32>) -> Result<(i32, u32, u64), Errno> {
    let name = broker_name();
    let mut last = Errno(libc::ECONNREFUSED);
    let mut spawned = false;
    for _ in 0..4 {
        let fd = match sock::connect_abstract_within(&name, CONNECT_MS) {
            Ok(fd) => fd,
            Err(e) if e.0 == libc::ECONNREFUSED => {
                last = e;
                spawn_broker(&name)?;
                spawned = true;
                continue;
            }
            Err(e) if e.0 == libc::ETIMEDOUT => {
                report(&format!(
                    "@{name} is held by {}, whose queue stays full: refusing to wait (set \
                     TYPE1_BROKER to another name)",
                    holders(&name)
                ));
                return Err(Errno::EIO);
            }
            Err(e) => return Err(e),
        };
        let fd = type1_host::uring::move_high(fd);
        // Abstract names belong to nobody: whoever listens there must be this user.
        let peer = sock::peer_cred(fd);
        match peer {
            Ok((_, uid)) if uid == sys::getuid() => {}
            other => {
                sys::close(fd);
                let who =
                    other.map_or_else(|e| e.to_string(), |(p, u)| format!("pid {p}, uid {u}"));
                report(&format!(
                    "@{name} is served by {who}, not by this user: refusing it (set TYPE1_BROKER)"
                ));
                return Err(Errno(libc::EACCES));
            }
        }
        let hello = Msg::Hello {
            pid: sys::getpid(),
            client,
            trace: sys::secure_var("TYPE1_TRACE").is_some(),
        };
        // A broker answers a hello at once; one that does not (a process that took the name
        // and never accepts, or accepts and never answers) gets CONNECT_MS.
        let _ = sock::set_recv_timeout(fd, CONNECT_MS);
        let r = wire::send(fd, &hello, &[], &[]).and_then(|_| wire::recv(fd));
        let _ = sock::set_recv_timeout(fd, 0);
        match r {
            Ok(Received {
                msg: Msg::Welcome(id, instance),
                ..
            }) => return Ok((fd, id, instance)),
            Ok(Received {
                msg: Msg::Err(e), ..
            }) => {
                sys::close(fd);
                return Err(Errno(e));
            }
            Ok(_) => {
                sys::close(fd);
                return Err(Errno::EIO);
            }
            Err(Errno(libc::EAGAIN)) => {
                sys::close(fd);
                let who = peer.map_or_else(|_| holders(&name), |(p, _)| format!("pid {p}"));
                report(&format!(
                    "@{name} is held by {who}, which does not answer: refusing to wait (set \
                     TYPE1_BROKER to another name)"
                ));
                return Err(Errno::EIO);
            }
            Err(e) => {
                // A broker that was exiting as we connected drops us: try again.
                last = e;
                sys::close(fd);
            }
        }
    }
    if spawned && last.0 == libc::ECONNREFUSED {
        report(&format!(
            "@{name} is bound by {}, which does not listen: the broker cannot take the name \
             (set TYPE1_BROKER to another name)",
            holders(&name)
        ));
    } else if matches!(last.0, libc::EPIPE | libc::ECONNRESET) {
        report(&format!(
            "the broker @{name} closed every connection before answering (it serves at most \
             {} connections at once): {last}",
            type1_broker::server::MAX_CONNS
        ));
    } else {
        report(&format!("cannot reach the broker @{name}: {last}"));
    }
    Err(Errno::EIO)
}

thread_local! {
    /// The broker instance of the file the emulated call in progress on this thread is about
    /// (0: none), sent with its requests.
    static FILE_INSTANCE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs `f`, an emulated call about a file of broker instance `instance`: its requests carry
/// the instance, and a broker that is not that one refuses them (EIO).
pub(crate) fn about_file<R>(instance: u64, f: impl FnOnce() -> R) -> R {
    let old = FILE_INSTANCE.try_with(|c| c.replace(instance)).unwrap_or(0);
    let r = f();
    let _ = FILE_INSTANCE.try_with(|c| c.set(old));
    r
}

/// The broker instance this process is a client of now (0: none, or its broker is gone).
static INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The last broker instance this process was a client of (to notice a new one).
static LAST_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The instance of the broker this process is a client of now (0 before it connects).
pub(crate) fn instance() -> u64 {
    INSTANCE.load(std::sync::atomic::Ordering::Acquire)
}

/// This process's client id, connecting (and starting the service thread) on first use, or
/// again after its broker has gone: a new broker is a new machine, so the files of the old
/// one are dead from then on (they answer EIO) and the pages the old one had pinned are
/// released.
pub(crate) fn client_id() -> Result<u32, Errno> {
    let pid = sys::getpid();
    let mut g = lock(&SERVICE);
    if let Some((p, id, _)) = *g {
        if p == pid {
            return Ok(id);
        }
    }
    let (fd, id, inst) = connect(None)?;
    *g = Some((pid, id, fd));
    SERVICE_PID.store(pid, std::sync::atomic::Ordering::Release);
    INSTANCE.store(inst, std::sync::atomic::Ordering::Release);
    let known = LAST_INSTANCE.swap(inst, std::sync::atomic::Ordering::AcqRel);
    drop(g);
    if known != 0 && known != inst {
        // The broker that held this process's mappings is gone, and with it every mapping:
        // nothing may stay pinned for them.
        (side().broker_replaced)();
    }
    let spawned = std::thread::Builder::new()
        .name("type1-service".into())
        .spawn(move || service(fd));
    if spawned.is_err() {
        report("cannot start the service thread");
        return Err(Errno(libc::EAGAIN));
    }
    Ok(id)
}

/// Forgets a service connection whose broker is gone (the next call connects anew). From
/// here on the files of that broker are stale (no instance is current until then).
fn forget_service(fd: i32) {
    let mut g = lock(&SERVICE);
    if let Some((p, _, f)) = *g {
        if f == fd && p == sys::getpid() {
            *g = None;
            SERVICE_PID.store(0, std::sync::atomic::Ordering::Release);
            sys::close(fd);
            INSTANCE.store(0, std::sync::atomic::Ordering::Release);
        }
    }
}

/// Makes sure this process is a client of the broker that is there now (a forked child that
/// has not called yet connects here), so that [`instance`] is current: a file can then be
/// checked against it before anything about it is sent.
pub(crate) fn ensure_current() -> Result<(), Errno> {
    client_id().map(|_| ())
}

/// The service thread: answers the broker's callbacks until the connection closes.
fn service(fd: i32) {
    (side().enter_service)();
    // SAFETY: an all-ones signal set blocks every signal this thread could take; the program's
    // handlers then run on its own threads only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    while let Ok(r) = wire::recv(fd) {
        match r.msg {
            Msg::Cb(cb) => {
                let (m, p, f) = (side().answer)(cb, r.payload, r.fds, r.fds_lost);
                let _ = wire::send(fd, &m, &p, &f);
            }
            Msg::Note(cb) => {
                let _ = (side().answer)(cb, r.payload, r.fds, r.fds_lost);
            }
            Msg::Trace(j) => (side().trace)(&j),
            _ => {
                for f in r.fds {
                    sys::close(f);
                }
            }
        }
    }
    // The broker is gone (or hung up on this process).
    forget_service(fd);
}

/// The caller's credentials for an ioctl; `map`: it is a MAP_DMA, whose pins count against
/// RLIMIT_MEMLOCK together with what the process locked itself.
fn creds(map: bool) -> TaskCreds {
    let cap_ipc_lock = sys::has_cap_ipc_lock();
    TaskCreds {
        cap_ipc_lock,
        memlock_limit_pages: sys::memlock_limit_pages(),
        mlocked_pages: if map && !cap_ipc_lock {
            procfs::status_kb("VmLck").unwrap_or(0) / 4
        } else {
            0
        },
    }
}

/// This thread's request connection; `Ok(None)` when the thread can no longer keep one (its
/// thread-locals are gone: process exit).
fn req_conn() -> Result<Option<i32>, Errno> {
    let id = client_id()?;
    let pid = sys::getpid();
    let r = REQ.try_with(|r| {
        let mut r = r.borrow_mut();
        if let Some((p, fd)) = r.0 {
            if p == pid && REQ_INSTANCE.try_with(|i| i.get()).ok() == Some(instance()) {
                return Ok(fd);
            }
            if p == pid {
                // A connection to a broker that is gone.
                sys::close(fd);
            }
            // (Inherited across fork: the number is not ours to close any more.)
            r.0 = None;
        }
        let mut id = id;
        let mut tries = 0;
        let fd = loop {
            match connect(Some(id)) {
                Ok((fd, _, _)) => break fd,
                // Not a client of this broker: the one that gave the id is gone. Become a
                // client of the new one (which may itself go, unused, before the request
                // connection reaches it: try again a few times).
                Err(Errno(libc::ESRCH)) if tries < 4 => {
                    tries += 1;
                    let stale =
                        lock(&SERVICE).and_then(|(p, i, f)| (p == pid && i == id).then_some(f));
                    if let Some(f) = stale {
                        forget_service(f);
                    }
                    id = client_id()?;
                }
                // No call of the kernel's answers ESRCH: a broker that keeps going away is
                // an I/O error.
                Err(Errno(libc::ESRCH)) => return Err(Errno::EIO),
                Err(e) => return Err(e),
            }
        };
        r.0 = Some((pid, fd));
        let _ = REQ_INSTANCE.try_with(|i| i.set(instance()));
        Ok(fd)
    });
    match r {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}

fn drop_req_conn() {
    let _ = REQ.try_with(|r| {
        if let Some((_, fd)) = r.borrow_mut().0.take() {
            sys::close(fd);
        }
    });
}

/// Sends a request and answers its callbacks until the reply comes; the reply (its errno for
/// an error answer).
pub(crate) fn request(req: Request, payload: &[u8], fds: &[i32]) -> Result<Received, Errno> {
    let (fd, once) = match req_conn()? {
        Some(fd) => (fd, false),
        // (ESRCH: the broker went; no call of the kernel's answers that.)
        None => match connect(Some(client_id()?)) {
            Ok((fd, ..)) => (fd, true),
            Err(Errno(libc::ESRCH)) => return Err(Errno::EIO),
            Err(e) => return Err(e),
        },
    };
    let r = exchange(fd, req, payload, fds);
    if once {
        sys::close(fd);
    } else if r.is_err() {
        // The broker is gone (or spoke nonsense): this connection is of no use.
        drop_req_conn();
    }
    let r = r.map_err(|_| Errno::EIO)?;
    match r.msg {
        Msg::Err(e) | Msg::Failed(e, _) => {
            for f in r.fds {
                sys::close(f);
            }
            Err(Errno(e))
        }
        _ => Ok(r),
    }
}

/// Sends a request and answers its callbacks until the reply comes. `Err`: the connection
/// failed.
fn exchange(fd: i32, req: Request, payload: &[u8], fds: &[i32]) -> Result<Received, Errno> {
    // Only an ioctl can pin (and so needs RLIMIT_MEMLOCK and CAP_IPC_LOCK as of now).
    let creds = match req {
        Request::Ioctl { req, .. } => Some(creds(req == type1_uapi::nr::VFIO_IOMMU_MAP_DMA)),
        _ => None,
    };
    let file = FILE_INSTANCE.try_with(|f| f.get()).unwrap_or(0);
    wire::send(fd, &Msg::Req(creds, file, req), payload, fds)?;
    loop {
        let r = wire::recv_soon(fd)?;
        match r.msg {
            Msg::Cb(cb) => {
                let (m, p, f) = (side().answer)(cb, r.payload, r.fds, r.fds_lost);
                wire::send(fd, &m, &p, &f)?;
            }
            Msg::Note(cb) => {
                let _ = (side().answer)(cb, r.payload, r.fds, r.fds_lost);
            }
            Msg::Trace(j) => (side().trace)(&j),
            _ => return Ok(r),
        }
    }
}

/// A forked child: the connections it inherited are its parent's (their numbers are closed
/// with the rest of the emulation's internal fds); it connects again when it needs to.
pub(crate) fn forget_after_fork() {
    let _ = REQ.try_with(|r| r.borrow_mut().0 = None);
}

/// The service connection's lock (held across `fork`; the child empties it).
pub(crate) fn service_lock() -> MutexGuard<'static, Option<(i32, u32, i32)>> {
    lock(&SERVICE)
}

/// Whether this process has connected to the broker. Takes no lock (a forked child, whose
/// copy names its parent, is not connected).
pub(crate) fn connected() -> bool {
    SERVICE_PID.load(std::sync::atomic::Ordering::Acquire) == sys::getpid()
}
