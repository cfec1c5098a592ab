/* The iommufd uAPI the C test programs use (<linux/iommufd.h>, and the cdev ioctls of
 * <linux/vfio.h>, since Linux 6.6); older system headers do not have them, so they are
 * defined here when absent. Shared by iommufd_dma.c and pci_device.c, with the two steps both
 * take to reach a device the iommufd way (iommufd_cdev_of, iommufd_attach_cdev). */
#pragma once
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/vfio.h>

#if __has_include(<linux/iommufd.h>)
#include <linux/iommufd.h>
#else
#define IOMMUFD_TYPE (';')
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, 0x81)
#define IOMMU_IOAS_IOVA_RANGES _IO(IOMMUFD_TYPE, 0x84)
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, 0x85)
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, 0x86)
#define IOMMU_VFIO_IOAS _IO(IOMMUFD_TYPE, 0x88)
#define IOMMU_IOAS_MAP_FIXED_IOVA (1 << 0)
#define IOMMU_IOAS_MAP_WRITEABLE (1 << 1)
#define IOMMU_IOAS_MAP_READABLE (1 << 2)
#define IOMMU_VFIO_IOAS_GET 0
struct iommu_ioas_alloc {
    uint32_t size, flags, out_ioas_id;
};
struct iommu_iova_range {
    uint64_t start, last;
};
struct iommu_ioas_iova_ranges {
    uint32_t size, ioas_id, num_iovas, __reserved;
    uint64_t allowed_iovas, out_iova_alignment;
};
struct iommu_ioas_map {
    uint32_t size, flags, ioas_id, __reserved;
    uint64_t user_va, length, iova;
};
struct iommu_ioas_unmap {
    uint32_t size, ioas_id;
    uint64_t iova, length;
};
struct iommu_vfio_ioas {
    uint32_t size, ioas_id;
    uint16_t op, __reserved;
};
#endif

#ifndef VFIO_DEVICE_BIND_IOMMUFD
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)
struct vfio_device_bind_iommufd {
    uint32_t argsz, flags;
    int32_t iommufd;
    uint32_t out_devid;
    uint64_t token_uuid_ptr;
};
struct vfio_device_attach_iommufd_pt {
    uint32_t argsz, flags, pt_id, pasid;
};
#endif

/* /dev/vfio/devices/vfioN, from the one vfioN entry of the device's sysfs directory `vfio_dev`
 * (/sys/bus/pci/devices/BDF/vfio-dev). NULL on success, else what went wrong. */
static inline const char *iommufd_cdev_of(const char *vfio_dev, char *out, size_t n) {
    DIR *d = opendir(vfio_dev);
    if (!d)
        return "opendir of the vfio-dev directory";
    out[0] = 0;
    const char *err = NULL;
    for (struct dirent *e; (e = readdir(d));)
        if (!strncmp(e->d_name, "vfio", 4)) {
            if (out[0])
                err = "more than one vfioN entry in vfio-dev";
            snprintf(out, n, "/dev/vfio/devices/%s", e->d_name);
        }
    if (closedir(d) != 0)
        return "closedir";
    return err ? err : out[0] ? NULL : "no vfioN entry in vfio-dev";
}

/* The ids a cdev gets on its way to an IOAS. */
struct iommufd_attached {
    uint32_t devid, ioas, hwpt;
};

/* Binds an open device cdev to `iommufd`, allocates an IOAS and attaches the device to it (an
 * automatic HWPT). Fills `ids`; NULL on success, else the step that failed. */
static inline const char *iommufd_attach_cdev(int iommufd, int device,
                                              struct iommufd_attached *ids) {
    struct vfio_device_bind_iommufd b = { .argsz = sizeof b, .iommufd = iommufd };
    if (ioctl(device, VFIO_DEVICE_BIND_IOMMUFD, &b) != 0)
        return "VFIO_DEVICE_BIND_IOMMUFD";
    struct iommu_ioas_alloc a = { .size = sizeof a };
    if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) != 0 || !a.out_ioas_id)
        return "IOMMU_IOAS_ALLOC";
    struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof at, .pt_id = a.out_ioas_id };
    if (ioctl(device, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) != 0)
        return "VFIO_DEVICE_ATTACH_IOMMUFD_PT";
    *ids = (struct iommufd_attached){ .devid = b.out_devid, .ioas = a.out_ioas_id,
                                      .hwpt = at.pt_id };
    return NULL;
}
