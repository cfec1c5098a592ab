/* Map memory for the non-coherent group 1 and unmap it; the trace must show a "map" flush
 * before the map and an "unpin" flush before the unpin. Leaves a second mapping in place so
 * that process exit has to release it. */
#include "common.h"

int main(void) {
    int c = open("/dev/vfio/vfio", O_RDWR);
    CHECK(c >= 0, "open container");
    int g = open_group(1);
    CHECK(ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) == 0, "SET_CONTAINER");
    CHECK(ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0, "SET_IOMMU");
    size_t len = 16 << 12;
    void *buf = map_anon(len);
    CHECK(dma_map(c, buf, 0x200000, len) == 0, "MAP");
    uint64_t un = 0;
    CHECK(dma_unmap(c, 0x200000, len, &un) == 0 && un == len, "UNMAP");
    void *keep = map_anon(len);
    CHECK(dma_map(c, keep, 0x400000, len) == 0, "MAP keep");
    printf("flush ok\n");
    return 0; /* no unmap, no close: the library's destructor releases it */
}
