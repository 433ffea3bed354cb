//! `driftwatch token`: access tokens, always on the store itself (never over the API).

use std::path::PathBuf;

use clap::Subcommand;
use jiff::Timestamp;

use super::source::{self, SourceArgs};
use crate::collector::service::tokens;
use crate::store::Role;
use crate::util::exit;

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
    let local = |config: Option<PathBuf>, db: Option<String>| {
        source::local(&SourceArgs {
            config,
            db,
            ..SourceArgs::default()
        })
    };
    match cmd {
        TokenCommand::Create {
            config,
            db,
            role,
            host,
            label,
        } => {
            // The host rule is checked before the store is opened: a typo costs nothing.
            tokens::check_binding(role, host.as_deref()).map_err(|e| anyhow::anyhow!("--{e}"))?;
            let svc = local(config, db)?;
            let (token, secret) = svc
                .create_token(role, host.as_deref(), &label, Timestamp::now())
                .map_err(|e| anyhow::anyhow!("--{e}"))?;
            eprintln!(
                "created {} token {} (shown once; store it in a file readable only by its user)",
                token.role.as_str(),
                token.id
            );
            println!("{secret}");
        }
        TokenCommand::List { config, db } => {
            let mut out = String::from(
                "ID  ROLE    HOST                 CREATED               REVOKED               LABEL\n",
            );
            for t in local(config, db)?.tokens()? {
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
            let t = local(config, db)?.revoke_token(id, Timestamp::now())?;
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
