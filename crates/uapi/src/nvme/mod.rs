//! An emulated NVMe controller: one more kind of PCI function behind a device fd, which a
//! guest's own `nvme` driver drives (`docs/device.md`, The NVMe controller).
//!
//! The controller is the register file of BAR0 (CAP, VS, INTMS/INTMC, CC, CSTS, AQA, ASQ, ACQ
//! and the doorbells), its configuration space (class 0x010802, a 64-bit BAR0, MSI and MSI-X
//! capabilities) and its queues. Commands run when a submission queue's tail doorbell is
//! written, synchronously, before the register write returns: the controller fetches each new
//! entry, executes it (`cmd.rs`) and posts its completion. Every queue, PRP list and data access
//! is a DMA through the bus the caller hands in ([`NvmeBus`]), which `Vfio` implements with the
//! platform seam's `DeviceDma` through the function's IOMMU domain; an access the IOMMU refuses
//! becomes the NVMe status a controller reports for it, or `CSTS.CFS` when the controller cannot
//! reach its own queues. The namespace is a [`BlockStore`] (a file in the broker, memory in
//! tests).
//!
//! Neighbours: `vfio/devices.rs` runs the controller for a device fd and delivers its
//! interrupts; `device.rs` is the other kind of function (the DMA engine).

mod cmd;

use std::sync::Arc;

use type1_core::{DmaFault, Errno};
use vfio_bindings::bindings::vfio as b;

use crate::device::{
    region_offset, CONFIG_SIZE, MSIX_CAP, MSI_CAP, PCI_STATUS, PCI_STATUS_CAP_LIST,
    PCI_STATUS_INTERRUPT,
};

/// Size of BAR0: registers (0x0..0x1000), doorbells (0x1000..0x2000), the MSI-X table
/// (0x2000) and PBA (0x3000).
pub const NVME_BAR0_SIZE: u64 = 0x4000;
/// Vendor id of the function.
pub const NVME_VENDOR: u16 = 0x1234;
/// Device id of the function (ours; the driver binds by class).
pub const NVME_DEVICE: u16 = 0x7e01;
/// PCI class: mass storage, non-volatile memory, NVM Express.
pub const NVME_CLASS: u32 = 0x01_08_02;
/// I/O queue pairs the controller offers (plus the admin pair).
pub const MAX_IO_QUEUES: u16 = 8;
/// MSI-X vectors: one per queue pair, admin included.
pub const NVME_MSIX_VECTORS: u32 = MAX_IO_QUEUES as u32 + 1;
/// Offset of the MSI-X table in BAR0.
pub const NVME_MSIX_TABLE: u32 = 0x2000;
/// Offset of the MSI-X PBA in BAR0.
pub const NVME_MSIX_PBA: u32 = 0x3000;
/// Largest queue (entries) a queue may have: `CAP.MQES + 1`.
pub const MAX_QUEUE_ENTRIES: u32 = 1024;
/// Logical block size of the namespace.
pub const LBA_SIZE: u64 = 512;
/// Memory page size (`CC.MPS` 0).
pub const PAGE: u64 = 4096;
/// Maximum data transfer: 2^MDTS pages.
pub const MDTS: u8 = 8;

/// Register offsets.
pub mod reg {
    /// Capabilities (64-bit, read-only).
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Interrupt mask set.
    pub const INTMS: u64 = 0x0c;
    /// Interrupt mask clear.
    pub const INTMC: u64 = 0x10;
    /// Controller configuration.
    pub const CC: u64 = 0x14;
    /// Controller status.
    pub const CSTS: u64 = 0x1c;
    /// NVM subsystem reset (not supported: reads 0).
    pub const NSSR: u64 = 0x20;
    /// Admin queue attributes.
    pub const AQA: u64 = 0x24;
    /// Admin submission queue base.
    pub const ASQ: u64 = 0x28;
    /// Admin completion queue base.
    pub const ACQ: u64 = 0x30;
    /// First doorbell (submission queue 0's tail); stride 4 bytes (`CAP.DSTRD` 0).
    pub const DOORBELLS: u64 = 0x1000;
}

/// `CC.EN`.
pub const CC_EN: u32 = 1;
/// `CSTS.RDY`.
pub const CSTS_RDY: u32 = 1;
/// `CSTS.CFS`: controller fatal status.
pub const CSTS_CFS: u32 = 1 << 1;
/// `CSTS.SHST` = shutdown complete.
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;

/// The namespace's backing store: bytes at offsets, durable after [`BlockStore::flush`].
pub trait BlockStore: std::fmt::Debug + Send + Sync {
    /// Bytes in the store (a multiple of [`LBA_SIZE`]).
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `off` (inside [`BlockStore::size`]).
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes `data` at `off` (inside [`BlockStore::size`]).
    fn write_at(&self, off: u64, data: &[u8]) -> Result<(), Errno>;
    /// Makes every completed write durable (`fdatasync`).
    fn flush(&self) -> Result<(), Errno>;
    /// A file descriptor whose bytes at each offset are the namespace's (so that a platform
    /// may move data between it and memory without a copy here); `None` by default.
    fn fd(&self) -> Option<i32> {
        None
    }
}

/// A store in memory (tests, fuzzing).
#[derive(Debug)]
pub struct MemStore(std::sync::Mutex<Vec<u8>>);

impl MemStore {
    /// `size` bytes of zeros.
    pub fn new(size: u64) -> MemStore {
        MemStore(std::sync::Mutex::new(vec![0; size as usize]))
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BlockStore for MemStore {
    fn size(&self) -> u64 {
        self.bytes().len() as u64
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let b = self.bytes();
        let s = usize::try_from(off).map_err(|_| Errno::EIO)?;
        let src = b.get(s..s + buf.len()).ok_or(Errno::EIO)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&self, off: u64, data: &[u8]) -> Result<(), Errno> {
        let mut b = self.bytes();
        let s = usize::try_from(off).map_err(|_| Errno::EIO)?;
        let dst = b.get_mut(s..s + data.len()).ok_or(Errno::EIO)?;
        dst.copy_from_slice(data);
        Ok(())
    }

    fn flush(&self) -> Result<(), Errno> {
        Ok(())
    }
}

/// What the controller reaches outside itself: memory through its IOMMU domain, and its
/// interrupt vectors.
pub trait NvmeBus {
    /// A DMA of `buf.len()` bytes at `iova`, inside one page: to memory (`to_memory`) from
    /// `buf`, or from memory into `buf`.
    fn dma(&mut self, iova: u64, buf: &mut [u8], to_memory: bool) -> Result<(), DmaFault>;
    /// The same over segments `(iova, len)`, each inside one page, of one buffer, in order;
    /// the segments before a fault are done.
    fn dma_vec(
        &mut self,
        segs: &[(u64, usize)],
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaFault> {
        let mut at = 0;
        for &(iova, n) in segs {
            self.dma(iova, &mut buf[at..at + n], to_memory)?;
            at += n;
        }
        Ok(())
    }
    /// A transfer between the segments and the namespace file `fd` at `off` without a copy
    /// through the controller; `None` if the bus cannot (nothing was done).
    fn dma_file(
        &mut self,
        segs: &[(u64, usize)],
        fd: i32,
        off: u64,
        to_memory: bool,
    ) -> Option<Result<(), DmaFault>> {
        let _ = (segs, fd, off, to_memory);
        None
    }
    /// The controller wants interrupt vector `vector` (MSI-X; with MSI or INTx only vector 0
    /// exists).
    fn interrupt(&mut self, vector: u16);
    /// Something went wrong that the trace should show (a refused DMA, a fatal status).
    fn note(&mut self, what: String);
}

/// A submission queue.
#[derive(Clone, Debug)]
pub(crate) struct Sq {
    pub base: u64,
    pub size: u32,
    pub head: u32,
    pub tail: u32,
    pub cqid: u16,
}

/// A completion queue.
#[derive(Clone, Debug)]
pub(crate) struct Cq {
    pub base: u64,
    pub size: u32,
    pub head: u32,
    pub tail: u32,
    pub phase: bool,
    pub vector: u16,
    pub ien: bool,
}

/// Features set by Set Features and read by Get Features.
#[derive(Clone, Debug, Default)]
pub(crate) struct Features {
    pub arbitration: u32,
    pub power: u32,
    pub temperature: u32,
    pub error_recovery: u32,
    pub write_cache: u32,
    pub queues: Option<(u16, u16)>,
    pub coalescing: u32,
    pub vector_config: u32,
    pub async_events: u32,
}

/// One NVMe controller with its namespace 1.
#[derive(Clone, Debug)]
pub struct Nvme {
    config: [u8; CONFIG_SIZE as usize],
    pub(crate) store: Arc<dyn BlockStore>,
    serial: String,
    cc: u32,
    csts: u32,
    intms: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    pub(crate) sqs: Vec<Option<Sq>>,
    pub(crate) cqs: Vec<Option<Cq>>,
    pub(crate) features: Features,
    /// Outstanding Asynchronous Event Requests (command ids), never completed here.
    pub(crate) aers: Vec<u16>,
    /// Commands executed since the controller was enabled (a statistic for the trace).
    pub commands: u64,
    /// The data of the transfer being executed, kept from one command to the next (a fresh
    /// megabyte per command would be faulted in page by page each time).
    pub(crate) scratch: Vec<u8>,
}

/// The configuration space of a controller at reset (what sysfs `config` shows).
pub fn reset_config() -> [u8; CONFIG_SIZE as usize] {
    let mut c = [0u8; CONFIG_SIZE as usize];
    put16(&mut c, 0, NVME_VENDOR);
    put16(&mut c, 2, NVME_DEVICE);
    c[0x08] = 0x01; // revision
    c[0x09] = (NVME_CLASS & 0xff) as u8;
    c[0x0a] = (NVME_CLASS >> 8 & 0xff) as u8;
    c[0x0b] = (NVME_CLASS >> 16) as u8;
    c[0x10] = 0x04; // BAR0: memory, 64-bit, not prefetchable (BAR1 its upper half)
    put16(&mut c, 0x2c, NVME_VENDOR); // subsystem vendor
    put16(&mut c, 0x2e, NVME_DEVICE); // subsystem
    c[0x3d] = 1; // INTA
    put16(&mut c, PCI_STATUS, PCI_STATUS_CAP_LIST);
    c[0x34] = MSI_CAP as u8;
    c[MSI_CAP] = 0x05; // MSI
    c[MSI_CAP + 1] = MSIX_CAP as u8;
    c[MSI_CAP + 2] = 0x80; // 64-bit, one vector, disabled
    c[MSIX_CAP] = 0x11; // MSI-X
    c[MSIX_CAP + 1] = 0;
    put16(&mut c, MSIX_CAP + 2, NVME_MSIX_VECTORS as u16 - 1);
    put32(&mut c, MSIX_CAP + 4, NVME_MSIX_TABLE); // BIR 0
    put32(&mut c, MSIX_CAP + 8, NVME_MSIX_PBA);
    c
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

impl Nvme {
    /// A controller whose namespace is `store`; `serial` is its serial number (at most 20
    /// ASCII characters are used).
    pub fn new(store: Arc<dyn BlockStore>, serial: &str) -> Nvme {
        let c = reset_config();
        let mut n = Nvme {
            config: c,
            store,
            serial: serial
                .chars()
                .filter(char::is_ascii_graphic)
                .take(20)
                .collect(),
            cc: 0,
            csts: 0,
            intms: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            sqs: Vec::new(),
            cqs: Vec::new(),
            features: Features::default(),
            aers: Vec::new(),
            commands: 0,
            scratch: Vec::new(),
        };
        n.reset();
        n
    }

    /// Function-level reset (`VFIO_DEVICE_RESET`): every register, queue and feature back to
    /// its reset value, `COMMAND` cleared.
    pub fn reset(&mut self) {
        crate::pci::reset_config(&mut self.config);
        self.cc = 0;
        self.csts = 0;
        self.intms = 0;
        self.aqa = 0;
        self.asq = 0;
        self.acq = 0;
        self.controller_reset();
    }

    /// The controller reset `CC.EN` 1 → 0 does: queues, features and outstanding commands go;
    /// AQA, ASQ and ACQ stay.
    fn controller_reset(&mut self) {
        self.sqs = vec![None; MAX_IO_QUEUES as usize + 1];
        self.cqs = vec![None; MAX_IO_QUEUES as usize + 1];
        self.features = Features {
            // Volatile write cache on, as a drive with one ships.
            write_cache: 1,
            ..Features::default()
        };
        self.aers.clear();
        self.csts &= !(CSTS_RDY | CSTS_CFS);
    }

    /// The serial number.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// `CAP`: MQES, contiguous queues required, timeout 10 s, doorbell stride 4, the NVM
    /// command set, 4 KiB pages only.
    pub fn cap(&self) -> u64 {
        u64::from(MAX_QUEUE_ENTRIES - 1) | 1 << 16 | 20 << 24 | 1 << 37
    }

    /// `CSTS`.
    pub fn csts(&self) -> u32 {
        self.csts
    }

    /// Whether the controller is enabled and ready (`CSTS.RDY`), and not failed.
    pub fn ready(&self) -> bool {
        self.csts & CSTS_RDY != 0 && self.csts & CSTS_CFS == 0
    }

    /// The configuration space as it is now.
    pub fn config_space(&self) -> Vec<u8> {
        let mut v = self.config.to_vec();
        if self.irq_asserted() {
            v[PCI_STATUS] |= PCI_STATUS_INTERRUPT as u8;
        }
        v
    }

    /// `(flags, num_regions, num_irqs)` of `VFIO_DEVICE_GET_INFO`.
    pub fn info(&self) -> (u32, u32, u32) {
        crate::pci::pci_device_info()
    }

    /// `(flags, size, offset)` of region `index`: BAR0 (trapped: no `MMAP`) and config.
    pub fn region_info(&self, index: u32) -> Result<(u32, u64, u64), Errno> {
        let off = region_offset(index);
        let rw = b::VFIO_REGION_INFO_FLAG_READ | b::VFIO_REGION_INFO_FLAG_WRITE;
        match index {
            b::VFIO_PCI_BAR0_REGION_INDEX => Ok((rw, NVME_BAR0_SIZE, off)),
            1..=6 => Ok((0, 0, off)),
            b::VFIO_PCI_CONFIG_REGION_INDEX => Ok((rw, CONFIG_SIZE, off)),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `(flags, count)` of IRQ `index`: one MSI-X vector per queue pair.
    pub fn irq_info(&self, index: u32) -> Result<(u32, u32), Errno> {
        crate::pci::pci_irq_info(index, NVME_MSIX_VECTORS)
    }

    /// Whether bus mastering is on.
    pub fn bus_master(&self) -> bool {
        crate::pci::bus_master(&self.config)
    }

    /// Whether INTx may be signalled (`COMMAND.INTX_DISABLE` clear).
    pub fn intx_enabled(&self) -> bool {
        crate::pci::intx_enabled(&self.config)
    }

    /// The pin-based (INTx) or single-MSI interrupt is asserted: some completion queue with
    /// interrupts enabled holds entries the host has not consumed, and `INTMS` does not mask
    /// vector 0 (a level, as INTx is).
    pub fn irq_asserted(&self) -> bool {
        self.intms & 1 == 0
            && self
                .cqs
                .iter()
                .flatten()
                .any(|cq| cq.ien && cq.head != cq.tail)
    }

    /// `pread`/`pwrite` at file offset `pos`: the bytes transferred and whether the write rang
    /// a doorbell (or enabled the controller) so that queues must be processed
    /// ([`Nvme::process`]). EINVAL for a region that cannot be accessed.
    pub fn rw(&mut self, pos: u64, buf: &mut [u8], write: bool) -> Result<(usize, bool), Errno> {
        let index = pos >> crate::device::REGION_SHIFT;
        let off = pos & ((1u64 << crate::device::REGION_SHIFT) - 1);
        match index {
            0 => Ok(self.bar0_rw(off, buf, write)),
            7 => Ok((self.config_rw(off, buf, write), false)),
            _ => Err(Errno::EINVAL),
        }
    }

    fn config_rw(&mut self, off: u64, buf: &mut [u8], write: bool) -> usize {
        let Ok(off) = usize::try_from(off) else {
            return 0;
        };
        if off >= self.config.len() {
            return 0;
        }
        let n = buf.len().min(self.config.len() - off);
        if !write {
            buf[..n].copy_from_slice(&self.config_space()[off..off + n]);
            return n;
        }
        for (i, byte) in buf[..n].iter().enumerate() {
            crate::pci::config_write_byte(&mut self.config, off + i, *byte);
        }
        n
    }

    /// The register image of `0..0x40` as the host reads it.
    fn regs_image(&self) -> [u8; 0x40] {
        let mut r = [0u8; 0x40];
        r[0..8].copy_from_slice(&self.cap().to_le_bytes());
        r[8..12].copy_from_slice(&0x0001_0400u32.to_le_bytes());
        r[0x0c..0x10].copy_from_slice(&self.intms.to_le_bytes());
        r[0x10..0x14].copy_from_slice(&self.intms.to_le_bytes());
        r[0x14..0x18].copy_from_slice(&self.cc.to_le_bytes());
        r[0x1c..0x20].copy_from_slice(&self.csts.to_le_bytes());
        r[0x24..0x28].copy_from_slice(&self.aqa.to_le_bytes());
        r[0x28..0x30].copy_from_slice(&self.asq.to_le_bytes());
        r[0x30..0x38].copy_from_slice(&self.acq.to_le_bytes());
        r
    }

    fn bar0_rw(&mut self, off: u64, buf: &mut [u8], write: bool) -> (usize, bool) {
        if off >= NVME_BAR0_SIZE {
            return (0, false);
        }
        let n = buf.len().min((NVME_BAR0_SIZE - off) as usize);
        if !write {
            let img = self.regs_image();
            for (i, byte) in buf[..n].iter_mut().enumerate() {
                let at = off as usize + i;
                // Doorbells are write-only (read 0), the MSI-X table is the VMM's.
                *byte = img.get(at).copied().unwrap_or(0);
            }
            return (n, false);
        }
        // Writes are taken a register at a time: the bytes land in a copy of the image and each
        // register they touched acts once, as a 32- or 64-bit store does.
        let mut img = self.regs_image();
        let mut touched = Vec::new();
        let mut rang = false;
        for (i, byte) in buf[..n].iter().enumerate() {
            let at = off + i as u64;
            if at < 0x40 {
                img[at as usize] = *byte;
                let r = at & !3;
                if touched.last() != Some(&r) {
                    touched.push(r);
                }
            }
        }
        let word = |img: &[u8; 0x40], r: u64| {
            u32::from_le_bytes(img[r as usize..r as usize + 4].try_into().unwrap_or([0; 4]))
        };
        for r in touched {
            let v = word(&img, r);
            match r {
                reg::INTMS => self.intms |= v,
                reg::INTMC => self.intms &= !v,
                reg::CC => rang |= self.write_cc(v),
                reg::AQA => self.aqa = v & 0x0fff_0fff,
                0x28 | 0x2c => {
                    self.asq = u64::from_le_bytes(img[0x28..0x30].try_into().unwrap_or([0; 8]))
                }
                0x30 | 0x34 => {
                    self.acq = u64::from_le_bytes(img[0x30..0x38].try_into().unwrap_or([0; 8]))
                }
                // CAP, VS, CSTS, NSSR (not supported) and reserved words.
                _ => {}
            }
        }
        // Doorbells: whole 32-bit writes at the 4-byte stride.
        if (reg::DOORBELLS..reg::DOORBELLS + 0x1000).contains(&off) && n == 4 && off % 4 == 0 {
            let v = u32::from_le_bytes(buf[..4].try_into().unwrap_or([0; 4]));
            let idx = (off - reg::DOORBELLS) / 4;
            rang |= self.doorbell((idx / 2) as usize, idx % 2 == 1, v);
        }
        (n, rang)
    }

    /// A write of `CC`: enable, disable (controller reset) and shutdown notification. Returns
    /// whether queues may need processing (the controller was just enabled).
    fn write_cc(&mut self, v: u32) -> bool {
        let was = self.cc;
        self.cc = v;
        if was & CC_EN == 0 && v & CC_EN != 0 {
            return self.enable();
        }
        if was & CC_EN != 0 && v & CC_EN == 0 {
            self.controller_reset();
            self.csts &= !(3 << 2);
            return false;
        }
        // Shutdown notification (normal or abrupt): everything written is made durable.
        if (v >> 14) & 3 != 0 && (was >> 14) & 3 == 0 {
            let _ = self.store.flush();
            self.csts = (self.csts & !(3 << 2)) | CSTS_SHST_COMPLETE;
        } else if (v >> 14) & 3 == 0 {
            self.csts &= !(3 << 2);
        }
        false
    }

    /// `CC.EN` 0 → 1: checks the admin queues and the configuration; a controller that
    /// cannot run reports `CSTS.CFS` instead of `RDY`.
    fn enable(&mut self) -> bool {
        let asqs = (self.aqa & 0xfff) + 1;
        let acqs = (self.aqa >> 16 & 0xfff) + 1;
        let mps = (self.cc >> 7) & 0xf;
        let css = (self.cc >> 4) & 0x7;
        let ok = asqs >= 2
            && acqs >= 2
            && self.asq % PAGE == 0
            && self.acq % PAGE == 0
            && self.asq != 0
            && self.acq != 0
            && mps == 0
            && css == 0;
        if !ok {
            self.csts |= CSTS_CFS;
            return false;
        }
        self.sqs[0] = Some(Sq {
            base: self.asq,
            size: asqs,
            head: 0,
            tail: 0,
            cqid: 0,
        });
        self.cqs[0] = Some(Cq {
            base: self.acq,
            size: acqs,
            head: 0,
            tail: 0,
            phase: true,
            vector: 0,
            ien: true,
        });
        self.commands = 0;
        self.csts = (self.csts & !CSTS_CFS) | CSTS_RDY;
        false
    }

    /// A doorbell write: a submission queue's new tail, or a completion queue's new head.
    /// An invalid value or a queue that does not exist is ignored (the driver's error; a real
    /// controller may post an asynchronous event, which this one does not).
    fn doorbell(&mut self, qid: usize, cq: bool, v: u32) -> bool {
        if !self.ready() {
            return false;
        }
        if cq {
            if let Some(Some(q)) = self.cqs.get_mut(qid) {
                if v < q.size {
                    q.head = v;
                    // Room in the queue: submissions waiting for it may run now.
                    return true;
                }
            }
            return false;
        }
        match self.sqs.get_mut(qid) {
            Some(Some(q)) if v < q.size => {
                q.tail = v;
                true
            }
            _ => false,
        }
    }

    /// Runs every submitted command the completion queues have room for, posting completions
    /// and asking for interrupts. A controller that cannot reach its queues stops with
    /// `CSTS.CFS`; a controller without bus mastering does nothing.
    pub fn process(&mut self, bus: &mut dyn NvmeBus) {
        if !self.ready() || !self.bus_master() {
            return;
        }
        let mut irqs: Vec<u16> = Vec::new();
        loop {
            let mut progress = false;
            for qid in 0..self.sqs.len() {
                if !self.ready() {
                    return;
                }
                let Some(sq) = self.sqs[qid].clone() else {
                    continue;
                };
                if sq.head == sq.tail {
                    continue;
                }
                let Some(Some(cq)) = self.cqs.get(sq.cqid as usize) else {
                    continue;
                };
                if (cq.tail + 1) % cq.size == cq.head {
                    continue; // full: the entry waits
                }
                let mut entry = [0u8; 64];
                if let Err(f) = bus.dma(sq.base + u64::from(sq.head) * 64, &mut entry, false) {
                    self.fatal(bus, format!("fetch of sq {qid} entry {}: {f}", sq.head));
                    return;
                }
                if let Some(Some(q)) = self.sqs.get_mut(qid) {
                    q.head = (q.head + 1) % q.size;
                }
                self.commands += 1;
                let Some(done) = self.execute(bus, qid as u16, &entry) else {
                    progress = true;
                    continue; // held (an asynchronous event request)
                };
                let cid = u16::from_le_bytes([entry[2], entry[3]]);
                // The queue may be gone (the command deleted it): then nothing is posted.
                let head = self.sqs[qid].as_ref().map_or(sq.head, |q| q.head);
                match self.post(bus, sq.cqid, qid as u16, head, cid, done) {
                    Ok(Some(v)) if !irqs.contains(&v) => irqs.push(v),
                    Ok(_) => {}
                    Err(()) => return,
                }
                progress = true;
            }
            if !progress {
                break;
            }
        }
        for v in irqs {
            bus.interrupt(v);
        }
    }

    /// Posts a completion on queue `cqid`; the vector to interrupt, if interrupts are on.
    pub(crate) fn post(
        &mut self,
        bus: &mut dyn NvmeBus,
        cqid: u16,
        sqid: u16,
        sq_head: u32,
        cid: u16,
        done: cmd::Done,
    ) -> Result<Option<u16>, ()> {
        let Some(Some(cq)) = self.cqs.get(cqid as usize).cloned() else {
            return Ok(None);
        };
        let mut e = [0u8; 16];
        e[0..4].copy_from_slice(&done.result.to_le_bytes());
        e[8..10].copy_from_slice(&(sq_head as u16).to_le_bytes());
        e[10..12].copy_from_slice(&sqid.to_le_bytes());
        e[12..14].copy_from_slice(&cid.to_le_bytes());
        let status = (done.status << 1) | u16::from(cq.phase);
        e[14..16].copy_from_slice(&status.to_le_bytes());
        if let Err(f) = bus.dma(cq.base + u64::from(cq.tail) * 16, &mut e, true) {
            self.fatal(
                bus,
                format!("completion to cq {cqid} entry {}: {f}", cq.tail),
            );
            return Err(());
        }
        if let Some(Some(q)) = self.cqs.get_mut(cqid as usize) {
            q.tail = (q.tail + 1) % q.size;
            if q.tail == 0 {
                q.phase = !q.phase;
            }
        }
        Ok(cq.ien.then_some(cq.vector))
    }

    /// Controller fatal status: the controller stops until it is reset.
    fn fatal(&mut self, bus: &mut dyn NvmeBus, what: String) {
        self.csts |= CSTS_CFS;
        bus.note(format!("controller fatal status: {what}"));
    }
}

#[cfg(test)]
mod tests;
