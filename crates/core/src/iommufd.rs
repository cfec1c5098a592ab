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
//! **Flushes** are decided by [`FillPolicy`]: `none` (upstream), `seed` (patch 5/5 as posted:
//! a per-pages sticky bit that, once set, skips the flush of later fills, X3) and
//! `seed-fixed` (the direction agreed in review, X4 (e): every fill into a non-coherent domain
//! flushes, the sticky bit only decides the unpin flush).
//!
//! The uAPI crate decodes ioctls into the calls here and owns the file objects; this module
//! knows nothing about file descriptors.

use std::collections::BTreeMap;

use crate::{
    trace::Event, DomainId, Errno, FlushReason, GroupId, IovaRange, MmId, Platform, Prot, ResvKind,
    PAGE_SHIFT, PAGE_SIZE,
};

/// Which frames a flush covers (F9): the series' classifier, shared with type1. iommufd
/// never maps reserved frames (their pin fails), so every frame it flushes is normal memory.
const CLASSIFIER: crate::policy::Seed = crate::policy::Seed;

/// `EADDRINUSE`: a device's reserved region overlaps an existing area.
pub const EADDRINUSE: Errno = Errno(98);

/// Where the iommufd side of the series flushes (X3, X4).
///
/// Every flushing policy decides as 5/5 does, on the IOAS's count of non-coherent HWPTs
/// (`noncoherent_domain_cnt`): it is raised when a non-coherent HWPT is allocated, before its
/// domain is filled, and lowered when one is destroyed. A fill while it is above zero flushes
/// (or, with the skip, flushes unless the pages' bit is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FillPolicy {
    /// Upstream iommufd: never flushes.
    None,
    /// Patch 5/5 as posted: a fill sets the pages' sticky bit and flushes each batch, unless
    /// the bit was already set (then it skips the flush). Unpin flushes if the bit is set.
    /// When filling a new HWPT's domain fails, the count is lowered whatever the HWPT's
    /// coherency (5/5's `out_detach`).
    Seed,
    /// The minimal fix: 5/5 with the skip dropped (every fill while a non-coherent HWPT
    /// exists flushes, whatever the bit says; `docs/findings/0002-*.patch`) and the count
    /// lowered on a failed fill only for a non-coherent HWPT (`0003-*.patch`). Unpin flushes
    /// if the bit is set.
    SeedFixed,
    /// A diagnostic variant of `seed`, not a proposal: the bit is also cleared when the pages
    /// object loses its last pin, and the count is lowered on a failed fill only for a
    /// non-coherent HWPT. That closes `seed`'s two shortest holes (a re-pin after every domain
    /// left skips the flush; the count wraps) so that the checker can reach the longer one
    /// the skip leaves (a failed fill).
    SeedRepin,
    /// A diagnostic variant: 5/5 with only the skip dropped (0002 without 0003), to show that
    /// the count's unconditional decrement is a hole of its own.
    SeedNoskip,
}

impl FillPolicy {
    /// Every policy, in the order tables list them.
    pub const ALL: [FillPolicy; 5] = [
        FillPolicy::None,
        FillPolicy::Seed,
        FillPolicy::SeedRepin,
        FillPolicy::SeedNoskip,
        FillPolicy::SeedFixed,
    ];

    /// The policy of a command-line name (`none`, `seed`, `seed-repin`, `seed-noskip`,
    /// `seed-fixed`).
    pub fn from_name(name: &str) -> Option<FillPolicy> {
        FillPolicy::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            FillPolicy::None => "none",
            FillPolicy::Seed => "seed",
            FillPolicy::SeedFixed => "seed-fixed",
            FillPolicy::SeedRepin => "seed-repin",
            FillPolicy::SeedNoskip => "seed-noskip",
        }
    }

    /// Before a fill: `(set the sticky bit, flush each batch)`, given the bit and whether the
    /// IOAS has a non-coherent HWPT (its count is above zero).
    fn on_fill(self, flagged: bool, noncoherent: bool) -> (bool, bool) {
        match self {
            FillPolicy::None => (false, false),
            FillPolicy::Seed | FillPolicy::SeedRepin => {
                (noncoherent && !flagged, noncoherent && !flagged)
            }
            FillPolicy::SeedFixed | FillPolicy::SeedNoskip => (noncoherent, noncoherent),
        }
    }

    /// Whether a failed fill of a new HWPT's domain lowers the count whatever the HWPT's
    /// coherency (5/5's `out_detach`), or only for a non-coherent one (the fix).
    fn uncounts_any_failed_hwpt(self) -> bool {
        matches!(self, FillPolicy::Seed | FillPolicy::SeedNoskip)
    }

    fn flush_on_unpin(self, flagged: bool) -> bool {
        self != FillPolicy::None && flagged
    }
}

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

    /// What the context pins and charges, in the shape of type1 mapping views for the
    /// simulator's engine cross-check: one view per pages object, whose pinned pages are
    /// listed as `external_pins` `(iova, pfn, 1)` and whose `locked_vm` is what the object
    /// charged (none for an owner with CAP_IPC_LOCK, as `IOPT_PAGES_ACCOUNT_NONE`). The views
    /// carry no size, so the checker counts pins and charges from them and leaves page-table
    /// contents to the machine's own checks (stale reads, flush order, unpin while mapped).
    pub fn pin_views(&self) -> Vec<crate::MappingView> {
        self.pages
            .iter()
            .map(|(pid, pg)| {
                let external_pins: Vec<(u64, u64, u32)> = pg
                    .users
                    .iter()
                    .zip(&pg.pfns)
                    .enumerate()
                    .filter(|(_, (u, _))| **u > 0)
                    .map(|(k, (_, pfn))| (pg.owner.uptr + ((k as u64) << PAGE_SHIFT), *pfn, 1))
                    .collect();
                crate::MappingView {
                    // A key unique within the context; no page lies behind it (size 0).
                    iova: u64::from(*pid) << PAGE_SHIFT,
                    size: 0,
                    vaddr: pg.owner.uptr,
                    prot: Prot {
                        read: true,
                        write: pg.owner.writable,
                    },
                    mm: pg.owner.mm,
                    iommu_mapped: !external_pins.is_empty(),
                    vaddr_invalid: false,
                    is_noncoherent: pg.flagged,
                    locked_vm: if pg.owner.lock_cap {
                        0
                    } else {
                        external_pins.len() as u64
                    },
                    external_pins,
                }
            })
            .collect()
    }

    /// The context's state without its id counters and without the flush policy's own
    /// books (the pages' sticky bits, the IOASes' non-coherent counts): what a failed call
    /// must leave exactly as it found it. The policy's books are judged by their consequences
    /// (a missing flush is a violation), as type1's flag is (F5): a bit may over-approximate,
    /// and 5/5's count is wrong after a failed coherent fill, which is one of its holes.
    pub fn residue(&self) -> String {
        let pages: Vec<_> = self
            .pages
            .iter()
            .map(|(id, p)| (id, p.owner, p.refs, &p.users, &p.pfns))
            .collect();
        let mut objs = self.objs.clone();
        for o in objs.values_mut() {
            if let Obj::Ioas(i) = o {
                i.noncoherent = 0;
            }
        }
        format!(
            "{objs:?}{pages:?}{:?}{:?}",
            self.vfio_ioas, self.account_mode
        )
    }

    /// The context's own invariants: every page's user count is the number of (area, HWPT)
    /// pairs that map it, a pinned page has a frame, areas do not overlap, every area's pages
    /// object exists and counts it, and HWPTs and IOASes name each other.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut users: BTreeMap<u32, Vec<u32>> = self
            .pages
            .iter()
            .map(|(id, p)| (*id, vec![0; p.users.len()]))
            .collect();
        let mut refs: BTreeMap<u32, u32> = BTreeMap::new();
        for (id, o) in &self.objs {
            let Obj::Ioas(i) = o else { continue };
            let mut prev: Option<u64> = None;
            for (s, a) in &i.areas {
                if prev.is_some_and(|l| *s <= l) || a.last < *s {
                    return Err(format!("ioas {id}: area 0x{s:x} overlaps or is empty"));
                }
                prev = Some(a.last);
                let u = users
                    .get_mut(&a.pages)
                    .ok_or_else(|| format!("ioas {id}: area 0x{s:x} has no pages object"))?;
                *refs.entry(a.pages).or_insert(0) += 1;
                let end = a.first_page + a.npages(*s);
                if end as usize > u.len() {
                    return Err(format!("ioas {id}: area 0x{s:x} runs past its pages"));
                }
                for k in a.first_page..end {
                    u[k as usize] += i.hwpts.len() as u32;
                }
            }
            for h in &i.hwpts {
                if self.hwpt(*h).map(|x| x.ioas) != Ok(*id) {
                    return Err(format!("ioas {id}: hwpt {h} is not bound to it"));
                }
            }
        }
        for (id, p) in &self.pages {
            if refs.get(id).copied().unwrap_or(0) != p.refs {
                return Err(format!("pages {id}: {} refs, areas say otherwise", p.refs));
            }
            if users[id] != p.users {
                return Err(format!(
                    "pages {id}: users {:?}, (area, hwpt) pairs {:?}",
                    p.users, users[id]
                ));
            }
        }
        Ok(())
    }

    /// The sticky flush bit of the pages behind `iova` of an IOAS (None if no area maps it).
    pub fn flagged(&self, ioas: u32, iova: u64) -> Option<bool> {
        let (_, a) = self.ioas(ioas).ok()?.areas.range(..=iova).next_back()?;
        (iova <= a.last).then(|| self.pages.get(&a.pages).is_some_and(|p| p.flagged))
    }

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

    // ---- map, copy, unmap ---------------------------------------------------------------------

    fn check_iova<P: Platform + ?Sized>(
        &self,
        p: &P,
        ioas: u32,
        iova: u64,
        length: u64,
    ) -> Result<(), Errno> {
        let i = self.ioas(ioas)?;
        if iova % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let r = IovaRange::from_size(iova, length).ok_or(Errno::EOVERFLOW)?;
        if self.reserved(p, i).iter().any(|x| x.overlaps(&r)) {
            return Err(Errno::EINVAL);
        }
        if overlapping(&i.areas, r).next().is_some() {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    /// `iopt_alloc_iova`: the lowest free IOVA inside the allowed ranges (all of
    /// `[PAGE_SIZE, 2^64 - PAGE_SIZE)` without any), outside reserved ranges and areas, aligned
    /// like the user address up to 2 MiB.
    fn alloc_iova<P: Platform + ?Sized>(
        &self,
        p: &P,
        ioas: u32,
        addr: u64,
        length: u64,
    ) -> Result<u64, Errno> {
        if length == 0 || length >= u64::MAX / 2 {
            return Err(Errno::EOVERFLOW);
        }
        let i = self.ioas(ioas)?;
        let pow = length.next_power_of_two();
        let mut align = if addr == 0 {
            pow
        } else {
            pow.min(1u64 << addr.trailing_zeros())
        };
        align = align.clamp(PAGE_SIZE, 2 << 20);
        let allowed = if i.allowed.is_empty() {
            vec![IovaRange {
                start: PAGE_SIZE,
                last: u64::MAX - PAGE_SIZE,
            }]
        } else {
            i.allowed.clone()
        };
        let mut used = self.reserved(p, i);
        used.extend(i.areas.iter().map(|(s, a)| IovaRange {
            start: *s,
            last: a.last,
        }));
        used.sort();
        for a in allowed {
            for h in holes(&used) {
                let Some(lo) = h.start.max(a.start).checked_next_multiple_of(align) else {
                    continue;
                };
                let hi = h.last.min(a.last);
                if lo <= hi && hi - lo >= length - 1 {
                    return Ok(lo);
                }
            }
        }
        Err(Errno::ENOSPC)
    }

    /// `IOMMU_IOAS_MAP` (and the compat MAP_DMA): a new pages object over the user range, one
    /// area over it, filled into every domain of the IOAS. Returns the IOVA.
    pub fn map<P: Platform + ?Sized>(&mut self, p: &mut P, req: IoasMap) -> Result<u64, Errno> {
        let task = p.current().ok_or(Errno::ENODEV)?;
        self.ioas(req.ioas)?;
        req.uptr.checked_add(req.length).ok_or(Errno::EOVERFLOW)?;
        if req.length == 0 || req.length > u64::MAX - PAGE_SIZE {
            return Err(Errno::EINVAL);
        }
        // Areas are page granular here (the IOAS alignment is the base page).
        if req.length % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let iova = match req.iova {
            Some(iova) => {
                self.check_iova(p, req.ioas, iova, req.length)?;
                iova
            }
            None => self.alloc_iova(p, req.ioas, req.uptr, req.length)?,
        };
        if req.uptr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let npages = req.length >> PAGE_SHIFT;
        self.next_pages += 1;
        let pid = self.next_pages;
        self.pages.insert(
            pid,
            Pages {
                owner: Owner {
                    mm: task.mm,
                    uptr: req.uptr,
                    writable: req.prot.write,
                    lock_cap: task.cap_ipc_lock,
                },
                refs: 0,
                users: vec![0; npages as usize],
                pfns: vec![0; npages as usize],
                flagged: false,
            },
        );
        let r = self.insert_area(p, req.ioas, iova, pid, 0, npages, req.prot);
        if self.pages.get(&pid).is_some_and(|pg| pg.refs == 0) {
            self.pages.remove(&pid);
        }
        r.map(|_| iova)
    }

    /// `IOMMU_IOAS_COPY`: new areas in `dst` over the pages behind `[src_iova, +length)` of
    /// `src`, which must be covered by whole areas without holes (ENOENT otherwise).
    #[allow(clippy::too_many_arguments)]
    pub fn copy<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        src: u32,
        src_iova: u64,
        length: u64,
        dst: u32,
        dst_iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64, Errno> {
        if length == 0 || length % PAGE_SIZE != 0 || src_iova % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let r = IovaRange::from_size(src_iova, length).ok_or(Errno::EOVERFLOW)?;
        // The slices, in order, with no hole.
        let mut slices = Vec::new();
        let mut at = r.start;
        for (s, a) in overlapping(&self.ioas(src)?.areas, r) {
            if s > at {
                return Err(Errno::ENOENT);
            }
            let skip = (at - s) >> PAGE_SHIFT;
            let end = a.last.min(r.last);
            let pg = self.pages.get(&a.pages).ok_or(Errno::ENOENT)?;
            if prot.write && !pg.owner.writable {
                return Err(Errno::EPERM);
            }
            slices.push((a.pages, a.first_page + skip, (end - at + 1) >> PAGE_SHIFT));
            if end == r.last {
                at = u64::MAX;
                break;
            }
            at = end + 1;
        }
        if at != u64::MAX {
            return Err(Errno::ENOENT);
        }
        self.ioas(dst)?;
        let iova = match dst_iova {
            Some(i) => {
                self.check_iova(p, dst, i, length)?;
                i
            }
            None => self.alloc_iova(p, dst, 0, length)?,
        };
        let mut done: Vec<u64> = Vec::new();
        let mut cur = iova;
        for (pid, first, n) in slices {
            if let Err(e) = self.insert_area(p, dst, cur, pid, first, n, prot) {
                for d in done.into_iter().rev() {
                    self.remove_area(p, dst, d);
                }
                return Err(e);
            }
            done.push(cur);
            cur += n << PAGE_SHIFT;
        }
        Ok(iova)
    }

    /// Inserts one area and fills it into every domain of the IOAS (`iopt_fill_domains_pages`);
    /// on failure nothing of it remains.
    #[allow(clippy::too_many_arguments)]
    fn insert_area<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
        iova: u64,
        pid: u32,
        first_page: u64,
        npages: u64,
        prot: Prot,
    ) -> Result<(), Errno> {
        let area = Area {
            last: iova + (npages << PAGE_SHIFT) - 1,
            pages: pid,
            first_page,
            prot,
        };
        let hwpts = self.ioas(ioas)?.hwpts.clone();
        let domains: Vec<(DomainId, bool)> = hwpts
            .iter()
            .filter_map(|h| self.hwpt(*h).ok())
            .map(|h| (h.domain, h.coherent))
            .collect();
        if !domains.is_empty() {
            self.fill(p, ioas, iova, &area, &domains)?;
        }
        if let Some(pg) = self.pages.get_mut(&pid) {
            pg.refs += 1;
        }
        self.ioas_mut(ioas)?.areas.insert(iova, area);
        Ok(())
    }

    /// Maps `area` (at `iova`) into `domains`, batch by batch: pin what is not pinned yet,
    /// flush if the policy says so, map into each domain. On failure every batch done is
    /// unmapped and unpinned again, and the error returned.
    fn fill<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
        iova: u64,
        area: &Area,
        domains: &[(DomainId, bool)],
    ) -> Result<(), Errno> {
        // 5/5 decides on the IOAS's count, not on the domains being filled.
        let noncoherent = self.ioas(ioas)?.noncoherent > 0;
        let large = !self.ioas(ioas)?.disable_large_pages;
        let npages = area.npages(iova);
        let flagged = self.pages.get(&area.pages).is_some_and(|pg| pg.flagged);
        let (set, flush) = self.policy.on_fill(flagged, noncoherent);
        if set {
            if let Some(pg) = self.pages.get_mut(&area.pages) {
                pg.flagged = true;
            }
        }
        let batch = self
            .batch_pages
            .unwrap_or_else(|| p.pin_batch_pages())
            .max(1);
        let mut done = 0u64;
        while done < npages {
            let n = batch.min(npages - done);
            let biova = iova + (done << PAGE_SHIFT);
            let first = area.first_page + done;
            if let Err(e) = self.fill_batch(p, biova, area, first, n, domains, flush, large) {
                self.unfill(p, iova, area, done, domains);
                return Err(e);
            }
            done += n;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn fill_batch<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        iova: u64,
        area: &Area,
        first: u64,
        n: u64,
        domains: &[(DomainId, bool)],
        flush: bool,
        large: bool,
    ) -> Result<(), Errno> {
        let fills = domains.len() as u32;
        self.pin_slice(p, area.pages, first, n, fills)?;
        let runs = self.runs(area.pages, first, n);
        if flush {
            let mut off = 0;
            for &(pfn, k) in &runs {
                let at = iova + (off << PAGE_SHIFT);
                crate::pin::flush_run(p, &CLASSIFIER, FlushReason::Map, at, pfn, k);
                off += k;
            }
        }
        for (di, &(d, _)) in domains.iter().enumerate() {
            if let Err(e) = map_runs(p, d, iova, &runs, area.prot, large) {
                for &(u, _) in &domains[..di] {
                    unmap_range(p, u, iova, n);
                }
                self.release_slice(p, area.pages, first, n, iova, fills);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The first `npages` pages of `area` leave `domains`: unmapped, then released.
    fn unfill<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        iova: u64,
        area: &Area,
        npages: u64,
        domains: &[(DomainId, bool)],
    ) {
        if npages == 0 {
            return;
        }
        for &(d, _) in domains {
            unmap_range(p, d, iova, npages);
        }
        let fills = domains.len() as u32;
        self.release_slice(p, area.pages, area.first_page, npages, iova, fills);
    }

    /// Pins pages `[first, first + n)` of a pages object that no domain maps yet, charging
    /// them; adds `users` users (one per domain being filled) to every page of the slice.
    /// All or nothing.
    fn pin_slice<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        pid: u32,
        first: u64,
        n: u64,
        users: u32,
    ) -> Result<(), Errno> {
        let owner = self.pages.get(&pid).ok_or(Errno::ENOENT)?.owner;
        let mut fresh: Vec<(u64, u64)> = Vec::new(); // (page index, count) pinned here
        let mut i = first;
        let mut result = Ok(());
        'outer: while i < first + n {
            let users = &self.pages.get(&pid).ok_or(Errno::ENOENT)?.users;
            if users[i as usize] > 0 {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < first + n && users[j as usize] == 0 {
                j += 1;
            }
            // Charge first (as iommufd does before it pins), then pin [i, j).
            if let Err(e) = charge(p, owner, (j - i) as i64) {
                result = Err(e);
                break;
            }
            let mut k = i;
            while k < j {
                let vaddr = owner.uptr + (k << PAGE_SHIFT);
                match p.pin_user_pages(owner.mm, vaddr, j - k, owner.writable) {
                    Ok(got) => {
                        let bad = got.iter().position(|x| x.reserved);
                        let good = bad.unwrap_or(got.len());
                        let slot = self.pages.get_mut(&pid).ok_or(Errno::ENOENT)?;
                        for (x, page) in got[..good].iter().enumerate() {
                            slot.pfns[(k + x as u64) as usize] = page.pfn;
                        }
                        if good > 0 {
                            p.trace(Event::Pin {
                                iova: vaddr,
                                npages: good as u64,
                                pfn: got[0].pfn,
                                external: false,
                            });
                            fresh.push((k, good as u64));
                        }
                        k += good as u64;
                        if bad.is_some() {
                            // PFNMAP/MMIO: iommufd pins only struct pages (EFAULT).
                            let _ = charge(p, owner, -((j - k) as i64));
                            result = Err(Errno::EFAULT);
                            break 'outer;
                        }
                    }
                    Err(e) => {
                        let _ = charge(p, owner, -((j - k) as i64));
                        result = Err(e.errno);
                        break 'outer;
                    }
                }
            }
            i = j;
        }
        if let Err(e) = result {
            for (k, c) in fresh.into_iter().rev() {
                for x in k..k + c {
                    if let Some(pg) = self.pages.get_mut(&pid) {
                        p.unpin_page(std::mem::take(&mut pg.pfns[x as usize]), false);
                    }
                }
                let _ = charge(p, owner, -(c as i64));
            }
            return Err(e);
        }
        let slot = self.pages.get_mut(&pid).ok_or(Errno::ENOENT)?;
        for u in &mut slot.users[first as usize..(first + n) as usize] {
            *u += users;
        }
        Ok(())
    }

    /// Drops `fills` users (one per domain leaving) of every page of the slice; pages left
    /// with none are flushed (if the policy says so), unpinned and uncharged, run by run.
    fn release_slice<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        pid: u32,
        first: u64,
        n: u64,
        iova: u64,
        fills: u32,
    ) {
        let policy = self.policy;
        let Some(pg) = self.pages.get_mut(&pid) else {
            return;
        };
        let mut gone: Vec<(u64, u64, u64)> = Vec::new(); // (iova, pfn, count)
        for k in first..first + n {
            let u = &mut pg.users[k as usize];
            let was = *u;
            *u = u.saturating_sub(fills);
            if was > 0 && *u == 0 {
                // A page with no user has no frame: forget it, so that equal states compare
                // equal (checker merging, the fault sweep's residue).
                let pfn = std::mem::take(&mut pg.pfns[k as usize]);
                let at = iova + ((k - first) << PAGE_SHIFT);
                match gone.last_mut() {
                    Some((_, s, c)) if *s + *c == pfn => *c += 1,
                    _ => gone.push((at, pfn, 1)),
                }
            }
        }
        let (flagged, owner) = (pg.flagged, pg.owner);
        let total: u64 = gone.iter().map(|g| g.2).sum();
        if policy.flush_on_unpin(flagged) {
            crate::pin::flush_runs_for_unpin(p, &CLASSIFIER, &gone);
        }
        for &(at, pfn, c) in &gone {
            p.unpin_pages(pfn, c, owner.writable);
            p.trace(Event::Unpin {
                iova: at,
                npages: c,
                pfn,
                external: false,
            });
        }
        if total > 0 {
            let _ = charge(p, owner, -(total as i64));
        }
        if policy == FillPolicy::SeedRepin {
            if let Some(pg) = self.pages.get_mut(&pid) {
                if pg.users.iter().all(|u| *u == 0) {
                    pg.flagged = false;
                }
            }
        }
    }

    /// The frames of pages `[first, first + n)` as contiguous runs `(pfn, count)`.
    fn runs(&self, pid: u32, first: u64, n: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        if let Some(pg) = self.pages.get(&pid) {
            for k in first..first + n {
                let pfn = pg.pfns[k as usize];
                match out.last_mut() {
                    Some((s, c)) if *s + *c == pfn => *c += 1,
                    _ => out.push((pfn, 1)),
                }
            }
        }
        out
    }

    /// Removes one area: out of every domain, then released; the pages object goes with its
    /// last area.
    fn remove_area<P: Platform + ?Sized>(&mut self, p: &mut P, ioas: u32, iova: u64) {
        let Ok(i) = self.ioas_mut(ioas) else {
            return;
        };
        let Some(area) = i.areas.remove(&iova) else {
            return;
        };
        let hwpts = i.hwpts.clone();
        let domains: Vec<(DomainId, bool)> = hwpts
            .iter()
            .filter_map(|h| self.hwpt(*h).ok())
            .map(|h| (h.domain, h.coherent))
            .collect();
        let n = area.npages(iova);
        self.unfill(p, iova, &area, n, &domains);
        if let Some(pg) = self.pages.get_mut(&area.pages) {
            pg.refs -= 1;
            if pg.refs == 0 {
                self.pages.remove(&area.pages);
            }
        }
    }

    /// Splits the area holding `at` (if any) so that `at` is the last byte of an area
    /// (`iopt_cut_iova`, used by the compat TYPE1 unmap once large pages are off).
    fn cut(&mut self, ioas: u32, at: u64) -> Result<(), Errno> {
        let i = self.ioas_mut(ioas)?;
        let Some((&s, a)) = i.areas.range(..=at).next_back() else {
            return Ok(());
        };
        if a.last <= at || (at + 1) % PAGE_SIZE != 0 {
            return Ok(());
        }
        let mut right = a.clone();
        let left_pages = (at + 1 - s) >> PAGE_SHIFT;
        right.first_page += left_pages;
        if let Some(a) = i.areas.get_mut(&s) {
            a.last = at;
        }
        let pid = right.pages;
        i.areas.insert(at + 1, right);
        if let Some(pg) = self.pages.get_mut(&pid) {
            pg.refs += 1;
        }
        Ok(())
    }

    /// `IOMMU_IOAS_UNMAP` of `[iova, iova + length)`, area by area in IOVA order: an area that
    /// starts before the range or ends after it stops the walk with ENOENT (areas removed
    /// before it stay removed). Returns the bytes unmapped. `cut` first splits areas at both
    /// ends (compat TYPE1).
    pub fn unmap<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
        iova: u64,
        length: u64,
        cut: bool,
    ) -> (u64, Result<(), Errno>) {
        if let Err(e) = self.ioas(ioas) {
            return (0, Err(e));
        }
        if length == 0 {
            return (0, Err(Errno::EINVAL));
        }
        let Some(r) = IovaRange::from_size(iova, length) else {
            return (0, Err(Errno::EOVERFLOW));
        };
        if cut {
            if let Err(e) = self
                .cut(ioas, r.last)
                .and_then(|_| match iova.checked_sub(1) {
                    Some(b) => self.cut(ioas, b),
                    None => Ok(()),
                })
            {
                return (0, Err(e));
            }
        }
        self.unmap_range(p, ioas, r)
    }

    /// Unmaps every area of the IOAS.
    pub fn unmap_all<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
    ) -> (u64, Result<(), Errno>) {
        self.unmap_range(p, ioas, IovaRange::FULL)
    }

    fn unmap_range<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
        r: IovaRange,
    ) -> (u64, Result<(), Errno>) {
        let mut unmapped = 0;
        loop {
            let Ok(i) = self.ioas(ioas) else {
                return (unmapped, Err(Errno::ENOENT));
            };
            let Some((s, a)) = overlapping(&i.areas, r).next() else {
                return (unmapped, Ok(()));
            };
            if s < r.start || a.last > r.last {
                return (unmapped, Err(Errno::ENOENT));
            }
            unmapped += a.last - s + 1;
            self.remove_area(p, ioas, s);
        }
    }

    // ---- devices and HWPTs --------------------------------------------------------------------

    /// `VFIO_DEVICE_BIND_IOMMUFD`: a device object for the group's device.
    pub fn bind(&mut self, group: GroupId) -> u32 {
        self.insert(Obj::Device(Idev { group, hwpt: None }))
    }

    /// The unbind at the device file's close: detach, then the object goes.
    pub fn unbind<P: Platform + ?Sized>(&mut self, p: &mut P, idev: u32) {
        self.detach(p, idev);
        self.objs.remove(&idev);
    }

    /// Adds a domain to an IOAS: every area is filled into it (`iopt_table_add_domain`); on
    /// failure the areas done are unfilled and the domain is left empty.
    fn add_domain<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        ioas: u32,
        d: DomainId,
        coherent: bool,
    ) -> Result<(), Errno> {
        let areas: Vec<(u64, Area)> = self
            .ioas(ioas)?
            .areas
            .iter()
            .map(|(s, a)| (*s, a.clone()))
            .collect();
        // An area outside the new domain's aperture: the aperture's complement is reserved in
        // the IOAS, and reserving over an area is EADDRINUSE (`iopt_reserve_iova`).
        let ap = p.domain_info(d).aperture;
        if areas.iter().any(|(s, a)| *s < ap.start || a.last > ap.last) {
            return Err(EADDRINUSE);
        }
        for (k, (s, a)) in areas.iter().enumerate() {
            if let Err(e) = self.fill(p, ioas, *s, a, &[(d, coherent)]) {
                for (s2, a2) in areas[..k].iter().rev() {
                    self.unfill(p, *s2, a2, a2.npages(*s2), &[(d, coherent)]);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// `IOMMU_HWPT_ALLOC` (paging, no flags): a domain for the device's IOMMU over the IOAS,
    /// filled, attached to nothing.
    pub fn hwpt_alloc<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        idev: u32,
        ioas: u32,
    ) -> Result<u32, Errno> {
        let group = self.idev(idev)?.group;
        self.ioas(ioas)?;
        let (d, coherent) = new_domain(p, group)?;
        self.hwpt_new(p, d, coherent, ioas, false)
    }

    /// A HWPT over the IOAS with a fresh domain `d`, filled; on failure `d` is freed.
    fn hwpt_new<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        d: DomainId,
        coherent: bool,
        ioas: u32,
        auto: bool,
    ) -> Result<u32, Errno> {
        // 5/5 counts a non-coherent HWPT before its domain is filled...
        if !coherent {
            self.count_noncoherent(ioas, 1);
        }
        if let Err(e) = self.add_domain(p, ioas, d, coherent) {
            // ... and uncounts on this error path, as posted whatever the coherency.
            if !coherent || self.policy.uncounts_any_failed_hwpt() {
                self.count_noncoherent(ioas, -1);
            }
            p.domain_free(d);
            return Err(e);
        }
        let id = self.insert(Obj::Hwpt(Hwpt {
            ioas,
            domain: d,
            coherent,
            auto,
            devices: Vec::new(),
        }));
        if let Ok(i) = self.ioas_mut(ioas) {
            i.hwpts.push(id);
        }
        Ok(id)
    }

    fn free_hwpt<P: Platform + ?Sized>(&mut self, p: &mut P, id: u32) {
        let Ok(h) = self.hwpt(id).cloned() else {
            return;
        };
        let areas: Vec<(u64, Area)> = self
            .ioas(h.ioas)
            .map(|i| i.areas.iter().map(|(s, a)| (*s, a.clone())).collect())
            .unwrap_or_default();
        for (s, a) in areas.iter().rev() {
            self.unfill(p, *s, a, a.npages(*s), &[(h.domain, h.coherent)]);
        }
        if let Ok(i) = self.ioas_mut(h.ioas) {
            i.hwpts.retain(|x| *x != id);
        }
        if !h.coherent {
            self.count_noncoherent(h.ioas, -1);
        }
        self.objs.remove(&id);
        p.domain_free(h.domain);
    }

    /// Raises or lowers an IOAS's count of non-coherent HWPTs, wrapping as a C `unsigned int`.
    fn count_noncoherent(&mut self, ioas: u32, by: i32) {
        if let Ok(i) = self.ioas_mut(ioas) {
            i.noncoherent = i.noncoherent.wrapping_add_signed(by);
        }
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: to a HWPT by id, or to an IOAS, where an automatic
    /// HWPT of the same IOMMU and coherency is shared or a new one made. A device already
    /// attached is moved (replace). Returns the HWPT id. EINVAL for an IOAS whose areas the
    /// device's reserved regions overlap (EADDRINUSE) or a HWPT of another IOMMU.
    pub fn attach<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        idev: u32,
        pt: u32,
    ) -> Result<u32, Errno> {
        let group = self.idev(idev)?.group;
        let target = match self.obj_type(pt)? {
            ObjType::Hwpt => pt,
            ObjType::Ioas => self.auto_hwpt(p, group, pt)?,
            ObjType::Device => return Err(Errno::EINVAL),
        };
        if self.idev(idev)?.hwpt == Some(target) {
            return Ok(target);
        }
        let h = self.hwpt(target)?.clone();
        // The device's reserved regions must not cover an area of the IOAS.
        let resv = p.group_info(group).map_err(|e| e.errno)?.reserved;
        let areas = &self.ioas(h.ioas)?.areas;
        if resv
            .iter()
            .filter(|x| x.kind != ResvKind::DirectRelaxable)
            .any(|x| overlapping(areas, x.range).next().is_some())
        {
            self.drop_unused_auto(p, target);
            return Err(EADDRINUSE);
        }
        // A replace (the device is attached elsewhere) is atomic in the kernel: on failure
        // the device stays where it was. The platform attaches one domain at a time, so the
        // old one is left, the new one tried, and the old one taken back if that fails.
        let old = self.idev(idev)?.hwpt;
        let old_domain = old.and_then(|o| self.hwpt(o).ok()).map(|x| x.domain);
        if let Some(d) = old_domain {
            p.detach_group(d, group);
        }
        if let Err(e) = p.attach_group(h.domain, group) {
            if let Some(d) = old_domain {
                // Back to a domain the group was just attached to: the kernel's revert
                // (`__iommu_group_set_domain_nofail`) cannot fail.
                let _ = p.attach_group(d, group);
            }
            self.drop_unused_auto(p, target);
            return Err(e.errno);
        }
        if let Some(o) = old {
            self.forget_attachment(p, idev, o, group);
        }
        p.trace(Event::Attach {
            group,
            domain: h.domain,
            coherent: h.coherent,
            new_domain: h.devices.is_empty(),
        });
        if let Some(Obj::Hwpt(hw)) = self.objs.get_mut(&target) {
            hw.devices.push(idev);
        }
        self.idev_mut(idev)?.hwpt = Some(target);
        Ok(target)
    }

    /// The automatic HWPT a device attaching to `ioas` uses: an existing one of the same
    /// IOMMU (ops) and coherency as a domain for the device (which is then freed), else a
    /// new one over that domain.
    fn auto_hwpt<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        group: GroupId,
        ioas: u32,
    ) -> Result<u32, Errno> {
        let hwpts = self.ioas(ioas)?.hwpts.clone();
        let (d, coherent) = new_domain(p, group)?;
        let ops = p.domain_info(d).ops;
        for h in hwpts {
            if let Ok(x) = self.hwpt(h) {
                if x.auto && x.coherent == coherent && p.domain_info(x.domain).ops == ops {
                    p.domain_free(d);
                    return Ok(h);
                }
            }
        }
        self.hwpt_new(p, d, coherent, ioas, true)
    }

    fn drop_unused_auto<P: Platform + ?Sized>(&mut self, p: &mut P, hwpt: u32) {
        if self
            .hwpt(hwpt)
            .is_ok_and(|h| h.auto && h.devices.is_empty())
        {
            self.free_hwpt(p, hwpt);
        }
    }

    fn detach_from<P: Platform + ?Sized>(&mut self, p: &mut P, idev: u32, hwpt: u32) {
        let Ok(group) = self.idev(idev).map(|d| d.group) else {
            return;
        };
        let Ok(h) = self.hwpt(hwpt) else {
            return;
        };
        p.detach_group(h.domain, group);
        self.forget_attachment(p, idev, hwpt, group);
    }

    /// The bookkeeping of a detach whose platform side is done: the HWPT forgets the device
    /// (and goes if it was automatic and this was its last), the device its HWPT.
    fn forget_attachment<P: Platform + ?Sized>(
        &mut self,
        p: &mut P,
        idev: u32,
        hwpt: u32,
        group: GroupId,
    ) {
        let Ok(h) = self.hwpt(hwpt).cloned() else {
            return;
        };
        if let Some(Obj::Hwpt(hw)) = self.objs.get_mut(&hwpt) {
            hw.devices.retain(|d| *d != idev);
        }
        let freed = h.auto && h.devices.len() == 1;
        p.trace(Event::Detach {
            group,
            domain: h.domain,
            freed,
        });
        if let Ok(d) = self.idev_mut(idev) {
            d.hwpt = None;
        }
        self.drop_unused_auto(p, hwpt);
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT` (and unbind): an automatic HWPT left without devices
    /// is destroyed. Nothing happens for a device attached to nothing.
    pub fn detach<P: Platform + ?Sized>(&mut self, p: &mut P, idev: u32) {
        if let Some(h) = self.idev(idev).ok().and_then(|d| d.hwpt) {
            self.detach_from(p, idev, h);
        }
    }

    /// The last close of `/dev/iommu`: devices are already unbound by their files; every
    /// HWPT, then every IOAS, goes.
    pub fn close<P: Platform + ?Sized>(&mut self, p: &mut P) {
        let devs: Vec<u32> = self
            .objs
            .iter()
            .filter(|(_, o)| matches!(o, Obj::Device(_)))
            .map(|(k, _)| *k)
            .collect();
        for d in devs {
            self.unbind(p, d);
        }
        let hwpts: Vec<u32> = self
            .objs
            .iter()
            .filter(|(_, o)| matches!(o, Obj::Hwpt(_)))
            .map(|(k, _)| *k)
            .collect();
        for h in hwpts {
            self.free_hwpt(p, h);
        }
        let ioases: Vec<u32> = self.objs.keys().copied().collect();
        for i in ioases {
            let _ = self.destroy(p, i);
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

/// Charges (or, negative, uncharges) pages of a pages object; the limit applies to a charge
/// by a task without CAP_IPC_LOCK.
fn charge<P: Platform + ?Sized>(p: &mut P, owner: Owner, n: i64) -> Result<(), Errno> {
    if n == 0 || owner.lock_cap {
        return Ok(());
    }
    p.account(owner.mm, n, n > 0).map_err(|e| e.errno)
}

/// Maps runs of frames at `iova` into a domain, run by run (page by page without large
/// pages); on failure what this call mapped is unmapped.
fn map_runs<P: Platform + ?Sized>(
    p: &mut P,
    d: DomainId,
    iova: u64,
    runs: &[(u64, u64)],
    prot: Prot,
    large: bool,
) -> Result<(), Errno> {
    let mut off = 0u64;
    for &(pfn, n) in runs {
        let step = if large { n } else { 1 };
        let mut k = 0;
        while k < n {
            let at = iova + ((off + k) << PAGE_SHIFT);
            let pa = (pfn + k) << PAGE_SHIFT;
            if let Err(e) = p.iommu_map(d, at, pa, step << PAGE_SHIFT, prot) {
                unmap_range(p, d, iova, off + k);
                return Err(e.errno);
            }
            p.trace(Event::Map {
                domain: d,
                iova: at,
                npages: step,
                pa,
            });
            k += step;
        }
        off += n;
    }
    Ok(())
}

/// Unmaps `npages` pages at `iova` from a domain and syncs its IOTLB.
fn unmap_range<P: Platform + ?Sized>(p: &mut P, d: DomainId, iova: u64, npages: u64) {
    if npages == 0 {
        return;
    }
    let mut done = 0;
    let size = npages << PAGE_SHIFT;
    while done < size {
        let n = p.iommu_unmap(d, iova + done, size - done);
        if n == 0 {
            done += PAGE_SIZE;
        } else {
            done += n;
        }
    }
    p.iotlb_sync(d);
    p.trace(Event::Unmap {
        domain: d,
        iova,
        npages,
    });
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
