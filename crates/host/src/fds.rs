//! Fd numbers the emulation tracks without a lock: [`FdSet`], a lock-free bitmap read on
//! every hooked call, and the registry of the emulation's own fds (io_uring rings, the bounce
//! pipe, pagemap, the trace), which the program never opened and whose close routes must
//! therefore leave alone.

/// A set of fd numbers below 65536, one bit each, read and written without a lock (for
/// checks on every hooked call). Numbers beyond it are never members.
pub struct FdSet([std::sync::atomic::AtomicU64; FdSet::BITS / 64]);

impl FdSet {
    const BITS: usize = 1 << 16;

    /// The empty set.
    pub const fn new() -> FdSet {
        FdSet([const { std::sync::atomic::AtomicU64::new(0) }; FdSet::BITS / 64])
    }

    /// Whether `fd` can be a member (it is below the set's bound).
    pub fn covers(fd: i32) -> bool {
        usize::try_from(fd).is_ok_and(|f| f < FdSet::BITS)
    }

    /// Adds (`on`) or removes `fd`.
    pub fn set(&self, fd: i32, on: bool) {
        use std::sync::atomic::Ordering;
        let Some(f) = usize::try_from(fd).ok().filter(|f| *f < FdSet::BITS) else {
            return;
        };
        let (w, b) = (f / 64, 1u64 << (f % 64));
        if on {
            self.0[w].fetch_or(b, Ordering::AcqRel);
        } else {
            self.0[w].fetch_and(!b, Ordering::AcqRel);
        }
    }

    /// Whether `fd` is a member.
    pub fn contains(&self, fd: i32) -> bool {
        usize::try_from(fd)
            .ok()
            .filter(|f| *f < FdSet::BITS)
            .is_some_and(|f| {
                self.0[f / 64].load(std::sync::atomic::Ordering::Acquire) & (1 << (f % 64)) != 0
            })
    }

    /// Members in `[first, last]`, ascending.
    pub fn members_in(&self, first: u32, last: u32) -> Vec<u32> {
        let hi = (last as usize).min(FdSet::BITS - 1);
        (first as usize..=hi)
            .filter(|f| self.contains(*f as i32))
            .map(|f| f as u32)
            .collect()
    }
}

impl Default for FdSet {
    fn default() -> Self {
        FdSet::new()
    }
}

/// The fds the emulation holds for itself (io_uring rings, the bounce file, pagemap, the
/// trace): the program never opened them, so its close routes must not close them.
static INTERNAL: FdSet = FdSet::new();

/// Marks (or unmarks) `fd` as one of the emulation's own.
pub fn set_internal(fd: i32, on: bool) {
    INTERNAL.set(fd, on);
}

/// The emulation's own fds in `[first, last]`, ascending.
pub fn internal_in(first: u32, last: u32) -> Vec<u32> {
    INTERNAL.members_in(first, last)
}

/// Whether `fd` is one of the emulation's own fds (see [`set_internal`]).
pub fn internal(fd: i32) -> bool {
    INTERNAL.contains(fd)
}
