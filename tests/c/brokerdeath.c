/* The broker dies (SIGKILL from the test, between "ready" and "go" on stdin): every call on
 * the files of the dead broker fails with EIO, and keeps failing after a new broker has
 * started; a new container of the new broker works, and acting on it never touches anything
 * of the old; the pages the old broker's mapping pinned are released. */
#include "common.h"

static long vmpin(void) { return status_kb("VmPin"); }

int main(void) {
    int g;
    int c = open_container(1, &g);
    size_t len = 1 << 20;
    void *mem = map_anon(len);
    CHECK(dma_map(c, mem, 0x100000, len) == 0, "MAP_DMA");
    int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:05.0");
    CHECK(dev >= 0, "GET_DEVICE_FD");
    CHECK(vmpin() >= 1024, "the mapping is pinned (VmPin %ld kB)", vmpin());
    printf("ready\n");
    fflush(stdout);
    char line[16];
    CHECK(fgets(line, sizeof line, stdin) && !strncmp(line, "go", 2), "go");

    /* The old files: EIO, before and after a new broker exists. */
    EXPECT_ERRNO(EIO, ioctl(c, VFIO_GET_API_VERSION));
    int g2;
    int c2 = open_container(1, &g2); /* starts a new broker: group 1 is free there */
    for (int round = 0; round < 2; round++) {
        EXPECT_ERRNO(EIO, ioctl(c, VFIO_GET_API_VERSION));
        EXPECT_ERRNO(EIO, ioctl(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU));
        uint64_t un = 0;
        EXPECT_ERRNO(EIO, dma_unmap(c, 0x100000, len, &un));
        EXPECT_ERRNO(EIO, ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:05.0"));
        uint32_t id = 0;
        errno = 0;
        CHECK(pread(dev, &id, 4, 0) == -1 && errno == EIO, "pread on the old device: EIO");
    }
    /* The pages of the old mapping are no longer pinned. */
    CHECK(vmpin() == 0, "nothing pinned for the dead broker's mapping (VmPin %ld kB)", vmpin());
    /* The new container works, and is only what it is. */
    CHECK(dma_map(c2, mem, 0x100000, len) == 0, "MAP_DMA on the new container");
    uint64_t un = 0;
    CHECK(dma_unmap(c2, 0x100000, len, &un) == 0 && un == len, "UNMAP on the new container");
    CHECK(dma_map(c2, mem, 0x100000, len) == 0, "MAP_DMA again");
    /* Closing the old files succeeds (close never fails for a valid fd). */
    CHECK(close(dev) == 0 && close(g) == 0 && close(c) == 0, "close the old files");
    CHECK(dma_unmap(c2, 0x100000, len, &un) == 0 && un == len, "the new mapping is intact");
    close(g2);
    close(c2);
    printf("brokerdeath ok\n");
    return 0;
}
