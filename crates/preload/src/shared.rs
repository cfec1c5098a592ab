//! [`SharedHost`]: the host platform behind its own lock, shared by every thread.
//!
//! The engine runs one container's MAP_DMA or UNMAP_DMA without the emulation's state lock
//! (`state.rs`: the container is checked out for the call), so that other containers, groups,
//! devices and the memory hooks are not held up by it. What they all share is the machine:
//! this handle locks the [`HostPlatform`] for each platform call only, which is the
//! granularity at which the kernel's own IOMMU and memory locks serialize such work.

use std::sync::{Arc, Mutex, MutexGuard};

use type1_core::{
    DeviceId, DomainId, DomainInfo, Event, GroupId, GroupInfo, MemType, MmId, PinnedPage, Platform,
    PlatformError, Prot, Task,
};
use type1_host::HostPlatform;

/// A clonable handle on the one host platform of the process.
#[derive(Clone, Debug)]
pub(crate) struct SharedHost(Arc<Mutex<HostPlatform>>);

impl SharedHost {
    pub fn new(p: HostPlatform) -> SharedHost {
        SharedHost(Arc::new(Mutex::new(p)))
    }

    /// The platform, locked until the guard drops.
    pub fn lock(&self) -> MutexGuard<'_, HostPlatform> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The raw lock, for the fork handlers.
    pub fn mutex(&self) -> &Mutex<HostPlatform> {
        &self.0
    }
}

impl Platform for SharedHost {
    fn current(&self) -> Option<Task> {
        self.lock().current()
    }
    fn mm_alive(&self, mm: MmId) -> bool {
        self.lock().mm_alive(mm)
    }
    fn locked_vm(&self, mm: MmId) -> u64 {
        self.lock().locked_vm(mm)
    }
    fn account(&mut self, mm: MmId, delta: i64, enforce_limit: bool) -> Result<(), PlatformError> {
        self.lock().account(mm, delta, enforce_limit)
    }
    fn pin_user_pages(
        &mut self,
        mm: MmId,
        vaddr: u64,
        npages: u64,
        write: bool,
    ) -> Result<Vec<PinnedPage>, PlatformError> {
        self.lock().pin_user_pages(mm, vaddr, npages, write)
    }
    fn unpin_page(&mut self, pfn: u64, dirty: bool) {
        self.lock().unpin_page(pfn, dirty)
    }
    fn unpin_pages(&mut self, pfn: u64, npages: u64, dirty: bool) {
        self.lock().unpin_pages(pfn, npages, dirty)
    }
    fn pfn_is_reserved(&self, pfn: u64) -> bool {
        self.lock().pfn_is_reserved(pfn)
    }
    fn pfn_memtype(&self, pfn: u64) -> MemType {
        self.lock().pfn_memtype(pfn)
    }
    fn mm_read(&mut self, mm: MmId, vaddr: u64, buf: &mut [u8]) -> Result<(), PlatformError> {
        self.lock().mm_read(mm, vaddr, buf)
    }
    fn mm_write(&mut self, mm: MmId, vaddr: u64, data: &[u8]) -> Result<(), PlatformError> {
        self.lock().mm_write(mm, vaddr, data)
    }
    fn group_info(&self, group: GroupId) -> Result<GroupInfo, PlatformError> {
        self.lock().group_info(group)
    }
    fn domain_alloc(&mut self, group: GroupId) -> Result<DomainId, PlatformError> {
        self.lock().domain_alloc(group)
    }
    fn domain_info(&self, domain: DomainId) -> DomainInfo {
        self.lock().domain_info(domain)
    }
    fn domain_enforce_cache_coherency(&mut self, domain: DomainId) -> bool {
        self.lock().domain_enforce_cache_coherency(domain)
    }
    fn domain_free(&mut self, domain: DomainId) {
        self.lock().domain_free(domain)
    }
    fn attach_group(&mut self, domain: DomainId, group: GroupId) -> Result<(), PlatformError> {
        self.lock().attach_group(domain, group)
    }
    fn detach_group(&mut self, domain: DomainId, group: GroupId) {
        self.lock().detach_group(domain, group)
    }
    fn iommu_map(
        &mut self,
        domain: DomainId,
        iova: u64,
        pa: u64,
        size: u64,
        prot: Prot,
    ) -> Result<(), PlatformError> {
        self.lock().iommu_map(domain, iova, pa, size, prot)
    }
    fn iommu_unmap(&mut self, domain: DomainId, iova: u64, size: u64) -> u64 {
        self.lock().iommu_unmap(domain, iova, size)
    }
    fn iotlb_sync(&mut self, domain: DomainId) {
        self.lock().iotlb_sync(domain)
    }
    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        self.lock().iova_to_phys(domain, iova)
    }
    fn iova_to_phys_run(&self, domain: DomainId, iova: u64, max: u64) -> Option<(u64, u64)> {
        self.lock().iova_to_phys_run(domain, iova, max)
    }
    fn install_msi_cookie(&mut self, domain: DomainId) -> Result<(), PlatformError> {
        self.lock().install_msi_cookie(domain)
    }
    fn flush_cache(&mut self, pa: u64, len: u64) {
        self.lock().flush_cache(pa, len)
    }
    fn notify_dma_unmap(&mut self, device: DeviceId, iova: u64, size: u64) -> Vec<(u64, u64)> {
        self.lock().notify_dma_unmap(device, iova, size)
    }
    fn trace(&mut self, event: Event) {
        self.lock().trace(event)
    }
}
