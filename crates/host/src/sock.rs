//! Unix-socket primitives for the emulation's broker and its clients (`type1-broker`,
//! `type1-preload`): sequenced-packet socket pairs and abstract listeners, messages carrying
//! file descriptors (`SCM_RIGHTS`), peer credentials and `poll`.
//!
//! Like [`crate::sys`], everything is a raw system call, so that the LD_PRELOAD library never
//! goes through its own hooks (`close`, `recvmsg`, ...) while it talks to the broker.

use type1_core::Errno;

use crate::sys::{check, errno};

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 4;

/// `socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)`: two connected ends.
pub fn seqpacket_pair() -> Result<(i32, i32), Errno> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid out-parameter for two descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_socketpair,
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    check(r)?;
    Ok((fds[0], fds[1]))
}

/// An abstract Unix address (`@name`, no file in any directory) and its length.
fn abstract_addr(name: &str) -> Result<(libc::sockaddr_un, u32), Errno> {
    // SAFETY: an all-zero sockaddr_un is a valid value of this plain C struct.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = name.as_bytes();
    if b.is_empty() || b.len() + 1 > a.sun_path.len() {
        return Err(Errno::EINVAL);
    }
    for (i, c) in b.iter().enumerate() {
        a.sun_path[i + 1] = *c as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + b.len();
    Ok((a, len as u32))
}

fn socket() -> Result<i32, Errno> {
    // SAFETY: socket has no memory-safety preconditions.
    let r = unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
        )
    };
    check(r).map(|fd| fd as i32)
}

/// A listening socket bound to the abstract address `@name`; EADDRINUSE if another process
/// listens there already.
pub fn listen_abstract(name: &str) -> Result<i32, Errno> {
    let fd = bind_abstract(name)?;
    // SAFETY: listen has no memory-safety preconditions.
    let r = unsafe { libc::syscall(libc::SYS_listen, fd, 128) };
    if let Err(e) = check(r) {
        crate::sys::close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// A seqpacket socket bound to the abstract name `@name`, not listening (EADDRINUSE when the
/// name is taken).
pub fn bind_abstract(name: &str) -> Result<i32, Errno> {
    let (a, len) = abstract_addr(name)?;
    let fd = socket()?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bind,
            fd,
            &a as *const libc::sockaddr_un,
            len as libc::socklen_t,
        )
    };
    if let Err(e) = check(r) {
        crate::sys::close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// A connection to the listener at `@name` (ECONNREFUSED when nobody listens).
pub fn connect_abstract(name: &str) -> Result<i32, Errno> {
    let (a, len) = abstract_addr(name)?;
    let fd = socket()?;
    if let Err(e) = connect_to(fd, &a, len) {
        crate::sys::close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// `connect(fd, a)`.
fn connect_to(fd: i32, a: &libc::sockaddr_un, len: u32) -> Result<(), Errno> {
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_connect,
            fd,
            a as *const libc::sockaddr_un,
            len as libc::socklen_t,
        )
    };
    check(r).map(|_| ())
}

/// [`connect_abstract`] that gives up after `timeout_ms` (ETIMEDOUT) when the listener's
/// queue is full and stays full, as a listener that never accepts leaves it: a connect never
/// blocks for longer. The socket is blocking again when it is returned.
pub fn connect_abstract_within(name: &str, timeout_ms: u64) -> Result<i32, Errno> {
    let (a, len) = abstract_addr(name)?;
    let fd = socket()?;
    let fail = |e: Errno| {
        crate::sys::close(fd);
        Err(e)
    };
    if let Err(e) = set_nonblocking(fd, true) {
        return fail(e);
    }
    let start = std::time::Instant::now();
    loop {
        match connect_to(fd, &a, len) {
            Ok(()) => break,
            // A full queue: wait for room, up to the deadline.
            Err(Errno(libc::EAGAIN)) | Err(Errno(libc::EINPROGRESS)) => {
                let left = (timeout_ms as u128).saturating_sub(start.elapsed().as_millis());
                if left == 0 {
                    return fail(Errno(libc::ETIMEDOUT));
                }
                let _ = poll(&[(fd, libc::POLLOUT)], (left as i32).min(50));
            }
            Err(Errno(libc::EISCONN)) => break,
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return fail(e),
        }
    }
    match set_nonblocking(fd, false) {
        Ok(()) => Ok(fd),
        Err(e) => fail(e),
    }
}

fn set_nonblocking(fd: i32, on: bool) -> Result<(), Errno> {
    // SAFETY: F_GETFL/F_SETFL only read and set the descriptor's flags.
    let flags = check(unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK as libc::c_long
    } else {
        flags & !(libc::O_NONBLOCK as libc::c_long)
    };
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFL, flags) }).map(|_| ())
}

/// A receive deadline on `fd` (`SO_RCVTIMEO`; 0: none): a receive that waits longer fails
/// with EAGAIN.
pub fn set_recv_timeout(fd: i32, ms: u64) -> Result<(), Errno> {
    let tv = libc::timeval {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_usec: ((ms % 1000) * 1000) as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval of its own size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setsockopt,
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    check(r).map(|_| ())
}

/// The processes of this user that hold a socket bound to the abstract name `name` (read from
/// `/proc/net/unix` and `/proc/*/fd`): who took a name, for an error message.
pub fn abstract_holders(name: &str) -> Vec<i32> {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let want = format!("@{name}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && f[7] == want).then(|| f[6].to_string())
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|f| {
            std::fs::read_link(f.path()).is_ok_and(|t| {
                let t = t.to_string_lossy();
                inodes.iter().any(|i| t == format!("socket:[{i}]"))
            })
        });
        if holds {
            out.push(pid);
        }
    }
    out
}

/// `accept4(fd, SOCK_CLOEXEC)`.
pub fn accept(fd: i32) -> Result<i32, Errno> {
    // SAFETY: null address arguments are allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_accept4,
            fd,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
            libc::SOCK_CLOEXEC,
        )
    };
    check(r).map(|fd| fd as i32)
}

/// `(pid, uid)` of the process at the other end of a connected socket (`SO_PEERCRED`).
pub fn peer_cred(fd: i32) -> Result<(i32, u32), Errno> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `c` and `len` are valid out-parameters of the right size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut c as *mut libc::ucred,
            &mut len as *mut libc::socklen_t,
        )
    };
    check(r)?;
    Ok((c.pid, c.uid))
}

/// Sends one message with `fds` attached (at most [`MAX_FDS`]).
pub fn send(fd: i32, data: &[u8], fds: &[i32]) -> Result<(), Errno> {
    if fds.len() > MAX_FDS {
        return Err(Errno::EINVAL);
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cbuf = [0u64; 8]; // aligned room for one cmsg of MAX_FDS ints
                              // SAFETY: an all-zero msghdr is a valid value of this plain C struct.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
        m.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        m.msg_controllen = space;
        // SAFETY: msg_control points to `space <= 64` writable, aligned bytes, so the first
        // header and its data fit.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c) as *mut i32, fds.len());
        }
    }
    loop {
        // SAFETY: `m` describes valid buffers for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sendmsg,
                fd,
                &m as *const libc::msghdr,
                libc::MSG_NOSIGNAL,
            )
        };
        match check(r) {
            Err(Errno(libc::EINTR)) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

/// Receives one message into `buf`: its length (0 at end of stream) and the descriptors it
/// carried, installed close-on-exec. EMSGSIZE if it did not fit (its fds are closed).
pub fn recv(fd: i32, buf: &mut [u8]) -> Result<(usize, Vec<i32>), Errno> {
    recv_flags(fd, buf, 0).map(|(n, fds, _)| (n, fds))
}

/// [`recv`] with extra `recvmsg` flags (`MSG_DONTWAIT`: EAGAIN when nothing is there yet), and
/// whether descriptors sent with the message were lost (`MSG_CTRUNC`: this process is at its
/// RLIMIT_NOFILE, so the kernel could not install them; they are closed).
pub fn recv_flags(fd: i32, buf: &mut [u8], flags: i32) -> Result<(usize, Vec<i32>, bool), Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: an all-zero msghdr is a valid value of this plain C struct.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    m.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: `m` describes valid buffers for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_recvmsg,
                fd,
                &mut m as *mut libc::msghdr,
                libc::MSG_CMSG_CLOEXEC | flags,
            )
        };
        match check(r) {
            Err(Errno(libc::EINTR)) => continue,
            Err(e) => return Err(e),
            Ok(n) => break n as usize,
        }
    };
    let fds = received_fds(&m);
    if m.msg_flags & libc::MSG_TRUNC != 0 {
        for f in fds {
            crate::sys::close(f);
        }
        return Err(Errno(libc::EMSGSIZE));
    }
    Ok((n, fds, m.msg_flags & libc::MSG_CTRUNC != 0))
}

/// The descriptors in a received message's `SCM_RIGHTS` headers.
pub fn received_fds(m: &libc::msghdr) -> Vec<i32> {
    let mut out = Vec::new();
    if m.msg_control.is_null() || m.msg_controllen == 0 {
        return out;
    }
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of well-formed
    // headers; the CMSG_* walkers stay inside them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const i32;
                let n = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<i32>();
                for i in 0..n {
                    out.push(std::ptr::read_unaligned(data.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    out
}

/// `poll` on `fds` (`(fd, events)`) for up to `timeout_ms` (-1: no limit); the `revents` of
/// each, in order. EINTR is retried.
pub fn poll(fds: &[(i32, i16)], timeout_ms: i32) -> Result<Vec<i16>, Errno> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `p` is a valid array of `p.len()` pollfd structs.
        let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = errno();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        return Ok(p.iter().map(|x| x.revents).collect());
    }
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: i32, on: bool) -> Result<(), Errno> {
    let v = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD only changes the descriptor's flags.
    let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFD, v) };
    check(r).map(|_| ())
}

/// Whether `fd` is a socket, and its inode (`fstat`).
pub fn socket_inode(fd: i32) -> Option<u64> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-parameter for fstat.
    let r = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    (r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some(st.st_ino)
}

/// `shutdown(fd, SHUT_WR)`: the other end reads end-of-file at once, and still sees this
/// end's hang-up only when it is closed.
pub fn shutdown_write(fd: i32) -> Result<(), Errno> {
    // SAFETY: shutdown has no memory-safety preconditions.
    let r = unsafe { libc::syscall(libc::SYS_shutdown, fd, libc::SHUT_WR) };
    check(r).map(|_| ())
}
