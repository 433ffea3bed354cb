//! The morning report a release manager mails to the team (`driftwatch report`). Pure rendering.

use std::fmt::Write as _;

use crate::kpi::KpiRow;
use crate::store::StoredEvent;

/// What goes into one day's report.
pub struct DailyReport<'a> {
    /// The day (`2026-11-21`).
    pub day: String,
    /// KPI rows of that day: fleet, environments and hosts.
    pub rows: &'a [KpiRow],
    /// Events received that day.
    pub events: &'a [StoredEvent],
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Markdown table cells must not break the table.
fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "\\n").replace('`', "'")
}

impl DailyReport<'_> {
    fn fleet(&self) -> Option<&KpiRow> {
        self.rows
            .iter()
            .find(|r| r.environment == "*" && r.host == "*")
    }

    fn unauthorized(&self) -> Vec<&StoredEvent> {
        self.events
            .iter()
            .filter(|e| e.status == "unauthorized" || e.status == "unverifiable")
            .collect()
    }

    fn retroactive(&self) -> Vec<&StoredEvent> {
        self.events
            .iter()
            .filter(|e| e.status.starts_with("retroactive:"))
            .collect()
    }

    fn silent(&self) -> Vec<&KpiRow> {
        self.rows
            .iter()
            .filter(|r| r.host != "*" && r.silent_host_days > 0)
            .collect()
    }

    /// Markdown.
    pub fn to_markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# driftwatch daily report: {}\n", self.day);
        match self.fleet() {
            Some(f) => {
                let verdict = if f.met {
                    "target met"
                } else {
                    "**TARGET MISSED**"
                };
                let _ = writeln!(
                    o,
                    "**Change compliance {}** against a target of {}: {verdict}.\n\n\
                     {} changes: {} authorized ({} retroactive), {} unauthorized, {} unverifiable. \
                     Host-days: {} of {} compliant, {} silent.\n",
                    pct(f.change_compliance),
                    pct(f.target),
                    f.changes,
                    f.authorized,
                    f.retroactive,
                    f.unauthorized,
                    f.unverifiable,
                    f.host_days_compliant,
                    f.host_days,
                    f.silent_host_days
                );
            }
            None => o.push_str("No host was expected to report on this day.\n\n"),
        }
        let envs: Vec<&KpiRow> = self
            .rows
            .iter()
            .filter(|r| r.environment != "*" && r.host == "*")
            .collect();
        if envs.len() > 1 {
            o.push_str("| environment | compliance | changes | unauthorized | silent host-days |\n|---|---:|---:|---:|---:|\n");
            for r in envs {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} |",
                    md_escape(&r.environment),
                    pct(r.change_compliance),
                    r.changes,
                    r.unauthorized,
                    r.silent_host_days
                );
            }
            o.push('\n');
        }
        let un = self.unauthorized();
        let _ = writeln!(o, "## Unauthorized changes ({})\n", un.len());
        if un.is_empty() {
            o.push_str("None.\n\n");
        } else {
            o.push_str("| received | host | tree | path | change | status | open | blake3 |\n|---|---|---|---|---|---|---|---|\n");
            for e in un {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | `{}` | {} | {} | {} | {} |",
                    e.received_at,
                    md_escape(&e.host),
                    md_escape(&e.tree),
                    md_escape(&e.path),
                    e.change,
                    e.status,
                    if e.open { "yes" } else { "closed" },
                    e.blake3
                        .as_deref()
                        .map(|h| &h[..h.len().min(16)])
                        .unwrap_or("-")
                );
            }
            o.push('\n');
        }
        let silent = self.silent();
        let _ = writeln!(o, "## Silent hosts ({})\n", silent.len());
        if silent.is_empty() {
            o.push_str("None: every expected host reported.\n\n");
        } else {
            for r in silent {
                let _ = writeln!(
                    o,
                    "- {} ({}): no heartbeat or report",
                    md_escape(&r.host),
                    md_escape(&r.environment)
                );
            }
            o.push('\n');
        }
        let retro = self.retroactive();
        let _ = writeln!(o, "## Retroactive approvals ({})\n", retro.len());
        if retro.is_empty() {
            o.push_str("None.\n");
        } else {
            for e in retro {
                let _ = writeln!(
                    o,
                    "- {} on {} `{}` ({}), first seen {}",
                    e.status,
                    md_escape(&e.host),
                    md_escape(&e.path),
                    e.change,
                    e.observed_at
                );
            }
        }
        o
    }

    /// HTML (for mail clients), same content.
    pub fn to_html(&self) -> String {
        let mut o = String::from(
            "<!doctype html><html><head><meta charset=utf-8><title>driftwatch daily report</title></head><body style=\"font-family:sans-serif\">",
        );
        let _ = write!(
            o,
            "<h1>driftwatch daily report: {}</h1>",
            html_escape(&self.day)
        );
        if let Some(f) = self.fleet() {
            let colour = if f.met { "#137333" } else { "#b00020" };
            let _ = write!(
                o,
                "<p style=\"font-size:20px\">Change compliance <b style=\"color:{colour}\">{}</b> against a target of {} ({}).</p>\
                 <p>{} changes: {} authorized ({} retroactive), {} unauthorized, {} unverifiable. Host-days {} of {} compliant, {} silent.</p>",
                pct(f.change_compliance),
                pct(f.target),
                if f.met { "met" } else { "missed" },
                f.changes,
                f.authorized,
                f.retroactive,
                f.unauthorized,
                f.unverifiable,
                f.host_days_compliant,
                f.host_days,
                f.silent_host_days
            );
        }
        let un = self.unauthorized();
        let _ = write!(o, "<h2>Unauthorized changes ({})</h2>", un.len());
        if !un.is_empty() {
            o.push_str("<table border=1 cellpadding=4 cellspacing=0><tr><th>received</th><th>host</th><th>tree</th><th>path</th><th>change</th><th>status</th><th>open</th><th>blake3</th></tr>");
            for e in un {
                let _ = write!(
                    o,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                    html_escape(&e.received_at),
                    html_escape(&e.host),
                    html_escape(&e.tree),
                    html_escape(&e.path),
                    html_escape(&e.change),
                    html_escape(&e.status),
                    if e.open { "yes" } else { "closed" },
                    html_escape(e.blake3.as_deref().unwrap_or("-"))
                );
            }
            o.push_str("</table>");
        }
        let silent = self.silent();
        let _ = write!(o, "<h2>Silent hosts ({})</h2><ul>", silent.len());
        for r in silent {
            let _ = write!(
                o,
                "<li>{} ({})</li>",
                html_escape(&r.host),
                html_escape(&r.environment)
            );
        }
        let retro = self.retroactive();
        let _ = write!(
            o,
            "</ul><h2>Retroactive approvals ({})</h2><ul>",
            retro.len()
        );
        for e in retro {
            let _ = write!(
                o,
                "<li>{} on {} <code>{}</code></li>",
                html_escape(&e.status),
                html_escape(&e.host),
                html_escape(&e.path)
            );
        }
        o.push_str("</ul></body></html>\n");
        o
    }
}
