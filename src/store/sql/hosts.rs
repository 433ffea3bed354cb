//! Hosts: their presence per day, heartbeats with the coverage they report, the host list and
//! the latest scans.

use jiff::Timestamp;
use jiff::civil::Date;

use super::super::outbox::AlertPlan;
use super::super::records::{self, from_micros, micros};
use super::super::{HeartbeatOutcome, HostInfo, LatestScan, keep_latest};
use super::{Conn, Res, Tx, TxKind, args};
use crate::event::Heartbeat;

/// Notes that `host` was seen at `now` (µs) on `day`: creates it, keeps its latest environment
/// and last-seen time (never moved back by a late request), and marks the day present.
pub fn upsert_host(c: &mut dyn Conn, host: &str, env: &str, now: i64, day: &str) -> Res<()> {
    let sql = format!(
        "INSERT INTO hosts (name, environment, first_seen, first_day, last_seen) VALUES (?1, ?2, ?3, ?4, ?3)
         ON CONFLICT (name) DO UPDATE SET environment = excluded.environment,
           last_seen = {}(hosts.last_seen, excluded.last_seen)",
        c.dialect().greatest
    );
    c.execute("hosts", &sql, args![host, env, now, day])?;
    c.execute(
        "presence",
        "INSERT INTO presence (host, day) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        args![host, day],
    )?;
    Ok(())
}

/// Stores a heartbeat; reports whether its coverage differs from the previous one's.
pub fn heartbeat(
    c: &mut dyn Conn,
    hb: &Heartbeat,
    now: Timestamp,
    today: Date,
    plan: &dyn AlertPlan,
) -> Res<HeartbeatOutcome> {
    let day = today.to_string();
    let coverage = records::coverage_column(hb);
    let mut tx = Tx::begin(c, TxKind::Write, "heartbeat")?;
    upsert_host(&mut *tx, &hb.host, &hb.environment, micros(now), &day)?;
    // Locked: two collectors taking heartbeats of one host must not both see the old coverage
    // and both report a change.
    let sql = format!(
        "SELECT coverage, spool_dropped FROM hosts WHERE name = ?1{}",
        tx.dialect().for_update
    );
    let row = tx.query_one("heartbeat", &sql, args![&hb.host])?;
    let before: Option<String> = row.get(0)?;
    let dropped_before = row.count(1)?;
    let sql = format!(
        "UPDATE hosts SET agent_version = ?1, spool_dropped = {}(spool_dropped, ?2), spool_depth = ?3,
           coverage = ?4
         WHERE name = ?5",
        tx.dialect().greatest
    );
    tx.execute(
        "heartbeat",
        &sql,
        args![
            &hb.agent_version,
            hb.spool_dropped as i64,
            hb.spool_depth as i64,
            &coverage,
            &hb.host,
        ],
    )?;
    let coverage_changed = before != coverage;
    // The alerts commit with the heartbeat that caused them, or not at all.
    let mut alerts = Vec::new();
    // A host's first report of its coverage is no change anyone needs to hear about.
    let alert_coverage = coverage_changed && before.is_some();
    plan.on_heartbeat(hb, alert_coverage, dropped_before, &mut alerts);
    super::outbox::insert(&mut *tx, &alerts, now)?;
    tx.commit()?;
    Ok(HeartbeatOutcome { coverage_changed })
}

/// Every host, by name, as seen at `now`.
pub fn hosts(c: &mut dyn Conn, now: Timestamp) -> Res<Vec<HostInfo>> {
    let sql = format!(
        "SELECT name, environment, first_seen, last_seen, agent_version, last_seq, missing_seqs, replays,
           spool_dropped, retired_day, (SELECT COUNT(*) FROM events e WHERE e.host = h.name AND {}),
           spool_depth, coverage
         FROM hosts h ORDER BY name",
        c.dialect().is_true("e.open")
    );
    let now_us = micros(now);
    c.map("hosts", &sql, &[], |r| {
        let last: i64 = r.get(3)?;
        let (config_digest, trees) = records::coverage_of(r.get::<Option<String>>(12)?.as_deref());
        Ok(HostInfo {
            host: r.get(0)?,
            environment: r.get(1)?,
            first_seen: from_micros(r.get(2)?),
            last_seen: from_micros(last),
            agent_version: r.get(4)?,
            last_seq: r.count(5)?,
            missing_seqs: r.count(6)?,
            replays: r.count(7)?,
            spool_dropped: r.count(8)?,
            spool_depth: r.count(11)?,
            retired: r.get::<Option<String>>(9)?.is_some(),
            open_unauthorized: r.count(10)?,
            silent_for_seconds: (now_us - last).max(0) / 1_000_000,
            coverage_reduced: trees.iter().any(|t| t.coverage_reduced),
            config_digest,
            trees,
        })
    })
}

/// The latest scan of every (host, tree) received on `since` or later.
pub fn latest_scans(c: &mut dyn Conn, since: Date) -> Res<Vec<LatestScan>> {
    let rows = c.map(
        "scans",
        "SELECT host, tree, seconds, finished_at, received_at FROM scans WHERE day >= ?1",
        args![&since.to_string()],
        |r| {
            Ok((
                LatestScan {
                    host: r.get(0)?,
                    tree: r.get(1)?,
                    seconds: r.get(2)?,
                    finished_at: r.get(3)?,
                },
                r.get::<i64>(4)?,
            ))
        },
    )?;
    Ok(keep_latest(rows))
}

#[cfg(test)]
mod tests {
    use jiff::tz::TimeZone;

    use crate::event::EventBatch;
    use crate::store::Store;
    use crate::store::sqlite::SqliteStore;

    #[test]
    fn latest_scans_keep_the_last_finished_scan_per_host_and_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("collector.db"), TimeZone::UTC).unwrap();
        let ingest = |at: &str, scans: serde_json::Value| {
            let b: EventBatch = serde_json::from_value(
                serde_json::json!({"host": "web-01", "events": [], "scans": scans}),
            )
            .unwrap();
            store.ingest(&b, at.parse().unwrap()).unwrap();
        };
        let scan = |tree: &str, finished: &str, seconds: f64| {
            serde_json::json!({"tree": tree, "finished_at": finished, "paths": 1, "vetted": 1,
                               "seconds": seconds})
        };
        ingest(
            "2026-11-15T12:00:00Z",
            serde_json::json!([scan("shop", "2026-11-15T11:00:00Z", 1.0)]),
        );
        ingest(
            "2026-11-16T12:00:00Z",
            serde_json::json!([
                scan("shop", "2026-11-16T11:00:00Z", 2.0),
                scan("blog", "2026-11-16T11:00:00Z", 3.0)
            ]),
        );
        // Received a day later but finished earlier (an agent's spool drained late), in
        // another offset: the 16th's scan of the shop is still the latest.
        ingest(
            "2026-11-17T00:30:00Z",
            serde_json::json!([scan("shop", "2026-11-16T12:30:00+02:00", 4.0)]),
        );
        let got: Vec<(String, f64)> = store
            .latest_scans("2026-11-16".parse().unwrap())
            .unwrap()
            .into_iter()
            .map(|s| (s.tree, s.seconds))
            .collect();
        assert_eq!(got, [("blog".to_string(), 3.0), ("shop".to_string(), 2.0)]);
        let got = store.latest_scans("2026-11-17".parse().unwrap()).unwrap();
        assert_eq!(
            got.iter().map(|s| s.seconds).collect::<Vec<_>>(),
            [4.0],
            "{got:?}"
        );
    }
}
