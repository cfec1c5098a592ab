//! The container (`/dev/vfio/vfio`, the kernel's `container.c`): groups and backend selection.
//!
//! A container collects groups and, after SET_IOMMU, owns one [`Type1`] instance to which every
//! group is attached (C4 to C8). Which group may join which container (one container per group,
//! viability) is decided by the caller that owns the group objects: the uAPI layer's `Vfio`
//! (which the scenario world and the broker both run).

use crate::{
    abi::*,
    platform::Platform,
    policy::policy_by_name,
    type1::{Config, Type1},
    ContainerError, Error, GroupId, Result,
};

/// A VFIO container.
#[derive(Clone, Debug)]
pub struct Container {
    cfg: Config,
    policy: &'static dyn crate::policy::FlushPolicy,
    groups: Vec<GroupId>,
    iommu: Option<Type1>,
}

/// An extension `VFIO_CHECK_EXTENSION` asks a type1 container about (C5, C6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    /// `VFIO_TYPE1_IOMMU`.
    Type1,
    /// `VFIO_TYPE1v2_IOMMU`.
    Type1v2,
    /// `VFIO_DMA_CC_IOMMU`: the IOMMU enforces DMA cache coherence.
    DmaCcIommu,
    /// `VFIO_UNMAP_ALL`.
    UnmapAll,
    /// `VFIO_UPDATE_VADDR`.
    UpdateVaddr,
}

impl Extension {
    /// The extension an ioctl argument names, if type1 knows it (the kernel compares the
    /// unsigned long against small constants: anything else answers 0).
    pub fn decode(arg: u64) -> Option<Extension> {
        Some(match u32::try_from(arg).ok()? {
            VFIO_TYPE1_IOMMU => Extension::Type1,
            VFIO_TYPE1V2_IOMMU => Extension::Type1v2,
            VFIO_DMA_CC_IOMMU => Extension::DmaCcIommu,
            VFIO_UNMAP_ALL => Extension::UnmapAll,
            VFIO_UPDATE_VADDR => Extension::UpdateVaddr,
            _ => return None,
        })
    }
}

/// The backend type1 opens for SET_IOMMU (C4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuType {
    /// `VFIO_TYPE1_IOMMU`: v1 semantics (unmaps may split mappings; no dirty tracking).
    Type1,
    /// `VFIO_TYPE1v2_IOMMU`.
    Type1v2,
}

/// SET_IOMMU's argument, decoded at the uAPI ([`RequestedType::decode`]) or given as an
/// [`IommuType`]. A number that names no type1 backend is kept and reported where the kernel
/// reports it: after the container's group and backend checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestedType(Result<IommuType, u64>);

impl RequestedType {
    /// The type an ioctl argument (an unsigned long) names.
    pub fn decode(arg: u64) -> RequestedType {
        RequestedType(match arg {
            a if a == u64::from(VFIO_TYPE1_IOMMU) => Ok(IommuType::Type1),
            a if a == u64::from(VFIO_TYPE1V2_IOMMU) => Ok(IommuType::Type1v2),
            a => Err(a),
        })
    }

    /// The type, or the error SET_IOMMU gives for the number: type1 answers CHECK_EXTENSION
    /// for `VFIO_UNMAP_ALL` but does not open it (EINVAL); no backend opens anything else
    /// (ENODEV).
    fn resolve(self) -> Result<IommuType> {
        self.0.map_err(|n| match Extension::decode(n) {
            Some(Extension::UnmapAll) => ContainerError::NotOpenable(n).into(),
            _ => ContainerError::NoSuchType(n).into(),
        })
    }
}

impl From<IommuType> for RequestedType {
    fn from(t: IommuType) -> RequestedType {
        RequestedType(Ok(t))
    }
}

impl Container {
    /// A new, empty container whose instances use the named flush policy.
    pub fn new(cfg: Config, policy: &str) -> Result<Container> {
        let p = policy_by_name(policy)
            .ok_or_else(|| ContainerError::UnknownPolicy(policy.to_string()))?;
        Ok(Container {
            cfg,
            policy: p,
            groups: Vec::new(),
            iommu: None,
        })
    }

    /// GET_API_VERSION (C4).
    pub fn api_version(&self) -> i32 {
        VFIO_API_VERSION
    }

    /// CHECK_EXTENSION (C5 before SET_IOMMU, C6 after): whether the container has `ext`.
    /// A number [`Extension::decode`] does not know answers 0 at the uAPI.
    pub fn check_extension(&self, ext: Extension) -> bool {
        use Extension::*;
        match (&self.iommu, ext) {
            (_, Type1 | Type1v2 | UnmapAll) => true,
            (None, UpdateVaddr | DmaCcIommu) => false,
            (Some(t), UpdateVaddr) => !t.has_emulated_groups(),
            (Some(t), DmaCcIommu) => t.dma_cc_iommu(),
        }
    }

    /// Groups in the container, in join order.
    pub fn groups(&self) -> &[GroupId] {
        &self.groups
    }

    /// Whether a backend is set.
    pub fn is_set(&self) -> bool {
        self.iommu.is_some()
    }

    /// The backend instance, or EINVAL before SET_IOMMU (C7).
    pub fn iommu(&self) -> Result<&Type1> {
        self.iommu
            .as_ref()
            .ok_or(Error::Container(ContainerError::NoBackend))
    }

    /// Mutable backend instance, or EINVAL before SET_IOMMU (C7).
    pub fn iommu_mut(&mut self) -> Result<&mut Type1> {
        self.iommu
            .as_mut()
            .ok_or(Error::Container(ContainerError::NoBackend))
    }

    /// A group joins (GROUP_SET_CONTAINER). With a backend set it is attached at once (C8).
    pub fn add_group<P: Platform + ?Sized>(&mut self, p: &mut P, group: GroupId) -> Result<()> {
        if self.groups.contains(&group) {
            return Err(ContainerError::GroupPresent(group).into());
        }
        if let Some(t) = self.iommu.as_mut() {
            t.attach_group(p, group)?;
        }
        self.groups.push(group);
        Ok(())
    }

    /// A group leaves (GROUP_UNSET_CONTAINER). The last group releases the backend (C8, A5).
    pub fn remove_group<P: Platform + ?Sized>(&mut self, p: &mut P, group: GroupId) -> Result<()> {
        let Some(i) = self.groups.iter().position(|g| *g == group) else {
            return Err(ContainerError::GroupAbsent(group).into());
        };
        self.groups.remove(i);
        if let Some(t) = self.iommu.as_mut() {
            if self.groups.is_empty() {
                t.release(p);
                self.iommu = None;
            } else {
                t.detach_group(p, group);
            }
        }
        Ok(())
    }

    /// SET_IOMMU (C7): opens an instance and attaches every group, all or nothing.
    pub fn set_iommu<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        iommu_type: impl Into<RequestedType>,
    ) -> Result<()> {
        if self.groups.is_empty() {
            return Err(ContainerError::NoGroup.into());
        }
        if self.iommu.is_some() {
            return Err(ContainerError::BackendSet.into());
        }
        // Only type1 is registered; it answers CHECK_EXTENSION > 0 for 1, 3 and 9, and its open
        // accepts only 1 and 3 (so 9 is EINVAL and anything else ENODEV).
        let ty = iommu_type.into().resolve()?;
        let mut t = Type1::open(ty, self.cfg, self.policy);
        for (i, g) in self.groups.iter().enumerate() {
            if let Err(e) = t.attach_group(p, *g) {
                for g in self.groups[..i].iter().rev() {
                    t.detach_group(p, *g);
                }
                t.release(p);
                return Err(e);
            }
        }
        self.iommu = Some(t);
        Ok(())
    }

    /// The last close of the container (C8): releases the backend. Never fails.
    pub fn close<P: Platform + ?Sized>(&mut self, p: &mut P) {
        if let Some(mut t) = self.iommu.take() {
            t.release(p);
        }
        self.groups.clear();
    }
}
