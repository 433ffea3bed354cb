//! The PostgreSQL store against a real server (DESIGN §3: a fleet's collectors share one
//! PostgreSQL database).
//!
//! The server comes from `DRIFTWATCH_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/test`,
//! the local server with trust auth). Each test creates its own database `dw_test_*` and drops it
//! at the end, so tests run in parallel. An unreachable server FAILS every test with a message
//! saying so: these tests are never skipped silently.
//!
//! The same scenario runs against SQLite and PostgreSQL with the same inputs and timestamps, and
//! everything the `Store` trait returns must be equal, chain heads included.

mod collector_common;
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::{Value, json};

use collector_common::{Collector, batch, simple_events, toml_str};
use driftwatch::event::{ChangeEvent, EventBatch, Heartbeat, IngestResult, ScanSummary};
use driftwatch::kpi::HostDay;
use driftwatch::store::{
    self, ChainHead, ChainReport, EventQuery, HeartbeatOutcome, HostInfo, HostTree, LatestScan,
    Role, Store, StoredChange, StoredEvent, StoredManifest,
};

/// The server the tests use unless `DRIFTWATCH_TEST_PG` names another.
const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

fn server_url() -> String {
    std::env::var("DRIFTWATCH_TEST_PG")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_PG.to_string())
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("DRIFTWATCH_TEST_PG={url:?} is not a postgres:// URL"));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map_or("", |q| &tail[q..]);
    format!("{scheme}://{authority}/{db}{query}")
}

#[track_caller]
fn connect(url: &str) -> postgres::Client {
    let mut config: postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("DRIFTWATCH_TEST_PG={url:?} is not a valid URL: {e}"));
    config.connect_timeout(Duration::from_secs(5));
    config.connect(postgres::NoTls).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL test server unreachable at {url}: {e}\n\
             These tests need a running PostgreSQL server. Start the local one \
             (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) or point \
             DRIFTWATCH_TEST_PG at one (postgres://user@host:port/db; the user must be allowed to \
             CREATE DATABASE)."
        )
    })
}

/// A database of its own for one test, dropped (with its connections) when the test ends.
struct TestDb {
    server: String,
    name: String,
    /// URL of this test's database.
    url: String,
}

impl TestDb {
    #[track_caller]
    fn new(tag: &str) -> TestDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let server = server_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "dw_test_{tag}_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        connect(&server)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {server}: {e}"));
        let url = with_database(&server, &name);
        TestDb { server, name, url }
    }

    /// A direct connection, for tampering with rows behind the store's back.
    fn client(&self) -> postgres::Client {
        connect(&self.url)
    }

    fn open(&self) -> Box<dyn Store> {
        store::open(&self.url, TimeZone::UTC).unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Ok(mut config) = self.server.parse::<postgres::Config>() else {
            return;
        };
        config.connect_timeout(Duration::from_secs(5));
        if let Ok(mut c) = config.connect(postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture helpers
// ---------------------------------------------------------------------------------------------

fn day(s: &str) -> Date {
    s.parse().expect("date")
}

fn ts(d: Date, hour: i8, minute: i8) -> Timestamp {
    format!("{d}T{hour:02}:{minute:02}:00Z")
        .parse()
        .expect("timestamp")
}

fn ev(seq: u64, path: &str, change: &str, status: &str, observed: Timestamp) -> ChangeEvent {
    ChangeEvent {
        seq,
        tree: "shop".into(),
        path: path.into(),
        path_bytes: None,
        change: change.into(),
        status: status.into(),
        observed_at: observed.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        window_start: (observed - jiff::SignedDuration::from_secs(3600))
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        blake3: Some(blake3::hash(path.as_bytes()).to_hex().to_string()),
        previous_blake3: None,
        size: Some(path.len() as u64 * 10),
        detail: None,
        resolves: None,
    }
}

fn eb(host: &str, env: &str, events: Vec<ChangeEvent>, scans: Vec<ScanSummary>) -> EventBatch {
    EventBatch {
        host: host.into(),
        environment: env.into(),
        events,
        scans,
    }
}

fn hb(host: &str, env: &str, spool_dropped: u64, spool_depth: u64) -> Heartbeat {
    serde_json::from_value(json!({
        "host": host,
        "environment": env,
        "agent_version": "0.1.0-test",
        "trees": ["shop"],
        "spool_dropped": spool_dropped,
        "spool_depth": spool_depth,
    }))
    .expect("heartbeat")
}

fn scan(paths: u64, vetted: u64, finished: Timestamp) -> ScanSummary {
    ScanSummary {
        tree: "shop".into(),
        finished_at: finished.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        paths,
        vetted,
        release: Some("R-1".into()),
        seconds: 0.25,
    }
}

/// A token as listed, without its secret: (id, role, host, created_at, revoked_at).
type TokenRow = (i64, Role, Option<String>, String, Option<String>);

/// Everything a store answered over one scenario.
#[derive(Debug, PartialEq)]
struct Outcome {
    ingests: Vec<IngestResult>,
    heartbeats: Vec<HeartbeatOutcome>,
    queries: Vec<(String, Vec<StoredEvent>)>,
    hosts: Vec<HostInfo>,
    days: Vec<(String, Vec<HostDay>)>,
    tokens: Vec<TokenRow>,
    token_lookups: Vec<bool>,
    changes: Vec<StoredChange>,
    manifest: Option<StoredManifest>,
    latest_scans: Vec<(String, Vec<LatestScan>)>,
    head: ChainHead,
    report: ChainReport,
}

/// One history, four days long, with every kind of record: events (new, duplicate, replayed,
/// out of order, resolving), scans, heartbeats, retired hosts, sealed days, re-classifications
/// of sealed and live days, change entries and manifests.
fn scenario(s: &dyn Store) -> Outcome {
    let (d0, d1, d2, d3) = (
        day("2026-11-16"),
        day("2026-11-17"),
        day("2026-11-18"),
        day("2026-11-19"),
    );
    let mut ingests = Vec::new();
    let mut ingest = |b: &EventBatch, at: Timestamp| {
        let r = s.ingest(b, at).expect("ingest");
        ingests.push(r.clone());
        r
    };

    // Day 0: two production hosts and a staging host.
    s.record_heartbeat(&hb("web-01", "production", 0, 0), ts(d0, 9, 0))
        .expect("heartbeat");
    s.record_heartbeat(&hb("web-02", "production", 0, 0), ts(d0, 9, 1))
        .expect("heartbeat");
    s.record_heartbeat(&hb("stg-01", "staging", 0, 0), ts(d0, 9, 2))
        .expect("heartbeat");
    let first = eb(
        "web-01",
        "production",
        vec![
            ev(1, "a.php", "added", "unauthorized", ts(d0, 9, 30)),
            ev(2, "index.php", "modified", "release:R-1", ts(d0, 9, 31)),
            ev(3, "cache/x", "added", "excluded", ts(d0, 9, 32)),
        ],
        vec![scan(1000, 990, ts(d0, 9, 40))],
    );
    let r = ingest(&first, ts(d0, 10, 0));
    assert_eq!((r.stored, r.duplicates, r.acked_seq, r.scans), (3, 0, 3, 1));
    // The same batch again: acknowledged, stored once.
    let r = ingest(&first, ts(d0, 10, 5));
    assert_eq!((r.stored, r.duplicates), (0, 3));
    // Seq 2 again with other content: a replay, refused.
    let replay = eb(
        "web-01",
        "production",
        vec![ev(2, "evil.php", "added", "release:R-1", ts(d0, 10, 6))],
        vec![],
    );
    let r = ingest(&replay, ts(d0, 10, 7));
    assert_eq!((r.stored, r.rejected.clone()), (0, vec![2]));
    // A gap (4, 5 missing), then 4 arrives late; a non-UTF-8 path.
    let mut odd = ev(6, "b?.php", "added", "unauthorized", ts(d0, 11, 0));
    odd.path_bytes = Some(hex::encode(b"b\xff.php"));
    ingest(
        &eb("web-01", "production", vec![odd], vec![]),
        ts(d0, 11, 1),
    );
    ingest(
        &eb(
            "web-01",
            "production",
            vec![ev(4, "c.php", "modified", "change:CHG-1", ts(d0, 11, 30))],
            vec![],
        ),
        ts(d0, 11, 31),
    );
    ingest(
        &eb(
            "web-02",
            "production",
            vec![
                ev(1, "d.php", "added", "unverifiable", ts(d0, 12, 0)),
                ev(2, "e.php", "modified", "change:CHG-1", ts(d0, 12, 1)),
            ],
            vec![scan(500, 500, ts(d0, 12, 2))],
        ),
        ts(d0, 12, 5),
    );
    ingest(
        &eb(
            "stg-01",
            "staging",
            vec![
                ev(1, "f.php", "added", "unauthorized", ts(d0, 13, 0)),
                // Odd case: SQLite's LIKE ignores ASCII case, so both stores count it authorized.
                ev(2, "g.php", "added", "Retroactive:CHG-2", ts(d0, 13, 1)),
            ],
            vec![],
        ),
        ts(d0, 13, 5),
    );

    // Day 1: web-01 puts a.php back (resolves seq 1); tokens; web-02 retired.
    let mut back = ev(7, "a.php", "removed", "resolved", ts(d1, 8, 0));
    back.resolves = Some(1);
    let r = ingest(
        &eb("web-01", "production", vec![back], vec![]),
        ts(d1, 8, 5),
    );
    assert_eq!(r.stored, 1);
    let (_, agent1) = s
        .create_token(Role::Agent, Some("web-01"), "web-01 agent", ts(d1, 8, 10))
        .expect("token");
    let (t2, agent2) = s
        .create_token(Role::Agent, Some("web-02"), "web-02 agent", ts(d1, 8, 11))
        .expect("token");
    let (_, reader) = s
        .create_token(Role::Reader, None, "dashboard", ts(d1, 8, 12))
        .expect("token");
    s.revoke_token(t2.id, ts(d1, 8, 13)).expect("revoke");
    s.record_heartbeat(&hb("web-01", "production", 0, 0), ts(d1, 9, 0))
        .expect("heartbeat");
    let mut days = Vec::new();
    // Reading the KPI on day 1 seals day 0.
    days.push((
        "d0..d1 on d1".to_string(),
        s.host_days(d0, d1, None, ts(d1, 10, 0)).expect("host_days"),
    ));
    // Re-classify a sealed day's event (web-01#6: a new version of that KPI row) and a live one.
    let id_of = |host: &str, seq: u64| {
        s.events(&EventQuery {
            host: Some(host.into()),
            ..EventQuery::default()
        })
        .expect("events")
        .into_iter()
        .find(|e| e.seq == seq)
        .unwrap_or_else(|| panic!("no event {host}#{seq}"))
        .id
    };
    s.reclassify(
        id_of("web-01", 6),
        "retroactive:CHG-9",
        "approved after the fact",
        ts(d1, 10, 30),
    )
    .expect("reclassify");
    ingest(
        &eb(
            "web-01",
            "production",
            vec![ev(8, "h.php", "added", "unauthorized", ts(d1, 11, 0))],
            vec![ScanSummary {
                seconds: 7.5,
                ..scan(1001, 1000, ts(d1, 11, 1))
            }],
        ),
        ts(d1, 11, 5),
    );
    s.reclassify(
        id_of("web-01", 8),
        "excluded",
        "build artefact",
        ts(d1, 11, 30),
    )
    .expect("reclassify");

    // Day 2: coverage reported, repeated, changed, and an older agent without it.
    let covered = |local: &[&str], digest: &str| -> Heartbeat {
        let mut h = hb("web-02", "production", 0, 0);
        h.config_digest = Some(digest.into());
        h.coverage = vec![driftwatch::event::TreeCoverage {
            tree: "shop".into(),
            exclude: ["var/cache/**"]
                .iter()
                .chain(local)
                .map(|g| g.to_string())
                .collect(),
            local_exclude: local.iter().map(|g| g.to_string()).collect(),
        }];
        h
    };
    let heartbeats = vec![
        s.record_heartbeat(&covered(&[], "d1"), ts(d2, 6, 0))
            .expect("heartbeat"),
        s.record_heartbeat(&covered(&[], "d1"), ts(d2, 6, 1))
            .expect("heartbeat"),
        s.record_heartbeat(&covered(&["wp-content/**"], "d2"), ts(d2, 6, 2))
            .expect("heartbeat"),
        s.record_heartbeat(&hb("stg-01", "staging", 0, 0), ts(d2, 6, 3))
            .expect("heartbeat"),
    ];

    // Day 2: spool losses, change entries, manifests.
    s.record_heartbeat(&hb("web-01", "production", 5, 40), ts(d2, 7, 0))
        .expect("heartbeat");
    s.record_heartbeat(&hb("web-01", "production", 2, 3), ts(d2, 7, 30))
        .expect("heartbeat");
    s.put_change("CHG-1", "id = \"CHG-1\"\n", None, ts(d2, 8, 0))
        .expect("change");
    s.put_change(
        "CHG-1",
        "id = \"CHG-1\"\nv = 2\n",
        Some("sig"),
        ts(d2, 8, 1),
    )
    .expect("change");
    s.put_change("CHG-10", "id = \"CHG-10\"\n", None, ts(d2, 8, 2))
        .expect("change");
    for release in ["R-1", "R-2"] {
        s.put_manifest(&StoredManifest {
            tree: "shop".into(),
            release: release.into(),
            manifest: format!("{{\"release\":\"{release}\"}}"),
            minisig: Some("sig".into()),
            received_at: "2026-11-18T08:30:00Z".into(),
        })
        .expect("manifest");
    }
    ingest(
        &eb(
            "stg-01",
            "staging",
            vec![ev(3, "i.php", "modified", "release:R-2", ts(d2, 9, 0))],
            vec![scan(40, 20, ts(d2, 9, 1))],
        ),
        ts(d2, 9, 5),
    );
    // A scan web-01 finished on day 1 before its 11:01 one, delivered only on day 2 (in another
    // offset): received later, but not the latest scan.
    ingest(
        &eb(
            "web-01",
            "production",
            vec![],
            vec![ScanSummary {
                finished_at: "2026-11-17T12:00:00+02:00".into(),
                seconds: 99.0,
                ..scan(1001, 1000, ts(d1, 10, 0))
            }],
        ),
        ts(d2, 9, 10),
    );

    // Day 3: reads seal days 1 and 2.
    days.push((
        "d0..d3 on d3".to_string(),
        s.host_days(d0, d3, None, ts(d3, 12, 0)).expect("host_days"),
    ));
    days.push((
        "d1..d3 web-01 on d3".to_string(),
        s.host_days(d1, d3, Some("web-01"), ts(d3, 12, 1))
            .expect("host_days"),
    ));
    // Sealed again? No: a second read changes nothing.
    days.push((
        "d0..d3 on d3 again".to_string(),
        s.host_days(d0, d3, None, ts(d3, 12, 2)).expect("host_days"),
    ));

    let mut queries = Vec::new();
    let mut query = |name: &str, q: EventQuery| {
        queries.push((name.to_string(), s.events(&q).expect("events")));
    };
    query("all", EventQuery::default());
    query(
        "web-01",
        EventQuery {
            host: Some("web-01".into()),
            ..EventQuery::default()
        },
    );
    query(
        "unauthorized",
        EventQuery {
            status: Some("unauthorized".into()),
            ..EventQuery::default()
        },
    );
    query(
        "retroactive",
        EventQuery {
            status: Some("retroactive".into()),
            ..EventQuery::default()
        },
    );
    query(
        "change:CHG-1",
        EventQuery {
            status: Some("change:CHG-1".into()),
            ..EventQuery::default()
        },
    );
    query(
        "open",
        EventQuery {
            open_only: true,
            ..EventQuery::default()
        },
    );
    query(
        "d1..d2, 2",
        EventQuery {
            from: Some(d1),
            to: Some(d2),
            limit: Some(2),
            ..EventQuery::default()
        },
    );

    let tokens = s
        .list_tokens()
        .expect("tokens")
        .into_iter()
        .map(|t| (t.id, t.role, t.host, t.created_at, t.revoked_at))
        .collect();
    let token_lookups = [&agent1, &agent2, &reader, &"dw_nope".to_string()]
        .iter()
        .map(|t| s.find_token(t).expect("find_token").is_some())
        .collect();
    let latest_scans = [d0, d1, d3]
        .into_iter()
        .map(|d| {
            (
                format!("since {d}"),
                s.latest_scans(d).expect("latest_scans"),
            )
        })
        .collect();
    Outcome {
        ingests,
        heartbeats,
        queries,
        hosts: s.hosts(ts(d3, 12, 30)).expect("hosts"),
        days,
        tokens,
        token_lookups,
        changes: s.changes().expect("changes"),
        manifest: s.manifest("shop").expect("manifest"),
        latest_scans,
        head: s.chain_head().expect("chain_head"),
        report: s.verify_chain(Some(5)).expect("verify"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn postgres_and_sqlite_store_the_same_history_and_chain() {
    let db = TestDb::new("parity");
    let pg = scenario(db.open().as_ref());
    let tmp = tempfile::tempdir().expect("tempdir");
    let sqlite_url = format!("sqlite://{}", tmp.path().join("collector.db").display());
    let lite = scenario(
        store::open(&sqlite_url, TimeZone::UTC)
            .expect("open sqlite")
            .as_ref(),
    );

    // What the scenario must have produced (checked on PostgreSQL; SQLite must equal it).
    assert_eq!(pg.report.first_bad, None, "{:#?}", pg.report);
    assert_eq!(pg.report.records, pg.head.records);
    assert_eq!(pg.report.head, pg.head.head);
    assert!(pg.report.hash_at.is_some());
    let all = &pg.queries[0].1;
    assert_eq!(all.len(), 11, "resolved records are not listed: {all:#?}");
    let web01 = |seq: u64| {
        all.iter()
            .find(|e| e.host == "web-01" && e.seq == seq)
            .unwrap()
    };
    assert_eq!(
        (web01(1).status.as_str(), web01(1).open),
        ("unauthorized", false)
    );
    assert_eq!(web01(2).path, "index.php", "the replay must not overwrite");
    assert_eq!(web01(6).status, "retroactive:CHG-9");
    assert_eq!(web01(6).original_status, "unauthorized");
    assert_eq!(web01(6).path_bytes.as_deref(), Some("62ff2e706870"));
    let h = |name: &str| pg.hosts.iter().find(|h| h.host == name).unwrap();
    assert_eq!(
        (
            h("web-01").last_seq,
            h("web-01").missing_seqs,
            h("web-01").replays
        ),
        (8, 1, 1)
    );
    assert_eq!(h("web-01").spool_dropped, 5, "the highest count reported");
    assert_eq!(h("web-01").spool_depth, 3, "the last heartbeat's depth");
    assert_eq!(h("web-02").spool_depth, 0);
    let changed: Vec<bool> = pg.heartbeats.iter().map(|o| o.coverage_changed).collect();
    assert_eq!(
        changed,
        [true, false, true, false],
        "first report, same, changed, none"
    );
    assert_eq!(h("web-02").config_digest.as_deref(), Some("d2"));
    assert!(h("web-02").coverage_reduced);
    assert_eq!(
        h("web-02").trees,
        [HostTree {
            tree: "shop".into(),
            exclude: vec!["var/cache/**".into(), "wp-content/**".into()],
            local_exclude: vec!["wp-content/**".into()],
            coverage_reduced: true,
        }]
    );
    assert_eq!(
        (
            h("stg-01").config_digest.as_ref(),
            h("stg-01").coverage_reduced
        ),
        (None, false)
    );
    assert!(h("stg-01").trees.is_empty());
    let latest = |i: usize| -> Vec<(&str, f64, &str)> {
        pg.latest_scans[i]
            .1
            .iter()
            .map(|s| (s.host.as_str(), s.seconds, s.finished_at.as_str()))
            .collect()
    };
    assert_eq!(
        latest(0),
        [
            ("stg-01", 0.25, "2026-11-18T09:01:00Z"),
            ("web-01", 7.5, "2026-11-17T11:01:00Z"),
            ("web-02", 0.25, "2026-11-16T12:02:00Z"),
        ],
        "latest scan per host and tree since day 0"
    );
    assert_eq!(
        latest(1),
        [
            ("stg-01", 0.25, "2026-11-18T09:01:00Z"),
            ("web-01", 7.5, "2026-11-17T11:01:00Z"),
        ],
        "since day 1"
    );
    assert_eq!(latest(2), [], "since day 3");
    assert!(pg.latest_scans[0].1.iter().all(|s| s.tree == "shop"));
    assert!(h("web-02").retired);
    assert_eq!(h("stg-01").open_unauthorized, 1);
    assert_eq!(pg.token_lookups, vec![true, false, true, false]);
    assert_eq!(pg.changes.len(), 2);
    assert_eq!(pg.changes[0].toml, "id = \"CHG-1\"\nv = 2\n");
    assert_eq!(
        pg.manifest.as_ref().map(|m| m.release.as_str()),
        Some("R-2")
    );
    let (_, d0d3) = &pg.days[1];
    let row = |d: &str, host: &str| {
        d0d3.iter()
            .find(|r| r.day.to_string() == d && r.host == host)
            .unwrap_or_else(|| panic!("no KPI day {d} {host}: {d0d3:#?}"))
    };
    let w = row("2026-11-16", "web-01");
    assert_eq!(
        (w.changes, w.authorized, w.retroactive, w.unauthorized),
        (4, 3, 1, 1),
        "sealed day 0 re-versioned after the re-classification: {w:?}"
    );
    assert_eq!(w.vetted_paths, Some((990, 1000)));
    let s0 = row("2026-11-16", "stg-01");
    assert_eq!((s0.authorized, s0.retroactive), (1, 1), "{s0:?}");
    assert!(
        !d0d3
            .iter()
            .any(|r| r.host == "web-02" && r.day > day("2026-11-17")),
        "web-02's token was revoked on day 1: expected that day, not after: {d0d3:#?}"
    );
    let s2 = row("2026-11-18", "stg-01");
    assert_eq!(
        (s2.changes, s2.authorized, s2.vetted_paths),
        (1, 1, Some((20, 40)))
    );
    assert_eq!(
        pg.days[1].1, pg.days[3].1,
        "reading again seals nothing new"
    );

    // Same inputs and timestamps: the same answers and the same chain, byte for byte.
    assert_eq!(pg.ingests, lite.ingests, "ingest results");
    for ((name, p), (_, l)) in pg.queries.iter().zip(&lite.queries) {
        assert_eq!(p, l, "events query {name}");
    }
    assert_eq!(pg.hosts, lite.hosts, "hosts");
    for ((name, p), (_, l)) in pg.days.iter().zip(&lite.days) {
        assert_eq!(p, l, "host_days {name}");
    }
    assert_eq!(pg.tokens, lite.tokens, "tokens");
    assert_eq!(pg.token_lookups, lite.token_lookups, "token lookups");
    assert_eq!(pg.changes, lite.changes, "changes");
    assert_eq!(pg.manifest, lite.manifest, "manifest");
    assert_eq!(pg.latest_scans, lite.latest_scans, "latest_scans");
    assert_eq!(
        pg.head, lite.head,
        "chain heads differ between PostgreSQL and SQLite"
    );
    assert_eq!(pg.report, lite.report, "verify_chain");
    assert_eq!(pg, lite);
}

#[test]
fn reopening_keeps_history_and_newer_schemas_are_refused() {
    let db = TestDb::new("reopen");
    let d = day("2026-11-16");
    let head = {
        let s = db.open();
        s.ingest(
            &eb(
                "web-01",
                "production",
                vec![ev(1, "a.php", "added", "unauthorized", ts(d, 9, 0))],
                vec![],
            ),
            ts(d, 9, 1),
        )
        .expect("ingest");
        s.chain_head().expect("head")
    };
    // Several instances open (and migrate) the same database at once.
    let heads: Vec<ChainHead> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| db.open().chain_head().expect("head")))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(heads.iter().all(|h| *h == head), "{heads:?} vs {head:?}");
    assert_eq!(head.records, 1);

    db.client()
        .batch_execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        .expect("update");
    let err = store::open(&db.url, TimeZone::UTC)
        .err()
        .expect("a newer schema must be refused")
        .to_string();
    assert!(err.contains("schema version 99"), "{err}");
}

/// A database written by schema version 1 (no `hosts.spool_depth`, no `hosts.coverage`, no `events.detail`) is brought up to date when
/// opened, by several instances at once, and keeps its history.
#[test]
fn a_version_1_database_is_migrated_when_opened() {
    let db = TestDb::new("migrate");
    let d = day("2026-11-16");
    let (head, hosts_before) = {
        let s = db.open();
        s.record_heartbeat(&hb("web-01", "production", 4, 9), ts(d, 8, 0))
            .expect("heartbeat");
        s.ingest(
            &eb(
                "web-01",
                "production",
                vec![ev(1, "a.php", "added", "unauthorized", ts(d, 9, 0))],
                vec![scan(10, 9, ts(d, 9, 0))],
            ),
            ts(d, 9, 1),
        )
        .expect("ingest");
        (
            s.chain_head().expect("head"),
            s.hosts(ts(d, 10, 0)).expect("hosts"),
        )
    };
    let mut c = db.client();
    c.batch_execute(
        "ALTER TABLE hosts DROP COLUMN spool_depth;
         ALTER TABLE hosts DROP COLUMN coverage;
         ALTER TABLE events DROP COLUMN detail;
         UPDATE meta SET value = '1' WHERE key = 'schema_version';",
    )
    .expect("downgrade to version 1");
    let has_depth = |c: &mut postgres::Client| -> i64 {
        c.query_one(
            "SELECT COUNT(*) FROM information_schema.columns
             WHERE (table_name = 'hosts' AND column_name IN ('spool_depth', 'coverage'))
                OR (table_name = 'events' AND column_name = 'detail')",
            &[],
        )
        .expect("columns")
        .get(0)
    };
    assert_eq!(has_depth(&mut c), 0);

    let heads: Vec<ChainHead> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| db.open().chain_head().expect("head")))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(heads.iter().all(|h| *h == head), "{heads:?} vs {head:?}");
    assert_eq!(has_depth(&mut c), 3, "all three columns back");
    let version: String = c
        .query_one("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .expect("meta")
        .get(0);
    assert_eq!(version, "5");
    // Schema 5's step: the alert outbox exists after the migration.
    let outbox: bool = c
        .query_one("SELECT to_regclass('alert_outbox') IS NOT NULL", &[])
        .expect("regclass")
        .get(0);
    assert!(outbox, "no alert_outbox after migrating");

    let s = db.open();
    let hosts = s.hosts(ts(d, 10, 0)).expect("hosts");
    let expected: Vec<HostInfo> = hosts_before
        .into_iter()
        .map(|h| HostInfo {
            spool_depth: 0,
            ..h
        })
        .collect();
    assert_eq!(hosts, expected, "rows kept; the new column starts at 0");
    assert_eq!(hosts[0].spool_dropped, 4);
    assert_eq!(s.latest_scans(d).expect("latest_scans").len(), 1);
    assert_eq!(s.verify_chain(None).expect("verify").first_bad, None);
    s.record_heartbeat(&hb("web-01", "production", 4, 6), ts(d, 11, 0))
        .expect("heartbeat");
    assert_eq!(s.hosts(ts(d, 11, 0)).expect("hosts")[0].spool_depth, 6);
    // The new coverage column takes a heartbeat's coverage.
    let mut with = hb("web-01", "production", 4, 6);
    with.config_digest = Some("abc".into());
    let o = s.record_heartbeat(&with, ts(d, 11, 1)).expect("heartbeat");
    assert!(o.coverage_changed);
    assert_eq!(
        s.hosts(ts(d, 11, 1)).expect("hosts")[0]
            .config_digest
            .as_deref(),
        Some("abc")
    );
}

#[test]
fn tampering_is_detected_and_named() {
    let db = TestDb::new("tamper");
    let s = db.open();
    let (d0, d1) = (day("2026-11-16"), day("2026-11-17"));
    s.record_heartbeat(&hb("web-01", "production", 0, 0), ts(d0, 8, 0))
        .expect("heartbeat");
    s.ingest(
        &eb(
            "web-01",
            "production",
            vec![
                ev(1, "a.php", "added", "unauthorized", ts(d0, 9, 0)),
                ev(2, "b.php", "added", "unauthorized", ts(d0, 9, 1)),
                ev(3, "c.php", "added", "release:R-1", ts(d0, 9, 2)),
            ],
            vec![],
        ),
        ts(d0, 9, 5),
    )
    .expect("ingest");
    s.host_days(d0, d1, None, ts(d1, 9, 0)).expect("seal day 0");
    let ev2 = s
        .events(&EventQuery::default())
        .expect("events")
        .into_iter()
        .find(|e| e.seq == 2)
        .expect("event 2");
    s.reclassify(ev2.id, "change:CHG-7", "ticket found", ts(d1, 9, 30))
        .expect("reclassify");
    let clean = s.verify_chain(None).expect("verify");
    assert_eq!(clean.first_bad, None, "{clean:#?}");
    assert_eq!(
        clean.records,
        3 + 1 + 1 + 1,
        "3 events, a KPI row, a re-classification, its new KPI version"
    );

    let mut c = db.client();
    let check = |c: &mut postgres::Client, edit: &str, undo: &str, want: &[&str]| {
        c.batch_execute(edit).expect(edit);
        let report = s.verify_chain(None).expect("verify");
        let why = report
            .first_bad
            .unwrap_or_else(|| panic!("`{edit}` went unnoticed"));
        for w in want {
            assert!(why.contains(w), "`{edit}`: {why:?} should mention {w:?}");
        }
        c.batch_execute(undo).expect(undo);
        assert_eq!(
            s.verify_chain(None).expect("verify").first_bad,
            None,
            "after `{undo}`"
        );
    };
    check(
        &mut c,
        "UPDATE events SET path = 'innocent.php' WHERE host = 'web-01' AND seq = 1",
        "UPDATE events SET path = 'a.php' WHERE host = 'web-01' AND seq = 1",
        &["event web-01#1", "edited"],
    );
    check(
        &mut c,
        "UPDATE kpi_days SET unauthorized = 0 WHERE version = 1",
        "UPDATE kpi_days SET unauthorized = 2 WHERE version = 1",
        &["KPI row 2026-11-16 web-01 v1", "edited"],
    );
    check(
        &mut c,
        "UPDATE reclassifications SET reason = 'nothing to see'",
        "UPDATE reclassifications SET reason = 'ticket found'",
        &["re-classification", "edited"],
    );
    check(
        &mut c,
        "UPDATE events SET current_status = 'excluded' WHERE seq = 3",
        "UPDATE events SET current_status = 'release:R-1' WHERE seq = 3",
        &["event web-01#3", "current status"],
    );
    // Deleting a record breaks the chain where it was.
    c.batch_execute("DELETE FROM events WHERE seq = 2")
        .expect("delete");
    let why = s
        .verify_chain(None)
        .expect("verify")
        .first_bad
        .expect("a deletion must be noticed");
    assert!(why.contains("chain position 2 is missing"), "{why}");
}

/// Ingests `batches` batches of `per` events for `host`, each batch sent twice.
fn ingest_many(s: &dyn Store, host: &str, batches: u64, per: u64) -> (u64, u64) {
    let d = day("2026-11-16");
    let (mut stored, mut dups) = (0, 0);
    for b in 0..batches {
        let events = (1..=per)
            .map(|i| {
                let seq = b * per + i;
                ev(
                    seq,
                    &format!("{host}-{seq}.php"),
                    "added",
                    "unauthorized",
                    ts(d, 9, 0),
                )
            })
            .collect();
        let batch = eb(host, "production", events, vec![]);
        for _ in 0..2 {
            let r = s.ingest(&batch, ts(d, 10, 0)).expect("ingest");
            stored += r.stored;
            dups += r.duplicates;
            assert!(r.rejected.is_empty(), "{r:?}");
        }
    }
    (stored, dups)
}

#[test]
fn concurrent_instances_keep_one_intact_chain() {
    let db = TestDb::new("concurrent");
    // Two collector instances: two stores, two connection pools, one database.
    let (a, b) = (db.open(), db.open());
    let (batches, per) = (30, 5);
    let results: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let hs = vec![
            scope.spawn(|| ingest_many(a.as_ref(), "web-01", batches, per)),
            scope.spawn(|| ingest_many(b.as_ref(), "web-02", batches, per)),
            // The same host through both instances at once: every event stored exactly once.
            scope.spawn(|| ingest_many(a.as_ref(), "web-03", batches, per)),
            scope.spawn(|| ingest_many(b.as_ref(), "web-03", batches, per)),
        ];
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let n = batches * per;
    assert_eq!(results[0], (n, n));
    assert_eq!(results[1], (n, n));
    let (s3, d3) = (results[2].0 + results[3].0, results[2].1 + results[3].1);
    assert_eq!(
        (s3, d3),
        (n, 3 * n),
        "web-03 re-sent through two instances: {results:?}"
    );

    let events = a.events(&EventQuery::default()).expect("events");
    assert_eq!(events.len() as u64, 3 * n);
    for host in ["web-01", "web-02", "web-03"] {
        let mut seqs: Vec<u64> = events
            .iter()
            .filter(|e| e.host == host)
            .map(|e| e.seq)
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{host}");
    }
    let hosts = b.hosts(ts(day("2026-11-16"), 11, 0)).expect("hosts");
    assert!(
        hosts
            .iter()
            .all(|h| h.last_seq == n && h.missing_seqs == 0 && h.replays == 0),
        "{hosts:#?}"
    );

    // Both instances read the next day's KPI at once: the finished day is sealed exactly once.
    let next = ts(day("2026-11-17"), 9, 0);
    let from = day("2026-11-16");
    let reads: Vec<Vec<HostDay>> = std::thread::scope(|scope| {
        let hs: Vec<_> = [&a, &b, &a, &b]
            .into_iter()
            .map(|s| scope.spawn(move || s.host_days(from, from, None, next).expect("host_days")))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(reads.iter().all(|r| *r == reads[0]), "{reads:#?}");
    assert_eq!(reads[0].len(), 3);
    assert!(reads[0].iter().all(|d| d.unauthorized == n), "{reads:#?}");

    let report = a.verify_chain(None).expect("verify");
    assert_eq!(report.first_bad, None, "{report:#?}");
    assert_eq!(
        report.records,
        3 * n + 3,
        "every event and one KPI row per host-day"
    );
    assert_eq!(
        b.chain_head().expect("head"),
        ChainHead {
            records: report.records,
            head: report.head
        }
    );
}

// ---------------------------------------------------------------------------------------------
// A real collector process (two, sharing the database)
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn token(config: &Path, role: &str, host: Option<&str>) -> String {
    let config = config.to_str().expect("utf-8 temp path");
    let mut args = vec!["token", "create", "--config", config, "--role", role];
    if let Some(h) = host {
        args.extend(["--host", h]);
    }
    let out = common::run(&args);
    out.expect_code(0);
    out.stdout.trim().to_string()
}

#[test]
fn collectors_share_a_postgres_database() {
    let db = TestDb::new("collector");
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstorage = {}\n[trust]\nrequire_signatures = false\n",
            toml_str(&db.url)
        ),
    )
    .expect("write config");
    common::run(["config", "check", "--config", config.to_str().unwrap()]).expect_code(0);
    let agent = token(&config, "agent", Some("web-01"));
    let reader = token(&config, "reader", None);
    let mut one = Collector::start(&config);
    let mut two = Collector::start(&config);

    one.post_json(
        "/api/v1/heartbeat",
        Some(&agent),
        &json!({"host": "web-01", "environment": "production", "agent_version": "t"}),
    )
    .expect(200);
    // Half the events through each instance, and every batch through both (a retrying agent
    // behind a load balancer): stored once.
    let first = batch("web-01", simple_events(1, 4, "pg"));
    let second = batch("web-01", simple_events(5, 4, "pg"));
    let results: Vec<Value> = std::thread::scope(|scope| {
        let hs = vec![
            scope.spawn(|| one.ingest(&agent, &first)),
            scope.spawn(|| two.ingest(&agent, &first)),
            scope.spawn(|| two.ingest(&agent, &second)),
            scope.spawn(|| one.ingest(&agent, &second)),
        ];
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let stored: u64 = results.iter().map(|r| r["stored"].as_u64().unwrap()).sum();
    let dups: u64 = results
        .iter()
        .map(|r| r["duplicates"].as_u64().unwrap())
        .sum();
    assert_eq!((stored, dups), (8, 8), "{results:?}");

    let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
    let range = format!(
        "from={}&to={}",
        today.yesterday().expect("date"),
        today.tomorrow().expect("date")
    );
    for c in [&one, &two] {
        let kpi = c.get_json(&format!("/api/v1/kpi?{range}&by=day&group=host"), &reader);
        let rows: Vec<&Value> = kpi
            .as_array()
            .unwrap_or_else(|| panic!("KPI is not an array: {kpi}"))
            .iter()
            .filter(|r| r["host"] == "web-01")
            .collect();
        let unauthorized: u64 = rows
            .iter()
            .map(|r| r["unauthorized"].as_u64().unwrap())
            .sum();
        assert_eq!(unauthorized, 8, "{kpi:#}");
        let events = c.get_json("/api/v1/events?host=web-01", &reader);
        assert_eq!(events.as_array().map(Vec::len), Some(8), "{events:#}");
        let audit = c.get_json("/api/v1/audit/verify", &reader);
        assert_eq!(audit["intact"], true, "{audit:#}");
    }
    let csv = one.get_text(&format!("/api/v1/kpi?{range}&format=csv"), &reader);
    assert!(csv.starts_with("period,environment,host,changes"), "{csv}");

    one.stop_ok();
    two.stop_ok();
    assert!(
        !one.stderr().contains("panicked") && !two.stderr().contains("panicked"),
        "{}\n{}",
        one.stderr(),
        two.stderr()
    );
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // A port nothing listens on: opening fails promptly, naming the URL, with no password shown.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let url = format!("postgres://dw:s3cret@127.0.0.1:{port}/driftwatch?connect_timeout=3");
    let err = store::open(&url, TimeZone::UTC)
        .err()
        .expect("nothing listens there")
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// An alert per unauthorized event, one per gap, one per spool drop; batched 5 s per host.
struct EveryAlert;

impl driftwatch::store::outbox::AlertPlan for EveryAlert {
    fn on_event(
        &self,
        host: &str,
        _: &str,
        e: &ChangeEvent,
        out: &mut Vec<driftwatch::store::outbox::NewAlert>,
    ) {
        if e.status == "unauthorized" {
            out.push(new_alert(
                &format!("ev-{host}-{}", e.seq),
                "unauthorized",
                host,
            ));
        }
    }
    fn on_gap(
        &self,
        host: &str,
        _: &str,
        first: u64,
        last: u64,
        out: &mut Vec<driftwatch::store::outbox::NewAlert>,
    ) {
        out.push(new_alert(
            &format!("gap-{host}-{first}-{last}"),
            "gap",
            host,
        ));
    }
    fn on_heartbeat(
        &self,
        hb: &Heartbeat,
        _: bool,
        dropped_before: u64,
        out: &mut Vec<driftwatch::store::outbox::NewAlert>,
    ) {
        if hb.spool_dropped > dropped_before {
            out.push(new_alert(
                &format!("drop-{}-{}", hb.host, hb.spool_dropped),
                "gap",
                &hb.host,
            ));
        }
    }
}

fn new_alert(id: &str, kind: &str, host: &str) -> driftwatch::store::outbox::NewAlert {
    driftwatch::store::outbox::NewAlert {
        id: id.into(),
        sink: "hook".into(),
        kind: kind.into(),
        host: host.into(),
        body: "{}".into(),
        batch_micros: 5_000_000,
    }
}

/// The outbox through one store: what is due when, and how delivery outcomes are kept.
fn outbox_scenario(s: &dyn Store) -> Vec<(String, String, u64, Option<String>)> {
    use driftwatch::store::outbox::Settle;
    let d = day("2026-11-16");
    let t = |m: i8| ts(d, 10, m);
    let obs = t(0);
    let plan = EveryAlert;
    s.ingest_alerting(
        &eb(
            "web-01",
            "production",
            vec![ev(1, "a.php", "added", "unauthorized", obs)],
            vec![],
        ),
        t(0),
        &plan,
    )
    .expect("ingest");
    // A re-send, a gap (2..3) and a release change: the gap alerts, nothing else new.
    s.ingest_alerting(
        &eb(
            "web-01",
            "production",
            vec![
                ev(1, "a.php", "added", "unauthorized", obs),
                ev(4, "b.php", "added", "release:R-1", obs),
            ],
            vec![],
        ),
        t(0),
        &plan,
    )
    .expect("ingest");
    s.record_heartbeat_alerting(&hb("web-01", "production", 3, 0), t(0), &plan)
        .expect("heartbeat");
    // The same total again is no new drop.
    s.record_heartbeat_alerting(&hb("web-01", "production", 3, 0), t(0), &plan)
        .expect("heartbeat");
    assert!(
        s.due_alerts(t(0), 100).expect("due").is_empty(),
        "due before the batch window closed"
    );
    let due = s.due_alerts(t(1), 100).expect("due");
    let ids: Vec<String> = due.iter().map(|r| r.id.clone()).collect();
    // Oldest first; raised at one instant, by id.
    assert_eq!(ids, ["drop-web-01-3", "ev-web-01-1", "gap-web-01-2-3"]);
    s.settle_alerts(&ids[1..2], &Settle::Sent, t(1))
        .expect("settle");
    s.settle_alerts(
        &ids[2..],
        &Settle::Retry {
            due_at: t(3),
            error: "down".into(),
        },
        t(1),
    )
    .expect("settle");
    s.settle_alerts(
        &ids[..1],
        &Settle::Failed {
            error: "HTTP 404".into(),
        },
        t(1),
    )
    .expect("settle");
    assert!(s.due_alerts(t(2), 100).expect("due").is_empty());
    assert_eq!(s.due_alerts(t(3), 100).expect("due").len(), 1);
    let counts = s.alert_counts().expect("counts");
    assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 3);
    let mut rows: Vec<_> = s
        .list_alerts(10)
        .expect("list")
        .into_iter()
        .map(|r| (r.id, r.state.as_str().to_string(), r.attempts, r.last_error))
        .collect();
    rows.sort();
    assert_eq!(s.verify_chain(None).expect("verify").first_bad, None);
    rows
}

#[test]
fn the_alert_outbox_behaves_alike_on_postgres_and_sqlite() {
    let db = TestDb::new("outbox");
    let pg = outbox_scenario(db.open().as_ref());
    let tmp = tempfile::tempdir().expect("tempdir");
    let sqlite_url = format!("sqlite://{}", tmp.path().join("collector.db").display());
    let lite = outbox_scenario(
        store::open(&sqlite_url, TimeZone::UTC)
            .expect("open sqlite")
            .as_ref(),
    );
    assert_eq!(pg, lite);
    assert_eq!(
        pg,
        [
            (
                "drop-web-01-3".to_string(),
                "failed".to_string(),
                1,
                Some("HTTP 404".to_string())
            ),
            ("ev-web-01-1".to_string(), "sent".to_string(), 1, None),
            (
                "gap-web-01-2-3".to_string(),
                "pending".to_string(),
                1,
                Some("down".to_string())
            ),
        ]
    );
}
