//! Routes admins call: signed manifests and change entries in.
//!
//! A collector that refuses uploads (no `[trust]`) says so before the body is judged: the
//! refusal is about its configuration, whatever was sent.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::Serialize;

use super::auth::{Admins, AuthBody};
use super::{ApiResult, AppState, parse_json};
use crate::collector::service::{Service, ServiceError, SignedDoc};

pub(super) async fn put_manifest(
    State(state): State<Arc<AppState>>,
    Path(tree): Path<String>,
    AuthBody { body, .. }: AuthBody<Admins>,
) -> ApiResult<Response> {
    upload(&state, &body, move |s, doc, now| {
        s.put_manifest(&tree, doc, now)
    })
    .await
}

pub(super) async fn post_change(
    State(state): State<Arc<AppState>>,
    AuthBody { body, .. }: AuthBody<Admins>,
) -> ApiResult<Response> {
    upload(&state, &body, |s, doc, now| {
        s.register_change(doc, None, now)
    })
    .await
}

pub(super) async fn approve_change(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    AuthBody { body, .. }: AuthBody<Admins>,
) -> ApiResult<Response> {
    upload(&state, &body, move |s, doc, now| {
        s.approve_change(&id, doc, now)
    })
    .await
}

/// Refuses at once when uploads are off, parses the signed document, stores it: 201 and what
/// the service stored.
async fn upload<T: Serialize + Send + 'static>(
    state: &AppState,
    body: &Bytes,
    store: impl FnOnce(&Service, SignedDoc, Timestamp) -> Result<T, ServiceError> + Send + 'static,
) -> ApiResult<Response> {
    state.svc.uploads_allowed()?;
    let doc: SignedDoc = parse_json(body)?;
    let stored = state.run(move |s| store(s, doc, Timestamp::now())).await?;
    Ok((StatusCode::CREATED, axum::Json(stored)).into_response())
}

/// `POST /api/v1/itsm/{name}/webhook` (DESIGN §12.2): a Jira webhook. No token: the HMAC-SHA256
/// signature (`X-Hub-Signature: sha256=<hex>`) with the source's shared secret is the
/// authentication; anything else is 401 and counted.
pub(super) async fn itsm_webhook(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    use crate::collector::itsm::{config::Kind, jira, poll};
    let source = state
        .svc
        .cfg
        .itsm
        .as_ref()
        .and_then(|i| {
            i.sources
                .iter()
                .find(|s| s.name == name && s.kind == Kind::Jira)
        })
        .cloned()
        .ok_or_else(|| {
            super::ApiError::new(StatusCode::NOT_FOUND, format!("no Jira source {name:?}"))
        })?;
    let secret = source
        .secret_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .filter(|s| !s.is_empty());
    let header = headers.get("x-hub-signature").and_then(|v| v.to_str().ok());
    let ok = secret
        .as_deref()
        .is_some_and(|s| jira::signature_ok(s.as_bytes(), &body, header));
    if !ok {
        state.svc.itsm.update(&name, |st| st.webhook_refused += 1);
        tracing::warn!(source = %name, "itsm: webhook refused: bad or missing X-Hub-Signature");
        return Err(super::ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad or missing X-Hub-Signature (HMAC-SHA256 of the body with the shared secret)",
        ));
    }
    let v: serde_json::Value = parse_json(&body)?;
    if !v["issue"].is_object() {
        return Err(super::ApiError::bad_request("body: no `issue` object"));
    }
    let ticket = jira::ticket_of(&v["issue"], &source);
    let outcome = state
        .run(move |s| Ok(poll::import_pushed(s, &source, &ticket, Timestamp::now())))
        .await?;
    Ok(match outcome {
        Ok(o) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"outcome": o})),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(serde_json::json!({"outcome": "refused", "error": reason})),
        )
            .into_response(),
    })
}
