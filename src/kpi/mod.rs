//! Compliance KPIs (DESIGN §7): pure arithmetic over per-host, per-day facts.
//!
//! The store buckets events and heartbeats into civil days in the configured timezone and hands
//! us one [`HostDay`] per host and day. Here we only roll those up into periods and groupings and
//! format the result, with no I/O and no clock, so every number can be checked by hand.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

/// The CSV header line of DESIGN §7, without the line break.
pub const CSV_HEADER: &str = "period,environment,host,changes,authorized,retroactive,\
unauthorized,unverifiable,change_compliance,host_days,host_days_compliant,silent_host_days,\
host_day_compliance,vetted_ratio,target,met";

/// One host's facts for one civil day.
///
/// Counts must satisfy `authorized + unauthorized + unverifiable == changes` and
/// `retroactive <= authorized`; debug builds check this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDay {
    /// The civil day, in the timezone the store chose.
    pub day: Date,
    /// The host's name as its agent reports it.
    pub host: String,
    /// The environment the host belonged to that day.
    pub environment: String,
    /// The host was expected to report that day (first heartbeat ≤ day, token not revoked).
    pub expected: bool,
    /// A heartbeat or report arrived that day.
    pub reported: bool,
    /// Counted changes (status other than `excluded`) first seen that day.
    pub changes: u64,
    /// Changes with status `release:`, `change:` or `retroactive:`.
    pub authorized: u64,
    /// The part of `authorized` approved after the fact.
    pub retroactive: u64,
    /// Changes with status `unauthorized`.
    pub unauthorized: u64,
    /// Changes with status `unverifiable`.
    pub unverifiable: u64,
    /// End-of-day `(vetted, total)` paths summed over the host's trees; `None` = no scan that day.
    pub vetted_paths: Option<(u64, u64)>,
}

/// How much time one KPI row covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// A civil day, labelled `2026-11-21`.
    Day,
    /// An ISO 8601 week (Monday to Sunday), labelled `2026-W47`.
    Week,
    /// A calendar month, labelled `2026-11`.
    Month,
}

/// Identifies the period containing a date as (year, month or ISO week, day or 0).
///
/// Tuples order chronologically within one kind of period, and unlike labels they keep doing so
/// for any year jiff can represent.
type PeriodKey = (i16, i8, i8);

impl Period {
    /// The label of the period containing `date`, e.g. `2026-11-21`, `2026-W47` or `2026-11`.
    pub fn label(self, date: Date) -> String {
        self.key_label(self.key(date))
    }

    fn key(self, date: Date) -> PeriodKey {
        match self {
            Period::Day => (date.year(), date.month(), date.day()),
            // The ISO week-year, not the calendar year: 2027-01-01 is in 2026-W53.
            Period::Week => {
                let week = date.iso_week_date();
                (week.year(), week.week(), 0)
            }
            Period::Month => (date.year(), date.month(), 0),
        }
    }

    fn key_label(self, (year, number, day): PeriodKey) -> String {
        match self {
            Period::Day => format!("{year:04}-{number:02}-{day:02}"),
            Period::Week => format!("{year:04}-W{number:02}"),
            Period::Month => format!("{year:04}-{number:02}"),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        })
    }
}

/// A period name other than `day`, `week` or `month`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown KPI period {0:?}: expected day, week or month")]
pub struct ParsePeriodError(String);

impl FromStr for Period {
    type Err = ParsePeriodError;

    fn from_str(s: &str) -> Result<Period, ParsePeriodError> {
        match s {
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            "month" => Ok(Period::Month),
            _ => Err(ParsePeriodError(s.to_string())),
        }
    }
}

/// Which population one KPI row sums over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grouping {
    /// Every host: `*` in environment and host.
    Fleet,
    /// The hosts of one environment: `*` in host.
    Environment,
    /// One host in one environment.
    Host,
}

impl Grouping {
    /// Every grouping, for the full table.
    pub const ALL: [Grouping; 3] = [Grouping::Fleet, Grouping::Environment, Grouping::Host];
}

/// One KPI row; fields and their order are the CSV columns of DESIGN §7.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KpiRow {
    /// The period label: `2026-11-21`, `2026-W47` or `2026-11`.
    pub period: String,
    /// The environment, or `*` for a fleet row.
    pub environment: String,
    /// The host, or `*` for a fleet or environment row.
    pub host: String,
    /// Counted changes first seen in the period.
    pub changes: u64,
    /// Changes with status release, change or retroactive.
    pub authorized: u64,
    /// Authorized changes approved after the fact.
    pub retroactive: u64,
    /// Changes nobody approved.
    pub unauthorized: u64,
    /// Changes that could not be read or hashed.
    pub unverifiable: u64,
    /// `authorized / changes`, 1.0 without changes: the headline KPI.
    pub change_compliance: f64,
    /// Host-days on which a host was expected to report.
    pub host_days: u64,
    /// Expected host-days that reported with no unauthorized or unverifiable change.
    pub host_days_compliant: u64,
    /// Expected host-days without a heartbeat or report.
    pub silent_host_days: u64,
    /// `host_days_compliant / host_days`, 1.0 without expected host-days.
    pub host_day_compliance: f64,
    /// Vetted paths over all paths at end of day, weighted by path count; `None` without scans.
    pub vetted_ratio: Option<f64>,
    /// The change-compliance target the row is judged against.
    pub target: f64,
    /// `change_compliance >= target`.
    pub met: bool,
}

/// Rolls `days` up into one row per period and per group of each of `groupings`.
///
/// Rows come sorted by period, then environment, then host, with `*` before any name: each
/// period opens with its fleet row, and each environment's row comes right before its hosts'
/// rows, like subtotals. Names sort by byte value. A host that moved environment within a period
/// gets one host row per environment. Only periods with at least one `HostDay` get rows, so the
/// store should send a `HostDay` (reported or not) for every expected host on every day.
pub fn compute(
    days: &[HostDay],
    period: Period,
    groupings: &[Grouping],
    target: f64,
) -> Vec<KpiRow> {
    // A grouping asked for twice must not count every host-day twice.
    let mut groupings = groupings.to_vec();
    groupings.sort();
    groupings.dedup();

    // `None` stands for `*`: it sorts before every name and cannot collide with a host called
    // "*". Keys borrow from `days`, which keeps a year of a large fleet free of allocations.
    let mut tallies: BTreeMap<(PeriodKey, Option<&str>, Option<&str>), Tally> = BTreeMap::new();
    for day in days {
        let when = period.key(day.day);
        let env = Some(day.environment.as_str());
        for grouping in &groupings {
            let (env, host) = match grouping {
                Grouping::Fleet => (None, None),
                Grouping::Environment => (env, None),
                Grouping::Host => (env, Some(day.host.as_str())),
            };
            tallies.entry((when, env, host)).or_default().add(day);
        }
    }
    tallies
        .into_iter()
        .map(|((when, env, host), tally)| {
            let (env, host) = (env.unwrap_or("*"), host.unwrap_or("*"));
            tally.row(period.key_label(when), env, host, target)
        })
        .collect()
}

/// Running sums for one row.
#[derive(Default)]
struct Tally {
    changes: u64,
    authorized: u64,
    retroactive: u64,
    unauthorized: u64,
    unverifiable: u64,
    host_days: u64,
    host_days_compliant: u64,
    silent_host_days: u64,
    /// Summed `(vetted, total)` paths; stays `None` until a host-day with a scan arrives.
    paths: Option<(u64, u64)>,
}

impl Tally {
    fn add(&mut self, day: &HostDay) {
        debug_assert_eq!(
            day.authorized + day.unauthorized + day.unverifiable,
            day.changes,
            "every counted change has exactly one status: {day:?}"
        );
        debug_assert!(day.retroactive <= day.authorized, "{day:?}");

        // Changes count even on a day the host was not expected (a late report after the token
        // was revoked): the change happened all the same.
        self.changes += day.changes;
        self.authorized += day.authorized;
        self.retroactive += day.retroactive;
        self.unauthorized += day.unauthorized;
        self.unverifiable += day.unverifiable;

        if day.expected {
            self.host_days += 1;
            if !day.reported {
                // Silence is not compliance: we cannot know what happened on that host.
                self.silent_host_days += 1;
            } else if day.unauthorized == 0 && day.unverifiable == 0 {
                self.host_days_compliant += 1;
            }
        }

        if let Some((vetted, total)) = day.vetted_paths {
            let paths = self.paths.get_or_insert((0, 0));
            paths.0 += vetted;
            paths.1 += total;
        }
    }

    fn row(&self, period: String, environment: &str, host: &str, target: f64) -> KpiRow {
        let change_compliance = ratio(self.authorized, self.changes);
        KpiRow {
            period,
            environment: environment.to_string(),
            host: host.to_string(),
            changes: self.changes,
            authorized: self.authorized,
            retroactive: self.retroactive,
            unauthorized: self.unauthorized,
            unverifiable: self.unverifiable,
            change_compliance,
            host_days: self.host_days,
            host_days_compliant: self.host_days_compliant,
            silent_host_days: self.silent_host_days,
            host_day_compliance: ratio(self.host_days_compliant, self.host_days),
            // Empty trees leave nothing unvetted, hence 1.0 for 0 of 0 paths.
            vetted_ratio: self.paths.map(|(vetted, total)| ratio(vetted, total)),
            target,
            met: change_compliance >= target,
        }
    }
}

/// `part / whole`, where an empty whole counts as fully compliant.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

/// Renders `rows` as CSV: the DESIGN §7 header, then one line per row, each ending in `\n`.
///
/// Ratios have exactly 4 decimal places, `met` is `true`/`false` and a missing `vetted_ratio` is
/// an empty field.
pub fn to_csv(rows: &[KpiRow]) -> String {
    let mut out = String::with_capacity((rows.len() + 1) * 96);
    out.push_str(CSV_HEADER);
    out.push('\n');
    for r in rows {
        let vetted = r
            .vetted_ratio
            .map(|v| format!("{v:.4}"))
            .unwrap_or_default();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{:.4},{},{},{},{:.4},{},{:.4},{}",
            csv_field(&r.period),
            csv_field(&r.environment),
            csv_field(&r.host),
            r.changes,
            r.authorized,
            r.retroactive,
            r.unauthorized,
            r.unverifiable,
            r.change_compliance,
            r.host_days,
            r.host_days_compliant,
            r.silent_host_days,
            r.host_day_compliance,
            vetted,
            r.target,
            r.met,
        );
    }
    out
}

/// Quotes a field (RFC 4180) when it holds a comma, a quote or a line break.
///
/// Host and environment names come from agents, so they can hold anything.
pub fn csv_field(field: &str) -> Cow<'_, str> {
    if field.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", field.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(field)
    }
}

/// Renders `rows` as an aligned table for a terminal, percentages with one decimal.
///
/// The last column says `ok` or `MISS` against the target. With no rows, only the header.
pub fn render_table(rows: &[KpiRow]) -> String {
    const HEADER: [&str; 14] = [
        "PERIOD",
        "ENVIRONMENT",
        "HOST",
        "CHANGES",
        "AUTHORIZED",
        "RETROACTIVE",
        "UNAUTHORIZED",
        "UNVERIFIABLE",
        "COMPLIANCE",
        "HOST-DAYS",
        "SILENT",
        "HOST-DAYS OK",
        "VETTED",
        "TARGET",
    ];
    // Numbers align right so their digits line up; names align left.
    const RIGHT: [bool; 14] = [
        false, false, false, true, true, true, true, true, true, true, true, true, true, false,
    ];

    let mut lines = vec![HEADER.map(String::from)];
    lines.extend(rows.iter().map(|r| {
        let marker = if r.met { "ok" } else { "MISS" };
        [
            printable(&r.period),
            printable(&r.environment),
            printable(&r.host),
            r.changes.to_string(),
            r.authorized.to_string(),
            r.retroactive.to_string(),
            r.unauthorized.to_string(),
            r.unverifiable.to_string(),
            percent(r.change_compliance),
            r.host_days.to_string(),
            r.silent_host_days.to_string(),
            percent(r.host_day_compliance),
            r.vetted_ratio.map_or_else(|| "-".to_string(), percent),
            format!("{marker} {}", percent(r.target)),
        ]
    }));

    // Counting chars, not bytes, keeps non-ASCII names aligned (wide CJK glyphs aside).
    let mut widths = [0; 14];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            let width = widths[i];
            let _ = match (i, RIGHT[i]) {
                (0, _) => write!(text, "{cell:<width$}"),
                (_, true) => write!(text, "  {cell:>width$}"),
                (_, false) => write!(text, "  {cell:<width$}"),
            };
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// Formats a ratio as a percentage with one decimal, e.g. `96.5%`.
fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

/// Escapes control characters so that a hostile host name cannot drive the reader's terminal.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    /// A host-day; `counts` is (changes, authorized, retroactive, unauthorized, unverifiable).
    fn hd(
        day: Date,
        host: &str,
        environment: &str,
        (expected, reported): (bool, bool),
        (changes, authorized, retroactive, unauthorized, unverifiable): (u64, u64, u64, u64, u64),
        vetted_paths: Option<(u64, u64)>,
    ) -> HostDay {
        HostDay {
            day,
            host: host.to_string(),
            environment: environment.to_string(),
            expected,
            reported,
            changes,
            authorized,
            retroactive,
            unauthorized,
            unverifiable,
            vetted_paths,
        }
    }

    const SEEN: (bool, bool) = (true, true);
    const QUIET: (u64, u64, u64, u64, u64) = (0, 0, 0, 0, 0);

    /// Three hosts over five days, Saturday 2026-11-28 to Wednesday 2026-12-02: the days span
    /// ISO weeks 48 and 49 and the months November and December, split differently.
    ///
    /// - web1 (prod): a release of 4 files on 11-28; an unauthorized change on 12-01, still open
    ///   (one path not vetted) on 12-02.
    /// - web2 (prod): 2 authorized changes on 11-29, one approved after the fact; silent 11-30.
    /// - stg1 (staging): first heartbeat 11-29; token revoked 12-02, when a late report still
    ///   brought one unverifiable change.
    fn example() -> Vec<HostDay> {
        let (d28, d29, d30) = (date(2026, 11, 28), date(2026, 11, 29), date(2026, 11, 30));
        let (d01, d02) = (date(2026, 12, 1), date(2026, 12, 2));
        let full = Some((1000, 1000));
        let stg = Some((500, 500));
        vec![
            hd(d28, "web1", "prod", SEEN, (4, 4, 0, 0, 0), full),
            hd(d28, "web2", "prod", SEEN, QUIET, full),
            hd(d28, "stg1", "staging", (false, false), QUIET, None),
            hd(d29, "web1", "prod", SEEN, QUIET, full),
            hd(d29, "web2", "prod", SEEN, (2, 2, 1, 0, 0), full),
            hd(d29, "stg1", "staging", SEEN, QUIET, stg),
            hd(d30, "web1", "prod", SEEN, QUIET, full),
            hd(d30, "web2", "prod", (true, false), QUIET, None),
            hd(d30, "stg1", "staging", SEEN, QUIET, stg),
            hd(
                d01,
                "web1",
                "prod",
                SEEN,
                (1, 0, 0, 1, 0),
                Some((999, 1000)),
            ),
            hd(d01, "web2", "prod", SEEN, QUIET, full),
            hd(d01, "stg1", "staging", SEEN, QUIET, stg),
            hd(d02, "web1", "prod", SEEN, QUIET, Some((999, 1000))),
            hd(d02, "web2", "prod", SEEN, QUIET, full),
            hd(
                d02,
                "stg1",
                "staging",
                (false, true),
                (1, 0, 0, 0, 1),
                Some((499, 500)),
            ),
        ]
    }

    /// CSV body lines (no header) for `example()` at `period` and `groupings`, target 97%.
    fn example_csv(period: Period, groupings: &[Grouping]) -> Vec<String> {
        let csv = to_csv(&compute(&example(), period, groupings, 0.97));
        let mut lines = csv.lines().map(String::from);
        assert_eq!(lines.next().as_deref(), Some(CSV_HEADER));
        lines.collect()
    }

    // Expected lines worked out by hand from the description of `example()`. Columns:
    // period,env,host,changes,auth,retro,unauth,unverif,change_compl,host_days,compliant,silent,
    // host_day_compl,vetted,target,met

    #[test]
    fn example_by_day_fleet() {
        assert_eq!(
            example_csv(Period::Day, &[Grouping::Fleet]),
            [
                // 2 expected (stg1 not yet), 4 released changes.
                "2026-11-28,*,*,4,4,0,0,0,1.0000,2,2,0,1.0000,1.0000,0.9700,true",
                "2026-11-29,*,*,2,2,1,0,0,1.0000,3,3,0,1.0000,1.0000,0.9700,true",
                // web2 silent: 2 of 3; no scan from web2, so 1500 of 1500 paths.
                "2026-11-30,*,*,0,0,0,0,0,1.0000,3,2,1,0.6667,1.0000,0.9700,true",
                // web1 unauthorized: 2 of 3; 2499 of 2500 paths.
                "2026-12-01,*,*,1,0,0,1,0,0.0000,3,2,0,0.6667,0.9996,0.9700,false",
                // stg1 no longer expected, but its change counts; 2498 of 2500 paths.
                "2026-12-02,*,*,1,0,0,0,1,0.0000,2,2,0,1.0000,0.9992,0.9700,false",
            ]
        );
    }

    #[test]
    fn example_by_week_all_groupings() {
        assert_eq!(
            example_csv(Period::Week, &Grouping::ALL),
            [
                // W48 = 11-28, 11-29.
                "2026-W48,*,*,6,6,1,0,0,1.0000,5,5,0,1.0000,1.0000,0.9700,true",
                "2026-W48,prod,*,6,6,1,0,0,1.0000,4,4,0,1.0000,1.0000,0.9700,true",
                "2026-W48,prod,web1,4,4,0,0,0,1.0000,2,2,0,1.0000,1.0000,0.9700,true",
                "2026-W48,prod,web2,2,2,1,0,0,1.0000,2,2,0,1.0000,1.0000,0.9700,true",
                "2026-W48,staging,*,0,0,0,0,0,1.0000,1,1,0,1.0000,1.0000,0.9700,true",
                "2026-W48,staging,stg1,0,0,0,0,0,1.0000,1,1,0,1.0000,1.0000,0.9700,true",
                // W49 = 11-30, 12-01, 12-02. Fleet paths: 6497 of 6500.
                "2026-W49,*,*,2,0,0,1,1,0.0000,8,6,1,0.7500,0.9995,0.9700,false",
                // prod paths: 1000 + 1999 + 1999 of 5000.
                "2026-W49,prod,*,1,0,0,1,0,0.0000,6,4,1,0.6667,0.9996,0.9700,false",
                "2026-W49,prod,web1,1,0,0,1,0,0.0000,3,2,0,0.6667,0.9993,0.9700,false",
                "2026-W49,prod,web2,0,0,0,0,0,1.0000,3,2,1,0.6667,1.0000,0.9700,true",
                "2026-W49,staging,*,1,0,0,0,1,0.0000,2,2,0,1.0000,0.9993,0.9700,false",
                "2026-W49,staging,stg1,1,0,0,0,1,0.0000,2,2,0,1.0000,0.9993,0.9700,false",
            ]
        );
    }

    #[test]
    fn example_by_month_all_groupings() {
        assert_eq!(
            example_csv(Period::Month, &Grouping::ALL),
            [
                "2026-11,*,*,6,6,1,0,0,1.0000,8,7,1,0.8750,1.0000,0.9700,true",
                "2026-11,prod,*,6,6,1,0,0,1.0000,6,5,1,0.8333,1.0000,0.9700,true",
                "2026-11,prod,web1,4,4,0,0,0,1.0000,3,3,0,1.0000,1.0000,0.9700,true",
                "2026-11,prod,web2,2,2,1,0,0,1.0000,3,2,1,0.6667,1.0000,0.9700,true",
                "2026-11,staging,*,0,0,0,0,0,1.0000,2,2,0,1.0000,1.0000,0.9700,true",
                "2026-11,staging,stg1,0,0,0,0,0,1.0000,2,2,0,1.0000,1.0000,0.9700,true",
                // Fleet paths: 4997 of 5000.
                "2026-12,*,*,2,0,0,1,1,0.0000,5,4,0,0.8000,0.9994,0.9700,false",
                "2026-12,prod,*,1,0,0,1,0,0.0000,4,3,0,0.7500,0.9995,0.9700,false",
                "2026-12,prod,web1,1,0,0,1,0,0.0000,2,1,0,0.5000,0.9990,0.9700,false",
                "2026-12,prod,web2,0,0,0,0,0,1.0000,2,2,0,1.0000,1.0000,0.9700,true",
                "2026-12,staging,*,1,0,0,0,1,0.0000,1,1,0,1.0000,0.9990,0.9700,false",
                "2026-12,staging,stg1,1,0,0,0,1,0.0000,1,1,0,1.0000,0.9990,0.9700,false",
            ]
        );
    }

    #[test]
    fn example_by_day_per_environment_and_host() {
        // Only 11-28: stg1 was not expected and had no scan, so its vetted ratio is empty.
        let lines = example_csv(Period::Day, &[Grouping::Environment, Grouping::Host]);
        assert_eq!(
            lines[..4],
            [
                "2026-11-28,prod,*,4,4,0,0,0,1.0000,2,2,0,1.0000,1.0000,0.9700,true",
                "2026-11-28,prod,web1,4,4,0,0,0,1.0000,1,1,0,1.0000,1.0000,0.9700,true",
                "2026-11-28,prod,web2,0,0,0,0,0,1.0000,1,1,0,1.0000,1.0000,0.9700,true",
                "2026-11-28,staging,*,0,0,0,0,0,1.0000,0,0,0,1.0000,,0.9700,true",
            ]
        );
        assert_eq!(lines.len(), 5 * 5, "5 days × (2 environments + 3 hosts)");
    }

    #[test]
    fn example_ratios_are_exact() {
        // The CSV rounds; the rows themselves carry the exact quotients.
        let rows = compute(&example(), Period::Week, &[Grouping::Fleet], 0.97);
        let w49 = &rows[1];
        assert_eq!(w49.period, "2026-W49");
        assert_eq!(w49.host_day_compliance, 6.0 / 8.0);
        assert_eq!(w49.vetted_ratio, Some(6497.0 / 6500.0));

        let rows = compute(&example(), Period::Month, &[Grouping::Host], 0.97);
        let web2_nov = rows
            .iter()
            .find(|r| r.period == "2026-11" && r.host == "web2")
            .unwrap();
        assert_eq!(web2_nov.host_day_compliance, 2.0 / 3.0);
    }

    #[test]
    fn grouping_order_and_repeats_do_not_matter() {
        let days = example();
        let once = compute(&days, Period::Month, &Grouping::ALL, 0.97);
        let jumbled = [
            Grouping::Host,
            Grouping::Fleet,
            Grouping::Host,
            Grouping::Environment,
        ];
        assert_eq!(compute(&days, Period::Month, &jumbled, 0.97), once);
    }

    #[test]
    fn empty_input() {
        assert!(compute(&[], Period::Day, &Grouping::ALL, 0.97).is_empty());
        assert!(compute(&example(), Period::Day, &[], 0.97).is_empty());
        assert_eq!(to_csv(&[]), format!("{CSV_HEADER}\n"));
        assert_eq!(render_table(&[]).lines().count(), 1);
    }

    #[test]
    fn no_changes_is_compliant() {
        let day = date(2026, 11, 21);
        let cases = [
            // (host-day, change_compliance, host_day_compliance, met)
            (hd(day, "a", "prod", SEEN, QUIET, None), 1.0, 1.0, true),
            // Not expected, nothing reported: no host-days, still nothing wrong.
            (
                hd(day, "a", "prod", (false, false), QUIET, None),
                1.0,
                1.0,
                true,
            ),
            // Silent: change compliance holds, host-day compliance does not.
            (
                hd(day, "a", "prod", (true, false), QUIET, None),
                1.0,
                0.0,
                true,
            ),
        ];
        for (day, change, host_day, met) in cases {
            let rows = compute(
                std::slice::from_ref(&day),
                Period::Day,
                &[Grouping::Fleet],
                0.97,
            );
            let row = &rows[0];
            assert_eq!(row.change_compliance, change, "{day:?}");
            assert_eq!(row.host_day_compliance, host_day, "{day:?}");
            assert_eq!(row.met, met, "{day:?}");
            assert_eq!(row.vetted_ratio, None, "{day:?}");
        }
    }

    #[test]
    fn met_is_inclusive() {
        // 97 of 100 is exactly 0.97, which meets a 0.97 target.
        let day = hd(
            date(2026, 11, 21),
            "a",
            "prod",
            SEEN,
            (100, 97, 0, 3, 0),
            None,
        );
        let rows = compute(&[day], Period::Day, &[Grouping::Fleet], 0.97);
        assert_eq!(rows[0].change_compliance, 0.97);
        assert!(rows[0].met);
    }

    #[test]
    fn period_labels() {
        let cases = [
            (date(2026, 11, 21), Period::Day, "2026-11-21"),
            (date(2026, 11, 21), Period::Week, "2026-W47"),
            (date(2026, 11, 21), Period::Month, "2026-11"),
            // 2026 starts on a Thursday, so it has 53 ISO weeks, and the last one runs into 2027.
            (date(2026, 12, 31), Period::Week, "2026-W53"),
            (date(2027, 1, 1), Period::Week, "2026-W53"),
            (date(2027, 1, 3), Period::Week, "2026-W53"),
            (date(2027, 1, 4), Period::Week, "2027-W01"),
            // And the other way: Monday 2024-12-30 is in the first week of 2025.
            (date(2024, 12, 30), Period::Week, "2025-W01"),
            (date(2027, 1, 1), Period::Month, "2027-01"),
            (date(2027, 1, 1), Period::Day, "2027-01-01"),
        ];
        for (day, period, label) in cases {
            assert_eq!(period.label(day), label, "{period} of {day}");
        }
    }

    #[test]
    fn week_across_new_year_is_one_row() {
        let days = [
            hd(date(2026, 12, 31), "a", "prod", SEEN, (1, 1, 0, 0, 0), None),
            hd(date(2027, 1, 1), "a", "prod", SEEN, (1, 0, 0, 1, 0), None),
            hd(date(2027, 1, 4), "a", "prod", SEEN, QUIET, None),
        ];
        let rows = compute(&days, Period::Week, &[Grouping::Fleet], 0.97);
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.period.as_str(), r.changes))
            .collect();
        assert_eq!(got, [("2026-W53", 2), ("2027-W01", 0)]);
    }

    #[test]
    fn periods_sort_chronologically_not_by_input_order() {
        let days = [
            hd(date(2027, 1, 2), "a", "prod", SEEN, QUIET, None),
            hd(date(2026, 12, 9), "a", "prod", SEEN, QUIET, None),
            hd(date(2026, 2, 1), "a", "prod", SEEN, QUIET, None),
        ];
        let rows = compute(&days, Period::Month, &[Grouping::Fleet], 0.97);
        let got: Vec<_> = rows.iter().map(|r| r.period.as_str()).collect();
        assert_eq!(got, ["2026-02", "2026-12", "2027-01"]);
    }

    #[test]
    fn parse_period() {
        assert_eq!("day".parse(), Ok(Period::Day));
        assert_eq!("week".parse(), Ok(Period::Week));
        assert_eq!("month".parse(), Ok(Period::Month));
        for p in [Period::Day, Period::Week, Period::Month] {
            assert_eq!(p.to_string().parse(), Ok(p));
        }
        let err = "fortnight".parse::<Period>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown KPI period "fortnight": expected day, week or month"#
        );
    }

    #[test]
    fn csv_quotes_names_from_agents() {
        let day = date(2026, 11, 21);
        let days = [
            hd(day, "plain", "prod", SEEN, QUIET, None),
            hd(day, "web,1", "prod", SEEN, QUIET, None),
            hd(day, "say \"hi\"", "prod", SEEN, QUIET, None),
            hd(day, "two\nlines", "pr,od", SEEN, QUIET, None),
        ];
        let csv = to_csv(&compute(&days, Period::Day, &[Grouping::Host], 0.97));
        let tail = ",0,0,0,0,0,1.0000,1,1,0,1.0000,,0.9700,true\n";
        let expected = [
            CSV_HEADER.to_string() + "\n",
            format!("2026-11-21,\"pr,od\",\"two\nlines\"{tail}"),
            format!("2026-11-21,prod,plain{tail}"),
            format!("2026-11-21,prod,\"say \"\"hi\"\"\"{tail}"),
            format!("2026-11-21,prod,\"web,1\"{tail}"),
        ]
        .concat();
        assert_eq!(csv, expected);
    }

    #[test]
    fn csv_ratios_have_four_places() {
        let row = |change_compliance, vetted_ratio, target| KpiRow {
            period: "2026-11-21".to_string(),
            environment: "*".to_string(),
            host: "*".to_string(),
            changes: 0,
            authorized: 0,
            retroactive: 0,
            unauthorized: 0,
            unverifiable: 0,
            change_compliance,
            host_days: 0,
            host_days_compliant: 0,
            silent_host_days: 0,
            host_day_compliance: 1.0,
            vetted_ratio,
            target,
            met: false,
        };
        let cases = [
            (
                row(2.0 / 3.0, Some(1.0 / 3.0), 0.97),
                "0.6667",
                "0.3333",
                "0.9700",
            ),
            (
                row(29.0 / 30.0, Some(0.0), 1.0),
                "0.9667",
                "0.0000",
                "1.0000",
            ),
            (
                row(0.12345, Some(0.99994), 0.0),
                "0.1235",
                "0.9999",
                "0.0000",
            ),
            (row(0.99996, None, 0.5), "1.0000", "", "0.5000"),
        ];
        for (row, change, vetted, target) in cases {
            let csv = to_csv(&[row]);
            let fields: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
            assert_eq!(fields.len(), 16);
            assert_eq!(
                [fields[8], fields[12], fields[13], fields[14]],
                [change, "1.0000", vetted, target]
            );
            assert_eq!(fields[15], "false");
        }
    }

    #[test]
    fn json_has_numbers_and_null() {
        let day = hd(date(2026, 11, 21), "a", "prod", SEEN, (4, 3, 1, 1, 0), None);
        let rows = compute(&[day], Period::Day, &[Grouping::Fleet], 0.97);
        let json = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(json["change_compliance"], 0.75);
        assert_eq!(json["vetted_ratio"], serde_json::Value::Null);
        assert_eq!(json["met"], false);
        assert_eq!(json["environment"], "*");
        // Same names, same order as the CSV columns.
        let object = json.as_object().unwrap();
        assert_eq!(object.len(), 16);
        for column in CSV_HEADER.split(',') {
            assert!(object.contains_key(column), "{column}");
        }
    }

    #[test]
    fn table_is_aligned_and_marks_misses() {
        let rows = compute(&example(), Period::Month, &Grouping::ALL, 0.97);
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 1 + rows.len());
        assert!(
            lines[0].starts_with("PERIOD   ENVIRONMENT  HOST  CHANGES"),
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "2026-11", "*", "*", "6", "6", "1", "0", "0", "100.0%", "8", "1", "87.5%",
                "100.0%", "ok", "97.0%"
            ]
        );
        assert_eq!(
            lines[9].split_whitespace().collect::<Vec<_>>(),
            [
                "2026-12", "prod", "web1", "1", "0", "0", "1", "0", "0.0%", "2", "0", "50.0%",
                "99.9%", "MISS", "97.0%"
            ]
        );
        // Right-aligned numbers end in the same column as their header.
        let end = lines[0].find("COMPLIANCE").unwrap() + "COMPLIANCE".len();
        for line in &lines[1..] {
            assert!(line[..end].ends_with('%'), "{line}");
        }
    }

    #[test]
    fn table_escapes_control_characters() {
        let day = hd(date(2026, 11, 21), "evil\x1b[2J", "prod", SEEN, QUIET, None);
        let table = render_table(&compute(&[day], Period::Day, &[Grouping::Host], 0.97));
        assert!(!table.contains('\x1b'));
        assert!(table.contains(r"evil\u{1b}[2J"), "{table}");
        assert!(
            table.contains(" - "),
            "missing vetted ratio shows as a dash: {table}"
        );
    }
}
