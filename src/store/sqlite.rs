//! SQLite store: one file, WAL, migrations at open. The embedded default.
//!
//! The store's logic is [`SqlStore`]'s; this module keeps the connection (one, behind a mutex:
//! SQLite has one writer at a time anyway), the schema, its migrations and the binding of
//! [`Param`]/[`Value`] to SQLite's types (booleans are 0/1 integers).

use std::path::Path;
use std::sync::Mutex;

use jiff::tz::TimeZone;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::StoreError;
use super::chain::GENESIS;
pub use super::records::token_hash;
use super::sql::dialect::SQLITE;
use super::sql::{Backend, Conn, Dialect, EachRow, Param, Res, Row, SqlStore, Value};

/// Schema version this code writes. 2: `hosts.spool_depth`. 3: `hosts.coverage`. 4:
/// `events.detail` (3 and 4 added by [`migrate`] alone, for new and old files alike). 5: the
/// `alert_outbox` table ([`OUTBOX_SCHEMA`], its own step of [`migrate`]).
const SCHEMA_VERSION: i64 = 5;

/// Schema 5: the alert delivery outbox (DESIGN §12.3). A step of its own, touching no other
/// table, so it applies whatever other steps an older file needs.
const OUTBOX_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS alert_outbox (
  id TEXT PRIMARY KEY, sink TEXT NOT NULL, kind TEXT NOT NULL, host TEXT NOT NULL, body TEXT NOT NULL,
  state TEXT NOT NULL, attempts INTEGER NOT NULL, created_at INTEGER NOT NULL, due_at INTEGER NOT NULL,
  settled_at INTEGER, last_error TEXT);
CREATE INDEX IF NOT EXISTS alert_outbox_due ON alert_outbox (state, due_at);
CREATE INDEX IF NOT EXISTS alert_outbox_window ON alert_outbox (sink, host, state);
"#;

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
pub type SqliteStore = SqlStore<Sqlite>;

/// An open SQLite database file.
pub struct Sqlite {
    conn: Mutex<Connection>,
    path: String,
}

/// Statements kept prepared: every statement the store runs fits, so none is parsed twice.
const STATEMENT_CACHE: usize = 64;

fn db<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> StoreError + '_ {
    move |e| StoreError::Db {
        context: context.to_string(),
        message: e.to_string(),
    }
}

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the database file and applies migrations.
    pub fn open(path: &Path, tz: TimeZone) -> Res<SqliteStore> {
        Ok(SqlStore::new(Sqlite::open(path)?, tz))
    }
}

impl Sqlite {
    /// Opens (creating if needed) the database file and applies migrations.
    pub fn open(path: &Path) -> Res<Sqlite> {
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
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
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
        Ok(Sqlite {
            conn: Mutex::new(conn),
            path: shown,
        })
    }
}

impl Backend for Sqlite {
    fn shown(&self) -> &str {
        &self.path
    }

    fn with<T: Send>(&self, f: impl FnOnce(&mut dyn Conn) -> Res<T> + Send) -> Res<T> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut SqliteConn { conn: &conn })
    }
}

/// Brings the tables of an older schema up to [`SCHEMA_VERSION`] (`CREATE TABLE IF NOT EXISTS`
/// leaves an existing table as it was). Each step checks what is there, so it can run again.
fn migrate(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    // (table, column, the statement adding it), in schema order. 2: `spool_depth`. 3: the
    // coverage of the last heartbeat (records::coverage_column); NULL until an agent that
    // reports it sends one. 4: `events.detail`, what a metadata change touched.
    const STEPS: [(&str, &str, &str); 3] = [
        (
            "hosts",
            "spool_depth",
            "ALTER TABLE hosts ADD COLUMN spool_depth INTEGER NOT NULL DEFAULT 0",
        ),
        (
            "hosts",
            "coverage",
            "ALTER TABLE hosts ADD COLUMN coverage TEXT",
        ),
        (
            "events",
            "detail",
            "ALTER TABLE events ADD COLUMN detail TEXT",
        ),
    ];
    for (table, column, add) in STEPS {
        let has: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, column],
            |r| r.get(0),
        )?;
        if !has {
            tx.execute_batch(add)?;
        }
    }
    // 5: the alert outbox (idempotent by `IF NOT EXISTS`).
    tx.execute_batch(OUTBOX_SCHEMA)?;
    Ok(())
}

/// The connection, lent to one call.
struct SqliteConn<'a> {
    conn: &'a Connection,
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Param::Null => ValueRef::Null,
            Param::Int(v) => ValueRef::Integer(v),
            Param::Real(v) => ValueRef::Real(v),
            Param::Text(v) => ValueRef::Text(v.as_bytes()),
            Param::Bool(v) => ValueRef::Integer(v.into()),
        }))
    }
}

/// Column `i` as a [`Value`]; text must be UTF-8 (as rusqlite's `String` requires).
fn value(ctx: &str, i: usize, v: ValueRef<'_>) -> Res<Value> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|e| db(ctx)(format!("column {i}: {e}")))?
                .to_string(),
        ),
        ValueRef::Blob(_) => {
            return Err(db(ctx)(format!(
                "column {i}: a BLOB where text or a number belongs"
            )));
        }
    })
}

impl Conn for SqliteConn<'_> {
    fn dialect(&self) -> &'static Dialect {
        &SQLITE
    }

    fn batch(&mut self, ctx: &str, sql: &str) -> Res<()> {
        self.conn.execute_batch(sql).map_err(db(ctx))
    }

    fn execute(&mut self, ctx: &str, sql: &str, params: &[Param<'_>]) -> Res<u64> {
        let mut st = self.conn.prepare_cached(sql).map_err(db(ctx))?;
        let n = st
            .execute(rusqlite::params_from_iter(params))
            .map_err(db(ctx))?;
        Ok(n as u64)
    }

    fn each(&mut self, ctx: &str, sql: &str, params: &[Param<'_>], f: &mut EachRow<'_>) -> Res<()> {
        let mut st = self.conn.prepare_cached(sql).map_err(db(ctx))?;
        let columns = st.column_count();
        let mut rows = st
            .query(rusqlite::params_from_iter(params))
            .map_err(db(ctx))?;
        // One buffer for every row: `f` sees each row once, in turn.
        let mut row = Row::default();
        while let Some(r) = rows.next().map_err(db(ctx))? {
            let values = row.values_mut();
            values.clear();
            for i in 0..columns {
                values.push(value(ctx, i, r.get_ref(i).map_err(db(ctx))?)?);
            }
            f(&row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use jiff::civil::Date;

    use super::super::{LatestScan, Store};
    use super::*;
    use crate::event::Heartbeat;

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
}
