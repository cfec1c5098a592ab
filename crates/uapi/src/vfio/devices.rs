//! The open devices of a [`Vfio`]: names and groups, register access, and the DMA a device
//! does through its group's domain (or an iommufd HWPT), with the interrupts it raises.

use super::*;
use crate::nvme::NvmeBus;
use type1_core::DmaFault;

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
        match &mut d.dev {
            Model::Dma(p) => {
                p.set_mirror(m);
                Ok(())
            }
            // Every access to the controller's registers acts: there is nothing to mirror.
            Model::Nvme(_) => Err(Errno::EINVAL),
        }
    }

    /// The device model of an open device (inspection).
    pub fn device(&self, dev: u32) -> Option<&Model> {
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
        let n = match &mut d.dev {
            Model::Dma(p) => {
                let (n, req) = p.rw(pos, buf, write)?;
                if let Some(req) = req {
                    self.run_dma(dev, req);
                }
                n
            }
            Model::Nvme(c) => {
                let (n, rang) = c.rw(pos, buf, write)?;
                if rang {
                    self.run_nvme(dev);
                }
                n
            }
        };
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
        if let Some(Model::Dma(p)) = self.devices.get_mut(&dev).map(|d| &mut d.dev) {
            wants_irq = p.reg32(crate::device::REG_CMD) & crate::device::CMD_IRQ != 0;
            p.complete(result.map(|_| ()));
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
        let vector = match &d.dev {
            Model::Dma(p) if p.irq_asserted() => {
                p.reg32(crate::device::REG_IRQ_VECTOR) % crate::device::MSIX_VECTORS
            }
            // The controller's pin-based interrupt, fired again on unmask while asserted.
            Model::Nvme(c) if c.irq_asserted() => 0,
            _ => return,
        };
        self.raise_vector(dev, vector);
    }

    /// Signals interrupt `vector` of the device by the index the owner enabled: MSI-X vector
    /// `vector`, the one MSI vector, or INTx (when enabled, unmasked and registered; it then
    /// masks itself until the owner unmasks it).
    pub(crate) fn raise_vector(&mut self, dev: u32, vector: u32) {
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
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
        let range = crate::device::PciDevice::buffer_range(req)?;
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
            let Some(Model::Dma(p)) = self.devices.get_mut(&dev).map(|d| &mut d.dev) else {
                return Err(no_domain);
            };
            let mut tmp = p.buffer()[at..at + chunk].to_vec();
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
                if let Some(Model::Dma(p)) = self.devices.get_mut(&dev).map(|d| &mut d.dev) {
                    p.buffer_mut()[at..at + chunk].copy_from_slice(&tmp);
                }
            }
            done += chunk as u64;
        }
        Ok(coherent)
    }
}

/// The NVMe controller's view of the machine: DMA through the function's IOMMU domain (the
/// platform seam's `DeviceDma`, no-snoop requests as a drive's data transfers may be), and
/// the interrupts and notes it produced, delivered once the queues have run.
struct ControllerBus<'a, P: Platform> {
    platform: &'a mut P,
    /// The domain and whether it enforces coherency; `None`: the group is in none.
    domain: Option<(DomainId, bool)>,
    name: &'a str,
    irqs: Vec<u16>,
    /// Bytes moved to and from memory, for one `dma` trace event per direction.
    moved: [(u64, u64); 2],
}

impl<P: Platform> ControllerBus<'_, P> {
    /// Books the bytes of the segments a vectored transfer moved, and traces the one that
    /// faulted.
    fn settle(
        &mut self,
        segs: &[(u64, usize)],
        r: Result<(), (usize, DmaFault)>,
        to_memory: bool,
    ) -> Result<(), DmaFault> {
        let done = match r {
            Ok(()) => segs.len(),
            Err((i, _)) => i,
        };
        let bytes: usize = segs[..done].iter().map(|s| s.1).sum();
        if bytes > 0 {
            let m = &mut self.moved[usize::from(to_memory)];
            if m.1 == 0 {
                m.0 = segs[0].0;
            }
            m.1 += bytes as u64;
        }
        r.map_err(|(i, f)| {
            let (iova, len) = segs.get(i).copied().unwrap_or_default();
            self.fault(iova, len, to_memory, f);
            f
        })
    }

    fn fault(&mut self, iova: u64, len: usize, to_memory: bool, f: DmaFault) {
        self.platform.trace(Event::Fault {
            source: "dma".into(),
            detail: format!(
                "{}: nvme {} of {len} bytes at iova 0x{iova:x}: {f}",
                self.name,
                if to_memory { "write" } else { "read" },
            ),
        });
    }
}

impl<P: Platform> NvmeBus for ControllerBus<'_, P> {
    fn dma(&mut self, iova: u64, buf: &mut [u8], to_memory: bool) -> Result<(), DmaFault> {
        let r = match self.domain {
            Some((d, _)) => self.platform.device_dma(d, iova, buf, to_memory),
            None => Err(DmaFault::Unreachable),
        };
        match &r {
            Ok(()) => {
                let m = &mut self.moved[usize::from(to_memory)];
                if m.1 == 0 {
                    m.0 = iova;
                }
                m.1 += buf.len() as u64;
            }
            Err(f) => self.fault(iova, buf.len(), to_memory, *f),
        }
        r
    }

    fn dma_vec(
        &mut self,
        segs: &[(u64, usize)],
        buf: &mut [u8],
        to_memory: bool,
    ) -> Result<(), DmaFault> {
        let Some((d, _)) = self.domain else {
            return self.settle(segs, Err((0, DmaFault::Unreachable)), to_memory);
        };
        let r = self.platform.device_dma_vec(d, segs, buf, to_memory);
        self.settle(segs, r, to_memory)
    }

    fn dma_file(
        &mut self,
        segs: &[(u64, usize)],
        fd: i32,
        off: u64,
        to_memory: bool,
    ) -> Option<Result<(), DmaFault>> {
        let (d, _) = self.domain?;
        let r = self.platform.device_dma_file(d, segs, fd, off, to_memory)?;
        Some(self.settle(segs, r, to_memory))
    }

    fn interrupt(&mut self, vector: u16) {
        if !self.irqs.contains(&vector) {
            self.irqs.push(vector);
        }
    }

    fn note(&mut self, what: String) {
        self.platform.trace(Event::Fault {
            source: "nvme".into(),
            detail: format!("{}: {what}", self.name),
        });
    }
}

impl<P: Platform> Vfio<P> {
    /// Runs the NVMe controller of device `dev` after a doorbell (or an enable): its queues
    /// through its IOMMU domain, then the interrupts it asked for. Traces one `dma` event per
    /// direction for the bytes moved, `fault` events for refused accesses.
    fn run_nvme(&mut self, dev: u32) {
        let Some(group) = self.devices.get(&dev).map(|d| d.group) else {
            return;
        };
        let domain = self.device_domain(dev, group);
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        let Model::Nvme(c) = &mut d.dev else {
            return;
        };
        let mut bus = ControllerBus {
            platform: &mut self.platform,
            domain,
            name: &d.name,
            irqs: Vec::new(),
            moved: [(0, 0); 2],
        };
        c.process(&mut bus);
        let (irqs, moved) = (bus.irqs, bus.moved);
        let coherent = domain.is_some_and(|(_, c)| c);
        for (i, (iova, len)) in moved.into_iter().enumerate() {
            if len > 0 {
                self.platform.trace(Event::Dma {
                    device: d.name.clone(),
                    iova,
                    len,
                    dir: if i == 1 { "write" } else { "read" },
                    snoop: coherent,
                });
            }
        }
        for v in irqs {
            self.raise_vector(dev, u32::from(v));
        }
    }
}
