//! The collector's service layer: what the collector does, whoever asks.
//!
//! Invariants:
//! - Every caller goes through [`Service`]: the HTTP handlers (`collector::http`), the embedded
//!   collector of a single-host agent (`agent::Sink::Embedded`), the CLI's `--db` commands
//!   (`cli::source`) and the dashboard. Validation, signature policy, re-classification and the
//!   `/metrics` counters live here, so single-host mode refuses and counts exactly as a fleet
//!   collector does.
//! - Nothing here knows HTTP: errors are [`ServiceError`] (the HTTP layer maps them to status
//!   codes), and authentication (which token may call what) stays in the HTTP layer.
//! - Methods block (the store is synchronous); async callers run them on a blocking thread.
//!
//! - Alerts (DESIGN §12.3, `collector::alerts`) are decided here, not in HTTP handlers:
//!   [`Service::ingest`] and [`Service::heartbeat`] hand the store the [`Router`], which adds the
//!   outbox rows inside the transaction that stores their cause; the watchers enqueue through
//!   [`Service::enqueue_alerts`].
//!
//! Where later features hang (not built yet):
//! - reviews and ITSM import: they register change entries through
//!   [`Service::register_change`] / [`Service::approve_change`], so the same signature and
//!   separation-of-duties rules apply and open events are re-classified the same way.

pub mod audit;
pub mod changes;
pub mod counters;
pub mod daily;
pub mod hosts;
pub mod ingest;
pub mod itsm;
pub mod kpi;
pub mod tokens;

use std::sync::Arc;

use super::alerts::Router;
use super::config::CollectorConfig;
use crate::store::outbox::{NewAlert, OutboxRow};
use crate::store::{Store, StoreError};
use counters::Metrics;

pub use changes::SignedDoc;
pub use kpi::KpiRequest;

/// Why the collector refused or failed a request, independent of how it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; the message names the first bad field.
    #[error("{0}")]
    Invalid(String),
    /// The request is well-formed but not allowed (e.g. separation of duties).
    #[error("{0}")]
    Forbidden(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The collector's configuration forbids it (no `[trust]`): retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// A signed checkpoint is unusable.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The checkpoint file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A signature could not be checked or does not verify.
    #[error(transparent)]
    Sign(#[from] crate::sign::SignError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The collector's operations over one store, with its settings and counters.
pub struct Service {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Settings.
    pub cfg: Arc<CollectorConfig>,
    /// Counters for `/metrics` (shared by every caller, so embedded ingestion is counted too).
    pub metrics: Arc<Metrics>,
    /// Which alert goes to which `[[alert]]` sink (asked inside the ingest transaction).
    pub alerts: Arc<Router>,
    /// Wakes the delivery loop when alerts were enqueued, so they go out at once.
    pub alert_wake: Arc<tokio::sync::Notify>,
    /// ITSM import status per source.
    pub itsm: Arc<itsm::ItsmBoard>,
}

impl Service {
    /// A service over `store` with fresh counters.
    pub fn new(store: Arc<dyn Store>, cfg: Arc<CollectorConfig>) -> Service {
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let alerts = Router::new(cfg.alerts.clone(), &format!("{scheme}://{}/", cfg.listen));
        Service {
            store,
            cfg,
            metrics: Arc::new(Metrics::default()),
            alerts: Arc::new(alerts),
            alert_wake: Arc::new(tokio::sync::Notify::new()),
            itsm: Arc::new(itsm::ItsmBoard::default()),
        }
    }

    /// Puts `alerts` in the outbox (off the async runtime) and wakes the delivery loop; returns
    /// how many were new. A failure is logged: the watchers that call this raise the same
    /// alert (same id) on their next round.
    pub async fn enqueue_alerts(&self, alerts: Vec<NewAlert>) -> u64 {
        if alerts.is_empty() {
            return 0;
        }
        let store = self.store.clone();
        let done = tokio::task::spawn_blocking(move || {
            store.enqueue_alerts(&alerts, jiff::Timestamp::now())
        })
        .await;
        match done {
            Ok(Ok(n)) => {
                self.alert_wake.notify_one();
                n
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "enqueueing alerts failed; the watcher tries again");
                0
            }
            Err(_) => 0,
        }
    }

    /// The newest `limit` alerts of the outbox (`alerts list`).
    pub fn alert_list(&self, limit: u64) -> Result<Vec<OutboxRow>, ServiceError> {
        Ok(self.store.list_alerts(limit)?)
    }

    /// Today in the KPI timezone.
    pub fn today(&self) -> jiff::civil::Date {
        jiff::Timestamp::now()
            .to_zoned(self.cfg.timezone.clone())
            .date()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBatch;
    use crate::store::sqlite::SqliteStore;

    /// A service over a fresh SQLite store with the settings of `config` (TOML).
    fn service(dir: &std::path::Path, config: &str) -> Service {
        let store = SqliteStore::open(&dir.join("c.db"), jiff::tz::TimeZone::UTC).expect("store");
        let cfg =
            CollectorConfig::parse(config, std::path::Path::new("collector.toml")).expect("config");
        Service::new(Arc::new(store), Arc::new(cfg))
    }

    fn entry(self_approved: bool) -> SignedDoc {
        let approver = if self_approved { "alice" } else { "bob" };
        SignedDoc {
            toml: Some(format!(
                "id = \"CHG-1\"\nsummary = \"s\"\nrequested_by = \"alice\"\napproved_by = \"{approver}\"\napproved_at = \"2026-01-01T00:00:00Z\"\nhosts = [\"*\"]\ntrees = [\"*\"]\npaths = [\"**\"]\nstart = \"2026-01-01T00:00:00Z\"\nend = \"2026-01-02T00:00:00Z\"\n"
            )),
            ..SignedDoc::default()
        }
    }

    #[test]
    fn uploads_follow_the_trust_policy() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let now = jiff::Timestamp::now();
        // No [trust]: refused, whatever the document.
        let none = service(tmp.path(), "");
        assert!(matches!(
            none.register_change(entry(false), None, now),
            Err(ServiceError::Refused(_))
        ));
        let open = service(tmp.path(), "[trust]\nrequire_signatures = false\n");
        // Separation of duties.
        assert!(matches!(
            open.register_change(entry(true), None, now),
            Err(ServiceError::Forbidden(_))
        ));
        let stored = open
            .register_change(entry(false), None, now)
            .expect("stored");
        assert_eq!(stored.reclassified, 0);
        // The URL's id must be the entry's; an unknown id is not found.
        assert!(matches!(
            open.approve_change("CHG-2", entry(false), now),
            Err(ServiceError::NotFound(_))
        ));
        assert!(matches!(
            open.register_change(entry(false), Some("CHG-2"), now),
            Err(ServiceError::Invalid(_))
        ));
        // Unsigned is refused once signatures are required.
        let strict = Service::new(
            open.store.clone(),
            Arc::new(CollectorConfig {
                require_signatures: true,
                ..(*open.cfg).clone()
            }),
        );
        let e = strict.register_change(entry(false), None, now).unwrap_err();
        assert!(e.to_string().contains("minisig is required"), "{e}");
    }

    #[test]
    fn a_malformed_batch_is_refused_before_the_store_and_not_counted() {
        use std::sync::atomic::Ordering::Relaxed;
        let tmp = tempfile::tempdir().expect("tempdir");
        let svc = service(tmp.path(), "");
        let batch: EventBatch = serde_json::from_value(serde_json::json!({
            "host": " ", "events": []
        }))
        .expect("batch");
        let e = svc.ingest(&batch, jiff::Timestamp::now()).unwrap_err();
        assert_eq!(e.to_string(), "host: must not be empty");
        assert_eq!(svc.metrics.batches.load(Relaxed), 0);
        assert!(svc.hosts(jiff::Timestamp::now()).expect("hosts").is_empty());
    }
}
