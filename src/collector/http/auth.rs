//! Who may call what: bearer tokens (or the dashboard's cookie on read routes), roles, the
//! per-token rate limit, and the host an agent token is bound to. The only place these checks
//! are made: handlers take an [`Auth`] extractor naming their audience.
//!
//! Invariants: the login cookie only works where readers are allowed (all GET routes), so it
//! cannot be used to write; every authenticated request counts against its token's budget.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiResult};
use super::state::AppState;
use crate::store::{Role, Token};

/// Name of the dashboard's login cookie.
pub const COOKIE: &str = "dw_token";

/// The roles a route admits.
pub trait Audience: Send + Sync + 'static {
    /// Allowed roles.
    const ROLES: &'static [Role];
}

/// Agents posting their host's data.
pub struct Agents;
/// Everyone with a token (manifests and change entries are fetched by agents too).
pub struct Anyone;
/// Readers and admins.
pub struct Readers;
/// Admins only.
pub struct Admins;

impl Audience for Agents {
    const ROLES: &'static [Role] = &[Role::Agent];
}
impl Audience for Anyone {
    const ROLES: &'static [Role] = &[Role::Agent, Role::Reader, Role::Admin];
}
impl Audience for Readers {
    const ROLES: &'static [Role] = &[Role::Reader, Role::Admin];
}
impl Audience for Admins {
    const ROLES: &'static [Role] = &[Role::Admin];
}

/// An authenticated caller of audience `A`.
pub struct Auth<A: Audience> {
    /// The caller's token.
    pub token: Token,
    audience: PhantomData<A>,
}

impl<A: Audience> FromRequestParts<Arc<AppState>> for Auth<A> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = authorize(state, &parts.headers, A::ROLES).await?;
        Ok(Auth {
            token,
            audience: PhantomData,
        })
    }
}

/// An authenticated caller of audience `A` and the body it sent. The body is read first: an
/// oversize request is a 413 whoever sends it, and a body is only judged (400) once the caller
/// is known to be allowed.
pub struct AuthBody<A: Audience> {
    /// The caller.
    pub auth: Auth<A>,
    /// The request body (within `max_body`).
    pub body: Bytes,
}

impl<A: Audience> FromRequest<Arc<AppState>> for AuthBody<A> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let token = authorize(state, &headers, A::ROLES)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(AuthBody {
            auth: Auth {
                token,
                audience: PhantomData,
            },
            body,
        })
    }
}

impl Auth<Agents> {
    /// An agent token only speaks for the host it is bound to.
    pub fn bound_to(&self, host: &str) -> ApiResult<()> {
        if self.token.host.as_deref() != Some(host) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this agent token is bound to host {:?}, not {host:?}",
                    self.token.host.as_deref().unwrap_or("")
                ),
            ));
        }
        Ok(())
    }
}

/// The token in the login cookie, if any.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::COOKIE)?.to_str().ok()?;
    raw.split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The live token with this secret when it is a reader's (or an admin's), for the dashboard's
/// sign-in. Not rate limited: it only ever renders a page or sets the cookie.
pub async fn reader_token(state: &AppState, secret: String) -> Option<Token> {
    state
        .run(move |s| s.find_token(&secret))
        .await
        .ok()
        .flatten()
        .filter(|t| Readers::ROLES.contains(&t.role))
}

/// Checks the bearer token (or cookie), the role and the rate limit.
async fn authorize(state: &AppState, headers: &HeaderMap, allowed: &[Role]) -> ApiResult<Token> {
    let cookie = if allowed.contains(&Role::Reader) {
        cookie_token(headers)
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
    let token = state
        .run(move |s| s.find_token(&secret))
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
    if slot.1 > state.svc.cfg.requests_per_minute {
        state
            .svc
            .metrics
            .rate_limited
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::rate_limited(60u64.saturating_sub(elapsed).max(1)));
    }
    Ok(())
}
