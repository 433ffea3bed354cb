//! Where the history commands read from: a collector over HTTP, or its store directly through
//! the collector's service layer (so `--db` answers exactly what the API would).
//!
//! Invariant: every method gives the same typed answer in both modes; remote answers are
//! decoded into the service's own types, never picked apart by hand.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use jiff::civil::Date;

use super::util::runtime;
use crate::client::{self, Client, ClientError};
use crate::collector::config::{self, CollectorConfig};
use crate::collector::service::changes::ChangeStored;
use crate::collector::service::kpi::KpiQuery;
use crate::collector::service::{KpiRequest, Service, SignedDoc};
use crate::kpi::KpiRow;
use crate::store::{self, ChainReport, EventQuery, StoredChange, StoredEvent};

/// Where history lives: a collector over HTTP, or its store directly.
#[derive(Debug, Args, Clone, Default)]
pub struct SourceArgs {
    /// Collector base URL (with --token-file).
    #[arg(long, value_name = "URL", conflicts_with = "db")]
    pub collector: Option<String>,
    /// File holding a reader (or admin) token.
    #[arg(long, value_name = "FILE", requires = "collector")]
    pub token_file: Option<PathBuf>,
    /// The store itself: a SQLite file path or a storage URL.
    #[arg(long, value_name = "PATH|URL")]
    pub db: Option<String>,
    /// Collector config naming the store (default /etc/driftwatch/collector.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl SourceArgs {
    /// Whether any source was named (commands with a local alternative, like `--dir`, need one).
    pub fn is_given(&self) -> bool {
        self.collector.is_some() || self.db.is_some() || self.config.is_some()
    }
}

/// An open source of history.
pub enum Source {
    /// A collector's API.
    Remote(Client),
    /// A store, read and written through the service layer.
    Local(Service),
}

/// Loads a collector config, all problems in one line.
pub fn load_collector_config(path: &Path) -> anyhow::Result<CollectorConfig> {
    CollectorConfig::load(path).map_err(|problems| anyhow!("{}", problems.join("; ")))
}

/// The collector's client, when `--collector` was given.
pub fn remote(src: &SourceArgs) -> anyhow::Result<Option<Client>> {
    let Some(url) = &src.collector else {
        return Ok(None);
    };
    let token_file = src
        .token_file
        .as_ref()
        .ok_or_else(|| anyhow!("--collector needs --token-file FILE"))?;
    Ok(Some(Client::new(url, client::read_token(token_file)?)?))
}

/// The service over the store `--db` names, or the one of `--config` (default config path).
pub fn local(src: &SourceArgs) -> anyhow::Result<Service> {
    let cfg = match &src.db {
        Some(db) => {
            // Reading commands must not create an empty store from a typo and call it compliant.
            let path = db.strip_prefix("sqlite://").unwrap_or(db);
            let is_sqlite = !db.contains("://") || db.starts_with("sqlite://");
            if is_sqlite && !Path::new(path).is_file() {
                bail!("{path}: no such database (a collector or embedded agent creates it)");
            }
            let url = if db.contains("://") {
                db.clone()
            } else {
                format!("sqlite://{db}")
            };
            CollectorConfig::defaults_for(&url)
        }
        None => {
            let path = src
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
            load_collector_config(&path)?
        }
    };
    let store = store::open(&cfg.storage, cfg.timezone.clone())?;
    Ok(Service::new(Arc::from(store), Arc::new(cfg)))
}

/// `?k=v&...` of the parameters that are set.
fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<String>)>) -> String {
    let q: Vec<String> = pairs
        .into_iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", client::encode(&v?))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn get<T: serde::de::DeserializeOwned>(c: &Client, path: &str) -> anyhow::Result<T> {
    Ok(runtime()?.block_on(c.get_json(path))?)
}

impl Source {
    /// The collector when `--collector` is given, else the store.
    pub fn open(src: &SourceArgs) -> anyhow::Result<Source> {
        Ok(match remote(src)? {
            Some(c) => Source::Remote(c),
            None => Source::Local(local(src)?),
        })
    }

    /// The newest `limit` alerts of the outbox, with their delivery state.
    pub fn alerts(&self, limit: u64) -> anyhow::Result<Vec<crate::store::outbox::OutboxRow>> {
        match self {
            Source::Remote(c) => get(c, &format!("/api/v1/alerts?limit={limit}")),
            Source::Local(s) => Ok(s.alert_list(limit)?),
        }
    }

    /// Events matching `q` (its `limit` is not sent to a collector).
    pub fn events(&self, q: &EventQuery) -> anyhow::Result<Vec<StoredEvent>> {
        match self {
            Source::Remote(c) => {
                let qs = query_string([
                    ("from", q.from.map(|d| d.to_string())),
                    ("to", q.to.map(|d| d.to_string())),
                    ("host", q.host.clone()),
                    ("status", q.status.clone()),
                    ("open", q.open_only.then(|| "true".to_string())),
                ]);
                get(c, &format!("/api/v1/events{qs}"))
            }
            Source::Local(svc) => Ok(svc.events(q)?),
        }
    }

    /// The KPI rows a query asks for; a bad parameter is named as its flag.
    pub fn kpi(&self, q: &KpiQuery) -> anyhow::Result<Vec<KpiRow>> {
        match self {
            Source::Remote(c) => {
                let qs = query_string([
                    ("by", q.by.clone()),
                    ("from", q.from.clone()),
                    ("to", q.to.clone()),
                    ("host", q.host.clone()),
                    ("group", q.group.clone()),
                ]);
                get(c, &format!("/api/v1/kpi{qs}"))
                    .context("collector returned an unexpected KPI table")
            }
            Source::Local(svc) => {
                let req = KpiRequest::from_query(q, svc.today()).map_err(|m| anyhow!("--{m}"))?;
                Ok(svc.kpi(&req)?)
            }
        }
    }

    /// Today on the collector's KPI calendar.
    pub fn today(&self) -> anyhow::Result<Date> {
        match self {
            Source::Remote(c) => {
                // The last row of the default fleet table is the collector's today.
                let rows: Vec<KpiRow> = get(c, "/api/v1/kpi?by=day&group=fleet")?;
                let last = rows.last().map(|r| r.period.clone()).unwrap_or_default();
                last.parse()
                    .map_err(|e| anyhow!("collector returned no usable KPI day {last:?} ({e})"))
            }
            Source::Local(svc) => Ok(svc.today()),
        }
    }

    /// Latest version of every change entry.
    pub fn changes(&self) -> anyhow::Result<Vec<StoredChange>> {
        match self {
            Source::Remote(c) => get(c, "/api/v1/changes"),
            Source::Local(svc) => Ok(svc.changes()?),
        }
    }

    /// Registers a change entry, or (with `approve`) a new version of an existing one.
    pub fn register_change(
        &self,
        id: &str,
        doc: &SignedDoc,
        approve: bool,
    ) -> anyhow::Result<ChangeStored> {
        match self {
            Source::Remote(c) => {
                let route = if approve {
                    format!("/api/v1/changes/{}/approve", client::encode(id))
                } else {
                    "/api/v1/changes".into()
                };
                Ok(runtime()?.block_on(c.post_json(&route, doc))?)
            }
            Source::Local(svc) => {
                let doc = SignedDoc {
                    manifest: None,
                    toml: doc.toml.clone(),
                    minisig: doc.minisig.clone(),
                };
                let now = jiff::Timestamp::now();
                Ok(if approve {
                    svc.approve_change(id, doc, now)?
                } else {
                    svc.register_change(doc, None, now)?
                })
            }
        }
    }

    /// Walks the chain; `at` asks for the hash of that record too. A broken chain is a report
    /// with `first_bad`, not an error, in both modes.
    pub fn verify_chain(&self, at: Option<u64>) -> anyhow::Result<ChainReport> {
        match self {
            Source::Remote(c) => {
                #[derive(serde::Deserialize)]
                struct Answer {
                    report: ChainReport,
                }
                let q = at.map(|n| format!("?at={n}")).unwrap_or_default();
                let path = format!("/api/v1/audit/verify{q}");
                match runtime()?.block_on(c.get_json::<Answer>(&path)) {
                    Ok(a) => Ok(a.report),
                    // A broken history is answered 409 with the same report.
                    Err(ClientError::Status {
                        status: 409,
                        message,
                        ..
                    }) => Ok(serde_json::from_str::<Answer>(&message)
                        .map(|a| a.report)
                        .unwrap_or(ChainReport {
                            records: 0,
                            head: String::new(),
                            first_bad: Some(message),
                            hash_at: None,
                        })),
                    Err(e) => Err(e.into()),
                }
            }
            Source::Local(svc) => Ok(svc.verify_chain(at)?),
        }
    }

    /// The key `audit seal` signs with when none is given: the config's `audit.key`.
    pub fn audit_key(&self) -> Option<PathBuf> {
        match self {
            Source::Remote(_) => None,
            Source::Local(svc) => svc.cfg.audit_key.clone(),
        }
    }
}
