//! The world: the VFIO objects and the type1 engine running on one simulated machine.
//!
//! [`World`] owns a [`type1_uapi::Vfio`] over a [`Sim`]: the same object model (containers,
//! group files, device objects, what each close releases) that the preload library's broker
//! runs for unmodified programs. Typed lines (`container`, `attach`, `open`, `map`, ...) drive it
//! through its typed calls; raw lines (`uapi_open`, `ioctl`: [`crate::raw`]) through its ioctl
//! table, on the same objects, so a group opened by one is EBUSY to the other as a second open
//! of a group file is. The world adds what a scenario names: containers and processes by name.
//! It executes one [`Op`] at a time and, after each, runs the simulator's invariant checker
//! over the engine's state. The scenario runner, the model checker, the fault sweeps,
//! `type1 demo` and `type1 attack` all drive the engine through it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use type1_core::{
    Config, Container, Errno, Event, FlushReason, MapFlags, MapRequest, MmId, UnmapFlags,
    UnmapRequest, UserBitmap,
};
use type1_sim::{Access, EngineView, MachineDesc, Sim, Violation, ViolationKind};
use type1_uapi::{GroupSpec, Object, Vfio, VfioError};

use crate::parse::Op;
use crate::raw::{Arg, Raw};

mod container;
mod devices;
mod ifd;
mod rawlines;

/// Why an operation did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The engine (or the emulated kernel around it) returned an errno.
    #[error("{errno} ({msg})")]
    Errno {
        /// The errno.
        errno: Errno,
        /// The engine's message.
        msg: String,
    },
    /// The scenario itself is wrong (unknown name, no current process, ...).
    #[error("{0}")]
    Usage(String),
}

impl From<VfioError> for StepError {
    fn from(e: VfioError) -> Self {
        StepError::Errno {
            errno: e.errno(),
            msg: e.to_string(),
        }
    }
}

impl From<type1_core::Error> for StepError {
    fn from(e: type1_core::Error) -> Self {
        StepError::Errno {
            errno: e.errno(),
            msg: e.to_string(),
        }
    }
}

fn errno(errno: Errno, msg: impl Into<String>) -> StepError {
    StepError::Errno {
        errno,
        msg: msg.into(),
    }
}

/// The bytes one scenario access moves: `len`, at most 64 MiB.
fn byte_len(len: u64) -> usize {
    usize::try_from(len).unwrap_or(usize::MAX).min(64 << 20)
}

fn usage<T>(msg: impl Into<String>) -> Result<T, StepError> {
    Err(StepError::Usage(msg.into()))
}

/// A violation with the line (or step index) at which it was detected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Noted {
    /// Where it was detected.
    pub at: usize,
    /// The violation.
    pub v: Violation,
}

/// See the module documentation.
#[derive(Clone)]
pub struct World {
    /// The VFIO objects over the simulated machine (`vfio.platform`).
    pub vfio: Vfio<Sim>,
    /// Containers opened by typed lines: name -> container object.
    containers: BTreeMap<String, u32>,
    /// Group files opened by typed `attach` lines.
    group_files: BTreeSet<u32>,
    /// Device objects opened by typed `open` lines: (container, device name, object).
    devices: Vec<(String, String, u32)>,
    processes: HashMap<String, MmId>,
    current: Option<String>,
    /// Events before the operation being run (see [`World::mark_op_start`]).
    op_start: usize,
    /// Bytes of the last CPU, DMA or `dma_rw` read.
    pub last_read: Vec<u8>,
    /// Size reported by the last successful UNMAP.
    pub last_unmapped: u64,
    /// The last dirty bitmap read.
    pub last_bitmap: Vec<u64>,
    /// Violations not yet consumed by an `expect violation`.
    pub pending: Vec<Noted>,
    /// Violation kinds (or `all`) that an `allow` line excused.
    pub allowed: Vec<Option<ViolationKind>>,
    seen_violations: usize,
    /// The calling process of raw lines: scratch memory, fds, file names ([`crate::raw`]).
    pub raw: Raw,
    /// Names of the iommufd side: objects and bound devices ([`ifd`]).
    ifd: ifd::IfdNames,
    /// A `fail ... next` is armed: failures are disarmed after the next line that makes a
    /// fallible platform call.
    fail_next: bool,
}

impl World {
    /// A world on the given machine, with containers using `policy`.
    pub fn new(desc: MachineDesc, policy: &str) -> Result<World, String> {
        if type1_core::policy::policy_by_name(policy).is_none() {
            return Err(format!(
                "unknown policy {policy:?} (known: {})",
                type1_core::policy::POLICY_NAMES.join(", ")
            ));
        }
        let sim = Sim::new(desc)?;
        let groups: Vec<GroupSpec> = sim
            .desc()
            .groups
            .iter()
            .map(|g| GroupSpec {
                id: g.id,
                devices: g.devices.clone(),
                emulated: if g.emulated {
                    g.devices
                        .iter()
                        .filter_map(|d| Some((d.clone(), sim.device_id(d)?)))
                        .collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        let vfio = Vfio::new(sim, &groups, Config::default(), policy)
            .map_err(|e| format!("policy {policy:?}: {e}"))?;
        Ok(World {
            vfio,
            containers: BTreeMap::new(),
            group_files: BTreeSet::new(),
            devices: Vec::new(),
            processes: HashMap::new(),
            current: None,
            op_start: 0,
            last_read: Vec::new(),
            last_unmapped: 0,
            last_bitmap: Vec::new(),
            pending: Vec::new(),
            allowed: Vec::new(),
            seen_violations: 0,
            raw: Raw::new(),
            ifd: ifd::IfdNames::default(),
            fail_next: false,
        })
    }

    /// The simulated machine.
    pub fn sim(&self) -> &Sim {
        &self.vfio.platform
    }

    /// The simulated machine, to act on it.
    pub fn sim_mut(&mut self) -> &mut Sim {
        &mut self.vfio.platform
    }

    /// The engine of a container opened by typed lines.
    pub fn container(&self, name: &str) -> Option<&Container> {
        self.vfio.container(*self.containers.get(name)?)
    }

    /// Containers opened by typed lines, by name.
    pub fn named_containers(&self) -> Vec<(&str, &Container)> {
        self.containers
            .iter()
            .filter_map(|(n, id)| Some((n.as_str(), self.vfio.container(*id)?)))
            .collect()
    }

    /// Notes that an operation starts: `expect order` looks at the events from here on.
    pub fn mark_op_start(&mut self) {
        self.op_start = self.vfio.platform.events().len();
    }

    /// Index of the last operation's first event.
    pub fn op_events_start(&self) -> usize {
        self.op_start
    }

    /// The policy new containers get.
    pub fn policy(&self) -> &str {
        self.vfio.policy()
    }

    /// Sets the policy for containers opened from now on.
    pub fn set_policy(&mut self, policy: &str) -> Result<(), String> {
        // The one failure: no policy of that name.
        self.vfio
            .set_policy(policy)
            .map_err(|_| format!("unknown policy {policy:?}"))
    }

    /// Address space of a named process.
    pub fn mm(&self, name: &str) -> Option<MmId> {
        self.processes.get(name).copied()
    }

    fn cur_mm(&self) -> Result<MmId, StepError> {
        match &self.current {
            Some(n) => Ok(self.processes[n]),
            None => usage("no current process: add a `process NAME` line first"),
        }
    }

    /// The container object of a typed name.
    fn cid(&self, name: &str) -> Result<u32, StepError> {
        match self.containers.get(name) {
            Some(id) => Ok(*id),
            None => usage(format!("no container named {name:?}")),
        }
    }

    /// A named container's engine and the machine, borrowed apart (engine calls need both).
    fn container_and_sim(&mut self, name: &str) -> Result<(&mut Container, &mut Sim), StepError> {
        let id = self.cid(name)?;
        Ok(self.vfio.engine(id)?)
    }

    fn cont(&mut self, name: &str) -> Result<&mut Container, StepError> {
        Ok(self.container_and_sim(name)?.0)
    }

    /// Count of `flush` events so far, optionally filtered.
    pub fn flushes(&self, reason: Option<FlushReason>, iova: Option<u64>) -> (u64, u64) {
        let mut n = 0;
        let mut pages = 0;
        for (_, e) in self.vfio.platform.events() {
            if let Event::Flush {
                reason: r,
                iova: i,
                npages,
                skipped,
                ..
            } = e
            {
                if reason.is_some_and(|x| x != *r) || iova.is_some_and(|x| x != *i) {
                    continue;
                }
                n += 1;
                pages += npages - skipped;
            }
        }
        (n, pages)
    }

    /// Every container's engine: typed lines' and raw lines' (one object model).
    pub fn engines(&self) -> Vec<&Container> {
        self.vfio.containers().map(|(_, c)| c).collect()
    }

    /// Engine views of every container, for the checker.
    pub fn views(&self) -> Vec<EngineView> {
        let type1 = self
            .engines()
            .into_iter()
            .filter_map(|c| c.iommu().ok())
            .map(EngineView::of);
        // An iommufd context answers for its pins and charges (see `Ictx::pin_views`).
        let iommufd = self.vfio.iommufds().map(|(_, x)| EngineView {
            mappings: x.pin_views(),
            domains: Vec::new(),
            has_emulated_groups: false,
        });
        type1.chain(iommufd).collect()
    }

    /// Runs the checker and moves new violations to `pending`, tagged with `at`.
    pub fn check(&mut self, at: usize) {
        let views = self.views();
        self.vfio.platform.check_engine(&views);
        let broken: Vec<String> = self
            .engines()
            .into_iter()
            .filter_map(|c| c.iommu().ok())
            .filter_map(|t| t.check_invariants().err())
            .chain(self.vfio.iommufds().filter_map(|(id, x)| {
                x.check_invariants()
                    .err()
                    .map(|e| format!("iommufd {id}: {e}"))
            }))
            .collect();
        for e in broken {
            self.vfio
                .platform
                .record_violation(ViolationKind::EngineInvariant, &e);
        }
        let all = self.vfio.platform.violations();
        for v in &all[self.seen_violations..] {
            if !self.allowed.iter().any(|k| k.is_none_or(|k| k == v.kind)) {
                self.pending.push(Noted { at, v: v.clone() });
            }
        }
        self.seen_violations = all.len();
    }

    /// Closes every container and ends every process (what process exit does), then checks
    /// that nothing is left behind.
    pub fn teardown(&mut self, at: usize) {
        let names: Vec<String> = self.containers.keys().cloned().collect();
        for n in names {
            let _ = self.exec(&Op::Close(n));
        }
        self.vfio.release_all();
        self.vfio.platform.check_closed();
        self.check(at);
    }

    /// Executes one operation (expectations are handled by the runner).
    pub fn exec(&mut self, op: &Op) -> Result<(), StepError> {
        let calls = self.vfio.platform.fallible_calls();
        let r = self.exec_inner(op);
        // A failure armed with `fail ... next` lasts until the end of the first line that
        // makes a fallible platform call, whether or not it reached the armed one.
        if self.fail_next && self.vfio.platform.fallible_calls() > calls {
            self.fail_next = false;
            self.vfio.platform.disarm_failures();
        }
        // `dma_after` and `cpu_after` arm accesses inside the next line that acts on the
        // machine; whatever that line did not reach is disarmed after it.
        if !matches!(
            op,
            Op::Policy(_)
                | Op::Param { .. }
                | Op::Switch(_)
                | Op::Fail { .. }
                | Op::DmaAfter { .. }
                | Op::CpuAfter { .. }
                | Op::RefuseUnpin { .. }
                | Op::Allow(_)
                | Op::Expect(_)
        ) {
            self.vfio.platform.clear_accesses();
        }
        r
    }

    fn exec_inner(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::Machine(_) | Op::Policy(_) | Op::Param { .. } | Op::Allow(_) | Op::Expect(_) => {
                self.exec_setup(op)
            }
            Op::Process { .. }
            | Op::Switch(_)
            | Op::Exit(_)
            | Op::Mmap { .. }
            | Op::Munmap { .. }
            | Op::CpuWrite { .. }
            | Op::CpuRead { .. }
            | Op::Cache { .. } => self.exec_memory(op),
            Op::Container(_)
            | Op::Attach { .. }
            | Op::Detach { .. }
            | Op::SetIommu { .. }
            | Op::Map { .. }
            | Op::Unmap { .. }
            | Op::Dirty { .. }
            | Op::Close(_) => self.exec_container(op),
            Op::OpenDevice { .. }
            | Op::Pin { .. }
            | Op::Unpin { .. }
            | Op::DmaRw { .. }
            | Op::Dma { .. } => self.exec_device(op),
            Op::Fail { .. }
            | Op::DmaAfter { .. }
            | Op::CpuAfter { .. }
            | Op::RefuseUnpin { .. } => self.exec_fault(op),
            Op::RawOpen { .. } | Op::RawClose(_) | Op::RawIoctl { .. } => self.exec_raw(op),
            Op::Iommufd(op) => self.exec_iommufd(op),
        }
    }

    /// Executes an operation on the scenario's own settings: policy, module parameters,
    /// allowed violations.
    fn exec_setup(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::Machine(_) => usage("`machine` must be the first operation"),
            Op::Policy(p) => self.set_policy(p).map_err(StepError::Usage),
            Op::Param { name, value } => {
                let mut config = self.vfio.config();
                match name.as_str() {
                    "dma_entry_limit" => config.dma_entry_limit = *value as u32,
                    "disable_hugepages" => config.disable_hugepages = *value != 0,
                    "allow_unsafe_interrupts" => config.allow_unsafe_interrupts = *value != 0,
                    other => return usage(format!("unknown parameter {other:?}")),
                }
                self.vfio.set_config(config);
                Ok(())
            }
            Op::Allow(kind) => {
                self.allowed.push(*kind);
                Ok(())
            }
            Op::Expect(_) => Ok(()),
            other => usage(format!("internal: {other:?} is not for exec_setup")),
        }
    }

    /// Executes an operation on processes, their memory and the CPU.
    fn exec_memory(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::Process {
                name,
                limit,
                cap_ipc_lock,
            } => {
                if self.processes.contains_key(name) {
                    return usage(format!("process {name:?} exists"));
                }
                let mm = self.vfio.platform.create_process(name);
                if let Some(l) = limit {
                    self.vfio.platform.set_memlock_limit(mm, *l);
                }
                self.vfio.platform.set_cap_ipc_lock(mm, *cap_ipc_lock);
                self.processes.insert(name.clone(), mm);
                self.current = Some(name.clone());
                self.vfio.platform.set_current(Some(mm));
                Ok(())
            }
            Op::Switch(n) => {
                let Some(mm) = self.mm(n) else {
                    return usage(format!("no process {n:?}"));
                };
                self.current = Some(n.clone());
                self.vfio.platform.set_current(Some(mm));
                Ok(())
            }
            Op::Exit(n) => {
                let Some(mm) = self.mm(n) else {
                    return usage(format!("no process {n:?}"));
                };
                self.vfio.platform.exit_process(mm);
                if self.current.as_deref() == Some(n) {
                    self.current = None;
                    self.vfio.platform.set_current(None);
                }
                Ok(())
            }
            Op::Mmap {
                vaddr,
                len,
                writable,
                mmio,
            } => {
                let mm = self.cur_mm()?;
                let r = match mmio {
                    None => self.vfio.platform.mmap_anon(mm, *vaddr, *len, *writable),
                    Some((pfn, mt)) => self
                        .vfio
                        .platform
                        .mmap_mmio(mm, *vaddr, *len, *pfn, *mt, *writable),
                };
                r.map_err(|e| errno(Errno::EINVAL, e.to_string()))
            }
            Op::Munmap { vaddr, len } => {
                let mm = self.cur_mm()?;
                self.vfio
                    .platform
                    .munmap(mm, *vaddr, *len)
                    .map_err(|e| errno(Errno::EINVAL, e.to_string()))
            }
            Op::CpuWrite { vaddr, data } => {
                let mm = self.cur_mm()?;
                self.vfio
                    .platform
                    .cpu_write(mm, *vaddr, data)
                    .map_err(|e| errno(Errno::EFAULT, e.to_string()))
            }
            Op::CpuRead { vaddr, len } => {
                let mm = self.cur_mm()?;
                let mut buf = vec![0; byte_len(*len)];
                self.vfio
                    .platform
                    .cpu_read(mm, *vaddr, &mut buf)
                    .map_err(|e| errno(Errno::EFAULT, e.to_string()))?;
                self.last_read = buf;
                Ok(())
            }
            Op::Cache { evict } => {
                if *evict {
                    self.vfio.platform.evict_all();
                } else {
                    self.vfio.platform.writeback_all();
                }
                Ok(())
            }
            other => usage(format!("internal: {other:?} is not for exec_memory")),
        }
    }

    /// The unconsumed violations.
    pub fn pending(&self) -> &[Noted] {
        &self.pending
    }
}
