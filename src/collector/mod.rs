//! The central server: API over HTTP(S), storage, KPI, audit.
//!
//! Layers, each depending only on those below it: [`http`] (routes, auth, status codes, the
//! dashboard) → [`service`] (validation, signature policy, re-classification, counters: what
//! every caller, HTTP or in-process, goes through) → `crate::store`. [`metrics`] renders the
//! service's counters and gauges; [`config`] is read by all of them. This module binds the
//! listener and serves.

pub mod alerts;
pub mod config;
pub mod http;
pub mod itsm;
pub mod metrics;
pub mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::store::{self, StoreError};
use config::{CollectorConfig, Tls};
use service::Service;

/// The collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// Storage failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// TLS material is unusable.
    #[error("tls: {0}")]
    Tls(String),
}

/// A collector bound to its address, ready to serve.
pub struct Collector {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    /// The shared state (the service, the rate limiter).
    pub state: Arc<http::AppState>,
}

impl Collector {
    /// Opens the store and binds the listen address.
    pub async fn bind(cfg: CollectorConfig) -> Result<Collector, CollectorError> {
        let store = store::open(&cfg.storage, cfg.timezone.clone())?;
        Self::bind_with_service(Arc::new(Service::new(Arc::from(store), Arc::new(cfg)))).await
    }

    /// Binds in front of an existing service (the agent's embedded mode shares its own, so
    /// what it ingests in process is counted in this collector's `/metrics`).
    pub async fn bind_with_service(svc: Arc<Service>) -> Result<Collector, CollectorError> {
        let cfg = &svc.cfg;
        let tls = cfg.tls.as_ref().map(tls_acceptor).transpose()?;
        for w in cfg.warnings() {
            tracing::warn!("{w}");
            eprintln!("driftwatch: warning: {w}");
        }
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| CollectorError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        if let Ok(addr) = listener.local_addr() {
            let scheme = if tls.is_some() { "https" } else { "http" };
            svc.alerts.set_listening(&format!("{scheme}://{addr}/"));
        }
        let state = http::AppState::new(svc.clone());
        let app = http::router(state.clone());
        Ok(Collector {
            listener,
            tls,
            app,
            state,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound socket has an address")
    }

    /// The base URL clients use.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr())
    }

    /// Serves until `shutdown` completes, then lets requests in flight finish (up to 30 s).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let sealer = tokio::spawn(seal_finished_days(self.state.svc.clone()));
        // Alerting: the outbox's delivery loop and the watchers (only with `[[alert]]` tables;
        // without them nothing is ever enqueued).
        let svc = &self.state.svc;
        let alerting = if svc.alerts.is_empty() {
            Vec::new()
        } else {
            vec![
                tokio::spawn(alerts::outbox::deliver(svc.clone())),
                tokio::spawn(alerts::outbox::watch_silence(svc.clone())),
                tokio::spawn(alerts::outbox::verify_chain(
                    svc.clone(),
                    svc.cfg.audit_every,
                )),
                tokio::spawn(alerts::outbox::watch_kpi(svc.clone())),
            ]
        };
        let pollers = itsm::poll::spawn(self.state.svc.clone());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Slow-loris guard: a client must send its headers promptly.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let svc = TowerToHyperService::new(self.app.clone());
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let result = match tls {
                    None => {
                        watcher
                            .watch(
                                builder
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .into_owned(),
                            )
                            .await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => {
                                watcher
                                    .watch(
                                        builder.serve_connection(TokioIo::new(s), svc).into_owned(),
                                    )
                                    .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        sealer.abort();
        for t in alerting {
            t.abort();
        }
        for p in pollers {
            p.abort();
        }
        if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("requests still running after 30 s; closing them");
        }
    }
}

/// Seals each finished day into the chained KPI rows soon after it ends (every 10 minutes it
/// asks for today's facts, which seals what came before), so no reader ever waits for a backlog.
async fn seal_finished_days(svc: Arc<Service>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let svc = svc.clone();
        let done = tokio::task::spawn_blocking(move || svc.seal_finished_days()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "sealing finished days failed; will retry");
        }
    }
}

fn tls_acceptor(t: &Tls) -> Result<tokio_rustls::TlsAcceptor, CollectorError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| CollectorError::Tls(format!("{}: {e}", t.cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| CollectorError::Tls(format!("{}: {e}", t.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CollectorError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| CollectorError::Tls(format!("{}: {e}", t.cert.display())))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Resolves on SIGTERM or SIGINT. SIGHUP is answered with a log line instead of the default
/// (which would kill the process): the collector reads its config once, at start.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        // Without signal handlers we can still be stopped by SIGKILL; never return early.
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => tracing::warn!("SIGHUP ignored: the collector reads its config at start; restart it to apply changes"),
        }
    }
}
