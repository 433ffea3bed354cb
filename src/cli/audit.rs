//! `driftwatch audit`: verify the tamper-evident history (against a signed checkpoint), or seal
//! its head into one. The checkpoint rules live in `collector::service::audit`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use clap::Subcommand;
use jiff::Timestamp;

use super::source::{Source, SourceArgs};
use crate::collector::config::{self, CollectorConfig};
use crate::collector::service::audit::{self, Checkpoint};
use crate::sign;
use crate::util::exit;

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
        #[arg(long, value_enum, default_value_t = super::util::Format::Text)]
        format: super::util::Format,
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

/// `driftwatch audit ...`.
pub fn run_audit(cmd: AuditCommand) -> anyhow::Result<u8> {
    match cmd {
        AuditCommand::Seal {
            output,
            key,
            source,
        } => {
            let source = Source::open(&source)?;
            // Over the API an auditor seals with their own key, off the collector's box.
            let key = match &source {
                Source::Remote(_) => {
                    key.ok_or_else(|| anyhow!("--key: the key to sign the checkpoint with"))?
                }
                Source::Local(_) => key.or_else(|| source.audit_key()).ok_or_else(|| {
                    anyhow!("--key: no key to sign the checkpoint with (or set audit.key in the collector config)")
                })?,
            };
            let report = source.verify_chain(None)?;
            let cp = Checkpoint::seal(&report, Timestamp::now())?;
            super::util::write_atomic(&output, cp.to_json().as_bytes())?;
            sign::sign_file(&output, &key)?;
            eprintln!(
                "sealed {} records (head {}) into {}",
                cp.records,
                cp.head.get(..16).unwrap_or(&cp.head),
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
            let report =
                Source::open(&source)?.verify_chain(checkpoint.as_ref().map(|c| c.records))?;
            let v = audit::verdict(report, checkpoint.as_ref());
            match format {
                super::util::Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                super::util::Format::Text => match &v.first_bad {
                    None => println!(
                        "intact: {} records, head {}{}",
                        v.records,
                        v.head.get(..16).unwrap_or(&v.head),
                        v.checkpoint
                            .map(|n| format!("; extends the checkpoint of {n} records"))
                            .unwrap_or_default()
                    ),
                    Some(bad) => println!("BROKEN: {bad}"),
                },
            }
            Ok(if v.intact { exit::CLEAN } else { exit::DRIFT })
        }
    }
}

/// Reads a checkpoint after verifying its signature (default key: the config's audit.pubkey).
fn load_checkpoint(
    path: &Path,
    pubkey: Option<&Path>,
    source: &SourceArgs,
) -> anyhow::Result<Checkpoint> {
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
    Ok(Checkpoint::open(&bytes, path, &keys)?)
}
