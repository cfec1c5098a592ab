/* Block I/O on the guest's NVMe namespace (the emulated controller, driven by the guest
 * kernel's own nvme driver), with O_DIRECT so that every byte crosses the device:
 *
 *   nvme write MIB SEED    writes MIB MiB of the pattern of SEED from offset 0, fsyncs, reads
 *                          it back and compares; prints "nvme ok write" or "nvme FAIL ..."
 *   nvme verify MIB SEED   reads MIB MiB and compares with the pattern of SEED
 *   nvme bench SECS        4 KiB random reads for SECS seconds, then 1 MiB sequential reads
 *                          for SECS seconds; prints "nvme bench iops=N mbps=M"
 *
 * The device is /dev/nvme0n1 unless NVME_DEV names another; NVME_OFF=N moves write and verify
 * N MiB into it. Static (the guest has no libc). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1u << 20)

static off_t base; /* NVME_OFF, in bytes */

static uint64_t word(uint64_t seed, uint64_t i) {
    uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ull ^ seed * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 31;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 29);
}

static void fill(uint64_t *buf, uint64_t seed, uint64_t first_word) {
    for (uint64_t i = 0; i < CHUNK / 8; i++) buf[i] = word(seed, first_word + i);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int full_io(int fd, void *buf, size_t n, off_t off, int write) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = write ? pwrite(fd, (char *)buf + done, n - done, off + (off_t)done)
                          : pread(fd, (char *)buf + done, n - done, off + (off_t)done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        done += (size_t)r;
    }
    return 0;
}

/* Reads MIB MiB and compares them with the pattern; 0 if they match. */
static int verify(int fd, uint64_t mib, uint64_t seed, uint64_t *buf, uint64_t *want) {
    for (uint64_t c = 0; c < mib; c++) {
        if (full_io(fd, buf, CHUNK, base + (off_t)(c * CHUNK), 0)) {
            printf("nvme FAIL read at %" PRIu64 " MiB: %s\n", c, strerror(errno));
            return 1;
        }
        fill(want, seed, c * (CHUNK / 8));
        if (memcmp(buf, want, CHUNK)) {
            uint64_t i = 0;
            while (buf[i] == want[i]) i++;
            printf("nvme FAIL mismatch at byte %" PRIu64 ": %016" PRIx64 " != %016" PRIx64 "\n",
                   c * CHUNK + i * 8, buf[i], want[i]);
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *dev = getenv("NVME_DEV") ? getenv("NVME_DEV") : "/dev/nvme0n1";
    if (getenv("NVME_OFF")) base = (off_t)strtoull(getenv("NVME_OFF"), NULL, 0) * CHUNK;
    if (argc < 3) {
        printf("usage: nvme write|verify MIB SEED | nvme bench SECS\n");
        return 2;
    }
    int fd = open(dev, O_RDWR | O_DIRECT);
    if (fd < 0) {
        printf("nvme FAIL open %s: %s\n", dev, strerror(errno));
        return 1;
    }
    uint64_t *buf, *want;
    if (posix_memalign((void **)&buf, 4096, CHUNK) || posix_memalign((void **)&want, 4096, CHUNK)) {
        printf("nvme FAIL no memory\n");
        return 1;
    }
    if (!strcmp(argv[1], "bench")) {
        double secs = atof(argv[2]);
        off_t size = lseek(fd, 0, SEEK_END);
        if (size < (off_t)CHUNK) {
            printf("nvme FAIL size %lld\n", (long long)size);
            return 1;
        }
        uint64_t blocks = (uint64_t)size / 4096, x = 88172645463325252ull, n = 0;
        double t0 = now(), t;
        do {
            for (int k = 0; k < 64; k++, n++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                if (full_io(fd, buf, 4096, (off_t)((x % blocks) * 4096), 0)) {
                    printf("nvme FAIL random read: %s\n", strerror(errno));
                    return 1;
                }
            }
        } while ((t = now()) - t0 < secs);
        double iops = (double)n / (t - t0);
        uint64_t chunks = (uint64_t)size / CHUNK, m = 0;
        t0 = now();
        do {
            if (full_io(fd, buf, CHUNK, (off_t)((m % chunks) * CHUNK), 0)) {
                printf("nvme FAIL sequential read: %s\n", strerror(errno));
                return 1;
            }
            m++;
        } while ((t = now()) - t0 < secs);
        printf("nvme bench iops=%.0f mbps=%.1f\n", iops, (double)m * CHUNK / 1e6 / (t - t0));
        return 0;
    }
    if (argc < 4) {
        printf("usage: nvme write|verify MIB SEED\n");
        return 2;
    }
    uint64_t mib = strtoull(argv[2], NULL, 0), seed = strtoull(argv[3], NULL, 0);
    if (!strcmp(argv[1], "write")) {
        double t0 = now();
        for (uint64_t c = 0; c < mib; c++) {
            fill(buf, seed, c * (CHUNK / 8));
            if (full_io(fd, buf, CHUNK, base + (off_t)(c * CHUNK), 1)) {
                printf("nvme FAIL write at %" PRIu64 " MiB: %s\n", c, strerror(errno));
                return 1;
            }
        }
        if (fsync(fd)) {
            printf("nvme FAIL fsync: %s\n", strerror(errno));
            return 1;
        }
        double t1 = now();
        if (verify(fd, mib, seed, buf, want)) return 1;
        printf("nvme ok write %" PRIu64 " MiB (%.1f s write, %.1f s read back)\n", mib, t1 - t0,
               now() - t1);
        return 0;
    }
    if (!strcmp(argv[1], "verify")) {
        if (verify(fd, mib, seed, buf, want)) return 1;
        printf("nvme ok verify %" PRIu64 " MiB\n", mib);
        return 0;
    }
    printf("nvme FAIL unknown mode %s\n", argv[1]);
    return 2;
}
