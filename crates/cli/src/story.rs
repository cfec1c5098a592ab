//! `type1 demo` and `type1 attack`: narrated walks through the series' examples.
//!
//! Both build a [`World`] on the simulated machine and execute scenario operations one by one,
//! printing the engine events each step caused. Nothing here is scripted output: every line
//! about a flush, a pin or a leaked byte is read back from the simulator's trace and counters.

use std::{path::Path, process::ExitCode};

use anyhow::{anyhow, bail, Result};
use type1_core::{Event, FlushReason};
use type1_scenario::{parse::Op, World};
use type1_sim::MachineDesc;

fn world(policy: &str, machine: Option<&Path>) -> Result<World> {
    let desc = match machine {
        Some(p) => MachineDesc::load(p).map_err(|e| anyhow!("{e}"))?,
        None => MachineDesc::default(),
    };
    World::new(desc, policy).map_err(|e| anyhow!("{e}"))
}

/// The coherent and non-coherent groups of the machine (first of each kind).
fn pick_groups(w: &World) -> Result<(u32, u32, String)> {
    let gs = w.sim.iommu_groups();
    let coh = gs.iter().find(|g| g.1).map(|g| g.0);
    let nc = gs.iter().find(|g| !g.1);
    match (coh, nc) {
        (Some(c), Some(n)) => Ok((c, n.0, n.2.clone())),
        _ => bail!("the machine needs one group behind a snoop-control IOMMU and one behind an IOMMU without it"),
    }
}

struct Narrator {
    seen: usize,
    quiet: bool,
}

impl Narrator {
    fn step(&mut self, w: &mut World, op: Op) -> Result<()> {
        let r = w.exec(&op);
        w.check(0);
        r.map_err(|e| anyhow!("{op:?}: {e}"))?;
        self.show(w);
        Ok(())
    }

    fn show(&mut self, w: &World) {
        let evs = w.sim.events();
        for (_, e) in &evs[self.seen..] {
            if self.quiet {
                continue;
            }
            let line = match e {
                Event::Attach {
                    group,
                    domain,
                    coherent,
                    new_domain,
                } => format!(
                    "attach group {group} -> domain {domain} ({}{})",
                    if *coherent {
                        "coherent"
                    } else {
                        "NON-coherent"
                    },
                    if *new_domain {
                        ", new: existing mappings replayed"
                    } else {
                        ""
                    }
                ),
                Event::Detach {
                    group,
                    domain,
                    freed,
                } => {
                    format!(
                        "detach group {group} from domain {domain}{}",
                        if *freed { " (domain freed)" } else { "" }
                    )
                }
                Event::Map {
                    domain,
                    iova,
                    npages,
                    pa,
                } => {
                    format!("iommu map   domain {domain} iova 0x{iova:x} -> pa 0x{pa:x} ({npages} pages)")
                }
                Event::Unmap {
                    domain,
                    iova,
                    npages,
                } => {
                    format!("iommu unmap domain {domain} iova 0x{iova:x} ({npages} pages)")
                }
                Event::Pin {
                    iova,
                    npages,
                    pfn,
                    external,
                } => format!(
                    "pin         iova 0x{iova:x} pfn 0x{pfn:x} ({npages} pages{})",
                    if *external { ", external" } else { "" }
                ),
                Event::Unpin {
                    iova,
                    npages,
                    pfn,
                    external,
                } => format!(
                    "unpin       iova 0x{iova:x} pfn 0x{pfn:x} ({npages} pages{})",
                    if *external { ", external" } else { "" }
                ),
                Event::Flush {
                    reason,
                    iova,
                    npages,
                    ..
                } => {
                    format!(">>> FLUSH ({reason:?}) iova 0x{iova:x} ({npages} pages) <<<")
                }
                Event::Dma {
                    device,
                    iova,
                    len,
                    dir,
                    snoop,
                } => format!(
                    "dma         {device} {dir} iova 0x{iova:x} {len} bytes{}",
                    if *snoop { "" } else { " (no-snoop)" }
                ),
                Event::Violation { kind, detail } => format!("!!! VIOLATION {kind}: {detail}"),
                Event::Fault { source, detail } => format!("fault {source}: {detail}"),
                Event::Op { .. } | Event::Ret { .. } => continue,
            };
            println!("      {line}");
        }
        self.seen = evs.len();
    }
}

fn flag(w: &World, c: &str, iova: u64) -> String {
    w.containers
        .get(c)
        .and_then(|c| c.iommu().ok())
        .and_then(|t| t.mapping_at(iova))
        .map_or("(no mapping)".into(), |m| m.is_noncoherent.to_string())
}

fn cc(w: &World, c: &str) -> u32 {
    w.containers
        .get(c)
        .map_or(0, |c| c.check_extension(type1_core::abi::VFIO_DMA_CC_IOMMU))
}

fn save_trace(w: &World, trace: Option<&Path>) -> Result<()> {
    if let Some(t) = trace {
        let f = std::fs::File::create(t)
            .map_err(|e| anyhow!("cannot create trace file {}: {e}", t.display()))?;
        w.sim
            .write_jsonl(std::io::BufWriter::new(f))
            .map_err(|e| anyhow!("cannot write {}: {e}", t.display()))?;
    }
    Ok(())
}

const IOVA: u64 = 0x10_0000;
const VADDR: u64 = 0x7f00_0000_0000;

/// `type1 demo`.
pub fn demo(policy: &str, machine: Option<&Path>, trace: Option<&Path>) -> Result<ExitCode> {
    let mut w = world(policy, machine)?;
    let (coh, nc, _) = pick_groups(&w)?;
    let mut n = Narrator {
        seen: 0,
        quiet: false,
    };
    println!(
        "type1 demo: the five-step example of the series (F6), flush policy `{}`",
        w.policy()
    );
    println!("A VMM maps one page for DMA. Watch where the CPU cache is flushed.\n");
    println!("setup: process `vmm` maps a page at vaddr 0x{VADDR:x}; container c0 gets group {coh} (coherent IOMMU)");
    n.step(
        &mut w,
        Op::Process {
            name: "vmm".into(),
            limit: None,
            cap_ipc_lock: false,
        },
    )?;
    n.step(
        &mut w,
        Op::Mmap {
            vaddr: VADDR,
            len: 4096,
            writable: true,
            mmio: None,
        },
    )?;
    n.step(
        &mut w,
        Op::CpuWrite {
            vaddr: VADDR,
            data: b"guest RAM page".to_vec(),
        },
    )?;
    n.step(&mut w, Op::Container("c0".into()))?;
    n.step(
        &mut w,
        Op::Attach {
            container: "c0".into(),
            group: coh,
        },
    )?;
    n.step(
        &mut w,
        Op::SetIommu {
            container: "c0".into(),
            kind: 3,
        },
    )?;

    println!("\nstep 1: MAP_DMA iova 0x{IOVA:x} while only a coherent domain exists");
    n.step(
        &mut w,
        Op::Map {
            container: "c0".into(),
            iova: IOVA,
            vaddr: VADDR,
            size: 4096,
            flags: 3,
        },
    )?;
    println!(
        "   -> is_noncoherent = {}, no flush needed: the IOMMU forces snooping",
        flag(&w, "c0", IOVA)
    );

    println!("\nstep 2: group {nc} (IOMMU without snoop control) joins: a new non-coherent domain, replay");
    n.step(
        &mut w,
        Op::Attach {
            container: "c0".into(),
            group: nc,
        },
    )?;
    println!(
        "   -> is_noncoherent = {}, VFIO_DMA_CC_IOMMU = {}: the page was flushed before the device could bypass the cache",
        flag(&w, "c0", IOVA),
        cc(&w, "c0")
    );

    println!("\nstep 3: group {nc} is hot-unplugged: its domain goes away");
    n.step(
        &mut w,
        Op::Detach {
            container: "c0".into(),
            group: nc,
        },
    )?;
    println!(
        "   -> no flush; is_noncoherent = {} (sticky), VFIO_DMA_CC_IOMMU = {}",
        flag(&w, "c0", IOVA),
        cc(&w, "c0")
    );

    println!("\nsteps 4 and 5: UNMAP_DMA unmaps from the coherent domain, then unpins");
    n.step(
        &mut w,
        Op::Unmap {
            container: "c0".into(),
            iova: IOVA,
            size: 4096,
            flags: 0,
        },
    )?;
    println!("   -> the page is flushed after the IOTLB sync and before the pin is dropped");

    n.step(&mut w, Op::Close("c0".into()))?;
    w.teardown(0);
    n.show(&w);
    let (map, _) = w.flushes(Some(FlushReason::Map), Some(IOVA));
    let (replay, _) = w.flushes(Some(FlushReason::Replay), Some(IOVA));
    let (unpin, _) = w.flushes(Some(FlushReason::Unpin), Some(IOVA));
    println!(
        "\nsummary: {} flush episodes for the page (map {map}, replay {replay}, unpin {unpin}); violations: {}",
        map + replay + unpin,
        w.pending().len()
    );
    save_trace(&w, trace)?;
    Ok(ExitCode::SUCCESS)
}

/// `type1 attack`.
pub fn attack(
    policy: &str,
    json: bool,
    machine: Option<&Path>,
    trace: Option<&Path>,
) -> Result<ExitCode> {
    let mut w = world(policy, machine)?;
    let (_, nc, dev) = pick_groups(&w)?;
    let mut n = Narrator {
        seen: 0,
        quiet: json,
    };
    let say = |s: &str| {
        if !json {
            println!("{s}");
        }
    };
    let secret = b"host secret: root password hunter2, private key 0xDEADBEEF".to_vec();
    say(&format!(
        "type1 attack: a malicious guest vs. flush policy `{}`\n",
        w.policy()
    ));
    say(
        "1. a host process (the previous owner) writes a secret; it reaches RAM; the process exits",
    );
    n.step(
        &mut w,
        Op::Process {
            name: "victim".into(),
            limit: None,
            cap_ipc_lock: false,
        },
    )?;
    n.step(
        &mut w,
        Op::Mmap {
            vaddr: 0x4000_0000,
            len: 4096,
            writable: true,
            mmio: None,
        },
    )?;
    n.step(
        &mut w,
        Op::CpuWrite {
            vaddr: 0x4000_0000,
            data: secret.clone(),
        },
    )?;
    n.step(&mut w, Op::Cache { evict: false })?;
    n.step(&mut w, Op::Exit("victim".into()))?;

    say("2. the VMM allocates guest RAM: the freed frame is reused and zeroed through the cache");
    say("   (the zeros sit dirty in the cache; RAM still holds the secret)");
    n.step(
        &mut w,
        Op::Process {
            name: "vmm".into(),
            limit: None,
            cap_ipc_lock: false,
        },
    )?;
    n.step(
        &mut w,
        Op::Mmap {
            vaddr: VADDR,
            len: 4096,
            writable: true,
            mmio: None,
        },
    )?;
    n.step(
        &mut w,
        Op::CpuRead {
            vaddr: VADDR,
            len: 16,
        },
    )?;

    say(&format!("3. the VMM assigns device {dev} (group {nc}, IOMMU without snoop control) and maps the page"));
    n.step(&mut w, Op::Container("c0".into()))?;
    n.step(
        &mut w,
        Op::Attach {
            container: "c0".into(),
            group: nc,
        },
    )?;
    n.step(
        &mut w,
        Op::SetIommu {
            container: "c0".into(),
            kind: 3,
        },
    )?;
    n.step(
        &mut w,
        Op::Map {
            container: "c0".into(),
            iova: IOVA,
            vaddr: VADDR,
            size: 4096,
            flags: 3,
        },
    )?;

    say("4. the guest programs the device to read the page with no-snoop DMA");
    n.step(
        &mut w,
        Op::Dma {
            device: dev.clone(),
            write: None,
            iova: IOVA,
            len: 4096,
            no_snoop: true,
        },
    )?;
    let got = w.last_read.clone();
    let shown: String = got[..secret.len()]
        .iter()
        .map(|b| {
            if b.is_ascii_graphic() || *b == b' ' {
                *b as char
            } else {
                '.'
            }
        })
        .collect();
    say(&format!("   the device read: {shown:?}"));

    say("5. the host reads the page (lines cached), then the device writes it with no-snoop DMA");
    n.step(
        &mut w,
        Op::CpuRead {
            vaddr: VADDR + 2048,
            len: 2048,
        },
    )?;
    n.step(
        &mut w,
        Op::Dma {
            device: dev.clone(),
            write: Some(0xaa),
            iova: IOVA,
            len: 4096,
            no_snoop: true,
        },
    )?;

    say("6. the VMM unmaps and the page is unpinned; what does the host see now?");
    n.step(
        &mut w,
        Op::Unmap {
            container: "c0".into(),
            iova: IOVA,
            size: 4096,
            flags: 0,
        },
    )?;
    n.step(&mut w, Op::Close("c0".into()))?;
    w.teardown(0);
    n.show(&w);

    let leaked = w.sim.leaked_bytes();
    let stale = w.sim.stale_after_unpin_bytes();
    let (flushes, flushed_pages) = w.flushes(None, None);
    let violations: Vec<String> = w.pending().iter().map(|v| v.v.kind.clone()).collect();
    if json {
        let o = serde_json::json!({
            "policy": w.policy(),
            "leaked_bytes": leaked,
            "stale_after_unpin_bytes": stale,
            "flushes": flushes,
            "flushed_pages": flushed_pages,
            "violations": violations,
        });
        println!("{o}");
    } else {
        println!("\nresult: {leaked} bytes of stale host data reached the device; {stale} bytes where cache and RAM disagree after unpin; {flushes} flushes");
        if leaked + stale == 0 {
            println!("the flushes closed both windows");
        } else {
            println!("policy `{}` leaves the windows open", w.policy());
        }
    }
    save_trace(&w, trace)?;
    Ok(ExitCode::SUCCESS)
}
