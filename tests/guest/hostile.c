/* A hostile driver for the emulated DMA device (docs/device.md), run INSIDE a Linux guest of an
 * unmodified QEMU that has the device assigned with -device vfio-pci (issue 14, SECURITY.md
 * "The guest"). Built with `gcc -static`, it is the payload of the guest's /init (root, /proc
 * and /sys mounted, no /dev needed): the device is reached through sysfs only.
 *
 * 1. Finds the device (1234:11e8), enables memory space and bus mastering, maps BAR0
 *    (resource0) and checks ID and LIVENESS.
 * 2. A correct DMA round trip with one of its own pages (mlock'ed, its guest physical address
 *    from /proc/self/pagemap: IOVA = GPA, QEMU maps guest RAM at its GPA), a fault, a read of
 *    the BIOS ROM and a refused write to it (QEMU maps ROM read-only: a permission fault), and
 *    peer-to-peer DMA with its own BAR2 (QEMU maps the BAR for the device at its bus address).
 * 3. Hostile phase, bounded in time and actions: random reads and writes of every width at
 *    random (also unaligned) BAR0 offsets, DMA programmed with edge-case addresses and
 *    lengths and random command bits, random STATUS writes, random bytes in config space
 *    0x7c..0xff (past the MSI capability at 0x50 and the MSI-X one at 0x70: an MSI enabled
 *    with a random address would have QEMU write the guest's own memory, as on hardware;
 *    proves nothing; for the same reason BAR0's MSI-X table and PBA, 0x800..0x83f and
 *    0xc00..0xc07, which QEMU emulates, are left alone). Never a device-to-memory transfer that could land in guest RAM outside its
 *    own page (the guest corrupting itself proves nothing): only the own page, BAR2 and
 *    addresses from 2^40 up (beyond the guest's physical address space) are written; any
 *    other such request loses TO_MEMORY and becomes a read. Where the outcome is known (own
 *    page and BAR2, far above RAM, bad requests, reads of guest RAM, W1C, read-only and
 *    reserved registers) it is checked. Then the round trip again.
 * 4. Resets the device through sysfs `reset` (the device must sit behind a bridge, e.g. a
 *    pcie-root-port: on the root bus Linux finds no reset method for it), checks the reset
 *    reached it (registers and buffer back to reset values) and repeats 1 and 2.
 *
 * Prints "hostile ok", or "hostile FAIL: <why>" and exits 1. The seed is random (printed);
 * `hostile_seed=N` on the kernel command line repeats a run; `hostile_secs=N` and
 * `hostile_actions=N` change the budget of step 3 (3 s or 30000 actions). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"
#include "../device_regs.h"

#define PAGE 4096u
/* Nothing of the guest lives at or above this (QEMU's TCG CPUs have 40 physical address bits). */
#define FAR (1ull << 40)
#define ROM 0xffff0000ull /* in the BIOS ROM (q35: the last 256 KiB below 4 GiB) */

/* Budget of the hostile phase (hostile_secs=N, hostile_actions=N on the kernel command line). */
static int64_t budget_ns = 3000000000ll;
static unsigned long budget_actions = 30000;

typedef uint16_t u16u __attribute__((aligned(1), may_alias));
typedef uint32_t u32u __attribute__((aligned(1), may_alias));
typedef uint64_t u64u __attribute__((aligned(1), may_alias));

static char bdf[256];
static char sysdir[300];
static volatile uint8_t *bar;
static int cfg = -1;
static uint8_t *page; /* own page, mlock'ed */
static uint64_t gpa;  /* its guest physical address */
static volatile uint8_t *bar2; /* BAR2 (device memory, resource2), mapped */
static uint64_t bar2_gpa;      /* its bus address: QEMU maps it for peer-to-peer DMA */
#define BAR2_SIZE (1u << 20)
/* Guest RAM ("System RAM" in /proc/iomem): QEMU maps all of it for the device. */
static uint64_t ram_start[32], ram_end[32], ram_top;
static int nram;

static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("hostile FAIL: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    sync();
    exit(1);
}

#define CHECK(cond, ...) do { if (!(cond)) fail(__VA_ARGS__); } while (0)

/* ---- random numbers (xorshift64*) ---- */
static uint64_t rng;
static uint64_t rnd(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545f4914f6cdd1dull;
}
static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000ll + t.tv_nsec;
}

/* ---- BAR0 access of 1, 2, 4 or 8 bytes, any alignment ---- */
static uint64_t rd(uint32_t off, int size) {
    volatile uint8_t *p = bar + off;
    switch (size) {
    case 1: return *p;
    case 2: return *(volatile u16u *)p;
    case 4: return *(volatile u32u *)p;
    default: return *(volatile u64u *)p;
    }
}
static void wr_raw(uint32_t off, int size, uint64_t v) {
    volatile uint8_t *p = bar + off;
    switch (size) {
    case 1: *p = (uint8_t)v; break;
    case 2: *(volatile u16u *)p = (uint16_t)v; break;
    case 4: *(volatile u32u *)p = (uint32_t)v; break;
    default: *(volatile u64u *)p = v; break;
    }
}
static uint32_t rd32(uint32_t off) { return (uint32_t)rd(off, 4); }
static uint64_t rd64(uint32_t off) { return rd(off, 8); }

/* Is a..a+len inside base..base+size? */
static int inside(uint64_t a, uint64_t len, uint64_t base, uint64_t size) {
    return a >= base && a - base <= size && len <= size - (a - base);
}

/* Where a range lies entirely in memory this program owns: the own page or BAR2. */
static volatile uint8_t *window(uint64_t a, uint64_t len) {
    if (inside(a, len, gpa, PAGE)) return page + (a - gpa);
    if (bar2_gpa && inside(a, len, bar2_gpa, BAR2_SIZE)) return bar2 + (a - bar2_gpa);
    return NULL;
}

/* Would a device-to-memory transfer of `len` bytes at `dst` stay inside the own page or BAR2,
 * or far above guest RAM? (A transfer the device must refuse as a bad request is not given
 * the benefit of the doubt: only the destination range counts.) */
static int to_memory_safe(uint64_t dst, uint64_t len) {
    if (len == 0) return 1;
    if (dst >= FAR) return 1; /* above RAM; past 2^64 it must be refused, not wrapped */
    if (dst >= ROM && dst + len <= ROM + PAGE) return 1; /* read-only: must be refused */
    return window(dst, len) != NULL;
}

static unsigned long blocked; /* to-memory requests turned into reads */

/* Every write goes through here: a write whose byte 0x20 carries START | TO_MEMORY is checked
 * against the registers it would run with, and loses TO_MEMORY if the destination could be
 * guest RAM outside the own page. A write that changes DMA registers and starts in one access
 * (QEMU may split it in any order) always loses TO_MEMORY. Returns the value written. */
static uint64_t wr(uint32_t off, int size, uint64_t v) {
    if (off <= REG_CMD && off + size > REG_CMD) {
        int at = (int)(REG_CMD - off) * 8;
        /* Never an interrupt: with no guest driver to take it, a pending INTx has QEMU (TCG)
         * trap the BARs to catch the EOI, which takes BAR2's peer-to-peer mapping away for
         * a while; that is QEMU's business, and the checks below expect BAR2 mapped. */
        v &= ~((uint64_t)CMD_IRQ << at);
        uint8_t b = (uint8_t)(v >> at);
        if ((b & CMD_START) && (b & CMD_TO_MEMORY)) {
            int safe;
            if (off < REG_CMD) {
                safe = 0;
            } else {
                uint64_t dst = rd64(REG_DMA_DST), len = rd64(REG_DMA_LEN);
                safe = to_memory_safe(dst, len);
            }
            if (!safe) {
                v &= ~((uint64_t)CMD_TO_MEMORY << at);
                blocked++;
            }
        }
    }
    wr_raw(off, size, v);
    return v;
}
static void wr32(uint32_t off, uint32_t v) { wr(off, 4, v); }
static void wr64(uint32_t off, uint64_t v) { wr(off, 8, v); }

/* ---- sysfs ---- */

static void find_device(void) {
    if (find_emulated_device(bdf, sizeof bdf, sysdir, sizeof sysdir) != 0)
        fail("no PCI device 1234:11e8 in /sys/bus/pci/devices");
    printf("hostile: device %s\n", bdf);
}

static void enable_device(void) {
    char p[400];
    if (cfg < 0) {
        snprintf(p, sizeof p, "%s/config", sysdir);
        cfg = open(p, O_RDWR);
        CHECK(cfg >= 0, "open %s: %s", p, strerror(errno));
    }
    uint16_t cmd;
    CHECK(pread(cfg, &cmd, 2, 4) == 2, "read COMMAND: %s", strerror(errno));
    cmd |= 0x6; /* memory space, bus master */
    CHECK(pwrite(cfg, &cmd, 2, 4) == 2, "write COMMAND: %s", strerror(errno));
    uint16_t back;
    CHECK(pread(cfg, &back, 2, 4) == 2 && (back & 0x6) == 0x6, "COMMAND 0x%x after enable", back);
}

static void map_bar0(void) {
    void *m = map_resource0(sysdir, BAR0_SIZE);
    CHECK(m != MAP_FAILED, "map %s/resource0: %s", sysdir, strerror(errno));
    bar = m;
}

static void check_id_liveness(void) {
    uint32_t id = rd32(REG_ID);
    CHECK(id == ID_VALUE, "ID 0x%08x, want 0x%08x", id, ID_VALUE);
    uint32_t pats[] = {0x12345678u, 0, 0xffffffffu, 0xa5a5a5a5u};
    for (unsigned i = 0; i < sizeof pats / sizeof *pats; i++) {
        wr32(REG_LIVENESS, pats[i]);
        uint32_t l = rd32(REG_LIVENESS);
        CHECK(l == ~pats[i], "LIVENESS 0x%08x after writing 0x%08x", l, pats[i]);
    }
}

/* BAR2: its bus address from sysfs `resource` (line 3) and a mapping of resource2. */
static void map_bar2(void) {
    char p[400], text[2048];
    snprintf(p, sizeof p, "%s/resource", sysdir);
    CHECK(read_file(p, text, sizeof text) > 0, "read %s", p);
    char *line = text;
    for (int i = 0; i < 2 && line; i++) line = strchr(line, '\n'), line = line ? line + 1 : NULL;
    CHECK(line, "no BAR2 line in %s", p);
    unsigned long long start = 0, end = 0;
    CHECK(sscanf(line, "%llx %llx", &start, &end) == 2 && end + 1 - start == BAR2_SIZE,
          "BAR2 resource %.60s", line);
    snprintf(p, sizeof p, "%s/resource2", sysdir);
    int fd = open(p, O_RDWR | O_SYNC);
    CHECK(fd >= 0, "open %s: %s", p, strerror(errno));
    void *m = mmap(NULL, BAR2_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(m != MAP_FAILED, "mmap resource2: %s", strerror(errno));
    close(fd);
    bar2 = m;
    bar2_gpa = start;
    printf("hostile: BAR2 at 0x%llx\n", start);
}

static void read_iomem(void) {
    FILE *f = fopen("/proc/iomem", "r");
    CHECK(f, "open /proc/iomem: %s", strerror(errno));
    char line[256];
    while (fgets(line, sizeof line, f) && nram < 32) {
        unsigned long long a, b;
        if (line[0] == ' ' || !strstr(line, ": System RAM")) continue;
        if (sscanf(line, "%llx-%llx", &a, &b) != 2 || b == 0) continue;
        ram_start[nram] = a, ram_end[nram] = b + 1, nram++;
        if (b + 1 > ram_top) ram_top = b + 1;
    }
    fclose(f);
    CHECK(nram > 0 && ram_top < FAR, "no System RAM in /proc/iomem (not root?)");
    printf("hostile: %d ranges of guest RAM, top 0x%" PRIx64 "\n", nram, ram_top);
}

/* Inside guest RAM above 1 MiB (below it, the BIOS areas come and go). */
static int in_ram(uint64_t a, uint64_t len) {
    for (int i = 0; i < nram; i++)
        if (a >= (1u << 20) && inside(a, len, ram_start[i], ram_end[i] - ram_start[i])) return 1;
    return 0;
}

static void own_page(void) {
    page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(page != MAP_FAILED, "mmap page");
    CHECK(mlock(page, PAGE) == 0, "mlock: %s", strerror(errno));
    memset(page, 0x5a, PAGE);
    char why[160];
    gpa = gpa_of(page, why, sizeof why);
    CHECK(gpa != 0, "%s", why);
    printf("hostile: own page at gpa 0x%" PRIx64 "\n", gpa);
}

/* Buffer bytes off..off+n, with aligned 64-bit reads (every access is a trip to the VMM). */
static void buf_read(uint32_t off, uint8_t *out, uint32_t n) {
    for (uint32_t q = off & ~7u; q < off + n; q += 8) {
        uint64_t v = rd64(BUFFER + q);
        for (uint32_t i = 0; i < 8; i++)
            if (q + i >= off && q + i < off + n) out[q + i - off] = (uint8_t)(v >> (8 * i));
    }
}

/* Programs and starts one transfer with aligned 64-bit writes; returns STATUS. */
static uint32_t dma(uint64_t src, uint64_t dst, uint64_t len, uint32_t cmd) {
    wr64(REG_DMA_SRC, src);
    wr64(REG_DMA_DST, dst);
    wr64(REG_DMA_LEN, len);
    wr32(REG_CMD, cmd | CMD_START);
    return rd32(REG_STATUS);
}

static void round_trip(const char *when) {
    static uint8_t want[PAGE], got[PAGE];
    uint32_t count0 = rd32(REG_DMA_COUNT);

    /* memory -> device: the page lands in the buffer */
    for (unsigned i = 0; i < PAGE; i++) page[i] = want[i] = (uint8_t)(i * 13 + 7 + when[0]);
    __sync_synchronize();
    uint32_t st = dma(gpa, 0, PAGE, 0);
    CHECK(st == STATUS_DONE, "%s: from-memory STATUS 0x%x (reason %u at 0x%" PRIx64 ")", when,
          st, rd32(REG_FAULT_REASON), rd64(REG_FAULT_IOVA));
    CHECK((rd32(REG_CMD) & CMD_START) == 0, "%s: START still set", when);
    for (unsigned i = 0; i < PAGE; i += 4) memcpy(got + i, (uint32_t[]){rd32(BUFFER + i)}, 4);
    CHECK(memcmp(got, want, PAGE) == 0, "%s: the buffer does not hold the page", when);

    /* device -> memory: a pattern written into the buffer lands in the page */
    for (unsigned i = 0; i < PAGE; i += 4) {
        uint32_t v = (uint32_t)(i * 0x01010101u) ^ 0xc3a50f1eu;
        memcpy(want + i, &v, 4);
        wr32(BUFFER + i, v);
    }
    memset(page, 0, PAGE);
    __sync_synchronize();
    st = dma(0, gpa, PAGE, CMD_TO_MEMORY);
    CHECK(st == STATUS_DONE, "%s: to-memory STATUS 0x%x (reason %u at 0x%" PRIx64 ")", when, st,
          rd32(REG_FAULT_REASON), rd64(REG_FAULT_IOVA));
    __sync_synchronize();
    CHECK(memcmp((const void *)page, want, PAGE) == 0, "%s: the page does not hold the buffer",
          when);

    /* partial, unaligned, no-snoop: page[100..1100] -> buffer[200..1200] */
    for (unsigned i = 0; i < PAGE; i++) page[i] = (uint8_t)(i ^ 0x3c);
    __sync_synchronize();
    st = dma(gpa + 100, 200, 1000, CMD_NO_SNOOP);
    CHECK(st == STATUS_DONE, "%s: partial STATUS 0x%x", when, st);
    buf_read(200, got, 1000);
    CHECK(memcmp(got, page + 100, 1000) == 0, "%s: partial transfer", when);
    CHECK(rd32(REG_DMA_COUNT) == count0 + 3, "%s: DMA_COUNT %u, want %u", when,
          rd32(REG_DMA_COUNT), count0 + 3);

    /* a fault: nothing is mapped far above guest RAM */
    st = dma(FAR + 0x1234, 0, 16, 0);
    CHECK(st == STATUS_FAULT, "%s: DMA at 2^40 STATUS 0x%x", when, st);
    CHECK(rd32(REG_FAULT_REASON) == FAULT_UNMAPPED, "%s: FAULT_REASON %u", when,
          rd32(REG_FAULT_REASON));
    CHECK(rd64(REG_FAULT_IOVA) == FAR + 0x1234, "%s: FAULT_IOVA 0x%" PRIx64, when,
          rd64(REG_FAULT_IOVA));
    wr32(REG_STATUS, STATUS_FAULT);
    CHECK(rd32(REG_STATUS) == 0, "%s: STATUS 0x%x after W1C", when, rd32(REG_STATUS));

    /* QEMU maps the BIOS ROM read-only (at the top of 4 GiB on q35): the device reads it, and
     * a write to it is a permission fault, nothing written. */
    st = dma(ROM, 0, 16, 0);
    CHECK(st == STATUS_DONE, "%s: read of the BIOS ROM: STATUS 0x%x (reason %u)", when, st,
          rd32(REG_FAULT_REASON));
    st = dma(0, ROM, 16, CMD_TO_MEMORY);
    CHECK(st == STATUS_FAULT && rd32(REG_FAULT_REASON) == FAULT_PERMISSION &&
              rd64(REG_FAULT_IOVA) == ROM,
          "%s: write to the read-only ROM: STATUS 0x%x reason %u at 0x%" PRIx64, when, st,
          rd32(REG_FAULT_REASON), rd64(REG_FAULT_IOVA));
    wr32(REG_STATUS, STATUS_DONE | STATUS_FAULT);

    /* peer to peer: BAR2 page 0 -> buffer, buffer -> BAR2 page 1 */
    for (unsigned i = 0; i < PAGE; i++) bar2[i] = want[i] = (uint8_t)(i * 5 + when[0]);
    __sync_synchronize();
    st = dma(bar2_gpa, 0, PAGE, 0);
    CHECK(st == STATUS_DONE, "%s: from BAR2: STATUS 0x%x (reason %u at 0x%" PRIx64 ")", when, st,
          rd32(REG_FAULT_REASON), rd64(REG_FAULT_IOVA));
    buf_read(0, got, PAGE);
    CHECK(memcmp(got, want, PAGE) == 0, "%s: the buffer does not hold BAR2", when);
    for (unsigned i = 0; i < PAGE; i++) bar2[PAGE + i] = 0;
    __sync_synchronize();
    st = dma(0, bar2_gpa + PAGE, PAGE, CMD_TO_MEMORY);
    CHECK(st == STATUS_DONE, "%s: to BAR2: STATUS 0x%x (reason %u at 0x%" PRIx64 ")", when, st,
          rd32(REG_FAULT_REASON), rd64(REG_FAULT_IOVA));
    for (unsigned i = 0; i < PAGE; i++) got[i] = bar2[PAGE + i];
    CHECK(memcmp(got, want, PAGE) == 0, "%s: BAR2 does not hold the buffer", when);

    /* Transfers running off the end of BAR2 into unmapped space (never RAM): the bytes before
     * the faulting page arrive, FAULT_IOVA is where the unmapped page starts. */
    uint64_t end = bar2_gpa + BAR2_SIZE;
    CHECK(!in_ram(end, PAGE) && !window(end, 1), "%s: what follows BAR2 is mapped", when);
    for (unsigned i = 0; i < 100; i++) bar2[BAR2_SIZE - 100 + i] = (uint8_t)(i + 1);
    for (unsigned i = 0; i < 200; i += 4) wr32(BUFFER + i, 0xeeeeeeee);
    __sync_synchronize();
    st = dma(end - 100, 0, 200, 0);
    CHECK(st == STATUS_FAULT && rd32(REG_FAULT_REASON) == FAULT_UNMAPPED &&
              rd64(REG_FAULT_IOVA) == end,
          "%s: read across the end of BAR2: STATUS 0x%x reason %u at 0x%" PRIx64, when, st,
          rd32(REG_FAULT_REASON), rd64(REG_FAULT_IOVA));
    buf_read(0, got, 200);
    for (unsigned i = 0; i < 200; i++)
        CHECK(got[i] == (i < 100 ? (uint8_t)(i + 1) : 0xee),
              "%s: read across the end of BAR2: buffer byte %u is 0x%x", when, i, got[i]);
    for (unsigned i = 0; i < 200; i += 4) wr32(BUFFER + i, 0x44332211u + i);
    for (unsigned i = 0; i < 100; i++) bar2[BAR2_SIZE - 100 + i] = 0;
    __sync_synchronize();
    wr64(REG_DMA_SRC, 0);
    wr64(REG_DMA_DST, end - 100);
    wr64(REG_DMA_LEN, 200);
    wr_raw(REG_CMD, 4, CMD_START | CMD_TO_MEMORY); /* past BAR2: not RAM, checked above */
    st = rd32(REG_STATUS);
    CHECK(st == STATUS_FAULT && rd32(REG_FAULT_REASON) == FAULT_UNMAPPED &&
              rd64(REG_FAULT_IOVA) == end,
          "%s: write across the end of BAR2: STATUS 0x%x reason %u at 0x%" PRIx64, when, st,
          rd32(REG_FAULT_REASON), rd64(REG_FAULT_IOVA));
    buf_read(0, got, 100);
    for (unsigned i = 0; i < 100; i++)
        CHECK(bar2[BAR2_SIZE - 100 + i] == got[i],
              "%s: write across the end of BAR2: byte %u not written", when, i);
    wr32(REG_STATUS, STATUS_FAULT);
    printf("hostile: %s: DMA round trip ok (own page and peer to peer)\n", when);
}

/* ---- hostile phase ---- */
static unsigned long n_reads, n_writes, n_dma, n_dma_done, n_dma_fault, n_status, n_cfg,
    n_checked, n_mismatch, n_noop_cmd;

static void mismatch(const char *fmt, ...) {
    n_mismatch++;
    if (n_mismatch > 8) return;
    va_list ap;
    va_start(ap, fmt);
    printf("hostile: mismatch: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static const int sizes[] = {1, 2, 4, 8};

static uint32_t random_offset(int size) {
    uint32_t off;
    switch (below(4)) {
    case 0: off = (uint32_t)below(0x40); break;                    /* registers */
    case 1: off = (uint32_t)below(BAR0_SIZE); break;               /* anywhere */
    case 2: off = BUFFER - 8 + (uint32_t)below(16); break;         /* the page edge */
    default: off = (uint32_t)(below(0x40) & ~(uint64_t)(size - 1)); /* aligned registers */
    }
    if (off > BAR0_SIZE - size) off = BAR0_SIZE - size;
    /* Not the MSI-X table and PBA (QEMU's; see the top). */
    if (off + size > MSIX_TABLE && off < MSIX_END) off = MSIX_END;
    return off;
}

static uint64_t random_value(void) {
    static const uint64_t edge[] = {0, 1, 0xff, 0xffff, 0xffffffffull, ~0ull, 0x80000000ull,
                                    CMD_START, CMD_START | CMD_TO_MEMORY,
                                    CMD_START | CMD_NO_SNOOP, STATUS_DONE | STATUS_FAULT};
    return below(2) ? rnd() : edge[below(sizeof edge / sizeof *edge)];
}

static void hostile_read(void) {
    int size = sizes[below(4)];
    uint32_t off = random_offset(size);
    uint64_t v = rd(off, size);
    n_reads++;
    if (off == REG_ID && size >= 4) {
        if ((uint32_t)v != ID_VALUE) mismatch("ID read 0x%08x", (uint32_t)v);
        n_checked++;
    } else if (off >= REG_RESERVED && off + size <= BUFFER) {
        if (v != 0) mismatch("reserved 0x%x/%d reads 0x%" PRIx64, off, size, v);
        n_checked++;
    }
}

static void hostile_write(void) {
    int size = sizes[below(4)];
    uint32_t off = random_offset(size);
    uint64_t v = wr(off, size, random_value());
    n_writes++;
    /* (QEMU splits an unaligned access into aligned ones: they reach the device too.) */
    uint64_t mask = size == 8 ? ~0ull : (1ull << (size * 8)) - 1;
    if (off >= BUFFER) {
        uint64_t back = rd(off, size);
        if (back != (v & mask))
            mismatch("buffer 0x%x/%d: wrote 0x%" PRIx64 " read 0x%" PRIx64, off, size, v & mask,
                     back);
        n_checked++;
    } else if (off >= REG_RESERVED && off + size <= BUFFER) {
        if (rd(off, size) != 0) mismatch("reserved 0x%x/%d not 0 after a write", off, size);
        n_checked++;
    } else if (off == REG_ID && size == 4) {
        if (rd32(REG_ID) != ID_VALUE) mismatch("ID writable");
        n_checked++;
    } else if (off == REG_LIVENESS && size == 4) {
        if (rd32(REG_LIVENESS) != (uint32_t)~v) mismatch("LIVENESS");
        n_checked++;
    } else if (off == REG_IRQ_VECTOR && size == 4) {
        if (rd32(REG_IRQ_VECTOR) != (uint32_t)v) mismatch("IRQ_VECTOR wrote 0x%x", (uint32_t)v);
        n_checked++;
    }
}

static void hostile_status(void) {
    uint32_t before = rd32(REG_STATUS);
    uint32_t v = (uint32_t)random_value();
    wr32(REG_STATUS, v);
    uint32_t after = rd32(REG_STATUS);
    n_status++;
    if (after != (before & ~(v & (STATUS_DONE | STATUS_FAULT))))
        mismatch("STATUS 0x%x, wrote 0x%x: 0x%x", before, v, after);
    n_checked++;
}

static void hostile_config(void) {
    int size = sizes[below(3)];
    uint32_t off = 0x7c + (uint32_t)below(0x84);
    if (off + size > 0x100) off = 0x100 - size;
    uint32_t v = (uint32_t)rnd();
    if (below(2)) {
        ssize_t r = pwrite(cfg, &v, size, off);
        if (r != size) mismatch("config write 0x%x/%d: %zd %s", off, size, r, strerror(errno));
    } else {
        ssize_t r = pread(cfg, &v, size, off);
        if (r != size) mismatch("config read 0x%x/%d: %zd %s", off, size, r, strerror(errno));
    }
    n_cfg++;
}

static uint64_t edge_addr(void) {
    uint64_t ram = ram_top;
    switch (below(20)) {
    case 0: return 0;
    case 1: return 4095;
    case 2: return 4097;
    case 3: return 1ull << 32;
    case 4: return ~0ull;
    case 5: return ~0ull - 4095;
    case 6: return gpa - 1;
    case 7: return gpa + 1;
    case 8: return gpa + PAGE;
    case 9: return gpa + PAGE - 1;
    case 10: return gpa - PAGE;
    case 11: return FAR;
    case 12: return FAR - 1;
    case 13: return 1ull << 63;
    case 14: return 0xfee00000ull; /* the LAPIC window */
    case 15: return below(ram);
    case 16: return below(2) ? gpa + below(PAGE) : bar2_gpa + below(BAR2_SIZE + 1);
    case 17: return (1ull << 32) - 4096 + below(8192);
    default: return rnd();
    }
}

static uint64_t edge_len(void) {
    switch (below(14)) {
    case 0: return 0;
    case 1: return 1;
    case 2: return 4095;
    case 3: return 4096;
    case 4: return 4097;
    case 5: return 8192;
    case 6: return 1ull << 32;
    case 7: return ~0ull;
    case 8: return ~0ull - 4095;
    case 9: return 1ull << 63;
    case 10: return rnd();
    default: return below(4097);
    }
}

static uint64_t edge_offset(void) {
    switch (below(8)) {
    case 0: return 0;
    case 1: return 4095;
    case 2: return 4096;
    case 3: return 4097;
    case 4: return ~0ull;
    case 5: return rnd();
    default: return below(4096);
    }
}

/* Random DMA: edge-case SRC/DST/LEN, random command bits; the outcome is checked where it is
 * known. Device-to-memory only into the own page, BAR2 or far above RAM. */
static void hostile_dma(void) {
    int to_mem = (int)below(2);
    uint64_t iova, off, len;
    if (to_mem) {
        off = edge_offset();
        len = edge_len();
        switch (below(6)) {
        case 0: iova = FAR + below(1ull << 20); break;
        case 1: iova = ~0ull - below(8192); break;
        case 2: iova = 1ull << 63; break;
        case 3: iova = FAR; break;
        case 4: iova = bar2_gpa + below(BAR2_SIZE + 1); break;
        default: iova = gpa + below(PAGE + 1); break;
        }
        if (!to_memory_safe(iova, len))
            len = below(2) ? (iova >= gpa && iova <= gpa + PAGE ? gpa + PAGE - iova
                                                               : bar2_gpa + BAR2_SIZE - iova)
                           : 0;
    } else {
        iova = edge_addr();
        off = edge_offset();
        len = edge_len();
    }
    uint64_t src = to_mem ? off : iova, dst = to_mem ? iova : off;
    uint32_t cmd = (to_mem ? CMD_TO_MEMORY : 0) | (below(2) ? CMD_NO_SNOOP : 0);
    if (below(4) == 0) cmd |= (uint32_t)rnd() & ~7u; /* random high bits */
    if (below(16) == 0) {                            /* no START: nothing may happen */
        uint32_t count = rd32(REG_DMA_COUNT);
        wr32(REG_CMD, (uint32_t)rnd() & ~CMD_START);
        if (rd32(REG_DMA_COUNT) != count) mismatch("a command without START ran");
        n_noop_cmd++;
        return;
    }
    if (below(2)) {
        wr64(REG_DMA_SRC, src);
        wr64(REG_DMA_DST, dst);
        wr64(REG_DMA_LEN, len);
    } else { /* the same in 32-bit halves */
        wr32(REG_DMA_SRC, (uint32_t)src);
        wr32(REG_DMA_SRC + 4, (uint32_t)(src >> 32));
        wr32(REG_DMA_DST, (uint32_t)dst);
        wr32(REG_DMA_DST + 4, (uint32_t)(dst >> 32));
        wr32(REG_DMA_LEN, (uint32_t)len);
        wr32(REG_DMA_LEN + 4, (uint32_t)(len >> 32));
    }
    uint32_t written = (uint32_t)wr(REG_CMD, 4, cmd | CMD_START);
    if (to_mem && !(written & CMD_TO_MEMORY)) to_mem = 0, iova = src, off = dst; /* blocked */
    n_dma++;
    uint32_t st = rd32(REG_STATUS), c = rd32(REG_CMD);
    if (c & CMD_START) mismatch("START reads back set (cmd 0x%x)", c);
    if (st != STATUS_DONE && st != STATUS_FAULT) {
        mismatch("STATUS 0x%x after a transfer", st);
        return;
    }
    if (st == STATUS_DONE)
        n_dma_done++;
    else
        n_dma_fault++;

    /* What the device must have done, where it is known. */
    int bad = off + len < off || off + len > BUFFER_SIZE || iova + len < iova;
    uint32_t reason = rd32(REG_FAULT_REASON);
    uint64_t fiova = rd64(REG_FAULT_IOVA);
    const char *dir = to_mem ? "to" : "from";
    if (bad) {
        if (st != STATUS_FAULT || reason != FAULT_BAD_REQUEST || fiova != iova)
            mismatch("bad request %s iova 0x%" PRIx64 " off 0x%" PRIx64 " len 0x%" PRIx64
                     ": STATUS 0x%x reason %u at 0x%" PRIx64,
                     dir, iova, off, len, st, reason, fiova);
        n_checked++;
    } else if (len == 0) {
        if (st != STATUS_DONE) mismatch("empty transfer: STATUS 0x%x", st);
        n_checked++;
    } else if (iova >= FAR) {
        if (st != STATUS_FAULT || reason != FAULT_UNMAPPED || fiova != iova)
            mismatch("%s iova 0x%" PRIx64 " len 0x%" PRIx64 ": STATUS 0x%x reason %u at 0x%" PRIx64,
                     dir, iova, len, st, reason, fiova);
        n_checked++;
    } else if (window(iova, len)) {
        static uint8_t got[PAGE];
        volatile uint8_t *mem = window(iova, len);
        if (st != STATUS_DONE) {
            mismatch("own memory %s 0x%" PRIx64 " len %" PRIu64 ": STATUS 0x%x reason %u", dir,
                     iova, len, st, reason);
        } else {
            buf_read((uint32_t)off, got, (uint32_t)len);
            __sync_synchronize();
            for (uint64_t i = 0; i < len; i++)
                if (got[i] != mem[i]) {
                    mismatch("own memory %s 0x%" PRIx64 " len %" PRIu64 ": byte %" PRIu64
                             " differs",
                             dir, iova, len, i);
                    break;
                }
        }
        n_checked++;
    } else if (!to_mem && in_ram(iova, len)) {
        if (st != STATUS_DONE)
            mismatch("read of guest RAM 0x%" PRIx64 " len %" PRIu64 ": STATUS 0x%x reason %u at "
                     "0x%" PRIx64,
                     iova, len, st, reason, fiova);
        n_checked++;
    }
    if (st == STATUS_FAULT && below(2)) wr32(REG_STATUS, STATUS_FAULT);
}

static void hostile(void) {
    int64_t t0 = now_ns();
    unsigned long n = 0;
    for (; n < budget_actions; n++) {
        if ((n & 63) == 0 && now_ns() - t0 > budget_ns) break;
        uint64_t r = below(100);
        if (r < 35)
            hostile_read();
        else if (r < 65)
            hostile_write();
        else if (r < 90)
            hostile_dma();
        else if (r < 97)
            hostile_status();
        else
            hostile_config();
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    printf("hostile: %lu actions in %.2f s: %lu reads, %lu writes, %lu dma (%lu done, %lu "
           "fault, %lu to-memory made reads), %lu commands without START, %lu status writes, "
           "%lu config accesses; %lu outcomes checked, %lu mismatches\n",
           n, secs, n_reads, n_writes, n_dma, n_dma_done, n_dma_fault, blocked, n_noop_cmd,
           n_status, n_cfg, n_checked, n_mismatch);
    /* The device still answers as itself. */
    CHECK(rd32(REG_ID) == ID_VALUE, "after the hostile phase: ID 0x%08x", rd32(REG_ID));
    CHECK(n_mismatch == 0, "%lu outcomes differ from docs/device.md (first ones above)",
          n_mismatch);
}

static void reset_device(void) {
    /* Leave state the reset must clear. */
    wr32(REG_LIVENESS, 0x0f0f0f0f);
    for (unsigned i = 0; i < 64; i += 4) wr32(BUFFER + i, 0xdeadbeef);
    uint32_t st = dma(FAR, 0, 8, 0);
    CHECK(st == STATUS_FAULT, "fault before reset: STATUS 0x%x", st);
    CHECK(rd32(REG_DMA_COUNT) != 0, "DMA_COUNT 0 before reset");

    char p[400], m[128] = "";
    snprintf(p, sizeof p, "%s/reset_method", sysdir);
    if (read_file(p, m, sizeof m) > 0) m[strcspn(m, "\n")] = 0;
    printf("hostile: resetting %s (reset_method: %s)\n", bdf, m[0] ? m : "?");
    snprintf(p, sizeof p, "%s/reset", sysdir);
    int fd = open(p, O_WRONLY);
    CHECK(fd >= 0, "open %s: %s (no reset method: is the device behind a bridge?)", p,
          strerror(errno));
    CHECK(write(fd, "1", 1) == 1, "reset: %s", strerror(errno));
    close(fd);
    munmap((void *)bar, BAR0_SIZE);
    bar = NULL;
}

/* Every register and the buffer are back to their reset values. */
static void check_reset_values(void) {
    CHECK(rd32(REG_ID) == ID_VALUE, "after reset: ID 0x%08x", rd32(REG_ID));
    CHECK(rd32(REG_LIVENESS) == 0xffffffffu, "after reset: LIVENESS 0x%08x",
          rd32(REG_LIVENESS));
    CHECK(rd32(REG_STATUS) == 0, "after reset: STATUS 0x%x", rd32(REG_STATUS));
    CHECK(rd32(REG_DMA_COUNT) == 0, "after reset: DMA_COUNT %u", rd32(REG_DMA_COUNT));
    CHECK(rd64(REG_DMA_SRC) == 0 && rd64(REG_DMA_DST) == 0 && rd64(REG_DMA_LEN) == 0,
          "after reset: DMA registers not 0");
    CHECK(rd64(REG_FAULT_IOVA) == 0 && rd32(REG_FAULT_REASON) == 0,
          "after reset: fault registers not 0");
    for (unsigned i = 0; i < BUFFER_SIZE; i += 8)
        CHECK(rd64(BUFFER + i) == 0, "after reset: buffer[0x%x] not 0", i);
    printf("hostile: reset values ok\n");
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    char cmdline[4096] = "";
    read_file("/proc/cmdline", cmdline, sizeof cmdline);
    char *s = strstr(cmdline, "hostile_seed=");
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall); /* the guest's RTC: differs from run to run */
    rng = s ? strtoull(s + 13, NULL, 0)
            : (uint64_t)wall.tv_sec * 1000003u ^ (uint64_t)now_ns() ^ (uint64_t)wall.tv_nsec << 20;
    if (!rng) rng = 1;
    if ((s = strstr(cmdline, "hostile_secs="))) budget_ns = strtoll(s + 13, NULL, 0) * 1000000000ll;
    if ((s = strstr(cmdline, "hostile_actions="))) budget_actions = strtoul(s + 16, NULL, 0);
    printf("hostile: seed %" PRIu64 ", budget %.0f s or %lu actions\n", rng,
           (double)budget_ns / 1e9, budget_actions);

    /* mlock'ed pages may still be migrated by compaction; keep the own page where it is. */
    int fd = open("/proc/sys/vm/compact_unevictable_allowed", O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "0", 1) != 1) printf("hostile: compact_unevictable_allowed not set\n");
        close(fd);
    }

    find_device();
    enable_device();
    map_bar0();
    check_id_liveness();
    read_iomem();
    own_page();
    map_bar2();
    int64_t t = now_ns();
    for (int i = 0; i < 2000; i++) (void)rd32(REG_ID);
    printf("hostile: a register read takes %.1f us\n", (double)(now_ns() - t) / 2000 / 1000);
    round_trip("before");
    hostile();
    round_trip("after hostile");
    reset_device();
    enable_device();
    map_bar0();
    check_reset_values();
    check_id_liveness();
    round_trip("after reset");
    printf("hostile ok\n");
    fflush(stdout);
    sync();
    return 0;
}
