//! What every handler shares: the service and the HTTP-only state (the rate limiter).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;

use super::error::ApiError;
use crate::collector::service::{Service, ServiceError};

/// Everything a handler needs.
pub struct AppState {
    /// The collector's operations (store, settings, counters).
    pub svc: Arc<Service>,
    /// Per token: the start of its current one-minute window and the requests in it.
    pub(super) limiter: Mutex<HashMap<i64, (Instant, u32)>>,
}

impl AppState {
    /// Wraps a service.
    pub fn new(svc: Arc<Service>) -> Arc<AppState> {
        Arc::new(AppState {
            svc,
            limiter: Mutex::new(HashMap::new()),
        })
    }

    /// Runs blocking service work off the async runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Service) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let svc = self.svc.clone();
        tokio::task::spawn_blocking(move || f(&svc))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("worker failed: {e}"),
                )
            })?
            .map_err(ApiError::from)
    }
}
