//! # type1-sim: a simulated machine that makes non-coherent DMA visible
//!
//! [`Sim`] implements [`type1_core::Platform`], the seam the type1 engine
//! ([`type1_core::Container`]) runs on. It models just enough hardware for the problem Yan
//! Zhao's series fixes to show up, and checks every call the engine makes:
//!
//! * **memory** ([`memory`]): 4 KiB page frames with RAM contents that survive free and
//!   reallocation, a LIFO free list (a just-freed frame is the next one handed out), pin
//!   refcounts, and processes with page tables, regions and RLIMIT_MEMLOCK books. A new
//!   anonymous page is zeroed *through the cache*: its lines become dirty zeros while RAM keeps
//!   the previous owner's bytes. With transparent huge pages (`thp` in the machine
//!   description) anonymous memory is faulted in 2 MiB at a time into aligned frames, and
//!   IOMMU domains take 2 MiB leaves: a 1 TiB guest fits;
//! * **cache** ([`cache`]): a write-back CPU cache of 64-byte lines, flushed only by
//!   [`type1_core::CacheMaintenance::flush_cache`] or the explicit helpers;
//! * **IOMMU** ([`iommu`]): units (with or without snoop control), groups, domains and their
//!   page tables and IOTLBs;
//! * **devices** ([`device`]): DMA through a group's domain, snooped or not. A no-snoop read
//!   of a line whose current contents still sit dirty in the cache returns stale RAM, and when
//!   that RAM belongs to an earlier owner of the frame the sim records a `stale_read` leak;
//! * **fault injection** ([`fault`]), the **trace** recorder ([`trace`]) and the **invariant
//!   checker** ([`check`]), which compares engine views (`MappingView`, `DomainView`) against
//!   the machine's page tables, pins and accounting;
//! * **machine descriptions** ([`machine`]) in TOML.
//!
//! The engine never sees any of this: it only calls the `Platform` methods. Scenario runners
//! drive the CPU and devices through the public methods of [`Sim`].
//!
//! [`Sim`] is a handful of owned parts, each in the module that works on it and each with its
//! own invariants, which the checker asks for before it compares the machine with the engine
//! (kind `sim_invariant`): `memory::Memory` (frames, the free list, MMIO), `process::Tasks`,
//! `cache::Cache`, `iommu::Hardware` (units, groups, domains, devices, emulated devices'
//! pins), `fault::Faults` and `trace::Observer` (trace, violations, counters).

pub mod cache;
pub mod check;
pub mod device;
pub mod digest;
pub mod fault;
pub mod incheck;
pub mod iommu;
/// Machine descriptions ([`type1_machine`], the format the broker reads too).
pub use type1_machine as machine;
pub mod memory;
mod pin;
mod platform;
mod process;
pub mod trace;

use std::collections::BTreeMap;

use serde::Serialize;
use type1_core::{DeviceId, DomainId, Errno, GroupId, PlatformError};

pub use check::{EngineView, Violation, ViolationKind};
pub use device::DeviceDmaError;
pub use digest::StateHasher;
pub use fault::{Access, AccessPoint, FaultPoint, ACCESS_POINTS, FAULT_POINTS};
pub use incheck::CheckMode;
pub use machine::{GroupDesc, MachineDesc, MmioDesc, ResvDesc, UnitDesc};
pub use memory::INITIAL_RAM_BYTE;
pub use memory::LINE_SIZE;

/// Counters of what happened on the machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// `flush_cache` calls.
    pub flush_calls: u64,
    /// Pages covered by `flush_cache` calls.
    pub pages_flushed: u64,
    /// Dirty lines written back by `flush_cache`.
    pub lines_written_back: u64,
    /// Bytes of an earlier owner's data a device read without snooping (`stale_read`).
    pub leaked_bytes: u64,
    /// Bytes where cache and RAM disagreed when an exposed frame lost its last pin.
    pub stale_after_unpin_bytes: u64,
    /// Device DMA reads.
    pub dma_reads: u64,
    /// Device DMA writes.
    pub dma_writes: u64,
    /// Device DMA faults.
    pub dma_faults: u64,
    /// `dma_unmap` notifications delivered to emulated devices (U5), refused ones included.
    pub dma_unmap_notifications: u64,
    /// Frame allocations.
    pub frames_allocated: u64,
}

/// The simulated machine. See the crate documentation.
///
/// `Clone` makes an independent copy of the whole machine (for model checking); the copy does
/// not write to the live trace file.
#[derive(Clone, Debug)]
pub struct Sim {
    /// What the machine was built from (never changes).
    pub(crate) desc: MachineDesc,
    /// Physical memory: frames, the free list, MMIO.
    pub(crate) mem: memory::Memory,
    /// Processes and the current one.
    pub(crate) tasks: process::Tasks,
    /// The write-back CPU cache.
    pub(crate) cache: cache::Cache,
    /// IOMMU units, groups, domains, devices and emulated devices' pins.
    pub(crate) hw: iommu::Hardware,
    /// Armed failures and accesses.
    pub(crate) faults: fault::Faults,
    /// What the machine saw: the trace, violations and counters.
    pub(crate) obs: trace::Observer,
}

impl Sim {
    /// Builds a machine from a description, after validating it.
    pub fn new(desc: MachineDesc) -> Result<Sim, String> {
        desc.validate()?;
        let n = desc.memory_frames;
        memory::check_room(n)?;
        let frames = vec![memory::Frame::default(); n as usize + 1];
        // Nothing freed yet: pfn 1 is handed out first.
        let free = Vec::new();
        let units = desc
            .units
            .iter()
            .map(|u| (u.id, iommu::Unit::from_desc(u)))
            .collect();
        let groups = desc
            .groups
            .iter()
            .map(|g| (GroupId(g.id), iommu::Group::from_desc(g)))
            .collect();
        let devices = desc
            .groups
            .iter()
            .flat_map(|g| g.devices.iter().map(move |d| (g.id, d)))
            .enumerate()
            .map(|(i, (g, d))| device::Device {
                name: d.clone(),
                group: GroupId(g),
                id: DeviceId(i as u32),
            })
            .collect();
        Ok(Sim {
            mem: memory::Memory {
                frames,
                free,
                fresh: 1,
                mmio_store: BTreeMap::new(),
                mmio_ranges: desc.mmio.clone(),
                zero_page: None,
                broken: Vec::new(),
            },
            desc,
            tasks: process::Tasks::default(),
            cache: cache::Cache::default(),
            hw: iommu::Hardware {
                units,
                groups,
                devices,
                domains: BTreeMap::new(),
                next_domain: 1,
                ext_pins: BTreeMap::new(),
            },
            faults: fault::Faults::default(),
            obs: trace::Observer::default(),
        })
    }

    /// The machine's description.
    pub fn desc(&self) -> &MachineDesc {
        &self.desc
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.obs.stats
    }

    /// Bytes of an earlier owner's data devices read without snooping (`stale_read`).
    pub fn leaked_bytes(&self) -> u64 {
        self.obs.stats.leaked_bytes
    }

    /// Bytes where cache and RAM disagreed when exposed frames lost their last pin.
    pub fn stale_after_unpin_bytes(&self) -> u64 {
        self.obs.stats.stale_after_unpin_bytes
    }

    /// A digest of the whole machine state (memory, cache, IOMMU, processes, external pins),
    /// for state-space exploration. Equal states give equal digests within one build; the
    /// trace, violations, statistics and fault counters are not part of the state; armed faults are.
    pub fn state_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = StateHasher::default();
        for (pfn, f) in self.mem.frames.iter().enumerate() {
            if f.gen == 0 && f.data.is_none() && f.pins == 0 {
                continue;
            }
            (
                pfn,
                f.pins,
                f.gen,
                f.in_use,
                f.exposed,
                f.iommu_refs,
                f.flushed_since_pin,
                f.needs_unpin_flush,
            )
                .hash(&mut h);
            if let Some(d) = &f.data {
                d.content_hash().hash(&mut h);
            }
        }
        (&self.mem.free, self.mem.fresh).hash(&mut h);
        self.cache.digest().hash(&mut h);
        for p in &self.tasks.procs {
            (
                &p.name,
                p.alive,
                &p.pt,
                &p.huge,
                p.locked_vm,
                p.memlock_limit_pages,
                p.cap_ipc_lock,
            )
                .hash(&mut h);
            for (s, r) in &p.regions {
                (s, r.len, r.writable, format!("{:?}", r.kind)).hash(&mut h);
            }
        }
        self.tasks.current.hash(&mut h);
        // Armed faults change what the next calls do, so they are state; counters are not.
        self.faults.armed_digest().hash(&mut h);
        // Domain ids are names: nothing depends on their values but their order and equality.
        // Ranks stand for them, so that states that differ only in how many domains came and
        // went before (attach, detach, attach again) are one state.
        let rank = |id: &DomainId| self.hw.domains.range(..*id).count();
        for d in self.hw.domains.values() {
            (d.unit, d.enforcing, &d.groups, &d.stale).hash(&mut h);
            for (p, e) in d.pt.iter() {
                (p, e.pfn, e.prot).hash(&mut h);
            }
        }
        for (id, g) in &self.hw.groups {
            (id, g.attached.as_ref().map(rank)).hash(&mut h);
        }
        self.hw.ext_pins.hash(&mut h);
        self.mem.mmio_store.hash(&mut h);
        h.finish()
    }

    /// Whether `pfn` is a RAM frame (as opposed to MMIO or nothing).
    pub fn is_ram(&self, pfn: u64) -> bool {
        self.desc.is_ram(pfn)
    }
}

/// Shorthand for a platform error.
pub(crate) fn perr(errno: Errno, what: impl Into<String>) -> PlatformError {
    PlatformError::new(errno, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_are_independent_and_digest_tracks_state() {
        let mut a = Sim::new(MachineDesc::default()).unwrap();
        let mm = a.create_process("p");
        a.mmap_anon(mm, 0x1000, 0x1000, true).unwrap();
        let mut b = a.clone();
        assert_eq!(a.state_digest(), b.state_digest());
        b.cpu_write(mm, 0x1000, &[1]).unwrap();
        assert_ne!(a.state_digest(), b.state_digest());
        assert_eq!(a.translate(mm, 0x1000), None, "the original is untouched");
        assert_eq!(
            a.iommu_groups(),
            vec![(0, true, "dev0".into()), (1, false, "dev1".into())]
        );
    }
}
