/* Shared helpers of the C test programs (run under LD_PRELOAD=libtype1_preload.so). */
#pragma once
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/vfio.h>
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, " (errno %d %s)\n", errno, strerror(errno)); exit(1); } } while (0)

/* ioctl expected to fail with exactly `want`. */
#define EXPECT_ERRNO(want, call) do { errno = 0; int r_ = (call); \
    CHECK(r_ == -1 && errno == (want), "%s: want errno %d got r=%d", #call, (want), r_); } while (0)

static inline void *map_anon(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED, "mmap");
    memset(p, 0xab, len);
    return p;
}

static inline int open_group(int n) {
    char path[32];
    snprintf(path, sizeof path, "/dev/vfio/%d", n);
    int g = open(path, O_RDWR);
    CHECK(g >= 0, "open %s", path);
    struct vfio_group_status st = { .argsz = sizeof st };
    CHECK(ioctl(g, VFIO_GROUP_GET_STATUS, &st) == 0, "GET_STATUS");
    CHECK(st.flags & VFIO_GROUP_FLAGS_VIABLE, "group %d not viable", n);
    return g;
}

/* A "kB" field of /proc/self/status (VmLck, VmPin, ...), -1 if absent. */
static inline long status_kb(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    CHECK(f, "open status");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') v = atol(line + n + 1);
    fclose(f);
    return v;
}

/* A type1v2 container with group `n` in it; the group's fd goes to *group. */
static inline int open_container(int n, int *group) {
    int c = open("/dev/vfio/vfio", O_RDWR);
    CHECK(c >= 0, "open container");
    int g = open_group(n);
    CHECK(ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) == 0, "SET_CONTAINER");
    CHECK(ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0, "SET_IOMMU");
    *group = g;
    return c;
}

static inline int dma_map(int c, void *vaddr, uint64_t iova, uint64_t size) {
    struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        .vaddr = (uintptr_t)vaddr, .iova = iova, .size = size };
    return ioctl(c, VFIO_IOMMU_MAP_DMA, &m);
}

static inline int dma_unmap(int c, uint64_t iova, uint64_t size, uint64_t *unmapped) {
    struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .iova = iova, .size = size };
    int r = ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u);
    if (unmapped) *unmapped = u.size;
    return r;
}

/* RLIMIT_MEMLOCK of `limit` bytes and no CAP_IPC_LOCK: VFIO's pins then count against it. */
static inline void drop_ipc_lock(long limit) {
    struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
    struct __user_cap_data_struct d[2];
    CHECK(syscall(SYS_capget, &h, d) == 0, "capget");
    d[0].effective &= ~(1u << CAP_IPC_LOCK);
    d[0].permitted &= ~(1u << CAP_IPC_LOCK);
    CHECK(syscall(SYS_capset, &h, d) == 0, "capset");
    struct rlimit rl = { limit, limit };
    CHECK(setrlimit(RLIMIT_MEMLOCK, &rl) == 0, "setrlimit");
}
