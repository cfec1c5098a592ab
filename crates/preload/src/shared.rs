//! [`SharedHost`]: this process's host platform behind its own lock, shared by every thread.
//!
//! The platform holds the process's pins (io_uring fixed buffers), flushes their cache lines
//! and performs device DMA on them when the broker asks (`answer.rs`); the memory hooks keep
//! its records true when the program unmaps, moves or truncates pinned memory. Each use locks
//! it for one platform call only, the granularity at which the kernel's own memory locks
//! serialize such work. No broker request is ever made while it is held.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use type1_host::HostPlatform;

/// A clonable handle on the one host platform of the process, and how many threads wait for
/// it.
#[derive(Clone, Debug)]
pub(crate) struct SharedHost(Arc<Mutex<HostPlatform>>, Arc<AtomicUsize>);

impl SharedHost {
    pub fn new(p: HostPlatform) -> SharedHost {
        SharedHost(Arc::new(Mutex::new(p)), Arc::new(AtomicUsize::new(0)))
    }

    /// The platform, locked until the guard drops.
    pub fn lock(&self) -> MutexGuard<'_, HostPlatform> {
        if let Ok(g) = self.0.try_lock() {
            return g;
        }
        self.1.fetch_add(1, Ordering::AcqRel);
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        self.1.fetch_sub(1, Ordering::AcqRel);
        g
    }

    /// For a thread that takes the lock call after call (a long pin): lets the threads
    /// waiting for it go first (an unfair lock would hand it straight back), for at most a
    /// millisecond.
    pub fn let_waiters_in(&self) {
        let t = std::time::Instant::now();
        let before = self.1.load(Ordering::Acquire);
        while before > 0
            && self.1.load(Ordering::Acquire) >= before
            && t.elapsed() < std::time::Duration::from_millis(1)
        {
            std::thread::yield_now();
        }
    }
}
