//! [`Hub`]: the broker's view of the processes it serves, and [`BrokerPlatform`], the
//! `type1_core::Platform` the engine runs on inside the broker.
//!
//! The IOMMU (domains, page tables) is the broker's own: a `type1_host::HostPlatform` that
//! never pins anything. Everything about memory happens in the process that owns it, through
//! callbacks (`wire::Callback`): pinning, unpinning, flushing, locked-memory accounting, copies
//! to and from user memory, and device DMA. A callback for the process whose request the
//! broker thread is serving goes over that request's connection (the requesting thread answers
//! it); one for another process goes over that process's service connection.
//!
//! Frames: each process numbers the frames it pins itself. The broker gives every pinned run
//! a range of its own bus frames (congruent to the process's modulo 1 GiB, so that large
//! IOMMU pages stay possible) and remembers whose frames they are.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use type1_core::{CacheMaintenance, EmulatedDevices, Iommu, TaskMemory, Tracing};
use type1_core::{
    DeviceId, DomainId, DomainInfo, Errno, Event, GroupId, GroupInfo, MemType, MmId, PinnedPage,
    PlatformError, Prot, Task, PAGE_SIZE,
};
use type1_host::uring::{Dir, Ring};
use type1_host::{sys, DmaError, HostConfig, HostPlatform};

use crate::wire::{self, Callback, FrameRun, Msg, Received, RingRef, TaskCreds};

const PAGE_SHIFT: u32 = 12;
/// The broker's first bus frame.
const GLOBAL_PFN_BASE: u64 = 1 << 44;
/// Congruence kept between a process's frames and the broker's (1 GiB of frames).
const ALIGN_PFNS: u64 = 1 << 18;
/// Pages the engine asks a process to pin in one callback (256 MiB).
pub const BROKER_PIN_BATCH: u64 = 1 << 16;

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

/// A run of the broker's frames that stands for a process's frames.
#[derive(Clone, Debug)]
struct Run {
    npages: u64,
    client: u32,
    local: u64,
    reserved: bool,
    memtype: MemType,
    /// Pinned frames of the run not unpinned yet.
    live: u64,
    /// The ring buffer holding the run: the ring, its slot, the first page's registered
    /// address.
    held: Option<(Arc<HeldRing>, u32, u64)>,
}

#[derive(Debug, Default)]
struct Frames {
    runs: BTreeMap<u64, Run>,
    next: u64,
}

impl Frames {
    fn find(&self, pfn: u64) -> Option<(u64, Run)> {
        let (&first, r) = self.runs.range(..=pfn).next_back()?;
        (pfn - first < r.npages).then(|| (first, r.clone()))
    }

    /// Runs of the broker's frames for the process's `runs` (each held by its ring, if any),
    /// as the pages the engine gets.
    fn add(
        &mut self,
        client: u32,
        runs: impl IntoIterator<Item = (FrameRun, Option<(Arc<HeldRing>, u32, u64)>)>,
    ) -> Vec<PinnedPage> {
        let mut out = Vec::new();
        for (f, held) in runs {
            let n = f.npages;
            let next = self.next.max(GLOBAL_PFN_BASE);
            let mut first = next - next % ALIGN_PFNS + f.pfn % ALIGN_PFNS;
            if first < next {
                first += ALIGN_PFNS;
            }
            self.next = first + n;
            self.runs.insert(
                first,
                Run {
                    npages: n,
                    client,
                    local: f.pfn,
                    reserved: f.reserved,
                    memtype: f.memtype,
                    live: if f.reserved { 0 } else { n },
                    held,
                },
            );
            out.extend((0..n).map(|k| PinnedPage {
                pfn: first + k,
                reserved: f.reserved,
            }));
        }
        out
    }

    /// The pieces of `[pfn, pfn + npages)`: `(broker first, run start, pages, run)`.
    fn pieces(&self, pfn: u64, npages: u64) -> Vec<(u64, u64, u64, Run)> {
        let mut out = Vec::new();
        let (mut at, end) = (pfn, pfn.saturating_add(npages));
        while at < end {
            match self.find(at) {
                Some((first, r)) => {
                    let n = (first + r.npages - at).min(end - at);
                    out.push((at, first, n, r));
                    at += n;
                }
                None => {
                    // Not ours: skip to the next run.
                    at = self
                        .runs
                        .range(at..)
                        .next()
                        .map_or(end, |(f, _)| *f)
                        .min(end);
                }
            }
        }
        out
    }
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

    /// Device DMA at `iova` through `domain` (within one page).
    pub fn dma(
        &self,
        domain: DomainId,
        iova: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaError> {
        let pa = lock(&self.iommu).translate(domain, iova, to_memory)?;
        let (first, run) = lock(&self.frames)
            .find(pa >> PAGE_SHIFT)
            .ok_or(DmaError::Unreachable)?;
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
            // The process is gone: its pages are still held, through its ring.
            Err(_) => return self.dma_held(&run, page, pa % PAGE_SIZE, buf, to_memory),
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
            Msg::DmaFault(2) => Err(DmaError::Permission),
            Msg::DmaFault(1) => Err(DmaError::Unmapped),
            _ => Err(DmaError::Unreachable),
        }
    }

    /// Device DMA through the broker's hold on a run's ring (`READ_FIXED`/`WRITE_FIXED` on its
    /// duplicate of the process's ring, through the broker's bounce pipe).
    fn dma_held(
        &self,
        run: &Run,
        page: u64,
        off: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaError> {
        self.try_held(run, page, off, buf, to_memory)
            .unwrap_or(Err(DmaError::Unreachable))
    }

    /// [`Self::dma_held`]: `None` when the broker cannot reach the run's ring at all (it holds
    /// no duplicate, or cannot map it), so that only the process can.
    fn try_held(
        &self,
        run: &Run,
        page: u64,
        off: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Option<Result<(), DmaError>> {
        let (ring, slot, addr) = run.held.as_ref()?;
        // Held for the whole transfer: the pipe carries one transfer's bytes at a time. Without
        // it the transfer fails here rather than go to the process (which must never submit
        // on a ring the broker may submit on).
        let Some(guard) = self.bounce() else {
            return Some(Err(DmaError::Unreachable));
        };
        let Some(bounce) = *guard else {
            return Some(Err(DmaError::Unreachable));
        };
        let dir = if to_memory {
            Dir::ToPage
        } else {
            Dir::FromPage
        };
        let r =
            ring.with_ring(|r| r.transfer(*slot, addr + page * PAGE_SIZE + off, buf, dir, bounce))?;
        Some(r.map_err(|_| DmaError::Unreachable))
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

/// The engine's platform inside the broker (see the module documentation).
#[derive(Clone, Debug)]
pub struct BrokerPlatform(pub Arc<Hub>);

impl BrokerPlatform {
    fn iommu(&self) -> MutexGuard<'_, HostPlatform> {
        lock(&self.0.iommu)
    }
}

fn client_of(mm: MmId) -> u32 {
    mm.0
}

impl TaskMemory for BrokerPlatform {
    fn current(&self) -> Option<Task> {
        Hub::current().map(|c| Task {
            mm: MmId(c.client),
            cap_ipc_lock: c.creds.cap_ipc_lock,
            memlock_limit_pages: c.creds.memlock_limit_pages,
        })
    }

    fn mm_alive(&self, mm: MmId) -> bool {
        self.0.alive(client_of(mm))
    }

    /// VFIO's charge plus what the process locked itself (`mlock`), as of its latest MAP_DMA:
    /// the kernel's `mm->locked_vm` holds both.
    fn locked_vm(&self, mm: MmId) -> u64 {
        self.0.client(client_of(mm)).map_or(0, |c| {
            lock(&c.locked_vm).saturating_add(lock(&c.creds).mlocked_pages)
        })
    }

    /// The charge is kept here, per process, with the limit its latest request carried
    /// (RLIMIT_MEMLOCK and CAP_IPC_LOCK of the task, as the kernel reads them at pin time).
    fn account(&mut self, mm: MmId, delta: i64, enforce_limit: bool) -> Result<(), PlatformError> {
        let Some(c) = self.0.client(client_of(mm)) else {
            // A process that is gone has no locked memory left to uncharge.
            return if delta <= 0 {
                Ok(())
            } else {
                Err(PlatformError::new(Errno(libc::ESRCH), "process gone"))
            };
        };
        let (limit, mlocked) = {
            let cr = lock(&c.creds);
            (cr.memlock_limit_pages, cr.mlocked_pages)
        };
        let mut locked = lock(&c.locked_vm);
        if delta > 0
            && enforce_limit
            && locked.saturating_add(mlocked).saturating_add(delta as u64) > limit
        {
            return Err(PlatformError::new(
                Errno::ENOMEM,
                format!(
                    "locked_vm {} (mlock {mlocked}) + {delta} pages exceeds RLIMIT_MEMLOCK {limit}",
                    *locked + mlocked
                ),
            ));
        }
        *locked = locked.saturating_add_signed(delta);
        Ok(())
    }

    fn pin_user_pages(
        &mut self,
        mm: MmId,
        vaddr: u64,
        npages: u64,
        write: bool,
    ) -> Result<Vec<PinnedPage>, PlatformError> {
        let client = client_of(mm);
        let cb = Callback::Pin {
            vaddr,
            npages,
            write,
        };
        match self.0.simple(client, cb)? {
            Msg::Pages(runs)
                if !runs.is_empty()
                    && runs.len() <= wire::MAX_RUNS
                    && runs.iter().all(|r| r.npages > 0)
                    && runs.iter().map(|r| r.npages).sum::<u64>() <= npages =>
            {
                let runs: Vec<_> = runs
                    .into_iter()
                    .map(|r| (r, r.held.and_then(|h| self.0.hold_ring(client, h))))
                    .collect();
                Ok(lock(&self.0.frames).add(client, runs))
            }
            _ => Err(PlatformError::new(
                Errno::EFAULT,
                format!("pin vaddr 0x{vaddr:x}"),
            )),
        }
    }

    fn unpin_page(&mut self, pfn: u64, dirty: bool) {
        self.unpin_pages(pfn, 1, dirty);
    }

    fn unpin_pages(&mut self, pfn: u64, npages: u64, _dirty: bool) {
        // Runs whose last pinned frame goes here leave the table (and, for a process that is
        // gone, their ring slot is emptied by the broker).
        let (pieces, ended) = {
            let mut f = lock(&self.0.frames);
            let pieces = f.pieces(pfn, npages);
            let mut ended = Vec::new();
            for (_, first, n, r) in &pieces {
                if r.reserved {
                    continue;
                }
                let gone = match f.runs.get_mut(first) {
                    Some(run) => {
                        run.live = run.live.saturating_sub(*n);
                        run.live == 0
                    }
                    None => false,
                };
                if gone {
                    ended.extend(f.runs.remove(first));
                }
            }
            (pieces, ended)
        };
        let live = pieces.into_iter().filter(|p| !p.3.reserved);
        for (client, runs) in local_runs(live) {
            if self.0.alive(client) {
                for part in runs.chunks(wire::MAX_RUNS) {
                    self.0.tell(client, Callback::Unpin(part.to_vec()));
                }
            }
        }
        for run in ended {
            if !self.0.alive(run.client) {
                if let Some((ring, slot, _)) = &run.held {
                    ring.with_ring(|r| r.unpin(*slot));
                }
            }
        }
    }

    /// A pin callback costs a round trip to the process: a mapping pins in calls of up to
    /// [`BROKER_PIN_BATCH`] pages (each answered with at most `wire::MAX_RUNS` runs).
    fn pin_batch_pages(&self) -> u64 {
        BROKER_PIN_BATCH
    }

    fn pfn_kind_run(&self, pfn: u64, max: u64) -> (bool, MemType, u64) {
        match lock(&self.0.frames).find(pfn) {
            Some((first, r)) => (r.reserved, r.memtype, (first + r.npages - pfn).min(max)),
            None => (false, MemType::Wb, 1),
        }
    }

    fn pfn_is_reserved(&self, pfn: u64) -> bool {
        lock(&self.0.frames)
            .find(pfn)
            .is_some_and(|(_, r)| r.reserved)
    }

    fn pfn_memtype(&self, pfn: u64) -> MemType {
        lock(&self.0.frames)
            .find(pfn)
            .map_or(MemType::Wb, |(_, r)| r.memtype)
    }

    fn mm_read(&mut self, mm: MmId, vaddr: u64, buf: &mut [u8]) -> Result<(), PlatformError> {
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(wire::MAX_COPY);
            let cb = Callback::Read {
                addr: vaddr + done as u64,
                len: n as u32,
            };
            let r = self
                .0
                .call(client_of(mm), cb, &[], &[])
                .map_err(|e| PlatformError::new(e, "process gone"))?;
            match r.msg {
                Msg::Data if r.payload.len() == n => {
                    buf[done..done + n].copy_from_slice(&r.payload)
                }
                m => {
                    let e = m.ok().err().unwrap_or(Errno::EFAULT);
                    return Err(PlatformError::new(e, format!("read 0x{vaddr:x}")));
                }
            }
            done += n;
        }
        Ok(())
    }

    fn mm_write(&mut self, mm: MmId, vaddr: u64, data: &[u8]) -> Result<(), PlatformError> {
        for (i, chunk) in data.chunks(wire::MAX_COPY).enumerate() {
            let addr = vaddr + (i * wire::MAX_COPY) as u64;
            let r = self
                .0
                .call(client_of(mm), Callback::Write { addr }, chunk, &[])
                .map_err(|e| PlatformError::new(e, "process gone"))?;
            if let Err(e) = r.msg.ok() {
                return Err(PlatformError::new(e, format!("write 0x{vaddr:x}")));
            }
        }
        Ok(())
    }
}

impl Iommu for BrokerPlatform {
    fn group_info(&self, group: GroupId) -> Result<GroupInfo, PlatformError> {
        self.iommu().group_info(group)
    }

    fn domain_alloc(&mut self, group: GroupId) -> Result<DomainId, PlatformError> {
        self.iommu().domain_alloc(group)
    }

    fn domain_info(&self, domain: DomainId) -> DomainInfo {
        self.iommu().domain_info(domain)
    }

    fn domain_enforce_cache_coherency(&mut self, domain: DomainId) -> bool {
        self.iommu().domain_enforce_cache_coherency(domain)
    }

    fn domain_free(&mut self, domain: DomainId) {
        self.iommu().domain_free(domain)
    }

    fn attach_group(&mut self, domain: DomainId, group: GroupId) -> Result<(), PlatformError> {
        self.iommu().attach_group(domain, group)
    }

    fn detach_group(&mut self, domain: DomainId, group: GroupId) {
        self.iommu().detach_group(domain, group)
    }

    fn iommu_map(
        &mut self,
        domain: DomainId,
        iova: u64,
        pa: u64,
        size: u64,
        prot: Prot,
    ) -> Result<(), PlatformError> {
        self.iommu().iommu_map(domain, iova, pa, size, prot)
    }

    fn iommu_unmap(&mut self, domain: DomainId, iova: u64, size: u64) -> u64 {
        self.iommu().iommu_unmap(domain, iova, size)
    }

    fn iotlb_sync(&mut self, domain: DomainId) {
        self.iommu().iotlb_sync(domain)
    }

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        self.iommu().iova_to_phys(domain, iova)
    }

    fn iova_to_phys_run(&self, domain: DomainId, iova: u64, max: u64) -> Option<(u64, u64)> {
        self.iommu().iova_to_phys_run(domain, iova, max)
    }

    fn install_msi_cookie(&mut self, domain: DomainId) -> Result<(), PlatformError> {
        self.iommu().install_msi_cookie(domain)
    }
}

impl CacheMaintenance for BrokerPlatform {
    fn flush_cache(&mut self, pa: u64, len: u64) {
        self.flush_cache_batch(&[(pa, len)]);
    }

    /// One note per process for the whole batch, with its runs merged where the process's
    /// frames continue each other.
    fn flush_cache_batch(&mut self, ranges: &[(u64, u64)]) {
        let mut pieces = Vec::new();
        {
            let f = lock(&self.0.frames);
            for &(pa, len) in ranges {
                let first = pa >> PAGE_SHIFT;
                let n = (pa % PAGE_SIZE + len).div_ceil(PAGE_SIZE);
                pieces.extend(f.pieces(first, n));
            }
        }
        let mut reachable = Vec::new();
        for p in pieces {
            if self.0.alive(p.3.client) {
                reachable.push(p);
            } else {
                // No mapping of the page is left anywhere to flush it through.
                self.trace(Event::CpuFlush {
                    pa: p.0 << PAGE_SHIFT,
                    npages: p.2,
                    via: "unreachable",
                });
            }
        }
        for (client, runs) in local_runs(reachable) {
            let bytes: Vec<(u64, u64)> = runs
                .iter()
                .map(|&(pfn, n)| (pfn << PAGE_SHIFT, n * PAGE_SIZE))
                .collect();
            for part in bytes.chunks(wire::MAX_RUNS) {
                self.0.tell(client, Callback::Flush(part.to_vec()));
            }
        }
    }
}

/// The process frames behind pieces of the broker's (`Frames::pieces`), per process, as runs
/// `(first frame, frames)` in the process's numbering, merged where they continue each other.
fn local_runs(
    pieces: impl IntoIterator<Item = (u64, u64, u64, Run)>,
) -> BTreeMap<u32, Vec<(u64, u64)>> {
    let mut out: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for (at, first, n, r) in pieces {
        let local = r.local + (at - first);
        let runs = out.entry(r.client).or_default();
        match runs.last_mut() {
            Some((s, k)) if *s + *k == local => *k += n,
            _ => runs.push((local, n)),
        }
    }
    out
}

impl EmulatedDevices for BrokerPlatform {
    fn notify_dma_unmap(&mut self, device: DeviceId, iova: u64, size: u64) -> Vec<(u64, u64)> {
        self.iommu().notify_dma_unmap(device, iova, size)
    }
}

impl Tracing for BrokerPlatform {
    fn trace(&mut self, event: Event) {
        // Nothing is formatted or sent for a process that writes no trace.
        let Some(target) = self.0.trace_target() else {
            return;
        };
        if let Ok(json) = serde_json::to_string(&event) {
            // Stamped now, when it happens, not when the process writes it down.
            let body = json.strip_prefix('{').unwrap_or(&json);
            let json = format!("{{\"ns\":{},{body}", sys::monotonic_ns());
            self.0.trace_line(target, json);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pfn: u64, npages: u64) -> (FrameRun, Option<(Arc<HeldRing>, u32, u64)>) {
        let r = FrameRun {
            pfn,
            npages,
            reserved: false,
            memtype: MemType::Wb,
            held: None,
        };
        (r, None)
    }

    #[test]
    fn runs_keep_congruence_and_split_where_frames_do() {
        let mut f = Frames::default();
        let local = (1u64 << 44) + 5;
        let pages = f.add(7, [run(local, 2), run(local + 9, 1)]);
        assert_eq!(pages.len(), 3);
        assert_eq!(pages[0].pfn % ALIGN_PFNS, local % ALIGN_PFNS);
        assert_eq!(pages[1].pfn, pages[0].pfn + 1);
        assert_eq!(pages[2].pfn % ALIGN_PFNS, (local + 9) % ALIGN_PFNS);
        assert_eq!(
            f.runs.len(),
            2,
            "each of the process's runs is a run of the broker's"
        );
        let (first, run) = f.find(pages[1].pfn).unwrap();
        assert_eq!((first, run.client, run.local), (pages[0].pfn, 7, local));
        let p = f.pieces(pages[0].pfn, 2);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].2, 2);
        assert!(f.find(pages[2].pfn + 1).is_none());
    }
}
