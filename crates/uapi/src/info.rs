//! The byte form of VFIO_IOMMU_GET_INFO's answer (I3, I4, C9): `struct vfio_iommu_type1_info`
//! and the capability chain after it. The engine gives the structured answer
//! ([`type1_core::IommuInfo`]); how it sits in the user's buffer is this layer's business.

use type1_core::IommuInfo;
use vfio_bindings::bindings::vfio as b;

/// Size of `struct vfio_iommu_type1_info`: the chain starts right after it.
pub const HEADER_SIZE: usize = 24;

const _: () = assert!(std::mem::size_of::<b::vfio_iommu_type1_info>() == HEADER_SIZE);

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// The capability chain as it sits in the user buffer from offset [`HEADER_SIZE`]: MIGRATION,
/// DMA_AVAIL, then IOVA_RANGE (left out when there is no range).
pub fn chain(info: &IommuInfo) -> Vec<u8> {
    let mut mig = Vec::new();
    mig.extend_from_slice(&0u32.to_le_bytes()); // flags
    mig.extend_from_slice(&0u32.to_le_bytes()); // padding
    mig.extend_from_slice(&info.migration_pgsize_bitmap.to_le_bytes());
    mig.extend_from_slice(&info.max_dirty_bitmap_size.to_le_bytes());
    let mut caps = vec![
        (b::VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, mig),
        dma_avail_cap(info.dma_avail),
    ];
    if !info.iova_ranges.is_empty() {
        caps.push(iova_range_cap(&info.iova_ranges));
    }
    encode_chain(caps)
}

/// The DMA_AVAIL capability's id and body.
pub fn dma_avail_cap(avail: u32) -> (u32, Vec<u8>) {
    (
        b::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
        avail.to_le_bytes().to_vec(),
    )
}

/// The IOVA_RANGE capability's id and body.
pub fn iova_range_cap(ranges: &[type1_core::IovaRange]) -> (u32, Vec<u8>) {
    let mut r = Vec::new();
    r.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    r.extend_from_slice(&0u32.to_le_bytes());
    for x in ranges {
        r.extend_from_slice(&x.start.to_le_bytes());
        r.extend_from_slice(&x.last.to_le_bytes());
    }
    (b::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, r)
}

/// Capabilities `(id, body)` laid out as a chain from offset [`HEADER_SIZE`]: each with its
/// header (version 1), padded to 8 bytes; `next` offsets are from the start of the buffer,
/// the last one 0.
pub fn encode_chain(caps: Vec<(u32, Vec<u8>)>) -> Vec<u8> {
    let mut out = Vec::new();
    let n = caps.len();
    for (i, (id, body)) in caps.into_iter().enumerate() {
        let size = align8(8 + body.len());
        let next = if i + 1 == n {
            0
        } else {
            (HEADER_SIZE + out.len() + size) as u32
        };
        out.extend_from_slice(&(id as u16).to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // version
        out.extend_from_slice(&next.to_le_bytes());
        out.extend_from_slice(&body);
        out.resize(out.len() + (size - 8 - body.len()), 0);
    }
    out
}

/// The `argsz` the whole answer needs (I4): the header and the chain.
pub fn total_size(info: &IommuInfo) -> usize {
    HEADER_SIZE + chain(info).len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use type1_core::IovaRange;

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
        assert_eq!(total_size(&info(0)), 24 + 32 + 16);
        assert_eq!(total_size(&info(2)), 24 + 32 + 16 + 16 + 32);
    }

    #[test]
    fn chain_offsets_are_absolute_and_last_is_zero() {
        let c = chain(&info(1));
        let next =
            |off: usize| u32::from_le_bytes(c[off + 4..off + 8].try_into().unwrap()) as usize;
        let id = |off: usize| u16::from_le_bytes(c[off..off + 2].try_into().unwrap()) as u32;
        assert_eq!(id(0), b::VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION);
        assert_eq!(next(0), 24 + 32);
        assert_eq!(id(32), b::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL);
        assert_eq!(next(32), 24 + 48);
        assert_eq!(id(48), b::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
        assert_eq!(next(48), 0);
    }
}
