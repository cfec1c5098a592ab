//! The world: containers of the type1 engine running on one simulated machine.
//!
//! [`World`] owns a [`Sim`] (the platform) and the containers, processes and group ownership
//! that the kernel's VFIO core would track (which container a group is in, which emulated
//! devices are open). It executes one [`Op`] at a time and, after each, runs the simulator's
//! invariant checker over the engine's state. The scenario runner, `type1 demo` and
//! `type1 attack` all drive the engine through it.

use std::collections::{BTreeMap, HashMap};

use type1_core::{
    Config, Container, Errno, Event, FlushReason, GroupId, MapFlags, MapRequest, MmId, UnmapFlags,
    UnmapRequest, UserBitmap,
};
use type1_sim::{Access, EngineView, Kind, MachineDesc, Sim, Violation};

use crate::parse::Op;
use crate::raw::{Arg, Raw};

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
    /// The simulated machine.
    pub sim: Sim,
    /// Open containers by name.
    pub containers: BTreeMap<String, Container>,
    group_owner: HashMap<u32, String>,
    processes: HashMap<String, MmId>,
    current: Option<String>,
    policy: String,
    config: Config,
    /// Events before the operation being run (see [`World::mark_op_start`]).
    op_start: usize,
    opened: Vec<(String, String)>,
    /// Bytes of the last CPU, DMA or `dma_rw` read.
    pub last_read: Vec<u8>,
    /// Size reported by the last successful UNMAP.
    pub last_unmapped: u64,
    /// The last dirty bitmap read.
    pub last_bitmap: Vec<u64>,
    /// Violations not yet consumed by an `expect violation`.
    pub pending: Vec<Noted>,
    /// Violation kinds (or `all`) that an `allow` line excused.
    pub allowed: Vec<Option<Kind>>,
    seen_violations: usize,
    /// The uAPI layer of raw steps, made at the first one ([`crate::raw`]).
    pub raw: Option<Box<Raw>>,
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
        Ok(World {
            sim: Sim::new(desc)?,
            containers: BTreeMap::new(),
            group_owner: HashMap::new(),
            processes: HashMap::new(),
            current: None,
            policy: policy.to_string(),
            config: Config::default(),
            op_start: 0,
            opened: Vec::new(),
            last_read: Vec::new(),
            last_unmapped: 0,
            last_bitmap: Vec::new(),
            pending: Vec::new(),
            allowed: Vec::new(),
            seen_violations: 0,
            raw: None,
        })
    }

    /// Notes that an operation starts: `expect order` looks at the events from here on.
    pub fn mark_op_start(&mut self) {
        self.op_start = self.sim.events().len();
    }

    /// Index of the last operation's first event.
    pub fn op_events_start(&self) -> usize {
        self.op_start
    }

    /// The policy new containers get.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Sets the policy for containers opened from now on.
    pub fn set_policy(&mut self, policy: &str) -> Result<(), String> {
        if type1_core::policy::policy_by_name(policy).is_none() {
            return Err(format!("unknown policy {policy:?}"));
        }
        self.policy = policy.to_string();
        Ok(())
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

    /// A named container and the machine, borrowed apart (engine calls need both).
    fn raw_open(&mut self, name: &str, group: Option<u32>) -> Result<(), StepError> {
        if let Some(g) = group {
            if self.group_owner.contains_key(&g) {
                return Err(errno(
                    Errno::EBUSY,
                    format!("group {g} is in use by typed lines (attach)"),
                ));
            }
        }
        let r = self.with_raw(|r| {
            if r.files.contains_key(name) {
                return Err(StepError::Usage(format!("file {name:?} is already open")));
            }
            let obj = match group {
                None => r.vfio.open_container(),
                Some(g) => r
                    .vfio
                    .open_group(g)
                    .map_err(|e| errno(e, format!("open /dev/vfio/{g}")))?,
            };
            let fd = type1_uapi::Caller::new_fd(&mut r.caller, obj)
                .map_err(|e| errno(e, "no fd".to_string()))?;
            r.files.insert(name.to_string(), fd);
            Ok(())
        })?;
        r
    }

    fn raw_ioctl(
        &mut self,
        file: &str,
        request: u64,
        arg: &Arg,
        bind: Option<&str>,
    ) -> Result<(), StepError> {
        let r = self.with_raw(|r| {
            let Some(&fd) = r.files.get(file) else {
                return Err(StepError::Usage(format!("no open file named {file:?}")));
            };
            let Some(obj) = r.caller.object(fd) else {
                return Err(StepError::Usage(format!(
                    "{file:?} is not an emulated file"
                )));
            };
            let a = match arg {
                Arg::None => 0,
                Arg::Int(v) | Arg::At(v) => *v,
                Arg::Buf(items) => r.build(items).map_err(StepError::Usage)?,
            };
            let name = type1_uapi::nr::NAMES
                .iter()
                .find(|(_, n)| *n == request)
                .map_or_else(|| format!("0x{request:x}"), |(n, _)| n.to_string());
            let ret = r
                .vfio
                .ioctl(obj, request, a, &mut r.caller)
                .map_err(|e| errno(e, format!("{name} on {file}")))?;
            r.last_ret = ret;
            if let Some(b) = bind {
                let fd = i32::try_from(ret).map_err(|_| {
                    StepError::Usage(format!("{name} returned {ret}, not an fd to name {b:?}"))
                })?;
                r.files.insert(b.to_string(), fd);
            }
            Ok(())
        })?;
        r
    }

    fn container_and_sim(&mut self, name: &str) -> Result<(&mut Container, &mut Sim), StepError> {
        let Self {
            sim, containers, ..
        } = self;
        match containers.get_mut(name) {
            Some(c) => Ok((c, sim)),
            None => usage(format!("no container named {name:?}")),
        }
    }

    fn cont(&mut self, name: &str) -> Result<&mut Container, StepError> {
        match self.containers.get_mut(name) {
            Some(c) => Ok(c),
            None => usage(format!("no container named {name:?}")),
        }
    }

    /// Count of `flush` events so far, optionally filtered.
    pub fn flushes(&self, reason: Option<FlushReason>, iova: Option<u64>) -> (u64, u64) {
        let mut n = 0;
        let mut pages = 0;
        for (_, e) in self.sim.events() {
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

    /// Every container's engine: typed lines' and raw lines' (the uAPI layer's).
    pub fn engines(&self) -> Vec<&Container> {
        let raw = self
            .raw
            .iter()
            .flat_map(|r| r.vfio.containers().map(|(_, c)| c));
        self.containers.values().chain(raw).collect()
    }

    /// Runs `f` on the uAPI layer of raw steps (made on first use), with this world's machine
    /// as its platform for the duration.
    pub fn with_raw<R>(&mut self, f: impl FnOnce(&mut Raw) -> R) -> Result<R, StepError> {
        if self.raw.is_none() {
            let r =
                Raw::new(self.sim.desc(), self.config, &self.policy).map_err(StepError::Usage)?;
            self.raw = Some(Box::new(r));
        }
        let raw = self.raw.as_mut().expect("made above");
        std::mem::swap(&mut self.sim, &mut raw.vfio.platform);
        let r = f(raw);
        std::mem::swap(&mut self.sim, &mut raw.vfio.platform);
        Ok(r)
    }

    fn raw_group_open(&self, group: u32) -> bool {
        self.raw
            .as_ref()
            .is_some_and(|r| r.vfio.group_is_open(group))
    }

    /// Engine views of every container, for the checker.
    pub fn views(&self) -> Vec<EngineView> {
        self.engines()
            .into_iter()
            .filter_map(|c| c.iommu().ok())
            .map(|t| EngineView {
                mappings: t.mappings(),
                domains: t.domains(),
                has_emulated_groups: t.has_emulated_groups(),
            })
            .collect()
    }

    /// Runs the checker and moves new violations to `pending`, tagged with `at`.
    pub fn check(&mut self, at: usize) {
        let views = self.views();
        self.sim.check_engine(&views);
        let broken: Vec<String> = self
            .engines()
            .into_iter()
            .filter_map(|c| c.iommu().ok())
            .filter_map(|t| t.check_invariants().err())
            .collect();
        for e in broken {
            self.sim.record_violation(Kind::EngineInvariant, &e);
        }
        let all = self.sim.violations();
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
        if self.raw.is_some() {
            let _ = self.with_raw(|r| r.vfio.release_all());
        }
        self.sim.check_closed();
        self.check(at);
    }

    /// Executes one operation (expectations are handled by the runner).
    pub fn exec(&mut self, op: &Op) -> Result<(), StepError> {
        let r = self.exec_inner(op);
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
            self.sim.clear_accesses();
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
        }
    }

    /// Executes an operation on the scenario's own settings: policy, module parameters,
    /// allowed violations.
    fn exec_setup(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::Machine(_) => usage("`machine` must be the first operation"),
            Op::Policy(p) => self.set_policy(p).map_err(StepError::Usage),
            Op::Param { name, value } => {
                match name.as_str() {
                    "dma_entry_limit" => self.config.dma_entry_limit = *value as u32,
                    "disable_hugepages" => self.config.disable_hugepages = *value != 0,
                    "allow_unsafe_interrupts" => self.config.allow_unsafe_interrupts = *value != 0,
                    other => return usage(format!("unknown parameter {other:?}")),
                }
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
                let mm = self.sim.create_process(name);
                if let Some(l) = limit {
                    self.sim.set_memlock_limit(mm, *l);
                }
                self.sim.set_cap_ipc_lock(mm, *cap_ipc_lock);
                self.processes.insert(name.clone(), mm);
                self.current = Some(name.clone());
                self.sim.set_current(Some(mm));
                Ok(())
            }
            Op::Switch(n) => {
                let Some(mm) = self.mm(n) else {
                    return usage(format!("no process {n:?}"));
                };
                self.current = Some(n.clone());
                self.sim.set_current(Some(mm));
                Ok(())
            }
            Op::Exit(n) => {
                let Some(mm) = self.mm(n) else {
                    return usage(format!("no process {n:?}"));
                };
                self.sim.exit_process(mm);
                if self.current.as_deref() == Some(n) {
                    self.current = None;
                    self.sim.set_current(None);
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
                    None => self.sim.mmap_anon(mm, *vaddr, *len, *writable),
                    Some((pfn, mt)) => self.sim.mmap_mmio(mm, *vaddr, *len, *pfn, *mt, *writable),
                };
                r.map_err(|e| errno(Errno::EINVAL, e.to_string()))
            }
            Op::Munmap { vaddr, len } => {
                let mm = self.cur_mm()?;
                self.sim
                    .munmap(mm, *vaddr, *len)
                    .map_err(|e| errno(Errno::EINVAL, e.to_string()))
            }
            Op::CpuWrite { vaddr, data } => {
                let mm = self.cur_mm()?;
                self.sim
                    .cpu_write(mm, *vaddr, data)
                    .map_err(|e| errno(Errno::EFAULT, e.to_string()))
            }
            Op::CpuRead { vaddr, len } => {
                let mm = self.cur_mm()?;
                let mut buf = vec![0; usize::try_from(*len).unwrap_or(usize::MAX).min(64 << 20)];
                self.sim
                    .cpu_read(mm, *vaddr, &mut buf)
                    .map_err(|e| errno(Errno::EFAULT, e.to_string()))?;
                self.last_read = buf;
                Ok(())
            }
            Op::Cache { evict } => {
                if *evict {
                    self.sim.evict_all();
                } else {
                    self.sim.writeback_all();
                }
                Ok(())
            }
            other => usage(format!("internal: {other:?} is not for exec_memory")),
        }
    }

    /// Executes an operation on the container and its type1 backend, through the engine.
    fn exec_container(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::Container(n) => {
                if self.containers.contains_key(n) {
                    return usage(format!("container {n:?} already open"));
                }
                let c = Container::new(self.config, &self.policy)?;
                self.containers.insert(n.clone(), c);
                Ok(())
            }
            Op::Attach { container, group } => {
                if !self.containers.contains_key(container) {
                    return usage(format!("no container named {container:?}"));
                }
                if self.raw_group_open(*group) {
                    return Err(errno(
                        Errno::EBUSY,
                        format!("group {group} is open through raw uapi lines"),
                    ));
                }
                // Group-file checks of VFIO_GROUP_SET_CONTAINER (spec errata).
                if self.group_owner.contains_key(group) {
                    return Err(errno(
                        Errno::EINVAL,
                        format!("group {group} already has a container"),
                    ));
                }
                let gi = type1_core::Iommu::group_info(&self.sim, GroupId(*group))
                    .map_err(|e| errno(e.errno, e.to_string()))?;
                let _ = gi;
                let Self {
                    sim, containers, ..
                } = self;
                containers
                    .get_mut(container)
                    .expect("checked")
                    .add_group(sim, GroupId(*group))?;
                self.group_owner.insert(*group, container.clone());
                Ok(())
            }
            Op::Detach { container, group } => {
                // `detach GROUP`: the container the group is in (EINVAL if none, as
                // UNSET_CONTAINER on a group in no container).
                let owner;
                let container = if container.is_empty() {
                    owner = self.group_owner.get(group).cloned().ok_or_else(|| {
                        errno(Errno::EINVAL, format!("group {group} is in no container"))
                    })?;
                    &owner
                } else {
                    container
                };
                if self.group_owner.get(group) != Some(container) {
                    return Err(errno(
                        Errno::EINVAL,
                        format!("group {group} is not in container {container}"),
                    ));
                }
                if self.opened.iter().any(|(c, d)| {
                    c == container && self.sim.device_group(d) == Some(GroupId(*group))
                }) {
                    return Err(errno(
                        Errno::EBUSY,
                        format!("group {group} has open devices"),
                    ));
                }
                let Self {
                    sim, containers, ..
                } = self;
                containers
                    .get_mut(container)
                    .expect("owner exists")
                    .remove_group(sim, GroupId(*group))?;
                self.group_owner.remove(group);
                Ok(())
            }
            Op::SetIommu { container, kind } => {
                let (c, sim) = self.container_and_sim(container)?;
                c.set_iommu(sim, *kind)?;
                Ok(())
            }
            Op::Map {
                container,
                iova,
                vaddr,
                size,
                flags,
            } => {
                let (c, sim) = self.container_and_sim(container)?;
                let t = c.iommu_mut()?;
                t.map_dma(
                    sim,
                    MapRequest {
                        flags: MapFlags::decode(*flags)?,
                        vaddr: *vaddr,
                        iova: *iova,
                        size: *size,
                    },
                )?;
                Ok(())
            }
            Op::Unmap {
                container,
                iova,
                size,
                flags,
            } => {
                let (c, sim) = self.container_and_sim(container)?;
                let t = c.iommu_mut()?;
                let decoded = UnmapFlags::decode(*flags)?;
                let pg = t.pgsize();
                let mut data = Vec::new();
                let bitmap = if decoded.get_dirty_bitmap {
                    let npages = (size / pg).max(1);
                    let words = npages.div_ceil(64).min(1 << 22);
                    data = vec![0u64; words as usize];
                    Some(UserBitmap {
                        pgsize: pg,
                        size: words * 8,
                        data: &mut data,
                    })
                } else {
                    None
                };
                let n = t.unmap_dma(
                    sim,
                    UnmapRequest {
                        flags: decoded,
                        iova: *iova,
                        size: *size,
                        bitmap,
                    },
                )?;
                self.last_unmapped = n;
                if decoded.get_dirty_bitmap {
                    self.last_bitmap = data;
                }
                Ok(())
            }
            Op::Dirty {
                container,
                flags,
                range,
            } => {
                let t = self.cont(container)?.iommu_mut()?;
                let pg = t.pgsize();
                let mut data = Vec::new();
                let get = range.map(|(iova, size)| {
                    let words = (size / pg).max(1).div_ceil(64).min(1 << 22);
                    data = vec![0u64; words as usize];
                    (
                        iova,
                        size,
                        UserBitmap {
                            pgsize: pg,
                            size: words * 8,
                            data: &mut data,
                        },
                    )
                });
                t.dirty_pages(*flags, get)?;
                if range.is_some() {
                    self.last_bitmap = data;
                }
                Ok(())
            }
            Op::Close(n) => {
                let Some(mut c) = self.containers.remove(n) else {
                    return usage(format!("no container named {n:?}"));
                };
                self.opened.retain(|(cn, _)| cn != n);
                // Closing the container fd: the groups keep it alive in the kernel; here the
                // scenario's `close` stands for closing everything (groups, devices, container).
                c.close(&mut self.sim);
                self.group_owner.retain(|_, cn| cn != n);
                Ok(())
            }
            other => usage(format!("internal: {other:?} is not for exec_container")),
        }
    }

    /// Executes an operation on devices: emulated devices' pins and `dma_rw`, DMA by physical
    /// devices.
    fn exec_device(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::OpenDevice { container, device } => {
                let Some(dev) = self.sim.device_id(device) else {
                    return usage(format!("no device named {device:?}"));
                };
                let Some(g) = self.sim.device_group(device) else {
                    return usage(format!("device {device:?} has no group"));
                };
                if self.group_owner.get(&g.0) != Some(container) {
                    return Err(errno(
                        Errno::EINVAL,
                        format!("group {g} of {device} is not in container {container}"),
                    ));
                }
                let emulated = type1_core::Iommu::group_info(&self.sim, g)
                    .map(|i| i.emulated)
                    .unwrap_or(false);
                let t = self.cont(container)?.iommu_mut()?;
                if emulated {
                    t.register_device(dev);
                }
                self.opened.push((container.clone(), device.clone()));
                Ok(())
            }
            Op::Pin {
                container,
                device,
                iova,
                npage,
                prot,
            } => {
                let Some(dev) = self.sim.device_id(device) else {
                    return usage(format!("no device named {device:?}"));
                };
                if !self
                    .opened
                    .iter()
                    .any(|(c, d)| c == container && d == device)
                {
                    return Err(errno(Errno::EINVAL, format!("device {device} is not open")));
                }
                let group = self.sim.device_group(device).expect("device has a group");
                let Self {
                    sim, containers, ..
                } = self;
                let t = containers
                    .get_mut(container)
                    .expect("open device's container")
                    .iommu_mut()?;
                t.pin_pages(sim, group, *iova, *npage, *prot)?;
                sim.record_external_pin(dev, *iova, *npage);
                Ok(())
            }
            Op::Unpin {
                container,
                device,
                iova,
                npage,
            } => {
                let Some(dev) = self.sim.device_id(device) else {
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
                let n = usize::try_from(*len).unwrap_or(usize::MAX).min(64 << 20);
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
                let n = usize::try_from(*len).unwrap_or(usize::MAX).min(64 << 20);
                match write {
                    None => {
                        let data = self
                            .sim
                            .dma_read(device, *iova, n, *no_snoop)
                            .map_err(|e| errno(Errno::EFAULT, e.to_string()))?;
                        self.last_read = data;
                    }
                    Some(b) => {
                        self.sim
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
    fn exec_fault(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::Fail { point, nth } => self.sim.fail_nth(point, *nth).map_err(StepError::Usage),
            Op::DmaAfter {
                point,
                nth,
                device,
                write,
                iova,
                len,
            } => {
                if self.sim.device_group(device).is_none() {
                    return usage(format!("no device named {device:?}"));
                }
                let access = Access::Dma {
                    device: device.clone(),
                    iova: *iova,
                    len: usize::try_from(*len).unwrap_or(usize::MAX).min(64 << 20),
                    write: *write,
                };
                self.sim
                    .access_after(point, *nth, access)
                    .map_err(StepError::Usage)
            }
            Op::CpuAfter {
                point,
                nth,
                write,
                vaddr,
                len,
            } => {
                let access = Access::Cpu {
                    mm: self.cur_mm()?,
                    vaddr: *vaddr,
                    len: usize::try_from(*len).unwrap_or(usize::MAX).min(64 << 20),
                    write: *write,
                };
                self.sim
                    .access_after(point, *nth, access)
                    .map_err(StepError::Usage)
            }
            Op::RefuseUnpin { device, n } => {
                let Some(dev) = self.sim.device_id(device) else {
                    return usage(format!("no device named {device:?}"));
                };
                self.sim.refuse_unpin(dev, *n);
                Ok(())
            }
            other => usage(format!("internal: {other:?} is not for exec_fault")),
        }
    }

    /// Executes an operation on raw uAPI lines (`crate::raw`).
    fn exec_raw(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::RawOpen { name, group } => self.raw_open(name, *group),
            Op::RawClose(name) => {
                let closed = self.with_raw(|r| {
                    let fd = r.files.remove(name)?;
                    let obj = r.caller.forget(fd);
                    if let Some(obj) = obj {
                        r.vfio.close(obj);
                    }
                    Some(())
                })?;
                closed.map_or_else(|| usage(format!("no open file named {name:?}")), Ok)
            }
            Op::RawIoctl {
                file,
                request,
                arg,
                bind,
            } => self.raw_ioctl(file, *request, arg, bind.as_deref()),
            other => usage(format!("internal: {other:?} is not for exec_raw")),
        }
    }

    /// The unconsumed violations.
    pub fn pending(&self) -> &[Noted] {
        &self.pending
    }
}
