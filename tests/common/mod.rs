//! Shared fixture builder for the integration tests: real temp trees, real keys, the real binary.
//!
//! Every run of the binary goes through [`run`], which spawns it with a hard timeout (a hang is a
//! test failure, never a stuck CI job), captures exit code, stdout and stderr, and checks that no
//! panic text ever reaches the user.

#![allow(dead_code)] // each test crate uses a different part of this module

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_driftwatch");

/// No single run may take longer than this; the child is killed and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// The host name every fixture check passes with `--host` (entries default to `web-*`).
pub const HOST: &str = "web-01";

/// The tree name every fixture manifest is built with.
pub const TREE: &str = "shop";

/// What one run of the binary left behind.
#[derive(Debug)]
pub struct Out {
    /// The command line, for failure messages.
    pub cmd: String,
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl Out {
    /// Panics with the whole run when the exit code is not `want`.
    #[track_caller]
    pub fn expect_code(&self, want: i32) -> &Self {
        assert_eq!(
            self.code, want,
            "exit code of `{}`\n--- stdout:\n{}\n--- stderr:\n{}",
            self.cmd, self.stdout, self.stderr
        );
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of `{}` is not JSON ({e}):\n{}\n--- stderr:\n{}",
                self.cmd, self.stdout, self.stderr
            )
        })
    }

    /// Asserts exit 2 and exactly one stderr line, starting `driftwatch: error:`; returns it.
    #[track_caller]
    pub fn error_line(&self) -> &str {
        self.expect_code(2);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "`{}` must print exactly one stderr line, got:\n{}",
            self.cmd,
            self.stderr
        );
        assert!(
            lines[0].starts_with("driftwatch: error: "),
            "`{}`: stderr line must start with `driftwatch: error:`, got {:?}",
            self.cmd,
            lines[0]
        );
        assert!(
            self.stdout.is_empty(),
            "`{}`: an error must not print a verdict on stdout:\n{}",
            self.cmd,
            self.stdout
        );
        lines[0]
    }

    /// The stderr lines that are warnings.
    pub fn warnings(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("driftwatch: warning: "))
            .collect()
    }
}

/// Runs the binary with `args`, a hard timeout, stdin closed; captures everything.
#[track_caller]
pub fn run<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let cmd = std::iter::once("driftwatch".to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env_remove("DRIFTWATCH_KEY_PASSWORD")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{cmd}` did not finish within {RUN_TIMEOUT:?}: killed (it hangs)");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{cmd}`: waiting failed: {e}");
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let out = Out {
        cmd,
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    };
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
        "`{}` panicked:\n{}",
        out.cmd,
        out.stderr
    );
    out
}

/// RFC 3339 UTC, whole seconds (truncated), `offset_secs` from now.
pub fn rfc3339(offset_secs: i64) -> String {
    let t = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(offset_secs))
        .expect("timestamp in range");
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// BLAKE3 of bytes, hex.
pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// A path from raw bytes.
pub fn bytes_path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

/// A key pair made by `driftwatch keygen`.
#[derive(Debug, Clone)]
pub struct Keys {
    /// PREFIX.key
    pub secret: PathBuf,
    /// PREFIX.pub
    pub public: PathBuf,
}

/// `driftwatch keygen --out PREFIX`, asserted to succeed.
#[track_caller]
pub fn keygen(prefix: &Path) -> Keys {
    run([
        OsStr::new("keygen"),
        OsStr::new("--out"),
        prefix.as_os_str(),
    ])
    .expect_code(0);
    let with = |ext: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    Keys {
        secret: with(".key"),
        public: with(".pub"),
    }
}

/// `driftwatch sign FILE --key KEY`, asserted to succeed.
#[track_caller]
pub fn sign(file: &Path, key: &Path) {
    run([
        OsStr::new("sign"),
        file.as_os_str(),
        OsStr::new("--key"),
        key.as_os_str(),
    ])
    .expect_code(0);
}

/// One change entry, written as TOML by [`Fx::write_entry`]. Defaults cover `web-*`, `shop`,
/// requested by alice, approved by bob an hour ago, window from an hour ago to an hour ahead.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub summary: String,
    pub requested_by: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub hosts: Vec<String>,
    pub trees: Vec<String>,
    pub paths: Vec<String>,
    pub start: String,
    pub end: String,
    /// `path = "blake3:<hex>"` or `"absent"`.
    pub expect: Vec<(String, String)>,
}

fn q(s: &str) -> String {
    // JSON string escapes are valid TOML basic-string escapes.
    serde_json::to_string(s).expect("string")
}

fn list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
    )
}

impl Entry {
    /// An entry approved an hour ago, covering `paths` on web-* / shop, window now ± 1 h.
    pub fn new(id: &str, paths: &[&str]) -> Entry {
        Entry {
            id: id.into(),
            summary: format!("ticket {id}"),
            requested_by: "alice".into(),
            approved_by: Some("bob".into()),
            approved_at: Some(rfc3339(-3600)),
            hosts: vec!["web-*".into()],
            trees: vec![TREE.into()],
            paths: paths.iter().map(|s| s.to_string()).collect(),
            start: rfc3339(-3600),
            end: rfc3339(3600),
            expect: Vec::new(),
        }
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "id = {}\nsummary = {}\nrequested_by = {}\n",
            q(&self.id),
            q(&self.summary),
            q(&self.requested_by)
        );
        if let Some(by) = &self.approved_by {
            s += &format!("approved_by = {}\n", q(by));
        }
        if let Some(at) = &self.approved_at {
            s += &format!("approved_at = {}\n", q(at));
        }
        s += &format!(
            "hosts = {}\ntrees = {}\npaths = {}\nstart = {}\nend = {}\n",
            list(&self.hosts),
            list(&self.trees),
            list(&self.paths),
            q(&self.start),
            q(&self.end)
        );
        if !self.expect.is_empty() {
            s += "\n[expect]\n";
            for (p, v) in &self.expect {
                s += &format!("{} = {}\n", q(p), q(v));
            }
        }
        s
    }
}

/// A deployed tree in a temp dir, with a release key, an approver key and a change-log dir.
///
/// Layout: `BASE/tree` (the root), `BASE/manifest.json` (+ `.minisig`), `BASE/changes/`,
/// `BASE/keys/{release,cab}.{key,pub}`.
pub struct Fx {
    _tmp: TempDir,
    /// The temp dir.
    pub base: PathBuf,
    /// The tree root.
    pub root: PathBuf,
    /// Where [`Fx::build_manifest`] writes.
    pub manifest: PathBuf,
    /// The change-log dir.
    pub changes: PathBuf,
    /// Signs manifests.
    pub release: Keys,
    /// Signs change entries.
    pub cab: Keys,
}

/// The files every fixture tree starts with.
pub const STANDARD_TREE: &[(&str, &[u8])] = &[
    ("index.php", b"<?php require 'app/boot.php';\n"),
    ("app/boot.php", b"<?php // boot\n"),
    (
        "app/checkout.js",
        b"function pay(total) { return Math.round(total * 100) / 100; }\n",
    ),
    ("app/lib/util.js", b"export const id = x => x;\n"),
    (
        "wp-content/uploads/logo.png",
        b"\x89PNG\r\n\x1a\n fake image",
    ),
    ("var/cache/page.html", b"<html>cached</html>\n"),
];

impl Fx {
    /// A fixture with the standard tree (manifest not built yet).
    pub fn new() -> Fx {
        let fx = Fx::empty();
        for (rel, data) in STANDARD_TREE {
            fx.write(rel, data);
        }
        fx
    }

    /// A fixture with an empty tree root.
    pub fn empty() -> Fx {
        let tmp = tempfile::Builder::new()
            .prefix("driftwatch-it-")
            .tempdir()
            .expect("tempdir");
        let base = tmp.path().to_path_buf();
        let root = base.join("tree");
        let changes = base.join("changes");
        let keys = base.join("keys");
        for d in [&root, &changes, &keys] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let release = keygen(&keys.join("release"));
        let cab = keygen(&keys.join("cab"));
        Fx {
            manifest: base.join("manifest.json"),
            _tmp: tmp,
            base,
            root,
            changes,
            release,
            cab,
        }
    }

    /// Absolute path of a tree-relative path.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes a file in the tree (parents created).
    pub fn write(&self, rel: impl AsRef<Path>, data: &[u8]) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        p
    }

    /// Appends to a file in the tree.
    pub fn append(&self, rel: impl AsRef<Path>, data: &[u8]) {
        use std::io::Write;
        let p = self.path(rel);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        f.write_all(data).expect("append");
    }

    /// `manifest build --root TREE --release r1 --tree shop --sign release.key -o MANIFEST`, asserted OK.
    #[track_caller]
    pub fn build_manifest(&self) -> Out {
        self.build_manifest_to(&self.manifest, &[])
    }

    /// As [`Fx::build_manifest`] to another output path, with extra arguments.
    #[track_caller]
    pub fn build_manifest_to(&self, out: &Path, extra: &[&str]) -> Out {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("manifest"),
            OsStr::new("build"),
            OsStr::new("--root"),
            self.root.as_os_str(),
            OsStr::new("--release"),
            OsStr::new("r1"),
            OsStr::new("--tree"),
            OsStr::new(TREE),
            OsStr::new("--created-by"),
            OsStr::new("ci@test"),
            OsStr::new("--sign"),
            self.release.secret.as_os_str(),
            OsStr::new("-o"),
            out.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let o = run(args);
        o.expect_code(0);
        o
    }

    /// `check --root TREE --manifest MANIFEST --pubkey release.pub --host web-01 --format json EXTRA...`
    pub fn check(&self, extra: &[&str]) -> Out {
        self.check_with(&self.manifest, true, extra)
    }

    /// `check` against `manifest`, with or without the release `--pubkey`.
    pub fn check_with(&self, manifest: &Path, with_pubkey: bool, extra: &[&str]) -> Out {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("check"),
            OsStr::new("--root"),
            self.root.as_os_str(),
            OsStr::new("--manifest"),
            manifest.as_os_str(),
            OsStr::new("--format"),
            OsStr::new("json"),
        ];
        if with_pubkey {
            args.extend([OsStr::new("--pubkey"), self.release.public.as_os_str()]);
        }
        if !extra.contains(&"--host") {
            args.extend([OsStr::new("--host"), OsStr::new(HOST)]);
        }
        args.extend(extra.iter().map(OsStr::new));
        run(args)
    }

    /// `check` with `--changes CHANGES` plus `extra`.
    pub fn check_changes(&self, extra: &[&str]) -> Out {
        let changes = self.changes.to_str().expect("utf-8 temp path");
        let mut args = vec!["--changes", changes];
        args.extend_from_slice(extra);
        self.check(&args)
    }

    /// Writes `CHANGES/ID.toml` from an entry; returns its path.
    pub fn write_entry(&self, e: &Entry) -> PathBuf {
        self.write_entry_text(&e.id, &e.to_toml())
    }

    /// Writes `CHANGES/ID.toml` with raw text; returns its path.
    pub fn write_entry_text(&self, id: &str, text: &str) -> PathBuf {
        let p = self.changes.join(format!("{id}.toml"));
        std::fs::write(&p, text).expect("write entry");
        p
    }

    /// `--approver-pubkey` arguments for the CAB key.
    pub fn cab_pub(&self) -> &str {
        self.cab.public.to_str().expect("utf-8 temp path")
    }
}

/// The change for `path` in a check report; panics with the report when absent.
#[track_caller]
pub fn change<'a>(report: &'a Value, path: &str) -> &'a Value {
    changes(report)
        .iter()
        .find(|c| c["path"] == path)
        .unwrap_or_else(|| panic!("no change for {path:?} in report:\n{report:#}"))
}

/// All changes of a check report.
#[track_caller]
pub fn changes(report: &Value) -> &Vec<Value> {
    report["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("report has no `changes` array:\n{report:#}"))
}

/// The status string of the change for `path`.
#[track_caller]
pub fn status_of(report: &Value, path: &str) -> String {
    change(report, path)["status"]
        .as_str()
        .expect("status is a string")
        .to_string()
}

/// Shorthand for building argument lists that mix strings and paths.
pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}
