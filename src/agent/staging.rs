//! Deploy staging: copies a deploy makes on its way in are part of the deploy, not drift.
//!
//! `rsync --delay-updates` writes every file of a release into a `.~tmp~/` directory beside its
//! destination and renames them all into place at the end; other tools stage likewise. Judged
//! while they exist, those copies would be unauthorized added files, and a deploy of 200 files
//! would put 200 violations into the KPI. So while a deploy is under way (the manifest in force
//! approves content that has not landed everywhere yet; looked up again whenever part of it
//! lands), a *new* path holding content that
//! deploy brings — or a new directory holding nothing else — is held back for up to
//! [`GRACE`]: if it is gone by then (renamed into place), it never was a change; if it is still
//! there, it is judged like any other path. Nothing is committed for a held path, so a crash
//! merely judges it again.
//!
//! Invariant: only paths the table has never seen are held (an approved or once-observed path is
//! always judged at once), and no path is held longer than [`GRACE`] from the first time it was.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use super::table::Table;
use crate::scan::snapshot::{Entry, Kind};
use crate::util::pathbytes::RelPath;

/// How long a staged copy may live before it is judged anyway: long enough for a large
/// `rsync --delay-updates` to finish its transfer, short enough that a copy of approved code
/// left lying around is still reported within minutes.
pub const GRACE: Duration = Duration::from_secs(120);

/// How long a new file written in the last moments of a deploy is left to settle: a deploy tool
/// writes each file under a temporary name (`.name.XXXXXX`), then renames it, and a directory
/// re-walked meanwhile finds it half-written. Its content is not the deploy's yet, so it is held
/// this long, and judged then if still there (a web shell dropped during a deploy is late by at
/// most this much).
pub const SETTLE: Duration = Duration::from_secs(2);

/// Per tree: what the deploy in force brings, and the paths held back.
#[derive(Debug, Default)]
pub struct Staging {
    /// Content hashes the deploy in force approves anew (built lazily; `None`: to build).
    hashes: Option<HashSet<[u8; 32]>>,
    /// Paths held back, since when.
    held: BTreeMap<RelPath, Instant>,
}

impl Staging {
    /// A new manifest came into force, or part of a deploy landed: what is still to land is
    /// looked up again (a walk of the table, at the next [`Staging::hold`]).
    pub fn reset(&mut self) {
        self.hashes = None;
    }

    /// Takes the held-back paths out of `observed` (sorted by path); the rest are judged.
    pub fn hold(
        &mut self,
        table: &Table,
        observed: &mut Vec<(RelPath, Option<Entry>)>,
        now: Instant,
    ) {
        let hashes = self.hashes.get_or_insert_with(|| deploy_hashes(table));
        if hashes.is_empty() {
            // Nothing (more) to land: hold nothing new. What is held stays until it is due and
            // looked at again, so it is judged, never dropped.
            for (p, _) in observed.iter() {
                self.held.remove(p);
            }
            return;
        }
        let held = &self.held;
        let wall_ns = jiff::Timestamp::now().as_nanosecond() as i64;
        let candidate = |p: &RelPath, e: &Option<Entry>| -> bool {
            let Some(e) = e else { return false };
            let limit = match e.meta.kind {
                Kind::File if e.blake3.is_some_and(|h| hashes.contains(&h)) => GRACE,
                Kind::File if wall_ns - e.meta.ctime_ns < SETTLE.as_nanos() as i64 => SETTLE,
                Kind::Dir => GRACE,
                _ => return false,
            };
            let in_time = held
                .get(p)
                .is_none_or(|since| now.duration_since(*since) < limit);
            in_time && table.get(p.as_bytes()).is_none()
        };
        // A directory is staging only if nothing judged lies below it.
        let judged: BTreeSet<&RelPath> = observed
            .iter()
            .filter(|(p, e)| !candidate(p, e))
            .map(|(p, _)| p)
            .collect();
        let holds = |p: &RelPath, e: &Option<Entry>| {
            candidate(p, e)
                && (e.as_ref().is_some_and(|e| e.meta.kind == Kind::File) || !has_below(&judged, p))
        };
        let verdicts: Vec<bool> = observed.iter().map(|(p, e)| holds(p, e)).collect();
        let mut i = 0;
        observed.retain(|(p, _)| {
            let hold = verdicts[i];
            i += 1;
            if hold {
                self.held.entry(p.clone()).or_insert(now);
            } else {
                self.held.remove(p);
            }
            !hold
        });
    }

    /// When the held paths are next looked at again: the earliest a settling file may be due
    /// (a staged copy is looked at as often; it stays held until its own grace ends).
    pub fn next_due(&self) -> Option<Instant> {
        self.held.values().min().map(|since| *since + SETTLE)
    }

    /// The held paths to look at again by `now`.
    pub fn due(&self, now: Instant) -> Vec<RelPath> {
        self.held
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= SETTLE)
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// Whether some path in `set` lies strictly below directory `dir`. Paths below `dir/` sort
/// together, right from `dir/` on, so one ordered lookup answers (a pass of thousands of paths
/// during a deploy must not compare every directory with every path).
fn has_below(set: &BTreeSet<&RelPath>, dir: &RelPath) -> bool {
    let prefix = RelPath::from_bytes([dir.as_bytes(), b"/"].concat());
    set.range::<&RelPath, _>(&prefix..)
        .next()
        .is_some_and(|p| p.as_bytes().starts_with(prefix.as_bytes()))
}

/// The approved content of every path whose deploy has not landed yet.
fn deploy_hashes(table: &Table) -> HashSet<[u8; 32]> {
    let mut out = HashSet::new();
    table.walk_from(b"", |_, row| {
        if row.fresh
            && let Some(h) = row.approved.and_then(|a| a.blake3)
        {
            out.insert(h);
        }
        true
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::manifest::ManifestEntry;
    use crate::scan::snapshot::Meta;

    fn entry(p: &str, kind: Kind, hash: Option<u8>) -> (RelPath, Option<Entry>) {
        let path = RelPath::from_bytes(p.as_bytes());
        let e = Entry {
            path: path.clone(),
            meta: Meta {
                kind,
                size: 1,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
                ctime_ns: 0,
                ino: 1,
                dev: 1,
                nlink: 1,
            },
            blake3: hash.map(|h| [h; 32]),
            target: None,
            problem: None,
            xattrs: None,
        };
        (path, Some(e))
    }

    /// A table with r1 in force and r2 deploying `app/a.js` (content 7) still to land.
    fn deploying() -> Table {
        let approve = |p: &str, h: u8| ManifestEntry {
            path: RelPath::from_bytes(p.as_bytes()),
            state: crate::judge::diff::State::of(&entry(p, Kind::File, Some(h)).1.unwrap()),
        };
        let mut t = Table::default();
        t.replace_approved(vec![approve("app/a.js", 1), approve("index.php", 2)], false);
        t.replace_approved(vec![approve("app/a.js", 7), approve("index.php", 2)], true);
        t
    }

    fn paths(v: &[(RelPath, Option<Entry>)]) -> Vec<String> {
        v.iter().map(|(p, _)| p.lossy().into_owned()).collect()
    }

    #[test]
    fn staged_copies_of_the_deploy_are_held_and_the_rest_judged() {
        let t = deploying();
        let mut s = Staging::default();
        let start = Instant::now();
        let mut seen = vec![
            entry("app/.~tmp~", Kind::Dir, None),
            entry("app/.~tmp~/a.js", Kind::File, Some(7)),
            entry("app/a.js", Kind::File, Some(7)),
            entry("evil", Kind::Dir, None),
            entry("evil/shell.php", Kind::File, Some(66)),
            entry("copy.php", Kind::File, Some(2)),
        ];
        s.hold(&t, &mut seen, start);
        assert_eq!(
            paths(&seen),
            ["app/a.js", "evil", "evil/shell.php", "copy.php"],
            "the staging dir and its copy are held; a dir holding a web shell, the landing \
             itself and a copy of content this deploy does not bring are judged"
        );
        assert_eq!(s.next_due(), Some(start + SETTLE));
        // Gone (renamed into place): judged as gone, i.e. no change, and no longer held.
        let mut gone = vec![(RelPath::from_bytes(b"app/.~tmp~/a.js".to_vec()), None)];
        s.hold(&t, &mut gone, start + Duration::from_secs(1));
        assert_eq!(gone.len(), 1);
        assert_eq!(
            s.due(start + SETTLE),
            [RelPath::from_bytes(b"app/.~tmp~".to_vec())]
        );
        // Looked at again before its grace ends: still held.
        let mut again = vec![entry("app/.~tmp~", Kind::Dir, None)];
        s.hold(&t, &mut again, start + SETTLE);
        assert!(again.is_empty());
        // A new file written a moment ago, not the deploy's content (yet): it settles first.
        let mut half = entry("app/.a.js.Xy12", Kind::File, Some(3));
        if let Some(e) = &mut half.1 {
            e.meta.ctime_ns = jiff::Timestamp::now().as_nanosecond() as i64;
        }
        let mut writing = vec![half.clone()];
        s.hold(&t, &mut writing, start);
        assert!(writing.is_empty(), "held while it settles");
        let mut settled = vec![half];
        s.hold(&t, &mut settled, start + SETTLE);
        assert_eq!(paths(&settled), ["app/.a.js.Xy12"], "judged once settled");
        // Still there after the grace: judged.
        let mut late = vec![entry("app/.~tmp~", Kind::Dir, None)];
        s.hold(&t, &mut late, start + GRACE);
        assert_eq!(paths(&late), ["app/.~tmp~"]);
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn what_is_held_when_the_deploy_lands_is_still_judged() {
        let mut t = deploying();
        let mut s = Staging::default();
        let start = Instant::now();
        let mut seen = vec![entry("app/.~tmp~/a.js", Kind::File, Some(7))];
        s.hold(&t, &mut seen, start);
        assert!(seen.is_empty());
        // The deploy lands: nothing is fresh any more.
        t.set_observed(
            &RelPath::from_bytes(b"app/a.js".to_vec()),
            entry("app/a.js", Kind::File, Some(7))
                .1
                .map(|e| crate::agent::table::Observed::of(&e)),
        );
        s.reset();
        let mut other = vec![entry("index2.php", Kind::File, Some(9))];
        s.hold(&t, &mut other, start);
        assert_eq!(other.len(), 1, "nothing new is held");
        assert_eq!(
            s.due(start + SETTLE),
            [RelPath::from_bytes(b"app/.~tmp~/a.js".to_vec())],
            "the held copy is still looked at again"
        );
    }

    #[test]
    fn below_is_a_prefix_of_whole_components() {
        let set: Vec<RelPath> = ["a.b/x", "a/y", "ab/z"]
            .iter()
            .map(|p| RelPath::from_bytes(p.as_bytes()))
            .collect();
        let set: BTreeSet<&RelPath> = set.iter().collect();
        let dir = |d: &str| RelPath::from_bytes(d.as_bytes());
        assert!(has_below(&set, &dir("a")));
        assert!(has_below(&set, &dir("ab")));
        assert!(!has_below(&set, &dir("a/y")), "a path is not below itself");
        assert!(!has_below(&set, &dir("b")));
        assert!(!has_below(&set, &dir("a.")));
    }

    #[test]
    fn nothing_is_held_without_a_deploy_under_way() {
        let mut t = deploying();
        // r2 landed everywhere: a new manifest equal to it deploys nothing more.
        t.set_observed(
            &RelPath::from_bytes(b"app/a.js".to_vec()),
            entry("app/a.js", Kind::File, Some(7))
                .1
                .map(|e| crate::agent::table::Observed::of(&e)),
        );
        let mut s = Staging::default();
        let mut seen = vec![
            entry("app/.~tmp~", Kind::Dir, None),
            entry("app/.~tmp~/a.js", Kind::File, Some(7)),
        ];
        s.hold(&t, &mut seen, Instant::now());
        assert_eq!(seen.len(), 2);
    }
}
