//! Glob sets with the one setting that matters for security: `*` never crosses `/`.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Compiles path globs so that `cache/*` cannot hide `cache/a/b/evil.so` (DESIGN §9b).
pub fn path_set<S: AsRef<str>>(globs: &[S]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        let g = g.as_ref();
        if g.is_empty() {
            return Err("empty glob".into());
        }
        let glob = GlobBuilder::new(g)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("bad glob {g:?}: {e}"))?;
        b.add(glob);
    }
    b.build().map_err(|e| e.to_string())
}

/// Two glob lists as one, sorted, each glob once (compared as written).
pub fn union(a: &[String], b: &[String]) -> Vec<String> {
    let all: std::collections::BTreeSet<&String> = a.iter().chain(b).collect();
    all.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_does_not_cross_slash() {
        let s = path_set(&["cache/*"]).unwrap();
        assert!(s.is_match("cache/a"));
        assert!(!s.is_match("cache/a/b/evil.so"));
        let s = path_set(&["cache/**"]).unwrap();
        assert!(s.is_match("cache/a/b/evil.so"));
    }

    #[test]
    fn empty_and_broken_globs_are_errors() {
        assert!(path_set(&[""]).is_err());
        assert!(path_set(&["a/[b"]).is_err());
    }
}
