//! The HTTP API (DESIGN §8) and the dashboard: HTTP concerns only.
//!
//! Routes are split by audience ([`agent`], [`reader`], [`admin`], [`dashboard`]); who may call
//! what is decided by the [`auth::Auth`] extractor each handler takes, and service errors become
//! status codes in [`error`] only. Handlers parse the request, call the
//! [`Service`](crate::collector::service::Service) on a blocking thread and shape the answer;
//! they hold no rules of their own.

pub mod admin;
pub mod agent;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod reader;
pub mod state;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use error::{ApiError, ApiResult};
pub use state::AppState;

/// Builds the router with every route behind the body limit and the request timeout.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.svc.cfg.request_timeout;
    let max_body = state.svc.cfg.max_body;
    Router::new()
        .route(
            "/api/v1/events",
            post(agent::post_events).get(reader::get_events),
        )
        .route("/api/v1/heartbeat", post(agent::post_heartbeat))
        .route(
            "/api/v1/manifests/{tree}",
            get(agent::get_manifest).put(admin::put_manifest),
        )
        .route(
            "/api/v1/changes",
            get(agent::get_changes).post(admin::post_change),
        )
        .route("/api/v1/changes/{id}/approve", post(admin::approve_change))
        .route("/api/v1/kpi", get(reader::get_kpi))
        .route("/api/v1/itsm", get(reader::get_itsm))
        .route("/api/v1/itsm/{name}/webhook", post(admin::itsm_webhook))
        .route("/api/v1/hosts", get(reader::get_hosts))
        .route("/api/v1/alerts", get(reader::get_alerts))
        .route("/api/v1/audit/verify", get(reader::get_audit))
        .route("/metrics", get(reader::get_metrics))
        .route("/", get(dashboard::index))
        .route("/login", post(dashboard::login))
        .route("/evidence/{blake3}", get(reader::get_evidence))
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

/// A JSON body, or a 400 naming what is wrong with it.
fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

/// A query string, or a 400 naming what is wrong with it.
fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<T> {
    q.map(|axum::extract::Query(p)| p)
        .map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))
}

fn csv_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}
