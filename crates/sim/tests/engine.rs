//! The type1 engine (`type1_core::Container`) driven on the simulated machine: the
//! non-coherent stale-data leak appears under upstream's `none` policy and disappears under the
//! series' `seed` policy, and teardown leaves nothing behind.

use type1_core::TaskMemory;
use type1_core::{Config, Container, GroupId, MapRequest, UnmapRequest, PAGE_SIZE};
use type1_sim::{EngineView, MachineDesc, Sim};

const SECRET: u8 = 0x5e;
const VADDR: u64 = 0x40_0000;
const IOVA: u64 = 0x10_0000;
const NPAGES: u64 = 4;

/// A victim process fills pages with a secret, writes it back and exits; the guest process
/// then maps the same number of pages (which will reuse the victim's frames) into a container
/// holding `group`.
fn setup(policy: &str, group: u32) -> (Sim, Container) {
    let mut sim = Sim::new(MachineDesc::default()).unwrap();
    let victim = sim.create_process("victim");
    sim.mmap_anon(victim, 0x1000, NPAGES * PAGE_SIZE, true)
        .unwrap();
    sim.cpu_fill(victim, 0x1000, NPAGES * PAGE_SIZE, SECRET)
        .unwrap();
    sim.writeback_all();
    sim.exit_process(victim);

    let vm = sim.create_process("vm");
    sim.set_current(Some(vm));
    sim.mmap_anon(vm, VADDR, NPAGES * PAGE_SIZE, true).unwrap();
    let mut c = Container::new(Config::default(), policy).unwrap();
    c.add_group(&mut sim, GroupId(group)).unwrap();
    c.set_iommu(&mut sim, type1_core::IommuType::Type1v2)
        .unwrap();
    let req = MapRequest {
        flags: type1_core::MapFlags::RW,
        vaddr: VADDR,
        iova: IOVA,
        size: NPAGES * PAGE_SIZE,
    };
    c.iommu_mut().unwrap().map_dma(&mut sim, req).unwrap();
    assert_eq!(sim.locked_vm(vm), NPAGES);
    (sim, c)
}

fn views(c: &Container) -> Vec<EngineView> {
    c.iommu()
        .map(|t| vec![EngineView::of(t)])
        .unwrap_or_default()
}

fn unmap_and_close(sim: &mut Sim, c: &mut Container) {
    let req = UnmapRequest {
        flags: type1_core::UnmapFlags::default(),
        iova: IOVA,
        size: NPAGES * PAGE_SIZE,
        bitmap: None,
    };
    let n = c.iommu_mut().unwrap().unmap_dma(sim, req).unwrap();
    assert_eq!(n, NPAGES * PAGE_SIZE);
    assert_eq!(sim.pinned_frames(), 0, "no pins left after UNMAP");
    let vm = sim.current().unwrap().mm;
    assert_eq!(sim.locked_vm(vm), 0);
    assert_eq!(sim.check_engine(&views(c)), vec![]);
    c.close(sim);
    assert_eq!(sim.check_closed(), vec![]);
}

#[test]
fn noncoherent_device_reads_secret_without_flush() {
    let (mut sim, mut c) = setup("none", 1);
    assert_eq!(sim.check_engine(&views(&c)), vec![]);
    // The protocol check saw every page go into the non-coherent domain unflushed.
    let at_map = sim.take_new_violations();
    assert_eq!(at_map.len(), NPAGES as usize, "{at_map:?}");
    assert!(at_map.iter().all(|v| v.kind == "missing_map_flush"));
    let data = sim
        .dma_read("dev1", IOVA, 2 * PAGE_SIZE as usize, true)
        .unwrap();
    assert!(
        data.iter().all(|b| *b == SECRET),
        "the device sees the previous owner's data"
    );
    let v = sim.take_new_violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].kind, "stale_read");
    assert_eq!(sim.stats().leaked_bytes, 2 * PAGE_SIZE);
    assert_eq!(sim.stats().flush_calls, 0);

    // Upstream also unpins without a flush: the dirty zeros never reached RAM.
    let req = UnmapRequest {
        flags: type1_core::UnmapFlags::default(),
        iova: IOVA,
        size: NPAGES * PAGE_SIZE,
        bitmap: None,
    };
    c.iommu_mut().unwrap().unmap_dma(&mut sim, req).unwrap();
    let kinds: Vec<&str> = sim
        .take_new_violations()
        .into_iter()
        .map(|v| v.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["missing_unpin_flush", "unflushed_unpin"].repeat(NPAGES as usize)
    );
    assert_eq!(sim.check_engine(&views(&c)), vec![]);
    c.close(&mut sim);
    assert_eq!(sim.check_closed(), vec![]);
}

#[test]
fn seed_policy_flushes_before_the_device_can_see_the_pages() {
    let (mut sim, mut c) = setup("seed", 1);
    assert!(sim.stats().flush_calls > 0);
    let data = sim
        .dma_read("dev1", IOVA, (NPAGES * PAGE_SIZE) as usize, true)
        .unwrap();
    assert!(
        data.iter().all(|b| *b == 0),
        "the device sees the zeroed pages"
    );
    assert_eq!(sim.check_engine(&views(&c)), vec![]);
    // The device writes with no-snoop while the CPU holds a clean copy; the unpin flush drops it.
    let vm = sim.current().unwrap().mm;
    let mut buf = [0u8; 8];
    sim.cpu_read(vm, VADDR, &mut buf).unwrap();
    sim.dma_write("dev1", IOVA, &[9; 8], true).unwrap();
    unmap_and_close(&mut sim, &mut c);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    assert_eq!(sim.stats().leaked_bytes, 0);
    assert_eq!(sim.stats().stale_after_unpin_bytes, 0);
}

#[test]
fn coherent_domain_needs_no_flush() {
    let (mut sim, mut c) = setup("none", 0);
    let data = sim.dma_read("dev0", IOVA, 64, true).unwrap();
    assert_eq!(
        data,
        vec![0; 64],
        "an enforcing domain snoops even no-snoop requests"
    );
    unmap_and_close(&mut sim, &mut c);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

#[test]
fn both_groups_in_one_container_and_trace() {
    let (mut sim, mut c) = setup("seed", 0);
    c.add_group(&mut sim, GroupId(1)).unwrap();
    let t = c.iommu().unwrap();
    assert_eq!(t.domains().len(), 2, "different units: no domain sharing");
    assert_eq!(sim.check_engine(&views(&c)), vec![]);
    let data = sim.dma_read("dev1", IOVA, 64, true).unwrap();
    assert_eq!(
        data,
        vec![0; 64],
        "replay into the non-coherent domain flushed"
    );
    unmap_and_close(&mut sim, &mut c);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    let mut out = Vec::new();
    sim.write_jsonl(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text
        .lines()
        .any(|l| l.contains(r#""ev":"flush""#) && l.contains(r#""reason":"replay""#)));
    for (i, l) in text.lines().enumerate() {
        assert!(l.starts_with(&format!("{{\"seq\":{},", i + 1)), "{l}");
    }
}

#[test]
fn fault_sweep_leaves_nothing_behind() {
    // Count the fallible calls of a MAP into both groups, then fail each one in turn.
    let run = |n: u64| -> (Sim, bool) {
        let mut sim = Sim::new(MachineDesc::default()).unwrap();
        let vm = sim.create_process("vm");
        sim.set_current(Some(vm));
        sim.mmap_anon(vm, VADDR, NPAGES * PAGE_SIZE, true).unwrap();
        sim.fail_nth_any(n);
        let mut c = Container::new(Config::default(), "seed").unwrap();
        let mut ok =
            c.add_group(&mut sim, GroupId(0)).is_ok() && c.add_group(&mut sim, GroupId(1)).is_ok();
        ok = ok
            && c.set_iommu(&mut sim, type1_core::IommuType::Type1v2)
                .is_ok();
        if ok {
            let req = MapRequest {
                flags: type1_core::MapFlags::RW,
                vaddr: VADDR,
                iova: IOVA,
                size: NPAGES * PAGE_SIZE,
            };
            ok = c.iommu_mut().unwrap().map_dma(&mut sim, req).is_ok();
        }
        assert_eq!(sim.check_engine(&views(&c)), vec![], "n = {n}");
        c.close(&mut sim);
        assert_eq!(sim.check_closed(), vec![], "n = {n}");
        assert!(
            sim.violations().is_empty(),
            "n = {n}: {:?}",
            sim.violations()
        );
        (sim, ok)
    };
    let (sim, ok) = run(0);
    assert!(ok);
    let total = sim.fallible_calls();
    assert!(total >= 6, "{total}");
    for n in 1..=total {
        let (sim, ok) = run(n);
        assert!(!ok, "n = {n}: the injected fault must make some step fail");
        assert_eq!(sim.faults_injected(), 1);
    }
}

#[test]
fn user_remapping_a_pinned_vaddr_is_not_an_engine_violation() {
    let (mut sim, mut c) = setup("seed", 1);
    let vm = sim.current().unwrap().mm;
    let old = sim.translate(vm, VADDR).unwrap().0;
    sim.munmap(vm, VADDR, NPAGES * PAGE_SIZE).unwrap();
    sim.mmap_anon(vm, VADDR, NPAGES * PAGE_SIZE, true).unwrap();
    sim.cpu_fill(vm, VADDR, PAGE_SIZE, 1).unwrap();
    assert_ne!(sim.translate(vm, VADDR).unwrap().0, old);
    assert_eq!(
        sim.frame_pins(old),
        1,
        "the mapping still pins the old frame"
    );
    assert_eq!(sim.check_engine(&views(&c)), vec![]);
    unmap_and_close(&mut sim, &mut c);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

/// On a machine with transparent huge pages, a 2 MiB-aligned guest is faulted in 2 MiB at a
/// time into aligned frames, the non-coherent domain takes 2 MiB leaves, and mapping,
/// unmapping one of two mappings and closing pass every check (incremental and full agree)
/// and leave nothing behind.
#[test]
fn a_guest_in_huge_pages_takes_2m_iommu_leaves_and_leaves_nothing_behind() {
    let mut sim = Sim::new(MachineDesc {
        memory_frames: 8192,
        thp: true,
        ..MachineDesc::default()
    })
    .unwrap();
    sim.set_check_mode(type1_sim::CheckMode::Verify);
    let vm = sim.create_process("vm");
    sim.set_current(Some(vm));
    let (vaddr, mib) = (1u64 << 30, 1u64 << 20);
    sim.mmap_anon(vm, vaddr, 8 * mib, true).unwrap();
    let mut c = Container::new(Config::default(), "seed").unwrap();
    c.add_group(&mut sim, GroupId(1)).unwrap();
    c.set_iommu(&mut sim, type1_core::IommuType::Type1v2)
        .unwrap();
    for half in 0..2 {
        let req = MapRequest {
            flags: type1_core::MapFlags::RW,
            vaddr: vaddr + half * 4 * mib,
            iova: (1 << 32) + half * 4 * mib,
            size: 4 * mib,
        };
        c.iommu_mut().unwrap().map_dma(&mut sim, req).unwrap();
    }
    let (pfn, _) = sim.translate(vm, vaddr).unwrap();
    assert_eq!(pfn % 512, 0, "a huge page starts 2 MiB aligned");
    assert_eq!(sim.translate(vm, vaddr + 4096).unwrap().0, pfn + 1);
    let d = c.iommu().unwrap().domains()[0].id;
    let leaves = sim.domain_leaves(d).unwrap();
    assert_eq!((leaves.leaves_2m, leaves.leaves_4k), (4, 0), "{leaves:?}");
    assert_eq!(sim.check_engine(&views(&c)), vec![]);
    let req = UnmapRequest {
        flags: type1_core::UnmapFlags::default(),
        iova: 1 << 32,
        size: 4 * mib,
        bitmap: None,
    };
    assert_eq!(
        c.iommu_mut().unwrap().unmap_dma(&mut sim, req).unwrap(),
        4 * mib
    );
    assert_eq!(sim.domain_leaves(d).unwrap().leaves_2m, 2);
    assert_eq!(sim.check_engine(&views(&c)), vec![]);
    // Half of the remaining huge page goes from the process: it is split, the pinned half
    // stays.
    sim.munmap(vm, vaddr + 5 * mib, mib).unwrap();
    assert_eq!(sim.check_engine(&views(&c)), vec![]);
    c.close(&mut sim);
    sim.exit_process(vm);
    assert_eq!(sim.check_closed(), vec![]);
    assert_eq!(sim.pinned_frames(), 0);
}
