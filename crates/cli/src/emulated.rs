//! `type1 bench`'s `emulated` rows: what an unmodified VFIO program sees through the emulated
//! `/dev/vfio` (the preload library and the broker), next to the engine's in-process `host`
//! rows of the same run.
//!
//! The program is this binary itself, re-run as `type1 __emulated-client` under
//! `libtype1_preload.so` (`type1_exec`, a fresh broker per run): it uses only libc's `open`,
//! `ioctl`, `pread` and `pwrite` (`type1_host::vfio_client`), as a VMM does, and so takes the
//! path a user's program takes. In one process it measures:
//! * the host workload (`model::qemu_regions` of the guest plus the aperture, 4 KiB pages,
//!   every line dirty): MAP, UNMAP of the aperture, and teardown (`UNSET_CONTAINER`);
//! * MAP and UNMAP of a prefaulted transparent-huge-page buffer, through the type1 container
//!   and through iommufd (the device's cdev attached to an IOAS, `IOMMU_IOAS_MAP`), and the raw
//!   CLFLUSHOPT time of the same bytes with clean lines, measured in that process: the flush
//!   floor a MAP is judged against;
//! * a BAR0 register read (`pread` of `ID`: the device offers no `mmap` of BAR0) and a 4 KiB
//!   device-to-memory transfer (`DMA_SRC`, `DMA_DST`, `DMA_LEN`, `START`, `STATUS` until
//!   `DONE`), as medians of many.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use type1_core::PAGE_SIZE;
use type1_host::vfio_client as vc;
use type1_host::{floor, sys};

use crate::model::{
    gib, median, prefaulted_thp, qemu_regions, row, thp_bytes, BenchOpts, Row, APERTURE_IOVA,
    THP_IOVA, THP_ROUNDS,
};

/// The non-coherent group of the default machine, its device, and the device's cdev.
const GROUP: &std::ffi::CStr = c"/dev/vfio/1";
const DEVICE: &std::ffi::CStr = c"0000:00:05.0";
const CDEV: &std::ffi::CStr = c"/dev/vfio/devices/vfio1";
/// IOVA of the transfer page (above the THP buffer's).
const XFER_IOVA: u64 = (1 << 44) + (1 << 40);
/// Register reads and transfers timed (medians).
const REG_READS: usize = 5000;
const TRANSFERS: usize = 2000;

/// What one client run measured, ns.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ClientResult {
    /// MAP of the host workload's regions.
    pub map_ns: u64,
    /// UNMAP of the aperture.
    pub unmap_ns: u64,
    /// `UNSET_CONTAINER` of the group (every guest mapping unmapped and unpinned).
    pub teardown_ns: u64,
    /// 4 KiB pages of the THP buffer.
    pub thp_pages: u64,
    /// MAP of the THP buffer.
    pub thp_map_ns: u64,
    /// UNMAP of the THP buffer.
    pub thp_unmap_ns: u64,
    /// CLFLUSHOPT of every line of the THP buffer, none cached, in this process.
    pub thp_flush_clean_ns: u64,
    /// `IOMMU_IOAS_MAP` of the THP buffer (the device's cdev bound to `/dev/iommu` and
    /// attached to the IOAS).
    pub iommufd_thp_map_ns: u64,
    /// `IOMMU_IOAS_UNMAP` of the THP buffer.
    pub iommufd_thp_unmap_ns: u64,
    /// Median `pread` of BAR0's `ID`.
    pub reg_read_ns: u64,
    /// Median 4 KiB device-to-memory transfer.
    pub transfer_ns: u64,
}

fn errno(what: &str) -> impl FnOnce(type1_core::Errno) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e}")
}

/// A type1v2 container with the non-coherent group in it: `(container, group)`.
fn container() -> Result<(i32, i32)> {
    let c = vc::open(c"/dev/vfio/vfio").map_err(errno("open /dev/vfio/vfio"))?;
    let g = vc::open(GROUP).map_err(errno("open /dev/vfio/1"))?;
    vc::set_container(g, c).map_err(errno("VFIO_GROUP_SET_CONTAINER"))?;
    vc::ioctl_value(c, vc::VFIO_SET_IOMMU, vc::VFIO_TYPE1V2_IOMMU)
        .map_err(errno("VFIO_SET_IOMMU"))?;
    Ok((c, g))
}

/// The client: `type1 __emulated-client OUT GUEST APERTURE THP`. Writes a [`ClientResult`] as
/// JSON to `OUT`.
pub fn client(args: &[String]) -> Result<()> {
    let [out, guest, aperture, thp] = args else {
        bail!("usage: type1 __emulated-client OUT GUEST APERTURE THP (bytes)");
    };
    let num = |s: &String, what: &str| -> Result<u64> {
        s.parse()
            .map_err(|_| anyhow!("{what} {s:?} is not a number of bytes"))
    };
    let (guest, aperture, thp) = (
        num(guest, "GUEST")?,
        num(aperture, "APERTURE")?,
        num(thp, "THP")?,
    );
    let mut r = ClientResult::default();

    // The host workload, as `bench::phases` runs it in process.
    let (c, g) = container()?;
    let gm = sys::AnonMap::aligned(guest, 1 << 30).map_err(errno("mmap guest"))?;
    let am = sys::AnonMap::aligned(aperture, 1 << 30).map_err(errno("mmap aperture"))?;
    for m in [&gm, &am] {
        let _ = sys::madvise(m.addr(), m.len(), libc::MADV_NOHUGEPAGE);
        floor::Buffer::of(m).populate();
        floor::Buffer::of(m).fill();
    }
    let mut regions: Vec<(u64, u64, u64)> = qemu_regions(guest)
        .into_iter()
        .map(|(iova, off, size)| (iova, gm.addr() + off, size))
        .collect();
    regions.push((APERTURE_IOVA, am.addr(), aperture));
    let t = Instant::now();
    for (iova, vaddr, size) in &regions {
        vc::map_dma(c, *vaddr, *iova, *size, vc::MAP_RW)
            .map_err(|e| anyhow!("MAP_DMA iova 0x{iova:x} size 0x{size:x}: {e}"))?;
    }
    r.map_ns = t.elapsed().as_nanos() as u64;
    let t = Instant::now();
    let n = vc::unmap_dma(c, APERTURE_IOVA, aperture).map_err(errno("UNMAP_DMA aperture"))?;
    r.unmap_ns = t.elapsed().as_nanos() as u64;
    if n != aperture {
        bail!("UNMAP_DMA of the aperture unmapped {n} bytes, not {aperture}");
    }
    let t = Instant::now();
    vc::ioctl_value(g, vc::VFIO_GROUP_UNSET_CONTAINER, 0)
        .map_err(errno("VFIO_GROUP_UNSET_CONTAINER"))?;
    r.teardown_ns = t.elapsed().as_nanos() as u64;
    drop((gm, am));
    for fd in [g, c] {
        vc::close(fd).map_err(errno("close"))?;
    }

    // Prefaulted THP memory: MAP and UNMAP through iommufd, then through the type1
    // container, against the clean-line flush floor of its bytes. The device's cdev and its
    // group file exclude each other, so the two paths take turns.
    let thp_buf = if thp > 0 {
        Some(prefaulted_thp(thp).map_err(errno("mmap THP buffer"))?)
    } else {
        None
    };
    if let Some(m) = &thp_buf {
        let fd = vc::open(c"/dev/iommu").map_err(errno("open /dev/iommu"))?;
        let ioas = vc::ioas_alloc(fd).map_err(errno("IOMMU_IOAS_ALLOC"))?;
        let dev = vc::open(CDEV).map_err(errno("open the device cdev"))?;
        vc::bind_and_attach(dev, fd, ioas).map_err(errno("BIND_IOMMUFD / ATTACH_IOMMUFD_PT"))?;
        let (mut maps, mut unmaps) = (Vec::new(), Vec::new());
        for _ in 0..THP_ROUNDS {
            let t = Instant::now();
            vc::ioas_map(fd, ioas, m.addr(), THP_IOVA, thp, vc::IOAS_MAP_FIXED_RW)
                .map_err(errno("IOMMU_IOAS_MAP THP"))?;
            maps.push(t.elapsed().as_nanos() as u64);
            let t = Instant::now();
            vc::ioas_unmap(fd, ioas, THP_IOVA, thp).map_err(errno("IOMMU_IOAS_UNMAP THP"))?;
            unmaps.push(t.elapsed().as_nanos() as u64);
        }
        r.iommufd_thp_map_ns = median(maps);
        r.iommufd_thp_unmap_ns = median(unmaps);
        for fd in [dev, fd] {
            vc::close(fd).map_err(errno("close"))?;
        }
    }
    let (c, g) = container()?;
    if let Some(m) = &thp_buf {
        let b = floor::Buffer::of(m);
        r.thp_pages = thp / PAGE_SIZE;
        // Rounds of floor, MAP and UNMAP, interleaved; medians of each.
        let (mut floors, mut maps, mut unmaps) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..THP_ROUNDS {
            floors.push((b.flush_clean() * 1e9) as u64);
            let t = Instant::now();
            vc::map_dma(c, m.addr(), THP_IOVA, thp, vc::MAP_RW).map_err(errno("MAP_DMA THP"))?;
            maps.push(t.elapsed().as_nanos() as u64);
            let t = Instant::now();
            vc::unmap_dma(c, THP_IOVA, thp).map_err(errno("UNMAP_DMA THP"))?;
            unmaps.push(t.elapsed().as_nanos() as u64);
        }
        r.thp_flush_clean_ns = median(floors);
        r.thp_map_ns = median(maps);
        r.thp_unmap_ns = median(unmaps);
    }

    // The device: a register read and a 4 KiB transfer, by the fastest path the device
    // offers a VMM (BAR0 has no MMAP flag: pread and pwrite).
    let dev = vc::device_fd(g, DEVICE).map_err(errno("VFIO_GROUP_GET_DEVICE_FD"))?;
    let (_, _, bar0) = vc::region_info(dev, 0).map_err(errno("REGION_INFO 0"))?;
    let (_, _, cfg) = vc::region_info(dev, 7).map_err(errno("REGION_INFO 7"))?;
    let mut cmd = [0u8; 2];
    vc::pread(dev, &mut cmd, cfg + 4).map_err(errno("read COMMAND"))?;
    let bme = u16::from_le_bytes(cmd) | 4;
    vc::pwrite(dev, &bme.to_le_bytes(), cfg + 4).map_err(errno("write COMMAND"))?;
    let page = sys::AnonMap::aligned(PAGE_SIZE, PAGE_SIZE).map_err(errno("mmap page"))?;
    vc::map_dma(c, page.addr(), XFER_IOVA, PAGE_SIZE, vc::MAP_RW).map_err(errno("MAP_DMA page"))?;
    let mut reads = Vec::with_capacity(REG_READS);
    let mut id = [0u8; 4];
    for _ in 0..REG_READS {
        let t = Instant::now();
        vc::pread(dev, &mut id, bar0).map_err(errno("pread ID"))?;
        reads.push(t.elapsed().as_nanos() as u64);
    }
    if u32::from_le_bytes(id) != type1_uapi::device::DEVICE_ID_VALUE {
        bail!("ID read 0x{:x}", u32::from_le_bytes(id));
    }
    r.reg_read_ns = median(reads);
    use type1_uapi::device::{
        CMD_START, CMD_TO_MEMORY, REG_CMD, REG_DMA_DST, REG_DMA_LEN, REG_DMA_SRC, REG_STATUS,
        STATUS_DONE, STATUS_FAULT,
    };
    let mut xfers = Vec::with_capacity(TRANSFERS);
    for _ in 0..TRANSFERS {
        let t = Instant::now();
        let w = |reg: u64, v: &[u8]| vc::pwrite(dev, v, bar0 + reg).map_err(errno("pwrite"));
        w(REG_DMA_SRC, &0u64.to_le_bytes())?;
        w(REG_DMA_DST, &XFER_IOVA.to_le_bytes())?;
        w(REG_DMA_LEN, &PAGE_SIZE.to_le_bytes())?;
        w(REG_CMD, &(CMD_START | CMD_TO_MEMORY).to_le_bytes())?;
        let status = loop {
            let mut s = [0u8; 4];
            vc::pread(dev, &mut s, bar0 + REG_STATUS).map_err(errno("pread STATUS"))?;
            let s = u32::from_le_bytes(s);
            if s & (STATUS_DONE | STATUS_FAULT) != 0 {
                break s;
            }
        };
        xfers.push(t.elapsed().as_nanos() as u64);
        if status != STATUS_DONE {
            bail!("transfer ended with STATUS 0x{status:x}");
        }
    }
    r.transfer_ns = median(xfers);
    vc::unmap_dma(c, XFER_IOVA, PAGE_SIZE).map_err(errno("UNMAP_DMA page"))?;
    for fd in [dev, g, c] {
        vc::close(fd).map_err(errno("close"))?;
    }
    std::fs::write(out, serde_json::to_vec(&r)?).with_context(|| format!("cannot write {out}"))?;
    Ok(())
}

/// Runs the client once under the library with `policy`.
fn run_client(
    lib: &Path,
    dir: &Path,
    policy: &str,
    o: &BenchOpts,
    thp: u64,
) -> Result<ClientResult> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let out: PathBuf = dir.join(format!("emulated-{policy}.json"));
    let opts = type1_exec::ExecOptions {
        library: lib.to_path_buf(),
        trace: None,
        policy: Some(policy.to_string()),
        machine: None,
    };
    let args = [
        "__emulated-client".to_string(),
        out.display().to_string(),
        o.guest.to_string(),
        o.aperture.to_string(),
        thp.to_string(),
    ];
    let st = type1_exec::run(&opts, &exe, &args).context("cannot run the client")?;
    if !st.success() {
        bail!("the emulated client ({policy}) exited with {st}");
    }
    let text = std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))?;
    Ok(serde_json::from_slice(&text)?)
}

/// The `emulated` rows: `reps` rounds over the policies, interleaved (medians), after one
/// unrecorded run.
pub fn run(o: &BenchOpts, bar: &indicatif::ProgressBar, rows: &mut Vec<Row>) -> Result<()> {
    let lib = type1_exec::find_library()
        .ok_or_else(|| anyhow!("the emulated workload needs libtype1_preload.so next to type1"))?;
    let dir = type1_exec::private_dir(&std::env::temp_dir())?;
    let thp = thp_bytes(o);
    let mut results: Vec<Vec<ClientResult>> = vec![Vec::new(); o.policies.len()];
    let mut order = vec![(0usize, false)];
    for _ in 0..o.reps.max(1) {
        order.extend((0..o.policies.len()).map(|i| (i, true)));
    }
    for (i, record) in order {
        let policy = &o.policies[i];
        bar.set_message(format!(
            "emulated {policy}{}",
            if record { "" } else { " (warm-up)" }
        ));
        let r = run_client(&lib, &dir, policy, o, thp);
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        if record {
            results[i].push(r);
            if results[i].len() == o.reps.max(1) {
                bar.inc(1);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let pages = |b: u64| b / PAGE_SIZE;
    let workload = format!("guest {} + aperture {}", gib(o.guest), gib(o.aperture));
    let thp_workload = format!("THP {} prefaulted", gib(thp));
    let all: Vec<u64> = results
        .iter()
        .flatten()
        .map(|r| r.thp_flush_clean_ns)
        .collect();
    let flush_floor = median(all);
    for (policy, rs) in o.policies.iter().zip(results) {
        let m = |f: fn(&ClientResult) -> u64| median(rs.iter().map(f).collect());
        let total = o.guest + o.aperture;
        let mut add = |workload: &str, phase: &str, pages: u64, ns: u64| {
            rows.push(row("emulated", workload, phase, policy, pages, ns));
        };
        add(&workload, "map", pages(total), m(|r| r.map_ns));
        add(&workload, "unmap", pages(o.aperture), m(|r| r.unmap_ns));
        add(&workload, "teardown", pages(o.guest), m(|r| r.teardown_ns));
        if thp > 0 {
            add(&thp_workload, "map-thp", pages(thp), m(|r| r.thp_map_ns));
            add(
                &thp_workload,
                "unmap-thp",
                pages(thp),
                m(|r| r.thp_unmap_ns),
            );
            add(
                &thp_workload,
                "map-thp-iommufd",
                pages(thp),
                m(|r| r.iommufd_thp_map_ns),
            );
            add(
                &thp_workload,
                "unmap-thp-iommufd",
                pages(thp),
                m(|r| r.iommufd_thp_unmap_ns),
            );
        }
        add("BAR0 ID pread", "reg-read", 1, m(|r| r.reg_read_ns));
        add("4 KiB to memory", "xfer-4k", 1, m(|r| r.transfer_ns));
    }
    if thp > 0 {
        // The floor the THP rows are judged against, measured inside the clients.
        rows.push(row(
            "emulated",
            &thp_workload,
            "flush-thp",
            "floor",
            pages(thp),
            flush_floor,
        ));
    }
    Ok(())
}
