//! `driftwatch changes new` (DESIGN §12.2): one command writes, signs and registers an entry in
//! a change directory or on a collector, and prints its id alone on stdout.

mod agent_common;
mod collector_common;
mod common;

use std::ffi::OsStr;

use agent_common::AgentSpec;
use collector_common::Site;
use common::{Fx, run, status_of};

fn new_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["changes", "new"];
    v.extend_from_slice(extra);
    v
}

#[test]
fn changes_new_logs_and_signs_into_a_dir_and_the_change_is_authorized() {
    let fx = Fx::new();
    fx.build_manifest();
    fx.append("app/checkout.js", b"// hotfix\n");
    let dir = fx.changes.to_str().unwrap();
    let key = fx.cab.secret.to_str().unwrap();
    let out = run(new_args(&[
        "--summary",
        "Hotfix: rounding",
        "--paths",
        "app/checkout.js",
        "--hosts",
        "web-*",
        "--trees",
        "shop",
        "--for",
        "2h",
        "--requested-by",
        "alice",
        "--approve",
        "--key",
        key,
        "--by",
        "bob",
        "--dir",
        dir,
    ]));
    out.expect_code(0);
    let id = out.stdout.trim().to_string();
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "the id alone: {:?}",
        out.stdout
    );
    assert!(
        id.starts_with("CHG-") && id.len() == "CHG-20261201-100000-abcdef".len(),
        "{id}"
    );
    let file = fx.changes.join(format!("{id}.toml"));
    let text = std::fs::read_to_string(&file).expect("entry written");
    assert!(text.contains("approved_by = \"bob\""), "{text}");
    assert!(fx.changes.join(format!("{id}.toml.minisig")).is_file());

    let checked = fx.check_changes(&["--approver", &format!("bob={}", fx.cab.public.display())]);
    checked.expect_code(0);
    assert_eq!(
        status_of(&checked.json(), "app/checkout.js"),
        format!("change:{id}")
    );

    // The same ticket id twice does not replace the first.
    let again = run(new_args(&[
        "--id",
        &id,
        "--summary",
        "x",
        "--paths",
        "a",
        "--hosts",
        "h",
        "--for",
        "1h",
        "--requested-by",
        "alice",
        "--dir",
        dir,
    ]));
    again.expect_code(2);
    assert!(again.error_line().contains("exists"), "{}", again.stderr);
}

#[test]
fn changes_new_names_every_missing_field_in_one_line() {
    let fx = Fx::empty();
    let out = run(new_args(&[
        "--dir",
        fx.changes.to_str().unwrap(),
        "--approve",
    ]));
    out.expect_code(2);
    let line = out.error_line();
    for want in [
        "--summary",
        "--paths",
        "--hosts",
        "--requested-by",
        "--for",
        "--key",
        "--by",
    ] {
        assert!(line.contains(want), "{line} should name {want}");
    }
    assert_eq!(
        std::fs::read_dir(&fx.changes).unwrap().count(),
        0,
        "nothing written"
    );
    let nowhere = run(new_args(&[
        "--summary",
        "s",
        "--paths",
        "a",
        "--hosts",
        "h",
        "--for",
        "1h",
        "--requested-by",
        "a",
    ]));
    nowhere.expect_code(2);
    assert!(nowhere.error_line().contains("--dir"), "{}", nowhere.stderr);
}

#[test]
fn changes_new_takes_host_trees_and_dir_from_the_agent_config() {
    let fx = Fx::new();
    fx.build_manifest();
    let spec = AgentSpec::for_fx(&fx);
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let out = run([
        OsStr::new("changes"),
        OsStr::new("new"),
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--summary"),
        OsStr::new("rotate logs"),
        OsStr::new("--paths"),
        OsStr::new("var/log/**"),
        OsStr::new("--start"),
        OsStr::new("2026-11-20T22:00:00Z"),
        OsStr::new("--end"),
        OsStr::new("2026-11-20T23:00:00Z"),
        OsStr::new("--requested-by"),
        OsStr::new("alice"),
    ]);
    out.expect_code(0);
    let id = out.stdout.trim();
    let text = std::fs::read_to_string(fx.changes.join(format!("{id}.toml"))).expect("written");
    let v: toml::Table = toml::from_str(&text).expect("toml");
    assert_eq!(
        v["hosts"].as_array().unwrap()[0].as_str(),
        Some(common::HOST)
    );
    assert_eq!(
        v["trees"].as_array().unwrap()[0].as_str(),
        Some(common::TREE)
    );
    assert_eq!(v["start"].as_str(), Some("2026-11-20T22:00:00Z"));
    assert!(v.get("approved_by").is_none(), "not approved: {text}");
}

#[test]
fn changes_new_registers_on_a_collector_under_the_approver_binding() {
    let fx = Fx::empty();
    let bob = common::keygen(&fx.base.join("keys/bob"));
    let site = Site::with(&format!(
        "[trust]\nrelease_keys = [{}]\napprovers = [{{ name = \"bob\", key = {} }}]\n",
        collector_common::toml_str(&fx.release.public.display().to_string()),
        collector_common::toml_str(&bob.public.display().to_string()),
    ));
    let admin = site.token("admin", None);
    let tf = site.token_file("admin.token", &admin);
    let c = site.start();
    let new = |by: &str| {
        run([
            "changes",
            "new",
            "--summary",
            "reindex",
            "--paths",
            "app/**",
            "--hosts",
            "web-*",
            "--for",
            "30m",
            "--requested-by",
            "alice",
            "--approve",
            "--key",
            bob.secret.to_str().unwrap(),
            "--by",
            by,
            "--collector",
            &c.url,
            "--token-file",
            tf.to_str().unwrap(),
        ])
    };
    let ok = new("bob");
    ok.expect_code(0);
    let id = ok.stdout.trim().to_string();
    let list = c.get_json("/api/v1/changes", &admin);
    let stored = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not on the collector: {list:#}"));
    assert_eq!(stored["verified_approver"], "bob");
    assert!(stored["minisig"].as_str().is_some_and(|s| !s.is_empty()));

    let wrong = new("carol");
    wrong.expect_code(2);
    assert!(
        wrong.error_line().contains("bound to approver \"bob\""),
        "{}",
        wrong.stderr
    );
    assert_eq!(
        c.get_json("/api/v1/changes", &admin)
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
