//! The emulated PCI device behind a device fd: an `edu`-like DMA engine. (Over 800 lines only
//! with its unit tests, which stay beside the register model they check.)
//!
//! The device answers what `vfio-pci` answers for a conventional PCI function: flags
//! `PCI|RESET`, 9 regions, 5 IRQs; region `i` lives at file offset `i << 40`
//! (`VFIO_PCI_INDEX_TO_OFFSET`). Its answers and layout are documented in `docs/device.md`:
//!
//! * **BAR0** ([`BAR0_SIZE`], 32-bit memory, no `MMAP` flag): the registers (page 0) and the
//!   device-internal buffer (page 1). Every access comes through `pread`/`pwrite`, so every
//!   register write reaches the model. Writing [`CMD_START`] to [`REG_CMD`] asks for a DMA
//!   transfer, which [`PciDevice::rw`] hands back as a [`DmaRequest`] for the owner
//!   ([`crate::Vfio`]) to run through the group's IOMMU domain and report with
//!   [`PciDevice::complete`];
//! * **BAR2** ([`BAR2_SIZE`], 64-bit prefetchable memory, `MMAP`): device memory, like a GPU
//!   aperture. This model does not hold its bytes: the owner of the device backs it (the
//!   broker keeps a memory file per device and hands it to every process that opens the
//!   device, so `mmap` and `pread` see the same bytes) and answers its `pread`/`pwrite`;
//!   [`PciDevice::rw`] answers EINVAL for it;
//! * **config space** (256 bytes): 1234:11e8, class 00ff00, interrupt pin A.

use type1_core::Errno;
use vfio_bindings::bindings::vfio as b;

/// Shift of `VFIO_PCI_INDEX_TO_OFFSET`.
pub const REGION_SHIFT: u32 = 40;
/// Size of BAR0: a page of registers and a page of device buffer.
pub const BAR0_SIZE: u64 = 0x2000;
/// Region index of the memory BAR.
pub const BAR2_INDEX: u32 = b::VFIO_PCI_BAR2_REGION_INDEX;
/// Size of the memory BAR (power of two).
pub const BAR2_SIZE: u64 = 1 << 20;
/// Size of the config region.
pub const CONFIG_SIZE: u64 = 256;
/// File offset of a region.
pub const fn region_offset(index: u32) -> u64 {
    (index as u64) << REGION_SHIFT
}

/// `ID` (RO, u32): [`DEVICE_ID_VALUE`].
pub const REG_ID: u64 = 0x00;
/// Value of [`REG_ID`]: major 1, minor 0, `0xed`.
pub const DEVICE_ID_VALUE: u32 = 0x0100_00ed;
/// `LIVENESS` (RW, u32): reads back the bitwise inverse of what was written.
pub const REG_LIVENESS: u64 = 0x04;
/// `DMA_SRC` (RW, u64): source IOVA (memory to device) or buffer offset (device to memory).
pub const REG_DMA_SRC: u64 = 0x08;
/// `DMA_DST` (RW, u64): buffer offset (memory to device) or destination IOVA (device to memory).
pub const REG_DMA_DST: u64 = 0x10;
/// `DMA_LEN` (RW, u64): bytes to transfer, at most [`BUFFER_SIZE`].
pub const REG_DMA_LEN: u64 = 0x18;
/// `DMA_CMD` (RW, u32): [`CMD_START`] | [`CMD_TO_MEMORY`] | [`CMD_NO_SNOOP`] | [`CMD_IRQ`].
pub const REG_CMD: u64 = 0x20;
/// `STATUS` (RO, write 1 to clear DONE and FAULT, u32): [`STATUS_BUSY`], [`STATUS_DONE`],
/// [`STATUS_FAULT`].
pub const REG_STATUS: u64 = 0x24;
/// `FAULT_IOVA` (RO, u64): the first IOVA that faulted.
pub const REG_FAULT_IOVA: u64 = 0x28;
/// `FAULT_REASON` (RO, u32): a `FAULT_*` value.
pub const REG_FAULT_REASON: u64 = 0x30;
/// `DMA_COUNT` (RO, u32): transfers completed without a fault since reset.
pub const REG_DMA_COUNT: u64 = 0x34;
/// `IRQ_VECTOR` (RW u32): the MSI-X vector a `CMD_IRQ` transfer signals (taken modulo
/// [`MSIX_VECTORS`]; MSI and INTx have one).
pub const REG_IRQ_VECTOR: u64 = 0x38;
/// Offset of the device-internal buffer in BAR0.
pub const BUFFER_OFFSET: u64 = 0x1000;
/// Size of the device-internal buffer.
pub const BUFFER_SIZE: u64 = 0x1000;

/// `DMA_CMD`: start a transfer (reads back 0 once it is over).
pub const CMD_START: u32 = 1 << 0;
/// `DMA_CMD`: direction device to memory (write to the IOVA); clear: memory to device.
pub const CMD_TO_MEMORY: u32 = 1 << 1;
/// `DMA_CMD`: request no-snoop (bypass CPU caches unless the domain enforces coherency).
pub const CMD_NO_SNOOP: u32 = 1 << 2;
/// `DMA_CMD`: raise an interrupt when the transfer ends (the MSI-X vector [`REG_IRQ_VECTOR`]
/// names, or MSI, if the owner enabled one, else INTx, which stays asserted until `STATUS` is
/// cleared).
pub const CMD_IRQ: u32 = 1 << 3;
/// `STATUS`: a transfer is running (never seen: transfers complete within the write).
pub const STATUS_BUSY: u32 = 1 << 0;
/// `STATUS`: the last transfer completed.
pub const STATUS_DONE: u32 = 1 << 1;
/// `STATUS`: the last transfer faulted (see `FAULT_IOVA`, `FAULT_REASON`).
pub const STATUS_FAULT: u32 = 1 << 2;

/// `FAULT_REASON`: no IOMMU mapping at the IOVA.
pub const FAULT_UNMAPPED: u32 = 1;
/// `FAULT_REASON`: the mapping does not allow the access (a write to a read-only IOVA).
pub const FAULT_PERMISSION: u32 = 2;
/// `FAULT_REASON`: the device's group is in no IOMMU domain (no container, or no backend).
pub const FAULT_NO_DOMAIN: u32 = 3;
/// `FAULT_REASON`: the buffer side of the request is out of the buffer's bounds.
pub const FAULT_BAD_REQUEST: u32 = 4;
/// `FAULT_REASON`: bus mastering is off (`COMMAND.BME` clear in config space): the device may
/// not issue memory requests, as on hardware; nothing is transferred.
pub const FAULT_NO_BUS_MASTER: u32 = 5;
/// The `COMMAND` register and its bits, as every emulated function has them.
pub use crate::pci::{PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_MASTER};
/// Config space `STATUS` register offset.
pub const PCI_STATUS: usize = 0x06;
/// `STATUS.INTERRUPT`: INTx is asserted (whatever `INTX_DISABLE` says).
pub const PCI_STATUS_INTERRUPT: u16 = 1 << 3;
/// `STATUS.CAP_LIST`: a capability list starts at `CAPABILITY_LIST`.
pub const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
/// The capability offsets every emulated function uses (MSI first, then MSI-X with
/// [`MSIX_VECTORS`] vectors here, its table and PBA in BAR0).
pub use crate::pci::{MSIX_CAP, MSI_CAP};
/// MSI-X vectors.
pub const MSIX_VECTORS: u32 = 4;
/// Offset of the MSI-X table in BAR0 (16 bytes per vector; its owner, the VMM, emulates it).
pub const MSIX_TABLE: u32 = 0x800;
/// Offset of the MSI-X pending-bit array in BAR0.
pub const MSIX_PBA: u32 = 0xc00;

/// A DMA transfer the device asks its owner to perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRequest {
    /// The IOVA side.
    pub iova: u64,
    /// Offset in the device buffer.
    pub buffer_offset: u64,
    /// Bytes.
    pub len: u64,
    /// Device to memory (write to the IOVA) rather than memory to device.
    pub to_memory: bool,
    /// The no-snoop bit of the request.
    pub no_snoop: bool,
}

/// Why a transfer stopped: `FAULT_*` reason and the IOVA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferFault {
    /// The first IOVA that could not be accessed.
    pub iova: u64,
    /// A `FAULT_*` value.
    pub reason: u32,
}

/// A second home of a device's BAR0 image (registers at `0..BUFFER_OFFSET`, the buffer
/// after), where the device's users read every register and write the plain ones themselves
/// (the broker's shared memory, mapped by every process that opened the device). The model
/// loads the plain registers from it before it acts on an access and stores what it changed
/// after, so the image always shows the device as it is.
pub trait Bar0Mirror: std::fmt::Debug + Send + Sync {
    /// Copies the image's bytes at `off` into `buf`.
    fn load(&self, off: u64, buf: &mut [u8]);
    /// Stores `data` into the image at `off`.
    fn store(&self, off: u64, data: &[u8]);
}

/// The parts of BAR0 whose writes only store a value (no side effect on the device): a user of
/// the [`Bar0Mirror`] writes them there itself. `LIVENESS` stores the inverse (see
/// [`plain_write`]).
pub const PLAIN_RANGES: [std::ops::Range<u64>; 3] = [
    REG_LIVENESS..REG_CMD,
    REG_IRQ_VECTOR..REG_IRQ_VECTOR + 4,
    BUFFER_OFFSET..BAR0_SIZE,
];

/// Whether a write of `len` bytes at BAR0 offset `off` lies wholly inside one plain range
/// ([`PLAIN_RANGES`]): decided before the bytes are read.
pub fn is_plain(off: u64, len: usize) -> bool {
    let Some(end) = off.checked_add(len as u64) else {
        return false;
    };
    len > 0 && PLAIN_RANGES.iter().any(|r| r.start <= off && end <= r.end)
}

/// The bytes a write of `data` at BAR0 offset `off` stores, when the write lies wholly inside
/// one plain range ([`PLAIN_RANGES`]) and so needs nothing of the model; `None` when the model
/// must see it (`DMA_CMD`, `STATUS`, read-only and reserved registers, or a write across
/// ranges).
pub fn plain_write(off: u64, data: &[u8]) -> Option<Vec<u8>> {
    if !is_plain(off, data.len()) {
        return None;
    }
    Some(
        data.iter()
            .enumerate()
            .map(|(i, b)| {
                let at = off + i as u64;
                if (REG_LIVENESS..REG_LIVENESS + 4).contains(&at) {
                    !*b
                } else {
                    *b
                }
            })
            .collect(),
    )
}

/// The runs of whole 8-byte words (the last one possibly shorter) in which `now` differs from
/// `was`; an unchanged 64-byte block is passed over in one comparison.
fn changed_words(now: &[u8], was: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut run: Option<usize> = None;
    let mut i = 0;
    while i < now.len() {
        if run.is_none() && i % 64 == 0 {
            let block = i..(i + 64).min(now.len());
            if now[block.clone()] == was[block.clone()] {
                i = block.end;
                continue;
            }
        }
        let word = i..(i + 8).min(now.len());
        match (run, now[word.clone()] != was[word.clone()]) {
            (None, true) => run = Some(i),
            (Some(start), false) => {
                out.push(start..i);
                run = None;
            }
            _ => {}
        }
        i = word.end;
    }
    if let Some(start) = run {
        out.push(start..now.len());
    }
    out
}

/// One emulated PCI function.
#[derive(Clone, Debug)]
pub struct PciDevice {
    config: [u8; CONFIG_SIZE as usize],
    regs: Vec<u8>,
    buffer: Vec<u8>,
    /// The interrupt the last transfer requested is pending (until `STATUS` is cleared).
    irq_line: bool,
    /// The image's second home, and the image as last stored there.
    mirror: Option<(std::sync::Arc<dyn Bar0Mirror>, Vec<u8>)>,
}

impl Default for PciDevice {
    fn default() -> Self {
        Self::new()
    }
}

fn le_u32(b: &[u8], off: u64) -> u32 {
    let o = off as usize;
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]))
}

fn le_u64(b: &[u8], off: u64) -> u64 {
    let o = off as usize;
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
}

fn put(b: &mut [u8], off: u64, v: &[u8]) {
    let o = off as usize;
    b[o..o + v.len()].copy_from_slice(v);
}

impl PciDevice {
    /// A fresh device: 1234:11e8, class 00ff00, BAR0 32-bit memory, BAR2 64-bit prefetchable
    /// memory, interrupt pin A.
    pub fn new() -> PciDevice {
        let mut config = [0u8; CONFIG_SIZE as usize];
        config[0..2].copy_from_slice(&0x1234u16.to_le_bytes());
        config[2..4].copy_from_slice(&0x11e8u16.to_le_bytes());
        config[0x0a] = 0x00; // subclass
        config[0x0b] = 0xff; // class
        config[0x18] = 0x0c; // BAR2: memory, 64-bit, prefetchable
        config[0x3d] = 1; // interrupt pin INTA
        config[PCI_STATUS..PCI_STATUS + 2].copy_from_slice(&PCI_STATUS_CAP_LIST.to_le_bytes());
        config[0x34] = MSI_CAP as u8; // capability list
        config[MSI_CAP] = 0x05; // MSI
        config[MSI_CAP + 1] = MSIX_CAP as u8; // next: MSI-X
        config[MSI_CAP + 2] = 0x80; // message control: 64-bit, one vector, disabled
        config[MSIX_CAP] = 0x11; // MSI-X
        config[MSIX_CAP + 1] = 0; // last capability
                                  // Message control: table size - 1; function mask and enable clear.
        config[MSIX_CAP + 2..MSIX_CAP + 4]
            .copy_from_slice(&(MSIX_VECTORS as u16 - 1).to_le_bytes());
        // Table and PBA offsets, BIR 0 (BAR0).
        config[MSIX_CAP + 4..MSIX_CAP + 8].copy_from_slice(&MSIX_TABLE.to_le_bytes());
        config[MSIX_CAP + 8..MSIX_CAP + 12].copy_from_slice(&MSIX_PBA.to_le_bytes());
        let mut d = PciDevice {
            config,
            regs: vec![0; BUFFER_OFFSET as usize],
            buffer: vec![0; BUFFER_SIZE as usize],
            irq_line: false,
            mirror: None,
        };
        d.reset();
        d
    }

    /// Keeps the BAR0 image in `m` too from now on (stored there whole at once).
    pub fn set_mirror(&mut self, m: std::sync::Arc<dyn Bar0Mirror>) {
        let image = self.image();
        m.store(0, &image);
        self.mirror = Some((m, image));
    }

    fn image(&self) -> Vec<u8> {
        [self.regs.as_slice(), self.buffer.as_slice()].concat()
    }

    /// Takes in what users wrote to the plain registers of the mirror.
    fn sync_in(&mut self) {
        let Some((m, last)) = self.mirror.as_mut() else {
            return;
        };
        for r in PLAIN_RANGES {
            let (a, b) = (r.start as usize, r.end as usize);
            m.load(r.start, &mut last[a..b]);
        }
        let split = BUFFER_OFFSET as usize;
        self.regs.copy_from_slice(&last[..split]);
        self.buffer.copy_from_slice(&last[split..]);
    }

    /// Stores in the mirror what the model changed since it last stored (runs of whole 8-byte
    /// words, so that a reader never sees half a register), leaving the rest alone: a
    /// concurrent user's write elsewhere is not overwritten.
    fn publish(&mut self) {
        let Some((m, last)) = self.mirror.as_mut() else {
            return;
        };
        let split = BUFFER_OFFSET as usize;
        for (base, now) in [
            (0usize, self.regs.as_slice()),
            (split, self.buffer.as_slice()),
        ] {
            let was = &mut last[base..base + now.len()];
            for r in changed_words(now, was) {
                m.store((base + r.start) as u64, &now[r.clone()]);
                was[r.clone()].copy_from_slice(&now[r]);
            }
        }
    }

    /// `VFIO_DEVICE_RESET`: registers and buffer back to their reset values, and `COMMAND`
    /// cleared (a function reset turns bus mastering off).
    pub fn reset(&mut self) {
        self.sync_in();
        crate::pci::reset_config(&mut self.config);
        self.irq_line = false;
        self.regs.iter_mut().for_each(|b| *b = 0);
        self.buffer.iter_mut().for_each(|b| *b = 0);
        put(&mut self.regs, REG_ID, &DEVICE_ID_VALUE.to_le_bytes());
        put(&mut self.regs, REG_LIVENESS, &u32::MAX.to_le_bytes());
        self.publish();
    }

    /// The configuration space as it is now (what a read of the config region returns).
    pub fn config_space(&self) -> Vec<u8> {
        let mut b = vec![0u8; CONFIG_SIZE as usize];
        let n = self.clone().config_rw(0, &mut b, false);
        b.truncate(n);
        b
    }

    /// `(flags, num_regions, num_irqs)` of `VFIO_DEVICE_GET_INFO`.
    pub fn info(&self) -> (u32, u32, u32) {
        crate::pci::pci_device_info()
    }

    /// `(flags, size, offset)` of region `index`; EINVAL for VGA (absent) and beyond.
    pub fn region_info(&self, index: u32) -> Result<(u32, u64, u64), Errno> {
        let off = region_offset(index);
        let rw = b::VFIO_REGION_INFO_FLAG_READ | b::VFIO_REGION_INFO_FLAG_WRITE;
        match index {
            b::VFIO_PCI_BAR0_REGION_INDEX => Ok((rw, BAR0_SIZE, off)),
            BAR2_INDEX => Ok((rw | b::VFIO_REGION_INFO_FLAG_MMAP, BAR2_SIZE, off)),
            1..=6 => Ok((0, 0, off)),
            b::VFIO_PCI_CONFIG_REGION_INDEX => Ok((rw, CONFIG_SIZE, off)),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `(flags, count)` of IRQ `index`; EINVAL for ERR (not PCIe) and beyond.
    pub fn irq_info(&self, index: u32) -> Result<(u32, u32), Errno> {
        crate::pci::pci_irq_info(index, MSIX_VECTORS)
    }

    /// Whether bus mastering is on (`COMMAND.BME`): the device may reach memory.
    pub fn bus_master(&self) -> bool {
        crate::pci::bus_master(&self.config)
    }

    /// Whether the device asks for an interrupt: a transfer that requested one ended and its
    /// `STATUS` has not been cleared yet (a level, as INTx is).
    pub fn irq_asserted(&self) -> bool {
        self.irq_line
    }

    /// Whether INTx may be signalled (`COMMAND.INTX_DISABLE` clear).
    pub fn intx_enabled(&self) -> bool {
        crate::pci::intx_enabled(&self.config)
    }

    /// A register, as the device sees it.
    pub fn reg32(&self, off: u64) -> u32 {
        le_u32(&self.regs, off)
    }

    /// A 64-bit register.
    pub fn reg64(&self, off: u64) -> u64 {
        le_u64(&self.regs, off)
    }

    /// The device-internal buffer.
    pub fn buffer(&self) -> &[u8] {
        &self.buffer
    }

    /// The device-internal buffer, for DMA into it.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        &mut self.buffer
    }

    /// `pread`/`pwrite` at file offset `pos`: returns the bytes transferred (short at the end of
    /// a region, 0 past it) and, for a register write that started a transfer, the request;
    /// EINVAL for a region that cannot be accessed here (absent regions, and BAR2, which the
    /// fd's owner backs).
    pub fn rw(
        &mut self,
        pos: u64,
        buf: &mut [u8],
        write: bool,
    ) -> Result<(usize, Option<DmaRequest>), Errno> {
        let index = pos >> REGION_SHIFT;
        let off = pos & ((1u64 << REGION_SHIFT) - 1);
        match index {
            0 => {
                self.sync_in();
                let r = self.bar0_rw(off, buf, write);
                self.publish();
                Ok(r)
            }
            7 => Ok((self.config_rw(off, buf, write), None)),
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
        if write {
            for (i, byte) in buf[..n].iter().enumerate() {
                crate::pci::config_write_byte(&mut self.config, off + i, *byte);
            }
        } else {
            let mut view = self.config;
            if self.irq_line {
                view[PCI_STATUS] |= PCI_STATUS_INTERRUPT as u8;
            }
            buf[..n].copy_from_slice(&view[off..off + n]);
        }
        n
    }

    fn bar0_rw(&mut self, off: u64, buf: &mut [u8], write: bool) -> (usize, Option<DmaRequest>) {
        if off >= BAR0_SIZE {
            return (0, None);
        }
        let n = buf.len().min((BAR0_SIZE - off) as usize);
        let mut start = false;
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            let at = off + i as u64;
            if at >= BUFFER_OFFSET {
                let b = &mut self.buffer[(at - BUFFER_OFFSET) as usize];
                if write {
                    *b = *byte;
                } else {
                    *byte = *b;
                }
                continue;
            }
            let slot = &mut self.regs[at as usize];
            if !write {
                *byte = *slot;
                continue;
            }
            match at {
                // LIVENESS stores the inverse.
                0x04..=0x07 => *slot = !*byte,
                0x08..=0x23 => {
                    *slot = *byte;
                    if at == REG_CMD && *byte as u32 & CMD_START != 0 {
                        start = true;
                    }
                }
                0x38..=0x3b => *slot = *byte,
                // STATUS: write 1 to clear DONE and FAULT; clearing both deasserts the
                // interrupt the transfer raised.
                0x24 => {
                    *slot &= !(*byte & (STATUS_DONE | STATUS_FAULT) as u8);
                    if *slot & (STATUS_DONE | STATUS_FAULT) as u8 == 0 {
                        self.irq_line = false;
                    }
                }
                // ID, the rest of STATUS, the fault registers, DMA_COUNT, reserved space.
                _ => {}
            }
        }
        let req = start.then(|| {
            let cmd = self.reg32(REG_CMD);
            let to_memory = cmd & CMD_TO_MEMORY != 0;
            let (src, dst) = (self.reg64(REG_DMA_SRC), self.reg64(REG_DMA_DST));
            let status = (self.reg32(REG_STATUS) & !(STATUS_DONE | STATUS_FAULT)) | STATUS_BUSY;
            put(&mut self.regs, REG_STATUS, &status.to_le_bytes());
            DmaRequest {
                iova: if to_memory { dst } else { src },
                buffer_offset: if to_memory { src } else { dst },
                len: self.reg64(REG_DMA_LEN),
                to_memory,
                no_snoop: cmd & CMD_NO_SNOOP != 0,
            }
        });
        (n, req)
    }

    /// Checks the buffer side of a request: the byte range of the buffer it covers.
    pub fn buffer_range(req: &DmaRequest) -> Result<std::ops::Range<usize>, TransferFault> {
        let bad = TransferFault {
            iova: req.iova,
            reason: FAULT_BAD_REQUEST,
        };
        let end = req.buffer_offset.checked_add(req.len).ok_or(bad)?;
        if end > BUFFER_SIZE || req.iova.checked_add(req.len).is_none() {
            return Err(bad);
        }
        Ok(req.buffer_offset as usize..end as usize)
    }

    /// Ends the transfer started by the last [`DmaRequest`]: `START` clears, `STATUS` shows
    /// `DONE` or `FAULT` (with `FAULT_IOVA` and `FAULT_REASON`).
    pub fn complete(&mut self, result: Result<(), TransferFault>) {
        if self.reg32(REG_CMD) & CMD_IRQ != 0 {
            self.irq_line = true;
        }
        let cmd = self.reg32(REG_CMD) & !CMD_START;
        put(&mut self.regs, REG_CMD, &cmd.to_le_bytes());
        let status = match result {
            Ok(()) => {
                let count = self.reg32(REG_DMA_COUNT).wrapping_add(1);
                put(&mut self.regs, REG_DMA_COUNT, &count.to_le_bytes());
                STATUS_DONE
            }
            Err(f) => {
                put(&mut self.regs, REG_FAULT_IOVA, &f.iova.to_le_bytes());
                put(&mut self.regs, REG_FAULT_REASON, &f.reason.to_le_bytes());
                STATUS_FAULT
            }
        };
        put(&mut self.regs, REG_STATUS, &status.to_le_bytes());
        // The transfer's buffer bytes (memory to device) and the final status, together.
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register image in plain memory, as the broker's shared file is.
    #[derive(Debug)]
    struct VecMirror(std::sync::Mutex<Vec<u8>>);

    impl Bar0Mirror for VecMirror {
        fn load(&self, off: u64, buf: &mut [u8]) {
            let m = self.0.lock().unwrap();
            buf.copy_from_slice(&m[off as usize..off as usize + buf.len()]);
        }
        fn store(&self, off: u64, data: &[u8]) {
            let mut m = self.0.lock().unwrap();
            m[off as usize..off as usize + data.len()].copy_from_slice(data);
        }
    }

    /// What a user of the mirror does on its own (a plain write stored in the image, every
    /// other access through the model) leaves the device exactly as the model alone would,
    /// access after access; and what it reads from the image is what the model answers.
    #[test]
    fn the_mirror_and_the_model_agree_on_every_access() {
        let mirror = std::sync::Arc::new(VecMirror(std::sync::Mutex::new(vec![
            0;
            BAR0_SIZE as usize
        ])));
        let mut alone = PciDevice::new();
        let mut mirrored = PciDevice::new();
        mirrored.set_mirror(mirror.clone());
        // A small deterministic generator: offsets all over BAR0, register-sized and odd
        // lengths, writes and reads.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..20_000 {
            let r = next();
            let len = [1usize, 2, 4, 8, 3, 16][(r % 6) as usize];
            let off = (r >> 8) % (BAR0_SIZE - len as u64 + 1);
            // Mostly registers, sometimes the buffer.
            let off = if r & 0x10000 == 0 { off % 0x40 } else { off };
            let write = (r >> 20) & 1 == 0;
            let mut data: Vec<u8> = (0..len).map(|i| (next() >> (i % 8)) as u8).collect();
            // Never START here: a transfer needs an owner to run it.
            if write && (off..off + len as u64).contains(&REG_CMD) {
                data[(REG_CMD - off) as usize] &= !(CMD_START as u8);
            }
            let mut a = data.clone();
            alone.rw(off, &mut a, write).unwrap();
            if write {
                match plain_write(off, &data) {
                    Some(bytes) => mirror.store(off, &bytes),
                    None => {
                        let mut b = data.clone();
                        mirrored.rw(off, &mut b, true).unwrap();
                    }
                }
            } else {
                let mut b = vec![0u8; len];
                mirror.load(off, &mut b);
                assert_eq!(a, b, "step {step}: read of {len} at 0x{off:x}");
            }
        }
        // The model under the mirror, once it has taken in the plain writes, is the model
        // alone.
        let mut a = vec![0u8; BAR0_SIZE as usize];
        let mut b = vec![0u8; BAR0_SIZE as usize];
        alone.rw(0, &mut a, false).unwrap();
        mirrored.rw(0, &mut b, false).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn config_identity_is_read_only() {
        let mut d = PciDevice::new();
        let mut id = [0u8; 4];
        d.rw(7 << REGION_SHIFT, &mut id, false).unwrap();
        assert_eq!(id, [0x34, 0x12, 0xe8, 0x11]);
        d.rw(7 << REGION_SHIFT, &mut [0xff; 4], true).unwrap();
        d.rw(7 << REGION_SHIFT, &mut id, false).unwrap();
        assert_eq!(id, [0x34, 0x12, 0xe8, 0x11]);
        // ROM BAR sizing reads back 0: no ROM.
        let mut rom = [0xffu8; 4];
        d.rw((7 << REGION_SHIFT) + 0x30, &mut [0, 0xf8, 0xff, 0xff], true)
            .unwrap();
        d.rw((7 << REGION_SHIFT) + 0x30, &mut rom, false).unwrap();
        assert_eq!(rom, [0; 4]);
    }

    #[test]
    fn bar0_round_trip_and_bounds() {
        let mut d = PciDevice::new();
        assert_eq!(d.rw(0x10, &mut [1, 2, 3, 4], true), Ok((4, None)));
        let mut b = [0u8; 4];
        assert_eq!(d.rw(0x10, &mut b, false), Ok((4, None)));
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(d.rw(BAR0_SIZE - 2, &mut b, false), Ok((2, None)));
        assert_eq!(d.rw(BAR0_SIZE, &mut b, false), Ok((0, None)));
        assert_eq!(d.rw(1 << REGION_SHIFT, &mut b, false), Err(Errno::EINVAL));
        assert_eq!(
            d.rw(region_offset(BAR2_INDEX), &mut b, false),
            Err(Errno::EINVAL)
        );
        d.reset();
        d.rw(0x10, &mut b, false).unwrap();
        assert_eq!(b, [0; 4]);
        // ID is read-only, LIVENESS inverts.
        d.rw(REG_ID, &mut [0; 4], true).unwrap();
        assert_eq!(d.reg32(REG_ID), DEVICE_ID_VALUE);
        d.rw(REG_LIVENESS, &mut 0x1234_5678u32.to_le_bytes(), true)
            .unwrap();
        assert_eq!(d.reg32(REG_LIVENESS), !0x1234_5678u32);
    }

    #[test]
    fn start_hands_back_a_request_and_complete_sets_status() {
        let mut d = PciDevice::new();
        d.rw(REG_DMA_SRC, &mut 0x40u64.to_le_bytes(), true).unwrap();
        d.rw(REG_DMA_DST, &mut 0x10_0000u64.to_le_bytes(), true)
            .unwrap();
        d.rw(REG_DMA_LEN, &mut 64u64.to_le_bytes(), true).unwrap();
        let cmd = CMD_START | CMD_TO_MEMORY | CMD_NO_SNOOP;
        let (_, req) = d.rw(REG_CMD, &mut cmd.to_le_bytes(), true).unwrap();
        let req = req.unwrap();
        assert_eq!(
            req,
            DmaRequest {
                iova: 0x10_0000,
                buffer_offset: 0x40,
                len: 64,
                to_memory: true,
                no_snoop: true
            }
        );
        assert_eq!(PciDevice::buffer_range(&req), Ok(0x40..0x80));
        assert_eq!(d.reg32(REG_STATUS), STATUS_BUSY);
        d.complete(Ok(()));
        assert_eq!(d.reg32(REG_STATUS), STATUS_DONE);
        assert_eq!(d.reg32(REG_CMD), CMD_TO_MEMORY | CMD_NO_SNOOP);
        assert_eq!(d.reg32(REG_DMA_COUNT), 1);
        d.complete(Err(TransferFault {
            iova: 0x2000,
            reason: FAULT_UNMAPPED,
        }));
        assert_eq!(d.reg32(REG_STATUS), STATUS_FAULT);
        assert_eq!(d.reg64(REG_FAULT_IOVA), 0x2000);
        assert_eq!(d.reg32(REG_FAULT_REASON), FAULT_UNMAPPED);
        // W1C.
        d.rw(REG_STATUS, &mut STATUS_FAULT.to_le_bytes(), true)
            .unwrap();
        assert_eq!(d.reg32(REG_STATUS), 0);
        // Buffer through BAR0.
        d.rw(BUFFER_OFFSET + 8, &mut [9, 8, 7], true).unwrap();
        assert_eq!(&d.buffer()[8..11], &[9, 8, 7]);
        let bad = DmaRequest {
            buffer_offset: BUFFER_SIZE - 1,
            len: 2,
            ..req
        };
        assert_eq!(
            PciDevice::buffer_range(&bad).unwrap_err().reason,
            FAULT_BAD_REQUEST
        );
    }

    #[test]
    fn infos() {
        let d = PciDevice::new();
        assert_eq!(d.info(), (3, 9, 5));
        assert_eq!(d.region_info(8), Err(Errno::EINVAL));
        assert_eq!(d.region_info(9), Err(Errno::EINVAL));
        assert_eq!(d.region_info(7).unwrap().1, 256);
        let (flags, size, off) = d.region_info(BAR2_INDEX).unwrap();
        assert_eq!(
            flags & b::VFIO_REGION_INFO_FLAG_MMAP,
            b::VFIO_REGION_INFO_FLAG_MMAP
        );
        assert!(size.is_power_of_two());
        assert_eq!(off, 2 << REGION_SHIFT);
        assert_eq!(
            d.region_info(0).unwrap().0 & b::VFIO_REGION_INFO_FLAG_MMAP,
            0
        );
        assert_eq!(d.irq_info(3), Err(Errno::EINVAL));
        assert_eq!(d.irq_info(0).unwrap(), (7, 1));
        assert_eq!(d.irq_info(5), Err(Errno::EINVAL));
    }
}
