//! minisign keys and signatures, compatible with the stock `minisign` tool.
//!
//! Verification always runs over bytes already in memory, and callers parse those same bytes:
//! reading a file twice (once to verify, once to parse) would let it be swapped in between.

use std::fs::OpenOptions;
use std::io::{Cursor, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

/// Environment variable holding the password of an encrypted secret key.
pub const PASSWORD_ENV: &str = "DRIFTWATCH_KEY_PASSWORD";

/// A key or signature problem; every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A key file is not a minisign key.
    #[error("{path}: not a minisign {what}: {message}")]
    BadKey {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    /// No `.minisig` next to the file.
    #[error("{path}: not signed (no {sig} found)")]
    Unsigned { path: PathBuf, sig: PathBuf },
    /// The signature file is malformed.
    #[error("{sig}: not a minisign signature: {message}")]
    BadSignatureFile { sig: PathBuf, message: String },
    /// The signature does not verify against any trusted key.
    #[error("{path}: signature does not verify against {keys} ({message})")]
    Untrusted {
        path: PathBuf,
        keys: String,
        message: String,
    },
    /// Signed by a key bound to another person than the entry's `approved_by`.
    #[error("approved_by {claimed:?} but signed by {key} which is bound to approver {bound:?}")]
    WrongApprover {
        key: PathBuf,
        bound: String,
        claimed: String,
    },
    /// Refused to overwrite an existing key.
    #[error("{0}: already exists (use --force to overwrite)")]
    Exists(PathBuf),
}

/// A public key and the file it came from (for messages).
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// The key.
    pub key: PublicKey,
    /// The one person this key may approve as (`[trust] approvers`); `None` for the keys of
    /// `approver_keys`, which may sign for any name (a shared CAB key, the ITSM import key).
    pub approver: Option<String>,
}

impl TrustedKey {
    /// The same key, bound to one approver name.
    pub fn bound_to(mut self, name: &str) -> TrustedKey {
        self.approver = Some(name.to_string());
        self
    }
}

/// One `[trust] approvers` line: a person and the public key that proves their approvals.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverBinding {
    /// The name an entry's `approved_by` must carry when this key signed it.
    pub name: String,
    /// The person's public key.
    pub key: PathBuf,
}

/// The `[trust]` table shared by the agent and collector configs: which keys are trusted.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustTable {
    /// Keys release manifests must verify against.
    #[serde(default)]
    pub release_keys: Vec<PathBuf>,
    /// Refuse unsigned manifests and change entries.
    #[serde(default = "signatures_required")]
    pub require_signatures: bool,
    /// Keys change entries must verify against; each may sign for any approver name.
    #[serde(default)]
    pub approver_keys: Vec<PathBuf>,
    /// Keys bound to one person each: an entry they sign must name that person in `approved_by`.
    #[serde(default)]
    pub approvers: Vec<ApproverBinding>,
    /// Accept entries approved by their own requester.
    #[serde(default)]
    pub allow_self_approval: bool,
}

fn signatures_required() -> bool {
    true
}

// Written out: a derived Default would make a missing [trust] table mean "no signatures needed".
impl Default for TrustTable {
    fn default() -> Self {
        TrustTable {
            release_keys: Vec::new(),
            require_signatures: true,
            approver_keys: Vec::new(),
            approvers: Vec::new(),
            allow_self_approval: false,
        }
    }
}

impl TrustTable {
    /// Loads the release and approver keys; each unreadable key is reported through `bad`
    /// (with its config key name) and left out, so every problem is listed at once.
    pub fn load_keys(
        &self,
        bad: &mut dyn FnMut(&str, String),
    ) -> (Vec<TrustedKey>, Vec<TrustedKey>) {
        let mut load = |name: &str, paths: &[PathBuf]| -> Vec<TrustedKey> {
            paths
                .iter()
                .filter_map(|k| {
                    load_public_key(k)
                        .map_err(|e| bad(name, e.to_string()))
                        .ok()
                })
                .collect()
        };
        let release = load("trust.release_keys", &self.release_keys);
        let mut approvers = load("trust.approver_keys", &self.approver_keys);
        for a in &self.approvers {
            if a.name.trim().is_empty() {
                bad(
                    "trust.approvers",
                    format!("{}: name must not be empty", a.key.display()),
                );
                continue;
            }
            match load_public_key(&a.key) {
                Ok(k) => approvers.push(k.bound_to(&a.name)),
                Err(e) => bad("trust.approvers", e.to_string()),
            }
        }
        (release, approvers)
    }

    /// Whether any key may approve change entries (`approver_keys` or `approvers`).
    pub fn has_approver_keys(&self) -> bool {
        !self.approver_keys.is_empty() || !self.approvers.is_empty()
    }
}

/// Parses a `--approver NAME=PUBKEY` command-line binding.
pub fn parse_approver_binding(s: &str) -> Result<ApproverBinding, String> {
    match s.split_once('=') {
        Some((name, key)) if !name.trim().is_empty() && !key.is_empty() => Ok(ApproverBinding {
            name: name.trim().to_string(),
            key: PathBuf::from(key),
        }),
        _ => Err(format!(
            "{s:?}: expected NAME=PUBKEY (e.g. bob=/etc/driftwatch/keys/bob.pub)"
        )),
    }
}

/// The one rule binding approvals to people, used by `check`, the agent and the collector: the
/// key that signed an entry must be allowed to approve as the name the entry gives. Returns the
/// verified approver (`None` when the entry names none: it authorizes nothing anyway).
pub fn verified_approver(
    signer: &TrustedKey,
    approved_by: Option<&str>,
) -> Result<Option<String>, SignError> {
    let Some(by) = approved_by else {
        return Ok(None);
    };
    match &signer.approver {
        Some(bound) if bound.trim() != by.trim() => Err(SignError::WrongApprover {
            key: signer.path.clone(),
            bound: bound.clone(),
            claimed: by.to_string(),
        }),
        _ => Ok(Some(by.trim().to_string())),
    }
}

/// The `.minisig` path for a file.
pub fn sig_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SignError + '_ {
    move |source| SignError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads a public key: a minisign `.pub` file, or a file holding just the base64 line.
pub fn load_public_key(path: &Path) -> Result<TrustedKey, SignError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let bad = |message: String| SignError::BadKey {
        path: path.to_path_buf(),
        what: "public key",
        message,
    };
    let key = if text.trim_start().starts_with("untrusted comment:") {
        PublicKeyBox::from_string(&text)
            .and_then(|b| b.into_public_key())
            .map_err(|e| bad(e.to_string()))?
    } else {
        PublicKey::from_base64(text.trim()).map_err(|e| bad(e.to_string()))?
    };
    Ok(TrustedKey {
        path: path.to_path_buf(),
        key,
        approver: None,
    })
}

/// Loads public keys, failing on the first bad one.
pub fn load_public_keys(paths: &[PathBuf]) -> Result<Vec<TrustedKey>, SignError> {
    paths.iter().map(|p| load_public_key(p)).collect()
}

/// Loads a secret key; an encrypted one takes its password from `DRIFTWATCH_KEY_PASSWORD` or,
/// on a terminal, a prompt.
pub fn load_secret_key(path: &Path) -> Result<SecretKey, SignError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let bad = |message: String| SignError::BadKey {
        path: path.to_path_buf(),
        what: "secret key",
        message,
    };
    if let Some(sk) = unencrypted_key(&text) {
        return Ok(sk);
    }
    let boxed = SecretKeyBox::from_string(&text).map_err(|e| bad(e.to_string()))?;
    let password = match std::env::var(PASSWORD_ENV) {
        Ok(p) => Some(p),
        Err(_) if std::io::stdin().is_terminal() => None,
        Err(_) => {
            return Err(bad(format!(
                "the key is encrypted: set {PASSWORD_ENV} or run on a terminal"
            )));
        }
    };
    boxed
        .into_secret_key(password)
        .map_err(|e| bad(e.to_string()))
}

/// Reads an unencrypted secret key directly: `minisign -G -W` leaves its checksum zeroed, which
/// the crate's own loader rejects as corrupt. A wrong key still cannot forge anything: every
/// signature is verified against a public key.
fn unencrypted_key(text: &str) -> Option<SecretKey> {
    use ct_codecs::{Base64, Decoder};
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))?;
    let bytes = Base64::decode_to_vec(line, None).ok()?;
    // Layout: sig_alg (2) | kdf_alg (2) | ...; a zero kdf_alg means "not encrypted".
    if bytes.get(2..4)? != [0, 0] {
        return None;
    }
    SecretKey::from_bytes(&bytes).ok()
}

/// Writes `PREFIX.key` (mode 0600, unencrypted) and `PREFIX.pub`.
pub fn keygen(prefix: &Path, force: bool) -> Result<(PathBuf, PathBuf), SignError> {
    let with_ext = |ext: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    let (key_path, pub_path) = (with_ext(".key"), with_ext(".pub"));
    for p in [&key_path, &pub_path] {
        if !force && p.exists() {
            return Err(SignError::Exists(p.clone()));
        }
    }
    let generated = KeyPair::generate_unencrypted_keypair();
    let KeyPair { pk, sk } = generated.map_err(|e| SignError::BadKey {
        path: key_path.clone(),
        what: "secret key",
        message: e.to_string(),
    })?;
    let sk_text = sk
        .to_box(Some("driftwatch secret key (unencrypted)"))
        .expect("box")
        .into_string();
    let pk_text = pk.to_box().expect("box").into_string();
    write_file(&key_path, sk_text.as_bytes(), 0o600, force)?;
    write_file(&pub_path, pk_text.as_bytes(), 0o644, force)?;
    Ok((key_path, pub_path))
}

/// Signs bytes; `file_name` goes into the trusted comment like the stock tool does.
pub fn sign_bytes(data: &[u8], file_name: &str, sk: &SecretKey) -> Result<String, String> {
    let ts = jiff::Timestamp::now().as_second();
    let trusted = format!("timestamp:{ts}\tfile:{file_name}\thashed");
    minisign::sign(
        None,
        sk,
        Cursor::new(data),
        Some(&trusted),
        Some("signature from driftwatch secret key"),
    )
    .map(|b| b.into_string())
    .map_err(|e| e.to_string())
}

/// Signs a file with the key at `key_path`, writing `FILE.minisig`.
pub fn sign_file(path: &Path, key_path: &Path) -> Result<PathBuf, SignError> {
    let sk = load_secret_key(key_path)?;
    let data = std::fs::read(path).map_err(io_err(path))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sig = sign_bytes(&data, &name, &sk).map_err(|message| SignError::BadKey {
        path: key_path.to_path_buf(),
        what: "secret key",
        message,
    })?;
    let out = sig_path(path);
    write_file(&out, sig.as_bytes(), 0o644, true)?;
    Ok(out)
}

/// Verifies `data` (the content of `path`) against its `.minisig` and any of `keys`.
pub fn verify_bytes<'k>(
    data: &[u8],
    path: &Path,
    keys: &'k [TrustedKey],
) -> Result<&'k TrustedKey, SignError> {
    let sig = sig_path(path);
    let text = match std::fs::read_to_string(&sig) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SignError::Unsigned {
                path: path.to_path_buf(),
                sig,
            });
        }
        Err(e) => {
            return Err(SignError::Io {
                path: sig,
                source: e,
            });
        }
    };
    verify_text(data, path, &text, keys).map_err(|e| match e {
        SignError::BadSignatureFile { message, .. } => SignError::BadSignatureFile { sig, message },
        other => other,
    })
}

/// Verifies `data` against a signature given as text (as received over the API).
pub fn verify_text<'k>(
    data: &[u8],
    path: &Path,
    sig_text: &str,
    keys: &'k [TrustedKey],
) -> Result<&'k TrustedKey, SignError> {
    let sig = sig_path(path);
    let sbox = SignatureBox::from_string(sig_text).map_err(|e| SignError::BadSignatureFile {
        sig: sig.clone(),
        message: e.to_string(),
    })?;
    let mut last = String::from("no trusted keys given");
    for k in keys {
        match minisign::verify(&k.key, &sbox, Cursor::new(data), true, false, true) {
            Ok(()) => return Ok(k),
            Err(e) => last = e.to_string(),
        }
    }
    let names: Vec<String> = keys.iter().map(|k| k.path.display().to_string()).collect();
    Err(SignError::Untrusted {
        path: path.to_path_buf(),
        keys: names.join(", "),
        message: last,
    })
}

/// Writes a file atomically (temp + fsync + rename) with the given mode.
fn write_file(path: &Path, data: &[u8], mode: u32, overwrite: bool) -> Result<(), SignError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    let result = f.write_all(data).and_then(|_| f.sync_all());
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(SignError::Io {
            path: tmp,
            source: e,
        });
    }
    if !overwrite && path.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(SignError::Exists(path.to_path_buf()));
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("k");
        let (key, public) = keygen(&prefix, false).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert!(matches!(keygen(&prefix, false), Err(SignError::Exists(_))));
        let f = dir.path().join("m.json");
        std::fs::write(&f, b"hello").unwrap();
        sign_file(&f, &key).unwrap();
        let keys = vec![load_public_key(&public).unwrap()];
        verify_bytes(b"hello", &f, &keys).unwrap();
        let err = verify_bytes(b"hellO", &f, &keys).unwrap_err();
        assert!(matches!(err, SignError::Untrusted { .. }), "{err}");
        let (_, other) = keygen(&dir.path().join("other"), false).unwrap();
        let others = vec![load_public_key(&other).unwrap()];
        assert!(verify_bytes(b"hello", &f, &others).is_err());
        let unsigned = dir.path().join("u.json");
        assert!(matches!(
            verify_bytes(b"", &unsigned, &keys),
            Err(SignError::Unsigned { .. })
        ));
    }
}
