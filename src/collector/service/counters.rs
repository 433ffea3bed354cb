//! The `/metrics` counters: moved by the service (so every way in is counted) and by the HTTP
//! layer (rate limiting); read by the exposition in `collector::metrics`.

use std::sync::atomic::AtomicU64;

/// Counters of what came in and what was refused.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Event batches accepted.
    pub batches: AtomicU64,
    /// Events received (including duplicates and replays).
    pub events_received: AtomicU64,
    /// Events stored.
    pub events_stored: AtomicU64,
    /// Re-sent events acknowledged without storing.
    pub events_duplicate: AtomicU64,
    /// Replays refused.
    pub events_rejected: AtomicU64,
    /// Heartbeats.
    pub heartbeats: AtomicU64,
    /// Requests refused with 429.
    pub rate_limited: AtomicU64,
}
