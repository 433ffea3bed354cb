//! Access tokens. Only a token's hash is stored; revoking a host's last agent token retires the
//! host (from the next day on: the revocation day itself stays expected), and a new agent token
//! brings it back from the day it is created.
//!
//! Token changes take turns ([`Dialect::lock_table`](super::Dialect::lock_table) beyond the
//! write transaction), so a create and a revoke for one host cannot cross.

use jiff::Timestamp;
use jiff::civil::Date;

use super::super::records::{self, new_secret, token_hash};
use super::super::{Role, StoreError, Token};
use super::{Conn, Res, Row, Tx, TxKind, args};
use crate::util::timefmt;

const COLUMNS: &str = "id, role, host, label, created_at, revoked_at";

fn row_token(r: &Row) -> Res<Token> {
    let role: String = r.get(1)?;
    Ok(Token {
        id: r.get(0)?,
        role: Role::parse(&role).unwrap_or(Role::Reader),
        host: r.get(2)?,
        label: r.get(3)?,
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

fn lock_tokens(tx: &mut Tx<'_>) -> Res<()> {
    if let Some(lock) = tx.dialect().lock_table("tokens") {
        tx.batch("tokens", &lock)?;
    }
    Ok(())
}

/// Creates a token; returns it with its secret.
pub fn create(
    c: &mut dyn Conn,
    role: Role,
    host: Option<&str>,
    label: &str,
    now: Timestamp,
    today: Date,
) -> Res<(Token, String)> {
    let secret = new_secret()?;
    let created = timefmt::format_timestamp(now);
    let mut tx = Tx::begin(c, TxKind::Write, "tokens")?;
    lock_tokens(&mut tx)?;
    let id: i64 = tx
        .query_one(
            "tokens",
            "INSERT INTO tokens (hash, role, host, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
            args![&token_hash(&secret), role.as_str(), host, label, &created],
        )?
        .get(0)?;
    if let Some(h) = host {
        // A new agent token brings a retired host back into the expected set from today on;
        // the days it was retired stay retired.
        tx.execute(
            "hosts",
            "UPDATE hosts SET retired_day = NULL WHERE name = ?1",
            args![h],
        )?;
        tx.execute(
            "hosts",
            "UPDATE retirements SET to_day = ?1 WHERE host = ?2 AND to_day IS NULL",
            args![&today.to_string(), h],
        )?;
    }
    tx.commit()?;
    let token = Token {
        id,
        role,
        host: host.map(String::from),
        label: label.into(),
        created_at: created,
        revoked_at: None,
    };
    Ok((token, secret))
}

/// The live (unrevoked) token with this secret.
pub fn find(c: &mut dyn Conn, secret: &str) -> Res<Option<Token>> {
    let sql = format!("SELECT {COLUMNS} FROM tokens WHERE hash = ?1 AND revoked_at IS NULL");
    c.query_opt("tokens", &sql, args![&token_hash(secret)])?
        .as_ref()
        .map(row_token)
        .transpose()
}

/// Every token, oldest first.
pub fn list(c: &mut dyn Conn) -> Res<Vec<Token>> {
    let sql = format!("SELECT {COLUMNS} FROM tokens ORDER BY id");
    c.map("tokens", &sql, &[], row_token)
}

/// Revokes a token (revoking it again changes nothing); retires its host when it was the host's
/// last live agent token.
pub fn revoke(c: &mut dyn Conn, id: i64, now: Timestamp, today: Date) -> Res<Token> {
    let at = timefmt::format_timestamp(now);
    let mut tx = Tx::begin(c, TxKind::Write, "tokens")?;
    lock_tokens(&mut tx)?;
    let n = tx.execute(
        "tokens",
        "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
        args![&at, id],
    )?;
    let sql = format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1");
    let token = tx
        .query_opt("tokens", &sql, args![id])?
        .as_ref()
        .map(row_token)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
    if n == 1
        && let (Role::Agent, Some(host)) = (token.role, &token.host)
    {
        let live: i64 = tx
            .query_one(
                "tokens",
                "SELECT COUNT(*) FROM tokens WHERE role = 'agent' AND host = ?1 AND revoked_at IS NULL",
                args![host],
            )?
            .get(0)?;
        if live == 0 {
            tx.execute(
                "hosts",
                "UPDATE hosts SET retired_day = ?1 WHERE name = ?2",
                args![&today.to_string(), host],
            )?;
            tx.execute(
                "hosts",
                "INSERT INTO retirements (host, from_day)
                 SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM retirements WHERE host = ?1 AND to_day IS NULL)",
                args![host, &records::retirement_start(today)],
            )?;
        }
    }
    tx.commit()?;
    Ok(token)
}
