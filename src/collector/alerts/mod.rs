//! Alerts (DESIGN §12.3): which alert goes to which sink, what it says, and how its delivery
//! goes on. Pure logic here, unit-tested beside it; the delivery loop and the watchers are in
//! [`outbox`], each sink in [`sinks`].
//!
//! Invariants:
//! - Every alert is first a row of the store's outbox, written with what caused it (ingest
//!   through [`Router`]'s [`AlertPlan`], the watchers through `Store::enqueue_alerts`); only the
//!   delivery loop sends, so a crash at any point loses nothing (at-least-once).
//! - An alert's id is a hash of its cause and its sink ([`alert_id`]): the same cause noticed
//!   again maps to the same row, and a receiver can drop a re-delivery by id.
//! - Alerts hang off the service layer, so the embedded collector of a single-host agent alerts
//!   exactly as a fleet collector does.

pub mod config;
pub mod outbox;
pub mod sinks;

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::event::{ChangeEvent, Heartbeat};
use crate::store::outbox::{AlertPlan, NewAlert, OutboxRow, Settle};
use crate::util::timefmt;
pub use config::AlertConfig;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// An unauthorized change was stored.
    Unauthorized,
    /// A change that could not be verified was stored.
    Unverifiable,
    /// A host went silent (or came back).
    Silent,
    /// Events of a host are missing: a sequence gap, or a spool drop the agent reported.
    Gap,
    /// A host's coverage (exclusions, config) changed.
    Coverage,
    /// The background chain check found a break.
    Audit,
    /// Yesterday's KPI of an environment was below target (sent at `kpi.report_at`).
    KpiMissed,
    /// `driftwatch alerts test`.
    Test,
}

impl AlertKind {
    /// Every kind an `[[alert]]` can ask for (`on` defaults to all of them).
    pub const ALL: [AlertKind; 7] = [
        AlertKind::Unauthorized,
        AlertKind::Unverifiable,
        AlertKind::Silent,
        AlertKind::Gap,
        AlertKind::Coverage,
        AlertKind::Audit,
        AlertKind::KpiMissed,
    ];

    /// The name used in config, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Unauthorized => "unauthorized",
            AlertKind::Unverifiable => "unverifiable",
            AlertKind::Silent => "silent",
            AlertKind::Gap => "gap",
            AlertKind::Coverage => "coverage",
            AlertKind::Audit => "audit",
            AlertKind::KpiMissed => "kpi_missed",
            AlertKind::Test => "test",
        }
    }
}

impl std::str::FromStr for AlertKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(k) = AlertKind::ALL.into_iter().find(|k| k.as_str() == s) {
            return Ok(k);
        }
        Err(match s {
            // Named by DESIGN §12.3 but not raised by this version: refusing them is better
            // than accepting a route that never fires.
            "overdue" => {
                format!("alert kind {s:?} is not raised by this version of driftwatch")
            }
            _ => format!(
                "unknown alert kind {s:?} (expected {})",
                AlertKind::ALL.map(AlertKind::as_str).join(", ")
            ),
        })
    }
}

/// One alert as sinks render it, and the webhook's JSON (documented in docs/design.md §12.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertItem {
    /// Stable id: a receiver drops any alert whose id it has seen.
    pub id: String,
    /// What it is about.
    pub kind: AlertKind,
    /// The host (empty for store-wide alerts such as `audit`).
    pub host: String,
    /// The host's environment (empty when unknown).
    pub environment: String,
    /// One line for people.
    pub summary: String,
    /// When the collector raised it (RFC 3339).
    pub raised_at: String,
    /// Tree of the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
    /// Path of the change, relative to the tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `added`, `modified`, `removed`, `metadata`, `type_changed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// The classification (`unauthorized`, `unverifiable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// New content hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Approved content hash before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_blake3: Option<String>,
    /// New size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// When the agent observed it (RFC 3339, agent clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
    /// The agent's sequence number of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Anything else worth saying (the missing sequence numbers, the chain break, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Link to the stored evidence (the changed file's content), when there is a hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// Link to the dashboard.
    pub dashboard: String,
}

impl AlertItem {
    /// The item's optional fields that it has, in one order, for the sinks that print fields
    /// (syslog, email).
    pub fn present_fields(&self) -> Vec<(&'static str, String)> {
        let opt = [
            ("host", Some(self.host.clone()).filter(|h| !h.is_empty())),
            (
                "environment",
                Some(self.environment.clone()).filter(|e| !e.is_empty()),
            ),
            ("tree", self.tree.clone()),
            ("path", self.path.clone()),
            ("change", self.change.clone()),
            ("status", self.status.clone()),
            ("blake3", self.blake3.clone()),
            ("size", self.size.map(|s| s.to_string())),
            ("observed_at", self.observed_at.clone()),
            ("detail", self.detail.clone()),
            ("evidence", self.evidence.clone()),
            (
                "dashboard",
                Some(self.dashboard.clone()).filter(|d| !d.is_empty()),
            ),
        ];
        opt.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }

    /// A bare item of `kind` about `host`; the router fills in id and links.
    pub fn new(
        kind: AlertKind,
        host: &str,
        environment: &str,
        summary: String,
        now: Timestamp,
    ) -> AlertItem {
        AlertItem {
            id: String::new(),
            kind,
            host: host.to_string(),
            environment: environment.to_string(),
            summary,
            raised_at: timefmt::format_timestamp(now),
            tree: None,
            path: None,
            change: None,
            status: None,
            blake3: None,
            previous_blake3: None,
            size: None,
            observed_at: None,
            seq: None,
            detail: None,
            evidence: None,
            dashboard: String::new(),
        }
    }
}

/// The stable id of the alert that `cause` raises on `sink`: 32 hex digits of its BLAKE3.
pub fn alert_id(cause: &str, sink: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(cause.as_bytes());
    h.update(b"\0");
    h.update(sink.as_bytes());
    h.finalize().to_hex()[..32].to_string()
}

/// Routes alerts to the `[[alert]]` sinks that want them.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<AlertConfig>,
    /// Dashboard base URL when a route sets none (ends with `/`): the configured listen address.
    dashboard: String,
    /// The address actually bound, once the collector listens (port 0 becomes a real port).
    bound: std::sync::OnceLock<String>,
}

impl Router {
    /// A router over `routes`; links point at `dashboard` unless a route sets `dashboard_url`.
    pub fn new(routes: Vec<AlertConfig>, dashboard: &str) -> Router {
        Router {
            routes,
            dashboard: with_slash(dashboard),
            bound: std::sync::OnceLock::new(),
        }
    }

    /// Notes the URL the collector serves on, for links of routes without `dashboard_url`.
    pub fn set_listening(&self, url: &str) {
        let _ = self.bound.set(with_slash(url));
    }

    /// No `[[alert]]` tables.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The configured sinks.
    pub fn routes(&self) -> &[AlertConfig] {
        &self.routes
    }

    /// Whether `route` receives alerts of `kind` from `environment` (empty: store-wide alerts,
    /// which every environment filter lets through).
    pub fn wants(route: &AlertConfig, kind: AlertKind, environment: &str) -> bool {
        route.on.contains(&kind)
            && (route.environments.is_empty()
                || environment.is_empty()
                || route.environments.iter().any(|e| e == environment))
    }

    /// The outbox rows that `item`, raised by `cause`, becomes: one per sink that wants it.
    pub fn route(&self, item: &AlertItem, cause: &str) -> Vec<NewAlert> {
        self.routes
            .iter()
            .filter(|r| Self::wants(r, item.kind, &item.environment))
            .map(|r| {
                let mut it = item.clone();
                it.id = alert_id(cause, &r.name);
                let base = r
                    .dashboard_url
                    .as_deref()
                    .map(with_slash)
                    .unwrap_or_else(|| self.bound.get().unwrap_or(&self.dashboard).clone());
                it.evidence = it.blake3.as_ref().map(|h| format!("{base}evidence/{h}"));
                it.dashboard = base;
                NewAlert {
                    id: it.id.clone(),
                    sink: r.name.clone(),
                    kind: it.kind.as_str().to_string(),
                    host: it.host.clone(),
                    body: serde_json::to_string(&it).expect("an alert item serializes"),
                    batch_micros: r.batch.as_micros() as i64,
                }
            })
            .collect()
    }
}

fn with_slash(s: &str) -> String {
    if s.ends_with('/') {
        s.to_string()
    } else {
        format!("{s}/")
    }
}

impl AlertPlan for Router {
    fn on_event(&self, host: &str, environment: &str, e: &ChangeEvent, out: &mut Vec<NewAlert>) {
        let kind = match e.status.as_str() {
            "unauthorized" => AlertKind::Unauthorized,
            "unverifiable" => AlertKind::Unverifiable,
            _ => return,
        };
        if self.is_empty() {
            return;
        }
        let summary = format!(
            "{} change on {host}: {} {}/{}",
            kind.as_str(),
            e.change,
            e.tree,
            e.path
        );
        let mut it = AlertItem::new(kind, host, environment, summary, Timestamp::now());
        it.tree = Some(e.tree.clone());
        it.path = Some(e.path.clone());
        it.change = Some(e.change.clone());
        it.status = Some(e.status.clone());
        it.blake3 = e.blake3.clone();
        it.previous_blake3 = e.previous_blake3.clone();
        it.size = e.size;
        it.observed_at = Some(e.observed_at.clone());
        it.seq = Some(e.seq);
        it.detail = e.detail.clone();
        // The event's (host, seq) is unique in the store: a re-sent event is the same cause.
        out.extend(self.route(&it, &format!("event\0{host}\0{}", e.seq)));
    }

    fn on_gap(
        &self,
        host: &str,
        environment: &str,
        first: u64,
        last: u64,
        out: &mut Vec<NewAlert>,
    ) {
        if self.is_empty() {
            return;
        }
        let range = if first == last {
            format!("{first}")
        } else {
            format!("{first}–{last}")
        };
        let summary = format!("events missing from {host}: sequence numbers {range} skipped");
        let mut it = AlertItem::new(AlertKind::Gap, host, environment, summary, Timestamp::now());
        it.detail = Some(format!("missing sequence numbers {first}..={last}"));
        out.extend(self.route(&it, &format!("gap\0{host}\0{first}\0{last}")));
    }

    fn on_heartbeat(
        &self,
        hb: &Heartbeat,
        coverage_changed: bool,
        dropped_before: u64,
        out: &mut Vec<NewAlert>,
    ) {
        if !self.is_empty() {
            self.heartbeat_alerts(hb, coverage_changed, dropped_before, out);
        }
    }
}

impl Router {
    /// The `coverage` and `gap` (spool drop) alerts of a heartbeat.
    fn heartbeat_alerts(
        &self,
        hb: &Heartbeat,
        coverage_changed: bool,
        dropped_before: u64,
        out: &mut Vec<NewAlert>,
    ) {
        let now = Timestamp::now();
        if coverage_changed {
            let reduced: Vec<String> = hb
                .coverage
                .iter()
                .filter(|t| !t.local_exclude.is_empty())
                .map(|t| {
                    format!(
                        "{} excludes {} beyond its manifest",
                        t.tree,
                        t.local_exclude.join(", ")
                    )
                })
                .collect();
            let (status, summary) = if reduced.is_empty() {
                (
                    "changed",
                    format!(
                        "coverage of {} changed (no tree excludes more than its manifest)",
                        hb.host
                    ),
                )
            } else {
                (
                    "reduced",
                    format!("coverage of {} reduced: {}", hb.host, reduced.join("; ")),
                )
            };
            let mut it =
                AlertItem::new(AlertKind::Coverage, &hb.host, &hb.environment, summary, now);
            it.status = Some(status.into());
            it.detail = hb
                .config_digest
                .as_ref()
                .map(|d| format!("config digest {d}"));
            let cause = format!(
                "coverage\0{}\0{}",
                hb.host,
                crate::store::records::coverage_column(hb).unwrap_or_default()
            );
            // The same coverage again after a flip back is a new change: the time keeps it apart.
            out.extend(self.route(&it, &format!("{cause}\0{}", now.as_microsecond())));
        }
        if hb.spool_dropped > dropped_before {
            let n = hb.spool_dropped - dropped_before;
            let summary = format!(
                "the agent on {} dropped {n} events from its full spool ({} in all)",
                hb.host, hb.spool_dropped
            );
            let mut it = AlertItem::new(AlertKind::Gap, &hb.host, &hb.environment, summary, now);
            it.status = Some("spool_dropped".into());
            it.detail = Some(format!(
                "spool_dropped {dropped_before} -> {}",
                hb.spool_dropped
            ));
            out.extend(self.route(&it, &format!("drop\0{}\0{}", hb.host, hb.spool_dropped)));
        }
    }
}

/// Outbox rows due together: one message per (sink, host).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Sink name.
    pub sink: String,
    /// Host.
    pub host: String,
    /// The rows, oldest first.
    pub rows: Vec<OutboxRow>,
}

/// Groups due rows by (sink, host), in the order each group's first row came.
pub fn group(rows: Vec<OutboxRow>) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for r in rows {
        match out
            .iter_mut()
            .find(|g| g.sink == r.sink && g.host == r.host)
        {
            Some(g) => g.rows.push(r),
            None => out.push(Group {
                sink: r.sink.clone(),
                host: r.host.clone(),
                rows: vec![r],
            }),
        }
    }
    out
}

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The receiver is down or busy (connection refused, timeout, 429, 5xx): retried.
    #[error("{0}")]
    Retry(String),
    /// The receiver refused the alert (4xx other than 429, a bad address): not retried.
    #[error("{0}")]
    Refused(String),
}

/// Delay before retry number `attempts + 1`: 1 s doubling, at most 5 minutes.
pub fn backoff(attempts: u64) -> Duration {
    Duration::from_secs(1u64 << attempts.min(8)).min(Duration::from_secs(300))
}

/// What an attempt at `now` on rows first enqueued at `oldest` (tried `attempts` times before)
/// comes to, under a retry horizon of `retry_for`.
pub fn settle(
    result: &Result<(), SendError>,
    oldest: Timestamp,
    attempts: u64,
    now: Timestamp,
    retry_for: Duration,
) -> Settle {
    match result {
        Ok(()) => Settle::Sent,
        Err(SendError::Refused(m)) => Settle::Failed { error: m.clone() },
        Err(SendError::Retry(m)) => {
            let next = now + backoff(attempts);
            let horizon = oldest + retry_for;
            if now >= horizon {
                Settle::Failed {
                    error: format!("gave up after {} attempts: {m}", attempts + 1),
                }
            } else {
                Settle::Retry {
                    // The last try lands on the horizon rather than after it.
                    due_at: next.min(horizon),
                    error: m.clone(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::config::SinkTarget;
    use super::*;

    fn route(name: &str, on: &[AlertKind], envs: &[&str], batch: u64) -> AlertConfig {
        AlertConfig {
            name: name.into(),
            on: on.to_vec(),
            environments: envs.iter().map(|s| s.to_string()).collect(),
            batch: Duration::from_secs(batch),
            retry_for: Duration::from_secs(60),
            dashboard_url: None,
            target: SinkTarget::Slack {
                url: "http://h/".into(),
            },
        }
    }

    fn event(seq: u64, status: &str) -> ChangeEvent {
        serde_json::from_value(serde_json::json!({
            "seq": seq, "tree": "shop", "path": "uploads/x.php", "change": "added", "status": status,
            "observed_at": "2026-01-01T00:00:00Z", "window_start": "2026-01-01T00:00:00Z",
            "blake3": "ab".repeat(32), "size": 10
        }))
        .unwrap()
    }

    #[test]
    fn events_go_to_the_sinks_that_want_their_kind_and_environment() {
        let r = Router::new(
            vec![
                route("all", &AlertKind::ALL, &[], 0),
                route("prod", &[AlertKind::Unauthorized], &["production"], 5),
                route("audit", &[AlertKind::Audit], &[], 0),
            ],
            "http://c:8470",
        );
        let mut out = Vec::new();
        r.on_event("web-01", "production", &event(4, "unauthorized"), &mut out);
        let sinks: Vec<_> = out.iter().map(|a| a.sink.as_str()).collect();
        assert_eq!(sinks, ["all", "prod"]);
        assert_eq!(out[1].batch_micros, 5_000_000);
        let item: AlertItem = serde_json::from_str(&out[0].body).unwrap();
        assert_eq!(item.id, out[0].id);
        assert_eq!(item.path.as_deref(), Some("uploads/x.php"));
        assert_eq!(
            item.evidence.unwrap(),
            format!("http://c:8470/evidence/{}", "ab".repeat(32))
        );
        assert_eq!(item.dashboard, "http://c:8470/");
        // The id depends on the cause and the sink only: the same event again, the same ids.
        let mut again = Vec::new();
        r.on_event(
            "web-01",
            "production",
            &event(4, "unauthorized"),
            &mut again,
        );
        assert_eq!(
            again.iter().map(|a| &a.id).collect::<Vec<_>>(),
            out.iter().map(|a| &a.id).collect::<Vec<_>>()
        );
        assert_ne!(out[0].id, out[1].id);

        let mut staging = Vec::new();
        r.on_event("web-02", "staging", &event(1, "unverifiable"), &mut staging);
        assert_eq!(
            staging.iter().map(|a| a.sink.as_str()).collect::<Vec<_>>(),
            ["all"]
        );
        let mut none = Vec::new();
        r.on_event("web-02", "staging", &event(2, "release:R-1"), &mut none);
        assert!(none.is_empty());
        // Store-wide alerts pass every environment filter.
        let it = AlertItem::new(AlertKind::Audit, "", "", "x".into(), Timestamp::now());
        assert_eq!(
            r.route(&it, "audit")
                .iter()
                .map(|a| a.sink.as_str())
                .collect::<Vec<_>>(),
            ["all", "audit"]
        );
    }

    #[test]
    fn gaps_alert_once_per_range() {
        let r = Router::new(vec![route("all", &AlertKind::ALL, &[], 0)], "http://c/");
        let mut out = Vec::new();
        r.on_gap("h", "production", 3, 5, &mut out);
        let item: AlertItem = serde_json::from_str(&out[0].body).unwrap();
        assert_eq!(item.kind, AlertKind::Gap);
        assert!(item.summary.contains("3–5"), "{}", item.summary);
    }

    #[test]
    fn rows_are_grouped_per_sink_and_host() {
        let row = |id: &str, sink: &str, host: &str| OutboxRow {
            id: id.into(),
            sink: sink.into(),
            kind: "unauthorized".into(),
            host: host.into(),
            body: String::new(),
            state: crate::store::outbox::State::Pending,
            attempts: 0,
            created_at: String::new(),
            due_at: String::new(),
            settled_at: None,
            last_error: None,
        };
        let g = group(vec![
            row("1", "a", "h1"),
            row("2", "b", "h1"),
            row("3", "a", "h1"),
            row("4", "a", "h2"),
        ]);
        let ids: Vec<Vec<&str>> = g
            .iter()
            .map(|g| g.rows.iter().map(|r| r.id.as_str()).collect())
            .collect();
        assert_eq!(ids, [vec!["1", "3"], vec!["2"], vec!["4"]]);
    }

    #[test]
    fn retries_back_off_until_the_horizon_and_refusals_fail_at_once() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(256));
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let horizon = Duration::from_secs(60);
        let down = Err(SendError::Retry("connection refused".into()));
        let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        assert_eq!(
            settle(&down, t0, 2, at(10), horizon),
            Settle::Retry {
                due_at: at(14),
                error: "connection refused".into()
            }
        );
        // The last retry is pulled in to the horizon, and past it the alert fails, counted.
        assert_eq!(
            settle(&down, t0, 7, at(50), horizon),
            Settle::Retry {
                due_at: at(60),
                error: "connection refused".into()
            }
        );
        assert!(
            matches!(settle(&down, t0, 8, at(60), horizon), Settle::Failed { error } if error.contains("gave up after 9 attempts"))
        );
        let refused = Err(SendError::Refused("HTTP 404".into()));
        assert_eq!(
            settle(&refused, t0, 0, at(1), horizon),
            Settle::Failed {
                error: "HTTP 404".into()
            }
        );
        assert_eq!(settle(&Ok(()), t0, 5, at(1), horizon), Settle::Sent);
    }

    #[test]
    fn kinds_parse_and_unbuilt_ones_are_refused() {
        assert_eq!("gap".parse::<AlertKind>(), Ok(AlertKind::Gap));
        assert_eq!("kpi_missed".parse::<AlertKind>(), Ok(AlertKind::KpiMissed));
        assert!(
            "overdue"
                .parse::<AlertKind>()
                .unwrap_err()
                .contains("not raised by this version")
        );
        assert!("test".parse::<AlertKind>().is_err());
    }
}
