//! Engine errors: one typed cause per way an operation can fail, grouped by operation, and
//! their one mapping to Linux errnos.
//!
//! Each operation has its own enum ([`ContainerError`], [`AttachError`], [`MapError`],
//! [`UnmapError`], [`DirtyError`], [`ExternalError`]); causes that several operations share
//! have theirs ([`BitmapError`] for the user dirty bitmap, [`PinError`] for pinning and
//! RLIMIT_MEMLOCK accounting). Variants carry the offending values, never prose, so a caller
//! matches on the cause and a message is made only when one is printed. [`Error`] gathers them
//! (and the platform's failures); [`Error::errno`] is the single place where a cause becomes
//! the errno the kernel returns for it.

use crate::{Errno, GroupId, PlatformError, Prot};

/// A failed engine operation. A failed operation leaves no state change behind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The container (C4 to C9) refused.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// Attaching a group (A1, A2) failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// MAP_DMA or its VADDR update (M1, V2, V3) failed.
    #[error(transparent)]
    Map(#[from] MapError),
    /// UNMAP_DMA (U1 to U5) failed.
    #[error(transparent)]
    Unmap(#[from] UnmapError),
    /// DIRTY_PAGES (D1 to D4) failed.
    #[error(transparent)]
    Dirty(#[from] DirtyError),
    /// A user dirty bitmap (UNMAP_DMA with GET_DIRTY_BITMAP, DIRTY_PAGES GET_BITMAP) is wrong.
    #[error(transparent)]
    Bitmap(#[from] BitmapError),
    /// An emulated device's pin, unpin or `dma_rw` (P7 to P10) failed.
    #[error(transparent)]
    External(#[from] ExternalError),
    /// Pinning user pages or charging them (P1 to P3) failed.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// The platform failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// Why the container refused (C4 to C9).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContainerError {
    /// No flush policy has this name (EINVAL).
    #[error("unknown flush policy {0:?}")]
    UnknownPolicy(String),
    /// An operation that needs SET_IOMMU came first (EINVAL, C7).
    #[error("container has no IOMMU backend set")]
    NoBackend,
    /// SET_IOMMU with no group in the container (EINVAL, C4).
    #[error("container has no group")]
    NoGroup,
    /// SET_IOMMU a second time (EINVAL).
    #[error("container already has a backend")]
    BackendSet,
    /// SET_IOMMU with a type no registered backend opens (ENODEV; type 9 is EINVAL, below).
    #[error("no backend for iommu type {0}")]
    NoSuchType(u64),
    /// A type type1 answers CHECK_EXTENSION for but does not open (EINVAL).
    #[error("iommu type {0} is not type1 or type1v2")]
    NotOpenable(u64),
    /// SET_CONTAINER of a group already in this container (EINVAL).
    #[error("group {0} already in the container")]
    GroupPresent(GroupId),
    /// A group that is not in the container (EINVAL).
    #[error("group {0} is not in the container")]
    GroupAbsent(GroupId),
}

/// Why a group could not be attached (A1, A2).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// Mappings with an invalidated vaddr exist (EBUSY, A1 step 1).
    #[error("vaddr invalid mappings exist")]
    VaddrInvalid,
    /// The group is attached already (EINVAL).
    #[error("group {0} already attached")]
    Attached(GroupId),
    /// The new domain's aperture leaves out existing mappings (EINVAL).
    #[error("domain aperture conflicts with existing mappings")]
    Aperture,
    /// A reserved region of the group overlaps a mapping (EINVAL).
    #[error("reserved region 0x{start:x}..=0x{last:x} overlaps a mapping")]
    Reserved {
        /// First byte of the region.
        start: u64,
        /// Last byte of the region.
        last: u64,
    },
    /// No IOVA is left valid once reserved regions are cut out (EINVAL).
    #[error("no valid IOVA range left after reserved regions")]
    NoIovaLeft,
    /// The group's interrupts are not isolated and unsafe interrupts are not allowed (EPERM).
    #[error("group {0} lacks MSI isolation")]
    MsiIsolation(GroupId),
}

/// Why MAP_DMA, or its VADDR update, failed (M1, V2, V3).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// `flags` has bits MAP_DMA does not know (EINVAL, M1.2).
    #[error("flags 0x{0:x} has unknown bits")]
    UnknownFlags(u32),
    /// `size` is 0 (EINVAL, M1.4).
    #[error("size is 0")]
    SizeZero,
    /// `iova + size` wraps (EOVERFLOW, M1.5).
    #[error("iova 0x{iova:x} + size 0x{size:x} wraps")]
    IovaWraps {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
    },
    /// `vaddr + size` wraps (EOVERFLOW, M1.5).
    #[error("vaddr 0x{vaddr:x} + size 0x{size:x} wraps")]
    VaddrWraps {
        /// Requested vaddr.
        vaddr: u64,
        /// Requested size.
        size: u64,
    },
    /// VADDR together with READ or WRITE (EINVAL, M1.6).
    #[error("VADDR with READ or WRITE")]
    VaddrWithProt,
    /// Neither READ nor WRITE, and no VADDR (EINVAL, M1.6).
    #[error("neither READ nor WRITE")]
    NoProt,
    /// Not aligned to the smallest IOMMU page size (EINVAL, M1.7).
    #[error("iova 0x{iova:x}, vaddr 0x{vaddr:x} or size 0x{size:x} not aligned to 0x{pgsize:x}")]
    Unaligned {
        /// Requested IOVA.
        iova: u64,
        /// Requested vaddr.
        vaddr: u64,
        /// Requested size.
        size: u64,
        /// The page size it must be aligned to.
        pgsize: u64,
    },
    /// The range overlaps an existing mapping (EEXIST, M1.9).
    #[error("iova range 0x{iova:x}+0x{size:x} overlaps an existing mapping")]
    Exists {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
    },
    /// `dma_entry_limit` is exhausted (ENOSPC, M1.10).
    #[error("dma entry limit reached")]
    EntryLimit,
    /// The range is not inside one valid IOVA range (EINVAL, M1.11).
    #[error("iova range 0x{start:x}..=0x{last:x} is not inside one valid range")]
    OutsideValidIova {
        /// First byte asked for.
        start: u64,
        /// Last byte asked for.
        last: u64,
    },
    /// VADDR update of a range no mapping covers (ENOENT, V3).
    #[error("no mapping at 0x{iova:x}")]
    NotFound {
        /// Requested IOVA.
        iova: u64,
    },
    /// VADDR update of a range that is not exactly one invalidated mapping (EINVAL, V3).
    #[error("mapping at 0x{0:x} is not an invalidated mapping of exactly this range")]
    NotInvalidated(u64),
}

/// Why UNMAP_DMA failed (U1 to U5).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnmapError {
    /// `flags` has bits UNMAP_DMA does not know (EINVAL, U1.2).
    #[error("flags 0x{0:x} has unknown bits")]
    UnknownFlags(u32),
    /// GET_DIRTY_BITMAP together with ALL or VADDR (EINVAL, U1.3).
    #[error("GET_DIRTY_BITMAP with ALL or VADDR")]
    BitmapWithAllOrVaddr,
    /// VADDR while emulated groups are attached (EBUSY, U2).
    #[error("VADDR with emulated groups attached")]
    VaddrWithEmulated,
    /// `iova` not aligned to the page size (EINVAL).
    #[error("iova 0x{iova:x} not aligned to 0x{pgsize:x}")]
    Unaligned {
        /// Requested IOVA.
        iova: u64,
        /// The page size.
        pgsize: u64,
    },
    /// ALL with a non-zero iova or size (EINVAL).
    #[error("ALL with non-zero iova or size")]
    AllWithRange,
    /// `size` is 0 or not a multiple of the page size (EINVAL).
    #[error("size 0x{size:x} is 0 or not aligned to 0x{pgsize:x}")]
    BadSize {
        /// Requested size.
        size: u64,
        /// The page size.
        pgsize: u64,
    },
    /// `iova + size` wraps (EOVERFLOW).
    #[error("iova 0x{iova:x} + size 0x{size:x} wraps")]
    Wraps {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
    },
    /// The range's first or last byte falls strictly inside a mapping (EINVAL, U3).
    #[error("0x{at:x} bisects mapping 0x{mapping:x}")]
    Bisects {
        /// The boundary asked for.
        at: u64,
        /// The mapping it cuts.
        mapping: u64,
    },
    /// VADDR on a mapping whose vaddr is invalid already (EINVAL, V1).
    #[error("mapping 0x{0:x} already invalid")]
    AlreadyInvalid(u64),
    /// Emulated devices keep pages of the mapping pinned after repeated notifications
    /// (EBUSY; the kernel BUGs, U5).
    #[error("emulated devices keep pages of mapping 0x{0:x} pinned")]
    DevicesKeepPins(u64),
}

/// Why DIRTY_PAGES failed (D1 to D4).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DirtyError {
    /// Dirty tracking is type1v2 only (EACCES, D1.1).
    #[error("dirty tracking needs type1v2")]
    NotV2,
    /// `flags` has unknown bits (EINVAL).
    #[error("flags 0x{0:x} has unknown bits")]
    UnknownFlags(u32),
    /// Not exactly one of START, STOP, GET_BITMAP (EINVAL).
    #[error("flags 0x{0:x}: exactly one of START, STOP, GET_BITMAP")]
    NotOneFlag(u32),
    /// GET_BITMAP without a range (EINVAL).
    #[error("GET_BITMAP without a range")]
    NoRange,
    /// `size` is 0 (EINVAL).
    #[error("size is 0")]
    SizeZero,
    /// `iova + size` wraps (EOVERFLOW).
    #[error("iova 0x{iova:x} + size 0x{size:x} wraps")]
    Wraps {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
    },
    /// `iova` or `size` not aligned to the page size (EINVAL).
    #[error("iova 0x{iova:x} or size 0x{size:x} not aligned to the page size")]
    Unaligned {
        /// Requested IOVA.
        iova: u64,
        /// Requested size.
        size: u64,
    },
    /// A mapping has more pages than a bitmap can count (EINVAL, D2).
    #[error("mapping 0x{0:x} too large for a dirty bitmap")]
    MappingTooLarge(u64),
    /// The range's first or last byte falls strictly inside a mapping (EINVAL, D4 step 6).
    #[error("0x{at:x} bisects mapping 0x{mapping:x}")]
    Bisects {
        /// The boundary asked for.
        at: u64,
        /// The mapping it cuts.
        mapping: u64,
    },
}

/// Why a user dirty bitmap was refused (U1.4, D4), shared by UNMAP_DMA and DIRTY_PAGES.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    /// GET_DIRTY_BITMAP without the bitmap (EINVAL).
    #[error("GET_DIRTY_BITMAP without a bitmap")]
    Missing,
    /// `pgsize` is 0 or not a power of two (EINVAL).
    #[error("bitmap pgsize 0x{0:x}")]
    BadPgsize(u64),
    /// `pgsize` is not the container's page size (EINVAL).
    #[error("bitmap pgsize 0x{pgsize:x} != 0x{want:x}")]
    WrongPgsize {
        /// The bitmap's page size.
        pgsize: u64,
        /// The container's.
        want: u64,
    },
    /// The bitmap is 0 bytes, more than 256 MiB, or smaller than the range needs (EINVAL).
    #[error("bitmap of {size} bytes for {npages} pages")]
    BadSize {
        /// Bytes of the user's bitmap.
        size: u64,
        /// Pages it must hold a bit for.
        npages: u64,
    },
    /// Dirty tracking is off (EINVAL).
    #[error("dirty tracking is off")]
    TrackingOff,
    /// The user's words cannot hold a bit the engine must set (EFAULT).
    #[error("user bitmap too small for bit {0}")]
    TooSmall(u64),
}

/// Why an emulated device's pin, unpin or `dma_rw` failed (P7 to P10).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExternalError {
    /// `npage` is 0 (EINVAL).
    #[error("npage is 0")]
    NoPages,
    /// More pages than one call may pin (E2BIG).
    #[error("npage {npage} > {max}")]
    TooMany {
        /// Requested.
        npage: u64,
        /// The limit.
        max: u64,
    },
    /// External pins are type1v2 only (EACCES).
    #[error("external pins need type1v2")]
    NotV2,
    /// `iova + npage` pages wraps (EOVERFLOW).
    #[error("iova 0x{iova:x} + {npage} pages wraps")]
    Wraps {
        /// Requested IOVA.
        iova: u64,
        /// Requested pages.
        npage: u64,
    },
    /// Mappings with an invalidated vaddr exist (EBUSY).
    #[error("vaddr invalid mappings exist")]
    VaddrInvalid,
    /// No device registered a `dma_unmap` callback (EINVAL, P10).
    #[error("no device registered for dma_unmap")]
    NoDevice,
    /// No mapping covers this IOVA (EINVAL).
    #[error("iova 0x{0:x} is not mapped")]
    NotMapped(u64),
    /// The access needs more than the mapping allows (EPERM).
    #[error("access {want} exceeds mapping 0x{mapping:x}'s {has}")]
    Prot {
        /// The mapping.
        mapping: u64,
        /// What was asked.
        want: Prot,
        /// What the mapping has.
        has: Prot,
    },
    /// The mapping's address space is gone (EPERM for `dma_rw`; ENODEV for a pin).
    #[error("the mapping's address space is gone")]
    MmGone {
        /// A pin (ENODEV) rather than `dma_rw` (EPERM).
        pin: bool,
    },
    /// `dma_rw` from another address space than the mapper's (EFAULT).
    #[error("caller's address space differs from the mapper's")]
    OtherMm,
    /// The page behind the IOVA is not a valid, refcounted page (EINVAL).
    #[error("pfn 0x{0:x} is not a valid page")]
    InvalidPfn(u64),
}

/// Why pinning user pages or charging them failed (P1 to P3), whichever operation pinned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// The pin of a user address returned nothing (EFAULT).
    #[error("nothing pinned at vaddr 0x{0:x}")]
    NothingPinned(u64),
    /// RLIMIT_MEMLOCK would be exceeded (ENOMEM, P2).
    #[error("RLIMIT_MEMLOCK ({limit} pages) exceeded pinning iova 0x{iova:x}")]
    Memlock {
        /// The limit, in pages.
        limit: u64,
        /// The IOVA being pinned.
        iova: u64,
    },
    /// No task to pin for (ENODEV).
    #[error("no user context")]
    NoUserContext,
    /// The address space to charge is gone (ENODEV).
    #[error("address space is gone")]
    MmGone,
}

impl Error {
    /// The errno the kernel returns for this failure.
    pub fn errno(&self) -> Errno {
        match self {
            Error::Container(e) => match e {
                ContainerError::NoSuchType(_) => Errno::ENODEV,
                _ => Errno::EINVAL,
            },
            Error::Attach(e) => match e {
                AttachError::VaddrInvalid => Errno::EBUSY,
                AttachError::MsiIsolation(_) => Errno::EPERM,
                _ => Errno::EINVAL,
            },
            Error::Map(e) => match e {
                MapError::IovaWraps { .. } | MapError::VaddrWraps { .. } => Errno::EOVERFLOW,
                MapError::Exists { .. } => Errno::EEXIST,
                MapError::EntryLimit => Errno::ENOSPC,
                MapError::NotFound { .. } => Errno::ENOENT,
                _ => Errno::EINVAL,
            },
            Error::Unmap(e) => match e {
                UnmapError::VaddrWithEmulated | UnmapError::DevicesKeepPins(_) => Errno::EBUSY,
                UnmapError::Wraps { .. } => Errno::EOVERFLOW,
                _ => Errno::EINVAL,
            },
            Error::Dirty(e) => match e {
                DirtyError::NotV2 => Errno::EACCES,
                DirtyError::Wraps { .. } => Errno::EOVERFLOW,
                _ => Errno::EINVAL,
            },
            Error::Bitmap(e) => match e {
                BitmapError::TooSmall(_) => Errno::EFAULT,
                _ => Errno::EINVAL,
            },
            Error::External(e) => match e {
                ExternalError::TooMany { .. } => Errno::E2BIG,
                ExternalError::NotV2 => Errno::EACCES,
                ExternalError::Wraps { .. } => Errno::EOVERFLOW,
                ExternalError::VaddrInvalid => Errno::EBUSY,
                ExternalError::Prot { .. } => Errno::EPERM,
                ExternalError::MmGone { pin: true } => Errno::ENODEV,
                ExternalError::MmGone { pin: false } => Errno::EPERM,
                ExternalError::OtherMm => Errno::EFAULT,
                _ => Errno::EINVAL,
            },
            Error::Pin(e) => match e {
                PinError::NothingPinned(_) => Errno::EFAULT,
                PinError::Memlock { .. } => Errno::ENOMEM,
                PinError::NoUserContext | PinError::MmGone => Errno::ENODEV,
            },
            Error::Platform(e) => e.errno,
        }
    }
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cause maps to the errno the spec gives it; a sample per operation, each of the
    /// non-EINVAL ones.
    #[test]
    fn causes_map_to_the_kernels_errnos() {
        let cases: Vec<(Error, Errno)> = vec![
            (ContainerError::NoSuchType(7).into(), Errno::ENODEV),
            (ContainerError::NotOpenable(9).into(), Errno::EINVAL),
            (AttachError::VaddrInvalid.into(), Errno::EBUSY),
            (AttachError::MsiIsolation(GroupId(1)).into(), Errno::EPERM),
            (MapError::SizeZero.into(), Errno::EINVAL),
            (
                MapError::IovaWraps { iova: 1, size: 2 }.into(),
                Errno::EOVERFLOW,
            ),
            (MapError::Exists { iova: 0, size: 1 }.into(), Errno::EEXIST),
            (MapError::EntryLimit.into(), Errno::ENOSPC),
            (MapError::NotFound { iova: 0 }.into(), Errno::ENOENT),
            (UnmapError::DevicesKeepPins(0).into(), Errno::EBUSY),
            (
                UnmapError::Wraps { iova: 0, size: 0 }.into(),
                Errno::EOVERFLOW,
            ),
            (DirtyError::NotV2.into(), Errno::EACCES),
            (BitmapError::TooSmall(3).into(), Errno::EFAULT),
            (
                ExternalError::TooMany {
                    npage: 600,
                    max: 512,
                }
                .into(),
                Errno::E2BIG,
            ),
            (ExternalError::MmGone { pin: true }.into(), Errno::ENODEV),
            (ExternalError::MmGone { pin: false }.into(), Errno::EPERM),
            (ExternalError::OtherMm.into(), Errno::EFAULT),
            (
                PinError::Memlock { limit: 1, iova: 0 }.into(),
                Errno::ENOMEM,
            ),
            (PinError::NoUserContext.into(), Errno::ENODEV),
        ];
        for (e, want) in cases {
            assert_eq!(e.errno(), want, "{e}");
        }
    }
}
