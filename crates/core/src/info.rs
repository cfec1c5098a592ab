//! VFIO_IOMMU_GET_INFO (I1 to I5): the structured answer and its capability-chain encoding (C9).

use crate::{abi::*, type1::Type1, IovaRange, DIRTY_BITMAP_SIZE_MAX};

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

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

impl IommuInfo {
    /// Size of `struct vfio_iommu_type1_info`.
    pub const HEADER_SIZE: usize = 24;

    /// Total argsz needed for the header and the whole chain (I4).
    pub fn total_size(&self) -> usize {
        Self::HEADER_SIZE + self.chain().len()
    }

    /// The capability chain as it sits in the user buffer from offset 24 (I3, C9): MIGRATION,
    /// DMA_AVAIL, then IOVA_RANGE; `next` offsets are absolute, the last one 0.
    pub fn chain(&self) -> Vec<u8> {
        let mut caps: Vec<(u16, Vec<u8>)> = Vec::new();
        let mut mig = Vec::new();
        mig.extend_from_slice(&0u32.to_le_bytes()); // flags
        mig.extend_from_slice(&0u32.to_le_bytes()); // padding
        mig.extend_from_slice(&self.migration_pgsize_bitmap.to_le_bytes());
        mig.extend_from_slice(&self.max_dirty_bitmap_size.to_le_bytes());
        caps.push((INFO_CAP_MIGRATION, mig));
        caps.push((INFO_CAP_DMA_AVAIL, self.dma_avail.to_le_bytes().to_vec()));
        if !self.iova_ranges.is_empty() {
            let mut r = Vec::new();
            r.extend_from_slice(&(self.iova_ranges.len() as u32).to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
            for x in &self.iova_ranges {
                r.extend_from_slice(&x.start.to_le_bytes());
                r.extend_from_slice(&x.last.to_le_bytes());
            }
            caps.push((INFO_CAP_IOVA_RANGE, r));
        }
        let mut out = Vec::new();
        let n = caps.len();
        for (i, (id, body)) in caps.into_iter().enumerate() {
            let size = align8(8 + body.len());
            let next = if i + 1 == n {
                0
            } else {
                (Self::HEADER_SIZE + out.len() + size) as u32
            };
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&1u16.to_le_bytes());
            out.extend_from_slice(&next.to_le_bytes());
            out.extend_from_slice(&body);
            out.resize(out.len() + (size - 8 - body.len()), 0);
        }
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info(n: usize) -> IommuInfo {
        IommuInfo {
            iova_pgsizes: 0x1000,
            migration_pgsize_bitmap: 0x1000,
            max_dirty_bitmap_size: 1 << 28,
            dma_avail: 65535,
            iova_ranges: (0..n as u64)
                .map(|i| IovaRange {
                    start: i << 32,
                    last: (i << 32) + 0xfff,
                })
                .collect(),
        }
    }

    #[test]
    fn total_size_matches_i4_formula() {
        // I4: 24 + 32 + 16 + (16 + 16n if n > 0).
        assert_eq!(info(0).total_size(), 24 + 32 + 16);
        assert_eq!(info(2).total_size(), 24 + 32 + 16 + 16 + 32);
    }

    #[test]
    fn chain_offsets_are_absolute_and_last_is_zero() {
        let c = info(1).chain();
        let next =
            |off: usize| u32::from_le_bytes(c[off + 4..off + 8].try_into().unwrap()) as usize;
        let id = |off: usize| u16::from_le_bytes(c[off..off + 2].try_into().unwrap());
        assert_eq!(id(0), INFO_CAP_MIGRATION);
        assert_eq!(next(0), 24 + 32);
        assert_eq!(id(32), INFO_CAP_DMA_AVAIL);
        assert_eq!(next(32), 24 + 48);
        assert_eq!(id(48), INFO_CAP_IOVA_RANGE);
        assert_eq!(next(48), 0);
    }
}
