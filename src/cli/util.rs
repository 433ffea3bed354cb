//! What the command modules share: output formats, logging, the async runtime one-shot
//! commands block on, and the edge helpers that put paths and flag names into errors.
//!
//! Invariant: nothing here depends on a command module (they all depend on it), so the command
//! modules never import the dispatcher in `cli/mod.rs`.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use clap::ValueEnum;

/// Output formats for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

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

/// The async runtime one-shot commands block on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// An optional `--NAME` day (`YYYY-MM-DD`).
pub fn parse_day(name: &str, v: Option<&str>) -> anyhow::Result<Option<jiff::civil::Date>> {
    crate::collector::service::kpi::parse_date(name, v).map_err(|e| anyhow!("--{e}"))
}

/// A spinner on stderr while `what` runs, when stderr is a terminal.
pub fn progress_bar(what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    let style =
        indicatif::ProgressStyle::with_template("{spinner} {msg}: {human_pos} paths ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(pb)
}

/// [`crate::util::fsutil::write_atomic`] with the path in the error, for commands.
pub fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    crate::util::fsutil::write_atomic(path, data).with_context(|| path.display().to_string())
}
