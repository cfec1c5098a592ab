//! Raw uAPI steps: scenario lines that open emulated files and issue ioctls with byte-level
//! arguments through `type1-uapi`, the same layer the broker runs for unmodified programs
//! under the LD_PRELOAD library, on the simulated machine.
//!
//! Typed lines (`container`, `attach`, `map`, ...) call the engine directly and cannot say
//! what only the binary interface can: an `argsz` smaller than the struct, a capability chain,
//! a group file's own ioctls, a dirty-bitmap descriptor with a wrong page size. Raw lines can:
//!
//! ```text
//! uapi_open c container
//! uapi_open g1 group 1
//! ioctl g1 GROUP_SET_CONTAINER fd c
//! ioctl c SET_IOMMU int 3
//! ioctl c IOMMU_GET_INFO u32 16 zero 12 => ok
//! expect arg 0 u32 0x40          # argsz written back: the size with the capability chain
//! ```
//!
//! The argument of an ioctl is built in a scratch user memory ([`RawCaller`]) from typed
//! items and passed by address; `int V` passes an integer instead, `at ADDR` a bare address
//! (EFAULT tests). Buffers named by `ptr LABEL` live in the same scratch memory and are read
//! back with `expect buf`. Addresses that DMA maps (`vaddr` of MAP_DMA) are the simulated
//! process's memory, as in a real program. Typed and raw lines share one object model, the
//! world's [`type1_uapi::Vfio`]: a group file opened by one side is EBUSY to the other, as a
//! second open of a group file is.

use std::collections::BTreeMap;

use type1_core::Errno;
use type1_uapi::{Caller, Object};

/// Where the argument buffer of every ioctl is built.
pub const ARG_BASE: u64 = 0x10_0000_0000;
/// Largest argument buffer.
pub const ARG_MAX: u64 = 1 << 20;
/// Where `ptr` buffers live: label k at `BUF_BASE + k * BUF_STRIDE`.
pub const BUF_BASE: u64 = 0x20_0000_0000;
/// Room for each `ptr` buffer (a 256 MiB dirty bitmap fits).
pub const BUF_STRIDE: u64 = 1 << 29;
/// End of the scratch memory: anything at or past it (or below [`ARG_BASE`]) is EFAULT.
pub const SCRATCH_END: u64 = BUF_BASE + 64 * BUF_STRIDE;

const PAGE: u64 = 4096;

/// One item of an ioctl argument buffer, laid out in order without padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A little-endian integer of 1, 2, 4 or 8 bytes.
    Int {
        /// Width in bytes.
        bytes: u8,
        /// Value (must fit).
        value: u64,
    },
    /// The fd number (as a `u32`) of a named file.
    Fd(String),
    /// A NUL-terminated string.
    Str(String),
    /// The address (`u64`) of a named scratch buffer.
    Ptr(String),
    /// Zero bytes.
    Zero(u64),
}

/// How an ioctl gets its argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// No argument (0).
    None,
    /// An integer argument (`SET_IOMMU`, `CHECK_EXTENSION`).
    Int(u64),
    /// A bare address, nothing written there.
    At(u64),
    /// A buffer built at [`ARG_BASE`].
    Buf(Vec<Item>),
}

/// The calling process of raw steps: sparse scratch memory and an fd table.
#[derive(Clone, Debug, Default)]
pub struct RawCaller {
    pages: BTreeMap<u64, Box<[u8]>>,
    fds: BTreeMap<i32, Option<Object>>,
    next_fd: i32,
}

fn in_scratch(addr: u64, len: usize) -> bool {
    addr >= ARG_BASE
        && addr
            .checked_add(len as u64)
            .is_some_and(|end| end <= SCRATCH_END)
}

impl RawCaller {
    fn new() -> RawCaller {
        RawCaller {
            // 0 to 2 are the standard streams, not emulated.
            fds: (0..3).map(|fd| (fd, None)).collect(),
            next_fd: 3,
            ..RawCaller::default()
        }
    }

    /// Bytes at `addr` (never-written scratch memory reads as zeros).
    pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                let a = addr + i;
                self.pages
                    .get(&(a / PAGE))
                    .map_or(0, |p| p[(a % PAGE) as usize])
            })
            .collect()
    }

    fn poke(&mut self, addr: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let a = addr + i as u64;
            let p = self
                .pages
                .entry(a / PAGE)
                .or_insert_with(|| vec![0; PAGE as usize].into_boxed_slice());
            p[(a % PAGE) as usize] = *b;
        }
    }

    /// Closes `fd`: the object it referred to, if emulated.
    pub fn forget(&mut self, fd: i32) -> Option<Object> {
        self.fds.remove(&fd).flatten()
    }

    /// The object behind an fd, if it is an open emulated file.
    pub fn object(&self, fd: i32) -> Option<Object> {
        self.fds.get(&fd).copied().flatten()
    }
}

impl Caller for RawCaller {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if !in_scratch(addr, buf.len()) {
            return Err(Errno::EFAULT);
        }
        buf.copy_from_slice(&self.peek(addr, buf.len()));
        Ok(())
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        if !in_scratch(addr, data.len()) {
            return Err(Errno::EFAULT);
        }
        self.poke(addr, data);
        Ok(())
    }

    fn object_of_fd(&self, fd: i32) -> Result<Option<Object>, Errno> {
        self.fds.get(&fd).copied().ok_or(Errno::EBADF)
    }

    fn new_fd(&mut self, obj: Object) -> Result<i32, Errno> {
        let fd = self.next_fd;
        self.next_fd += 1;
        self.fds.insert(fd, Some(obj));
        Ok(fd)
    }
}

/// The calling process of raw lines: its scratch memory and fds, the names of its open files.
/// The objects behind the fds are the world's ([`crate::World::vfio`]).
#[derive(Clone, Debug)]
pub struct Raw {
    /// Scratch memory and fds.
    pub caller: RawCaller,
    /// File name -> fd.
    pub files: BTreeMap<String, i32>,
    /// Buffer label -> index (address `BUF_BASE + index * BUF_STRIDE`).
    pub labels: BTreeMap<String, u64>,
    /// Return value of the last successful ioctl.
    pub last_ret: i64,
    /// Bytes of the last argument built at [`ARG_BASE`].
    arg_len: usize,
}

impl Default for Raw {
    fn default() -> Self {
        Raw::new()
    }
}

impl Raw {
    /// A caller with no file open.
    pub fn new() -> Raw {
        Raw {
            caller: RawCaller::new(),
            files: BTreeMap::new(),
            labels: BTreeMap::new(),
            last_ret: 0,
            arg_len: 0,
        }
    }

    /// Address of buffer `label` (allocated on first use); None past 64 labels.
    pub fn label_addr(&mut self, label: &str) -> Option<u64> {
        let n = self.labels.len() as u64;
        let k = *self.labels.entry(label.to_string()).or_insert(n);
        (k < 64).then_some(BUF_BASE + k * BUF_STRIDE)
    }

    /// Lays `items` out at [`ARG_BASE`]; a usage error names what is wrong.
    pub fn build(&mut self, items: &[Item]) -> Result<u64, String> {
        let mut bytes = Vec::new();
        for it in items {
            match it {
                Item::Int { bytes: n, value } => {
                    bytes.extend_from_slice(&value.to_le_bytes()[..*n as usize]);
                }
                Item::Fd(name) => {
                    let fd = *self
                        .files
                        .get(name)
                        .ok_or_else(|| format!("no open file named {name:?}"))?;
                    bytes.extend_from_slice(&(fd as u32).to_le_bytes());
                }
                Item::Str(s) => {
                    bytes.extend_from_slice(s.as_bytes());
                    bytes.push(0);
                }
                Item::Ptr(label) => {
                    let a = self
                        .label_addr(label)
                        .ok_or_else(|| format!("buffer {label:?}: at most 64 buffers"))?;
                    bytes.extend_from_slice(&a.to_le_bytes());
                }
                Item::Zero(n) => bytes.resize(bytes.len() + *n as usize, 0),
            }
            if bytes.len() as u64 > ARG_MAX {
                return Err(format!("argument larger than {ARG_MAX} bytes"));
            }
        }
        // The previous argument's bytes (and what the kernel wrote back after them) do not
        // leak into this one.
        let old = self.arg_len.max(4096);
        self.caller.poke(ARG_BASE, &vec![0; old]);
        self.caller.poke(ARG_BASE, &bytes);
        self.arg_len = bytes.len();
        Ok(ARG_BASE)
    }

    /// Reads a little-endian integer of `bytes` bytes at `addr` of the scratch memory.
    pub fn read_int(&self, addr: u64, bytes: u8) -> u64 {
        let b = self.caller.peek(addr, bytes as usize);
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(&b);
        u64::from_le_bytes(w)
    }
}
