//! Memory: `mmap` of device regions, and the hooks that keep pin records true when the
//! program unmaps, moves, protects, advises, truncates or punches pinned memory.

use super::*;

/// `mmap` of a device fd, as vfio-pci allows it: only BAR2 (the one region with the `MMAP`
/// flag), `MAP_SHARED`, page-aligned and inside the region. The pages come from the fd's
/// memfd and are recorded as the device's memory (reserved pfns of type UC) so that they can
/// be the `vaddr` of a MAP_DMA (peer-to-peer). `Err` is the errno.
pub(super) fn device_mmap(
    real: MmapFn,
    dev: u32,
    args: (*mut c_void, usize, c_int, c_int, c_int, OffT),
) -> Result<*mut c_void, Errno> {
    let (addr, len, prot, flags, fd, off) = args;
    let pos = u64::try_from(off).map_err(|_| Errno::EINVAL)?;
    let bar_off = bar2_offset(pos).ok_or(Errno::EINVAL)?;
    let len64 = len as u64;
    if flags & libc::MAP_SHARED == 0
        || len == 0
        || bar_off % PAGE_SIZE != 0
        || bar_off.checked_add(len64).is_none_or(|end| end > BAR2_SIZE)
    {
        return Err(Errno::EINVAL);
    }
    let _ = fd;
    let (_, ordinal, bar) = state::device_info(dev)?;
    if bar < 0 {
        return Err(Errno::EINVAL); // no BAR2 (an NVMe controller)
    }
    let ordinal = u64::from(ordinal);
    // SAFETY: the real mmap with the caller's address, length, protection and flags, on the
    // device's memory file at an offset inside it.
    let p = unsafe { real(addr, len, prot, flags, bar, bar_off as OffT) };
    if p == libc::MAP_FAILED {
        return Err(Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOMEM),
        ));
    }
    let bar_pfn = type1_host::MMIO_PFN_BASE + ordinal * (BAR2_SIZE / PAGE_SIZE);
    let first_pfn = bar_pfn + bar_off / PAGE_SIZE;
    // Peer-to-peer DMA reaches the BAR through the emulation's own mapping of it, so that it
    // follows the device, not whatever the program maps at the address later.
    let host = state::host()?;
    let mut host = host.lock();
    host.set_bar_backing(bar_pfn, BAR2_SIZE / PAGE_SIZE, bar)?;
    host.map_mmio(p as u64, len64.div_ceil(PAGE_SIZE), first_pfn, MemType::Uc);
    Ok(p)
}

macro_rules! mmap_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `mmap`: BAR2 of an emulated device is mappable, nothing else emulated is.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            addr: *mut c_void,
            len: usize,
            prot: c_int,
            flags: c_int,
            fd: c_int,
            off: OffT,
        ) -> *mut c_void {
            let Some(real) = real!($lit, MmapFn) else {
                return enosys(libc::MAP_FAILED);
            };
            if fd >= 0 && state::in_hook() && state::maybe_emulated(fd) {
                set_errno(Errno(libc::EDEADLK)); // see `on_emulated`
                return libc::MAP_FAILED;
            }
            let obj = if fd >= 0 && flags & libc::MAP_ANONYMOUS == 0 {
                guarded(|| state::object_of(fd)).ok().flatten()
            } else {
                None
            };
            if let Some(obj) = obj {
                let r = match obj {
                    Object::Device(dev) => {
                        guarded(|| device_mmap(real, dev, (addr, len, prot, flags, fd, off)))
                            .unwrap_or(Err(Errno::EIO))
                    }
                    _ => Err(Errno::ENODEV),
                };
                return match r {
                    Ok(p) => p,
                    Err(e) => {
                        set_errno(e);
                        libc::MAP_FAILED
                    }
                };
            }
            let fixed = flags & libc::MAP_FIXED != 0;
            if fixed {
                with_platform(addr as u64, len as u64, |p| {
                    p.cpu_unmap_prepare(addr as u64, len as u64)
                });
            }
            // SAFETY: the real function with the caller's arguments.
            let p = unsafe { real(addr, len, prot, flags, fd, off) };
            if p != libc::MAP_FAILED && fixed {
                // Whatever was mapped there (pinned pages, device memory) is gone.
                with_platform(p as u64, len as u64, |pl| {
                    pl.cpu_unmapped(p as u64, len as u64);
                    pl.unmap_mmio(p as u64, len as u64);
                });
            }
            p
        }
    };
}
mmap_hook!(mmap, "mmap");
mmap_hook!(mmap64, "mmap64");

/// Runs `f` on the host platform if `[addr, addr + len)` may hold pinned pages or device
/// memory (the platform's watch); otherwise, and before the emulation has state, does nothing
/// and takes no lock. Never builds the state.
pub(super) fn with_platform(addr: u64, len: u64, f: impl FnOnce(&mut type1_host::HostPlatform)) {
    if watched(addr, len) {
        on_platform(f);
    }
}

/// Runs `f` on the host platform (its own lock only: a MAP_DMA in progress holds it only
/// between two of its platform calls), if the emulation has state.
pub(super) fn on_platform(f: impl FnOnce(&mut type1_host::HostPlatform)) {
    let _ = guarded(|| {
        if let Some(p) = state::existing_host() {
            f(&mut p.lock());
        }
    });
}

/// Whether `[addr, addr + len)` may hold pinned pages or device memory.
pub(super) fn watched(addr: u64, len: u64) -> bool {
    state::watch().is_some_and(|w| w.intersects(addr, len))
}

/// Whether anything is pinned or mapped from a device at all.
pub(super) fn watching() -> bool {
    state::watch().is_some_and(|w| !w.is_empty())
}

/// Interposed `munmap`: pinned pages mapped there get their unpin flush now (no CPU can reach
/// them afterwards) and stay the device's; device memory there is no longer reachable.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    let Some(real) = real!("munmap", unsafe extern "C" fn(*mut c_void, usize) -> c_int) else {
        return enosys(-1);
    };
    let (a, l) = (addr as u64, len as u64);
    with_platform(a, l, |p| p.cpu_unmap_prepare(a, l));
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { real(addr, len) };
    if r == 0 {
        with_platform(a, l, |p| {
            p.cpu_unmapped(addr as u64, len as u64);
            p.unmap_mmio(addr as u64, len as u64);
        });
    }
    r
}

/// Interposed `mremap` (fixed arity: the optional new address is always passed): pinned pages
/// and device memory follow the move; a shrunk tail, or whatever `MREMAP_FIXED` replaces, is
/// unmapped as by `munmap`.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    let Some(real) = real!(
        "mremap",
        unsafe extern "C" fn(*mut c_void, usize, usize, c_int, *mut c_void) -> *mut c_void
    ) else {
        return enosys(libc::MAP_FAILED);
    };
    let (o, ol, nl) = (old as u64, old_len as u64, new_len as u64);
    let fixed = flags & libc::MREMAP_FIXED != 0;
    // The old range, or the target `MREMAP_FIXED` replaces, may hold records.
    let hit = watched(o, ol) || (fixed && watched(new_addr as u64, nl));
    let on_platform = |f: &mut dyn FnMut(&mut type1_host::HostPlatform)| {
        if hit {
            on_platform(|p| f(p));
        }
    };
    on_platform(&mut |p| {
        if nl < ol {
            p.cpu_unmap_prepare(o + nl, ol - nl);
        }
        if fixed {
            p.cpu_unmap_prepare(new_addr as u64, nl);
        }
    });
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { real(old, old_len, new_len, flags, new_addr) };
    if r != libc::MAP_FAILED {
        on_platform(&mut |p| {
            if nl < ol {
                p.cpu_unmapped(o + nl, ol - nl);
                p.unmap_mmio(o + nl, ol - nl);
            }
            p.cpu_moved(o, ol.min(nl), r as u64);
        });
    }
    r
}

/// Interposed `mprotect`: pinned pages whose mapping loses read access get their unpin flush
/// now (no flush instruction may touch them while they stay unreadable) and are flushed
/// through the mapping again once it is readable.
#[no_mangle]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int {
    let Some(real) = real!(
        "mprotect",
        unsafe extern "C" fn(*mut c_void, usize, c_int) -> c_int
    ) else {
        return enosys(-1);
    };
    let (a, l) = (addr as u64, len as u64);
    let hides = prot & libc::PROT_READ == 0;
    if hides {
        with_platform(a, l, |p| p.cpu_unmap_prepare(a, l));
    }
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { real(addr, len, prot) };
    if r == 0 {
        with_platform(a, l, |p| {
            if hides {
                p.cpu_hidden(a, l)
            } else {
                p.cpu_revealed(a, l)
            }
        });
    }
    r
}

/// Interposed `madvise`: advice that drops a range's pages from the page tables
/// (`MADV_DONTNEED`, `MADV_DONTNEED_LOCKED`, `MADV_REMOVE`) leaves pinned pages held by the
/// device and unreachable by the CPU, so they get their unpin flush now. Other advice, such as
/// `MADV_FREE` (a pinned page is never freed), passes through.
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    let Some(real) = real!(
        "madvise",
        unsafe extern "C" fn(*mut c_void, usize, c_int) -> c_int
    ) else {
        return enosys(-1);
    };
    const MADV_DONTNEED_LOCKED: c_int = 24;
    let zaps = matches!(
        advice,
        libc::MADV_DONTNEED | libc::MADV_REMOVE | MADV_DONTNEED_LOCKED
    );
    let (a, l) = (addr as u64, len as u64);
    if zaps {
        with_platform(a, l, |p| p.cpu_unmap_prepare(a, l));
    }
    // SAFETY: the real function with the caller's arguments.
    let r = unsafe { real(addr, len, advice) };
    if r == 0 && zaps {
        with_platform(a, l, |p| p.cpu_unmapped(a, l));
    }
    r
}

/// Bytes `[from, to)` of `fd`'s file are about to leave it: pinned pages the process maps from
/// there get their unpin flush now. Returns the ranges to forget once the call succeeded.
pub(super) fn file_shrinking(fd: c_int, from: u64, to: u64) -> Vec<(u64, u64)> {
    if !watching() || from >= to {
        return Vec::new();
    }
    let ranges = type1_host::procfs::file_mappings(fd, from, to);
    for &(v, l) in &ranges {
        with_platform(v, l, |p| p.cpu_unmap_prepare(v, l));
    }
    ranges
}

pub(super) fn file_shrunk(ranges: &[(u64, u64)]) {
    for &(v, l) in ranges {
        with_platform(v, l, |p| p.cpu_unmapped(v, l));
    }
}

macro_rules! ftruncate_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `ftruncate`: pages cut off a file are no longer mapped by the process;
        /// pinned ones stay the device's and get their unpin flush now.
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, len: OffT) -> c_int {
            let Some(real) = real!($lit, unsafe extern "C" fn(c_int, OffT) -> c_int) else {
                return enosys(-1);
            };
            let ranges = match (u64::try_from(len), watching()) {
                (Ok(l), true) => match type1_host::sys::fstat_id(fd) {
                    Ok((_, _, size)) if l < size => {
                        file_shrinking(fd, l.div_ceil(4096) * 4096, size)
                    }
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            // SAFETY: the real function with the caller's arguments.
            let r = unsafe { real(fd, len) };
            if r == 0 {
                file_shrunk(&ranges);
            }
            r
        }
    };
}
ftruncate_hook!(ftruncate, "ftruncate");
ftruncate_hook!(ftruncate64, "ftruncate64");

macro_rules! fallocate_hook {
    ($name:ident, $lit:literal) => {
        /// Interposed `fallocate`: a punched hole is handled as a truncation of that range.
        #[no_mangle]
        pub unsafe extern "C" fn $name(fd: c_int, mode: c_int, off: OffT, len: OffT) -> c_int {
            let Some(real) = real!(
                $lit,
                unsafe extern "C" fn(c_int, c_int, OffT, OffT) -> c_int
            ) else {
                return enosys(-1);
            };
            let ranges = match (u64::try_from(off), u64::try_from(len)) {
                (Ok(o), Ok(l)) if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 => {
                    // Only whole pages leave the file.
                    file_shrinking(fd, o.div_ceil(4096) * 4096, (o.saturating_add(l)) & !4095)
                }
                _ => Vec::new(),
            };
            // SAFETY: the real function with the caller's arguments.
            let r = unsafe { real(fd, mode, off, len) };
            if r == 0 {
                file_shrunk(&ranges);
            }
            r
        }
    };
}
fallocate_hook!(fallocate, "fallocate");
fallocate_hook!(fallocate64, "fallocate64");
