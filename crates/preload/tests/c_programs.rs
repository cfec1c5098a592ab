//! The C programs of `tests/c/`, each compiled with gcc against `<linux/vfio.h>` and run as
//! its own process under `LD_PRELOAD=libtype1_preload.so`.
//!
//! (Over 800 lines: one short test per program and mode, each naming the behaviour it checks;
//! the programs themselves are in `tests/c/`.)

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use type1_exec::{find_library, run, summarize, ExecOptions};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compiles `tests/c/<name>.c`; `None` (test skipped, saying so) when gcc is absent, except
/// under `CI=true`, where a missing gcc fails the test. Each call writes its
/// own executable: tests run in parallel, and running a file another test is rewriting fails
/// with ETXTBSY.
fn compile(name: &str) -> Option<PathBuf> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{n}"));
    let src = repo().join("tests/c").join(format!("{name}.c"));
    let st = Command::new("gcc")
        .args([
            "-O2",
            "-D_FORTIFY_SOURCE=2",
            "-Wall",
            "-Werror",
            "-pthread",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .status();
    match st {
        Ok(s) if s.success() => Some(out),
        Ok(s) => panic!("gcc failed on {}: {s}", src.display()),
        Err(_) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "gcc is required under CI=true: apt-get install gcc"
            );
            eprintln!("skipped: no gcc");
            None
        }
    }
}

fn lib() -> PathBuf {
    find_library().expect("libtype1_preload.so is built with the package")
}

/// Runs a compiled program with the library; returns (success, stdout+stderr, trace text).
fn run_preloaded(exe: &Path, trace_name: &str) -> (bool, String, String) {
    run_preloaded_env(exe, trace_name, &[])
}

/// [`run_preloaded`] with extra environment variables (`TYPE1_MACHINE`, ...).
fn run_preloaded_env(
    exe: &Path,
    trace_name: &str,
    envs: &[(&str, &Path)],
) -> (bool, String, String) {
    run_with(exe, &[], trace_name, envs)
}

/// Runs `exe` with `args` under the library and `envs`: (success, stdout+stderr, trace text).
fn run_with<V: AsRef<std::ffi::OsStr>>(
    exe: &Path,
    args: &[&str],
    trace_name: &str,
    envs: &[(&str, V)],
) -> (bool, String, String) {
    let trace = Path::new(env!("CARGO_TARGET_TMPDIR")).join(trace_name);
    let out = Command::new(exe)
        .args(args)
        .env("LD_PRELOAD", lib())
        .env("TYPE1_TRACE", &trace)
        .env("TYPE1_BROKER", type1_exec::fresh_broker_name())
        .envs(envs.iter().map(|(k, v)| (k, v.as_ref())))
        .output()
        .expect("run program");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        text,
        std::fs::read_to_string(&trace).unwrap_or_default(),
    )
}

#[test]
fn vfio_rst_flow() {
    let Some(exe) = compile("flow") else { return };
    let (ok, out, trace) = run_preloaded(&exe, "flow.jsonl");
    assert!(ok, "{out}");
    assert!(out.contains("flow ok"));
    let s = summarize(&trace);
    assert_eq!(s.bad_lines, 0);
    assert!(s.events.get("map").copied().unwrap_or(0) >= 1, "{trace}");
    assert_eq!(
        s.flushes.values().sum::<u64>(),
        0,
        "coherent group: no flush\n{trace}"
    );
}

#[test]
fn error_paths_give_exact_errnos() {
    let Some(exe) = compile("errors") else { return };
    let (ok, out, _) = run_preloaded(&exe, "errors.jsonl");
    assert!(ok, "{out}");
    assert!(out.contains("errors ok"));
}

fn lines_with(trace: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<u64> {
    trace
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| pred(v))
        .map(|v| v["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn noncoherent_map_and_unmap_flush_in_order_and_exit_releases() {
    let Some(exe) = compile("flush") else { return };
    let (ok, out, trace) = run_preloaded(&exe, "flush.jsonl");
    assert!(ok, "{out}");
    let ev = |name: &'static str| move |v: &serde_json::Value| v["ev"] == name;
    let flush = |reason: &'static str| {
        move |v: &serde_json::Value| v["ev"] == "flush" && v["reason"] == reason
    };
    let map_flushes = lines_with(&trace, flush("map"));
    let maps = lines_with(&trace, ev("map"));
    let unpin_flushes = lines_with(&trace, flush("unpin"));
    let unpins = lines_with(&trace, ev("unpin"));
    assert!(!map_flushes.is_empty() && !maps.is_empty(), "{trace}");
    assert!(
        map_flushes[0] < maps[0],
        "flush(map) before the first map\n{trace}"
    );
    assert!(!unpin_flushes.is_empty() && !unpins.is_empty(), "{trace}");
    assert!(
        unpin_flushes[0] < unpins[0],
        "flush(unpin) before the first unpin\n{trace}"
    );
    // Both mappings were unpinned: the second one by the exit-time release.
    let unpinned: u64 = trace
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["ev"] == "unpin")
        .map(|v| v["npages"].as_u64().unwrap())
        .sum();
    assert_eq!(unpinned, 32, "{trace}");
    assert!(
        trace.contains("\"GROUP_RELEASE\""),
        "exit released the group\n{trace}"
    );
    assert!(lines_with(&trace, ev("detach")).len() == 1, "{trace}");
}

#[test]
fn policy_none_does_not_flush() {
    let Some(exe) = compile("flush") else { return };
    let trace = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flush-none.jsonl");
    let opts = ExecOptions {
        library: lib(),
        trace: Some(trace.clone()),
        policy: Some("none".into()),
        machine: None,
    };
    let st = run(&opts, &exe, &[]).unwrap();
    assert!(st.success());
    let s = summarize(&std::fs::read_to_string(&trace).unwrap());
    assert_eq!(s.flushes.values().sum::<u64>(), 0, "{s}");
    assert!(s.events["unpin"] >= 2);
}

#[test]
fn dma_device_moves_data_faults_and_reaches_peer_memory() {
    let Some(exe) = compile("dma") else { return };
    let (ok, out, trace) = run_preloaded(&exe, "dma.jsonl");
    assert!(ok, "{out}\n{trace}");
    assert!(out.contains("dma ok"));
    let evs: Vec<serde_json::Value> = trace
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let dmas: Vec<&serde_json::Value> = evs.iter().filter(|v| v["ev"] == "dma").collect();
    // Group 1's domain does not enforce coherency: the no-snoop request stays no-snoop.
    assert!(
        dmas.iter().any(|v| v["dir"] == "write"
            && v["iova"] == 0x100000
            && v["len"] == 4096
            && v["snoop"] == false
            && v["device"] == "0000:00:05.0"),
        "{trace}"
    );
    assert!(
        dmas.iter()
            .any(|v| v["dir"] == "read" && v["snoop"] == true),
        "{trace}"
    );
    let faults: Vec<&str> = evs
        .iter()
        .filter(|v| v["ev"] == "fault" && v["source"] == "dma")
        .filter_map(|v| v["detail"].as_str())
        .collect();
    assert_eq!(faults.len(), 4, "{trace}");
    assert!(faults[0].contains("unmapped") && faults[0].contains("0x102000"));
    assert!(faults[1].contains("not writable"));
    assert!(
        faults.iter().any(|f| f.contains("bus mastering off")),
        "{trace}"
    );
    // Peer-to-peer: the BAR2 mapping's pages are UC device memory: mapped, never flushed.
    let p2p_flushes: Vec<&serde_json::Value> = evs
        .iter()
        .filter(|v| v["ev"] == "flush" && v["iova"] == 0x40000000)
        .collect();
    assert!(
        !p2p_flushes.is_empty() && p2p_flushes.iter().all(|v| v["skipped"] == v["npages"]),
        "BAR2 pages are skipped by the flush classifier\n{trace}"
    );
    assert!(
        evs.iter()
            .any(|v| v["ev"] == "map" && v["iova"] == 0x40000000 && v["npages"] == 16),
        "BAR2 is one contiguous run of reserved pfns\n{trace}"
    );
}

#[test]
fn machine_file_and_dup_tracking() {
    let Some(exe) = compile("dup") else { return };
    let machine = repo().join("tests/machines/preload-dup.toml");
    let (ok, text, trace) = run_preloaded_env(&exe, "dup.jsonl", &[("TYPE1_MACHINE", &machine)]);
    assert!(ok, "{text}\n{trace}");
    assert!(text.contains("dup ok"));
    let evs: Vec<serde_json::Value> = trace
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        evs.iter()
            .any(|v| v["ev"] == "attach" && v["group"] == 7 && v["coherent"] == false),
        "group 7 sits behind the unit without snoop control\n{trace}"
    );
    let detaches: Vec<&serde_json::Value> = evs.iter().filter(|v| v["ev"] == "detach").collect();
    assert_eq!(detaches.len(), 1, "{trace}");
    // Released at the last close of the group's fds, not at the close of the original fd.
    let release = evs
        .iter()
        .position(|v| v["op"] == "GROUP_RELEASE")
        .expect("released");
    let unmap_ok = evs
        .iter()
        .position(|v| v["ev"] == "ret" && v["op"] == "IOMMU_UNMAP_DMA" && v["result"] == "0")
        .expect("unmapped");
    assert!(unmap_ok < release, "{trace}");
}

#[test]
fn bad_machine_file_is_reported() {
    let Some(exe) = compile("flush") else { return };
    let bad = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-machine.toml");
    std::fs::write(&bad, "[[group]]\nid = 1\nunit = 9\ndevices = [\"x\"]\n").unwrap();
    let out = Command::new(&exe)
        .env("LD_PRELOAD", lib())
        .env("TYPE1_MACHINE", &bad)
        .output()
        .expect("run program");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("TYPE1_MACHINE="), "{err}");
    assert!(err.contains("open /dev/vfio/1"), "{err}");
}

/// Runs `tests/c/pins.c` with `args` under the library (and `envs`): (success, output, trace).
fn run_pins(args: &[&str], envs: &[(&str, &str)], trace: &str) -> Option<(bool, String, String)> {
    let exe = compile("pins")?;
    Some(run_with(&exe, args, trace, envs))
}

/// Issue 8, item 1: every memory game on pinned memory ends as in the kernel (see the checks
/// in `tests/c/pins.c`), and the trace says how each unpin flush reached its pages.
#[test]
fn pins_hold_pages_whatever_the_program_does() {
    let dir = env!("CARGO_TARGET_TMPDIR");
    let Some((ok, out, trace)) = run_pins(&["all", dir], &[], "pins.jsonl") else {
        return;
    };
    assert!(ok, "{out}");
    for what in [
        "remap",
        "live-update",
        "truncate-mremap",
        "madvise",
        "fork",
        "mlock",
        "error-path",
        "bar-mremap",
        "file",
    ] {
        assert!(
            out.contains(&format!("{what} ok")),
            "{what} did not run:\n{out}"
        );
    }
    assert!(
        !out.contains("type1:"),
        "no emulation notice expected:\n{out}"
    );
    // Pages unmapped by munmap/madvise/ftruncate while pinned were flushed as their mapping
    // went; none was unreachable.
    let via = |v: &str| trace.matches(&format!("\"via\":\"{v}\"")).count();
    assert!(via("unmap") > 0 && via("mapping") > 0, "{trace}");
    assert_eq!(via("unreachable"), 0, "{trace}");
}

/// 65535 scattered one-page maps all succeed: pins split no memory region.
#[test]
fn scattered_maps_do_not_hit_max_map_count() {
    let Some((ok, out, _)) = run_pins(&["scattered"], &[], "scattered.jsonl") else {
        return;
    };
    assert!(ok && out.contains("scattered ok"), "{out}");
}

/// Without CAP_IPC_LOCK, RLIMIT_MEMLOCK bounds MAP_DMA exactly, and a failed MAP (EFAULT)
/// leaves nothing charged (the program runs as root here and drops the capability itself).
#[test]
fn rlimit_is_exact_after_a_failed_map() {
    let Some((ok, out, _)) = run_pins(&["rlimit"], &[], "rlimit.jsonl") else {
        return;
    };
    assert!(ok && out.contains("rlimit ok"), "{out}");
}

/// Without io_uring (a seccomp filter refuses it) pins are tracked: DMA works while the memory
/// stays mapped, faults once it is gone, and one notice names the cause.
#[test]
fn without_io_uring_pins_fall_back_and_say_so_once() {
    let Some((ok, out, _)) = run_pins(&["no-uring"], &[], "no-uring.jsonl") else {
        return;
    };
    assert!(ok && out.contains("no-uring ok"), "{out}");
    assert_eq!(
        out.matches("type1: io_uring is unusable here").count(),
        1,
        "{out}"
    );
    assert_eq!(
        out.matches("type1: a page pinned by address only").count(),
        1,
        "{out}"
    );
}

/// Without io_uring (`TYPE1_PIN=track`) the emulation cannot hold an unmapped page: the device
/// faults (never a write into unrelated memory) and a notice says why.
#[test]
fn tracked_pins_fail_clearly() {
    let Some((ok, out, _)) = run_pins(&["remap"], &[("TYPE1_PIN", "track")], "track.jsonl") else {
        return;
    };
    assert!(!ok, "{out}");
    assert!(out.contains("device read after munmap"), "{out}");
    assert!(
        out.contains("type1: a page pinned by address only"),
        "{out}"
    );
    let Some((ok, out, _)) = run_pins(&["fork"], &[("TYPE1_PIN", "bogus")], "bogus.jsonl") else {
        return;
    };
    assert!(!ok && out.contains("TYPE1_PIN=bogus"), "{out}");
}

/// Issue 8, item 4: a long MAP_DMA (1 GiB still to be faulted in) in one thread does not stall
/// another thread's calls on files and memory that are not the emulation's.
#[test]
fn long_map_does_not_stall_unrelated_calls() {
    let Some(exe) = compile("stall") else { return };
    let (ok, out, _) = run_preloaded(&exe, "stall.jsonl");
    assert!(ok, "{out}");
    assert!(out.contains("stall ok"), "{out}");
}

/// A fork while another thread is inside an emulated call (pinning 1 GiB) gives a child that
/// can still use the emulation and exit: no lock is held across fork.
#[test]
fn fork_during_an_emulated_call_does_not_hang_the_child() {
    let Some(exe) = compile("forklock") else {
        return;
    };
    let (ok, out, _) = run_preloaded(&exe, "forklock.jsonl");
    assert!(ok && out.contains("forklock ok"), "{out}");
}

/// Issue 20: emulated calls from a signal handler that interrupts emulated calls (register
/// reads in the process, writes and ioctls through the broker) always work, as in the kernel.
#[test]
fn signal_handler_calls_never_return_wrong_data() {
    let Some(exe) = compile("signals") else {
        return;
    };
    let (ok, out, _) = run_preloaded(&exe, "signals.jsonl");
    assert!(ok && out.contains("signals ok"), "{out}");
}

/// Issue 9, item 1: every close route releases the emulated object (the group opens again),
/// a real file that reuses the number gets the kernel's answers, and `closefrom` leaves the
/// emulation's own fds alone.
#[test]
fn every_close_route_releases_and_real_files_are_never_answered() {
    let Some(exe) = compile("closeroutes") else {
        return;
    };
    let (ok, out, _) = run_preloaded(&exe, "closeroutes.jsonl");
    assert!(ok, "{out}");
    for route in ["close_range", "syscall", "fclose", "closefrom"] {
        assert!(out.contains(&format!("{route} ok")), "{route}:\n{out}");
    }
}

/// Issue 9, item 6: the trace stays valid across fork and exec: one file per process, every
/// line JSON with its writer's pid, `seq` 1, 2, 3, ... in each file, and nothing truncated
/// (the parent's events from before it exec'd itself are still there).
#[test]
fn trace_stays_valid_across_fork_and_exec() {
    let Some(exe) = compile("tracefork") else {
        return;
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tracefork");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("t.jsonl");
    let out = Command::new(&exe)
        .env("LD_PRELOAD", lib())
        .env("TYPE1_TRACE", &base)
        .env("TYPE1_BROKER", type1_exec::fresh_broker_name())
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let pid_of = |what: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("tracefork {what} ")))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {what} line in {text}"))
    };
    let (parent, child) = (pid_of("parent"), pid_of("child"));
    assert_eq!(pid_of("again"), parent, "exec keeps the pid");
    let check = |path: &Path, pid: u64| -> Vec<serde_json::Value> {
        let t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let evs: Vec<serde_json::Value> = t
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect();
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(
                e["seq"].as_u64(),
                Some(i as u64 + 1),
                "{path:?} line {}",
                i + 1
            );
            assert_eq!(e["pid"].as_u64(), Some(pid), "{path:?} line {}", i + 1);
        }
        evs
    };
    let main = check(&base, parent);
    let kid = check(&dir.join(format!("t.jsonl.{child}")), child);
    let maps_at = |evs: &[serde_json::Value], iova: u64| {
        evs.iter()
            .filter(|e| e["ev"] == "map" && e["iova"].as_u64() == Some(iova))
            .count()
    };
    assert!(
        maps_at(&main, 0x100000) > 0,
        "the parent's events before exec"
    );
    assert!(
        maps_at(&main, 0x300000) > 0,
        "and after it, in the same file"
    );
    assert!(
        kid.iter().any(|e| e["ev"] == "unmap"),
        "the child's own UNMAP in its own file"
    );
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 2, "one file per process");
}

/// Issue 9, item 5: two fds on one function are one device (registers, buffer, BAR2).
#[test]
fn two_fds_on_one_function_are_one_device() {
    let Some(exe) = compile("onedevice") else {
        return;
    };
    let (ok, out, _) = run_preloaded(&exe, "onedevice.jsonl");
    assert!(ok && out.contains("onedevice ok"), "{out}");
}

/// Issue 9 item 2: one object per file across processes, as in the kernel. `tests/c/share.c`
/// forks, passes fds over SCM_RIGHTS and across exec, and checks the kernel's answers: a
/// child's MAP is the parent's EEXIST, group exclusivity (EBUSY) holds across processes and
/// ends with the holder's exit, DMA reaches the pages of the process that mapped them, and the
/// last close anywhere releases everything.
#[test]
fn objects_are_shared_across_fork_exec_and_scm_rights() {
    let Some(exe) = compile("share") else { return };
    let (ok, out, trace) = run_preloaded(&exe, "share.jsonl");
    assert!(ok, "{out}\n{trace}");
    assert!(out.contains("exec-child ok"), "{out}");
    assert!(out.contains("share ok"), "{out}");
}

/// Issue 9 item 4: `tests/c/files.c` checks read/write/readv/preadv/pwritev as vfio's files
/// answer them (EINVAL for containers and groups, the region by offset or file position for
/// devices), fstat/stat as character devices, the `/dev/vfio` directory with `openat` relative
/// to it, path spellings, `O_PATH` handles, `readlink` with size 0, and errno after success.
#[test]
fn emulated_files_look_like_the_kernels() {
    let Some(exe) = compile("files") else { return };
    let (ok, out, trace) = run_preloaded(&exe, "files.jsonl");
    assert!(ok, "{out}\n{trace}");
    assert!(out.contains("files ok"), "{out}");
}

/// Issue 14: abstract socket names belong to nobody, so another local user can listen at the
/// broker's name first. The library checks who serves it (`SO_PEERCRED`) and refuses a
/// broker of another user with a clear message, rather than handing it the program's ioctls.
#[test]
fn a_broker_of_another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "this test needs root (to run the squatter as another user) under CI=true"
        );
        eprintln!("skipped: not root");
        return;
    }
    let (Some(squat), Some(flow)) = (compile("squat"), compile("flow")) else {
        return;
    };
    let name = type1_exec::fresh_broker_name();
    let mut squatter = Command::new(&squat)
        .args(["0", &name])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run squatter");
    let mut ready = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(squatter.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let out = Command::new(&flow)
        .env("LD_PRELOAD", lib())
        .env("TYPE1_BROKER", &name)
        .output()
        .expect("run program");
    let _ = squatter.kill();
    let _ = squatter.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("uid 65534, not by this user"), "{err}");
}

/// Issue 11 item 3: `tests/c/irq.c` registers eventfds with SET_IRQS and sees INTx fire,
/// automask, fire again on unmask while asserted, and MSI fire once per transfer; a transfer a
/// forked child starts signals the parent's eventfd (the broker holds it, as the kernel does).
#[test]
fn interrupts_reach_the_registered_eventfds() {
    let Some(exe) = compile("irq") else { return };
    let (ok, out, trace) = run_preloaded(&exe, "irq.jsonl");
    assert!(ok, "{out}\n{trace}");
    assert!(out.contains("irq ok"), "{out}");
    let irqs = lines_with(&trace, |v| v["ev"] == "irq");
    assert!(irqs.len() >= 5, "{trace}");
}

/// Issue 11 item 3: `tests/c/pci_device.c` checks what the kernel's VFIO selftest for PCI
/// devices checks (DMA map and unmap, config space against sysfs, bus mastering, BARs, MSI and
/// MSI-X enable, trigger and disable, reset), each case from a fresh open through sysfs, in
/// two modes: a group in a type1 container, and the kernel test's default, iommufd (the
/// device cdev bound to `/dev/iommu` and attached to an IOAS). 6 cases a mode.
#[test]
fn the_device_passes_the_checks_of_the_kernels_vfio_pci_device_test() {
    let Some(exe) = compile("pci_device") else {
        return;
    };
    let (ok, out, trace) = run_preloaded(&exe, "pci_device.jsonl");
    assert!(ok, "{out}\n{trace}");
    assert!(out.contains("pci_device ok 12"), "{out}");
    let loopbacks = lines_with(&trace, |v| v["ev"] == "op" && v["op"] == "DEVICE_SET_IRQS");
    // In each mode: MSI on, its trigger, off; MSI-X on, four triggers, off.
    assert!(loopbacks.len() >= 18, "{trace}");
    // The iommufd mode binds the cdev to /dev/iommu once a case.
    let binds = lines_with(&trace, |v| {
        v["ev"] == "op" && v["op"] == "DEVICE_BIND_IOMMUFD"
    });
    assert_eq!(binds.len(), 6, "{trace}");
}

/// Issue 21: `tests/c/iommufd_dma.c` checks, in our own code, what the kernel's
/// `vfio_dma_mapping_test` and `vfio_dma_mapping_mmio_test` check in the three iommufd modes
/// (the two compat containers on `/dev/iommu` and the native cdev on an IOAS), on both
/// devices: DMA map and unmap of a 4 KiB page and a 2 MiB hugetlb page at IOVA = address, the
/// last page of the IOVA ranges, EOVERFLOW past 2^64, and BAR mmaps refused: 8 cases a mode
/// and device, 48.
#[test]
fn the_iommufd_modes_pass_our_copy_of_the_kernels_dma_mapping_checks() {
    let Some(exe) = compile("iommufd_dma") else {
        return;
    };
    ensure_hugepages(4);
    let (ok, out, trace) = run_preloaded(&exe, "iommufd_dma.jsonl");
    assert!(ok, "{out}");
    assert!(out.contains("iommufd_dma ok 48"), "{out}");
    // Per mode and device the device's DMA reaches the 4 KiB page, both ends of the 2 MiB
    // one and the top page twice (5), and faults at the same IOVAs once they are unmapped.
    let dma = lines_with(&trace, |v| v["ev"] == "dma");
    let faults = lines_with(&trace, |v| v["ev"] == "fault" && v["source"] == "dma");
    assert_eq!((dma.len(), faults.len()), (30, 30), "{trace}");
}

/// Issue 9 item 8: `tests/c/threads.c`, threads and forks at once; no wrong answer, no hang.
#[test]
fn threads_and_forks_at_once_get_the_kernels_answers() {
    let Some(exe) = compile("threads") else {
        return;
    };
    let (ok, out, _) = run_preloaded(&exe, "threads.jsonl");
    assert!(ok, "{out}");
    assert!(out.contains("stress ok"), "{out}");
}

/// Issue 9 item 8: `tests/c/mproc.c`, processes and threads sharing one container and device.
#[test]
fn processes_and_threads_share_one_container() {
    let Some(exe) = compile("mproc") else { return };
    let (ok, out, _) = run_preloaded(&exe, "mproc.jsonl");
    assert!(ok, "{out}");
    assert!(out.contains("mp ok"), "{out}");
}

/// The fast-path issue: pins, unpins and flushes travel as runs, so no message of the
/// protocol grows with the pages a call covers. 1 GiB mapped and unmapped twice in 4 KiB and
/// in huge pages (2^19 page pins in all) crosses the wire in a few dozen pin callbacks, and the
/// largest datagram stays far below what one record per page would take (8 bytes a page would
/// be 1 MiB for one 512 MiB map).
#[test]
fn no_message_grows_with_the_pages_it_covers() {
    let Some(exe) = compile("bigmap") else { return };
    let stats = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bigmap-wire.json");
    let _ = std::fs::remove_file(&stats);
    let (ok, out, _) = run_with(&exe, &[], "bigmap.jsonl", &[("TYPE1_WIRE_STATS", &stats)]);
    assert!(ok && out.contains("bigmap ok"), "{out}");
    let text = std::fs::read_to_string(&stats).expect("TYPE1_WIRE_STATS written at exit");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {text}"));
    // 4 maps of 131072 pages, in calls of up to 65536 pages.
    assert!(n("pin_callbacks") >= 8, "{text}");
    assert!(n("pin_callbacks") <= 16, "pins are batched: {text}");
    assert!(n("largest_received") <= 64 * 1024, "{text}");
    assert!(n("largest_sent") <= 64 * 1024, "{text}");
    // Every call is a handful of messages, not one per page or per 512 pages.
    assert!(n("received") < 400, "{text}");
}

/// The pids of the broker processes serving `name` (their command line names it).
fn brokers_named(name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        // The broker serves `@type1-broker/<uid>/<name>`.
        if args.len() >= 2
            && args[0].ends_with(b"type1-broker")
            && args[1].ends_with(format!("/{name}").as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

/// Runs `tests/c/brokerdeath.c` in `mode` and kills its broker when it says "ready" (after
/// `delay`); in mode `idle` it is then told to go on. Returns its output.
fn kill_broker_during(exe: &Path, mode: &str, delay_ms: u64) -> String {
    use std::io::{BufRead, Write};
    let name = type1_exec::fresh_broker_name();
    let mut child = Command::new(exe)
        .arg(mode)
        .env("LD_PRELOAD", lib())
        .env("TYPE1_BROKER", &name)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run brokerdeath");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready line");
    assert_eq!(line.trim(), "ready", "{line}");
    let pids = brokers_named(&name);
    assert_eq!(pids.len(), 1, "one broker for {name}: {pids:?}");
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let st = Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    for _ in 0..200 {
        if !std::path::Path::new(&format!("/proc/{}", pids[0])).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = stdin.write_all(b"go\n");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("output");
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{mode}: {rest}{err}");
    assert!(brokers_named(&name).iter().all(|p| *p != pids[0]));
    rest
}

/// Issue 20: the broker killed under a process that holds a container, a group, a device
/// and a mapping: idle with a forked child holding the same files, in the middle of a 2 GiB
/// MAP_DMA, of device transfers, and of a loop that opens and closes a group. Every call on the old files fails with EIO in both processes, before and after a
/// new broker starts, and never reaches the new broker's objects; the old mappings' pages
/// are unpinned; a new container works.
#[test]
fn a_dead_broker_leaves_dead_files_and_nothing_pinned() {
    let Some(exe) = compile("brokerdeath") else {
        return;
    };
    let out = kill_broker_during(&exe, "idle", 0);
    assert!(
        out.contains("child ok") && out.contains("brokerdeath ok"),
        "{out}"
    );
    for mode in ["map", "dma", "close"] {
        let out = kill_broker_during(&exe, mode, 300);
        assert!(out.contains("brokerdeath ok"), "{mode}: {out}");
    }
}

/// Issue 20: a process of this user that took the broker's name, and either listens and never
/// accepts or only binds it. A program under the library neither hangs nor gets a bare errno:
/// it fails within the connect deadline, and the message names the process that holds the
/// name.
#[test]
fn a_squatter_on_the_brokers_name_is_named_and_never_hangs_the_program() {
    let Some(exe) = compile("flow") else { return };
    let uid = type1_host::sys::getuid();
    let me = std::process::id().to_string();
    for listen in [true, false] {
        let name = type1_exec::fresh_broker_name();
        let full = format!("type1-broker/{uid}/{name}");
        let squat = if listen {
            type1_host::sock::listen_abstract(&full)
        } else {
            type1_host::sock::bind_abstract(&full)
        }
        .expect("take the name");
        let t = std::time::Instant::now();
        let out = Command::new(&exe)
            .env("LD_PRELOAD", lib())
            .env("TYPE1_BROKER", &name)
            .output()
            .expect("run flow");
        let took = t.elapsed();
        type1_host::sys::close(squat);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "listen={listen}: {text}");
        assert!(
            took < std::time::Duration::from_secs(30),
            "listen={listen}: {took:?}"
        );
        assert!(
            text.contains(&format!("pid {me}")),
            "listen={listen}: the holder is named: {text}"
        );
        let why = if listen {
            "does not answer"
        } else {
            "does not listen"
        };
        assert!(text.contains(why), "listen={listen}: {text}");
    }
}

/// Runs `cmd` and waits at most `secs`: the output, or a panic naming a hang.
fn output_within(mut cmd: Command, secs: u64, what: &str) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let t = std::time::Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if t.elapsed() > std::time::Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("{what}: still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Issue 20: files the library opens by name from the environment. A FIFO as `TYPE1_MACHINE`
/// or as `TYPE1_TRACE` hangs nothing; a trace file another user made first (mode 0666, to
/// read the trace) is not written to.
#[test]
fn fifos_and_foreign_files_in_the_environment_hang_nothing_and_get_no_trace() {
    let Some(exe) = compile("flow") else { return };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("envfiles");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());
    // The machine file: the program runs on and says what is wrong, without the machine.
    let mut cmd = Command::new(&exe);
    cmd.env("LD_PRELOAD", lib())
        .env("TYPE1_BROKER", type1_exec::fresh_broker_name())
        .env("TYPE1_MACHINE", &fifo);
    let out = output_within(cmd, 30, "TYPE1_MACHINE=<fifo>");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TYPE1_MACHINE"), "{err}");
    // The trace: the program runs as without a trace, and says why.
    let mut cmd = Command::new(&exe);
    cmd.env("LD_PRELOAD", lib())
        .env("TYPE1_BROKER", type1_exec::fresh_broker_name())
        .env("TYPE1_TRACE", &fifo);
    let out = output_within(cmd, 30, "TYPE1_TRACE=<fifo>");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("no trace") || text.contains("not writing the trace"),
        "{text}"
    );
    // A trace file of another user, readable by all.
    let root = type1_host::sys::geteuid() == 0;
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "under CI=true this test runs as root (it makes a file of another user)"
        );
        return;
    }
    let foreign = dir.join("trace.jsonl");
    std::fs::write(&foreign, b"").unwrap();
    let st = Command::new("chown")
        .args(["65534:65534"])
        .arg(&foreign)
        .status()
        .expect("chown");
    assert!(st.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.env("LD_PRELOAD", lib())
        .env("TYPE1_BROKER", type1_exec::fresh_broker_name())
        .env("TYPE1_TRACE", &foreign);
    let out = output_within(cmd, 30, "TYPE1_TRACE=<foreign file>");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&foreign).unwrap().len(),
        0,
        "nothing written to another user's file"
    );
}

/// Issue 20: at RLIMIT_NOFILE, opening a container or getting a device fd is EMFILE, as in the
/// kernel, never EIO; both work again once an fd is closed.
#[test]
fn the_fd_limit_gives_emfile() {
    let Some(exe) = compile("fdlimit") else {
        return;
    };
    let (ok, out, _) = run_preloaded(&exe, "fdlimit.jsonl");
    assert!(ok && out.contains("fdlimit ok"), "{out}");
}

/// Issue 20: RLIMIT_MEMLOCK is one budget for the program's own `mlock` and VFIO's pins (the
/// kernel charges both to `mm->locked_vm`).
#[test]
fn mlock_and_map_dma_share_rlimit_memlock() {
    let Some(exe) = compile("mlockshare") else {
        return;
    };
    let (ok, out, _) = run_preloaded(&exe, "mlockshare.jsonl");
    assert!(ok && out.contains("mlockshare ok"), "{out}");
}

/// Issue 20: `read()` on a device fd starts at position 0 (BAR0's ID) and moves on, as the
/// kernel's does; `lseek` is ESPIPE.
#[test]
fn read_uses_the_file_position_from_zero() {
    let Some(exe) = compile("readpos") else {
        return;
    };
    let (ok, out, _) = run_preloaded(&exe, "readpos.jsonl");
    assert!(ok && out.contains("readpos ok"), "{out}");
}

/// Issue 20: a group closed in one thread is released when `close` returns: another thread's
/// open right after never finds it busy or still in its container.
#[test]
fn a_close_is_complete_when_it_returns() {
    let Some(exe) = compile("reopen") else { return };
    let (ok, out, _) = run_preloaded(&exe, "reopen.jsonl");
    assert!(ok && out.contains("reopen ok"), "{out}");
}

/// Issue 20: connections that never say hello hold nothing for long. 64 of them are dropped by
/// the broker after its hello deadline (each reads end of file), and a program served by the
/// same broker meanwhile works.
#[test]
fn silent_connections_are_dropped_and_hold_nothing() {
    let Some(exe) = compile("flow") else { return };
    let broker = type1_exec::find_broker_near(&lib()).expect("type1-broker next to the library");
    let name = type1_exec::fresh_broker_name();
    let full = format!("type1-broker/{}/{name}", type1_host::sys::getuid());
    let st = Command::new(&broker)
        .arg(&full)
        .env_remove("LD_PRELOAD")
        .status()
        .expect("start the broker");
    assert!(st.success());
    let silent: Vec<i32> = (0..64)
        .map(|_| type1_host::sock::connect_abstract(&full).expect("connect"))
        .collect();
    // The broker is busy with 64 silent peers; a real client is still served.
    let (ok, out, _) = run_with(&exe, &[], "silent.jsonl", &[("TYPE1_BROKER", &name)]);
    assert!(ok, "{out}");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    for fd in silent {
        let mut buf = [0u8; 16];
        // Dropped: end of file (or a reset), never a wait.
        let _ = type1_host::sock::set_recv_timeout(fd, 5000);
        let r = type1_host::sock::recv(fd, &mut buf);
        assert!(
            matches!(r, Ok((0, _)) | Err(type1_core::Errno(libc::ECONNRESET))),
            "a silent connection is still open: {r:?}"
        );
        type1_host::sys::close(fd);
    }
}

/// The fast-path issue: the register image in shared memory keeps the device one set of
/// registers, as on hardware: plain writes made in one process are what another reads and what
/// the device uses when that other process starts it, and a thread polling STATUS during
/// transfers sees only whole states.
#[test]
fn registers_are_one_set_across_processes_and_threads() {
    let Some(exe) = compile("regshare") else {
        return;
    };
    let (ok, out, _) = run_preloaded(&exe, "regshare.jsonl");
    assert!(ok && out.contains("regshare ok"), "{out}");
}

/// The kernel's own VFIO selftests (built from the newest Debian `linux-source` by
/// `scripts/kselftests.sh`), unmodified, under the library. `None` (skipped, saying so) when
/// they cannot be built, except under `CI=true`, where that fails.
fn kselftests() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(repo().join("scripts/kselftests.sh"))
        .output()
        .expect("run bash");
    if out.status.success() {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        return Some(PathBuf::from(dir));
    }
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the kernel's VFIO selftests could not be built under CI=true (needs gcc, make, \
         xz-utils, uuid-dev and the Debian archive): {why}"
    );
    eprintln!("skipped: kernel selftests unavailable: {why}");
    None
}

/// 2 MiB hugetlb pages for the selftests' hugetlb variants: at least `n` free, reserved
/// here if this process may (root), else the test fails naming what to do.
fn ensure_hugepages(n: u64) {
    let free = |f: &str| -> u64 {
        std::fs::read_to_string(format!("/sys/kernel/mm/hugepages/hugepages-2048kB/{f}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    if free("free_hugepages") >= n {
        return;
    }
    let want = free("nr_hugepages") + n;
    let _ = std::fs::write("/proc/sys/vm/nr_hugepages", want.to_string());
    assert!(
        free("free_hugepages") >= n,
        "the hugetlb variants need {n} free 2 MiB pages: echo {want} > /proc/sys/vm/nr_hugepages"
    );
}

/// The result lines of a kselftest harness run: (test name, passed, skip reason).
fn tap_results(out: &str) -> Vec<(String, bool, Option<String>)> {
    out.lines()
        .filter_map(|l| {
            let (ok, rest) = if let Some(r) = l.strip_prefix("ok ") {
                (true, r)
            } else {
                (false, l.strip_prefix("not ok ")?)
            };
            let name = rest.split_whitespace().nth(1)?.to_string();
            let skip = rest.split_once("# SKIP").map(|(_, w)| w.trim().to_string());
            Some((name, ok, skip))
        })
        .collect()
}

/// Issue 21: the kernel's `vfio_dma_mapping_test`, `vfio_dma_mapping_mmio_test` and
/// `vfio_pci_device_test`, unmodified, pass on both emulated devices in every IOMMU mode:
/// the two type1 modes, the two iommufd compat modes (`/dev/iommu` as the container) and
/// native iommufd (the device cdev bound to `/dev/iommu` and attached to an IOAS). The only
/// skips are the 1 GiB hugetlb variants (no 1 GiB pages are reserved on these machines). In
/// the three iommufd modes that is 24 cases a device, plus `vfio_pci_device_test`'s 5 in its
/// default (iommufd) mode: 53.
#[test]
fn the_kernels_vfio_selftests_pass_in_every_iommu_mode() {
    let Some(bin) = kselftests() else { return };
    ensure_hugepages(4);
    let iommufd_mode = |n: &str| n.contains(".iommufd");
    let mut iommufd_passes = 0;
    for dev in ["0000:00:04.0", "0000:00:05.0"] {
        for t in [
            "vfio_dma_mapping_test",
            "vfio_dma_mapping_mmio_test",
            "vfio_pci_device_test",
        ] {
            let trace = format!("kselftest-{t}-{dev}.jsonl").replace(':', "_");
            let (ok, out, _) = run_with(&bin.join(t), &[], &trace, &[("VFIO_SELFTESTS_BDF", dev)]);
            let results = tap_results(&out);
            assert!(!results.is_empty(), "{t} on {dev} ran no test:\n{out}");
            for (name, passed, skip) in &results {
                assert!(*passed, "{t} on {dev}: {name} failed:\n{out}");
                if let Some(why) = skip {
                    assert!(
                        name.contains("hugetlb_1gb"),
                        "{t} on {dev}: {name} skipped ({why}):\n{out}"
                    );
                }
            }
            assert!(ok, "{t} on {dev} exited with failure:\n{out}");
            // vfio_pci_device_test runs in its default mode, iommufd; the count of 53 takes
            // it on the first device.
            let counts = t != "vfio_pci_device_test" || dev == "0000:00:04.0";
            iommufd_passes += results
                .iter()
                .filter(|(n, _, skip)| {
                    counts && skip.is_none() && (iommufd_mode(n) || t == "vfio_pci_device_test")
                })
                .count();
        }
    }
    assert_eq!(iommufd_passes, 53, "cases passed in the iommufd modes");
}
