//! `driftwatch report` (the release manager's morning summary) on a store seeded through the
//! library with hand-computed figures: Markdown and HTML, from the store file and through a
//! running collector, and the exit code against the 97% target.
//!
//! The seeded fleet (all `production`, tree `shop`; D = three days ago, D2 = two days ago):
//!
//! | when      | web-01                                   | web-02                   | web-03    |
//! |-----------|------------------------------------------|--------------------------|-----------|
//! | D-1 12:00 | heartbeat                                | heartbeat                | heartbeat |
//! | D 09:00   | change:CHG-1, release, unauthorized→(*), excluded | —               | silent    |
//! | D 10:00   | —                                        | unauthorized shell.php   | silent    |
//! | D2 10:00  | (*) re-classified retroactive:CHG-9      | —                        | —         |
//! | D2 11:00  | change:CHG-2                             | heartbeat                | silent    |
//!
//! Day D: 4 counted changes (the excluded one is not counted), 3 authorized of which 1
//! retroactive, 1 unauthorized, 0 unverifiable: change compliance 3/4 = 75.0% < 97% → missed,
//! exit 1. Host-days: 3 expected; web-01 compliant, web-02 not (unauthorized), web-03 silent →
//! 1 of 3 compliant, 1 silent.
//! Day D2: 1 change, authorized: 100.0% → met, exit 0; host-days 2 of 3 compliant, 1 silent.

mod common;
mod e2e_common;

use std::path::{Path, PathBuf};

use driftwatch::store::sqlite::SqliteStore;
use driftwatch::store::{Role, Store};
use e2e_common::seed::{self, at, b3, event};
use jiff::civil::Date;

struct Seeded {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    db: PathBuf,
    d: Date,
    d2: Date,
}

fn seeded() -> Seeded {
    let tmp = tempfile::Builder::new()
        .prefix("driftwatch-report-")
        .tempdir()
        .expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let db = dir.join("collector.db");
    let d = seed::days_ago(3);
    let d1 = seed::days_ago(4);
    let d2 = seed::days_ago(2);
    let store = SqliteStore::open(&db, jiff::tz::TimeZone::UTC).expect("open store");
    let s: &dyn Store = &store;
    for h in ["web-01", "web-02", "web-03"] {
        seed::heartbeat(s, h, at(d1, "12:00"));
    }
    let t = at(d, "09:00");
    seed::ingest(
        s,
        "web-01",
        vec![
            event(1, "app/config/db.php", "modified", "change:CHG-1", t),
            event(2, "app/checkout.js", "modified", "unauthorized", t),
            event(3, "index.php", "modified", "release:2026.11.3", t),
            event(4, "var/cache/page.html", "modified", "excluded", t),
        ],
        t,
    );
    let t = at(d, "10:00");
    seed::ingest(
        s,
        "web-02",
        vec![event(
            1,
            "wp-content/uploads/shell.php",
            "added",
            "unauthorized",
            t,
        )],
        t,
    );
    // The next morning the day is sealed into the chain (a KPI read), then the emergency change
    // gets its after-the-fact approval: the sealed day gets a new version of its row.
    let sealed = s
        .host_days(d, d, None, at(d2, "09:00"))
        .expect("host_days seals day D");
    assert_eq!(sealed.len(), 3, "3 host-days expected on D: {sealed:?}");
    let id = seed::event_id(s, "web-01", "app/checkout.js");
    s.reclassify(
        id,
        "retroactive:CHG-9",
        "CHG-9 approved after the fact",
        at(d2, "10:00"),
    )
    .expect("reclassify");
    let t = at(d2, "11:00");
    seed::ingest(
        s,
        "web-01",
        vec![event(5, "app/config/db.php", "modified", "change:CHG-2", t)],
        t,
    );
    seed::heartbeat(s, "web-02", t);
    Seeded {
        _tmp: tmp,
        dir,
        db,
        d,
        d2,
    }
}

fn report(args: &[&str]) -> common::Out {
    let mut v = vec!["report"];
    v.extend_from_slice(args);
    common::run(&v)
}

fn db_arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// The Markdown figures of day D, hand-computed (see the module docs).
#[track_caller]
fn assert_day_d_markdown(md: &str, d: Date) {
    let lines: Vec<&str> = md.lines().collect();
    let line = |needle: &str| -> &str {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line containing {needle:?} in the report:\n{md}"))
    };
    assert!(
        lines[0].contains(&d.to_string()),
        "the title names the day {d}:\n{md}"
    );
    let head = line("Change compliance");
    for want in ["75.0%", "97.0%", "MISSED"] {
        assert!(
            head.contains(want),
            "headline {head:?} must contain {want:?}"
        );
    }
    let counts = line("changes:");
    for want in [
        "4 changes",
        "3 authorized",
        "(1 retroactive)",
        "1 unauthorized",
        "0 unverifiable",
        "1 of 3 compliant",
        "1 silent",
    ] {
        assert!(
            counts.contains(want),
            "counts line {counts:?} must contain {want:?}"
        );
    }
    assert!(
        md.contains("## Unauthorized changes (1)"),
        "one unauthorized change:\n{md}"
    );
    let row = line("shell.php");
    let cells: Vec<&str> = row
        .trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(
        cells,
        [
            &format!("{d}T10:00:00Z"),
            "web-02",
            "shop",
            "`wp-content/uploads/shell.php`",
            "added",
            "unauthorized",
            "yes",
            &b3("wp-content/uploads/shell.php")[..16],
        ],
        "unauthorized row:\n{md}"
    );
    assert!(
        !md.contains("app/checkout.js` | modified | unauthorized"),
        "the re-classified change must not be listed as unauthorized:\n{md}"
    );
    assert!(md.contains("## Silent hosts (1)"), "one silent host:\n{md}");
    let silent = line("web-03");
    assert!(
        silent.starts_with("- web-03") && silent.contains("production"),
        "silent host line {silent:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("- web-01") || l.starts_with("- web-02")),
        "only web-03 is silent:\n{md}"
    );
    assert!(
        md.contains("## Retroactive approvals (1)"),
        "one retroactive approval:\n{md}"
    );
    let retro = line("retroactive:CHG-9");
    for want in [
        "web-01",
        "app/checkout.js",
        "modified",
        &format!("{d}T09:00:00Z"),
    ] {
        assert!(
            retro.contains(want),
            "retroactive line {retro:?} must contain {want:?}"
        );
    }
}

#[test]
fn markdown_report_of_a_missed_day_has_the_hand_computed_figures_and_exits_1() {
    let s = seeded();
    let day = s.d.to_string();
    let out = report(&["--date", &day, "--db", db_arg(&s.db)]);
    out.expect_code(1);
    assert_day_d_markdown(&out.stdout, s.d);
}

#[test]
fn html_report_has_the_same_figures() {
    let s = seeded();
    let day = s.d.to_string();
    let out = report(&["--date", &day, "--format", "html", "--db", db_arg(&s.db)]);
    out.expect_code(1);
    let html = &out.stdout;
    assert!(
        html.trim_start()
            .to_ascii_lowercase()
            .starts_with("<!doctype html"),
        "an HTML document:\n{html}"
    );
    for want in [
        day.as_str(),
        "75.0%",
        "97.0%",
        "missed",
        "4 changes",
        "3 authorized (1 retroactive)",
        "1 unauthorized",
        "0 unverifiable",
        "1 of 3 compliant",
        "1 silent",
        "Unauthorized changes (1)",
        "<td>web-02</td>",
        "wp-content/uploads/shell.php",
        "<td>added</td>",
        "Silent hosts (1)",
        "web-03 (production)",
        "Retroactive approvals (1)",
        "retroactive:CHG-9 on web-01",
        "app/checkout.js",
    ] {
        assert!(
            html.contains(want),
            "HTML report must contain {want:?}:\n{html}"
        );
    }
    assert!(
        !html.contains("<td>web-01</td>"),
        "web-01 has no unauthorized change that day:\n{html}"
    );
}

#[test]
fn a_day_that_met_the_target_exits_0() {
    let s = seeded();
    let day = s.d2.to_string();
    for format in ["md", "html"] {
        let out = report(&["--date", &day, "--format", format, "--db", db_arg(&s.db)]);
        out.expect_code(0);
        for want in [
            "100.0%",
            "1 changes",
            "0 unauthorized",
            "2 of 3 compliant",
            "1 silent",
        ] {
            assert!(
                out.stdout.contains(want),
                "report ({format}) of {day} must contain {want:?}:\n{}",
                out.stdout
            );
        }
        assert!(
            !out.stdout.contains("MISSED") && !out.stdout.contains("missed"),
            "{day} met the target:\n{}",
            out.stdout
        );
    }
}

#[test]
fn report_through_a_running_collector_matches_the_store() {
    let s = seeded();
    let (_, token) = {
        let store = SqliteStore::open(&s.db, jiff::tz::TimeZone::UTC).expect("open store");
        store
            .create_token(Role::Reader, None, "report test", jiff::Timestamp::now())
            .expect("token")
    };
    let token_file = s.dir.join("reader.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let config = s.dir.join("collector.toml");
    e2e_common::write_collector_config(&config, &s.db);
    let c = e2e_common::Collector::start(&config, &s.dir);
    let url = c.url();
    let day = s.d.to_string();
    let tf = token_file.to_str().expect("utf-8");

    let remote = report(&["--date", &day, "--collector", &url, "--token-file", tf]);
    let local = report(&["--date", &day, "--db", db_arg(&s.db)]);
    assert_eq!(
        remote.stdout, local.stdout,
        "the report must not depend on where it reads from"
    );
    assert_day_d_markdown(&remote.stdout, s.d);
    remote.expect_code(1);

    // Without --date both report yesterday.
    let remote = report(&["--collector", &url, "--token-file", tf]);
    let local = report(&["--db", db_arg(&s.db)]);
    let yesterday = seed::days_ago(1).to_string();
    for out in [&remote, &local] {
        assert!(
            out.stdout
                .lines()
                .next()
                .is_some_and(|l| l.contains(&yesterday)),
            "`{}` without --date reports yesterday, {yesterday}:\n{}{}",
            out.cmd,
            out.stdout,
            out.stderr
        );
    }
    assert_eq!(remote.stdout, local.stdout, "yesterday, remote and local");

    let day2 = s.d2.to_string();
    report(&["--date", &day2, "--collector", &url, "--token-file", tf]).expect_code(0);
}

/// A file name chosen by an attacker lands in a report mailed to people: it must not inject
/// HTML, nor break the Markdown table.
#[test]
fn hostile_path_names_are_escaped_in_both_formats() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("collector.db");
    let d = seed::days_ago(2);
    let hostile = "wp-content/uploads/a|b<img src=x onerror=alert(1)>.php";
    {
        let store = SqliteStore::open(&db, jiff::tz::TimeZone::UTC).expect("open store");
        let s: &dyn Store = &store;
        seed::heartbeat(s, "web-01", at(seed::days_ago(3), "12:00"));
        let t = at(d, "08:00");
        seed::ingest(
            s,
            "web-01",
            vec![event(1, hostile, "added", "unauthorized", t)],
            t,
        );
    }
    let day = d.to_string();
    let html = report(&["--date", &day, "--format", "html", "--db", db_arg(&db)]);
    html.expect_code(1);
    assert!(
        !html.stdout.contains("<img"),
        "the path must be escaped in HTML, not rendered as an element:\n{}",
        html.stdout
    );
    assert!(
        html.stdout.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "the escaped path must still be shown:\n{}",
        html.stdout
    );
    let md = report(&["--date", &day, "--db", db_arg(&db)]);
    md.expect_code(1);
    let row = md
        .stdout
        .lines()
        .find(|l| l.contains("onerror"))
        .unwrap_or_else(|| panic!("no row for the hostile path:\n{}", md.stdout));
    // Cells are split on pipes that are not escaped.
    let mut cells = 0;
    let mut prev = ' ';
    for c in row.trim().trim_matches('|').chars() {
        if c == '|' && prev != '\\' {
            cells += 1;
        }
        prev = c;
    }
    assert_eq!(
        cells + 1,
        8,
        "the hostile path must not add a column to the Markdown table: {row}"
    );
}

/// A mistyped `--db` path must not look like a perfect day: a read-only command must not create
/// an empty store and report "target met" (exit 0) from it.
#[test]
fn a_missing_store_is_an_error_not_an_empty_compliant_day() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("typo.db");
    let day = seed::days_ago(1).to_string();
    let out = report(&["--date", &day, "--db", db_arg(&missing)]);
    assert!(
        !missing.exists(),
        "`{}` created {} (an empty store) instead of failing",
        out.cmd,
        missing.display()
    );
    let line = out.error_line();
    assert!(
        line.contains("typo.db"),
        "the error must name the missing store: {line}"
    );
}
