//! [`BrokerPlatform`]: the `type1_core::Platform` the engine runs on inside the broker. The
//! IOMMU is the hub's own; memory work goes to the owning process through the hub's callbacks
//! (see the parent module).

use super::*;
use type1_core::{Iova, Pa};

/// Pages the engine asks a process to pin in one callback (256 MiB).
pub const BROKER_PIN_BATCH: u64 = 1 << 16;

/// The engine's platform inside the broker (see the module documentation).
#[derive(Clone, Debug)]
pub struct BrokerPlatform(pub Arc<Hub>);

impl BrokerPlatform {
    fn iommu(&self) -> MutexGuard<'_, HostPlatform> {
        lock(&self.0.iommu)
    }
}

fn client_of(mm: MmId) -> u32 {
    mm.0
}

impl TaskMemory for BrokerPlatform {
    fn current(&self) -> Option<Task> {
        Hub::current().map(|c| Task {
            mm: MmId(c.client),
            cap_ipc_lock: c.creds.cap_ipc_lock,
            memlock_limit_pages: c.creds.memlock_limit_pages,
        })
    }

    fn mm_alive(&self, mm: MmId) -> bool {
        self.0.alive(client_of(mm))
    }

    /// VFIO's charge plus what the process locked itself (`mlock`), as of its latest MAP_DMA:
    /// the kernel's `mm->locked_vm` holds both.
    fn locked_vm(&self, mm: MmId) -> u64 {
        self.0.client(client_of(mm)).map_or(0, |c| {
            lock(&c.locked_vm).saturating_add(lock(&c.creds).mlocked_pages)
        })
    }

    /// The charge is kept here, per process, with the limit its latest request carried
    /// (RLIMIT_MEMLOCK and CAP_IPC_LOCK of the task, as the kernel reads them at pin time).
    fn account(&mut self, mm: MmId, delta: i64, enforce_limit: bool) -> Result<(), PlatformError> {
        let Some(c) = self.0.client(client_of(mm)) else {
            // A process that is gone has no locked memory left to uncharge.
            return if delta <= 0 {
                Ok(())
            } else {
                Err(PlatformError::new(Errno(libc::ESRCH), "process gone"))
            };
        };
        let (limit, mlocked) = {
            let cr = lock(&c.creds);
            (cr.memlock_limit_pages, cr.mlocked_pages)
        };
        let mut locked = lock(&c.locked_vm);
        if delta > 0
            && enforce_limit
            && locked.saturating_add(mlocked).saturating_add(delta as u64) > limit
        {
            return Err(PlatformError::new(
                Errno::ENOMEM,
                format!(
                    "locked_vm {} (mlock {mlocked}) + {delta} pages exceeds RLIMIT_MEMLOCK {limit}",
                    *locked + mlocked
                ),
            ));
        }
        *locked = locked.saturating_add_signed(delta);
        Ok(())
    }

    fn pin_user_pages(
        &mut self,
        mm: MmId,
        vaddr: type1_core::Vaddr,
        npages: u64,
        write: bool,
    ) -> Result<Vec<PinnedPage>, PlatformError> {
        let vaddr = vaddr.0;
        let client = client_of(mm);
        let cb = Callback::Pin {
            vaddr,
            npages,
            write,
        };
        match self.0.simple(client, cb)? {
            Msg::Pages(runs)
                if !runs.is_empty()
                    && runs.len() <= wire::MAX_RUNS
                    && runs.iter().all(|r| r.npages > 0)
                    && runs.iter().map(|r| r.npages).sum::<u64>() <= npages =>
            {
                let runs: Vec<_> = runs
                    .into_iter()
                    .map(|r| (r, r.held.and_then(|h| self.0.hold_ring(client, h))))
                    .collect();
                Ok(lock(&self.0.frames).add(client, runs))
            }
            _ => Err(PlatformError::new(
                Errno::EFAULT,
                format!("pin vaddr 0x{vaddr:x}"),
            )),
        }
    }

    fn unpin_page(&mut self, pfn: u64, dirty: bool) {
        self.unpin_pages(pfn, 1, dirty);
    }

    fn unpin_pages(&mut self, pfn: u64, npages: u64, _dirty: bool) {
        // Runs whose last pinned frame goes here leave the table (and, for a process that is
        // gone, their ring slot is emptied by the broker).
        let (pieces, ended) = {
            let mut f = lock(&self.0.frames);
            let pieces = f.pieces(pfn, npages);
            let mut ended = Vec::new();
            for (_, first, n, r) in &pieces {
                if r.reserved {
                    continue;
                }
                let gone = match f.runs.get_mut(first) {
                    Some(run) => {
                        run.live = run.live.saturating_sub(*n);
                        run.live == 0
                    }
                    None => false,
                };
                if gone {
                    ended.extend(f.runs.remove(first));
                }
            }
            (pieces, ended)
        };
        let live = pieces.into_iter().filter(|p| !p.3.reserved);
        for (client, runs) in local_runs(live) {
            if self.0.alive(client) {
                for part in runs.chunks(wire::MAX_RUNS) {
                    self.0.tell(client, Callback::Unpin(part.to_vec()));
                }
            }
        }
        for run in ended {
            if !self.0.alive(run.client) {
                if let Some((ring, slot, _)) = &run.held {
                    ring.with_ring(|r| r.unpin(*slot));
                }
            }
        }
    }

    /// A pin callback costs a round trip to the process: a mapping pins in calls of up to
    /// [`BROKER_PIN_BATCH`] pages (each answered with at most `wire::MAX_RUNS` runs).
    fn pin_batch_pages(&self) -> u64 {
        BROKER_PIN_BATCH
    }

    fn pfn_kind_run(&self, pfn: u64, max: u64) -> (bool, MemType, u64) {
        match lock(&self.0.frames).find(pfn) {
            Some((first, r)) => (r.reserved, r.memtype, (first + r.npages - pfn).min(max)),
            None => (false, MemType::Wb, 1),
        }
    }

    fn pfn_is_reserved(&self, pfn: u64) -> bool {
        lock(&self.0.frames)
            .find(pfn)
            .is_some_and(|(_, r)| r.reserved)
    }

    fn pfn_memtype(&self, pfn: u64) -> MemType {
        lock(&self.0.frames)
            .find(pfn)
            .map_or(MemType::Wb, |(_, r)| r.memtype)
    }

    fn mm_read(
        &mut self,
        mm: MmId,
        vaddr: type1_core::Vaddr,
        buf: &mut [u8],
    ) -> Result<(), PlatformError> {
        let vaddr = vaddr.0;
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(wire::MAX_COPY);
            let cb = Callback::Read {
                addr: vaddr + done as u64,
                len: n as u32,
            };
            let r = self
                .0
                .call(client_of(mm), cb, &[], &[])
                .map_err(|e| PlatformError::new(e, "process gone"))?;
            match r.msg {
                Msg::Data if r.payload.len() == n => {
                    buf[done..done + n].copy_from_slice(&r.payload)
                }
                m => {
                    let e = m.ok().err().unwrap_or(Errno::EFAULT);
                    return Err(PlatformError::new(e, format!("read 0x{vaddr:x}")));
                }
            }
            done += n;
        }
        Ok(())
    }

    fn mm_write(
        &mut self,
        mm: MmId,
        vaddr: type1_core::Vaddr,
        data: &[u8],
    ) -> Result<(), PlatformError> {
        let vaddr = vaddr.0;
        for (i, chunk) in data.chunks(wire::MAX_COPY).enumerate() {
            let addr = vaddr + (i * wire::MAX_COPY) as u64;
            let r = self
                .0
                .call(client_of(mm), Callback::Write { addr }, chunk, &[])
                .map_err(|e| PlatformError::new(e, "process gone"))?;
            if let Err(e) = r.msg.ok() {
                return Err(PlatformError::new(e, format!("write 0x{vaddr:x}")));
            }
        }
        Ok(())
    }
}

impl Iommu for BrokerPlatform {
    fn group_info(&self, group: GroupId) -> Result<GroupInfo, PlatformError> {
        self.iommu().group_info(group)
    }

    fn domain_alloc(&mut self, group: GroupId) -> Result<DomainId, PlatformError> {
        self.iommu().domain_alloc(group)
    }

    fn domain_info(&self, domain: DomainId) -> DomainInfo {
        self.iommu().domain_info(domain)
    }

    fn domain_enforce_cache_coherency(&mut self, domain: DomainId) -> bool {
        self.iommu().domain_enforce_cache_coherency(domain)
    }

    fn domain_free(&mut self, domain: DomainId) {
        self.iommu().domain_free(domain)
    }

    fn attach_group(&mut self, domain: DomainId, group: GroupId) -> Result<(), PlatformError> {
        self.iommu().attach_group(domain, group)
    }

    fn detach_group(&mut self, domain: DomainId, group: GroupId) {
        self.iommu().detach_group(domain, group)
    }

    fn iommu_map(
        &mut self,
        domain: DomainId,
        iova: Iova,
        pa: Pa,
        size: u64,
        prot: Prot,
    ) -> Result<(), PlatformError> {
        self.iommu().iommu_map(domain, iova, pa, size, prot)
    }

    fn iommu_unmap(&mut self, domain: DomainId, iova: Iova, size: u64) -> u64 {
        self.iommu().iommu_unmap(domain, iova, size)
    }

    fn iotlb_sync(&mut self, domain: DomainId) {
        self.iommu().iotlb_sync(domain)
    }

    fn iova_to_phys(&self, domain: DomainId, iova: Iova) -> Option<Pa> {
        self.iommu().iova_to_phys(domain, iova)
    }

    fn iova_to_phys_run(&self, domain: DomainId, iova: Iova, max: u64) -> Option<(Pa, u64)> {
        self.iommu().iova_to_phys_run(domain, iova, max)
    }

    fn install_msi_cookie(&mut self, domain: DomainId) -> Result<(), PlatformError> {
        self.iommu().install_msi_cookie(domain)
    }
}

/// Device DMA through the hub's IOMMU to the owning process's pages ([`Hub::dma`]).
impl type1_core::DeviceDma for BrokerPlatform {
    fn device_dma(
        &mut self,
        domain: DomainId,
        iova: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaFault> {
        self.0.dma(domain, iova, buf, to_memory)
    }

    fn device_dma_vec(
        &mut self,
        domain: DomainId,
        segs: &[(u64, usize)],
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), (usize, DmaFault)> {
        self.0.dma_vec(domain, segs, buf, to_memory)
    }

    fn device_dma_file(
        &mut self,
        domain: DomainId,
        segs: &[(u64, usize)],
        fd: i32,
        file_off: u64,
        to_memory: bool,
    ) -> Option<Result<(), (usize, DmaFault)>> {
        Some(self.0.dma_file(domain, segs, fd, file_off, to_memory))
    }
}

impl CacheMaintenance for BrokerPlatform {
    fn flush_cache(&mut self, pa: Pa, len: u64) {
        self.flush_cache_batch(&[(pa, len)]);
    }

    /// One note per process for the whole batch, with its runs merged where the process's
    /// frames continue each other.
    fn flush_cache_batch(&mut self, ranges: &[(Pa, u64)]) {
        let mut pieces = Vec::new();
        {
            let f = lock(&self.0.frames);
            for &(Pa(pa), len) in ranges {
                let first = pa >> PAGE_SHIFT;
                let n = (pa % PAGE_SIZE + len).div_ceil(PAGE_SIZE);
                pieces.extend(f.pieces(first, n));
            }
        }
        let mut reachable = Vec::new();
        for p in pieces {
            if self.0.alive(p.3.client) {
                reachable.push(p);
            } else {
                // No mapping of the page is left anywhere to flush it through.
                self.trace(Event::CpuFlush {
                    pa: p.0 << PAGE_SHIFT,
                    npages: p.2,
                    via: "unreachable",
                });
            }
        }
        for (client, runs) in local_runs(reachable) {
            let bytes: Vec<(u64, u64)> = runs
                .iter()
                .map(|&(pfn, n)| (pfn << PAGE_SHIFT, n * PAGE_SIZE))
                .collect();
            for part in bytes.chunks(wire::MAX_RUNS) {
                self.0.tell(client, Callback::Flush(part.to_vec()));
            }
        }
    }
}

impl EmulatedDevices for BrokerPlatform {
    fn notify_dma_unmap(&mut self, device: DeviceId, iova: u64, size: u64) -> Vec<(u64, u64)> {
        self.iommu().notify_dma_unmap(device, iova, size)
    }
}

impl Tracing for BrokerPlatform {
    fn trace(&mut self, event: Event) {
        // Nothing is formatted or sent for a process that writes no trace.
        let Some(target) = self.0.trace_target() else {
            return;
        };
        if let Ok(json) = serde_json::to_string(&event) {
            // Stamped now, when it happens, not when the process writes it down.
            let body = json.strip_prefix('{').unwrap_or(&json);
            let json = format!("{{\"ns\":{},{body}", sys::monotonic_ns());
            self.0.trace_line(target, json);
        }
    }
}
