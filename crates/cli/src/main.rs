//! `type1`: the command line of the type1 project.
//!
//! Subcommands (`demo`, `attack`, `run` and `check` drive the engine, `type1-core`, on the
//! simulated machine, `type1-sim`, through the scenario world, `type1-scenario`):
//! * `demo`: the five-step example of the series (F6), narrated;
//! * `attack`: the malicious-guest story (F0) under a chosen flush policy;
//! * `run`: scenario files;
//! * `exec`: an unmodified VFIO program under the LD_PRELOAD emulation (`type1-preload`);
//! * `check`: bounded exhaustive checking of flush policies (`type1-check`);
//! * `bench`: the series' cost table against this machine's floors, and `--scale` (`bench.rs`);
//! * `trace`: a JSON-lines trace summarized, or written as a Perfetto timeline (`type1-exec`).

mod bench;
mod checkcmd;
mod embedded;
mod emulated;
mod guest;
mod hostthp;
mod model;
mod nvmebench;
mod plot;
mod scale;
mod story;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use type1_scenario::{run_text, RunOptions};

/// Every policy name: type1's, and iommufd's that type1 does not have.
fn policies() -> clap::builder::PossibleValuesParser {
    let extra = type1_core::iommufd::FillPolicy::ALL
        .map(|p| p.name())
        .into_iter()
        .filter(|n| !type1_core::policy::POLICY_NAMES.contains(n));
    clap::builder::PossibleValuesParser::new(
        type1_core::policy::POLICY_NAMES
            .iter()
            .copied()
            .chain(extra),
    )
}

#[derive(Parser)]
#[command(
    name = "type1",
    version,
    about = "VFIO type1 IOMMU backend with non-coherent DMA cache flushing, on a simulated machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Narrate the series' five-step example (F6): where the two flushes happen and why.
    Demo {
        /// Flush policy (`seed` is the series, `none` is upstream type1).
        #[arg(long, default_value = "seed", value_parser = policies())]
        policy: String,
        /// Tell it through iommufd (`/dev/iommu`, device cdevs, one IOAS): patch 5/5's
        /// flushes, with iommufd's fill policies (none, seed, seed-repin, seed-noskip,
        /// seed-fixed).
        #[arg(long)]
        iommufd: bool,
        /// Write the JSON-lines trace to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Machine description (TOML); the built-in default otherwise.
        #[arg(long)]
        machine: Option<PathBuf>,
    },
    /// Play the malicious-guest story (F0): stale host data read by no-snoop DMA.
    Attack {
        /// Flush policy: `none` (upstream) or `seed` (the series); any shipped policy works.
        #[arg(long, default_value = "seed", value_parser = policies())]
        policy: String,
        /// Play it through iommufd (`/dev/iommu`, a device cdev, one IOAS): patch 5/5's
        /// flushes, with iommufd's fill policies (none, seed, seed-repin, seed-noskip,
        /// seed-fixed).
        #[arg(long)]
        iommufd: bool,
        /// Print one JSON object instead of the narration.
        #[arg(long)]
        json: bool,
        /// Write the JSON-lines trace to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Machine description (TOML); the built-in default otherwise.
        #[arg(long)]
        machine: Option<PathBuf>,
    },
    /// Exhaustively check a flush policy on every operation sequence up to a bound.
    ///
    /// Exits 0 when the policy holds within the bound, 1 with a minimal counterexample.
    Check {
        /// Policy to check (see `--all`): a type1 policy, or with `--iommufd` an iommufd fill
        /// policy.
        #[arg(long, default_value = "seed")]
        policy: String,
        /// Check every shipped policy and print a comparison table (exit 0 iff `seed` holds).
        #[arg(long, conflicts_with = "policy")]
        all: bool,
        /// Maximum number of operations per sequence.
        #[arg(long, default_value_t = 6)]
        depth: usize,
        /// Number of mappings in the alphabet (1 to 3).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=3))]
        mappings: u8,
        /// Write the counterexample scenario to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
        /// Also explore accesses in the middle of an operation: each operation is also tried
        /// with one access right after each platform call it makes (pin, unpin, flush,
        /// accounting, domain alloc and free, attach, detach, IOMMU map, unmap and IOTLB sync):
        /// a device reads or writes any page of any mapping, or another thread loads or
        /// stores any page of the buffer.
        #[arg(long)]
        dma_inside: bool,
        /// Count only what the data shows (stale_read, unflushed_unpin), not the protocol
        /// checks on flush order (missing_map_flush, missing_unpin_flush).
        #[arg(long)]
        content_only: bool,
        /// Threads to explore with (0: one per core); the results do not depend on it.
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Check the iommufd side (patch 5/5) instead of type1: the policy is an iommufd fill
        /// policy (none, seed, seed-repin, seed-noskip, seed-fixed), and the alphabet has HWPT
        /// alloc, attach, detach and destroy, IOAS map, unmap and copy.
        #[arg(long)]
        iommufd: bool,
        /// Explore more failures: the 1st or 2nd pin, the 1st accounting charge, the 1st
        /// attach, or the 1st or 2nd IOMMU map of the next engine operation fails (instead of
        /// only "the 2nd IOMMU map call from now").
        #[arg(long)]
        wide_faults: bool,
    },
    /// `type1 bench`'s own client program, run under the library (not for users).
    #[command(name = "__emulated-client", hide = true)]
    EmulatedClient {
        /// OUT GUEST APERTURE THP.
        args: Vec<String>,
    },
    /// Measure map, unmap and teardown with and without the flush (the series' cost table)
    /// against this machine's floors: real pins and CLFLUSHOPT (host), the simulator (sim),
    /// and an unmodified QEMU booting Linux under the emulation (qemu).
    Bench {
        /// Guest RAM of the host workload (like 4G or 512M).
        #[arg(long, default_value = "4G", value_parser = bench::parse_size)]
        guest_size: u64,
        /// Aperture (a GPU BAR's worth of memory) mapped after the guest, then unmapped.
        #[arg(long, default_value = "1G", value_parser = bench::parse_size)]
        aperture: u64,
        /// Total size of the sim workload (the host workload's shape, scaled).
        #[arg(long, default_value = "256M", value_parser = bench::parse_size)]
        sim_size: u64,
        /// Guest RAM of the qemu workload.
        #[arg(long, default_value = "1G", value_parser = bench::parse_size)]
        qemu_mem: u64,
        /// Flush policies, comma-separated.
        #[arg(
            long,
            default_value = "none,seed,seed-fixed,seed-ro",
            value_delimiter = ','
        )]
        policies: Vec<String>,
        /// Workloads, comma-separated: host (in-process engine and host platform), emulated
        /// (the same workload, a register read and a transfer, from an unmodified program
        /// through the emulated /dev/vfio), sim, qemu; and, when asked, nvme (guest block I/O
        /// on the emulated NVMe controller against QEMU's own NVMe).
        #[arg(long, default_value = "host,emulated,sim,qemu", value_delimiter = ',')]
        workloads: Vec<String>,
        /// Write the floors and rows as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw ns per page per phase and policy as SVG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Rounds of the host workload (the table shows medians).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Instead: how the engine's time and memory grow with mappings and pages (simulator).
        #[arg(long)]
        scale: bool,
        /// Largest simulated guest `--scale` runs with transparent huge pages (1T runs a
        /// 1 TiB guest: about 5 minutes, and a 10.8 GB peak on this machine).
        #[arg(long, default_value = "64G", value_parser = bench::parse_size)]
        scale_max: u64,
        /// Also run `seed` on the host with its flushes spread over this many cores (rows
        /// `seed@Ncpu`); 1 leaves them out. Default: this machine's cores, at most 4.
        #[arg(long)]
        flush_threads: Option<usize>,
    },
    /// Summarize a JSON-lines trace, or convert it into a Perfetto timeline.
    Trace {
        /// The trace (JSON lines, docs/trace.md).
        file: PathBuf,
        /// Write Chrome trace-event JSON here (open it in ui.perfetto.dev).
        #[arg(long)]
        perfetto: Option<PathBuf>,
    },
    /// Run an unmodified VFIO program against the emulated /dev/vfio (LD_PRELOAD) and
    /// summarize its trace. Build the library first: `cargo build --release -p type1-preload`.
    Exec {
        /// Write the JSON-lines trace here (a temporary file otherwise).
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Flush policy inside the program: `seed` (default) or `none`.
        #[arg(long)]
        policy: Option<String>,
        /// Path of libtype1_preload.so (found next to this binary otherwise).
        #[arg(long)]
        library: Option<PathBuf>,
        /// The emulated machine (`TYPE1_MACHINE`, docs/machine.md): groups, devices, IOMMU
        /// units, NVMe controllers. The default machine otherwise.
        #[arg(long)]
        machine: Option<PathBuf>,
        /// The program and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Run scenario files or directories of them (format: docs/scenarios.md). Exits 1 if any fails.
    Run {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Override the scenarios' flush policy.
        #[arg(long, value_parser = policies())]
        policy: Option<String>,
        /// Write the JSON-lines trace (of the last file) to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Print only failures and the summary.
        #[arg(long, short)]
        quiet: bool,
        /// Instead of checking expectations, rerun each file failing the 1st, 2nd, ... nth
        /// fallible platform call (fail-nth sweep) and report leaks, wrong errnos, violations.
        #[arg(long)]
        sweep: bool,
    },
}

fn write_trace(sim: &type1_sim::Sim, path: &PathBuf) -> Result<()> {
    let f = std::fs::File::create(path)
        .with_context(|| format!("cannot create trace file {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    sim.write_jsonl(&mut w)
        .with_context(|| format!("cannot write trace file {}", path.display()))?;
    Ok(())
}

/// Expands directories to the `*.scn` files they hold (sorted); files pass through.
fn expand(files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for f in files {
        if f.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(f)
                .with_context(|| format!("cannot read directory {}", f.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("scn"))
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(f.clone());
        }
    }
    Ok(out)
}

fn sweep_files(files: &[PathBuf], policy: Option<String>, quiet: bool) -> Result<ExitCode> {
    let files = &expand(files)?;
    let (mut points, mut absorbed, mut bad) = (0, 0, 0);
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let steps = match type1_scenario::parse::parse(&text) {
            Ok(s) => s,
            Err(e) => {
                println!("FAIL {}:{}: {}", f.display(), e.line, e.msg);
                bad += 1;
                continue;
            }
        };
        let opts = RunOptions {
            policy: policy.clone(),
            base_dir: f.parent().map(PathBuf::from),
            ..Default::default()
        };
        let rep = type1_scenario::sweep::sweep_steps(&steps, &opts, 10_000)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        points += rep.fault_points;
        absorbed += rep.absorbed;
        if rep.problems.is_empty() {
            if !quiet {
                println!(
                    "PASS {} ({} fault points, {} absorbed)",
                    f.display(),
                    rep.fault_points,
                    rep.absorbed
                );
            }
        } else {
            bad += 1;
            for p in &rep.problems {
                println!("FAIL {}: {p}", f.display());
            }
        }
    }
    println!("{points} fault points exercised ({absorbed} absorbed by the kernel path), {bad} files with problems");
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_files(
    files: &[PathBuf],
    policy: Option<String>,
    trace: Option<PathBuf>,
    quiet: bool,
) -> Result<ExitCode> {
    let files = &expand(files)?;
    let mut failed = 0;
    let mut passed = 0;
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let opts = RunOptions {
            policy: policy.clone(),
            base_dir: f.parent().map(PathBuf::from),
            ..Default::default()
        };
        let rep = run_text(&text, &opts);
        if let (Some(t), Some(w)) = (&trace, &rep.world) {
            write_trace(w.sim(), t)?;
        }
        match rep.failure {
            None => {
                passed += 1;
                if !quiet {
                    let fl = rep.world.as_ref().map_or(0, |w| w.flushes(None, None).0);
                    println!("PASS {} ({} steps, {} flushes)", f.display(), rep.steps, fl);
                }
            }
            Some(e) => {
                failed += 1;
                println!("FAIL {}:{}: {}", f.display(), e.line, e.msg);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn exec(
    trace: Option<PathBuf>,
    policy: Option<String>,
    library: Option<PathBuf>,
    machine: Option<PathBuf>,
    command: &[String],
) -> Result<ExitCode> {
    use type1_exec::{find_library, run, summarize, ExecOptions};
    // The broker and the program read it from wherever they run.
    let machine = match machine {
        Some(m) => {
            Some(std::fs::canonicalize(&m).with_context(|| format!("--machine {}", m.display()))?)
        }
        None => None,
    };
    // Held until the run ends: the carried library's directory, when it is the one used.
    let unpacked;
    let library = match library.or_else(find_library) {
        Some(l) if l.exists() => l,
        Some(l) => anyhow::bail!("--library {} does not exist", l.display()),
        None => match embedded::unpack().context("cannot write out the carried library")? {
            Some(u) => {
                unpacked = u;
                unpacked.library.clone()
            }
            None => anyhow::bail!(
                "libtype1_preload.so not found next to this binary, and this build carries none; build it with `cargo build --release -p type1-preload`, install a release build, or pass --library"
            ),
        },
    };
    if let Some(p) = &policy {
        if !matches!(p.as_str(), "seed" | "none") {
            anyhow::bail!("--policy {p:?} is not seed or none");
        }
    }
    let tmp;
    let trace_path = match trace {
        Some(t) => t,
        None => {
            // A private directory: a predictable name in a shared one would let another user
            // plant a link there.
            let dir = type1_exec::private_dir(&std::env::temp_dir())
                .context("cannot create a private directory for the trace")?;
            tmp = dir.join("trace.jsonl");
            tmp
        }
    };
    let (program, args) = command.split_first().context("no program given")?;
    let path = type1_exec::resolve_program(std::path::Path::new(program));
    if let Some(true) = path.as_deref().and_then(type1_exec::statically_linked) {
        eprintln!(
            "type1 exec: {program} is statically linked: LD_PRELOAD has no effect on it and \
             /dev/vfio is not emulated for it (docs/raw-syscalls.md)"
        );
    }
    let status = run(
        &ExecOptions {
            library,
            trace: Some(trace_path.clone()),
            policy,
            machine,
        },
        std::path::Path::new(program),
        args,
    )
    .with_context(|| format!("cannot run {program}"))?;
    let text = std::fs::read_to_string(&trace_path).unwrap_or_default();
    eprintln!(
        "type1 exec: {program} exited with {status}; trace {}",
        trace_path.display()
    );
    eprint!("{}", summarize(&text));
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn trace_cmd(file: &std::path::Path, perfetto: Option<&std::path::Path>) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the trace {}", file.display()))?;
    match perfetto {
        Some(out) => {
            let v = type1_exec::timeline::perfetto(&text);
            let n = v["traceEvents"].as_array().map_or(0, Vec::len);
            std::fs::write(out, serde_json::to_vec(&v)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "type1 trace: {n} trace events in {} (open it in ui.perfetto.dev)",
                out.display()
            );
        }
        None => {
            print!("{}", type1_exec::summarize(&text));
            let p = type1_exec::timeline::phases(&text);
            if p != Default::default() {
                println!(
                    "time: map {:.3} ms ({} pages), unmap {:.3} ms ({} pages), teardown {:.3} ms ({} pages)",
                    p.map_ns as f64 / 1e6,
                    p.map_pages,
                    p.unmap_ns as f64 / 1e6,
                    p.unmap_pages,
                    p.teardown_ns as f64 / 1e6,
                    p.teardown_pages
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Heap bytes are counted, for `type1 bench --scale`'s memory per mapping and per page.
#[global_allocator]
static ALLOC: type1_host::alloc_count::Counting = type1_host::alloc_count::Counting;

/// A reader that stops reading (`type1 check --all | head`) closes the pipe: the next print
/// fails with EPIPE, which `println!` turns into a panic. End quietly instead, with the status
/// a shell reports for SIGPIPE (128 + 13), as a C tool would; any other panic keeps its report.
fn quiet_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

/// Before a model check: runs this process again with the allocator tuned for it
/// (`type1_host::alloc_count::favour_throughput`), once; says so if that fails, and goes on.
fn tune_allocator() {
    if let Some(e) = type1_host::alloc_count::favour_throughput() {
        eprintln!("type1: note: running with the default allocator settings ({e})");
    }
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Check { .. }) {
        tune_allocator();
    }
    let r = match cli.cmd {
        Cmd::Demo {
            policy,
            iommufd,
            trace,
            machine,
        } => story::demo(
            &policy,
            story::Via::of(iommufd),
            machine.as_deref(),
            trace.as_deref(),
        ),
        Cmd::Attack {
            policy,
            iommufd,
            json,
            trace,
            machine,
        } => story::attack(
            &policy,
            story::Via::of(iommufd),
            json,
            machine.as_deref(),
            trace.as_deref(),
        ),
        Cmd::Run {
            files,
            policy,
            quiet,
            sweep: true,
            ..
        } => sweep_files(&files, policy, quiet),
        Cmd::Run {
            files,
            policy,
            trace,
            quiet,
            sweep: false,
        } => run_files(&files, policy, trace, quiet),
        Cmd::Exec {
            trace,
            policy,
            library,
            machine,
            command,
        } => exec(trace, policy, library, machine, &command),
        Cmd::Trace { file, perfetto } => trace_cmd(&file, perfetto.as_deref()),
        Cmd::EmulatedClient { args } => emulated::client(&args).map(|()| ExitCode::SUCCESS),
        Cmd::Bench {
            guest_size,
            aperture,
            sim_size,
            qemu_mem,
            policies,
            workloads,
            json,
            plot,
            reps,
            scale,
            scale_max,
            flush_threads,
        } => bench::run(&bench::BenchOpts {
            guest: guest_size,
            aperture,
            sim_size,
            qemu_mem,
            policies,
            workloads,
            json,
            plot,
            reps,
            scale,
            scale_max,
            flush_threads: flush_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
            }),
        })
        .map(|()| ExitCode::SUCCESS),
        Cmd::Check {
            policy,
            all,
            depth,
            mappings,
            out,
            json,
            dma_inside,
            content_only,
            threads,
            iommufd,
            wide_faults,
        } => checkcmd::check(
            &policy,
            all,
            type1_check::Bound {
                depth,
                mappings: mappings as usize,
                dma_inside,
                content_only,
                iommufd,
                wide_faults,
                ..type1_check::Bound::default()
            },
            threads,
            out.as_deref(),
            json,
        ),
    };
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("type1: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
