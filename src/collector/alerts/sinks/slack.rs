//! Slack incoming webhook: a Block Kit message (a header, one section per alert with what
//! changed, and a context line with the links and the alert id), `text` as the notification
//! fallback.

use serde_json::{Value, json};

use super::{Message, SendFuture, Sink, http_client, post_json};
use crate::collector::alerts::AlertItem;

/// The Slack sink.
pub struct Slack {
    url: String,
    client: reqwest::Client,
}

impl Slack {
    /// A sink posting to the incoming webhook `url`.
    pub fn new(url: &str) -> Slack {
        Slack {
            url: url.to_string(),
            client: http_client(),
        }
    }
}

/// Text in Slack's mrkdwn, with its three control characters escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn section(it: &AlertItem) -> Value {
    let mut lines = vec![format!("*{}* {}", it.kind.as_str(), esc(&it.summary))];
    if let (Some(tree), Some(path)) = (&it.tree, &it.path) {
        lines.push(format!(
            "`{}/{}` {}",
            esc(tree),
            esc(path),
            esc(it.change.as_deref().unwrap_or(""))
        ));
    }
    if let Some(h) = &it.blake3 {
        let size = it.size.map(|s| format!(", {s} bytes")).unwrap_or_default();
        lines.push(format!("blake3 `{h}`{size}"));
    }
    if let Some(d) = &it.detail {
        lines.push(esc(d));
    }
    json!({"type": "section", "text": {"type": "mrkdwn", "text": lines.join("\n")}})
}

/// The Block Kit payload of `msg`.
pub fn payload(msg: &Message) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": msg.title().chars().take(150).collect::<String>()}
    })];
    // Slack refuses messages of more than 50 blocks (a header, two per alert, one "more"): the
    // rest is counted, not shown.
    const SHOWN: usize = 24;
    for it in msg.items.iter().take(SHOWN) {
        blocks.push(section(it));
        let mut links = vec![format!("<{}|dashboard>", it.dashboard)];
        if let Some(e) = &it.evidence {
            links.push(format!("<{e}|evidence>"));
        }
        links.push(format!("id `{}`", it.id));
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": links.join(" · ")}]}),
        );
    }
    if msg.items.len() > SHOWN {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
            "text": format!("… and {} more on the dashboard", msg.items.len() - SHOWN)}}));
    }
    json!({"text": msg.title(), "blocks": blocks})
}

impl Sink for Slack {
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            let body = serde_json::to_vec(&payload(msg)).expect("a payload serializes");
            post_json(&self.client, &self.url, body, &[]).await
        })
    }
}
