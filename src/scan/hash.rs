//! Hashing one regular file safely: no symlink following, no FIFOs or devices, no mmap.
//!
//! A file is opened with `O_NOFOLLOW | O_NONBLOCK`, checked to be a regular file with `fstat`
//! before a byte is read, streamed through a reused buffer, and `fstat`ed again afterwards: if
//! anything moved (size, mtime, ctime, inode) or the byte count differs from the size, the hash is
//! thrown away and the file hashed again (AIDE's rule). mmap is never used: a file truncated under
//! a mapping raises SIGBUS and would kill the daemon (DESIGN §9b).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::entry::{Kind, Meta};
use crate::scan::xattr::{self, XattrError, Xattrs};

/// Files at least this big are hashed with BLAKE3's multi-threaded `update_rayon`.
const RAYON_THRESHOLD: u64 = 4 << 20;
/// Read buffer size: large enough to amortise syscalls, small enough to stay in L2.
const BUF_SIZE: usize = 256 << 10;
/// Read buffer for files hashed with `update_rayon`: bigger pieces split better across cores.
const BIG_BUF_SIZE: usize = 2 << 20;
/// How many times a file that changes under us is re-read before we report it as changing.
const ATTEMPTS: usize = 3;

/// `O_NOATIME` fails with EPERM on files we do not own unless we are root; remember that once.
static NOATIME_OK: AtomicBool = AtomicBool::new(true);

/// What hashing a path found.
#[derive(Debug)]
pub enum Hashed {
    /// A regular file, its metadata (from `fstat`), content hash and extended attributes (read
    /// from the same descriptor, between the two `fstat`s: an attribute change moves ctime, so
    /// a change during the read is caught like a content change).
    File(Meta, [u8; 32], Result<Option<Xattrs>, XattrError>),
    /// The path is no longer a regular file (raced with a rename or swap): its `fstat` metadata.
    NotRegular(Meta),
    /// The file kept changing while it was read: metadata of the last attempt.
    Changing(Meta),
}

/// Hashes the regular file at `path` (see the module docs for the safety rules).
pub fn hash_file(path: &Path) -> io::Result<Hashed> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let file = open_no_follow(path)?;
        let before = Meta::from_std(&file.metadata()?);
        if before.kind != Kind::File {
            return Ok(Hashed::NotRegular(before));
        }
        let (hash, read) = hash_reader(&file, before.size)?;
        let xattrs = xattr::read_file(&file);
        let after = Meta::from_std(&file.metadata()?);
        if read == before.size && same_content_stamp(&before, &after) {
            return Ok(Hashed::File(after, hash, xattrs));
        }
        last = Some(after);
    }
    Ok(Hashed::Changing(last.expect("ATTEMPTS > 0")))
}

/// BLAKE3 of a byte slice, for content already in memory.
pub fn hash_bytes(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

fn same_content_stamp(a: &Meta, b: &Meta) -> bool {
    a.size == b.size
        && a.mtime_ns == b.mtime_ns
        && a.ctime_ns == b.ctime_ns
        && a.ino == b.ino
        && a.dev == b.dev
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    let base = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    if NOATIME_OK.load(Ordering::Relaxed) {
        match OpenOptions::new()
            .read(true)
            .custom_flags(base | libc::O_NOATIME)
            .open(path)
        {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                NOATIME_OK.store(false, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    OpenOptions::new().read(true).custom_flags(base).open(path)
}

/// Streams `file` through BLAKE3 and returns the hash and the number of bytes read.
fn hash_reader(mut file: &File, size_hint: u64) -> io::Result<([u8; 32], u64)> {
    // A buffer per file, sized to the file: small files get a small heap allocation, big ones
    // BUF_SIZE. (A shared thread-local buffer is not safe here: inside `update_rayon` this
    // thread may run another file's hashing task while it waits.)
    let cap = if size_hint >= RAYON_THRESHOLD {
        BIG_BUF_SIZE
    } else {
        BUF_SIZE
    };
    let mut buf = vec![0u8; (size_hint as usize).saturating_add(1).min(cap)];
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf[..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if size_hint >= RAYON_THRESHOLD {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
        total += n as u64;
        // At the size fstat gave, stop without the extra read that would return 0: if the
        // file grew meanwhile, the fstat after hashing shows it and the hash is redone.
        if total == size_hint && n < buf.len() {
            break;
        }
    }
    Ok((*hasher.finalize().as_bytes(), total))
}

/// Metadata of a path without following a final symlink.
pub fn lstat(path: &Path) -> io::Result<Meta> {
    Ok(Meta::from_std(&std::fs::symlink_metadata(path)?))
}

/// The device of a path, for staying on one filesystem.
pub fn device_of(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.dev())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hashes_match_blake3_for_small_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        for size in [
            0usize,
            1,
            4096,
            BUF_SIZE + 7,
            (RAYON_THRESHOLD as usize) + 12345,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let p = dir.path().join(format!("f{size}"));
            std::fs::File::create(&p).unwrap().write_all(&data).unwrap();
            match hash_file(&p).unwrap() {
                Hashed::File(meta, h, x) => {
                    assert_eq!(x.unwrap(), None);
                    assert_eq!(h, hash_bytes(&data), "size {size}");
                    assert_eq!(meta.size, size as u64);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t"), b"x").unwrap();
        std::os::unix::fs::symlink("t", dir.path().join("l")).unwrap();
        let err = hash_file(&dir.path().join("l")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn fifo_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        match hash_file(&p).unwrap() {
            Hashed::NotRegular(m) => assert_eq!(m.kind, Kind::Fifo),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn large_files_hashed_in_parallel_do_not_share_a_buffer() {
        // Small and large files hashed together on a 2-thread pool, large ones with update_rayon
        // (whose joins let a worker run other files' tasks): every hash must stay right.
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for i in 0..40u32 {
            let len = if i % 10 == 0 {
                24 << 20
            } else {
                1000 + i as usize
            };
            let data: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, &data).unwrap();
            files.push((p, hash_bytes(&data)));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let results = std::sync::Mutex::new(Vec::new());
        for _ in 0..3 {
            pool.scope(|s| {
                for (p, want) in &files {
                    let results = &results;
                    s.spawn(move |_| {
                        let got = match hash_file(p).unwrap() {
                            Hashed::File(_, h, _) => h,
                            other => panic!("{other:?}"),
                        };
                        results.lock().unwrap().push(got == *want);
                    });
                }
            });
        }
        let r = results.into_inner().unwrap();
        assert_eq!(r.len(), 3 * files.len());
        assert!(r.iter().all(|ok| *ok));
    }
}
