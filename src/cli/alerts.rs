//! `driftwatch alerts list|test`: the outbox's delivery state, and a test alert through one
//! `[[alert]]` sink.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use clap::Subcommand;

use super::source::{Source, SourceArgs};
use super::util::{TableFormat, runtime};
use crate::agent::config::AgentConfig;
use crate::collector::alerts::sinks::{self, Message};
use crate::collector::alerts::{AlertConfig, AlertItem, AlertKind, Router};
use crate::collector::config::CollectorConfig;
use crate::store::outbox::OutboxRow;
use crate::util::exit;

/// `alerts` subcommands.
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// The newest alerts and their delivery state (pending, sent, failed).
    List {
        /// At most this many, newest first.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TableFormat::Text)]
        format: TableFormat,
        /// Where to read from.
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Send a test alert through the `[[alert]]` named NAME now (not through the outbox);
    /// exit 0 when the receiver accepted it.
    Test {
        /// The `[[alert]]` name.
        name: String,
        /// Collector config, or the agent config of an embedded collector.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// `driftwatch alerts ...`.
pub fn run_alerts(cmd: AlertsCommand) -> anyhow::Result<u8> {
    match cmd {
        AlertsCommand::List {
            limit,
            format,
            source,
        } => {
            let rows = Source::open(&source)?.alerts(limit)?;
            let out = match format {
                TableFormat::Json => serde_json::to_string_pretty(&rows)? + "\n",
                TableFormat::Csv => csv(&rows),
                TableFormat::Text => table(&rows),
            };
            std::io::stdout().lock().write_all(out.as_bytes())?;
            Ok(exit::CLEAN)
        }
        AlertsCommand::Test { name, config } => {
            let (alerts, dashboard) = load_alerts(&config)?;
            let Some(cfg) = alerts.iter().find(|a| a.name == name) else {
                bail!(
                    "{}: no [[alert]] named {name:?} (there are: {})",
                    config.display(),
                    alerts
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            let msg = test_message(cfg, &dashboard);
            let sink = sinks::build(cfg);
            runtime()?
                .block_on(sink.send(&msg))
                .map_err(|e| anyhow!("alert {name:?} ({}): {e}", cfg.target.kind()))?;
            println!(
                "test alert {} sent through {name:?} ({})",
                msg.items[0].id,
                cfg.target.kind()
            );
            Ok(exit::CLEAN)
        }
    }
}

/// The `[[alert]]` tables of a collector config, or of an agent config (embedded collector),
/// with the dashboard base URL their links use.
fn load_alerts(path: &Path) -> anyhow::Result<(Vec<AlertConfig>, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let is_agent = text
        .parse::<toml::Table>()
        .map(|t| t.contains_key("tree") || t.contains_key("state_dir"))
        .unwrap_or(false);
    let joined = |p: Vec<String>| anyhow!("{}", p.join("; "));
    if is_agent {
        let cfg = AgentConfig::parse(&text, path).map_err(joined)?;
        let listen = match cfg.uplink {
            crate::agent::config::Uplink::Embedded { listen } => listen.to_string(),
            _ => "127.0.0.1:8470".into(),
        };
        Ok((cfg.alerts, format!("http://{listen}/")))
    } else {
        let cfg = CollectorConfig::parse(&text, path).map_err(joined)?;
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        Ok((cfg.alerts, format!("{scheme}://{}/", cfg.listen)))
    }
}

/// A `test` alert for `cfg`, routed like any other (its id unique to this run).
fn test_message(cfg: &AlertConfig, dashboard: &str) -> Message {
    let now = jiff::Timestamp::now();
    let item = AlertItem::new(
        AlertKind::Test,
        "",
        "",
        format!("test alert through {:?}: delivery works", cfg.name),
        now,
    );
    // A test reaches its sink whatever the sink's `on` says.
    let mut route = cfg.clone();
    route.on = vec![AlertKind::Test];
    let row = Router::new(vec![route], dashboard)
        .route(&item, &format!("test\0{}", now.as_nanosecond()))
        .remove(0);
    Message {
        sink: cfg.name.clone(),
        host: String::new(),
        items: vec![serde_json::from_str(&row.body).expect("a routed item parses")],
    }
}

fn table(rows: &[OutboxRow]) -> String {
    let mut out = format!(
        "{:<20}  {:<32}  {:<12} {:<13} {:<16} {:<8} {:>8}  LAST ERROR\n",
        "CREATED", "ID", "SINK", "KIND", "HOST", "STATE", "ATTEMPTS"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20}  {:<32}  {:<12} {:<13} {:<16} {:<8} {:>8}  {}\n",
            r.created_at,
            r.id,
            r.sink,
            r.kind,
            r.host,
            r.state.as_str(),
            r.attempts,
            r.last_error.as_deref().unwrap_or("")
        ));
    }
    out.push_str(&format!("{} alerts\n", rows.len()));
    out
}

fn csv(rows: &[OutboxRow]) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out =
        String::from("created_at,id,sink,kind,host,state,attempts,due_at,settled_at,last_error\n");
    for r in rows {
        let cols = [
            r.created_at.clone(),
            r.id.clone(),
            r.sink.clone(),
            r.kind.clone(),
            r.host.clone(),
            r.state.as_str().to_string(),
            r.attempts.to_string(),
            r.due_at.clone(),
            r.settled_at.clone().unwrap_or_default(),
            r.last_error.clone().unwrap_or_default(),
        ];
        out.push_str(&cols.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}
