/* Map memory for the non-coherent group 1 and unmap it; the trace must show a "map" flush
 * before the map and an "unpin" flush before the unpin. Leaves a second mapping in place so
 * that process exit has to release it. */
#include "common.h"

int main(void) {
    int g;
    int c = open_container(1, &g);
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
