//! Parsing of one operation line: a dispatcher, and one function per area of the language
//! (`docs/scenarios.md`); iommufd lines are [`super::ifd`]'s, `expect` lines [`super::expect`]'s.

use type1_core::{MemType, Prot};

use super::{
    bytes_arg,
    expect::{parse_expect, violation_kind},
    ifd, parse_num, parse_prot, Op, ParseError, Words,
};

/// The operation of a line.
pub(super) fn parse_op(w: &mut Words<'_>) -> Result<Op, ParseError> {
    if let Some(op) = ifd::parse(w) {
        return op;
    }
    match w.verb {
        "machine" | "policy" | "param" | "process" | "switch" | "exit" | "mmap" | "munmap"
        | "write" | "read" | "cache" => setup_memory(w),
        "container" | "attach" | "detach" | "set_iommu" | "map" | "unmap" | "dirty"
        | "open_device" | "pin" | "unpin" | "rw" | "close" => container(w),
        "dma" | "allow" | "fail" | "dma_after" | "refuse_unpin" | "cpu_after" => device_fault(w),
        "uapi_open" | "uapi_close" | "ioctl" => raw(w),
        "expect" => Ok(Op::Expect(parse_expect(w)?)),
        v => Err(ParseError {
            line: w.ln,
            msg: format!("unknown operation {v:?}"),
        }),
    }
}

/// Set-up lines, processes, memory and the CPU.
fn setup_memory(w: &mut Words<'_>) -> Result<Op, ParseError> {
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
        _ => unreachable!("dispatched by parse_op"),
    })
}

/// The VFIO container, its groups, mappings and emulated devices.
fn container(w: &mut Words<'_>) -> Result<Op, ParseError> {
    Ok(match w.verb {
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
        _ => unreachable!("dispatched by parse_op"),
    })
}

/// Device DMA, allowed violations, faults and accesses inside an operation.
fn device_fault(w: &mut Words<'_>) -> Result<Op, ParseError> {
    Ok(match w.verb {
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
                point: point_of(w, "fault point")?,
                nth: w.num("n")?,
                next,
            }
        }
        "dma_after" => {
            let point = point_of(w, "point")?;
            let nth = w.num("n")?;
            let device = w.name("device")?;
            let write = read_or_write(w)?;
            let iova = w.num("iova")?;
            let len = w.num("len")?;
            Op::DmaAfter {
                point,
                nth,
                device,
                write,
                iova,
                len,
                byte: byte_opt(w, 0xd5)?,
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
            point: point_of(w, "point")?,
            nth: w.num("n")?,
            write: read_or_write(w)?,
            vaddr: w.num("vaddr")?,
            len: w.num("len")?,
            byte: byte_opt(w, 0xc5)?,
        },
        _ => unreachable!("dispatched by parse_op"),
    })
}

/// Raw uAPI lines.
fn raw(w: &mut Words<'_>) -> Result<Op, ParseError> {
    Ok(match w.verb {
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
        _ => unreachable!("dispatched by parse_op"),
    })
}

/// `read` or `write` (true).
/// A point name (a fault point or an access point), parsed.
fn point_of<T: std::str::FromStr<Err = String>>(
    w: &mut Words<'_>,
    what: &str,
) -> Result<T, ParseError> {
    let name = w.name(what)?;
    name.parse().or_else(|e: String| w.err(e))
}

/// An optional `byte=B` (at most `0xff`), else `default`.
fn byte_opt(w: &mut Words<'_>, default: u8) -> Result<u8, ParseError> {
    let byte = w.opt_num("byte")?.unwrap_or(default.into());
    u8::try_from(byte).or_else(|_| w.err(format!("byte={byte} > 0xff")))
}

fn read_or_write(w: &mut Words<'_>) -> Result<bool, ParseError> {
    match w.word("read or write")? {
        "read" => Ok(false),
        "write" => Ok(true),
        x => w.err(format!("{x:?} is not read or write")),
    }
}

/// A group number (a `u32`).
fn group_num(w: &mut Words<'_>) -> Result<u32, ParseError> {
    let g = w.num("group")?;
    u32::try_from(g).or_else(|_| w.err(format!("group {g} too large")))
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
