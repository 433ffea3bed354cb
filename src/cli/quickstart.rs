//! `driftwatch quickstart`: the real agent and embedded collector on a demo tree (DESIGN §10).
//!
//! Everything is created under one directory on the first run and reused afterwards: a small
//! PHP shop, release and approver keys, a signed manifest, a signed change ticket, an agent config
//! and a reader token for the dashboard. Then the ordinary agent runs in the foreground.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use jiff::{Timestamp, ToSpan};

use crate::agent::{self, config::AgentConfig};
use crate::judge::manifest::Manifest;
use crate::scan::snapshot::{self, ScanOptions};
use crate::sign;
use crate::store::{Role, Store, sqlite::SqliteStore};
use crate::util::timefmt;

const DEMO: &[(&str, &str)] = &[
    (
        "index.php",
        "<?php\nrequire __DIR__ . '/app/bootstrap.php';\necho render('home');\n",
    ),
    (
        "app/bootstrap.php",
        "<?php\nfunction render($page) { return \"<h1>$page</h1>\"; }\n",
    ),
    (
        "app/checkout.js",
        "export function total(items) {\n  return items.reduce((s, i) => s + i.price * i.qty, 0);\n}\n",
    ),
    (
        "app/config/settings.php",
        "<?php\nreturn ['currency' => 'EUR', 'tax' => 0.2];\n",
    ),
    ("assets/site.css", "body { font-family: sans-serif; }\n"),
    ("wp-content/uploads/.keep", ""),
    (".htaccess", "Options -Indexes\n"),
];

/// Where the demo lives and where the dashboard listens.
pub struct Quickstart {
    /// The demo directory (default `./quickstart`).
    pub dir: PathBuf,
    /// Dashboard/API address; port 0 picks a free one.
    pub listen: SocketAddr,
}

impl Quickstart {
    /// Creates what is missing, prints what to try, and runs the agent until Ctrl-C.
    pub fn run(&self) -> anyhow::Result<()> {
        let cfg_path = self.prepare()?;
        let cfg = AgentConfig::load(&cfg_path).map_err(|p| anyhow!("{}", p.join("; ")))?;
        let token = self.reader_token(&cfg)?;
        let _lock = agent::lock_state_dir(&cfg.state_dir)?;
        let url = match &cfg.uplink {
            agent::config::Uplink::Embedded { listen } => format!("http://{listen}"),
            _ => unreachable!("quickstart writes an embedded config"),
        };
        let d = self.dir.display();
        let bin = std::env::args()
            .next()
            .unwrap_or_else(|| "driftwatch".into());
        println!(
            "driftwatch quickstart in {d}\n\
             \n  dashboard:  {url}/?token={token}\
             \n  tree:       {d}/tree   (release demo-1, signed manifest {d}/manifest.json)\
             \n  tickets:    {d}/changes (CHG-1001 allows edits under app/config/)\
             \n\nTry, in another terminal:\
             \n  echo '<?php system($_GET[\"c\"]);' > {d}/tree/wp-content/uploads/shell.php   # unauthorized, within a second\
             \n  echo \"return ['tax' => 0.21];\" >> {d}/tree/app/config/settings.php          # authorized by CHG-1001\
             \n  {bin} events --db {d}/state/collector.db\
             \n  {bin} kpi --db {d}/state/collector.db\
             \n  {bin} check --root {d}/tree --manifest {d}/manifest.json --pubkey {d}/keys/release.pub --changes {d}/changes --approver-pubkey {d}/keys/cab.pub\
             \n\nCtrl-C stops it; running quickstart again reuses everything.\n"
        );
        agent::run(cfg)?;
        Ok(())
    }

    /// Creates the demo files that do not exist yet; returns the agent config path.
    pub fn prepare(&self) -> anyhow::Result<PathBuf> {
        let d = &self.dir;
        let tree = d.join("tree");
        let keys = d.join("keys");
        let changes = d.join("changes");
        for dir in [&tree, &keys, &changes, &d.join("state")] {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        }
        if std::fs::read_dir(&tree)?.next().is_none() {
            for (rel, content) in DEMO {
                let p = tree.join(rel);
                std::fs::create_dir_all(p.parent().expect("demo paths have parents"))?;
                std::fs::write(&p, content).with_context(|| p.display().to_string())?;
            }
        }
        for name in ["release", "cab"] {
            if !keys.join(format!("{name}.key")).exists() {
                sign::keygen(&keys.join(name), true)?;
            }
        }
        let manifest = d.join("manifest.json");
        if !manifest.exists() {
            let snap = snapshot::scan(&tree, &ScanOptions::default())?;
            let m =
                Manifest::from_snapshot(&snap, "shop", "demo-1", "quickstart@driftwatch", true)?;
            super::util::write_atomic(&manifest, m.to_canonical_json().as_bytes())?;
            sign::sign_file(&manifest, &keys.join("release.key"))?;
        }
        let ticket = changes.join("CHG-1001.toml");
        if !ticket.exists() {
            let now = Timestamp::now();
            let text = format!(
                "id = \"CHG-1001\"\nsummary = \"Demo: tax rate update in app/config\"\nrequested_by = \"alice\"\napproved_by = \"bob\"\n\
                 approved_at = \"{}\"\nhosts = [\"*\"]\ntrees = [\"shop\"]\npaths = [\"app/config/**\"]\nstart = \"{}\"\nend = \"{}\"\n",
                timefmt::format_timestamp(now),
                timefmt::format_timestamp(now - 1.hour()),
                timefmt::format_timestamp(now.checked_add(30 * 24.hours())?),
            );
            super::util::write_atomic(&ticket, text.as_bytes())?;
            sign::sign_file(&ticket, &keys.join("cab.key"))?;
        }
        let cfg = d.join("agent.toml");
        let abs = |p: &Path| {
            p.canonicalize()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| p.display().to_string())
        };
        let listen = pick_port(self.listen);
        // Rewritten on every run: only the listen address may change; the rest is the same.
        let text = format!(
            "# Written by `driftwatch quickstart`. See config/agent.example.toml for every option.\n\
             environment = \"demo\"\nstate_dir = \"{state}\"\n\n[[tree]]\nname = \"shop\"\nroot = \"{tree}\"\nmanifest = \"{manifest}\"\nexclude = [\"var/cache/**\"]\n\n\
             [scan]\ninterval = \"10m\"\nfull_rehash = \"24h\"\nrealtime = true\ndebounce = \"100ms\"\n\n[changes]\ndir = \"{changes}\"\n\n\
             [trust]\nrelease_keys = [\"{rel}\"]\napprover_keys = [\"{cab}\"]\nrequire_signatures = true\n\n\
             [collector]\nembedded = true\nlisten = \"{listen}\"\nheartbeat = \"30s\"\n",
            state = abs(&d.join("state")),
            tree = abs(&tree),
            manifest = abs(&manifest),
            changes = abs(&changes),
            rel = abs(&keys.join("release.pub")),
            cab = abs(&keys.join("cab.pub")),
        );
        super::util::write_atomic(&cfg, text.as_bytes())?;
        Ok(cfg)
    }

    /// The reader token for the dashboard, created once and kept in `reader.token`.
    fn reader_token(&self, cfg: &AgentConfig) -> anyhow::Result<String> {
        let path = self.dir.join("reader.token");
        let store =
            SqliteStore::open(&cfg.state_dir.join("collector.db"), jiff::tz::TimeZone::UTC)?;
        if let Ok(t) = crate::client::read_token(&path)
            && store.find_token(&t)?.is_some()
        {
            return Ok(t);
        }
        let (_, secret) =
            store.create_token(Role::Reader, None, "quickstart dashboard", Timestamp::now())?;
        super::util::write_atomic(&path, format!("{secret}\n").as_bytes())?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(secret)
    }
}

/// The wanted port if free, else a free one (a demo must start even if 8470 is taken).
fn pick_port(want: SocketAddr) -> SocketAddr {
    if want.port() != 0 && TcpListener::bind(want).is_ok() {
        return want;
    }
    TcpListener::bind(SocketAddr::new(want.ip(), 0))
        .and_then(|l| l.local_addr())
        .unwrap_or(want)
}
