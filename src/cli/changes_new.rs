//! `driftwatch changes new` (DESIGN §12.2, "quick logging"): one command writes an entry,
//! signs it when approving, registers it in a change directory or on a collector, and prints
//! its id. The seeds ask for "a minute or two per change"; every missing field is named at once
//! so a hurried person fixes the line in one go.

use std::path::PathBuf;

use clap::Args;
use jiff::{SignedDuration, Timestamp};

use super::source::SourceArgs;
use crate::agent::config::AgentConfig;
use crate::judge::changelog::ChangeEntry;
use crate::sign;
use crate::util::exit;
use crate::util::timefmt;

/// Arguments of `changes new`.
#[derive(Debug, Args)]
pub struct ChangesNewArgs {
    /// What and why.
    #[arg(long)]
    pub summary: Option<String>,
    /// Path globs relative to the tree root.
    #[arg(long, num_args = 1.., value_name = "GLOB")]
    pub paths: Vec<String>,
    /// Host globs (default with --config: its host).
    #[arg(long, num_args = 1.., value_name = "GLOB")]
    pub hosts: Vec<String>,
    /// Tree globs (default with --config: its trees; else `*`).
    #[arg(long, num_args = 1.., value_name = "GLOB")]
    pub trees: Vec<String>,
    /// Window length from now (or from --start): `2h`, `30m`.
    #[arg(long = "for", value_name = "DURATION", conflicts_with = "end")]
    pub duration: Option<String>,
    /// Window start (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub start: Option<String>,
    /// Window end (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub end: Option<String>,
    /// Who asks for the change.
    #[arg(long, value_name = "NAME")]
    pub requested_by: Option<String>,
    /// Approve it now (needs --key and --by): the entry is signed with the key.
    #[arg(long)]
    pub approve: bool,
    /// Approver's secret key.
    #[arg(long, value_name = "KEY", requires = "approve")]
    pub key: Option<PathBuf>,
    /// Approver name (must be the name bound to the key where `[trust] approvers` is used).
    #[arg(long = "by", value_name = "NAME", requires = "approve")]
    pub by: Option<String>,
    /// Ticket id (default: `CHG-YYYYMMDD-HHMMSS-xxxxxx`, unique).
    #[arg(long)]
    pub id: Option<String>,
    /// Change directory to write into (default with --config: its `[changes] dir`).
    #[arg(long, value_name = "DIR", conflicts_with = "collector")]
    pub dir: Option<PathBuf>,
    /// Or a collector (admin token).
    #[arg(long, value_name = "URL")]
    pub collector: Option<String>,
    /// File holding an admin token, with --collector.
    #[arg(long, value_name = "FILE", requires = "collector")]
    pub token_file: Option<PathBuf>,
    /// Agent config giving the defaults: hosts (its host), trees (its trees), dir.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Why `changes new` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum NewEntryError {
    /// Fields nobody gave and no config could default; all of them, in one line.
    #[error("changes new: missing {}", .0.join(", "))]
    Missing(Vec<String>),
    /// A field has a bad value.
    #[error("changes new: {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The agent config given with --config does not load.
    #[error("{}", .0.join("; "))]
    Config(Vec<String>),
    /// The built entry fails validation (a bad glob, say).
    #[error(transparent)]
    Entry(#[from] crate::judge::changelog::ChangeLogError),
}

/// What the command settled on, before writing.
#[derive(Debug)]
pub struct NewEntry {
    /// Ticket id.
    pub id: String,
    /// The TOML text, exactly as signed and registered.
    pub text: String,
}

/// A readable id unique enough for humans typing it and for files: second-resolution time plus
/// 24 bits hashed from the clock's nanoseconds, the process id and a counter (two entries in
/// the same second still differ, short of a 1-in-16-million clash, and an existing `ID.toml`
/// is never overwritten).
pub fn generate_id(now: Timestamp) -> String {
    let civil = now.to_zoned(jiff::tz::TimeZone::UTC);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let wall = Timestamp::now().as_nanosecond();
    let seed = format!("{}-{wall}-{}-{n}", now.as_nanosecond(), std::process::id());
    let h = blake3::hash(seed.as_bytes());
    format!(
        "CHG-{}-{}",
        civil.strftime("%Y%m%d-%H%M%S"),
        hex::encode(&h.as_bytes()[..3])
    )
}

/// Builds the entry text from the arguments and the config's defaults; `now` is the default
/// start and the approval time.
pub fn build(
    a: &ChangesNewArgs,
    cfg: Option<&AgentConfig>,
    now: Timestamp,
) -> Result<NewEntry, NewEntryError> {
    let mut missing = Vec::new();
    let summary = a.summary.clone().filter(|s| !s.trim().is_empty());
    if summary.is_none() {
        missing.push("--summary".to_string());
    }
    if a.paths.is_empty() {
        missing.push("--paths".into());
    }
    let hosts = match (&a.hosts[..], cfg) {
        ([], Some(c)) => vec![c.host.clone()],
        ([], None) => {
            missing.push("--hosts (or --config for this host)".into());
            Vec::new()
        }
        (h, _) => h.to_vec(),
    };
    let trees = match (&a.trees[..], cfg) {
        ([], Some(c)) if !c.trees.is_empty() => c.trees.iter().map(|t| t.name.clone()).collect(),
        ([], _) => vec!["*".to_string()],
        (t, _) => t.to_vec(),
    };
    let requested_by = a.requested_by.clone().filter(|s| !s.trim().is_empty());
    if requested_by.is_none() {
        missing.push("--requested-by".into());
    }
    let time = |field: &'static str, v: &str| {
        timefmt::parse_timestamp(v).map_err(|message| NewEntryError::Invalid { field, message })
    };
    let start = match &a.start {
        Some(s) => Some(time("--start", s)?),
        None if a.duration.is_some() => Some(now),
        None => None,
    };
    let end = match (&a.end, &a.duration, start) {
        (Some(e), _, _) => Some(time("--end", e)?),
        (None, Some(d), Some(s)) => {
            let d = timefmt::parse_duration(d).map_err(|message| NewEntryError::Invalid {
                field: "--for",
                message,
            })?;
            let d = SignedDuration::try_from(d).map_err(|e| NewEntryError::Invalid {
                field: "--for",
                message: e.to_string(),
            })?;
            Some(s.checked_add(d).map_err(|e| NewEntryError::Invalid {
                field: "--for",
                message: e.to_string(),
            })?)
        }
        _ => None,
    };
    if start.is_none() || end.is_none() {
        missing.push("the window (--for DURATION, or --start TIME --end TIME)".into());
    }
    if a.approve {
        if a.key.is_none() {
            missing.push("--key (the approver's secret key, with --approve)".into());
        }
        if a.by.as_deref().is_none_or(|b| b.trim().is_empty()) {
            missing.push("--by (the approver's name, with --approve)".into());
        }
    }
    if !missing.is_empty() {
        return Err(NewEntryError::Missing(missing));
    }
    let (Some(summary), Some(requested_by), Some(start), Some(end)) =
        (summary, requested_by, start, end)
    else {
        unreachable!("every missing field was reported above");
    };
    let id = a.id.clone().unwrap_or_else(|| generate_id(now));
    let list = |v: &[String]| toml::Value::Array(v.iter().map(|s| s.clone().into()).collect());
    let mut t = toml::Table::new();
    t.insert("id".into(), id.clone().into());
    t.insert("summary".into(), summary.into());
    t.insert("requested_by".into(), requested_by.into());
    if a.approve
        && let Some(by) = &a.by
    {
        t.insert("approved_by".into(), by.trim().to_string().into());
        t.insert("approved_at".into(), timefmt::format_timestamp(now).into());
    }
    t.insert("hosts".into(), list(&hosts));
    t.insert("trees".into(), list(&trees));
    t.insert("paths".into(), list(&a.paths));
    t.insert("start".into(), timefmt::format_timestamp(start).into());
    t.insert("end".into(), timefmt::format_timestamp(end).into());
    let text = toml::to_string(&t).map_err(|e| NewEntryError::Invalid {
        field: "entry",
        message: e.to_string(),
    })?;
    // Every rule a reader of the entry applies, applied before anything is written.
    let entry = ChangeEntry::parse(&text, std::path::Path::new(&format!("{id}.toml")))?;
    let allow_self = cfg.is_some_and(|c| c.allow_self_approval);
    if entry.is_self_approved() && !allow_self {
        return Err(NewEntryError::Invalid {
            field: "--by",
            message: format!(
                "{:?} also requested it (separation of duties: someone else approves)",
                entry.requested_by
            ),
        });
    }
    Ok(NewEntry { id, text })
}

/// `driftwatch changes new`.
pub fn run(a: ChangesNewArgs) -> anyhow::Result<u8> {
    let cfg = match &a.config {
        Some(p) => Some(AgentConfig::load(p).map_err(NewEntryError::Config)?),
        None => None,
    };
    let dir = a.dir.clone().or_else(|| match &a.collector {
        Some(_) => None,
        None => cfg.as_ref().and_then(|c| c.changes_dir.clone()),
    });
    if dir.is_none() && a.collector.is_none() {
        return Err(NewEntryError::Missing(vec![
            "where to register it (--dir DIR, or --collector URL --token-file FILE, or --config with a [changes] dir)".into(),
        ])
        .into());
    }
    let now = Timestamp::now();
    let new = build(&a, cfg.as_ref(), now)?;
    let sig = match &a.key {
        Some(k) if a.approve => {
            let sk = sign::load_secret_key(k)?;
            Some(
                sign::sign_bytes(new.text.as_bytes(), &format!("{}.toml", new.id), &sk).map_err(
                    |message| sign::SignError::BadKey {
                        path: k.clone(),
                        what: "secret key",
                        message,
                    },
                )?,
            )
        }
        _ => None,
    };
    if let Some(d) = &dir {
        let path = d.join(format!("{}.toml", new.id));
        // A generated id never collides; a given one must not silently replace a ticket.
        if path.exists() {
            return Err(NewEntryError::Invalid {
                field: "--id",
                message: format!(
                    "{} exists (use `changes approve` to change an entry)",
                    path.display()
                ),
            }
            .into());
        }
    }
    let source = SourceArgs {
        collector: a.collector.clone(),
        token_file: a.token_file.clone(),
        db: None,
        config: None,
    };
    super::changes::publish(&new.id, &new.text, sig, dir.as_deref(), &source, false)?;
    println!("{}", new.id);
    Ok(exit::CLEAN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ChangesNewArgs,
    }

    fn args(v: &[&str]) -> ChangesNewArgs {
        T::parse_from(std::iter::once("x").chain(v.iter().copied())).a
    }

    fn now() -> Timestamp {
        "2026-12-01T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn every_missing_field_is_named_in_one_line() {
        let err = build(&args(&["--approve"]), None, now())
            .unwrap_err()
            .to_string();
        for want in [
            "--summary",
            "--paths",
            "--hosts",
            "--requested-by",
            "--for",
            "--key",
            "--by",
        ] {
            assert!(err.contains(want), "{err} should name {want}");
        }
        assert!(!err.contains('\n'));
    }

    #[test]
    fn for_gives_a_window_from_now_and_the_id_is_readable() {
        let a = args(&[
            "--summary",
            "restart",
            "--paths",
            "app/**",
            "etc/x",
            "--hosts",
            "web-*",
            "--for",
            "2h",
            "--requested-by",
            "alice",
        ]);
        let n = build(&a, None, now()).unwrap();
        let e = ChangeEntry::parse(&n.text, std::path::Path::new("x.toml")).unwrap();
        assert_eq!(timefmt::format_timestamp(e.start), "2026-12-01T10:00:00Z");
        assert_eq!(timefmt::format_timestamp(e.end), "2026-12-01T12:00:00Z");
        assert_eq!(e.raw.paths, ["app/**", "etc/x"]);
        assert_eq!(e.raw.trees, ["*"]);
        assert!(e.approval.is_none());
        assert!(n.id.starts_with("CHG-20261201-100000-"), "{}", n.id);
        assert_eq!(n.id.len(), "CHG-20261201-100000-abcdef".len());
        assert_ne!(
            generate_id(now()),
            generate_id(now()),
            "unique within a second"
        );
    }

    #[test]
    fn self_approval_is_refused_before_writing() {
        let a = args(&[
            "--summary",
            "s",
            "--paths",
            "a",
            "--hosts",
            "h",
            "--for",
            "1h",
            "--requested-by",
            "bob",
            "--approve",
            "--key",
            "k",
            "--by",
            "bob",
        ]);
        let err = build(&a, None, now()).unwrap_err().to_string();
        assert!(err.contains("separation of duties"), "{err}");
    }
}
