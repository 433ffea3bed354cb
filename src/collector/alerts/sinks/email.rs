//! Email over SMTP (lettre): one multipart/alternative message per batch, plain text and HTML,
//! with STARTTLS when configured and AUTH from `user`/`password_file`.

use lettre::message::MultiPart;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Mail, Tokio1Executor};

use super::{ATTEMPT_TIMEOUT, Message, SendFuture, Sink};
use crate::collector::alerts::config::SinkTarget;
use crate::collector::alerts::{AlertItem, SendError};

/// The email sink.
pub struct Email {
    server: String,
    starttls: bool,
    from: String,
    to: Vec<String>,
    auth: Option<(String, String)>,
}

/// HTML-escaped text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The (label, value) lines of one alert, the ones it has.
fn rows(it: &AlertItem) -> Vec<(&'static str, String)> {
    let mut rows: Vec<(&'static str, String)> = it
        .present_fields()
        .into_iter()
        .map(|(k, v)| (if k == "observed_at" { "observed at" } else { k }, v))
        .collect();
    rows.push(("alert id", it.id.clone()));
    rows
}

/// The plain-text body.
pub fn text(msg: &Message) -> String {
    let mut s = String::new();
    for it in &msg.items {
        s.push_str(&it.summary);
        s.push('\n');
        for (k, v) in rows(it) {
            s.push_str(&format!("  {k}: {v}\n"));
        }
        s.push('\n');
    }
    s
}

/// The HTML body.
pub fn html(msg: &Message) -> String {
    let mut s = format!("<html><body><h2>{}</h2>\n", esc(&msg.title()));
    for it in &msg.items {
        s.push_str(&format!("<h3>{}</h3>\n<table>\n", esc(&it.summary)));
        for (k, v) in rows(it) {
            let v = if v.starts_with("http://") || v.starts_with("https://") {
                format!("<a href=\"{0}\">{0}</a>", esc(&v))
            } else {
                format!("<code>{}</code>", esc(&v))
            };
            s.push_str(&format!(
                "<tr><th align=\"left\">{}</th><td>{v}</td></tr>\n",
                esc(k)
            ));
        }
        s.push_str("</table>\n");
    }
    s.push_str("</body></html>\n");
    s
}

impl Email {
    /// The sink of an `email` target (any other target is a programming error).
    pub fn new(target: &SinkTarget) -> Email {
        let SinkTarget::Email {
            server,
            starttls,
            from,
            to,
            auth,
        } = target
        else {
            unreachable!("Email::new takes an email target")
        };
        Email {
            server: server.clone(),
            starttls: *starttls,
            from: from.clone(),
            to: to.clone(),
            auth: auth.clone(),
        }
    }

    fn mail(&self, msg: &Message) -> Result<Mail, SendError> {
        let refused =
            |what: &str, e: &dyn std::fmt::Display| SendError::Refused(format!("{what}: {e}"));
        let mut b = Mail::builder()
            .from(self.from.parse().map_err(|e| refused("from", &e))?)
            .subject(msg.title());
        for t in &self.to {
            b = b.to(t.parse().map_err(|e| refused("to", &e))?);
        }
        b.multipart(MultiPart::alternative_plain_html(text(msg), html(msg)))
            .map_err(|e| refused("building the message", &e))
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, SendError> {
        let (host, port) = self
            .server
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or_else(|| SendError::Refused(format!("{}: expected host:port", self.server)))?;
        let mut t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(ATTEMPT_TIMEOUT));
        if self.starttls {
            let params = TlsParameters::new(host.to_string())
                .map_err(|e| SendError::Refused(format!("{}: TLS: {e}", self.server)))?;
            t = t.tls(Tls::Required(params));
        }
        if let Some((u, p)) = &self.auth {
            t = t.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(t.build())
    }

    /// Connects and says hello (the start-up check that the SMTP host is reachable).
    pub async fn probe(&self) -> Result<(), SendError> {
        let t = self.transport()?;
        match t.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SendError::Retry(format!("{}: no answer", self.server))),
            Err(e) => Err(SendError::Retry(format!("{}: {e}", self.server))),
        }
    }
}

impl Sink for Email {
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            let mail = self.mail(msg)?;
            let t = self.transport()?;
            t.send(mail).await.map(|_| ()).map_err(|e| {
                // A permanent SMTP reply (5xx: unknown recipient, relaying denied) will not
                // change on retry; a transient one (4xx) or a broken connection may.
                let m = format!("{}: {}", self.server, super::error_chain(&e));
                if e.is_permanent() {
                    SendError::Refused(m)
                } else {
                    SendError::Retry(m)
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::alerts::AlertKind;

    #[test]
    fn both_bodies_carry_every_field_and_html_is_escaped() {
        let mut it = AlertItem::new(
            AlertKind::Unauthorized,
            "web-01",
            "production",
            "unauthorized change on web-01: added shop/<x>.php".into(),
            jiff::Timestamp::now(),
        );
        it.path = Some("<x>.php".into());
        it.blake3 = Some("ab".into());
        it.dashboard = "http://c/".into();
        let msg = Message {
            sink: "m".into(),
            host: "web-01".into(),
            items: vec![it],
        };
        let t = text(&msg);
        assert!(
            t.contains("  path: <x>.php\n") && t.contains("  blake3: ab\n"),
            "{t}"
        );
        let h = html(&msg);
        assert!(
            h.contains("<code>&lt;x&gt;.php</code>") && h.contains("<a href=\"http://c/\">"),
            "{h}"
        );
        assert!(!h.contains("<x>"), "{h}");
    }
}
