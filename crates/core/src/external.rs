//! External pins and CPU access for emulated (mdev-style) devices (P7 to P10, D6, V2).
//!
//! An emulated device registers with the container and pins single pages of existing mappings
//! (`pin_pages`), reads and writes them with the CPU (`dma_rw`), and must drop its pins when
//! the engine notifies it of an unmap (U5). External pins are never flushed (F5): the device
//! accesses them through the CPU, coherently.

use crate::{
    pin::lock_acct_dma,
    platform::Platform,
    trace::Event,
    type1::{Type1, Vpfn},
    DeviceId, ExternalError, GroupId, PinError, Prot, Result, PAGE_SIZE, PIN_BATCH,
};

impl Type1 {
    /// Registers an emulated device that provides `dma_unmap` (P10).
    pub fn register_device(&mut self, dev: DeviceId) {
        if !self.devices.contains(&dev) {
            self.devices.push(dev);
        }
    }

    /// Unregisters a device.
    pub fn unregister_device(&mut self, dev: DeviceId) {
        self.devices.retain(|d| *d != dev);
    }

    /// `vfio_pin_pages` (P7): pins `npage` pages at `iova` for `group`; returns their pfns.
    pub fn pin_pages<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        group: GroupId,
        iova: u64,
        npage: u64,
        prot: Prot,
    ) -> Result<Vec<u64>> {
        // Container layer.
        if npage == 0 {
            return Err(ExternalError::NoPages.into());
        }
        if npage > PIN_BATCH as u64 {
            return Err(ExternalError::TooMany {
                npage,
                max: PIN_BATCH as u64,
            }
            .into());
        }
        if !self.v2 {
            return Err(ExternalError::NotV2.into());
        }
        iova.checked_add(npage * PAGE_SIZE - 1)
            .ok_or(ExternalError::Wraps { iova, npage })?;
        if self.vaddr_invalid_count > 0 {
            return Err(ExternalError::VaddrInvalid.into());
        }
        if self.devices.is_empty() {
            return Err(ExternalError::NoDevice.into());
        }
        let do_accounting = self.domains.is_empty();
        let tracking = self.dirty_page_tracking;
        let pgshift = self.pgsize().trailing_zeros();
        let mut out = Vec::with_capacity(npage as usize);
        let mut err = None;
        for i in 0..npage {
            let pi = iova + i * PAGE_SIZE;
            let Some(k) = self.find_dma(pi, PAGE_SIZE) else {
                err = Some(ExternalError::NotMapped(pi).into());
                break;
            };
            let dma = self.dmas.get_mut(&k).expect("present");
            if !prot.is_subset_of(dma.prot) {
                err = Some(
                    ExternalError::Prot {
                        mapping: k,
                        want: prot,
                        has: dma.prot,
                    }
                    .into(),
                );
                break;
            }
            if let Some(v) = dma.pfn_list.get_mut(&pi) {
                v.refcount += 1;
                out.push(v.pfn);
                continue;
            }
            if !p.mm_alive(dma.mm) {
                err = Some(ExternalError::MmGone { pin: true }.into());
                break;
            }
            let vaddr = dma.vaddr + (pi - dma.iova);
            let pg = match p.pin_user_pages(dma.mm, crate::Vaddr(vaddr), 1, dma.prot.write) {
                Ok(v) if !v.is_empty() => v[0],
                Ok(_) => {
                    err = Some(PinError::NothingPinned(vaddr).into());
                    break;
                }
                Err(e) => {
                    err = Some(e.into());
                    break;
                }
            };
            if pg.reserved {
                err = Some(ExternalError::InvalidPfn(pg.pfn).into());
                break;
            }
            if do_accounting {
                if let Err(e) = lock_acct_dma(p, dma, 1, false) {
                    p.unpin_page(pg.pfn, dma.prot.write);
                    err = Some(e);
                    break;
                }
            }
            dma.pfn_list.insert(
                pi,
                Vpfn {
                    pfn: pg.pfn,
                    refcount: 1,
                },
            );
            p.trace(Event::Pin {
                iova: pi,
                npages: 1,
                pfn: pg.pfn,
                external: true,
            });
            if tracking {
                let off = (pi - dma.iova) >> pgshift;
                if let Some(bm) = dma.bitmap.as_mut() {
                    bm[(off / 64) as usize] |= 1 << (off % 64);
                }
            }
            out.push(pg.pfn);
        }
        if let Some(e) = err {
            let done = out.len() as u64;
            self.unpin_pages(p, iova, done);
            return Err(e);
        }
        let rec = self
            .domains
            .iter_mut()
            .flat_map(|d| d.groups.iter_mut())
            .chain(self.emulated_groups.iter_mut())
            .find(|g| g.id == group);
        if let Some(g) = rec {
            if !g.pinned_page_dirty_scope {
                g.pinned_page_dirty_scope = true;
                self.num_non_pinned_groups -= 1;
            }
        }
        Ok(out)
    }

    /// `vfio_unpin_pages` (P8). Stops silently at a page outside every mapping.
    pub fn unpin_pages<P: Platform + ?Sized>(&mut self, p: &mut P, iova: u64, npage: u64) {
        if !self.v2 || npage == 0 || iova.checked_add(npage * PAGE_SIZE - 1).is_none() {
            return;
        }
        let do_accounting = self.domains.is_empty();
        for i in 0..npage {
            let pi = iova + i * PAGE_SIZE;
            let Some(k) = self.find_dma(pi, PAGE_SIZE) else {
                break;
            };
            let dma = self.dmas.get_mut(&k).expect("present");
            let Some(v) = dma.pfn_list.get_mut(&pi) else {
                continue;
            };
            v.refcount -= 1;
            if v.refcount == 0 {
                let pfn = v.pfn;
                dma.pfn_list.remove(&pi);
                p.unpin_page(pfn, dma.prot.write);
                p.trace(Event::Unpin {
                    iova: pi,
                    npages: 1,
                    pfn,
                    external: true,
                });
                if do_accounting {
                    let _ = lock_acct_dma(p, dma, -1, true);
                }
            }
        }
    }

    /// `vfio_dma_rw` (P9): CPU copy to or from the mappings at `iova`.
    pub fn dma_rw<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        iova: u64,
        buf: &mut [u8],
        write: bool,
    ) -> Result<()> {
        if self.vaddr_invalid_count > 0 {
            return Err(ExternalError::VaddrInvalid.into());
        }
        let caller = p.current().map(|t| t.mm);
        let pgshift = self.pgsize().trailing_zeros();
        let tracking = self.dirty_page_tracking;
        let mut done = 0usize;
        while done < buf.len() {
            let at = iova + done as u64;
            let Some(k) = self.find_dma(at, 1) else {
                return Err(ExternalError::NotMapped(at).into());
            };
            let dma = self.dmas.get_mut(&k).expect("present");
            if !dma.prot.read || (write && !dma.prot.write) {
                let want = Prot { read: true, write };
                return Err(ExternalError::Prot {
                    mapping: k,
                    want,
                    has: dma.prot,
                }
                .into());
            }
            if !p.mm_alive(dma.mm) {
                return Err(ExternalError::MmGone { pin: false }.into());
            }
            if caller.is_some_and(|m| m != dma.mm) {
                return Err(ExternalError::OtherMm.into());
            }
            let off = at - dma.iova;
            let n = ((dma.size - off) as usize).min(buf.len() - done);
            let vaddr = dma.vaddr + off;
            if write {
                p.mm_write(dma.mm, crate::Vaddr(vaddr), &buf[done..done + n])?;
                if tracking {
                    if let Some(bm) = dma.bitmap.as_mut() {
                        let first = off >> pgshift;
                        let last = (off + n as u64 - 1) >> pgshift;
                        for b in first..=last {
                            bm[(b / 64) as usize] |= 1 << (b % 64);
                        }
                    }
                }
            } else {
                p.mm_read(dma.mm, crate::Vaddr(vaddr), &mut buf[done..done + n])?;
            }
            done += n;
        }
        Ok(())
    }
}
