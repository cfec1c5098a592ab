/* A hostile driver for the emulated NVMe controller (docs/device.md), run INSIDE a Linux guest
 * of an unmodified QEMU that has the function assigned with -device vfio-pci behind a PCIe
 * root port. Built with `gcc -static`; the payload of the guest's /init (proc, sysfs and
 * devtmpfs mounted; the in-kernel nvme driver has bound the function at boot).
 *
 * 1. Finds the function (1234:7e01), unbinds the nvme driver, turns on memory space and bus
 *    mastering, maps BAR0 (resource0).
 * 2. A known outcome: admin queues far above guest RAM (2^40: nothing is mapped there), the
 *    controller enabled and a doorbell rung: it cannot fetch, so CSTS.CFS must be set.
 * 3. Hostile phase (3 s or 20000 actions): random values in every register and doorbell
 *    (absurd queue sizes in AQA, random CC: enable, disable, shutdown) and random commands in
 *    the admin queue page. The guest must not corrupt itself through the device (that proves
 *    nothing), so the one own page the controller may write is the sink (page 1: the admin
 *    completion queue, and what Create I/O CQ and data PRPs may point at); every other PRP and
 *    queue base lies beyond guest RAM (nothing mapped: errors or CFS). Page 0 holds the admin
 *    commands and page 2 I/O commands of the same kind, which the controller only reads.
 *    BAR0's MSI-X table and PBA (0x2000..0x3fff), which QEMU emulates, are left alone.
 * 4. The controller disabled, the function reset through sysfs `reset` (behind the bridge:
 *    a secondary bus reset, which QEMU turns into VFIO_DEVICE_RESET), the nvme driver bound
 *    again: it must bring the controller up and give /dev/nvme0n1 back.
 *
 * Prints "nvme-hostile ok" or "nvme-hostile FAIL: <why>". */
#define _GNU_SOURCE
#include <stdarg.h>
#include <sys/mman.h>
#include <time.h>
#include "guest.h"

#define PAGE 4096u
#define FAR (1ull << 40)
#define NPAGES 3

static volatile uint8_t *bar;
static uint8_t *pages[NPAGES]; /* 0: admin SQ, 1: the sink (admin CQ, data), 2: an I/O SQ */
static uint64_t gpas[NPAGES];
static char bdf[256], sysdir[300];
static uint64_t x = 0x2545f4914f6cdd1dull;

static uint64_t rnd(void) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return x;
}

static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("nvme-hostile FAIL: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    exit(1);
}

static void w32(uint32_t off, uint32_t v) { *(volatile uint32_t *)(bar + off) = v; }
static uint32_t r32(uint32_t off) { return *(volatile uint32_t *)(bar + off); }
static void w64(uint32_t off, uint64_t v) {
    w32(off, (uint32_t)v);
    w32(off + 4, (uint32_t)(v >> 32));
}

static int write_str(const char *path, const char *s) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t r = write(fd, s, strlen(s));
    close(fd);
    return r == (ssize_t)strlen(s) ? 0 : -1;
}

/* Beyond guest RAM, at any dword offset. */
static uint64_t far(void) { return FAR + (rnd() % (1ull << 30) & ~3ull); }

/* Where the controller may write: the sink page, or beyond guest RAM. */
static uint64_t sink(void) { return rnd() % 2 ? gpas[1] + (rnd() % PAGE & ~3ull) : far(); }

/* A random command whose addresses are harmless: PRP1 the sink or far (an SQ base: page 2, a
 * CQ base: the sink), PRP2 far. */
static void random_command(uint8_t *cmd, int admin) {
    for (int i = 0; i < 64; i += 8) *(uint64_t *)(cmd + i) = rnd();
    cmd[0] %= admin ? 16 : 10;
    if (rnd() % 2) cmd[1] = 0;
    uint64_t prp1 = sink();
    if (admin && cmd[0] == 0x01) prp1 = rnd() % 2 ? gpas[2] : far();
    if (admin && cmd[0] == 0x05) {
        prp1 = rnd() % 2 ? gpas[1] : far();
        /* A completion queue in the sink fits in it: at most 256 entries of 16 bytes. */
        if (prp1 == gpas[1]) *(uint16_t *)(cmd + 42) = (uint16_t)(rnd() % 256);
    }
    if (cmd[0] == 0x01 || cmd[0] == 0x05) prp1 &= ~(uint64_t)(PAGE - 1);
    *(uint64_t *)(cmd + 24) = prp1;
    *(uint64_t *)(cmd + 32) = far();
}

static void enable_memory_and_master(void) {
    char p[400];
    snprintf(p, sizeof p, "%s/config", sysdir);
    int fd = open(p, O_RDWR);
    if (fd < 0) fail("open config: %s", strerror(errno));
    uint16_t cmd = 0;
    if (pread(fd, &cmd, 2, 4) != 2) fail("read COMMAND");
    cmd |= 0x6;
    if (pwrite(fd, &cmd, 2, 4) != 2) fail("write COMMAND");
    close(fd);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(void) {
    if (find_pci_function(0x1234, 0x7e01, bdf, sizeof bdf, sysdir, sizeof sysdir))
        fail("no NVMe function 1234:7e01");
    if (write_str("/sys/bus/pci/drivers/nvme/unbind", bdf)) fail("unbind nvme: %s", strerror(errno));
    enable_memory_and_master();
    bar = map_resource0(sysdir, 0x4000);
    if (bar == MAP_FAILED) fail("map resource0: %s", strerror(errno));
    char why[128];
    for (int i = 0; i < NPAGES; i++) {
        pages[i] = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
        if (pages[i] == MAP_FAILED) fail("mmap: %s", strerror(errno));
        memset(pages[i], 0, PAGE);
        gpas[i] = gpa_of(pages[i], why, sizeof why);
        if (!gpas[i]) fail("page %d: %s", i, why);
    }
    for (unsigned i = 0; i < PAGE / 64; i++) random_command(pages[2] + i * 64, 0);

    /* 2. Unreachable admin queues: CFS. */
    w32(0x14, 0);
    for (int i = 0; i < 1000 && (r32(0x1c) & 1); i++) usleep(1000);
    w32(0x24, 15 | 15 << 16);
    w64(0x28, FAR);
    w64(0x30, FAR + PAGE);
    w32(0x14, 1 | 6 << 16 | 4 << 20);
    w32(0x1000, 1);
    if (!(r32(0x1c) & 2)) fail("a controller that cannot fetch its admin queue does not report CFS (CSTS 0x%x)", r32(0x1c));
    printf("nvme-hostile: unreachable admin queue -> CFS\n");

    /* 3. Hostile phase. */
    double t0 = now();
    unsigned long n = 0, cfs = 0;
    for (; n < 20000 && now() - t0 < 3.0; n++) {
        uint64_t r = rnd();
        switch (r % 8) {
        case 0: { /* any register or doorbell, random value; queue bases get safe ones */
            uint32_t off = (uint32_t)(rnd() % 0x2000) & ~3u;
            if (off == 0x24) {
                uint32_t aqa = (uint32_t)rnd();
                if ((aqa >> 16 & 0xfff) > 255) w64(0x30, far());
                w32(0x24, aqa);
            } else if (off >= 0x28 && off < 0x30) w64(0x28, rnd() % 2 ? gpas[0] : far());
            else if (off >= 0x30 && off < 0x38) {
                /* The admin completion queue in the sink only with at most 256 entries. */
                if (rnd() % 2) {
                    w32(0x24, (r32(0x24) & 0xfff) | (uint32_t)(rnd() % 256) << 16);
                    w64(0x30, gpas[1]);
                } else {
                    w64(0x30, far());
                }
            }
            else w32(off, (uint32_t)rnd());
            break;
        }
        case 1: { /* absurd queue sizes (the admin CQ then moves beyond RAM) */
            uint32_t aqa = (uint32_t)rnd();
            if ((aqa >> 16 & 0xfff) > 255) w64(0x30, far());
            w32(0x24, aqa);
            break;
        }
        case 2: w32(0x14, (uint32_t)rnd() & 0x00ffc0f1); break; /* EN, SHN, IOSQES, IOCQES */
        case 3: w32(0x1000 + (uint32_t)(rnd() % 18) * 4, (uint32_t)rnd() % 70); break; /* doorbells */
        default: /* a random admin command at a random slot, then a doorbell */
            random_command(pages[0] + (rnd() % 64) * 64, 1);
            w32(0x1000, (uint32_t)(rnd() % 64));
            break;
        }
        if (r32(0x1c) & 2) {
            cfs++;
            if (rnd() % 4 == 0) { /* a controller reset, now and then */
                w32(0x14, 0);
                w32(0x24, 63 | 63 << 16);
                w64(0x28, gpas[0]);
                w64(0x30, gpas[1]);
            }
        }
    }
    printf("nvme-hostile: %lu actions, CFS seen %lu times\n", n, cfs);

    /* 4. Disable, reset the function, give it back to the driver. */
    w32(0x14, 0);
    munmap((void *)bar, 0x4000);
    char p[400];
    snprintf(p, sizeof p, "%s/reset", sysdir);
    if (write_str(p, "1")) fail("reset through sysfs: %s", strerror(errno));
    if (write_str("/sys/bus/pci/drivers/nvme/bind", bdf)) fail("bind nvme: %s", strerror(errno));
    for (int i = 0; i < 300 && access("/dev/nvme0n1", F_OK); i++) usleep(100000);
    if (access("/dev/nvme0n1", F_OK)) fail("the driver did not bring the controller back");
    printf("nvme-hostile ok\n");
    return 0;
}
