/* The broker dies (SIGKILL from the test) while this process holds a container, a group, a
 * device and a mapping. argv[1] says when:
 *   idle: between "ready" and "go" (stdin), with a forked child holding the same files;
 *   map:  in the middle of a MAP_DMA of 2 GiB (the test kills it after "ready");
 *   dma:  in the middle of device transfers (a loop of START writes until one fails);
 *   close: in the middle of a loop that opens and closes another group (close must return
 *         0 whatever happens, and never hang).
 * Every call on the files of the dead broker then fails with EIO, in both processes, and
 * keeps failing after a new broker has started; a new container of the new broker works and
 * acting on it never touches anything of the old; nothing stays pinned for the old broker's
 * mappings. */
#define _GNU_SOURCE
#include "common.h"
#include <sys/wait.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static long vmpin(void) { return status_kb("VmPin"); }

/* The old files answer EIO, whatever the call. */
static void old_files_are_dead(int c, int g, int dev, size_t len) {
    EXPECT_ERRNO(EIO, ioctl(c, VFIO_GET_API_VERSION));
    EXPECT_ERRNO(EIO, ioctl(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU));
    uint64_t un = 0;
    EXPECT_ERRNO(EIO, dma_unmap(c, 0x100000, len, &un));
    EXPECT_ERRNO(EIO, ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:05.0"));
    uint32_t id = 0;
    errno = 0;
    CHECK(pread(dev, &id, 4, 0) == -1 && errno == EIO, "pread on the old device: EIO");
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "idle";
    int mid_map = !strcmp(mode, "map");
    int mid_dma = !strcmp(mode, "dma");
    int mid_close = !strcmp(mode, "close");
    int g;
    int c = open_container(1, &g);
    size_t len = 1 << 20;
    void *mem = map_anon(len);
    CHECK(dma_map(c, mem, 0x100000, len) == 0, "MAP_DMA");
    int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:05.0");
    CHECK(dev >= 0, "GET_DEVICE_FD");
    CHECK(vmpin() >= 1024, "the mapping is pinned (VmPin %ld kB)", vmpin());
    int go[2];
    CHECK(pipe(go) == 0, "pipe");
    pid_t child = -1;
    if (!strcmp(mode, "idle")) {
        fflush(stdout);
        child = fork();
        CHECK(child >= 0, "fork");
        if (child == 0) {
            /* Holds the same files; checks them once the broker is dead. */
            close(go[1]); /* a parent that fails ends this child too (EOF) */
            char x;
            CHECK(read(go[0], &x, 1) == 1, "child: go");
            old_files_are_dead(c, g, dev, len);
            printf("child ok\n");
            fflush(stdout);
            _exit(0);
        }
    }
    close(go[0]);
    printf("ready\n");
    fflush(stdout);
    if (mid_map) {
        size_t big = 2ul << 30;
        void *m = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(m != MAP_FAILED && madvise(m, big, MADV_NOHUGEPAGE) == 0, "mmap 2 GiB");
        errno = 0;
        int r = dma_map(c, m, 1ull << 32, big);
        CHECK(r == -1 && errno == EIO, "MAP_DMA interrupted by the broker's death: EIO (r=%d)", r);
        munmap(m, big);
    } else if (mid_dma) {
        struct vfio_region_info r0 = { .argsz = sizeof r0, .index = VFIO_PCI_BAR0_REGION_INDEX };
        CHECK(ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &r0) == 0, "REGION_INFO");
        uint64_t src = 0, dst = 0x100000, n = 4096;
        uint32_t cmd = 1 | 2; /* START | TO_MEMORY */
        long done = 0;
        for (;;) {
            if (pwrite(dev, &src, 8, r0.offset + 0x08) != 8 ||
                pwrite(dev, &dst, 8, r0.offset + 0x10) != 8 ||
                pwrite(dev, &n, 8, r0.offset + 0x18) != 8 ||
                pwrite(dev, &cmd, 4, r0.offset + 0x20) != 4)
                break;
            done++;
        }
        CHECK(errno == EIO, "a transfer cut by the broker's death: EIO (after %ld)", done);
    } else if (mid_close) {
        double t0 = now();
        int opened = 0, failed = 0;
        while (now() - t0 < 1.5) {
            int g0 = open("/dev/vfio/0", O_RDWR);
            if (g0 < 0) {
                CHECK(errno == EIO || errno == EBUSY, "open of group 0: EIO or EBUSY only");
                failed++;
                continue;
            }
            opened++;
            CHECK(close(g0) == 0, "close returns 0 whatever the broker does");
        }
        CHECK(opened > 0, "opened group 0 (%d failed)", failed);
    } else {
        char line[16];
        CHECK(fgets(line, sizeof line, stdin) && !strncmp(line, "go", 2), "go");
    }

    EXPECT_ERRNO(EIO, ioctl(c, VFIO_GET_API_VERSION));
    int g2;
    int c2 = open_container(1, &g2); /* starts a new broker: group 1 is free there */
    for (int round = 0; round < 2; round++) old_files_are_dead(c, g, dev, len);
    if (child > 0) {
        char x = 1;
        CHECK(write(go[1], &x, 1) == 1, "go to the child");
        int st;
        CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "the child found its files dead too");
    }
    /* The pages of the old mappings are no longer pinned. */
    CHECK(vmpin() == 0, "nothing pinned for the dead broker's mappings (VmPin %ld kB)", vmpin());
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
