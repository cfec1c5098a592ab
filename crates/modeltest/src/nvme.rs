//! Fuzzing harness for the emulated NVMe controller against a hostile driver (issue 24):
//! arbitrary commands, PRPs and register writes, through the uAPI layer's device model over
//! its fake platform.
//!
//! Setup: a container with group 1 (the non-coherent one), whose device is made an NVMe
//! controller over a 1 MiB namespace in memory; 16 pages of user memory mapped read-write at
//! IOVA `0x100000` and 1 page read-only at `0x200000`; bus mastering on; the controller
//! enabled with its admin queues in the first two mapped pages, and one I/O queue pair (CQ in
//! page 2, SQ in page 3). Then 72-byte records, each one action: an admin or I/O command of the
//! input's bytes (its PRPs often replaced by edge-case IOVAs: mapped, read-only, unmapped,
//! unaligned, near 2^64) submitted with a doorbell, a write of any BAR0 register or doorbell,
//! a config-space write, consuming completions, or a function reset. No input may panic; every
//! access the controller makes goes through the IOMMU (the fake platform records a transfer
//! across a page or outside the mapped memory as misuse).

use std::sync::Arc;

use type1_core::{MmId, TaskMemory, Vaddr, PAGE_SIZE};
use type1_uapi::{
    device::region_offset,
    nr::*,
    nvme::{reg, MemStore, CC_EN, NVME_BAR0_SIZE},
    testing::FakePlatform,
    Object, Vfio,
};

use crate::device::{RAM, RO_IOVA, RW_IOVA};
const RECORD: usize = 72;

/// IOVAs a hostile driver puts in PRP entries and queue bases.
const EDGES: [u64; 12] = [
    RW_IOVA + 4 * PAGE_SIZE,
    RW_IOVA + 5 * PAGE_SIZE + 0x200,
    RW_IOVA + 6 * PAGE_SIZE,
    RW_IOVA + 15 * PAGE_SIZE,
    RW_IOVA + 15 * PAGE_SIZE + 4092,
    RO_IOVA,
    RO_IOVA + 8,
    0,
    3,
    0x3000_0000,
    u64::MAX - 7,
    RW_IOVA + 7 * PAGE_SIZE + 1,
];

/// The host side of the harness: where each queue stands.
struct Host {
    v: Vfio<FakePlatform>,
    dev: u32,
    /// `(sq tail, sq size, cq head, cq phase)` of the admin (0) and I/O (1) pairs.
    q: [(u32, u32, u32, bool); 2],
    ok: usize,
}

impl Host {
    fn w32(&mut self, off: u64, val: u32) {
        let _ = self
            .v
            .device_rw(self.dev, off, &mut val.to_le_bytes(), true);
    }

    fn poke(&mut self, iova: u64, data: &[u8]) {
        // IOVA = RAM offset (the mappings below keep them in step).
        let _ = self
            .v
            .platform
            .mm_write(MmId(1), Vaddr(RAM + (iova - RW_IOVA)), data);
    }

    fn peek(&mut self, iova: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        let _ = self
            .v
            .platform
            .mm_read(MmId(1), Vaddr(RAM + (iova - RW_IOVA)), &mut b);
        b
    }

    /// Places `cmd` at the tail of pair `p` and rings its doorbell.
    fn submit(&mut self, p: usize, cmd: &[u8; 64]) {
        let sq = if p == 0 {
            RW_IOVA
        } else {
            RW_IOVA + 3 * PAGE_SIZE
        };
        let (tail, size, ..) = self.q[p];
        self.poke(sq + u64::from(tail) * 64, cmd);
        let tail = (tail + 1) % size;
        self.q[p].0 = tail;
        self.w32(reg::DOORBELLS + 8 * p as u64, tail);
    }

    /// Consumes the completions posted on pair `p`, counting the successful ones.
    fn reap(&mut self, p: usize) {
        let cq = if p == 0 {
            RW_IOVA + PAGE_SIZE
        } else {
            RW_IOVA + 2 * PAGE_SIZE
        };
        for _ in 0..64 {
            let (_, size, head, phase) = self.q[p];
            let e = self.peek(cq + u64::from(head) * 16, 16);
            let st = u16::from_le_bytes([e[14], e[15]]);
            if (st & 1 == 1) != phase {
                break;
            }
            if st >> 1 == 0 {
                self.ok += 1;
            }
            let head = (head + 1) % size;
            self.q[p].2 = head;
            if head == 0 {
                self.q[p].3 = !phase;
            }
            self.w32(reg::DOORBELLS + 8 * p as u64 + 4, head);
        }
    }
}

fn command(op: u8, dws: &[(usize, u32)], prp1: u64, prp2: u64) -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0] = op;
    c[24..32].copy_from_slice(&prp1.to_le_bytes());
    c[32..40].copy_from_slice(&prp2.to_le_bytes());
    for (i, v) in dws {
        c[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    c
}

/// Runs one fuzz input; returns how many commands completed successfully. `Err` says which
/// guarantee broke.
pub fn run_nvme_bytes(data: &[u8]) -> Result<usize, String> {
    let crate::device::Fixture {
        v, mut c, dfd, dev, ..
    } = crate::device::group1_device(Some(Arc::new(MemStore::new(1 << 20))))?;
    let mut h = Host {
        v,
        dev,
        q: [(0, 64, 0, true), (0, 64, 0, true)],
        ok: 0,
    };
    // A driver's bring-up: bus mastering, admin queues, enable, one I/O queue pair.
    h.w32(region_offset(7) + 4, 4);
    h.w32(reg::AQA, 63 | 63 << 16);
    h.w32(reg::ASQ, RW_IOVA as u32);
    h.w32(reg::ACQ, (RW_IOVA + PAGE_SIZE) as u32);
    h.w32(reg::CC, CC_EN | 6 << 16 | 4 << 20);
    h.submit(
        0,
        &command(
            0x05,
            &[(10, 1 | 63 << 16), (11, 1 | 2 | 1 << 16)],
            RW_IOVA + 2 * PAGE_SIZE,
            0,
        ),
    );
    h.submit(
        0,
        &command(
            0x01,
            &[(10, 1 | 63 << 16), (11, 1 | 1 << 16)],
            RW_IOVA + 3 * PAGE_SIZE,
            0,
        ),
    );
    h.reap(0);
    if h.ok != 2 {
        return Err(format!("bring-up: {} of 2 queue creations succeeded", h.ok));
    }
    h.ok = 0;
    for rec in data.chunks(RECORD).take(128) {
        if rec.len() < RECORD {
            break;
        }
        let mut cmd = [0u8; 64];
        cmd.copy_from_slice(&rec[8..72]);
        let pick = |b: u8| EDGES[usize::from(b) % EDGES.len()];
        if rec[1] & 1 == 1 {
            cmd[24..32].copy_from_slice(&pick(rec[2]).to_le_bytes());
        }
        if rec[1] & 2 == 2 {
            cmd[32..40].copy_from_slice(&pick(rec[3]).to_le_bytes());
        }
        match rec[0] % 8 {
            // An I/O command on the queue pair (its namespace usually the right one).
            0..=2 => {
                // Often a command a driver would send, with the input's blocks, counts and PRPs.
                if rec[1] & 4 == 4 {
                    cmd[0] = [0x00, 0x01, 0x02, 0x08, 0x09][usize::from(cmd[0]) % 5];
                    cmd[1] = 0;
                    cmd[4..8].copy_from_slice(&1u32.to_le_bytes());
                    let slba = u32::from_le_bytes([cmd[40], cmd[41], cmd[42], cmd[43]]) % 2048;
                    cmd[40..44].copy_from_slice(&slba.to_le_bytes());
                    cmd[44..48].fill(0);
                    let c12 = u32::from_le_bytes([cmd[48], cmd[49], cmd[50], cmd[51]]);
                    cmd[48..52].copy_from_slice(&((c12 & 0xf) | (c12 & 1 << 30)).to_le_bytes());
                }
                h.submit(1, &cmd);
                h.reap(1);
            }
            // An admin command.
            3 | 4 => {
                cmd[0] %= 16;
                if rec[1] & 8 == 8 {
                    cmd[1] = 0; // no fused operation, PRPs
                }
                h.submit(0, &cmd);
                h.reap(0);
            }
            // A BAR0 write anywhere: registers, doorbells (random values), the MSI-X table.
            5 => {
                let off = u64::from(u16::from_le_bytes([rec[2], rec[3]])) % NVME_BAR0_SIZE;
                let val = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
                h.w32(off & !3, val);
            }
            // A config-space write.
            6 => {
                let off = u64::from(rec[2]);
                let _ =
                    h.v.device_rw(dev, region_offset(7) + off, &mut [rec[3], rec[4]], true);
            }
            // Consume completions on both pairs, or reset the function.
            _ => {
                if rec[1] % 16 == 0 {
                    let obj = c.fd_object(dfd).ok_or("device fd lost")?;
                    let _ = h.v.ioctl(obj, VFIO_DEVICE_RESET, 0, &mut c);
                } else {
                    h.reap(0);
                    h.reap(1);
                }
            }
        }
        if !h.v.platform.dma_misuse.is_empty() {
            return Err(format!(
                "the controller misused DMA: {:?}",
                h.v.platform.dma_misuse
            ));
        }
    }
    h.v.close(Object::Device(dev));
    Ok(h.ok)
}
