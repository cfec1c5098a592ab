//! `type1 bench --scale`: how the engine's time and memory grow with mappings and pages, on
//! the simulator and on [`type1_core::Lean`], a platform that keeps nothing per page (the
//! engine alone).
//! Memory is the heap the process keeps, counted by the binary's allocator.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use type1_core::{Config, Container, GroupId, Lean, MapRequest, UnmapRequest, PAGE_SIZE};

/// Where the `i`th of `n` mappings of `pages_each` pages starts in the process: one-page
/// mappings a page apart (never adjacent), larger ones a 2 MiB gap apart so that each stays
/// 2 MiB aligned, a single one at `base`.
fn scale_vaddr(base: u64, i: u64, n: u64, pages_each: u64) -> u64 {
    let stride = match (n, pages_each) {
        (1, _) => 0,
        (_, 1) => 2 * PAGE_SIZE,
        _ => pages_each * PAGE_SIZE + (2 << 20),
    };
    base + i * stride
}

/// The map and unmap phases of `--scale` on platform `p` (whose current task maps memory at
/// [`scale_vaddr`] from `base`), into a non-coherent domain of group 1 under `seed`: the map
/// phase's and the unmap phase's nanoseconds, and the heap bytes kept while everything is
/// mapped.
fn scale_phases<P: type1_core::Platform>(
    p: &mut P,
    base: u64,
    n: u64,
    pages_each: u64,
    mut mapped: impl FnMut(&mut P, &type1_core::Type1) -> Result<()>,
) -> Result<(f64, f64, f64)> {
    let config = Config {
        dma_entry_limit: u32::MAX,
        ..Config::default()
    };
    let mut c = Container::new(config, "seed").map_err(|e| anyhow!("{e}"))?;
    c.add_group(p, GroupId(1))
        .map_err(|e| anyhow!("group 1: {e}"))?;
    c.set_iommu(p, type1_core::IommuType::Type1v2)
        .map_err(|e| anyhow!("SET_IOMMU: {e}"))?;
    let t1 = c.iommu_mut().map_err(|e| anyhow!("{e}"))?;
    let before = type1_host::alloc_count::live_bytes();
    let t = Instant::now();
    for i in 0..n {
        let r = MapRequest {
            flags: type1_core::MapFlags::RW,
            vaddr: scale_vaddr(base, i, n, pages_each),
            // From 4 GiB up: clear of the x86 MSI window, whatever the size.
            iova: (1 << 32) + i * pages_each * PAGE_SIZE,
            size: pages_each * PAGE_SIZE,
        };
        t1.map_dma(p, r).map_err(|e| anyhow!("MAP_DMA {i}: {e}"))?;
    }
    let map_ns = t.elapsed().as_nanos() as f64;
    let bytes = type1_host::alloc_count::live_bytes().saturating_sub(before) as f64;
    mapped(p, t1)?;
    let t = Instant::now();
    let all = UnmapRequest {
        flags: type1_core::UnmapFlags {
            all: true,
            ..Default::default()
        },
        iova: 0,
        size: 0,
        bitmap: None,
    };
    t1.unmap_dma(p, all)
        .map_err(|e| anyhow!("UNMAP_DMA all: {e}"))?;
    let unmap_ns = t.elapsed().as_nanos() as f64;
    c.close(p);
    Ok((map_ns, unmap_ns, bytes))
}

/// What the engine alone costs for `n` mappings of `pages_each` pages on [`Lean`] (see
/// [`scale_phases`]). A single mapping's vaddr and IOVA are 1 GiB aligned and its frames
/// contiguous, as memory backed by 2 MiB (or 1 GiB) pages is, so the IOMMU takes large leaves.
fn engine_run(n: u64, pages_each: u64) -> Result<(f64, f64, f64)> {
    scale_phases(&mut Lean::default(), 1 << 40, n, pages_each, |_, _| Ok(()))
}

/// Map and unmap nanoseconds and heap bytes kept, from [`scale_phases`].
type Phases = (f64, f64, f64);

/// Pages past which `--scale` does not time the simulator's check (a walk of everything
/// takes a while there).
const CHECK_PAGES_MAX: u64 = 1 << 23;

/// [`scale_phases`] on a simulator just large enough, with transparent huge pages if `thp`;
/// also the nanoseconds of the engine check with everything mapped, by a full walk and
/// incrementally after a one-page change (NaN past [`CHECK_PAGES_MAX`]).
fn scale_on_sim(n: u64, pages_each: u64, thp: bool) -> Result<(Phases, (f64, f64))> {
    let total = n * pages_each;
    // Frames for the pages, and room: every other page of the process is mapped on the
    // mappings axis so that no two mappings are adjacent, and huge pages start 2 MiB aligned.
    let frames = total * if n > 1 && pages_each == 1 { 2 } else { 1 } + 2048;
    // No MMIO window: the default one sits at 4 GiB, inside the larger machines here.
    let desc = type1_sim::MachineDesc {
        memory_frames: frames,
        mmio: Vec::new(),
        thp,
        ..Default::default()
    };
    let mut s = type1_sim::Sim::new(desc).map_err(|e| anyhow!("simulator: {e}"))?;
    let mm = s.create_process("scale");
    s.set_cap_ipc_lock(mm, true);
    s.set_current(Some(mm));
    let base = 1u64 << 32;
    let span = scale_vaddr(base, n - 1, n, pages_each) + pages_each * PAGE_SIZE - base;
    s.mmap_anon(mm, base, span, true)
        .map_err(|e| anyhow!("sim mmap: {e}"))?;
    // One page outside every mapping, for a change the checker must look at.
    s.mmap_anon(mm, base - PAGE_SIZE, PAGE_SIZE, true)
        .map_err(|e| anyhow!("sim mmap: {e}"))?;
    let mut checks = (f64::NAN, f64::NAN);
    let phases = scale_phases(&mut s, base, n, pages_each, |s, t1| {
        if total > CHECK_PAGES_MAX {
            return Ok(());
        }
        let views = [type1_sim::EngineView::of(t1)];
        // A walk of everything, then the incremental check brought up to date (a walk too),
        // then what it costs after a one-page change.
        s.set_check_mode(type1_sim::CheckMode::Full);
        let t = Instant::now();
        let full = s.check_engine(&views);
        checks.0 = t.elapsed().as_nanos() as f64;
        s.set_check_mode(type1_sim::CheckMode::Incremental);
        s.check_engine(&views);
        s.cpu_write(mm, base - PAGE_SIZE, &[1])
            .map_err(|e| anyhow!("sim write: {e}"))?;
        let t = Instant::now();
        let inc = s.check_engine(&views);
        checks.1 = t.elapsed().as_nanos() as f64;
        if !full.is_empty() || !inc.is_empty() {
            bail!(
                "the simulator's check found {:?}",
                full.iter().chain(&inc).next()
            );
        }
        Ok(())
    })?;
    Ok((phases, checks))
}

/// Heap bytes the engine keeps for `n` mappings of `pages_each` pages, on [`Lean`].
fn engine_bytes(n: u64, pages_each: u64) -> Result<f64> {
    Ok(engine_run(n, pages_each)?.2)
}

/// One point of `--scale`: the engine on the simulator with `n` mappings of `pages` pages.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRow {
    /// `mappings` (n one-page mappings) or `pages` (one mapping of n pages).
    pub axis: String,
    /// Mappings.
    pub mappings: u64,
    /// Pages in all.
    pub pages: u64,
    /// Nanoseconds per MAP_DMA'd page (map phase).
    pub map_ns_per_page: f64,
    /// Nanoseconds per mapping of the map phase.
    pub map_ns_per_mapping: f64,
    /// Nanoseconds per page of the unmap phase (UNMAP_DMA of everything).
    pub unmap_ns_per_page: f64,
    /// Heap bytes the engine and the simulator keep while everything is mapped, per mapping.
    pub bytes_per_mapping: f64,
    /// The same per page.
    pub bytes_per_page: f64,
    /// Heap bytes of the engine alone (on a platform that keeps nothing per page but its
    /// IOMMU page table), per mapping.
    pub engine_bytes_per_mapping: f64,
    /// The same per page.
    pub engine_bytes_per_page: f64,
    /// Nanoseconds of the simulator's engine check by a full walk, everything mapped.
    pub check_full_ns: f64,
    /// Nanoseconds of the incremental check after a one-page change.
    pub check_step_ns: f64,
}

/// `--scale`: how time and memory grow with the number of mappings (one page each, 1 Ki to
/// 64 Ki - 1) and with the pages of one mapping (16 MiB to 32 GiB), on the simulator with the
/// `seed` policy and a non-coherent domain; then (axis `engine`) the engine alone on
/// [`Lean`], up to a 1 TiB guest in 2 MiB-aligned memory, which the simulator's per-page model
/// cannot hold. Memory is the heap the process keeps (the binary counts its allocations), so
/// on the simulator axes it covers the engine and the simulator's own records.
pub fn scale(max_bytes: u64) -> Result<Vec<ScaleRow>> {
    let mut rows = Vec::new();
    let fits = |pages: u64| pages * PAGE_SIZE <= max_bytes;
    // With transparent huge pages: 8 GiB to `max_bytes` in one mapping, and 65535 mappings
    // of 16 MiB (1 TiB in all) if that fits.
    let thp: Vec<(&str, u64, u64)> = [1u64 << 21, 1 << 24, 1 << 26, 1 << 28]
        .into_iter()
        .filter(|p| fits(*p))
        .map(|p| ("thp", 1, p))
        .chain(fits(65535 * 4096).then_some(("thp", 65535, 4096)))
        .collect();
    let points: Vec<(&str, u64, u64)> = [1024u64, 4096, 16384, 65535]
        .iter()
        .map(|n| ("mappings", *n, 1u64))
        .chain(
            [4096u64, 65536, 524288, 1 << 21, 1 << 23]
                .iter()
                .map(|p| ("pages", 1, *p)),
        )
        // The engine on a platform with nothing per page: 1 GiB, 16 GiB, 128 GiB and 1 TiB
        // in one mapping; 1 Ki and 64 Ki - 1 one-page mappings; 64 Ki - 1 mappings of 16 MiB
        // (1 TiB in all).
        .chain(
            [1u64 << 18, 1 << 22, 1 << 25, 1 << 28]
                .iter()
                .map(|p| ("engine", 1, *p)),
        )
        .chain([(1024u64, 1u64), (65535, 1), (65535, 4096)].map(|(n, p)| ("engine", n, p)))
        .chain(thp)
        .collect();
    for (axis, n, pages_each) in points {
        let total = n * pages_each;
        // Map and unmap time, and heap bytes kept by everything (NaN: not measured), then
        // by the engine alone.
        let ((map_ns, unmap_ns, bytes), engine, (check_full, check_inc)) = if axis == "engine" {
            // The engine alone, past what the simulator's per-page model holds.
            let (m, u, e) = engine_run(n, pages_each)?;
            ((m, u, f64::NAN), e, (f64::NAN, f64::NAN))
        } else {
            let (phases, checks) = scale_on_sim(n, pages_each, axis == "thp")?;
            (phases, engine_bytes(n, pages_each)?, checks)
        };
        rows.push(ScaleRow {
            axis: axis.to_string(),
            mappings: n,
            pages: total,
            map_ns_per_page: map_ns / total as f64,
            map_ns_per_mapping: map_ns / n as f64,
            unmap_ns_per_page: unmap_ns / total as f64,
            bytes_per_mapping: bytes / n as f64,
            bytes_per_page: bytes / total as f64,
            engine_bytes_per_mapping: engine / n as f64,
            engine_bytes_per_page: engine / total as f64,
            check_full_ns: check_full,
            check_step_ns: check_inc,
        });
    }
    Ok(rows)
}

/// The `--scale` table.
pub fn scale_table(rows: &[ScaleRow]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:9} {:>9} {:>9} {:>12} {:>14} {:>14} {:>10} {:>8} {:>16} {:>13} {:>14} {:>13}",
        "axis",
        "mappings",
        "pages",
        "map ns/page",
        "map ns/mapping",
        "unmap ns/page",
        "B/mapping",
        "B/page",
        "engine B/mapping",
        "engine B/page",
        "check full µs",
        "check step µs"
    );
    // Rows of the engine alone have no simulator memory.
    let opt = |v: f64, prec: usize| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.prec$}")
        }
    };
    for r in rows {
        let _ = writeln!(
            s,
            "{:9} {:>9} {:>9} {:>12.0} {:>14.0} {:>14.0} {:>10} {:>8} {:>16.1} {:>13.3} {:>14} {:>13}",
            r.axis,
            r.mappings,
            r.pages,
            r.map_ns_per_page,
            r.map_ns_per_mapping,
            r.unmap_ns_per_page,
            opt(r.bytes_per_mapping, 0),
            opt(r.bytes_per_page, 1),
            r.engine_bytes_per_mapping,
            r.engine_bytes_per_page,
            opt(r.check_full_ns / 1e3, 0),
            opt(r.check_step_ns / 1e3, 1)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of `--scale` point runs at a small size: 4 KiB pages and 2 MiB pages, one
    /// mapping and several, the simulator's checks (which must find nothing) timed below the
    /// check limit, and the table shows what was not measured as `-`.
    #[test]
    fn every_kind_of_scale_point_runs() {
        let _turn = crate::model::HEAP.lock().unwrap_or_else(|p| p.into_inner());
        for (n, pages, thp) in [
            (1, 1024, false),
            (8, 1, false),
            (1, 1024, true),
            (3, 512, true),
        ] {
            let ((map, unmap, _), (full, step)) = scale_on_sim(n, pages, thp).unwrap();
            assert!(map > 0.0 && unmap > 0.0, "{n} x {pages}, thp {thp}");
            assert!(
                full > 0.0 && step > 0.0,
                "{n} x {pages}, thp {thp}: checks timed"
            );
        }
        let (map, _, bytes) = engine_run(2, 512).unwrap();
        assert!(map > 0.0 && bytes > 0.0);
        let row = ScaleRow {
            axis: "engine".into(),
            mappings: 1,
            pages: 1,
            map_ns_per_page: 1.0,
            map_ns_per_mapping: 1.0,
            unmap_ns_per_page: 1.0,
            bytes_per_mapping: f64::NAN,
            bytes_per_page: f64::NAN,
            engine_bytes_per_mapping: 1.0,
            engine_bytes_per_page: 1.0,
            check_full_ns: f64::NAN,
            check_step_ns: f64::NAN,
        };
        let t = scale_table(&[row]);
        assert!(
            !t.contains("NaN") && t.lines().nth(1).unwrap().contains(" - "),
            "{t}"
        );
    }

    #[test]
    fn the_engine_keeps_a_bounded_record_per_mapping_and_almost_nothing_per_page() {
        let _turn = crate::model::HEAP.lock().unwrap_or_else(|p| p.into_inner());
        // The binary's counting allocator is installed in this test binary too.
        let per_mapping = engine_bytes(256, 1).unwrap() / 256.0;
        assert!(
            per_mapping > 0.0 && per_mapping < 1024.0,
            "{per_mapping} B per mapping"
        );
        let per_page = engine_bytes(1, 65536).unwrap() / 65536.0;
        assert!(per_page < 1.0, "{per_page} B per page of one large mapping");
    }
}
