// SPDX-License-Identifier: GPL-2.0
/*
 * type1_msi: a guest kernel driver for type1's emulated device (1234:11e8, docs/device.md)
 * that takes the device's interrupt as MSI (issue 11 item 3). Loaded INSIDE a Linux guest of
 * an unmodified QEMU that has the device assigned with -device vfio-pci: QEMU virtualizes the
 * MSI capability, and when this driver enables MSI it registers an eventfd with
 * VFIO_DEVICE_SET_IRQS (index MSI) on the emulated device, which signals it at the end of a
 * transfer started with CMD_IRQ; QEMU then injects the message into the guest.
 *
 * At probe: enable the function, bus mastering, one MSI vector (MSI only: no INTx fallback),
 * a coherent DMA page, then ROUNDS device-to-memory transfers of the device buffer filled with
 * a per-round byte, each with CMD_IRQ; each must complete through the interrupt handler
 * within a second, end DONE, and leave the page filled. A transfer without CMD_IRQ must not
 * interrupt. The result is one kernel log line, "type1_msi: ok <n> irqs" or
 * "type1_msi: FAIL <why>", and /proc/interrupts shows the handler's count on its PCI-MSI
 * vector.
 *
 * With msix=1 it takes all four MSI-X vectors instead (QEMU emulates the table the capability
 * places in BAR0 and registers one eventfd per vector), and round r asks for vector
 * (r - 1) % 4 through the device's IRQ_VECTOR register: each interrupt must arrive on the
 * vector asked for. The log line is then "type1_msi: ok msix <n> irqs".
 */
#include <linux/completion.h>
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/module.h>
#include <linux/pci.h>

#define REG_ID 0x00
#define REG_DMA_SRC 0x08
#define REG_DMA_DST 0x10
#define REG_DMA_LEN 0x18
#define REG_CMD 0x20
#define REG_STATUS 0x24
#define REG_IRQ_VECTOR 0x38
#define BUFFER 0x1000
#define CMD_START 0x1
#define CMD_TO_MEMORY 0x2
#define CMD_IRQ 0x8
#define STATUS_DONE 0x2
#define STATUS_FAULT 0x4
#define ID_VALUE 0x010000ed
#define ROUNDS 5
#define VECTORS 4

static bool msix;
module_param(msix, bool, 0444);
MODULE_PARM_DESC(msix, "take the four MSI-X vectors instead of MSI");

struct t1;

struct t1_vector {
	struct t1 *t;
	int index;
};

struct t1 {
	void __iomem *bar;
	struct completion done;
	atomic_t irqs;
	u32 status;
	int vector;	/* the vector of the last interrupt */
	int nvec;
	struct t1_vector vectors[VECTORS];
};

static irqreturn_t t1_irq(int irq, void *data)
{
	struct t1_vector *v = data;
	struct t1 *t = v->t;

	t->vector = v->index;
	t->status = ioread32(t->bar + REG_STATUS);
	iowrite32(STATUS_DONE | STATUS_FAULT, t->bar + REG_STATUS);
	atomic_inc(&t->irqs);
	complete(&t->done);
	return IRQ_HANDLED;
}

static void t1_transfer(struct t1 *t, dma_addr_t dst, u8 fill, u32 extra)
{
	int i;

	for (i = 0; i < PAGE_SIZE; i += 4)
		iowrite32(0x01010101u * fill, t->bar + BUFFER + i);
	reinit_completion(&t->done);
	writeq(0, t->bar + REG_DMA_SRC);
	writeq(dst, t->bar + REG_DMA_DST);
	writeq(PAGE_SIZE, t->bar + REG_DMA_LEN);
	iowrite32(CMD_START | CMD_TO_MEMORY | extra, t->bar + REG_CMD);
}

static int t1_run(struct pci_dev *pdev, struct t1 *t)
{
	dma_addr_t dma;
	u8 *page;
	int round, i, before, err = 0;

	page = dma_alloc_coherent(&pdev->dev, PAGE_SIZE, &dma, GFP_KERNEL);
	if (!page) {
		pr_info("type1_msi: FAIL no DMA page\n");
		return -ENOMEM;
	}
	for (round = 1; round <= ROUNDS && !err; round++) {
		int want = (round - 1) % t->nvec;

		memset(page, 0, PAGE_SIZE);
		before = atomic_read(&t->irqs);
		t->vector = -1;
		iowrite32(want, t->bar + REG_IRQ_VECTOR);
		t1_transfer(t, dma, 0x40 + round, CMD_IRQ);
		if (!wait_for_completion_timeout(&t->done, HZ)) {
			pr_info("type1_msi: FAIL round %d: no interrupt in 1 s (STATUS 0x%x)\n",
				round, ioread32(t->bar + REG_STATUS));
			err = -ETIMEDOUT;
		} else if (atomic_read(&t->irqs) != before + 1 || t->status != STATUS_DONE) {
			pr_info("type1_msi: FAIL round %d: %d interrupts, STATUS 0x%x\n", round,
				atomic_read(&t->irqs) - before, t->status);
			err = -EIO;
		} else if (t->vector != want) {
			pr_info("type1_msi: FAIL round %d: interrupt on vector %d, not %d\n", round,
				t->vector, want);
			err = -EIO;
		}
		for (i = 0; i < PAGE_SIZE && !err; i++) {
			if (page[i] != 0x40 + round) {
				pr_info("type1_msi: FAIL round %d: byte %d is 0x%x\n", round, i,
					page[i]);
				err = -EIO;
			}
		}
	}
	if (!err) {
		/* Without CMD_IRQ the transfer completes silently. */
		before = atomic_read(&t->irqs);
		t1_transfer(t, dma, 0x7e, 0);
		if (wait_for_completion_timeout(&t->done, HZ / 3) ||
		    atomic_read(&t->irqs) != before) {
			pr_info("type1_msi: FAIL an interrupt without CMD_IRQ\n");
			err = -EIO;
		}
		iowrite32(STATUS_DONE | STATUS_FAULT, t->bar + REG_STATUS);
	}
	if (!err)
		pr_info("type1_msi: ok %s%d irqs\n", msix ? "msix " : "", atomic_read(&t->irqs));
	dma_free_coherent(&pdev->dev, PAGE_SIZE, page, dma);
	return err;
}

static int t1_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct t1 *t;
	int err, i;

	t = devm_kzalloc(&pdev->dev, sizeof(*t), GFP_KERNEL);
	if (!t)
		return -ENOMEM;
	init_completion(&t->done);
	err = pcim_enable_device(pdev);
	if (err) {
		pr_info("type1_msi: FAIL enable: %d\n", err);
		return err;
	}
	err = pcim_iomap_regions(pdev, BIT(0), "type1_msi");
	if (err) {
		pr_info("type1_msi: FAIL BAR0: %d\n", err);
		return err;
	}
	t->bar = pcim_iomap_table(pdev)[0];
	if (ioread32(t->bar + REG_ID) != ID_VALUE) {
		pr_info("type1_msi: FAIL ID 0x%x\n", ioread32(t->bar + REG_ID));
		return -ENODEV;
	}
	pci_set_master(pdev);
	t->nvec = msix ? VECTORS : 1;
	err = pci_alloc_irq_vectors(pdev, t->nvec, t->nvec, msix ? PCI_IRQ_MSIX : PCI_IRQ_MSI);
	if (err < 0) {
		pr_info("type1_msi: FAIL no %s vectors: %d\n", msix ? "MSI-X" : "MSI", err);
		return err;
	}
	for (i = 0; i < t->nvec; i++) {
		t->vectors[i].t = t;
		t->vectors[i].index = i;
		err = request_irq(pci_irq_vector(pdev, i), t1_irq, 0, "type1_msi", &t->vectors[i]);
		if (err) {
			pr_info("type1_msi: FAIL request_irq %d: %d\n", i, err);
			while (i--)
				free_irq(pci_irq_vector(pdev, i), &t->vectors[i]);
			pci_free_irq_vectors(pdev);
			return err;
		}
	}
	pr_info("type1_msi: %d %s vector(s) from irq %d\n", t->nvec, msix ? "MSI-X" : "MSI",
		pci_irq_vector(pdev, 0));
	pci_set_drvdata(pdev, t);
	t1_run(pdev, t);
	/* The IRQ stays registered until remove, so /proc/interrupts shows its count. */
	return 0;
}

static void t1_remove(struct pci_dev *pdev)
{
	struct t1 *t = pci_get_drvdata(pdev);
	int i;

	for (i = 0; i < t->nvec; i++)
		free_irq(pci_irq_vector(pdev, i), &t->vectors[i]);
	pci_free_irq_vectors(pdev);
}

static const struct pci_device_id t1_ids[] = {
	{ PCI_DEVICE(0x1234, 0x11e8) },
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, t1_ids);

static struct pci_driver t1_driver = {
	.name = "type1_msi",
	.id_table = t1_ids,
	.probe = t1_probe,
	.remove = t1_remove,
};
module_pci_driver(t1_driver);

MODULE_DESCRIPTION("Takes type1's emulated device interrupt as MSI or MSI-X (test driver)");
MODULE_LICENSE("GPL");
