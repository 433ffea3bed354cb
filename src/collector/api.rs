//! The HTTP API (DESIGN §8): auth, roles, limits, and the handlers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use jiff::civil::Date;
use serde::Deserialize;
use serde_json::json;

use super::config::CollectorConfig;
use super::metrics::Metrics;
use crate::changelog::ChangeEntry;
use crate::classify::{self, StoredChangeRef};
use crate::event::{EventBatch, Heartbeat};
use crate::kpi::{self, Grouping, Period};
use crate::manifest::{self, Manifest};
use crate::pathbytes::RelPath;
use crate::sign;
use crate::store::{EventQuery, Role, Store, StoreError, StoredManifest, Token};
use crate::timefmt;

/// Everything a handler needs.
pub struct AppState {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Settings.
    pub cfg: Arc<CollectorConfig>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    limiter: Mutex<HashMap<i64, (Instant, u32)>>,
}

impl AppState {
    /// Wraps a store and settings.
    pub fn new(store: Arc<dyn Store>, cfg: Arc<CollectorConfig>) -> Arc<AppState> {
        Arc::new(AppState {
            store,
            cfg,
            metrics: Arc::new(Metrics::default()),
            limiter: Mutex::new(HashMap::new()),
        })
    }
}

/// An API error: a status and a one-line reason, as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 400 with a reason.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::bad(message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage error (see the collector log)",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Builds the router with every route behind the body limit and the request timeout.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.cfg.request_timeout;
    let max_body = state.cfg.max_body;
    Router::new()
        .route("/api/v1/events", post(post_events).get(get_events))
        .route("/api/v1/heartbeat", post(post_heartbeat))
        .route(
            "/api/v1/manifests/{tree}",
            get(get_manifest).put(put_manifest),
        )
        .route("/api/v1/changes", get(get_changes).post(post_change))
        .route("/api/v1/changes/{id}/approve", post(approve_change))
        .route("/api/v1/kpi", get(get_kpi))
        .route("/api/v1/hosts", get(get_hosts))
        .route("/api/v1/audit/verify", get(get_audit))
        .route("/metrics", get(get_metrics))
        .route("/", get(super::dashboard::index))
        .route("/login", post(super::dashboard::login))
        .route("/evidence/{blake3}", get(get_evidence))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(
            move |req: Request, next: Next| async move {
                match tokio::time::timeout(timeout, next.run(req)).await {
                    Ok(resp) => resp,
                    Err(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, "request took too long")
                        .into_response(),
                }
            },
        ))
        .with_state(state)
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> ApiResult<T> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("worker failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

/// Checks the bearer token, the role and the rate limit.
async fn authorize(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    allowed: &[Role],
) -> ApiResult<Token> {
    // The dashboard's login cookie only works on read routes (all GETs): it cannot be used to write.
    let cookie = if allowed.contains(&Role::Reader) {
        super::dashboard::cookie_token(headers)
    } else {
        None
    };
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string())
        .or(cookie)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer <token>",
            )
        })?;
    let token = blocking(state, move |s| s.find_token(&secret))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown or revoked token"))?;
    rate_limit(state, token.id)?;
    if !allowed.contains(&token.role) {
        let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a {} token may not do this (needs {})",
                token.role.as_str(),
                names.join(" or ")
            ),
        ));
    }
    Ok(token)
}

/// Fixed one-minute windows per token: simple, and enough to stop a runaway or hostile client.
fn rate_limit(state: &AppState, token_id: i64) -> ApiResult<()> {
    let mut map = state.limiter.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let slot = map.entry(token_id).or_insert((now, 0));
    let elapsed = now.duration_since(slot.0).as_secs();
    if elapsed >= 60 {
        *slot = (now, 0);
    }
    slot.1 += 1;
    if slot.1 > state.cfg.requests_per_minute {
        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
        e.retry_after = Some(60u64.saturating_sub(elapsed).max(1));
        return Err(e);
    }
    Ok(())
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("body: {e}")))
}

fn bound_host(token: &Token, host: &str) -> ApiResult<()> {
    if token.host.as_deref() != Some(host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this agent token is bound to host {:?}, not {host:?}",
                token.host.as_deref().unwrap_or("")
            ),
        ));
    }
    Ok(())
}

async fn post_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let token = authorize(&state, &headers, &[Role::Agent]).await?;
    let batch: EventBatch = parse_json(&body)?;
    bound_host(&token, &batch.host)?;
    validate_batch(&batch).map_err(ApiError::bad)?;
    let n = batch.events.len() as u64;
    let result = blocking(&state, move |s| s.ingest(&batch, Timestamp::now())).await?;
    let m = &state.metrics;
    m.batches.fetch_add(1, Ordering::Relaxed);
    m.events_received.fetch_add(n, Ordering::Relaxed);
    m.events_stored.fetch_add(result.stored, Ordering::Relaxed);
    m.events_duplicate
        .fetch_add(result.duplicates, Ordering::Relaxed);
    m.events_rejected
        .fetch_add(result.rejected.len() as u64, Ordering::Relaxed);
    Ok(axum::Json(result).into_response())
}

/// Checks every field of a batch; the message names the first bad one.
pub fn validate_batch(b: &EventBatch) -> Result<(), String> {
    if b.host.trim().is_empty() {
        return Err("host: must not be empty".into());
    }
    for (i, e) in b.events.iter().enumerate() {
        let at = |f: &str| format!("events[{i}].{f}");
        if e.seq == 0 {
            return Err(format!("{}: sequence numbers start at 1", at("seq")));
        }
        if e.tree.is_empty() {
            return Err(format!("{}: must not be empty", at("tree")));
        }
        // `.` alone is the tree itself (an agent whose tree root leads nowhere).
        if !(e.path == "." && e.path_bytes.is_none()) {
            RelPath::from_json(&e.path, e.path_bytes.as_deref())
                .map_err(|m| format!("{}: {m}", at("path")))?;
        }
        if !["added", "removed", "modified", "metadata", "type_changed"]
            .contains(&e.change.as_str())
        {
            return Err(format!(
                "{}: unknown change kind {:?}",
                at("change"),
                e.change
            ));
        }
        if e.status != "resolved" {
            e.status
                .parse::<classify::Status>()
                .map_err(|m| format!("{}: {m}", at("status")))?;
        } else if e.resolves.is_none() {
            return Err(format!(
                "{}: a resolved record needs `resolves`",
                at("resolves")
            ));
        }
        for (f, v) in [
            ("observed_at", &e.observed_at),
            ("window_start", &e.window_start),
        ] {
            timefmt::parse_timestamp(v).map_err(|m| format!("{}: {m}", at(f)))?;
        }
        for (f, v) in [
            ("blake3", &e.blake3),
            ("previous_blake3", &e.previous_blake3),
        ] {
            if let Some(h) = v {
                manifest::parse_hash(h).map_err(|m| format!("{}: {m}", at(f)))?;
            }
        }
    }
    for (i, s) in b.scans.iter().enumerate() {
        if s.vetted > s.paths {
            return Err(format!("scans[{i}].vetted: larger than paths"));
        }
        timefmt::parse_timestamp(&s.finished_at)
            .map_err(|m| format!("scans[{i}].finished_at: {m}"))?;
    }
    Ok(())
}

async fn post_heartbeat(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let token = authorize(&state, &headers, &[Role::Agent]).await?;
    let hb: Heartbeat = parse_json(&body)?;
    bound_host(&token, &hb.host)?;
    // The outcome says whether the host's coverage changed: the `coverage` alert (§12.3) will
    // be raised from here; nothing acts on it yet.
    let _outcome = blocking(&state, move |s| s.record_heartbeat(&hb, Timestamp::now())).await?;
    state.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
    Ok(axum::Json(json!({"ok": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedDoc {
    manifest: Option<String>,
    toml: Option<String>,
    minisig: Option<String>,
}

async fn put_manifest(
    State(state): State<Arc<AppState>>,
    Path(tree): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Role::Admin]).await?;
    uploads_allowed(&state)?;
    let doc: SignedDoc = parse_json(&body)?;
    let text = doc
        .manifest
        .ok_or_else(|| ApiError::bad("body: missing field `manifest`"))?;
    let origin = std::path::PathBuf::from(format!("manifests/{tree}"));
    check_signature(
        &state,
        text.as_bytes(),
        &origin,
        doc.minisig.as_deref(),
        &state.cfg.release_keys,
    )?;
    let m = Manifest::parse(text.as_bytes(), &origin).map_err(|e| ApiError::bad(e.to_string()))?;
    if m.tree != tree {
        return Err(ApiError::bad(format!(
            "manifest is for tree {:?}, not {tree:?}",
            m.tree
        )));
    }
    let stored = StoredManifest {
        tree,
        release: m.release.clone(),
        manifest: text,
        minisig: doc.minisig,
        received_at: timefmt::format_timestamp(Timestamp::now()),
    };
    blocking(&state, move |s| s.put_manifest(&stored)).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"tree": m.tree, "release": m.release})),
    )
        .into_response())
}

/// Without a `[trust]` table nothing uploaded could be checked: manifests and change entries
/// are refused with 409 Conflict (the request is valid; the collector's configuration is what
/// conflicts with it, and retrying will not help until an operator sets the keys: not the 503
/// of a passing outage, which clients and load balancers retry and count against the instance).
fn uploads_allowed(state: &AppState) -> ApiResult<()> {
    match &state.cfg.uploads_refused {
        Some(why) => Err(ApiError::new(StatusCode::CONFLICT, why.clone())),
        None => Ok(()),
    }
}

fn check_signature(
    state: &AppState,
    data: &[u8],
    origin: &std::path::Path,
    sig: Option<&str>,
    keys: &[sign::TrustedKey],
) -> ApiResult<()> {
    match sig {
        Some(sig) if !keys.is_empty() => {
            sign::verify_text(data, origin, sig, keys).map_err(|e| ApiError::bad(e.to_string()))?;
        }
        _ if state.cfg.require_signatures => {
            return Err(ApiError::bad(format!(
                "{}: a valid minisig is required (require_signatures = true)",
                origin.display()
            )));
        }
        _ => {}
    }
    Ok(())
}

async fn get_manifest(
    State(state): State<Arc<AppState>>,
    Path(tree): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Role::Agent, Role::Reader, Role::Admin]).await?;
    let t = tree.clone();
    let m = blocking(&state, move |s| s.manifest(&t)).await?;
    let m = m.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no manifest for tree {tree:?}"),
        )
    })?;
    Ok(axum::Json(m).into_response())
}

async fn get_changes(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Role::Agent, Role::Reader, Role::Admin]).await?;
    let list = blocking(&state, |s| s.changes()).await?;
    Ok(axum::Json(list).into_response())
}

async fn post_change(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Role::Admin]).await?;
    uploads_allowed(&state)?;
    store_change(&state, None, &body).await
}

async fn approve_change(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Role::Admin]).await?;
    uploads_allowed(&state)?;
    let known = id.clone();
    let exists = blocking(&state, move |s| {
        Ok(s.changes()?.into_iter().any(|c| c.id == known))
    })
    .await?;
    if !exists {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("change {id:?} not found"),
        ));
    }
    store_change(&state, Some(id), &body).await
}

/// Validates, checks the signature policy, stores, and re-classifies the open events it covers.
async fn store_change(
    state: &Arc<AppState>,
    expect_id: Option<String>,
    body: &Bytes,
) -> ApiResult<Response> {
    let doc: SignedDoc = parse_json(body)?;
    let text = doc
        .toml
        .ok_or_else(|| ApiError::bad("body: missing field `toml`"))?;
    let origin = std::path::PathBuf::from("change.toml");
    let entry = ChangeEntry::parse(&text, &origin).map_err(|e| ApiError::bad(e.to_string()))?;
    if let Some(id) = &expect_id
        && *id != entry.id
    {
        return Err(ApiError::bad(format!(
            "id: {:?} does not match {id:?} in the URL",
            entry.id
        )));
    }
    let origin = std::path::PathBuf::from(format!("{}.toml", entry.id));
    check_signature(
        state,
        text.as_bytes(),
        &origin,
        doc.minisig.as_deref(),
        &state.cfg.approver_keys,
    )?;
    if entry.is_self_approved() && !state.cfg.allow_self_approval {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{}: approved by its own requester {:?} (separation of duties)",
                entry.id, entry.requested_by
            ),
        ));
    }
    let (id, sig) = (entry.id.clone(), doc.minisig.clone());
    let now = Timestamp::now();
    let reclassified = blocking(state, move |s| {
        s.put_change(&id, &text, sig.as_deref(), now)?;
        apply_entry(s, &entry, now)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"stored": true, "reclassified": reclassified})),
    )
        .into_response())
}

/// Re-classifies every open unauthorized event an approved entry covers; returns how many.
pub fn apply_entry(s: &dyn Store, entry: &ChangeEntry, now: Timestamp) -> Result<u64, StoreError> {
    if entry.approval.is_none() {
        return Ok(0);
    }
    let open = s.events(&EventQuery {
        open_only: true,
        status: Some("unauthorized".into()),
        ..EventQuery::default()
    })?;
    let mut n = 0;
    for e in open {
        let Ok(path) = RelPath::from_json(&e.path, e.path_bytes.as_deref()) else {
            continue;
        };
        let (Ok(t0), Ok(observed_at)) = (
            timefmt::parse_timestamp(&e.window_start),
            timefmt::parse_timestamp(&e.observed_at),
        ) else {
            continue;
        };
        let c = StoredChangeRef {
            host: &e.host,
            tree: &e.tree,
            path: &path,
            blake3: e
                .blake3
                .as_deref()
                .and_then(|h| manifest::parse_hash(h).ok()),
            removed: e.change == "removed",
            t0,
            observed_at,
        };
        if let Some(status) = classify::reclassify(&c, entry, now) {
            let (by, at) = entry.approval.as_ref().expect("checked");
            let reason = format!(
                "approved by {by} at {} under {}",
                timefmt::format_timestamp(*at),
                entry.id
            );
            s.reclassify(e.id, &status.to_string(), &reason, now)?;
            n += 1;
        }
    }
    Ok(n)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListParams {
    from: Option<String>,
    to: Option<String>,
    host: Option<String>,
    status: Option<String>,
    by: Option<String>,
    group: Option<String>,
    format: Option<String>,
    open: Option<bool>,
    limit: Option<u64>,
}

fn parse_date(name: &str, v: &Option<String>) -> ApiResult<Option<Date>> {
    v.as_deref()
        .map(|s| {
            s.parse::<Date>().map_err(|e| {
                ApiError::bad(format!("{name}: {s:?} is not a date like 2026-11-21 ({e})"))
            })
        })
        .transpose()
}

fn params(
    q: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<ListParams> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::bad(format!("query: {}", e.body_text())))
}

async fn get_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Role::Reader, Role::Admin]).await?;
    let p = params(q)?;
    let query = EventQuery {
        from: parse_date("from", &p.from)?,
        to: parse_date("to", &p.to)?,
        host: p.host,
        status: p.status,
        open_only: p.open.unwrap_or(false),
        limit: p.limit,
    };
    let events = blocking(&state, move |s| s.events(&query)).await?;
    match p.format.as_deref().unwrap_or("json") {
        "json" => Ok(axum::Json(events).into_response()),
        "csv" => Ok(csv_response(crate::report::events_csv(&events))),
        other => Err(ApiError::bad(format!(
            "format: {other:?} is not json or csv"
        ))),
    }
}

fn csv_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}

/// Resolves the KPI request: dates (default: the last 30 days), period, groupings.
pub struct KpiRequest {
    /// First day.
    pub from: Date,
    /// Last day.
    pub to: Date,
    /// Period.
    pub period: Period,
    /// Groupings.
    pub groupings: Vec<Grouping>,
    /// Only this host.
    pub host: Option<String>,
}

impl KpiRequest {
    /// Builds a request from optional textual parameters, naming the bad one.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        by: Option<&str>,
        group: Option<&str>,
        host: Option<String>,
        today: Date,
    ) -> Result<KpiRequest, String> {
        let date = |name: &str, v: Option<&str>| {
            v.map(|s| {
                s.parse::<Date>()
                    .map_err(|e| format!("{name}: {s:?} is not a date like 2026-11-21 ({e})"))
            })
            .transpose()
        };
        let to = date("to", to)?.unwrap_or(today);
        let from = date("from", from)?
            .unwrap_or_else(|| to.checked_sub(jiff::Span::new().days(29)).unwrap_or(to));
        if from > to {
            return Err(format!("from: {from} is after to {to}"));
        }
        let period: Period = by
            .unwrap_or("day")
            .parse()
            .map_err(|e| format!("by: {e}"))?;
        let groupings = match group.unwrap_or(if host.is_some() { "host" } else { "fleet" }) {
            "fleet" => vec![Grouping::Fleet],
            "environment" => vec![Grouping::Fleet, Grouping::Environment],
            "host" => vec![Grouping::Fleet, Grouping::Environment, Grouping::Host],
            other => {
                return Err(format!(
                    "group: {other:?} is not fleet, environment or host"
                ));
            }
        };
        Ok(KpiRequest {
            from,
            to,
            period,
            groupings,
            host,
        })
    }
}

async fn get_kpi(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Role::Reader, Role::Admin]).await?;
    let p = params(q)?;
    let today = Timestamp::now().to_zoned(state.cfg.timezone.clone()).date();
    let req = KpiRequest::parse(
        p.from.as_deref(),
        p.to.as_deref(),
        p.by.as_deref(),
        p.group.as_deref(),
        p.host.clone(),
        today,
    )
    .map_err(ApiError::bad)?;
    let target = state.cfg.target;
    let rows = blocking(&state, move |s| {
        let days = s.host_days(req.from, req.to, req.host.as_deref(), Timestamp::now())?;
        Ok(kpi::compute(&days, req.period, &req.groupings, target))
    })
    .await?;
    match p.format.as_deref().unwrap_or("json") {
        "json" => Ok(axum::Json(rows).into_response()),
        "csv" => Ok(csv_response(kpi::to_csv(&rows))),
        other => Err(ApiError::bad(format!(
            "format: {other:?} is not json or csv"
        ))),
    }
}

async fn get_hosts(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    authorize(&state, &headers, &[Role::Reader, Role::Admin]).await?;
    let silent_after = state.cfg.silent_after.as_secs() as i64;
    let hosts = blocking(&state, |s| s.hosts(Timestamp::now())).await?;
    let out: Vec<serde_json::Value> = hosts
        .into_iter()
        .map(|h| {
            let silent = !h.retired && h.silent_for_seconds > silent_after;
            let mut v = serde_json::to_value(h).expect("hosts serialize");
            v["silent"] = json!(silent);
            v
        })
        .collect();
    Ok(axum::Json(out).into_response())
}

/// Evidence blobs, when this collector shares a host with the agent that kept them (embedded mode).
async fn get_evidence(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Role::Reader, Role::Admin]).await?;
    manifest::parse_hash(&hash).map_err(ApiError::bad)?;
    let dir = state.cfg.evidence_dir.clone().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "evidence is kept on the agent's host (STATE_DIR/evidence/blobs); this collector has none")
    })?;
    let blob = dir.join("blobs").join(&hash);
    let data = tokio::fs::read(&blob)
        .await
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no evidence {hash}")))?;
    let diff = tokio::fs::read_to_string(dir.join("blobs").join(format!("{hash}.diff")))
        .await
        .ok();
    let mut body = String::new();
    if let Some(d) = diff {
        body.push_str("=== diff against the previous content ===\n");
        body.push_str(&d);
        body.push_str("\n=== content ===\n");
    }
    body.push_str(&String::from_utf8_lossy(&data));
    // Served as plain text, never rendered: it is attacker-controlled content.
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    at: Option<u64>,
}

async fn get_audit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Role::Reader, Role::Admin]).await?;
    let at = q
        .map(|Query(p)| p.at)
        .map_err(|e| ApiError::bad(format!("query: {}", e.body_text())))?;
    let report = blocking(&state, move |s| s.verify_chain(at)).await?;
    let status = if report.first_bad.is_none() {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Ok((
        status,
        axum::Json(json!({"intact": report.first_bad.is_none(), "report": report})),
    )
        .into_response())
}

async fn get_metrics(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let cfg = state.cfg.clone();
    let metrics = state.metrics.clone();
    let text = blocking(&state, move |s| super::metrics::render(s, &cfg, &metrics)).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
