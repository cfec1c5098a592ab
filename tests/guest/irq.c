/* The guest's own kernel driver takes the emulated device's interrupts (issue 11 item 3; the
 * device: docs/device.md, "Interrupts"). Run INSIDE a Linux guest of an unmodified QEMU that
 * has the device assigned with -device vfio-pci, as the payload of an /init that mounted /proc,
 * /sys and devtmpfs on /dev and loaded uio.ko and uio_pci_generic.ko. Built with `gcc -static`.
 *
 * 1. Finds the device (1234:11e8) and binds it to uio_pci_generic (new_id). The driver
 *    refuses a function whose INTx cannot be masked through COMMAND.INTX_DISABLE; its handler
 *    takes the interrupt when config STATUS.INTERRUPT is set and masks it (INTX_DISABLE), and
 *    counts it for /dev/uioN.
 * 2. Opens /dev/uioN, sets bus mastering, maps BAR0 (resource0) and takes one of its own pages
 *    (mlock'ed; IOVA = its guest physical address, from /proc/self/pagemap).
 * 3. Five times: unmask (a write of 1 to /dev/uioN where the driver has irqcontrol; this one
 *    has none in Linux 6.1, so, as DPDK does, by clearing COMMAND.INTX_DISABLE through the
 *    config file), a device-to-memory transfer into the own page with CMD_IRQ, poll() for the
 *    interrupt (5 s), the count read from /dev/uioN must be one more than before, the page must
 *    hold the bytes, then STATUS is cleared (DONE | FAULT), which lowers the line.
 * 4. A transfer without CMD_IRQ: no interrupt within 300 ms.
 * 5. /proc/interrupts counts the uio_pci_generic line at least as often.
 *
 * Prints "irq ok <count>", or "irq FAIL: <why>" (with the kernel's log lines about the
 * device, as the console is quiet) and exits 1. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "guest.h"
#include "../device_regs.h"

#define PAGE 4096u
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define COMMAND_MEMORY 0x2u
#define COMMAND_MASTER 0x4u
#define COMMAND_INTX_DISABLE 0x400u
#define STATUS_INTERRUPT 0x8u
#define ROUNDS 5

static char bdf[64];
static char sysdir[128];
static int cfg = -1;
static int uio = -1;
static char uio_name[32];
static volatile uint8_t *bar;
static uint8_t *page;
static uint64_t gpa;

/* The kernel's log lines that mention the device or uio (the console is quiet). */
static void dump_klog(void) {
    static char log[1 << 17];
    int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log, sizeof log - 1);
    if (n <= 0) return;
    log[n] = 0;
    for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n"))
        if ((bdf[0] && strstr(line, bdf)) || strstr(line, "uio")) printf("irq: dmesg: %s\n", line);
}

static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("irq FAIL: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    dump_klog();
    fflush(stdout);
    sync();
    exit(1);
}

#define CHECK(cond, ...) do { if (!(cond)) fail(__VA_ARGS__); } while (0)

static int64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}


static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t r = write(fd, text, strlen(text));
    int e = errno;
    close(fd);
    errno = e;
    return r == (ssize_t)strlen(text) ? 0 : -1;
}

static uint32_t rd32(uint32_t off) { return *(volatile uint32_t *)(bar + off); }
static void wr32(uint32_t off, uint32_t v) { *(volatile uint32_t *)(bar + off) = v; }
static void wr64(uint32_t off, uint64_t v) { *(volatile uint64_t *)(bar + off) = v; }

static uint16_t cfg16(unsigned off) {
    uint16_t v;
    CHECK(pread(cfg, &v, 2, off) == 2, "config read 0x%x: %s", off, strerror(errno));
    return v;
}
static void cfg16_set(unsigned off, uint16_t v) {
    CHECK(pwrite(cfg, &v, 2, off) == 2, "config write 0x%x: %s", off, strerror(errno));
}

static void find_device(void) {
    if (find_emulated_device(bdf, sizeof bdf, sysdir, sizeof sysdir) != 0)
        fail("no PCI device 1234:11e8 in /sys/bus/pci/devices");
    char p[512], irq[32] = "?";
    snprintf(p, sizeof p, "%s/irq", sysdir);
    if (read_file(p, irq, sizeof irq) > 0) irq[strcspn(irq, "\n")] = 0;
    printf("irq: device %s, irq %s\n", bdf, irq);
}

/* Binds the device to uio_pci_generic and finds its uio node. */
static void bind_uio(void) {
    char p[256], link[256];
    CHECK(access("/sys/bus/pci/drivers/uio_pci_generic", F_OK) == 0,
          "no uio_pci_generic driver (was uio_pci_generic.ko loaded?)");
    if (write_file("/sys/bus/pci/drivers/uio_pci_generic/new_id", "1234 11e8") < 0 &&
        errno != EEXIST)
        fail("new_id: %s", strerror(errno));
    snprintf(p, sizeof p, "%s/driver", sysdir);
    ssize_t n = readlink(p, link, sizeof link - 1);
    CHECK(n > 0, "%s is bound to no driver: uio_pci_generic refused it", bdf);
    link[n] = 0;
    CHECK(strstr(link, "uio_pci_generic"), "%s is bound to %s", bdf, link);
    snprintf(p, sizeof p, "%s/uio", sysdir);
    DIR *d = opendir(p);
    CHECK(d, "no %s: uio_pci_generic bound but registered no uio device", p);
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, "uio", 3)) snprintf(uio_name, sizeof uio_name, "%.20s", e->d_name);
    closedir(d);
    CHECK(uio_name[0], "no uioN under %s", p);
    snprintf(p, sizeof p, "/dev/%s", uio_name);
    uio = open(p, O_RDWR);
    CHECK(uio >= 0, "open %s: %s (devtmpfs not on /dev?)", p, strerror(errno));
    printf("irq: %s bound to uio_pci_generic as %s\n", bdf, p);
}

/* Memory space and bus mastering on (after /dev/uioN is open: the driver clears bus mastering
 * when it is closed). */
static void enable_device(void) {
    char p[256];
    snprintf(p, sizeof p, "%s/config", sysdir);
    cfg = open(p, O_RDWR);
    CHECK(cfg >= 0, "open %s: %s", p, strerror(errno));
    uint16_t cmd = cfg16(PCI_COMMAND) | COMMAND_MEMORY | COMMAND_MASTER;
    cfg16_set(PCI_COMMAND, cmd);
    uint16_t back = cfg16(PCI_COMMAND);
    CHECK((back & (COMMAND_MEMORY | COMMAND_MASTER)) == (COMMAND_MEMORY | COMMAND_MASTER),
          "COMMAND 0x%x after enable", back);
}

static void map_bar0(void) {
    void *m = map_resource0(sysdir, BAR0_SIZE);
    CHECK(m != MAP_FAILED, "map %s/resource0: %s", sysdir, strerror(errno));
    bar = m;
    CHECK(rd32(REG_ID) == ID_VALUE, "ID 0x%08x, want 0x%08x", rd32(REG_ID), ID_VALUE);
}

static void own_page(void) {
    int fd = open("/proc/sys/vm/compact_unevictable_allowed", O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "0", 1) != 1) printf("irq: compact_unevictable_allowed not set\n");
        close(fd);
    }
    page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(page != MAP_FAILED, "mmap page");
    CHECK(mlock(page, PAGE) == 0, "mlock: %s", strerror(errno));
    memset(page, 0x5a, PAGE);
    char why[160];
    gpa = gpa_of(page, why, sizeof why);
    CHECK(gpa != 0, "%s", why);
    printf("irq: own page at gpa 0x%" PRIx64 "\n", gpa);
}

/* The driver's event count, from sysfs (reading /dev/uioN would block without an event). */
static uint32_t event_count(void) {
    char p[128], v[32];
    snprintf(p, sizeof p, "/sys/class/uio/%s/event", uio_name);
    CHECK(read_file(p, v, sizeof v) > 0, "read %s: %s", p, strerror(errno));
    return (uint32_t)strtoul(v, NULL, 10);
}

/* Lets the device interrupt again: the driver's irqcontrol if it has one, else a config
 * write that clears COMMAND.INTX_DISABLE (the driver's handler set it). */
static int irqcontrol = -1;
static void unmask(void) {
    if (irqcontrol != 0) {
        int32_t one = 1;
        if (write(uio, &one, 4) == 4) {
            irqcontrol = 1;
            return;
        }
        CHECK(errno == ENOSYS, "write 1 to /dev/%s: %s", uio_name, strerror(errno));
        if (irqcontrol < 0)
            printf("irq: uio_pci_generic has no irqcontrol (ENOSYS): unmasking through "
                   "COMMAND.INTX_DISABLE\n");
        irqcontrol = 0;
    }
    uint16_t cmd = cfg16(PCI_COMMAND);
    if (cmd & COMMAND_INTX_DISABLE) cfg16_set(PCI_COMMAND, cmd & ~COMMAND_INTX_DISABLE);
}

/* Fills the device's buffer with `fill` bytes (1024 trapped writes: slow under TCG). */
static void fill_buffer(uint8_t fill) {
    for (unsigned i = 0; i < PAGE; i += 4) wr32(BUFFER + i, 0x01010101u * fill);
}

/* A 4 KiB device-to-memory transfer of the buffer into the own page. */
static uint32_t dma_to_page(uint32_t extra) {
    wr64(REG_DMA_SRC, 0);
    wr64(REG_DMA_DST, gpa);
    wr64(REG_DMA_LEN, PAGE);
    wr32(REG_CMD, CMD_START | CMD_TO_MEMORY | extra);
    return rd32(REG_STATUS);
}

/* poll() on /dev/uioN: 1 readable, 0 timed out. */
static int wait_irq(int ms) {
    struct pollfd p = {.fd = uio, .events = POLLIN};
    int r;
    do r = poll(&p, 1, ms); while (r < 0 && errno == EINTR);
    CHECK(r >= 0, "poll /dev/%s: %s", uio_name, strerror(errno));
    return r > 0 && (p.revents & POLLIN);
}

static unsigned long proc_interrupts(int *found) {
    FILE *f = fopen("/proc/interrupts", "r");
    CHECK(f, "open /proc/interrupts: %s", strerror(errno));
    char line[1024];
    unsigned long sum = 0;
    *found = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strstr(line, "uio_pci_generic")) continue;
        char *s = strchr(line, ':');
        if (!s) continue;
        s++;
        for (;;) {
            char *end;
            unsigned long v = strtoul(s, &end, 10);
            if (end == s) break;
            sum += v;
            s = end;
        }
        line[strcspn(line, "\n")] = 0;
        printf("irq: /proc/interrupts:%s\n", line);
        *found = 1;
    }
    fclose(f);
    return sum;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    find_device();
    bind_uio();
    enable_device();
    map_bar0();
    own_page();

    uint32_t count = event_count();
    printf("irq: event count %u at the start\n", count);
    for (int i = 0; i < ROUNDS; i++) {
        unmask();
        uint8_t fill = (uint8_t)(0x10 + i);
        fill_buffer(fill);
        int64_t t = now_ms();
        uint32_t st = dma_to_page(CMD_IRQ);
        CHECK(st == STATUS_DONE, "round %d: STATUS 0x%x after the transfer (reason %u)", i, st,
              rd32(REG_FAULT_REASON));
        CHECK(wait_irq(5000), "round %d: no interrupt within 5 s (config STATUS 0x%x, COMMAND "
              "0x%x)", i, cfg16(PCI_STATUS), cfg16(PCI_COMMAND));
        int64_t took = now_ms() - t;
        uint32_t got;
        CHECK(read(uio, &got, 4) == 4, "read /dev/%s: %s", uio_name, strerror(errno));
        CHECK(got == count + 1, "round %d: interrupt count %u, want %u", i, got, count + 1);
        count = got;
        for (unsigned j = 0; j < PAGE; j++)
            CHECK(page[j] == fill, "round %d: page[%u] = 0x%x, want 0x%x", i, j, page[j], fill);
        uint16_t cmd = cfg16(PCI_COMMAND), status = cfg16(PCI_STATUS);
        CHECK(cmd & COMMAND_INTX_DISABLE, "round %d: the handler did not mask (COMMAND 0x%x)", i,
              cmd);
        CHECK(status & STATUS_INTERRUPT, "round %d: STATUS.INTERRUPT clear while asserted", i);
        wr32(REG_STATUS, STATUS_DONE | STATUS_FAULT); /* lowers the line */
        CHECK(rd32(REG_STATUS) == 0, "round %d: STATUS 0x%x after clearing", i,
              rd32(REG_STATUS));
        CHECK(!(cfg16(PCI_STATUS) & STATUS_INTERRUPT),
              "round %d: STATUS.INTERRUPT still set after the line was lowered", i);
        printf("irq: round %d: interrupt %u, %" PRId64 " ms after START\n", i, got, took);
    }

    /* uio_pci_generic's own order: INTx re-enabled before the device's status is cleared. The
     * line is still asserted, so an interrupt comes again (a level); once STATUS is cleared,
     * the next transfer that asks for one interrupts again. */
    unmask();
    fill_buffer(0x66);
    CHECK(dma_to_page(CMD_IRQ) == STATUS_DONE, "re-enable round: transfer");
    CHECK(wait_irq(5000), "re-enable round: no first interrupt");
    uint32_t got;
    CHECK(read(uio, &got, 4) == 4 && got == count + 1, "re-enable round: count %u", got);
    count = got;
    unmask(); /* before clearing STATUS */
    CHECK(wait_irq(5000), "re-enable round: no interrupt again while still asserted");
    CHECK(read(uio, &got, 4) == 4 && got > count, "re-enable round: count %u", got);
    count = got;
    wr32(REG_STATUS, STATUS_DONE | STATUS_FAULT);
    unmask();
    while (wait_irq(200)) /* one more may be in flight from the still-asserted line */
        CHECK(read(uio, &count, 4) == 4, "read /dev/%s", uio_name);
    CHECK(dma_to_page(CMD_IRQ) == STATUS_DONE, "re-enable round: next transfer");
    CHECK(wait_irq(5000), "re-enable round: no interrupt for the next transfer");
    CHECK(read(uio, &got, 4) == 4 && got > count, "re-enable round: count %u", got);
    count = got;
    wr32(REG_STATUS, STATUS_DONE | STATUS_FAULT);
    printf("irq: re-enabled before clearing STATUS: interrupts keep coming\n");

    /* Without CMD_IRQ: no interrupt. */
    unmask();
    fill_buffer(0x77);
    uint32_t st = dma_to_page(0);
    CHECK(st == STATUS_DONE, "transfer without CMD_IRQ: STATUS 0x%x", st);
    CHECK(!wait_irq(300), "an interrupt without CMD_IRQ (count %u)", event_count());
    CHECK(event_count() == count, "count %u without CMD_IRQ, want %u", event_count(), count);
    CHECK(page[0] == 0x77, "transfer without CMD_IRQ did not land");
    wr32(REG_STATUS, STATUS_DONE | STATUS_FAULT);
    printf("irq: no interrupt without CMD_IRQ\n");

    int found;
    unsigned long n = proc_interrupts(&found);
    CHECK(found, "no uio_pci_generic line in /proc/interrupts");
    CHECK(n >= ROUNDS, "/proc/interrupts counts %lu on the uio_pci_generic line, want >= %d", n,
          ROUNDS);
    printf("irq ok %u\n", count);
    fflush(stdout);
    sync();
    return 0;
}
