//! `type1`: the command line of the type1 project.
//!
//! Subcommands drive the engine (`type1-core`) on the simulated machine (`type1-sim`) through
//! the scenario world (`type1-scenario`):
//! * `demo`: the five-step example of the series (F6), narrated;
//! * `attack`: the malicious-guest story (F0) under a chosen flush policy;
//! * `run`: scenario files;
//! * `check`: bounded exhaustive checking of flush policies (`type1-check`).

mod checkcmd;
mod story;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use type1_scenario::{run_text, RunOptions};

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
        #[arg(long, default_value = "seed")]
        policy: String,
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
        #[arg(long, default_value = "seed")]
        policy: String,
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
        /// Policy to check (see `--all`).
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
    },
    /// Run scenario files (format: docs/scenarios.md). Exits 1 if any fails.
    Run {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Override the scenarios' flush policy.
        #[arg(long)]
        policy: Option<String>,
        /// Write the JSON-lines trace (of the last file) to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Print only failures and the summary.
        #[arg(long, short)]
        quiet: bool,
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

fn run_files(
    files: &[PathBuf],
    policy: Option<String>,
    trace: Option<PathBuf>,
    quiet: bool,
) -> Result<ExitCode> {
    let mut failed = 0;
    let mut passed = 0;
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let opts = RunOptions {
            policy: policy.clone(),
            base_dir: f.parent().map(PathBuf::from),
        };
        let rep = run_text(&text, &opts);
        if let (Some(t), Some(w)) = (&trace, &rep.world) {
            write_trace(&w.sim, t)?;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Demo {
            policy,
            trace,
            machine,
        } => story::demo(&policy, machine.as_deref(), trace.as_deref()),
        Cmd::Attack {
            policy,
            json,
            trace,
            machine,
        } => story::attack(&policy, json, machine.as_deref(), trace.as_deref()),
        Cmd::Run {
            files,
            policy,
            trace,
            quiet,
        } => run_files(&files, policy, trace, quiet),
        Cmd::Check {
            policy,
            all,
            depth,
            mappings,
            out,
            json,
        } => checkcmd::check(&policy, all, depth, mappings as usize, out.as_deref(), json),
    };
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("type1: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
