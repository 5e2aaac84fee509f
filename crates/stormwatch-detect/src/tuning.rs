//! What security engineers decided, applied to every finding before it becomes an alert:
//! per-edge, per-entry and per-detector overrides (threshold factors, absolute limits, minimum
//! samples, severity, off), detectors in shadow mode (judged and counted, never emitted),
//! allowlisted entry points, client populations and users (until an expiry), and learning
//! frozen globally or per edge. Parsed from `models/tuning.toml` by the binary; pure here.
//!
//! Edges and entries are named as alerts and `stormwatch baseline list` print them:
//! ``reviews `GET /reviews` -> postgresql `SELECT name FROM users WHERE id = ?` `` and
//! ``gateway `GET /search` ``.

use std::collections::{BTreeSet, HashMap};

use stormwatch_model::{rounded, AlertKind, EdgeName, Severity, FIGURE_DECIMALS};

use crate::Finding;

/// One override. Every selector that is set must match; none set matches every finding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rule {
    /// The edge it applies to.
    pub edge: Option<EdgeName>,
    /// The entry point it applies to, as alerts name it.
    pub entry: Option<String>,
    /// The kind it applies to.
    pub kind: Option<AlertKind>,
    /// Alert only above `threshold x factor` (the learned threshold, raised or lowered).
    pub threshold_factor: Option<f64>,
    /// Alert only above this absolute value (in the finding's unit).
    pub limit: Option<f64>,
    /// Alert only once the baseline has this many samples.
    pub min_samples: Option<u64>,
    /// The severity findings it matches get.
    pub severity: Option<Severity>,
    /// `false`: findings it matches are dropped.
    pub enabled: bool,
    /// Why (shown by explain and the API).
    pub reason: String,
}

/// A legitimate amplifier (a nightly batch job, a partner's crawler), until `until`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allowance {
    /// An entry point, as alerts name it.
    pub entry: Option<String>,
    /// A client population as alerts name it (`10.1.0.0/16`).
    pub clients: Option<String>,
    /// An authenticated user (`enduser.id`).
    pub user: Option<String>,
    /// Event time (Unix nanoseconds) after which it no longer applies.
    pub until_unix_nano: u64,
    /// Why (shown by explain and the API).
    pub reason: String,
}

/// A detector's mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Judged and emitted.
    #[default]
    On,
    /// Judged and counted, never emitted.
    Shadow,
    /// Its findings are dropped (counted as suppressed).
    Off,
}

/// The tuning in force.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tuning {
    /// No baseline learns.
    pub freeze_all: bool,
    /// Edges whose learning is frozen.
    pub frozen_edges: BTreeSet<EdgeName>,
    /// Overrides, in file order; each that matches applies.
    pub rules: Vec<Rule>,
    /// Detectors in shadow mode or off (absent: on).
    pub detectors: HashMap<AlertKind, Mode>,
    /// Allowlisted amplifiers.
    pub allow: Vec<Allowance>,
}

/// What becomes of a finding.
#[derive(Debug)]
pub enum Verdict {
    /// Emit it.
    Emit(Finding),
    /// Its detector is in shadow mode: count it, do not emit it.
    Shadow(Finding),
    /// Dropped by the tuning, and why.
    Suppressed(String),
}

impl Tuning {
    /// Applies the tuning to a finding seen at event time `at`.
    pub fn judge(&self, mut finding: Finding, at: u64) -> Verdict {
        let entry = finding.entry.map(|c| c.to_string());
        for allowance in &self.allow {
            if allowance.until_unix_nano <= at {
                continue;
            }
            let by_entry = allowance.entry.is_some() && allowance.entry == entry;
            // A client population may carry where its addresses came from: `clients
            // 198.51.0.0/16 (x-forwarded-for)` is the population `198.51.0.0/16`.
            let leads = |prefix: &str, name: &Option<String>| {
                name.as_ref().is_some_and(|name| {
                    let exact = format!("{prefix} {name}");
                    let sourced = format!("{exact} (");
                    finding
                        .contributors
                        .iter()
                        .any(|c| (c.name == exact || c.name.starts_with(&sourced)) && c.share >= 0.5)
                })
            };
            // A population or user counts when it made at least half the excess.
            if by_entry || leads("clients", &allowance.clients) || leads("user", &allowance.user) {
                return Verdict::Suppressed(format!("allowlisted: {}", allowance.reason));
            }
        }
        for rule in &self.rules {
            let matches = rule.edge.as_ref().is_none_or(|e| finding.edge.is_some_and(|edge| e.matches(&edge)))
                && rule.entry.as_ref().is_none_or(|e| Some(e) == entry.as_ref())
                && rule.kind.is_none_or(|k| k == finding.kind);
            if !matches {
                continue;
            }
            if !rule.enabled {
                return Verdict::Suppressed(format!("disabled by tuning: {}", rule.reason));
            }
            if rule.min_samples.is_some_and(|min| finding.baseline_samples < min) {
                return Verdict::Suppressed(format!("baseline below the tuned minimum samples: {}", rule.reason));
            }
            let mut threshold = finding.threshold;
            if let Some(factor) = rule.threshold_factor {
                threshold *= factor;
            }
            if let Some(limit) = rule.limit {
                threshold = limit;
            }
            if threshold != finding.threshold {
                let (tuned, learned) =
                    (rounded(threshold, FIGURE_DECIMALS), rounded(finding.threshold, FIGURE_DECIMALS));
                if finding.observed <= threshold {
                    return Verdict::Suppressed(format!(
                        "within the tuned threshold {tuned} (learned {learned}): {}",
                        rule.reason
                    ));
                }
                finding.explanation = format!("{} Tuned threshold {tuned} (learned {learned}).", finding.explanation);
                finding.retarget(threshold);
            }
            if let Some(severity) = rule.severity {
                finding.severity = severity;
            }
        }
        match self.detectors.get(&finding.kind).copied().unwrap_or_default() {
            Mode::On => Verdict::Emit(finding),
            Mode::Shadow => Verdict::Shadow(finding),
            Mode::Off => Verdict::Suppressed(format!("detector {} is off", finding.kind.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use stormwatch_model::{Contributor, Edge, Node, NodeKind, RootClass, Sym, SCORE_DECIMALS};

    use crate::DetectConfig;

    use super::*;

    fn finding(kind: AlertKind, observed: f64) -> Finding {
        let node = |s: &str, o: &str, kind| Node { service: Sym::new(s), operation: Sym::new(o), kind };
        let config = DetectConfig { critical_factor: 100.0, ..DetectConfig::default() };
        Finding::judged(kind, observed, 3.0, 15.0, "calls_per_parent", &config)
            .on(Some(Edge {
                from: node("reviews", "GET /reviews", NodeKind::Service),
                to: node("postgresql", "SELECT 1", NodeKind::Database),
            }))
            .entering(Some(RootClass {
                service: Sym::new("gateway"),
                operation: Sym::new("GET /search"),
                query_shape: None,
            }))
            .caused_by(vec![Contributor { name: "clients 10.1.0.0/16 (x-forwarded-for)".into(), share: 0.8 }])
            .against(300, 0, None)
            .explained("reviews ran it 40 times.".into())
    }

    const EDGE: &str = "reviews `GET /reviews` -> postgresql `SELECT 1`";

    fn emitted(verdict: Verdict) -> Finding {
        match verdict {
            Verdict::Emit(f) => f,
            other => panic!("not emitted: {other:?}"),
        }
    }

    #[test]
    fn an_override_raises_one_edges_threshold_and_sets_severity() {
        let rule = |factor: f64| Rule {
            edge: Some(EdgeName::parse(EDGE).unwrap()),
            threshold_factor: Some(factor),
            severity: Some(Severity::Critical),
            enabled: true,
            reason: "known heavy page".into(),
            ..Rule::default()
        };
        let tuning = Tuning { rules: vec![rule(3.0)], ..Tuning::default() };
        assert!(
            matches!(tuning.judge(finding(AlertKind::NPlusOne, 40.0), 0), Verdict::Suppressed(why) if why.contains("45"))
        );
        let alert = emitted(tuning.judge(finding(AlertKind::NPlusOne, 60.0), 0));
        assert_eq!(
            (alert.threshold, rounded(alert.score, SCORE_DECIMALS), alert.severity),
            (45.0, 1.33, Severity::Critical)
        );
        assert!(alert.explanation.contains("Tuned threshold 45 (learned 15)"), "{}", alert.explanation);
        // Another edge is untouched.
        let mut other = finding(AlertKind::NPlusOne, 40.0);
        other.edge = None;
        assert_eq!(emitted(tuning.judge(other, 0)).threshold, 15.0);
    }

    #[test]
    fn limits_minimum_samples_and_disabling_drop_findings() {
        let limit = Rule { kind: Some(AlertKind::NPlusOne), limit: Some(100.0), enabled: true, ..Rule::default() };
        let tuning = Tuning { rules: vec![limit], ..Tuning::default() };
        assert!(matches!(tuning.judge(finding(AlertKind::NPlusOne, 90.0), 0), Verdict::Suppressed(_)));
        assert_eq!(emitted(tuning.judge(finding(AlertKind::NPlusOne, 120.0), 0)).threshold, 100.0);
        assert_eq!(emitted(tuning.judge(finding(AlertKind::FanoutAmplification, 90.0), 0)).threshold, 15.0);

        let min = Rule { min_samples: Some(1_000), enabled: true, ..Rule::default() };
        let tuning = Tuning { rules: vec![min], ..Tuning::default() };
        assert!(matches!(tuning.judge(finding(AlertKind::NPlusOne, 90.0), 0), Verdict::Suppressed(_)));

        let off = Rule { entry: Some("gateway `GET /search`".into()), enabled: false, ..Rule::default() };
        let tuning = Tuning { rules: vec![off], ..Tuning::default() };
        assert!(matches!(tuning.judge(finding(AlertKind::NPlusOne, 90.0), 0), Verdict::Suppressed(_)));
    }

    #[test]
    fn shadow_mode_counts_and_allowlists_expire() {
        let tuning = Tuning {
            detectors: HashMap::from([(AlertKind::RetryStorm, Mode::Shadow), (AlertKind::CacheBypass, Mode::Off)]),
            ..Tuning::default()
        };
        assert!(matches!(tuning.judge(finding(AlertKind::RetryStorm, 90.0), 0), Verdict::Shadow(_)));
        assert!(matches!(tuning.judge(finding(AlertKind::CacheBypass, 90.0), 0), Verdict::Suppressed(_)));
        emitted(tuning.judge(finding(AlertKind::NPlusOne, 90.0), 0));

        let allow = |entry: Option<&str>, clients: Option<&str>| Allowance {
            entry: entry.map(str::to_string),
            clients: clients.map(str::to_string),
            until_unix_nano: 1_000,
            reason: "nightly reindex".into(),
            ..Allowance::default()
        };
        let tuning = Tuning { allow: vec![allow(Some("gateway `GET /search`"), None)], ..Tuning::default() };
        assert!(matches!(tuning.judge(finding(AlertKind::AggregateAmplification, 90.0), 999),
            Verdict::Suppressed(why) if why.contains("nightly reindex")));
        emitted(tuning.judge(finding(AlertKind::AggregateAmplification, 90.0), 1_000));
        let tuning = Tuning { allow: vec![allow(None, Some("10.1.0.0/16"))], ..Tuning::default() };
        assert!(matches!(tuning.judge(finding(AlertKind::AggregateAmplification, 90.0), 0), Verdict::Suppressed(_)));
        let tuning = Tuning { allow: vec![allow(None, Some("10.2.0.0/16"))], ..Tuning::default() };
        emitted(tuning.judge(finding(AlertKind::AggregateAmplification, 90.0), 0));
    }
}
