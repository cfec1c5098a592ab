//! The invariant checker: violations the sim detects on its own, and cross-checks of the
//! engine's views against the machine (page tables, pins, accounting; S7 of the spec).
//!
//! Violation kinds:
//! * `stale_read`: a device read an earlier owner's data without snooping (F0, before exposure);
//! * `unflushed_unpin`: a frame reachable by a non-coherent domain lost its last pin while cache
//!   and RAM disagreed (F0, after exposure; F5);
//! * `missing_map_flush`: a pinned frame entered a non-coherent domain with no flush since it
//!   was pinned (F3, F4), whatever the cache holds;
//! * `missing_unpin_flush`: a frame a non-coherent domain could write lost its last pin with no
//!   flush since the last such domain let it go (F5), whatever the cache holds;
//! * `unpin_while_mapped`: a frame lost its last pin while a page table or an unsynced IOTLB
//!   still pointed at it;
//! * `flush_uncached`: `flush_cache` over UC/WC MMIO (F9);
//! * `contract`: a platform call broke the seam's contract (double map, pin underflow, ...);
//! * `page_table`, `coherency`, `pin_leak`, `pin_count`, `accounting`: from
//!   [`Sim::check_engine`];
//! * `leak`: from [`Sim::check_closed`];
//! * `engine_invariant`: the engine's own invariant check failed (recorded by the scenario
//!   world, which runs it);
//! * `sim_invariant`: a part of the simulator broke its own invariant (a simulator bug).

use serde::Serialize;
use type1_core::{DomainView, Event, MappingView};

use crate::{CheckMode, Sim};

/// The kind of a broken invariant (see the module documentation); its name is the one
/// traces, scenarios (`expect violation KIND`, `allow KIND`) and JSON use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// `stale_read`.
    StaleRead,
    /// `unflushed_unpin`.
    UnflushedUnpin,
    /// `missing_map_flush`.
    MissingMapFlush,
    /// `missing_unpin_flush`.
    MissingUnpinFlush,
    /// `unpin_while_mapped`.
    UnpinWhileMapped,
    /// `flush_uncached`.
    FlushUncached,
    /// `contract`.
    Contract,
    /// `page_table`.
    PageTable,
    /// `coherency`.
    Coherency,
    /// `pin_leak`.
    PinLeak,
    /// `pin_count`.
    PinCount,
    /// `accounting`.
    Accounting,
    /// `leak`.
    Leak,
    /// `engine_invariant`.
    EngineInvariant,
    /// `sim_invariant`: a part of the simulator broke its own invariant (a simulator bug).
    SimInvariant,
}

impl ViolationKind {
    /// Every kind.
    pub const ALL: [ViolationKind; 15] = [
        ViolationKind::StaleRead,
        ViolationKind::UnflushedUnpin,
        ViolationKind::MissingMapFlush,
        ViolationKind::MissingUnpinFlush,
        ViolationKind::UnpinWhileMapped,
        ViolationKind::FlushUncached,
        ViolationKind::Contract,
        ViolationKind::PageTable,
        ViolationKind::Coherency,
        ViolationKind::PinLeak,
        ViolationKind::PinCount,
        ViolationKind::Accounting,
        ViolationKind::Leak,
        ViolationKind::EngineInvariant,
        ViolationKind::SimInvariant,
    ];

    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::StaleRead => "stale_read",
            ViolationKind::UnflushedUnpin => "unflushed_unpin",
            ViolationKind::MissingMapFlush => "missing_map_flush",
            ViolationKind::MissingUnpinFlush => "missing_unpin_flush",
            ViolationKind::UnpinWhileMapped => "unpin_while_mapped",
            ViolationKind::FlushUncached => "flush_uncached",
            ViolationKind::Contract => "contract",
            ViolationKind::PageTable => "page_table",
            ViolationKind::Coherency => "coherency",
            ViolationKind::PinLeak => "pin_leak",
            ViolationKind::PinCount => "pin_count",
            ViolationKind::Accounting => "accounting",
            ViolationKind::Leak => "leak",
            ViolationKind::EngineInvariant => "engine_invariant",
            ViolationKind::SimInvariant => "sim_invariant",
        }
    }

    /// The kind of a name, if there is one.
    pub fn from_name(name: &str) -> Option<ViolationKind> {
        ViolationKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// A kind equals its name (`v.kind == "stale_read"`).
impl PartialEq<&str> for ViolationKind {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

impl std::fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ViolationKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// What broke.
    pub kind: ViolationKind,
    /// What exactly, with addresses.
    pub detail: String,
    /// The page frame concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pfn: Option<u64>,
    /// The IOVA concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iova: Option<u64>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// What the engine of one container shows, for [`Sim::check_engine`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineView {
    /// `Type1::mappings()`.
    pub mappings: Vec<MappingView>,
    /// `Type1::domains()`.
    pub domains: Vec<DomainView>,
    /// `Type1::has_emulated_groups()`.
    pub has_emulated_groups: bool,
}

impl EngineView {
    /// The view of a backend instance.
    pub fn of(t: &type1_core::Type1) -> EngineView {
        EngineView {
            mappings: t.mappings(),
            domains: t.domains(),
            has_emulated_groups: t.has_emulated_groups(),
        }
    }
}

/// Collects findings, at most one detail line per key with a count of the rest.
#[derive(Default)]
struct Findings {
    items: Vec<(ViolationKind, String, String, u64)>,
}

impl Findings {
    fn add(&mut self, kind: ViolationKind, key: String, detail: String) {
        if let Some(e) = self
            .items
            .iter_mut()
            .find(|(k, kk, _, _)| *k == kind && *kk == key)
        {
            e.3 += 1;
        } else {
            self.items.push((kind, key, detail, 1));
        }
    }

    fn into_violations(self) -> Vec<Violation> {
        self.items
            .into_iter()
            .map(|(kind, _, detail, n)| Violation {
                kind,
                detail: if n > 1 {
                    format!("{detail} (and {} more like it)", n - 1)
                } else {
                    detail
                },
                pfn: None,
                iova: None,
            })
            .collect()
    }
}

impl Sim {
    /// Records a violation (and a `violation` trace event).
    pub(crate) fn violate(&mut self, kind: ViolationKind, detail: String) {
        self.violate_at(kind, None, None, detail);
    }

    /// Records a violation about page frame `pfn` and/or IOVA `iova`.
    pub(crate) fn violate_at(
        &mut self,
        kind: ViolationKind,
        pfn: Option<u64>,
        iova: Option<u64>,
        detail: String,
    ) {
        self.record(Event::Violation {
            kind: kind.as_str().to_string(),
            detail: detail.clone(),
        });
        self.obs.violations.push(Violation {
            kind,
            detail,
            pfn,
            iova,
        });
    }

    /// Records a violation found by someone else (a scenario runner, the engine's own
    /// invariant check); it is traced and listed like the sim's own.
    pub fn record_violation(&mut self, kind: ViolationKind, detail: &str) {
        self.violate(kind, detail.to_string());
    }

    /// Every violation recorded so far.
    pub fn violations(&self) -> &[Violation] {
        &self.obs.violations
    }

    /// Violations recorded since the previous call.
    pub fn take_new_violations(&mut self) -> Vec<Violation> {
        let new = self.obs.violations[self.obs.violations_taken..].to_vec();
        self.obs.violations_taken = self.obs.violations.len();
        new
    }

    fn record_all(&mut self, v: &[Violation]) {
        for x in v {
            self.violate_at(x.kind, x.pfn, x.iova, x.detail.clone());
        }
    }

    /// A RAM frame no process maps any more (its vaddr was unmapped while pinned): a mapping
    /// may legitimately keep it although the vaddr now translates elsewhere.
    pub(crate) fn orphaned(&self, pfn: u64) -> bool {
        self.is_ram(pfn) && !self.mem.frames[pfn as usize].in_use
    }

    /// Cross-checks the engine views of every open container against the machine: page tables
    /// (`page_table`, `coherency`), frame pin counts (`pin_leak`, `pin_count`) and locked_vm
    /// (`accounting`). The findings are returned and recorded.
    pub fn check_engine(&mut self, views: &[EngineView]) -> Vec<Violation> {
        let mut f = Findings::default();
        // Each part of the machine first answers for itself.
        let parts = self
            .mem
            .invariant_errors()
            .into_iter()
            .chain(self.tasks.invariant_errors())
            .chain(self.hw.invariant_errors());
        for e in parts {
            f.add(ViolationKind::SimInvariant, e.clone(), e);
        }
        let changes = std::mem::take(&mut self.obs.changes);
        let mut cache = std::mem::take(&mut self.obs.inc);
        let items = match self.obs.check_mode {
            CheckMode::Incremental => self.engine_items(&mut cache, &changes, views, false),
            CheckMode::Full => {
                let items = self.engine_items(&mut cache, &changes, views, true);
                // Nothing to keep: clones of the machine stay small.
                cache = Default::default();
                items
            }
            CheckMode::Verify => {
                let inc = self.engine_items(&mut cache, &changes, views, false);
                let full = self.engine_items(&mut Default::default(), &changes, views, true);
                if inc != full {
                    let at = inc.iter().zip(&full).position(|(a, b)| a != b);
                    let detail = format!(
                        "the incremental engine check differs from a full walk: {} against {} findings, first difference at {at:?}: {:?} against {:?}",
                        inc.len(),
                        full.len(),
                        at.and_then(|i| inc.get(i)).or(inc.get(full.len())),
                        at.and_then(|i| full.get(i)).or(full.get(inc.len())),
                    );
                    f.add(ViolationKind::SimInvariant, "incremental".into(), detail);
                }
                full
            }
        };
        self.obs.inc = cache;
        for (kind, key, detail) in items {
            f.add(kind, key, detail);
        }
        let v = f.into_violations();
        self.record_all(&v);
        v
    }

    /// Checks that nothing is left once every container is closed: no pinned frame, no live
    /// domain (with or without page-table entries), no live address space with locked_vm.
    /// Findings (kind `leak`) are returned and recorded.
    pub fn check_closed(&mut self) -> Vec<Violation> {
        let mut f = Findings::default();
        for (pfn, fr) in self.mem.frames.iter().enumerate() {
            if fr.pins > 0 {
                f.add(
                    ViolationKind::Leak,
                    "pin".into(),
                    format!("pfn 0x{pfn:x} still holds {} pins", fr.pins),
                );
            }
        }
        for (id, d) in &self.hw.domains {
            f.add(
                ViolationKind::Leak,
                format!("dom{id}"),
                format!(
                    "domain {id} is still live with {} mapped pages and groups {:?}",
                    d.pt.len(),
                    d.groups
                ),
            );
        }
        for (i, p) in self.tasks.procs.iter().enumerate() {
            if p.alive && p.locked_vm > 0 {
                f.add(
                    ViolationKind::Leak,
                    format!("mm{i}"),
                    format!("mm {i} ({}) still has locked_vm {}", p.name, p.locked_vm),
                );
            }
        }
        let v = f.into_violations();
        self.record_all(&v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineDesc;
    use type1_core::{
        DomainId, GroupId, Iommu, Iova, MmId, Pa, Prot, TaskMemory, PAGE_SHIFT, PAGE_SIZE,
    };

    /// Each part of the machine answers for its own invariants, and the checker reports a
    /// broken one as `sim_invariant`: a frame freed twice, a domain and a group that disagree
    /// about their attachment, a current process that does not exist.
    #[test]
    fn a_part_that_breaks_its_own_invariant_is_reported() {
        let fresh = || Sim::new(MachineDesc::default()).unwrap();
        let kinds = |s: &mut Sim| -> Vec<ViolationKind> {
            s.check_engine(&[]).into_iter().map(|v| v.kind).collect()
        };
        let mut s = fresh();
        assert!(kinds(&mut s).is_empty(), "a fresh machine is consistent");

        let pfn = s.mem.fresh;
        s.mem.push_free(pfn);
        assert_eq!(kinds(&mut s), vec![ViolationKind::SimInvariant]);

        let mut s = fresh();
        let d = s.domain_alloc(GroupId(1)).unwrap();
        s.attach_group(d, GroupId(1)).unwrap();
        assert!(kinds(&mut s).is_empty());
        s.hw.groups.get_mut(&GroupId(1)).unwrap().attached = None;
        assert_eq!(kinds(&mut s), vec![ViolationKind::SimInvariant]);

        let mut s = fresh();
        s.tasks.current = Some(MmId(7));
        assert_eq!(kinds(&mut s), vec![ViolationKind::SimInvariant]);
    }

    #[test]
    fn check_engine_detects_pin_count_mismatch() {
        let mut s = Sim::new(MachineDesc::default()).unwrap();
        let mm = s.create_process("p");
        s.mmap_anon(mm, 0x10000, 2 * PAGE_SIZE, true).unwrap();
        let pins = s
            .pin_user_pages(mm, type1_core::Vaddr(0x10000), 2, true)
            .unwrap();
        s.account(mm, 2, true).unwrap();
        let d = s.domain_alloc(GroupId(0)).unwrap();
        s.attach_group(d, GroupId(0)).unwrap();
        s.domain_enforce_cache_coherency(d);
        s.iommu_map(
            d,
            Iova(0x100000),
            Pa(pins[0].pfn << PAGE_SHIFT),
            PAGE_SIZE,
            Prot::RW,
        )
        .unwrap();
        s.iommu_map(
            d,
            Iova(0x101000),
            Pa(pins[1].pfn << PAGE_SHIFT),
            PAGE_SIZE,
            Prot::RW,
        )
        .unwrap();
        let view = EngineView {
            mappings: vec![MappingView {
                iova: 0x100000,
                size: 2 * PAGE_SIZE,
                vaddr: 0x10000,
                prot: Prot::RW,
                mm,
                iommu_mapped: true,
                vaddr_invalid: false,
                is_noncoherent: false,
                locked_vm: 2,
                external_pins: vec![],
            }],
            domains: vec![DomainView {
                id: d,
                groups: vec![GroupId(0)],
                coherent: true,
            }],
            has_emulated_groups: false,
        };
        assert_eq!(s.check_engine(std::slice::from_ref(&view)), vec![]);
        // An extra pin the engine does not know about.
        s.pin_user_pages(mm, type1_core::Vaddr(0x10000), 1, true)
            .unwrap();
        let v = s.check_engine(std::slice::from_ref(&view));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].kind, "pin_leak");
        // A missing pin.
        s.unpin_page(pins[0].pfn, true);
        s.unpin_page(pins[0].pfn, true);
        let kinds: Vec<ViolationKind> = s
            .check_engine(std::slice::from_ref(&view))
            .into_iter()
            .map(|v| v.kind)
            .collect();
        assert!(kinds.contains(&ViolationKind::PinCount), "{kinds:?}");
        // Page table and accounting mismatches.
        let mut bad = view.clone();
        bad.mappings[0].size = PAGE_SIZE;
        bad.domains.push(DomainView {
            id: DomainId(99),
            groups: vec![],
            coherent: true,
        });
        let kinds: Vec<ViolationKind> =
            s.check_engine(&[bad]).into_iter().map(|v| v.kind).collect();
        assert!(kinds.contains(&ViolationKind::PageTable), "{kinds:?}");
        assert!(kinds.contains(&ViolationKind::Accounting), "{kinds:?}");
        assert!(!s.check_closed().is_empty());
    }
}
