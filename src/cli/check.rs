//! `driftwatch check`: one tree against its manifest and the change log, once.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::util::Format;
use crate::judge::check::{self, CheckOptions};
use crate::util::exit;

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The deployed tree.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// The manifest of the release in force.
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// Release public key the manifest must verify against; repeatable.
    #[arg(long, value_name = "PUB")]
    pub pubkey: Vec<PathBuf>,
    /// Directory of change entries (ID.toml + ID.toml.minisig).
    #[arg(long, value_name = "DIR")]
    pub changes: Option<PathBuf>,
    /// Approver public key each change entry must verify against; repeatable.
    #[arg(long, value_name = "PUB")]
    pub approver_pubkey: Vec<PathBuf>,
    /// An approver bound to their key, `NAME=PUB`: entries that key signs must say
    /// `approved_by = NAME`; repeatable.
    #[arg(long, value_name = "NAME=PUB", value_parser = crate::sign::parse_approver_binding)]
    pub approver: Vec<crate::sign::ApproverBinding>,
    /// Host name matched against change entries (default: this machine's hostname).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Leave paths out (glob relative to the root); repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Accept change entries approved by their own requester.
    #[arg(long)]
    pub allow_self_approval: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Hashing threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// `driftwatch check`: exit 0 clean, 1 drift.
pub fn run_check(args: CheckArgs) -> anyhow::Result<u8> {
    let opts = CheckOptions {
        root: args.root,
        manifest: args.manifest,
        pubkeys: args.pubkey,
        changes: args.changes,
        approver_pubkeys: args.approver_pubkey,
        approvers: args.approver,
        host: args.host.unwrap_or_else(crate::util::host::hostname),
        exclude: args.exclude,
        allow_self_approval: args.allow_self_approval,
        threads: args.threads,
        progress: super::util::progress_bar("checking"),
    };
    let outcome = check::run(&opts)?;
    for w in &outcome.warnings {
        eprintln!("driftwatch: warning: {w}");
    }
    let report = outcome.report;
    let text = match args.format {
        Format::Json => serde_json::to_string_pretty(&report.to_json())? + "\n",
        Format::Text => report.to_text(std::io::stdout().is_terminal()),
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("stdout")?;
    Ok(if report.has_violations() {
        exit::DRIFT
    } else {
        exit::CLEAN
    })
}
