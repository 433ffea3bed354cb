//! Helpers for the agent integration tests: a real `driftwatch agent` (and, where needed, a real
//! `driftwatch collector`) as child processes on 127.0.0.1, over temp dirs.
//!
//! Every process is owned by a [`Proc`] guard: dropping it sends SIGKILL and reaps the child, so
//! a failing test leaves nothing behind. Every wait is a poll bounded by a timeout; a timeout
//! fails the test with the process log attached.

#![allow(dead_code)] // not every test uses every helper

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, Fx};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_driftwatch");

/// How long an agent may take to finish its first scan and say it is ready (busy CI machines).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a collector may take to print its listening line.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a process may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often waits poll.
pub const POLL: Duration = Duration::from_millis(50);

/// The host every agent in these tests reports as.
pub const HOST: &str = common::HOST;

/// A string as a TOML basic string (JSON escapes are valid TOML escapes).
pub fn toml_str(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("string")
}

/// A path as a TOML basic string.
pub fn toml_path(p: &Path) -> String {
    toml_str(p.to_str().expect("utf-8 temp path"))
}

/// Polls `f` every [`POLL`] until it returns `Some`, or `timeout` passes (then `None`).
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// A child process whose stderr is collected line by line; SIGKILLed and reaped on drop.
pub struct Proc {
    /// What it is, for messages (`agent`, `collector`).
    pub name: String,
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `driftwatch ARGS...` with stdin and stdout closed and stderr collected.
    pub fn spawn<I, S>(name: &str, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} {name}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        // Drains stderr for the process's whole life, so a full pipe never blocks it.
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => sink
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&String::from_utf8_lossy(&buf)),
                }
            }
        });
        Proc {
            name: name.to_string(),
            child,
            log,
            reader: Some(reader),
            exited: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Everything it wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether it has exited (reaps it if so).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.exited = Some(s);
        }
        self.exited
    }

    /// Waits until a stderr line satisfies `pred`; returns that line. Panics (with the log) on
    /// timeout or when the process exits first.
    #[track_caller]
    pub fn wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let found = poll(timeout, || {
            if let Some(l) = self.log().lines().find(|l| pred(l)) {
                return Some(Ok(l.to_string()));
            }
            self.exited().map(Err)
        });
        match found {
            Some(Ok(l)) => l,
            Some(Err(status)) => {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{} exited ({status}) before {what}; log:\n{}",
                    self.name,
                    self.log()
                )
            }
            None => panic!(
                "{}: no {what} within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// Whether some stderr line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log().contains(needle)
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}) failed: {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, || self.exited())
    }

    /// SIGTERM; asserts exit code 0 within [`STOP_TIMEOUT`]; returns how long it took.
    #[track_caller]
    pub fn terminate(&mut self) -> Duration {
        let t = Instant::now();
        self.signal(libc::SIGTERM);
        match self.wait_exit(STOP_TIMEOUT) {
            Some(s) => {
                assert_eq!(
                    s.code(),
                    Some(0),
                    "{} exited with {s} after SIGTERM; log:\n{}",
                    self.name,
                    self.log()
                );
                t.elapsed()
            }
            None => panic!(
                "{} still running {STOP_TIMEOUT:?} after SIGTERM; log:\n{}",
                self.name,
                self.log()
            ),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A running agent.
pub struct Agent {
    /// The process.
    pub proc: Proc,
    /// The embedded collector's URL, when it runs one.
    pub url: Option<String>,
}

impl Agent {
    /// Spawns `driftwatch agent --config CONFIG` without waiting for anything.
    pub fn spawn(config: &Path) -> Agent {
        Agent {
            proc: Proc::spawn(
                "agent",
                [
                    OsStr::new("agent"),
                    OsStr::new("--config"),
                    config.as_os_str(),
                ],
            ),
            url: None,
        }
    }

    /// Spawns an agent and waits until its first scan is done (`driftwatch agent ready`).
    #[track_caller]
    pub fn start(config: &Path) -> Agent {
        let mut a = Agent::spawn(config);
        a.wait_ready();
        a
    }

    /// Waits for the ready line; notes the embedded collector's URL.
    #[track_caller]
    pub fn wait_ready(&mut self) {
        self.proc.wait_line("ready line", READY_TIMEOUT, |l| {
            l.starts_with("driftwatch agent ready: ")
        });
        self.url = self
            .proc
            .log()
            .lines()
            .find_map(|l| l.strip_prefix("driftwatch embedded collector listening on "))
            .map(|u| u.trim().to_string());
    }

    /// Whether it said it is ready.
    pub fn is_ready(&self) -> bool {
        self.proc.logged("driftwatch agent ready: ")
    }

    /// The `drift` log lines about `path`.
    pub fn drift_lines(&self, path: &str) -> Vec<String> {
        let needle = format!(" path={path} ");
        self.proc
            .log()
            .lines()
            .filter(|l| l.contains(" drift ") && l.contains(&needle))
            .map(String::from)
            .collect()
    }
}

/// A running remote collector.
pub struct Remote {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Remote {
    /// Spawns `driftwatch collector --config CONFIG` and waits for its listening line.
    #[track_caller]
    pub fn start(config: &Path) -> Remote {
        let mut proc = Proc::spawn(
            "collector",
            [
                OsStr::new("collector"),
                OsStr::new("--config"),
                config.as_os_str(),
            ],
        );
        let line = proc.wait_line("listening line", LISTEN_TIMEOUT, |l| {
            l.starts_with("driftwatch collector listening on ")
        });
        let url = line
            .trim_start_matches("driftwatch collector listening on ")
            .trim()
            .to_string();
        Remote { proc, url }
    }
}

/// A port that was free a moment ago on 127.0.0.1 (for a collector that must come back on the
/// same address after a restart).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// One watched tree in an agent config.
#[derive(Debug, Clone)]
pub struct TreeSpec {
    /// `[[tree]] name`.
    pub name: String,
    /// `root`.
    pub root: PathBuf,
    /// `manifest`.
    pub manifest: Option<PathBuf>,
    /// `exclude`.
    pub exclude: Vec<String>,
}

/// Where an agent sends its events.
#[derive(Debug, Clone)]
pub enum Uplink {
    /// `[collector] embedded = true`, listening on port 0.
    Embedded,
    /// `[collector] url = ..., token_file = ...`.
    Remote {
        /// Base URL.
        url: String,
        /// Token file.
        token_file: PathBuf,
    },
}

/// An agent config, written as TOML by [`AgentSpec::write`].
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// `state_dir`.
    pub state_dir: PathBuf,
    /// `[[tree]]`s.
    pub trees: Vec<TreeSpec>,
    /// `[changes] dir`.
    pub changes: PathBuf,
    /// `[trust] release_keys`.
    pub release_keys: Vec<PathBuf>,
    /// `[trust] approver_keys`.
    pub approver_keys: Vec<PathBuf>,
    /// `[collector]`.
    pub uplink: Uplink,
    /// `[collector] batch`, when set.
    pub batch: Option<usize>,
    /// `[scan] interval`.
    pub interval: String,
    /// `[scan] debounce`.
    pub debounce: String,
    /// Extra TOML appended verbatim (whole tables).
    pub extra: String,
}

impl AgentSpec {
    /// The usual config for a fixture: tree `shop` at `fx.root` with `fx.manifest`, the fixture's
    /// keys and change dir, state under `fx.base/state`, embedded collector, debounce 100 ms.
    pub fn for_fx(fx: &Fx) -> AgentSpec {
        AgentSpec {
            state_dir: fx.base.join("state"),
            trees: vec![TreeSpec {
                name: common::TREE.into(),
                root: fx.root.clone(),
                manifest: Some(fx.manifest.clone()),
                exclude: vec!["var/cache/**".into()],
            }],
            changes: fx.changes.clone(),
            release_keys: vec![fx.release.public.clone()],
            approver_keys: vec![fx.cab.public.clone()],
            uplink: Uplink::Embedded,
            batch: None,
            interval: "1h".into(),
            debounce: "100ms".into(),
            extra: String::new(),
        }
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let list = |v: &[PathBuf]| {
            format!(
                "[{}]",
                v.iter()
                    .map(|p| toml_path(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut s = format!(
            "host = {}\nstate_dir = {}\n",
            toml_str(HOST),
            toml_path(&self.state_dir)
        );
        for t in &self.trees {
            s += &format!(
                "\n[[tree]]\nname = {}\nroot = {}\n",
                toml_str(&t.name),
                toml_path(&t.root)
            );
            if let Some(m) = &t.manifest {
                s += &format!("manifest = {}\n", toml_path(m));
            }
            s += &format!(
                "exclude = [{}]\n",
                t.exclude
                    .iter()
                    .map(toml_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        s += &format!(
            "\n[scan]\ninterval = {}\ndebounce = {}\n\n[changes]\ndir = {}\n\n[trust]\nrelease_keys = {}\napprover_keys = {}\n\n[collector]\nheartbeat = \"1s\"\n",
            toml_str(&self.interval),
            toml_str(&self.debounce),
            toml_path(&self.changes),
            list(&self.release_keys),
            list(&self.approver_keys),
        );
        match &self.uplink {
            Uplink::Embedded => s += "embedded = true\nlisten = \"127.0.0.1:0\"\n",
            Uplink::Remote { url, token_file } => {
                s += &format!(
                    "url = {}\ntoken_file = {}\n",
                    toml_str(url),
                    toml_path(token_file)
                );
            }
        }
        if let Some(b) = self.batch {
            s += &format!("batch = {b}\n");
        }
        s += &self.extra;
        s
    }

    /// Writes the config to `path` (atomically: an agent may be reading it on SIGHUP).
    pub fn write(&self, path: &Path) {
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, self.to_toml()).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
        std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// The embedded collector's SQLite file.
    pub fn db(&self) -> PathBuf {
        self.state_dir.join("collector.db")
    }
}

/// `driftwatch events --db DB --format json`: every recorded event (not the `resolved` records).
#[track_caller]
pub fn events_db(db: &Path) -> Vec<Value> {
    let out = common::run([
        OsStr::new("events"),
        OsStr::new("--db"),
        db.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("json"),
    ]);
    out.expect_code(0);
    match out.json() {
        Value::Array(v) => v,
        other => panic!("`{}` did not print a JSON array:\n{other:#}", out.cmd),
    }
}

/// `driftwatch events --collector URL --token-file F --format json`.
#[track_caller]
pub fn events_api(url: &str, token_file: &Path) -> Vec<Value> {
    let out = common::run([
        OsStr::new("events"),
        OsStr::new("--collector"),
        OsStr::new(url),
        OsStr::new("--token-file"),
        token_file.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("json"),
    ]);
    out.expect_code(0);
    match out.json() {
        Value::Array(v) => v,
        other => panic!("`{}` did not print a JSON array:\n{other:#}", out.cmd),
    }
}

/// Field `k` of an event as a string (`""` when absent or not a string).
pub fn s<'a>(ev: &'a Value, k: &str) -> &'a str {
    ev.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The events about `path` in tree `tree`.
pub fn about<'a>(events: &'a [Value], tree: &str, path: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| s(e, "tree") == tree && s(e, "path") == path)
        .collect()
}

/// Polls `events_db` until `pred` holds; returns the events. On timeout panics with the last
/// events seen and `diag()` (e.g. the agent's log).
#[track_caller]
pub fn wait_events(
    db: &Path,
    what: &str,
    timeout: Duration,
    diag: impl Fn() -> String,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut last = Vec::new();
    let got = poll(timeout, || {
        if !db.exists() {
            return None;
        }
        last = events_db(db);
        pred(&last).then(|| last.clone())
    });
    got.unwrap_or_else(|| {
        let shown: Vec<String> = last
            .iter()
            .take(40)
            .map(|e| format!("  seq={} {} {} {} open={}", e["seq"], s(e, "path"), s(e, "change"), s(e, "status"), e["open"]))
            .collect();
        panic!(
            "no {what} within {timeout:?}: {} events recorded, first ones:\n{}\n--- diagnostics:\n{}",
            last.len(),
            shown.join("\n"),
            diag()
        )
    })
}

/// Asserts the delivery contract on everything one host sent: each sequence number once, no gap
/// (1..=N), and each of `paths` reported by exactly one event, with `status`.
#[track_caller]
pub fn assert_exactly_once(
    events: &[Value],
    tree: &str,
    paths: &BTreeSet<String>,
    status: &str,
    diag: &str,
) {
    let mut seqs: BTreeMap<u64, usize> = BTreeMap::new();
    for e in events {
        assert_eq!(s(e, "host"), HOST, "event from an unexpected host: {e}");
        let seq = e["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("event without a numeric seq: {e}"));
        *seqs.entry(seq).or_default() += 1;
    }
    let doubled: Vec<u64> = seqs
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        doubled.is_empty(),
        "sequence numbers stored more than once: {doubled:?}\n{diag}"
    );
    let n = events.len() as u64;
    let missing: Vec<u64> = (1..=n).filter(|s| !seqs.contains_key(s)).take(20).collect();
    assert!(
        missing.is_empty(),
        "sequence numbers are not 1..={n}: missing {missing:?} (first 20), max {:?}\n{diag}",
        seqs.keys().next_back()
    );
    let mut per_path: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for e in events.iter().filter(|e| s(e, "tree") == tree) {
        per_path.entry(s(e, "path")).or_default().push(e);
    }
    let lost: Vec<&String> = paths
        .iter()
        .filter(|p| !per_path.contains_key(p.as_str()))
        .take(20)
        .collect();
    assert!(
        lost.is_empty(),
        "{} changed paths never reported, e.g. {lost:?}\n{diag}",
        paths
            .iter()
            .filter(|p| !per_path.contains_key(p.as_str()))
            .count()
    );
    let twice: Vec<String> = per_path
        .iter()
        .filter(|(p, v)| paths.contains(**p) && v.len() > 1)
        .take(10)
        .map(|(p, v)| {
            format!(
                "{p}: seqs {:?}",
                v.iter()
                    .map(|e| e["seq"].as_u64().unwrap_or(0))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    assert!(
        twice.is_empty(),
        "{} paths reported more than once (counted twice), e.g.:\n  {}\n{diag}",
        per_path
            .iter()
            .filter(|(p, v)| paths.contains(**p) && v.len() > 1)
            .count(),
        twice.join("\n  ")
    );
    let unexpected: Vec<&&str> = per_path
        .keys()
        .filter(|p| !paths.contains(**p))
        .take(10)
        .collect();
    assert!(
        unexpected.is_empty(),
        "events about paths nobody changed: {unexpected:?}\n{diag}"
    );
    for (p, v) in &per_path {
        assert_eq!(
            s(v[0], "original_status"),
            status,
            "status reported for {p}: {}\n{diag}",
            v[0]
        );
    }
}

/// Creates `n` small files `DIR/f{i}.txt` with distinct content, as fast as possible.
pub fn make_files(dir: &Path, n: usize, prefix: &str) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for i in 0..n {
        let p = dir.join(format!("{prefix}{i}.txt"));
        std::fs::write(&p, format!("{prefix} {i}\n"))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

/// Copies a directory tree (files and dirs only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let ty = entry.file_type().expect("file type");
        let dst = to.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &dst);
        } else {
            std::fs::copy(entry.path(), &dst).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
        }
    }
}

/// `manifest build` of `root` as release `release` of tree `tree`, signed with the fixture's
/// release key, written to `out` (plus `extra` arguments).
pub fn build_signed_manifest(
    fx: &Fx,
    root: &Path,
    release: &str,
    tree: &str,
    out: &Path,
    extra: &[&str],
) {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("manifest"),
        OsStr::new("build"),
        OsStr::new("--root"),
        root.as_os_str(),
        OsStr::new("--release"),
        OsStr::new(release),
        OsStr::new("--tree"),
        OsStr::new(tree),
        OsStr::new("--created-by"),
        OsStr::new("ci@test"),
        OsStr::new("--sign"),
        fx.release.secret.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    common::run(args).expect_code(0);
}
