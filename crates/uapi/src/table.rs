//! The ioctl tables, one per fd kind, and their handlers.
//!
//! [`Vfio::ioctl`] dispatches on the fd kind first (request numbers collide across kinds),
//! then looks the number up in that kind's table. An entry with [`ArgSz::Min`] has its header
//! copied in (EFAULT on a fault) and `argsz` checked against the minimum (EINVAL) before the
//! handler runs, which is where the kernel's handlers do it too; an entry with
//! [`ArgSz::Raw`] takes an integer or a pointer to something without `argsz`, or must check
//! something before the copy-in (DIRTY_PAGES checks v2 first, D1).
//!
//! Engine errors become errnos only through [`type1_core::Error::errno`].

use type1_core::{
    abi::*, DirtyFlag, DirtyOp, Errno, IommuInfo, MapRequest, Platform, UnmapRequest, UserBitmap,
};
use vfio_bindings::bindings::vfio as b;

use crate::{
    caller::{put_u32, put_u64, read_cstr, read_vec, u32_at, u64_at, Caller},
    nr::*,
    vfio::{Object, Vfio},
};

/// How the table treats an entry's argument before its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgSz {
    /// Copy in this many bytes of the struct and require `argsz >= n`.
    Min(usize),
    /// The handler reads the argument itself.
    Raw,
}

/// What a handler receives.
pub struct Call<'a> {
    /// The object's id (container id, group number or device id).
    pub id: u32,
    /// The raw ioctl argument (pointer or integer).
    pub arg: u64,
    /// The copied-in header for [`ArgSz::Min`] entries, empty otherwise.
    pub hdr: Vec<u8>,
    /// The calling process.
    pub caller: &'a mut dyn Caller,
}

/// A handler: the ioctl's return value, or an errno.
pub type Handler<P> = fn(&mut Vfio<P>, Call<'_>) -> Result<i64, Errno>;

/// One ioctl of one fd kind.
pub struct IoctlDef<P: Platform> {
    /// Request number.
    pub nr: u64,
    /// Name, for the trace.
    pub name: &'static str,
    /// Argument handling.
    pub argsz: ArgSz,
    /// The handler.
    pub handler: Handler<P>,
}

impl<P: Platform> std::fmt::Debug for IoctlDef<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoctlDef")
            .field("nr", &self.nr)
            .field("name", &self.name)
            .field("argsz", &self.argsz)
            .finish()
    }
}

macro_rules! def {
    ($nr:ident, $argsz:expr, $h:path) => {
        IoctlDef {
            nr: $nr,
            name: stringify!($nr),
            argsz: $argsz,
            handler: $h,
        }
    };
}

// Struct sizes of linux/vfio.h (C3), checked against vfio-bindings.
use crate::info::HEADER_SIZE;
const MAP_SZ: usize = 32;
const UNMAP_SZ: usize = 24;
const BITMAP_SZ: usize = 24;
const DIRTY_SZ: usize = 8;
const DIRTY_GET_SZ: usize = 40;
const _: () = {
    use std::mem::size_of;
    assert!(size_of::<b::vfio_iommu_type1_info>() == HEADER_SIZE);
    assert!(size_of::<b::vfio_iommu_type1_dma_map>() == MAP_SZ);
    assert!(size_of::<b::vfio_iommu_type1_dma_unmap>() == UNMAP_SZ);
    assert!(size_of::<b::vfio_bitmap>() == BITMAP_SZ);
    assert!(size_of::<b::vfio_iommu_type1_dirty_bitmap>() == DIRTY_SZ);
    assert!(size_of::<b::vfio_iommu_type1_dirty_bitmap_get>() == DIRTY_GET_SZ);
    assert!(size_of::<b::vfio_group_status>() == 8);
    assert!(size_of::<b::vfio_device_info>() == 24);
    assert!(size_of::<b::vfio_region_info>() == 32);
    assert!(size_of::<b::vfio_irq_info>() == 16);
    assert!(size_of::<b::vfio_irq_set>() == 20);
};

/// `/dev/vfio/vfio` before and after SET_IOMMU (the container's own switch, C4 to C7).
pub fn container_table<P: Platform>() -> Vec<IoctlDef<P>> {
    vec![
        def!(VFIO_GET_API_VERSION, ArgSz::Raw, get_api_version),
        def!(VFIO_CHECK_EXTENSION, ArgSz::Raw, check_extension),
        def!(VFIO_SET_IOMMU, ArgSz::Raw, set_iommu),
    ]
}

/// The type1 backend's ioctls, reached only once the container has a backend (C7).
pub fn type1_table<P: Platform>() -> Vec<IoctlDef<P>> {
    vec![
        def!(VFIO_IOMMU_GET_INFO, ArgSz::Min(16), iommu_get_info),
        def!(VFIO_IOMMU_MAP_DMA, ArgSz::Min(MAP_SZ), map_dma),
        def!(VFIO_IOMMU_UNMAP_DMA, ArgSz::Min(UNMAP_SZ), unmap_dma),
        def!(VFIO_IOMMU_DIRTY_PAGES, ArgSz::Raw, dirty_pages),
    ]
}

/// `/dev/vfio/N`.
pub fn group_table<P: Platform>() -> Vec<IoctlDef<P>> {
    vec![
        def!(VFIO_GROUP_GET_STATUS, ArgSz::Min(8), group_get_status),
        def!(VFIO_GROUP_SET_CONTAINER, ArgSz::Raw, group_set_container),
        def!(
            VFIO_GROUP_UNSET_CONTAINER,
            ArgSz::Raw,
            group_unset_container
        ),
        def!(VFIO_GROUP_GET_DEVICE_FD, ArgSz::Raw, group_get_device_fd),
    ]
}

/// A device fd.
pub fn device_table<P: Platform>() -> Vec<IoctlDef<P>> {
    vec![
        def!(VFIO_DEVICE_GET_INFO, ArgSz::Min(16), device_get_info),
        def!(
            VFIO_DEVICE_GET_REGION_INFO,
            ArgSz::Min(32),
            device_get_region_info
        ),
        def!(
            VFIO_DEVICE_GET_IRQ_INFO,
            ArgSz::Min(16),
            device_get_irq_info
        ),
        def!(VFIO_DEVICE_SET_IRQS, ArgSz::Min(20), device_set_irqs),
        def!(VFIO_DEVICE_RESET, ArgSz::Raw, device_reset),
    ]
}

/// A request's name for the trace (`linux/vfio.h` and `linux/iommufd.h` names without the
/// `VFIO_` prefix), `IOCTL` for a number no header names.
fn nr_name(req: u64) -> &'static str {
    crate::nr::name_of(req).map_or("IOCTL", |n| n.trim_start_matches("VFIO_"))
}

fn eng<T>(r: type1_core::Result<T>) -> Result<T, Errno> {
    r.map_err(|e| e.errno())
}

impl<P: Platform> Vfio<P> {
    /// One ioctl on an emulated object. Returns the ioctl's non-negative result or the errno.
    pub fn ioctl(
        &mut self,
        obj: Object,
        req: u64,
        arg: u64,
        caller: &mut dyn Caller,
    ) -> Result<i64, Errno> {
        let (table, id) = match obj {
            Object::Container(id) => {
                let Some(c) = self.containers.get(&id) else {
                    return Err(Errno::EBADF);
                };
                let mut t = container_table::<P>();
                if !t.iter().any(|d| d.nr == req) {
                    // C7: without a backend everything else is EINVAL; with one, type1 answers
                    // (ENOTTY for what it does not know).
                    if !c.c.is_set() {
                        let what = format!("container 0x{req:x} before SET_IOMMU");
                        return self.traced("IOCTL", what, |_| Err(Errno::EINVAL));
                    }
                    t = type1_table::<P>();
                }
                (t, id)
            }
            Object::Group(id) => (group_table::<P>(), id),
            Object::Device(id) if self.cdev_claims(id, req) => {
                return self.traced(nr_name(req), format!("{obj:?} arg 0x{arg:x}"), |v| {
                    v.cdev_ioctl(id, req, arg, caller)
                });
            }
            Object::Device(id) => (device_table::<P>(), id),
            Object::Iommufd(id) => {
                return self.traced(nr_name(req), format!("{obj:?} arg 0x{arg:x}"), |v| {
                    v.iommufd_ioctl(id, req, arg, caller)
                });
            }
        };
        let Some(def) = table.iter().find(|d| d.nr == req) else {
            let what = format!("{obj:?} unknown request 0x{req:x}");
            return self.traced("IOCTL", what, |_| Err(Errno::ENOTTY));
        };
        let name = def.name.trim_start_matches("VFIO_");
        self.traced(name, format!("{obj:?} arg 0x{arg:x}"), |v| {
            v.run(def, id, arg, caller)
        })
    }

    /// Runs one call between its `op` and `ret` trace lines.
    fn traced(
        &mut self,
        name: &str,
        args: String,
        f: impl FnOnce(&mut Self) -> Result<i64, Errno>,
    ) -> Result<i64, Errno> {
        self.trace_op(name, args);
        let r = f(self);
        self.trace_ret(name, &r);
        r
    }

    fn run(
        &mut self,
        def: &IoctlDef<P>,
        id: u32,
        arg: u64,
        caller: &mut dyn Caller,
    ) -> Result<i64, Errno> {
        let hdr = match def.argsz {
            ArgSz::Min(n) => {
                let hdr = read_vec(caller, arg, n)?;
                if (u32_at(&hdr, 0) as usize) < n {
                    return Err(Errno::EINVAL);
                }
                hdr
            }
            ArgSz::Raw => Vec::new(),
        };
        (def.handler)(
            self,
            Call {
                id,
                arg,
                hdr,
                caller,
            },
        )
    }

    fn cont(&mut self, id: u32) -> Result<&mut type1_core::Container, Errno> {
        self.containers
            .get_mut(&id)
            .map(|c| &mut c.c)
            .ok_or(Errno::EBADF)
    }
}

// ---- container ---------------------------------------------------------------------------------

fn get_api_version<P: Platform>(_: &mut Vfio<P>, _: Call<'_>) -> Result<i64, Errno> {
    Ok(VFIO_API_VERSION as i64)
}

fn check_extension<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    // The argument is the extension id itself (an unsigned long); one type1 does not know
    // answers 0.
    let cont = v.cont(c.id)?;
    Ok(type1_core::Extension::decode(c.arg).is_some_and(|e| cont.check_extension(e)) as i64)
}

fn set_iommu<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let st = v.containers.get_mut(&c.id).ok_or(Errno::EBADF)?;
    let ty = type1_core::RequestedType::decode(c.arg);
    eng(st.c.set_iommu(&mut v.platform, ty))?;
    Ok(0)
}

// ---- type1 -------------------------------------------------------------------------------------

/// GET_INFO (I1 to I5): header, then the capability chain if it fits, else the grown argsz.
fn iommu_get_info<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let argsz = u32_at(&c.hdr, 0);
    let info: IommuInfo = v.cont(c.id)?.iommu().map_err(|e| e.errno())?.info();
    let chain = crate::info::chain(&info);
    let total = HEADER_SIZE + chain.len();
    let mut out = [0u8; HEADER_SIZE];
    let mut flags = b::VFIO_IOMMU_INFO_PGSIZES;
    let mut new_argsz = argsz;
    let mut cap_offset = 0u32;
    if !chain.is_empty() {
        flags |= b::VFIO_IOMMU_INFO_CAPS;
        if (argsz as usize) < total {
            new_argsz = u32::try_from(total).unwrap_or(u32::MAX);
        } else {
            c.caller.write(c.arg + HEADER_SIZE as u64, &chain)?;
            cap_offset = HEADER_SIZE as u32;
        }
    }
    put_u32(&mut out, 0, new_argsz);
    put_u32(&mut out, 4, flags);
    put_u64(&mut out, 8, info.iova_pgsizes);
    put_u32(&mut out, 16, cap_offset);
    // I5: min(argsz as passed in, 24) bytes go back.
    let n = (argsz as usize).min(HEADER_SIZE);
    c.caller.write(c.arg, &out[..n])?;
    Ok(0)
}

fn map_dma<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let req = MapRequest {
        flags: eng(type1_core::MapFlags::decode(u32_at(&c.hdr, 4)))?,
        vaddr: u64_at(&c.hdr, 8),
        iova: u64_at(&c.hdr, 16),
        size: u64_at(&c.hdr, 24),
    };
    let st = v.containers.get_mut(&c.id).ok_or(Errno::EBADF)?;
    let t = eng(st.c.iommu_mut())?;
    eng(t.map_dma(&mut v.platform, req))?;
    Ok(0)
}

/// Highest user address + 1 on x86-64 (`TASK_SIZE_MAX`), for `access_ok`.
const TASK_SIZE: u64 = (1 << 47) - 4096;

fn access_ok(addr: u64, size: u64) -> bool {
    addr.checked_add(size).is_some_and(|end| end <= TASK_SIZE)
}

/// `verify_bitmap_size` ahead of the engine (which checks again) so that the buffer is sized
/// before it is allocated: npages bits, at most 2^28 bytes.
fn bitmap_words(size: u64, pgsize: u64, bitmap_size: u64) -> Result<usize, Errno> {
    if pgsize == 0 || !pgsize.is_power_of_two() {
        return Err(Errno::EINVAL);
    }
    let npages = size >> pgsize.trailing_zeros();
    if npages == 0 || bitmap_size == 0 || bitmap_size > type1_core::DIRTY_BITMAP_SIZE_MAX {
        return Err(Errno::EINVAL);
    }
    let words = npages.div_ceil(64);
    if bitmap_size < words * 8 {
        return Err(Errno::EINVAL);
    }
    usize::try_from(words).map_err(|_| Errno::EINVAL)
}

fn words_to_bytes(w: &[u64]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_to_words(b: &[u8]) -> Vec<u64> {
    b.chunks(8).map(|c| u64_at(c, 0)).collect()
}

/// UNMAP_DMA (U1 to U9): writes the header back with the unmapped size, on success only.
fn unmap_dma<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let argsz = u32_at(&c.hdr, 0) as usize;
    let flags = u32_at(&c.hdr, 4);
    let iova = u64_at(&c.hdr, 8);
    let size = u64_at(&c.hdr, 16);
    // U1.2, U1.3 first: U1.4 reads more of the argument.
    let flags = eng(type1_core::UnmapFlags::decode(flags))?;
    let get_bitmap = flags.get_dirty_bitmap;
    let mut user_bm: Option<(u64, u64, u64, Vec<u64>)> = None;
    if get_bitmap {
        if argsz < UNMAP_SZ + BITMAP_SZ {
            return Err(Errno::EINVAL);
        }
        let bm = read_vec(c.caller, c.arg + UNMAP_SZ as u64, BITMAP_SZ)?;
        let (pgsize, bsize, data) = (u64_at(&bm, 0), u64_at(&bm, 8), u64_at(&bm, 16));
        if !access_ok(data, bsize) {
            return Err(Errno::EINVAL);
        }
        let words = bitmap_words(size, pgsize, bsize)?;
        // D5: the user's words are ORed into, so start from what the user has.
        let cur = read_vec(c.caller, data, words * 8)?;
        user_bm = Some((pgsize, bsize, data, bytes_to_words(&cur)));
    }
    let st = v.containers.get_mut(&c.id).ok_or(Errno::EBADF)?;
    let t = eng(st.c.iommu_mut())?;
    let bitmap = user_bm
        .as_mut()
        .map(|(pgsize, bsize, _, words)| UserBitmap {
            pgsize: *pgsize,
            size: *bsize,
            data: words,
        });
    let unmapped = eng(t.unmap_dma(
        &mut v.platform,
        UnmapRequest {
            flags,
            iova,
            size,
            bitmap,
        },
    ))?;
    if let Some((_, _, data, words)) = &user_bm {
        c.caller.write(*data, &words_to_bytes(words))?;
    }
    let mut out = c.hdr.clone();
    put_u64(&mut out, 16, unmapped);
    c.caller.write(c.arg, &out)?;
    Ok(0)
}

/// DIRTY_PAGES (D1 to D4).
fn dirty_pages<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    // D1.1: not v2 → EACCES, before anything is read.
    let is_v2 = v.cont(c.id)?.iommu().map_err(|e| e.errno())?.is_v2();
    if !is_v2 {
        return Err(Errno::EACCES);
    }
    let hdr = read_vec(c.caller, c.arg, DIRTY_SZ)?;
    let argsz = u32_at(&hdr, 0) as usize;
    let flags = u32_at(&hdr, 4);
    if argsz < DIRTY_SZ {
        return Err(Errno::EINVAL);
    }
    let op = match eng(DirtyFlag::decode(flags))? {
        DirtyFlag::Start => Some(DirtyOp::Start),
        DirtyFlag::Stop => Some(DirtyOp::Stop),
        DirtyFlag::GetBitmap => None,
    };
    let st = v.containers.get_mut(&c.id).ok_or(Errno::EBADF)?;
    if let Some(op) = op {
        let t = eng(st.c.iommu_mut())?;
        eng(t.dirty_pages(op))?;
        return Ok(0);
    }
    // D4
    let data_size = argsz - DIRTY_SZ;
    if data_size < DIRTY_GET_SZ {
        return Err(Errno::EINVAL);
    }
    let r = read_vec(c.caller, c.arg + DIRTY_SZ as u64, DIRTY_GET_SZ)?;
    let (iova, size) = (u64_at(&r, 0), u64_at(&r, 8));
    let (pgsize, bsize, data) = (u64_at(&r, 16), u64_at(&r, 24), u64_at(&r, 32));
    if size == 0 {
        return Err(Errno::EINVAL);
    }
    if iova.checked_add(size - 1).is_none() {
        return Err(Errno::EOVERFLOW);
    }
    if !access_ok(data, bsize) {
        return Err(Errno::EINVAL);
    }
    let words = bitmap_words(size, pgsize, bsize)?;
    let cur = read_vec(c.caller, data, words * 8)?;
    let mut words = bytes_to_words(&cur);
    let t = eng(st.c.iommu_mut())?;
    eng(t.dirty_pages(DirtyOp::GetBitmap {
        iova,
        size,
        bitmap: UserBitmap {
            pgsize,
            size: bsize,
            data: &mut words,
        },
    }))?;
    c.caller.write(data, &words_to_bytes(&words))?;
    Ok(0)
}

// ---- group -------------------------------------------------------------------------------------

fn group_get_status<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let g = v.groups.get(&c.id).ok_or(Errno::ENODEV)?;
    let flags = if g.container.is_some() {
        b::VFIO_GROUP_FLAGS_VIABLE | b::VFIO_GROUP_FLAGS_CONTAINER_SET
    } else {
        b::VFIO_GROUP_FLAGS_VIABLE
    };
    let mut out = c.hdr.clone();
    put_u32(&mut out, 4, flags);
    c.caller.write(c.arg, &out)?;
    Ok(0)
}

/// SET_CONTAINER, in the errata's order: EFAULT, EBADF, then [`Vfio::set_container`]'s
/// (EINVAL already set, EBADFD not a container, the backend's attach error).
fn group_set_container<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let raw = read_vec(c.caller, c.arg, 4)?;
    let fd = u32_at(&raw, 0) as i32;
    let obj = c.caller.object_of_fd(fd)?;
    v.set_container(c.id, obj)?;
    Ok(0)
}

fn group_unset_container<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    v.unset_container(c.id)?;
    Ok(0)
}

/// GET_DEVICE_FD: the name (EFAULT, EINVAL if longer than a page), then
/// [`Vfio::open_device`]'s checks; returns the new fd.
fn group_get_device_fd<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let name = read_cstr(c.caller, c.arg, 4096)?;
    let name = String::from_utf8_lossy(&name).into_owned();
    let dev = v.open_device(c.id, &name)?;
    match c.caller.new_fd(Object::Device(dev)) {
        Ok(fd) => Ok(fd as i64),
        Err(e) => {
            v.close(Object::Device(dev));
            Err(e)
        }
    }
}

// ---- device ------------------------------------------------------------------------------------

fn device_get_info<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let d = v.devices.get(&c.id).ok_or(Errno::EBADF)?;
    let argsz = u32_at(&c.hdr, 0) as usize;
    let (flags, nreg, nirq) = d.dev.info();
    let mut out = [0u8; 24];
    put_u32(&mut out, 0, argsz as u32);
    put_u32(&mut out, 4, flags);
    put_u32(&mut out, 8, nreg);
    put_u32(&mut out, 12, nirq);
    c.caller.write(c.arg, &out[..argsz.min(24)])?;
    Ok(0)
}

fn device_get_region_info<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let d = v.devices.get(&c.id).ok_or(Errno::EBADF)?;
    let (flags, size, offset) = d.dev.region_info(u32_at(&c.hdr, 8))?;
    let mut out = c.hdr.clone();
    put_u32(&mut out, 4, flags);
    put_u32(&mut out, 12, 0); // cap_offset
    put_u64(&mut out, 16, size);
    put_u64(&mut out, 24, offset);
    c.caller.write(c.arg, &out)?;
    Ok(0)
}

fn device_get_irq_info<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let d = v.devices.get(&c.id).ok_or(Errno::EBADF)?;
    let (flags, count) = d.dev.irq_info(u32_at(&c.hdr, 8))?;
    let mut out = c.hdr.clone();
    put_u32(&mut out, 4, flags);
    put_u32(&mut out, 12, count);
    c.caller.write(c.arg, &out)?;
    Ok(0)
}

/// SET_IRQS: `vfio_set_irqs_validate_and_prepare`'s checks, then vfio-pci's actions.
///
/// One index is enabled at a time (vfio-pci's `irq_type`): enabling INTx, MSI or MSI-X while
/// another is on is EINVAL; `DATA_NONE` with count 0 turns the enabled one off. INTx: a
/// trigger eventfd (or -1 to drop it) enables it; mask and unmask (an unmask of a
/// still-asserted INTx fires it again); both EINVAL unless INTx is on. MSI (one vector) and
/// MSI-X ([`crate::device::MSIX_VECTORS`]): eventfds for vectors `start..start + count`
/// enable the index with `start + count` vectors, or set them when it is on (EINVAL past the
/// vectors enabled); -1 drops a vector's trigger; mask and unmask are ENOTTY, as vfio-pci has
/// none. The request eventfd is kept, never signalled. `DATA_NONE`, or a true `DATA_BOOL`,
/// fires the triggers (loopback).
fn device_set_irqs<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let d = v.devices.get(&c.id).ok_or(Errno::EBADF)?;
    let argsz = u32_at(&c.hdr, 0) as u64;
    let flags = u32_at(&c.hdr, 4);
    let index = u32_at(&c.hdr, 8);
    let start = u32_at(&c.hdr, 12);
    let count = u32_at(&c.hdr, 16);
    if index >= b::VFIO_PCI_NUM_IRQS
        || count >= u32::MAX - start
        || flags & !(b::VFIO_IRQ_SET_DATA_TYPE_MASK | b::VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
    {
        return Err(Errno::EINVAL);
    }
    let max = d.dev.irq_info(index).map(|(_, n)| n).unwrap_or(0);
    let data_type = flags & b::VFIO_IRQ_SET_DATA_TYPE_MASK;
    let size: u64 = match data_type {
        b::VFIO_IRQ_SET_DATA_NONE => 0,
        b::VFIO_IRQ_SET_DATA_BOOL => 1,
        b::VFIO_IRQ_SET_DATA_EVENTFD => 4,
        _ => return Err(Errno::EINVAL),
    };
    let mut data = Vec::new();
    if size > 0 {
        if argsz - 20 < size * count as u64 {
            return Err(Errno::EINVAL);
        }
        data = read_vec(c.caller, c.arg + 20, (size * count as u64) as usize)?;
    }
    if count > 0 && (start >= max || start + count > max) {
        return Err(Errno::EINVAL);
    }
    let action = flags & b::VFIO_IRQ_SET_ACTION_TYPE_MASK;
    if !matches!(
        action,
        b::VFIO_IRQ_SET_ACTION_MASK
            | b::VFIO_IRQ_SET_ACTION_UNMASK
            | b::VFIO_IRQ_SET_ACTION_TRIGGER
    ) {
        return Err(Errno::EINVAL);
    }
    let eventfds = data_type == b::VFIO_IRQ_SET_DATA_EVENTFD;
    let fds: Vec<i32> = if eventfds {
        (0..count as usize)
            .map(|i| u32_at(&data, 4 * i) as i32)
            .collect()
    } else {
        Vec::new()
    };
    // Whether datum i says "act": DATA_NONE, or a true bool.
    let act = |i: usize| {
        data_type == b::VFIO_IRQ_SET_DATA_NONE
            || (data_type == b::VFIO_IRQ_SET_DATA_BOOL && data.get(i) == Some(&1))
    };
    let teardown = count == 0 && data_type == b::VFIO_IRQ_SET_DATA_NONE;
    let kind = d.irqs.kind;
    let dev = c.id;
    match (index, action) {
        (b::VFIO_PCI_INTX_IRQ_INDEX, b::VFIO_IRQ_SET_ACTION_TRIGGER) => {
            if kind == Some(index) && teardown {
                let d = v.devices.get_mut(&dev).ok_or(Errno::EBADF)?;
                (d.irqs.intx, d.irqs.intx_masked, d.irqs.kind) = (None, false, None);
                return Ok(0);
            }
            if !(kind == Some(index) || kind.is_none()) || start != 0 || count != 1 {
                return Err(Errno::EINVAL);
            }
            if eventfds {
                let file = match fds[0] {
                    n if n >= 0 => Some(c.caller.event_fd(n)?),
                    _ => None,
                };
                let d = v.devices.get_mut(&dev).ok_or(Errno::EBADF)?;
                if kind.is_none() {
                    d.irqs.intx_masked = false;
                }
                (d.irqs.intx, d.irqs.kind) = (file, Some(index));
                return Ok(0);
            }
            if kind != Some(index) {
                return Err(Errno::EINVAL);
            }
            if act(0) {
                if let Some(f) = &v.devices.get(&dev).ok_or(Errno::EBADF)?.irqs.intx {
                    crate::vfio::signal(f);
                }
            }
        }
        (b::VFIO_PCI_INTX_IRQ_INDEX, _) => {
            if kind != Some(index) || start != 0 || count != 1 {
                return Err(Errno::EINVAL);
            }
            // An unmask eventfd (KVM's resampler) is accepted but not watched here.
            if !eventfds && act(0) {
                if !v.devices.contains_key(&dev) {
                    return Err(Errno::EBADF);
                }
                v.set_intx_masked(dev, action != b::VFIO_IRQ_SET_ACTION_UNMASK);
            }
        }
        (
            b::VFIO_PCI_MSI_IRQ_INDEX | b::VFIO_PCI_MSIX_IRQ_INDEX,
            b::VFIO_IRQ_SET_ACTION_TRIGGER,
        ) => {
            let msix = index == b::VFIO_PCI_MSIX_IRQ_INDEX;
            if kind == Some(index) && teardown {
                let d = v.devices.get_mut(&dev).ok_or(Errno::EBADF)?;
                (d.irqs.msi, d.irqs.kind) = (None, None);
                d.irqs.msix.clear();
                return Ok(0);
            }
            if !(kind == Some(index) || kind.is_none()) {
                return Err(Errno::EINVAL);
            }
            let enabled = |d: &crate::vfio::DeviceState| {
                if msix {
                    d.irqs.msix.len() as u32
                } else {
                    u32::from(d.irqs.kind == Some(index))
                }
            };
            if eventfds {
                let d = v.devices.get(&dev).ok_or(Errno::EBADF)?;
                // Turning the index on enables `start + count` vectors; once on, the vectors
                // set must be among those.
                let vectors = if kind == Some(index) {
                    enabled(d)
                } else {
                    start + count
                };
                if start + count > vectors {
                    return Err(Errno::EINVAL);
                }
                let mut files = Vec::with_capacity(fds.len());
                for &n in &fds {
                    files.push(if n >= 0 {
                        Some(c.caller.event_fd(n)?)
                    } else {
                        None
                    });
                }
                let d = v.devices.get_mut(&dev).ok_or(Errno::EBADF)?;
                if kind.is_none() {
                    d.irqs.kind = Some(index);
                    if msix {
                        d.irqs.msix = (0..vectors).map(|_| None).collect();
                    }
                }
                for (i, f) in files.into_iter().enumerate() {
                    if msix {
                        d.irqs.msix[start as usize + i] = f;
                    } else {
                        d.irqs.msi = f;
                    }
                }
                return Ok(0);
            }
            let d = v.devices.get(&dev).ok_or(Errno::EBADF)?;
            if kind != Some(index) || start + count > enabled(d) {
                return Err(Errno::EINVAL);
            }
            for i in 0..count as usize {
                let f = if msix {
                    d.irqs.msix[start as usize + i].as_ref()
                } else {
                    d.irqs.msi.as_ref()
                };
                if let (Some(f), true) = (f, act(i)) {
                    crate::vfio::signal(f);
                }
            }
        }
        (b::VFIO_PCI_REQ_IRQ_INDEX, b::VFIO_IRQ_SET_ACTION_TRIGGER) => {
            if count > 1 {
                return Err(Errno::EINVAL);
            }
            if eventfds || teardown {
                let file = match fds.first() {
                    Some(&n) if n >= 0 => Some(c.caller.event_fd(n)?),
                    _ => None,
                };
                v.devices.get_mut(&dev).ok_or(Errno::EBADF)?.irqs.req = file;
            }
        }
        // MSI, MSI-X and the request interrupt have no mask in vfio-pci.
        _ => return Err(Errno::ENOTTY),
    }
    Ok(0)
}

fn device_reset<P: Platform>(v: &mut Vfio<P>, c: Call<'_>) -> Result<i64, Errno> {
    let d = v.devices.get_mut(&c.id).ok_or(Errno::EBADF)?;
    d.dev.reset();
    Ok(0)
}
