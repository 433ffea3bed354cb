//! Pure comparison of an approved state with an observed one. No I/O.

use std::cmp::Ordering;

use serde::Serialize;

use crate::scan::snapshot::{Entry, Kind, Meta};
use crate::scan::xattr::{self, Xattrs};
use crate::util::pathbytes::RelPath;

/// The compared state of one path: what a manifest approves or a scan observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Entry type.
    pub kind: Kind,
    /// Size (regular files only).
    pub size: Option<u64>,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner; `None` in a manifest built without owners means "not compared".
    pub uid: Option<u32>,
    /// Group; as `uid`.
    pub gid: Option<u32>,
    /// Content hash (regular files).
    pub blake3: Option<[u8; 32]>,
    /// Link target (symlinks).
    pub target: Option<Vec<u8>>,
    /// Extended attributes and ACLs (`None`: none; a manifest entry without `xattrs` approves
    /// none, so an added file capability is always a change).
    pub xattrs: Option<Xattrs>,
}

impl State {
    /// The state of a scanned entry. mtime is deliberately not part of it: a touch is not a change.
    pub fn of(e: &Entry) -> State {
        State::from_parts(&e.meta, e.blake3, e.target.as_deref(), e.xattrs.as_ref())
    }

    /// The state of an observation given by its parts.
    pub fn from_parts(
        m: &Meta,
        blake3: Option<[u8; 32]>,
        target: Option<&[u8]>,
        xattrs: Option<&Xattrs>,
    ) -> State {
        State {
            kind: m.kind,
            size: (m.kind == Kind::File).then_some(m.size),
            mode: m.mode,
            uid: Some(m.uid),
            gid: Some(m.gid),
            blake3,
            target: target.map(<[u8]>::to_vec),
            xattrs: xattrs.cloned(),
        }
    }
}

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Present now, absent before.
    Added,
    /// Absent now, present before.
    Removed,
    /// Content (or link target) differs.
    Modified,
    /// Mode, owner, group, extended attributes or ACLs differ; content is the same.
    Metadata,
    /// File ↔ dir ↔ symlink ↔ special.
    TypeChanged,
}

impl ChangeKind {
    /// The name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Modified => "modified",
            ChangeKind::Metadata => "metadata",
            ChangeKind::TypeChanged => "type_changed",
        }
    }
}

/// One path whose observed state differs from the approved one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Path relative to the tree root.
    pub path: RelPath,
    /// How it differs.
    pub kind: ChangeKind,
    /// Approved state (absent for `added`).
    pub expected: Option<State>,
    /// Observed state (absent for `removed`).
    pub actual: Option<State>,
    /// Why the observed state could not be fully read (the change is then unverifiable).
    pub problem: Option<String>,
    /// ctime of the observed entry, ns: when the kernel last saw it change.
    pub ctime_ns: Option<i64>,
}

/// Compares two states of the same path; `None` when they are equal.
pub fn compare(expected: &State, actual: &State) -> Option<ChangeKind> {
    if expected.kind != actual.kind {
        return Some(ChangeKind::TypeChanged);
    }
    let content_differs = match expected.kind {
        Kind::File => expected.size != actual.size || expected.blake3 != actual.blake3,
        Kind::Symlink => expected.target != actual.target,
        _ => false,
    };
    if content_differs {
        return Some(ChangeKind::Modified);
    }
    // A manifest built without owners leaves them unset: only compare what was approved.
    let owner_differs = |e: Option<u32>, a: Option<u32>| e.is_some() && e != a;
    // Symlink permission bits are meaningless on Linux and vary by filesystem.
    let mode_differs = expected.kind != Kind::Symlink && expected.mode != actual.mode;
    if mode_differs
        || owner_differs(expected.uid, actual.uid)
        || owner_differs(expected.gid, actual.gid)
    {
        return Some(ChangeKind::Metadata);
    }
    // Attributes are compared on every type (a symlink can carry security.* ones); by digest.
    if expected.xattrs != actual.xattrs {
        return Some(ChangeKind::Metadata);
    }
    None
}

/// What a change did to the extended attributes and ACLs, for people: `security.capability
/// added`, `user.x changed; user.y removed`. `None` when they did not change (or a side is
/// missing: an added or removed path).
pub fn xattr_detail(expected: Option<&State>, actual: Option<&State>) -> Option<String> {
    let (e, a) = (expected?, actual?);
    let phrases = xattr::describe(e.xattrs.as_ref(), a.xattrs.as_ref());
    (!phrases.is_empty()).then(|| phrases.join("; "))
}

/// Result of a tree diff: the changes and how many observed paths matched their approved state.
#[derive(Debug, Default)]
pub struct Diff {
    /// Changes sorted by path.
    pub changes: Vec<Change>,
    /// Paths present in both and equal.
    pub unchanged: u64,
}

/// Diffs an approved list and an observed list, both sorted by path (a merge, O(n)).
pub fn diff<'a>(
    approved: impl IntoIterator<Item = (&'a RelPath, &'a State)>,
    observed: &[Entry],
) -> Diff {
    let mut out = Diff::default();
    let mut approved = approved.into_iter().peekable();
    let mut observed = observed.iter().peekable();
    loop {
        let order = match (approved.peek(), observed.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ap, _)), Some(o)) => ap.cmp(&&o.path),
        };
        match order {
            Ordering::Less => {
                let (path, state) = approved.next().expect("peeked");
                out.changes.push(Change {
                    path: path.clone(),
                    kind: ChangeKind::Removed,
                    expected: Some(state.clone()),
                    actual: None,
                    problem: None,
                    ctime_ns: None,
                });
            }
            Ordering::Greater => {
                let o = observed.next().expect("peeked");
                out.changes
                    .push(observed_change(ChangeKind::Added, None, o));
            }
            Ordering::Equal => {
                let (_, state) = approved.next().expect("peeked");
                let o = observed.next().expect("peeked");
                let actual = State::of(o);
                match (compare(state, &actual), &o.problem) {
                    (None, None) => out.unchanged += 1,
                    // Unreadable: we cannot say it is unchanged, so it is never silently passed.
                    (kind, Some(_)) => out.changes.push(observed_change(
                        kind.unwrap_or(ChangeKind::Modified),
                        Some(state),
                        o,
                    )),
                    (Some(kind), None) => out.changes.push(observed_change(kind, Some(state), o)),
                }
            }
        }
    }
    out
}

fn observed_change(kind: ChangeKind, expected: Option<&State>, o: &Entry) -> Change {
    Change {
        path: o.path.clone(),
        kind,
        expected: expected.cloned(),
        actual: Some(State::of(o)),
        problem: o.problem.clone(),
        ctime_ns: Some(o.meta.ctime_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::snapshot::Meta;

    fn file(hash: u8, size: u64, mode: u32, uid: u32) -> State {
        State {
            kind: Kind::File,
            size: Some(size),
            mode,
            uid: Some(uid),
            gid: Some(0),
            blake3: Some([hash; 32]),
            target: None,
            xattrs: None,
        }
    }

    fn entry(path: &str, s: &State, mtime: i64, problem: Option<&str>) -> Entry {
        Entry {
            path: RelPath::from_bytes(path.as_bytes().to_vec()),
            meta: Meta {
                kind: s.kind,
                size: s.size.unwrap_or(0),
                mode: s.mode,
                uid: s.uid.unwrap_or(0),
                gid: s.gid.unwrap_or(0),
                mtime_ns: mtime,
                ctime_ns: 5,
                ino: 1,
                dev: 1,
                nlink: 1,
            },
            blake3: s.blake3,
            target: s.target.clone(),
            problem: problem.map(String::from),
            xattrs: s.xattrs.clone(),
        }
    }

    #[test]
    fn compare_table() {
        let base = file(1, 10, 0o644, 0);
        let link = |t: &str| State {
            kind: Kind::Symlink,
            size: None,
            mode: 0o777,
            uid: Some(0),
            gid: Some(0),
            blake3: None,
            target: Some(t.into()),
            xattrs: None,
        };
        let cap = Xattrs::from_pairs(vec![(b"security.capability".to_vec(), vec![1, 0, 0, 2])]);
        let no_owner = State {
            uid: None,
            gid: None,
            ..base.clone()
        };
        let cases: Vec<(&str, State, State, Option<ChangeKind>)> = vec![
            ("same", base.clone(), base.clone(), None),
            (
                "same size other content",
                base.clone(),
                file(2, 10, 0o644, 0),
                Some(ChangeKind::Modified),
            ),
            (
                "appended",
                base.clone(),
                file(1, 11, 0o644, 0),
                Some(ChangeKind::Modified),
            ),
            (
                "setuid",
                base.clone(),
                file(1, 10, 0o4755, 0),
                Some(ChangeKind::Metadata),
            ),
            (
                "chown",
                base.clone(),
                file(1, 10, 0o644, 33),
                Some(ChangeKind::Metadata),
            ),
            ("owner not recorded", no_owner, file(1, 10, 0o644, 33), None),
            (
                "file to symlink",
                base.clone(),
                link("x"),
                Some(ChangeKind::TypeChanged),
            ),
            (
                "retargeted",
                link("a"),
                link("b"),
                Some(ChangeKind::Modified),
            ),
            (
                "capability added",
                base.clone(),
                State {
                    xattrs: cap.clone(),
                    ..base.clone()
                },
                Some(ChangeKind::Metadata),
            ),
            (
                "same attributes",
                State {
                    xattrs: cap.clone(),
                    ..base.clone()
                },
                State {
                    xattrs: cap.clone(),
                    ..base.clone()
                },
                None,
            ),
            (
                "symlink attribute removed",
                State {
                    xattrs: cap.clone(),
                    ..link("a")
                },
                link("a"),
                Some(ChangeKind::Metadata),
            ),
            (
                "content wins over attributes",
                base.clone(),
                State {
                    xattrs: cap.clone(),
                    ..file(2, 10, 0o644, 0)
                },
                Some(ChangeKind::Modified),
            ),
            (
                "symlink mode ignored",
                link("a"),
                State {
                    mode: 0o755,
                    ..link("a")
                },
                None,
            ),
        ];
        for (name, e, a, want) in cases {
            assert_eq!(compare(&e, &a), want, "{name}");
        }
    }

    #[test]
    fn merge_finds_added_removed_and_ignores_mtime() {
        let a = file(1, 10, 0o644, 0);
        let p = |s: &str| RelPath::from_bytes(s.as_bytes().to_vec());
        let approved = [
            (p("a"), a.clone()),
            (p("b"), a.clone()),
            (p("d"), a.clone()),
        ];
        let observed = [
            entry("a", &a, 999, None),
            entry("c", &a, 0, None),
            entry("d", &a, 0, Some("cannot read: denied")),
        ];
        let d = diff(approved.iter().map(|(p, s)| (p, s)), &observed);
        let got: Vec<(String, ChangeKind)> = d
            .changes
            .iter()
            .map(|c| (c.path.to_string(), c.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("b".into(), ChangeKind::Removed),
                ("c".into(), ChangeKind::Added),
                ("d".into(), ChangeKind::Modified)
            ]
        );
        assert_eq!(d.unchanged, 1, "mtime-only touch of `a` is not a change");
        assert!(d.changes[2].problem.is_some());
    }

    #[test]
    fn xattr_detail_names_the_attribute() {
        let with = |pairs: &[(&str, &[u8])]| State {
            xattrs: Xattrs::from_pairs(
                pairs
                    .iter()
                    .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
                    .collect(),
            ),
            ..file(1, 10, 0o640, 0)
        };
        let plain = with(&[]);
        let acl = with(&[("system.posix_acl_access", b"\x02")]);
        assert_eq!(
            xattr_detail(Some(&plain), Some(&acl)).as_deref(),
            Some("system.posix_acl_access added")
        );
        let two = with(&[("system.posix_acl_access", b"\x03"), ("user.x", b"1")]);
        assert_eq!(
            xattr_detail(Some(&acl), Some(&two)).as_deref(),
            Some("system.posix_acl_access changed; user.x added")
        );
        assert_eq!(xattr_detail(Some(&acl), Some(&acl)), None);
        assert_eq!(xattr_detail(None, Some(&acl)), None, "an added path");
    }

    #[test]
    fn diff_of_identical_is_empty() {
        let a = file(3, 1, 0o600, 0);
        let p = RelPath::from_bytes(b"x".to_vec());
        let d = diff([(&p, &a)], &[entry("x", &a, 1, None)]);
        assert!(d.changes.is_empty());
    }
}
