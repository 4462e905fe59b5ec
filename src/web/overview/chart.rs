//! The throughput chart: jobs finished per minute, succeeded and failed stacked, as an inline SVG
//! built from numbers only (no user text reaches it, so it can be inserted unescaped), with the
//! same numbers as a sentence and a table for screen readers and for anyone without colour.

use std::fmt::Write;

use super::thousands;
use crate::queue::stats::Minute;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 180.0;
/// Room for the y-axis labels on the left and the minute labels below.
const LEFT: f64 = 60.0;
const RIGHT: f64 = 6.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 28.0;

/// One minute of the chart as text.
#[derive(Debug, Clone, PartialEq)]
pub struct MinuteRow {
    /// `14:05`, UTC.
    pub label: String,
    /// RFC 3339, for `<time datetime>`.
    pub datetime: String,
    pub succeeded: String,
    pub failed: String,
}

/// The chart and its text equivalents.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// The `<svg>` element (numbers only).
    pub svg: String,
    /// One sentence with the totals and the busiest minute.
    pub summary: String,
    pub rows: Vec<MinuteRow>,
    pub succeeded: String,
    pub failed: String,
}

impl Chart {
    /// Draws `minutes`, oldest first.
    pub fn new(minutes: &[Minute]) -> Self {
        let label = |m: &Minute| m.minute.format("%H:%M").to_string();
        let ok: i64 = minutes.iter().map(|m| m.succeeded).sum();
        let bad: i64 = minutes.iter().map(|m| m.failed).sum();
        let busiest = minutes
            .iter()
            .max_by_key(|m| (m.succeeded + m.failed, std::cmp::Reverse(m.minute)));
        let summary = match busiest {
            Some(b) if ok + bad > 0 => format!(
                "In the last {} minutes {} {} succeeded and {} failed; the busiest minute was \
                 {} UTC with {} finished.",
                minutes.len(),
                thousands(ok),
                if ok == 1 { "job" } else { "jobs" },
                thousands(bad),
                label(b),
                thousands(b.succeeded + b.failed)
            ),
            _ => format!("No jobs finished in the last {} minutes.", minutes.len()),
        };
        Self {
            svg: svg(minutes, &summary),
            rows: minutes
                .iter()
                .map(|m| MinuteRow {
                    label: label(m),
                    datetime: m.minute.to_rfc3339(),
                    succeeded: thousands(m.succeeded),
                    failed: thousands(m.failed),
                })
                .collect(),
            summary,
            succeeded: thousands(ok),
            failed: thousands(bad),
        }
    }
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `n` (and at least 1).
fn nice_ceil(n: i64) -> i64 {
    let mut step = 1i64;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= n {
                return step.saturating_mul(m);
            }
        }
        step = step.saturating_mul(10);
    }
}

fn svg(minutes: &[Minute], summary: &str) -> String {
    let peak = minutes
        .iter()
        .map(|m| m.succeeded + m.failed)
        .max()
        .unwrap_or(0);
    let top = nice_ceil(peak);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let base = TOP + plot_h;
    let y = |v: i64| base - plot_h * v as f64 / top as f64;
    let slot = plot_w / minutes.len().max(1) as f64;
    let bar = (slot * 0.7).max(1.0);
    let mut s = String::with_capacity(4096);
    // `write!` into a String cannot fail.
    let _ = write!(
        s,
        r#"<svg class="ov-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="ov-chart-title ov-chart-desc" xmlns="http://www.w3.org/2000/svg"><title id="ov-chart-title">Jobs finished per minute, last {} minutes</title><desc id="ov-chart-desc">{summary}</desc><defs><pattern id="ov-hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" class="ov-hatch-bg"/><line x1="0" y1="0" x2="0" y2="6" class="ov-hatch-line"/></pattern></defs>"#,
        minutes.len()
    );
    let ticks: &[i64] = if top % 2 == 0 {
        &[0, top / 2, top]
    } else {
        &[0, top]
    };
    for &v in ticks {
        let _ = write!(
            s,
            r#"<line class="ov-gridline" x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"/><text class="ov-axis" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            thousands(v),
            y = y(v),
        );
    }
    for (i, m) in minutes.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let label = m.minute.format("%H:%M");
        let _ = write!(
            s,
            r#"<g><title>{label} UTC: {} succeeded, {} failed</title>"#,
            thousands(m.succeeded),
            thousands(m.failed)
        );
        let ok_top = y(m.succeeded);
        let bad_top = y(m.succeeded + m.failed);
        if m.succeeded > 0 {
            let _ = write!(
                s,
                r#"<rect class="ov-ok" x="{x:.1}" y="{ok_top:.1}" width="{bar:.1}" height="{:.1}"/>"#,
                base - ok_top
            );
        }
        if m.failed > 0 {
            let _ = write!(
                s,
                r#"<rect class="ov-bad" fill="url(#ov-hatch)" x="{x:.1}" y="{bad_top:.1}" width="{bar:.1}" height="{:.1}"/>"#,
                ok_top - bad_top
            );
        }
        // A transparent full-height target, so the minute's tooltip shows even over an empty bar.
        let _ = write!(
            s,
            r#"<rect class="ov-hit" x="{x:.1}" y="{TOP}" width="{bar:.1}" height="{plot_h:.1}"/></g>"#
        );
        let last = i + 1 == minutes.len();
        // The outer labels align with their bar's outer edge, so they never leave the picture.
        let at = if i == 0 {
            Some((x, "start"))
        } else if last {
            Some((x + bar, "end"))
        } else if i.is_multiple_of(5) && minutes.len() - i > 2 {
            Some((x + bar / 2.0, "middle"))
        } else {
            None
        };
        if let Some((tx, anchor)) = at {
            let _ = write!(
                s,
                r#"<text class="ov-axis" x="{tx:.1}" y="{:.1}" text-anchor="{anchor}">{label}</text>"#,
                HEIGHT - 4.0
            );
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn minute(i: u32, succeeded: i64, failed: i64) -> Minute {
        Minute {
            minute: Utc
                .with_ymd_and_hms(2026, 1, 2, 14, i, 0)
                .single()
                .unwrap_or_default(),
            succeeded,
            failed,
        }
    }

    #[test]
    fn nice_ceil_rounds_up_to_1_2_5() {
        assert_eq!(nice_ceil(0), 1);
        assert_eq!(nice_ceil(1), 1);
        assert_eq!(nice_ceil(3), 5);
        assert_eq!(nice_ceil(70), 100);
        assert_eq!(nice_ceil(120), 200);
        assert_eq!(nice_ceil(2000), 2000);
    }

    #[test]
    fn chart_has_text_equivalents() {
        let c = Chart::new(&[minute(1, 10, 0), minute(2, 60, 12), minute(3, 0, 0)]);
        assert!(c.svg.starts_with("<svg"));
        assert!(c.svg.contains(r#"<title id="ov-chart-title">"#));
        assert!(c.svg.contains("14:02 UTC: 60 succeeded, 12 failed"));
        assert_eq!(c.succeeded, "70");
        assert_eq!(c.failed, "12");
        assert!(c.summary.contains("busiest minute was 14:02 UTC with 72"));
        assert_eq!(c.rows.len(), 3);
        assert_eq!(c.rows[1].failed, "12");
    }

    #[test]
    fn empty_chart_says_so() {
        let c = Chart::new(&[minute(1, 0, 0), minute(2, 0, 0)]);
        assert_eq!(c.summary, "No jobs finished in the last 2 minutes.");
        assert!(!c.svg.contains("ov-ok"));
    }
}
