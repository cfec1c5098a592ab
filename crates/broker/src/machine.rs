//! [`Machine`]: what the emulation emulates (groups, devices, IOMMU units), from
//! `TYPE1_MACHINE` or the default. The broker builds its engine from it; the preload library
//! uses it to decide which paths are emulated (`/dev/vfio/N`, sysfs).

use std::collections::BTreeMap;
use std::ffi::CString;

use type1_core::Errno;
use type1_host::{sys, HostConfig, UnitConfig};
use type1_uapi::GroupSpec;

/// Where emulated PCI devices appear in sysfs.
pub const SYSFS_PCI: &str = "/sys/bus/pci/devices/";

/// `(group, device)` of the default machine.
pub const DEFAULT_DEVICES: [(u32, &str); 3] = [
    (0, "0000:00:04.0"),
    (1, "0000:00:05.0"),
    (2, "0000:00:06.0"),
];

/// The default machine's NVMe controller (group 2, behind the unit without snoop control).
pub const DEFAULT_NVME: &str = "0000:00:06.0";

/// One NVMe controller of the machine: its device and its namespace's file and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeSpec {
    /// Device name.
    pub device: String,
    /// The namespace's file.
    pub path: std::path::PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The machine the library emulates: groups with their devices, and the host platform's
/// IOMMU units.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Groups and their devices.
    pub groups: Vec<GroupSpec>,
    /// IOMMU units and the group → unit map.
    pub host: HostConfig,
    /// The devices that are NVMe controllers.
    pub nvme: Vec<NvmeSpec>,
}

impl Machine {
    /// The default machine: group 0 (coherent) with the DMA engine `0000:00:04.0`, group 1
    /// (no snoop control) with the DMA engine `0000:00:05.0`, group 2 (no snoop control) with
    /// the NVMe controller `0000:00:06.0`, whose 1 GiB namespace is
    /// [`crate::nvme::default_path`].
    pub fn default_machine() -> Machine {
        let mut host = HostConfig::default();
        host.groups.insert(2, 1);
        Machine {
            groups: DEFAULT_DEVICES
                .iter()
                .map(|(g, d)| GroupSpec {
                    id: *g,
                    devices: vec![d.to_string()],
                    emulated: Vec::new(),
                })
                .collect(),
            host,
            nvme: vec![NvmeSpec {
                device: DEFAULT_NVME.to_string(),
                path: crate::nvme::default_path(DEFAULT_NVME),
                bytes: type1_machine::DEFAULT_NVME_BYTES,
            }],
        }
    }

    /// The machine of a `type1-machine` description (`docs/machine.md`): its units (only
    /// `snoop_control` matters here) and groups with their device names, which become the
    /// devices' sysfs names and `VFIO_GROUP_GET_DEVICE_FD` names. Emulated (IOMMU-less)
    /// groups are not supported by the host platform.
    pub fn from_toml(text: &str) -> Result<Machine, String> {
        let desc = type1_machine::MachineDesc::from_toml_str(text)?;
        desc.validate()?;
        let index: BTreeMap<u32, usize> = desc
            .units
            .iter()
            .enumerate()
            .map(|(i, u)| (u.id, i))
            .collect();
        let units = desc
            .units
            .iter()
            .map(|u| UnitConfig {
                snoop_control: u.snoop_control,
            })
            .collect();
        let mut groups = Vec::new();
        let mut map = BTreeMap::new();
        for g in &desc.groups {
            let unit = match g.unit {
                Some(u) if !g.emulated => u,
                _ => {
                    return Err(format!(
                        "group {}: emulated groups are not supported here",
                        g.id
                    ))
                }
            };
            map.insert(g.id, index[&unit]);
            groups.push(GroupSpec {
                id: g.id,
                devices: g.devices.clone(),
                emulated: Vec::new(),
            });
        }
        let nvme = desc
            .nvme
            .iter()
            .map(|n| NvmeSpec {
                device: n.device.clone(),
                path: n
                    .path
                    .as_ref()
                    .map_or_else(|| crate::nvme::default_path(&n.device), Into::into),
                bytes: n.bytes(),
            })
            .collect();
        Ok(Machine {
            groups,
            host: HostConfig { units, groups: map },
            nvme,
        })
    }

    /// The group of device `name`.
    pub fn group_of(&self, name: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|g| g.devices.iter().any(|d| d == name))
            .map(|g| g.id)
    }

    /// The device names in the machine's order: device N has the cdev `vfioN`.
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .flat_map(|g| g.devices.iter().map(String::as_str))
    }

    /// Whether group `id` exists.
    pub fn has_group(&self, id: u32) -> bool {
        self.groups.iter().any(|g| g.id == id)
    }
}

/// Largest machine file read (a description is a few hundred bytes; `/dev/zero` is endless).
pub const MAX_FILE: usize = 1 << 20;

/// The contents of the file at `path`, read with raw system calls; EFBIG past [`MAX_FILE`].
pub fn read_file_raw(path: &[u8]) -> Result<String, Errno> {
    let c = CString::new(path).map_err(|_| Errno::EINVAL)?;
    // Never a FIFO or a device: opening one could block every program at library load.
    let fd = sys::open_regular_ro(&c)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let r = loop {
        match sys::pread(fd, &mut buf, out.len() as u64) {
            Ok(0) => break Ok(()),
            Ok(_) if out.len() >= MAX_FILE => break Err(Errno(libc::EFBIG)),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    sys::close(fd);
    r?;
    String::from_utf8(out).map_err(|_| Errno::EINVAL)
}

/// The machine named by `TYPE1_MACHINE` (read with raw system calls), or the default. `Err`
/// says what is wrong with the file.
pub fn from_env() -> Result<Machine, String> {
    from_path(std::env::var_os("TYPE1_MACHINE"))
}

/// The machine in the file at `path` (`TYPE1_MACHINE`), or the default without one.
pub fn from_path(path: Option<std::ffi::OsString>) -> Result<Machine, String> {
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = path else {
        return Ok(Machine::default_machine());
    };
    read_file_raw(path.as_bytes())
        .map_err(|e| match e.0 {
            libc::EINVAL => "not a regular file (a FIFO or a device is never read)".to_string(),
            _ => e.to_string(),
        })
        .and_then(|t| Machine::from_toml(&t))
        .map_err(|e| format!("TYPE1_MACHINE={}: {e}", path.to_string_lossy()))
}

/// A machine without groups (every group open is ENOENT).
pub fn empty() -> Machine {
    Machine {
        groups: Vec::new(),
        host: HostConfig {
            units: Vec::new(),
            groups: BTreeMap::new(),
        },
        nvme: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_and_huge_machine_files_get_a_clear_error() {
        let e = from_path(Some("/dev/zero".into())).unwrap_err();
        assert!(e.contains("TYPE1_MACHINE=/dev/zero"), "{e}");
        assert!(e.contains("not a regular file"), "{e}");
        let huge = std::env::temp_dir().join(format!("type1-huge-{}.toml", std::process::id()));
        std::fs::File::create(&huge)
            .and_then(|f| f.set_len(MAX_FILE as u64 * 4))
            .unwrap();
        let e = from_path(Some(huge.clone().into())).unwrap_err();
        let _ = std::fs::remove_file(&huge);
        assert!(e.contains(&Errno(libc::EFBIG).to_string()), "{e}");
        let mut text = String::from("[[unit]]\nid = 0\nops = 1\nsnoop_control = true\n");
        for g in 0..5000 {
            text.push_str(&format!(
                "[[group]]\nid = {g}\nunit = 0\ndevices = [\"d{g}\"]\n"
            ));
        }
        let e = Machine::from_toml(&text).unwrap_err();
        assert!(e.contains("5000 groups: at most 1024"), "{e}");
        let long = format!(
            "[[unit]]\nid = 0\nops = 1\nsnoop_control = true\n[[group]]\nid = 1\nunit = 0\ndevices = [\"{}\"]\n",
            "x".repeat(100)
        );
        assert!(Machine::from_toml(&long)
            .unwrap_err()
            .contains("at most 64"));
        let deep = format!("a = {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(
            Machine::from_toml(&deep).is_err(),
            "deep nesting is an error, not a crash"
        );
    }
}
