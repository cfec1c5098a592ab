//! The scenario language: one operation per line, parsed into [`Step`]s.
//!
//! The grammar is documented in `docs/scenarios.md`. In short: `#` starts a comment; a line is
//! a verb followed by positional words and `key=value` options; numbers are decimal, `0x` hex,
//! or carry a `K`/`M`/`G` suffix (binary units); an operation line may end with `=> ERRNO` (or
//! `=> ok`, the default) to state the expected result. Every error names the line.

mod expect;
pub mod ifd;
mod ops;

pub use expect::Expect;

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
        point: type1_sim::FaultPoint,
        nth: u64,
        /// `next`: only within the next line that makes a fallible platform call.
        next: bool,
    },
    /// `dma_after POINT N DEVICE read|write IOVA LEN [byte=B]`: right after the Nth call of
    /// platform point POINT returns (inside whatever operation makes it), the device does a
    /// no-snoop DMA (a write stores B, by default `0xd5`).
    DmaAfter {
        /// Where (`any`: a call of any access point).
        point: type1_sim::AccessPoint,
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
        /// The byte a write stores.
        byte: u8,
    },
    /// `cpu_after POINT N read|write VADDR LEN [byte=B]`: right after the Nth call of POINT
    /// returns, another thread of the current process loads (or a prefetch fills lines) or
    /// stores B (by default `0xc5`).
    CpuAfter {
        /// As for `dma_after`.
        point: type1_sim::AccessPoint,
        /// Which call, from 1.
        nth: u64,
        /// Store rather than load.
        write: bool,
        /// Virtual address.
        vaddr: u64,
        /// Bytes.
        len: u64,
        /// The byte a store stores.
        byte: u8,
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
    Allow(Option<type1_sim::ViolationKind>),
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
        let op = ops::parse_op(&mut w)?;
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
