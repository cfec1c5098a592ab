/* A long MAP_DMA in one thread never stalls unrelated calls of another: while the main thread
 * pins 1 GiB of memory that still has to be faulted in (seconds here) into container 1, a
 * second thread opens, dups, ioctls and closes /dev/null and maps and unmaps anonymous memory,
 * 200 times, and maps and unmaps memory in container 2 (the other group's), 20 times. It waits
 * until the MAP is visibly under way (VmPin rising) and must finish before the MAP does.
 * Ordering, not timing: under a global lock the second thread would finish after the MAP. */
#define _GNU_SOURCE
#include "common.h"
#include <pthread.h>
#include <stdatomic.h>

static atomic_int map_done;
static int c2;
static atomic_int unrelated_done_first = -1;

static long vmpin(void) { return status_kb("VmPin"); }

static void *unrelated(void *arg) {
    long base = *(long *)arg;
    while (vmpin() <= base + 4096) /* the MAP is under way (past its first chunks) */
        if (atomic_load(&map_done)) {
            atomic_store(&unrelated_done_first, 2); /* inconclusive: MAP too fast */
            return NULL;
        }
    for (int i = 0; i < 200; i++) {
        int fd = open("/dev/null", O_RDWR);
        CHECK(fd >= 0, "open /dev/null");
        int d = dup(fd);
        int nb = 1;
        CHECK(d >= 0 && ioctl(d, FIONBIO, &nb) == 0, "dup + ioctl");
        CHECK(close(d) == 0 && close(fd) == 0, "close");
        void *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(p != MAP_FAILED && munmap(p, 8192) == 0, "mmap/munmap");
    }
    void *buf = map_anon(4 * 4096);
    for (int i = 0; i < 20; i++) {
        CHECK(ioctl(c2, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1, "another container");
        CHECK(dma_map(c2, buf, 0x10000, 4 * 4096) == 0, "MAP_DMA on another container");
        uint64_t un = 0;
        CHECK(dma_unmap(c2, 0x10000, 4 * 4096, &un) == 0 && un == 4 * 4096, "UNMAP there");
    }
    atomic_store(&unrelated_done_first, !atomic_load(&map_done));
    return NULL;
}

int main(void) {
    int g, g0;
    int c = open_container(1, &g);
    c2 = open_container(0, &g0);
    size_t len = 1ul << 30;
    void *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap 1 GiB");
    CHECK(madvise(mem, len, MADV_NOHUGEPAGE) == 0, "no THP: the pins fault in 4 KiB pages");
    long base = vmpin();
    pthread_t t;
    CHECK(pthread_create(&t, NULL, unrelated, &base) == 0, "thread");
    CHECK(dma_map(c, mem, 0x100000000ull, len) == 0, "MAP_DMA 1 GiB");
    atomic_store(&map_done, 1);
    pthread_join(t, NULL);
    int r = atomic_load(&unrelated_done_first);
    CHECK(r != 0, "the unrelated calls waited for the MAP_DMA");
    printf(r == 2 ? "stall inconclusive\n" : "stall ok\n");
    return 0;
}
