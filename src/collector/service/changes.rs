//! Signed uploads: change entries (register, list, approve, with re-classification of the open
//! events an approval covers) and release manifests.
//!
//! Invariants: without a `[trust]` table nothing is accepted (see [`Service::uploads_allowed`]);
//! a signature is checked whenever one comes and keys are configured, and required when
//! `require_signatures` is set; an entry approved by its own requester is refused unless
//! `allow_self_approval`. Storing an approved entry re-classifies, in the same call, every open
//! unauthorized event it covers.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Service, ServiceError};
use crate::judge::changelog::{self, ChangeEntry};
use crate::judge::classify::{self, StoredChangeRef};
use crate::judge::manifest::{self, Manifest};
use crate::sign;
use crate::store::{EventQuery, Store, StoreError, StoredChange, StoredManifest};
use crate::util::pathbytes::RelPath;
use crate::util::timefmt;

/// An uploaded document with its signature, as the API carries it (`manifest` for
/// `PUT /api/v1/manifests/{tree}`, `toml` for change entries).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDoc {
    /// Manifest JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Change entry TOML text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toml: Option<String>,
    /// The minisign signature of that text.
    #[serde(default)]
    pub minisig: Option<String>,
}

/// What storing a change entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeStored {
    /// Always true (the API's answer shape).
    pub stored: bool,
    /// Open events the entry re-classified.
    pub reclassified: u64,
}

/// What storing a manifest did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestStored {
    /// Tree.
    pub tree: String,
    /// Release id.
    pub release: String,
}

impl Service {
    /// Without a `[trust]` table nothing uploaded could be checked: manifests and change entries
    /// are refused (the request is valid; the collector's configuration is what conflicts with
    /// it, and retrying will not help until an operator sets the keys).
    pub fn uploads_allowed(&self) -> Result<(), ServiceError> {
        match &self.cfg.uploads_refused {
            Some(why) => Err(ServiceError::Refused(why.clone())),
            None => Ok(()),
        }
    }

    /// Latest version of every change entry.
    pub fn changes(&self) -> Result<Vec<StoredChange>, ServiceError> {
        let mut list = self.store.changes()?;
        for c in &mut list {
            c.verified_approver = self.verified_approver(c);
        }
        Ok(list)
    }

    /// Registers a change entry (new, or a new version). `expect_id` is the id the caller
    /// named (the approve route's URL), which the entry must carry.
    pub fn register_change(
        &self,
        doc: SignedDoc,
        expect_id: Option<&str>,
        now: Timestamp,
    ) -> Result<ChangeStored, ServiceError> {
        self.uploads_allowed()?;
        let text = doc
            .toml
            .ok_or_else(|| ServiceError::Invalid("body: missing field `toml`".into()))?;
        let entry = ChangeEntry::parse(&text, Path::new("change.toml"))
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if let Some(id) = expect_id
            && id != entry.id
        {
            return Err(ServiceError::Invalid(format!(
                "id: {:?} does not match {id:?} in the URL",
                entry.id
            )));
        }
        let origin = PathBuf::from(format!("{}.toml", entry.id));
        let signer = self.check_signature(
            text.as_bytes(),
            &origin,
            doc.minisig.as_deref(),
            &self.cfg.approver_keys,
        )?;
        // The same rule as `check` and the agent: a key bound to a person approves only as them.
        changelog::approval_rules(&entry, signer, self.cfg.allow_self_approval)
            .map_err(|why| ServiceError::Forbidden(format!("{}: {why}", entry.id)))?;
        self.store
            .put_change(&entry.id, &text, doc.minisig.as_deref(), now)?;
        let reclassified = apply_entry(self.store.as_ref(), &entry, now)?;
        Ok(ChangeStored {
            stored: true,
            reclassified,
        })
    }

    /// Stores a new version of an existing entry (typically with its approval added).
    pub fn approve_change(
        &self,
        id: &str,
        doc: SignedDoc,
        now: Timestamp,
    ) -> Result<ChangeStored, ServiceError> {
        self.uploads_allowed()?;
        if !self.store.changes()?.iter().any(|c| c.id == id) {
            return Err(ServiceError::NotFound(format!("change {id:?} not found")));
        }
        self.register_change(doc, Some(id), now)
    }

    /// Stores a release manifest for `tree` after the signature policy.
    pub fn put_manifest(
        &self,
        tree: &str,
        doc: SignedDoc,
        now: Timestamp,
    ) -> Result<ManifestStored, ServiceError> {
        self.uploads_allowed()?;
        let text = doc
            .manifest
            .ok_or_else(|| ServiceError::Invalid("body: missing field `manifest`".into()))?;
        let origin = PathBuf::from(format!("manifests/{tree}"));
        self.check_signature(
            text.as_bytes(),
            &origin,
            doc.minisig.as_deref(),
            &self.cfg.release_keys,
        )?;
        let m = Manifest::parse(text.as_bytes(), &origin)
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if m.tree != tree {
            return Err(ServiceError::Invalid(format!(
                "manifest is for tree {:?}, not {tree:?}",
                m.tree
            )));
        }
        self.store.put_manifest(&StoredManifest {
            tree: tree.to_string(),
            release: m.release.clone(),
            manifest: text,
            minisig: doc.minisig,
            received_at: timefmt::format_timestamp(now),
        })?;
        Ok(ManifestStored {
            tree: m.tree,
            release: m.release,
        })
    }

    /// The newest manifest of a tree, if it has one.
    pub fn manifest(&self, tree: &str) -> Result<Option<StoredManifest>, ServiceError> {
        Ok(self.store.manifest(tree)?)
    }

    /// Checks the signature when one came and keys are set; the key that signed, if checked.
    fn check_signature<'k>(
        &self,
        data: &[u8],
        origin: &Path,
        sig: Option<&str>,
        keys: &'k [sign::TrustedKey],
    ) -> Result<Option<&'k sign::TrustedKey>, ServiceError> {
        match sig {
            Some(sig) if !keys.is_empty() => sign::verify_text(data, origin, sig, keys)
                .map(Some)
                .map_err(|e| ServiceError::Invalid(e.to_string())),
            _ if self.cfg.require_signatures => Err(ServiceError::Invalid(format!(
                "{}: a valid minisig is required (require_signatures = true)",
                origin.display()
            ))),
            _ => Ok(None),
        }
    }

    /// The approver a stored entry's signature proves under this collector's keys (for lists
    /// and events); `None` when unsigned, not verifiable, or not approved.
    pub fn verified_approver(&self, c: &StoredChange) -> Option<String> {
        let sig = c.minisig.as_deref()?;
        let entry = ChangeEntry::parse(&c.toml, Path::new("change.toml")).ok()?;
        let origin = PathBuf::from(format!("{}.toml", c.id));
        let signer =
            sign::verify_text(c.toml.as_bytes(), &origin, sig, &self.cfg.approver_keys).ok()?;
        changelog::approval_rules(&entry, Some(signer), true)
            .ok()
            .flatten()
    }
}

/// Re-classifies every open unauthorized event an approved entry covers; returns how many.
pub(super) fn apply_entry(
    s: &dyn Store,
    entry: &ChangeEntry,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let Some((by, at)) = &entry.approval else {
        return Ok(0);
    };
    let open = s.events(&EventQuery {
        open_only: true,
        status: Some("unauthorized".into()),
        ..EventQuery::default()
    })?;
    let mut n = 0;
    for e in open {
        let Ok(path) = RelPath::from_json(&e.path, e.path_bytes.as_deref()) else {
            continue;
        };
        let (Ok(t0), Ok(observed_at)) = (
            timefmt::parse_timestamp(&e.window_start),
            timefmt::parse_timestamp(&e.observed_at),
        ) else {
            continue;
        };
        let c = StoredChangeRef {
            host: &e.host,
            tree: &e.tree,
            path: &path,
            blake3: e
                .blake3
                .as_deref()
                .and_then(|h| manifest::parse_hash(h).ok()),
            removed: e.change == "removed",
            t0,
            observed_at,
        };
        if let Some(status) = classify::reclassify(&c, entry, now) {
            let reason = format!(
                "approved by {by} at {} under {}",
                timefmt::format_timestamp(*at),
                entry.id
            );
            s.reclassify(e.id, &status.to_string(), &reason, now)?;
            n += 1;
        }
    }
    Ok(n)
}
