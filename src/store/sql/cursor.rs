//! The chain position kept in `meta` (`chain_len`, `chain_head`), held by the transaction that
//! appends.

use super::super::chain;
use super::{Conn, Res, Tx, args};

/// The chain position, locked for the rest of the writing transaction.
pub struct Cursor {
    len: u64,
    head: String,
}

impl Cursor {
    /// Locks the chain head and reads it. Every transaction that appends to the chain calls this
    /// before touching anything else, so appends from all instances queue up on this one row (and
    /// no lock is ever taken before it: no deadlock). On SQLite the write transaction already
    /// holds the database.
    pub fn lock(tx: &mut Tx<'_>) -> Res<Cursor> {
        let sql = format!(
            "SELECT value FROM meta WHERE key = 'chain_head'{}",
            tx.dialect().for_update
        );
        let head: String = tx.query_one("chain", &sql, &[])?.get(0)?;
        let len: String = tx
            .query_one(
                "chain",
                "SELECT value FROM meta WHERE key = 'chain_len'",
                &[],
            )?
            .get(0)?;
        Ok(Cursor {
            len: len.parse().unwrap_or(0),
            head,
        })
    }

    /// (chain_seq, prev_hash, hash) the next record would get; [`Cursor::advance`] once stored.
    pub fn peek(&self, kind: &str, body: &str) -> (i64, String, String) {
        (
            self.len as i64 + 1,
            self.head.clone(),
            chain::link(&self.head, kind, body),
        )
    }

    /// Moves past the record just stored with `hash`.
    pub fn advance(&mut self, hash: String) {
        self.len += 1;
        self.head = hash;
    }

    /// Writes the position back (before the transaction commits).
    pub fn save(&self, tx: &mut dyn Conn) -> Res<()> {
        tx.execute(
            "chain",
            "UPDATE meta SET value = ?1 WHERE key = 'chain_len'",
            args![&self.len.to_string()],
        )?;
        tx.execute(
            "chain",
            "UPDATE meta SET value = ?1 WHERE key = 'chain_head'",
            args![&self.head],
        )?;
        Ok(())
    }
}

/// A `meta` value.
pub fn meta_get(c: &mut dyn Conn, key: &str) -> Res<Option<String>> {
    c.query_opt("meta", "SELECT value FROM meta WHERE key = ?1", args![key])?
        .map(|r| r.get(0))
        .transpose()
}
