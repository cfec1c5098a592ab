//! The scenario runner: executes parsed steps on a [`World`] and checks every expectation.
//!
//! A scenario passes when every operation has its expected outcome, every `expect` holds, and
//! every invariant violation the simulator detected was announced by an `expect violation`
//! line. At the end the runner closes all containers (as process exit does) and checks that
//! nothing is left pinned, mapped or accounted.

use type1_core::FlushReason;
use type1_sim::MachineDesc;

use crate::{
    parse::{parse, Expect, Op, Outcome, Step},
    world::{StepError, World},
};

/// Why a scenario failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {msg}")]
pub struct Failure {
    /// 1-based line (0 when the failure is about the whole file).
    pub line: usize,
    /// What went wrong.
    pub msg: String,
}

/// Options of a run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Policy override (otherwise the scenario's `policy` line, else `seed`).
    pub policy: Option<String>,
    /// Directory against which a relative `machine PATH` is resolved.
    pub base_dir: Option<std::path::PathBuf>,
    /// How the engine check runs after each step (`type1_sim::CheckMode`).
    pub check_mode: type1_sim::CheckMode,
}

/// The result of a successful or failed run.
pub struct Report {
    /// Steps executed.
    pub steps: usize,
    /// The world after the run (trace, counters).
    pub world: Option<World>,
    /// The first failure, if any.
    pub failure: Option<Failure>,
}

fn fail<T>(line: usize, msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        line,
        msg: msg.into(),
    })
}

fn reason(r: &Option<String>, line: usize) -> Result<Option<FlushReason>, Failure> {
    Ok(match r.as_deref() {
        None => None,
        Some("map") => Some(FlushReason::Map),
        Some("replay") => Some(FlushReason::Replay),
        Some("unpin") => Some(FlushReason::Unpin),
        Some(x) => return fail(line, format!("reason {x:?} is not map, replay or unpin")),
    })
}

fn check_expect(w: &mut World, e: &Expect, line: usize) -> Result<(), Failure> {
    let mismatch = |what: &str, want: String, got: String| -> Result<(), Failure> {
        if want == got {
            Ok(())
        } else {
            fail(line, format!("expected {what} {want}, got {got}"))
        }
    };
    let mapping =
        |w: &World, c: &str, iova: u64| -> Result<Option<type1_core::MappingView>, Failure> {
            let Some(cont) = w.container(c) else {
                return fail(line, format!("no container named {c:?}"));
            };
            match cont.iommu() {
                Ok(t) => Ok(t.mapping_at(iova)),
                Err(_) => Ok(None),
            }
        };
    match e {
        Expect::Order(labels) => {
            let evs = &w.sim().events()[w.op_events_start().min(w.sim().events().len())..];
            let label = |e: &type1_core::Event| {
                let v = serde_json::to_value(e).unwrap_or_default();
                let ev = v["ev"].as_str().unwrap_or("").to_string();
                match v["reason"].as_str() {
                    Some(r) => format!("{ev}:{r}"),
                    None => ev,
                }
            };
            let names: Vec<String> = evs.iter().map(|(_, e)| label(e)).collect();
            let mut from = 0;
            for l in labels {
                let matches = |n: &String| n == l || n.split(':').next() == Some(l.as_str());
                match names[from..].iter().position(matches) {
                    Some(i) => from += i + 1,
                    None => {
                        return fail(
                            line,
                            format!(
                            "no {l} after the earlier labels in the last operation's events: {}",
                            names.join(" ")
                        ),
                        )
                    }
                }
            }
            Ok(())
        }
        Expect::Flushes { n, reason: r, iova } => {
            let (got, _) = w.flushes(reason(r, line)?, *iova);
            mismatch("flushes", n.to_string(), got.to_string())
        }
        Expect::FlushedPages { n, reason: r } => {
            let (_, got) = w.flushes(reason(r, line)?, None);
            mismatch("flushed pages", n.to_string(), got.to_string())
        }
        Expect::Flag {
            container,
            iova,
            value,
        } => match mapping(w, container, *iova)? {
            None => fail(line, format!("no mapping at 0x{iova:x} in {container}")),
            Some(m) => mismatch(
                "is_noncoherent",
                value.to_string(),
                m.is_noncoherent.to_string(),
            ),
        },
        Expect::Mapped {
            container,
            iova,
            value,
        } => {
            let got = mapping(w, container, *iova)?.is_some();
            mismatch("mapped", value.to_string(), got.to_string())
        }
        Expect::Mappings { container, n } => {
            let Some(c) = w.container(container) else {
                return fail(line, format!("no container {container:?}"));
            };
            let got = c.iommu().map(|t| t.mappings().len()).unwrap_or(0);
            mismatch("mappings", n.to_string(), got.to_string())
        }
        Expect::Domains { container, n } => {
            let Some(c) = w.container(container) else {
                return fail(line, format!("no container {container:?}"));
            };
            let got = c.iommu().map(|t| t.domains().len()).unwrap_or(0);
            mismatch("domains", n.to_string(), got.to_string())
        }
        Expect::Extension {
            container,
            ext,
            value,
        } => {
            let Some(c) = w.container(container) else {
                return fail(line, format!("no container {container:?}"));
            };
            mismatch(
                &format!("CHECK_EXTENSION({ext})"),
                value.to_string(),
                (type1_core::Extension::decode(u64::from(*ext))
                    .is_some_and(|e| c.check_extension(e)) as u32)
                    .to_string(),
            )
        }
        Expect::Read(want) => mismatch(
            "read",
            format!("{:02x?}", want),
            format!("{:02x?}", w.last_read),
        ),
        Expect::ReadAll(b) => match w.last_read.iter().position(|x| x != b) {
            None if !w.last_read.is_empty() => Ok(()),
            None => fail(line, "nothing was read"),
            Some(i) => fail(
                line,
                format!(
                    "expected every byte 0x{b:02x}, byte {i} is 0x{:02x}",
                    w.last_read[i]
                ),
            ),
        },
        Expect::ReadNot(b) => match w.last_read.iter().position(|x| x == b) {
            None => Ok(()),
            Some(i) => fail(line, format!("byte {i} of the last read is 0x{b:02x}")),
        },
        Expect::Unmapped(n) => mismatch(
            "unmapped size",
            format!("0x{n:x}"),
            format!("0x{:x}", w.last_unmapped),
        ),
        Expect::Pinned(n) => mismatch(
            "pinned frames",
            n.to_string(),
            w.sim().pinned_frames().to_string(),
        ),
        Expect::LockedVm { process, n } => {
            let Some(mm) = w.mm(process) else {
                return fail(line, format!("no process {process:?}"));
            };
            let got = type1_core::TaskMemory::locked_vm(w.sim(), mm);
            mismatch("locked_vm", n.to_string(), got.to_string())
        }
        Expect::DmaAvail { container, n } => {
            let Some(c) = w.container(container) else {
                return fail(line, format!("no container {container:?}"));
            };
            let got = c
                .iommu()
                .map(|t| t.dma_avail() as u64)
                .map_err(|e| Failure {
                    line,
                    msg: e.to_string(),
                })?;
            mismatch("dma_avail", n.to_string(), got.to_string())
        }
        Expect::IovaRanges { container, n } => {
            let Some(c) = w.container(container) else {
                return fail(line, format!("no container {container:?}"));
            };
            let got = c
                .iommu()
                .map(|t| t.iova_list().len() as u64)
                .map_err(|e| Failure {
                    line,
                    msg: e.to_string(),
                })?;
            mismatch("valid IOVA ranges", n.to_string(), got.to_string())
        }
        Expect::PgSizes { container, bitmap } => {
            let Some(c) = w.container(container) else {
                return fail(line, format!("no container {container:?}"));
            };
            let got = c.iommu().map(|t| t.pgsize_bitmap()).map_err(|e| Failure {
                line,
                msg: e.to_string(),
            })?;
            mismatch("pgsizes", format!("0x{bitmap:x}"), format!("0x{got:x}"))
        }
        Expect::Bitmap(words) => {
            let mut got = w.last_bitmap.clone();
            while got.len() > words.len() && got.last() == Some(&0) {
                got.pop();
            }
            mismatch("bitmap", format!("{words:x?}"), format!("{got:x?}"))
        }
        Expect::Violation(kind) => {
            let before = w.pending.len();
            w.pending.retain(|n| n.v.kind != *kind);
            if w.pending.len() == before {
                return fail(line, format!("expected a {kind} violation, none happened"));
            }
            Ok(())
        }
        Expect::NoViolation => match w.pending.first() {
            None => Ok(()),
            Some(n) => fail(
                line,
                format!("violation {} at line {}: {}", n.v.kind, n.at, n.v.detail),
            ),
        },
        Expect::Leaked(n) => mismatch(
            "leaked bytes",
            n.to_string(),
            w.sim().leaked_bytes().to_string(),
        ),
        Expect::StaleAfterUnpin(n) => mismatch(
            "stale-after-unpin bytes",
            n.to_string(),
            w.sim().stale_after_unpin_bytes().to_string(),
        ),
        Expect::Ret(v) => mismatch(
            "ioctl return value",
            v.to_string(),
            w.raw.last_ret.to_string(),
        ),
        Expect::Arg {
            offset,
            bytes,
            value,
        } => {
            let got = w
                .raw
                .read_int(crate::raw::ARG_BASE.saturating_add(*offset), *bytes);
            mismatch(
                &format!("argument bytes at offset {offset}"),
                format!("{value:#x}"),
                format!("{got:#x}"),
            )
        }
        Expect::Buf {
            label,
            offset,
            bytes,
            value,
        } => {
            let Some(base) = w
                .raw
                .labels
                .get(label)
                .map(|k| crate::raw::BUF_BASE + k * crate::raw::BUF_STRIDE)
            else {
                return fail(line, format!("no buffer named {label:?}"));
            };
            let got = w.raw.read_int(base.saturating_add(*offset), *bytes);
            mismatch(
                &format!("buffer {label} at offset {offset}"),
                format!("{value:#x}"),
                format!("{got:#x}"),
            )
        }
        Expect::Notifications(n) => mismatch(
            "dma_unmap notifications",
            n.to_string(),
            w.sim().stats().dma_unmap_notifications.to_string(),
        ),
    }
}

/// Builds the world a scenario asks for (its leading `machine` and `policy` lines).
pub fn world_for(steps: &[Step], opts: &RunOptions) -> Result<World, Failure> {
    let mut desc = MachineDesc::default();
    let mut policy = "seed".to_string();
    for s in steps
        .iter()
        .take_while(|s| matches!(s.op, Op::Machine(_) | Op::Policy(_)))
    {
        match &s.op {
            Op::Machine(m) if m == "default" => {}
            Op::Machine(m) => {
                let path = match &opts.base_dir {
                    Some(b) => b.join(m),
                    None => m.into(),
                };
                desc = MachineDesc::load(&path).map_err(|e| Failure {
                    line: s.line,
                    msg: e.to_string(),
                })?;
            }
            Op::Policy(p) => policy = p.clone(),
            _ => unreachable!("filtered"),
        }
    }
    if let Some(p) = &opts.policy {
        policy = p.clone();
    }
    let mut w = World::new(desc, &policy).map_err(|msg| Failure { line: 0, msg })?;
    w.sim_mut().set_check_mode(opts.check_mode);
    Ok(w)
}

/// Runs parsed steps.
pub fn run_steps(steps: &[Step], opts: &RunOptions) -> Report {
    let mut w = match world_for(steps, opts) {
        Ok(w) => w,
        Err(f) => {
            return Report {
                steps: 0,
                world: None,
                failure: Some(f),
            }
        }
    };
    let lead = steps
        .iter()
        .take_while(|s| matches!(s.op, Op::Machine(_) | Op::Policy(_)))
        .count();
    let mut n = 0;
    let mut failure = None;
    for s in &steps[lead..] {
        n += 1;
        if opts.policy.is_some() {
            if let Op::Policy(_) = s.op {
                continue;
            }
        }
        let r = match &s.op {
            Op::Expect(e) => {
                w.check(s.line);
                check_expect(&mut w, e, s.line)
            }
            op => {
                w.mark_op_start();
                let res = w.exec(op);
                w.check(s.line);
                match (res, s.outcome) {
                    (Ok(()), Outcome::Ok) => Ok(()),
                    (Ok(()), Outcome::Err(e)) => {
                        fail(s.line, format!("expected {e}, the operation succeeded"))
                    }
                    (Err(StepError::Usage(m)), _) => fail(s.line, m),
                    (Err(StepError::Errno { errno, .. }), Outcome::Err(e)) if errno == e => Ok(()),
                    (Err(StepError::Errno { errno, msg }), Outcome::Err(e)) => {
                        fail(s.line, format!("expected {e}, got {errno}: {msg}"))
                    }
                    (Err(StepError::Errno { errno, msg }), Outcome::Ok) => {
                        fail(s.line, format!("expected success, got {errno}: {msg}"))
                    }
                }
            }
        };
        if let Err(f) = r {
            failure = Some(f);
            break;
        }
    }
    if failure.is_none() {
        let last = steps.last().map_or(0, |s| s.line);
        w.teardown(last);
        if let Some(nv) = w.pending.first() {
            failure = Some(Failure {
                line: nv.at,
                msg: format!("unexpected violation {}: {}", nv.v.kind, nv.v.detail),
            });
        }
    }
    Report {
        steps: n,
        world: Some(w),
        failure,
    }
}

/// Parses and runs a scenario text.
pub fn run_text(text: &str, opts: &RunOptions) -> Report {
    match parse(text) {
        Ok(steps) => run_steps(&steps, opts),
        Err(e) => Report {
            steps: 0,
            world: None,
            failure: Some(Failure {
                line: e.line,
                msg: e.msg,
            }),
        },
    }
}
