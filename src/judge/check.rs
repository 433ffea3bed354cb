//! One-shot check: a tree against a manifest and the change log (`driftwatch check`).

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::judge::changelog::{self, ChangeLog, ChangeLogError, Policy};
use crate::judge::classify::{self, Context, Observation, Status};
use crate::judge::diff;
use crate::judge::manifest::{Manifest, ManifestError};
use crate::judge::report::{Report, ReportedChange, Summary};
use crate::scan::snapshot::{self, ScanError, ScanOptions};
use crate::scan::walk::WalkOptions;
use crate::sign::{self, SignError};
use crate::util::glob;
use crate::util::timefmt;

/// Everything `driftwatch check` takes.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// The deployed tree.
    pub root: PathBuf,
    /// The manifest file.
    pub manifest: PathBuf,
    /// Release keys; when given, the manifest must verify against one of them.
    pub pubkeys: Vec<PathBuf>,
    /// The change log directory.
    pub changes: Option<PathBuf>,
    /// Approver keys; when given, each change entry must verify against one of them.
    pub approver_pubkeys: Vec<PathBuf>,
    /// Keys bound to one approver each (`--approver NAME=PUB`): an entry they sign must name
    /// that person in `approved_by`.
    pub approvers: Vec<crate::sign::ApproverBinding>,
    /// Host name the change entries are matched against.
    pub host: String,
    /// Extra exclusions.
    pub exclude: Vec<String>,
    /// Accept entries approved by their requester.
    pub allow_self_approval: bool,
    /// Hashing threads (0 = one per core).
    pub threads: usize,
    /// Progress bar, on a TTY.
    pub progress: Option<indicatif::ProgressBar>,
}

/// A check could not reach a verdict.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The manifest is unreadable or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A key or the manifest signature is bad.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// A change entry is malformed.
    #[error(transparent)]
    ChangeLog(#[from] ChangeLogError),
    /// The tree could not be scanned (the error names the root).
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// A bad `--exclude` glob.
    #[error("--exclude: {0}")]
    Exclude(String),
}

/// A verdict, plus the warnings to print on stderr (unsigned inputs, refused entries).
#[derive(Debug)]
pub struct CheckOutcome {
    /// The report.
    pub report: Report,
    /// One line each.
    pub warnings: Vec<String>,
}

/// Runs a one-shot check. The observation window is (manifest `created_at`, now].
pub fn run(opts: &CheckOptions) -> Result<CheckOutcome, CheckError> {
    let mut warnings = Vec::new();
    let log = load_changes(opts, &mut warnings)?;
    glob::path_set(&opts.exclude).map_err(CheckError::Exclude)?;
    let bytes = std::fs::read(&opts.manifest).map_err(|e| ManifestError::Read {
        path: opts.manifest.clone(),
        source: e,
    })?;
    // The manifest's own exclusions apply on top of --exclude, from the walk on (an excluded
    // path is never hashed). A canonical manifest gives them from its first line, so the rest
    // is still verified and parsed while the tree is hashed; any other is loaded first.
    let (early, release_exclude) = match Manifest::header_exclude(&bytes) {
        Some(globs) => (None, globs),
        None => {
            let mut w = Vec::new();
            let loaded = load_manifest_bytes(&bytes, &opts.manifest, &opts.pubkeys, &mut w)?;
            let globs = loaded.0.exclude.clone();
            (Some((loaded, w)), globs)
        }
    };
    let all: Vec<&str> = opts
        .exclude
        .iter()
        .chain(&release_exclude)
        .map(String::as_str)
        .collect();
    // Both lists compiled alone above / in the manifest parse: the union compiles too.
    let exclude = glob::path_set(&all).map_err(CheckError::Exclude)?;
    let walk = WalkOptions {
        exclude: exclude.clone(),
        skip: own_files(&opts.root, &opts.manifest),
        cross_filesystems: false,
    };
    let scan_opts = ScanOptions {
        walk,
        threads: opts.threads,
        progress: opts.progress.clone(),
        ..ScanOptions::default()
    };
    // Reading, verifying and parsing a large manifest is serial work: do it while the tree is
    // being hashed instead of before. The scan never looks at the manifest.
    let (loaded, snap) = std::thread::scope(|s| {
        let manifest = s.spawn(|| match early {
            Some(done) => Ok(done),
            None => {
                let mut w = Vec::new();
                load_manifest_bytes(&bytes, &opts.manifest, &opts.pubkeys, &mut w).map(|m| (m, w))
            }
        });
        let snap = snapshot::scan(&opts.root, &scan_opts);
        let loaded = manifest
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (loaded, snap)
    });
    let ((manifest, manifest_signed), manifest_warnings) = loaded?;
    warnings.splice(0..0, manifest_warnings);
    let snap = snap?;
    if let Some(p) = &opts.progress {
        p.finish_and_clear();
    }

    let now = Timestamp::now();
    let approved = manifest
        .entries
        .iter()
        .filter(|e| !exclude.is_match(e.path.as_path()));
    let d = diff::diff(approved.map(|e| (&e.path, &e.state)), &snap.entries);
    let ctx = Context {
        host: &opts.host,
        tree: &manifest.tree,
        exclude: &exclude,
        entries: &log.entries,
        now,
    };
    let t0 = manifest.created_at;
    let mut summary = Summary {
        excluded: snap.stats.excluded,
        ..Summary::default()
    };
    let mut changes = Vec::with_capacity(d.changes.len());
    for change in d.changes {
        // ctime is the kernel's record of the last change and cannot be set back from user
        // space: the best evidence a one-shot check has of when the change happened.
        let observed_at = change
            .ctime_ns
            .map(|ns| {
                timefmt::from_unix(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
            })
            // Clock skew can put the manifest's created_at after now: never panic on it.
            .map_or(now, |t| t.max(t0).min(now));
        let obs = Observation {
            t0,
            t: now,
            observed_at,
        };
        let status = classify::classify(&change, &obs, None, &ctx);
        summary.count(&change, &status);
        changes.push(ReportedChange { change, status });
    }
    let removed = summary.removed;
    let total = snap.entries.len() as u64 + removed;
    let violations = summary.unauthorized + summary.unverifiable;
    let report = Report {
        tree: manifest.tree.clone(),
        root: opts.root.clone(),
        host: opts.host.clone(),
        release: manifest.release.clone(),
        manifest_signed,
        scanned: snap.stats.clone(),
        summary,
        vetted_ratio: if total == 0 {
            1.0
        } else {
            (total - violations) as f64 / total as f64
        },
        changes,
    };
    Ok(CheckOutcome { report, warnings })
}

/// Reads the manifest once, verifies those bytes when keys are given, then parses them.
pub fn load_manifest(
    path: &Path,
    pubkeys: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Result<(Manifest, bool), CheckError> {
    let bytes = std::fs::read(path).map_err(|e| ManifestError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    load_manifest_bytes(&bytes, path, pubkeys, warnings)
}

/// [`load_manifest`] on bytes already read from `path`.
fn load_manifest_bytes(
    bytes: &[u8],
    path: &Path,
    pubkeys: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Result<(Manifest, bool), CheckError> {
    let signed = if pubkeys.is_empty() {
        warnings.push(format!(
            "{}: signature not checked (no --pubkey given): running unsigned",
            path.display()
        ));
        false
    } else {
        let keys = sign::load_public_keys(pubkeys)?;
        sign::verify_bytes(bytes, path, &keys)?;
        true
    };
    Ok((Manifest::parse(bytes, path)?, signed))
}

fn load_changes(opts: &CheckOptions, warnings: &mut Vec<String>) -> Result<ChangeLog, CheckError> {
    let Some(dir) = &opts.changes else {
        return Ok(ChangeLog::default());
    };
    let mut approver_keys = sign::load_public_keys(&opts.approver_pubkeys)?;
    for a in &opts.approvers {
        approver_keys.push(sign::load_public_key(&a.key)?.bound_to(&a.name));
    }
    if approver_keys.is_empty() {
        warnings.push(format!(
            "{}: change entries not signature-checked (no --approver-pubkey or --approver given)",
            dir.display()
        ));
    }
    let policy = Policy {
        approver_keys,
        require_signatures: false,
        allow_self_approval: opts.allow_self_approval,
    };
    let log = changelog::load_dir(dir, &policy)?;
    warnings.extend(log.refused.iter().cloned());
    Ok(log)
}

/// The manifest and its signature are not part of the deployed code when they live inside it.
fn own_files(root: &Path, manifest: &Path) -> Vec<PathBuf> {
    let (Ok(root_abs), Ok(m_abs)) = (root.canonicalize(), manifest.canonicalize()) else {
        return Vec::new();
    };
    let Ok(rel) = m_abs.strip_prefix(&root_abs) else {
        return Vec::new();
    };
    let in_walk = root.join(rel);
    vec![sign::sig_path(&in_walk), in_walk]
}

impl Summary {
    fn count(&mut self, change: &diff::Change, status: &Status) {
        use diff::ChangeKind::*;
        match change.kind {
            Added => self.added += 1,
            Removed => self.removed += 1,
            Modified => self.modified += 1,
            Metadata => self.metadata += 1,
            TypeChanged => self.type_changed += 1,
        }
        match status {
            s if s.is_authorized() => self.authorized += 1,
            Status::Unauthorized => self.unauthorized += 1,
            Status::Unverifiable => self.unverifiable += 1,
            _ => self.excluded += 1,
        }
    }
}
