//! The LD_PRELOAD library and the broker that a release `type1` carries (`build.rs`), written
//! out for one `type1 exec` run when no library lies next to the binary (an installed
//! `type1`). They go to a private directory of their own (mode 0700, a fresh name), which is
//! removed when the run ends; processes still running keep what they mapped.

use std::path::PathBuf;

#[cfg(type1_embedded)]
const LIBRARY: &[u8] = include_bytes!(env!("TYPE1_EMBED_LIBRARY"));
#[cfg(type1_embedded)]
const BROKER: &[u8] = include_bytes!(env!("TYPE1_EMBED_BROKER"));

/// The library and broker written out; the directory goes when this is dropped.
pub struct Unpacked {
    dir: PathBuf,
    /// `libtype1_preload.so`, with `type1-broker` next to it.
    pub library: PathBuf,
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes out the carried library and broker; `None` when this `type1` carries none (a debug
/// build, or one built with `TYPE1_EMBED=0`).
pub fn unpack() -> std::io::Result<Option<Unpacked>> {
    #[cfg(type1_embedded)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = type1_exec::private_dir(&std::env::temp_dir())?;
        let unpacked = Unpacked {
            library: dir.join(type1_exec::LIBRARY_NAME),
            dir,
        };
        for (name, bytes, mode) in [
            (type1_exec::LIBRARY_NAME, LIBRARY, 0o644),
            ("type1-broker", BROKER, 0o755),
        ] {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(unpacked.dir.join(name))?;
            std::io::Write::write_all(&mut f, bytes)?;
        }
        Ok(Some(unpacked))
    }
    #[cfg(not(type1_embedded))]
    {
        Ok(None)
    }
}
