//! Commands that talk to a collector or its store: collector, token, events, kpi, changes, audit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use jiff::Timestamp;
use serde_json::json;

use crate::changelog::{self, ChangeEntry, Policy};
use crate::client::{self, Client};
use crate::collector::config::{self, CollectorConfig};
use crate::collector::service::KpiRequest;
use crate::collector::{self, Collector};
use crate::exit;
use crate::kpi::{self, KpiRow};
use crate::sign;
use crate::store::{self, EventQuery, Role, Store, StoredEvent};
use crate::timefmt;

/// Table, JSON or CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    /// Aligned columns for people.
    Text,
    /// JSON for scripts.
    Json,
    /// CSV for spreadsheets.
    Csv,
}

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

/// Logs: human-readable by default, JSON with `--log-format json`; level from DRIFTWATCH_LOG.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRIFTWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Loads a collector config, all problems in one line.
pub fn load_collector_config(path: &Path) -> anyhow::Result<CollectorConfig> {
    CollectorConfig::load(path).map_err(|problems| anyhow!("{}", problems.join("; ")))
}

/// `driftwatch collector`.
pub fn run_collector(config_path: Option<PathBuf>, log_json: bool) -> anyhow::Result<u8> {
    init_logging(log_json);
    let path = config_path.unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let cfg = load_collector_config(&path)?;
    runtime()?.block_on(async move {
        let c = Collector::bind(cfg).await?;
        tracing::info!(url = %c.url(), "driftwatch collector listening");
        eprintln!("driftwatch collector listening on {}", c.url());
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        c.serve(collector::shutdown_signal()).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("driftwatch collector stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(exit::CLEAN)
}

/// A local store plus the settings it is read with.
struct Local {
    store: Arc<dyn Store>,
    target: f64,
    tz: jiff::tz::TimeZone,
    cfg: Option<CollectorConfig>,
}

fn open_local(src: &SourceArgs) -> anyhow::Result<Local> {
    if let Some(db) = &src.db {
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
        let store = store::open(&url, jiff::tz::TimeZone::UTC)?;
        return Ok(Local {
            store: Arc::from(store),
            target: 0.97,
            tz: jiff::tz::TimeZone::UTC,
            cfg: None,
        });
    }
    let path = src
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let cfg = load_collector_config(&path)?;
    let store = store::open(&cfg.storage, cfg.timezone.clone())?;
    Ok(Local {
        store: Arc::from(store),
        target: cfg.target,
        tz: cfg.timezone.clone(),
        cfg: Some(cfg),
    })
}

/// `driftwatch manifest push`: the manifest and its signature to `PUT /api/v1/manifests/{tree}`.
pub fn manifest_push(args: &super::PushArgs) -> anyhow::Result<u8> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("{}", args.file.display()))?;
    // Parsed here too, for the tree name and so a broken file never leaves the machine.
    let m = crate::manifest::Manifest::parse(&bytes, &args.file)?;
    let text =
        String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", args.file.display()))?;
    let sig_path = sign::sig_path(&args.file);
    let minisig = match std::fs::read_to_string(&sig_path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!("{}: {e}", sig_path.display())),
    };
    let c = Client::new(&args.collector, client::read_token(&args.token_file)?)?;
    let route = format!("/api/v1/manifests/{}", client::encode(&m.tree));
    let _: serde_json::Value =
        runtime()?.block_on(c.put_json(&route, &json!({"manifest": text, "minisig": minisig})))?;
    eprintln!(
        "stored release {} of tree {} on the collector ({})",
        m.release,
        m.tree,
        if minisig.is_some() {
            "signed"
        } else {
            "unsigned"
        }
    );
    Ok(exit::CLEAN)
}

fn remote(src: &SourceArgs) -> anyhow::Result<Option<Client>> {
    let Some(url) = &src.collector else {
        return Ok(None);
    };
    let token_file = src
        .token_file
        .as_ref()
        .ok_or_else(|| anyhow!("--collector needs --token-file FILE"))?;
    Ok(Some(Client::new(url, client::read_token(token_file)?)?))
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints it once, alone on stdout.
    Create {
        /// Collector config.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Or the store itself (e.g. an agent's embedded STATE_DIR/collector.db).
        #[arg(long, value_name = "PATH|URL", conflicts_with = "config")]
        db: Option<String>,
        /// Role.
        #[arg(long, value_enum)]
        role: Role,
        /// Host an agent token is bound to (required for agents).
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Free-text label.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List tokens (never their secrets).
    List {
        /// Collector config.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Or the store itself (e.g. an agent's embedded STATE_DIR/collector.db).
        #[arg(long, value_name = "PATH|URL", conflicts_with = "config")]
        db: Option<String>,
    },
    /// Revoke a token by id; a host whose last agent token is revoked is no longer expected.
    Revoke {
        /// Collector config.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Or the store itself (e.g. an agent's embedded STATE_DIR/collector.db).
        #[arg(long, value_name = "PATH|URL", conflicts_with = "config")]
        db: Option<String>,
        /// Token id (from `token list`).
        id: i64,
    },
}

/// `driftwatch token ...`.
pub fn run_token(cmd: TokenCommand) -> anyhow::Result<u8> {
    let cfg_src = |config: Option<PathBuf>, db: Option<String>| SourceArgs {
        config,
        db,
        ..SourceArgs::default()
    };
    match cmd {
        TokenCommand::Create {
            config,
            db,
            role,
            host,
            label,
        } => {
            if role == Role::Agent && host.as_deref().is_none_or(|h| h.trim().is_empty()) {
                bail!("--host: an agent token must be bound to a host");
            }
            if role != Role::Agent && host.is_some() {
                bail!("--host: only agent tokens are bound to a host");
            }
            let local = open_local(&cfg_src(config, db))?;
            let (token, secret) =
                local
                    .store
                    .create_token(role, host.as_deref(), &label, Timestamp::now())?;
            eprintln!(
                "created {} token {} (shown once; store it in a file readable only by its user)",
                token.role.as_str(),
                token.id
            );
            println!("{secret}");
        }
        TokenCommand::List { config, db } => {
            let local = open_local(&cfg_src(config, db))?;
            let mut out = String::from(
                "ID  ROLE    HOST                 CREATED               REVOKED               LABEL\n",
            );
            for t in local.store.list_tokens()? {
                out.push_str(&format!(
                    "{:<3} {:<7} {:<20} {:<21} {:<21} {}\n",
                    t.id,
                    t.role.as_str(),
                    t.host.as_deref().unwrap_or("-"),
                    t.created_at,
                    t.revoked_at.as_deref().unwrap_or("-"),
                    t.label
                ));
            }
            print!("{out}");
        }
        TokenCommand::Revoke { config, db, id } => {
            let local = open_local(&cfg_src(config, db))?;
            let t = local.store.revoke_token(id, Timestamp::now())?;
            eprintln!(
                "revoked {} token {}{}",
                t.role.as_str(),
                t.id,
                t.host.map(|h| format!(" for host {h}")).unwrap_or_default()
            );
        }
    }
    Ok(exit::CLEAN)
}

/// Arguments of `events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// First day (YYYY-MM-DD, inclusive).
    #[arg(long)]
    pub from: Option<String>,
    /// Last day (inclusive).
    #[arg(long)]
    pub to: Option<String>,
    /// Only this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only this status (`unauthorized`, `retroactive`, `change:CHG-1`, ...).
    #[arg(long)]
    pub status: Option<String>,
    /// Only unauthorized changes still open.
    #[arg(long)]
    pub open: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TableFormat::Text)]
    pub format: TableFormat,
    /// Where to read from.
    #[command(flatten)]
    pub source: SourceArgs,
}

fn parse_day(name: &str, v: &Option<String>) -> anyhow::Result<Option<jiff::civil::Date>> {
    v.as_deref()
        .map(|s| {
            s.parse()
                .map_err(|e| anyhow!("--{name}: {s:?} is not a date like 2026-11-21 ({e})"))
        })
        .transpose()
}

/// `driftwatch events`.
pub fn run_events(a: EventsArgs) -> anyhow::Result<u8> {
    let query = EventQuery {
        from: parse_day("from", &a.from)?,
        to: parse_day("to", &a.to)?,
        host: a.host.clone(),
        status: a.status.clone(),
        open_only: a.open,
        limit: None,
    };
    let events: Vec<StoredEvent> = match remote(&a.source)? {
        Some(c) => {
            let mut q = Vec::new();
            for (k, v) in [
                ("from", &a.from),
                ("to", &a.to),
                ("host", &a.host),
                ("status", &a.status),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", client::encode(v)));
                }
            }
            if a.open {
                q.push("open=true".into());
            }
            let path = format!("/api/v1/events?{}", q.join("&"));
            events_from_json(runtime()?.block_on(c.get_json(&path))?)?
        }
        None => open_local(&a.source)?.store.events(&query)?,
    };
    let out = match a.format {
        TableFormat::Json => serde_json::to_string_pretty(&events)? + "\n",
        TableFormat::Csv => crate::report::events_csv(&events),
        TableFormat::Text => events_table(&events),
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(exit::CLEAN)
}

fn events_from_json(v: serde_json::Value) -> anyhow::Result<Vec<StoredEvent>> {
    let arr = v
        .as_array()
        .ok_or_else(|| anyhow!("collector returned no event list"))?;
    let s = |e: &serde_json::Value, k: &str| {
        e.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string()
    };
    let o = |e: &serde_json::Value, k: &str| e.get(k).and_then(|x| x.as_str()).map(String::from);
    Ok(arr
        .iter()
        .map(|e| StoredEvent {
            id: e.get("id").and_then(|x| x.as_i64()).unwrap_or(0),
            host: s(e, "host"),
            seq: e.get("seq").and_then(|x| x.as_u64()).unwrap_or(0),
            environment: s(e, "environment"),
            tree: s(e, "tree"),
            path: s(e, "path"),
            path_bytes: o(e, "path_bytes"),
            change: s(e, "change"),
            status: s(e, "status"),
            original_status: s(e, "original_status"),
            open: e.get("open").and_then(|x| x.as_bool()).unwrap_or(false),
            observed_at: s(e, "observed_at"),
            window_start: s(e, "window_start"),
            received_at: s(e, "received_at"),
            blake3: o(e, "blake3"),
            previous_blake3: o(e, "previous_blake3"),
            size: e.get("size").and_then(|x| x.as_u64()),
        })
        .collect())
}

fn events_table(events: &[StoredEvent]) -> String {
    let mut out = format!(
        "{:<20}  {:<16} {:<10} {:<24} {:<12} {:<5} PATH\n",
        "RECEIVED", "HOST", "TREE", "STATUS", "CHANGE", "OPEN"
    );
    for e in events {
        let status = if e.status != e.original_status {
            format!("{} (was {})", e.status, e.original_status)
        } else {
            e.status.clone()
        };
        out.push_str(&format!(
            "{:<20}  {:<16} {:<10} {:<24} {:<12} {:<5} {}\n",
            e.received_at,
            e.host,
            e.tree,
            status,
            e.change,
            if e.open { "yes" } else { "" },
            e.path.escape_debug()
        ));
    }
    out.push_str(&format!("{} events\n", events.len()));
    out
}

/// Arguments of `kpi`.
#[derive(Debug, Args)]
pub struct KpiArgs {
    /// First day (default: 29 days before --to).
    #[arg(long)]
    pub from: Option<String>,
    /// Last day (default: today).
    #[arg(long)]
    pub to: Option<String>,
    /// Period.
    #[arg(long, default_value = "day", value_parser = ["day", "week", "month"])]
    pub by: String,
    /// Only this host (implies per-host rows).
    #[arg(long)]
    pub host: Option<String>,
    /// Rows: fleet only, plus environments, plus hosts.
    #[arg(long, value_parser = ["fleet", "environment", "host"])]
    pub group: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TableFormat::Text)]
    pub format: TableFormat,
    /// Where to read from.
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `driftwatch kpi`: exit 0 when every row meets the target, 1 when one misses.
pub fn run_kpi(a: KpiArgs) -> anyhow::Result<u8> {
    let rows: Vec<KpiRow> = match remote(&a.source)? {
        Some(c) => {
            let mut q = vec![format!("by={}", a.by)];
            for (k, v) in [
                ("from", &a.from),
                ("to", &a.to),
                ("host", &a.host),
                ("group", &a.group),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", client::encode(v)));
                }
            }
            // Rendered here from the JSON rows, so every format gets the same exit code.
            let path = format!("/api/v1/kpi?{}", q.join("&"));
            let v: serde_json::Value = runtime()?.block_on(c.get_json(&path))?;
            serde_json::from_value(v).context("collector returned an unexpected KPI table")?
        }
        None => {
            let local = open_local(&a.source)?;
            let today = Timestamp::now().to_zoned(local.tz.clone()).date();
            let req = KpiRequest::parse(
                a.from.as_deref(),
                a.to.as_deref(),
                Some(&a.by),
                a.group.as_deref(),
                a.host.clone(),
                today,
            )
            .map_err(|m| anyhow!("--{m}"))?;
            let days =
                local
                    .store
                    .host_days(req.from, req.to, req.host.as_deref(), Timestamp::now())?;
            kpi::compute(&days, req.period, &req.groupings, local.target)
        }
    };
    let out = match a.format {
        TableFormat::Json => serde_json::to_string_pretty(&rows)? + "\n",
        TableFormat::Csv => kpi::to_csv(&rows),
        TableFormat::Text => kpi::render_table(&rows),
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(if rows.iter().all(|r| r.met) {
        exit::CLEAN
    } else {
        exit::DRIFT
    })
}

/// `changes` subcommands.
#[derive(Debug, Subcommand)]
pub enum ChangesCommand {
    /// Register a change entry: from a file (its .minisig travels with it) or from flags.
    Add(ChangesAddArgs),
    /// List change entries.
    List {
        /// Local change directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TableFormat::Text)]
        format: TableFormat,
        /// Or a collector / store.
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Approve an entry (also after the fact): sets approved_by/approved_at and re-signs it.
    Approve {
        /// Ticket id.
        id: String,
        /// Approver name.
        #[arg(long = "by", value_name = "NAME")]
        by: String,
        /// Approval time (default now).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Approver's secret key: the approved entry is signed with it.
        #[arg(long, value_name = "KEY")]
        key: Option<PathBuf>,
        /// Local change directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Or a collector (admin token).
        #[command(flatten)]
        source: SourceArgs,
    },
}

/// Arguments of `changes add`.
#[derive(Debug, Args)]
pub struct ChangesAddArgs {
    /// An entry file (ID.toml); its ID.toml.minisig is taken along.
    #[arg(long, value_name = "ENTRY.toml", conflicts_with_all = ["id"])]
    pub file: Option<PathBuf>,
    /// Ticket id.
    #[arg(long)]
    pub id: Option<String>,
    /// Host globs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Tree globs (comma-separated; default `*`).
    #[arg(long, value_delimiter = ',')]
    pub trees: Vec<String>,
    /// Path globs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<String>,
    /// Window start (RFC 3339).
    #[arg(long = "from", value_name = "TIME")]
    pub start: Option<String>,
    /// Window end (RFC 3339).
    #[arg(long = "to", value_name = "TIME")]
    pub end: Option<String>,
    /// What and why.
    #[arg(long)]
    pub reason: Option<String>,
    /// Who asked for it (default $USER).
    #[arg(long)]
    pub requested_by: Option<String>,
    /// Who approved it (with --approved-at, or now).
    #[arg(long)]
    pub approved_by: Option<String>,
    /// When it was approved.
    #[arg(long)]
    pub approved_at: Option<String>,
    /// Sign the entry with this secret key.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Local change directory to write into.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Or a collector (admin token).
    #[command(flatten)]
    pub source: SourceArgs,
}

fn entry_from_flags(a: &ChangesAddArgs) -> anyhow::Result<String> {
    let need = |name: &str, v: &Option<String>| {
        v.clone()
            .ok_or_else(|| anyhow!("--{name} is required (or use --file)"))
    };
    let mut t = toml::Table::new();
    t.insert("id".into(), need("id", &a.id)?.into());
    t.insert("summary".into(), need("reason", &a.reason)?.into());
    let requested = a
        .requested_by
        .clone()
        .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
    t.insert("requested_by".into(), requested.into());
    if let Some(by) = &a.approved_by {
        t.insert("approved_by".into(), by.clone().into());
        let at = a
            .approved_at
            .clone()
            .unwrap_or_else(|| timefmt::format_timestamp(Timestamp::now()));
        t.insert("approved_at".into(), at.into());
    }
    let list =
        |v: &[String]| toml::Value::Array(v.iter().map(|s| toml::Value::from(s.clone())).collect());
    t.insert("hosts".into(), list(&a.hosts));
    let trees = if a.trees.is_empty() {
        vec!["*".to_string()]
    } else {
        a.trees.clone()
    };
    t.insert("trees".into(), list(&trees));
    t.insert("paths".into(), list(&a.paths));
    t.insert("start".into(), need("from", &a.start)?.into());
    t.insert("end".into(), need("to", &a.end)?.into());
    Ok(toml::to_string(&t)?)
}

/// `driftwatch changes ...`.
pub fn run_changes(cmd: ChangesCommand) -> anyhow::Result<u8> {
    match cmd {
        ChangesCommand::Add(a) => {
            let (text, mut sig) = match &a.file {
                Some(f) => {
                    let text =
                        std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
                    let sig = std::fs::read_to_string(sign::sig_path(f)).ok();
                    (text, sig)
                }
                None => (entry_from_flags(&a)?, None),
            };
            let origin = a
                .file
                .clone()
                .unwrap_or_else(|| PathBuf::from("entry.toml"));
            let entry = ChangeEntry::parse(&text, &origin)?;
            if let Some(key) = &a.sign {
                let sk = sign::load_secret_key(key)?;
                sig = Some(
                    sign::sign_bytes(text.as_bytes(), &format!("{}.toml", entry.id), &sk)
                        .map_err(|m| anyhow!("{}: {m}", key.display()))?,
                );
            }
            publish(&entry.id, &text, sig, a.dir.as_deref(), &a.source, false)?;
            Ok(exit::CLEAN)
        }
        ChangesCommand::List {
            dir,
            format,
            source,
        } => list_changes(dir.as_deref(), format, &source),
        ChangesCommand::Approve {
            id,
            by,
            at,
            key,
            dir,
            source,
        } => {
            let text = match &dir {
                Some(d) => std::fs::read_to_string(d.join(format!("{id}.toml")))
                    .with_context(|| d.join(format!("{id}.toml")).display().to_string())?,
                None => fetch_change(&id, &source)?,
            };
            let mut t: toml::Table =
                toml::from_str(&text).with_context(|| format!("change {id}"))?;
            let at = at.unwrap_or_else(|| timefmt::format_timestamp(Timestamp::now()));
            timefmt::parse_timestamp(&at).map_err(|m| anyhow!("--at: {m}"))?;
            t.insert("approved_by".into(), by.into());
            t.insert("approved_at".into(), at.into());
            let new_text = toml::to_string(&t)?;
            ChangeEntry::parse(&new_text, Path::new(&format!("{id}.toml")))?;
            let sig = match &key {
                Some(k) => {
                    let sk = sign::load_secret_key(k)?;
                    Some(
                        sign::sign_bytes(new_text.as_bytes(), &format!("{id}.toml"), &sk)
                            .map_err(|m| anyhow!("{}: {m}", k.display()))?,
                    )
                }
                None => None,
            };
            publish(&id, &new_text, sig, dir.as_deref(), &source, true)?;
            Ok(exit::CLEAN)
        }
    }
}

fn publish(
    id: &str,
    text: &str,
    sig: Option<String>,
    dir: Option<&Path>,
    source: &SourceArgs,
    approve: bool,
) -> anyhow::Result<()> {
    if let Some(dir) = dir {
        let path = dir.join(format!("{id}.toml"));
        super::write_atomic(&path, text.as_bytes())?;
        match &sig {
            Some(s) => super::write_atomic(&sign::sig_path(&path), s.as_bytes())?,
            None => {
                // A stale signature of the previous text would now fail: remove it.
                let _ = std::fs::remove_file(sign::sig_path(&path));
            }
        }
        eprintln!(
            "wrote {}{}",
            path.display(),
            if sig.is_some() {
                " (signed)"
            } else {
                " (unsigned)"
            }
        );
        return Ok(());
    }
    let c = remote(source)?
        .ok_or_else(|| anyhow!("give --dir DIR or --collector URL --token-file FILE"))?;
    let route = if approve {
        format!("/api/v1/changes/{}/approve", client::encode(id))
    } else {
        "/api/v1/changes".into()
    };
    let v: serde_json::Value =
        runtime()?.block_on(c.post_json(&route, &json!({"toml": text, "minisig": sig})))?;
    eprintln!(
        "stored {id} on the collector; {} open event(s) re-classified",
        v.get("reclassified").and_then(|x| x.as_u64()).unwrap_or(0)
    );
    Ok(())
}

fn fetch_change(id: &str, source: &SourceArgs) -> anyhow::Result<String> {
    let c = remote(source)?
        .ok_or_else(|| anyhow!("give --dir DIR or --collector URL --token-file FILE"))?;
    let list: Vec<serde_json::Value> = runtime()?.block_on(c.get_json("/api/v1/changes"))?;
    list.iter()
        .find(|v| v.get("id").and_then(|x| x.as_str()) == Some(id))
        .and_then(|v| v.get("toml").and_then(|t| t.as_str()).map(String::from))
        .ok_or_else(|| anyhow!("change {id:?} not found on the collector"))
}

fn list_changes(
    dir: Option<&Path>,
    format: TableFormat,
    source: &SourceArgs,
) -> anyhow::Result<u8> {
    let mut entries: Vec<(ChangeEntry, String)> = Vec::new();
    if let Some(d) = dir {
        let log = changelog::load_dir(
            d,
            &Policy {
                allow_self_approval: true,
                ..Policy::default()
            },
        )?;
        for e in log.entries {
            entries.push((e, "local".into()));
        }
    } else {
        let c = remote(source)?
            .ok_or_else(|| anyhow!("give --dir DIR or --collector URL --token-file FILE"))?;
        let list: Vec<serde_json::Value> = runtime()?.block_on(c.get_json("/api/v1/changes"))?;
        for v in list {
            let text = v.get("toml").and_then(|t| t.as_str()).unwrap_or("");
            let id = v.get("id").and_then(|t| t.as_str()).unwrap_or("?");
            let e = ChangeEntry::parse(text, Path::new(&format!("{id}.toml")))?;
            let signed = if v.get("minisig").is_some_and(|s| !s.is_null()) {
                "signed"
            } else {
                "unsigned"
            };
            entries.push((e, signed.into()));
        }
    }
    let rows: Vec<serde_json::Value> = entries
        .iter()
        .map(|(e, origin)| {
            json!({
                "id": e.id, "summary": e.summary, "requested_by": e.requested_by,
                "approved_by": e.approval.as_ref().map(|(b, _)| b.clone()),
                "approved_at": e.approval.as_ref().map(|(_, t)| timefmt::format_timestamp(*t)),
                "start": timefmt::format_timestamp(e.start), "end": timefmt::format_timestamp(e.end),
                "hosts": e.raw.hosts, "trees": e.raw.trees, "paths": e.raw.paths, "source": origin,
            })
        })
        .collect();
    match format {
        TableFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        TableFormat::Csv => {
            println!("id,summary,requested_by,approved_by,approved_at,start,end,hosts,trees,paths");
            for (e, _) in &entries {
                let f = [
                    e.id.clone(),
                    e.summary.clone(),
                    e.requested_by.clone(),
                    e.approval
                        .as_ref()
                        .map(|(b, _)| b.clone())
                        .unwrap_or_default(),
                    e.approval
                        .as_ref()
                        .map(|(_, t)| timefmt::format_timestamp(*t))
                        .unwrap_or_default(),
                    timefmt::format_timestamp(e.start),
                    timefmt::format_timestamp(e.end),
                    e.raw.hosts.join(" "),
                    e.raw.trees.join(" "),
                    e.raw.paths.join(" "),
                ];
                let line: Vec<String> = f.iter().map(|x| kpi::csv_field(x).into_owned()).collect();
                println!("{}", line.join(","));
            }
        }
        TableFormat::Text => {
            for (e, origin) in &entries {
                let approval = match &e.approval {
                    Some((by, at)) => {
                        format!("approved by {by} at {}", timefmt::format_timestamp(*at))
                    }
                    None => "NOT APPROVED".into(),
                };
                println!(
                    "{}  {}  [{approval}; requested by {}; {} → {}; hosts {}; paths {}; {origin}]",
                    e.id,
                    e.summary,
                    e.requested_by,
                    timefmt::format_timestamp(e.start),
                    timefmt::format_timestamp(e.end),
                    e.raw.hosts.join(","),
                    e.raw.paths.join(",")
                );
            }
        }
    }
    Ok(exit::CLEAN)
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the stored history; exit 0 intact, 1 broken (naming the first bad record).
    Verify {
        /// A signed checkpoint from `audit seal`: the history must still extend it.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// Public key the checkpoint must verify against (default: the config's audit.pubkey).
        #[arg(long, value_name = "PUB")]
        pubkey: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = super::Format::Text)]
        format: super::Format,
        /// Where the history lives.
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Write a signed checkpoint of the chain head (keep it off the box).
    Seal {
        /// Output file (its signature goes to FILE.minisig).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Secret key (default: the config's audit.key).
        #[arg(long, value_name = "KEY")]
        key: Option<PathBuf>,
        /// Where the history lives.
        #[command(flatten)]
        source: SourceArgs,
    },
}

/// The checkpoint file's `format`.
pub const CHECKPOINT_FORMAT: &str = "driftwatch.checkpoint.v1";

/// `driftwatch audit ...`.
pub fn run_audit(cmd: AuditCommand) -> anyhow::Result<u8> {
    match cmd {
        AuditCommand::Seal {
            output,
            key,
            source,
        } => {
            // Over the API an auditor seals with their own key, off the collector's box.
            let (key, records, head, first_bad) = match remote(&source)? {
                Some(c) => {
                    let key =
                        key.ok_or_else(|| anyhow!("--key: the key to sign the checkpoint with"))?;
                    let v = match runtime()?
                        .block_on(c.get_json::<serde_json::Value>("/api/v1/audit/verify"))
                    {
                        Ok(v) => v,
                        Err(client::ClientError::Status {
                            status: 409,
                            message,
                            ..
                        }) => bail!("refusing to seal a broken history: {message}"),
                        Err(e) => return Err(e.into()),
                    };
                    let r = &v["report"];
                    let head = r["head"]
                        .as_str()
                        .ok_or_else(|| anyhow!("collector returned no chain head"))?
                        .to_string();
                    (
                        key,
                        r["records"].as_u64().unwrap_or(0),
                        head,
                        r["first_bad"].as_str().map(String::from),
                    )
                }
                None => {
                    let local = open_local(&source)?;
                    let key = key
                        .or_else(|| local.cfg.as_ref().and_then(|c| c.audit_key.clone()))
                        .ok_or_else(|| anyhow!("--key: no key to sign the checkpoint with (or set audit.key in the collector config)"))?;
                    let r = local.store.verify_chain(None)?;
                    (key, r.records, r.head, r.first_bad)
                }
            };
            if let Some(bad) = &first_bad {
                bail!("refusing to seal a broken history: {bad}");
            }
            let report = crate::store::ChainHead { records, head };
            let doc = json!({
                "format": CHECKPOINT_FORMAT,
                "records": report.records,
                "head": report.head,
                "sealed_at": timefmt::format_timestamp(Timestamp::now()),
            });
            super::write_atomic(
                &output,
                (serde_json::to_string_pretty(&doc)? + "\n").as_bytes(),
            )?;
            sign::sign_file(&output, &key)?;
            eprintln!(
                "sealed {} records (head {}) into {}",
                report.records,
                &report.head[..16],
                output.display()
            );
            Ok(exit::CLEAN)
        }
        AuditCommand::Verify {
            checkpoint,
            pubkey,
            format,
            source,
        } => {
            let checkpoint = checkpoint
                .map(|p| load_checkpoint(&p, pubkey.as_deref(), &source))
                .transpose()?;
            let at = checkpoint.as_ref().map(|c| c.0);
            let (records, head, mut first_bad, hash_at) = match remote(&source)? {
                Some(c) => {
                    let q = at.map(|n| format!("?at={n}")).unwrap_or_default();
                    let v: serde_json::Value = match runtime()?.block_on(
                        c.get_json::<serde_json::Value>(&format!("/api/v1/audit/verify{q}")),
                    ) {
                        Ok(v) => v,
                        Err(client::ClientError::Status {
                            status: 409,
                            message,
                            ..
                        }) => json!({"report": {"first_bad": message}}),
                        Err(e) => return Err(e.into()),
                    };
                    let r = &v["report"];
                    (
                        r["records"].as_u64().unwrap_or(0),
                        r["head"].as_str().unwrap_or("").to_string(),
                        r["first_bad"].as_str().map(String::from),
                        r["hash_at"].as_array().and_then(|a| {
                            Some((a.first()?.as_u64()?, a.get(1)?.as_str()?.to_string()))
                        }),
                    )
                }
                None => {
                    let r = open_local(&source)?.store.verify_chain(at)?;
                    (r.records, r.head, r.first_bad, r.hash_at)
                }
            };
            if first_bad.is_none()
                && let Some((n, want)) = &checkpoint
            {
                match &hash_at {
                    _ if records < *n => {
                        first_bad = Some(format!(
                            "the history has {records} records but the checkpoint sealed {n}: records were deleted"
                        ))
                    }
                    Some((_, got)) if got == want => {}
                    _ => {
                        first_bad = Some(format!(
                            "record {n} no longer has the hash the checkpoint sealed: the history was rewritten up to or before it"
                        ))
                    }
                }
            }
            let intact = first_bad.is_none();
            match format {
                super::Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"intact": intact, "records": records, "head": head, "first_bad": first_bad, "checkpoint": checkpoint.as_ref().map(|c| c.0)})
                    )?
                ),
                super::Format::Text => match &first_bad {
                    None => println!(
                        "intact: {records} records, head {}{}",
                        head.get(..16).unwrap_or(&head),
                        checkpoint
                            .map(|(n, _)| format!("; extends the checkpoint of {n} records"))
                            .unwrap_or_default()
                    ),
                    Some(bad) => println!("BROKEN: {bad}"),
                },
            }
            Ok(if intact { exit::CLEAN } else { exit::DRIFT })
        }
    }
}

/// Verifies and reads a checkpoint: (records, head).
fn load_checkpoint(
    path: &Path,
    pubkey: Option<&Path>,
    source: &SourceArgs,
) -> anyhow::Result<(u64, String)> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    let pubkey = match pubkey {
        Some(p) => p.to_path_buf(),
        None => {
            let cfg_path = source
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
            CollectorConfig::load(&cfg_path)
                .ok()
                .and_then(|c| c.audit_pubkey)
                .ok_or_else(|| anyhow!("--pubkey: a checkpoint is only worth its signature; give the key that sealed it"))?
        }
    };
    let keys = vec![sign::load_public_key(&pubkey)?];
    sign::verify_bytes(&bytes, path, &keys)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a checkpoint", path.display()))?;
    if v["format"] != CHECKPOINT_FORMAT {
        bail!("{}: format: not {CHECKPOINT_FORMAT}", path.display());
    }
    let records = v["records"]
        .as_u64()
        .ok_or_else(|| anyhow!("{}: records: missing", path.display()))?;
    let head = v["head"]
        .as_str()
        .ok_or_else(|| anyhow!("{}: head: missing", path.display()))?
        .to_string();
    Ok((records, head))
}

/// Arguments of `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The day to report (default: yesterday).
    #[arg(long)]
    pub date: Option<String>,
    /// Markdown or HTML.
    #[arg(long, default_value = "md", value_parser = ["md", "html"])]
    pub format: String,
    /// Where to read from.
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `driftwatch report`: the morning summary; exit 1 when the day missed the target.
pub fn run_report(a: ReportArgs) -> anyhow::Result<u8> {
    let (rows, events) = match remote(&a.source)? {
        Some(c) => {
            let day = match &a.date {
                Some(d) => d.clone(),
                None => {
                    let v: Vec<KpiRow> =
                        runtime()?.block_on(c.get_json("/api/v1/kpi?by=day&group=fleet"))?;
                    let today = v.last().map(|r| r.period.clone()).unwrap_or_default();
                    today
                        .parse::<jiff::civil::Date>()
                        .ok()
                        .and_then(|d| d.yesterday().ok())
                        .map(|d| d.to_string())
                        .unwrap_or(today)
                }
            };
            let day = client::encode(&day);
            let rt = runtime()?;
            let rows: Vec<KpiRow> = rt.block_on(c.get_json(&format!(
                "/api/v1/kpi?by=day&group=host&from={day}&to={day}"
            )))?;
            let v: serde_json::Value =
                rt.block_on(c.get_json(&format!("/api/v1/events?from={day}&to={day}")))?;
            (rows, events_from_json(v)?)
        }
        None => {
            let local = open_local(&a.source)?;
            let today = Timestamp::now().to_zoned(local.tz.clone()).date();
            let day = match parse_day("date", &a.date)? {
                Some(d) => d,
                None => today.yesterday().unwrap_or(today),
            };
            let days = local.store.host_days(day, day, None, Timestamp::now())?;
            let rows = kpi::compute(&days, kpi::Period::Day, &kpi::Grouping::ALL, local.target);
            let events = local.store.events(&EventQuery {
                from: Some(day),
                to: Some(day),
                ..EventQuery::default()
            })?;
            (rows, events)
        }
    };
    let day = rows
        .first()
        .map(|r| r.period.clone())
        .or(a.date.clone())
        .unwrap_or_default();
    let report = crate::daily::DailyReport {
        day,
        rows: &rows,
        events: &events,
    };
    let out = if a.format == "html" {
        report.to_html()
    } else {
        report.to_markdown()
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    let missed = rows
        .iter()
        .any(|r| r.environment == "*" && r.host == "*" && !r.met);
    Ok(if missed { exit::DRIFT } else { exit::CLEAN })
}
