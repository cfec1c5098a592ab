//! Model-based test of the type1 engine: a naive per-page reference model against the real
//! engine on the simulated default machine (group 0 coherent with `dev0`, group 1 non-coherent
//! with `dev1`, group 2 emulated with `mdev0`), policy `seed`.
//!
//! The model ([`Model`]) is written to be obviously right rather than efficient: which mapping
//! covers each IOVA page, the mappings' attributes, external pin counts per page and dirty bits
//! per page. Every expected quantity (errno, mappings, pinned frames, `locked_vm`, dirty bitmap)
//! is recomputed from those tables. Where an exact errno would need the model to know engine
//! internals, generation is restricted instead (see [`Machine::preconditions`]).
//!
//! (Over 800 lines: the model, its transitions and the checks after each are one state
//! machine, read together.)

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::FileFailurePersistence;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use type1_check::VADDR;
use type1_core::{abi, Errno, MmId, Prot};
use type1_scenario::{parse::Op, StepError, World};

/// Page size.
const PG: u64 = 4096;
/// Pages of user memory mmapped at `VADDR`; a mapping whose vaddr range goes past them is
/// unbacked (EFAULT when pinned).
const MEM_PAGES: u64 = 8;
/// IOVA pages the generator draws from.
const IOVA_PAGES: u64 = 16;
/// Size of the per-page table (IOVA_PAGES plus the largest generated length).
const TABLE: usize = 32;

// ---- the reference model --------------------------------------------------------------------

/// One mapping of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    npages: u64,
    /// First user page (offset from `VADDR`, in pages).
    vpage: u64,
    /// MAP flags: READ = 1, WRITE = 2.
    prot: u32,
    /// `is_noncoherent` as the seed policy defines it.
    noncoherent: bool,
    /// Invalidated by UNMAP with VADDR.
    invalid: bool,
}

impl Mapping {
    /// Every user page is backed.
    fn good(&self) -> bool {
        self.vpage + self.npages <= MEM_PAGES
    }
}

/// What a step must return.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// A successful UNMAP reporting this many bytes.
    Unmapped(u64),
    /// A successful GET_BITMAP returning this single word.
    Bitmap(u64),
    Err(Errno),
}

/// The reference model of one container.
#[derive(Clone, Debug)]
struct Model {
    v2: bool,
    /// Groups in the container (the backend exists iff this is not empty).
    groups: BTreeSet<u32>,
    mdev_open: bool,
    /// Per IOVA page: the first page of the mapping covering it.
    pages: Vec<Option<u64>>,
    /// Mappings by first page.
    maps: BTreeMap<u64, Mapping>,
    /// External pin count per IOVA page.
    ext: BTreeMap<u64, u32>,
    tracking: bool,
    /// Dirty bits per IOVA page (only while tracking).
    dirty: BTreeSet<u64>,
    /// User pages that were writable through the non-coherent domain and have not been
    /// flushed since (seed flushes a flagged mapping's pages when its remote pins drop).
    unsafe_vp: BTreeSet<u64>,
    /// Pages flushed by the current step (scratch).
    flushed: BTreeSet<u64>,
    /// Prediction for the last step.
    last: Outcome,
}

/// One generated operation.
#[derive(Clone, Debug)]
enum T {
    Attach(u32),
    Detach(u32),
    Map {
        iova: u64,
        vpage: u64,
        npages: u64,
        prot: u32,
    },
    /// MAP with VADDR (re-validate).
    Revalidate {
        iova: u64,
        npages: u64,
        vpage: u64,
    },
    Unmap {
        iova: u64,
        npages: u64,
        vaddr: bool,
    },
    UnmapAll {
        vaddr: bool,
    },
    OpenMdev,
    Pin {
        iova: u64,
        npage: u64,
        prot: u32,
    },
    Unpin {
        iova: u64,
        npage: u64,
    },
    DirtyStart,
    DirtyStop,
    DirtyGet {
        iova: u64,
        npages: u64,
    },
    CpuWrite {
        vpage: u64,
        byte: u8,
    },
    CpuRead {
        vpage: u64,
    },
    Dma {
        group: u32,
        write: Option<u8>,
        iova: u64,
        no_snoop: bool,
    },
    Close,
}

fn prot_ok(have: u32, want: u32) -> bool {
    want & !have == 0
}

impl Model {
    fn new(v2: bool) -> Model {
        Model {
            v2,
            groups: BTreeSet::new(),
            mdev_open: false,
            pages: vec![None; TABLE],
            maps: BTreeMap::new(),
            ext: BTreeMap::new(),
            tracking: false,
            dirty: BTreeSet::new(),
            unsafe_vp: BTreeSet::new(),
            flushed: BTreeSet::new(),
            last: Outcome::Ok,
        }
    }

    fn set(&self) -> bool {
        !self.groups.is_empty()
    }

    /// At least one IOMMU domain is linked.
    fn domains(&self) -> bool {
        self.groups.contains(&0) || self.groups.contains(&1)
    }

    fn noncoherent(&self) -> bool {
        self.groups.contains(&1)
    }

    fn emulated(&self) -> bool {
        self.groups.contains(&2)
    }

    fn map_at(&self, page: u64) -> Option<(u64, &Mapping)> {
        let s = self.pages.get(page as usize).copied().flatten()?;
        Some((s, &self.maps[&s]))
    }

    /// Start pages of the mappings overlapping `[first, last]`, in IOVA order.
    fn overlapping(&self, first: u64, last: u64) -> Vec<u64> {
        let mut v: Vec<u64> = (first..=last)
            .filter_map(|p| self.pages.get(p as usize).copied().flatten())
            .collect();
        v.dedup();
        v
    }

    fn remove(&mut self, start: u64) {
        let m = self.maps.remove(&start).expect("mapping exists");
        if self.domains() && m.noncoherent {
            self.flushed.extend(m.vpage..m.vpage + m.npages);
        }
        for p in start..start + m.npages {
            self.pages[p as usize] = None;
            self.ext.remove(&p);
            self.dirty.remove(&p);
        }
    }

    /// Forget everything the backend held (release).
    fn release(&mut self) {
        if self.domains() {
            for m in self.maps.values().filter(|m| m.noncoherent) {
                self.flushed.extend(m.vpage..m.vpage + m.npages);
            }
        }
        self.groups.clear();
        self.mdev_open = false;
        self.pages = vec![None; TABLE];
        self.maps.clear();
        self.ext.clear();
        self.tracking = false;
        self.dirty.clear();
    }

    fn ext_pinned_in(&self, start: u64, m: &Mapping) -> u64 {
        (start..start + m.npages)
            .filter(|p| self.ext.contains_key(p))
            .count() as u64
    }

    /// Pages a mapping charges to the mm: all of them while remote pins exist, otherwise only
    /// the externally pinned ones.
    fn charge(&self, start: u64, m: &Mapping) -> u64 {
        if self.domains() {
            m.npages
        } else {
            self.ext_pinned_in(start, m)
        }
    }

    fn locked_vm(&self) -> u64 {
        self.maps.iter().map(|(s, m)| self.charge(*s, m)).sum()
    }

    /// Distinct user pages that hold at least one pin.
    fn pinned_frames(&self) -> u64 {
        self.pinned_vpages().len() as u64
    }

    /// Ends a step for the flush bookkeeping: pages flushed by it are safe again, pages still
    /// writable through the non-coherent domain are not. (A MAP or replay that fails part-way
    /// exposes and flushes its prefix within the same step, so it changes nothing here.)
    fn update_unsafe(&mut self) {
        for v in std::mem::take(&mut self.flushed) {
            self.unsafe_vp.remove(&v);
        }
        if self.noncoherent() {
            for m in self.maps.values().filter(|m| m.prot & 2 != 0 && m.good()) {
                self.unsafe_vp.extend(m.vpage..m.vpage + m.npages);
            }
        }
    }

    /// Distinct user pages that hold at least one pin.
    fn pinned_vpages(&self) -> BTreeSet<u64> {
        let mut v = BTreeSet::new();
        for (s, m) in &self.maps {
            if self.domains() {
                v.extend(m.vpage..m.vpage + m.npages);
            }
            for p in *s..s + m.npages {
                if self.ext.contains_key(&p) {
                    v.insert(m.vpage + (p - s));
                }
            }
        }
        v
    }

    fn step(&mut self, t: &T) -> Outcome {
        use Outcome::Err as E;
        match *t {
            T::Attach(g) => {
                if self.groups.contains(&g) {
                    return E(Errno::EINVAL);
                }
                if self.set() {
                    if self.maps.values().any(|m| m.invalid) {
                        return E(Errno::EBUSY);
                    }
                    // The first IOMMU domain pins every mapping (replay); later ones read
                    // the head domain back.
                    if g != 2 && !self.domains() && self.maps.values().any(|m| !m.good()) {
                        return E(Errno::EFAULT);
                    }
                }
                self.groups.insert(g);
                if g == 1 {
                    for m in self.maps.values_mut() {
                        m.noncoherent = true;
                    }
                }
                Outcome::Ok
            }
            T::Detach(g) => {
                if !self.groups.contains(&g) {
                    return E(Errno::EINVAL);
                }
                if g == 2 && self.mdev_open {
                    return E(Errno::EBUSY);
                }
                self.groups.remove(&g);
                if self.groups.is_empty() {
                    self.release();
                } else if g != 2 {
                    if !self.domains() {
                        // Last domain with emulated groups left: re-account, flags cleared.
                        for m in self.maps.values_mut() {
                            if m.noncoherent {
                                self.flushed.extend(m.vpage..m.vpage + m.npages);
                            }
                            m.noncoherent = false;
                        }
                    }
                    if self.tracking {
                        // A non-pinning group left: every bitmap is filled.
                        for (s, m) in &self.maps {
                            self.dirty.extend(*s..s + m.npages);
                        }
                    }
                }
                Outcome::Ok
            }
            T::Map {
                iova,
                vpage,
                npages,
                prot,
            } => {
                if !self.set() || npages == 0 || prot == 0 {
                    return E(Errno::EINVAL);
                }
                if !self.overlapping(iova, iova + npages - 1).is_empty() {
                    return E(Errno::EEXIST);
                }
                let m = Mapping {
                    npages,
                    vpage,
                    prot,
                    noncoherent: self.noncoherent(),
                    invalid: false,
                };
                if self.domains() && !m.good() {
                    return E(Errno::EFAULT);
                }
                for p in iova..iova + npages {
                    self.pages[p as usize] = Some(iova);
                }
                self.maps.insert(iova, m);
                Outcome::Ok
            }
            T::Revalidate { iova, npages, .. } => {
                if !self.set() || npages == 0 {
                    return E(Errno::EINVAL);
                }
                let o = self.overlapping(iova, iova + npages - 1);
                if o.is_empty() {
                    return E(Errno::ENOENT);
                }
                match self.maps.get_mut(&iova) {
                    Some(m) if o.len() == 1 && m.invalid && m.npages == npages => {
                        m.invalid = false;
                        Outcome::Ok
                    }
                    _ => E(Errno::EINVAL),
                }
            }
            T::Unmap {
                iova,
                npages,
                vaddr,
            } => {
                if !self.set() {
                    return E(Errno::EINVAL);
                }
                if vaddr && self.emulated() {
                    return E(Errno::EBUSY);
                }
                if npages == 0 {
                    return E(Errno::EINVAL);
                }
                let last = iova + npages - 1;
                if self.v2 {
                    if self.map_at(iova).is_some_and(|(s, _)| s != iova) {
                        return E(Errno::EINVAL);
                    }
                    if self
                        .map_at(last)
                        .is_some_and(|(s, m)| s + m.npages - 1 != last)
                    {
                        return E(Errno::EINVAL);
                    }
                }
                let mut hit = self.overlapping(iova, last);
                if !self.v2 && hit.first().is_some_and(|s| *s < iova) {
                    hit.clear();
                }
                self.unmap(&hit, vaddr)
            }
            T::UnmapAll { vaddr } => {
                if !self.set() {
                    return E(Errno::EINVAL);
                }
                if vaddr && self.emulated() {
                    return E(Errno::EBUSY);
                }
                let hit: Vec<u64> = self.maps.keys().copied().collect();
                self.unmap(&hit, vaddr)
            }
            T::OpenMdev => {
                if !self.emulated() {
                    return E(Errno::EINVAL);
                }
                self.mdev_open = true;
                Outcome::Ok
            }
            T::Pin { iova, npage, prot } => {
                if !self.mdev_open || npage == 0 {
                    return E(Errno::EINVAL);
                }
                if !self.v2 {
                    return E(Errno::EACCES);
                }
                if self.maps.values().any(|m| m.invalid) {
                    return E(Errno::EBUSY);
                }
                for p in iova..iova + npage {
                    let err = match self.map_at(p) {
                        None => Some(Errno::EINVAL),
                        Some((_, m)) if !prot_ok(m.prot, prot) => Some(Errno::EPERM),
                        Some((s, m))
                            if !self.ext.contains_key(&p) && m.vpage + (p - s) >= MEM_PAGES =>
                        {
                            Some(Errno::EFAULT)
                        }
                        _ => None,
                    };
                    if let Some(e) = err {
                        // The pages pinned before the failure are unpinned again, but their
                        // dirty bits stay set (as in the kernel's pin_unwind).
                        if self.tracking {
                            self.dirty.extend(iova..p);
                        }
                        return E(e);
                    }
                }
                for p in iova..iova + npage {
                    *self.ext.entry(p).or_insert(0) += 1;
                    if self.tracking {
                        self.dirty.insert(p);
                    }
                }
                Outcome::Ok
            }
            T::Unpin { iova, npage } => {
                if !self.set() {
                    return E(Errno::EINVAL);
                }
                if self.v2 {
                    for p in iova..iova + npage {
                        if self.map_at(p).is_none() {
                            break;
                        }
                        if let Some(c) = self.ext.get_mut(&p) {
                            *c -= 1;
                            if *c == 0 {
                                self.ext.remove(&p);
                            }
                        }
                    }
                }
                Outcome::Ok
            }
            T::DirtyStart | T::DirtyStop | T::DirtyGet { .. } => {
                if !self.set() {
                    return E(Errno::EINVAL);
                }
                if !self.v2 {
                    return E(Errno::EACCES);
                }
                match *t {
                    T::DirtyStart => {
                        if !self.tracking {
                            self.tracking = true;
                            self.dirty = self.ext.keys().copied().collect();
                        }
                        Outcome::Ok
                    }
                    T::DirtyStop => {
                        self.tracking = false;
                        self.dirty.clear();
                        Outcome::Ok
                    }
                    T::DirtyGet { iova, npages } => self.dirty_get(iova, npages),
                    _ => unreachable!(),
                }
            }
            T::CpuWrite { vpage, .. } | T::CpuRead { vpage } => {
                if vpage < MEM_PAGES {
                    Outcome::Ok
                } else {
                    E(Errno::EFAULT)
                }
            }
            T::Dma {
                group, write, iova, ..
            } => {
                let want = if write.is_some() { 2 } else { 1 };
                let ok = group != 2
                    && self.groups.contains(&group)
                    && self
                        .map_at(iova)
                        .is_some_and(|(_, m)| prot_ok(m.prot, want));
                if ok {
                    Outcome::Ok
                } else {
                    E(Errno::EFAULT)
                }
            }
            T::Close => {
                self.release();
                Outcome::Ok
            }
        }
    }

    fn unmap(&mut self, hit: &[u64], vaddr: bool) -> Outcome {
        let bytes = hit.iter().map(|s| self.maps[s].npages * PG).sum();
        if vaddr {
            if hit.iter().any(|s| self.maps[s].invalid) {
                return Outcome::Err(Errno::EINVAL);
            }
            for s in hit {
                self.maps.get_mut(s).expect("hit").invalid = true;
            }
        } else {
            for s in hit {
                self.remove(*s);
            }
        }
        Outcome::Unmapped(bytes)
    }

    fn dirty_get(&mut self, iova: u64, npages: u64) -> Outcome {
        if !self.tracking || npages == 0 {
            return Outcome::Err(Errno::EINVAL);
        }
        let last = iova + npages - 1;
        if self.map_at(iova).is_some_and(|(s, _)| s != iova)
            || self
                .map_at(last)
                .is_some_and(|(s, m)| s + m.npages - 1 != last)
        {
            return Outcome::Err(Errno::EINVAL);
        }
        let mut word = 0u64;
        for s in self.overlapping(iova, last) {
            let n = self.maps[&s].npages;
            for p in s..s + n {
                // Non-pinning IOMMU groups (0 and 1) make every mapped page dirty.
                if self.domains() || self.dirty.contains(&p) {
                    word |= 1 << (p - iova);
                }
                // Re-arm: only the perpetually dirty external pins stay set.
                if self.ext.contains_key(&p) {
                    self.dirty.insert(p);
                } else {
                    self.dirty.remove(&p);
                }
            }
        }
        Outcome::Bitmap(word)
    }
}

// ---- generation ---------------------------------------------------------------------------

/// The reference state machine; `V2` selects TYPE1v2 (true) or TYPE1 (false).
struct Machine<const V2: bool>;

fn w<S: Strategy<Value = T> + 'static>(weight: u32, s: S) -> (u32, BoxedStrategy<T>) {
    (weight, s.boxed())
}

impl<const V2: bool> ReferenceStateMachine for Machine<V2> {
    type State = Model;
    type Transition = T;

    /// Most cases start from a container with some groups attached (and `mdev0` open), so
    /// that fewer steps are spent on EINVAL from a container without a backend.
    fn init_state() -> BoxedStrategy<Model> {
        (prop::collection::btree_set(0..3u32, 0..=3), any::<bool>())
            .prop_map(|(groups, open)| {
                let mut m = Model::new(V2);
                m.mdev_open = open && groups.contains(&2);
                m.groups = groups;
                m
            })
            .boxed()
    }

    fn transitions(s: &Model) -> BoxedStrategy<T> {
        let exact: Vec<(u64, u64, u64)> = s
            .maps
            .iter()
            .map(|(st, m)| (*st, m.npages, m.vpage))
            .collect();
        let mapped: Vec<u64> = (0..TABLE as u64)
            .filter(|p| s.pages[*p as usize].is_some())
            .collect();
        // A page: anywhere, or (when there is one) a mapped page.
        let page = if mapped.is_empty() {
            (0..IOVA_PAGES).boxed()
        } else {
            prop_oneof![1 => 0..IOVA_PAGES, 3 => prop::sample::select(mapped)].boxed()
        };
        // A device's group: mostly one with an IOMMU domain.
        let attached: Vec<u32> = s.groups.iter().copied().filter(|g| *g != 2).collect();
        let dma_group = if attached.is_empty() {
            (0..3u32).boxed()
        } else {
            prop_oneof![1 => 0..3u32, 4 => prop::sample::select(attached)].boxed()
        };
        let exact = if exact.is_empty() {
            (0..IOVA_PAGES, 1..4u64, 0..MEM_PAGES).boxed()
        } else {
            prop_oneof![
                1 => (0..IOVA_PAGES, 1..4u64, 0..MEM_PAGES),
                3 => prop::sample::select(exact),
            ]
            .boxed()
        };
        let npages = prop_oneof![1 => Just(0u64), 12 => 1..4u64];
        let prot = prop_oneof![1 => Just(0u32), 12 => 1..4u32];
        // State-dependent weights: get a backend, open mdev0, then mostly use them.
        let attach = if s.set() { 3 } else { 12 };
        let open = if s.emulated() && !s.mdev_open { 8 } else { 1 };
        let pin = if s.mdev_open { 8 } else { 1 };
        Union::new_weighted(vec![
            w(attach, (0..3u32).prop_map(T::Attach)),
            w(1, (0..3u32).prop_map(T::Detach)),
            w(
                7,
                (0..IOVA_PAGES, 0..MEM_PAGES, npages.clone(), prot).prop_map(
                    |(iova, vpage, npages, prot)| T::Map {
                        iova,
                        vpage,
                        npages,
                        prot,
                    },
                ),
            ),
            w(
                2,
                exact
                    .clone()
                    .prop_map(|(iova, npages, vpage)| T::Revalidate {
                        iova,
                        npages,
                        vpage,
                    }),
            ),
            w(
                3,
                (exact.clone(), prop::bool::weighted(0.3)).prop_map(
                    |((iova, npages, _), vaddr)| T::Unmap {
                        iova,
                        npages,
                        vaddr,
                    },
                ),
            ),
            w(
                2,
                (page.clone(), npages.clone(), prop::bool::weighted(0.3)).prop_map(
                    |(iova, npages, vaddr)| T::Unmap {
                        iova,
                        npages: npages * 2,
                        vaddr,
                    },
                ),
            ),
            w(1, any::<bool>().prop_map(|vaddr| T::UnmapAll { vaddr })),
            w(open, Just(T::OpenMdev)),
            w(
                pin,
                (page.clone(), 1..3u64, 1..4u32).prop_map(|(iova, npage, prot)| T::Pin {
                    iova,
                    npage,
                    prot,
                }),
            ),
            w(
                2,
                (page.clone(), 1..3u64).prop_map(|(iova, npage)| T::Unpin { iova, npage }),
            ),
            w(1, Just(T::DirtyStart)),
            w(1, Just(T::DirtyStop)),
            w(
                2,
                prop_oneof![
                    exact.prop_map(|(iova, npages, _)| (iova, npages)),
                    (0..IOVA_PAGES, 1..8u64),
                ]
                .prop_map(|(iova, npages)| T::DirtyGet { iova, npages }),
            ),
            w(
                2,
                (0..=MEM_PAGES, any::<u8>()).prop_map(|(vpage, byte)| T::CpuWrite { vpage, byte }),
            ),
            w(1, (0..=MEM_PAGES).prop_map(|vpage| T::CpuRead { vpage })),
            w(
                4,
                (
                    dma_group,
                    prop::option::of(any::<u8>()),
                    page,
                    prop::bool::weighted(0.7),
                )
                    .prop_map(|(group, write, iova, no_snoop)| T::Dma {
                        group,
                        write,
                        iova,
                        no_snoop,
                    }),
            ),
            w(1, Just(T::Close)),
        ])
        .boxed()
    }

    fn apply(mut state: Model, t: &T) -> Model {
        state.last = state.step(t);
        state.update_unsafe();
        state
    }

    /// Restrictions that keep every generated step well defined (also re-checked while
    /// shrinking, when earlier steps disappear).
    fn preconditions(s: &Model, t: &T) -> bool {
        match *t {
            // Re-validation must name the same memory (V3: the engine cannot check it, and the
            // simulator's page-table check would rightly object).
            T::Revalidate {
                iova,
                npages,
                vpage,
            } => s
                .maps
                .get(&iova)
                .is_none_or(|m| !(m.invalid && m.npages == npages) || m.vpage == vpage),
            // The engine's unpin stops at the first unmapped page while the scenario world
            // forgets the device's pins for the whole range: keep them in step.
            T::Unpin { iova, npage } => {
                !(npage == 2 && s.map_at(iova).is_none() && s.ext.contains_key(&(iova + 1)))
            }
            _ => true,
        }
    }
}

// ---- the system under test ----------------------------------------------------------------

/// The world plus the mapper's address space.
struct Sut {
    w: World,
    mm: MmId,
    steps: usize,
}

const C: &str = "c";

/// The violations of the run: every one fails the test. (The simulator once reported
/// `unflushed_unpin` for a frame flushed when it left the non-coherent domain but kept pinned
/// by something else; that false positive is fixed, with `regress-sim-exposed-*` scenarios,
/// so nothing is filtered here.)
fn unexplained(w: &World, _mm: MmId, _model: &Model) -> Vec<type1_scenario::world::Noted> {
    w.pending.clone()
}

fn dev(g: u32) -> String {
    if g == 2 {
        "mdev0".into()
    } else {
        format!("dev{g}")
    }
}

fn prot_of(p: u32) -> Prot {
    Prot {
        read: p & 1 != 0,
        write: p & 2 != 0,
    }
}

fn ops_of(t: &T, w: &World, v2: bool) -> Vec<Op> {
    let c = || C.to_string();
    match *t {
        T::Attach(group) => {
            let mut v = vec![Op::Attach {
                container: c(),
                group,
            }];
            if !w.container(C).is_some_and(|c| c.is_set()) {
                v.push(Op::SetIommu {
                    container: c(),
                    kind: if v2 {
                        abi::VFIO_TYPE1V2_IOMMU
                    } else {
                        abi::VFIO_TYPE1_IOMMU
                    },
                });
            }
            v
        }
        T::Detach(group) => vec![Op::Detach {
            container: c(),
            group,
        }],
        T::Map {
            iova,
            vpage,
            npages,
            prot,
        } => vec![Op::Map {
            container: c(),
            iova: iova * PG,
            vaddr: VADDR + vpage * PG,
            size: npages * PG,
            flags: prot,
        }],
        T::Revalidate {
            iova,
            npages,
            vpage,
        } => vec![Op::Map {
            container: c(),
            iova: iova * PG,
            vaddr: VADDR + vpage * PG,
            size: npages * PG,
            flags: abi::MAP_FLAG_VADDR,
        }],
        T::Unmap {
            iova,
            npages,
            vaddr,
        } => vec![Op::Unmap {
            container: c(),
            iova: iova * PG,
            size: npages * PG,
            flags: if vaddr { abi::UNMAP_FLAG_VADDR } else { 0 },
        }],
        T::UnmapAll { vaddr } => vec![Op::Unmap {
            container: c(),
            iova: 0,
            size: 0,
            flags: abi::UNMAP_FLAG_ALL | if vaddr { abi::UNMAP_FLAG_VADDR } else { 0 },
        }],
        T::OpenMdev => vec![Op::OpenDevice {
            container: c(),
            device: dev(2),
        }],
        T::Pin { iova, npage, prot } => vec![Op::Pin {
            container: c(),
            device: dev(2),
            iova: iova * PG,
            npage,
            prot: prot_of(prot),
        }],
        T::Unpin { iova, npage } => vec![Op::Unpin {
            container: c(),
            device: dev(2),
            iova: iova * PG,
            npage,
        }],
        T::DirtyStart => vec![Op::Dirty {
            container: c(),
            flags: abi::DIRTY_FLAG_START,
            range: None,
        }],
        T::DirtyStop => vec![Op::Dirty {
            container: c(),
            flags: abi::DIRTY_FLAG_STOP,
            range: None,
        }],
        T::DirtyGet { iova, npages } => vec![Op::Dirty {
            container: c(),
            flags: abi::DIRTY_FLAG_GET_BITMAP,
            range: Some((iova * PG, npages * PG)),
        }],
        T::CpuWrite { vpage, byte } => vec![Op::CpuWrite {
            vaddr: VADDR + vpage * PG + 128,
            data: vec![byte; 64],
        }],
        T::CpuRead { vpage } => vec![Op::CpuRead {
            vaddr: VADDR + vpage * PG,
            len: PG,
        }],
        T::Dma {
            group,
            write,
            iova,
            no_snoop,
        } => vec![Op::Dma {
            device: dev(group),
            write,
            iova: iova * PG,
            len: PG,
            no_snoop,
        }],
        T::Close => vec![Op::Close(c()), Op::Container(c())],
    }
}

impl<const V2: bool> StateMachineTest for Machine<V2> {
    type SystemUnderTest = Sut;
    type Reference = Machine<V2>;

    fn init_test(model: &Model) -> Sut {
        let mut w = World::new(type1_check::machine(&type1_check::Bound::default()), "seed")
            .expect("world");
        w.sim_mut().set_recording(false);
        for op in [
            Op::Process {
                name: "vmm".into(),
                limit: None,
                cap_ipc_lock: false,
            },
            Op::Mmap {
                vaddr: VADDR,
                len: MEM_PAGES * PG,
                writable: true,
                mmio: None,
            },
            Op::Container(C.into()),
        ] {
            w.exec(&op).expect("setup");
        }
        for g in &model.groups {
            for op in ops_of(&T::Attach(*g), &w, V2) {
                w.exec(&op).expect("initial attach");
            }
        }
        if model.mdev_open {
            for op in ops_of(&T::OpenMdev, &w, V2) {
                w.exec(&op).expect("initial open");
            }
        }
        w.check(0);
        assert!(
            w.pending.is_empty(),
            "violations in set-up: {:?}",
            w.pending
        );
        let mm = w.mm("vmm").expect("process");
        Sut { w, mm, steps: 0 }
    }

    fn apply(mut sut: Sut, model: &Model, t: T) -> Sut {
        sut.steps += 1;
        let mut got = Outcome::Ok;
        for op in ops_of(&t, &sut.w, V2) {
            match sut.w.exec(&op) {
                Ok(()) => {}
                Err(StepError::Errno { errno, .. }) => {
                    got = Outcome::Err(errno);
                    break;
                }
                Err(StepError::Usage(u)) => panic!("harness error on {op:?}: {u}"),
            }
        }
        if got == Outcome::Ok {
            match model.last {
                Outcome::Unmapped(_) => got = Outcome::Unmapped(sut.w.last_unmapped),
                Outcome::Bitmap(_) => {
                    assert_eq!(sut.w.last_bitmap.len(), 1, "bitmap words for {t:?}");
                    got = Outcome::Bitmap(sut.w.last_bitmap[0]);
                }
                _ => {}
            }
        }
        assert_eq!(got, model.last, "result of {t:?}");
        if std::env::var_os("MODELTEST_STATS").is_some() {
            let kind = format!("{t:?}");
            let kind = kind.split([' ', '(']).next().unwrap_or("");
            let nc = model.maps.values().filter(|m| m.noncoherent).count();
            eprintln!(
                "STAT {kind} {got:?} nc={nc} ext={} tracking={}",
                model.ext.len(),
                model.tracking
            );
        }
        sut.w.check(sut.steps);
        let v = unexplained(&sut.w, sut.mm, model);
        assert!(
            v.is_empty(),
            "violations after step {} ({t:?}): {v:?}",
            sut.steps
        );
        sut.w.pending.clear();
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let w = &sut.w;
        // Mappings, as the engine sees them.
        let got: Vec<_> = match w.container(C).map(|c| c.iommu()) {
            Some(Ok(t)) => t
                .mappings()
                .into_iter()
                .map(|m| {
                    (
                        m.iova,
                        m.size,
                        m.vaddr,
                        m.prot,
                        m.is_noncoherent,
                        m.vaddr_invalid,
                        m.iommu_mapped,
                        m.locked_vm,
                        m.external_pins
                            .iter()
                            .map(|(i, _, n)| (*i, *n))
                            .collect::<Vec<_>>(),
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        let want: Vec<_> = model
            .maps
            .iter()
            .map(|(s, m)| {
                (
                    s * PG,
                    m.npages * PG,
                    VADDR + m.vpage * PG,
                    prot_of(m.prot),
                    m.noncoherent,
                    m.invalid,
                    model.domains(),
                    model.charge(*s, m),
                    (*s..s + m.npages)
                        .filter_map(|p| model.ext.get(&p).map(|n| (p * PG, *n)))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            got, want,
            "mappings (iova, size, vaddr, prot, noncoherent, invalid, mapped, locked, pins)"
        );
        if let Some(Ok(t)) = w.container(C).map(|c| c.iommu()) {
            assert_eq!(t.dirty_tracking(), model.tracking, "dirty tracking");
            assert_eq!(t.noncoherent_domains(), model.noncoherent() as u32);
        } else {
            assert!(!model.set(), "engine has no backend, the model has groups");
        }
        assert_eq!(
            w.sim().pinned_frames(),
            model.pinned_frames(),
            "pinned frames"
        );
        assert_eq!(
            type1_core::TaskMemory::locked_vm(w.sim(), sut.mm),
            model.locked_vm(),
            "locked_vm"
        );
    }

    fn teardown(mut sut: Sut, mut model: Model) {
        sut.w.teardown(sut.steps + 1);
        model.step(&T::Close);
        model.update_unsafe();
        let v = unexplained(&sut.w, sut.mm, &model);
        assert!(v.is_empty(), "violations at teardown: {v:?}");
        assert_eq!(sut.w.sim().pinned_frames(), 0, "pinned after teardown");
        assert_eq!(
            type1_core::TaskMemory::locked_vm(sut.w.sim(), sut.mm),
            0,
            "locked after teardown"
        );
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("MODELTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(cases),
        max_shrink_iters: 4096,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/model.txt",
        ))),
        ..ProptestConfig::default()
    }
}

prop_state_machine! {
    #![proptest_config(config(4096))]

    /// TYPE1v2 container: the engine agrees with the model after every step.
    #[test]
    fn v2_engine_matches_model(sequential 1..64 => Machine<true>);
}

prop_state_machine! {
    #![proptest_config(config(2048))]

    /// TYPE1 (v1) container: whole-mapping UNMAP, no bisection errors, no external pins or
    /// dirty tracking.
    #[test]
    fn v1_engine_matches_model(sequential 1..64 => Machine<false>);
}
