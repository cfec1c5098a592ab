//! What this process does when the broker calls back: pin its pages (as runs of frames, each
//! held by one ring slot), unpin and flush them, read and write its memory for the engine,
//! perform device DMA on pages it pinned, name or receive its fds, and record trace lines.
//!
//! [`SIDE`] is installed into [`crate::client`] by the library's constructor; the answers use
//! the fd table and the host platform of [`crate::state`].

use type1_broker::wire::{self, Callback, FrameRun, Msg, RingRef};
use type1_core::{CacheMaintenance, DmaFault, Errno, Pa, TaskMemory, Vaddr};
use type1_host::fds;
use type1_host::{sock, sys, SELF_MM};

use crate::client::{ProcessSide, Reply};
use crate::state;

/// The answering side [`crate::client`] calls.
pub(crate) const SIDE: ProcessSide = ProcessSide {
    answer,
    trace,
    broker_replaced,
    enter_service: state::enter_for_good,
};

/// Pin callbacks this process answered.
static PIN_CALLBACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many pin callbacks this process has answered (each pins up to the engine's batch).
pub(crate) fn pin_callbacks() -> u64 {
    PIN_CALLBACKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Records a trace line of the broker's in this process's trace.
fn trace(json: &str) {
    if let Ok(h) = state::host() {
        h.lock().trace_json(json);
    }
}

/// The broker that held this process's mappings is gone: every pin goes.
fn broker_replaced() {
    if let Some(h) = state::existing_host() {
        h.lock().unpin_all();
    }
}

fn plain(m: Msg) -> Reply {
    (m, Vec::new(), Vec::new())
}

/// The answer to one callback.
fn answer(cb: Callback, payload: Vec<u8>, fds: Vec<i32>, fds_lost: bool) -> Reply {
    let err = |e: Errno| (Msg::Err(e.0), Vec::new(), Vec::new());
    match cb {
        Callback::Read { addr, len } => {
            let mut buf = vec![0u8; len as usize];
            match sys::read_user(addr, &mut buf) {
                Ok(()) => (Msg::Data, buf, Vec::new()),
                Err(e) => err(e),
            }
        }
        Callback::Write { addr } => match sys::write_user(addr, &payload) {
            Ok(()) => plain(Msg::Value(0)),
            Err(e) => err(e),
        },
        Callback::FdObject(fd) => match state::object_of_fd(fd) {
            Ok(Some(o)) => plain(Msg::Object(Some(o.into()))),
            // Maybe one of the broker's files that came by a route no hook saw: the broker
            // recognises it by its inode.
            Ok(None) if sock::socket_inode(fd).is_some() => {
                (Msg::Object(None), Vec::new(), vec![fd])
            }
            Ok(None) => plain(Msg::Object(None)),
            Err(e) => err(e),
        },
        Callback::NewFd(obj) => match fds.first() {
            Some(&fd) => {
                state::track(fd, obj.into());
                plain(Msg::Value(i64::from(fd)))
            }
            // Sent but not installed: RLIMIT_NOFILE, as `anon_inode_getfd` would report.
            None if fds_lost => err(Errno(libc::EMFILE)),
            None => err(Errno::EIO),
        },
        Callback::Pin {
            vaddr,
            npages,
            write,
        } => {
            let Ok(h) = state::host() else {
                return err(Errno::EIO);
            };
            PIN_CALLBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match pin_runs(&h, vaddr, npages, write) {
                Ok(runs) => plain(Msg::Pages(runs)),
                Err(e) => plain(Msg::Failed(e.errno.0, e.what)),
            }
        }
        Callback::Unpin(runs) => {
            if let Some(h) = state::existing_host() {
                let mut h = h.lock();
                for (pfn, npages) in runs {
                    h.unpin_pages(pfn, npages, true);
                }
            }
            plain(Msg::Value(0))
        }
        Callback::Flush(ranges) => {
            if let Some(h) = state::existing_host() {
                let ranges: Vec<_> = ranges.iter().map(|&(pa, n)| (Pa(pa), n)).collect();
                h.lock().flush_cache_batch(&ranges);
            }
            plain(Msg::Value(0))
        }
        Callback::Ping => plain(Msg::Value(0)),
        Callback::SendFd(fd) => match state::object_of_fd(fd) {
            // An fd that is open (and not one of the emulation's own): sent as it is.
            Ok(_) if !fds::internal(fd) => (Msg::Value(0), Vec::new(), vec![fd]),
            _ => plain(Msg::Err(libc::EBADF)),
        },
        Callback::Dma { pa, len, to_memory } => {
            let Some(h) = state::existing_host() else {
                return plain(Msg::DmaFault(DmaFault::Unreachable));
            };
            let mut buf = if to_memory {
                payload
            } else {
                vec![0u8; len as usize]
            };
            let r = h.lock().dma_frame(pa, &mut buf, to_memory);
            match r {
                Ok(()) if to_memory => plain(Msg::Value(0)),
                Ok(()) => (Msg::Data, buf, Vec::new()),
                Err(f) => plain(Msg::DmaFault(f)),
            }
        }
    }
}

/// Pins up to `npages` pages at `vaddr` as runs of frames, one platform pin call a run (so
/// that each run is held by one ring slot; the platform is locked for one pin call at a
/// time), at most [`wire::MAX_RUNS`] of them. Stops at the
/// first pin that fails once something is pinned (the engine asks again from there and gets
/// the error); fails only if not even the first page could be pinned.
fn pin_runs(
    host: &crate::shared::SharedHost,
    vaddr: u64,
    npages: u64,
    write: bool,
) -> Result<Vec<FrameRun>, type1_core::PlatformError> {
    let mut runs: Vec<FrameRun> = Vec::new();
    let mut done = 0u64;
    while done < npages && runs.len() < wire::MAX_RUNS {
        let want = npages - done;
        // Locked for one platform pin at a time, as when the engine asked page batch by page
        // batch: other threads' calls that need the platform get in between.
        let mut h = host.lock();
        let pages = match h.pin_user_pages(
            SELF_MM,
            Vaddr(vaddr + done * type1_core::PAGE_SIZE),
            want,
            write,
        ) {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => break,
            Err(e) if runs.is_empty() => return Err(e),
            Err(_) => break,
        };
        let got = pages.len() as u64;
        // One pin call: consecutive frames of one kind, held by one slot. Device memory may
        // still have gaps; split there.
        let mut i = 0;
        while i < pages.len() {
            let f = pages[i];
            let mut n = 1;
            while i + n < pages.len()
                && pages[i + n].pfn == f.pfn + n as u64
                && pages[i + n].reserved == f.reserved
            {
                n += 1;
            }
            if runs.len() == wire::MAX_RUNS {
                // No room to report the rest: give it back.
                for p in &pages[i..] {
                    if !p.reserved {
                        h.unpin_pages(p.pfn, 1, false);
                    }
                }
                return Ok(runs);
            }
            let held = if f.reserved {
                None
            } else {
                h.pin_ref(f.pfn)
                    .map(|(fd, slot, addr)| RingRef { fd, slot, addr })
            };
            runs.push(FrameRun {
                pfn: f.pfn,
                npages: n as u64,
                reserved: f.reserved,
                memtype: h.pfn_memtype(f.pfn),
                held,
            });
            i += n;
        }
        done += got;
        drop(h);
        host.let_waiters_in();
    }
    Ok(runs)
}
