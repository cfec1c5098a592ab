//! VFIO_IOMMU_GET_INFO (I1 to I5): the structured answer. Its byte form (the header and the
//! capability chain, C9) is `type1-uapi`'s (`info.rs`).

use crate::{type1::Type1, IovaRange, DIRTY_BITMAP_SIZE_MAX};

/// The structured GET_INFO answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IommuInfo {
    /// `iova_pgsizes`.
    pub iova_pgsizes: u64,
    /// MIGRATION cap: `pgsize_bitmap` (PG only).
    pub migration_pgsize_bitmap: u64,
    /// MIGRATION cap: `max_dirty_bitmap_size`.
    pub max_dirty_bitmap_size: u64,
    /// DMA_AVAIL cap.
    pub dma_avail: u32,
    /// IOVA_RANGE cap, omitted when empty.
    pub iova_ranges: Vec<IovaRange>,
}

impl Type1 {
    /// GET_INFO's answer (I2, I3).
    pub fn info(&self) -> IommuInfo {
        IommuInfo {
            iova_pgsizes: self.pgsize_bitmap,
            migration_pgsize_bitmap: self.pgsize(),
            max_dirty_bitmap_size: DIRTY_BITMAP_SIZE_MAX,
            dma_avail: self.dma_avail,
            iova_ranges: self.iova_list.clone(),
        }
    }
}
