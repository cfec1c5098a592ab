/* Pins hold pages, as the kernel's do: whatever the program does to its memory after MAP_DMA
 * (munmap, a new mapping at the same address, mremap, MADV_DONTNEED/MADV_FREE, ftruncate of a
 * memfd, fork, a VADDR live update), the device keeps reaching the page that was pinned. The
 * program's own mlock state (VmLck) is never touched, scattered maps never split memory
 * regions, failed maps leave nothing pinned, and writable pins of shared regular-file mappings
 * are refused. Each check names the behaviour; argv[1] picks one ("all" runs them in turn).
 * argv[2], for "file", is a directory on a disk file system. */
#define _GNU_SOURCE
#include "device.h"
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static int c, g;

static void setup(void) {
    c = open_container(1, &g);
    open_device(g);
}

/* The device writes `n` bytes of `byte` to `iova` (from its buffer). */
static uint32_t dev_write(uint64_t iova, int byte, size_t n) {
    unsigned char b[4096];
    memset(b, byte, n);
    CHECK(pwrite(dev, b, n, bar0 + BUFFER) == (ssize_t)n, "fill buffer");
    return dma(0, iova, n, CMD_TO_MEMORY | CMD_NO_SNOOP);
}

/* The device reads `n` bytes at `iova` into its buffer; returns them in `out`. */
static uint32_t dev_read(uint64_t iova, unsigned char *out, size_t n) {
    uint32_t st = dma(iova, 0, n, CMD_NO_SNOOP);
    CHECK(pread(dev, out, n, bar0 + BUFFER) == (ssize_t)n, "read buffer");
    return st;
}

static int all_bytes(const unsigned char *p, size_t n, int byte) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)byte) return 0;
    return 1;
}

static void unmap_all(void) {
    struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .flags = VFIO_DMA_UNMAP_FLAG_ALL };
    CHECK(ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u) == 0, "UNMAP_ALL");
}

/* MAP_DMA, munmap, a new anonymous mapping at the same address: the device still reaches the
 * pinned page (DONE, its old bytes), and the new memory is untouched. */
static void check_remap(void) {
    unsigned char *p = map_anon(8192), in[64];
    memset(p, 0x11, 8192);
    CHECK(dma_map(c, p, 0x100000, 8192) == 0, "MAP_DMA");
    CHECK(munmap(p, 8192) == 0, "munmap");
    CHECK(dev_read(0x100000, in, 64) == STATUS_DONE, "device read after munmap");
    CHECK(all_bytes(in, 64, 0x11), "the pinned page's bytes");
    unsigned char *q = mmap(p, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(q == p, "remap at the same address");
    memset(q, 0x77, 8192);
    CHECK(dev_write(0x101000, 0x5c, 64) == STATUS_DONE, "device write after remap");
    CHECK(dev_read(0x101000, in, 64) == STATUS_DONE && all_bytes(in, 64, 0x5c), "device reads its write");
    CHECK(all_bytes(q, 8192, 0x77), "the new mapping is untouched");
    unmap_all();
    munmap(q, 8192);
    printf("remap ok\n");
}

/* QEMU's CPR live update: UNMAP with FLAG_VADDR, munmap, the same memfd mapped elsewhere, MAP
 * with FLAG_VADDR. The device's writes land in the memfd, never at the old address. */
static void check_live_update(void) {
    int fd = memfd_create("guest-ram", 0);
    CHECK(fd >= 0 && ftruncate(fd, 16384) == 0, "memfd");
    unsigned char *a = mmap(NULL, 16384, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(a != MAP_FAILED, "mmap memfd");
    CHECK(dma_map(c, a, 0x200000, 16384) == 0, "MAP_DMA");
    struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .flags = VFIO_DMA_UNMAP_FLAG_VADDR,
        .iova = 0x200000, .size = 16384 };
    CHECK(ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u) == 0, "UNMAP VADDR");
    CHECK(munmap(a, 16384) == 0, "munmap old");
    unsigned char *junk = mmap(a, 16384, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(junk == a, "junk at the old address");
    memset(junk, 0xee, 16384);
    unsigned char *b = mmap(NULL, 16384, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(b != MAP_FAILED, "mmap memfd again");
    struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_VADDR,
        .vaddr = (uintptr_t)b, .iova = 0x200000, .size = 16384 };
    CHECK(ioctl(c, VFIO_IOMMU_MAP_DMA, &m) == 0, "MAP VADDR");
    CHECK(dev_write(0x202000, 0x42, 128) == STATUS_DONE, "device write");
    CHECK(all_bytes(b + 0x2000, 128, 0x42), "the memfd got it");
    CHECK(all_bytes(junk, 16384, 0xee), "the old address did not");
    unmap_all();
    munmap(b, 16384);
    munmap(junk, 16384);
    close(fd);
    printf("live-update ok\n");
}

/* ftruncate of a pinned memfd and mremap of a pinned range: the device keeps its pages; after
 * mremap the CPU sees the device's write at the new address. */
static void check_truncate_mremap(void) {
    int fd = memfd_create("trunc", 0);
    CHECK(fd >= 0 && ftruncate(fd, 8192) == 0, "memfd");
    unsigned char *a = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), in[32];
    CHECK(a != MAP_FAILED, "mmap");
    memset(a, 0x21, 8192);
    CHECK(dma_map(c, a, 0x300000, 8192) == 0, "MAP_DMA");
    CHECK(ftruncate(fd, 0) == 0, "ftruncate of a pinned memfd");
    CHECK(dev_write(0x301000, 0x31, 32) == STATUS_DONE, "device write after ftruncate");
    CHECK(dev_read(0x301000, in, 32) == STATUS_DONE && all_bytes(in, 32, 0x31), "and reads it back");
    CHECK(dev_read(0x300000, in, 32) == STATUS_DONE && all_bytes(in, 32, 0x21), "old bytes kept");
    unmap_all();
    munmap(a, 8192);
    close(fd);

    unsigned char *p = map_anon(3 * 4096);
    CHECK(dma_map(c, p, 0x400000, 3 * 4096) == 0, "MAP_DMA");
    unsigned char *q = mremap(p, 3 * 4096, 3 * 4096, MREMAP_MAYMOVE | MREMAP_FIXED, p + (64 << 20));
    CHECK(q != MAP_FAILED, "mremap of a pinned range");
    CHECK(dev_write(0x401000, 0x66, 64) == STATUS_DONE, "device write after mremap");
    CHECK(all_bytes(q + 4096, 64, 0x66), "the moved mapping shows it");
    unmap_all();
    munmap(q, 3 * 4096);
    printf("truncate-mremap ok\n");
}

/* MADV_DONTNEED and MADV_FREE on a pinned range succeed; the device keeps its page. */
static void check_madvise(void) {
    unsigned char *p = map_anon(2 * 4096), in[16];
    memset(p, 0x44, 2 * 4096);
    CHECK(dma_map(c, p, 0x500000, 2 * 4096) == 0, "MAP_DMA");
    CHECK(madvise(p, 4096, MADV_DONTNEED) == 0, "MADV_DONTNEED on a pinned page");
    CHECK(madvise(p + 4096, 4096, MADV_FREE) == 0, "MADV_FREE on a pinned page");
    CHECK(p[0] == 0, "the CPU gets a fresh zero page");
    CHECK(dev_read(0x500000, in, 16) == STATUS_DONE && all_bytes(in, 16, 0x44), "device: old page");
    CHECK(dev_write(0x501000, 0x55, 16) == STATUS_DONE, "device write");
    CHECK(all_bytes(p + 4096, 16, 0x55), "MADV_FREE left the pinned page mapped");
    /* An unreadable pinned page: the device keeps it, and nothing (no flush) touches it. */
    CHECK(mprotect(p + 4096, 4096, PROT_NONE) == 0, "mprotect PROT_NONE");
    CHECK(dev_read(0x501000, in, 16) == STATUS_DONE && all_bytes(in, 16, 0x55), "device reads it");
    unmap_all();
    CHECK(mprotect(p + 4096, 4096, PROT_READ | PROT_WRITE) == 0, "mprotect back");
    CHECK(dma_map(c, p, 0x500000, 2 * 4096) == 0, "MAP_DMA again");
    CHECK(mprotect(p, 2 * 4096, PROT_READ) == 0 && mprotect(p, 2 * 4096, PROT_NONE) == 0, "hide");
    CHECK(mprotect(p, 2 * 4096, PROT_READ | PROT_WRITE) == 0, "and show again");
    unmap_all();
    munmap(p, 2 * 4096);
    printf("madvise ok\n");
}

/* fork after MAP_DMA: the parent keeps the pinned page (the kernel copies it for the child),
 * so a parent write after fork is what the device reads, and the device's write is what the
 * parent sees. */
static void check_fork(void) {
    unsigned char *p = map_anon(4096), in[16];
    memset(p, 0x10, 4096);
    CHECK(dma_map(c, p, 0x600000, 4096) == 0, "MAP_DMA");
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        memset(p, 0x99, 4096); /* the child's own copy */
        _exit(p[0] == 0x99 ? 0 : 1);
    }
    int ws;
    CHECK(waitpid(child, &ws, 0) == child && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child");
    memset(p, 0x20, 16);
    CHECK(dev_read(0x600000, in, 16) == STATUS_DONE && all_bytes(in, 16, 0x20), "device sees the parent's write");
    CHECK(dev_write(0x600100, 0x30, 16) == STATUS_DONE && all_bytes(p + 0x100, 16, 0x30), "parent sees the device's");
    unmap_all();
    munmap(p, 4096);
    printf("fork ok\n");
}

/* The program's own mlock and mlockall survive MAP and UNMAP: VmLck before == after. */
static void check_mlock(void) {
    unsigned char *p = map_anon(16 * 4096);
    CHECK(mlock(p, 16 * 4096) == 0, "mlock");
    long before = status_kb("VmLck");
    CHECK(dma_map(c, p, 0x700000, 4 * 4096) == 0, "MAP_DMA");
    CHECK(status_kb("VmLck") == before, "MAP leaves VmLck (%ld -> %ld)", before, status_kb("VmLck"));
    unmap_all();
    CHECK(status_kb("VmLck") == before, "UNMAP leaves VmLck (%ld -> %ld)", before, status_kb("VmLck"));
    munlock(p, 16 * 4096);
    CHECK(mlockall(MCL_CURRENT) == 0, "mlockall");
    before = status_kb("VmLck");
    CHECK(dma_map(c, p, 0x700000, 16 * 4096) == 0, "MAP_DMA");
    unmap_all();
    CHECK(status_kb("VmLck") == before, "mlockall state kept (%ld -> %ld)", before, status_kb("VmLck"));
    munlockall();
    munmap(p, 16 * 4096);
    printf("mlock ok\n");
}

/* 65535 scattered one-page maps (every other page): all succeed, as in the kernel (no memory
 * region splitting, so vm.max_map_count never bites). */
static void check_scattered(void) {
    const long n = 65535;
    unsigned char *p = mmap(NULL, 2 * n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(p != MAP_FAILED, "reserve");
    for (long i = 0; i < n; i++)
        CHECK(dma_map(c, p + 2 * i * 4096, 0x10000000 + i * 4096, 4096) == 0, "map %ld of %ld", i + 1, n);
    long pin = status_kb("VmPin");
    CHECK(pin >= n * 4, "VmPin %ld kB", pin);
    unmap_all();
    munmap(p, 2 * n * 4096);
    printf("scattered ok\n");
}

/* A failed MAP_DMA leaves nothing pinned: READ|WRITE of PROT_READ memory is EFAULT. */
static void check_error_path(void) {
    unsigned char *p = mmap(NULL, 4 * 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED, "mmap");
    long pin = status_kb("VmPin"), lck = status_kb("VmLck");
    errno = 0;
    CHECK(dma_map(c, p, 0x800000, 4 * 4096) == -1 && errno == EFAULT, "RW map of read-only memory");
    CHECK(status_kb("VmPin") == pin && status_kb("VmLck") == lck, "nothing left pinned or locked");
    struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_READ,
        .vaddr = (uintptr_t)p, .iova = 0x800000, .size = 4 * 4096 };
    CHECK(ioctl(c, VFIO_IOMMU_MAP_DMA, &m) == 0, "a read-only map of it works");
    unsigned char in[8];
    CHECK(dev_read(0x800000, in, 8) == STATUS_DONE && all_bytes(in, 8, 0), "device reads zeros");
    unmap_all();
    munmap(p, 4 * 4096);
    printf("error-path ok\n");
}

/* Writable long-term pins of a shared mapping of a regular file are refused (Linux 6.5+);
 * read-only ones, and private mappings, are fine. */
static void check_file(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/type1-pins-file", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0 && ftruncate(fd, 8192) == 0, "file %s", path);
    unlink(path);
    unsigned char *s = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(s != MAP_FAILED, "mmap shared");
    errno = 0;
    CHECK(dma_map(c, s, 0x900000, 8192) == -1 && errno == EFAULT, "RW pin of a shared file mapping");
    struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_READ,
        .vaddr = (uintptr_t)s, .iova = 0x900000, .size = 8192 };
    CHECK(ioctl(c, VFIO_IOMMU_MAP_DMA, &m) == 0, "read-only pin of it");
    unmap_all();
    unsigned char *pv = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    CHECK(pv != MAP_FAILED && dma_map(c, pv, 0x900000, 8192) == 0, "RW pin of a private file mapping");
    unmap_all();
    munmap(s, 8192);
    munmap(pv, 8192);
    close(fd);
    printf("file ok\n");
}

/* mremap of a BAR2 mapping: the moved mapping is still device memory, and anonymous memory
 * put at the old address is ordinary RAM again. */
static void check_bar_mremap(void) {
    struct vfio_region_info r2;
    region(VFIO_PCI_BAR2_REGION_INDEX, &r2);
    unsigned char *bar = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, dev, r2.offset);
    CHECK(bar != MAP_FAILED, "mmap BAR2");
    unsigned char *moved = mremap(bar, 4 * 4096, 4 * 4096, MREMAP_MAYMOVE | MREMAP_FIXED, bar + (128 << 20));
    CHECK(moved != MAP_FAILED, "mremap BAR2");
    unsigned char *anon = mmap(bar, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(anon == bar, "anonymous memory at the old address");
    memset(anon, 0, 4 * 4096);
    CHECK(dma_map(c, moved, 0xa00000, 4 * 4096) == 0, "MAP_DMA of the moved BAR");
    CHECK(dma_map(c, anon, 0xb00000, 4 * 4096) == 0, "MAP_DMA of the anonymous memory");
    CHECK(dev_write(0xa00000, 0x3c, 16) == STATUS_DONE, "p2p write");
    unsigned char in[16];
    CHECK(pread(dev, in, 16, r2.offset) == 16 && all_bytes(in, 16, 0x3c), "it reached the BAR");
    CHECK(all_bytes(moved, 16, 0x3c), "the moved mapping shows it");
    CHECK(dev_write(0xb00000, 0x4d, 16) == STATUS_DONE, "write to the anonymous memory");
    CHECK(all_bytes(anon, 16, 0x4d), "it reached the anonymous memory");
    CHECK(pread(dev, in, 16, r2.offset) == 16 && all_bytes(in, 16, 0x3c), "and not the BAR");
    unmap_all();
    munmap(moved, 4 * 4096);
    munmap(anon, 4 * 4096);
    printf("bar-mremap ok\n");
}

/* Without io_uring (a seccomp filter refuses io_uring_setup, as container runtimes do), pins
 * are tracked by address: right while the memory stays mapped, a FAULT (never a write into
 * other memory) once it is gone, and a notice on stderr says so, once. */
static void block_io_uring(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = sizeof f / sizeof f[0], .filter = f };
    CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs");
    CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0, "seccomp");
}

static void check_no_uring(void) {
    unsigned char *p = map_anon(2 * 4096), in[16];
    CHECK(dma_map(c, p, 0xc00000, 2 * 4096) == 0, "MAP_DMA without io_uring");
    CHECK(dev_write(0xc00000, 0x12, 16) == STATUS_DONE && all_bytes(p, 16, 0x12), "DMA while mapped");
    CHECK(dev_read(0xc01000, in, 16) == STATUS_DONE && all_bytes(in, 16, 0xab), "and back");
    CHECK(munmap(p, 2 * 4096) == 0, "munmap");
    unsigned char *q = mmap(p, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(q == p, "remap");
    CHECK(dev_write(0xc00000, 0x34, 16) == STATUS_FAULT && rd32(REG_FAULT_REASON) == FAULT_UNMAPPED,
          "a lost page faults");
    CHECK(q[0] == 0, "the new memory is untouched");
    unmap_all();
    munmap(q, 2 * 4096);
    printf("no-uring ok\n");
}

/* RLIMIT_MEMLOCK without CAP_IPC_LOCK: a failed MAP leaves nothing charged, so a MAP of exactly
 * the limit succeeds and one page past it is ENOMEM, as in the kernel. */
static void check_rlimit(void) {
    unsigned char *ro = mmap(NULL, 4 * 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(ro != MAP_FAILED, "mmap");
    errno = 0;
    CHECK(dma_map(c, ro, 0xd00000, 4 * 4096) == -1 && errno == EFAULT, "EFAULT first");
    unsigned char *p = map_anon(17 * 4096);
    CHECK(dma_map(c, p, 0xe00000, 16 * 4096) == 0, "MAP of exactly RLIMIT_MEMLOCK");
    unmap_all();
    errno = 0;
    CHECK(dma_map(c, p, 0xe00000, 17 * 4096) == -1 && errno == ENOMEM, "one page past it");
    CHECK(dma_map(c, p, 0xe00000, 16 * 4096) == 0, "the limit again after the failure");
    unmap_all();
    munmap(p, 17 * 4096);
    munmap(ro, 4 * 4096);
    printf("rlimit ok\n");
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "all";
    int all = !strcmp(what, "all");
    if (!strcmp(what, "no-uring")) block_io_uring();
    if (!strcmp(what, "rlimit")) drop_ipc_lock(16 * 4096);
    setup();
    if (all || !strcmp(what, "remap")) check_remap();
    if (all || !strcmp(what, "live-update")) check_live_update();
    if (all || !strcmp(what, "truncate-mremap")) check_truncate_mremap();
    if (all || !strcmp(what, "madvise")) check_madvise();
    if (all || !strcmp(what, "fork")) check_fork();
    if (all || !strcmp(what, "mlock")) check_mlock();
    if (all || !strcmp(what, "error-path")) check_error_path();
    if (all || !strcmp(what, "bar-mremap")) check_bar_mremap();
    if (all || !strcmp(what, "file")) check_file(argc > 2 ? argv[2] : ".");
    if (!strcmp(what, "scattered")) check_scattered();
    if (!strcmp(what, "no-uring")) check_no_uring();
    if (!strcmp(what, "rlimit")) check_rlimit();
    close(dev);
    close(g);
    close(c);
    printf("pins ok\n");
    return 0;
}
