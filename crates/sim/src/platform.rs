//! `impl Platform for Sim`: the seam, delegating to the modules that model each part.

use type1_core::{
    CacheMaintenance, DeviceDma, DmaFault, EmulatedDevices, Iommu, TaskMemory, Tracing,
};
use type1_core::{
    DeviceId, DomainId, DomainInfo, Event, GroupId, GroupInfo, Iova, MemType, MmId, Pa, PinnedPage,
    PlatformError, Prot, Task,
};

use crate::Sim;

impl TaskMemory for Sim {
    fn current(&self) -> Option<Task> {
        let mm = self.tasks.current?;
        let p = self.tasks.procs.get(mm.0 as usize).filter(|p| p.alive)?;
        Some(Task {
            mm,
            cap_ipc_lock: p.cap_ipc_lock,
            memlock_limit_pages: p.memlock_limit_pages,
        })
    }

    fn mm_alive(&self, mm: MmId) -> bool {
        Sim::mm_alive(self, mm)
    }

    fn locked_vm(&self, mm: MmId) -> u64 {
        Sim::locked_vm(self, mm)
    }

    fn account(&mut self, mm: MmId, delta: i64, enforce_limit: bool) -> Result<(), PlatformError> {
        let r = self.do_account(mm, delta, enforce_limit);
        if r.is_ok() {
            self.after(crate::AccessPoint::Account);
        }
        r
    }

    fn pin_user_pages(
        &mut self,
        mm: MmId,
        vaddr: type1_core::Vaddr,
        npages: u64,
        write: bool,
    ) -> Result<Vec<PinnedPage>, PlatformError> {
        let vaddr = vaddr.0;
        let r = self.do_pin(mm, vaddr, npages, write);
        if r.is_ok() {
            self.after(crate::AccessPoint::Pin);
        }
        r
    }

    fn unpin_page(&mut self, pfn: u64, _dirty: bool) {
        self.do_unpin(pfn);
        self.after(crate::AccessPoint::Unpin);
    }

    fn pfn_is_reserved(&self, pfn: u64) -> bool {
        !self.is_ram(pfn)
    }

    fn pfn_memtype(&self, pfn: u64) -> MemType {
        self.memtype_of(pfn)
    }

    fn mm_read(
        &mut self,
        mm: MmId,
        vaddr: type1_core::Vaddr,
        buf: &mut [u8],
    ) -> Result<(), PlatformError> {
        let vaddr = vaddr.0;
        self.cpu_read(mm, vaddr, buf)
    }

    fn mm_write(
        &mut self,
        mm: MmId,
        vaddr: type1_core::Vaddr,
        data: &[u8],
    ) -> Result<(), PlatformError> {
        let vaddr = vaddr.0;
        self.cpu_write(mm, vaddr, data)
    }
}

impl Iommu for Sim {
    fn group_info(&self, group: GroupId) -> Result<GroupInfo, PlatformError> {
        self.do_group_info(group)
    }

    fn domain_alloc(&mut self, group: GroupId) -> Result<DomainId, PlatformError> {
        let r = self.do_domain_alloc(group);
        if r.is_ok() {
            self.after(crate::AccessPoint::DomainAlloc);
        }
        r
    }

    fn domain_info(&self, domain: DomainId) -> DomainInfo {
        self.do_domain_info(domain)
    }

    fn domain_enforce_cache_coherency(&mut self, domain: DomainId) -> bool {
        self.do_enforce(domain)
    }

    fn domain_free(&mut self, domain: DomainId) {
        self.do_domain_free(domain);
        self.after(crate::AccessPoint::DomainFree);
    }

    fn attach_group(&mut self, domain: DomainId, group: GroupId) -> Result<(), PlatformError> {
        let r = self.do_attach(domain, group);
        if r.is_ok() {
            self.after(crate::AccessPoint::Attach);
        }
        r
    }

    fn detach_group(&mut self, domain: DomainId, group: GroupId) {
        self.do_detach(domain, group);
        self.after(crate::AccessPoint::Detach);
    }

    fn iommu_map(
        &mut self,
        domain: DomainId,
        iova: Iova,
        pa: Pa,
        size: u64,
        prot: Prot,
    ) -> Result<(), PlatformError> {
        let r = self.do_iommu_map(domain, iova.0, pa.0, size, prot);
        if r.is_ok() {
            self.after(crate::AccessPoint::IommuMap);
        }
        r
    }

    fn iommu_unmap(&mut self, domain: DomainId, iova: Iova, size: u64) -> u64 {
        let n = self.do_iommu_unmap(domain, iova.0, size);
        self.after(crate::AccessPoint::IommuUnmap);
        n
    }

    fn iotlb_sync(&mut self, domain: DomainId) {
        self.do_iotlb_sync(domain);
        self.after(crate::AccessPoint::IotlbSync);
    }

    fn iova_to_phys(&self, domain: DomainId, iova: Iova) -> Option<Pa> {
        self.do_iova_to_phys(domain, iova.0).map(Pa)
    }
}

impl CacheMaintenance for Sim {
    fn flush_cache(&mut self, pa: type1_core::Pa, len: u64) {
        self.do_flush_cache(pa.0, len);
        self.after(crate::AccessPoint::Flush);
    }
}

impl EmulatedDevices for Sim {
    fn notify_dma_unmap(&mut self, device: DeviceId, iova: u64, size: u64) -> Vec<(u64, u64)> {
        self.do_notify_dma_unmap(device, iova, size)
    }
}

impl Tracing for Sim {
    fn trace(&mut self, event: Event) {
        self.record(event)
    }
}

/// A device of a group attached to the domain does a no-snoop DMA (snooped anyway when the
/// domain enforces coherency), with every check the simulator makes of device accesses.
impl DeviceDma for Sim {
    fn device_dma(
        &mut self,
        domain: DomainId,
        iova: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaFault> {
        let Some(device) = self.device_of_domain(domain) else {
            return Err(DmaFault::Unmapped);
        };
        let r = if to_memory {
            self.dma_write(&device, iova, buf, true)
        } else {
            self.dma_read(&device, iova, buf.len(), true)
                .map(|data| buf.copy_from_slice(&data))
        };
        r.map_err(|e| match e {
            crate::DeviceDmaError::Fault { fault, .. } => fault,
            // The device was found by its domain: it has a name.
            crate::DeviceDmaError::NoDevice(_) => DmaFault::Unreachable,
        })
    }
}
