//! Fuzzing harness for the uAPI decoder: arbitrary ioctl sequences with arbitrary argument
//! bytes against the `linux/vfio.h` layer (`type1-uapi`) over its fake platform.
//!
//! The input is a sequence of 40-byte records: which fd (container, group 0, group 1, or the
//! fd a GET_DEVICE_FD returned), which request (from the real request numbers, or a raw one),
//! the `arg` value (a pointer into the argument area, an out-of-bounds pointer, or an integer),
//! and 32 bytes written into the argument area first. Whatever the bytes, every call must
//! return a value or an errno (no panic), and closing everything must leave no domain and no
//! mapped page behind.

use type1_uapi::{nr::*, testing::FakePlatform};

const ARG: u64 = 0x1_0000;
const RAM: u64 = 0x4000_0000;
const RECORD: usize = 40;
const REQUESTS: [u64; 18] = [
    VFIO_GET_API_VERSION,
    VFIO_CHECK_EXTENSION,
    VFIO_SET_IOMMU,
    VFIO_GROUP_GET_STATUS,
    VFIO_GROUP_SET_CONTAINER,
    VFIO_GROUP_UNSET_CONTAINER,
    VFIO_GROUP_GET_DEVICE_FD,
    VFIO_DEVICE_GET_INFO,
    VFIO_DEVICE_GET_REGION_INFO,
    VFIO_DEVICE_GET_IRQ_INFO,
    VFIO_DEVICE_SET_IRQS,
    VFIO_DEVICE_RESET,
    VFIO_IOMMU_GET_INFO,
    VFIO_IOMMU_MAP_DMA,
    VFIO_IOMMU_UNMAP_DMA,
    VFIO_IOMMU_ENABLE,
    VFIO_IOMMU_DIRTY_PAGES,
    0x3b00,
];

/// Runs one fuzz input; returns how many ioctls succeeded. `Err` describes a broken guarantee
/// (a leak after close).
pub fn run_uapi_bytes(data: &[u8]) -> Result<usize, String> {
    let (mut v, mut c) = FakePlatform::subsystem(RAM, 1 << 20, ARG, 0x1000);
    let mut fds: Vec<i32> = Vec::new();
    let mut ok = 0;
    let cont = v.open_container();
    fds.push(c.add_fd(Some(cont)));
    for g in [0, 1] {
        if let Ok(obj) = v.open_group(g) {
            fds.push(c.add_fd(Some(obj)));
        }
    }
    // Hand out real fd numbers for SET_CONTAINER: the container fd is fds[0].
    for rec in data.chunks(RECORD).take(64) {
        if rec.len() < 8 {
            break;
        }
        let fd = fds[rec[0] as usize % fds.len()];
        let req = if rec[1] as usize % 20 < REQUESTS.len() {
            REQUESTS[rec[1] as usize % 20]
        } else {
            u64::from(rec[2]) << 8 | u64::from(rec[3])
        };
        let mut body = [0u8; 32];
        let n = rec.len().saturating_sub(8).min(32);
        body[..n].copy_from_slice(&rec[8..8 + n]);
        // Make the common "argument is an fd" and "vaddr is user RAM" cases reachable.
        if rec[4] & 1 == 1 {
            body[..4].copy_from_slice(&(fds[0] as u32).to_le_bytes());
        }
        if rec[4] & 2 == 2 {
            body[8..16].copy_from_slice(&(RAM + u64::from(rec[5]) * 0x1000).to_le_bytes());
        }
        c.poke(ARG, &body);
        let arg = match rec[6] % 4 {
            0 | 1 => ARG,
            2 => u64::from(rec[7]),
            _ => u64::MAX - u64::from(rec[7]),
        };
        let Some(obj) = c.fd_object(fd) else { continue };
        if let Ok(r) = v.ioctl(obj, req, arg, &mut c) {
            ok += 1;
            if req == VFIO_GROUP_GET_DEVICE_FD && r >= 0 {
                fds.push(r as i32);
            }
        }
    }
    // Close everything, devices first (the kernel's last-close order), then groups, then the
    // container.
    for fd in fds.iter().rev() {
        if let Some(obj) = c.fd_object(*fd) {
            v.close(obj);
            c.remove_fd(*fd);
        }
    }
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
