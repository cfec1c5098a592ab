//! iommufd: the object model behind `/dev/iommu` (spec X1 to X5), on the same platform seam
//! as type1, with the series' patch 5/5 as flush policies.
//!
//! One [`Ictx`] is one open `/dev/iommu` (an `iommufd_ctx`). It holds numbered objects:
//! * an **IOAS** ([`Ioas`]): an address space of areas, each a slice of a pages object;
//! * a paging **HWPT** ([`Hwpt`]): an IOMMU domain bound to one IOAS and filled with all of
//!   its areas; allocated by `IOMMU_HWPT_ALLOC` or automatically when a device attaches;
//! * a bound **device** ([`Idev`]): a VFIO device bound with `VFIO_DEVICE_BIND_IOMMUFD` (or
//!   opened through a group in a compat container), attached to at most one HWPT.
//!
//! **Pages are shared, pins are not repeated** (X1, X2). A pages object covers one user VA
//! range; `IOAS_COPY` makes more areas (in any IOAS of the context) over slices of it. Each
//! page of a pages object is pinned, and charged, once while any (area, domain) pair maps it,
//! and unpinned after the last one unmaps it: unmap from the domain, then flush, then unpin
//! (the series' order). Without a domain nothing is pinned, as in the kernel.
//!
//! **Flushes** are decided by [`FillPolicy`] on each IOAS's count of non-coherent HWPTs, as
//! 5/5 decides: `none` (upstream), `seed` (patch 5/5 as posted: a per-pages sticky bit that,
//! once set, skips the flush of later fills, X3; and its error path that uncounts any HWPT),
//! `seed-fixed` (the minimal fix: every fill while the count is above zero flushes, the bit
//! only decides the unpin flush, X4 (e); the count lowered only for a non-coherent HWPT), and
//! two diagnostics that each leave one of 5/5's holes open (`seed-repin`, `seed-noskip`).
//!
//! The uAPI crate decodes ioctls into the calls here and owns the file objects; this module
//! knows nothing about file descriptors.
//!
//! Files: this one holds the objects, their lookups and the IOAS calls; [`policy`] the fill
//! policies; `area.rs` IOAS map, copy and unmap; `pages.rs` the pages layer (fill, pin, flush,
//! unpin, charge); `hwpt.rs` devices, HWPTs and domains; `inspect.rs` what checkers read.

use std::collections::BTreeMap;

use crate::{
    DomainId, Errno, GroupId, IovaRange, MmId, Platform, Prot, ResvKind, PAGE_SHIFT, PAGE_SIZE,
};

mod area;
mod hwpt;
mod inspect;
mod pages;
pub mod policy;

pub use policy::FillPolicy;

/// Which frames a flush covers (F9): the series' classifier, shared with type1. iommufd
/// never maps reserved frames (their pin fails), so every frame it flushes is normal memory.
const CLASSIFIER: crate::policy::Seed = crate::policy::Seed;

/// `EADDRINUSE`: a device's reserved region overlaps an existing area.
pub const EADDRINUSE: Errno = Errno(98);

/// `IOMMU_OPTION_RLIMIT_MODE`: whom pins are charged to. The option is kept and reported;
/// the platform keeps per-address-space books only, so both modes charge the caller's address
/// space against its RLIMIT_MEMLOCK (the kernel's user mode charges the user's total instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccountMode {
    /// 0, the default: the user (io_uring style). Charged here to the caller's address space,
    /// against the same RLIMIT_MEMLOCK (the platform keeps per-mm books only).
    User,
    /// 1: the address space, as VFIO type1 does (always used by maps of the compat container).
    Mm,
}

/// An object type, for lookups by id (`iommufd_get_object`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjType {
    /// An IOAS.
    Ioas,
    /// A paging HWPT.
    Hwpt,
    /// A bound device.
    Device,
}

/// One area of an IOAS: `[iova, last]` over pages `[first_page, first_page + npages)` of a
/// pages object.
#[derive(Clone, Debug, Hash)]
struct Area {
    last: u64,
    pages: u32,
    first_page: u64,
    prot: Prot,
}

impl Area {
    fn npages(&self, iova: u64) -> u64 {
        (self.last - iova + 1) >> PAGE_SHIFT
    }
}

/// An I/O address space.
#[derive(Clone, Debug, Default, Hash)]
pub struct Ioas {
    areas: BTreeMap<u64, Area>,
    allowed: Vec<IovaRange>,
    hwpts: Vec<u32>,
    disable_large_pages: bool,
    /// 5/5's `noncoherent_domain_cnt` (a `u32` that wraps, as the kernel's `unsigned int`).
    noncoherent: u32,
}

/// A paging HWPT: an IOMMU domain bound to one IOAS.
#[derive(Clone, Debug, Hash)]
pub struct Hwpt {
    /// The IOAS it maps.
    pub ioas: u32,
    /// Its domain.
    pub domain: DomainId,
    /// Whether it enforces cache coherency (snoop control).
    pub coherent: bool,
    /// Allocated by a device attach (freed when its last device detaches).
    pub auto: bool,
    /// Devices attached.
    pub devices: Vec<u32>,
}

/// A device bound to the context.
#[derive(Clone, Debug, Hash)]
pub struct Idev {
    /// Its group.
    pub group: GroupId,
    /// The HWPT it is attached to.
    pub hwpt: Option<u32>,
}

#[derive(Clone, Debug, Hash)]
enum Obj {
    Ioas(Ioas),
    Hwpt(Hwpt),
    Device(Idev),
}

/// Whose pages a pages object covers, and whether the limit applies to charging them.
#[derive(Clone, Copy, Debug, Hash)]
struct Owner {
    mm: MmId,
    uptr: u64,
    writable: bool,
    lock_cap: bool,
}

/// One pages object: a user VA range, pinned page by page while any domain maps it.
#[derive(Clone, Debug, Hash)]
struct Pages {
    owner: Owner,
    /// Areas referring to it.
    refs: u32,
    /// Per page: the (area, domain) pairs mapping it, and its frame while pinned.
    users: Vec<u32>,
    pfns: Vec<u64>,
    /// Patch 5/5's `cache_flush_required` (sticky).
    flagged: bool,
}

/// One open `/dev/iommu`.
#[derive(Clone, Debug, Hash)]
pub struct Ictx {
    policy: FillPolicy,
    objs: BTreeMap<u32, Obj>,
    pages: BTreeMap<u32, Pages>,
    next_obj: u32,
    next_pages: u32,
    vfio_ioas: Option<u32>,
    account_mode: AccountMode,
    /// Pages pinned, flushed and mapped per step of a fill (the kernel's pfn batch). `None`:
    /// the platform's pin batch ([`crate::TaskMemory::pin_batch_pages`], the kernel's 512
    /// unless pins cost a round trip); a model checker sets a small one.
    pub batch_pages: Option<u64>,
}

/// A mapping request (`IOMMU_IOAS_MAP` or the compat `VFIO_IOMMU_MAP_DMA`).
#[derive(Clone, Copy, Debug)]
pub struct IoasMap {
    /// The IOAS.
    pub ioas: u32,
    /// User address.
    pub uptr: u64,
    /// Length in bytes.
    pub length: u64,
    /// `Some(iova)` for a fixed IOVA, `None` to allocate one.
    pub iova: Option<u64>,
    /// Device access rights.
    pub prot: Prot,
}

impl Ictx {
    /// An empty context with the given flush policy.
    pub fn new(policy: FillPolicy) -> Ictx {
        Ictx {
            policy,
            objs: BTreeMap::new(),
            pages: BTreeMap::new(),
            next_obj: 0,
            next_pages: 0,
            vfio_ioas: None,
            account_mode: AccountMode::User,
            batch_pages: None,
        }
    }

    /// The flush policy.
    pub fn policy(&self) -> FillPolicy {
        self.policy
    }

    fn insert(&mut self, o: Obj) -> u32 {
        self.next_obj += 1;
        self.objs.insert(self.next_obj, o);
        self.next_obj
    }

    /// The ids of every object of one type, in id order.
    fn ids_of(&self, t: ObjType) -> Vec<u32> {
        self.objs
            .keys()
            .copied()
            .filter(|id| self.obj_type(*id) == Ok(t))
            .collect()
    }

    /// The type of object `id`: ENOENT if there is none.
    pub fn obj_type(&self, id: u32) -> Result<ObjType, Errno> {
        match self.objs.get(&id) {
            Some(Obj::Ioas(_)) => Ok(ObjType::Ioas),
            Some(Obj::Hwpt(_)) => Ok(ObjType::Hwpt),
            Some(Obj::Device(_)) => Ok(ObjType::Device),
            None => Err(Errno::ENOENT),
        }
    }

    fn ioas(&self, id: u32) -> Result<&Ioas, Errno> {
        match self.objs.get(&id) {
            Some(Obj::Ioas(i)) => Ok(i),
            _ => Err(Errno::ENOENT),
        }
    }

    fn ioas_mut(&mut self, id: u32) -> Result<&mut Ioas, Errno> {
        match self.objs.get_mut(&id) {
            Some(Obj::Ioas(i)) => Ok(i),
            _ => Err(Errno::ENOENT),
        }
    }

    /// A HWPT by id (ENOENT for anything else).
    pub fn hwpt(&self, id: u32) -> Result<&Hwpt, Errno> {
        match self.objs.get(&id) {
            Some(Obj::Hwpt(h)) => Ok(h),
            _ => Err(Errno::ENOENT),
        }
    }

    /// A bound device by id (ENOENT for anything else).
    pub fn idev(&self, id: u32) -> Result<&Idev, Errno> {
        match self.objs.get(&id) {
            Some(Obj::Device(d)) => Ok(d),
            _ => Err(Errno::ENOENT),
        }
    }

    fn idev_mut(&mut self, id: u32) -> Result<&mut Idev, Errno> {
        match self.objs.get_mut(&id) {
            Some(Obj::Device(d)) => Ok(d),
            _ => Err(Errno::ENOENT),
        }
    }

    /// The domain a bound device's DMA goes through, and whether it is coherent.
    pub fn device_domain(&self, idev: u32) -> Option<(DomainId, bool)> {
        let h = self.hwpt(self.idev(idev).ok()?.hwpt?).ok()?;
        Some((h.domain, h.coherent))
    }

    /// The IOAS the compat container uses.
    pub fn vfio_ioas(&self) -> Option<u32> {
        self.vfio_ioas
    }

    /// Whether the context holds no object at all.
    pub fn is_empty(&self) -> bool {
        self.objs.is_empty()
    }

    /// Pages pinned by the context now (for checks).
    pub fn pinned_pages(&self) -> u64 {
        self.pages
            .values()
            .map(|p| p.users.iter().filter(|u| **u > 0).count() as u64)
            .sum()
    }

    /// The areas of an IOAS: `(iova, length)`.
    pub fn areas(&self, ioas: u32) -> Vec<(u64, u64)> {
        self.ioas(ioas)
            .map(|i| i.areas.iter().map(|(s, a)| (*s, a.last - s + 1)).collect())
            .unwrap_or_default()
    }
}

impl Ictx {
    // ---- IOAS ---------------------------------------------------------------------------------

    /// `IOMMU_IOAS_ALLOC`.
    pub fn ioas_alloc(&mut self) -> u32 {
        self.insert(Obj::Ioas(Ioas::default()))
    }

    /// The reserved IOVA ranges of an IOAS: outside the apertures of its domains, and the
    /// reserved regions of every device attached through it (all but relaxable direct ones).
    fn reserved<P: Platform + ?Sized>(&self, p: &P, ioas: &Ioas) -> Vec<IovaRange> {
        let mut r = Vec::new();
        for h in ioas.hwpts.iter().filter_map(|h| self.hwpt(*h).ok()) {
            let ap = p.domain_info(h.domain).aperture;
            if ap.start > 0 {
                r.push(IovaRange {
                    start: 0,
                    last: ap.start - 1,
                });
            }
            if ap.last < u64::MAX {
                r.push(IovaRange {
                    start: ap.last + 1,
                    last: u64::MAX,
                });
            }
            for d in h.devices.iter().filter_map(|d| self.idev(*d).ok()) {
                if let Ok(info) = p.group_info(d.group) {
                    r.extend(
                        info.reserved
                            .iter()
                            .filter(|x| x.kind != ResvKind::DirectRelaxable)
                            .map(|x| x.range),
                    );
                }
            }
        }
        r.sort();
        r
    }

    /// `IOMMU_IOAS_IOVA_RANGES`: the holes of the reserved ranges, in order.
    pub fn iova_ranges<P: Platform + ?Sized>(
        &self,
        p: &P,
        ioas: u32,
    ) -> Result<Vec<IovaRange>, Errno> {
        let i = self.ioas(ioas)?;
        Ok(holes(&self.reserved(p, i)))
    }

    /// `IOMMU_IOAS_ALLOW_IOVAS`: replaces the ranges IOVA allocation may use. EINVAL for a
    /// range with `start > last` or overlapping another.
    pub fn allow_iovas(&mut self, ioas: u32, mut ranges: Vec<IovaRange>) -> Result<(), Errno> {
        self.ioas(ioas)?;
        ranges.sort();
        if ranges.iter().any(|r| r.start > r.last)
            || ranges.windows(2).any(|w| w[0].overlaps(&w[1]))
        {
            return Err(Errno::EINVAL);
        }
        self.ioas_mut(ioas)?.allowed = ranges;
        Ok(())
    }

    /// `IOMMU_OPTION` `HUGE_PAGES` get (1 when large pages are allowed).
    pub fn huge_pages(&self, ioas: u32) -> Result<bool, Errno> {
        Ok(!self.ioas(ioas)?.disable_large_pages)
    }

    /// `IOMMU_OPTION` `HUGE_PAGES` set; turning large pages off is refused (EBUSY) while the
    /// IOAS has areas mapped into a domain, as `iopt_disable_large_pages` is.
    pub fn set_huge_pages(&mut self, ioas: u32, on: bool) -> Result<(), Errno> {
        let i = self.ioas_mut(ioas)?;
        if !on && !i.disable_large_pages && !i.hwpts.is_empty() && !i.areas.is_empty() {
            return Err(Errno::EBUSY);
        }
        i.disable_large_pages = !on;
        Ok(())
    }

    /// `IOMMU_OPTION` `RLIMIT_MODE` get.
    pub fn account_mode(&self) -> AccountMode {
        self.account_mode
    }

    /// `IOMMU_OPTION` `RLIMIT_MODE` set: EBUSY once pages exist.
    pub fn set_account_mode(&mut self, mode: AccountMode) -> Result<(), Errno> {
        if !self.pages.is_empty() {
            return Err(Errno::EBUSY);
        }
        self.account_mode = mode;
        Ok(())
    }

    /// `IOMMU_VFIO_IOAS` SET / CLEAR.
    pub fn set_vfio_ioas(&mut self, ioas: Option<u32>) -> Result<(), Errno> {
        if let Some(i) = ioas {
            self.ioas(i)?;
        }
        self.vfio_ioas = ioas;
        Ok(())
    }

    /// The compat IOAS, created on first need (`iommufd_vfio_compat_ioas_create`).
    pub fn compat_ioas_create(&mut self) -> u32 {
        match self.vfio_ioas.filter(|i| self.ioas(*i).is_ok()) {
            Some(i) => i,
            None => {
                let i = self.ioas_alloc();
                self.vfio_ioas = Some(i);
                i
            }
        }
    }

    /// The compat IOAS, ENODEV without one (`get_compat_ioas`).
    pub fn compat_ioas(&self) -> Result<u32, Errno> {
        self.vfio_ioas
            .filter(|i| self.ioas(*i).is_ok())
            .ok_or(Errno::ENODEV)
    }

    /// Whether every HWPT of an IOAS enforces coherency (compat `VFIO_DMA_CC_IOMMU`).
    pub fn all_coherent(&self, ioas: u32) -> Result<bool, Errno> {
        let i = self.ioas(ioas)?;
        Ok(i.hwpts
            .iter()
            .all(|h| self.hwpt(*h).is_ok_and(|h| h.coherent)))
    }

    /// The page sizes of the IOAS's domains ANDed (compat GET_INFO), at least the base page.
    pub fn pgsizes<P: Platform + ?Sized>(&self, p: &P, ioas: u32) -> Result<u64, Errno> {
        let i = self.ioas(ioas)?;
        let mut bm = u64::MAX;
        for h in i.hwpts.iter().filter_map(|h| self.hwpt(*h).ok()) {
            bm &= p.domain_info(h.domain).pgsize_bitmap;
        }
        if bm & (PAGE_SIZE - 1) != 0 {
            bm &= !(PAGE_SIZE - 1);
            bm |= PAGE_SIZE;
        }
        Ok(bm)
    }

    /// `IOMMU_DESTROY`: ENOENT without such an object; EBUSY while it is in use (an IOAS with
    /// HWPTs or attached devices, a HWPT with devices). A bound device is not the user's to
    /// destroy (its VFIO file owns it): ENOENT, as for any object the user cannot name.
    pub fn destroy<P: Platform + ?Sized>(&mut self, p: &mut P, id: u32) -> Result<(), Errno> {
        match self.objs.get(&id) {
            None | Some(Obj::Device(_)) => Err(Errno::ENOENT),
            Some(Obj::Ioas(i)) => {
                // Devices attach through HWPTs: a HWPT bound to it is every use there is.
                if !i.hwpts.is_empty() {
                    return Err(Errno::EBUSY);
                }
                let iovas: Vec<u64> = i.areas.keys().copied().collect();
                for iova in iovas {
                    self.remove_area(p, id, iova);
                }
                self.objs.remove(&id);
                if self.vfio_ioas == Some(id) {
                    self.vfio_ioas = None;
                }
                Ok(())
            }
            Some(Obj::Hwpt(h)) => {
                if !h.devices.is_empty() {
                    return Err(Errno::EBUSY);
                }
                self.free_hwpt(p, id);
                Ok(())
            }
        }
    }
}

/// A new domain for a device's group with its coherency decided (the device's IOMMU
/// enforces snoop control or not).
fn new_domain<P: Platform + ?Sized>(p: &mut P, group: GroupId) -> Result<(DomainId, bool), Errno> {
    let d = p.domain_alloc(group).map_err(|e| e.errno)?;
    let coherent = p.domain_enforce_cache_coherency(d);
    Ok((d, coherent))
}

/// Whether the IOMMU of a group's devices can enforce coherency (snoop control), as an
/// attach would find it: a domain is made, asked and freed (`IOMMU_GET_HW_INFO`).
pub fn snoop_control<P: Platform + ?Sized>(p: &mut P, group: GroupId) -> Result<bool, Errno> {
    let (d, coherent) = new_domain(p, group)?;
    p.domain_free(d);
    Ok(coherent)
}

/// The areas overlapping `r`, in IOVA order.
fn overlapping(
    areas: &BTreeMap<u64, Area>,
    r: IovaRange,
) -> impl Iterator<Item = (u64, &Area)> + '_ {
    let before = areas
        .range(..r.start)
        .next_back()
        .filter(|(_, a)| a.last >= r.start)
        .map(|(s, a)| (*s, a));
    before
        .into_iter()
        .chain(areas.range(r.start..=r.last).map(|(s, a)| (*s, a)))
}

/// The holes of sorted (possibly overlapping) ranges within the whole 64-bit space.
fn holes(used: &[IovaRange]) -> Vec<IovaRange> {
    let mut out = Vec::new();
    let mut next: Option<u64> = Some(0);
    for r in used {
        let Some(n) = next else { break };
        if r.start > n {
            out.push(IovaRange {
                start: n,
                last: r.start - 1,
            });
        }
        if r.last >= n {
            next = r.last.checked_add(1);
        }
    }
    if let Some(n) = next {
        out.push(IovaRange {
            start: n,
            last: u64::MAX,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_cover_what_ranges_leave() {
        let r = |s, l| IovaRange { start: s, last: l };
        assert_eq!(holes(&[]), vec![IovaRange::FULL]);
        assert_eq!(
            holes(&[r(0, 9), r(5, 19), r(30, 39)]),
            vec![r(20, 29), r(40, u64::MAX)]
        );
        assert_eq!(holes(&[r(10, u64::MAX)]), vec![r(0, 9)]);
    }

    #[test]
    fn seed_skips_the_flush_once_flagged_and_fixed_never_does() {
        assert_eq!(FillPolicy::Seed.on_fill(false, true), (true, true));
        assert_eq!(FillPolicy::Seed.on_fill(true, true), (false, false));
        assert_eq!(FillPolicy::SeedFixed.on_fill(true, true), (true, true));
        assert_eq!(FillPolicy::SeedFixed.on_fill(false, false), (false, false));
        assert_eq!(FillPolicy::None.on_fill(false, true), (false, false));
        assert!(FillPolicy::Seed.flush_on_unpin(true));
        assert!(!FillPolicy::None.flush_on_unpin(true));
    }
}
