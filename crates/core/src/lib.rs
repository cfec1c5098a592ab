//! # type1-core: the VFIO type1 IOMMU engine
//!
//! A user-space re-implementation of Linux's `drivers/vfio/vfio_iommu_type1.c` with the CPU-cache
//! maintenance proposed by Yan Zhao's series "Enforce CPU cache flush for non-coherent device
//! assignment" (May 2024). Statement IDs in comments (S, C, I, M, U, D, V, A, P, F) refer to
//! the repository's behavioural specification, `docs/spec.md`.
//!
//! Layers, bottom up:
//! * [`types`], [`errno`], [`abi`]: vocabulary and uAPI constants;
//! * [`platform`]: the seam. The engine is generic over [`Platform`]; `type1-sim` (simulated
//!   machine) and `type1-host` (this CPU) implement it;
//! * [`policy`]: where to flush CPU caches ([`policy::Seed`] is the series, [`policy::NoFlush`]
//!   is upstream);
//! * [`Type1`] (one backend instance: mappings, domains, pinning, replay, dirty tracking) and
//!   [`Container`] (groups and SET_IOMMU) on top.
//!
//! Nothing here is `unsafe`, touches real memory, or knows about file descriptors: the uAPI
//! crate decodes ioctls into the request types of this crate.

pub mod abi;
mod attach;
mod container;
mod dirty;
pub mod errno;
mod error;
mod external;
mod info;
pub mod iommufd;
pub mod iopt;
mod map;
mod pin;
pub mod platform;
pub mod policy;
pub mod soft;
pub mod trace;
mod type1;
pub mod types;

pub use container::{Container, Extension, IommuType, RequestedType};
pub use dirty::{DirtyFlag, DirtyOp};
pub use errno::Errno;
pub use error::{
    AttachError, BitmapError, ContainerError, DirtyError, Error, ExternalError, MapError, PinError,
    Result, UnmapError,
};
pub use info::IommuInfo;
pub use iopt::IoPageTable;
pub use map::{MapFlags, MapRequest, UnmapFlags, UnmapRequest, UserBitmap};
pub use platform::{
    CacheMaintenance, DeviceDma, DmaFault, DomainInfo, EmulatedDevices, FlushReason, GroupInfo,
    Iommu, PinnedPage, Platform, PlatformError, Task, TaskMemory, Tracing,
};
pub use soft::{Lean, SoftDomains, SoftIommu};
pub use trace::Event;
pub use type1::{Config, DomainView, MappingView, Type1};
pub use types::*;
