//! The trace recorder: every engine event plus the sim's own (`dma`, `fault`, `violation`),
//! numbered from 1, written as JSON lines (`{"seq":N,"ev":"...",...}`, see `docs/trace.md`).

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use type1_core::Event;

use crate::Sim;

/// What the machine observed: the trace, the violations found (the first
/// `violations_taken` were handed out already) and the counters.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observer {
    pub recorder: Recorder,
    pub violations: Vec<crate::Violation>,
    pub violations_taken: usize,
    pub stats: crate::Stats,
    /// What changed since the last engine check, and that check's state (`incheck.rs`).
    pub changes: crate::incheck::Changes,
    pub inc: crate::incheck::IncCache,
    pub check_mode: crate::CheckMode,
}

/// Recorded events and the optional live trace file.
#[derive(Debug)]
pub(crate) struct Recorder {
    events: Vec<(u64, Event)>,
    next_seq: u64,
    recording: bool,
    file: Option<BufWriter<File>>,
    file_error: Option<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            events: Vec::new(),
            next_seq: 0,
            recording: true,
            file: None,
            file_error: None,
        }
    }
}

impl Clone for Recorder {
    /// The copy keeps the events but not the live file.
    fn clone(&self) -> Self {
        Recorder {
            events: self.events.clone(),
            next_seq: self.next_seq,
            recording: self.recording,
            file: None,
            file_error: None,
        }
    }
}

/// One JSON line for an event: `seq` first, then the event's own fields in declaration order.
pub fn event_line(seq: u64, ev: &Event) -> String {
    // Serializing an `Event` cannot fail: it holds only strings, integers and booleans.
    let body = serde_json::to_string(ev).unwrap_or_else(|e| {
        format!(
            "{{\"ev\":\"unserializable\",\"error\":{:?}}}",
            e.to_string()
        )
    });
    type1_core::trace::json_line(&[("seq", seq)], &body)
}

impl Sim {
    /// Records an event (engine or sim) with the next sequence number.
    pub(crate) fn record(&mut self, ev: Event) {
        let r = &mut self.obs.recorder;
        r.next_seq += 1;
        let seq = r.next_seq;
        if let Some(f) = r.file.as_mut() {
            if let Err(e) = writeln!(f, "{}", event_line(seq, &ev)) {
                r.file_error.get_or_insert_with(|| e.to_string());
                r.file = None;
            }
        }
        if r.recording {
            r.events.push((seq, ev));
        }
    }

    /// Turns keeping events in memory on or off (sequence numbers and the live file go on;
    /// violations are kept either way). Off is for long explorations.
    pub fn set_recording(&mut self, on: bool) {
        self.obs.recorder.recording = on;
    }

    /// Every recorded event with its sequence number (from 1).
    pub fn events(&self) -> &[(u64, Event)] {
        &self.obs.recorder.events
    }

    /// Writes the whole trace as JSON lines.
    pub fn write_jsonl(&self, mut w: impl Write) -> std::io::Result<()> {
        for (seq, ev) in &self.obs.recorder.events {
            writeln!(w, "{}", event_line(*seq, ev))?;
        }
        w.flush()
    }

    /// Starts writing every further event to `path` as it happens (created or truncated).
    /// Events recorded before are written first.
    pub fn set_trace_file(&mut self, path: impl AsRef<Path>) -> Result<(), String> {
        let path = path.as_ref();
        let f = File::create(path).map_err(|e| format!("trace file {}: {e}", path.display()))?;
        let mut w = BufWriter::new(f);
        self.write_jsonl(&mut w)
            .map_err(|e| format!("trace file {}: {e}", path.display()))?;
        self.obs.recorder.file = Some(w);
        self.obs.recorder.file_error = None;
        Ok(())
    }

    /// Flushes the live trace file; reports the first write error, if any happened.
    pub fn flush_trace_file(&mut self) -> Result<(), String> {
        if let Some(e) = &self.obs.recorder.file_error {
            return Err(format!("trace file: {e}"));
        }
        if let Some(f) = self.obs.recorder.file.as_mut() {
            f.flush().map_err(|e| format!("trace file: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineDesc;
    use type1_core::Tracing;

    #[test]
    fn jsonl_has_seq_first_and_event_fields() {
        let mut s = Sim::new(MachineDesc::default()).unwrap();
        s.trace(Event::Op {
            op: "map".into(),
            args: "x".into(),
        });
        s.trace(Event::Ret {
            op: "map".into(),
            result: "0".into(),
        });
        let mut out = Vec::new();
        s.write_jsonl(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], r#"{"seq":1,"ev":"op","op":"map","args":"x"}"#);
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["seq"], 2);
        assert_eq!(v["ev"], "ret");
    }
}
