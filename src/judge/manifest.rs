//! The signed manifest: the approved content of a tree for one release (DESIGN §5).
//!
//! Written canonically (fixed key order, entries sorted by path, one entry per line) so the same
//! tree always gives the same bytes apart from `created_at`, and diffs of two manifests read well.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::judge::diff::State;
use crate::scan::snapshot::{Kind, Snapshot};
use crate::scan::xattr::{XattrName, Xattrs};
use crate::util::pathbytes::RelPath;
use crate::util::timefmt;

/// The `format` value of every manifest this version writes and reads.
pub const FORMAT: &str = "driftwatch.manifest.v1";

/// One approved path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Path relative to the tree root.
    pub path: RelPath,
    /// Its approved state.
    pub state: State,
}

/// The approved content of a tree for one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Tree name (`shop`).
    pub tree: String,
    /// Release id (`2026.11.3`).
    pub release: String,
    /// When the pipeline built it; a one-shot check's observation window starts here.
    pub created_at: Timestamp,
    /// Who built it (`ci@build-7`).
    pub created_by: String,
    /// Exclusion globs the release carries (`manifest build --exclude`): every check and agent
    /// applies them on top of its own. Sorted and without duplicates, so equal sets give equal
    /// bytes; empty in manifests written before the key existed.
    pub exclude: Vec<String>,
    /// Entries sorted by path.
    pub entries: Vec<ManifestEntry>,
}

/// A manifest could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The JSON is malformed or has wrong or unknown fields.
    #[error("{path}: not a valid manifest: {message}")]
    Parse { path: PathBuf, message: String },
    /// A field has a bad value.
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// A path in the tree could not be read, so no honest manifest can be written.
    #[error("cannot build a manifest: {path}: {message}")]
    Unreadable { path: String, message: String },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonManifest {
    format: String,
    tree: String,
    release: String,
    created_at: String,
    created_by: String,
    // Any JSON here (absent: an empty list; `null` is refused): a wrong type is reported with
    // its field name, not as a serde message.
    #[serde(default = "no_globs")]
    exclude: serde_json::Value,
    entries: Vec<JsonEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    path_bytes: Option<String>,
    #[serde(rename = "type")]
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    size: Option<u64>,
    mode: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    blake3: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    target_bytes: Option<String>,
    /// `blake3:<digest>` of the extended attributes (crate::scan::xattr), omitted when there are none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    xattrs: Option<String>,
    /// Their names, each with the 16-hex short digest of its value: what lets `check` say which
    /// attribute changed. Keys are sorted; a name that is not UTF-8 is written `hex:<hex>` (real
    /// names always start with a namespace such as `user.`, so the form cannot collide).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    xattr_names: Option<BTreeMap<String, String>>,
}

/// Formats permission bits the way people write them (`0644`, `4755`).
pub fn format_mode(mode: u32) -> String {
    format!("{mode:04o}")
}

impl Manifest {
    /// Builds a manifest from a scan; fails if any path could not be read (it would be unvetted).
    pub fn from_snapshot(
        snap: &Snapshot,
        tree: &str,
        release: &str,
        created_by: &str,
        record_owner: bool,
    ) -> Result<Manifest, ManifestError> {
        let mut entries = Vec::with_capacity(snap.entries.len());
        for e in &snap.entries {
            if let Some(problem) = &e.problem {
                return Err(ManifestError::Unreadable {
                    path: e.path.to_string(),
                    message: problem.clone(),
                });
            }
            let mut state = State::of(e);
            if !record_owner {
                state.uid = None;
                state.gid = None;
            }
            entries.push(ManifestEntry {
                path: e.path.clone(),
                state,
            });
        }
        Ok(Manifest {
            tree: tree.to_string(),
            release: release.to_string(),
            created_at: Timestamp::now(),
            created_by: created_by.to_string(),
            exclude: Vec::new(),
            entries,
        })
    }

    /// Records the exclusion globs the release carries (sorted, duplicates dropped). The
    /// snapshot must have been taken with the same exclusions, so the entries leave them out.
    pub fn with_exclude(mut self, globs: &[String]) -> Manifest {
        self.exclude = canonical_globs(globs);
        self
    }

    /// The canonical JSON bytes (what gets signed).
    pub fn to_canonical_json(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("strings serialize");
        // `exclude` sits between the header and the entries, on the header's line, and only
        // when there is one: a manifest without exclusions keeps the bytes it always had.
        let exclude = if self.exclude.is_empty() {
            String::new()
        } else {
            format!(
                ",\"exclude\":{}",
                serde_json::to_string(&self.exclude).expect("strings serialize")
            )
        };
        let mut out = format!(
            "{{\"format\":{},\"tree\":{},\"release\":{},\"created_at\":{},\"created_by\":{}{exclude},\n \"entries\":[",
            q(FORMAT),
            q(&self.tree),
            q(&self.release),
            q(&timefmt::format_timestamp(self.created_at)),
            q(&self.created_by)
        );
        for (i, e) in self.entries.iter().enumerate() {
            out.push_str(if i == 0 { "\n  " } else { ",\n  " });
            out.push_str(&serde_json::to_string(&to_json_entry(e)).expect("entries serialize"));
        }
        out.push_str("]}\n");
        out
    }

    /// Parses and validates manifest bytes; `origin` names the file in errors.
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<Manifest, ManifestError> {
        let invalid = |field: String, message: String| ManifestError::Invalid {
            path: origin.to_path_buf(),
            field,
            message,
        };
        let raw: JsonManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse {
                path: origin.to_path_buf(),
                message: e.to_string(),
            })?;
        if raw.format != FORMAT {
            return Err(invalid(
                "format".into(),
                format!("{:?} is not {FORMAT:?}", raw.format),
            ));
        }
        for (field, value) in [("tree", &raw.tree), ("release", &raw.release)] {
            if value.trim().is_empty() {
                return Err(invalid(field.into(), "must not be empty".into()));
            }
        }
        let created_at = timefmt::parse_timestamp(&raw.created_at)
            .map_err(|m| invalid("created_at".into(), m))?;
        let exclude = parse_exclude(&raw.exclude).map_err(|(field, m)| invalid(field, m))?;
        let mut seen = HashSet::with_capacity(raw.entries.len());
        let mut entries = Vec::with_capacity(raw.entries.len());
        for (i, je) in raw.entries.into_iter().enumerate() {
            let entry = from_json_entry(je)
                .map_err(|(field, m)| invalid(format!("entries[{i}].{field}"), m))?;
            if !seen.insert(entry.path.clone()) {
                return Err(invalid(
                    format!("entries[{i}].path"),
                    format!("{} appears twice", entry.path),
                ));
            }
            entries.push(entry);
        }
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(Manifest {
            tree: raw.tree,
            release: raw.release,
            created_at,
            created_by: raw.created_by,
            exclude,
            entries,
        })
    }

    /// The exclusions of a canonical manifest, read from its first line alone (where
    /// [`Manifest::to_canonical_json`] puts them), so a check can walk the tree with them while
    /// the rest is verified and parsed. `None` when that line is not a canonical header (a
    /// manifest written by another tool, or a bad `exclude`): then the caller parses it whole
    /// first. JSON strings hold no raw newline, so the line is whole tokens, and a later
    /// second `exclude` key would make the full parse fail: the two readings cannot differ.
    pub fn header_exclude(bytes: &[u8]) -> Option<Vec<String>> {
        let line = &bytes[..bytes.iter().position(|b| *b == b'\n')?];
        let mut header = line.strip_suffix(b",")?.to_vec();
        header.push(b'}');
        let serde_json::Value::Object(map) = serde_json::from_slice(&header).ok()? else {
            return None;
        };
        match map.get("exclude") {
            None => Some(Vec::new()),
            Some(v) => parse_exclude(v).ok(),
        }
    }

    /// Reads and parses a manifest file (no signature check: see `sign::verify_bytes`).
    pub fn read(path: &Path) -> Result<(Manifest, Vec<u8>), ManifestError> {
        let bytes = std::fs::read(path).map_err(|e| ManifestError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok((Manifest::parse(&bytes, path)?, bytes))
    }
}

fn no_globs() -> serde_json::Value {
    serde_json::Value::Array(Vec::new())
}

/// Sorted, without duplicates: the order globs were given in means nothing.
fn canonical_globs(globs: &[String]) -> Vec<String> {
    let set: std::collections::BTreeSet<&String> = globs.iter().collect();
    set.into_iter().cloned().collect()
}

/// The `exclude` value: a list of strings, each a valid path glob (compiled the way every
/// exclusion is, `*` not crossing `/`). Errors name the field (`exclude`, `exclude[2]`).
fn parse_exclude(v: &serde_json::Value) -> Result<Vec<String>, (String, String)> {
    let Some(items) = v.as_array() else {
        return Err(("exclude".into(), format!("{v} is not a list of globs")));
    };
    let mut globs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(g) = item.as_str() else {
            return Err((format!("exclude[{i}]"), format!("{item} is not a string")));
        };
        crate::util::glob::path_set(&[g]).map_err(|m| (format!("exclude[{i}]"), m))?;
        globs.push(g.to_string());
    }
    Ok(canonical_globs(&globs))
}

fn to_json_entry(e: &ManifestEntry) -> JsonEntry {
    let s = &e.state;
    let (target, target_bytes) = match &s.target {
        Some(t) => {
            let lossy = String::from_utf8_lossy(t).into_owned();
            let exact = std::str::from_utf8(t).is_err().then(|| hex::encode(t));
            (Some(lossy), exact)
        }
        None => (None, None),
    };
    let (xattrs, xattr_names) = match &s.xattrs {
        Some(x) => {
            let names = x
                .names
                .iter()
                .map(|n| (xattr_name_key(&n.name), hex::encode(n.value)))
                .collect::<BTreeMap<_, _>>();
            (
                Some(format!("blake3:{}", hex::encode(x.digest))),
                (!names.is_empty()).then_some(names),
            )
        }
        None => (None, None),
    };
    JsonEntry {
        path: e.path.lossy().into_owned(),
        path_bytes: e.path.hex_if_not_utf8(),
        kind: s.kind,
        size: s.size,
        mode: format_mode(s.mode),
        uid: s.uid,
        gid: s.gid,
        blake3: s.blake3.map(hex::encode),
        target,
        target_bytes,
        xattrs,
        xattr_names,
    }
}

/// An attribute name as a JSON key (see [`JsonEntry::xattr_names`]).
fn xattr_name_key(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(s) if !s.starts_with("hex:") => s.to_string(),
        _ => format!("hex:{}", hex::encode(name)),
    }
}

/// The `xattrs` and `xattr_names` fields of an entry, checked.
fn parse_xattrs(
    digest: Option<&str>,
    names: Option<&BTreeMap<String, String>>,
) -> Result<Option<Xattrs>, (&'static str, String)> {
    let Some(d) = digest else {
        return match names {
            Some(_) => Err(("xattr_names", "given without \"xattrs\"".into())),
            None => Ok(None),
        };
    };
    let bad_digest = || {
        (
            "xattrs",
            format!("{d:?} is not \"blake3:\" followed by 64 hex digits"),
        )
    };
    let hex_digest = d.strip_prefix("blake3:").ok_or_else(bad_digest)?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| bad_digest())?;
    let mut out = Vec::new();
    for (key, value) in names.into_iter().flatten() {
        let name = match key.strip_prefix("hex:") {
            Some(h) => hex::decode(h)
                .map_err(|_| ("xattr_names", format!("{key:?}: not hex after \"hex:\"")))?,
            None => key.as_bytes().to_vec(),
        };
        if name.is_empty() || name.contains(&0) {
            return Err(("xattr_names", format!("{key:?} is not an attribute name")));
        }
        let mut short = [0u8; 8];
        hex::decode_to_slice(value, &mut short).map_err(|_| {
            (
                "xattr_names",
                format!("{key:?}: {value:?} is not a 16-digit hex digest"),
            )
        })?;
        out.push(XattrName { name, value: short });
    }
    // Keys sort as strings; names compare as bytes (they differ only for `hex:` keys).
    out.sort_unstable();
    if out.windows(2).any(|w| w[0].name == w[1].name) {
        return Err(("xattr_names", "a name appears twice".into()));
    }
    Ok(Some(Xattrs::new(digest, out)))
}

fn from_json_entry(j: JsonEntry) -> Result<ManifestEntry, (&'static str, String)> {
    let path = RelPath::from_json(&j.path, j.path_bytes.as_deref()).map_err(|m| ("path", m))?;
    let mode = u32::from_str_radix(&j.mode, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or((
            "mode",
            format!("{:?} is not an octal mode like \"0644\"", j.mode),
        ))?;
    let blake3 = match &j.blake3 {
        Some(h) => Some(parse_hash(h).map_err(|m| ("blake3", m))?),
        None => None,
    };
    let target = match (&j.target, &j.target_bytes) {
        (_, Some(h)) => {
            Some(hex::decode(h).map_err(|e| ("target_bytes", format!("not hex: {e}")))?)
        }
        (Some(t), None) => Some(t.as_bytes().to_vec()),
        (None, None) => None,
    };
    let xattrs = parse_xattrs(j.xattrs.as_deref(), j.xattr_names.as_ref())?;
    match j.kind {
        Kind::File if j.size.is_none() => return Err(("size", "a file needs a size".into())),
        Kind::File if blake3.is_none() => {
            return Err(("blake3", "a file needs a blake3 hash".into()));
        }
        Kind::Symlink if target.is_none() => {
            return Err(("target", "a symlink needs a target".into()));
        }
        _ => {}
    }
    let state = State {
        kind: j.kind,
        size: j.size,
        mode,
        uid: j.uid,
        gid: j.gid,
        blake3,
        target,
        xattrs,
    };
    Ok(ManifestEntry { path, state })
}

/// Parses a 64-digit hex BLAKE3 hash, with or without a `blake3:` prefix.
pub fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let h = s.strip_prefix("blake3:").unwrap_or(s);
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out)
        .map_err(|_| format!("{s:?} is not a 64-digit hex BLAKE3 hash"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let file = State {
            kind: Kind::File,
            size: Some(3),
            mode: 0o644,
            uid: Some(0),
            gid: Some(0),
            blake3: Some([7; 32]),
            target: None,
            xattrs: Xattrs::from_pairs(vec![
                (b"security.capability".to_vec(), vec![1, 0, 0, 2]),
                (b"user.\xff".to_vec(), b"1".to_vec()),
            ]),
        };
        let link = State {
            kind: Kind::Symlink,
            size: None,
            mode: 0o777,
            uid: None,
            gid: None,
            blake3: None,
            target: Some(b"\xfftarget".to_vec()),
            xattrs: None,
        };
        Manifest {
            tree: "shop".into(),
            release: "r1".into(),
            created_at: timefmt::parse_timestamp("2026-11-21T10:00:00Z").unwrap(),
            created_by: "ci".into(),
            exclude: Vec::new(),
            entries: vec![
                ManifestEntry {
                    path: RelPath::from_bytes(b"a\nb".to_vec()),
                    state: file,
                },
                ManifestEntry {
                    path: RelPath::from_bytes(b"z\xff".to_vec()),
                    state: link,
                },
            ],
        }
    }

    #[test]
    fn canonical_json_round_trips() {
        let m = sample();
        let json = m.to_canonical_json();
        assert!(json.starts_with("{\"format\":\"driftwatch.manifest.v1\",\"tree\":\"shop\""));
        let back = Manifest::parse(json.as_bytes(), Path::new("m.json")).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_canonical_json(), json);
        // The attribute names survive, so a check can name what changed; paths without
        // attributes carry neither key.
        assert!(json.contains("\"xattr_names\":{\"hex:75736572"), "{json}");
        assert_eq!(json.matches("\"xattrs\":\"blake3:").count(), 1, "{json}");
        let names = &back.entries[0].state.xattrs.as_ref().unwrap().names;
        assert_eq!(names[1].name, b"user.\xff");
    }

    #[test]
    fn bad_xattrs_are_refused_naming_the_field() {
        let json = sample().to_canonical_json();
        let digest = format!(
            "blake3:{}",
            hex::encode(sample().entries[0].state.xattrs.as_ref().unwrap().digest)
        );
        let cases = [
            (json.replace(&digest, "blake3:xyz"), "entries[0].xattrs"),
            (json.replace(&digest, &digest[7..]), "entries[0].xattrs"),
            (
                json.replace(&format!("\"xattrs\":\"{digest}\","), ""),
                "entries[0].xattr_names",
            ),
            (
                json.replace("\"security.capability\":\"", "\"security.capability\":\"zz"),
                "entries[0].xattr_names",
            ),
            (
                json.replace("\"hex:75736572", "\"hex:q"),
                "entries[0].xattr_names",
            ),
        ];
        for (bad, field) in cases {
            assert_ne!(bad, json, "case for {field} did not apply");
            let err = Manifest::parse(bad.as_bytes(), Path::new("m.json"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("m.json: "), "{err}");
            assert!(err.contains(field), "{err} should name {field}");
        }
        // Only the digest (a hand-written manifest): accepted.
        let bare = json.replace(
            &json[json.find(",\"xattr_names\"").unwrap()..json.find("}},").unwrap() + 1],
            "",
        );
        let m = Manifest::parse(bare.as_bytes(), Path::new("m.json")).unwrap();
        assert!(m.entries[0].state.xattrs.as_ref().unwrap().names.is_empty());
    }

    #[test]
    fn exclusions_are_canonical_and_absent_when_empty() {
        let plain = sample().to_canonical_json();
        assert!(!plain.contains("exclude"), "{plain}");
        let m = sample().with_exclude(&[
            "var/log/**".into(),
            "var/cache/**".into(),
            "var/log/**".into(),
        ]);
        assert_eq!(m.exclude, ["var/cache/**", "var/log/**"]);
        let json = m.to_canonical_json();
        assert!(
            json.contains("\"created_by\":\"ci\",\"exclude\":[\"var/cache/**\",\"var/log/**\"],\n \"entries\":["),
            "{json}"
        );
        let back = Manifest::parse(json.as_bytes(), Path::new("m.json")).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_canonical_json(), json);
        // An explicit empty list reads as none, and writes as none.
        let empty = plain.replace(
            "\"created_by\":\"ci\",",
            "\"created_by\":\"ci\",\"exclude\":[],",
        );
        let back = Manifest::parse(empty.as_bytes(), Path::new("m.json")).unwrap();
        assert_eq!(back.to_canonical_json(), plain);
    }

    #[test]
    fn header_exclusions_match_the_full_parse() {
        let m = sample().with_exclude(&["var/cache/**".into()]);
        let json = m.to_canonical_json();
        assert_eq!(
            Manifest::header_exclude(json.as_bytes()),
            Some(vec!["var/cache/**".to_string()])
        );
        let plain = sample().to_canonical_json();
        assert_eq!(Manifest::header_exclude(plain.as_bytes()), Some(vec![]));
        // Not canonical (pretty-printed): no answer, the caller parses the whole file.
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        )
        .unwrap();
        assert_eq!(Manifest::header_exclude(pretty.as_bytes()), None);
        let bad = json.replace("[\"var/cache/**\"]", "[\"a/[\"]");
        assert_eq!(Manifest::header_exclude(bad.as_bytes()), None);
    }

    #[test]
    fn bad_exclusions_are_named() {
        let plain = sample().to_canonical_json();
        for (value, field) in [
            ("7", "m.json: exclude: 7 is not a list of globs"),
            ("null", "m.json: exclude: null is not a list of globs"),
            (
                "\"var/**\"",
                "m.json: exclude: \"var/**\" is not a list of globs",
            ),
            ("[\"ok/**\",3]", "m.json: exclude[1]: 3 is not a string"),
            ("[\"a/[\"]", "m.json: exclude[0]: bad glob"),
            ("[\"\"]", "m.json: exclude[0]: empty glob"),
        ] {
            let bad = plain.replace(
                "\"created_by\":\"ci\",",
                &format!("\"created_by\":\"ci\",\"exclude\":{value},"),
            );
            let err = Manifest::parse(bad.as_bytes(), Path::new("m.json"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(field), "{err} should start with {field}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let json = sample().to_canonical_json();
        let cases = [
            (json.replace("\"0644\"", "\"rw-r--r--\""), "entries[0].mode"),
            (json.replace("driftwatch.manifest.v1", "v0"), "format"),
            (
                json.replace("2026-11-21T10:00:00Z", "yesterday"),
                "created_at",
            ),
            (json.replace("\"r1\"", "\"\""), "release"),
        ];
        for (bad, field) in cases {
            let err = Manifest::parse(bad.as_bytes(), Path::new("m.json"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
        let err = Manifest::parse(&json.as_bytes()[..40], Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("m.json: not a valid manifest"), "{err}");
        let err = Manifest::parse(
            json.replace("\"mode\"", "\"mood\"").as_bytes(),
            Path::new("m.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mood"), "{err}");
    }

    #[test]
    fn escaping_paths_and_duplicates_are_rejected() {
        let json = sample()
            .to_canonical_json()
            .replace("\"a\\nb\"", "\"../etc/passwd\"");
        assert!(
            Manifest::parse(json.as_bytes(), Path::new("m"))
                .unwrap_err()
                .to_string()
                .contains("entries[0].path")
        );
        let json = sample().to_canonical_json().replace(
            "\"path\":\"z\u{fffd}\",\"path_bytes\":\"7aff\"",
            "\"path\":\"a\\nb\"",
        );
        assert!(
            Manifest::parse(json.as_bytes(), Path::new("m"))
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
