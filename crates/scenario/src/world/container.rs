//! The world's side of the container lines: open, attach and detach groups, SET_IOMMU, MAP
//! and UNMAP, dirty tracking, emulated devices' pins and `vfio_dma_rw`, close.

use super::*;
use type1_core::{DirtyError, DirtyFlag, DirtyOp};

impl World {
    /// Executes an operation on the container and its type1 backend, through the engine.
    pub(super) fn exec_container(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::Container(n) => {
                if self.containers.contains_key(n) {
                    return usage(format!("container {n:?} already open"));
                }
                let Object::Container(id) = self.vfio.open_container() else {
                    unreachable!("open_container returns a container");
                };
                self.containers.insert(n.clone(), id);
                Ok(())
            }
            Op::Attach { container, group } => {
                // Open /dev/vfio/GROUP (ENOENT, EBUSY if raw lines hold it) and
                // VFIO_GROUP_SET_CONTAINER; a failure closes what this line opened.
                let cid = self.cid(container)?;
                let fresh = !self.group_files.contains(group);
                if fresh {
                    self.vfio
                        .open_group(*group)
                        .map_err(|e| errno(e, format!("open /dev/vfio/{group}")))?;
                }
                match self
                    .vfio
                    .set_container(*group, Some(Object::Container(cid)))
                {
                    Ok(()) => {
                        self.group_files.insert(*group);
                        Ok(())
                    }
                    Err(e) => {
                        if fresh {
                            self.vfio.close(Object::Group(*group));
                        }
                        Err(e.into())
                    }
                }
            }
            Op::Detach { container, group } => {
                // `detach GROUP` is VFIO_GROUP_UNSET_CONTAINER (EINVAL in no container, EBUSY
                // with open devices), then the group file is closed. Naming a container
                // also checks the group is in that one.
                if !container.is_empty() {
                    let cid = self.cid(container)?;
                    if self.vfio.group_container(*group) != Some(cid) {
                        return Err(errno(
                            Errno::EINVAL,
                            format!("group {group} is not in container {container}"),
                        ));
                    }
                }
                if !self.group_files.contains(group) && self.vfio.group_is_open(*group) {
                    return Err(errno(
                        Errno::EBUSY,
                        format!("group {group} is held by raw uapi lines"),
                    ));
                }
                self.vfio.unset_container(*group)?;
                if self.group_files.remove(group) {
                    self.vfio.close(Object::Group(*group));
                }
                Ok(())
            }
            Op::SetIommu { container, kind } => {
                let (c, sim) = self.container_and_sim(container)?;
                c.set_iommu(sim, type1_core::RequestedType::decode(u64::from(*kind)))?;
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
                // A raw flag word is decoded as the uAPI layer does, after the v2 check.
                if !t.is_v2() {
                    return Err(type1_core::Error::from(DirtyError::NotV2).into());
                }
                let op = match (DirtyFlag::decode(*flags)?, range) {
                    (DirtyFlag::Start, _) => DirtyOp::Start,
                    (DirtyFlag::Stop, _) => DirtyOp::Stop,
                    (DirtyFlag::GetBitmap, None) => {
                        return Err(type1_core::Error::from(DirtyError::NoRange).into())
                    }
                    (DirtyFlag::GetBitmap, Some((iova, size))) => {
                        let words = (size / pg).max(1).div_ceil(64).min(1 << 22);
                        data = vec![0u64; words as usize];
                        DirtyOp::GetBitmap {
                            iova: *iova,
                            size: *size,
                            bitmap: UserBitmap {
                                pgsize: pg,
                                size: words * 8,
                                data: &mut data,
                            },
                        }
                    }
                };
                t.dirty_pages(op)?;
                if range.is_some() {
                    self.last_bitmap = data;
                }
                Ok(())
            }
            Op::Close(n) => {
                // The scenario's `close` stands for closing everything the container holds:
                // its devices' fds, its groups' files (the last one releases the backend:
                // unmap, unpin, unaccount, detach), then the container's file.
                let Some(cid) = self.containers.remove(n) else {
                    return usage(format!("no container named {n:?}"));
                };
                let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.devices)
                    .into_iter()
                    .partition(|(c, _, _)| c == n);
                self.devices = rest;
                for (_, _, id) in mine {
                    self.vfio.close(Object::Device(id));
                }
                let groups: Vec<u32> = self
                    .group_files
                    .iter()
                    .copied()
                    .filter(|g| self.vfio.group_container(*g) == Some(cid))
                    .collect();
                for g in groups {
                    self.group_files.remove(&g);
                    self.vfio.close(Object::Group(g));
                }
                self.vfio.close(Object::Container(cid));
                Ok(())
            }
            other => usage(format!("internal: {other:?} is not for exec_container")),
        }
    }
}
