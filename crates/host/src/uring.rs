//! Long-term page pins from user space: io_uring registered buffers.
//!
//! Linux gives an unprivileged process one way to hold pages the way VFIO does
//! (`pin_user_pages(FOLL_LONGTERM)`): registering them as io_uring *fixed buffers*. A
//! registered page stays the buffer's page whatever the process does to its mappings
//! (`munmap`, `mremap`, `MADV_DONTNEED`, `ftruncate` of a memfd), and at `fork` the kernel copies
//! pinned anonymous pages for the child so that the parent keeps the pinned one. The pins show
//! up in `VmPin` of `/proc/PID/status`, never in `VmLck`, and never set `VM_LOCKED` or split a
//! memory region.
//!
//! [`Ring`] wraps one ring with a sparse table of buffer slots. A slot is filled with
//! `IORING_REGISTER_BUFFERS_UPDATE` (the pin) and emptied the same way (the unpin). Device DMA
//! reaches a pinned page with `IORING_OP_READ_FIXED` (pipe → page: the device writes memory)
//! and `IORING_OP_WRITE_FIXED` (page → pipe: the device reads memory) against a private bounce
//! pipe, which io_uring serves inline (a file would go to a worker thread); the address in the
//! request only selects the offset inside the registered buffer, so it is the address the page
//! had *when it was pinned*.
//!
//! Everything is a raw system call (no libc wrapper an LD_PRELOAD library could interpose).
//! Registering a huge-page-backed buffer costs time in proportion to the table's size (the
//! kernel checks every slot for a head page it has already accounted), so tables are kept
//! small: [`slots_for`] grows them geometrically, from [`FIRST_SLOTS`] up to [`MAX_SLOTS`], one
//! ring after another.
//!
//! The ring and bounce fds are moved above [`FD_FLOOR`] with `O_CLOEXEC`, and the ring's
//! mappings are `MADV_DONTFORK`: a forked child inherits the fds (as it inherits VFIO's) but
//! cannot submit on its parent's ring.

use type1_core::{Errno, PAGE_SIZE};

use crate::sys::check;

/// Buffer slots of the first ring.
pub const FIRST_SLOTS: u32 = 1 << 6;

/// Buffer slots of one ring at most (`IORING_MAX_REG_BUFFERS`).
pub const MAX_SLOTS: u32 = 1 << 14;

/// Slots of the `n`-th ring (from 0): 64, 256, 1024, 4096, then 16384 each.
pub fn slots_for(n: usize) -> u32 {
    FIRST_SLOTS
        .saturating_mul(1 << (2 * n.min(4)))
        .min(MAX_SLOTS)
}

/// Largest buffer one slot may hold (the kernel's `SZ_1G`).
pub const MAX_BUFFER: u64 = 1 << 30;

/// Internal fds are moved to this number or above, away from the program's own.
pub const FD_FLOOR: i32 = 900;

const IORING_OFF_SQ_RING: i64 = 0;
const IORING_OFF_CQ_RING: i64 = 0x800_0000;
const IORING_OFF_SQES: i64 = 0x1000_0000;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_OP_READ_FIXED: u8 = 4;
const IORING_OP_WRITE_FIXED: u8 = 5;
const IORING_REGISTER_BUFFERS2: u32 = 15;
const IORING_REGISTER_BUFFERS_UPDATE: u32 = 16;
const IORING_RSRC_REGISTER_SPARSE: u32 = 1;
const ENTRIES: u32 = 64;

/// Pages one batched transfer moves at most ([`Ring::transfer_batch`]: one linked request a
/// page, submitted at once).
pub const BATCH: usize = ENTRIES as usize;

/// `IOSQE_IO_LINK`: the next request starts when this one completes.
const IOSQE_IO_LINK: u8 = 1 << 2;

#[repr(C)]
#[derive(Default)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct CqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: CqOffsets,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Sqe {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    fd: i32,
    off: u64,
    addr: u64,
    len: u32,
    rw_flags: u32,
    user_data: u64,
    buf_index: u16,
    personality: u16,
    splice_fd_in: i32,
    addr3: u64,
    pad: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Cqe {
    user_data: u64,
    res: i32,
    flags: u32,
}

#[repr(C)]
struct RsrcRegister {
    nr: u32,
    flags: u32,
    resv2: u64,
    data: u64,
    tags: u64,
}

#[repr(C)]
struct RsrcUpdate2 {
    offset: u32,
    resv: u32,
    data: u64,
    tags: u64,
    nr: u32,
    resv2: u32,
}

const _: () = assert!(std::mem::size_of::<Params>() == 120);
const _: () = assert!(std::mem::size_of::<Sqe>() == 64);
const _: () = assert!(std::mem::size_of::<Cqe>() == 16);
const _: () = assert!(std::mem::size_of::<RsrcRegister>() == 32);
const _: () = assert!(std::mem::size_of::<RsrcUpdate2>() == 32);

/// Moves `fd` to a number at or above [`FD_FLOOR`] with close-on-exec, closing the original,
/// and marks it as the emulation's own (`fds::internal`). Keeps `fd` where it is if no such
/// number is free.
pub fn move_high(fd: i32) -> i32 {
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor.
    let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_DUPFD_CLOEXEC, FD_FLOOR) };
    let fd = if r < 0 {
        fd
    } else {
        crate::sys::close(fd);
        r as i32
    };
    crate::fds::set_internal(fd, true);
    fd
}

/// A mapping of the ring made by the kernel, unmapped on drop.
#[derive(Debug)]
struct KMap {
    addr: u64,
    len: u64,
}

impl KMap {
    fn new(fd: i32, len: u64, off: i64) -> Result<KMap, Errno> {
        // SAFETY: a fresh shared mapping of the ring fd at a kernel-chosen address.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mmap,
                0usize,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                off,
            )
        };
        let addr = check(r)? as u64;
        // The child of a fork must not share (and race on) this ring.
        let _ = crate::sys::madvise(addr, len, libc::MADV_DONTFORK);
        Ok(KMap { addr, len })
    }

    fn at<T>(&self, off: u32) -> *mut T {
        (self.addr + off as u64) as *mut T
    }
}

impl Drop for KMap {
    fn drop(&mut self) {
        // SAFETY: the mapping belongs to this value and nothing points into it any more.
        unsafe { libc::syscall(libc::SYS_munmap, self.addr, self.len) };
    }
}

/// Which way a fixed-buffer transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Into the pinned page (a device write to memory).
    ToPage,
    /// Out of the pinned page (a device read of memory).
    FromPage,
}

/// One io_uring with a sparse fixed-buffer table. See the module docs.
#[derive(Debug)]
pub struct Ring {
    fd: i32,
    pid: i32,
    sq: std::mem::ManuallyDrop<KMap>,
    cq: std::mem::ManuallyDrop<Option<KMap>>,
    sqes: std::mem::ManuallyDrop<KMap>,
    sq_off: (u32, u32, u32, u32),
    cq_off: (u32, u32, u32, u32),
    /// Free slots (a stack).
    free: Vec<u32>,
}

impl Ring {
    /// A new ring with `slots` empty buffer slots. The errno says why io_uring is unusable
    /// (ENOSYS: no io_uring; EPERM: `kernel.io_uring_disabled` or a seccomp filter).
    pub fn new(slots: u32) -> Result<Ring, Errno> {
        let mut p = Params::default();
        // SAFETY: `p` is a valid io_uring_params the kernel fills in.
        let r = unsafe { libc::syscall(libc::SYS_io_uring_setup, ENTRIES, &mut p as *mut Params) };
        let fd = move_high(check(r)? as i32);
        let mut ring = Self::map(fd, &p)?;
        let reg = RsrcRegister {
            nr: slots,
            flags: IORING_RSRC_REGISTER_SPARSE,
            resv2: 0,
            data: 0,
            tags: 0,
        };
        // SAFETY: a valid io_uring_rsrc_register of its own size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                fd,
                IORING_REGISTER_BUFFERS2,
                &reg as *const RsrcRegister,
                std::mem::size_of::<RsrcRegister>(),
            )
        };
        check(r)?; // on error `ring` drops, closing the fd
        ring.free = (0..slots).rev().collect();
        Ok(ring)
    }

    /// Takes over a ring another process made (its fd, obtained with `pidfd_getfd`; io_uring
    /// fds cannot travel over `SCM_RIGHTS`), to reach and release the pages it holds after
    /// that process is gone. The ring was made by [`Ring::new`] on this kernel, so its layout
    /// is that of a fresh ring of the same size. Owns `fd` (closed on error and on drop).
    pub fn adopt(fd: i32) -> Result<Ring, Errno> {
        let mut p = Params::default();
        // SAFETY: `p` is a valid io_uring_params the kernel fills in.
        let r = unsafe { libc::syscall(libc::SYS_io_uring_setup, ENTRIES, &mut p as *mut Params) };
        match check(r) {
            Ok(probe) => crate::sys::close(probe as i32),
            Err(e) => {
                crate::sys::close(fd);
                return Err(e);
            }
        }
        Self::map(fd, &p)
    }

    /// The ring's fd (as this process numbers it).
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Maps the rings of `fd`, laid out as `p` says; closes `fd` on error.
    fn map(fd: i32, p: &Params) -> Result<Ring, Errno> {
        let close_on_err = |e: Errno| {
            crate::sys::close(fd);
            e
        };
        let single = p.features & 1 != 0; // IORING_FEAT_SINGLE_MMAP
        let sq_len = p.sq_off.array as u64 + p.sq_entries as u64 * 4;
        let cq_len = p.cq_off.cqes as u64 + p.cq_entries as u64 * 16;
        let sq = KMap::new(
            fd,
            if single { sq_len.max(cq_len) } else { sq_len },
            IORING_OFF_SQ_RING,
        )
        .map_err(close_on_err)?;
        let cq = if single {
            None
        } else {
            Some(KMap::new(fd, cq_len, IORING_OFF_CQ_RING).map_err(close_on_err)?)
        };
        let sqes =
            KMap::new(fd, p.sq_entries as u64 * 64, IORING_OFF_SQES).map_err(close_on_err)?;
        Ok(Ring {
            fd,
            pid: crate::sys::getpid(),
            sq: std::mem::ManuallyDrop::new(sq),
            cq: std::mem::ManuallyDrop::new(cq),
            sqes: std::mem::ManuallyDrop::new(sqes),
            sq_off: (
                p.sq_off.head,
                p.sq_off.tail,
                p.sq_off.ring_mask,
                p.sq_off.array,
            ),
            cq_off: (
                p.cq_off.head,
                p.cq_off.tail,
                p.cq_off.ring_mask,
                p.cq_off.cqes,
            ),
            free: Vec::new(),
        })
    }

    /// Whether this process created the ring (false in a forked child, which must not touch
    /// its parent's pins).
    pub fn owned(&self) -> bool {
        self.pid == crate::sys::getpid()
    }

    /// Free slots left.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    fn update(&self, slot: u32, addr: u64, len: u64) -> Result<(), Errno> {
        let iov = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len as usize,
        };
        let upd = RsrcUpdate2 {
            offset: slot,
            resv: 0,
            data: &iov as *const libc::iovec as u64,
            tags: 0,
            nr: 1,
            resv2: 0,
        };
        // SAFETY: a valid io_uring_rsrc_update2 naming one iovec that lives across the call;
        // the kernel pins (or, for an empty iovec, releases) the slot's pages.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.fd,
                IORING_REGISTER_BUFFERS_UPDATE,
                &upd as *const RsrcUpdate2,
                std::mem::size_of::<RsrcUpdate2>(),
            )
        };
        match check(r)? {
            1 => Ok(()),
            _ => Err(Errno::EIO),
        }
    }

    /// Pins `[addr, addr + len)` (whole pages, at most [`MAX_BUFFER`]) into a free slot, with
    /// write intent: EFAULT for unbacked or non-writable memory and, as for VFIO, for a shared
    /// mapping of a regular file; ENOMEM past the user's RLIMIT_MEMLOCK when the process lacks
    /// CAP_IPC_LOCK; ENOSPC when the ring has no free slot.
    pub fn pin(&mut self, addr: u64, len: u64) -> Result<u32, Errno> {
        debug_assert!(addr % PAGE_SIZE == 0 && len % PAGE_SIZE == 0 && len <= MAX_BUFFER);
        let slot = self.free.pop().ok_or(Errno::ENOSPC)?;
        match self.update(slot, addr, len) {
            Ok(()) => Ok(slot),
            Err(e) => {
                self.free.push(slot);
                Err(e)
            }
        }
    }

    /// Releases a slot's pins. Never fails (a failure to empty the slot, which the kernel only
    /// reports for an invalid table, leaks the slot rather than reusing it).
    pub fn unpin(&mut self, slot: u32) {
        if !self.owned() {
            return; // the parent's pin, not ours to drop
        }
        if self.update(slot, 0, 0).is_ok() {
            self.free.push(slot);
        }
    }

    /// Copies between `buf` and the pinned buffer in `slot`, at `addr` (an address inside the
    /// buffer as it was registered), through the bounce pipe `bounce` (read end, write end;
    /// both non-blocking and empty). A pipe rather than a file: with the bytes (or the room)
    /// already there, io_uring completes the fixed read or write inline instead of handing it
    /// to a worker thread, which would cost a wake-up on another CPU per transfer. `buf` must
    /// not cross a page of the buffer (and so fits in the pipe at once).
    pub fn transfer(
        &mut self,
        slot: u32,
        addr: u64,
        buf: &mut [u8],
        dir: Dir,
        bounce: (i32, i32),
    ) -> Result<(), Errno> {
        if !self.owned() {
            return Err(Errno::EPERM);
        }
        if buf.len() > PAGE_SIZE as usize {
            return Err(Errno::EINVAL);
        }
        let len = buf.len();
        self.transfer_batch(&[(slot, addr, len)], buf, dir, bounce)
    }

    /// [`Ring::transfer`] of several pieces at once: `items` are `(slot, addr, len)`, each
    /// within its slot's buffer, at most [`BATCH`] of them and at most the pipe's capacity in
    /// all; `buf` holds their bytes in order. One write to (or read from) the pipe
    /// and one submission of linked requests move them all.
    pub fn transfer_batch(
        &mut self,
        items: &[(u32, u64, usize)],
        buf: &mut [u8],
        dir: Dir,
        bounce: (i32, i32),
    ) -> Result<(), Errno> {
        if !self.owned() {
            return Err(Errno::EPERM);
        }
        let r = self.batch_through(items, buf, dir, bounce);
        if r.is_err() {
            let mut sink = [0u8; 512];
            while matches!(crate::sys::read(bounce.0, &mut sink), Ok(n) if n > 0) {}
        }
        r
    }

    /// Moves pieces between the pinned buffers and the file `fd` directly, without the bounce
    /// pipe: `items` are `(slot, addr, len)` as for [`Ring::transfer_batch`] (no pipe limits
    /// their bytes), and the file's
    /// bytes for them follow one another from offset `off`. `Dir::ToPage` reads the file into
    /// the pages (`READ_FIXED`), `Dir::FromPage` writes the pages to the file. A short
    /// transfer (past the end of the file) is EIO.
    pub fn transfer_file(
        &mut self,
        items: &[(u32, u64, usize)],
        fd: i32,
        off: u64,
        dir: Dir,
    ) -> Result<(), Errno> {
        if !self.owned() {
            return Err(Errno::EPERM);
        }
        if items.is_empty() || items.len() > BATCH || items.iter().any(|i| i.2 > PAGE_SIZE as usize)
        {
            return Err(Errno::EINVAL);
        }
        let mut at = off;
        let sqes: Vec<Sqe> = items
            .iter()
            .enumerate()
            .map(|(i, &item)| {
                let sqe = fixed_sqe(dir, fd, at, item, i + 1 < items.len(), i);
                at += item.2 as u64;
                sqe
            })
            .collect();
        for (i, r) in self.submit_linked(&sqes)?.iter().enumerate() {
            if *r < 0 {
                return Err(Errno(-*r));
            }
            if *r as usize != items[i].2 {
                return Err(Errno::EIO);
            }
        }
        Ok(())
    }

    fn batch_through(
        &mut self,
        items: &[(u32, u64, usize)],
        buf: &mut [u8],
        dir: Dir,
        (rd, wr): (i32, i32),
    ) -> Result<(), Errno> {
        let total: usize = items.iter().map(|i| i.2).sum();
        if items.is_empty()
            || items.len() > BATCH
            || total != buf.len()
            // A pipe holds a page whatever its size: only more needs asking.
            || (total > PAGE_SIZE as usize
                && total > crate::sys::pipe_capacity(wr).unwrap_or(PAGE_SIZE as usize))
        {
            return Err(Errno::EINVAL);
        }
        if dir == Dir::ToPage {
            crate::sys::write_all(wr, buf)?;
        }
        let fd = if dir == Dir::ToPage { rd } else { wr };
        let sqes: Vec<Sqe> = items
            .iter()
            .enumerate()
            .map(|(i, &item)| fixed_sqe(dir, fd, u64::MAX, item, i + 1 < items.len(), i))
            .collect();
        let res = self.submit_linked(&sqes)?;
        for (i, r) in res.iter().enumerate() {
            if *r < 0 {
                return Err(Errno(-*r));
            }
            if *r as usize != items[i].2 {
                return Err(Errno::EIO);
            }
        }
        if dir == Dir::FromPage {
            let mut got = 0;
            while got < total {
                match crate::sys::read(rd, &mut buf[got..])? {
                    0 => return Err(Errno::EIO),
                    n => got += n,
                }
            }
        }
        Ok(())
    }

    /// Submits linked requests and waits for all their completions; their `res` by index.
    fn submit_linked(&mut self, sqes: &[Sqe]) -> Result<Vec<i32>, Errno> {
        use std::sync::atomic::{AtomicU32, Ordering};
        let n = sqes.len() as u32;
        let (h, t, m, a) = self.sq_off;
        // SAFETY: the offsets come from io_uring_setup and lie inside the ring mappings; the
        // head and tail are shared with the kernel and accessed atomically; the SQE slots and
        // array entries are ours until the tail is published; at most ENTRIES requests are
        // written (the callers check), so no slot the kernel has not consumed is overwritten
        // (every earlier submission was consumed by its io_uring_enter and reaped).
        let res = unsafe {
            let tail = &*self.sq.at::<AtomicU32>(t);
            let mask = *self.sq.at::<u32>(m);
            let _head = &*self.sq.at::<AtomicU32>(h);
            let cur = tail.load(Ordering::Relaxed);
            for (k, sqe) in sqes.iter().enumerate() {
                let idx = cur.wrapping_add(k as u32) & mask;
                *self.sqes.at::<Sqe>(idx * 64) = *sqe;
                *self.sq.at::<u32>(a + idx * 4) = idx;
            }
            tail.store(cur.wrapping_add(n), Ordering::Release);
            let r = libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                n,
                n,
                IORING_ENTER_GETEVENTS,
                std::ptr::null::<libc::c_void>(),
                0usize,
            );
            check(r)?;
            let cq = (*self.cq).as_ref().unwrap_or(&self.sq);
            let (ch, ct, cm, cqes) = self.cq_off;
            let chead = &*cq.at::<AtomicU32>(ch);
            let ctail = &*cq.at::<AtomicU32>(ct);
            let cmask = *cq.at::<u32>(cm);
            let mut out = vec![-libc::EIO; sqes.len()];
            let mut head = chead.load(Ordering::Relaxed);
            let mut seen = 0;
            while seen < n && ctail.load(Ordering::Acquire) != head {
                let cqe = *cq.at::<Cqe>(cqes + (head & cmask) * 16);
                if let Some(slot) = out.get_mut(cqe.user_data as usize) {
                    *slot = cqe.res;
                }
                head = head.wrapping_add(1);
                seen += 1;
            }
            chead.store(head, Ordering::Release);
            if seen < n {
                return Err(Errno::EIO);
            }
            out
        };
        Ok(res)
    }
}

/// A fixed-buffer request for `item` `(slot, addr, len)`: `READ_FIXED` from `fd` into the
/// buffer (`Dir::ToPage`) or `WRITE_FIXED` from it to `fd`, at file offset `off` (`u64::MAX`
/// for a pipe), linked to the next request when `linked`, tagged `i`.
fn fixed_sqe(dir: Dir, fd: i32, off: u64, item: (u32, u64, usize), linked: bool, i: usize) -> Sqe {
    let (slot, addr, len) = item;
    Sqe {
        opcode: match dir {
            Dir::ToPage => IORING_OP_READ_FIXED,
            Dir::FromPage => IORING_OP_WRITE_FIXED,
        },
        flags: if linked { IOSQE_IO_LINK } else { 0 },
        fd,
        off,
        addr,
        len: len as u32,
        user_data: i as u64,
        buf_index: slot as u16,
        ..Sqe::default()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // In the owner, closing the ring releases every pin it holds. In a forked child the
        // fds are the child's own references: closing them leaves the parent's pins alone,
        // and the ring's mappings (MADV_DONTFORK) do not exist there.
        if self.owned() {
            // SAFETY: each mapping is dropped once, here, and nothing uses them afterwards.
            unsafe {
                std::mem::ManuallyDrop::drop(&mut self.sq);
                std::mem::ManuallyDrop::drop(&mut self.cq);
                std::mem::ManuallyDrop::drop(&mut self.sqes);
            }
        }
        crate::sys::close(self.fd);
    }
}
