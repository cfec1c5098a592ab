/* Shared by the in-guest test programs (static, run as the guest's /init payload): sysfs files
 * and finding the emulated device (1234:11e8) among the guest's PCI functions. */
#pragma once
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The contents of a small file, NUL-terminated; its length, or -1. */
static int read_file(const char *path, char *buf, size_t n) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t r = read(fd, buf, n - 1);
    close(fd);
    if (r < 0) return -1;
    buf[r] = 0;
    return (int)r;
}

/* The device's BAR 0 (sysfs `resource0` under `sysdir`), `size` bytes mapped shared and
 * read-write; MAP_FAILED with errno set if it cannot be opened or mapped. */
static void *map_resource0(const char *sysdir, size_t size) {
    char p[512];
    snprintf(p, sizeof p, "%s/resource0", sysdir);
    int fd = open(p, O_RDWR | O_SYNC);
    if (fd < 0) return MAP_FAILED;
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    return m;
}

/* The guest-physical address of the (present, locked) 4 KiB page `page`, from
 * /proc/self/pagemap (root only); 0, with the reason in `why`, if it cannot be read. */
static uint64_t gpa_of(const void *page, char *why, size_t n) {
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0) {
        snprintf(why, n, "open /proc/self/pagemap: %s", strerror(errno));
        return 0;
    }
    uint64_t ent = 0;
    ssize_t r = pread(fd, &ent, 8, (off_t)((uintptr_t)page / 4096) * 8);
    close(fd);
    if (r != 8) {
        snprintf(why, n, "read pagemap");
        return 0;
    }
    if (!(ent >> 63)) {
        snprintf(why, n, "page not present (pagemap 0x%" PRIx64 ")", ent);
        return 0;
    }
    uint64_t pfn = ent & ((1ull << 55) - 1);
    if (pfn == 0) snprintf(why, n, "pagemap shows no PFN (not root?)");
    return pfn * 4096;
}

/* The address (`0000:01:00.0`) and sysfs directory of the guest's PCI function
 * vendor:device; 0 if found, -1 if there is none (or no sysfs). */
static inline int find_pci_function(unsigned vendor, unsigned device, char *bdf, size_t nb,
                                    char *sysdir, size_t ns) {
    DIR *d = opendir("/sys/bus/pci/devices");
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[512], v[32], dv[32];
        snprintf(p, sizeof p, "/sys/bus/pci/devices/%.60s/vendor", e->d_name);
        if (read_file(p, v, sizeof v) < 0) continue;
        snprintf(p, sizeof p, "/sys/bus/pci/devices/%.60s/device", e->d_name);
        if (read_file(p, dv, sizeof dv) < 0) continue;
        if (strtoul(v, NULL, 16) == vendor && strtoul(dv, NULL, 16) == device) {
            snprintf(bdf, nb, "%.60s", e->d_name);
            snprintf(sysdir, ns, "/sys/bus/pci/devices/%.60s", e->d_name);
            closedir(d);
            return 0;
        }
    }
    closedir(d);
    return -1;
}

/* The emulated DMA device (1234:11e8), as find_pci_function finds it. */
static inline int find_emulated_device(char *bdf, size_t nb, char *sysdir, size_t ns) {
    return find_pci_function(0x1234, 0x11e8, bdf, nb, sysdir, ns);
}
