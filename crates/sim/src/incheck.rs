//! The cross-check of engine views against the machine ([`crate::Sim::check_engine`]), kept
//! up to date from what changed since the previous check instead of walking every page.
//! (Over 800 lines only with its unit tests, which stay beside the caches they check.)
//!
//! The check compares, for every container the engine shows: each mapping's pages with the
//! IOMMU entries they imply (`page_table`), each domain's entries with the mappings
//! (`page_table`, extra entries), each frame's pins with the pins the mappings account for
//! (`pin_leak`, `pin_count`), and each mapping's and address space's charge (`accounting`).
//!
//! Its state (`IncCache`) keeps, per container, one `MappingCheck` per mapping (the IOMMU entries
//! it implies, as runs, the frames it pins, its charge and its finding) and the findings of
//! domain pages; over all containers, the pins the engine accounts for per frame (as runs) and
//! the findings of frames. The machine logs what the check reads as it changes (`Changes`:
//! domain page-table pages, address-space pages, frames' pins and mapped state). A check then
//! recomputes only the mappings whose view changed or whose pages changed, the domain pages
//! and frames they touch, and those the log names: its cost is what changed. A container
//! whose domain list changed, a process exit or a domain freed rebuilds the whole state, as
//! does [`CheckMode::Full`] at every check; [`CheckMode::Verify`] does both and reports any
//! difference as `sim_invariant`, which the scenario suite runs under.
//!
//! Findings come out in the order a walk of everything would produce them (container,
//! mapping, domain, page, then frames, then address spaces), so both forms give the same
//! violations, word for word.

use std::collections::{BTreeMap, BTreeSet};

use type1_core::{DomainId, MappingView, MmId, Prot, PAGE_SHIFT};

use crate::{check::EngineView, Sim, ViolationKind};

/// One finding before aggregation: kind, aggregation key, detail.
pub(crate) type Item = (ViolationKind, String, String);

/// How [`crate::Sim::check_engine`] works.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckMode {
    /// From what changed since the previous check (the default).
    #[default]
    Incremental,
    /// A walk of every mapping, page and frame at each check.
    Full,
    /// Both, with any difference between them reported as `sim_invariant`.
    Verify,
}

/// Half-open ranges of numbers (pages, frames), merged when they touch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    /// Adds `[start, end)`.
    pub(crate) fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &pe)) = self.0.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
                self.0.remove(&ps);
            }
        }
        let next: Vec<(u64, u64)> = self.0.range(s..=e).map(|(a, b)| (*a, *b)).collect();
        for (a, b) in next {
            e = e.max(b);
            self.0.remove(&a);
        }
        self.0.insert(s, e);
    }

    /// Whether some range meets `[start, end)`.
    pub(crate) fn overlaps(&self, start: u64, end: u64) -> bool {
        start < end
            && self
                .0
                .range(..end)
                .next_back()
                .is_some_and(|(_, e)| *e > start)
    }

    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(a, b)| (*a, *b))
    }

    /// The key of the first range that may reach `start` or beyond: the one holding `start`
    /// if any, else `start` itself.
    fn first_key_from(&self, start: u64) -> u64 {
        match self.0.range(..start).next_back() {
            Some((s, e)) if *e > start => *s,
            _ => start,
        }
    }

    /// Whether `x` is in a range.
    pub(crate) fn contains(&self, x: u64) -> bool {
        self.overlaps(x, x.saturating_add(1))
    }

    /// Removes `[start, end)`; returns the parts that were present, in order.
    pub(crate) fn remove(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let from = self.first_key_from(start);
        let hits: Vec<(u64, u64)> = self.0.range(from..end).map(|(a, b)| (*a, *b)).collect();
        for (a, b) in hits {
            self.0.remove(&a);
            if a < start {
                self.0.insert(a, start);
            }
            if b > end {
                self.0.insert(end, b);
            }
            out.push((a.max(start), b.min(end)));
        }
        out
    }

    /// The parts of the ranges inside `[start, end)`, in order.
    pub(crate) fn within(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.0
            .range(self.first_key_from(start)..end)
            .map(|(a, b)| ((*a).max(start), (*b).min(end)))
            .filter(|(a, b)| a < b)
            .collect()
    }

    fn extend(&mut self, other: &RangeSet) {
        for (a, b) in other.ranges() {
            self.add(a, b);
        }
    }
}

/// Counts over runs of numbers: how many pins the engine accounts for, per frame.
#[derive(Clone, Debug, Default)]
struct CountMap(BTreeMap<u64, (u64, i64)>);

impl CountMap {
    /// Splits the run holding `x` (strictly inside it) at `x`.
    fn split(&mut self, x: u64) {
        if let Some((&s, &(e, c))) = self.0.range(..x).next_back() {
            if e > x {
                self.0.insert(s, (x, c));
                self.0.insert(x, (e, c));
            }
        }
    }

    /// Adds `delta` to every number of `[start, end)`.
    fn add(&mut self, start: u64, end: u64, delta: i64) {
        if start >= end || delta == 0 {
            return;
        }
        self.split(start);
        self.split(end);
        let inside: Vec<(u64, u64, i64)> = self
            .0
            .range(start..end)
            .map(|(s, (e, c))| (*s, *e, *c))
            .collect();
        let mut cur = start;
        let mut new = Vec::new();
        for (s, e, c) in inside {
            if cur < s {
                new.push((cur, s, delta));
            }
            new.push((s, e, c + delta));
            cur = e;
            self.0.remove(&s);
        }
        if cur < end {
            new.push((cur, end, delta));
        }
        for (s, e, c) in new {
            if c != 0 {
                self.0.insert(s, (e, c));
            }
        }
        self.merge_around(start, end);
    }

    /// Joins touching runs of equal counts in and next to `[start, end)`.
    fn merge_around(&mut self, start: u64, end: u64) {
        let from = self.0.range(..start).next_back().map_or(start, |(s, _)| *s);
        let keys: Vec<u64> = self.0.range(from..=end).map(|(s, _)| *s).collect();
        let mut prev: Option<u64> = None;
        for k in keys {
            let (e, c) = self.0[&k];
            if let Some(p) = prev {
                let (pe, pc) = self.0[&p];
                if pe == k && pc == c {
                    self.0.insert(p, (e, c));
                    self.0.remove(&k);
                    continue;
                }
            }
            prev = Some(k);
        }
    }

    fn get(&self, x: u64) -> i64 {
        match self.0.range(..=x).next_back() {
            Some((_, (e, c))) if *e > x => *c,
            _ => 0,
        }
    }
}

/// What changed since the previous check, logged by the machine as it changes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Changes {
    /// Something the log does not follow page by page (a process exit, a domain freed).
    pub all: bool,
    /// Domain page-table pages written.
    pub iova: BTreeMap<DomainId, RangeSet>,
    /// Address-space pages whose translation may have changed.
    pub vpn: BTreeMap<MmId, RangeSet>,
    /// Frames whose pins or mapped state changed.
    pub pfn: RangeSet,
}

/// One mapping, as the check last saw it.
#[derive(Clone, Debug)]
struct MappingCheck {
    view: MappingView,
    /// IOMMU entries it implies while mapped: (first page, pages, first pfn (the next pages'
    /// follow it) or none, prot).
    expect: Vec<(u64, u64, Option<u64>, Prot)>,
    /// RAM frames it pins: runs (first pfn, count), one count each.
    pins: Vec<(u64, u64)>,
    /// Pages it should charge.
    charge: u64,
    /// Its accounting finding.
    item: Option<Item>,
}

impl MappingCheck {
    fn pages(&self) -> (u64, u64) {
        let first = self.view.iova >> PAGE_SHIFT;
        (first, first + (self.view.size >> PAGE_SHIFT))
    }

    fn expect_at(&self, page: u64) -> Option<(Option<u64>, Prot)> {
        let i = self.expect.partition_point(|r| r.0 + r.1 <= page);
        let &(first, n, pfn, prot) = self.expect.get(i)?;
        (first <= page && page < first + n).then(|| (pfn.map(|p| p + (page - first)), prot))
    }
}

/// The check's state for one container (see the module documentation).
#[derive(Clone, Debug, Default)]
struct ContainerCheck {
    domains: Vec<DomainId>,
    live: Vec<bool>,
    units: BTreeMap<u64, MappingCheck>,
    /// Findings of domain pages: (domain index, 1 for a mapped page, 2 for an extra entry,
    /// page).
    pages: BTreeMap<(usize, u8, u64), Item>,
    /// Domain pages whose finding depended on whether a frame is still mapped by a process:
    /// (domain index, page) -> pfn, and back.
    watch: BTreeMap<(usize, u64), u64>,
    watched: BTreeMap<u64, BTreeSet<(usize, u64)>>,
}

/// The incremental check's state (see the module documentation).
#[derive(Clone, Debug, Default)]
pub(crate) struct IncCache {
    containers: Vec<ContainerCheck>,
    want: CountMap,
    frames: BTreeMap<u64, Item>,
}

impl ContainerCheck {
    /// The IOMMU entry the mappings imply at `page`: the last mapping (by IOVA) that covers
    /// it, as a walk that lets later mappings overwrite earlier ones would find.
    fn expect_at(&self, page: u64) -> Option<(Option<u64>, Prot)> {
        let addr = page << PAGE_SHIFT;
        self.units
            .range(..=addr)
            .rev()
            .filter(|(_, u)| u.view.iommu_mapped)
            .find_map(|(_, u)| u.expect_at(page))
    }

    fn unwatch(&mut self, key: (usize, u64)) {
        if let Some(pfn) = self.watch.remove(&key) {
            if let Some(s) = self.watched.get_mut(&pfn) {
                s.remove(&key);
                if s.is_empty() {
                    self.watched.remove(&pfn);
                }
            }
        }
    }
}

impl Sim {
    /// Chooses how [`Sim::check_engine`] works (incremental by default).
    pub fn set_check_mode(&mut self, mode: CheckMode) {
        self.obs.check_mode = mode;
    }

    /// A process's page set changed at `[vaddr, vaddr + len)`.
    pub(crate) fn note_vpn(&mut self, mm: MmId, vaddr: u64, len: u64) {
        let first = vaddr >> PAGE_SHIFT;
        let last = vaddr.saturating_add(len.max(1) - 1) >> PAGE_SHIFT;
        self.obs
            .changes
            .vpn
            .entry(mm)
            .or_default()
            .add(first, last + 1);
    }

    /// Domain page-table pages `[first, first + n)` changed.
    pub(crate) fn note_iova(&mut self, domain: DomainId, first: u64, n: u64) {
        self.obs
            .changes
            .iova
            .entry(domain)
            .or_default()
            .add(first, first.saturating_add(n));
    }

    /// Frame `pfn`'s pins or mapped state changed.
    pub(crate) fn note_pfn(&mut self, pfn: u64) {
        self.obs.changes.pfn.add(pfn, pfn + 1);
    }

    /// A change the log does not follow: the next check rebuilds.
    pub(crate) fn note_all(&mut self) {
        self.obs.changes.all = true;
    }

    /// The unit of mapping `m` of a container whose engine view is `v`.
    fn unit(&self, ci: usize, v: &EngineView, m: &MappingView) -> MappingCheck {
        let has_domains = !v.domains.is_empty();
        let mut expect: Vec<(u64, u64, Option<u64>, Prot)> = Vec::new();
        let mut pins: Vec<(u64, u64)> = Vec::new();
        let mut normal = 0u64;
        let mut ext_normal = 0u64;
        for i in 0..m.size >> PAGE_SHIFT {
            let page = (m.iova >> PAGE_SHIFT) + i;
            let tr = if m.vaddr_invalid {
                None
            } else {
                m.vaddr
                    .checked_add(i << PAGE_SHIFT)
                    .and_then(|va| self.translate(m.mm, va))
                    .map(|t| t.0)
            };
            // What the engine pinned and mapped: the domains' entry, else the vaddr. Not
            // necessarily the mapper's translation: a replay pins through the attaching
            // task's address space (spec errata on A2/P1), which may map other memory at the
            // vaddr. That the page is pinned at all is the pin checks' business.
            let pfn = v
                .domains
                .iter()
                .find_map(|d| self.hw.domains.get(&d.id)?.pt.get(&page).map(|p| p.pfn))
                .or(tr);
            if pfn.is_none_or(|p| self.is_ram(p)) {
                normal += 1;
            }
            if m.iommu_mapped {
                match expect.last_mut() {
                    Some((first, n, p, prot))
                        if *first + *n == page
                            && *prot == m.prot
                            && match (*p, pfn) {
                                (None, None) => true,
                                (Some(a), Some(b)) => a + *n == b,
                                _ => false,
                            } =>
                    {
                        *n += 1
                    }
                    _ => expect.push((page, 1, pfn, m.prot)),
                }
                if let Some(p) = pfn.filter(|p| self.is_ram(*p)) {
                    match pins.last_mut() {
                        Some((first, n)) if *first + *n == p => *n += 1,
                        _ => pins.push((p, 1)),
                    }
                }
            }
        }
        for &(_, pfn, _) in &m.external_pins {
            if self.is_ram(pfn) {
                pins.push((pfn, 1));
                ext_normal += 1;
            }
        }
        let charge = if has_domains { normal } else { ext_normal };
        let item = (m.locked_vm != charge).then(|| {
            (
                ViolationKind::Accounting,
                format!("map{ci}:{}", m.iova),
                format!(
                    "container {ci}: mapping iova 0x{:x} charges {} pages, expected {charge}",
                    m.iova, m.locked_vm
                ),
            )
        });
        MappingCheck {
            view: m.clone(),
            expect,
            pins,
            charge,
            item,
        }
    }

    /// The findings of domain `di` (engine view `d`) at `page`, in container `cc`; updates
    /// the pages the container watches.
    fn recheck_page(&self, cc: &mut ContainerCheck, di: usize, id: DomainId, page: u64) {
        cc.pages.remove(&(di, 1, page));
        cc.pages.remove(&(di, 2, page));
        cc.unwatch((di, page));
        let Some(sd) = self.hw.domains.get(&id) else {
            return;
        };
        let pte = sd.pt.get(&page);
        let iova = page << PAGE_SHIFT;
        match (cc.expect_at(page), pte) {
            (Some(_), None) => {
                cc.pages.insert(
                    (di, 1, page),
                    (
                        ViolationKind::PageTable,
                        format!("missing{id}"),
                        format!("domain {id}: iova 0x{iova:x} of a mapped mapping is not mapped"),
                    ),
                );
            }
            (Some((pfn, prot)), Some(pte)) => {
                let mismatch = pfn.is_some_and(|p| p != pte.pfn);
                if mismatch {
                    cc.watch.insert((di, page), pte.pfn);
                    cc.watched.entry(pte.pfn).or_default().insert((di, page));
                }
                if mismatch && !self.orphaned(pte.pfn) {
                    cc.pages.insert(
                        (di, 1, page),
                        (
                            ViolationKind::PageTable,
                            format!("pfn{id}"),
                            format!(
                                "domain {id}: iova 0x{iova:x} maps pfn 0x{:x}, the mapping's pinned page is pfn 0x{:x}",
                                pte.pfn,
                                pfn.unwrap_or(0)
                            ),
                        ),
                    );
                } else if pte.prot != prot {
                    cc.pages.insert(
                        (di, 1, page),
                        (
                            ViolationKind::PageTable,
                            format!("prot{id}"),
                            format!(
                                "domain {id}: iova 0x{iova:x} has prot {}, mapping has {prot}",
                                pte.prot
                            ),
                        ),
                    );
                }
            }
            (None, Some(pte)) => {
                cc.pages.insert(
                    (di, 2, page),
                    (
                        ViolationKind::PageTable,
                        format!("extra{id}"),
                        format!(
                            "domain {id}: iova 0x{iova:x} maps pfn 0x{:x} but no mapped mapping covers it",
                            pte.pfn
                        ),
                    ),
                );
            }
            (None, None) => {}
        }
    }

    /// The finding of frame `pfn`.
    fn frame_item(&self, want: &CountMap, pfn: u64) -> Option<Item> {
        let fr = self.mem.frames.get(pfn as usize)?;
        let want = want.get(pfn).max(0) as u64;
        let have = fr.pins as u64;
        let detail = || format!("pfn 0x{pfn:x} holds {have} pins, the engine accounts for {want}");
        if have > want {
            Some((ViolationKind::PinLeak, String::new(), detail()))
        } else if have < want {
            Some((ViolationKind::PinCount, String::new(), detail()))
        } else {
            None
        }
    }

    /// Brings `cache` up to date with `views` and the machine, given what changed since it was
    /// last brought up to date (everything if `rebuild`), and returns every finding in walk
    /// order.
    pub(crate) fn engine_items(
        &self,
        cache: &mut IncCache,
        changes: &Changes,
        views: &[EngineView],
        rebuild: bool,
    ) -> Vec<Item> {
        let rebuild = rebuild || changes.all || cache.containers.len() != views.len();
        if rebuild {
            *cache = IncCache::default();
        }
        let IncCache {
            containers,
            want,
            frames,
        } = cache;
        let mut pfn_dirty = changes.pfn.clone();
        containers.resize_with(views.len(), ContainerCheck::default);
        let mut out = Vec::new();
        for (ci, v) in views.iter().enumerate() {
            let cc = &mut containers[ci];
            let ids: Vec<DomainId> = v.domains.iter().map(|d| d.id).collect();
            let live: Vec<bool> = ids
                .iter()
                .map(|id| self.hw.domains.contains_key(id))
                .collect();
            let rebuild_c = rebuild || cc.domains != ids || cc.live != live;
            let now: BTreeMap<u64, &MappingView> = v.mappings.iter().map(|m| (m.iova, m)).collect();
            let mut dirty: BTreeSet<u64> = BTreeSet::new();
            let mut pages = RangeSet::default();
            if rebuild_c {
                for u in cc.units.values() {
                    for &(p, n) in &u.pins {
                        want.add(p, p + n, -1);
                        pfn_dirty.add(p, p + n);
                    }
                }
                *cc = ContainerCheck {
                    domains: ids.clone(),
                    live: live.clone(),
                    ..ContainerCheck::default()
                };
                dirty.extend(v.mappings.iter().map(|m| m.iova));
                for id in &ids {
                    if let Some(sd) = self.hw.domains.get(id) {
                        for (page, _) in sd.pt.iter() {
                            pages.add(page, page + 1);
                        }
                    }
                }
            } else {
                for (iova, u) in &cc.units {
                    if now.get(iova) != Some(&&u.view) {
                        dirty.insert(*iova);
                    }
                }
                for iova in now.keys() {
                    if !cc.units.contains_key(iova) {
                        dirty.insert(*iova);
                    }
                }
                for id in &ids {
                    if let Some(r) = changes.iova.get(id) {
                        pages.extend(r);
                        for (iova, u) in &cc.units {
                            let (a, b) = u.pages();
                            if r.overlaps(a, b) {
                                dirty.insert(*iova);
                            }
                        }
                    }
                }
                for (iova, u) in &cc.units {
                    let m = &u.view;
                    if m.vaddr_invalid {
                        continue;
                    }
                    if let Some(r) = changes.vpn.get(&m.mm) {
                        let first = m.vaddr >> PAGE_SHIFT;
                        let end = first.saturating_add(m.size >> PAGE_SHIFT);
                        if r.overlaps(first, end) {
                            dirty.insert(*iova);
                        }
                    }
                }
                for (a, b) in changes.pfn.ranges() {
                    let hits: Vec<(usize, u64)> = cc
                        .watched
                        .range(a..b)
                        .flat_map(|(_, s)| s.iter().copied())
                        .collect();
                    for (_, page) in hits {
                        pages.add(page, page + 1);
                    }
                }
            }
            for iova in dirty {
                if let Some(old) = cc.units.remove(&iova) {
                    for &(p, n) in &old.pins {
                        want.add(p, p + n, -1);
                        pfn_dirty.add(p, p + n);
                    }
                    let (a, b) = old.pages();
                    pages.add(a, b);
                }
                if let Some(m) = now.get(&iova) {
                    let u = self.unit(ci, v, m);
                    for &(p, n) in &u.pins {
                        want.add(p, p + n, 1);
                        pfn_dirty.add(p, p + n);
                    }
                    let (a, b) = u.pages();
                    pages.add(a, b);
                    cc.units.insert(iova, u);
                }
            }
            for (di, id) in ids.iter().enumerate() {
                if !live[di] {
                    continue;
                }
                for (a, b) in pages.ranges() {
                    for page in a..b {
                        self.recheck_page(cc, di, *id, page);
                    }
                }
            }
            // Findings, in walk order: mappings, then each domain and its pages.
            out.extend(cc.units.values().filter_map(|u| u.item.clone()));
            for (di, d) in v.domains.iter().enumerate() {
                let Some(sd) = self.hw.domains.get(&d.id) else {
                    out.push((
                        ViolationKind::PageTable,
                        format!("dead{}", d.id),
                        format!("container {ci}: domain {} is not live", d.id),
                    ));
                    continue;
                };
                if sd.enforcing != d.coherent {
                    out.push((
                        ViolationKind::Coherency,
                        format!("coh{}", d.id),
                        format!(
                            "domain {}: engine says coherent={}, machine says {}",
                            d.id, d.coherent, sd.enforcing
                        ),
                    ));
                }
                let (mut a, mut b) = (sd.groups.clone(), d.groups.clone());
                a.sort();
                b.sort();
                if a != b {
                    out.push((
                        ViolationKind::PageTable,
                        format!("groups{}", d.id),
                        format!(
                            "domain {}: engine lists groups {b:?}, machine has {a:?}",
                            d.id
                        ),
                    ));
                }
                out.extend(
                    cc.pages
                        .range((di, 0, 0)..(di + 1, 0, 0))
                        .map(|(_, item)| item.clone()),
                );
            }
        }
        if rebuild {
            frames.clear();
            for pfn in 0..self.mem.frames.len() as u64 {
                if let Some(item) = self.frame_item(want, pfn) {
                    frames.insert(pfn, item);
                }
            }
        } else {
            for (a, b) in pfn_dirty.ranges() {
                for pfn in a..b.min(self.mem.frames.len() as u64) {
                    match self.frame_item(want, pfn) {
                        Some(item) => frames.insert(pfn, item),
                        None => frames.remove(&pfn),
                    };
                }
            }
        }
        out.extend(frames.values().cloned());
        let mut want_locked: BTreeMap<MmId, u64> = BTreeMap::new();
        for cc in containers.iter() {
            for u in cc.units.values() {
                if self.mm_alive(u.view.mm) {
                    *want_locked.entry(u.view.mm).or_insert(0) += u.charge;
                }
            }
        }
        for (i, p) in self.tasks.procs.iter().enumerate() {
            let mm = MmId(i as u32);
            let want = want_locked.get(&mm).copied().unwrap_or(0);
            if p.alive && p.locked_vm != want {
                out.push((
                    ViolationKind::Accounting,
                    format!("mm{mm}"),
                    format!(
                        "mm {mm} ({}): locked_vm {} pages, mappings account for {want}",
                        p.name, p.locked_vm
                    ),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineDesc;
    use type1_core::{DomainView, GroupId, Iommu, Iova, Pa, TaskMemory, PAGE_SIZE};

    /// The machine changes under a fixed engine view, as an engine bug would change it (a pin
    /// or an IOMMU entry nobody accounts for, one gone missing, a vaddr remapped, a frame
    /// orphaned), and after each change the incremental check must say what a full walk says.
    /// Every logged kind of change is exercised: a missed log entry shows up as a difference.
    #[test]
    fn changes_behind_the_engines_back_are_seen_as_a_full_walk_sees_them() {
        let mut s = Sim::new(MachineDesc::default()).unwrap();
        s.set_check_mode(CheckMode::Verify);
        let mm = s.create_process("p");
        s.set_current(Some(mm));
        let base = 0x10_0000u64;
        let pages = 16u64;
        s.mmap_anon(mm, base, pages * PAGE_SIZE, true).unwrap();
        let d = s.domain_alloc(GroupId(1)).unwrap();
        s.attach_group(d, GroupId(1)).unwrap();
        let pinned = s
            .pin_user_pages(mm, type1_core::Vaddr(base), 8, true)
            .unwrap();
        let pa = pinned[0].pfn * PAGE_SIZE;
        s.iommu_map(d, Iova(0), Pa(pa), 8 * PAGE_SIZE, Prot::RW)
            .unwrap();
        let view = |locked| EngineView {
            mappings: vec![MappingView {
                iova: 0,
                size: 8 * PAGE_SIZE,
                vaddr: base,
                prot: Prot::RW,
                mm,
                iommu_mapped: true,
                vaddr_invalid: false,
                is_noncoherent: true,
                locked_vm: locked,
                external_pins: Vec::new(),
            }],
            domains: vec![DomainView {
                id: d,
                groups: vec![GroupId(1)],
                coherent: false,
            }],
            has_emulated_groups: false,
        };
        let views = [view(8)];
        let mut seen = BTreeSet::new();
        // A small deterministic generator.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for step in 0..3000 {
            let page = next(pages);
            let va = base + page * PAGE_SIZE;
            match next(8) {
                0 => {
                    let _ = s.pin_user_pages(mm, type1_core::Vaddr(va), 1, true);
                }
                1 => {
                    if let Some((pfn, false)) = s.translate(mm, va) {
                        if s.mem.frames[pfn as usize].pins > 0 {
                            s.unpin_page(pfn, true);
                        }
                    }
                }
                2 => {
                    if let Some((pfn, false)) = s.translate(mm, va) {
                        let _ = s.iommu_map(
                            d,
                            Iova(page * PAGE_SIZE),
                            Pa(pfn * PAGE_SIZE),
                            PAGE_SIZE,
                            Prot::RW,
                        );
                    }
                }
                3 => {
                    s.iommu_unmap(d, Iova(page * PAGE_SIZE), PAGE_SIZE);
                    s.iotlb_sync(d);
                }
                4 => {
                    let _ = s.munmap(mm, va, PAGE_SIZE);
                }
                5 => {
                    let _ = s.mmap_anon(mm, va, PAGE_SIZE, true);
                }
                6 => {
                    let _ = s.cpu_write(mm, va, &[1]);
                }
                _ => {}
            }
            let locked = s.locked_vm(mm);
            let _ = locked;
            for v in s.check_engine(&views) {
                assert_ne!(
                    v.kind,
                    ViolationKind::SimInvariant,
                    "step {step}: {}",
                    v.detail
                );
                seen.insert(v.kind);
            }
        }
        // The run did reach the findings the logs exist for.
        for k in [ViolationKind::PinLeak, ViolationKind::PageTable] {
            assert!(seen.contains(&k), "{k} never found: {seen:?}");
        }
    }

    #[test]
    fn ranges_merge_when_they_touch() {
        let mut r = RangeSet::default();
        r.add(10, 20);
        r.add(30, 40);
        r.add(20, 30);
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(10, 40)]);
        r.add(5, 6);
        r.add(50, 60);
        r.add(39, 51);
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(5, 6), (10, 60)]);
        assert!(r.overlaps(59, 70) && !r.overlaps(60, 70) && !r.overlaps(6, 10));
    }

    #[test]
    fn counts_add_over_runs_and_merge_back() {
        let mut c = CountMap::default();
        c.add(0, 100, 1);
        c.add(50, 60, 1);
        assert_eq!((c.get(49), c.get(50), c.get(59), c.get(60)), (1, 2, 2, 1));
        assert_eq!(c.0.len(), 3);
        c.add(50, 60, -1);
        assert_eq!(c.0.len(), 1, "equal neighbours merge");
        c.add(0, 100, -1);
        assert!(c.0.is_empty(), "zero runs go");
        c.add(10, 11, 1);
        c.add(11, 12, 1);
        assert_eq!(c.0.len(), 1);
        assert_eq!(c.get(12), 0);
    }
}
