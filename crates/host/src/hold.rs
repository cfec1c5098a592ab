//! Holding pages: long-term pins as io_uring fixed buffers (or tracked by address), the bus
//! frames handed to the engine, `/proc/self/pagemap` checks, and the CPU-side events the
//! preload library reports (`munmap`, `mremap`, `madvise`) that change what the CPU maps.

use super::*;

impl HostPlatform {
    /// Whether the CPU maps the `n` pages at `vaddr..` now, checked the cheap way (one
    /// translation per run): every page lies in a mapping (`mincore`, so that a flush cannot
    /// fault), the first and last pages can be read (`mprotect` through a route the hooks do
    /// not see), and they are present and, where their real frames are known (`edges`),
    /// exactly those.
    pub(crate) fn maps(&mut self, vaddr: u64, n: u64, edges: (Option<u64>, Option<u64>)) -> bool {
        // Mapped throughout, and readable at both ends (a flush needs read permission).
        let last = vaddr + (n - 1) * PAGE_SIZE;
        if !sys::mapped(vaddr, n * PAGE_SIZE)
            || sys::read_user(vaddr, &mut [0u8]).is_err()
            || sys::read_user(last, &mut [0u8]).is_err()
        {
            return false;
        }
        let ends: &[(u64, Option<u64>)] = if n > 1 {
            &[(vaddr, edges.0), (last, edges.1)]
        } else {
            &[(vaddr, edges.0.or(edges.1))]
        };
        ends.iter().all(|&(v, want)| match self.pagemap(v, 1) {
            Ok(e) if e.len() == 1 => want.is_none_or(|w| w == e[0]),
            _ => false,
        })
    }

    /// The bounce pipe of io_uring device DMA: `(read end, write end)`.
    pub(crate) fn bounce_fd(&mut self) -> Result<(i32, i32), Errno> {
        if let Some(b) = self.bounce {
            return Ok(b);
        }
        let (r, w) = sys::pipe_nonblock()?;
        let b = (uring::move_high(r), uring::move_high(w));
        self.bounce = Some(b);
        Ok(b)
    }

    /// Flushes the pinned pages the CPU maps in `[addr, addr + len)`, right before that
    /// mapping goes away (`munmap`, `MAP_FIXED` over it, `MADV_DONTNEED`, the shrunk tail of an
    /// `mremap`, a truncated file): afterwards no CPU can write them, so this is their unpin
    /// flush (F5) come early. Call [`Self::cpu_unmapped`] once the mapping is really gone.
    pub fn cpu_unmap_prepare(&mut self, addr: u64, len: u64) {
        for id in self.pins.cpu_runs(addr, len) {
            let Some(run) = self.pins.run(id) else {
                continue;
            };
            let Some(v) = run.cpu else { continue };
            let edges = self.pins.edges(id, 0, run.npages);
            if self.maps(v, run.npages, edges) {
                self.flush_lines(v, run.npages * PAGE_SIZE);
                self.stats.pages_flushed_at_unmap += run.npages;
                self.cpu_flush_event(run.first_pfn, run.npages, "unmap");
            }
        }
    }

    /// The CPU no longer maps `[addr, addr + len)` (after a successful `munmap` and the like).
    pub fn cpu_unmapped(&mut self, addr: u64, len: u64) {
        for id in self.pins.cpu_runs(addr, len) {
            self.pins.set_cpu(id, None);
        }
        self.unmap_mmio(addr, len);
    }

    /// After a successful `mprotect` that removed read access from `[addr, addr + len)`: the
    /// pinned pages there cannot be flushed through it (a flush would fault), so they were
    /// flushed by [`Self::cpu_unmap_prepare`] and are hidden until [`Self::cpu_revealed`].
    pub fn cpu_hidden(&mut self, addr: u64, len: u64) {
        for id in self.pins.cpu_runs(addr, len) {
            self.pins.hide(id);
        }
    }

    /// After a successful `mprotect` that gave read access to `[addr, addr + len)` (back):
    /// hidden pinned pages there are reachable again.
    pub fn cpu_revealed(&mut self, addr: u64, len: u64) {
        for id in self.pins.hidden_in(addr, len) {
            let v = self.pins.run(id).map(|r| r.last_cpu);
            self.pins.set_cpu(id, v);
        }
    }

    /// After a successful `mremap(old, old_len, new_len, .., new)`: what was mapped at
    /// `[old, old + min(old_len, new_len))` is now at `new` (the tail of a shrink was handed to
    /// [`Self::cpu_unmap_prepare`] and [`Self::cpu_unmapped`] by the caller).
    pub fn cpu_moved(&mut self, old: u64, len: u64, new: u64) {
        if old == new {
            return;
        }
        if self.watch.intersects(old, len) {
            self.watch.widen(new, len);
        }
        let moving = self.pins.cpu_runs(old, len);
        let targets: Vec<u64> = moving
            .iter()
            .filter_map(|id| self.pins.run(*id).and_then(|r| r.cpu))
            .map(|v| new + (v - old))
            .collect();
        // Whatever the CPU mapped at the destination was replaced.
        for id in self.pins.cpu_runs(new, len) {
            if !moving.contains(&id) {
                self.pins.set_cpu(id, None);
            }
        }
        for (id, v) in moving.into_iter().zip(targets) {
            self.pins.set_cpu(id, Some(v));
        }
        let pages: Vec<(u64, u64)> = self
            .mmio_pages
            .range(old..old.saturating_add(len))
            .map(|(v, p)| (*v, *p))
            .collect();
        self.unmap_mmio(new, len);
        for (v, pfn) in pages {
            self.mmio_pages.remove(&v);
            let page = new + (v - old);
            self.mmio_pages.insert(page, pfn);
            if let Some(m) = self.mmio_pfns.get_mut(&pfn) {
                m.vaddr = Some(page);
            }
        }
    }

    pub(crate) fn pagemap_fd(&mut self) -> Result<i32, Errno> {
        let pid = sys::getpid();
        match self.pagemap {
            Some((p, fd)) if p == pid => Ok(fd),
            other => {
                if let Some((_, fd)) = other {
                    sys::close(fd); // inherited across fork: it describes the parent
                }
                let fd = uring::move_high(sys::open_ro(c"/proc/self/pagemap")?);
                self.pagemap = Some((pid, fd));
                Ok(fd)
            }
        }
    }

    /// Faults in `n` pages at `vaddr` (write intent if `write`): the number of leading pages
    /// that could be faulted in.
    pub(crate) fn populate(vaddr: u64, n: u64, write: bool) -> u64 {
        let advice = if write {
            libc::MADV_POPULATE_WRITE
        } else {
            libc::MADV_POPULATE_READ
        };
        if sys::madvise(vaddr, n * PAGE_SIZE, advice).is_ok() {
            return n;
        }
        (0..n)
            .take_while(|i| sys::madvise(vaddr + i * PAGE_SIZE, PAGE_SIZE, advice).is_ok())
            .count() as u64
    }

    /// The frames of the present pages at `vaddr..` (at most `n`, stopping at the first page
    /// that is not present), as pagemap shows them: 0 when it hides them. One read.
    pub(crate) fn pagemap(&mut self, vaddr: u64, n: u64) -> Result<Vec<u64>, Errno> {
        let fd = self.pagemap_fd()?;
        let mut raw = vec![0u8; (n * 8) as usize];
        let got = sys::pread(fd, &mut raw, (vaddr >> PAGE_SHIFT) * 8)?;
        let mut out = Vec::with_capacity(n as usize);
        for c in raw[..got - got % 8].chunks_exact(8) {
            let e = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            if e >> 63 == 0 {
                break; // not present
            }
            out.push(e & ((1 << 55) - 1));
        }
        Ok(out)
    }

    /// Bus frames for `n` pages pinned at `vaddr`: the continuation of the last range if the
    /// pin continues its virtual range, otherwise a fresh range congruent to `vaddr` modulo
    /// 1 GiB.
    pub(crate) fn bus_frames(&mut self, vaddr: u64, n: u64) -> u64 {
        let base = match self.last_end {
            Some((v, p)) if v == vaddr && p == self.next_synth => p,
            _ => {
                self.next_synth.div_ceil(GIB_PAGES) * GIB_PAGES + (vaddr >> PAGE_SHIFT) % GIB_PAGES
            }
        };
        self.next_synth = base + n;
        self.last_end = Some((vaddr + n * PAGE_SIZE, base + n));
        base
    }

    /// Registers `[vaddr, vaddr + n pages)` in a ring with a free slot (creating one if
    /// needed): the holder.
    pub(crate) fn ring_pin(&mut self, vaddr: u64, n: u64) -> Result<Holder, Errno> {
        let idx = match self
            .rings
            .iter()
            .position(|r| r.owned() && r.free_slots() > 0)
        {
            Some(i) => i,
            None => {
                self.rings
                    .push(Ring::new(uring::slots_for(self.rings.len()))?);
                self.rings.len() - 1
            }
        };
        let slot = self.rings[idx].pin(vaddr, n * PAGE_SIZE)?;
        Ok(Holder::Ring {
            ring: idx,
            slot,
            base: vaddr,
        })
    }

    /// Pins `n` ordinary pages at `vaddr` (at least the first): the holder and pages held.
    pub(crate) fn hold(&mut self, vaddr: u64, n: u64, write: bool) -> Result<(Holder, u64), Errno> {
        if self.mode == PinMode::Uring {
            match self.ring_pin(vaddr, n) {
                Ok(h) => return Ok((h, n)),
                Err(Errno::EFAULT) => {
                    // Part of the range may be pinnable: as many leading pages as fault in.
                    let lead = Self::populate(vaddr, n, true);
                    if lead > 0 && lead < n {
                        if let Ok(h) = self.ring_pin(vaddr, lead) {
                            return Ok((h, lead));
                        }
                    }
                    if write {
                        return Err(Errno::EFAULT);
                    }
                    // A read-only pin of memory io_uring cannot register (it pins for write):
                    // tracked, and checked at every use.
                }
                Err(Errno::ENOMEM) => {
                    // io_uring's own RLIMIT_MEMLOCK books (kept per user, with the ring's
                    // memory in them, when the ring was made without CAP_IPC_LOCK) are not
                    // VFIO's: the engine applies VFIO's limit exactly, so this pin is tracked.
                    self.notice(
                        "uring-memlock",
                        "io_uring refused to hold more pages under this user's RLIMIT_MEMLOCK \
                         (the process lacks CAP_IPC_LOCK); VFIO's own limit still applies \
                         exactly, but pages beyond io_uring's are tracked by address only",
                    );
                }
                Err(e) => {
                    self.mode = PinMode::Track;
                    self.notice(
                        "no-uring",
                        &format!(
                            "io_uring is unusable here ({e}); pinned pages are tracked by \
                             address only: a device can no longer reach a page the program \
                             unmaps, moves or forks away, and faults instead"
                        ),
                    );
                }
            }
        }
        let n = Self::populate(vaddr, n, write);
        if n == 0 {
            return Err(Errno::EFAULT);
        }
        self.stats.pages_tracked += n;
        Ok((Holder::Track, n))
    }

    pub(crate) fn release(&mut self, holder: Holder) {
        if let Holder::Ring { ring, slot, .. } = holder {
            if let Some(r) = self.rings.get_mut(ring) {
                r.unpin(slot);
            }
        }
    }
}
