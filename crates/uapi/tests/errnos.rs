//! The uAPI layer against the spec's errnos, over the in-crate fake platform.

use type1_core::{Errno, Event, FlushReason};
use type1_uapi::{nr::*, testing::FakePlatform, Caller, FakeCaller, Object, Vfio};

const ARG: u64 = 0x1_0000; // a 64 KiB argument area
const RAM: u64 = 0x4000_0000; // 16 MiB of pinnable "user memory"

struct H {
    v: Vfio<FakePlatform>,
    c: FakeCaller,
    cont: i32,
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

impl H {
    fn new() -> H {
        let (mut v, mut c) = FakePlatform::subsystem(RAM, 16 << 20, ARG, 0x10000);
        let obj = v.open_container();
        let cont = c.add_fd(Some(obj));
        H { v, c, cont }
    }

    fn obj(&self, fd: i32) -> Object {
        self.c.fd_object(fd).expect("emulated fd")
    }

    fn ioctl(&mut self, fd: i32, req: u64, arg: u64) -> Result<i64, Errno> {
        let obj = self.obj(fd);
        self.v.ioctl(obj, req, arg, &mut self.c)
    }

    fn open_group(&mut self, n: u32) -> i32 {
        let obj = self.v.open_group(n).unwrap();
        self.c.add_fd(Some(obj))
    }

    fn set_container(&mut self, g: i32, cont: i32) -> Result<i64, Errno> {
        self.c.poke(ARG, &le32(cont as u32));
        self.ioctl(g, VFIO_GROUP_SET_CONTAINER, ARG)
    }

    /// Group 0 (and 1 if asked) in the container, type1v2 set.
    fn ready(groups: &[u32]) -> (H, Vec<i32>) {
        let mut h = H::new();
        let mut fds = Vec::new();
        for g in groups {
            let fd = h.open_group(*g);
            h.set_container(fd, h.cont).unwrap();
            fds.push(fd);
        }
        h.ioctl(h.cont, VFIO_SET_IOMMU, 3).unwrap();
        (h, fds)
    }

    fn map(
        &mut self,
        argsz: u32,
        flags: u32,
        vaddr: u64,
        iova: u64,
        size: u64,
    ) -> Result<i64, Errno> {
        let mut b = Vec::new();
        b.extend_from_slice(&argsz.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&vaddr.to_le_bytes());
        b.extend_from_slice(&iova.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        self.c.poke(ARG, &b);
        self.ioctl(self.cont, VFIO_IOMMU_MAP_DMA, ARG)
    }

    /// Returns the result and the `size` field read back.
    fn unmap(&mut self, flags: u32, iova: u64, size: u64) -> (Result<i64, Errno>, u64) {
        let mut b = Vec::new();
        b.extend_from_slice(&24u32.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&iova.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        self.c.poke(ARG, &b);
        let r = self.ioctl(self.cont, VFIO_IOMMU_UNMAP_DMA, ARG);
        let back = u64::from_le_bytes(self.c.peek(ARG + 16, 8).try_into().unwrap());
        (r, back)
    }
}

#[test]
fn container_before_set_iommu() {
    let mut h = H::new();
    assert_eq!(h.ioctl(h.cont, VFIO_GET_API_VERSION, 0), Ok(0));
    for (ext, want) in [(1, 1), (3, 1), (9, 1), (4, 0), (10, 0), (2, 0), (12345, 0)] {
        assert_eq!(
            h.ioctl(h.cont, VFIO_CHECK_EXTENSION, ext),
            Ok(want),
            "ext {ext}"
        );
    }
    // C7: without a backend every other ioctl is EINVAL, even type1's and unknown ones.
    assert_eq!(h.ioctl(h.cont, VFIO_IOMMU_MAP_DMA, ARG), Err(Errno::EINVAL));
    assert_eq!(h.ioctl(h.cont, 0x5401, 0), Err(Errno::EINVAL));
    // SET_IOMMU without a group.
    assert_eq!(h.ioctl(h.cont, VFIO_SET_IOMMU, 3), Err(Errno::EINVAL));
    let g = h.open_group(0);
    h.set_container(g, h.cont).unwrap();
    assert_eq!(h.ioctl(h.cont, VFIO_SET_IOMMU, 2), Err(Errno::ENODEV));
    assert_eq!(h.ioctl(h.cont, VFIO_SET_IOMMU, 9), Err(Errno::EINVAL));
    assert_eq!(h.ioctl(h.cont, VFIO_SET_IOMMU, 3), Ok(0));
    assert_eq!(h.ioctl(h.cont, VFIO_SET_IOMMU, 3), Err(Errno::EINVAL));
    // After SET_IOMMU: unknown → ENOTTY, including SPAPR's ENABLE.
    assert_eq!(h.ioctl(h.cont, 0x5401, 0), Err(Errno::ENOTTY));
    assert_eq!(h.ioctl(h.cont, VFIO_IOMMU_ENABLE, 0), Err(Errno::ENOTTY));
}

#[test]
fn group_ioctls() {
    let mut h = H::new();
    let g = h.open_group(0);
    assert_eq!(h.v.open_group(0), Err(Errno::EBUSY));
    assert_eq!(h.v.open_group(7), Err(Errno::ENOENT));
    // GET_STATUS
    h.c.poke(ARG, &[8, 0, 0, 0, 0xff, 0xff, 0, 0]);
    assert_eq!(h.ioctl(g, VFIO_GROUP_GET_STATUS, ARG), Ok(0));
    assert_eq!(h.c.peek(ARG + 4, 4), le32(1));
    h.c.poke(ARG, &[7, 0, 0, 0]);
    assert_eq!(h.ioctl(g, VFIO_GROUP_GET_STATUS, ARG), Err(Errno::EINVAL));
    assert_eq!(h.ioctl(g, VFIO_GROUP_GET_STATUS, 0x10), Err(Errno::EFAULT));
    // SET_CONTAINER order: EFAULT, EBADF, EBADFD, then EINVAL once set.
    assert_eq!(
        h.ioctl(g, VFIO_GROUP_SET_CONTAINER, 0x10),
        Err(Errno::EFAULT)
    );
    assert_eq!(h.set_container(g, 99), Err(Errno::EBADF));
    assert_eq!(h.set_container(g, 1), Err(Errno::EBADFD));
    assert_eq!(h.set_container(g, g), Err(Errno::EBADFD));
    assert_eq!(h.set_container(g, h.cont), Ok(0));
    assert_eq!(h.set_container(g, h.cont), Err(Errno::EINVAL));
    h.c.poke(ARG, &[8, 0, 0, 0]);
    h.ioctl(g, VFIO_GROUP_GET_STATUS, ARG).unwrap();
    assert_eq!(h.c.peek(ARG + 4, 4), le32(3));
    // GET_DEVICE_FD before SET_IOMMU: EINVAL; unknown name: ENODEV.
    h.c.poke(ARG, b"0000:00:04.0\0");
    assert_eq!(
        h.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, ARG),
        Err(Errno::EINVAL)
    );
    h.ioctl(h.cont, VFIO_SET_IOMMU, 3).unwrap();
    h.c.poke(ARG, b"0000:00:05.0\0");
    assert_eq!(
        h.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, ARG),
        Err(Errno::ENODEV)
    );
    h.c.poke(ARG, b"0000:00:04.0\0");
    let dfd = h.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, ARG).unwrap() as i32;
    assert!(matches!(h.c.fd_object(dfd), Some(Object::Device(_))));
    // Unknown group ioctl, and a device number on a group fd.
    assert_eq!(h.ioctl(g, VFIO_DEVICE_GET_INFO, ARG), Err(Errno::ENOTTY));
    // UNSET with an open device: EBUSY; after closing it: ok, then EINVAL.
    assert_eq!(h.ioctl(g, VFIO_GROUP_UNSET_CONTAINER, 0), Err(Errno::EBUSY));
    let d = h.obj(dfd);
    h.v.close(d);
    assert_eq!(h.ioctl(g, VFIO_GROUP_UNSET_CONTAINER, 0), Ok(0));
    assert_eq!(
        h.ioctl(g, VFIO_GROUP_UNSET_CONTAINER, 0),
        Err(Errno::EINVAL)
    );
    // The last group left: the backend is gone (C8).
    assert_eq!(h.ioctl(h.cont, VFIO_IOMMU_MAP_DMA, ARG), Err(Errno::EINVAL));
}

#[test]
fn device_ioctls() {
    let (mut h, g) = H::ready(&[0]);
    h.c.poke(ARG, b"0000:00:04.0\0");
    let d = h.ioctl(g[0], VFIO_GROUP_GET_DEVICE_FD, ARG).unwrap() as i32;
    h.c.poke(ARG, &[20, 0, 0, 0]);
    h.ioctl(d, VFIO_DEVICE_GET_INFO, ARG).unwrap();
    assert_eq!(h.c.peek(ARG + 4, 12), [3, 0, 0, 0, 9, 0, 0, 0, 5, 0, 0, 0]);
    h.c.poke(ARG, &[15, 0, 0, 0]);
    assert_eq!(h.ioctl(d, VFIO_DEVICE_GET_INFO, ARG), Err(Errno::EINVAL));
    // Region 7 (config): 256 bytes at 7 << 40.
    let mut r = vec![32, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0];
    r.extend_from_slice(&[0; 16]);
    h.c.poke(ARG, &r);
    h.ioctl(d, VFIO_DEVICE_GET_REGION_INFO, ARG).unwrap();
    assert_eq!(h.c.peek(ARG + 16, 8), 256u64.to_le_bytes());
    assert_eq!(h.c.peek(ARG + 24, 8), (7u64 << 40).to_le_bytes());
    h.c.poke(ARG + 8, &le32(8));
    assert_eq!(
        h.ioctl(d, VFIO_DEVICE_GET_REGION_INFO, ARG),
        Err(Errno::EINVAL)
    );
    // IRQ info: INTx count 1, ERR not supported.
    h.c.poke(ARG, &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    h.ioctl(d, VFIO_DEVICE_GET_IRQ_INFO, ARG).unwrap();
    assert_eq!(h.c.peek(ARG + 12, 4), le32(1));
    h.c.poke(ARG + 8, &le32(3));
    assert_eq!(
        h.ioctl(d, VFIO_DEVICE_GET_IRQ_INFO, ARG),
        Err(Errno::EINVAL)
    );
    // SET_IRQS INTx trigger with an eventfd: an fd that is not open is EBADF.
    let mut s = Vec::new();
    for x in [24u32, 0x24, 0, 0, 1, 42] {
        s.extend_from_slice(&x.to_le_bytes());
    }
    h.c.poke(ARG, &s);
    assert_eq!(h.ioctl(d, VFIO_DEVICE_SET_IRQS, ARG), Err(Errno::EBADF));
    let (_, ev) = counter("device-ioctls");
    let efd = h.c.add_file(ev);
    h.c.poke(ARG + 20, &le32(efd as u32));
    assert_eq!(h.ioctl(d, VFIO_DEVICE_SET_IRQS, ARG), Ok(0));
    h.c.poke(ARG, &le32(20));
    assert_eq!(h.ioctl(d, VFIO_DEVICE_SET_IRQS, ARG), Err(Errno::EINVAL));
    assert_eq!(h.ioctl(d, VFIO_DEVICE_RESET, 0), Ok(0));
    // The colliding numbers mean something else here.
    assert_eq!(h.ioctl(d, VFIO_IOMMU_GET_INFO, ARG), Err(Errno::ENOTTY));
    assert_eq!(h.ioctl(d, VFIO_IOMMU_UNMAP_DMA, ARG), Err(Errno::ENOTTY));
}

#[test]
fn get_info_two_phase() {
    let (mut h, _) = H::ready(&[0]);
    // I1
    h.c.poke(ARG, &le32(15));
    assert_eq!(
        h.ioctl(h.cont, VFIO_IOMMU_GET_INFO, ARG),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.ioctl(h.cont, VFIO_IOMMU_GET_INFO, 0x10),
        Err(Errno::EFAULT)
    );
    // A 16-byte caller: argsz grows, 16 bytes come back, nothing of the chain.
    h.c.poke(ARG, &[0xaa; 64]);
    h.c.poke(ARG, &le32(16));
    assert_eq!(h.ioctl(h.cont, VFIO_IOMMU_GET_INFO, ARG), Ok(0));
    let total = u32::from_le_bytes(h.c.peek(ARG, 4).try_into().unwrap());
    assert!(total > 24, "argsz grew to {total}");
    assert_eq!(h.c.peek(ARG + 4, 4), le32(3)); // PGSIZES|CAPS
    assert_eq!(
        h.c.peek(ARG + 16, 4),
        [0xaa; 4],
        "I5: only min(argsz, 24) bytes copied"
    );
    // 24 bytes: cap_offset 0.
    h.c.poke(ARG, &le32(24));
    h.ioctl(h.cont, VFIO_IOMMU_GET_INFO, ARG).unwrap();
    assert_eq!(h.c.peek(ARG + 16, 4), le32(0));
    assert_eq!(h.c.peek(ARG + 24, 4), [0xaa; 4], "chain not written");
    // Second phase: the chain at 24.
    h.c.poke(ARG, &le32(total));
    h.ioctl(h.cont, VFIO_IOMMU_GET_INFO, ARG).unwrap();
    assert_eq!(h.c.peek(ARG + 16, 4), le32(24));
    assert_eq!(h.c.peek(ARG, 4), le32(total));
    assert_eq!(h.c.peek(ARG + 24, 2), [2, 0], "MIGRATION first");
    assert_eq!(h.c.peek(ARG + 56, 2), [3, 0], "DMA_AVAIL");
    assert_eq!(h.c.peek(ARG + 64, 4), le32(65535));
}

#[test]
fn map_errnos_in_order() {
    let (mut h, _) = H::ready(&[0]);
    let sz = 0x10000;
    assert_eq!(h.map(31, 3, RAM, 0, sz), Err(Errno::EINVAL), "argsz");
    assert_eq!(
        h.map(32, 3 | 8, RAM, 0, sz),
        Err(Errno::EINVAL),
        "unknown flag"
    );
    assert_eq!(h.map(32, 3, RAM, 0, 0), Err(Errno::EINVAL), "size 0");
    assert_eq!(
        h.map(32, 3, RAM, u64::MAX - 0xfff, 0x2000),
        Err(Errno::EOVERFLOW),
        "iova wraps"
    );
    assert_eq!(h.map(32, 0, RAM, 0, sz), Err(Errno::EINVAL), "no prot");
    assert_eq!(
        h.map(32, 3, RAM + 1, 0, sz),
        Err(Errno::EINVAL),
        "misaligned vaddr"
    );
    assert_eq!(
        h.map(32, 3, RAM, 0x800, sz),
        Err(Errno::EINVAL),
        "misaligned iova"
    );
    assert_eq!(
        h.map(32, 3, 0x7000_0000, 0, sz),
        Err(Errno::EFAULT),
        "unbacked vaddr"
    );
    assert_eq!(h.v.platform.locked, 0, "failed map left no charge");
    assert_eq!(h.map(32, 3, RAM, 0, sz), Ok(0));
    assert_eq!(h.map(40, 3, RAM, sz, sz), Ok(0), "a bigger argsz is fine");
    assert_eq!(h.map(32, 3, RAM, 0x8000, sz), Err(Errno::EEXIST));
    assert_eq!(
        h.map(32, 3, 0x10, 0, sz),
        Err(Errno::EINVAL),
        "alignment before overlap"
    );
    assert_eq!(
        h.ioctl(h.cont, VFIO_IOMMU_MAP_DMA, 0x10),
        Err(Errno::EFAULT)
    );
    // RLIMIT without CAP_IPC_LOCK.
    h.v.platform.task.cap_ipc_lock = false;
    h.v.platform.task.memlock_limit_pages = 40;
    assert_eq!(
        h.map(32, 3, RAM + 0x100000, 0x100000, 0x10000),
        Err(Errno::ENOMEM)
    );
}

#[test]
fn unmap_writes_size_back_only_on_success() {
    let (mut h, _) = H::ready(&[0]);
    h.map(32, 3, RAM, 0x100000, 0x4000).unwrap();
    h.map(32, 3, RAM + 0x4000, 0x104000, 0x4000).unwrap();
    // v2 bisection: EINVAL, size untouched.
    assert_eq!(h.unmap(0, 0x101000, 0x1000), (Err(Errno::EINVAL), 0x1000));
    assert_eq!(h.unmap(8, 0x100000, 0x1000), (Err(Errno::EINVAL), 0x1000));
    assert_eq!(h.unmap(0, 0x100001, 0x1000), (Err(Errno::EINVAL), 0x1000));
    assert_eq!(h.unmap(0, 0x100000, 0), (Err(Errno::EINVAL), 0));
    assert_eq!(
        h.unmap(2, 0x100000, 0),
        (Err(Errno::EINVAL), 0),
        "ALL with iova"
    );
    // Both mappings in one call: 0x8000 reported.
    assert_eq!(h.unmap(0, 0x100000, 0x10000), (Ok(0), 0x8000));
    assert_eq!(h.unmap(0, 0x100000, 0x10000), (Ok(0), 0));
    assert_eq!(h.v.platform.locked, 0);
    assert!(h.v.platform.pins.is_empty());
    // argsz too small
    h.c.poke(ARG, &le32(23));
    assert_eq!(
        h.ioctl(h.cont, VFIO_IOMMU_UNMAP_DMA, ARG),
        Err(Errno::EINVAL)
    );
    // GET_DIRTY_BITMAP needs argsz >= 48.
    h.c.poke(ARG, &[24, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(
        h.ioctl(h.cont, VFIO_IOMMU_UNMAP_DMA, ARG),
        Err(Errno::EINVAL)
    );
}

#[test]
fn dma_cc_iommu_follows_groups_and_flushes_are_ordered() {
    let mut h = H::new();
    let g0 = h.open_group(0);
    h.set_container(g0, h.cont).unwrap();
    h.ioctl(h.cont, VFIO_SET_IOMMU, 3).unwrap();
    assert_eq!(h.ioctl(h.cont, VFIO_CHECK_EXTENSION, 4), Ok(1));
    h.map(32, 3, RAM, 0, 0x2000).unwrap();
    assert!(h.v.platform.flushes.is_empty(), "coherent only: no flush");
    let g1 = h.open_group(1);
    h.set_container(g1, h.cont).unwrap();
    assert_eq!(h.ioctl(h.cont, VFIO_CHECK_EXTENSION, 4), Ok(0));
    h.v.platform.events.clear();
    h.map(32, 3, RAM + 0x10000, 0x10000, 0x2000).unwrap();
    h.unmap(0, 0x10000, 0x2000).0.unwrap();
    let ev = &h.v.platform.events;
    let pos = |f: &dyn Fn(&Event) -> bool| ev.iter().position(f).expect("event present");
    let flush_map = pos(&|e| {
        matches!(
            e,
            Event::Flush {
                reason: FlushReason::Map,
                ..
            }
        )
    });
    let first_map = pos(&|e| matches!(e, Event::Map { .. }));
    let flush_unpin = pos(&|e| {
        matches!(
            e,
            Event::Flush {
                reason: FlushReason::Unpin,
                ..
            }
        )
    });
    let unpin = pos(&|e| matches!(e, Event::Unpin { .. }));
    assert!(flush_map < first_map && flush_unpin < unpin, "{ev:#?}");
    // Group 1 leaves: back to coherent.
    h.ioctl(g1, VFIO_GROUP_UNSET_CONTAINER, 0).unwrap();
    assert_eq!(h.ioctl(h.cont, VFIO_CHECK_EXTENSION, 4), Ok(1));
}

#[test]
fn dirty_pages() {
    let (mut h, _) = H::ready(&[0]);
    h.map(32, 3, RAM, 0, 0x4000).unwrap();
    let dp = |h: &mut H, argsz: u32, flags: u32| {
        h.c.poke(ARG, &[argsz.to_le_bytes(), flags.to_le_bytes()].concat());
        h.ioctl(h.cont, VFIO_IOMMU_DIRTY_PAGES, ARG)
    };
    assert_eq!(dp(&mut h, 7, 1), Err(Errno::EINVAL));
    assert_eq!(dp(&mut h, 8, 0), Err(Errno::EINVAL));
    assert_eq!(dp(&mut h, 8, 3), Err(Errno::EINVAL));
    assert_eq!(dp(&mut h, 8, 8), Err(Errno::EINVAL));
    assert_eq!(dp(&mut h, 8, 1), Ok(0));
    // GET_BITMAP for [0, 16K): all four pages dirty (IOMMU group, never pinned).
    let bm = ARG + 0x1000;
    let mut req = Vec::new();
    for x in [48u32, 4] {
        req.extend_from_slice(&x.to_le_bytes());
    }
    for x in [0u64, 0x4000, 0x1000, 8, bm] {
        req.extend_from_slice(&x.to_le_bytes());
    }
    h.c.poke(ARG, &req);
    assert_eq!(h.ioctl(h.cont, VFIO_IOMMU_DIRTY_PAGES, ARG), Ok(0));
    assert_eq!(h.c.peek(bm, 8), 0xfu64.to_le_bytes());
    h.c.poke(ARG, &le32(47));
    assert_eq!(
        h.ioctl(h.cont, VFIO_IOMMU_DIRTY_PAGES, ARG),
        Err(Errno::EINVAL)
    );
    assert_eq!(dp(&mut h, 8, 2), Ok(0));
    // Type1 (v1): EACCES before anything is read.
    let mut h1 = H::new();
    let g = h1.open_group(0);
    h1.set_container(g, h1.cont).unwrap();
    h1.ioctl(h1.cont, VFIO_SET_IOMMU, 1).unwrap();
    assert_eq!(
        h1.ioctl(h1.cont, VFIO_IOMMU_DIRTY_PAGES, 0),
        Err(Errno::EACCES)
    );
}

#[test]
fn release_all_unmaps_everything() {
    let (mut h, _) = H::ready(&[0, 1]);
    h.map(32, 3, RAM, 0, 0x10000).unwrap();
    assert!(h.v.platform.mapped_pages() > 0);
    h.v.release_all();
    assert_eq!(h.v.platform.mapped_pages(), 0);
    assert_eq!(h.v.platform.domain_count(), 0);
    assert!(h.v.platform.pins.is_empty());
    assert_eq!(h.v.platform.locked, 0);
    assert!(h.v.platform.events.iter().any(|e| matches!(
        e,
        Event::Flush {
            reason: FlushReason::Unpin,
            ..
        }
    )));
}

#[test]
fn fake_caller_faults() {
    let mut c = FakeCaller::new();
    c.map(0x1000, 16, true);
    let mut b = [0u8; 4];
    assert_eq!(c.read(0x100c, &mut b), Ok(()));
    assert_eq!(c.read(0x100e, &mut b), Err(Errno::EFAULT));
    assert_eq!(c.write(0x1000, &b), Err(Errno::EFAULT));
}

/// A file that counts the signals written to it (8 bytes each), standing for an eventfd.
fn counter(name: &str) -> (std::path::PathBuf, std::fs::File) {
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("irq-{name}"));
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

/// SET_IRQS as vfio-pci answers it, and the device's interrupts: INTx automasks, fires again
/// on unmask while still asserted (a level), stops when STATUS is cleared and when
/// COMMAND.INTX_DISABLE is set; MSI's one vector fires once per transfer that asks and takes
/// over from INTx; MSI has no mask (ENOTTY).
#[test]
fn interrupts_as_vfio_pci_delivers_them() {
    use type1_uapi::device::*;
    // linux/vfio.h's SET_IRQS flags.
    const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
    const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
    const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
    const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
    let (mut h, g) = H::ready(&[1]);
    h.c.poke(ARG, b"0000:00:05.0\0");
    let d = h.ioctl(g[0], VFIO_GROUP_GET_DEVICE_FD, ARG).unwrap() as i32;
    let Object::Device(dev) = h.obj(d) else {
        panic!("device")
    };
    let set_irqs = |h: &mut H, index: u32, flags: u32, count: u32, data: &[u8]| {
        let mut s = Vec::new();
        for x in [20 + data.len() as u32, flags, index, 0, count] {
            s.extend_from_slice(&x.to_le_bytes());
        }
        s.extend_from_slice(data);
        h.c.poke(ARG, &s);
        h.ioctl(d, VFIO_DEVICE_SET_IRQS, ARG)
    };
    let trigger_efd = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    // The device's transfer: 64 bytes from the buffer nowhere mapped; it faults, and the
    // interrupt it asked for comes all the same.
    let transfer = |h: &mut H| {
        let mut regs = vec![
            (REG_DMA_SRC, 0u64),
            (REG_DMA_DST, 0x9000_0000),
            (REG_DMA_LEN, 64),
        ];
        regs.push((REG_CMD, u64::from(CMD_START | CMD_TO_MEMORY | CMD_IRQ)));
        for (reg, val) in regs {
            let mut b = val.to_le_bytes();
            let n = if reg == REG_CMD { 4 } else { 8 };
            h.v.device_rw(dev, reg, &mut b[..n], true).unwrap();
        }
    };
    let clear_status = |h: &mut H| {
        h.v.device_rw(dev, REG_STATUS, &mut [6, 0, 0, 0], true)
            .unwrap();
    };
    let config = region_offset(7);
    let status_intx = |h: &mut H| {
        let mut b = [0u8; 2];
        h.v.device_rw(dev, config + PCI_STATUS as u64, &mut b, false)
            .unwrap();
        u16::from_le_bytes(b) & PCI_STATUS_INTERRUPT != 0
    };
    // MSI: one vector, and the capability list shows it.
    h.c.poke(ARG, &[16, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    h.ioctl(d, VFIO_DEVICE_GET_IRQ_INFO, ARG).unwrap();
    assert_eq!(h.c.peek(ARG + 12, 4), le32(1));
    let mut cap = [0u8; 1];
    h.v.device_rw(dev, config + 0x34, &mut cap, false).unwrap();
    let mut id = [0u8; 1];
    h.v.device_rw(dev, config + u64::from(cap[0]), &mut id, false)
        .unwrap();
    assert_eq!((cap[0], id[0]), (MSI_CAP as u8, 0x05));

    let (intx_path, intx) = counter("intx");
    let efd = h.c.add_file(intx);
    assert_eq!(
        set_irqs(&mut h, 0, trigger_efd, 1, &le32(efd as u32)),
        Ok(0)
    );
    transfer(&mut h);
    assert_eq!(signals(&intx_path), 1, "INTx fired");
    assert!(status_intx(&mut h), "config STATUS shows INTx asserted");
    transfer(&mut h);
    assert_eq!(signals(&intx_path), 1, "automasked: no second signal");
    let unmask = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK;
    assert_eq!(set_irqs(&mut h, 0, unmask, 1, &[]), Ok(0));
    assert_eq!(
        signals(&intx_path),
        2,
        "unmasked while asserted: fires again"
    );
    clear_status(&mut h);
    assert!(!status_intx(&mut h), "cleared STATUS deasserts");
    assert_eq!(set_irqs(&mut h, 0, unmask, 1, &[]), Ok(0));
    assert_eq!(signals(&intx_path), 2, "nothing asserted: nothing fires");
    // INTX_DISABLE in COMMAND keeps the line quiet.
    let mut cmd = [0u8; 2];
    h.v.device_rw(dev, config + PCI_COMMAND as u64, &mut cmd, false)
        .unwrap();
    let quiet = u16::from_le_bytes(cmd) | PCI_COMMAND_INTX_DISABLE;
    h.v.device_rw(
        dev,
        config + PCI_COMMAND as u64,
        &mut quiet.to_le_bytes(),
        true,
    )
    .unwrap();
    transfer(&mut h);
    assert_eq!(signals(&intx_path), 2, "INTX_DISABLE");
    clear_status(&mut h);
    h.v.device_rw(dev, config + PCI_COMMAND as u64, &mut cmd, true)
        .unwrap();

    // One index at a time (vfio-pci's irq_type): MSI is EINVAL while INTx is on; once INTx is
    // off, its mask and unmask are EINVAL and MSI takes over.
    let (msi_path, msi) = counter("msi");
    let mfd = h.c.add_file(msi);
    assert_eq!(
        set_irqs(&mut h, 1, trigger_efd, 1, &le32(mfd as u32)),
        Err(Errno::EINVAL)
    );
    let off = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
    assert_eq!(set_irqs(&mut h, 0, off, 0, &[]), Ok(0));
    assert_eq!(set_irqs(&mut h, 0, unmask, 1, &[]), Err(Errno::EINVAL));
    assert_eq!(
        set_irqs(&mut h, 1, trigger_efd, 1, &le32(mfd as u32)),
        Ok(0)
    );
    transfer(&mut h);
    transfer(&mut h);
    assert_eq!(signals(&msi_path), 2, "one MSI per transfer");
    assert_eq!(signals(&intx_path), 2);
    assert_eq!(set_irqs(&mut h, 1, unmask, 1, &[]), Err(Errno::ENOTTY));
    // Loopback trigger, then teardown (DATA_NONE, count 0).
    let fire = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
    assert_eq!(set_irqs(&mut h, 1, fire, 1, &[]), Ok(0));
    assert_eq!(signals(&msi_path), 3, "loopback");
    assert_eq!(set_irqs(&mut h, 1, fire, 0, &[]), Ok(0));
    transfer(&mut h);
    assert_eq!(signals(&msi_path), 3, "MSI torn down");
    let events = &h.v.platform.events;
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Irq { kind: "msi", .. }))
            .count(),
        2
    );
}

/// The typed object calls that scenarios use give the same causes, in the same order, as the
/// group ioctls built on them, each with the kernel's errno.
#[test]
fn typed_object_calls_match_the_group_ioctls() {
    use type1_uapi::VfioError;
    let mut h = H::new();
    let Object::Container(cid) = h.obj(h.cont) else {
        panic!("container fd");
    };
    assert_eq!(
        h.v.set_container(9, Some(Object::Container(cid))),
        Err(VfioError::NoGroup(9))
    );
    h.v.open_group(0).unwrap();
    assert_eq!(h.v.unset_container(0), Err(VfioError::NotSet(0)));
    assert_eq!(VfioError::NotSet(0).errno(), Errno::EINVAL);
    assert_eq!(h.v.set_container(0, None), Err(VfioError::NotAContainer));
    assert_eq!(VfioError::NotAContainer.errno(), Errno::EBADFD);
    assert_eq!(
        h.v.open_device(0, "0000:00:04.0"),
        Err(VfioError::NotSet(0))
    );
    h.v.set_container(0, Some(Object::Container(cid))).unwrap();
    assert_eq!(h.v.group_container(0), Some(cid));
    // Already set is checked before the target (EINVAL before EBADFD).
    assert_eq!(h.v.set_container(0, None), Err(VfioError::AlreadySet(0)));
    assert_eq!(
        h.v.open_device(0, "0000:00:04.0"),
        Err(VfioError::NoBackend(cid))
    );
    h.ioctl(h.cont, VFIO_SET_IOMMU, 3).unwrap();
    assert_eq!(
        h.v.open_device(0, "nosuch"),
        Err(VfioError::NoDevice {
            group: 0,
            name: "nosuch".into()
        })
    );
    let dev = h.v.open_device(0, "0000:00:04.0").unwrap();
    assert_eq!(h.v.unset_container(0), Err(VfioError::DevicesOpen(0)));
    assert_eq!(VfioError::DevicesOpen(0).errno(), Errno::EBUSY);
    // A map through the typed engine borrow is seen by the ioctl side and back.
    let (c, p) = h.v.engine(cid).unwrap();
    c.iommu_mut()
        .unwrap()
        .map_dma(
            p,
            type1_core::MapRequest {
                flags: type1_core::MapFlags::decode(3).unwrap(),
                vaddr: RAM,
                iova: 0x10_0000,
                size: 0x2000,
            },
        )
        .unwrap();
    assert_eq!(h.map(32, 3, RAM, 0x10_0000, 0x1000), Err(Errno::EEXIST));
    h.v.close(Object::Device(dev));
    h.v.unset_container(0).unwrap();
    // The last group left: the backend released everything it pinned.
    assert_eq!(
        h.v.group_states(),
        vec![(0, true, None, 0), (1, false, None, 0)]
    );
    assert!(h.v.container(cid).is_some_and(|c| !c.is_set()));
}
