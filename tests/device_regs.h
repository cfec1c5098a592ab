/* The emulated DMA device's BAR 0 register map (docs/device.md; the model is
 * crates/uapi/src/device.rs): shared by the programs that run against the emulation on the
 * host (tests/c, through device.h) and inside a guest (tests/guest). Definitions only. The
 * guest kernel module (tests/guest/kmod) is built out of tree from its own directory and keeps
 * its own copy of the few it needs. */
#pragma once

#define BAR0_SIZE 0x2000u
#define REG_ID 0x00
#define REG_LIVENESS 0x04
#define REG_DMA_SRC 0x08
#define REG_DMA_DST 0x10
#define REG_DMA_LEN 0x18
#define REG_CMD 0x20
#define REG_STATUS 0x24
#define REG_FAULT_IOVA 0x28
#define REG_FAULT_REASON 0x30
#define REG_DMA_COUNT 0x34
#define REG_IRQ_VECTOR 0x38
#define REG_RESERVED 0x3c
#define MSIX_TABLE 0x800u
#define MSIX_END 0xc08u /* the table (4 x 16 bytes) at 0x800 and the PBA at 0xc00 */
#define BUFFER 0x1000u
#define BUFFER_SIZE 0x1000u
#define CMD_START 1u
#define CMD_TO_MEMORY 2u
#define CMD_NO_SNOOP 4u
#define CMD_IRQ 8u
#define STATUS_BUSY 1u
#define STATUS_DONE 2u
#define STATUS_FAULT 4u
#define FAULT_UNMAPPED 1u
#define FAULT_PERMISSION 2u
#define FAULT_BAD_REQUEST 4u
#define ID_VALUE 0x010000edu
