//! `type1 demo` and `type1 attack`: narrated walks through the series' examples.
//!
//! Both build a [`World`] on the simulated machine and execute scenario operations one by one,
//! printing the engine events each step caused. Nothing here is scripted output: every line
//! about a flush, a pin or a leaked byte is read back from the simulator's trace and counters.

use std::{path::Path, process::ExitCode};

use anyhow::{anyhow, bail, Result};
use type1_core::{iommufd::FillPolicy, Event, FlushReason};
use type1_scenario::{parse::parse, World};
use type1_sim::MachineDesc;

fn world(policy: &str, machine: Option<&Path>) -> Result<World> {
    let desc = match machine {
        Some(p) => MachineDesc::load(p).map_err(|e| anyhow!("{e}"))?,
        None => MachineDesc::default(),
    };
    World::new(desc, policy).map_err(|e| anyhow!("{e}"))
}

/// The coherent and non-coherent groups of the machine (first of each kind), each with its
/// first device.
fn pick_groups(w: &World) -> Result<((u32, String), (u32, String))> {
    let gs = w.sim().iommu_groups();
    let coh = gs.iter().find(|g| g.1);
    let nc = gs.iter().find(|g| !g.1);
    match (coh, nc) {
        (Some(c), Some(n)) => Ok(((c.0, c.2.clone()), (n.0, n.2.clone()))),
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

/// Which uAPI the story's VMM uses: a type1 container (`/dev/vfio/vfio` and group files) or
/// iommufd (`/dev/iommu`, device cdevs bound to it, one IOAS; patch 5/5's flushes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Container `c0`, groups attached with SET_CONTAINER, MAP_DMA and UNMAP_DMA.
    Type1,
    /// `/dev/iommu` file `i`, IOAS `a`, device cdevs bound and attached, IOAS_MAP and
    /// IOAS_UNMAP.
    Iommufd,
}

impl Via {
    /// The path of a command line's `--iommufd`.
    pub fn of(iommufd: bool) -> Via {
        if iommufd {
            Via::Iommufd
        } else {
            Via::Type1
        }
    }

    /// Checks that `policy` exists on this path; the error names the option and its value.
    fn check_policy(self, policy: &str) -> Result<()> {
        if self == Via::Iommufd && FillPolicy::from_name(policy).is_none() {
            bail!(
                "--policy {policy:?} with --iommufd: iommufd's fill policies are {}",
                FillPolicy::ALL.map(FillPolicy::name).join(", ")
            );
        }
        Ok(())
    }

    /// The type1 policy of the world: iommufd's own is set on its `iommufd` line.
    fn world_policy(self, policy: &str) -> &str {
        match self {
            Via::Type1 => policy,
            Via::Iommufd => "none",
        }
    }

    /// The lines that open the VMM's DMA context (before any device).
    fn open(self, policy: &str) -> Vec<String> {
        match self {
            Via::Type1 => vec!["container c0".into()],
            Via::Iommufd => vec![format!("iommufd i policy={policy}"), "ioas a i".into()],
        }
    }

    /// The lines that give the VMM the device of group `g` (`dev`); `first` when it is the
    /// context's first (type1 then selects its backend).
    fn assign(self, g: u32, dev: &str, first: bool) -> Vec<String> {
        match self {
            Via::Type1 if first => vec![format!("attach c0 {g}"), "set_iommu c0 v2".into()],
            Via::Type1 => vec![format!("attach c0 {g}")],
            Via::Iommufd => vec![format!("bind {dev} i"), format!("attach_pt {dev} a")],
        }
    }

    /// The line that takes the device of group `g` away.
    fn unassign(self, g: u32, dev: &str) -> String {
        match self {
            Via::Type1 => format!("detach c0 {g}"),
            Via::Iommufd => format!("detach_pt {dev}"),
        }
    }

    fn map(self, iova: u64, vaddr: u64) -> String {
        match self {
            Via::Type1 => format!("map c0 0x{iova:x} 0x{vaddr:x} 4K rw"),
            Via::Iommufd => format!("ioas_map a 0x{iova:x} 0x{vaddr:x} 4K"),
        }
    }

    fn unmap(self, iova: u64) -> String {
        match self {
            Via::Type1 => format!("unmap c0 0x{iova:x} 4K"),
            Via::Iommufd => format!("ioas_unmap a 0x{iova:x} 4K"),
        }
    }

    /// The lines that close the context (iommufd's files close at teardown).
    fn close(self) -> Vec<String> {
        match self {
            Via::Type1 => vec!["close c0".into()],
            Via::Iommufd => vec![],
        }
    }

    /// The sticky flag of the mapping at `iova`: type1's `is_noncoherent`, or 5/5's bit on
    /// the pages behind the area.
    fn flag(self, w: &World, iova: u64) -> String {
        let v = match self {
            Via::Type1 => w
                .container("c0")
                .and_then(|c| c.iommu().ok())
                .and_then(|t| t.mapping_at(iova))
                .map(|m| m.is_noncoherent),
            Via::Iommufd => w
                .ifd_object("a")
                .and_then(|a| w.vfio.iommufds().find_map(|(_, x)| x.flagged(a, iova))),
        };
        v.map_or("(no mapping)".into(), |f| f.to_string())
    }

    /// `VFIO_DMA_CC_IOMMU`: every domain of the context enforces snooping.
    fn cc(self, w: &World) -> u32 {
        match self {
            Via::Type1 => w.container("c0").map_or(0, |c| {
                c.check_extension(type1_core::Extension::DmaCcIommu) as u32
            }),
            Via::Iommufd => w.ifd_object("a").map_or(0, |a| {
                w.vfio
                    .iommufds()
                    .any(|(_, x)| x.all_coherent(a) == Ok(true)) as u32
            }),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Via::Type1 => "a type1 container",
            Via::Iommufd => "iommufd (patch 5/5)",
        }
    }
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
pub fn demo(
    policy: &str,
    via: Via,
    machine: Option<&Path>,
    trace: Option<&Path>,
) -> Result<ExitCode> {
    via.check_policy(policy)?;
    let mut w = world(via.world_policy(policy), machine)?;
    let ((coh, coh_dev), (nc, nc_dev)) = pick_groups(&w)?;
    let mut n = Narrator {
        seen: 0,
        quiet: false,
    };
    println!(
        "type1 demo: the five-step example of the series (F6) through {}, flush policy `{policy}`",
        via.name()
    );
    println!("A VMM maps one page for DMA. Watch where the CPU cache is flushed.\n");
    println!(
        "setup: process `vmm` maps a page at vaddr 0x{VADDR:x}; the VMM gets group {coh}'s device {coh_dev} (coherent IOMMU)"
    );
    let mut setup = vec![
        "process vmm".into(),
        format!("mmap 0x{VADDR:x} 4K"),
        format!("write 0x{VADDR:x} \"guest RAM page\""),
    ];
    setup.extend(via.open(policy));
    setup.extend(via.assign(coh, &coh_dev, true));
    n.lines(&mut w, &setup)?;

    println!("\nstep 1: map iova 0x{IOVA:x} while only a coherent domain exists");
    n.line(&mut w, &via.map(IOVA, VADDR))?;
    println!(
        "   -> flag = {}, no flush needed: the IOMMU forces snooping",
        via.flag(&w, IOVA)
    );

    println!("\nstep 2: group {nc} ({nc_dev}, IOMMU without snoop control) joins: a new non-coherent domain, filled with the existing mapping");
    n.lines(&mut w, &via.assign(nc, &nc_dev, false))?;
    println!(
        "   -> flag = {}, VFIO_DMA_CC_IOMMU = {}: the page was flushed before the device could bypass the cache",
        via.flag(&w, IOVA),
        via.cc(&w)
    );

    println!("\nstep 3: group {nc} is hot-unplugged: its domain goes away");
    n.line(&mut w, &via.unassign(nc, &nc_dev))?;
    println!(
        "   -> no flush; flag = {} (sticky), VFIO_DMA_CC_IOMMU = {}",
        via.flag(&w, IOVA),
        via.cc(&w)
    );

    println!(
        "\nsteps 4 and 5: the unmap takes the page out of the coherent domain, then unpins it"
    );
    n.line(&mut w, &via.unmap(IOVA))?;
    println!("   -> the page is flushed after the IOTLB sync and before the pin is dropped");

    n.lines(&mut w, &via.close())?;
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
    via: Via,
    json: bool,
    machine: Option<&Path>,
    trace: Option<&Path>,
) -> Result<ExitCode> {
    via.check_policy(policy)?;
    let mut w = world(via.world_policy(policy), machine)?;
    let (_, (nc, dev)) = pick_groups(&w)?;
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
        "type1 attack: a malicious guest vs. flush policy `{policy}`, through {}\n",
        via.name()
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
    let mut assign = via.open(policy);
    assign.extend(via.assign(nc, &dev, true));
    assign.push(via.map(IOVA, VADDR));
    n.lines(&mut w, &assign)?;

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
    let mut unmap = vec![via.unmap(IOVA)];
    unmap.extend(via.close());
    n.lines(&mut w, &unmap)?;
    w.teardown(0);
    n.show(&w);

    let leaked = w.sim().leaked_bytes();
    let stale = w.sim().stale_after_unpin_bytes();
    let (flushes, flushed_pages) = w.flushes(None, None);
    let violations: Vec<String> = w.pending().iter().map(|v| v.v.kind.to_string()).collect();
    if json {
        let o = serde_json::json!({
            "policy": policy,
            "via": if via == Via::Iommufd { "iommufd" } else { "type1" },
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
            println!("policy `{policy}` leaves the windows open");
        }
    }
    save_trace(&w, trace)?;
    Ok(ExitCode::SUCCESS)
}
