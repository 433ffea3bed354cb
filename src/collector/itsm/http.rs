//! What every ticket-system client shares: credentials read at each request (a rotated
//! password file is picked up without a restart), a per-request timeout, and retries with
//! backoff for what may pass (network trouble, timeouts, 429, 5xx). 401/403 are never retried:
//! they will not pass by themselves.

use std::time::Duration;

use serde_json::Value;

use super::FetchError;
use super::config::{Credentials, SourceConfig};

/// Attempts per request before a poll gives up on the instance.
const ATTEMPTS: u32 = 3;

/// An HTTP client for one source.
pub struct Http {
    base: String,
    credentials: Credentials,
    timeout: Duration,
    client: reqwest::Client,
    /// First retry delay; doubled at each retry.
    backoff: Duration,
}

fn secret(path: &std::path::Path) -> Result<String, FetchError> {
    let text = std::fs::read_to_string(path).map_err(|e| FetchError::Credentials {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let line = text.lines().next().unwrap_or_default().trim().to_string();
    if line.is_empty() {
        return Err(FetchError::Credentials {
            path: path.display().to_string(),
            message: "empty".into(),
        });
    }
    Ok(line)
}

impl Http {
    /// A client for the source's base URL, credentials and timeout.
    pub fn new(cfg: &SourceConfig) -> Result<Http, FetchError> {
        crate::client::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| FetchError::Unavailable {
                url: cfg.url.clone(),
                message: e.to_string(),
            })?;
        Ok(Http {
            base: cfg.url.clone(),
            credentials: cfg.credentials.clone(),
            timeout: cfg.timeout,
            client,
            backoff: Duration::from_millis(500),
        })
    }

    /// GETs `path` (with its query) as JSON; `error_message` reads the system's error body.
    pub async fn get(
        &self,
        path: &str,
        error_message: fn(&Value) -> String,
    ) -> Result<Value, FetchError> {
        let url = format!("{}{path}", self.base);
        let mut delay = self.backoff;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let req = self.client.get(&url).header("Accept", "application/json");
            let req = match &self.credentials {
                Credentials::Basic {
                    user,
                    password_file,
                } => req.basic_auth(user, Some(secret(password_file)?)),
                Credentials::Bearer { token_file } => req.bearer_auth(secret(token_file)?),
            };
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.bytes().await.unwrap_or_default();
                    let json: Option<Value> = serde_json::from_slice(&body).ok();
                    if (200..300).contains(&status) {
                        return json.ok_or_else(|| FetchError::Malformed {
                            url: url.clone(),
                            message: "body is not JSON".into(),
                        });
                    }
                    let message = json
                        .as_ref()
                        .map(error_message)
                        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
                    match status {
                        401 | 403 => {
                            return Err(FetchError::Refused {
                                url: self.base.clone(),
                                status,
                                message,
                            });
                        }
                        429 | 500.. => last = format!("HTTP {status}: {message}"),
                        _ => {
                            return Err(FetchError::Malformed {
                                url,
                                message: format!("HTTP {status}: {message}"),
                            });
                        }
                    }
                }
                Err(e) if e.is_timeout() => last = format!("no answer within {:?}", self.timeout),
                Err(e) => last = e.to_string(),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(FetchError::Unavailable {
            url,
            message: format!("{last} (after {ATTEMPTS} attempts)"),
        })
    }
}
