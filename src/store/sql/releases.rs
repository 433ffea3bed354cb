//! What releases are checked against: change entries (versioned per id, the latest in force)
//! and signed manifests (the newest per tree in force), each kept exactly as received.

use jiff::Timestamp;

use super::super::{StoredChange, StoredManifest};
use super::{Conn, Res, Tx, TxKind, args};
use crate::util::timefmt;

/// Stores the next version of change entry `id`.
pub fn put_change(
    c: &mut dyn Conn,
    id: &str,
    toml: &str,
    minisig: Option<&str>,
    now: Timestamp,
) -> Res<()> {
    let at = timefmt::format_timestamp(now);
    let mut tx = Tx::begin(c, TxKind::Write, "changes")?;
    // Versions are numbered per id; instances storing at once take turns.
    if let Some(lock) = tx.dialect().lock_table("changes") {
        tx.batch("changes", &lock)?;
    }
    tx.execute(
        "changes",
        "INSERT INTO changes (id, version, toml, minisig, received_at)
         VALUES (?1, COALESCE((SELECT MAX(version) FROM changes WHERE id = ?1), 0) + 1, ?2, ?3, ?4)",
        args![id, toml, minisig, &at],
    )?;
    tx.commit()
}

/// The latest version of every change entry, by id.
pub fn changes(c: &mut dyn Conn) -> Res<Vec<StoredChange>> {
    let sql = c.dialect().latest_per_group(
        "id, toml, minisig, received_at",
        "FROM changes",
        "id",
        "version",
    );
    c.map("changes", &sql, &[], |r| {
        Ok(StoredChange {
            id: r.get(0)?,
            toml: r.get(1)?,
            minisig: r.get(2)?,
            received_at: r.get(3)?,
            verified_approver: None,
        })
    })
}

/// Stores a manifest.
pub fn put_manifest(c: &mut dyn Conn, m: &StoredManifest) -> Res<()> {
    c.execute(
        "manifests",
        "INSERT INTO manifests (tree, release, manifest, minisig, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![&m.tree, &m.release, &m.manifest, &m.minisig, &m.received_at],
    )?;
    Ok(())
}

/// The newest manifest of `tree`.
pub fn manifest(c: &mut dyn Conn, tree: &str) -> Res<Option<StoredManifest>> {
    c.query_opt(
        "manifests",
        "SELECT tree, release, manifest, minisig, received_at FROM manifests WHERE tree = ?1
         ORDER BY seq DESC LIMIT 1",
        args![tree],
    )?
    .map(|r| {
        Ok(StoredManifest {
            tree: r.get(0)?,
            release: r.get(1)?,
            manifest: r.get(2)?,
            minisig: r.get(3)?,
            received_at: r.get(4)?,
        })
    })
    .transpose()
}
