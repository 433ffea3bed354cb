//! The background tasks of alerting: the delivery loop over the store's outbox, and the two
//! watchers that raise alerts no request causes (a host gone silent, a chain break).
//!
//! Invariants:
//! - Only [`deliver`] sends, and only what the outbox holds: a row is marked `sent` after the
//!   receiver accepted it, so a crash between the two re-sends it (at-least-once, same id).
//! - A receiver that is down is retried with [`super::backoff`] until the sink's `retry_for`
//!   horizon, then the alert is marked `failed` (counted in `/metrics`, listed by `alerts list`).
//!   Its trouble is logged when it starts and when it ends, not on every retry; a refusal
//!   (4xx) fails the alert at once and is logged once.
//! - The watchers only enqueue, with ids derived from what they saw: a restarted collector that
//!   sees the same silence or the same break raises no second alert.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::sinks::{self, ATTEMPT_TIMEOUT, Message, Sink};
use super::{AlertItem, AlertKind, Group, SendError, group, settle};
use crate::collector::service::Service;
use crate::store::outbox::Settle;

/// How long the delivery loop sleeps when nothing is due and nothing wakes it (the wake-up
/// from ingest makes a new alert go out at once; this bounds the wait for a retry).
const IDLE: Duration = Duration::from_millis(250);

/// Rows taken per round.
const ROUND: u64 = 1000;

/// One configured sink with what the loop needs of its `[[alert]]` table.
struct Route {
    sink: Box<dyn Sink>,
    retry_for: Duration,
}

/// Runs the delivery loop until the task is aborted.
pub async fn deliver(svc: Arc<Service>) {
    let routes: Arc<HashMap<String, Route>> = Arc::new(
        svc.alerts
            .routes()
            .iter()
            .map(|r| {
                let route = Route {
                    sink: sinks::build(r),
                    retry_for: r.retry_for,
                };
                (r.name.clone(), route)
            })
            .collect(),
    );
    // Sinks whose receiver is failing, so their trouble is logged once.
    let mut down: HashSet<String> = HashSet::new();
    loop {
        let s = svc.clone();
        let rows =
            tokio::task::spawn_blocking(move || s.store.due_alerts(Timestamp::now(), ROUND)).await;
        let rows = match rows {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the alert outbox failed; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "alert outbox reader panicked");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if rows.is_empty() {
            tokio::select! {
                () = svc.alert_wake.notified() => {}
                () = tokio::time::sleep(IDLE) => {}
            }
            continue;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for g in group(rows) {
            let routes = routes.clone();
            tasks.spawn(async move {
                let result = attempt(&routes, &g).await;
                (g, result)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let Ok((g, result)) = done else { continue };
            let now = Timestamp::now();
            let retry_for = routes.get(&g.sink).map_or(Duration::ZERO, |r| r.retry_for);
            let oldest = g
                .rows
                .iter()
                .filter_map(|r| r.created_at.parse::<Timestamp>().ok())
                .min()
                .unwrap_or(now);
            let attempts = g.rows.iter().map(|r| r.attempts).max().unwrap_or(0);
            let outcome = settle(&result, oldest, attempts, now, retry_for);
            report(&mut down, &g, &result, &outcome);
            let ids: Vec<String> = g.rows.iter().map(|r| r.id.clone()).collect();
            let s = svc.clone();
            let saved =
                tokio::task::spawn_blocking(move || s.store.settle_alerts(&ids, &outcome, now))
                    .await;
            if let Ok(Err(e)) = saved {
                // The rows stay pending: they are sent again (same ids), never lost.
                tracing::warn!(error = %e, sink = %g.sink, "recording an alert delivery failed");
            }
        }
    }
}

/// One delivery attempt of a group.
async fn attempt(routes: &HashMap<String, Route>, g: &Group) -> Result<(), SendError> {
    let Some(route) = routes.get(&g.sink) else {
        return Err(SendError::Refused(format!(
            "no [[alert]] named {:?} in the config any more",
            g.sink
        )));
    };
    let mut items = Vec::with_capacity(g.rows.len());
    for r in &g.rows {
        match serde_json::from_str::<AlertItem>(&r.body) {
            Ok(it) => items.push(it),
            Err(e) => {
                return Err(SendError::Refused(format!(
                    "alert {}: unreadable body: {e}",
                    r.id
                )));
            }
        }
    }
    let msg = Message {
        sink: g.sink.clone(),
        host: g.host.clone(),
        items,
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, route.sink.send(&msg)).await {
        Ok(r) => r,
        Err(_) => Err(SendError::Retry(format!(
            "no answer within {ATTEMPT_TIMEOUT:?}"
        ))),
    }
}

/// Logs what an attempt came to: trouble once when it starts, its end, every alert given up.
fn report(down: &mut HashSet<String>, g: &Group, result: &Result<(), SendError>, outcome: &Settle) {
    let n = g.rows.len();
    match (result, outcome) {
        (Ok(()), _) => {
            if down.remove(&g.sink) {
                tracing::info!(sink = %g.sink, "alert receiver is back; delivering");
            }
            tracing::debug!(sink = %g.sink, host = %g.host, alerts = n, "alerts delivered");
        }
        (Err(SendError::Refused(m)), _) => {
            tracing::error!(sink = %g.sink, host = %g.host, alerts = n, reason = %m, "alert refused by its receiver; not retried (marked failed)");
        }
        (Err(SendError::Retry(m)), Settle::Failed { .. }) => {
            tracing::error!(sink = %g.sink, host = %g.host, alerts = n, reason = %m, "alert retry horizon reached; marked failed");
        }
        (Err(SendError::Retry(m)), _) => {
            if down.insert(g.sink.clone()) {
                tracing::warn!(sink = %g.sink, reason = %m, "alert receiver unreachable; retrying with backoff");
            }
        }
    }
}

/// Raises `silent` alerts for hosts not heard from within `silent_after`, and again (status
/// `back`) when they are heard from.
pub async fn watch_silence(svc: Arc<Service>) {
    let silent_after = svc.cfg.silent_after;
    let tick = (silent_after / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    // Host → the last-seen time of its silence (what the alert ids are made of).
    let mut silent: HashMap<String, String> = HashMap::new();
    loop {
        tokio::time::sleep(tick).await;
        let s = svc.clone();
        let hosts = tokio::task::spawn_blocking(move || s.host_status(Timestamp::now())).await;
        let Ok(Ok(hosts)) = hosts else {
            continue;
        };
        let now = Timestamp::now();
        let mut raise = Vec::new();
        for h in hosts {
            let name = h.info.host.clone();
            if h.silent {
                if let std::collections::hash_map::Entry::Vacant(slot) = silent.entry(name.clone())
                {
                    let summary = format!(
                        "{name} is silent: not heard from since {} (silent_after {})",
                        h.info.last_seen,
                        humantime(silent_after)
                    );
                    let mut it =
                        AlertItem::new(AlertKind::Silent, &name, &h.info.environment, summary, now);
                    it.status = Some("silent".into());
                    it.detail = Some(format!("last seen {}", h.info.last_seen));
                    raise.extend(
                        svc.alerts
                            .route(&it, &format!("silent\0{name}\0{}", h.info.last_seen)),
                    );
                    slot.insert(h.info.last_seen);
                }
            } else if let Some(since) = silent.remove(&name) {
                let summary =
                    format!("{name} is back: heard from again after silence since {since}");
                let mut it =
                    AlertItem::new(AlertKind::Silent, &name, &h.info.environment, summary, now);
                it.status = Some("back".into());
                it.detail = Some(format!(
                    "silent since {since}, back at {}",
                    h.info.last_seen
                ));
                raise.extend(svc.alerts.route(&it, &format!("back\0{name}\0{since}")));
            }
        }
        if !raise.is_empty() {
            svc.enqueue_alerts(raise).await;
        }
    }
}

/// Runs the chain check every `every` and raises an `audit` alert for a break.
pub async fn verify_chain(svc: Arc<Service>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let s = svc.clone();
        let report = tokio::task::spawn_blocking(move || s.store.verify_chain(None)).await;
        let report = match report {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "background chain check failed to run");
                continue;
            }
            Err(_) => continue,
        };
        let Some(bad) = report.first_bad else {
            continue;
        };
        let summary = format!("audit chain broken: {bad}");
        let mut it = AlertItem::new(AlertKind::Audit, "", "", summary, Timestamp::now());
        it.detail = Some(bad.clone());
        it.status = Some("broken".into());
        let alerts = svc.alerts.route(&it, &format!("audit\0{bad}"));
        if svc.enqueue_alerts(alerts).await > 0 {
            tracing::error!(first_bad = %bad, "audit chain broken; alert raised");
        }
    }
}

/// At `kpi.report_at` (and at start, when today's time has passed: the ids keep a restart from
/// alerting twice) raises `kpi_missed` for each environment whose KPI yesterday was below target.
pub async fn watch_kpi(svc: Arc<Service>) {
    let mut first = true;
    loop {
        let now = Timestamp::now().to_zoned(svc.cfg.timezone.clone());
        let today_at = now.date().to_datetime(svc.cfg.report_at);
        let due = today_at.to_zoned(svc.cfg.timezone.clone()).ok();
        let wait = match due {
            // Past today's time: check yesterday now on the first round, else wait for tomorrow.
            Some(d) if d <= now && first => Duration::ZERO,
            Some(d) if d > now => now.duration_until(&d).unsigned_abs(),
            _ => {
                let tomorrow = now.date().tomorrow().ok().and_then(|t| {
                    t.to_datetime(svc.cfg.report_at)
                        .to_zoned(svc.cfg.timezone.clone())
                        .ok()
                });
                tomorrow.map_or(Duration::from_secs(3600), |t| {
                    now.duration_until(&t).unsigned_abs()
                })
            }
        };
        first = false;
        tokio::time::sleep(wait).await;
        let s = svc.clone();
        let rows = tokio::task::spawn_blocking(move || {
            let today = s.today();
            let yesterday = today.yesterday().unwrap_or(today);
            let days = s.host_days(yesterday, yesterday, None)?;
            Ok::<_, crate::collector::service::ServiceError>((
                yesterday,
                s.kpi_rows(
                    &days,
                    crate::kpi::Period::Day,
                    &[crate::kpi::Grouping::Environment],
                ),
            ))
        })
        .await;
        let (day, rows) = match rows {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "checking yesterday's KPI failed");
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
            Err(_) => continue,
        };
        let mut raise = Vec::new();
        for r in rows.iter().filter(|r| !r.met) {
            let summary = format!(
                "KPI missed in {} on {day}: change compliance {:.1}% below the target {:.1}% ({} unauthorized, {} unverifiable of {} changes)",
                r.environment,
                r.change_compliance * 100.0,
                r.target * 100.0,
                r.unauthorized,
                r.unverifiable,
                r.changes
            );
            let mut it = AlertItem::new(
                AlertKind::KpiMissed,
                "",
                &r.environment,
                summary,
                Timestamp::now(),
            );
            it.status = Some("missed".into());
            it.detail = Some(format!(
                "day {day}; host-day compliance {:.1}% ({} of {} host-days)",
                r.host_day_compliance * 100.0,
                r.host_days_compliant,
                r.host_days
            ));
            raise.extend(
                svc.alerts
                    .route(&it, &format!("kpi\0{day}\0{}", r.environment)),
            );
        }
        svc.enqueue_alerts(raise).await;
        // Past the report time now: the next round waits for tomorrow's.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
