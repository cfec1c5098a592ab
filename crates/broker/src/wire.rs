//! The messages between the broker and the processes that use it (`type1-preload`).
//!
//! Every connection is an `AF_UNIX` `SOCK_SEQPACKET` socket: one datagram is one [`Msg`],
//! encoded as a little-endian `u32` length, that many bytes of `postcard` (a compact binary
//! serde format: varints, no field names), and then the raw payload (memory contents, never
//! encoded). Pins, unpins and flushes travel as runs of frames, never as per-page records:
//! a [`Msg::Pages`] answer holds at most [`MAX_RUNS`] runs, so every message of the hot paths
//! has a size bounded independently of the pages it covers. File descriptors ride along as
//! `SCM_RIGHTS`. A connection is either a process's *service* connection (the broker calls
//! the process back on it: pin, unpin, flush, DMA, for work another process caused) or one
//! of its threads' *request* connections (requests, and the callbacks that request needs,
//! which the requesting thread answers itself).

use serde::{Deserialize, Serialize};
use type1_core::{DmaFault, Errno, MemType};
use type1_host::sock;
use type1_uapi::Object;

/// Room for one datagram: the largest payload is a 64 KiB memory copy.
pub const MAX_MSG: usize = 96 * 1024;
/// The largest memory copy one callback moves; longer copies are split.
pub const MAX_COPY: usize = 64 * 1024;
/// The most frame runs one [`Msg::Pages`] answer carries: a process that pinned more runs than
/// this answers with the first ones and releases the rest (the engine asks again).
pub const MAX_RUNS: usize = 1024;

/// An emulated object on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Obj {
    /// A container, by id.
    Container(u32),
    /// A group, by number.
    Group(u32),
    /// A device, by id.
    Device(u32),
    /// An iommufd context (`/dev/iommu`), by id.
    Iommufd(u32),
}

impl From<Object> for Obj {
    fn from(o: Object) -> Obj {
        match o {
            Object::Container(i) => Obj::Container(i),
            Object::Group(i) => Obj::Group(i),
            Object::Device(i) => Obj::Device(i),
            Object::Iommufd(i) => Obj::Iommufd(i),
        }
    }
}

impl From<Obj> for Object {
    fn from(o: Obj) -> Object {
        match o {
            Obj::Container(i) => Object::Container(i),
            Obj::Group(i) => Object::Group(i),
            Obj::Device(i) => Object::Device(i),
            Obj::Iommufd(i) => Object::Iommufd(i),
        }
    }
}

/// The calling task's credentials, sent with every request (what `current` would be).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCreds {
    /// `capable(CAP_IPC_LOCK)`.
    pub cap_ipc_lock: bool,
    /// RLIMIT_MEMLOCK in pages.
    pub memlock_limit_pages: u64,
    /// Pages the process has locked itself (`mlock`, `VmLck`): the kernel counts VFIO's pins
    /// in the same `mm->locked_vm`, so they count against the same limit. Read for a MAP_DMA
    /// of a process without CAP_IPC_LOCK only (0 otherwise).
    pub mlocked_pages: u64,
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// `open("/dev/vfio/vfio")` (`None`) or `open("/dev/vfio/N")`: answered by
    /// [`Msg::Opened`] with the new file attached.
    Open(Option<u32>),
    /// `open("/dev/iommu")`: answered by [`Msg::Opened`] with the new file attached.
    OpenIommu,
    /// `open("/dev/vfio/devices/vfioN")` of the named device: answered by [`Msg::Opened`].
    OpenCdev(String),
    /// An ioctl on an object. The payload is a copy of the caller's memory at `pre` (the
    /// argument struct, read ahead); whatever else the ioctl reads comes by callbacks, and
    /// what it writes back comes with the [`Msg::Done`] answer.
    Ioctl {
        /// The object.
        obj: Obj,
        /// Request number.
        req: u64,
        /// Raw argument.
        arg: u64,
        /// Where the payload was read from (nothing read ahead if the payload is empty).
        pre: u64,
    },
    /// `pread`/`read` (`len` bytes) or `pwrite`/`write` (the payload) of a device region:
    /// at file offset `pos`, or (`None`) at the file's own position, which then advances
    /// (the file is the one whose process end has inode `file`).
    DeviceRw {
        /// Device id.
        dev: u32,
        /// File offset (`pread`), or the file's position (`read`).
        pos: Option<u64>,
        /// Inode of the process's end of the file.
        file: u64,
        /// Bytes to read (ignored for a write).
        len: u32,
        /// Write the payload.
        write: bool,
    },
    /// A device's name, its index among the machine's devices, its BAR2 memory file and its
    /// shared BAR0 image (attached to the [`Msg::Device`] answer).
    DeviceInfo(u32),
    /// Which object the attached file is, if it is one of the broker's.
    Identify,
    /// Nothing: answered once every file closed before it was sent has had its last-close
    /// consequences (a `close` waits for this, as the kernel's release runs within `close`).
    Sync,
}

/// What the broker asks a process to do in its own address space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Callback {
    /// `copy_from_user`: answer [`Msg::Data`].
    Read {
        /// User address.
        addr: u64,
        /// Bytes.
        len: u32,
    },
    /// `copy_to_user` of the payload.
    Write {
        /// User address.
        addr: u64,
    },
    /// What the process's fd is: [`Msg::Object`], or an error (EBADF: not open).
    FdObject(i32),
    /// Install the attached file as a new fd (close-on-exec) standing for `obj`:
    /// answer [`Msg::Value`] with the fd.
    NewFd(Obj),
    /// Pin pages of the process: [`Msg::Pages`] or [`Msg::Failed`].
    Pin {
        /// First page's address.
        vaddr: u64,
        /// At most this many pages.
        npages: u64,
        /// For write.
        write: bool,
    },
    /// Drop pins of the process's frames: runs `(first frame, frames)` in the process's
    /// numbering (at most [`MAX_RUNS`]).
    Unpin(Vec<(u64, u64)>),
    /// Write back and invalidate the CPU caches for bus ranges `(pa, len)` in the process's
    /// numbering (at most [`MAX_RUNS`]), in one batch.
    Flush(Vec<(u64, u64)>),
    /// Send the file behind the process's fd (an eventfd for SET_IRQS): [`Msg::Value`] with
    /// it attached, or EBADF.
    SendFd(i32),
    /// Nothing: answered once everything sent before it on the same connection is done
    /// (trace lines written).
    Ping,
    /// Device DMA at bus address `pa` (within a page): to memory (the payload), or from it
    /// (`len` bytes, answered by [`Msg::Data`]); [`Msg::DmaFault`] if unreachable.
    Dma {
        /// Bus address (the process's numbering).
        pa: u64,
        /// Bytes to read (from memory).
        len: u32,
        /// Direction.
        to_memory: bool,
    },
}

/// A run of pinned frames of a [`Msg::Pages`] answer: consecutive in the process's numbering,
/// of one kind, held by one ring buffer slot (one pin of the process's platform).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameRun {
    /// The process's first frame number.
    pub pfn: u64,
    /// Frames in the run.
    pub npages: u64,
    /// Reserved (device memory): neither refcounted nor charged.
    pub reserved: bool,
    /// Memory type.
    pub memtype: MemType,
    /// What holds the run in the process (the ring the broker takes over should the process go
    /// while the frames are still mapped); `None` for device memory and untracked pins.
    pub held: Option<RingRef>,
}

/// Where a pin call's pages are held in the process: an io_uring fixed buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingRef {
    /// The ring's fd in the process.
    pub fd: i32,
    /// The buffer slot.
    pub slot: u32,
    /// Registered address of the first pinned page.
    pub addr: u64,
}

/// One datagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// First message of a connection: the process (and, for a request connection, the client
    /// id its service connection got).
    Hello {
        /// Process id.
        pid: i32,
        /// `None`: this is the service connection of a new client.
        client: Option<u32>,
        /// Whether the process writes a trace (the broker sends trace lines only then).
        trace: bool,
    },
    /// Answer to [`Msg::Hello`]: the client id, and the broker's instance (random, new for
    /// every broker process): files a process got from one instance are never acted on
    /// through another.
    Welcome(u32, u64),
    /// A request with the caller's credentials (`None` for requests that cannot pin: the
    /// broker keeps the latest it was sent), and the broker instance the file it is about
    /// came from (0: it is about no file). A broker answers a request about another
    /// instance's file with EIO: an old file never reaches a new broker's objects.
    Req(Option<TaskCreds>, u64, Request),
    /// A callback.
    Cb(Callback),
    /// A callback that needs no answer (flush, unpin): sent on a request's own connection,
    /// where the requesting thread performs it before it reads the answer to its request.
    Note(Callback),
    /// A trace line for the process's trace file (JSON object without `seq`/`pid`).
    Trace(String),
    /// Success with a value (fd number, bytes transferred).
    Value(i64),
    /// An ioctl's result (its value, or an errno as a negative number) and the copies to the
    /// caller's memory it made, in order: `(address, length)`, their bytes in the payload.
    /// The caller applies them before it returns (EFAULT if one fails, as a failed
    /// `copy_to_user` would be).
    Done(i64, Vec<(u64, u32)>),
    /// Failure with an errno.
    Err(i32),
    /// A platform failure with its description.
    Failed(i32, String),
    /// Success with the payload as data.
    Data,
    /// An open file for `obj` is attached.
    Opened(Obj),
    /// Device information: its BAR2 file and its shared BAR0 image (`type1_host::shm`)
    /// attached, in that order; neither for a function that has no BAR2 (an NVMe
    /// controller).
    Device {
        /// Name (`0000:00:05.0`).
        name: String,
        /// Index among the machine's devices.
        ordinal: u32,
    },
    /// The object a file is, if any.
    Object(Option<Obj>),
    /// Pinned frames, as runs in the order of their addresses (at most [`MAX_RUNS`]).
    Pages(Vec<FrameRun>),
    /// A DMA that could not reach memory, and why.
    DmaFault(DmaFault),
}

impl Msg {
    /// The errno of an error answer, `Ok` otherwise.
    pub fn ok(self) -> Result<Msg, Errno> {
        match self {
            Msg::Err(e) | Msg::Failed(e, _) => Err(Errno(e)),
            m => Ok(m),
        }
    }
}

/// What this process has sent and received on the broker's connections: datagrams, and the
/// largest one (bytes). The preload library reports it at exit under `TYPE1_WIRE_STATS`, so
/// that a test can hold the protocol to its bound: no message grows with the pages it covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireStats {
    /// Datagrams sent.
    pub sent: u64,
    /// The largest datagram sent.
    pub largest_sent: u64,
    /// Datagrams received.
    pub received: u64,
    /// The largest datagram received.
    pub largest_received: u64,
}

static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static LARGEST_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static RECEIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static LARGEST_RECEIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn count(n: &std::sync::atomic::AtomicU64, largest: &std::sync::atomic::AtomicU64, len: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    n.fetch_add(1, Relaxed);
    largest.fetch_max(len as u64, Relaxed);
}

/// This process's [`WireStats`] so far.
pub fn stats() -> WireStats {
    use std::sync::atomic::Ordering::Relaxed;
    WireStats {
        sent: SENT.load(Relaxed),
        largest_sent: LARGEST_SENT.load(Relaxed),
        received: RECEIVED.load(Relaxed),
        largest_received: LARGEST_RECEIVED.load(Relaxed),
    }
}

/// The most entries a run list of a hot-path message may carry ([`Msg::Pages`],
/// [`Callback::Unpin`], [`Callback::Flush`]): [`MAX_RUNS`]. Anything longer is refused at
/// [`send`] (EMSGSIZE), so per-page lists cannot slip into the protocol.
fn within_run_bound(msg: &Msg) -> bool {
    match msg {
        Msg::Pages(r) => r.len() <= MAX_RUNS,
        Msg::Cb(Callback::Unpin(r) | Callback::Flush(r))
        | Msg::Note(Callback::Unpin(r) | Callback::Flush(r)) => r.len() <= MAX_RUNS,
        _ => true,
    }
}

/// Sends `msg` with `payload` and `fds` on `fd`.
pub fn send(fd: i32, msg: &Msg, payload: &[u8], fds: &[i32]) -> Result<(), Errno> {
    if !within_run_bound(msg) {
        return Err(Errno(libc::EMSGSIZE));
    }
    let mut buf = Vec::with_capacity(64 + payload.len());
    buf.extend_from_slice(&[0; 4]);
    let mut buf = postcard::to_extend(msg, buf).map_err(|_| Errno::EINVAL)?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(payload);
    if buf.len() > MAX_MSG {
        return Err(Errno(libc::EMSGSIZE));
    }
    sock::send(fd, &buf, fds)?;
    count(&SENT, &LARGEST_SENT, buf.len());
    Ok(())
}

/// A received datagram: the message, its payload and the files it carried.
#[derive(Debug)]
pub struct Received {
    /// The message.
    pub msg: Msg,
    /// Raw payload.
    pub payload: Vec<u8>,
    /// Attached files (close-on-exec), owned by the receiver.
    pub fds: Vec<i32>,
    /// Files were attached but could not be installed (the receiver is at RLIMIT_NOFILE).
    pub fds_lost: bool,
}

/// Receives one datagram. EPIPE at end of stream; EPROTO for a malformed one (its files are
/// closed).
pub fn recv(fd: i32) -> Result<Received, Errno> {
    recv_with(fd, 0)
}

/// How long [`recv_soon`] polls before it sleeps.
pub const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// [`recv`] of an answer expected soon (a callback's, a request's, the next request of a busy
/// connection): polls for up to [`SPIN`] before it sleeps. Waking a sleeping thread on another
/// CPU costs tens of microseconds on a virtual machine (an IPI per direction: 45 µs a round
/// trip on the 2-vCPU VM of `docs/performance.md`), polling a few; with one usable CPU the peer
/// cannot run while this polls, so it sleeps at once.
pub fn recv_soon(fd: i32) -> Result<Received, Errno> {
    // Not a OnceLock: one being set up by another thread at a `fork` would never be ready
    // in the child. Computing it twice in a race is harmless.
    static CPUS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut cpus = CPUS.load(std::sync::atomic::Ordering::Relaxed);
    if cpus == 0 {
        cpus = type1_host::sys::cpus_allowed();
        CPUS.store(cpus, std::sync::atomic::Ordering::Relaxed);
    }
    if cpus > 1 {
        let t = std::time::Instant::now();
        loop {
            match recv_with(fd, libc::MSG_DONTWAIT) {
                Err(Errno(libc::EAGAIN)) if t.elapsed() < SPIN => std::hint::spin_loop(),
                Err(Errno(libc::EAGAIN)) => break,
                r => return r,
            }
        }
    }
    recv_with(fd, 0)
}

fn recv_with(fd: i32, flags: i32) -> Result<Received, Errno> {
    // One receive buffer per thread: a datagram's room is not zeroed again for every message.
    thread_local! {
        static RX: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let recv_into = |buf: &mut Vec<u8>| {
        if buf.len() < MAX_MSG {
            buf.resize(MAX_MSG, 0);
        }
        let (n, fds, lost) = sock::recv_flags(fd, buf, flags)?;
        Ok::<_, Errno>((decode(&buf[..n]), n, fds, lost))
    };
    let (parsed, n, fds, fds_lost) =
        match RX.try_with(|b| b.try_borrow_mut().ok().map(|mut b| recv_into(&mut b))) {
            Ok(Some(r)) => r?,
            // The thread is exiting (or, impossibly, re-entered): a buffer of its own.
            _ => recv_into(&mut Vec::new())?,
        };
    if n == 0 && fds.is_empty() && !fds_lost {
        return Err(Errno(libc::EPIPE));
    }
    count(&RECEIVED, &LARGEST_RECEIVED, n);
    match parsed {
        Some((msg, payload)) => Ok(Received {
            msg,
            payload,
            fds,
            fds_lost,
        }),
        None => {
            for f in fds {
                type1_host::sys::close(f);
            }
            Err(Errno(libc::EPROTO))
        }
    }
}

/// A datagram's message and payload; `None` if it is not one.
fn decode(d: &[u8]) -> Option<(Msg, Vec<u8>)> {
    let len = u32::from_le_bytes(d.get(..4)?.try_into().ok()?) as usize;
    let body = d.get(4..4usize.checked_add(len)?)?;
    let msg: Msg = postcard::from_bytes(body).ok()?;
    Some((msg, d[4 + len..].to_vec()))
}

/// The broker's abstract socket name for `TYPE1_BROKER=name`, or, without it, the one for
/// this user and configuration (machine file, policy): processes that agree on these share
/// one emulated machine, as processes on one host share its devices.
pub fn socket_name(broker: Option<&str>, uid: u32, config: &str) -> String {
    match broker {
        Some(b) => format!("type1-broker/{uid}/{b}"),
        None => {
            // FNV-1a: a stable short digest of the configuration.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in config.as_bytes() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x100_0000_01b3);
            }
            format!("type1-broker/{uid}/default-{h:016x}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_payload_and_files() {
        let (a, b) = sock::seqpacket_pair().unwrap();
        let (x, y) = sock::seqpacket_pair().unwrap();
        let m = Msg::Req(
            Some(TaskCreds {
                cap_ipc_lock: false,
                memlock_limit_pages: 16,
                mlocked_pages: 3,
            }),
            7,
            Request::Ioctl {
                obj: Obj::Container(3),
                req: 0x3b71,
                arg: 0x7fff_0000,
                pre: 0x7fff_0000,
            },
        );
        send(a, &m, &[1, 2, 3], &[x]).unwrap();
        let r = recv(b).unwrap();
        assert_eq!(r.msg, m);
        assert_eq!(r.payload, vec![1, 2, 3]);
        assert_eq!(r.fds.len(), 1);
        // The received file is `x`'s: what is sent on `y` arrives there.
        sock::send(y, b"ping", &[]).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(sock::recv(r.fds[0], &mut buf).unwrap().0, 4);
        for fd in [a, x, y, r.fds[0]] {
            type1_host::sys::close(fd);
        }
        assert_eq!(recv(b).unwrap_err(), Errno(libc::EPIPE), "peer closed");
        type1_host::sys::close(b);
    }

    #[test]
    fn oversized_messages_are_refused_before_sending() {
        let (a, b) = sock::seqpacket_pair().unwrap();
        let big = vec![0u8; MAX_MSG];
        assert_eq!(
            send(a, &Msg::Data, &big, &[]).unwrap_err(),
            Errno(libc::EMSGSIZE)
        );
        type1_host::sys::close(a);
        type1_host::sys::close(b);
    }

    #[test]
    fn hot_path_messages_are_bounded_whatever_they_cover() {
        // The worst case of each run list, every number at its largest: still one datagram,
        // and a small one (postcard: at most 10 bytes a number).
        let held = Some(RingRef {
            fd: i32::MAX,
            slot: u32::MAX,
            addr: u64::MAX,
        });
        let run = FrameRun {
            pfn: u64::MAX,
            npages: u64::MAX,
            reserved: true,
            memtype: MemType::Uc,
            held,
        };
        let big = [
            Msg::Pages(vec![run; MAX_RUNS]),
            Msg::Note(Callback::Unpin(vec![(u64::MAX, u64::MAX); MAX_RUNS])),
            Msg::Note(Callback::Flush(vec![(u64::MAX, u64::MAX); MAX_RUNS])),
        ];
        let (a, b) = sock::seqpacket_pair().unwrap();
        for m in &big {
            send(a, m, &[], &[]).unwrap();
            let r = recv(b).unwrap();
            assert_eq!(&r.msg, m);
        }
        assert!(stats().largest_received <= 48 * 1024, "{:?}", stats());
        // One run more is refused before anything is sent.
        let over = [
            Msg::Pages(vec![run; MAX_RUNS + 1]),
            Msg::Note(Callback::Unpin(vec![(0, 1); MAX_RUNS + 1])),
            Msg::Cb(Callback::Flush(vec![(0, 1); MAX_RUNS + 1])),
        ];
        for m in &over {
            assert_eq!(send(a, m, &[], &[]).unwrap_err(), Errno(libc::EMSGSIZE));
        }
        type1_host::sys::close(a);
        type1_host::sys::close(b);
    }

    #[test]
    fn names_depend_on_user_and_configuration() {
        assert_eq!(socket_name(Some("t"), 5, "x"), "type1-broker/5/t");
        let a = socket_name(None, 5, "policy=seed");
        assert_ne!(a, socket_name(None, 5, "policy=none"));
        assert_ne!(a, socket_name(None, 6, "policy=seed"));
        assert_eq!(a, socket_name(None, 5, "policy=seed"));
    }
}
