//! The on-disk spool: every event is appended and fsync'ed before it is sent, and removed only
//! once the collector acknowledged it.
//!
//! Record: `DWS1` | payload length (u32 LE) | first 8 bytes of BLAKE3(payload) | payload (JSON).
//! A torn or corrupt tail (crash mid-write) is cut at the first bad record on open. The highest
//! acknowledged sequence number lives in `spool.acked` (written atomically), so sequence numbers
//! survive a restart even after the log was emptied.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::event::ChangeEvent;

const MAGIC: &[u8; 4] = b"DWS1";
const HEADER: usize = 4 + 4 + 8;

/// The spool failed: the path and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SpoolError {
    path: PathBuf,
    source: std::io::Error,
}

/// The spool of events not yet acknowledged.
pub struct Spool {
    log: PathBuf,
    acked_path: PathBuf,
    file: File,
    size: u64,
    max: u64,
    pending: VecDeque<ChangeEvent>,
    acked: u64,
    next_seq: u64,
    /// Events refused because the spool was full, since the agent started.
    pub dropped: u64,
    /// Bytes cut from a torn tail when the spool was opened.
    pub recovered_tail: u64,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError {
        path: path.to_path_buf(),
        source,
    }
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let h = blake3::hash(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.as_bytes()[..8]);
    out
}

impl Spool {
    /// Changes the size cap (SIGHUP); a smaller cap drops nothing already spooled.
    pub fn set_max(&mut self, max: u64) {
        self.max = max;
    }

    /// Opens (or creates) the spool in `dir`, cutting a torn tail.
    pub fn open(dir: &Path, max: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let log = dir.join("spool.log");
        let acked_path = dir.join("spool.acked");
        let acked = match std::fs::read_to_string(&acked_path) {
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(SpoolError {
                    path: acked_path,
                    source: e,
                });
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log)
            .map_err(err(&log))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(err(&log))?;
        let mut pending = VecDeque::new();
        let mut pos = 0usize;
        let mut max_seq = acked;
        while pos + HEADER <= bytes.len() {
            if &bytes[pos..pos + 4] != MAGIC {
                break;
            }
            let len =
                u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
            let end = pos + HEADER + len;
            if end > bytes.len() {
                break;
            }
            let payload = &bytes[pos + HEADER..end];
            if checksum(payload) != bytes[pos + 8..pos + 16] {
                break;
            }
            let Ok(ev) = serde_json::from_slice::<ChangeEvent>(payload) else {
                break;
            };
            max_seq = max_seq.max(ev.seq);
            if ev.seq > acked {
                pending.push_back(ev);
            }
            pos = end;
        }
        let recovered_tail = (bytes.len() - pos) as u64;
        if recovered_tail > 0 {
            file.set_len(pos as u64).map_err(err(&log))?;
            file.sync_all().map_err(err(&log))?;
        }
        file.seek(SeekFrom::End(0)).map_err(err(&log))?;
        Ok(Spool {
            log,
            acked_path,
            file,
            size: pos as u64,
            max,
            pending,
            acked,
            next_seq: max_seq + 1,
            dropped: 0,
            recovered_tail,
        })
    }

    /// Numbers and appends events (one fsync for the lot); returns the ones kept, numbered: always
    /// a prefix of `events`. Once one does not fit, it and the rest are counted in `dropped` and not
    /// numbered (no gap at the collector).
    pub fn append(&mut self, mut events: Vec<ChangeEvent>) -> Result<Vec<ChangeEvent>, SpoolError> {
        let fit = self.number(&mut events);
        self.dropped += (events.len() - fit) as u64;
        events.truncate(fit);
        self.append_numbered(&events)?;
        Ok(events)
    }

    /// Numbers `events` from the next sequence number on; returns how many of them (a prefix)
    /// fit in the spool. Nothing is written: see [`Spool::append_numbered`].
    pub fn number(&self, events: &mut [ChangeEvent]) -> usize {
        let mut size = self.size;
        for (i, ev) in events.iter_mut().enumerate() {
            ev.seq = self.next_seq + i as u64;
            size += (HEADER + serde_json::to_vec(&*ev).expect("events serialize").len()) as u64;
            if size > self.max {
                return i;
            }
        }
        events.len()
    }

    /// The highest sequence number ever spooled.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Appends events already numbered (by [`Spool::number`], or recovered from a saved outbox),
    /// one fsync for the lot. Numbers continue after the highest one appended.
    pub fn append_numbered(&mut self, events: &[ChangeEvent]) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        for ev in events {
            let payload = serde_json::to_vec(ev).expect("events serialize");
            buf.extend_from_slice(MAGIC);
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&checksum(&payload));
            buf.extend_from_slice(&payload);
            self.next_seq = self.next_seq.max(ev.seq + 1);
        }
        if !buf.is_empty() {
            self.file.write_all(&buf).map_err(err(&self.log))?;
            self.file.sync_data().map_err(err(&self.log))?;
            self.size += buf.len() as u64;
            self.pending.extend(events.iter().cloned());
        }
        Ok(())
    }

    /// Up to `n` events waiting to be sent, oldest first.
    pub fn peek(&self, n: usize) -> Vec<ChangeEvent> {
        self.pending.iter().take(n).cloned().collect()
    }

    /// Events waiting.
    pub fn depth(&self) -> u64 {
        self.pending.len() as u64
    }

    /// Highest acknowledged sequence number.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The collector acknowledged everything up to `seq`: forget it; empty the log when drained.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.acked {
            return Ok(());
        }
        while self.pending.front().is_some_and(|e| e.seq <= seq) {
            self.pending.pop_front();
        }
        self.acked = seq;
        write_atomic(&self.acked_path, seq.to_string().as_bytes())
            .map_err(err(&self.acked_path))?;
        if self.pending.is_empty() {
            self.file.set_len(0).map_err(err(&self.log))?;
            self.file.sync_all().map_err(err(&self.log))?;
            self.size = 0;
        }
        Ok(())
    }
}

pub use crate::util::fsutil::write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(path: &str) -> ChangeEvent {
        ChangeEvent {
            seq: 0,
            tree: "t".into(),
            path: path.into(),
            path_bytes: None,
            change: "added".into(),
            status: "unauthorized".into(),
            observed_at: "2026-11-21T00:00:00Z".into(),
            window_start: "2026-11-20T00:00:00Z".into(),
            blake3: None,
            previous_blake3: None,
            size: None,
            detail: None,
            resolves: None,
        }
    }

    #[test]
    fn survives_restart_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let kept = s.append(vec![ev("a"), ev("b"), ev("c")]).unwrap();
        assert_eq!(
            kept.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        s.ack(1).unwrap();
        drop(s);
        // A crash mid-write leaves half a record.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("spool.log"))
            .unwrap();
        f.write_all(b"DWS1\x40\x00\x00\x00garbage").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(s.recovered_tail > 0);
        assert_eq!(
            s.peek(10).iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2, 3]
        );
        s.ack(3).unwrap();
        assert_eq!(s.depth(), 0);
        let kept = s.append(vec![ev("d")]).unwrap();
        assert_eq!(kept[0].seq, 4, "numbers continue after the log was emptied");
        drop(s);
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            s.peek(10).iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![4]
        );
    }

    #[test]
    fn full_spool_drops_and_counts_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 600).unwrap();
        let kept = s
            .append((0..20).map(|i| ev(&format!("p{i}"))).collect())
            .unwrap();
        assert!(!kept.is_empty() && kept.len() < 20);
        assert_eq!(s.dropped, 20 - kept.len() as u64);
        let seqs: Vec<u64> = kept.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=kept.len() as u64).collect::<Vec<_>>());
    }
}
