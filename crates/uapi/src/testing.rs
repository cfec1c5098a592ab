//! A tiny in-memory [`type1_core::Platform`] for tests of the uAPI layer.
//!
//! Group 0 sits behind a unit with snoop control, group 1 behind one without (both of the same
//! driver), like the emulation's default machine. Pinning succeeds for addresses inside
//! [`FakePlatform::map_user`] ranges (pfn = vaddr >> 12), EFAULT elsewhere; accounting follows
//! the task's RLIMIT_MEMLOCK; every flush and event is recorded.

use std::collections::BTreeMap;

use type1_core::{
    CacheMaintenance, DeviceDma, DmaFault, EmulatedDevices, SoftIommu, TaskMemory, Tracing,
};
use type1_core::{
    DomainId, Event, MemType, MmId, PinnedPage, PlatformError, SoftDomains, Task, PAGE_SHIFT,
    PAGE_SIZE,
};

use crate::GroupSpec;

/// The fake machine.
#[derive(Debug)]
pub struct FakePlatform {
    /// The calling task.
    pub task: Task,
    /// Pages charged (locked_vm).
    pub locked: u64,
    /// User ranges `(start, len)` that can be pinned.
    pub user: Vec<(u64, u64)>,
    /// Pin counts by pfn.
    pub pins: BTreeMap<u64, u32>,
    /// Every `flush_cache(pa, len)`.
    pub flushes: Vec<(u64, u64)>,
    /// Every event.
    pub events: Vec<Event>,
    /// What device DMA did that no device may (this double checks its callers): a transfer
    /// across a page, or one that reached outside the pinnable user ranges.
    pub dma_misuse: Vec<String>,
    /// Bytes written into user memory (`mm_write`; unwritten bytes read as 0).
    mem: BTreeMap<u64, u8>,
    /// The IOMMU: software domains, as the host platform's.
    doms: SoftDomains,
}

impl Default for FakePlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl FakePlatform {
    /// A machine with CAP_IPC_LOCK and a 1024-page limit.
    pub fn new() -> FakePlatform {
        FakePlatform {
            task: Task {
                mm: MmId(1),
                cap_ipc_lock: true,
                memlock_limit_pages: 1024,
            },
            locked: 0,
            user: Vec::new(),
            pins: BTreeMap::new(),
            flushes: Vec::new(),
            events: Vec::new(),
            dma_misuse: Vec::new(),
            mem: BTreeMap::new(),
            doms: SoftDomains::new(vec![true, false], [(0, 0), (1, 1)], 0x4020_1000),
        }
    }

    /// The subsystem every uAPI test starts from: this machine's groups, default module
    /// parameters and the `seed` policy, with `[ram, ram + ram_len)` pinnable, and a caller
    /// whose `[arg, arg + arg_len)` is writable memory for ioctl arguments.
    pub fn subsystem(
        ram: u64,
        ram_len: u64,
        arg: u64,
        arg_len: usize,
    ) -> (crate::Vfio<FakePlatform>, crate::FakeCaller) {
        let mut p = FakePlatform::new();
        p.map_user(ram, ram_len);
        let v = crate::Vfio::new(p, &FakePlatform::groups(), Default::default(), "seed")
            .expect("seed is a policy");
        let mut c = crate::FakeCaller::new();
        c.map(arg, arg_len, false);
        (v, c)
    }

    /// The groups of this machine, for [`crate::Vfio::new`].
    pub fn groups() -> Vec<GroupSpec> {
        vec![
            GroupSpec {
                id: 0,
                devices: vec!["0000:00:04.0".into()],
                emulated: Vec::new(),
            },
            GroupSpec {
                id: 1,
                devices: vec!["0000:00:05.0".into()],
                emulated: Vec::new(),
            },
        ]
    }

    /// Makes `[start, start + len)` pinnable.
    pub fn map_user(&mut self, start: u64, len: u64) {
        self.user.push((start, len));
    }

    /// EFAULT unless `[vaddr, vaddr + len)` lies in one user range.
    fn check_user(&self, vaddr: u64, len: u64) -> Result<(), PlatformError> {
        let inside = self.user.iter().any(|&(s, l)| {
            vaddr >= s
                && vaddr
                    .checked_add(len)
                    .is_some_and(|e| e <= s.saturating_add(l))
        });
        if inside {
            Ok(())
        } else {
            Err(perr(
                type1_core::Errno::EFAULT,
                format!("user 0x{vaddr:x}+0x{len:x} is not mapped"),
            ))
        }
    }

    /// Number of live domains.
    pub fn domain_count(&self) -> usize {
        self.doms.len()
    }

    /// Mapped IOVA pages over all domains.
    pub fn mapped_pages(&self) -> usize {
        self.doms
            .iter()
            .map(|(_, d)| (d.table.stats().mapped / PAGE_SIZE) as usize)
            .sum()
    }
}

fn perr(e: type1_core::Errno, what: impl Into<String>) -> PlatformError {
    PlatformError::new(e, what)
}

impl TaskMemory for FakePlatform {
    fn current(&self) -> Option<Task> {
        Some(self.task)
    }

    fn mm_alive(&self, _mm: MmId) -> bool {
        true
    }

    fn locked_vm(&self, _mm: MmId) -> u64 {
        self.locked
    }

    fn account(&mut self, _mm: MmId, delta: i64, enforce_limit: bool) -> Result<(), PlatformError> {
        let new = self.locked as i64 + delta;
        if delta > 0 && enforce_limit && new as u64 > self.task.memlock_limit_pages {
            return Err(perr(type1_core::Errno::ENOMEM, "RLIMIT_MEMLOCK"));
        }
        self.locked = new.max(0) as u64;
        Ok(())
    }

    fn pin_user_pages(
        &mut self,
        _mm: MmId,
        vaddr: type1_core::Vaddr,
        npages: u64,
        _w: bool,
    ) -> Result<Vec<PinnedPage>, PlatformError> {
        let vaddr = vaddr.0;
        let ok = |a: u64| self.user.iter().any(|(s, l)| a >= *s && a - s < *l);
        let mut out = Vec::new();
        for i in 0..npages.min(512) {
            let a = vaddr + i * PAGE_SIZE;
            if !ok(a) {
                break;
            }
            out.push(PinnedPage {
                pfn: a >> PAGE_SHIFT,
                reserved: false,
            });
        }
        if out.is_empty() {
            return Err(perr(
                type1_core::Errno::EFAULT,
                format!("vaddr 0x{vaddr:x}"),
            ));
        }
        for p in &out {
            *self.pins.entry(p.pfn).or_default() += 1;
        }
        Ok(out)
    }

    fn unpin_page(&mut self, pfn: u64, _dirty: bool) {
        if let Some(n) = self.pins.get_mut(&pfn) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&pfn);
            }
        }
    }

    fn pfn_is_reserved(&self, _pfn: u64) -> bool {
        false
    }

    fn pfn_memtype(&self, _pfn: u64) -> MemType {
        MemType::Wb
    }

    fn mm_read(
        &mut self,
        _mm: MmId,
        vaddr: type1_core::Vaddr,
        buf: &mut [u8],
    ) -> Result<(), PlatformError> {
        let vaddr = vaddr.0;
        self.check_user(vaddr, buf.len() as u64)?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.mem.get(&(vaddr + i as u64)).copied().unwrap_or(0);
        }
        Ok(())
    }

    fn mm_write(
        &mut self,
        _mm: MmId,
        vaddr: type1_core::Vaddr,
        data: &[u8],
    ) -> Result<(), PlatformError> {
        let vaddr = vaddr.0;
        self.check_user(vaddr, data.len() as u64)?;
        for (i, b) in data.iter().enumerate() {
            self.mem.insert(vaddr + i as u64, *b);
        }
        Ok(())
    }
}

/// The IOMMU: software domains, as the host platform's (`Iommu` comes with them).
impl SoftIommu for FakePlatform {
    fn soft_domains(&self) -> &SoftDomains {
        &self.doms
    }

    fn soft_domains_mut(&mut self) -> &mut SoftDomains {
        &mut self.doms
    }
}

/// Device DMA through the domain's table into user memory (frames are user addresses here):
/// unwritten bytes read as 0.
impl DeviceDma for FakePlatform {
    fn device_dma(
        &mut self,
        domain: DomainId,
        iova: u64,
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaFault> {
        if iova % PAGE_SIZE + buf.len() as u64 > PAGE_SIZE {
            self.dma_misuse.push(format!(
                "DMA of {} bytes at iova 0x{iova:x} crosses a page",
                buf.len()
            ));
        }
        let pa = self.doms.dma_target(domain, iova, to_memory)?;
        if self.check_user(pa, buf.len() as u64).is_err() {
            self.dma_misuse.push(format!(
                "DMA at iova 0x{iova:x} reached 0x{pa:x}, outside user memory"
            ));
            return Err(DmaFault::Unreachable);
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let a = pa + i as u64;
            if to_memory {
                self.mem.insert(a, *b);
            } else {
                *b = self.mem.get(&a).copied().unwrap_or(0);
            }
        }
        Ok(())
    }
}

impl CacheMaintenance for FakePlatform {
    fn flush_cache(&mut self, pa: type1_core::Pa, len: u64) {
        self.flushes.push((pa.0, len));
    }
}

impl EmulatedDevices for FakePlatform {}

impl Tracing for FakePlatform {
    fn trace(&mut self, event: Event) {
        self.events.push(event);
    }
}
