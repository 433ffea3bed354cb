//! What is in a tree now: walk + parallel hash, sorted by path.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::scan::hash::{self, Hashed};
use crate::scan::walk::{self, Found, WalkOptions};
use crate::scan::xattr::{self, Xattrs};
use crate::util::pathbytes::RelPath;

pub use super::entry::{Entry, Kind, Meta};

/// Counters a scan reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScanStats {
    /// Regular files seen.
    pub files: u64,
    /// Directories seen.
    pub dirs: u64,
    /// Bytes of regular files hashed.
    pub bytes: u64,
    /// Wall time of the scan.
    pub seconds: f64,
    /// Paths matched by an exclusion and not examined.
    #[serde(skip)]
    pub excluded: u64,
}

/// Everything in a tree at one moment, sorted by path.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Entries sorted by path bytes.
    pub entries: Vec<Entry>,
    /// Counters.
    pub stats: ScanStats,
}

/// What a stat cache remembers of a readable regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns.
    pub mtime_ns: i64,
    /// Status change time, ns.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
    /// Content hash seen with that stamp.
    pub blake3: [u8; 32],
    /// Extended attributes seen with that stamp (they move ctime when they change).
    pub xattrs: Option<Xattrs>,
}

/// Hashes remembered from an earlier scan, by path.
pub trait StatCache: Send + Sync + std::fmt::Debug {
    /// The last observation of `path`, if it was a regular file read without problems.
    fn cached_file(&self, path: &RelPath) -> Option<CachedFile>;
}

/// How to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Exclusions and filesystem rules.
    pub walk: WalkOptions,
    /// Hashing threads; 0 means one per core.
    pub threads: usize,
    /// A progress bar to advance (only given on a TTY).
    pub progress: Option<indicatif::ProgressBar>,
    /// The stat cache: what the previous scan saw. A file whose size, mtime, ctime, inode and
    /// device are unchanged keeps its hash without being read (ctime cannot be set back from user
    /// space).
    pub cache: Option<Arc<dyn StatCache>>,
    /// Prefix added to every path (scanning a subtree of a tree).
    pub prefix: Option<RelPath>,
}

/// The scan could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The walk could not start.
    #[error(transparent)]
    Walk(#[from] walk::WalkError),
    /// The thread pool could not be built.
    #[error("cannot start hashing threads: {0}")]
    Threads(#[from] rayon::ThreadPoolBuildError),
}

/// Files are handed to the pool in batches: one task per file would cost more than a small file's hash.
const BATCH: usize = 128;

/// Walks `root` and hashes every regular file in parallel.
pub fn scan(root: &Path, opts: &ScanOptions) -> Result<Snapshot, ScanError> {
    let started = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()?;
    let results: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    let mut dirs = Vec::new();
    let mut problems: Vec<(RelPath, String)> = Vec::new();
    let mut excluded = 0u64;
    let mut walk_result = Ok(());
    let join = |p: RelPath| match &opts.prefix {
        Some(prefix) => RelPath::from_bytes([prefix.as_bytes(), b"/", p.as_bytes()].concat()),
        None => p,
    };
    pool.in_place_scope(|s| {
        let mut batch: Vec<(PathBuf, RelPath, bool)> = Vec::with_capacity(BATCH);
        let flush = |batch: Vec<(PathBuf, RelPath, bool)>| {
            let results = &results;
            let progress = opts.progress.clone();
            let cache = opts.cache.clone();
            s.spawn(move |_| {
                let done: Vec<Entry> = batch
                    .into_iter()
                    .filter_map(|(abs, rel, is_file)| {
                        examine_cached(&abs, rel, cache.as_deref(), is_file)
                    })
                    .collect();
                if let Some(p) = progress {
                    p.inc(done.len() as u64);
                }
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(done);
            });
        };
        walk_result = walk::walk(root, &opts.walk, |found| match found {
            Found::Dir {
                abs,
                rel,
                meta,
                descended,
            } => {
                let problem = (!descended)
                    .then(|| "mount point: not descended (other filesystem)".to_string());
                // Directories carry the default ACL: their attributes are read here, on the
                // walker's thread (directories are few beside files).
                let entry = Entry {
                    path: join(rel),
                    meta,
                    blake3: None,
                    target: None,
                    problem,
                    xattrs: None,
                };
                dirs.extend(with_xattrs(&abs, entry));
            }
            Found::Other {
                abs,
                rel,
                file_type,
            } => {
                batch.push((abs, join(rel), file_type.is_file()));
                if batch.len() == BATCH {
                    flush(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                }
            }
            Found::Problem { rel, message } => problems.push((join(rel), message)),
            Found::Excluded => excluded += 1,
        });
        if !batch.is_empty() {
            flush(batch);
        }
    });
    walk_result?;
    let mut entries = results.into_inner().unwrap_or_else(|e| e.into_inner());

    entries.append(&mut dirs);
    entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    attach_problems(&mut entries, problems);
    let mut stats = ScanStats {
        excluded,
        ..ScanStats::default()
    };
    for e in &entries {
        match e.meta.kind {
            Kind::File => {
                stats.files += 1;
                if e.blake3.is_some() {
                    stats.bytes += e.meta.size;
                }
            }
            Kind::Dir => stats.dirs += 1,
            _ => {}
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(Snapshot { entries, stats })
}

/// Stats (and for regular files hashes) one path, and reads its extended attributes; `None` when
/// it vanished since the walk listed it.
pub fn examine(abs: &Path, path: RelPath) -> Option<Entry> {
    examine_cached(abs, path, None, false)
}

/// As [`examine`], reusing the cached hash of a file whose stat stamp did not move.
/// `listed_as_file` (the directory entry's type) lets a file without a cache entry skip the
/// `lstat`: opening it with `O_NOFOLLOW` and `fstat` gives the same facts with one syscall less.
///
/// Extended attributes: a hashed file's are read from the descriptor the hash used (no second
/// path lookup); a cache hit keeps the cached ones, because setting or removing an attribute
/// moves ctime, which is part of the stamp and cannot be set back from user space (the same
/// argument that lets the cache keep the content hash; a full rehash, which uses no cache,
/// re-reads them all). Everything else (directories, symlinks, special files, files that could
/// not be hashed) is asked by path with `llistxattr`, never following a symlink or opening it.
pub fn examine_cached(
    abs: &Path,
    path: RelPath,
    cache: Option<&dyn StatCache>,
    listed_as_file: bool,
) -> Option<Entry> {
    match examine_content(abs, path, cache, listed_as_file)? {
        (entry, true) => Some(entry),
        (entry, false) => with_xattrs(abs, entry),
    }
}

/// Adds the attributes of `abs` to its entry; `None` when the path vanished meanwhile.
fn with_xattrs(abs: &Path, mut entry: Entry) -> Option<Entry> {
    match xattr::read(abs) {
        Ok(x) => entry.xattrs = x,
        Err(e) if e.is_not_found() => return None,
        // The first problem found is the one reported (a path that cannot be stat'ed cannot be
        // listed either).
        Err(e) => {
            entry.problem.get_or_insert_with(|| e.to_string());
        }
    }
    Some(entry)
}

/// Records the attributes the hasher read with the file; `None` when the file vanished.
fn hashed_xattrs(
    entry: &mut Entry,
    xattrs: Result<Option<Xattrs>, xattr::XattrError>,
) -> Option<()> {
    match xattrs {
        Ok(x) => entry.xattrs = x,
        Err(e) if e.is_not_found() => return None,
        Err(e) => entry.problem = Some(e.to_string()),
    }
    Some(())
}

/// Stat, content hash and link target of one path, and whether its attributes are known too
/// (read with the content, or kept from the cache).
fn examine_content(
    abs: &Path,
    path: RelPath,
    cache: Option<&dyn StatCache>,
    listed_as_file: bool,
) -> Option<(Entry, bool)> {
    let cached = cache.and_then(|c| c.cached_file(&path));
    if listed_as_file && cached.is_none() {
        match hash::hash_file(abs) {
            Ok(Hashed::File(meta, h, x)) => {
                let mut entry = Entry {
                    path,
                    meta,
                    blake3: Some(h),
                    target: None,
                    problem: None,
                    xattrs: None,
                };
                hashed_xattrs(&mut entry, x)?;
                return Some((entry, true));
            }
            Ok(Hashed::Changing(meta)) => {
                let problem = Some("changed while being hashed".to_string());
                let entry = Entry {
                    path,
                    meta,
                    blake3: None,
                    target: None,
                    problem,
                    xattrs: None,
                };
                return Some((entry, false));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            // No longer a plain readable file (or unreadable): take the careful path below.
            _ => {}
        }
    }
    let lstat = match hash::lstat(abs) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        // Not asked for attributes either: the stat error is the problem to report.
        Err(e) => return Some((problem_entry(path, format!("cannot stat: {e}")), true)),
    };
    if lstat.kind == Kind::File
        && let Some(old) = cached
        && (old.size, old.mtime_ns, old.ctime_ns, old.ino, old.dev)
            == (
                lstat.size,
                lstat.mtime_ns,
                lstat.ctime_ns,
                lstat.ino,
                lstat.dev,
            )
    {
        let entry = Entry {
            path,
            meta: lstat,
            blake3: Some(old.blake3),
            target: None,
            problem: None,
            xattrs: old.xattrs,
        };
        return Some((entry, true));
    }
    let mut entry = Entry {
        path,
        meta: lstat,
        blake3: None,
        target: None,
        problem: None,
        xattrs: None,
    };
    match lstat.kind {
        Kind::File => match hash::hash_file(abs) {
            Ok(Hashed::File(meta, h, x)) => {
                entry.meta = meta;
                entry.blake3 = Some(h);
                hashed_xattrs(&mut entry, x)?;
                return Some((entry, true));
            }
            Ok(Hashed::NotRegular(meta)) => entry.meta = meta,
            Ok(Hashed::Changing(meta)) => {
                entry.meta = meta;
                entry.problem = Some("changed while being hashed".into());
            }
            // Swapped for a symlink between lstat and open: record what is there now.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return examine_content(abs, entry.path, None, false);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => entry.problem = Some(format!("cannot read: {e}")),
        },
        Kind::Symlink => match std::fs::read_link(abs) {
            Ok(t) => entry.target = Some(t.as_os_str().as_bytes().to_vec()),
            Err(e) => entry.problem = Some(format!("cannot read link: {e}")),
        },
        _ => {}
    }
    Some((entry, false))
}

fn problem_entry(path: RelPath, message: String) -> Entry {
    let meta = Meta {
        kind: Kind::File,
        size: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        ino: 0,
        dev: 0,
        nlink: 0,
    };
    Entry {
        path,
        meta,
        blake3: None,
        target: None,
        problem: Some(message),
        xattrs: None,
    }
}

/// Marks entries the walker could not list; a problem for a path not in the list becomes an entry.
fn attach_problems(entries: &mut Vec<Entry>, problems: Vec<(RelPath, String)>) {
    let mut orphans = Vec::new();
    for (rel, message) in problems {
        match entries.binary_search_by(|e| e.path.cmp(&rel)) {
            Ok(i) => entries[i].problem = Some(message),
            Err(_) => orphans.push(problem_entry(rel, message)),
        }
    }
    if !orphans.is_empty() {
        entries.extend(orphans);
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug, Default)]
    struct Cache(HashMap<RelPath, CachedFile>);

    impl StatCache for Cache {
        fn cached_file(&self, path: &RelPath) -> Option<CachedFile> {
            self.0.get(path).cloned()
        }
    }

    fn cache_of(snap: &Snapshot) -> Arc<dyn StatCache> {
        let mut c = Cache::default();
        for e in &snap.entries {
            if let Some(h) = e.blake3 {
                let m = &e.meta;
                c.0.insert(
                    e.path.clone(),
                    CachedFile {
                        size: m.size,
                        mtime_ns: m.mtime_ns,
                        ctime_ns: m.ctime_ns,
                        ino: m.ino,
                        dev: m.dev,
                        blake3: h,
                        xattrs: e.xattrs.clone(),
                    },
                );
            }
        }
        Arc::new(c)
    }

    fn xattrs_of<'a>(snap: &'a Snapshot, path: &str) -> Option<&'a Xattrs> {
        let e = snap.entries.iter().find(|e| e.path.to_string() == path)?;
        e.xattrs.as_ref()
    }

    #[test]
    fn the_stat_cache_never_hides_an_attribute_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"content").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let first = scan(dir.path(), &ScanOptions::default()).unwrap();
        assert_eq!(xattrs_of(&first, "f"), None);
        let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid strings and buffer.
        let rc =
            unsafe { libc::lsetxattr(c.as_ptr(), c"user.x".as_ptr(), c"1".as_ptr().cast(), 1, 0) };
        if rc != 0 {
            eprintln!(
                "SKIP the_stat_cache_never_hides_an_attribute_change: cannot set user.x on {}: {}",
                dir.path().display(),
                std::io::Error::last_os_error()
            );
            return;
        }
        // Setting the attribute moved ctime: the cached stamp misses and the file is read again.
        let opts = ScanOptions {
            cache: Some(cache_of(&first)),
            ..ScanOptions::default()
        };
        let second = scan(dir.path(), &opts).unwrap();
        let want = Xattrs::from_pairs(vec![(b"user.x".to_vec(), b"1".to_vec())]);
        assert_eq!(xattrs_of(&second, "f"), want.as_ref());
        // A hit keeps the attributes seen with the stamp, names and all.
        let opts = ScanOptions {
            cache: Some(cache_of(&second)),
            ..ScanOptions::default()
        };
        let third = scan(dir.path(), &opts).unwrap();
        let kept = xattrs_of(&third, "f").unwrap();
        assert_eq!(kept.names, want.as_ref().unwrap().names);
        // Directories are read on every scan (they carry default ACLs).
        assert_eq!(xattrs_of(&third, "d"), None);
        let d =
            std::ffi::CString::new(dir.path().join("d").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid strings and buffer.
        let rc =
            unsafe { libc::lsetxattr(d.as_ptr(), c"user.d".as_ptr(), c"1".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let fourth = scan(dir.path(), &opts).unwrap();
        assert!(xattrs_of(&fourth, "d").is_some());
    }
}
