//! The store's logic, written once over a small connection interface, for every SQL backend.
//!
//! A backend ([`Backend`]) hands out a connection ([`Conn`]) per call: it executes SQL written in
//! the canonical form of this module (numbered `?N` placeholders, the portable SQL both engines
//! accept) and returns rows as [`Value`]s. Where the engines differ, the SQL asks the backend's
//! [`Dialect`] (row locks, `GREATEST`, case-insensitive `LIKE`, latest row per group, …); the
//! backend itself only keeps its connections, its schema and its migrations.
//!
//! Invariants every operation here keeps, whichever backend runs it:
//! - A transaction that appends to the hash chain takes the chain cursor (`cursor::Cursor::lock`)
//!   before anything else and saves it before committing: appends from every process queue up
//!   on the chain head, each sees all appends committed before it, and no lock is taken before
//!   it (no deadlock).
//! - Row ids of chained tables are the next integer after the largest (SQLite's rowid rule),
//!   assigned under the chain lock, so one history gives the same ids, hashes and chain head in
//!   every backend.
//! - Reads that span several statements run in one snapshot ([`TxKind::Snapshot`]).

mod cursor;
pub mod dialect;
mod hosts;
mod ingest;
mod kpi_days;
mod outbox;
mod reclassify;
mod releases;
mod tokens;
mod verify;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

pub use dialect::Dialect;

use super::outbox::{AlertCount, AlertPlan, NewAlert, OutboxRow, Settle};
use super::{
    ChainHead, ChainReport, EventQuery, HeartbeatOutcome, HostInfo, LatestScan, Role, Store,
    StoreError, StoredChange, StoredEvent, StoredManifest, Token,
};
use crate::event::{EventBatch, Heartbeat, IngestResult};
use crate::kpi::HostDay;

pub(crate) type Res<T> = Result<T, StoreError>;

/// A database error in `context`.
pub(crate) fn db_error(context: &str, message: impl std::fmt::Display) -> StoreError {
    StoreError::Db {
        context: context.to_string(),
        message: message.to_string(),
    }
}

/// A statement parameter, borrowed from the caller: binding copies nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param<'a> {
    /// SQL NULL.
    Null,
    /// An integer (SQLite INTEGER, PostgreSQL BIGINT).
    Int(i64),
    /// A float (REAL, DOUBLE PRECISION).
    Real(f64),
    /// Text.
    Text(&'a str),
    /// A boolean (SQLite stores 0/1, PostgreSQL BOOLEAN).
    Bool(bool),
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}

impl From<f64> for Param<'_> {
    fn from(v: f64) -> Self {
        Param::Real(v)
    }
}

impl From<bool> for Param<'_> {
    fn from(v: bool) -> Self {
        Param::Bool(v)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(v)
    }
}

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

impl<'a> From<&'a Option<String>> for Param<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().into()
    }
}

/// The parameters of one statement: `args![a, b, c]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::store::sql::Param::from($v)),*]
    };
}
pub(crate) use args;

/// A column value as read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(String),
    /// A boolean (PostgreSQL; SQLite returns its 0/1 as [`Value::Int`]).
    Bool(bool),
}

/// Types a column converts to.
pub trait FromValue: Sized {
    /// What the column must hold, for messages.
    const WANT: &'static str;
    /// `None` when the value has another type.
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    const WANT: &'static str = "an integer";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl FromValue for f64 {
    const WANT: &'static str = "a number";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(f) => Some(*f),
            // SQLite hands back a REAL column holding a whole number as such, too.
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl FromValue for bool {
    const WANT: &'static str = "a boolean";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(*b),
            // SQLite keeps booleans as integers.
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
}

impl FromValue for String {
    const WANT: &'static str = "text";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    const WANT: &'static str = T::WANT;
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    /// The values, for a backend refilling one row buffer.
    pub fn values_mut(&mut self) -> &mut Vec<Value> {
        &mut self.values
    }

    /// Column `i`, converted.
    pub fn get<T: FromValue>(&self, i: usize) -> Res<T> {
        let v = self.values.get(i).unwrap_or(&Value::Null);
        T::from_value(v).ok_or_else(|| {
            db_error(
                "reading a row",
                format!("column {i} holds {v:?}, expected {}", T::WANT),
            )
        })
    }

    /// Column `i` as a count (stored as a non-negative integer).
    pub fn count(&self, i: usize) -> Res<u64> {
        Ok(self.get::<i64>(i)? as u64)
    }
}

/// What a transaction is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKind {
    /// Writes: SQLite takes the database's write lock at once, PostgreSQL reads committed data
    /// and locks rows as the statements ask ([`Dialect::for_update`]).
    Write,
    /// Several reads that must see one state of the database, never waiting for writers.
    Snapshot,
}

/// What [`Conn::each`] calls with each row.
pub type EachRow<'f> = dyn FnMut(&Row) -> Res<()> + 'f;

/// One connection of a backend, used by one call at a time.
pub trait Conn {
    /// The SQL dialect of this connection.
    fn dialect(&self) -> &'static Dialect;
    /// Runs statements without parameters or results (transaction control, table locks).
    fn batch(&mut self, ctx: &str, sql: &str) -> Res<()>;
    /// Runs one statement; returns the rows it changed.
    fn execute(&mut self, ctx: &str, sql: &str, params: &[Param<'_>]) -> Res<u64>;
    /// Runs one query, calling `f` with each row in turn.
    fn each(&mut self, ctx: &str, sql: &str, params: &[Param<'_>], f: &mut EachRow<'_>) -> Res<()>;
}

impl dyn Conn + '_ {
    /// All rows of a query.
    pub fn query(&mut self, ctx: &str, sql: &str, params: &[Param<'_>]) -> Res<Vec<Row>> {
        let mut out = Vec::new();
        self.each(ctx, sql, params, &mut |r| {
            out.push(r.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// Each row of a query, converted by `f`.
    pub fn map<T>(
        &mut self,
        ctx: &str,
        sql: &str,
        params: &[Param<'_>],
        mut f: impl FnMut(&Row) -> Res<T>,
    ) -> Res<Vec<T>> {
        let mut out = Vec::new();
        self.each(ctx, sql, params, &mut |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query, if any.
    pub fn query_opt(&mut self, ctx: &str, sql: &str, params: &[Param<'_>]) -> Res<Option<Row>> {
        let mut first = None;
        self.each(ctx, sql, params, &mut |r| {
            if first.is_none() {
                first = Some(r.clone());
            }
            Ok(())
        })?;
        Ok(first)
    }

    /// The row a query must return.
    pub fn query_one(&mut self, ctx: &str, sql: &str, params: &[Param<'_>]) -> Res<Row> {
        self.query_opt(ctx, sql, params)?
            .ok_or_else(|| db_error(ctx, "query returned no rows"))
    }
}

/// A transaction on a connection, rolled back unless [`Tx::commit`] is reached (an error, a
/// panic): a pooled connection never goes back with a transaction open.
pub struct Tx<'c> {
    conn: &'c mut dyn Conn,
    ctx: &'static str,
    open: bool,
}

impl<'c> Tx<'c> {
    /// Begins a transaction of `kind`.
    pub fn begin(conn: &'c mut dyn Conn, kind: TxKind, ctx: &'static str) -> Res<Tx<'c>> {
        let begin = conn.dialect().begin(kind);
        conn.batch(ctx, begin)?;
        Ok(Tx {
            conn,
            ctx,
            open: true,
        })
    }

    /// Commits. A failed `COMMIT` (SQLite busy, say) can leave the transaction open: it is then
    /// rolled back like any other unfinished one.
    pub fn commit(mut self) -> Res<()> {
        let done = self.conn.batch(self.ctx, "COMMIT");
        self.open = done.is_err();
        done
    }
}

impl<'c> std::ops::Deref for Tx<'c> {
    type Target = dyn Conn + 'c;
    fn deref(&self) -> &Self::Target {
        self.conn
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            // Nothing to report: the error that got us here is already on its way, and a
            // broken connection is dropped by its pool.
            let _ = self.conn.batch(self.ctx, "ROLLBACK");
        }
    }
}

/// A database engine: its connections, its dialect and what to call it in messages.
pub trait Backend: Send + Sync + 'static {
    /// The database as shown in messages (a path, a URL with its password masked).
    fn shown(&self) -> &str;
    /// Runs `f` on a connection held for the duration of the call.
    fn with<T: Send>(&self, f: impl FnOnce(&mut dyn Conn) -> Res<T> + Send) -> Res<T>;
}

/// The store over a backend: every [`Store`] method, written once.
pub struct SqlStore<B> {
    backend: B,
    tz: TimeZone,
}

impl<B: Backend> SqlStore<B> {
    /// The store over an opened (and migrated) backend; days are counted in `tz`.
    pub fn new(backend: B, tz: TimeZone) -> SqlStore<B> {
        SqlStore { backend, tz }
    }

    fn day_of(&self, t: Timestamp) -> Date {
        t.to_zoned(self.tz.clone()).date()
    }
}

impl<B: Backend> Store for SqlStore<B> {
    fn create_token(
        &self,
        role: Role,
        host: Option<&str>,
        label: &str,
        now: Timestamp,
    ) -> Res<(Token, String)> {
        let today = self.day_of(now);
        self.backend
            .with(|c| tokens::create(c, role, host, label, now, today))
    }

    fn find_token(&self, secret: &str) -> Res<Option<Token>> {
        self.backend.with(|c| tokens::find(c, secret))
    }

    fn list_tokens(&self) -> Res<Vec<Token>> {
        self.backend.with(tokens::list)
    }

    fn revoke_token(&self, id: i64, now: Timestamp) -> Res<Token> {
        let today = self.day_of(now);
        self.backend.with(|c| tokens::revoke(c, id, now, today))
    }

    fn record_heartbeat_alerting(
        &self,
        hb: &Heartbeat,
        now: Timestamp,
        plan: &dyn AlertPlan,
    ) -> Res<HeartbeatOutcome> {
        let today = self.day_of(now);
        self.backend
            .with(|c| hosts::heartbeat(c, hb, now, today, plan))
    }

    fn ingest_alerting(
        &self,
        batch: &EventBatch,
        now: Timestamp,
        plan: &dyn AlertPlan,
    ) -> Res<IngestResult> {
        let today = self.day_of(now);
        self.backend
            .with(|c| ingest::ingest(c, batch, now, today, plan))
    }

    fn enqueue_alerts(&self, alerts: &[NewAlert], now: Timestamp) -> Res<u64> {
        self.backend.with(|c| outbox::enqueue(c, alerts, now))
    }

    fn due_alerts(&self, now: Timestamp, limit: u64) -> Res<Vec<OutboxRow>> {
        self.backend.with(|c| outbox::due(c, now, limit))
    }

    fn settle_alerts(&self, ids: &[String], outcome: &Settle, now: Timestamp) -> Res<()> {
        self.backend.with(|c| outbox::settle(c, ids, outcome, now))
    }

    fn list_alerts(&self, limit: u64) -> Res<Vec<OutboxRow>> {
        self.backend.with(|c| outbox::list(c, limit))
    }

    fn alert_counts(&self) -> Res<Vec<AlertCount>> {
        self.backend.with(outbox::counts)
    }

    fn events(&self, q: &EventQuery) -> Res<Vec<StoredEvent>> {
        self.backend.with(|c| ingest::events(c, q))
    }

    fn reclassify(&self, event_id: i64, new_status: &str, reason: &str, now: Timestamp) -> Res<()> {
        self.backend
            .with(|c| reclassify::reclassify(c, event_id, new_status, reason, now))
    }

    fn host_days(
        &self,
        from: Date,
        to: Date,
        host: Option<&str>,
        now: Timestamp,
    ) -> Res<Vec<HostDay>> {
        let today = self.day_of(now);
        self.backend
            .with(|c| kpi_days::host_days(c, from, to, host, now, today))
    }

    fn hosts(&self, now: Timestamp) -> Res<Vec<HostInfo>> {
        self.backend.with(|c| hosts::hosts(c, now))
    }

    fn latest_scans(&self, since: Date) -> Res<Vec<LatestScan>> {
        self.backend.with(|c| hosts::latest_scans(c, since))
    }

    fn put_change(&self, id: &str, toml: &str, minisig: Option<&str>, now: Timestamp) -> Res<()> {
        self.backend
            .with(|c| releases::put_change(c, id, toml, minisig, now))
    }

    fn changes(&self) -> Res<Vec<StoredChange>> {
        self.backend.with(releases::changes)
    }

    fn put_manifest(&self, m: &StoredManifest) -> Res<()> {
        self.backend.with(|c| releases::put_manifest(c, m))
    }

    fn manifest(&self, tree: &str) -> Res<Option<StoredManifest>> {
        self.backend.with(|c| releases::manifest(c, tree))
    }

    fn verify_chain(&self, at: Option<u64>) -> Res<ChainReport> {
        let ctx = format!("{}: audit", self.backend.shown());
        self.backend.with(|c| verify::verify(c, at, &ctx))
    }

    fn chain_head(&self) -> Res<ChainHead> {
        self.backend.with(verify::chain_head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::Sqlite;

    fn sqlite() -> (tempfile::TempDir, Sqlite) {
        let tmp = tempfile::tempdir().unwrap();
        let db = Sqlite::open(&tmp.path().join("collector.db")).unwrap();
        (tmp, db)
    }

    #[test]
    fn a_transaction_is_rolled_back_unless_committed() {
        let (_tmp, db) = sqlite();
        let insert = "INSERT INTO meta (key, value) VALUES ('k', ?1)";
        db.with(|c| {
            {
                let mut tx = Tx::begin(c, TxKind::Write, "test")?;
                tx.execute("test", insert, args!["dropped"])?;
            }
            assert_eq!(cursor::meta_get(c, "k")?, None);
            let mut tx = Tx::begin(c, TxKind::Write, "test")?;
            tx.execute("test", insert, args!["kept"])?;
            tx.commit()?;
            assert_eq!(cursor::meta_get(c, "k")?.as_deref(), Some("kept"));
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn values_read_back_as_bound_and_a_mismatch_names_its_column() {
        let (_tmp, db) = sqlite();
        db.with(|c| {
            let none: Option<&str> = None;
            let r = c.query_one(
                "test",
                "SELECT ?1, ?2, ?3, ?4, ?5",
                args![true, 7i64, 1.5, "x", none],
            )?;
            assert!(r.get::<bool>(0)?);
            assert_eq!(r.get::<i64>(1)?, 7);
            assert_eq!(r.get::<f64>(2)?, 1.5);
            assert_eq!(r.get::<String>(3)?, "x");
            assert_eq!(r.get::<Option<String>>(4)?, None);
            let err = r.get::<i64>(3).unwrap_err().to_string();
            assert!(err.contains("column 3") && err.contains("integer"), "{err}");
            Ok(())
        })
        .unwrap();
    }
}
