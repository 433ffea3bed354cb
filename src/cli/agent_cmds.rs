//! Agent-side commands: `agent`, `scan`, `config check`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use serde_json::json;

use crate::agent::config::{self as agent_config, AgentConfig};
use crate::agent::engine::Engine;
use crate::agent::{self, Sink};
use crate::collector::config::{self as collector_config, CollectorConfig};
use crate::judge::changelog;
use crate::judge::manifest::Manifest;
use crate::sign;
use crate::util::exit;

fn load_agent_config(path: Option<PathBuf>) -> anyhow::Result<AgentConfig> {
    let path = path.unwrap_or_else(|| PathBuf::from(agent_config::DEFAULT_PATH));
    AgentConfig::load(&path).map_err(|p| anyhow!("{}", p.join("; ")))
}

/// `driftwatch agent`.
pub fn run_agent(config: Option<PathBuf>, log_json: bool) -> anyhow::Result<u8> {
    super::util::init_logging(log_json);
    let cfg = load_agent_config(config)?;
    let _lock = agent::lock_state_dir(&cfg.state_dir)?;
    agent::run(cfg)?;
    Ok(exit::CLEAN)
}

/// `driftwatch scan`: one pass over every tree, like a scheduled scan; exit 1 while anything is
/// unauthorized or unverifiable.
pub fn run_scan(config: Option<PathBuf>, format: super::util::Format) -> anyhow::Result<u8> {
    super::util::init_logging(false);
    let cfg = load_agent_config(config)?;
    let _lock = agent::lock_state_dir(&cfg.state_dir)?;
    let sink = agent::open_sink(&cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(agent::fetch_at_start(&sink, &cfg));
    let mut engine = Engine::new(cfg.clone())?;
    let mut trees = Vec::new();
    let mut violations = 0usize;
    let mut summaries = Vec::new();
    for i in 0..engine.trees.len() {
        let result = engine
            .full_scan(i, false)
            .map_err(|e| anyhow!("{}: {e}", engine.trees[i].cfg.root.display()))?;
        let t = &engine.trees[i];
        let open: Vec<String> = t
            .state
            .open
            .keys()
            .map(|p| p.lossy().into_owned())
            .collect();
        violations += open.len();
        let summary = result.summary.clone().expect("full scans have a summary");
        summaries.push(summary.clone());
        trees.push(json!({
            "tree": t.cfg.name, "root": t.cfg.root.display().to_string(), "host": cfg.host,
            "release": t.state.release, "manifest_signed": t.state.in_force().is_some() && (cfg.require_signatures || !cfg.release_keys.is_empty()),
            "scanned": {"files": result.scanned.0, "dirs": result.scanned.1, "bytes": result.scanned.2, "seconds": summary.seconds},
            "vetted_ratio": if summary.paths == 0 { 1.0 } else { summary.vetted as f64 / summary.paths as f64 },
            "events": result.events, "dropped": result.dropped, "open_unauthorized": open,
        }));
    }
    let delivered = match &sink {
        Sink::None => "no collector configured: events stay in the spool".to_string(),
        _ => match rt.block_on(agent::flush(&engine.spool, &sink, &cfg, summaries)) {
            Ok(n) => format!("{n} events delivered"),
            Err(e) => format!("collector unreachable ({e}); events stay in the spool"),
        },
    };
    let mut out = String::new();
    match format {
        super::util::Format::Json => out = serde_json::to_string_pretty(&trees)? + "\n",
        super::util::Format::Text => {
            for t in &trees {
                for ev in t["events"].as_array().into_iter().flatten() {
                    let detail = ev["detail"]
                        .as_str()
                        .map_or(String::new(), |d| format!("  {}", d.escape_debug()));
                    out.push_str(&format!(
                        "  {:<24} {:<12} {}{detail}\n",
                        ev["status"].as_str().unwrap_or(""),
                        ev["change"].as_str().unwrap_or(""),
                        ev["path"].as_str().unwrap_or("").escape_debug()
                    ));
                }
                let open = t["open_unauthorized"].as_array().map_or(0, |a| a.len());
                out.push_str(&format!(
                    "{} {}: release {}; {} new events; {} open unauthorized; vetted {:.2}%; {} files in {:.2} s\n",
                    if open > 0 { "DRIFT" } else { "OK" },
                    t["tree"].as_str().unwrap_or(""),
                    t["release"].as_str().unwrap_or("(none)"),
                    t["events"].as_array().map_or(0, |a| a.len()),
                    open,
                    t["vetted_ratio"].as_f64().unwrap_or(1.0) * 100.0,
                    t["scanned"]["files"],
                    t["scanned"]["seconds"].as_f64().unwrap_or(0.0),
                ));
            }
            out.push_str(&format!("{delivered}\n"));
        }
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(if violations > 0 {
        exit::DRIFT
    } else {
        exit::CLEAN
    })
}

/// `driftwatch config check`: every problem of an agent or collector config, the keys, manifests
/// and change entries it points to, listed at once; exit 0 valid, 2 otherwise.
pub fn run_config_check(config: Option<PathBuf>) -> anyhow::Result<u8> {
    let path = config.unwrap_or_else(|| {
        let agent = PathBuf::from(agent_config::DEFAULT_PATH);
        if agent.exists() {
            agent
        } else {
            PathBuf::from(collector_config::DEFAULT_PATH)
        }
    });
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let is_agent = text
        .parse::<toml::Table>()
        .map(|t| t.contains_key("tree") || t.contains_key("state_dir"))
        .unwrap_or(true);
    let problems = if is_agent {
        check_agent(&text, &path)
    } else {
        match CollectorConfig::parse(&text, &path) {
            Ok(cfg) => {
                // Valid, but worth knowing (a collector without [trust] refuses uploads).
                for w in cfg.warnings() {
                    eprintln!("driftwatch: warning: {w}");
                }
                crate::collector::alerts::sinks::check_reachable(&cfg.alerts)
                    .into_iter()
                    .map(|m| format!("{}: {m}", path.display()))
                    .collect()
            }
            Err(problems) => problems,
        }
    };
    if problems.is_empty() {
        println!(
            "{}: OK ({} config)",
            path.display(),
            if is_agent { "agent" } else { "collector" }
        );
        return Ok(exit::CLEAN);
    }
    for p in &problems {
        eprintln!("driftwatch: error: {p}");
    }
    eprintln!(
        "driftwatch: {} problem(s) in {}",
        problems.len(),
        path.display()
    );
    Ok(exit::ERROR)
}

fn check_agent(text: &str, path: &Path) -> Vec<String> {
    let cfg = match AgentConfig::parse(text, path) {
        Ok(c) => c,
        Err(p) => return p,
    };
    let mut problems: Vec<String> = crate::collector::alerts::sinks::check_reachable(&cfg.alerts)
        .into_iter()
        .map(|m| format!("{}: {m}", path.display()))
        .collect();
    for t in &cfg.trees {
        let Some(m) = &t.manifest else { continue };
        let bytes = match std::fs::read(m) {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("{}: {e}", m.display()));
                continue;
            }
        };
        if (cfg.require_signatures || !cfg.release_keys.is_empty())
            && let Err(e) = sign::verify_bytes(&bytes, m, &cfg.release_keys)
        {
            problems.push(e.to_string());
        }
        match Manifest::parse(&bytes, m) {
            Ok(parsed) if parsed.tree != t.name => problems.push(format!(
                "{}: tree: {:?} is not {:?}",
                m.display(),
                parsed.tree,
                t.name
            )),
            Ok(_) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    if let Some(dir) = &cfg.changes_dir {
        match changelog::load_dir(dir, &cfg.change_policy()) {
            Ok(log) => problems.extend(log.refused),
            Err(e) => problems.push(e.to_string()),
        }
    }
    problems
}
