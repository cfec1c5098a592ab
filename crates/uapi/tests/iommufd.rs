//! `/dev/iommu`, its VFIO compat container and the device cdev against the kernel's errnos
//! (issue 21), over the in-crate fake platform, which checks every seam call it gets.

use type1_core::Errno;
use type1_uapi::{nr::*, testing::FakePlatform, FakeCaller, Vfio};

const ARG: u64 = 0x1_0000; // a 64 KiB argument area
const RAM: u64 = 0x4000_0000; // 16 MiB of pinnable user memory

struct H {
    v: Vfio<FakePlatform>,
    c: FakeCaller,
    fd: i32,
}

fn b32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn b64(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl H {
    fn new() -> H {
        let (mut v, mut c) = FakePlatform::subsystem(RAM, 16 << 20, ARG, 0x10000);
        let obj = v.open_iommufd();
        let fd = c.add_fd(Some(obj));
        H { v, c, fd }
    }

    fn call(&mut self, fd: i32, req: u64, bytes: &[u8]) -> Result<i64, Errno> {
        self.c.poke(ARG, bytes);
        let obj = self.c.fd_object(fd).expect("emulated fd");
        self.v.ioctl(obj, req, ARG, &mut self.c)
    }

    fn ioas_alloc(&mut self) -> u32 {
        self.call(self.fd, IOMMU_IOAS_ALLOC, &b32(&[12, 0, 0]))
            .unwrap();
        u32::from_le_bytes(self.c.peek(ARG + 8, 4).try_into().unwrap())
    }

    fn map(&mut self, ioas: u32, flags: u32, va: u64, len: u64, iova: u64) -> Result<u64, Errno> {
        let mut b = b32(&[40, flags, ioas, 0]);
        b.extend(b64(&[va, len, iova]));
        self.call(self.fd, IOMMU_IOAS_MAP, &b)?;
        Ok(u64::from_le_bytes(
            self.c.peek(ARG + 32, 8).try_into().unwrap(),
        ))
    }

    fn unmap(&mut self, ioas: u32, iova: u64, len: u64) -> Result<u64, Errno> {
        let mut b = b32(&[24, ioas]);
        b.extend(b64(&[iova, len]));
        self.call(self.fd, IOMMU_IOAS_UNMAP, &b)?;
        Ok(u64::from_le_bytes(
            self.c.peek(ARG + 16, 8).try_into().unwrap(),
        ))
    }

    /// A bound device cdev of `name`, attached to `pt`: (fd, device id, hwpt id).
    fn device(&mut self, name: &str, pt: u32) -> (i32, u32, u32) {
        let obj = self.v.open_cdev(name).unwrap();
        let dfd = self.c.add_fd(Some(obj));
        self.call(
            dfd,
            VFIO_DEVICE_BIND_IOMMUFD,
            &b32(&[16, 0, self.fd as u32, 0]),
        )
        .unwrap();
        let dev = u32::from_le_bytes(self.c.peek(ARG + 12, 4).try_into().unwrap());
        self.call(dfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &b32(&[12, 0, pt]))
            .unwrap();
        let hwpt = u32::from_le_bytes(self.c.peek(ARG + 8, 4).try_into().unwrap());
        (dfd, dev, hwpt)
    }
}

const RW: u32 = 2 | 4;
const FIXED: u32 = 1;

#[test]
fn the_common_rules_size_tail_number_and_object_types() {
    let mut h = H::new();
    // Unknown iommufd number, and a VFIO number the compat layer does not serve: ENOTTY.
    assert_eq!(
        h.call(h.fd, iommufd_io(0x7f), &b32(&[8, 0])),
        Err(Errno::ENOTTY)
    );
    assert_eq!(
        h.call(h.fd, VFIO_IOMMU_DIRTY_PAGES, &b32(&[8, 0])),
        Err(Errno::ENOTTY)
    );
    // size below the mandatory part: EINVAL; a non-zero tail past the struct: E2BIG; a zero
    // tail is accepted.
    assert_eq!(
        h.call(h.fd, IOMMU_IOAS_ALLOC, &b32(&[8, 0, 0])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(h.fd, IOMMU_IOAS_ALLOC, &b32(&[16, 0, 0, 1])),
        Err(Errno::E2BIG)
    );
    assert_eq!(h.call(h.fd, IOMMU_IOAS_ALLOC, &b32(&[16, 0, 0, 0])), Ok(0));
    // Unknown flags: EOPNOTSUPP.
    assert_eq!(
        h.call(h.fd, IOMMU_IOAS_ALLOC, &b32(&[12, 1, 0])),
        Err(Errno::EOPNOTSUPP)
    );
    let ioas = h.ioas_alloc();
    assert_eq!(
        h.map(ioas, 8 | RW, RAM, 4096, 0x10000),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(h.map(ioas, FIXED, RAM, 4096, 0x10000), Err(Errno::EINVAL));
    // Object ids by type: a missing id and an id of another type are both ENOENT.
    assert_eq!(
        h.map(ioas + 100, FIXED | RW, RAM, 4096, 0x10000),
        Err(Errno::ENOENT)
    );
    let (_dfd, dev, hwpt) = h.device("0000:00:04.0", ioas);
    assert_eq!(
        h.map(hwpt, FIXED | RW, RAM, 4096, 0x10000),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        h.map(dev, FIXED | RW, RAM, 4096, 0x10000),
        Err(Errno::ENOENT)
    );
    // DESTROY: ENOENT for nothing, EBUSY for an IOAS in use.
    assert_eq!(
        h.call(h.fd, IOMMU_DESTROY, &b32(&[8, 999])),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        h.call(h.fd, IOMMU_DESTROY, &b32(&[8, ioas])),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        h.call(h.fd, IOMMU_DESTROY, &b32(&[8, hwpt])),
        Err(Errno::EBUSY)
    );
}

#[test]
fn map_and_unmap_follow_the_kernels_ranges() {
    let mut h = H::new();
    let ioas = h.ioas_alloc();
    let (_dfd, _dev, _hwpt) = h.device("0000:00:04.0", ioas);
    // Overflowing ranges.
    assert_eq!(
        h.map(ioas, FIXED | RW, RAM, u64::MAX, 0),
        Err(Errno::EOVERFLOW)
    );
    assert_eq!(
        h.map(ioas, FIXED | RW, RAM, 8192, !0xfffu64),
        Err(Errno::EOVERFLOW)
    );
    assert_eq!(h.unmap(ioas, !0xfffu64, 8192), Err(Errno::EOVERFLOW));
    // Misaligned, overlapping.
    assert_eq!(
        h.map(ioas, FIXED | RW, RAM, 4096, 0x10800),
        Err(Errno::EINVAL)
    );
    assert_eq!(h.map(ioas, FIXED | RW, RAM, 8192, 0x10000), Ok(0x10000));
    assert_eq!(
        h.map(ioas, FIXED | RW, RAM, 4096, 0x11000),
        Err(Errno::EEXIST)
    );
    // Pinned once, while a domain maps it.
    assert_eq!(h.v.iommufds().next().unwrap().1.pinned_pages(), 2);
    // Unmap of part of an area: ENOENT; of nothing: ENOENT; the whole area: its length.
    assert_eq!(h.unmap(ioas, 0x10000, 4096), Err(Errno::ENOENT));
    assert_eq!(h.unmap(ioas, 0x80000, 4096), Err(Errno::ENOENT));
    assert_eq!(h.unmap(ioas, 0x10000, 8192), Ok(8192));
    assert_eq!(h.v.iommufds().next().unwrap().1.pinned_pages(), 0);
    // An allocated IOVA, then unmap all.
    let iova = h.map(ioas, RW, RAM, 4096, 0).unwrap();
    assert_eq!(iova % 4096, 0);
    assert_eq!(h.unmap(ioas, 0, u64::MAX), Ok(4096));
    // IOVA_RANGES: too small an array is EMSGSIZE with the count written back.
    let mut b = b32(&[32, ioas, 0, 0]);
    b.extend(b64(&[ARG + 0x1000, 0]));
    assert_eq!(
        h.call(h.fd, IOMMU_IOAS_IOVA_RANGES, &b),
        Err(Errno::EMSGSIZE)
    );
    assert!(u32::from_le_bytes(h.c.peek(ARG + 8, 4).try_into().unwrap()) > 0);
}

#[test]
fn copy_shares_pages_and_pins_them_once() {
    let mut h = H::new();
    let a = h.ioas_alloc();
    let b = h.ioas_alloc();
    let (_d1, _, _) = h.device("0000:00:04.0", a);
    let (_d2, _, _) = h.device("0000:00:05.0", b);
    h.map(a, FIXED | RW, RAM, 4 * 4096, 0x100000).unwrap();
    let mut c = b32(&[40, FIXED | RW, b, a]);
    c.extend(b64(&[2 * 4096, 0x200000, 0x101000]));
    assert_eq!(h.call(h.fd, IOMMU_IOAS_COPY, &c), Ok(0));
    // Four pages pinned, however many areas and domains map two of them.
    assert_eq!(h.v.iommufds().next().unwrap().1.pinned_pages(), 4);
    assert_eq!(h.unmap(a, 0x100000, 4 * 4096), Ok(4 * 4096));
    assert_eq!(h.v.iommufds().next().unwrap().1.pinned_pages(), 2);
    // A copy over a hole: ENOENT.
    let mut c = b32(&[40, FIXED | RW, b, a]);
    c.extend(b64(&[4096, 0x300000, 0x100000]));
    assert_eq!(h.call(h.fd, IOMMU_IOAS_COPY, &c), Err(Errno::ENOENT));
}

#[test]
fn the_cdev_does_nothing_before_bind_and_blocks_the_group() {
    let mut h = H::new();
    let obj = h.v.open_cdev("0000:00:04.0").unwrap();
    let dfd = h.c.add_fd(Some(obj));
    // Before BIND: EINVAL for anything else.
    assert_eq!(
        h.call(dfd, VFIO_DEVICE_GET_INFO, &b32(&[24, 0, 0, 0, 0, 0])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(dfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &b32(&[12, 0, 1])),
        Err(Errno::EINVAL)
    );
    // BIND: argsz, flags, a negative fd, an fd that is no iommufd.
    assert_eq!(
        h.call(dfd, VFIO_DEVICE_BIND_IOMMUFD, &b32(&[12, 0, h.fd as u32])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(
            dfd,
            VFIO_DEVICE_BIND_IOMMUFD,
            &b32(&[16, 4, h.fd as u32, 0])
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(dfd, VFIO_DEVICE_BIND_IOMMUFD, &b32(&[16, 0, u32::MAX, 0])),
        Err(Errno::EINVAL)
    );
    let other = h.c.add_fd(None);
    assert_eq!(
        h.call(
            dfd,
            VFIO_DEVICE_BIND_IOMMUFD,
            &b32(&[16, 0, other as u32, 0])
        ),
        Err(Errno::EBADFD)
    );
    assert_eq!(
        h.call(
            dfd,
            VFIO_DEVICE_BIND_IOMMUFD,
            &b32(&[16, 0, h.fd as u32, 0])
        ),
        Ok(0)
    );
    let dev = u32::from_le_bytes(h.c.peek(ARG + 12, 4).try_into().unwrap());
    // Bound: a second bind is EINVAL, and the group cannot be opened.
    assert_eq!(
        h.call(
            dfd,
            VFIO_DEVICE_BIND_IOMMUFD,
            &b32(&[16, 0, h.fd as u32, 0])
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(h.v.open_group(0), Err(Errno::EBUSY));
    // Attach to something that is not a page table: EINVAL; to nothing: ENOENT.
    assert_eq!(
        h.call(dfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &b32(&[12, 0, dev])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(dfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &b32(&[12, 0, 77])),
        Err(Errno::ENOENT)
    );
    // Close: the group opens again.
    h.v.close(obj);
    assert!(h.v.open_group(0).is_ok());
}

#[test]
fn the_compat_container_serves_type1_on_dev_iommu() {
    let mut h = H::new();
    // No compat IOAS yet: SET_IOMMU is ENODEV (VFIO fails it without a group).
    let obj = h.c.fd_object(h.fd).unwrap();
    assert_eq!(
        h.v.ioctl(obj, VFIO_SET_IOMMU, 3, &mut h.c),
        Err(Errno::ENODEV)
    );
    let g = h.v.open_group(0).unwrap();
    let gfd = h.c.add_fd(Some(g));
    assert_eq!(
        h.call(gfd, VFIO_GROUP_SET_CONTAINER, &b32(&[h.fd as u32])),
        Ok(0)
    );
    assert_eq!(
        h.v.ioctl(obj, VFIO_SET_IOMMU, 9, &mut h.c),
        Err(Errno::EINVAL)
    );
    assert_eq!(h.v.ioctl(obj, VFIO_SET_IOMMU, 3, &mut h.c), Ok(0));
    assert_eq!(h.v.ioctl(obj, VFIO_CHECK_EXTENSION, 9, &mut h.c), Ok(1));
    // The device opens bound and attached to the compat IOAS.
    h.c.poke(ARG, b"0000:00:04.0\0");
    let dfd =
        h.v.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, ARG, &mut h.c)
            .unwrap() as i32;
    // MAP_DMA with VADDR is an unknown flag here: EINVAL. A plain map and unmap work.
    let mut m = b32(&[32, 3 | 4]);
    m.extend(b64(&[RAM, 0x10000, 4096]));
    assert_eq!(h.call(h.fd, VFIO_IOMMU_MAP_DMA, &m), Err(Errno::EINVAL));
    let mut m = b32(&[32, 3]);
    m.extend(b64(&[RAM, 0x10000, 8192]));
    assert_eq!(h.call(h.fd, VFIO_IOMMU_MAP_DMA, &m), Ok(0));
    // DMA_CC_IOMMU is computed over the compat IOAS's page tables.
    let cc = h.v.ioctl(obj, VFIO_CHECK_EXTENSION, 4, &mut h.c).unwrap();
    let mut u = b32(&[24, 0]);
    u.extend(b64(&[0x10000, 4096]));
    // TYPE1v2: a range that cuts an area fails ENOENT and still writes the size back.
    assert_eq!(h.call(h.fd, VFIO_IOMMU_UNMAP_DMA, &u), Err(Errno::ENOENT));
    assert_eq!(h.c.peek(ARG + 16, 8), 0u64.to_le_bytes());
    let mut u = b32(&[24, 2]);
    u.extend(b64(&[0, 0]));
    assert_eq!(h.call(h.fd, VFIO_IOMMU_UNMAP_DMA, &u), Ok(0));
    assert_eq!(h.c.peek(ARG + 16, 8), 8192u64.to_le_bytes());
    let coherent = h.v.iommufds().next().unwrap().1.all_coherent(1).unwrap();
    assert_eq!(cc, coherent as i64);
    h.v.close(h.c.fd_object(dfd).unwrap());
}

/// Issue 21, bad input: every iommufd ioctl meets a size below its mandatory part (EINVAL), a
/// non-zero byte past the struct this kernel knows (E2BIG; zeros there are accepted), an
/// unknown flag or a non-zero reserved field (EOPNOTSUPP) and ids of the wrong type (ENOENT,
/// or EINVAL where the kernel takes several types and this is none of them), in that order
/// of checks.
#[test]
fn every_iommufd_ioctl_meets_each_class_of_bad_input_with_the_kernels_errno() {
    let mut h = H::new();
    let ioas = h.ioas_alloc();
    let (dfd, dev, hwpt) = h.device("0000:00:05.0", ioas);
    // A buffer for IOVA range arrays.
    let ranges = ARG + 0x8000;
    // (name, request, a valid struct, its mandatory size, the byte offsets of fields that must
    // be zero or carry known flags only)
    type Row = (&'static str, u64, Vec<u8>, usize, Vec<usize>);
    let structs: Vec<Row> = vec![
        ("DESTROY", IOMMU_DESTROY, b32(&[8, 999]), 8, vec![]),
        (
            "IOAS_ALLOC",
            IOMMU_IOAS_ALLOC,
            b32(&[12, 0, 0]),
            12,
            vec![4],
        ),
        (
            "IOAS_ALLOW_IOVAS",
            IOMMU_IOAS_ALLOW_IOVAS,
            [b32(&[24, ioas, 0, 0]), b64(&[ranges])].concat(),
            24,
            vec![12],
        ),
        (
            "IOAS_COPY",
            IOMMU_IOAS_COPY,
            [
                b32(&[40, 1 | 4, ioas, ioas]),
                b64(&[4096, 0x900000, 0x800000]),
            ]
            .concat(),
            40,
            vec![4],
        ),
        (
            "IOAS_IOVA_RANGES",
            IOMMU_IOAS_IOVA_RANGES,
            [b32(&[32, ioas, 0, 0]), b64(&[ranges, 0])].concat(),
            32,
            vec![12],
        ),
        (
            "IOAS_MAP",
            IOMMU_IOAS_MAP,
            [b32(&[40, FIXED | RW, ioas, 0]), b64(&[RAM, 4096, 0x100000])].concat(),
            40,
            vec![4, 12],
        ),
        (
            "IOAS_UNMAP",
            IOMMU_IOAS_UNMAP,
            [b32(&[24, ioas]), b64(&[0x700000, 4096])].concat(),
            24,
            vec![],
        ),
        (
            "OPTION",
            IOMMU_OPTION,
            [b32(&[24, 1, 1, ioas]), b64(&[0])].concat(),
            24,
            vec![10],
        ),
        ("VFIO_IOAS", IOMMU_VFIO_IOAS, b32(&[12, 0, 0]), 12, vec![10]),
        (
            "HWPT_ALLOC",
            IOMMU_HWPT_ALLOC,
            [b32(&[48, 0, dev, ioas, 0, 0, 0, 0]), b64(&[0, 0])].concat(),
            24,
            vec![4, 20],
        ),
        (
            "GET_HW_INFO",
            IOMMU_GET_HW_INFO,
            [b32(&[40, 0, dev, 0]), b64(&[0]), b32(&[0, 0]), b64(&[0])].concat(),
            32,
            vec![4],
        ),
    ];
    for (name, req, valid, min, zero_fields) in &structs {
        let ksize = valid.len();
        // Too small: EINVAL (a size of 0 too).
        for size in [0, min - 1] {
            let mut b = valid.clone();
            b[..4].copy_from_slice(&(size as u32).to_le_bytes());
            assert_eq!(
                h.call(h.fd, *req, &b),
                Err(Errno::EINVAL),
                "{name} size {size}"
            );
        }
        // A non-zero byte past the struct: E2BIG.
        let mut b = valid.clone();
        b[..4].copy_from_slice(&(ksize as u32 + 8).to_le_bytes());
        b.extend([0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(h.call(h.fd, *req, &b), Err(Errno::E2BIG), "{name} tail");
        // An unknown flag, or a reserved field set: EOPNOTSUPP.
        for &off in zero_fields {
            let mut b = valid.clone();
            b[off + 1] |= 0x40;
            assert_eq!(
                h.call(h.fd, *req, &b),
                Err(Errno::EOPNOTSUPP),
                "{name} bit at byte {}",
                off + 1
            );
        }
    }
    // Ids of the wrong type. (offset of the id, the ids to try, the errno)
    let by_type: Vec<(&str, usize, Vec<u32>, Errno)> = vec![
        ("IOAS_ALLOW_IOVAS", 4, vec![hwpt, dev, 999], Errno::ENOENT),
        ("IOAS_COPY", 8, vec![hwpt, dev, 999], Errno::ENOENT),
        ("IOAS_COPY", 12, vec![hwpt, dev, 999], Errno::ENOENT),
        ("IOAS_IOVA_RANGES", 4, vec![hwpt, dev, 999], Errno::ENOENT),
        ("IOAS_MAP", 8, vec![hwpt, dev, 999], Errno::ENOENT),
        ("IOAS_UNMAP", 4, vec![hwpt, dev, 999], Errno::ENOENT),
        ("OPTION", 12, vec![hwpt, dev, 999], Errno::ENOENT),
        ("HWPT_ALLOC", 8, vec![ioas, hwpt, 999], Errno::ENOENT),
        ("HWPT_ALLOC", 12, vec![hwpt, dev], Errno::EINVAL),
        ("HWPT_ALLOC", 12, vec![999], Errno::ENOENT),
        ("GET_HW_INFO", 8, vec![ioas, hwpt, 999], Errno::ENOENT),
    ];
    for (name, off, ids, errno) in by_type {
        let (_, req, valid, ..) = structs.iter().find(|s| s.0 == name).unwrap();
        for id in ids {
            let mut b = valid.clone();
            b[off..off + 4].copy_from_slice(&id.to_le_bytes());
            assert_eq!(
                h.call(h.fd, *req, &b),
                Err(errno),
                "{name} id {id} at {off}"
            );
        }
    }
    // VFIO_IOAS SET with something that is not an IOAS.
    for id in [hwpt, dev, 999] {
        assert_eq!(
            h.call(h.fd, IOMMU_VFIO_IOAS, &b32(&[12, id, 1])),
            Err(Errno::ENOENT),
            "VFIO_IOAS SET {id}"
        );
    }
    // Overflowing ranges: EOVERFLOW for MAP, COPY and UNMAP.
    let top: u64 = !0xfff;
    assert_eq!(
        h.map(ioas, FIXED | RW, RAM, 8192, top),
        Err(Errno::EOVERFLOW)
    );
    let mut copy = b32(&[40, FIXED | 4, ioas, ioas]);
    copy.extend(b64(&[u64::MAX, 0x900000, 0x800000]));
    assert_eq!(h.call(h.fd, IOMMU_IOAS_COPY, &copy), Err(Errno::EOVERFLOW));
    assert_eq!(h.unmap(ioas, top, 8192), Err(Errno::EOVERFLOW));
    // The device cdev's ioctls: argsz too small (EINVAL), a non-zero tail on BIND (E2BIG),
    // unknown flags (EINVAL, as VFIO answers them).
    let cdev = h.v.open_cdev("0000:00:04.0").unwrap();
    let cfd = h.c.add_fd(Some(cdev));
    let fd = h.fd as u32;
    assert_eq!(
        h.call(cfd, VFIO_DEVICE_BIND_IOMMUFD, &b32(&[12, 0, fd, 0])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(
            cfd,
            VFIO_DEVICE_BIND_IOMMUFD,
            &b32(&[28, 0, fd, 0, 0, 0, 1])
        ),
        Err(Errno::E2BIG)
    );
    assert_eq!(
        h.call(cfd, VFIO_DEVICE_BIND_IOMMUFD, &b32(&[16, 2, fd, 0])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(dfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &b32(&[8, 0, ioas])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(dfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &b32(&[12, 1, ioas])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(dfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &b32(&[12, 0, 999])),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        h.call(dfd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &b32(&[4, 0])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.call(dfd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &b32(&[8, 1])),
        Err(Errno::EINVAL)
    );
    // None of it left anything behind: the device is still attached to its HWPT and the IOAS
    // holds no area.
    assert_eq!(h.unmap(ioas, 0, u64::MAX), Ok(0));
}
