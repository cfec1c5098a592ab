//! Paths: what a path under `/dev/vfio` or the emulated sysfs stands for (`Kind`), and
//! the sysfs attributes of an emulated device. Shared by the open and stat families.

use super::*;

/// The sysfs attributes of an emulated device that can be read.
pub(super) const SYS_ATTRS: [&str; 5] = ["vendor", "device", "class", "revision", "config"];

/// The configuration space at reset of emulated device `bdf`: an NVMe controller's if the
/// machine makes it one, else the DMA engine's (docs/device.md).
pub(super) fn reset_config(bdf: &str) -> Vec<u8> {
    if state::machine().nvme.iter().any(|n| n.device == bdf) {
        type1_uapi::nvme::reset_config().to_vec()
    } else {
        type1_uapi::device::PciDevice::new().config_space()
    }
}

/// The contents of sysfs attribute `attr` of an emulated device whose configuration space at
/// reset is `c`, as the kernel prints them: the IDs in hexadecimal with a newline, `config`
/// the 256 bytes of the function's configuration space. The `config` file is a copy of the
/// reset state, not a live view of one device's registers (COMMAND, the MSI enable bits),
/// which only its owner's device fd gives.
pub(super) fn sys_attr(c: &[u8], attr: &str) -> Vec<u8> {
    let u16_at = |o: usize| u16::from_le_bytes([c[o], c[o + 1]]);
    match attr {
        "vendor" => format!("0x{:04x}\n", u16_at(0)).into_bytes(),
        "device" => format!("0x{:04x}\n", u16_at(2)).into_bytes(),
        "class" => format!("0x{:02x}{:02x}{:02x}\n", c[0x0b], c[0x0a], c[0x09]).into_bytes(),
        "revision" => format!("0x{:02x}\n", c[0x08]).into_bytes(),
        _ => c[..256.min(c.len())].to_vec(),
    }
}

/// Opens a sysfs attribute: a sealed-size memfd holding its contents, read-only (EACCES for
/// writing: none of these is writable to a user here).
pub(super) fn open_sys_attr(bdf: &str, attr: &str, flags: c_int) -> Result<c_int, Errno> {
    if flags & libc::O_ACCMODE != libc::O_RDONLY {
        return Err(Errno(libc::EACCES));
    }
    let fd = type1_host::sys::memfd(c"type1-sysfs", flags & libc::O_CLOEXEC != 0)?;
    let data = sys_attr(&reset_config(bdf), attr);
    if let Err(e) = type1_host::sys::pwrite(fd, &data, 0) {
        type1_host::sys::close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// Whether a path may name something emulated at all (cheap; most paths do not).
pub(super) fn may_be_ours(path: &[u8]) -> bool {
    path.windows(4)
        .any(|w| w == b"vfio" || w == b"/sys" || w == b"sys/" || w == b"iomm")
}

pub(super) fn classify(m: &Machine, path: &[u8]) -> Kind {
    if !may_be_ours(path) || path.first() != Some(&b'/') {
        return Kind::NotOurs;
    }
    let Ok(p) = std::str::from_utf8(path) else {
        return Kind::NotOurs;
    };
    let (norm, trailing) = crate::files::normalise(p);
    let p = norm.as_str();
    if p == "/dev/vfio" {
        return Kind::Dir;
    }
    if p == "/dev/iommu" {
        return if trailing { Kind::NotDir } else { Kind::Iommu };
    }
    if p == "/dev/vfio/devices" {
        return Kind::DevicesDir;
    }
    if let Some(rest) = p.strip_prefix("/dev/vfio/devices/") {
        return match rest
            .strip_prefix("vfio")
            .filter(|n| !n.starts_with('+') && !n.starts_with('0') || *n == "0")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|k| m.devices().nth(k).map(|d| (d.to_string(), k)))
        {
            Some(_) if trailing => Kind::NotDir,
            Some((d, k)) => Kind::Cdev(d, k),
            None => Kind::Missing,
        };
    }
    if let Some(rest) = p.strip_prefix("/dev/vfio/") {
        let k = if rest == "vfio" {
            Kind::Container
        } else {
            match rest.parse::<u32>() {
                Ok(n) if m.has_group(n) && !rest.starts_with('+') => Kind::Group(n),
                _ => return Kind::Missing,
            }
        };
        return if trailing { Kind::NotDir } else { k };
    }
    if let Some(rest) = p.strip_prefix(SYSFS_PCI) {
        let rest = rest.trim_end_matches('/');
        let (bdf, tail) = match rest.split_once('/') {
            Some((b, t)) => (b, Some(t)),
            None => (rest, None),
        };
        let Some(g) = m.group_of(bdf) else {
            return Kind::NotOurs;
        };
        let ordinal = || m.devices().position(|d| d == bdf).unwrap_or(0);
        return match tail {
            None => Kind::SysDev(bdf.to_string()),
            Some("iommu_group") => Kind::GroupLink(g),
            Some("vfio-dev") => Kind::VfioDevDir(bdf.to_string(), ordinal()),
            Some(t) if t.strip_prefix("vfio-dev/vfio") == Some(&ordinal().to_string()) => {
                Kind::SysDev(bdf.to_string())
            }
            Some(t) => match SYS_ATTRS.iter().find(|a| **a == t) {
                Some(a) => Kind::SysAttr(bdf.to_string(), a),
                None => Kind::Missing,
            },
        };
    }
    Kind::NotOurs
}

/// What `path` names relative to `dirfd` (`AT_FDCWD`: the working directory), as `openat`
/// resolves it.
pub(super) unsafe fn path_kind_at(dirfd: c_int, path: *const c_char) -> Kind {
    if path.is_null() {
        return Kind::NotOurs;
    }
    // SAFETY: a non-null path argument of an open/stat call is a NUL-terminated string.
    let p = unsafe { CStr::from_ptr(path) }.to_bytes();
    if p.first() == Some(&b'/') || p.is_empty() {
        return classify(state::machine(), p);
    }
    // A relative path: worth resolving only if it, or the directory, may be ours.
    let in_standin = dirfd >= 0
        && crate::files::have_standins()
        && crate::files::standin_of(dirfd) == Some(crate::files::Standin::Dir);
    if !in_standin && !may_be_ours(p) {
        return Kind::NotOurs;
    }
    let base = if in_standin {
        Some("/dev/vfio".to_string())
    } else if dirfd == libc::AT_FDCWD {
        type1_host::sys::cwd()
    } else {
        type1_host::sys::fd_path(dirfd)
    };
    let Some(base) = base else {
        return Kind::NotOurs;
    };
    let Ok(rel) = std::str::from_utf8(p) else {
        return Kind::NotOurs;
    };
    classify(state::machine(), format!("{base}/{rel}").as_bytes())
}

pub(super) unsafe fn path_kind(path: *const c_char) -> Kind {
    // SAFETY: forwarded contract of the caller.
    unsafe { path_kind_at(libc::AT_FDCWD, path) }
}
