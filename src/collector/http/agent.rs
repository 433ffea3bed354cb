//! Routes agents call: events and heartbeats in, manifests and change entries out (the last
//! two are open to every role).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde_json::json;

use super::auth::{Agents, Anyone, Auth, AuthBody};
use super::{ApiError, ApiResult, AppState, parse_json};
use crate::event::{EventBatch, Heartbeat};

pub(super) async fn post_events(
    State(state): State<Arc<AppState>>,
    AuthBody { auth, body }: AuthBody<Agents>,
) -> ApiResult<Response> {
    let batch: EventBatch = parse_json(&body)?;
    auth.bound_to(&batch.host)?;
    let result = state
        .run(move |s| s.ingest(&batch, Timestamp::now()))
        .await?;
    Ok(axum::Json(result).into_response())
}

pub(super) async fn post_heartbeat(
    State(state): State<Arc<AppState>>,
    AuthBody { auth, body }: AuthBody<Agents>,
) -> ApiResult<Response> {
    let hb: Heartbeat = parse_json(&body)?;
    auth.bound_to(&hb.host)?;
    let _outcome = state
        .run(move |s| s.heartbeat(&hb, Timestamp::now()))
        .await?;
    Ok(axum::Json(json!({"ok": true})).into_response())
}

pub(super) async fn get_manifest(
    _: Auth<Anyone>,
    State(state): State<Arc<AppState>>,
    Path(tree): Path<String>,
) -> ApiResult<Response> {
    let t = tree.clone();
    let m = state.run(move |s| s.manifest(&t)).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no manifest for tree {tree:?}"),
        )
    })?;
    Ok(axum::Json(m).into_response())
}

pub(super) async fn get_changes(
    _: Auth<Anyone>,
    State(state): State<Arc<AppState>>,
) -> ApiResult<Response> {
    let list = state.run(|s| s.changes()).await?;
    Ok(axum::Json(list).into_response())
}
