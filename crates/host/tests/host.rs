//! The host platform on this machine: real pins, pagemap, RLIMIT_MEMLOCK and cache flushes.

use type1_core::CacheMaintenance;
use type1_core::Iommu;
use type1_core::TaskMemory;
use type1_core::{Config, Container, Errno, GroupId, MapRequest, Pa, Task, UnmapRequest, Vaddr};
use type1_host::{
    flush, procfs,
    sys::{self, AnonMap},
    FlushInsn, HostConfig, HostPlatform, SELF_MM,
};

#[test]
fn pin_is_stable_and_unpin_releases() {
    let buf = AnonMap::new(16 * 4096, false).unwrap();
    let mut p = HostPlatform::new(HostConfig::default());
    let a = p
        .pin_user_pages(SELF_MM, Vaddr(buf.addr()), 16, true)
        .unwrap();
    assert_eq!(a.len(), 16);
    assert!(a.iter().all(|x| x.pfn != 0 && !x.reserved));
    // Distinct pages, and pinning again yields the same frames.
    let mut pfns: Vec<u64> = a.iter().map(|x| x.pfn).collect();
    pfns.sort();
    pfns.dedup();
    assert_eq!(pfns.len(), 16);
    sys::write_user(buf.addr(), &[0x5a; 4096 * 2]).expect("write_user");
    let b = p
        .pin_user_pages(SELF_MM, Vaddr(buf.addr()), 16, true)
        .unwrap();
    // Frames are the emulated IOMMU's bus frames: contiguous per pin call, never real ones.
    assert!(a.windows(2).all(|w| w[1].pfn == w[0].pfn + 1));
    assert!(
        a[0].pfn >= 1 << 44,
        "a bus frame, not a host physical address"
    );
    assert!(b.iter().all(|x| !a.contains(x)), "two pins, two bus ranges");
    assert_eq!(p.pinned_frames(), 32, "each page pinned twice");
    assert_eq!(p.vaddr_of_pfn(a[3].pfn), Some(buf.addr() + 3 * 4096));
    for x in a.iter().chain(b.iter()) {
        p.unpin_page(x.pfn, true);
    }
    assert_eq!(p.pinned_frames(), 0);
}

#[test]
fn pin_faults_in_fresh_pages_and_read_only_memory() {
    let buf = AnonMap::new(4 * 4096, true).unwrap();
    let mut p = HostPlatform::new(HostConfig::default());
    // Read pin of never-touched read-only memory works (zero page or a fresh frame).
    let r = p
        .pin_user_pages(SELF_MM, Vaddr(buf.addr()), 4, false)
        .unwrap();
    assert_eq!(r.len(), 4);
    for x in r {
        p.unpin_page(x.pfn, false);
    }
    // A write pin of read-only memory is EFAULT.
    let e = p
        .pin_user_pages(SELF_MM, Vaddr(buf.addr()), 4, true)
        .unwrap_err();
    assert_eq!(e.errno, Errno::EFAULT);
}

#[test]
fn pin_of_unmapped_address_is_efault() {
    // An inaccessible reservation: unlike an unmapped hole, no other test thread can map
    // something there meanwhile.
    // SAFETY: a fresh PROT_NONE mapping at a kernel-chosen address, never touched.
    let gone = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8 * 4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as u64;
    assert_ne!(gone, libc::MAP_FAILED as u64);
    let mut p = HostPlatform::new(HostConfig::default());
    assert_eq!(
        p.pin_user_pages(SELF_MM, Vaddr(gone), 8, true)
            .unwrap_err()
            .errno,
        Errno::EFAULT
    );
    assert_eq!(
        p.pin_user_pages(SELF_MM, Vaddr(0), 1, false)
            .unwrap_err()
            .errno,
        Errno::EFAULT
    );
    assert_eq!(p.pinned_frames(), 0);
    // A partial run: the mapped head is returned.
    let half = AnonMap::new(2 * 4096, false).unwrap();
    let got = p
        .pin_user_pages(SELF_MM, Vaddr(half.addr()), 1, true)
        .unwrap();
    assert_eq!(got.len(), 1);
    p.unpin_page(got[0].pfn, true);
}

#[test]
fn flush_uses_cpuid_instruction_and_covers_every_line() {
    let (insn, line) = flush::detect_flush();
    if cfg!(target_arch = "x86_64") {
        assert_ne!(insn, FlushInsn::None);
        assert!(line >= 32);
    }
    let buf = AnonMap::new(4 * 4096, false).unwrap();
    let mut p = HostPlatform::new(HostConfig::default());
    let pins = p
        .pin_user_pages(SELF_MM, Vaddr(buf.addr()), 4, true)
        .unwrap();
    sys::write_user(buf.addr(), &[7u8; 4 * 4096]).unwrap();
    for x in &pins {
        p.flush_cache(Pa(x.pfn << 12), 4096);
    }
    let s = p.stats();
    assert_eq!(s.flush_calls, 4);
    if insn != FlushInsn::None {
        assert_eq!(s.lines_flushed, 4 * 4096 / line);
    }
    assert_eq!(s.pages_unresolved, 0);
    // Contents survive a flush.
    let mut back = vec![0u8; 4 * 4096];
    sys::read_user(buf.addr(), &mut back).unwrap();
    assert!(back.iter().all(|b| *b == 7));
    // A pfn we never pinned is not flushed (and does not crash).
    p.flush_cache(Pa(0x1000), 4096);
    assert_eq!(p.stats().pages_unresolved, 1);
    for x in pins {
        p.unpin_page(x.pfn, true);
    }
}

#[test]
fn a_batch_flush_on_several_threads_covers_every_line_once() {
    // 16 MiB in 4 separately pinned 4 MiB runs: above the parallel threshold in all.
    let (insn, line) = flush::detect_flush();
    let pages = 4096u64;
    let buf = AnonMap::new(pages * 4096, false).unwrap();
    let run = pages / 4;
    let mut flushed = Vec::new();
    for threads in [1, 2, 3] {
        let mut p = HostPlatform::new(HostConfig::default());
        p.set_flush_threads(threads);
        let mut ranges = Vec::new();
        let mut pins = Vec::new();
        for k in 0..4 {
            // pin_user_pages may return a head of the run: go on from where it stopped.
            let mut done = 0;
            while done < run {
                let at = buf.addr() + (k * run + done) * 4096;
                let got = p
                    .pin_user_pages(SELF_MM, Vaddr(at), run - done, true)
                    .unwrap();
                assert!(!got.is_empty());
                done += got.len() as u64;
                ranges.extend(got.iter().map(|x| (Pa(x.pfn << 12), 4096)));
                pins.extend(got);
            }
        }
        sys::write_user(buf.addr(), &vec![threads as u8; (pages * 4096) as usize]).unwrap();
        p.flush_cache_batch(&ranges);
        let s = p.stats();
        assert_eq!(s.pages_unresolved, 0, "{threads} threads");
        flushed.push(s.lines_flushed);
        let mut back = vec![0u8; (pages * 4096) as usize];
        sys::read_user(buf.addr(), &mut back).unwrap();
        assert!(back.iter().all(|b| *b == threads as u8), "contents survive");
        for x in pins {
            p.unpin_page(x.pfn, true);
        }
        assert_eq!(p.pinned_frames(), 0);
    }
    if insn != FlushInsn::None {
        assert_eq!(
            flushed,
            vec![pages * 4096 / line; 3],
            "lines flushed by 1, 2, 3 threads"
        );
    }
}

#[test]
fn accounting_follows_rlimit_unless_cap_ipc_lock() {
    let mut p = HostPlatform::new(HostConfig::default());
    p.set_task_override(Some(Task {
        mm: SELF_MM,
        cap_ipc_lock: false,
        memlock_limit_pages: 10,
    }));
    p.account(SELF_MM, 10, true).unwrap();
    assert_eq!(
        p.account(SELF_MM, 1, true).unwrap_err().errno,
        Errno::ENOMEM
    );
    assert_eq!(p.locked_vm(SELF_MM), 10, "a failed charge changes nothing");
    p.account(SELF_MM, 5, false).unwrap();
    assert_eq!(p.locked_vm(SELF_MM), 15);
    p.account(SELF_MM, -15, true).unwrap();
    assert_eq!(p.locked_vm(SELF_MM), 0);
}

fn engine_map(p: &mut HostPlatform, group: u32, buf: &AnonMap, iova: u64) -> Result<(), Errno> {
    let mut c = Container::new(Config::default(), "seed").unwrap();
    c.add_group(p, GroupId(group)).unwrap();
    c.set_iommu(p, type1_core::IommuType::Type1v2).unwrap();
    let t = c.iommu_mut().unwrap();
    let r = t
        .map_dma(
            p,
            MapRequest {
                flags: type1_core::MapFlags::RW,
                vaddr: buf.addr(),
                iova,
                size: buf.len(),
            },
        )
        .map_err(|e| e.errno());
    if r.is_ok() {
        let n = t
            .unmap_dma(
                p,
                UnmapRequest {
                    flags: type1_core::UnmapFlags::default(),
                    iova,
                    size: buf.len(),
                    bitmap: None,
                },
            )
            .unwrap();
        assert_eq!(n, buf.len());
    }
    c.close(p);
    r
}

#[test]
fn engine_over_host_flushes_for_noncoherent_group() {
    let buf = AnonMap::new(8 * 4096, false).unwrap();
    let mut p = HostPlatform::new(HostConfig::default());
    p.trace_to_memory();
    engine_map(&mut p, 0, &buf, 0x10_0000).unwrap();
    assert_eq!(p.stats().flush_calls, 0, "coherent domain: no flush");
    engine_map(&mut p, 1, &buf, 0x10_0000).unwrap();
    assert!(p.stats().flush_calls >= 2, "map and unpin flushes");
    assert_eq!(
        p.stats().pages_unresolved,
        0,
        "every flushed page resolved to its vaddr"
    );
    assert_eq!(p.pinned_frames(), 0);
    assert_eq!(p.locked_vm(SELF_MM), 0);
    assert_eq!(p.domain_count(), 0);
}

/// Runs in a child process of its own (re-executed test binary) that drops CAP_IPC_LOCK and
/// lowers RLIMIT_MEMLOCK, so that the real credential and limit reads are exercised.
#[test]
fn rlimit_enforced_without_cap_ipc_lock() {
    if !in_own_process("rlimit_enforced_without_cap_ipc_lock") {
        return;
    }
    drop_cap_ipc_lock_and_limit(64 * 1024);
    assert!(!sys::has_cap_ipc_lock());
    assert_eq!(sys::memlock_limit_pages(), 16);
    let mut p = HostPlatform::new(HostConfig::default());
    let t = p.current().unwrap();
    assert!(!t.cap_ipc_lock);
    assert_eq!(t.memlock_limit_pages, 16);
    let small = AnonMap::new(8 * 4096, false).unwrap();
    engine_map(&mut p, 1, &small, 0).unwrap();
    let big = AnonMap::new(32 * 4096, false).unwrap();
    assert_eq!(engine_map(&mut p, 1, &big, 0), Err(Errno::ENOMEM));
    assert_eq!(p.locked_vm(SELF_MM), 0);
    assert_eq!(p.pinned_frames(), 0);
}

fn drop_cap_ipc_lock_and_limit(bytes: u64) {
    type1_host::sys::drop_cap_ipc_lock().expect("capset");
    let rl = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: a valid rlimit value.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) }, 0);
}

#[test]
fn aligned_mapping_takes_2m_leaves_and_one_flush_per_run() {
    let huge = 2u64 << 20;
    let buf = AnonMap::aligned(2 * huge, huge).unwrap();
    let mut p = HostPlatform::new(HostConfig::default());
    p.trace_to_memory();
    let mut c = Container::new(Config::default(), "seed").unwrap();
    c.add_group(&mut p, GroupId(1)).unwrap();
    c.set_iommu(&mut p, type1_core::IommuType::Type1v2).unwrap();
    let t = c.iommu_mut().unwrap();
    let req = MapRequest {
        flags: type1_core::MapFlags::RW,
        vaddr: buf.addr(),
        iova: 1 << 30,
        size: 2 * huge,
    };
    t.map_dma(&mut p, req).unwrap();
    let m = p.memory();
    assert_eq!(m.tables.leaves_2m, 2, "{m:?}");
    assert_eq!(m.tables.leaves_4k, 0, "{m:?}");
    assert_eq!(m.registrations, 2, "one per 512-page pin call");
    let flushes = |p: &HostPlatform| {
        p.events()
            .iter()
            .filter(|e| matches!(e, type1_core::Event::Flush { .. }))
            .count()
    };
    assert_eq!(flushes(&p), 1, "the map flush covers the whole run at once");
    c.close(&mut p);
    assert_eq!(flushes(&p), 2, "and so does the unpin flush");
    assert_eq!(p.pinned_frames(), 0);
    assert_eq!(p.stats().pages_unresolved, 0);
}

/// A domain of the non-coherent group with `npages` pinned at `vaddr` mapped from `iova` on,
/// page by page: the platform, the domain and the pins.
fn pinned_domain(
    vaddr: u64,
    npages: u64,
    iova: u64,
) -> (HostPlatform, type1_core::DomainId, Vec<u64>) {
    let mut p = HostPlatform::new(HostConfig::default());
    p.trace_to_memory();
    let d = p.domain_alloc(GroupId(1)).unwrap();
    let pins = p
        .pin_user_pages(SELF_MM, Vaddr(vaddr), npages, true)
        .unwrap();
    assert_eq!(pins.len() as u64, npages);
    let rw = type1_core::Prot {
        read: true,
        write: true,
    };
    for (i, x) in pins.iter().enumerate() {
        p.iommu_map(
            d,
            type1_core::Iova(iova + i as u64 * 4096),
            type1_core::Pa(x.pfn << 12),
            4096,
            rw,
        )
        .unwrap();
    }
    (p, d, pins.iter().map(|x| x.pfn).collect())
}

fn dma_write(p: &mut HostPlatform, d: type1_core::DomainId, iova: u64, data: &[u8]) {
    let mut b = data.to_vec();
    p.dma(d, iova, &mut b, true).expect("device write");
}

fn dma_read(p: &mut HostPlatform, d: type1_core::DomainId, iova: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    p.dma(d, iova, &mut b, false).expect("device read");
    b
}

#[test]
fn pinned_page_outlives_munmap_and_a_new_mapping_at_its_address() {
    let buf = AnonMap::new(2 * 4096, false).unwrap();
    let addr = buf.addr();
    sys::write_user(addr, &[0x11; 8192]).unwrap();
    let (mut p, d, _) = pinned_domain(addr, 2, 0x10_0000);
    std::mem::forget(buf);
    // SAFETY: the test owns the range and replaces it with fresh anonymous memory. One
    // MAP_FIXED mmap unmaps the old pages and maps new ones at once: a munmap first would let
    // another test thread map something into the gap, which MAP_FIXED would then destroy.
    unsafe {
        let again = sys::mmap_rw(
            addr,
            8192,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
        .unwrap();
        assert_eq!(again, addr);
    }
    sys::write_user(addr, &[0x99; 8192]).unwrap();
    // The device still reaches the pinned pages: their old bytes, then its own write.
    assert_eq!(dma_read(&mut p, d, 0x10_0000, 16), vec![0x11; 16]);
    dma_write(&mut p, d, 0x10_1000, b"device");
    assert_eq!(dma_read(&mut p, d, 0x10_1000, 6), b"device");
    let mut now = vec![0u8; 8192];
    sys::read_user(addr, &mut now).unwrap();
    assert!(
        now.iter().all(|b| *b == 0x99),
        "the new mapping is untouched"
    );
    // SAFETY: the test's own mapping.
    unsafe { sys::munmap(addr, 8192).unwrap() };
}

#[test]
fn pinned_memfd_page_takes_device_writes_after_its_mapping_moves() {
    let fd = sys::memfd(c"pin-test", true).unwrap();
    // SAFETY: ftruncate of our own memfd; two fresh shared mappings of it.
    let (a, b) = unsafe {
        assert_eq!(libc::ftruncate(fd, 4096), 0);
        let a = sys::mmap_rw(0, 4096, libc::MAP_SHARED, fd, 0).unwrap();
        let b = sys::mmap_rw(0, 4096, libc::MAP_SHARED, fd, 0).unwrap();
        (a, b)
    };
    let (mut p, d, _) = pinned_domain(a, 1, 0x20_0000);
    // SAFETY: the first mapping is ours and unused from here on.
    unsafe { sys::munmap(a, 4096).unwrap() };
    dma_write(&mut p, d, 0x20_0010, b"live update");
    let mut seen = [0u8; 11];
    sys::read_user(b + 0x10, &mut seen).unwrap();
    assert_eq!(
        &seen, b"live update",
        "the memfd page got the device's write"
    );
    // Truncating the file drops the page from it; the device keeps its pinned page.
    // SAFETY: our memfd.
    assert_eq!(unsafe { libc::ftruncate(fd, 0) }, 0);
    dma_write(&mut p, d, 0x20_0000, b"after");
    assert_eq!(dma_read(&mut p, d, 0x20_0000, 5), b"after");
    // SAFETY: the second mapping and the fd are ours.
    unsafe {
        sys::munmap(b, 4096).unwrap();
    }
    sys::close(fd);
}

/// Runs test `name` again alone in a child process (re-executed test binary), for checks of
/// process-wide counters that other tests' threads would disturb. Returns `true` in the child.
fn in_own_process(name: &str) -> bool {
    if std::env::var("TYPE1_HOST_CHILD").as_deref() == Ok(name) {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("TYPE1_HOST_CHILD", name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

#[test]
fn pins_leave_vm_locked_alone_and_show_in_vmpin() {
    if !in_own_process("pins_leave_vm_locked_alone_and_show_in_vmpin") {
        return;
    }
    let buf = AnonMap::new(64 * 4096, false).unwrap();
    sys::mlock(buf.addr(), 16 * 4096).unwrap();
    let lck = procfs::status_kb("VmLck").unwrap();
    let pin0 = procfs::status_kb("VmPin").unwrap();
    let mut p = HostPlatform::new(HostConfig::default());
    let pins = p
        .pin_user_pages(SELF_MM, Vaddr(buf.addr()), 64, true)
        .unwrap();
    assert_eq!(
        procfs::status_kb("VmLck"),
        Some(lck),
        "no VM_LOCKED from a pin"
    );
    assert_eq!(
        procfs::status_kb("VmPin"),
        Some(pin0 + 256),
        "64 pages pinned"
    );
    p.unpin_pages(pins[0].pfn, 1, true);
    for x in &pins[1..] {
        p.unpin_page(x.pfn, true);
    }
    assert_eq!(
        procfs::status_kb("VmLck"),
        Some(lck),
        "the program's own mlock stays"
    );
    assert_eq!(procfs::status_kb("VmPin"), Some(pin0), "unpinned");
    assert_eq!(p.stats().stray_unpins, 0);
    sys::munlock(buf.addr(), 16 * 4096);
}

#[test]
fn tracked_pins_fault_the_device_once_the_page_is_gone() {
    let buf = AnonMap::new(4096, false).unwrap();
    let addr = buf.addr();
    let mut p = HostPlatform::new(HostConfig::default());
    p.set_pin_mode(type1_host::PinMode::Track);
    let d = p.domain_alloc(GroupId(1)).unwrap();
    let pin = p.pin_user_pages(SELF_MM, Vaddr(addr), 1, true).unwrap()[0];
    let rw = type1_core::Prot {
        read: true,
        write: true,
    };
    p.iommu_map(
        d,
        type1_core::Iova(0x1000),
        type1_core::Pa(pin.pfn << 12),
        4096,
        rw,
    )
    .unwrap();
    dma_write(&mut p, d, 0x1000, b"ok");
    assert_eq!(p.stats().pages_tracked, 1);
    p.cpu_unmap_prepare(addr, 4096);
    drop(buf);
    p.cpu_unmapped(addr, 4096);
    let mut b = [0u8; 2];
    assert_eq!(
        p.dma(d, 0x1000, &mut b, true),
        Err(type1_core::DmaFault::Unreachable),
        "never a write into whatever is there now"
    );
    p.unpin_page(pin.pfn, true);
}

#[test]
fn last_mapping_going_away_is_the_unpin_flush() {
    let buf = AnonMap::new(4 * 4096, false).unwrap();
    let addr = buf.addr();
    let (mut p, _d, pfns) = pinned_domain(addr, 4, 0x40_0000);
    sys::write_user(addr, &[3u8; 4 * 4096]).unwrap();
    // Pages 1 and 2 lose their mapping: flushed right then.
    p.cpu_unmap_prepare(addr + 4096, 2 * 4096);
    // SAFETY: the middle of the test's own mapping, unused afterwards.
    unsafe { sys::munmap(addr + 4096, 2 * 4096).unwrap() };
    p.cpu_unmapped(addr + 4096, 2 * 4096);
    assert_eq!(p.stats().pages_flushed_at_unmap, 2);
    // The unpin flush of all four: two through the mapping, two done already.
    let before = p.events().len();
    for &pfn in &pfns {
        p.flush_cache(Pa(pfn << 12), 4096);
    }
    let pages_via = |evs: &[type1_core::Event], want: &str| -> u64 {
        evs.iter()
            .map(|e| match e {
                type1_core::Event::CpuFlush { via, npages, .. } if *via == want => *npages,
                _ => 0,
            })
            .sum()
    };
    let (at_unmap, at_unpin) = p.events().split_at(before);
    assert_eq!(
        pages_via(at_unmap, "unmap"),
        2,
        "flushed as the mapping went"
    );
    assert_eq!(
        pages_via(at_unpin, "mapping"),
        2,
        "still mapped: flushed now"
    );
    assert_eq!(
        pages_via(at_unpin, "unmap"),
        2,
        "no mapping: flushed already"
    );
    assert_eq!(pages_via(p.events(), "unreachable"), 0);
    assert_eq!(p.stats().pages_unresolved, 0);
    for pfn in pfns {
        p.unpin_page(pfn, true);
    }
    // SAFETY: the rest of the test's own mapping.
    unsafe {
        sys::munmap(addr, 4096).unwrap();
        sys::munmap(addr + 3 * 4096, 4096).unwrap();
    }
    std::mem::forget(buf);
}
