//! What a host leaves unwatched (DESIGN §12.1): its effective exclusions per tree, the ones it
//! adds beyond the manifest in force (a *coverage reduction*), and a digest of the settings
//! that decide what it watches and how it judges, all sent in every heartbeat.

use std::collections::BTreeSet;

use serde::Serialize;

use super::config::AgentConfig;
use crate::event::TreeCoverage;

/// The exclusions a tree runs with: the config's and the manifest in force's, sorted, once each.
pub use crate::util::glob::union as effective;

/// The config's exclusions the manifest in force does not carry, sorted, once each. Globs are
/// compared as written: `var/cache/**` in the config and `var/cache/*` in the manifest are
/// different exclusions, and the wider one hides what the release said to watch. A tree with
/// no manifest in force has all of its exclusions beyond it.
pub fn local_extras(config: &[String], manifest: &[String]) -> Vec<String> {
    let release: BTreeSet<&String> = manifest.iter().collect();
    let extra: BTreeSet<&String> = config.iter().filter(|g| !release.contains(g)).collect();
    extra.into_iter().cloned().collect()
}

/// One tree's coverage as the heartbeat reports it.
pub fn tree_coverage(tree: &str, config: &[String], manifest: &[String]) -> TreeCoverage {
    TreeCoverage {
        tree: tree.to_string(),
        exclude: effective(config, manifest),
        local_exclude: local_extras(config, manifest),
    }
}

/// The settings the digest covers, in a fixed order (serde writes struct fields in declaration
/// order, and every list is sorted): what is watched (host, environment, each tree's name,
/// root, manifest, exclusions, filesystem crossing), how often and how (scan interval, full
/// rehash, real time), and what may authorize a change (change dir, the trusted keys themselves
/// rather than their paths, signature and self-approval policy). Uplink, heartbeat, threads,
/// batch, evidence, spool and KPI settings are left out: they change neither what is watched
/// nor any verdict.
#[derive(Serialize)]
struct Covered<'a> {
    format: &'static str,
    host: &'a str,
    environment: &'a str,
    trees: Vec<CoveredTree<'a>>,
    scan_interval_s: u64,
    full_rehash_s: u64,
    realtime: bool,
    changes_dir: Option<String>,
    release_keys: BTreeSet<String>,
    approver_keys: BTreeSet<String>,
    require_signatures: bool,
    allow_self_approval: bool,
}

#[derive(Serialize)]
struct CoveredTree<'a> {
    name: &'a str,
    root: String,
    manifest: Option<String>,
    exclude: BTreeSet<&'a String>,
    cross_filesystems: bool,
}

/// BLAKE3 (hex) of the canonical JSON of the settings listed at [`Covered`]: two hosts with
/// the same digest watch the same way; a changed digest means a changed config.
pub fn config_digest(cfg: &AgentConfig) -> String {
    let mut trees: Vec<CoveredTree<'_>> = cfg
        .trees
        .iter()
        .map(|t| CoveredTree {
            name: &t.name,
            root: t.root.display().to_string(),
            manifest: t.manifest.as_ref().map(|m| m.display().to_string()),
            exclude: t.exclude_globs.iter().collect(),
            cross_filesystems: t.cross_filesystems,
        })
        .collect();
    trees.sort_by(|a, b| a.name.cmp(b.name));
    let keys = |ks: &[crate::sign::TrustedKey]| ks.iter().map(|k| k.key.to_base64()).collect();
    let covered = Covered {
        format: "driftwatch.config-digest.v1",
        host: &cfg.host,
        environment: &cfg.environment,
        trees,
        scan_interval_s: cfg.interval.as_secs(),
        full_rehash_s: cfg.full_rehash.as_secs(),
        realtime: cfg.realtime,
        changes_dir: cfg.changes_dir.as_ref().map(|d| d.display().to_string()),
        release_keys: keys(&cfg.release_keys),
        approver_keys: keys(&cfg.approver_keys),
        require_signatures: cfg.require_signatures,
        allow_self_approval: cfg.allow_self_approval,
    };
    let json = serde_json::to_vec(&covered).expect("plain data serializes");
    blake3::hash(&json).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|g| g.to_string()).collect()
    }

    #[test]
    fn local_extras_are_the_config_globs_the_manifest_lacks() {
        let cfg = s(&["var/log/**", "var/cache/**", "var/log/**"]);
        assert_eq!(
            local_extras(&cfg, &s(&["var/cache/**"])),
            s(&["var/log/**"])
        );
        assert!(local_extras(&cfg, &s(&["var/log/**", "var/cache/**", "tmp/**"])).is_empty());
        // Compared as written: a wider glob than the release's is a reduction.
        assert_eq!(
            local_extras(&s(&["var/cache/**"]), &s(&["var/cache/*"])),
            s(&["var/cache/**"])
        );
        // No manifest in force: every local exclusion is beyond it.
        assert_eq!(local_extras(&cfg, &[]), s(&["var/cache/**", "var/log/**"]));
        assert!(local_extras(&[], &s(&["a/**"])).is_empty());
    }

    #[test]
    fn effective_is_the_sorted_union() {
        assert_eq!(
            effective(&s(&["b/**", "a/**"]), &s(&["c/**", "a/**"])),
            s(&["a/**", "b/**", "c/**"])
        );
        let c = tree_coverage("shop", &s(&["b/**"]), &s(&["a/**"]));
        assert_eq!(
            (c.exclude, c.local_exclude),
            (s(&["a/**", "b/**"]), s(&["b/**"]))
        );
    }

    fn cfg(text: &str) -> AgentConfig {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("srv");
        std::fs::create_dir_all(&root).unwrap();
        let text = text.replace("ROOT", root.to_str().unwrap());
        let base = format!(
            "host = \"web-01\"\nstate_dir = \"{}\"\n[trust]\nrequire_signatures = false\n{text}",
            dir.path().join("state").display()
        );
        let c = AgentConfig::parse(&base, Path::new("agent.toml")).unwrap();
        // The digest covers the root's path, not the directory: it may go away now.
        drop(dir);
        c
    }

    #[test]
    fn digest_changes_with_what_is_watched_and_only_with_that() {
        let tree = "[[tree]]\nname = \"shop\"\nroot = \"ROOT\"\nexclude = [\"a/**\", \"b/**\"]\n";
        let a = cfg(tree);
        let d = config_digest(&a);
        assert_eq!(d.len(), 64);
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(config_digest(&a), d, "stable");
        // Same settings, globs in another order: same digest.
        let mut b = a.clone();
        b.trees[0].exclude_globs.reverse();
        assert_eq!(config_digest(&b), d);
        // Operational settings are not covered.
        let mut b = a.clone();
        b.threads = 7;
        b.batch = 3;
        b.heartbeat = std::time::Duration::from_secs(1);
        assert_eq!(config_digest(&b), d);
        // What is watched and how verdicts are reached is.
        let mut b = a.clone();
        b.trees[0].exclude_globs.push("c/**".into());
        assert_ne!(config_digest(&b), d);
        let mut b = a.clone();
        b.require_signatures = true;
        assert_ne!(config_digest(&b), d);
        let mut b = a.clone();
        b.realtime = !b.realtime;
        assert_ne!(config_digest(&b), d);
        let mut b = a.clone();
        b.environment = "staging".into();
        assert_ne!(config_digest(&b), d);
    }
}
