//! What every storage backend must compute identically: the hashed bodies of chained records,
//! the content hash that makes ingestion idempotent, the walk `verify_chain` does over the chain,
//! and the assembly of per-host-day KPI facts. SQLite and PostgreSQL only differ in how they fetch
//! the rows; for the same inputs and timestamps they produce the same chain, byte for byte.

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::Timestamp;
use jiff::civil::Date;
use serde_json::json;

use super::chain::{self, GENESIS};
use super::{ChainReport, HostTree, StoreError};
use crate::event::{ChangeEvent, Heartbeat, TreeCoverage};
use crate::kpi::HostDay;
use crate::util::timefmt;

/// Hash of a token secret: the store never sees the secret again.
pub fn token_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// A new token secret: `dw_` and 32 random bytes in hex.
pub fn new_secret() -> Result<String, StoreError> {
    use std::io::Read;
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| StoreError::Db {
            context: "/dev/urandom".into(),
            message: e.to_string(),
        })?;
    Ok(format!("dw_{}", hex::encode(raw)))
}

/// The `hosts.coverage` column as stored by both backends.
#[derive(serde::Serialize, serde::Deserialize)]
struct CoverageColumn {
    config_digest: Option<String>,
    trees: Vec<TreeCoverage>,
}

/// A heartbeat's coverage as stored in `hosts.coverage`: canonical JSON (trees sorted by name),
/// so equal coverage gives equal text and a change is a text comparison. `None` when the
/// heartbeat carries neither a digest nor trees (an agent older than the fields).
pub fn coverage_column(hb: &Heartbeat) -> Option<String> {
    if hb.config_digest.is_none() && hb.coverage.is_empty() {
        return None;
    }
    let mut trees = hb.coverage.clone();
    trees.sort_by(|a, b| a.tree.cmp(&b.tree));
    let col = CoverageColumn {
        config_digest: hb.config_digest.clone(),
        trees,
    };
    Some(serde_json::to_string(&col).expect("plain data serializes"))
}

/// `hosts.coverage` read back: the config digest and the trees, each marked reduced when it
/// excludes more than its manifest. A value this code cannot read (hand-edited) shows as none.
pub fn coverage_of(col: Option<&str>) -> (Option<String>, Vec<HostTree>) {
    let Some(c) = col.and_then(|c| serde_json::from_str::<CoverageColumn>(c).ok()) else {
        return (None, Vec::new());
    };
    let trees = c
        .trees
        .into_iter()
        .map(|t| HostTree {
            coverage_reduced: !t.local_exclude.is_empty(),
            tree: t.tree,
            exclude: t.exclude,
            local_exclude: t.local_exclude,
        })
        .collect();
    (c.config_digest, trees)
}

/// A timestamp as stored: microseconds since the Unix epoch.
pub fn micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

/// A stored timestamp, formatted for people and the API.
pub fn from_micros(m: i64) -> String {
    timefmt::format_timestamp(Timestamp::from_microsecond(m).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Statuses that count against the KPI and stay open until resolved or re-classified.
pub fn is_violation(status: &str) -> bool {
    status == "unauthorized" || status == "unverifiable"
}

/// The hashed fields of an event row, in chain order. `detail` (schema 4: which attribute a
/// `metadata` change touched) is hashed only when present, so the rows written before it existed
/// keep their hashes and the chain still verifies.
#[allow(clippy::too_many_arguments)]
pub fn event_body(
    host: &str,
    seq: i64,
    environment: &str,
    e: (&str, &str, Option<&str>, &str, &str, &str, &str),
    received_at: i64,
    day: &str,
    hashes: (Option<&str>, Option<&str>, Option<i64>, Option<i64>),
    detail: Option<&str>,
) -> String {
    let (tree, path, path_bytes, change, status, observed_at, window_start) = e;
    let (b3, prev_b3, size, resolves) = hashes;
    let mut fields = vec![
        json!(host),
        json!(seq),
        json!(environment),
        json!(tree),
        json!(path),
        json!(path_bytes),
        json!(change),
        json!(status),
        json!(observed_at),
        json!(window_start),
        json!(received_at),
        json!(day),
        json!(b3),
        json!(prev_b3),
        json!(size),
        json!(resolves),
    ];
    if let Some(d) = detail {
        fields.push(json!(d));
    }
    chain::body(&fields)
}

/// The hashed fields of a re-classification row, in chain order.
pub fn reclass_body(
    event_id: i64,
    old: &str,
    new: &str,
    open_after: bool,
    reason: &str,
    at: &str,
) -> String {
    chain::body(&[
        json!(event_id),
        json!(old),
        json!(new),
        json!(open_after),
        json!(reason),
        json!(at),
    ])
}

/// The hashed fields of a sealed KPI row, in chain order.
pub fn kpi_body(d: &HostDay, version: i64, sealed_at: &str) -> String {
    let (vetted, paths) = d
        .vetted_paths
        .map_or((None, None), |(v, p)| (Some(v), Some(p)));
    chain::body(&[
        json!(d.day.to_string()),
        json!(d.host),
        json!(d.environment),
        json!(version),
        json!(d.expected),
        json!(d.reported),
        json!(d.changes),
        json!(d.authorized),
        json!(d.retroactive),
        json!(d.unauthorized),
        json!(d.unverifiable),
        json!(vetted),
        json!(paths),
        json!(sealed_at),
    ])
}

/// Hash of an event as the agent sent it: a re-send with the same hash is a duplicate, one with
/// another hash under the same sequence number is a replay.
pub fn content_hash(e: &ChangeEvent) -> String {
    blake3::hash(
        serde_json::to_string(e)
            .expect("events serialize")
            .as_bytes(),
    )
    .to_hex()
    .to_string()
}

/// The event body of `e` as `host` sent it, received at `received` (µs) on `day`.
pub fn event_body_of(
    host: &str,
    environment: &str,
    e: &ChangeEvent,
    received: i64,
    day: &str,
) -> String {
    event_body(
        host,
        e.seq as i64,
        environment,
        (
            &e.tree,
            &e.path,
            e.path_bytes.as_deref(),
            &e.change,
            &e.status,
            &e.observed_at,
            &e.window_start,
        ),
        received,
        day,
        (
            e.blake3.as_deref(),
            e.previous_blake3.as_deref(),
            e.size.map(|s| s as i64),
            e.resolves.map(|s| s as i64),
        ),
        e.detail.as_deref(),
    )
}

/// The first day to seal and the last (yesterday), or `None` when every finished day is sealed
/// (or no host was ever seen).
pub fn seal_range(
    today: Date,
    sealed_through: Option<Date>,
    first_day: Option<Date>,
) -> Option<(Date, Date)> {
    let yesterday = today.yesterday().ok()?;
    let first = first_day?;
    let start = sealed_through
        .and_then(|s| s.tomorrow().ok())
        .unwrap_or(first)
        .max(first);
    (start <= yesterday).then_some((start, yesterday))
}

/// How a record closing an open change (`resolves` set) changes the change it closes: the new
/// status and the reason kept in the history. An authorizing status from the agent (an approval
/// after the fact, or a deploy that made the path approved) re-classifies an unauthorized change;
/// `resolved` (the path went back to its approved state) only closes it. The closing record is
/// itself never counted.
pub fn closing(target_status: &str, record_status: &str) -> (String, String) {
    let authorizing = ["release:", "change:", "retroactive:"]
        .iter()
        .any(|p| record_status.starts_with(p));
    if authorizing && is_violation(target_status) {
        (
            record_status.to_string(),
            format!("approved after the fact: the agent reports {record_status}"),
        )
    } else if record_status == "resolved" {
        (
            target_status.to_string(),
            "resolved: path back to its approved state".to_string(),
        )
    } else {
        (
            target_status.to_string(),
            format!("closed: the agent reports {record_status}"),
        )
    }
}

/// The first day of a retirement that starts with a revocation on `day`: the revocation day
/// itself stays expected, so revoking a token cannot hide that day's result.
pub fn retirement_start(day: Date) -> String {
    day.tomorrow().unwrap_or(day).to_string()
}

/// The first day `host_days` computes live (not read from sealed rows).
pub fn live_from(sealed_through: Option<Date>, from: Date) -> Date {
    sealed_through.map_or(from, |s| s.tomorrow().unwrap_or(s).max(from))
}

/// What the KPI is computed from, as fetched for a range of days.
/// A retirement span `[from_day, to_day)`; open-ended without `to_day`.
pub type Retirement = (String, Option<String>);

/// `(name, environment, first_day, retirements)` of a host.
pub type HostSpan = (String, String, String, Vec<Retirement>);

#[derive(Debug, Default)]
pub struct DayFacts {
    /// `(name, environment, first_day, retirements)` of each host; a retirement is the span of
    /// days `[from, to)` (open-ended without `to`) in which it had no live agent token.
    pub hosts: Vec<HostSpan>,
    /// `(host, day)` pairs with a heartbeat or report.
    pub presence: HashSet<(String, String)>,
    /// `(host, day)` → `[changes, authorized, retroactive, unauthorized, unverifiable]`.
    pub counts: HashMap<(String, String), [u64; 5]>,
    /// `(host, day)` → `(vetted, paths)` summed over the day's scans.
    pub vetted: HashMap<(String, String), (u64, u64)>,
}

impl DayFacts {
    /// One row per host and day in `[from, to]` where the host was expected or had changes,
    /// ordered by day, then host.
    pub fn days(&self, from: Date, to: Date) -> Vec<HostDay> {
        let mut out = BTreeMap::new();
        for (name, env, first_day, retired) in &self.hosts {
            let mut d = from;
            while d <= to {
                let ds = d.to_string();
                let retired_now = retired
                    .iter()
                    .any(|(f, t)| *f <= ds && t.as_ref().is_none_or(|t| ds < *t));
                let expected = *first_day <= ds && !retired_now;
                let key = (name.clone(), ds.clone());
                let c = self.counts.get(&key).copied();
                if expected || c.is_some() {
                    let [changes, authorized, retroactive, unauthorized, unverifiable] =
                        c.unwrap_or_default();
                    out.insert(
                        (ds.clone(), name.clone()),
                        HostDay {
                            day: d,
                            host: name.clone(),
                            environment: env.clone(),
                            expected,
                            reported: self.presence.contains(&key),
                            changes,
                            authorized,
                            retroactive,
                            unauthorized,
                            unverifiable,
                            vetted_paths: self.vetted.get(&key).copied(),
                        },
                    );
                }
                match d.tomorrow() {
                    Ok(n) => d = n,
                    Err(_) => break,
                }
            }
        }
        out.into_values().collect()
    }
}

/// One chained record as read back for verification.
#[derive(Debug, Clone)]
pub struct Record {
    table: &'static str,
    id: i64,
    what: String,
    prev: String,
    hash: String,
    body: String,
    kind: &'static str,
}

impl Record {
    /// An `events` row; `body` from [`event_body`].
    pub fn event(
        id: i64,
        host: &str,
        seq: i64,
        prev: String,
        hash: String,
        body: String,
    ) -> Record {
        Record {
            table: "events",
            id,
            what: format!("event {host}#{seq}"),
            prev,
            hash,
            body,
            kind: "event",
        }
    }

    /// A `reclassifications` row; `body` from [`reclass_body`].
    pub fn reclassification(
        id: i64,
        event_id: i64,
        prev: String,
        hash: String,
        body: String,
    ) -> Record {
        Record {
            table: "reclassifications",
            id,
            what: format!("re-classification of event id {event_id}"),
            prev,
            hash,
            body,
            kind: "reclassification",
        }
    }

    /// A `kpi_days` row; `body` from [`kpi_body`].
    pub fn kpi_day(
        id: i64,
        (day, host, version): (&str, &str, i64),
        prev: String,
        hash: String,
        body: String,
    ) -> Record {
        Record {
            table: "kpi_days",
            id,
            what: format!("KPI row {day} {host} v{version}"),
            prev,
            hash,
            body,
            kind: "kpi_day",
        }
    }
}

/// The chained records of a store, gathered by chain position, then walked in order.
#[derive(Debug, Default)]
pub struct Walk {
    records: BTreeMap<i64, Record>,
    bad: Vec<(i64, String)>,
}

impl Walk {
    /// An empty walk.
    pub fn new() -> Walk {
        Walk::default()
    }

    /// Adds the record stored at chain position `chain_seq`.
    pub fn add(&mut self, chain_seq: i64, rec: Record) {
        if let Some(dup) = self.records.insert(chain_seq, rec) {
            self.bad.push((
                chain_seq,
                format!(
                    "chain position {chain_seq} used twice ({} id {})",
                    dup.table, dup.id
                ),
            ));
        }
    }

    /// Walks the chain from genesis against the store's head (`meta_len` records ending in
    /// `meta_head`); when it is intact, `projection` lists mutable columns that disagree with it.
    pub fn finish(
        mut self,
        at: Option<u64>,
        meta_len: u64,
        meta_head: &str,
        projection: impl FnOnce() -> Result<Vec<(i64, String)>, StoreError>,
    ) -> Result<ChainReport, StoreError> {
        let mut prev = GENESIS.to_string();
        let mut hash_at = None;
        for (expected_seq, (seq, rec)) in (1i64..).zip(self.records.iter()) {
            if self.bad.iter().any(|(k, _)| k == seq) {
                break;
            }
            let describe = |why: &str| {
                format!(
                    "{} (table {}, id {}, chain position {seq}): {why}",
                    rec.what, rec.table, rec.id
                )
            };
            if *seq != expected_seq {
                self.bad.push((
                    *seq,
                    format!(
                        "chain position {expected_seq} is missing (deleted record) before {}",
                        describe("next present record")
                    ),
                ));
                break;
            }
            if rec.prev != prev {
                self.bad.push((*seq, describe("does not link to its predecessor (a record before it was deleted, inserted or rewritten)")));
                break;
            }
            if chain::link(&prev, rec.kind, &rec.body) != rec.hash {
                self.bad
                    .push((*seq, describe("its content was edited after it was stored")));
                break;
            }
            prev = rec.hash.clone();
            if at == Some(*seq as u64) {
                hash_at = Some((*seq as u64, prev.clone()));
            }
        }
        let count = self.records.len() as u64;
        let mut bad = self.bad;
        if bad.is_empty() && (meta_len != count || meta_head != prev) {
            bad.push((count as i64, format!("the chain ends at record {count} but the store's head says {meta_len} records: records were deleted from the end or the head was rewritten")));
        }
        if bad.is_empty() {
            bad.extend(projection()?);
        }
        bad.sort_by_key(|(k, _)| *k);
        Ok(ChainReport {
            records: count,
            head: prev,
            first_bad: bad.into_iter().next().map(|(_, m)| m),
            hash_at,
        })
    }
}

/// An event's mutable columns next to what its chained history says they must be.
#[derive(Debug, Clone)]
pub struct Projection {
    /// The event's chain position.
    pub chain_seq: i64,
    /// Host.
    pub host: String,
    /// The agent's sequence number.
    pub seq: i64,
    /// Status as received.
    pub status: String,
    /// `current_status` column.
    pub current: String,
    /// `open` column.
    pub open: bool,
    /// `new_status` of the event's latest re-classification.
    pub last_status: Option<String>,
    /// `open_after` of the event's latest re-classification.
    pub last_open: Option<bool>,
}

impl Projection {
    /// A problem line when the mutable columns were edited.
    pub fn problem(self) -> Option<(i64, String)> {
        let want_open = self.last_open.unwrap_or(is_violation(&self.status));
        let want = self.last_status.unwrap_or(self.status);
        (self.current != want || self.open != want_open).then(|| {
            let (k, host, seq, current) = (self.chain_seq, self.host, self.seq, self.current);
            (k, format!("event {host}#{seq} (chain position {k}): current status {current:?} was edited; the history says {want:?}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> Date {
        s.parse().unwrap()
    }

    /// The chain format is a contract with every stored history and exported checkpoint: these
    /// hashes must never change, whichever backend computes them.
    #[test]
    fn record_hashes_are_stable() {
        let e = ChangeEvent {
            seq: 7,
            tree: "shop".into(),
            path: "a.php".into(),
            path_bytes: None,
            change: "added".into(),
            status: "unauthorized".into(),
            observed_at: "2026-11-16T09:00:00Z".into(),
            window_start: "2026-11-16T08:00:00Z".into(),
            blake3: Some("ab".repeat(32)),
            previous_blake3: None,
            size: Some(42),
            detail: None,
            resolves: None,
        };
        let body = event_body_of(
            "web-01",
            "production",
            &e,
            1_763_283_600_000_000,
            "2026-11-16",
        );
        let h1 = chain::link(GENESIS, "event", &body);
        let h2 = chain::link(
            &h1,
            "reclassification",
            &reclass_body(
                1,
                "unauthorized",
                "change:CHG-1",
                false,
                "ticket",
                "2026-11-16T10:00:00Z",
            ),
        );
        let day = HostDay {
            day: "2026-11-16".parse().unwrap(),
            host: "web-01".into(),
            environment: "production".into(),
            expected: true,
            reported: true,
            changes: 1,
            authorized: 1,
            retroactive: 0,
            unauthorized: 0,
            unverifiable: 0,
            vetted_paths: Some((99, 100)),
        };
        let h3 = chain::link(&h2, "kpi_day", &kpi_body(&day, 1, "2026-11-17T00:00:00Z"));
        assert_eq!(
            [content_hash(&e), h1, h2, h3],
            [
                "11fb5c2737768fe7c6f709b7826ed82b531b69f2654a2b6edfb50943bff532d6",
                "ae21c378bc3f3a30ffa98eb5b407952588abe554f7f7dd45a310d00fdfeb889d",
                "d9ad12ce16d1ee81ab186690e54ce52238530273ada2183d27666cc64be5d0e9",
                "479284d17a0a170f26d55b3fdb3696d769df7457d2f9b42a336e82d93c7cb003",
            ]
            .map(String::from)
        );
    }

    #[test]
    fn seal_range_covers_unsealed_finished_days() {
        let today = date("2026-11-21");
        assert_eq!(seal_range(today, None, None), None);
        assert_eq!(
            seal_range(today, None, Some(date("2026-11-18"))),
            Some((date("2026-11-18"), date("2026-11-20")))
        );
        assert_eq!(
            seal_range(today, Some(date("2026-11-19")), Some(date("2026-11-18"))),
            Some((date("2026-11-20"), date("2026-11-20")))
        );
        assert_eq!(
            seal_range(today, Some(date("2026-11-20")), Some(date("2026-11-18"))),
            None
        );
        assert_eq!(seal_range(today, None, Some(date("2026-11-21"))), None);
    }

    #[test]
    fn walk_names_an_edited_record() {
        let b1 = reclass_body(1, "unauthorized", "change:CHG-1", false, "r", "t");
        let h1 = chain::link(GENESIS, "reclassification", &b1);
        let b2 = reclass_body(2, "unauthorized", "excluded", false, "r", "t");
        let h2 = chain::link(&h1, "reclassification", &b2);
        let intact = |b2: &str| {
            let mut w = Walk::new();
            w.add(
                1,
                Record::reclassification(1, 1, GENESIS.into(), h1.clone(), b1.clone()),
            );
            w.add(
                2,
                Record::reclassification(2, 2, h1.clone(), h2.clone(), b2.to_string()),
            );
            w.finish(Some(1), 2, &h2, || Ok(Vec::new())).unwrap()
        };
        let ok = intact(&b2);
        assert_eq!(ok.first_bad, None);
        assert_eq!(ok.head, h2);
        assert_eq!(ok.hash_at, Some((1, h1.clone())));
        let edited = intact(&reclass_body(
            2,
            "unauthorized",
            "excluded",
            false,
            "R",
            "t",
        ));
        let why = edited.first_bad.unwrap();
        assert!(why.contains("re-classification of event id 2"), "{why}");
        assert!(why.contains("edited"), "{why}");
    }

    #[test]
    fn projection_flags_an_edited_status() {
        let p = Projection {
            chain_seq: 3,
            host: "web-01".into(),
            seq: 7,
            status: "unauthorized".into(),
            current: "unauthorized".into(),
            open: true,
            last_status: None,
            last_open: None,
        };
        assert_eq!(p.clone().problem(), None);
        let edited = Projection {
            current: "excluded".into(),
            ..p
        };
        assert!(edited.problem().unwrap().1.contains("web-01#7"));
    }
}
