//! What every emulated PCI function behind a device fd shares, whichever kind it is (the DMA
//! engine of [`crate::device`] or the NVMe controller of [`crate::nvme`]): vfio-pci's answer to
//! `VFIO_DEVICE_GET_INFO`, its IRQ indexes, and the rules for writes to the configuration space
//! (with the MSI and MSI-X capabilities where both kinds put them).

use type1_core::Errno;
use vfio_bindings::bindings::vfio as b;

/// Config space `COMMAND` register offset.
pub const PCI_COMMAND: usize = 0x04;
/// `COMMAND.BME`: bus master enable.
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// `COMMAND.INTX_DISABLE`: the function may not assert INTx.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// Offset of the MSI capability (the first): one vector, 64-bit addresses.
pub const MSI_CAP: usize = 0x50;
/// Offset of the MSI-X capability (after MSI); its vectors, table and PBA are the function's.
pub const MSIX_CAP: usize = 0x70;

/// `(flags, num_regions, num_irqs)` of `VFIO_DEVICE_GET_INFO` for every emulated function:
/// a PCI function that can be reset, with vfio-pci's regions and IRQ indexes.
pub fn pci_device_info() -> (u32, u32, u32) {
    (
        b::VFIO_DEVICE_FLAGS_PCI | b::VFIO_DEVICE_FLAGS_RESET,
        b::VFIO_PCI_NUM_REGIONS,
        b::VFIO_PCI_NUM_IRQS,
    )
}

/// `(flags, count)` of IRQ `index` of an emulated function with `msix` MSI-X vectors: INTx
/// (maskable, automasked), one MSI vector, the MSI-X vectors, the request interrupt; EINVAL for
/// ERR (not PCIe) and beyond.
pub fn pci_irq_info(index: u32, msix: u32) -> Result<(u32, u32), Errno> {
    let ev = b::VFIO_IRQ_INFO_EVENTFD;
    match index {
        b::VFIO_PCI_INTX_IRQ_INDEX => Ok((
            ev | b::VFIO_IRQ_INFO_MASKABLE | b::VFIO_IRQ_INFO_AUTOMASKED,
            1,
        )),
        b::VFIO_PCI_MSI_IRQ_INDEX => Ok((ev | b::VFIO_IRQ_INFO_NORESIZE, 1)),
        b::VFIO_PCI_MSIX_IRQ_INDEX => Ok((ev | b::VFIO_IRQ_INFO_NORESIZE, msix)),
        b::VFIO_PCI_REQ_IRQ_INDEX => Ok((ev | b::VFIO_IRQ_INFO_NORESIZE, 1)),
        _ => Err(Errno::EINVAL),
    }
}

/// A write of `byte` at offset `at` of an emulated function's configuration space, with the
/// MSI capability at [`MSI_CAP`] and MSI-X at [`MSIX_CAP`]: identity, status, BARs, ROM, header
/// type, the capability pointer and the capabilities' headers are read-only, as QEMU expects;
/// of MSI's message control only the enable bit is writable, of MSI-X's the function mask and
/// enable bits; MSI-X's table and PBA locations are read-only.
pub fn config_write_byte(config: &mut [u8], at: usize, byte: u8) {
    if at < 0x04
        || (0x06..0x0c).contains(&at)
        || (0x0e..0x35).contains(&at)
        || at == 0x3d
        || at == MSI_CAP
        || at == MSI_CAP + 1
        || at == MSI_CAP + 3
        || (MSIX_CAP..MSIX_CAP + 3).contains(&at)
        || (MSIX_CAP + 4..MSIX_CAP + 12).contains(&at)
        || at >= config.len()
    {
        return;
    }
    config[at] = match at {
        a if a == MSI_CAP + 2 => (config[at] & !1) | (byte & 1),
        a if a == MSIX_CAP + 3 => (config[at] & !0xc0) | (byte & 0xc0),
        _ => byte,
    };
}

fn command(config: &[u8]) -> u16 {
    u16::from_le_bytes([config[PCI_COMMAND], config[PCI_COMMAND + 1]])
}

/// Whether bus mastering is on (`COMMAND.BME`): the function may reach memory.
pub fn bus_master(config: &[u8]) -> bool {
    command(config) & PCI_COMMAND_MASTER != 0
}

/// Whether INTx may be signalled (`COMMAND.INTX_DISABLE` clear).
pub fn intx_enabled(config: &[u8]) -> bool {
    command(config) & PCI_COMMAND_INTX_DISABLE == 0
}

/// What a function-level reset does to the configuration space: `COMMAND` cleared (no bus
/// mastering), MSI and MSI-X off.
pub fn reset_config(config: &mut [u8]) {
    config[PCI_COMMAND] = 0;
    config[PCI_COMMAND + 1] = 0;
    config[MSI_CAP + 2] &= !1;
    config[MSIX_CAP + 3] &= !0xc0;
}
