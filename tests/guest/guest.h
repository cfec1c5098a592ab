/* Shared by the in-guest test programs (static, run as the guest's /init payload): sysfs files
 * and finding the emulated device (1234:11e8) among the guest's PCI functions. */
#pragma once
#include <dirent.h>
#include <fcntl.h>
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

/* The emulated device's address (`0000:01:00.0`) and sysfs directory; 0 if found, -1 if the
 * guest has no PCI function 1234:11e8 (or no sysfs). */
static int find_emulated_device(char *bdf, size_t nb, char *sysdir, size_t ns) {
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
        if (strtoul(v, NULL, 16) == 0x1234 && strtoul(dv, NULL, 16) == 0x11e8) {
            snprintf(bdf, nb, "%.60s", e->d_name);
            snprintf(sysdir, ns, "/sys/bus/pci/devices/%.60s", e->d_name);
            closedir(d);
            return 0;
        }
    }
    closedir(d);
    return -1;
}
