//! Readers of this process's `/proc` files: `status` fields and the file mappings listed in
//! `maps`. The files are read with the raw calls of [`crate::sys`], never libc's.

use crate::sys::{close, fstat_id, open_ro, pread};

/// A `kB` field of `/proc/self/status` (`VmLck`, `VmPin`, `VmRSS`, ...).
pub fn status_kb(field: &str) -> Option<u64> {
    let fd = open_ro(c"/proc/self/status").ok()?;
    let mut buf = vec![0u8; 16384];
    let n = pread(fd, &mut buf, 0).unwrap_or(0);
    close(fd);
    let text = String::from_utf8_lossy(&buf[..n]);
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The ranges of this process's address space that map bytes `[from, to)` of the file that
/// `fd` refers to (read from `/proc/self/maps`): `(vaddr, len)`, page-aligned.
pub fn file_mappings(fd: i32, from: u64, to: u64) -> Vec<(u64, u64)> {
    let Ok((dev, ino, _)) = fstat_id(fd) else {
        return Vec::new();
    };
    let (major, minor) = (
        ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
        (dev & 0xff) | ((dev >> 12) & !0xff),
    );
    let Ok(mfd) = open_ro(c"/proc/self/maps") else {
        return Vec::new();
    };
    let mut text = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = pread(mfd, &mut buf, text.len() as u64) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    close(mfd);
    let from = from & !4095;
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&text).lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(_perms), Some(off), Some(devs), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let hex = |s: &str| u64::from_str_radix(s, 16).ok();
        let (Some((s, e)), Some(off), Some((ma, mi)), Ok(i)) = (
            range
                .split_once('-')
                .and_then(|(a, b)| Some((hex(a)?, hex(b)?))),
            hex(off),
            devs.split_once(':')
                .and_then(|(a, b)| Some((hex(a)?, hex(b)?))),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        if i != ino || ma != major || mi != minor {
            continue;
        }
        let (lo, hi) = (from.max(off), to.min(off + (e - s)));
        if lo < hi {
            let start = s + (lo - off);
            out.push((start, (hi - lo).div_ceil(4096) * 4096));
        }
    }
    out
}
