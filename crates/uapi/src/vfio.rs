//! [`Vfio`]: the VFIO core's objects (containers, groups, devices) and their lifecycle.
//!
//! This is the part of `vfio_main.c`/`group.c`/`container.c` that owns objects: which group
//! is open, which container it sits in, how many device fds it has handed out, and what the
//! last close of each does. The ioctl handlers that act on these objects are in
//! [`crate::table`].

use std::collections::BTreeMap;

use type1_core::{
    Config, Container, DeviceId, DomainId, Errno, Event, GroupId, Platform, PAGE_SIZE,
};
use vfio_bindings::bindings::vfio as b;

use crate::device::{DmaRequest, PciDevice, TransferFault, FAULT_NO_DOMAIN};
use crate::model::Model;

mod devices;

/// An emulated open file. Numbers collide across kinds, so every dispatch starts here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Object {
    /// `/dev/vfio/vfio`: a container, by id.
    Container(u32),
    /// `/dev/vfio/N`: a group, by group number.
    Group(u32),
    /// A device fd from `VFIO_GROUP_GET_DEVICE_FD` or an open of the device's cdev
    /// (`/dev/vfio/devices/vfioN`), by id.
    Device(u32),
    /// `/dev/iommu`: an iommufd context, by id.
    Iommufd(u32),
}

/// A group of the machine: its number and its devices' names (`0000:00:04.0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    /// Group number (`/dev/vfio/N`).
    pub id: u32,
    /// Device names, as `VFIO_GROUP_GET_DEVICE_FD` expects them.
    pub devices: Vec<String>,
    /// The platform's ids of the group's emulated (mdev-style) devices: opening one registers
    /// it with its container's backend for `dma_unmap` notifications (P10, U5), closing it
    /// unregisters it. Empty for a group of physical functions.
    pub emulated: Vec<(String, DeviceId)>,
}

/// Why an object-level call failed: the cause, typed, and the errno the kernel returns for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VfioError {
    /// No such group (ENODEV from a group ioctl).
    #[error("group {0} does not exist")]
    NoGroup(u32),
    /// The group's file is not open (EBADF: there is no fd to call on).
    #[error("group {0} is not open")]
    GroupNotOpen(u32),
    /// SET_CONTAINER on a group already in a container (EINVAL).
    #[error("group {0} already has a container")]
    AlreadySet(u32),
    /// UNSET_CONTAINER or GET_DEVICE_FD on a group in no container (EINVAL).
    #[error("group {0} is in no container")]
    NotSet(u32),
    /// UNSET_CONTAINER while device fds are open (EBUSY).
    #[error("group {0} has open devices")]
    DevicesOpen(u32),
    /// SET_CONTAINER with an fd that is not a container (EBADFD).
    #[error("the fd given is not a VFIO container")]
    NotAContainer,
    /// No such container object (EBADF).
    #[error("container {0} is not open")]
    NoContainer(u32),
    /// GET_DEVICE_FD for a name the group does not have (ENODEV).
    #[error("group {group} has no device {name:?}")]
    NoDevice {
        /// The group asked.
        group: u32,
        /// The name asked for.
        name: String,
    },
    /// GET_DEVICE_FD before the container has an IOMMU backend (EINVAL).
    #[error("container {0} has no IOMMU backend yet (VFIO_SET_IOMMU)")]
    NoBackend(u32),
    /// The backend refused (its own typed error and errno).
    #[error(transparent)]
    Engine(#[from] type1_core::Error),
    /// iommufd refused (a compat container's device attach).
    #[error("iommufd: {0}")]
    Iommufd(Errno),
}

impl VfioError {
    /// The errno the kernel returns for this failure.
    pub fn errno(&self) -> Errno {
        match self {
            VfioError::NoGroup(_) | VfioError::NoDevice { .. } => Errno::ENODEV,
            VfioError::GroupNotOpen(_) | VfioError::NoContainer(_) => Errno::EBADF,
            VfioError::AlreadySet(_) | VfioError::NotSet(_) | VfioError::NoBackend(_) => {
                Errno::EINVAL
            }
            VfioError::DevicesOpen(_) => Errno::EBUSY,
            VfioError::NotAContainer => Errno::EBADFD,
            VfioError::Engine(e) => e.errno(),
            VfioError::Iommufd(e) => *e,
        }
    }
}

impl From<VfioError> for Errno {
    fn from(e: VfioError) -> Errno {
        e.errno()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct GroupState {
    /// Fixed for the machine's life: shared by clones (the model checker branches a lot).
    pub devices: std::sync::Arc<[String]>,
    pub emulated: std::sync::Arc<[(String, DeviceId)]>,
    pub open: bool,
    pub container: Option<u32>,
    pub open_devices: u32,
    /// The iommufd this group was given by SET_CONTAINER (the compat container).
    pub iommufd: Option<u32>,
    /// Device cdev files of the group that are bound (they keep the group file from opening).
    pub cdev_bound: u32,
}

/// One open `/dev/iommu`, alive while its file is open or a device is bound to it.
#[derive(Clone, Debug)]
pub(crate) struct IommufdState {
    pub ictx: type1_core::iommufd::Ictx,
    pub fd_open: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct ContainerState {
    pub c: Container,
    pub fd_open: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct DeviceState {
    pub group: u32,
    pub name: String,
    pub dev: Model,
    pub irqs: Irqs,
    /// Opened through the device's cdev (not through its group).
    pub cdev: bool,
    /// Bound to an iommufd: `(context, device object id)`.
    pub bound: Option<(u32, u32)>,
}

/// The interrupt eventfds the owner registered with `VFIO_DEVICE_SET_IRQS`, as vfio-pci
/// keeps them: INTx with its automask state, one MSI vector, and the request eventfd (which
/// this device never signals).
#[derive(Debug, Default)]
pub(crate) struct Irqs {
    pub intx: Option<std::fs::File>,
    pub intx_masked: bool,
    pub msi: Option<std::fs::File>,
    /// MSI-X triggers by vector (empty: MSI-X off).
    pub msix: Vec<Option<std::fs::File>>,
    pub req: Option<std::fs::File>,
    /// vfio-pci's `irq_type`: the one index (INTx, MSI or MSI-X) enabled, if any.
    pub kind: Option<u32>,
}

/// A copy holds duplicates of the eventfds (`dup`), as a forked process would; one that
/// cannot be duplicated is left out of the copy.
impl Clone for Irqs {
    fn clone(&self) -> Self {
        let dup = |f: &Option<std::fs::File>| f.as_ref().and_then(|f| f.try_clone().ok());
        Irqs {
            intx: dup(&self.intx),
            intx_masked: self.intx_masked,
            msi: dup(&self.msi),
            msix: self.msix.iter().map(dup).collect(),
            req: dup(&self.req),
            kind: self.kind,
        }
    }
}

/// Signals an eventfd: adds 1 to its counter.
pub(crate) fn signal(f: &std::fs::File) {
    use std::io::Write;
    let mut w: &std::fs::File = f;
    let _ = w.write_all(&1u64.to_ne_bytes());
}

/// The emulated VFIO subsystem of one process, over platform `P`. A clone is an independent
/// copy (the model checker and the scenario runner branch whole worlds).
#[derive(Clone, Debug)]
pub struct Vfio<P: Platform> {
    /// The platform the engine runs on.
    pub platform: P,
    pub(crate) cfg: Config,
    pub(crate) policy: std::sync::Arc<str>,
    pub(crate) groups: BTreeMap<u32, GroupState>,
    pub(crate) containers: BTreeMap<u32, ContainerState>,
    pub(crate) devices: BTreeMap<u32, DeviceState>,
    pub(crate) iommufds: BTreeMap<u32, IommufdState>,
    /// The namespaces of the machine's NVMe functions, by device name (every other device is
    /// the DMA engine).
    pub(crate) nvme: BTreeMap<String, std::sync::Arc<dyn crate::nvme::BlockStore>>,
    next_id: u32,
}

impl<P: Platform + Clone> Vfio<P> {
    /// Takes container `id` out into a subsystem of its own (the same platform handle, module
    /// parameters and policy, no group or device), so that a long container ioctl (MAP_DMA,
    /// UNMAP_DMA) can run on it while this one goes on serving every other object. `None` if
    /// there is no such container. Give it back with [`Self::reattach`].
    pub fn detach_container(&mut self, id: u32) -> Option<Vfio<P>> {
        let cs = self.containers.remove(&id)?;
        Some(Vfio {
            platform: self.platform.clone(),
            cfg: self.cfg,
            policy: self.policy.clone(),
            groups: BTreeMap::new(),
            containers: [(id, cs)].into_iter().collect(),
            devices: BTreeMap::new(),
            iommufds: BTreeMap::new(),
            nvme: BTreeMap::new(),
            next_id: 0,
        })
    }

    /// Puts back the container(s) [`Self::detach_container`] took out.
    pub fn reattach(&mut self, mut detached: Vfio<P>) {
        self.containers.append(&mut detached.containers);
    }
}

impl<P: Platform> Vfio<P> {
    /// A subsystem with the given groups, type1 module parameters and flush policy
    /// (`"seed"` or `"none"`). EINVAL for an unknown policy.
    pub fn new(
        platform: P,
        groups: &[GroupSpec],
        cfg: Config,
        policy: &str,
    ) -> Result<Vfio<P>, Errno> {
        Container::new(cfg, policy).map_err(|e| e.errno())?;
        let groups = groups
            .iter()
            .map(|g| {
                (
                    g.id,
                    GroupState {
                        devices: g.devices.clone().into(),
                        emulated: g.emulated.clone().into(),
                        open: false,
                        container: None,
                        open_devices: 0,
                        iommufd: None,
                        cdev_bound: 0,
                    },
                )
            })
            .collect();
        Ok(Vfio {
            platform,
            cfg,
            policy: policy.into(),
            groups,
            containers: BTreeMap::new(),
            devices: BTreeMap::new(),
            iommufds: BTreeMap::new(),
            nvme: BTreeMap::new(),
            next_id: 0,
        })
    }

    /// Makes device `name` an NVMe controller whose namespace is `store` (each open of the
    /// device gets a fresh controller over the same namespace, as a function reset leaves
    /// the media alone).
    pub fn add_nvme(&mut self, name: &str, store: std::sync::Arc<dyn crate::nvme::BlockStore>) {
        self.nvme.insert(name.to_string(), store);
    }

    /// The function a fresh open of device `name` finds.
    pub(crate) fn model_for(&self, name: &str) -> Model {
        match self.nvme.get(name) {
            Some(store) => Model::Nvme(crate::nvme::Nvme::new(store.clone(), &serial_of(name))),
            None => Model::Dma(PciDevice::new()),
        }
    }

    /// The flush policy containers opened from now on get.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Sets the flush policy of containers opened from now on (EINVAL for an unknown name).
    pub fn set_policy(&mut self, policy: &str) -> Result<(), Errno> {
        Container::new(self.cfg, policy).map_err(|e| e.errno())?;
        self.policy = policy.into();
        Ok(())
    }

    /// The type1 module parameters containers opened from now on get.
    pub fn config(&self) -> Config {
        self.cfg
    }

    /// Sets the module parameters of containers opened from now on, as writing
    /// `/sys/module/vfio_iommu_type1/parameters/*` does.
    pub fn set_config(&mut self, cfg: Config) {
        self.cfg = cfg;
    }

    pub(crate) fn fresh_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// The group a device name belongs to (for sysfs `iommu_group` links).
    pub fn group_of_device(&self, name: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|(_, g)| g.devices.iter().any(|d| d == name))
            .map(|(id, _)| *id)
    }

    /// Whether group `id` exists.
    pub fn has_group(&self, id: u32) -> bool {
        self.groups.contains_key(&id)
    }

    /// Whether group `id`'s file is open.
    pub fn group_is_open(&self, id: u32) -> bool {
        self.groups.get(&id).is_some_and(|g| g.open)
    }

    /// Every container's engine, with its id (for invariant checks).
    pub fn containers(&self) -> impl Iterator<Item = (u32, &Container)> {
        self.containers.iter().map(|(id, c)| (*id, &c.c))
    }

    /// Every device name of the machine.
    pub fn device_names(&self) -> Vec<String> {
        self.groups
            .values()
            .flat_map(|g| g.devices.iter().cloned())
            .collect()
    }

    /// The engine container behind a container object (for inspection).
    pub fn container(&self, id: u32) -> Option<&Container> {
        self.containers.get(&id).map(|c| &c.c)
    }

    /// Opens `/dev/vfio/vfio`: a new, empty container.
    pub fn open_container(&mut self) -> Object {
        let id = self.fresh_id();
        let c = Container::new(self.cfg, &self.policy).expect("policy validated in Vfio::new");
        self.containers
            .insert(id, ContainerState { c, fd_open: true });
        Object::Container(id)
    }

    /// Opens `/dev/vfio/N`: ENOENT for an unknown group, EBUSY when it is already open.
    pub fn open_group(&mut self, id: u32) -> Result<Object, Errno> {
        let g = self.groups.get_mut(&id).ok_or(Errno::ENOENT)?;
        // A bound device cdev blocks the group path (`vfio_device_block_group`).
        if g.open || g.cdev_bound > 0 {
            return Err(Errno::EBUSY);
        }
        g.open = true;
        Ok(Object::Group(id))
    }

    /// `VFIO_GROUP_SET_CONTAINER` (spec errata order): the group must exist (ENODEV) and be in
    /// no container (EINVAL); `target` is the object behind the fd given, `None` for an fd
    /// that is no VFIO file, and must be a container (EBADFD); then the backend attaches the
    /// group ([`Container::add_group`]) and the group records its container.
    pub fn set_container(&mut self, group: u32, target: Option<Object>) -> Result<(), VfioError> {
        let g = self.groups.get(&group).ok_or(VfioError::NoGroup(group))?;
        if g.container.is_some() || g.iommufd.is_some() {
            return Err(VfioError::AlreadySet(group));
        }
        if let Some(Object::Iommufd(i)) = target {
            // The compat container: the group is served by iommufd's compat IOAS.
            let st = self.iommufds.get_mut(&i).ok_or(VfioError::NotAContainer)?;
            st.ictx.compat_ioas_create();
            if let Some(g) = self.groups.get_mut(&group) {
                g.iommufd = Some(i);
            }
            return Ok(());
        }
        let Some(Object::Container(cid)) = target else {
            return Err(VfioError::NotAContainer);
        };
        let st = self
            .containers
            .get_mut(&cid)
            .ok_or(VfioError::NotAContainer)?;
        st.c.add_group(&mut self.platform, GroupId(group))?;
        if let Some(g) = self.groups.get_mut(&group) {
            g.container = Some(cid);
        }
        Ok(())
    }

    /// `VFIO_GROUP_UNSET_CONTAINER`: EINVAL for a group in no container, EBUSY while it has
    /// open devices; the backend detaches it, and a container left with no group and no open
    /// file is released.
    pub fn unset_container(&mut self, group: u32) -> Result<(), VfioError> {
        let g = self.groups.get(&group).ok_or(VfioError::NoGroup(group))?;
        if let Some(i) = g.iommufd {
            if g.open_devices > 0 {
                return Err(VfioError::DevicesOpen(group));
            }
            if let Some(g) = self.groups.get_mut(&group) {
                g.iommufd = None;
            }
            self.maybe_free_iommufd(i);
            return Ok(());
        }
        let cid = g.container.ok_or(VfioError::NotSet(group))?;
        if g.open_devices > 0 {
            return Err(VfioError::DevicesOpen(group));
        }
        if let Some(st) = self.containers.get_mut(&cid) {
            st.c.remove_group(&mut self.platform, GroupId(group))?;
        }
        if let Some(g) = self.groups.get_mut(&group) {
            g.container = None;
        }
        self.maybe_free_container(cid);
        Ok(())
    }

    /// `VFIO_GROUP_GET_DEVICE_FD` without the fd: ENODEV for a name the group does not have,
    /// EINVAL without a container that has a backend. Returns the device object's id; an
    /// emulated device is registered with the backend for `dma_unmap` (P10).
    pub fn open_device(&mut self, group: u32, name: &str) -> Result<u32, VfioError> {
        let g = self.groups.get(&group).ok_or(VfioError::NoGroup(group))?;
        if !g.devices.iter().any(|d| d == name) {
            return Err(VfioError::NoDevice {
                group,
                name: name.to_string(),
            });
        }
        if let Some(i) = g.iommufd {
            return self.open_compat_device(group, name, i);
        }
        let cid = g.container.ok_or(VfioError::NotSet(group))?;
        if !self.containers.get(&cid).is_some_and(|st| st.c.is_set()) {
            return Err(VfioError::NoBackend(cid));
        }
        Ok(self.new_device(group, name.to_string()))
    }

    /// The container a group is in.
    pub fn group_container(&self, group: u32) -> Option<u32> {
        self.groups.get(&group)?.container
    }

    /// The groups of the machine with their object state: `(id, file open, container, open
    /// device objects)`. Failure checks compare it before and after.
    pub fn group_states(&self) -> Vec<(u32, bool, Option<u32>, u32)> {
        self.groups
            .iter()
            .map(|(id, g)| (*id, g.open, g.container, g.open_devices))
            .collect()
    }

    /// A container's backend and the platform, borrowed apart, for typed engine calls
    /// (MAP_DMA, UNMAP_DMA, DIRTY_PAGES, external pins): the same objects the ioctl table
    /// reaches.
    pub fn engine(&mut self, id: u32) -> Result<(&mut Container, &mut P), VfioError> {
        let st = self
            .containers
            .get_mut(&id)
            .ok_or(VfioError::NoContainer(id))?;
        Ok((&mut st.c, &mut self.platform))
    }

    /// The device object of `name` opened through its group, if one is open.
    pub(crate) fn group_device(&self, name: &str) -> Option<u32> {
        self.devices
            .iter()
            .find(|(_, d)| d.name == name && !d.cdev)
            .map(|(id, _)| *id)
    }

    /// The device object for `name`: the one already open if there is one (a function is one
    /// device however many fds are opened on it, as in the kernel), else a new one.
    pub(crate) fn new_device(&mut self, group: u32, name: String) -> u32 {
        if let Some(id) = self.group_device(&name) {
            return id;
        }
        self.register_emulated(group, &name, true);
        let id = self.fresh_id();
        self.devices.insert(
            id,
            DeviceState {
                group,
                dev: self.model_for(&name),
                name,
                irqs: Irqs::default(),
                cdev: false,
                bound: None,
            },
        );
        if let Some(g) = self.groups.get_mut(&group) {
            g.open_devices += 1;
        }
        id
    }

    /// The last close of an emulated file, with the kernel's consequences: a group whose file
    /// and device fds are all closed leaves its container; a container whose file is closed
    /// and which has no group left is released.
    pub fn close(&mut self, obj: Object) {
        match obj {
            Object::Container(id) => {
                if let Some(c) = self.containers.get_mut(&id) {
                    c.fd_open = false;
                }
                self.maybe_free_container(id);
            }
            Object::Group(id) => {
                if let Some(g) = self.groups.get_mut(&id) {
                    g.open = false;
                }
                self.maybe_release_group(id);
            }
            Object::Iommufd(id) => {
                if let Some(st) = self.iommufds.get_mut(&id) {
                    st.fd_open = false;
                }
                self.maybe_free_iommufd(id);
            }
            Object::Device(id) if self.devices.get(&id).is_some_and(|d| d.cdev) => {
                self.close_cdev(id);
            }
            Object::Device(id) => {
                if let Some(d) = self.devices.remove(&id) {
                    if let Some((i, idev)) = d.bound {
                        self.unbind(i, idev);
                    }
                    self.register_emulated(d.group, &d.name, false);
                    if let Some(g) = self.groups.get_mut(&d.group) {
                        g.open_devices = g.open_devices.saturating_sub(1);
                    }
                    self.maybe_release_group(d.group);
                }
            }
        }
    }

    /// Registers (or unregisters) an emulated device of `group` with its container's
    /// backend, as `vfio_device_container_register` does at the device's first open.
    fn register_emulated(&mut self, group: u32, name: &str, on: bool) {
        let Some(g) = self.groups.get(&group) else {
            return;
        };
        let Some(&(_, dev)) = g.emulated.iter().find(|(n, _)| n == name) else {
            return;
        };
        let Some(st) = g.container.and_then(|c| self.containers.get_mut(&c)) else {
            return;
        };
        if let Ok(t) = st.c.iommu_mut() {
            if on {
                t.register_device(dev);
            } else {
                t.unregister_device(dev);
            }
        }
    }

    fn maybe_release_group(&mut self, id: u32) {
        let Some(g) = self.groups.get_mut(&id) else {
            return;
        };
        if g.open || g.open_devices > 0 {
            return;
        }
        let fd = g.iommufd.take();
        if let Some(i) = fd {
            self.maybe_free_iommufd(i);
            return;
        }
        let Some(g) = self.groups.get_mut(&id) else {
            return;
        };
        if let Some(cid) = g.container.take() {
            self.trace_op("GROUP_RELEASE", format!("group {id}"));
            if let Some(c) = self.containers.get_mut(&cid) {
                // Never fails for a member group.
                let _ = c.c.remove_group(&mut self.platform, GroupId(id));
            }
            self.maybe_free_container(cid);
        }
    }

    pub(crate) fn maybe_free_container(&mut self, id: u32) {
        let free = self
            .containers
            .get(&id)
            .is_some_and(|c| !c.fd_open && c.c.groups().is_empty());
        if free {
            if let Some(mut c) = self.containers.remove(&id) {
                c.c.close(&mut self.platform);
            }
        }
    }

    /// Process exit: every fd is closed, as the kernel does for a process that never unmaps
    /// (QEMU at `quit`). Devices first, then groups (the last group of a container releases
    /// its backend: unmap, unpin, unaccount, detach), then containers.
    pub fn release_all(&mut self) {
        let devs: Vec<u32> = self.devices.keys().copied().collect();
        for d in devs {
            self.close(Object::Device(d));
        }
        let groups: Vec<u32> = self
            .groups
            .iter()
            .filter(|(_, g)| g.open)
            .map(|(id, _)| *id)
            .collect();
        for g in groups {
            self.close(Object::Group(g));
        }
        let fds: Vec<u32> = self.iommufds.keys().copied().collect();
        for i in fds {
            self.close(Object::Iommufd(i));
        }
        let cs: Vec<u32> = self.containers.keys().copied().collect();
        for c in cs {
            self.close(Object::Container(c));
            // A container whose groups are still attached only through state left behind.
            if let Some(mut st) = self.containers.remove(&c) {
                st.c.close(&mut self.platform);
            }
        }
    }

    pub(crate) fn trace_op(&mut self, op: &str, args: String) {
        self.platform.trace(Event::Op {
            op: op.to_string(),
            args,
        });
    }

    pub(crate) fn trace_ret(&mut self, op: &str, r: &Result<i64, Errno>) {
        let result = match r {
            Ok(v) => v.to_string(),
            Err(e) => e.to_string(),
        };
        self.platform.trace(Event::Ret {
            op: op.to_string(),
            result,
        });
    }
}

/// A serial number for the NVMe function `name`: its bus/device/function without separators.
fn serial_of(name: &str) -> String {
    let s: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("T1{s}")
}
