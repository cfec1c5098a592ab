//! [`Hub`]: the broker's view of the processes it serves, and [`BrokerPlatform`], the
//! `type1_core::Platform` the engine runs on inside the broker.
//!
//! The IOMMU (domains, page tables) is the broker's own: a `type1_host::HostPlatform` that
//! never pins anything. Everything about memory happens in the process that owns it, through
//! callbacks (`wire::Callback`): pinning, unpinning, flushing, copies to and from user memory,
//! and device DMA the broker cannot do through its own hold on the process's ring. The
//! locked-memory books are kept here, per process (`platform.rs`). A callback for the process whose request the
//! broker thread is serving goes over that request's connection (the requesting thread answers
//! it); one for another process goes over that process's service connection.
//!
//! Frames: each process numbers the frames it pins itself. The broker gives every pinned run
//! a range of its own bus frames (congruent to the process's modulo 1 GiB, so that large
//! IOMMU pages stay possible) and remembers whose frames they are (`frames.rs`); the platform
//! the engine sees is in `platform.rs`.
//!
//! Locks, and the only orders in which two are ever held together:
//! * `Hub::iommu`, `Hub::frames`, `Hub::clients` and `Hub::next_client` are leaves: each is
//!   held for one lookup or one change and released before any other lock is taken;
//! * `Hub::bounce` → `HeldRing::taken` (a transfer through a held ring);
//! * `Client::locked_vm` → `Client::creds` (the charge next to what the process mlocked);
//! * `Client::fd` → `Hub::traced` (a note or trace line sent on a service connection). A
//!   `Client::fd` is held across one callback's round trip: a process that stops answering
//!   holds up the callbacks to it, as a stuck page fault would in the kernel.
//!
//! A poisoned lock is taken anyway (`lock`): every critical section here leaves its data
//! whole before it calls anything that can panic. A broker thread that panics loses its
//! connection (its process sees EIO); the others go on with the data as it was left.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use type1_core::{CacheMaintenance, EmulatedDevices, Iommu, TaskMemory, Tracing};
use type1_core::{
    DeviceId, DmaFault, DomainId, DomainInfo, Errno, Event, GroupId, GroupInfo, MemType, MmId,
    PinnedPage, PlatformError, Prot, Task, PAGE_SIZE,
};
use type1_host::uring::{Dir, Ring};
use type1_host::{sys, HostConfig, HostPlatform};

use crate::wire::{self, Callback, FrameRun, Msg, Received, RingRef, TaskCreds};

mod frames;
mod platform;

use frames::*;
pub use platform::{BrokerPlatform, BROKER_PIN_BATCH};

const PAGE_SHIFT: u32 = 12;

/// A ring of a process, held by the broker too (a `pidfd_getfd` duplicate): the pages it
/// pins then outlive the process, as VFIO's pins outlive the mm that made them (exit, or
/// `exec` as in QEMU's live update), until their mapping is unmapped.
#[derive(Debug)]
pub struct HeldRing {
    fd: i32,
    /// The ring mapped here, once its process is gone and the broker reaches the pages itself.
    taken: Mutex<Option<Ring>>,
}

impl HeldRing {
    fn with_ring<R>(&self, f: impl FnOnce(&mut Ring) -> R) -> Option<R> {
        let mut g = lock(&self.taken);
        if g.is_none() {
            let dup = sys::dup_cloexec(self.fd).ok()?;
            *g = Ring::adopt(dup).ok();
        }
        g.as_mut().map(f)
    }
}

impl Drop for HeldRing {
    fn drop(&mut self) {
        // The mapped ring (if any) closes its own duplicate.
        sys::close(self.fd);
    }
}

/// A process's service connection.
#[derive(Debug)]
pub struct Client {
    /// Process id (as it was when it connected).
    pub pid: i32,
    /// The connection; `None` once the process is gone.
    fd: Mutex<Option<i32>>,
    /// Whether it wants trace lines.
    trace: bool,
    /// Pages charged to its locked memory (the kernel's `mm->locked_vm` for VFIO's pins).
    locked_vm: Mutex<u64>,
    /// Its credentials as of its latest request.
    creds: Mutex<TaskCreds>,
    /// A pidfd on it (to take its rings), if it could be opened.
    pidfd: Option<i32>,
    /// Its rings the broker holds, by the process's fd number (a process never closes a ring
    /// while it lives, so numbers are not reused).
    rings: Mutex<BTreeMap<i32, Arc<HeldRing>>>,
}

/// The request a broker thread is serving.
#[derive(Clone, Copy, Debug)]
struct Current {
    client: u32,
    fd: i32,
    creds: TaskCreds,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
    /// Where trace lines go when no request is being served (a release caused by a last close
    /// that no request waited for): the client that opened the file.
    static TRACE_TO: RefCell<Option<u32>> = const { RefCell::new(None) };
}

/// Consecutive DMA segments held by one ring: the ring, `(slot, addr, len)` of each, and
/// their bytes.
type HeldBatch = (Option<Arc<HeldRing>>, Vec<(u32, u64, usize)>, usize);

/// How a batch of held pieces moves, which bounds it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Through the bounce pipe: page-sized pieces, at most what a pipe holds by default
    /// (16 pages).
    Pipe,
    /// Straight between a file and the pages: a piece that continues the previous one in its
    /// buffer joins its request, up to a ring's batch of requests.
    File,
}

impl Via {
    /// `(requests, bytes)` a batch holds at most.
    fn limits(self) -> (usize, usize) {
        match self {
            Via::Pipe => (16, 16 * PAGE_SIZE as usize),
            Via::File => (type1_host::uring::BATCH, 1 << 24),
        }
    }
}

/// The processes served and the machine's IOMMU.
#[derive(Debug)]
pub struct Hub {
    iommu: Mutex<HostPlatform>,
    clients: Mutex<BTreeMap<u32, Arc<Client>>>,
    frames: Mutex<Frames>,
    next_client: Mutex<u32>,
    /// The bounce pipe of transfers through held rings (held for the whole transfer).
    bounce: Mutex<Option<(i32, i32)>>,
    /// Clients sent notes or trace lines on their service connection since the last drain.
    traced: Mutex<std::collections::BTreeSet<u32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// A hub for a machine with `cfg`'s IOMMU units and groups.
    pub fn new(cfg: HostConfig) -> Hub {
        Hub {
            iommu: Mutex::new(HostPlatform::new(cfg)),
            clients: Mutex::new(BTreeMap::new()),
            frames: Mutex::new(Frames::default()),
            next_client: Mutex::new(0),
            bounce: Mutex::new(None),
            traced: Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    /// Registers a process's service connection; its client id.
    pub fn add_client(&self, pid: i32, fd: i32, trace: bool) -> u32 {
        // The kernel's word for who is at the other end, not the process's.
        let pid = type1_host::sock::peer_cred(fd).map_or(pid, |(p, _)| p);
        let pidfd = sys::pidfd_open(pid).ok();
        let id = {
            let mut n = lock(&self.next_client);
            *n += 1;
            *n
        };
        lock(&self.clients).insert(
            id,
            Arc::new(Client {
                pid,
                fd: Mutex::new(Some(fd)),
                trace,
                locked_vm: Mutex::new(0),
                creds: Mutex::new(TaskCreds {
                    cap_ipc_lock: false,
                    memlock_limit_pages: u64::MAX,
                    mlocked_pages: 0,
                }),
                pidfd,
                rings: Mutex::new(BTreeMap::new()),
            }),
        );
        id
    }

    /// The service connections (for the reaper to watch).
    pub fn service_fds(&self) -> Vec<(u32, i32)> {
        lock(&self.clients)
            .iter()
            .filter_map(|(id, c)| lock(&c.fd).map(|fd| (*id, fd)))
            .collect()
    }

    /// A process's service connection closed: it has exited (or exec'd). Its frames stay in
    /// the engine's mappings until they are unmapped, but nothing reaches them any more.
    pub fn client_gone(&self, id: u32) {
        let c = lock(&self.clients).remove(&id);
        if let Some(c) = c {
            if let Some(fd) = lock(&c.fd).take() {
                type1_host::sys::close(fd);
            }
            if let Some(p) = c.pidfd {
                sys::close(p);
            }
        }
    }

    /// The broker's hold on the ring `r` names in `client`, taken on first sight.
    fn hold_ring(&self, client: u32, r: RingRef) -> Option<(Arc<HeldRing>, u32, u64)> {
        let c = self.client(client)?;
        let mut rings = lock(&c.rings);
        let ring = match rings.get(&r.fd) {
            Some(h) => h.clone(),
            None => {
                let fd = sys::pidfd_getfd(c.pidfd?, r.fd).ok()?;
                let h = Arc::new(HeldRing {
                    fd,
                    taken: Mutex::new(None),
                });
                rings.insert(r.fd, h.clone());
                h
            }
        };
        Some((ring, r.slot, r.addr))
    }

    /// The bounce pipe for the broker's own transfers through held rings, locked.
    fn bounce(&self) -> Option<MutexGuard<'_, Option<(i32, i32)>>> {
        let mut b = lock(&self.bounce);
        if b.is_none() {
            *b = Some(sys::pipe_nonblock().ok()?);
        }
        Some(b)
    }

    /// The process id of client `id`, if it is one.
    pub fn client_pid(&self, id: u32) -> Option<i32> {
        self.client(id).map(|c| c.pid)
    }

    fn client(&self, id: u32) -> Option<Arc<Client>> {
        lock(&self.clients).get(&id).cloned()
    }

    /// Whether client `id` is connected.
    pub fn alive(&self, id: u32) -> bool {
        lock(&self.clients).contains_key(&id)
    }

    /// Serves a request of `client` on connection `fd` with credentials `creds` (`None`: as of
    /// its latest request that carried them): callbacks for that client go over `fd` while
    /// `f` runs.
    pub fn serving<R>(
        &self,
        client: u32,
        fd: i32,
        creds: Option<TaskCreds>,
        f: impl FnOnce() -> R,
    ) -> R {
        let creds = match (self.client(client), creds) {
            (Some(c), Some(creds)) => {
                *lock(&c.creds) = creds;
                creds
            }
            (Some(c), None) => *lock(&c.creds),
            (None, creds) => creds.unwrap_or(TaskCreds {
                cap_ipc_lock: false,
                memlock_limit_pages: 0,
                mlocked_pages: 0,
            }),
        };
        let old = CURRENT.with(|c| c.replace(Some(Current { client, fd, creds })));
        let r = f();
        CURRENT.with(|c| *c.borrow_mut() = old);
        r
    }

    /// Runs `f` with trace lines going to `client` when no request is being served.
    pub fn tracing_to<R>(&self, client: u32, f: impl FnOnce() -> R) -> R {
        let old = TRACE_TO.with(|c| c.replace(Some(client)));
        let r = f();
        TRACE_TO.with(|c| *c.borrow_mut() = old);
        r
    }

    fn current() -> Option<Current> {
        CURRENT.with(|c| *c.borrow())
    }

    /// Sends `cb` to `client` and waits for the answer. ESRCH if the process is gone.
    pub fn call(
        &self,
        client: u32,
        cb: Callback,
        payload: &[u8],
        fds: &[i32],
    ) -> Result<Received, Errno> {
        let msg = Msg::Cb(cb);
        if let Some(cur) = Self::current().filter(|c| c.client == client) {
            wire::send(cur.fd, &msg, payload, fds)?;
            return wire::recv_soon(cur.fd);
        }
        let c = lock(&self.clients)
            .get(&client)
            .cloned()
            .ok_or(Errno(libc::ESRCH))?;
        let g = lock(&c.fd);
        let fd = g.ok_or(Errno(libc::ESRCH))?;
        wire::send(fd, &msg, payload, fds)?;
        wire::recv_soon(fd)
    }

    /// The client trace lines go to now (the request's, else the release's), if it wants them.
    fn trace_target(&self) -> Option<(u32, Option<i32>)> {
        let (client, fd) = match Self::current() {
            Some(cur) => (cur.client, Some(cur.fd)),
            None => (TRACE_TO.with(|c| *c.borrow())?, None),
        };
        let c = lock(&self.clients).get(&client).cloned()?;
        c.trace.then_some((client, fd))
    }

    /// Has `client` do `cb`, which returns nothing, without waiting: on the request's own
    /// connection when `client` is the one being served (its thread performs it before it
    /// reads the answer, in order), else on its service connection, which its service thread
    /// works through in order (a `Sync` waits until it has: [`Hub::drain_service`]).
    pub fn tell(&self, client: u32, cb: Callback) {
        if let Some(cur) = Self::current().filter(|c| c.client == client) {
            let _ = wire::send(cur.fd, &Msg::Note(cb), &[], &[]);
            return;
        }
        let Some(c) = self.client(client) else {
            return;
        };
        let g = lock(&c.fd);
        if let Some(fd) = *g {
            if wire::send(fd, &Msg::Note(cb), &[], &[]).is_ok() {
                lock(&self.traced).insert(client);
            }
        }
    }

    /// Waits until every service thread that was sent notes or trace lines (of a release the
    /// reaper ran) has worked through them: a `close` or `wait` that returns finds the pages
    /// unpinned and the trace complete.
    pub fn drain_service(&self) {
        let pending = std::mem::take(&mut *lock(&self.traced));
        for client in pending {
            let Some(c) = self.client(client) else {
                continue;
            };
            let g = lock(&c.fd);
            if let Some(fd) = *g {
                if wire::send(fd, &Msg::Cb(Callback::Ping), &[], &[]).is_ok() {
                    if let Ok(r) = wire::recv(fd) {
                        for f in r.fds {
                            sys::close(f);
                        }
                    }
                }
            }
        }
    }

    fn trace_line(&self, target: (u32, Option<i32>), json: String) {
        let msg = Msg::Trace(json);
        if let Some(fd) = target.1 {
            let _ = wire::send(fd, &msg, &[], &[]);
            return;
        }
        let c = lock(&self.clients).get(&target.0).cloned();
        if let Some(c) = c {
            if let Some(fd) = *lock(&c.fd) {
                let _ = wire::send(fd, &msg, &[], &[]);
                lock(&self.traced).insert(target.0);
            }
        }
    }

    /// Device DMA over segments `(iova, len)` (each within one page) of one buffer, in order
    /// ([`type1_core::DeviceDma::device_dma_vec`]): runs of consecutive segments that land in
    /// pages of one held ring go in one batched transfer (one pipe write or read and one
    /// submission for up to [`type1_host::uring::BATCH`] pages); the rest, and a batch that
    /// fails, go page by page as [`Hub::dma`], which also finds the segment that faults.
    pub fn dma_vec(
        &self,
        domain: DomainId,
        segs: &[(u64, usize)],
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), (usize, DmaFault)> {
        let dir = if to_memory {
            Dir::ToPage
        } else {
            Dir::FromPage
        };
        let (mut i, mut at) = (0, 0);
        while i < segs.len() {
            // Through the pipe: page-sized pieces, at most what a default pipe holds.
            let (ring, items, bytes) = self.held_batch(domain, &segs[i..], to_memory, Via::Pipe);
            let done = match (&ring, items.len()) {
                (Some(r), k) if k >= 1 && bytes > segs[i].1 => {
                    let ok = self.bounce().and_then(|g| {
                        let bounce = (*g)?;
                        r.with_ring(|ring| {
                            ring.transfer_batch(&items, &mut buf[at..at + bytes], dir, bounce)
                        })
                    });
                    matches!(ok, Some(Ok(()))).then_some((k, bytes))
                }
                _ => None,
            };
            match done {
                Some((k, b)) => {
                    i += k;
                    at += b;
                }
                None => {
                    let (iova, n) = segs[i];
                    let part = buf.get_mut(at..at + n).ok_or((i, DmaFault::Unreachable))?;
                    self.dma(domain, iova, part, to_memory)
                        .map_err(|f| (i, f))?;
                    i += 1;
                    at += n;
                }
            }
        }
        Ok(())
    }

    /// Device DMA between segments `(iova, len)` and the file `fd` from offset `file_off`
    /// ([`type1_core::DeviceDma::device_dma_file`]): runs of pages held by one ring move
    /// straight between the file and the pinned pages, one linked io_uring submission a run;
    /// the rest go through a copy and [`Hub::dma`].
    pub fn dma_file(
        &self,
        domain: DomainId,
        segs: &[(u64, usize)],
        fd: i32,
        file_off: u64,
        to_memory: bool,
    ) -> Result<(), (usize, DmaFault)> {
        let dir = if to_memory {
            Dir::ToPage
        } else {
            Dir::FromPage
        };
        let (mut i, mut off) = (0, file_off);
        while i < segs.len() {
            let (ring, items, bytes) = self.held_batch(domain, &segs[i..], to_memory, Via::File);
            let done = match &ring {
                Some(r) if !items.is_empty() => {
                    let ok = r.with_ring(|ring| ring.transfer_file(&items, fd, off, dir));
                    matches!(ok, Some(Ok(()))).then_some((items.len(), bytes))
                }
                _ => None,
            };
            if let Some((k, b)) = done {
                i += k;
                off += b as u64;
                continue;
            }
            let (iova, n) = segs[i];
            let mut tmp = vec![0u8; n];
            if to_memory {
                // Past the end of the file reads as zeros, as a hole does.
                let _ = sys::pread(fd, &mut tmp, off);
            }
            self.dma(domain, iova, &mut tmp, to_memory)
                .map_err(|f| (i, f))?;
            if !to_memory && sys::pwrite(fd, &tmp, off) != Ok(n) {
                return Err((i, DmaFault::Unreachable));
            }
            i += 1;
            off += n as u64;
        }
        Ok(())
    }

    /// The batch that starts at `segs[0]`: consecutive segments whose pages are held by the
    /// same ring, within the limits of `via`: the ring, the requests' `(slot, addr, len)`,
    /// their bytes.
    fn held_batch(
        &self,
        domain: DomainId,
        segs: &[(u64, usize)],
        to_memory: bool,
        via: Via,
    ) -> HeldBatch {
        let (cap, max_bytes) = via.limits();
        let mut items: Vec<(u32, u64, usize)> = Vec::new();
        let mut ring: Option<Arc<HeldRing>> = None;
        let mut bytes = 0;
        for &(iova, n) in segs {
            if bytes + n > max_bytes {
                break;
            }
            let Ok(pa) = lock(&self.iommu).translate(domain, iova, to_memory) else {
                break;
            };
            let Some((first, run)) = lock(&self.frames).find(pa >> PAGE_SHIFT) else {
                break;
            };
            let Some((r, slot, addr)) = run.held.as_ref() else {
                break;
            };
            if ring.as_ref().is_some_and(|x| !Arc::ptr_eq(x, r)) {
                break;
            }
            let page = (pa >> PAGE_SHIFT) - first;
            let at = addr + page * PAGE_SIZE + pa % PAGE_SIZE;
            // A piece that continues the previous one in the same buffer extends it: one
            // request moves both (guest memory is often contiguous in the VMM's buffer).
            let full = items.len() == cap;
            match items.last_mut() {
                Some(last)
                    if via == Via::File && last.0 == *slot && last.1 + last.2 as u64 == at =>
                {
                    last.2 += n
                }
                _ if full => break,
                _ => items.push((*slot, at, n)),
            }
            ring = Some(r.clone());
            bytes += n;
        }
        (ring, items, bytes)
    }

    /// Device DMA at `iova` through `domain` (within one page).
    pub fn dma(
        &self,
        domain: DomainId,
        iova: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaFault> {
        let pa = lock(&self.iommu).translate(domain, iova, to_memory)?;
        let (first, run) = lock(&self.frames)
            .find(pa >> PAGE_SHIFT)
            .ok_or(DmaFault::Unreachable)?;
        let page = (pa >> PAGE_SHIFT) - first;
        // Through the broker's own hold on the ring that pins the page, if it has one: no
        // round trip to the process. The process never submits on a ring the broker can
        // reach (it makes no transfer but for a `Dma` callback, and those go only to runs of
        // rings the broker cannot map), so every ring has one submitter. A transfer that
        // fails there (its slot emptied by an unpin racing it) fails: the process's record of
        // the slot is gone too.
        if let Some(r) = self.try_held(&run, page, pa % PAGE_SIZE, buf, to_memory) {
            return r;
        }
        let local = ((run.local + page) << PAGE_SHIFT) | (pa % PAGE_SIZE);
        let cb = Callback::Dma {
            pa: local,
            len: buf.len() as u32,
            to_memory,
        };
        let payload: &[u8] = if to_memory { buf } else { &[] };
        let r = match self.call(run.client, cb, payload, &[]) {
            Ok(r) => r,
            // The process is gone, and the broker cannot reach its ring (it tried above).
            Err(_) => return Err(DmaFault::Unreachable),
        };
        for f in &r.fds {
            type1_host::sys::close(*f);
        }
        match r.msg {
            Msg::Data if !to_memory && r.payload.len() == buf.len() => {
                buf.copy_from_slice(&r.payload);
                Ok(())
            }
            Msg::Value(_) if to_memory => Ok(()),
            Msg::DmaFault(f) => Err(f),
            _ => Err(DmaFault::Unreachable),
        }
    }

    /// Device DMA through the broker's hold on a run's ring (`READ_FIXED`/`WRITE_FIXED` on its
    /// duplicate of the process's ring, through the broker's bounce pipe), whether or not the
    /// process is still there. `None` when the broker cannot reach the run's ring at all (it
    /// holds no duplicate, or cannot map it), so that only the process can.
    fn try_held(
        &self,
        run: &Run,
        page: u64,
        off: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Option<Result<(), DmaFault>> {
        let (ring, slot, addr) = run.held.as_ref()?;
        // Held for the whole transfer: the pipe carries one transfer's bytes at a time. Without
        // it the transfer fails here rather than go to the process (which must never submit
        // on a ring the broker may submit on).
        let Some(guard) = self.bounce() else {
            return Some(Err(DmaFault::Unreachable));
        };
        let Some(bounce) = *guard else {
            return Some(Err(DmaFault::Unreachable));
        };
        let dir = if to_memory {
            Dir::ToPage
        } else {
            Dir::FromPage
        };
        let r =
            ring.with_ring(|r| r.transfer(*slot, addr + page * PAGE_SIZE + off, buf, dir, bounce))?;
        Some(r.map_err(|_| DmaFault::Unreachable))
    }

    fn simple(&self, client: u32, cb: Callback) -> Result<Msg, PlatformError> {
        let r = self
            .call(client, cb, &[], &[])
            .map_err(|e| PlatformError::new(e, "process gone"))?;
        for f in r.fds {
            type1_host::sys::close(f);
        }
        match r.msg {
            Msg::Failed(e, what) => Err(PlatformError::new(Errno(e), what)),
            Msg::Err(e) => Err(PlatformError::new(Errno(e), "callback")),
            m => Ok(m),
        }
    }
}
