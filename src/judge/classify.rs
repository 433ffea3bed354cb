//! Pure classification of a change against releases and the change log (DESIGN §6). No I/O.

use std::fmt;
use std::str::FromStr;

use globset::GlobSet;
use jiff::Timestamp;

use crate::judge::changelog::ChangeEntry;
use crate::judge::diff::Change;

/// The verdict on one change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// The new state is that of a newer signed manifest (a deploy).
    Release(String),
    /// Covered by a change entry approved before it was observed.
    Change(String),
    /// Covered by a change entry approved after it was observed (emergency path).
    Retroactive(String),
    /// Nothing authorizes it.
    Unauthorized,
    /// Could not be read or hashed: not vetted, never silently skipped.
    Unverifiable,
    /// Matched an exclusion: not counted.
    Excluded,
}

impl Status {
    /// Went through the process (release, change or retroactive approval).
    pub fn is_authorized(&self) -> bool {
        matches!(
            self,
            Status::Release(_) | Status::Change(_) | Status::Retroactive(_)
        )
    }

    /// Counts against the KPI and the exit code.
    pub fn is_violation(&self) -> bool {
        matches!(self, Status::Unauthorized | Status::Unverifiable)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Release(id) => write!(f, "release:{id}"),
            Status::Change(id) => write!(f, "change:{id}"),
            Status::Retroactive(id) => write!(f, "retroactive:{id}"),
            Status::Unauthorized => f.write_str("unauthorized"),
            Status::Unverifiable => f.write_str("unverifiable"),
            Status::Excluded => f.write_str("excluded"),
        }
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let with_id = |id: &str| {
            (!id.is_empty())
                .then(|| id.to_string())
                .ok_or(format!("status {s:?} has an empty id"))
        };
        match s.split_once(':') {
            Some(("release", id)) => Ok(Status::Release(with_id(id)?)),
            Some(("change", id)) => Ok(Status::Change(with_id(id)?)),
            Some(("retroactive", id)) => Ok(Status::Retroactive(with_id(id)?)),
            None if s == "unauthorized" => Ok(Status::Unauthorized),
            None if s == "unverifiable" => Ok(Status::Unverifiable),
            None if s == "excluded" => Ok(Status::Excluded),
            _ => Err(format!(
                "unknown status {s:?} (expected release:ID, change:ID, retroactive:ID, unauthorized, unverifiable, excluded)"
            )),
        }
    }
}

/// Where a change was seen and what could authorize it.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Host name.
    pub host: &'a str,
    /// Tree name.
    pub tree: &'a str,
    /// Exclusions of the tree.
    pub exclude: &'a GlobSet,
    /// Change entries that passed validation and signature checks.
    pub entries: &'a [ChangeEntry],
    /// The time of classifying: approvals later than this do not exist yet.
    pub now: Timestamp,
}

/// When a change happened, as far as the observer can tell.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// Previous observation: the change happened after this.
    pub t0: Timestamp,
    /// This observation: the change happened at or before this.
    pub t: Timestamp,
    /// When the change was first observed (≤ t); approvals after it are after the fact.
    pub observed_at: Timestamp,
}

/// Classifies one change. `release` is the id of a newer signed manifest whose state the path now
/// has, if any (the caller knows the manifests; this function stays pure).
pub fn classify(
    change: &Change,
    obs: &Observation,
    release: Option<&str>,
    ctx: &Context<'_>,
) -> Status {
    if ctx.exclude.is_match(change.path.as_path()) {
        return Status::Excluded;
    }
    if change.problem.is_some() {
        return Status::Unverifiable;
    }
    if let Some(id) = release {
        return Status::Release(id.to_string());
    }
    let mut best: Option<Status> = None;
    for e in ctx.entries {
        let Some((_, approved_at)) = &e.approval else {
            continue;
        };
        if *approved_at > ctx.now
            || !e.covers(ctx.host, ctx.tree, &change.path)
            || !e.window_overlaps(obs.t0, obs.t)
            || !e.allows_result(&change.path, change.actual.as_ref())
        {
            continue;
        }
        let candidate = if *approved_at <= obs.observed_at {
            Status::Change(e.id.clone())
        } else {
            Status::Retroactive(e.id.clone())
        };
        // An approval in advance beats one after the fact; ties go to the smallest id.
        if best.as_ref().is_none_or(|b| candidate < *b) {
            best = Some(candidate);
        }
    }
    best.unwrap_or(Status::Unauthorized)
}

/// A stored change as the collector re-examines it when a change entry arrives after the fact.
#[derive(Debug, Clone, Copy)]
pub struct StoredChangeRef<'a> {
    /// Host.
    pub host: &'a str,
    /// Tree.
    pub tree: &'a str,
    /// Path.
    pub path: &'a crate::util::pathbytes::RelPath,
    /// New content hash (`None` for a removal or a non-file).
    pub blake3: Option<[u8; 32]>,
    /// The path is gone.
    pub removed: bool,
    /// The agent's observation window (t0, observed_at].
    pub t0: Timestamp,
    /// When the agent observed it.
    pub observed_at: Timestamp,
}

/// The status a stored change gets from a newly arrived (or newly approved) entry, if it covers it.
pub fn reclassify(c: &StoredChangeRef<'_>, entry: &ChangeEntry, now: Timestamp) -> Option<Status> {
    let (_, approved_at) = entry.approval.as_ref()?;
    let actual = (!c.removed).then_some(crate::judge::diff::State {
        kind: crate::scan::snapshot::Kind::File,
        size: None,
        mode: 0,
        uid: None,
        gid: None,
        blake3: c.blake3,
        target: None,
        xattrs: None,
    });
    let applies = *approved_at <= now
        && entry.covers(c.host, c.tree, c.path)
        && entry.window_overlaps(c.t0, c.observed_at)
        && entry.allows_result(c.path, actual.as_ref());
    if !applies {
        return None;
    }
    Some(if *approved_at <= c.observed_at {
        Status::Change(entry.id.clone())
    } else {
        Status::Retroactive(entry.id.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::diff::{ChangeKind, State};
    use crate::scan::snapshot::Kind;
    use crate::util::pathbytes::RelPath;
    use crate::util::timefmt::parse_timestamp as ts;
    use std::path::Path;

    fn entry(id: &str, approved_at: &str, start: &str, end: &str, paths: &str) -> ChangeEntry {
        let text = format!(
            "id = \"{id}\"\nsummary = \"s\"\nrequested_by = \"alice\"\napproved_by = \"bob\"\napproved_at = \"{approved_at}\"\nhosts = [\"web-*\"]\ntrees = [\"shop\"]\npaths = [\"{paths}\"]\nstart = \"{start}\"\nend = \"{end}\"\n"
        );
        ChangeEntry::parse(&text, Path::new("x.toml")).unwrap()
    }

    fn change(path: &str, problem: Option<&str>) -> Change {
        let s = State {
            kind: Kind::File,
            size: Some(1),
            mode: 0o644,
            uid: Some(0),
            gid: Some(0),
            blake3: Some([1; 32]),
            target: None,
            xattrs: None,
        };
        Change {
            path: RelPath::from_bytes(path.as_bytes().to_vec()),
            kind: ChangeKind::Added,
            expected: None,
            actual: Some(s),
            problem: problem.map(String::from),
            ctime_ns: None,
        }
    }

    #[test]
    fn rules_in_order() {
        let exclude = crate::util::glob::path_set(&["var/cache/**"]).unwrap();
        let entries = vec![
            entry(
                "CHG-1",
                "2026-11-20T10:00:00Z",
                "2026-11-20T09:00:00Z",
                "2026-11-20T18:00:00Z",
                "app/**",
            ),
            entry(
                "CHG-2",
                "2026-11-20T15:00:00Z",
                "2026-11-20T09:00:00Z",
                "2026-11-20T18:00:00Z",
                "hot/**",
            ),
            entry(
                "CHG-3",
                "2026-11-30T00:00:00Z",
                "2026-11-20T09:00:00Z",
                "2026-11-20T18:00:00Z",
                "future/**",
            ),
            entry(
                "CHG-4",
                "2026-11-19T00:00:00Z",
                "2026-11-21T09:00:00Z",
                "2026-11-21T18:00:00Z",
                "later/**",
            ),
        ];
        let ctx = Context {
            host: "web-01",
            tree: "shop",
            exclude: &exclude,
            entries: &entries,
            now: ts("2026-11-21T00:00:00Z").unwrap(),
        };
        let obs = Observation {
            t0: ts("2026-11-20T11:00:00Z").unwrap(),
            t: ts("2026-11-20T12:00:00Z").unwrap(),
            observed_at: ts("2026-11-20T12:00:00Z").unwrap(),
        };
        let table: Vec<(Change, Option<&str>, Status)> = vec![
            (change("var/cache/x", None), None, Status::Excluded),
            (
                change("app/x", Some("cannot read")),
                None,
                Status::Unverifiable,
            ),
            (
                change("app/x", None),
                Some("r7"),
                Status::Release("r7".into()),
            ),
            (change("app/x", None), None, Status::Change("CHG-1".into())),
            (
                change("hot/x", None),
                None,
                Status::Retroactive("CHG-2".into()),
            ),
            (change("future/x", None), None, Status::Unauthorized),
            (change("later/x", None), None, Status::Unauthorized),
            (change("up/shell.php", None), None, Status::Unauthorized),
        ];
        for (c, release, want) in table {
            assert_eq!(classify(&c, &obs, release, &ctx), want, "{}", c.path);
        }
        let other_host = Context {
            host: "db-01",
            ..ctx
        };
        assert_eq!(
            classify(&change("app/x", None), &obs, None, &other_host),
            Status::Unauthorized
        );
    }

    #[test]
    fn status_round_trips() {
        for s in [
            "release:2026.11.3",
            "change:CHG-1",
            "retroactive:CHG-2",
            "unauthorized",
            "unverifiable",
            "excluded",
        ] {
            assert_eq!(s.parse::<Status>().unwrap().to_string(), s);
        }
        assert!("bogus".parse::<Status>().is_err());
        assert!("change:".parse::<Status>().is_err());
    }
}
