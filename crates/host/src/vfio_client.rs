//! A VFIO program's side of `/dev/vfio`: the few calls a VMM makes to map memory and drive a
//! device, made through libc's `open`, `ioctl`, `pread`, `pwrite` and `close`.
//!
//! Unlike [`crate::sys`], which calls the kernel directly so that the preload library never
//! sees its own I/O, these go through the C library's symbols, which an `LD_PRELOAD` library
//! interposes: a process that uses them under `libtype1_preload.so` is an unmodified VFIO
//! program as far as the emulation can tell. `type1 bench` runs one (its `emulated` rows) to
//! measure what a VMM sees, next to the engine's in-process figures. On a host with real VFIO
//! the same calls reach the kernel.
//!
//! The structures are `linux/vfio.h`'s, whose layout is stable uAPI.

use type1_core::Errno;

/// `VFIO_TYPE` (`';'`) and `VFIO_BASE`: `_IO(VFIO_TYPE, VFIO_BASE + n)`.
const fn vfio_io(n: u64) -> u64 {
    (0x3b << 8) | (100 + n)
}

/// `VFIO_CHECK_EXTENSION`.
pub const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
/// `VFIO_SET_IOMMU`.
pub const VFIO_SET_IOMMU: u64 = vfio_io(2);
/// `VFIO_GROUP_SET_CONTAINER`.
pub const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
/// `VFIO_GROUP_UNSET_CONTAINER`.
pub const VFIO_GROUP_UNSET_CONTAINER: u64 = vfio_io(5);
/// `VFIO_GROUP_GET_DEVICE_FD`.
pub const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
/// `VFIO_DEVICE_GET_REGION_INFO`.
pub const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
/// `VFIO_IOMMU_MAP_DMA`.
pub const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
/// `VFIO_IOMMU_UNMAP_DMA`.
pub const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);
/// `VFIO_TYPE1v2_IOMMU`.
pub const VFIO_TYPE1V2_IOMMU: u64 = 3;
/// `VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE`.
pub const MAP_RW: u32 = 3;

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

fn errno() -> Errno {
    crate::sys::errno()
}

fn check(r: libc::c_int) -> Result<i32, Errno> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `open(path, O_RDWR | O_CLOEXEC)`.
pub fn open(path: &std::ffi::CStr) -> Result<i32, Errno> {
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })
}

/// `close(fd)`.
pub fn close(fd: i32) -> Result<(), Errno> {
    // SAFETY: closing a descriptor has no memory-safety preconditions.
    check(unsafe { libc::close(fd) }).map(|_| ())
}

/// An ioctl whose argument is an integer (`CHECK_EXTENSION`, `SET_IOMMU`, `UNSET_CONTAINER`).
pub fn ioctl_value(fd: i32, req: u64, value: u64) -> Result<i32, Errno> {
    // SAFETY: the argument is passed by value; the kernel (or the emulation) reads no memory.
    check(unsafe { libc::ioctl(fd, req as libc::c_ulong, value as libc::c_ulong) })
}

/// An ioctl whose argument is one of this module's `repr(C)` uAPI structs, which the call
/// reads and may write back.
fn ioctl_with<T>(fd: i32, req: u64, arg: &mut T) -> Result<i32, Errno> {
    // SAFETY: `arg` is an exclusively borrowed struct, alive across the call, with the layout
    // of the header struct `req` takes (each caller pairs them).
    check(unsafe { libc::ioctl(fd, req as libc::c_ulong, arg as *mut T) })
}

/// `VFIO_GROUP_SET_CONTAINER`: group `group` into container `container`.
pub fn set_container(group: i32, container: i32) -> Result<(), Errno> {
    let c: libc::c_int = container;
    // SAFETY: the argument points to an int that lives across the call, as the request expects.
    check(unsafe {
        libc::ioctl(
            group,
            VFIO_GROUP_SET_CONTAINER as libc::c_ulong,
            &c as *const libc::c_int,
        )
    })
    .map(|_| ())
}

/// `VFIO_GROUP_GET_DEVICE_FD` for device `name`.
pub fn device_fd(group: i32, name: &std::ffi::CStr) -> Result<i32, Errno> {
    // SAFETY: the argument is a NUL-terminated string that lives across the call.
    check(unsafe {
        libc::ioctl(
            group,
            VFIO_GROUP_GET_DEVICE_FD as libc::c_ulong,
            name.as_ptr(),
        )
    })
}

/// `VFIO_IOMMU_MAP_DMA` of `size` bytes at `vaddr` to `iova`, with `flags`.
pub fn map_dma(container: i32, vaddr: u64, iova: u64, size: u64, flags: u32) -> Result<(), Errno> {
    let mut m = DmaMap {
        argsz: std::mem::size_of::<DmaMap>() as u32,
        flags,
        vaddr,
        iova,
        size,
    };
    ioctl_with(container, VFIO_IOMMU_MAP_DMA, &mut m).map(|_| ())
}

/// `VFIO_IOMMU_UNMAP_DMA` of `[iova, iova + size)`: the bytes unmapped.
pub fn unmap_dma(container: i32, iova: u64, size: u64) -> Result<u64, Errno> {
    let mut u = DmaUnmap {
        argsz: std::mem::size_of::<DmaUnmap>() as u32,
        flags: 0,
        iova,
        size,
    };
    ioctl_with(container, VFIO_IOMMU_UNMAP_DMA, &mut u)?;
    Ok(u.size)
}

/// `VFIO_DEVICE_GET_REGION_INFO` of region `index`: `(flags, size, offset)`.
pub fn region_info(device: i32, index: u32) -> Result<(u32, u64, u64), Errno> {
    let mut r = RegionInfo {
        argsz: std::mem::size_of::<RegionInfo>() as u32,
        flags: 0,
        index,
        cap_offset: 0,
        size: 0,
        offset: 0,
    };
    ioctl_with(device, VFIO_DEVICE_GET_REGION_INFO, &mut r)?;
    Ok((r.flags, r.size, r.offset))
}

// ---- iommufd (`linux/iommufd.h`) and the VFIO device cdev ---------------------------------

/// `IOMMU_IOAS_ALLOC`.
pub const IOMMU_IOAS_ALLOC: u64 = (0x3b << 8) | 0x81;
/// `IOMMU_IOAS_MAP`.
pub const IOMMU_IOAS_MAP: u64 = (0x3b << 8) | 0x85;
/// `IOMMU_IOAS_UNMAP`.
pub const IOMMU_IOAS_UNMAP: u64 = (0x3b << 8) | 0x86;
/// `VFIO_DEVICE_BIND_IOMMUFD`.
pub const VFIO_DEVICE_BIND_IOMMUFD: u64 = vfio_io(18);
/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u64 = vfio_io(19);
/// `IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE`.
pub const IOAS_MAP_FIXED_RW: u32 = 1 | 2 | 4;

#[repr(C)]
struct IoasAlloc {
    size: u32,
    flags: u32,
    out_ioas_id: u32,
}

#[repr(C)]
struct IoasMap {
    size: u32,
    flags: u32,
    ioas_id: u32,
    reserved: u32,
    user_va: u64,
    length: u64,
    iova: u64,
}

#[repr(C)]
struct IoasUnmap {
    size: u32,
    ioas_id: u32,
    iova: u64,
    length: u64,
}

#[repr(C)]
struct BindIommufd {
    argsz: u32,
    flags: u32,
    iommufd: i32,
    out_devid: u32,
}

#[repr(C)]
struct AttachPt {
    argsz: u32,
    flags: u32,
    pt_id: u32,
}

/// `IOMMU_IOAS_ALLOC` on an open `/dev/iommu`: the new IOAS's id.
pub fn ioas_alloc(iommufd: i32) -> Result<u32, Errno> {
    let mut a = IoasAlloc {
        size: std::mem::size_of::<IoasAlloc>() as u32,
        flags: 0,
        out_ioas_id: 0,
    };
    ioctl_with(iommufd, IOMMU_IOAS_ALLOC, &mut a)?;
    Ok(a.out_ioas_id)
}

/// `VFIO_DEVICE_BIND_IOMMUFD` of a device cdev, then `VFIO_DEVICE_ATTACH_IOMMUFD_PT` to
/// `pt` (an IOAS or a HWPT): the page table's id the device ended up on.
pub fn bind_and_attach(device: i32, iommufd: i32, pt: u32) -> Result<u32, Errno> {
    let mut b = BindIommufd {
        argsz: std::mem::size_of::<BindIommufd>() as u32,
        flags: 0,
        iommufd,
        out_devid: 0,
    };
    ioctl_with(device, VFIO_DEVICE_BIND_IOMMUFD, &mut b)?;
    let mut a = AttachPt {
        argsz: std::mem::size_of::<AttachPt>() as u32,
        flags: 0,
        pt_id: pt,
    };
    ioctl_with(device, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a)?;
    Ok(a.pt_id)
}

/// `IOMMU_IOAS_MAP` of `length` bytes at `user_va` to `iova` with `flags`.
pub fn ioas_map(
    iommufd: i32,
    ioas: u32,
    user_va: u64,
    iova: u64,
    length: u64,
    flags: u32,
) -> Result<(), Errno> {
    let mut m = IoasMap {
        size: std::mem::size_of::<IoasMap>() as u32,
        flags,
        ioas_id: ioas,
        reserved: 0,
        user_va,
        length,
        iova,
    };
    ioctl_with(iommufd, IOMMU_IOAS_MAP, &mut m).map(|_| ())
}

/// `IOMMU_IOAS_UNMAP` of `[iova, iova + length)`: the bytes unmapped.
pub fn ioas_unmap(iommufd: i32, ioas: u32, iova: u64, length: u64) -> Result<u64, Errno> {
    let mut u = IoasUnmap {
        size: std::mem::size_of::<IoasUnmap>() as u32,
        ioas_id: ioas,
        iova,
        length,
    };
    ioctl_with(iommufd, IOMMU_IOAS_UNMAP, &mut u)?;
    Ok(u.length)
}

/// `pread(fd, buf, off)`: the bytes read.
pub fn pread(fd: i32, buf: &mut [u8], off: u64) -> Result<usize, Errno> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let r = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off as libc::off_t) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

/// `pwrite(fd, data, off)`: the bytes written.
pub fn pwrite(fd: i32, data: &[u8], off: u64) -> Result<usize, Errno> {
    // SAFETY: `data` is valid for reads of `data.len()` bytes.
    let r = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off as libc::off_t) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}
