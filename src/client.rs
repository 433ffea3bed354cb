//! A small HTTP client for the collector API (CLI commands, the agent's uplink).

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A request to the collector failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network or TLS failure.
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// The collector answered with an error status.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
        retry_after: Option<u64>,
    },
    /// The answer was not what the API promises.
    #[error("{url}: unexpected response: {message}")]
    Decode { url: String, message: String },
    /// The token file is unreadable or empty.
    #[error("{path}: {message}")]
    Token { path: String, message: String },
}

impl ClientError {
    /// Worth retrying later (network trouble, 429, 5xx), as opposed to a request that is wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => {
                *status == 429 || *status >= 500 || *status == 408
            }
            _ => false,
        }
    }
}

/// A collector endpoint with its token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

static PROVIDER: Once = Once::new();

/// Installs the `ring` crypto provider once (reqwest is built without aws-lc, see DESIGN §9b).
pub fn install_crypto_provider() {
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Reads a token file: the first non-empty line.
pub fn read_token(path: &Path) -> Result<String, ClientError> {
    let err = |message: String| ClientError::Token {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(String::from)
        .ok_or_else(|| err("empty token file".into()))
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:8470`) using `token`.
    pub fn new(base: &str, token: String) -> Result<Client, ClientError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Transport {
                url: base.to_string(),
                message: e.to_string(),
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let resp =
            req.bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| ClientError::Transport {
                    url: url.to_string(),
                    message: error_chain(&e),
                })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(body);
        Err(ClientError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            message,
            retry_after,
        })
    }

    /// GET `path` (with its query string) as JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let resp = self.send(self.http.get(&url), &url).await?;
        resp.json().await.map_err(|e| ClientError::Decode {
            url,
            message: e.to_string(),
        })
    }

    /// GET `path` as text (CSV).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = self.url(path);
        let resp = self.send(self.http.get(&url), &url).await?;
        resp.text().await.map_err(|e| ClientError::Decode {
            url,
            message: e.to_string(),
        })
    }

    /// POST a JSON body, returning the JSON answer.
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let resp = self.send(self.http.post(&url).json(body), &url).await?;
        resp.json().await.map_err(|e| ClientError::Decode {
            url,
            message: e.to_string(),
        })
    }

    /// PUT a JSON body, returning the JSON answer.
    pub async fn put_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let resp = self.send(self.http.put(&url).json(body), &url).await?;
        resp.json().await.map_err(|e| ClientError::Decode {
            url,
            message: e.to_string(),
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg = format!("{msg}: {t}");
        }
        src = s.source();
    }
    msg
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
