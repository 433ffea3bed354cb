//! The agent's TOML config (DESIGN §5), validated once at load; every problem names file and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::GlobSet;
use serde::Deserialize;

use crate::collector::config::parse_size;
use crate::sign::TrustedKey;
use crate::util::glob;
use crate::util::timefmt;

/// Default config path.
pub const DEFAULT_PATH: &str = "/etc/driftwatch/agent.toml";

#[derive(Debug, Deserialize)]
struct Raw {
    host: Option<String>,
    #[serde(default = "default_env")]
    environment: String,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    tree: Vec<RawTree>,
    #[serde(default)]
    scan: RawScan,
    #[serde(default)]
    changes: RawChanges,
    #[serde(default)]
    trust: crate::sign::TrustTable,
    #[serde(default)]
    collector: RawCollector,
    #[serde(default)]
    kpi: RawKpi,
    #[serde(default)]
    evidence: RawEvidence,
    #[serde(default)]
    spool: RawSpool,
    #[serde(default)]
    alert: Vec<crate::collector::alerts::config::RawAlert>,
}

#[derive(Debug, Deserialize)]
struct RawTree {
    name: String,
    root: PathBuf,
    manifest: Option<PathBuf>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    cross_filesystems: bool,
}

#[derive(Debug, Deserialize)]
struct RawScan {
    #[serde(default = "d_interval")]
    interval: String,
    #[serde(default = "d_rehash")]
    full_rehash: String,
    #[serde(default = "yes")]
    realtime: bool,
    #[serde(default)]
    threads: usize,
    #[serde(default = "d_debounce")]
    debounce: String,
}

impl Default for RawScan {
    fn default() -> Self {
        RawScan {
            interval: d_interval(),
            full_rehash: d_rehash(),
            realtime: true,
            threads: 0,
            debounce: d_debounce(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawChanges {
    dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct RawCollector {
    url: Option<String>,
    token_file: Option<PathBuf>,
    #[serde(default = "d_heartbeat")]
    heartbeat: String,
    #[serde(default)]
    embedded: bool,
    #[serde(default = "d_listen")]
    listen: String,
    #[serde(default = "d_batch")]
    batch: usize,
}

impl Default for RawCollector {
    fn default() -> Self {
        RawCollector {
            url: None,
            token_file: None,
            heartbeat: d_heartbeat(),
            embedded: false,
            listen: d_listen(),
            batch: d_batch(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawKpi {
    #[serde(default = "d_target")]
    target: f64,
    #[serde(default = "d_tz")]
    timezone: String,
}

impl Default for RawKpi {
    fn default() -> Self {
        RawKpi {
            target: d_target(),
            timezone: d_tz(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawEvidence {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "d_ev_file")]
    max_file_size: String,
    #[serde(default = "d_ev_total")]
    max_total: String,
}

impl Default for RawEvidence {
    fn default() -> Self {
        RawEvidence {
            enabled: true,
            max_file_size: d_ev_file(),
            max_total: d_ev_total(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawSpool {
    #[serde(default = "d_spool")]
    max_size: String,
}

impl Default for RawSpool {
    fn default() -> Self {
        RawSpool {
            max_size: d_spool(),
        }
    }
}

fn default_env() -> String {
    "production".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/driftwatch")
}
fn d_interval() -> String {
    "1h".into()
}
fn d_rehash() -> String {
    "24h".into()
}
fn d_debounce() -> String {
    "200ms".into()
}
fn d_heartbeat() -> String {
    "60s".into()
}
fn d_listen() -> String {
    "127.0.0.1:8470".into()
}
fn d_batch() -> usize {
    500
}
fn d_target() -> f64 {
    0.97
}
fn d_tz() -> String {
    "UTC".into()
}
fn d_ev_file() -> String {
    "16MiB".into()
}
fn d_ev_total() -> String {
    "512MiB".into()
}
fn d_spool() -> String {
    "256MiB".into()
}
fn yes() -> bool {
    true
}

/// One watched tree.
#[derive(Debug, Clone)]
pub struct TreeConfig {
    /// Name (`shop`).
    pub name: String,
    /// Deployed directory.
    pub root: PathBuf,
    /// Manifest file of the release in force.
    pub manifest: Option<PathBuf>,
    /// Exclusion globs as written.
    pub exclude_globs: Vec<String>,
    /// Compiled exclusions.
    pub exclude: GlobSet,
    /// Descend into other filesystems.
    pub cross_filesystems: bool,
}

impl TreeConfig {
    /// The compiled exclusions with a manifest's added (DESIGN §12.1: the manifest in force's
    /// and the config's both apply). Both lists were validated when read, so compiling their
    /// union cannot fail in practice; if it did, the config's alone stay, and it is logged.
    pub fn with_manifest_exclude(&self, manifest: &[String]) -> GlobSet {
        if manifest.is_empty() {
            return glob::path_set(&self.exclude_globs).unwrap_or_else(|_| self.exclude.clone());
        }
        let all = crate::util::glob::union(&self.exclude_globs, manifest);
        glob::path_set(&all).unwrap_or_else(|why| {
            tracing::error!(tree = %self.name, %why, "the manifest's exclusions could not be added; the config's apply");
            glob::path_set(&self.exclude_globs).unwrap_or_default()
        })
    }
}

/// Where events go.
#[derive(Debug, Clone, PartialEq)]
pub enum Uplink {
    /// Nowhere: events stay in the spool (a one-shot `scan` without a collector).
    None,
    /// A remote collector.
    Remote {
        /// Base URL.
        url: String,
        /// Token file.
        token_file: PathBuf,
    },
    /// An in-process collector on SQLite under the state dir, serving on `listen`.
    Embedded {
        /// Listen address of the embedded collector (dashboard and API).
        listen: std::net::SocketAddr,
    },
}

/// Validated agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Config file path.
    pub origin: PathBuf,
    /// Host name.
    pub host: String,
    /// Environment label.
    pub environment: String,
    /// State directory.
    pub state_dir: PathBuf,
    /// Trees.
    pub trees: Vec<TreeConfig>,
    /// Full scan interval.
    pub interval: Duration,
    /// Full rehash interval.
    pub full_rehash: Duration,
    /// Watch with inotify.
    pub realtime: bool,
    /// Hashing threads (0 = cores).
    pub threads: usize,
    /// Debounce of real-time events.
    pub debounce: Duration,
    /// Change log directory.
    pub changes_dir: Option<PathBuf>,
    /// Keys manifests must verify against.
    pub release_keys: Vec<TrustedKey>,
    /// Keys change entries must verify against.
    pub approver_keys: Vec<TrustedKey>,
    /// Refuse unsigned manifests and entries.
    pub require_signatures: bool,
    /// Accept self-approved entries.
    pub allow_self_approval: bool,
    /// Where events go.
    pub uplink: Uplink,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Events per batch.
    pub batch: usize,
    /// KPI target (embedded collector).
    pub target: f64,
    /// KPI timezone name (embedded collector).
    pub timezone: String,
    /// Keep evidence of unauthorized content.
    pub evidence: bool,
    /// Largest file copied as evidence.
    pub evidence_max_file: u64,
    /// Evidence store cap.
    pub evidence_max_total: u64,
    /// Spool cap.
    pub spool_max: u64,
    /// `[[alert]]` sinks of the embedded collector (DESIGN §12.3; set up once, at start).
    pub alerts: Vec<crate::collector::alerts::AlertConfig>,
}

impl AgentConfig {
    /// Whether there is a collector to take manifests and change entries from.
    pub fn has_collector(&self) -> bool {
        !matches!(self.uplink, Uplink::None)
    }

    /// The manifest file of a tree: its configured path, else the one fetched from the collector.
    pub fn manifest_of(&self, tree: &TreeConfig) -> Option<PathBuf> {
        match &tree.manifest {
            Some(p) => Some(p.clone()),
            None if self.has_collector() => {
                Some(super::layout::fetched_manifest(&self.state_dir, &tree.name))
            }
            None => None,
        }
    }

    /// The directories change entries are read from: `[changes] dir`, then the fetched ones.
    pub fn change_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.changes_dir.iter().cloned().collect();
        if self.has_collector() {
            dirs.push(super::layout::fetched_changes(&self.state_dir));
        }
        dirs
    }

    /// Settings a running agent cannot take over (SIGHUP): they are put back to the running
    /// values in `new`, and their names returned, for a log line each.
    pub fn keep_restart_only(&self, new: &mut AgentConfig) -> Vec<&'static str> {
        let mut kept = Vec::new();
        if new.host != self.host {
            // Sequence numbers continue per host: a new name must start with a new agent.
            new.host = self.host.clone();
            kept.push("host");
        }
        if new.state_dir != self.state_dir {
            new.state_dir = self.state_dir.clone();
            kept.push("state_dir");
        }
        let embedded = |u: &Uplink| matches!(u, Uplink::Embedded { .. });
        if (embedded(&self.uplink) || embedded(&new.uplink)) && new.uplink != self.uplink {
            // The embedded collector's server and store are set up once, at start.
            new.uplink = self.uplink.clone();
            kept.push("collector.embedded / collector.listen");
        }
        if embedded(&self.uplink) {
            if new.target != self.target {
                new.target = self.target;
                kept.push("kpi.target");
            }
            if new.timezone != self.timezone {
                new.timezone = self.timezone.clone();
                kept.push("kpi.timezone");
            }
        }
        if new.alerts != self.alerts {
            // The embedded collector's alert sinks are set up with it, at start.
            new.alerts = self.alerts.clone();
            kept.push("alert");
        }
        kept
    }

    /// Reads and validates, listing every problem found.
    pub fn load(path: &Path) -> Result<AgentConfig, Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        Self::parse(&text, path)
    }

    /// Validates config text.
    pub fn parse(text: &str, origin: &Path) -> Result<AgentConfig, Vec<String>> {
        let p = origin.display().to_string();
        let table: toml::Table = text.parse().map_err(|e| {
            vec![format!(
                "{p}: {}",
                crate::judge::changelog::toml_error(&e, text)
            )]
        })?;
        let mut unknown = Vec::new();
        let raw = crate::util::confkeys::deserialize::<Raw>(table, &mut unknown);
        let mut problems: Vec<String> = unknown.into_iter().map(|m| format!("{p}: {m}")).collect();
        let raw: Raw = match raw {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{p}: {}", e.message().trim().replace('\n', " ")));
                return Err(problems);
            }
        };
        let mut bad = |key: &str, msg: String| problems.push(format!("{p}: {key}: {msg}"));
        let dur = |key: &str, v: &str, bad: &mut dyn FnMut(&str, String)| {
            timefmt::parse_duration(v).unwrap_or_else(|m| {
                bad(key, m);
                Duration::from_secs(1)
            })
        };
        let interval = dur("scan.interval", &raw.scan.interval, &mut bad);
        let full_rehash = dur("scan.full_rehash", &raw.scan.full_rehash, &mut bad);
        let debounce = dur("scan.debounce", &raw.scan.debounce, &mut bad);
        let heartbeat = dur("collector.heartbeat", &raw.collector.heartbeat, &mut bad);
        if interval < Duration::from_secs(1) {
            bad("scan.interval", "must be at least 1s".into());
        }
        if debounce < Duration::from_millis(10) {
            bad("scan.debounce", "must be at least 10ms".into());
        }
        if heartbeat < Duration::from_secs(1) {
            bad("collector.heartbeat", "must be at least 1s".into());
        }
        let size = |key: &str, v: &str, bad: &mut dyn FnMut(&str, String)| {
            parse_size(v).map(|s| s as u64).unwrap_or_else(|m| {
                bad(key, m);
                0
            })
        };
        let evidence_max_file = size(
            "evidence.max_file_size",
            &raw.evidence.max_file_size,
            &mut bad,
        );
        let evidence_max_total = size("evidence.max_total", &raw.evidence.max_total, &mut bad);
        let spool_max = size("spool.max_size", &raw.spool.max_size, &mut bad);
        if raw.tree.is_empty() {
            bad("tree", "no [[tree]] to watch".into());
        }
        let mut trees = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, t) in raw.tree.iter().enumerate() {
            let key = |f: &str| format!("tree[{i}].{f}");
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                bad(
                    &key("name"),
                    format!("{:?} must be letters, digits, `.`, `_`, `-`", t.name),
                );
            }
            if !names.insert(t.name.clone()) {
                bad(&key("name"), format!("{:?} is used twice", t.name));
            }
            match std::fs::metadata(&t.root) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bad(
                    &key("root"),
                    format!("{}: not a directory", t.root.display()),
                ),
                Err(e) => bad(&key("root"), format!("{}: {e}", t.root.display())),
            }
            if let Some(m) = &t.manifest
                && let Err(e) = std::fs::metadata(m)
            {
                bad(&key("manifest"), format!("{}: {e}", m.display()));
            }
            let exclude = glob::path_set(&t.exclude).unwrap_or_else(|m| {
                bad(&key("exclude"), m);
                GlobSet::empty()
            });
            trees.push(TreeConfig {
                name: t.name.clone(),
                root: t.root.clone(),
                manifest: t.manifest.clone(),
                exclude_globs: t.exclude.clone(),
                exclude,
                cross_filesystems: t.cross_filesystems,
            });
        }
        let (release_keys, approver_keys) = raw.trust.load_keys(&mut bad);
        if raw.trust.require_signatures {
            if raw.trust.release_keys.is_empty() {
                bad(
                    "trust.release_keys",
                    "require_signatures = true needs at least one release key".into(),
                );
            }
            if raw.changes.dir.is_some() && !raw.trust.has_approver_keys() {
                bad(
                    "trust.approver_keys",
                    "require_signatures = true with [changes] dir needs at least one approver key"
                        .into(),
                );
            }
        }
        if let Some(d) = &raw.changes.dir
            && !d.is_dir()
        {
            bad("changes.dir", format!("{}: not a directory", d.display()));
        }
        let uplink = match (&raw.collector.url, raw.collector.embedded) {
            (Some(_), true) => {
                bad(
                    "collector",
                    "set either url or embedded = true, not both".into(),
                );
                Uplink::None
            }
            (Some(url), false) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    bad("collector.url", format!("{url:?} is not an http(s) URL"));
                }
                match &raw.collector.token_file {
                    Some(t) => {
                        if let Err(e) = crate::client::read_token(t) {
                            bad("collector.token_file", e.to_string());
                        }
                        Uplink::Remote {
                            url: url.clone(),
                            token_file: t.clone(),
                        }
                    }
                    None => {
                        bad("collector.token_file", "required with collector.url".into());
                        Uplink::None
                    }
                }
            }
            (None, true) => match raw.collector.listen.parse() {
                Ok(listen) => Uplink::Embedded { listen },
                Err(e) => {
                    bad(
                        "collector.listen",
                        format!("{:?}: {e}", raw.collector.listen),
                    );
                    Uplink::None
                }
            },
            (None, false) => Uplink::None,
        };
        if !(0.0..=1.0).contains(&raw.kpi.target) {
            bad(
                "kpi.target",
                format!("{} is not between 0 and 1", raw.kpi.target),
            );
        }
        if jiff::tz::TimeZone::get(&raw.kpi.timezone).is_err() {
            bad(
                "kpi.timezone",
                format!("{:?} is not a known time zone", raw.kpi.timezone),
            );
        }
        if raw.collector.batch == 0 {
            bad("collector.batch", "must be at least 1".into());
        }
        let alerts = crate::collector::alerts::config::validate(&raw.alert, &mut |k, m| bad(&k, m));
        if !raw.alert.is_empty() && !matches!(uplink, Uplink::Embedded { .. }) {
            bad(
                "alert",
                "[[alert]] tables need [collector] embedded = true (a remote collector alerts from its own config)".into(),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(AgentConfig {
            origin: origin.to_path_buf(),
            host: raw.host.unwrap_or_else(crate::util::host::hostname),
            environment: raw.environment,
            state_dir: raw.state_dir,
            trees,
            interval,
            full_rehash,
            realtime: raw.scan.realtime,
            threads: raw.scan.threads,
            debounce,
            changes_dir: raw.changes.dir,
            release_keys,
            approver_keys,
            require_signatures: raw.trust.require_signatures,
            allow_self_approval: raw.trust.allow_self_approval,
            uplink,
            heartbeat,
            batch: raw.collector.batch,
            target: raw.kpi.target,
            timezone: raw.kpi.timezone,
            evidence: raw.evidence.enabled,
            evidence_max_file,
            evidence_max_total,
            spool_max,
            alerts,
        })
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

    /// A config with `extra` appended, `{t}` standing for a token file in `dir`.
    fn try_parse(dir: &Path, extra: &str) -> Result<AgentConfig, Vec<String>> {
        let extra = extra.replace("{t}", &dir.join("t").display().to_string());
        let text = format!(
            "host = \"web-1\"\nstate_dir = \"{}\"\n\n[[tree]]\nname = \"shop\"\nroot = \"{}\"\n\n[trust]\nrequire_signatures = false\n\n{extra}",
            dir.join("state").display(),
            dir.display()
        );
        AgentConfig::parse(&text, &dir.join("agent.toml"))
    }

    fn parse(dir: &Path, extra: &str) -> AgentConfig {
        try_parse(dir, extra).expect("valid config")
    }

    #[test]
    fn durations_that_would_spin_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let problems = try_parse(
            dir.path(),
            "[scan]\ndebounce = \"0s\"\n\n[collector]\nheartbeat = \"0s\"\n",
        )
        .unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("scan.debounce: must be at least 10ms")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("collector.heartbeat: must be at least 1s")),
            "{problems:?}"
        );
    }

    #[test]
    fn reload_keeps_what_needs_a_restart_and_takes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "secret\n").unwrap();
        let running = parse(
            dir.path(),
            "[collector]\nembedded = true\nlisten = \"127.0.0.1:0\"\n",
        );
        let mut new = parse(
            dir.path(),
            "[scan]\ninterval = \"5m\"\n\n[collector]\nurl = \"https://collector:8443\"\ntoken_file = \"{t}\"\n\n[kpi]\ntarget = 0.5\n",
        );
        new.host = "web-2".into();
        let kept = running.keep_restart_only(&mut new);
        assert_eq!(
            kept,
            vec![
                "host",
                "collector.embedded / collector.listen",
                "kpi.target"
            ]
        );
        assert_eq!(new.host, "web-1");
        assert_eq!(new.uplink, running.uplink);
        assert_eq!(new.target, running.target);
        assert_eq!(new.interval, Duration::from_secs(300), "taken over at once");

        // Between remote collectors, everything is taken over.
        let remote = parse(
            dir.path(),
            "[collector]\nurl = \"https://a:8443\"\ntoken_file = \"{t}\"\n",
        );
        let mut other = parse(
            dir.path(),
            "[collector]\nurl = \"https://b:8443\"\ntoken_file = \"{t}\"\n\n[kpi]\ntarget = 0.5\n",
        );
        assert!(remote.keep_restart_only(&mut other).is_empty());
        assert_eq!(
            other.uplink,
            Uplink::Remote {
                url: "https://b:8443".into(),
                token_file: token.clone()
            }
        );
    }
}
