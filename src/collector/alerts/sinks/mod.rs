//! The sinks an `[[alert]]` delivers through, one file each behind [`Sink`].
//!
//! A sink gets one [`Message`] (the alerts of one host due together) and either delivers it or
//! says whether trying again can help ([`SendError`]); retrying, backoff and bookkeeping are the
//! delivery loop's (`outbox`), so every sink is just "render and send".

pub mod email;
pub mod slack;
pub mod syslog;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::config::{AlertConfig, SinkTarget};
use super::{AlertItem, SendError};

/// How long one delivery attempt may take before it counts as the receiver being down.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The alerts one sink sends as one message: one host's, due together (oldest first).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The `[[alert]]` name.
    pub sink: String,
    /// The host they are about (may be empty).
    pub host: String,
    /// The alerts.
    pub items: Vec<AlertItem>,
}

impl Message {
    /// A heading for the whole message.
    pub fn title(&self) -> String {
        let first = &self.items[0];
        if self.items.len() == 1 {
            format!("driftwatch: {}", first.summary)
        } else {
            // The kinds in the heading: a notification shows little more than this line.
            let mut kinds: Vec<&str> = self.items.iter().map(|i| i.kind.as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            let on = if self.host.is_empty() {
                String::new()
            } else {
                format!(" on {}", self.host)
            };
            format!(
                "driftwatch: {} alerts{on} ({})",
                self.items.len(),
                kinds.join(", ")
            )
        }
    }
}

/// A future a sink returns.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

/// One way of delivering alerts.
pub trait Sink: Send + Sync {
    /// Delivers `msg`, or says why not.
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a>;
}

/// The sink an `[[alert]]` table configures.
pub fn build(cfg: &AlertConfig) -> Box<dyn Sink> {
    match &cfg.target {
        SinkTarget::Webhook { url, secret } => Box::new(webhook::Webhook::new(url, secret.clone())),
        SinkTarget::Slack { url } => Box::new(slack::Slack::new(url)),
        SinkTarget::Syslog {
            proto,
            address,
            format,
        } => Box::new(syslog::Syslog::new(*proto, address, *format)),
        SinkTarget::Email { .. } => Box::new(email::Email::new(&cfg.target)),
    }
}

/// What `config check` finds unreachable among `alerts` (in config order): an SMTP server that
/// does not answer now would drop mail later, and that is better known before the first alert.
/// Webhooks and syslog receivers are not probed: a probe would itself be a delivery.
pub fn check_reachable(alerts: &[AlertConfig]) -> Vec<String> {
    let emails: Vec<(usize, email::Email)> = alerts
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a.target, SinkTarget::Email { .. }))
        .map(|(i, a)| (i, email::Email::new(&a.target)))
        .collect();
    if emails.is_empty() {
        return Vec::new();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![format!("alert: cannot start the async runtime: {e}")],
    };
    rt.block_on(async {
        let mut problems = Vec::new();
        for (i, e) in &emails {
            if let Err(m) = e.probe().await {
                problems.push(format!("alert[{i}].smtp: unreachable: {m}"));
            }
        }
        problems
    })
}

/// The HTTP client the webhook and Slack sinks share.
pub fn http_client() -> reqwest::Client {
    crate::client::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .user_agent(concat!("driftwatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("an HTTP client with default settings builds")
}

/// POSTs a JSON body; classifies the answer: 2xx delivered, 429 and 5xx retried, any other
/// status refused (a receiver that rejects the request will reject it again).
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> Result<(), SendError> {
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| SendError::Retry(format!("{url}: {}", error_chain(&e))))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let text: String = text.chars().take(200).collect();
    let m = format!("{url}: HTTP {status}: {}", text.trim());
    if status.as_u16() == 429 || status.is_server_error() {
        Err(SendError::Retry(m))
    } else {
        Err(SendError::Refused(m))
    }
}

/// An error with its sources (reqwest's own message alone says little: "error sending request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
