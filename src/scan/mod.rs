//! Scan: what is in a tree now. The walker lists every entry (never following symlinks, one
//! filesystem), the hasher streams each regular file through BLAKE3, `xattr` reads extended
//! attributes and ACLs, and `snapshot` runs them in parallel into one sorted list of [`Entry`].

pub mod entry;
pub mod hash;
pub mod snapshot;
pub mod walk;
pub mod xattr;

pub use entry::{Entry, Kind, Meta};
