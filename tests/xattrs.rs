//! Extended attributes and POSIX ACLs (DESIGN §12.1 "What AIDE sees, we see"), end to end: real
//! attributes set on real files (with `lsetxattr`, so no package is needed), judged by the real
//! `driftwatch check` and by a running agent.
//!
//! A filesystem or privilege that does not allow setting an attribute makes the test print
//! `SKIP <test>: <reason>` and return: it never passes without having tried.

mod agent_common;
mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use agent_common::*;
use common::*;

/// Sets (or with `None` removes) one attribute of `path`, never following a symlink.
fn set_xattr(path: &Path, name: &str, value: Option<&[u8]>) -> std::io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).expect("no NUL in temp paths");
    let n = CString::new(name).expect("no NUL in names");
    // SAFETY: valid NUL-terminated strings and a buffer with its length.
    let rc = unsafe {
        match value {
            Some(v) => libc::lsetxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0),
            None => libc::lremovexattr(p.as_ptr(), n.as_ptr()),
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets an attribute, or prints why the test cannot run and returns from it.
macro_rules! set_or_skip {
    ($test:expr, $path:expr, $name:expr, $value:expr) => {
        if let Err(e) = set_xattr($path, $name, Some($value)) {
            eprintln!(
                "SKIP {}: cannot set {} on {}: {e}",
                $test,
                $name,
                $path.display()
            );
            return;
        }
    };
}

/// What `setcap cap_setuid+ep FILE` writes: `vfs_cap_data` revision 2, effective flag set,
/// CAP_SETUID (7) permitted.
fn cap_setuid_ep() -> Vec<u8> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x1;
    let words = [
        VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
        1 << 7, // permitted, low word
        0,      // inheritable, low word
        0,      // permitted, high word
        0,      // inheritable, high word
    ];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// What `setfacl -m u:nobody:r FILE` writes on a 0640 file: user::rw-, user:nobody:r--,
/// group::r--, mask::r--, other::--- (`posix_acl_xattr` version 2). The mask equals the group
/// bits, so the mode stays 0640.
fn acl_nobody_r() -> Vec<u8> {
    const UNDEFINED: u32 = u32::MAX;
    let entries: [(u16, u16, u32); 5] = [
        (0x01, 6, UNDEFINED), // ACL_USER_OBJ rw
        (0x02, 4, 65534),     // ACL_USER nobody r
        (0x04, 4, UNDEFINED), // ACL_GROUP_OBJ r
        (0x10, 4, UNDEFINED), // ACL_MASK r
        (0x20, 0, UNDEFINED), // ACL_OTHER
    ];
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The one change of a check report, asserted to be an unauthorized `metadata` change of `path`
/// whose detail is `detail`.
#[track_caller]
fn assert_named_metadata(r: &Value, path: &str, detail: &str) {
    assert_eq!(changes(r).len(), 1, "only {path} changed:\n{r:#}");
    let c = change(r, path);
    assert_eq!(c["change"], "metadata", "{c:#}");
    assert_eq!(c["status"], "unauthorized", "{c:#}");
    assert_eq!(c["detail"], detail, "{c:#}");
    assert_eq!(
        c["expected"]["blake3"], c["actual"]["blake3"],
        "content unchanged: {c:#}"
    );
    assert_eq!(r["summary"]["metadata"], 1, "{r:#}");
}

/// `check --format text`: what a person sees.
fn check_text(fx: &Fx) -> Out {
    run([
        "check".as_ref(),
        "--root".as_ref(),
        fx.root.as_os_str(),
        "--manifest".as_ref(),
        fx.manifest.as_os_str(),
        "--pubkey".as_ref(),
        fx.release.public.as_os_str(),
        "--host".as_ref(),
        std::ffi::OsStr::new(common::HOST),
        "--format".as_ref(),
        "text".as_ref(),
    ])
}

// ---------------------------------------------------------------------------------------------
// check against a manifest
// ---------------------------------------------------------------------------------------------

#[test]
fn check_names_a_user_xattr_added_or_changed_after_the_manifest() {
    let fx = Fx::new();
    fx.build_manifest();
    let f = fx.path("app/boot.php");
    set_or_skip!("check_names_a_user_xattr", &f, "user.x", b"1");
    let out = fx.check(&[]);
    out.expect_code(1);
    assert_named_metadata(&out.json(), "app/boot.php", "user.x added");
    let text = check_text(&fx);
    text.expect_code(1);
    assert!(
        text.stdout.lines().any(|l| l.contains("metadata")
            && l.contains("app/boot.php")
            && l.contains("user.x added")),
        "text report must name the attribute:\n{}",
        text.stdout
    );

    // Approved with user.x=1, then its value changes: named as changed.
    fx.build_manifest();
    fx.check(&[]).expect_code(0);
    set_xattr(&f, "user.x", Some(b"2")).unwrap();
    let out = fx.check(&[]);
    out.expect_code(1);
    assert_named_metadata(&out.json(), "app/boot.php", "user.x changed");
    // And removed.
    set_xattr(&f, "user.x", None).unwrap();
    let out = fx.check(&[]);
    out.expect_code(1);
    assert_named_metadata(&out.json(), "app/boot.php", "user.x removed");
}

#[test]
fn check_reports_an_added_file_capability() {
    let fx = Fx::new();
    let f = fx.write("bin/helper", b"#!/bin/sh\nexec id\n");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    fx.build_manifest();
    set_or_skip!(
        "check_reports_an_added_file_capability",
        &f,
        "security.capability",
        &cap_setuid_ep()
    );
    assert_eq!(mode_of(&f), 0o755, "a capability leaves the mode alone");
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    assert_named_metadata(&r, "bin/helper", "security.capability added");
    let c = change(&r, "bin/helper");
    assert_eq!(c["expected"]["mode"], c["actual"]["mode"], "{c:#}");
    assert!(c["expected"].get("xattrs").is_none(), "{c:#}");
    assert!(
        c["actual"]["xattrs"]
            .as_str()
            .is_some_and(|x| x.starts_with("blake3:") && x.len() == 7 + 64),
        "{c:#}"
    );
}

#[test]
fn check_reports_an_acl_that_leaves_the_mode_bits_alone() {
    let fx = Fx::new();
    let f = fx.write("config/secrets.php", b"<?php return ['db' => 'pw'];\n");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    fx.build_manifest();
    set_or_skip!(
        "check_reports_an_acl",
        &f,
        "system.posix_acl_access",
        &acl_nobody_r()
    );
    assert_eq!(mode_of(&f), 0o640, "mask r-- keeps the group bits");
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    assert_named_metadata(&r, "config/secrets.php", "system.posix_acl_access added");
    let c = change(&r, "config/secrets.php");
    assert_eq!(c["expected"]["mode"], "0640", "{c:#}");
    assert_eq!(c["actual"]["mode"], "0640", "{c:#}");
}

#[test]
fn a_manifest_built_with_attributes_approves_them() {
    let fx = Fx::new();
    let helper = fx.write("bin/helper", b"#!/bin/sh\n");
    let secrets = fx.write("config/secrets.php", b"<?php\n");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o640)).unwrap();
    let t = "a_manifest_built_with_attributes_approves_them";
    set_or_skip!(t, &fx.path("index.php"), "user.x", b"1");
    set_or_skip!(t, &helper, "security.capability", &cap_setuid_ep());
    set_or_skip!(t, &secrets, "system.posix_acl_access", &acl_nobody_r());
    // A directory's default ACL is an attribute too.
    set_or_skip!(
        t,
        &fx.path("config"),
        "system.posix_acl_default",
        &acl_nobody_r()
    );
    fx.build_manifest();
    let out = fx.check(&[]);
    out.expect_code(0);
    assert!(changes(&out.json()).is_empty(), "{}", out.stdout);

    // The manifest records the digest and the names where there are attributes, nowhere else.
    let text = std::fs::read_to_string(&fx.manifest).unwrap();
    let line = |p: &str| {
        text.lines()
            .find(|l| l.contains(&format!("\"path\":\"{p}\"")))
            .unwrap_or_else(|| panic!("no entry for {p}:\n{text}"))
            .to_string()
    };
    for (p, name) in [
        ("index.php", "user.x"),
        ("bin/helper", "security.capability"),
        ("config/secrets.php", "system.posix_acl_access"),
        ("config", "system.posix_acl_default"),
    ] {
        let l = line(p);
        assert!(l.contains("\"xattrs\":\"blake3:"), "{l}");
        assert!(
            l.contains(&format!("\"xattr_names\":{{\"{name}\":\"")),
            "{l}"
        );
    }
    assert!(!line("app/boot.php").contains("xattrs"), "{text}");
}

#[test]
fn a_malformed_xattrs_value_is_refused_naming_file_and_field() {
    let fx = Fx::new();
    set_or_skip!(
        "a_malformed_xattrs_value_is_refused",
        &fx.path("index.php"),
        "user.x",
        b"1"
    );
    fx.build_manifest();
    let text = std::fs::read_to_string(&fx.manifest).unwrap();
    let start = text.find("\"xattrs\":\"blake3:").unwrap() + "\"xattrs\":\"".len();
    let index = text[..start].matches("\"path\":").count() - 1;
    for bad in ["blake3:123", "sha256:00", "nothex"] {
        let mut broken = text.clone();
        broken.replace_range(start..start + 7 + 64, bad);
        let m = fx.base.join("broken.json");
        std::fs::write(&m, &broken).unwrap();
        let out = fx.check_with(&m, false, &[]);
        let line = out.error_line();
        assert!(line.contains("broken.json"), "names the file: {line}");
        assert!(
            line.contains(&format!("entries[{index}].xattrs")),
            "names the field: {line}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// the agent
// ---------------------------------------------------------------------------------------------

/// Waits for the agent's `metadata` event about `path` and returns how long it took.
#[track_caller]
fn wait_metadata(db: &Path, agent: &Agent, path: &str, since: Instant) -> Duration {
    wait_metadata_named(db, agent, path, since, None)
}

/// As [`wait_metadata`]; with `detail`, the stored event (what `driftwatch events` shows)
/// names the attribute too.
fn wait_metadata_named(
    db: &Path,
    agent: &Agent,
    path: &str,
    since: Instant,
    detail: Option<&str>,
) -> Duration {
    let evs = wait_events(
        db,
        &format!("metadata event for {path}"),
        Duration::from_secs(10),
        || agent.proc.log(),
        |evs| {
            about(evs, TREE, path)
                .iter()
                .any(|e| s(e, "change") == "metadata")
        },
    );
    let took = since.elapsed();
    let found = about(&evs, TREE, path);
    assert_eq!(found.len(), 1, "one event for {path}: {found:#?}");
    assert_eq!(s(found[0], "status"), "unauthorized", "{:#}", found[0]);
    if let Some(d) = detail {
        assert_eq!(s(found[0], "detail"), d, "the stored event: {:#}", found[0]);
    }
    took
}

/// The agent's drift log line for `path` names the attribute.
#[track_caller]
fn assert_logged_detail(agent: &Agent, path: &str, detail: &str) {
    let lines = agent.drift_lines(path);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("change=metadata") && l.contains(&format!("detail={detail}"))),
        "no drift line for {path} with detail={detail}:\n{}",
        agent.proc.log()
    );
}

#[test]
fn the_agent_reports_xattr_capability_and_acl_changes_in_real_time() {
    let fx = Fx::new();
    let helper = fx.write("bin/helper", b"#!/bin/sh\nexec id\n");
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secrets = fx.write("config/secrets.php", b"<?php\n");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o640)).unwrap();
    // Find out first whether this filesystem takes the attributes at all (on a scratch file).
    let probe = fx.base.join("probe");
    std::fs::write(&probe, b"").unwrap();
    let t = "the_agent_reports_xattr_changes";
    set_or_skip!(t, &probe, "user.x", b"1");
    set_or_skip!(t, &probe, "security.capability", &cap_setuid_ep());
    set_or_skip!(t, &probe, "system.posix_acl_access", &acl_nobody_r());
    fx.build_manifest();
    let spec = AgentSpec::for_fx(&fx);
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let agent = Agent::start(&config);
    let db = spec.db();

    let cases = [
        (
            "app/boot.php",
            fx.path("app/boot.php"),
            "user.x",
            b"1".to_vec(),
        ),
        ("bin/helper", helper, "security.capability", cap_setuid_ep()),
        (
            "config/secrets.php",
            secrets,
            "system.posix_acl_access",
            acl_nobody_r(),
        ),
    ];
    for (rel, abs, name, value) in &cases {
        let mode = mode_of(abs);
        let t = Instant::now();
        set_xattr(abs, name, Some(value)).unwrap();
        assert_eq!(mode_of(abs), mode, "{rel}: mode bits unchanged");
        let took = wait_metadata_named(&db, &agent, rel, t, Some(&format!("{name} added")));
        assert!(
            took <= Duration::from_secs(2),
            "{rel}: {name} → event took {took:?} (real time: ≤ 2 s)"
        );
        assert_logged_detail(&agent, rel, &format!("{name} added"));
    }
}

#[test]
fn the_agent_approves_attributes_in_the_manifest_and_a_restart_scan_sees_their_change() {
    let fx = Fx::new();
    let f = fx.path("app/boot.php");
    set_or_skip!("the_agent_approves_attributes", &f, "user.x", b"1");
    set_or_skip!(
        "the_agent_approves_attributes",
        &fx.path("app"),
        "user.dir",
        b"d"
    );
    fx.build_manifest();
    let spec = AgentSpec::for_fx(&fx);
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let mut agent = Agent::start(&config);
    // Everything is as approved: nothing to report.
    assert!(
        agent.drift_lines("app/boot.php").is_empty() && agent.drift_lines("app").is_empty(),
        "attributes in the manifest are approved:\n{}",
        agent.proc.log()
    );
    agent.proc.terminate();
    let events = if spec.db().exists() {
        events_db(&spec.db())
    } else {
        Vec::new()
    };
    assert!(
        about(&events, TREE, "app/boot.php").is_empty(),
        "{events:#?}"
    );

    // Changed while the agent is down: the start-up scan (stat cache and all) reports it, from
    // the attribute sets it saved in snapshot.bin.
    set_xattr(&f, "user.x", Some(b"2")).unwrap();
    let t = Instant::now();
    let agent = Agent::start(&config);
    wait_metadata(&spec.db(), &agent, "app/boot.php", t);
    assert_logged_detail(&agent, "app/boot.php", "user.x changed");
    assert!(
        !agent.proc.log().contains("re-baselin"),
        "the DWSNAP4 state was read back, not rebuilt:\n{}",
        agent.proc.log()
    );
    assert!(
        agent.drift_lines("app").is_empty(),
        "the directory's attribute did not change:\n{}",
        agent.proc.log()
    );
}

#[test]
fn a_one_shot_scan_reports_the_named_attribute_in_json_and_text() {
    let fx = Fx::new();
    fx.build_manifest();
    let spec = AgentSpec::for_fx(&fx);
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let scan = |format: &str| {
        run([
            "scan".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--format".as_ref(),
            std::ffi::OsStr::new(format),
        ])
    };
    scan("json").expect_code(0);
    let f = fx.path("index.php");
    set_or_skip!(
        "a_one_shot_scan_reports_the_named_attribute",
        &f,
        "security.capability",
        &cap_setuid_ep()
    );
    let out = scan("json");
    out.expect_code(1);
    let trees = out.json();
    let events: Vec<&Value> = trees[0]["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| s(e, "path") == "index.php")
        .collect();
    assert_eq!(events.len(), 1, "{trees:#}");
    assert_eq!(s(events[0], "change"), "metadata", "{trees:#}");
    assert_eq!(s(events[0], "status"), "unauthorized", "{trees:#}");
    assert_eq!(
        s(events[0], "detail"),
        "security.capability added",
        "{trees:#}"
    );
    // Still open, still reported by name in the next scan's text (nothing new is counted).
    set_xattr(&f, "security.capability", None).unwrap();
    let out = scan("text");
    out.expect_code(0);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("index.php") && l.contains("security.capability removed")),
        "{}",
        out.stdout
    );
}
