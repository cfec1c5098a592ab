//! # type1-uapi: the `linux/vfio.h` binary interface over the type1 engine
//!
//! This crate is the kernel's ioctl layer (`vfio_main.c`, `group.c`, `container.c` and the
//! ioctl wrappers of `vfio_iommu_type1.c` and `vfio_pci_core.c`) for the engine in
//! `type1-core`. It decodes the user's structs from bytes, checks `argsz` and flags in the
//! kernel's order, calls [`type1_core::Container`]/[`type1_core::Type1`], writes results back
//! (GET_INFO's two-phase `argsz` and capability chain, UNMAP's `size`), and turns engine
//! errors into errnos through the one mapping, [`type1_core::Error::errno`].
//!
//! Neighbours: below it, any [`type1_core::Platform`] (`type1-sim` under scenarios, the
//! broker's platform under the emulation, the test double); above it, `type1-broker`, which
//! runs this layer for every emulated process and implements [`Caller`] over the requesting
//! process (the argument bytes its request carries, callbacks for the rest), and
//! `type1-scenario`'s world (its raw lines' caller works over scratch memory). Nothing here is `unsafe` or touches
//! memory directly: user memory is reached only through [`Caller`], so every path is testable
//! with the test doubles of the `testing` feature (`FakeCaller`, `testing::FakePlatform`),
//! which are not part of the API otherwise.
//!
//! * [`nr`]: request numbers, derived once from `_IO(';', 100 + n)`;
//! * [`table`]: one ioctl table per fd kind (container, type1, group, device) and handlers;
//! * [`Vfio`]: containers, groups and devices, and what closing them does;
//! * [`model`]: the emulated PCI function behind a device fd, of one of two kinds:
//!   [`device`], the DMA engine, or [`nvme`], an NVMe controller; [`pci`], what both share;
//! * [`info`]: GET_INFO's header and capability chain as bytes;
//! * `iommufd`: `/dev/iommu` (iommufd and its VFIO compat container) and the device cdev's
//!   BIND/ATTACH/DETACH, over [`type1_core::iommufd`].

mod caller;
pub mod device;
pub mod info;
mod iommufd;
pub mod model;
pub mod nr;
pub mod nvme;
pub mod pci;
pub mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod vfio;

pub use caller::Caller;
#[cfg(any(test, feature = "testing"))]
pub use caller::FakeCaller;
pub use table::{ArgSz, IoctlDef};
pub use vfio::{GroupSpec, Object, Vfio, VfioError};
