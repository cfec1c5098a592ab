/* The emulated DMA device (docs/device.md) of group 1: map memory for it, make it DMA into the
 * memory and back, provoke faults (unmapped and read-only IOVAs), and DMA into its own BAR2
 * mapped with mmap and given to MAP_DMA (peer-to-peer). */
#include "common.h"

#include "device.h"

int main(void) {
    int g;
    int c = open_container(1, &g);
    dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:05.0");
    CHECK(dev >= 0, "GET_DEVICE_FD");

    struct vfio_region_info r0, r2;
    region(VFIO_PCI_BAR0_REGION_INDEX, &r0);
    region(VFIO_PCI_BAR2_REGION_INDEX, &r2);
    CHECK(!(r0.flags & VFIO_REGION_INFO_FLAG_MMAP), "registers are not mmap-able");
    CHECK(r2.flags & VFIO_REGION_INFO_FLAG_MMAP, "BAR2 is mmap-able");
    CHECK(r2.size && (r2.size & (r2.size - 1)) == 0, "BAR2 size %llu", (unsigned long long)r2.size);
    bar0 = r0.offset;
    set_bus_master(1); /* a driver's first step before DMA */
    errno = 0;
    CHECK(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, dev, r0.offset) == MAP_FAILED &&
          errno == EINVAL, "mmap of BAR0 refused");

    CHECK(rd32(REG_ID) == 0x010000ed, "ID 0x%x", rd32(REG_ID));
    wr32(REG_LIVENESS, 0x12345678);
    CHECK(rd32(REG_LIVENESS) == ~0x12345678u, "liveness");

    /* Memory for the device: 2 pages at IOVA 1 MiB. */
    size_t len = 2 * 4096;
    unsigned char *mem = map_anon(len);
    CHECK(dma_map(c, mem, 0x100000, len) == 0, "MAP_DMA");

    /* Device -> memory, no-snoop: the buffer's pattern lands in the first page. */
    unsigned char pat[4096];
    for (int i = 0; i < 4096; i++) pat[i] = (unsigned char)(i * 7 + 3);
    CHECK(pwrite(dev, pat, sizeof pat, bar0 + BUFFER) == (ssize_t)sizeof pat, "fill buffer");
    uint32_t st = dma(0, 0x100000, 4096, CMD_TO_MEMORY | CMD_NO_SNOOP);
    CHECK(st == STATUS_DONE, "to-memory status 0x%x", st);
    CHECK(memcmp(mem, pat, 4096) == 0, "memory holds the device's data");

    /* Memory -> device, across the page boundary. */
    for (int i = 0; i < 512; i++) mem[4096 - 256 + i] = (unsigned char)(0xa0 ^ i);
    st = dma(0x100000 + 4096 - 256, 0x800, 512, 0);
    CHECK(st == STATUS_DONE, "from-memory status 0x%x", st);
    unsigned char back[512];
    CHECK(pread(dev, back, sizeof back, bar0 + BUFFER + 0x800) == (ssize_t)sizeof back, "read buffer");
    CHECK(memcmp(back, mem + 4096 - 256, 512) == 0, "buffer holds the memory's data");
    CHECK(rd32(REG_DMA_COUNT) == 2, "two transfers");

    /* Unmapped IOVA: fault at the first page that has no mapping. */
    st = dma(0, 0x100000 + 4096 + 0x800, 4096, CMD_TO_MEMORY);
    CHECK(st == STATUS_FAULT, "unmapped status 0x%x", st);
    CHECK(rd64(REG_FAULT_IOVA) == 0x102000, "fault iova 0x%llx", (unsigned long long)rd64(REG_FAULT_IOVA));
    CHECK(rd32(REG_FAULT_REASON) == FAULT_UNMAPPED, "reason unmapped");

    /* Read-only IOVA: the device may read it but not write it. */
    unsigned char *ro = map_anon(4096);
    struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_READ,
        .vaddr = (uintptr_t)ro, .iova = 0x200000, .size = 4096 };
    CHECK(ioctl(c, VFIO_IOMMU_MAP_DMA, &m) == 0, "MAP_DMA read-only");
    CHECK(dma(0x200000, 0, 64, 0) == STATUS_DONE, "read of a read-only iova");
    st = dma(0, 0x200000, 64, CMD_TO_MEMORY);
    CHECK(st == STATUS_FAULT && rd32(REG_FAULT_REASON) == FAULT_PERMISSION, "write to read-only: 0x%x", st);
    CHECK(ro[0] == 0xab, "read-only memory untouched");

    /* Peer-to-peer: BAR2 mapped with mmap is the vaddr of a MAP_DMA. */
    size_t plen = 16 * 4096;
    unsigned char *bar2 = mmap(NULL, plen, PROT_READ | PROT_WRITE, MAP_SHARED, dev, r2.offset);
    CHECK(bar2 != MAP_FAILED, "mmap BAR2");
    CHECK(dma_map(c, bar2, 0x40000000, plen) == 0, "MAP_DMA of BAR2");
    st = dma(0x100, 0x40000000 + 4096 + 0x100, 64, CMD_TO_MEMORY);
    CHECK(st == STATUS_DONE, "p2p status 0x%x", st);
    CHECK(memcmp(bar2 + 4096 + 0x100, pat + 0x100, 64) == 0, "BAR2 mapping holds the data");
    unsigned char viaread[64];
    CHECK(pread(dev, viaread, 64, r2.offset + 4096 + 0x100) == 64, "pread BAR2");
    CHECK(memcmp(viaread, pat + 0x100, 64) == 0, "pread of BAR2 sees it too");
    uint64_t un = 0;
    CHECK(dma_unmap(c, 0x40000000, plen, &un) == 0 && un == plen, "UNMAP BAR2");
    CHECK(munmap(bar2, plen) == 0, "munmap BAR2");

    /* Bus mastering off: the device moves nothing and says why (FAULT_REASON 5). */
    set_bus_master(0);
    CHECK(dma(0x100000, 0, 64, 0) == STATUS_FAULT && rd32(REG_FAULT_REASON) == 5, "no DMA without BME");
    set_bus_master(1);
    CHECK(dma(0x100000, 0, 64, 0) == STATUS_DONE, "DMA again with BME");

    /* After UNMAP the device faults, and RESET clears everything. */
    CHECK(dma_unmap(c, 0x100000, len, &un) == 0 && un == len, "UNMAP");
    CHECK(dma(0, 0x100000, 64, CMD_TO_MEMORY) == STATUS_FAULT, "fault after unmap");
    CHECK(ioctl(dev, VFIO_DEVICE_RESET) == 0, "RESET");
    CHECK(rd32(REG_STATUS) == 0 && rd32(REG_DMA_COUNT) == 0, "reset registers");

    close(dev);
    close(g);
    close(c);
    printf("dma ok\n");
    return 0;
}
