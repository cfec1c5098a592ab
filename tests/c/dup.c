/* Run with TYPE1_MACHINE naming a machine whose only groups are 3 (coherent, 0000:00:08.0) and
 * 7 (non-coherent, 0000:00:09.0); emulated fds stay emulated through dup, dup2, dup3 and
 * fcntl(F_DUPFD*), and an object is released only at the last close of all its fds. */
#define _GNU_SOURCE
#include "common.h"

int main(void) {
    errno = 0;
    CHECK(open("/dev/vfio/1", O_RDWR) == -1 && errno == ENOENT, "group 1 is not in this machine");
    char link[256];
    ssize_t n = readlink("/sys/bus/pci/devices/0000:00:09.0/iommu_group", link, sizeof link - 1);
    CHECK(n > 0, "readlink iommu_group");
    link[n] = 0;
    CHECK(strcmp(strrchr(link, '/') + 1, "7") == 0, "group link %s", link);

    int c = open("/dev/vfio/vfio", O_RDWR);
    CHECK(c >= 0, "open container");
    int c2 = dup(c);
    CHECK(c2 >= 0 && c2 != c, "dup");
    CHECK(close(c) == 0, "close original container fd");
    CHECK(ioctl(c2, VFIO_GET_API_VERSION) == VFIO_API_VERSION, "the dup is a container");

    int g = open_group(7);
    int g2 = fcntl(g, F_DUPFD_CLOEXEC, 100);
    CHECK(g2 >= 100, "F_DUPFD_CLOEXEC");
    CHECK(close(g) == 0, "close original group fd");
    errno = 0;
    CHECK(open("/dev/vfio/7", O_RDWR) == -1 && errno == EBUSY, "group still open through its dup");
    CHECK(ioctl(g2, VFIO_GROUP_SET_CONTAINER, &c2) == 0, "SET_CONTAINER through dups");
    CHECK(ioctl(c2, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0, "SET_IOMMU");

    int g3 = fcntl(g2, F_DUPFD, 0);
    CHECK(g3 >= 0, "F_DUPFD");
    struct vfio_group_status st = { .argsz = sizeof st };
    CHECK(ioctl(g3, VFIO_GROUP_GET_STATUS, &st) == 0 && (st.flags & VFIO_GROUP_FLAGS_CONTAINER_SET), "status via F_DUPFD");

    size_t len = 4 << 12;
    void *buf = map_anon(len);
    CHECK(dma_map(c2, buf, 0x100000, len) == 0, "MAP");
    CHECK(dup2(c2, 50) == 50, "dup2");
    CHECK(close(c2) == 0, "close c2");
    uint64_t un = 0;
    CHECK(dma_unmap(50, 0x100000, len, &un) == 0 && un == len, "UNMAP through dup2");

    /* dup2 onto an emulated fd closes what it referred to (here: one of the group's fds). */
    int d = open("/dev/null", O_RDONLY);
    CHECK(d >= 0, "open /dev/null");
    CHECK(dup2(d, g3) == g3, "dup2 over a group fd");
    errno = 0;
    CHECK(ioctl(g3, VFIO_GROUP_GET_STATUS, &st) == -1 && errno == ENOTTY, "g3 is /dev/null now");
    CHECK(dup3(50, 60, O_CLOEXEC) == 60, "dup3");
    CHECK(close(50) == 0, "close 50");
    CHECK(ioctl(60, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1, "container via dup3");
    fprintf(stderr, "closing the last group fd\n");
    CHECK(close(g2) == 0, "close last group fd");
    CHECK(close(60) == 0, "close last container fd");
    printf("dup ok\n");
    return 0;
}
