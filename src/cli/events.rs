//! `driftwatch events`: the changes a collector (or its store) recorded.

use std::io::Write;

use clap::Args;

use super::source::{Source, SourceArgs};
use super::util::TableFormat;
use crate::store::{EventQuery, StoredEvent};
use crate::util::exit;

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

/// `driftwatch events`.
pub fn run_events(a: EventsArgs) -> anyhow::Result<u8> {
    let query = EventQuery {
        from: super::util::parse_day("from", a.from.as_deref())?,
        to: super::util::parse_day("to", a.to.as_deref())?,
        host: a.host.clone(),
        status: a.status.clone(),
        open_only: a.open,
        limit: None,
    };
    let events = Source::open(&a.source)?.events(&query)?;
    let out = match a.format {
        TableFormat::Json => serde_json::to_string_pretty(&events)? + "\n",
        TableFormat::Csv => crate::judge::report::events_csv(&events),
        TableFormat::Text => events_table(&events),
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(exit::CLEAN)
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
            match &e.detail {
                Some(d) => format!("{} ({d})", e.path.escape_debug()),
                None => e.path.escape_debug().to_string(),
            }
        ));
    }
    out.push_str(&format!("{} events\n", events.len()));
    out
}
