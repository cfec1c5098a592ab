//! The checker's model: the bound, the machine, the alphabet of abstract actions, the
//! scenario operations each stands for, and the initial world.

use serde::Serialize;
use type1_core::Prot;
use type1_scenario::{
    parse::{ifd::IfdOp, Op},
    World,
};
use type1_sim::{AccessPoint, FaultPoint, MachineDesc, ViolationKind};

/// User virtual address of the checked process's buffer.
pub const VADDR: u64 = 0x7f00_0000_0000;

/// The scope of a check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bound {
    /// Maximum number of operations in a sequence.
    pub depth: usize,
    /// Groups of the default machine in the alphabet (at most 3: coherent, non-coherent, emulated).
    pub groups: u32,
    /// Mappings (from a fixed table, see [`mapping`]).
    pub mappings: usize,
    /// Pages of user memory.
    pub pages: u64,
    /// Include device DMA through every group (otherwise only the first two).
    pub dma_all_groups: bool,
    /// Also explore accesses in the middle of an operation ([`Action::Within`]): every
    /// operation that makes platform calls is tried, besides as it is, with one access before
    /// the first and right after each call that changes the machine (every point of
    /// `type1_sim::ACCESS_POINTS`), the access being any of [`inside_accesses`]: either
    /// device reading or writing any page of any mapping without snooping, or another thread
    /// loading or storing any page of the buffer. The access counts as a step, as it does
    /// between operations. The kernel holds `iommu->lock` during an ioctl; devices and vCPUs
    /// act whenever they like. Not explored: two accesses inside one operation, accesses
    /// inside the final close.
    pub dma_inside: bool,
    /// Count only what data shows (a stale read, an unflushed unpin), not the protocol checks
    /// on the order of flushes (`missing_map_flush`, `missing_unpin_flush`): with
    /// `dma_inside`, a policy that flushes too late must be caught by its consequences.
    pub content_only: bool,
    /// Explore iommufd instead of a type1 container ([`iommufd_setup`]): `/dev/iommu` with one
    /// IOAS, the devices of groups 0 (coherent IOMMU) and 1 (no snoop control) bound to it;
    /// attach and detach through automatic HWPTs, explicit HWPT alloc, attach and destroy,
    /// IOAS map, unmap and copy. Fills go one page per batch, so that a fill can fail between
    /// batches of a two-page mapping. The policy names the iommufd fill policy.
    pub iommufd: bool,
    /// The wide fault alphabet ([`WIDE_FAULTS`]) in place of "the 2nd IOMMU map call from
    /// now fails": the 1st or 2nd pin, the 1st accounting charge, the 1st attach, or the 1st
    /// or 2nd IOMMU map of the next operation that makes a fallible platform call fails
    /// (`fail POINT N next`). A failure lasts until that operation ends, whether it reached
    /// the armed call or not, so armed states do not pile up over later operations; arming
    /// just before the operation that meets it reaches what a lasting failure reaches.
    pub wide_faults: bool,
}

/// The faults of [`Bound::wide_faults`]: (platform point, which call of the next operation
/// that makes a fallible call fails).
pub const WIDE_FAULTS: [(FaultPoint, u64); 6] = [
    (FaultPoint::Pin, 1),
    (FaultPoint::Pin, 2),
    (FaultPoint::Account, 1),
    (FaultPoint::Attach, 1),
    (FaultPoint::IommuMap, 1),
    (FaultPoint::IommuMap, 2),
];

/// The protocol checks `content_only` leaves out.
pub const PROTOCOL_KINDS: [ViolationKind; 2] = [
    ViolationKind::MissingMapFlush,
    ViolationKind::MissingUnpinFlush,
];

impl Default for Bound {
    fn default() -> Self {
        Bound {
            depth: 6,
            groups: 3,
            mappings: 3,
            pages: 4,
            dma_all_groups: false,
            dma_inside: false,
            content_only: false,
            iommufd: false,
            wide_faults: false,
        }
    }
}

/// One abstract operation of the checker's alphabet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Action {
    /// Group joins the container (SET_IOMMU v2 follows when the container has no backend).
    Attach(u32),
    /// Group leaves.
    Detach(u32),
    /// MAP_DMA of mapping i.
    Map(usize),
    /// UNMAP_DMA of mapping i.
    Unmap(usize),
    /// UNMAP_DMA with ALL.
    UnmapAll,
    /// CPU store to page i.
    CpuWrite(u64),
    /// CPU load of page i (fills clean lines).
    CpuRead(u64),
    /// No-snoop DMA read of mapping m by the device of group g.
    DmaRead(u32, usize),
    /// No-snoop DMA write of mapping m by the device of group g.
    DmaWrite(u32, usize),
    /// The 2nd IOMMU map call from now fails (exercises MAP and replay unwinds).
    FailMap2,
    /// Fault k of [`WIDE_FAULTS`] is armed for the next operation.
    Fail(u8),
    /// iommufd: the device of group g attaches to the IOAS (an automatic HWPT).
    AttachIoas(u32),
    /// iommufd: the device of group g detaches.
    DetachPt(u32),
    /// iommufd: `IOMMU_HWPT_ALLOC` of HWPT k for the device of group 1 (no snoop control).
    HwptAlloc(u8),
    /// iommufd: the device of group 1 attaches to HWPT k.
    AttachHwpt(u8),
    /// iommufd: `IOMMU_DESTROY` of HWPT k.
    HwptDestroy(u8),
    /// iommufd: `IOMMU_IOAS_COPY` of mapping m to its copy IOVA ([`copy_iova`]).
    Copy(usize),
    /// iommufd: `IOMMU_IOAS_UNMAP` of mapping m's copy.
    UnmapCopy(usize),
    /// Inside the operation that follows it in a sequence, right after the jth call of any
    /// access point (0: before the first), the access happens. A step of its own, as an
    /// access between operations is; the search puts it only in front of an operation
    /// ([`Bound::dma_inside`]).
    Within(u16, Inside),
}

/// An access inside an operation ([`Action::Within`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Inside {
    /// The device of group g reads (or with `write`, writes) page i of mapping m without
    /// snooping.
    Dma {
        /// Group of the device.
        group: u32,
        /// Mapping.
        mapping: usize,
        /// Page of the mapping.
        page: u64,
        /// Device to memory.
        write: bool,
    },
    /// Another thread (or a speculative prefetch) loads page p (clean lines), or stores to its
    /// first line (a dirty line).
    Cpu {
        /// Page of the buffer.
        page: u64,
        /// Store rather than load.
        write: bool,
    },
}

/// Every access [`Bound::dma_inside`] tries inside an operation: reads and writes by the
/// device of each group that DMA steps use, of every page of every mapping; loads and stores
/// of every page of the buffer.
pub fn inside_accesses(bound: &Bound) -> Vec<Inside> {
    let mut v = Vec::new();
    for group in 0..dma_groups(bound) {
        for mapping in 0..bound.mappings {
            for page in 0..self::mapping(mapping).2 {
                for write in [false, true] {
                    v.push(Inside::Dma {
                        group,
                        mapping,
                        page,
                        write,
                    });
                }
            }
        }
    }
    for page in 0..bound.pages {
        for write in [false, true] {
            v.push(Inside::Cpu { page, write });
        }
    }
    v
}

/// Groups whose devices DMA in the alphabet.
fn dma_groups(bound: &Bound) -> u32 {
    if bound.dma_all_groups {
        bound.groups
    } else {
        bound.groups.min(2)
    }
}

/// Whether an action is an access (CPU or device) rather than a call into the engine or a
/// fault: accesses make no platform call, so nothing happens inside them.
pub fn is_access(a: Action) -> bool {
    matches!(
        a,
        Action::CpuWrite(_)
            | Action::CpuRead(_)
            | Action::DmaRead(..)
            | Action::DmaWrite(..)
            | Action::Within(..)
    )
}

/// Mapping i: (iova, vaddr offset in pages, npages). Mapping 1 is read-only.
pub fn mapping(i: usize) -> (u64, u64, u64) {
    match i {
        0 => (0x0, 0, 2),
        1 => (0x2000, 2, 1),
        2 => (0x10_0000, 3, 1),
        n => (0x20_0000 + n as u64 * 0x1000, (n as u64) % 4, 1),
    }
}

/// The machine of the check: the default machine (group 0 behind a coherent IOMMU with
/// `dev0`, group 1 behind one without snoop control with `dev1`, group 2 emulated with `mdev0`),
/// with little memory so that states are cheap to copy. Frames are handed out in the same
/// order as on the default machine, so counterexamples replay with `machine default`.
pub fn machine(_bound: &Bound) -> MachineDesc {
    MachineDesc {
        memory_frames: 64,
        ..MachineDesc::default()
    }
}

/// Where mapping m's `IOAS_COPY` goes in the iommufd alphabet.
pub fn copy_iova(m: usize) -> u64 {
    0x4000_0000 + mapping(m).0
}

/// HWPTs the iommufd alphabet allocates at most.
pub const HWPTS: u8 = 2;

/// The alphabet for a bound.
pub fn alphabet(bound: &Bound) -> Vec<Action> {
    let mut v = Vec::new();
    if bound.iommufd {
        // Group 2's device is an emulated one, with no IOMMU behind it: not for a cdev.
        for g in 0..bound.groups.min(2) {
            v.push(Action::AttachIoas(g));
            v.push(Action::DetachPt(g));
        }
        for k in 0..HWPTS {
            v.push(Action::HwptAlloc(k));
            v.push(Action::AttachHwpt(k));
            v.push(Action::HwptDestroy(k));
        }
    } else {
        for g in 0..bound.groups {
            v.push(Action::Attach(g));
            v.push(Action::Detach(g));
        }
    }
    for m in 0..bound.mappings {
        v.push(Action::Map(m));
        v.push(Action::Unmap(m));
        if bound.iommufd {
            v.push(Action::Copy(m));
            v.push(Action::UnmapCopy(m));
        }
    }
    v.push(Action::UnmapAll);
    for p in 0..bound.pages {
        v.push(Action::CpuWrite(p));
    }
    v.push(Action::CpuRead(0));
    for g in 0..dma_groups(bound) {
        for m in 0..bound.mappings {
            v.push(Action::DmaRead(g, m));
            v.push(Action::DmaWrite(g, m));
        }
    }
    if bound.wide_faults {
        v.extend((0..WIDE_FAULTS.len() as u8).map(Action::Fail));
    } else {
        v.push(Action::FailMap2);
    }
    v
}

pub(crate) fn dev(g: u32) -> String {
    if g == 2 {
        "mdev0".into()
    } else {
        format!("dev{g}")
    }
}

/// The scenario operations an action stands for, given the current world.
pub fn ops_of(a: Action, w: &World) -> Vec<Op> {
    let c = || "c".to_string();
    // The iommufd world is the one with an IOAS named `a` ([`iommufd_setup`]).
    let ifd = w.ifd_object("a").is_some();
    let ioas = || "a".to_string();
    let hwpt = |k: u8| format!("h{k}");
    let ifd_op = |x: IfdOp| vec![Op::Iommufd(x)];
    match a {
        Action::Attach(g) => {
            let mut v = vec![Op::Attach {
                container: c(),
                group: g,
            }];
            if !w.container("c").is_some_and(|c| c.is_set()) {
                v.push(Op::SetIommu {
                    container: c(),
                    kind: 3,
                });
            }
            v
        }
        Action::Detach(g) => vec![Op::Detach {
            container: c(),
            group: g,
        }],
        Action::Map(m) if ifd => {
            let (iova, off, n) = mapping(m);
            ifd_op(IfdOp::Map {
                ioas: ioas(),
                iova,
                vaddr: VADDR + off * 4096,
                size: n * 4096,
                prot: if m == 1 { Prot::RO } else { Prot::RW },
            })
        }
        Action::Unmap(m) if ifd => {
            let (iova, _, n) = mapping(m);
            ifd_op(IfdOp::Unmap {
                ioas: ioas(),
                iova,
                size: n * 4096,
            })
        }
        Action::UnmapAll if ifd => ifd_op(IfdOp::Unmap {
            ioas: ioas(),
            iova: 0,
            size: u64::MAX,
        }),
        Action::Copy(m) => {
            let (iova, _, n) = mapping(m);
            ifd_op(IfdOp::Copy {
                dst: ioas(),
                dst_iova: copy_iova(m),
                src: ioas(),
                src_iova: iova,
                size: n * 4096,
                prot: if m == 1 { Prot::RO } else { Prot::RW },
            })
        }
        Action::UnmapCopy(m) => ifd_op(IfdOp::Unmap {
            ioas: ioas(),
            iova: copy_iova(m),
            size: mapping(m).2 * 4096,
        }),
        Action::AttachIoas(g) => ifd_op(IfdOp::AttachPt {
            device: dev(g),
            pt: ioas(),
        }),
        Action::DetachPt(g) => ifd_op(IfdOp::DetachPt { device: dev(g) }),
        // A name in use (or not in use) makes the line a usage error: no operation.
        Action::HwptAlloc(k) if w.ifd_object(&hwpt(k)).is_none() => ifd_op(IfdOp::Hwpt {
            name: hwpt(k),
            device: dev(1),
            ioas: ioas(),
        }),
        Action::AttachHwpt(k) if w.ifd_object(&hwpt(k)).is_some() => ifd_op(IfdOp::AttachPt {
            device: dev(1),
            pt: hwpt(k),
        }),
        Action::HwptDestroy(k) if w.ifd_object(&hwpt(k)).is_some() => {
            ifd_op(IfdOp::Destroy { obj: hwpt(k) })
        }
        Action::HwptAlloc(_) | Action::AttachHwpt(_) | Action::HwptDestroy(_) => vec![],
        Action::Fail(k) => {
            let (point, nth) = WIDE_FAULTS[k as usize];
            vec![Op::Fail {
                point,
                nth,
                next: true,
            }]
        }
        Action::Map(m) => {
            let (iova, off, n) = mapping(m);
            // Mapping 1 is read-only for the device: it exercises prot checks and lets policies
            // that reason about device writes (seed-ro) differ from seed.
            let flags = if m == 1 { 1 } else { 3 };
            vec![Op::Map {
                container: c(),
                iova,
                vaddr: VADDR + off * 4096,
                size: n * 4096,
                flags,
            }]
        }
        Action::Unmap(m) => {
            let (iova, _, n) = mapping(m);
            vec![Op::Unmap {
                container: c(),
                iova,
                size: n * 4096,
                flags: 0,
            }]
        }
        Action::UnmapAll => vec![Op::Unmap {
            container: c(),
            iova: 0,
            size: 0,
            flags: 2,
        }],
        Action::CpuWrite(p) => vec![Op::CpuWrite {
            vaddr: VADDR + p * 4096,
            data: vec![cpu_byte(p); 64],
        }],
        Action::CpuRead(p) => vec![Op::CpuRead {
            vaddr: VADDR + p * 4096,
            len: 4096,
        }],
        Action::DmaRead(g, m) => {
            let (iova, _, n) = mapping(m);
            vec![Op::Dma {
                device: dev(g),
                write: None,
                iova,
                len: n * 4096,
                no_snoop: true,
            }]
        }
        Action::DmaWrite(g, m) => {
            let (iova, _, n) = mapping(m);
            vec![Op::Dma {
                device: dev(g),
                write: Some(dma_byte(g)),
                iova,
                len: n * 4096,
                no_snoop: true,
            }]
        }
        Action::FailMap2 => vec![Op::Fail {
            point: FaultPoint::IommuMap,
            nth: 2,
            next: false,
        }],
        // Before the first call: the access itself, as its step would make it.
        Action::Within(0, Inside::Cpu { page, write: true }) => ops_of(Action::CpuWrite(page), w),
        Action::Within(0, Inside::Cpu { page, write: false }) => ops_of(Action::CpuRead(page), w),
        Action::Within(
            0,
            Inside::Dma {
                group,
                mapping: m,
                page,
                write,
            },
        ) => vec![Op::Dma {
            device: dev(group),
            write: write.then_some(dma_byte(group)),
            iova: mapping(m).0 + page * 4096,
            len: 4096,
            no_snoop: true,
        }],
        Action::Within(j, x) => vec![match x {
            Inside::Dma {
                group,
                mapping: m,
                page,
                write,
            } => Op::DmaAfter {
                point: AccessPoint::Any,
                nth: j.into(),
                device: dev(group),
                write,
                iova: mapping(m).0 + page * 4096,
                len: 4096,
                byte: dma_byte(group),
            },
            Inside::Cpu { page, write } => Op::CpuAfter {
                point: AccessPoint::Any,
                nth: j.into(),
                write,
                vaddr: VADDR + page * 4096,
                len: if write { 64 } else { 4096 },
                byte: cpu_byte(page),
            },
        }],
    }
}

/// What a DMA write by the device of group `g` stores, between operations or inside one: the
/// same bytes, so that an access inside an operation that lands where one between operations
/// would reaches the same state.
fn dma_byte(g: u32) -> u8 {
    0xa0 + g as u8
}

/// What a CPU store to page `p` stores, between operations or inside one (as [`dma_byte`]).
fn cpu_byte(p: u64) -> u8 {
    0x10 + p as u8
}

/// The iommufd setup lines, after the process and its buffer: `/dev/iommu` with the checked
/// fill policy and one page per fill batch, IOAS `a`, and the devices of groups 0 and 1 bound.
pub fn iommufd_setup(policy: &str) -> String {
    format!("iommufd i policy={policy} batch=1\nioas a i\nbind dev0 i\nbind dev1 i\n")
}

/// The operations that make the initial world: process `vmm` with its buffer, then an empty
/// container `c` (type1) or [`iommufd_setup`].
pub fn setup_ops(bound: &Bound, policy: &str) -> Result<Vec<Op>, String> {
    let mut v = vec![
        Op::Process {
            name: "vmm".into(),
            limit: None,
            cap_ipc_lock: false,
        },
        Op::Mmap {
            vaddr: VADDR,
            len: bound.pages * 4096,
            writable: true,
            mmio: None,
        },
    ];
    if bound.iommufd {
        let steps = type1_scenario::parse::parse(&iommufd_setup(policy))
            .map_err(|e| format!("iommufd policy {policy:?}: {}", e.msg))?;
        v.extend(steps.into_iter().map(|s| s.op));
    } else {
        v.push(Op::Container("c".into()));
    }
    Ok(v)
}

/// The initial world ([`setup_ops`]).
pub fn initial_world(bound: &Bound, policy: &str) -> Result<World, String> {
    // In iommufd mode the policy is the context's ([`iommufd_setup`]); containers are unused.
    let type1_policy = if bound.iommufd { "none" } else { policy };
    let mut w = World::new(machine(bound), type1_policy)?;
    w.sim_mut().set_recording(false);
    // States are small and cloned at every branch: a full walk per check is cheaper than
    // carrying the incremental check's state along.
    w.sim_mut().set_check_mode(type1_sim::CheckMode::Full);
    for op in &setup_ops(bound, policy)? {
        w.exec(op).map_err(|e| format!("setup {op:?}: {e}"))?;
    }
    Ok(w)
}
