//! The uplink: spool → collector, in batches, with exponential backoff and jitter while the
//! collector is unreachable. Only what the collector acknowledged leaves the spool (see
//! [`super::flush`]), so a collector down for a day loses nothing.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use jiff::Timestamp;

use super::spool::Spool;
use super::worker::Shared;
use super::{Command, Live, Sink, flush};
use crate::event::ScanSummary;

/// Starts the uplink; it returns when `stop` turns true (after one last attempt).
pub(super) fn spawn(
    spool: Arc<Mutex<Spool>>,
    shared: &Shared,
    mut live_rx: tokio::sync::watch::Receiver<Live>,
    mut stop_rx: tokio::sync::watch::Receiver<bool>,
    tx: mpsc::Sender<Command>,
) -> tokio::task::JoinHandle<()> {
    let (wake, summaries) = (shared.wake.clone(), shared.summaries.clone());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        // Drops already followed by a resync.
        let mut resynced = 0u64;
        loop {
            let Live { cfg, sink } = live_rx.borrow_and_update().clone();
            let scans: Vec<ScanSummary> =
                std::mem::take(&mut *summaries.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_values()
                    .collect();
            match flush(&spool, &sink, &cfg, scans.clone()).await {
                Ok(_) => {
                    backoff = Duration::from_millis(500);
                    // Events a full spool refused are found again by a full scan: run it as
                    // soon as the spool has room, not at the next scheduled one.
                    let (dropped, depth) = {
                        let s = spool.lock().unwrap_or_else(|e| e.into_inner());
                        (s.dropped, s.depth())
                    };
                    if dropped > resynced && depth == 0 {
                        tracing::info!(dropped, "spool drained after drops: full scan to resync");
                        resynced = dropped;
                        let _ = tx.send(Command::Scan {
                            tree: None,
                            rehash: None,
                        });
                    }
                }
                Err(e) => {
                    // Keep the summaries for the next attempt.
                    {
                        let mut s = summaries.lock().unwrap_or_else(|e| e.into_inner());
                        for sc in scans {
                            s.entry(sc.tree.clone()).or_insert(sc);
                        }
                    }
                    if !matches!(sink, Sink::None) {
                        tracing::warn!(error = %e, retry_in = ?backoff, "uplink: collector unreachable; events stay in the spool");
                    }
                    let jitter = Duration::from_millis(u64::from(
                        Timestamp::now().subsec_nanosecond().unsigned_abs() % 250,
                    ));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff + jitter) => {},
                        _ = stop_rx.changed() => return,
                        // A reloaded [collector] is tried at once.
                        _ = live_rx.changed() => backoff = Duration::from_millis(250),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    continue;
                }
            }
            if *stop_rx.borrow() {
                return;
            }
            tokio::select! {
                _ = wake.notified() => {},
                _ = tokio::time::sleep(Duration::from_secs(5)) => {},
                _ = stop_rx.changed() => return,
                _ = live_rx.changed() => {},
            }
        }
    })
}
