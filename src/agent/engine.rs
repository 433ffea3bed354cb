//! The agent's engine: owns the trees' state and the spool, runs scans and real-time updates.
//!
//! Synchronous on purpose: hashing is CPU and disk work, kept off the async runtime. The daemon
//! drives it from one thread; the one-shot `scan` command calls it directly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jiff::Timestamp;

use super::config::{AgentConfig, TreeConfig};
use super::evidence::Evidence;
use super::observe::{Files, Observer, Scope};
use super::spool::{Spool, SpoolError};
use super::staging::Staging;
use super::state::{self, TreeState};
use super::table::Table;
use super::tracker::{self, Pending, TREE_ROOT, Tracker};
use crate::event::{ChangeEvent, ScanSummary};
use crate::judge::changelog::{self, ChangeEntry};
use crate::judge::classify::Status;
use crate::judge::manifest::Manifest;
use crate::scan::snapshot::{self, Entry};
use crate::sign;
use crate::util::pathbytes::RelPath;

/// Why a pass over a tree did not complete. Nothing of such a pass was taken as reported: its
/// changes are observed again by the next pass.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The observer could not look at the tree at all.
    #[error(transparent)]
    Observe(#[from] snapshot::ScanError),
    /// The tree root leads nowhere; reported as one `unverifiable` change of the tree.
    #[error("{0}: the tree is unverifiable until its root leads to a directory again")]
    RootUnreadable(crate::scan::walk::WalkError),
    /// The tree root leads nowhere, and the spool had no room to say so yet.
    #[error("{0} (not reported yet: the spool is full)")]
    RootUnreported(crate::scan::walk::WalkError),
    /// The spool could not be written.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The tree's state could not be saved (the pass was undone).
    #[error("{}: {source}", dir.display())]
    Save {
        /// The tree's state dir.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Why a manifest file was not taken in force (logged once per distinct reason).
#[derive(Debug, thiserror::Error)]
enum ManifestRefused {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Signature(#[from] sign::SignError),
    #[error(transparent)]
    Parse(#[from] crate::judge::manifest::ManifestError),
    #[error("{}: tree: {got:?} is not {want:?}", path.display())]
    OtherTree {
        path: PathBuf,
        got: String,
        want: String,
    },
}

/// One tree at run time.
pub struct TreeRuntime {
    /// Its settings.
    pub cfg: TreeConfig,
    /// Its remembered state.
    pub state: TreeState,
    dir: PathBuf,
    warned: BTreeSet<String>,
    /// Stat stamps of the manifest file and its signature when last read: unchanged files are
    /// not read, verified and parsed again (a large manifest costs real time on every pass).
    manifest_stamp: Option<[Option<Stamp>; 2]>,
    /// The trusted keys changed (SIGHUP): the manifest in force is verified again, for the log.
    reverify: bool,
    /// A deploy whose full scan has not committed yet (the scan failed, or is still to run):
    /// it stays a deploy until a pass commits it.
    pending_deploy: Option<String>,
    /// How long the last full scan took (real-time summaries repeat it).
    scan_seconds: f64,
    /// A deploy's staged copies, held back (see [`super::staging`]).
    staging: Staging,
}

impl TreeRuntime {
    /// What an observer of this tree needs; `skip` is [`own_files`] of it.
    fn scope<'a>(&'a self, skip: &'a [PathBuf], threads: usize) -> Scope<'a> {
        Scope {
            root: &self.cfg.root,
            exclude: &self.cfg.exclude,
            skip,
            cross_filesystems: self.cfg.cross_filesystems,
            threads,
        }
    }

    /// Puts the tree's effective exclusions (the config's plus the manifest in force's) in
    /// `cfg.exclude`, which every walk, judgement and summary of the tree reads. Called
    /// whenever either side changes: a reload, a state loaded, a manifest come into force.
    fn apply_manifest_exclude(&mut self) {
        self.cfg.exclude = self.cfg.with_manifest_exclude(&self.state.manifest_exclude);
    }
}

/// What a look at a tree's manifest file found.
#[derive(Debug, PartialEq, Eq)]
enum NewManifest {
    /// Nothing new in force.
    Unchanged,
    /// The tree's first manifest came into force.
    First,
    /// A newer manifest came into force: a deploy of this release.
    Deploy(String),
}

/// Size, mtime, ctime (ns), inode, device: what changes when a file is rewritten or replaced.
type Stamp = (u64, i64, i64, u64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.size(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
        m.ctime_nsec() + m.ctime() * 1_000_000_000,
        m.ino(),
        m.dev(),
    ))
}

/// What one observation pass produced, for reports.
#[derive(Debug, Default, Clone)]
pub struct PassResult {
    /// Events spooled, numbered.
    pub events: Vec<ChangeEvent>,
    /// Events that did not fit in the spool.
    pub dropped: u64,
    /// The scan summary (full scans only).
    pub summary: Option<ScanSummary>,
    /// Files, dirs, bytes seen (full scans).
    pub scanned: (u64, u64, u64),
}

/// The engine.
pub struct Engine {
    /// Settings.
    pub cfg: AgentConfig,
    /// Trees.
    pub trees: Vec<TreeRuntime>,
    /// The spool, shared with the uplink.
    pub spool: Arc<Mutex<Spool>>,
    entries: Vec<ChangeEntry>,
    /// Evidence is copied on its own thread: a burst of new files must not delay real time.
    evidence: Option<(
        std::sync::mpsc::Sender<EvidenceJob>,
        std::thread::JoinHandle<()>,
    )>,
    /// Latest scan summary per tree, sent with the next batch.
    pub summaries: BTreeMap<String, ScanSummary>,
    /// Woken as soon as events are spooled (the uplink waits on it).
    pub spooled: Option<Arc<tokio::sync::Notify>>,
    /// The change directory's listing with stat stamps when it was last loaded.
    changes_stamp: Option<Vec<(PathBuf, Option<Stamp>)>>,
    /// How trees are looked at (files on disk; see [`super::observe`]).
    observer: Box<dyn Observer>,
    /// Hold back a deploy's staging copies (see [`super::staging`]): only where something will
    /// judge them later (the daemon calls [`Engine::judge_held`]); a one-shot scan reports all.
    pub hold_staging: bool,
}

/// One file to copy into the evidence store.
type EvidenceJob = (PathBuf, PathBuf, String, ChangeEvent);

fn start_evidence(
    ev: Evidence,
) -> (
    std::sync::mpsc::Sender<EvidenceJob>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<EvidenceJob>();
    let handle = std::thread::Builder::new()
        .name("evidence".into())
        .spawn(move || {
            for (root, abs, host, e) in rx {
                match ev.capture(&root, &abs, &host, &e) {
                    Ok(blob) => {
                        tracing::info!(path = %e.path, blob = %blob.display(), "evidence kept")
                    }
                    Err(why) => tracing::warn!(path = %e.path, %why, "no evidence kept"),
                }
            }
        })
        .expect("spawn the evidence thread");
    (tx, handle)
}

impl Drop for Engine {
    /// Lets the evidence thread finish what it was given (a one-shot scan exits right after).
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.evidence.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

impl Engine {
    /// Loads every tree's state (rebuilding what is corrupt, with a log line) and opens the spool.
    pub fn new(cfg: AgentConfig) -> Result<Engine, SpoolError> {
        let spool = Spool::open(&cfg.state_dir.join("spool"), cfg.spool_max)?;
        if spool.recovered_tail > 0 {
            tracing::warn!(
                bytes = spool.recovered_tail,
                "spool: cut a torn tail left by a crash"
            );
        }
        let evidence = Evidence::new(
            &cfg.state_dir,
            cfg.evidence_max_file,
            cfg.evidence_max_total,
        );
        let mut e = Engine {
            trees: Vec::new(),
            spool: Arc::new(Mutex::new(spool)),
            entries: Vec::new(),
            evidence: Some(start_evidence(evidence)),
            summaries: BTreeMap::new(),
            spooled: None,
            changes_stamp: None,
            hold_staging: false,
            observer: Box::new(Files),
            cfg,
        };
        e.sync_trees();
        e.recover_outboxes()?;
        Ok(e)
    }

    /// Replaces the settings (SIGHUP): trees added are loaded, trees removed are dropped.
    pub fn reload(&mut self, cfg: AgentConfig) {
        self.spool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_max(cfg.spool_max);
        let caps = |c: &AgentConfig| (c.evidence_max_file, c.evidence_max_total);
        if caps(&cfg) != caps(&self.cfg) {
            // The thread finishes the copies it was given under the old caps, then stops.
            if let Some((tx, handle)) = self.evidence.take() {
                drop(tx);
                let _ = handle.join();
            }
            let ev = Evidence::new(
                &cfg.state_dir,
                cfg.evidence_max_file,
                cfg.evidence_max_total,
            );
            self.evidence = Some(start_evidence(ev));
        }
        self.cfg = cfg;
        self.changes_stamp = None;
        self.sync_trees();
    }

    fn sync_trees(&mut self) {
        let wanted: Vec<TreeConfig> = self.cfg.trees.clone();
        self.trees.retain(|t| {
            wanted
                .iter()
                .any(|w| w.name == t.cfg.name && w.root == t.cfg.root)
        });
        for w in wanted {
            if let Some(t) = self.trees.iter_mut().find(|t| t.cfg.name == w.name) {
                t.cfg = w;
                t.apply_manifest_exclude();
                // Keys may have changed: judge the manifest again.
                t.manifest_stamp = None;
                t.reverify = true;
                continue;
            }
            let dir = super::layout::tree_dir(&self.cfg.state_dir, &w.name);
            let mut state = TreeState::load(&dir).unwrap_or_else(|why| {
                tracing::warn!(tree = %w.name, %why, "state unreadable: re-baselining against the manifest");
                TreeState::default()
            });
            restore_approved(&dir, &mut state);
            tracing::info!(tree = %w.name, root = %w.root.display(), release = ?state.release, "watching tree");
            let mut t = TreeRuntime {
                cfg: w,
                state,
                dir,
                warned: BTreeSet::new(),
                manifest_stamp: None,
                reverify: false,
                pending_deploy: None,
                scan_seconds: 0.0,
                staging: Staging::default(),
            };
            t.apply_manifest_exclude();
            self.trees.push(t);
        }
    }

    fn load_changes(&mut self) {
        let dirs = self.cfg.change_dirs();
        if dirs.is_empty() {
            return;
        }
        // Listing and stat'ing the directories is cheap; reading and verifying every entry is not.
        let mut listing: Vec<(PathBuf, Option<Stamp>)> = dirs
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| (e.path(), stamp(&e.path())))
            })
            .collect();
        listing.sort();
        if self.changes_stamp.as_ref() == Some(&listing) {
            return;
        }
        self.changes_stamp = Some(listing);
        let mut entries: Vec<ChangeEntry> = Vec::new();
        let fetched = super::layout::fetched_changes(&self.cfg.state_dir);
        for dir in &dirs {
            let mut policy = self.cfg.change_policy();
            // What the collector hands out counts only when signed by a key this agent trusts.
            policy.require_signatures |= *dir == fetched;
            match changelog::load_dir(dir, &policy) {
                Ok(log) => {
                    for r in &log.refused {
                        tracing::warn!(refused = %r, "change entry refused");
                    }
                    // A ticket kept locally wins over the collector's copy of it.
                    for e in log.entries {
                        if !entries.iter().any(|x| x.id == e.id) {
                            entries.push(e);
                        }
                    }
                }
                // No entry fetched yet.
                Err(changelog::ChangeLogError::Io { path, source })
                    if path == *dir && source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(error = %e, "change log unreadable; keeping the entries loaded before");
                    return;
                }
            }
        }
        self.entries = entries;
    }

    /// When a deploy's held-back staging copy is next due to be judged (see
    /// [`super::staging`]); the daemon then calls [`Engine::judge_held`].
    pub fn next_held_due(&self) -> Option<std::time::Instant> {
        self.trees.iter().filter_map(|t| t.staging.next_due()).min()
    }

    /// Judges the held-back paths that are due, as real-time updates.
    pub fn judge_held(&mut self) {
        let now = std::time::Instant::now();
        for i in 0..self.trees.len() {
            let due = self.trees[i].staging.due(now);
            if due.is_empty() {
                continue;
            }
            let root = self.trees[i].cfg.root.clone();
            let paths: BTreeSet<PathBuf> = due.iter().map(|p| root.join(p.as_path())).collect();
            if let Err(e) = self.touched(i, &paths) {
                tracing::error!(tree = %self.trees[i].cfg.name, error = %e, "judging held-back paths failed");
            }
        }
    }

    /// Index of a tree by name.
    pub fn tree_index(&self, name: &str) -> Option<usize> {
        self.trees.iter().position(|t| t.cfg.name == name)
    }

    /// A full scan of one tree (`rehash` ignores the stat cache).
    pub fn full_scan(&mut self, i: usize, rehash: bool) -> Result<PassResult, EngineError> {
        self.load_changes();
        let news = self.refresh_manifest(i);
        self.scan_tree(i, rehash, news)
    }

    fn scan_tree(
        &mut self,
        i: usize,
        rehash: bool,
        news: NewManifest,
    ) -> Result<PassResult, EngineError> {
        // A first manifest for a tree observed without one: every path is judged against it, as
        // in a first observation (the baseline vetted nothing). Kept in the state until a pass
        // commits everything it found, so a full spool or a crash cannot skip it.
        {
            let t = &mut self.trees[i];
            if matches!(news, NewManifest::First) && t.state.observed {
                tracing::info!(tree = %t.cfg.name, "first manifest for a baselined tree: judging every path against it");
                // The baseline's changes happened at some time before: the window starts at the
                // manifest's creation, or at the last look if that was earlier.
                let created = t.state.in_force().map(|m| m.created_at);
                let t0 = match (t.state.last_scan, created) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b).unwrap_or_else(Timestamp::now),
                };
                t.state.rejudge = Some(state::Rejudge {
                    from: RelPath::from_bytes(Vec::new()),
                    t0,
                });
            }
        }
        let rejudge_from = self.trees[i].state.rejudge.as_ref().map(|r| r.from.clone());
        if let NewManifest::Deploy(release) = news {
            self.trees[i].pending_deploy = Some(release);
        }
        let deploy = self.trees[i].pending_deploy.clone();
        let started = Instant::now();
        let t = &self.trees[i];
        let cache: Option<Arc<dyn snapshot::StatCache>> = if rehash || !t.state.observed {
            None
        } else {
            Some(t.state.table.clone())
        };
        let skip = own_files(&t.cfg);
        let scope = t.scope(&skip, self.cfg.threads);
        // The cache's reference is given away and dropped with the scan, so committing does not
        // copy the table.
        let snap = match self.observer.full(&scope, cache) {
            Ok(snap) => snap,
            Err(snapshot::ScanError::Walk(e)) => return self.root_unreadable(i, e),
            Err(e) => return Err(e.into()),
        };
        let scanned = (snap.stats.files, snap.stats.dirs, snap.stats.bytes);
        let observed = if t.state.observed && rejudge_from.is_none() {
            // Only what differs from the last observation is judged: a re-scan of an unchanged
            // tree allocates nothing per path.
            differing(&t.state.table, snap.entries)
        } else {
            // The first observation: every approved path is judged, the missing ones too (and,
            // judging a baseline again, the paths it saw that are gone). A merge of two sorted
            // lists: no second index of a whole tree's entries.
            let table = &t.state.table;
            let mut all: Vec<(RelPath, Option<Entry>)> = Vec::with_capacity(snap.entries.len());
            let mut scanned = snap.entries.into_iter().peekable();
            table.walk_from(b"", |p, _| {
                while let Some(e) = scanned.next_if(|e| e.path.as_bytes() < p) {
                    all.push((e.path.clone(), Some(e)));
                }
                match scanned.next_if(|e| e.path.as_bytes() == p) {
                    Some(e) => all.push((e.path.clone(), Some(e))),
                    None => all.push((RelPath::from_bytes(p), None)),
                }
                true
            });
            all.extend(scanned.map(|e| (e.path.clone(), Some(e))));
            all.into_iter()
                .filter(|(p, now)| match &rejudge_from {
                    // Before the point a judgement of the baseline reached: what changed only.
                    Some(from) if t.state.observed && p < from => {
                        match (table.observed(p.as_bytes()), now) {
                            (None, None) => false,
                            (Some(old), Some(e)) => !old.matches(e),
                            _ => true,
                        }
                    }
                    _ => true,
                })
                .collect()
        };
        let now = Timestamp::now();
        let mut result = self.pass(i, observed, now, deploy.as_deref(), false)?;
        let t = &mut self.trees[i];
        t.pending_deploy = None;
        t.state.last_scan = Some(now);
        if rehash {
            t.state.last_full_rehash = Some(now);
        }
        let tracker = Tracker {
            tree: &t.cfg,
            host: &self.cfg.host,
            entries: &self.entries,
            has_manifest: t.state.in_force().is_some(),
        };
        t.scan_seconds = started.elapsed().as_secs_f64();
        let summary = tracker.summary(&t.state, now, t.scan_seconds);
        t.state.save(&t.dir).map_err(|source| EngineError::Save {
            dir: t.dir.clone(),
            source,
        })?;
        self.summaries.insert(t.cfg.name.clone(), summary.clone());
        // A full scan frees a whole tree's worth of temporary entries: give them back to the
        // system instead of keeping the peak as resident memory.
        super::release_free_memory();
        result.summary = Some(summary);
        result.scanned = scanned;
        Ok(result)
    }

    /// The exclusions of the manifest in force, per tree (for the heartbeat's coverage).
    pub fn manifest_exclusions(&self) -> BTreeMap<String, Vec<String>> {
        self.trees
            .iter()
            .map(|t| (t.cfg.name.clone(), t.state.manifest_exclude.clone()))
            .collect()
    }

    /// Re-examines paths touched in real time (a directory is re-walked whole).
    pub fn touched(
        &mut self,
        i: usize,
        abs_paths: &BTreeSet<PathBuf>,
    ) -> Result<PassResult, EngineError> {
        // A manifest or ticket may arrive between scans: a new release found now turns this
        // update into a full scan, so every deployed path is judged against it.
        self.load_changes();
        match self.refresh_manifest(i) {
            NewManifest::Unchanged => {}
            news => return self.scan_tree(i, false, news),
        }
        let t = &self.trees[i];
        if !t.state.observed || t.state.rejudge.is_some() || t.pending_deploy.is_some() {
            // Judged against the last observation, these paths would be reported again when
            // the pending deploy or judgement of the baseline reaches them: a full scan does it
            // now, once.
            return self.scan_tree(i, false, NewManifest::Unchanged);
        }
        let skip = own_files(&t.cfg);
        let mut paths: BTreeMap<RelPath, Option<Entry>> = BTreeMap::new();
        for abs in abs_paths {
            if skip.contains(abs) {
                continue;
            }
            let Ok(rel) = abs.strip_prefix(&t.cfg.root) else {
                continue;
            };
            // The watcher drops what the config excludes; the manifest's exclusions are known
            // here only. Same rule as the walk: an excluded path is not examined.
            if rel.as_os_str().is_empty() || t.cfg.exclude.is_match(rel) {
                continue;
            }
            let rel = RelPath::from_bytes(
                std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str()).to_vec(),
            );
            let scope = t.scope(&skip, self.cfg.threads);
            let (entry, below) = self.observer.path(&scope, abs, &rel);
            // Whatever was below a path that changed type or vanished is gone unless seen again.
            for p in t.state.table.observed_below(&rel) {
                paths.entry(p).or_insert(None);
            }
            for e in below {
                paths.insert(e.path.clone(), Some(e));
            }
            paths.insert(rel, entry);
        }
        let now = Timestamp::now();
        // `pass` saved the state.
        let mut result = self.pass(i, paths.into_iter().collect(), now, None, true)?;
        if !result.events.is_empty() {
            // The vetted ratio stays current between full scans (DESIGN §12.1): a web shell
            // found in real time is not vetted, now rather than at the next scan. It keeps the
            // last full scan's duration, which is what that figure reports.
            let t = &self.trees[i];
            let tracker = Tracker {
                tree: &t.cfg,
                host: &self.cfg.host,
                entries: &self.entries,
                has_manifest: t.state.in_force().is_some(),
            };
            let summary = tracker.summary(&t.state, now, t.scan_seconds);
            self.summaries.insert(t.cfg.name.clone(), summary.clone());
            result.summary = Some(summary);
        }
        Ok(result)
    }

    /// Classifies observations, spools their events, commits what was spooled, keeps evidence.
    fn pass(
        &mut self,
        i: usize,
        mut observed: Vec<(RelPath, Option<Entry>)>,
        now: Timestamp,
        deploy: Option<&str>,
        realtime: bool,
    ) -> Result<PassResult, EngineError> {
        // Events saved in an outbox whose spool append failed go first, before that outbox
        // is replaced.
        self.recover_outboxes()?;
        let t = &mut self.trees[i];
        if self.hold_staging && t.state.observed {
            t.staging
                .hold(&t.state.table, &mut observed, std::time::Instant::now());
        }
        let t = &self.trees[i];
        let created = t.state.in_force().map(|m| m.created_at);
        // Full scans only (real-time updates defer to a full scan while one is under way).
        let rejudge = t.state.rejudge.clone().filter(|_| !realtime);
        let mut t0 = if t.state.observed {
            t.state.last_scan.or(created)
        } else {
            // A first observation: from the manifest's creation, or the last look if earlier.
            match (t.state.last_scan, created) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        .unwrap_or(now);
        if realtime {
            // inotify reported the change within the debounce: the window is that short, so a
            // change entry whose window closed an hour ago cannot cover a write made now.
            let recent = now - (self.cfg.debounce * 2 + std::time::Duration::from_secs(1));
            t0 = t0.max(recent);
        }
        let tracker = Tracker {
            tree: &t.cfg,
            host: &self.cfg.host,
            entries: &self.entries,
            has_manifest: t.state.in_force().is_some(),
        };
        let baseline_without_manifest = !t.state.observed && t.state.in_force().is_none();
        let mut pending = if baseline_without_manifest {
            tracing::warn!(tree = %t.cfg.name, "no manifest: the first scan becomes the baseline; nothing in it is vetted");
            observed
                .into_iter()
                .map(|(path, entry)| Pending {
                    path,
                    entry,
                    events: vec![],
                    status: None,
                    changed: false,
                    overlay: None,
                    closes: false,
                    opens: None,
                })
                .collect()
        } else {
            tracker.observe(&t.state, observed, t0, now, deploy, rejudge.as_ref())
        };
        // Paths that changed in this pass are judged by `observe`; open changes of every other path
        // (unchanged since the last look) are re-checked against the approved state and the log.
        let changed: BTreeSet<RelPath> = pending
            .iter()
            .filter(|p| p.changed)
            .map(|p| p.path.clone())
            .collect();
        // First, so that the fresh entries observed in this pass are committed after (over) the
        // snapshot entries these items carry.
        let reconsidered = tracker.reconsider_open(&t.state, now, deploy, &changed);
        // In place: a first scan has an item per path, and a second buffer of them would double
        // the scan's peak memory.
        pending.splice(0..0, reconsidered);
        // 1. Number the events and find how many fit in the spool (nothing written yet).
        let mut all: Vec<ChangeEvent> = pending
            .iter()
            .flat_map(|p| p.events.iter().cloned())
            .collect();
        let fit = self
            .spool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .number(&mut all);
        let dropped = (all.len() - fit) as u64;
        all.truncate(fit);
        let kept = all;
        if dropped > 0 {
            self.spool.lock().unwrap_or_else(|e| e.into_inner()).dropped += dropped;
            tracing::error!(tree = %t.cfg.name, dropped, "spool full: events dropped; their paths will be reported again by the next scan");
        }
        // 2. Commit what fits to the tree state, the events in its outbox, and save: that is the
        //    commit point. A crash before it re-observes the changes (nothing was sent); a crash
        //    after it spools the outbox at the next start (nothing is observed twice).
        let tree_root = t.cfg.root.clone();
        let t = &mut self.trees[i];
        let mut next = 0usize;
        let mut overflow = false;
        let mut evidence = Vec::new();
        // Where a judgement of the baseline must resume: the first path in its range not committed.
        let mut resume: Option<RelPath> = None;
        for p in pending {
            let n = p.events.len();
            if overflow || next + n > kept.len() {
                // Not spooled: leave the path as it was so the next scan sees the change again.
                overflow = true;
                if let Some(r) = &rejudge
                    && p.path >= r.from
                    && resume.as_ref().is_none_or(|at| p.path < *at)
                {
                    resume = Some(p.path.clone());
                }
                continue;
            }
            let seqs: Vec<u64> = kept[next..next + n].iter().map(|e| e.seq).collect();
            if let (Some(Status::Unauthorized), Some(ev)) = (&p.status, kept.get(next))
                && (ev.change == "added" || ev.change == "modified")
                && ev.blake3.is_some()
            {
                evidence.push((p.path.clone(), ev.clone()));
            }
            next += n;
            tracker::commit(&mut t.state, p, &seqs);
        }
        // Many changed rows are merged into the compact base, so lookups stay binary searches.
        Arc::make_mut(&mut t.state.table).settle();
        // A deploy landed here: what is still to land is looked up again, so once everything
        // has landed nothing more is held back as a staging copy.
        if kept.iter().any(|e| e.status.starts_with("release:")) {
            t.staging.reset();
        }
        if let Some(r) = rejudge {
            // Saved with the commit point: a crash neither skips nor repeats part of it.
            t.state.rejudge = resume.map(|from| state::Rejudge { from, t0: r.t0 });
        }
        t.state.outbox = kept.clone();
        if let Err(source) = t.state.save(&t.dir) {
            // Nothing was spooled: go back to what is on disk, so these changes are observed
            // (and reported) again by the next pass instead of being taken as reported.
            let dir = t.dir.clone();
            self.reset_tree(i);
            return Err(EngineError::Save { dir, source });
        }
        // 3. Spool (fsync), then log.
        if !kept.is_empty() {
            self.spool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append_numbered(&kept)?;
            if let Some(n) = &self.spooled {
                n.notify_one();
            }
        }
        for ev in &kept {
            log_event(&self.cfg.host, ev);
        }
        // 4. Evidence last: slow, best-effort, and never in the way of the commit.
        if self.cfg.evidence
            && let Some((tx, _)) = &self.evidence
        {
            for (path, ev) in evidence {
                let abs = tree_root.join(path.as_path());
                let _ = tx.send((tree_root.clone(), abs, self.cfg.host.clone(), ev));
            }
        }
        Ok(PassResult {
            events: kept,
            dropped,
            summary: None,
            scanned: (0, 0, 0),
        })
    }

    /// The tree root leads nowhere (a dangling `current`, a release directory missing, the
    /// root removed): one `unverifiable` change of the tree itself (path [`TREE_ROOT`]), open
    /// until a scan reads the root again, which closes it like any path back in its approved
    /// state. Reported once per episode; the scan still fails (logged by the caller).
    fn root_unreadable(
        &mut self,
        i: usize,
        why: crate::scan::walk::WalkError,
    ) -> Result<PassResult, EngineError> {
        let root = RelPath::from_bytes(TREE_ROOT.to_vec());
        if self.trees[i].state.open.contains_key(&root) {
            return Err(EngineError::RootUnreadable(why));
        }
        self.recover_outboxes()?;
        let t = &self.trees[i];
        let now = Timestamp::now();
        let t0 = t.state.last_scan.unwrap_or(now);
        let mut events = vec![ChangeEvent {
            seq: 0,
            tree: t.cfg.name.clone(),
            path: String::from_utf8_lossy(TREE_ROOT).into_owned(),
            path_bytes: None,
            change: "removed".into(),
            status: Status::Unverifiable.to_string(),
            observed_at: crate::util::timefmt::format_timestamp(now),
            window_start: crate::util::timefmt::format_timestamp(t0),
            blake3: None,
            previous_blake3: None,
            size: None,
            resolves: None,
            detail: None,
        }];
        let fit = self
            .spool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .number(&mut events);
        if fit == 0 {
            self.spool.lock().unwrap_or_else(|e| e.into_inner()).dropped += 1;
            return Err(EngineError::RootUnreported(why));
        }
        let t = &mut self.trees[i];
        t.state.open.insert(
            root,
            vec![state::OpenChange {
                seq: events[0].seq,
                t0,
                observed_at: now,
            }],
        );
        t.state.outbox = events.clone();
        if let Err(source) = t.state.save(&t.dir) {
            let dir = t.dir.clone();
            self.reset_tree(i);
            tracing::error!(tree = %self.trees[i].cfg.name, error = %why, "tree root unreadable");
            return Err(EngineError::Save { dir, source });
        }
        self.spool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append_numbered(&events)?;
        if let Some(n) = &self.spooled {
            n.notify_one();
        }
        log_event(&self.cfg.host, &events[0]);
        Err(EngineError::RootUnreadable(why))
    }

    /// Replaces a tree's in-memory state with the one saved on disk (after a failed save).
    fn reset_tree(&mut self, i: usize) {
        let t = &mut self.trees[i];
        match TreeState::load(&t.dir) {
            Ok(mut state) => {
                restore_approved(&t.dir, &mut state);
                t.state = state;
                t.manifest_stamp = None;
                t.pending_deploy = None;
            }
            Err(why) => {
                tracing::error!(tree = %t.cfg.name, %why, "state unreadable after a failed save: re-baselining against the manifest");
                t.state = TreeState::default();
                t.manifest_stamp = None;
            }
        }
        t.apply_manifest_exclude();
    }

    /// Spools the saved outbox events the spool does not have: the agent died between saving a
    /// tree's state and appending its events.
    fn recover_outboxes(&mut self) -> Result<(), SpoolError> {
        let mut spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        let last = spool.last_seq();
        let mut missing: Vec<ChangeEvent> = self
            .trees
            .iter()
            .flat_map(|t| t.state.outbox.iter().filter(|e| e.seq > last).cloned())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_by_key(|e| e.seq);
        tracing::warn!(
            events = missing.len(),
            "spooling events saved but not spooled yet (a crash or a failed write)"
        );
        spool.append_numbered(&missing)
    }

    /// Loads the configured manifest; adopts it when it is the first or newer. Returns the
    /// release id when it is a deploy. Failures keep the manifest in force and are logged once.
    fn refresh_manifest(&mut self, i: usize) -> NewManifest {
        let require = self.cfg.require_signatures;
        let keys = self.cfg.release_keys.clone();
        let Some(path) = self.cfg.manifest_of(&self.trees[i].cfg) else {
            return NewManifest::Unchanged;
        };
        let t = &mut self.trees[i];
        let fetched = t.cfg.manifest.is_none();
        let now_stamp = [stamp(&path), stamp(&sign::sig_path(&path))];
        if t.manifest_stamp == Some(now_stamp) {
            return NewManifest::Unchanged;
        }
        t.manifest_stamp = Some(now_stamp);
        if fetched && now_stamp[0].is_none() {
            // The collector has none for this tree (yet).
            return NewManifest::Unchanged;
        }
        let in_force_digest = t.state.in_force().map(|m| m.digest);
        let reverify = std::mem::take(&mut t.reverify);
        let loaded = (|| -> Result<Option<(Manifest, Vec<u8>)>, ManifestRefused> {
            let bytes = std::fs::read(&path).map_err(|source| ManifestRefused::Read {
                path: path.clone(),
                source,
            })?;
            // The manifest in force, unchanged (every start, every reload): judging it again
            // could not change what is in force, and a large one costs a second to parse. After
            // a change of keys its signature is checked again, so the log says when the release
            // in force rests on a key no longer trusted.
            if in_force_digest == Some(*blake3::hash(&bytes).as_bytes()) {
                if reverify
                    && (require || !keys.is_empty() || fetched)
                    && let Err(e) = sign::verify_bytes(&bytes, &path, &keys)
                {
                    tracing::error!(tree = %t.cfg.name, error = %e,
                        "the manifest in force no longer verifies with the trusted keys; it stays in force until a newer signed one arrives");
                }
                return Ok(None);
            }
            // A manifest from the collector counts only when signed by a key this agent trusts.
            if require || !keys.is_empty() || fetched {
                sign::verify_bytes(&bytes, &path, &keys)?;
            }
            let m = Manifest::parse(&bytes, &path)?;
            if m.tree != t.cfg.name {
                return Err(ManifestRefused::OtherTree {
                    path: path.clone(),
                    got: m.tree,
                    want: t.cfg.name.clone(),
                });
            }
            Ok(Some((m, bytes)))
        })();
        let (m, bytes) = match loaded {
            Ok(Some(x)) => x,
            Ok(None) => return NewManifest::Unchanged,
            Err(why) => {
                let why = why.to_string();
                if t.warned.insert(why.clone()) {
                    tracing::error!(tree = %t.cfg.name, %why, "manifest rejected; it authorizes nothing");
                }
                return NewManifest::Unchanged;
            }
        };
        let in_force = t.state.in_force().map(|f| (f.created_at, f.release));
        match in_force {
            Some((at, rel)) if m.created_at <= at => {
                if m.created_at < at && t.warned.insert(format!("rollback {}", m.release)) {
                    tracing::warn!(tree = %t.cfg.name, manifest = %m.release, in_force = %rel,
                        "older manifest ignored: a rollback is not a release unless a change entry covers it");
                }
                NewManifest::Unchanged
            }
            previous => {
                let news = match previous {
                    Some(_) => NewManifest::Deploy(m.release.clone()),
                    None => NewManifest::First,
                };
                if let Err(e) = std::fs::create_dir_all(&t.dir)
                    .and_then(|_| super::spool::write_atomic(&t.dir.join("manifest.json"), &bytes))
                {
                    tracing::error!(tree = %t.cfg.name, error = %e, "cannot keep the manifest in the state dir");
                }
                let deploy = matches!(news, NewManifest::Deploy(_));
                tracing::info!(tree = %t.cfg.name, release = %m.release, deploy, "manifest in force");
                t.state.release = Some(m.release.clone());
                t.state.manifest_created_at = Some(m.created_at);
                t.state.manifest_exclude = m.exclude;
                t.apply_manifest_exclude();
                t.state.overlay.clear();
                t.staging.reset();
                t.state
                    .approve(m.entries, *blake3::hash(&bytes).as_bytes(), deploy);
                news
            }
        }
    }
}

/// Paths whose observation differs between the table and a new scan (sorted), with the new
/// entry (`None`: gone). A merge: O(n), nothing built for the paths that are equal.
fn differing(table: &Table, now: Vec<Entry>) -> Vec<(RelPath, Option<Entry>)> {
    let mut out = Vec::new();
    let mut now = now.into_iter().peekable();
    table.walk_from(b"", |p, row| {
        let Some(old) = row.observed else {
            return true;
        };
        while let Some(e) = now.next_if(|e| e.path.as_bytes() < p) {
            out.push((e.path.clone(), Some(e)));
        }
        match now.next_if(|e| e.path.as_bytes() == p) {
            Some(e) if old.matches(&e) => {}
            Some(e) => out.push((e.path.clone(), Some(e))),
            None => out.push((RelPath::from_bytes(p), None)),
        }
        true
    });
    out.extend(now.map(|e| (e.path.clone(), Some(e))));
    out
}

/// One greppable line per event.
fn log_event(host: &str, ev: &ChangeEvent) {
    if ev.status == "unauthorized" || ev.status == "unverifiable" {
        tracing::warn!(host, tree = %ev.tree, path = %ev.path, change = %ev.change, status = %ev.status, seq = ev.seq, blake3 = ev.blake3.as_deref().unwrap_or(""), detail = %ev.detail.as_deref().unwrap_or(""), "drift");
    } else {
        tracing::info!(host, tree = %ev.tree, path = %ev.path, change = %ev.change, status = %ev.status, seq = ev.seq, resolves = ev.resolves, detail = %ev.detail.as_deref().unwrap_or(""), "drift");
    }
}

/// The saved state says which manifest is in force (`manifest.json` in the state dir may already
/// hold the next one after a crash during its deploy, which then comes into force again as the
/// deploy it is). Only a state without the approved states saved with it has them restored from
/// that copy.
fn restore_approved(dir: &Path, state: &mut TreeState) {
    if state.release.is_none() || state.approved_from.is_some() {
        return;
    }
    let path = dir.join("manifest.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let Ok(m) = Manifest::parse(&bytes, &path) else {
        return;
    };
    state.release = Some(m.release);
    state.manifest_created_at = Some(m.created_at);
    state.manifest_exclude = m.exclude;
    state.approve(m.entries, *blake3::hash(&bytes).as_bytes(), false);
}

/// The manifest file and its signature are not part of the deployed code.
fn own_files(t: &TreeConfig) -> Vec<PathBuf> {
    let Some(m) = &t.manifest else {
        return Vec::new();
    };
    let (Ok(root), Ok(mabs)) = (t.root.canonicalize(), m.canonicalize()) else {
        return Vec::new();
    };
    let Ok(rel) = mabs.strip_prefix(&root) else {
        return Vec::new();
    };
    let p = t.root.join(rel);
    vec![sign::sig_path(&p), p]
}
