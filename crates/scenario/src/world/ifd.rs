//! The world's side of iommufd lines ([`crate::parse::ifd`]): each is the ioctl an
//! unmodified program would issue, built as bytes in the raw caller's scratch memory and run
//! through the uAPI table on the world's [`type1_uapi::Vfio`], so the scenario suite, the
//! fault sweep and the model checker drive the code the preload library serves. This module
//! keeps the names: `/dev/iommu` files, IOAS and HWPT objects (with the context they live in),
//! and each device's cdev.

use std::collections::BTreeMap;

use type1_core::Prot;
use type1_uapi::{nr, Caller, Object};

use super::{errno, usage, StepError, World};
use crate::{
    parse::ifd::IfdOp,
    raw::{Arg, Item, ARG_BASE},
};

/// Names of the iommufd side of a world.
#[derive(Clone, Debug, Default)]
pub struct IfdNames {
    /// Object name -> (its `/dev/iommu` file name, object id).
    objs: BTreeMap<String, (String, u32)>,
    /// Device name -> the `/dev/iommu` file it is bound to.
    bound: BTreeMap<String, String>,
}

const MAP_FIXED_IOVA: u64 = 1;
const MAP_WRITEABLE: u64 = 2;
const MAP_READABLE: u64 = 4;

fn u32i(v: u64) -> Item {
    Item::Int { bytes: 4, value: v }
}

fn u64i(v: u64) -> Item {
    Item::Int { bytes: 8, value: v }
}

fn access(p: Prot) -> u64 {
    (if p.read { MAP_READABLE } else { 0 }) | (if p.write { MAP_WRITEABLE } else { 0 })
}

/// The raw file name of a device's cdev.
fn cdev_file(device: &str) -> String {
    format!("cdev:{device}")
}

impl World {
    /// The id of a named IOAS or HWPT.
    pub fn ifd_object(&self, name: &str) -> Option<u32> {
        self.ifd.objs.get(name).map(|x| x.1)
    }

    /// Every named IOAS and HWPT, with its `/dev/iommu` file and id, by name.
    pub fn ifd_objects(&self) -> Vec<(&str, &str, u32)> {
        self.ifd
            .objs
            .iter()
            .map(|(n, (f, id))| (n.as_str(), f.as_str(), *id))
            .collect()
    }

    /// The `/dev/iommu` file and id of a named object.
    fn ifd_obj(&self, name: &str) -> Result<(String, u32), StepError> {
        match self.ifd.objs.get(name) {
            Some(x) => Ok(x.clone()),
            None => usage(format!("no IOAS or HWPT named {name:?}")),
        }
    }

    /// The `/dev/iommu` file a device is bound to.
    fn ifd_bound(&self, device: &str) -> Result<String, StepError> {
        match self.ifd.bound.get(device) {
            Some(f) => Ok(f.clone()),
            None => usage(format!(
                "device {device:?} is not bound: add `bind {device} ...`"
            )),
        }
    }

    /// Builds `items` at the argument address and issues `req` on file `file`.
    fn ifd_ioctl(&mut self, file: &str, req: u64, items: &[Item]) -> Result<(), StepError> {
        self.raw_ioctl(file, req, &Arg::Buf(items.to_vec()), None)
    }

    /// A `u32` of the last argument, as the kernel wrote it back.
    fn ifd_out32(&self, off: u64) -> u32 {
        self.raw.read_int(ARG_BASE + off, 4) as u32
    }

    fn ifd_new_file(&mut self, name: &str, obj: Object) -> Result<(), StepError> {
        let fd = self
            .raw
            .caller
            .new_fd(obj)
            .map_err(|e| errno(e, "no fd".to_string()))?;
        self.raw.files.insert(name.to_string(), fd);
        Ok(())
    }

    fn ifd_name_free(&self, name: &str) -> Result<(), StepError> {
        if self.ifd.objs.contains_key(name) {
            return usage(format!("an object named {name:?} exists"));
        }
        Ok(())
    }

    /// Executes one iommufd line.
    pub(crate) fn exec_iommufd(&mut self, op: &IfdOp) -> Result<(), StepError> {
        match op {
            IfdOp::Open {
                name,
                policy,
                batch,
            } => {
                if self.raw.files.contains_key(name) {
                    return usage(format!("file {name:?} is already open"));
                }
                let obj = self.vfio.open_iommufd();
                if let Object::Iommufd(id) = obj {
                    self.vfio
                        .configure_iommufd(id, *policy, *batch)
                        .map_err(|e| errno(e, "configure iommufd"))?;
                }
                self.ifd_new_file(name, obj)
            }
            IfdOp::Ioas { name, ictx } => {
                self.ifd_name_free(name)?;
                self.ifd_ioctl(ictx, nr::IOMMU_IOAS_ALLOC, &[u32i(12), u32i(0), u32i(0)])?;
                let id = self.ifd_out32(8);
                self.ifd.objs.insert(name.clone(), (ictx.clone(), id));
                Ok(())
            }
            IfdOp::Bind { device, ictx } => {
                let file = cdev_file(device);
                if self.raw.files.contains_key(&file) {
                    return usage(format!("device {device:?} already has its cdev open"));
                }
                let obj = self
                    .vfio
                    .open_cdev(device)
                    .map_err(|e| errno(e, format!("open the cdev of {device}")))?;
                self.ifd_new_file(&file, obj)?;
                let bind = [u32i(16), u32i(0), Item::Fd(ictx.clone()), u32i(0)];
                if let Err(e) = self.ifd_ioctl(&file, nr::VFIO_DEVICE_BIND_IOMMUFD, &bind) {
                    self.ifd_close_cdev(device);
                    return Err(e);
                }
                self.ifd.bound.insert(device.clone(), ictx.clone());
                Ok(())
            }
            IfdOp::Unbind { device } => {
                if !self.ifd_close_cdev(device) {
                    return usage(format!("device {device:?} has no cdev open"));
                }
                Ok(())
            }
            IfdOp::Hwpt { name, device, ioas } => {
                self.ifd_name_free(name)?;
                let ictx = self.ifd_bound(device)?;
                let (ioas_ctx, ioas_id) = self.ifd_obj(ioas)?;
                if ioas_ctx != ictx {
                    return usage(format!(
                        "{ioas:?} is not in {ictx:?}, where {device} is bound"
                    ));
                }
                let dev_id = self.ifd_dev_id(device)?;
                let mut items = vec![u32i(48), u32i(0), u32i(dev_id), u32i(u64::from(ioas_id))];
                items.push(Item::Zero(32));
                self.ifd_ioctl(&ictx, nr::IOMMU_HWPT_ALLOC, &items)?;
                let id = self.ifd_out32(16);
                self.ifd.objs.insert(name.clone(), (ictx, id));
                Ok(())
            }
            IfdOp::AttachPt { device, pt } => {
                let ictx = self.ifd_bound(device)?;
                let (pt_ctx, pt_id) = self.ifd_obj(pt)?;
                if pt_ctx != ictx {
                    return usage(format!(
                        "{pt:?} is not in {ictx:?}, where {device} is bound"
                    ));
                }
                let file = cdev_file(device);
                self.ifd_ioctl(
                    &file,
                    nr::VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                    &[u32i(12), u32i(0), u32i(u64::from(pt_id))],
                )
            }
            IfdOp::DetachPt { device } => {
                self.ifd_bound(device)?;
                self.ifd_ioctl(
                    &cdev_file(device),
                    nr::VFIO_DEVICE_DETACH_IOMMUFD_PT,
                    &[u32i(8), u32i(0)],
                )
            }
            IfdOp::Map {
                ioas,
                iova,
                vaddr,
                size,
                prot,
            } => {
                let (ictx, id) = self.ifd_obj(ioas)?;
                let items = [
                    u32i(40),
                    u32i(MAP_FIXED_IOVA | access(*prot)),
                    u32i(u64::from(id)),
                    u32i(0),
                    u64i(*vaddr),
                    u64i(*size),
                    u64i(*iova),
                ];
                self.ifd_ioctl(&ictx, nr::IOMMU_IOAS_MAP, &items)
            }
            IfdOp::Unmap { ioas, iova, size } => {
                let (ictx, id) = self.ifd_obj(ioas)?;
                let items = [u32i(24), u32i(u64::from(id)), u64i(*iova), u64i(*size)];
                self.ifd_ioctl(&ictx, nr::IOMMU_IOAS_UNMAP, &items)?;
                self.last_unmapped = self.raw.read_int(ARG_BASE + 16, 8);
                Ok(())
            }
            IfdOp::Copy {
                dst,
                dst_iova,
                src,
                src_iova,
                size,
                prot,
            } => {
                let (ictx, d) = self.ifd_obj(dst)?;
                let (sctx, s) = self.ifd_obj(src)?;
                if sctx != ictx {
                    return usage(format!("{src:?} and {dst:?} are in different iommufds"));
                }
                let items = [
                    u32i(40),
                    u32i(MAP_FIXED_IOVA | access(*prot)),
                    u32i(u64::from(d)),
                    u32i(u64::from(s)),
                    u64i(*size),
                    u64i(*dst_iova),
                    u64i(*src_iova),
                ];
                self.ifd_ioctl(&ictx, nr::IOMMU_IOAS_COPY, &items)
            }
            IfdOp::Destroy { obj } => {
                let (ictx, id) = self.ifd_obj(obj)?;
                self.ifd_ioctl(&ictx, nr::IOMMU_DESTROY, &[u32i(8), u32i(u64::from(id))])?;
                self.ifd.objs.remove(obj);
                Ok(())
            }
        }
    }

    /// The iommufd device id of a bound device (its `out_devid`).
    fn ifd_dev_id(&self, device: &str) -> Result<u64, StepError> {
        let fd = self.raw.files.get(&cdev_file(device)).copied();
        match fd.and_then(|fd| self.raw.caller.object(fd)) {
            Some(Object::Device(d)) => match self.vfio.bound_devid(d) {
                Some(id) => Ok(u64::from(id)),
                None => usage(format!("device {device:?} is not bound")),
            },
            _ => usage(format!("device {device:?} has no cdev open")),
        }
    }

    /// Closes a device's cdev (its release unbinds it); false if it had none.
    fn ifd_close_cdev(&mut self, device: &str) -> bool {
        let Some(fd) = self.raw.files.remove(&cdev_file(device)) else {
            return false;
        };
        self.ifd.bound.remove(device);
        if let Some(obj) = self.raw.caller.forget(fd) {
            self.vfio.close(obj);
        }
        true
    }
}
