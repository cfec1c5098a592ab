//! Dirty page tracking (D1 to D6): per-mapping bitmaps and their copy-out to user bitmaps.

use crate::{
    abi::*,
    map::verify_bitmap_size,
    type1::{Dma, Type1},
    BitmapError, DirtyError, Result,
};

/// Which of VFIO_IOMMU_DIRTY_PAGES's three operations a flag word asks for (D1): exactly one
/// of START, STOP and GET_BITMAP, no other bit. Decoded by the uAPI layer after its v2 check
/// (the kernel's EACCES comes before anything is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyFlag {
    /// START: track from now on.
    Start,
    /// STOP: stop tracking and forget the bitmaps.
    Stop,
    /// GET_BITMAP: report and re-arm a range's bits.
    GetBitmap,
}

impl DirtyFlag {
    /// The operation `flags` asks for: unknown bits, or not exactly one flag, are EINVAL.
    pub fn decode(flags: u32) -> Result<DirtyFlag> {
        let mask = DIRTY_FLAG_START | DIRTY_FLAG_STOP | DIRTY_FLAG_GET_BITMAP;
        if flags & !mask != 0 {
            return Err(DirtyError::UnknownFlags(flags).into());
        }
        match flags {
            DIRTY_FLAG_START => Ok(DirtyFlag::Start),
            DIRTY_FLAG_STOP => Ok(DirtyFlag::Stop),
            DIRTY_FLAG_GET_BITMAP => Ok(DirtyFlag::GetBitmap),
            _ => Err(DirtyError::NotOneFlag(flags).into()),
        }
    }
}

/// One VFIO_IOMMU_DIRTY_PAGES call, decoded.
#[derive(Debug)]
pub enum DirtyOp<'a> {
    /// START (D2).
    Start,
    /// STOP (D3).
    Stop,
    /// GET_BITMAP of `[iova, iova + size)` into `bitmap` (D4).
    GetBitmap {
        /// First IOVA.
        iova: u64,
        /// Bytes.
        size: u64,
        /// The user's bitmap, ORed into.
        bitmap: crate::map::UserBitmap<'a>,
    },
}

fn set_bits(bm: &mut [u64], start: u64, n: u64) {
    for i in start..start + n {
        bm[(i / 64) as usize] |= 1 << (i % 64);
    }
}

impl Dma {
    fn npages(&self, pgshift: u32) -> u64 {
        self.size >> pgshift
    }
}

impl Type1 {
    /// Allocates one mapping's bitmap and pre-sets its externally pinned pages (D2).
    pub(crate) fn dma_bitmap_alloc(&mut self, key: u64, pgshift: u32) -> Result<()> {
        let dma = self.dmas.get_mut(&key).expect("present");
        let npages = dma.npages(pgshift);
        if npages > i32::MAX as u64 {
            return Err(DirtyError::MappingTooLarge(key).into());
        }
        // One spare u64 for shifting, like the kernel.
        let mut bm = vec![0u64; (npages.div_ceil(64) + 1) as usize];
        for iova in dma.pfn_list.keys() {
            set_bits(&mut bm, (iova - dma.iova) >> pgshift, 1);
        }
        dma.bitmap = Some(bm);
        Ok(())
    }

    /// Sets every bit of every bitmap (a non-pinning group left, D6).
    pub(crate) fn populate_bitmap_full(&mut self) {
        let pgshift = self.pgsize().trailing_zeros();
        for d in self.dmas.values_mut() {
            let n = d.npages(pgshift);
            if let Some(bm) = d.bitmap.as_mut() {
                set_bits(bm, 0, n);
            }
        }
    }

    /// D5: ORs a mapping's bits into the user bitmap at `(dma.iova - base) / pgsize`.
    pub(crate) fn update_user_bitmap(
        &mut self,
        user: &mut [u64],
        key: u64,
        base: u64,
        pgsize: u64,
    ) -> Result<()> {
        let pgshift = pgsize.trailing_zeros();
        let all = self.num_non_pinned_groups > 0;
        let dma = self.dmas.get_mut(&key).expect("present");
        let n = dma.npages(pgshift);
        let Some(bm) = dma.bitmap.as_mut() else {
            return Ok(());
        };
        if all && dma.iommu_mapped {
            set_bits(bm, 0, n);
        }
        let off = (dma.iova - base) >> pgshift;
        for i in 0..n {
            if bm[(i / 64) as usize] >> (i % 64) & 1 == 1 {
                let bit = off + i;
                let w = (bit / 64) as usize;
                let Some(word) = user.get_mut(w) else {
                    return Err(BitmapError::TooSmall(bit).into());
                };
                *word |= 1 << (bit % 64);
            }
        }
        Ok(())
    }

    /// VFIO_IOMMU_DIRTY_PAGES (D1 to D4): EACCES on a v1 container whatever the operation.
    pub fn dirty_pages(&mut self, op: DirtyOp<'_>) -> Result<()> {
        if !self.v2 {
            return Err(DirtyError::NotV2.into());
        }
        match op {
            DirtyOp::Start => {
                if self.dirty_page_tracking {
                    return Ok(());
                }
                let pgshift = self.pgsize().trailing_zeros();
                let keys: Vec<u64> = self.dmas.keys().copied().collect();
                for (i, k) in keys.iter().enumerate() {
                    if let Err(e) = self.dma_bitmap_alloc(*k, pgshift) {
                        for k in &keys[..i] {
                            self.dmas.get_mut(k).expect("present").bitmap = None;
                        }
                        return Err(e);
                    }
                }
                self.dirty_page_tracking = true;
                Ok(())
            }
            DirtyOp::Stop => {
                for d in self.dmas.values_mut() {
                    d.bitmap = None;
                }
                self.dirty_page_tracking = false;
                Ok(())
            }
            DirtyOp::GetBitmap {
                iova,
                size,
                bitmap: bm,
            } => {
                if size == 0 {
                    return Err(DirtyError::SizeZero.into());
                }
                iova.checked_add(size - 1)
                    .ok_or(DirtyError::Wraps { iova, size })?;
                if bm.pgsize == 0 || !bm.pgsize.is_power_of_two() {
                    return Err(BitmapError::BadPgsize(bm.pgsize).into());
                }
                verify_bitmap_size(size >> bm.pgsize.trailing_zeros(), bm.size)?;
                let pg = self.pgsize();
                if bm.pgsize != pg {
                    return Err(BitmapError::WrongPgsize {
                        pgsize: bm.pgsize,
                        want: pg,
                    }
                    .into());
                }
                if iova % pg != 0 || size % pg != 0 {
                    return Err(DirtyError::Unaligned { iova, size }.into());
                }
                if !self.dirty_page_tracking {
                    return Err(BitmapError::TrackingOff.into());
                }
                let last = iova + (size - 1);
                if let Some((at, mapping)) = self.bisected(iova, last) {
                    return Err(DirtyError::Bisects { at, mapping }.into());
                }
                let keys: Vec<u64> = self.dmas.range(iova..=last).map(|(k, _)| *k).collect();
                let pgshift = pg.trailing_zeros();
                for k in keys {
                    self.update_user_bitmap(bm.data, k, iova, pg)?;
                    // Re-arm: clear, then re-set the perpetually dirty external pins.
                    self.dma_bitmap_alloc(k, pgshift)?;
                }
                Ok(())
            }
        }
    }
}
