//! [`SharedHost`]: this process's host platform behind its own lock, shared by every thread.
//!
//! The platform holds the process's pins (io_uring fixed buffers), flushes their cache lines
//! and performs device DMA on them when the broker asks (`client.rs`); the memory hooks keep
//! its records true when the program unmaps, moves or truncates pinned memory. Each use locks
//! it for one platform call only, the granularity at which the kernel's own memory locks
//! serialize such work. No broker request is ever made while it is held.

use std::sync::{Arc, Mutex, MutexGuard};

use type1_host::HostPlatform;

/// A clonable handle on the one host platform of the process.
#[derive(Clone, Debug)]
pub(crate) struct SharedHost(Arc<Mutex<HostPlatform>>);

impl SharedHost {
    pub fn new(p: HostPlatform) -> SharedHost {
        SharedHost(Arc::new(Mutex::new(p)))
    }

    /// The platform, locked until the guard drops.
    pub fn lock(&self) -> MutexGuard<'_, HostPlatform> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
