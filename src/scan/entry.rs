//! One path as the scanner saw it: its type, its stat fields and, in an [`Entry`], its content
//! hash, link target and attributes. Shared by the walker, the hasher and the snapshot, which
//! is why it lives apart from all three.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use serde::{Deserialize, Serialize};

use super::xattr::Xattrs;
use crate::util::pathbytes::RelPath;

/// The type of a filesystem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (never followed).
    Symlink,
    /// Named pipe (never opened).
    Fifo,
    /// Unix socket (never opened).
    Socket,
    /// Character device (never opened).
    CharDevice,
    /// Block device (never opened).
    BlockDevice,
}

impl Kind {
    /// Its one-byte code in the agent's binary state files.
    pub fn code(self) -> u8 {
        match self {
            Kind::File => 0,
            Kind::Dir => 1,
            Kind::Symlink => 2,
            Kind::Fifo => 3,
            Kind::Socket => 4,
            Kind::CharDevice => 5,
            Kind::BlockDevice => 6,
        }
    }

    /// The kind of a code written by [`Kind::code`].
    pub fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            0 => Kind::File,
            1 => Kind::Dir,
            2 => Kind::Symlink,
            3 => Kind::Fifo,
            4 => Kind::Socket,
            5 => Kind::CharDevice,
            6 => Kind::BlockDevice,
            _ => return None,
        })
    }

    /// The name used in JSON and text output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDevice => "char_device",
            Kind::BlockDevice => "block_device",
        }
    }
}

/// The stat fields driftwatch records for every path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Entry type.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, ns since the epoch (recorded, never trusted: `touch -r` sets it).
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch (cannot be set back from user space).
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
    /// Hard link count.
    pub nlink: u64,
}

impl Meta {
    /// Extracts the recorded fields from `std` metadata (taken without following symlinks).
    pub fn from_std(m: &Metadata) -> Meta {
        let ft = m.file_type();
        let kind = if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_char_device() {
            Kind::CharDevice
        } else {
            Kind::BlockDevice
        };
        Meta {
            kind,
            size: m.size(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
            dev: m.dev(),
            nlink: m.nlink(),
        }
    }
}

/// One path in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the tree root.
    pub path: RelPath,
    /// Its metadata.
    pub meta: Meta,
    /// BLAKE3 of the content, for regular files that could be read.
    pub blake3: Option<[u8; 32]>,
    /// Link target, for symlinks (raw bytes).
    pub target: Option<Vec<u8>>,
    /// Why the path could not be fully examined (it is then `unverifiable`).
    pub problem: Option<String>,
    /// Extended attributes and ACLs (`None`: the path has none).
    pub xattrs: Option<Xattrs>,
}
