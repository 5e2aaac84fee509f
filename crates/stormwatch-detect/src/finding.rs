//! A finding: one anomaly, before throttling turns it into an alert.
//!
//! Every detector builds its findings the same way: [`Finding::judged`] for a value judged
//! against a learned limit (its score and severity follow from the one rule,
//! [`DetectConfig::severity`]), [`Finding::notice`] for the kinds that have no limit (a first
//! call on an edge, a flood of invented names), then the builder methods for what it is about,
//! when, against which baseline, shown by which traces and caused by whom. Figures stay at
//! full precision here; they are rounded once, when the alert is made
//! ([`stormwatch_model::FIGURE_DECIMALS`]).

use stormwatch_baseline::RequestMetric;
use stormwatch_model::{AlertKind, Contributor, Edge, RootClass, Severity, TraceId};

use crate::DetectConfig;

/// One anomaly found in one trace or one window, before throttling turns it into an alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// What kind of amplification.
    pub kind: AlertKind,
    /// The edge it happened on; `None` for request totals and name floods.
    pub edge: Option<Edge>,
    /// The root class of the request (per-trace kinds) or the class that contributed most
    /// (window kinds).
    pub entry: Option<RootClass>,
    /// For request totals: which total.
    pub metric: Option<RequestMetric>,
    /// The value seen, in `unit`.
    pub observed: f64,
    /// The baseline's typical value.
    pub expected: f64,
    /// The limit `observed` crossed (0 for kinds without one).
    pub threshold: f64,
    /// The unit of `observed`, `expected` and `threshold` (`calls_per_parent`, ...).
    pub unit: &'static str,
    /// `observed / threshold`; 1 for kinds without a limit.
    pub score: f64,
    /// How bad: by [`DetectConfig::severity`] for judged findings.
    pub severity: Severity,
    /// Traces that show it (the first is the strongest evidence).
    pub exemplars: Vec<TraceId>,
    /// Window-level kinds: who caused the excess.
    pub contributors: Vec<Contributor>,
    /// Event time the evidence starts at.
    pub start_unix_nano: u64,
    /// Event time the evidence ends at.
    pub end_unix_nano: u64,
    /// Observations of the baseline that judged.
    pub baseline_samples: u64,
    /// Event time of that baseline's first observation.
    pub baseline_since_unix_nano: u64,
    /// Judged against a scope above a young key: which (the baseline numbers are its).
    pub baseline_from: Option<String>,
    /// What happened, in one sentence with the limits it broke.
    pub explanation: String,
}

impl Finding {
    /// A value judged against a learned limit: its score is `observed / threshold` and its
    /// severity follows [`DetectConfig::severity`].
    pub fn judged(
        kind: AlertKind,
        observed: f64,
        expected: f64,
        threshold: f64,
        unit: &'static str,
        config: &DetectConfig,
    ) -> Finding {
        let mut finding = Finding::notice(kind, observed, unit, config.severity(observed, threshold));
        finding.expected = expected;
        finding.retarget(threshold);
        finding
    }

    /// A finding without a learned limit (expected and threshold 0, score 1), at `severity`.
    pub fn notice(kind: AlertKind, observed: f64, unit: &'static str, severity: Severity) -> Finding {
        Finding {
            kind,
            edge: None,
            entry: None,
            metric: None,
            observed,
            expected: 0.0,
            threshold: 0.0,
            unit,
            score: 1.0,
            severity,
            exemplars: Vec::new(),
            contributors: Vec::new(),
            start_unix_nano: 0,
            end_unix_nano: 0,
            baseline_samples: 0,
            baseline_since_unix_nano: 0,
            baseline_from: None,
            explanation: String::new(),
        }
    }

    /// Judges the same value against another limit (a tuned one): the score follows; the
    /// severity stays what the learned limit, or a tuning rule, made it.
    pub fn retarget(&mut self, threshold: f64) {
        self.threshold = threshold;
        self.score = self.observed / threshold.max(1e-9);
    }

    /// On `edge`.
    pub fn on(mut self, edge: Option<Edge>) -> Finding {
        self.edge = edge;
        self
    }

    /// In requests of `entry` (or mostly from it).
    pub fn entering(mut self, entry: Option<RootClass>) -> Finding {
        self.entry = entry;
        self
    }

    /// Of the request total `metric`.
    pub fn of(mut self, metric: Option<RequestMetric>) -> Finding {
        self.metric = metric;
        self
    }

    /// Seen between these event times.
    pub fn during(mut self, start_unix_nano: u64, end_unix_nano: u64) -> Finding {
        self.start_unix_nano = start_unix_nano;
        self.end_unix_nano = end_unix_nano;
        self
    }

    /// Judged by a baseline of `samples` observations since `since_unix_nano`, borrowed from
    /// the scope `from` when the finding's own was too young.
    pub fn against(mut self, samples: u64, since_unix_nano: u64, from: Option<String>) -> Finding {
        self.baseline_samples = samples;
        self.baseline_since_unix_nano = since_unix_nano;
        self.baseline_from = from;
        self
    }

    /// Shown by these traces, strongest first.
    pub fn shown_by(mut self, exemplars: Vec<TraceId>) -> Finding {
        self.exemplars = exemplars;
        self
    }

    /// Caused by these contributors.
    pub fn caused_by(mut self, contributors: Vec<Contributor>) -> Finding {
        self.contributors = contributors;
        self
    }

    /// Explained by `sentence`.
    pub fn explained(mut self, sentence: String) -> Finding {
        self.explanation = sentence;
        self
    }
}
