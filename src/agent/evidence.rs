//! The evidence store: content of unauthorized files copied before anyone cleans them up.
//!
//! Blobs are stored by BLAKE3 (`evidence/blobs/<hash>`), each with a JSON note of where and when it
//! was seen; the copy is re-hashed so a file that changed since it was judged is not mistaken for
//! the evidence. Text files also get a unified diff against the previous content when that content
//! is itself in the store (e.g. a file tampered with twice).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::event::ChangeEvent;

/// Where evidence goes and how much of it to keep.
pub struct Evidence {
    dir: PathBuf,
    max_file: u64,
    max_total: u64,
    /// Bytes in the store, counted once and then kept up to date (listing it per capture is
    /// quadratic in a burst of new files).
    used: std::cell::Cell<Option<u64>>,
}

impl Evidence {
    /// Evidence under `state_dir/evidence`.
    pub fn new(state_dir: &Path, max_file: u64, max_total: u64) -> Evidence {
        Evidence {
            dir: state_dir.join("evidence"),
            max_file,
            max_total,
            used: std::cell::Cell::new(None),
        }
    }

    fn used(&self) -> u64 {
        if let Some(u) = self.used.get() {
            return u;
        }
        let u = self.count_used();
        self.used.set(Some(u));
        u
    }

    fn count_used(&self) -> u64 {
        std::fs::read_dir(self.dir.join("blobs"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Copies the file behind an unauthorized event; returns the blob path, or why not.
    pub fn capture(
        &self,
        root: &Path,
        abs: &Path,
        host: &str,
        ev: &ChangeEvent,
    ) -> Result<PathBuf, String> {
        let Some(want) = &ev.blake3 else {
            return Err("no content".into());
        };
        let size = ev.size.unwrap_or(0);
        if size > self.max_file {
            return Err(format!("{size} bytes is over evidence.max_file_size"));
        }
        let blobs = self.dir.join("blobs");
        let blob = blobs.join(want);
        if !blob.exists() {
            if self.used() + size > self.max_total {
                return Err("evidence store is full (evidence.max_total)".into());
            }
            let data = read_no_follow(abs, self.max_file)
                .map_err(|e| format!("{}: {e}", abs.display()))?;
            if blake3::hash(&data).to_hex().as_str() != want {
                return Err("content changed since it was judged".into());
            }
            std::fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
            super::spool::write_atomic(&blob, &data).map_err(|e| e.to_string())?;
            self.used.set(Some(self.used() + data.len() as u64));
            if let Some(prev) = &ev.previous_blake3 {
                let old = blobs.join(prev);
                if let (Ok(a), true) = (std::fs::read(&old), is_text(&data))
                    && is_text(&a)
                {
                    let diff = unified_diff(
                        &String::from_utf8_lossy(&a),
                        &String::from_utf8_lossy(&data),
                        &ev.path,
                    );
                    let _ = write_renamed(&blobs.join(format!("{want}.diff")), diff.as_bytes());
                }
            }
        }
        let note = json!({
            "host": host, "tree": ev.tree, "root": root.display().to_string(), "path": ev.path,
            "path_bytes": ev.path_bytes, "seq": ev.seq, "status": ev.status, "change": ev.change,
            "observed_at": ev.observed_at, "blake3": want, "previous_blake3": ev.previous_blake3, "size": size,
        });
        let notes = self.dir.join("notes");
        std::fs::create_dir_all(&notes).map_err(|e| e.to_string())?;
        write_renamed(
            &notes.join(format!("{}-{}.json", ev.tree, ev.seq)),
            note.to_string().as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        Ok(blob)
    }
}

/// Whole-or-nothing write without fsync: notes and diffs can be rebuilt from the blobs and the
/// collector's events; only the blob (the content itself) is worth an fsync.
fn write_renamed(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn read_no_follow(abs: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(abs)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut data = Vec::new();
    f.take(max + 1).read_to_end(&mut data)?;
    Ok(data)
}

fn is_text(b: &[u8]) -> bool {
    !b.contains(&0) && std::str::from_utf8(b).is_ok()
}

/// A minimal unified diff (one hunk over the differing middle), enough to read a tamper at a glance.
pub fn unified_diff(old: &str, new: &str, name: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let ctx = 3usize;
    let start = prefix.saturating_sub(ctx);
    let a_end = (a.len() - suffix + ctx).min(a.len());
    let b_end = (b.len() - suffix + ctx).min(b.len());
    let mut out = format!(
        "--- a/{name}\n+++ b/{name}\n@@ -{},{} +{},{} @@\n",
        start + 1,
        a_end - start,
        start + 1,
        b_end - start
    );
    for l in &a[start..prefix] {
        out.push_str(&format!(" {l}\n"));
    }
    for l in &a[prefix..a.len() - suffix] {
        out.push_str(&format!("-{l}\n"));
    }
    for l in &b[prefix..b.len() - suffix] {
        out.push_str(&format!("+{l}\n"));
    }
    for l in &a[a.len() - suffix..a_end] {
        out.push_str(&format!(" {l}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_the_appended_line() {
        let d = unified_diff("a\nb\nc\n", "a\nb\nc\nevil()\n", "app.js");
        assert!(d.contains("+evil()"), "{d}");
        assert!(d.contains(" c"), "{d}");
        assert!(!d.contains("-a"), "{d}");
    }
}
