//! [`FileStore`]: the namespace of an emulated NVMe controller, a file the broker keeps (created
//! sparse on first use, durable across runs; a Flush command is `fdatasync`). The controller
//! itself is `type1_uapi::nvme`; the machine names the file (`[[nvme]]` in `docs/machine.md`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use type1_core::Errno;
use type1_host::sys;

/// A namespace backed by a file, opened (and created, and grown to its size) on first use.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    bytes: u64,
    /// The open file and its size in bytes, or why it could not be had.
    file: OnceLock<Result<(i32, u64), Errno>>,
}

/// Where a device's namespace lives by default: `$XDG_CACHE_HOME/type1/nvme-<device>.img`,
/// else under `$HOME/.cache`, else under `/tmp/type1-<uid>`.
pub fn default_path(device: &str) -> PathBuf {
    let file = format!("nvme-{device}.img");
    let abs = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(d) = abs(std::env::var_os("XDG_CACHE_HOME")) {
        return d.join("type1").join(file);
    }
    if let Some(h) = abs(std::env::var_os("HOME")) {
        return h.join(".cache/type1").join(file);
    }
    PathBuf::from(format!("/tmp/type1-{}", sys::getuid())).join(file)
}

fn cstr(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

impl FileStore {
    /// The namespace in `path`, of `bytes` bytes (a file that is larger keeps its size).
    pub fn new(path: PathBuf, bytes: u64) -> FileStore {
        FileStore {
            path,
            bytes,
            file: OnceLock::new(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> Result<(i32, u64), Errno> {
        // The directories up to the file, private to the user where they are made here.
        let mut made = PathBuf::new();
        if let Some(parent) = self.path.parent() {
            for c in parent.components() {
                made.push(c);
                match sys::mkdir(&cstr(&made)?, 0o700) {
                    Ok(()) => {}
                    Err(e) if e.0 == libc::EEXIST => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let fd = sys::open(
            &cstr(&self.path)?,
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600,
        )?;
        let size = match sys::fstat_id(fd) {
            Ok((_, _, s)) => s,
            Err(e) => {
                sys::close(fd);
                return Err(e);
            }
        };
        if size < self.bytes {
            if let Err(e) = sys::ftruncate(fd, self.bytes) {
                sys::close(fd);
                return Err(e);
            }
        }
        Ok((fd, size.max(self.bytes) / 4096 * 4096))
    }

    fn file(&self) -> Result<(i32, u64), Errno> {
        *self.file.get_or_init(|| {
            let r = self.open();
            if let Err(e) = &r {
                eprintln!(
                    "type1-broker: NVMe namespace {}: {e}; every I/O to it fails",
                    self.path.display()
                );
            }
            r
        })
    }
}

impl type1_uapi::nvme::BlockStore for FileStore {
    fn size(&self) -> u64 {
        self.file().map_or(self.bytes / 4096 * 4096, |(_, n)| n)
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let (fd, _) = self.file()?;
        let mut done = 0;
        while done < buf.len() {
            match sys::pread(fd, &mut buf[done..], off + done as u64)? {
                // Past the end of a file someone shortened: zeros, as a sparse hole reads.
                0 => {
                    buf[done..].fill(0);
                    break;
                }
                n => done += n,
            }
        }
        Ok(())
    }

    fn write_at(&self, off: u64, data: &[u8]) -> Result<(), Errno> {
        let (fd, _) = self.file()?;
        let mut done = 0;
        while done < data.len() {
            match sys::pwrite(fd, &data[done..], off + done as u64)? {
                0 => return Err(Errno::EIO),
                n => done += n,
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), Errno> {
        sys::fdatasync(self.file()?.0)
    }

    fn fd(&self) -> Option<i32> {
        self.file().ok().map(|(fd, _)| fd)
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        if let Some(Ok((fd, _))) = self.file.get() {
            sys::close(*fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use type1_uapi::nvme::BlockStore;

    #[test]
    fn a_namespace_file_is_made_sparse_and_keeps_its_data() {
        let dir = std::env::temp_dir().join(format!("type1-nvme-{}", std::process::id()));
        let path = dir.join("a/b/ns.img");
        {
            let s = FileStore::new(path.clone(), 1 << 20);
            assert_eq!(s.size(), 1 << 20);
            s.write_at(4096, b"hello").unwrap();
            s.flush().unwrap();
        }
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        {
            use std::os::unix::fs::MetadataExt;
            assert!(meta.blocks() * 512 < 1 << 20, "sparse");
        }
        let s = FileStore::new(path.clone(), 4096);
        assert_eq!(s.size(), 1 << 20, "a larger file keeps its size");
        let mut b = [0u8; 5];
        s.read_at(4096, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        drop(s);
        let bad = FileStore::new(PathBuf::from("/proc/no/such/dir/ns.img"), 4096);
        assert!(bad.read_at(0, &mut b).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
