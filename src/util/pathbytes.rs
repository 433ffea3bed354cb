//! Tree-relative paths as raw bytes, because Unix file names need not be UTF-8.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A path relative to a tree root, `/`-separated, kept as the exact bytes the kernel gave us.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Wraps raw bytes (no validation: see [`RelPath::validate`]).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        RelPath(bytes.into())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// As a `Path` for joining onto a root or matching globs.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// Lossy UTF-8 for display; [`RelPath::hex_if_not_utf8`] keeps the exact bytes.
    pub fn lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// Hex of the bytes when they are not valid UTF-8, so JSON can round-trip them.
    pub fn hex_if_not_utf8(&self) -> Option<String> {
        std::str::from_utf8(&self.0)
            .is_err()
            .then(|| hex::encode(&self.0))
    }

    /// Rebuilds a path from its JSON form: `path_bytes` (hex) wins over the lossy `path`.
    pub fn from_json(path: &str, path_bytes: Option<&str>) -> Result<Self, String> {
        let rel = match path_bytes {
            Some(h) => RelPath(hex::decode(h).map_err(|e| format!("path_bytes is not hex: {e}"))?),
            None => RelPath(path.as_bytes().to_vec()),
        };
        rel.validate()?;
        Ok(rel)
    }

    /// Rejects paths that could escape or alias the tree: empty, absolute, `.`/`..`, empty parts.
    pub fn validate(&self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err("empty path".into());
        }
        if self.0.contains(&0) {
            return Err(format!("path {:?} contains a NUL byte", self.lossy()));
        }
        for part in self.0.split(|b| *b == b'/') {
            if part.is_empty() || part == b"." || part == b".." {
                return Err(format!(
                    "path {:?} is not a clean relative path (empty, `.` or `..` component, or leading `/`)",
                    self.lossy()
                ));
            }
        }
        Ok(())
    }
}

/// Lets sorted maps keyed by `RelPath` be searched with raw bytes (same order, same hash).
impl std::borrow::Borrow<[u8]> for RelPath {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lossy())
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.lossy())
    }
}

/// The JSON shape of a path: a lossy `path` and, only when needed, the exact `path_bytes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JsonPath {
    /// Lossy UTF-8 rendering, for people.
    pub path: String,
    /// Hex of the exact bytes, present only when the name is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path_bytes: Option<String>,
}

impl From<&RelPath> for JsonPath {
    fn from(p: &RelPath) -> Self {
        JsonPath {
            path: p.lossy().into_owned(),
            path_bytes: p.hex_if_not_utf8(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_round_trips_through_json_form() {
        let p = RelPath::from_bytes(b"up/\xffevil.php".to_vec());
        let j = JsonPath::from(&p);
        assert_eq!(j.path, "up/\u{fffd}evil.php");
        let back = RelPath::from_json(&j.path, j.path_bytes.as_deref()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn utf8_has_no_bytes_field() {
        let j = JsonPath::from(&RelPath::from_bytes("a/b\nc".as_bytes().to_vec()));
        assert_eq!(j.path_bytes, None);
    }

    #[test]
    fn escaping_paths_are_rejected() {
        for bad in ["", "/etc/passwd", "a/../b", "./a", "a//b", "a/"] {
            assert!(
                RelPath::from_bytes(bad.as_bytes().to_vec())
                    .validate()
                    .is_err(),
                "{bad}"
            );
        }
        assert!(
            RelPath::from_bytes(b"a/.hidden/b".to_vec())
                .validate()
                .is_ok()
        );
    }
}
