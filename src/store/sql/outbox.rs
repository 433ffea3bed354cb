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
