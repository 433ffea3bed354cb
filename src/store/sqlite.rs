//! SQLite store: one file, WAL, migrations at open. The embedded default.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::{Value, json};

use super::chain::{self, GENESIS};
use super::records;
pub use super::records::token_hash;
use super::records::{
    DayFacts, Projection, Record, Walk, content_hash, event_body, event_body_of, from_micros,
    is_violation, kpi_body, live_from, micros, new_secret, reclass_body, seal_range,
};
use super::{
    ChainHead, ChainReport, EventQuery, HeartbeatOutcome, HostInfo, LatestScan, Role, Store,
    StoreError, StoredChange, StoredEvent, StoredManifest, Token, keep_latest,
};
use crate::event::{EventBatch, Heartbeat, IngestResult};
use crate::kpi::HostDay;
use crate::util::timefmt;

/// Schema version this code writes. 2: `hosts.spool_depth`. 3: `hosts.coverage` (added by
/// [`migrate`] alone, for new and old files alike).
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
  id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL, host TEXT,
  label TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE IF NOT EXISTS hosts (
  name TEXT PRIMARY KEY, environment TEXT NOT NULL, first_seen INTEGER NOT NULL, first_day TEXT NOT NULL,
  last_seen INTEGER NOT NULL, agent_version TEXT NOT NULL DEFAULT '', last_seq INTEGER NOT NULL DEFAULT 0,
  missing_seqs INTEGER NOT NULL DEFAULT 0, replays INTEGER NOT NULL DEFAULT 0,
  spool_dropped INTEGER NOT NULL DEFAULT 0, retired_day TEXT, spool_depth INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS presence (host TEXT NOT NULL, day TEXT NOT NULL, PRIMARY KEY (host, day)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS presence_day ON presence (day, host);
CREATE TABLE IF NOT EXISTS retirements (host TEXT NOT NULL, from_day TEXT NOT NULL, to_day TEXT);
CREATE TABLE IF NOT EXISTS scans (
  host TEXT NOT NULL, tree TEXT NOT NULL, day TEXT NOT NULL, finished_at TEXT NOT NULL, received_at INTEGER NOT NULL,
  paths INTEGER NOT NULL, vetted INTEGER NOT NULL, release TEXT, seconds REAL NOT NULL,
  PRIMARY KEY (host, tree, day)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scans_day ON scans (day, host);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY, chain_seq INTEGER NOT NULL UNIQUE, host TEXT NOT NULL, seq INTEGER NOT NULL,
  environment TEXT NOT NULL, tree TEXT NOT NULL, path TEXT NOT NULL, path_bytes TEXT, change TEXT NOT NULL,
  status TEXT NOT NULL, observed_at TEXT NOT NULL, window_start TEXT NOT NULL, received_at INTEGER NOT NULL,
  day TEXT NOT NULL, blake3 TEXT, previous_blake3 TEXT, size INTEGER, resolves INTEGER,
  content_hash TEXT NOT NULL, current_status TEXT NOT NULL, open INTEGER NOT NULL,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (host, seq));
CREATE INDEX IF NOT EXISTS events_day ON events (day, host);
CREATE INDEX IF NOT EXISTS events_open ON events (open) WHERE open = 1;
CREATE TABLE IF NOT EXISTS reclassifications (
  id INTEGER PRIMARY KEY, chain_seq INTEGER NOT NULL UNIQUE, event_id INTEGER NOT NULL, old_status TEXT NOT NULL,
  new_status TEXT NOT NULL, open_after INTEGER NOT NULL, reason TEXT NOT NULL, at TEXT NOT NULL,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS reclass_event ON reclassifications (event_id);
CREATE TABLE IF NOT EXISTS kpi_days (
  id INTEGER PRIMARY KEY, chain_seq INTEGER NOT NULL UNIQUE, day TEXT NOT NULL, host TEXT NOT NULL,
  environment TEXT NOT NULL, version INTEGER NOT NULL, expected INTEGER NOT NULL, reported INTEGER NOT NULL,
  changes INTEGER NOT NULL, authorized INTEGER NOT NULL, retroactive INTEGER NOT NULL, unauthorized INTEGER NOT NULL,
  unverifiable INTEGER NOT NULL, vetted INTEGER, paths INTEGER, sealed_at TEXT NOT NULL,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (day, host, version));
CREATE TABLE IF NOT EXISTS changes (
  id TEXT NOT NULL, version INTEGER NOT NULL, toml TEXT NOT NULL, minisig TEXT, received_at TEXT NOT NULL,
  PRIMARY KEY (id, version));
CREATE TABLE IF NOT EXISTS manifests (
  tree TEXT NOT NULL, release TEXT NOT NULL, manifest TEXT NOT NULL, minisig TEXT, received_at TEXT NOT NULL,
  seq INTEGER PRIMARY KEY);
"#;

/// The SQLite-backed store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    tz: TimeZone,
    path: String,
}

fn db<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> StoreError + '_ {
    move |e| StoreError::Db {
        context: context.to_string(),
        message: e.to_string(),
    }
}

type Res<T> = Result<T, StoreError>;

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub fn open(path: &Path, tz: TimeZone) -> Res<SqliteStore> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(db(&shown))?;
        }
        let mut conn = Connection::open(path).map_err(db(&shown))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db(&shown))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db(&shown))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db(&shown))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db(&shown))?;
        // Taken for writing from the start: a CLI command and the collector may open one file at
        // the same moment, and the column check and its ALTER must not interleave.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db(&shown))?;
        let found: Option<i64> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .unwrap_or(None)
            .and_then(|v| v.parse().ok());
        if let Some(found) = found.filter(|v| *v > SCHEMA_VERSION) {
            return Err(StoreError::Schema {
                path: shown,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        tx.execute_batch(SCHEMA).map_err(db(&shown))?;
        migrate(&tx).map_err(db(&format!(
            "{shown}: migrating to schema {SCHEMA_VERSION}"
        )))?;
        tx.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('chain_len', '0'), ('chain_head', ?1)",
            [GENESIS],
        )
        .map_err(db(&shown))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value <> excluded.value",
            [SCHEMA_VERSION.to_string()],
        )
        .map_err(db(&shown))?;
        tx.commit().map_err(db(&shown))?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            tz,
            path: shown,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn day_of(&self, t: Timestamp) -> Date {
        t.to_zoned(self.tz.clone()).date()
    }
}

/// Brings the tables of an older schema up to [`SCHEMA_VERSION`] (`CREATE TABLE IF NOT EXISTS`
/// leaves an existing table as it was). Each step checks what is there, so it can run again.
fn migrate(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let has_depth: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('hosts') WHERE name = 'spool_depth')",
        [],
        |r| r.get(0),
    )?;
    if !has_depth {
        tx.execute_batch("ALTER TABLE hosts ADD COLUMN spool_depth INTEGER NOT NULL DEFAULT 0")?;
    }
    // 3: the coverage of the last heartbeat (records::coverage_column); NULL until an agent
    // that reports it sends one.
    let has_coverage: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('hosts') WHERE name = 'coverage')",
        [],
        |r| r.get(0),
    )?;
    if !has_coverage {
        tx.execute_batch("ALTER TABLE hosts ADD COLUMN coverage TEXT")?;
    }
    Ok(())
}

/// The chain position kept in `meta`, advanced inside the writing transaction.
struct ChainCursor {
    len: u64,
    head: String,
}

impl ChainCursor {
    fn load(tx: &Transaction<'_>) -> Res<ChainCursor> {
        let get = |k: &str| -> Res<String> {
            tx.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                .map_err(db("chain"))
        };
        Ok(ChainCursor {
            len: get("chain_len")?.parse().unwrap_or(0),
            head: get("chain_head")?,
        })
    }

    /// Returns (chain_seq, prev_hash, hash) for the next record.
    fn next(&mut self, kind: &str, body: &str) -> (i64, String, String) {
        let prev = std::mem::take(&mut self.head);
        let hash = chain::link(&prev, kind, body);
        self.len += 1;
        self.head = hash.clone();
        (self.len as i64, prev, hash)
    }

    fn save(&self, tx: &Transaction<'_>) -> Res<()> {
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'chain_len'",
            [self.len.to_string()],
        )
        .map_err(db("chain"))?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'chain_head'",
            [&self.head],
        )
        .map_err(db("chain"))?;
        Ok(())
    }
}

fn upsert_host(tx: &Transaction<'_>, host: &str, env: &str, now: i64, day: &str) -> Res<()> {
    tx.execute(
        "INSERT INTO hosts (name, environment, first_seen, first_day, last_seen) VALUES (?1, ?2, ?3, ?4, ?3)
         ON CONFLICT (name) DO UPDATE SET environment = excluded.environment, last_seen = MAX(last_seen, excluded.last_seen)",
        params![host, env, now, day],
    )
    .map_err(db("hosts"))?;
    tx.execute(
        "INSERT OR IGNORE INTO presence (host, day) VALUES (?1, ?2)",
        params![host, day],
    )
    .map_err(db("presence"))?;
    Ok(())
}

impl Store for SqliteStore {
    fn create_token(
        &self,
        role: Role,
        host: Option<&str>,
        label: &str,
        now: Timestamp,
    ) -> Res<(Token, String)> {
        let secret = new_secret()?;
        let created = timefmt::format_timestamp(now);
        let conn = self.conn();
        conn.execute(
            "INSERT INTO tokens (hash, role, host, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash(&secret), role.as_str(), host, label, created],
        )
        .map_err(db("tokens"))?;
        let id = conn.last_insert_rowid();
        if let Some(h) = host {
            // A new agent token brings a retired host back into the expected set from today on;
            // the days it was retired stay retired.
            conn.execute("UPDATE hosts SET retired_day = NULL WHERE name = ?1", [h])
                .map_err(db("hosts"))?;
            conn.execute(
                "UPDATE retirements SET to_day = ?1 WHERE host = ?2 AND to_day IS NULL",
                params![self.day_of(now).to_string(), h],
            )
            .map_err(db("hosts"))?;
        }
        let token = Token {
            id,
            role,
            host: host.map(String::from),
            label: label.into(),
            created_at: created,
            revoked_at: None,
        };
        Ok((token, secret))
    }

    fn find_token(&self, secret: &str) -> Res<Option<Token>> {
        let conn = self.conn();
        conn.query_row(
            "SELECT id, role, host, label, created_at, revoked_at FROM tokens WHERE hash = ?1 AND revoked_at IS NULL",
            [token_hash(secret)],
            row_token,
        )
        .optional()
        .map_err(db("tokens"))
    }

    fn list_tokens(&self) -> Res<Vec<Token>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT id, role, host, label, created_at, revoked_at FROM tokens ORDER BY id")
            .map_err(db("tokens"))?;
        let rows = st.query_map([], row_token).map_err(db("tokens"))?;
        rows.collect::<Result<_, _>>().map_err(db("tokens"))
    }

    fn revoke_token(&self, id: i64, now: Timestamp) -> Res<Token> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("tokens"))?;
        let at = timefmt::format_timestamp(now);
        let n = tx
            .execute(
                "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                params![at, id],
            )
            .map_err(db("tokens"))?;
        let token = tx
            .query_row(
                "SELECT id, role, host, label, created_at, revoked_at FROM tokens WHERE id = ?1",
                [id],
                row_token,
            )
            .optional()
            .map_err(db("tokens"))?
            .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
        if n == 1
            && let (Role::Agent, Some(host)) = (token.role, &token.host)
        {
            let live: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM tokens WHERE role = 'agent' AND host = ?1 AND revoked_at IS NULL",
                    [host],
                    |r| r.get(0),
                )
                .map_err(db("tokens"))?;
            if live == 0 {
                let day = self.day_of(now).to_string();
                tx.execute(
                    "UPDATE hosts SET retired_day = ?1 WHERE name = ?2",
                    params![day, host],
                )
                .map_err(db("hosts"))?;
                tx.execute(
                    "INSERT INTO retirements (host, from_day)
                     SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM retirements WHERE host = ?1 AND to_day IS NULL)",
                    params![host, records::retirement_start(self.day_of(now))],
                )
                .map_err(db("hosts"))?;
            }
        }
        tx.commit().map_err(db("tokens"))?;
        Ok(token)
    }

    fn record_heartbeat(&self, hb: &Heartbeat, now: Timestamp) -> Res<HeartbeatOutcome> {
        let day = self.day_of(now).to_string();
        let coverage = records::coverage_column(hb);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("heartbeat"))?;
        upsert_host(&tx, &hb.host, &hb.environment, micros(now), &day)?;
        let before: Option<String> = tx
            .query_row(
                "SELECT coverage FROM hosts WHERE name = ?1",
                [&hb.host],
                |r| r.get(0),
            )
            .map_err(db("heartbeat"))?;
        tx.execute(
            "UPDATE hosts SET agent_version = ?1, spool_dropped = MAX(spool_dropped, ?2), spool_depth = ?3, coverage = ?4
             WHERE name = ?5",
            params![
                hb.agent_version,
                hb.spool_dropped as i64,
                hb.spool_depth as i64,
                coverage,
                hb.host
            ],
        )
        .map_err(db("heartbeat"))?;
        tx.commit().map_err(db("heartbeat"))?;
        Ok(HeartbeatOutcome {
            coverage_changed: before != coverage,
        })
    }

    fn ingest(&self, batch: &EventBatch, now: Timestamp) -> Res<IngestResult> {
        let day = self.day_of(now).to_string();
        let received = micros(now);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("ingest"))?;
        upsert_host(&tx, &batch.host, &batch.environment, received, &day)?;
        let (mut last_seq, mut missing): (i64, i64) = tx
            .query_row(
                "SELECT last_seq, missing_seqs FROM hosts WHERE name = ?1",
                [&batch.host],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db("ingest"))?;
        let mut cursor = ChainCursor::load(&tx)?;
        let mut result = IngestResult::default();
        let mut replays = 0i64;
        {
            let mut existing = tx
                .prepare_cached("SELECT content_hash FROM events WHERE host = ?1 AND seq = ?2")
                .map_err(db("ingest"))?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (chain_seq, host, seq, environment, tree, path, path_bytes, change, status,
                       observed_at, window_start, received_at, day, blake3, previous_blake3, size, resolves,
                       content_hash, current_status, open, prev_hash, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?9, ?19, ?20, ?21)",
                )
                .map_err(db("ingest"))?;
            let mut resolve = Vec::new();
            for e in &batch.events {
                let seq = e.seq as i64;
                let ch = content_hash(e);
                let prior: Option<String> = existing
                    .query_row(params![batch.host, seq], |r| r.get(0))
                    .optional()
                    .map_err(db("ingest"))?;
                match prior {
                    Some(p) if p == ch => result.duplicates += 1,
                    Some(_) => {
                        result.rejected.push(e.seq);
                        replays += 1;
                    }
                    None => {
                        if seq > last_seq + 1 {
                            missing += seq - last_seq - 1;
                        } else if seq < last_seq && missing > 0 {
                            missing -= 1;
                        }
                        last_seq = last_seq.max(seq);
                        let size = e.size.map(|s| s as i64);
                        let resolves = e.resolves.map(|s| s as i64);
                        let body =
                            event_body_of(&batch.host, &batch.environment, e, received, &day);
                        let (cseq, prev, hash) = cursor.next("event", &body);
                        insert
                            .execute(params![
                                cseq,
                                batch.host,
                                seq,
                                batch.environment,
                                e.tree,
                                e.path,
                                e.path_bytes,
                                e.change,
                                e.status,
                                e.observed_at,
                                e.window_start,
                                received,
                                day,
                                e.blake3,
                                e.previous_blake3,
                                size,
                                resolves,
                                ch,
                                is_violation(&e.status),
                                prev,
                                hash
                            ])
                            .map_err(db("ingest"))?;
                        result.stored += 1;
                        if let Some(r) = e.resolves {
                            resolve.push((r as i64, e.status.clone()));
                        }
                    }
                }
                result.acked_seq = result.acked_seq.max(e.seq);
            }
            let at = timefmt::format_timestamp(now);
            for (r, record_status) in resolve {
                let target: Option<(i64, String)> = tx
                    .query_row("SELECT id, current_status FROM events WHERE host = ?1 AND seq = ?2 AND open = 1", params![batch.host, r], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()
                    .map_err(db("ingest"))?;
                if let Some((id, status)) = target {
                    let (new, reason) = records::closing(&status, &record_status);
                    append_reclass(&tx, &mut cursor, id, &status, &new, false, &reason, &at)?;
                }
            }
        }
        for s in &batch.scans {
            tx.execute(
                "INSERT INTO scans (host, tree, day, finished_at, received_at, paths, vetted, release, seconds)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (host, tree, day) DO UPDATE SET finished_at = excluded.finished_at, received_at = excluded.received_at,
                   paths = excluded.paths, vetted = excluded.vetted, release = excluded.release, seconds = excluded.seconds",
                params![batch.host, s.tree, day, s.finished_at, received, s.paths as i64, s.vetted as i64, s.release, s.seconds],
            )
            .map_err(db("scans"))?;
            result.scans += 1;
        }
        tx.execute(
            "UPDATE hosts SET last_seq = ?1, missing_seqs = ?2, replays = replays + ?3 WHERE name = ?4",
            params![last_seq, missing, replays, batch.host],
        )
        .map_err(db("ingest"))?;
        cursor.save(&tx)?;
        tx.commit().map_err(db("ingest"))?;
        Ok(result)
    }

    fn events(&self, q: &EventQuery) -> Res<Vec<StoredEvent>> {
        let mut sql = String::from(
            "SELECT id, host, seq, environment, tree, path, path_bytes, change, current_status, status, open, observed_at,
               window_start, received_at, blake3, previous_blake3, size FROM events WHERE resolves IS NULL",
        );
        let mut args: Vec<Value> = Vec::new();
        if let Some(f) = q.from {
            sql.push_str(" AND day >= ?");
            args.push(json!(f.to_string()));
        }
        if let Some(t) = q.to {
            sql.push_str(" AND day <= ?");
            args.push(json!(t.to_string()));
        }
        if let Some(h) = &q.host {
            sql.push_str(" AND host = ?");
            args.push(json!(h));
        }
        if let Some(s) = &q.status {
            if s.contains(':') {
                sql.push_str(" AND current_status = ?");
                args.push(json!(s));
            } else {
                sql.push_str(" AND (current_status = ? OR current_status LIKE ? || ':%')");
                args.push(json!(s));
                args.push(json!(s));
            }
        }
        if q.open_only {
            sql.push_str(" AND open = 1");
        }
        sql.push_str(" ORDER BY received_at, host, seq");
        if let Some(l) = q.limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        let conn = self.conn();
        let mut st = conn.prepare(&sql).map_err(db("events"))?;
        let params: Vec<rusqlite::types::Value> = args
            .into_iter()
            .map(|v| match v {
                Value::String(s) => rusqlite::types::Value::Text(s),
                other => rusqlite::types::Value::Text(other.to_string()),
            })
            .collect();
        let rows = st
            .query_map(rusqlite::params_from_iter(params), |r| {
                Ok(StoredEvent {
                    id: r.get(0)?,
                    host: r.get(1)?,
                    seq: r.get::<_, i64>(2)? as u64,
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
                    size: r.get::<_, Option<i64>>(16)?.map(|s| s as u64),
                })
            })
            .map_err(db("events"))?;
        rows.collect::<Result<_, _>>().map_err(db("events"))
    }

    fn reclassify(&self, event_id: i64, new_status: &str, reason: &str, now: Timestamp) -> Res<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("reclassify"))?;
        let (old, host, day): (String, String, String) = tx
            .query_row(
                "SELECT current_status, host, day FROM events WHERE id = ?1",
                [event_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db("reclassify"))?
            .ok_or_else(|| StoreError::NotFound(format!("event {event_id}")))?;
        let mut cursor = ChainCursor::load(&tx)?;
        let at = timefmt::format_timestamp(now);
        append_reclass(
            &tx,
            &mut cursor,
            event_id,
            &old,
            new_status,
            is_violation(new_status),
            reason,
            &at,
        )?;
        // A day already sealed into the chain gets a new version of its row: both facts stay.
        let sealed: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM kpi_days WHERE day = ?1 AND host = ?2",
                params![day, host],
                |r| r.get(0),
            )
            .map_err(db("reclassify"))?;
        if sealed > 0 {
            let d: Date = day.parse().map_err(db("reclassify"))?;
            let facts = compute_days(&tx, d, d, Some(&host))?;
            for f in facts.iter().filter(|f| f.host == host) {
                append_kpi(&tx, &mut cursor, f, &at)?;
            }
        }
        cursor.save(&tx)?;
        tx.commit().map_err(db("reclassify"))
    }

    fn host_days(
        &self,
        from: Date,
        to: Date,
        host: Option<&str>,
        now: Timestamp,
    ) -> Res<Vec<HostDay>> {
        let today = self.day_of(now);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("kpi"))?;
        seal_until(&tx, today, &timefmt::format_timestamp(now))?;
        let sealed_through: Option<Date> =
            meta_get(&tx, "sealed_through")?.and_then(|s| s.parse().ok());
        let mut out = Vec::new();
        let sealed_to = sealed_through.map(|s| s.min(to));
        if let Some(st) = sealed_to.filter(|st| *st >= from) {
            let mut sql = format!(
                "SELECT {KPI_COLUMNS}, MAX(version) FROM kpi_days WHERE day >= ?1 AND day <= ?2"
            );
            if host.is_some() {
                sql.push_str(" AND host = ?3");
            }
            sql.push_str(" GROUP BY day, host");
            let mut stmt = tx.prepare(&sql).map_err(db("kpi"))?;
            let map = |r: &rusqlite::Row<'_>| host_day_at(r, 0);
            let rows = match host {
                Some(h) => stmt.query_map(params![from.to_string(), st.to_string(), h], map),
                None => stmt.query_map(params![from.to_string(), st.to_string()], map),
            }
            .map_err(db("kpi"))?;
            for r in rows {
                out.push(r.map_err(db("kpi"))?);
            }
        }
        let live_from = live_from(sealed_through, from);
        if live_from <= to {
            out.extend(compute_days(&tx, live_from, to.min(today), host)?);
        }
        tx.commit().map_err(db("kpi"))?;
        Ok(out)
    }

    fn hosts(&self, now: Timestamp) -> Res<Vec<HostInfo>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT name, environment, first_seen, last_seen, agent_version, last_seq, missing_seqs, replays, spool_dropped,
                   retired_day, (SELECT COUNT(*) FROM events e WHERE e.host = h.name AND e.open = 1), spool_depth,
                   coverage
                 FROM hosts h ORDER BY name",
            )
            .map_err(db("hosts"))?;
        let now_us = micros(now);
        let rows = st
            .query_map([], |r| {
                let last: i64 = r.get(3)?;
                let (config_digest, trees) =
                    records::coverage_of(r.get::<_, Option<String>>(12)?.as_deref());
                Ok(HostInfo {
                    host: r.get(0)?,
                    environment: r.get(1)?,
                    first_seen: from_micros(r.get(2)?),
                    last_seen: from_micros(last),
                    agent_version: r.get(4)?,
                    last_seq: r.get::<_, i64>(5)? as u64,
                    missing_seqs: r.get::<_, i64>(6)? as u64,
                    replays: r.get::<_, i64>(7)? as u64,
                    spool_dropped: r.get::<_, i64>(8)? as u64,
                    spool_depth: r.get::<_, i64>(11)? as u64,
                    retired: r.get::<_, Option<String>>(9)?.is_some(),
                    open_unauthorized: r.get::<_, i64>(10)? as u64,
                    silent_for_seconds: (now_us - last).max(0) / 1_000_000,
                    coverage_reduced: trees.iter().any(|t| t.coverage_reduced),
                    config_digest,
                    trees,
                })
            })
            .map_err(db("hosts"))?;
        rows.collect::<Result<_, _>>().map_err(db("hosts"))
    }

    fn latest_scans(&self, since: Date) -> Res<Vec<LatestScan>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT host, tree, seconds, finished_at, received_at FROM scans WHERE day >= ?1",
            )
            .map_err(db("scans"))?;
        let rows = st
            .query_map([since.to_string()], |r| {
                Ok((
                    LatestScan {
                        host: r.get(0)?,
                        tree: r.get(1)?,
                        seconds: r.get(2)?,
                        finished_at: r.get(3)?,
                    },
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(db("scans"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("scans"))?;
        Ok(keep_latest(rows))
    }

    fn put_change(&self, id: &str, toml: &str, minisig: Option<&str>, now: Timestamp) -> Res<()> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO changes (id, version, toml, minisig, received_at)
             VALUES (?1, COALESCE((SELECT MAX(version) FROM changes WHERE id = ?1), 0) + 1, ?2, ?3, ?4)",
            params![id, toml, minisig, timefmt::format_timestamp(now)],
        )
        .map_err(db("changes"))?;
        Ok(())
    }

    fn changes(&self) -> Res<Vec<StoredChange>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT id, toml, minisig, received_at, MAX(version) FROM changes GROUP BY id ORDER BY id")
            .map_err(db("changes"))?;
        let rows = st
            .query_map([], |r| {
                Ok(StoredChange {
                    id: r.get(0)?,
                    toml: r.get(1)?,
                    minisig: r.get(2)?,
                    received_at: r.get(3)?,
                })
            })
            .map_err(db("changes"))?;
        rows.collect::<Result<_, _>>().map_err(db("changes"))
    }

    fn put_manifest(&self, m: &StoredManifest) -> Res<()> {
        self.conn()
            .execute(
                "INSERT INTO manifests (tree, release, manifest, minisig, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![m.tree, m.release, m.manifest, m.minisig, m.received_at],
            )
            .map_err(db("manifests"))?;
        Ok(())
    }

    fn manifest(&self, tree: &str) -> Res<Option<StoredManifest>> {
        self.conn()
            .query_row(
                "SELECT tree, release, manifest, minisig, received_at FROM manifests WHERE tree = ?1 ORDER BY seq DESC LIMIT 1",
                [tree],
                |r| Ok(StoredManifest { tree: r.get(0)?, release: r.get(1)?, manifest: r.get(2)?, minisig: r.get(3)?, received_at: r.get(4)? }),
            )
            .optional()
            .map_err(db("manifests"))
    }

    fn verify_chain(&self, at: Option<u64>) -> Res<ChainReport> {
        let conn = self.conn();
        verify(&conn, at, &self.path)
    }

    fn chain_head(&self) -> Res<ChainHead> {
        let conn = self.conn();
        let get = |k: &str| -> Res<String> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                .map_err(db("chain"))
        };
        Ok(ChainHead {
            records: get("chain_len")?.parse().unwrap_or(0),
            head: get("chain_head")?,
        })
    }
}

fn row_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<Token> {
    let role: String = r.get(1)?;
    Ok(Token {
        id: r.get(0)?,
        role: Role::parse(&role).unwrap_or(Role::Reader),
        host: r.get(2)?,
        label: r.get(3)?,
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

fn meta_get(tx: &Transaction<'_>, key: &str) -> Res<Option<String>> {
    tx.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .map_err(db("meta"))
}

#[allow(clippy::too_many_arguments)]
fn append_reclass(
    tx: &Transaction<'_>,
    cursor: &mut ChainCursor,
    event_id: i64,
    old: &str,
    new: &str,
    open_after: bool,
    reason: &str,
    at: &str,
) -> Res<()> {
    let (cseq, prev, hash) = cursor.next(
        "reclassification",
        &reclass_body(event_id, old, new, open_after, reason, at),
    );
    tx.execute(
        "INSERT INTO reclassifications (chain_seq, event_id, old_status, new_status, open_after, reason, at, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![cseq, event_id, old, new, open_after, reason, at, prev, hash],
    )
    .map_err(db("reclassify"))?;
    tx.execute(
        "UPDATE events SET current_status = ?1, open = ?2 WHERE id = ?3",
        params![new, open_after, event_id],
    )
    .map_err(db("reclassify"))?;
    Ok(())
}

fn append_kpi(
    tx: &Transaction<'_>,
    cursor: &mut ChainCursor,
    d: &HostDay,
    sealed_at: &str,
) -> Res<()> {
    // Cached statements: sealing a backlog appends hundreds of thousands of rows.
    let version: i64 = tx
        .prepare_cached(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM kpi_days WHERE day = ?1 AND host = ?2",
        )
        .and_then(|mut st| st.query_row(params![d.day.to_string(), d.host], |r| r.get(0)))
        .map_err(db("kpi"))?;
    let (cseq, prev, hash) = cursor.next("kpi_day", &kpi_body(d, version, sealed_at));
    let (vetted, paths) = d
        .vetted_paths
        .map_or((None, None), |(v, p)| (Some(v as i64), Some(p as i64)));
    tx.prepare_cached(
        "INSERT INTO kpi_days (chain_seq, day, host, environment, version, expected, reported, changes, authorized,
           retroactive, unauthorized, unverifiable, vetted, paths, sealed_at, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )
    .map_err(db("kpi"))?
    .execute(params![
            cseq,
            d.day.to_string(),
            d.host,
            d.environment,
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
            prev,
            hash
        ],
    )
    .map_err(db("kpi"))?;
    Ok(())
}

/// Seals every finished day (before `today`) not sealed yet into versioned, chained KPI rows.
fn seal_until(tx: &Transaction<'_>, today: Date, now: &str) -> Res<()> {
    let sealed: Option<Date> = meta_get(tx, "sealed_through")?.and_then(|s| s.parse().ok());
    let first: Option<String> = tx
        .query_row("SELECT MIN(first_day) FROM hosts", [], |r| r.get(0))
        .map_err(db("kpi"))?;
    let Some((start, yesterday)) =
        seal_range(today, sealed, first.and_then(|f| f.parse::<Date>().ok()))
    else {
        return Ok(());
    };
    let mut cursor = ChainCursor::load(tx)?;
    for d in compute_days(tx, start, yesterday, None)? {
        append_kpi(tx, &mut cursor, &d, now)?;
    }
    cursor.save(tx)?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('sealed_through', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [yesterday.to_string()],
    )
    .map_err(db("kpi"))?;
    Ok(())
}

/// Computes host-day facts from events, presence and scans for `[from, to]`.
fn compute_days(
    tx: &Transaction<'_>,
    from: Date,
    to: Date,
    host: Option<&str>,
) -> Res<Vec<HostDay>> {
    let (f, t) = (from.to_string(), to.to_string());
    let host_filter = host.unwrap_or("");
    let mut retirements: HashMap<String, Vec<(String, Option<String>)>> = HashMap::new();
    let mut st = tx
        .prepare_cached("SELECT host, from_day, to_day FROM retirements WHERE ?1 = '' OR host = ?1")
        .map_err(db("kpi"))?;
    let rows = st
        .query_map([host_filter], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(db("kpi"))?;
    for r in rows {
        let (h, from_day, to_day) = r.map_err(db("kpi"))?;
        retirements.entry(h).or_default().push((from_day, to_day));
    }
    let mut hosts_st = tx
        .prepare_cached("SELECT name, environment, first_day FROM hosts WHERE ?1 = '' OR name = ?1")
        .map_err(db("kpi"))?;
    let hosts: Vec<records::HostSpan> = hosts_st
        .query_map([host_filter], |r| {
            let name: String = r.get(0)?;
            let spans = retirements.get(&name).cloned().unwrap_or_default();
            Ok((name, r.get(1)?, r.get(2)?, spans))
        })
        .map_err(db("kpi"))?
        .collect::<Result<_, _>>()
        .map_err(db("kpi"))?;
    let mut presence: HashSet<(String, String)> = HashSet::new();
    let mut st = tx
        .prepare("SELECT host, day FROM presence WHERE day >= ?1 AND day <= ?2")
        .map_err(db("kpi"))?;
    for r in st
        .query_map([&f, &t], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db("kpi"))?
    {
        presence.insert(r.map_err(db("kpi"))?);
    }
    let mut counts: HashMap<(String, String), [u64; 5]> = HashMap::new();
    let mut st = tx
        .prepare(
            "SELECT host, day,
               SUM(current_status NOT IN ('excluded', 'resolved')),
               SUM(current_status LIKE 'release:%' OR current_status LIKE 'change:%' OR current_status LIKE 'retroactive:%'),
               SUM(current_status LIKE 'retroactive:%'),
               SUM(current_status = 'unauthorized'),
               SUM(current_status = 'unverifiable')
             FROM events WHERE day >= ?1 AND day <= ?2 AND resolves IS NULL GROUP BY host, day",
        )
        .map_err(db("kpi"))?;
    let rows = st
        .query_map([&f, &t], |r| {
            let n = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v.unwrap_or(0) as u64);
            Ok(((r.get(0)?, r.get(1)?), [n(2)?, n(3)?, n(4)?, n(5)?, n(6)?]))
        })
        .map_err(db("kpi"))?;
    for r in rows {
        let (k, v) = r.map_err(db("kpi"))?;
        counts.insert(k, v);
    }
    let mut vetted: HashMap<(String, String), (u64, u64)> = HashMap::new();
    let mut st = tx
        .prepare("SELECT host, day, SUM(vetted), SUM(paths) FROM scans WHERE day >= ?1 AND day <= ?2 GROUP BY host, day")
        .map_err(db("kpi"))?;
    let rows = st
        .query_map([&f, &t], |r| {
            Ok((
                (r.get(0)?, r.get(1)?),
                (r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)? as u64),
            ))
        })
        .map_err(db("kpi"))?;
    for r in rows {
        let (k, v) = r.map_err(db("kpi"))?;
        vetted.insert(k, v);
    }
    Ok(DayFacts {
        hosts,
        presence,
        counts,
        vetted,
    }
    .days(from, to))
}

/// The columns of a sealed KPI row that make up a [`HostDay`], in the order [`host_day_at`] reads.
const KPI_COLUMNS: &str = "day, host, environment, expected, reported, changes, authorized, retroactive, \
                           unauthorized, unverifiable, vetted, paths";

/// Reads the [`KPI_COLUMNS`] starting at column `at`.
fn host_day_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<HostDay> {
    let n = |i: usize| r.get::<_, i64>(at + i).map(|v| v as u64);
    let vetted: Option<i64> = r.get(at + 10)?;
    let paths: Option<i64> = r.get(at + 11)?;
    Ok(HostDay {
        day: r.get::<_, String>(at)?.parse().unwrap_or(Date::ZERO),
        host: r.get(at + 1)?,
        environment: r.get(at + 2)?,
        expected: r.get(at + 3)?,
        reported: r.get(at + 4)?,
        changes: n(5)?,
        authorized: n(6)?,
        retroactive: n(7)?,
        unauthorized: n(8)?,
        unverifiable: n(9)?,
        vetted_paths: vetted.zip(paths).map(|(v, p)| (v as u64, p as u64)),
    })
}

fn verify(conn: &Connection, at: Option<u64>, path: &str) -> Res<ChainReport> {
    let ctx = format!("{path}: audit");
    let mut walk = Walk::new();
    {
        let mut st = conn
            .prepare(
                "SELECT chain_seq, id, host, seq, environment, tree, path, path_bytes, change, status, observed_at, window_start,
                   received_at, day, blake3, previous_blake3, size, resolves, prev_hash, hash FROM events",
            )
            .map_err(db(&ctx))?;
        let rows = st
            .query_map([], |r| {
                let host: String = r.get(2)?;
                let seq: i64 = r.get(3)?;
                let body = event_body(
                    &host,
                    seq,
                    &r.get::<_, String>(4)?,
                    (
                        &r.get::<_, String>(5)?,
                        &r.get::<_, String>(6)?,
                        r.get::<_, Option<String>>(7)?.as_deref(),
                        &r.get::<_, String>(8)?,
                        &r.get::<_, String>(9)?,
                        &r.get::<_, String>(10)?,
                        &r.get::<_, String>(11)?,
                    ),
                    r.get(12)?,
                    &r.get::<_, String>(13)?,
                    (
                        r.get::<_, Option<String>>(14)?.as_deref(),
                        r.get::<_, Option<String>>(15)?.as_deref(),
                        r.get(16)?,
                        r.get(17)?,
                    ),
                );
                Ok((
                    r.get::<_, i64>(0)?,
                    Record::event(r.get(1)?, &host, seq, r.get(18)?, r.get(19)?, body),
                ))
            })
            .map_err(db(&ctx))?;
        for row in rows {
            let (k, rec) = row.map_err(db(&ctx))?;
            walk.add(k, rec);
        }
    }
    {
        let mut st = conn
            .prepare("SELECT chain_seq, id, event_id, old_status, new_status, open_after, reason, at, prev_hash, hash FROM reclassifications")
            .map_err(db(&ctx))?;
        let rows = st
            .query_map([], |r| {
                let event_id: i64 = r.get(2)?;
                let body = reclass_body(
                    event_id,
                    &r.get::<_, String>(3)?,
                    &r.get::<_, String>(4)?,
                    r.get(5)?,
                    &r.get::<_, String>(6)?,
                    &r.get::<_, String>(7)?,
                );
                Ok((
                    r.get::<_, i64>(0)?,
                    Record::reclassification(r.get(1)?, event_id, r.get(8)?, r.get(9)?, body),
                ))
            })
            .map_err(db(&ctx))?;
        for row in rows {
            let (k, rec) = row.map_err(db(&ctx))?;
            walk.add(k, rec);
        }
    }
    {
        let mut st = conn
            .prepare(
                &format!("SELECT chain_seq, id, version, sealed_at, prev_hash, hash, {KPI_COLUMNS} FROM kpi_days"),
            )
            .map_err(db(&ctx))?;
        let rows = st
            .query_map([], |r| {
                let d = host_day_at(r, 6)?;
                // The day as stored (not as parsed) names the record in a report.
                let day: String = r.get(6)?;
                let host = d.host.clone();
                let version: i64 = r.get(2)?;
                let body = kpi_body(&d, version, &r.get::<_, String>(3)?);
                Ok((
                    r.get::<_, i64>(0)?,
                    Record::kpi_day(
                        r.get(1)?,
                        (&day, &host, version),
                        r.get(4)?,
                        r.get(5)?,
                        body,
                    ),
                ))
            })
            .map_err(db(&ctx))?;
        for row in rows {
            let (k, rec) = row.map_err(db(&ctx))?;
            walk.add(k, rec);
        }
    }
    let meta = |k: &str| -> Res<String> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .map_err(db(&ctx))
    };
    let meta_len: u64 = meta("chain_len")?.parse().unwrap_or(0);
    let meta_head = meta("chain_head")?;
    walk.finish(at, meta_len, &meta_head, || projection_problems(conn, &ctx))
}

/// The mutable `current_status`/`open` columns must equal what the chained history says.
fn projection_problems(conn: &Connection, ctx: &str) -> Res<Vec<(i64, String)>> {
    let mut st = conn
        .prepare(
            "SELECT e.chain_seq, e.host, e.seq, e.status, e.current_status, e.open,
               (SELECT new_status FROM reclassifications r WHERE r.event_id = e.id ORDER BY chain_seq DESC LIMIT 1),
               (SELECT open_after FROM reclassifications r WHERE r.event_id = e.id ORDER BY chain_seq DESC LIMIT 1)
             FROM events e",
        )
        .map_err(db(ctx))?;
    let rows = st
        .query_map([], |r| {
            Ok(Projection {
                chain_seq: r.get(0)?,
                host: r.get(1)?,
                seq: r.get(2)?,
                status: r.get(3)?,
                current: r.get(4)?,
                open: r.get(5)?,
                last_status: r.get(6)?,
                last_open: r.get(7)?,
            })
        })
        .map_err(db(ctx))?;
    let mut out = Vec::new();
    for row in rows {
        out.extend(row.map_err(db(ctx))?.problem());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hosts table as schema version 1 wrote it: no `spool_depth`.
    const V1_HOSTS: &str = "spool_dropped INTEGER NOT NULL DEFAULT 0, retired_day TEXT);";

    /// A database exactly as schema version 1 left it, with a host, a scan and a day of presence.
    fn v1_database(path: &Path) {
        let current = "spool_dropped INTEGER NOT NULL DEFAULT 0, retired_day TEXT, spool_depth INTEGER NOT NULL DEFAULT 0);";
        assert!(SCHEMA.contains(current), "the hosts table changed again");
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(&SCHEMA.replace(current, V1_HOSTS))
            .unwrap();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', '1'), ('chain_len', '0'), ('chain_head', ?1)",
            [GENESIS],
        )
        .unwrap();
        conn.execute_batch(
            "INSERT INTO hosts (name, environment, first_seen, first_day, last_seen, agent_version, last_seq, spool_dropped)
               VALUES ('web-01', 'production', 1000000, '2026-11-16', 2000000, '0.9', 4, 3);
             INSERT INTO presence (host, day) VALUES ('web-01', '2026-11-16');
             INSERT INTO scans (host, tree, day, finished_at, received_at, paths, vetted, release, seconds)
               VALUES ('web-01', 'shop', '2026-11-16', '2026-11-16T09:00:00Z', 2000000, 10, 9, 'R-1', 1.5);",
        )
        .unwrap();
    }

    fn columns(path: &Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut st = conn
            .prepare("SELECT name FROM pragma_table_info('hosts')")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn schema_version(path: &Path) -> String {
        Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn opening_a_version_1_database_adds_spool_depth_and_keeps_its_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("collector.db");
        v1_database(&path);
        assert!(!columns(&path).contains(&"spool_depth".to_string()));

        let now: Timestamp = "2026-11-16T12:00:00Z".parse().unwrap();
        {
            let store = SqliteStore::open(&path, TimeZone::UTC).unwrap();
            let hosts = store.hosts(now).unwrap();
            assert_eq!(hosts.len(), 1, "{hosts:?}");
            let h = &hosts[0];
            assert_eq!(
                (h.host.as_str(), h.agent_version.as_str(), h.last_seq),
                ("web-01", "0.9", 4)
            );
            assert_eq!((h.spool_dropped, h.spool_depth), (3, 0));
            let day: Date = "2026-11-16".parse().unwrap();
            assert_eq!(
                store.latest_scans(day).unwrap(),
                [LatestScan {
                    host: "web-01".into(),
                    tree: "shop".into(),
                    seconds: 1.5,
                    finished_at: "2026-11-16T09:00:00Z".into(),
                }]
            );
            let days = store.host_days(day, day, None, now).unwrap();
            assert_eq!(days.len(), 1, "{days:?}");
            assert_eq!(days[0].vetted_paths, Some((9, 10)));
        }
        assert_eq!(schema_version(&path), SCHEMA_VERSION.to_string());
        assert_eq!(
            columns(&path)
                .iter()
                .filter(|c| *c == "spool_depth")
                .count(),
            1
        );

        // Opening again finds nothing to do, and the new column takes heartbeats.
        let store = SqliteStore::open(&path, TimeZone::UTC).unwrap();
        let hb: Heartbeat = serde_json::from_value(serde_json::json!({
            "host": "web-01", "agent_version": "1.0", "spool_dropped": 3, "spool_depth": 12,
        }))
        .unwrap();
        store.record_heartbeat(&hb, now).unwrap();
        let h = &store.hosts(now).unwrap()[0];
        assert_eq!((h.spool_dropped, h.spool_depth), (3, 12));
        assert_eq!(store.verify_chain(None).unwrap().first_bad, None);
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("collector.db");
        v1_database(&path);
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        let err = SqliteStore::open(&path, TimeZone::UTC)
            .err()
            .expect("a newer schema must be refused")
            .to_string();
        assert!(err.contains("schema version 99"), "{err}");
        assert_eq!(schema_version(&path), "99");
        assert!(!columns(&path).contains(&"spool_depth".to_string()));
    }

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
