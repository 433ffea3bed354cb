//! The dashboard at `/`: server-rendered HTML with an SVG chart, readable without JavaScript.
//!
//! Readers log in with their token once (`/?token=…` or the form); it is kept in an HttpOnly,
//! SameSite=Strict cookie that only GET routes accept, so the cookie cannot be used to write.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use jiff::Timestamp;
use jiff::civil::Date;
use serde::Deserialize;

use super::auth::{COOKIE, cookie_token, reader_token};
use super::{ApiError, AppState};
use crate::collector::service::{Service, ServiceError};
use crate::kpi::{Grouping, KpiRow, Period};
use crate::store::{EventQuery, HostInfo, StoredEvent};

/// Query of the dashboard.
#[derive(Debug, Deserialize, Default)]
pub struct DashParams {
    token: Option<String>,
    from: Option<String>,
    to: Option<String>,
    environment: Option<String>,
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push_str(&c.escape_debug().to_string()),
            c => out.push(c),
        }
    }
    out
}

fn login_page(message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>driftwatch: sign in</title>{STYLE}</head><body><main>\
         <h1>driftwatch</h1><p>{}</p><form method=post action=/login><label>Reader token <input name=token type=password autocomplete=off size=70></label> \
         <button>Sign in</button></form></main></body></html>",
        esc(message)
    );
    (StatusCode::UNAUTHORIZED, Html(body)).into_response()
}

/// `POST /login` (form body `token=…`): sets the cookie.
pub async fn login(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let token = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    sign_in(&state, token).await
}

async fn sign_in(state: &Arc<AppState>, token: String) -> Response {
    match reader_token(state, token.clone()).await {
        Some(_) => (
            StatusCode::SEE_OTHER,
            [
                (
                    header::SET_COOKIE,
                    format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"),
                ),
                (header::LOCATION, "/".to_string()),
            ],
        )
            .into_response(),
        _ => login_page("That token is unknown, revoked, or not a reader token."),
    }
}

/// `GET /`.
pub async fn index(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<DashParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let p = match q {
        Ok(Query(p)) => p,
        Err(e) => {
            return ApiError::bad_request(format!("query: {}", e.body_text())).into_response();
        }
    };
    if let Some(t) = p.token.clone() {
        return sign_in(&state, t).await;
    }
    let Some(secret) = cookie_token(&headers) else {
        return login_page("Sign in with a reader token.");
    };
    if reader_token(&state, secret).await.is_none() {
        return login_page("Your session token is no longer valid.");
    }
    match render(&state, p).await {
        Ok(html) => Html(html).into_response(),
        Err(e) => e.into_response(),
    }
}

struct Data {
    days: Vec<KpiRow>,
    hosts: Vec<HostInfo>,
    host_rows: Vec<KpiRow>,
    recent: Vec<StoredEvent>,
    from: Date,
    to: Date,
    today: Date,
    environments: Vec<String>,
}

async fn render(state: &Arc<AppState>, p: DashParams) -> Result<String, ApiError> {
    let today = state.svc.today();
    let parse = |name: &str, v: &Option<String>| -> Result<Option<Date>, ApiError> {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<Date>().map_err(|e| {
                    ApiError::bad_request(format!("{name}: {s:?} is not a date ({e})"))
                })
            })
            .transpose()
    };
    let to = parse("to", &p.to)?.unwrap_or(today);
    let from = parse("from", &p.from)?
        .unwrap_or_else(|| to.checked_sub(jiff::Span::new().days(29)).unwrap_or(to));
    let env = p.environment.clone().filter(|e| !e.is_empty());
    let env2 = env.clone();
    let data = state
        .run(move |svc| gather(svc, from, to, today, env2))
        .await?;
    Ok(page(&state.svc, &data, env.as_deref()))
}

/// Everything the page shows, read through the service.
fn gather(
    svc: &Service,
    from: Date,
    to: Date,
    today: Date,
    env: Option<String>,
) -> Result<Data, ServiceError> {
    let mut hd = svc.host_days(from, to, None)?;
    let environments: Vec<String> = {
        let mut e: Vec<String> = hd.iter().map(|d| d.environment.clone()).collect();
        e.sort();
        e.dedup();
        e
    };
    if let Some(e) = &env {
        hd.retain(|d| &d.environment == e);
    }
    let days = svc.kpi_rows(&hd, Period::Day, &[Grouping::Fleet]);
    let mut per_host = hd.clone();
    for d in &mut per_host {
        d.day = from;
    }
    let host_rows: Vec<KpiRow> = svc.kpi_rows(&per_host, Period::Day, &[Grouping::Host]);
    let yesterday = today.yesterday().unwrap_or(today);
    let mut recent = svc.events(&EventQuery {
        from: Some(yesterday),
        to: Some(today),
        status: Some("unauthorized".into()),
        ..EventQuery::default()
    })?;
    recent.extend(svc.events(&EventQuery {
        from: Some(yesterday),
        to: Some(today),
        status: Some("unverifiable".into()),
        ..EventQuery::default()
    })?);
    if let Some(e) = &env {
        recent.retain(|ev| &ev.environment == e);
    }
    recent.sort_by(|a, b| b.received_at.cmp(&a.received_at));
    let hosts = svc.hosts(Timestamp::now())?;
    Ok(Data {
        days,
        hosts,
        host_rows,
        recent,
        from,
        to,
        today,
        environments,
    })
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn page(svc: &Service, d: &Data, env: Option<&str>) -> String {
    let target = svc.cfg.target;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>driftwatch: compliance</title>{STYLE}</head><body><main>"
    );
    let _ = write!(
        h,
        "<h1>driftwatch <small>process compliance, target {}</small></h1>",
        pct(target)
    );
    // Filters.
    let _ = write!(
        h,
        "<form class=filters method=get action=/><label>From <input type=date name=from value={}></label> <label>To <input type=date name=to value={}></label> <label>Environment <select name=environment><option value=\"\">all</option>",
        d.from, d.to
    );
    for e in &d.environments {
        let sel = if Some(e.as_str()) == env {
            " selected"
        } else {
            ""
        };
        let _ = write!(h, "<option{sel}>{}</option>", esc(e));
    }
    let q = format!(
        "from={}&amp;to={}{}",
        d.from,
        d.to,
        env.map(|e| format!("&amp;environment={}", esc(e)))
            .unwrap_or_default()
    );
    let _ = write!(
        h,
        "</select></label> <button>Show</button> <a href=\"/api/v1/kpi?format=csv&amp;by=day&amp;group=host&amp;{q}\">Download CSV</a></form>"
    );
    // Headline: yesterday and today.
    let find = |day: Date| d.days.iter().find(|r| r.period == day.to_string());
    let yesterday = d.today.yesterday().unwrap_or(d.today);
    let _ = write!(h, "<section class=cards>");
    for (label, day) in [("Yesterday", yesterday), ("Today (so far)", d.today)] {
        match find(day) {
            Some(r) => {
                let cls = if r.met { "ok" } else { "miss" };
                let _ = write!(
                    h,
                    "<div class=\"card {cls}\" data-day=\"{day}\"><h2>{label}</h2><p class=big data-kpi=change_compliance>{}</p><p>{} changes: {} authorized ({} retroactive), <b data-kpi=unauthorized>{}</b> unauthorized, {} unverifiable</p><p>host-days {}/{} compliant, {} silent; vetted {}</p></div>",
                    pct(r.change_compliance),
                    r.changes,
                    r.authorized,
                    r.retroactive,
                    r.unauthorized,
                    r.unverifiable,
                    r.host_days_compliant,
                    r.host_days,
                    r.silent_host_days,
                    r.vetted_ratio.map(pct).unwrap_or_else(|| "–".into())
                );
            }
            None => {
                let _ = write!(
                    h,
                    "<div class=card><h2>{label}</h2><p>no hosts expected</p></div>"
                );
            }
        }
    }
    let _ = write!(h, "</section>");
    h.push_str(&chart(&d.days, target));
    // Unauthorized changes.
    let _ = write!(
        h,
        "<h2>Unauthorized changes, yesterday and today <small>({})</small></h2>",
        d.recent.len()
    );
    if d.recent.is_empty() {
        h.push_str("<p class=ok>None.</p>");
    } else {
        h.push_str("<table id=unauthorized><tr><th>received</th><th>host</th><th>tree</th><th>path</th><th>change</th><th>status</th><th>open</th><th>blake3 (new)</th><th>blake3 (before)</th><th>evidence</th></tr>");
        for e in &d.recent {
            let ev = e
                .blake3
                .as_deref()
                .map(|b| format!("<a href=\"/evidence/{b}\">content</a>"))
                .unwrap_or_default();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=path>{}</td><td>{}</td><td class=bad>{}</td><td>{}</td><td class=hash>{}</td><td class=hash>{}</td><td>{ev}</td></tr>",
                esc(&e.received_at),
                esc(&e.host),
                esc(&e.tree),
                esc(&e.path),
                match &e.detail {
                    Some(d) => format!("{} ({})", esc(&e.change), esc(d)),
                    None => esc(&e.change).to_string(),
                },
                esc(&e.status),
                if e.open { "yes" } else { "closed" },
                esc(e.blake3.as_deref().unwrap_or("")),
                esc(e.previous_blake3.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>");
    }
    // Hosts.
    let silent: Vec<&HostInfo> = d.hosts.iter().filter(|x| svc.is_silent(x)).collect();
    let _ = write!(h, "<h2>Silent hosts <small>({})</small></h2>", silent.len());
    if silent.is_empty() {
        h.push_str("<p class=ok>Every host reported within its silence limit.</p>");
    } else {
        h.push_str("<table id=silent><tr><th>host</th><th>environment</th><th>last seen</th></tr>");
        for x in silent {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=bad>{}</td></tr>",
                esc(&x.host),
                esc(&x.environment),
                esc(&x.last_seen)
            );
        }
        h.push_str("</table>");
    }
    // Ticket imports (§12.2): a source that stopped working stops feeding the change log.
    let itsm = svc.itsm_status();
    if !itsm.is_empty() {
        h.push_str("<h2>Ticket imports</h2><table id=itsm><tr><th>source</th><th>last poll</th><th>status</th><th>seen</th><th>imported</th><th>updated</th><th>withdrawn</th><th>refused</th></tr>");
        for st in &itsm {
            let n = |k: &str| st.totals.get(k).copied().unwrap_or(0);
            let (cls, status) = match &st.last_error {
                Some(e) => (" class=bad", e.clone()),
                None if st.last_success.is_some() => ("", "ok".to_string()),
                None => ("", "not polled yet".to_string()),
            };
            let refused: Vec<String> = st
                .refused
                .iter()
                .map(|(t, why)| format!("{t}: {why}"))
                .collect();
            let _ = write!(
                h,
                "<tr{cls}><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td title=\"{}\">{}</td></tr>",
                esc(&st.name),
                esc(&st.kind),
                esc(st.last_poll.as_deref().unwrap_or("")),
                esc(&status),
                st.tickets_seen,
                n("imported"),
                n("updated"),
                n("withdrawn"),
                esc(&refused.join("; ")),
                n("refused"),
            );
        }
        h.push_str("</table>");
    }
    let _ = write!(
        h,
        "<h2>Per host, {} to {}</h2><table id=hosts><tr><th>host</th><th>environment</th><th>changes</th><th>unauthorized</th><th>compliance</th><th>host-days ok</th><th>silent days</th></tr>",
        d.from, d.to
    );
    let info: BTreeMap<&str, &HostInfo> = d.hosts.iter().map(|x| (x.host.as_str(), x)).collect();
    for r in &d.host_rows {
        let cls = if r.met { "" } else { " class=bad" };
        // A host excluding more than its releases do watches less than they ask (§12.1).
        let mark = info
            .get(r.host.as_str())
            .filter(|x| x.coverage_reduced)
            .map(|x| {
                let globs: Vec<String> = x
                    .trees
                    .iter()
                    .filter(|t| t.coverage_reduced)
                    .map(|t| format!("{}: {}", t.tree, t.local_exclude.join(", ")))
                    .collect();
                format!(
                    " <span class=coverage>coverage reduced: {}</span>",
                    esc(&globs.join("; "))
                )
            })
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{}{mark}</td><td>{}</td><td>{}</td><td>{}</td><td{cls}>{}</td><td>{}/{}</td><td>{}</td></tr>",
            esc(&r.host),
            esc(&r.environment),
            r.changes,
            r.unauthorized,
            pct(r.change_compliance),
            r.host_days_compliant,
            r.host_days,
            r.silent_host_days
        );
    }
    h.push_str("</table><footer>driftwatch ");
    h.push_str(env!("CARGO_PKG_VERSION"));
    h.push_str(" · <a href=/metrics>metrics</a></footer></main></body></html>");
    h
}

/// The KPI per day against the target as an SVG line chart.
fn chart(days: &[KpiRow], target: f64) -> String {
    let (w, hgt, pad) = (900.0f64, 220.0f64, 36.0f64);
    let n = days.len().max(1) as f64;
    let x = |i: usize| pad + (w - 2.0 * pad) * if n > 1.0 { i as f64 / (n - 1.0) } else { 0.5 };
    let lo = days
        .iter()
        .map(|r| r.change_compliance)
        .fold(target, f64::min)
        .clamp(0.0, 0.9);
    let y = |v: f64| pad + (hgt - 2.0 * pad) * (1.0 - (v - lo) / (1.0 - lo).max(1e-9));
    let mut s = format!(
        "<svg id=chart role=img aria-label=\"change compliance per day against the target\" viewBox=\"0 0 {w} {hgt}\" width=\"100%\">"
    );
    let _ = write!(
        s,
        "<line x1={pad} x2={} y1={ty:.1} y2={ty:.1} class=target /><text x={} y={:.1} class=label>target {}</text>",
        w - pad,
        w - pad - 80.0,
        y(target) - 4.0,
        pct(target),
        ty = y(target)
    );
    let _ = write!(
        s,
        "<text x=4 y={:.1} class=label>{}</text><text x=4 y={:.1} class=label>100%</text>",
        y(lo),
        pct(lo),
        y(1.0) + 4.0
    );
    let pts: Vec<String> = days
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{:.1},{:.1}", x(i), y(r.change_compliance)))
        .collect();
    let _ = write!(s, "<polyline points=\"{}\" class=line />", pts.join(" "));
    for (i, r) in days.iter().enumerate() {
        let cls = if r.met { "pt" } else { "pt miss" };
        let _ = write!(
            s,
            "<circle cx={:.1} cy={:.1} r=3.5 class=\"{cls}\"><title>{}: {} ({} changes, {} unauthorized)</title></circle>",
            x(i),
            y(r.change_compliance),
            r.period,
            pct(r.change_compliance),
            r.changes,
            r.unauthorized
        );
    }
    if let (Some(a), Some(b)) = (days.first(), days.last()) {
        let _ = write!(
            s,
            "<text x={pad} y={} class=label>{}</text><text x={} y={} class=label>{}</text>",
            hgt - 8.0,
            a.period,
            w - pad - 70.0,
            hgt - 8.0,
            b.period
        );
    }
    s.push_str("</svg>");
    s
}

const STYLE: &str = "<style>body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}main{max-width:1100px;margin:auto;padding:16px}\
h1 small,h2 small{color:#667;font-weight:normal;font-size:60%}table{border-collapse:collapse;width:100%;background:#fff;margin-bottom:16px}\
td,th{border-bottom:1px solid #e3e6ea;padding:4px 6px;text-align:left;font-size:13px}.hash{font-family:monospace;font-size:11px;max-width:140px;overflow:hidden;text-overflow:ellipsis}\
.path{font-family:monospace}.bad{color:#b00020;font-weight:600}.coverage{color:#8a4b00;font-weight:600;font-size:13px}.ok{color:#137333}.cards{display:flex;gap:12px}.card{background:#fff;padding:8px 14px;border-left:6px solid #999;flex:1}\
.card.ok{border-color:#137333}.card.miss{border-color:#b00020}.big{font-size:32px;margin:0}svg{background:#fff}.line{fill:none;stroke:#1a5fb4;stroke-width:2}\
.target{stroke:#b00020;stroke-dasharray:6 4}.pt{fill:#1a5fb4}.pt.miss{fill:#b00020}.label{font-size:11px;fill:#667}.filters{margin:8px 0}footer{color:#667;font-size:12px}</style>";
