//! Prometheus text exposition for `/metrics`: ingestion counters, KPI gauges, and per-agent scan
//! durations and spool depths.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;

use super::service::{Service, ServiceError};
use crate::kpi::{Grouping, Period};
use crate::store::EventQuery;

/// Renders the metrics; gauges are read through the service (no path labels: bounded
/// cardinality).
pub fn render(svc: &Service) -> Result<String, ServiceError> {
    let (cfg, m) = (&svc.cfg, &svc.metrics);
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    };
    counter(
        &mut out,
        "driftwatch_ingest_batches_total",
        "Event batches accepted.",
        &m.batches,
    );
    counter(
        &mut out,
        "driftwatch_ingest_events_received_total",
        "Events received.",
        &m.events_received,
    );
    counter(
        &mut out,
        "driftwatch_ingest_events_stored_total",
        "Events stored.",
        &m.events_stored,
    );
    counter(
        &mut out,
        "driftwatch_ingest_events_duplicate_total",
        "Re-sent events acknowledged once.",
        &m.events_duplicate,
    );
    counter(
        &mut out,
        "driftwatch_ingest_events_rejected_total",
        "Replayed events refused.",
        &m.events_rejected,
    );
    counter(
        &mut out,
        "driftwatch_heartbeats_total",
        "Heartbeats received.",
        &m.heartbeats,
    );
    counter(
        &mut out,
        "driftwatch_rate_limited_total",
        "Requests refused with 429.",
        &m.rate_limited,
    );

    let now = Timestamp::now();
    let today = now.to_zoned(cfg.timezone.clone()).date();
    let days = svc.host_days(today, today, None)?;
    let rows = svc.kpi_rows(
        &days,
        Period::Day,
        &[Grouping::Fleet, Grouping::Environment],
    );
    let _ = writeln!(
        out,
        "# HELP driftwatch_change_compliance Today's change compliance (authorized / counted changes)."
    );
    let _ = writeln!(out, "# TYPE driftwatch_change_compliance gauge");
    for r in &rows {
        let _ = writeln!(
            out,
            "driftwatch_change_compliance{{environment=\"{}\"}} {}",
            label(&r.environment),
            r.change_compliance
        );
    }
    let _ = writeln!(
        out,
        "# HELP driftwatch_host_day_compliance Today's host-day compliance."
    );
    let _ = writeln!(out, "# TYPE driftwatch_host_day_compliance gauge");
    for r in &rows {
        let _ = writeln!(
            out,
            "driftwatch_host_day_compliance{{environment=\"{}\"}} {}",
            label(&r.environment),
            r.host_day_compliance
        );
    }
    let _ = writeln!(
        out,
        "# HELP driftwatch_kpi_target The compliance target.\n# TYPE driftwatch_kpi_target gauge\ndriftwatch_kpi_target {}",
        cfg.target
    );

    let today_events = svc.events(&EventQuery {
        from: Some(today),
        to: Some(today),
        ..EventQuery::default()
    })?;
    let mut by_status = std::collections::BTreeMap::new();
    for e in &today_events {
        let kind = e.status.split(':').next().unwrap_or("").to_string();
        *by_status.entry(kind).or_insert(0u64) += 1;
    }
    let _ = writeln!(
        out,
        "# HELP driftwatch_events_today Events received today by status kind.\n# TYPE driftwatch_events_today gauge"
    );
    for (k, v) in by_status {
        let _ = writeln!(
            out,
            "driftwatch_events_today{{status=\"{}\"}} {v}",
            label(&k)
        );
    }
    let hosts = svc.hosts(now)?;
    let silent = hosts.iter().filter(|h| svc.is_silent(h)).count();
    let open: u64 = hosts.iter().map(|h| h.open_unauthorized).sum();
    let _ = writeln!(
        out,
        "# HELP driftwatch_hosts Known hosts (not retired).\n# TYPE driftwatch_hosts gauge\ndriftwatch_hosts {}",
        hosts.iter().filter(|h| !h.retired).count()
    );
    let _ = writeln!(
        out,
        "# HELP driftwatch_hosts_silent Hosts not heard from within silent_after.\n# TYPE driftwatch_hosts_silent gauge\ndriftwatch_hosts_silent {silent}"
    );
    let _ = writeln!(
        out,
        "# HELP driftwatch_open_unauthorized Unauthorized changes still open.\n# TYPE driftwatch_open_unauthorized gauge\ndriftwatch_open_unauthorized {open}"
    );
    let missing: u64 = hosts.iter().map(|h| h.missing_seqs).sum();
    let dropped: u64 = hosts.iter().map(|h| h.spool_dropped).sum();
    let _ = writeln!(
        out,
        "# HELP driftwatch_missing_event_seqs Event sequence numbers never received (gaps).\n# TYPE driftwatch_missing_event_seqs gauge\ndriftwatch_missing_event_seqs {missing}"
    );
    let _ = writeln!(
        out,
        "# HELP driftwatch_agent_spool_dropped Events agents report dropped from a full spool.\n# TYPE driftwatch_agent_spool_dropped gauge\ndriftwatch_agent_spool_dropped {dropped}"
    );

    // Per host and tree: bounded by the fleet. Retired hosts are left out: they are no longer
    // expected, and their last values would stay on dashboards and in alerts.
    let live: std::collections::BTreeSet<&str> = hosts
        .iter()
        .filter(|h| !h.retired)
        .map(|h| h.host.as_str())
        .collect();
    let _ = writeln!(
        out,
        "# HELP driftwatch_agent_spool_depth Events waiting in the agent's spool, as of its last heartbeat.\n# TYPE driftwatch_agent_spool_depth gauge"
    );
    for h in hosts.iter().filter(|h| !h.retired) {
        let _ = writeln!(
            out,
            "driftwatch_agent_spool_depth{{host=\"{}\"}} {}",
            label(&h.host),
            h.spool_depth
        );
    }
    // Yesterday too: a daily scan that finished before midnight is still the latest one.
    let since = today.yesterday().unwrap_or(today);
    let scans = svc.latest_scans(since)?;
    let _ = writeln!(
        out,
        "# HELP driftwatch_agent_scan_seconds Seconds the latest full scan of a tree took (scans received today or yesterday).\n# TYPE driftwatch_agent_scan_seconds gauge"
    );
    for s in scans.iter().filter(|s| live.contains(s.host.as_str())) {
        let _ = writeln!(
            out,
            "driftwatch_agent_scan_seconds{{host=\"{}\",tree=\"{}\"}} {}",
            label(&s.host),
            label(&s.tree),
            s.seconds
        );
    }
    alerts(&mut out, svc)?;
    itsm(&mut out, svc);
    Ok(out)
}

/// Alert delivery state, read from the outbox: the totals survive a restart, and every
/// collector instance on one database reports the same numbers. Every configured sink and
/// kind gets a zero sample, so a rule on `increase()` sees the first failure.
fn alerts(out: &mut String, svc: &Service) -> Result<(), ServiceError> {
    use crate::store::outbox::State;
    let counts = svc.store.alert_counts()?;
    let mut totals: std::collections::BTreeMap<(String, String, &str), u64> = Default::default();
    for r in svc.alerts.routes() {
        for k in &r.on {
            for st in ["sent", "failed"] {
                totals.insert((r.name.clone(), k.as_str().to_string(), st), 0);
            }
        }
    }
    let mut pending = 0;
    for c in counts {
        match c.state {
            State::Pending => pending += c.count,
            State::Sent | State::Failed => {
                *totals
                    .entry((c.sink, c.kind, c.state.as_str()))
                    .or_default() += c.count;
            }
        }
    }
    for (st, help) in [
        ("sent", "Alerts delivered, per sink and kind."),
        (
            "failed",
            "Alerts given up on (refused, or past the retry horizon), per sink and kind.",
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP driftwatch_alerts_{st}_total {help}\n# TYPE driftwatch_alerts_{st}_total counter"
        );
        for ((sink, kind, s), n) in &totals {
            if *s == st {
                let _ = writeln!(
                    out,
                    "driftwatch_alerts_{st}_total{{sink=\"{}\",kind=\"{}\"}} {n}",
                    label(sink),
                    label(kind)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP driftwatch_alerts_pending Alerts in the outbox not delivered yet.\n# TYPE driftwatch_alerts_pending gauge\ndriftwatch_alerts_pending {pending}"
    );
    Ok(())
}

/// ITSM import (DESIGN §12.2): per source and outcome; bounded by the configured sources.
fn itsm(out: &mut String, svc: &Service) {
    let itsm = svc.itsm_status();
    if itsm.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP driftwatch_itsm_tickets_total Tickets judged by the ITSM import, by outcome.\n# TYPE driftwatch_itsm_tickets_total counter"
    );
    for st in &itsm {
        for (outcome, n) in &st.totals {
            let _ = writeln!(
                out,
                "driftwatch_itsm_tickets_total{{source=\"{}\",outcome=\"{}\"}} {n}",
                label(&st.name),
                label(outcome)
            );
        }
    }
    // One sample per source: (metric, type, help, the value of a source).
    type PerSource = fn(&crate::collector::service::itsm::SourceStatus) -> u64;
    let families: [(&str, &str, &str, PerSource); 3] = [
        (
            "driftwatch_itsm_poll_failures_total",
            "counter",
            "Polls that could not read the tickets.",
            |st| st.failed_polls,
        ),
        (
            "driftwatch_itsm_webhook_refused_total",
            "counter",
            "Webhook calls refused for their signature.",
            |st| st.webhook_refused,
        ),
        (
            "driftwatch_itsm_up",
            "gauge",
            "Whether the last poll of the source worked.",
            |st| u64::from(st.last_success.is_some() && st.last_error.is_none()),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for st in &itsm {
            let _ = writeln!(
                out,
                "{name}{{source=\"{}\"}} {}",
                label(&st.name),
                value(st)
            );
        }
    }
}

/// Escapes a label value per the exposition format.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
