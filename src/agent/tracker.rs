//! Turning observations of a tree into events (DESIGN §6, §9): the agent's judgement.
//!
//! [`Tracker::observe`] compares what was just seen with the previous observation, classifies
//! each change against the approved state (manifest + authorized overlay) and the change log,
//! and returns [`Pending`] items. Nothing in the tree state changes until [`commit`] is called
//! for an item whose events made it into the spool: an event dropped from a full spool leaves its
//! path unobserved, so the next scan finds the change again (the resync).

use jiff::Timestamp;

use super::config::TreeConfig;
use super::state::{OpenChange, TreeState};
use super::table::Observed;
use crate::event::{ChangeEvent, ScanSummary};
use crate::judge::changelog::ChangeEntry;
use crate::judge::classify::{self, Context, Observation, Status};
use crate::judge::diff::{self, Change, ChangeKind, State};
use crate::scan::snapshot::Entry;
use crate::util::pathbytes::RelPath;
use crate::util::timefmt;

/// The path of a change of the tree as a whole (its root unreadable): `.`, the tree root.
pub const TREE_ROOT: &[u8] = b".";

/// What one observed path leads to, applied to the state by [`commit`] once spooled.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The path.
    pub path: RelPath,
    /// What is there now (`None`: gone).
    pub entry: Option<Entry>,
    /// Events to spool for it (a counted change and/or records closing open ones).
    pub events: Vec<ChangeEvent>,
    /// Its status, when a counted change was emitted.
    pub status: Option<Status>,
    /// The path differs from its previous observation (judged in this pass).
    pub changed: bool,
    /// New overlay value (an authorized change becomes part of the approved state).
    pub overlay: Option<Option<State>>,
    /// Open changes of this path that are now closed.
    pub closes: bool,
    /// The counted event opens an unauthorized change.
    pub opens: Option<(Timestamp, Timestamp)>,
}

/// Classifies observations of one tree.
pub struct Tracker<'a> {
    /// The tree.
    pub tree: &'a TreeConfig,
    /// This host's name.
    pub host: &'a str,
    /// Valid, signature-checked change entries.
    pub entries: &'a [ChangeEntry],
    /// Whether a manifest is in force.
    pub has_manifest: bool,
}

impl Tracker<'_> {
    /// The approved state of a path: the overlay first, then the manifest in force.
    fn approved(&self, state: &TreeState, path: &RelPath) -> Option<State> {
        match state.overlay.get(path) {
            Some(o) => o.clone(),
            None => state.table.approved(path.as_bytes()),
        }
    }

    /// The release a path reaching its approved state deploys, if any (DESIGN §12.1): during
    /// the pass that brings a newer manifest into force (`deploy`), every path; later, a path
    /// whose approved state that manifest changed and that had not reached it yet (manifest
    /// first, files seconds or hours later). Otherwise the path is merely back to its approved
    /// state: that closes what was open, and is no change of its own.
    fn deployed(&self, state: &TreeState, path: &RelPath, deploy: Option<&str>) -> Option<String> {
        if let Some(r) = deploy {
            return Some(r.to_string());
        }
        if state.overlay.contains_key(path) {
            return None;
        }
        let fresh = state.table.get(path.as_bytes()).is_some_and(|r| r.fresh);
        fresh.then(|| state.release.clone()).flatten()
    }

    /// Judges observations of `observed` paths made in the window (t0, now]; `deploy` is the
    /// release id when a newer signed manifest has just come into force.
    /// Paths from `rejudge`'s path on are judged as in a first observation, in the window
    /// (its t0, now]: their previous state is the approved one (a first manifest for a
    /// baselined tree).
    pub fn observe(
        &self,
        state: &TreeState,
        observed: Vec<(RelPath, Option<Entry>)>,
        t0: Timestamp,
        now: Timestamp,
        deploy: Option<&str>,
        rejudge: Option<&super::state::Rejudge>,
    ) -> Vec<Pending> {
        let ctx = Context {
            host: self.host,
            tree: &self.tree.name,
            exclude: &self.tree.exclude,
            entries: self.entries,
            now,
        };
        let mut out = Vec::new();
        let window = t0;
        for (path, entry) in observed {
            // Before the first observation, the previous state is the approved one.
            let rejudged = rejudge.filter(|r| path >= r.from);
            let first_look = !state.observed || rejudged.is_some();
            let t0 = rejudged.map_or(window, |r| r.t0);
            let obs = Observation {
                t0,
                t: now,
                observed_at: now,
            };
            let before: Option<State> = if !first_look {
                state.table.observed(path.as_bytes()).map(|o| o.state())
            } else {
                self.approved(state, &path)
            };
            let after = entry.as_ref().map(State::of);
            let problem = entry.as_ref().and_then(|e| e.problem.clone());
            let kind = match (&before, &after) {
                (None, None) => None,
                (None, Some(_)) => Some(ChangeKind::Added),
                (Some(_), None) => Some(ChangeKind::Removed),
                (Some(b), Some(a)) => {
                    diff::compare(b, a).or(problem.as_ref().map(|_| ChangeKind::Modified))
                }
            };
            let mut p = Pending {
                path: path.clone(),
                entry,
                events: vec![],
                status: None,
                changed: false,
                overlay: None,
                closes: false,
                opens: None,
            };
            let Some(kind) = kind else {
                out.push(p);
                continue;
            };
            if self.tree.exclude.is_match(path.as_path()) {
                out.push(p);
                continue;
            }
            let change = Change {
                path: path.clone(),
                kind,
                expected: before.clone(),
                actual: after.clone(),
                problem,
                ctime_ns: None,
            };
            let approved = self.approved(state, &path);
            let at_approved = change.problem.is_none()
                && match (&approved, &after) {
                    (None, None) => true,
                    (Some(a), Some(b)) => diff::compare(a, b).is_none(),
                    _ => false,
                };
            let status = if at_approved {
                // Deployed into the approved state (or merely back to it: no counted change).
                self.deployed(state, &path, deploy).map(Status::Release)
            } else {
                Some(classify::classify(&change, &obs, None, &ctx))
            };
            if let Some(status) = &status {
                p.events.push(self.event(&change, status, t0, now, None));
                if status.is_authorized() && !at_approved {
                    p.overlay = Some(after.clone());
                }
                if status.is_violation() {
                    p.opens = Some((t0, now));
                }
            }
            if at_approved || status.as_ref().is_some_and(Status::is_authorized) {
                self.close_open(state, &change, &mut p, now, None);
            }
            p.status = status;
            p.changed = true;
            out.push(p);
        }
        out
    }

    /// Records that close the open changes of a path: plain `resolved`, or the authorizing status
    /// when a change entry now covers them (an approval after the fact).
    fn close_open(
        &self,
        state: &TreeState,
        change: &Change,
        p: &mut Pending,
        now: Timestamp,
        by: Option<&Status>,
    ) {
        if let Some(open) = state.open.get(&change.path) {
            for o in open {
                let status = by.map_or_else(|| "resolved".to_string(), |s| s.to_string());
                let mut ev = self.event(change, &Status::Unauthorized, o.t0, now, Some(o.seq));
                ev.status = status;
                p.events.push(ev);
            }
            p.closes = true;
        }
    }

    /// Re-checks open changes of paths not observed in this pass. An open path now in its
    /// approved state is closed: as `release:<id>` when a deploy made it so (a pipeline that wrote
    /// files before their manifest), else as `resolved`. An entry approved after the fact closes
    /// it as `retroactive:<id>` (or `change:<id>`) and makes the current state approved.
    pub fn reconsider_open(
        &self,
        state: &TreeState,
        now: Timestamp,
        deploy: Option<&str>,
        observed: &std::collections::BTreeSet<RelPath>,
    ) -> Vec<Pending> {
        let mut out = Vec::new();
        if !state.observed {
            return out;
        }
        for (path, open) in &state.open {
            let Some(first) = open.first() else { continue };
            if observed.contains(path) {
                continue;
            }
            let entry = state
                .table
                .observed(path.as_bytes())
                .map(|o| o.into_entry(path.clone()));
            let actual = entry.as_ref().map(State::of);
            let change = Change {
                path: path.clone(),
                kind: if entry.is_none() {
                    ChangeKind::Removed
                } else {
                    ChangeKind::Modified
                },
                expected: None,
                actual: actual.clone(),
                problem: None,
                ctime_ns: None,
            };
            let mut p = Pending {
                path: path.clone(),
                entry: entry.clone(),
                events: vec![],
                status: None,
                changed: false,
                overlay: None,
                closes: false,
                opens: None,
            };
            let approved = self.approved(state, path);
            let at_approved = match (&approved, &actual) {
                (None, None) => true,
                (Some(a), Some(b)) => diff::compare(a, b).is_none(),
                _ => false,
            } && entry.as_ref().is_none_or(|e| e.problem.is_none());
            if at_approved {
                // Files written before their manifest: the deploy they were is recorded as such.
                // An unreadable root coming back is no deploy of anything.
                let by = (path.as_bytes() != TREE_ROOT)
                    .then(|| self.deployed(state, path, deploy).map(Status::Release))
                    .flatten();
                self.close_open(state, &change, &mut p, now, by.as_ref());
                out.push(p);
                continue;
            }
            let c = classify::StoredChangeRef {
                host: self.host,
                tree: &self.tree.name,
                path,
                blake3: actual.as_ref().and_then(|a| a.blake3),
                removed: entry.is_none(),
                t0: first.t0,
                observed_at: first.observed_at,
            };
            let Some(status) = self
                .entries
                .iter()
                .filter_map(|e| classify::reclassify(&c, e, now))
                .min()
            else {
                continue;
            };
            p.overlay = Some(actual);
            self.close_open(state, &change, &mut p, now, Some(&status));
            out.push(p);
        }
        out
    }

    fn event(
        &self,
        c: &Change,
        status: &Status,
        t0: Timestamp,
        now: Timestamp,
        resolves: Option<u64>,
    ) -> ChangeEvent {
        ChangeEvent {
            seq: 0,
            tree: self.tree.name.clone(),
            path: c.path.lossy().into_owned(),
            path_bytes: c.path.hex_if_not_utf8(),
            change: c.kind.as_str().to_string(),
            status: status.to_string(),
            observed_at: timefmt::format_timestamp(now),
            window_start: timefmt::format_timestamp(t0),
            blake3: c.actual.as_ref().and_then(|a| a.blake3).map(hex::encode),
            previous_blake3: c.expected.as_ref().and_then(|e| e.blake3).map(hex::encode),
            size: c.actual.as_ref().and_then(|a| a.size),
            detail: diff::xattr_detail(c.expected.as_ref(), c.actual.as_ref()),
            resolves,
        }
    }

    /// The scan summary of a tree: vetted paths against the approved state.
    pub fn summary(&self, state: &TreeState, now: Timestamp, seconds: f64) -> ScanSummary {
        let excluded = |p: &[u8]| {
            use std::os::unix::ffi::OsStrExt;
            self.tree
                .exclude
                .is_match(std::path::Path::new(std::ffi::OsStr::from_bytes(p)))
        };
        let mut paths = 0u64;
        let mut vetted = 0u64;
        if state.observed {
            state.table.walk_from(b"", |p, row| {
                if excluded(p) {
                    return true;
                }
                let approved = match state.overlay.get(p) {
                    Some(o) => o.clone(),
                    None => row.approved,
                };
                match row.observed {
                    Some(o) => {
                        paths += 1;
                        let ok = o.problem.is_none()
                            && match approved {
                                Some(a) => diff::compare(&a, &o.state()).is_none(),
                                None => !self.has_manifest && !state.open.contains_key(p),
                            };
                        vetted += u64::from(ok);
                    }
                    // Approved paths that are gone count too (never vetted).
                    None => paths += u64::from(approved.is_some()),
                }
                true
            });
            // So do paths approved only after the fact, with no row at all.
            for (p, o) in &state.overlay {
                if o.is_some() && !excluded(p.as_bytes()) && state.table.get(p.as_bytes()).is_none()
                {
                    paths += 1;
                }
            }
        }
        ScanSummary {
            tree: self.tree.name.clone(),
            finished_at: timefmt::format_timestamp(now),
            paths,
            vetted,
            release: state.release.clone(),
            seconds,
        }
    }
}

/// Applies a pending item whose events were spooled with the given sequence numbers.
pub fn commit(state: &mut TreeState, p: Pending, seqs: &[u64]) {
    let now = p.entry.as_ref().map(Observed::of);
    if !state.observed || state.table.observed(p.path.as_bytes()) != now {
        state.observe(&p.path, now);
    }
    if let Some(o) = p.overlay {
        state.overlay.insert(p.path.clone(), o);
    }
    if p.closes {
        state.open.remove(&p.path);
    }
    if let (Some((t0, observed_at)), Some(seq)) = (p.opens, seqs.first()) {
        state.open.entry(p.path).or_default().push(OpenChange {
            seq: *seq,
            t0,
            observed_at,
        });
    }
}

#[cfg(test)]
mod tests {
    //! The judgement, without a daemon: a tree state built in memory, observations handed in,
    //! the events and commits checked.
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::judge::manifest::ManifestEntry;
    use crate::scan::snapshot::{Kind, Meta};

    fn cfg() -> TreeConfig {
        TreeConfig {
            name: "shop".into(),
            root: PathBuf::from("/srv/shop"),
            manifest: None,
            exclude_globs: vec!["var/cache/**".into()],
            exclude: crate::util::glob::path_set(&["var/cache/**".to_string()]).unwrap(),
            cross_filesystems: false,
        }
    }

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes())
    }

    fn file(path: &str, content: u8) -> Entry {
        Entry {
            path: p(path),
            meta: Meta {
                kind: Kind::File,
                size: 10,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: 1,
                ctime_ns: 1,
                ino: u64::from(content),
                dev: 1,
                nlink: 1,
            },
            blake3: Some([content; 32]),
            target: None,
            problem: None,
            xattrs: None,
        }
    }

    fn approve(state: &mut TreeState, files: &[(&str, u8)], release: &str, deploy: bool) {
        let entries = files
            .iter()
            .map(|(path, c)| ManifestEntry {
                path: p(path),
                state: State::of(&file(path, *c)),
            })
            .collect();
        state.release = Some(release.into());
        state.manifest_created_at = Some("2026-11-01T00:00:00Z".parse().unwrap());
        state.approve(entries, [release.len() as u8; 32], deploy);
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// r1 in force and observed as approved: `index.php` (1) and `app.js` (2).
    fn observed_r1() -> TreeState {
        let mut st = TreeState::default();
        approve(&mut st, &[("index.php", 1), ("app.js", 2)], "r1", false);
        for (path, c) in [("index.php", 1), ("app.js", 2)] {
            st.observe(&p(path), Some(Observed::of(&file(path, c))));
        }
        st
    }

    fn judge(
        st: &mut TreeState,
        entries: &[ChangeEntry],
        seen: Vec<(RelPath, Option<Entry>)>,
        deploy: Option<&str>,
    ) -> Vec<ChangeEvent> {
        let cfg = cfg();
        let t = Tracker {
            tree: &cfg,
            host: "web-01",
            entries,
            has_manifest: true,
        };
        let now = ts("2026-11-20T12:00:00Z");
        let mut pending = t.observe(st, seen, ts("2026-11-20T11:00:00Z"), now, deploy, None);
        let changed: BTreeSet<RelPath> = pending
            .iter()
            .filter(|x| x.changed)
            .map(|x| x.path.clone())
            .collect();
        pending.splice(0..0, t.reconsider_open(st, now, deploy, &changed));
        let mut events = Vec::new();
        for item in pending {
            let seqs: Vec<u64> = (0..item.events.len())
                .map(|k| (events.len() + k + 1) as u64)
                .collect();
            events.extend(item.events.iter().cloned().zip(&seqs).map(|(mut e, s)| {
                e.seq = *s;
                e
            }));
            commit(st, item, &seqs);
        }
        events
    }

    fn brief(events: &[ChangeEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| format!("{} {} {}", e.path, e.change, e.status))
            .collect()
    }

    #[test]
    fn an_edit_opens_and_putting_it_back_closes_without_counting() {
        let mut st = observed_r1();
        let ev = judge(
            &mut st,
            &[],
            vec![(p("app.js"), Some(file("app.js", 9)))],
            None,
        );
        assert_eq!(brief(&ev), ["app.js modified unauthorized"]);
        assert!(st.open.contains_key(&p("app.js")));
        let ev = judge(
            &mut st,
            &[],
            vec![(p("app.js"), Some(file("app.js", 2)))],
            None,
        );
        assert_eq!(
            brief(&ev),
            ["app.js modified resolved"],
            "no counted change"
        );
        assert_eq!(ev[0].resolves, Some(1));
        assert!(st.open.is_empty());
    }

    #[test]
    fn a_deploy_lands_as_release_whenever_the_files_come() {
        let mut st = observed_r1();
        // r2 changes app.js and adds new.js; the deploy's own pass sees nothing yet.
        approve(
            &mut st,
            &[("index.php", 1), ("app.js", 3), ("new.js", 4)],
            "r2",
            true,
        );
        assert!(judge(&mut st, &[], vec![], Some("r2")).is_empty());
        // Later, without a deploy in this pass: each lands as r2, once.
        let ev = judge(
            &mut st,
            &[],
            vec![(p("app.js"), Some(file("app.js", 3)))],
            None,
        );
        assert_eq!(brief(&ev), ["app.js modified release:r2"]);
        let ev = judge(
            &mut st,
            &[],
            vec![(p("new.js"), Some(file("new.js", 4)))],
            None,
        );
        assert_eq!(brief(&ev), ["new.js added release:r2"]);
        // Edited and put back: no second deploy.
        judge(
            &mut st,
            &[],
            vec![(p("new.js"), Some(file("new.js", 8)))],
            None,
        );
        let ev = judge(
            &mut st,
            &[],
            vec![(p("new.js"), Some(file("new.js", 4)))],
            None,
        );
        assert_eq!(brief(&ev), ["new.js modified resolved"]);
    }

    #[test]
    fn files_before_their_manifest_close_as_the_release() {
        let mut st = observed_r1();
        let ev = judge(
            &mut st,
            &[],
            vec![(p("app.js"), Some(file("app.js", 3)))],
            None,
        );
        assert_eq!(brief(&ev), ["app.js modified unauthorized"]);
        approve(&mut st, &[("index.php", 1), ("app.js", 3)], "r2", true);
        let ev = judge(&mut st, &[], vec![], Some("r2"));
        assert_eq!(brief(&ev), ["app.js modified release:r2"]);
        assert_eq!(ev[0].resolves, Some(1), "re-classifies the earlier verdict");
        assert!(st.open.is_empty());
    }

    #[test]
    fn tickets_excludes_and_unreadable_files() {
        let mut st = observed_r1();
        let ticket = ChangeEntry::parse(
            "id = \"CHG-1\"\nsummary = \"s\"\nrequested_by = \"alice\"\napproved_by = \"bob\"\n\
             approved_at = \"2026-11-20T10:00:00Z\"\nhosts = [\"web-*\"]\ntrees = [\"shop\"]\n\
             paths = [\"app.js\"]\nstart = \"2026-11-20T10:00:00Z\"\nend = \"2026-11-20T13:00:00Z\"\n",
            Path::new("CHG-1.toml"),
        )
        .unwrap();
        let mut broken = file("index.php", 1);
        broken.problem = Some("Permission denied".into());
        let ev = judge(
            &mut st,
            std::slice::from_ref(&ticket),
            vec![
                (p("app.js"), Some(file("app.js", 5))),
                (p("index.php"), Some(broken)),
                (p("var/cache/x"), Some(file("var/cache/x", 6))),
            ],
            None,
        );
        assert_eq!(
            brief(&ev),
            [
                "app.js modified change:CHG-1",
                "index.php modified unverifiable"
            ]
        );
        // The ticketed content is now approved: seeing it again is no change.
        let ev = judge(
            &mut st,
            &[ticket],
            vec![(p("app.js"), Some(file("app.js", 5)))],
            None,
        );
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn the_summary_counts_what_was_judged() {
        let mut st = observed_r1();
        let cfg = cfg();
        let t = Tracker {
            tree: &cfg,
            host: "web-01",
            entries: &[],
            has_manifest: true,
        };
        let now = ts("2026-11-20T12:00:00Z");
        assert_eq!(t.summary(&st, now, 0.0).vetted, 2);
        judge(
            &mut st,
            &[],
            vec![(p("shell.php"), Some(file("shell.php", 7)))],
            None,
        );
        let s = t.summary(&st, now, 0.0);
        assert_eq!((s.vetted, s.paths), (2, 3), "the web shell is not vetted");
    }
}
