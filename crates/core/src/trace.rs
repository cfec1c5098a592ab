//! Trace events: what the engine (and the platform under it) did, in order.
//!
//! The engine emits [`Event`]s through [`crate::Tracing::trace`]; a platform adds its own
//! (device DMA, faults, invariant violations) and numbers them. Serialized with `serde` they
//! are the JSON-lines trace documented in `docs/trace.md`: one object per line, with `seq`
//! added by the writer and `ev` naming the variant.

use serde::Serialize;

use crate::{DomainId, FlushReason, GroupId};

/// One trace event. Field meanings are in `docs/trace.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// A group joined a domain (new or shared).
    Attach {
        /// The group.
        group: GroupId,
        /// The domain it is attached to.
        domain: DomainId,
        /// Whether the domain enforces cache coherency.
        coherent: bool,
        /// Whether the domain was newly created (and existing mappings replayed into it).
        new_domain: bool,
    },
    /// A group left its domain.
    Detach {
        /// The group.
        group: GroupId,
        /// The domain it left.
        domain: DomainId,
        /// Whether the domain was freed because it became empty.
        freed: bool,
    },
    /// Pages were mapped into a domain.
    Map {
        /// The domain.
        domain: DomainId,
        /// First IOVA.
        iova: u64,
        /// Number of base pages.
        npages: u64,
        /// First physical address.
        pa: u64,
    },
    /// Pages were unmapped from a domain.
    Unmap {
        /// The domain.
        domain: DomainId,
        /// First IOVA.
        iova: u64,
        /// Number of base pages.
        npages: u64,
    },
    /// User pages were pinned for a mapping (remote pin) or for an emulated device (external).
    Pin {
        /// IOVA of the first page.
        iova: u64,
        /// Number of pages.
        npages: u64,
        /// First pfn.
        pfn: u64,
        /// External (mdev-style) pin rather than a remote pin.
        external: bool,
    },
    /// Pins were dropped.
    Unpin {
        /// IOVA of the first page.
        iova: u64,
        /// Number of pages.
        npages: u64,
        /// First pfn.
        pfn: u64,
        /// External (mdev-style) pin rather than a remote pin.
        external: bool,
    },
    /// CPU caches were flushed for a run of pages (the series' feature).
    Flush {
        /// Which flush point.
        reason: FlushReason,
        /// IOVA of the first page.
        iova: u64,
        /// Number of pages.
        npages: u64,
        /// First physical address.
        pa: u64,
        /// Pages of the run the classifier skipped (UC/WC MMIO).
        skipped: u64,
    },
    /// The host platform wrote back and invalidated the CPU cache lines of pinned pages (the
    /// work behind a `flush`, or a flush of its own when the pages' last CPU mapping went).
    CpuFlush {
        /// First physical address.
        pa: u64,
        /// Number of pages.
        npages: u64,
        /// How the lines were reached: `mapping` (through the CPU mapping the pages have now),
        /// `unmap` (flushed through their mapping right before it went away: nothing can have
        /// written them since), `unreachable` (no CPU mapping and no earlier flush: not flushed).
        via: &'static str,
    },
    /// A device performed DMA.
    Dma {
        /// Device name.
        device: String,
        /// IOVA.
        iova: u64,
        /// Length in bytes.
        len: u64,
        /// `read` (device reads memory) or `write`.
        dir: &'static str,
        /// Whether the request snooped the CPU caches (after the domain's enforcement).
        snoop: bool,
    },
    /// A device signalled an interrupt through the eventfd its owner registered
    /// (`VFIO_DEVICE_SET_IRQS`).
    Irq {
        /// Device name.
        device: String,
        /// `intx` or `msi`.
        kind: &'static str,
        /// Vector (0 for INTx).
        vector: u32,
    },
    /// A DMA fault, or an injected platform failure.
    Fault {
        /// What faulted (`dma`, or an injected fault point such as `pin`).
        source: String,
        /// Human-readable detail.
        detail: String,
    },
    /// An invariant was broken (see the simulator's checker).
    Violation {
        /// Short kind (`stale_read`, `unflushed_unpin`, `accounting`, ...).
        kind: String,
        /// What exactly.
        detail: String,
    },
    /// An operation was issued (container ioctl or machine step), for readers of the trace.
    Op {
        /// Operation name.
        op: String,
        /// Its arguments, rendered.
        args: String,
    },
    /// An operation completed.
    Ret {
        /// Operation name.
        op: String,
        /// `0` or an errno name.
        result: String,
    },
}

/// One trace line's object: the writer's numeric fields (`seq`, and `pid`, `ns` where the
/// writer has them) first, then the fields of `object`, a serialized JSON object such as an
/// [`Event`]. The one place both trace writers (the simulator's and the host's per-process
/// files) shape their lines. Without the final newline.
pub fn json_line(fields: &[(&str, u64)], object: &str) -> String {
    let mut out = String::with_capacity(object.len() + 16 * fields.len() + 2);
    out.push('{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("\"{name}\":{value}"));
    }
    let rest = object.trim().strip_prefix('{').unwrap_or("}");
    if rest.trim_start() != "}" {
        if !fields.is_empty() {
            out.push(',');
        }
        out.push_str(rest);
    } else {
        out.push('}');
    }
    out
}

#[cfg(test)]
mod line_tests {
    use super::json_line;

    #[test]
    fn writer_fields_come_first_and_empty_objects_stay_valid() {
        assert_eq!(
            json_line(&[("seq", 3), ("pid", 7)], r#"{"ev":"pin","n":1}"#),
            r#"{"seq":3,"pid":7,"ev":"pin","n":1}"#
        );
        assert_eq!(json_line(&[("seq", 1)], "{}"), r#"{"seq":1}"#);
        assert_eq!(json_line(&[], r#"{"a":1}"#), r#"{"a":1}"#);
    }
}
