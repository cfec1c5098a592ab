//! # type1-preload: `/dev/vfio` emulated for unmodified programs (LD_PRELOAD)
//!
//! Built as `libtype1_preload.so`, with the broker executable `type1-broker` next to it.
//! Loaded with `LD_PRELOAD`, it interposes the libc entry points a VFIO user calls: the `open`
//! family and `opendir`, `close`/`close_range`/`closefrom`/`fclose`,
//! `dup`/`dup2`/`dup3`/`fcntl(F_DUPFD*)`, `ioctl`, `read`/`write`/`pread`/`pwrite` and their
//! vector forms, `mmap`/`munmap`/`mremap`/`madvise`/`mprotect`, `ftruncate`/`fallocate`, the
//! `stat` and `fstat` families, `readlink`, `realpath`, and the `wait` family. It answers for:
//!
//! * `/dev/vfio/vfio` (a container), `/dev/vfio/N` (group N), the `/dev/vfio` directory, and
//!   device fds from `VFIO_GROUP_GET_DEVICE_FD`. The objects live in the broker
//!   (`type1-broker`), shared by every process that holds their files, across `fork`, `exec` and
//!   `SCM_RIGHTS`, as in the kernel; each file is a socket whose last close the broker sees
//!   (`ARCHITECTURE.md`, Processes). The process keeps a table of its fds with the identity of
//!   each socket, so a number reused for another file is never answered;
//! * the emulated DMA device behind each device fd (`docs/device.md`): BAR0 registers through
//!   `pread`/`pwrite`/`read`/`write` start DMA through the group's IOMMU domain; BAR2 (device
//!   memory, a memory file the broker keeps) can be `mmap`ped and given to MAP_DMA
//!   (peer-to-peer);
//! * sysfs: `/sys/bus/pci/devices/<bdf>` exists and its `iommu_group` link reads
//!   `../../../../kernel/iommu_groups/N`; its `vendor`, `device`, `class` and `revision` read
//!   as the kernel prints them, and `config` holds the function's configuration space at reset
//!   (not a live view: the device fd's config region is), all read-only.
//!
//! These paths are always answered by the emulation, never passed through, even when the host
//! has real ones. The ioctls are decoded by `type1-uapi` and executed by the `type1-core`
//! engine in the broker; memory work comes back to the process that owns the memory
//! (`answer.rs`), whose `type1-host` platform really pins the pages (io_uring fixed buffers:
//! long-term pins, as VFIO's) and really flushes them (CLFLUSHOPT). The memory hooks keep the
//! pin records true when the program unmaps, moves or truncates pinned memory (the pages stay
//! the device's; their unpin flush happens as their last mapping goes); `docs/pins.md` says
//! what this can and cannot emulate. Everything else goes to libc.
//!
//! The default machine: group 0 behind a coherent IOMMU with device `0000:00:04.0`, group 1
//! behind an IOMMU without snoop control with device `0000:00:05.0`. `TYPE1_MACHINE=FILE`
//! picks another, in `type1-machine`'s TOML format (`docs/machine.md`; units' `snoop_control` and
//! groups' `unit` and `devices` are used, device names become sysfs names; emulated groups are
//! not supported). An invalid file is reported on stderr and leaves a machine without groups.
//!
//! Environment: `TYPE1_POLICY=NAME` (any shipped flush policy, default `seed`), `TYPE1_PIN=uring|track`
//! (how pins hold pages, default `uring`; `track` is the fallback without io_uring),
//! `TYPE1_TRACE=FILE` (JSON lines as in `docs/trace.md`), `TYPE1_BROKER=NAME` (which emulated
//! machine: processes with the same name share one; `type1 exec` gives each run its own),
//! `TYPE1_BROKER_BIN` (the broker executable, if it is not next to the library). At process
//! exit a destructor closes every emulated fd, so that the releases this causes (groups leave
//! their containers, the last one releases the backend: unmap, flush, unpin, unaccount) happen
//! while the process can still answer for its memory, recorded in its trace.
//!
//! Internal I/O uses raw system calls (`type1_host::sys`, `type1_host::sock`) and a
//! thread-local re-entrancy guard, so the library never goes through its own hooks. Calls on
//! files and memory that are not the emulation's take no lock (a lock-free fd bitmap and the
//! host platform's address watch decide); `pthread_atfork` handlers make sure no lock is held
//! across `fork`; an emulated call runs with the thread's asynchronous signals blocked, so a
//! handler runs after it and its own emulated calls work. Running a program under the library
//! (`type1 exec`) and reading its trace is `type1-exec`'s job, a crate that links none of these
//! symbols.

mod answer;
mod client;
mod files;
mod hooks;
mod shared;
mod state;

pub use state::{DEFAULT_DEVICES, SYSFS_PCI};
