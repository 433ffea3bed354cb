//! Per-host per-day KPI facts: computed live from events, presence and scans, and sealed once a
//! day is over into versioned, chained `kpi_days` rows (a re-classification of a sealed day adds
//! a version; the highest version is the day's fact).
//!
//! `sealed_through` in `meta` is the last sealed day; every day after it is computed live.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use jiff::civil::Date;

use super::super::records::{self, DayFacts, kpi_body, live_from, seal_range};
use super::cursor::{Cursor, meta_get};
use super::{Conn, Res, Row, Tx, TxKind, args};
use crate::kpi::HostDay;
use crate::util::timefmt;

/// The columns of a sealed KPI row that make up a [`HostDay`], in the order [`host_day_at`] reads.
pub const KPI_COLUMNS: &str = "day, host, environment, expected, reported, changes, authorized, retroactive, \
                               unauthorized, unverifiable, vetted, paths";

/// Reads the [`KPI_COLUMNS`] starting at column `at`.
pub fn host_day_at(r: &Row, at: usize) -> Res<HostDay> {
    let vetted: Option<i64> = r.get(at + 10)?;
    let paths: Option<i64> = r.get(at + 11)?;
    Ok(HostDay {
        day: r.get::<String>(at)?.parse().unwrap_or(Date::ZERO),
        host: r.get(at + 1)?,
        environment: r.get(at + 2)?,
        expected: r.get(at + 3)?,
        reported: r.get(at + 4)?,
        changes: r.count(at + 5)?,
        authorized: r.count(at + 6)?,
        retroactive: r.count(at + 7)?,
        unauthorized: r.count(at + 8)?,
        unverifiable: r.count(at + 9)?,
        vetted_paths: vetted.zip(paths).map(|(v, p)| (v as u64, p as u64)),
    })
}

/// The facts of `[from, to]` (for one host or all), as of `now`: finished days are sealed first,
/// then sealed rows and live days are read in one snapshot.
pub fn host_days(
    c: &mut dyn Conn,
    from: Date,
    to: Date,
    host: Option<&str>,
    now: Timestamp,
    today: Date,
) -> Res<Vec<HostDay>> {
    let mut tx = Tx::begin(c, TxKind::Snapshot, "kpi")?;
    if seal_plan(&mut *tx, today)?.is_some() {
        // Sealing writes; the snapshot is taken again after it, to see the sealed rows.
        drop(tx);
        let mut w = Tx::begin(c, TxKind::Write, "kpi")?;
        seal_until(&mut w, today, &timefmt::format_timestamp(now))?;
        w.commit()?;
        tx = Tx::begin(c, TxKind::Snapshot, "kpi")?;
    }
    let sealed_through: Option<Date> =
        meta_get(&mut *tx, "sealed_through")?.and_then(|s| s.parse().ok());
    let mut out = Vec::new();
    if let Some(st) = sealed_through.map(|s| s.min(to)).filter(|st| *st >= from) {
        let (f, t) = (from.to_string(), st.to_string());
        let filter = if host.is_some() { " AND host = ?3" } else { "" };
        let sql = tx.dialect().latest_per_group(
            KPI_COLUMNS,
            &format!("FROM kpi_days WHERE day >= ?1 AND day <= ?2{filter}"),
            "day, host",
            "version",
        );
        let rows = match host {
            Some(h) => tx.map("kpi", &sql, args![&f, &t, h], |r| host_day_at(r, 0))?,
            None => tx.map("kpi", &sql, args![&f, &t], |r| host_day_at(r, 0))?,
        };
        out.extend(rows);
    }
    let live_from = live_from(sealed_through, from);
    if live_from <= to {
        out.extend(compute_days(&mut *tx, live_from, to.min(today), host)?);
    }
    tx.commit()?;
    Ok(out)
}

/// The days to seal now, as far as this transaction can see.
fn seal_plan(c: &mut dyn Conn, today: Date) -> Res<Option<(Date, Date)>> {
    let sealed: Option<Date> = meta_get(c, "sealed_through")?.and_then(|s| s.parse().ok());
    let first: Option<String> = c
        .query_one("kpi", "SELECT MIN(first_day) FROM hosts", &[])?
        .get(0)?;
    Ok(seal_range(
        today,
        sealed,
        first.and_then(|f| f.parse::<Date>().ok()),
    ))
}

/// Seals every finished day (before `today`) not sealed yet into versioned, chained KPI rows.
/// Looks again once it holds the chain lock: another instance may have sealed the same days
/// meanwhile.
fn seal_until(tx: &mut Tx<'_>, today: Date, now: &str) -> Res<()> {
    let mut cursor = Cursor::lock(tx)?;
    let Some((start, yesterday)) = seal_plan(&mut **tx, today)? else {
        return Ok(());
    };
    for d in compute_days(&mut **tx, start, yesterday, None)? {
        append_kpi(&mut **tx, &mut cursor, &d, now)?;
    }
    cursor.save(&mut **tx)?;
    tx.execute(
        "kpi",
        "INSERT INTO meta (key, value) VALUES ('sealed_through', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        args![&yesterday.to_string()],
    )?;
    Ok(())
}

/// Appends the next version of a day's KPI row to the chain. The caller holds the chain lock.
pub fn append_kpi(c: &mut dyn Conn, cursor: &mut Cursor, d: &HostDay, sealed_at: &str) -> Res<()> {
    let day = d.day.to_string();
    let version: i64 = c
        .query_one(
            "kpi",
            "SELECT COALESCE(MAX(version), 0) + 1 FROM kpi_days WHERE day = ?1 AND host = ?2",
            args![&day, &d.host],
        )?
        .get(0)?;
    let (cseq, prev, hash) = cursor.peek("kpi_day", &kpi_body(d, version, sealed_at));
    let (vetted, paths) = d
        .vetted_paths
        .map_or((None, None), |(v, p)| (Some(v as i64), Some(p as i64)));
    c.execute(
        "kpi",
        "INSERT INTO kpi_days (id, chain_seq, day, host, environment, version, expected, reported, changes,
           authorized, retroactive, unauthorized, unverifiable, vetted, paths, sealed_at, prev_hash, hash)
         VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM kpi_days), ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,
           ?12, ?13, ?14, ?15, ?16, ?17)",
        args![
            cseq,
            &day,
            &d.host,
            &d.environment,
            version,
            d.expected,
            d.reported,
            d.changes as i64,
            d.authorized as i64,
            d.retroactive as i64,
            d.unauthorized as i64,
            d.unverifiable as i64,
            vetted,
            paths,
            sealed_at,
            &prev,
            &hash,
        ],
    )?;
    cursor.advance(hash);
    Ok(())
}

/// Computes host-day facts from events, presence and scans for `[from, to]`.
pub fn compute_days(
    c: &mut dyn Conn,
    from: Date,
    to: Date,
    host: Option<&str>,
) -> Res<Vec<HostDay>> {
    let (f, t) = (from.to_string(), to.to_string());
    let host_filter = host.unwrap_or("");
    let mut retirements: HashMap<String, Vec<records::Retirement>> = HashMap::new();
    c.each(
        "kpi",
        "SELECT host, from_day, to_day FROM retirements WHERE ?1 = '' OR host = ?1",
        args![host_filter],
        &mut |r| {
            retirements
                .entry(r.get(0)?)
                .or_default()
                .push((r.get(1)?, r.get(2)?));
            Ok(())
        },
    )?;
    let hosts = c.map(
        "kpi",
        "SELECT name, environment, first_day FROM hosts WHERE ?1 = '' OR name = ?1",
        args![host_filter],
        |r| {
            let name: String = r.get(0)?;
            let spans = retirements.get(&name).cloned().unwrap_or_default();
            Ok((name, r.get(1)?, r.get(2)?, spans))
        },
    )?;
    let mut presence: HashSet<(String, String)> = HashSet::new();
    c.each(
        "kpi",
        "SELECT host, day FROM presence WHERE day >= ?1 AND day <= ?2",
        args![&f, &t],
        &mut |r| {
            presence.insert((r.get(0)?, r.get(1)?));
            Ok(())
        },
    )?;
    // The authorizing prefixes match without regard to ASCII case, as SQLite's LIKE always did:
    // both stores must count alike.
    let like = c.dialect().ilike;
    let sql = format!(
        "SELECT host, day,
           SUM(CASE WHEN current_status NOT IN ('excluded', 'resolved') THEN 1 ELSE 0 END),
           SUM(CASE WHEN current_status {like} 'release:%' OR current_status {like} 'change:%'
                      OR current_status {like} 'retroactive:%' THEN 1 ELSE 0 END),
           SUM(CASE WHEN current_status {like} 'retroactive:%' THEN 1 ELSE 0 END),
           SUM(CASE WHEN current_status = 'unauthorized' THEN 1 ELSE 0 END),
           SUM(CASE WHEN current_status = 'unverifiable' THEN 1 ELSE 0 END)
         FROM events WHERE day >= ?1 AND day <= ?2 AND resolves IS NULL GROUP BY host, day"
    );
    let mut counts: HashMap<(String, String), [u64; 5]> = HashMap::new();
    c.each("kpi", &sql, args![&f, &t], &mut |r| {
        let n = |i: usize| Ok::<_, super::StoreError>(r.get::<Option<i64>>(i)?.unwrap_or(0) as u64);
        counts.insert((r.get(0)?, r.get(1)?), [n(2)?, n(3)?, n(4)?, n(5)?, n(6)?]);
        Ok(())
    })?;
    let mut vetted: HashMap<(String, String), (u64, u64)> = HashMap::new();
    c.each(
        "kpi",
        "SELECT host, day, CAST(SUM(vetted) AS BIGINT), CAST(SUM(paths) AS BIGINT) FROM scans
         WHERE day >= ?1 AND day <= ?2 GROUP BY host, day",
        args![&f, &t],
        &mut |r| {
            vetted.insert((r.get(0)?, r.get(1)?), (r.count(2)?, r.count(3)?));
            Ok(())
        },
    )?;
    Ok(DayFacts {
        hosts,
        presence,
        counts,
        vetted,
    }
    .days(from, to))
}
