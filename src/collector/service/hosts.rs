//! Hosts as the collector sees them, with the silence rule applied in one place.
//!
//! Invariant: a host is silent when it is still expected (not retired) and was last heard from
//! longer ago than `silent_after`; the API, the dashboard and `/metrics` all use [`is_silent`].

use jiff::Timestamp;
use serde::Serialize;

use super::{Service, ServiceError};
use crate::store::HostInfo;

/// A host and whether it is silent (the `/api/v1/hosts` rows).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostStatus {
    /// What the store knows.
    #[serde(flatten)]
    pub info: HostInfo,
    /// Not heard from within `silent_after` (and not retired).
    pub silent: bool,
}

/// Whether `h` is silent under a `silent_after` of `silent_after_secs`.
pub fn is_silent(h: &HostInfo, silent_after_secs: i64) -> bool {
    !h.retired && h.silent_for_seconds > silent_after_secs
}

impl Service {
    /// Every known host.
    pub fn hosts(&self, now: Timestamp) -> Result<Vec<HostInfo>, ServiceError> {
        Ok(self.store.hosts(now)?)
    }

    /// Every known host with its silence judged.
    pub fn host_status(&self, now: Timestamp) -> Result<Vec<HostStatus>, ServiceError> {
        Ok(self
            .hosts(now)?
            .into_iter()
            .map(|info| HostStatus {
                silent: self.is_silent(&info),
                info,
            })
            .collect())
    }

    /// Whether `h` is silent under this collector's `silent_after`.
    pub fn is_silent(&self, h: &HostInfo) -> bool {
        is_silent(h, self.cfg.silent_after.as_secs() as i64)
    }
}

impl Service {
    /// The latest scan of every (host, tree) received on `since` or later.
    pub fn latest_scans(
        &self,
        since: jiff::civil::Date,
    ) -> Result<Vec<crate::store::LatestScan>, ServiceError> {
        Ok(self.store.latest_scans(since)?)
    }
}
