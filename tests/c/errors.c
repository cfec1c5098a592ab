/* Exact errnos of the error paths (docs/spec.md M1, U1-U3, C5-C7). */
#include "common.h"

int main(void) {
    int c = open("/dev/vfio/vfio", O_RDWR);
    CHECK(c >= 0, "open container");
    /* Before SET_IOMMU everything but the container's own ioctls is EINVAL (C7). */
    struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m };
    EXPECT_ERRNO(EINVAL, ioctl(c, VFIO_IOMMU_MAP_DMA, &m));
    EXPECT_ERRNO(EINVAL, ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)); /* no group */

    int g0 = open_group(0);
    EXPECT_ERRNO(EBUSY, open("/dev/vfio/0", O_RDWR));
    EXPECT_ERRNO(ENOENT, open("/dev/vfio/42", O_RDWR));
    int notc = g0;
    EXPECT_ERRNO(EBADFD, ioctl(g0, VFIO_GROUP_SET_CONTAINER, &notc));
    int bad = 999;
    EXPECT_ERRNO(EBADF, ioctl(g0, VFIO_GROUP_SET_CONTAINER, &bad));
    EXPECT_ERRNO(EFAULT, ioctl(g0, VFIO_GROUP_SET_CONTAINER, (void *)8));
    CHECK(ioctl(g0, VFIO_GROUP_SET_CONTAINER, &c) == 0, "SET_CONTAINER");
    EXPECT_ERRNO(EINVAL, ioctl(g0, VFIO_GROUP_SET_CONTAINER, &c));
    EXPECT_ERRNO(ENODEV, ioctl(c, VFIO_SET_IOMMU, VFIO_SPAPR_TCE_IOMMU));
    CHECK(ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0, "SET_IOMMU");

    /* Unknown ioctl: ENOTTY, on every fd kind. */
    EXPECT_ERRNO(ENOTTY, ioctl(c, _IO(VFIO_TYPE, VFIO_BASE + 40)));
    EXPECT_ERRNO(ENOTTY, ioctl(g0, _IO(VFIO_TYPE, VFIO_BASE + 40)));
    EXPECT_ERRNO(ENOTTY, ioctl(c, VFIO_IOMMU_ENABLE));

    size_t len = 64 << 10;
    void *buf = map_anon(2 * len);
    /* argsz too small, unknown flags, misaligned, size 0. */
    struct vfio_iommu_type1_dma_map mm = { .argsz = sizeof mm - 1, .flags = 3, .vaddr = (uintptr_t)buf, .iova = 0, .size = len };
    EXPECT_ERRNO(EINVAL, ioctl(c, VFIO_IOMMU_MAP_DMA, &mm));
    mm.argsz = sizeof mm; mm.flags = 3 | 8;
    EXPECT_ERRNO(EINVAL, ioctl(c, VFIO_IOMMU_MAP_DMA, &mm));
    mm.flags = 3; mm.iova = 0x800;
    EXPECT_ERRNO(EINVAL, ioctl(c, VFIO_IOMMU_MAP_DMA, &mm));
    mm.iova = 0; mm.vaddr = (uintptr_t)buf + 1;
    EXPECT_ERRNO(EINVAL, ioctl(c, VFIO_IOMMU_MAP_DMA, &mm));
    mm.vaddr = (uintptr_t)buf; mm.size = 0;
    EXPECT_ERRNO(EINVAL, ioctl(c, VFIO_IOMMU_MAP_DMA, &mm));
    mm.size = len; mm.iova = UINT64_MAX - 0xfff; mm.size = 0x2000;
    EXPECT_ERRNO(EOVERFLOW, ioctl(c, VFIO_IOMMU_MAP_DMA, &mm));
    /* A bad struct pointer is EFAULT, not a crash. */
    EXPECT_ERRNO(EFAULT, ioctl(c, VFIO_IOMMU_MAP_DMA, (void *)16));
    /* An unbacked vaddr is EFAULT. */
    void *hole = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(hole, len);
    EXPECT_ERRNO(EFAULT, dma_map(c, hole, 0x100000, len));

    CHECK(dma_map(c, buf, 0x100000, len) == 0, "MAP");
    EXPECT_ERRNO(EEXIST, dma_map(c, (char *)buf + len, 0x100000 + 0x1000, len));
    /* v2: unmapping half a mapping is EINVAL and reports nothing. */
    uint64_t un = 12345;
    struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .iova = 0x100000, .size = 0x1000 };
    EXPECT_ERRNO(EINVAL, ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u));
    CHECK(u.size == 0x1000, "size untouched on error");
    u.argsz = sizeof u - 1;
    EXPECT_ERRNO(EINVAL, ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u));
    CHECK(dma_unmap(c, 0, 1ull << 32, &un) == 0 && un == len, "unmap all of it: %llu", (unsigned long long)un);

    /* VFIO_DMA_CC_IOMMU: 1 with only the coherent group, 0 once group 1 joins. */
    CHECK(ioctl(c, VFIO_CHECK_EXTENSION, VFIO_DMA_CC_IOMMU) == 1, "DMA_CC_IOMMU with group 0");
    int g1 = open_group(1);
    CHECK(ioctl(g1, VFIO_GROUP_SET_CONTAINER, &c) == 0, "SET_CONTAINER g1");
    CHECK(ioctl(c, VFIO_CHECK_EXTENSION, VFIO_DMA_CC_IOMMU) == 0, "DMA_CC_IOMMU with group 1");

    /* GET_INFO argsz < 16. */
    struct vfio_iommu_type1_info info = { .argsz = 15 };
    EXPECT_ERRNO(EINVAL, ioctl(c, VFIO_IOMMU_GET_INFO, &info));
    /* GET_DEVICE_FD: unknown device. */
    EXPECT_ERRNO(ENODEV, ioctl(g0, VFIO_GROUP_GET_DEVICE_FD, "0000:00:05.0"));
    /* Group fd ioctls are ENOTTY on the container (numbers collide by kind). */
    printf("errors ok\n");
    return 0;
}
