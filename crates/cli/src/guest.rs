//! The small Linux guest of `scripts/guest.sh` (kernel and initramfs from Debian packages,
//! cached), which the qemu and nvme workloads of `type1 bench` boot.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

/// The guest of `scripts/guest.sh` (source tree only): `(kernel, initrd)`.
pub fn guest_image() -> Result<(String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/guest.sh");
    if !script.exists() {
        bail!("the qemu workload needs scripts/guest.sh (run type1 bench from the source tree)");
    }
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .context("cannot run scripts/guest.sh with bash")?;
    if !out.status.success() {
        bail!(
            "scripts/guest.sh failed (it needs apt-get and the Debian archive): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (k, i) = text
        .split_once(' ')
        .ok_or_else(|| anyhow!("scripts/guest.sh printed {text:?}"))?;
    Ok((k.to_string(), i.to_string()))
}
