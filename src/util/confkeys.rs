//! Unknown-key detection for TOML configs that reports every bad key at once.
//!
//! serde's `deny_unknown_fields` stops at the first unknown key; a sysadmin fixing a config wants
//! the whole list together with every other problem. So the config structs accept unknown keys,
//! and [`deserialize`] collects every key they ignored (via `serde_ignored`) as a problem. The
//! structs are the one list of keys: there is no schema table beside them to keep in step.

use serde::de::DeserializeOwned;

/// Deserializes `table` into `T`; every key `T` does not know is pushed onto `problems` as
/// `path.to.key: unknown key` (array items as `tree[0].key`). A value of the wrong type is the
/// error (serde stops there).
pub fn deserialize<T: DeserializeOwned>(
    table: toml::Table,
    problems: &mut Vec<String>,
) -> Result<T, toml::de::Error> {
    let mut unknown = Vec::new();
    let value = serde_ignored::deserialize(toml::Value::Table(table), |path| {
        unknown.push(key_path(&path));
    });
    problems.extend(unknown.into_iter().map(|k| format!("{k}: unknown key")));
    value
}

/// `tree[0].route` for the path serde_ignored reports as `tree.0.route`.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Cfg {
        name: i64,
        #[serde(default)]
        scan: Option<Scan>,
        #[serde(default)]
        tree: Vec<Tree>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Scan {
        interval: i64,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Tree {
        name: i64,
    }

    #[test]
    fn every_unknown_key_is_named() {
        let t: toml::Table = "colour = 1\nname = 2\n[scan]\nintervl = 3\ninterval = 4\n[[tree]]\nname = 5\nroute = 6\n"
            .parse()
            .unwrap();
        let mut problems = Vec::new();
        let cfg: Cfg = deserialize(t, &mut problems).unwrap();
        assert_eq!(cfg.name, 2);
        assert_eq!(
            problems,
            [
                "colour: unknown key",
                "scan.intervl: unknown key",
                "tree[0].route: unknown key"
            ]
        );
    }

    #[test]
    fn a_wrong_type_is_the_error_and_unknown_keys_still_listed() {
        let t: toml::Table = "name = \"x\"\ncolour = 1\n".parse().unwrap();
        let mut problems = Vec::new();
        assert!(deserialize::<Cfg>(t, &mut problems).is_err());
    }
}
