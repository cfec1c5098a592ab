//! The iommufd lines of the scenario language (`docs/scenarios.md`, "iommufd"): `/dev/iommu`,
//! its IOAS and HWPT objects, and device cdevs bound to it. Each line is one ioctl (or one
//! open or close) through the uAPI layer, the bytes an unmodified program would pass; the
//! world names the objects ([`crate::world`]).

use type1_core::{iommufd::FillPolicy, Prot};

use super::{parse_prot, Op, ParseError, Words};

/// One iommufd operation. Objects (IOASes, HWPTs) are named by the scenario; a device by its
/// machine name (`dev1`), whose cdev the world opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfdOp {
    /// `iommufd NAME [policy=P] [batch=PAGES]`: opens `/dev/iommu`; `policy` is its fill
    /// policy (`none`, `seed`, ...; default: the one the scenario's `policy` line implies),
    /// `batch` the pages a fill pins, flushes and maps per step (default: the platform's pin
    /// batch).
    Open {
        /// File name.
        name: String,
        /// Fill policy.
        policy: Option<FillPolicy>,
        /// Pages per fill step.
        batch: Option<u64>,
    },
    /// `ioas NAME IOMMUFD`: `IOMMU_IOAS_ALLOC`.
    Ioas {
        /// Object name.
        name: String,
        /// The `/dev/iommu` file.
        ictx: String,
    },
    /// `bind DEVICE IOMMUFD`: opens the device's cdev, `VFIO_DEVICE_BIND_IOMMUFD`.
    Bind {
        /// Device name.
        device: String,
        /// The `/dev/iommu` file.
        ictx: String,
    },
    /// `unbind DEVICE`: closes the device's cdev (its release unbinds it).
    Unbind {
        /// Device name.
        device: String,
    },
    /// `hwpt NAME DEVICE IOAS`: `IOMMU_HWPT_ALLOC` of a paging HWPT (filled at once).
    Hwpt {
        /// Object name.
        name: String,
        /// Device name (bound).
        device: String,
        /// IOAS name.
        ioas: String,
    },
    /// `attach_pt DEVICE PT`: `VFIO_DEVICE_ATTACH_IOMMUFD_PT` to an IOAS (a compatible HWPT
    /// is found or made) or a HWPT.
    AttachPt {
        /// Device name.
        device: String,
        /// IOAS or HWPT name.
        pt: String,
    },
    /// `detach_pt DEVICE`: `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
    DetachPt {
        /// Device name.
        device: String,
    },
    /// `ioas_map IOAS IOVA VADDR SIZE [r|w|rw]`: `IOMMU_IOAS_MAP` at a fixed IOVA (default
    /// `rw`).
    Map {
        /// IOAS name.
        ioas: String,
        /// IOVA.
        iova: u64,
        /// User address.
        vaddr: u64,
        /// Bytes.
        size: u64,
        /// Device access.
        prot: Prot,
    },
    /// `ioas_unmap IOAS IOVA SIZE` or `ioas_unmap IOAS all`: `IOMMU_IOAS_UNMAP`.
    Unmap {
        /// IOAS name.
        ioas: String,
        /// IOVA (0 with `all`).
        iova: u64,
        /// Bytes (`u64::MAX` with `all`).
        size: u64,
    },
    /// `ioas_copy DST DST_IOVA SRC SRC_IOVA SIZE [r|w|rw]`: `IOMMU_IOAS_COPY` to a fixed IOVA.
    Copy {
        /// Destination IOAS name.
        dst: String,
        /// Destination IOVA.
        dst_iova: u64,
        /// Source IOAS name.
        src: String,
        /// Source IOVA.
        src_iova: u64,
        /// Bytes.
        size: u64,
        /// Device access.
        prot: Prot,
    },
    /// `destroy OBJ`: `IOMMU_DESTROY` of a named IOAS or HWPT.
    Destroy {
        /// Object name.
        obj: String,
    },
}

fn prot_word(w: &mut Words<'_>) -> Result<Prot, ParseError> {
    match w.rest().as_slice() {
        [] => Ok(Prot {
            read: true,
            write: true,
        }),
        [x] => match parse_prot(x) {
            Some(p) => Ok(p),
            None => w.err(format!("{x:?} is not r, w or rw")),
        },
        [_, x, ..] => w.err(format!("unexpected word {x:?}")),
    }
}

/// The operation of an iommufd verb; `None` for any other verb.
pub(super) fn parse(w: &mut Words<'_>) -> Option<Result<Op, ParseError>> {
    const VERBS: [&str; 11] = [
        "iommufd",
        "ioas",
        "bind",
        "unbind",
        "hwpt",
        "attach_pt",
        "detach_pt",
        "ioas_map",
        "ioas_unmap",
        "ioas_copy",
        "destroy",
    ];
    if !VERBS.contains(&w.verb) {
        return None;
    }
    let mut op = || -> Result<IfdOp, ParseError> {
        Ok(match w.verb {
            "iommufd" => IfdOp::Open {
                name: w.name("name")?,
                policy: match w.opt("policy") {
                    None => None,
                    Some(p) => match FillPolicy::from_name(p) {
                        Some(p) => Some(p),
                        None => {
                            return w.err(format!(
                                "policy={p:?} is not one of {}",
                                FillPolicy::ALL.map(FillPolicy::name).join(", ")
                            ))
                        }
                    },
                },
                batch: match w.opt_num("batch")? {
                    Some(0) => return w.err("batch=0: a fill step has at least one page"),
                    b => b,
                },
            },
            "ioas" => IfdOp::Ioas {
                name: w.name("name")?,
                ictx: w.name("iommufd")?,
            },
            "bind" => IfdOp::Bind {
                device: w.name("device")?,
                ictx: w.name("iommufd")?,
            },
            "unbind" => IfdOp::Unbind {
                device: w.name("device")?,
            },
            "hwpt" => IfdOp::Hwpt {
                name: w.name("name")?,
                device: w.name("device")?,
                ioas: w.name("ioas")?,
            },
            "attach_pt" => IfdOp::AttachPt {
                device: w.name("device")?,
                pt: w.name("ioas or hwpt")?,
            },
            "detach_pt" => IfdOp::DetachPt {
                device: w.name("device")?,
            },
            "ioas_map" => IfdOp::Map {
                ioas: w.name("ioas")?,
                iova: w.num("iova")?,
                vaddr: w.num("vaddr")?,
                size: w.num("size")?,
                prot: prot_word(w)?,
            },
            "ioas_unmap" => {
                let ioas = w.name("ioas")?;
                if w.flag("all") {
                    IfdOp::Unmap {
                        ioas,
                        iova: 0,
                        size: u64::MAX,
                    }
                } else {
                    IfdOp::Unmap {
                        ioas,
                        iova: w.num("iova")?,
                        size: w.num("size")?,
                    }
                }
            }
            "ioas_copy" => IfdOp::Copy {
                dst: w.name("destination ioas")?,
                dst_iova: w.num("destination iova")?,
                src: w.name("source ioas")?,
                src_iova: w.num("source iova")?,
                size: w.num("size")?,
                prot: prot_word(w)?,
            },
            "destroy" => IfdOp::Destroy {
                obj: w.name("object")?,
            },
            _ => unreachable!("checked below"),
        })
    };
    Some(op().map(Op::Iommufd))
}

/// The scenario line of an operation (the model checker writes counterexamples with it).
pub fn line(op: &IfdOp) -> String {
    let prot = |p: &Prot| match (p.read, p.write) {
        (true, true) => "",
        (true, false) => " r",
        (false, true) => " w",
        (false, false) => " none",
    };
    match op {
        IfdOp::Open {
            name,
            policy,
            batch,
        } => format!(
            "iommufd {name}{}{}",
            policy.map_or(String::new(), |p| format!(" policy={}", p.name())),
            batch.map_or(String::new(), |b| format!(" batch={b}"))
        ),
        IfdOp::Ioas { name, ictx } => format!("ioas {name} {ictx}"),
        IfdOp::Bind { device, ictx } => format!("bind {device} {ictx}"),
        IfdOp::Unbind { device } => format!("unbind {device}"),
        IfdOp::Hwpt { name, device, ioas } => format!("hwpt {name} {device} {ioas}"),
        IfdOp::AttachPt { device, pt } => format!("attach_pt {device} {pt}"),
        IfdOp::DetachPt { device } => format!("detach_pt {device}"),
        IfdOp::Map {
            ioas,
            iova,
            vaddr,
            size,
            prot: p,
        } => format!(
            "ioas_map {ioas} 0x{iova:x} 0x{vaddr:x} 0x{size:x}{}",
            prot(p)
        ),
        IfdOp::Unmap {
            ioas,
            iova: 0,
            size: u64::MAX,
        } => format!("ioas_unmap {ioas} all"),
        IfdOp::Unmap { ioas, iova, size } => format!("ioas_unmap {ioas} 0x{iova:x} 0x{size:x}"),
        IfdOp::Copy {
            dst,
            dst_iova,
            src,
            src_iova,
            size,
            prot: p,
        } => format!(
            "ioas_copy {dst} 0x{dst_iova:x} {src} 0x{src_iova:x} 0x{size:x}{}",
            prot(p)
        ),
        IfdOp::Destroy { obj } => format!("destroy {obj}"),
    }
}
