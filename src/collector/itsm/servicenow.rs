//! ServiceNow's Table API (DESIGN §12.2): `change_request` selected by `sysparm_query`, read
//! page by page (`sysparm_limit`/`sysparm_offset`) with `sysparm_display_value=all`, so each
//! field comes as `{"value": ..., "display_value": ...}`; approvers and approval times from
//! `sysapproval_approver`. Errors come as `{"error": {"message", "detail"}, "status":
//! "failure"}`.
//!
//! Which half of a field is used: `value` for dates (always UTC in the `value`, whatever the
//! instance's time zone) and free text; `display_value` for references (the CI's name for
//! `cmdb_ci`, the person's name for `requested_by` and `approver`), since the `value` of a
//! reference is an opaque sys_id.

use serde_json::Value;

use super::config::SourceConfig;
use super::http::Http;
use super::{Approval, FetchError, Ticket, TicketSource, TicketState, split_list};
use crate::client::encode;

/// A ServiceNow instance, as one source.
pub struct ServiceNow {
    cfg: SourceConfig,
    http: Http,
}

impl ServiceNow {
    /// A client for the source's instance, with its timeout.
    pub fn new(cfg: SourceConfig) -> Result<ServiceNow, FetchError> {
        let http = Http::new(&cfg)?;
        Ok(ServiceNow { cfg, http })
    }

    async fn get(&self, path: &str) -> Result<Value, FetchError> {
        self.http.get(path, error_message).await
    }

    async fn approvals(&self, sys_id: &str) -> Result<Vec<Approval>, FetchError> {
        let q = format!("sysapproval={sys_id}^state=approved");
        let path = format!(
            "/api/now/table/sysapproval_approver?sysparm_query={}&sysparm_display_value=all",
            encode(&q)
        );
        let v = self.get(&path).await?;
        Ok(records(&v, &self.cfg.url)?
            .iter()
            .filter_map(|r| {
                let by = field(r, "approver").1?;
                Some(Approval {
                    by,
                    at: field(r, "sys_updated_on").0,
                })
            })
            .collect())
    }
}

impl TicketSource for ServiceNow {
    async fn fetch_one(&self, number: &str) -> Result<Option<Ticket>, FetchError> {
        let path = format!(
            "/api/now/table/change_request?sysparm_query={}&sysparm_display_value=all&sysparm_limit=1",
            encode(&format!("number={number}"))
        );
        let v = self.get(&path).await?;
        let Some(r) = records(&v, &self.cfg.url)?.first() else {
            return Ok(None);
        };
        let (mut t, sys_id) = ticket(r, &self.cfg);
        if t.state == Some(TicketState::Approved)
            && let Some(id) = sys_id
        {
            t.approvals = self.approvals(&id).await?;
        }
        Ok(Some(t))
    }

    async fn fetch(&self) -> Result<Vec<Ticket>, FetchError> {
        let mut out = Vec::new();
        let limit = self.cfg.page_size as usize;
        let mut offset = 0usize;
        loop {
            let path = format!(
                "/api/now/table/change_request?sysparm_query={}&sysparm_display_value=all&sysparm_limit={limit}&sysparm_offset={offset}",
                encode(&self.cfg.query)
            );
            let v = self.get(&path).await?;
            let page = records(&v, &self.cfg.url)?;
            for r in page {
                let (mut t, sys_id) = ticket(r, &self.cfg);
                if t.state == Some(TicketState::Approved)
                    && let Some(id) = sys_id
                {
                    t.approvals = self.approvals(&id).await?;
                }
                out.push(t);
            }
            // A short page is the last one (the instance may also send X-Total-Count; a
            // short page is what every version sends).
            if page.len() < limit {
                return Ok(out);
            }
            offset += limit;
        }
    }
}

/// `{"error": {"message", "detail"}}` as one line.
fn error_message(v: &Value) -> String {
    let e = &v["error"];
    let m = e["message"].as_str().unwrap_or("");
    match e["detail"].as_str().filter(|d| !d.is_empty()) {
        Some(d) => format!("{m} ({d})"),
        None if m.is_empty() => v.to_string(),
        None => m.to_string(),
    }
}

fn records<'v>(v: &'v Value, url: &str) -> Result<&'v Vec<Value>, FetchError> {
    v["result"].as_array().ok_or_else(|| FetchError::Malformed {
        url: url.to_string(),
        message: "no `result` array".into(),
    })
}

/// A field as (value, display_value); a plain string (no `display_value=all`) is both.
fn field(r: &Value, name: &str) -> (Option<String>, Option<String>) {
    let s = |v: &Value| {
        v.as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    match &r[name] {
        Value::Object(o) => (
            o.get("value").and_then(s),
            o.get("display_value").and_then(s),
        ),
        v => (s(v), s(v)),
    }
}

/// One `change_request` record as a ticket (approvals not read yet) and its sys_id.
fn ticket(r: &Value, cfg: &SourceConfig) -> (Ticket, Option<String>) {
    let number = field(r, "number").0.unwrap_or_default();
    let sys_id = field(r, "sys_id").0;
    let (state_v, state_d) = field(r, "state");
    let approval = field(r, "approval").0;
    let cancelled = state_v.as_deref() == Some("4")
        || state_d
            .as_deref()
            .is_some_and(|d| d.to_ascii_lowercase().starts_with("cancel"));
    let state = if cancelled {
        Some(TicketState::Cancelled)
    } else {
        match approval.as_deref() {
            Some("approved") => Some(TicketState::Approved),
            Some(a) => Some(TicketState::NotApproved(format!(
                "approval {a}, state {}",
                state_d.as_deref().unwrap_or("?")
            ))),
            None => None,
        }
    };
    let list_value = |name: &str| {
        let (v, d) = field(r, name);
        v.or(d).map(|s| split_list(&s)).unwrap_or_default()
    };
    // References show their name; a list of host globs kept in a text field has no reference.
    let hosts = {
        let (v, d) = field(r, &cfg.hosts_from);
        d.or(v).map(|s| split_list(&s)).unwrap_or_default()
    };
    let url = match &sys_id {
        Some(id) => format!("{}/nav_to.do?uri=change_request.do?sys_id={id}", cfg.url),
        None => cfg.url.clone(),
    };
    let t = Ticket {
        number,
        url,
        state,
        kind: field(r, "type").0,
        summary: field(r, "short_description").0,
        requested_by: field(r, "requested_by").1,
        approvals: Vec::new(),
        start: field(r, "start_date").0,
        end: field(r, "end_date").0,
        hosts,
        paths: list_value(&cfg.paths_from),
        trees: cfg
            .trees_from
            .as_deref()
            .map(list_value)
            .unwrap_or_default(),
        fields: (cfg.hosts_from.clone(), cfg.paths_from.clone()),
    };
    (t, sys_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::itsm::config::{Credentials, Kind};
    use serde_json::json;
    use std::time::Duration;

    fn cfg() -> SourceConfig {
        SourceConfig {
            name: "snow".into(),
            kind: Kind::ServiceNow,
            url: "https://acme.service-now.com".into(),
            credentials: Credentials::Bearer {
                token_file: "/nonexistent".into(),
            },
            poll: Duration::from_secs(60),
            query: "approval=approved".into(),
            hosts_from: "cmdb_ci".into(),
            paths_from: "u_driftwatch_paths".into(),
            trees_from: Some("u_driftwatch_trees".into()),
            timeout: Duration::from_secs(5),
            page_size: 100,
            jira: None,
            secret_file: None,
        }
    }

    fn f(v: &str, d: &str) -> Value {
        json!({"value": v, "display_value": d})
    }

    #[test]
    fn a_record_with_display_values_reads_as_a_ticket() {
        let r = json!({
            "number": f("CHG0030001", "CHG0030001"),
            "sys_id": f("c83c5e5347c12200e0ef563dbb9a7190", "c83c5e5347c12200e0ef563dbb9a7190"),
            "state": f("-1", "Implement"),
            "approval": f("approved", "Approved"),
            "type": f("emergency", "Emergency"),
            "short_description": f("Hotfix", "Hotfix"),
            "requested_by": f("5137153cc611227c000bbd1bd8cd2005", "Alice Adams"),
            "start_date": f("2026-11-20 22:00:00", "2026-11-20 23:00:00"),
            "end_date": f("2026-11-20 23:00:00", "2026-11-21 00:00:00"),
            "cmdb_ci": f("b0c25d1bc0a800090168be1bfcdcd759", "web-*"),
            "u_driftwatch_paths": f("app/**\nconfig/*.ini", "app/**\nconfig/*.ini"),
            "u_driftwatch_trees": f("", ""),
        });
        let (t, id) = ticket(&r, &cfg());
        assert_eq!(id.as_deref(), Some("c83c5e5347c12200e0ef563dbb9a7190"));
        assert_eq!(t.state, Some(TicketState::Approved));
        assert_eq!(t.requested_by.as_deref(), Some("Alice Adams"));
        assert_eq!(t.start.as_deref(), Some("2026-11-20 22:00:00"), "UTC value");
        assert_eq!(t.hosts, ["web-*"]);
        assert_eq!(t.paths, ["app/**", "config/*.ini"]);
        assert!(t.trees.is_empty());
        assert!(t.url.ends_with("sys_id=c83c5e5347c12200e0ef563dbb9a7190"));
        let cancelled = json!({"number": "CHG1", "state": f("4", "Canceled"), "approval": f("approved", "Approved")});
        assert_eq!(
            ticket(&cancelled, &cfg()).0.state,
            Some(TicketState::Cancelled)
        );
        let assess = json!({"number": "CHG2", "state": f("-4", "Assess"), "approval": f("requested", "Requested")});
        assert!(matches!(
            ticket(&assess, &cfg()).0.state,
            Some(TicketState::NotApproved(_))
        ));
    }

    #[test]
    fn error_bodies_read_as_one_line() {
        let v = json!({"error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"}, "status": "failure"});
        assert_eq!(
            error_message(&v),
            "User Not Authenticated (Required to provide Auth information)"
        );
    }
}
