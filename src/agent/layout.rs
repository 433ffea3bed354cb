//! The state dir's layout, in one place (DESIGN §9; `docs/sysadmin.md` "The state dir"):
//!
//! ```text
//! STATE_DIR/trees/TREE/{state.json,snapshot.bin,manifest.json}   what each tree remembers
//! STATE_DIR/fetched/manifests/TREE.json(.minisig)                 manifests from the collector
//! STATE_DIR/fetched/changes/                                      change entries from the collector
//! STATE_DIR/spool/                                                events not yet acknowledged
//! STATE_DIR/evidence/                                             copies of unauthorized content
//! ```

use std::path::{Path, PathBuf};

/// Where a tree's state files live.
pub fn tree_dir(state_dir: &Path, tree: &str) -> PathBuf {
    state_dir.join("trees").join(tree)
}

/// Where the manifest fetched for `tree` is kept.
pub fn fetched_manifest(state_dir: &Path, tree: &str) -> PathBuf {
    state_dir
        .join("fetched")
        .join("manifests")
        .join(format!("{tree}.json"))
}

/// Where fetched change entries are kept.
pub fn fetched_changes(state_dir: &Path) -> PathBuf {
    state_dir.join("fetched").join("changes")
}
