//! The `[itsm]` table of the collector config (DESIGN §12.2): the import key and one
//! `[[itsm.source]]` per ticket system, validated into typed settings with every problem named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::util::timefmt;

/// `[itsm]` as written.
#[derive(Debug, Deserialize)]
pub struct RawItsm {
    /// Secret key that signs imported entries.
    key: Option<PathBuf>,
    /// Its public key (default: `key` with `.pub` for `.key`).
    #[serde(default)]
    pubkey: Option<PathBuf>,
    /// The ticket systems.
    #[serde(default)]
    source: Vec<RawSource>,
}

/// `[[itsm.source]]` as written.
#[derive(Debug, Deserialize)]
struct RawSource {
    name: String,
    kind: String,
    url: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default = "default_poll")]
    poll: String,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    jql: Option<String>,
    #[serde(default)]
    hosts_from: Option<String>,
    #[serde(default)]
    start_from: Option<String>,
    #[serde(default)]
    end_from: Option<String>,
    #[serde(default)]
    approver_from: Option<String>,
    #[serde(default)]
    approved_at_from: Option<String>,
    #[serde(default)]
    requested_by_from: Option<String>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default)]
    paths_from: Option<String>,
    #[serde(default)]
    trees_from: Option<String>,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_page_size")]
    page_size: u32,
}

fn default_poll() -> String {
    "60s".into()
}
fn default_timeout() -> String {
    "10s".into()
}
fn default_page_size() -> u32 {
    100
}

/// Which ticket system a source speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ServiceNow Table API.
    ServiceNow,
    /// Jira REST API (search with JQL, plus a webhook receiver).
    Jira,
}

impl Kind {
    /// The prefix of an imported entry's `source` (`servicenow:CHG0030001`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceNow => "servicenow",
            Kind::Jira => "jira",
        }
    }
}

/// How the collector authenticates to the ticket system; secrets are read at each poll, so a
/// rotated password file is picked up without a restart.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// HTTP Basic with a user and a password file.
    Basic {
        user: String,
        password_file: PathBuf,
    },
    /// OAuth bearer token from a file.
    Bearer { token_file: PathBuf },
}

/// One validated ticket source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Name in status, metrics and logs.
    pub name: String,
    /// Which API.
    pub kind: Kind,
    /// Instance base URL, no trailing slash.
    pub url: String,
    /// How to log in.
    pub credentials: Credentials,
    /// Time between polls.
    pub poll: Duration,
    /// `sysparm_query` (ServiceNow) selecting the tickets.
    pub query: String,
    /// Ticket field with host names or globs.
    pub hosts_from: String,
    /// Ticket field with path globs, one per line.
    pub paths_from: String,
    /// Ticket field with tree globs (absent: every tree).
    pub trees_from: Option<String>,
    /// Longest time one request may take.
    pub timeout: Duration,
    /// Records per page.
    pub page_size: u32,
    /// Jira: the fields holding the window, the approver and the approval time.
    pub jira: Option<JiraFields>,
    /// Jira: shared secret of the webhook's HMAC-SHA256 signature (no webhook without it).
    pub secret_file: Option<PathBuf>,
}

/// Jira has no built-in change window or approval: custom fields carry them.
#[derive(Debug, Clone)]
pub struct JiraFields {
    /// Window start (date-time field).
    pub start_from: String,
    /// Window end.
    pub end_from: String,
    /// Approver (user, multi-user or text field).
    pub approver_from: String,
    /// Approval time (date-time field).
    pub approved_at_from: String,
    /// Requester (default `reporter`).
    pub requested_by_from: String,
}

/// The validated `[itsm]` table.
#[derive(Debug, Clone)]
pub struct ItsmConfig {
    /// Secret key that signs imported entries.
    pub key: PathBuf,
    /// Its public key (the one agents list in `approver_keys`).
    pub pubkey: PathBuf,
    /// Ticket systems to poll.
    pub sources: Vec<SourceConfig>,
}

impl RawItsm {
    /// Validates; each problem goes to `bad` with its key name (`itsm.source[0].poll`).
    pub fn validate(self, bad: &mut dyn FnMut(String, String)) -> Option<ItsmConfig> {
        let ok_before = std::cell::Cell::new(true);
        let mut bad = |k: String, m: String| {
            ok_before.set(false);
            bad(k, m)
        };
        let key = match self.key {
            Some(k) => k,
            None => {
                bad(
                    "itsm.key".into(),
                    "missing: the secret key that signs imported entries".into(),
                );
                PathBuf::new()
            }
        };
        let pubkey = self.pubkey.unwrap_or_else(|| key.with_extension("pub"));
        for (name, f) in [("itsm.key", &key), ("itsm.pubkey", &pubkey)] {
            if !f.as_os_str().is_empty()
                && let Err(e) = std::fs::metadata(f)
            {
                bad(name.into(), format!("{}: {e}", f.display()));
            }
        }
        let mut sources: Vec<SourceConfig> = Vec::new();
        for (i, s) in self.source.into_iter().enumerate() {
            let at = |k: &str| format!("itsm.source[{i}].{k}");
            if s.name.trim().is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                bad(
                    at("name"),
                    format!("{:?}: letters, digits, `-`, `_`", s.name),
                );
            }
            if sources.iter().any(|o| o.name == s.name) {
                bad(at("name"), format!("{:?} is used twice", s.name));
            }
            let kind = match s.kind.as_str() {
                "servicenow" => Kind::ServiceNow,
                "jira" => Kind::Jira,
                other => {
                    bad(
                        at("kind"),
                        format!("{other:?}: expected \"servicenow\" or \"jira\""),
                    );
                    Kind::ServiceNow
                }
            };
            if !(s.url.starts_with("https://") || s.url.starts_with("http://")) {
                bad(at("url"), format!("{:?}: expected an http(s) URL", s.url));
            }
            let credentials = match (s.user, s.password_file, s.token_file) {
                (Some(user), Some(password_file), None) => Credentials::Basic {
                    user,
                    password_file,
                },
                (None, None, Some(token_file)) => Credentials::Bearer { token_file },
                _ => {
                    bad(
                        at("user"),
                        "give user and password_file (basic auth) or token_file (OAuth bearer), not both".into(),
                    );
                    Credentials::Bearer {
                        token_file: PathBuf::new(),
                    }
                }
            };
            let dur = |k: &str, v: &str, bad: &mut dyn FnMut(String, String)| {
                timefmt::parse_duration(v)
                    .map_err(|m| bad(at(k), m))
                    .unwrap_or(Duration::from_secs(60))
            };
            let poll = dur("poll", &s.poll, &mut bad);
            let timeout = dur("timeout", &s.timeout, &mut bad);
            if poll.is_zero() {
                bad(at("poll"), "must be more than 0s".into());
            }
            let (query, query_key) = match kind {
                Kind::ServiceNow => (s.query.unwrap_or_default(), "query"),
                Kind::Jira => (s.jql.unwrap_or_default(), "jql"),
            };
            if query.trim().is_empty() {
                bad(
                    at(query_key),
                    "missing: the query selecting the change tickets".into(),
                );
            }
            let hosts_from = match (kind, s.hosts_from) {
                (_, Some(h)) => h,
                // The configuration item the change is for: in most CMDBs, the host itself.
                (Kind::ServiceNow, None) => "cmdb_ci".into(),
                (Kind::Jira, None) => {
                    bad(
                        at("hosts_from"),
                        "missing: the field holding host globs".into(),
                    );
                    String::new()
                }
            };
            let jira = match kind {
                Kind::ServiceNow => None,
                Kind::Jira => {
                    let mut need = |k: &str, v: Option<String>| {
                        v.filter(|v| !v.trim().is_empty()).unwrap_or_else(|| {
                            bad(at(k), "missing: the Jira field that holds it".into());
                            String::new()
                        })
                    };
                    Some(JiraFields {
                        start_from: need("start_from", s.start_from),
                        end_from: need("end_from", s.end_from),
                        approver_from: need("approver_from", s.approver_from),
                        approved_at_from: need("approved_at_from", s.approved_at_from),
                        requested_by_from: s.requested_by_from.unwrap_or_else(|| "reporter".into()),
                    })
                }
            };
            let paths_from = s.paths_from.unwrap_or_default();
            if paths_from.trim().is_empty() {
                // A ticket system has no field for path globs out of the box; without one every
                // ticket would be refused, so say so at start instead.
                bad(
                    at("paths_from"),
                    "missing: the ticket field holding path globs (e.g. u_driftwatch_paths)".into(),
                );
            }
            if s.page_size == 0 || s.page_size > 10_000 {
                bad(at("page_size"), "must be between 1 and 10000".into());
            }
            sources.push(SourceConfig {
                name: s.name,
                kind,
                url: s.url.trim_end_matches('/').to_string(),
                credentials,
                poll,
                query,
                hosts_from,
                paths_from,
                trees_from: s.trees_from,
                timeout,
                page_size: s.page_size,
                jira,
                secret_file: s.secret_file,
            });
        }
        ok_before.get().then_some(ItsmConfig {
            key,
            pubkey,
            sources,
        })
    }
}

impl ItsmConfig {
    /// The import public key, loaded (checked again at start by the poller).
    pub fn public_key(&self) -> Result<crate::sign::TrustedKey, crate::sign::SignError> {
        crate::sign::load_public_key(Path::new(&self.pubkey))
    }
}
