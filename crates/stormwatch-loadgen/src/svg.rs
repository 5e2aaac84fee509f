//! The picture `eval` writes: one lane per detector kind, alert scores over event time on a
//! log scale (1 = the threshold), attack windows shaded red and legitimate changes blue,
//! false alerts drawn hollow. Plain SVG, no dependencies, opens in any browser.

use std::fmt::Write;

use stormwatch_model::Severity;

use crate::eval::{humanize, Report};

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 190.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const LANE: f64 = 90.0;
const LANE_GAP: f64 = 14.0;
/// Scores are drawn from 1 (threshold) to this.
const MAX_SCORE: f64 = 100.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Where things go on the picture.
struct Canvas {
    start: f64,
    span: f64,
    bottom: f64,
}

impl Canvas {
    /// The x of event time `t`.
    fn x(&self, t: u64) -> f64 {
        LEFT + (t as f64 - self.start) / self.span * (WIDTH - LEFT - RIGHT)
    }
}

/// Renders the report as an SVG document.
pub fn render(report: &Report, kinds: &[&str]) -> String {
    let lanes = kinds.len().max(1) as f64;
    let height = TOP + lanes * (LANE + LANE_GAP) + 60.0;
    let canvas = Canvas {
        start: report.scenario_start as f64,
        span: report.duration.as_nanos().max(1) as f64,
        bottom: TOP + lanes * (LANE + LANE_GAP) - LANE_GAP,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">stormwatch eval: {} — alert score over event time</text>"#,
        escape(&report.scenario)
    );
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="38" fill="#555">red: attack windows · blue bars: legitimate changes · filled: alert explained by an attack · hollow: false alert · score 1 = threshold</text>"##
    );
    change_windows(&mut out, report, &canvas);
    for (lane, kind) in kinds.iter().enumerate() {
        lane_of(&mut out, report, &canvas, lane, kind);
    }
    time_axis(&mut out, report, &canvas);
    out.push_str("</svg>\n");
    out
}

/// Change windows, behind everything.
fn change_windows(out: &mut String, report: &Report, canvas: &Canvas) {
    for change in &report.changes {
        let (x0, x1) = (canvas.x(change.label.start_unix_nano), canvas.x(change.label.end_unix_nano));
        let color = if change.label.attack { "#e53935" } else { "#1e88e5" };
        // Attacks shade the whole plot; legitimate changes (often long, like a diurnal
        // swing) are a bar along the top so they do not tint everything.
        let (top, height, opacity) =
            if change.label.attack { (TOP, canvas.bottom - TOP, 0.12) } else { (TOP - 6.0, 6.0, 0.6) };
        let _ = writeln!(
            out,
            r#"<rect x="{x0:.1}" y="{top:.1}" width="{:.1}" height="{height:.1}" fill="{color}" fill-opacity="{opacity}"/>"#,
            (x1 - x0).max(1.0),
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" fill="{color}" font-size="10" transform="rotate(90 {:.1} {:.1})">{} ({})</text>"#,
            x0 + 3.0,
            TOP + 4.0,
            x0 + 3.0,
            TOP + 4.0,
            escape(&change.label.name),
            change.outcome.as_str()
        );
    }
}

/// One detector kind's lane: its frame, score scale and alerts.
fn lane_of(out: &mut String, report: &Report, canvas: &Canvas, lane: usize, kind: &str) {
    let top = TOP + lane as f64 * (LANE + LANE_GAP);
    let y = |score: f64| top + LANE - (score.clamp(1.0, MAX_SCORE).log10() / MAX_SCORE.log10()) * LANE;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{:.1}" height="{LANE}" fill="none" stroke="#bbb"/>"##,
        WIDTH - LEFT - RIGHT
    );
    let _ = writeln!(out, r#"<text x="10" y="{:.1}" font-weight="bold">{}</text>"#, top + LANE / 2.0, escape(kind));
    for (score, label) in [(1.0, "1"), (10.0, "10"), (100.0, "100")] {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#888" font-size="9" text-anchor="end">{label}</text>"##,
            LEFT - 4.0,
            y(score) + 3.0
        );
    }
    for point in report.alerts.iter().filter(|p| p.kind == kind) {
        let color = match point.severity {
            Severity::Critical => "#b71c1c",
            Severity::Warning => "#ef6c00",
            Severity::Info => "#546e7a",
        };
        let radius = 3.0 + (point.count as f64).log10() * 2.0;
        let (fill, stroke) = if point.explained { (color, color) } else { ("none", color) };
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="{radius:.1}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"><title>{} score {:.2} count {}</title></circle>"#,
            canvas.x(point.end_unix_nano),
            y(point.score),
            escape(kind),
            point.score,
            point.count
        );
    }
}

/// The time axis and the summary line under it.
fn time_axis(out: &mut String, report: &Report, canvas: &Canvas) {
    for step in 0..=10 {
        let t = report.scenario_start + (canvas.span / 10.0 * step as f64) as u64;
        let label = humanize(std::time::Duration::from_nanos(t - report.scenario_start));
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#555" font-size="10" text-anchor="middle">{label}</text>"##,
            canvas.x(t),
            canvas.bottom + 16.0
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{:.1}" fill="#555">{} requests, {} spans, {} alerts; result {}</text>"##,
        canvas.bottom + 40.0,
        report.requests,
        report.spans,
        report.alerts.len(),
        if report.passed() { "PASS" } else { "FAIL" }
    );
}
