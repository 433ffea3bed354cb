//! How the engine looks at a tree: the seam between judging and observing.
//!
//! The engine judges observations — sorted `(path, entry)` pairs — and does not care where they
//! come from. [`Observer`] is what produces them: [`Files`] walks and hashes a directory tree
//! today; another kind of tree (the rows of a database query, objects in a bucket) is one more
//! implementation of this trait, not a fork of the engine.
//!
//! Invariant: an observer never follows a symlink out of the tree and never opens anything but
//! regular files and directories (the file observer inherits this from `walk` and `snapshot`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::GlobSet;

use crate::scan::snapshot::{self, Entry, Kind, ScanError, ScanOptions, Snapshot, StatCache};
use crate::scan::walk::WalkOptions;
use crate::util::pathbytes::RelPath;

/// What an observer needs to know about the tree it looks at.
pub struct Scope<'a> {
    /// The tree root (may be a symlink, resolved at every look).
    pub root: &'a Path,
    /// Paths not examined at all.
    pub exclude: &'a GlobSet,
    /// Exact absolute paths skipped silently (the manifest and its signature inside the tree).
    pub skip: &'a [PathBuf],
    /// Descend into other filesystems.
    pub cross_filesystems: bool,
    /// Hashing threads (0: one per core).
    pub threads: usize,
}

/// Produces observations of a tree.
pub trait Observer: Send {
    /// Everything in the tree now, sorted by path. `cache` lets an unchanged entry reuse what
    /// was last observed (the stat cache); `None` looks at everything afresh.
    fn full(
        &self,
        scope: &Scope<'_>,
        cache: Option<Arc<dyn StatCache>>,
    ) -> Result<Snapshot, ScanError>;

    /// One path touched in real time (`abs`, which is `rel` below the root): what is there now
    /// (`None`: nothing), plus everything below it when it is a directory.
    fn path(&self, scope: &Scope<'_>, abs: &Path, rel: &RelPath) -> (Option<Entry>, Vec<Entry>);
}

/// A directory tree on a local filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct Files;

impl Files {
    fn options(scope: &Scope<'_>) -> ScanOptions {
        ScanOptions {
            walk: WalkOptions {
                exclude: scope.exclude.clone(),
                skip: scope.skip.to_vec(),
                cross_filesystems: scope.cross_filesystems,
            },
            threads: scope.threads,
            ..ScanOptions::default()
        }
    }
}

impl Observer for Files {
    fn full(
        &self,
        scope: &Scope<'_>,
        cache: Option<Arc<dyn StatCache>>,
    ) -> Result<Snapshot, ScanError> {
        let opts = ScanOptions {
            cache,
            ..Files::options(scope)
        };
        snapshot::scan(scope.root, &opts)
    }

    fn path(&self, scope: &Scope<'_>, abs: &Path, rel: &RelPath) -> (Option<Entry>, Vec<Entry>) {
        let entry = snapshot::examine(abs, rel.clone());
        let mut below = Vec::new();
        if let Some(e) = &entry
            && e.meta.kind == Kind::Dir
        {
            let opts = ScanOptions {
                prefix: Some(rel.clone()),
                ..Files::options(scope)
            };
            // A directory that vanished meanwhile has nothing below it to report.
            if let Ok(sub) = snapshot::scan(abs, &opts) {
                below = sub.entries;
            }
        }
        (entry, below)
    }
}
