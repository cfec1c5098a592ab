/* What the kernel's VFIO selftests vfio_dma_mapping_test and vfio_dma_mapping_mmio_test
 * (tools/testing/selftests/vfio, Linux 7.3) check in their three iommufd modes, restated in our
 * own code and run under the emulation (issue 21). The kernel's programs themselves run in
 * c_programs.rs only when a linux-source package can be had; this one needs only gcc, and
 * defines the iommufd uAPI it uses itself (iommufd_uapi.h) when the system headers lack it.
 *
 * Every case starts from a fresh open, for each emulated device (0000:00:04.0 and 0000:00:05.0,
 * found from the BDF through sysfs) and each mode, and closes everything at the end:
 * - iommufd_compat_type1, iommufd_compat_type1v2: /dev/iommu as the VFIO container, the group
 *   from the device's iommu_group link, SET_CONTAINER, SET_IOMMU TYPE1 or TYPE1v2,
 *   GET_DEVICE_FD; maps and unmaps with MAP_DMA and UNMAP_DMA.
 * - iommufd: the device's cdev (sysfs vfio-dev/vfioN), BIND_IOMMUFD, IOAS_ALLOC,
 *   ATTACH_IOMMUFD_PT; maps with IOAS_MAP (FIXED_IOVA) and unmaps with IOAS_UNMAP.
 * In every case the IOVA ranges are read (IOAS_IOVA_RANGES, or GET_INFO's IOVA_RANGE
 * capability in the compat modes, checked against IOAS_IOVA_RANGES of the compat IOAS) and
 * must be non-empty, ordered and disjoint.
 *
 * Cases (8 a mode and device):
 * - dma_map_unmap, anonymous (one 4 KiB page) and anonymous_hugetlb_2mb (one 2 MiB page):
 *   mapped at IOVA = its address, which must lie in the ranges (the kernel's test takes the
 *   lowest free IOVA of the ranges aligned to the size; either shows the same). The kernel
 *   reads the Intel IOMMU's page table from debugfs to see the translation; there is none
 *   here, so the translation is shown through the uAPI and the device instead: mapping the
 *   IOVA again is EEXIST, the device's DMA to the first and last page of the IOVA lands in the
 *   memory, the unmap reports the whole size, then the device's DMA to the IOVA faults
 *   (unmapped) and the IOVA can be mapped and unmapped again.
 * - map limit (the kernel's vfio_dma_map_limit_test): one page at the last page of the last
 *   IOVA range; unmap_range and unmap_all unmap it and report one page (the device's DMA
 *   reaches it first); overflow: two pages at the last page below 2^64 are EOVERFLOW to map and
 *   to unmap, in every mode.
 * - mmio (map_full_bar, map_partial_bar, map_bar_misaligned): the largest mmap-able readable
 *   and writable BAR, mapped as the kernel's library maps it (aligned to its size up to 1 GiB),
 *   whole, its first page, and again at an address 4 KiB past a 1 GiB boundary, each to the
 *   lowest IOVA of the ranges aligned to its size, as the kernel's allocator picks; none of
 *   them may be DMA-mapped in an iommufd mode. The kernel's test asks only that the map fails; we
 *   also ask for the kernel's errno, EFAULT (pin_user_pages refuses a PFNMAP range), and that
 *   nothing was left mapped (unmap-all reports 0 bytes).
 *
 * Prints "iommufd_dma ok <cases>", or "FAIL: <mode> <device> <case>: <what>" and exits 1. */
#define _GNU_SOURCE
#include "common.h"
#include <sys/stat.h>
#include "../device_regs.h"
#include "iommufd_uapi.h"
#include <dirent.h>
#include <libgen.h>
#include <limits.h>
#include <linux/pci_regs.h>
#include <stdarg.h>

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif

#define PAGE 4096ul
#define SZ_2M (2ul << 20)
#define SZ_1G (1ul << 30)
#define MAX_RANGES 64

struct mode {
    const char *name;
    unsigned long type; /* the compat container's SET_IOMMU type; 0: native iommufd */
};

static const struct mode modes[] = {
    { "iommufd_compat_type1", VFIO_TYPE1_IOMMU },
    { "iommufd_compat_type1v2", VFIO_TYPE1v2_IOMMU },
    { "iommufd", 0 },
};

static const char *const bdfs[] = { "0000:00:04.0", "0000:00:05.0" };

/* What runs now, for the FAIL line. */
static const char *now_mode = "-", *now_bdf = "-", *now_case = "setup";

static void fail(int line, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void fail(int line, const char *fmt, ...) {
    int e = errno;
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "FAIL: %s %s %s: ", now_mode, now_bdf, now_case);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (errno %d %s; iommufd_dma.c:%d)\n", e, strerror(e), line);
    exit(1);
}

#define EXPECT(cond, ...) do { if (!(cond)) fail(__LINE__, __VA_ARGS__); } while (0)

/* `call` returns -1 with errno `want`; the rest says what was asked. */
#define WANT_ERRNO(want, call, ...) do { errno = 0; long r_ = (call); int e_ = errno; \
    if (!(r_ == -1 && e_ == (want))) { char m_[256]; snprintf(m_, sizeof m_, __VA_ARGS__); \
        errno = e_; fail(__LINE__, "%s: %s: want errno %d (%s), got %ld", m_, #call, (want), \
                         strerror(want), r_); } } while (0)

struct fixture {
    const struct mode *mode;
    const char *bdf;
    int iommufd;    /* /dev/iommu: the container in the compat modes */
    int group;      /* -1 in native iommufd mode */
    int device;     /* from GET_DEVICE_FD, or the cdev */
    uint32_t ioas;  /* the allocated IOAS, or the compat one (IOMMU_VFIO_IOAS GET) */
    uint64_t bar0;  /* region offsets */
    uint64_t config;
};

static void sysfs_path(char *out, size_t n, const char *bdf, const char *what) {
    snprintf(out, n, "/sys/bus/pci/devices/%s/%s", bdf, what);
}

static int iommu_group_of(const char *bdf) {
    char path[PATH_MAX], link[PATH_MAX];
    sysfs_path(path, sizeof path, bdf, "iommu_group");
    ssize_t n = readlink(path, link, sizeof link - 1);
    EXPECT(n > 0, "readlink %s", path);
    link[n] = 0;
    return atoi(basename(link));
}


static void region_info(struct fixture *f, uint32_t index, struct vfio_region_info *r) {
    *r = (struct vfio_region_info){ .argsz = sizeof *r, .index = index };
    EXPECT(ioctl(f->device, VFIO_DEVICE_GET_REGION_INFO, r) == 0, "REGION_INFO %u", index);
}

static void open_compat(struct fixture *f) {
    EXPECT(ioctl(f->iommufd, VFIO_GET_API_VERSION) == VFIO_API_VERSION, "GET_API_VERSION");
    char path[32];
    snprintf(path, sizeof path, "/dev/vfio/%d", iommu_group_of(f->bdf));
    f->group = open(path, O_RDWR);
    EXPECT(f->group >= 0, "open %s", path);
    struct vfio_group_status st = { .argsz = sizeof st };
    EXPECT(ioctl(f->group, VFIO_GROUP_GET_STATUS, &st) == 0, "GROUP_GET_STATUS");
    EXPECT(st.flags & VFIO_GROUP_FLAGS_VIABLE, "group not viable: flags 0x%x", st.flags);
    EXPECT(ioctl(f->group, VFIO_GROUP_SET_CONTAINER, &f->iommufd) == 0,
           "SET_CONTAINER /dev/iommu");
    EXPECT(ioctl(f->iommufd, VFIO_CHECK_EXTENSION, f->mode->type) > 0, "CHECK_EXTENSION %lu",
           f->mode->type);
    EXPECT(ioctl(f->iommufd, VFIO_SET_IOMMU, f->mode->type) == 0, "SET_IOMMU %lu",
           f->mode->type);
    f->device = ioctl(f->group, VFIO_GROUP_GET_DEVICE_FD, f->bdf);
    EXPECT(f->device >= 0, "GET_DEVICE_FD %s", f->bdf);
    struct iommu_vfio_ioas v = { .size = sizeof v, .op = IOMMU_VFIO_IOAS_GET };
    EXPECT(ioctl(f->iommufd, IOMMU_VFIO_IOAS, &v) == 0 && v.ioas_id, "VFIO_IOAS GET: id %u",
           v.ioas_id);
    f->ioas = v.ioas_id;
}

static void open_native(struct fixture *f) {
    char dir[PATH_MAX], cdev[PATH_MAX];
    sysfs_path(dir, sizeof dir, f->bdf, "vfio-dev");
    const char *err = iommufd_cdev_of(dir, cdev, sizeof cdev);
    EXPECT(!err, "%s: %s", dir, err);
    f->device = open(cdev, O_RDWR);
    EXPECT(f->device >= 0, "open %s", cdev);
    /* A cdev is a character device, by path and open, with one device number. */
    struct stat ps, fs;
    EXPECT(stat(cdev, &ps) == 0 && S_ISCHR(ps.st_mode), "stat %s: mode 0%o", cdev, ps.st_mode);
    EXPECT(fstat(f->device, &fs) == 0 && S_ISCHR(fs.st_mode) && fs.st_rdev == ps.st_rdev,
           "fstat of the open cdev: mode 0%o rdev %lx, path rdev %lx", fs.st_mode,
           (unsigned long)fs.st_rdev, (unsigned long)ps.st_rdev);
    struct iommufd_attached ids;
    err = iommufd_attach_cdev(f->iommufd, f->device, &ids);
    EXPECT(!err, "%s", err);
    EXPECT(ids.ioas != ids.devid, "IOAS and device share id %u", ids.ioas);
    f->ioas = ids.ioas;
}

static void setup(struct fixture *f, const struct mode *m, const char *bdf) {
    *f = (struct fixture){ .mode = m, .bdf = bdf, .group = -1 };
    f->iommufd = open("/dev/iommu", O_RDWR);
    EXPECT(f->iommufd >= 0, "open /dev/iommu");
    if (m->type)
        open_compat(f);
    else
        open_native(f);
    struct vfio_device_info di = { .argsz = sizeof di };
    EXPECT(ioctl(f->device, VFIO_DEVICE_GET_INFO, &di) == 0 && (di.flags & VFIO_DEVICE_FLAGS_PCI),
           "DEVICE_GET_INFO: flags 0x%x", di.flags);
    struct vfio_region_info r;
    region_info(f, VFIO_PCI_CONFIG_REGION_INDEX, &r);
    EXPECT(!(r.flags & VFIO_REGION_INFO_FLAG_MMAP), "config space offers mmap");
    f->config = r.offset;
    region_info(f, VFIO_PCI_BAR0_REGION_INDEX, &r);
    f->bar0 = r.offset;
    /* Bus mastering on, so the device's DMA can show what the IOMMU maps. */
    uint16_t cmd = 0;
    EXPECT(pread(f->device, &cmd, 2, f->config + PCI_COMMAND) == 2, "read COMMAND");
    cmd |= PCI_COMMAND_MASTER;
    EXPECT(pwrite(f->device, &cmd, 2, f->config + PCI_COMMAND) == 2, "write COMMAND");
}

static void teardown(struct fixture *f) {
    EXPECT(close(f->device) == 0, "close device");
    if (f->group >= 0) EXPECT(close(f->group) == 0, "close group");
    EXPECT(close(f->iommufd) == 0, "close /dev/iommu");
}

/* Map `size` bytes at `vaddr` to `iova` for reading and writing: 0 or -1 with errno. */
static int map(struct fixture *f, const void *vaddr, uint64_t iova, uint64_t size) {
    if (f->mode->type) {
        struct vfio_iommu_type1_dma_map m = {
            .argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            .vaddr = (uintptr_t)vaddr, .iova = iova, .size = size };
        return ioctl(f->iommufd, VFIO_IOMMU_MAP_DMA, &m);
    }
    struct iommu_ioas_map m = {
        .size = sizeof m, .ioas_id = f->ioas, .user_va = (uintptr_t)vaddr, .iova = iova,
        .length = size,
        .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE };
    int r = ioctl(f->iommufd, IOMMU_IOAS_MAP, &m);
    if (r == 0) EXPECT(m.iova == iova, "IOAS_MAP moved a fixed IOVA to 0x%llx",
                       (unsigned long long)m.iova);
    return r;
}

/* Unmap [iova, iova + size): 0 or -1 with errno; the bytes unmapped go to *unmapped. */
static int unmap(struct fixture *f, uint64_t iova, uint64_t size, uint64_t *unmapped) {
    int r;
    if (f->mode->type) {
        struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .iova = iova, .size = size };
        r = ioctl(f->iommufd, VFIO_IOMMU_UNMAP_DMA, &u);
        *unmapped = u.size;
    } else {
        struct iommu_ioas_unmap u = { .size = sizeof u, .ioas_id = f->ioas, .iova = iova,
                                      .length = size };
        r = ioctl(f->iommufd, IOMMU_IOAS_UNMAP, &u);
        *unmapped = u.length;
    }
    return r;
}

/* Unmap everything, each interface its own way; returns the bytes unmapped. */
static uint64_t unmap_all(struct fixture *f) {
    if (f->mode->type) {
        struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u,
                                                .flags = VFIO_DMA_UNMAP_FLAG_ALL };
        EXPECT(ioctl(f->iommufd, VFIO_IOMMU_UNMAP_DMA, &u) == 0, "UNMAP_DMA FLAG_ALL");
        return u.size;
    }
    struct iommu_ioas_unmap u = { .size = sizeof u, .ioas_id = f->ioas, .iova = 0,
                                  .length = UINT64_MAX };
    EXPECT(ioctl(f->iommufd, IOMMU_IOAS_UNMAP, &u) == 0, "IOAS_UNMAP 0, U64_MAX");
    return u.length;
}

static int by_start(const void *a, const void *b) {
    const struct iommu_iova_range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* IOAS_IOVA_RANGES of `ioas`: first with no room (EMSGSIZE and the count), then in full. */
static uint32_t ioas_ranges(struct fixture *f, uint32_t ioas, struct iommu_iova_range *out) {
    struct iommu_ioas_iova_ranges q = { .size = sizeof q, .ioas_id = ioas };
    WANT_ERRNO(EMSGSIZE, ioctl(f->iommufd, IOMMU_IOAS_IOVA_RANGES, &q), "no room");
    EXPECT(q.num_iovas > 0 && q.num_iovas <= MAX_RANGES, "IOVA_RANGES count %u", q.num_iovas);
    uint64_t align = q.out_iova_alignment;
    EXPECT(align && !(align & (align - 1)) && align <= PAGE, "IOVA alignment 0x%llx",
           (unsigned long long)align);
    uint32_t n = q.num_iovas;
    q.allowed_iovas = (uintptr_t)out;
    EXPECT(ioctl(f->iommufd, IOMMU_IOAS_IOVA_RANGES, &q) == 0 && q.num_iovas == n,
           "IOVA_RANGES with room for %u: %u", n, q.num_iovas);
    return n;
}

/* The chain of GET_INFO capabilities: the one with `id`, NULL if absent. */
static struct vfio_info_cap_header *info_cap(struct vfio_iommu_type1_info *info, uint16_t id) {
    uint32_t off = info->cap_offset, hops = 0;
    while (off) {
        EXPECT(off >= sizeof *info && off + sizeof(struct vfio_info_cap_header) <= info->argsz,
               "capability at %u outside %u bytes", off, info->argsz);
        struct vfio_info_cap_header *h = (void *)((char *)info + off);
        if (h->id == id) return h;
        EXPECT(++hops < 16, "capability chain loops");
        off = h->next;
    }
    return NULL;
}

/* The compat container's GET_INFO: page sizes, DMA_AVAIL and IOVA_RANGE; returns the ranges. */
static uint32_t info_ranges(struct fixture *f, struct iommu_iova_range *out) {
    struct vfio_iommu_type1_info small = { .argsz = sizeof small };
    EXPECT(ioctl(f->iommufd, VFIO_IOMMU_GET_INFO, &small) == 0, "GET_INFO");
    uint32_t want = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS;
    EXPECT((small.flags & want) == want, "GET_INFO flags 0x%x", small.flags);
    EXPECT(small.iova_pgsizes & PAGE, "page sizes 0x%llx without 4 KiB",
           (unsigned long long)small.iova_pgsizes);
    EXPECT(small.argsz > sizeof small && small.argsz < 4096, "GET_INFO wants %u bytes",
           small.argsz);
    EXPECT(small.cap_offset == 0, "capabilities placed in a short buffer at %u",
           small.cap_offset);
    uint64_t buf[512] = { 0 };
    struct vfio_iommu_type1_info *info = (void *)buf;
    info->argsz = small.argsz;
    EXPECT(ioctl(f->iommufd, VFIO_IOMMU_GET_INFO, info) == 0 && info->argsz == small.argsz,
           "GET_INFO in full: %u bytes", info->argsz);
    EXPECT(info_cap(info, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL), "no DMA_AVAIL capability");
    struct vfio_info_cap_header *h = info_cap(info, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
    EXPECT(h, "no IOVA_RANGE capability");
    struct vfio_iommu_type1_info_cap_iova_range *c = (void *)h;
    uint32_t n = c->nr_iovas;
    EXPECT(n > 0 && n <= MAX_RANGES, "IOVA_RANGE count %u", n);
    EXPECT((char *)&c->iova_ranges[n] <= (char *)info + info->argsz, "IOVA_RANGE past argsz");
    for (uint32_t i = 0; i < n; i++)
        out[i] = (struct iommu_iova_range){ c->iova_ranges[i].start, c->iova_ranges[i].end };
    return n;
}

/* The IOVA ranges the device may use, ordered; checked to be sane and, in the compat modes,
 * to be the compat IOAS's. */
static uint32_t ranges(struct fixture *f, struct iommu_iova_range *out) {
    uint32_t n;
    if (f->mode->type) {
        n = info_ranges(f, out);
        struct iommu_iova_range ioas[MAX_RANGES];
        EXPECT(ioas_ranges(f, f->ioas, ioas) == n, "GET_INFO and IOAS_IOVA_RANGES counts differ");
        EXPECT(!memcmp(ioas, out, n * sizeof *out), "GET_INFO and IOAS_IOVA_RANGES differ");
    } else {
        n = ioas_ranges(f, f->ioas, out);
    }
    qsort(out, n, sizeof *out, by_start);
    for (uint32_t i = 0; i < n; i++) {
        EXPECT(out[i].start < out[i].last, "range %u: 0x%llx-0x%llx", i,
               (unsigned long long)out[i].start, (unsigned long long)out[i].last);
        EXPECT(i == 0 || out[i - 1].last < out[i].start, "ranges %u and %u overlap", i - 1, i);
    }
    return n;
}

static int in_ranges(struct fixture *f, uint64_t iova, uint64_t size) {
    struct iommu_iova_range r[MAX_RANGES];
    uint32_t n = ranges(f, r);
    for (uint32_t i = 0; i < n; i++)
        if (iova >= r[i].start && iova <= r[i].last && size - 1 <= r[i].last - iova) return 1;
    return 0;
}

/* The lowest IOVA aligned to `size` (a power of two) where `size` bytes fit in a range. */
static uint64_t aligned_iova(struct fixture *f, uint64_t size) {
    struct iommu_iova_range r[MAX_RANGES];
    uint32_t n = ranges(f, r);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t iova = (r[i].start + size - 1) & ~(size - 1);
        if (iova >= r[i].start && iova <= r[i].last && size - 1 <= r[i].last - iova) return iova;
    }
    fail(__LINE__, "no room for 0x%llx bytes in the IOVA ranges", (unsigned long long)size);
}

static void reg_write(struct fixture *f, uint64_t reg, uint64_t v, size_t n) {
    EXPECT(pwrite(f->device, &v, n, f->bar0 + reg) == (ssize_t)n, "write BAR0 0x%llx",
           (unsigned long long)reg);
}

static uint64_t reg_read(struct fixture *f, uint64_t reg, size_t n) {
    uint64_t v = 0;
    EXPECT(pread(f->device, &v, n, f->bar0 + reg) == (ssize_t)n, "read BAR0 0x%llx",
           (unsigned long long)reg);
    return v;
}

static void pattern(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 13 + seed);
}

/* The device writes one page of pattern `seed` at `iova`; returns STATUS. */
static uint32_t device_writes(struct fixture *f, uint64_t iova, unsigned seed) {
    unsigned char b[PAGE];
    pattern(b, PAGE, seed);
    EXPECT(pwrite(f->device, b, PAGE, f->bar0 + BUFFER) == PAGE, "fill the device's buffer");
    reg_write(f, REG_STATUS, STATUS_DONE | STATUS_FAULT, 4);
    reg_write(f, REG_DMA_SRC, 0, 8);
    reg_write(f, REG_DMA_DST, iova, 8);
    reg_write(f, REG_DMA_LEN, PAGE, 8);
    reg_write(f, REG_CMD, CMD_START | CMD_TO_MEMORY, 4);
    return (uint32_t)reg_read(f, REG_STATUS, 4);
}

/* The device reaches the page at `iova`, which is `mem`. */
static void device_sees(struct fixture *f, uint64_t iova, const unsigned char *mem, unsigned seed) {
    uint32_t st = device_writes(f, iova, seed);
    EXPECT(st == STATUS_DONE, "DMA to mapped IOVA 0x%llx: status 0x%x, fault reason %llu",
           (unsigned long long)iova, st, (unsigned long long)reg_read(f, REG_FAULT_REASON, 4));
    unsigned char b[PAGE];
    pattern(b, PAGE, seed);
    EXPECT(!memcmp(mem, b, PAGE), "DMA to IOVA 0x%llx did not reach its memory",
           (unsigned long long)iova);
}

/* The device's DMA to `iova` faults: nothing is mapped there. */
static void device_faults(struct fixture *f, uint64_t iova) {
    uint32_t st = device_writes(f, iova, 1);
    uint64_t at = reg_read(f, REG_FAULT_IOVA, 8), why = reg_read(f, REG_FAULT_REASON, 4);
    EXPECT(st == STATUS_FAULT && why == FAULT_UNMAPPED && at == iova,
           "DMA to unmapped IOVA 0x%llx: status 0x%x, reason %llu at 0x%llx",
           (unsigned long long)iova, st, (unsigned long long)why, (unsigned long long)at);
}

static void dma_map_unmap(struct fixture *f, uint64_t size, int hugetlb) {
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | (hugetlb ? MAP_HUGETLB | MAP_HUGE_2MB : 0);
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    EXPECT(mem != MAP_FAILED, "mmap %llu bytes%s", (unsigned long long)size,
           hugetlb ? " of 2 MiB hugetlb (reserve some: nr_hugepages)" : "");
    uint64_t iova = (uintptr_t)mem, unmapped = 0;
    EXPECT(in_ranges(f, iova, size), "IOVA = address 0x%llx is outside the IOVA ranges",
           (unsigned long long)iova);
    EXPECT(map(f, mem, iova, size) == 0, "map 0x%llx bytes at IOVA = address 0x%llx",
           (unsigned long long)size, (unsigned long long)iova);
    WANT_ERRNO(EEXIST, map(f, mem, iova, size), "the same IOVA again");
    device_sees(f, iova, mem, 7);
    if (size > PAGE) device_sees(f, iova + size - PAGE, mem + size - PAGE, 11);
    EXPECT(unmap(f, iova, size, &unmapped) == 0 && unmapped == size, "unmap: %llu bytes",
           (unsigned long long)unmapped);
    device_faults(f, iova);
    if (size > PAGE) device_faults(f, iova + size - PAGE);
    EXPECT(map(f, mem, iova, size) == 0, "map the freed IOVA again");
    EXPECT(unmap(f, iova, size, &unmapped) == 0 && unmapped == size, "unmap again: %llu bytes",
           (unsigned long long)unmapped);
    EXPECT(munmap(mem, size) == 0, "munmap");
}

enum limit_case { UNMAP_RANGE, UNMAP_ALL, OVERFLOW };

static void map_limit(struct fixture *f, enum limit_case c) {
    /* Two pages of memory: one for the mapping, both for the overflowing one. */
    unsigned char *mem = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT(mem != MAP_FAILED, "mmap");
    struct iommu_iova_range r[MAX_RANGES];
    uint32_t n = ranges(f, r);
    uint64_t iova = r[n - 1].last & ~(PAGE - 1), unmapped = 0;
    if (c == OVERFLOW) {
        iova = UINT64_MAX & ~(PAGE - 1);
        WANT_ERRNO(EOVERFLOW, map(f, mem, iova, 2 * PAGE), "map 2 pages at 0x%llx",
                     (unsigned long long)iova);
        WANT_ERRNO(EOVERFLOW, unmap(f, iova, 2 * PAGE, &unmapped), "unmap 2 pages at 0x%llx",
                     (unsigned long long)iova);
    } else {
        EXPECT(map(f, mem, iova, PAGE) == 0, "map the last page 0x%llx",
               (unsigned long long)iova);
        device_sees(f, iova, mem, 3);
        if (c == UNMAP_RANGE)
            EXPECT(unmap(f, iova, PAGE, &unmapped) == 0, "unmap the last page");
        else
            unmapped = unmap_all(f);
        EXPECT(unmapped == PAGE, "unmapped %llu bytes, want one page",
               (unsigned long long)unmapped);
        device_faults(f, iova);
    }
    EXPECT(munmap(mem, 2 * PAGE) == 0, "munmap");
}

/* `size` bytes of address space at an address `offset` past a multiple of `align`. */
static void *reserve(size_t size, size_t align, size_t offset) {
    char *base = mmap(NULL, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT(base != MAP_FAILED, "reserve 0x%zx bytes", size + align);
    char *p = (char *)(((uintptr_t)base - offset + align - 1) / align * align + offset);
    if (p > base) EXPECT(munmap(base, p - base) == 0, "trim the reservation's head");
    if (base + size + align > p + size)
        EXPECT(munmap(p + size, base + size + align - (p + size)) == 0, "trim its tail");
    return p;
}

struct bar {
    void *vaddr;
    uint64_t size, offset;
    int prot;
};

/* The largest BAR that can be mmap'ed for reading and writing, mapped as the kernel's library
 * maps BARs: at an address aligned to its size (up to 1 GiB). */
static struct bar map_largest_bar(struct fixture *f) {
    struct bar b = { 0 };
    uint32_t rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    for (uint32_t i = 0; i < PCI_STD_NUM_BARS; i++) {
        struct vfio_region_info r;
        region_info(f, VFIO_PCI_BAR0_REGION_INDEX + i, &r);
        if (!(r.flags & VFIO_REGION_INFO_FLAG_MMAP) || (r.flags & rw) != rw) continue;
        EXPECT(r.size && !(r.size & (r.size - 1)), "BAR %u size 0x%llx", i,
               (unsigned long long)r.size);
        if (r.size > b.size) b = (struct bar){ .size = r.size, .offset = r.offset };
    }
    EXPECT(b.size, "no mmap-able BAR");
    b.prot = PROT_READ | PROT_WRITE;
    void *at = reserve(b.size, b.size < SZ_1G ? b.size : SZ_1G, 0);
    b.vaddr = mmap(at, b.size, b.prot, MAP_SHARED | MAP_FIXED, f->device, b.offset);
    EXPECT(b.vaddr == at, "mmap BAR (0x%llx bytes)", (unsigned long long)b.size);
    (void)madvise(b.vaddr, b.size, MADV_HUGEPAGE);
    return b;
}

/* DMA-mapping `size` bytes of MMIO at `vaddr` is refused, and leaves nothing mapped. */
static void mmio_refused(struct fixture *f, void *vaddr, uint64_t size) {
    uint64_t iova = aligned_iova(f, size);
    WANT_ERRNO(EFAULT, map(f, vaddr, iova, size), "MMIO 0x%llx bytes at %p to IOVA 0x%llx",
                 (unsigned long long)size, vaddr, (unsigned long long)iova);
    EXPECT(unmap_all(f) == 0, "a refused map left bytes mapped");
}

enum mmio_case { FULL_BAR, PARTIAL_BAR, BAR_MISALIGNED };

static void mmio(struct fixture *f, enum mmio_case c) {
    struct bar b = map_largest_bar(f);
    if (c == FULL_BAR) {
        mmio_refused(f, b.vaddr, b.size);
    } else if (c == PARTIAL_BAR) {
        EXPECT(b.size >= 2 * PAGE, "BAR of 0x%llx bytes: too small for a part",
               (unsigned long long)b.size);
        mmio_refused(f, b.vaddr, PAGE);
    } else {
        uint64_t size = b.size < SZ_1G ? b.size : SZ_1G;
        void *at = reserve(size, SZ_1G, PAGE);
        void *p = mmap(at, size, b.prot, MAP_SHARED | MAP_FIXED, f->device, b.offset);
        EXPECT(p == at, "mmap BAR at %p", at);
        mmio_refused(f, p, size);
        EXPECT(munmap(p, size) == 0, "munmap misaligned BAR");
    }
    EXPECT(munmap(b.vaddr, b.size) == 0, "munmap BAR");
}

int main(void) {
    alarm(120);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int passed = 0;
    for (size_t d = 0; d < sizeof bdfs / sizeof *bdfs; d++) {
        for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
            now_bdf = bdfs[d];
            now_mode = modes[m].name;
            struct fixture f;
            struct {
                const char *name;
                int kind, arg;
            } cases[] = {
                { "dma_map_unmap/anonymous", 0, 0 },
                { "dma_map_unmap/anonymous_hugetlb_2mb", 0, 1 },
                { "dma_map_limit/unmap_range", 1, UNMAP_RANGE },
                { "dma_map_limit/unmap_all", 1, UNMAP_ALL },
                { "dma_map_limit/overflow", 1, OVERFLOW },
                { "dma_mapping_mmio/map_full_bar", 2, FULL_BAR },
                { "dma_mapping_mmio/map_partial_bar", 2, PARTIAL_BAR },
                { "dma_mapping_mmio/map_bar_misaligned", 2, BAR_MISALIGNED },
            };
            for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
                now_case = cases[c].name;
                setup(&f, &modes[m], bdfs[d]);
                if (cases[c].kind == 0)
                    dma_map_unmap(&f, cases[c].arg ? SZ_2M : PAGE, cases[c].arg);
                else if (cases[c].kind == 1)
                    map_limit(&f, cases[c].arg);
                else
                    mmio(&f, cases[c].arg);
                teardown(&f);
                passed++;
            }
        }
    }
    printf("iommufd_dma ok %d\n", passed);
    return 0;
}
