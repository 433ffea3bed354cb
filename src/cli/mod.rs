//! The command line: clap definitions and the dispatch to one module per command group.
//!
//! This is the binary's edge: errors become `anyhow` here and one line on stderr in `main`.
//! Commands that read history get it from [`source::Source`] (a collector or its store, through
//! the collector's service layer), never by talking to the store or parsing JSON themselves.

pub mod agent_cmds;
pub mod alerts;
pub mod audit;
pub mod changes;
pub mod changes_new;
pub mod check;
pub mod collector;
pub mod events;
pub mod kpi;
pub mod manifest;
pub mod quickstart;
pub mod report;
pub mod source;
pub mod tokens;
pub mod util;

pub use util::{Format, TableFormat};

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::sign;
use crate::util::exit;

/// driftwatch: catch code on production servers that did not come through the release process.
#[derive(Debug, Parser)]
#[command(name = "driftwatch", version, about, long_about = None, disable_help_subcommand = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a minisign key pair: PREFIX.key (secret, 0600) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Build, sign or verify release manifests.
    #[command(subcommand)]
    Manifest(manifest::ManifestCommand),
    /// Sign any file (manifest, change entry): writes FILE.minisig.
    Sign(manifest::SignArgs),
    /// Verify FILE against FILE.minisig and one of the given public keys.
    Verify(manifest::VerifyArgs),
    /// Compare a tree with its manifest and the change log; exit 0 clean, 1 drift, 2 error.
    Check(check::CheckArgs),
    /// Run the central server (API, KPI, audit).
    Collector {
        /// Config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Log as JSON lines instead of text.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Run the agent daemon (foreground; systemd Type=notify).
    Agent {
        /// Config file (default /etc/driftwatch/agent.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Log as JSON lines instead of text.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// One scan of every tree in the agent config, updating its state and spool; exit 1 on drift.
    Scan {
        /// Config file (default /etc/driftwatch/agent.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Validate an agent or collector config and everything it points to.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the real agent and dashboard on a demo tree under ./quickstart (created once, reused).
    Quickstart {
        /// Where the demo lives.
        #[arg(long, default_value = "quickstart")]
        dir: PathBuf,
        /// Dashboard address (a free port is picked if this one is taken).
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
    },
    /// Manage collector access tokens (stored hashed).
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// Changes recorded by the collector (or its store).
    Events(events::EventsArgs),
    /// The compliance KPI table; exit 1 when a row misses the target.
    Kpi(kpi::KpiArgs),
    /// The morning summary for a day: KPI against target, unauthorized changes, silent hosts,
    /// retroactive approvals (Markdown or HTML); exit 1 when the day missed the target.
    Report(report::ReportArgs),
    /// Shell completions (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Register, list and approve change entries.
    #[command(subcommand)]
    Changes(changes::ChangesCommand),
    /// Verify or seal the tamper-evident history.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Alert delivery state, and test alerts through a sink.
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// List every problem at once; exit 0 when valid, 2 otherwise.
    Check {
        /// Config file (default: /etc/driftwatch/agent.toml, else collector.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    if !matches!(
        cli.command,
        Command::Agent { .. } | Command::Collector { .. } | Command::Quickstart { .. }
    ) {
        // A one-shot command piped into `head` should end quietly, as Unix tools do, not panic
        // on EPIPE. The daemons keep SIGPIPE ignored: a closed socket must not kill them.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Keygen { out, force } => {
            let (key, public) = sign::keygen(&out, force)?;
            eprintln!(
                "wrote {} (secret, keep it off the servers) and {}",
                key.display(),
                public.display()
            );
            Ok(exit::CLEAN)
        }
        Command::Manifest(cmd) => manifest::run_manifest(cmd),
        Command::Sign(args) => manifest::run_sign(&args),
        Command::Verify(args) => manifest::run_verify(&args),
        Command::Check(args) => check::run_check(args),
        Command::Collector { config, log_format } => {
            collector::run_collector(config, log_format == LogFormat::Json)
        }
        Command::Agent { config, log_format } => {
            agent_cmds::run_agent(config, log_format == LogFormat::Json)
        }
        Command::Scan { config, format } => agent_cmds::run_scan(config, format),
        Command::Config(ConfigCommand::Check { config }) => agent_cmds::run_config_check(config),
        Command::Quickstart { dir, listen } => {
            util::init_logging(false);
            quickstart::Quickstart { dir, listen }.run()?;
            Ok(exit::CLEAN)
        }
        Command::Token(cmd) => tokens::run_token(cmd),
        Command::Report(args) => report::run_report(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "driftwatch",
                &mut std::io::stdout(),
            );
            Ok(exit::CLEAN)
        }
        Command::Events(args) => events::run_events(args),
        Command::Kpi(args) => kpi::run_kpi(args),
        Command::Changes(cmd) => changes::run_changes(cmd),
        Command::Audit(cmd) => audit::run_audit(cmd),
        Command::Alerts(cmd) => alerts::run_alerts(cmd),
    }
}
