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
#define BUFFER 0x1000
#define CMD_START 0x1
#define CMD_TO_MEMORY 0x2
#define CMD_IRQ 0x8
#define STATUS_DONE 0x2
#define STATUS_FAULT 0x4
#define ID_VALUE 0x010000ed
#define ROUNDS 5

struct t1 {
	void __iomem *bar;
	struct completion done;
	atomic_t irqs;
	u32 status;
};

static irqreturn_t t1_irq(int irq, void *data)
{
	struct t1 *t = data;

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
		memset(page, 0, PAGE_SIZE);
		before = atomic_read(&t->irqs);
		t1_transfer(t, dma, 0x40 + round, CMD_IRQ);
		if (!wait_for_completion_timeout(&t->done, HZ)) {
			pr_info("type1_msi: FAIL round %d: no interrupt in 1 s (STATUS 0x%x)\n",
				round, ioread32(t->bar + REG_STATUS));
			err = -ETIMEDOUT;
		} else if (atomic_read(&t->irqs) != before + 1 || t->status != STATUS_DONE) {
			pr_info("type1_msi: FAIL round %d: %d interrupts, STATUS 0x%x\n", round,
				atomic_read(&t->irqs) - before, t->status);
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
		pr_info("type1_msi: ok %d irqs\n", atomic_read(&t->irqs));
	dma_free_coherent(&pdev->dev, PAGE_SIZE, page, dma);
	return err;
}

static int t1_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct t1 *t;
	int err, irq;

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
	err = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSI);
	if (err < 0) {
		pr_info("type1_msi: FAIL no MSI vector: %d\n", err);
		return err;
	}
	irq = pci_irq_vector(pdev, 0);
	err = request_irq(irq, t1_irq, 0, "type1_msi", t);
	if (err) {
		pr_info("type1_msi: FAIL request_irq: %d\n", err);
		pci_free_irq_vectors(pdev);
		return err;
	}
	pr_info("type1_msi: MSI vector %d (irq %d)\n", 0, irq);
	pci_set_drvdata(pdev, t);
	t1_run(pdev, t);
	/* The IRQ stays registered until remove, so /proc/interrupts shows its count. */
	return 0;
}

static void t1_remove(struct pci_dev *pdev)
{
	struct t1 *t = pci_get_drvdata(pdev);

	free_irq(pci_irq_vector(pdev, 0), t);
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

MODULE_DESCRIPTION("Takes type1's emulated device interrupt as MSI (test driver)");
MODULE_LICENSE("GPL");
