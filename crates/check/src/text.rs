//! Counterexamples as scenario text that `type1 run` replays.

use type1_scenario::parse::Op;

use crate::*;

/// The lines of the scenario that reproduces a sequence.
pub fn scenario_text(bound: &Bound, policy: &str, seq: &[Action], finding: &str) -> String {
    let mut s = String::new();
    let flags = format!(
        "{}{}",
        if bound.dma_inside {
            " --dma-inside"
        } else {
            ""
        },
        if bound.content_only {
            " --content-only"
        } else {
            ""
        }
    );
    s.push_str(&format!(
        "# counterexample found by `type1 check --policy {policy}{flags}{}` (depth {})\n",
        if bound.iommufd { " --iommufd" } else { "" },
        bound.depth
    ));
    s.push_str(&format!("# {finding}\n"));
    s.push_str("machine default\n");
    if !bound.iommufd {
        s.push_str(&format!("policy {policy}\n"));
    }
    if bound.content_only {
        // The replay fails on what the data shows, as the search did.
        for k in PROTOCOL_KINDS {
            s.push_str(&format!("allow {k}\n"));
        }
    }
    for op in setup_ops(bound, policy).expect("the policy was checked") {
        s.push_str(&format!("{}\n", op_line(&op)));
    }
    let mut w = initial_world(bound, policy).expect("initial world");
    for a in seq {
        for op in ops_of(*a, &w) {
            let res = w.exec(&op);
            let line = op_line(&op);
            match res {
                Ok(()) => s.push_str(&format!("{line}\n")),
                Err(type1_scenario::StepError::Errno { errno, .. }) => {
                    s.push_str(&format!("{line} => {errno}\n"))
                }
                Err(type1_scenario::StepError::Usage(u)) => s.push_str(&format!("# {line}: {u}\n")),
            }
        }
    }
    s
}

/// ` byte=B` after a write inside an operation (the byte it stores), nothing after a read.
fn byte_suffix(write: bool, byte: u8) -> String {
    if write {
        format!(" byte=0x{byte:x}")
    } else {
        String::new()
    }
}

/// Renders one op as a scenario line.
pub fn op_line(op: &Op) -> String {
    match op {
        Op::Attach { container, group } => format!("attach {container} {group}"),
        Op::Detach { container, group } => format!("detach {container} {group}"),
        Op::SetIommu { container, kind } => format!(
            "set_iommu {container} {}",
            if *kind == 3 {
                "v2".into()
            } else {
                kind.to_string()
            }
        ),
        Op::Map {
            container,
            iova,
            vaddr,
            size,
            flags,
        } => {
            format!("map {container} 0x{iova:x} 0x{vaddr:x} 0x{size:x} flags={flags}")
        }
        Op::Unmap {
            container,
            iova,
            size,
            flags,
        } => format!("unmap {container} 0x{iova:x} 0x{size:x} flags={flags}"),
        Op::CpuWrite { vaddr, data } => format!(
            "write 0x{vaddr:x} 0x{:x} {}",
            data.first().copied().unwrap_or(0),
            data.len()
        ),
        Op::CpuRead { vaddr, len } => format!("read 0x{vaddr:x} {len}"),
        Op::Dma {
            device,
            write: None,
            iova,
            len,
            no_snoop,
        } => {
            format!(
                "dma {device} read 0x{iova:x} {len}{}",
                if *no_snoop { " nosnoop" } else { "" }
            )
        }
        Op::Dma {
            device,
            write: Some(b),
            iova,
            len,
            no_snoop,
        } => {
            format!(
                "dma {device} write 0x{iova:x} {len}{} byte=0x{b:x}",
                if *no_snoop { " nosnoop" } else { "" }
            )
        }
        Op::Fail { point, nth, next } => {
            format!("fail {point} {nth}{}", if *next { " next" } else { "" })
        }
        Op::DmaAfter {
            point,
            nth,
            device,
            write,
            iova,
            len,
            byte,
        } => format!(
            "dma_after {point} {nth} {device} {} 0x{iova:x} {len}{}",
            if *write { "write" } else { "read" },
            byte_suffix(*write, *byte)
        ),
        Op::CpuAfter {
            point,
            nth,
            write,
            vaddr,
            len,
            byte,
        } => format!(
            "cpu_after {point} {nth} {} 0x{vaddr:x} {len}{}",
            if *write { "write" } else { "read" },
            byte_suffix(*write, *byte)
        ),
        Op::Allow(k) => format!("allow {}", k.map_or("all", |k| k.as_str())),
        Op::Iommufd(x) => type1_scenario::parse::ifd::line(x),
        Op::Process { name, .. } => format!("process {name}"),
        Op::Mmap { vaddr, len, .. } => format!("mmap 0x{vaddr:x} {}K", len / 1024),
        Op::Container(c) => format!("container {c}"),
        other => format!("# unsupported {other:?}"),
    }
}
