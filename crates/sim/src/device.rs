//! Devices and their DMA, snooped or not, plus the external pins of emulated devices.
//!
//! A device DMA translates through the domain its group is attached to. It snoops the CPU
//! caches unless it sets no-snoop *and* the domain does not enforce coherency:
//! * a snooped read sees the coherent view; a snooped write writes back and drops the lines
//!   it touches, then writes RAM;
//! * a no-snoop read returns RAM; a no-snoop write writes RAM and leaves cache lines stale.
//!
//! A no-snoop read of a line whose cached copy differs from RAM, where RAM was last written in
//! an earlier allocation generation of the frame, is a leak of the earlier owner's data: the
//! sim records a `stale_read` violation and counts the bytes in [`crate::Stats::leaked_bytes`].
//! MMIO pfns read and write a separate backing store.

use std::collections::BTreeMap;

use type1_core::{DeviceId, DmaFault, Event, GroupId, PAGE_SHIFT, PAGE_SIZE};

use crate::{
    memory::{LINES_PER_PAGE, LINE_SIZE},
    Sim, ViolationKind,
};

/// A device of the machine.
#[derive(Clone, Debug)]
pub(crate) struct Device {
    pub name: String,
    pub group: GroupId,
    pub id: DeviceId,
}

/// A device DMA of the machine that did not happen: a device name no device has, or the
/// seam's one fault type ([`DmaFault`]) with the device and the IOVA it faulted at, for the
/// trace and for scenario messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceDmaError {
    /// No device has this name (a scenario's mistake, not a DMA fault).
    #[error("no device named {0:?}")]
    NoDevice(String),
    /// The IOMMU refused the access.
    #[error("device {device}: {} at iova 0x{iova:x}: {fault}", if *write { "write" } else { "read" })]
    Fault {
        /// Device name.
        device: String,
        /// The faulting IOVA (the first of the transfer when the device reaches no domain).
        iova: u64,
        /// A write to memory (else a read).
        write: bool,
        /// Unmapped (no translation, or the range wraps), permission (the entry's protection
        /// forbids the access) or unreachable (the device's group is in no domain).
        fault: DmaFault,
    },
}

impl Sim {
    /// The id of a device, by name (every device has one; emulated devices use it with the
    /// engine's `register_device`).
    pub fn device_id(&self, name: &str) -> Option<DeviceId> {
        self.hw
            .devices
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.id)
    }

    /// The name of a device whose group is attached to `domain`, if any.
    pub(crate) fn device_of_domain(&self, domain: type1_core::DomainId) -> Option<String> {
        let groups = &self.hw.domains.get(&domain)?.groups;
        self.hw
            .devices
            .iter()
            .find(|d| groups.contains(&d.group))
            .map(|d| d.name.clone())
    }

    /// The name of a device id.
    pub fn device_name(&self, id: DeviceId) -> Option<&str> {
        self.hw
            .devices
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.name.as_str())
    }

    /// The group of a device.
    pub fn device_group(&self, name: &str) -> Option<GroupId> {
        self.hw
            .devices
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.group)
    }

    /// Translates a DMA into `(pa, len)` segments, or the fault.
    fn dma_translate(
        &self,
        device: &str,
        iova: u64,
        len: usize,
        write: bool,
    ) -> Result<(Vec<(u64, usize)>, bool), DeviceDmaError> {
        let fault = |iova: u64, fault: DmaFault| DeviceDmaError::Fault {
            device: device.into(),
            iova,
            write,
            fault,
        };
        let dev = self
            .hw
            .devices
            .iter()
            .find(|d| d.name == device)
            .ok_or_else(|| DeviceDmaError::NoDevice(device.into()))?;
        let dom_id = self
            .hw
            .groups
            .get(&dev.group)
            .and_then(|g| g.attached)
            .ok_or_else(|| fault(iova, DmaFault::Unreachable))?;
        let dom = self
            .hw
            .domains
            .get(&dom_id)
            .ok_or_else(|| fault(iova, DmaFault::Unreachable))?;
        if len == 0 {
            return Ok((Vec::new(), dom.enforcing));
        }
        iova.checked_add(len as u64 - 1)
            .ok_or_else(|| fault(iova, DmaFault::Unmapped))?;
        let mut segs = Vec::new();
        let mut done = 0usize;
        while done < len {
            let a = iova + done as u64;
            let n = ((PAGE_SIZE - a % PAGE_SIZE) as usize).min(len - done);
            let pte = dom
                .pt
                .get(&(a >> PAGE_SHIFT))
                .ok_or_else(|| fault(a, DmaFault::Unmapped))?;
            let allowed = if write { pte.prot.write } else { pte.prot.read };
            if !allowed {
                return Err(fault(a, DmaFault::Permission));
            }
            segs.push(((pte.pfn << PAGE_SHIFT) | (a % PAGE_SIZE), n));
            done += n;
        }
        Ok((segs, dom.enforcing))
    }

    fn dma_fault(&mut self, f: DeviceDmaError) -> DeviceDmaError {
        self.obs.stats.dma_faults += 1;
        self.record(Event::Fault {
            source: "dma".into(),
            detail: f.to_string(),
        });
        f
    }

    /// A device reads `len` bytes at `iova` (device-to-host direction is [`Self::dma_write`]).
    /// `no_snoop` is the request's no-snoop attribute; a coherency-enforcing domain overrides it.
    pub fn dma_read(
        &mut self,
        device: &str,
        iova: u64,
        len: usize,
        no_snoop: bool,
    ) -> Result<Vec<u8>, DeviceDmaError> {
        let t = self.dma_translate(device, iova, len, false);
        let snoop = !no_snoop || t.as_ref().is_ok_and(|(_, e)| *e);
        self.record(Event::Dma {
            device: device.into(),
            iova,
            len: len as u64,
            dir: "read",
            snoop,
        });
        let (segs, _) = t.map_err(|f| self.dma_fault(f))?;
        self.obs.stats.dma_reads += 1;
        let mut out = vec![0u8; len];
        let mut stale = 0u64;
        let mut done = 0usize;
        for (pa, n) in segs {
            let buf = &mut out[done..done + n];
            if !self.is_ram(pa >> PAGE_SHIFT) {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = self.mmio_byte(pa + i as u64);
                }
            } else if snoop {
                self.coherent_read(pa, buf);
            } else {
                self.ram_read(pa, buf);
                stale += self.stale_bytes(pa, buf);
            }
            done += n;
        }
        if stale > 0 {
            self.obs.stats.leaked_bytes += stale;
            self.violate_at(
                ViolationKind::StaleRead,
                None,
                Some(iova),
                format!("device {device} read {stale} bytes of stale host data at iova 0x{iova:x} (no-snoop read of {len} bytes)"),
            );
        }
        Ok(out)
    }

    /// Bytes of `ram` (just read from RAM at `pa`, inside one page) that differ from a present
    /// cache line while RAM predates the frame's current allocation.
    fn stale_bytes(&self, pa: u64, ram: &[u8]) -> u64 {
        let pfn = pa >> PAGE_SHIFT;
        let f = &self.mem.frames[pfn as usize];
        let mut n = 0;
        let mut k = 0;
        while k < ram.len() {
            let a = pa + k as u64;
            let off = (a % LINE_SIZE) as usize;
            let m = (LINE_SIZE as usize - off).min(ram.len() - k);
            let line = a / LINE_SIZE;
            let li = (line % LINES_PER_PAGE as u64) as usize;
            let line_gen = f.data.as_ref().map_or(0, |d| d.line_gen[li]);
            if let Some(l) = self.cache.get(line).filter(|_| line_gen < f.gen) {
                let differ = l.data[off..off + m]
                    .iter()
                    .zip(&ram[k..k + m])
                    .filter(|(c, r)| c != r)
                    .count();
                n += differ as u64;
            }
            k += m;
        }
        n
    }

    /// A device writes `data` at `iova`.
    pub fn dma_write(
        &mut self,
        device: &str,
        iova: u64,
        data: &[u8],
        no_snoop: bool,
    ) -> Result<(), DeviceDmaError> {
        let t = self.dma_translate(device, iova, data.len(), true);
        let snoop = !no_snoop || t.as_ref().is_ok_and(|(_, e)| *e);
        self.record(Event::Dma {
            device: device.into(),
            iova,
            len: data.len() as u64,
            dir: "write",
            snoop,
        });
        let (segs, _) = t.map_err(|f| self.dma_fault(f))?;
        self.obs.stats.dma_writes += 1;
        let mut done = 0usize;
        for (pa, n) in segs {
            let src = &data[done..done + n];
            if !self.is_ram(pa >> PAGE_SHIFT) {
                let off = (pa % PAGE_SIZE) as usize;
                self.mmio_page_mut(pa >> PAGE_SHIFT)[off..off + n].copy_from_slice(src);
            } else {
                let mut k = 0;
                while k < n {
                    let a = pa + k as u64;
                    let off = (a % LINE_SIZE) as usize;
                    let m = (LINE_SIZE as usize - off).min(n - k);
                    let line = a / LINE_SIZE;
                    if snoop {
                        self.writeback_line(line);
                        self.cache.remove(line);
                    }
                    self.ram_write(line, off, &src[k..k + m]);
                    k += m;
                }
            }
            done += n;
        }
        Ok(())
    }

    // ---- external pins of emulated devices ------------------------------------------------

    /// Tells the sim that `device` holds one more external pin on each of `npages` pages from
    /// `iova` (after a successful engine `pin_pages`).
    pub fn record_external_pin(&mut self, device: DeviceId, iova: u64, npages: u64) {
        let m = self.hw.ext_pins.entry(device).or_default();
        for i in 0..npages {
            let Some(a) = iova.checked_add(i << PAGE_SHIFT) else {
                break;
            };
            *m.entry(a & !(PAGE_SIZE - 1)).or_insert(0) += 1;
        }
    }

    /// Tells the sim that `device` dropped one external pin on each of `npages` pages.
    pub fn forget_external_pins(&mut self, device: DeviceId, iova: u64, npages: u64) {
        let Some(m) = self.hw.ext_pins.get_mut(&device) else {
            return;
        };
        for i in 0..npages {
            let Some(a) = iova.checked_add(i << PAGE_SHIFT) else {
                break;
            };
            let a = a & !(PAGE_SIZE - 1);
            if let Some(c) = m.get_mut(&a) {
                *c -= 1;
                if *c == 0 {
                    m.remove(&a);
                }
            }
        }
    }

    /// External pins a device holds: `(iova, count)`.
    pub fn external_pins(&self, device: DeviceId) -> Vec<(u64, u32)> {
        self.hw
            .ext_pins
            .get(&device)
            .map(|m| m.iter().map(|(a, c)| (*a, *c)).collect())
            .unwrap_or_default()
    }

    /// The `dma_unmap` callback: the device gives up every external pin in the range; the
    /// answer lists `(iova, npages)` runs, one run per pin (a page pinned twice appears twice).
    pub(crate) fn do_notify_dma_unmap(
        &mut self,
        device: DeviceId,
        iova: u64,
        size: u64,
    ) -> Vec<(u64, u64)> {
        self.obs.stats.dma_unmap_notifications += 1;
        if self.faults.refuses_unpin(device) {
            let name = self.device_name(device).unwrap_or("?").to_string();
            self.record(Event::Fault {
                source: "dma_unmap".into(),
                detail: format!("{name} ignores dma_unmap 0x{iova:x}+0x{size:x}"),
            });
            return Vec::new();
        }
        let Some(m) = self.hw.ext_pins.get_mut(&device) else {
            return Vec::new();
        };
        let last = if size == 0 {
            iova
        } else {
            iova.saturating_add(size - 1)
        };
        let hit: BTreeMap<u64, u32> = m
            .range(iova & !(PAGE_SIZE - 1)..=last)
            .map(|(a, c)| (*a, *c))
            .collect();
        for a in hit.keys() {
            m.remove(a);
        }
        let mut runs = Vec::new();
        let max = hit.values().copied().max().unwrap_or(0);
        for level in 1..=max {
            let mut cur: Option<(u64, u64)> = None;
            for (&a, _) in hit.iter().filter(|(_, c)| **c >= level) {
                cur = match cur {
                    Some((s, n)) if s + (n << PAGE_SHIFT) == a => Some((s, n + 1)),
                    Some(r) => {
                        runs.push(r);
                        Some((a, 1))
                    }
                    None => Some((a, 1)),
                };
            }
            runs.extend(cur);
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineDesc;
    use type1_core::{GroupId as G, Prot};

    /// A frame last owned by a process that wrote 0x5e to it, now reallocated (zeroed through
    /// the cache) to a second process, pinned, and mapped into a domain of `group`. Protocol
    /// violations of the set-up itself (an unflushed map into a non-coherent domain) are
    /// drained; `flush` flushes the frame before the map.
    fn reused_frame_mapped(group: u32, enforce: bool) -> (Sim, u64) {
        reused_frame_mapped_flushed(group, enforce, false)
    }

    fn reused_frame_mapped_flushed(group: u32, enforce: bool, flush: bool) -> (Sim, u64) {
        let mut s = Sim::new(MachineDesc::default()).unwrap();
        let a = s.create_process("victim");
        s.mmap_anon(a, 0x1000, PAGE_SIZE, true).unwrap();
        s.cpu_fill(a, 0x1000, PAGE_SIZE, 0x5e).unwrap();
        s.writeback_all();
        s.exit_process(a);
        let b = s.create_process("guest");
        s.mmap_anon(b, 0x1000, PAGE_SIZE, true).unwrap();
        let pfn = s.do_pin(b, 0x1000, 1, true).unwrap()[0].pfn;
        let d = s.do_domain_alloc(G(group)).unwrap();
        s.do_attach(d, G(group)).unwrap();
        if enforce {
            s.do_enforce(d);
        }
        if flush {
            s.do_flush_cache(pfn << PAGE_SHIFT, PAGE_SIZE);
        }
        s.do_iommu_map(d, 0x100000, pfn << PAGE_SHIFT, PAGE_SIZE, Prot::RW)
            .unwrap();
        let setup = s.take_new_violations();
        let expected: &[&str] = if flush || group == 0 {
            &[]
        } else {
            &["missing_map_flush"]
        };
        assert_eq!(
            setup.iter().map(|v| v.kind.as_str()).collect::<Vec<_>>(),
            expected
        );
        (s, pfn)
    }

    #[test]
    fn no_snoop_read_in_noncoherent_domain_leaks_old_bytes() {
        let (mut s, _) = reused_frame_mapped(1, true);
        let v = s.dma_read("dev1", 0x100000, 64, true).unwrap();
        assert_eq!(v, vec![0x5e; 64]);
        let viol = s.take_new_violations();
        assert_eq!(viol.len(), 1);
        assert_eq!(viol[0].kind, "stale_read");
        assert_eq!(s.stats().leaked_bytes, 64);
        // A snooped read sees the zeros and leaks nothing.
        assert_eq!(
            s.dma_read("dev1", 0x100000, 64, false).unwrap(),
            vec![0; 64]
        );
        assert!(s.take_new_violations().is_empty());
    }

    #[test]
    fn no_snoop_read_in_coherent_domain_is_snooped() {
        let (mut s, _) = reused_frame_mapped(0, true);
        assert_eq!(s.dma_read("dev0", 0x100000, 64, true).unwrap(), vec![0; 64]);
        assert!(s.violations().is_empty());
        assert_eq!(s.stats().leaked_bytes, 0);
    }

    #[test]
    fn flush_before_exposure_prevents_the_leak() {
        let (mut s, _) = reused_frame_mapped_flushed(1, false, true);
        assert_eq!(s.dma_read("dev1", 0x100000, 64, true).unwrap(), vec![0; 64]);
        assert!(s.violations().is_empty());
    }

    #[test]
    fn unpin_of_exposed_frame_with_dirty_lines_is_flagged() {
        let (mut s, pfn) = reused_frame_mapped(1, false);
        let d = s.group_domain(G(1)).unwrap();
        assert!(s.frame_exposed(pfn));
        assert_eq!(s.do_iommu_unmap(d, 0x100000, PAGE_SIZE), PAGE_SIZE);
        s.do_iotlb_sync(d);
        s.do_unpin(pfn);
        let v = s.take_new_violations();
        assert_eq!(
            v.iter().map(|v| v.kind.as_str()).collect::<Vec<_>>(),
            ["missing_unpin_flush", "unflushed_unpin"]
        );
        assert_eq!(s.stats().stale_after_unpin_bytes, PAGE_SIZE);
        assert!(!s.frame_exposed(pfn));
    }

    #[test]
    fn unpin_before_iotlb_sync_is_flagged_and_no_snoop_write_leaves_stale_line() {
        let (mut s, pfn) = reused_frame_mapped(0, true);
        let d = s.group_domain(G(0)).unwrap();
        s.dma_write("dev0", 0x100000, &[7; 8], true).unwrap();
        // Enforcing domain: the write snooped, so the dirty zero line was written back first.
        let mut b = [0u8; 9];
        s.coherent_read(pfn << PAGE_SHIFT, &mut b);
        assert_eq!(b, [7, 7, 7, 7, 7, 7, 7, 7, 0]);
        s.do_iommu_unmap(d, 0x100000, PAGE_SIZE);
        s.do_unpin(pfn);
        assert_eq!(s.take_new_violations()[0].kind, "unpin_while_mapped");
        assert!(s.dma_read("dev0", 0x100000, 1, false).is_err(), "unmapped");
        assert!(s.dma_read("nodev", 0, 1, false).is_err());
    }

    #[test]
    fn notify_returns_one_run_per_pin() {
        let mut s = Sim::new(MachineDesc::default()).unwrap();
        let id = s.device_id("mdev0").unwrap();
        s.record_external_pin(id, 0x1000, 3);
        s.record_external_pin(id, 0x2000, 1);
        s.record_external_pin(id, 0x9000, 1);
        let runs = s.do_notify_dma_unmap(id, 0x0, 0x8000);
        assert_eq!(runs, vec![(0x1000, 3), (0x2000, 1)]);
        assert_eq!(s.external_pins(id), vec![(0x9000, 1)]);
        s.forget_external_pins(id, 0x9000, 1);
        assert!(s.external_pins(id).is_empty());
    }
}
