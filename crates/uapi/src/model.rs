//! [`Model`]: the PCI function behind a device fd, of either kind the emulated machine has:
//! the DMA engine ([`crate::device::PciDevice`]) or the NVMe controller ([`crate::nvme::Nvme`]).
//! What vfio-pci answers about a function (info, regions, IRQs, config space, reset) is asked
//! of the model; `Vfio` runs what a register write starts (a transfer, or the controller's
//! queues) and delivers the interrupts.

use type1_core::Errno;

use crate::device::PciDevice;
use crate::nvme::Nvme;

/// One emulated PCI function.
#[derive(Clone, Debug)]
pub enum Model {
    /// The DMA engine (`docs/device.md`, BAR0).
    Dma(PciDevice),
    /// The NVMe controller (`docs/device.md`, The NVMe controller).
    Nvme(Nvme),
}

impl Model {
    /// `(flags, num_regions, num_irqs)` of `VFIO_DEVICE_GET_INFO`.
    pub fn info(&self) -> (u32, u32, u32) {
        match self {
            Model::Dma(d) => d.info(),
            Model::Nvme(n) => n.info(),
        }
    }

    /// `(flags, size, offset)` of region `index`.
    pub fn region_info(&self, index: u32) -> Result<(u32, u64, u64), Errno> {
        match self {
            Model::Dma(d) => d.region_info(index),
            Model::Nvme(n) => n.region_info(index),
        }
    }

    /// `(flags, count)` of IRQ `index`.
    pub fn irq_info(&self, index: u32) -> Result<(u32, u32), Errno> {
        match self {
            Model::Dma(d) => d.irq_info(index),
            Model::Nvme(n) => n.irq_info(index),
        }
    }

    /// `VFIO_DEVICE_RESET`.
    pub fn reset(&mut self) {
        match self {
            Model::Dma(d) => d.reset(),
            Model::Nvme(n) => n.reset(),
        }
    }

    /// The configuration space as it is now.
    pub fn config_space(&self) -> Vec<u8> {
        match self {
            Model::Dma(d) => d.config_space(),
            Model::Nvme(n) => n.config_space(),
        }
    }

    /// Whether bus mastering is on.
    pub fn bus_master(&self) -> bool {
        match self {
            Model::Dma(d) => d.bus_master(),
            Model::Nvme(n) => n.bus_master(),
        }
    }

    /// Whether INTx may be signalled (`COMMAND.INTX_DISABLE` clear).
    pub fn intx_enabled(&self) -> bool {
        match self {
            Model::Dma(d) => d.intx_enabled(),
            Model::Nvme(n) => n.intx_enabled(),
        }
    }

    /// Whether the function asserts its pin-based interrupt (a level).
    pub fn irq_asserted(&self) -> bool {
        match self {
            Model::Dma(d) => d.irq_asserted(),
            Model::Nvme(n) => n.irq_asserted(),
        }
    }

    /// The DMA engine, if this is one.
    pub fn dma_engine(&self) -> Option<&PciDevice> {
        match self {
            Model::Dma(d) => Some(d),
            Model::Nvme(_) => None,
        }
    }

    /// The NVMe controller, if this is one.
    pub fn nvme(&self) -> Option<&Nvme> {
        match self {
            Model::Nvme(n) => Some(n),
            Model::Dma(_) => None,
        }
    }
}
