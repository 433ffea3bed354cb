//! `driftwatch manifest`, `sign`, `verify`: release manifests built from a tree, signed,
//! verified, and pushed to a collector.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};

use crate::client::{self, Client};
use crate::collector::service::SignedDoc;
use crate::collector::service::changes::ManifestStored;
use crate::judge::check;
use crate::judge::manifest::Manifest;
use crate::scan::snapshot::{self, ScanOptions};
use crate::scan::walk::WalkOptions;
use crate::sign;
use crate::util::exit;
use crate::util::glob;

/// `manifest` subcommands.
#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Hash a tree and write its manifest (stdout unless -o).
    Build(BuildArgs),
    /// Sign a manifest (same as `driftwatch sign`).
    Sign(SignArgs),
    /// Verify a manifest's signature and its content (same as `driftwatch verify`, plus parsing).
    Verify(VerifyArgs),
    /// Upload a signed manifest to the collector, which hands it to the agents of its tree.
    Push(PushArgs),
}

/// Arguments of `manifest push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The manifest; its FILE.minisig is sent along.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Collector base URL.
    #[arg(long, value_name = "URL")]
    pub collector: String,
    /// File holding an admin token.
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
}

/// Arguments of `manifest build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The tree to hash (the build output or the deployed directory).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Release id recorded in the manifest.
    #[arg(long, value_name = "ID")]
    pub release: String,
    /// Tree name (default: the root directory's name).
    #[arg(long, value_name = "NAME")]
    pub tree: Option<String>,
    /// Leave paths out (glob relative to the root; `*` does not cross `/`). Repeatable. Recorded
    /// in the manifest (`exclude`), so every check and agent applies it too.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Sign with this secret key, writing FILE.minisig (needs -o).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Write the manifest here instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Who built it (default: USER@HOST).
    #[arg(long, value_name = "WHO")]
    pub created_by: Option<String>,
    /// Do not record owners (uid/gid): for pipelines that build as another user than the servers run.
    #[arg(long)]
    pub no_owner: bool,
    /// Hashing threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Arguments of `sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The file to sign.
    pub file: PathBuf,
    /// Secret key (minisign format; encrypted keys read DRIFTWATCH_KEY_PASSWORD).
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The file to verify (its signature is FILE.minisig).
    pub file: PathBuf,
    /// Trusted public key; repeat for several.
    #[arg(long, value_name = "PUB", required = true)]
    pub pubkey: Vec<PathBuf>,
}

/// `driftwatch manifest ...` (and `sign`, `verify`, which are the same as their manifest forms).
pub fn run_manifest(cmd: ManifestCommand) -> anyhow::Result<u8> {
    match cmd {
        ManifestCommand::Build(args) => manifest_build(args),
        ManifestCommand::Sign(args) => run_sign(&args),
        ManifestCommand::Push(args) => manifest_push(&args),
        ManifestCommand::Verify(args) => {
            let mut warnings = Vec::new();
            let (m, _) = check::load_manifest(&args.file, &args.pubkey, &mut warnings)?;
            println!(
                "{}: signature OK; tree {} release {} ({} entries)",
                args.file.display(),
                m.tree,
                m.release,
                m.entries.len()
            );
            Ok(exit::CLEAN)
        }
    }
}

/// `driftwatch sign`.
pub fn run_sign(args: &SignArgs) -> anyhow::Result<u8> {
    let sig = sign::sign_file(&args.file, &args.key)?;
    eprintln!("wrote {}", sig.display());
    Ok(exit::CLEAN)
}

/// `driftwatch verify`.
pub fn run_verify(args: &VerifyArgs) -> anyhow::Result<u8> {
    let data = std::fs::read(&args.file).with_context(|| args.file.display().to_string())?;
    let keys = sign::load_public_keys(&args.pubkey)?;
    let by = sign::verify_bytes(&data, &args.file, &keys)?;
    println!(
        "{}: signature OK (key {})",
        args.file.display(),
        by.path.display()
    );
    Ok(exit::CLEAN)
}

/// `driftwatch manifest push`: the manifest and its signature to `PUT /api/v1/manifests/{tree}`.
fn manifest_push(args: &PushArgs) -> anyhow::Result<u8> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("{}", args.file.display()))?;
    // Parsed here too, for the tree name and so a broken file never leaves the machine.
    let m = crate::judge::manifest::Manifest::parse(&bytes, &args.file)?;
    let text =
        String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", args.file.display()))?;
    let sig_path = sign::sig_path(&args.file);
    let minisig = match std::fs::read_to_string(&sig_path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!("{}: {e}", sig_path.display())),
    };
    let c = Client::new(&args.collector, client::read_token(&args.token_file)?)?;
    let route = format!("/api/v1/manifests/{}", client::encode(&m.tree));
    let doc = SignedDoc {
        manifest: Some(text),
        toml: None,
        minisig,
    };
    let _: ManifestStored = super::util::runtime()?.block_on(c.put_json(&route, &doc))?;
    eprintln!(
        "stored release {} of tree {} on the collector ({})",
        m.release,
        m.tree,
        if doc.minisig.is_some() {
            "signed"
        } else {
            "unsigned"
        }
    );
    Ok(exit::CLEAN)
}

fn manifest_build(args: BuildArgs) -> anyhow::Result<u8> {
    if args.sign.is_some() && args.output.is_none() {
        bail!("--sign needs -o FILE (the signature is written to FILE.minisig)");
    }
    let tree = match args.tree {
        Some(t) => t,
        None => default_tree_name(&args.root)?,
    };
    if args.release.trim().is_empty() {
        bail!("--release must not be empty");
    }
    let exclude = glob::path_set(&args.exclude).map_err(|m| anyhow::anyhow!("--exclude: {m}"))?;
    let skip = args
        .output
        .iter()
        .flat_map(|o| [o.clone(), sign::sig_path(o)])
        .filter_map(|p| in_root(&args.root, &p))
        .collect();
    let opts = ScanOptions {
        walk: WalkOptions {
            exclude,
            skip,
            cross_filesystems: false,
        },
        threads: args.threads,
        progress: super::util::progress_bar("hashing"),
        ..ScanOptions::default()
    };
    let snap = snapshot::scan(&args.root, &opts)?;
    if let Some(p) = &opts.progress {
        p.finish_and_clear();
    }
    let created_by = args.created_by.unwrap_or_else(|| {
        format!(
            "{}@{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            crate::util::host::hostname()
        )
    });
    // The exclusions travel with the release: every check and agent applies them (§12.1).
    let manifest =
        Manifest::from_snapshot(&snap, &tree, &args.release, &created_by, !args.no_owner)?
            .with_exclude(&args.exclude);
    let json = manifest.to_canonical_json();
    match &args.output {
        Some(path) => {
            super::util::write_atomic(path, json.as_bytes())?;
            if let Some(key) = &args.sign {
                sign::sign_file(path, key)?;
            }
            eprintln!(
                "{}: {} paths ({} files, {} bytes) in {:.2} s{}",
                path.display(),
                manifest.entries.len(),
                snap.stats.files,
                snap.stats.bytes,
                snap.stats.seconds,
                if args.sign.is_some() { ", signed" } else { "" }
            );
        }
        None => std::io::stdout()
            .lock()
            .write_all(json.as_bytes())
            .context("stdout")?,
    }
    Ok(exit::CLEAN)
}

/// When `path` lies inside `root`, the path as the walker will see it (root-joined).
fn in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    let root_abs = root.canonicalize().ok()?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent_abs = parent.canonicalize().ok()?;
    let rel = parent_abs.strip_prefix(&root_abs).ok()?;
    Some(root.join(rel).join(path.file_name()?))
}

fn default_tree_name(root: &Path) -> anyhow::Result<String> {
    let abs = root
        .canonicalize()
        .with_context(|| root.display().to_string())?;
    abs.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            anyhow::anyhow!("{}: cannot derive a tree name, pass --tree", root.display())
        })
}
