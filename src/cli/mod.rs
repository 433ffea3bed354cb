//! The command line: clap definitions and the dispatch to library calls.
//!
//! This is the binary's edge: errors become `anyhow` here and one line on stderr in `main`.

pub mod agent_cmds;
pub mod ops;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::check::{self, CheckOptions};
use crate::exit;
use crate::glob;
use crate::manifest::Manifest;
use crate::sign;
use crate::snapshot::{self, ScanOptions};
use crate::walk::WalkOptions;

/// driftwatch: catch code on production servers that did not come through the release process.
#[derive(Debug, Parser)]
#[command(name = "driftwatch", version, about, long_about = None, disable_help_subcommand = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For scripts.
    Json,
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
    Manifest(ManifestCommand),
    /// Sign any file (manifest, change entry): writes FILE.minisig.
    Sign(SignArgs),
    /// Verify FILE against FILE.minisig and one of the given public keys.
    Verify(VerifyArgs),
    /// Compare a tree with its manifest and the change log; exit 0 clean, 1 drift, 2 error.
    Check(CheckArgs),
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
    Token(ops::TokenCommand),
    /// Changes recorded by the collector (or its store).
    Events(ops::EventsArgs),
    /// The compliance KPI table; exit 1 when a row misses the target.
    Kpi(ops::KpiArgs),
    /// The morning summary for a day: KPI against target, unauthorized changes, silent hosts,
    /// retroactive approvals (Markdown or HTML); exit 1 when the day missed the target.
    Report(ops::ReportArgs),
    /// Shell completions (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Register, list and approve change entries.
    #[command(subcommand)]
    Changes(ops::ChangesCommand),
    /// Verify or seal the tamper-evident history.
    #[command(subcommand)]
    Audit(ops::AuditCommand),
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

/// `manifest` subcommands.
#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Hash a tree and write its manifest (stdout unless -o).
    Build(BuildArgs),
    /// Sign a manifest (same as `driftwatch sign`).
    Sign(SignArgs),
    /// Verify a manifest's signature and its content (same as `driftwatch verify`, plus parsing).
    Verify(VerifyArgs),
    /// Upload a signed manifest to the collector, which hands it to the agents of its tree.
    Push(PushArgs),
}

/// Arguments of `manifest push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The manifest; its FILE.minisig is sent along.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Collector base URL.
    #[arg(long, value_name = "URL")]
    pub collector: String,
    /// File holding an admin token.
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
}

/// Arguments of `manifest build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The tree to hash (the build output or the deployed directory).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Release id recorded in the manifest.
    #[arg(long, value_name = "ID")]
    pub release: String,
    /// Tree name (default: the root directory's name).
    #[arg(long, value_name = "NAME")]
    pub tree: Option<String>,
    /// Leave paths out (glob relative to the root; `*` does not cross `/`). Repeatable. Recorded
    /// in the manifest (`exclude`), so every check and agent applies it too.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Sign with this secret key, writing FILE.minisig (needs -o).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Write the manifest here instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Who built it (default: USER@HOST).
    #[arg(long, value_name = "WHO")]
    pub created_by: Option<String>,
    /// Do not record owners (uid/gid): for pipelines that build as another user than the servers run.
    #[arg(long)]
    pub no_owner: bool,
    /// Hashing threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Arguments of `sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The file to sign.
    pub file: PathBuf,
    /// Secret key (minisign format; encrypted keys read DRIFTWATCH_KEY_PASSWORD).
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The file to verify (its signature is FILE.minisig).
    pub file: PathBuf,
    /// Trusted public key; repeat for several.
    #[arg(long, value_name = "PUB", required = true)]
    pub pubkey: Vec<PathBuf>,
}

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
        Command::Manifest(ManifestCommand::Build(args)) => manifest_build(args),
        Command::Manifest(ManifestCommand::Sign(args)) | Command::Sign(args) => {
            let sig = sign::sign_file(&args.file, &args.key)?;
            eprintln!("wrote {}", sig.display());
            Ok(exit::CLEAN)
        }
        Command::Manifest(ManifestCommand::Push(args)) => ops::manifest_push(&args),
        Command::Manifest(ManifestCommand::Verify(args)) => {
            let mut warnings = Vec::new();
            let (m, _) = check::load_manifest(&args.file, &args.pubkey, &mut warnings)?;
            println!(
                "{}: signature OK; tree {} release {} ({} entries)",
                args.file.display(),
                m.tree,
                m.release,
                m.entries.len()
            );
            Ok(exit::CLEAN)
        }
        Command::Verify(args) => {
            let data =
                std::fs::read(&args.file).with_context(|| args.file.display().to_string())?;
            let keys = sign::load_public_keys(&args.pubkey)?;
            let by = sign::verify_bytes(&data, &args.file, &keys)?;
            println!(
                "{}: signature OK (key {})",
                args.file.display(),
                by.path.display()
            );
            Ok(exit::CLEAN)
        }
        Command::Check(args) => run_check(args),
        Command::Collector { config, log_format } => {
            ops::run_collector(config, log_format == LogFormat::Json)
        }
        Command::Agent { config, log_format } => {
            agent_cmds::run_agent(config, log_format == LogFormat::Json)
        }
        Command::Scan { config, format } => agent_cmds::run_scan(config, format),
        Command::Config(ConfigCommand::Check { config }) => agent_cmds::run_config_check(config),
        Command::Quickstart { dir, listen } => {
            ops::init_logging(false);
            crate::quickstart::Quickstart { dir, listen }.run()?;
            Ok(exit::CLEAN)
        }
        Command::Token(cmd) => ops::run_token(cmd),
        Command::Report(args) => ops::run_report(args),
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
        Command::Events(args) => ops::run_events(args),
        Command::Kpi(args) => ops::run_kpi(args),
        Command::Changes(cmd) => ops::run_changes(cmd),
        Command::Audit(cmd) => ops::run_audit(cmd),
    }
}

fn progress_bar(what: &str) -> Option<indicatif::ProgressBar> {
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

fn manifest_build(args: BuildArgs) -> anyhow::Result<u8> {
    if args.sign.is_some() && args.output.is_none() {
        bail!("--sign needs -o FILE (the signature is written to FILE.minisig)");
    }
    let tree = match args.tree {
        Some(t) => t,
        None => default_tree_name(&args.root)?,
    };
    if args.release.trim().is_empty() {
        bail!("--release must not be empty");
    }
    let exclude = glob::path_set(&args.exclude).map_err(|m| anyhow::anyhow!("--exclude: {m}"))?;
    let skip = args
        .output
        .iter()
        .flat_map(|o| [o.clone(), sign::sig_path(o)])
        .filter_map(|p| in_root(&args.root, &p))
        .collect();
    let opts = ScanOptions {
        walk: WalkOptions {
            exclude,
            skip,
            cross_filesystems: false,
        },
        threads: args.threads,
        progress: progress_bar("hashing"),
        ..ScanOptions::default()
    };
    let snap = snapshot::scan(&args.root, &opts)?;
    if let Some(p) = &opts.progress {
        p.finish_and_clear();
    }
    let created_by = args.created_by.unwrap_or_else(|| {
        format!(
            "{}@{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            hostname()
        )
    });
    // The exclusions travel with the release: every check and agent applies them (§12.1).
    let manifest =
        Manifest::from_snapshot(&snap, &tree, &args.release, &created_by, !args.no_owner)?
            .with_exclude(&args.exclude);
    let json = manifest.to_canonical_json();
    match &args.output {
        Some(path) => {
            write_atomic(path, json.as_bytes())?;
            if let Some(key) = &args.sign {
                sign::sign_file(path, key)?;
            }
            eprintln!(
                "{}: {} paths ({} files, {} bytes) in {:.2} s{}",
                path.display(),
                manifest.entries.len(),
                snap.stats.files,
                snap.stats.bytes,
                snap.stats.seconds,
                if args.sign.is_some() { ", signed" } else { "" }
            );
        }
        None => std::io::stdout()
            .lock()
            .write_all(json.as_bytes())
            .context("stdout")?,
    }
    Ok(exit::CLEAN)
}

/// When `path` lies inside `root`, the path as the walker will see it (root-joined).
fn in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    let root_abs = root.canonicalize().ok()?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent_abs = parent.canonicalize().ok()?;
    let rel = parent_abs.strip_prefix(&root_abs).ok()?;
    Some(root.join(rel).join(path.file_name()?))
}

fn default_tree_name(root: &Path) -> anyhow::Result<String> {
    let abs = root
        .canonicalize()
        .with_context(|| root.display().to_string())?;
    abs.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            anyhow::anyhow!("{}: cannot derive a tree name, pass --tree", root.display())
        })
}

fn run_check(args: CheckArgs) -> anyhow::Result<u8> {
    let opts = CheckOptions {
        root: args.root,
        manifest: args.manifest,
        pubkeys: args.pubkey,
        changes: args.changes,
        approver_pubkeys: args.approver_pubkey,
        host: args.host.unwrap_or_else(hostname),
        exclude: args.exclude,
        allow_self_approval: args.allow_self_approval,
        threads: args.threads,
        progress: progress_bar("checking"),
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

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// [`crate::fsutil::write_atomic`] with the path in the error, for commands.
pub fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    crate::fsutil::write_atomic(path, data).with_context(|| path.display().to_string())
}
