/* RLIMIT_MEMLOCK is one budget for the program's own mlock and VFIO's pins, as the kernel's
 * mm->locked_vm is: with 768 KiB mlocked under a 1 MiB limit (and no CAP_IPC_LOCK), a MAP_DMA
 * of 512 KiB is ENOMEM; after munlock it succeeds. */
#define _GNU_SOURCE
#include "common.h"

int main(void) {
    drop_ipc_lock(1 << 20);
    int g;
    int c = open_container(1, &g);
    unsigned char *locked = map_anon(768 << 10);
    CHECK(mlock(locked, 768 << 10) == 0, "mlock 768 KiB");
    unsigned char *mem = map_anon(512 << 10);
    errno = 0;
    CHECK(dma_map(c, mem, 0x100000, 512 << 10) == -1 && errno == ENOMEM,
          "MAP_DMA of 512 KiB over the shared budget: ENOMEM");
    CHECK(dma_map(c, mem, 0x100000, 256 << 10) == 0, "256 KiB fits beside the mlock");
    uint64_t un = 0;
    CHECK(dma_unmap(c, 0x100000, 256 << 10, &un) == 0, "unmap");
    CHECK(munlock(locked, 768 << 10) == 0, "munlock");
    CHECK(dma_map(c, mem, 0x100000, 512 << 10) == 0, "MAP_DMA after munlock");
    close(g);
    close(c);
    printf("mlockshare ok\n");
    return 0;
}
