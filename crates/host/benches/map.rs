//! `cargo bench -p type1-host --bench map`: MAP_DMA and UNMAP_DMA of prefaulted memory on the
//! host platform, against the physical floors measured in the same run over the same bytes.
//!
//! Floors: CLFLUSHOPT (or CLWB/CLFLUSH, as CPUID says) of every line with the lines clean and
//! with the lines dirty, and a plain `memset` of the buffer. Workloads: one MAP_DMA of the whole
//! buffer into the non-coherent group's domain, then one UNMAP_DMA, with policy `none` (upstream
//! type1) and `seed` (the series). Everything is reported as ns per 4 KiB page and as ratios to
//! the clean flush floor; `--json FILE` writes the numbers. Options: `--mib N` (default 1024),
//! `--reps N` (default 3, medians), `--thp` (back the buffer with transparent huge pages).
//! Results and targets are discussed in `docs/performance.md`.

use std::time::Instant;

use type1_core::{Config, Container, GroupId, MapRequest, UnmapRequest, PAGE_SIZE};
use type1_host::{flush, sys, HostConfig, HostPlatform};

struct Opts {
    mib: u64,
    reps: usize,
    thp: bool,
    json: Option<String>,
}

fn opts() -> Opts {
    let mut o = Opts {
        mib: 1024,
        reps: 3,
        thp: false,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mib" => o.mib = args.next().and_then(|v| v.parse().ok()).expect("--mib N"),
            "--reps" => o.reps = args.next().and_then(|v| v.parse().ok()).expect("--reps N"),
            "--thp" => o.thp = true,
            "--json" => o.json = args.next(),
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn flush_all(addr: u64, len: u64) {
    let (insn, line) = flush::detect_flush();
    let mut at = 0;
    while at < len {
        let n = (len - at).min(2 << 20);
        // SAFETY: the bench's own mapping, present (prefaulted) for its whole length.
        unsafe { flush::flush_range(insn, line, addr + at, n) };
        at += n;
    }
}

/// Seconds to flush every line, clean (nothing cached) and dirty (each 256 KiB written, then
/// flushed; only the flushes are timed).
fn floors(addr: u64, len: u64) -> (f64, f64, f64) {
    flush_all(addr, len);
    let t = Instant::now();
    flush_all(addr, len);
    let clean = t.elapsed().as_secs_f64();
    let (insn, line) = flush::detect_flush();
    let chunk = 256 << 10;
    let mut dirty = 0.0;
    let mut fill = 0.0;
    let mut at = 0;
    while at < len {
        let t = Instant::now();
        // SAFETY: the bench's own writable mapping.
        unsafe { std::ptr::write_bytes((addr + at) as *mut u8, 0x5a, chunk as usize) };
        fill += t.elapsed().as_secs_f64();
        let t = Instant::now();
        // SAFETY: as above.
        unsafe { flush::flush_range(insn, line, addr + at, chunk) };
        dirty += t.elapsed().as_secs_f64();
        at += chunk;
    }
    (clean, dirty, fill)
}

/// Seconds to register the buffer as io_uring fixed buffers in 2 MiB pieces (the pin floor in
/// user space), and to read its pagemap in 2 MiB pieces.
fn pin_floor(addr: u64, len: u64) -> (f64, f64) {
    let mut ring = type1_host::uring::Ring::new(type1_host::uring::slots_for(2)).expect("io_uring");
    let chunk = 2 << 20;
    let t = Instant::now();
    let mut slots = vec![];
    let mut at = 0;
    while at < len {
        slots.push(ring.pin(addr + at, chunk).expect("register"));
        at += chunk;
    }
    let pin = t.elapsed().as_secs_f64();
    for s in slots {
        ring.unpin(s);
    }
    let fd = sys::open_ro(c"/proc/self/pagemap").expect("pagemap");
    let mut raw = vec![0u8; 4096];
    let t = Instant::now();
    let mut at = 0;
    while at < len {
        let _ = sys::pread(fd, &mut raw, ((addr + at) >> 12) * 8);
        at += chunk;
    }
    let pm = t.elapsed().as_secs_f64();
    sys::close(fd);
    (pin, pm)
}

/// One MAP_DMA and one UNMAP_DMA of the buffer with `policy`: seconds, and the bookkeeping's
/// bytes per pinned page while mapped.
fn map_unmap(policy: &str, addr: u64, len: u64) -> (f64, f64, f64) {
    let mut p = HostPlatform::new(HostConfig::default());
    let mut c = Container::new(Config::default(), policy).expect("policy");
    c.add_group(&mut p, GroupId(1)).expect("group 1");
    c.set_iommu(&mut p, type1_core::IommuType::Type1v2)
        .expect("type1v2");
    let t1 = c.iommu_mut().expect("backend");
    flush_all(addr, len); // the same cache state for every run
    let t = Instant::now();
    t1.map_dma(
        &mut p,
        MapRequest {
            flags: type1_core::MapFlags::RW,
            vaddr: addr,
            iova: 1 << 32,
            size: len,
        },
    )
    .expect("MAP_DMA");
    let map = t.elapsed().as_secs_f64();
    let m = p.memory();
    let per_page = (m.pin_heap_bytes + m.tables.heap_bytes) as f64 / (len / PAGE_SIZE) as f64;
    let t = Instant::now();
    let n = t1
        .unmap_dma(
            &mut p,
            UnmapRequest {
                flags: type1_core::UnmapFlags::default(),
                iova: 1 << 32,
                size: len,
                bitmap: None,
            },
        )
        .expect("UNMAP_DMA");
    let unmap = t.elapsed().as_secs_f64();
    assert_eq!(n, len);
    assert_eq!(
        p.stats().pages_unresolved,
        0,
        "every flush reached its pages"
    );
    c.close(&mut p);
    (map, unmap, per_page)
}

/// `n` one-page MAP_DMAs of every other page of the buffer (scattered: no two adjacent), then
/// UNMAP_ALL: ns per map and the platform's bookkeeping bytes per mapping while mapped.
fn scattered(addr: u64, len: u64, n: u64) -> (f64, f64) {
    let n = n.min(len / PAGE_SIZE / 2);
    let mut p = HostPlatform::new(HostConfig::default());
    let mut c = Container::new(Config::default(), "none").expect("policy");
    c.add_group(&mut p, GroupId(1)).expect("group 1");
    c.set_iommu(&mut p, type1_core::IommuType::Type1v2)
        .expect("type1v2");
    let t1 = c.iommu_mut().expect("backend");
    let t = Instant::now();
    for i in 0..n {
        t1.map_dma(
            &mut p,
            MapRequest {
                flags: type1_core::MapFlags::RW,
                vaddr: addr + 2 * i * PAGE_SIZE,
                iova: (1 << 32) + i * PAGE_SIZE,
                size: PAGE_SIZE,
            },
        )
        .expect("MAP_DMA");
    }
    let per_map = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    let m = p.memory();
    let bytes = (m.pin_heap_bytes + m.tables.heap_bytes) as f64 / n as f64;
    c.close(&mut p);
    (per_map, bytes)
}

fn main() {
    let o = opts();
    let len = o.mib << 20;
    let pages = (len / PAGE_SIZE) as f64;
    let buf = sys::AnonMap::aligned(len, 1 << 30).expect("buffer");
    let advice = if o.thp {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    sys::madvise(buf.addr(), len, advice).expect("madvise");
    let t = Instant::now();
    sys::madvise(buf.addr(), len, libc::MADV_POPULATE_WRITE).expect("prefault");
    let populate = t.elapsed().as_secs_f64();
    let (mut clean, mut dirty, mut fill, mut pinf, mut pmf) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>, f64)> = vec![];
    for policy in ["none", "seed"] {
        rows.push((policy, vec![], vec![], 0.0));
    }
    for _ in 0..o.reps {
        let (c, d, f) = floors(buf.addr(), len);
        clean.push(c);
        dirty.push(d);
        fill.push(f);
        let (pi, pm) = pin_floor(buf.addr(), len);
        pinf.push(pi);
        pmf.push(pm);
        for row in rows.iter_mut() {
            let (m, u, b) = map_unmap(row.0, buf.addr(), len);
            row.1.push(m);
            row.2.push(u);
            row.3 = b;
        }
    }
    let ns = |s: f64| s * 1e9 / pages;
    let (clean, dirty, fill) = (median(clean), median(dirty), median(fill));
    let (insn, _) = flush::detect_flush();
    println!(
        "{} MiB, {} pages{}, {:?}, medians of {} runs",
        o.mib,
        pages,
        if o.thp { " (THP)" } else { " (4 KiB pages)" },
        insn,
        o.reps
    );
    println!("floor  flush clean     {:8.1} ns/page", ns(clean));
    println!("floor  flush dirty     {:8.1} ns/page", ns(dirty));
    println!("floor  memset          {:8.1} ns/page", ns(fill));
    println!("floor  populate(once)  {:8.1} ns/page", ns(populate));
    let (pinf, pmf) = (median(pinf), median(pmf));
    println!("floor  io_uring pin    {:8.1} ns/page", ns(pinf));
    println!("floor  pagemap read    {:8.1} ns/page", ns(pmf));
    let mut json_rows = vec![];
    let mut none = (0.0, 0.0);
    for (policy, m, u, bytes) in &rows {
        let (m, u) = (median(m.clone()), median(u.clone()));
        if *policy == "none" {
            none = (m, u);
        }
        println!(
            "{policy:5}  map  {:8.1} ns/page = {:5.2}x flush   unmap {:8.1} ns/page = {:5.2}x flush   bookkeeping {:.1} B/page",
            ns(m),
            m / clean,
            ns(u),
            u / clean,
            bytes
        );
        json_rows.push(format!(
            "{{\"policy\":\"{policy}\",\"map_ns_per_page\":{:.1},\"unmap_ns_per_page\":{:.1},\"bytes_per_page\":{:.1}}}",
            ns(m),
            ns(u),
            bytes
        ));
        if *policy != "none" {
            println!(
                "{policy:5}  adds on map {:5.2}x the clean flush, on unmap {:5.2}x",
                (m - none.0) / clean,
                (u - none.1) / clean
            );
        }
    }
    let (per_map, per_map_bytes) = scattered(buf.addr(), len, 16384);
    println!(
        "none   16384 scattered one-page maps: {per_map:.0} ns per map, bookkeeping {per_map_bytes:.0} B per mapping"
    );
    if let Some(path) = o.json {
        let text = format!(
            "{{\"mib\":{},\"thp\":{},\"floor\":{{\"flush_ns_per_page_clean\":{:.1},\"flush_ns_per_page_dirty\":{:.1},\"memset_ns_per_page\":{:.1},\"uring_pin_ns_per_page\":{:.1},\"pagemap_ns_per_page\":{:.1}}},\"scattered\":{{\"ns_per_map\":{:.0},\"bytes_per_mapping\":{:.0}}},\"rows\":[{}]}}\n",
            o.mib,
            o.thp,
            ns(clean),
            ns(dirty),
            ns(fill),
            ns(pinf),
            ns(pmf),
            per_map,
            per_map_bytes,
            json_rows.join(",")
        );
        std::fs::write(&path, text).expect("write json");
    }
}
