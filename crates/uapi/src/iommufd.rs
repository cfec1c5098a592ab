//! `/dev/iommu` and the VFIO device cdev: the byte layer of `linux/iommufd.h` over
//! [`type1_core::iommufd::Ictx`], and the objects' lifecycle in [`Vfio`].
//!
//! * **iommufd ioctls** (`_IO(';', 0x80 + n)`), in the kernel's order: the leading `u32 size`
//!   is read (EFAULT), the number must be exactly one iommufd knows (ENOTTY), `size` must
//!   reach the struct's last mandatory field (EINVAL), and bytes past the struct this kernel
//!   knows must be zero (E2BIG); then the handler. Replies go back as
//!   `min(size, struct size)` bytes. Object ids are checked by type: ENOENT for a missing
//!   object or one of another type.
//! * **The compat container**: every other number on `/dev/iommu` is a VFIO container ioctl,
//!   served on the context's compat IOAS as iommufd's `vfio_compat.c` serves it (spec X5; the
//!   differences from type1 are in `docs/iommufd.md`).
//! * **The device cdev** (`/dev/vfio/devices/vfioN`): `VFIO_DEVICE_BIND_IOMMUFD`,
//!   `ATTACH_IOMMUFD_PT` and `DETACH_IOMMUFD_PT`; every other device ioctl, and register
//!   access, is EINVAL until the file is bound.

use type1_core::{
    abi::*,
    iommufd::{AccountMode, FillPolicy, Ictx, IoasMap, ObjType},
    Errno, GroupId, IovaRange, Platform, Prot, PAGE_SIZE,
};

use vfio_bindings::bindings::vfio as b;

use crate::{
    caller::{put_u32, put_u64, read_struct, read_vec, u32_at, u64_at, Caller},
    nr::*,
    vfio::{DeviceState, IommufdState, Irqs, Object, Vfio, VfioError},
};

/// One iommufd command: `(number, struct size, minimum size)`.
const OPS: &[(u64, usize, usize)] = &[
    (IOMMU_DESTROY, 8, 8),
    (IOMMU_IOAS_ALLOC, 12, 12),
    (IOMMU_IOAS_ALLOW_IOVAS, 24, 24),
    (IOMMU_IOAS_COPY, 40, 40),
    (IOMMU_IOAS_IOVA_RANGES, 32, 32),
    (IOMMU_IOAS_MAP, 40, 40),
    (IOMMU_IOAS_UNMAP, 24, 24),
    (IOMMU_OPTION, 24, 24),
    (IOMMU_VFIO_IOAS, 12, 12),
    (IOMMU_HWPT_ALLOC, 48, 24),
    (IOMMU_GET_HW_INFO, 40, 32),
];

const MAP_FIXED_IOVA: u32 = 1;
const MAP_WRITEABLE: u32 = 2;
const MAP_READABLE: u32 = 4;
/// `IOMMU_HW_INFO_TYPE_INTEL_VTD`.
const HW_INFO_TYPE_INTEL_VTD: u32 = 1;
/// VT-d ECAP bit 7: snoop control (the IOMMU can force DMA to snoop: coherency enforceable).
const VTD_ECAP_SC: u64 = 1 << 7;

fn prot_of(flags: u32) -> Prot {
    Prot {
        read: flags & MAP_READABLE != 0,
        write: flags & MAP_WRITEABLE != 0,
    }
}

impl<P: Platform> Vfio<P> {
    /// Opens `/dev/iommu`: a new, empty iommufd context with this subsystem's flush policy
    /// (an iommufd fill policy of the same name: `none`, `seed` or `seed-fixed`; any other type1
    /// policy name gets `seed`).
    pub fn open_iommufd(&mut self) -> Object {
        let id = self.fresh_id();
        let policy = FillPolicy::from_name(&self.policy).unwrap_or(FillPolicy::Seed);
        self.iommufds.insert(
            id,
            IommufdState {
                ictx: Ictx::new(policy),
                fd_open: true,
            },
        );
        Object::Iommufd(id)
    }

    /// Opens a device's cdev (`/dev/vfio/devices/vfioN`): a file that can do nothing but
    /// `VFIO_DEVICE_BIND_IOMMUFD` yet. ENODEV for a name the machine does not have.
    pub fn open_cdev(&mut self, name: &str) -> Result<Object, Errno> {
        let group = self.group_of_device(name).ok_or(Errno::ENODEV)?;
        let id = self.fresh_id();
        self.devices.insert(
            id,
            DeviceState {
                group,
                name: name.to_string(),
                dev: self.model_for(name),
                irqs: Irqs::default(),
                cdev: true,
                bound: None,
            },
        );
        Ok(Object::Device(id))
    }

    /// The iommufd context behind an object id (inspection and checks).
    pub fn iommufd(&self, id: u32) -> Option<&Ictx> {
        self.iommufds.get(&id).map(|s| &s.ictx)
    }

    /// Configures a context that holds no object yet: its fill policy (`None` keeps the one
    /// it was opened with) and the pages a fill pins, flushes and maps per step (`None`: the
    /// platform's pin batch; a model checker uses one page, so that a fill can fail between
    /// batches of a small mapping). ENOENT if there is no such context, EBUSY if it holds
    /// objects.
    pub fn configure_iommufd(
        &mut self,
        id: u32,
        policy: Option<FillPolicy>,
        batch: Option<u64>,
    ) -> Result<(), Errno> {
        let st = self.iommufds.get_mut(&id).ok_or(Errno::ENOENT)?;
        if !st.ictx.is_empty() {
            return Err(Errno::EBUSY);
        }
        if let Some(p) = policy {
            st.ictx = Ictx::new(p);
        }
        st.ictx.batch_pages = batch;
        Ok(())
    }

    /// The iommufd device id of a bound device file (its `out_devid`), if it is bound.
    pub fn bound_devid(&self, dev: u32) -> Option<u32> {
        self.devices.get(&dev)?.bound.map(|b| b.1)
    }

    /// Every iommufd context, with its id.
    pub fn iommufds(&self) -> impl Iterator<Item = (u32, &Ictx)> {
        self.iommufds.iter().map(|(i, s)| (*i, &s.ictx))
    }

    /// GET_DEVICE_FD on a group in a compat container: the device is bound to the iommufd
    /// and attached to its compat IOAS as it opens (`vfio_df_group_open`).
    pub(crate) fn open_compat_device(
        &mut self,
        group: u32,
        name: &str,
        ictx: u32,
    ) -> Result<u32, VfioError> {
        if let Some(id) = self.group_device(name) {
            return Ok(id);
        }
        let st = self
            .iommufds
            .get_mut(&ictx)
            .ok_or(VfioError::NotSet(group))?;
        let ioas = st
            .ictx
            .compat_ioas()
            .map_err(|_| VfioError::NotSet(group))?;
        let idev = st.ictx.bind(GroupId(group));
        if let Err(e) = st.ictx.attach(&mut self.platform, idev, ioas) {
            st.ictx.unbind(&mut self.platform, idev);
            return Err(VfioError::Iommufd(e));
        }
        let dev = self.new_device(group, name.to_string());
        if let Some(d) = self.devices.get_mut(&dev) {
            d.bound = Some((ictx, idev));
        }
        Ok(dev)
    }

    /// The unbind at a bound device file's close.
    pub(crate) fn unbind(&mut self, ictx: u32, idev: u32) {
        if let Some(st) = self.iommufds.get_mut(&ictx) {
            st.ictx.unbind(&mut self.platform, idev);
        }
        self.maybe_free_iommufd(ictx);
    }

    pub(crate) fn close_cdev(&mut self, id: u32) {
        let Some(d) = self.devices.remove(&id) else {
            return;
        };
        if let Some((i, idev)) = d.bound {
            self.unbind(i, idev);
            if let Some(g) = self.groups.get_mut(&d.group) {
                g.cdev_bound = g.cdev_bound.saturating_sub(1);
            }
        }
    }

    /// An iommufd context is released when its file is closed and no device or group holds
    /// it any more.
    pub(crate) fn maybe_free_iommufd(&mut self, id: u32) {
        let held = self
            .devices
            .values()
            .any(|d| d.bound.is_some_and(|b| b.0 == id))
            || self.groups.values().any(|g| g.iommufd == Some(id));
        if held || self.iommufds.get(&id).is_none_or(|s| s.fd_open) {
            return;
        }
        if let Some(mut st) = self.iommufds.remove(&id) {
            st.ictx.close(&mut self.platform);
        }
    }

    fn ictx(&mut self, id: u32) -> Result<(&mut Ictx, &mut P), Errno> {
        let st = self.iommufds.get_mut(&id).ok_or(Errno::EBADF)?;
        Ok((&mut st.ictx, &mut self.platform))
    }

    /// One ioctl on `/dev/iommu`.
    pub(crate) fn iommufd_ioctl(
        &mut self,
        id: u32,
        req: u64,
        arg: u64,
        caller: &mut dyn Caller,
    ) -> Result<i64, Errno> {
        let nr = req & 0xff;
        let ours = (req >> 8) & 0xff == VFIO_TYPE && (req >> 16) == 0;
        if !(ours && (0x80..=IOMMUFD_CMD_LAST).contains(&nr)) {
            return self.compat_ioctl(id, req, arg, caller);
        }
        let size = u32_at(&read_vec(caller, arg, 4)?, 0) as usize;
        let Some(&(_, ksize, min)) = OPS.iter().find(|o| o.0 == req) else {
            // Numbers iommufd has for what this IOMMU lacks: nested and dirty-tracking HWPTs,
            // vIOMMUs, fault and event queues, MAP_FILE, CHANGE_PROCESS.
            return Err(Errno::EOPNOTSUPP);
        };
        if size < min {
            return Err(Errno::EINVAL);
        }
        let mut cmd = read_struct(caller, arg, size, ksize)?;
        let reply = |caller: &mut dyn Caller, cmd: &[u8]| -> Result<(), Errno> {
            caller.write(arg, &cmd[..size.min(ksize)])
        };
        match req {
            IOMMU_DESTROY => {
                let (ictx, p) = self.ictx(id)?;
                ictx.destroy(p, u32_at(&cmd, 4))?;
                Ok(0)
            }
            IOMMU_IOAS_ALLOC => {
                if u32_at(&cmd, 4) != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let (ictx, _) = self.ictx(id)?;
                let ioas = ictx.ioas_alloc();
                put_u32(&mut cmd, 8, ioas);
                self.reply_or_undo(id, reply(caller, &cmd), |x, p| {
                    let _ = x.destroy(p, ioas);
                })
            }
            IOMMU_IOAS_IOVA_RANGES => {
                if u32_at(&cmd, 12) != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let max = u32_at(&cmd, 8) as usize;
                let ranges = {
                    let st = self.iommufds.get(&id).ok_or(Errno::EBADF)?;
                    st.ictx.iova_ranges(&self.platform, u32_at(&cmd, 4))?
                };
                let uptr = u64_at(&cmd, 16);
                for (k, r) in ranges.iter().take(max).enumerate() {
                    let mut b = [0u8; 16];
                    put_u64(&mut b, 0, r.start);
                    put_u64(&mut b, 8, r.last);
                    caller.write(uptr + 16 * k as u64, &b)?;
                }
                put_u32(&mut cmd, 8, ranges.len() as u32);
                put_u64(&mut cmd, 24, PAGE_SIZE);
                reply(caller, &cmd)?;
                if ranges.len() > max {
                    return Err(Errno::EMSGSIZE);
                }
                Ok(0)
            }
            IOMMU_IOAS_ALLOW_IOVAS => {
                if u32_at(&cmd, 12) != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let n = u32_at(&cmd, 8) as usize;
                let uptr = u64_at(&cmd, 16);
                let mut ranges = Vec::with_capacity(n.min(4096));
                for k in 0..n {
                    let b = read_vec(caller, uptr + 16 * k as u64, 16)?;
                    let (start, last) = (u64_at(&b, 0), u64_at(&b, 8));
                    if start > last {
                        return Err(Errno::EINVAL);
                    }
                    ranges.push(IovaRange { start, last });
                }
                let (ictx, _) = self.ictx(id)?;
                ictx.allow_iovas(u32_at(&cmd, 4), ranges)?;
                Ok(0)
            }
            IOMMU_IOAS_MAP => {
                let flags = u32_at(&cmd, 4);
                if flags & !(MAP_FIXED_IOVA | MAP_WRITEABLE | MAP_READABLE) != 0
                    || u32_at(&cmd, 12) != 0
                {
                    return Err(Errno::EOPNOTSUPP);
                }
                let (uptr, length, iova) = (u64_at(&cmd, 16), u64_at(&cmd, 24), u64_at(&cmd, 32));
                if iova == u64::MAX || length == u64::MAX {
                    return Err(Errno::EOVERFLOW);
                }
                if flags & (MAP_WRITEABLE | MAP_READABLE) == 0 {
                    return Err(Errno::EINVAL);
                }
                let ioas = u32_at(&cmd, 8);
                let req = IoasMap {
                    ioas,
                    uptr,
                    length,
                    iova: (flags & MAP_FIXED_IOVA != 0).then_some(iova),
                    prot: prot_of(flags),
                };
                let (ictx, p) = self.ictx(id)?;
                let at = ictx.map(p, req)?;
                put_u64(&mut cmd, 32, at);
                self.reply_or_undo(id, reply(caller, &cmd), |x, p| {
                    let _ = x.unmap(p, ioas, at, length, false);
                })
            }
            IOMMU_IOAS_COPY => {
                let flags = u32_at(&cmd, 4);
                if flags & !(MAP_FIXED_IOVA | MAP_WRITEABLE | MAP_READABLE) != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let (length, dst_iova, src_iova) =
                    (u64_at(&cmd, 16), u64_at(&cmd, 24), u64_at(&cmd, 32));
                if [length, dst_iova, src_iova].contains(&u64::MAX) {
                    return Err(Errno::EOVERFLOW);
                }
                if flags & (MAP_WRITEABLE | MAP_READABLE) == 0 {
                    return Err(Errno::EINVAL);
                }
                let (dst, src) = (u32_at(&cmd, 8), u32_at(&cmd, 12));
                let fixed = (flags & MAP_FIXED_IOVA != 0).then_some(dst_iova);
                let (ictx, p) = self.ictx(id)?;
                let at = ictx.copy(p, src, src_iova, length, dst, fixed, prot_of(flags))?;
                put_u64(&mut cmd, 24, at);
                self.reply_or_undo(id, reply(caller, &cmd), |x, p| {
                    let _ = x.unmap(p, dst, at, length, false);
                })
            }
            IOMMU_IOAS_UNMAP => {
                let (ioas, iova, length) = (u32_at(&cmd, 4), u64_at(&cmd, 8), u64_at(&cmd, 16));
                let (ictx, p) = self.ictx(id)?;
                // The IOAS is looked up before the range is checked.
                if ictx.obj_type(ioas)? != ObjType::Ioas {
                    return Err(Errno::ENOENT);
                }
                let (unmapped, r) = if iova == 0 && length == u64::MAX {
                    ictx.unmap_all(p, ioas)
                } else if iova == u64::MAX || length == u64::MAX {
                    return Err(Errno::EOVERFLOW);
                } else {
                    match ictx.unmap(p, ioas, iova, length, false) {
                        (0, Ok(())) => return Err(Errno::ENOENT),
                        x => x,
                    }
                };
                r?;
                put_u64(&mut cmd, 16, unmapped);
                reply(caller, &cmd)?;
                Ok(0)
            }
            IOMMU_OPTION => self.option(id, &mut cmd, caller, arg),
            IOMMU_VFIO_IOAS => {
                if u32_at(&cmd, 8) >> 16 != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let op = u32_at(&cmd, 8) & 0xffff;
                let (ictx, _) = self.ictx(id)?;
                match op {
                    0 => {
                        put_u32(&mut cmd, 4, ictx.compat_ioas()?);
                        reply(caller, &cmd)?;
                    }
                    1 => ictx.set_vfio_ioas(Some(u32_at(&cmd, 4)))?,
                    2 => ictx.set_vfio_ioas(None)?,
                    _ => return Err(Errno::EOPNOTSUPP),
                }
                Ok(0)
            }
            IOMMU_HWPT_ALLOC => {
                // Paging HWPTs only: no flags (nesting parents, dirty tracking, PASID and
                // fault queues need what this IOMMU does not have), no driver data.
                if u32_at(&cmd, 4) != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                if u32_at(&cmd, 20) != 0 || u32_at(&cmd, 24) != 0 || u32_at(&cmd, 28) != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let (dev, pt) = (u32_at(&cmd, 8), u32_at(&cmd, 12));
                let (ictx, p) = self.ictx(id)?;
                ictx.idev(dev)?;
                if ictx.obj_type(pt)? != ObjType::Ioas {
                    return Err(Errno::EINVAL);
                }
                let hwpt = ictx.hwpt_alloc(p, dev, pt)?;
                put_u32(&mut cmd, 16, hwpt);
                self.reply_or_undo(id, reply(caller, &cmd), |x, p| {
                    let _ = x.destroy(p, hwpt);
                })
            }
            IOMMU_GET_HW_INFO => {
                if u32_at(&cmd, 4) != 0 || cmd[29..32].iter().any(|b| *b != 0) {
                    return Err(Errno::EOPNOTSUPP);
                }
                let group = {
                    let (ictx, _) = self.ictx(id)?;
                    ictx.idev(u32_at(&cmd, 8))?.group
                };
                let sc = type1_core::iommufd::snoop_control(&mut self.platform, group)?;
                let mut vtd = [0u8; 24];
                put_u64(&mut vtd, 16, if sc { VTD_ECAP_SC } else { 0 });
                let len = (u32_at(&cmd, 12) as usize).min(vtd.len());
                if len > 0 {
                    caller.write(u64_at(&cmd, 16), &vtd[..len])?;
                }
                put_u32(&mut cmd, 12, vtd.len() as u32);
                put_u32(&mut cmd, 24, HW_INFO_TYPE_INTEL_VTD);
                put_u64(&mut cmd, 32, 0);
                reply(caller, &cmd)?;
                Ok(0)
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    /// A reply that could not be written undoes what the call made (a failed copy-out leaves
    /// nothing behind, as `iommufd_ucmd_respond`'s callers abort their new object).
    fn reply_or_undo(
        &mut self,
        id: u32,
        written: Result<(), Errno>,
        undo: impl FnOnce(&mut Ictx, &mut P),
    ) -> Result<i64, Errno> {
        if let Err(e) = written {
            let (ictx, p) = self.ictx(id)?;
            undo(ictx, p);
            return Err(e);
        }
        Ok(0)
    }

    fn option(
        &mut self,
        id: u32,
        cmd: &mut [u8],
        caller: &mut dyn Caller,
        arg: u64,
    ) -> Result<i64, Errno> {
        let (option, op, reserved, object) = (
            u32_at(cmd, 4),
            u32_at(cmd, 8) & 0xffff,
            u32_at(cmd, 8) >> 16,
            u32_at(cmd, 12),
        );
        if reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let val = u64_at(cmd, 16);
        let (ictx, _) = self.ictx(id)?;
        let out = match (option, op) {
            // RLIMIT_MODE: context wide (object 0).
            (0, _) if object != 0 => return Err(Errno::EOPNOTSUPP),
            (0, 1) => (ictx.account_mode() == AccountMode::Mm) as u64,
            (0, 0) => {
                let mode = match val {
                    0 => AccountMode::User,
                    1 => AccountMode::Mm,
                    _ => return Err(Errno::EINVAL),
                };
                ictx.set_account_mode(mode)?;
                val
            }
            // HUGE_PAGES: per IOAS.
            (1, 1) => ictx.huge_pages(object)? as u64,
            (1, 0) => {
                match val {
                    0 | 1 => ictx.set_huge_pages(object, val == 1)?,
                    _ => return Err(Errno::EINVAL),
                }
                val
            }
            (0 | 1, _) => return Err(Errno::EOPNOTSUPP),
            _ => return Err(Errno::EOPNOTSUPP),
        };
        caller.write(arg + 16, &out.to_ne_bytes())?;
        Ok(0)
    }

    /// The VFIO container ioctls on `/dev/iommu` (iommufd's compat layer, spec X5).
    fn compat_ioctl(
        &mut self,
        id: u32,
        req: u64,
        arg: u64,
        caller: &mut dyn Caller,
    ) -> Result<i64, Errno> {
        match req {
            VFIO_GET_API_VERSION => Ok(VFIO_API_VERSION as i64),
            VFIO_CHECK_EXTENSION => {
                let (ictx, _) = self.ictx(id)?;
                Ok(match u32::try_from(arg).unwrap_or(u32::MAX) {
                    VFIO_TYPE1_IOMMU | VFIO_TYPE1V2_IOMMU | VFIO_UNMAP_ALL => 1,
                    VFIO_DMA_CC_IOMMU => {
                        let ioas = ictx.compat_ioas()?;
                        ictx.all_coherent(ioas)? as i64
                    }
                    _ => 0,
                })
            }
            VFIO_SET_IOMMU => {
                let ty = u32::try_from(arg).unwrap_or(u32::MAX);
                if ty != VFIO_TYPE1_IOMMU && ty != VFIO_TYPE1V2_IOMMU {
                    return Err(Errno::EINVAL);
                }
                let (ictx, _) = self.ictx(id)?;
                let ioas = ictx.compat_ioas()?;
                if ty == VFIO_TYPE1_IOMMU {
                    ictx.set_huge_pages(ioas, false)?;
                }
                Ok(0)
            }
            VFIO_IOMMU_GET_INFO => self.compat_get_info(id, arg, caller),
            VFIO_IOMMU_MAP_DMA => {
                let h = read_vec(caller, arg, 32)?;
                let flags = u32_at(&h, 4);
                if (u32_at(&h, 0) as usize) < 32 || flags & !3 != 0 {
                    return Err(Errno::EINVAL);
                }
                let (ictx, p) = self.ictx(id)?;
                let ioas = ictx.compat_ioas()?;
                ictx.map(
                    p,
                    IoasMap {
                        ioas,
                        uptr: u64_at(&h, 8),
                        length: u64_at(&h, 24),
                        iova: Some(u64_at(&h, 16)),
                        prot: Prot {
                            read: flags & 1 != 0,
                            write: flags & 2 != 0,
                        },
                    },
                )?;
                Ok(0)
            }
            VFIO_IOMMU_UNMAP_DMA => {
                let mut h = read_vec(caller, arg, 24)?;
                let flags = u32_at(&h, 4);
                if (u32_at(&h, 0) as usize) < 24 || flags & !b::VFIO_DMA_UNMAP_FLAG_ALL != 0 {
                    return Err(Errno::EINVAL);
                }
                let (iova, size) = (u64_at(&h, 8), u64_at(&h, 16));
                let (ictx, p) = self.ictx(id)?;
                let ioas = ictx.compat_ioas()?;
                let (unmapped, r) = if flags & b::VFIO_DMA_UNMAP_FLAG_ALL != 0 {
                    if iova != 0 || size != 0 {
                        return Err(Errno::EINVAL);
                    }
                    ictx.unmap_all(p, ioas)
                } else {
                    let cut = !ictx.huge_pages(ioas)?;
                    ictx.unmap(p, ioas, iova, size, cut)
                };
                // The compat layer writes the size back even when the unmap failed.
                put_u64(&mut h, 16, unmapped);
                caller.write(arg, &h)?;
                r?;
                Ok(0)
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    /// Compat GET_INFO: page sizes, then the DMA_AVAIL and IOVA_RANGE capabilities.
    fn compat_get_info(
        &mut self,
        id: u32,
        arg: u64,
        caller: &mut dyn Caller,
    ) -> Result<i64, Errno> {
        let h = read_vec(caller, arg, 16)?;
        let argsz = u32_at(&h, 0) as usize;
        if argsz < 16 {
            return Err(Errno::EINVAL);
        }
        let st = self.iommufds.get(&id).ok_or(Errno::EBADF)?;
        let ioas = st.ictx.compat_ioas()?;
        let pgsizes = st.ictx.pgsizes(&self.platform, ioas)?;
        let ranges = st.ictx.iova_ranges(&self.platform, ioas)?;
        const HDR: usize = crate::info::HEADER_SIZE;
        // DMA_AVAIL first, then IOVA_RANGE, as iommufd's compat layer lists them.
        let chain = crate::info::encode_chain(vec![
            crate::info::dma_avail_cap(u32::MAX),
            crate::info::iova_range_cap(&ranges),
        ]);
        let total = HDR + chain.len();
        let mut out = vec![0u8; HDR];
        let mut cap_offset = 0u32;
        if argsz >= total {
            caller.write(arg + HDR as u64, &chain)?;
            cap_offset = HDR as u32;
        }
        put_u32(&mut out, 0, total as u32);
        put_u32(
            &mut out,
            4,
            b::VFIO_IOMMU_INFO_PGSIZES | b::VFIO_IOMMU_INFO_CAPS,
        );
        put_u64(&mut out, 8, pgsizes);
        put_u32(&mut out, 16, cap_offset);
        caller.write(arg, &out[..argsz.min(HDR)])?;
        Ok(0)
    }

    /// Whether a device-file request is this module's: the iommufd ioctls of any device file,
    /// and everything on a cdev that is not bound yet (which [`Self::cdev_ioctl`] refuses).
    pub(crate) fn cdev_claims(&self, dev: u32, req: u64) -> bool {
        let iommufd_req = matches!(
            req,
            VFIO_DEVICE_BIND_IOMMUFD
                | VFIO_DEVICE_ATTACH_IOMMUFD_PT
                | VFIO_DEVICE_DETACH_IOMMUFD_PT
        );
        self.devices
            .get(&dev)
            .is_some_and(|d| iommufd_req || (d.cdev && d.bound.is_none()))
    }

    /// A request [`Self::cdev_claims`]: BIND only on a cdev, ATTACH and DETACH only on a
    /// bound one; EINVAL for everything else (a group's device file, an unbound cdev).
    pub(crate) fn cdev_ioctl(
        &mut self,
        dev: u32,
        req: u64,
        arg: u64,
        caller: &mut dyn Caller,
    ) -> Result<i64, Errno> {
        let d = self.devices.get(&dev).ok_or(Errno::EBADF)?;
        let (cdev, bound, group) = (d.cdev, d.bound, d.group);
        match (req, bound) {
            _ if !cdev => Err(Errno::EINVAL),
            (VFIO_DEVICE_BIND_IOMMUFD, _) => self.bind(dev, group, arg, caller),
            (VFIO_DEVICE_ATTACH_IOMMUFD_PT, Some((i, idev))) => {
                let h = read_vec(caller, arg, 12)?;
                if (u32_at(&h, 0) as usize) < 12 || u32_at(&h, 4) != 0 {
                    return Err(Errno::EINVAL);
                }
                let (ictx, p) = self.ictx(i)?;
                let hwpt = ictx.attach(p, idev, u32_at(&h, 8))?;
                let written = caller.write(arg + 8, &hwpt.to_ne_bytes());
                self.reply_or_undo(i, written, |x, p| x.detach(p, idev))
            }
            (VFIO_DEVICE_DETACH_IOMMUFD_PT, Some((i, idev))) => {
                let h = read_vec(caller, arg, 8)?;
                if (u32_at(&h, 0) as usize) < 8 || u32_at(&h, 4) != 0 {
                    return Err(Errno::EINVAL);
                }
                let (ictx, p) = self.ictx(i)?;
                ictx.detach(p, idev);
                Ok(0)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// `VFIO_DEVICE_BIND_IOMMUFD`, in the kernel's order: argsz (EINVAL), a zero tail (E2BIG),
    /// the fd and flags (EINVAL), the group's file (EBUSY), a second bind (EINVAL), the fd's
    /// file (EBADF for none, EINVAL for a file that is not an iommufd); then `out_devid`.
    fn bind(
        &mut self,
        dev: u32,
        group: u32,
        arg: u64,
        caller: &mut dyn Caller,
    ) -> Result<i64, Errno> {
        let size = u32_at(&read_vec(caller, arg, 4)?, 0) as usize;
        if size < 16 {
            return Err(Errno::EINVAL);
        }
        let h = read_struct(caller, arg, size, 24)?;
        let (flags, fd) = (u32_at(&h, 4), u32_at(&h, 8) as i32);
        if fd < 0 || flags & !1 != 0 {
            return Err(Errno::EINVAL);
        }
        if flags & 1 != 0 {
            // A VF token: these functions are no SR-IOV PFs.
            return Err(Errno::EINVAL);
        }
        if self.groups.get(&group).is_some_and(|g| g.open) {
            return Err(Errno::EBUSY);
        }
        if self.devices.get(&dev).is_some_and(|d| d.bound.is_some())
            || self
                .devices
                .iter()
                .any(|(k, d)| *k != dev && d.group == group && (d.bound.is_some() || !d.cdev))
        {
            return Err(Errno::EINVAL);
        }
        let Some(Object::Iommufd(i)) = caller.object_of_fd(fd)? else {
            return Err(Errno::EBADFD);
        };
        let (ictx, _) = self.ictx(i)?;
        let idev = ictx.bind(GroupId(group));
        if let Err(e) = caller.write(arg + 12, &idev.to_ne_bytes()) {
            let (ictx, p) = self.ictx(i)?;
            ictx.unbind(p, idev);
            return Err(e);
        }
        if let Some(d) = self.devices.get_mut(&dev) {
            d.bound = Some((i, idev));
        }
        if let Some(g) = self.groups.get_mut(&group) {
            g.cdev_bound += 1;
        }
        Ok(0)
    }
}
