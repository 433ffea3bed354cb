//! The engine thread: owns the trees' state and runs every pass, one at a time.
//!
//! Hashing is CPU and disk work, kept off the async runtime. Everything else in the daemon talks
//! to this thread through [`Command`]s; it publishes what the rest needs ([`Shared`]) and wakes
//! the uplink as soon as it has spooled events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, mpsc};

use jiff::Timestamp;
use tokio::sync::Notify;

use super::Command;
use super::engine::{Engine, PassResult};
use crate::event::ScanSummary;

/// Each tree's manifest exclusions in force, by tree name.
pub(super) type Exclusions = BTreeMap<String, Vec<String>>;

/// What the engine thread shares with the rest of the daemon.
#[derive(Clone, Default)]
pub(super) struct Shared {
    /// The latest scan summary per tree, taken by the next batch.
    pub summaries: Arc<Mutex<BTreeMap<String, ScanSummary>>>,
    /// When the last full scan finished (for heartbeats).
    pub last_scan: Arc<Mutex<Option<Timestamp>>>,
    /// Woken when events were spooled.
    pub wake: Arc<Notify>,
}

/// The running engine thread.
pub(super) struct Worker {
    /// Where commands go.
    pub tx: mpsc::Sender<Command>,
    /// Fires once the first scan of every tree is done.
    pub ready: tokio::sync::oneshot::Receiver<()>,
    /// Fires when the thread ends, however it ends: a dead engine must stop the agent (systemd
    /// restarts it) rather than leave a process that looks alive and watches nothing.
    pub alive: tokio::sync::oneshot::Receiver<()>,
    /// The thread.
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the engine thread: a first scan of every tree, then commands until [`Command::Stop`].
/// `excl_tx` gets the manifest exclusions in force whenever they change.
pub(super) fn spawn(
    mut engine: Engine,
    shared: Shared,
    excl_tx: tokio::sync::watch::Sender<Exclusions>,
) -> std::io::Result<Worker> {
    let (tx, rx) = mpsc::channel::<Command>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let (alive_tx, alive_rx) = tokio::sync::oneshot::channel::<()>();
    let Shared {
        summaries,
        last_scan,
        wake,
    } = shared;
    let publish = move |engine: &Engine| {
        let now = engine.manifest_exclusions();
        excl_tx.send_if_modified(|old| {
            let changed = *old != now;
            *old = now;
            changed
        });
    };
    let thread = std::thread::Builder::new().name("engine".into()).spawn(move || {
        let _alive = alive_tx;
        let mut ready = Some(ready_tx);
        let trees: Vec<String> = engine.trees.iter().map(|t| t.cfg.name.clone()).collect();
        for name in trees {
            scan_one(&mut engine, &name, None, &summaries, &last_scan);
        }
        publish(&engine);
        wake.notify_one();
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        loop {
            // A deploy's staging copies held back are judged when due, even if nothing else
            // happens then.
            let cmd = match engine.next_held_due() {
                Some(due) => match rx.recv_timeout(due.saturating_duration_since(std::time::Instant::now())) {
                    Ok(cmd) => cmd,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        engine.judge_held();
                        wake.notify_one();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => break,
                },
            };
            match cmd {
                Command::Stop => break,
                Command::Reload(cfg) => {
                    engine.reload(*cfg);
                    let trees: Vec<String> = engine.trees.iter().map(|t| t.cfg.name.clone()).collect();
                    for name in trees {
                        if engine.trees.iter().any(|t| t.cfg.name == name && t.state.last_scan.is_none()) {
                            scan_one(&mut engine, &name, None, &summaries, &last_scan);
                        }
                    }
                }
                Command::Scan { tree, rehash } => {
                    let names: Vec<String> = match tree {
                        Some(t) => vec![t],
                        None => engine.trees.iter().map(|t| t.cfg.name.clone()).collect(),
                    };
                    for name in names {
                        scan_one(&mut engine, &name, rehash, &summaries, &last_scan);
                    }
                }
                Command::Touched { tree, paths } => {
                    if let Some(i) = engine.tree_index(&tree) {
                        match engine.touched(i, &paths) {
                            Ok(r) => {
                                if let Some(s) = r.summary {
                                    summaries
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .insert(tree.clone(), s);
                                }
                            }
                            Err(e) => tracing::error!(tree = %tree, error = %e, "real-time update failed"),
                        }
                    }
                }
            }
            publish(&engine);
            wake.notify_one();
        }
    })?;
    Ok(Worker {
        tx,
        ready: ready_rx,
        alive: alive_rx,
        thread,
    })
}

/// One full scan of tree `name`: logs it and publishes its summary.
fn scan_one(
    engine: &mut Engine,
    name: &str,
    rehash: Option<bool>,
    summaries: &Arc<Mutex<BTreeMap<String, ScanSummary>>>,
    last_scan: &Arc<Mutex<Option<Timestamp>>>,
) -> Option<PassResult> {
    let i = engine.tree_index(name)?;
    let due = {
        let t = &engine.trees[i];
        let full = engine.cfg.full_rehash;
        t.state
            .last_full_rehash
            .is_none_or(|at| Timestamp::now().duration_since(at).unsigned_abs() >= full)
    };
    match engine.full_scan(i, rehash.unwrap_or(due)) {
        Ok(r) => {
            if let Some(s) = &r.summary {
                summaries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_string(), s.clone());
            }
            *last_scan.lock().unwrap_or_else(|e| e.into_inner()) = Some(Timestamp::now());
            tracing::info!(
                tree = name,
                files = r.scanned.0,
                dirs = r.scanned.1,
                events = r.events.len(),
                seconds = r.summary.as_ref().map(|s| s.seconds).unwrap_or(0.0),
                "scan finished"
            );
            Some(r)
        }
        Err(e) => {
            tracing::error!(tree = name, error = %e, "scan failed");
            None
        }
    }
}
