//! A trace as a timeline: Chrome trace-event JSON for Perfetto (`type1 trace --perfetto`), and
//! the time spent in MAP_DMA, UNMAP_DMA and teardown (`type1 bench`'s qemu workload).
//!
//! Lines need `ns` (the machine's monotonic clock, which the preload library and the broker
//! write); lines without it (the simulator's traces) are placed by `seq`, one microsecond
//! apart, which keeps their order.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Tracks of the timeline, per process: ioctls as slices, then one lane per kind of event.
fn lane(ev: &str, v: &Value) -> (u64, String) {
    match ev {
        "op" | "ret" => (1, "ioctls".into()),
        "pin" | "unpin" => (2, "pins".into()),
        "flush" | "cpu_flush" => (3, "flushes".into()),
        "dma" | "fault" => (4, "device".into()),
        "attach" | "detach" => (5, "groups".into()),
        "map" | "unmap" => {
            let d = v.get("domain").and_then(Value::as_u64).unwrap_or(0);
            (100 + d, format!("domain {d}"))
        }
        _ => (6, "other".into()),
    }
}

fn ts_us(v: &Value) -> f64 {
    match v.get("ns").and_then(Value::as_u64) {
        Some(ns) => ns as f64 / 1000.0,
        None => v.get("seq").and_then(Value::as_u64).unwrap_or(0) as f64,
    }
}

/// Chrome trace-event JSON (`{"traceEvents": [...]}`) for a JSON-lines trace: each ioctl is a
/// slice from its `op` to its `ret`, every other event an instant on its lane (pins, flushes,
/// device, groups, one lane per IOMMU domain), with all its fields as arguments.
pub fn perfetto(trace: &str) -> Value {
    let mut out = Vec::new();
    let mut lanes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut open: BTreeMap<(u64, String), Vec<(f64, Value)>> = BTreeMap::new();
    for line in trace.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let ev = v
            .get("ev")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let pid = v.get("pid").and_then(Value::as_u64).unwrap_or(0);
        let ts = ts_us(&v);
        let (tid, name) = lane(&ev, &v);
        lanes.insert((pid, tid), name);
        let op = v
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        match ev.as_str() {
            "op" => open.entry((pid, op)).or_default().push((ts, v)),
            "ret" => match open.get_mut(&(pid, op.clone())).and_then(Vec::pop) {
                Some((start, o)) => out.push(json!({
                    "name": op, "ph": "X", "ts": start, "dur": (ts - start).max(0.0),
                    "pid": pid, "tid": tid,
                    "args": {"args": o.get("args"), "result": v.get("result")},
                })),
                None => out.push(json!({
                    "name": op, "ph": "i", "s": "t", "ts": ts, "pid": pid, "tid": tid,
                    "args": v,
                })),
            },
            _ => out.push(json!({
                "name": ev, "ph": "i", "s": "t", "ts": ts, "pid": pid, "tid": tid, "args": v,
            })),
        }
    }
    // Operations with no `ret` (a release at exit): instants where they began.
    for ((pid, op), starts) in open {
        for (ts, v) in starts {
            out.push(
                json!({"name": op, "ph": "i", "s": "t", "ts": ts, "pid": pid, "tid": 1,
                "args": v}),
            );
        }
    }
    for ((pid, tid), name) in &lanes {
        out.push(
            json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
            "args": {"name": name}}),
        );
    }
    let pids: std::collections::BTreeSet<u64> = lanes.keys().map(|(p, _)| *p).collect();
    for pid in pids {
        out.push(json!({"name": "process_name", "ph": "M", "pid": pid,
            "args": {"name": format!("type1 pid {pid}")}}));
    }
    json!({ "traceEvents": out, "displayTimeUnit": "ns" })
}

/// Where a traced run spent its time, from `ns` stamps: MAP_DMA and UNMAP_DMA calls (op to
/// ret) and teardown (from the first release, `GROUP_RELEASE` or a container close, to the
/// last event), with the pages each moved.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Phases {
    /// Nanoseconds inside MAP_DMA.
    pub map_ns: u64,
    /// Pages MAP_DMA pinned.
    pub map_pages: u64,
    /// Nanoseconds inside UNMAP_DMA.
    pub unmap_ns: u64,
    /// Pages UNMAP_DMA unpinned.
    pub unmap_pages: u64,
    /// Nanoseconds of teardown.
    pub teardown_ns: u64,
    /// Pages unpinned in teardown.
    pub teardown_pages: u64,
}

/// The [`Phases`] of a trace (of one process, or several: per-process op/ret pairs).
pub fn phases(trace: &str) -> Phases {
    let mut p = Phases::default();
    let mut open: BTreeMap<(u64, String), u64> = BTreeMap::new();
    let mut current: Option<&str> = None;
    let mut teardown_start: Option<u64> = None;
    let mut last = 0u64;
    for line in trace.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(ns) = v.get("ns").and_then(Value::as_u64) else {
            continue;
        };
        last = last.max(ns);
        let pid = v.get("pid").and_then(Value::as_u64).unwrap_or(0);
        let ev = v.get("ev").and_then(Value::as_str).unwrap_or("");
        let op = v.get("op").and_then(Value::as_str).unwrap_or("");
        let npages = v.get("npages").and_then(Value::as_u64).unwrap_or(0);
        match ev {
            "op" if op == "IOMMU_MAP_DMA" || op == "IOMMU_UNMAP_DMA" => {
                open.insert((pid, op.to_string()), ns);
                current = Some(if op == "IOMMU_MAP_DMA" {
                    "map"
                } else {
                    "unmap"
                });
            }
            "ret" if op == "IOMMU_MAP_DMA" || op == "IOMMU_UNMAP_DMA" => {
                if let Some(start) = open.remove(&(pid, op.to_string())) {
                    let d = ns.saturating_sub(start);
                    if op == "IOMMU_MAP_DMA" {
                        p.map_ns += d;
                    } else {
                        p.unmap_ns += d;
                    }
                }
                current = None;
            }
            "op" if op == "GROUP_RELEASE" || op == "CONTAINER_RELEASE" => {
                teardown_start.get_or_insert(ns);
                current = Some("teardown");
            }
            "pin" if current == Some("map") => p.map_pages += npages,
            "unpin" => match current {
                Some("unmap") => p.unmap_pages += npages,
                Some("teardown") => p.teardown_pages += npages,
                _ => {}
            },
            _ => {}
        }
    }
    if let Some(t) = teardown_start {
        p.teardown_ns = last.saturating_sub(t);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = r#"{"seq":1,"pid":7,"ns":1000,"ev":"op","op":"IOMMU_MAP_DMA","args":"a"}
{"seq":2,"pid":7,"ns":1500,"ev":"pin","iova":0,"npages":4,"pfn":1,"external":false}
{"seq":3,"pid":7,"ns":1600,"ev":"map","domain":2,"iova":0,"npages":4,"pa":4096}
{"seq":4,"pid":7,"ns":3000,"ev":"ret","op":"IOMMU_MAP_DMA","result":"0"}
{"seq":5,"pid":7,"ns":4000,"ev":"op","op":"IOMMU_UNMAP_DMA","args":"b"}
{"seq":6,"pid":7,"ns":4100,"ev":"unpin","iova":0,"npages":1,"pfn":1,"external":false}
{"seq":7,"pid":7,"ns":4500,"ev":"ret","op":"IOMMU_UNMAP_DMA","result":"0"}
{"seq":8,"pid":7,"ns":9000,"ev":"op","op":"GROUP_RELEASE","args":"group 1"}
{"seq":9,"pid":7,"ns":9500,"ev":"unpin","iova":4096,"npages":3,"pfn":2,"external":false}
"#;

    #[test]
    fn phases_time_each_ioctl_and_the_teardown() {
        let p = phases(T);
        assert_eq!((p.map_ns, p.map_pages), (2000, 4));
        assert_eq!((p.unmap_ns, p.unmap_pages), (500, 1));
        assert_eq!((p.teardown_ns, p.teardown_pages), (500, 3));
    }

    #[test]
    fn perfetto_has_slices_instants_and_named_lanes() {
        let v = perfetto(T);
        let evs = v["traceEvents"].as_array().unwrap();
        let map = evs
            .iter()
            .find(|e| e["name"] == "IOMMU_MAP_DMA")
            .expect("a slice for MAP_DMA");
        assert_eq!(map["ph"], "X");
        assert_eq!(map["ts"], 1.0);
        assert_eq!(map["dur"], 2.0);
        assert!(evs
            .iter()
            .any(|e| e["ph"] == "M" && e["args"]["name"] == "domain 2"));
        assert!(evs
            .iter()
            .any(|e| e["name"] == "GROUP_RELEASE" && e["ph"] == "i"));
        assert!(evs.iter().any(|e| e["name"] == "pin" && e["tid"] == 2));
    }
}
