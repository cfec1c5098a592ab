/* What the kernel's VFIO selftest for PCI devices (tools/testing/selftests/vfio,
 * vfio_pci_device_test, Linux 6.17) checks on a device, written again here, run under the
 * emulation (issue 11 item 3). The kernel's program itself runs in c_programs.rs only when a
 * linux-source package can be had; this one needs only gcc, and does its checks its own way.
 *
 * Every case runs in two modes, each case from a fresh open of the device (found from the BDF
 * through sysfs, as a VFIO user does) that closes everything at the end:
 * - legacy: the group from the device's iommu_group link in a TYPE1 (v1) container
 *   (/dev/vfio/vfio), GET_DEVICE_FD; DMA with MAP_DMA and UNMAP_DMA on the container.
 * - iommufd, the kernel test's default mode: /dev/iommu, the device's cdev
 *   (/sys/bus/pci/devices/BDF/vfio-dev/vfioN -> /dev/vfio/devices/vfioN), which is then the
 *   device fd, BIND_IOMMUFD, IOAS_ALLOC, ATTACH_IOMMUFD_PT to the IOAS (which answers with
 *   the id of the automatic HWPT the device joined); DMA with IOAS_MAP (FIXED_IOVA) and
 *   IOAS_UNMAP on the IOAS. The uAPI comes from iommufd_uapi.h.
 *
 * The cases (6 a mode):
 * - DMA: a 2 MiB shared anonymous mapping, mapped at IOVA = its address, then unmapped (the
 *   unmap reports the whole 2 MiB).
 * - Config space: vendor and device in config space match sysfs `vendor` and `device`
 *   (and the first bytes of sysfs `config`); bus mastering starts off, turns on, turns off.
 * - BARs: every BAR whose region can be mmap'ed is mapped (size not 0).
 * - MSI and MSI-X: every vector (at most 16) gets an eventfd; a loopback trigger of each
 *   (DATA_NONE) makes its eventfd read 1; then the index is turned off.
 * - Reset: the device says it can, VFIO_DEVICE_RESET succeeds and turns bus mastering off.
 *
 * Prints "pci_device ok <cases>" (12), or FAIL, the mode and case, and exits 1. */
#define _GNU_SOURCE
#include "common.h"
#include "iommufd_uapi.h"
#include <dirent.h>
#include <libgen.h>
#include <linux/pci_regs.h>
#include <limits.h>
#include <sys/eventfd.h>

#define BDF "0000:00:05.0"
#define SYSFS "/sys/bus/pci/devices/" BDF

enum mode { LEGACY, IOMMUFD };
static const char *const mode_names[] = { "legacy", "iommufd" };

/* What runs now, said on exit when a CHECK fails. */
static const char *now_mode = "-", *now_case = "-";
static int done;

static void say_where(void) {
    if (!done) fprintf(stderr, "FAIL in mode %s, case %s\n", now_mode, now_case);
}

struct fixture {
    enum mode mode;
    int container; /* /dev/vfio/vfio, or /dev/iommu */
    int group;     /* -1 in iommufd mode */
    int device;    /* from GET_DEVICE_FD, or the cdev */
    uint32_t ioas; /* iommufd mode */
    uint64_t config;
};

static void open_legacy(struct fixture *f) {
    char link[PATH_MAX];
    ssize_t n = readlink(SYSFS "/iommu_group", link, sizeof link - 1);
    CHECK(n > 0, "readlink iommu_group");
    link[n] = 0;
    int g = atoi(basename(link));
    f->container = open("/dev/vfio/vfio", O_RDWR);
    CHECK(f->container >= 0, "open /dev/vfio/vfio");
    f->group = open_group(g);
    CHECK(ioctl(f->group, VFIO_GROUP_SET_CONTAINER, &f->container) == 0, "SET_CONTAINER");
    CHECK(ioctl(f->container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU) == 0, "SET_IOMMU TYPE1");
    f->device = ioctl(f->group, VFIO_GROUP_GET_DEVICE_FD, BDF);
    CHECK(f->device >= 0, "GET_DEVICE_FD");
}

static void open_iommufd(struct fixture *f) {
    f->container = open("/dev/iommu", O_RDWR);
    CHECK(f->container >= 0, "open /dev/iommu");
    char cdev[PATH_MAX];
    const char *err = iommufd_cdev_of(SYSFS "/vfio-dev", cdev, sizeof cdev);
    CHECK(!err, SYSFS "/vfio-dev: %s", err);
    f->device = open(cdev, O_RDWR);
    CHECK(f->device >= 0, "open %s", cdev);
    struct iommufd_attached ids;
    err = iommufd_attach_cdev(f->container, f->device, &ids);
    CHECK(!err, "%s", err);
    f->ioas = ids.ioas;
    /* Attached to an IOAS, the device is in an automatic HWPT, whose id comes back. */
    CHECK(ids.hwpt && ids.hwpt != ids.ioas && ids.hwpt != ids.devid,
          "ATTACH_IOMMUFD_PT: HWPT id %u (IOAS %u, device %u)", ids.hwpt, ids.ioas, ids.devid);
}

static struct fixture setup(enum mode mode) {
    struct fixture f = { .mode = mode, .group = -1 };
    if (mode == LEGACY)
        open_legacy(&f);
    else
        open_iommufd(&f);
    struct vfio_region_info r = { .argsz = sizeof r, .index = VFIO_PCI_CONFIG_REGION_INDEX };
    CHECK(ioctl(f.device, VFIO_DEVICE_GET_REGION_INFO, &r) == 0, "config region");
    f.config = r.offset;
    return f;
}

static void teardown(struct fixture *f) {
    CHECK(close(f->device) == 0, "close device");
    if (f->group >= 0) CHECK(close(f->group) == 0, "close group");
    CHECK(close(f->container) == 0, "close container");
}

/* Map `size` bytes at `vaddr` to `iova`, readable and writable: 0 or -1 with errno. */
static int map(struct fixture *f, void *vaddr, uint64_t iova, uint64_t size) {
    if (f->mode == LEGACY) return dma_map(f->container, vaddr, iova, size);
    struct iommu_ioas_map m = { .size = sizeof m, .ioas_id = f->ioas,
                                .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
                                         IOMMU_IOAS_MAP_WRITEABLE,
                                .user_va = (uintptr_t)vaddr, .length = size, .iova = iova };
    int r = ioctl(f->container, IOMMU_IOAS_MAP, &m);
    if (r == 0) CHECK(m.iova == iova, "IOAS_MAP moved a fixed IOVA to 0x%llx",
                      (unsigned long long)m.iova);
    return r;
}

/* Unmap [iova, iova + size): 0 or -1 with errno; the bytes unmapped go to *unmapped. */
static int unmap(struct fixture *f, uint64_t iova, uint64_t size, uint64_t *unmapped) {
    if (f->mode == LEGACY) return dma_unmap(f->container, iova, size, unmapped);
    struct iommu_ioas_unmap u = { .size = sizeof u, .ioas_id = f->ioas, .iova = iova,
                                  .length = size };
    int r = ioctl(f->container, IOMMU_IOAS_UNMAP, &u);
    *unmapped = u.length;
    return r;
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

static void dma_map_unmap(enum mode mode) {
    struct fixture f = setup(mode);
    size_t size = 2 << 20;
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap");
    uint64_t iova = (uintptr_t)mem, unmapped = 0;
    CHECK(map(&f, mem, iova, size) == 0, "map at IOVA = HVA");
    CHECK(unmap(&f, iova, size, &unmapped) == 0 && unmapped == size, "unmap: %llu bytes",
          (unsigned long long)unmapped);
    CHECK(munmap(mem, size) == 0, "munmap");
    teardown(&f);
}

static void config_space_read_write(enum mode mode) {
    struct fixture f = setup(mode);
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

static void validate_bars(enum mode mode) {
    struct fixture f = setup(mode);
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

static void enable_trigger_disable(enum mode mode, uint32_t index) {
    struct fixture f = setup(mode);
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

static void reset(enum mode mode) {
    struct fixture f = setup(mode);
    struct vfio_device_info di = { .argsz = sizeof di };
    CHECK(ioctl(f.device, VFIO_DEVICE_GET_INFO, &di) == 0 && (di.flags & VFIO_DEVICE_FLAGS_RESET),
          "the device says it can reset: flags 0x%x", di.flags);
    config_writew(&f, PCI_COMMAND, config_readw(&f, PCI_COMMAND) | PCI_COMMAND_MASTER);
    CHECK(ioctl(f.device, VFIO_DEVICE_RESET) == 0, "RESET");
    CHECK(!(config_readw(&f, PCI_COMMAND) & PCI_COMMAND_MASTER), "bus mastering after reset");
    teardown(&f);
}

static void msi(enum mode mode) {
    enable_trigger_disable(mode, VFIO_PCI_MSI_IRQ_INDEX);
}

static void msix(enum mode mode) {
    enable_trigger_disable(mode, VFIO_PCI_MSIX_IRQ_INDEX);
}

int main(void) {
    alarm(60);
    atexit(say_where);
    static const struct {
        const char *name;
        void (*run)(enum mode);
    } cases[] = {
        { "dma_map_unmap", dma_map_unmap },
        { "config_space_read_write", config_space_read_write },
        { "validate_bars", validate_bars },
        { "enable_trigger_disable/msi", msi },
        { "enable_trigger_disable/msix", msix },
        { "reset", reset },
    };
    int passed = 0;
    for (int m = LEGACY; m <= IOMMUFD; m++) {
        now_mode = mode_names[m];
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            now_case = cases[c].name;
            cases[c].run(m);
            passed++;
        }
    }
    done = 1;
    printf("pci_device ok %d\n", passed);
    return 0;
}
