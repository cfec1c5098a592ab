//! What the emulated files look like from outside: the `/dev/vfio` directory, path spelling,
//! `stat`/`fstat` answers and `O_PATH` opens, as the kernel's character devices give them.
//!
//! * **Paths** are normalised lexically before they are classified (`/dev/vfio//1`,
//!   `/dev/./vfio/../vfio/1`), relative ones against the working directory or the `openat`
//!   directory, so that every spelling the kernel accepts names the same file.
//! * **The directory**: `/dev/vfio` does not exist on a host without VFIO, so the emulation
//!   makes a private stand-in (a `0700` directory under `$XDG_RUNTIME_DIR` or `/tmp`, removed
//!   at exit) holding one empty file per name (`vfio`, the groups). `opendir("/dev/vfio")`,
//!   `open("/dev/vfio", O_DIRECTORY)` and `openat` relative to such a directory fd work on it,
//!   and `O_PATH` opens of `/dev/vfio/N` open the stand-in file: a handle, never a live
//!   object (no EBUSY, no release), as `O_PATH` never calls the driver's `open`.
//! * **stat**: the container is a character device `10:196` (`VFIO_MINOR`), mode 0666;
//!   group N is a character device `243:N`, mode 0600; a device fd from a group is an
//!   anonymous inode (mode 0600, no file type), as `anon_inode_getfile` makes it; a device's
//!   cdev `/dev/vfio/devices/vfioK`, by path or open, is a character device `242:K` (mode
//!   0600). An open cdev is known by its socket's identity, noted when this process opened
//!   it (and kept across `dup` and `fork`); one received otherwise (`SCM_RIGHTS`, across
//!   `exec`) shows as a group's device fd does.

use std::ffi::{CStr, CString};
use std::sync::Mutex;

use type1_core::Errno;
use type1_host::sys;
use type1_uapi::Object;

/// The misc device minor of `/dev/vfio/vfio` (`VFIO_MINOR`).
pub const VFIO_MINOR: u32 = 196;
/// The misc device minor `/dev/iommu` shows (the kernel's is dynamic; this is a typical one).
pub const IOMMU_MINOR: u32 = 123;
/// The character major the emulation gives group files (the kernel's is dynamic).
pub const GROUP_MAJOR: u32 = 243;
/// The character major the emulation gives device cdevs (the kernel's `vfio-dev` region is
/// dynamic too).
pub const CDEV_MAJOR: u32 = 242;

/// Open cdevs by the identity of their socket: (device, inode) -> K of `vfioK`.
static CDEVS: Mutex<Vec<((u64, u64), u32)>> = Mutex::new(Vec::new());

/// Notes that `fd`, just opened, is the cdev `vfioK`.
pub fn note_cdev(fd: i32, k: u32) {
    if let Ok((dev, ino, _)) = sys::fstat_id(fd) {
        let mut g = CDEVS.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|(id, _)| *id != (dev, ino));
        // Socket inode numbers only grow, so an old entry never names a new file; keep the
        // list short for a program that opens cdevs in a loop.
        if g.len() >= 1024 {
            g.remove(0);
        }
        g.push(((dev, ino), k));
    }
}

/// The K of the cdev `vfioK` that `fd` is, if this process opened it as one.
pub fn cdev_of(fd: i32) -> Option<u32> {
    let (dev, ino, _) = sys::fstat_id(fd).ok()?;
    let g = CDEVS.lock().unwrap_or_else(|p| p.into_inner());
    g.iter().find(|(id, _)| *id == (dev, ino)).map(|(_, k)| *k)
}

/// Lexical normal form of an absolute path: no empty, `.` or `..` components. Also whether it
/// ended with a slash.
pub fn normalise(path: &str) -> (String, bool) {
    let trailing = path.len() > 1 && path.ends_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    (format!("/{}", parts.join("/")), trailing)
}

/// What a stand-in file stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standin {
    /// `/dev/vfio`.
    Dir,
    /// `/dev/vfio/vfio`.
    Container,
    /// `/dev/vfio/N`.
    Group(u32),
    /// `/dev/iommu`.
    Iommu,
}

struct Dir {
    pid: i32,
    path: String,
    /// The `devices/` and `vfio-dev/` tree is made ([`standin_tree`]).
    tree: bool,
    /// `(dev, ino)` of the directory and of each file.
    ids: Vec<((u64, u64), Standin)>,
}

static DIR: Mutex<Option<Dir>> = Mutex::new(None);

fn id_of_path(p: &CStr) -> Option<(u64, u64)> {
    let fd = sys::open(p, libc::O_PATH | libc::O_CLOEXEC, 0).ok()?;
    let id = sys::fstat_id(fd).ok().map(|(d, i, _)| (d, i));
    sys::close(fd);
    id
}

fn make_dir(groups: &[u32]) -> Result<Dir, Errno> {
    let base = sys::secure_var("XDG_RUNTIME_DIR")
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| "/tmp".to_string());
    let pid = sys::getpid();
    // A fresh name; `mkdir` fails rather than follow anything already there.
    let mut path = String::new();
    for attempt in 0..16u32 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = format!("{base}/type1-dev-vfio.{pid}.{t:x}{attempt}");
        let c = CString::new(p.clone()).map_err(|_| Errno::EINVAL)?;
        if sys::mkdir(&c, 0o700).is_ok() {
            path = p;
            break;
        }
    }
    if path.is_empty() {
        return Err(Errno::EIO);
    }
    let c = CString::new(path.clone()).map_err(|_| Errno::EINVAL)?;
    let mut ids = vec![(id_of_path(&c).ok_or(Errno::EIO)?, Standin::Dir)];
    let names = [
        ("vfio".to_string(), Standin::Container),
        ("iommu".to_string(), Standin::Iommu),
    ]
    .into_iter()
    .chain(groups.iter().map(|g| (g.to_string(), Standin::Group(*g))));
    for (name, what) in names {
        let f = CString::new(format!("{path}/{name}")).map_err(|_| Errno::EINVAL)?;
        let fd = sys::open(
            &f,
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600,
        )?;
        let id = sys::fstat_id(fd).map(|(d, i, _)| (d, i));
        sys::close(fd);
        ids.push((id?, what));
    }
    Ok(Dir {
        pid,
        path,
        ids,
        tree: false,
    })
}

/// The stand-in directory's path, made on first use.
pub fn standin_dir(groups: &[u32]) -> Result<String, Errno> {
    let mut g = DIR.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = g.as_ref() {
        return Ok(d.path.clone());
    }
    let d = make_dir(groups)?;
    let p = d.path.clone();
    *g = Some(d);
    Ok(p)
}

/// The stand-in directory's path, with the tree that `/dev/vfio/devices` and the sysfs
/// `vfio-dev` directories stand in for made in it on first use: `devices/vfioK` files, and
/// `vfio-dev/K` directories each holding `vfioK`, for the machine's `n` devices.
pub fn standin_tree(groups: &[u32], n: usize) -> Result<String, Errno> {
    let dir = standin_dir(groups)?;
    let mut g = DIR.lock().unwrap_or_else(|p| p.into_inner());
    match g.as_mut() {
        Some(d) if !d.tree => {
            make_tree(&dir, n)?;
            d.tree = true;
        }
        _ => {}
    }
    Ok(dir)
}

fn make_tree(dir: &str, n: usize) -> Result<(), Errno> {
    let mk = |p: String| -> Result<(), Errno> {
        let c = CString::new(p).map_err(|_| Errno::EINVAL)?;
        match sys::mkdir(&c, 0o700) {
            Ok(()) => Ok(()),
            Err(e) if e.0 == libc::EEXIST => Ok(()),
            Err(e) => Err(e),
        }
    };
    let touch = |p: String| -> Result<(), Errno> {
        let c = CString::new(p).map_err(|_| Errno::EINVAL)?;
        let fd = sys::open(
            &c,
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600,
        )?;
        sys::close(fd);
        Ok(())
    };
    mk(format!("{dir}/devices"))?;
    mk(format!("{dir}/vfio-dev"))?;
    for k in 0..n {
        touch(format!("{dir}/devices/vfio{k}"))?;
        mk(format!("{dir}/vfio-dev/{k}"))?;
        touch(format!("{dir}/vfio-dev/{k}/vfio{k}"))?;
    }
    Ok(())
}

/// What the open file `fd` stands for, if it is one of this process's stand-ins.
pub fn standin_of(fd: i32) -> Option<Standin> {
    let g = DIR.lock().unwrap_or_else(|p| p.into_inner());
    let d = g.as_ref()?;
    let (dev, ino, _) = sys::fstat_id(fd).ok()?;
    d.ids
        .iter()
        .find(|(id, _)| *id == (dev, ino))
        .map(|(_, s)| *s)
}

/// The stand-ins' lock, held across `fork` (see `state::fork_prepare`).
pub(crate) fn fork_lock() -> std::sync::MutexGuard<'static, Option<impl Sized>> {
    DIR.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the stand-in directory exists (nothing to look up otherwise).
pub fn have_standins() -> bool {
    DIR.lock().map(|g| g.is_some()).unwrap_or(false)
}

/// Removes the stand-in directory (at exit, by the process that made it).
pub fn remove_standins() {
    let mut g = DIR.lock().unwrap_or_else(|p| p.into_inner());
    let Some(d) = g.take() else { return };
    if d.pid != sys::getpid() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(&d.path) else {
        return;
    };
    for e in entries.flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    let _ = std::fs::remove_dir(&d.path);
}

/// `(mode, rdev major, rdev minor)` of what a stand-in or an object is.
pub fn looks(what: Looks) -> (u32, u32, u32) {
    match what {
        Looks::Container => (libc::S_IFCHR | 0o666, 10, VFIO_MINOR),
        Looks::Group(n) => (libc::S_IFCHR | 0o600, GROUP_MAJOR, n),
        Looks::Device => (0o600, 0, 0),
        Looks::Iommu => (libc::S_IFCHR | 0o660, 10, IOMMU_MINOR),
        Looks::Cdev(k) => (libc::S_IFCHR | 0o600, CDEV_MAJOR, k),
        Looks::Dir => (libc::S_IFDIR | 0o755, 0, 0),
    }
}

/// The kinds of emulated file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Looks {
    /// `/dev/vfio/vfio`.
    Container,
    /// `/dev/vfio/N`.
    Group(u32),
    /// A device fd.
    Device,
    /// `/dev/vfio`.
    Dir,
    /// `/dev/iommu`.
    Iommu,
    /// `/dev/vfio/devices/vfioK`.
    Cdev(u32),
}

impl From<Object> for Looks {
    fn from(o: Object) -> Looks {
        match o {
            Object::Container(_) => Looks::Container,
            Object::Group(n) => Looks::Group(n),
            Object::Device(_) => Looks::Device,
            Object::Iommufd(_) => Looks::Iommu,
        }
    }
}

impl From<Standin> for Looks {
    fn from(s: Standin) -> Looks {
        match s {
            Standin::Dir => Looks::Dir,
            Standin::Container => Looks::Container,
            Standin::Group(n) => Looks::Group(n),
            Standin::Iommu => Looks::Iommu,
        }
    }
}

/// Rewrites a `stat` result (of the emulated file's socket, or of a stand-in) to look like
/// `what`.
pub fn patch_stat(st: &mut libc::stat, what: Looks) {
    let (mode, major, minor) = looks(what);
    st.st_mode = mode;
    st.st_rdev = libc::makedev(major, minor);
    if what != Looks::Dir {
        st.st_size = 0;
        st.st_nlink = 1;
    }
}

/// Rewrites a `statx` result likewise.
pub fn patch_statx(st: &mut libc::statx, what: Looks) {
    let (mode, major, minor) = looks(what);
    st.stx_mode = mode as u16;
    st.stx_rdev_major = major;
    st.stx_rdev_minor = minor;
    if what != Looks::Dir {
        st.stx_size = 0;
        st.stx_nlink = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_collapses_every_spelling() {
        assert_eq!(normalise("/dev/vfio//1"), ("/dev/vfio/1".into(), false));
        assert_eq!(
            normalise("/dev/vfio/../vfio/1"),
            ("/dev/vfio/1".into(), false)
        );
        assert_eq!(
            normalise("/dev/./vfio/./vfio"),
            ("/dev/vfio/vfio".into(), false)
        );
        assert_eq!(normalise("/../dev/vfio/1/"), ("/dev/vfio/1".into(), true));
        assert_eq!(normalise("/"), ("/".into(), false));
    }

    #[test]
    fn objects_look_like_the_kernels_files() {
        assert_eq!(looks(Looks::Container), (libc::S_IFCHR | 0o666, 10, 196));
        assert_eq!(
            looks(Looks::Group(3)),
            (libc::S_IFCHR | 0o600, GROUP_MAJOR, 3)
        );
        assert_eq!(looks(Looks::Device).0 & libc::S_IFMT, 0, "anonymous inode");
    }
}
