//! Generic JSON webhook: `{"source", "sink", "host", "alerts": [AlertItem, …]}`, signed with
//! `X-Driftwatch-Signature: sha256=<hex HMAC-SHA256 of the body>` when a secret is set, so a
//! receiver can check that the alert came from this collector and was not altered.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::{Message, SendFuture, Sink, http_client, post_json};
use crate::collector::alerts::AlertItem;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Driftwatch-Signature";

/// The webhook sink.
pub struct Webhook {
    url: String,
    secret: Option<Vec<u8>>,
    client: reqwest::Client,
}

/// The body a webhook receives.
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    /// Always `driftwatch`.
    pub source: &'static str,
    /// The `[[alert]]` name.
    pub sink: &'a str,
    /// The host the alerts are about (empty for store-wide alerts).
    pub host: &'a str,
    /// The alerts, oldest first.
    pub alerts: &'a [AlertItem],
}

/// The body of `msg`, as sent.
pub fn body(msg: &Message) -> Vec<u8> {
    serde_json::to_vec(&Body {
        source: "driftwatch",
        sink: &msg.sink,
        host: &msg.host,
        alerts: &msg.items,
    })
    .expect("an alert body serializes")
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhook {
    /// A webhook posting to `url`, signing with `secret`.
    pub fn new(url: &str, secret: Option<Vec<u8>>) -> Webhook {
        Webhook {
            url: url.to_string(),
            secret,
            client: http_client(),
        }
    }
}

impl Sink for Webhook {
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            let body = body(msg);
            let mut headers = Vec::new();
            if let Some(s) = &self.secret {
                headers.push((SIGNATURE_HEADER, signature(s, &body)));
            }
            post_json(&self.client, &self.url, body, &headers).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_rfc_4231_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
