//! The agent daemon: scheduled and real-time detection, durable reporting (DESIGN §9).
//!
//! Read top to bottom: [`run`] loads the config, starts the engine thread (`worker`: scans,
//! state, spool), the uplink (`uplink`: spool → collector, with backoff), the heartbeat
//! (`heartbeat`), the collector poller (`fetch`), the real-time watcher (`watch`) and the signal
//! handlers, then waits for SIGTERM. The judgement itself is `engine` (passes and the commit
//! protocol) over `tracker` (classification), `observe` (how a tree is looked at), `table` and
//! `state` (what is remembered), `staging` (a deploy's copies on their way in).

pub mod config;
pub mod coverage;
pub mod engine;
pub mod evidence;
pub mod fetch;
mod heartbeat;
pub mod layout;
pub mod observe;
pub mod spool;
pub mod staging;
pub mod state;
pub mod table;
pub mod tracker;
mod uplink;
pub mod watch;
mod worker;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Notify;

use crate::client::{Client, ClientError};
use crate::collector::Collector;
use crate::collector::config::CollectorConfig;
use crate::collector::service::{Service, ServiceError};
use crate::event::{EventBatch, Heartbeat, IngestResult, ScanSummary};
use crate::store::sqlite::SqliteStore;
use config::{AgentConfig, Uplink};
use engine::Engine;
use spool::Spool;

/// Work for the engine thread.
#[derive(Debug)]
pub enum Command {
    /// Full scan of one tree (all when `None`); `rehash` forces hashing everything.
    Scan {
        /// Tree name.
        tree: Option<String>,
        /// Ignore the stat cache (`None`: when `full_rehash` is due).
        rehash: Option<bool>,
    },
    /// Paths touched in real time.
    Touched {
        /// Tree name.
        tree: String,
        /// Absolute paths.
        paths: BTreeSet<PathBuf>,
    },
    /// New settings (SIGHUP).
    Reload(Box<AgentConfig>),
    /// Finish and stop.
    Stop,
}

/// Where batches and heartbeats go.
#[derive(Clone)]
pub enum Sink {
    /// Nowhere: events wait in the spool.
    None,
    /// A collector over HTTP(S).
    Remote(Client),
    /// The embedded collector, in process: the same service its HTTP API and dashboard use, so
    /// batches are validated and counted as a fleet collector would.
    Embedded(Arc<Service>),
}

impl Sink {
    async fn send(&self, batch: EventBatch) -> Result<IngestResult, ClientError> {
        match self {
            Sink::None => Err(ClientError::Transport {
                url: "(no collector)".into(),
                message: "no collector configured".into(),
            }),
            Sink::Remote(c) => c.post_json("/api/v1/events", &batch).await,
            Sink::Embedded(svc) => {
                in_service(svc, move |s| s.ingest(&batch, Timestamp::now())).await
            }
        }
    }

    async fn heartbeat(&self, hb: Heartbeat) -> Result<(), ClientError> {
        match self {
            Sink::None => Ok(()),
            Sink::Remote(c) => c
                .post_json::<_, serde_json::Value>("/api/v1/heartbeat", &hb)
                .await
                .map(|_| ()),
            Sink::Embedded(svc) => in_service(svc, move |s| s.heartbeat(&hb, Timestamp::now()))
                .await
                .map(|_| ()),
        }
    }
}

/// Runs work of the embedded collector off the async runtime, with the uplink's error type: a
/// refusal carries the HTTP status a remote collector would have answered, so the uplink treats
/// it the same way in both modes.
async fn in_service<T: Send + 'static>(
    svc: &Arc<Service>,
    f: impl FnOnce(&Service) -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ClientError> {
    let svc = svc.clone();
    let url = "embedded".to_string();
    match tokio::task::spawn_blocking(move || f(&svc)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ClientError::Status {
            url,
            status: crate::collector::http::error::status_of(&e).as_u16(),
            message: e.to_string(),
            retry_after: None,
        }),
        Err(e) => Err(ClientError::Transport {
            url,
            message: e.to_string(),
        }),
    }
}

/// The collector settings of the embedded mode, derived from the agent's.
pub fn embedded_collector_config(
    cfg: &AgentConfig,
    listen: std::net::SocketAddr,
) -> CollectorConfig {
    CollectorConfig {
        origin: cfg.origin.clone(),
        listen,
        tls: None,
        storage: format!("sqlite://{}", cfg.state_dir.join("collector.db").display()),
        max_body: 8 << 20,
        silent_after: cfg.heartbeat * 3,
        target: cfg.target,
        timezone: jiff::tz::TimeZone::get(&cfg.timezone).unwrap_or(jiff::tz::TimeZone::UTC),
        timezone_name: cfg.timezone.clone(),
        release_keys: cfg.release_keys.clone(),
        approver_keys: cfg.approver_keys.clone(),
        require_signatures: cfg.require_signatures,
        allow_self_approval: cfg.allow_self_approval,
        requests_per_minute: 6000,
        request_timeout: Duration::from_secs(30),
        audit_key: None,
        audit_pubkey: None,
        evidence_dir: Some(cfg.state_dir.join("evidence")),
        // Ticket import is a fleet collector's job.
        itsm: None,
        // The agent's own [trust] rules apply (its config check requires what it needs).
        uploads_refused: None,
        alerts: cfg.alerts.clone(),
        audit_every: Duration::from_secs(3600),
        report_at: jiff::civil::Time::constant(7, 0, 0, 0),
    }
}

/// Opens the sink a config names (the embedded store is created under the state dir).
pub fn open_sink(cfg: &AgentConfig) -> anyhow::Result<Sink> {
    Ok(match &cfg.uplink {
        Uplink::None => Sink::None,
        Uplink::Remote { url, token_file } => {
            Sink::Remote(Client::new(url, crate::client::read_token(token_file)?)?)
        }
        Uplink::Embedded { listen } => {
            let ccfg = embedded_collector_config(cfg, *listen);
            let store =
                SqliteStore::open(&cfg.state_dir.join("collector.db"), ccfg.timezone.clone())?;
            Sink::Embedded(Arc::new(Service::new(Arc::new(store), Arc::new(ccfg))))
        }
    })
}

/// Sends spooled events until the spool is empty or the sink fails; returns events acknowledged.
pub async fn flush(
    spool: &Arc<Mutex<Spool>>,
    sink: &Sink,
    cfg: &AgentConfig,
    scans: Vec<ScanSummary>,
) -> Result<u64, ClientError> {
    let mut sent = 0;
    let mut scans = scans;
    loop {
        let events = spool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peek(cfg.batch);
        if events.is_empty() && scans.is_empty() {
            return Ok(sent);
        }
        let last = events.last().map(|e| e.seq);
        let n = events.len() as u64;
        let batch = EventBatch {
            host: cfg.host.clone(),
            environment: cfg.environment.clone(),
            events,
            scans: std::mem::take(&mut scans),
        };
        let result = sink.send(batch).await?;
        if !result.rejected.is_empty() {
            tracing::error!(seqs = ?result.rejected, "collector refused events as replays (same number, other content)");
        }
        if let Some(last) = last {
            let acked = result.acked_seq.min(last);
            spool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ack(acked)
                .map_err(|e| ClientError::Transport {
                    url: "spool".into(),
                    message: e.to_string(),
                })?;
        }
        sent += n;
    }
}

fn status_line(engine_trees: usize, spool: &Arc<Mutex<Spool>>) -> String {
    let s = spool.lock().unwrap_or_else(|e| e.into_inner());
    format!(
        "watching {engine_trees} trees; spool {} events; {} dropped",
        s.depth(),
        s.dropped
    )
}

/// `driftwatch agent`: the daemon. Returns when SIGTERM/SIGINT arrived and the batch in flight was sent.
pub fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    tame_the_allocator();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cfg))
}

/// A long-running agent's resident memory should be its tables, not the peak of its last scan.
/// glibc raises its mmap threshold after the first large free (so later large buffers come from
/// the heap and stay resident around long-lived small blocks), and gives every thread that
/// allocates its own 64 MiB arena. A fixed threshold sends every large buffer back to the system
/// when it is freed, and two arenas are plenty for a daemon that hashes on a few threads.
fn tame_the_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the runtime starts threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed heap pages to the system (after the peaks of a scan or of watch set-up).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn run_async(cfg: AgentConfig) -> anyhow::Result<()> {
    let sink = open_sink(&cfg)?;
    // What the collector distributes is in place before the first scan judges anything.
    fetch_at_start(&sink, &cfg).await;
    let mut engine = Engine::new(cfg.clone())?;
    let spool = engine.spool.clone();
    let wake = Arc::new(Notify::new());
    engine.spooled = Some(wake.clone());
    engine.hold_staging = true;
    // The exclusions of each tree's manifest in force, published by the engine thread: a
    // change sends a heartbeat at once, so the collector learns of a coverage change without
    // waiting a heartbeat period. Starts with what the saved state has in force.
    let (excl_tx, excl_rx) = tokio::sync::watch::channel(engine.manifest_exclusions());

    // The embedded collector serves the dashboard and API on the same store.
    let mut server = None;
    if let (Uplink::Embedded { .. }, Sink::Embedded(svc)) = (&cfg.uplink, &sink) {
        let c = Collector::bind_with_service(svc.clone()).await?;
        tracing::info!(url = %c.url(), "embedded collector listening");
        eprintln!("driftwatch embedded collector listening on {}", c.url());
        let stop = Arc::new(Notify::new());
        let s2 = stop.clone();
        server = Some((
            tokio::spawn(c.serve(async move { s2.notified().await })),
            stop,
        ));
    }

    // Engine thread: owns the state; everything else talks to it through `tx`.
    let shared = worker::Shared {
        wake: wake.clone(),
        ..Default::default()
    };
    let worker::Worker {
        tx,
        ready: ready_rx,
        alive: mut alive_rx,
        thread: engine_thread,
    } = worker::spawn(engine, shared.clone(), excl_tx)?;

    // What the uplink and the heartbeat use; SIGHUP replaces it.
    let (live_tx, live_rx) = tokio::sync::watch::channel(Live {
        cfg: Arc::new(cfg.clone()),
        sink,
    });

    // Uplink: spool → collector, exponential backoff with jitter, never losing what is not acked.
    let stopping = Arc::new(tokio::sync::watch::channel(false).0);
    let uplink = uplink::spawn(
        spool.clone(),
        &shared,
        live_rx.clone(),
        stopping.subscribe(),
        tx.clone(),
    );

    // Heartbeat.
    let heartbeat = heartbeat::spawn(
        spool.clone(),
        shared.last_scan.clone(),
        live_rx.clone(),
        excl_rx,
    );

    // Manifests and change entries from the collector, every heartbeat period.
    let fetcher = fetch::spawn_poller(live_rx.clone(), tx.clone());

    // Watches go up before the first scan ends, so nothing written meanwhile is missed (its
    // events wait in the engine's queue until the scan is done).
    let mut watchers = watch::start(&cfg, tx.clone());
    let _ = ready_rx.await;
    // Setting up the watches and the first scan ran side by side; give back what both freed.
    release_free_memory();
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status_line(cfg.trees.len(), &spool)),
    ]);
    tracing::info!(host = %cfg.host, trees = cfg.trees.len(), "driftwatch agent ready");
    eprintln!("driftwatch agent ready: {} trees", cfg.trees.len());

    // Scheduled scans, signals, watchdog.
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut scan_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.interval, cfg.interval);
    let watchdog = sd_notify::watchdog_enabled();
    let mut dog = tokio::time::interval(
        watchdog
            .map_or(Duration::from_secs(3600), |d| d / 2)
            .max(Duration::from_millis(100)),
    );
    let mut cfg = cfg;
    loop {
        tokio::select! {
            _ = scan_tick.tick() => { let _ = tx.send(Command::Scan { tree: None, rehash: None }); }
            _ = dog.tick() => {
                if watchdog.is_some() {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog, sd_notify::NotifyState::Status(&status_line(cfg.trees.len(), &spool))]);
                }
            }
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match reload(&cfg, &live_tx) {
                    Ok(new) => {
                        // The new watches are up before the old ones go: a write made during the
                        // reload is seen by one of them (twice is harmless).
                        let old = std::mem::replace(&mut watchers, watch::start(&new, tx.clone()));
                        drop(old);
                        if new.interval != cfg.interval {
                            scan_tick = tokio::time::interval_at(tokio::time::Instant::now() + new.interval, new.interval);
                        }
                        let _ = tx.send(Command::Reload(Box::new(new.clone())));
                        tracing::info!(config = %cfg.origin.display(), trees = new.trees.len(), "config reloaded");
                        cfg = new;
                    }
                    Err(problems) => {
                        for p in problems {
                            tracing::error!(problem = %p, "config reload refused; keeping the running config");
                        }
                    }
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = &mut alive_rx => {
                tracing::error!("the engine thread stopped unexpectedly; exiting so the service manager restarts the agent");
                anyhow::bail!("engine thread stopped unexpectedly");
            }
        }
    }
    tracing::info!("stopping: finishing the work in flight");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    drop(watchers);
    let _ = tx.send(Command::Stop);
    let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
    // One last send of what the engine just spooled, bounded in time; the rest stays spooled.
    let _ = stopping.send(true);
    let _ = uplink.await;
    let Live { cfg, sink } = live_tx.borrow().clone();
    let left = tokio::time::timeout(
        Duration::from_secs(10),
        flush(&spool, &sink, &cfg, Vec::new()),
    )
    .await;
    if let Ok(Err(e)) = left {
        tracing::warn!(error = %e, "events left in the spool for the next start");
    }
    heartbeat.abort();
    fetcher.abort();
    if let Some((task, stop)) = server {
        stop.notify_one();
        let _ = task.await;
    }
    tracing::info!("driftwatch agent stopped");
    Ok(())
}

/// The first fetch from the collector, bounded in time: a collector that is down must not keep
/// the agent from starting (it works with what it fetched before).
pub async fn fetch_at_start(sink: &Sink, cfg: &AgentConfig) {
    if !cfg.has_collector() {
        return;
    }
    if cfg.release_keys.is_empty() && cfg.trees.iter().any(|t| t.manifest.is_none()) {
        tracing::warn!("no [trust] release_keys: manifests on the collector are not taken");
    }
    if cfg.approver_keys.is_empty() {
        tracing::info!("no [trust] approver_keys: change entries on the collector are not taken");
    }
    match tokio::time::timeout(Duration::from_secs(10), fetch::fetch(sink, cfg)).await {
        Ok((f, failed)) => {
            if f != fetch::Fetched::default() {
                tracing::info!(entries = f.changes, manifests = ?f.manifests, "fetched from the collector");
            }
            if !failed.is_empty() {
                tracing::warn!(error = %failed.join("; "), "not everything could be fetched from the collector; using what was fetched before");
            }
        }
        Err(_) => tracing::warn!(
            "the collector did not answer within 10 s; using what was fetched before"
        ),
    }
}

/// The settings the uplink and the heartbeat work with.
#[derive(Clone)]
struct Live {
    cfg: Arc<AgentConfig>,
    sink: Sink,
}

/// Reads the config again for SIGHUP and hands the uplink its new settings. Settings that need a
/// restart keep their running values (logged); a config with any problem changes nothing.
fn reload(
    running: &AgentConfig,
    live: &tokio::sync::watch::Sender<Live>,
) -> Result<AgentConfig, Vec<String>> {
    let mut new = AgentConfig::load(&running.origin)?;
    for setting in running.keep_restart_only(&mut new) {
        tracing::warn!(
            setting,
            "changed in the config file; takes effect at the next restart"
        );
    }
    let sink = match &new.uplink {
        // Same embedded store: keep it.
        Uplink::Embedded { .. } => live.borrow().sink.clone(),
        // Opened again even when unchanged: the token file may hold a rotated token.
        _ => open_sink(&new).map_err(|e| vec![format!("{}: {e:#}", new.origin.display())])?,
    };
    live.send_replace(Live {
        cfg: Arc::new(new.clone()),
        sink,
    });
    Ok(new)
}

/// The state dir lock: one agent (or `scan`) per state dir at a time.
pub fn lock_state_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "{}: another driftwatch agent or scan is using this state dir",
            path.display()
        );
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ChangeEvent;

    fn embedded(dir: &Path) -> (Sink, Arc<Service>) {
        let store = SqliteStore::open(&dir.join("collector.db"), jiff::tz::TimeZone::UTC)
            .expect("open store");
        let cfg = CollectorConfig::defaults_for("sqlite://collector.db");
        let svc = Arc::new(Service::new(Arc::new(store), Arc::new(cfg)));
        (Sink::Embedded(svc.clone()), svc)
    }

    fn batch(seq: u64) -> EventBatch {
        let now = crate::util::timefmt::format_timestamp(Timestamp::now());
        EventBatch {
            host: "web-01".into(),
            environment: "production".into(),
            events: vec![ChangeEvent {
                seq,
                tree: "shop".into(),
                path: "x.php".into(),
                path_bytes: None,
                change: "added".into(),
                status: "unauthorized".into(),
                observed_at: now.clone(),
                window_start: now,
                blake3: None,
                previous_blake3: None,
                size: None,
                resolves: None,
                detail: None,
            }],
            scans: Vec::new(),
        }
    }

    /// The embedded sink goes through the service: what it stores is counted for `/metrics`,
    /// and a malformed batch is refused with the 400 and reason a fleet collector answers.
    #[test]
    fn the_embedded_sink_validates_and_counts_like_a_collector() {
        use std::sync::atomic::Ordering::Relaxed;
        let tmp = tempfile::tempdir().expect("tempdir");
        let (sink, svc) = embedded(tmp.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");

        let r = rt
            .block_on(sink.send(batch(1)))
            .expect("a good batch is stored");
        assert_eq!((r.stored, r.acked_seq), (1, 1));
        assert_eq!(svc.metrics.batches.load(Relaxed), 1);
        assert_eq!(svc.metrics.events_stored.load(Relaxed), 1);

        let bad = batch(0);
        let want = crate::collector::service::ingest::validate_batch(&bad)
            .expect_err("seq 0 is malformed")
            .to_string();
        match rt.block_on(sink.send(bad)) {
            Err(ClientError::Status {
                status: 400,
                message,
                ..
            }) => assert_eq!(message, want),
            other => panic!("expected a 400 refusal, got {other:?}"),
        }
        assert_eq!(svc.metrics.batches.load(Relaxed), 1, "refused: not counted");

        let hb: Heartbeat = serde_json::from_str(r#"{"host": "web-01"}"#).expect("heartbeat");
        rt.block_on(sink.heartbeat(hb)).expect("heartbeat");
        assert_eq!(svc.metrics.heartbeats.load(Relaxed), 1);
    }
}
