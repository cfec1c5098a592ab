//! The emulated PCI device behind a device fd: device, region and IRQ info, config space and
//! a BAR0 of plain registers, reachable through `pread`/`pwrite` at the region offsets.
//!
//! The device answers what `vfio-pci` answers for a conventional PCI function with one 4 KiB
//! memory BAR and INTx (the smallest device QEMU 7.2's `vfio-pci` accepts, see
//! `qemu-client.md`): flags `PCI|RESET`, 9 regions, 5 IRQs. Region `i` lives at file offset
//! `i << 40` (`VFIO_PCI_INDEX_TO_OFFSET`). BAR0 is read-write scratch registers (no DMA engine
//! yet); it has no `MMAP` flag so every access comes through the emulation.

use type1_core::Errno;
use vfio_bindings::bindings::vfio as b;

/// Shift of `VFIO_PCI_INDEX_TO_OFFSET`.
pub const REGION_SHIFT: u32 = 40;
/// Size of BAR0.
pub const BAR0_SIZE: u64 = 0x1000;
/// Size of the config region.
pub const CONFIG_SIZE: u64 = 256;

/// One emulated PCI function.
#[derive(Clone, Debug)]
pub struct PciDevice {
    config: [u8; CONFIG_SIZE as usize],
    bar0: Vec<u8>,
}

impl Default for PciDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice {
    /// A fresh device: 1234:11e8, class 00ff00, BAR0 32-bit memory, interrupt pin A.
    pub fn new() -> PciDevice {
        let mut config = [0u8; CONFIG_SIZE as usize];
        config[0..2].copy_from_slice(&0x1234u16.to_le_bytes());
        config[2..4].copy_from_slice(&0x11e8u16.to_le_bytes());
        config[0x0a] = 0x00; // subclass
        config[0x0b] = 0xff; // class
        config[0x3d] = 1; // interrupt pin INTA
        PciDevice {
            config,
            bar0: vec![0; BAR0_SIZE as usize],
        }
    }

    /// `VFIO_DEVICE_RESET`: registers back to zero.
    pub fn reset(&mut self) {
        self.bar0.iter_mut().for_each(|b| *b = 0);
    }

    /// `(flags, num_regions, num_irqs)` of `VFIO_DEVICE_GET_INFO`.
    pub fn info(&self) -> (u32, u32, u32) {
        (
            b::VFIO_DEVICE_FLAGS_PCI | b::VFIO_DEVICE_FLAGS_RESET,
            b::VFIO_PCI_NUM_REGIONS,
            b::VFIO_PCI_NUM_IRQS,
        )
    }

    /// `(flags, size, offset)` of region `index`; EINVAL for VGA (absent) and beyond.
    pub fn region_info(&self, index: u32) -> Result<(u32, u64, u64), Errno> {
        let off = (index as u64) << REGION_SHIFT;
        let rw = b::VFIO_REGION_INFO_FLAG_READ | b::VFIO_REGION_INFO_FLAG_WRITE;
        match index {
            b::VFIO_PCI_BAR0_REGION_INDEX => Ok((rw, BAR0_SIZE, off)),
            1..=6 => Ok((0, 0, off)),
            b::VFIO_PCI_CONFIG_REGION_INDEX => Ok((rw, CONFIG_SIZE, off)),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `(flags, count)` of IRQ `index`; EINVAL for ERR (not PCIe) and beyond.
    pub fn irq_info(&self, index: u32) -> Result<(u32, u32), Errno> {
        let ev = b::VFIO_IRQ_INFO_EVENTFD;
        match index {
            b::VFIO_PCI_INTX_IRQ_INDEX => Ok((
                ev | b::VFIO_IRQ_INFO_MASKABLE | b::VFIO_IRQ_INFO_AUTOMASKED,
                1,
            )),
            b::VFIO_PCI_MSI_IRQ_INDEX => Ok((ev | b::VFIO_IRQ_INFO_NORESIZE, 0)),
            b::VFIO_PCI_MSIX_IRQ_INDEX => Ok((ev | b::VFIO_IRQ_INFO_NORESIZE, 0)),
            b::VFIO_PCI_REQ_IRQ_INDEX => Ok((ev | b::VFIO_IRQ_INFO_NORESIZE, 1)),
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_mut(&mut self, index: u64) -> Option<&mut [u8]> {
        match index {
            0 => Some(&mut self.bar0),
            7 => Some(&mut self.config),
            _ => None,
        }
    }

    /// `pread`/`pwrite` at file offset `pos`: returns the bytes transferred (short at the end of
    /// a region, 0 past it); EINVAL for a region that cannot be accessed.
    pub fn rw(&mut self, pos: u64, buf: &mut [u8], write: bool) -> Result<usize, Errno> {
        let index = pos >> REGION_SHIFT;
        let off = pos & ((1u64 << REGION_SHIFT) - 1);
        let is_config = index == 7;
        let Some(region) = self.region_mut(index) else {
            return Err(Errno::EINVAL);
        };
        let Ok(off) = usize::try_from(off) else {
            return Ok(0);
        };
        if off >= region.len() {
            return Ok(0);
        }
        let n = buf.len().min(region.len() - off);
        if write {
            for (i, byte) in buf[..n].iter().enumerate() {
                let at = off + i;
                // Identity, BARs, ROM and header type are read-only, as QEMU expects.
                if is_config
                    && (at < 0x04
                        || (0x08..0x0c).contains(&at)
                        || (0x0e..0x34).contains(&at)
                        || at == 0x3d)
                {
                    continue;
                }
                region[at] = *byte;
            }
        } else {
            buf[..n].copy_from_slice(&region[off..off + n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(d.rw(0x10, &mut [1, 2, 3, 4], true), Ok(4));
        let mut b = [0u8; 4];
        assert_eq!(d.rw(0x10, &mut b, false), Ok(4));
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(d.rw(BAR0_SIZE - 2, &mut b, false), Ok(2));
        assert_eq!(d.rw(BAR0_SIZE, &mut b, false), Ok(0));
        assert_eq!(d.rw(1 << REGION_SHIFT, &mut b, false), Err(Errno::EINVAL));
        d.reset();
        d.rw(0x10, &mut b, false).unwrap();
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn infos() {
        let d = PciDevice::new();
        assert_eq!(d.info(), (3, 9, 5));
        assert_eq!(d.region_info(8), Err(Errno::EINVAL));
        assert_eq!(d.region_info(9), Err(Errno::EINVAL));
        assert_eq!(d.region_info(7).unwrap().1, 256);
        assert_eq!(d.irq_info(3), Err(Errno::EINVAL));
        assert_eq!(d.irq_info(0).unwrap(), (7, 1));
        assert_eq!(d.irq_info(5), Err(Errno::EINVAL));
    }
}
