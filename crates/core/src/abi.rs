//! Numeric constants of `linux/vfio.h` that the engine interprets (C2).
//!
//! MAP_DMA and UNMAP_DMA take their flags decoded (`MapFlags`, `UnmapFlags`): the uAPI layer
//! turns the user's flag word into them with `MapFlags::decode` or `UnmapFlags::decode`, which
//! use these constants and reject unknown bits as the ioctl's first check, as the kernel does.
//! CHECK_EXTENSION takes an `Extension` (`Extension::decode` of the argument), SET_IOMMU a
//! `RequestedType` (`RequestedType::decode`: a number that names no backend is reported after
//! the group and backend checks, where the kernel reports it) and DIRTY_PAGES a `DirtyOp`
//! (`DirtyFlag::decode` of the flag word, after the v2 check). The engine reads no raw flag
//! word or type number itself. The uAPI crate imports them (`type1_core::abi::*`) rather than defining its own.

/// `VFIO_API_VERSION`.
pub const VFIO_API_VERSION: i32 = 0;

/// `VFIO_TYPE1_IOMMU`.
pub const VFIO_TYPE1_IOMMU: u32 = 1;
/// `VFIO_SPAPR_TCE_IOMMU`.
pub const VFIO_SPAPR_TCE_IOMMU: u32 = 2;
/// `VFIO_TYPE1v2_IOMMU`.
pub const VFIO_TYPE1V2_IOMMU: u32 = 3;
/// `VFIO_DMA_CC_IOMMU`: the IOMMU enforces DMA cache coherence.
pub const VFIO_DMA_CC_IOMMU: u32 = 4;
/// `VFIO_EEH`.
pub const VFIO_EEH: u32 = 5;
/// `VFIO_TYPE1_NESTING_IOMMU` (reserved in NEW).
pub const VFIO_TYPE1_NESTING_IOMMU: u32 = 6;
/// `VFIO_SPAPR_TCE_v2_IOMMU`.
pub const VFIO_SPAPR_TCE_V2_IOMMU: u32 = 7;
/// `VFIO_NOIOMMU_IOMMU`.
pub const VFIO_NOIOMMU_IOMMU: u32 = 8;
/// `VFIO_UNMAP_ALL`.
pub const VFIO_UNMAP_ALL: u32 = 9;
/// `VFIO_UPDATE_VADDR`.
pub const VFIO_UPDATE_VADDR: u32 = 10;

/// `VFIO_DMA_MAP_FLAG_READ`.
pub const MAP_FLAG_READ: u32 = 1;
/// `VFIO_DMA_MAP_FLAG_WRITE`.
pub const MAP_FLAG_WRITE: u32 = 2;
/// `VFIO_DMA_MAP_FLAG_VADDR`.
pub const MAP_FLAG_VADDR: u32 = 4;

/// `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`.
pub const UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1;
/// `VFIO_DMA_UNMAP_FLAG_ALL`.
pub const UNMAP_FLAG_ALL: u32 = 2;
/// `VFIO_DMA_UNMAP_FLAG_VADDR`.
pub const UNMAP_FLAG_VADDR: u32 = 4;

/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_START`.
pub const DIRTY_FLAG_START: u32 = 1;
/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP`.
pub const DIRTY_FLAG_STOP: u32 = 2;
/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP`.
pub const DIRTY_FLAG_GET_BITMAP: u32 = 4;
