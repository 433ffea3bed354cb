//! Where SQLite and PostgreSQL SQL differ, and nowhere else.
//!
//! Statements are written once in the canonical form: `?N` placeholders (numbered, so one value
//! can appear twice) and SQL both engines accept. A dialect turns the placeholders into its own
//! ([`Dialect::placeholders`]) and supplies the few pieces that have no common spelling. Anything
//! not listed here is portable on purpose: `ON CONFLICT … DO UPDATE/NOTHING`, `RETURNING`,
//! `CAST(… AS BIGINT)`, `SUM(CASE WHEN … THEN 1 ELSE 0 END)` for counting matches.

use std::borrow::Cow;

/// How one engine spells what the other spells differently.
#[derive(Debug)]
pub struct Dialect {
    /// Engine name, for messages and tests.
    pub name: &'static str,
    /// Placeholder sigil: `?` (SQLite `?N`) or `$` (PostgreSQL `$N`).
    sigil: char,
    /// Begins a writing transaction. SQLite takes the write lock up front (`IMMEDIATE`), which is
    /// what serializes chain appends there; PostgreSQL locks rows as it goes.
    begin_write: &'static str,
    /// Begins a read-only snapshot.
    begin_snapshot: &'static str,
    /// Appended to a `SELECT` whose rows the transaction must hold until it ends: ` FOR UPDATE`
    /// on PostgreSQL; nothing on SQLite, whose write transaction already excludes every writer.
    pub for_update: &'static str,
    /// Statement that makes writers of a table take turns (`{}`: the table), if the engine needs
    /// one beyond its write transaction.
    lock_table: Option<&'static str>,
    /// The larger of two values: SQLite's two-argument `MAX`, PostgreSQL's `GREATEST`.
    pub greatest: &'static str,
    /// `LIKE` ignoring ASCII case: SQLite's `LIKE` already does; PostgreSQL needs `ILIKE`.
    pub ilike: &'static str,
    /// Booleans: SQLite keeps them as 0/1 integers (and its partial index says `open = 1`),
    /// PostgreSQL as BOOLEAN.
    bool_int: bool,
    /// How to pick the latest row per group.
    latest: Latest,
}

#[derive(Debug, Clone, Copy)]
enum Latest {
    /// SQLite: `MAX(version)` with `GROUP BY` takes the other columns from the row holding
    /// the maximum.
    GroupByMax,
    /// PostgreSQL: `DISTINCT ON (keys) … ORDER BY keys, version DESC`.
    DistinctOn,
}

/// SQLite.
pub static SQLITE: Dialect = Dialect {
    name: "sqlite",
    sigil: '?',
    begin_write: "BEGIN IMMEDIATE",
    begin_snapshot: "BEGIN DEFERRED",
    for_update: "",
    lock_table: None,
    greatest: "MAX",
    ilike: "LIKE",
    bool_int: true,
    latest: Latest::GroupByMax,
};

/// PostgreSQL.
pub static POSTGRES: Dialect = Dialect {
    name: "postgres",
    sigil: '$',
    begin_write: "BEGIN",
    begin_snapshot: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    for_update: " FOR UPDATE",
    lock_table: Some("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE"),
    greatest: "GREATEST",
    ilike: "ILIKE",
    bool_int: false,
    latest: Latest::DistinctOn,
};

impl Dialect {
    /// The statement that begins a transaction of `kind`.
    pub fn begin(&self, kind: super::TxKind) -> &'static str {
        match kind {
            super::TxKind::Write => self.begin_write,
            super::TxKind::Snapshot => self.begin_snapshot,
        }
    }

    /// A canonical statement with this engine's placeholders (`?N` → `$N`; text inside quotes
    /// and quoted identifiers is left alone).
    pub fn placeholders<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        if self.sigil == '?' || !sql.contains('?') {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len());
        let mut quote: Option<char> = None;
        for c in sql.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '?') => {
                    out.push(self.sigil);
                    continue;
                }
                (None, _) => {}
            }
            out.push(c);
        }
        Cow::Owned(out)
    }

    /// The condition "boolean column `col` is true", as the engine's indexes expect it.
    pub fn is_true(&self, col: &str) -> String {
        if self.bool_int {
            format!("{col} = 1")
        } else {
            col.to_string()
        }
    }

    /// The statement that makes writers of `table` take turns until the transaction ends, where
    /// the write transaction alone does not.
    pub fn lock_table(&self, table: &str) -> Option<String> {
        self.lock_table.map(|t| t.replace("{}", table))
    }

    /// `SELECT columns FROM … WHERE …` keeping, per group of `keys`, the row with the largest
    /// `version`, ordered by `keys`. `from` is everything from `FROM` up to the grouping.
    pub fn latest_per_group(&self, columns: &str, from: &str, keys: &str, version: &str) -> String {
        match self.latest {
            Latest::GroupByMax => {
                format!("SELECT {columns}, MAX({version}) {from} GROUP BY {keys} ORDER BY {keys}")
            }
            Latest::DistinctOn => format!(
                "SELECT DISTINCT ON ({keys}) {columns} {from} ORDER BY {keys}, {version} DESC"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_outside_quotes_only() {
        let sql = "SELECT '?', \"a?\" FROM t WHERE a = ?1 AND b LIKE ?2 || ':%' AND c = ?1";
        assert_eq!(SQLITE.placeholders(sql), sql);
        assert_eq!(
            POSTGRES.placeholders(sql),
            "SELECT '?', \"a?\" FROM t WHERE a = $1 AND b LIKE $2 || ':%' AND c = $1"
        );
        assert!(matches!(
            POSTGRES.placeholders("SELECT 1"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn latest_per_group_takes_the_highest_version() {
        assert_eq!(
            SQLITE.latest_per_group("id, toml", "FROM changes", "id", "version"),
            "SELECT id, toml, MAX(version) FROM changes GROUP BY id ORDER BY id"
        );
        assert_eq!(
            POSTGRES.latest_per_group("id, toml", "FROM changes", "id", "version"),
            "SELECT DISTINCT ON (id) id, toml FROM changes ORDER BY id, version DESC"
        );
    }

    #[test]
    fn booleans_and_locks() {
        assert_eq!(SQLITE.is_true("e.open"), "e.open = 1");
        assert_eq!(POSTGRES.is_true("e.open"), "e.open");
        assert_eq!(SQLITE.lock_table("tokens"), None);
        assert_eq!(
            POSTGRES.lock_table("tokens").as_deref(),
            Some("LOCK TABLE tokens IN SHARE ROW EXCLUSIVE MODE")
        );
    }
}
