//! Engine errors, and their one mapping to Linux errnos.
//!
//! Variants carry a short lowercase message naming the offending field or value. The uAPI layer
//! turns them into errnos with [`Error::errno`], the single place where that mapping lives.

use crate::{Errno, PlatformError};

/// A failed engine operation. A failed operation leaves no state change behind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An argument is invalid (EINVAL).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// An address or size computation wraps (EOVERFLOW).
    #[error("overflow: {0}")]
    Overflow(String),
    /// The range overlaps an existing mapping (EEXIST).
    #[error("iova range 0x{iova:x}+0x{size:x} overlaps an existing mapping")]
    Exists {
        /// Requested iova.
        iova: u64,
        /// Requested size.
        size: u64,
    },
    /// The `dma_entry_limit` is exhausted (ENOSPC).
    #[error("dma entry limit reached")]
    NoSpace,
    /// No mapping covers the range (ENOENT).
    #[error("no mapping at 0x{iova:x}")]
    NotFound {
        /// Requested iova.
        iova: u64,
    },
    /// The operation conflicts with current state (EBUSY).
    #[error("busy: {0}")]
    Busy(String),
    /// Not permitted for this container type (EACCES).
    #[error("access denied: {0}")]
    Access(String),
    /// Not permitted (EPERM).
    #[error("not permitted: {0}")]
    Perm(String),
    /// No such device or no user context (ENODEV).
    #[error("no device: {0}")]
    NoDevice(String),
    /// RLIMIT_MEMLOCK or allocation failure (ENOMEM).
    #[error("out of memory: {0}")]
    NoMemory(String),
    /// A bad user address (EFAULT).
    #[error("bad address: {0}")]
    Fault(String),
    /// Too many entries in one call (E2BIG).
    #[error("too many entries: {0}")]
    TooBig(String),
    /// Unsupported request (ENOTTY).
    #[error("unsupported: {0}")]
    NotSupported(String),
    /// The platform failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

impl Error {
    /// The errno the kernel returns for this failure.
    pub fn errno(&self) -> Errno {
        match self {
            Error::Invalid(_) => Errno::EINVAL,
            Error::Overflow(_) => Errno::EOVERFLOW,
            Error::Exists { .. } => Errno::EEXIST,
            Error::NoSpace => Errno::ENOSPC,
            Error::NotFound { .. } => Errno::ENOENT,
            Error::Busy(_) => Errno::EBUSY,
            Error::Access(_) => Errno::EACCES,
            Error::Perm(_) => Errno::EPERM,
            Error::NoDevice(_) => Errno::ENODEV,
            Error::NoMemory(_) => Errno::ENOMEM,
            Error::Fault(_) => Errno::EFAULT,
            Error::TooBig(_) => Errno::E2BIG,
            Error::NotSupported(_) => Errno::ENOTTY,
            Error::Platform(e) => e.errno,
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn inval(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
