//! `type1 demo` and `type1 attack`: narrated walks through the series' examples.
//!
//! Both build a [`World`] on the simulated machine and execute scenario operations one by one,
//! printing the engine events each step caused. Nothing here is scripted output: every line
//! about a flush, a pin or a leaked byte is read back from the simulator's trace and counters.

use std::{path::Path, process::ExitCode};

use anyhow::{anyhow, bail, Result};
use type1_core::{Event, FlushReason};
use type1_scenario::{parse::parse, World};
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
    let gs = w.sim().iommu_groups();
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
    /// Executes one scenario line (`docs/scenarios.md`) and prints the events it caused.
    fn line(&mut self, w: &mut World, line: &str) -> Result<()> {
        let steps = parse(line).map_err(|e| anyhow!("internal scenario line {line:?}: {e}"))?;
        for s in steps {
            let r = w.exec(&s.op);
            w.check(0);
            r.map_err(|e| anyhow!("{line}: {e}"))?;
        }
        self.show(w);
        Ok(())
    }

    /// Executes several lines.
    fn lines(&mut self, w: &mut World, lines: &[String]) -> Result<()> {
        lines.iter().try_for_each(|l| self.line(w, l))
    }

    fn show(&mut self, w: &World) {
        let evs = w.sim().events();
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
                Event::Op { .. }
                | Event::Ret { .. }
                | Event::CpuFlush { .. }
                | Event::Irq { .. } => continue,
            };
            println!("      {line}");
        }
        self.seen = evs.len();
    }
}

fn flag(w: &World, c: &str, iova: u64) -> String {
    w.container(c)
        .and_then(|c| c.iommu().ok())
        .and_then(|t| t.mapping_at(iova))
        .map_or("(no mapping)".into(), |m| m.is_noncoherent.to_string())
}

fn cc(w: &World, c: &str) -> u32 {
    w.container(c)
        .map_or(0, |c| c.check_extension(type1_core::abi::VFIO_DMA_CC_IOMMU))
}

fn save_trace(w: &World, trace: Option<&Path>) -> Result<()> {
    if let Some(t) = trace {
        let f = std::fs::File::create(t)
            .map_err(|e| anyhow!("cannot create trace file {}: {e}", t.display()))?;
        w.sim()
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
    println!(
        "setup: process `vmm` maps a page at vaddr 0x{VADDR:x}; container c0 gets group {coh} (coherent IOMMU)"
    );
    n.lines(
        &mut w,
        &[
            "process vmm".into(),
            format!("mmap 0x{VADDR:x} 4K"),
            format!("write 0x{VADDR:x} \"guest RAM page\""),
            "container c0".into(),
            format!("attach c0 {coh}"),
            "set_iommu c0 v2".into(),
        ],
    )?;

    println!("\nstep 1: MAP_DMA iova 0x{IOVA:x} while only a coherent domain exists");
    n.line(&mut w, &format!("map c0 0x{IOVA:x} 0x{VADDR:x} 4K rw"))?;
    println!(
        "   -> is_noncoherent = {}, no flush needed: the IOMMU forces snooping",
        flag(&w, "c0", IOVA)
    );

    println!("\nstep 2: group {nc} (IOMMU without snoop control) joins: a new non-coherent domain, replay");
    n.line(&mut w, &format!("attach c0 {nc}"))?;
    println!(
        "   -> is_noncoherent = {}, VFIO_DMA_CC_IOMMU = {}: the page was flushed before the device could bypass the cache",
        flag(&w, "c0", IOVA),
        cc(&w, "c0")
    );

    println!("\nstep 3: group {nc} is hot-unplugged: its domain goes away");
    n.line(&mut w, &format!("detach c0 {nc}"))?;
    println!(
        "   -> no flush; is_noncoherent = {} (sticky), VFIO_DMA_CC_IOMMU = {}",
        flag(&w, "c0", IOVA),
        cc(&w, "c0")
    );

    println!("\nsteps 4 and 5: UNMAP_DMA unmaps from the coherent domain, then unpins");
    n.line(&mut w, &format!("unmap c0 0x{IOVA:x} 4K"))?;
    println!("   -> the page is flushed after the IOTLB sync and before the pin is dropped");

    n.line(&mut w, "close c0")?;
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
    let secret = "host secret: root password hunter2, private key 0xDEADBEEF";
    let victim = 0x4000_0000u64;
    say(&format!(
        "type1 attack: a malicious guest vs. flush policy `{}`\n",
        w.policy()
    ));
    say(
        "1. a host process (the previous owner) writes a secret; it reaches RAM; the process exits",
    );
    n.lines(
        &mut w,
        &[
            "process victim".into(),
            format!("mmap 0x{victim:x} 4K"),
            format!("write 0x{victim:x} \"{secret}\""),
            "cache writeback".into(),
            "exit victim".into(),
        ],
    )?;

    say("2. the VMM allocates guest RAM: the freed frame is reused and zeroed through the cache");
    say("   (the zeros sit dirty in the cache; RAM still holds the secret)");
    n.lines(
        &mut w,
        &[
            "process vmm".into(),
            format!("mmap 0x{VADDR:x} 4K"),
            format!("read 0x{VADDR:x} 16"),
        ],
    )?;

    say(&format!("3. the VMM assigns device {dev} (group {nc}, IOMMU without snoop control) and maps the page"));
    n.lines(
        &mut w,
        &[
            "container c0".into(),
            format!("attach c0 {nc}"),
            "set_iommu c0 v2".into(),
            format!("map c0 0x{IOVA:x} 0x{VADDR:x} 4K rw"),
        ],
    )?;

    say("4. the guest programs the device to read the page with no-snoop DMA");
    n.line(&mut w, &format!("dma {dev} read 0x{IOVA:x} 4K nosnoop"))?;
    let shown: String = w.last_read[..secret.len()]
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
    n.lines(
        &mut w,
        &[
            format!("read 0x{:x} 2048", VADDR + 2048),
            format!("dma {dev} write 0x{IOVA:x} 4K nosnoop byte=0xaa"),
        ],
    )?;

    say("6. the VMM unmaps and the page is unpinned; what does the host see now?");
    n.lines(
        &mut w,
        &[format!("unmap c0 0x{IOVA:x} 4K"), "close c0".into()],
    )?;
    w.teardown(0);
    n.show(&w);

    let leaked = w.sim().leaked_bytes();
    let stale = w.sim().stale_after_unpin_bytes();
    let (flushes, flushed_pages) = w.flushes(None, None);
    let violations: Vec<String> = w.pending().iter().map(|v| v.v.kind.to_string()).collect();
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
        println!(
            "\nresult: {leaked} bytes of stale host data reached the device; {stale} bytes where cache and RAM disagree after unpin; {flushes} flushes"
        );
        if leaked + stale == 0 {
            println!("the flushes closed both windows");
        } else {
            println!("policy `{}` leaves the windows open", w.policy());
        }
    }
    save_trace(&w, trace)?;
    Ok(ExitCode::SUCCESS)
}
