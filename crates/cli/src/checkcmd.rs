//! `type1 check`: runs `type1-check` for one or all policies and reports the figures.

use std::{path::Path, process::ExitCode, time::Instant};

use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use type1_check::{check_with, corpus_cost, Bound, Outcome};
use type1_core::{iommufd::FillPolicy, policy::POLICY_NAMES};

fn one(policy: &str, bound: &Bound, threads: usize, quiet: bool) -> Result<Outcome> {
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(bound.depth as u64)
    };
    pb.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:20}] depth {pos}/{len} {msg}")
            .map_err(|e| anyhow!("{e}"))?
            .progress_chars("=> "),
    );
    pb.set_prefix(policy.to_string());
    let o = check_with(policy, bound, threads, |d, states| {
        pb.set_position(d as u64);
        pb.set_message(format!("{states} states"));
    })
    .map_err(|e| anyhow!("{e}"))?;
    pb.finish_and_clear();
    Ok(o)
}

/// `type1 check` within `bound` (its depth is checked here).
pub fn check(
    policy: &str,
    all: bool,
    bound: Bound,
    threads: usize,
    out: Option<&Path>,
    json: bool,
) -> Result<ExitCode> {
    let depth = bound.depth;
    let names: Vec<&str> = if bound.iommufd {
        FillPolicy::ALL.iter().map(|p| p.name()).collect()
    } else {
        POLICY_NAMES.to_vec()
    };
    if !names.contains(&policy) {
        return Err(anyhow!(
            "--policy {policy:?} is not one of{}: {}",
            if bound.iommufd {
                " (with --iommufd)"
            } else {
                ""
            },
            names.join(", ")
        ));
    }
    if depth == 0 || depth > 12 {
        return Err(anyhow!("--depth {depth} must be between 1 and 12"));
    }
    let policies: Vec<&str> = if all { names.clone() } else { vec![policy] };
    let mut results = Vec::new();
    for p in &policies {
        let t = Instant::now();
        let o = one(p, &bound, threads, json)?;
        let (flushes, pages) = corpus_cost(p, &bound, 200).map_err(|e| anyhow!("{e}"))?;
        results.push((o, t.elapsed().as_secs_f64(), flushes, pages));
    }
    if json {
        let v: Vec<_> = results
            .iter()
            .map(|(o, secs, f, p)| {
                serde_json::json!({
                    "policy": o.policy, "sound": o.sound(), "states": o.states, "sequences": o.sequences,
                    "depth": o.bound.depth, "seconds": secs, "corpus_flushes": f, "corpus_flushed_pages": p,
                    "explored_flushed_pages": o.flushed_pages,
                    "counterexample": o.counterexample.as_ref().map(|c| serde_json::json!({
                        "length": c.steps(), "kind": c.kind, "detail": c.detail, "at_close": c.at_close,
                        "actions": c.actions, "scenario": c.scenario })),
                })
            })
            .collect();
        println!(
            "{}",
            if all {
                serde_json::Value::Array(v)
            } else {
                v.into_iter().next().unwrap_or_default()
            }
        );
    } else {
        if bound.iommufd {
            println!(
                "bound: depth {}, iommufd: one IOAS, devices of groups 0 (coherent) and 1 (non-coherent) bound, {} HWPTs, mappings {} (and their copies), pages {}, one page per fill batch{}",
                bound.depth,
                type1_check::HWPTS,
                bound.mappings,
                bound.pages,
                if bound.wide_faults { ", wide faults" } else { "" }
            );
        } else {
            println!(
                "bound: depth {}, groups 3 (coherent, non-coherent, emulated), mappings {}, pages {}{}{}",
                bound.depth,
                bound.mappings,
                bound.pages,
                if bound.wide_faults { ", wide faults" } else { "" },
                if bound.dma_inside { ", accesses inside operations" } else { "" }
            );
        }
        println!(
            "flushed pgs: pages flushed over all explored transitions (stops at a counterexample);"
        );
        println!("corpus pgs: pages flushed on 200 fixed pseudo-random sequences, the same for every policy");
        println!(
            "{:<16} {:>8} {:>10} {:>12} {:>12} {:>8}  result",
            "policy", "states", "sequences", "flushed pgs", "corpus pgs", "seconds"
        );
        for (o, secs, _, pages) in &results {
            let r = match &o.counterexample {
                None => "holds within the bound".to_string(),
                Some(c) => format!("COUNTEREXAMPLE, {} steps: {}", c.steps(), c.kind),
            };
            println!(
                "{:<16} {:>8} {:>10} {:>12} {:>12} {:>8.1}  {r}",
                o.policy, o.states, o.sequences, o.flushed_pages, pages, secs
            );
        }
        if !all {
            if let Some(c) = &results[0].0.counterexample {
                println!("\n{}", c.scenario);
            }
        }
    }
    if let Some(out) = out {
        let ces: Vec<&str> = results
            .iter()
            .filter_map(|(o, ..)| o.counterexample.as_ref().map(|c| c.scenario.as_str()))
            .collect();
        if let Some(first) = ces.first() {
            std::fs::write(out, first)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
    }
    let target = if all { "seed" } else { policy };
    let ok = results
        .iter()
        .any(|(o, ..)| o.policy == target && o.sound());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
