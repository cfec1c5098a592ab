/* One device per function: two GET_DEVICE_FD calls for the same function give two fds on one
 * device: a register written through one reads back through the other, BAR2 bytes written
 * through one are there through the other (pread and mmap), and the device lives on while
 * either fd is open. */
#include "device.h"

int main(void) {
    int g;
    int c = open_container(1, &g);
    int a = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:05.0");
    int b = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:05.0");
    CHECK(a >= 0 && b >= 0 && a != b, "two device fds");
    struct vfio_region_info r0, r2;
    dev = a;
    region(VFIO_PCI_BAR0_REGION_INDEX, &r0);
    region(VFIO_PCI_BAR2_REGION_INDEX, &r2);
    bar0 = r0.offset;
    wr32(REG_LIVENESS, 0x1234);
    unsigned char pat[64];
    for (int i = 0; i < 64; i++) pat[i] = (unsigned char)(i + 1);
    CHECK(pwrite(a, pat, 64, bar0 + BUFFER) == 64, "buffer through a");
    CHECK(pwrite(a, pat, 64, r2.offset + 4096) == 64, "BAR2 through a");
    dev = b;
    CHECK(rd32(REG_LIVENESS) == ~0x1234u, "LIVENESS through b: 0x%x", rd32(REG_LIVENESS));
    unsigned char back[64];
    CHECK(pread(b, back, 64, bar0 + BUFFER) == 64 && !memcmp(back, pat, 64), "one buffer");
    CHECK(pread(b, back, 64, r2.offset + 4096) == 64 && !memcmp(back, pat, 64), "one BAR2");
    unsigned char *ma = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, a, r2.offset);
    unsigned char *mb = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, b, r2.offset);
    CHECK(ma != MAP_FAILED && mb != MAP_FAILED, "mmap BAR2 through both");
    ma[0] = 0x5a;
    CHECK(mb[0] == 0x5a && !memcmp(mb + 4096, pat, 64), "one BAR2 memory");
    CHECK(close(a) == 0, "close a");
    dev = b;
    CHECK(rd32(REG_ID) == 0x010000ed, "the device lives on through b");
    munmap(ma, 8192);
    munmap(mb, 8192);
    CHECK(close(b) == 0, "close b");
    close(g);
    close(c);
    printf("onedevice ok\n");
    return 0;
}
