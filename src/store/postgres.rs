//! PostgreSQL store: for a fleet whose collector instances, behind a load balancer, share one
//! database (DESIGN §3). Same schema shape, same semantics and the same hash chain as the SQLite
//! store (both hash through [`super::records`]), so one history gives one chain head in either.
//!
//! Several instances append to one chain, so every transaction that appends takes the chain-head
//! row in `meta` with `SELECT ... FOR UPDATE` as its first lock: appends (ingestion, re-classification,
//! sealing of finished days) queue up on that row and each one sees everything committed before
//! it. Ingestion inserts with `ON CONFLICT (host, seq) DO NOTHING` and compares content hashes
//! when the row already exists, so a re-sent batch is stored once whichever instance gets it.
//! Reads that span several statements (`verify_chain`, KPI days) run in a read-only
//! `REPEATABLE READ` snapshot and never wait for writers.
//!
//! The store's logic is [`SqlStore`]'s (these rules included); this module keeps the pool of
//! connections, the schema, its migrations and the binding of [`Param`]/[`Value`] to PostgreSQL
//! types. The client is the synchronous `postgres` crate (no TLS: `NoTls`); the API calls the
//! store from `spawn_blocking`. Connections are pooled in the store, a few per process, each
//! with the statements it has prepared.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use ::postgres::types::{ToSql, Type};
use ::postgres::{Client, Config, NoTls, Statement, Transaction};
use jiff::tz::TimeZone;

use super::StoreError;
use super::chain::GENESIS;
use super::sql::dialect::POSTGRES;
use super::sql::{Backend, Conn, Dialect, EachRow, Param, Res, Row, SqlStore, Value};

/// Schema version this code writes. 2: `hosts.spool_depth`. 3: `hosts.coverage`. 4:
/// `events.detail` (3 and 4 added by [`upgrade`] alone, for new and old databases alike). 5: the
/// `alert_outbox` table ([`OUTBOX_SCHEMA`], its own step of [`upgrade`]).
const SCHEMA_VERSION: i64 = 5;

/// Schema 5: the alert delivery outbox (DESIGN §12.3). A step of its own, touching no other
/// table, so it applies whatever other steps an older database needs.
const OUTBOX_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS alert_outbox (
  id TEXT COLLATE "C" PRIMARY KEY, sink TEXT COLLATE "C" NOT NULL, kind TEXT COLLATE "C" NOT NULL,
  host TEXT COLLATE "C" NOT NULL, body TEXT NOT NULL, state TEXT COLLATE "C" NOT NULL, attempts BIGINT NOT NULL,
  created_at BIGINT NOT NULL, due_at BIGINT NOT NULL, settled_at BIGINT, last_error TEXT);
CREATE INDEX IF NOT EXISTS alert_outbox_due ON alert_outbox (state, due_at);
CREATE INDEX IF NOT EXISTS alert_outbox_window ON alert_outbox (sink, host, state);
"#;

/// Advisory lock held while migrating, so instances starting together create the tables once.
const MIGRATION_LOCK: i64 = 0x6472_6966_7477_6d31; // "driftwm1"

/// Connections one store (one collector process) opens at most; callers beyond that wait for
/// one to come back, so a burst of requests cannot exhaust the server's `max_connections`.
const MAX_OPEN: usize = 16;

/// How long a caller waits for a connection when all [`MAX_OPEN`] are busy.
const POOL_WAIT: Duration = Duration::from_secs(60);

/// Connect timeout when the URL sets none: a collector must not hang on an unreachable database.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Text columns that are compared or sorted use the "C" collation: byte order, as SQLite does,
/// so results and their order do not depend on the database's locale.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
  id BIGSERIAL PRIMARY KEY, hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL, host TEXT COLLATE "C",
  label TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE IF NOT EXISTS hosts (
  name TEXT COLLATE "C" PRIMARY KEY, environment TEXT NOT NULL, first_seen BIGINT NOT NULL,
  first_day TEXT COLLATE "C" NOT NULL, last_seen BIGINT NOT NULL, agent_version TEXT NOT NULL DEFAULT '',
  last_seq BIGINT NOT NULL DEFAULT 0, missing_seqs BIGINT NOT NULL DEFAULT 0, replays BIGINT NOT NULL DEFAULT 0,
  spool_dropped BIGINT NOT NULL DEFAULT 0, retired_day TEXT COLLATE "C", spool_depth BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS retirements (host TEXT COLLATE "C" NOT NULL, from_day TEXT COLLATE "C" NOT NULL, to_day TEXT COLLATE "C");
CREATE TABLE IF NOT EXISTS presence (
  host TEXT COLLATE "C" NOT NULL, day TEXT COLLATE "C" NOT NULL, PRIMARY KEY (host, day));
CREATE TABLE IF NOT EXISTS scans (
  host TEXT COLLATE "C" NOT NULL, tree TEXT COLLATE "C" NOT NULL, day TEXT COLLATE "C" NOT NULL,
  finished_at TEXT NOT NULL, received_at BIGINT NOT NULL, paths BIGINT NOT NULL, vetted BIGINT NOT NULL,
  release TEXT, seconds DOUBLE PRECISION NOT NULL, PRIMARY KEY (host, tree, day));
CREATE TABLE IF NOT EXISTS events (
  id BIGINT PRIMARY KEY, chain_seq BIGINT NOT NULL UNIQUE, host TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL,
  environment TEXT NOT NULL, tree TEXT NOT NULL, path TEXT NOT NULL, path_bytes TEXT, change TEXT NOT NULL,
  status TEXT COLLATE "C" NOT NULL, observed_at TEXT NOT NULL, window_start TEXT NOT NULL,
  received_at BIGINT NOT NULL, day TEXT COLLATE "C" NOT NULL, blake3 TEXT, previous_blake3 TEXT, size BIGINT,
  resolves BIGINT, content_hash TEXT NOT NULL, current_status TEXT COLLATE "C" NOT NULL, open BOOLEAN NOT NULL,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (host, seq));
CREATE INDEX IF NOT EXISTS events_day ON events (day, host);
CREATE INDEX IF NOT EXISTS presence_day ON presence (day, host);
CREATE INDEX IF NOT EXISTS scans_day ON scans (day, host);
CREATE INDEX IF NOT EXISTS events_open ON events (host) WHERE open;
CREATE INDEX IF NOT EXISTS events_received ON events (received_at, host, seq);
CREATE TABLE IF NOT EXISTS reclassifications (
  id BIGINT PRIMARY KEY, chain_seq BIGINT NOT NULL UNIQUE, event_id BIGINT NOT NULL, old_status TEXT NOT NULL,
  new_status TEXT NOT NULL, open_after BOOLEAN NOT NULL, reason TEXT NOT NULL, at TEXT NOT NULL,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS reclass_event ON reclassifications (event_id, chain_seq);
CREATE TABLE IF NOT EXISTS kpi_days (
  id BIGINT PRIMARY KEY, chain_seq BIGINT NOT NULL UNIQUE, day TEXT COLLATE "C" NOT NULL,
  host TEXT COLLATE "C" NOT NULL, environment TEXT NOT NULL, version BIGINT NOT NULL, expected BOOLEAN NOT NULL,
  reported BOOLEAN NOT NULL, changes BIGINT NOT NULL, authorized BIGINT NOT NULL, retroactive BIGINT NOT NULL,
  unauthorized BIGINT NOT NULL, unverifiable BIGINT NOT NULL, vetted BIGINT, paths BIGINT,
  sealed_at TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (day, host, version));
CREATE TABLE IF NOT EXISTS changes (
  id TEXT COLLATE "C" NOT NULL, version BIGINT NOT NULL, toml TEXT NOT NULL, minisig TEXT,
  received_at TEXT NOT NULL, PRIMARY KEY (id, version));
CREATE TABLE IF NOT EXISTS manifests (
  seq BIGSERIAL PRIMARY KEY, tree TEXT COLLATE "C" NOT NULL, release TEXT NOT NULL, manifest TEXT NOT NULL,
  minisig TEXT, received_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS manifests_tree ON manifests (tree, seq);
"#;

/// The PostgreSQL-backed store.
pub type PgStore = SqlStore<Postgres>;

/// A PostgreSQL database and this process's connections to it.
pub struct Postgres {
    config: Config,
    /// The URL with any password masked, for messages.
    shown: String,
    pool: Mutex<Pool>,
    returned: Condvar,
}

/// Connections kept for reuse, and how many are open (idle or in use).
#[derive(Default)]
struct Pool {
    idle: Vec<PgConn>,
    open: usize,
}

/// A connection and the statements prepared on it (by their canonical SQL).
struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Prepared statements one connection keeps at most; beyond, the cache starts again (the store
/// runs a few dozen distinct statements, the event list one per filter combination).
const STATEMENT_CACHE: usize = 128;

/// Checks that a `postgres://` URL is well formed (the config check runs this; nothing connects).
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<Config>().map(|_| ()).map_err(|e| e.to_string())
}

/// The URL with its password (if any) replaced by `***`.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@')
            && let Some((user, _)) = rest[..at].split_once(':')
        {
            out = format!("{scheme}://{user}:***@{}", &rest[at + 1..]);
        }
    }
    if let Some((base, query)) = out.clone().split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k == "password" => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{base}?{}", query.join("&"));
    }
    out
}

fn describe(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => match d.detail() {
            Some(detail) => format!("{} ({detail})", d.message()),
            None => d.message().to_string(),
        },
        None => e.to_string(),
    }
}

fn db(context: &str) -> impl FnOnce(::postgres::Error) -> StoreError + '_ {
    move |e| StoreError::Db {
        context: context.to_string(),
        message: describe(&e),
    }
}

impl SqlStore<Postgres> {
    /// Connects, applies migrations and keeps the connection for reuse.
    pub fn open(url: &str, tz: TimeZone) -> Res<PgStore> {
        Ok(SqlStore::new(Postgres::open(url)?, tz))
    }
}

impl Postgres {
    /// Connects, applies migrations and keeps the connection for reuse.
    pub fn open(url: &str) -> Res<Postgres> {
        let shown = redact(url);
        let mut config: Config = url.parse().map_err(db(&shown))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("driftwatch");
        }
        let store = Postgres {
            config,
            shown,
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
        };
        store.with_conn(|c| migrate(&mut c.client, &store.shown))?;
        Ok(store)
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a pooled connection.
    ///
    /// The synchronous client drives its connection with a small runtime of its own, which must
    /// not block a thread that already runs async tasks: inside a tokio context (the collector
    /// opens its store from async code) the work moves to a short-lived thread of its own.
    fn with_conn<T: Send>(&self, f: impl FnOnce(&mut PgConn) -> Res<T> + Send) -> Res<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return std::thread::scope(|s| {
                s.spawn(|| self.with_here(f))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            });
        }
        self.with_here(f)
    }

    fn with_here<T>(&self, f: impl FnOnce(&mut PgConn) -> Res<T>) -> Res<T> {
        let mut lease = Lease {
            store: self,
            client: Some(self.checkout()?),
        };
        f(lease.client.as_mut().expect("leased"))
    }

    /// An idle connection, or a new one while fewer than [`MAX_OPEN`] are open, or the next one
    /// returned.
    fn checkout(&self) -> Res<PgConn> {
        let deadline = std::time::Instant::now() + POOL_WAIT;
        let mut pool = self.pool();
        loop {
            if let Some(c) = pool.idle.pop() {
                if !c.client.is_closed() {
                    return Ok(c);
                }
                pool.open -= 1;
                drop(pool);
                drop(c);
                pool = self.pool();
                continue;
            }
            if pool.open < MAX_OPEN {
                pool.open += 1;
                drop(pool);
                return match self.config.connect(NoTls) {
                    Ok(client) => Ok(PgConn {
                        client,
                        statements: HashMap::new(),
                    }),
                    Err(e) => {
                        self.pool().open -= 1;
                        self.returned.notify_one();
                        Err(db(&self.shown)(e))
                    }
                };
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::Db {
                    context: self.shown.clone(),
                    message: format!(
                        "all {MAX_OPEN} connections stayed busy for {}s",
                        POOL_WAIT.as_secs()
                    ),
                });
            }
            pool = self
                .returned
                .wait_timeout(pool, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Returns a connection to the pool (a broken one is closed and no longer counted).
    fn checkin(&self, client: PgConn) {
        let mut pool = self.pool();
        if client.client.is_closed() || std::thread::panicking() {
            pool.open -= 1;
            drop(pool);
            drop(client);
        } else {
            pool.idle.push(client);
            drop(pool);
        }
        self.returned.notify_one();
    }
}

/// A connection in use, given back to the pool however the work ends.
struct Lease<'a> {
    store: &'a Postgres,
    client: Option<PgConn>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            self.store.checkin(c);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pool = self.pool.get_mut().unwrap_or_else(|e| e.into_inner());
        let idle = std::mem::take(&mut pool.idle);
        if !idle.is_empty() {
            // Each client owns a runtime, which may not be dropped where async tasks run.
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

impl Backend for Postgres {
    fn shown(&self) -> &str {
        &self.shown
    }

    fn with<T: Send>(&self, f: impl FnOnce(&mut dyn Conn) -> Res<T> + Send) -> Res<T> {
        self.with_conn(|c| f(c))
    }
}

fn migrate(c: &mut Client, shown: &str) -> Res<()> {
    let mut tx = c.transaction().map_err(db(shown))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db(shown))?;
    let has_meta: bool = tx
        .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])
        .map_err(db(shown))?
        .get(0);
    if has_meta {
        let found: Option<i64> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
            .map_err(db(shown))?
            .and_then(|r| r.get::<_, String>(0).parse().ok());
        if let Some(found) = found.filter(|v| *v > SCHEMA_VERSION) {
            return Err(StoreError::Schema {
                path: shown.to_string(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
    }
    tx.batch_execute(SCHEMA).map_err(db(shown))?;
    upgrade(&mut tx).map_err(db(&format!(
        "{shown}: migrating to schema {SCHEMA_VERSION}"
    )))?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('chain_len', '0'), ('chain_head', $1)
         ON CONFLICT (key) DO NOTHING",
        &[&GENESIS],
    )
    .map_err(db(shown))?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE meta.value <> excluded.value",
        &[&SCHEMA_VERSION.to_string()],
    )
    .map_err(db(shown))?;
    tx.commit().map_err(db(shown))
}

/// Brings the tables of an older schema up to [`SCHEMA_VERSION`] (`CREATE TABLE IF NOT EXISTS`
/// leaves an existing table as it was). Each step looks first: `ALTER TABLE` locks the table
/// against every reader, even when `IF NOT EXISTS` makes it a no-op, and a collector starting
/// next to busy ones should not stall them.
fn upgrade(tx: &mut Transaction<'_>) -> Result<(), ::postgres::Error> {
    // (table, column, the statement adding it), in schema order. 2: `spool_depth`. 3: the
    // coverage of the last heartbeat (records::coverage_column); NULL until an agent that
    // reports it sends one. 4: `events.detail`, what a metadata change touched.
    const STEPS: [(&str, &str, &str); 3] = [
        (
            "hosts",
            "spool_depth",
            "ALTER TABLE hosts ADD COLUMN IF NOT EXISTS spool_depth BIGINT NOT NULL DEFAULT 0",
        ),
        (
            "hosts",
            "coverage",
            "ALTER TABLE hosts ADD COLUMN IF NOT EXISTS coverage TEXT",
        ),
        (
            "events",
            "detail",
            "ALTER TABLE events ADD COLUMN IF NOT EXISTS detail TEXT",
        ),
    ];
    for (table, column, add) in STEPS {
        let has: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped)",
                &[&table, &column],
            )?
            .try_get(0)?;
        if !has {
            tx.batch_execute(add)?;
        }
    }
    // 5: the alert outbox (`IF NOT EXISTS` takes no lock on other tables).
    tx.batch_execute(OUTBOX_SCHEMA)?;
    Ok(())
}

/// A parameter as the statement's parameter type wants it: SQL NULL is typed, and an integer
/// goes into a narrower integer parameter when it fits.
enum PgArg<'a> {
    I8(Option<i64>),
    I4(Option<i32>),
    I2(Option<i16>),
    F8(Option<f64>),
    Bool(Option<bool>),
    Text(Option<&'a str>),
}

impl<'a> PgArg<'a> {
    fn new(p: Param<'a>, ty: &Type) -> Result<PgArg<'a>, String> {
        let narrow = |v: i64| format!("{v} does not fit a {ty} parameter");
        Ok(match (p, ty) {
            (Param::Null, &Type::INT8) => PgArg::I8(None),
            (Param::Null, &Type::INT4) => PgArg::I4(None),
            (Param::Null, &Type::INT2) => PgArg::I2(None),
            (Param::Null, &Type::FLOAT8) => PgArg::F8(None),
            (Param::Null, &Type::BOOL) => PgArg::Bool(None),
            (Param::Null, _) => PgArg::Text(None),
            (Param::Int(v), &Type::INT4) => PgArg::I4(Some(v.try_into().map_err(|_| narrow(v))?)),
            (Param::Int(v), &Type::INT2) => PgArg::I2(Some(v.try_into().map_err(|_| narrow(v))?)),
            (Param::Int(v), _) => PgArg::I8(Some(v)),
            (Param::Real(v), _) => PgArg::F8(Some(v)),
            (Param::Bool(v), _) => PgArg::Bool(Some(v)),
            (Param::Text(v), _) => PgArg::Text(Some(v)),
        })
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            PgArg::I8(v) => v,
            PgArg::I4(v) => v,
            PgArg::I2(v) => v,
            PgArg::F8(v) => v,
            PgArg::Bool(v) => v,
            PgArg::Text(v) => v,
        }
    }
}

/// Column `i` as a [`Value`], by its PostgreSQL type.
fn value(r: &::postgres::Row, i: usize) -> Result<Value, ::postgres::Error> {
    let ty = r.columns()[i].type_();
    Ok(match *ty {
        Type::BOOL => r
            .try_get::<_, Option<bool>>(i)?
            .map_or(Value::Null, Value::Bool),
        Type::INT8 => r
            .try_get::<_, Option<i64>>(i)?
            .map_or(Value::Null, Value::Int),
        Type::INT4 => r
            .try_get::<_, Option<i32>>(i)?
            .map_or(Value::Null, |v| Value::Int(v.into())),
        Type::INT2 => r
            .try_get::<_, Option<i16>>(i)?
            .map_or(Value::Null, |v| Value::Int(v.into())),
        Type::FLOAT8 => r
            .try_get::<_, Option<f64>>(i)?
            .map_or(Value::Null, Value::Real),
        Type::FLOAT4 => r
            .try_get::<_, Option<f32>>(i)?
            .map_or(Value::Null, |v| Value::Real(v.into())),
        _ => r
            .try_get::<_, Option<String>>(i)?
            .map_or(Value::Null, Value::Text),
    })
}

impl PgConn {
    /// The prepared statement for canonical `sql` (its placeholders made `$N` once, here).
    fn statement(&mut self, ctx: &str, sql: &str) -> Res<Statement> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self
            .client
            .prepare(&POSTGRES.placeholders(sql))
            .map_err(db(ctx))?;
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    fn bind<'a>(ctx: &str, st: &Statement, params: &[Param<'a>]) -> Res<Vec<PgArg<'a>>> {
        params
            .iter()
            .zip(st.params())
            .map(|(p, ty)| {
                PgArg::new(*p, ty).map_err(|message| StoreError::Db {
                    context: ctx.to_string(),
                    message,
                })
            })
            .collect()
    }
}

impl Conn for PgConn {
    fn dialect(&self) -> &'static Dialect {
        &POSTGRES
    }

    fn batch(&mut self, ctx: &str, sql: &str) -> Res<()> {
        self.client.batch_execute(sql).map_err(db(ctx))
    }

    fn execute(&mut self, ctx: &str, sql: &str, params: &[Param<'_>]) -> Res<u64> {
        let st = self.statement(ctx, sql)?;
        let args = PgConn::bind(ctx, &st, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(PgArg::as_sql).collect();
        self.client.execute(&st, &refs).map_err(db(ctx))
    }

    fn each(&mut self, ctx: &str, sql: &str, params: &[Param<'_>], f: &mut EachRow<'_>) -> Res<()> {
        let st = self.statement(ctx, sql)?;
        let args = PgConn::bind(ctx, &st, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(PgArg::as_sql).collect();
        let rows = self.client.query(&st, &refs).map_err(db(ctx))?;
        let mut row = Row::default();
        for r in &rows {
            let values = row.values_mut();
            values.clear();
            for i in 0..r.len() {
                values.push(value(r, i).map_err(db(ctx))?);
            }
            f(&row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact("postgres://dw:s3cret@db.internal:5432/driftwatch"),
            "postgres://dw:***@db.internal:5432/driftwatch"
        );
        assert_eq!(
            redact("postgresql://dw@db/driftwatch?password=s3cret&sslmode=disable"),
            "postgresql://dw@db/driftwatch?password=***&sslmode=disable"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }

    #[test]
    fn urls_are_checked_without_connecting() {
        assert!(check_url("postgres://dw@db.internal:5432/driftwatch").is_ok());
        assert!(check_url("postgresql://dw@db/driftwatch?connect_timeout=3").is_ok());
        assert!(check_url("postgres://dw@db/driftwatch?bogus_option=1").is_err());
    }
}
