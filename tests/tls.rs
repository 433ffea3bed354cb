//! The collector over HTTPS: rustls serving a PEM certificate, and the CLI verifying it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_driftwatch");

/// Kills and reaps the collector however the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl_cert(dir: &Path) {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .args(["-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the `openssl` command is needed to make a test certificate (apt-get install -y openssl)");
    assert!(status.success(), "openssl could not make a certificate");
}

#[test]
fn collector_serves_https_and_the_cli_verifies_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_cert(d);
    let cfg = d.join("collector.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nstorage = \"sqlite://{}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n[trust]\nrequire_signatures = false\n",
            d.join("c.db").display(),
            d.join("cert.pem").display(),
            d.join("key.pem").display()
        ),
    )
    .unwrap();
    let token = Command::new(BIN)
        .args(["token", "create", "--role", "reader", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    std::fs::write(d.join("reader.token"), &token.stdout).unwrap();

    let mut child = Command::new(BIN)
        .args(["collector", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut url = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if let Some(i) = line.find("listening on ") {
            url = Some(line[i + "listening on ".len()..].trim().to_string());
            break;
        }
        assert!(Instant::now() < deadline, "collector did not start");
    }
    let url = url.expect("collector printed its URL");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let kpi = |trust: bool| {
        let mut c = Command::new(BIN);
        c.args([
            "kpi",
            "--format",
            "csv",
            "--collector",
            &url,
            "--token-file",
        ])
        .arg(d.join("reader.token"));
        if trust {
            c.env("SSL_CERT_FILE", d.join("cert.pem"));
        } else {
            c.env_remove("SSL_CERT_FILE");
        }
        c.output().unwrap()
    };
    // Trusting the certificate: the API answers over TLS.
    let ok = kpi(true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("period,environment,host,"));
    // Not trusting it: refused, one line naming the URL and the certificate problem.
    let refused = kpi(false);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&url) && err.contains("certificate"), "{err}");
}
