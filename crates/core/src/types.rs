//! Vocabulary shared by the engine, the platform seam and the platforms.
//!
//! Range convention (as in iommufd's `pages.c`): `last` is an inclusive bound and `end` an
//! exclusive one. IOVA ranges are `start..=last` because `u64::MAX` is a legal last byte;
//! `last + 1` may wrap and is never computed unchecked.

use serde::{Deserialize, Serialize};

/// Base page shift of the simulated and host CPU (4 KiB pages).
pub const PAGE_SHIFT: u32 = 12;
/// Base page size in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// `PAGE_MASK` in the kernel sense as a page-size bitmap: every power of two >= PAGE_SIZE.
pub const PAGE_MASK_BITMAP: u64 = !(PAGE_SIZE - 1);
/// Default `dma_entry_limit` module parameter (S3).
pub const DEFAULT_DMA_ENTRY_LIMIT: u32 = 65535;
/// Maximum pages per external pin call (P7) and pin batch capacity (P1) on 4 KiB pages.
pub const PIN_BATCH: usize = (PAGE_SIZE / 8) as usize;
/// Largest dirty bitmap in bytes, 2^28 (I3, U1).
pub const DIRTY_BITMAP_SIZE_MAX: u64 = 1 << 28;

/// DMA protection bits of a mapping (`VFIO_DMA_MAP_FLAG_READ`/`WRITE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prot {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

impl Prot {
    /// Read and write.
    pub const RW: Prot = Prot {
        read: true,
        write: true,
    };
    /// Read only.
    pub const RO: Prot = Prot {
        read: true,
        write: false,
    };
    /// Write only.
    pub const WO: Prot = Prot {
        read: false,
        write: true,
    };

    /// True if `self` grants nothing beyond `other`.
    pub fn is_subset_of(self, other: Prot) -> bool {
        (!self.read || other.read) && (!self.write || other.write)
    }
}

impl std::fmt::Display for Prot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.read, self.write) {
            (true, true) => "rw",
            (true, false) => "r",
            (false, true) => "w",
            (false, false) => "-",
        })
    }
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub u32);
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// An IOMMU group (`/dev/vfio/N`).
    GroupId
);
id_type!(
    /// A platform IOMMU domain handle.
    DomainId
);
id_type!(
    /// An address space (the kernel's `mm_struct`) of a process.
    MmId
);
id_type!(
    /// An emulated (mdev-style) device that uses external pins and registers `dma_unmap`.
    DeviceId
);

macro_rules! address_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub u64);
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "0x{:x}", self.0)
            }
        }
    };
}

address_type!(
    /// An I/O virtual address: what a device puts on the bus, translated by an IOMMU domain.
    Iova
);
address_type!(
    /// A physical (bus) address: what an IOMMU entry points at.
    Pa
);
address_type!(
    /// A virtual address in a task's address space: what a program maps and the platform pins.
    Vaddr
);

/// Host memory type of a page frame, as PAT/MTRR would report it (F9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemType {
    /// Write-back (ordinary RAM).
    Wb,
    /// Write-through.
    Wt,
    /// Write-protected.
    Wp,
    /// Uncached.
    Uc,
    /// Write-combining.
    Wc,
}

impl MemType {
    /// Whether the CPU may hold lines of such memory in its cache.
    pub fn is_cacheable(self) -> bool {
        matches!(self, MemType::Wb | MemType::Wt | MemType::Wp)
    }

    /// Parses `wb`, `wt`, `wp`, `uc` or `wc` (any case).
    pub fn parse(s: &str) -> Option<MemType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "wb" => MemType::Wb,
            "wt" => MemType::Wt,
            "wp" => MemType::Wp,
            "uc" => MemType::Uc,
            "wc" => MemType::Wc,
            _ => return None,
        })
    }
}

/// An inclusive IOVA range `start..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IovaRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub last: u64,
}

impl IovaRange {
    /// The full 64-bit space.
    pub const FULL: IovaRange = IovaRange {
        start: 0,
        last: u64::MAX,
    };

    /// A range from `start` and a non-zero `size`; `None` if it wraps past 2^64.
    pub fn from_size(start: u64, size: u64) -> Option<IovaRange> {
        let last = start.checked_add(size.checked_sub(1)?)?;
        Some(IovaRange { start, last })
    }

    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, o: &IovaRange) -> bool {
        self.start <= o.last && o.start <= self.last
    }

    /// Whether `o` lies inside `self`.
    pub fn contains(&self, o: &IovaRange) -> bool {
        self.start <= o.start && o.last <= self.last
    }
}

/// Kind of an IOMMU reserved region (`enum iommu_resv_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResvKind {
    /// Direct-mapped region that must stay identity mapped.
    Direct,
    /// Direct-mapped region that may be relaxed (ignored by type1, S8).
    DirectRelaxable,
    /// Reserved: never usable as IOVA.
    Reserved,
    /// Software-managed MSI window (needs an MSI cookie, A1 step 9).
    SwMsi,
    /// Hardware MSI window.
    Msi,
}

/// A reserved IOVA region of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResvRegion {
    /// The range.
    pub range: IovaRange,
    /// Its kind.
    pub kind: ResvKind,
}

/// Number of base pages in `bytes` (which must be page aligned).
pub fn pages(bytes: u64) -> u64 {
    bytes >> PAGE_SHIFT
}
