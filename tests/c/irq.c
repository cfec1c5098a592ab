/* Interrupts as vfio-pci delivers them (issue 11 item 3), through eventfds registered with
 * VFIO_DEVICE_SET_IRQS: INTx fires when a transfer that asked for it (CMD_IRQ) ends, masks
 * itself (AUTOMASKED), fires again on unmask while still asserted and stays quiet once STATUS is
 * cleared; COMMAND.INTX_DISABLE masks and unmasks it as vfio-pci's virtual bit does; MSI's one vector fires once per transfer; the eventfd is the broker's to signal, so a
 * transfer started by a forked child signals the parent's eventfd. */
#define _GNU_SOURCE
#include "common.h"
#include "device.h"
#include <sys/eventfd.h>
#include <sys/wait.h>

static uint64_t count(int efd) {
    uint64_t n = 0;
    if (read(efd, &n, 8) != 8) return 0; /* EAGAIN: nothing signalled */
    return n;
}

/* SET_IRQS of vectors start..start+n with n eventfds (or one datum when n <= 1). */
static int set_block(uint32_t index, uint32_t flags, uint32_t start, uint32_t n, const int *fds) {
    char buf[sizeof(struct vfio_irq_set) + 4 * 8];
    struct vfio_irq_set *s = (struct vfio_irq_set *)buf;
    s->argsz = sizeof(struct vfio_irq_set) + 4 * (n ? n : 1);
    s->flags = flags;
    s->index = index;
    s->start = start;
    s->count = n;
    memcpy(s->data, fds, 4 * (n ? n : 1));
    return ioctl(dev, VFIO_DEVICE_SET_IRQS, s);
}

/* COMMAND.INTX_DISABLE (bit 10) on or off. */
static void set_intx_disable(int on) { set_command_bits(0x400, on); }

static int set_irqs(uint32_t index, uint32_t flags, uint32_t n, int fd) {
    return set_block(index, flags, 0, n, &fd);
}

int main(void) {
    alarm(60);
    int g;
    int c = open_container(1, &g);
    open_device(g);
    void *mem = map_anon(4096);
    CHECK(dma_map(c, mem, 0x100000, 4096) == 0, "MAP_DMA");

    int intx = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CHECK(set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 1, intx) == 0,
          "SET_IRQS INTx eventfd");
    CHECK(dma(0x100000, 0, 64, CMD_IRQ) == STATUS_DONE, "transfer");
    CHECK(count(intx) == 1, "INTx fired");
    CHECK(dma(0x100000, 0, 64, CMD_IRQ) == STATUS_DONE, "transfer while masked");
    CHECK(count(intx) == 0, "automasked: no second signal");
    CHECK(set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 1, 0) == 0, "unmask");
    CHECK(count(intx) == 1, "unmask while asserted fires again");
    wr32(REG_STATUS, STATUS_DONE | STATUS_FAULT);
    CHECK(set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 1, 0) == 0, "unmask");
    CHECK(count(intx) == 0, "cleared STATUS: nothing asserted");

    /* COMMAND.INTX_DISABLE is virtual, as in vfio-pci: setting it masks INTx, clearing it
     * unmasks, and a device still asserting its line interrupts again (a driver such as
     * uio_pci_generic re-enables INTx before it clears the device's status). */
    CHECK(dma(0x100000, 0, 64, CMD_IRQ) == STATUS_DONE, "transfer");
    CHECK(count(intx) == 1, "INTx fired");
    set_intx_disable(1);
    set_intx_disable(0);
    CHECK(count(intx) == 1, "INTX_DISABLE cleared while asserted: fires again");
    set_intx_disable(1);
    CHECK(set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 1, 0) == 0, "unmask");
    CHECK(count(intx) == 0, "INTX_DISABLE set: nothing, even unmasked");
    wr32(REG_STATUS, STATUS_DONE | STATUS_FAULT);
    set_intx_disable(0);
    CHECK(count(intx) == 0, "nothing asserted: clearing INTX_DISABLE signals nothing");

    /* A forked child drives the device; the parent's eventfd is signalled. */
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        alarm(20);
        CHECK(dma(0x100000, 0, 64, CMD_IRQ) == STATUS_DONE, "child transfer");
        _exit(0);
    }
    int ws;
    CHECK(waitpid(pid, &ws, 0) == pid && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child");
    CHECK(count(intx) == 1, "the child's transfer signalled the parent's eventfd");
    wr32(REG_STATUS, STATUS_DONE | STATUS_FAULT);
    CHECK(set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 1, 0) == 0, "unmask");

    /* MSI: one vector, once per transfer; no mask. One index at a time, as vfio-pci's
     * irq_type: MSI cannot be turned on while INTx is. */
    struct vfio_irq_info ii = { .argsz = sizeof ii, .index = VFIO_PCI_MSI_IRQ_INDEX };
    CHECK(ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &ii) == 0 && ii.count == 1, "MSI count %u", ii.count);
    int msi = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    EXPECT_ERRNO(EINVAL, set_irqs(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 1, msi));
    CHECK(set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0) == 0, "INTx off");
    EXPECT_ERRNO(EINVAL, set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 1, 0));
    CHECK(set_irqs(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 1, msi) == 0,
          "SET_IRQS MSI eventfd");
    CHECK(dma(0x100000, 0, 64, CMD_IRQ) == STATUS_DONE && dma(0x100000, 0, 64, CMD_IRQ) == STATUS_DONE, "two");
    CHECK(count(msi) == 2, "one MSI per transfer");
    CHECK(count(intx) == 0, "INTx quiet while MSI is on");
    EXPECT_ERRNO(ENOTTY, set_irqs(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, 1, 0));
    EXPECT_ERRNO(EBADF, set_irqs(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 1, 9999));
    CHECK(set_irqs(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0) == 0, "MSI off");
    CHECK(dma(0x100000, 0, 64, CMD_IRQ) == STATUS_DONE, "transfer after MSI off");
    CHECK(count(msi) == 0, "MSI torn down");

    /* MSI-X: four vectors, table and PBA in BAR0 (the capability at 0x70 says where); the
     * transfer signals the vector IRQ_VECTOR (0x38) names. Enabling with start + count vectors
     * fixes how many are on (NORESIZE): setting one past them is EINVAL until it is turned off
     * and on again with more. */
    struct vfio_irq_info xi = { .argsz = sizeof xi, .index = VFIO_PCI_MSIX_IRQ_INDEX };
    CHECK(ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &xi) == 0 && xi.count == 4 &&
          (xi.flags & VFIO_IRQ_INFO_EVENTFD) && (xi.flags & VFIO_IRQ_INFO_NORESIZE),
          "MSI-X count %u flags 0x%x", xi.count, xi.flags);
    uint8_t cap[12];
    struct vfio_region_info cfg;
    region(VFIO_PCI_CONFIG_REGION_INDEX, &cfg);
    CHECK(pread(dev, cap, 12, cfg.offset + 0x70) == 12 && cap[0] == 0x11 &&
          (cap[2] | cap[3] << 8) == 3 && (cap[4] | cap[5] << 8) == 0x800 && (cap[8] | cap[9] << 8) == 0xc00,
          "MSI-X capability: id 0x%x size-1 %u table 0x%x", cap[0], cap[2] | cap[3] << 8, cap[4] | cap[5] << 8);
    int x[4];
    for (int i = 0; i < 4; i++) x[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CHECK(set_block(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 2, x) == 0,
          "MSI-X on with two vectors");
    EXPECT_ERRNO(EINVAL, set_block(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 2, 1, &x[2]));
    EXPECT_ERRNO(EINVAL, set_irqs(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 1, msi));
    wr32(0x38, 1);
    CHECK(dma(0x100000, 0, 64, CMD_IRQ) == STATUS_DONE, "transfer on vector 1");
    CHECK(count(x[1]) == 1 && count(x[0]) == 0, "vector 1 fired, vector 0 did not");
    CHECK(set_block(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, x) == 0,
          "MSI-X off");
    CHECK(set_block(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 4, x) == 0,
          "MSI-X on with four vectors");
    wr32(0x38, 3);
    CHECK(dma(0x100000, 0, 64, CMD_IRQ) == STATUS_DONE && count(x[3]) == 1, "vector 3 fired");
    int minus1 = -1;
    CHECK(set_block(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 3, 1, &minus1) == 0,
          "vector 3's trigger dropped");
    CHECK(dma(0x100000, 0, 64, CMD_IRQ) == STATUS_DONE && count(x[3]) == 0, "vector 3 quiet");
    uint8_t yes[2] = { 0, 1 };
    CHECK(set_block(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, 1, 2, (const int *)yes) == 0,
          "loopback");
    CHECK(count(x[1]) == 0 && count(x[2]) == 1, "DATA_BOOL fires the true ones");
    EXPECT_ERRNO(ENOTTY, set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, 1, 0));
    CHECK(set_block(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, x) == 0,
          "MSI-X off");
    printf("irq ok\n");
    return 0;
}
