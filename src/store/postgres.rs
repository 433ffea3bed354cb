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
//! The client is the synchronous `postgres` crate (no TLS: `NoTls`); the API calls the store from
//! `spawn_blocking`. Connections are pooled in the store, a few per process.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use ::postgres::types::ToSql;
use ::postgres::{Client, Config, IsolationLevel, NoTls, Row, Transaction};
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use super::chain::{self, GENESIS};
use super::records;
use super::records::{
    DayFacts, Projection, Record, Walk, content_hash, event_body, event_body_of, from_micros,
    is_violation, kpi_body, live_from, micros, new_secret, reclass_body, seal_range, token_hash,
};
use super::{
    ChainHead, ChainReport, EventQuery, HeartbeatOutcome, HostInfo, LatestScan, Role, Store,
    StoreError, StoredChange, StoredEvent, StoredManifest, Token, keep_latest,
};
use crate::event::{EventBatch, Heartbeat, IngestResult};
use crate::kpi::HostDay;
use crate::util::timefmt;

/// Schema version this code writes. 2: `hosts.spool_depth`. 3: `hosts.coverage` (added by
/// [`upgrade`] alone, for new and old databases alike).
const SCHEMA_VERSION: i64 = 3;

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

type Res<T> = Result<T, StoreError>;

/// The PostgreSQL-backed store.
pub struct PgStore {
    config: Config,
    /// The URL with any password masked, for messages.
    shown: String,
    tz: TimeZone,
    pool: Mutex<Pool>,
    returned: Condvar,
}

/// Connections kept for reuse, and how many are open (idle or in use).
#[derive(Default)]
struct Pool {
    idle: Vec<Client>,
    open: usize,
}

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

impl PgStore {
    /// Connects, applies migrations and keeps the connection for reuse.
    pub fn open(url: &str, tz: TimeZone) -> Res<PgStore> {
        let shown = redact(url);
        let mut config: Config = url.parse().map_err(db(&shown))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("driftwatch");
        }
        let store = PgStore {
            config,
            shown,
            tz,
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
        };
        store.with(|c| migrate(c, &store.shown))?;
        Ok(store)
    }

    fn day_of(&self, t: Timestamp) -> Date {
        t.to_zoned(self.tz.clone()).date()
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a pooled connection.
    ///
    /// The synchronous client drives its connection with a small runtime of its own, which must
    /// not block a thread that already runs async tasks: inside a tokio context (the collector
    /// opens its store from async code) the work moves to a short-lived thread of its own.
    fn with<T: Send>(&self, f: impl FnOnce(&mut Client) -> Res<T> + Send) -> Res<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return std::thread::scope(|s| {
                s.spawn(|| self.with_here(f))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            });
        }
        self.with_here(f)
    }

    fn with_here<T>(&self, f: impl FnOnce(&mut Client) -> Res<T>) -> Res<T> {
        let mut lease = Lease {
            store: self,
            client: Some(self.checkout()?),
        };
        f(lease.client.as_mut().expect("leased"))
    }

    /// An idle connection, or a new one while fewer than [`MAX_OPEN`] are open, or the next one
    /// returned.
    fn checkout(&self) -> Res<Client> {
        let deadline = std::time::Instant::now() + POOL_WAIT;
        let mut pool = self.pool();
        loop {
            if let Some(c) = pool.idle.pop() {
                if !c.is_closed() {
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
                return self.config.connect(NoTls).map_err(|e| {
                    self.pool().open -= 1;
                    self.returned.notify_one();
                    db(&self.shown)(e)
                });
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
    fn checkin(&self, client: Client) {
        let mut pool = self.pool();
        if client.is_closed() || std::thread::panicking() {
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
    store: &'a PgStore,
    client: Option<Client>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            self.store.checkin(c);
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        let pool = self.pool.get_mut().unwrap_or_else(|e| e.into_inner());
        let idle = std::mem::take(&mut pool.idle);
        if !idle.is_empty() {
            // Each client owns a runtime, which may not be dropped where async tasks run.
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
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
    let has_depth: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = to_regclass('hosts') AND attname = 'spool_depth' AND NOT attisdropped)",
            &[],
        )?
        .try_get(0)?;
    if !has_depth {
        tx.batch_execute(
            "ALTER TABLE hosts ADD COLUMN IF NOT EXISTS spool_depth BIGINT NOT NULL DEFAULT 0",
        )?;
    }
    // 3: the coverage of the last heartbeat (records::coverage_column); NULL until an agent
    // that reports it sends one.
    let has_coverage: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = to_regclass('hosts') AND attname = 'coverage' AND NOT attisdropped)",
            &[],
        )?
        .try_get(0)?;
    if !has_coverage {
        tx.batch_execute("ALTER TABLE hosts ADD COLUMN IF NOT EXISTS coverage TEXT")?;
    }
    Ok(())
}

/// The chain position, locked for the rest of the writing transaction.
struct Cursor {
    len: u64,
    head: String,
}

impl Cursor {
    /// Locks the chain head and reads it. Every transaction that appends to the chain calls this
    /// before touching anything else, so appends from all instances queue up on this one row (and
    /// no lock is ever taken before it: no deadlock).
    fn lock(tx: &mut Transaction<'_>) -> Res<Cursor> {
        let head: String = tx
            .query_one(
                "SELECT value FROM meta WHERE key = 'chain_head' FOR UPDATE",
                &[],
            )
            .map_err(db("chain"))?
            .get(0);
        let len: String = tx
            .query_one("SELECT value FROM meta WHERE key = 'chain_len'", &[])
            .map_err(db("chain"))?
            .get(0);
        Ok(Cursor {
            len: len.parse().unwrap_or(0),
            head,
        })
    }

    /// (chain_seq, prev_hash, hash) the next record would get; [`Cursor::advance`] once stored.
    fn peek(&self, kind: &str, body: &str) -> (i64, String, String) {
        (
            self.len as i64 + 1,
            self.head.clone(),
            chain::link(&self.head, kind, body),
        )
    }

    fn advance(&mut self, hash: String) {
        self.len += 1;
        self.head = hash;
    }

    fn save(&self, tx: &mut Transaction<'_>) -> Res<()> {
        tx.execute(
            "UPDATE meta SET value = $1 WHERE key = 'chain_len'",
            &[&self.len.to_string()],
        )
        .map_err(db("chain"))?;
        tx.execute(
            "UPDATE meta SET value = $1 WHERE key = 'chain_head'",
            &[&self.head],
        )
        .map_err(db("chain"))?;
        Ok(())
    }
}

fn upsert_host(tx: &mut Transaction<'_>, host: &str, env: &str, now: i64, day: &str) -> Res<()> {
    tx.execute(
        "INSERT INTO hosts (name, environment, first_seen, first_day, last_seen) VALUES ($1, $2, $3, $4, $3)
         ON CONFLICT (name) DO UPDATE SET environment = excluded.environment,
           last_seen = GREATEST(hosts.last_seen, excluded.last_seen)",
        &[&host, &env, &now, &day],
    )
    .map_err(db("hosts"))?;
    tx.execute(
        "INSERT INTO presence (host, day) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&host, &day],
    )
    .map_err(db("presence"))?;
    Ok(())
}

fn row_token(r: &Row) -> Token {
    let role: String = r.get(1);
    Token {
        id: r.get(0),
        role: Role::parse(&role).unwrap_or(Role::Reader),
        host: r.get(2),
        label: r.get(3),
        created_at: r.get(4),
        revoked_at: r.get(5),
    }
}

fn meta_get(tx: &mut Transaction<'_>, key: &str) -> Res<Option<String>> {
    Ok(tx
        .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
        .map_err(db("meta"))?
        .map(|r| r.get(0)))
}

#[allow(clippy::too_many_arguments)]
fn append_reclass(
    tx: &mut Transaction<'_>,
    cursor: &mut Cursor,
    event_id: i64,
    old: &str,
    new: &str,
    open_after: bool,
    reason: &str,
    at: &str,
) -> Res<()> {
    let (cseq, prev, hash) = cursor.peek(
        "reclassification",
        &reclass_body(event_id, old, new, open_after, reason, at),
    );
    tx.execute(
        "INSERT INTO reclassifications (id, chain_seq, event_id, old_status, new_status, open_after, reason, at, prev_hash, hash)
         VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM reclassifications), $1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[&cseq, &event_id, &old, &new, &open_after, &reason, &at, &prev, &hash],
    )
    .map_err(db("reclassify"))?;
    cursor.advance(hash);
    tx.execute(
        "UPDATE events SET current_status = $1, open = $2 WHERE id = $3",
        &[&new, &open_after, &event_id],
    )
    .map_err(db("reclassify"))?;
    Ok(())
}

fn append_kpi(
    tx: &mut Transaction<'_>,
    cursor: &mut Cursor,
    d: &HostDay,
    sealed_at: &str,
) -> Res<()> {
    let day = d.day.to_string();
    let version: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM kpi_days WHERE day = $1 AND host = $2",
            &[&day, &d.host],
        )
        .map_err(db("kpi"))?
        .get(0);
    let (cseq, prev, hash) = cursor.peek("kpi_day", &kpi_body(d, version, sealed_at));
    let (vetted, paths) = d
        .vetted_paths
        .map_or((None, None), |(v, p)| (Some(v as i64), Some(p as i64)));
    tx.execute(
        "INSERT INTO kpi_days (id, chain_seq, day, host, environment, version, expected, reported, changes, authorized,
           retroactive, unauthorized, unverifiable, vetted, paths, sealed_at, prev_hash, hash)
         VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM kpi_days), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
           $13, $14, $15, $16, $17)",
        &[
            &cseq,
            &day,
            &d.host,
            &d.environment,
            &version,
            &d.expected,
            &d.reported,
            &(d.changes as i64),
            &(d.authorized as i64),
            &(d.retroactive as i64),
            &(d.unauthorized as i64),
            &(d.unverifiable as i64),
            &vetted,
            &paths,
            &sealed_at,
            &prev,
            &hash,
        ],
    )
    .map_err(db("kpi"))?;
    cursor.advance(hash);
    Ok(())
}

/// The days to seal now, as far as this transaction can see.
fn seal_plan(tx: &mut Transaction<'_>, today: Date) -> Res<Option<(Date, Date)>> {
    let sealed: Option<Date> = meta_get(tx, "sealed_through")?.and_then(|s| s.parse().ok());
    let first: Option<String> = tx
        .query_one("SELECT MIN(first_day) FROM hosts", &[])
        .map_err(db("kpi"))?
        .get(0);
    Ok(seal_range(
        today,
        sealed,
        first.and_then(|f| f.parse::<Date>().ok()),
    ))
}

/// Seals every finished day (before `today`) not sealed yet into versioned, chained KPI rows.
/// Takes the chain lock only when there is something to seal, and looks again once it holds it:
/// another instance may have sealed the same days meanwhile.
fn seal_until(tx: &mut Transaction<'_>, today: Date, now: &str) -> Res<()> {
    if seal_plan(tx, today)?.is_none() {
        return Ok(());
    }
    let mut cursor = Cursor::lock(tx)?;
    let Some((start, yesterday)) = seal_plan(tx, today)? else {
        return Ok(());
    };
    for d in compute_days(tx, start, yesterday, None)? {
        append_kpi(tx, &mut cursor, &d, now)?;
    }
    cursor.save(tx)?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('sealed_through', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&yesterday.to_string()],
    )
    .map_err(db("kpi"))?;
    Ok(())
}

/// Computes host-day facts from events, presence and scans for `[from, to]`.
fn compute_days(
    tx: &mut Transaction<'_>,
    from: Date,
    to: Date,
    host: Option<&str>,
) -> Res<Vec<HostDay>> {
    let (f, t) = (from.to_string(), to.to_string());
    let host_filter = host.unwrap_or("");
    let mut retirements: HashMap<String, Vec<(String, Option<String>)>> = HashMap::new();
    for r in tx
        .query(
            "SELECT host, from_day, to_day FROM retirements WHERE $1 = '' OR host = $1",
            &[&host_filter],
        )
        .map_err(db("kpi"))?
    {
        retirements
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2)));
    }
    let hosts = tx
        .query(
            "SELECT name, environment, first_day FROM hosts WHERE $1 = '' OR name = $1",
            &[&host_filter],
        )
        .map_err(db("kpi"))?
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let spans = retirements.get(&name).cloned().unwrap_or_default();
            (name, r.get(1), r.get(2), spans)
        })
        .collect();
    let presence: HashSet<(String, String)> = tx
        .query(
            "SELECT host, day FROM presence WHERE day >= $1 AND day <= $2",
            &[&f, &t],
        )
        .map_err(db("kpi"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // ILIKE: SQLite's LIKE ignores ASCII case, and both stores must count alike.
    let counts: HashMap<(String, String), [u64; 5]> = tx
        .query(
            "SELECT host, day,
               COUNT(*) FILTER (WHERE current_status NOT IN ('excluded', 'resolved')),
               COUNT(*) FILTER (WHERE current_status ILIKE 'release:%' OR current_status ILIKE 'change:%'
                                   OR current_status ILIKE 'retroactive:%'),
               COUNT(*) FILTER (WHERE current_status ILIKE 'retroactive:%'),
               COUNT(*) FILTER (WHERE current_status = 'unauthorized'),
               COUNT(*) FILTER (WHERE current_status = 'unverifiable')
             FROM events WHERE day >= $1 AND day <= $2 AND resolves IS NULL GROUP BY host, day",
            &[&f, &t],
        )
        .map_err(db("kpi"))?
        .iter()
        .map(|r| {
            let n = |i: usize| r.get::<_, i64>(i) as u64;
            ((r.get(0), r.get(1)), [n(2), n(3), n(4), n(5), n(6)])
        })
        .collect();
    let vetted: HashMap<(String, String), (u64, u64)> = tx
        .query(
            "SELECT host, day, SUM(vetted)::BIGINT, SUM(paths)::BIGINT FROM scans
             WHERE day >= $1 AND day <= $2 GROUP BY host, day",
            &[&f, &t],
        )
        .map_err(db("kpi"))?
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get::<_, i64>(2) as u64, r.get::<_, i64>(3) as u64),
            )
        })
        .collect();
    Ok(DayFacts {
        hosts,
        presence,
        counts,
        vetted,
    }
    .days(from, to))
}

fn row_kpi(r: &Row) -> HostDay {
    let vetted: Option<i64> = r.get(10);
    let paths: Option<i64> = r.get(11);
    HostDay {
        day: r.get::<_, String>(0).parse().unwrap_or(Date::ZERO),
        host: r.get(1),
        environment: r.get(2),
        expected: r.get(3),
        reported: r.get(4),
        changes: r.get::<_, i64>(5) as u64,
        authorized: r.get::<_, i64>(6) as u64,
        retroactive: r.get::<_, i64>(7) as u64,
        unauthorized: r.get::<_, i64>(8) as u64,
        unverifiable: r.get::<_, i64>(9) as u64,
        vetted_paths: vetted.zip(paths).map(|(v, p)| (v as u64, p as u64)),
    }
}

fn verify(tx: &mut Transaction<'_>, at: Option<u64>, shown: &str) -> Res<ChainReport> {
    let ctx = format!("{shown}: audit");
    let mut walk = Walk::new();
    for r in tx
        .query(
            "SELECT chain_seq, id, host, seq, environment, tree, path, path_bytes, change, status, observed_at,
               window_start, received_at, day, blake3, previous_blake3, size, resolves, prev_hash, hash FROM events",
            &[],
        )
        .map_err(db(&ctx))?
    {
        let host: String = r.get(2);
        let seq: i64 = r.get(3);
        let body = event_body(
            &host,
            seq,
            r.get(4),
            (
                r.get(5),
                r.get(6),
                r.get(7),
                r.get(8),
                r.get(9),
                r.get(10),
                r.get(11),
            ),
            r.get(12),
            r.get(13),
            (r.get(14), r.get(15), r.get(16), r.get(17)),
        );
        walk.add(
            r.get(0),
            Record::event(r.get(1), &host, seq, r.get(18), r.get(19), body),
        );
    }
    for r in tx
        .query(
            "SELECT chain_seq, id, event_id, old_status, new_status, open_after, reason, at, prev_hash, hash
             FROM reclassifications",
            &[],
        )
        .map_err(db(&ctx))?
    {
        let event_id: i64 = r.get(2);
        let body = reclass_body(event_id, r.get(3), r.get(4), r.get(5), r.get(6), r.get(7));
        walk.add(
            r.get(0),
            Record::reclassification(r.get(1), event_id, r.get(8), r.get(9), body),
        );
    }
    for r in tx
        .query(
            "SELECT day, host, environment, expected, reported, changes, authorized, retroactive, unauthorized,
               unverifiable, vetted, paths, chain_seq, id, version, sealed_at, prev_hash, hash FROM kpi_days",
            &[],
        )
        .map_err(db(&ctx))?
    {
        let day: String = r.get(0);
        let host: String = r.get(1);
        let version: i64 = r.get(14);
        let body = kpi_body(&row_kpi(&r), version, r.get(15));
        walk.add(
            r.get(12),
            Record::kpi_day(r.get(13), (&day, &host, version), r.get(16), r.get(17), body),
        );
    }
    let meta_len: u64 = meta_get(tx, "chain_len")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let meta_head = meta_get(tx, "chain_head")?.unwrap_or_default();
    walk.finish(at, meta_len, &meta_head, || projection_problems(tx, &ctx))
}

/// The mutable `current_status`/`open` columns must equal what the chained history says.
fn projection_problems(tx: &mut Transaction<'_>, ctx: &str) -> Res<Vec<(i64, String)>> {
    let rows = tx
        .query(
            "SELECT e.chain_seq, e.host, e.seq, e.status, e.current_status, e.open, l.new_status, l.open_after
             FROM events e LEFT JOIN LATERAL (
               SELECT new_status, open_after FROM reclassifications r WHERE r.event_id = e.id
               ORDER BY chain_seq DESC LIMIT 1) l ON TRUE",
            &[],
        )
        .map_err(db(ctx))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Projection {
                chain_seq: r.get(0),
                host: r.get(1),
                seq: r.get(2),
                status: r.get(3),
                current: r.get(4),
                open: r.get(5),
                last_status: r.get(6),
                last_open: r.get(7),
            }
            .problem()
        })
        .collect())
}

impl Store for PgStore {
    fn create_token(
        &self,
        role: Role,
        host: Option<&str>,
        label: &str,
        now: Timestamp,
    ) -> Res<(Token, String)> {
        let secret = new_secret()?;
        let created = timefmt::format_timestamp(now);
        let today = self.day_of(now).to_string();
        let id = self.with(|c| {
            let mut tx = c.transaction().map_err(db("tokens"))?;
            // Token changes queue up, so a create and a revoke for one host cannot cross.
            tx.batch_execute("LOCK TABLE tokens IN SHARE ROW EXCLUSIVE MODE")
                .map_err(db("tokens"))?;
            let id: i64 = tx
                .query_one(
                    "INSERT INTO tokens (hash, role, host, label, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    &[&token_hash(&secret), &role.as_str(), &host, &label, &created],
                )
                .map_err(db("tokens"))?
                .get(0);
            if let Some(h) = host {
                // A new agent token brings a retired host back into the expected set from today
                // on; the days it was retired stay retired.
                tx.execute("UPDATE hosts SET retired_day = NULL WHERE name = $1", &[&h])
                    .map_err(db("hosts"))?;
                tx.execute(
                    "UPDATE retirements SET to_day = $1 WHERE host = $2 AND to_day IS NULL",
                    &[&today, &h],
                )
                .map_err(db("hosts"))?;
            }
            tx.commit().map_err(db("tokens"))?;
            Ok(id)
        })?;
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
        let hash = token_hash(secret);
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT id, role, host, label, created_at, revoked_at FROM tokens WHERE hash = $1 AND revoked_at IS NULL",
                &[&hash],
            )
            .map_err(db("tokens"))?
            .as_ref()
            .map(row_token))
        })
    }

    fn list_tokens(&self) -> Res<Vec<Token>> {
        self.with(|c| {
            Ok(c.query(
                "SELECT id, role, host, label, created_at, revoked_at FROM tokens ORDER BY id",
                &[],
            )
            .map_err(db("tokens"))?
            .iter()
            .map(row_token)
            .collect())
        })
    }

    fn revoke_token(&self, id: i64, now: Timestamp) -> Res<Token> {
        let at = timefmt::format_timestamp(now);
        let day = self.day_of(now).to_string();
        self.with(|c| {
            let mut tx = c.transaction().map_err(db("tokens"))?;
            tx.batch_execute("LOCK TABLE tokens IN SHARE ROW EXCLUSIVE MODE")
                .map_err(db("tokens"))?;
            let n = tx
                .execute(
                    "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                    &[&at, &id],
                )
                .map_err(db("tokens"))?;
            let token = tx
                .query_opt(
                    "SELECT id, role, host, label, created_at, revoked_at FROM tokens WHERE id = $1",
                    &[&id],
                )
                .map_err(db("tokens"))?
                .as_ref()
                .map(row_token)
                .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
            if n == 1
                && let (Role::Agent, Some(host)) = (token.role, &token.host)
            {
                let live: i64 = tx
                    .query_one(
                        "SELECT COUNT(*) FROM tokens WHERE role = 'agent' AND host = $1 AND revoked_at IS NULL",
                        &[host],
                    )
                    .map_err(db("tokens"))?
                    .get(0);
                if live == 0 {
                    tx.execute(
                        "UPDATE hosts SET retired_day = $1 WHERE name = $2",
                        &[&day, host],
                    )
                    .map_err(db("hosts"))?;
                    let start = records::retirement_start(self.day_of(now));
                    tx.execute(
                        "INSERT INTO retirements (host, from_day)
                         SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM retirements WHERE host = $1 AND to_day IS NULL)",
                        &[host, &start],
                    )
                    .map_err(db("hosts"))?;
                }
            }
            tx.commit().map_err(db("tokens"))?;
            Ok(token)
        })
    }

    fn record_heartbeat(&self, hb: &Heartbeat, now: Timestamp) -> Res<HeartbeatOutcome> {
        let day = self.day_of(now).to_string();
        let coverage = records::coverage_column(hb);
        self.with(|c| {
            let mut tx = c.transaction().map_err(db("heartbeat"))?;
            upsert_host(&mut tx, &hb.host, &hb.environment, micros(now), &day)?;
            // FOR UPDATE: two collectors taking heartbeats of one host must not both see the
            // old coverage and both report a change.
            let before: Option<String> = tx
                .query_one(
                    "SELECT coverage FROM hosts WHERE name = $1 FOR UPDATE",
                    &[&hb.host],
                )
                .map_err(db("heartbeat"))?
                .get(0);
            tx.execute(
                "UPDATE hosts SET agent_version = $1, spool_dropped = GREATEST(spool_dropped, $2), spool_depth = $3,
                   coverage = $4
                 WHERE name = $5",
                &[
                    &hb.agent_version,
                    &(hb.spool_dropped as i64),
                    &(hb.spool_depth as i64),
                    &coverage,
                    &hb.host,
                ],
            )
            .map_err(db("heartbeat"))?;
            tx.commit().map_err(db("heartbeat"))?;
            Ok(HeartbeatOutcome {
                coverage_changed: before != coverage,
            })
        })
    }

    fn ingest(&self, batch: &EventBatch, now: Timestamp) -> Res<IngestResult> {
        let day = self.day_of(now).to_string();
        let received = micros(now);
        let at = timefmt::format_timestamp(now);
        self.with(|c| {
            let mut tx = c.transaction().map_err(db("ingest"))?;
            let mut cursor = Cursor::lock(&mut tx)?;
            upsert_host(&mut tx, &batch.host, &batch.environment, received, &day)?;
            let row = tx
                .query_one(
                    "SELECT last_seq, missing_seqs FROM hosts WHERE name = $1",
                    &[&batch.host],
                )
                .map_err(db("ingest"))?;
            let (mut last_seq, mut missing): (i64, i64) = (row.get(0), row.get(1));
            let insert = tx
                .prepare(
                    "INSERT INTO events (id, chain_seq, host, seq, environment, tree, path, path_bytes, change, status,
                       observed_at, window_start, received_at, day, blake3, previous_blake3, size, resolves,
                       content_hash, current_status, open, prev_hash, hash)
                     VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM events), $1, $2, $3, $4, $5, $6, $7, $8, $9,
                       $10, $11, $12, $13, $14, $15, $16, $17, $18, $9, $19, $20, $21)
                     ON CONFLICT (host, seq) DO NOTHING RETURNING id",
                )
                .map_err(db("ingest"))?;
            let existing = tx
                .prepare("SELECT content_hash FROM events WHERE host = $1 AND seq = $2")
                .map_err(db("ingest"))?;
            let mut result = IngestResult::default();
            let mut replays = 0i64;
            let mut resolve = Vec::new();
            for e in &batch.events {
                let seq = e.seq as i64;
                let ch = content_hash(e);
                let body = event_body_of(&batch.host, &batch.environment, e, received, &day);
                let (cseq, prev, hash) = cursor.peek("event", &body);
                let size = e.size.map(|s| s as i64);
                let resolves = e.resolves.map(|s| s as i64);
                let inserted = tx
                    .query_opt(
                        &insert,
                        &[
                            &cseq,
                            &batch.host,
                            &seq,
                            &batch.environment,
                            &e.tree,
                            &e.path,
                            &e.path_bytes,
                            &e.change,
                            &e.status,
                            &e.observed_at,
                            &e.window_start,
                            &received,
                            &day,
                            &e.blake3,
                            &e.previous_blake3,
                            &size,
                            &resolves,
                            &ch,
                            &is_violation(&e.status),
                            &prev,
                            &hash,
                        ],
                    )
                    .map_err(db("ingest"))?
                    .is_some();
                if inserted {
                    cursor.advance(hash);
                    if seq > last_seq + 1 {
                        missing += seq - last_seq - 1;
                    } else if seq < last_seq && missing > 0 {
                        missing -= 1;
                    }
                    last_seq = last_seq.max(seq);
                    result.stored += 1;
                    if let Some(r) = resolves {
                        resolve.push((r, e.status.clone()));
                    }
                } else {
                    // Already stored (by an earlier batch, or another instance a moment ago).
                    let prior: String = tx
                        .query_one(&existing, &[&batch.host, &seq])
                        .map_err(db("ingest"))?
                        .get(0);
                    if prior == ch {
                        result.duplicates += 1;
                    } else {
                        result.rejected.push(e.seq);
                        replays += 1;
                    }
                }
                result.acked_seq = result.acked_seq.max(e.seq);
            }
            for (r, record_status) in resolve {
                let target = tx
                    .query_opt(
                        "SELECT id, current_status FROM events WHERE host = $1 AND seq = $2 AND open",
                        &[&batch.host, &r],
                    )
                    .map_err(db("ingest"))?;
                if let Some(row) = target {
                    let (id, status): (i64, String) = (row.get(0), row.get(1));
                    let (new, reason) = records::closing(&status, &record_status);
                    append_reclass(&mut tx, &mut cursor, id, &status, &new, false, &reason, &at)?;
                }
            }
            for s in &batch.scans {
                tx.execute(
                    "INSERT INTO scans (host, tree, day, finished_at, received_at, paths, vetted, release, seconds)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (host, tree, day) DO UPDATE SET finished_at = excluded.finished_at,
                       received_at = excluded.received_at, paths = excluded.paths, vetted = excluded.vetted,
                       release = excluded.release, seconds = excluded.seconds",
                    &[
                        &batch.host,
                        &s.tree,
                        &day,
                        &s.finished_at,
                        &received,
                        &(s.paths as i64),
                        &(s.vetted as i64),
                        &s.release,
                        &s.seconds,
                    ],
                )
                .map_err(db("scans"))?;
                result.scans += 1;
            }
            tx.execute(
                "UPDATE hosts SET last_seq = $1, missing_seqs = $2, replays = replays + $3 WHERE name = $4",
                &[&last_seq, &missing, &replays, &batch.host],
            )
            .map_err(db("ingest"))?;
            cursor.save(&mut tx)?;
            tx.commit().map_err(db("ingest"))?;
            Ok(result)
        })
    }

    fn events(&self, q: &EventQuery) -> Res<Vec<StoredEvent>> {
        let mut sql = String::from(
            "SELECT id, host, seq, environment, tree, path, path_bytes, change, current_status, status, open, observed_at,
               window_start, received_at, blake3, previous_blake3, size FROM events WHERE resolves IS NULL",
        );
        let mut args: Vec<String> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: String| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
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
                arg(&mut sql, " AND (current_status = ?", s.clone());
                arg(&mut sql, " OR current_status ILIKE ? || ':%')", s.clone());
            }
        }
        if q.open_only {
            sql.push_str(" AND open");
        }
        sql.push_str(" ORDER BY received_at, host, seq");
        if let Some(l) = q.limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        self.with(|c| {
            Ok(c.query(&sql, &params)
                .map_err(db("events"))?
                .iter()
                .map(|r| StoredEvent {
                    id: r.get(0),
                    host: r.get(1),
                    seq: r.get::<_, i64>(2) as u64,
                    environment: r.get(3),
                    tree: r.get(4),
                    path: r.get(5),
                    path_bytes: r.get(6),
                    change: r.get(7),
                    status: r.get(8),
                    original_status: r.get(9),
                    open: r.get(10),
                    observed_at: r.get(11),
                    window_start: r.get(12),
                    received_at: from_micros(r.get(13)),
                    blake3: r.get(14),
                    previous_blake3: r.get(15),
                    size: r.get::<_, Option<i64>>(16).map(|s| s as u64),
                })
                .collect())
        })
    }

    fn reclassify(&self, event_id: i64, new_status: &str, reason: &str, now: Timestamp) -> Res<()> {
        let at = timefmt::format_timestamp(now);
        self.with(|c| {
            let mut tx = c.transaction().map_err(db("reclassify"))?;
            let mut cursor = Cursor::lock(&mut tx)?;
            let row = tx
                .query_opt(
                    "SELECT current_status, host, day FROM events WHERE id = $1",
                    &[&event_id],
                )
                .map_err(db("reclassify"))?
                .ok_or_else(|| StoreError::NotFound(format!("event {event_id}")))?;
            let (old, host, day): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            append_reclass(
                &mut tx,
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
                .query_one(
                    "SELECT COUNT(*) FROM kpi_days WHERE day = $1 AND host = $2",
                    &[&day, &host],
                )
                .map_err(db("reclassify"))?
                .get(0);
            if sealed > 0 {
                let d: Date = day.parse().map_err(|e: jiff::Error| StoreError::Db {
                    context: "reclassify".into(),
                    message: e.to_string(),
                })?;
                let facts = compute_days(&mut tx, d, d, Some(&host))?;
                for f in facts.iter().filter(|f| f.host == host) {
                    append_kpi(&mut tx, &mut cursor, f, &at)?;
                }
            }
            cursor.save(&mut tx)?;
            tx.commit().map_err(db("reclassify"))
        })
    }

    fn host_days(
        &self,
        from: Date,
        to: Date,
        host: Option<&str>,
        now: Timestamp,
    ) -> Res<Vec<HostDay>> {
        let today = self.day_of(now);
        let now_s = timefmt::format_timestamp(now);
        self.with(|c| {
            let mut tx = c.transaction().map_err(db("kpi"))?;
            seal_until(&mut tx, today, &now_s)?;
            tx.commit().map_err(db("kpi"))?;
            // One snapshot for the sealed rows and the live days after them.
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(db("kpi"))?;
            let sealed_through: Option<Date> =
                meta_get(&mut tx, "sealed_through")?.and_then(|s| s.parse().ok());
            let mut out = Vec::new();
            let sealed_to = sealed_through.map(|s| s.min(to));
            if let Some(st) = sealed_to.filter(|st| *st >= from) {
                let (f, t) = (from.to_string(), st.to_string());
                let sql = "SELECT DISTINCT ON (day, host) day, host, environment, expected, reported, changes, authorized,
                     retroactive, unauthorized, unverifiable, vetted, paths FROM kpi_days
                   WHERE day >= $1 AND day <= $2 AND ($3::TEXT IS NULL OR host = $3)
                   ORDER BY day, host, version DESC";
                let rows = tx.query(sql, &[&f, &t, &host]).map_err(db("kpi"))?;
                out.extend(rows.iter().map(row_kpi));
            }
            let live_from = live_from(sealed_through, from);
            if live_from <= to {
                out.extend(compute_days(&mut tx, live_from, to.min(today), host)?);
            }
            tx.commit().map_err(db("kpi"))?;
            Ok(out)
        })
    }

    fn hosts(&self, now: Timestamp) -> Res<Vec<HostInfo>> {
        let now_us = micros(now);
        self.with(|c| {
            Ok(c.query(
                "SELECT name, environment, first_seen, last_seen, agent_version, last_seq, missing_seqs, replays,
                   spool_dropped, retired_day, (SELECT COUNT(*) FROM events e WHERE e.host = h.name AND e.open),
                   spool_depth, coverage
                 FROM hosts h ORDER BY name",
                &[],
            )
            .map_err(db("hosts"))?
            .iter()
            .map(|r| {
                let last: i64 = r.get(3);
                let (config_digest, trees) =
                    records::coverage_of(r.get::<_, Option<String>>(12).as_deref());
                HostInfo {
                    host: r.get(0),
                    environment: r.get(1),
                    first_seen: from_micros(r.get(2)),
                    last_seen: from_micros(last),
                    agent_version: r.get(4),
                    last_seq: r.get::<_, i64>(5) as u64,
                    missing_seqs: r.get::<_, i64>(6) as u64,
                    replays: r.get::<_, i64>(7) as u64,
                    spool_dropped: r.get::<_, i64>(8) as u64,
                    spool_depth: r.get::<_, i64>(11) as u64,
                    retired: r.get::<_, Option<String>>(9).is_some(),
                    open_unauthorized: r.get::<_, i64>(10) as u64,
                    silent_for_seconds: (now_us - last).max(0) / 1_000_000,
                    coverage_reduced: trees.iter().any(|t| t.coverage_reduced),
                    config_digest,
                    trees,
                }
            })
            .collect())
        })
    }

    fn latest_scans(&self, since: Date) -> Res<Vec<LatestScan>> {
        let since = since.to_string();
        self.with(|c| {
            let rows = c
                .query(
                    "SELECT host, tree, seconds, finished_at, received_at FROM scans WHERE day >= $1",
                    &[&since],
                )
                .map_err(db("scans"))?
                .iter()
                .map(|r| {
                    Ok((
                        LatestScan {
                            host: r.try_get(0)?,
                            tree: r.try_get(1)?,
                            seconds: r.try_get(2)?,
                            finished_at: r.try_get(3)?,
                        },
                        r.try_get::<_, i64>(4)?,
                    ))
                })
                .collect::<Result<Vec<_>, ::postgres::Error>>()
                .map_err(db("scans"))?;
            Ok(keep_latest(rows))
        })
    }

    fn put_change(&self, id: &str, toml: &str, minisig: Option<&str>, now: Timestamp) -> Res<()> {
        let at = timefmt::format_timestamp(now);
        self.with(|c| {
            let mut tx = c.transaction().map_err(db("changes"))?;
            // Versions are numbered per id; instances storing at once take turns.
            tx.batch_execute("LOCK TABLE changes IN SHARE ROW EXCLUSIVE MODE")
                .map_err(db("changes"))?;
            tx.execute(
                "INSERT INTO changes (id, version, toml, minisig, received_at)
                 VALUES ($1, COALESCE((SELECT MAX(version) FROM changes WHERE id = $1), 0) + 1, $2, $3, $4)",
                &[&id, &toml, &minisig, &at],
            )
            .map_err(db("changes"))?;
            tx.commit().map_err(db("changes"))
        })
    }

    fn changes(&self) -> Res<Vec<StoredChange>> {
        self.with(|c| {
            Ok(c.query(
                "SELECT DISTINCT ON (id) id, toml, minisig, received_at FROM changes ORDER BY id, version DESC",
                &[],
            )
            .map_err(db("changes"))?
            .iter()
            .map(|r| StoredChange {
                id: r.get(0),
                toml: r.get(1),
                minisig: r.get(2),
                received_at: r.get(3),
            })
            .collect())
        })
    }

    fn put_manifest(&self, m: &StoredManifest) -> Res<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO manifests (tree, release, manifest, minisig, received_at) VALUES ($1, $2, $3, $4, $5)",
                &[&m.tree, &m.release, &m.manifest, &m.minisig, &m.received_at],
            )
            .map_err(db("manifests"))?;
            Ok(())
        })
    }

    fn manifest(&self, tree: &str) -> Res<Option<StoredManifest>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT tree, release, manifest, minisig, received_at FROM manifests WHERE tree = $1
                 ORDER BY seq DESC LIMIT 1",
                &[&tree],
            )
            .map_err(db("manifests"))?
            .map(|r| StoredManifest {
                tree: r.get(0),
                release: r.get(1),
                manifest: r.get(2),
                minisig: r.get(3),
                received_at: r.get(4),
            }))
        })
    }

    fn verify_chain(&self, at: Option<u64>) -> Res<ChainReport> {
        self.with(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(db("audit"))?;
            let report = verify(&mut tx, at, &self.shown)?;
            tx.commit().map_err(db("audit"))?;
            Ok(report)
        })
    }

    fn chain_head(&self) -> Res<ChainHead> {
        self.with(|c| {
            let rows = c
                .query(
                    "SELECT key, value FROM meta WHERE key IN ('chain_len', 'chain_head')",
                    &[],
                )
                .map_err(db("chain"))?;
            let get = |k: &str| -> Res<String> {
                rows.iter()
                    .find(|r| r.get::<_, &str>(0) == k)
                    .map(|r| r.get(1))
                    .ok_or_else(|| StoreError::NotFound(format!("meta {k}")))
            };
            Ok(ChainHead {
                records: get("chain_len")?.parse().unwrap_or(0),
                head: get("chain_head")?,
            })
        })
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
