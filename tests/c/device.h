/* The emulated DMA device (docs/device.md): register layout and helpers shared by the C
 * programs that drive it. Include after common.h. */
#pragma once
#include "common.h"
#include "../device_regs.h" /* BAR0 registers */

static int dev;
static uint64_t bar0;

static inline uint32_t rd32(uint64_t reg) {
    uint32_t v = 0;
    CHECK(pread(dev, &v, 4, bar0 + reg) == 4, "pread reg 0x%llx", (unsigned long long)reg);
    return v;
}
static inline uint64_t rd64(uint64_t reg) {
    uint64_t v = 0;
    CHECK(pread(dev, &v, 8, bar0 + reg) == 8, "pread reg 0x%llx", (unsigned long long)reg);
    return v;
}
static inline void wr32(uint64_t reg, uint32_t v) {
    CHECK(pwrite(dev, &v, 4, bar0 + reg) == 4, "pwrite reg 0x%llx", (unsigned long long)reg);
}
static inline void wr64(uint64_t reg, uint64_t v) {
    CHECK(pwrite(dev, &v, 8, bar0 + reg) == 8, "pwrite reg 0x%llx", (unsigned long long)reg);
}

/* One transfer; returns STATUS. */
static inline uint32_t dma(uint64_t src, uint64_t dst, uint64_t len, uint32_t cmd) {
    wr32(REG_STATUS, STATUS_DONE | STATUS_FAULT);
    wr64(REG_DMA_SRC, src);
    wr64(REG_DMA_DST, dst);
    wr64(REG_DMA_LEN, len);
    wr32(REG_CMD, cmd | CMD_START);
    CHECK((rd32(REG_CMD) & CMD_START) == 0, "START clears");
    return rd32(REG_STATUS);
}

static inline void region(uint32_t index, struct vfio_region_info *r) {
    memset(r, 0, sizeof *r);
    r->argsz = sizeof *r;
    r->index = index;
    CHECK(ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, r) == 0, "REGION_INFO %u", index);
}


/* Bits `mask` of `dev`'s config COMMAND register on or off, through the config region. */
static inline void set_command_bits(uint16_t mask, int on) {
    struct vfio_region_info cfg;
    region(VFIO_PCI_CONFIG_REGION_INDEX, &cfg);
    uint16_t cmd = 0;
    CHECK(pread(dev, &cmd, 2, cfg.offset + 4) == 2, "read COMMAND");
    cmd = on ? (cmd | mask) : (cmd & ~mask);
    CHECK(pwrite(dev, &cmd, 2, cfg.offset + 4) == 2, "write COMMAND");
}

/* COMMAND.BME (bus master enable) of `dev` on or off. */
static inline void set_bus_master(int on) { set_command_bits(4, on); }

/* The non-coherent group's device (0000:00:05.0) as `dev`, with `bar0` set and bus mastering
 * on. */
static inline void open_device(int group) {
    dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, "0000:00:05.0");
    CHECK(dev >= 0, "GET_DEVICE_FD");
    struct vfio_region_info r0;
    region(VFIO_PCI_BAR0_REGION_INDEX, &r0);
    bar0 = r0.offset;
    set_bus_master(1); /* as a driver does before the device may DMA */
}
