/* Large mappings through the emulation: 512 MiB of 4 KiB pages (frames scattered, as
 * MADV_NOHUGEPAGE memory is) and 512 MiB of transparent huge pages, each mapped into the
 * non-coherent group's container and unmapped, twice. The test that runs it holds the broker
 * protocol to its bound (TYPE1_WIRE_STATS): no message grows with the pages a call covers. */
#include "common.h"

static void map_twice(size_t len, int advice) {
    size_t align = 2u << 20;
    unsigned char *raw = mmap(NULL, len + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(raw != MAP_FAILED, "mmap");
    unsigned char *p = (unsigned char *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
    CHECK(madvise(p, len, advice) == 0, "madvise");
    memset(p, 0x5a, len);
    int g;
    int c = open_container(1, &g);
    for (int i = 0; i < 2; i++) {
        CHECK(dma_map(c, p, 1ull << 32, len) == 0, "MAP_DMA %zu MiB", len >> 20);
        uint64_t un = 0;
        CHECK(dma_unmap(c, 1ull << 32, len, &un) == 0 && un == len, "UNMAP_DMA");
    }
    close(g);
    close(c);
    munmap(raw, len + align);
}

int main(void) {
    map_twice(512u << 20, MADV_NOHUGEPAGE);
    map_twice(512u << 20, MADV_HUGEPAGE);
    printf("bigmap ok\n");
    return 0;
}
