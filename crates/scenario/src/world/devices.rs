//! The world's side of device DMA lines and of faults and accesses armed inside the next
//! operation.

use super::*;

impl World {
    /// Executes an operation on devices: emulated devices' pins and `dma_rw`, DMA by physical
    /// devices.
    pub(super) fn exec_device(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::OpenDevice { container, device } => {
                let cid = self.cid(container)?;
                let Some(g) = self.sim().device_group(device) else {
                    return usage(format!("no device named {device:?}"));
                };
                if self.vfio.group_container(g.0) != Some(cid) {
                    return Err(errno(
                        Errno::EINVAL,
                        format!("group {g} of {device} is not in container {container}"),
                    ));
                }
                let id = self.vfio.open_device(g.0, device)?;
                self.devices.push((container.clone(), device.clone(), id));
                Ok(())
            }
            Op::Pin {
                container,
                device,
                iova,
                npage,
                prot,
            } => {
                let Some(dev) = self.sim().device_id(device) else {
                    return usage(format!("no device named {device:?}"));
                };
                if !self
                    .devices
                    .iter()
                    .any(|(c, d, _)| c == container && d == device)
                {
                    return Err(errno(Errno::EINVAL, format!("device {device} is not open")));
                }
                let group = self.sim().device_group(device).expect("device has a group");
                let (c, sim) = self.container_and_sim(container)?;
                c.iommu_mut()?.pin_pages(sim, group, *iova, *npage, *prot)?;
                sim.record_external_pin(dev, *iova, *npage);
                Ok(())
            }
            Op::Unpin {
                container,
                device,
                iova,
                npage,
            } => {
                let Some(dev) = self.vfio.platform.device_id(device) else {
                    return usage(format!("no device named {device:?}"));
                };
                let (c, sim) = self.container_and_sim(container)?;
                c.iommu_mut()?.unpin_pages(sim, *iova, *npage);
                sim.forget_external_pins(dev, *iova, *npage);
                Ok(())
            }
            Op::DmaRw {
                container,
                iova,
                write,
                len,
            } => {
                let (c, sim) = self.container_and_sim(container)?;
                let t = c.iommu_mut()?;
                let n = byte_len(*len);
                let mut buf = vec![write.unwrap_or(0); n];
                t.dma_rw(sim, *iova, &mut buf, write.is_some())?;
                if write.is_none() {
                    self.last_read = buf;
                }
                Ok(())
            }
            Op::Dma {
                device,
                write,
                iova,
                len,
                no_snoop,
            } => {
                let n = byte_len(*len);
                match write {
                    None => {
                        let data = self
                            .vfio
                            .platform
                            .dma_read(device, *iova, n, *no_snoop)
                            .map_err(|e| errno(Errno::EFAULT, e.to_string()))?;
                        self.last_read = data;
                    }
                    Some(b) => {
                        self.vfio
                            .platform
                            .dma_write(device, *iova, &vec![*b; n], *no_snoop)
                            .map_err(|e| errno(Errno::EFAULT, e.to_string()))?;
                    }
                }
                Ok(())
            }
            other => usage(format!("internal: {other:?} is not for exec_device")),
        }
    }

    /// Executes an operation on faults and accesses armed inside the next operation.
    pub(super) fn exec_fault(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::Fail { point, nth, next } => {
                self.vfio
                    .platform
                    .fail_nth(*point, *nth)
                    .map_err(StepError::Usage)?;
                self.fail_next |= *next;
                Ok(())
            }
            Op::DmaAfter {
                point,
                nth,
                device,
                write,
                iova,
                len,
                byte,
            } => {
                if self.vfio.platform.device_group(device).is_none() {
                    return usage(format!("no device named {device:?}"));
                }
                let access = Access::Dma {
                    device: device.clone(),
                    iova: *iova,
                    len: byte_len(*len),
                    write: write.then_some(*byte),
                };
                self.vfio
                    .platform
                    .access_after(*point, *nth, access)
                    .map_err(StepError::Usage)
            }
            Op::CpuAfter {
                point,
                nth,
                write,
                vaddr,
                len,
                byte,
            } => {
                let access = Access::Cpu {
                    mm: self.cur_mm()?,
                    vaddr: *vaddr,
                    len: byte_len(*len),
                    write: write.then_some(*byte),
                };
                self.vfio
                    .platform
                    .access_after(*point, *nth, access)
                    .map_err(StepError::Usage)
            }
            Op::RefuseUnpin { device, n } => {
                let Some(dev) = self.vfio.platform.device_id(device) else {
                    return usage(format!("no device named {device:?}"));
                };
                self.vfio.platform.refuse_unpin(dev, *n);
                Ok(())
            }
            other => usage(format!("internal: {other:?} is not for exec_fault")),
        }
    }
}
