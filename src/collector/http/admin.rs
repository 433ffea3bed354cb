//! Routes admins call: signed manifests and change entries in.
//!
//! A collector that refuses uploads (no `[trust]`) says so before the body is judged: the
//! refusal is about its configuration, whatever was sent.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;

use super::auth::{Admins, AuthBody};
use super::{ApiResult, AppState, parse_json};
use crate::collector::service::SignedDoc;

pub(super) async fn put_manifest(
    State(state): State<Arc<AppState>>,
    Path(tree): Path<String>,
    AuthBody { body, .. }: AuthBody<Admins>,
) -> ApiResult<Response> {
    state.svc.uploads_allowed()?;
    let doc: SignedDoc = parse_json(&body)?;
    let stored = state
        .run(move |s| s.put_manifest(&tree, doc, Timestamp::now()))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(stored)).into_response())
}

pub(super) async fn post_change(
    State(state): State<Arc<AppState>>,
    AuthBody { body, .. }: AuthBody<Admins>,
) -> ApiResult<Response> {
    state.svc.uploads_allowed()?;
    let doc: SignedDoc = parse_json(&body)?;
    let stored = state
        .run(move |s| s.register_change(doc, None, Timestamp::now()))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(stored)).into_response())
}

pub(super) async fn approve_change(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    AuthBody { body, .. }: AuthBody<Admins>,
) -> ApiResult<Response> {
    state.svc.uploads_allowed()?;
    let doc: SignedDoc = parse_json(&body)?;
    let stored = state
        .run(move |s| s.approve_change(&id, doc, Timestamp::now()))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(stored)).into_response())
}
