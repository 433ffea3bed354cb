//! The tamper-evident history: verifying the chain, and signed checkpoints of its head.
//!
//! A checkpoint (`audit seal`) records how many records the chain had and the hash of the last;
//! kept off the collector's box, it catches a history rewritten consistently from scratch, which
//! the chain alone cannot. Invariants: a broken history is never sealed; a checkpoint is only
//! read after its signature verified; a history is intact against a checkpoint only when it
//! still has at least as many records and record `records` still has the sealed hash.

use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Service, ServiceError};
use crate::sign::{self, TrustedKey};
use crate::store::ChainReport;
use crate::util::timefmt;

/// The checkpoint file's `format`.
pub const CHECKPOINT_FORMAT: &str = "driftwatch.checkpoint.v1";

/// A sealed chain head (fields in file order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Always [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// Records in the chain when sealed.
    pub records: u64,
    /// Hash of the last of them.
    pub head: String,
    /// When it was sealed.
    pub sealed_at: String,
}

/// The outcome of `audit verify`, optionally against a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// No record is out of place (and the checkpoint, if any, is extended).
    pub intact: bool,
    /// Records checked.
    pub records: u64,
    /// Head after the walk.
    pub head: String,
    /// The first problem, described for people.
    pub first_bad: Option<String>,
    /// Records the checkpoint sealed, when one was given.
    pub checkpoint: Option<u64>,
}

impl Checkpoint {
    /// Seals the head of an intact chain.
    pub fn seal(report: &ChainReport, now: Timestamp) -> Result<Checkpoint, ServiceError> {
        if let Some(bad) = &report.first_bad {
            return Err(ServiceError::Refused(format!(
                "refusing to seal a broken history: {bad}"
            )));
        }
        Ok(Checkpoint {
            format: CHECKPOINT_FORMAT.into(),
            records: report.records,
            head: report.head.clone(),
            sealed_at: timefmt::format_timestamp(now),
        })
    }

    /// The file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a checkpoint serializes") + "\n"
    }

    /// Verifies the signature of a checkpoint file's `bytes` against `keys`, then reads it.
    pub fn open(
        bytes: &[u8],
        path: &Path,
        keys: &[TrustedKey],
    ) -> Result<Checkpoint, ServiceError> {
        sign::verify_bytes(bytes, path, keys)?;
        let bad = |message: String| ServiceError::Checkpoint {
            path: path.display().to_string(),
            message,
        };
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a checkpoint: {e}")))?;
        if v["format"] != CHECKPOINT_FORMAT {
            return Err(bad(format!("format: not {CHECKPOINT_FORMAT}")));
        }
        let records = v["records"]
            .as_u64()
            .ok_or_else(|| bad("records: missing".into()))?;
        let head = v["head"]
            .as_str()
            .ok_or_else(|| bad("head: missing".into()))?
            .to_string();
        Ok(Checkpoint {
            format: CHECKPOINT_FORMAT.into(),
            records,
            head,
            sealed_at: v["sealed_at"].as_str().unwrap_or_default().to_string(),
        })
    }
}

/// Judges a chain walk (asked with `at = checkpoint.records`) against an optional checkpoint.
pub fn verdict(report: ChainReport, checkpoint: Option<&Checkpoint>) -> Verification {
    let mut first_bad = report.first_bad;
    if first_bad.is_none()
        && let Some(cp) = checkpoint
    {
        let n = cp.records;
        match &report.hash_at {
            _ if report.records < n => {
                first_bad = Some(format!(
                    "the history has {} records but the checkpoint sealed {n}: records were deleted",
                    report.records
                ))
            }
            Some((_, got)) if *got == cp.head => {}
            _ => {
                first_bad = Some(format!(
                    "record {n} no longer has the hash the checkpoint sealed: the history was rewritten up to or before it"
                ))
            }
        }
    }
    Verification {
        intact: first_bad.is_none(),
        records: report.records,
        head: report.head,
        first_bad,
        checkpoint: checkpoint.map(|c| c.records),
    }
}

impl Service {
    /// Walks the whole chain; `at` asks for the hash of that record too (for checkpoints).
    pub fn verify_chain(&self, at: Option<u64>) -> Result<ChainReport, ServiceError> {
        Ok(self.store.verify_chain(at)?)
    }

    /// Verifies the history, against a checkpoint when one is given.
    pub fn verify(&self, checkpoint: Option<&Checkpoint>) -> Result<Verification, ServiceError> {
        let report = self.verify_chain(checkpoint.map(|c| c.records))?;
        Ok(verdict(report, checkpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(records: u64, hash_at: Option<(u64, &str)>) -> ChainReport {
        ChainReport {
            records,
            head: "h".repeat(64),
            first_bad: None,
            hash_at: hash_at.map(|(n, h)| (n, h.to_string())),
        }
    }

    fn cp(records: u64, head: &str) -> Checkpoint {
        Checkpoint {
            format: CHECKPOINT_FORMAT.into(),
            records,
            head: head.into(),
            sealed_at: String::new(),
        }
    }

    #[test]
    fn a_grown_history_extends_its_checkpoint() {
        let v = verdict(report(5, Some((3, "abc"))), Some(&cp(3, "abc")));
        assert!(v.intact, "{v:?}");
        assert_eq!(v.checkpoint, Some(3));
    }

    #[test]
    fn deleted_and_rewritten_records_break_the_checkpoint() {
        let v = verdict(report(2, None), Some(&cp(3, "abc")));
        assert!(v.first_bad.unwrap().contains("records were deleted"));
        let v = verdict(report(5, Some((3, "xyz"))), Some(&cp(3, "abc")));
        assert!(v.first_bad.unwrap().contains("rewritten"));
    }

    #[test]
    fn a_broken_history_is_not_sealed() {
        let mut r = report(1, None);
        r.first_bad = Some("record 1 edited".into());
        let e = Checkpoint::seal(&r, Timestamp::now()).unwrap_err();
        assert!(e.to_string().contains("refusing to seal"), "{e}");
        let ok = Checkpoint::seal(&report(4, None), Timestamp::UNIX_EPOCH).unwrap();
        let text = ok.to_json();
        // The keys in the order the file has always had.
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
            .collect();
        assert_eq!(keys, ["format", "records", "head", "sealed_at"]);
    }
}
