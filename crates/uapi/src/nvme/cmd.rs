//! The commands of the emulated NVMe controller: admin (Identify, queue creation and
//! deletion, features, log pages, Abort, Asynchronous Event Request) and NVM I/O (Read, Write,
//! Flush, Write Zeroes, Dataset Management), with their data moved through PRP entries and
//! lists. Every host address here is an IOVA reached through [`NvmeBus::dma`]; nothing in a
//! command is trusted (a queue id, a size, a PRP pointer): each is checked and a bad one ends
//! the command with the status a controller reports for it.

use super::{
    Cq, Nvme, NvmeBus, Sq, LBA_SIZE, MAX_IO_QUEUES, MAX_QUEUE_ENTRIES, MDTS, NVME_DEVICE,
    NVME_MSIX_VECTORS, NVME_VENDOR, PAGE,
};

/// Status codes: `SCT << 8 | SC`, with the do-not-retry bit where retrying cannot help.
pub(crate) mod sc {
    pub const SUCCESS: u16 = 0x000;
    pub const INVALID_OPCODE: u16 = 0x001;
    pub const INVALID_FIELD: u16 = 0x002;
    pub const DATA_TRANSFER_ERROR: u16 = 0x004;
    pub const INTERNAL: u16 = 0x006;
    pub const INVALID_NAMESPACE: u16 = 0x00b;
    pub const INVALID_PRP_OFFSET: u16 = 0x013;
    pub const LBA_OUT_OF_RANGE: u16 = 0x080;
    pub const CQ_INVALID: u16 = 0x100;
    pub const INVALID_QID: u16 = 0x101;
    pub const INVALID_QSIZE: u16 = 0x102;
    pub const AER_LIMIT: u16 = 0x105;
    pub const INVALID_VECTOR: u16 = 0x108;
    pub const INVALID_LOG_PAGE: u16 = 0x109;
    pub const INVALID_QUEUE_DELETION: u16 = 0x10c;
    pub const NOT_SAVEABLE: u16 = 0x10d;
    pub const WRITE_FAULT: u16 = 0x280;
    pub const UNRECOVERED_READ: u16 = 0x281;
    /// Do not retry.
    pub const DNR: u16 = 1 << 14;
}

/// A command's completion: DW0 and the status field (without the phase bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Done {
    pub result: u32,
    pub status: u16,
}

impl Done {
    fn ok(result: u32) -> Done {
        Done {
            result,
            status: sc::SUCCESS,
        }
    }

    fn err(status: u16) -> Done {
        let dnr = if status == sc::DATA_TRANSFER_ERROR || status == sc::INTERNAL {
            0
        } else {
            sc::DNR
        };
        Done {
            result: 0,
            status: status | dnr,
        }
    }
}

/// One submission queue entry, decoded as far as every command shares it.
struct Entry<'a> {
    raw: &'a [u8; 64],
}

impl Entry<'_> {
    fn opcode(&self) -> u8 {
        self.raw[0]
    }
    /// PRP or SGL (`PSDT`, bits 7:6 of byte 1).
    fn psdt(&self) -> u8 {
        self.raw[1] >> 6
    }
    fn dw(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.raw[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]))
    }
    fn nsid(&self) -> u32 {
        self.dw(1)
    }
    fn prp1(&self) -> u64 {
        u64::from(self.dw(6)) | u64::from(self.dw(7)) << 32
    }
    fn prp2(&self) -> u64 {
        u64::from(self.dw(8)) | u64::from(self.dw(9)) << 32
    }
    fn cdw(&self, n: usize) -> u32 {
        self.dw(n)
    }
}

/// The host memory a transfer of `len` bytes covers, as `(iova, bytes)` segments, each inside
/// one page: PRP1 (dword-aligned, any offset), then PRP2 as the second page or as a pointer
/// to a PRP list (whose last entry on a page points to the next list page).
fn prp_segments(
    bus: &mut dyn NvmeBus,
    prp1: u64,
    prp2: u64,
    len: u64,
) -> Result<Vec<(u64, usize)>, u16> {
    if prp1 & 3 != 0 {
        return Err(sc::INVALID_PRP_OFFSET);
    }
    let first = len.min(PAGE - prp1 % PAGE);
    let mut segs = vec![(prp1, first as usize)];
    let mut rem = len - first;
    if rem == 0 {
        return Ok(segs);
    }
    if rem <= PAGE {
        if prp2 % PAGE != 0 {
            return Err(sc::INVALID_PRP_OFFSET);
        }
        segs.push((prp2, rem as usize));
        return Ok(segs);
    }
    if prp2 & 7 != 0 {
        return Err(sc::INVALID_PRP_OFFSET);
    }
    let mut list = prp2;
    // Each list page holds at least one entry; a transfer of at most 2^MDTS pages needs a
    // bounded number of them, so a list that points back at itself ends here.
    for _ in 0..(1u32 << MDTS) + 2 {
        let slots = (PAGE - list % PAGE) / 8;
        let needed = rem.div_ceil(PAGE);
        // Read what this page holds of the list: the entries still needed, or the whole rest of
        // the page (whose last entry is then the next list's address).
        let n = needed.min(slots);
        let mut raw = vec![0u8; (n * 8) as usize];
        if bus.dma(list, &mut raw, false).is_err() {
            return Err(sc::DATA_TRANSFER_ERROR);
        }
        let entries: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        for (i, &e) in entries.iter().enumerate() {
            let last_slot = i as u64 == slots - 1;
            if last_slot && needed > slots {
                if e & 7 != 0 {
                    return Err(sc::INVALID_PRP_OFFSET);
                }
                list = e;
                break;
            }
            if e % PAGE != 0 {
                return Err(sc::INVALID_PRP_OFFSET);
            }
            let n = rem.min(PAGE);
            segs.push((e, n as usize));
            rem -= n;
            if rem == 0 {
                return Ok(segs);
            }
        }
    }
    Err(sc::INVALID_FIELD)
}

/// Copies `data` to the host through the segments of a transfer.
fn to_host(bus: &mut dyn NvmeBus, segs: &[(u64, usize)], data: &mut [u8]) -> Result<(), u16> {
    bus.dma_vec(segs, data, true)
        .map_err(|_| sc::DATA_TRANSFER_ERROR)
}

/// Reads a transfer's bytes from the host.
fn from_host(bus: &mut dyn NvmeBus, segs: &[(u64, usize)], data: &mut [u8]) -> Result<(), u16> {
    bus.dma_vec(segs, data, false)
        .map_err(|_| sc::DATA_TRANSFER_ERROR)
}

fn ascii(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, c) in dst.iter_mut().zip(s.bytes()) {
        *d = c;
    }
}

impl Nvme {
    /// Blocks in the namespace.
    fn nsze(&self) -> u64 {
        self.store.size() / LBA_SIZE
    }

    /// The namespace's 16-byte globally unique id, from the serial number.
    fn nguid(&self) -> [u8; 16] {
        let mut g = [0u8; 16];
        g[..4].copy_from_slice(b"typ1");
        for (i, c) in self.serial().bytes().enumerate() {
            g[4 + i % 12] ^= c.rotate_left(i as u32 % 8);
        }
        g
    }

    /// Runs one command of submission queue `sqid`; `None` for a command that completes later
    /// (an Asynchronous Event Request).
    pub(crate) fn execute(
        &mut self,
        bus: &mut dyn NvmeBus,
        sqid: u16,
        raw: &[u8; 64],
    ) -> Option<Done> {
        let e = Entry { raw };
        // Fused operations and SGLs are not supported.
        if e.psdt() != 0 || raw[1] & 3 != 0 {
            return Some(Done::err(sc::INVALID_FIELD));
        }
        if sqid == 0 {
            self.admin(bus, &e)
        } else {
            Some(self.io(bus, &e))
        }
    }

    fn admin(&mut self, bus: &mut dyn NvmeBus, e: &Entry<'_>) -> Option<Done> {
        Some(match e.opcode() {
            0x00 => self.delete_sq(e),
            0x01 => self.create_sq(e),
            0x02 => self.get_log_page(bus, e),
            0x04 => self.delete_cq(e),
            0x05 => self.create_cq(e),
            0x06 => self.identify(bus, e),
            // Abort: the command is never found (each runs to completion at once).
            0x08 => Done::ok(1),
            0x09 => self.set_features(e),
            0x0a => self.get_features(e),
            0x0c => {
                let cid = u16::from_le_bytes([e.raw[2], e.raw[3]]);
                // AERL is 3: four outstanding requests at most.
                if self.aers.len() >= 4 {
                    Done::err(sc::AER_LIMIT)
                } else {
                    self.aers.push(cid);
                    return None;
                }
            }
            _ => Done::err(sc::INVALID_OPCODE),
        })
    }

    fn queue_args(e: &Entry<'_>) -> (usize, u32) {
        let c10 = e.cdw(10);
        ((c10 & 0xffff) as usize, (c10 >> 16) + 1)
    }

    fn create_cq(&mut self, e: &Entry<'_>) -> Done {
        let (qid, size) = Self::queue_args(e);
        let c11 = e.cdw(11);
        if qid == 0 || qid > MAX_IO_QUEUES as usize || self.cqs[qid].is_some() {
            return Done::err(sc::INVALID_QID);
        }
        if !(2..=MAX_QUEUE_ENTRIES).contains(&size) {
            return Done::err(sc::INVALID_QSIZE);
        }
        if c11 & 1 == 0 {
            return Done::err(sc::INVALID_FIELD); // CAP.CQR: queues must be contiguous
        }
        let vector = (c11 >> 16) as u16;
        if u32::from(vector) >= NVME_MSIX_VECTORS {
            return Done::err(sc::INVALID_VECTOR);
        }
        if e.prp1() % PAGE != 0 {
            return Done::err(sc::INVALID_PRP_OFFSET);
        }
        self.cqs[qid] = Some(Cq {
            base: e.prp1(),
            size,
            head: 0,
            tail: 0,
            phase: true,
            vector,
            ien: c11 & 2 != 0,
        });
        Done::ok(0)
    }

    fn create_sq(&mut self, e: &Entry<'_>) -> Done {
        let (qid, size) = Self::queue_args(e);
        let c11 = e.cdw(11);
        let cqid = (c11 >> 16) as usize;
        if cqid == 0 || !matches!(self.cqs.get(cqid), Some(Some(_))) {
            return Done::err(sc::CQ_INVALID);
        }
        if qid == 0 || qid > MAX_IO_QUEUES as usize || self.sqs[qid].is_some() {
            return Done::err(sc::INVALID_QID);
        }
        if !(2..=MAX_QUEUE_ENTRIES).contains(&size) {
            return Done::err(sc::INVALID_QSIZE);
        }
        if c11 & 1 == 0 {
            return Done::err(sc::INVALID_FIELD);
        }
        if e.prp1() % PAGE != 0 {
            return Done::err(sc::INVALID_PRP_OFFSET);
        }
        self.sqs[qid] = Some(Sq {
            base: e.prp1(),
            size,
            head: 0,
            tail: 0,
            cqid: cqid as u16,
        });
        Done::ok(0)
    }

    fn delete_sq(&mut self, e: &Entry<'_>) -> Done {
        let (qid, _) = Self::queue_args(e);
        match self.sqs.get_mut(qid) {
            Some(q @ Some(_)) if qid != 0 => {
                *q = None;
                Done::ok(0)
            }
            _ => Done::err(sc::INVALID_QID),
        }
    }

    fn delete_cq(&mut self, e: &Entry<'_>) -> Done {
        let (qid, _) = Self::queue_args(e);
        if qid == 0 || !matches!(self.cqs.get(qid), Some(Some(_))) {
            return Done::err(sc::INVALID_QID);
        }
        if self.sqs.iter().flatten().any(|sq| sq.cqid as usize == qid) {
            return Done::err(sc::INVALID_QUEUE_DELETION);
        }
        self.cqs[qid] = None;
        Done::ok(0)
    }

    /// Sends `data` (a 4 KiB structure, or part of a log) to the host through the command's
    /// PRPs.
    fn send(&mut self, bus: &mut dyn NvmeBus, e: &Entry<'_>, data: &mut [u8]) -> Done {
        let segs = match prp_segments(bus, e.prp1(), e.prp2(), data.len() as u64) {
            Ok(s) => s,
            Err(s) => return Done::err(s),
        };
        match to_host(bus, &segs, data) {
            Ok(()) => Done::ok(0),
            Err(s) => Done::err(s),
        }
    }

    fn identify(&mut self, bus: &mut dyn NvmeBus, e: &Entry<'_>) -> Done {
        let cns = e.cdw(10) & 0xff;
        let csi = e.cdw(11) >> 24;
        let nsid = e.nsid();
        let mut d = vec![0u8; 4096];
        match cns {
            // Namespace: 512-byte blocks, one format.
            0x00 => {
                if nsid != 1 {
                    return Done::err(sc::INVALID_NAMESPACE);
                }
                let n = self.nsze();
                d[0..8].copy_from_slice(&n.to_le_bytes());
                d[8..16].copy_from_slice(&n.to_le_bytes());
                d[16..24].copy_from_slice(&n.to_le_bytes());
                d[104..120].copy_from_slice(&self.nguid());
                d[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes()); // LBADS 9
            }
            // Controller.
            0x01 => {
                d[0..2].copy_from_slice(&NVME_VENDOR.to_le_bytes());
                d[2..4].copy_from_slice(&NVME_VENDOR.to_le_bytes());
                ascii(&mut d[4..24], self.serial());
                ascii(&mut d[24..64], "type1 emulated NVMe");
                ascii(&mut d[64..72], "1.0");
                d[72] = 6; // recommended arbitration burst
                d[77] = MDTS;
                d[78..80].copy_from_slice(&1u16.to_le_bytes()); // controller id
                d[80..84].copy_from_slice(&0x0001_0400u32.to_le_bytes());
                d[111] = 1; // I/O controller
                d[259] = 3; // AERL: four outstanding
                d[260] = 0x03; // one firmware slot, read-only
                d[266..268].copy_from_slice(&0x0157u16.to_le_bytes()); // WCTEMP
                d[268..270].copy_from_slice(&0x0175u16.to_le_bytes()); // CCTEMP
                d[512] = 0x66; // SQES
                d[513] = 0x44; // CQES
                d[516..520].copy_from_slice(&1u32.to_le_bytes()); // NN
                d[520..522].copy_from_slice(&0x000cu16.to_le_bytes()); // ONCS: DSM, Write Zeroes
                d[525] = 1; // volatile write cache present
                let nqn = format!(
                    "nqn.2024-05.invalid.type1:nvme:{:04x}:{}",
                    NVME_DEVICE,
                    self.serial()
                );
                let n = nqn.len().min(255);
                d[768..768 + n].copy_from_slice(&nqn.as_bytes()[..n]);
                d[2048..2050].copy_from_slice(&900u16.to_le_bytes()); // PSD0: 9 W
            }
            // Active namespace list: the ids above `nsid`.
            0x02 => {
                if nsid >= 0xffff_fffe {
                    return Done::err(sc::INVALID_NAMESPACE);
                }
                if nsid < 1 {
                    d[0..4].copy_from_slice(&1u32.to_le_bytes());
                }
            }
            // Namespace identification descriptors: the NGUID.
            0x03 => {
                if nsid != 1 {
                    return Done::err(sc::INVALID_NAMESPACE);
                }
                d[0] = 2;
                d[1] = 16;
                d[4..20].copy_from_slice(&self.nguid());
            }
            // I/O command set specific structures of the NVM command set: no limits.
            0x05 | 0x06 if csi == 0 => {
                if cns == 0x05 && nsid != 1 {
                    return Done::err(sc::INVALID_NAMESPACE);
                }
            }
            _ => return Done::err(sc::INVALID_FIELD),
        }
        self.send(bus, e, &mut d)
    }

    fn get_log_page(&mut self, bus: &mut dyn NvmeBus, e: &Entry<'_>) -> Done {
        let c10 = e.cdw(10);
        let lid = c10 & 0xff;
        let numd = (u64::from(e.cdw(11) & 0xffff) << 16 | u64::from(c10 >> 16)) + 1;
        let offset = u64::from(e.cdw(12)) | u64::from(e.cdw(13)) << 32;
        let log = match lid {
            0x01 => vec![0u8; 64], // error information: one empty entry
            0x02 => {
                let mut s = vec![0u8; 512];
                s[1..3].copy_from_slice(&313u16.to_le_bytes()); // 40 °C
                s[3] = 100; // available spare
                s[4] = 10; // threshold
                s
            }
            0x03 => vec![0u8; 512], // firmware slots
            _ => return Done::err(sc::INVALID_LOG_PAGE),
        };
        let len = numd * 4;
        if offset % 4 != 0 || offset > log.len() as u64 || len > (1 << (MDTS + 12)) {
            return Done::err(sc::INVALID_FIELD);
        }
        let mut d = vec![0u8; len as usize];
        let avail = &log[offset as usize..];
        let n = avail.len().min(d.len());
        d[..n].copy_from_slice(&avail[..n]);
        self.send(bus, e, &mut d)
    }

    fn set_features(&mut self, e: &Entry<'_>) -> Done {
        let c10 = e.cdw(10);
        if c10 >> 31 != 0 {
            return Done::err(sc::NOT_SAVEABLE);
        }
        let v = e.cdw(11);
        let f = &mut self.features;
        match c10 & 0xff {
            0x01 => f.arbitration = v,
            0x02 => f.power = v & 0x1f,
            0x04 => f.temperature = v,
            0x05 => f.error_recovery = v,
            0x06 => f.write_cache = v & 1,
            0x07 => {
                let (nsq, ncq) = (v & 0xffff, v >> 16);
                if nsq == 0xffff || ncq == 0xffff {
                    return Done::err(sc::INVALID_FIELD);
                }
                let max = u32::from(MAX_IO_QUEUES - 1);
                let got = (nsq.min(max) as u16, ncq.min(max) as u16);
                f.queues = Some(got);
                return Done::ok(u32::from(got.0) | u32::from(got.1) << 16);
            }
            0x08 => f.coalescing = v & 0xffff,
            0x09 => {
                if v & 0xffff >= NVME_MSIX_VECTORS {
                    return Done::err(sc::INVALID_FIELD);
                }
                f.vector_config = v;
            }
            0x0b => f.async_events = v,
            _ => return Done::err(sc::INVALID_FIELD),
        }
        Done::ok(0)
    }

    fn get_features(&mut self, e: &Entry<'_>) -> Done {
        let c10 = e.cdw(10);
        let sel = (c10 >> 8) & 7;
        let f = &self.features;
        let fid = c10 & 0xff;
        // Supported capabilities: changeable, not saveable, not namespace-specific.
        if sel == 3 {
            return match fid {
                0x01 | 0x02 | 0x04 | 0x05 | 0x06 | 0x07 | 0x08 | 0x09 | 0x0b => Done::ok(0b100),
                _ => Done::err(sc::INVALID_FIELD),
            };
        }
        let max = u32::from(MAX_IO_QUEUES - 1);
        let v = match fid {
            0x01 => f.arbitration,
            0x02 => f.power,
            0x04 => f.temperature,
            0x05 => f.error_recovery,
            0x06 => f.write_cache,
            0x07 => f
                .queues
                .map_or(max | max << 16, |(s, c)| u32::from(s) | u32::from(c) << 16),
            0x08 => f.coalescing,
            0x09 => f.vector_config,
            0x0b => f.async_events,
            _ => return Done::err(sc::INVALID_FIELD),
        };
        Done::ok(v)
    }

    fn io(&mut self, bus: &mut dyn NvmeBus, e: &Entry<'_>) -> Done {
        let nsid = e.nsid();
        match e.opcode() {
            0x00 => {
                if nsid != 1 && nsid != 0xffff_ffff {
                    return Done::err(sc::INVALID_NAMESPACE);
                }
                match self.store.flush() {
                    Ok(()) => Done::ok(0),
                    Err(_) => Done::err(sc::WRITE_FAULT),
                }
            }
            op @ (0x01 | 0x02 | 0x08) => {
                if nsid != 1 {
                    return Done::err(sc::INVALID_NAMESPACE);
                }
                let slba = u64::from(e.cdw(10)) | u64::from(e.cdw(11)) << 32;
                let nlb = u64::from(e.cdw(12) & 0xffff) + 1;
                let fua = e.cdw(12) & (1 << 30) != 0;
                if slba.checked_add(nlb).is_none_or(|end| end > self.nsze()) {
                    return Done::err(sc::LBA_OUT_OF_RANGE);
                }
                let (off, len) = (slba * LBA_SIZE, nlb * LBA_SIZE);
                match op {
                    0x08 => self.write_zeroes(off, len, fua),
                    _ if len > PAGE << MDTS => Done::err(sc::INVALID_FIELD),
                    0x01 => self.write(bus, e, off, len, fua),
                    _ => self.read(bus, e, off, len),
                }
            }
            // Dataset Management: the ranges are read (the command's data), deallocation is a
            // hint this namespace takes as nothing to do (DLFEAT 0: reads of deallocated
            // blocks are not specified).
            0x09 => {
                if nsid != 1 {
                    return Done::err(sc::INVALID_NAMESPACE);
                }
                let nr = u64::from(e.cdw(10) & 0xff) + 1;
                let mut ranges = vec![0u8; (nr * 16) as usize];
                let segs = match prp_segments(bus, e.prp1(), e.prp2(), nr * 16) {
                    Ok(s) => s,
                    Err(s) => return Done::err(s),
                };
                if let Err(s) = from_host(bus, &segs, &mut ranges) {
                    return Done::err(s);
                }
                for r in ranges.chunks_exact(16) {
                    let nlb = u64::from(u32::from_le_bytes(r[4..8].try_into().unwrap_or([0; 4])));
                    let slba = u64::from_le_bytes(r[8..16].try_into().unwrap_or([0; 8]));
                    if slba.checked_add(nlb).is_none_or(|end| end > self.nsze()) {
                        return Done::err(sc::LBA_OUT_OF_RANGE);
                    }
                }
                Done::ok(0)
            }
            _ => Done::err(sc::INVALID_OPCODE),
        }
    }

    fn read(&mut self, bus: &mut dyn NvmeBus, e: &Entry<'_>, off: u64, len: u64) -> Done {
        let segs = match prp_segments(bus, e.prp1(), e.prp2(), len) {
            Ok(s) => s,
            Err(s) => return Done::err(s),
        };
        let store = self.store.clone();
        // Straight from the namespace file into memory where the bus can.
        if let Some(r) = store.fd().and_then(|fd| bus.dma_file(&segs, fd, off, true)) {
            return match r {
                Ok(()) => Done::ok(0),
                Err(_) => Done::err(sc::DATA_TRANSFER_ERROR),
            };
        }
        let data = self.scratch_of(len);
        if store.read_at(off, data).is_err() {
            return Done::err(sc::UNRECOVERED_READ);
        }
        match to_host(bus, &segs, data) {
            Ok(()) => Done::ok(0),
            Err(s) => Done::err(s),
        }
    }

    /// The scratch buffer, `len` bytes of it.
    fn scratch_of(&mut self, len: u64) -> &mut [u8] {
        let len = len as usize;
        if self.scratch.len() < len {
            self.scratch.resize(len, 0);
        }
        &mut self.scratch[..len]
    }

    fn write(
        &mut self,
        bus: &mut dyn NvmeBus,
        e: &Entry<'_>,
        off: u64,
        len: u64,
        fua: bool,
    ) -> Done {
        let segs = match prp_segments(bus, e.prp1(), e.prp2(), len) {
            Ok(s) => s,
            Err(s) => return Done::err(s),
        };
        // Nothing reaches the namespace unless all of it came across.
        let data = self.scratch_of(len);
        if let Err(s) = from_host(bus, &segs, data) {
            return Done::err(s);
        }
        let store = self.store.clone();
        if store.write_at(off, self.scratch_of(len)).is_err() {
            return Done::err(sc::WRITE_FAULT);
        }
        if (fua || self.features.write_cache == 0) && self.store.flush().is_err() {
            return Done::err(sc::WRITE_FAULT);
        }
        Done::ok(0)
    }

    fn write_zeroes(&mut self, off: u64, len: u64, fua: bool) -> Done {
        let zeros = vec![0u8; (len.min(1 << 16)) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            if self.store.write_at(off + done, &zeros[..n]).is_err() {
                return Done::err(sc::WRITE_FAULT);
            }
            done += n as u64;
        }
        if (fua || self.features.write_cache == 0) && self.store.flush().is_err() {
            return Done::err(sc::WRITE_FAULT);
        }
        Done::ok(0)
    }
}
