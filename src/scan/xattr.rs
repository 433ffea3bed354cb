//! Extended attributes and POSIX ACLs: what AIDE sees, we see (DESIGN §12.1).
//!
//! Every attribute the process can list is covered, whatever its namespace: `security.capability`
//! (file capabilities), `security.selinux`, `security.ima`, `user.*`, `trusted.*` (listed only
//! to root), and the POSIX ACLs, which the kernel exposes as the `system.posix_acl_access` and
//! `system.posix_acl_default` attributes. A file being hashed is asked through the descriptor
//! the hasher opened (`flistxattr`/`fgetxattr`: no second path lookup); anything else by path
//! with `llistxattr`/`lgetxattr`, which never follow a symlink and never open the path, so FIFOs
//! and devices are safe to ask.
//!
//! # Canonical digest
//!
//! The digest of a path's attributes is BLAKE3 over, for each attribute in order of its name's
//! bytes: the name's length (u32, little-endian), the name bytes, the value's length (u32,
//! little-endian), the value bytes; the whole prefixed by the domain tag
//! `driftwatch.xattrs.v1\0`. Length prefixes make the encoding unambiguous (a name may contain
//! `=`, a value anything). A path with no attributes has no digest at all (`None`), so the
//! manifest omits the key and paths without attributes cost nothing.
//!
//! # Naming what changed
//!
//! A digest alone says *that* the attributes changed, while a sysadmin needs to know *which*
//! (`security.capability added`). Beside the digest, each set keeps its sorted names, each with
//! the first 8 bytes of BLAKE3 of its value. That is enough to tell `added`, `removed` and
//! `changed` apart for every name, on both sides of a comparison:
//! - the manifest records them as `"xattr_names": {"name": "<16 hex>"}` beside `"xattrs"`, so
//!   `check` can name the attribute against a manifest;
//! - the agent's table keeps them in an interned pool of sets (one per distinct set, however many
//!   paths carry it: a tree labelled with one SELinux context holds one set), referenced by a side
//!   list that only paths with attributes appear in, so the 80-byte record and the memory of a
//!   path without attributes are unchanged.
//!
//! The short value digests only name; the 32-byte digest is what is compared, so a collision of
//! short digests could at worst give a vaguer description, never hide a change. The values
//! themselves are not kept (a capability or ACL is small, but an IMA signature is not, and a
//! value can be secret).

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

/// Domain tag of the canonical encoding (see the module docs).
const DOMAIN: &[u8] = b"driftwatch.xattrs.v1\0";
/// Most paths have no attributes or a short list: one `llistxattr` into this buffer answers.
const LIST_BUF: usize = 512;
/// Capabilities, ACLs and SELinux labels fit; IMA signatures and large `user.*` values take the
/// size query.
const VALUE_BUF: usize = 256;

/// One attribute's name and a short digest of its value (for naming changes only).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct XattrName {
    /// The full name, namespace included (`security.capability`).
    pub name: Vec<u8>,
    /// The first 8 bytes of BLAKE3 of the value.
    pub value: [u8; 8],
}

/// The extended attributes of one path: their canonical digest and their names.
///
/// One pointer wide (`Option<Xattrs>` too): every entry, state and observation carries one, and
/// almost all of them are `None`, so a path without attributes pays 8 bytes, not a set's 48.
/// Clones share the set. Two sets are equal when their digests are: the names are only there
/// to describe a change.
#[derive(Debug, Clone)]
pub struct Xattrs(Arc<XattrSet>);

/// What an [`Xattrs`] points to.
#[derive(Debug)]
pub struct XattrSet {
    /// BLAKE3 of the canonical encoding of all `name=value` pairs.
    pub digest: [u8; 32],
    /// Sorted by name bytes. Empty when the source recorded only the digest (a manifest written
    /// by hand without `xattr_names`): a set with a digest always has at least one attribute.
    pub names: Vec<XattrName>,
}

impl std::ops::Deref for Xattrs {
    type Target = XattrSet;
    fn deref(&self) -> &XattrSet {
        &self.0
    }
}

impl PartialEq for Xattrs {
    fn eq(&self, other: &Xattrs) -> bool {
        self.digest == other.digest
    }
}

impl Eq for Xattrs {}

impl Xattrs {
    /// A set from its parts (a manifest or a state file); `names` sorted by name, unique.
    pub fn new(digest: [u8; 32], names: Vec<XattrName>) -> Xattrs {
        Xattrs(Arc::new(XattrSet { digest, names }))
    }

    /// The set of these `(name, value)` pairs (any order, names unique); `None` when empty.
    pub fn from_pairs(mut pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Option<Xattrs> {
        if pairs.is_empty() {
            return None;
        }
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN);
        for (name, value) in &pairs {
            h.update(&(name.len() as u32).to_le_bytes());
            h.update(name);
            h.update(&(value.len() as u32).to_le_bytes());
            h.update(value);
        }
        let names = pairs
            .into_iter()
            .map(|(name, value)| XattrName {
                name,
                value: short_digest(&value),
            })
            .collect();
        Some(Xattrs::new(*h.finalize().as_bytes(), names))
    }
}

/// The first 8 bytes of BLAKE3 of an attribute value.
pub fn short_digest(value: &[u8]) -> [u8; 8] {
    let h = blake3::hash(value);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.as_bytes()[..8]);
    out
}

/// Reading the attributes of a path failed.
#[derive(Debug, thiserror::Error)]
pub enum XattrError {
    /// Listing the names failed.
    #[error("cannot list extended attributes: {0}")]
    List(io::Error),
    /// Reading one value failed.
    #[error("cannot read extended attribute {name}: {source}")]
    Get { name: String, source: io::Error },
}

impl XattrError {
    /// The path is gone (the caller treats it like a vanished file).
    pub fn is_not_found(&self) -> bool {
        let e = match self {
            XattrError::List(e) | XattrError::Get { source: e, .. } => e,
        };
        e.kind() == io::ErrorKind::NotFound
    }
}

/// Reads every attribute of `path` without following a symlink; `None` when it has none.
/// A filesystem without attribute support counts as none.
pub fn read(path: &Path) -> Result<Option<Xattrs>, XattrError> {
    use std::os::unix::ffi::OsStrExt;
    with_c_path(path.as_os_str().as_bytes(), |c| read_from(Source::Path(c)))
        .unwrap_or_else(|e| Err(XattrError::List(e)))
}

/// As [`read`], from a file already open (the hasher's): no second path lookup, which costs as
/// much as the `lstat` it would follow.
pub fn read_file(file: &File) -> Result<Option<Xattrs>, XattrError> {
    read_from(Source::Fd(file.as_raw_fd()))
}

/// Where the attributes are read from: a path (never followed) or an open file.
#[derive(Clone, Copy)]
enum Source<'a> {
    Path(&'a CStr),
    Fd(RawFd),
}

impl Source<'_> {
    /// `llistxattr`/`flistxattr` into `buf` (a null `buf` with size 0 asks for the size).
    fn list(self, buf: *mut libc::c_char, size: usize) -> isize {
        // SAFETY: a valid NUL-terminated path or an open descriptor; `buf` is valid for `size`
        // bytes or null with size 0.
        unsafe {
            match self {
                Source::Path(p) => libc::llistxattr(p.as_ptr(), buf, size),
                Source::Fd(fd) => libc::flistxattr(fd, buf, size),
            }
        }
    }

    /// `lgetxattr`/`fgetxattr` of `name` into `buf` (null with size 0: the size).
    fn get(self, name: &CStr, buf: *mut libc::c_void, size: usize) -> isize {
        // SAFETY: as `list`, and `name` is NUL-terminated.
        unsafe {
            match self {
                Source::Path(p) => libc::lgetxattr(p.as_ptr(), name.as_ptr(), buf, size),
                Source::Fd(fd) => libc::fgetxattr(fd, name.as_ptr(), buf, size),
            }
        }
    }
}

fn read_from(path: Source<'_>) -> Result<Option<Xattrs>, XattrError> {
    let list = list_names(path).map_err(XattrError::List)?;
    if list.is_empty() {
        return Ok(None);
    }
    let mut pairs = Vec::new();
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        // Split at NUL, so never fails; skipping keeps the no-panic rule without an `expect`.
        let Ok(cname) = std::ffi::CString::new(name) else {
            continue;
        };
        match get_value(path, &cname) {
            Ok(Some(v)) => pairs.push((name.to_vec(), v)),
            // Removed between the list and the read: the path's ctime moved, it is seen again.
            Ok(None) => {}
            Err(source) => {
                return Err(XattrError::Get {
                    name: String::from_utf8_lossy(name).into_owned(),
                    source,
                });
            }
        }
    }
    Ok(Xattrs::from_pairs(pairs))
}

/// Calls `f` with `bytes` as a NUL-terminated string, on the stack when it is short: this runs
/// once per path of every scan.
fn with_c_path<T>(bytes: &[u8], f: impl FnOnce(&CStr) -> T) -> io::Result<T> {
    let mut buf = [0u8; 1024];
    if bytes.len() < buf.len() {
        buf[..bytes.len()].copy_from_slice(bytes);
        let c = CStr::from_bytes_until_nul(&buf[..=bytes.len()])
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if c.to_bytes().len() != bytes.len() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        Ok(f(c))
    } else {
        let c = std::ffi::CString::new(bytes)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(f(&c))
    }
}

/// The NUL-separated name list: one syscall when it fits the stack buffer (the usual case, and
/// always for a path without attributes, which returns 0).
fn list_names(src: Source<'_>) -> io::Result<Vec<u8>> {
    let mut stack = [0u8; LIST_BUF];
    let n = src.list(stack.as_mut_ptr().cast(), stack.len());
    if n >= 0 {
        return Ok(stack[..n as usize].to_vec());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Some(libc::ERANGE) => {}
        _ => return Err(e),
    }
    // Bigger than the stack buffer: ask the size, and again if it grew meanwhile.
    loop {
        let size = src.list(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        let n = src.list(buf.as_mut_ptr().cast(), buf.len());
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

/// One value; `None` when the attribute is gone.
fn get_value(src: Source<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut stack = [0u8; VALUE_BUF];
    let n = src.get(name, stack.as_mut_ptr().cast(), stack.len());
    if n >= 0 {
        return Ok(Some(stack[..n as usize].to_vec()));
    }
    loop {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            Some(libc::ERANGE) => {}
            _ => return Err(e),
        }
        // Bigger than the stack buffer: ask the size, and again if it grew meanwhile.
        let size = src.get(name, std::ptr::null_mut(), 0);
        if size < 0 {
            continue;
        }
        let mut buf = vec![0u8; size as usize];
        let n = src.get(name, buf.as_mut_ptr().cast(), buf.len());
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
    }
}

/// What differs between two attribute sets, one phrase per attribute in name order
/// (`security.capability added`, `user.x changed`, `system.posix_acl_access removed`);
/// empty when the digests are equal.
pub fn describe(expected: Option<&Xattrs>, actual: Option<&Xattrs>) -> Vec<String> {
    if expected == actual {
        return Vec::new();
    }
    let none: &[XattrName] = &[];
    let names = |x: Option<&Xattrs>| x.map_or(none, |x| &x.names).to_vec();
    let (e, a) = (names(expected), names(actual));
    // A side that has a digest but no names (a manifest that recorded only the digest): say what
    // can be said.
    let unnamed = |x: Option<&Xattrs>| x.is_some_and(|x| x.names.is_empty());
    if unnamed(expected) || unnamed(actual) {
        let known = if a.is_empty() { &e } else { &a };
        let list: Vec<String> = known.iter().map(|n| lossy(&n.name)).collect();
        return vec![if list.is_empty() {
            "extended attributes changed".to_string()
        } else {
            format!("extended attributes changed (now: {})", list.join(", "))
        }];
    }
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < e.len() || j < a.len() {
        let order = match (e.get(i), a.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push(format!("{} removed", lossy(&e[i].name)));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(format!("{} added", lossy(&a[j].name)));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if e[i].value != a[j].value {
                    out.push(format!("{} changed", lossy(&e[i].name)));
                }
                i += 1;
                j += 1;
            }
        }
    }
    if out.is_empty() {
        // Same names and short digests, different full digests: a short-digest collision.
        out.push("extended attributes changed".to_string());
    }
    out
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &[u8])]) -> Option<Xattrs> {
        Xattrs::from_pairs(
            pairs
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn digest_is_the_documented_encoding_and_order_free() {
        let mut want = blake3::Hasher::new();
        want.update(b"driftwatch.xattrs.v1\0");
        for (n, v) in [("security.capability", &b"\x01\x02"[..]), ("user.x", b"1")] {
            want.update(&(n.len() as u32).to_le_bytes());
            want.update(n.as_bytes());
            want.update(&(v.len() as u32).to_le_bytes());
            want.update(v);
        }
        let a = set(&[("user.x", b"1"), ("security.capability", b"\x01\x02")]).unwrap();
        let b = set(&[("security.capability", b"\x01\x02"), ("user.x", b"1")]).unwrap();
        assert_eq!(a.digest, *want.finalize().as_bytes());
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.names[0].name, b"security.capability");
        assert_eq!(a.names[1].value, short_digest(b"1"));
        assert!(set(&[]).is_none(), "no attributes: no digest");
    }

    #[test]
    fn encoding_is_unambiguous() {
        // Moving bytes between a name and its value, or between two values, changes the digest.
        let a = set(&[("user.a=", b"b")]).unwrap();
        let b = set(&[("user.a", b"=b")]).unwrap();
        assert_ne!(a.digest, b.digest);
        let c = set(&[("user.a", b"xy"), ("user.b", b"")]).unwrap();
        let d = set(&[("user.a", b"x"), ("user.b", b"y")]).unwrap();
        assert_ne!(c.digest, d.digest);
        let e = set(&[("user.a", b"")]).unwrap();
        assert_ne!(e.digest, [0; 32], "an empty value is still an attribute");
    }

    #[test]
    fn a_path_without_attributes_pays_one_pointer() {
        assert_eq!(size_of::<Option<Xattrs>>(), size_of::<usize>());
    }

    #[test]
    fn changes_are_named() {
        let cap: &[u8] = b"\x01\x00\x00\x02";
        let none = None;
        let x1 = set(&[("user.x", b"1")]);
        let x2 = set(&[("user.x", b"2")]);
        let both = set(&[("security.capability", cap), ("user.x", b"1")]);
        let acl = set(&[("system.posix_acl_access", b"acl"), ("user.x", b"2")]);
        assert_eq!(describe(none.as_ref(), x1.as_ref()), ["user.x added"]);
        assert_eq!(describe(x1.as_ref(), none.as_ref()), ["user.x removed"]);
        assert_eq!(describe(x1.as_ref(), x2.as_ref()), ["user.x changed"]);
        assert_eq!(
            describe(x1.as_ref(), both.as_ref()),
            ["security.capability added"]
        );
        assert_eq!(
            describe(both.as_ref(), acl.as_ref()),
            [
                "security.capability removed",
                "system.posix_acl_access added",
                "user.x changed"
            ]
        );
        assert!(describe(x1.as_ref(), x1.clone().as_ref()).is_empty());
        // A manifest that kept only the digest: the change is still described.
        let bare = x1.as_ref().map(|x| Xattrs::new(x.digest, Vec::new()));
        assert_eq!(
            describe(bare.as_ref(), both.as_ref()),
            ["extended attributes changed (now: security.capability, user.x)"]
        );
        assert!(describe(bare.as_ref(), x1.as_ref()).is_empty());
    }

    #[test]
    fn reads_user_xattrs_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(read(&f).unwrap(), None, "a fresh file has none");
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let big = vec![7u8; 3000];
        // SAFETY: valid strings and buffers.
        let rc = unsafe {
            libc::lsetxattr(
                c(&f).as_ptr(),
                c"user.big".as_ptr(),
                big.as_ptr().cast(),
                big.len(),
                0,
            )
        };
        if rc != 0 {
            eprintln!(
                "SKIP reads_user_xattrs: cannot set user.* xattrs on {}: {}",
                dir.path().display(),
                io::Error::last_os_error()
            );
            return;
        }
        let got = read(&f).unwrap().unwrap();
        assert_eq!(
            got,
            set(&[("user.big", &big)]).unwrap(),
            "large value read whole"
        );
        let from_fd = read_file(&File::open(&f).unwrap()).unwrap().unwrap();
        assert_eq!(from_fd, got);
        assert_eq!(from_fd.names, got.names);
        // A symlink to it has none of its own: never followed.
        let l = dir.path().join("l");
        std::os::unix::fs::symlink("f", &l).unwrap();
        assert_eq!(read(&l).unwrap(), None);
        assert!(read(&dir.path().join("gone")).unwrap_err().is_not_found());
    }
}
