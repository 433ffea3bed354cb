//! The heartbeat: every `collector.heartbeat`, the host says it is alive, what it watches, how
//! its spool is doing and what it excludes (coverage, DESIGN §12.1). A silent host is counted as
//! non-compliant by the collector, so the heartbeat never waits on the engine.

use std::sync::{Arc, Mutex};

use super::spool::Spool;
use super::worker::Exclusions;
use super::{Live, coverage};
use crate::event::Heartbeat;
use jiff::Timestamp;

/// Starts the heartbeat; it runs until aborted. A change of settings or of the manifest
/// exclusions in force sends one at once.
pub(super) fn spawn(
    spool: Arc<Mutex<Spool>>,
    last_scan: Arc<Mutex<Option<Timestamp>>>,
    mut live_rx: tokio::sync::watch::Receiver<Live>,
    mut excl_rx: tokio::sync::watch::Receiver<Exclusions>,
) -> tokio::task::JoinHandle<()> {
    let mut excl_open = true;
    tokio::spawn(async move {
        loop {
            let Live { cfg, sink } = live_rx.borrow_and_update().clone();
            let in_force = excl_rx.borrow_and_update().clone();
            let (dropped, depth) = {
                let s = spool.lock().unwrap_or_else(|e| e.into_inner());
                (s.dropped, s.depth())
            };
            let hb = Heartbeat {
                host: cfg.host.clone(),
                environment: cfg.environment.clone(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                trees: cfg.trees.iter().map(|t| t.name.clone()).collect(),
                last_scan: last_scan
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .map(crate::util::timefmt::format_timestamp),
                spool_dropped: dropped,
                spool_depth: depth,
                config_digest: Some(coverage::config_digest(&cfg)),
                coverage: cfg
                    .trees
                    .iter()
                    .map(|t| {
                        let release = in_force.get(&t.name).map_or(&[][..], Vec::as_slice);
                        coverage::tree_coverage(&t.name, &t.exclude_globs, release)
                    })
                    .collect(),
            };
            if let Err(e) = sink.heartbeat(hb).await {
                tracing::debug!(error = %e, "heartbeat not delivered");
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.heartbeat) => {},
                // New settings: a heartbeat at once, then at the new period.
                r = live_rx.changed() => if r.is_err() { return },
                // A manifest with other exclusions came into force: the same.
                r = excl_rx.changed(), if excl_open => excl_open = r.is_ok(),
            }
        }
    })
}
