/* The flow of Documentation/driver-api/vfio.rst, against the emulated /dev/vfio. */
#include "common.h"

int main(void) {
    int container = open("/dev/vfio/vfio", O_RDWR);
    CHECK(container >= 0, "open container");
    CHECK(ioctl(container, VFIO_GET_API_VERSION) == VFIO_API_VERSION, "API version");
    CHECK(ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU) == 1, "TYPE1 extension");
    CHECK(ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1, "TYPE1v2 extension");

    /* sysfs: the device's iommu_group link names group 0. */
    char link[256];
    ssize_t n = readlink("/sys/bus/pci/devices/0000:00:04.0/iommu_group", link, sizeof link - 1);
    CHECK(n > 0, "readlink iommu_group");
    link[n] = 0;
    CHECK(strcmp(strrchr(link, '/') + 1, "0") == 0, "group link %s", link);

    int group = open_group(0);
    CHECK(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) == 0, "SET_CONTAINER");
    CHECK(ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0, "SET_IOMMU");

    /* GET_INFO, two-phase, then walk the capability chain. */
    struct vfio_iommu_type1_info hdr = { .argsz = sizeof hdr };
    CHECK(ioctl(container, VFIO_IOMMU_GET_INFO, &hdr) == 0, "GET_INFO");
    CHECK(hdr.flags & VFIO_IOMMU_INFO_PGSIZES, "PGSIZES");
    CHECK(hdr.iova_pgsizes & 4096, "4K pages");
    CHECK(hdr.argsz > sizeof hdr && hdr.cap_offset == 0, "argsz grows: %u", hdr.argsz);
    struct vfio_iommu_type1_info *info = calloc(1, hdr.argsz);
    info->argsz = hdr.argsz;
    CHECK(ioctl(container, VFIO_IOMMU_GET_INFO, info) == 0, "GET_INFO 2");
    CHECK(info->flags & VFIO_IOMMU_INFO_CAPS, "CAPS");
    CHECK(info->cap_offset == sizeof *info, "cap_offset %u", info->cap_offset);
    int seen_avail = 0, seen_mig = 0;
    for (uint32_t off = info->cap_offset; off; ) {
        struct vfio_info_cap_header *h = (void *)((char *)info + off);
        if (h->id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL) {
            seen_avail = 1;
            CHECK(((struct vfio_iommu_type1_info_dma_avail *)h)->avail == 65535, "dma_avail");
        }
        if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION) seen_mig = 1;
        off = h->next;
    }
    CHECK(seen_avail && seen_mig, "caps present");

    /* Device fd. */
    int device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, "0000:00:04.0");
    CHECK(device >= 0, "GET_DEVICE_FD");
    struct vfio_device_info dinfo = { .argsz = sizeof dinfo };
    CHECK(ioctl(device, VFIO_DEVICE_GET_INFO, &dinfo) == 0, "DEVICE_GET_INFO");
    CHECK(dinfo.flags & VFIO_DEVICE_FLAGS_PCI && dinfo.num_regions == 9 && dinfo.num_irqs == 5, "device info");
    struct vfio_region_info reg = { .argsz = sizeof reg, .index = VFIO_PCI_CONFIG_REGION_INDEX };
    CHECK(ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &reg) == 0, "REGION_INFO");
    uint16_t ids[2];
    CHECK(pread(device, ids, 4, reg.offset) == 4, "pread config");
    CHECK(ids[0] == 0x1234, "vendor %x", ids[0]);
    CHECK(ioctl(device, VFIO_DEVICE_RESET) == 0, "RESET");

    /* Map 1 MiB at iova 0, then unmap it. */
    size_t len = 1 << 20;
    void *buf = map_anon(len);
    CHECK(dma_map(container, buf, 0, len) == 0, "MAP_DMA");
    uint64_t unmapped = 0;
    CHECK(dma_unmap(container, 0, len, &unmapped) == 0, "UNMAP_DMA");
    CHECK(unmapped == len, "unmapped %llu", (unsigned long long)unmapped);
    CHECK(((unsigned char *)buf)[len - 1] == 0xab, "memory intact");

    close(device);
    CHECK(ioctl(group, VFIO_GROUP_UNSET_CONTAINER) == 0, "UNSET_CONTAINER");
    close(group);
    close(container);
    printf("flow ok\n");
    return 0;
}
