//! `type1 bench`'s in-process THP rows: the engine on the real host platform (`HostPlatform`:
//! io_uring pins, CLFLUSHOPT) maps and unmaps the same prefaulted transparent-huge-page buffer
//! that the `emulated` client maps through `/dev/vfio` and `/dev/iommu`
//! (`crate::emulated`), once through a type1 container (`map-thp`, `unmap-thp`) and once
//! through an iommufd IOAS (`map-thp-iommufd`, `unmap-thp-iommufd`). The two workloads' rows
//! side by side give what the emulation adds on the path a user takes
//! (`bench::path_summary`).

use std::time::Instant;

use anyhow::{anyhow, Result};
use type1_core::{
    iommufd::{FillPolicy, Ictx, IoasMap},
    Config, Container, GroupId, MapFlags, MapRequest, Prot, UnmapFlags, UnmapRequest, PAGE_SIZE,
};
use type1_host::{HostConfig, HostPlatform};

use crate::model::{
    median, prefaulted_thp, row, thp_bytes, BenchOpts, Row, THP_IOVA as IOVA, THP_ROUNDS as ROUNDS,
};

/// The time of one call, in ns.
fn timed(f: impl FnOnce() -> Result<()>) -> Result<u64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_nanos() as u64)
}

/// Adds the rows for every policy of the run (the iommufd rows for those iommufd has).
pub fn run(o: &BenchOpts, bar: &indicatif::ProgressBar, rows: &mut Vec<Row>) -> Result<()> {
    let thp = thp_bytes(o);
    let m = prefaulted_thp(thp).map_err(|e| anyhow!("mmap THP buffer: {e}"))?;
    let pages = thp / PAGE_SIZE;
    let workload = format!("prefaulted THP {} MiB", thp >> 20);
    let (vaddr, size) = (m.addr(), thp);
    for policy in &o.policies {
        bar.set_message(format!("host THP {policy}"));
        let mut p = HostPlatform::new(HostConfig::default());
        let mut c = Container::new(Config::default(), policy).map_err(|e| anyhow!("{e}"))?;
        c.add_group(&mut p, GroupId(1))
            .map_err(|e| anyhow!("group 1: {e}"))?;
        c.set_iommu(&mut p, type1_core::IommuType::Type1v2)
            .map_err(|e| anyhow!("SET_IOMMU: {e}"))?;
        let t1 = c.iommu_mut().map_err(|e| anyhow!("{e}"))?;
        let (mut maps, mut unmaps) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let r = MapRequest {
                flags: MapFlags::RW,
                vaddr,
                iova: IOVA,
                size,
            };
            maps.push(timed(|| {
                t1.map_dma(&mut p, r)
                    .map_err(|e| anyhow!("MAP_DMA THP: {e}"))
            })?);
            let r = UnmapRequest {
                flags: UnmapFlags::default(),
                iova: IOVA,
                size,
                bitmap: None,
            };
            unmaps.push(timed(|| {
                t1.unmap_dma(&mut p, r)
                    .map(|_| ())
                    .map_err(|e| anyhow!("UNMAP_DMA THP: {e}"))
            })?);
        }
        c.close(&mut p);
        let (map, unmap) = (median(maps), median(unmaps));
        rows.push(row("host", &workload, "map-thp", policy, pages, map));
        rows.push(row("host", &workload, "unmap-thp", policy, pages, unmap));

        let Some(fill) = FillPolicy::from_name(policy) else {
            continue;
        };
        let mut p = HostPlatform::new(HostConfig::default());
        let mut x = Ictx::new(fill);
        let ioas = x.ioas_alloc();
        let idev = x.bind(GroupId(1));
        x.attach(&mut p, idev, ioas)
            .map_err(|e| anyhow!("attach to the IOAS: {e}"))?;
        let (mut maps, mut unmaps) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let req = IoasMap {
                ioas,
                uptr: vaddr,
                length: size,
                iova: Some(IOVA),
                prot: Prot::RW,
            };
            maps.push(timed(|| {
                x.map(&mut p, req)
                    .map(|_| ())
                    .map_err(|e| anyhow!("IOAS_MAP THP: {e}"))
            })?);
            unmaps.push(timed(|| {
                x.unmap(&mut p, ioas, IOVA, size, false)
                    .1
                    .map_err(|e| anyhow!("IOAS_UNMAP THP: {e}"))
            })?);
        }
        x.close(&mut p);
        let (map, unmap) = (median(maps), median(unmaps));
        rows.push(row(
            "host",
            &workload,
            "map-thp-iommufd",
            policy,
            pages,
            map,
        ));
        rows.push(row(
            "host",
            &workload,
            "unmap-thp-iommufd",
            policy,
            pages,
            unmap,
        ));
    }
    Ok(())
}
