//! The import loop: one task per source polls its ticket system, maps each ticket, signs what
//! becomes an entry with the import key and stores it through the service layer.
//!
//! The ticket system being down, slow or refusing never stops the collector: a failed poll is
//! recorded in the status and retried at the next interval (each request already retries with
//! backoff). A problem is logged once when it appears and once when it clears, not at every
//! poll, so a wrong password does not flood the log.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use minisign::SecretKey;

use super::config::{Kind, SourceConfig};
use super::servicenow::ServiceNow;
use super::{FetchError, Mapped, Ticket, TicketSource, to_entry, withdrawn};
use crate::collector::service::itsm::{Outcome, stamp};
use crate::collector::service::{Service, ServiceError};
use crate::sign;

/// Starts one poller per configured source (none without `[itsm]`).
pub fn spawn(svc: Arc<Service>) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(itsm) = svc.cfg.itsm.clone() else {
        return Vec::new();
    };
    for s in &itsm.sources {
        svc.itsm.add(&s.name, s.kind.as_str());
    }
    let key = match sign::load_secret_key(&itsm.key) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            let msg = format!("import key unusable, nothing is imported: {e}");
            tracing::error!("itsm: {msg}");
            for s in &itsm.sources {
                svc.itsm
                    .update(&s.name, |st| st.last_error = Some(msg.clone()));
            }
            return Vec::new();
        }
    };
    itsm.sources
        .into_iter()
        .filter_map(|cfg| {
            let name = cfg.name.clone();
            match cfg.kind {
                Kind::ServiceNow => match ServiceNow::new(cfg.clone()) {
                    Ok(client) => Some(tokio::spawn(run(svc.clone(), cfg, client, key.clone()))),
                    Err(e) => {
                        tracing::error!(source = %name, "itsm: {e}");
                        svc.itsm
                            .update(&name, |st| st.last_error = Some(e.to_string()));
                        None
                    }
                },
                Kind::Jira => match super::jira::Jira::new(cfg.clone()) {
                    Ok(client) => Some(tokio::spawn(run(svc.clone(), cfg, client, key.clone()))),
                    Err(e) => {
                        tracing::error!(source = %name, "itsm: {e}");
                        svc.itsm
                            .update(&name, |st| st.last_error = Some(e.to_string()));
                        None
                    }
                },
            }
        })
        .collect()
}

async fn run(svc: Arc<Service>, cfg: SourceConfig, client: impl TicketSource, key: Arc<SecretKey>) {
    let mut last_error: Option<FetchError> = None;
    let mut refused_before: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let now = Timestamp::now();
        let name = cfg.name.clone();
        match fetch_all(&svc, &cfg, &client).await {
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::error!(source = %name, "itsm: poll failed: {e}");
                }
                svc.itsm.update(&name, |st| {
                    st.last_poll = Some(stamp(now));
                    st.last_error = Some(e.to_string());
                    st.failed_polls += 1;
                });
                last_error = Some(e);
            }
            Ok(tickets) => {
                if last_error.take().is_some() {
                    tracing::info!(source = %name, "itsm: poll works again");
                }
                let seen = tickets.len() as u64;
                let (svc2, key2, kind) = (svc.clone(), key.clone(), cfg.kind);
                let done = tokio::task::spawn_blocking(move || {
                    tickets
                        .iter()
                        .map(|t| (t.number.clone(), import(&svc2, kind, t, &key2, now)))
                        .collect::<Vec<_>>()
                })
                .await;
                let Ok(results) = done else {
                    tracing::error!(source = %name, "itsm: import worker failed");
                    continue;
                };
                let mut refused = BTreeMap::new();
                let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
                for (ticket, r) in results {
                    let outcome = match r {
                        Ok(o) => o,
                        Err(reason) => {
                            if refused_before.get(&ticket) != Some(&reason) {
                                tracing::warn!(source = %name, ticket = %ticket, "itsm: ticket refused: {reason}");
                            }
                            refused.insert(ticket, reason);
                            Outcome::Refused
                        }
                    };
                    if matches!(
                        outcome,
                        Outcome::Imported | Outcome::Updated | Outcome::Withdrawn
                    ) {
                        tracing::info!(source = %name, outcome = outcome.as_str(), "itsm: change entry stored");
                    }
                    *counts.entry(outcome.as_str()).or_default() += 1;
                }
                refused_before = refused.clone();
                svc.itsm.update(&name, |st| {
                    st.last_poll = Some(stamp(now));
                    st.last_success = Some(stamp(now));
                    st.last_error = None;
                    st.tickets_seen = seen;
                    for (k, n) in counts {
                        *st.totals.entry(k.to_string()).or_default() += n;
                    }
                    st.refused = refused;
                });
            }
        }
        tokio::time::sleep(cfg.poll).await;
    }
}

/// The query's tickets, plus every ticket this source imported and still holds approved that
/// the query no longer returns (read one by one; gone → withdrawn).
async fn fetch_all(
    svc: &Arc<Service>,
    cfg: &SourceConfig,
    client: &impl TicketSource,
) -> Result<Vec<Ticket>, FetchError> {
    let mut tickets = client.fetch().await?;
    let svc2 = svc.clone();
    let (prefix, url) = (format!("{}:", cfg.kind.as_str()), cfg.url.clone());
    let held = tokio::task::spawn_blocking(move || {
        svc2.changes()
            .map(|list| {
                list.into_iter()
                    .filter_map(|c| {
                        let e = crate::judge::changelog::ChangeEntry::parse(
                            &c.toml,
                            std::path::Path::new("x.toml"),
                        )
                        .ok()?;
                        let ours = e.raw.source.as_deref()?.starts_with(&prefix)
                            && e.raw.url.as_deref()?.starts_with(&url);
                        (ours && e.approval.is_some()).then_some(c.id)
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    for id in held {
        if tickets.iter().any(|t| t.number == id) {
            continue;
        }
        let t = client.fetch_one(&id).await?.unwrap_or_else(|| Ticket {
            number: id.clone(),
            state: Some(super::TicketState::NotApproved("no longer found".into())),
            ..Ticket::default()
        });
        tickets.push(t);
    }
    Ok(tickets)
}

/// One ticket: mapped, signed, stored; the outcome or the reason it was refused.
fn import(
    svc: &Service,
    kind: Kind,
    t: &Ticket,
    key: &SecretKey,
    now: Timestamp,
) -> Result<Outcome, String> {
    let (id, text, withdrawal) = match to_entry(kind.as_str(), t).map_err(|r| r.reason)? {
        Mapped::Entry { id, toml } => (id, toml, false),
        Mapped::Withdraw { id, why } => {
            let previous = svc.change_text(&id).map_err(|e| e.to_string())?;
            // Never imported, or already withdrawn: nothing to take back.
            match previous.and_then(|p| withdrawn(&p, &why)) {
                Some(text) => (id, text, true),
                None => return Ok(Outcome::Unchanged),
            }
        }
    };
    let sig = sign::sign_bytes(text.as_bytes(), &format!("{id}.toml"), key)
        .map_err(|m| format!("signing with the import key: {m}"))?;
    svc.import_change(&text, &sig, withdrawal, now)
        .map_err(|e| match e {
            ServiceError::Forbidden(m) | ServiceError::Invalid(m) => m,
            other => other.to_string(),
        })
}

/// A ticket pushed by the system (the Jira webhook): judged like a polled one and counted in
/// the source's status. Loads the import key for the one call.
pub fn import_pushed(
    svc: &Service,
    cfg: &SourceConfig,
    t: &Ticket,
    now: Timestamp,
) -> Result<Outcome, String> {
    let itsm = svc
        .cfg
        .itsm
        .as_ref()
        .ok_or_else(|| "no [itsm] table".to_string())?;
    let key = sign::load_secret_key(&itsm.key).map_err(|e| e.to_string())?;
    let r = import(svc, cfg.kind, t, &key, now);
    let outcome = match &r {
        Ok(o) => *o,
        Err(reason) => {
            tracing::warn!(source = %cfg.name, ticket = %t.number, "itsm: pushed ticket refused: {reason}");
            Outcome::Refused
        }
    };
    svc.itsm.update(&cfg.name, |st| {
        *st.totals.entry(outcome.as_str().to_string()).or_default() += 1;
        match &r {
            Err(reason) => {
                st.refused.insert(t.number.clone(), reason.clone());
            }
            Ok(_) => {
                st.refused.remove(&t.number);
            }
        }
    });
    r
}
