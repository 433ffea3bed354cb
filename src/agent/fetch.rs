//! Manifests and change entries distributed by the collector (DESIGN §5, §8).
//!
//! A tree without a `manifest` path takes the signed manifest the collector holds for it
//! (`GET /api/v1/manifests/{tree}`), and every agent takes the collector's change entries
//! (`GET /api/v1/changes`) beside `[changes] dir`. They are written as files in the state dir, in
//! the same form as local ones, and the engine reads them like local ones, except that a valid
//! signature by one of this agent's own trusted keys is always required: a compromised collector
//! can authorize nothing. Without `[trust] release_keys` (or `approver_keys`) nothing of that
//! kind is fetched.

use std::path::Path;

use serde::Deserialize;

use super::Sink;
use super::config::AgentConfig;
use crate::client::ClientError;

/// A signed document as the collector serves it.
#[derive(Debug, Deserialize)]
struct Doc {
    manifest: Option<String>,
    toml: Option<String>,
    id: Option<String>,
    minisig: Option<String>,
}

/// What one fetch changed on disk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Trees whose manifest file was written.
    pub manifests: Vec<String>,
    /// Change entries written.
    pub changes: usize,
}

/// Fetches what the collector distributes and writes what differs from the files kept; also
/// says what could not be fetched (the rest is kept and acted on all the same).
pub async fn fetch(sink: &Sink, cfg: &AgentConfig) -> (Fetched, Vec<String>) {
    let mut out = Fetched::default();
    let mut failed = Vec::new();
    let wanted = cfg
        .trees
        .iter()
        .filter(|t| t.manifest.is_none() && !cfg.release_keys.is_empty());
    for tree in wanted {
        // One tree's trouble does not keep the others (or the tickets) from arriving.
        match fetch_manifest(sink, cfg, &tree.name).await {
            Ok(true) => out.manifests.push(tree.name.clone()),
            Ok(false) => {}
            Err(e) => failed.push(format!("manifest for tree {:?}: {e}", tree.name)),
        }
    }
    if !cfg.approver_keys.is_empty() {
        match changes(sink).await {
            Ok(docs) => {
                let dir = super::layout::fetched_changes(&cfg.state_dir);
                for doc in docs {
                    let (Some(id), Some(text)) = (doc.id, doc.toml) else {
                        failed.push("a change entry without `id` or `toml`".into());
                        continue;
                    };
                    if !safe_file_stem(&id) {
                        tracing::warn!(
                            id,
                            "change entry from the collector skipped: its id is not a file name"
                        );
                        continue;
                    }
                    let path = dir.join(format!("{id}.toml"));
                    match keep(&path, text.as_bytes(), doc.minisig.as_deref()) {
                        Ok(true) => out.changes += 1,
                        Ok(false) => {}
                        Err(e) => failed.push(e),
                    }
                }
            }
            Err(e) => failed.push(format!("change entries: {e}")),
        }
    }
    (out, failed)
}

/// Fetches one tree's manifest; whether a new one was written.
async fn fetch_manifest(sink: &Sink, cfg: &AgentConfig, tree: &str) -> Result<bool, String> {
    let Some(doc) = manifest(sink, tree).await.map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    let Some(text) = doc.manifest else {
        return Err("no `manifest` text".into());
    };
    keep(
        &super::layout::fetched_manifest(&cfg.state_dir, tree),
        text.as_bytes(),
        doc.minisig.as_deref(),
    )
}

async fn manifest(sink: &Sink, tree: &str) -> Result<Option<Doc>, ClientError> {
    match sink {
        Sink::None => Ok(None),
        Sink::Remote(c) => {
            let path = format!("/api/v1/manifests/{}", crate::client::encode(tree));
            match c.get_json::<Doc>(&path).await {
                Ok(d) => Ok(Some(d)),
                Err(ClientError::Status { status: 404, .. }) => Ok(None),
                Err(e) => Err(e),
            }
        }
        Sink::Embedded(svc) => {
            let tree = tree.to_string();
            let m = super::in_service(svc, move |s| s.manifest(&tree)).await?;
            Ok(m.map(|m| Doc {
                manifest: Some(m.manifest),
                toml: None,
                id: None,
                minisig: m.minisig,
            }))
        }
    }
}

async fn changes(sink: &Sink) -> Result<Vec<Doc>, ClientError> {
    match sink {
        Sink::None => Ok(Vec::new()),
        Sink::Remote(c) => c.get_json("/api/v1/changes").await,
        Sink::Embedded(svc) => {
            let list = super::in_service(svc, |s| s.changes()).await?;
            Ok(list
                .into_iter()
                .map(|c| Doc {
                    manifest: None,
                    toml: Some(c.toml),
                    id: Some(c.id),
                    minisig: c.minisig,
                })
                .collect())
        }
    }
}

/// A ticket id usable as a file name in the fetched directory (never a path).
fn safe_file_stem(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Writes `text` at `path` and its signature beside it, unless both are already there; returns
/// whether anything was written. The signature goes first: a reader that sees the new text sees
/// its signature, and one that sees an old text with a new signature refuses it until the text
/// follows.
fn keep(path: &Path, text: &[u8], minisig: Option<&str>) -> Result<bool, String> {
    let sig = crate::sign::sig_path(path);
    let same_text = std::fs::read(path).is_ok_and(|b| b == text);
    let old_sig = std::fs::read(&sig).ok();
    let same_sig = old_sig.as_deref() == minisig.map(str::as_bytes);
    if same_text && same_sig {
        return Ok(false);
    }
    let fail = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    }
    match minisig {
        Some(s) => {
            crate::util::fsutil::write_atomic(&sig, s.as_bytes()).map_err(|e| fail(&sig, e))?
        }
        None => match std::fs::remove_file(&sig) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(&sig, e)),
        },
    }
    crate::util::fsutil::write_atomic(path, text).map_err(|e| fail(path, e))?;
    Ok(true)
}

/// Looks for manifests and change entries on the collector every heartbeat period; what
/// arrives is judged by a scan of the trees concerned at once. Runs until aborted.
pub(super) fn spawn_poller(
    mut live_rx: tokio::sync::watch::Receiver<super::Live>,
    tx: std::sync::mpsc::Sender<super::Command>,
) -> tokio::task::JoinHandle<()> {
    use super::{Command, Live};
    tokio::spawn(async move {
        loop {
            let Live { cfg, sink } = live_rx.borrow_and_update().clone();
            tokio::select! {
                _ = tokio::time::sleep(cfg.heartbeat) => {},
                r = live_rx.changed() => if r.is_err() { return } else { continue },
            }
            if !cfg.has_collector() {
                continue;
            }
            let (f, failed) = fetch(&sink, &cfg).await;
            if !failed.is_empty() {
                tracing::debug!(error = %failed.join("; "), "not everything could be fetched from the collector");
            }
            if f.changes > 0 {
                tracing::info!(entries = f.changes, manifests = ?f.manifests, "fetched from the collector");
                let _ = tx.send(Command::Scan {
                    tree: None,
                    rehash: None,
                });
            } else {
                for tree in f.manifests {
                    tracing::info!(tree = %tree, "manifest fetched from the collector");
                    let _ = tx.send(Command::Scan {
                        tree: Some(tree),
                        rehash: None,
                    });
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_are_paths_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "a\\b", "a b", "\u{e9}"] {
            assert!(!safe_file_stem(bad), "{bad:?}");
        }
        for ok in ["CHG-1042", "chg_7.v2"] {
            assert!(safe_file_stem(ok), "{ok:?}");
        }
    }

    #[test]
    fn keep_writes_once_and_follows_signature_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m").join("shop.json");
        assert!(keep(&p, b"{}", Some("sig1")).unwrap());
        assert!(!keep(&p, b"{}", Some("sig1")).unwrap(), "unchanged");
        assert!(keep(&p, b"{}", Some("sig2")).unwrap(), "re-signed");
        assert!(keep(&p, b"{}", None).unwrap(), "signature withdrawn");
        assert!(!crate::sign::sig_path(&p).exists());
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
    }
}
