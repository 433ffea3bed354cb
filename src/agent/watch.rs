//! Real-time detection with inotify (through notify), debounced per tree.
//!
//! A queue overflow ("rescan needed", possibly with no paths) or a watch-limit failure turns into
//! a full scan of that tree, logged once per episode (DESIGN §9b): losing events must never mean
//! silence.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};

use super::Command;
use super::config::AgentConfig;

/// Keeps the watchers alive; dropping it stops them.
pub struct Watchers {
    _watchers: Vec<notify::RecommendedWatcher>,
    _threads: Vec<std::thread::JoinHandle<()>>,
}

enum Msg {
    Paths(Vec<PathBuf>),
    Rescan(String),
}

/// Starts one watcher per tree (when `scan.realtime`); events reach the engine as
/// [`Command::Touched`] after `scan.debounce` of quiet, or [`Command::Scan`] on overflow.
pub fn start(cfg: &AgentConfig, engine: Sender<Command>) -> Watchers {
    let mut watchers = Vec::new();
    let mut threads = Vec::new();
    if !cfg.realtime {
        return Watchers {
            _watchers: watchers,
            _threads: threads,
        };
    }
    for tree in &cfg.trees {
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let name = tree.name.clone();
        let tx2 = tx.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.need_rescan() => {
                let _ = tx2.send(Msg::Rescan("the kernel's event queue overflowed".into()));
            }
            Ok(ev) => {
                if matches!(
                    ev.kind,
                    EventKind::Access(notify::event::AccessKind::Open(_))
                        | EventKind::Access(notify::event::AccessKind::Read)
                ) {
                    return;
                }
                let _ = tx2.send(Msg::Paths(ev.paths));
            }
            Err(e) => {
                let _ = tx2.send(Msg::Rescan(format!("watch error: {e}")));
            }
        };
        let mut w = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(tree = %name, error = %e, "real time unavailable; relying on scheduled scans");
                continue;
            }
        };
        if let Err(e) = w.watch(&tree.root, RecursiveMode::Recursive) {
            tracing::error!(tree = %name, error = %e,
                "real time unavailable (inotify watch limit? raise fs.inotify.max_user_watches); relying on scheduled scans");
            let _ = engine.send(Command::Scan {
                tree: Some(name.clone()),
                rehash: Some(false),
            });
            continue;
        }
        // A manifest kept outside the tree is watched too: its arrival is what makes a deploy.
        let mut own = Vec::new();
        if let Some(m) = &tree.manifest {
            own = vec![m.clone(), crate::sign::sig_path(m)];
            if !m.starts_with(&tree.root)
                && let Some(dir) = m.parent()
                && let Err(e) = w.watch(dir, RecursiveMode::NonRecursive)
            {
                tracing::warn!(tree = %name, dir = %dir.display(), error = %e, "cannot watch the manifest's directory; new releases are picked up by the next scan");
            }
        }
        watchers.push(w);
        let debounce = cfg.debounce;
        let root = tree.root.clone();
        let exclude = tree.exclude.clone();
        let engine = engine.clone();
        threads.push(std::thread::spawn(move || {
            debounce_loop(name, root, own, exclude, debounce, rx, engine)
        }));
    }
    Watchers {
        _watchers: watchers,
        _threads: threads,
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
    let mut overflowing = false;
    // Blocks until the watcher is dropped (the channel closes).
    while let Ok(first) = rx.recv() {
        let mut paths = BTreeSet::new();
        let mut rescan: Option<String> = None;
        let mut take = |m: Msg, paths: &mut BTreeSet<PathBuf>| match m {
            Msg::Paths(ps) => {
                for p in ps {
                    let excluded = p
                        .strip_prefix(&root)
                        .map(|r| exclude.is_match(r))
                        .unwrap_or(true);
                    if !excluded || manifest.contains(&p) {
                        paths.insert(p);
                    }
                }
            }
            Msg::Rescan(why) => rescan = Some(why),
        };
        take(first, &mut paths);
        let deadline = std::time::Instant::now() + debounce;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left) {
                Ok(m) => take(m, &mut paths),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        if let Some(why) = rescan {
            if !overflowing {
                tracing::warn!(tree = %tree, reason = %why, "real-time events lost: full scan of the tree");
                overflowing = true;
            }
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
        if !paths.is_empty()
            && engine
                .send(Command::Touched {
                    tree: tree.clone(),
                    paths,
                })
                .is_err()
        {
            return;
        }
    }
}
