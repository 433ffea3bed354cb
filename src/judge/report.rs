//! The result of judging a tree, as JSON (DESIGN §4) and as text for a person in a hurry.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::judge::classify::Status;
use crate::judge::diff::{Change, State, xattr_detail};
use crate::judge::manifest::format_mode;
use crate::scan::snapshot::ScanStats;

/// Counts by change kind and by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Paths present now, not approved.
    pub added: u64,
    /// Approved paths that are gone.
    pub removed: u64,
    /// Content changed.
    pub modified: u64,
    /// Mode or owner changed.
    pub metadata: u64,
    /// Type changed.
    pub type_changed: u64,
    /// Release, change or retroactive.
    pub authorized: u64,
    /// Nothing authorizes them.
    pub unauthorized: u64,
    /// Could not be read.
    pub unverifiable: u64,
    /// Paths matched by an exclusion and not examined.
    pub excluded: u64,
}

/// One change and its verdict.
#[derive(Debug, Clone)]
pub struct ReportedChange {
    /// The change.
    pub change: Change,
    /// Its status.
    pub status: Status,
}

/// The verdict on one tree.
#[derive(Debug, Clone)]
pub struct Report {
    /// Tree name.
    pub tree: String,
    /// Where it was scanned.
    pub root: PathBuf,
    /// Host name.
    pub host: String,
    /// Release id of the manifest in force.
    pub release: String,
    /// Whether the manifest signature was verified.
    pub manifest_signed: bool,
    /// Scan counters.
    pub scanned: ScanStats,
    /// Counts.
    pub summary: Summary,
    /// Paths in their approved state ÷ all paths (plus removed approved ones).
    pub vetted_ratio: f64,
    /// Changes sorted by path.
    pub changes: Vec<ReportedChange>,
}

impl Report {
    /// Exit code per DESIGN §4: drift when anything is unauthorized or unverifiable.
    pub fn has_violations(&self) -> bool {
        self.summary.unauthorized + self.summary.unverifiable > 0
    }

    /// The JSON document of DESIGN §4.
    pub fn to_json(&self) -> Value {
        json!({
            "tree": self.tree,
            "root": self.root.to_string_lossy(),
            "host": self.host,
            "release": self.release,
            "manifest_signed": self.manifest_signed,
            "scanned": {
                "files": self.scanned.files,
                "dirs": self.scanned.dirs,
                "bytes": self.scanned.bytes,
                "seconds": (self.scanned.seconds * 1000.0).round() / 1000.0,
            },
            "summary": self.summary,
            "vetted_ratio": (self.vetted_ratio * 100_000.0).round() / 100_000.0,
            "changes": self.changes.iter().map(change_json).collect::<Vec<_>>(),
        })
    }

    /// Text for a terminal: unauthorized first, grouped; one summary line at the end.
    pub fn to_text(&self, color: bool) -> String {
        let paint = |code: &str, s: &str| {
            if color {
                format!("\x1b[{code}m{s}\x1b[0m")
            } else {
                s.to_string()
            }
        };
        let mut out = String::new();
        type Group = (&'static str, &'static str, fn(&Status) -> bool);
        let groups: [Group; 3] = [
            ("UNAUTHORIZED", "1;31", |s| *s == Status::Unauthorized),
            ("UNVERIFIABLE", "1;33", |s| *s == Status::Unverifiable),
            ("AUTHORIZED", "32", |s| s.is_authorized()),
        ];
        for (title, code, select) in groups {
            let members: Vec<&ReportedChange> =
                self.changes.iter().filter(|c| select(&c.status)).collect();
            if members.is_empty() {
                continue;
            }
            let _ = writeln!(out, "{} ({})", paint(code, title), members.len());
            for c in members {
                let _ = writeln!(
                    out,
                    "  {:<12} {}{}",
                    c.change.kind.as_str(),
                    c.change.path,
                    detail(c)
                );
            }
        }
        let signed = if self.manifest_signed {
            "signed"
        } else {
            "UNSIGNED"
        };
        let s = &self.summary;
        let verdict = if self.has_violations() {
            paint("1;31", "DRIFT")
        } else {
            paint("32", "OK")
        };
        let _ = writeln!(
            out,
            "{verdict} {} on {}: release {} ({signed}); {} unauthorized, {} unverifiable, {} authorized, {} excluded; vetted {:.2}%; {} files, {} dirs in {:.2} s",
            self.tree,
            self.host,
            self.release,
            s.unauthorized,
            s.unverifiable,
            s.authorized,
            s.excluded,
            self.vetted_ratio * 100.0,
            self.scanned.files,
            self.scanned.dirs,
            self.scanned.seconds,
        );
        out
    }
}

fn detail(c: &ReportedChange) -> String {
    let mut d = String::new();
    if c.status.is_authorized() {
        let _ = write!(d, "  [{}]", c.status);
    }
    if let Some(p) = &c.change.problem {
        let _ = write!(d, "  ({p})");
    }
    let (e, a) = (c.change.expected.as_ref(), c.change.actual.as_ref());
    match (e, a) {
        (None, Some(a)) => {
            let _ = write!(d, "  {} {}", a.kind.as_str(), format_mode(a.mode));
            if let Some(h) = a.blake3 {
                let _ = write!(
                    d,
                    " {} B blake3:{}…",
                    a.size.unwrap_or(0),
                    &hex::encode(h)[..16]
                );
            }
            if let Some(t) = &a.target {
                let _ = write!(d, " -> {}", String::from_utf8_lossy(t));
            }
        }
        (Some(e), Some(a)) if e.kind != a.kind => {
            let _ = write!(d, "  {} -> {}", e.kind.as_str(), a.kind.as_str());
        }
        (Some(e), Some(a)) => {
            if e.mode != a.mode {
                let _ = write!(
                    d,
                    "  mode {} -> {}",
                    format_mode(e.mode),
                    format_mode(a.mode)
                );
            }
            if e.uid.is_some() && (e.uid != a.uid || e.gid != a.gid) {
                let _ = write!(
                    d,
                    "  owner {}:{} -> {}:{}",
                    e.uid.unwrap_or(0),
                    e.gid.unwrap_or(0),
                    a.uid.unwrap_or(0),
                    a.gid.unwrap_or(0)
                );
            }
            if e.size != a.size {
                let _ = write!(
                    d,
                    "  size {} -> {}",
                    e.size.unwrap_or(0),
                    a.size.unwrap_or(0)
                );
            }
            if e.target != a.target {
                let t = |x: &Option<Vec<u8>>| {
                    x.as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default()
                        .into_owned()
                };
                let _ = write!(d, "  -> {} (was {})", t(&a.target), t(&e.target));
            }
            if let Some(x) = xattr_detail(Some(e), Some(a)) {
                let _ = write!(d, "  {x}");
            }
        }
        _ => {}
    }
    d
}

/// The JSON form of a state (only the fields that apply to its type).
pub fn state_json(s: &State) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), json!(s.kind.as_str()));
    if let Some(size) = s.size {
        m.insert("size".into(), json!(size));
    }
    m.insert("mode".into(), json!(format_mode(s.mode)));
    if let Some(uid) = s.uid {
        m.insert("uid".into(), json!(uid));
    }
    if let Some(gid) = s.gid {
        m.insert("gid".into(), json!(gid));
    }
    if let Some(h) = s.blake3 {
        m.insert("blake3".into(), json!(hex::encode(h)));
    }
    if let Some(t) = &s.target {
        m.insert("target".into(), json!(String::from_utf8_lossy(t)));
        if std::str::from_utf8(t).is_err() {
            m.insert("target_bytes".into(), json!(hex::encode(t)));
        }
    }
    if let Some(x) = &s.xattrs {
        m.insert(
            "xattrs".into(),
            json!(format!("blake3:{}", hex::encode(x.digest))),
        );
    }
    Value::Object(m)
}

fn change_json(c: &ReportedChange) -> Value {
    let mut m = Map::new();
    m.insert("path".into(), json!(c.change.path.lossy()));
    if let Some(b) = c.change.path.hex_if_not_utf8() {
        m.insert("path_bytes".into(), json!(b));
    }
    m.insert("change".into(), json!(c.change.kind.as_str()));
    m.insert("status".into(), json!(c.status.to_string()));
    match (&c.change.expected, &c.change.actual) {
        // An added path has no expected state: its fields sit at the top level (DESIGN §4).
        (None, Some(a)) => {
            if let Value::Object(fields) = state_json(a) {
                m.extend(fields);
            }
        }
        (e, a) => {
            if let Some(e) = e {
                m.insert("expected".into(), state_json(e));
            }
            if let Some(a) = a {
                m.insert("actual".into(), state_json(a));
            }
        }
    }
    if let Some(p) = &c.change.problem {
        m.insert("problem".into(), json!(p));
    }
    if let Some(d) = xattr_detail(c.change.expected.as_ref(), c.change.actual.as_ref()) {
        m.insert("detail".into(), json!(d));
    }
    Value::Object(m)
}

/// Columns of `events --format csv` (DESIGN §7).
pub const EVENTS_CSV_HEADER: &str = "id,host,seq,environment,tree,path,path_bytes,change,status,original_status,open,observed_at,window_start,received_at,blake3,previous_blake3,size,detail";

/// Events as CSV with the same fields as the JSON.
pub fn events_csv(events: &[crate::store::StoredEvent]) -> String {
    let mut out = String::from(EVENTS_CSV_HEADER);
    out.push('\n');
    for e in events {
        let fields = [
            e.id.to_string(),
            e.host.clone(),
            e.seq.to_string(),
            e.environment.clone(),
            e.tree.clone(),
            e.path.clone(),
            e.path_bytes.clone().unwrap_or_default(),
            e.change.clone(),
            e.status.clone(),
            e.original_status.clone(),
            e.open.to_string(),
            e.observed_at.clone(),
            e.window_start.clone(),
            e.received_at.clone(),
            e.blake3.clone().unwrap_or_default(),
            e.previous_blake3.clone().unwrap_or_default(),
            e.size.map(|s| s.to_string()).unwrap_or_default(),
            e.detail.clone().unwrap_or_default(),
        ];
        let line: Vec<String> = fields
            .iter()
            .map(|f| crate::kpi::csv_field(f).into_owned())
            .collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}
