//! The broker's server: accepts connections, serves requests with the one [`Vfio`] of the
//! emulated machine, and gives every object its last-close consequences when the last
//! reference to its file goes, in whatever process and by whatever route.
//!
//! Files: every emulated open file is one end of a socket pair whose other end (the *peer*)
//! the broker keeps. The kernel reports `POLLHUP` on the peer once the last descriptor for the
//! file is closed anywhere (close, exit, exec of a close-on-exec fd, a file in flight that is
//! never received), which is exactly when VFIO's release runs. A reaper thread watches the
//! peers; every request first collects the hang-ups already visible, so that a request sent
//! after a `close` returned sees its consequences, as the kernel's synchronous release gives.
//!
//! Threads: one per connection. A container's MAP_DMA and UNMAP_DMA run with the container
//! checked out of the shared state (as the in-process emulation did before the broker), so a
//! long pin in one container does not hold up requests on others.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use type1_core::{Config, Errno};
use type1_host::{sock, sys};
use type1_uapi::{device::BAR2_SIZE, Caller, GroupSpec, Object, Vfio};

use crate::hub::{BrokerPlatform, Hub};
use crate::wire::{self, Callback, Msg, Obj, Request};

/// What the broker emulates.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Groups and their devices.
    pub groups: Vec<GroupSpec>,
    /// IOMMU units and the group → unit map.
    pub host: type1_host::HostConfig,
    /// The NVMe controllers: device names and their namespaces.
    pub nvme: Vec<crate::machine::NvmeSpec>,
    /// Flush policy (`seed`, `none`).
    pub policy: String,
}

struct State {
    vfio: Vfio<BrokerPlatform>,
    busy: BTreeSet<u32>,
    /// BAR2 memory of open devices.
    bars: BTreeMap<u32, i32>,
    /// BAR0 images of open devices, shared with the processes that use them.
    regs: BTreeMap<u32, Arc<RegFile>>,
}

/// A device's BAR0 image in shared memory: the device model's mirror
/// (`type1_uapi::device::Bar0Mirror`), mapped by every process that asked for the device's
/// information, which reads registers and writes the plain ones there without a request.
#[derive(Debug)]
struct RegFile(type1_host::shm::SharedMem);

impl type1_uapi::device::Bar0Mirror for RegFile {
    fn load(&self, off: u64, buf: &mut [u8]) {
        self.0.load(off, buf);
    }

    fn store(&self, off: u64, data: &[u8]) {
        self.0.store(off, data);
    }
}

/// Device `dev`'s shared BAR0 image, made (and given to the model) on first use.
fn regs_of(st: &mut State, dev: u32) -> Result<i32, Errno> {
    if let Some(r) = st.regs.get(&dev) {
        return Ok(r.0.fd());
    }
    let m = type1_host::shm::SharedMem::create(c"type1-bar0", type1_uapi::device::BAR0_SIZE)?;
    let r = Arc::new(RegFile(m));
    st.vfio.set_device_mirror(dev, r.clone())?;
    let fd = r.0.fd();
    st.regs.insert(dev, r);
    Ok(fd)
}

/// One emulated open file.
#[derive(Clone, Copy, Debug)]
struct File {
    /// Unique for the broker's life: a peer's fd number is reused once it is closed, so a
    /// hang-up seen by one thread is matched to its file by this, never by the number.
    id: u64,
    peer: i32,
    obj: Object,
    /// Inode of the process's end.
    ino: u64,
    /// Client that opened it (trace lines of its release go there).
    opener: u32,
    /// The file position (`read`/`write` on a device fd use and advance it).
    pos: u64,
}

/// The broker.
pub struct Server {
    hub: Arc<Hub>,
    state: Mutex<State>,
    returned: Condvar,
    files: Mutex<Vec<File>>,
    next_file: Mutex<u64>,
    /// Connections open, for the decision to exit.
    conns: Mutex<usize>,
    /// Wakes the reaper when the set of files or clients changed.
    wake: (i32, i32),
    /// This broker's identity (random): sent in every `Welcome`.
    instance: u64,
}

/// How long a new connection may take to say hello before it is dropped.
const HELLO_MS: u64 = 2000;
/// Connections served at once; past it a new one is closed at once (its process reports it).
pub const MAX_CONNS: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The requesting process, as `type1-uapi` sees it: its memory and fds through callbacks on
/// the request's connection. Reads inside the read-ahead copy of the argument need no
/// callback; writes are held and go back with the answer (or before a read that needs a
/// callback, so that the process's memory is always as the ioctl left it).
struct RemoteCaller<'a> {
    server: &'a Server,
    client: u32,
    pre_addr: u64,
    pre: Vec<u8>,
    writes: Vec<(u64, Vec<u8>)>,
}

/// Held writes beyond this many bytes are sent at once.
const MAX_HELD: usize = 32 * 1024;

impl RemoteCaller<'_> {
    fn platform(&self) -> BrokerPlatform {
        BrokerPlatform(self.server.hub.clone())
    }

    fn inside_pre(&self, addr: u64, len: usize) -> Option<usize> {
        let off = addr.checked_sub(self.pre_addr)? as usize;
        (off.checked_add(len)? <= self.pre.len()).then_some(off)
    }

    fn send_writes(&mut self) -> Result<(), Errno> {
        let mut p = self.platform();
        for (addr, data) in std::mem::take(&mut self.writes) {
            type1_core::TaskMemory::mm_write(
                &mut p,
                type1_core::MmId(self.client),
                type1_core::Vaddr(addr),
                &data,
            )
            .map_err(|_| Errno::EFAULT)?;
        }
        Ok(())
    }

    /// The held writes, as the answer carries them.
    fn take_writes(&mut self) -> (Vec<(u64, u32)>, Vec<u8>) {
        let mut list = Vec::new();
        let mut bytes = Vec::new();
        for (addr, data) in std::mem::take(&mut self.writes) {
            list.push((addr, data.len() as u32));
            bytes.extend_from_slice(&data);
        }
        (list, bytes)
    }
}

impl Caller for RemoteCaller<'_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if let Some(off) = self.inside_pre(addr, buf.len()) {
            buf.copy_from_slice(&self.pre[off..off + buf.len()]);
            return Ok(());
        }
        self.send_writes()?;
        let mut p = self.platform();
        type1_core::TaskMemory::mm_read(
            &mut p,
            type1_core::MmId(self.client),
            type1_core::Vaddr(addr),
            buf,
        )
        .map_err(|_| Errno::EFAULT)
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        if let Some(off) = self.inside_pre(addr, data.len()) {
            self.pre[off..off + data.len()].copy_from_slice(data);
        }
        self.writes.push((addr, data.to_vec()));
        let held: usize = self.writes.iter().map(|(_, d)| d.len()).sum();
        if held > MAX_HELD {
            self.send_writes()?;
        }
        Ok(())
    }

    fn object_of_fd(&self, fd: i32) -> Result<Option<Object>, Errno> {
        let r = self
            .server
            .hub
            .call(self.client, Callback::FdObject(fd), &[], &[])?;
        // A file the process could not name is sent along: recognised by its inode.
        let by_inode = r.fds.first().and_then(|f| {
            let ino = sock::socket_inode(*f)?;
            lock(&self.server.files)
                .iter()
                .find(|x| x.ino == ino)
                .map(|x| x.obj)
        });
        for f in &r.fds {
            sys::close(*f);
        }
        match r.msg.ok()? {
            Msg::Object(Some(o)) => Ok(Some(Object::from(o))),
            Msg::Object(None) => Ok(by_inode),
            _ => Err(Errno::EBADF),
        }
    }

    fn event_fd(&mut self, fd: i32) -> Result<std::fs::File, Errno> {
        let r = self
            .server
            .hub
            .call(self.client, Callback::SendFd(fd), &[], &[])?;
        let got = r.fds.first().copied();
        for f in r.fds.iter().skip(1) {
            sys::close(*f);
        }
        r.msg.ok()?;
        let f = got.ok_or(Errno::EBADF)?;
        Ok(sys::own(f))
    }

    fn new_fd(&mut self, obj: Object) -> Result<i32, Errno> {
        let end = self.server.new_file(obj, self.client)?;
        let r = self
            .server
            .hub
            .call(self.client, Callback::NewFd(obj.into()), &[], &[end]);
        sys::close(end);
        match r?.msg.ok()? {
            Msg::Value(fd) => Ok(fd as i32),
            _ => Err(Errno::EIO),
        }
    }
}

impl Server {
    /// A broker for `cfg`.
    pub fn new(cfg: &BrokerConfig) -> Result<Server, Errno> {
        let hub = Arc::new(Hub::new(cfg.host.clone()));
        let mut vfio = Vfio::new(
            BrokerPlatform(hub.clone()),
            &cfg.groups,
            Config::default(),
            &cfg.policy,
        )?;
        for n in &cfg.nvme {
            let store = crate::nvme::FileStore::new(n.path.clone(), n.bytes);
            vfio.add_nvme(&n.device, Arc::new(store));
        }
        let wake = sock::seqpacket_pair()?;
        Ok(Server {
            hub,
            state: Mutex::new(State {
                vfio,
                busy: BTreeSet::new(),
                bars: BTreeMap::new(),
                regs: BTreeMap::new(),
            }),
            returned: Condvar::new(),
            files: Mutex::new(Vec::new()),
            next_file: Mutex::new(0),
            conns: Mutex::new(0),
            wake,
            instance: sys::random_u64() | 1,
        })
    }

    fn poke(&self) {
        let _ = sock::send(self.wake.0, b"w", &[]);
    }

    /// The state once `ok` says it may be used (no container it needs is checked out).
    fn state_when(&self, ok: impl Fn(&State) -> bool) -> MutexGuard<'_, State> {
        let mut g = lock(&self.state);
        while !ok(&g) {
            g = self.returned.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g
    }

    /// A new file for `obj`: the process's end (to send; the caller closes its copy).
    fn new_file(&self, obj: Object, opener: u32) -> Result<i32, Errno> {
        let (peer, end) = sock::seqpacket_pair()?;
        // Nothing is ever sent to the process's end: a raw `read` of it (a program that
        // bypasses the library) gets end-of-file, not a wait forever.
        let _ = sock::shutdown_write(peer);
        let ino = sock::socket_inode(end).ok_or(Errno::EIO)?;
        let peer = type1_host::uring::move_high(peer);
        let id = {
            let mut n = lock(&self.next_file);
            *n += 1;
            *n
        };
        lock(&self.files).push(File {
            id,
            peer,
            obj,
            ino,
            opener,
            pos: 0,
        });
        self.poke();
        Ok(end)
    }

    /// Gives every file whose last reference has gone its last-close consequences.
    /// `blocking`: wait for a checked-out container to come back (requests); the reaper
    /// only collects what needs no container that is out.
    fn collect(&self) {
        let files: Vec<(u64, i32)> = lock(&self.files).iter().map(|f| (f.id, f.peer)).collect();
        if files.is_empty() {
            return;
        }
        let polls: Vec<(i32, i16)> = files.iter().map(|(_, p)| (*p, 0)).collect();
        let Ok(rev) = sock::poll(&polls, 0) else {
            return;
        };
        let hung: Vec<u64> = files
            .iter()
            .zip(rev)
            .filter(|(_, r)| r & (libc::POLLHUP | libc::POLLERR) != 0)
            .map(|((id, _), _)| *id)
            .collect();
        for id in hung {
            self.file_closed(id);
        }
    }

    fn file_closed(&self, id: u64) {
        let mut st = self.state_when(|s| s.busy.is_empty());
        let (file, last) = {
            let mut files = lock(&self.files);
            // Another thread may have handled it already (and its peer's number may now
            // belong to a new file).
            let Some(i) = files.iter().position(|f| f.id == id) else {
                return;
            };
            let f = files.swap_remove(i);
            let last = !files.iter().any(|g| g.obj == f.obj);
            (f, last)
        };
        sys::close(file.peer);
        if last {
            self.hub.tracing_to(file.opener, || st.vfio.close(file.obj));
            if let Object::Device(d) = file.obj {
                if let Some(fd) = st.bars.remove(&d) {
                    sys::close(fd);
                }
                st.regs.remove(&d);
            }
        }
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        *lock(&self.conns)
    }

    /// Serves one connection until it closes.
    pub fn serve(self: &Arc<Self>, fd: i32) {
        *lock(&self.conns) += 1;
        let service = self.serve_conn(fd);
        if !service {
            sys::close(fd);
        }
        *lock(&self.conns) -= 1;
        self.poke();
    }

    /// Returns whether the connection became a service connection (kept by the hub).
    fn serve_conn(self: &Arc<Self>, fd: i32) -> bool {
        // A connection that never says hello holds nothing for long.
        if sock::set_recv_timeout(fd, HELLO_MS).is_err() {
            return false;
        }
        let Ok(hello) = wire::recv(fd) else {
            return false;
        };
        if sock::set_recv_timeout(fd, 0).is_err() {
            return false;
        }
        let client = match hello.msg {
            Msg::Hello {
                pid,
                client: None,
                trace,
            } => {
                let id = self.hub.add_client(pid, fd, trace);
                let _ = wire::send(fd, &Msg::Welcome(id, self.instance), &[], &[]);
                self.poke();
                // The service connection now belongs to the hub; the reaper sees it close.
                *lock(&self.conns) += 1;
                return true;
            }
            Msg::Hello {
                client: Some(id), ..
            } => id,
            _ => return false,
        };
        // A request connection belongs to a client of this broker, from that very process
        // (the kernel's word for the peer, not the hello's): a process that claims another's
        // id, or an id of a broker that is gone, is told so and dropped.
        let peer = sock::peer_cred(fd).map(|(pid, _)| pid).ok();
        if peer.is_none() || self.hub.client_pid(client) != peer {
            let _ = wire::send(fd, &Msg::Err(libc::ESRCH), &[], &[]);
            return false;
        }
        if wire::send(fd, &Msg::Welcome(client, self.instance), &[], &[]).is_err() {
            return false;
        }
        loop {
            let Ok(r) = wire::recv_soon(fd) else {
                return false;
            };
            let Msg::Req(creds, instance, req) = r.msg else {
                for f in r.fds {
                    sys::close(f);
                }
                continue;
            };
            let (reply, payload, fds) = if instance != 0 && instance != self.instance {
                // A file of a broker that is gone: nothing here is its object.
                (Msg::Err(libc::EIO), Vec::new(), Vec::new())
            } else {
                self.hub.serving(client, fd, creds, || {
                    self.request(client, req, &r.payload, &r.fds)
                })
            };
            for f in r.fds {
                sys::close(f);
            }
            let _ = wire::send(fd, &reply, &payload, &fds);
            for f in fds {
                sys::close(f);
            }
        }
    }

    fn request(
        &self,
        client: u32,
        req: Request,
        payload: &[u8],
        fds: &[i32],
    ) -> (Msg, Vec<u8>, Vec<i32>) {
        // Hang-ups first (a file closed by a route no hook saw is released before what comes
        // next). A register access of an open device cannot see a release: it goes straight on.
        if !matches!(req, Request::DeviceRw { .. }) {
            self.collect();
        }
        let err = |e: Errno| (Msg::Err(e.0), Vec::new(), Vec::new());
        match req {
            Request::Sync => {
                // A release the reaper started holds the state until it is over; its trace
                // lines went to the service connection, written by the time this returns.
                drop(self.state_when(|s| s.busy.is_empty()));
                self.hub.drain_service();
                (Msg::Value(0), Vec::new(), Vec::new())
            }
            // A new container or iommufd, a group's open flag, a device cdev: nothing a
            // checked-out container holds, so a long MAP_DMA elsewhere does not hold up an
            // open.
            Request::Open(None) => self.open(client, |v| Ok(v.open_container())),
            Request::Open(Some(n)) => self.open(client, |v| v.open_group(n)),
            Request::OpenIommu => self.open(client, |v| Ok(v.open_iommufd())),
            Request::OpenCdev(name) => self.open(client, |v| v.open_cdev(&name)),
            Request::Identify => {
                let found = fds.first().and_then(|fd| {
                    let ino = sock::socket_inode(*fd)?;
                    lock(&self.files)
                        .iter()
                        .find(|f| f.ino == ino)
                        .map(|f| f.obj)
                });
                (Msg::Object(found.map(Obj::from)), Vec::new(), Vec::new())
            }
            Request::Ioctl { obj, req, arg, pre } => {
                let obj = Object::from(obj);
                let mut caller = RemoteCaller {
                    server: self,
                    client,
                    pre_addr: pre,
                    pre: payload.to_vec(),
                    writes: Vec::new(),
                };
                let long = req == type1_uapi::nr::VFIO_IOMMU_MAP_DMA
                    || req == type1_uapi::nr::VFIO_IOMMU_UNMAP_DMA;
                let r = match obj {
                    Object::Container(id) if long => {
                        self.container_unlocked(id, req, arg, &mut caller)
                    }
                    Object::Container(id) => {
                        let mut st = self.state_when(|s| !s.busy.contains(&id));
                        st.vfio.ioctl(obj, req, arg, &mut caller)
                    }
                    _ => {
                        let mut st = self.state_when(|s| s.busy.is_empty());
                        st.vfio.ioctl(obj, req, arg, &mut caller)
                    }
                };
                let (writes, bytes) = caller.take_writes();
                let v = match r {
                    Ok(v) => v,
                    Err(e) => -i64::from(e.0),
                };
                (Msg::Done(v, writes), bytes, Vec::new())
            }
            Request::DeviceRw {
                dev,
                pos,
                file,
                len,
                write,
            } => {
                let mut st = self.state_when(|s| s.busy.is_empty());
                let at = match pos {
                    Some(p) => p,
                    None => match lock(&self.files).iter().find(|f| f.ino == file) {
                        Some(f) => f.pos,
                        None => return err(Errno::EBADF),
                    },
                };
                let mut buf = if write {
                    payload.to_vec()
                } else {
                    vec![0u8; (len as usize).min(wire::MAX_COPY)]
                };
                let dma_engine = st.vfio.device(dev).and_then(|m| m.dma_engine()).is_some();
                let r = match bar2_offset(at).filter(|_| dma_engine) {
                    Some(off) => match bar_of(&mut st, dev) {
                        Ok(fd) => bar2_rw(fd, &mut buf, off, write),
                        Err(e) => Err(e),
                    },
                    None => st.vfio.device_rw(dev, at, &mut buf, write),
                };
                if let (Ok(n), None) = (&r, pos) {
                    if let Some(f) = lock(&self.files).iter_mut().find(|f| f.ino == file) {
                        f.pos = at + *n as u64;
                    }
                }
                match r {
                    Ok(n) if write => (Msg::Value(n as i64), Vec::new(), Vec::new()),
                    Ok(n) => {
                        buf.truncate(n);
                        (Msg::Data, buf, Vec::new())
                    }
                    Err(e) => err(e),
                }
            }
            Request::DeviceInfo(dev) => {
                let mut st = self.state_when(|s| s.busy.is_empty());
                let Some(name) = st.vfio.device_name(dev).map(str::to_string) else {
                    return err(Errno::EBADF);
                };
                let ordinal = st
                    .vfio
                    .device_names()
                    .iter()
                    .position(|d| *d == name)
                    .unwrap_or(0) as u32;
                // An NVMe function has no BAR2 and nothing to share of BAR0: every register
                // access reaches its model.
                if st.vfio.device(dev).and_then(|m| m.dma_engine()).is_none() {
                    return (Msg::Device { name, ordinal }, Vec::new(), Vec::new());
                }
                let files = bar_of(&mut st, dev).and_then(|b| Ok((b, regs_of(&mut st, dev)?)));
                let (bar, regs) = match files {
                    Ok(f) => f,
                    Err(e) => return err(e),
                };
                // Sent as duplicates the reply's sender may close.
                match dup(bar) {
                    Ok(d) => match dup(regs) {
                        Ok(r) => (Msg::Device { name, ordinal }, Vec::new(), vec![d, r]),
                        Err(e) => {
                            sys::close(d);
                            err(e)
                        }
                    },
                    Err(e) => err(e),
                }
            }
        }
    }

    /// An open: the object `make` opens, handed to the client as a new file (closed again if
    /// the file cannot be made).
    fn open(
        &self,
        client: u32,
        make: impl FnOnce(&mut Vfio<BrokerPlatform>) -> Result<Object, Errno>,
    ) -> (Msg, Vec<u8>, Vec<i32>) {
        let mut st = lock(&self.state);
        let obj = match make(&mut st.vfio) {
            Ok(o) => o,
            Err(e) => return (Msg::Err(e.0), Vec::new(), Vec::new()),
        };
        match self.new_file(obj, client) {
            Ok(end) => (Msg::Opened(obj.into()), Vec::new(), vec![end]),
            Err(e) => {
                st.vfio.close(obj);
                (Msg::Err(e.0), Vec::new(), Vec::new())
            }
        }
    }

    /// MAP_DMA or UNMAP_DMA with container `id` checked out of the state.
    fn container_unlocked(
        &self,
        id: u32,
        req: u64,
        arg: u64,
        caller: &mut dyn Caller,
    ) -> Result<i64, Errno> {
        let mut detached = {
            let mut st = self.state_when(|s| !s.busy.contains(&id));
            let d = st.vfio.detach_container(id).ok_or(Errno::EBADF)?;
            st.busy.insert(id);
            d
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            detached.ioctl(Object::Container(id), req, arg, caller)
        }));
        {
            let mut st = lock(&self.state);
            st.vfio.reattach(detached);
            st.busy.remove(&id);
        }
        self.returned.notify_all();
        r.unwrap_or(Err(Errno::EIO))
    }

    /// The reaper: collects hang-ups of files and of service connections, and decides when
    /// the broker exits (no connection and no file left for `linger_ms`).
    pub fn reap(self: &Arc<Self>, linger_ms: i32) -> ! {
        let mut idle_since: Option<std::time::Instant> = None;
        loop {
            let services = self.hub.service_fds();
            let mut polls: Vec<(i32, i16)> = vec![(self.wake.1, libc::POLLIN)];
            polls.extend(services.iter().map(|(_, fd)| (*fd, libc::POLLRDHUP)));
            let files: Vec<(u64, i32)> = lock(&self.files).iter().map(|f| (f.id, f.peer)).collect();
            polls.extend(files.iter().map(|(_, p)| (*p, 0)));
            let idle = *lock(&self.conns) == 0 && files.is_empty();
            let timeout = if idle { linger_ms.max(1) } else { -1 };
            let rev = sock::poll(&polls, timeout).unwrap_or_default();
            if rev.first().is_some_and(|r| r & libc::POLLIN != 0) {
                let mut b = [0u8; 64];
                let _ = sock::recv(self.wake.1, &mut b);
            }
            for (i, (client, _)) in services.iter().enumerate() {
                let r = rev.get(1 + i).copied().unwrap_or(0);
                if r & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
                    self.hub.client_gone(*client);
                    *lock(&self.conns) -= 1;
                }
            }
            let base = 1 + services.len();
            for (i, (id, _)) in files.iter().enumerate() {
                let r = rev.get(base + i).copied().unwrap_or(0);
                if r & (libc::POLLHUP | libc::POLLERR) != 0 {
                    self.file_closed(*id);
                }
            }
            let idle = *lock(&self.conns) == 0 && lock(&self.files).is_empty();
            match (idle, idle_since) {
                (false, _) => idle_since = None,
                (true, None) => idle_since = Some(std::time::Instant::now()),
                (true, Some(t)) if t.elapsed().as_millis() as i32 >= linger_ms => {
                    std::process::exit(0)
                }
                _ => {}
            }
        }
    }
}

/// The BAR2 memory file of device `dev`, made on first use.
fn bar_of(st: &mut State, dev: u32) -> Result<i32, Errno> {
    if let Some(fd) = st.bars.get(&dev) {
        return Ok(*fd);
    }
    let fd = bar_memory()?;
    st.bars.insert(dev, fd);
    Ok(fd)
}

/// The offset inside BAR2 of device file offset `pos`, if it lies in BAR2's region.
pub fn bar2_offset(pos: u64) -> Option<u64> {
    use type1_uapi::device::{region_offset, BAR2_INDEX};
    let base = region_offset(BAR2_INDEX);
    (pos >= base && pos < region_offset(BAR2_INDEX + 1)).then(|| pos - base)
}

/// BAR2 bytes at `off`: the device's memory file, which `mmap` of the region shows too.
/// Nothing past the BAR's end (0 bytes).
fn bar2_rw(fd: i32, buf: &mut Vec<u8>, off: u64, write: bool) -> Result<usize, Errno> {
    if off >= BAR2_SIZE {
        buf.clear();
        return Ok(0);
    }
    let n = buf.len().min((BAR2_SIZE - off) as usize);
    buf.truncate(n);
    if write {
        sys::pwrite(fd, buf, off)
    } else {
        sys::pread(fd, buf, off)
    }
}

fn bar_memory() -> Result<i32, Errno> {
    let fd = sys::memfd(c"vfio-bar2", true)?;
    if let Err(e) = sys::ftruncate(fd, BAR2_SIZE) {
        sys::close(fd);
        return Err(e);
    }
    Ok(type1_host::uring::move_high(fd))
}

fn dup(fd: i32) -> Result<i32, Errno> {
    sys::dup_cloexec(fd)
}
