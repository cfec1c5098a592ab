//! # type1-exec: run a program under the emulation, and summarize its trace
//!
//! The other side of `libtype1_preload.so` (crate `type1-preload`): find the library, run a
//! program with it preloaded (`type1 exec`), and summarize the JSON-lines trace it leaves
//! (`docs/trace.md`). This crate links none of the library's interposed symbols, so the
//! `type1` binary and the tests that use it do their own file I/O for real.

pub mod timeline;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

/// File name of the built library.
pub const LIBRARY_NAME: &str = "libtype1_preload.so";

/// The library the running executable would use ([`find_library_near`]).
pub fn find_library() -> Option<PathBuf> {
    find_library_near(&std::env::current_exe().ok()?)
}

/// The library a binary at `exe` would use: the freshest copy next to it, under `deps/` there
/// (where `cargo test` leaves the workspace's own copy), or one level up (a binary under
/// `deps/`).
pub fn find_library_near(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    [
        dir.to_path_buf(),
        dir.join("deps"),
        dir.parent()?.to_path_buf(),
    ]
    .into_iter()
    .map(|d| d.join(LIBRARY_NAME))
    .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
    .max_by_key(|(t, _)| *t)
    .map(|(_, p)| p)
}

/// The broker executable the library at `library` starts: `type1-broker` next to it, or one
/// level up (the library is cargo's copy in `deps/`), as the library itself looks for it.
pub fn find_broker_near(library: &Path) -> Option<PathBuf> {
    let dir = library.parent()?;
    [dir.join("type1-broker"), dir.join("../type1-broker")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Options of one preloaded run.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Path of `libtype1_preload.so`.
    pub library: PathBuf,
    /// `TYPE1_TRACE`: where the trace goes.
    pub trace: Option<PathBuf>,
    /// `TYPE1_POLICY` (`seed` or `none`).
    pub policy: Option<String>,
    /// `TYPE1_MACHINE`: the machine description (`docs/machine.md`); the default machine
    /// (or the caller's `TYPE1_MACHINE`) otherwise.
    pub machine: Option<PathBuf>,
}

/// The file `program` names, as `execvp` would find it (`PATH` unless it contains a slash).
pub fn resolve_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 || program.is_absolute() {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether the ELF executable at `path` is statically linked (no `PT_INTERP`: no dynamic
/// loader, so `LD_PRELOAD` is never read and `/dev/vfio` is not emulated for it). `None` if
/// it is not a 64-bit little-endian ELF file (a script, say) or cannot be read.
pub fn statically_linked(path: &Path) -> Option<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h).ok()?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let phoff = u64::from_le_bytes(h[32..40].try_into().ok()?);
    let (phentsize, phnum) = (u16_at(&h, 54) as usize, u16_at(&h, 56) as usize);
    if phentsize < 4 || phnum > 4096 {
        return None;
    }
    let mut ph = vec![0u8; phentsize * phnum];
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(phoff)).ok()?;
    f.read_exact(&mut ph).ok()?;
    const PT_INTERP: u32 = 3;
    let interp = ph
        .chunks(phentsize)
        .any(|e| u32::from_le_bytes([e[0], e[1], e[2], e[3]]) == PT_INTERP);
    Some(!interp)
}

/// A new private directory (mode 0700, a name nobody could have planted) under `base`, for
/// a run's default trace: `mkdir` fails rather than follow anything already there.
pub fn private_dir(base: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut last = None;
    for attempt in 0..64u32 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = base.join(format!(
            "type1-exec-{}-{:x}",
            std::process::id(),
            t.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(u128::from(attempt))
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no private directory")))
}

/// A broker name of its own for one run (`TYPE1_BROKER`): every run is one emulated machine,
/// shared by the processes of that run only.
pub fn fresh_broker_name() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Random: another user reading /proc/net/unix sees a name only once it exists, and cannot
    // guess the next one.
    format!(
        "run-{}-{n}-{:016x}",
        std::process::id(),
        type1_host::sys::random_u64()
    )
}

/// A connection to a broker started for one run and held for as long as the run lasts: the
/// broker then never goes idle and exits mid-run, so its name stays taken by it and nobody
/// else can bind the name during the run. Closed when dropped.
struct BrokerHold(i32);

impl Drop for BrokerHold {
    fn drop(&mut self) {
        type1_host::sys::close(self.0);
    }
}

/// Starts the broker `type1-broker` next to `library` for `name` with the run's configuration,
/// and connects to it as a client that stays. `None` if that cannot be done here (the
/// program's library then starts the broker itself, as without `type1 exec`).
fn hold_broker(opts: &ExecOptions, name: &str) -> Option<BrokerHold> {
    let exe = find_broker_near(&opts.library)?;
    let uid = type1_host::sys::getuid();
    let full = type1_broker::wire::socket_name(Some(name), uid, "");
    let mut cmd = Command::new(&exe);
    cmd.arg(&full)
        .env_remove("LD_PRELOAD")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if let Some(p) = &opts.policy {
        cmd.env("TYPE1_POLICY", p);
    }
    if let Some(m) = &opts.machine {
        cmd.env("TYPE1_MACHINE", m);
    }
    // It returns once it listens (its detached child serves).
    if !cmd.status().ok()?.success() {
        return None;
    }
    let fd = type1_host::sock::connect_abstract_within(&full, 5000).ok()?;
    let hold = BrokerHold(fd);
    // Only this user's broker is worth holding.
    match type1_host::sock::peer_cred(fd) {
        Ok((_, u)) if u == uid => {}
        _ => return None,
    }
    let hello = type1_broker::wire::Msg::Hello {
        pid: std::process::id() as i32,
        client: None,
        trace: false,
    };
    type1_host::sock::set_recv_timeout(fd, 5000).ok()?;
    type1_broker::wire::send(fd, &hello, &[], &[]).ok()?;
    match type1_broker::wire::recv(fd).ok()?.msg {
        type1_broker::wire::Msg::Welcome(..) => Some(hold),
        _ => None,
    }
}

/// Runs `program args...` with the library preloaded and waits for it. Unless the
/// environment names a broker already (`TYPE1_BROKER`), the run gets a machine of its own,
/// under a random name that the run holds until it ends.
pub fn run(opts: &ExecOptions, program: &Path, args: &[String]) -> std::io::Result<ExitStatus> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("LD_PRELOAD", &opts.library);
    if let Some(t) = &opts.trace {
        cmd.env("TYPE1_TRACE", t);
    }
    if let Some(p) = &opts.policy {
        cmd.env("TYPE1_POLICY", p);
    }
    if let Some(m) = &opts.machine {
        cmd.env("TYPE1_MACHINE", m);
    }
    let _hold = if std::env::var_os("TYPE1_BROKER").is_none() {
        let name = fresh_broker_name();
        cmd.env("TYPE1_BROKER", &name);
        hold_broker(opts, &name)
    } else {
        None
    };
    cmd.status()
}

/// Counts of a trace: events by kind, flushes by reason, failed operations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceSummary {
    /// Number of events of each `ev`.
    pub events: BTreeMap<String, u64>,
    /// Number of `flush` events per `reason`.
    pub flushes: BTreeMap<String, u64>,
    /// `ret` events whose result is an errno name, as `op: ERRNO`.
    pub errors: Vec<String>,
    /// Lines that were not JSON objects.
    pub bad_lines: u64,
}

impl std::fmt::Display for TraceSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in &self.events {
            writeln!(f, "{k:>10} {v}")?;
        }
        for (k, v) in &self.flushes {
            writeln!(f, "flush/{k:<6} {v}")?;
        }
        for e in &self.errors {
            writeln!(f, "error {e}")?;
        }
        Ok(())
    }
}

/// Summarizes a JSON-lines trace.
pub fn summarize(trace: &str) -> TraceSummary {
    let mut s = TraceSummary::default();
    for line in trace.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            s.bad_lines += 1;
            continue;
        };
        let ev = v
            .get("ev")
            .and_then(|e| e.as_str())
            .unwrap_or("?")
            .to_string();
        if ev == "flush" {
            let r = v
                .get("reason")
                .and_then(|e| e.as_str())
                .unwrap_or("?")
                .to_string();
            *s.flushes.entry(r).or_default() += 1;
        }
        if ev == "ret" {
            let r = v.get("result").and_then(|e| e.as_str()).unwrap_or("");
            if r.starts_with('E') {
                let op = v.get("op").and_then(|e| e.as_str()).unwrap_or("?");
                s.errors.push(format!("{op}: {r}"));
            }
        }
        *s.events.entry(ev).or_default() += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_programs_are_told_apart_from_dynamic_ones() {
        let sh = resolve_program(Path::new("sh")).expect("sh on PATH");
        assert_eq!(statically_linked(&sh), Some(false), "{}", sh.display());
        assert_eq!(statically_linked(Path::new("/etc/passwd")), None);
        assert!(resolve_program(Path::new("no-such-program-here")).is_none());
    }

    #[test]
    fn summary_counts() {
        let t = r#"{"seq":1,"ev":"flush","reason":"map","iova":0,"npages":1,"pa":0,"skipped":0}
{"seq":2,"ev":"ret","op":"IOMMU_MAP_DMA","result":"EEXIST"}
not json
"#;
        let s = summarize(t);
        assert_eq!(s.flushes["map"], 1);
        assert_eq!(s.errors, vec!["IOMMU_MAP_DMA: EEXIST".to_string()]);
        assert_eq!(s.bad_lines, 1);
    }
}
