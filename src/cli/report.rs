//! `driftwatch report`: the morning summary of one day.

use std::io::Write;

use clap::Args;

use super::source::{Source, SourceArgs};
use crate::collector::service::kpi::KpiQuery;
use crate::store::EventQuery;
use crate::util::exit;

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
    let source = Source::open(&a.source)?;
    let day = match super::util::parse_day("date", a.date.as_deref())? {
        Some(d) => d,
        None => {
            let today = source.today()?;
            today.yesterday().unwrap_or(today)
        }
    };
    let rows = source.kpi(&KpiQuery {
        from: Some(day.to_string()),
        to: Some(day.to_string()),
        by: Some("day".into()),
        group: Some("host".into()),
        host: None,
    })?;
    let events = source.events(&EventQuery {
        from: Some(day),
        to: Some(day),
        ..EventQuery::default()
    })?;
    let report = crate::collector::service::daily::DailyReport {
        day: rows
            .first()
            .map(|r| r.period.clone())
            .or(a.date.clone())
            .unwrap_or_default(),
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
