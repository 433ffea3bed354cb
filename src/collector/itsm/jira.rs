//! Jira's REST API (DESIGN §12.2): `GET /rest/api/2/search` with the configured JQL, paged by
//! `startAt`/`maxResults` until `total`; the window, approver and approval time come from
//! fields named in the config (Jira has none built in), the requester from `reporter` unless
//! configured. The same issue shape arrives in webhooks (`{"webhookEvent", "issue"}`), so both
//! paths share [`ticket_of`]. Errors come as `{"errorMessages": [...], "errors": {...}}`.

use serde_json::Value;

use super::config::SourceConfig;
use super::http::Http;
use super::{Approval, FetchError, Ticket, TicketSource, TicketState, split_list};
use crate::client::encode;

/// A Jira site, as one source.
pub struct Jira {
    cfg: SourceConfig,
    http: Http,
}

impl Jira {
    /// A client for the source's site.
    pub fn new(cfg: SourceConfig) -> Result<Jira, FetchError> {
        let http = Http::new(&cfg)?;
        Ok(Jira { cfg, http })
    }
}

impl TicketSource for Jira {
    async fn fetch_one(&self, number: &str) -> Result<Option<Ticket>, FetchError> {
        let path = format!(
            "/rest/api/2/search?jql={}&startAt=0&maxResults=1",
            encode(&format!("key = \"{number}\""))
        );
        match self.http.get(&path, error_message).await {
            Ok(v) => Ok(v["issues"]
                .as_array()
                .and_then(|a| a.first())
                .map(|i| ticket_of(i, &self.cfg))),
            // Jira answers 400 for a key that no longer exists (deleted or moved).
            Err(FetchError::Malformed { message, .. }) if message.starts_with("HTTP 400") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch(&self) -> Result<Vec<Ticket>, FetchError> {
        let mut out = Vec::new();
        let mut start = 0usize;
        loop {
            let path = format!(
                "/rest/api/2/search?jql={}&startAt={start}&maxResults={}",
                encode(&self.cfg.query),
                self.cfg.page_size
            );
            let v = self.http.get(&path, error_message).await?;
            let issues = v["issues"]
                .as_array()
                .ok_or_else(|| FetchError::Malformed {
                    url: self.cfg.url.clone(),
                    message: "no `issues` array".into(),
                })?;
            out.extend(issues.iter().map(|i| ticket_of(i, &self.cfg)));
            let total = v["total"].as_u64().unwrap_or(0) as usize;
            start += issues.len();
            // The server may cap maxResults below what was asked: page on what came.
            if issues.is_empty() || start >= total {
                return Ok(out);
            }
        }
    }
}

/// `{"errorMessages": [...]}` as one line.
fn error_message(v: &Value) -> String {
    let msgs: Vec<&str> = v["errorMessages"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if msgs.is_empty() {
        v.to_string()
    } else {
        msgs.join("; ")
    }
}

/// A field's values as text: strings (split on lines and commas), users (`displayName`),
/// options (`value`), objects with a `name`, and arrays of any of these.
fn texts(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => split_list(s),
        Value::Number(n) => vec![n.to_string()],
        Value::Array(a) => a.iter().flat_map(texts).collect(),
        Value::Object(o) => ["displayName", "value", "name", "key"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str))
            .map(|s| vec![s.to_string()])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn first(v: &Value) -> Option<String> {
    // A single-value field: the whole text, not split (a summary may hold commas).
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => texts(v).into_iter().next(),
    }
}

/// One issue (from search or a webhook) as a ticket.
pub fn ticket_of(issue: &Value, cfg: &SourceConfig) -> Ticket {
    let key = issue["key"].as_str().unwrap_or_default().to_string();
    let f = &issue["fields"];
    let jira = cfg.jira.as_ref();
    let field = |name: Option<&str>| name.map_or(&Value::Null, |n| &f[n]);
    let status = f["status"]["name"].as_str().unwrap_or("").to_string();
    let approvers = texts(field(jira.map(|j| j.approver_from.as_str())));
    let approved_at = first(field(jira.map(|j| j.approved_at_from.as_str())));
    let lower = status.to_ascii_lowercase();
    let state = if ["cancelled", "canceled", "declined", "rejected", "withdrawn"]
        .contains(&lower.as_str())
    {
        TicketState::Cancelled
    } else if !approvers.is_empty() {
        TicketState::Approved
    } else {
        TicketState::NotApproved(format!("status {status}, no approver"))
    };
    Ticket {
        number: key.clone(),
        url: format!("{}/browse/{key}", cfg.url),
        state: Some(state),
        kind: first(&f["issuetype"]),
        summary: first(&f["summary"]),
        requested_by: first(field(jira.map(|j| j.requested_by_from.as_str()))),
        approvals: approvers
            .into_iter()
            .map(|by| Approval {
                by,
                at: approved_at.clone(),
            })
            .collect(),
        start: first(field(jira.map(|j| j.start_from.as_str()))),
        end: first(field(jira.map(|j| j.end_from.as_str()))),
        hosts: texts(&f[cfg.hosts_from.as_str()]),
        paths: texts(&f[cfg.paths_from.as_str()]),
        trees: cfg
            .trees_from
            .as_deref()
            .map(|t| texts(&f[t]))
            .unwrap_or_default(),
        fields: (cfg.hosts_from.clone(), cfg.paths_from.clone()),
    }
}

/// Checks a webhook body's `X-Hub-Signature: sha256=<hex>` against the shared secret
/// (constant-time).
pub fn signature_ok(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, body, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::itsm::config::{Credentials, JiraFields, Kind};
    use crate::collector::itsm::{Mapped, to_entry};
    use serde_json::json;
    use std::time::Duration;

    fn cfg() -> SourceConfig {
        SourceConfig {
            name: "jira".into(),
            kind: Kind::Jira,
            url: "https://acme.atlassian.net".into(),
            credentials: Credentials::Bearer {
                token_file: "/nonexistent".into(),
            },
            poll: Duration::from_secs(60),
            query: "project = CHG AND status = Approved".into(),
            hosts_from: "customfield_10060".into(),
            paths_from: "customfield_10061".into(),
            trees_from: None,
            timeout: Duration::from_secs(5),
            page_size: 50,
            jira: Some(JiraFields {
                start_from: "customfield_10050".into(),
                end_from: "customfield_10051".into(),
                approver_from: "customfield_10052".into(),
                approved_at_from: "customfield_10053".into(),
                requested_by_from: "reporter".into(),
            }),
            secret_file: None,
        }
    }

    #[test]
    fn an_issue_with_custom_fields_maps_to_an_entry() {
        let issue = json!({
            "key": "CHG-12",
            "fields": {
                "summary": "Rotate keys, then restart",
                "status": {"name": "Approved"},
                "issuetype": {"name": "Change"},
                "reporter": {"displayName": "Alice Adams"},
                "customfield_10050": "2026-11-20T22:00:00.000+0000",
                "customfield_10051": "2026-11-20T23:30:00.000+0100",
                "customfield_10052": [{"displayName": "Bob Boss", "accountId": "x"}],
                "customfield_10053": "2026-11-20T21:50:00.000+0000",
                "customfield_10060": "web-*",
                "customfield_10061": "app/**\nconfig/*",
            }
        });
        let t = ticket_of(&issue, &cfg());
        assert_eq!(t.url, "https://acme.atlassian.net/browse/CHG-12");
        let Mapped::Entry { toml, .. } = to_entry("jira", &t).unwrap() else {
            panic!("not an entry")
        };
        let e = crate::judge::changelog::ChangeEntry::parse(&toml, "x.toml".as_ref()).unwrap();
        assert_eq!(e.summary, "Rotate keys, then restart");
        assert_eq!(e.approval.as_ref().unwrap().0, "Bob Boss");
        assert_eq!(
            crate::util::timefmt::format_timestamp(e.end),
            "2026-11-20T22:30:00Z",
            "offsets honoured"
        );
        assert_eq!(e.raw.paths, ["app/**", "config/*"]);
        let mut cancelled = issue.clone();
        cancelled["fields"]["status"]["name"] = json!("Cancelled");
        assert!(matches!(
            to_entry("jira", &ticket_of(&cancelled, &cfg())),
            Ok(Mapped::Withdraw { .. })
        ));
    }

    #[test]
    fn webhook_signatures_are_checked() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let sig = hex::encode(ring::hmac::sign(&key, b"{}").as_ref());
        assert!(signature_ok(
            b"s3cret",
            b"{}",
            Some(&format!("sha256={sig}"))
        ));
        assert!(!signature_ok(
            b"other",
            b"{}",
            Some(&format!("sha256={sig}"))
        ));
        assert!(!signature_ok(
            b"s3cret",
            b"{ }",
            Some(&format!("sha256={sig}"))
        ));
        assert!(!signature_ok(b"s3cret", b"{}", None));
        assert!(!signature_ok(b"s3cret", b"{}", Some(&sig)));
    }
}
