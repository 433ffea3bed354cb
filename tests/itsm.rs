//! ServiceNow import (DESIGN §12.2) end to end: a fake ServiceNow instance in the test process
//! (a `std::net::TcpListener` answering the documented Table API shapes: `{"result": [...]}`,
//! `sysparm_display_value=all` fields as `{"value", "display_value"}`, paging by
//! `sysparm_limit`/`sysparm_offset`, error bodies `{"error": {"message", "detail"}, "status":
//! "failure"}`), a real collector polling it, and a real agent taking the imported entries.

mod agent_common;
mod collector_common;
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};

use agent_common::{Agent, AgentSpec, Uplink, about, poll, s, wait_events};
use collector_common::{Collector, Site, toml_str};
use common::{Fx, Keys};

/// `base64("driftwatch:s3cret")`: what the collector must send as Basic auth.
const BASIC: &str = "Basic ZHJpZnR3YXRjaDpzM2NyZXQ=";

/// What the fake instance holds and how it behaves.
#[derive(Default)]
struct SnowState {
    /// `change_request` records, in `sysparm_display_value=all` form.
    changes: Vec<Value>,
    /// `sysapproval_approver` records by the change's sys_id.
    approvals: HashMap<String, Vec<Value>>,
    /// Jira issues (`/rest/api/2/search`).
    issues: Vec<Value>,
    /// Change numbers the list query no longer returns (as when a ticket is sent back to
    /// Assess and leaves an "approved" query); `number=` still finds them.
    hidden: Vec<String>,
    /// Answer 401 to everything.
    refuse: bool,
    /// Answer 503 to everything.
    down: bool,
    /// Request targets received.
    requests: Vec<String>,
}

struct FakeSnow {
    url: String,
    state: Arc<Mutex<SnowState>>,
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn params(target: &str) -> (String, HashMap<String, String>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let map = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect();
    (path.to_string(), map)
}

fn answer(state: &Mutex<SnowState>, target: &str, auth: Option<&str>) -> (u16, Value) {
    let mut st = state.lock().unwrap();
    st.requests.push(target.to_string());
    if st.down {
        return (
            503,
            json!({"error": {"message": "Service Unavailable", "detail": "maintenance"}, "status": "failure"}),
        );
    }
    if st.refuse || auth != Some(BASIC) {
        return (
            401,
            json!({"error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"}, "status": "failure"}),
        );
    }
    let (path, p) = params(target);
    match path.as_str() {
        "/api/now/table/change_request" => {
            assert_eq!(
                p.get("sysparm_display_value").map(String::as_str),
                Some("all")
            );
            let limit: usize = p["sysparm_limit"].parse().unwrap();
            let offset: usize = p.get("sysparm_offset").map_or(0, |o| o.parse().unwrap());
            let number = |c: &Value| c["number"]["value"].as_str().unwrap_or("").to_string();
            if let Some(n) = p["sysparm_query"].strip_prefix("number=") {
                let one: Vec<Value> = st
                    .changes
                    .iter()
                    .filter(|c| number(c) == n)
                    .cloned()
                    .collect();
                return (200, json!({"result": one}));
            }
            let page: Vec<Value> = st
                .changes
                .iter()
                .filter(|c| !st.hidden.contains(&number(c)))
                .skip(offset)
                .take(limit)
                .cloned()
                .collect();
            (200, json!({"result": page}))
        }
        "/api/now/table/sysapproval_approver" => {
            let q = &p["sysparm_query"];
            let id = q
                .strip_prefix("sysapproval=")
                .and_then(|r| r.strip_suffix("^state=approved"))
                .unwrap_or_else(|| panic!("unexpected approval query {q:?}"));
            let list = st.approvals.get(id).cloned().unwrap_or_default();
            (200, json!({"result": list}))
        }
        "/rest/api/2/search" => {
            assert!(p["jql"].contains("project = CHG"), "{p:?}");
            let start: usize = p["startAt"].parse().unwrap();
            let max: usize = p["maxResults"].parse().unwrap();
            let page: Vec<Value> = st.issues.iter().skip(start).take(max).cloned().collect();
            (
                200,
                json!({"startAt": start, "maxResults": max, "total": st.issues.len(), "issues": page}),
            )
        }
        _ => (
            400,
            json!({"error": {"message": "Invalid table", "detail": path}, "status": "failure"}),
        ),
    }
}

impl FakeSnow {
    fn start() -> FakeSnow {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(SnowState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut auth = None;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("authorization")
                        {
                            auth = Some(v.trim().to_string());
                        }
                    }
                    let (status, body) = answer(&st, &target, auth.as_deref());
                    let body = body.to_string();
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        FakeSnow { url, state }
    }

    fn with<T>(&self, f: impl FnOnce(&mut SnowState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

fn f(v: &str, d: &str) -> Value {
    json!({"value": v, "display_value": d})
}

/// ServiceNow's `value` format for dates: UTC, `YYYY-MM-DD HH:MM:SS`.
fn snow_time(offset_secs: i64) -> String {
    let t = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(offset_secs))
        .unwrap();
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// An approved change record for `web-*` over `paths`, window now ± 1 h.
fn change(number: &str, sys_id: &str, paths: &str) -> Value {
    json!({
        "number": f(number, number),
        "sys_id": f(sys_id, sys_id),
        "state": f("-1", "Implement"),
        "approval": f("approved", "Approved"),
        "type": f("normal", "Normal"),
        "short_description": f("Deploy hotfix", "Deploy hotfix"),
        "requested_by": f("6816f79cc0a8016401c5a33be04be441", "Alice Adams"),
        // The display values are in the user's time zone and format: never to be used.
        "start_date": f(&snow_time(-3600), "01/12/2026 08:00:00 AM"),
        "end_date": f(&snow_time(3600), "01/12/2026 10:00:00 AM"),
        "cmdb_ci": f("b0c25d1bc0a800090168be1bfcdcd759", "web-*"),
        "u_driftwatch_paths": f(paths, paths),
    })
}

fn approval(by: &str, at: &str) -> Value {
    json!({
        "approver": f("46d44a23a9fe19810012d100cca80666", by),
        "state": f("approved", "Approved"),
        "sys_updated_on": f(at, at),
    })
}

struct Setup {
    fx: Fx,
    itsm: Keys,
    site: Site,
    snow: FakeSnow,
}

fn setup(poll: &str) -> Setup {
    let fx = Fx::new();
    fx.build_manifest();
    let itsm = common::keygen(&fx.base.join("keys/itsm"));
    let snow = FakeSnow::start();
    let password = fx.base.join("snow.password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let site = Site::with(&format!(
        "[trust]\nrelease_keys = [{rel}]\napprover_keys = [{pubk}]\n\n[itsm]\nkey = {key}\n\n[[itsm.source]]\nname = \"snow\"\nkind = \"servicenow\"\nurl = {url}\nuser = \"driftwatch\"\npassword_file = {pw}\npoll = \"{poll}\"\ntimeout = \"2s\"\npage_size = 1\nquery = \"type=normal^ORtype=emergency^approval=approved^ORstate=4\"\npaths_from = \"u_driftwatch_paths\"\n",
        rel = toml_str(&fx.release.public.display().to_string()),
        pubk = toml_str(&itsm.public.display().to_string()),
        key = toml_str(&itsm.secret.display().to_string()),
        url = toml_str(&snow.url),
        pw = toml_str(&password.display().to_string()),
    ));
    Setup {
        fx,
        itsm,
        site,
        snow,
    }
}

fn itsm_status(c: &Collector, token: &str) -> Value {
    let v = c.get_json("/api/v1/itsm", token);
    v.as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "snow"))
        .cloned()
        .unwrap_or_else(|| panic!("no source snow in {v:#}"))
}

#[track_caller]
fn wait_status(c: &Collector, token: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    poll(Duration::from_secs(20), || {
        last = itsm_status(c, token);
        pred(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "no {what} within 20 s: {last:#}\n--- collector:\n{}",
            c.stderr()
        )
    })
}

fn versions(db: &Path, id: &str) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT toml FROM changes WHERE id = ?1 ORDER BY version")
        .unwrap();
    st.query_map([id], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn approved_servicenow_changes_reach_the_agent_and_follow_the_ticket() {
    let Setup {
        fx,
        itsm,
        site,
        snow,
    } = setup("1s");
    snow.with(|s| {
        s.changes.push(change("CHG0030001", "sys1", "app/**"));
        s.approvals
            .insert("sys1".into(), vec![approval("Bob Boss", &snow_time(-7200))]);
        let mut no_end = change("CHG0030003", "sys3", "lib/**");
        no_end["end_date"] = f("", "");
        s.changes.push(no_end);
        s.approvals
            .insert("sys3".into(), vec![approval("Bob Boss", &snow_time(-7200))]);
        // Emergency work under way, not approved yet.
        let mut em = change("CHG0030002", "sys2", "wp-content/uploads/**");
        em["type"] = f("emergency", "Emergency");
        em["approval"] = f("requested", "Requested");
        s.changes.push(em);
    });
    let reader = site.token("reader", None);
    let agent_token = site.token("agent", Some(common::HOST));
    let c = site.start();
    let st = wait_status(&c, &reader, "first import", |s| {
        s["totals"]["imported"].as_u64() >= Some(1) && s["refused"]["CHG0030003"].is_string()
    });
    assert!(
        st["refused"]["CHG0030003"]
            .as_str()
            .unwrap()
            .contains("end_date"),
        "{st:#}"
    );
    assert_eq!(st["tickets_seen"], 3, "three pages of one: {st:#}");
    assert!(st["last_error"].is_null(), "{st:#}");
    let requests = snow.with(|s| s.requests.clone());
    assert!(
        requests.iter().any(|r| r.contains("sysparm_offset=2")),
        "paged: {requests:#?}"
    );

    // The agent trusts the import key's .pub as an approver key and takes the entry.
    let mut spec = AgentSpec::for_fx(&fx);
    spec.approver_keys = vec![itsm.public.clone()];
    let tf = fx.base.join("agent.token");
    std::fs::write(&tf, format!("{agent_token}\n")).unwrap();
    spec.uplink = Uplink::Remote {
        url: c.url.clone(),
        token_file: tf,
    };
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let agent = Agent::start(&config);
    let diag = || format!("{}\n--- collector:\n{}", agent.proc.log(), c.stderr());
    fx.append("app/checkout.js", b"// hotfix\n");
    fx.write("wp-content/uploads/fix.php", b"<?php // emergency\n");
    let evs = wait_events(
        &site.db,
        "both changes",
        Duration::from_secs(20),
        diag,
        |e| {
            !about(e, "shop", "app/checkout.js").is_empty()
                && !about(e, "shop", "wp-content/uploads/fix.php").is_empty()
        },
    );
    let co = about(&evs, "shop", "app/checkout.js")[0];
    assert_eq!(s(co, "status"), "change:CHG0030001", "{co:#}");
    // The collector's API names the approver its keys prove.
    let api = c.get_json("/api/v1/events", &reader);
    let co_api = api
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "app/checkout.js")
        .unwrap();
    assert_eq!(co_api["verified_approver"], "Bob Boss", "{co_api:#}");
    assert_eq!(
        s(
            about(&evs, "shop", "wp-content/uploads/fix.php")[0],
            "status"
        ),
        "unauthorized"
    );
    let entries = c.get_json("/api/v1/changes", &reader);
    let e1 = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "CHG0030001")
        .unwrap();
    assert!(
        e1["toml"]
            .as_str()
            .unwrap()
            .contains("source = \"servicenow:CHG0030001\"")
    );
    assert!(e1["toml"].as_str().unwrap().contains("sys_id=sys1"));
    let rtf = site.token_file("reader.token", &reader);
    let listed = common::run([
        "changes",
        "list",
        "--collector",
        &c.url,
        "--token-file",
        rtf.to_str().unwrap(),
        "--format",
        "json",
    ]);
    listed.expect_code(0);
    let rows = listed.json();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "CHG0030001")
        .unwrap();
    assert_eq!(row["source"], "servicenow:CHG0030001", "{row:#}");
    assert_eq!(row["verified_approver"], "Bob Boss", "{row:#}");
    assert!(
        row["url"].as_str().unwrap().ends_with("sys_id=sys1"),
        "{row:#}"
    );

    // The emergency change is approved after the fact: re-classified retroactive.
    std::thread::sleep(Duration::from_millis(1100));
    snow.with(|s| {
        s.changes[2]["approval"] = f("approved", "Approved");
        s.approvals
            .insert("sys2".into(), vec![approval("Bob Boss", &snow_time(0))]);
    });
    let evs = wait_events(
        &site.db,
        "the retroactive approval",
        Duration::from_secs(20),
        diag,
        |e| {
            about(e, "shop", "wp-content/uploads/fix.php")
                .iter()
                .any(|v| s(v, "status") == "retroactive:CHG0030002")
        },
    );
    assert!(!evs.is_empty());

    // The ticket is edited: a new signed version, the first kept.
    snow.with(|s| s.changes[0]["short_description"] = f("Deploy hotfix v2", "Deploy hotfix v2"));
    wait_status(&c, &reader, "the update", |s| {
        s["totals"]["updated"].as_u64() >= Some(1)
    });
    let v = versions(&site.db, "CHG0030001");
    assert_eq!(v.len(), 2, "{v:#?}");
    assert!(v[0].contains("Deploy hotfix\"") && v[1].contains("Deploy hotfix v2"));

    // Cancelled: withdrawn; a later change under app/ is no longer authorized.
    snow.with(|s| s.changes[0]["state"] = f("4", "Canceled"));
    wait_status(&c, &reader, "the withdrawal", |s| {
        s["totals"]["withdrawn"].as_u64() >= Some(1)
    });
    let v = versions(&site.db, "CHG0030001");
    assert_eq!(v.len(), 3, "{v:#?}");
    assert!(!v[2].contains("approved_by"), "{}", v[2]);
    // Give the agent a heartbeat period to take the withdrawn version.
    let fetched = fx
        .base
        .join("state")
        .join("fetched")
        .join("changes")
        .join("CHG0030001.toml");
    let _ = poll(Duration::from_secs(10), || {
        std::fs::read_to_string(&fetched)
            .ok()
            .filter(|t| t.contains("WITHDRAWN"))
    });
    fx.append("app/boot.php", b"// after the cancel\n");
    let evs = wait_events(
        &site.db,
        "the change after the cancel",
        Duration::from_secs(20),
        diag,
        |e| !about(e, "shop", "app/boot.php").is_empty(),
    );
    assert_eq!(
        s(about(&evs, "shop", "app/boot.php")[0], "status"),
        "unauthorized"
    );
    let metrics = c.get_text("/metrics", &reader);
    assert!(
        metrics.contains("driftwatch_itsm_tickets_total{source=\"snow\",outcome=\"imported\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("driftwatch_itsm_up{source=\"snow\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_refusing_instance_is_logged_once_and_the_collector_keeps_serving() {
    let Setup {
        fx: _fx,
        itsm: _itsm,
        site,
        snow,
    } = setup("300ms");
    snow.with(|s| s.refuse = true);
    let reader = site.token("reader", None);
    let c = site.start();
    wait_status(&c, &reader, "three failed polls", |s| {
        s["failed_polls"].as_u64() >= Some(3)
    });
    let st = itsm_status(&c, &reader);
    let err = st["last_error"].as_str().unwrap();
    assert!(
        err.contains("401") && err.contains("User Not Authenticated"),
        "{err}"
    );
    let log = c.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("poll failed")).collect();
    assert_eq!(lines.len(), 1, "logged once: {log}");
    assert!(lines[0].contains("401"), "{}", lines[0]);
    assert_eq!(c.get("/api/v1/hosts", Some(&reader)).status, 200);
    let metrics = c.get_text("/metrics", &reader);
    assert!(
        metrics.contains("driftwatch_itsm_up{source=\"snow\"} 0"),
        "{metrics}"
    );
    let page =
        c.raw(format!("GET / HTTP/1.0\r\nHost: x\r\nCookie: dw_token={reader}\r\n\r\n").as_bytes());
    let html = page.text();
    assert!(html.contains("<table id=itsm>"), "{html}");
    assert!(
        html.contains("User Not Authenticated"),
        "the dashboard shows the error: {html}"
    );

    // Down for maintenance, then back: the import catches up.
    snow.with(|s| {
        s.refuse = false;
        s.down = true;
        s.changes.push(change("CHG0030009", "sys9", "app/**"));
        s.approvals
            .insert("sys9".into(), vec![approval("Bob Boss", &snow_time(-60))]);
    });
    wait_status(&c, &reader, "the outage", |s| {
        s["last_error"].as_str().is_some_and(|e| e.contains("503"))
    });
    snow.with(|s| s.down = false);
    let st = wait_status(&c, &reader, "the catch-up", |s| {
        s["totals"]["imported"].as_u64() >= Some(1)
    });
    assert!(st["last_error"].is_null(), "{st:#}");
    assert!(c.stderr().contains("poll works again"), "{}", c.stderr());

    // Sent back to Assess: it leaves the "approved" query, is read by number and withdrawn.
    snow.with(|s| {
        s.changes[0]["approval"] = f("requested", "Requested");
        s.changes[0]["state"] = f("-4", "Assess");
        s.hidden.push("CHG0030009".into());
    });
    wait_status(
        &c,
        &reader,
        "the withdrawal of a ticket gone from the query",
        |s| s["totals"]["withdrawn"].as_u64() >= Some(1),
    );
    let v = versions(&site.db, "CHG0030009");
    assert_eq!(v.len(), 2, "{v:#?}");
    assert!(
        !v[1].contains("approved_by") && v[1].contains("WITHDRAWN"),
        "{}",
        v[1]
    );
    assert!(
        snow.with(|s| s.requests.iter().any(|r| r.contains("number%3DCHG0030009"))),
        "read by number"
    );
}

#[test]
fn an_itsm_config_names_every_problem() {
    let site = Site::with(
        "[trust]\nrequire_signatures = false\n\n[itsm]\n\n[[itsm.source]]\nname = \"snow\"\nkind = \"remedy\"\nurl = \"ftp://x\"\nuser = \"u\"\n",
    );
    let out = common::run(["config", "check", "--config", site.config.to_str().unwrap()]);
    let all = format!("{}{}", out.stdout, out.stderr);
    for want in [
        "itsm.key",
        "itsm.source[0].kind",
        "itsm.source[0].url",
        "itsm.source[0].user",
        "itsm.source[0].query",
        "itsm.source[0].paths_from",
    ] {
        assert!(all.contains(want), "{want} not named in:\n{all}");
    }
    assert_eq!(out.code, 2, "{all}");
}

/// A Jira change issue approved by Bob, for `web-*` over `paths`, window now ± 1 h (Jira's
/// date-time format, with an offset).
fn issue(key: &str, paths: &str) -> Value {
    let jira_time = |off: i64| {
        Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(off))
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
            .strftime("%Y-%m-%dT%H:%M:%S%.3f%z")
            .to_string()
    };
    json!({
        "id": "10042",
        "key": key,
        "self": format!("https://acme.atlassian.net/rest/api/2/issue/{key}"),
        "fields": {
            "summary": "Rotate keys",
            "status": {"name": "Approved", "statusCategory": {"key": "indeterminate"}},
            "issuetype": {"name": "Change"},
            "reporter": {"displayName": "Alice Adams", "accountId": "a1"},
            "customfield_10050": jira_time(-3600),
            "customfield_10051": jira_time(3600),
            "customfield_10052": [{"displayName": "Bob Boss", "accountId": "b1"}],
            "customfield_10053": jira_time(-7200),
            "customfield_10060": "web-*",
            "customfield_10061": paths,
        }
    })
}

#[test]
fn jira_issues_are_imported_by_search_and_by_a_signed_webhook() {
    let fx = Fx::empty();
    let itsm = common::keygen(&fx.base.join("keys/itsm"));
    let jira = FakeSnow::start();
    let password = fx.base.join("jira.token");
    std::fs::write(&password, "s3cret\n").unwrap();
    let secret = fx.base.join("webhook.secret");
    std::fs::write(&secret, "hook-s3cret\n").unwrap();
    let site = Site::with(&format!(
        "[trust]\nrelease_keys = [{rel}]\napprover_keys = [{pubk}]\n\n[itsm]\nkey = {key}\n\n[[itsm.source]]\nname = \"jira\"\nkind = \"jira\"\nurl = {url}\nuser = \"driftwatch\"\npassword_file = {pw}\npoll = \"1s\"\npage_size = 1\njql = \"project = CHG AND status = Approved\"\nhosts_from = \"customfield_10060\"\npaths_from = \"customfield_10061\"\nstart_from = \"customfield_10050\"\nend_from = \"customfield_10051\"\napprover_from = \"customfield_10052\"\napproved_at_from = \"customfield_10053\"\nsecret_file = {secret}\n",
        rel = toml_str(&fx.release.public.display().to_string()),
        pubk = toml_str(&itsm.public.display().to_string()),
        key = toml_str(&itsm.secret.display().to_string()),
        url = toml_str(&jira.url),
        pw = toml_str(&password.display().to_string()),
        secret = toml_str(&secret.display().to_string()),
    ));
    jira.with(|s| {
        s.issues.push(issue("CHG-12", "app/**"));
        s.issues.push(issue("CHG-13", ""));
    });
    let reader = site.token("reader", None);
    let c = site.start();
    let status = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        let mut last = Value::Null;
        poll(Duration::from_secs(20), || {
            let v = c.get_json("/api/v1/itsm", &reader);
            last = v
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == "jira")
                .cloned()
                .unwrap();
            pred(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| panic!("no {what}: {last:#}\n{}", c.stderr()))
    };
    let st = status("the search import", &|s| {
        s["totals"]["imported"].as_u64() >= Some(1) && s["refused"]["CHG-13"].is_string()
    });
    assert!(
        st["refused"]["CHG-13"]
            .as_str()
            .unwrap()
            .contains("customfield_10061"),
        "{st:#}"
    );
    assert!(
        jira.with(|s| s.requests.iter().any(|r| r.contains("startAt=1"))),
        "paged"
    );
    let changes = c.get_json("/api/v1/changes", &reader);
    let e = changes
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "CHG-12")
        .unwrap();
    let text = e["toml"].as_str().unwrap();
    assert!(text.contains("source = \"jira:CHG-12\""), "{text}");
    assert!(text.contains("/browse/CHG-12"), "{text}");
    assert_eq!(e["verified_approver"], "Bob Boss");

    // The webhook: a wrong signature is 401 and counted; a right one imports at once.
    let body = json!({"webhookEvent": "jira:issue_updated", "issue": issue("CHG-14", "lib/**")})
        .to_string();
    let post = |sig: &str| {
        let req = format!(
            "POST /api/v1/itsm/jira/webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nX-Hub-Signature: {sig}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.raw(req.as_bytes())
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"hook-s3cret");
    let good = format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body.as_bytes()).as_ref())
    );
    let wrong_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"guess");
    let bad = format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&wrong_key, body.as_bytes()).as_ref())
    );
    assert_eq!(post(&bad).status, 401);
    let ok = post(&good);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["outcome"], "imported");
    let st = status("the webhook count", &|s| s["webhook_refused"] == 1);
    assert!(st["totals"]["imported"].as_u64() >= Some(2), "{st:#}");
    let changes = c.get_json("/api/v1/changes", &reader);
    assert!(
        changes
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == "CHG-14"),
        "{changes:#}"
    );
    let metrics = c.get_text("/metrics", &reader);
    assert!(
        metrics.contains("driftwatch_itsm_webhook_refused_total{source=\"jira\"} 1"),
        "{metrics}"
    );
}
