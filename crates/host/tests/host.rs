//! The host platform on this machine: real pins, pagemap, RLIMIT_MEMLOCK and cache flushes.

use type1_core::{Config, Container, Errno, GroupId, MapRequest, Platform, Task, UnmapRequest};
use type1_host::{
    sys::{self, AnonMap},
    FlushInsn, HostConfig, HostPlatform, SELF_MM,
};

fn pagemap_shows_pfns() -> bool {
    // pagemap hides PFNs without CAP_SYS_ADMIN; the platform then uses synthetic ones.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("CapEff:"))
                .map(|l| l[7..].trim().to_string())
        })
        .and_then(|h| u64::from_str_radix(&h, 16).ok())
        .is_some_and(|c| c & (1 << 21) != 0)
}

#[test]
fn pin_is_stable_and_unpin_releases() {
    let buf = AnonMap::new(16 * 4096, false).unwrap();
    let mut p = HostPlatform::new(HostConfig::default());
    let a = p.pin_user_pages(SELF_MM, buf.addr(), 16, true).unwrap();
    assert_eq!(a.len(), 16);
    assert!(a.iter().all(|x| x.pfn != 0 && !x.reserved));
    // Distinct pages, and pinning again yields the same frames.
    let mut pfns: Vec<u64> = a.iter().map(|x| x.pfn).collect();
    pfns.sort();
    pfns.dedup();
    assert_eq!(pfns.len(), 16);
    sys::write_user(buf.addr(), &[0x5a; 4096 * 2]).expect("write_user");
    let b = p.pin_user_pages(SELF_MM, buf.addr(), 16, true).unwrap();
    assert_eq!(a, b, "pfns are stable while pinned");
    assert_eq!(p.pinned_frames(), 16);
    assert_eq!(p.vaddr_of_pfn(a[3].pfn), Some(buf.addr() + 3 * 4096));
    if pagemap_shows_pfns() {
        assert!(a[0].pfn < 1 << 40, "a real pfn");
    }
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
    let r = p.pin_user_pages(SELF_MM, buf.addr(), 4, false).unwrap();
    assert_eq!(r.len(), 4);
    for x in r {
        p.unpin_page(x.pfn, false);
    }
    // A write pin of read-only memory is EFAULT.
    let e = p.pin_user_pages(SELF_MM, buf.addr(), 4, true).unwrap_err();
    assert_eq!(e.errno, Errno::EFAULT);
}

#[test]
fn pin_of_unmapped_address_is_efault() {
    let buf = AnonMap::new(8 * 4096, false).unwrap();
    let gone = buf.addr();
    drop(buf);
    let mut p = HostPlatform::new(HostConfig::default());
    assert_eq!(
        p.pin_user_pages(SELF_MM, gone, 8, true).unwrap_err().errno,
        Errno::EFAULT
    );
    assert_eq!(
        p.pin_user_pages(SELF_MM, 0, 1, false).unwrap_err().errno,
        Errno::EFAULT
    );
    assert_eq!(p.pinned_frames(), 0);
    // A partial run: the mapped head is returned.
    let half = AnonMap::new(2 * 4096, false).unwrap();
    let got = p.pin_user_pages(SELF_MM, half.addr(), 1, true).unwrap();
    assert_eq!(got.len(), 1);
    p.unpin_page(got[0].pfn, true);
}

#[test]
fn flush_uses_cpuid_instruction_and_covers_every_line() {
    let (insn, line) = sys::detect_flush();
    if cfg!(target_arch = "x86_64") {
        assert_ne!(insn, FlushInsn::None);
        assert!(line >= 32);
    }
    let buf = AnonMap::new(4 * 4096, false).unwrap();
    let mut p = HostPlatform::new(HostConfig::default());
    let pins = p.pin_user_pages(SELF_MM, buf.addr(), 4, true).unwrap();
    sys::write_user(buf.addr(), &[7u8; 4 * 4096]).unwrap();
    for x in &pins {
        p.flush_cache(x.pfn << 12, 4096);
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
    p.flush_cache(0x1000, 4096);
    assert_eq!(p.stats().pages_unresolved, 1);
    for x in pins {
        p.unpin_page(x.pfn, true);
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
    c.set_iommu(p, 3).unwrap();
    let t = c.iommu_mut().unwrap();
    let r = t
        .map_dma(
            p,
            MapRequest {
                flags: 3,
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
                    flags: 0,
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

/// Runs in a child process (re-executed test binary) that drops CAP_IPC_LOCK and lowers
/// RLIMIT_MEMLOCK, so that the real credential and limit reads are exercised.
#[test]
fn rlimit_child() {
    if std::env::var_os("TYPE1_HOST_RLIMIT_CHILD").is_none() {
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
    println!("RLIMIT-CHILD-OK");
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
fn rlimit_enforced_without_cap_ipc_lock() {
    if std::env::var_os("TYPE1_HOST_RLIMIT_CHILD").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "rlimit_child", "--nocapture", "--test-threads=1"])
        .env("TYPE1_HOST_RLIMIT_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("RLIMIT-CHILD-OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn thp_memory_pins_as_contiguous_frames() {
    let enabled =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !(enabled.contains("[always]") || enabled.contains("[madvise]")) || !pagemap_shows_pfns() {
        eprintln!("skipped: no THP or no real pfns");
        return;
    }
    let huge = 2 << 20;
    let buf = AnonMap::aligned(huge, huge).unwrap();
    sys::madvise(buf.addr(), huge, libc::MADV_HUGEPAGE).unwrap();
    let mut p = HostPlatform::new(HostConfig::default());
    let pins = p.pin_user_pages(SELF_MM, buf.addr(), 512, true).unwrap();
    assert_eq!(pins.len(), 512);
    let contiguous = pins.windows(2).all(|w| w[1].pfn == w[0].pfn + 1);
    if !contiguous {
        eprintln!("THP not granted this time (memory fragmentation); nothing to check");
    } else {
        assert_eq!(pins[0].pfn % 512, 0, "a 2 MiB-aligned frame run");
    }
    for x in pins {
        p.unpin_page(x.pfn, true);
    }
}
