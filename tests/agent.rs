//! Integration tests of the agent daemon (DESIGN §5, §6, §9): a real `driftwatch agent` process
//! over a real temp tree, with its embedded collector or a real `driftwatch collector` process,
//! all on 127.0.0.1. Events are read back with `driftwatch events`.
//!
//! Every child process is owned by a guard that SIGKILLs and reaps it on drop; every wait is a
//! bounded poll (see `agent_common`).

mod agent_common;
mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use agent_common::*;
use common::{Fx, blake3_hex, run};

/// One standard fixture tree with its signed manifest r1 and an agent config for it.
struct Setup {
    fx: Fx,
    spec: AgentSpec,
    config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        Setup::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut AgentSpec)) -> Setup {
        let fx = Fx::new();
        fx.build_manifest();
        let mut spec = AgentSpec::for_fx(&fx);
        tweak(&mut spec);
        let config = fx.base.join("agent.toml");
        spec.write(&config);
        Setup { fx, spec, config }
    }

    fn db(&self) -> PathBuf {
        self.spec.db()
    }

    /// `driftwatch scan --config F --format json`.
    fn scan(&self) -> common::Out {
        run([
            OsStr::new("scan"),
            OsStr::new("--config"),
            self.config.as_os_str(),
            OsStr::new("--format"),
            OsStr::new("json"),
        ])
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The `open_unauthorized` list of tree `tree` in a `scan --format json` report.
#[track_caller]
fn open_in_scan(report: &Value, tree: &str) -> Vec<String> {
    let trees = report
        .as_array()
        .unwrap_or_else(|| panic!("scan report is not an array:\n{report:#}"));
    let t = trees
        .iter()
        .find(|t| t["tree"] == tree)
        .unwrap_or_else(|| panic!("no tree {tree:?} in the scan report:\n{report:#}"));
    t["open_unauthorized"]
        .as_array()
        .unwrap_or_else(|| panic!("no open_unauthorized list for {tree}:\n{report:#}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

// 1 ------------------------------------------------------------------------------------------

/// A file written slowly (open, part of it, a pause longer than the debounce, the rest, close)
/// is judged once, complete: not once empty or half-written and again when done.
#[test]
fn a_file_still_being_written_is_judged_once_when_closed() {
    use std::io::Write as _;
    let st = Setup::new();
    let agent = Agent::start(&st.config);
    let path = "wp-content/uploads/big.zip";
    let mut f = std::fs::File::create(st.fx.path(path)).expect("create");
    f.write_all(b"PK first half ").expect("write");
    f.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(900));
    f.write_all(b"second half").expect("write");
    drop(f);
    wait_events(
        &st.db(),
        "the finished file",
        secs(10),
        || agent.proc.log(),
        |evs| !about(evs, "shop", path).is_empty(),
    );
    // Room for a second (wrong) event to show up.
    std::thread::sleep(Duration::from_millis(1500));
    let evs = events_db(&st.db());
    let found = about(&evs, "shop", path);
    assert_eq!(
        found.len(),
        1,
        "one event for {path}: {found:#?}\n{}",
        agent.proc.log()
    );
    assert_eq!(
        s(found[0], "blake3"),
        blake3_hex(b"PK first half second half"),
        "{found:#?}"
    );
}

#[test]
fn realtime_write_reaches_the_embedded_collector_within_two_seconds() {
    let st = Setup::new();
    let agent = Agent::start(&st.config);
    assert!(
        agent.url.is_some(),
        "no embedded collector line; log:\n{}",
        agent.proc.log()
    );
    let path = "wp-content/uploads/shell.php";
    let content = b"<?php eval($_POST['x']); ?>\n";

    let t = Instant::now();
    st.fx.write(path, content);
    let evs = wait_events(
        &st.db(),
        "event for the dropped file",
        secs(10),
        || agent.proc.log(),
        |evs| !about(evs, "shop", path).is_empty(),
    );
    let took = t.elapsed();
    assert!(
        took <= secs(2),
        "write → collector took {took:?} (must be ≤ 2 s)"
    );

    let found = about(&evs, "shop", path);
    assert_eq!(found.len(), 1, "one event for {path}: {found:#?}");
    let ev = found[0];
    assert_eq!(s(ev, "status"), "unauthorized", "{ev:#}");
    assert_eq!(s(ev, "change"), "added", "{ev:#}");
    assert_eq!(ev["open"], true, "{ev:#}");
    assert_eq!(s(ev, "host"), HOST, "{ev:#}");
    assert_eq!(s(ev, "blake3"), blake3_hex(content), "{ev:#}");
    // One greppable log line per event, with path= and status=.
    let lines = agent.drift_lines(path);
    assert!(
        lines.iter().any(|l| l.contains("status=unauthorized")),
        "no `drift ... path={path} ... status=unauthorized` log line:\n{}",
        agent.proc.log()
    );
}

// 2 ------------------------------------------------------------------------------------------

/// A collector config on a fixed port (so it comes back on the same URL) and its tokens.
struct RemoteSite {
    config: PathBuf,
    db: PathBuf,
    url: String,
    agent_token: PathBuf,
    reader_token: PathBuf,
}

fn remote_site(fx: &Fx) -> RemoteSite {
    let dir = fx.base.join("collector");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let db = dir.join("collector.db");
    let port = free_port();
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstorage = {}\n\n[trust]\nrelease_keys = [{}]\napprover_keys = [{}]\n",
            toml_str(format!("sqlite://{}", db.display())),
            toml_path(&fx.release.public),
            toml_path(&fx.cab.public),
        ),
    )
    .expect("write collector config");
    let token = |role: &str, host: Option<&str>, file: &str| {
        let mut args = vec![
            "token",
            "create",
            "--config",
            config.to_str().expect("utf-8"),
            "--role",
            role,
        ];
        if let Some(h) = host {
            args.extend(["--host", h]);
        }
        let out = run(&args);
        out.expect_code(0);
        let t = out.stdout.trim().to_string();
        assert!(
            !t.is_empty() && !t.contains('\n'),
            "token create must print one token line:\n{}",
            out.stdout
        );
        let p = dir.join(file);
        std::fs::write(&p, format!("{t}\n")).expect("write token");
        p
    };
    let agent_token = token("agent", Some(HOST), "agent.token");
    let reader_token = token("reader", None, "reader.token");
    RemoteSite {
        config,
        db,
        url: format!("http://127.0.0.1:{port}"),
        agent_token,
        reader_token,
    }
}

/// SIGHUP takes a new `[collector]` without a restart: an agent started against an address
/// where nothing listens delivers what it spooled once the reloaded config points it at a
/// collector, and what happens after the reload goes there too.
#[test]
fn sighup_switches_the_collector_and_spooled_events_arrive() {
    let fx = Fx::new();
    fx.build_manifest();
    let site = remote_site(&fx);
    let mut spec = AgentSpec::for_fx(&fx);
    spec.uplink = Uplink::Remote {
        url: format!("http://127.0.0.1:{}", free_port()),
        token_file: site.agent_token.clone(),
    };
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let collector = Remote::start(&site.config);
    let mut agent = Agent::start(&config);

    fx.write("wp-content/uploads/early.php", b"<?php // early\n");
    let undelivered = poll(secs(20), || {
        (!agent.drift_lines("wp-content/uploads/early.php").is_empty()
            && agent.proc.logged("collector unreachable"))
        .then_some(())
    });
    assert!(
        undelivered.is_some(),
        "the change was not spooled against the dead address; log:\n{}",
        agent.proc.log()
    );

    spec.uplink = Uplink::Remote {
        url: site.url.clone(),
        token_file: site.agent_token.clone(),
    };
    spec.write(&config);
    agent.proc.signal(libc::SIGHUP);
    agent
        .proc
        .wait_line("reload", secs(20), |l| l.contains("config reloaded"));
    fx.write("wp-content/uploads/late.php", b"<?php // late\n");
    let diag = || both_logs(&agent.proc, &collector.proc);
    let evs = wait_events(
        &site.db,
        "both events at the new collector",
        secs(20),
        diag,
        |evs| {
            !about(evs, "shop", "wp-content/uploads/early.php").is_empty()
                && !about(evs, "shop", "wp-content/uploads/late.php").is_empty()
        },
    );
    for p in [
        "wp-content/uploads/early.php",
        "wp-content/uploads/late.php",
    ] {
        let e = about(&evs, "shop", p);
        assert_eq!(e.len(), 1, "{p} must arrive exactly once: {e:#?}");
        assert_eq!(s(e[0], "status"), "unauthorized");
    }
}

/// A tree without a `manifest` path takes the signed manifest the collector holds for it, and
/// every agent takes the collector's change entries, uploaded with `manifest push` and
/// `changes add`: they judge the tree as local files would, and what arrives while the agent runs
/// is acted on without a restart. A tree baselined without a manifest is judged whole against
/// the first one that arrives.
#[test]
fn manifests_and_change_entries_come_from_the_collector() {
    let fx = Fx::new();
    fx.build_manifest();
    let site = remote_site(&fx);
    let admin = {
        let out = run([
            "token",
            "create",
            "--config",
            site.config.to_str().expect("utf-8"),
            "--role",
            "admin",
        ]);
        out.expect_code(0);
        let p = fx.base.join("collector/admin.token");
        std::fs::write(&p, out.stdout.trim()).expect("write token");
        p
    };
    let collector = Remote::start(&site.config);
    let remote = [
        OsStr::new("--collector"),
        OsStr::new(&site.url),
        OsStr::new("--token-file"),
        admin.as_os_str(),
    ];
    let push = run([
        OsStr::new("manifest"),
        OsStr::new("push"),
        fx.manifest.as_os_str(),
    ]
    .into_iter()
    .chain(remote));
    push.expect_code(0);
    assert!(push.stderr.contains("stored release"), "{}", push.stderr);

    // A second tree whose manifest reaches the collector only after the agent started.
    let blog = fx.base.join("blog");
    std::fs::create_dir_all(&blog).expect("mkdir");
    std::fs::write(blog.join("index.html"), "<h1>blog</h1>\n").expect("write");
    let blog_manifest = fx.base.join("blog.json");
    build_signed_manifest(&fx, &blog, "b1", "blog", &blog_manifest, &[]);
    std::fs::write(blog.join("backdoor.php"), "<?php eval($_POST['x']);\n").expect("write");

    let mut spec = AgentSpec::for_fx(&fx);
    spec.trees[0].manifest = None;
    spec.trees.push(TreeSpec {
        name: "blog".into(),
        root: blog.clone(),
        manifest: None,
        exclude: vec![],
    });
    spec.uplink = Uplink::Remote {
        url: site.url.clone(),
        token_file: site.agent_token.clone(),
    };
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    // There before the agent starts: judged against the fetched manifest, never baselined.
    fx.write(
        "wp-content/uploads/shell.php",
        b"<?php system($_GET['c']);\n",
    );
    let agent = Agent::start(&config);
    let diag = || both_logs(&agent.proc, &collector.proc);
    let evs = wait_events(&site.db, "the pre-existing shell", secs(20), diag, |evs| {
        !about(evs, "shop", "wp-content/uploads/shell.php").is_empty()
    });
    let shell = about(&evs, "shop", "wp-content/uploads/shell.php");
    assert_eq!(s(shell[0], "status"), "unauthorized", "{shell:#?}");
    assert!(
        about(&evs, "blog", "backdoor.php").is_empty(),
        "no manifest yet: the blog tree is a baseline"
    );

    // The blog's first manifest arrives: the backdoor that the baseline took in is reported.
    run([
        OsStr::new("manifest"),
        OsStr::new("push"),
        blog_manifest.as_os_str(),
    ]
    .into_iter()
    .chain(remote))
    .expect_code(0);
    let evs = wait_events(&site.db, "the baselined backdoor", secs(20), diag, |evs| {
        !about(evs, "blog", "backdoor.php").is_empty()
    });
    let backdoor = about(&evs, "blog", "backdoor.php");
    assert_eq!(backdoor.len(), 1, "{backdoor:#?}");
    assert_eq!(s(backdoor[0], "status"), "unauthorized", "{backdoor:#?}");
    assert!(
        about(&evs, "blog", "index.html").is_empty(),
        "approved: {evs:#?}"
    );

    // A ticket registered on the collector, signed by the CAB: the agent takes it and the
    // change it covers is authorized.
    let mut entry = common::Entry::new("CHG-900", &["wp-content/uploads/report.pdf"]);
    entry.approved_by = Some("bob".into());
    let file = fx.base.join("CHG-900.toml");
    std::fs::write(&file, entry.to_toml()).expect("write entry");
    common::sign(&file, &fx.cab.secret);
    run([
        OsStr::new("changes"),
        OsStr::new("add"),
        OsStr::new("--file"),
        file.as_os_str(),
    ]
    .into_iter()
    .chain(remote))
    .expect_code(0);
    let fetched = poll(secs(20), || {
        agent
            .proc
            .log()
            .lines()
            .any(|l| l.contains("fetched from the collector") && l.contains("entries=1"))
            .then_some(())
    });
    assert!(fetched.is_some(), "the entry was not fetched:\n{}", diag());
    fx.write("wp-content/uploads/report.pdf", b"%PDF quarterly report\n");
    let evs = wait_events(&site.db, "the ticketed upload", secs(20), diag, |evs| {
        !about(evs, "shop", "wp-content/uploads/report.pdf").is_empty()
    });
    let report = about(&evs, "shop", "wp-content/uploads/report.pdf");
    assert_eq!(s(report[0], "status"), "change:CHG-900", "{report:#?}");
    let kept = fx.base.join("state/fetched/changes/CHG-900.toml");
    let sig = PathBuf::from(format!("{}.minisig", kept.display()));
    assert!(
        kept.exists() && sig.exists(),
        "{} and its signature",
        kept.display()
    );
}

#[test]
fn remote_collector_down_then_back_gets_every_event_exactly_once() {
    let fx = Fx::new();
    fx.build_manifest();
    let site = remote_site(&fx);
    let mut spec = AgentSpec::for_fx(&fx);
    spec.uplink = Uplink::Remote {
        url: site.url.clone(),
        token_file: site.agent_token.clone(),
    };
    let config = fx.base.join("agent.toml");
    spec.write(&config);

    let mut collector = Remote::start(&site.config);
    assert_eq!(collector.url, site.url);
    let agent = Agent::start(&config);
    let mut paths = BTreeSet::new();

    // While the collector is up.
    fx.write("wp-content/uploads/before.php", b"<?php // before\n");
    paths.insert("wp-content/uploads/before.php".to_string());
    wait_events(
        &site.db,
        "the first event",
        secs(15),
        || agent.proc.log(),
        |evs| !about(evs, "shop", "wp-content/uploads/before.php").is_empty(),
    );

    // Collector down: changes made meanwhile are spooled.
    collector.proc.terminate();
    for i in 0..20 {
        let p = format!("wp-content/uploads/during{i}.php");
        fx.write(&p, format!("<?php // during {i}\n").as_bytes());
        paths.insert(p);
    }
    fx.append(
        "index.php",
        b"<?php // tampered while the collector was down\n",
    );
    paths.insert("index.php".to_string());
    let spooled = poll(secs(20), || {
        paths
            .iter()
            .all(|p| !agent.drift_lines(p).is_empty())
            .then_some(())
    });
    assert!(
        spooled.is_some(),
        "the agent did not observe every change while the collector was down; log:\n{}",
        agent.proc.log()
    );
    // Let it fail (and back off) at least twice.
    let failed = poll(secs(20), || {
        (agent.proc.log().matches("collector unreachable").count() >= 2).then_some(())
    });
    assert!(
        failed.is_some(),
        "no retries logged while the collector was down; log:\n{}",
        agent.proc.log()
    );

    // Collector back on the same address.
    let collector = Remote::start(&site.config);
    let diag = || both_logs(&agent.proc, &collector.proc);
    let evs = wait_events(
        &site.db,
        "every spooled event after the restart",
        secs(90),
        diag,
        |evs| paths.iter().all(|p| !about(evs, "shop", p).is_empty()),
    );
    assert_exactly_once(&evs, "shop", &paths, "unauthorized", &diag());
    // The same through the reader API.
    let api = events_api(&collector.url, &site.reader_token);
    assert_eq!(
        api.len(),
        evs.len(),
        "events over the API differ from the store:\n{api:#?}"
    );
}

// 3 ------------------------------------------------------------------------------------------

/// 20,000 small files in 40 dirs, with a signed manifest; then `n` web shells dropped and `n`
/// approved files modified before the agent first runs. Returns the changed paths.
fn big_tree_with_changes(fx: &Fx, n: usize) -> BTreeSet<String> {
    for d in 0..40 {
        make_files(&fx.root.join(format!("d{d}")), 500, &format!("d{d}-f"));
    }
    fx.build_manifest();
    let mut changed = BTreeSet::new();
    for i in 0..n {
        let shell = format!("d{}/s{i}.php", i % 40);
        fx.write(
            &shell,
            format!("<?php system($_GET['c{i}']); ?>\n").as_bytes(),
        );
        changed.insert(shell);
        let m = format!("d{}/d{}-f{}.txt", i % 40, i % 40, i);
        fx.append(&m, b"tampered\n");
        changed.insert(m);
    }
    changed
}

fn spool_log(state: &Path) -> PathBuf {
    state.join("spool").join("spool.log")
}

fn acked(state: &Path) -> u64 {
    std::fs::read_to_string(state.join("spool").join("spool.acked"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn sigkill_during_the_scan_loses_nothing_and_doubles_nothing() {
    let fx = Fx::empty();
    let changed = big_tree_with_changes(&fx, 60);
    let mut spec = AgentSpec::for_fx(&fx);
    spec.batch = Some(10);
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let mut notes = Vec::new();

    // Kill 1: as soon as the scan starts walking (the manifest was just put in force).
    let mut a = Agent::spawn(&config);
    a.proc
        .wait_line("start of the first scan", READY_TIMEOUT, |l| {
            l.contains("manifest in force")
        });
    a.proc.kill9();
    notes.push(format!(
        "kill 1: agent ready before the kill: {}",
        a.is_ready()
    ));
    let log1 = a.proc.log();
    drop(a);

    // Kill 2: as soon as the scan's events are in the spool (evidence and state not written yet).
    let mut a = Agent::spawn(&config);
    // The uplink may drain the spool within milliseconds: an acknowledgement or a logged event
    // shows the events were spooled just as well.
    let hit = poll(READY_TIMEOUT, || {
        (std::fs::metadata(spool_log(&spec.state_dir)).is_ok_and(|m| m.len() > 0)
            || spec.state_dir.join("spool/spool.acked").exists()
            || a.proc.log().contains(" drift ")
            || a.proc.exited().is_some())
        .then_some(())
    });
    assert!(
        hit.is_some(),
        "nothing was ever spooled; log:\n{}",
        a.proc.log()
    );
    a.proc.kill9();
    notes.push(format!(
        "kill 2: agent ready before the kill: {}",
        a.is_ready()
    ));
    let log2 = a.proc.log();
    drop(a);

    // Restart: runs to the end.
    let agent = Agent::start(&config);
    let diag = || {
        format!(
            "{}\n--- run 1 log:\n{log1}\n--- run 2 log:\n{log2}\n--- run 3 log:\n{}",
            notes.join("\n"),
            agent.proc.log()
        )
    };
    let evs = wait_events(
        &spec.db(),
        "every change after the restarts",
        secs(120),
        diag,
        |evs| changed.iter().all(|p| !about(evs, "shop", p).is_empty()),
    );
    // Let anything left in flight arrive before judging.
    let settled = poll(secs(30), || {
        let depth_zero = acked(&spec.state_dir)
            >= evs
                .iter()
                .filter_map(|e| e["seq"].as_u64())
                .max()
                .unwrap_or(0);
        depth_zero.then_some(())
    });
    assert!(settled.is_some(), "the spool never drained; {}", diag());
    let evs = events_db(&spec.db());
    assert_exactly_once(&evs, "shop", &changed, "unauthorized", &diag());
}

#[test]
fn sigkill_during_a_send_loses_nothing_and_doubles_nothing() {
    let st = Setup::with(|s| s.batch = Some(10));
    let state = st.spec.state_dir.clone();
    let mut a = Agent::start(&st.config);
    let mut changed = BTreeSet::new();
    for i in 0..300 {
        let p = format!("wp-content/uploads/x{i}.php");
        st.fx.write(&p, format!("<?php // {i}\n").as_bytes());
        changed.insert(p);
    }
    // Kill the moment the first batch is acknowledged: more batches are in flight or queued.
    let hit = poll(secs(120), || {
        (acked(&state) > 0 || a.proc.exited().is_some()).then_some(())
    });
    assert!(
        hit.is_some(),
        "nothing was ever acknowledged; log:\n{}",
        a.proc.log()
    );
    a.proc.kill9();
    let acked_at_kill = acked(&state);
    let log1 = a.proc.log();
    drop(a);

    let agent = Agent::start(&st.config);
    let diag = || {
        format!(
            "acked at kill: {acked_at_kill}\n--- run 1 log:\n{log1}\n--- run 2 log:\n{}",
            agent.proc.log()
        )
    };
    let evs = wait_events(
        &st.db(),
        "every change after the restart",
        secs(120),
        diag,
        |evs| changed.iter().all(|p| !about(evs, "shop", p).is_empty()),
    );
    let max = evs
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0);
    let settled = poll(secs(30), || (acked(&state) >= max).then_some(()));
    assert!(settled.is_some(), "the spool never drained; {}", diag());
    let evs = events_db(&st.db());
    assert_exactly_once(&evs, "shop", &changed, "unauthorized", &diag());
}

/// The same contract when the kill lands in the uplink only: the events are judged and the
/// state is saved while a remote collector is down; the agent is killed right after the
/// collector acknowledged the first batch of the backlog.
#[test]
fn sigkill_during_a_send_to_a_remote_collector_loses_nothing_and_doubles_nothing() {
    let fx = Fx::new();
    fx.build_manifest();
    let site = remote_site(&fx);
    let mut spec = AgentSpec::for_fx(&fx);
    spec.uplink = Uplink::Remote {
        url: site.url.clone(),
        token_file: site.agent_token.clone(),
    };
    spec.batch = Some(10);
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let state = spec.state_dir.clone();

    let mut collector = Remote::start(&site.config);
    let mut a = Agent::start(&config);
    collector.proc.terminate();
    let mut changed = BTreeSet::new();
    for i in 0..300 {
        let p = format!("wp-content/uploads/y{i}.php");
        fx.write(&p, format!("<?php // {i}\n").as_bytes());
        changed.insert(p);
    }
    let judged = poll(secs(120), || {
        changed
            .iter()
            .all(|p| !a.drift_lines(p).is_empty())
            .then_some(())
    });
    assert!(
        judged.is_some(),
        "the agent did not judge every change; log:\n{}",
        a.proc.log()
    );
    let failed = poll(secs(30), || {
        a.proc.logged("collector unreachable").then_some(())
    });
    assert!(
        failed.is_some(),
        "no failed send logged; log:\n{}",
        a.proc.log()
    );
    // The pass that logged the last event saves the state right after: give it a moment.
    std::thread::sleep(Duration::from_secs(1));
    let before = acked(&state);
    assert_eq!(
        before, 0,
        "nothing can be acknowledged while the collector is down"
    );

    let collector = Remote::start(&site.config);
    let deadline = Instant::now() + secs(90);
    while acked(&state) == 0 && a.proc.exited().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    a.proc.kill9();
    let acked_at_kill = acked(&state);
    assert!(
        acked_at_kill > 0,
        "the backlog was never sent; log:\n{}",
        a.proc.log()
    );
    eprintln!("killed with {acked_at_kill} of 300+ events acknowledged");
    let log1 = a.proc.log();
    drop(a);

    let agent = Agent::start(&config);
    let diag = || {
        format!(
            "acked at kill: {acked_at_kill}\n--- run 1 log:\n{log1}\n--- run 2 log:\n{}\n--- collector log:\n{}",
            agent.proc.log(),
            collector.proc.log()
        )
    };
    let evs = wait_events(
        &site.db,
        "every change after the restart",
        secs(120),
        diag,
        |evs| changed.iter().all(|p| !about(evs, "shop", p).is_empty()),
    );
    let max = evs
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0);
    let settled = poll(secs(30), || (acked(&state) >= max).then_some(()));
    assert!(settled.is_some(), "the spool never drained; {}", diag());
    let evs = events_db(&site.db);
    assert_exactly_once(&evs, "shop", &changed, "unauthorized", &diag());
}

// 4 ------------------------------------------------------------------------------------------

#[test]
fn event_flood_beyond_the_inotify_queue_ends_in_a_correct_state() {
    const N: usize = 50_000;
    let fx = Fx::new();
    std::fs::create_dir_all(fx.path("flood")).expect("mkdir flood");
    fx.build_manifest();
    let mut spec = AgentSpec::for_fx(&fx);
    // Evidence of 50,000 distinct files is not what this test is about.
    spec.extra = "\n[evidence]\nenabled = false\n".into();
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let agent = Agent::start(&config);

    // Stop the agent so nobody drains the kernel queue: the flood must overflow it, whatever the
    // machine's fs.inotify.max_queued_events (not changed here).
    let queue: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16_384);
    assert!(
        N * 2 > queue,
        "the flood ({N} files) must exceed the inotify queue ({queue})"
    );
    let t = Instant::now();
    agent.proc.signal(libc::SIGSTOP);
    make_files(&fx.path("flood"), N, "f");
    agent.proc.signal(libc::SIGCONT);
    eprintln!("flood: {N} files made in {:?}", t.elapsed());

    let paths: BTreeSet<String> = (0..N).map(|i| format!("flood/f{i}.txt")).collect();
    let spooled = poll(secs(300), || {
        let log = agent.proc.log();
        (log.matches(" drift ").count() >= N).then_some(())
    });
    assert!(
        spooled.is_some(),
        "the agent did not observe {N} new files; {} drift lines; log tail:\n{}",
        agent.proc.log().matches(" drift ").count(),
        tail(&agent.proc.log(), 30)
    );
    eprintln!("flood: all observed after {:?}", t.elapsed());
    let log = agent.proc.log();
    assert!(
        log.contains("real-time events lost"),
        "the queue overflow was not noticed (no `real-time events lost` line):\n{}",
        tail(&log, 30)
    );
    let mut evs = Vec::new();
    let all = poll_every(secs(300), secs(2), || {
        evs = events_db(&spec.db());
        (evs.len() >= N).then_some(())
    });
    assert!(
        all.is_some(),
        "only {} of {N} events reached the collector; log tail:\n{}",
        evs.len(),
        tail(&agent.proc.log(), 30)
    );
    let log = agent.proc.log();
    eprintln!(
        "flood: all at the collector after {:?}; {} full scans, {} overflow notices",
        t.elapsed(),
        log.matches("scan finished").count(),
        log.matches("real-time events lost").count()
    );
    // Nothing more arrives afterwards (no late duplicates).
    std::thread::sleep(Duration::from_millis(1500));
    let evs = events_db(&spec.db());
    assert_exactly_once(
        &evs,
        "shop",
        &paths,
        "unauthorized",
        &tail(&agent.proc.log(), 30),
    );
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn poll_every<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

// 5 ------------------------------------------------------------------------------------------

#[test]
fn sighup_adds_a_tree_and_its_writes_are_reported() {
    let mut st = Setup::new();
    let mut agent = Agent::start(&st.config);

    let blog = st.fx.base.join("blog");
    std::fs::create_dir_all(blog.join("posts")).expect("mkdir");
    std::fs::write(blog.join("index.html"), "<h1>blog</h1>\n").expect("write");
    std::fs::write(blog.join("posts/1.html"), "<p>one</p>\n").expect("write");
    let blog_manifest = st.fx.base.join("blog.json");
    build_signed_manifest(&st.fx, &blog, "b1", "blog", &blog_manifest, &[]);
    st.spec.trees.push(TreeSpec {
        name: "blog".into(),
        root: blog.clone(),
        manifest: Some(blog_manifest),
        exclude: vec![],
    });
    st.spec.write(&st.config);
    run([
        OsStr::new("config"),
        OsStr::new("check"),
        OsStr::new("--config"),
        st.config.as_os_str(),
    ])
    .expect_code(0);

    agent.proc.signal(libc::SIGHUP);
    agent
        .proc
        .wait_line("reload", secs(20), |l| l.contains("config reloaded"));
    agent
        .proc
        .wait_line("first scan of the new tree", secs(30), |l| {
            l.contains("scan finished") && l.contains("tree=\"blog\"")
        });
    assert!(
        agent.proc.exited().is_none(),
        "the agent died on SIGHUP; log:\n{}",
        agent.proc.log()
    );

    std::fs::write(
        blog.join("posts/shell.php"),
        "<?php passthru($_GET['c']);\n",
    )
    .expect("write");
    let evs = wait_events(
        &st.db(),
        "event in the added tree",
        secs(10),
        || agent.proc.log(),
        |evs| !about(evs, "blog", "posts/shell.php").is_empty(),
    );
    let ev = about(&evs, "blog", "posts/shell.php")[0];
    assert_eq!(s(ev, "status"), "unauthorized", "{ev:#}");
    assert!(
        about(&evs, "blog", "index.html").is_empty(),
        "the new tree's approved files must not be reported: {evs:#?}"
    );

    // The first tree is still watched after the reload.
    st.fx.write("app/after-hup.php", b"<?php // x\n");
    wait_events(
        &st.db(),
        "event in the first tree after the reload",
        secs(10),
        || agent.proc.log(),
        |evs| !about(evs, "shop", "app/after-hup.php").is_empty(),
    );
}

// 6 ------------------------------------------------------------------------------------------

/// Release r2 of the standard tree: `app/checkout.js` changed, `app/new.js` added,
/// `app/lib/util.js` removed.
const CHECKOUT_V2: &[u8] = b"function pay(total) { return Math.round(total * 100 + 0.5) / 100; }\n";
const NEW_JS: &[u8] = b"export const version = 2;\n";
const DEPLOYED: [&str; 3] = ["app/checkout.js", "app/new.js", "app/lib/util.js"];

/// The release pipeline builds r2 from an updated copy of the tree (created_at one second later
/// than r1's: it has whole seconds); returns the signed manifest.
fn build_r2(fx: &Fx) -> PathBuf {
    let next = fx.base.join("next");
    copy_tree(&fx.root, &next);
    std::fs::write(next.join("app/checkout.js"), CHECKOUT_V2).expect("write");
    std::fs::write(next.join("app/new.js"), NEW_JS).expect("write");
    std::fs::remove_file(next.join("app/lib/util.js")).expect("rm");
    std::thread::sleep(Duration::from_millis(1100));
    let m2 = fx.base.join("m2.json");
    build_signed_manifest(fx, &next, "r2", "shop", &m2, &[]);
    m2
}

/// What lies in the fetched directory counts only when signed by a key the agent trusts, even
/// where the agent takes local tickets unsigned (`require_signatures = false`, no approver
/// keys): a collector cannot authorize anything on its own.
#[test]
fn an_unsigned_ticket_from_the_collector_authorizes_nothing() {
    let st = Setup::with(|s| s.approver_keys.clear());
    let text = st
        .spec
        .to_toml()
        .replace("[trust]\n", "[trust]\nrequire_signatures = false\n");
    std::fs::write(&st.config, text).expect("write config");
    let ticket = |id: &str, path: &str| common::Entry::new(id, &[path]).to_toml();
    st.fx.write_entry_text(
        "CHG-LOCAL",
        &ticket("CHG-LOCAL", "wp-content/uploads/local.php"),
    );
    let fetched = st.spec.state_dir.join("fetched/changes");
    std::fs::create_dir_all(&fetched).expect("mkdir");
    std::fs::write(
        fetched.join("CHG-EVIL.toml"),
        ticket("CHG-EVIL", "wp-content/uploads/evil.php"),
    )
    .expect("write");
    st.fx
        .write("wp-content/uploads/local.php", b"<?php // ticketed\n");
    st.fx
        .write("wp-content/uploads/evil.php", b"<?php eval($_POST['x']);\n");
    let out = st.scan();
    let evs = events_db(&st.db());
    let status = |p: &str| {
        let found = about(&evs, "shop", p);
        assert_eq!(found.len(), 1, "{p}: {found:#?}\n{}", out.stderr);
        s(found[0], "status").to_string()
    };
    assert_eq!(status("wp-content/uploads/local.php"), "change:CHG-LOCAL");
    assert_eq!(status("wp-content/uploads/evil.php"), "unauthorized");
}

/// A crash in the middle of a deploy: the new manifest was already copied into the state dir
/// when the agent died, its state not yet saved. At the next start the state's release is still
/// in force, so the new manifest comes into force again as the deploy it is: its files are
/// `release:r2`, and the release reported is r2.
#[test]
fn a_crash_during_a_deploy_still_records_the_deploy() {
    let st = Setup::new();
    st.scan().expect_code(0);
    let m2 = build_r2(&st.fx);
    deploy_r2_files(&st.fx);
    publish_manifest(&st.fx, &m2);
    // What the agent had written before dying: the manifest copy, not the state that follows it.
    let kept = st.spec.state_dir.join("trees/shop/manifest.json");
    std::fs::copy(&m2, &kept).expect("copy into the state dir");
    let out = st.scan();
    let r = out.json();
    assert_eq!(r[0]["release"], "r2", "{r:#}");
    let evs = events_db(&st.db());
    for p in DEPLOYED {
        let found = about(&evs, "shop", p);
        assert_eq!(found.len(), 1, "{p}: {evs:#?}");
        assert_eq!(s(found[0], "status"), "release:r2", "{found:#?}");
    }
}

/// The agent's and the collector's logs, for a failure message.
fn both_logs(agent: &Proc, collector: &Proc) -> String {
    format!(
        "--- agent log:\n{}\n--- collector log:\n{}",
        agent.log(),
        collector.log()
    )
}

/// Publishes a manifest at the configured path (signature, then manifest, each by rename).
fn publish_manifest(fx: &Fx, m2: &Path) {
    let sig = |p: &Path| PathBuf::from(format!("{}.minisig", p.display()));
    let staging = fx.base.join("staging-manifest");
    std::fs::create_dir_all(&staging).expect("mkdir");
    std::fs::copy(sig(m2), staging.join("m.minisig")).expect("copy");
    std::fs::copy(m2, staging.join("m.json")).expect("copy");
    std::fs::rename(staging.join("m.minisig"), sig(&fx.manifest)).expect("rename");
    std::fs::rename(staging.join("m.json"), &fx.manifest).expect("rename");
}

/// Deploys r2's files into the tree (each moved in by rename from a staging dir outside it).
fn deploy_r2_files(fx: &Fx) {
    let staging = fx.base.join("staging-files");
    std::fs::create_dir_all(&staging).expect("mkdir");
    std::fs::write(staging.join("checkout.js"), CHECKOUT_V2).expect("write");
    std::fs::write(staging.join("new.js"), NEW_JS).expect("write");
    std::fs::rename(staging.join("checkout.js"), fx.path("app/checkout.js")).expect("rename");
    std::fs::rename(staging.join("new.js"), fx.path("app/new.js")).expect("rename");
    std::fs::remove_file(fx.path("app/lib/util.js")).expect("rm");
}

fn describe(evs: &[&Value]) -> Vec<String> {
    evs.iter()
        .map(|e| {
            format!(
                "{}: {} {} (now {}, open {})",
                s(e, "path"),
                s(e, "change"),
                s(e, "original_status"),
                s(e, "status"),
                e["open"]
            )
        })
        .collect()
}

#[test]
fn deploying_a_new_signed_manifest_yields_release_events_only() {
    let st = Setup::new();
    let agent = Agent::start(&st.config);
    let m2 = build_r2(&st.fx);
    // The pipeline publishes the manifest first, then deploys the files.
    publish_manifest(&st.fx, &m2);
    deploy_r2_files(&st.fx);

    let evs = wait_events(
        &st.db(),
        "events for the deployed paths",
        secs(15),
        || agent.proc.log(),
        |evs| DEPLOYED.iter().all(|p| !about(evs, "shop", p).is_empty()),
    );
    let wrong: Vec<&Value> = evs
        .iter()
        .filter(|e| DEPLOYED.contains(&s(e, "path")) && s(e, "original_status") != "release:r2")
        .collect();
    let unauthorized: Vec<&Value> = evs
        .iter()
        .filter(|e| s(e, "original_status") == "unauthorized" || s(e, "status") == "unauthorized")
        .collect();
    assert!(
        wrong.is_empty() && unauthorized.is_empty(),
        "a deploy matching its signed manifest must give release:r2 events only\n  not release:r2: {:#?}\n  unauthorized: {:#?}\n--- agent log:\n{}",
        describe(&wrong),
        describe(&unauthorized),
        agent.proc.log()
    );
}

/// Extra (DESIGN §6: an unauthorized change stays open "until the path returns to its approved
/// state"): files that land before their signed manifest are unauthorized at first, and must
/// close once the manifest that approves exactly them comes into force (here at the next
/// scheduled scan).
#[test]
fn open_changes_close_when_a_newer_manifest_approves_them() {
    let st = Setup::with(|s| s.interval = "2s".into());
    let agent = Agent::start(&st.config);
    let m2 = build_r2(&st.fx);
    deploy_r2_files(&st.fx);
    wait_events(
        &st.db(),
        "unauthorized events for files deployed ahead of their manifest",
        secs(15),
        || agent.proc.log(),
        |evs| {
            DEPLOYED
                .iter()
                .all(|p| about(evs, "shop", p).iter().any(|e| e["open"] == true))
        },
    );
    publish_manifest(&st.fx, &m2);
    let mut last = Vec::new();
    let closed = poll(secs(20), || {
        last = events_db(&st.db());
        DEPLOYED
            .iter()
            .all(|p| about(&last, "shop", p).iter().all(|e| e["open"] == false))
            .then_some(())
    });
    let still_open: Vec<&Value> = last.iter().filter(|e| e["open"] == true).collect();
    assert!(
        closed.is_some(),
        "r2 is in force and the files match it, yet these stay open unauthorized:\n{:#?}\n--- agent log:\n{}",
        describe(&still_open),
        agent.proc.log()
    );
}

// 7 ------------------------------------------------------------------------------------------

#[test]
fn a_reverted_unauthorized_change_closes() {
    let st = Setup::new();
    let mut agent = Agent::start(&st.config);
    let path = "index.php";
    let original = std::fs::read(st.fx.path(path)).expect("read");

    st.fx
        .write(path, b"<?php eval(base64_decode($_GET['p'])); ?>\n");
    let evs = wait_events(
        &st.db(),
        "an open unauthorized event",
        secs(10),
        || agent.proc.log(),
        |evs| {
            about(evs, "shop", path)
                .iter()
                .any(|e| s(e, "status") == "unauthorized" && e["open"] == true)
        },
    );
    let seq = about(&evs, "shop", path)[0]["seq"].clone();

    st.fx.write(path, &original);
    let evs = wait_events(
        &st.db(),
        "the event closed after the revert",
        secs(10),
        || agent.proc.log(),
        |evs| about(evs, "shop", path).iter().all(|e| e["open"] == false),
    );
    let mine = about(&evs, "shop", path);
    assert_eq!(
        mine.len(),
        1,
        "the revert must close the event, not add a counted one: {mine:#?}"
    );
    assert_eq!(mine[0]["seq"], seq, "{mine:#?}");
    assert_eq!(
        s(mine[0], "original_status"),
        "unauthorized",
        "history keeps what was seen: {:#}",
        mine[0]
    );

    agent.proc.terminate();
    let out = st.scan();
    out.expect_code(0);
    let open = open_in_scan(&out.json(), "shop");
    assert!(
        open.is_empty(),
        "a scan after the revert reports open unauthorized paths: {open:?}\n{}",
        out.stdout
    );
}

// 8 ------------------------------------------------------------------------------------------

#[test]
fn a_write_put_back_between_two_scans_is_caught_in_real_time() {
    let st = Setup::new();
    let agent = Agent::start(&st.config);
    let path = "app/boot.php";
    let original = std::fs::read(st.fx.path(path)).expect("read");
    let evil = b"<?php // boot\nfile_put_contents('/tmp/x', $_POST['d']);\n";

    // Scans are an hour apart: only real time can see this. Held for 1 s (the real-time target).
    st.fx.write(path, evil);
    std::thread::sleep(Duration::from_secs(1));
    st.fx.write(path, &original);
    assert_eq!(std::fs::read(st.fx.path(path)).expect("read"), original);

    let evs = wait_events(
        &st.db(),
        "the transient write, reported then closed",
        secs(10),
        || agent.proc.log(),
        |evs| {
            let mine = about(evs, "shop", path);
            !mine.is_empty() && mine.iter().all(|e| e["open"] == false)
        },
    );
    let mine = about(&evs, "shop", path);
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!(
        s(mine[0], "original_status"),
        "unauthorized",
        "{:#}",
        mine[0]
    );
    assert_eq!(s(mine[0], "change"), "modified", "{:#}", mine[0]);
    assert_eq!(
        s(mine[0], "blake3"),
        blake3_hex(evil),
        "the event must carry the hash of what was written: {:#}",
        mine[0]
    );
}

// 9 ------------------------------------------------------------------------------------------

/// More changes at once than the spool can hold: the agent counts the drops and, as soon as the
/// spool has drained, resyncs with a full scan, so every change reaches the collector once,
/// long before the next scheduled scan (an hour away here).
#[test]
fn changes_beyond_a_full_spool_arrive_after_the_resync() {
    let st = Setup::with(|s| s.extra = "\n[spool]\nmax_size = \"2KiB\"\n".into());
    let agent = Agent::start(&st.config);
    let mut changed = BTreeSet::new();
    for i in 0..30 {
        let p = format!("wp-content/uploads/burst{i:02}.php");
        st.fx.write(&p, format!("<?php // {i}\n").as_bytes());
        changed.insert(p);
    }
    wait_events(
        &st.db(),
        "every change of the burst",
        secs(30),
        || agent.proc.log(),
        |evs| changed.iter().all(|p| !about(evs, "shop", p).is_empty()),
    );
    assert!(
        agent.proc.logged("spool full: events dropped"),
        "the burst was meant to overflow the spool:\n{}",
        agent.proc.log()
    );
    assert!(
        agent.proc.logged("full scan to resync"),
        "{}",
        agent.proc.log()
    );
    let evs = events_db(&st.db());
    assert_exactly_once(&evs, "shop", &changed, "unauthorized", &agent.proc.log());
}

/// The first manifest of a baselined tree is judged whole even when the spool cannot take it all
/// at once: the scans that follow report what did not fit, and every path exactly once.
#[test]
fn a_first_manifest_after_a_baseline_is_judged_whole_across_a_full_spool() {
    let mut st = Setup::with(|s| {
        s.extra = "\n[spool]\nmax_size = \"2KiB\"\n".into();
        s.trees[0].manifest = None;
    });
    st.spec.write(&st.config);
    let planted: Vec<String> = (0..12)
        .map(|i| format!("wp-content/uploads/planted{i:02}.php"))
        .collect();
    for p in &planted {
        st.fx.write(p, format!("<?php // {p}\n").as_bytes());
    }
    // No manifest: the baseline takes everything in, silently.
    let out = st.scan();
    assert!(
        open_in_scan(&out.json(), "shop").is_empty(),
        "{}",
        out.stdout
    );
    st.spec.trees[0].manifest = Some(st.fx.manifest.clone());
    st.spec.write(&st.config);
    let mut dropped_once = false;
    for _ in 0..12 {
        let r = st.scan().json();
        let dropped = r[0]["dropped"].as_u64().expect("dropped");
        dropped_once |= dropped > 0;
        if dropped == 0 {
            break;
        }
    }
    assert!(
        dropped_once,
        "the spool was meant to overflow at least once"
    );
    let evs = events_db(&st.db());
    for p in &planted {
        let found = about(&evs, "shop", p);
        assert_eq!(
            found.len(),
            1,
            "{p} must be reported exactly once: {evs:#?}"
        );
        assert_eq!(s(found[0], "status"), "unauthorized", "{found:#?}");
    }
    let out = st.scan();
    let open = open_in_scan(&out.json(), "shop");
    assert_eq!(open.len(), planted.len(), "{}", out.stdout);
}

#[test]
fn scan_reports_drift_in_json_and_rebuilds_a_corrupt_state() {
    let st = Setup::new();
    let out = st.scan();
    out.expect_code(0);
    assert!(
        open_in_scan(&out.json(), "shop").is_empty(),
        "{}",
        out.stdout
    );

    let shell = "wp-content/uploads/shell.php";
    st.fx.write(shell, b"<?php @eval($_REQUEST['z']); ?>\n");
    let out = st.scan();
    out.expect_code(1);
    let report = out.json();
    assert_eq!(
        open_in_scan(&report, "shop"),
        vec![shell.to_string()],
        "{report:#}"
    );
    let listed = report[0]["events"]
        .as_array()
        .expect("events")
        .iter()
        .any(|e| e["path"] == shell && e["status"] == "unauthorized");
    assert!(listed, "the scan's events must list {shell}:\n{report:#}");
    let evs = events_db(&st.db());
    assert_eq!(
        about(&evs, "shop", shell).len(),
        1,
        "the scan delivers its events: {evs:#?}"
    );

    // Corrupt state on purpose: a clear log line and a rebuild, never a panic.
    let tree_state = st.spec.state_dir.join("trees").join("shop");
    std::fs::write(tree_state.join("state.json"), b"\x00garbage{{{ not json").expect("write");
    std::fs::write(
        tree_state.join("snapshot.bin"),
        b"DWSNAP1\ngarbage garbage garbage garbage garbage",
    )
    .expect("write");
    let out = st.scan();
    out.expect_code(1);
    assert!(
        out.stderr.lines().any(|l| l.contains("state.json")
            && (l.contains("unreadable") || l.contains("rebuil") || l.contains("re-baselin"))),
        "no clear log line naming the corrupt state file:\n{}",
        out.stderr
    );
    assert_eq!(
        open_in_scan(&out.json(), "shop"),
        vec![shell.to_string()],
        "the rebuilt state must still see the shell:\n{}",
        out.stdout
    );
    // The rebuilt state is saved: the next scan reads it without complaint.
    let out = st.scan();
    out.expect_code(1);
    assert!(
        !out.stderr.contains("unreadable"),
        "state not rebuilt on disk:\n{}",
        out.stderr
    );

    // A corrupt snapshot alone.
    std::fs::write(tree_state.join("snapshot.bin"), b"not a snapshot").expect("write");
    let out = st.scan();
    out.expect_code(1);
    assert!(
        out.stderr.lines().any(|l| l.contains("snapshot.bin")),
        "no log line naming the corrupt snapshot:\n{}",
        out.stderr
    );

    // Clean-up: back to exit 0.
    std::fs::remove_file(st.fx.path(shell)).expect("rm");
    let out = st.scan();
    out.expect_code(0);
    assert!(
        open_in_scan(&out.json(), "shop").is_empty(),
        "{}",
        out.stdout
    );
}

// 10 -----------------------------------------------------------------------------------------

#[test]
fn config_check_lists_every_problem_at_once() {
    let st = Setup::new();
    let out = run([
        OsStr::new("config"),
        OsStr::new("check"),
        OsStr::new("--config"),
        st.config.as_os_str(),
    ]);
    out.expect_code(0);

    let mut spec = st.spec.clone();
    spec.trees[0].root = st.fx.base.join("no-such-root");
    let text = spec
        .to_toml()
        .replacen("state_dir = ", "colour = \"red\"\nstate_dir = ", 1)
        .replacen("interval = \"1h\"", "interval = \"soon\"", 1);
    assert!(
        text.contains("colour") && text.contains("\"soon\""),
        "fixture edit failed:\n{text}"
    );
    let bad = st.fx.base.join("bad.toml");
    std::fs::write(&bad, text).expect("write");
    let out = run([
        OsStr::new("config"),
        OsStr::new("check"),
        OsStr::new("--config"),
        bad.as_os_str(),
    ]);
    out.expect_code(2);
    assert!(
        out.stdout.is_empty(),
        "no verdict on stdout for a bad config:\n{}",
        out.stdout
    );
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("driftwatch: error: "))
        .collect();
    let file = bad.to_str().expect("utf-8");
    for l in &errors {
        assert!(
            l.contains(file) || l.contains("bad.toml"),
            "error line does not name the file: {l:?}"
        );
    }
    let mut missing = Vec::new();
    for (what, key) in [
        ("unknown key", "colour"),
        ("missing root", "root"),
        ("bad duration", "interval"),
    ] {
        if !errors.iter().any(|l| l.contains(key)) {
            missing.push(format!("{what} (`{key}`)"));
        }
    }
    assert!(
        missing.is_empty(),
        "config check must list every problem at once; not reported: {missing:?}\nstderr:\n{}",
        out.stderr
    );
}

// 11 -----------------------------------------------------------------------------------------

#[test]
fn sigterm_exits_zero_promptly() {
    let st = Setup::new();
    let mut agent = Agent::start(&st.config);
    st.fx
        .write("wp-content/uploads/late.php", b"<?php // late\n");
    wait_events(
        &st.db(),
        "the event",
        secs(10),
        || agent.proc.log(),
        |evs| !about(evs, "shop", "wp-content/uploads/late.php").is_empty(),
    );
    let took = agent.proc.terminate();
    assert!(took <= secs(5), "SIGTERM → exit took {took:?}");
    // The state dir lock is released: a scan can run right away.
    st.scan().expect_code(1);
}

// 12 -----------------------------------------------------------------------------------------

#[test]
fn evidence_of_an_unauthorized_added_file_is_kept() {
    let st = Setup::new();
    let agent = Agent::start(&st.config);
    let path = "wp-content/uploads/cmd.php";
    let content = b"<?php system($_GET['cmd']); // evidence\n";
    st.fx.write(path, content);
    let evs = wait_events(
        &st.db(),
        "the event",
        secs(10),
        || agent.proc.log(),
        |evs| !about(evs, "shop", path).is_empty(),
    );
    let hash = blake3_hex(content);
    assert_eq!(s(about(&evs, "shop", path)[0], "blake3"), hash);

    let blob = st.spec.state_dir.join("evidence").join("blobs").join(&hash);
    let kept = poll(secs(10), || blob.is_file().then_some(()));
    assert!(
        kept.is_some(),
        "no evidence blob at {}; log:\n{}",
        blob.display(),
        agent.proc.log()
    );
    // The attacker cleans up: the evidence stays.
    std::fs::remove_file(st.fx.path(path)).expect("rm");
    assert_eq!(
        std::fs::read(&blob).expect("read blob"),
        content,
        "evidence must be the exact content"
    );
}

// Extra --------------------------------------------------------------------------------------

/// Extra (DESIGN §9 real time; §11 p99 < 1 s): a burst of unauthorized files (each one copied
/// as evidence) must not blind the agent to the next change for long. The bound (10 s) is ten
/// times the real-time target, so this is not a benchmark: it fails only when the agent stalls.
#[test]
fn real_time_stays_responsive_after_a_burst_of_unauthorized_files() {
    const N: usize = 5_000;
    let st = Setup::new();
    let agent = Agent::start(&st.config);
    make_files(&st.fx.path("wp-content/uploads/dump"), N, "leak");
    // The burst is being handled once its first events are logged.
    let started = poll(secs(60), || {
        (agent.proc.log().matches(" drift ").count() > 0).then_some(())
    });
    assert!(
        started.is_some(),
        "the burst was never observed; log:\n{}",
        agent.proc.log()
    );

    let t = Instant::now();
    st.fx.append("index.php", b"<?php // and one more\n");
    let mut last = 0;
    let seen = poll(secs(10), || {
        let evs = events_db(&st.db());
        last = evs.len();
        (!about(&evs, "shop", "index.php").is_empty()).then_some(())
    });
    assert!(
        seen.is_some(),
        "a write made just after a burst of {N} files was not reported within 10 s ({last} events recorded by then; \
         {} drift lines logged); log tail:\n{}",
        agent.proc.log().matches(" drift ").count(),
        tail(&agent.proc.log(), 8)
    );
    eprintln!("write after the burst reported in {:?}", t.elapsed());
}

// Coverage (DESIGN §12.1) ---------------------------------------------------------------------

/// `GET PATH` over HTTP/1.0 (so the answer is never chunked): status and body.
fn http_get(base: &str, path: &str, token_file: &Path) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let token = std::fs::read_to_string(token_file).expect("token file");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(secs(30))).expect("timeout");
    write!(
        s,
        // The API takes the bearer token, the dashboard its sign-in cookie.
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\nCookie: dw_token={t}\r\n\r\n",
        t = token.trim()
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, body.to_string())
}

/// Runs an agent whose tree's manifest excludes `var/cache/**` and whose config excludes
/// `config_exclude`, against a real collector; returns its `GET /api/v1/hosts` row once the
/// heartbeat reported the manifest's exclusions, and the dashboard HTML.
fn coverage_seen(fx: &Fx, config_exclude: &[&str]) -> (Value, String, Agent, Remote, RemoteSite) {
    fx.build_manifest_to(&fx.manifest, &["--exclude", "var/cache/**"]);
    let site = remote_site(fx);
    let mut spec = AgentSpec::for_fx(fx);
    spec.trees[0].exclude = config_exclude.iter().map(|g| g.to_string()).collect();
    spec.uplink = Uplink::Remote {
        url: site.url.clone(),
        token_file: site.agent_token.clone(),
    };
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let collector = Remote::start(&site.config);
    let agent = Agent::start(&config);
    let host = poll(secs(20), || {
        let (status, body) = http_get(&site.url, "/api/v1/hosts", &site.reader_token);
        assert_eq!(status, 200, "{body}");
        let hosts: Value = serde_json::from_str(&body).expect("hosts JSON");
        let h = hosts
            .as_array()?
            .iter()
            .find(|h| h["host"] == HOST)?
            .clone();
        // The manifest in force has been reported (its exclusion is among the effective ones).
        let tree = h["trees"].as_array()?.first()?;
        tree["exclude"]
            .as_array()?
            .contains(&Value::from("var/cache/**"))
            .then_some(h)
    })
    .unwrap_or_else(|| {
        panic!(
            "no heartbeat with the manifest's exclusions\n{}",
            both_logs(&agent.proc, &collector.proc)
        )
    });
    let (status, html) = http_get(&site.url, "/", &site.reader_token);
    assert_eq!(status, 200, "{html}");
    (host, html, agent, collector, site)
}

/// A host that excludes more than its manifest reports it in every heartbeat; the collector
/// lists it per host and tree and marks the host's dashboard row.
#[test]
fn local_exclusions_beyond_the_manifest_are_a_coverage_reduction() {
    let fx = Fx::new();
    let (h, html, _agent, _collector, _site) =
        coverage_seen(&fx, &["var/cache/**", "wp-content/uploads/**"]);
    assert_eq!(h["coverage_reduced"], true, "{h:#}");
    assert_eq!(
        h["trees"],
        serde_json::json!([{
            "tree": "shop",
            "exclude": ["var/cache/**", "wp-content/uploads/**"],
            "local_exclude": ["wp-content/uploads/**"],
            "coverage_reduced": true,
        }]),
        "{h:#}"
    );
    let digest = h["config_digest"].as_str().expect("config_digest");
    assert_eq!(digest.len(), 64, "{digest}");
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{digest}");
    let row = html
        .split("<tr>")
        .find(|r| r.contains(&format!("<td>{HOST}")))
        .unwrap_or_else(|| panic!("no dashboard row for {HOST}:\n{html}"));
    assert!(
        row.contains("coverage reduced: shop: wp-content/uploads/**"),
        "the host row must show the reduction: {row}"
    );
}

/// A host whose config excludes nothing beyond the manifest has no reduction, and the
/// manifest's exclusions apply in the agent although its config names none.
#[test]
fn manifest_exclusions_apply_in_the_agent_without_reducing_coverage() {
    let fx = Fx::new();
    let (h, html, agent, collector, site) = coverage_seen(&fx, &[]);
    assert_eq!(h["coverage_reduced"], false, "{h:#}");
    assert_eq!(
        h["trees"][0]["exclude"],
        serde_json::json!(["var/cache/**"]),
        "{h:#}"
    );
    assert_eq!(
        h["trees"][0]["local_exclude"],
        serde_json::json!([]),
        "{h:#}"
    );
    assert!(!html.contains("coverage reduced"), "{html}");

    fx.write("var/cache/fresh.html", b"<html>fresh</html>\n");
    fx.write(
        "wp-content/uploads/shell.php",
        b"<?php system($_GET['c']);\n",
    );
    let evs = wait_events(
        &site.db,
        "the shell's event",
        secs(20),
        || both_logs(&agent.proc, &collector.proc),
        |evs| !about(evs, "shop", "wp-content/uploads/shell.php").is_empty(),
    );
    assert_eq!(
        s(
            about(&evs, "shop", "wp-content/uploads/shell.php")[0],
            "status"
        ),
        "unauthorized"
    );
    assert!(
        evs.iter().all(|e| !s(e, "path").starts_with("var/cache")),
        "the manifest excludes var/cache: {evs:#?}"
    );
    assert!(
        agent.drift_lines("var/cache/fresh.html").is_empty(),
        "{}",
        agent.proc.log()
    );
}
