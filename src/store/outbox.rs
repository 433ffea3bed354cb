//! The alert delivery outbox as the store sees it (DESIGN §12.3).
//!
//! Invariants:
//! - An alert caused by stored data is inserted in the transaction that stores that data
//!   ([`super::Store::ingest_alerting`]): a crash either keeps both or neither, so no event can
//!   be stored without its alert.
//! - Each alert has a stable id (chosen by the caller, see `collector::alerts::alert_id`); the
//!   table's primary key makes inserting it twice a no-op, which is how a cause noticed twice
//!   (a re-sent event, a restarted watcher) alerts once.
//! - Rows are never deleted by delivery: `sent` and `failed` rows stay for `alerts list` and the
//!   `/metrics` totals.
//!
//! The store knows nothing of sinks or routing: [`AlertPlan`] is how the collector tells it,
//! inside the transaction, which alerts an event causes.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::event::{ChangeEvent, Heartbeat};

/// An alert to put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    /// Stable id (receivers drop duplicates by it).
    pub id: String,
    /// The `[[alert]]` name that delivers it.
    pub sink: String,
    /// Alert kind (`unauthorized`, `silent`, …).
    pub kind: String,
    /// The host it is about (`""` for store-wide alerts such as `audit`).
    pub host: String,
    /// The alert item as JSON (`collector::alerts::AlertItem`).
    pub body: String,
    /// The sink's batch window: an alert joins the open window of its (sink, host) or opens
    /// one that is due this long after now.
    pub batch_micros: i64,
}

/// Delivery state of an outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not delivered yet (waiting for its batch window or a retry).
    Pending,
    /// Accepted by the receiver.
    Sent,
    /// Given up on (the receiver refused it, or the retry horizon passed).
    Failed,
}

impl State {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Sent => "sent",
            State::Failed => "failed",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<State> {
        match s {
            "pending" => Some(State::Pending),
            "sent" => Some(State::Sent),
            "failed" => Some(State::Failed),
            _ => None,
        }
    }
}

/// One row of the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRow {
    /// Stable id.
    pub id: String,
    /// Sink name.
    pub sink: String,
    /// Alert kind.
    pub kind: String,
    /// Host (may be empty).
    pub host: String,
    /// The alert item JSON (not in the API's list: `alerts list` shows delivery state).
    #[serde(skip, default)]
    pub body: String,
    /// Delivery state.
    pub state: State,
    /// Delivery attempts so far.
    pub attempts: u64,
    /// When it was enqueued (RFC 3339).
    pub created_at: String,
    /// When it is (or was) next due (RFC 3339).
    pub due_at: String,
    /// When it was delivered or given up on.
    pub settled_at: Option<String>,
    /// The last delivery error.
    pub last_error: Option<String>,
}

/// What a delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Delivered.
    Sent,
    /// Not delivered; try again at `due_at`.
    Retry {
        /// Next attempt.
        due_at: Timestamp,
        /// Why this attempt failed.
        error: String,
    },
    /// Not delivered and not to be retried.
    Failed {
        /// Why.
        error: String,
    },
}

/// Number of alerts of one sink and kind in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertCount {
    /// Sink name.
    pub sink: String,
    /// Alert kind.
    pub kind: String,
    /// State.
    pub state: State,
    /// How many.
    pub count: u64,
}

/// Which alerts stored data causes; asked inside the ingest transaction.
pub trait AlertPlan: Sync {
    /// Alerts for an event just stored (not for a duplicate or a replay).
    fn on_event(&self, host: &str, environment: &str, event: &ChangeEvent, out: &mut Vec<NewAlert>);
    /// Alerts for sequence numbers `first..=last` of `host` found missing.
    fn on_gap(&self, host: &str, environment: &str, first: u64, last: u64, out: &mut Vec<NewAlert>);
    /// Alerts for a heartbeat just stored: whether its coverage differs from the previous one
    /// (false for the first report of it),
    /// and how many events the agent reported dropped before it (the heartbeat carries the
    /// new total).
    fn on_heartbeat(
        &self,
        hb: &Heartbeat,
        coverage_changed: bool,
        dropped_before: u64,
        out: &mut Vec<NewAlert>,
    );
}

/// The plan of a collector without `[[alert]]` tables.
pub struct NoAlerts;

impl AlertPlan for NoAlerts {
    fn on_event(&self, _: &str, _: &str, _: &ChangeEvent, _: &mut Vec<NewAlert>) {}
    fn on_gap(&self, _: &str, _: &str, _: u64, _: u64, _: &mut Vec<NewAlert>) {}
    fn on_heartbeat(&self, _: &Heartbeat, _: bool, _: u64, _: &mut Vec<NewAlert>) {}
}
