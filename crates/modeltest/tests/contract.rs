//! One contract for every implementation of the platform seam (`type1_core::Platform`): the
//! simulator, the host platform (real pins, real flushes), the broker's platform (the engine's
//! view inside the broker process: its IOMMU is a host platform's, its memory work goes to the
//! owning process as callbacks), the uAPI layer's test double and the benchmark's `Lean`
//! (those with software domains share `type1_core::SoftDomains`). The
//! engine is written against the trait's documented behaviour; this suite checks that each
//! platform gives it, with the same calls and the same expectations, so that a test passing on
//! one platform means something on the others.

use type1_core::Iommu;
use type1_core::TaskMemory;
use type1_core::{
    DmaFault, Errno, GroupId, Iova, MmId, Pa, PinnedPage, Platform, Prot, Vaddr, PAGE_SIZE,
};

const IOVA: u64 = 0x10_0000;
const PAGES: u64 = 8;

/// A platform under test, with `PAGES` pages of writable user memory at `buf` in the calling
/// task's address space.
struct Subject<P: Platform> {
    name: &'static str,
    p: P,
    buf: u64,
    /// Frames the platform holds pinned, when it can tell.
    pinned: fn(&P) -> Option<u64>,
    /// Whether devices reach memory on it (`DeviceDma`); if not, every DMA is unreachable.
    dma: bool,
}

/// Pins all of `[vaddr, vaddr + n pages)`: the platform may return a head of the range.
fn pin_all<P: Platform>(p: &mut P, mm: MmId, vaddr: u64, n: u64) -> Vec<PinnedPage> {
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        let at = vaddr + got.len() as u64 * PAGE_SIZE;
        let more = p
            .pin_user_pages(mm, Vaddr(at), n - got.len() as u64, true)
            .expect("pin of mapped, writable user memory");
        assert!(
            !more.is_empty(),
            "a successful pin returns at least one page"
        );
        got.extend(more);
    }
    got
}

fn contract<P: Platform>(mut s: Subject<P>) {
    let name = s.name;
    let p = &mut s.p;
    // The task and its books.
    let task = p.current().expect("a calling task");
    let mm = task.mm;
    assert!(p.mm_alive(mm), "{name}");
    let locked = p.locked_vm(mm);
    p.account(mm, PAGES as i64, false).unwrap();
    assert_eq!(p.locked_vm(mm), locked + PAGES, "{name}: account adds");
    p.account(mm, -(PAGES as i64), true).unwrap();
    assert_eq!(
        p.locked_vm(mm),
        locked,
        "{name}: a negative delta subtracts"
    );

    // Groups: 0 behind a unit with snoop control, 1 behind one without; no group 99.
    assert!(!p.group_info(GroupId(0)).unwrap().emulated, "{name}");
    assert!(!p.group_info(GroupId(1)).unwrap().emulated, "{name}");
    assert_eq!(
        p.group_info(GroupId(99)).map_err(|e| e.errno),
        Err(Errno::ENODEV),
        "{name}: an unknown group is ENODEV"
    );
    let d0 = p.domain_alloc(GroupId(0)).unwrap();
    p.attach_group(d0, GroupId(0)).unwrap();
    assert!(
        p.domain_enforce_cache_coherency(d0),
        "{name}: snoop control"
    );
    let d = p.domain_alloc(GroupId(1)).unwrap();
    assert_eq!(
        p.attach_group(d, GroupId(0)).map_err(|e| e.errno),
        Err(Errno::EINVAL),
        "{name}: a group behind another unit"
    );
    p.attach_group(d, GroupId(1)).unwrap();
    assert_eq!(
        p.attach_group(d, GroupId(1)).map_err(|e| e.errno),
        Err(Errno::EINVAL),
        "{name}: a group is in one domain at a time"
    );
    assert!(
        !p.domain_enforce_cache_coherency(d),
        "{name}: no snoop control"
    );
    assert_ne!(
        p.domain_info(d).pgsize_bitmap & PAGE_SIZE,
        0,
        "{name}: 4 KiB pages"
    );

    // Pins: normal pages, and the bytes of user memory through mm_read/mm_write.
    let pins = pin_all(p, mm, s.buf, PAGES);
    assert_eq!(pins.len() as u64, PAGES, "{name}");
    assert!(
        pins.iter()
            .all(|x| !x.reserved && !p.pfn_is_reserved(x.pfn)),
        "{name}"
    );
    if let Some(n) = (s.pinned)(p) {
        assert!(n >= PAGES, "{name}: {n} frames pinned");
    }
    p.mm_write(mm, Vaddr(s.buf + 8), b"contract").unwrap();
    let mut back = [0u8; 8];
    p.mm_read(mm, Vaddr(s.buf + 8), &mut back).unwrap();
    assert_eq!(&back, b"contract", "{name}: mm_write then mm_read");

    // The IOMMU: a map reads back, the same range cannot be mapped twice, an unmap stops at
    // the first hole and reports what it unmapped, and the translation is gone after it.
    let pa = pins[0].pfn * PAGE_SIZE;
    let rw = Prot {
        read: true,
        write: true,
    };
    p.iommu_map(d, Iova(IOVA), Pa(pa), PAGE_SIZE, rw).unwrap();
    assert_eq!(
        p.iova_to_phys(d, Iova(IOVA + 0x10)),
        Some(Pa(pa + 0x10)),
        "{name}"
    );

    // Device DMA through the entry: what a device writes, the CPU and the device read back
    // (after a flush: a no-snoop device bypasses the cache); a read-only entry refuses a
    // write; no entry, no access.
    p.flush_cache(Pa(pa), PAGE_SIZE);
    let mut data = *b"from the device!";
    let wrote = p.device_dma(d, IOVA + 0x100, &mut data, true);
    if s.dma {
        wrote.unwrap_or_else(|e| panic!("{name}: device write: {e}"));
        let mut cpu = [0u8; 16];
        p.mm_read(mm, Vaddr(s.buf + 0x100), &mut cpu).unwrap();
        assert_eq!(
            &cpu, b"from the device!",
            "{name}: the CPU sees the device's write"
        );
        let mut dev = [0u8; 16];
        p.device_dma(d, IOVA + 0x100, &mut dev, false).unwrap();
        assert_eq!(
            &dev, b"from the device!",
            "{name}: the device reads it back"
        );
    } else {
        assert_eq!(wrote, Err(DmaFault::Unreachable), "{name}: no device DMA");
    }
    let ro = Prot {
        read: true,
        write: false,
    };
    let pa1 = pins[1].pfn * PAGE_SIZE;
    p.iommu_map(d, Iova(IOVA + 8 * PAGE_SIZE), Pa(pa1), PAGE_SIZE, ro)
        .unwrap();
    let mut one = [0u8; 1];
    let denied = p.device_dma(d, IOVA + 8 * PAGE_SIZE, &mut one, true);
    let none = p.device_dma(d, IOVA + 16 * PAGE_SIZE, &mut one, false);
    if s.dma {
        assert_eq!(denied, Err(DmaFault::Permission), "{name}: read-only entry");
        assert_eq!(none, Err(DmaFault::Unmapped), "{name}: no entry");
        // Vectored: the segments before a fault are done, the fault names its segment.
        for k in 0..2u64 {
            let pa_k = pins[2 + k as usize].pfn * PAGE_SIZE;
            p.flush_cache(Pa(pa_k), PAGE_SIZE);
            p.iommu_map(d, Iova(IOVA + (4 + k) * PAGE_SIZE), Pa(pa_k), PAGE_SIZE, rw)
                .unwrap();
        }
        let segs = [
            (IOVA + 4 * PAGE_SIZE + 0x800, 0x800),
            (IOVA + 5 * PAGE_SIZE, 0x1000),
            (IOVA + 8 * PAGE_SIZE, 16),
        ];
        let mut out: Vec<u8> = (0..0x1810u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(
            p.device_dma_vec(d, &segs, &mut out, true),
            Err((2, DmaFault::Permission)),
            "{name}: vectored write stops at the read-only segment"
        );
        let mut cpu = vec![0u8; 0x1000];
        p.mm_read(mm, Vaddr(s.buf + 3 * PAGE_SIZE), &mut cpu)
            .unwrap();
        assert!(
            cpu == out[0x800..0x1800],
            "{name}: the second segment arrived"
        );
        let mut back = vec![0u8; 0x1800];
        p.device_dma_vec(d, &segs[..2], &mut back, false)
            .unwrap_or_else(|e| panic!("{name}: vectored read: {e:?}"));
        assert!(back == out[..0x1800], "{name}: vectored read-back");
        for k in 0..2u64 {
            assert_eq!(
                p.iommu_unmap(d, Iova(IOVA + (4 + k) * PAGE_SIZE), PAGE_SIZE),
                PAGE_SIZE
            );
        }
    }
    assert_eq!(
        p.iommu_unmap(d, Iova(IOVA + 8 * PAGE_SIZE), PAGE_SIZE),
        PAGE_SIZE,
        "{name}"
    );
    assert_eq!(
        p.iova_to_phys_run(d, Iova(IOVA), 4 * PAGE_SIZE),
        Some((Pa(pa), PAGE_SIZE)),
        "{name}: the run ends where the mapping does"
    );
    assert!(
        p.iommu_map(d, Iova(IOVA), Pa(pa), PAGE_SIZE, rw).is_err(),
        "{name}: a range already mapped cannot be mapped again"
    );
    assert_eq!(p.iova_to_phys(d, Iova(IOVA + PAGE_SIZE)), None, "{name}");
    assert_eq!(
        p.iova_to_phys(d0, Iova(IOVA)),
        None,
        "{name}: domains are separate"
    );
    assert_eq!(
        p.iommu_unmap(d, Iova(IOVA), 2 * PAGE_SIZE),
        PAGE_SIZE,
        "{name}: unmap stops at the first hole"
    );
    p.iotlb_sync(d);
    assert_eq!(p.iova_to_phys(d, Iova(IOVA)), None, "{name}: unmapped");
    assert_eq!(
        p.iommu_unmap(d, Iova(IOVA), PAGE_SIZE),
        0,
        "{name}: nothing left"
    );

    // A flush of pinned memory, one by one and in a batch; then every pin dropped.
    p.flush_cache(Pa(pa), PAGE_SIZE);
    let ranges: Vec<(Pa, u64)> = pins
        .iter()
        .map(|x| (Pa(x.pfn * PAGE_SIZE), PAGE_SIZE))
        .collect();
    p.flush_cache_batch(&ranges);
    for x in &pins {
        p.unpin_page(x.pfn, true);
    }
    if let Some(n) = (s.pinned)(p) {
        assert_eq!(n, 0, "{name}: every pin dropped");
    }
    p.detach_group(d, GroupId(1));
    p.domain_free(d);
    p.detach_group(d0, GroupId(0));
    p.domain_free(d0);
}

#[test]
fn the_simulator_keeps_the_contract() {
    let mut sim = type1_sim::Sim::new(type1_sim::MachineDesc::default()).unwrap();
    let mm = sim.create_process("vmm");
    sim.set_current(Some(mm));
    let buf = 0x7f00_0000_0000;
    sim.mmap_anon(mm, buf, PAGES * PAGE_SIZE, true).unwrap();
    let s = Subject {
        name: "sim",
        p: sim,
        buf,
        pinned: |s: &type1_sim::Sim| Some(s.pinned_frames()),
        dma: true,
    };
    contract(s);
}

#[test]
fn the_simulator_reports_a_broken_contract() {
    // The assertive side: the simulator records a caller that breaks the seam's rules.
    let mut sim = type1_sim::Sim::new(type1_sim::MachineDesc::default()).unwrap();
    let d = sim.domain_alloc(GroupId(1)).unwrap();
    let rw = Prot {
        read: true,
        write: true,
    };
    sim.iommu_map(d, Iova(IOVA), Pa(0x1000), PAGE_SIZE, rw).ok();
    let _ = sim.iommu_map(d, Iova(IOVA), Pa(0x1000), PAGE_SIZE, rw);
    sim.unpin_page(3, false);
    let kinds: Vec<_> = sim.violations().iter().map(|v| v.kind.as_str()).collect();
    assert!(kinds.contains(&"contract"), "{kinds:?}");
}

#[test]
fn the_host_platform_keeps_the_contract() {
    let buf = type1_host::sys::AnonMap::new(PAGES * PAGE_SIZE, false).unwrap();
    let s = Subject {
        name: "host",
        p: type1_host::HostPlatform::new(type1_host::HostConfig::default()),
        buf: buf.addr(),
        pinned: |h: &type1_host::HostPlatform| Some(h.pinned_frames() as u64),
        dma: true,
    };
    contract(s);
}

#[test]
fn the_uapi_test_double_keeps_the_contract() {
    let mut fake = type1_uapi::testing::FakePlatform::new();
    let buf = 0x7f00_0000_0000;
    fake.map_user(buf, PAGES * PAGE_SIZE);
    let s = Subject {
        name: "uapi FakePlatform",
        p: fake,
        buf,
        pinned: |f: &type1_uapi::testing::FakePlatform| {
            Some(f.pins.values().filter(|n| **n > 0).count() as u64)
        },
        dma: true,
    };
    contract(s);
}

#[test]
fn the_lean_platform_keeps_the_contract() {
    let s = Subject {
        name: "Lean",
        p: type1_core::Lean::default(),
        buf: 0x7f00_0000_0000,
        // It keeps nothing per page.
        pinned: |_: &type1_core::Lean| None,
        dma: false,
    };
    contract(s);
}

/// The process's side of a broker request connection, for [`the_broker_platform_keeps_the_contract`]:
/// answers the memory callbacks with a host platform of its own, as the preload library does
/// (without rings held by the broker: its pins end with it). Returns the platform when the
/// connection closes.
fn answer_callbacks(fd: i32) -> type1_host::HostPlatform {
    use type1_broker::wire::{self, Callback, FrameRun, Msg};
    use type1_core::CacheMaintenance;
    let mut h = type1_host::HostPlatform::new(type1_host::HostConfig::default());
    let mm = h.current().expect("a calling task").mm;
    while let Ok(r) = wire::recv_soon(fd) {
        let (cb, reply) = match r.msg {
            Msg::Cb(cb) => (cb, true),
            Msg::Note(cb) => (cb, false),
            _ => continue,
        };
        let (m, payload) = match cb {
            Callback::Read { addr, len } => {
                let mut buf = vec![0u8; len as usize];
                match type1_host::sys::read_user(addr, &mut buf) {
                    Ok(()) => (Msg::Data, buf),
                    Err(e) => (Msg::Err(e.0), Vec::new()),
                }
            }
            Callback::Write { addr } => match type1_host::sys::write_user(addr, &r.payload) {
                Ok(()) => (Msg::Value(0), Vec::new()),
                Err(e) => (Msg::Err(e.0), Vec::new()),
            },
            Callback::Pin {
                vaddr,
                npages,
                write,
            } => match h.pin_user_pages(mm, Vaddr(vaddr), npages, write) {
                Ok(pages) => {
                    let mut runs: Vec<FrameRun> = Vec::new();
                    for x in pages {
                        match runs.last_mut() {
                            Some(r) if !x.reserved && r.pfn + r.npages == x.pfn => r.npages += 1,
                            _ => runs.push(FrameRun {
                                pfn: x.pfn,
                                npages: 1,
                                reserved: x.reserved,
                                memtype: h.pfn_memtype(x.pfn),
                                held: None,
                            }),
                        }
                    }
                    (Msg::Pages(runs), Vec::new())
                }
                Err(e) => (Msg::Failed(e.errno.0, e.what), Vec::new()),
            },
            Callback::Unpin(runs) => {
                for (pfn, n) in runs {
                    h.unpin_pages(pfn, n, true);
                }
                (Msg::Value(0), Vec::new())
            }
            Callback::Flush(ranges) => {
                let ranges: Vec<_> = ranges.iter().map(|&(pa, n)| (Pa(pa), n)).collect();
                h.flush_cache_batch(&ranges);
                (Msg::Value(0), Vec::new())
            }
            Callback::Ping => (Msg::Value(0), Vec::new()),
            Callback::Dma { pa, len, to_memory } => {
                let mut buf = if to_memory {
                    r.payload.clone()
                } else {
                    vec![0u8; len as usize]
                };
                match h.dma_frame(pa, &mut buf, to_memory) {
                    Ok(()) if to_memory => (Msg::Value(0), Vec::new()),
                    Ok(()) => (Msg::Data, buf),
                    Err(f) => (Msg::DmaFault(f), Vec::new()),
                }
            }
            other => panic!("the contract makes no {other:?} callback"),
        };
        if reply {
            wire::send(fd, &m, &payload, &[]).expect("answer a callback");
        }
    }
    h
}

#[test]
fn the_broker_platform_keeps_the_contract() {
    use std::sync::Arc;
    use type1_broker::hub::{BrokerPlatform, Hub};
    use type1_broker::wire::TaskCreds;
    let (service, service_peer) = type1_host::sock::seqpacket_pair().unwrap();
    let (request, request_peer) = type1_host::sock::seqpacket_pair().unwrap();
    let hub = Arc::new(Hub::new(type1_host::HostConfig::default()));
    let client = hub.add_client(std::process::id() as i32, service, false);
    let process = std::thread::spawn(move || answer_callbacks(request_peer));
    let buf = type1_host::sys::AnonMap::new(PAGES * PAGE_SIZE, false).unwrap();
    let creds = TaskCreds {
        cap_ipc_lock: true,
        memlock_limit_pages: u64::MAX,
        mlocked_pages: 0,
    };
    hub.serving(client, request, Some(creds), || {
        contract(Subject {
            name: "broker",
            p: BrokerPlatform(hub.clone()),
            buf: buf.addr(),
            // The pins are the process's: counted on its side below.
            pinned: |_: &BrokerPlatform| None,
            dma: true,
        })
    });
    type1_host::sys::close(request);
    let h = process.join().expect("the process side");
    assert_eq!(
        h.pinned_frames(),
        0,
        "broker: every pin dropped in the process"
    );
    assert!(
        h.stats().pages_pinned >= PAGES,
        "broker: the process pinned"
    );
    hub.client_gone(client);
    type1_host::sys::close(service_peer);
}
