//! # type1-broker: one process that holds the emulated VFIO objects of every process
//!
//! In the kernel a container, a group or a device is one object, shared by every process
//! that holds its file: across `fork`, `exec` and `SCM_RIGHTS`. Group exclusivity (EBUSY)
//! holds across processes, and every mapping is pinned in the address space of the process
//! that made it. The LD_PRELOAD library (`type1-preload`) gets these semantics from this
//! broker: the broker runs the `type1-uapi`/`type1-core` engine for the whole emulated
//! machine (including RLIMIT_MEMLOCK's books), every emulated file is a socket whose peer it
//! watches for the last close, and memory work (pin, unpin, flush, user copies, and device DMA
//! the broker cannot do through its own duplicate of the pinning ring) is called back into the
//! process that owns the memory, which does it with its own `type1-host` platform.
//!
//! * [`wire`]: the messages;
//! * [`hub`]: the processes served, callbacks, and the engine's platform inside the broker;
//! * [`server`]: connections, requests, last-close collection, exit when unused;
//! * [`machine`]: the emulated machine's description (shared with the preload library);
//! * [`nvme`]: the files that back the namespaces of the machine's NVMe controllers.
//!
//! The executable (`type1-broker NAME`, `src/main.rs`, which a workspace build leaves next to
//! `libtype1_preload.so`) is started by the first process that needs it; see
//! `ARCHITECTURE.md` (Processes) for the design and its limits.

pub mod hub;
pub mod machine;
pub mod nvme;
pub mod server;
pub mod wire;

use std::sync::Arc;

/// How long an unused broker waits for a new connection before it exits.
const LINGER_MS: i32 = 1000;

/// The broker executable: `type1-broker NAME` serves the abstract socket `@NAME` for the
/// machine of `TYPE1_MACHINE` and the policy of `TYPE1_POLICY`. Exits at once (status 0) if
/// another broker already serves `NAME`; otherwise detaches and serves until unused.
pub fn main() -> ! {
    type1_host::sys::close_from(3);
    let Some(name) = std::env::args().nth(1) else {
        eprintln!("usage: type1-broker NAME");
        std::process::exit(2);
    };
    let machine = machine::from_env().unwrap_or_else(|e| {
        eprintln!("type1-broker: {e}");
        machine::empty()
    });
    let policy = std::env::var("TYPE1_POLICY").unwrap_or_else(|_| "seed".to_string());
    let cfg = server::BrokerConfig {
        groups: machine.groups,
        host: machine.host,
        nvme: machine.nvme,
        policy,
    };
    let listener = match type1_host::sock::listen_abstract(&name) {
        Ok(fd) => fd,
        Err(e) if e.0 == libc::EADDRINUSE => std::process::exit(0),
        Err(e) => {
            eprintln!("type1-broker: listen on @{name}: {e}");
            std::process::exit(1);
        }
    };
    let server = match server::Server::new(&cfg) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("type1-broker: TYPE1_POLICY={}: {e}", cfg.policy);
            std::process::exit(2);
        }
    };
    if let Err(e) = type1_host::sys::daemonize() {
        eprintln!("type1-broker: fork: {e}");
        std::process::exit(1);
    }
    let reaper = server.clone();
    std::thread::spawn(move || reaper.reap(LINGER_MS));
    let uid = type1_host::sys::getuid();
    loop {
        let fd = match type1_host::sock::accept(listener) {
            Ok(fd) => fd,
            Err(_) => {
                // Out of descriptors (or memory): wait for some to go rather than spin; the
                // connection waits in the queue meanwhile.
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
        };
        if server.connections() >= server::MAX_CONNS {
            // Past the cap the connection is closed at once: its process reports the broker
            // refusing it, rather than waiting on a thread that never comes.
            type1_host::sys::close(fd);
            continue;
        }
        // Only the user who owns the broker may use it (abstract sockets have no file mode).
        match type1_host::sock::peer_cred(fd) {
            Ok((_, u)) if u == uid => {}
            _ => {
                type1_host::sys::close(fd);
                continue;
            }
        }
        let s = server.clone();
        std::thread::spawn(move || s.serve(fd));
    }
}
