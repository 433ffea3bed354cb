//! The alert outbox (schema 5): inserted by the transaction that stores its cause, read and
//! settled by the collector's delivery loop.
//!
//! Times are microseconds since the epoch, like `events.received_at`. The outbox is not part of
//! the hash chain: it is delivery state, not history (the events it reports are chained).

use jiff::Timestamp;

use super::super::outbox::{AlertCount, NewAlert, OutboxRow, Settle, State};
use super::super::records::{from_micros, micros};
use super::{Conn, Res, Row, Tx, TxKind, args, db_error};

const INSERT: &str =
    "INSERT INTO alert_outbox (id, sink, kind, host, body, state, attempts, created_at, due_at)
 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?7) ON CONFLICT (id) DO NOTHING";

/// The due time of the batch window of (sink, host) still open at `now`: the window of an alert
/// not yet attempted and not yet due.
const OPEN_WINDOW: &str = "SELECT MIN(due_at) FROM alert_outbox
 WHERE sink = ?1 AND host = ?2 AND state = 'pending' AND attempts = 0 AND due_at > ?3";

const COLUMNS: &str =
    "id, sink, kind, host, body, state, attempts, created_at, due_at, settled_at, last_error";

/// Inserts `alerts` on a connection inside the caller's transaction; returns how many were new.
pub fn insert(c: &mut dyn Conn, alerts: &[NewAlert], now: Timestamp) -> Res<u64> {
    let now_us = micros(now);
    let mut new = 0;
    for a in alerts {
        let due = if a.batch_micros <= 0 {
            now_us
        } else {
            let open: Option<i64> = c
                .query_one("alert outbox", OPEN_WINDOW, args![&a.sink, &a.host, now_us])?
                .get(0)?;
            open.unwrap_or(now_us + a.batch_micros)
        };
        new += c.execute(
            "alert outbox",
            INSERT,
            args![&a.id, &a.sink, &a.kind, &a.host, &a.body, now_us, due],
        )?;
    }
    Ok(new)
}

/// Inserts `alerts` in a transaction of their own.
pub fn enqueue(c: &mut dyn Conn, alerts: &[NewAlert], now: Timestamp) -> Res<u64> {
    let mut tx = Tx::begin(c, TxKind::Write, "alert outbox")?;
    let n = insert(&mut *tx, alerts, now)?;
    tx.commit()?;
    Ok(n)
}

fn row(r: &Row) -> Res<OutboxRow> {
    let state: String = r.get(5)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        sink: r.get(1)?,
        kind: r.get(2)?,
        host: r.get(3)?,
        body: r.get(4)?,
        state: State::parse(&state)
            .ok_or_else(|| db_error("alert outbox", format!("unknown state {state:?}")))?,
        attempts: r.count(6)?,
        created_at: from_micros(r.get(7)?),
        due_at: from_micros(r.get(8)?),
        settled_at: r.get::<Option<i64>>(9)?.map(from_micros),
        last_error: r.get(10)?,
    })
}

/// Pending alerts due at `now`, oldest first.
pub fn due(c: &mut dyn Conn, now: Timestamp, limit: u64) -> Res<Vec<OutboxRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM alert_outbox WHERE state = 'pending' AND due_at <= ?1
         ORDER BY created_at, id LIMIT {limit}"
    );
    c.map("alert outbox", &sql, args![micros(now)], row)
}

/// Records one attempt's outcome for `ids` in one transaction.
pub fn settle(c: &mut dyn Conn, ids: &[String], outcome: &Settle, now: Timestamp) -> Res<()> {
    let now_us = micros(now);
    let mut tx = Tx::begin(c, TxKind::Write, "alert outbox")?;
    for id in ids {
        // Only a pending row moves: another collector instance may have settled it already.
        match outcome {
            Settle::Sent => tx.execute(
                "alert outbox",
                "UPDATE alert_outbox SET state = 'sent', attempts = attempts + 1, settled_at = ?1
                 WHERE id = ?2 AND state = 'pending'",
                args![now_us, id],
            )?,
            Settle::Retry { due_at, error } => tx.execute(
                "alert outbox",
                "UPDATE alert_outbox SET attempts = attempts + 1, due_at = ?1, last_error = ?2
                 WHERE id = ?3 AND state = 'pending'",
                args![micros(*due_at), error, id],
            )?,
            Settle::Failed { error } => tx.execute(
                "alert outbox",
                "UPDATE alert_outbox SET state = 'failed', attempts = attempts + 1, settled_at = ?1,
                   last_error = ?2 WHERE id = ?3 AND state = 'pending'",
                args![now_us, error, id],
            )?,
        };
    }
    tx.commit()
}

/// The newest `limit` alerts, newest first.
pub fn list(c: &mut dyn Conn, limit: u64) -> Res<Vec<OutboxRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM alert_outbox ORDER BY created_at DESC, id DESC LIMIT {limit}"
    );
    c.map("alert outbox", &sql, &[], row)
}

/// Counts per (sink, kind, state).
pub fn counts(c: &mut dyn Conn) -> Res<Vec<AlertCount>> {
    c.map(
        "alert outbox",
        "SELECT sink, kind, state, COUNT(*) FROM alert_outbox GROUP BY sink, kind, state
         ORDER BY sink, kind, state",
        &[],
        |r| {
            let state: String = r.get(2)?;
            Ok(AlertCount {
                sink: r.get(0)?,
                kind: r.get(1)?,
                state: State::parse(&state)
                    .ok_or_else(|| db_error("alert outbox", format!("unknown state {state:?}")))?,
                count: r.count(3)?,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::super::Store;
    use super::super::super::outbox::{AlertPlan, NewAlert, Settle, State};
    use super::super::super::sqlite::SqliteStore;
    use crate::event::{ChangeEvent, EventBatch, Heartbeat};
    use jiff::Timestamp;

    /// One alert per stored event, batched per host within 5 s.
    struct EveryEvent;
    impl AlertPlan for EveryEvent {
        fn on_event(&self, host: &str, _: &str, e: &ChangeEvent, out: &mut Vec<NewAlert>) {
            out.push(NewAlert {
                id: format!("{host}-{}", e.seq),
                sink: "s".into(),
                kind: "unauthorized".into(),
                host: host.into(),
                body: "{}".into(),
                batch_micros: 5_000_000,
            });
        }
        fn on_gap(&self, _: &str, _: &str, _: u64, _: u64, _: &mut Vec<NewAlert>) {}
        fn on_heartbeat(&self, _: &Heartbeat, _: bool, _: u64, _: &mut Vec<NewAlert>) {}
    }

    fn batch(seqs: &[u64]) -> EventBatch {
        let events: Vec<_> = seqs
            .iter()
            .map(|s| serde_json::json!({"seq": s, "tree": "t", "path": format!("p{s}"), "change": "added",
                "status": "unauthorized", "observed_at": "2026-01-01T00:00:00Z", "window_start": "2026-01-01T00:00:00Z"}))
            .collect();
        serde_json::from_value(serde_json::json!({"host": "h", "events": events})).unwrap()
    }

    #[test]
    fn ingest_writes_alerts_once_batched_and_settles_them() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("c.db"), jiff::tz::TimeZone::UTC).unwrap();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        store
            .ingest_alerting(&batch(&[1]), t0, &EveryEvent)
            .unwrap();
        // Within the window: joins it. A re-sent event: no second alert.
        store
            .ingest_alerting(&batch(&[1, 2]), at(3), &EveryEvent)
            .unwrap();
        assert!(store.due_alerts(at(4), 10).unwrap().is_empty());
        let due = store.due_alerts(at(5), 10).unwrap();
        assert_eq!(
            due.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["h-1", "h-2"]
        );
        // After the window: a new one.
        store
            .ingest_alerting(&batch(&[3]), at(6), &EveryEvent)
            .unwrap();
        assert_eq!(store.due_alerts(at(10), 10).unwrap().len(), 2);
        assert_eq!(store.due_alerts(at(11), 10).unwrap().len(), 3);

        let ids = vec!["h-1".to_string(), "h-2".to_string()];
        let retry = Settle::Retry {
            due_at: at(20),
            error: "down".into(),
        };
        store.settle_alerts(&ids, &retry, at(11)).unwrap();
        assert_eq!(store.due_alerts(at(19), 10).unwrap().len(), 1);
        store.settle_alerts(&ids, &Settle::Sent, at(20)).unwrap();
        // Settled rows do not move again (another instance cannot fail a sent alert).
        store
            .settle_alerts(&ids, &Settle::Failed { error: "x".into() }, at(21))
            .unwrap();
        let list = store.list_alerts(10).unwrap();
        let h1 = list.iter().find(|r| r.id == "h-1").unwrap();
        assert_eq!(
            (h1.state, h1.attempts, h1.last_error.as_deref()),
            (State::Sent, 2, Some("down"))
        );
        let counts = store.alert_counts().unwrap();
        let n = |st: State| {
            counts
                .iter()
                .filter(|c| c.state == st)
                .map(|c| c.count)
                .sum::<u64>()
        };
        assert_eq!(
            (n(State::Sent), n(State::Pending), n(State::Failed)),
            (2, 1, 0)
        );
        // A plain ingest (no plan) raises nothing.
        store.ingest(&batch(&[4]), at(30)).unwrap();
        assert_eq!(store.list_alerts(10).unwrap().len(), 3);
        assert_eq!(store.verify_chain(None).unwrap().first_bad, None);
    }

    /// An outbox insert that fails fails the whole ingest: no event is stored without its alert.
    #[test]
    fn a_failed_outbox_insert_stores_no_event() {
        struct Broken;
        impl AlertPlan for Broken {
            fn on_event(&self, _: &str, _: &str, _: &ChangeEvent, out: &mut Vec<NewAlert>) {
                out.push(NewAlert {
                    id: "x".into(),
                    sink: "s".into(),
                    kind: "k".into(),
                    host: "h".into(),
                    body: "{}".into(),
                    batch_micros: 0,
                });
            }
            fn on_gap(&self, _: &str, _: &str, _: u64, _: u64, _: &mut Vec<NewAlert>) {}
            fn on_heartbeat(&self, _: &Heartbeat, _: bool, _: u64, _: &mut Vec<NewAlert>) {}
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.db");
        let store = SqliteStore::open(&path, jiff::tz::TimeZone::UTC).unwrap();
        // Make every outbox insert fail, as a full disk or a lost connection would.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TRIGGER no_alerts BEFORE INSERT ON alert_outbox BEGIN SELECT RAISE(ABORT, 'outbox down'); END;")
            .unwrap();
        let err = store
            .ingest_alerting(&batch(&[1]), Timestamp::now(), &Broken)
            .unwrap_err();
        assert!(err.to_string().contains("outbox down"), "{err}");
        assert!(
            store.events(&Default::default()).unwrap().is_empty(),
            "the event must not be stored without its alert"
        );
        assert_eq!(store.hosts(Timestamp::now()).unwrap().len(), 0);
    }
}
