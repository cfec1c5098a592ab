//! The open devices of a [`Vfio`]: names and groups, register access, and the DMA a device
//! does through its group's domain (or an iommufd HWPT), with the interrupts it raises.

use super::*;

impl<P: Platform> Vfio<P> {
    /// The name of an open device (`0000:00:04.0`).
    pub fn device_name(&self, dev: u32) -> Option<&str> {
        self.devices.get(&dev).map(|d| d.name.as_str())
    }

    /// The group an open device belongs to.
    pub fn device_group(&self, dev: u32) -> Option<u32> {
        self.devices.get(&dev).map(|d| d.group)
    }

    /// Keeps an open device's BAR0 image in `m` too (see [`crate::device::Bar0Mirror`]).
    pub fn set_device_mirror(
        &mut self,
        dev: u32,
        m: std::sync::Arc<dyn crate::device::Bar0Mirror>,
    ) -> Result<(), Errno> {
        let d = self.devices.get_mut(&dev).ok_or(Errno::EBADF)?;
        d.dev.set_mirror(m);
        Ok(())
    }

    /// The device model of an open device (inspection).
    pub fn device(&self, dev: u32) -> Option<&PciDevice> {
        self.devices.get(&dev).map(|d| &d.dev)
    }

    /// `pread`/`pwrite` on a device fd at file offset `pos`. A register write that starts a
    /// DMA transfer runs it before returning (the engine is synchronous).
    pub fn device_rw(
        &mut self,
        dev: u32,
        pos: u64,
        buf: &mut [u8],
        write: bool,
    ) -> Result<usize, Errno> {
        let d = self.devices.get_mut(&dev).ok_or(Errno::EBADF)?;
        let intx_was = d.dev.intx_enabled();
        let (n, req) = d.dev.rw(pos, buf, write)?;
        if let Some(req) = req {
            self.run_dma(dev, req);
        }
        // vfio-pci virtualizes COMMAND.INTX_DISABLE: setting it masks INTx, clearing it
        // unmasks, and a device that still asserts its line then interrupts again (as the
        // level it is), whoever masked it before.
        let intx_now = self.devices.get(&dev).map(|d| d.dev.intx_enabled());
        if let Some(now) = intx_now.filter(|now| *now != intx_was) {
            self.set_intx_masked(dev, !now);
        }
        Ok(n)
    }

    /// Masks or unmasks a device's INTx (`SET_IRQS` MASK/UNMASK, or the virtual
    /// `COMMAND.INTX_DISABLE`); unmasking a device that still asserts its line interrupts
    /// again, as a level does.
    pub(crate) fn set_intx_masked(&mut self, dev: u32, masked: bool) {
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        d.irqs.intx_masked = masked;
        if !masked {
            self.raise_irq(dev);
        }
    }

    /// The IOMMU domain the device is attached to (through its iommufd binding, or its
    /// group's container), and whether it enforces coherency.
    pub(super) fn device_domain(&self, dev: u32, group: u32) -> Option<(DomainId, bool)> {
        if let Some((i, idev)) = self.devices.get(&dev).and_then(|d| d.bound) {
            return self.iommufds.get(&i)?.ictx.device_domain(idev);
        }
        let cid = self.groups.get(&group)?.container?;
        let t = self.containers.get(&cid)?.c.iommu().ok()?;
        t.domains()
            .into_iter()
            .find(|d| d.groups.contains(&GroupId(group)))
            .map(|d| (d.id, d.coherent))
    }

    /// Runs one transfer through the group's domain, page by page; bytes before a fault are
    /// transferred, as on hardware. Traces `dma` on success, `fault` (source `dma`) otherwise.
    pub(super) fn run_dma(&mut self, dev: u32, req: DmaRequest) {
        let Some(d) = self.devices.get(&dev) else {
            return;
        };
        let (group, name) = (d.group, d.name.clone());
        let result = self.transfer(dev, group, &req);
        let dir = if req.to_memory { "write" } else { "read" };
        match result {
            Ok(coherent) => self.platform.trace(Event::Dma {
                device: name,
                iova: req.iova,
                len: req.len,
                dir,
                snoop: coherent || !req.no_snoop,
            }),
            Err(f) => {
                let why = match f.reason {
                    crate::device::FAULT_UNMAPPED => "unmapped iova",
                    crate::device::FAULT_PERMISSION if req.to_memory => "iova not writable",
                    crate::device::FAULT_PERMISSION => "iova not readable",
                    FAULT_NO_DOMAIN => "group in no iommu domain",
                    crate::device::FAULT_NO_BUS_MASTER => "bus mastering off",
                    _ => "bad request",
                };
                self.platform.trace(Event::Fault {
                    source: "dma".into(),
                    detail: format!(
                        "{name} group {group}: {dir} of {} bytes at iova 0x{:x}: {why} at 0x{:x}",
                        req.len, req.iova, f.iova
                    ),
                });
            }
        }
        let mut wants_irq = false;
        if let Some(d) = self.devices.get_mut(&dev) {
            wants_irq = d.dev.reg32(crate::device::REG_CMD) & crate::device::CMD_IRQ != 0;
            d.dev.complete(result.map(|_| ()));
        }
        if wants_irq {
            self.raise_irq(dev);
        }
    }

    /// The device's interrupt, if it asserts one: its MSI vector when the owner enabled MSI
    /// (an edge: once per transfer that asked for it), else INTx when enabled, unmasked and
    /// registered, which then masks itself (`VFIO_IRQ_INFO_AUTOMASKED`) until the owner
    /// unmasks it (and fires again then if the device still asserts it: INTx is a level).
    pub(crate) fn raise_irq(&mut self, dev: u32) {
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        if !d.dev.irq_asserted() {
            return;
        }
        let msix = crate::device::MSIX_VECTORS;
        let vector = d.dev.reg32(crate::device::REG_IRQ_VECTOR) % msix;
        let kind = match d.irqs.kind {
            Some(b::VFIO_PCI_MSIX_IRQ_INDEX) => match d.irqs.msix.get(vector as usize) {
                Some(Some(f)) => {
                    signal(f);
                    "msix"
                }
                _ => return,
            },
            Some(b::VFIO_PCI_MSI_IRQ_INDEX) => match &d.irqs.msi {
                Some(f) => {
                    signal(f);
                    "msi"
                }
                None => return,
            },
            Some(b::VFIO_PCI_INTX_IRQ_INDEX) => match (&d.irqs.intx, d.irqs.intx_masked) {
                (Some(f), false) if d.dev.intx_enabled() => {
                    signal(f);
                    d.irqs.intx_masked = true;
                    "intx"
                }
                _ => return,
            },
            _ => return,
        };
        let vector = if kind == "msix" { vector } else { 0 };
        let device = d.name.clone();
        self.platform.trace(Event::Irq {
            device,
            kind,
            vector,
        });
    }

    pub(super) fn transfer(
        &mut self,
        dev: u32,
        group: u32,
        req: &DmaRequest,
    ) -> Result<bool, TransferFault> {
        let range = PciDevice::buffer_range(req)?;
        if !self.devices.get(&dev).is_some_and(|d| d.dev.bus_master()) {
            return Err(TransferFault {
                iova: req.iova,
                reason: crate::device::FAULT_NO_BUS_MASTER,
            });
        }
        let no_domain = TransferFault {
            iova: req.iova,
            reason: FAULT_NO_DOMAIN,
        };
        let (domain, coherent) = self.device_domain(dev, group).ok_or(no_domain)?;
        let mut done = 0u64;
        while done < req.len {
            let iova = req.iova + done;
            let chunk = (PAGE_SIZE - iova % PAGE_SIZE).min(req.len - done) as usize;
            let at = range.start + done as usize;
            let Some(d) = self.devices.get_mut(&dev) else {
                return Err(no_domain);
            };
            let mut tmp = d.dev.buffer()[at..at + chunk].to_vec();
            self.platform
                .device_dma(domain, iova, &mut tmp, req.to_memory)
                .map_err(|e| TransferFault {
                    iova,
                    reason: match e {
                        type1_core::DmaFault::Permission => crate::device::FAULT_PERMISSION,
                        type1_core::DmaFault::Unmapped | type1_core::DmaFault::Unreachable => {
                            crate::device::FAULT_UNMAPPED
                        }
                    },
                })?;
            if !req.to_memory {
                if let Some(d) = self.devices.get_mut(&dev) {
                    d.dev.buffer_mut()[at..at + chunk].copy_from_slice(&tmp);
                }
            }
            done += chunk as u64;
        }
        Ok(coherent)
    }
}
