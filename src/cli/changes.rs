//! `driftwatch changes`: register, list and approve change entries, in a local change
//! directory or on a collector (its store, with `--db`/`--config`, through the same rules).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use jiff::Timestamp;
use serde_json::json;

use super::source::{Source, SourceArgs};
use super::util::TableFormat;
use crate::collector::service::SignedDoc;
use crate::judge::changelog::{self, ChangeEntry, Policy};
use crate::kpi;
use crate::sign;
use crate::util::exit;
use crate::util::timefmt;

/// `changes` subcommands.
#[derive(Debug, Subcommand)]
pub enum ChangesCommand {
    /// Log a change in one command (DESIGN §12.2): write, sign when approving, register, print
    /// the id.
    New(super::changes_new::ChangesNewArgs),
    /// Register a change entry: from a file (its .minisig travels with it) or from flags.
    Add(ChangesAddArgs),
    /// List change entries.
    List {
        /// Local change directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TableFormat::Text)]
        format: TableFormat,
        /// With --dir: approver key that may sign for any name; repeatable.
        #[arg(long, value_name = "PUB")]
        approver_pubkey: Vec<PathBuf>,
        /// With --dir: an approver bound to their key, `NAME=PUB`; repeatable.
        #[arg(long, value_name = "NAME=PUB", value_parser = sign::parse_approver_binding)]
        approver: Vec<sign::ApproverBinding>,
        /// Or a collector / store.
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Approve an entry (also after the fact): sets approved_by/approved_at and re-signs it.
    Approve {
        /// Ticket id.
        id: String,
        /// Approver name.
        #[arg(long = "by", value_name = "NAME")]
        by: String,
        /// Approval time (default now).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Approver's secret key: the approved entry is signed with it.
        #[arg(long, value_name = "KEY")]
        key: Option<PathBuf>,
        /// Local change directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Or a collector (admin token).
        #[command(flatten)]
        source: SourceArgs,
    },
}

/// Arguments of `changes add`.
#[derive(Debug, Args)]
pub struct ChangesAddArgs {
    /// An entry file (ID.toml); its ID.toml.minisig is taken along.
    #[arg(long, value_name = "ENTRY.toml", conflicts_with_all = ["id"])]
    pub file: Option<PathBuf>,
    /// Ticket id.
    #[arg(long)]
    pub id: Option<String>,
    /// Host globs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Tree globs (comma-separated; default `*`).
    #[arg(long, value_delimiter = ',')]
    pub trees: Vec<String>,
    /// Path globs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<String>,
    /// Window start (RFC 3339).
    #[arg(long = "from", value_name = "TIME")]
    pub start: Option<String>,
    /// Window end (RFC 3339).
    #[arg(long = "to", value_name = "TIME")]
    pub end: Option<String>,
    /// What and why.
    #[arg(long)]
    pub reason: Option<String>,
    /// Who asked for it (default $USER).
    #[arg(long)]
    pub requested_by: Option<String>,
    /// Who approved it (with --approved-at, or now).
    #[arg(long)]
    pub approved_by: Option<String>,
    /// When it was approved.
    #[arg(long)]
    pub approved_at: Option<String>,
    /// Sign the entry with this secret key.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Local change directory to write into.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Or a collector (admin token).
    #[command(flatten)]
    pub source: SourceArgs,
}

fn entry_from_flags(a: &ChangesAddArgs) -> anyhow::Result<String> {
    let need = |name: &str, v: &Option<String>| {
        v.clone()
            .ok_or_else(|| anyhow!("--{name} is required (or use --file)"))
    };
    let mut t = toml::Table::new();
    t.insert("id".into(), need("id", &a.id)?.into());
    t.insert("summary".into(), need("reason", &a.reason)?.into());
    let requested = a
        .requested_by
        .clone()
        .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
    t.insert("requested_by".into(), requested.into());
    if let Some(by) = &a.approved_by {
        t.insert("approved_by".into(), by.clone().into());
        let at = a
            .approved_at
            .clone()
            .unwrap_or_else(|| timefmt::format_timestamp(Timestamp::now()));
        t.insert("approved_at".into(), at.into());
    }
    let list =
        |v: &[String]| toml::Value::Array(v.iter().map(|s| toml::Value::from(s.clone())).collect());
    t.insert("hosts".into(), list(&a.hosts));
    let trees = if a.trees.is_empty() {
        vec!["*".to_string()]
    } else {
        a.trees.clone()
    };
    t.insert("trees".into(), list(&trees));
    t.insert("paths".into(), list(&a.paths));
    t.insert("start".into(), need("from", &a.start)?.into());
    t.insert("end".into(), need("to", &a.end)?.into());
    Ok(toml::to_string(&t)?)
}

/// `driftwatch changes ...`.
pub fn run_changes(cmd: ChangesCommand) -> anyhow::Result<u8> {
    match cmd {
        ChangesCommand::New(a) => super::changes_new::run(a),
        ChangesCommand::Add(a) => {
            let (text, mut sig) = match &a.file {
                Some(f) => {
                    let text =
                        std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
                    let sig = std::fs::read_to_string(sign::sig_path(f)).ok();
                    (text, sig)
                }
                None => (entry_from_flags(&a)?, None),
            };
            let origin = a
                .file
                .clone()
                .unwrap_or_else(|| PathBuf::from("entry.toml"));
            let entry = ChangeEntry::parse(&text, &origin)?;
            if let Some(key) = &a.sign {
                let sk = sign::load_secret_key(key)?;
                sig = Some(
                    sign::sign_bytes(text.as_bytes(), &format!("{}.toml", entry.id), &sk)
                        .map_err(|m| anyhow!("{}: {m}", key.display()))?,
                );
            }
            publish(&entry.id, &text, sig, a.dir.as_deref(), &a.source, false)?;
            Ok(exit::CLEAN)
        }
        ChangesCommand::List {
            dir,
            format,
            approver_pubkey,
            approver,
            source,
        } => {
            let mut keys = sign::load_public_keys(&approver_pubkey)?;
            for a in &approver {
                keys.push(sign::load_public_key(&a.key)?.bound_to(&a.name));
            }
            list_changes(dir.as_deref(), format, &keys, &source)
        }
        ChangesCommand::Approve {
            id,
            by,
            at,
            key,
            dir,
            source,
        } => {
            let text = match &dir {
                Some(d) => std::fs::read_to_string(d.join(format!("{id}.toml")))
                    .with_context(|| d.join(format!("{id}.toml")).display().to_string())?,
                None => fetch_change(&id, &source)?,
            };
            let mut t: toml::Table =
                toml::from_str(&text).with_context(|| format!("change {id}"))?;
            let at = at.unwrap_or_else(|| timefmt::format_timestamp(Timestamp::now()));
            timefmt::parse_timestamp(&at).map_err(|m| anyhow!("--at: {m}"))?;
            t.insert("approved_by".into(), by.into());
            t.insert("approved_at".into(), at.into());
            let new_text = toml::to_string(&t)?;
            ChangeEntry::parse(&new_text, Path::new(&format!("{id}.toml")))?;
            let sig = match &key {
                Some(k) => {
                    let sk = sign::load_secret_key(k)?;
                    Some(
                        sign::sign_bytes(new_text.as_bytes(), &format!("{id}.toml"), &sk)
                            .map_err(|m| anyhow!("{}: {m}", k.display()))?,
                    )
                }
                None => None,
            };
            publish(&id, &new_text, sig, dir.as_deref(), &source, true)?;
            Ok(exit::CLEAN)
        }
    }
}

/// Where a command without `--dir` sends or reads entries: the source it names, if any.
fn source_of(source: &SourceArgs) -> anyhow::Result<Source> {
    if !source.is_given() {
        bail!("give --dir DIR or --collector URL --token-file FILE");
    }
    Source::open(source)
}

/// Writes an entry (and its signature) into `dir`, or registers it on the source.
pub(super) fn publish(
    id: &str,
    text: &str,
    sig: Option<String>,
    dir: Option<&Path>,
    source: &SourceArgs,
    approve: bool,
) -> anyhow::Result<()> {
    if let Some(dir) = dir {
        let path = dir.join(format!("{id}.toml"));
        super::util::write_atomic(&path, text.as_bytes())?;
        match &sig {
            Some(s) => super::util::write_atomic(&sign::sig_path(&path), s.as_bytes())?,
            None => {
                // A stale signature of the previous text would now fail: remove it.
                let _ = std::fs::remove_file(sign::sig_path(&path));
            }
        }
        eprintln!(
            "wrote {}{}",
            path.display(),
            if sig.is_some() {
                " (signed)"
            } else {
                " (unsigned)"
            }
        );
        return Ok(());
    }
    let doc = SignedDoc {
        manifest: None,
        toml: Some(text.to_string()),
        minisig: sig,
    };
    let stored = source_of(source)?.register_change(id, &doc, approve)?;
    eprintln!(
        "stored {id} on the collector; {} open event(s) re-classified",
        stored.reclassified
    );
    Ok(())
}

fn fetch_change(id: &str, source: &SourceArgs) -> anyhow::Result<String> {
    source_of(source)?
        .changes()?
        .into_iter()
        .find(|c| c.id == id)
        .map(|c| c.toml)
        .ok_or_else(|| anyhow!("change {id:?} not found on the collector"))
}

fn list_changes(
    dir: Option<&Path>,
    format: TableFormat,
    keys: &[sign::TrustedKey],
    source: &SourceArgs,
) -> anyhow::Result<u8> {
    let mut entries: Vec<(ChangeEntry, String)> = Vec::new();
    if let Some(d) = dir {
        let log = changelog::load_dir(
            d,
            &Policy {
                approver_keys: keys.to_vec(),
                require_signatures: false,
                allow_self_approval: true,
            },
        )?;
        // Listed, not hidden: the reader is told why these authorize nothing.
        for r in &log.refused {
            eprintln!("driftwatch: warning: {r}");
        }
        for e in log.entries {
            entries.push((e, "local".into()));
        }
    } else {
        for c in source_of(source)?.changes()? {
            let mut e = ChangeEntry::parse(&c.toml, Path::new(&format!("{}.toml", c.id)))?;
            e.verified_approver = c.verified_approver.clone();
            let signed = if c.minisig.is_some() {
                "signed"
            } else {
                "unsigned"
            };
            entries.push((e, signed.into()));
        }
    }
    let rows: Vec<serde_json::Value> = entries
        .iter()
        .map(|(e, origin)| {
            json!({
                "id": e.id, "summary": e.summary, "requested_by": e.requested_by,
                "approved_by": e.approval.as_ref().map(|(b, _)| b.clone()),
                "verified_approver": e.verified_approver,
                "approved_at": e.approval.as_ref().map(|(_, t)| timefmt::format_timestamp(*t)),
                "start": timefmt::format_timestamp(e.start), "end": timefmt::format_timestamp(e.end),
                "hosts": e.raw.hosts, "trees": e.raw.trees, "paths": e.raw.paths,
                // Where the ticket lives when imported (servicenow:CHG…), else where it was read.
                "source": e.raw.source.clone().unwrap_or_else(|| origin.clone()), "url": e.raw.url,
            })
        })
        .collect();
    match format {
        TableFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        TableFormat::Csv => {
            println!(
                "id,summary,requested_by,approved_by,verified_approver,approved_at,start,end,hosts,trees,paths"
            );
            for (e, _) in &entries {
                let f = [
                    e.id.clone(),
                    e.summary.clone(),
                    e.requested_by.clone(),
                    e.approval
                        .as_ref()
                        .map(|(b, _)| b.clone())
                        .unwrap_or_default(),
                    e.verified_approver.clone().unwrap_or_default(),
                    e.approval
                        .as_ref()
                        .map(|(_, t)| timefmt::format_timestamp(*t))
                        .unwrap_or_default(),
                    timefmt::format_timestamp(e.start),
                    timefmt::format_timestamp(e.end),
                    e.raw.hosts.join(" "),
                    e.raw.trees.join(" "),
                    e.raw.paths.join(" "),
                ];
                let line: Vec<String> = f.iter().map(|x| kpi::csv_field(x).into_owned()).collect();
                println!("{}", line.join(","));
            }
        }
        TableFormat::Text => {
            for (e, origin) in &entries {
                let approval = match &e.approval {
                    Some((by, at)) => format!(
                        "approved by {by} at {} ({})",
                        timefmt::format_timestamp(*at),
                        match &e.verified_approver {
                            Some(v) => format!("verified: {v}"),
                            None => "approver not verified".into(),
                        }
                    ),
                    None => "NOT APPROVED".into(),
                };
                let origin = e.raw.source.as_ref().unwrap_or(origin);
                println!(
                    "{}  {}  [{approval}; requested by {}; {} → {}; hosts {}; paths {}; {origin}]",
                    e.id,
                    e.summary,
                    e.requested_by,
                    timefmt::format_timestamp(e.start),
                    timefmt::format_timestamp(e.end),
                    e.raw.hosts.join(","),
                    e.raw.paths.join(",")
                );
            }
        }
    }
    Ok(exit::CLEAN)
}
