//! What agents send to the collector (`POST /api/v1/events`, `POST /api/v1/heartbeat`).
//!
//! Shared by the agent's spool/uplink and the collector's ingestion, so both sides agree on one
//! shape. Every event carries a per-agent sequence number, unique per host: re-sending is safe.

use serde::{Deserialize, Serialize};

/// One change observed by an agent, already classified with the agent's change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeEvent {
    /// Per-agent sequence number (the event id, unique per host).
    pub seq: u64,
    /// Tree name.
    pub tree: String,
    /// Path relative to the tree root (lossy UTF-8).
    pub path: String,
    /// Hex of the exact path bytes when the name is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<String>,
    /// `added`, `removed`, `modified`, `metadata`, `type_changed`.
    pub change: String,
    /// `release:ID`, `change:ID`, `retroactive:ID`, `unauthorized`, `unverifiable`, `excluded`;
    /// or `resolved` for a record closing an earlier open change (the path is back to its
    /// approved state).
    pub status: String,
    /// When the agent first observed it (RFC 3339).
    pub observed_at: String,
    /// The previous observation of the tree: the change happened in (window_start, observed_at].
    pub window_start: String,
    /// New content hash, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Previous (approved) content hash, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_blake3: Option<String>,
    /// New size, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// What changed, for people, when the change kind alone does not say it: for a `metadata`
    /// change of extended attributes or ACLs, the attributes (`security.capability added`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For `resolved` records: the sequence number of the event they close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolves: Option<u64>,
}

/// The end of one scan of one tree: feeds the vetted ratio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanSummary {
    /// Tree name.
    pub tree: String,
    /// When the scan finished (RFC 3339, agent clock).
    pub finished_at: String,
    /// Paths in the tree plus removed approved paths.
    pub paths: u64,
    /// Paths in their approved state.
    pub vetted: u64,
    /// Release in force.
    #[serde(default)]
    pub release: Option<String>,
    /// Scan duration.
    #[serde(default)]
    pub seconds: f64,
}

/// A batch from one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// The agent's host name (must match its token).
    pub host: String,
    /// Environment label (`production`).
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Change events, in sequence order.
    #[serde(default)]
    pub events: Vec<ChangeEvent>,
    /// Scan summaries.
    #[serde(default)]
    pub scans: Vec<ScanSummary>,
}

/// A heartbeat: the host is alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Host name (must match the token).
    pub host: String,
    /// Environment label.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Agent version.
    #[serde(default)]
    pub agent_version: String,
    /// Trees watched.
    #[serde(default)]
    pub trees: Vec<String>,
    /// Last scan finished (RFC 3339), if any.
    #[serde(default)]
    pub last_scan: Option<String>,
    /// Events dropped from a full spool since the agent started (reported, never hidden).
    #[serde(default)]
    pub spool_dropped: u64,
    /// Events waiting in the spool.
    #[serde(default)]
    pub spool_depth: u64,
    /// BLAKE3 (hex) of the agent's effective config (see `agent::coverage::config_digest`);
    /// absent from agents older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// Per tree, what it leaves unwatched (DESIGN §12.1); empty from older agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coverage: Vec<TreeCoverage>,
}

/// One tree's exclusions, as a heartbeat reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeCoverage {
    /// Tree name.
    pub tree: String,
    /// Effective exclusions: the agent config's and the manifest in force's, sorted.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The config's exclusions that the manifest in force does not carry: a coverage reduction
    /// when not empty.
    #[serde(default)]
    pub local_exclude: Vec<String>,
}

fn default_environment() -> String {
    "production".into()
}

/// What the collector answers to a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResult {
    /// New events stored.
    pub stored: u64,
    /// Events already stored with the same content (a re-send): acknowledged, not stored again.
    pub duplicates: u64,
    /// Sequence numbers refused: an earlier event with that number had other content (a replay).
    pub rejected: Vec<u64>,
    /// Highest sequence number acknowledged: the agent may drop its spool up to here.
    pub acked_seq: u64,
    /// Scan summaries stored.
    pub scans: u64,
}
