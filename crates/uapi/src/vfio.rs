//! [`Vfio`]: the VFIO core's objects (containers, groups, devices) and their lifecycle.
//!
//! This is the part of `vfio_main.c`/`group.c`/`container.c` that owns objects: which group
//! is open, which container it sits in, how many device fds it has handed out, and what the
//! last close of each does. The ioctl handlers that act on these objects are in
//! [`crate::table`].

use std::collections::BTreeMap;

use type1_core::{Config, Container, Errno, Event, GroupId, Platform};

use crate::device::PciDevice;

/// An emulated open file. Numbers collide across kinds, so every dispatch starts here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Object {
    /// `/dev/vfio/vfio`: a container, by id.
    Container(u32),
    /// `/dev/vfio/N`: a group, by group number.
    Group(u32),
    /// A device fd from `VFIO_GROUP_GET_DEVICE_FD`, by id.
    Device(u32),
}

/// A group of the machine: its number and its devices' names (`0000:00:04.0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    /// Group number (`/dev/vfio/N`).
    pub id: u32,
    /// Device names, as `VFIO_GROUP_GET_DEVICE_FD` expects them.
    pub devices: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct GroupState {
    pub devices: Vec<String>,
    pub open: bool,
    pub container: Option<u32>,
    pub open_devices: u32,
}

#[derive(Debug)]
pub(crate) struct ContainerState {
    pub c: Container,
    pub fd_open: bool,
}

#[derive(Debug)]
pub(crate) struct DeviceState {
    pub group: u32,
    pub name: String,
    pub dev: PciDevice,
}

/// The emulated VFIO subsystem of one process, over platform `P`.
#[derive(Debug)]
pub struct Vfio<P: Platform> {
    /// The platform the engine runs on.
    pub platform: P,
    pub(crate) cfg: Config,
    pub(crate) policy: String,
    pub(crate) groups: BTreeMap<u32, GroupState>,
    pub(crate) containers: BTreeMap<u32, ContainerState>,
    pub(crate) devices: BTreeMap<u32, DeviceState>,
    next_id: u32,
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
                        devices: g.devices.clone(),
                        open: false,
                        container: None,
                        open_devices: 0,
                    },
                )
            })
            .collect();
        Ok(Vfio {
            platform,
            cfg,
            policy: policy.to_string(),
            groups,
            containers: BTreeMap::new(),
            devices: BTreeMap::new(),
            next_id: 0,
        })
    }

    fn fresh_id(&mut self) -> u32 {
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
        if g.open {
            return Err(Errno::EBUSY);
        }
        g.open = true;
        Ok(Object::Group(id))
    }

    pub(crate) fn new_device(&mut self, group: u32, name: String) -> u32 {
        let id = self.fresh_id();
        self.devices.insert(
            id,
            DeviceState {
                group,
                name,
                dev: PciDevice::new(),
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
            Object::Device(id) => {
                if let Some(d) = self.devices.remove(&id) {
                    if let Some(g) = self.groups.get_mut(&d.group) {
                        g.open_devices = g.open_devices.saturating_sub(1);
                    }
                    self.maybe_release_group(d.group);
                }
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

    /// The name of an open device (`0000:00:04.0`).
    pub fn device_name(&self, dev: u32) -> Option<&str> {
        self.devices.get(&dev).map(|d| d.name.as_str())
    }

    /// `pread`/`pwrite` on a device fd at file offset `pos`.
    pub fn device_rw(
        &mut self,
        dev: u32,
        pos: u64,
        buf: &mut [u8],
        write: bool,
    ) -> Result<usize, Errno> {
        let d = self.devices.get_mut(&dev).ok_or(Errno::EBADF)?;
        d.dev.rw(pos, buf, write)
    }
}
