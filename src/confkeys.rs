//! Unknown-key detection for TOML configs that reports every bad key at once.
//!
//! serde's `deny_unknown_fields` stops at the first unknown key; a sysadmin fixing a config wants
//! the whole list together with every other problem, so unknown keys are found (and removed)
//! here first and the rest of the validation runs on what is left.

/// Allowed keys: top-level keys, then for each table (or array of tables) its keys.
pub struct Schema<'a> {
    /// Keys allowed at the top.
    pub top: &'a [&'a str],
    /// `(table, keys)`: a `[table]` or `[[table]]` and the keys allowed in it.
    pub tables: &'a [(&'a str, &'a [&'a str])],
}

/// Removes unknown keys from `t` and returns one message per key, naming its full path.
pub fn strip_unknown(t: &mut toml::Table, schema: &Schema<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    t.retain(|k, _| {
        let ok = schema.top.contains(&k);
        if !ok {
            problems.push(format!(
                "{k}: unknown key (expected one of: {})",
                schema.top.join(", ")
            ));
        }
        ok
    });
    for (name, keys) in schema.tables {
        let mut check = |prefix: String, table: &mut toml::Table| {
            table.retain(|k, _| {
                let ok = keys.contains(&k);
                if !ok {
                    problems.push(format!(
                        "{prefix}.{k}: unknown key (expected one of: {})",
                        keys.join(", ")
                    ));
                }
                ok
            });
        };
        match t.get_mut(*name) {
            Some(toml::Value::Table(table)) => check(name.to_string(), table),
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let toml::Value::Table(table) = item {
                        check(format!("{name}[{i}]"), table);
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_is_named() {
        let mut t: toml::Table = "colour = 1\nname = 2\n[scan]\nintervl = 3\ninterval = 4\n[[tree]]\nname = 5\nroute = 6\n"
            .parse()
            .unwrap();
        let schema = Schema {
            top: &["name", "scan", "tree"],
            tables: &[("scan", &["interval"]), ("tree", &["name"])],
        };
        let problems = strip_unknown(&mut t, &schema);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("colour:"));
        assert!(problems.iter().any(|p| p.starts_with("scan.intervl:")));
        assert!(problems.iter().any(|p| p.starts_with("tree[0].route:")));
        assert!(!t.contains_key("colour"));
    }
}
