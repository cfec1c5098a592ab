//! Pins (the engine's `pin_user_pages` and unpin, with the checks an unpin makes: flushed
//! after the non-coherent domain, not still mapped, cache and RAM agreeing) and the
//! RLIMIT_MEMLOCK books.

use type1_core::{Errno, MmId, PinnedPage, PlatformError, PAGE_SHIFT, PAGE_SIZE};

use crate::{perr, Sim, ViolationKind};

impl Sim {
    pub(crate) fn do_pin(
        &mut self,
        mm: MmId,
        vaddr: u64,
        npages: u64,
        write: bool,
    ) -> Result<Vec<PinnedPage>, PlatformError> {
        self.inject(crate::FaultPoint::Pin)?;
        self.inject(crate::FaultPoint::Translate)?;
        if npages == 0 || vaddr % PAGE_SIZE != 0 {
            self.violate(
                ViolationKind::Contract,
                format!("pin_user_pages vaddr 0x{vaddr:x} npages {npages}"),
            );
            return Err(perr(
                Errno::EINVAL,
                format!("pin vaddr 0x{vaddr:x} npages {npages}"),
            ));
        }
        let mut out = Vec::new();
        for i in 0..npages {
            let Some(va) = vaddr.checked_add(i << PAGE_SHIFT) else {
                break;
            };
            match self.fault_in(mm, va, write) {
                Ok((pfn, reserved)) => {
                    if !reserved {
                        let f = &mut self.mem.frames[pfn as usize];
                        if f.pins == 0 {
                            f.flushed_since_pin = false;
                            f.needs_unpin_flush = false;
                        }
                        f.pins += 1;
                        self.note_pfn(pfn);
                    }
                    out.push(PinnedPage { pfn, reserved });
                }
                Err(e) if out.is_empty() => return Err(perr(e.errno, format!("pin {}", e.what))),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    pub(crate) fn do_unpin(&mut self, pfn: u64) {
        if !self.is_ram(pfn) {
            self.violate_at(
                ViolationKind::Contract,
                Some(pfn),
                None,
                format!("unpin_page of reserved or invalid pfn 0x{pfn:x}"),
            );
            return;
        }
        let f = &mut self.mem.frames[pfn as usize];
        if f.pins == 0 {
            self.violate_at(
                ViolationKind::Contract,
                Some(pfn),
                None,
                format!("unpin_page of pfn 0x{pfn:x} with no pin (underflow)"),
            );
            return;
        }
        f.pins -= 1;
        let left = f.pins;
        self.note_pfn(pfn);
        if left > 0 {
            return;
        }
        let f = &mut self.mem.frames[pfn as usize];
        let (refs, exposed, in_use) = (f.iommu_refs, f.exposed, f.in_use);
        let needs_flush = f.needs_unpin_flush;
        f.exposed = false;
        f.needs_unpin_flush = false;
        if needs_flush {
            self.violate_at(
                ViolationKind::MissingUnpinFlush,
                Some(pfn),
                None,
                format!("pfn 0x{pfn:x} lost its last pin without a cache flush after it left the non-coherent domain (F5)"),
            );
        }
        if refs > 0 {
            self.violate_at(
                ViolationKind::UnpinWhileMapped,
                Some(pfn),
                None,
                format!("pfn 0x{pfn:x} lost its last pin while {refs} IOMMU entries (mapped or unsynced) still point at it"),
            );
        }
        if exposed {
            let bad = self.incoherent_bytes(pfn);
            if bad > 0 {
                self.obs.stats.stale_after_unpin_bytes += bad;
                self.violate_at(
                    ViolationKind::UnflushedUnpin,
                Some(pfn),
                None,
                    format!("pfn 0x{pfn:x} was reachable by a non-coherent domain and lost its last pin with {bad} bytes where cache and RAM differ"),
                );
            }
        }
        if !in_use {
            self.mem.push_free(pfn);
        }
    }

    pub(crate) fn do_account(
        &mut self,
        mm: MmId,
        delta: i64,
        enforce_limit: bool,
    ) -> Result<(), PlatformError> {
        let alive = self.tasks.procs.get(mm.0 as usize).is_some_and(|p| p.alive);
        if !alive || delta == 0 {
            return Ok(());
        }
        if delta > 0 {
            self.inject(crate::FaultPoint::Account)?;
        }
        let p = &mut self.tasks.procs[mm.0 as usize];
        if delta > 0 {
            let new = p.locked_vm.saturating_add(delta as u64);
            if enforce_limit && new > p.memlock_limit_pages {
                return Err(perr(
                    Errno::ENOMEM,
                    format!(
                        "mm {mm}: locked_vm {} + {delta} exceeds RLIMIT_MEMLOCK {} pages",
                        p.locked_vm, p.memlock_limit_pages
                    ),
                ));
            }
            p.locked_vm = new;
        } else {
            let d = delta.unsigned_abs();
            if d > p.locked_vm {
                let have = p.locked_vm;
                p.locked_vm = 0;
                self.violate(
                    ViolationKind::Accounting,
                    format!("mm {mm}: locked_vm {have} uncharged by {d} (underflow)"),
                );
            } else {
                p.locked_vm -= d;
            }
        }
        Ok(())
    }

    /// `locked_vm` of `mm` in pages (0 for an unknown mm).
    pub fn locked_vm(&self, mm: MmId) -> u64 {
        self.tasks
            .procs
            .get(mm.0 as usize)
            .map_or(0, |p| p.locked_vm)
    }

    /// Whether `mm` exists and has not exited.
    pub fn mm_alive(&self, mm: MmId) -> bool {
        self.tasks.procs.get(mm.0 as usize).is_some_and(|p| p.alive)
    }
}
