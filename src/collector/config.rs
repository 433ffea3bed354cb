//! The collector's TOML config (DESIGN §5), validated once at load into typed settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::sign::TrustedKey;
use crate::util::timefmt;

/// How often the background chain check runs when `audit.verify_every` is not set.
pub const DEFAULT_AUDIT_EVERY: &str = "1h";

/// Default config path.
pub const DEFAULT_PATH: &str = "/etc/driftwatch/collector.toml";

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default = "default_storage")]
    storage: String,
    #[serde(default = "default_max_body")]
    max_body: String,
    #[serde(default = "default_silent_after")]
    silent_after: String,
    #[serde(default)]
    kpi: RawKpi,
    #[serde(default)]
    trust: crate::sign::TrustTable,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    alert: Vec<crate::collector::alerts::config::RawAlert>,
    itsm: Option<crate::collector::itsm::config::RawItsm>,
}

#[derive(Debug, Deserialize)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
struct RawKpi {
    #[serde(default = "default_target")]
    target: f64,
    #[serde(default = "default_timezone")]
    timezone: String,
    #[serde(default = "default_report_at")]
    report_at: String,
}

impl Default for RawKpi {
    fn default() -> Self {
        RawKpi {
            target: default_target(),
            timezone: default_timezone(),
            report_at: default_report_at(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawLimits {
    #[serde(default = "default_rpm")]
    requests_per_minute: u32,
    #[serde(default = "default_request_timeout")]
    request_timeout: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            requests_per_minute: default_rpm(),
            request_timeout: default_request_timeout(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawAudit {
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    pubkey: Option<PathBuf>,
    #[serde(default)]
    verify_every: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8470".into()
}
fn default_storage() -> String {
    "sqlite:///var/lib/driftwatch-collector/collector.db".into()
}
fn default_max_body() -> String {
    "8MiB".into()
}
fn default_silent_after() -> String {
    "2h".into()
}
fn default_target() -> f64 {
    0.97
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_report_at() -> String {
    "07:00".into()
}
fn default_rpm() -> u32 {
    1200
}
fn default_request_timeout() -> String {
    "30s".into()
}

/// TLS certificate and key files.
#[derive(Debug, Clone)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Validated collector settings.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Where the config came from (for messages).
    pub origin: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// TLS, when configured.
    pub tls: Option<Tls>,
    /// Storage URL.
    pub storage: String,
    /// Largest accepted request body.
    pub max_body: usize,
    /// A host not heard from for this long is silent.
    pub silent_after: Duration,
    /// KPI target (0–1).
    pub target: f64,
    /// Timezone of KPI days.
    pub timezone: jiff::tz::TimeZone,
    /// Its name, for display.
    pub timezone_name: String,
    /// Keys release manifests must verify against.
    pub release_keys: Vec<TrustedKey>,
    /// Keys change entries must verify against.
    pub approver_keys: Vec<TrustedKey>,
    /// Refuse unsigned manifests and change entries.
    pub require_signatures: bool,
    /// Accept entries approved by their own requester.
    pub allow_self_approval: bool,
    /// Per-token request budget per minute.
    pub requests_per_minute: u32,
    /// Longest time a request may take.
    pub request_timeout: Duration,
    /// Secret key that signs audit checkpoints.
    pub audit_key: Option<PathBuf>,
    /// Public key that verifies audit checkpoints.
    pub audit_pubkey: Option<PathBuf>,
    /// Evidence store to serve (embedded mode: the agent's `STATE_DIR/evidence`).
    pub evidence_dir: Option<PathBuf>,
    /// `[[alert]]` sinks (DESIGN §12.3).
    pub alerts: Vec<crate::collector::alerts::AlertConfig>,
    /// How often the background chain check runs (it raises `audit` alerts).
    pub audit_every: Duration,
    /// When (in the KPI timezone) yesterday's KPI is checked against the target (`kpi_missed`).
    pub report_at: jiff::civil::Time,
    /// Ticket systems to import change entries from (DESIGN §12.2), when configured.
    pub itsm: Option<crate::collector::itsm::config::ItsmConfig>,
    /// Why manifest and change-entry uploads are refused, when they are: the config has no
    /// `[trust]` table, so nothing uploaded could be checked. Ingestion, KPI and reads work.
    pub uploads_refused: Option<String>,
}

/// Parses a time of day, `HH:MM` or `HH:MM:SS`.
pub fn parse_time_of_day(s: &str) -> Result<jiff::civil::Time, String> {
    let ok = s.len() >= 5 && s.as_bytes()[2] == b':';
    ok.then(|| s.parse::<jiff::civil::Time>().ok())
        .flatten()
        .ok_or_else(|| format!("{s:?} is not a time of day like 07:00"))
}

/// Parses `8MiB`, `512KiB`, `1GiB`, `100000` (bytes).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 8MiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return Err(format!("{s:?} has no valid unit (B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl CollectorConfig {
    /// Reads and validates a config file, listing every problem found.
    pub fn load(path: &Path) -> Result<CollectorConfig, Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        Self::parse(&text, path)
    }

    /// Validates config text; `origin` names the file in errors.
    /// The settings of a store opened without a config (`--db`): every default, this storage.
    pub fn defaults_for(storage: &str) -> CollectorConfig {
        let mut cfg = CollectorConfig::parse("", Path::new(storage))
            .expect("an empty collector config is valid");
        cfg.storage = storage.to_string();
        cfg
    }

    pub fn parse(text: &str, origin: &Path) -> Result<CollectorConfig, Vec<String>> {
        let p = origin.display();
        let table: toml::Table = text.parse().map_err(|e| {
            vec![format!(
                "{p}: {}",
                crate::judge::changelog::toml_error(&e, text)
            )]
        })?;
        // The minimal config (§5) has no [trust]: the collector still ingests and serves the
        // KPI, and refuses uploads it could not check until keys are set.
        let has_trust = table.contains_key("trust");
        let mut unknown = Vec::new();
        let raw = crate::util::confkeys::deserialize::<RawConfig>(table, &mut unknown);
        let mut problems: Vec<String> = unknown.into_iter().map(|m| format!("{p}: {m}")).collect();
        let raw: RawConfig = match raw {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{p}: {}", e.message().trim().replace('\n', " ")));
                return Err(problems);
            }
        };
        let mut field = |name: &str, r: Result<(), String>| {
            if let Err(m) = r {
                problems.push(format!("{p}: {name}: {m}"));
            }
        };
        let listen = raw.listen.parse::<SocketAddr>();
        field(
            "listen",
            listen
                .as_ref()
                .map(|_| ())
                .map_err(|e| format!("{:?}: {e}", raw.listen)),
        );
        let max_body = parse_size(&raw.max_body);
        field(
            "max_body",
            max_body.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let silent_after = timefmt::parse_duration(&raw.silent_after);
        field(
            "silent_after",
            silent_after.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let request_timeout = timefmt::parse_duration(&raw.limits.request_timeout);
        field(
            "limits.request_timeout",
            request_timeout.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        if raw.limits.requests_per_minute == 0 {
            field(
                "limits.requests_per_minute",
                Err("must be at least 1".into()),
            );
        }
        if !(0.0..=1.0).contains(&raw.kpi.target) {
            field(
                "kpi.target",
                Err(format!("{} is not between 0 and 1", raw.kpi.target)),
            );
        }
        let tz = jiff::tz::TimeZone::get(&raw.kpi.timezone);
        field(
            "kpi.timezone",
            tz.as_ref()
                .map(|_| ())
                .map_err(|e| format!("{:?}: {e}", raw.kpi.timezone)),
        );
        if raw.storage.starts_with("postgres://") || raw.storage.starts_with("postgresql://") {
            if let Err(e) = crate::store::postgres::check_url(&raw.storage) {
                field(
                    "storage",
                    Err(format!(
                        "{:?}: {e}",
                        crate::store::postgres::redact(&raw.storage)
                    )),
                );
            }
        } else if !raw.storage.starts_with("sqlite://") {
            field(
                "storage",
                Err(format!(
                    "{:?}: expected sqlite:///path/to/collector.db or postgres://user@host/db",
                    raw.storage
                )),
            );
        }
        let (release_keys, approver_keys) = raw.trust.load_keys(&mut |name, m| field(name, Err(m)));
        if has_trust && raw.trust.require_signatures && !raw.trust.has_approver_keys() {
            field("trust.approver_keys", Err("require_signatures = true needs at least one approver key (trust.approver_keys or trust.approvers; or set require_signatures = false)".into()));
        }
        if let Some(t) = &raw.tls {
            for (name, f) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
                if let Err(e) = std::fs::metadata(f) {
                    field(name, Err(format!("{}: {e}", f.display())));
                }
            }
        }
        if let Some(k) = &raw.audit.key
            && let Err(e) = std::fs::metadata(k)
        {
            field("audit.key", Err(format!("{}: {e}", k.display())));
        }
        let audit_every = timefmt::parse_duration(
            raw.audit
                .verify_every
                .as_deref()
                .unwrap_or(DEFAULT_AUDIT_EVERY),
        );
        field(
            "audit.verify_every",
            audit_every.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let report_at = parse_time_of_day(&raw.kpi.report_at);
        field(
            "kpi.report_at",
            report_at.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let alerts = crate::collector::alerts::config::validate(&raw.alert, &mut |k, m| {
            problems.push(format!("{p}: {k}: {m}"))
        });
        let itsm = raw
            .itsm
            .and_then(|i| i.validate(&mut |k, m| problems.push(format!("{p}: {k}: {m}"))));
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(CollectorConfig {
            alerts,
            audit_every: audit_every.expect("checked"),
            report_at: report_at.expect("checked"),
            itsm,
            origin: origin.to_path_buf(),
            listen: listen.expect("checked"),
            tls: raw.tls.map(|t| Tls {
                cert: t.cert,
                key: t.key,
            }),
            storage: raw.storage,
            max_body: max_body.expect("checked"),
            silent_after: silent_after.expect("checked"),
            target: raw.kpi.target,
            timezone: tz.expect("checked"),
            timezone_name: raw.kpi.timezone,
            release_keys,
            approver_keys,
            require_signatures: raw.trust.require_signatures,
            allow_self_approval: raw.trust.allow_self_approval,
            requests_per_minute: raw.limits.requests_per_minute,
            request_timeout: request_timeout.expect("checked"),
            audit_key: raw.audit.key,
            audit_pubkey: raw.audit.pubkey,
            evidence_dir: None,
            uploads_refused: (!has_trust).then(|| {
                format!(
                    "{p}: no [trust] table: manifest and change-entry uploads are refused until trust.release_keys and trust.approver_keys are set (or trust.require_signatures = false)"
                )
            }),
        })
    }

    /// What is valid but worth saying (`config check`, start-up): one line each.
    pub fn warnings(&self) -> Vec<String> {
        self.uploads_refused.iter().cloned().collect()
    }

    /// The change-log policy these settings imply.
    pub fn change_policy(&self) -> crate::judge::changelog::Policy {
        crate::judge::changelog::Policy {
            approver_keys: self.approver_keys.clone(),
            require_signatures: self.require_signatures,
            allow_self_approval: self.allow_self_approval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bind_loopback() {
        let c = CollectorConfig::parse(
            "storage = \"sqlite:///tmp/x.db\"\n[trust]\nrequire_signatures = false\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8470");
        assert_eq!(c.max_body, 8 << 20);
        assert_eq!(c.target, 0.97);
    }

    #[test]
    fn all_problems_are_listed_at_once() {
        let text = "listen = \"nowhere\"\nmax_body = \"8 parsecs\"\nsilent_after = \"soon\"\n[kpi]\ntarget = 97\ntimezone = \"Mars/Olympus\"\n";
        let errs = CollectorConfig::parse(text, Path::new("c.toml")).unwrap_err();
        for want in [
            "listen",
            "max_body",
            "silent_after",
            "kpi.target",
            "kpi.timezone",
        ] {
            assert!(
                errs.iter().any(|e| e.contains(want)),
                "{want} missing from {errs:?}"
            );
        }
        let errs = CollectorConfig::parse("lisen = \"x\"\n", Path::new("c.toml")).unwrap_err();
        assert!(errs[0].contains("lisen"), "{errs:?}");
    }

    #[test]
    fn without_trust_the_config_loads_and_uploads_are_refused() {
        let c = CollectorConfig::parse("storage = \"sqlite:///tmp/x.db\"\n", Path::new("c.toml"))
            .unwrap();
        let why = c.uploads_refused.as_deref().unwrap();
        assert!(why.starts_with("c.toml: no [trust] table"), "{why}");
        assert!(why.contains("trust.release_keys") && why.contains("trust.approver_keys"));
        assert_eq!(c.warnings(), [why.to_string()]);
        // An explicit [trust] that needs keys and names none is still an error.
        let errs = CollectorConfig::parse(
            "storage = \"sqlite:///tmp/x.db\"\n[trust]\nrequire_signatures = true\n",
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(
            errs.iter().any(|e| e.contains("trust.approver_keys")),
            "{errs:?}"
        );
        let c = CollectorConfig::parse(
            "storage = \"sqlite:///tmp/x.db\"\n[trust]\nrequire_signatures = false\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.uploads_refused, None);
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn storage_urls() {
        let parse = |storage: &str| {
            CollectorConfig::parse(
                &format!("storage = \"{storage}\"\n[trust]\nrequire_signatures = false\n"),
                Path::new("c.toml"),
            )
        };
        for ok in [
            "sqlite:///var/lib/driftwatch/collector.db",
            "postgres://driftwatch@db.internal:5432/driftwatch",
            "postgresql://driftwatch@db.internal/driftwatch?connect_timeout=5",
        ] {
            assert_eq!(parse(ok).unwrap().storage, ok);
        }
        let errs = parse("mysql://db/driftwatch").unwrap_err();
        assert!(
            errs[0].contains("storage") && errs[0].contains("postgres://"),
            "{errs:?}"
        );
        let errs = parse("postgres://dw:s3cret@db/driftwatch?no_such_option=1").unwrap_err();
        assert!(errs[0].contains("storage"), "{errs:?}");
        assert!(!errs[0].contains("s3cret"), "{errs:?}");
    }

    #[test]
    fn report_times() {
        assert_eq!(
            parse_time_of_day("07:00").unwrap(),
            jiff::civil::time(7, 0, 0, 0)
        );
        assert_eq!(
            parse_time_of_day("23:59:30").unwrap(),
            jiff::civil::time(23, 59, 30, 0)
        );
        for bad in ["7am", "7:00", "25:00", ""] {
            assert!(parse_time_of_day(bad).is_err(), "{bad}");
        }
        let errs = CollectorConfig::parse("[kpi]\nreport_at = \"noon\"\n", Path::new("c.toml"))
            .unwrap_err();
        assert!(errs[0].contains("kpi.report_at"), "{errs:?}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
    }
}
