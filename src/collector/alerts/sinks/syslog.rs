//! Syslog to a SIEM: RFC 5424 lines (structured data `[driftwatch@32473 …]` with every field),
//! or ArcSight CEF in the message part, over UDP (a datagram per line) or TCP (octet-counted
//! frames, RFC 6587 §3.4.1, so a message may hold any character).

use std::fmt::Write as _;

use tokio::io::AsyncWriteExt;

use super::{Message, SendFuture, Sink};
use crate::collector::alerts::config::{SyslogFormat, SyslogProto};
use crate::collector::alerts::{AlertItem, AlertKind, SendError};

/// The SD-ID of driftwatch's structured data (an enterprise-number style private id).
pub const SD_ID: &str = "driftwatch@32473";

/// Facility `local0`.
const FACILITY: u8 = 16;

/// The syslog sink.
pub struct Syslog {
    proto: SyslogProto,
    address: String,
    format: SyslogFormat,
    hostname: String,
}

/// Syslog severity of an alert kind (RFC 5424 §6.2.1).
fn severity(kind: AlertKind) -> u8 {
    match kind {
        AlertKind::Audit => 2,        // critical: the history itself was altered
        AlertKind::Unauthorized => 3, // error
        AlertKind::Test => 6,         // informational
        _ => 4,                       // warning
    }
}

/// A PARAM-VALUE escaped per RFC 5424 §6.3.3.
fn sd_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

/// A CEF header field (`|` and `\` escaped).
fn cef_header(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\r', '\n'], " ")
}

/// A CEF extension value (`=` and `\` escaped, newlines as `\n`).
fn cef_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// The item's fields as (name, value), the ones it has.
fn fields(it: &AlertItem) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("id", it.id.clone()),
        ("kind", it.kind.as_str().to_string()),
    ];
    f.extend(it.present_fields());
    f
}

/// The CEF text of one alert (`cs1`… carry what CEF has no key for).
pub fn cef(it: &AlertItem) -> String {
    let sev = match it.kind {
        AlertKind::Audit => 10,
        AlertKind::Unauthorized => 8,
        AlertKind::Test => 1,
        _ => 5,
    };
    let mut ext = Vec::new();
    let mut push = |k: &str, v: &str| ext.push(format!("{k}={}", cef_value(v)));
    if !it.host.is_empty() {
        push("dhost", &it.host);
    }
    if let Some(p) = &it.path {
        push("filePath", p);
    }
    if let Some(h) = &it.blake3 {
        push("fileHash", h);
    }
    if let Some(s) = it.size {
        push("fsize", &s.to_string());
    }
    if let Some(c) = &it.change {
        push("act", c);
    }
    push("rt", &it.raised_at);
    let custom = [
        ("alertId", Some(it.id.clone())),
        ("status", it.status.clone()),
        ("tree", it.tree.clone()),
        (
            "environment",
            Some(it.environment.clone()).filter(|e| !e.is_empty()),
        ),
        ("evidence", it.evidence.clone()),
        ("detail", it.detail.clone()),
    ];
    let mut n = 0;
    for (label, v) in custom {
        if let Some(v) = v {
            n += 1;
            push(&format!("cs{n}Label"), label);
            push(&format!("cs{n}"), &v);
        }
    }
    format!(
        "CEF:0|driftwatch|driftwatch|{}|{}|{}|{sev}|{}",
        env!("CARGO_PKG_VERSION"),
        it.kind.as_str(),
        cef_header(&it.summary),
        ext.join(" ")
    )
}

/// The RFC 5424 line of one alert, sent by `hostname` (no trailing newline).
pub fn line(it: &AlertItem, format: SyslogFormat, hostname: &str) -> String {
    let pri = FACILITY * 8 + severity(it.kind);
    let host = if hostname.is_empty() { "-" } else { hostname };
    let mut s = format!(
        "<{pri}>1 {} {host} driftwatch {} {} ",
        it.raised_at,
        std::process::id(),
        it.kind.as_str()
    );
    match format {
        SyslogFormat::Rfc5424 => {
            s.push('[');
            s.push_str(SD_ID);
            for (k, v) in fields(it) {
                let _ = write!(s, " {k}=\"{}\"", sd_escape(&v));
            }
            s.push_str("] ");
            s.push_str(&it.summary.replace(['\r', '\n'], " "));
        }
        SyslogFormat::Cef => {
            s.push_str("- ");
            s.push_str(&cef(it));
        }
    }
    s
}

impl Syslog {
    /// A sink sending to `address` (`host:port`).
    pub fn new(proto: SyslogProto, address: &str, format: SyslogFormat) -> Syslog {
        Syslog {
            proto,
            address: address.to_string(),
            format,
            hostname: crate::util::host::hostname(),
        }
    }

    async fn deliver(&self, lines: Vec<String>) -> std::io::Result<()> {
        match self.proto {
            SyslogProto::Udp => {
                let sock = tokio::net::UdpSocket::bind(if self.address.starts_with('[') {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                })
                .await?;
                sock.connect(&self.address).await?;
                for l in lines {
                    sock.send(l.as_bytes()).await?;
                }
                Ok(())
            }
            SyslogProto::Tcp => {
                let mut s = tokio::net::TcpStream::connect(&self.address).await?;
                let mut buf = Vec::new();
                for l in lines {
                    buf.extend_from_slice(format!("{} {l}", l.len()).as_bytes());
                }
                s.write_all(&buf).await?;
                s.shutdown().await
            }
        }
    }
}

impl Sink for Syslog {
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            let lines = msg
                .items
                .iter()
                .map(|it| line(it, self.format, &self.hostname))
                .collect();
            // Syslog has no answer to refuse with: every failure is the receiver being away.
            self.deliver(lines)
                .await
                .map_err(|e| SendError::Retry(format!("{}: {e}", self.address)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> AlertItem {
        let mut it = AlertItem::new(
            AlertKind::Unauthorized,
            "web-01",
            "production",
            "unauthorized change on web-01: added shop/a\"b].php".into(),
            "2026-01-01T00:00:00Z".parse().unwrap(),
        );
        it.id = "abc".into();
        it.path = Some("a\"b].php".into());
        it.blake3 = Some("00ff".into());
        it.size = Some(3);
        it
    }

    #[test]
    fn rfc5424_lines_escape_their_structured_data() {
        let l = line(&item(), SyslogFormat::Rfc5424, "collector-1");
        let head = format!(
            "<131>1 2026-01-01T00:00:00Z collector-1 driftwatch {} unauthorized [driftwatch@32473 id=\"abc\" kind=\"unauthorized\" host=\"web-01\"",
            std::process::id()
        );
        assert!(l.starts_with(&head), "{l}");
        assert!(l.contains(r#"path="a\"b\].php""#), "{l}");
        assert!(l.contains(r#"blake3="00ff" size="3""#), "{l}");
    }

    #[test]
    fn cef_escapes_and_numbers_its_custom_strings() {
        let c = cef(&item());
        assert!(c.starts_with("CEF:0|driftwatch|driftwatch|"), "{c}");
        assert!(c.contains("|unauthorized|unauthorized change on web-01: added shop/a\"b].php|8|dhost=web-01 filePath=a\"b].php fileHash=00ff fsize=3"), "{c}");
        assert!(
            c.contains("cs1Label=alertId cs1=abc cs2Label=environment cs2=production"),
            "{c}"
        );
    }
}
