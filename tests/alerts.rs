//! Integration tests of alerting (DESIGN §12.3): the real binary (a collector, or an agent with
//! its embedded collector) delivering to real receivers the tests start on 127.0.0.1: an HTTP
//! server for webhook and Slack, UDP and TCP syslog listeners, a minimal SMTP server.
//!
//! Every process is owned by a guard that SIGKILLs and reaps it on drop; every receiver thread
//! stops when its guard drops; every wait is a bounded poll.

mod agent_common;
mod collector_common;
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use collector_common::{Collector, Site, UNSIGNED, batch, event, simple_events, toml_str};

/// How long an alert may take to arrive in these tests (busy CI machines; the design target is
/// 2 s, measured by the benchmark).
const ARRIVAL: Duration = Duration::from_secs(30);

/// One request an HTTP receiver got.
#[derive(Debug, Clone)]
struct Req {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

impl Req {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not JSON ({e}): {:?}",
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A small HTTP/1.1 server on 127.0.0.1: records every request, answers with `status`.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Req>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::on("127.0.0.1:0")
    }

    fn on(addr: &str) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s, st) = (got.clone(), status.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve(stream, &g, &s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Receiver {
            addr,
            got,
            status,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Req> {
        self.got.lock().unwrap().clone()
    }

    /// Every alert item received so far on `path`, in arrival order.
    fn alerts(&self, path: &str) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.path == path)
            .flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Polls until `f` holds of the requests so far.
    #[track_caller]
    fn wait(&self, what: &str, f: impl Fn(&[Req]) -> bool) -> Vec<Req> {
        let start = Instant::now();
        loop {
            let reqs = self.requests();
            if f(&reqs) {
                return reqs;
            }
            assert!(
                start.elapsed() < ARRIVAL,
                "{what}: not within {ARRIVAL:?}; got {reqs:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, got: &Mutex<Vec<Req>>, status: &AtomicU16) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let code = status.load(Ordering::Relaxed);
    // Recorded only when accepted: a refused delivery is not a delivery.
    if code == 200 {
        got.lock().unwrap().push(Req {
            path,
            headers,
            body,
            at: Instant::now(),
        });
    }
    let mut w = stream;
    write!(
        w,
        "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    w.flush()
}

/// `[[alert]]` webhook table for `url`, receiving `on`.
fn webhook(name: &str, url: &str, on: &[&str], extra: &str) -> String {
    let on: Vec<String> = on.iter().map(|k| toml_str(k)).collect();
    format!(
        "\n[[alert]]\nname = {}\nkind = \"webhook\"\nurl = {}\non = [{}]\n{extra}",
        toml_str(name),
        toml_str(url),
        on.join(", ")
    )
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Ids of `items`, each with how many times it came.
fn id_counts(items: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for it in items {
        *m.entry(it["id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    m
}

/// `alerts list --config F --format json`.
#[track_caller]
fn alerts_list(config: &Path) -> Vec<Value> {
    let out = common::run([
        "alerts",
        "list",
        "--config",
        config.to_str().unwrap(),
        "--format",
        "json",
    ]);
    out.expect_code(0);
    out.json().as_array().cloned().unwrap_or_default()
}

fn kill9(c: &Collector) {
    // SAFETY: kill(2) on our own child, not reaped yet (the guard reaps it on drop).
    let rc = unsafe { libc::kill(c.pid() as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill(SIGKILL): {}", std::io::Error::last_os_error());
}

/// A web shell dropped on a watched tree of an agent in single-host mode reaches the webhook
/// (with its path, hash, size and a signature the receiver can check) and Slack (Block Kit).
#[test]
fn a_web_shell_reaches_the_webhook_signed_and_slack_from_the_embedded_collector() {
    let rx = Receiver::start();
    let fx = common::Fx::new();
    fx.build_manifest();
    let secret = fx.base.join("hook.secret");
    std::fs::write(&secret, "s3cret-key\n").unwrap();
    let mut spec = agent_common::AgentSpec::for_fx(&fx);
    spec.extra = webhook(
        "hook",
        &rx.url("/hook"),
        &["unauthorized"],
        &format!("secret_file = {}\n", toml_str(secret.to_str().unwrap())),
    ) + &format!(
        "\n[[alert]]\nname = \"chat\"\nkind = \"slack\"\nurl = {}\non = [\"unauthorized\"]\n",
        toml_str(&rx.url("/slack"))
    );
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let check = common::run(["config", "check", "--config", config.to_str().unwrap()]);
    check.expect_code(0);
    let agent = agent_common::Agent::start(&config);

    let shell = b"<?php system($_GET['c']); ?>\n";
    let wrote = Instant::now();
    fx.write("wp-content/uploads/cmd.php", shell);
    let reqs = rx.wait("the web shell alert", |r| {
        r.iter().any(|q| q.path == "/hook") && r.iter().any(|q| q.path == "/slack")
    });
    let hook = reqs.iter().find(|q| q.path == "/hook").unwrap();
    eprintln!("write on host -> webhook received: {:?}", hook.at - wrote);

    let body = hook.json();
    assert_eq!(body["source"], "driftwatch");
    assert_eq!(body["host"], common::HOST);
    let it = &body["alerts"][0];
    assert_eq!(it["kind"], "unauthorized", "{body:#}");
    assert_eq!(it["path"], "wp-content/uploads/cmd.php", "{body:#}");
    assert_eq!(it["tree"], common::TREE);
    assert_eq!(it["change"], "added");
    assert_eq!(it["status"], "unauthorized");
    assert_eq!(it["environment"], "production");
    assert_eq!(it["blake3"], common::blake3_hex(shell));
    assert_eq!(it["size"], shell.len());
    assert_eq!(it["id"].as_str().unwrap().len(), 32);
    let dash = agent.url.clone().expect("embedded collector URL");
    assert!(
        it["dashboard"].as_str().unwrap().starts_with(&dash),
        "{it:#} vs {dash}"
    );
    assert!(
        it["evidence"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/evidence/{}", common::blake3_hex(shell)))
    );
    let sig = hook
        .headers
        .get("x-driftwatch-signature")
        .expect("signature header");
    assert_eq!(
        sig,
        &format!("sha256={}", hmac_hex(b"s3cret-key", &hook.body))
    );
    assert_ne!(
        sig,
        &format!("sha256={}", hmac_hex(b"another-key", &hook.body))
    );

    let slack = reqs.iter().find(|q| q.path == "/slack").unwrap().json();
    let blocks = slack["blocks"].as_array().expect("Block Kit blocks");
    assert_eq!(blocks[0]["type"], "header");
    let text = serde_json::to_string(blocks).unwrap();
    assert!(
        text.contains("wp-content/uploads/cmd.php") && text.contains(&common::blake3_hex(shell)),
        "{slack:#}"
    );
    assert!(
        slack["text"].as_str().unwrap().contains("unauthorized"),
        "{slack:#}"
    );
    drop(agent);
}

/// A receiver that refuses connections for a while gets every alert once it is up, each
/// exactly once by id; meanwhile the outbox shows them pending with their error, and
/// `/metrics` counts them.
#[test]
fn a_receiver_down_then_up_gets_every_alert_exactly_once() {
    let port = agent_common::free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let site =
        Site::with(&(UNSIGNED.to_string() + &webhook("hook", &url, &["unauthorized", "gap"], "")));
    let c = site.start();
    let token = site.token("agent", Some("web-01"));
    c.ingest(&token, &batch("web-01", simple_events(1, 3, "shell")));
    // 4 and 5 are skipped: a gap alert.
    c.ingest(&token, &batch("web-01", simple_events(6, 2, "more")));
    std::thread::sleep(Duration::from_secs(3));
    let pending = alerts_list(&site.config);
    assert_eq!(pending.len(), 6, "{pending:#?}");
    assert!(
        pending.iter().all(|a| a["state"] == "pending"),
        "{pending:#?}"
    );
    assert!(
        pending.iter().any(|a| a["attempts"].as_u64().unwrap() >= 1
            && a["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(&port.to_string()))),
        "{pending:#?}"
    );
    let metrics = c.get("/metrics", None).text();
    assert!(metrics.contains("driftwatch_alerts_pending 6"), "{metrics}");

    let rx = Receiver::on(&format!("127.0.0.1:{port}"));
    rx.wait("all six alerts", |_| rx.alerts("/hook").len() >= 6);
    // Give a duplicate the time to show up, if one were coming.
    std::thread::sleep(Duration::from_secs(2));
    let items = rx.alerts("/hook");
    let counts = id_counts(&items);
    assert_eq!(counts.len(), 6, "{items:#?}");
    assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:?}");
    let paths: Vec<&str> = items.iter().filter_map(|i| i["path"].as_str()).collect();
    for p in [
        "shell-1.php",
        "shell-2.php",
        "shell-3.php",
        "more-6.php",
        "more-7.php",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    let gap = items
        .iter()
        .find(|i| i["kind"] == "gap")
        .expect("a gap alert");
    assert!(gap["summary"].as_str().unwrap().contains("4–5"), "{gap:#}");
    // Re-sending the same events raises nothing new.
    c.ingest(&token, &batch("web-01", simple_events(1, 3, "shell")));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rx.alerts("/hook").len(), 6);
    let metrics = c.get("/metrics", None).text();
    assert!(
        metrics.contains("driftwatch_alerts_sent_total{sink=\"hook\",kind=\"unauthorized\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("driftwatch_alerts_sent_total{sink=\"hook\",kind=\"gap\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("driftwatch_alerts_failed_total{sink=\"hook\",kind=\"unauthorized\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("driftwatch_alerts_pending 0"), "{metrics}");
    let listed = alerts_list(&site.config);
    assert!(listed.iter().all(|a| a["state"] == "sent"), "{listed:#?}");
}

/// A receiver answering 4xx fails the alert at once, counted and logged once, not retried.
#[test]
fn a_refusing_receiver_fails_the_alert_at_once_and_says_so_once() {
    let rx = Receiver::start();
    rx.status.store(404, Ordering::Relaxed);
    let site = Site::with(
        &(UNSIGNED.to_string() + &webhook("hook", &rx.url("/gone"), &["unauthorized"], "")),
    );
    let c = site.start();
    let token = site.token("agent", Some("web-01"));
    c.ingest(&token, &batch("web-01", simple_events(1, 1, "x")));
    let start = Instant::now();
    let failed = loop {
        let l = alerts_list(&site.config);
        if l.iter().any(|a| a["state"] == "failed") {
            break l;
        }
        assert!(start.elapsed() < ARRIVAL, "{l:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(failed[0]["attempts"], 1, "{failed:#?}");
    assert!(
        failed[0]["last_error"].as_str().unwrap().contains("404"),
        "{failed:#?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        alerts_list(&site.config)[0]["attempts"],
        1,
        "a refusal must not be retried"
    );
    // The same state over the API (`--collector` with a reader token).
    let reader = site.token_file("reader.token", &site.token("reader", None));
    let out = common::run([
        "alerts",
        "list",
        "--collector",
        c.url.as_str(),
        "--token-file",
        reader.to_str().unwrap(),
        "--format",
        "json",
    ]);
    out.expect_code(0);
    let remote = out.json();
    assert_eq!(remote[0]["state"], "failed", "{remote:#}");
    assert_eq!(remote[0]["id"], failed[0]["id"]);
    let log = c.stderr();
    assert_eq!(
        log.matches("alert refused by its receiver").count(),
        1,
        "{log}"
    );
    let metrics = c.get("/metrics", None).text();
    assert!(
        metrics.contains("driftwatch_alerts_failed_total{sink=\"hook\",kind=\"unauthorized\"} 1"),
        "{metrics}"
    );
}

/// The collector killed (SIGKILL) while its receiver keeps failing, then restarted: every
/// alert still arrives.
#[test]
fn a_collector_killed_mid_delivery_loses_nothing() {
    let rx = Receiver::start();
    rx.status.store(503, Ordering::Relaxed);
    let site = Site::with(
        &(UNSIGNED.to_string() + &webhook("hook", &rx.url("/hook"), &["unauthorized"], "")),
    );
    let c = site.start();
    let token = site.token("agent", Some("web-01"));
    c.ingest(&token, &batch("web-01", simple_events(1, 4, "shell")));
    // Delivery under way (and failing) before the kill.
    let start = Instant::now();
    while !alerts_list(&site.config)
        .iter()
        .any(|a| a["attempts"].as_u64() >= Some(1))
    {
        assert!(start.elapsed() < ARRIVAL, "no delivery attempt");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill9(&c);
    drop(c);
    rx.status.store(200, Ordering::Relaxed);
    let c2 = site.start();
    rx.wait("four alerts after the restart", |_| {
        id_counts(&rx.alerts("/hook")).len() >= 4
    });
    let items = rx.alerts("/hook");
    let mut paths: Vec<&str> = items.iter().filter_map(|i| i["path"].as_str()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(
        paths,
        ["shell-1.php", "shell-2.php", "shell-3.php", "shell-4.php"]
    );
    drop(c2);
}

/// A host not heard from within `silent_after` raises `silent`; its next heartbeat raises
/// `back` (both with status, host and environment).
#[test]
fn a_silent_host_alerts_after_silent_after_and_when_it_is_back() {
    let rx = Receiver::start();
    let site = Site::with(&format!(
        "silent_after = \"2s\"\n{UNSIGNED}{}",
        webhook("hook", &rx.url("/hook"), &["silent"], "")
    ));
    let c = site.start();
    let token = site.token("agent", Some("web-01"));
    let hb =
        serde_json::json!({"host": "web-01", "environment": "production", "agent_version": "test"});
    let posted = Instant::now();
    assert_eq!(
        c.post_json("/api/v1/heartbeat", Some(&token), &hb).status,
        200
    );
    rx.wait("the silent alert", |_| !rx.alerts("/hook").is_empty());
    let silent = rx.alerts("/hook");
    assert!(
        posted.elapsed() >= Duration::from_secs(2),
        "alerted before silent_after"
    );
    assert_eq!(silent.len(), 1, "{silent:#?}");
    assert_eq!(
        (silent[0]["kind"].as_str(), silent[0]["status"].as_str()),
        (Some("silent"), Some("silent"))
    );
    assert_eq!(silent[0]["host"], "web-01");
    assert_eq!(silent[0]["environment"], "production");
    assert_eq!(
        c.post_json("/api/v1/heartbeat", Some(&token), &hb).status,
        200
    );
    rx.wait("the back alert", |_| rx.alerts("/hook").len() >= 2);
    let back = &rx.alerts("/hook")[1];
    assert_eq!(back["status"], "back", "{back:#}");
}

/// An event row edited in the SQLite file behind the collector's back raises an `audit` alert
/// from the background chain check, once.
#[test]
fn a_tampered_event_row_raises_an_audit_alert() {
    let rx = Receiver::start();
    let site = Site::with(&format!(
        "{UNSIGNED}\n[audit]\nverify_every = \"1s\"\n{}",
        webhook("hook", &rx.url("/hook"), &["audit"], "")
    ));
    let c = site.start();
    let token = site.token("agent", Some("web-01"));
    let now = common::rfc3339(-60);
    c.ingest(
        &token,
        &batch(
            "web-01",
            vec![
                event(1, "index.php", "modified", "release:R-1", &now),
                event(2, "a.php", "added", "release:R-1", &now),
            ],
        ),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        rx.alerts("/hook").is_empty(),
        "an intact chain raised {:#?}",
        rx.alerts("/hook")
    );
    let db = rusqlite::Connection::open(&site.db).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        db.execute("UPDATE events SET path = 'innocent.php' WHERE seq = 2", [])
            .unwrap(),
        1
    );
    drop(db);
    rx.wait("the audit alert", |_| !rx.alerts("/hook").is_empty());
    std::thread::sleep(Duration::from_millis(2500));
    let items = rx.alerts("/hook");
    assert_eq!(items.len(), 1, "one break, one alert: {items:#?}");
    assert_eq!(items[0]["kind"], "audit");
    assert!(
        items[0]["summary"]
            .as_str()
            .unwrap()
            .contains("audit chain broken"),
        "{:#}",
        items[0]
    );
    drop(c);
}

/// RFC 5424 over UDP and CEF over TCP (octet-counted), parsed field by field.
#[test]
fn syslog_lines_over_udp_and_tcp_carry_every_field() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(ARRIVAL)).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "\n[[alert]]\nname = \"siem-udp\"\nkind = \"syslog\"\naddress = \"udp://{}\"\non = [\"unauthorized\"]\n\
         \n[[alert]]\nname = \"siem-tcp\"\nkind = \"syslog\"\naddress = \"tcp://{}\"\nformat = \"cef\"\non = [\"unauthorized\"]\n",
        udp.local_addr().unwrap(),
        tcp.local_addr().unwrap()
    );
    let site = Site::with(&(UNSIGNED.to_string() + &extra));
    let c = site.start();
    let token = site.token("agent", Some("web-01"));
    let now = common::rfc3339(-60);
    let mut e = event(
        1,
        "wp-content/uploads/cmd.php",
        "added",
        "unauthorized",
        &now,
    );
    e["blake3"] = Value::from("ab".repeat(32));
    e["size"] = Value::from(31);
    c.ingest(&token, &batch("web-01", vec![e]));

    let mut buf = [0u8; 8192];
    let n = udp.recv(&mut buf).expect("a syslog datagram");
    let line = std::str::from_utf8(&buf[..n]).unwrap();
    // <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG
    let parts: Vec<&str> = line.splitn(7, ' ').collect();
    assert_eq!(parts[0], "<131>1", "local0.err: {line}");
    assert!(parts[1].parse::<jiff::Timestamp>().is_ok(), "{line}");
    assert_eq!(parts[3], "driftwatch", "{line}");
    assert!(parts[4].parse::<u32>().is_ok(), "{line}");
    assert_eq!(parts[5], "unauthorized", "{line}");
    let sd = parts[6];
    assert!(sd.starts_with("[driftwatch@32473 id=\""), "{line}");
    for f in [
        "host=\"web-01\"",
        "tree=\"shop\"",
        "path=\"wp-content/uploads/cmd.php\"",
        "change=\"added\"",
        "status=\"unauthorized\"",
        "size=\"31\"",
    ] {
        assert!(sd.contains(f), "{f} missing: {line}");
    }
    assert!(
        sd.contains(&format!("blake3=\"{}\"", "ab".repeat(32))),
        "{line}"
    );
    assert!(
        sd.ends_with("unauthorized change on web-01: added shop/wp-content/uploads/cmd.php"),
        "{line}"
    );

    tcp.set_nonblocking(false).unwrap();
    let (mut s, _) = tcp.accept().unwrap();
    s.set_read_timeout(Some(ARRIVAL)).unwrap();
    let mut frame = String::new();
    s.read_to_string(&mut frame).unwrap();
    let (len, msg) = frame.split_once(' ').expect("octet-counted frame");
    assert_eq!(len.parse::<usize>().unwrap(), msg.len(), "{frame}");
    let cef = msg
        .split_once(" - ")
        .expect("no structured data before the CEF text")
        .1;
    let head: Vec<&str> = cef.splitn(8, '|').collect();
    assert_eq!(
        &head[..5],
        [
            "CEF:0",
            "driftwatch",
            "driftwatch",
            env!("CARGO_PKG_VERSION"),
            "unauthorized"
        ],
        "{cef}"
    );
    assert_eq!(head[6], "8", "{cef}");
    for f in [
        "dhost=web-01",
        "filePath=wp-content/uploads/cmd.php",
        "act=added",
        "fsize=31",
        "cs1Label=alertId",
        "cs2Label=status cs2=unauthorized",
        "cs3Label=tree cs3=shop",
    ] {
        assert!(head[7].contains(f), "{f} missing: {cef}");
    }
    assert!(
        head[7].contains(&format!("fileHash={}", "ab".repeat(32))),
        "{cef}"
    );
    drop(c);
}

/// What a minimal SMTP server received: the envelope and the DATA.
struct Mail {
    rcpt: Vec<String>,
    data: String,
}

/// Speaks enough SMTP (RFC 5321) for one message and returns it.
fn smtp_server() -> (SocketAddr, std::sync::mpsc::Receiver<Mail>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(ARRIVAL)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut mail = Mail {
            rcpt: Vec::new(),
            data: String::new(),
        };
        let _ = w.write_all(b"220 test ESMTP\r\n");
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let cmd = line.trim_end().to_ascii_uppercase();
            let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                b"250-test\r\n250 8BITMIME\r\n"
            } else if cmd.starts_with("RCPT TO:") {
                mail.rcpt.push(line.trim_end()[8..].trim().to_string());
                b"250 ok\r\n"
            } else if cmd.starts_with("DATA") {
                let _ = w.write_all(b"354 go on\r\n");
                loop {
                    let mut d = String::new();
                    if r.read_line(&mut d).unwrap_or(0) == 0 || d == ".\r\n" {
                        break;
                    }
                    mail.data.push_str(&d);
                }
                b"250 queued\r\n"
            } else if cmd.starts_with("QUIT") {
                let _ = w.write_all(b"221 bye\r\n");
                let _ = tx.send(mail);
                return;
            } else {
                b"250 ok\r\n"
            };
            let _ = w.write_all(reply);
        }
    });
    (addr, rx)
}

/// Quoted-printable decoded (soft breaks joined, `=XX` bytes), enough for these ASCII bodies.
fn unqp(s: &str) -> String {
    let s = s.replace("=\r\n", "");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Email through SMTP: multipart/alternative with a text and an HTML part, both with the path.
#[test]
fn email_is_multipart_text_and_html_with_the_path() {
    let (addr, mails) = smtp_server();
    let extra = format!(
        "\n[[alert]]\nname = \"mail\"\nkind = \"email\"\nsmtp = \"smtp://{addr}\"\nfrom = \"driftwatch@example.org\"\nto = [\"oncall@example.org\"]\non = [\"unauthorized\"]\n"
    );
    let site = Site::with(&(UNSIGNED.to_string() + &extra));
    let c = site.start();
    let token = site.token("agent", Some("web-01"));
    c.ingest(&token, &batch("web-01", simple_events(1, 1, "uploads/cmd")));
    let mail = mails.recv_timeout(ARRIVAL).expect("a mail");
    assert_eq!(mail.rcpt, ["<oncall@example.org>"]);
    // Headers unfolded (RFC 5322 §2.2.3), bodies decoded.
    let data = unqp(&mail.data).replace("\r\n ", " ");
    assert!(
        data.contains(
            "Subject: driftwatch: unauthorized change on web-01: added shop/uploads/cmd-1.php"
        ),
        "{data}"
    );
    assert!(
        data.contains("Content-Type: multipart/alternative"),
        "{data}"
    );
    let text_at = data.find("Content-Type: text/plain").expect("a text part");
    let html_at = data.find("Content-Type: text/html").expect("an HTML part");
    assert!(
        data[text_at..html_at].contains("path: uploads/cmd-1.php"),
        "{data}"
    );
    assert!(
        data[html_at..].contains("<code>uploads/cmd-1.php</code>"),
        "{data}"
    );
    drop(c);
}

/// `config check` names the key of each bad `[[alert]]` option, and an SMTP server that does
/// not answer; `[[alert]]` in an agent config needs the embedded collector.
#[test]
fn config_check_names_the_bad_alert_keys() {
    let dead = agent_common::free_port();
    let site = Site::with(&format!(
        "{UNSIGNED}\n[[alert]]\nname = \"a\"\nkind = \"pager\"\n\
         \n[[alert]]\nname = \"b\"\nkind = \"webhook\"\nurl = \"htp:/nowhere\"\nchannel = \"#ops\"\n\
         \n[[alert]]\nname = \"c\"\nkind = \"slack\"\nurl = \"http://h/\"\nsmtp = \"smtp://h:25\"\n"
    ));
    let out = common::run(["config", "check", "--config", site.config.to_str().unwrap()]);
    out.expect_code(2);
    for want in [
        "alert[0].kind: unknown sink kind \"pager\"",
        "alert[1].url: \"htp:/nowhere\"",
        "alert[1].channel: unknown key",
        "alert[2].smtp: not an option of a slack sink",
    ] {
        assert!(out.stderr.contains(want), "{want} missing:\n{}", out.stderr);
    }
    let site = Site::with(&format!(
        "{UNSIGNED}\n[[alert]]\nname = \"m\"\nkind = \"email\"\nsmtp = \"smtp://127.0.0.1:{dead}\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n"
    ));
    let out = common::run(["config", "check", "--config", site.config.to_str().unwrap()]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("alert[0].smtp: unreachable"),
        "{}",
        out.stderr
    );

    let fx = common::Fx::new();
    let mut spec = agent_common::AgentSpec::for_fx(&fx);
    spec.uplink = agent_common::Uplink::Remote {
        url: "http://127.0.0.1:9".into(),
        token_file: fx.base.join("t"),
    };
    std::fs::write(fx.base.join("t"), "x\n").unwrap();
    spec.extra = webhook("hook", "http://127.0.0.1:9/", &["unauthorized"], "");
    let config = fx.base.join("agent.toml");
    spec.write(&config);
    let out = common::run(["config", "check", "--config", config.to_str().unwrap()]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("alert: [[alert]] tables need [collector] embedded = true"),
        "{}",
        out.stderr
    );
}

/// `alerts test NAME` sends a `test` alert through that sink now; a refusing receiver is an
/// error naming the sink.
#[test]
fn alerts_test_sends_through_the_named_sink() {
    let rx = Receiver::start();
    let site =
        Site::with(&(UNSIGNED.to_string() + &webhook("hook", &rx.url("/hook"), &["audit"], "")));
    let out = common::run([
        "alerts",
        "test",
        "hook",
        "--config",
        site.config.to_str().unwrap(),
    ]);
    out.expect_code(0);
    let items = rx.alerts("/hook");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["kind"], "test");
    assert!(
        out.stdout.contains(items[0]["id"].as_str().unwrap()),
        "{}",
        out.stdout
    );
    rx.status.store(500, Ordering::Relaxed);
    let out = common::run([
        "alerts",
        "test",
        "hook",
        "--config",
        site.config.to_str().unwrap(),
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("alert \"hook\" (webhook)") && out.stderr.contains("500"),
        "{}",
        out.stderr
    );
    let out = common::run([
        "alerts",
        "test",
        "nope",
        "--config",
        site.config.to_str().unwrap(),
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("no [[alert]] named \"nope\""),
        "{}",
        out.stderr
    );
}

/// With `batch = "2s"`, one host's alerts within the window go out as one message (each still
/// with its own id); another host's go out apart.
#[test]
fn alerts_of_one_host_within_the_batch_window_go_out_together() {
    let rx = Receiver::start();
    let site = Site::with(
        &(UNSIGNED.to_string()
            + &webhook(
                "hook",
                &rx.url("/hook"),
                &["unauthorized"],
                "batch = \"2s\"\n",
            )),
    );
    let c = site.start();
    let web01 = site.token("agent", Some("web-01"));
    let web02 = site.token("agent", Some("web-02"));
    let start = Instant::now();
    for seq in 1..=3 {
        c.ingest(&web01, &batch("web-01", simple_events(seq, 1, "b")));
    }
    c.ingest(&web02, &batch("web-02", simple_events(1, 1, "other")));
    rx.wait("two batched messages", |r| r.len() >= 2);
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "sent before the window closed"
    );
    std::thread::sleep(Duration::from_millis(500));
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    let by_host: BTreeMap<String, usize> = reqs
        .iter()
        .map(|r| {
            let b = r.json();
            (
                b["host"].as_str().unwrap().to_string(),
                b["alerts"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        by_host,
        BTreeMap::from([("web-01".to_string(), 3), ("web-02".to_string(), 1)])
    );
    assert_eq!(id_counts(&rx.alerts("/hook")).len(), 4);
}

/// A heartbeat whose coverage shrank raises `coverage` (not the host's first report of it);
/// a heartbeat reporting more spool drops raises `gap`.
#[test]
fn coverage_reductions_and_spool_drops_alert_from_heartbeats() {
    let rx = Receiver::start();
    let site = Site::with(
        &(UNSIGNED.to_string() + &webhook("hook", &rx.url("/hook"), &["coverage", "gap"], "")),
    );
    let c = site.start();
    let token = site.token("agent", Some("web-01"));
    let hb = |local: &[&str], dropped: u64| {
        serde_json::json!({"host": "web-01", "environment": "production", "agent_version": "t",
            "spool_dropped": dropped, "config_digest": "ab".repeat(32),
            "coverage": [{"tree": "shop", "exclude": ["var/cache/**"], "local_exclude": local}]})
    };
    assert_eq!(
        c.post_json("/api/v1/heartbeat", Some(&token), &hb(&[], 0))
            .status,
        200
    );
    assert_eq!(
        c.post_json("/api/v1/heartbeat", Some(&token), &hb(&[], 0))
            .status,
        200
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(rx.alerts("/hook").is_empty(), "{:#?}", rx.alerts("/hook"));
    assert_eq!(
        c.post_json("/api/v1/heartbeat", Some(&token), &hb(&["uploads/**"], 0))
            .status,
        200
    );
    rx.wait("the coverage alert", |_| !rx.alerts("/hook").is_empty());
    let cov = &rx.alerts("/hook")[0];
    assert_eq!(
        (cov["kind"].as_str(), cov["status"].as_str()),
        (Some("coverage"), Some("reduced")),
        "{cov:#}"
    );
    assert!(
        cov["summary"]
            .as_str()
            .unwrap()
            .contains("shop excludes uploads/**"),
        "{cov:#}"
    );
    assert_eq!(
        c.post_json("/api/v1/heartbeat", Some(&token), &hb(&["uploads/**"], 7))
            .status,
        200
    );
    rx.wait("the spool drop alert", |_| rx.alerts("/hook").len() >= 2);
    let drop = &rx.alerts("/hook")[1];
    assert_eq!(
        (drop["kind"].as_str(), drop["status"].as_str()),
        (Some("gap"), Some("spool_dropped")),
        "{drop:#}"
    );
    assert!(
        drop["summary"]
            .as_str()
            .unwrap()
            .contains("dropped 7 events"),
        "{drop:#}"
    );
}

/// Every metric the shipped Alertmanager rules use is one the collector exports.
#[test]
fn the_shipped_prometheus_rules_use_exported_metrics() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/prometheus-alerts.yml"
    ))
    .unwrap();
    let rx = Receiver::start();
    let site = Site::with(
        &(UNSIGNED.to_string() + &webhook("hook", &rx.url("/hook"), &["unauthorized"], "")),
    );
    let c = site.start();
    let token = site.token("agent", Some("web-01"));
    c.ingest(&token, &batch("web-01", simple_events(1, 1, "x")));
    let hb = serde_json::json!({"host": "web-01", "spool_depth": 1});
    assert_eq!(
        c.post_json("/api/v1/heartbeat", Some(&token), &hb).status,
        200
    );
    let metrics = c.get("/metrics", None).text();
    let mut used: Vec<&str> = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("driftwatch_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 8, "{used:?}");
    for m in used {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(m) && l[m.len()..].starts_with([' ', '{'])),
            "{m} is used by config/prometheus-alerts.yml but not exported:\n{metrics}"
        );
    }
}

/// At `kpi.report_at` (here already past today, so at start) an environment whose KPI was
/// below target yesterday raises `kpi_missed`, once across a restart.
#[test]
fn yesterdays_kpi_below_target_raises_kpi_missed_at_report_at() {
    use driftwatch::store::Store;
    let rx = Receiver::start();
    let site = Site::with(&format!(
        "{UNSIGNED}\n[kpi]\nreport_at = \"00:00\"\n{}",
        webhook("hook", &rx.url("/hook"), &["kpi_missed"], "")
    ));
    // Yesterday's history, written through the store as the collector would have.
    let yesterday = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_hours(24))
        .unwrap();
    let store =
        driftwatch::store::sqlite::SqliteStore::open(&site.db, jiff::tz::TimeZone::UTC).unwrap();
    let observed = yesterday.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let b: driftwatch::event::EventBatch = serde_json::from_value(batch(
        "web-01",
        vec![
            event(1, "index.php", "modified", "release:R-1", &observed),
            event(2, "shell.php", "added", "unauthorized", &observed),
        ],
    ))
    .unwrap();
    store.ingest(&b, yesterday).unwrap();
    drop(store);
    let day = yesterday
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();

    let c = site.start();
    rx.wait("the kpi_missed alert", |_| !rx.alerts("/hook").is_empty());
    let items = rx.alerts("/hook");
    assert_eq!(items.len(), 1, "{items:#?}");
    let it = &items[0];
    assert_eq!(
        (it["kind"].as_str(), it["environment"].as_str()),
        (Some("kpi_missed"), Some("production")),
        "{it:#}"
    );
    let summary = it["summary"].as_str().unwrap();
    assert!(
        summary.contains(&day) && summary.contains("50.0%") && summary.contains("97.0%"),
        "{summary}"
    );
    drop(c);
    let c = site.start();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        rx.alerts("/hook").len(),
        1,
        "a restart must not alert the same day twice"
    );
    drop(c);
}
