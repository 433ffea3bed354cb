//! Re-classification: an event's status changes, the change is appended to the chain, and a day
//! already sealed into the chain gets a new version of its KPI row (both facts stay).

use jiff::Timestamp;
use jiff::civil::Date;

use super::super::records::{is_violation, reclass_body};
use super::cursor::Cursor;
use super::kpi_days::{append_kpi, compute_days};
use super::{Conn, Res, StoreError, Tx, TxKind, args, db_error};
use crate::util::timefmt;

/// Changes an event's status, keeping the old one in the chained history.
pub fn reclassify(
    c: &mut dyn Conn,
    event_id: i64,
    new_status: &str,
    reason: &str,
    now: Timestamp,
) -> Res<()> {
    let at = timefmt::format_timestamp(now);
    let mut tx = Tx::begin(c, TxKind::Write, "reclassify")?;
    let mut cursor = Cursor::lock(&mut tx)?;
    let row = tx
        .query_opt(
            "reclassify",
            "SELECT current_status, host, day FROM events WHERE id = ?1",
            args![event_id],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("event {event_id}")))?;
    let (old, host, day): (String, String, String) = (row.get(0)?, row.get(1)?, row.get(2)?);
    let change = Reclass {
        event_id,
        old: &old,
        new: new_status,
        open_after: is_violation(new_status),
        reason,
        at: &at,
    };
    append_reclass(&mut *tx, &mut cursor, &change)?;
    let sealed: i64 = tx
        .query_one(
            "reclassify",
            "SELECT COUNT(*) FROM kpi_days WHERE day = ?1 AND host = ?2",
            args![&day, &host],
        )?
        .get(0)?;
    if sealed > 0 {
        let d: Date = day
            .parse()
            .map_err(|e: jiff::Error| db_error("reclassify", e))?;
        for f in compute_days(&mut *tx, d, d, Some(&host))?
            .iter()
            .filter(|f| f.host == host)
        {
            append_kpi(&mut *tx, &mut cursor, f, &at)?;
        }
    }
    cursor.save(&mut *tx)?;
    tx.commit()
}

/// A re-classification about to be chained.
pub struct Reclass<'a> {
    /// The event re-classified.
    pub event_id: i64,
    /// Its status before.
    pub old: &'a str,
    /// Its status after.
    pub new: &'a str,
    /// Whether it stays open (an unresolved violation).
    pub open_after: bool,
    /// Why, for the history.
    pub reason: &'a str,
    /// When (RFC 3339).
    pub at: &'a str,
}

/// Appends a re-classification to the chain and applies it to the event's current status and
/// open flag. The caller holds the chain lock.
pub fn append_reclass(c: &mut dyn Conn, cursor: &mut Cursor, r: &Reclass<'_>) -> Res<()> {
    let body = reclass_body(r.event_id, r.old, r.new, r.open_after, r.reason, r.at);
    let (cseq, prev, hash) = cursor.peek("reclassification", &body);
    c.execute(
        "reclassify",
        "INSERT INTO reclassifications (id, chain_seq, event_id, old_status, new_status, open_after, reason, at,
           prev_hash, hash)
         VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM reclassifications), ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        args![cseq, r.event_id, r.old, r.new, r.open_after, r.reason, r.at, &prev, &hash],
    )?;
    cursor.advance(hash);
    c.execute(
        "reclassify",
        "UPDATE events SET current_status = ?1, open = ?2 WHERE id = ?3",
        args![r.new, r.open_after, r.event_id],
    )?;
    Ok(())
}
