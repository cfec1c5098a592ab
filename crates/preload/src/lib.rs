//! # type1-preload: `/dev/vfio` emulated inside an unmodified program (LD_PRELOAD)
//!
//! Built as `libtype1_preload.so`. Loaded with `LD_PRELOAD`, it interposes the libc entry points
//! a VFIO user calls (the `open` family, `close`/`close_range`/`closefrom`/`fclose`,
//! `dup`/`dup2`/`dup3`/`fcntl(F_DUPFD*)`, `ioctl`, `pread`/`pwrite`,
//! `mmap`/`munmap`/`mremap`/`madvise`/`mprotect`, `ftruncate`/`fallocate`,
//! the `stat` family, `readlink`, `realpath`) and answers, in-process, for:
//!
//! * `/dev/vfio/vfio` (a container) and `/dev/vfio/N` (group N), and device fds from
//!   `VFIO_GROUP_GET_DEVICE_FD`. Each is a real fd (`memfd_create`), so numbering, `close`,
//!   `poll` and `fstat` behave; the emulation keys on the fd number *and* the identity of
//!   that memfd (so a number closed by a route no hook sees, such as `syscall(SYS_close)`, and
//!   reused for a real file is never answered), follows duplicates, and releases an object at
//!   the last close of all its fds;
//! * the emulated DMA device behind each device fd (`docs/device.md`): BAR0 registers through
//!   `pread`/`pwrite` start DMA through the group's IOMMU domain; BAR2 (device memory, backed
//!   by the device fd's memfd) can be `mmap`ped and given to MAP_DMA (peer-to-peer);
//! * sysfs: `/sys/bus/pci/devices/<bdf>` exists and its `iommu_group` link reads
//!   `../../../../kernel/iommu_groups/N`.
//!
//! These paths are always answered by the emulation, never passed through, even when the host
//! has real ones. The ioctls are decoded by `type1-uapi` and executed by the `type1-core`
//! engine on `type1-host`'s platform, so MAP_DMA really pins the caller's pages (io_uring fixed
//! buffers: long-term pins, as VFIO's) and the non-coherent flushes are real CLFLUSHOPTs. The
//! memory hooks keep the pin records true when the program unmaps, moves or truncates pinned
//! memory (the pages stay the device's; their unpin flush happens as their last mapping goes);
//! `docs/pins.md` says what this can and cannot emulate. Everything else goes to libc.
//!
//! The default machine: group 0 behind a coherent IOMMU with device `0000:00:04.0`, group 1
//! behind an IOMMU without snoop control with device `0000:00:05.0`. `TYPE1_MACHINE=FILE`
//! picks another, in `type1-sim`'s TOML format (`docs/machine.md`; units' `snoop_control` and
//! groups' `unit` and `devices` are used, device names become sysfs names; emulated groups are
//! not supported). An invalid file is reported on stderr and leaves a machine without groups.
//!
//! Environment: `TYPE1_POLICY=seed|none` (flush policy, default `seed`), `TYPE1_PIN=uring|track`
//! (how pins hold pages, default `uring`; `track` is the fallback without io_uring),
//! `TYPE1_TRACE=FILE`
//! (JSON lines as in `docs/trace.md`). At process exit a destructor closes every emulated fd
//! the way the kernel does for an exiting process: groups leave their containers and the last
//! one releases the backend (unmap, flush, unpin, unaccount), all recorded in the trace.
//!
//! Internal I/O uses raw system calls (`type1_host::sys`) and a thread-local re-entrancy guard,
//! so the library never goes through its own hooks. Calls on files and memory that are not
//! the emulation's never take its lock (a lock-free fd bitmap and the host platform's address
//! watch decide); `pthread_atfork` handlers make sure no lock is held across `fork`; an
//! emulated call from a signal handler that interrupted one on the same thread fails with
//! EDEADLK rather than reaching the real file behind the fd. Running a program under the library
//! (`type1 exec`) and reading its trace is `type1-exec`'s job, a crate that links none of these
//! symbols.

mod client;
mod files;
mod hooks;
mod shared;
mod state;

pub use state::{DEFAULT_DEVICES, SYSFS_PCI};
