//! `driftwatch kpi`: the compliance table; the exit code says whether every row met the target.

use std::io::Write;

use clap::Args;

use super::source::{Source, SourceArgs};
use super::util::TableFormat;
use crate::collector::service::kpi::KpiQuery;
use crate::kpi;
use crate::util::exit;

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
    let rows = Source::open(&a.source)?.kpi(&KpiQuery {
        from: a.from,
        to: a.to,
        by: Some(a.by),
        group: a.group,
        host: a.host,
    })?;
    // Rendered here from the rows, so every format gets the same exit code.
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
