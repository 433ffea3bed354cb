//! Load generator and store seeder for the collector benchmark (`bench/collector.sh`, DESIGN §11).
//!
//! Not a test: a tool the benchmark script drives.
//!
//! ```sh
//! cargo build --release --example loadgen
//! # ingestion: many simulated agents posting event batches over keep-alive connections
//! target/release/examples/loadgen ingest --url http://127.0.0.1:PORT --tokens tokens.txt \
//!     --reader-token-file reader.txt --events 200000 --batch 500 --concurrency 8
//! # KPI: seed a SQLite store directly through the library, a year of 1,000 hosts
//! target/release/examples/loadgen seed --db kpi.db --hosts 1000 --days 365
//! # optional: seal finished days in-process (what a daily dashboard or /metrics scrape does)
//! target/release/examples/loadgen seal --db kpi.db --through 2026-11-19
//! # diagnostic: the KPI query in-process, split into store / compute / JSON
//! target/release/examples/loadgen kpi-local --db kpi.db --from 2025-11-21 --to 2026-11-20 --group host
//! ```
//!
//! `ingest` prints progress and a summary on stderr, and one `key=value ...` line on stdout for
//! scripts. Every generated event is a valid `ChangeEvent` (DESIGN §8): per-host `seq` from 1,
//! RFC 3339 times, 64-hex BLAKE3 hashes, realistic paths, mostly `release:…` statuses with some
//! `change:…` and `unauthorized`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use driftwatch::event::{ChangeEvent, EventBatch, Heartbeat, IngestResult, ScanSummary};
use driftwatch::kpi::{self, Grouping, Period};
use driftwatch::store::Store;
use driftwatch::store::sqlite::SqliteStore;
use driftwatch::util::timefmt;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

#[derive(Parser)]
#[command(about = "driftwatch collector load generator and store seeder (bench/collector.sh)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Post event batches for many simulated hosts to a running collector and time it.
    Ingest(IngestArgs),
    /// Fill a SQLite store directly (no HTTP) with a history of heartbeats, events and scans.
    Seed(SeedArgs),
    /// Seal every finished day through DATE into KPI rows, in-process, and time it.
    Seal {
        /// SQLite file.
        #[arg(long)]
        db: PathBuf,
        /// Last day to seal (YYYY-MM-DD).
        #[arg(long)]
        through: Date,
    },
    /// Run the KPI query in-process and time its parts (store, roll-up, JSON).
    KpiLocal {
        /// SQLite file.
        #[arg(long)]
        db: PathBuf,
        /// First day.
        #[arg(long)]
        from: Date,
        /// Last day.
        #[arg(long)]
        to: Date,
        /// fleet or host.
        #[arg(long, default_value = "fleet")]
        group: String,
    },
}

#[derive(clap::Args)]
struct IngestArgs {
    /// Collector base URL (http://127.0.0.1:PORT).
    #[arg(long)]
    url: String,
    /// File with one `HOST TOKEN` pair per line (agent tokens); one simulated host per line.
    #[arg(long)]
    tokens: PathBuf,
    /// File holding a reader token: verify through GET /api/v1/hosts that every event was stored.
    #[arg(long)]
    reader_token_file: Option<PathBuf>,
    /// Events in total, spread evenly over the hosts.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events per batch (per POST).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Requests in flight (each worker owns a share of the hosts and one keep-alive connection).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Environment label of the simulated hosts.
    #[arg(long, default_value = "production")]
    environment: String,
    /// PRNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args)]
struct SeedArgs {
    /// SQLite file (created; must not hold data from an earlier seed).
    #[arg(long)]
    db: PathBuf,
    /// Hosts.
    #[arg(long, default_value_t = 1000)]
    hosts: u32,
    /// Days of history, ending at --end.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Last seeded day (default: yesterday, UTC).
    #[arg(long)]
    end: Option<Date>,
    /// Mean events per host-day (each day draws 0..=2×this).
    #[arg(long, default_value_t = 2)]
    events_per_day: u32,
    /// Host-days (after a host's first) on which the host stays silent, in per mille.
    #[arg(long, default_value_t = 10)]
    silent_permille: u64,
    /// PRNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    // reqwest is built with `rustls-no-provider`: a provider must exist even for plain http.
    driftwatch::client::install_crypto_provider();
    match Cli::parse().cmd {
        Cmd::Ingest(a) => ingest(a),
        Cmd::Seed(a) => seed(a),
        Cmd::Seal { db, through } => seal(&db, through),
        Cmd::KpiLocal {
            db,
            from,
            to,
            group,
        } => kpi_local(&db, from, to, &group),
    }
}

// ------------------------------------------------------------------------------------------------
// Realistic events

/// splitmix64: deterministic, dependency-free, good enough for synthetic data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn hash_hex(&mut self) -> String {
        format!(
            "{:016x}{:016x}{:016x}{:016x}",
            self.next(),
            self.next(),
            self.next(),
            self.next()
        )
    }
}

const TREES: &[&str] = &["www", "www", "www", "etc", "opt-app"];
const VENDORS: &[&str] = &[
    "symfony",
    "laravel",
    "guzzlehttp",
    "monolog",
    "doctrine",
    "twig",
    "psr",
    "league",
    "nesbot",
    "ramsey",
];
const DIRS: &[&str] = &[
    "src",
    "lib",
    "src/Http",
    "src/Console",
    "src/Event",
    "src/Util",
    "resources/views",
    "config",
];
const STEMS: &[&str] = &[
    "Kernel",
    "Request",
    "Response",
    "Client",
    "Handler",
    "Logger",
    "Router",
    "Cache",
    "Session",
    "index",
    "bootstrap",
    "helpers",
];
const EXTS: &[&str] = &["php", "php", "php", "js", "twig", "json", "yml"];

fn make_path(rng: &mut Rng, tree: &str) -> String {
    match tree {
        "etc" => format!(
            "{}/{}.conf",
            rng.pick(&[
                "nginx/sites-enabled",
                "php/8.3/fpm/pool.d",
                "cron.d",
                "systemd/system"
            ]),
            rng.pick(STEMS).to_lowercase()
        ),
        _ => format!(
            "vendor/{}/pkg-{}/{}/{}{}.{}",
            rng.pick(VENDORS),
            rng.below(40),
            rng.pick(DIRS),
            rng.pick(STEMS),
            rng.below(200),
            rng.pick(EXTS)
        ),
    }
}

/// One change event numbered `seq`, observed at `observed` (the window opened 5 minutes earlier).
fn make_event(rng: &mut Rng, seq: u64, observed: Timestamp) -> ChangeEvent {
    let tree = rng.pick(TREES);
    let path = make_path(rng, tree);
    let change = match rng.below(100) {
        0..70 => "modified",
        70..90 => "added",
        90..97 => "removed",
        _ => "metadata",
    };
    let status = match rng.below(1000) {
        0..950 => format!("release:2026.11.{}", rng.below(30) + 1),
        950..970 => format!("change:CHG-{}", 1000 + rng.below(500)),
        970..975 => format!("retroactive:CHG-{}", 1000 + rng.below(500)),
        _ => "unauthorized".to_string(),
    };
    let (blake3, previous_blake3, size) = match change {
        "added" => (Some(rng.hash_hex()), None, Some(rng.below(64 << 10))),
        "removed" => (None, Some(rng.hash_hex()), None),
        "metadata" => {
            let h = rng.hash_hex();
            (Some(h.clone()), Some(h), Some(rng.below(64 << 10)))
        }
        _ => (
            Some(rng.hash_hex()),
            Some(rng.hash_hex()),
            Some(rng.below(64 << 10)),
        ),
    };
    ChangeEvent {
        seq,
        tree: tree.to_string(),
        path,
        path_bytes: None,
        change: change.to_string(),
        status,
        observed_at: timefmt::format_timestamp(observed),
        window_start: timefmt::format_timestamp(observed - SignedDuration::from_secs(300)),
        blake3,
        previous_blake3,
        size,
        detail: None,
        resolves: None,
    }
}

fn scans_for(rng: &mut Rng, finished: Timestamp) -> Vec<ScanSummary> {
    ["www", "etc", "opt-app"]
        .iter()
        .map(|t| {
            let paths = 2_000 + rng.below(40_000);
            ScanSummary {
                tree: (*t).to_string(),
                finished_at: timefmt::format_timestamp(finished),
                paths,
                vetted: paths - rng.below(20).min(paths),
                release: Some("2026.11.20".into()),
                seconds: 0.5 + (rng.below(3000) as f64) / 1000.0,
            }
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// ingest

struct Host {
    name: String,
    token: String,
    events: u64,
}

struct Job {
    host: usize,
    body: Vec<u8>,
    events: u64,
    last_seq: u64,
}

#[derive(Default)]
struct WorkerReport {
    latencies: Vec<Duration>,
    stored: u64,
    duplicates: u64,
    rejected: u64,
    errors: Vec<String>,
    retries_429: u64,
    bytes: u64,
}

fn read_tokens(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(h), Some(t), None) => out.push((h.to_string(), t.to_string())),
            _ => bail!("{}:{}: expected `HOST TOKEN`", path.display(), i + 1),
        }
    }
    if out.is_empty() {
        bail!("{}: no tokens", path.display());
    }
    Ok(out)
}

fn ingest(a: IngestArgs) -> anyhow::Result<()> {
    if a.batch == 0 || a.concurrency == 0 {
        bail!("--batch and --concurrency must be at least 1");
    }
    let tokens = read_tokens(&a.tokens)?;
    let n_hosts = tokens.len() as u64;
    let hosts: Vec<Host> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, (name, token))| Host {
            name,
            token,
            events: a.events / n_hosts + u64::from((i as u64) < a.events % n_hosts),
        })
        .collect();

    // Build every request body before the clock starts: the generator shares the 2 cores with the
    // collector, so only sending (not JSON encoding) overlaps the measured window.
    let t_build = Instant::now();
    let mut rng = Rng(a.seed);
    let now = Timestamp::now();
    let mut per_host: Vec<Vec<Job>> = Vec::with_capacity(hosts.len());
    let mut body_bytes = 0usize;
    for (hi, h) in hosts.iter().enumerate() {
        let mut jobs = Vec::new();
        let mut seq = 0u64;
        while seq < h.events {
            let n = (h.events - seq).min(a.batch as u64);
            let events: Vec<ChangeEvent> = (seq + 1..=seq + n)
                .map(|s| {
                    let observed = now - SignedDuration::from_secs(rng.below(3600) as i64);
                    make_event(&mut rng, s, observed)
                })
                .collect();
            seq += n;
            // The last batch of a host carries its scan summaries, as the agent sends them.
            let scans = if seq == h.events {
                scans_for(&mut rng, now)
            } else {
                Vec::new()
            };
            let batch = EventBatch {
                host: h.name.clone(),
                environment: a.environment.clone(),
                events,
                scans,
            };
            let body = serde_json::to_vec(&batch)?;
            body_bytes += body.len();
            jobs.push(Job {
                host: hi,
                body,
                events: n,
                last_seq: seq,
            });
        }
        per_host.push(jobs);
    }
    let total_batches: usize = per_host.iter().map(Vec::len).sum();
    let total_events: u64 = hosts.iter().map(|h| h.events).sum();
    eprintln!(
        "loadgen: {} hosts, {total_events} events in {total_batches} batches of up to {} ({:.1} MiB of JSON, {:.0} bytes/event), built in {:.2} s",
        hosts.len(),
        a.batch,
        body_bytes as f64 / (1 << 20) as f64,
        body_bytes as f64 / total_events.max(1) as f64,
        t_build.elapsed().as_secs_f64()
    );

    // Worker w owns hosts w, w+C, w+2C, ... and sends their batches round-robin, so a host's
    // batches go out in sequence order and never two at once (as one agent would send them).
    let c = a.concurrency.min(hosts.len()).max(1);
    let mut queues: Vec<Vec<Job>> = (0..c).map(|_| Vec::new()).collect();
    {
        let mut iters: Vec<std::vec::IntoIter<Job>> =
            per_host.into_iter().map(Vec::into_iter).collect();
        let mut left = true;
        while left {
            left = false;
            for (hi, it) in iters.iter_mut().enumerate() {
                if let Some(j) = it.next() {
                    queues[hi % c].push(j);
                    left = true;
                }
            }
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let hosts = Arc::new(hosts);
    let url = format!("{}/api/v1/events", a.url.trim_end_matches('/'));
    let (reports, elapsed) = rt.block_on(async {
        let mut handles = Vec::new();
        let start = Instant::now();
        for q in queues {
            // One client per worker: one keep-alive connection each, C connections in all.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(120))
                .build()?;
            let hosts = hosts.clone();
            let url = url.clone();
            handles.push(tokio::spawn(async move {
                run_worker(client, &url, &hosts, q).await
            }));
        }
        let mut reports = Vec::new();
        for h in handles {
            reports.push(h.await?);
        }
        Ok::<_, anyhow::Error>((reports, start.elapsed()))
    })?;

    let mut lat: Vec<Duration> = reports
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    lat.sort();
    let pct = |p: f64| {
        lat.get(
            ((lat.len() as f64 * p).ceil() as usize)
                .saturating_sub(1)
                .min(lat.len().saturating_sub(1)),
        )
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let stored: u64 = reports.iter().map(|r| r.stored).sum();
    let duplicates: u64 = reports.iter().map(|r| r.duplicates).sum();
    let rejected: u64 = reports.iter().map(|r| r.rejected).sum();
    let retries: u64 = reports.iter().map(|r| r.retries_429).sum();
    let sent_bytes: u64 = reports.iter().map(|r| r.bytes).sum();
    let errors: Vec<&String> = reports.iter().flat_map(|r| r.errors.iter()).collect();
    let secs = elapsed.as_secs_f64();
    let rate = stored as f64 / secs;
    eprintln!(
        "loadgen: {stored} events stored in {secs:.2} s = {rate:.0} events/s ({:.1} MiB/s of JSON); {duplicates} duplicates, {rejected} rejected, {retries} retries after 429, {} failed batches",
        sent_bytes as f64 / (1 << 20) as f64 / secs,
        errors.len()
    );
    eprintln!(
        "loadgen: batch latency ms p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    for e in errors.iter().take(5) {
        eprintln!("loadgen: error: {e}");
    }

    let verified = match &a.reader_token_file {
        Some(f) => {
            let reader = std::fs::read_to_string(f)
                .with_context(|| format!("{}", f.display()))?
                .trim()
                .to_string();
            let base = a.url.trim_end_matches('/').to_string();
            match rt.block_on(verify_hosts(&base, &reader, &hosts)) {
                Ok(msg) => {
                    eprintln!("loadgen: verified: {msg}");
                    "ok"
                }
                Err(e) => {
                    eprintln!("loadgen: VERIFY FAILED: {e:#}");
                    "FAILED"
                }
            }
        }
        None => "skipped",
    };
    println!(
        "events={total_events} stored={stored} duplicates={duplicates} rejected={rejected} failed_batches={} seconds={secs:.3} events_per_s={rate:.0} batches={total_batches} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} verified={verified} loadgen_cpu_s={:.2}",
        errors.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
        own_cpu_seconds()
    );
    if !errors.is_empty() || verified == "FAILED" || stored != total_events {
        std::process::exit(1);
    }
    Ok(())
}

/// CPU seconds (user + system) this process has used: the generator's share of the 2 cores.
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

async fn run_worker(
    client: reqwest::Client,
    url: &str,
    hosts: &[Host],
    jobs: Vec<Job>,
) -> WorkerReport {
    let mut rep = WorkerReport::default();
    for job in jobs {
        let host = &hosts[job.host];
        let mut attempts = 0;
        loop {
            attempts += 1;
            let t = Instant::now();
            let resp = client
                .post(url)
                .bearer_auth(&host.token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(job.body.clone())
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) if attempts < 3 => {
                    eprintln!("loadgen: {}: retrying after {e}", host.name);
                    continue;
                }
                Err(e) => {
                    rep.errors
                        .push(format!("{} batch to seq {}: {e}", host.name, job.last_seq));
                    break;
                }
            };
            let status = resp.status();
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS && attempts < 10 {
                rep.retries_429 += 1;
                let wait = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1u64);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                rep.errors.push(format!(
                    "{} batch to seq {}: HTTP {status}: {text}",
                    host.name, job.last_seq
                ));
                break;
            }
            match resp.json::<IngestResult>().await {
                Ok(r) => {
                    rep.latencies.push(t.elapsed());
                    rep.bytes += job.body.len() as u64;
                    rep.stored += r.stored;
                    rep.duplicates += r.duplicates;
                    rep.rejected += r.rejected.len() as u64;
                    if r.stored + r.duplicates != job.events || r.acked_seq != job.last_seq {
                        rep.errors.push(format!(
                            "{} batch to seq {}: stored {} + duplicates {} of {} events, acked {}",
                            host.name,
                            job.last_seq,
                            r.stored,
                            r.duplicates,
                            job.events,
                            r.acked_seq
                        ));
                    }
                }
                Err(e) => rep.errors.push(format!(
                    "{} batch to seq {}: bad answer: {e}",
                    host.name, job.last_seq
                )),
            }
            break;
        }
    }
    rep
}

/// Every host's `last_seq` must equal the events sent to it, with no gaps and no replays.
async fn verify_hosts(base: &str, reader: &str, hosts: &[Host]) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{base}/api/v1/hosts"))
        .bearer_auth(reader)
        .send()
        .await?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "GET /api/v1/hosts: HTTP {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    let list: Vec<serde_json::Value> = resp.json().await?;
    let by_name: HashMap<&str, &serde_json::Value> = list
        .iter()
        .filter_map(|h| Some((h.get("host")?.as_str()?, h)))
        .collect();
    let mut problems = Vec::new();
    let mut sum = 0u64;
    for h in hosts {
        let Some(v) = by_name.get(h.name.as_str()) else {
            problems.push(format!("{}: not listed", h.name));
            continue;
        };
        let field = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(u64::MAX)
        };
        let (last, missing, replays) = (field("last_seq"), field("missing_seqs"), field("replays"));
        sum += last;
        if last != h.events || missing != 0 || replays != 0 {
            problems.push(format!(
                "{}: last_seq {last} (want {}), missing_seqs {missing}, replays {replays}",
                h.name, h.events
            ));
        }
    }
    let want: u64 = hosts.iter().map(|h| h.events).sum();
    if !problems.is_empty() {
        bail!(
            "{} of {} hosts wrong (sum of last_seq {sum}, want {want}); first: {}",
            problems.len(),
            hosts.len(),
            problems[..problems.len().min(3)].join("; ")
        );
    }
    Ok(format!(
        "{} hosts, sum of last_seq = {sum} = events sent, no missing_seqs, no replays",
        hosts.len()
    ))
}

// ------------------------------------------------------------------------------------------------
// seed, seal, kpi-local

fn day_start(d: Date) -> anyhow::Result<Timestamp> {
    Ok(d.to_zoned(TimeZone::UTC)?.timestamp())
}

fn yesterday_utc() -> anyhow::Result<Date> {
    Ok(Timestamp::now()
        .to_zoned(TimeZone::UTC)
        .date()
        .yesterday()?)
}

fn seed(a: SeedArgs) -> anyhow::Result<()> {
    if a.hosts == 0 || a.days == 0 {
        bail!("--hosts and --days must be at least 1");
    }
    let end = match a.end {
        Some(d) => d,
        None => yesterday_utc()?,
    };
    let start = end.checked_sub(jiff::Span::new().days(i64::from(a.days) - 1))?;
    let store = SqliteStore::open(&a.db, TimeZone::UTC).map_err(|e| anyhow!("{e}"))?;
    if !store
        .hosts(Timestamp::now())
        .map_err(|e| anyhow!("{e}"))?
        .is_empty()
    {
        bail!("{}: already holds hosts; seed a new file", a.db.display());
    }
    let mut rng = Rng(a.seed);
    let names: Vec<String> = (0..a.hosts).map(|h| format!("host-{h:04}")).collect();
    let envs: Vec<&str> = (0..a.hosts)
        .map(|h| if h % 10 == 9 { "staging" } else { "production" })
        .collect();
    let mut seqs = vec![0u64; a.hosts as usize];
    let (mut events, mut host_days, mut silent) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    let mut day = start;
    let mut i = 0u32;
    eprintln!(
        "seed: {} hosts × {} days ({start} .. {end}) into {}",
        a.hosts,
        a.days,
        a.db.display()
    );
    while day <= end {
        let base = day_start(day)?;
        for h in 0..a.hosts as usize {
            // Hosts report at their own time of day, spread over the day.
            let offset = (h as i64 * 86_000) / i64::from(a.hosts) + rng.below(300) as i64;
            let now = base + SignedDuration::from_secs(offset);
            if i == 0 {
                let hb = Heartbeat {
                    host: names[h].clone(),
                    environment: envs[h].to_string(),
                    agent_version: "0.1.0".into(),
                    trees: vec!["www".into(), "etc".into(), "opt-app".into()],
                    last_scan: None,
                    spool_dropped: 0,
                    spool_depth: 0,
                    config_digest: None,
                    coverage: vec![],
                };
                store
                    .record_heartbeat(&hb, now)
                    .map_err(|e| anyhow!("{e}"))?;
            } else if rng.below(1000) < a.silent_permille {
                silent += 1;
                continue;
            }
            let k = rng.below(2 * u64::from(a.events_per_day) + 1);
            let evs: Vec<ChangeEvent> = (0..k)
                .map(|_| {
                    seqs[h] += 1;
                    make_event(&mut rng, seqs[h], now - SignedDuration::from_secs(30))
                })
                .collect();
            events += evs.len() as u64;
            let batch = EventBatch {
                host: names[h].clone(),
                environment: envs[h].to_string(),
                events: evs,
                scans: scans_for(&mut rng, now),
            };
            let r = store.ingest(&batch, now).map_err(|e| anyhow!("{e}"))?;
            if r.stored != k {
                bail!("{} on {day}: stored {} of {k}", names[h], r.stored);
            }
            host_days += 1;
        }
        i += 1;
        if i.is_multiple_of(30) || day == end {
            let s = t0.elapsed().as_secs_f64();
            eprintln!(
                "seed: {i}/{} days, {host_days} host-days reported, {events} events, {:.1} s ({:.0} host-days/s)",
                a.days,
                s,
                host_days as f64 / s
            );
        }
        day = day.tomorrow()?;
    }
    drop(store);
    println!(
        "hosts={} days={} first={start} last={end} host_days_reported={host_days} host_days_silent={silent} events={events} seconds={:.1}",
        a.hosts,
        a.days,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn seal(db: &Path, through: Date) -> anyhow::Result<()> {
    let store = SqliteStore::open(db, TimeZone::UTC).map_err(|e| anyhow!("{e}"))?;
    // "now" is just after midnight of the next day: every day through `through` is finished.
    let now = day_start(through.tomorrow()?)? + SignedDuration::from_secs(1);
    let t = Instant::now();
    let days = store
        .host_days(through, through, None, now)
        .map_err(|e| anyhow!("{e}"))?;
    println!(
        "sealed_through={through} seconds={:.3} host_days_of_last_day={}",
        t.elapsed().as_secs_f64(),
        days.len()
    );
    Ok(())
}

fn kpi_local(db: &Path, from: Date, to: Date, group: &str) -> anyhow::Result<()> {
    let groupings = match group {
        "fleet" => vec![Grouping::Fleet],
        "host" => vec![Grouping::Fleet, Grouping::Environment, Grouping::Host],
        other => bail!("--group: {other:?} is not fleet or host"),
    };
    let store = SqliteStore::open(db, TimeZone::UTC).map_err(|e| anyhow!("{e}"))?;
    let t = Instant::now();
    let days = store
        .host_days(from, to, None, Timestamp::now())
        .map_err(|e| anyhow!("{e}"))?;
    let t_store = t.elapsed();
    let t = Instant::now();
    let rows = kpi::compute(&days, Period::Day, &groupings, 0.97);
    let t_compute = t.elapsed();
    let t = Instant::now();
    let json = serde_json::to_vec(&rows)?;
    let t_json = t.elapsed();
    println!(
        "host_days={} rows={} json_bytes={} store_s={:.3} compute_s={:.3} json_s={:.3}",
        days.len(),
        rows.len(),
        json.len(),
        t_store.as_secs_f64(),
        t_compute.as_secs_f64(),
        t_json.as_secs_f64()
    );
    Ok(())
}
