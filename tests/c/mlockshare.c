/* RLIMIT_MEMLOCK is one budget for the program's own mlock and VFIO's pins, as the kernel's
 * mm->locked_vm is: with 768 KiB mlocked under a 1 MiB limit (and no CAP_IPC_LOCK), a MAP_DMA
 * of 512 KiB is ENOMEM; after munlock it succeeds. */
#define _GNU_SOURCE
#include "common.h"
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>

int main(void) {
    struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
    struct __user_cap_data_struct d[2];
    CHECK(syscall(SYS_capget, &h, d) == 0, "capget");
    d[0].effective &= ~(1u << CAP_IPC_LOCK);
    d[0].permitted &= ~(1u << CAP_IPC_LOCK);
    CHECK(syscall(SYS_capset, &h, d) == 0, "capset");
    struct rlimit rl = { 1 << 20, 1 << 20 };
    CHECK(setrlimit(RLIMIT_MEMLOCK, &rl) == 0, "setrlimit");
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
