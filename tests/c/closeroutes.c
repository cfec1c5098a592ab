/* Every route that closes an fd releases the emulated object behind it, and a real file that
 * gets the number afterwards is never answered by the emulation. Routes: close_range,
 * closefrom, syscall(SYS_close) (which no hook sees), fclose(fdopen()). After each, the group
 * opens again (no EBUSY) and an ioctl on /dev/null at the old number is the real ENOTTY. At the
 * end, after closefrom(3), the emulation still maps and DMAs: its own fds survived. */
#define _GNU_SOURCE
#include "device.h"
#include <sys/syscall.h>

static void close_by(const char *route, int fd) {
    if (!strcmp(route, "close_range")) {
        CHECK(close_range(fd, fd, 0) == 0, "close_range");
    } else if (!strcmp(route, "syscall")) {
        CHECK(syscall(SYS_close, fd) == 0, "syscall(SYS_close)");
    } else if (!strcmp(route, "fclose")) {
        FILE *f = fdopen(fd, "r");
        CHECK(f != NULL, "fdopen");
        fclose(f);
    } else {
        CHECK(0, "route %s", route);
    }
}

static void check_route(const char *route) {
    int g = open_group(1);
    int c = open("/dev/vfio/vfio", O_RDWR);
    CHECK(c >= 0, "open container");
    CHECK(ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) == 0, "SET_CONTAINER");
    close_by(route, g);
    int again = open("/dev/vfio/1", O_RDWR);
    CHECK(again >= 0, "%s: the group opens again (errno %d)", route, errno);
    close(again);
    close_by(route, c);
    /* The freed number goes to a real file: the kernel's answers, not the emulation's. */
    int null = open("/dev/null", O_RDWR);
    CHECK(null >= 0, "open /dev/null");
    if (null != c) CHECK(dup2(null, c) == c, "dup2 onto the old number");
    errno = 0;
    CHECK(ioctl(c, VFIO_GET_API_VERSION) == -1 && errno == ENOTTY, "%s: /dev/null is not a container", route);
    unsigned char buf[4096];
    struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = 3, .vaddr = (uintptr_t)buf,
        .iova = 0, .size = 4096 };
    errno = 0;
    CHECK(ioctl(c, VFIO_IOMMU_MAP_DMA, &m) == -1 && errno == ENOTTY, "%s: no MAP_DMA on /dev/null", route);
    close(c);
    if (null != c) close(null);
    printf("%s ok\n", route);
}

int main(void) {
    check_route("close_range");
    check_route("syscall");
    check_route("fclose");

    /* closefrom(3) closes everything of the program's, nothing of the emulation's. */
    int g;
    int c = open_container(1, &g);
    closefrom(3);
    int again = open("/dev/vfio/1", O_RDWR);
    CHECK(again >= 0, "closefrom: the group opens again");
    close(again);
    c = open_container(1, &g);
    open_device(g);
    unsigned char *p = map_anon(4096);
    CHECK(dma_map(c, p, 0x100000, 4096) == 0, "MAP_DMA after closefrom");
    CHECK(dma(0x100000, 0, 64, 0) == STATUS_DONE, "DMA after closefrom");
    printf("closefrom ok\n");
    return 0;
}
