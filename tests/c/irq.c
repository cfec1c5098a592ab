/* Interrupts as vfio-pci delivers them (issue 11 item 3), through eventfds registered with
 * VFIO_DEVICE_SET_IRQS: INTx fires when a transfer that asked for it (CMD_IRQ) ends, masks
 * itself (AUTOMASKED), fires again on unmask while still asserted and stays quiet once STATUS is
 * cleared; MSI's one vector fires once per transfer; the eventfd is the broker's to signal, so a
 * transfer started by a forked child signals the parent's eventfd. */
#define _GNU_SOURCE
#include "common.h"
#include "device.h"
#include <sys/eventfd.h>
#include <sys/wait.h>

#define CMD_IRQ 8u

static uint64_t count(int efd) {
    uint64_t n = 0;
    if (read(efd, &n, 8) != 8) return 0; /* EAGAIN: nothing signalled */
    return n;
}

static int set_irqs(uint32_t index, uint32_t flags, uint32_t n, int fd) {
    char buf[sizeof(struct vfio_irq_set) + 4];
    struct vfio_irq_set *s = (struct vfio_irq_set *)buf;
    s->argsz = sizeof buf;
    s->flags = flags;
    s->index = index;
    s->start = 0;
    s->count = n;
    memcpy(s->data, &fd, 4);
    return ioctl(dev, VFIO_DEVICE_SET_IRQS, s);
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

    /* MSI: one vector, once per transfer; no mask. */
    struct vfio_irq_info ii = { .argsz = sizeof ii, .index = VFIO_PCI_MSI_IRQ_INDEX };
    CHECK(ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &ii) == 0 && ii.count == 1, "MSI count %u", ii.count);
    int msi = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
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
    printf("irq ok\n");
    return 0;
}
