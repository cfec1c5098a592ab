/* What the kernel's VFIO selftest for PCI devices (tools/testing/selftests/vfio,
 * vfio_pci_device_test, Linux 6.17) checks on a device, written again here, run under the
 * emulation (issue 11 item 3). That test is not in any Debian package of this machine's
 * kernel generation and cannot be fetched here, so this program does its checks its own way:
 * every case starts from a fresh open (found from the BDF through sysfs, as a VFIO user
 * does, with a TYPE1 (v1) container) and closes everything at the end.
 *
 * - DMA: a 2 MiB shared anonymous mapping, mapped at IOVA = its address, then unmapped.
 * - Config space: vendor and device in config space match sysfs `vendor` and `device`
 *   (and the first bytes of sysfs `config`); bus mastering starts off, turns on, turns off.
 * - BARs: every BAR whose region can be mmap'ed is mapped (size not 0).
 * - MSI and MSI-X: every vector (at most 16) gets an eventfd; a loopback trigger of each
 *   (DATA_NONE) makes its eventfd read 1; then the index is turned off.
 * - Reset: the device says it can, VFIO_DEVICE_RESET succeeds and turns bus mastering off.
 *
 * Prints "pci_device ok <cases>", or FAIL and exits 1. */
#define _GNU_SOURCE
#include "common.h"
#include <libgen.h>
#include <linux/pci_regs.h>
#include <limits.h>
#include <sys/eventfd.h>

#define BDF "0000:00:05.0"
#define SYSFS "/sys/bus/pci/devices/" BDF

struct fixture {
    int container, group, device;
    uint64_t config;
};

static struct fixture setup(void) {
    struct fixture f;
    char link[PATH_MAX];
    ssize_t n = readlink(SYSFS "/iommu_group", link, sizeof link - 1);
    CHECK(n > 0, "readlink iommu_group");
    link[n] = 0;
    int g = atoi(basename(link));
    f.container = open("/dev/vfio/vfio", O_RDWR);
    CHECK(f.container >= 0, "open /dev/vfio/vfio");
    f.group = open_group(g);
    CHECK(ioctl(f.group, VFIO_GROUP_SET_CONTAINER, &f.container) == 0, "SET_CONTAINER");
    CHECK(ioctl(f.container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU) == 0, "SET_IOMMU TYPE1");
    f.device = ioctl(f.group, VFIO_GROUP_GET_DEVICE_FD, BDF);
    CHECK(f.device >= 0, "GET_DEVICE_FD");
    struct vfio_region_info r = { .argsz = sizeof r, .index = VFIO_PCI_CONFIG_REGION_INDEX };
    CHECK(ioctl(f.device, VFIO_DEVICE_GET_REGION_INFO, &r) == 0, "config region");
    f.config = r.offset;
    return f;
}

static void teardown(struct fixture *f) {
    CHECK(close(f->device) == 0 && close(f->group) == 0 && close(f->container) == 0, "close");
}

static uint16_t config_readw(struct fixture *f, int off) {
    uint16_t v;
    CHECK(pread(f->device, &v, 2, f->config + off) == 2, "config read 0x%x", off);
    return v;
}

static void config_writew(struct fixture *f, int off, uint16_t v) {
    CHECK(pwrite(f->device, &v, 2, f->config + off) == 2, "config write 0x%x", off);
}

static unsigned long sysfs_number(const char *attr) {
    char path[PATH_MAX], buf[32] = { 0 };
    snprintf(path, sizeof path, SYSFS "/%s", attr);
    int fd = open(path, O_RDONLY);
    CHECK(fd > 0, "open %s", path);
    CHECK(read(fd, buf, sizeof buf - 1) > 0, "read %s", path);
    CHECK(close(fd) == 0, "close %s", path);
    return strtoul(buf, NULL, 0);
}

static void dma_map_unmap(void) {
    struct fixture f = setup();
    size_t size = 2 << 20;
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    uint64_t iova = (uintptr_t)mem, unmapped = 0;
    CHECK(dma_map(f.container, mem, iova, size) == 0, "MAP_DMA at IOVA = HVA");
    CHECK(dma_unmap(f.container, iova, size, &unmapped) == 0 && unmapped == size, "UNMAP_DMA");
    CHECK(munmap(mem, size) == 0, "munmap");
    teardown(&f);
}

static void config_space_read_write(void) {
    struct fixture f = setup();
    unsigned long vendor = sysfs_number("vendor"), device = sysfs_number("device");
    CHECK(vendor == config_readw(&f, PCI_VENDOR_ID) && device == config_readw(&f, PCI_DEVICE_ID),
          "sysfs %04lx:%04lx, config %04x:%04x", vendor, device, config_readw(&f, 0),
          config_readw(&f, 2));
    uint8_t head[16];
    int fd = open(SYSFS "/config", O_RDONLY);
    CHECK(fd > 0 && pread(fd, head, sizeof head, 0) == sizeof head, "sysfs config");
    CHECK((head[0] | head[1] << 8) == vendor && (head[2] | head[3] << 8) == device,
          "sysfs config identity");
    EXPECT_ERRNO(EACCES, open(SYSFS "/vendor", O_WRONLY));
    close(fd);
    uint16_t command = config_readw(&f, PCI_COMMAND);
    CHECK(!(command & PCI_COMMAND_MASTER), "bus mastering on at open: 0x%04x", command);
    config_writew(&f, PCI_COMMAND, command | PCI_COMMAND_MASTER);
    command = config_readw(&f, PCI_COMMAND);
    CHECK(command & PCI_COMMAND_MASTER, "bus mastering did not turn on: 0x%04x", command);
    config_writew(&f, PCI_COMMAND, command & ~PCI_COMMAND_MASTER);
    command = config_readw(&f, PCI_COMMAND);
    CHECK(!(command & PCI_COMMAND_MASTER), "bus mastering did not turn off: 0x%04x", command);
    teardown(&f);
}

static void validate_bars(void) {
    struct fixture f = setup();
    int mapped = 0;
    for (int i = 0; i < PCI_STD_NUM_BARS; i++) {
        struct vfio_region_info r = { .argsz = sizeof r, .index = VFIO_PCI_BAR0_REGION_INDEX + i };
        CHECK(ioctl(f.device, VFIO_DEVICE_GET_REGION_INFO, &r) == 0, "BAR %d info", i);
        if (!(r.flags & VFIO_REGION_INFO_FLAG_MMAP)) continue;
        CHECK(r.size != 0, "BAR %d: mmap-able with size 0", i);
        void *p = mmap(NULL, r.size, PROT_READ | PROT_WRITE, MAP_SHARED, f.device, r.offset);
        CHECK(p != MAP_FAILED, "BAR %d mmap (size 0x%llx)", i, (unsigned long long)r.size);
        CHECK(munmap(p, r.size) == 0, "BAR %d munmap", i);
        mapped++;
    }
    CHECK(mapped == 1, "%d BARs mapped, BAR2 only expected", mapped);
    teardown(&f);
}

static int set_irqs(int device, uint32_t index, uint32_t flags, uint32_t start, uint32_t count,
                    const int *fds) {
    char buf[sizeof(struct vfio_irq_set) + 4 * 16];
    struct vfio_irq_set *s = (struct vfio_irq_set *)buf;
    *s = (struct vfio_irq_set){ .argsz = sizeof(struct vfio_irq_set) + (fds ? 4 * count : 0),
                                .flags = flags, .index = index, .start = start, .count = count };
    if (fds) memcpy(s->data, fds, 4 * count);
    return ioctl(device, VFIO_DEVICE_SET_IRQS, s);
}

static void enable_trigger_disable(uint32_t index) {
    struct fixture f = setup();
    struct vfio_irq_info ii = { .argsz = sizeof ii, .index = index };
    CHECK(ioctl(f.device, VFIO_DEVICE_GET_IRQ_INFO, &ii) == 0, "IRQ_INFO %u", index);
    uint32_t count = ii.count < 16 ? ii.count : 16;
    CHECK(count > 0, "index %u: no vectors", index);
    int efd[16];
    for (uint32_t i = 0; i < count; i++) {
        efd[i] = eventfd(0, EFD_NONBLOCK);
        CHECK(efd[i] >= 0, "eventfd");
    }
    CHECK(set_irqs(f.device, index, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0,
                   count, efd) == 0, "enable %u vectors of index %u", count, index);
    for (uint32_t i = 0; i < count; i++) {
        CHECK(set_irqs(f.device, index, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, i, 1,
                       NULL) == 0, "trigger vector %u", i);
        uint64_t v = 0;
        CHECK(read(efd[i], &v, 8) == 8 && v == 1, "vector %u: eventfd read %llu", i,
              (unsigned long long)v);
    }
    CHECK(set_irqs(f.device, index, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0,
                   NULL) == 0, "disable index %u", index);
    for (uint32_t i = 0; i < count; i++) close(efd[i]);
    teardown(&f);
}

static void reset(void) {
    struct fixture f = setup();
    struct vfio_device_info di = { .argsz = sizeof di };
    CHECK(ioctl(f.device, VFIO_DEVICE_GET_INFO, &di) == 0 && (di.flags & VFIO_DEVICE_FLAGS_RESET),
          "the device says it can reset: flags 0x%x", di.flags);
    config_writew(&f, PCI_COMMAND, config_readw(&f, PCI_COMMAND) | PCI_COMMAND_MASTER);
    CHECK(ioctl(f.device, VFIO_DEVICE_RESET) == 0, "RESET");
    CHECK(!(config_readw(&f, PCI_COMMAND) & PCI_COMMAND_MASTER), "bus mastering after reset");
    teardown(&f);
}

int main(void) {
    alarm(60);
    dma_map_unmap();
    config_space_read_write();
    validate_bars();
    enable_trigger_disable(VFIO_PCI_MSI_IRQ_INDEX);
    enable_trigger_disable(VFIO_PCI_MSIX_IRQ_INDEX);
    reset();
    printf("pci_device ok 6\n");
    return 0;
}
