//! Fuzzing harness for the emulated device against a hostile driver (issue 14): arbitrary
//! sequences of region accesses and DMA programming, through the uAPI layer's device model,
//! over its fake platform.
//!
//! Setup: a container with group 1 (the non-coherent one), 16 pages of user memory mapped
//! read-write at IOVA `0x100000` and 1 page read-only at `0x200000`, and the group's device
//! open. Then 24-byte records, each one access: a read or write of any region index, at any
//! offset (often one near a region's end), of any size up to 9000 bytes, or a DMA programmed
//! with edge-case source, destination and length (0, 4095, 4097, 2^32, near 2^64, the mapped
//! IOVAs and their ends) and any command bits. Every access must return a count or an errno;
//! no input may panic, and every memory access the device makes goes through the IOMMU (the
//! fake platform's `DeviceDma` translates through the domain's table with the entry's
//! permission, and records a transfer across a page or outside the mapped user memory).
//! Closing everything must leave nothing mapped.

use type1_core::PAGE_SIZE;
use type1_uapi::{
    device::{
        region_offset, BAR0_SIZE, REG_CMD, REG_DMA_DST, REG_DMA_LEN, REG_DMA_SRC, REG_STATUS,
    },
    nr::*,
    testing::FakePlatform,
    FakeCaller, Object, Vfio,
};

pub(crate) const ARG: u64 = 0x1_0000;
pub(crate) const RAM: u64 = 0x4000_0000;
const RAM_PAGES: u64 = 17;
pub(crate) const RW_IOVA: u64 = 0x10_0000;
pub(crate) const RO_IOVA: u64 = 0x20_0000;
const RECORD: usize = 24;
/// The device of group 1.
const DEVICE: &str = "0000:00:05.0";

/// Values a hostile driver tries for DMA addresses and lengths.
const EDGES: [u64; 12] = [
    0,
    4095,
    4096,
    4097,
    1 << 32,
    u64::MAX,
    u64::MAX - 4095,
    RW_IOVA,
    RW_IOVA + 16 * PAGE_SIZE - 1,
    RO_IOVA,
    RO_IOVA + PAGE_SIZE - 2048,
    0x1000,
];

fn ioctl(
    v: &mut Vfio<FakePlatform>,
    c: &mut FakeCaller,
    obj: Object,
    req: u64,
    body: &[u8],
) -> Result<i64, String> {
    c.poke(ARG, body);
    v.ioctl(obj, req, ARG, c)
        .map_err(|e| format!("setup ioctl 0x{req:x}: {e}"))
}

fn le(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

/// The setup both device harnesses start from: a container with group 1 (the non-coherent
/// one), type1v2, `RAM_PAGES` pages of user memory (16 mapped read-write at `RW_IOVA`, 1
/// read-only at `RO_IOVA`), and the group's device open, an NVMe controller over `nvme` if it
/// is given (else the DMA engine).
pub(crate) fn group1_device(
    nvme: Option<std::sync::Arc<dyn type1_uapi::nvme::BlockStore>>,
) -> Result<Fixture, String> {
    let (mut v, mut c) = FakePlatform::subsystem(RAM, RAM_PAGES * PAGE_SIZE, ARG, 0x1000);
    if let Some(store) = nvme {
        v.add_nvme(DEVICE, store);
    }
    let cont = v.open_container();
    let cfd = c.add_fd(Some(cont));
    let group = v.open_group(1).map_err(|e| format!("group: {e}"))?;
    ioctl(
        &mut v,
        &mut c,
        group,
        VFIO_GROUP_SET_CONTAINER,
        &cfd.to_le_bytes(),
    )?;
    c.poke(ARG, &[0; 8]);
    v.ioctl(cont, VFIO_SET_IOMMU, 3, &mut c)
        .map_err(|e| format!("SET_IOMMU: {e}"))?;
    for (iova, vaddr, pages, flags) in [
        (RW_IOVA, RAM, 16u64, 3u32),
        (RO_IOVA, RAM + 16 * PAGE_SIZE, 1, 1),
    ] {
        let mut m = Vec::new();
        m.extend_from_slice(&32u32.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&le(vaddr));
        m.extend_from_slice(&le(iova));
        m.extend_from_slice(&le(pages * PAGE_SIZE));
        ioctl(&mut v, &mut c, cont, VFIO_IOMMU_MAP_DMA, &m)?;
    }
    c.poke(ARG, format!("{DEVICE}\0").as_bytes());
    let dfd = v
        .ioctl(group, VFIO_GROUP_GET_DEVICE_FD, ARG, &mut c)
        .map_err(|e| format!("GET_DEVICE_FD: {e}"))?;
    let Some(Object::Device(dev)) = c.fd_object(dfd as i32) else {
        return Err("GET_DEVICE_FD made no device".into());
    };
    Ok(Fixture {
        v,
        c,
        cont,
        group,
        dfd: dfd as i32,
        dev,
    })
}

/// What [`group1_device`] opened.
pub(crate) struct Fixture {
    pub v: Vfio<FakePlatform>,
    pub c: FakeCaller,
    pub cont: Object,
    pub group: Object,
    pub dfd: i32,
    pub dev: u32,
}

/// Runs one fuzz input; returns how many accesses succeeded. `Err` says which guarantee broke.
pub fn run_device_bytes(data: &[u8]) -> Result<usize, String> {
    let Fixture {
        mut v,
        cont,
        group,
        dev,
        ..
    } = group1_device(None)?;
    // Bus mastering on, as a driver sets it (records may turn it off again).
    let cmd_at = region_offset(7) + 4;
    v.device_rw(dev, cmd_at, &mut [4, 0], true)
        .map_err(|e| format!("COMMAND: {e}"))?;
    let mut ok = 0;
    for rec in data.chunks(RECORD).take(256) {
        if rec.len() < RECORD {
            break;
        }
        let u64_at = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().unwrap_or([0; 8]));
        match rec[0] % 4 {
            // A region access anywhere.
            0 | 1 => {
                let index = u32::from(rec[1] % 11);
                let raw = u64::from(u32::from_le_bytes([rec[2], rec[3], rec[4], rec[5]]));
                let off = if rec[6] & 1 == 1 {
                    // Near the end of BAR0 or the config space.
                    BAR0_SIZE.saturating_sub(raw % 16)
                } else {
                    raw
                };
                let len = usize::from(u16::from_le_bytes([rec[7], rec[8]])) % 9000;
                let mut buf = vec![rec[9]; len];
                let write = rec[0] % 4 == 1;
                if v.device_rw(dev, region_offset(index) + off, &mut buf, write)
                    .is_ok()
                {
                    ok += 1;
                }
            }
            // A DMA with edge-case parameters.
            2 => {
                let pick = |b: u8| EDGES[usize::from(b) % EDGES.len()];
                let regs = [
                    (REG_DMA_SRC, pick(rec[1]) ^ u64::from(rec[4] & 0x3f)),
                    (REG_DMA_DST, pick(rec[2])),
                    (REG_DMA_LEN, pick(rec[3])),
                ];
                for (reg, val) in regs {
                    let _ = v.device_rw(dev, reg, &mut le(val), true);
                }
                let mut cmd = (u32::from(rec[5]) | 1).to_le_bytes();
                if v.device_rw(dev, REG_CMD, &mut cmd, true).is_ok() {
                    ok += 1;
                }
            }
            // Raw register writes (status clears, resets, odd sizes).
            _ => {
                let off = u64_at(8) % 0x40;
                let mut b = u64_at(16).to_le_bytes();
                let n = usize::from(rec[1] % 9);
                let _ = v.device_rw(dev, off, &mut b[..n], true);
                let _ = v.device_rw(dev, REG_STATUS, &mut [6, 0, 0, 0], true);
            }
        }
    }
    if let Some(e) = v.platform.dma_misuse.first() {
        return Err(e.clone());
    }
    v.close(Object::Device(dev));
    v.close(group);
    v.close(cont);
    v.release_all();
    if v.platform.domain_count() != 0 || v.platform.mapped_pages() != 0 {
        return Err(format!(
            "after close: {} domains, {} mapped pages",
            v.platform.domain_count(),
            v.platform.mapped_pages()
        ));
    }
    Ok(ok)
}
