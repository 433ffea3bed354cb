//! Real-time detection with inotify, debounced per tree.
//!
//! Our own small recursive watcher on the `inotify` crate rather than `notify`: notify always
//! asks for `IN_OPEN`, so every file the agent itself reads while scanning (and every page a web
//! server serves) would flood the kernel queue and force a rescan. Here the mask is only what
//! changes content or names. A queue overflow or a watch-limit failure turns into a full scan of
//! that tree, logged once per episode (DESIGN §9b): losing events must never mean silence.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::Command;
use super::config::{AgentConfig, TreeConfig};

/// Keeps the watchers alive; dropping it stops and joins their threads.
pub struct Watchers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

enum Msg {
    Paths(Vec<(PathBuf, Write)>),
    Rescan(String),
    /// The tree root now leads elsewhere (a symlink flip, a directory moved into place, a root
    /// removed or restored): the watches moved with it, and the tree is scanned whole.
    RootMoved,
}

/// What an event says about a file being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Created or modified, not closed yet: a writer may still be at work.
    Open,
    /// Closed after writing, or gone: whatever is there now is final.
    Done,
    /// Nothing about writing (metadata, a directory, a rename into place).
    Other,
}

/// How long a file still open for writing is held back before it is judged anyway (a log file
/// may stay open for days).
const HOLD_OPEN: Duration = Duration::from_secs(2);

/// Starts one watcher per tree (when `scan.realtime`); events reach the engine as
/// [`Command::Touched`] after `scan.debounce` of quiet, or [`Command::Scan`] on overflow.
pub fn start(cfg: &AgentConfig, engine: Sender<Command>) -> Watchers {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    if !cfg.realtime {
        return Watchers { stop, threads };
    }
    for tree in &cfg.trees {
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let mut watcher = match TreeWatcher::new(tree, tx.clone()) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(tree = %tree.name, error = %e, "real time unavailable; relying on scheduled scans");
                continue;
            }
        };
        let stop2 = stop.clone();
        threads.push(std::thread::spawn(move || watcher.run(&stop2)));
        let own: Vec<PathBuf> = tree
            .manifest
            .iter()
            .flat_map(|m| [m.clone(), crate::sign::sig_path(m)])
            .collect();
        let (name, root, exclude, debounce) = (
            tree.name.clone(),
            tree.root.clone(),
            tree.exclude.clone(),
            cfg.debounce,
        );
        let engine = engine.clone();
        threads.push(std::thread::spawn(move || {
            debounce_loop(name, root, own, exclude, debounce, rx, engine)
        }));
    }
    Watchers { stop, threads }
}

/// Only what changes content, metadata or names; never opens or reads.
fn mask() -> WatchMask {
    WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK
}

/// The watched directories by watch descriptor, their paths in one buffer: a big tree has tens
/// of thousands of them, and as many small long-lived allocations would be scattered through the
/// heap among a scan's short-lived ones, keeping its pages resident.
#[derive(Default)]
struct DirMap {
    bytes: Vec<u8>,
    spans: HashMap<WatchDescriptor, (usize, usize)>,
    /// Bytes of removed paths still in `bytes`.
    garbage: usize,
}

impl DirMap {
    fn insert(&mut self, wd: WatchDescriptor, dir: &Path) {
        let b = dir.as_os_str().as_bytes();
        let span = (self.bytes.len(), b.len());
        self.bytes.extend_from_slice(b);
        if let Some((_, len)) = self.spans.insert(wd, span) {
            self.garbage += len;
        }
    }

    fn get(&self, wd: &WatchDescriptor) -> Option<&Path> {
        let &(at, len) = self.spans.get(wd)?;
        Some(Path::new(OsStr::from_bytes(&self.bytes[at..at + len])))
    }

    fn remove(&mut self, wd: &WatchDescriptor) {
        if let Some((_, len)) = self.spans.remove(wd) {
            self.garbage += len;
        }
        if self.garbage > 4096 && self.garbage > self.bytes.len() / 2 {
            let mut bytes = Vec::with_capacity(self.bytes.len() - self.garbage);
            for span in self.spans.values_mut() {
                let (at, len) = *span;
                *span = (bytes.len(), len);
                bytes.extend_from_slice(&self.bytes[at..at + len]);
            }
            self.bytes = bytes;
            self.garbage = 0;
        }
    }
}

/// Watches one tree. Paths are always reported under the configured root, whatever it resolves
/// to: the root may be a symlink (`current -> releases/N`), and the engine judges paths relative
/// to the configured root.
///
/// Invariant: the watches in `dirs` other than `fixed` are those of the directories below the
/// root's target as it resolved at the last [`TreeWatcher::watch_root`]; a root that resolves
/// elsewhere (or nowhere) drops all of them before new ones are added, so flips never leak
/// watches.
struct TreeWatcher {
    name: String,
    cross_filesystems: bool,
    inotify: Inotify,
    dirs: DirMap,
    tx: Sender<Msg>,
    limit_logged: bool,
    /// The configured root.
    root: PathBuf,
    /// What it resolved to when last watched, with that directory's device and inode (a
    /// directory moved into place under the same name is another directory); `None`: it did not
    /// resolve to a directory.
    resolved: Option<(PathBuf, u64, u64)>,
    /// The root directory's own watch.
    root_wd: Option<WatchDescriptor>,
    /// The root's parent, watched for the root's name being replaced.
    parent_wd: Option<WatchDescriptor>,
    /// Watches that are not part of the tree (the parent, a manifest's directory elsewhere).
    fixed: Vec<WatchDescriptor>,
    /// When an unresolvable root was last looked at again.
    retried: Instant,
}

/// How often a root that leads nowhere (a dangling `current`) is looked at again: no event says
/// when the directory it names appears.
const ROOT_RETRY: Duration = Duration::from_millis(500);

impl TreeWatcher {
    fn new(tree: &TreeConfig, tx: Sender<Msg>) -> std::io::Result<TreeWatcher> {
        let mut w = TreeWatcher {
            name: tree.name.clone(),
            cross_filesystems: tree.cross_filesystems,
            inotify: Inotify::init()?,
            dirs: DirMap::default(),
            tx,
            limit_logged: false,
            root: tree.root.clone(),
            resolved: None,
            root_wd: None,
            parent_wd: None,
            fixed: Vec::new(),
            retried: Instant::now(),
        };
        // The parent first: a root replaced while the tree is being watched is noticed.
        if let Some(parent) = tree.root.parent().filter(|p| !p.as_os_str().is_empty()) {
            w.parent_wd = w.add(parent);
            w.fixed.extend(w.parent_wd.clone());
        }
        // A manifest kept outside the tree is watched too: its arrival is what makes a deploy.
        if let Some(m) = &tree.manifest
            && !m.starts_with(&tree.root)
            && let Some(dir) = m.parent()
            && let Some(wd) = w.add(dir)
            && !w.fixed.contains(&wd)
        {
            w.fixed.push(wd);
        }
        w.watch_root();
        Ok(w)
    }

    /// (Re-)watches the tree below wherever the root leads now; returns whether that changed.
    fn watch_root(&mut self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let now = self.root.canonicalize().ok().and_then(|p| {
            let m = std::fs::metadata(&p).ok().filter(|m| m.is_dir())?;
            Some((p, m.dev(), m.ino()))
        });
        if now == self.resolved && (now.is_none() || self.root_wd.is_some()) {
            return false;
        }
        // Drop every watch of the old target: a flip must not leak, nor report the old release.
        let old: Vec<WatchDescriptor> = self
            .dirs
            .spans
            .keys()
            .filter(|wd| !self.fixed.contains(wd))
            .cloned()
            .collect();
        for wd in old {
            let _ = self.inotify.watches().remove(wd.clone());
            self.dirs.remove(&wd);
        }
        self.root_wd = None;
        self.resolved = now.clone();
        if now.is_some() {
            let root = self.root.clone();
            self.watch_tree(&root);
        }
        true
    }

    /// Watches `dir` and returns the watch. The root is watched at its target (a symlinked root
    /// watched as the link would miss every write at its top level), under its configured name.
    fn add(&mut self, dir: &Path) -> Option<WatchDescriptor> {
        let real = match &self.resolved {
            Some((target, ..)) if dir == self.root => target.clone(),
            _ => dir.to_path_buf(),
        };
        match self.inotify.watches().add(&real, mask()) {
            Ok(wd) => {
                if dir == self.root {
                    self.root_wd = Some(wd.clone());
                }
                self.dirs.insert(wd.clone(), dir);
                return Some(wd);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                if !self.limit_logged {
                    tracing::error!(tree = %self.name, dir = %dir.display(),
                        "inotify watch limit reached (raise fs.inotify.max_user_watches): parts of the tree rely on scheduled scans");
                    self.limit_logged = true;
                    let _ = self
                        .tx
                        .send(Msg::Rescan("inotify watch limit reached".into()));
                }
            }
            Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
        None
    }

    /// The root was replaced, removed or came back: move the watches and say so, once.
    fn root_changed(&mut self) {
        if !self.watch_root() {
            return;
        }
        match &self.resolved {
            Some((target, ..)) => {
                tracing::info!(tree = %self.name, root = %self.root.display(), target = %target.display(), dirs = self.dirs.spans.len().saturating_sub(self.fixed.len()), "tree root changed: real-time watches moved to it")
            }
            None => {
                tracing::warn!(tree = %self.name, root = %self.root.display(), "tree root does not lead to a directory: watching for it to come back")
            }
        }
        let _ = self.tx.send(Msg::RootMoved);
    }

    /// Watches `dir` and every directory below it (never following symlinks).
    fn watch_tree(&mut self, dir: &Path) {
        let walker = walkdir::WalkDir::new(dir)
            .follow_links(false)
            .same_file_system(!self.cross_filesystems);
        for e in walker.into_iter().filter_map(|e| e.ok()) {
            // The walk's own start may be a symlink (a root `current -> releases/N`): walkdir
            // descends into it but reports it as a link, and it is watched at its target.
            if e.file_type().is_dir() || e.depth() == 0 {
                self.add(e.path());
            }
        }
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 64 * 1024];
        let fd = self.inotify.as_raw_fd();
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a timeout lets the thread notice `stop`.
            let n = unsafe { libc::poll(&mut pfd, 1, 250) };
            if self.resolved.is_none() && self.retried.elapsed() >= ROOT_RETRY {
                self.retried = Instant::now();
                self.root_changed();
            }
            if n <= 0 {
                continue;
            }
            let events: Vec<(WatchDescriptor, EventMask, Option<std::ffi::OsString>)> =
                match self.inotify.read_events(&mut buf) {
                    Ok(evs) => evs
                        .map(|e| (e.wd, e.mask, e.name.map(|n| n.to_os_string())))
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        let _ = self
                            .tx
                            .send(Msg::Rescan(format!("inotify read failed: {e}")));
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
            let mut paths = Vec::new();
            let mut root_event = false;
            for (wd, m, name) in events {
                // The root's name replaced in its parent (`ln -sfn`, `mv` into place, `rm -rf`),
                // or the root directory itself gone or moved away.
                if (Some(&wd) == self.parent_wd.as_ref()
                    && name.as_deref() == self.root.file_name())
                    || (Some(&wd) == self.root_wd.as_ref()
                        && m.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF))
                {
                    root_event = true;
                    continue;
                }
                if m.contains(EventMask::Q_OVERFLOW) {
                    let _ = self
                        .tx
                        .send(Msg::Rescan("the kernel's event queue overflowed".into()));
                    continue;
                }
                if m.contains(EventMask::IGNORED) {
                    self.dirs.remove(&wd);
                    if Some(&wd) == self.root_wd.as_ref() {
                        self.root_wd = None;
                        root_event = true;
                    }
                    continue;
                }
                let Some(dir) = self.dirs.get(&wd).map(Path::to_path_buf) else {
                    continue;
                };
                let path = match name {
                    Some(n) => dir.join(n),
                    None => dir,
                };
                let write = if m.contains(EventMask::ISDIR) {
                    Write::Other
                } else if m
                    .intersects(EventMask::CLOSE_WRITE | EventMask::DELETE | EventMask::MOVED_FROM)
                {
                    Write::Done
                } else if m.intersects(EventMask::CREATE | EventMask::MODIFY) {
                    Write::Open
                } else {
                    Write::Other
                };
                // A new (or moved-in) directory: watch it and everything already inside it; the
                // engine re-walks it, so files created before the watch existed are seen too.
                if m.contains(EventMask::ISDIR)
                    && (m.contains(EventMask::CREATE) || m.contains(EventMask::MOVED_TO))
                {
                    self.watch_tree(&path);
                }
                paths.push((path, write));
            }
            if !paths.is_empty() && self.tx.send(Msg::Paths(paths)).is_err() {
                return;
            }
            if root_event {
                self.root_changed();
            }
        }
    }
}

fn debounce_loop(
    tree: String,
    root: PathBuf,
    manifest: Vec<PathBuf>,
    exclude: globset::GlobSet,
    debounce: Duration,
    rx: std::sync::mpsc::Receiver<Msg>,
    engine: Sender<Command>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut overflowing = false;
    // Files created or modified and not closed yet, since when.
    let mut writing: HashMap<PathBuf, Instant> = HashMap::new();
    // Paths held back from the last round because their file was still open for writing.
    let mut held: BTreeSet<PathBuf> = BTreeSet::new();
    let take = |m: Msg,
                paths: &mut BTreeSet<PathBuf>,
                writing: &mut HashMap<PathBuf, Instant>,
                rescan: &mut Option<String>,
                moved: &mut bool| match m {
        Msg::Paths(ps) => {
            for (p, w) in ps {
                let excluded = p
                    .strip_prefix(&root)
                    .map(|r| exclude.is_match(r))
                    .unwrap_or(true);
                if excluded && !manifest.contains(&p) {
                    continue;
                }
                match w {
                    Write::Open => {
                        writing.entry(p.clone()).or_insert_with(Instant::now);
                    }
                    Write::Done => {
                        writing.remove(&p);
                    }
                    Write::Other => {}
                }
                paths.insert(p);
            }
        }
        Msg::Rescan(why) => *rescan = Some(why),
        Msg::RootMoved => *moved = true,
    };
    loop {
        // Ends when the watcher thread stops (the channel closes).
        let first = if held.is_empty() {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(debounce) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        let mut paths = std::mem::take(&mut held);
        let mut rescan: Option<String> = None;
        let mut moved = false;
        if let Some(first) = first {
            take(first, &mut paths, &mut writing, &mut rescan, &mut moved);
            // Wait for `debounce` of quiet (a file being written is judged once, when it is
            // done), but never longer than a bound, so a steady stream of writes is still
            // reported promptly.
            let start = Instant::now();
            let cap = start + (debounce * 4).max(Duration::from_millis(100));
            let mut deadline = start + debounce;
            loop {
                let left = deadline.min(cap).saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(m) => {
                        take(m, &mut paths, &mut writing, &mut rescan, &mut moved);
                        deadline = Instant::now() + debounce;
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
        if rescan.is_some() || moved {
            if let Some(why) = rescan
                && !overflowing
            {
                tracing::warn!(tree = %tree, reason = %why, "real-time events lost: full scan of the tree");
                overflowing = true;
            }
            // The full scan sees every path as it is; writers still open are seen again later.
            writing.clear();
            if engine
                .send(Command::Scan {
                    tree: Some(tree.clone()),
                    rehash: Some(false),
                })
                .is_err()
            {
                return;
            }
            continue;
        }
        overflowing = false;
        // A file still open for writing is held back (up to HOLD_OPEN): judged half-written it
        // would be reported twice, empty and then complete.
        let now = Instant::now();
        let (wait, ready): (BTreeSet<PathBuf>, BTreeSet<PathBuf>) =
            paths.into_iter().partition(|p| {
                writing
                    .get(p)
                    .is_some_and(|since| now.duration_since(*since) < HOLD_OPEN)
            });
        held = wait;
        for p in &ready {
            writing.remove(p);
        }
        if !ready.is_empty()
            && engine
                .send(Command::Touched {
                    tree: tree.clone(),
                    paths: ready,
                })
                .is_err()
        {
            return;
        }
    }
}
