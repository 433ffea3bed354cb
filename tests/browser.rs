//! The dashboard as a reader sees it: a real collector on a store seeded with known events,
//! loaded by headless Chromium (`/usr/bin/chromium`, Debian packages `chromium` and
//! `chromium-driver`); the figures are read from the RENDERED DOM, and a screenshot is saved.
//!
//! The seeded fleet (all `production`, tree `shop`; Y = yesterday, Y2 = the day before):
//!
//! - Y2 12:00: heartbeats from web-01, web-02, web-03 (web-03 is never heard from again: silent).
//! - Y 12:00: web-01 reports 4 changes: change:CHG-1 twice, a release, and `app/evil.php`
//!   unauthorized → yesterday 3/4 = 75.0%, 1 unauthorized.
//! - today (now): web-02 reports `app/config/app.php` change:CHG-2, and unauthorized
//!   `wp-content/uploads/shell.php` and a file whose name is an HTML injection attempt
//!   ([`HOSTILE`]) → today 1/3 = 33.3%, 2 unauthorized.
//!
//! Set `DRIFTWATCH_SCREENSHOT_DIR` to keep a copy of the screenshot after the run.

mod e2e_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use driftwatch::store::sqlite::SqliteStore;
use driftwatch::store::{Role, Store};
use e2e_common::seed::{self, at, event};
use e2e_common::{Collector, get};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A file name chosen by an attacker: the dashboard must show it as text, never as markup.
const HOSTILE: &str = "wp-content/uploads/<img src=x onerror=alert(1)>.php";

/// One headless run may take this long; then Chromium (its whole process group) is killed.
const CHROME_TIMEOUT: Duration = Duration::from_secs(90);

fn chromium_or_fail() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the dashboard test needs headless Chromium. \
         Install it with `apt-get install -y chromium chromium-driver` (.ci/run does)."
    );
}

/// Runs headless Chromium with `args` then `url`; returns its stdout. Bounded by
/// [`CHROME_TIMEOUT`]: on a hang the whole process group is killed and the test fails.
fn chromium(tmp: &Path, name: &str, args: &[String], url: &str) -> String {
    use std::os::unix::process::CommandExt as _;
    let out_path = tmp.join(format!("{name}.stdout"));
    let err_path = tmp.join(format!("{name}.stderr"));
    let out = std::fs::File::create(&out_path).expect("stdout file");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let profile = tmp.join(format!("profile-{name}"));
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .env("HOME", tmp)
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err)
    // Its own process group, so a hang can be ended with every helper process it started.
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
    let pgid = child.id() as libc::pid_t;
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if t0.elapsed() > CHROME_TIMEOUT => {
                // SAFETY: signals the process group we created for our own child.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = child.wait();
                panic!(
                    "chromium ({name}) did not finish within {CHROME_TIMEOUT:?}: killed\n--- stderr:\n{}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("waiting for chromium: {e}"),
        }
    };
    // Helpers (zygote, GPU, renderer) that outlive the browser process are ours to end.
    // SAFETY: as above; ESRCH (nothing left) is fine.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium ({name}) failed: {status}\n--- stderr:\n{}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    stdout
}

/// A collector on a store seeded as described in the module docs, and a reader token.
struct Site {
    tmp: tempfile::TempDir,
    collector: Collector,
    token: String,
}

fn site() -> Site {
    let tmp = tempfile::Builder::new()
        .prefix("driftwatch-browser-")
        .tempdir()
        .expect("tempdir");
    let dir = tmp.path();
    let db = dir.join("collector.db");
    let token = {
        let store = SqliteStore::open(&db, jiff::tz::TimeZone::UTC).expect("open store");
        let s: &dyn Store = &store;
        let (y2, y) = (seed::days_ago(2), seed::days_ago(1));
        for h in ["web-01", "web-02", "web-03"] {
            seed::heartbeat(s, h, at(y2, "12:00"));
        }
        let t = at(y, "12:00");
        seed::ingest(
            s,
            "web-01",
            vec![
                event(1, "app/config/db.php", "modified", "change:CHG-1", t),
                event(2, "app/config/cache.php", "modified", "change:CHG-1", t),
                event(3, "index.php", "modified", "release:2026.11.3", t),
                event(4, "app/evil.php", "added", "unauthorized", t),
            ],
            t,
        );
        seed::heartbeat(s, "web-02", t);
        let now = jiff::Timestamp::now();
        seed::ingest(
            s,
            "web-02",
            vec![
                event(1, "app/config/app.php", "modified", "change:CHG-2", now),
                event(
                    2,
                    "wp-content/uploads/shell.php",
                    "added",
                    "unauthorized",
                    now,
                ),
                event(3, HOSTILE, "added", "unauthorized", now),
            ],
            now,
        );
        seed::heartbeat(s, "web-01", now);
        store
            .create_token(Role::Reader, None, "browser test", now)
            .expect("reader token")
            .1
    };
    let config = dir.join("collector.toml");
    e2e_common::write_collector_config(&config, &db);
    let collector = Collector::start(&config, dir);
    Site {
        tmp,
        collector,
        token,
    }
}

/// The text of an HTML fragment: tags dropped, entities of interest decoded, spaces squeezed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The element opened by the first tag containing `attr` (e.g. `id="hosts"`), up to its
/// closing `</tag>` (no nesting of the same tag expected inside).
fn element<'a>(dom: &'a str, tag: &str, attr: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = dom[from..].find(&format!("<{tag}")) {
        let start = from + i;
        let open_end = start + dom[start..].find('>')?;
        if dom[start..open_end].contains(attr) {
            let close = format!("</{tag}>");
            let end = open_end + dom[open_end..].find(&close)? + close.len();
            return Some(&dom[start..end]);
        }
        from = open_end;
    }
    None
}

/// The text of the first element inside `scope` whose opening tag contains `attr`.
fn text_of(scope: &str, attr: &str) -> Option<String> {
    let i = scope.find(attr)?;
    let tag_start = scope[..i].rfind('<')?;
    let name: String = scope[tag_start + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    element(&scope[tag_start..], &name, attr).map(text)
}

/// The data rows of a table (header rows dropped), as cell texts.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .split("<tr")
        .skip(1)
        .filter(|r| r.contains("<td"))
        .map(|r| {
            r.split("<td")
                .skip(1)
                .map(|c| text(&format!("<td{c}")))
                .collect()
        })
        .collect()
}

#[test]
fn dashboard_renders_the_seeded_kpis_unauthorized_changes_and_silent_hosts() {
    chromium_or_fail();
    let s = site();
    let tmp = s.tmp.path();
    let addr = &s.collector.addr;
    // The server side first: the token URL signs in (cookie + redirect to /).
    let r = get(addr, &format!("/?token={}", s.token), None, &[]);
    assert_eq!(r.status, 303, "GET /?token=T must redirect: {}", r.text());
    let login_url = format!("http://{addr}/?token={}", s.token);

    let dom = chromium(tmp, "dump", &["--dump-dom".to_string()], &login_url);
    std::fs::write(tmp.join("dashboard.html"), &dom).expect("save DOM");
    assert!(
        dom.contains("id=\"chart\""),
        "the token URL must land on the dashboard in the browser (cookie kept across the redirect); got:\n{dom}"
    );
    assert!(
        !dom.contains("Sign in"),
        "the browser is still on the sign-in page:\n{dom}"
    );

    let (today, yesterday) = (seed::today(), seed::days_ago(1));
    // Hand-computed: yesterday web-01 had the unauthorized change, web-02 only a heartbeat
    // (compliant), web-03 was silent; today web-01 is clean, web-02 has the unauthorized change.
    let cards = [
        (
            yesterday,
            "75.0%",
            "1",
            "4 changes: 3 authorized (0 retroactive)",
        ),
        (
            today,
            "33.3%",
            "2",
            "3 changes: 1 authorized (0 retroactive)",
        ),
    ];
    for (day, compliance, unauthorized, counts) in cards {
        let card = element(&dom, "div", &format!("data-day=\"{day}\""))
            .unwrap_or_else(|| panic!("no card with data-day={day} in the rendered DOM:\n{dom}"));
        assert_eq!(
            text_of(card, "data-kpi=\"change_compliance\"").as_deref(),
            Some(compliance),
            "change compliance on {day}; card: {card}"
        );
        assert_eq!(
            text_of(card, "data-kpi=\"unauthorized\"").as_deref(),
            Some(unauthorized),
            "unauthorized count on {day}; card: {card}"
        );
        assert!(
            card.contains("class=\"card miss\""),
            "{day} missed the 97% target: the card must say so: {card}"
        );
        let t = text(card);
        for want in [counts, "host-days 1/3 compliant, 1 silent"] {
            assert!(t.contains(want), "card of {day} must say {want:?}: {t}");
        }
    }

    let table = element(&dom, "table", "id=\"unauthorized\"")
        .unwrap_or_else(|| panic!("no table#unauthorized in the rendered DOM:\n{dom}"));
    let mut listed: Vec<(String, String, String)> = rows(table)
        .into_iter()
        .map(|r| {
            assert!(r.len() >= 6, "unauthorized row with too few cells: {r:?}");
            (r[1].clone(), r[3].clone(), r[5].clone())
        })
        .collect();
    listed.sort();
    let mut want: Vec<(String, String, String)> = [
        ("web-01", "app/evil.php"),
        ("web-02", "wp-content/uploads/shell.php"),
        ("web-02", HOSTILE),
    ]
    .iter()
    .map(|(h, p)| (h.to_string(), p.to_string(), "unauthorized".to_string()))
    .collect();
    want.sort();
    assert_eq!(
        listed, want,
        "unauthorized changes of yesterday and today (host, path, status)"
    );

    assert!(
        !dom.contains("<img"),
        "a hostile file name must be escaped, not become an element of the page:\n{dom}"
    );

    let silent = element(&dom, "table", "id=\"silent\"")
        .unwrap_or_else(|| panic!("no table#silent in the rendered DOM:\n{dom}"));
    let silent_hosts: Vec<String> = rows(silent).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(silent_hosts, ["web-03"], "silent hosts");

    let hosts = element(&dom, "table", "id=\"hosts\"")
        .unwrap_or_else(|| panic!("no table#hosts in the rendered DOM:\n{dom}"));
    let per_host: Vec<[String; 5]> = rows(hosts)
        .into_iter()
        .map(|r| {
            assert!(r.len() >= 7, "per-host row with too few cells: {r:?}");
            [
                r[0].clone(),
                r[2].clone(),
                r[3].clone(),
                r[5].clone(),
                r[6].clone(),
            ]
        })
        .collect();
    // Host-days over Y2, Y and today: web-01 misses Y (unauthorized), web-02 misses today,
    // web-03 only reported on Y2.
    assert_eq!(
        per_host,
        [
            ["web-01", "4", "1", "2/3", "0"],
            ["web-02", "3", "2", "2/3", "0"],
            ["web-03", "0", "0", "1/3", "2"],
        ]
        .map(|r| r.map(String::from)),
        "per-host (host, changes, unauthorized, host-days ok, silent days) over the default 30 days"
    );

    let chart = element(&dom, "svg", "id=\"chart\"").expect("svg#chart");
    assert!(
        chart.matches("<circle").count() >= 2,
        "the chart plots at least yesterday and today: {chart}"
    );

    // The screenshot: a real rendering of the same page.
    let png = tmp.join("dash.png");
    chromium(
        tmp,
        "shot",
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1200,1600".to_string(),
        ],
        &login_url,
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        bytes.len() > 20_000,
        "{} is only {} bytes: an empty page?",
        png.display(),
        bytes.len()
    );
    if let Some(keep) = std::env::var_os("DRIFTWATCH_SCREENSHOT_DIR") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).expect("screenshot dir");
        std::fs::copy(&png, keep.join("dashboard.png")).expect("copy screenshot");
    }
}

#[test]
fn dashboard_without_a_token_shows_the_sign_in_form() {
    chromium_or_fail();
    let s = site();
    let url = format!("http://{}/", s.collector.addr);
    let dom = chromium(s.tmp.path(), "anon", &["--dump-dom".to_string()], &url);
    assert!(
        dom.contains("action=\"/login\"") && dom.contains("name=\"token\""),
        "without a token the browser must get the sign-in form:\n{dom}"
    );
    assert!(
        !dom.contains("wp-content/uploads/shell.php") && !dom.contains("id=\"chart\""),
        "no data without a token:\n{dom}"
    );
}
