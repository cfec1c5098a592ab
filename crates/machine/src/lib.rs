//! # type1-machine: machine descriptions
//!
//! Which IOMMU units, groups, devices, reserved and MMIO ranges a machine has, read from TOML
//! (format in `docs/machine.md`, default in `machines/default.toml`). The simulator
//! (`type1-sim`, which re-exports this crate as `type1_sim::machine`) builds a whole machine
//! from one; the emulation's broker (`type1-broker`) reads the same files for the groups,
//! devices and IOMMU units it emulates, without linking the simulator.
//!
//! Every field is validated by [`MachineDesc::validate`]; errors name the field and the value
//! (`group 3: unit = 7 does not exist`). Parse errors come from the `toml` crate and carry the
//! line and column.

use std::path::Path;

use serde::{Deserialize, Serialize};
use type1_core::{IovaRange, MemType, ResvKind, ResvRegion};

/// Default page-size bitmap of a unit: 4 KiB, 2 MiB and 1 GiB.
pub const DEFAULT_PGSIZES: u64 = (1 << 12) | (1 << 21) | (1 << 30);
/// Default last byte of a unit's aperture (48-bit IOVA space).
pub const DEFAULT_APERTURE_LAST: u64 = (1 << 48) - 1;
/// Default MSI window reserved by every unit (x86 interrupt range).
pub const MSI_WINDOW: IovaRange = IovaRange {
    start: 0xfee0_0000,
    last: 0xfeef_ffff,
};
/// Default number of RAM page frames (256 MiB; frame contents are allocated lazily).
pub const DEFAULT_MEMORY_FRAMES: u64 = 65536;
/// Largest accepted `memory_frames` (2 TiB of simulated RAM; the frame table, 40 bytes a frame,
/// must also fit in the memory the host has available, which `Sim::new` checks).
pub const MAX_MEMORY_FRAMES: u64 = 1 << 29;
/// Most IOMMU units, groups, devices (in all), MMIO ranges and reserved regions (per owner) a
/// machine may have: a description is configuration, and one from a hostile file must get a
/// clear error, not a run out of memory or time.
pub const MAX_ITEMS: usize = 1024;
/// Longest device name.
pub const MAX_NAME: usize = 64;
/// Highest pfn an MMIO range may reach (52-bit physical addresses).
pub const MAX_PFN: u64 = 1 << 40;

/// A whole machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineDesc {
    /// RAM size in 4 KiB frames; RAM pfns are `1..=memory_frames`.
    #[serde(default = "default_memory_frames")]
    pub memory_frames: u64,
    /// IOMMU units (`[[unit]]`).
    #[serde(default, rename = "unit", skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<UnitDesc>,
    /// IOMMU groups (`[[group]]`).
    #[serde(default, rename = "group", skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupDesc>,
    /// MMIO ranges outside RAM (`[[mmio]]`), e.g. device BARs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mmio: Vec<MmioDesc>,
    /// Transparent huge pages: anonymous memory is faulted in 2 MiB at a time where one
    /// region covers the aligned 2 MiB block and 512 aligned frames that were never used
    /// are left (so the IOMMU can take 2 MiB leaves); otherwise 4 KiB at a time.
    #[serde(default, skip_serializing_if = "is_false")]
    pub thp: bool,
    /// NVMe controllers (`[[nvme]]`): devices of the groups that are NVMe functions, with
    /// their namespaces. Under the emulation (`type1-broker`) such a device is an NVMe
    /// controller instead of the DMA engine; the simulator's devices do plain DMA either way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nvme: Vec<NvmeDesc>,
}

/// Default size of an NVMe namespace: 1 GiB.
pub const DEFAULT_NVME_BYTES: u64 = 1 << 30;
/// Largest NVMe namespace: 16 TiB.
pub const MAX_NVME_BYTES: u64 = 1 << 44;

/// One NVMe function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeDesc {
    /// The device (a name in some group's `devices`).
    pub device: String,
    /// The file that backs namespace 1, created sparse on first use; by default
    /// `$XDG_CACHE_HOME/type1/nvme-<device>.img` (or under `~/.cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Namespace size in bytes, a multiple of 4096 (default 1 GiB). A file that already
    /// exists keeps its size if it is larger.
    #[serde(default, with = "wide::opt", skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl NvmeDesc {
    /// The namespace size asked for.
    pub fn bytes(&self) -> u64 {
        self.size.unwrap_or(DEFAULT_NVME_BYTES)
    }
}

fn default_memory_frames() -> u64 {
    DEFAULT_MEMORY_FRAMES
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// 64-bit addresses in TOML, whose integers stop at 2^63 - 1: an integer, or a string in
/// decimal or `0x` hex for anything (`"0xffffffffffffffff"`, an aperture that ends at the top).
/// Written back as an integer when it fits, else as a hex string.
mod wide {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wide {
        Int(i64),
        Text(String),
    }

    fn parse<E: Error>(w: Wide) -> Result<u64, E> {
        match w {
            Wide::Int(i) => u64::try_from(i).map_err(|_| E::custom(format!("{i} is negative"))),
            Wide::Text(t) => {
                let t = t.trim().replace('_', "");
                let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => t.parse(),
                };
                r.map_err(|_| E::custom(format!("{t:?} is not a 64-bit number")))
            }
        }
    }

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(*v) {
            Ok(i) => s.serialize_i64(i),
            Err(_) => s.serialize_str(&format!("0x{v:x}")),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse(Wide::deserialize(d)?)
    }

    /// The same for an optional field.
    pub mod opt {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            Option::<super::Wide>::deserialize(d)?
                .map(super::parse)
                .transpose()
        }
    }
}

/// One IOMMU unit (a hardware IOMMU instance).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitDesc {
    /// Unit id, unique in the machine.
    pub id: u32,
    /// Driver identity ("ops"); units of the same driver share it.
    pub ops: u32,
    /// Whether the unit can force snooping (domains on it can enforce cache coherency).
    pub snoop_control: bool,
    /// First IOVA of the aperture (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "wide::opt")]
    pub aperture_start: Option<u64>,
    /// Last IOVA of the aperture, inclusive (default 2^48 - 1; up to 2^64 - 1, written as a
    /// string past 2^63 - 1).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "wide::opt")]
    pub aperture_last: Option<u64>,
    /// Page-size bitmap (default 4K | 2M | 1G).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "wide::opt")]
    pub pgsizes: Option<u64>,
    /// Whether interrupts are isolated (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msi_isolated: Option<bool>,
    /// Reserved regions reported for every group of the unit (default: the MSI window as a
    /// hardware MSI region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<Vec<ResvDesc>>,
}

impl UnitDesc {
    /// The unit's aperture.
    pub fn aperture(&self) -> IovaRange {
        IovaRange {
            start: self.aperture_start.unwrap_or(0),
            last: self.aperture_last.unwrap_or(DEFAULT_APERTURE_LAST),
        }
    }

    /// The unit's page-size bitmap.
    pub fn pgsize_bitmap(&self) -> u64 {
        self.pgsizes.unwrap_or(DEFAULT_PGSIZES)
    }

    /// The unit's reserved regions.
    pub fn reserved_regions(&self) -> Vec<ResvRegion> {
        match &self.reserved {
            Some(v) => v.iter().map(ResvDesc::region).collect(),
            None => vec![ResvRegion {
                range: MSI_WINDOW,
                kind: ResvKind::Msi,
            }],
        }
    }
}

/// One IOMMU group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDesc {
    /// Group id (`/dev/vfio/N`), unique in the machine.
    pub id: u32,
    /// The unit the group sits behind; absent for an emulated group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<u32>,
    /// The group has no IOMMU (mdev-style emulated devices).
    #[serde(default, skip_serializing_if = "is_false")]
    pub emulated: bool,
    /// Device names, unique in the machine.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Extra reserved regions of this group only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<ResvDesc>,
}

/// A reserved IOVA region in a description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResvDesc {
    /// First byte.
    #[serde(with = "wide")]
    pub start: u64,
    /// Last byte, inclusive.
    #[serde(with = "wide")]
    pub last: u64,
    /// Kind: `direct`, `direct_relaxable`, `reserved`, `sw_msi` or `msi`.
    pub kind: ResvKind,
}

impl ResvDesc {
    /// As the engine's type.
    pub fn region(&self) -> ResvRegion {
        ResvRegion {
            range: IovaRange {
                start: self.start,
                last: self.last,
            },
            kind: self.kind,
        }
    }
}

/// An MMIO range (reserved pfns, not RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioDesc {
    /// First pfn; must lie above RAM.
    pub base_pfn: u64,
    /// Number of pages.
    pub npages: u64,
    /// Host memory type: `wb`, `wt`, `wp`, `uc` or `wc`.
    pub memtype: MemType,
}

impl MmioDesc {
    /// Whether `pfn` lies in the range.
    pub fn contains(&self, pfn: u64) -> bool {
        pfn >= self.base_pfn && pfn - self.base_pfn < self.npages
    }
}

impl Default for MachineDesc {
    /// Two units of the same driver, one coherent (snoop control) and one not, a group behind
    /// each (`dev0`, `dev1`), an emulated group (`mdev0`), an uncached BAR and a WB BAR.
    fn default() -> Self {
        let unit = |id, snoop_control| UnitDesc {
            id,
            ops: 1,
            snoop_control,
            aperture_start: None,
            aperture_last: None,
            pgsizes: None,
            msi_isolated: None,
            reserved: None,
        };
        let group = |id, unit: Option<u32>, dev: &str| GroupDesc {
            id,
            unit,
            emulated: unit.is_none(),
            devices: vec![dev.to_string()],
            reserved: Vec::new(),
        };
        MachineDesc {
            memory_frames: DEFAULT_MEMORY_FRAMES,
            units: vec![unit(0, true), unit(1, false)],
            groups: vec![
                group(0, Some(0), "dev0"),
                group(1, Some(1), "dev1"),
                group(2, None, "mdev0"),
            ],
            mmio: vec![
                MmioDesc {
                    base_pfn: 0x10_0000,
                    npages: 16,
                    memtype: MemType::Uc,
                },
                MmioDesc {
                    base_pfn: 0x10_0100,
                    npages: 16,
                    memtype: MemType::Wb,
                },
            ],
            thp: false,
            nvme: Vec::new(),
        }
    }
}

impl MachineDesc {
    /// Parses and validates a TOML description.
    pub fn from_toml_str(s: &str) -> Result<MachineDesc, String> {
        let d: MachineDesc = toml::from_str(s).map_err(|e| format!("machine description: {e}"))?;
        d.validate()?;
        Ok(d)
    }

    /// Reads, parses and validates a TOML description file.
    pub fn load(path: impl AsRef<Path>) -> Result<MachineDesc, String> {
        let path = path.as_ref();
        let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        MachineDesc::from_toml_str(&s).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Renders the description as TOML.
    pub fn to_toml_string(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| format!("machine description: {e}"))
    }

    /// Whether `pfn` is a RAM frame of this machine.
    pub fn is_ram(&self, pfn: u64) -> bool {
        pfn >= 1 && pfn <= self.memory_frames
    }

    /// Checks every cross-field rule; the error names the offending field and value.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_frames == 0 || self.memory_frames > MAX_MEMORY_FRAMES {
            return Err(format!(
                "memory_frames = {} is outside 1..={MAX_MEMORY_FRAMES}",
                self.memory_frames
            ));
        }
        let devices: usize = self.groups.iter().map(|g| g.devices.len()).sum();
        for (what, n) in [
            ("units", self.units.len()),
            ("groups", self.groups.len()),
            ("devices", devices),
            ("mmio ranges", self.mmio.len()),
        ] {
            if n > MAX_ITEMS {
                return Err(format!("{n} {what}: at most {MAX_ITEMS}"));
            }
        }
        let check_resv = |owner: &str, v: &[ResvDesc]| -> Result<(), String> {
            if v.len() > MAX_ITEMS {
                return Err(format!(
                    "{owner}: {} reserved regions: at most {MAX_ITEMS}",
                    v.len()
                ));
            }
            for r in v {
                if r.start > r.last {
                    return Err(format!(
                        "{owner}: reserved region start 0x{:x} > last 0x{:x}",
                        r.start, r.last
                    ));
                }
            }
            Ok(())
        };
        for (i, u) in self.units.iter().enumerate() {
            if self.units[..i].iter().any(|o| o.id == u.id) {
                return Err(format!("unit id {} is duplicated", u.id));
            }
            let ap = u.aperture();
            if ap.start > ap.last {
                return Err(format!(
                    "unit {}: aperture_start 0x{:x} > aperture_last 0x{:x}",
                    u.id, ap.start, ap.last
                ));
            }
            if u.pgsize_bitmap() == 0 {
                return Err(format!("unit {}: pgsizes = 0 has no page size", u.id));
            }
            if let Some(r) = &u.reserved {
                check_resv(&format!("unit {}", u.id), r)?;
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, g) in self.groups.iter().enumerate() {
            if self.groups[..i].iter().any(|o| o.id == g.id) {
                return Err(format!("group id {} is duplicated", g.id));
            }
            match (g.unit, g.emulated) {
                (Some(u), true) => {
                    return Err(format!(
                        "group {}: emulated = true but unit = {u} is set",
                        g.id
                    ))
                }
                (None, false) => {
                    return Err(format!(
                        "group {}: unit is missing (set emulated = true for a group without IOMMU)",
                        g.id
                    ))
                }
                (Some(u), false) if !self.units.iter().any(|x| x.id == u) => {
                    return Err(format!("group {}: unit = {u} does not exist", g.id));
                }
                _ => {}
            }
            if g.emulated && !g.reserved.is_empty() {
                return Err(format!(
                    "group {}: reserved regions on an emulated group",
                    g.id
                ));
            }
            check_resv(&format!("group {}", g.id), &g.reserved)?;
            for d in &g.devices {
                if d.is_empty() {
                    return Err(format!("group {}: empty device name", g.id));
                }
                if d.len() > MAX_NAME {
                    return Err(format!(
                        "group {}: device name of {} bytes: at most {MAX_NAME}",
                        g.id,
                        d.len()
                    ));
                }
                if names.contains(&d.as_str()) {
                    return Err(format!("group {}: device name {d:?} is duplicated", g.id));
                }
                names.push(d);
            }
        }
        if self.nvme.len() > MAX_ITEMS {
            return Err(format!(
                "{} nvme controllers: at most {MAX_ITEMS}",
                self.nvme.len()
            ));
        }
        for (i, n) in self.nvme.iter().enumerate() {
            if !names.contains(&n.device.as_str()) {
                return Err(format!(
                    "nvme device = {:?} is not a device of any group",
                    n.device
                ));
            }
            if self.nvme[..i].iter().any(|o| o.device == n.device) {
                return Err(format!("nvme device = {:?} is duplicated", n.device));
            }
            let b = n.bytes();
            if b == 0 || b % 4096 != 0 || b > MAX_NVME_BYTES {
                return Err(format!(
                    "nvme {}: size = {b} is not a multiple of 4096 in 4096..={MAX_NVME_BYTES}",
                    n.device
                ));
            }
            if n.path
                .as_ref()
                .is_some_and(|p| p.is_empty() || p.contains('\0'))
            {
                return Err(format!("nvme {}: path is empty or holds a NUL", n.device));
            }
        }
        for (i, m) in self.mmio.iter().enumerate() {
            if m.npages == 0 {
                return Err(format!("mmio base_pfn 0x{:x}: npages = 0", m.base_pfn));
            }
            if m.base_pfn <= self.memory_frames {
                return Err(format!(
                    "mmio base_pfn 0x{:x} lies in RAM (pfns 1..={})",
                    m.base_pfn, self.memory_frames
                ));
            }
            if m.base_pfn.checked_add(m.npages).is_none_or(|e| e > MAX_PFN) {
                return Err(format!(
                    "mmio base_pfn 0x{:x} + npages 0x{:x} exceeds pfn 0x{MAX_PFN:x}",
                    m.base_pfn, m.npages
                ));
            }
            if let Some(o) = self.mmio[..i]
                .iter()
                .find(|o| o.base_pfn < m.base_pfn + m.npages && m.base_pfn < o.base_pfn + o.npages)
            {
                return Err(format!(
                    "mmio base_pfn 0x{:x} overlaps mmio base_pfn 0x{:x}",
                    m.base_pfn, o.base_pfn
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn apertures_reach_the_top_of_the_64_bit_space() {
        let text = "[[unit]]\nid = 0\nops = 1\nsnoop_control = false\n\
                    aperture_start = \"0x1000\"\naperture_last = \"0xffffffffffffffff\"\n\
                    [[group]]\nid = 1\nunit = 0\ndevices = [\"d\"]\n\
                    reserved = [{ start = \"0xfee00000\", last = 4277141503, kind = \"msi\" }]\n";
        let m = MachineDesc::from_toml_str(text).unwrap();
        assert_eq!(m.units[0].aperture().last, u64::MAX);
        assert_eq!(m.units[0].aperture().start, 0x1000);
        assert_eq!(m.groups[0].reserved[0].start, 0xfee0_0000);
        assert!(m.validate().is_ok());
        // Written back and read again, the top value survives (as a hex string).
        let again = MachineDesc::from_toml_str(&toml::to_string(&m).unwrap()).unwrap();
        assert_eq!(again, m);
        let bad = text.replace("0xffffffffffffffff", "0x1ffffffffffffffff");
        assert!(MachineDesc::from_toml_str(&bad)
            .unwrap_err()
            .contains("is not a 64-bit number"));
    }

    use super::*;

    #[test]
    fn default_round_trips_through_toml() {
        let d = MachineDesc::default();
        let s = d.to_toml_string().unwrap();
        assert_eq!(MachineDesc::from_toml_str(&s).unwrap(), d);
    }

    #[test]
    fn shipped_default_file_equals_default() {
        let s = include_str!("../../../machines/default.toml");
        assert_eq!(
            MachineDesc::from_toml_str(s).unwrap(),
            MachineDesc::default()
        );
    }

    #[test]
    fn nvme_entries_name_a_device_once_with_a_sane_size() {
        let base = "[[unit]]\nid = 0\nops = 1\nsnoop_control = false\n\
                    [[group]]\nid = 1\nunit = 0\ndevices = [\"d\"]\n";
        let ok = format!("{base}[[nvme]]\ndevice = \"d\"\nsize = 8192\n");
        let m = MachineDesc::from_toml_str(&ok).unwrap();
        assert!(m.validate().is_ok());
        assert_eq!(m.nvme[0].bytes(), 8192);
        let again = MachineDesc::from_toml_str(&toml::to_string(&m).unwrap()).unwrap();
        assert_eq!(again, m);
        for (bad, why) in [
            ("device = \"x\"", "is not a device of any group"),
            ("device = \"d\"\nsize = 1000", "size = 1000"),
            ("device = \"d\"\n[[nvme]]\ndevice = \"d\"", "duplicated"),
            ("device = \"d\"\npath = \"\"", "path is empty"),
        ] {
            let e = MachineDesc::from_toml_str(&format!("{base}[[nvme]]\n{bad}\n")).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn documented_example_parses() {
        let doc = include_str!("../../../docs/machine.md");
        let start = doc.find("```toml\n").unwrap() + 8;
        let len = doc[start..].find("```").unwrap();
        let d = MachineDesc::from_toml_str(&doc[start..start + len]).unwrap();
        assert_eq!(
            d.units[0].reserved_regions(),
            vec![ResvRegion {
                range: MSI_WINDOW,
                kind: ResvKind::Msi
            }]
        );
        assert!(d.groups[1].emulated);
        assert_eq!(d.nvme[0].device, "dev0");
        assert_eq!(d.nvme[0].bytes(), 1 << 30);
        assert!(d.validate().is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let e = MachineDesc::from_toml_str("[[group]]\nid = 1\nunit = 9\ndevices = [\"a\"]\n")
            .unwrap_err();
        assert!(e.contains("unit = 9"), "{e}");
        let e = MachineDesc::from_toml_str("memory_frames = -3\n").unwrap_err();
        assert!(e.contains("memory_frames"), "{e}");
        let e = MachineDesc::from_toml_str("bogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e =
            MachineDesc::from_toml_str("[[mmio]]\nbase_pfn = 5\nnpages = 1\nmemtype = \"uc\"\n")
                .unwrap_err();
        assert!(e.contains("base_pfn 0x5"), "{e}");
        let e = MachineDesc::from_toml_str(
            "[[mmio]]\nbase_pfn = 0x200000\nnpages = 1\nmemtype = \"xx\"\n",
        )
        .unwrap_err();
        assert!(e.contains("memtype") || e.contains("xx"), "{e}");
    }
}
