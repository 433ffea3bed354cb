//! Imported change entries (DESIGN §12.2): storing what the ITSM poller signed, as new versions
//! when a ticket changes, and the import status per source for `GET /api/v1/itsm` and
//! `/metrics`.
//!
//! Invariants: an imported entry goes through the same approval rules as an upload (signature
//! by the import key, approver binding, separation of duties) and re-classifies the open
//! events it covers; a ticket that did not change stores nothing (no version churn at each
//! poll).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jiff::Timestamp;
use serde::Serialize;

use super::{Service, ServiceError};
use crate::judge::changelog::{self, ChangeEntry};
use crate::sign;
use crate::util::timefmt;

/// What importing one ticket did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A new entry.
    Imported,
    /// A new version of an entry imported before (the ticket was edited).
    Updated,
    /// Same text as stored: nothing written.
    Unchanged,
    /// The ticket was cancelled or sent back: a version without approval was stored.
    Withdrawn,
    /// The ticket could not become an entry (the reason is kept).
    Refused,
}

impl Outcome {
    /// Every outcome, in the order `/metrics` lists them.
    pub const ALL: [Outcome; 5] = [
        Outcome::Imported,
        Outcome::Updated,
        Outcome::Unchanged,
        Outcome::Withdrawn,
        Outcome::Refused,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Imported => "imported",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Withdrawn => "withdrawn",
            Outcome::Refused => "refused",
        }
    }
}

/// Import status of one source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    /// Source name.
    pub name: String,
    /// `servicenow` or `jira`.
    pub kind: String,
    /// Last poll attempt.
    pub last_poll: Option<String>,
    /// Last poll that read the tickets.
    pub last_success: Option<String>,
    /// Why the last poll failed (cleared by a good one).
    pub last_error: Option<String>,
    /// Tickets the last good poll read.
    pub tickets_seen: u64,
    /// Totals since start, per outcome.
    pub totals: BTreeMap<String, u64>,
    /// Tickets refused at the last good poll, with the reason.
    pub refused: BTreeMap<String, String>,
    /// Polls that failed since start.
    pub failed_polls: u64,
    /// Webhook calls refused (bad or missing signature) since start.
    pub webhook_refused: u64,
}

/// Status of every source, shared by the poller, the API and `/metrics`.
#[derive(Debug, Default)]
pub struct ItsmBoard {
    sources: Mutex<BTreeMap<String, SourceStatus>>,
}

impl ItsmBoard {
    /// Registers a source (so it is listed before its first poll).
    pub fn add(&self, name: &str, kind: &str) {
        let mut s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        s.entry(name.to_string()).or_insert_with(|| SourceStatus {
            name: name.to_string(),
            kind: kind.to_string(),
            totals: Outcome::ALL
                .iter()
                .map(|o| (o.as_str().to_string(), 0))
                .collect(),
            ..SourceStatus::default()
        });
    }

    /// Changes one source's status.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut SourceStatus)) {
        let mut s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = s.get_mut(name) {
            f(st);
        }
    }

    /// A copy of every source's status.
    pub fn snapshot(&self) -> Vec<SourceStatus> {
        let s = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        s.values().cloned().collect()
    }
}

impl Service {
    /// Stores an entry the ITSM poller built and signed with the import key, as a new entry or
    /// a new version; `withdrawal` marks a version that removes the approval.
    pub fn import_change(
        &self,
        text: &str,
        minisig: &str,
        withdrawal: bool,
        now: Timestamp,
    ) -> Result<Outcome, ServiceError> {
        let entry = ChangeEntry::parse(text, Path::new("ticket.toml"))
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let previous = self.store.changes()?.into_iter().find(|c| c.id == entry.id);
        if previous.as_ref().is_some_and(|p| p.toml == text) {
            return Ok(Outcome::Unchanged);
        }
        let keys = self.import_keys()?;
        let origin = PathBuf::from(format!("{}.toml", entry.id));
        let signer = sign::verify_text(text.as_bytes(), &origin, minisig, &keys)?;
        changelog::approval_rules(&entry, Some(signer), self.cfg.allow_self_approval)
            .map_err(|why| ServiceError::Forbidden(format!("{}: {why}", entry.id)))?;
        self.store.put_change(&entry.id, text, Some(minisig), now)?;
        super::changes::apply_entry(self.store.as_ref(), &entry, now)?;
        Ok(match (withdrawal, previous) {
            (true, _) => Outcome::Withdrawn,
            (false, Some(_)) => Outcome::Updated,
            (false, None) => Outcome::Imported,
        })
    }

    /// The latest stored text of an entry, if any (the poller withdraws from it).
    pub fn change_text(&self, id: &str) -> Result<Option<String>, ServiceError> {
        Ok(self
            .store
            .changes()?
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| c.toml))
    }

    fn import_keys(&self) -> Result<Vec<sign::TrustedKey>, ServiceError> {
        let itsm = self.cfg.itsm.as_ref().ok_or_else(|| {
            ServiceError::Refused("no [itsm] table: imports are not configured".into())
        })?;
        Ok(vec![itsm.public_key()?])
    }

    /// Import status per source (`GET /api/v1/itsm`).
    pub fn itsm_status(&self) -> Vec<SourceStatus> {
        self.itsm.snapshot()
    }
}

/// Now, as the status shows times.
pub fn stamp(now: Timestamp) -> String {
    timefmt::format_timestamp(now)
}
