//! The NVMe function behind a device fd, driven through `Vfio` over the in-crate fake
//! platform: its DMA goes through the group's IOMMU domain (what MAP_DMA mapped, nothing
//! else), its interrupts reach the eventfds SET_IRQS registered, and the trace shows its
//! transfers and the accesses the IOMMU refused.

use std::sync::Arc;

use type1_core::{Event, MmId, TaskMemory, Vaddr};
use type1_uapi::nvme::{reg, BlockStore, MemStore, CC_EN, CSTS_RDY, LBA_SIZE, NVME_CLASS};
use type1_uapi::{device::region_offset, nr::*, testing::FakePlatform, Object, Vfio};

const ARG: u64 = 0x1_0000;
const RAM: u64 = 0x4000_0000;
const IOVA: u64 = 0x8000_0000;
const DEV: &str = "0000:00:05.0";

struct H {
    v: Vfio<FakePlatform>,
    c: type1_uapi::FakeCaller,
    dev: u32,
    dfd: i32,
    store: Arc<MemStore>,
}

fn counter(name: &str) -> (std::path::PathBuf, std::fs::File) {
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nvme-irq-{name}"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&p)
        .unwrap();
    (p, f)
}

fn signals(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().len() / 8
}

impl H {
    /// Group 1 (no snoop control) in a type1v2 container, its device an NVMe function, the
    /// first 1 MiB of RAM mapped at `IOVA`.
    fn new() -> H {
        let (mut v, mut c) = FakePlatform::subsystem(RAM, 16 << 20, ARG, 0x10000);
        let store = Arc::new(MemStore::new(8 << 20));
        v.add_nvme(DEV, store.clone());
        let cont = c.add_fd(Some(v.open_container()));
        let g = c.add_fd(Some(v.open_group(1).unwrap()));
        c.poke(ARG, &(cont as u32).to_le_bytes());
        let obj = |c: &type1_uapi::FakeCaller, fd| c.fd_object(fd).unwrap();
        v.ioctl(obj(&c, g), VFIO_GROUP_SET_CONTAINER, ARG, &mut c)
            .unwrap();
        v.ioctl(obj(&c, cont), VFIO_SET_IOMMU, 3, &mut c).unwrap();
        let mut m = Vec::new();
        for x in [32u32, 3] {
            m.extend_from_slice(&x.to_le_bytes());
        }
        for x in [RAM, IOVA, 1 << 20] {
            m.extend_from_slice(&x.to_le_bytes());
        }
        c.poke(ARG, &m);
        v.ioctl(obj(&c, cont), VFIO_IOMMU_MAP_DMA, ARG, &mut c)
            .unwrap();
        c.poke(ARG, format!("{DEV}\0").as_bytes());
        let dfd = v
            .ioctl(obj(&c, g), VFIO_GROUP_GET_DEVICE_FD, ARG, &mut c)
            .unwrap() as i32;
        let Object::Device(dev) = obj(&c, dfd) else {
            panic!("a device fd")
        };
        H {
            v,
            c,
            dev,
            dfd,
            store,
        }
    }

    fn w32(&mut self, off: u64, v: u32) {
        self.v
            .device_rw(self.dev, off, &mut v.to_le_bytes(), true)
            .unwrap();
    }

    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.v.device_rw(self.dev, off, &mut b, false).unwrap();
        u32::from_le_bytes(b)
    }

    fn cmd(&mut self, slot: u64, op: u8, cid: u16, dws: &[(usize, u32)], prp1: u64) {
        let mut c = [0u8; 64];
        c[0] = op;
        c[2..4].copy_from_slice(&cid.to_le_bytes());
        c[24..32].copy_from_slice(&prp1.to_le_bytes());
        for (i, v) in dws {
            c[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        self.poke(RAM + slot * 64, &c);
    }

    /// Writes user memory (what the device reaches through the IOMMU).
    fn poke(&mut self, addr: u64, data: &[u8]) {
        self.v
            .platform
            .mm_write(MmId(1), Vaddr(addr), data)
            .unwrap();
    }

    fn peek(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.v
            .platform
            .mm_read(MmId(1), Vaddr(addr), &mut b)
            .unwrap();
        b
    }

    /// The status of completion `slot` of the admin completion queue (RAM + 0x1000), phase 1.
    fn completion(&mut self, base: u64, slot: u64) -> (u16, u16) {
        let e = self.peek(base + slot * 16, 16);
        let st = u16::from_le_bytes([e[14], e[15]]);
        assert_eq!(st & 1, 1, "posted (phase 1)");
        (u16::from_le_bytes([e[12], e[13]]), st >> 1)
    }
}

#[test]
fn an_nvme_function_is_driven_through_its_iommu_domain() {
    let mut h = H::new();
    let config = region_offset(7);
    let class = h.r32(config + 8) >> 8;
    assert_eq!(class, NVME_CLASS);
    // BAR0: 16 KiB, not mmap-able; no BAR2.
    let mut info = vec![0u8; 32];
    info[0..4].copy_from_slice(&32u32.to_le_bytes());
    h.c.poke(ARG, &info);
    let obj = h.c.fd_object(h.dfd).unwrap();
    h.v.ioctl(obj, VFIO_DEVICE_GET_REGION_INFO, ARG, &mut h.c)
        .unwrap();
    assert_eq!(h.c.peek(ARG + 16, 8), 0x4000u64.to_le_bytes());
    assert_eq!(h.c.peek(ARG + 4, 4), 3u32.to_le_bytes(), "READ | WRITE");
    // MSI-X on, vector 0 and 1 registered.
    let (p0, f0) = counter("v0");
    let (p1, f1) = counter("v1");
    let e0 = h.c.add_file(f0);
    let e1 = h.c.add_file(f1);
    let mut s = Vec::new();
    for x in [28u32, 1 << 2 | 1 << 5, 2, 0, 2, e0 as u32, e1 as u32] {
        s.extend_from_slice(&x.to_le_bytes());
    }
    h.c.poke(ARG, &s);
    h.v.ioctl(obj, VFIO_DEVICE_SET_IRQS, ARG, &mut h.c).unwrap();

    // Bus mastering, admin queues at IOVA (SQ) and IOVA + 4 KiB (CQ), enable.
    h.w32(config + 4, 4);
    h.w32(reg::AQA, 15 | 15 << 16);
    h.w32(reg::ASQ, IOVA as u32);
    h.w32(reg::ASQ + 4, (IOVA >> 32) as u32);
    h.w32(reg::ACQ, (IOVA + 0x1000) as u32);
    h.w32(reg::ACQ + 4, (IOVA >> 32) as u32);
    h.w32(reg::CC, CC_EN | 6 << 16 | 4 << 20);
    assert_eq!(h.r32(reg::CSTS) & 1, CSTS_RDY);
    // Identify controller into IOVA + 8 KiB.
    h.cmd(0, 0x06, 7, &[(10, 1)], IOVA + 0x2000);
    h.w32(reg::DOORBELLS, 1);
    assert_eq!(h.completion(RAM + 0x1000, 0), (7, 0));
    assert_eq!(&h.peek(RAM + 0x2000 + 24, 19), b"type1 emulated NVMe");
    assert_eq!(signals(&p0), 1, "the admin queue's vector");
    h.w32(reg::DOORBELLS + 4, 1);
    // I/O queues: CQ 1 (vector 1) at +12 KiB, SQ 1 at +16 KiB.
    h.cmd(
        1,
        0x05,
        8,
        &[(10, 1 | 7 << 16), (11, 1 | 2 | 1 << 16)],
        IOVA + 0x3000,
    );
    h.cmd(
        2,
        0x01,
        9,
        &[(10, 1 | 7 << 16), (11, 1 | 1 << 16)],
        IOVA + 0x4000,
    );
    h.w32(reg::DOORBELLS, 3);
    assert_eq!(h.completion(RAM + 0x1000, 1), (8, 0));
    assert_eq!(h.completion(RAM + 0x1000, 2), (9, 0));
    h.w32(reg::DOORBELLS + 4, 3);
    // Write 8 KiB (two pages: PRP1 and PRP2) at block 16, from IOVA + 32 KiB.
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    h.poke(RAM + 0x8000, &data);
    h.cmd(
        256,
        0x01,
        1,
        &[
            (1, 1),
            (8, (IOVA + 0x9000) as u32),
            (9, (IOVA >> 32) as u32),
            (10, 16),
            (12, 15),
        ],
        IOVA + 0x8000,
    );
    h.w32(reg::DOORBELLS + 8, 1);
    assert_eq!(h.completion(RAM + 0x3000, 0), (1, 0));
    assert_eq!(signals(&p1), 1, "the I/O queue's vector");
    let mut stored = vec![0u8; 8192];
    h.store.read_at(16 * LBA_SIZE, &mut stored).unwrap();
    assert!(stored == data, "the namespace holds the data");
    // A read into memory nothing maps (IOVA + 2 MiB): a data transfer error, a fault in the
    // trace, and nothing written anywhere.
    h.cmd(
        256 + 1,
        0x02,
        2,
        &[(1, 1), (10, 16), (12, 0)],
        IOVA + (2 << 20),
    );
    let before = h.peek(RAM, 1 << 20);
    h.w32(reg::DOORBELLS + 8, 2);
    let (cid, status) = h.completion(RAM + 0x3000, 1);
    assert_eq!((cid, status & 0xff), (2, 0x04), "data transfer error");
    let mut after = h.peek(RAM, 1 << 20);
    // Only the completion entry changed.
    after[0x3010..0x3020].copy_from_slice(&before[0x3010..0x3020]);
    assert!(after == before, "no byte outside the completion changed");
    let events = &h.v.platform.events;
    assert!(events.iter().any(
        |e| matches!(e, Event::Dma { device, dir: "read", snoop: false, .. } if device == DEV)
    ));
    assert!(events.iter().any(
        |e| matches!(e, Event::Fault { source, detail } if source == "dma" && detail.contains("nvme write"))
    ));
    assert!(
        h.v.platform.dma_misuse.is_empty(),
        "{:?}",
        h.v.platform.dma_misuse
    );
}
