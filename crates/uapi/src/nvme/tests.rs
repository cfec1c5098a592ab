//! The controller driven the way a host driver drives it, over a bus of plain pages that
//! records every interrupt and refuses what is not mapped (or not writable).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::*;

#[derive(Default)]
struct Bus {
    pages: BTreeMap<u64, Vec<u8>>,
    read_only: BTreeSet<u64>,
    irqs: Vec<u16>,
    notes: Vec<String>,
    misuse: Vec<String>,
}

impl Bus {
    fn map(&mut self, iova: u64, n: u64) {
        for p in 0..n {
            self.pages.insert(iova / PAGE + p, vec![0; PAGE as usize]);
        }
    }

    fn write(&mut self, iova: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let a = iova + i as u64;
            self.pages.get_mut(&(a / PAGE)).expect("mapped")[(a % PAGE) as usize] = *b;
        }
    }

    fn read(&self, iova: u64, n: usize) -> Vec<u8> {
        (0..n as u64)
            .map(|i| {
                let a = iova + i;
                self.pages[&(a / PAGE)][(a % PAGE) as usize]
            })
            .collect()
    }
}

impl NvmeBus for Bus {
    fn dma(&mut self, iova: u64, buf: &mut [u8], to_memory: bool) -> Result<(), DmaFault> {
        if buf.is_empty() || iova % PAGE + buf.len() as u64 > PAGE {
            self.misuse
                .push(format!("dma of {} bytes at 0x{iova:x}", buf.len()));
        }
        let page = iova / PAGE;
        if to_memory && self.read_only.contains(&page) {
            return Err(DmaFault::Permission);
        }
        let p = self.pages.get_mut(&page).ok_or(DmaFault::Unmapped)?;
        let at = (iova % PAGE) as usize;
        if to_memory {
            p[at..at + buf.len()].copy_from_slice(buf);
        } else {
            buf.copy_from_slice(&p[at..at + buf.len()]);
        }
        Ok(())
    }

    fn interrupt(&mut self, vector: u16) {
        self.irqs.push(vector);
    }

    fn note(&mut self, what: String) {
        self.notes.push(what);
    }
}

const ASQ: u64 = 0x10_0000;
const ACQ: u64 = 0x11_0000;
const IOSQ: u64 = 0x12_0000;
const IOCQ: u64 = 0x13_0000;
const DATA: u64 = 0x100_0000;

/// Where a queue pair stands: `(sq base, sq size, sq tail, cq base, cq size, cq head, phase)`.
type QueuePair = (u64, u32, u32, u64, u32, u32, bool);

/// A host driver's view: the controller, the bus, and where each queue stands.
struct Host {
    c: Nvme,
    bus: Bus,
    q: BTreeMap<u16, QueuePair>,
    cid: u16,
}

fn reg_write(c: &mut Nvme, off: u64, v: &[u8]) -> bool {
    let mut b = v.to_vec();
    c.rw(off, &mut b, true).expect("BAR0").1
}

fn reg_read32(c: &mut Nvme, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.rw(off, &mut b, false).expect("BAR0");
    u32::from_le_bytes(b)
}

impl Host {
    fn new(blocks: u64) -> Host {
        let store = Arc::new(MemStore::new(blocks * LBA_SIZE));
        let mut c = Nvme::new(store, "T1SERIAL");
        // Bus mastering on.
        c.rw(region_offset(7) + 4, &mut [4, 0], true).unwrap();
        let mut bus = Bus::default();
        bus.map(ASQ, 1);
        bus.map(ACQ, 1);
        bus.map(IOSQ, 1);
        bus.map(IOCQ, 1);
        bus.map(DATA, 300);
        Host {
            c,
            bus,
            q: BTreeMap::new(),
            cid: 0,
        }
    }

    fn enable(&mut self) {
        reg_write(&mut self.c, reg::AQA, &(31u32 | 31 << 16).to_le_bytes());
        reg_write(&mut self.c, reg::ASQ, &(ASQ as u32).to_le_bytes());
        reg_write(
            &mut self.c,
            reg::ASQ + 4,
            &((ASQ >> 32) as u32).to_le_bytes(),
        );
        reg_write(&mut self.c, reg::ACQ, &ACQ.to_le_bytes());
        let cc = CC_EN | 6 << 16 | 4 << 20;
        reg_write(&mut self.c, reg::CC, &cc.to_le_bytes());
        assert_eq!(reg_read32(&mut self.c, reg::CSTS) & 3, CSTS_RDY);
        self.q.insert(0, (ASQ, 32, 0, ACQ, 32, 0, true));
    }

    /// Submits one command on queue `qid` (rings the doorbell) and returns its completion,
    /// `(dw0, status)`, or `None` if none was posted.
    fn submit(&mut self, qid: u16, mut cmd: [u8; 64]) -> Option<(u32, u16)> {
        self.cid = self.cid.wrapping_add(1);
        cmd[2..4].copy_from_slice(&self.cid.to_le_bytes());
        let (sqb, sqs, tail, ..) = self.q[&qid];
        self.bus.write(sqb + u64::from(tail) * 64, &cmd);
        let tail = (tail + 1) % sqs;
        self.q.get_mut(&qid).unwrap().2 = tail;
        let db = reg::DOORBELLS + u64::from(qid) * 8;
        if reg_write(&mut self.c, db, &tail.to_le_bytes()) {
            self.c.process(&mut self.bus);
        }
        self.reap(qid)
    }

    fn reap(&mut self, qid: u16) -> Option<(u32, u16)> {
        let (_, _, _, cqb, cqs, head, phase) = self.q[&qid];
        let e = self.bus.read(cqb + u64::from(head) * 16, 16);
        let st = u16::from_le_bytes([e[14], e[15]]);
        if (st & 1 == 1) != phase {
            return None;
        }
        assert_eq!(u16::from_le_bytes([e[12], e[13]]), self.cid, "command id");
        assert_eq!(u16::from_le_bytes([e[10], e[11]]), qid, "sq id");
        let head = (head + 1) % cqs;
        let q = self.q.get_mut(&qid).unwrap();
        q.5 = head;
        if head == 0 {
            q.6 = !q.6;
        }
        reg_write(
            &mut self.c,
            reg::DOORBELLS + u64::from(qid) * 8 + 4,
            &head.to_le_bytes(),
        );
        Some((u32::from_le_bytes(e[0..4].try_into().unwrap()), st >> 1))
    }

    fn make_io_queues(&mut self) {
        let mut cq = cmd(0x05);
        set_prp(&mut cq, IOCQ, 0);
        set_dw(&mut cq, 10, 1 | 63 << 16);
        set_dw(&mut cq, 11, 1 | 2 | 1 << 16);
        assert_eq!(self.submit(0, cq), Some((0, 0)));
        let mut sq = cmd(0x01);
        set_prp(&mut sq, IOSQ, 0);
        set_dw(&mut sq, 10, 1 | 63 << 16);
        set_dw(&mut sq, 11, 1 | 1 << 16);
        assert_eq!(self.submit(0, sq), Some((0, 0)));
        self.q.insert(1, (IOSQ, 64, 0, IOCQ, 64, 0, true));
    }

    fn rw(&mut self, op: u8, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> u16 {
        let mut c = cmd(op);
        set_dw(&mut c, 1, 1);
        set_prp(&mut c, prp1, prp2);
        set_dw(&mut c, 10, slba as u32);
        set_dw(&mut c, 11, (slba >> 32) as u32);
        set_dw(&mut c, 12, nlb - 1);
        self.submit(1, c).expect("completion").1
    }
}

fn cmd(op: u8) -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0] = op;
    c
}

fn set_dw(c: &mut [u8; 64], i: usize, v: u32) {
    c[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
}

fn set_prp(c: &mut [u8; 64], prp1: u64, prp2: u64) {
    c[24..32].copy_from_slice(&prp1.to_le_bytes());
    c[32..40].copy_from_slice(&prp2.to_le_bytes());
}

#[test]
fn enabling_with_valid_admin_queues_makes_the_controller_ready_and_bad_ones_fatal() {
    let mut h = Host::new(64);
    assert_eq!(reg_read32(&mut h.c, reg::VS), 0x0001_0400);
    let cap = {
        let mut b = [0u8; 8];
        h.c.rw(reg::CAP, &mut b, false).unwrap();
        u64::from_le_bytes(b)
    };
    assert_eq!(cap & 0xffff, u64::from(MAX_QUEUE_ENTRIES - 1), "MQES");
    assert_ne!(cap & 1 << 37, 0, "NVM command set");
    h.enable();
    // Disabling resets: RDY drops.
    reg_write(&mut h.c, reg::CC, &0u32.to_le_bytes());
    assert_eq!(reg_read32(&mut h.c, reg::CSTS) & 1, 0);
    // An admin submission queue that is not page-aligned cannot run: CFS, not RDY.
    reg_write(&mut h.c, reg::ASQ, &(ASQ as u32 + 8).to_le_bytes());
    reg_write(&mut h.c, reg::CC, &CC_EN.to_le_bytes());
    assert_eq!(reg_read32(&mut h.c, reg::CSTS) & 3, CSTS_CFS);
}

#[test]
fn identify_reports_the_controller_and_the_namespace_through_the_admin_queue() {
    let mut h = Host::new(2048);
    h.enable();
    let mut c = cmd(0x06);
    set_prp(&mut c, DATA, 0);
    set_dw(&mut c, 10, 1);
    assert_eq!(h.submit(0, c), Some((0, 0)));
    let id = h.bus.read(DATA, 4096);
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), NVME_VENDOR);
    assert_eq!(&id[4..12], b"T1SERIAL");
    assert_eq!(&id[24..43], b"type1 emulated NVMe");
    assert_eq!(id[77], MDTS);
    assert_eq!(
        u32::from_le_bytes(id[516..520].try_into().unwrap()),
        1,
        "NN"
    );
    assert_eq!(h.bus.irqs, vec![0], "the admin queue's vector");
    let mut c = cmd(0x06);
    set_dw(&mut c, 1, 1);
    set_prp(&mut c, DATA + 0x10, DATA + PAGE);
    assert_eq!(h.submit(0, c), Some((0, 0)));
    let ns = h.bus.read(DATA + 0x10, 4096);
    assert_eq!(
        u64::from_le_bytes(ns[0..8].try_into().unwrap()),
        2048,
        "NSZE"
    );
    assert_eq!(ns[130], 9, "512-byte blocks");
    // Namespace 2 does not exist.
    let mut c = cmd(0x06);
    set_dw(&mut c, 1, 2);
    set_prp(&mut c, DATA, 0);
    assert_eq!(
        h.submit(0, c).unwrap().1,
        cmd::sc::INVALID_NAMESPACE | cmd::sc::DNR
    );
}

#[test]
fn data_written_through_prp_lists_reads_back_and_reaches_the_store() {
    let mut h = Host::new(4096);
    h.enable();
    h.make_io_queues();
    let pattern: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    h.bus.write(DATA + PAGE, &pattern);
    // A 256 KiB write: PRP1 the first page, PRP2 a list whose first page ends after two
    // entries, so that the list continues on a second page.
    let list1 = DATA + 200 * PAGE + PAGE - 16;
    let list2 = DATA + 201 * PAGE;
    h.bus.write(list1, &(DATA + 2 * PAGE).to_le_bytes());
    h.bus.write(list1 + 8, &list2.to_le_bytes());
    for i in 0..62u64 {
        h.bus
            .write(list2 + i * 8, &(DATA + (3 + i) * PAGE).to_le_bytes());
    }
    assert_eq!(h.rw(0x01, 10, 512, DATA + PAGE, list1), 0);
    let mut stored = vec![0u8; pattern.len()];
    h.c.store.read_at(10 * LBA_SIZE, &mut stored).unwrap();
    assert!(stored == pattern, "the store holds what was written");
    // Read it back into other pages, starting at an offset inside the first page.
    let out = DATA + 100 * PAGE + 0x200;
    let list = DATA + 210 * PAGE;
    for i in 0..64u64 {
        h.bus
            .write(list + i * 8, &(DATA + (101 + i) * PAGE).to_le_bytes());
    }
    assert_eq!(h.rw(0x02, 10, 512, out, list), 0);
    assert!(h.bus.read(out, pattern.len()) == pattern, "read back");
    assert!(h.bus.misuse.is_empty(), "{:?}", h.bus.misuse);
}

#[test]
fn bad_commands_end_with_the_status_a_controller_reports_and_touch_nothing() {
    let mut h = Host::new(64);
    h.enable();
    h.make_io_queues();
    h.c.store.write_at(0, &[0xaa; 512]).unwrap();
    // Past the namespace.
    assert_eq!(
        h.rw(0x02, 60, 8, DATA, 0),
        cmd::sc::LBA_OUT_OF_RANGE | cmd::sc::DNR
    );
    // A second page whose PRP2 is not page-aligned.
    assert_eq!(
        h.rw(0x02, 0, 16, DATA, DATA + PAGE + 8),
        cmd::sc::INVALID_PRP_OFFSET | cmd::sc::DNR
    );
    // A write from an unmapped page: a data transfer error, and the block is unchanged.
    assert_eq!(
        h.rw(0x01, 0, 1, 0xdead_0000, 0),
        cmd::sc::DATA_TRANSFER_ERROR
    );
    let mut b = [0u8; 512];
    h.c.store.read_at(0, &mut b).unwrap();
    assert_eq!(b, [0xaa; 512]);
    // A read into a read-only page: the device's write is refused.
    h.bus.read_only.insert(DATA / PAGE);
    assert_eq!(h.rw(0x02, 0, 1, DATA, 0), cmd::sc::DATA_TRANSFER_ERROR);
    // More than MDTS.
    assert_eq!(
        h.rw(0x02, 0, 4096, DATA, 0),
        cmd::sc::LBA_OUT_OF_RANGE | cmd::sc::DNR
    );
    let mut h2 = Host::new(1 << 14);
    h2.enable();
    h2.make_io_queues();
    assert_eq!(
        h2.rw(0x02, 0, 4096, DATA, 0),
        cmd::sc::INVALID_FIELD | cmd::sc::DNR
    );
    // Unknown opcodes, on both queues.
    assert_eq!(
        h.submit(1, cmd(0x7f)).unwrap().1,
        cmd::sc::INVALID_OPCODE | cmd::sc::DNR
    );
    assert_eq!(
        h.submit(0, cmd(0x7f)).unwrap().1,
        cmd::sc::INVALID_OPCODE | cmd::sc::DNR
    );
    // A submission queue on a completion queue that does not exist; deleting a completion
    // queue that still has a submission queue.
    let mut sq = cmd(0x01);
    set_prp(&mut sq, IOSQ, 0);
    set_dw(&mut sq, 10, 2 | 7 << 16);
    set_dw(&mut sq, 11, 1 | 5 << 16);
    assert_eq!(
        h.submit(0, sq).unwrap().1,
        cmd::sc::CQ_INVALID | cmd::sc::DNR
    );
    let mut del = cmd(0x04);
    set_dw(&mut del, 10, 1);
    assert_eq!(
        h.submit(0, del).unwrap().1,
        cmd::sc::INVALID_QUEUE_DELETION | cmd::sc::DNR
    );
    // A completion queue whose vector does not exist.
    let mut cq = cmd(0x05);
    set_prp(&mut cq, IOCQ, 0);
    set_dw(&mut cq, 10, 2 | 7 << 16);
    set_dw(&mut cq, 11, 1 | (NVME_MSIX_VECTORS << 16));
    assert_eq!(
        h.submit(0, cq).unwrap().1,
        cmd::sc::INVALID_VECTOR | cmd::sc::DNR
    );
    assert!(h.bus.misuse.is_empty(), "{:?}", h.bus.misuse);
}

#[test]
fn asynchronous_event_requests_are_held_up_to_the_limit() {
    let mut h = Host::new(64);
    h.enable();
    for _ in 0..4 {
        assert_eq!(h.submit(0, cmd(0x0c)), None, "held");
    }
    assert_eq!(
        h.submit(0, cmd(0x0c)).unwrap().1,
        cmd::sc::AER_LIMIT | cmd::sc::DNR
    );
}

#[test]
fn a_completion_queue_the_controller_cannot_reach_is_fatal_until_reset() {
    let mut h = Host::new(64);
    h.enable();
    h.bus.pages.remove(&(ACQ / PAGE));
    assert_eq!(h.c.csts() & CSTS_CFS, 0);
    let mut c = cmd(0x06);
    set_prp(&mut c, DATA, 0);
    set_dw(&mut c, 10, 1);
    h.bus.write(ASQ, &c);
    reg_write(&mut h.c, reg::DOORBELLS, &1u32.to_le_bytes());
    h.c.process(&mut h.bus);
    assert_eq!(reg_read32(&mut h.c, reg::CSTS) & CSTS_CFS, CSTS_CFS);
    assert_eq!(h.bus.notes.len(), 1, "{:?}", h.bus.notes);
    // A controller reset recovers.
    h.bus.map(ACQ, 1);
    reg_write(&mut h.c, reg::CC, &0u32.to_le_bytes());
    h.enable();
    assert_eq!(h.c.csts() & CSTS_CFS, 0);
    assert_eq!(h.submit(0, c), Some((0, 0)));
}

#[test]
fn a_full_completion_queue_holds_submissions_until_the_host_consumes() {
    let mut h = Host::new(64);
    h.enable();
    // Fill the admin submission queue with 31 commands but do not reap: the completion queue
    // (32 entries) takes 31, then stops.
    for i in 0..31u32 {
        let mut c = cmd(0x0a);
        set_dw(&mut c, 10, 0x07);
        h.bus.write(ASQ + u64::from(i) * 64, &c);
    }
    reg_write(&mut h.c, reg::DOORBELLS, &31u32.to_le_bytes());
    h.c.process(&mut h.bus);
    let posted = (0..32u64)
        .filter(|i| h.bus.read(ACQ + i * 16 + 14, 1)[0] & 1 == 1)
        .count();
    assert_eq!(posted, 31);
    assert!(h.c.ready());
}

#[test]
fn shutdown_notification_completes() {
    let mut h = Host::new(64);
    h.enable();
    let cc = CC_EN | 6 << 16 | 4 << 20 | 1 << 14;
    reg_write(&mut h.c, reg::CC, &cc.to_le_bytes());
    assert_eq!(
        reg_read32(&mut h.c, reg::CSTS) & (3 << 2),
        CSTS_SHST_COMPLETE
    );
}

#[test]
fn the_number_of_queues_is_granted_up_to_the_controllers() {
    let mut h = Host::new(64);
    h.enable();
    let mut c = cmd(0x09);
    set_dw(&mut c, 10, 0x07);
    set_dw(&mut c, 11, 63 | 63 << 16);
    let max = u32::from(MAX_IO_QUEUES - 1);
    assert_eq!(h.submit(0, c), Some((max | max << 16, 0)));
}

#[test]
fn hostile_register_and_queue_traffic_never_panics_and_a_reset_recovers() {
    let mut h = Host::new(64);
    h.enable();
    h.make_io_queues();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let r = next();
        match r % 4 {
            0 => {
                let off = (next() % NVME_BAR0_SIZE) & !3;
                reg_write(&mut h.c, off, &(next() as u32).to_le_bytes());
            }
            1 => {
                let at = IOSQ + (next() % 64) * 64;
                let mut e = [0u8; 64];
                for b in e.iter_mut() {
                    *b = next() as u8;
                }
                h.bus.write(at, &e);
            }
            2 => {
                let at = ASQ + (next() % 32) * 64;
                let mut e = [0u8; 64];
                e[0] = (next() % 16) as u8;
                for b in e[4..].iter_mut() {
                    *b = next() as u8;
                }
                h.bus.write(at, &e);
            }
            _ => h.c.process(&mut h.bus),
        }
    }
    assert!(h.bus.misuse.is_empty(), "{:?}", h.bus.misuse);
    reg_write(&mut h.c, reg::CC, &0u32.to_le_bytes());
    h.c.reset();
    h.c.rw(region_offset(7) + 4, &mut [4, 0], true).unwrap();
    h.q.clear();
    for p in [ASQ, ACQ] {
        h.bus.pages.insert(p / PAGE, vec![0; PAGE as usize]);
    }
    h.enable();
    let mut c = cmd(0x06);
    set_prp(&mut c, DATA, 0);
    set_dw(&mut c, 10, 1);
    assert_eq!(h.submit(0, c), Some((0, 0)));
}
