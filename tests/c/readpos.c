/* read() and write() on a device fd use the file position, as vfio-pci's do: the first
 * read() of 4 bytes is BAR0's ID, the next one LIVENESS; lseek is ESPIPE (the kernel's device
 * file has no llseek), so the position only moves by reads and writes. */
#include "device.h"

int main(void) {
    int g;
    int c = open_container(1, &g);
    open_device(g);
    uint32_t v = 0;
    CHECK(read(dev, &v, 4) == 4 && v == ID_VALUE, "read() at position 0 is ID (0x%x)", v);
    CHECK(read(dev, &v, 4) == 4 && v == 0xffffffffu, "then LIVENESS (0x%x)", v);
    errno = 0;
    CHECK(lseek(dev, 0, SEEK_SET) == -1 && errno == ESPIPE, "lseek: ESPIPE");
    CHECK(pread(dev, &v, 4, bar0) == 4 && v == ID_VALUE, "pread at 0 is ID");
    CHECK(read(dev, &v, 4) == 4 && v == 0, "pread left the position alone: DMA_SRC (0x%x)", v);
    close(dev);
    close(g);
    close(c);
    printf("readpos ok\n");
    return 0;
}
