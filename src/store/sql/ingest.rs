//! Ingestion and the event list.
//!
//! A batch is stored in one transaction holding the chain lock. Each event is inserted with
//! `ON CONFLICT (host, seq) DO NOTHING`; when the row already exists (an earlier batch, or
//! another instance a moment ago) its content hash decides: the same hash is a duplicate
//! (acknowledged, stored once), another hash under the same sequence number is a replay
//! (refused and counted). Gaps in the sequence numbers are counted as missing until the late
//! events arrive; a record that closes an open change re-classifies it in the same transaction.

use jiff::Timestamp;
use jiff::civil::Date;

use super::super::outbox::AlertPlan;
use super::super::records::{self, content_hash, event_body_of, from_micros, is_violation, micros};
use super::super::{EventQuery, StoredEvent};
use super::cursor::Cursor;
use super::hosts::upsert_host;
use super::outbox;
use super::reclassify::{Reclass, append_reclass};
use super::{Conn, Param, Res, Tx, TxKind, args};
use crate::event::{EventBatch, IngestResult};
use crate::util::timefmt;

/// Inserts an event unless its (host, seq) is taken (then it changes no row). The id is the
/// next after the largest (assigned under the chain lock). No `RETURNING`: on SQLite it makes
/// every insert keep a statement journal, a seventh of the ingestion time.
const INSERT_EVENT: &str = "INSERT INTO events (id, chain_seq, host, seq, environment, tree, path, path_bytes, change,
   status, observed_at, window_start, received_at, day, blake3, previous_blake3, size, resolves, content_hash,
   current_status, open, prev_hash, hash, detail)
 VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM events), ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,
   ?14, ?15, ?16, ?17, ?18, ?9, ?19, ?20, ?21, ?22)
 ON CONFLICT (host, seq) DO NOTHING";

const UPSERT_SCAN: &str =
    "INSERT INTO scans (host, tree, day, finished_at, received_at, paths, vetted, release, seconds)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
 ON CONFLICT (host, tree, day) DO UPDATE SET finished_at = excluded.finished_at,
   received_at = excluded.received_at, paths = excluded.paths, vetted = excluded.vetted,
   release = excluded.release, seconds = excluded.seconds";

/// Stores a batch idempotently, received at `now` on collector day `today`.
pub fn ingest(
    c: &mut dyn Conn,
    batch: &EventBatch,
    now: Timestamp,
    today: Date,
    plan: &dyn AlertPlan,
) -> Res<IngestResult> {
    let day = today.to_string();
    let received = micros(now);
    let at = timefmt::format_timestamp(now);
    let mut tx = Tx::begin(c, TxKind::Write, "ingest")?;
    let mut cursor = Cursor::lock(&mut tx)?;
    upsert_host(&mut *tx, &batch.host, &batch.environment, received, &day)?;
    let row = tx.query_one(
        "ingest",
        "SELECT last_seq, missing_seqs FROM hosts WHERE name = ?1",
        args![&batch.host],
    )?;
    let (mut last_seq, mut missing): (i64, i64) = (row.get(0)?, row.get(1)?);
    let mut result = IngestResult::default();
    let mut replays = 0i64;
    let mut resolve = Vec::new();
    // Alerts for what this batch stores, inserted before the commit: with the events or not at all.
    let mut alerts = Vec::new();
    for e in &batch.events {
        let seq = e.seq as i64;
        let ch = content_hash(e);
        let body = event_body_of(&batch.host, &batch.environment, e, received, &day);
        let (cseq, prev, hash) = cursor.peek("event", &body);
        let size = e.size.map(|s| s as i64);
        let resolves = e.resolves.map(|s| s as i64);
        let params: &[Param<'_>] = args![
            cseq,
            &batch.host,
            seq,
            &batch.environment,
            &e.tree,
            &e.path,
            &e.path_bytes,
            &e.change,
            &e.status,
            &e.observed_at,
            &e.window_start,
            received,
            &day,
            &e.blake3,
            &e.previous_blake3,
            size,
            resolves,
            &ch,
            is_violation(&e.status),
            &prev,
            &hash,
            &e.detail,
        ];
        let inserted = tx.execute("ingest", INSERT_EVENT, params)? == 1;
        if inserted {
            cursor.advance(hash);
            if seq > last_seq + 1 {
                missing += seq - last_seq - 1;
                plan.on_gap(
                    &batch.host,
                    &batch.environment,
                    (last_seq + 1) as u64,
                    (seq - 1) as u64,
                    &mut alerts,
                );
            } else if seq < last_seq && missing > 0 {
                missing -= 1;
            }
            last_seq = last_seq.max(seq);
            result.stored += 1;
            plan.on_event(&batch.host, &batch.environment, e, &mut alerts);
            if let Some(r) = resolves {
                resolve.push((r, e.status.clone()));
            }
        } else {
            let prior: String = tx
                .query_one(
                    "ingest",
                    "SELECT content_hash FROM events WHERE host = ?1 AND seq = ?2",
                    args![&batch.host, seq],
                )?
                .get(0)?;
            if prior == ch {
                result.duplicates += 1;
            } else {
                result.rejected.push(e.seq);
                replays += 1;
            }
        }
        result.acked_seq = result.acked_seq.max(e.seq);
    }
    let open = format!(
        "SELECT id, current_status FROM events WHERE host = ?1 AND seq = ?2 AND {}",
        tx.dialect().is_true("open")
    );
    for (r, record_status) in resolve {
        if let Some(row) = tx.query_opt("ingest", &open, args![&batch.host, r])? {
            let (id, status): (i64, String) = (row.get(0)?, row.get(1)?);
            let (new, reason) = records::closing(&status, &record_status);
            let change = Reclass {
                event_id: id,
                old: &status,
                new: &new,
                open_after: false,
                reason: &reason,
                at: &at,
            };
            append_reclass(&mut *tx, &mut cursor, &change)?;
        }
    }
    for s in &batch.scans {
        tx.execute(
            "scans",
            UPSERT_SCAN,
            args![
                &batch.host,
                &s.tree,
                &day,
                &s.finished_at,
                received,
                s.paths as i64,
                s.vetted as i64,
                &s.release,
                s.seconds,
            ],
        )?;
        result.scans += 1;
    }
    tx.execute(
        "ingest",
        "UPDATE hosts SET last_seq = ?1, missing_seqs = ?2, replays = replays + ?3 WHERE name = ?4",
        args![last_seq, missing, replays, &batch.host],
    )?;
    outbox::insert(&mut *tx, &alerts, now)?;
    cursor.save(&mut *tx)?;
    tx.commit()?;
    Ok(result)
}

/// Lists events (closing records, `resolves` set, are not events of their own).
pub fn events(c: &mut dyn Conn, q: &EventQuery) -> Res<Vec<StoredEvent>> {
    let d = c.dialect();
    let mut sql = String::from(
        "SELECT id, host, seq, environment, tree, path, path_bytes, change, current_status, status, open,
           observed_at, window_start, received_at, blake3, previous_blake3, size, detail FROM events WHERE resolves IS NULL",
    );
    let mut args: Vec<String> = Vec::new();
    // Appends `clause`, its `?` numbered as the next parameter, `v` bound to it.
    let mut arg = |sql: &mut String, clause: &str, v: String| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(f) = q.from {
        arg(&mut sql, " AND day >= ?", f.to_string());
    }
    if let Some(t) = q.to {
        arg(&mut sql, " AND day <= ?", t.to_string());
    }
    if let Some(h) = &q.host {
        arg(&mut sql, " AND host = ?", h.clone());
    }
    if let Some(s) = &q.status {
        if s.contains(':') {
            arg(&mut sql, " AND current_status = ?", s.clone());
        } else {
            // A prefix (`retroactive`) matches every status it starts (`retroactive:CHG-1`).
            arg(&mut sql, " AND (current_status = ?", s.clone());
            arg(
                &mut sql,
                &format!(" OR current_status {} ? || ':%')", d.ilike),
                s.clone(),
            );
        }
    }
    if q.open_only {
        sql.push_str(&format!(" AND {}", d.is_true("open")));
    }
    sql.push_str(" ORDER BY received_at, host, seq");
    if let Some(l) = q.limit {
        sql.push_str(&format!(" LIMIT {l}"));
    }
    let params: Vec<Param<'_>> = args.iter().map(Param::from).collect();
    c.map("events", &sql, &params, |r| {
        Ok(StoredEvent {
            id: r.get(0)?,
            host: r.get(1)?,
            seq: r.count(2)?,
            environment: r.get(3)?,
            tree: r.get(4)?,
            path: r.get(5)?,
            path_bytes: r.get(6)?,
            change: r.get(7)?,
            status: r.get(8)?,
            original_status: r.get(9)?,
            open: r.get(10)?,
            observed_at: r.get(11)?,
            window_start: r.get(12)?,
            received_at: from_micros(r.get(13)?),
            blake3: r.get(14)?,
            previous_blake3: r.get(15)?,
            size: r.get::<Option<i64>>(16)?.map(|s| s as u64),
            detail: r.get(17)?,
            verified_approver: None,
        })
    })
}
