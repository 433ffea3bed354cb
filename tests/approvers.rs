//! Approvals bound to people (DESIGN §12.2): `[trust] approvers = [{ name, key }]` and
//! `check --approver NAME=PUB`. An entry signed by bob's key that says `approved_by = "carol"`
//! authorizes nothing, in `check`, in the agent and at the collector, and is reported.

mod agent_common;
mod collector_common;
mod common;

use std::ffi::OsStr;
use std::time::Duration;

use serde_json::{Value, json};

use agent_common::*;
use collector_common::Site;
use common::{Entry, Fx, run, status_of};

fn approver_arg(name: &str, key: &std::path::Path) -> String {
    format!("{name}={}", key.display())
}

/// The same key, bound or not, and the same entry text: only the binding differs.
#[test]
fn check_refuses_an_entry_whose_approver_is_not_the_signer() {
    let fx = Fx::new();
    fx.build_manifest();
    fx.append("app/checkout.js", b"// hotfix\n");
    fx.append("app/boot.php", b"// tuned\n");
    let bob = common::keygen(&fx.base.join("keys/bob"));
    let mut claims_carol = Entry::new("CHG-1", &["app/checkout.js"]);
    claims_carol.approved_by = Some("carol".into());
    common::sign(&fx.write_entry(&claims_carol), &bob.secret);
    let honest = Entry::new("CHG-2", &["app/boot.php"]);
    common::sign(&fx.write_entry(&honest), &bob.secret);

    let bound = approver_arg("bob", &bob.public);
    let out = fx.check_changes(&["--approver", &bound]);
    out.expect_code(1);
    let report = out.json();
    assert_eq!(status_of(&report, "app/checkout.js"), "unauthorized");
    assert_eq!(status_of(&report, "app/boot.php"), "change:CHG-2");
    let warned: Vec<&str> = out
        .warnings()
        .into_iter()
        .filter(|w| w.contains("CHG-1.toml"))
        .collect();
    assert_eq!(warned.len(), 1, "stderr:\n{}", out.stderr);
    assert!(
        warned[0].contains("\"carol\"") && warned[0].contains("\"bob\""),
        "{}",
        warned[0]
    );
    assert!(warned[0].contains("authorizes nothing"), "{}", warned[0]);

    // `--approver-pubkey` keeps its meaning: that key may sign for any name.
    let any = fx.check_changes(&["--approver-pubkey", bob.public.to_str().unwrap()]);
    any.expect_code(0);
    assert_eq!(status_of(&any.json(), "app/checkout.js"), "change:CHG-1");

    // `changes list` shows the verified approver, and warns about the refused entry.
    let list = run([
        "changes",
        "list",
        "--dir",
        fx.changes.to_str().unwrap(),
        "--approver",
        &bound,
        "--format",
        "json",
    ]);
    list.expect_code(0);
    let rows: Value = list.json();
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["id"], "CHG-2");
    assert_eq!(rows[0]["verified_approver"], "bob");
    assert!(list.stderr.contains("CHG-1.toml"), "{}", list.stderr);
    let bad = run([
        "check",
        "--root",
        "x",
        "--manifest",
        "y",
        "--approver",
        "bob",
    ]);
    bad.expect_code(2);
    assert!(bad.stderr.contains("NAME=PUBKEY"), "{}", bad.stderr);
}

fn collector_site(bob_pub: &std::path::Path, release_pub: &std::path::Path) -> Site {
    Site::with(&format!(
        "[trust]\nrelease_keys = [{}]\napprovers = [{{ name = \"bob\", key = {} }}]\n",
        collector_common::toml_str(&release_pub.display().to_string()),
        collector_common::toml_str(&bob_pub.display().to_string()),
    ))
}

#[test]
fn the_collector_refuses_an_approval_by_the_wrong_person_with_the_reason() {
    let fx = Fx::empty();
    let bob = common::keygen(&fx.base.join("keys/bob"));
    let site = collector_site(&bob.public, &fx.release.public);
    let admin = site.token("admin", None);
    let c = site.start();

    let post = |e: &Entry| {
        let p = fx.write_entry(e);
        common::sign(&p, &bob.secret);
        let sig = std::fs::read_to_string({
            let mut s = p.clone().into_os_string();
            s.push(".minisig");
            std::path::PathBuf::from(s)
        })
        .expect("sig");
        c.post_json(
            "/api/v1/changes",
            Some(&admin),
            &json!({"toml": e.to_toml(), "minisig": sig}),
        )
    };
    let mut carol = Entry::new("CHG-10", &["app/**"]);
    carol.approved_by = Some("carol".into());
    let refused = post(&carol);
    assert_eq!(refused.status, 403, "{}", refused.text());
    let why = refused.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("\"carol\"") && why.contains("bound to approver \"bob\""),
        "{why}"
    );
    let ok = post(&Entry::new("CHG-11", &["app/**"]));
    assert_eq!(ok.status, 201, "{}", ok.text());

    let list = c.get_json("/api/v1/changes", &admin);
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1, "the refused entry is not stored: {list:#?}");
    assert_eq!(list[0]["id"], "CHG-11");
    assert_eq!(list[0]["verified_approver"], "bob");

    // An event the entry authorized shows who, provably, approved it.
    let agent = site.token("agent", Some("web-01"));
    let reader = site.token("reader", None);
    let observed = common::rfc3339(-60);
    c.ingest(
        &agent,
        &collector_common::batch(
            "web-01",
            vec![
                collector_common::event(1, "app/a.php", "modified", "change:CHG-11", &observed),
                collector_common::event(2, "app/b.php", "added", "unauthorized", &observed),
            ],
        ),
    );
    let evs = c.get_json("/api/v1/events", &reader);
    let evs = evs.as_array().expect("array");
    let by_path = |p: &str| evs.iter().find(|e| e["path"] == p).expect("event");
    assert_eq!(by_path("app/a.php")["verified_approver"], "bob", "{evs:#?}");
    assert!(
        by_path("app/b.php").get("verified_approver").is_none(),
        "{evs:#?}"
    );

    let tf = site.token_file("admin.token", &admin);
    let out = run([
        OsStr::new("changes"),
        OsStr::new("list"),
        OsStr::new("--collector"),
        OsStr::new(&c.url),
        OsStr::new("--token-file"),
        tf.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("json"),
    ]);
    out.expect_code(0);
    assert_eq!(out.json()[0]["verified_approver"], "bob");
}

#[test]
fn the_agent_logs_and_ignores_an_approval_by_the_wrong_person() {
    let fx = Fx::new();
    fx.build_manifest();
    let bob = common::keygen(&fx.base.join("keys/bob"));
    let mut spec = AgentSpec::for_fx(&fx);
    spec.approver_keys = Vec::new();
    let config = fx.base.join("agent.toml");
    let text = spec.to_toml().replace(
        "approver_keys = []",
        &format!(
            "approvers = [{{ name = \"bob\", key = {} }}]",
            toml_path(&bob.public)
        ),
    );
    std::fs::write(&config, text).expect("write config");
    let mut carol = Entry::new("CHG-20", &["app/checkout.js"]);
    carol.approved_by = Some("carol".into());
    common::sign(&fx.write_entry(&carol), &bob.secret);
    common::sign(
        &fx.write_entry(&Entry::new("CHG-21", &["app/boot.php"])),
        &bob.secret,
    );
    let agent = Agent::start(&config);
    fx.append("app/checkout.js", b"// hotfix\n");
    fx.append("app/boot.php", b"// tuned\n");
    let evs = wait_events(
        &spec.db(),
        "both changes",
        Duration::from_secs(20),
        || agent.proc.log(),
        |evs| {
            !about(evs, "shop", "app/checkout.js").is_empty()
                && !about(evs, "shop", "app/boot.php").is_empty()
        },
    );
    assert_eq!(
        s(about(&evs, "shop", "app/checkout.js")[0], "status"),
        "unauthorized"
    );
    assert_eq!(
        s(about(&evs, "shop", "app/boot.php")[0], "status"),
        "change:CHG-21"
    );
    let log = agent.proc.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("change entry refused") && l.contains("CHG-20.toml"))
        .collect();
    assert!(!refused.is_empty(), "{log}");
    assert!(refused[0].contains("carol"), "{}", refused[0]);
}
