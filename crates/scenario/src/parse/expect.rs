//! `expect` lines: what a scenario states must hold after an operation.

use super::{parse_num, ParseError, Words};

/// A comparison target for `expect` lines. Fields are named after the words of the line.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `expect order A B ...`: in the last operation's events, each label first occurs after
    /// the one before it (labels: an event kind, `flush:REASON` for a flush).
    Order(Vec<String>),
    /// `expect flushes N [reason=R] [iova=X]`: number of flush events so far.
    Flushes {
        n: u64,
        reason: Option<String>,
        iova: Option<u64>,
    },
    /// `expect flushed_pages N [reason=R]`: pages flushed so far.
    FlushedPages { n: u64, reason: Option<String> },
    /// `expect flag C IOVA true|false`: the mapping's `is_noncoherent`.
    Flag {
        container: String,
        iova: u64,
        value: bool,
    },
    /// `expect mapped C IOVA true|false`: whether a mapping covers the IOVA.
    Mapped {
        container: String,
        iova: u64,
        value: bool,
    },
    /// `expect domains C N`: linked IOMMU domains.
    Domains { container: String, n: u64 },
    /// `expect mappings C N`.
    Mappings { container: String, n: u64 },
    /// `expect extension C EXT VALUE`.
    Extension {
        container: String,
        ext: u32,
        value: u32,
    },
    /// `expect read "text"`: the bytes of the last read, exactly.
    Read(Vec<u8>),
    /// `expect read BYTE`: every byte of the last read equals BYTE.
    ReadAll(u8),
    /// `expect read_not BYTE`: the last read did not return this byte anywhere.
    ReadNot(u8),
    /// `expect unmapped SIZE`: the size the last UNMAP reported.
    Unmapped(u64),
    /// `expect pinned N`: frames pinned on the machine.
    Pinned(u64),
    /// `expect locked_vm PROCESS N`.
    LockedVm { process: String, n: u64 },
    /// `expect dma_avail C N`.
    DmaAvail { container: String, n: u64 },
    /// `expect violation KIND`: at least one unconsumed violation of this kind happened.
    Violation(type1_sim::ViolationKind),
    /// `expect no_violation`.
    NoViolation,
    /// `expect leaked N`: bytes of stale host data read by devices so far.
    Leaked(u64),
    /// `expect stale_after_unpin N`.
    StaleAfterUnpin(u64),
    /// `expect notifications N`: `dma_unmap` notifications delivered so far (U5).
    Notifications(u64),
    /// `expect ret V`: what the last successful raw ioctl returned.
    Ret(u64),
    /// `expect arg OFFSET u8|u16|u32|u64 V`: the raw ioctl argument buffer after the call.
    Arg { offset: u64, bytes: u8, value: u64 },
    /// `expect buf LABEL OFFSET u8|u16|u32|u64 V`: a `ptr` buffer after the call.
    Buf {
        label: String,
        offset: u64,
        bytes: u8,
        value: u64,
    },
    /// `expect iova_ranges C N`: number of valid IOVA ranges.
    IovaRanges { container: String, n: u64 },
    /// `expect pgsizes C BITMAP`.
    PgSizes { container: String, bitmap: u64 },
    /// `expect bitmap HEXWORD...`: words of the last dirty bitmap.
    Bitmap(Vec<u64>),
}

/// The comparison of an `expect` line.
pub(super) fn parse_expect(w: &mut Words<'_>) -> Result<Expect, ParseError> {
    let what = w.word("what to expect")?;
    Ok(match what {
        "flushes" => Expect::Flushes {
            n: w.num("count")?,
            reason: w.opt("reason").map(str::to_string),
            iova: w.opt_num("iova")?,
        },
        "flushed_pages" => Expect::FlushedPages {
            n: w.num("count")?,
            reason: w.opt("reason").map(str::to_string),
        },
        "flag" => Expect::Flag {
            container: w.name("container")?,
            iova: w.num("iova")?,
            value: w.bool("value")?,
        },
        "mapped" => Expect::Mapped {
            container: w.name("container")?,
            iova: w.num("iova")?,
            value: w.bool("value")?,
        },
        "domains" => Expect::Domains {
            container: w.name("container")?,
            n: w.num("count")?,
        },
        "mappings" => Expect::Mappings {
            container: w.name("container")?,
            n: w.num("count")?,
        },
        "extension" => Expect::Extension {
            container: w.name("container")?,
            ext: u32::try_from(w.num("extension")?).or_else(|_| w.err("extension too large"))?,
            value: u32::try_from(w.num("value")?).or_else(|_| w.err("value too large"))?,
        },
        "read" => {
            let first = w.word("bytes")?;
            if let Some(s) = first.strip_prefix('"') {
                Expect::Read(s.as_bytes().to_vec())
            } else {
                let Some(b) = parse_num(first).filter(|b| *b <= 0xff) else {
                    return w.err(format!("byte {first:?} is not a byte or a \"string\""));
                };
                Expect::ReadAll(b as u8)
            }
        }
        "read_not" => {
            let b = w.num("byte")?;
            if b > 0xff {
                return w.err(format!("byte {b} > 0xff"));
            }
            Expect::ReadNot(b as u8)
        }
        "unmapped" => Expect::Unmapped(w.num("size")?),
        "pinned" => Expect::Pinned(w.num("count")?),
        "locked_vm" => Expect::LockedVm {
            process: w.name("process")?,
            n: w.num("pages")?,
        },
        "dma_avail" => Expect::DmaAvail {
            container: w.name("container")?,
            n: w.num("count")?,
        },
        "violation" => Expect::Violation(violation_kind(w)?),
        "no_violation" => Expect::NoViolation,
        "leaked" => Expect::Leaked(w.num("bytes")?),
        "stale_after_unpin" => Expect::StaleAfterUnpin(w.num("bytes")?),
        "notifications" => Expect::Notifications(w.num("n")?),
        "ret" => Expect::Ret(w.num("value")?),
        "arg" => {
            let offset = w.num("offset")?;
            let bytes = int_width(w)?;
            Expect::Arg {
                offset,
                bytes,
                value: w.num("value")?,
            }
        }
        "buf" => {
            let label = w.name("buffer")?;
            let offset = w.num("offset")?;
            let bytes = int_width(w)?;
            Expect::Buf {
                label,
                offset,
                bytes,
                value: w.num("value")?,
            }
        }
        "iova_ranges" => Expect::IovaRanges {
            container: w.name("container")?,
            n: w.num("count")?,
        },
        "pgsizes" => Expect::PgSizes {
            container: w.name("container")?,
            bitmap: w.num("bitmap")?,
        },
        "bitmap" => {
            let words = w.rest();
            let mut v = Vec::new();
            for x in words {
                v.push(parse_num(x).map_or_else(|| w.err(format!("bitmap word {x:?}")), Ok)?);
            }
            Expect::Bitmap(v)
        }
        "order" => {
            let labels: Vec<String> = w.rest().iter().map(|s| s.to_string()).collect();
            if labels.len() < 2 {
                return w.err("expect order needs two event labels or more");
            }
            Expect::Order(labels)
        }
        other => return w.err(format!("unknown expectation {other:?}")),
    })
}

/// A violation kind by name (`docs/verification.md`); an unknown one is an error naming the
/// known ones.
pub(super) fn violation_kind(w: &mut Words<'_>) -> Result<type1_sim::ViolationKind, ParseError> {
    let name = w.word("violation kind")?;
    match type1_sim::ViolationKind::from_name(name) {
        Some(k) => Ok(k),
        None => w.err(format!(
            "unknown violation kind {name:?} (known: {})",
            type1_sim::ViolationKind::ALL.map(|k| k.as_str()).join(", ")
        )),
    }
}

/// `u8`, `u16`, `u32` or `u64`: the width in bytes.
fn int_width(w: &mut Words<'_>) -> Result<u8, ParseError> {
    match w.word("u8, u16, u32 or u64")? {
        "u8" => Ok(1),
        "u16" => Ok(2),
        "u32" => Ok(4),
        "u64" => Ok(8),
        x => w.err(format!("{x:?} is not u8, u16, u32 or u64")),
    }
}
