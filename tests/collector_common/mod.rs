//! Helpers for the collector integration tests: a real `driftwatch collector` process on
//! 127.0.0.1 port 0 over a real SQLite file in a temp dir, and a tiny HTTP/1.1 client on
//! `std::net::TcpStream` (one request per connection, `Connection: close`), so tests control
//! every byte they send, malformed requests included.
//!
//! Every collector is owned by a [`Collector`] guard: dropping it kills and reaps the process,
//! so a failing test leaves nothing behind.

#![allow(dead_code)] // not every test uses every helper

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::civil::Date;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::common::{self, Out};

#[path = "../http_common/mod.rs"]
mod http_common;
pub use http_common::Resp;
use http_common::parse_response;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_driftwatch");

/// How long a collector may take to print its listening line (machines here are busy).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// SIGTERM must stop the collector within this (DESIGN §9: SIGTERM exits 0, promptly).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one HTTP exchange may take before the test fails.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Config tail for tests that post change entries without signatures.
pub const UNSIGNED: &str = "[trust]\nrequire_signatures = false\n";

/// A string as a TOML basic string (JSON escapes are valid TOML escapes).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// Writes a collector config: listen on port 0, SQLite at `db`, then `extra` verbatim
/// (top-level keys first, then tables).
pub fn write_config(path: &Path, db: &Path, extra: &str) {
    let storage = toml_str(&format!("sqlite://{}", db.display()));
    let text = format!("listen = \"127.0.0.1:0\"\nstorage = {storage}\n{extra}");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// One temp dir with a collector config and its SQLite file.
pub struct Site {
    _tmp: TempDir,
    /// The temp dir.
    pub dir: PathBuf,
    /// The SQLite file.
    pub db: PathBuf,
    /// The collector config.
    pub config: PathBuf,
}

impl Site {
    /// A site whose collector accepts unsigned change entries.
    pub fn new() -> Site {
        Site::with(UNSIGNED)
    }

    /// A site with `extra` appended to the config (must configure `[trust]` itself).
    pub fn with(extra: &str) -> Site {
        let tmp = tempfile::Builder::new()
            .prefix("driftwatch-collector-it-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let db = dir.join("collector.db");
        let config = dir.join("collector.toml");
        write_config(&config, &db, extra);
        Site {
            _tmp: tmp,
            dir,
            db,
            config,
        }
    }

    /// Runs `driftwatch ARGS...` (with the shared hard timeout and panic check).
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> Out {
        common::run(args)
    }

    /// `driftwatch token create --config F --role ROLE [--host H]`: the token, alone on stdout.
    #[track_caller]
    pub fn token(&self, role: &str, host: Option<&str>) -> String {
        let config = self.config.to_str().expect("utf-8 temp path");
        let mut args = vec!["token", "create", "--config", config, "--role", role];
        if let Some(h) = host {
            args.extend(["--host", h]);
        }
        let out = common::run(&args);
        out.expect_code(0);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "`{}` must print the token alone on one stdout line:\n{}",
            out.cmd,
            out.stdout
        );
        let token = lines[0].trim().to_string();
        assert!(!token.is_empty(), "empty token from `{}`", out.cmd);
        token
    }

    /// Writes a token to `DIR/NAME` (a token file for the CLI).
    pub fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, format!("{token}\n")).expect("write token file");
        p
    }

    /// `token list --config F`, parsed as (id, role, host) rows.
    #[track_caller]
    pub fn token_list(&self) -> Vec<(i64, String, String)> {
        let config = self.config.to_str().expect("utf-8 temp path");
        let out = common::run(["token", "list", "--config", config]);
        out.expect_code(0);
        out.stdout
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let id = f[0]
                    .parse()
                    .unwrap_or_else(|_| panic!("token list: no id in {l:?}"));
                (id, f[1].to_string(), f[2].to_string())
            })
            .collect()
    }

    /// Starts a collector on this site's config.
    #[track_caller]
    pub fn start(&self) -> Collector {
        Collector::start(&self.config)
    }

    /// A second config in this dir pointing at another database (e.g. a tampered copy).
    pub fn config_for(&self, name: &str, db: &Path, extra: &str) -> PathBuf {
        let p = self.dir.join(name);
        write_config(&p, db, extra);
        p
    }
}

/// A running `driftwatch collector`; killed and reaped on drop.
pub struct Collector {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Collector {
    /// Spawns `driftwatch collector --config CONFIG` and waits for its listening line.
    #[track_caller]
    pub fn start(config: &Path) -> Collector {
        let mut child = Command::new(BIN)
            .arg("collector")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} collector: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        // Keeps draining stderr for the collector's whole life, so a full pipe never blocks it.
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                if let Some(url) = line
                    .trim_end()
                    .strip_prefix("driftwatch collector listening on ")
                {
                    let _ = tx.send(url.to_string());
                }
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&line);
            }
        });
        let url = match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let _ = reader.join();
                let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
                panic!(
                    "collector on {} did not print its listening line ({e}); exit {status:?}\n--- stderr:\n{log}",
                    config.display()
                );
            }
        };
        let addr = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("listening URL {url:?} is not http://"))
            .trim_end_matches('/')
            .to_string();
        Collector {
            child,
            url,
            addr,
            log,
            reader: Some(reader),
            exited: None,
        }
    }

    /// Everything the collector wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most [`STOP_TIMEOUT`]); returns the exit status and how long
    /// it took.
    #[track_caller]
    pub fn stop(&mut self) -> (ExitStatus, Duration) {
        if let Some(st) = self.exited {
            return (st, Duration::ZERO);
        }
        let pid = self.child.id() as libc::pid_t;
        let t0 = Instant::now();
        // SAFETY: kill(2) on our own child's pid; the child is not reaped yet, so the pid is ours.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(
            rc,
            0,
            "kill(SIGTERM) failed: {}",
            std::io::Error::last_os_error()
        );
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.exited = Some(st);
                    if let Some(r) = self.reader.take() {
                        let _ = r.join();
                    }
                    return (st, t0.elapsed());
                }
                Ok(None) if t0.elapsed() > STOP_TIMEOUT => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "collector did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed\n--- stderr:\n{}",
                        self.stderr()
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for the collector: {e}"),
            }
        }
    }

    /// SIGTERM, asserting exit code 0 within [`STOP_TIMEOUT`].
    #[track_caller]
    pub fn stop_ok(&mut self) {
        let (st, took) = self.stop();
        assert_eq!(
            st.code(),
            Some(0),
            "collector must exit 0 on SIGTERM, got {st:?} after {took:?}\n--- stderr:\n{}",
            self.stderr()
        );
    }

    /// `GET PATH` with an optional bearer token.
    pub fn get(&self, path: &str, token: Option<&str>) -> Resp {
        http(&self.addr, "GET", path, token, None)
    }

    /// `POST PATH` with raw body bytes.
    pub fn post(&self, path: &str, token: Option<&str>, body: &[u8]) -> Resp {
        http(&self.addr, "POST", path, token, Some(body))
    }

    /// `POST PATH` with a JSON body.
    pub fn post_json(&self, path: &str, token: Option<&str>, v: &Value) -> Resp {
        self.post(path, token, &serde_json::to_vec(v).expect("JSON"))
    }

    /// `POST /api/v1/events` with a batch, asserting 200; returns the ingest result.
    #[track_caller]
    pub fn ingest(&self, token: &str, batch: &Value) -> Value {
        let r = self.post_json("/api/v1/events", Some(token), batch);
        r.expect(200);
        r.json()
    }

    /// `GET PATH` with `token`, asserting 200, as JSON.
    #[track_caller]
    pub fn get_json(&self, path: &str, token: &str) -> Value {
        let r = self.get(path, Some(token));
        r.expect(200);
        r.json()
    }

    /// `GET PATH` with `token`, asserting 200, as text.
    #[track_caller]
    pub fn get_text(&self, path: &str, token: &str) -> String {
        let r = self.get(path, Some(token));
        r.expect(200);
        r.text()
    }

    /// Sends raw bytes as the whole request and reads the answer.
    pub fn raw(&self, request: &[u8]) -> Resp {
        exchange(&self.addr, request)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// One request on a fresh connection: `METHOD PATH`, optional bearer token and body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    exchange(addr, &bytes)
}

/// Writes `request`, reads until the server closes, parses the response.
pub fn exchange(addr: &str, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    // A server may answer (413) and close before reading everything: keep what it said.
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if raw.is_empty() => panic!("reading the answer from {addr}: {e}"),
            Err(_) => break,
        }
    }
    parse_response(&raw)
}

/// `YYYY-MM-DDTHH:MM:00Z` on `day`.
pub fn at(day: Date, hour: i8, minute: i8) -> String {
    format!("{day}T{hour:02}:{minute:02}:00Z")
}

/// The timestamp of `at(day, hour, minute)`.
pub fn ts(day: Date, hour: i8, minute: i8) -> Timestamp {
    at(day, hour, minute).parse().expect("timestamp")
}

/// An RFC 3339 timestamp `secs` before `t`.
pub fn minus(t: &str, secs: i64) -> String {
    let t: Timestamp = t.parse().expect("timestamp");
    let t = t
        .checked_sub(jiff::SignedDuration::from_secs(secs))
        .expect("in range");
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One change event in the wire format (DESIGN §8, `src/event.rs`); the observation window
/// opens an hour before `observed_at`.
pub fn event(seq: u64, path: &str, change: &str, status: &str, observed_at: &str) -> Value {
    json!({
        "seq": seq,
        "tree": "shop",
        "path": path,
        "change": change,
        "status": status,
        "observed_at": observed_at,
        "window_start": minus(observed_at, 3600),
    })
}

/// A batch from `host` in `production`.
pub fn batch(host: &str, events: Vec<Value>) -> Value {
    json!({"host": host, "environment": "production", "events": events})
}

/// `n` events numbered from `first`, each an unauthorized addition `PREFIX-SEQ.php` in `shop`.
///
/// The observation time is fixed for the whole test process, so building the same events twice
/// gives byte-identical events (a re-send, not a replay).
pub fn simple_events(first: u64, n: u64, prefix: &str) -> Vec<Value> {
    static OBSERVED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let now = OBSERVED.get_or_init(|| common::rfc3339(-60));
    (first..first + n)
        .map(|seq| {
            event(
                seq,
                &format!("{prefix}-{seq}.php"),
                "added",
                "unauthorized",
                now,
            )
        })
        .collect()
}

/// Copies a SQLite database (main file and write-ahead log, if any) to `dst`.
pub fn copy_db(src: &Path, dst: &Path) {
    std::fs::copy(src, dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    let side = |p: &Path, ext: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    let wal = side(src, "-wal");
    if wal.exists() {
        std::fs::copy(&wal, side(dst, "-wal")).expect("copy wal");
    }
}

/// The value of an unlabelled Prometheus sample `name` in `/metrics` text.
#[track_caller]
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse::<f64>().expect("metric value"))
        })
        .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{text}"))
}

/// Approximate float equality for KPI ratios in JSON.
#[track_caller]
pub fn approx(got: &Value, want: f64, what: &str) {
    let g = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {got} is not a number"));
    assert!((g - want).abs() < 1e-9, "{what}: got {g}, want {want}");
}
