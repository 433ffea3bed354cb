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
