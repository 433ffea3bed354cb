//! The KPI: request parsing (shared by the HTTP query, the CLI and the dashboard) and the rows.
//!
//! Invariant: the rows are always computed from `Store::host_days`, which seals finished days
//! into the chain first, so what a reader sees is what the audit chain holds.

use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::{Service, ServiceError};
use crate::kpi::{self, Grouping, HostDay, KpiRow, Period};

/// A resolved KPI request: dates (default: the last 30 days), period, groupings.
#[derive(Debug, Clone, PartialEq)]
pub struct KpiRequest {
    /// First day.
    pub from: Date,
    /// Last day.
    pub to: Date,
    /// Period.
    pub period: Period,
    /// Groupings.
    pub groupings: Vec<Grouping>,
    /// Only this host.
    pub host: Option<String>,
}

/// A KPI request as its callers spell it (the API's query, the CLI's flags): all text,
/// resolved against today by [`KpiRequest::from_query`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KpiQuery {
    /// First day (default: 29 days before `to`).
    pub from: Option<String>,
    /// Last day (default: today).
    pub to: Option<String>,
    /// `day`, `week` or `month` (default `day`).
    pub by: Option<String>,
    /// `fleet`, `environment` or `host` (default `host` with a host, else `fleet`).
    pub group: Option<String>,
    /// Only this host.
    pub host: Option<String>,
}

/// Parses an optional `YYYY-MM-DD` parameter, naming it when it is bad.
pub fn parse_date(name: &str, v: Option<&str>) -> Result<Option<Date>, ServiceError> {
    v.map(|s| {
        s.parse::<Date>().map_err(|e| {
            ServiceError::Invalid(format!("{name}: {s:?} is not a date like 2026-11-21 ({e})"))
        })
    })
    .transpose()
}

impl KpiRequest {
    /// Resolves a query against `today`, naming the bad parameter.
    pub fn from_query(q: &KpiQuery, today: Date) -> Result<KpiRequest, ServiceError> {
        KpiRequest::parse(
            q.from.as_deref(),
            q.to.as_deref(),
            q.by.as_deref(),
            q.group.as_deref(),
            q.host.clone(),
            today,
        )
    }

    /// Builds a request from optional textual parameters, naming the bad one.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        by: Option<&str>,
        group: Option<&str>,
        host: Option<String>,
        today: Date,
    ) -> Result<KpiRequest, ServiceError> {
        let to = parse_date("to", to)?.unwrap_or(today);
        let from = parse_date("from", from)?
            .unwrap_or_else(|| to.checked_sub(jiff::Span::new().days(29)).unwrap_or(to));
        if from > to {
            return Err(ServiceError::Invalid(format!(
                "from: {from} is after to {to}"
            )));
        }
        let period: Period = by
            .unwrap_or("day")
            .parse()
            .map_err(|e| ServiceError::Invalid(format!("by: {e}")))?;
        let groupings = match group.unwrap_or(if host.is_some() { "host" } else { "fleet" }) {
            "fleet" => vec![Grouping::Fleet],
            "environment" => vec![Grouping::Fleet, Grouping::Environment],
            "host" => vec![Grouping::Fleet, Grouping::Environment, Grouping::Host],
            other => {
                return Err(ServiceError::Invalid(format!(
                    "group: {other:?} is not fleet, environment or host"
                )));
            }
        };
        Ok(KpiRequest {
            from,
            to,
            period,
            groupings,
            host,
        })
    }
}

impl Service {
    /// The KPI rows a request asks for, against the configured target.
    pub fn kpi(&self, req: &KpiRequest) -> Result<Vec<KpiRow>, ServiceError> {
        let days = self.host_days(req.from, req.to, req.host.as_deref())?;
        Ok(self.kpi_rows(&days, req.period, &req.groupings))
    }

    /// Per-host per-day facts (sealing finished days first).
    pub fn host_days(
        &self,
        from: Date,
        to: Date,
        host: Option<&str>,
    ) -> Result<Vec<HostDay>, ServiceError> {
        Ok(self.store.host_days(from, to, host, Timestamp::now())?)
    }

    /// KPI rows of already fetched facts, against the configured target.
    pub fn kpi_rows(
        &self,
        days: &[HostDay],
        period: Period,
        groupings: &[Grouping],
    ) -> Vec<KpiRow> {
        kpi::compute(days, period, groupings, self.cfg.target)
    }

    /// Seals every finished day into the chained KPI rows (asking for today's facts seals what
    /// came before), so no reader waits for a backlog.
    pub fn seal_finished_days(&self) -> Result<(), ServiceError> {
        let today = self.today();
        self.host_days(today, today, None).map(|_| ())
    }
}
