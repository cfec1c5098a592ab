//! [`TraceFile`]: the JSON-lines trace of one process, valid across fork and exec.
//!
//! `TYPE1_TRACE=PATH` names the trace of a whole run, which may be a tree of processes. Every
//! process writes its own file, so that each file has exactly one writer and its `seq` numbers
//! are unique, and every line carries the writer's `pid`:
//! * the first process of the run (no `TYPE1_TRACE_WRITER` in its environment) writes `PATH`,
//!   created afresh;
//! * a process whose environment names *another* writer (a forked child, or a program it
//!   exec'd) writes `PATH.<pid>`, created afresh;
//! * a process whose environment names *itself* (it exec'd its own image, as QEMU's live
//!   update does) appends to the file it was writing, with `seq` continuing.
//!
//! The writer records `TYPE1_TRACE_WRITER=<pid>:<file>` in its environment when it starts,
//! so that what it execs knows. Files are created mode 0600 with `O_NOFOLLOW`, and written only
//! if they are regular files of this user (see `open`).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use type1_core::Errno;

use crate::{fds, sys};

const WRITER: &str = "TYPE1_TRACE_WRITER";

/// The trace file this process writes. See the module documentation.
#[derive(Debug)]
pub struct TraceFile {
    base: OsString,
    fd: i32,
    pid: i32,
    seq: u64,
}

/// Opens a trace file for writing, safely in a directory other users can write to (`/tmp`):
/// never blocks in `open` (a FIFO there gets ENXIO rather than hanging the program), never
/// follows a last-component symlink, and writes only to a regular file this user owns, mode
/// 0600 (a file another user created first, for instance with mode 0666 to read the trace, is
/// refused with EPERM and the process writes no trace). The file is emptied only after those
/// checks.
fn open(path: &[u8], truncate: bool) -> Result<i32, Errno> {
    let c = CString::new(path).map_err(|_| Errno::EINVAL)?;
    let mut flags =
        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    if !truncate {
        flags |= libc::O_APPEND;
    }
    let fd = sys::open(&c, flags, 0o600)?;
    let checked = sys::fstat_mode(fd).and_then(|(mode, uid)| {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EINVAL);
        }
        if uid != sys::geteuid() {
            return Err(Errno(libc::EPERM));
        }
        if mode & 0o077 != 0 {
            sys::fchmod(fd, 0o600)?;
        }
        if truncate {
            sys::ftruncate(fd, 0)?;
        }
        Ok(())
    });
    if let Err(e) = checked {
        sys::close(fd);
        let _ = sys::write_all(
            2,
            format!(
                "type1: not writing the trace to {}: {e} (not a regular file of this user)\n",
                String::from_utf8_lossy(path)
            )
            .as_bytes(),
        );
        return Err(e);
    }
    Ok(crate::uring::move_high(fd))
}

/// Lines already in `path` (to continue `seq` after an exec of the same process).
fn lines_in(path: &[u8]) -> u64 {
    let Ok(c) = CString::new(path) else { return 0 };
    let Ok(fd) = sys::open_regular_ro(&c) else {
        return 0;
    };
    let (mut n, mut off, mut buf) = (0u64, 0u64, vec![0u8; 1 << 16]);
    while let Ok(got) = sys::pread(fd, &mut buf, off) {
        if got == 0 {
            break;
        }
        n += buf[..got].iter().filter(|b| **b == b'\n').count() as u64;
        off += got as u64;
    }
    sys::close(fd);
    n
}

fn set_writer(pid: i32, file: &[u8]) {
    let mut v = format!("{pid}:").into_bytes();
    v.extend_from_slice(file);
    let (Ok(k), Ok(v)) = (CString::new(WRITER), CString::new(v)) else {
        return;
    };
    // SAFETY: valid NUL-terminated strings. The emulation sets the variable once per process,
    // when it opens its trace (its first VFIO call, or a fork child's first event, when the
    // child has one thread); a program thread reading the environment at that very moment is
    // the one race left, as with any setenv.
    unsafe { libc::setenv(k.as_ptr(), v.as_ptr(), 1) };
}

impl TraceFile {
    /// The trace of this process for `TYPE1_TRACE=base` (see the module documentation).
    pub fn open(base: OsString) -> Result<TraceFile, Errno> {
        let pid = sys::getpid();
        let mine = std::env::var_os(WRITER).and_then(|w| {
            let w = w.into_vec();
            let colon = w.iter().position(|b| *b == b':')?;
            let p: i32 = std::str::from_utf8(&w[..colon]).ok()?.parse().ok()?;
            Some((p, w[colon + 1..].to_vec()))
        });
        let (file, truncate) = match mine {
            Some((p, file)) if p == pid => (file, false),
            Some(_) => (Self::child_path(&base, pid), true),
            None => (base.as_bytes().to_vec(), true),
        };
        let seq = if truncate { 0 } else { lines_in(&file) };
        let fd = open(&file, truncate)?;
        set_writer(pid, &file);
        Ok(TraceFile { base, fd, pid, seq })
    }

    fn child_path(base: &OsString, pid: i32) -> Vec<u8> {
        let mut p = base.as_bytes().to_vec();
        p.extend_from_slice(format!(".{pid}").as_bytes());
        p
    }

    /// Writes one event line (`{"seq":N,"pid":P,"ns":T,...}`), switching to this process's own file
    /// first if it is a forked child of the writer.
    pub fn write(&mut self, json_object: &str) {
        let pid = sys::getpid();
        if pid != self.pid {
            // A forked child: its events go to its own file; the parent's fd is left alone.
            let file = Self::child_path(&self.base, pid);
            fds::set_internal(self.fd, false); // the child's copy; it is closed below
            sys::close(self.fd);
            match open(&file, true) {
                Ok(fd) => {
                    self.fd = fd;
                    set_writer(pid, &file);
                }
                Err(_) => self.fd = -1,
            }
            self.pid = pid;
            self.seq = 0;
        }
        if self.fd < 0 {
            return;
        }
        self.seq += 1;
        // `ns`: when it happened, on the machine's monotonic clock; set by whoever made the
        // event (the broker), or now.
        let head = [("seq", self.seq), ("pid", pid as u64)];
        let mut line = if json_object.trim_start().starts_with("{\"ns\":") {
            type1_core::trace::json_line(&head, json_object)
        } else {
            let head = [head[0], head[1], ("ns", sys::monotonic_ns())];
            type1_core::trace::json_line(&head, json_object)
        };
        line.push('\n');
        let _ = sys::write_all(self.fd, line.as_bytes());
    }
}

impl Drop for TraceFile {
    fn drop(&mut self) {
        if self.fd >= 0 {
            sys::close(self.fd);
        }
    }
}
