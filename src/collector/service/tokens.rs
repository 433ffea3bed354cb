//! Access tokens: created (bound to a host for agents), listed, revoked, and looked up.
//!
//! Invariant: an agent token is always bound to exactly one host and no other token is; the
//! store keeps only hashes, so a secret is seen once, when created.

use jiff::Timestamp;

use super::{Service, ServiceError};
use crate::store::{Role, Token};

/// An agent token must name its host; no other token may.
pub fn check_binding(role: Role, host: Option<&str>) -> Result<(), ServiceError> {
    if role == Role::Agent && host.is_none_or(|h| h.trim().is_empty()) {
        return Err(ServiceError::Invalid(
            "host: an agent token must be bound to a host".into(),
        ));
    }
    if role != Role::Agent && host.is_some() {
        return Err(ServiceError::Invalid(
            "host: only agent tokens are bound to a host".into(),
        ));
    }
    Ok(())
}

impl Service {
    /// Creates a token; returns it with its secret.
    pub fn create_token(
        &self,
        role: Role,
        host: Option<&str>,
        label: &str,
        now: Timestamp,
    ) -> Result<(Token, String), ServiceError> {
        check_binding(role, host)?;
        Ok(self.store.create_token(role, host, label, now)?)
    }

    /// Every token (never their secrets).
    pub fn tokens(&self) -> Result<Vec<Token>, ServiceError> {
        Ok(self.store.list_tokens()?)
    }

    /// Revokes a token; a host whose last agent token is revoked is no longer expected.
    pub fn revoke_token(&self, id: i64, now: Timestamp) -> Result<Token, ServiceError> {
        Ok(self.store.revoke_token(id, now)?)
    }

    /// The live token with this secret, if any.
    pub fn find_token(&self, secret: &str) -> Result<Option<Token>, ServiceError> {
        Ok(self.store.find_token(secret)?)
    }
}
