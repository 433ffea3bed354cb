//! The README's commands work as written.
//!
//! Every command line is taken from the README's shell code blocks (```sh, ```bash, ```shell,
//! and ```console, where only prompt lines `$ …` / `# …` are commands): continuation lines
//! ending in `\` are joined, comments dropped, quotes and `$VARIABLES` handled like a shell would.
//! For each `driftwatch …` command (also `cargo run -- …`):
//!
//! - its subcommand must exist and every flag it uses must be listed by
//!   `driftwatch <subcommand> --help`;
//! - the commands that are safe in a temp dir (explicit list [`RUN`]) are run there with the built
//!   binary, in README order, after preparing what they need (a `build/` tree, keys, manifests,
//!   configs; absolute paths like `/etc/driftwatch/…` are moved under the temp dir), and must
//!   not exit 2 (error) or panic;
//! - the others are skipped for a stated reason (explicit list [`SKIP`]: long-running daemons,
//!   commands that need a collector or its store, anything with `--collector`). A subcommand in
//!   neither list fails the test, so that someone decides.
//!
//! Inline code spans naming `driftwatch …` (the command table) get the same flag check.

mod e2e_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_common::{Done, run_in};

/// Subcommands run in the temp dir (by the leading words of their path).
const RUN: &[&str] = &[
    "keygen",
    "manifest build",
    "manifest sign",
    "manifest verify",
    "sign",
    "verify",
    "check",
    "changes add",
    "changes new",
    "changes list",
    "changes approve",
    "config check",
    "completions",
];

/// Subcommands never run here, and why.
const SKIP: &[(&str, &str)] = &[
    ("agent", "long-running daemon"),
    ("collector", "long-running server"),
    (
        "quickstart",
        "long-running demo (tests/quickstart.rs runs it)",
    ),
    ("scan", "needs an installed agent's state"),
    ("token", "needs a collector store"),
    ("events", "reads a collector or its store"),
    ("kpi", "reads a collector or its store"),
    (
        "report",
        "reads a collector or its store (tests/report.rs runs it)",
    ),
    ("audit", "reads a collector store"),
    (
        "manifest push",
        "needs a running collector (tests/agent.rs runs it)",
    ),
];

/// One command run may take this long.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn readme() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------------
// Extraction

/// One logical command line with the README line it starts on.
#[derive(Debug, Clone)]
struct Line {
    line: usize,
    text: String,
}

/// Shell code blocks found, and their command lines.
fn command_lines(readme: &str) -> (usize, Vec<Line>) {
    let mut blocks = 0;
    let mut out = Vec::new();
    let mut lang: Option<String> = None;
    let mut pending: Option<Line> = None;
    for (n, raw) in readme.lines().enumerate() {
        let n = n + 1;
        let trimmed = raw.trim_start();
        if let Some(rest) = trimmed.strip_prefix("```") {
            match lang {
                None => {
                    let l = rest
                        .trim()
                        .trim_start_matches('{')
                        .split(|c: char| c.is_whitespace() || c == ',' || c == '}')
                        .next()
                        .unwrap_or("")
                        .to_ascii_lowercase();
                    if ["sh", "bash", "shell", "console", "shell-session"].contains(&l.as_str()) {
                        blocks += 1;
                    }
                    lang = Some(l);
                }
                Some(_) => {
                    if let Some(p) = pending.take() {
                        out.push(p);
                    }
                    lang = None;
                }
            }
            continue;
        }
        let Some(l) = lang.as_deref() else { continue };
        let console = match l {
            "sh" | "bash" | "shell" => false,
            "console" | "shell-session" => true,
            _ => continue,
        };
        let mut text = raw.to_string();
        if let Some(mut p) = pending.take() {
            if console {
                text = text.trim_start().trim_start_matches("> ").to_string();
            }
            p.text.push(' ');
            p.text.push_str(text.trim());
            if let Some(t) = p.text.strip_suffix('\\') {
                p.text = t.to_string();
                pending = Some(p);
            } else {
                out.push(p);
            }
            continue;
        }
        if console {
            let t = raw.trim_start();
            let Some(cmd) = ["$ ", "# "].iter().find_map(|pr| t.strip_prefix(pr)) else {
                continue; // output, not a command
            };
            text = cmd.to_string();
        }
        let line = Line {
            line: n,
            text: text.trim().to_string(),
        };
        if let Some(t) = line.text.strip_suffix('\\') {
            pending = Some(Line {
                line: n,
                text: t.to_string(),
            });
        } else if !line.text.is_empty() {
            out.push(line);
        }
    }
    if let Some(p) = pending {
        out.push(p);
    }
    (blocks, out)
}

/// One simple command of a command line.
#[derive(Debug, Clone)]
struct Cmd {
    words: Vec<String>,
    /// `> FILE`.
    stdout_to: Option<String>,
    /// False when piped, fed from a file, or using command substitution: checked, never run.
    plain: bool,
    src: String,
    line: usize,
}

/// Values for the variables the README may use.
fn var(name: &str) -> String {
    match name {
        "VERSION" | "RELEASE" | "RELEASE_ID" => "2026.11.3".into(),
        "HOST" | "HOSTNAME" => "web-01".into(),
        "ID" | "TICKET" => "CHG-1042".into(),
        "USER" => "alice".into(),
        _ => format!("test-{}", name.to_ascii_lowercase()),
    }
}

struct Lexer {
    cmds: Vec<Cmd>,
    cur: Cmd,
    word: String,
    in_word: bool,
    redirect: Option<u32>,
}

impl Lexer {
    fn new(l: &Line) -> Lexer {
        Lexer {
            cmds: Vec::new(),
            cur: Cmd {
                words: Vec::new(),
                stdout_to: None,
                plain: true,
                src: l.text.clone(),
                line: l.line,
            },
            word: String::new(),
            in_word: false,
            redirect: None,
        }
    }

    fn end_word(&mut self) {
        if !self.in_word {
            return;
        }
        let w = std::mem::take(&mut self.word);
        self.in_word = false;
        match self.redirect.take() {
            Some(1) => self.cur.stdout_to = Some(w),
            Some(_) => {}
            None => self.cur.words.push(w),
        }
    }

    fn end_cmd(&mut self, piped: bool) {
        self.end_word();
        let next = Cmd {
            words: Vec::new(),
            stdout_to: None,
            plain: !piped,
            src: self.cur.src.clone(),
            line: self.cur.line,
        };
        let mut done = std::mem::replace(&mut self.cur, next);
        if piped {
            done.plain = false;
        }
        if !done.words.is_empty() {
            self.cmds.push(done);
        }
    }

    /// `$NAME`, `${NAME}`, `$(…)` at `chars[*i] == '$'`.
    fn dollar(&mut self, chars: &[char], i: &mut usize) {
        self.in_word = true;
        match chars.get(*i + 1) {
            Some('(') => {
                let mut depth = 0;
                while *i < chars.len() {
                    match chars[*i] {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    *i += 1;
                }
                self.cur.plain = false;
                self.word.push_str("SUBST");
            }
            Some('{') => {
                let mut name = String::new();
                *i += 2;
                while *i < chars.len() && chars[*i] != '}' {
                    name.push(chars[*i]);
                    *i += 1;
                }
                let name = name.split(':').next().unwrap_or("").to_string();
                self.word.push_str(&var(&name));
            }
            _ => {
                let mut name = String::new();
                while let Some(c) = chars.get(*i + 1) {
                    if c.is_ascii_alphanumeric() || *c == '_' {
                        name.push(*c);
                        *i += 1;
                    } else {
                        break;
                    }
                }
                if name.is_empty() {
                    self.word.push('$');
                } else {
                    self.word.push_str(&var(&name));
                }
            }
        }
    }
}

/// Splits a command line into simple commands, like a shell would (enough for a README).
fn tokenize(l: &Line) -> Vec<Cmd> {
    let chars: Vec<char> = l.text.chars().collect();
    let mut lx = Lexer::new(l);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => lx.end_word(),
            '#' if !lx.in_word => break,
            '\'' => {
                lx.in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    lx.word.push(chars[i]);
                    i += 1;
                }
            }
            '"' => {
                lx.in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    match chars[i] {
                        '\\' if matches!(chars.get(i + 1), Some('"' | '\\' | '$' | '`')) => {
                            lx.word.push(chars[i + 1]);
                            i += 1;
                        }
                        '$' => lx.dollar(&chars, &mut i),
                        '`' => {
                            lx.cur.plain = false;
                            lx.word.push_str("SUBST");
                            i += 1;
                            while i < chars.len() && chars[i] != '`' {
                                i += 1;
                            }
                        }
                        ch => lx.word.push(ch),
                    }
                    i += 1;
                }
            }
            '\\' => {
                lx.in_word = true;
                if let Some(n) = chars.get(i + 1) {
                    lx.word.push(*n);
                    i += 1;
                }
            }
            '$' => lx.dollar(&chars, &mut i),
            '`' => {
                lx.in_word = true;
                lx.cur.plain = false;
                lx.word.push_str("SUBST");
                i += 1;
                while i < chars.len() && chars[i] != '`' {
                    i += 1;
                }
            }
            '|' => {
                if chars.get(i + 1) == Some(&'|') {
                    i += 1;
                    lx.end_cmd(false);
                } else {
                    lx.end_cmd(true);
                }
            }
            '&' => {
                if chars.get(i + 1) == Some(&'&') {
                    i += 1;
                }
                lx.end_cmd(false);
            }
            ';' => lx.end_cmd(false),
            '>' => {
                let fd = if lx.in_word && lx.word.chars().all(|c| c.is_ascii_digit()) {
                    let fd = lx.word.parse().unwrap_or(1);
                    lx.word.clear();
                    lx.in_word = false;
                    fd
                } else {
                    lx.end_word();
                    1
                };
                if chars.get(i + 1) == Some(&'>') {
                    i += 1;
                }
                if chars.get(i + 1) == Some(&'&') {
                    // 2>&1: a duplication, not a file.
                    i += 1;
                    while chars
                        .get(i + 1)
                        .is_some_and(|c| c.is_ascii_digit() || *c == '-')
                    {
                        i += 1;
                    }
                } else {
                    lx.redirect = Some(fd);
                }
            }
            '<' => {
                lx.end_word();
                lx.cur.plain = false;
                lx.redirect = Some(0);
            }
            ch => {
                lx.in_word = true;
                lx.word.push(ch);
            }
        }
        i += 1;
    }
    lx.end_cmd(false);
    lx.cmds
}

/// The arguments after the program when a command runs driftwatch (`driftwatch`,
/// `/usr/bin/driftwatch`, `sudo driftwatch`, `cargo run [..] -- ...`); `None` for other programs.
fn driftwatch_args(words: &[String]) -> Option<Vec<String>> {
    let mut i = 0;
    // Leading variable assignments.
    while i < words.len()
        && words[i].split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    {
        i += 1;
    }
    if words.get(i).map(String::as_str) == Some("sudo") {
        i += 1;
        while let Some(w) = words.get(i).filter(|w| w.starts_with('-')) {
            i += if matches!(w.as_str(), "-u" | "-g") {
                2
            } else {
                1
            };
        }
    }
    let prog = words.get(i)?;
    if Path::new(prog)
        .file_name()
        .is_some_and(|n| n == "driftwatch")
    {
        return Some(words[i + 1..].to_vec());
    }
    if prog == "cargo" && words.get(i + 1).map(String::as_str) == Some("run") {
        let rest = &words[i + 2..];
        return Some(match rest.iter().position(|w| w == "--") {
            Some(p) => rest[p + 1..].to_vec(),
            None => Vec::new(),
        });
    }
    None
}

// ---------------------------------------------------------------------------------------------
// `--help`

/// What `driftwatch PATH --help` lists.
#[derive(Debug, Clone, Default)]
struct Help {
    subcommands: Vec<String>,
    /// Flag (`--out`, `-o`) → takes a value.
    flags: HashMap<String, bool>,
}

fn parse_help(text: &str) -> Help {
    let mut h = Help::default();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && line.trim_end().ends_with(':') {
            section = if line.starts_with("Commands") {
                "commands"
            } else if line.starts_with("Options") || line.contains("Options") {
                "options"
            } else {
                "other"
            };
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        match section {
            "commands" if indent == 2 => {
                if let Some(name) = t.split_whitespace().next() {
                    h.subcommands.push(name.to_string());
                }
            }
            _ if t.starts_with('-') && indent <= 6 => {
                let spec = t.split("  ").next().unwrap_or(t);
                let takes = spec.contains('<');
                for part in spec.split(", ") {
                    let name = part.split([' ', '=', '<', '[']).next().unwrap_or("");
                    if name.starts_with('-') {
                        h.flags.insert(name.to_string(), takes);
                    }
                }
            }
            _ => {}
        }
    }
    h
}

struct Helps {
    dir: PathBuf,
    cache: HashMap<Vec<String>, Help>,
}

impl Helps {
    fn get(&mut self, path: &[String]) -> &Help {
        if !self.cache.contains_key(path) {
            let mut args = path.to_vec();
            args.push("--help".into());
            let d = run_in(&self.dir, &args, None, RUN_TIMEOUT);
            assert_eq!(
                d.code, 0,
                "`{}` must exit 0:\n{}\n{}",
                d.cmd, d.stdout, d.stderr
            );
            self.cache.insert(path.to_vec(), parse_help(&d.stdout));
        }
        &self.cache[path]
    }

    /// The subcommand path at the start of `args` and the index of the first argument after it.
    fn resolve(&mut self, args: &[String]) -> (Vec<String>, usize) {
        let mut path = Vec::new();
        let mut i = 0;
        while let Some(w) = args.get(i) {
            if self.get(&path).subcommands.iter().any(|s| s == w) {
                path.push(w.clone());
                i += 1;
            } else {
                break;
            }
        }
        (path, i)
    }

    /// Problems with the flags of `args[from..]` against the help of `path`; also returns the
    /// positional arguments.
    fn check_flags(
        &mut self,
        path: &[String],
        args: &[String],
        from: usize,
    ) -> (Vec<String>, Vec<String>) {
        let help = self.get(path).clone();
        let sub = if path.is_empty() {
            "driftwatch".to_string()
        } else {
            format!("driftwatch {}", path.join(" "))
        };
        let mut problems = Vec::new();
        let mut positional = Vec::new();
        let mut j = from;
        while j < args.len() {
            let a = &args[j];
            if a == "--" {
                break;
            }
            let name = if a.starts_with("--") {
                Some(a.split('=').next().unwrap_or(a).to_string())
            } else if a.len() >= 2 && a.starts_with('-') && a.as_bytes()[1].is_ascii_alphabetic() {
                Some(a[..2].to_string())
            } else {
                None
            };
            match name {
                Some(n) => match help.flags.get(&n) {
                    None => problems.push(format!("`{sub} --help` does not list {n}")),
                    Some(true) if !a.contains('=') && (a.starts_with("--") || a.len() == 2) => {
                        j += 1;
                    }
                    Some(_) => {}
                },
                None => positional.push(a.clone()),
            }
            j += 1;
        }
        (problems, positional)
    }
}

// ---------------------------------------------------------------------------------------------
// Preparing what a command needs, in the temp dir

struct Site {
    dir: PathBuf,
    log: Vec<String>,
}

const DEMO: &[(&str, &str)] = &[
    ("index.php", "<?php require 'app/boot.php';\n"),
    ("app/boot.php", "<?php // boot\n"),
    ("app/config/settings.php", "<?php return ['tax' => 0.2];\n"),
    (
        "app/checkout/pay.js",
        "export const pay = t => Math.round(t * 100) / 100;\n",
    ),
    ("wp-content/uploads/.keep", ""),
];

fn ts(offset_secs: i64) -> String {
    jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(offset_secs))
        .expect("in range")
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn entry_toml(id: &str) -> String {
    format!(
        "id = \"{id}\"\nsummary = \"README test ticket\"\nrequested_by = \"alice\"\napproved_by = \"bob\"\n\
         approved_at = \"{}\"\nhosts = [\"web-*\"]\ntrees = [\"shop\"]\npaths = [\"app/**\"]\nstart = \"{}\"\nend = \"{}\"\n",
        ts(-3600),
        ts(-3600),
        ts(3600)
    )
}

fn strip_ext(p: &str, ext: &str) -> String {
    p.strip_suffix(ext).unwrap_or(p).to_string()
}

impl Site {
    /// A README path as a path in the temp dir: absolute and `~/` paths move under it.
    fn localize(&self, a: &str) -> String {
        if let Some((flag, v)) = a.split_once('=').filter(|(f, _)| f.starts_with("--")) {
            return format!("{flag}={}", self.localize(v));
        }
        if let Some(rest) = a.strip_prefix("~/") {
            return self.dir.join(rest).display().to_string();
        }
        if a.starts_with('/') && !a.starts_with("//") {
            return self
                .dir
                .join(a.trim_start_matches('/'))
                .display()
                .to_string();
        }
        a.to_string()
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    #[track_caller]
    fn must(&mut self, args: &[&str]) -> Done {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let d = run_in(&self.dir, &args, None, RUN_TIMEOUT);
        assert_eq!(
            d.code, 0,
            "preparing with `{}` failed:\n{}\n{}",
            d.cmd, d.stdout, d.stderr
        );
        self.log.push(format!("  prepared: {}", d.cmd));
        d
    }

    fn demo_tree(&mut self, root: &str) {
        let r = self.path(root);
        for (rel, text) in DEMO {
            let p = r.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, text).expect("write demo file");
        }
        self.log
            .push(format!("  prepared: demo tree {}", r.display()));
    }

    fn keygen(&mut self, prefix: &str) {
        let p = self.path(prefix);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        self.must(&["keygen", "--out", p.to_str().expect("utf-8")]);
    }

    fn manifest(&mut self, out: &str, root: &str, key: Option<&str>) {
        let o = self.path(out);
        if let Some(parent) = o.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        if !self.path(root).exists() {
            self.demo_tree(root);
        }
        let r = self.path(root);
        let mut args = vec![
            "manifest".to_string(),
            "build".into(),
            "--root".into(),
            r.display().to_string(),
            "--release".into(),
            "2026.11.3".into(),
            "--tree".into(),
            "shop".into(),
            "-o".into(),
            o.display().to_string(),
        ];
        if let Some(k) = key {
            args.push("--sign".into());
            args.push(self.path(k).display().to_string());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.must(&a);
    }

    fn sign(&mut self, file: &str, key: &str) {
        let (f, k) = (self.path(file), self.path(key));
        self.must(&[
            "sign",
            f.to_str().expect("utf-8"),
            "--key",
            k.to_str().expect("utf-8"),
        ]);
    }

    /// An agent or collector config of its own (own keys, tree, manifest) at `path`.
    fn config(&mut self, path: &str) {
        let p = self.path(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let fx = self.dir.join(".fixture");
        let f = |rel: &str| fx.join(rel).display().to_string();
        let text = if p.to_string_lossy().contains("collector") {
            format!(
                "listen = \"127.0.0.1:0\"\nstorage = \"sqlite://{}\"\n",
                f("collector.db")
            )
        } else {
            if !fx.join("keys/release.pub").exists() {
                self.keygen(&f("keys/release"));
                self.keygen(&f("keys/cab"));
            }
            if !fx.join("manifest.json").exists() {
                self.manifest(
                    &f("manifest.json"),
                    &f("tree"),
                    Some(&f("keys/release.key")),
                );
            }
            std::fs::create_dir_all(fx.join("changes")).expect("mkdir");
            format!(
                "host = \"web-01\"\nenvironment = \"production\"\nstate_dir = \"{}\"\n\n[[tree]]\nname = \"shop\"\nroot = \"{}\"\n\
                 manifest = \"{}\"\nexclude = [\"var/cache/**\"]\n\n[changes]\ndir = \"{}\"\n\n[trust]\nrelease_keys = [\"{}\"]\n\
                 approver_keys = [\"{}\"]\nrequire_signatures = true\n\n[collector]\nembedded = true\nlisten = \"127.0.0.1:0\"\n",
                f("state"),
                f("tree"),
                f("manifest.json"),
                f("changes"),
                f("keys/release.pub"),
                f("keys/cab.pub"),
            )
        };
        std::fs::write(&p, text).expect("write config");
        self.log.push(format!("  prepared: config {}", p.display()));
    }

    /// Creates what `driftwatch <path> args` reads and the README assumes exists.
    fn prepare(&mut self, path: &str, args: &[String], positional: &[String]) {
        let val = |name: &str| -> Vec<String> {
            let mut v = Vec::new();
            for (k, a) in args.iter().enumerate() {
                if a == name {
                    if let Some(x) = args.get(k + 1) {
                        v.push(x.clone());
                    }
                } else if let Some(x) = a.strip_prefix(&format!("{name}=")) {
                    v.push(x.to_string());
                }
            }
            v
        };
        let exists = |s: &Site, p: &str| s.path(p).exists();
        for root in val("--root") {
            if !exists(self, &root) {
                self.demo_tree(&root);
            }
        }
        for d in val("--dir").into_iter().chain(val("--changes")) {
            if !exists(self, &d) {
                std::fs::create_dir_all(self.path(&d)).expect("mkdir");
                self.log.push(format!("  prepared: dir {d}"));
            }
        }
        let secret_flags = if path == "manifest build" || path == "changes add" {
            vec!["--key", "--sign"]
        } else {
            vec!["--key"]
        };
        for flag in secret_flags {
            for k in val(flag) {
                if !exists(self, &k) {
                    self.keygen(&strip_ext(&k, ".key"));
                }
            }
        }
        for flag in ["--pubkey", "--approver-pubkey"] {
            for k in val(flag) {
                let prefix = strip_ext(&k, ".pub");
                if !exists(self, &k) && !exists(self, &format!("{prefix}.key")) {
                    self.keygen(&prefix);
                }
            }
        }
        let signer = val("--pubkey")
            .first()
            .map(|p| format!("{}.key", strip_ext(p, ".pub")))
            .filter(|k| exists(self, k));
        for m in val("--manifest") {
            if !exists(self, &m) {
                let root = val("--root")
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "build".into());
                self.manifest(&m, &root, signer.as_deref());
            }
        }
        for c in val("--config") {
            if !exists(self, &c) {
                self.config(&c);
            }
        }
        if path == "changes add" {
            for f in val("--file") {
                if !exists(self, &f) {
                    let id = Path::new(&f)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "CHG-1".into());
                    std::fs::write(self.path(&f), entry_toml(&id)).expect("write entry");
                    self.log.push(format!("  prepared: change entry {f}"));
                }
            }
        }
        if ["sign", "verify", "manifest sign", "manifest verify"].contains(&path)
            && let Some(file) = positional.first()
        {
            if !exists(self, file) {
                if file.ends_with(".json") {
                    let key = val("--key").first().cloned().or(signer.clone());
                    let key = key.filter(|_| path.ends_with("verify"));
                    self.manifest(file, "build", key.as_deref());
                } else if file.ends_with(".toml") {
                    let id = Path::new(file)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "CHG-1".into());
                    std::fs::write(self.path(file), entry_toml(&id)).expect("write entry");
                    self.log.push(format!("  prepared: change entry {file}"));
                } else {
                    std::fs::write(self.path(file), "README test file\n").expect("write file");
                }
            }
            if path.ends_with("verify")
                && !exists(self, &format!("{file}.minisig"))
                && let Some(k) = &signer
            {
                self.sign(file, k);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn readme_has_shell_blocks_with_driftwatch_commands() {
    let text = readme();
    let (blocks, lines) = command_lines(&text);
    assert!(
        blocks > 0,
        "README.md has no ```sh code block at all: its commands cannot be checked (or the \
         extractor no longer understands the README)"
    );
    let dw = lines
        .iter()
        .flat_map(tokenize)
        .filter(|c| driftwatch_args(&c.words).is_some())
        .count();
    assert!(
        dw > 0,
        "README.md's shell blocks name no `driftwatch` command:\n{lines:#?}"
    );
}

#[test]
fn readme_commands_parse_and_the_safe_ones_run() {
    let text = readme();
    let (blocks, lines) = command_lines(&text);
    assert!(blocks > 0, "README.md has no ```sh code block at all");
    let tmp = tempfile::Builder::new()
        .prefix("driftwatch-readme-")
        .tempdir()
        .expect("tempdir");
    let mut site = Site {
        dir: tmp.path().to_path_buf(),
        log: Vec::new(),
    };
    let mut helps = Helps {
        dir: site.dir.clone(),
        cache: HashMap::new(),
    };
    let mut problems: Vec<String> = Vec::new();
    let mut ran = 0;
    for cmd in lines.iter().flat_map(tokenize) {
        let at = format!("README.md:{}: `{}`", cmd.line, cmd.src);
        let Some(args) = driftwatch_args(&cmd.words) else {
            site.log.push(format!("other program, not run: {at}"));
            continue;
        };
        if args.is_empty() || args[0] == "--help" || args[0] == "--version" {
            continue;
        }
        let (path, from) = helps.resolve(&args);
        if path.is_empty() {
            problems.push(format!(
                "{at}: `{}` is not a driftwatch subcommand",
                args[0]
            ));
            continue;
        }
        let (flag_problems, positional) = helps.check_flags(&path, &args, from);
        let ok_flags = flag_problems.is_empty();
        problems.extend(flag_problems.into_iter().map(|p| format!("{at}: {p}")));
        let joined = path.join(" ");
        let prefix_of = |name: &str| joined == name || joined.starts_with(&format!("{name} "));
        let run = RUN.iter().any(|r| prefix_of(r));
        let skip = SKIP.iter().find(|(s, _)| prefix_of(s));
        if !run && skip.is_none() {
            problems.push(format!(
                "{at}: subcommand `{joined}` is in neither RUN nor SKIP of tests/readme.rs: decide whether the README test runs it"
            ));
            continue;
        }
        if let Some((_, why)) = skip {
            site.log.push(format!("skipped ({why}): {at}"));
            continue;
        }
        if args
            .iter()
            .any(|a| a == "--collector" || a.starts_with("--collector="))
        {
            site.log
                .push(format!("skipped (needs a running collector): {at}"));
            continue;
        }
        if joined.starts_with("changes ")
            && joined != "changes list"
            && !args.iter().any(|a| a == "--dir" || a.starts_with("--dir="))
        {
            site.log.push(format!(
                "skipped (changes without --dir write to a collector): {at}"
            ));
            continue;
        }
        if !cmd.plain {
            site.log.push(format!(
                "checked, not run (pipe, input or substitution): {at}"
            ));
            continue;
        }
        if !ok_flags {
            continue;
        }
        let local: Vec<String> = args.iter().map(|a| site.localize(a)).collect();
        let positional: Vec<String> = positional.iter().map(|a| site.localize(a)).collect();
        if joined == "keygen" {
            let out = local
                .iter()
                .position(|a| a == "--out")
                .and_then(|k| local.get(k + 1))
                .cloned();
            if out.is_some_and(|o| site.path(&format!("{o}.key")).exists())
                && !local.iter().any(|a| a == "--force")
            {
                site.log
                    .push(format!("not run (the key pair exists already): {at}"));
                continue;
            }
        }
        site.prepare(&joined, &local, &positional);
        let stdout_to = cmd.stdout_to.as_ref().map(|p| site.path(&site.localize(p)));
        let d = run_in(&site.dir, &local, stdout_to.as_deref(), RUN_TIMEOUT);
        ran += 1;
        site.log.push(format!("ran (exit {}): {at}", d.code));
        if d.code == 2 || d.code < 0 {
            problems.push(format!(
                "{at}: run as `{}` in {} exited {}:\n{}{}",
                d.cmd,
                site.dir.display(),
                d.code,
                d.stdout,
                d.stderr
            ));
        }
    }
    println!("{}", site.log.join("\n"));
    assert!(
        problems.is_empty(),
        "README commands that do not work as written:\n\n{}\n\n(what the test did:\n{})",
        problems.join("\n\n"),
        site.log.join("\n")
    );
    assert!(
        ran > 0,
        "no README command was run:\n{}",
        site.log.join("\n")
    );
}

/// Inline code spans like `driftwatch check --root DIR [--pubkey PUB]...` (the command table):
/// the subcommands exist and `--help` lists every flag.
#[test]
fn readme_inline_commands_name_real_subcommands_and_flags() {
    let text = readme();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut helps = Helps {
        dir: tmp.path().to_path_buf(),
        cache: HashMap::new(),
    };
    let mut problems = Vec::new();
    let mut seen = 0;
    let mut in_fence = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Code spans: text between pairs of backticks.
        for (k, span) in line.split('`').enumerate() {
            if k % 2 == 0 || !span.starts_with("driftwatch ") {
                continue;
            }
            let words: Vec<String> = span
                .replace("\\|", "|")
                .split_whitespace()
                .map(|w| {
                    w.trim_matches(|c| c == '[' || c == ']')
                        .trim_end_matches("...")
                        .trim_end_matches(']')
                        .to_string()
                })
                .filter(|w| !w.is_empty())
                .collect();
            let args = &words[1..];
            if args.is_empty() || args[0].chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                continue; // `driftwatch COMMAND --help`: a placeholder
            }
            seen += 1;
            // Alternatives (`token create|list|revoke`): each must exist, flags checked on each.
            let mut paths: Vec<(Vec<String>, usize)> = vec![(Vec::new(), 0)];
            loop {
                let mut grew = false;
                let mut next = Vec::new();
                for (p, i) in paths {
                    let subs = helps.get(&p).subcommands.clone();
                    match args.get(i) {
                        Some(w) if w.split('|').any(|a| subs.contains(&a.to_string())) => {
                            for alt in w.split('|') {
                                if subs.contains(&alt.to_string()) {
                                    let mut q = p.clone();
                                    q.push(alt.to_string());
                                    next.push((q, i + 1));
                                } else {
                                    problems.push(format!(
                                        "README.md:{}: `{span}`: `{alt}` is not a subcommand of `driftwatch {}`",
                                        n + 1,
                                        p.join(" ")
                                    ));
                                }
                            }
                            grew = true;
                        }
                        _ => next.push((p, i)),
                    }
                }
                paths = next;
                if !grew {
                    break;
                }
            }
            for (p, i) in paths {
                if p.is_empty() {
                    problems.push(format!(
                        "README.md:{}: `{span}`: `{}` is not a driftwatch subcommand",
                        n + 1,
                        args[0]
                    ));
                    continue;
                }
                // Only the flags: values and placeholders are not checked here.
                let flags: Vec<String> = args[i..]
                    .iter()
                    .filter(|w| w.starts_with('-') && *w != "-" && *w != "--")
                    .map(|w| w.split('=').next().unwrap_or(w).to_string())
                    .collect();
                let help = helps.get(&p).clone();
                for f in flags {
                    let name = if f.starts_with("--") {
                        f.clone()
                    } else {
                        f.chars().take(2).collect()
                    };
                    if !help.flags.contains_key(&name) {
                        problems.push(format!(
                            "README.md:{}: `{span}`: `driftwatch {} --help` does not list {name}",
                            n + 1,
                            p.join(" ")
                        ));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "README inline commands that do not match the CLI:\n{}",
        problems.join("\n")
    );
    println!("{seen} inline driftwatch commands checked");
}

#[test]
fn extractor_understands_continuations_comments_quotes_and_prompts() {
    let md = "text\n```sh\n# a comment\ndriftwatch manifest build --root build/ --release \"$VERSION\" \\\n    --sign release.key -o m.json   # trailing comment\ncargo test\n```\n\
              ```console\n# driftwatch config check --config /etc/driftwatch/agent.toml\n$ driftwatch token create --role reader --label 'release managers' > reader.token\noutput line\n```\n\
              ```toml\nid = 1\n```\n";
    let (blocks, lines) = command_lines(md);
    assert_eq!(blocks, 2);
    let cmds: Vec<Cmd> = lines.iter().flat_map(tokenize).collect();
    let words: Vec<Vec<String>> = cmds.iter().map(|c| c.words.clone()).collect();
    assert_eq!(
        words,
        [
            vec![
                "driftwatch",
                "manifest",
                "build",
                "--root",
                "build/",
                "--release",
                "2026.11.3",
                "--sign",
                "release.key",
                "-o",
                "m.json"
            ],
            vec!["cargo", "test"],
            vec![
                "driftwatch",
                "config",
                "check",
                "--config",
                "/etc/driftwatch/agent.toml"
            ],
            vec![
                "driftwatch",
                "token",
                "create",
                "--role",
                "reader",
                "--label",
                "release managers"
            ],
        ]
        .iter()
        .map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .collect::<Vec<_>>()
    );
    assert_eq!(cmds[3].stdout_to.as_deref(), Some("reader.token"));
    assert_eq!(
        cmds[0].line, 4,
        "a command is located on the line it starts on"
    );
    let piped = tokenize(&Line {
        line: 1,
        text: "driftwatch events --format csv | head -3 && echo ok".into(),
    });
    assert_eq!(piped.len(), 3);
    assert!(!piped[0].plain && !piped[1].plain && piped[2].plain);
    assert_eq!(
        driftwatch_args(&["cargo", "run", "--release", "--", "quickstart"].map(String::from)),
        Some(vec!["quickstart".to_string()])
    );
    assert_eq!(
        driftwatch_args(&["sudo", "-u", "driftwatch", "driftwatch", "scan"].map(String::from)),
        Some(vec!["scan".to_string()])
    );
    assert_eq!(
        driftwatch_args(&["systemctl", "enable", "--now", "x"].map(String::from)),
        None
    );
}
