//! The change log: one TOML file per approved change ticket, with its minisign signature.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use globset::GlobSet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::judge::diff::State;
use crate::judge::manifest::parse_hash;
use crate::sign::{self, TrustedKey};
use crate::util::glob;
use crate::util::pathbytes::RelPath;
use crate::util::timefmt;

/// A change entry as written in TOML (DESIGN §5). Timestamps may be strings or TOML datetimes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntry {
    /// Ticket id; must equal the file name without `.toml`.
    pub id: String,
    /// What and why.
    pub summary: String,
    /// Who asked for it.
    pub requested_by: String,
    /// Who approved it (absent: not approved yet).
    #[serde(default)]
    pub approved_by: Option<String>,
    /// When it was approved.
    #[serde(default)]
    pub approved_at: Option<toml::Value>,
    /// Host globs.
    pub hosts: Vec<String>,
    /// Tree globs.
    pub trees: Vec<String>,
    /// Path globs, relative to the tree root.
    pub paths: Vec<String>,
    /// Window start.
    pub start: toml::Value,
    /// Window end.
    pub end: toml::Value,
    /// Where the ticket lives when it was imported (`servicenow:CHG0030001`, DESIGN §12.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The ticket's URL in that system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Optional exact results: path → `blake3:<hex>` or `absent`.
    #[serde(default)]
    pub expect: BTreeMap<String, String>,
}

/// What an `expect` line allows for a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The path must end with this content.
    Content([u8; 32]),
    /// The path must be gone.
    Absent,
}

/// A validated change entry, globs compiled.
#[derive(Debug, Clone)]
pub struct ChangeEntry {
    /// Ticket id.
    pub id: String,
    /// What and why.
    pub summary: String,
    /// Who asked.
    pub requested_by: String,
    /// Who approved, and when; `None` means not approved (authorizes nothing).
    pub approval: Option<(String, Timestamp)>,
    /// Window start.
    pub start: Timestamp,
    /// Window end.
    pub end: Timestamp,
    /// The approver proven by the signature (`approved_by`, once the key that signed it was
    /// found allowed to approve as that name); `None` when unsigned or not checked.
    pub verified_approver: Option<String>,
    /// The globs as written, for display.
    pub raw: RawEntry,
    hosts: GlobSet,
    trees: GlobSet,
    paths: GlobSet,
    expect: BTreeMap<RelPath, Expected>,
}

/// A change entry that is malformed: the file and the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ChangeLogError {
    /// File or directory unreadable.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, wrong type, unknown or missing key.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A field has a bad value.
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl ChangeEntry {
    /// Parses and validates one entry's TOML; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<ChangeEntry, ChangeLogError> {
        let raw: RawEntry = toml::from_str(text).map_err(|e| ChangeLogError::Parse {
            path: origin.to_path_buf(),
            message: toml_error(&e, text),
        })?;
        Self::validate(raw, origin)
    }

    /// Validates a raw entry: every field checked, every problem named.
    pub fn validate(raw: RawEntry, origin: &Path) -> Result<ChangeEntry, ChangeLogError> {
        let invalid = |field: &str, message: String| ChangeLogError::Invalid {
            path: origin.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let id_ok = !raw.id.is_empty()
            && raw.id.len() <= 128
            && raw
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !raw.id.starts_with('.');
        if !id_ok {
            return Err(invalid(
                "id",
                format!("{:?} must be letters, digits, `.`, `_`, `-`", raw.id),
            ));
        }
        for (field, value) in [
            ("summary", &raw.summary),
            ("requested_by", &raw.requested_by),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(field, "must not be empty".into()));
            }
        }
        let time = |field: &str, v: &toml::Value| -> Result<Timestamp, ChangeLogError> {
            let s = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Datetime(d) => d.to_string(),
                other => {
                    return Err(invalid(
                        field,
                        format!("expected a timestamp, found {}", other.type_str()),
                    ));
                }
            };
            timefmt::parse_timestamp(&s).map_err(|m| invalid(field, m))
        };
        let start = time("start", &raw.start)?;
        let end = time("end", &raw.end)?;
        if end <= start {
            return Err(invalid("end", "must be after start".into()));
        }
        let approval = match (&raw.approved_by, &raw.approved_at) {
            (Some(by), Some(at)) if !by.trim().is_empty() => {
                Some((by.clone(), time("approved_at", at)?))
            }
            (None, None) => None,
            (Some(_), Some(_)) => return Err(invalid("approved_by", "must not be empty".into())),
            (Some(_), None) => {
                return Err(invalid(
                    "approved_at",
                    "missing (approved_by is set)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "approved_by",
                    "missing (approved_at is set)".into(),
                ));
            }
        };
        let globs = |field: &str, list: &[String]| -> Result<GlobSet, ChangeLogError> {
            if list.is_empty() {
                return Err(invalid(field, "must list at least one glob".into()));
            }
            glob::path_set(list).map_err(|m| invalid(field, m))
        };
        let hosts = globs("hosts", &raw.hosts)?;
        let trees = globs("trees", &raw.trees)?;
        let paths = globs("paths", &raw.paths)?;
        let mut expect = BTreeMap::new();
        for (p, v) in &raw.expect {
            let field = format!("expect.{p:?}");
            let rel = RelPath::from_bytes(p.as_bytes().to_vec());
            rel.validate().map_err(|m| invalid(&field, m))?;
            if !paths.is_match(rel.as_path()) {
                return Err(invalid(&field, "is not covered by `paths`".into()));
            }
            let e = if v == "absent" {
                Expected::Absent
            } else {
                Expected::Content(parse_hash(v).map_err(|m| invalid(&field, m))?)
            };
            expect.insert(rel, e);
        }
        Ok(ChangeEntry {
            id: raw.id.clone(),
            summary: raw.summary.clone(),
            requested_by: raw.requested_by.clone(),
            approval,
            start,
            end,
            verified_approver: None,
            raw,
            hosts,
            trees,
            paths,
            expect,
        })
    }

    /// Does this entry name this host, tree and path?
    pub fn covers(&self, host: &str, tree: &str, path: &RelPath) -> bool {
        self.hosts.is_match(host)
            && self.trees.is_match(tree)
            && self.paths.is_match(path.as_path())
    }

    /// With `expect`, only the listed results are authorized; without it, any result is.
    pub fn allows_result(&self, path: &RelPath, actual: Option<&State>) -> bool {
        if self.expect.is_empty() {
            return true;
        }
        match (self.expect.get(path), actual) {
            (Some(Expected::Absent), None) => true,
            (Some(Expected::Content(h)), Some(s)) => s.blake3.as_ref() == Some(h),
            _ => false,
        }
    }

    /// Does the window `[start, end]` overlap the observation interval `(t0, t]`?
    pub fn window_overlaps(&self, t0: Timestamp, t: Timestamp) -> bool {
        self.start <= t && self.end > t0
    }

    /// Approved by the person who asked for it (separation of duties).
    pub fn is_self_approved(&self) -> bool {
        self.approval
            .as_ref()
            .is_some_and(|(by, _)| by.trim() == self.requested_by.trim())
    }
}

/// toml's errors span several lines with a source snippet; keep line number and message.
pub fn toml_error(e: &toml::de::Error, text: &str) -> String {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = e.message().trim().replace('\n', " ");
    match line {
        Some(l) => format!("line {l}: {msg}"),
        None => msg,
    }
}

/// How signatures and approvals are checked when loading.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Approver keys; empty means entries are taken unsigned.
    pub approver_keys: Vec<TrustedKey>,
    /// Entries without a valid signature are refused (DESIGN `require_signatures`).
    pub require_signatures: bool,
    /// Accept `approved_by == requested_by`.
    pub allow_self_approval: bool,
}

/// The loaded change log: entries that may authorize, and entries refused with the reason.
#[derive(Debug, Default)]
pub struct ChangeLog {
    /// Entries that passed validation and the signature policy.
    pub entries: Vec<ChangeEntry>,
    /// One line per entry refused (bad signature, self-approval): reported, never authorizing.
    pub refused: Vec<String>,
}

/// Loads every `*.toml` in `dir`; a malformed entry is an error, a badly signed one is refused.
pub fn load_dir(dir: &Path, policy: &Policy) -> Result<ChangeLog, ChangeLogError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ChangeLogError::Io { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    let mut log = ChangeLog::default();
    for path in files {
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let text = String::from_utf8(bytes.clone()).map_err(|_| ChangeLogError::Parse {
            path: path.clone(),
            message: "not UTF-8 text".into(),
        })?;
        let entry = ChangeEntry::parse(&text, &path)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if stem != entry.id {
            return Err(ChangeLogError::Invalid {
                path,
                field: "id".into(),
                message: format!("{:?} does not match the file name {stem:?}.toml", entry.id),
            });
        }
        let mut entry = entry;
        match admit(&entry, &bytes, &path, policy) {
            Ok(verified) => entry.verified_approver = verified,
            Err(reason) => {
                log.refused.push(format!(
                    "{}: {reason}; it authorizes nothing",
                    path.display()
                ));
                continue;
            }
        }
        log.entries.push(entry);
    }
    Ok(log)
}

/// Why an otherwise valid entry may not authorize anything, if it may not.
pub fn refusal(entry: &ChangeEntry, bytes: &[u8], path: &Path, policy: &Policy) -> Option<String> {
    admit(entry, bytes, path, policy).err()
}

/// Checks an entry file's signature (`path`'s `.minisig`) and the approval rules; the verified
/// approver, or why the entry authorizes nothing.
pub fn admit(
    entry: &ChangeEntry,
    bytes: &[u8],
    path: &Path,
    policy: &Policy,
) -> Result<Option<String>, String> {
    let signer = if !policy.approver_keys.is_empty() || policy.require_signatures {
        Some(sign::verify_bytes(bytes, path, &policy.approver_keys).map_err(|e| e.to_string())?)
    } else {
        None
    };
    approval_rules(entry, signer, policy.allow_self_approval)
}

/// The approval rules once the signature is known good (or not checked: `signer` is `None`):
/// the signing key must be allowed to approve as `approved_by` (DESIGN §12.2), and the approver
/// must not be the requester (separation of duties, per person). `check`, the agent and the
/// collector all come here. Returns the verified approver.
pub fn approval_rules(
    entry: &ChangeEntry,
    signer: Option<&TrustedKey>,
    allow_self_approval: bool,
) -> Result<Option<String>, String> {
    let verified = match signer {
        Some(k) => sign::verified_approver(k, entry.approval.as_ref().map(|(by, _)| by.as_str()))
            .map_err(|e| e.to_string())?,
        None => None,
    };
    if entry.is_self_approved() && !allow_self_approval {
        return Err(format!(
            "approved by its own requester {:?} (separation of duties)",
            entry.requested_by
        ));
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "CHG-1042"
summary = "Hotfix: checkout rounding"
requested_by = "alice"
approved_by = "bob"
approved_at = "2026-11-20T21:50:00Z"
hosts = ["web-*"]
trees = ["shop"]
paths = ["app/checkout/**"]
start = "2026-11-20T22:00:00Z"
end = 2026-11-20T23:00:00Z
"#;

    fn parse(text: &str) -> Result<ChangeEntry, String> {
        ChangeEntry::parse(text, Path::new("CHG-1042.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn good_entry_covers_its_scope() {
        let e = parse(GOOD).unwrap();
        let p = |s: &str| RelPath::from_bytes(s.as_bytes().to_vec());
        assert!(e.covers("web-01", "shop", &p("app/checkout/pay.js")));
        assert!(!e.covers("db-01", "shop", &p("app/checkout/pay.js")));
        assert!(!e.covers("web-01", "blog", &p("app/checkout/pay.js")));
        assert!(!e.covers("web-01", "shop", &p("app/cart.js")));
        let t = |s: &str| timefmt::parse_timestamp(s).unwrap();
        assert!(e.window_overlaps(t("2026-11-20T21:00:00Z"), t("2026-11-20T22:30:00Z")));
        assert!(!e.window_overlaps(t("2026-11-20T23:00:00Z"), t("2026-11-21T00:00:00Z")));
        assert!(!e.window_overlaps(t("2026-11-20T20:00:00Z"), t("2026-11-20T21:59:00Z")));
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (GOOD.replace("id = ", "colour = \"red\"\nid = "), "colour"),
            (
                GOOD.replace("\"2026-11-20T22:00:00Z\"", "\"tonight\""),
                "start",
            ),
            (
                GOOD.replace("end = 2026-11-20T23:00:00Z", "end = 2026-11-20T21:00:00Z"),
                "end: must be after start",
            ),
            (GOOD.replace("[\"app/checkout/**\"]", "[]"), "paths"),
            (GOOD.replace("[\"web-*\"]", "[\"web-[\"]"), "hosts"),
            (
                GOOD.replace("approved_at = \"2026-11-20T21:50:00Z\"\n", ""),
                "approved_at",
            ),
            (GOOD.replace("summary", "sumary"), "sumary"),
            (GOOD.replace("\"CHG-1042\"", "\"../x\""), "id"),
            ("id = [".to_string(), "line 1"),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn expect_binds_content() {
        let h = "blake3:".to_string() + &"ab".repeat(32);
        let text = format!(
            "{GOOD}\n[expect]\n\"app/checkout/pay.js\" = \"{h}\"\n\"app/checkout/old.js\" = \"absent\"\n"
        );
        let e = parse(&text).unwrap();
        let p = |s: &str| RelPath::from_bytes(s.as_bytes().to_vec());
        let state = |b: u8| State {
            kind: crate::scan::snapshot::Kind::File,
            size: Some(1),
            mode: 0o644,
            uid: None,
            gid: None,
            blake3: Some([b; 32]),
            target: None,
            xattrs: None,
        };
        assert!(e.allows_result(&p("app/checkout/pay.js"), Some(&state(0xab))));
        assert!(!e.allows_result(&p("app/checkout/pay.js"), Some(&state(0xcd))));
        assert!(e.allows_result(&p("app/checkout/old.js"), None));
        assert!(!e.allows_result(&p("app/checkout/other.js"), Some(&state(0xab))));
        let outside = format!("{GOOD}\n[expect]\n\"etc/passwd\" = \"absent\"\n");
        assert!(parse(&outside).unwrap_err().contains("not covered"));
    }

    #[test]
    fn a_bound_key_approves_only_as_its_person() {
        let dir = tempfile::tempdir().unwrap();
        let (_, public) = sign::keygen(&dir.path().join("bob"), false).unwrap();
        let any = sign::load_public_key(&public).unwrap();
        let bob = any.clone().bound_to("bob");
        let e = parse(GOOD).unwrap();
        assert_eq!(
            approval_rules(&e, Some(&bob), false).unwrap().as_deref(),
            Some("bob")
        );
        let carol = parse(&GOOD.replace("\"bob\"", "\"carol\"")).unwrap();
        let why = approval_rules(&carol, Some(&bob), false).unwrap_err();
        assert!(
            why.contains("\"carol\"") && why.contains("\"bob\""),
            "{why}"
        );
        // An `approver_keys` key attests whatever name the entry carries.
        assert_eq!(
            approval_rules(&carol, Some(&any), false)
                .unwrap()
                .as_deref(),
            Some("carol")
        );
        assert_eq!(approval_rules(&carol, None, false).unwrap(), None);
    }

    #[test]
    fn self_approval_is_refused_unless_allowed() {
        let e = parse(&GOOD.replace("\"bob\"", "\"alice\"")).unwrap();
        assert!(e.is_self_approved());
        let p = Path::new("CHG-1042.toml");
        assert!(
            refusal(&e, b"", p, &Policy::default())
                .unwrap()
                .contains("separation of duties")
        );
        let allow = Policy {
            allow_self_approval: true,
            ..Policy::default()
        };
        assert!(refusal(&e, b"", p, &allow).is_none());
    }
}
