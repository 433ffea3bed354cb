//! The audit walk: every chained record is read back, re-hashed and linked in chain order
//! ([`records::Walk`]), in one snapshot so concurrent appends cannot make an intact chain look
//! broken; then the mutable `current_status`/`open` columns are checked against the history.

use super::super::records::{Projection, Record, Walk, event_body, kpi_body, reclass_body};
use super::super::{ChainHead, ChainReport, StoreError};
use super::cursor::meta_get;
use super::kpi_days::{KPI_COLUMNS, host_day_at};
use super::{Conn, Res, Tx, TxKind};

/// Walks the whole chain; `at` asks for the hash of that record too. `ctx` names the store in
/// messages.
pub fn verify(c: &mut dyn Conn, at: Option<u64>, ctx: &str) -> Res<ChainReport> {
    let mut tx = Tx::begin(c, TxKind::Snapshot, "audit")?;
    let mut walk = Walk::new();
    tx.each(
        ctx,
        "SELECT chain_seq, id, host, seq, environment, tree, path, path_bytes, change, status, observed_at,
           window_start, received_at, day, blake3, previous_blake3, size, resolves, prev_hash, hash, detail FROM events",
        &[],
        &mut |r| {
            let host: String = r.get(2)?;
            let seq: i64 = r.get(3)?;
            let body = event_body(
                &host,
                seq,
                &r.get::<String>(4)?,
                (
                    &r.get::<String>(5)?,
                    &r.get::<String>(6)?,
                    r.get::<Option<String>>(7)?.as_deref(),
                    &r.get::<String>(8)?,
                    &r.get::<String>(9)?,
                    &r.get::<String>(10)?,
                    &r.get::<String>(11)?,
                ),
                r.get(12)?,
                &r.get::<String>(13)?,
                (
                    r.get::<Option<String>>(14)?.as_deref(),
                    r.get::<Option<String>>(15)?.as_deref(),
                    r.get(16)?,
                    r.get(17)?,
                ),
                r.get::<Option<String>>(20)?.as_deref(),
            );
            walk.add(
                r.get(0)?,
                Record::event(r.get(1)?, &host, seq, r.get(18)?, r.get(19)?, body),
            );
            Ok(())
        },
    )?;
    tx.each(
        ctx,
        "SELECT chain_seq, id, event_id, old_status, new_status, open_after, reason, at, prev_hash, hash
         FROM reclassifications",
        &[],
        &mut |r| {
            let event_id: i64 = r.get(2)?;
            let body = reclass_body(
                event_id,
                &r.get::<String>(3)?,
                &r.get::<String>(4)?,
                r.get(5)?,
                &r.get::<String>(6)?,
                &r.get::<String>(7)?,
            );
            walk.add(
                r.get(0)?,
                Record::reclassification(r.get(1)?, event_id, r.get(8)?, r.get(9)?, body),
            );
            Ok(())
        },
    )?;
    let sql = format!(
        "SELECT chain_seq, id, version, sealed_at, prev_hash, hash, {KPI_COLUMNS} FROM kpi_days"
    );
    tx.each(ctx, &sql, &[], &mut |r| {
        let d = host_day_at(r, 6)?;
        // The day as stored (not as parsed) names the record in a report.
        let day: String = r.get(6)?;
        let version: i64 = r.get(2)?;
        let body = kpi_body(&d, version, &r.get::<String>(3)?);
        walk.add(
            r.get(0)?,
            Record::kpi_day(
                r.get(1)?,
                (&day, &d.host, version),
                r.get(4)?,
                r.get(5)?,
                body,
            ),
        );
        Ok(())
    })?;
    let meta_len: u64 = meta_get(&mut *tx, "chain_len")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let meta_head = meta_get(&mut *tx, "chain_head")?.unwrap_or_default();
    let report = walk.finish(at, meta_len, &meta_head, || {
        projection_problems(&mut *tx, ctx)
    })?;
    tx.commit()?;
    Ok(report)
}

/// The mutable `current_status`/`open` columns must equal what the chained history says.
fn projection_problems(c: &mut dyn Conn, ctx: &str) -> Res<Vec<(i64, String)>> {
    let mut out = Vec::new();
    c.each(
        ctx,
        "SELECT e.chain_seq, e.host, e.seq, e.status, e.current_status, e.open,
           (SELECT new_status FROM reclassifications r WHERE r.event_id = e.id ORDER BY chain_seq DESC LIMIT 1),
           (SELECT open_after FROM reclassifications r WHERE r.event_id = e.id ORDER BY chain_seq DESC LIMIT 1)
         FROM events e",
        &[],
        &mut |r| {
            let p = Projection {
                chain_seq: r.get(0)?,
                host: r.get(1)?,
                seq: r.get(2)?,
                status: r.get(3)?,
                current: r.get(4)?,
                open: r.get(5)?,
                last_status: r.get(6)?,
                last_open: r.get(7)?,
            };
            out.extend(p.problem());
            Ok(())
        },
    )?;
    Ok(out)
}

/// The current chain head.
pub fn chain_head(c: &mut dyn Conn) -> Res<ChainHead> {
    let rows = c.query(
        "chain",
        "SELECT key, value FROM meta WHERE key IN ('chain_len', 'chain_head')",
        &[],
    )?;
    let get = |k: &str| -> Res<String> {
        for r in &rows {
            if r.get::<String>(0)? == k {
                return r.get(1);
            }
        }
        Err(StoreError::NotFound(format!("meta {k}")))
    };
    Ok(ChainHead {
        records: get("chain_len")?.parse().unwrap_or(0),
        head: get("chain_head")?,
    })
}
