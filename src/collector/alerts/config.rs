//! `[[alert]]` tables (DESIGN §12.3), shared by the collector config and the agent config of an
//! embedded collector: parsed into typed sink settings, every problem named by its key.
//!
//! Each option belongs to some sink kinds only; one set for another kind (an `address` on a
//! webhook) is an error rather than silently ignored, since it is almost always a typo for
//! another sink.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::AlertKind;
use crate::util::timefmt;

/// One `[[alert]]` table as written (every option of every kind; `validate` checks which apply).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RawAlert {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    on: Option<Vec<String>>,
    #[serde(default)]
    environments: Vec<String>,
    #[serde(default)]
    batch: Option<String>,
    #[serde(default)]
    retry_for: Option<String>,
    #[serde(default)]
    dashboard_url: Option<String>,
    // webhook, slack
    #[serde(default)]
    url: Option<String>,
    // webhook
    #[serde(default)]
    secret_file: Option<PathBuf>,
    // syslog
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    format: Option<String>,
    // email
    #[serde(default)]
    smtp: Option<String>,
    #[serde(default)]
    starttls: Option<bool>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<Vec<String>>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
}

/// Syslog transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogProto {
    /// One datagram per line.
    Udp,
    /// Octet-counted frames (RFC 6587) on one connection.
    Tcp,
}

/// Syslog line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogFormat {
    /// RFC 5424 with structured data.
    Rfc5424,
    /// ArcSight CEF in the RFC 5424 message part.
    Cef,
}

/// Where and how one sink delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// Generic JSON, HMAC-signed when a secret is set.
    Webhook {
        /// Receiver URL.
        url: String,
        /// HMAC-SHA256 key (the contents of `secret_file`, trailing newline dropped).
        secret: Option<Vec<u8>>,
    },
    /// Slack incoming webhook (Block Kit).
    Slack {
        /// Incoming-webhook URL.
        url: String,
    },
    /// Syslog to a SIEM.
    Syslog {
        /// Transport.
        proto: SyslogProto,
        /// `host:port`.
        address: String,
        /// Line format.
        format: SyslogFormat,
    },
    /// Mail over SMTP.
    Email {
        /// `host:port` of the SMTP server.
        server: String,
        /// Upgrade the connection with STARTTLS before sending.
        starttls: bool,
        /// Envelope and header sender.
        from: String,
        /// Recipients.
        to: Vec<String>,
        /// SMTP AUTH user and password.
        auth: Option<(String, String)>,
    },
}

impl SinkTarget {
    /// The kind name as configured.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkTarget::Webhook { .. } => "webhook",
            SinkTarget::Slack { .. } => "slack",
            SinkTarget::Syslog { .. } => "syslog",
            SinkTarget::Email { .. } => "email",
        }
    }
}

/// One validated `[[alert]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertConfig {
    /// Unique name (`alerts test NAME`, the `sink` label in `/metrics`).
    pub name: String,
    /// Kinds of alert it receives.
    pub on: Vec<AlertKind>,
    /// Environments it receives alerts of (empty: all).
    pub environments: Vec<String>,
    /// Alerts of one host within this window go out as one message.
    pub batch: Duration,
    /// How long delivery is retried before the alert is marked failed.
    pub retry_for: Duration,
    /// Base URL of the dashboard, for links (default: the collector's listen address).
    pub dashboard_url: Option<String>,
    /// Where it delivers.
    pub target: SinkTarget,
}

/// Retry horizon when `retry_for` is not set: a receiver down for a day still gets every alert.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(24 * 3600);

const KINDS: &str = "webhook, slack, email, syslog";

/// `0` or a duration like `5s`.
fn duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    timefmt::parse_duration(s)
}

/// An `http://` or `https://` URL with a host.
pub fn check_url(s: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(s).map_err(|e| format!("{s:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("{s:?}: expected an http:// or https:// URL"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?}: no host"));
    }
    Ok(())
}

/// `scheme://host:port` split into scheme and `host:port` (the port is required).
fn endpoint<'a>(s: &'a str, schemes: &[&'a str]) -> Result<(&'a str, &'a str), String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?}: expected {}://host:port", schemes.join("|")))?;
    if !schemes.contains(&scheme) {
        return Err(format!(
            "{s:?}: unknown scheme {scheme:?} (expected {})",
            schemes.join(", ")
        ));
    }
    let rest = rest.trim_end_matches('/');
    let ok = rest
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        return Err(format!("{s:?}: expected {scheme}://host:port"));
    }
    Ok((scheme, rest))
}

fn read_secret(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Validates the `[[alert]]` tables; `problem(key, message)` gets each problem with its key
/// (`alert[0].url`).
pub fn validate(raw: &[RawAlert], problem: &mut dyn FnMut(String, String)) -> Vec<AlertConfig> {
    let mut out = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, a) in raw.iter().enumerate() {
        let key = |k: &str| format!("alert[{i}].{k}");
        let mut bad = false;
        let mut fail = |k: &str, m: String, bad: &mut bool| {
            problem(key(k), m);
            *bad = true;
        };
        let name = match a.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => {
                fail("name", "required".into(), &mut bad);
                String::new()
            }
        };
        if !name.is_empty() && !names.insert(name.clone()) {
            fail("name", format!("{name:?} is used twice"), &mut bad);
        }
        let kind = a.kind.as_deref().unwrap_or("");
        // (option, whether set, the kinds it belongs to)
        let options: [(&str, bool, &[&str]); 10] = [
            ("url", a.url.is_some(), &["webhook", "slack"]),
            ("secret_file", a.secret_file.is_some(), &["webhook"]),
            ("address", a.address.is_some(), &["syslog"]),
            ("format", a.format.is_some(), &["syslog"]),
            ("smtp", a.smtp.is_some(), &["email"]),
            ("starttls", a.starttls.is_some(), &["email"]),
            ("from", a.from.is_some(), &["email"]),
            ("to", a.to.is_some(), &["email"]),
            ("user", a.user.is_some(), &["email"]),
            ("password_file", a.password_file.is_some(), &["email"]),
        ];
        if !KINDS.split(", ").any(|k| k == kind) {
            let m = match &a.kind {
                None => format!("required ({KINDS})"),
                Some(k) => format!("unknown sink kind {k:?} (expected {KINDS})"),
            };
            fail("kind", m, &mut bad);
        } else {
            for (opt, set, kinds) in options {
                if set && !kinds.contains(&kind) {
                    fail(
                        opt,
                        format!("not an option of a {kind} sink (only {})", kinds.join(", ")),
                        &mut bad,
                    );
                }
            }
        }
        let on = match &a.on {
            None => AlertKind::ALL.to_vec(),
            Some(list) => {
                let mut on = Vec::new();
                for k in list {
                    match k.parse::<AlertKind>() {
                        Ok(k) => on.push(k),
                        Err(m) => fail("on", m, &mut bad),
                    }
                }
                on
            }
        };
        let batch = match a
            .batch
            .as_deref()
            .map(duration)
            .unwrap_or(Ok(Duration::ZERO))
        {
            Ok(d) => d,
            Err(m) => {
                fail("batch", m, &mut bad);
                Duration::ZERO
            }
        };
        let retry_for = match a
            .retry_for
            .as_deref()
            .map(duration)
            .unwrap_or(Ok(DEFAULT_RETRY_FOR))
        {
            Ok(d) => d,
            Err(m) => {
                fail("retry_for", m, &mut bad);
                DEFAULT_RETRY_FOR
            }
        };
        if let Some(u) = &a.dashboard_url
            && let Err(m) = check_url(u)
        {
            fail("dashboard_url", m, &mut bad);
        }
        let mut url = |bad: &mut bool| match a.url.as_deref() {
            None => {
                fail("url", "required".into(), bad);
                String::new()
            }
            Some(u) => {
                if let Err(m) = check_url(u) {
                    fail("url", m, bad);
                }
                u.to_string()
            }
        };
        let target = match kind {
            "webhook" => {
                let url = url(&mut bad);
                let secret = match &a.secret_file {
                    None => None,
                    Some(p) => match read_secret(p) {
                        Ok(s) if !s.is_empty() => Some(s.into_bytes()),
                        Ok(_) => {
                            fail("secret_file", format!("{}: empty", p.display()), &mut bad);
                            None
                        }
                        Err(m) => {
                            fail("secret_file", m, &mut bad);
                            None
                        }
                    },
                };
                Some(SinkTarget::Webhook { url, secret })
            }
            "slack" => Some(SinkTarget::Slack { url: url(&mut bad) }),
            "syslog" => {
                let (proto, address) = match a.address.as_deref() {
                    None => {
                        fail(
                            "address",
                            "required (udp://host:port or tcp://host:port)".into(),
                            &mut bad,
                        );
                        (SyslogProto::Udp, String::new())
                    }
                    Some(s) => match endpoint(s, &["udp", "tcp"]) {
                        Ok((scheme, addr)) => (
                            if scheme == "tcp" {
                                SyslogProto::Tcp
                            } else {
                                SyslogProto::Udp
                            },
                            addr.to_string(),
                        ),
                        Err(m) => {
                            fail("address", m, &mut bad);
                            (SyslogProto::Udp, String::new())
                        }
                    },
                };
                let format = match a.format.as_deref().unwrap_or("rfc5424") {
                    "rfc5424" => SyslogFormat::Rfc5424,
                    "cef" => SyslogFormat::Cef,
                    other => {
                        fail(
                            "format",
                            format!("unknown format {other:?} (expected rfc5424, cef)"),
                            &mut bad,
                        );
                        SyslogFormat::Rfc5424
                    }
                };
                Some(SinkTarget::Syslog {
                    proto,
                    address,
                    format,
                })
            }
            "email" => {
                let server = match a.smtp.as_deref() {
                    None => {
                        fail("smtp", "required (smtp://host:port)".into(), &mut bad);
                        String::new()
                    }
                    Some(s) => match endpoint(s, &["smtp"]) {
                        Ok((_, addr)) => addr.to_string(),
                        Err(m) => {
                            fail("smtp", m, &mut bad);
                            String::new()
                        }
                    },
                };
                let from = a.from.clone().unwrap_or_default();
                if !from.contains('@') {
                    fail(
                        "from",
                        format!("{from:?}: expected an address like driftwatch@example.org"),
                        &mut bad,
                    );
                }
                let to = a.to.clone().unwrap_or_default();
                if to.is_empty() {
                    fail("to", "required (at least one address)".into(), &mut bad);
                }
                for t in &to {
                    if !t.contains('@') {
                        fail("to", format!("{t:?}: expected an address"), &mut bad);
                    }
                }
                let auth = match (&a.user, &a.password_file) {
                    (None, None) => None,
                    (Some(u), Some(p)) => match read_secret(p) {
                        Ok(pw) => Some((u.clone(), pw)),
                        Err(m) => {
                            fail("password_file", m, &mut bad);
                            None
                        }
                    },
                    (Some(_), None) => {
                        fail("password_file", "required with user".into(), &mut bad);
                        None
                    }
                    (None, Some(_)) => {
                        fail("user", "required with password_file".into(), &mut bad);
                        None
                    }
                };
                Some(SinkTarget::Email {
                    server,
                    starttls: a.starttls.unwrap_or(false),
                    from,
                    to,
                    auth,
                })
            }
            _ => None,
        };
        if let (false, Some(target)) = (bad, target) {
            out.push(AlertConfig {
                name,
                on,
                environments: a.environments.clone(),
                batch,
                retry_for,
                dashboard_url: a.dashboard_url.clone(),
                target,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<AlertConfig>, Vec<String>) {
        #[derive(Deserialize)]
        struct Top {
            #[serde(default)]
            alert: Vec<RawAlert>,
        }
        let table: toml::Table = text.parse().unwrap();
        let mut problems = Vec::new();
        let top: Top = crate::util::confkeys::deserialize(table, &mut problems).unwrap();
        let cfgs = validate(&top.alert, &mut |k, m| problems.push(format!("{k}: {m}")));
        (cfgs, problems)
    }

    #[test]
    fn a_webhook_with_defaults() {
        let (c, p) = parse(
            "[[alert]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\nbatch = \"5s\"\n",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c[0].on, AlertKind::ALL);
        assert_eq!(c[0].batch, Duration::from_secs(5));
        assert_eq!(c[0].retry_for, DEFAULT_RETRY_FOR);
        assert!(c[0].environments.is_empty());
    }

    #[test]
    fn every_problem_names_its_key() {
        let (c, p) = parse(concat!(
            "[[alert]]\nname = \"a\"\nkind = \"pager\"\n",
            "[[alert]]\nname = \"b\"\nkind = \"webhook\"\nurl = \"not a url\"\naddress = \"udp://x:514\"\non = [\"unauthorised\"]\n",
            "[[alert]]\nname = \"c\"\nkind = \"syslog\"\naddress = \"ftp://x:1\"\nformat = \"json\"\nbatch = \"soon\"\n",
            "[[alert]]\nname = \"d\"\nkind = \"email\"\nsmtp = \"smtp://mail\"\nfrom = \"x\"\n",
            "[[alert]]\nname = \"a\"\nkind = \"slack\"\nurl = \"http://h/\"\nchannel = \"#x\"\n",
        ));
        assert!(c.is_empty(), "{c:?}");
        for want in [
            "alert[0].kind: unknown sink kind \"pager\"",
            "alert[1].url: \"not a url\"",
            "alert[1].address: not an option of a webhook sink",
            "alert[1].on: unknown alert kind \"unauthorised\"",
            "alert[2].address: \"ftp://x:1\": unknown scheme",
            "alert[2].format: unknown format \"json\"",
            "alert[2].batch",
            "alert[3].smtp: \"smtp://mail\": expected smtp://host:port",
            "alert[3].from",
            "alert[3].to: required",
            "alert[4].name: \"a\" is used twice",
            "alert[4].channel: unknown key",
        ] {
            assert!(
                p.iter().any(|e| e.starts_with(want)),
                "{want} missing from {p:#?}"
            );
        }
    }

    #[test]
    fn syslog_and_email_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let pw = tmp.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let (c, p) = parse(&format!(
            "[[alert]]\nname = \"siem\"\nkind = \"syslog\"\naddress = \"tcp://127.0.0.1:6514\"\nformat = \"cef\"\non = [\"audit\"]\n\
             [[alert]]\nname = \"mail\"\nkind = \"email\"\nsmtp = \"smtp://127.0.0.1:2525\"\nstarttls = true\nfrom = \"dw@x.org\"\nto = [\"ops@x.org\"]\nuser = \"dw\"\npassword_file = {:?}\n",
            pw.display().to_string()
        ));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            c[0].target,
            SinkTarget::Syslog {
                proto: SyslogProto::Tcp,
                address: "127.0.0.1:6514".into(),
                format: SyslogFormat::Cef
            }
        );
        assert_eq!(c[0].on, [AlertKind::Audit]);
        let SinkTarget::Email {
            server,
            starttls,
            auth,
            ..
        } = &c[1].target
        else {
            panic!()
        };
        assert_eq!((server.as_str(), *starttls), ("127.0.0.1:2525", true));
        assert_eq!(
            auth.as_ref().unwrap(),
            &("dw".to_string(), "s3cret".to_string())
        );
    }
}
