//! The shipped systemd units and example configs work as shipped.
//!
//! * `systemd-analyze verify` accepts both units (run on temp copies whose `/usr/bin/driftwatch`
//!   is the binary under test: verify insists that ExecStart's binary exists). Without
//!   `systemd-analyze` these tests FAIL: `.ci/run` installs the `systemd` package for them.
//! * `systemd-analyze security --offline=true` keeps each unit under an exposure ceiling.
//! * The units keep the contract of DESIGN §9 / §9b (checked without any tool): notify, watchdog,
//!   config check before start and reload, hardening that makes the system read-only for the
//!   agent but hides none of it.
//! * Both example configs pass `driftwatch config check` once their paths point at real keys
//!   (`driftwatch keygen`), a signed manifest (`driftwatch manifest build --sign`), a change
//!   log with a signed entry and a token file, and the units' own ExecStartPre=/ExecReload=
//!   command lines accept them.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, Entry, keygen, run, sign};

const AGENT_UNIT: &str = "driftwatch-agent.service";
const COLLECTOR_UNIT: &str = "driftwatch-collector.service";
/// Where the units expect the binary; rewritten to [`BIN`] in temp copies.
const INSTALLED_BIN: &str = "/usr/bin/driftwatch";
/// Highest acceptable `systemd-analyze security` exposure (0 = locked down, 10 = unconfined).
/// The agent reads every file (CAP_DAC_READ_SEARCH) and must not hide any of them, so it scores
/// worse than the collector; these ceilings catch a hardening line lost in an edit.
const AGENT_MAX_EXPOSURE: &str = "3.0";
const COLLECTOR_MAX_EXPOSURE: &str = "1.5";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    let p = repo(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---- unit files -----------------------------------------------------------------------------

/// `(section, key, value)` for every assignment of a unit file, in order.
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].to_string();
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "line {}: the unit tests do not parse continuation lines",
            n + 1
        );
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line:?}", n + 1));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// Every value of `key` in `[Service]`.
fn values<'a>(unit: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    unit.iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// The single value of `key` in `[Service]`, or a failure naming the unit.
#[track_caller]
fn one<'a>(name: &str, unit: &'a [(String, String, String)], key: &str) -> &'a str {
    match values(unit, key).as_slice() {
        [v] => v,
        vs => panic!("{name}: expected exactly one {key}=, found {vs:?}"),
    }
}

/// Where `systemd-analyze` is, or a failure that says how to get it.
fn systemd_analyze() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join("systemd-analyze");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "systemd-analyze is not installed, so the unit files in systemd/ cannot be verified.\n\
         Install it with `apt-get install -y systemd` (.ci/run does this); this test fails rather \
         than skipping, so that unverified units never pass CI."
    );
}

/// Temp copies of both units with the binary under test in place of `/usr/bin/driftwatch`.
fn units_for_verify() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::Builder::new()
        .prefix("driftwatch-units-")
        .tempdir()
        .expect("tempdir");
    let mut paths = Vec::new();
    for name in [AGENT_UNIT, COLLECTOR_UNIT] {
        let text = read(&format!("systemd/{name}"));
        assert!(
            text.contains(INSTALLED_BIN),
            "{name}: expected the binary at {INSTALLED_BIN}"
        );
        let text = text.replace(INSTALLED_BIN, BIN);
        // verify only checks ExecStart='s binary; check every Exec*= line's here.
        for (_, k, v) in parse_unit(&text) {
            if k.starts_with("Exec") {
                let exe = v
                    .trim_start_matches(['-', '@', '+', '!', ':'])
                    .split_whitespace()
                    .next()
                    .unwrap_or("");
                let meta = std::fs::metadata(exe)
                    .unwrap_or_else(|e| panic!("{name}: {k}={v}: {exe}: {e}"));
                assert!(
                    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0,
                    "{name}: {k}={v}: {exe} is not executable"
                );
            }
        }
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write unit");
        paths.push(p);
    }
    (dir, paths)
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let tool = systemd_analyze();
    let (_dir, units) = units_for_verify();
    for unit in &units {
        let out = Command::new(&tool)
            .args(["verify", "--man=no"])
            .arg(unit)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
        let text = output_text(&out);
        let name = unit.file_name().unwrap().to_string_lossy();
        println!(
            "systemd-analyze verify {name}: exit {}{}",
            out.status.code().unwrap_or(-1),
            if text.trim().is_empty() {
                ", no findings".to_string()
            } else {
                format!("\n{text}")
            }
        );
        assert!(
            out.status.success(),
            "systemd-analyze verify {name} failed:\n{text}"
        );
        // verify exits 0 on warnings such as "Unknown key ..., ignoring": a misspelt hardening
        // option would silently do nothing, so any finding about our units is a failure.
        let findings: Vec<&str> = text.lines().filter(|l| l.contains("driftwatch-")).collect();
        assert!(
            findings.is_empty(),
            "systemd-analyze verify {name} has findings:\n{}",
            findings.join("\n")
        );
    }
}

#[test]
fn units_stay_under_their_exposure_ceiling() {
    let tool = systemd_analyze();
    let (_dir, units) = units_for_verify();
    for (unit, max) in units
        .iter()
        .zip([AGENT_MAX_EXPOSURE, COLLECTOR_MAX_EXPOSURE])
    {
        let out = Command::new(&tool)
            .args([
                "security",
                "--offline=true",
                "--no-pager",
                &format!(
                    "--threshold={}",
                    (max.parse::<f64>().unwrap() * 10.0).round() as u32
                ),
            ])
            .arg(unit)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
        let text = output_text(&out);
        let name = unit.file_name().unwrap().to_string_lossy();
        let verdict = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or("(no verdict line)");
        println!("systemd-analyze security {name}: {verdict}");
        assert!(
            out.status.success(),
            "{name}: exposure above {max} (or security failed):\n{text}"
        );
    }
}

#[test]
fn agent_unit_keeps_the_contract() {
    let name = AGENT_UNIT;
    let u = parse_unit(&read(&format!("systemd/{name}")));
    let cfg = "/etc/driftwatch/agent.toml";
    for (k, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only"),
        ("StateDirectory", "driftwatch"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", "CAP_DAC_READ_SEARCH"),
        ("Nice", "10"),
        ("IOSchedulingClass", "idle"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("SystemCallArchitectures", "native"),
        (
            "ExecStartPre",
            &format!("{INSTALLED_BIN} config check --config {cfg}"),
        ),
        (
            "ExecStart",
            &format!("{INSTALLED_BIN} agent --config {cfg}"),
        ),
    ] {
        assert_eq!(one(name, &u, k), want, "{name}: {k}=");
    }
    assert_eq!(
        values(&u, "ExecReload"),
        [
            format!("{INSTALLED_BIN} config check --config {cfg}").as_str(),
            "/bin/kill -HUP $MAINPID"
        ],
        "{name}: ExecReload= must check the config, then send SIGHUP"
    );
    assert!(
        !one(name, &u, "WatchdogSec").is_empty(),
        "{name}: WatchdogSec= must be set (the agent pings WATCHDOG=1)"
    );
    // DESIGN §9b: read-only protections only, never ones that hide part of the filesystem.
    for hides in [
        "PrivateTmp",
        "PrivateDevices",
        "PrivateUsers",
        "TemporaryFileSystem",
        "InaccessiblePaths",
        "InaccessibleDirectories",
        "DynamicUser",
        "ProtectProc",
        "ProcSubset",
        "RootDirectory",
        "RootImage",
    ] {
        assert!(
            values(&u, hides).is_empty(),
            "{name}: {hides}= hides part of the filesystem from the agent (DESIGN §9b)"
        );
    }
    for (_, k, v) in &u {
        if k == "ReadWritePaths" {
            assert!(
                v == "/var/lib/driftwatch",
                "{name}: ReadWritePaths={v}: the agent writes only its state dir"
            );
        }
    }
}

#[test]
fn collector_unit_keeps_the_contract() {
    let name = COLLECTOR_UNIT;
    let u = parse_unit(&read(&format!("systemd/{name}")));
    let cfg = "/etc/driftwatch/collector.toml";
    for (k, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        (
            "ExecStartPre",
            &format!("{INSTALLED_BIN} config check --config {cfg}"),
        ),
        (
            "ExecStart",
            &format!("{INSTALLED_BIN} collector --config {cfg}"),
        ),
    ] {
        assert_eq!(one(name, &u, k), want, "{name}: {k}=");
    }
    // The collector sends no watchdog pings, and does not handle SIGHUP: a reload by signal would
    // stop it, so there must be no ExecReload=.
    assert!(
        values(&u, "WatchdogSec").is_empty(),
        "{name}: the collector sends no WATCHDOG=1"
    );
    assert!(
        values(&u, "ExecReload").is_empty(),
        "{name}: the collector does not reload on SIGHUP"
    );
}

// ---- example configs ------------------------------------------------------------------------

/// A temp stand-in for `/`: keys, a deployed tree with a signed manifest, a change log with a
/// signed entry, a token file, TLS files; and the example configs rewritten to point there.
struct Installed {
    _tmp: tempfile::TempDir,
    base: PathBuf,
}

impl Installed {
    fn new() -> Installed {
        let tmp = tempfile::Builder::new()
            .prefix("driftwatch-examples-")
            .tempdir()
            .expect("tempdir");
        let base = tmp.path().to_path_buf();
        let etc = base.join("etc");
        let keys = etc.join("keys");
        let changes = etc.join("changes.d");
        let root = base.join("srv/shop/current");
        for d in [
            &keys,
            &changes,
            &root.join("app"),
            &root.join(".driftwatch"),
        ] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let release = keygen(&keys.join("release"));
        let cab = keygen(&keys.join("cab"));
        keygen(&keys.join("audit"));
        std::fs::write(root.join("index.php"), "<?php require 'app/boot.php';\n").expect("write");
        std::fs::write(root.join("app/boot.php"), "<?php // boot\n").expect("write");
        let manifest = root.join(".driftwatch/manifest.json");
        run([
            OsStr::new("manifest"),
            OsStr::new("build"),
            OsStr::new("--root"),
            root.as_os_str(),
            OsStr::new("--release"),
            OsStr::new("2026.11.3"),
            OsStr::new("--tree"),
            OsStr::new("shop"),
            OsStr::new("--sign"),
            release.secret.as_os_str(),
            OsStr::new("-o"),
            manifest.as_os_str(),
        ])
        .expect_code(0);
        let entry = changes.join("CHG-1042.toml");
        std::fs::write(&entry, Entry::new("CHG-1042", &["app/**"]).to_toml()).expect("write entry");
        sign(&entry, &cab.secret);
        std::fs::write(etc.join("agent.token"), "dw_example_token\n").expect("write token");
        std::fs::write(etc.join("tls.crt"), "not checked by config check\n").expect("write");
        std::fs::write(etc.join("tls.key"), "not checked by config check\n").expect("write");
        Installed { _tmp: tmp, base }
    }

    /// The example's text with every absolute path moved under the temp dir. Fails on a path it
    /// does not know how to move, so a new path in an example cannot slip past this test.
    fn rewrite(&self, example: &str, text: &str) -> String {
        let b = self.base.display();
        let moved = text
            .replace("/etc/driftwatch", &format!("{b}/etc"))
            .replace("/srv/shop/current", &format!("{b}/srv/shop/current"))
            .replace(
                "/var/lib/driftwatch-collector",
                &format!("{b}/collector-state"),
            )
            .replace("/var/lib/driftwatch", &format!("{b}/state"));
        let doc: toml::Table = moved
            .parse()
            .unwrap_or_else(|e| panic!("{example} is not TOML: {e}"));
        fn strings<'a>(v: &'a toml::Value, out: &mut Vec<&'a str>) {
            match v {
                toml::Value::String(s) => out.push(s),
                toml::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
                toml::Value::Table(t) => t.values().for_each(|x| strings(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        doc.values().for_each(|v| strings(v, &mut all));
        for s in all {
            let path = s.strip_prefix("sqlite://").unwrap_or(s);
            if path.starts_with('/') {
                assert!(
                    Path::new(path).starts_with(&self.base),
                    "{example}: {s:?} is a path this test does not rewrite: teach Installed::rewrite about it"
                );
            }
        }
        moved
    }

    /// Writes the rewritten example where the units look for it (under the temp `etc/`).
    fn install(&self, example: &str, as_name: &str, edit: impl Fn(String) -> String) -> PathBuf {
        let text = edit(self.rewrite(example, &read(example)));
        let p = self.base.join("etc").join(as_name);
        std::fs::write(&p, text).expect("write config");
        p
    }

    /// Runs one Exec*= line of a unit, with the binary and /etc/driftwatch moved like the configs.
    fn exec_line(&self, unit: &str, line: &str) -> common::Out {
        let line = line.replace("/etc/driftwatch", &format!("{}/etc", self.base.display()));
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(INSTALLED_BIN), "{unit}: {line}");
        run(words.collect::<Vec<_>>())
    }
}

/// `driftwatch config check --config CFG`.
#[track_caller]
fn config_check(cfg: &Path) -> common::Out {
    run([
        OsStr::new("config"),
        OsStr::new("check"),
        OsStr::new("--config"),
        cfg.as_os_str(),
    ])
}

#[track_caller]
fn expect_ok(out: &common::Out, kind: &str) {
    out.expect_code(0);
    assert!(
        out.stdout.contains(&format!("OK ({kind} config)")),
        "`{}`: {}",
        out.cmd,
        out.stdout
    );
    assert!(
        out.stderr.is_empty(),
        "`{}` warned:\n{}",
        out.cmd,
        out.stderr
    );
}

#[test]
fn example_configs_pass_config_check() {
    let inst = Installed::new();
    let agent = inst.install("config/agent.example.toml", "agent.toml", |t| t);
    let collector = inst.install("config/collector.example.toml", "collector.toml", |t| t);
    for (cfg, kind) in [(&agent, "agent"), (&collector, "collector")] {
        let out = config_check(cfg);
        println!("{}: {}", out.cmd, out.stdout.trim());
        expect_ok(&out, kind);
    }

    // The units' own check lines (ExecStartPre=, first ExecReload=) accept the examples as
    // installed at /etc/driftwatch.
    for (unit, kind) in [(AGENT_UNIT, "agent"), (COLLECTOR_UNIT, "collector")] {
        let u = parse_unit(&read(&format!("systemd/{unit}")));
        let mut lines: Vec<&str> = values(&u, "ExecStartPre");
        lines.extend(
            values(&u, "ExecReload")
                .into_iter()
                .filter(|l| l.starts_with(INSTALLED_BIN)),
        );
        assert!(!lines.is_empty(), "{unit}: no config check line");
        for line in lines {
            expect_ok(&inst.exec_line(unit, line), kind);
        }
    }

    // The commented-out TLS line of the collector example is valid once uncommented.
    let tls = inst.install("config/collector.example.toml", "collector-tls.toml", |t| {
        assert!(
            t.contains("\n# tls = {"),
            "collector example: the commented `# tls = {{ ... }}` line is gone"
        );
        t.replace("\n# tls = {", "\ntls = {")
    });
    expect_ok(&config_check(&tls), "collector");
}

#[test]
fn example_configs_are_checked_for_real() {
    // The same examples with one key broken each: the check must name it, so the passing run
    // above means the paths, keys, manifest and entries were really read.
    let inst = Installed::new();
    let cases: [(&str, &str, &str, &str); 3] = [
        (
            "config/agent.example.toml",
            "name = \"shop\"",
            "name = \"other\"",
            "is not \"other\"",
        ),
        (
            "config/agent.example.toml",
            "/keys/release.pub\"]",
            "/keys/cab.pub\"]",
            "manifest.json",
        ),
        (
            "config/collector.example.toml",
            "timezone = \"UTC\"",
            "timezone = \"Mars/Olympus\"",
            "kpi.timezone",
        ),
    ];
    for (i, (example, from, to, want)) in cases.into_iter().enumerate() {
        let cfg = inst.install(example, &format!("broken-{i}.toml"), |t| {
            assert!(t.contains(from), "{example}: {from:?} not found");
            t.replacen(from, to, 1)
        });
        let out = config_check(&cfg);
        out.expect_code(2);
        assert!(
            out.stderr.contains(want),
            "`{}`: expected a problem mentioning {want:?}:\n{}",
            out.cmd,
            out.stderr
        );
    }
}
