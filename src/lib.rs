//! driftwatch: catch code on production servers that did not come through the release process.
//!
//! The library holds everything; `src/main.rs` only parses the command line and calls [`cli::run`].
//!
//! # Layout
//!
//! The folders follow the route a change takes, left to right:
//!
//! ```text
//! scan ──> judge ──> agent ──────> collector ──> store ──> kpi
//! walk      diff      engine         service       sql       day facts
//! hash      classify  spool          http          sqlite    KPI rows
//! snapshot  manifest  uplink                       postgres
//! ```
//!
//! - [`scan`]: what is in a tree now — [`scan::walk`] lists it, [`scan::hash`] hashes each file,
//!   [`scan::xattr`] reads attributes, [`scan::snapshot`] runs them in parallel.
//! - [`judge`]: what is approved and what a difference is — [`judge::manifest`] and
//!   [`judge::changelog`] (signed with [`sign`]), [`judge::diff`], [`judge::classify`]; the
//!   one-shot [`judge::check`] and its [`judge::report`].
//! - [`agent`]: the daemon — [`agent::engine`] runs passes over trees through an
//!   [`agent::observe::Observer`], judges them with [`agent::tracker`], commits to
//!   [`agent::state`] and the [`agent::spool`]; the uplink sends [`event`]s to the collector.
//! - [`collector`]: [`collector::http`] (routes, auth, errors) over [`collector::service`]
//!   (ingest, changes, KPI, audit, hosts), which the embedded collector and the `--db` CLI
//!   commands call too.
//!   [`collector::alerts`] hangs off the service: routing into the store's outbox (in the
//!   transaction that stores the cause), the delivery loop and watchers, one file per sink.
//! - [`store`]: the tamper-evident history, one SQL layer for SQLite and PostgreSQL.
//! - [`kpi`]: the KPI from day facts, as pure arithmetic (the daily report that puts it in
//!   words is [`collector::service::daily`]).
//! - [`cli`] (one file per command group), [`client`] (the HTTP client), [`util`] (paths,
//!   globs, time, atomic writes, host name, exit codes).
//!
//! Dependencies point left to right (and into `util`); nothing in `scan` or `judge` knows the
//! agent, the collector or the store.

pub mod agent;
pub mod cli;
pub mod client;
pub mod collector;
pub mod event;
pub mod judge;
pub mod kpi;
pub mod scan;
pub mod sign;
pub mod store;
pub mod util;
