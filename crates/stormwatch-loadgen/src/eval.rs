//! Scoring a run against its labels: per change, detected or missed (or, for legitimate
//! changes, quiet or not), time to detect, whether an exemplar is a labelled trace; and the
//! false alerts per hour of normal traffic. `eval` prints this and fails when a declared
//! expectation is not met.

use std::collections::HashSet;
use std::fmt::Write;
use std::time::Duration;

use stormwatch_model::{parse_rfc3339, Alert, Severity};

use crate::labels::{ChangeLabel, Labels};
use crate::scenario::EvalSettings;

/// What became of one change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Attack caught.
    Detected,
    /// Attack missed: a failure.
    Missed,
    /// Attack missed, as declared (its detector does not exist yet).
    ExpectedMiss,
    /// Attack declared expected-to-fail, but caught: update the scenario.
    UnexpectedDetect,
    /// Legitimate change, no warning-or-higher alert.
    Quiet,
    /// Legitimate change that raised warning-or-higher alerts: a failure.
    FalseAlarm,
    /// Attack caught, but no detecting alert named its declared contributor: a failure.
    Misattributed,
}

impl Outcome {
    /// The outcome as the table prints it (failures in capitals).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Detected => "detected",
            Outcome::Missed => "MISSED",
            Outcome::ExpectedMiss => "xfail",
            Outcome::UnexpectedDetect => "xpass",
            Outcome::Quiet => "quiet",
            Outcome::FalseAlarm => "FALSE ALARM",
            Outcome::Misattributed => "MISATTRIBUTED",
        }
    }

    /// Whether the outcome fails the scenario.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Missed | Outcome::FalseAlarm | Outcome::Misattributed)
    }
}

/// How one labelled change went.
#[derive(Clone, Debug)]
pub struct ChangeResult {
    /// The change.
    pub label: ChangeLabel,
    /// How it went.
    pub outcome: Outcome,
    /// Alerts explained by (attacks) or raised during (legitimate changes) this change.
    pub alerts: usize,
    /// The kind of the first alert that explained it.
    pub first_alert_kind: Option<String>,
    /// For an attack: the first alert of another kind whose exemplar is an attacked trace.
    pub indirect_alert_kind: Option<String>,
    /// Event time from the change's start to the first alert's evidence.
    pub time_to_detect: Option<Duration>,
    /// Whether an alert's exemplar is one of the change's labelled traces.
    pub exemplar_match: bool,
}

/// One alert reduced to what scoring and the picture need.
#[derive(Clone, Debug)]
pub struct AlertPoint {
    /// The alert's kind.
    pub kind: String,
    /// Its severity.
    pub severity: Severity,
    /// Its score.
    pub score: f64,
    /// The occurrences it stands for.
    pub count: u64,
    /// Event time its evidence starts at.
    pub start_unix_nano: u64,
    /// Event time its evidence ends at.
    pub end_unix_nano: u64,
    /// Its exemplar trace ids.
    pub exemplars: Vec<String>,
    /// Its contributors' names.
    pub contributors: Vec<String>,
    /// Explained by an attack (filled in by [`score`]).
    pub explained: bool,
}

impl AlertPoint {
    /// The point of an alert.
    pub fn from_alert(alert: &Alert) -> AlertPoint {
        AlertPoint {
            kind: alert.kind.as_str().into(),
            severity: alert.severity,
            score: alert.score,
            count: alert.count,
            start_unix_nano: parse_rfc3339(&alert.window.start).unwrap_or(0),
            end_unix_nano: parse_rfc3339(&alert.window.end).unwrap_or(0),
            exemplars: alert.exemplar_trace_ids.clone(),
            contributors: alert.contributors.iter().map(|c| c.name.clone()).collect(),
            explained: false,
        }
    }
}

/// The score of a scenario: each change's outcome and the false alerts.
#[derive(Clone, Debug)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Requests generated.
    pub requests: u64,
    /// Spans generated.
    pub spans: u64,
    /// Event time the scenario spans.
    pub duration: Duration,
    /// Every alert.
    pub alerts: Vec<AlertPoint>,
    /// Each labelled change's result.
    pub changes: Vec<ChangeResult>,
    /// Alerts explained by no attack, by severity (info, warning, critical).
    pub false_alerts: [u64; 3],
    /// Hours of event time outside every attack window.
    pub normal_hours: f64,
    /// The scenario's allowance of false warning-or-higher alerts per hour.
    pub max_false_alerts_per_hour: f64,
    /// Event time the scenario started at, Unix nanoseconds.
    pub scenario_start: u64,
}

impl Report {
    /// Warning-or-higher alerts explained by no attack, per hour of normal traffic.
    pub fn false_alerts_per_hour(&self) -> f64 {
        (self.false_alerts[1] + self.false_alerts[2]) as f64 / self.normal_hours.max(1e-9)
    }

    /// Every unmet expectation, in words.
    pub fn failures(&self) -> Vec<String> {
        let mut failures: Vec<String> = self
            .changes
            .iter()
            .filter(|c| c.outcome.is_failure())
            .map(|c| format!("{} ({}): {}", c.label.name, c.label.kind, c.outcome.as_str()))
            .collect();
        if self.false_alerts_per_hour() > self.max_false_alerts_per_hour {
            failures.push(format!(
                "{:.2} warning-or-higher false alerts per hour of normal traffic, more than the {:.2} allowed",
                self.false_alerts_per_hour(),
                self.max_false_alerts_per_hour
            ));
        }
        failures
    }

    /// Whether the scenario met every expectation.
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// The table `eval` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {}: {} requests, {} spans, {} of event time, {} alerts",
            self.scenario,
            self.requests,
            self.spans,
            humanize(self.duration),
            self.alerts.len()
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<28} {:<21} {:<13} {:<11} {:<22} {:>8} {:>9} {:>6}",
            "change", "kind", "window", "result", "first alert", "ttd", "exemplar", "alerts"
        );
        for change in &self.changes {
            let start = change.label.start_unix_nano.saturating_sub(self.start_unix_nano());
            let end = change.label.end_unix_nano.saturating_sub(self.start_unix_nano());
            let window = format!("{}-{}", humanize(Duration::from_nanos(start)), humanize(Duration::from_nanos(end)));
            let _ = writeln!(
                out,
                "{:<28} {:<21} {:<13} {:<11} {:<22} {:>8} {:>9} {:>6}",
                truncate(&change.label.name, 28),
                change.label.kind,
                window,
                change.outcome.as_str(),
                match (&change.first_alert_kind, &change.indirect_alert_kind) {
                    (Some(kind), _) => kind.clone(),
                    (None, Some(indirect)) => format!("({indirect})"),
                    (None, None) => "-".into(),
                },
                change.time_to_detect.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64())),
                if !change.label.attack {
                    "-"
                } else if change.exemplar_match {
                    "yes"
                } else {
                    "no"
                },
                change.alerts,
            );
            if let (Outcome::ExpectedMiss, Some(why)) = (change.outcome, &change.label.expected_to_fail) {
                let _ = writeln!(out, "{:<28} expected to fail: {why}", "");
            }
            if let (None, Some(indirect)) = (&change.first_alert_kind, &change.indirect_alert_kind) {
                let _ = writeln!(out, "{:<28} caught indirectly: {indirect} alerts point at its traces", "");
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "false alerts (explained by no attack): info {}, warning {}, critical {}; {:.2} warning+ per hour of normal traffic (allowed {:.2})",
            self.false_alerts[0],
            self.false_alerts[1],
            self.false_alerts[2],
            self.false_alerts_per_hour(),
            self.max_false_alerts_per_hour
        );
        let count = |outcome: Outcome| self.changes.iter().filter(|c| c.outcome == outcome).count();
        let failures = self.failures();
        let _ = writeln!(
            out,
                        "result: {} ({} detected, {} missed, {} misattributed, {} expected-to-fail, {} xpass, {} legitimate quiet, {} false alarms)",
            if failures.is_empty() { "PASS" } else { "FAIL" },
                        count(Outcome::Detected),
            count(Outcome::Missed),
            count(Outcome::Misattributed),
            count(Outcome::ExpectedMiss),
            count(Outcome::UnexpectedDetect),
            count(Outcome::Quiet),
            count(Outcome::FalseAlarm),
        );
        for failure in failures {
            let _ = writeln!(out, "  failed: {failure}");
        }
        out
    }

    fn start_unix_nano(&self) -> u64 {
        self.scenario_start
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.into()
    } else {
        text.chars().take(max - 1).chain(['…']).collect()
    }
}

/// `1h5m`, `12m`, `30s`.
pub fn humanize(duration: Duration) -> String {
    let secs = duration.as_secs();
    match (secs / 3600, (secs % 3600) / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

fn severity_index(severity: Severity) -> usize {
    match severity {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

/// One labelled change against the alerts: which detect it (a declared kind during the attack,
/// pointing at an attacked trace) and which it explains indirectly (those are marked explained,
/// not false). A legitimate change is `Quiet` here; `score` decides it once every attack
/// explained its alerts.
fn judge_change(
    label: &ChangeLabel,
    points: &mut [AlertPoint],
    overlaps: &impl Fn(&AlertPoint, &ChangeLabel) -> bool,
) -> ChangeResult {
    let traces: HashSet<&str> = label.trace_ids.iter().map(String::as_str).collect();
    // Alerts of a declared kind during the attack detect it. Alerts of another kind whose
    // exemplar is an attacked trace are explained by it (not false alerts) but are only an
    // indirect catch: they do not make the attack detected.
    let (mut detecting, mut indirect) = (Vec::new(), Vec::new());
    let mut exemplar_match = false;
    for (i, point) in points.iter().enumerate() {
        if !label.attack || !overlaps(point, label) {
            continue;
        }
        let by_exemplar = point.exemplars.iter().any(|e| traces.contains(e.as_str()));
        // With labelled traces, an alert detects the attack only if it points at one of
        // them: a coincident alert on an unrelated edge is not a detection.
        let points_at_attack = by_exemplar || label.trace_ids.is_empty();
        if label.detect_as.contains(&point.kind) && points_at_attack {
            detecting.push(i);
            exemplar_match |= by_exemplar;
        } else if by_exemplar {
            indirect.push(i);
        }
    }
    for i in detecting.iter().chain(&indirect) {
        points[*i].explained = true;
    }
    let first = detecting.iter().map(|i| &points[*i]).min_by_key(|p| p.end_unix_nano);
    let first_indirect = indirect.iter().map(|i| &points[*i]).min_by_key(|p| p.end_unix_nano);
    let attributed = attributed(label, detecting.iter().map(|i| &points[*i]));
    let outcome = match (label.attack, !detecting.is_empty(), label.expected_to_fail.is_some()) {
        (true, true, false) if !attributed => Outcome::Misattributed,
        (true, true, false) => Outcome::Detected,
        (true, true, true) => Outcome::UnexpectedDetect,
        (true, false, false) => Outcome::Missed,
        (true, false, true) => Outcome::ExpectedMiss,
        (false, _, _) => Outcome::Quiet, // decided by `score`, once every attack explained its alerts
    };
    ChangeResult {
        label: label.clone(),
        outcome,
        alerts: detecting.len(),
        first_alert_kind: first.map(|p| p.kind.clone()),
        indirect_alert_kind: first_indirect.map(|p| p.kind.clone()),
        time_to_detect: first.map(|p| Duration::from_nanos(p.end_unix_nano.saturating_sub(label.start_unix_nano))),
        exemplar_match,
    }
}

/// Whether a detecting alert names the change's declared contributor: an entry `service
/// operation` ("entry service `operation…`"), or the start of any contributor's name ("edge
/// …", "clients …", "user …"). True when none is declared.
fn attributed<'a>(label: &ChangeLabel, mut detecting: impl Iterator<Item = &'a AlertPoint>) -> bool {
    let Some(wanted) = label.contributor.as_deref() else { return true };
    let prefix = if ["entry ", "edge ", "clients ", "user "].iter().any(|kind| wanted.starts_with(kind)) {
        wanted.to_string()
    } else {
        let (service, operation) = wanted.split_once(' ').unwrap_or((wanted, ""));
        format!("entry {service} `{operation}")
    };
    detecting.any(|point| point.contributors.iter().any(|name| name.starts_with(&prefix)))
}

/// Scores alerts against the labels.
pub fn score(labels: &Labels, settings: &EvalSettings, alerts: &[Alert], requests: u64, spans: u64) -> Report {
    let grace = settings.grace.as_nanos() as u64;
    let mut points: Vec<AlertPoint> = alerts.iter().map(AlertPoint::from_alert).collect();
    let overlaps = |point: &AlertPoint, label: &ChangeLabel| {
        point.start_unix_nano <= label.end_unix_nano + grace && point.end_unix_nano >= label.start_unix_nano
    };
    let mut changes: Vec<ChangeResult> =
        labels.changes.iter().map(|label| judge_change(label, &mut points, &overlaps)).collect();
    // Legitimate changes: any warning-or-higher alert during them that no attack explains.
    for change in changes.iter_mut().filter(|c| !c.label.attack) {
        let raised: Vec<&AlertPoint> = points
            .iter()
            .filter(|p| !p.explained && p.severity >= Severity::Warning && overlaps(p, &change.label))
            .collect();
        change.alerts = raised.len();
        change.first_alert_kind = raised.iter().min_by_key(|p| p.end_unix_nano).map(|p| p.kind.clone());
        if !raised.is_empty() {
            change.outcome = Outcome::FalseAlarm;
        }
    }
    let mut false_alerts = [0u64; 3];
    for point in points.iter().filter(|p| !p.explained) {
        false_alerts[severity_index(point.severity)] += 1;
    }
    // Normal traffic: the scenario minus the union of attack windows.
    let mut windows: Vec<(u64, u64)> =
        labels.changes.iter().filter(|c| c.attack).map(|c| (c.start_unix_nano, c.end_unix_nano)).collect();
    windows.sort_unstable();
    let mut attacked = 0u64;
    let mut cursor = 0u64;
    for (start, end) in windows {
        let start = start.max(cursor);
        if end > start {
            attacked += end - start;
            cursor = end;
        }
    }
    let total = labels.end_unix_nano - labels.start_unix_nano;
    Report {
        scenario: labels.scenario.clone(),
        requests,
        spans,
        duration: Duration::from_nanos(total),
        alerts: points,
        changes,
        false_alerts,
        normal_hours: (total - attacked.min(total)) as f64 / 3.6e12,
        max_false_alerts_per_hour: settings.max_false_alerts_per_hour,
        scenario_start: labels.start_unix_nano,
    }
}
