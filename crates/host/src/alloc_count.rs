//! [`Counting`]: mimalloc, counting the bytes live on the heap, so that a benchmark can report
//! what the engine keeps per mapping and per page (`type1 bench --scale`). A binary opts in
//! with `#[global_allocator]`; nothing else changes. mimalloc rather than glibc's allocator:
//! the model checker clones and drops a machine per transition, and spent a third of its time
//! in glibc's malloc and free.
//!
//! Each thread counts in a local cell and adds to the shared total only every 64 KiB, so that
//! threads allocating at once (`type1 check` explores on every core) do not fight over one
//! cache line. [`live_bytes`] adds the calling thread's pending count first, so a
//! single-threaded measurement is exact; another running thread may be up to 64 KiB behind.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;

/// The allocator underneath.
static INNER: MiMalloc = MiMalloc;
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Bytes a thread counts locally before it adds them to [`LIVE`].
const BATCH: isize = 64 << 10;

thread_local! {
    // Const-initialised, no destructor: safe to touch from inside the allocator.
    static PENDING: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let local = PENDING.try_with(|p| {
        let v = p.get().wrapping_add(delta);
        if v.unsigned_abs() >= BATCH as usize {
            LIVE.fetch_add(v, Ordering::Relaxed);
            p.set(0);
        } else {
            p.set(v);
        }
    });
    if local.is_err() {
        // The thread is being torn down: count directly.
        LIVE.fetch_add(delta, Ordering::Relaxed);
    }
}

/// mimalloc with a count of live heap bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counting;

// SAFETY: every call is forwarded unchanged to mimalloc, which upholds `GlobalAlloc`'s
// contract; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, forwarded.
        let p = unsafe { INNER.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, forwarded.
        unsafe { INNER.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, forwarded.
        let p = unsafe { INNER.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, forwarded.
        let p = unsafe { INNER.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note((new_size as isize).wrapping_sub(layout.size() as isize));
        }
        p
    }
}

/// Heap bytes live now (0 unless the binary installed [`Counting`]), exact for the calling
/// thread's allocations.
pub fn live_bytes() -> usize {
    let _ = PENDING.try_with(|p| LIVE.fetch_add(p.replace(0), Ordering::Relaxed));
    LIVE.load(Ordering::Relaxed).max(0) as usize
}

/// The environment [`favour_throughput`] gives mimalloc: large OS pages, and no purging of
/// freed memory before exit.
pub const THROUGHPUT_ENV: [(&str, &str); 2] = [
    ("MIMALLOC_ALLOW_LARGE_OS_PAGES", "1"),
    ("MIMALLOC_PURGE_DELAY", "-1"),
];

/// Tunes the allocator for a process that grows to many gigabytes of short-lived objects and
/// then exits (`type1 check`): memory comes from the OS in large pages and is not given back
/// before exit. Returning pages and faulting fresh ones in again cost the model checker a
/// quarter of its time, and two threads' page faults serialise in the kernel. mimalloc reads
/// these options when it starts, before `main`, so the process runs itself again with them in
/// its environment; this returns only if that exec fails or they are set already (a user's
/// own setting wins).
pub fn favour_throughput() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    if THROUGHPUT_ENV
        .iter()
        .any(|(k, _)| std::env::var_os(k).is_some())
    {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Some(e),
    };
    Some(
        std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .envs(THROUGHPUT_ENV)
            .exec(),
    )
}
