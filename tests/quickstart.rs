//! `driftwatch quickstart` end to end (DESIGN §10): the real agent with its embedded collector on
//! the demo tree, observed only from outside (files, stdout/stderr, the HTTP API).

mod e2e_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_common::{BIN, Collector, Proc, get, poll, post, run_in};
use serde_json::Value;

/// How long the demo may take to become ready (first scan, keys, busy CI machines).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a file edit may take to show up in the API ("within a second" on a quiet machine;
/// bounded generously for busy CI hosts).
const SEEN_TIMEOUT: Duration = Duration::from_secs(15);

/// A quickstart process in `cwd` with its dashboard address.
struct Demo {
    proc: Proc,
    addr: String,
    url_token: String,
}

fn start(cwd: &Path) -> Demo {
    let mut proc = Proc::spawn(&["quickstart", "--listen", "127.0.0.1:0"], cwd);
    proc.wait_line(true, "driftwatch agent ready: 1 trees", READY_TIMEOUT);
    let line = proc.wait_line(false, "dashboard:", Duration::from_secs(5));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in the dashboard line {line:?}"));
    let rest = url.strip_prefix("http://").expect("http URL");
    let (addr, query) = rest
        .split_once("/?token=")
        .unwrap_or_else(|| panic!("dashboard URL {url:?} is not http://ADDR/?token=T"));
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "--listen 127.0.0.1:0 must print the picked port, got {addr:?}"
    );
    Demo {
        proc,
        addr: addr.to_string(),
        url_token: query.to_string(),
    }
}

fn read_token(dir: &Path) -> String {
    let p = dir.join("reader.token");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

fn events(demo: &Demo, token: &str) -> Vec<Value> {
    let r = get(&demo.addr, "/api/v1/events", Some(token), &[]);
    assert_eq!(
        r.status,
        200,
        "GET /api/v1/events with the reader token: {}",
        r.text()
    );
    match r.json() {
        Value::Array(v) => v,
        other => panic!("GET /api/v1/events must answer a JSON array, got {other}"),
    }
}

/// Polls the API until an event for `path` with `status` shows up.
#[track_caller]
fn wait_event(demo: &Demo, token: &str, path: &str, status: &str) -> Value {
    let mut last = Vec::new();
    poll(SEEN_TIMEOUT, || {
        last = events(demo, token);
        last.iter()
            .find(|e| e["path"] == path && e["status"] == status)
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "no event {path} = {status} within {SEEN_TIMEOUT:?}; events:\n{}\n--- quickstart stderr:\n{}",
            serde_json::to_string_pretty(&last).unwrap_or_default(),
            demo.proc.stderr()
        )
    })
}

fn file_bytes(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A scratch working directory for one demo.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("driftwatch-quickstart-")
        .tempdir()
        .expect("tempdir")
}

/// The web shell of the demo: dropped into uploads, seen through the API as unauthorized.
#[track_caller]
fn drop_web_shell(demo: &Demo, dir: &Path, token: &str) -> Value {
    let shell = dir.join("tree/wp-content/uploads/shell.php");
    std::fs::write(&shell, "<?php system($_GET['c']);\n").expect("write shell.php");
    wait_event(demo, token, "wp-content/uploads/shell.php", "unauthorized")
}

#[test]
fn quickstart_runs_detects_edits_and_restarts_with_the_same_files() {
    let tmp = scratch();
    let cwd = tmp.path();
    let dir = cwd.join("quickstart");

    let mut demo = start(cwd);

    // Everything the brief promises exists, under ./quickstart (the default --dir).
    for rel in [
        "tree/index.php",
        "tree/app/config/settings.php",
        "keys/release.key",
        "keys/release.pub",
        "keys/cab.key",
        "keys/cab.pub",
        "manifest.json",
        "manifest.json.minisig",
        "changes/CHG-1001.toml",
        "changes/CHG-1001.toml.minisig",
        "agent.toml",
        "reader.token",
    ] {
        assert!(
            dir.join(rel).is_file(),
            "quickstart must create {rel} under {}",
            dir.display()
        );
    }
    let token = read_token(&dir);
    assert_eq!(
        demo.url_token, token,
        "the dashboard URL must carry the token kept in reader.token"
    );
    // The API refuses a request without the token.
    let anon = get(&demo.addr, "/api/v1/events", None, &[]);
    assert_eq!(anon.status, 401, "no token must be 401: {}", anon.text());

    // A web shell dropped into uploads: unauthorized, seen through the API.
    let ev = drop_web_shell(&demo, &dir, &token);
    assert_eq!(ev["change"], "added", "shell.php event: {ev}");
    assert_eq!(ev["tree"], "shop", "shell.php event: {ev}");
    let want = blake3::hash(b"<?php system($_GET['c']);\n")
        .to_hex()
        .to_string();
    let got = ev["blake3"].as_str().unwrap_or_default();
    assert!(
        got.ends_with(&want),
        "the event must carry the BLAKE3 of the new content ({want}): {ev}"
    );

    // An edit under app/config/ is covered by the signed ticket CHG-1001.
    let settings = dir.join("tree/app/config/settings.php");
    let mut text = std::fs::read_to_string(&settings).expect("read settings.php");
    text.push_str("return ['tax' => 0.21];\n");
    std::fs::write(&settings, text).expect("edit settings.php");
    let ev = wait_event(&demo, &token, "app/config/settings.php", "change:CHG-1001");
    assert_eq!(ev["change"], "modified", "settings.php event: {ev}");

    // The commands quickstart suggests run as printed, against the live demo (DESIGN §10: the
    // change shows up "in `driftwatch kpi`" too).
    let tried = try_commands(&demo, cwd);
    for want in ["events", "kpi", "check"] {
        assert!(
            tried.contains_key(want),
            "quickstart must suggest `driftwatch {want}`:\n{}",
            demo.proc.stdout()
        );
    }
    let ev = &tried["events"];
    assert_eq!(ev.code, 0, "{}:\n{}{}", ev.cmd, ev.stdout, ev.stderr);
    assert!(
        ev.stdout.contains("wp-content/uploads/shell.php")
            && ev.stdout.contains("app/config/settings.php"),
        "`{}` must list both changes:\n{}",
        ev.cmd,
        ev.stdout
    );
    let kpi = &tried["kpi"];
    assert_eq!(
        kpi.code, 1,
        "today's 1 of 2 changes unauthorized misses the target: `{}` exits 1:\n{}{}",
        kpi.cmd, kpi.stdout, kpi.stderr
    );
    assert!(
        kpi.stdout.contains("50.0%"),
        "`{}` shows today's change compliance, 1 of 2 = 50.0%:\n{}",
        kpi.cmd,
        kpi.stdout
    );
    let check = &tried["check"];
    assert_eq!(
        check.code, 1,
        "`{}` finds the web shell: exit 1\n{}{}",
        check.cmd, check.stdout, check.stderr
    );
    assert!(
        check.stdout.contains("wp-content/uploads/shell.php")
            && check.stdout.contains("change:CHG-1001"),
        "`{}` reports the shell and the ticketed edit:\n{}",
        check.cmd,
        check.stdout
    );

    // What a re-run must reuse.
    let keep = |rel: &str| file_bytes(dir.join(rel));
    let before: Vec<(&str, Vec<u8>)> = [
        "keys/release.key",
        "keys/release.pub",
        "keys/cab.key",
        "keys/cab.pub",
        "manifest.json",
        "manifest.json.minisig",
        "changes/CHG-1001.toml",
        "changes/CHG-1001.toml.minisig",
        "reader.token",
    ]
    .into_iter()
    .map(|r| (r, keep(r)))
    .collect();
    let agent_toml = String::from_utf8_lossy(&keep("agent.toml")).into_owned();

    let st = demo.proc.terminate(Duration::from_secs(15));
    assert_eq!(
        st.code(),
        Some(0),
        "quickstart must exit 0 on SIGTERM, got {st}\n--- stderr:\n{}",
        demo.proc.stderr()
    );
    drop(demo);

    let demo = start(cwd);
    for (rel, bytes) in &before {
        assert!(
            keep(rel) == *bytes,
            "re-running quickstart must reuse {rel} unchanged"
        );
    }
    assert_eq!(
        demo.url_token, token,
        "re-run must print the same reader token"
    );
    // Only the listen address may differ in the rewritten agent config.
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.trim_start().starts_with("listen"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let agent_toml2 = String::from_utf8_lossy(&keep("agent.toml")).into_owned();
    assert_eq!(
        strip(&agent_toml),
        strip(&agent_toml2),
        "re-run must rewrite agent.toml identically but for its listen address"
    );
    // The history survived the restart, and the same token still reads it.
    let ev = wait_event(
        &demo,
        &token,
        "wp-content/uploads/shell.php",
        "unauthorized",
    );
    assert_eq!(ev["change"], "added");
    wait_event(&demo, &token, "app/config/settings.php", "change:CHG-1001");
    // The restart's full scan finds the shell again; it is still the same open change, counted
    // once (DESIGN §6), not a second unauthorized event. Give the uplink time to send anything.
    std::thread::sleep(Duration::from_secs(3));
    let all = events(&demo, &token);
    let shells: Vec<&Value> = all
        .iter()
        .filter(|e| e["path"] == "wp-content/uploads/shell.php")
        .collect();
    assert_eq!(
        shells.len(),
        1,
        "after a restart the web shell must still be one event, counted once:\n{}",
        serde_json::to_string_pretty(&shells).unwrap_or_default()
    );
}

/// Runs every `driftwatch …` line quickstart printed under "Try", in `cwd`; by subcommand.
fn try_commands(demo: &Demo, cwd: &Path) -> std::collections::HashMap<String, e2e_common::Done> {
    let out = demo.proc.stdout();
    let mut done = std::collections::HashMap::new();
    for line in out.lines() {
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        let Some(first) = words.first() else { continue };
        // Suggestions are indented and start with the binary as it was invoked.
        let suggestion = line.starts_with(' ')
            && (first == BIN
                || Path::new(first)
                    .file_name()
                    .is_some_and(|n| n == "driftwatch"));
        if !suggestion {
            continue;
        }
        let d = run_in(cwd, &words[1..], None, Duration::from_secs(60));
        assert_ne!(
            d.code, 2,
            "suggested command `{line}` fails:\n{}{}",
            d.stdout, d.stderr
        );
        done.insert(words[1].clone(), d);
    }
    done
}

/// The value of the unlabelled sample `name` in `/metrics` text.
#[track_caller]
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{text}"))
}

/// `driftwatch token create ARGS... --role agent --host HOST`: the printed secret.
#[track_caller]
fn agent_token(cwd: &Path, store: &[&str], host: &str) -> String {
    let mut args: Vec<String> = vec!["token".into(), "create".into()];
    args.extend(store.iter().map(|s| s.to_string()));
    args.extend(["--role", "agent", "--host", host].map(String::from));
    let done = run_in(cwd, &args, None, Duration::from_secs(30));
    assert_eq!(done.code, 0, "{}:\n{}", done.cmd, done.stderr);
    done.stdout.trim().to_string()
}

/// Single-host mode reports exactly like a fleet collector: the embedded collector's `/metrics`
/// counts what its agent ingested in process (it used to read 0, the agent writing to the store
/// behind the service's back), and a malformed batch is refused with the same status and reason
/// by the embedded collector and by a fleet collector.
#[test]
fn single_host_metrics_count_ingestion_and_malformed_batches_are_refused_like_a_fleet() {
    let tmp = scratch();
    let cwd = tmp.path();
    let dir = cwd.join("quickstart");
    let demo = start(cwd);
    let token = read_token(&dir);
    let ev = drop_web_shell(&demo, &dir, &token);
    let host = ev["host"].as_str().expect("event host").to_string();

    let metrics = || {
        let r = get(&demo.addr, "/metrics", None, &[]);
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    };
    let text = metrics();
    for name in [
        "driftwatch_ingest_batches_total",
        "driftwatch_ingest_events_received_total",
        "driftwatch_ingest_events_stored_total",
    ] {
        assert!(
            sample(&text, name) >= 1.0,
            "{name} must count the embedded agent's batch:\n{text}"
        );
    }
    let stored = sample(&text, "driftwatch_ingest_events_stored_total");

    // A fleet collector on its own store, for the comparison.
    let fleet_db = cwd.join("fleet.db");
    let fleet_cfg = cwd.join("collector.toml");
    e2e_common::write_collector_config(&fleet_cfg, &fleet_db);
    let fleet_token = agent_token(
        cwd,
        &["--config", fleet_cfg.to_str().expect("utf-8")],
        &host,
    );
    let fleet = Collector::start(&fleet_cfg, cwd);
    let db = dir.join("state/collector.db");
    let embedded_token = agent_token(cwd, &["--db", db.to_str().expect("utf-8")], &host);

    let now = jiff::Timestamp::now().to_string();
    let event = |seq: u64, blake3: &str| {
        serde_json::json!({
            "seq": seq, "tree": "shop", "path": "x.php", "change": "added",
            "status": "unauthorized", "observed_at": now, "window_start": now, "blake3": blake3,
        })
    };
    let malformed = [
        (
            serde_json::json!({"host": host, "events": [event(0, &"ab".repeat(32))]}),
            "events[0].seq",
        ),
        (
            serde_json::json!({"host": host, "events": [event(1_000_000, "nothex")]}),
            "events[0].blake3",
        ),
    ];
    for (batch, field) in &malformed {
        let body = serde_json::to_vec(batch).expect("json");
        let answers: Vec<(u16, String)> =
            [(&demo.addr, &embedded_token), (&fleet.addr, &fleet_token)]
                .into_iter()
                .map(|(addr, t)| {
                    let r = post(addr, "/api/v1/events", Some(t), &body);
                    (
                        r.status,
                        r.json()["error"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
        assert_eq!(answers[0].0, 400, "embedded: {answers:?}");
        assert!(answers[0].1.starts_with(field), "{field}: {answers:?}");
        assert_eq!(answers[0], answers[1], "embedded and fleet answer alike");
    }
    // Refused batches store nothing and are not counted as accepted.
    let text = metrics();
    assert_eq!(
        sample(&text, "driftwatch_ingest_events_stored_total"),
        stored,
        "{text}"
    );
}
