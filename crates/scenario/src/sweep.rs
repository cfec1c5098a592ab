//! Fault sweeps in the style of iommufd's `fail_nth` selftest.
//!
//! A scenario is rerun with the 1st, 2nd, ... nth fallible platform call failing, until a run
//! completes without reaching the armed fault. In every run the operation that met the fault
//! must either fail with the injected errno and leave no residue (no pin, no IOMMU entry, no
//! accounting, no engine change: validate first, unwind in reverse), or absorb it the way the
//! kernel does; and the simulator's checker must stay silent (which includes "every page that
//! was reachable by a non-coherent domain was flushed before its unpin"). Expectations of the
//! scenario are not evaluated: a fault legitimately changes outcomes.

use crate::{
    parse::{Op, Step},
    run::{world_for, RunOptions},
    world::{StepError, World},
};

/// What must not change when an operation fails. The one sanctioned change is F5's: a failed
/// replay keeps `is_noncoherent` set on mappings that stay pinned (the flag may only
/// over-approximate), so the flag is compared separately by [`flags`].
fn residue(w: &World) -> String {
    let mut s = String::new();
    for (n, c) in w.named_containers() {
        s.push_str(&format!("{n}:{:?}", c.groups()));
        if let Ok(t) = c.iommu() {
            let maps: Vec<_> = t
                .mappings()
                .into_iter()
                .map(|mut m| {
                    m.is_noncoherent = false;
                    m
                })
                .collect();
            s.push_str(&format!("{maps:?}{:?}{}", t.domains(), t.dma_avail()));
        }
    }
    s.push_str(&format!("{:?}", w.vfio.group_states()));
    for (id, x) in w.vfio.iommufds() {
        s.push_str(&format!("iommufd {id}:{}", x.residue()));
    }
    s.push_str(&format!("{:?}", w.sim().pinned_frame_list()));
    for d in w.sim().live_domains() {
        s.push_str(&format!("{d}:{:?}", w.sim().domain_entries(d)));
    }
    for mm in w.sim().processes() {
        s.push_str(&format!("{}", w.sim().locked_vm(mm)));
    }
    s
}

/// Mappings whose pages are pinned for IOMMU use and flagged non-coherent.
fn flags(w: &World) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for (n, c) in w.named_containers() {
        if let Ok(t) = c.iommu() {
            v.extend(
                t.mappings()
                    .into_iter()
                    .filter(|m| m.is_noncoherent && m.iommu_mapped)
                    .map(|m| (n.to_string(), m.iova)),
            );
        }
    }
    v
}

/// The result of sweeping one scenario.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Fault points exercised (runs in which the armed fault fired).
    pub fault_points: u64,
    /// Of those, faults the operation absorbed (it still succeeded).
    pub absorbed: u64,
    /// Problems found, each naming the fault number and line.
    pub problems: Vec<String>,
}

/// Sweeps parsed steps. `max` bounds the number of runs.
pub fn sweep_steps(steps: &[Step], opts: &RunOptions, max: u64) -> Result<SweepReport, String> {
    let lead = steps
        .iter()
        .take_while(|s| matches!(s.op, Op::Machine(_) | Op::Policy(_)))
        .count();
    // Violations the scenario itself announces (it demonstrates a broken policy) are allowed.
    let expected: Vec<type1_sim::ViolationKind> = steps
        .iter()
        .filter_map(|s| match &s.op {
            Op::Expect(crate::parse::Expect::Violation(k)) => Some(*k),
            _ => None,
        })
        .collect();
    let mut rep = SweepReport::default();
    for n in 1..=max {
        let mut w = world_for(steps, opts).map_err(|f| format!("line {}: {}", f.line, f.msg))?;
        w.sim_mut().set_recording(false);
        w.sim_mut().fail_nth_any(n);
        let mut fired = false;
        for s in &steps[lead..] {
            if matches!(s.op, Op::Expect(_) | Op::Fail { .. } | Op::Policy(_)) {
                continue;
            }
            let before = (!fired).then(|| residue(&w));
            let flags_before = if fired { Vec::new() } else { flags(&w) };
            let injected_before = w.sim().faults_injected();
            let res = w.exec(&s.op);
            w.check(s.line);
            if !fired && w.sim().faults_injected() > injected_before {
                fired = true;
                rep.fault_points += 1;
                let (point, errno) = w.sim().last_injected().expect("a fault fired");
                match res {
                    Ok(()) => rep.absorbed += 1,
                    Err(StepError::Errno { errno: got, msg }) => {
                        if got != errno {
                            rep.problems.push(format!(
                                "fault {n} ({point}, {errno}) at line {}: failed with {got} instead: {msg}",
                                s.line
                            ));
                        }
                        let flags_after = flags(&w);
                        if let Some(lost) = flags_before.iter().find(|f| !flags_after.contains(f)) {
                            rep.problems.push(format!(
                                "fault {n} ({point}) at line {}: mapping 0x{:x} lost is_noncoherent while pinned",
                                s.line, lost.1
                            ));
                        }
                        if before.as_deref() != Some(residue(&w).as_str()) {
                            rep.problems.push(format!(
                                "fault {n} ({point}) at line {}: the failed operation left state behind",
                                s.line
                            ));
                        }
                    }
                    Err(StepError::Usage(_)) => {}
                }
            }
            w.pending.retain(|v| !expected.contains(&v.v.kind));
            if let Some(v) = w.pending.first() {
                rep.problems.push(format!(
                    "fault {n} at line {}: violation {}: {}",
                    v.at, v.v.kind, v.v.detail
                ));
                break;
            }
        }
        let last = steps.last().map_or(0, |s| s.line);
        w.teardown(last);
        w.pending.retain(|v| !expected.contains(&v.v.kind));
        if let Some(v) = w.pending.first() {
            rep.problems.push(format!(
                "fault {n}: after close: violation {}: {}",
                v.v.kind, v.v.detail
            ));
        }
        if !fired {
            return Ok(rep);
        }
    }
    Ok(rep)
}
