//! The scenario language: one operation per line, parsed into [`Step`]s.
//!
//! The grammar is documented in `docs/scenarios.md`. In short: `#` starts a comment; a line is
//! a verb followed by positional words and `key=value` options; numbers are decimal, `0x` hex,
//! or carry a `K`/`M`/`G` suffix (binary units); an operation line may end with `=> ERRNO` (or
//! `=> ok`, the default) to state the expected result. Every error names the line.

pub mod ifd;

use type1_core::{Errno, MemType, Prot};

/// A parse error, naming the line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

/// The expected outcome of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It must succeed.
    Ok,
    /// It must fail with this errno.
    Err(Errno),
}

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
    Violation(type1_sim::Kind),
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

/// One operation. Fields are named after the words of the line (`docs/scenarios.md`).
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `machine default|PATH` (first operation only).
    Machine(String),
    /// `policy NAME`: flush policy for containers opened after it.
    Policy(String),
    /// `param NAME VALUE`: a type1 module parameter (`dma_entry_limit`, `disable_hugepages`,
    /// `allow_unsafe_interrupts`) for containers opened after it.
    Param {
        /// Parameter name.
        name: String,
        /// Its value (a number, or `true`/`false`).
        value: u64,
    },
    /// `process NAME [limit=PAGES] [cap_ipc_lock]`: create and switch to.
    Process {
        name: String,
        limit: Option<u64>,
        cap_ipc_lock: bool,
    },
    /// `switch NAME`.
    Switch(String),
    /// `exit NAME`.
    Exit(String),
    /// `mmap VADDR LEN [ro] [mmio=PFN] [memtype=uc]`.
    Mmap {
        vaddr: u64,
        len: u64,
        writable: bool,
        mmio: Option<(u64, MemType)>,
    },
    /// `munmap VADDR LEN`.
    Munmap { vaddr: u64, len: u64 },
    /// `write VADDR BYTE LEN` or `write VADDR "text"`: CPU write in the current process.
    CpuWrite { vaddr: u64, data: Vec<u8> },
    /// `read VADDR LEN`: CPU read in the current process.
    CpuRead { vaddr: u64, len: u64 },
    /// `cache writeback|evict`.
    Cache { evict: bool },
    /// `container NAME`.
    Container(String),
    /// `attach C GROUP` (VFIO_GROUP_SET_CONTAINER).
    Attach { container: String, group: u32 },
    /// `detach C GROUP` (VFIO_GROUP_UNSET_CONTAINER).
    Detach { container: String, group: u32 },
    /// `set_iommu C v1|v2|N`.
    SetIommu { container: String, kind: u32 },
    /// `map C IOVA VADDR SIZE [r|w|rw|vaddr|flags=N]`.
    Map {
        container: String,
        iova: u64,
        vaddr: u64,
        size: u64,
        flags: u32,
    },
    /// `unmap C IOVA SIZE [all] [vaddr] [bitmap] [flags=N]`.
    Unmap {
        container: String,
        iova: u64,
        size: u64,
        flags: u32,
    },
    /// `dirty C start|stop` or `dirty C get IOVA SIZE`.
    Dirty {
        container: String,
        flags: u32,
        range: Option<(u64, u64)>,
    },
    /// `open_device C DEVICE`: open an emulated device (registers its `dma_unmap`).
    OpenDevice { container: String, device: String },
    /// `pin C DEVICE IOVA NPAGE [r|w|rw]`: external pin.
    Pin {
        container: String,
        device: String,
        iova: u64,
        npage: u64,
        prot: Prot,
    },
    /// `unpin C DEVICE IOVA NPAGE`.
    Unpin {
        container: String,
        device: String,
        iova: u64,
        npage: u64,
    },
    /// `rw C IOVA read LEN` or `rw C IOVA write BYTE LEN`.
    DmaRw {
        container: String,
        iova: u64,
        write: Option<u8>,
        len: u64,
    },
    /// `close C`.
    Close(String),
    /// `dma DEVICE read|write IOVA LEN [nosnoop] [byte=B]`.
    Dma {
        device: String,
        write: Option<u8>,
        iova: u64,
        len: u64,
        no_snoop: bool,
    },
    /// `fail POINT N [next]`: the Nth call (from now) of a platform fault point fails; with
    /// `next`, only within the next line that makes a fallible platform call (it is disarmed
    /// after that line whether or not it reached the Nth call).
    Fail {
        point: String,
        nth: u64,
        /// `next`: only within the next line that makes a fallible platform call.
        next: bool,
    },
    /// `dma_after POINT N DEVICE read|write IOVA LEN`: right after the Nth call of platform
    /// point POINT returns (inside whatever operation makes it), the device does a no-snoop
    /// DMA.
    DmaAfter {
        /// `pin`, `flush`, `iommu_map`, `iommu_unmap` or `unpin`.
        point: String,
        /// Which call, from 1.
        nth: u64,
        /// Device name.
        device: String,
        /// Device to memory.
        write: bool,
        /// IOVA.
        iova: u64,
        /// Bytes.
        len: u64,
    },
    /// `cpu_after POINT N read|write VADDR LEN`: right after the Nth call of POINT returns,
    /// another thread of the current process loads (or a prefetch fills lines) or stores
    /// `0xc5` bytes.
    CpuAfter {
        /// As for `dma_after`.
        point: String,
        /// Which call, from 1.
        nth: u64,
        /// Store rather than load.
        write: bool,
        /// Virtual address.
        vaddr: u64,
        /// Bytes.
        len: u64,
    },
    /// `refuse_unpin DEVICE N`: the emulated device ignores its next N `dma_unmap`
    /// notifications (U5's retry path).
    RefuseUnpin { device: String, n: u32 },
    /// `uapi_open NAME container` / `uapi_open NAME group N`: opens `/dev/vfio/vfio` or
    /// `/dev/vfio/N` through the uAPI layer (see [`crate::raw`]).
    RawOpen { name: String, group: Option<u32> },
    /// `uapi_close NAME`: closes a file opened by `uapi_open` or returned by an ioctl.
    RawClose(String),
    /// `ioctl FILE REQUEST [int V | at ADDR | ITEM...] [as NAME]`: one ioctl through the uAPI
    /// layer; `as NAME` names the fd it returns.
    RawIoctl {
        file: String,
        request: u64,
        arg: crate::raw::Arg,
        bind: Option<String>,
    },
    /// An iommufd line (`iommufd`, `ioas`, `bind`, `hwpt`, `attach_pt`, `ioas_map`, ...: see
    /// [`ifd`]).
    Iommufd(ifd::IfdOp),
    /// `allow KIND` / `allow all`: violations of that kind no longer fail the scenario (for
    /// scenarios that demonstrate a broken policy and only count its damage).
    Allow(Option<type1_sim::Kind>),
    /// `expect ...`.
    Expect(Expect),
}

/// A parsed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1-based line number.
    pub line: usize,
    /// The operation.
    pub op: Op,
    /// Expected outcome.
    pub outcome: Outcome,
}

/// Parses a number: decimal, `0x` hex, `0b` binary, with optional `K`, `M`, `G` suffix.
pub fn parse_num(s: &str) -> Option<u64> {
    let s = s.replace('_', "");
    let (body, mul) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else if let Some(b) = body.strip_prefix("0b") {
        u64::from_str_radix(b, 2).ok()?
    } else {
        body.parse().ok()?
    };
    v.checked_mul(mul)
}

fn tokenize(line: &str, ln: usize) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                if in_q {
                    out.push(format!("\"{cur}"));
                    cur.clear();
                }
                in_q = !in_q;
            }
            '\\' if in_q => match chars.next() {
                Some('n') => cur.push('\n'),
                Some(c) => cur.push(c),
                None => {}
            },
            '#' if !in_q => break,
            c if c.is_whitespace() && !in_q => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if in_q {
        return Err(ParseError {
            line: ln,
            msg: "unterminated string".into(),
        });
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

struct Words<'a> {
    ln: usize,
    verb: &'a str,
    pos: Vec<&'a str>,
    opts: Vec<(&'a str, &'a str)>,
    used_opts: Vec<bool>,
    next: usize,
}

impl<'a> Words<'a> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            line: self.ln,
            msg: format!("{}: {}", self.verb, msg.into()),
        })
    }
    fn word(&mut self, what: &str) -> Result<&'a str, ParseError> {
        let w = self.pos.get(self.next).copied();
        self.next += 1;
        w.map_or_else(|| self.err(format!("missing {what}")), Ok)
    }
    fn name(&mut self, what: &str) -> Result<String, ParseError> {
        self.word(what).map(str::to_string)
    }
    fn num(&mut self, what: &str) -> Result<u64, ParseError> {
        let w = self.word(what)?;
        parse_num(w).map_or_else(|| self.err(format!("{what} {w:?} is not a number")), Ok)
    }
    fn bool(&mut self, what: &str) -> Result<bool, ParseError> {
        match self.word(what)? {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" => Ok(false),
            w => self.err(format!("{what} {w:?} is not true or false")),
        }
    }
    fn opt(&mut self, key: &str) -> Option<&'a str> {
        let i = self.opts.iter().position(|(k, _)| *k == key)?;
        self.used_opts[i] = true;
        Some(self.opts[i].1)
    }
    fn opt_num(&mut self, key: &str) -> Result<Option<u64>, ParseError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => parse_num(v).map_or_else(
                || self.err(format!("{key}={v:?} is not a number")),
                |n| Ok(Some(n)),
            ),
        }
    }
    fn flag(&mut self, word: &str) -> bool {
        if let Some(i) = self.pos[self.next.min(self.pos.len())..]
            .iter()
            .position(|w| *w == word)
        {
            self.pos.remove(self.next + i);
            true
        } else {
            false
        }
    }
    fn rest(&mut self) -> Vec<&'a str> {
        let r = self.pos[self.next.min(self.pos.len())..].to_vec();
        self.next = self.pos.len();
        r
    }
    fn done(&self) -> Result<(), ParseError> {
        if self.next < self.pos.len() {
            return self.err(format!("unexpected word {:?}", self.pos[self.next]));
        }
        if let Some(i) = self.used_opts.iter().position(|u| !u) {
            return self.err(format!(
                "unknown option {}={}",
                self.opts[i].0, self.opts[i].1
            ));
        }
        Ok(())
    }
}

fn parse_prot(w: &str) -> Option<Prot> {
    Some(match w {
        "r" => Prot::RO,
        "w" => Prot::WO,
        "rw" => Prot::RW,
        _ => return None,
    })
}

fn bytes_arg(w: &mut Words<'_>, what: &str) -> Result<Vec<u8>, ParseError> {
    let first = w.word(what)?;
    if let Some(s) = first.strip_prefix('"') {
        return Ok(s.as_bytes().to_vec());
    }
    let Some(b) = parse_num(first).filter(|b| *b <= 0xff) else {
        return w.err(format!("{what} {first:?} is not a byte or a \"string\""));
    };
    let len = w.num("length")?;
    if len > (64 << 20) {
        return w.err(format!("length {len} is larger than 64M"));
    }
    Ok(vec![b as u8; len as usize])
}

fn parse_expect(w: &mut Words<'_>) -> Result<Expect, ParseError> {
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
fn violation_kind(w: &mut Words<'_>) -> Result<type1_sim::Kind, ParseError> {
    let name = w.word("violation kind")?;
    match type1_sim::Kind::from_name(name) {
        Some(k) => Ok(k),
        None => w.err(format!(
            "unknown violation kind {name:?} (known: {})",
            type1_sim::Kind::ALL.map(|k| k.as_str()).join(", ")
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

/// The argument and `as NAME` of an `ioctl` line.
fn parse_ioctl_arg(w: &mut Words<'_>) -> Result<(crate::raw::Arg, Option<String>), ParseError> {
    use crate::raw::{Arg, Item};
    let mut items = Vec::new();
    let mut arg = None;
    let mut bind = None;
    while w.next < w.pos.len() {
        let kind = w.word("argument item")?;
        match kind {
            "as" => bind = Some(w.name("name")?),
            "int" | "at" if !items.is_empty() || arg.is_some() => {
                return w.err(format!("{kind} is the whole argument: no other item"))
            }
            "int" => arg = Some(Arg::Int(w.num("value")?)),
            "at" => arg = Some(Arg::At(w.num("address")?)),
            _ if arg.is_some() => return w.err(format!("{kind:?} after int/at")),
            "u8" | "u16" | "u32" | "u64" => {
                let bytes = match kind {
                    "u8" => 1,
                    "u16" => 2,
                    "u32" => 4,
                    _ => 8,
                };
                let value = w.num("value")?;
                if bytes < 8 && value >> (bytes * 8) != 0 {
                    return w.err(format!("{value:#x} does not fit in {kind}"));
                }
                items.push(Item::Int { bytes, value });
            }
            "fd" => items.push(Item::Fd(w.name("file")?)),
            "str" => {
                let s = w.word("string")?;
                items.push(Item::Str(s.strip_prefix('"').unwrap_or(s).to_string()));
            }
            "ptr" => items.push(Item::Ptr(w.name("buffer label")?)),
            "zero" => items.push(Item::Zero(w.num("bytes")?.min(crate::raw::ARG_MAX + 1))),
            x => {
                return w.err(format!(
                    "{x:?} is not an argument item (int, at, u8, u16, u32, u64, fd, str, ptr, zero, as)"
                ))
            }
        }
    }
    let arg = arg.unwrap_or(if items.is_empty() {
        Arg::None
    } else {
        Arg::Buf(items)
    });
    Ok((arg, bind))
}

/// `read` or `write` (true).
fn read_or_write(w: &mut Words<'_>) -> Result<bool, ParseError> {
    match w.word("read or write")? {
        "read" => Ok(false),
        "write" => Ok(true),
        x => w.err(format!("{x:?} is not read or write")),
    }
}

fn parse_op(w: &mut Words<'_>) -> Result<Op, ParseError> {
    if let Some(op) = ifd::parse(w) {
        return op;
    }
    Ok(match w.verb {
        "machine" => Op::Machine(w.name("machine")?),
        "policy" => Op::Policy(w.name("policy")?),
        "param" => {
            let name = w.name("parameter")?;
            let value = match name.as_str() {
                "dma_entry_limit" => {
                    let n = w.num("value")?;
                    if n > u64::from(u32::MAX) {
                        return w.err(format!("dma_entry_limit {n} does not fit 32 bits"));
                    }
                    n
                }
                "disable_hugepages" | "allow_unsafe_interrupts" => u64::from(w.bool("value")?),
                other => {
                    return w.err(format!(
                        "unknown parameter {other:?} (dma_entry_limit, disable_hugepages, \
                         allow_unsafe_interrupts)"
                    ))
                }
            };
            Op::Param { name, value }
        }
        "process" => {
            let name = w.name("name")?;
            let cap = w.flag("cap_ipc_lock");
            Op::Process {
                name,
                limit: w.opt_num("limit")?,
                cap_ipc_lock: cap,
            }
        }
        "switch" => Op::Switch(w.name("process")?),
        "exit" => Op::Exit(w.name("process")?),
        "mmap" => {
            let vaddr = w.num("vaddr")?;
            let len = w.num("length")?;
            let ro = w.flag("ro");
            let rw = w.flag("rw");
            if ro && rw {
                return w.err("both ro and rw");
            }
            let mmio = match w.opt_num("mmio")? {
                None => None,
                Some(pfn) => {
                    let mt = w.opt("memtype").unwrap_or("uc");
                    let Some(mt) = MemType::parse(mt) else {
                        return w.err(format!("memtype {mt:?} is not wb, wt, wp, uc or wc"));
                    };
                    Some((pfn, mt))
                }
            };
            Op::Mmap {
                vaddr,
                len,
                writable: !ro,
                mmio,
            }
        }
        "munmap" => Op::Munmap {
            vaddr: w.num("vaddr")?,
            len: w.num("length")?,
        },
        "write" => {
            let vaddr = w.num("vaddr")?;
            Op::CpuWrite {
                vaddr,
                data: bytes_arg(w, "byte")?,
            }
        }
        "read" => Op::CpuRead {
            vaddr: w.num("vaddr")?,
            len: w.num("length")?,
        },
        "cache" => match w.word("writeback or evict")? {
            "writeback" => Op::Cache { evict: false },
            "evict" => Op::Cache { evict: true },
            x => return w.err(format!("{x:?} is not writeback or evict")),
        },
        "container" => Op::Container(w.name("name")?),
        "attach" => Op::Attach {
            container: w.name("container")?,
            group: group_num(w)?,
        },
        // `detach GROUP` as the real call is made (on the group), or `detach C GROUP`.
        "detach" => {
            let first = w.word("group")?;
            match w.rest().as_slice() {
                [] => Op::Detach {
                    container: String::new(),
                    group: parse_num(first)
                        .and_then(|g| u32::try_from(g).ok())
                        .map_or_else(|| w.err(format!("group {first:?}")), Ok)?,
                },
                [g] => Op::Detach {
                    container: first.to_string(),
                    group: parse_num(g)
                        .and_then(|g| u32::try_from(g).ok())
                        .map_or_else(|| w.err(format!("group {g:?}")), Ok)?,
                },
                _ => return w.err("detach GROUP, or detach C GROUP"),
            }
        }
        "set_iommu" => {
            let c = w.name("container")?;
            let k = w.word("type")?;
            let kind = match k {
                "v1" | "type1" => 1,
                "v2" | "type1v2" => 3,
                n => match parse_num(n).and_then(|n| u32::try_from(n).ok()) {
                    Some(n) => n,
                    None => return w.err(format!("type {n:?} is not v1, v2 or a number")),
                },
            };
            Op::SetIommu { container: c, kind }
        }
        "map" => {
            let container = w.name("container")?;
            let iova = w.num("iova")?;
            let vaddr = w.num("vaddr")?;
            let size = w.num("size")?;
            let mut flags = 0u32;
            for x in w.rest() {
                flags |= match x {
                    "r" => 1,
                    "w" => 2,
                    "rw" => 3,
                    "vaddr" => 4,
                    _ => return w.err(format!("map flag {x:?} is not r, w, rw or vaddr")),
                };
            }
            if let Some(f) = w.opt_num("flags")? {
                flags = u32::try_from(f).or_else(|_| w.err("flags too large"))?;
            }
            Op::Map {
                container,
                iova,
                vaddr,
                size,
                flags,
            }
        }
        "unmap" => {
            let container = w.name("container")?;
            let iova = w.num("iova")?;
            let size = w.num("size")?;
            let mut flags = 0u32;
            for x in w.rest() {
                flags |= match x {
                    "bitmap" => 1,
                    "all" => 2,
                    "vaddr" => 4,
                    _ => return w.err(format!("unmap flag {x:?} is not all, vaddr or bitmap")),
                };
            }
            if let Some(f) = w.opt_num("flags")? {
                flags = u32::try_from(f).or_else(|_| w.err("flags too large"))?;
            }
            Op::Unmap {
                container,
                iova,
                size,
                flags,
            }
        }
        "dirty" => {
            let container = w.name("container")?;
            match w.word("start, stop or get")? {
                "start" => Op::Dirty {
                    container,
                    flags: 1,
                    range: None,
                },
                "stop" => Op::Dirty {
                    container,
                    flags: 2,
                    range: None,
                },
                "get" => Op::Dirty {
                    container,
                    flags: 4,
                    range: Some((w.num("iova")?, w.num("size")?)),
                },
                x => match parse_num(x).and_then(|n| u32::try_from(n).ok()) {
                    Some(flags) => Op::Dirty {
                        container,
                        flags,
                        range: None,
                    },
                    None => return w.err(format!("{x:?} is not start, stop, get or flags")),
                },
            }
        }
        "open_device" => Op::OpenDevice {
            container: w.name("container")?,
            device: w.name("device")?,
        },
        "pin" => {
            let container = w.name("container")?;
            let device = w.name("device")?;
            let iova = w.num("iova")?;
            let npage = w.num("npage")?;
            let prot = match w.rest().first() {
                None => Prot::RW,
                Some(x) => parse_prot(x)
                    .map_or_else(|| w.err(format!("prot {x:?} is not r, w or rw")), Ok)?,
            };
            Op::Pin {
                container,
                device,
                iova,
                npage,
                prot,
            }
        }
        "unpin" => Op::Unpin {
            container: w.name("container")?,
            device: w.name("device")?,
            iova: w.num("iova")?,
            npage: w.num("npage")?,
        },
        "rw" => {
            let container = w.name("container")?;
            let iova = w.num("iova")?;
            match w.word("read or write")? {
                "read" => Op::DmaRw {
                    container,
                    iova,
                    write: None,
                    len: w.num("length")?,
                },
                "write" => {
                    let b = w.num("byte")?;
                    if b > 0xff {
                        return w.err(format!("byte {b} > 0xff"));
                    }
                    Op::DmaRw {
                        container,
                        iova,
                        write: Some(b as u8),
                        len: w.num("length")?,
                    }
                }
                x => return w.err(format!("{x:?} is not read or write")),
            }
        }
        "close" => Op::Close(w.name("container")?),
        "dma" => {
            let device = w.name("device")?;
            let dir = w.word("read or write")?;
            let iova = w.num("iova")?;
            let len = w.num("length")?;
            let no_snoop = w.flag("nosnoop");
            let byte = w.opt_num("byte")?.unwrap_or(0xd5);
            if byte > 0xff {
                return w.err(format!("byte={byte} > 0xff"));
            }
            let write = match dir {
                "read" => None,
                "write" => Some(byte as u8),
                x => return w.err(format!("{x:?} is not read or write")),
            };
            Op::Dma {
                device,
                write,
                iova,
                len,
                no_snoop,
            }
        }
        "allow" => Op::Allow(match w.word("violation kind or all")? {
            "all" => None,
            _ => {
                w.next -= 1;
                Some(violation_kind(w)?)
            }
        }),
        "fail" => {
            let next = w.flag("next");
            Op::Fail {
                point: w.name("fault point")?,
                nth: w.num("n")?,
                next,
            }
        }
        "dma_after" => {
            let point = w.name("point")?;
            let nth = w.num("n")?;
            let device = w.name("device")?;
            let write = read_or_write(w)?;
            Op::DmaAfter {
                point,
                nth,
                device,
                write,
                iova: w.num("iova")?,
                len: w.num("len")?,
            }
        }
        "uapi_open" => {
            let name = w.name("name")?;
            match w.word("container or group")? {
                "container" => Op::RawOpen { name, group: None },
                "group" => Op::RawOpen {
                    name,
                    group: Some(w.num("group")? as u32),
                },
                x => return w.err(format!("{x:?} is not container or group")),
            }
        }
        "uapi_close" => Op::RawClose(w.name("name")?),
        "ioctl" => {
            let file = w.name("file")?;
            let req = w.word("request")?;
            let request = match type1_uapi::nr::by_name(req).or_else(|| parse_num(req)) {
                Some(r) => r,
                None => return w.err(format!("{req:?} is not a VFIO request name or number")),
            };
            let (arg, bind) = parse_ioctl_arg(w)?;
            Op::RawIoctl {
                file,
                request,
                arg,
                bind,
            }
        }
        "refuse_unpin" => Op::RefuseUnpin {
            device: w.name("device")?,
            n: {
                let n = w.num("n")?;
                u32::try_from(n).or_else(|_| w.err(format!("n = {n} is too large")))?
            },
        },
        "cpu_after" => Op::CpuAfter {
            point: w.name("point")?,
            nth: w.num("n")?,
            write: read_or_write(w)?,
            vaddr: w.num("vaddr")?,
            len: w.num("len")?,
        },
        "expect" => Op::Expect(parse_expect(w)?),
        v => {
            return Err(ParseError {
                line: w.ln,
                msg: format!("unknown operation {v:?}"),
            })
        }
    })
}

fn group_num(w: &mut Words<'_>) -> Result<u32, ParseError> {
    let g = w.num("group")?;
    u32::try_from(g).or_else(|_| w.err(format!("group {g} too large")))
}

/// Parses a whole scenario.
pub fn parse(text: &str) -> Result<Vec<Step>, ParseError> {
    let mut steps = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let ln = i + 1;
        let toks = tokenize(raw, ln)?;
        if toks.is_empty() {
            continue;
        }
        let mut outcome = Outcome::Ok;
        let mut toks: Vec<&str> = toks.iter().map(String::as_str).collect();
        if let Some(arrow) = toks.iter().position(|t| *t == "=>") {
            let tail = &toks[arrow + 1..];
            outcome = match tail {
                ["ok"] | ["0"] => Outcome::Ok,
                [e] => match Errno::from_name(e) {
                    Some(e) => Outcome::Err(e),
                    None => {
                        return Err(ParseError {
                            line: ln,
                            msg: format!("unknown errno {e:?} after =>"),
                        })
                    }
                },
                _ => {
                    return Err(ParseError {
                        line: ln,
                        msg: "=> must be followed by one errno name or ok".into(),
                    })
                }
            };
            toks.truncate(arrow);
        }
        let (verb, args) = toks.split_first().ok_or(ParseError {
            line: ln,
            msg: "missing operation".into(),
        })?;
        let mut pos = Vec::new();
        let mut opts = Vec::new();
        for a in args {
            match a.split_once('=') {
                Some((k, v)) if !a.starts_with('"') => opts.push((k, v)),
                _ => pos.push(*a),
            }
        }
        let mut w = Words {
            ln,
            verb,
            used_opts: vec![false; opts.len()],
            pos,
            opts,
            next: 0,
        };
        let op = parse_op(&mut w)?;
        w.done()?;
        if matches!(op, Op::Expect(_)) && outcome != Outcome::Ok {
            return Err(ParseError {
                line: ln,
                msg: "expect lines take no => outcome".into(),
            });
        }
        steps.push(Step {
            line: ln,
            op,
            outcome,
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_accept_hex_and_suffixes() {
        assert_eq!(parse_num("0x1000"), Some(4096));
        assert_eq!(parse_num("4K"), Some(4096));
        assert_eq!(parse_num("2M"), Some(2 << 20));
        assert_eq!(parse_num("12"), Some(12));
        assert_eq!(parse_num("zz"), None);
        assert_eq!(parse_num("99999999999999999999G"), None);
    }

    #[test]
    fn map_line_with_errno() {
        let s = parse("map c 0x1000 0x2000 4K rw => EEXIST\n").unwrap();
        assert_eq!(
            s[0].op,
            Op::Map {
                container: "c".into(),
                iova: 0x1000,
                vaddr: 0x2000,
                size: 4096,
                flags: 3
            }
        );
        assert_eq!(s[0].outcome, Outcome::Err(Errno::EEXIST));
    }

    #[test]
    fn raw_ioctl_lines_parse_and_bad_ones_say_why() {
        let steps = parse(
            "ioctl c IOMMU_MAP_DMA u32 32 u32 3 u64 0x1000 fd g str abc ptr bm zero 4 as x\n",
        )
        .unwrap();
        match &steps[0].op {
            Op::RawIoctl {
                request,
                arg: crate::raw::Arg::Buf(items),
                bind,
                ..
            } => {
                assert_eq!(*request, type1_uapi::nr::VFIO_IOMMU_MAP_DMA);
                assert_eq!(items.len(), 7);
                assert_eq!(bind.as_deref(), Some("x"));
            }
            other => panic!("{other:?}"),
        }
        for (line, why) in [
            ("ioctl c NOPE", "not a VFIO request"),
            ("ioctl c SET_IOMMU int 3 u32 1", "after int/at"),
            ("ioctl c SET_IOMMU u32 1 int 3", "whole argument"),
            ("ioctl c GROUP_GET_STATUS u8 256", "does not fit in u8"),
            ("ioctl c GROUP_GET_STATUS u48 1", "not an argument item"),
            ("uapi_open g socket", "not container or group"),
            ("expect arg 0 u12 1", "not u8, u16, u32 or u64"),
            (
                "allow stale",
                "unknown violation kind \"stale\" (known: stale_read",
            ),
            ("expect violation nope", "unknown violation kind"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.msg.contains(why), "{line}: {}", e.msg);
        }
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("\n\nmap c zz 0 0 rw\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.msg.contains("iova"), "{}", e.msg);
        let e = parse("frobnicate\n").unwrap_err();
        assert!(e.msg.contains("unknown operation"), "{}", e.msg);
        let e = parse("map c 0 0 4K rw => EWHAT\n").unwrap_err();
        assert!(e.msg.contains("EWHAT"));
        let e = parse("map c 0 0 4K rw bogus=1\n").unwrap_err();
        assert!(e.msg.contains("bogus"));
    }

    #[test]
    fn strings_and_comments() {
        let s = parse("write 0x1000 \"a b#c\" # note\n").unwrap();
        assert_eq!(
            s[0].op,
            Op::CpuWrite {
                vaddr: 0x1000,
                data: b"a b#c".to_vec()
            }
        );
    }
}
