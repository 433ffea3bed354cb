//! ITSM import (DESIGN §12.2): the collector polls ticket systems and turns approved change
//! tickets into change entries signed with its import key, so they reach agents through the
//! ordinary distribution and are judged by the ordinary rules.
//!
//! Layers: each system's client ([`servicenow`]) reads tickets into the neutral [`Ticket`]
//! behind the [`TicketSource`] trait; [`to_entry`] (pure, unit-tested) maps a ticket to an entry
//! or a refusal; [`poll`] runs the loop (timeouts, backoff, one log line per new problem) and
//! hands the signed entries to the service layer
//! ([`Service::import_change`](crate::collector::service::Service::import_change)), where the
//! same signature and separation-of-duties rules as for uploads apply and the status per source
//! is kept for `GET /api/v1/itsm` and `/metrics`.
//!
//! Invariants: a ticket never authorizes more than its fields say: no host or path globs means
//! refused, never "everything". An emergency ticket approved after the work needs no special
//! case: its `approved_at` is after the observation, which §6 already classifies `retroactive:`.

pub mod config;
pub mod http;
pub mod jira;
pub mod poll;
pub mod servicenow;

use jiff::Timestamp;

use crate::util::timefmt;

/// Where a ticket stands, as far as authorization goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketState {
    /// Approved and not cancelled: becomes an entry.
    Approved,
    /// Cancelled: an entry imported before is withdrawn.
    Cancelled,
    /// Anything else (new, assess, rejected, sent back): an entry imported before is
    /// withdrawn; the text says which state.
    NotApproved(String),
}

/// One approval recorded by the ticket system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Who approved (the name the ticket system shows).
    pub by: String,
    /// When, as the system wrote it.
    pub at: Option<String>,
}

/// A change ticket in system-neutral form: what every [`TicketSource`] produces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ticket {
    /// Ticket number (`CHG0030001`): the entry's id.
    pub number: String,
    /// Link to the ticket for people.
    pub url: String,
    /// Approved, cancelled or neither.
    pub state: Option<TicketState>,
    /// `normal`, `emergency`, `standard`... (for display; the rules do not depend on it).
    pub kind: Option<String>,
    /// Short description.
    pub summary: Option<String>,
    /// Who asked for it.
    pub requested_by: Option<String>,
    /// Approvals.
    pub approvals: Vec<Approval>,
    /// Planned start, as the system wrote it.
    pub start: Option<String>,
    /// Planned end.
    pub end: Option<String>,
    /// Host globs from the configured field.
    pub hosts: Vec<String>,
    /// Path globs from the configured field.
    pub paths: Vec<String>,
    /// Tree globs from the configured field (empty: every tree).
    pub trees: Vec<String>,
    /// The names of the configured fields, for refusal messages (hosts, paths).
    pub fields: (String, String),
}

/// What a ticket maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// An approved change entry: its TOML text (id = ticket number).
    Entry { id: String, toml: String },
    /// The ticket no longer authorizes anything: withdraw an entry imported before.
    Withdraw { id: String, why: String },
}

/// A ticket that cannot become an entry, with the reason (shown in `GET /api/v1/itsm`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ticket}: {reason}")]
pub struct Refusal {
    /// Ticket number.
    pub ticket: String,
    /// Why.
    pub reason: String,
}

/// A ticket system the collector can poll.
pub trait TicketSource: Send + Sync {
    /// Reads every ticket the configured query selects (all pages).
    fn fetch(&self) -> impl std::future::Future<Output = Result<Vec<Ticket>, FetchError>> + Send;

    /// Reads one ticket by number, whatever the query says (`None`: it no longer exists). An
    /// imported ticket sent back for assessment usually drops out of an "approved" query; it
    /// must still be seen, or its entry would stay approved.
    fn fetch_one(
        &self,
        number: &str,
    ) -> impl std::future::Future<Output = Result<Option<Ticket>, FetchError>> + Send;
}

/// A poll failed as a whole (no ticket was judged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The instance refused the credentials (401) or the account's rights (403).
    #[error("{url}: HTTP {status}: {message} (check the credentials and the account's roles)")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// Network trouble, a timeout or a 5xx, after the retries.
    #[error("{url}: {message}")]
    Unavailable { url: String, message: String },
    /// The answer is not the documented shape.
    #[error("{url}: unexpected response: {message}")]
    Malformed { url: String, message: String },
    /// A credential file could not be read.
    #[error("{path}: {message}")]
    Credentials { path: String, message: String },
}

/// Parses a ticket-system time: RFC 3339, Jira's `…T…:SS.sss+hhmm`, or ServiceNow's
/// `YYYY-MM-DD HH:MM:SS` (the `value` of a date field is always UTC, whatever the instance's or
/// user's time zone).
pub fn parse_time(s: &str) -> Result<Timestamp, String> {
    let t = s.trim();
    if let Ok(ts) = timefmt::parse_timestamp(t) {
        return Ok(ts);
    }
    // Jira: `2026-11-20T22:00:00.000+0000` (an offset without a colon).
    if let Ok(ts) = Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.f%z", t) {
        return Ok(ts);
    }
    jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", t)
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC))
        .map(|z| z.timestamp())
        .map_err(|_| format!("{s:?} is not a time (expected YYYY-MM-DD HH:MM:SS UTC or RFC 3339)"))
}

/// Splits a multi-value field: one value per line, or comma-separated.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(['\n', ','])
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

/// Maps a ticket to an entry (or a withdrawal), or says why it cannot. `kind` prefixes the
/// entry's `source`.
pub fn to_entry(kind: &str, t: &Ticket) -> Result<Mapped, Refusal> {
    let refuse = |reason: String| Refusal {
        ticket: t.number.clone(),
        reason,
    };
    let id_ok = !t.number.is_empty()
        && t.number
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !id_ok {
        return Err(refuse(format!(
            "ticket number {:?} cannot be an entry id",
            t.number
        )));
    }
    match &t.state {
        Some(TicketState::Approved) => {}
        Some(TicketState::Cancelled) => {
            return Ok(Mapped::Withdraw {
                id: t.number.clone(),
                why: "cancelled".into(),
            });
        }
        Some(TicketState::NotApproved(s)) => {
            return Ok(Mapped::Withdraw {
                id: t.number.clone(),
                why: format!("no longer approved ({s})"),
            });
        }
        None => return Err(refuse("missing field: state/approval".into())),
    }
    let mut missing = Vec::new();
    let need = |v: &Option<String>, name: &str, missing: &mut Vec<String>| {
        let v = v.as_deref().map(str::trim).filter(|v| !v.is_empty());
        if v.is_none() {
            missing.push(name.to_string());
        }
        v.map(String::from)
    };
    let summary = need(&t.summary, "short_description", &mut missing);
    let requested_by = need(&t.requested_by, "requested_by", &mut missing);
    let start = need(&t.start, "start_date", &mut missing);
    let end = need(&t.end, "end_date", &mut missing);
    if t.hosts.is_empty() {
        missing.push(format!("{} (host globs)", t.fields.0));
    }
    if t.paths.is_empty() {
        missing.push(format!("{} (path globs)", t.fields.1));
    }
    // The approval that completed it: the latest one.
    let mut approvals: Vec<(Timestamp, &str)> = Vec::new();
    for a in &t.approvals {
        let Some(at) = a.at.as_deref() else { continue };
        let at = parse_time(at).map_err(|m| refuse(format!("approval by {}: {m}", a.by)))?;
        approvals.push((at, a.by.trim()));
    }
    approvals.sort();
    let approval = approvals.last().copied();
    if approval.is_none() {
        missing.push("an approval with its time (sysapproval_approver)".into());
    }
    if !missing.is_empty() {
        return Err(refuse(format!(
            "missing field(s): {}; it authorizes nothing",
            missing.join(", ")
        )));
    }
    let (Some(summary), Some(requested_by), Some(start), Some(end), Some((approved_at, by))) =
        (summary, requested_by, start, end, approval)
    else {
        unreachable!("every missing field was reported above");
    };
    let start = parse_time(&start).map_err(|m| refuse(format!("start_date: {m}")))?;
    let end = parse_time(&end).map_err(|m| refuse(format!("end_date: {m}")))?;
    if end <= start {
        return Err(refuse("end_date: must be after start_date".into()));
    }
    let list = |v: &[String]| toml::Value::Array(v.iter().map(|s| s.clone().into()).collect());
    let trees = if t.trees.is_empty() {
        vec!["*".to_string()]
    } else {
        t.trees.clone()
    };
    let mut e = toml::Table::new();
    e.insert("id".into(), t.number.clone().into());
    e.insert("summary".into(), summary.into());
    e.insert("requested_by".into(), requested_by.into());
    e.insert("approved_by".into(), by.to_string().into());
    e.insert(
        "approved_at".into(),
        timefmt::format_timestamp(approved_at).into(),
    );
    e.insert("hosts".into(), list(&t.hosts));
    e.insert("trees".into(), list(&trees));
    e.insert("paths".into(), list(&t.paths));
    e.insert("start".into(), timefmt::format_timestamp(start).into());
    e.insert("end".into(), timefmt::format_timestamp(end).into());
    e.insert("source".into(), format!("{kind}:{}", t.number).into());
    e.insert("url".into(), t.url.clone().into());
    let toml = toml::to_string(&e).map_err(|m| refuse(m.to_string()))?;
    // Every rule an agent applies (globs, id), checked here so a bad ticket is refused with
    // its reason at the collector rather than dropped later.
    crate::judge::changelog::ChangeEntry::parse(&toml, std::path::Path::new("ticket.toml"))
        .map_err(|e| refuse(e.to_string()))?;
    Ok(Mapped::Entry {
        id: t.number.clone(),
        toml,
    })
}

/// The withdrawn version of an imported entry: the same text without its approval, so it
/// authorizes nothing not yet observed while the history keeps the approved version (and
/// events already classified under it).
pub fn withdrawn(previous: &str, why: &str) -> Option<String> {
    let mut t: toml::Table = toml::from_str(previous).ok()?;
    t.get("approved_by")?;
    t.remove("approved_by");
    t.remove("approved_at");
    let summary = t
        .get("summary")
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string();
    t.insert(
        "summary".into(),
        format!("WITHDRAWN ({why}): {summary}").into(),
    );
    toml::to_string(&t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            number: "CHG0030001".into(),
            url: "https://acme.service-now.com/nav_to.do?uri=change_request.do?sys_id=abc".into(),
            state: Some(TicketState::Approved),
            kind: Some("normal".into()),
            summary: Some("Deploy hotfix".into()),
            requested_by: Some("Alice Adams".into()),
            approvals: vec![
                Approval {
                    by: "Carol CAB".into(),
                    at: Some("2026-11-20 21:40:00".into()),
                },
                Approval {
                    by: "Bob Boss".into(),
                    at: Some("2026-11-20 21:50:00".into()),
                },
            ],
            start: Some("2026-11-20 22:00:00".into()),
            end: Some("2026-11-20 23:00:00".into()),
            hosts: vec!["web-*".into()],
            paths: vec!["app/**".into()],
            trees: vec![],
            fields: ("cmdb_ci".into(), "u_driftwatch_paths".into()),
        }
    }

    #[test]
    fn an_approved_ticket_becomes_an_entry_with_its_source() {
        let Mapped::Entry { id, toml } = to_entry("servicenow", &ticket()).unwrap() else {
            panic!("not an entry")
        };
        assert_eq!(id, "CHG0030001");
        let e = crate::judge::changelog::ChangeEntry::parse(&toml, "x.toml".as_ref()).unwrap();
        let (by, at) = e.approval.clone().unwrap();
        assert_eq!(by, "Bob Boss", "the approval that completed it");
        assert_eq!(timefmt::format_timestamp(at), "2026-11-20T21:50:00Z");
        assert_eq!(timefmt::format_timestamp(e.start), "2026-11-20T22:00:00Z");
        assert_eq!(e.raw.trees, ["*"]);
        assert_eq!(e.raw.source.as_deref(), Some("servicenow:CHG0030001"));
        assert!(e.raw.url.as_deref().unwrap().contains("sys_id=abc"));
    }

    #[test]
    fn missing_scope_or_window_is_refused_never_a_catch_all() {
        let mut t = ticket();
        t.paths.clear();
        t.end = None;
        let r = to_entry("servicenow", &t).unwrap_err();
        assert!(r.reason.contains("end_date"), "{r}");
        assert!(r.reason.contains("u_driftwatch_paths"), "{r}");
        let mut t = ticket();
        t.hosts.clear();
        assert!(
            to_entry("servicenow", &t)
                .unwrap_err()
                .reason
                .contains("cmdb_ci")
        );
        let mut t = ticket();
        t.approvals.clear();
        assert!(
            to_entry("servicenow", &t)
                .unwrap_err()
                .reason
                .contains("approval")
        );
        let mut t = ticket();
        t.paths = vec!["app/[".into()];
        assert!(
            to_entry("servicenow", &t)
                .unwrap_err()
                .reason
                .contains("paths")
        );
    }

    #[test]
    fn cancelled_or_sent_back_tickets_withdraw() {
        let mut t = ticket();
        t.state = Some(TicketState::Cancelled);
        assert!(matches!(
            to_entry("servicenow", &t),
            Ok(Mapped::Withdraw { .. })
        ));
        let Mapped::Entry { toml, .. } = to_entry("servicenow", &ticket()).unwrap() else {
            panic!()
        };
        let w = withdrawn(&toml, "cancelled").unwrap();
        let e = crate::judge::changelog::ChangeEntry::parse(&w, "x.toml".as_ref()).unwrap();
        assert!(e.approval.is_none());
        assert!(e.summary.starts_with("WITHDRAWN (cancelled)"));
        assert_eq!(withdrawn(&w, "again"), None, "withdrawn once");
    }

    #[test]
    fn times_in_servicenow_format_are_utc() {
        assert_eq!(
            timefmt::format_timestamp(parse_time("2026-03-29 01:30:00").unwrap()),
            "2026-03-29T01:30:00Z"
        );
        assert!(parse_time("29/03/2026").is_err());
        assert_eq!(split_list("a/**\n b/* ,c"), ["a/**", "b/*", "c"]);
    }
}
