//! Linux errno values used by the engine.
//!
//! The engine reports failures as [`crate::Error`]; each error maps to exactly one
//! [`Errno`] (see [`crate::Error::errno`]). The numbers are the x86-64 Linux ones, so the
//! uAPI layer can hand them to a caller unchanged.

use serde::Serialize;

/// A Linux errno value (positive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident = $val:expr),* $(,)?) => {
        impl Errno {
            $(#[doc = concat!("`", stringify!($name), "`")] pub const $name: Errno = Errno($val);)*

            /// The symbolic name (`"EINVAL"`), or `None` for a number this table lacks.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($val => Some(stringify!($name)),)* _ => None }
            }

            /// Parses a symbolic name such as `EINVAL`.
            pub fn from_name(name: &str) -> Option<Errno> {
                match name { $(stringify!($name) => Some(Errno($val)),)* _ => None }
            }
        }
    };
}

errnos! {
    EPERM = 1,
    ENOENT = 2,
    EINTR = 4,
    EBADF = 9,
    EAGAIN = 11,
    ENOMEM = 12,
    EACCES = 13,
    EFAULT = 14,
    EBUSY = 16,
    EEXIST = 17,
    ENODEV = 19,
    EINVAL = 22,
    ENOSPC = 28,
    ENOTTY = 25,
    E2BIG = 7,
    EOVERFLOW = 75,
    EBADFD = 77,
    EIO = 5,
    EOPNOTSUPP = 95,
    EMSGSIZE = 90,
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "errno {}", self.0),
        }
    }
}
