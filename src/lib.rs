//! driftwatch: catch code on production servers that did not come through the release process.
//!
//! The library holds everything; `src/main.rs` only parses the command line and calls [`cli::run`].

pub mod agent;
pub mod changelog;
pub mod check;
pub mod classify;
pub mod cli;
pub mod client;
pub mod collector;
pub mod confkeys;
pub mod daily;
pub mod diff;
pub mod event;
pub mod exit;
pub mod fsutil;
pub mod glob;
pub mod hash;
pub mod host;
pub mod kpi;
pub mod manifest;
pub mod pathbytes;
pub mod report;
pub mod sign;
pub mod snapshot;
pub mod store;
pub mod timefmt;
pub mod walk;
pub mod xattr;
