//! The collector's storage: one interface, SQLite behind it by default, PostgreSQL for a fleet
//! whose collector instances share one database.
//!
//! The API layer only sees [`Store`]; both backends hash and count through [`records`], so the
//! same history gives the same chain whichever database holds it.
//! History is tamper-evident: events, re-classifications and sealed daily KPI rows form one hash
//! chain (see [`chain`]); `verify_chain` names the first record that does not fit.

pub mod chain;
pub mod outbox;
pub mod postgres;
pub mod records;
pub mod sql;
pub mod sqlite;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;

use crate::event::{EventBatch, Heartbeat, IngestResult};
use crate::kpi::HostDay;

/// A storage failure, naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("{context}: {message}")]
    Db { context: String, message: String },
    /// The storage URL is not understood.
    #[error("storage {0:?}: expected sqlite:///path/to/collector.db or postgres://user@host/db")]
    BadUrl(String),
    /// The database was written by a newer driftwatch.
    #[error(
        "{path}: schema version {found} is newer than this driftwatch understands ({supported})"
    )]
    Schema {
        path: String,
        found: i64,
        supported: i64,
    },
    /// A named record does not exist.
    #[error("{0} not found")]
    NotFound(String),
}

/// Access roles (DESIGN §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Posts one host's data.
    Agent,
    /// Reads KPI, events, audit.
    Reader,
    /// Manages changes, manifests, tokens.
    Admin,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Reader => "reader",
            Role::Admin => "admin",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "agent" => Some(Role::Agent),
            "reader" => Some(Role::Reader),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A stored access token (its secret is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Token {
    /// Row id, for `token revoke`.
    pub id: i64,
    /// Role.
    pub role: Role,
    /// Host an agent token is bound to.
    pub host: Option<String>,
    /// Free text.
    pub label: String,
    /// Creation time.
    pub created_at: String,
    /// Revocation time, if revoked.
    pub revoked_at: Option<String>,
}

/// An event as stored, with what the collector knows about it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct StoredEvent {
    /// Store-wide id.
    pub id: i64,
    /// Host.
    pub host: String,
    /// The agent's sequence number (unique per host).
    pub seq: u64,
    /// Environment.
    pub environment: String,
    /// Tree.
    pub tree: String,
    /// Path (lossy UTF-8).
    pub path: String,
    /// Exact path bytes (hex) when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<String>,
    /// Change kind.
    pub change: String,
    /// Current status (after any re-classification).
    pub status: String,
    /// Status the agent reported.
    pub original_status: String,
    /// Still unauthorized and not yet back to its approved state.
    pub open: bool,
    /// When the agent observed it.
    pub observed_at: String,
    /// Start of the observation window.
    pub window_start: String,
    /// When the collector received it (the KPI counts it on this day).
    pub received_at: String,
    /// New content hash.
    pub blake3: Option<String>,
    /// Previous content hash.
    pub previous_blake3: Option<String>,
    /// New size.
    pub size: Option<u64>,
    /// What a `metadata` change touched (`security.capability added`), when the agent said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Not stored: for `change:`/`retroactive:` events, the approver the entry's signature
    /// proves (DESIGN §12.2), filled in by the service when it lists events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_approver: Option<String>,
}

/// Filters for listing events.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// First day (inclusive, in the KPI timezone).
    pub from: Option<Date>,
    /// Last day (inclusive).
    pub to: Option<Date>,
    /// Only this host.
    pub host: Option<String>,
    /// Only this status (`unauthorized`, `change:CHG-1`, or a prefix like `retroactive`).
    pub status: Option<String>,
    /// Only open (unresolved unauthorized) events.
    pub open_only: bool,
    /// At most this many, newest last.
    pub limit: Option<u64>,
}

/// A host as the collector sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostInfo {
    /// Host name.
    pub host: String,
    /// Environment.
    pub environment: String,
    /// First heartbeat or report.
    pub first_seen: String,
    /// Last heartbeat or report.
    pub last_seen: String,
    /// Agent version from the last heartbeat.
    pub agent_version: String,
    /// Highest event sequence number received.
    pub last_seq: u64,
    /// Sequence numbers skipped so far (events the agent numbered but never delivered).
    pub missing_seqs: u64,
    /// Replayed events refused.
    pub replays: u64,
    /// Events the agent reports it dropped from a full spool.
    pub spool_dropped: u64,
    /// Events waiting in the agent's spool, as of its last heartbeat.
    pub spool_depth: u64,
    /// Open unauthorized changes.
    pub open_unauthorized: u64,
    /// No longer expected (its agent tokens were revoked).
    pub retired: bool,
    /// Seconds since it was last seen (the API marks it silent beyond `silent_after`).
    pub silent_for_seconds: i64,
    /// Digest of the agent's effective config, from its last heartbeat (`None`: an agent
    /// that does not report it).
    pub config_digest: Option<String>,
    /// Whether any tree excludes more than its manifest in force (DESIGN §12.1).
    pub coverage_reduced: bool,
    /// Per tree, the exclusions its last heartbeat reported (empty from older agents).
    pub trees: Vec<HostTree>,
}

/// One tree's exclusions on a host, as its last heartbeat reported them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostTree {
    /// Tree name.
    pub tree: String,
    /// Effective exclusions (the agent config's and the manifest in force's).
    pub exclude: Vec<String>,
    /// The config's exclusions the manifest in force does not carry.
    pub local_exclude: Vec<String>,
    /// `local_exclude` is not empty: the host watches less than the release asks.
    pub coverage_reduced: bool,
}

/// What storing a heartbeat found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    /// The host's reported coverage (config digest or any tree's exclusions) differs from what
    /// its previous heartbeat reported: where a `coverage` alert will hook in (§12.3).
    pub coverage_changed: bool,
}

/// The latest scan summary of one tree on one host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatestScan {
    /// Host.
    pub host: String,
    /// Tree.
    pub tree: String,
    /// How long the scan took.
    pub seconds: f64,
    /// When it finished (RFC 3339, agent clock).
    pub finished_at: String,
}

/// Keeps, per (host, tree), the scan that finished last; rows come with their receipt time.
///
/// `finished_at` is compared as a time, not as text: agents may write any RFC 3339 offset. Ties
/// (and the unparsable values a hand-edited database could hold) go to the later receipt.
fn keep_latest(rows: impl IntoIterator<Item = (LatestScan, i64)>) -> Vec<LatestScan> {
    type Key = (Option<Timestamp>, i64);
    let mut best: BTreeMap<(String, String), (Key, LatestScan)> = BTreeMap::new();
    for (scan, received) in rows {
        let key = (scan.finished_at.parse::<Timestamp>().ok(), received);
        match best.entry((scan.host.clone(), scan.tree.clone())) {
            Entry::Vacant(v) => {
                v.insert((key, scan));
            }
            Entry::Occupied(mut o) => {
                if key > o.get().0 {
                    o.insert((key, scan));
                }
            }
        }
    }
    best.into_values().map(|(_, scan)| scan).collect()
}

/// A change entry as the collector keeps it: its exact TOML and signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StoredChange {
    /// Ticket id.
    pub id: String,
    /// The TOML text, exactly as signed.
    pub toml: String,
    /// The minisign signature of that text, if any.
    pub minisig: Option<String>,
    /// When the collector received this version.
    pub received_at: String,
    /// Not stored: the approver the signature proves under the collector's keys (DESIGN
    /// §12.2), filled in by the service when it lists entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_approver: Option<String>,
}

/// A signed manifest as the collector keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredManifest {
    /// Tree name.
    pub tree: String,
    /// Release id.
    pub release: String,
    /// The manifest JSON, exactly as signed.
    pub manifest: String,
    /// Its signature.
    pub minisig: Option<String>,
    /// When received.
    pub received_at: String,
}

/// The head of the hash chain: what `audit seal` signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChainHead {
    /// Number of records in the chain.
    pub records: u64,
    /// Hash of the last record (hex); the genesis value when empty.
    pub head: String,
}

/// Outcome of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChainReport {
    /// Records checked.
    pub records: u64,
    /// Head after the walk.
    pub head: String,
    /// The first record that does not fit, described for people; `None` when intact.
    pub first_bad: Option<String>,
    /// The hash of record number `n` (1-based), when a checkpoint asked for it.
    pub hash_at: Option<(u64, String)>,
}

/// The collector's storage interface.
pub trait Store: Send + Sync + 'static {
    /// Creates a token; returns it with its secret (shown once, stored hashed).
    fn create_token(
        &self,
        role: Role,
        host: Option<&str>,
        label: &str,
        now: Timestamp,
    ) -> Result<(Token, String), StoreError>;
    /// Finds a live (unrevoked) token by its secret.
    fn find_token(&self, secret: &str) -> Result<Option<Token>, StoreError>;
    /// Lists tokens.
    fn list_tokens(&self) -> Result<Vec<Token>, StoreError>;
    /// Revokes a token; revoking a host's last agent token retires the host (no longer expected).
    fn revoke_token(&self, id: i64, now: Timestamp) -> Result<Token, StoreError>;
    /// Notes a heartbeat, with the coverage it reports.
    fn record_heartbeat(
        &self,
        hb: &Heartbeat,
        now: Timestamp,
    ) -> Result<HeartbeatOutcome, StoreError> {
        self.record_heartbeat_alerting(hb, now, &outbox::NoAlerts)
    }
    /// Notes a heartbeat, and in the same transaction the alerts `plan` asks for what it
    /// changed (coverage, events dropped from the agent's spool).
    fn record_heartbeat_alerting(
        &self,
        hb: &Heartbeat,
        now: Timestamp,
        plan: &dyn outbox::AlertPlan,
    ) -> Result<HeartbeatOutcome, StoreError>;
    /// Stores a batch idempotently.
    fn ingest(&self, batch: &EventBatch, now: Timestamp) -> Result<IngestResult, StoreError> {
        self.ingest_alerting(batch, now, &outbox::NoAlerts)
    }
    /// Stores a batch idempotently, and in the same transaction the alerts `plan` asks for
    /// each newly stored event and each new sequence gap (a re-sent event raises none).
    fn ingest_alerting(
        &self,
        batch: &EventBatch,
        now: Timestamp,
        plan: &dyn outbox::AlertPlan,
    ) -> Result<IngestResult, StoreError>;
    /// Adds alerts to the delivery outbox; an id already there is left as it is (so a cause
    /// noticed twice alerts once). Returns how many were new.
    fn enqueue_alerts(
        &self,
        alerts: &[outbox::NewAlert],
        now: Timestamp,
    ) -> Result<u64, StoreError>;
    /// Pending alerts due at `now` (at most `limit`), oldest first.
    fn due_alerts(&self, now: Timestamp, limit: u64) -> Result<Vec<outbox::OutboxRow>, StoreError>;
    /// Records the outcome of one delivery attempt of the alerts `ids`.
    fn settle_alerts(
        &self,
        ids: &[String],
        outcome: &outbox::Settle,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// The newest `limit` alerts of the outbox, whatever their state, newest first.
    fn list_alerts(&self, limit: u64) -> Result<Vec<outbox::OutboxRow>, StoreError>;
    /// Alerts per (sink, kind, state), for `/metrics`.
    fn alert_counts(&self) -> Result<Vec<outbox::AlertCount>, StoreError>;
    /// Lists events.
    fn events(&self, q: &EventQuery) -> Result<Vec<StoredEvent>, StoreError>;
    /// Changes an event's status, keeping the old one in the (chained) history.
    fn reclassify(
        &self,
        event_id: i64,
        new_status: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Per-host per-day facts for the KPI, sealing finished days into the chain first.
    fn host_days(
        &self,
        from: Date,
        to: Date,
        host: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<HostDay>, StoreError>;
    /// Hosts.
    fn hosts(&self, now: Timestamp) -> Result<Vec<HostInfo>, StoreError>;
    /// The latest scan of every (host, tree) received on `since` or later (collector days),
    /// ordered by host and tree.
    fn latest_scans(&self, since: Date) -> Result<Vec<LatestScan>, StoreError>;
    /// Stores a change entry version.
    fn put_change(
        &self,
        id: &str,
        toml: &str,
        minisig: Option<&str>,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Latest version of every change entry.
    fn changes(&self) -> Result<Vec<StoredChange>, StoreError>;
    /// Stores a manifest.
    fn put_manifest(&self, m: &StoredManifest) -> Result<(), StoreError>;
    /// The newest manifest of a tree.
    fn manifest(&self, tree: &str) -> Result<Option<StoredManifest>, StoreError>;
    /// Walks the whole chain; `at` asks for the hash of that record too (for checkpoints).
    fn verify_chain(&self, at: Option<u64>) -> Result<ChainReport, StoreError>;
    /// Current chain head.
    fn chain_head(&self) -> Result<ChainHead, StoreError>;
}

/// Opens the store named by a storage URL.
pub fn open(url: &str, tz: jiff::tz::TimeZone) -> Result<Box<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Box::new(sqlite::SqliteStore::open(
            std::path::Path::new(path),
            tz,
        )?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(postgres::PgStore::open(url, tz)?));
    }
    Err(StoreError::BadUrl(url.to_string()))
}
