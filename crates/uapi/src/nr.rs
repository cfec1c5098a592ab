//! VFIO ioctl request numbers, derived in this one place (C1).
//!
//! Every VFIO request is the size-less `_IO(VFIO_TYPE, VFIO_BASE + n)`: `_IOC(_IOC_NONE, ';',
//! 100 + n, 0)`, i.e. `0x3B00 | (100 + n)`. The struct size lives in each struct's `argsz`.
//! Numbers collide across fd kinds (`IOMMU_GET_INFO` and `DEVICE_GET_PCI_HOT_RESET_INFO` are
//! both `+12`), so dispatch is always by fd kind first (see [`crate::table`]).

/// `VFIO_TYPE` (`';'`), as `vfio-bindings` has it.
pub const VFIO_TYPE: u64 = vfio_bindings::bindings::vfio::VFIO_TYPE as u64;
/// `VFIO_BASE`.
pub const VFIO_BASE: u64 = vfio_bindings::bindings::vfio::VFIO_BASE as u64;

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: direction `_IOC_NONE` (0), size 0.
pub const fn vfio_io(n: u64) -> u64 {
    const IOC_NRSHIFT: u64 = 0;
    const IOC_TYPESHIFT: u64 = 8;
    const IOC_SIZESHIFT: u64 = 16;
    const IOC_DIRSHIFT: u64 = 30;
    const IOC_NONE: u64 = 0;
    (IOC_NONE << IOC_DIRSHIFT)
        | (VFIO_TYPE << IOC_TYPESHIFT)
        | ((VFIO_BASE + n) << IOC_NRSHIFT)
        | (0 << IOC_SIZESHIFT)
}

// ---- container -------------------------------------------------------------------------------
/// `VFIO_GET_API_VERSION`.
pub const VFIO_GET_API_VERSION: u64 = vfio_io(0);
/// `VFIO_CHECK_EXTENSION`.
pub const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
/// `VFIO_SET_IOMMU`.
pub const VFIO_SET_IOMMU: u64 = vfio_io(2);
// ---- group -----------------------------------------------------------------------------------
/// `VFIO_GROUP_GET_STATUS`.
pub const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
/// `VFIO_GROUP_SET_CONTAINER`.
pub const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
/// `VFIO_GROUP_UNSET_CONTAINER`.
pub const VFIO_GROUP_UNSET_CONTAINER: u64 = vfio_io(5);
/// `VFIO_GROUP_GET_DEVICE_FD`.
pub const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
// ---- device ----------------------------------------------------------------------------------
/// `VFIO_DEVICE_GET_INFO`.
pub const VFIO_DEVICE_GET_INFO: u64 = vfio_io(7);
/// `VFIO_DEVICE_GET_REGION_INFO`.
pub const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub const VFIO_DEVICE_GET_IRQ_INFO: u64 = vfio_io(9);
/// `VFIO_DEVICE_SET_IRQS`.
pub const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
/// `VFIO_DEVICE_RESET`.
pub const VFIO_DEVICE_RESET: u64 = vfio_io(11);
/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` (same number as `VFIO_IOMMU_GET_INFO`).
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u64 = vfio_io(12);
/// `VFIO_DEVICE_PCI_HOT_RESET` (same number as `VFIO_IOMMU_MAP_DMA`).
pub const VFIO_DEVICE_PCI_HOT_RESET: u64 = vfio_io(13);
// ---- type1 (container after SET_IOMMU) -------------------------------------------------------
/// `VFIO_IOMMU_GET_INFO`.
pub const VFIO_IOMMU_GET_INFO: u64 = vfio_io(12);
/// `VFIO_IOMMU_MAP_DMA`.
pub const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
/// `VFIO_IOMMU_UNMAP_DMA`.
pub const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);
/// `VFIO_IOMMU_ENABLE` (SPAPR only; type1 answers ENOTTY).
pub const VFIO_IOMMU_ENABLE: u64 = vfio_io(15);
/// `VFIO_IOMMU_DISABLE` (SPAPR only; type1 answers ENOTTY).
pub const VFIO_IOMMU_DISABLE: u64 = vfio_io(16);
/// `VFIO_IOMMU_DIRTY_PAGES`.
pub const VFIO_IOMMU_DIRTY_PAGES: u64 = vfio_io(17);

// ---- the VFIO device cdev (bound to an iommufd) ---------------------------------------------
/// `VFIO_DEVICE_BIND_IOMMUFD`.
pub const VFIO_DEVICE_BIND_IOMMUFD: u64 = vfio_io(18);
/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u64 = vfio_io(19);
/// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u64 = vfio_io(20);

// ---- /dev/iommu (linux/iommufd.h: _IO(';', 0x80 + n)) ----------------------------------------
/// `_IO(';', nr)` for an iommufd command number.
pub const fn iommufd_io(nr: u64) -> u64 {
    (VFIO_TYPE << 8) | nr
}
/// `IOMMU_DESTROY`.
pub const IOMMU_DESTROY: u64 = iommufd_io(0x80);
/// `IOMMU_IOAS_ALLOC`.
pub const IOMMU_IOAS_ALLOC: u64 = iommufd_io(0x81);
/// `IOMMU_IOAS_ALLOW_IOVAS`.
pub const IOMMU_IOAS_ALLOW_IOVAS: u64 = iommufd_io(0x82);
/// `IOMMU_IOAS_COPY`.
pub const IOMMU_IOAS_COPY: u64 = iommufd_io(0x83);
/// `IOMMU_IOAS_IOVA_RANGES`.
pub const IOMMU_IOAS_IOVA_RANGES: u64 = iommufd_io(0x84);
/// `IOMMU_IOAS_MAP`.
pub const IOMMU_IOAS_MAP: u64 = iommufd_io(0x85);
/// `IOMMU_IOAS_UNMAP`.
pub const IOMMU_IOAS_UNMAP: u64 = iommufd_io(0x86);
/// `IOMMU_OPTION`.
pub const IOMMU_OPTION: u64 = iommufd_io(0x87);
/// `IOMMU_VFIO_IOAS`.
pub const IOMMU_VFIO_IOAS: u64 = iommufd_io(0x88);
/// `IOMMU_HWPT_ALLOC`.
pub const IOMMU_HWPT_ALLOC: u64 = iommufd_io(0x89);
/// `IOMMU_GET_HW_INFO`.
pub const IOMMU_GET_HW_INFO: u64 = iommufd_io(0x8a);
/// The last iommufd command number the kernel (7.3) knows: numbers from 0x80 to it are
/// iommufd's, the rest of `/dev/iommu`'s ioctls go to its VFIO compat layer.
pub const IOMMUFD_CMD_LAST: u64 = 0x95;

/// Every request by its `linux/vfio.h` name (scenarios and diagnostics name requests).
pub const NAMES: &[(&str, u64)] = &[
    ("VFIO_GET_API_VERSION", VFIO_GET_API_VERSION),
    ("VFIO_CHECK_EXTENSION", VFIO_CHECK_EXTENSION),
    ("VFIO_SET_IOMMU", VFIO_SET_IOMMU),
    ("VFIO_GROUP_GET_STATUS", VFIO_GROUP_GET_STATUS),
    ("VFIO_GROUP_SET_CONTAINER", VFIO_GROUP_SET_CONTAINER),
    ("VFIO_GROUP_UNSET_CONTAINER", VFIO_GROUP_UNSET_CONTAINER),
    ("VFIO_GROUP_GET_DEVICE_FD", VFIO_GROUP_GET_DEVICE_FD),
    ("VFIO_DEVICE_GET_INFO", VFIO_DEVICE_GET_INFO),
    ("VFIO_DEVICE_GET_REGION_INFO", VFIO_DEVICE_GET_REGION_INFO),
    ("VFIO_DEVICE_GET_IRQ_INFO", VFIO_DEVICE_GET_IRQ_INFO),
    ("VFIO_DEVICE_SET_IRQS", VFIO_DEVICE_SET_IRQS),
    ("VFIO_DEVICE_RESET", VFIO_DEVICE_RESET),
    ("VFIO_DEVICE_BIND_IOMMUFD", VFIO_DEVICE_BIND_IOMMUFD),
    (
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        VFIO_DEVICE_ATTACH_IOMMUFD_PT,
    ),
    (
        "VFIO_DEVICE_DETACH_IOMMUFD_PT",
        VFIO_DEVICE_DETACH_IOMMUFD_PT,
    ),
    ("IOMMU_DESTROY", IOMMU_DESTROY),
    ("IOMMU_IOAS_ALLOC", IOMMU_IOAS_ALLOC),
    ("IOMMU_IOAS_ALLOW_IOVAS", IOMMU_IOAS_ALLOW_IOVAS),
    ("IOMMU_IOAS_COPY", IOMMU_IOAS_COPY),
    ("IOMMU_IOAS_IOVA_RANGES", IOMMU_IOAS_IOVA_RANGES),
    ("IOMMU_IOAS_MAP", IOMMU_IOAS_MAP),
    ("IOMMU_IOAS_UNMAP", IOMMU_IOAS_UNMAP),
    ("IOMMU_OPTION", IOMMU_OPTION),
    ("IOMMU_VFIO_IOAS", IOMMU_VFIO_IOAS),
    ("IOMMU_HWPT_ALLOC", IOMMU_HWPT_ALLOC),
    ("IOMMU_GET_HW_INFO", IOMMU_GET_HW_INFO),
    (
        "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
        VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
    ),
    ("VFIO_DEVICE_PCI_HOT_RESET", VFIO_DEVICE_PCI_HOT_RESET),
    ("VFIO_IOMMU_GET_INFO", VFIO_IOMMU_GET_INFO),
    ("VFIO_IOMMU_MAP_DMA", VFIO_IOMMU_MAP_DMA),
    ("VFIO_IOMMU_UNMAP_DMA", VFIO_IOMMU_UNMAP_DMA),
    ("VFIO_IOMMU_ENABLE", VFIO_IOMMU_ENABLE),
    ("VFIO_IOMMU_DISABLE", VFIO_IOMMU_DISABLE),
    ("VFIO_IOMMU_DIRTY_PAGES", VFIO_IOMMU_DIRTY_PAGES),
];

/// The header name of a request number (`VFIO_IOMMU_MAP_DMA`, `IOMMU_IOAS_MAP`), if one has it.
/// Numbers shared by two kinds of file answer the first name listed.
pub fn name_of(req: u64) -> Option<&'static str> {
    NAMES.iter().find(|(_, v)| *v == req).map(|(n, _)| *n)
}

/// The number of a request name (`VFIO_IOMMU_MAP_DMA`; the `VFIO_` prefix may be left out).
pub fn by_name(name: &str) -> Option<u64> {
    let full = if name.starts_with("VFIO_") {
        name.to_string()
    } else {
        format!("VFIO_{name}")
    };
    NAMES.iter().find(|(n, _)| *n == full).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values as `gcc -E` of <linux/vfio.h> computes them (0x3B00 | (100 + n)).
    #[test]
    fn get_api_version() {
        assert_eq!(VFIO_GET_API_VERSION, 0x3B64);
    }
    #[test]
    fn check_extension() {
        assert_eq!(VFIO_CHECK_EXTENSION, 0x3B65);
    }
    #[test]
    fn set_iommu() {
        assert_eq!(VFIO_SET_IOMMU, 0x3B66);
    }
    #[test]
    fn group_get_status() {
        assert_eq!(VFIO_GROUP_GET_STATUS, 0x3B67);
    }
    #[test]
    fn group_set_container() {
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3B68);
    }
    #[test]
    fn group_unset_container() {
        assert_eq!(VFIO_GROUP_UNSET_CONTAINER, 0x3B69);
    }
    #[test]
    fn group_get_device_fd() {
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3B6A);
    }
    #[test]
    fn device_get_info() {
        assert_eq!(VFIO_DEVICE_GET_INFO, 0x3B6B);
    }
    #[test]
    fn device_get_region_info() {
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3B6C);
    }
    #[test]
    fn device_get_irq_info() {
        assert_eq!(VFIO_DEVICE_GET_IRQ_INFO, 0x3B6D);
    }
    #[test]
    fn device_set_irqs() {
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3B6E);
    }
    #[test]
    fn device_reset() {
        assert_eq!(VFIO_DEVICE_RESET, 0x3B6F);
    }
    #[test]
    fn iommu_get_info_collides_with_hot_reset_info() {
        assert_eq!(VFIO_IOMMU_GET_INFO, 0x3B70);
        assert_eq!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, VFIO_IOMMU_GET_INFO);
    }
    #[test]
    fn iommu_map_dma_collides_with_hot_reset() {
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3B71);
        assert_eq!(VFIO_DEVICE_PCI_HOT_RESET, VFIO_IOMMU_MAP_DMA);
    }
    #[test]
    fn iommu_unmap_dma() {
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3B72);
    }
    #[test]
    fn iommu_enable_disable() {
        assert_eq!(VFIO_IOMMU_ENABLE, 0x3B73);
        assert_eq!(VFIO_IOMMU_DISABLE, 0x3B74);
    }
    #[test]
    fn iommu_dirty_pages() {
        assert_eq!(VFIO_IOMMU_DIRTY_PAGES, 0x3B75);
    }
}
