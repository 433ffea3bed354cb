//! Routes readers (and admins) call: events, KPI, hosts, audit, evidence; and `/metrics`,
//! which needs no token (Prometheus scrapes it; it carries no paths).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;

use super::auth::{Auth, Readers};
use super::{ApiError, ApiResult, AppState, csv_response, query};
use crate::collector::service::KpiRequest;
use crate::collector::service::kpi::{KpiQuery, parse_date};
use crate::judge::manifest;
use crate::kpi;
use crate::store::EventQuery;

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
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

/// JSON by default, CSV on request.
enum Format {
    Json,
    Csv,
}

fn format(p: &ListParams) -> ApiResult<Format> {
    match p.format.as_deref().unwrap_or("json") {
        "json" => Ok(Format::Json),
        "csv" => Ok(Format::Csv),
        other => Err(ApiError::bad_request(format!(
            "format: {other:?} is not json or csv"
        ))),
    }
}

pub(super) async fn get_events(
    _: Auth<Readers>,
    State(state): State<Arc<AppState>>,
    q: QueryResult<ListParams>,
) -> ApiResult<Response> {
    let p = query(q)?;
    let query = EventQuery {
        from: parse_date("from", p.from.as_deref())?,
        to: parse_date("to", p.to.as_deref())?,
        host: p.host.clone(),
        status: p.status.clone(),
        open_only: p.open.unwrap_or(false),
        limit: p.limit,
    };
    let events = state.run(move |s| s.events(&query)).await?;
    Ok(match format(&p)? {
        Format::Json => axum::Json(events).into_response(),
        Format::Csv => csv_response(crate::judge::report::events_csv(&events)),
    })
}

pub(super) async fn get_kpi(
    _: Auth<Readers>,
    State(state): State<Arc<AppState>>,
    q: QueryResult<ListParams>,
) -> ApiResult<Response> {
    let p = query(q)?;
    let q = KpiQuery {
        from: p.from.clone(),
        to: p.to.clone(),
        by: p.by.clone(),
        group: p.group.clone(),
        host: p.host.clone(),
    };
    let req = KpiRequest::from_query(&q, state.svc.today())?;
    let rows = state.run(move |s| s.kpi(&req)).await?;
    Ok(match format(&p)? {
        Format::Json => axum::Json(rows).into_response(),
        Format::Csv => csv_response(kpi::to_csv(&rows)),
    })
}

pub(super) async fn get_hosts(
    _: Auth<Readers>,
    State(state): State<Arc<AppState>>,
) -> ApiResult<Response> {
    let hosts = state.run(|s| s.host_status(Timestamp::now())).await?;
    Ok(axum::Json(hosts).into_response())
}

/// `?limit=N` of `GET /api/v1/alerts`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct AlertsParams {
    limit: Option<u64>,
}

/// The outbox's newest alerts with their delivery state (`driftwatch alerts list`).
pub(super) async fn get_alerts(
    _: Auth<Readers>,
    State(state): State<Arc<AppState>>,
    q: Result<axum::extract::Query<AlertsParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let limit = super::query(q)?.limit.unwrap_or(100).min(10_000);
    let rows = state.run(move |s| s.alert_list(limit)).await?;
    Ok(axum::Json(rows).into_response())
}

/// Evidence blobs, when this collector shares a host with the agent that kept them (embedded mode).
pub(super) async fn get_evidence(
    _: Auth<Readers>,
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
) -> ApiResult<Response> {
    manifest::parse_hash(&hash).map_err(ApiError::bad_request)?;
    let dir = state.svc.cfg.evidence_dir.clone().ok_or_else(|| {
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
pub(super) struct AuditParams {
    at: Option<u64>,
}

/// 200 when intact, 409 when not; the report either way.
pub(super) async fn get_audit(
    _: Auth<Readers>,
    State(state): State<Arc<AppState>>,
    q: QueryResult<AuditParams>,
) -> ApiResult<Response> {
    let at = query(q)?.at;
    let report = state.run(move |s| s.verify_chain(at)).await?;
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

pub(super) async fn get_metrics(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let text = state.run(crate::collector::metrics::render).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// `GET /api/v1/itsm`: import status per ticket source (DESIGN §12.2).
pub(super) async fn get_itsm(
    _: Auth<Readers>,
    State(state): State<Arc<AppState>>,
) -> ApiResult<Response> {
    Ok(axum::Json(state.svc.itsm_status()).into_response())
}
