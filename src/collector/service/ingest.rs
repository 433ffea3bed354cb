//! Events and heartbeats in (validated, stored, counted) and events out.
//!
//! Invariant: a batch is checked field by field before the store sees it, and every stored
//! batch and heartbeat moves the `/metrics` counters, whether it came over HTTP or from the
//! agent's embedded collector in the same process.

use std::sync::atomic::Ordering;

use jiff::Timestamp;

use super::{Service, ServiceError};
use crate::event::{EventBatch, Heartbeat, IngestResult};
use crate::judge::classify;
use crate::judge::manifest;
use crate::store::{EventQuery, HeartbeatOutcome, StoredEvent};
use crate::util::pathbytes::RelPath;
use crate::util::timefmt;

impl Service {
    /// Validates and stores a batch idempotently; returns what was stored (where alerts on
    /// unauthorized events will hook in).
    pub fn ingest(&self, batch: &EventBatch, now: Timestamp) -> Result<IngestResult, ServiceError> {
        validate_batch(batch)?;
        let result = self.store.ingest_alerting(batch, now, &*self.alerts)?;
        if !self.alerts.is_empty() && result.stored > 0 {
            self.alert_wake.notify_one();
        }
        let m = &self.metrics;
        m.batches.fetch_add(1, Ordering::Relaxed);
        m.events_received
            .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        m.events_stored.fetch_add(result.stored, Ordering::Relaxed);
        m.events_duplicate
            .fetch_add(result.duplicates, Ordering::Relaxed);
        m.events_rejected
            .fetch_add(result.rejected.len() as u64, Ordering::Relaxed);
        Ok(result)
    }

    /// Validates and notes a heartbeat; the `coverage` and spool-drop alerts (§12.3) it causes
    /// are enqueued in its transaction. The outcome says whether the host's coverage changed.
    pub fn heartbeat(
        &self,
        hb: &Heartbeat,
        now: Timestamp,
    ) -> Result<HeartbeatOutcome, ServiceError> {
        validate_heartbeat(hb)?;
        let outcome = self
            .store
            .record_heartbeat_alerting(hb, now, &*self.alerts)?;
        if !self.alerts.is_empty() {
            self.alert_wake.notify_one();
        }
        self.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
        Ok(outcome)
    }

    /// Stored events matching `q`.
    pub fn events(&self, q: &EventQuery) -> Result<Vec<StoredEvent>, ServiceError> {
        let mut events = self.store.events(q)?;
        // Only worth reading the change log when some event was authorized by an entry.
        let by_entry = |s: &str| {
            s.strip_prefix("change:")
                .or_else(|| s.strip_prefix("retroactive:"))
                .map(str::to_string)
        };
        if events.iter().any(|e| by_entry(&e.status).is_some()) {
            let approvers: std::collections::HashMap<String, String> = self
                .changes()?
                .into_iter()
                .filter_map(|c| Some((c.id, c.verified_approver?)))
                .collect();
            for e in &mut events {
                if let Some(id) = by_entry(&e.status) {
                    e.verified_approver = approvers.get(&id).cloned();
                }
            }
        }
        Ok(events)
    }
}

fn invalid(field: impl std::fmt::Display, message: impl std::fmt::Display) -> ServiceError {
    ServiceError::Invalid(format!("{field}: {message}"))
}

/// Checks every field of a batch; the error names the first bad one.
pub fn validate_batch(b: &EventBatch) -> Result<(), ServiceError> {
    if b.host.trim().is_empty() {
        return Err(invalid("host", "must not be empty"));
    }
    for (i, e) in b.events.iter().enumerate() {
        let at = |f: &str| format!("events[{i}].{f}");
        if e.seq == 0 {
            return Err(invalid(at("seq"), "sequence numbers start at 1"));
        }
        if e.tree.is_empty() {
            return Err(invalid(at("tree"), "must not be empty"));
        }
        // `.` alone is the tree itself (an agent whose tree root leads nowhere).
        if !(e.path == "." && e.path_bytes.is_none()) {
            RelPath::from_json(&e.path, e.path_bytes.as_deref())
                .map_err(|m| invalid(at("path"), m))?;
        }
        if !["added", "removed", "modified", "metadata", "type_changed"]
            .contains(&e.change.as_str())
        {
            return Err(invalid(
                at("change"),
                format!("unknown change kind {:?}", e.change),
            ));
        }
        if e.status != "resolved" {
            e.status
                .parse::<classify::Status>()
                .map_err(|m| invalid(at("status"), m))?;
        } else if e.resolves.is_none() {
            return Err(invalid(
                at("resolves"),
                "a resolved record needs `resolves`",
            ));
        }
        for (f, v) in [
            ("observed_at", &e.observed_at),
            ("window_start", &e.window_start),
        ] {
            timefmt::parse_timestamp(v).map_err(|m| invalid(at(f), m))?;
        }
        for (f, v) in [
            ("blake3", &e.blake3),
            ("previous_blake3", &e.previous_blake3),
        ] {
            if let Some(h) = v {
                manifest::parse_hash(h).map_err(|m| invalid(at(f), m))?;
            }
        }
    }
    for (i, s) in b.scans.iter().enumerate() {
        if s.vetted > s.paths {
            return Err(invalid(format!("scans[{i}].vetted"), "larger than paths"));
        }
        timefmt::parse_timestamp(&s.finished_at)
            .map_err(|m| invalid(format!("scans[{i}].finished_at"), m))?;
    }
    Ok(())
}

/// Checks a heartbeat (its shape was checked when it was parsed).
pub fn validate_heartbeat(hb: &Heartbeat) -> Result<(), ServiceError> {
    if hb.host.trim().is_empty() {
        return Err(invalid("host", "must not be empty"));
    }
    Ok(())
}
