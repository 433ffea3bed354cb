//! Keys and signatures: `keygen`, `sign`, `verify`, `manifest verify`, and interoperability with
//! the stock `minisign` tool (Debian package `minisign`), which these tests require.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

// ---------------------------------------------------------------------------------------------
// keygen, sign, verify
// ---------------------------------------------------------------------------------------------

#[test]
fn keygen_writes_secret_0600_and_public() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(&dir.path().join("release"));
    assert_eq!(keys.secret, dir.path().join("release.key"));
    assert_eq!(keys.public, dir.path().join("release.pub"));
    let mode = fs::metadata(&keys.secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret key mode must be 0600, is {mode:04o}");
    let public = fs::read_to_string(&keys.public).unwrap();
    assert!(
        public.starts_with("untrusted comment:"),
        "minisign public key format: {public:?}"
    );
    assert_eq!(public.lines().count(), 2, "{public:?}");
    let secret = fs::read_to_string(&keys.secret).unwrap();
    assert!(
        secret.starts_with("untrusted comment:"),
        "minisign secret key format"
    );
    assert!(
        !public.contains(secret.lines().nth(1).unwrap()),
        "the public key must not hold the secret"
    );
    // no temp files left behind
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "only the two key files: {names:?}");
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("k");
    let keys = keygen(&prefix);
    let before = fs::read(&keys.secret).unwrap();
    let out = run([os("keygen"), os("--out"), prefix.as_os_str()]);
    let line = out.error_line();
    assert!(
        line.contains(keys.secret.to_str().unwrap())
            || line.contains(keys.public.to_str().unwrap()),
        "{line}"
    );
    assert_eq!(
        fs::read(&keys.secret).unwrap(),
        before,
        "the old key must survive"
    );
    run([os("keygen"), os("--out"), prefix.as_os_str(), os("--force")]).expect_code(0);
    assert_ne!(
        fs::read(&keys.secret).unwrap(),
        before,
        "--force writes a new key"
    );
    assert_eq!(
        fs::metadata(&keys.secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn sign_verify_round_trip_and_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(&dir.path().join("k"));
    let f = dir.path().join("CHG-1.toml");
    fs::write(&f, b"id = \"CHG-1\"\n").unwrap();
    sign(&f, &keys.secret);
    assert!(dir.path().join("CHG-1.toml.minisig").exists());
    let out = run([
        os("verify"),
        f.as_os_str(),
        os("--pubkey"),
        keys.public.as_os_str(),
    ]);
    out.expect_code(0);
    // tampered after signing
    fs::write(&f, b"id = \"CHG-2\"\n").unwrap();
    let out = run([
        os("verify"),
        f.as_os_str(),
        os("--pubkey"),
        keys.public.as_os_str(),
    ]);
    let line = out.error_line();
    assert!(
        line.contains(f.to_str().unwrap()),
        "must name the file: {line}"
    );
}

#[test]
fn verify_with_another_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(&dir.path().join("k"));
    let other = keygen(&dir.path().join("other"));
    let f = dir.path().join("m.json");
    fs::write(&f, b"{}").unwrap();
    sign(&f, &keys.secret);
    let out = run([
        os("verify"),
        f.as_os_str(),
        os("--pubkey"),
        other.public.as_os_str(),
    ]);
    let line = out.error_line();
    assert!(
        line.contains(f.to_str().unwrap()),
        "must name the file: {line}"
    );
    // any one of several trusted keys will do
    run([
        os("verify"),
        f.as_os_str(),
        os("--pubkey"),
        other.public.as_os_str(),
        os("--pubkey"),
        keys.public.as_os_str(),
    ])
    .expect_code(0);
}

#[test]
fn verify_unsigned_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(&dir.path().join("k"));
    let f = dir.path().join("m.json");
    fs::write(&f, b"{}").unwrap();
    let line = run([
        os("verify"),
        f.as_os_str(),
        os("--pubkey"),
        keys.public.as_os_str(),
    ])
    .error_line()
    .to_string();
    assert!(
        line.contains(f.to_str().unwrap()),
        "must name the file: {line}"
    );
}

#[test]
fn verify_with_garbage_pubkey_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(&dir.path().join("k"));
    let f = dir.path().join("m.json");
    fs::write(&f, b"{}").unwrap();
    sign(&f, &keys.secret);
    let bad = dir.path().join("bad.pub");
    fs::write(&bad, b"this is not a key\n").unwrap();
    let line = run([os("verify"), f.as_os_str(), os("--pubkey"), bad.as_os_str()])
        .error_line()
        .to_string();
    assert!(
        line.contains(bad.to_str().unwrap()),
        "must name the key file: {line}"
    );
}

#[test]
fn sign_with_missing_key_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.json");
    fs::write(&f, b"{}").unwrap();
    let missing = dir.path().join("nope.key");
    let line = run([os("sign"), f.as_os_str(), os("--key"), missing.as_os_str()])
        .error_line()
        .to_string();
    assert!(
        line.contains(missing.to_str().unwrap()),
        "must name the key file: {line}"
    );
    assert!(!dir.path().join("m.json.minisig").exists());
}

#[test]
fn manifest_verify_checks_signature_and_content() {
    let fx = Fx::new();
    fx.build_manifest();
    let out = run([
        os("manifest"),
        os("verify"),
        fx.manifest.as_os_str(),
        os("--pubkey"),
        fx.release.public.as_os_str(),
    ]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("r1"),
        "names the release: {}",
        out.stdout
    );
    // re-signing via `manifest sign` verifies too
    run([
        os("manifest"),
        os("sign"),
        fx.manifest.as_os_str(),
        os("--key"),
        fx.release.secret.as_os_str(),
    ])
    .expect_code(0);
    run([
        os("manifest"),
        os("verify"),
        fx.manifest.as_os_str(),
        os("--pubkey"),
        fx.release.public.as_os_str(),
    ])
    .expect_code(0);
    // by the approver key: not trusted for this manifest
    let line = run([
        os("manifest"),
        os("verify"),
        fx.manifest.as_os_str(),
        os("--pubkey"),
        fx.cab.public.as_os_str(),
    ])
    .error_line()
    .to_string();
    assert!(line.contains(fx.manifest.to_str().unwrap()), "{line}");
    // a validly signed file that is not a manifest
    let not_manifest = fx.base.join("note.json");
    fs::write(&not_manifest, b"{\"hello\": 1}").unwrap();
    sign(&not_manifest, &fx.release.secret);
    let line = run([
        os("manifest"),
        os("verify"),
        not_manifest.as_os_str(),
        os("--pubkey"),
        fx.release.public.as_os_str(),
    ])
    .error_line()
    .to_string();
    assert!(line.contains(not_manifest.to_str().unwrap()), "{line}");
}

#[test]
fn manifest_build_is_canonical_and_signed() {
    let fx = Fx::new();
    fx.build_manifest();
    let m: serde_json::Value = serde_json::from_slice(&fs::read(&fx.manifest).unwrap()).unwrap();
    assert_eq!(m["format"], "driftwatch.manifest.v1");
    assert_eq!(m["tree"], TREE);
    assert_eq!(m["release"], "r1");
    assert_eq!(m["created_by"], "ci@test");
    let paths: Vec<&str> = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "entries sorted by path");
    let index = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "index.php")
        .unwrap();
    assert_eq!(index["type"], "file");
    assert_eq!(
        index["blake3"],
        blake3_hex(&fs::read(fx.path("index.php")).unwrap())
    );
    assert!(fx.base.join("manifest.json.minisig").exists());
}

// ---------------------------------------------------------------------------------------------
// Interop with the stock minisign tool.
// ---------------------------------------------------------------------------------------------

/// The `minisign` binary; these tests FAIL (never silently pass) when it is missing.
fn minisign() -> Command {
    let found = Command::new("minisign")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if found.is_err() {
        panic!(
            "the stock `minisign` tool is required for the interop tests but was not found on PATH: \
             install it (Debian/Ubuntu: `apt-get install -y minisign`) and re-run"
        );
    }
    let mut c = Command::new("minisign");
    c.stdin(Stdio::null());
    c
}

/// Runs `minisign` (it does not hang: stdin is closed, keys are unencrypted) and returns (ok, output).
fn minisign_run(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = minisign().args(args).output().expect("run minisign");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `minisign -G -W`: an unencrypted key pair made by the stock tool.
fn minisign_keygen(dir: &Path) -> Keys {
    let keys = Keys {
        secret: dir.join("x.key"),
        public: dir.join("x.pub"),
    };
    let (ok, text) = minisign_run(&[
        os("-G"),
        os("-W"),
        os("-p"),
        keys.public.as_os_str(),
        os("-s"),
        keys.secret.as_os_str(),
    ]);
    assert!(ok, "minisign -G failed: {text}");
    keys
}

#[test]
fn minisign_tool_accepts_driftwatch_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(&dir.path().join("release"));
    let f = dir.path().join("manifest.json");
    fs::write(&f, b"{\"format\":\"driftwatch.manifest.v1\"}\n").unwrap();
    sign(&f, &keys.secret);
    let (ok, text) = minisign_run(&[os("-Vm"), f.as_os_str(), os("-p"), keys.public.as_os_str()]);
    assert!(ok, "minisign -V rejected a driftwatch signature: {text}");
    // and rejects it once the file changes
    fs::write(&f, b"{\"format\":\"tampered\"}\n").unwrap();
    let (ok, text) = minisign_run(&[os("-Vm"), f.as_os_str(), os("-p"), keys.public.as_os_str()]);
    assert!(!ok, "minisign -V accepted a tampered file: {text}");
}

#[test]
fn minisign_tool_accepts_driftwatch_signed_manifest() {
    let fx = Fx::new();
    fx.build_manifest();
    let (ok, text) = minisign_run(&[
        os("-Vm"),
        fx.manifest.as_os_str(),
        os("-p"),
        fx.release.public.as_os_str(),
    ]);
    assert!(ok, "minisign -V rejected `manifest build --sign`: {text}");
}

#[test]
fn driftwatch_accepts_minisign_tool_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let keys = minisign_keygen(dir.path());
    let f = dir.path().join("CHG-1.toml");
    fs::write(&f, b"id = \"CHG-1\"\n").unwrap();
    let (ok, text) = minisign_run(&[os("-Sm"), f.as_os_str(), os("-s"), keys.secret.as_os_str()]);
    assert!(ok, "minisign -S failed: {text}");
    run([
        os("verify"),
        f.as_os_str(),
        os("--pubkey"),
        keys.public.as_os_str(),
    ])
    .expect_code(0);
    fs::write(&f, b"id = \"CHG-2\"\n").unwrap();
    run([
        os("verify"),
        f.as_os_str(),
        os("--pubkey"),
        keys.public.as_os_str(),
    ])
    .error_line();
}

#[test]
fn driftwatch_signs_with_a_minisign_tool_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = minisign_keygen(dir.path());
    let f = dir.path().join("m.json");
    fs::write(&f, b"{}").unwrap();
    sign(&f, &keys.secret);
    let (ok, text) = minisign_run(&[os("-Vm"), f.as_os_str(), os("-p"), keys.public.as_os_str()]);
    assert!(
        ok,
        "minisign -V rejected a signature made with its own key by driftwatch: {text}"
    );
}

#[test]
fn check_accepts_manifest_signed_by_minisign_tool() {
    let fx = Fx::new();
    let keys = minisign_keygen(&fx.base);
    // an unsigned build, then the team signs it with the stock tool
    run([
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
    ])
    .expect_code(0);
    let (ok, text) = minisign_run(&[
        os("-Sm"),
        fx.manifest.as_os_str(),
        os("-s"),
        keys.secret.as_os_str(),
    ]);
    assert!(ok, "minisign -S failed: {text}");
    let check = |pubkey: &Path| {
        run([
            os("check"),
            os("--root"),
            fx.root.as_os_str(),
            os("--manifest"),
            fx.manifest.as_os_str(),
            os("--pubkey"),
            pubkey.as_os_str(),
            os("--host"),
            os(HOST),
            os("--format"),
            os("json"),
        ])
    };
    let out = check(&keys.public);
    out.expect_code(0);
    assert_eq!(out.json()["manifest_signed"], true);
    // the driftwatch release key did not sign it
    check(&fx.release.public).error_line();
}

#[test]
fn change_entry_signed_by_minisign_tool_authorizes() {
    let fx = Fx::new();
    fx.build_manifest();
    fx.append("app/checkout.js", b"// hotfix\n");
    let keys = minisign_keygen(&fx.base);
    let p = fx.write_entry(&Entry::new("CHG-5", &["app/**"]));
    let (ok, text) = minisign_run(&[os("-Sm"), p.as_os_str(), os("-s"), keys.secret.as_os_str()]);
    assert!(ok, "minisign -S failed: {text}");
    let out = fx.check_changes(&["--approver-pubkey", keys.public.to_str().unwrap()]);
    out.expect_code(0);
    assert_eq!(status_of(&out.json(), "app/checkout.js"), "change:CHG-5");
}
