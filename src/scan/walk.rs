//! Walking a tree: every entry, hidden or not, never following symlinks, one filesystem.
//!
//! The walker only lists; it stats directories (for the device check) and leaves files,
//! symlinks and special files to the hashing workers so that the expensive part runs in parallel.

use std::fs::FileType;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::GlobSet;
use walkdir::WalkDir;

use super::entry::Meta;
use crate::util::pathbytes::RelPath;

/// What to leave out of a walk.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Paths (relative, as globs) that are not examined.
    pub exclude: GlobSet,
    /// Exact absolute paths skipped silently: the manifest and its signature when they live in the tree.
    pub skip: Vec<PathBuf>,
    /// Descend into other filesystems (mount points inside the tree). Off by default.
    pub cross_filesystems: bool,
}

/// One thing the walker found.
#[derive(Debug)]
pub enum Found {
    /// A directory, already stat'ed; `descended` is false for a mount point we did not enter.
    Dir {
        abs: PathBuf,
        rel: RelPath,
        meta: Meta,
        descended: bool,
    },
    /// Anything else; the worker stats (and for files hashes) it.
    Other {
        abs: PathBuf,
        rel: RelPath,
        file_type: FileType,
    },
    /// A path the walker could not stat or list, with the reason.
    Problem { rel: RelPath, message: String },
    /// A path matched an exclusion: not examined.
    Excluded,
}

/// The walk could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The root is missing or unreadable.
    #[error("{path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The root is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
}

/// Walks `root` (following the root itself if it is a symlink, nothing below it) and hands every
/// entry to `sink`, pre-order.
pub fn walk(root: &Path, opts: &WalkOptions, mut sink: impl FnMut(Found)) -> Result<(), WalkError> {
    let root_meta = std::fs::metadata(root).map_err(|e| WalkError::Root {
        path: root.to_path_buf(),
        source: e,
    })?;
    if !root_meta.is_dir() {
        return Err(WalkError::NotADirectory(root.to_path_buf()));
    }
    let root_dev = root_meta.dev();
    let mut it = WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(true)
        .min_depth(1)
        .into_iter();
    while let Some(next) = it.next() {
        let entry = match next {
            Ok(e) => e,
            Err(e) => {
                if e.depth() == 0 {
                    let source = e
                        .into_io_error()
                        .unwrap_or_else(|| std::io::Error::other("walk failed"));
                    return Err(WalkError::Root {
                        path: root.to_path_buf(),
                        source,
                    });
                }
                let rel = e.path().map(|p| rel_of(root, p)).unwrap_or_default();
                let message = e
                    .io_error()
                    .map(|io| io.to_string())
                    .unwrap_or_else(|| e.to_string());
                sink(Found::Problem {
                    rel,
                    message: format!("cannot list: {message}"),
                });
                continue;
            }
        };
        let rel = rel_of(root, entry.path());
        let excluded = opts.exclude.is_match(rel.as_path());
        if excluded {
            // Never prune an excluded directory: `cache/*` matches `cache/a` but must not hide
            // `cache/a/b/evil.so`. Each path is judged by its own name; excluded ones are only
            // listed, never stat'ed or hashed (except directories, for the filesystem check).
            sink(Found::Excluded);
            if entry.file_type().is_dir()
                && !opts.cross_filesystems
                && entry
                    .metadata()
                    .map(|m| m.dev() != root_dev)
                    .unwrap_or(true)
            {
                it.skip_current_dir();
            }
            continue;
        }
        if !opts.skip.is_empty() && opts.skip.iter().any(|s| s == entry.path()) {
            continue;
        }
        if entry.file_type().is_dir() {
            match entry.metadata() {
                Ok(m) => {
                    let descended = opts.cross_filesystems || m.dev() == root_dev;
                    if !descended {
                        it.skip_current_dir();
                    }
                    sink(Found::Dir {
                        abs: entry.path().to_path_buf(),
                        rel,
                        meta: Meta::from_std(&m),
                        descended,
                    });
                }
                Err(e) => {
                    it.skip_current_dir();
                    sink(Found::Problem {
                        rel,
                        message: format!("cannot stat: {e}"),
                    });
                }
            }
        } else {
            sink(Found::Other {
                abs: entry.path().to_path_buf(),
                rel,
                file_type: entry.file_type(),
            });
        }
    }
    Ok(())
}

fn rel_of(root: &Path, p: &Path) -> RelPath {
    let rel = p.strip_prefix(root).unwrap_or(p);
    RelPath::from_bytes(rel.as_os_str().as_bytes().to_vec())
}
