//! Helpers for the end-to-end tests (quickstart, report, browser, README): long-running
//! `driftwatch` processes owned by a guard that kills and reaps them on drop, bounded waits for a
//! line of output, and a tiny HTTP/1.1 client on `std::net::TcpStream`.

#![allow(dead_code)] // each test crate uses a different part of this module

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[path = "../http_common/mod.rs"]
mod http_common;
pub use http_common::Resp;
use http_common::parse_response;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_driftwatch");

/// How long one HTTP exchange may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Output captured so far from one stream, with a condition variable to wait for more.
#[derive(Default)]
struct Captured {
    text: Mutex<String>,
    more: Condvar,
}

/// A running `driftwatch` process; killed and reaped on drop.
pub struct Proc {
    child: Child,
    /// The command line, for messages.
    pub cmd: String,
    stdout: Arc<Captured>,
    stderr: Arc<Captured>,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

fn drain(stream: impl Read + Send + 'static, sink: Arc<Captured>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let mut t = sink.text.lock().unwrap_or_else(|e| e.into_inner());
            t.push_str(&String::from_utf8_lossy(&buf));
            sink.more.notify_all();
        }
        // Wake waiters so they notice the end of the stream.
        sink.more.notify_all();
    })
}

impl Proc {
    /// Spawns `driftwatch ARGS` in `cwd` with stdin closed and both outputs captured.
    #[track_caller]
    pub fn spawn<S: AsRef<OsStr>>(args: &[S], cwd: &Path) -> Proc {
        let cmd = std::iter::once("driftwatch".to_string())
            .chain(
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned()),
            )
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("DRIFTWATCH_KEY_PASSWORD")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{cmd}`: {e}"));
        let stdout = Arc::new(Captured::default());
        let stderr = Arc::new(Captured::default());
        let readers = vec![
            drain(child.stdout.take().expect("piped stdout"), stdout.clone()),
            drain(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        Proc {
            child,
            cmd,
            stdout,
            stderr,
            readers,
            exited: None,
        }
    }

    /// Everything written on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout
            .text
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything written on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .text
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn describe(&self) -> String {
        format!(
            "`{}`\n--- stdout:\n{}\n--- stderr:\n{}",
            self.cmd,
            self.stdout(),
            self.stderr()
        )
    }

    /// Waits until stdout (or stderr) has a line containing `needle`; returns that line.
    /// Fails when the process exits or `timeout` passes first.
    #[track_caller]
    pub fn wait_line(&mut self, on_stderr: bool, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let cap = if on_stderr {
                &self.stderr
            } else {
                &self.stdout
            };
            {
                let t = cap.text.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(l) = t.lines().find(|l| l.contains(needle)) {
                    return l.to_string();
                }
                // Sleep on the condition variable, briefly, so an exit is noticed too.
                let _ = cap.more.wait_timeout(t, Duration::from_millis(100));
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
                // Let the readers finish, then look one last time.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                let cap = if on_stderr {
                    &self.stderr
                } else {
                    &self.stdout
                };
                let t = cap.text.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(l) = t.lines().find(|l| l.contains(needle)) {
                    return l.to_string();
                }
                panic!(
                    "{} exited ({st}) before printing {needle:?}\n{}",
                    self.cmd,
                    self.describe()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "no line containing {needle:?} within {timeout:?}\n{}",
                    self.describe()
                );
            }
        }
    }

    /// Sends SIGTERM and waits at most `timeout` for the exit; kills and fails on a hang.
    #[track_caller]
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(st) = self.exited {
            return st;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own unreaped child: the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
        let t0 = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.exited = Some(st);
                    for r in self.readers.drain(..) {
                        let _ = r.join();
                    }
                    return st;
                }
                Ok(None) if t0.elapsed() > timeout => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "did not exit within {timeout:?} of SIGTERM; killed\n{}",
                        self.describe()
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for `{}`: {e}", self.cmd),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

/// A running `driftwatch collector --config C`, with its base URL.
pub struct Collector {
    /// The process.
    pub proc: Proc,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Collector {
    /// Starts a collector and waits (bounded) for its listening line.
    #[track_caller]
    pub fn start(config: &Path, cwd: &Path) -> Collector {
        let mut proc = Proc::spawn(
            &[
                OsStr::new("collector"),
                OsStr::new("--config"),
                config.as_os_str(),
            ],
            cwd,
        );
        let line = proc.wait_line(
            true,
            "driftwatch collector listening on ",
            Duration::from_secs(60),
        );
        let url = line
            .split("listening on ")
            .nth(1)
            .expect("listening line has a URL")
            .trim();
        let addr = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("listening URL {url:?} is not http://"))
            .trim_end_matches('/')
            .to_string();
        Collector { proc, addr }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Writes a collector config for an existing SQLite file, listening on a free port.
pub fn write_collector_config(path: &Path, db: &Path) {
    let storage = serde_json::to_string(&format!("sqlite://{}", db.display())).expect("string");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nstorage = {storage}\n\n[trust]\nrequire_signatures = false\n"
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// `GET path` on `addr` with an optional bearer token and extra header lines.
pub fn get(addr: &str, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    send(addr, req.as_bytes())
}

/// `POST path` on `addr` with a JSON body and an optional bearer token.
pub fn post(addr: &str, path: &str, token: Option<&str>, body: &[u8]) -> Resp {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    send(addr, &raw)
}

/// Sends one raw request on a fresh connection and reads the whole answer.
fn send(addr: &str, req: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    s.write_all(req)
        .unwrap_or_else(|e| panic!("send to {addr}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    parse_response(&raw)
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Seeding a store through the library, with chosen (past) receipt times.
pub mod seed {
    use driftwatch::event::{ChangeEvent, EventBatch, Heartbeat};
    use driftwatch::store::Store;
    use jiff::Timestamp;
    use jiff::civil::Date;

    /// Today in UTC (the store's timezone in these tests).
    pub fn today() -> Date {
        Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date()
    }

    /// `days` before today (negative: ahead).
    pub fn days_ago(days: i64) -> Date {
        today()
            .checked_sub(jiff::Span::new().days(days))
            .expect("date in range")
    }

    /// `HH:MM` UTC on `day`.
    pub fn at(day: Date, hhmm: &str) -> Timestamp {
        let (h, m) = hhmm.split_once(':').expect("HH:MM");
        day.at(h.parse().expect("hour"), m.parse().expect("minute"), 0, 0)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .expect("zoned")
            .timestamp()
    }

    /// RFC 3339, whole seconds.
    pub fn rfc(t: Timestamp) -> String {
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    /// The BLAKE3 (hex) of `data`.
    pub fn b3(data: &str) -> String {
        blake3::hash(data.as_bytes()).to_hex().to_string()
    }

    /// One change event on tree `shop`, observed at `observed` (window: the 5 minutes before).
    pub fn event(
        seq: u64,
        path: &str,
        change: &str,
        status: &str,
        observed: Timestamp,
    ) -> ChangeEvent {
        let start = observed
            .checked_sub(jiff::SignedDuration::from_secs(300))
            .expect("in range");
        ChangeEvent {
            seq,
            tree: "shop".into(),
            path: path.into(),
            path_bytes: None,
            change: change.into(),
            status: status.into(),
            observed_at: rfc(observed),
            window_start: rfc(start),
            blake3: (change != "removed").then(|| b3(path)),
            previous_blake3: (change != "added").then(|| b3(&format!("old {path}"))),
            size: (change != "removed").then_some(path.len() as u64),
            detail: None,
            resolves: None,
        }
    }

    /// A heartbeat from `host` (environment `production`) received at `now`.
    #[track_caller]
    pub fn heartbeat(store: &dyn Store, host: &str, now: Timestamp) {
        let hb = Heartbeat {
            host: host.into(),
            environment: "production".into(),
            agent_version: "test".into(),
            trees: vec!["shop".into()],
            last_scan: None,
            spool_dropped: 0,
            spool_depth: 0,
            config_digest: None,
            coverage: vec![],
        };
        store
            .record_heartbeat(&hb, now)
            .unwrap_or_else(|e| panic!("heartbeat {host}: {e}"));
    }

    /// A batch of `events` from `host` received at `now`; asserts every one was stored.
    #[track_caller]
    pub fn ingest(store: &dyn Store, host: &str, events: Vec<ChangeEvent>, now: Timestamp) {
        let n = events.len() as u64;
        let batch = EventBatch {
            host: host.into(),
            environment: "production".into(),
            events,
            scans: Vec::new(),
        };
        let r = store
            .ingest(&batch, now)
            .unwrap_or_else(|e| panic!("ingest {host}: {e}"));
        assert_eq!(r.stored, n, "ingest {host}: {r:?}");
    }

    /// The store id of `host`'s event at `path`.
    #[track_caller]
    pub fn event_id(store: &dyn Store, host: &str, path: &str) -> i64 {
        let all = store
            .events(&driftwatch::store::EventQuery {
                host: Some(host.into()),
                ..Default::default()
            })
            .expect("events");
        all.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no stored event {host}:{path} in {all:?}"))
            .id
    }
}

/// What one finished run of the binary left behind.
#[derive(Debug)]
pub struct Done {
    /// The command line, for messages.
    pub cmd: String,
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output (lossy UTF-8); empty when it went to a file.
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

/// Runs `driftwatch ARGS` in `cwd` to completion, bounded by `timeout` (killed and failed on a
/// hang), stdin closed, `HOME` set to `cwd`; stdout goes to `stdout_to` when given.
#[track_caller]
pub fn run_in(cwd: &Path, args: &[String], stdout_to: Option<&Path>, timeout: Duration) -> Done {
    let cmd = std::iter::once("driftwatch".to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let out_file = match stdout_to {
        Some(p) => p.to_path_buf(),
        None => cwd.join(format!(".run-{}.stdout", std::process::id())),
    };
    let err_file = cwd.join(format!(".run-{}.stderr", std::process::id()));
    let out =
        std::fs::File::create(&out_file).unwrap_or_else(|e| panic!("{}: {e}", out_file.display()));
    let err =
        std::fs::File::create(&err_file).unwrap_or_else(|e| panic!("{}: {e}", err_file.display()));
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("NO_COLOR", "1")
        .env("HOME", cwd)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("DRIFTWATCH_KEY_PASSWORD")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{cmd}`: {e}"));
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if t0.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{cmd}` did not finish within {timeout:?}: killed (it hangs)");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for `{cmd}`: {e}"),
        }
    };
    let stdout = if stdout_to.is_some() {
        String::new()
    } else {
        let s = std::fs::read(&out_file).unwrap_or_default();
        let _ = std::fs::remove_file(&out_file);
        String::from_utf8_lossy(&s).into_owned()
    };
    let stderr =
        String::from_utf8_lossy(&std::fs::read(&err_file).unwrap_or_default()).into_owned();
    let _ = std::fs::remove_file(&err_file);
    let done = Done {
        cmd,
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    };
    assert!(
        !done.stderr.contains("panicked") && !done.stderr.contains("RUST_BACKTRACE"),
        "`{}` panicked:\n{}",
        done.cmd,
        done.stderr
    );
    done
}
