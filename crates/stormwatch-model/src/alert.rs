//! The alert contract (`stormwatch.alert/v1`). Field names and meanings are fixed by
//! DESIGN.md and `schemas/alert.v1.schema.json`; change them only together with the schema,
//! the README and the tests.

use serde::{Deserialize, Serialize};

/// Value of the `schema` field.
pub const ALERT_SCHEMA: &str = "stormwatch.alert/v1";

/// What kind of amplification an alert reports; serialised as its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Calls per parent span on an edge far beyond the edge's baseline.
    FanoutAmplification,
    /// Work per root request far beyond the root class's baseline.
    RequestAmplification,
    /// One normalised statement repeated under one parent far beyond its baseline.
    NPlusOne,
    /// Window level: downstream work on an edge per entry request far beyond its baseline.
    AggregateAmplification,
    /// Window level: the share of calls on an edge that are retries far beyond its baseline.
    RetryStorm,
    /// Window level: a cache's miss ratio far beyond its baseline.
    CacheBypass,
    /// A well-known root class reached an edge that is not in its learned call graph.
    NewEdge,
    /// Window level: many edges moved together in a way no learned traffic pattern explains.
    CorrelatedStorm,
    /// The traffic invents service, operation, statement or peer names faster than the
    /// engine's cardinality limits allow: new names are being folded into `<overflow>`.
    CardinalityFlood,
    /// Work in time (the summed duration of the calls on an edge) per root request far
    /// beyond the root class's baseline, beyond what a callee slower for everyone explains.
    CostAmplification,
    /// Payload bytes per root request far beyond the root class's baseline: what a request
    /// sent back to its client (exfiltration, a response amplifier), or what a callee returned
    /// to a caller inside the system.
    EgressAmplification,
    /// One request sent far more messages to a queue than its root class's baseline: judged
    /// once its consumers' work is in, which the alert attributes back to the request.
    QueueAmplification,
}

impl AlertKind {
    /// The kind's name in alerts, metrics and the tuning file (`n_plus_one`).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::FanoutAmplification => "fanout_amplification",
            AlertKind::RequestAmplification => "request_amplification",
            AlertKind::NPlusOne => "n_plus_one",
            AlertKind::AggregateAmplification => "aggregate_amplification",
            AlertKind::RetryStorm => "retry_storm",
            AlertKind::CacheBypass => "cache_bypass",
            AlertKind::NewEdge => "new_edge",
            AlertKind::CorrelatedStorm => "correlated_storm",
            AlertKind::CardinalityFlood => "cardinality_flood",
            AlertKind::CostAmplification => "cost_amplification",
            AlertKind::EgressAmplification => "egress_amplification",
            AlertKind::QueueAmplification => "queue_amplification",
        }
    }

    /// Every kind, in the order of [`AlertKind::index`].
    pub const ALL: [AlertKind; 12] = [
        AlertKind::FanoutAmplification,
        AlertKind::RequestAmplification,
        AlertKind::NPlusOne,
        AlertKind::AggregateAmplification,
        AlertKind::RetryStorm,
        AlertKind::CacheBypass,
        AlertKind::NewEdge,
        AlertKind::CorrelatedStorm,
        AlertKind::CardinalityFlood,
        AlertKind::CostAmplification,
        AlertKind::EgressAmplification,
        AlertKind::QueueAmplification,
    ];

    /// Where this kind's alert counts go in `[u64; AlertKind::ALL.len()]` arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How bad an alert is; serialised as `info`, `warning` or `critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing, not worth waking anyone (a new call on an edge).
    Info,
    /// Beyond the threshold.
    Warning,
    /// At `critical_factor` times the threshold or more.
    Critical,
}

/// The event time an alert's evidence spans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertWindow {
    /// RFC 3339, event time.
    pub start: String,
    /// RFC 3339, event time.
    pub end: String,
}

/// A caller or entry point as an alert names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertNode {
    /// The service (`service.name`).
    pub service: String,
    /// The operation (span name or `METHOD route`).
    pub operation: String,
    /// Query-parameter keys that define the root class, when any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_keys: Vec<String>,
}

/// The callee of an alert's edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertTargetNode {
    /// The service, or for virtual nodes the database, cache, queue or peer name.
    pub service: String,
    /// The operation or normalised statement.
    pub operation: String,
    /// `service`, `database`, `cache`, `queue` or `peer`.
    pub kind: String,
}

/// An alert's edge: caller and callee.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEdge {
    /// The caller.
    pub from: AlertNode,
    /// The callee.
    pub to: AlertTargetNode,
}

/// Who caused a window-level alert's excess, and how much of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contributor {
    /// An entry class or client address.
    pub name: String,
    /// Share of the excess, 0..=1.
    pub share: f64,
}

/// The baseline that judged an alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertBaseline {
    /// Observations the baseline has learned from.
    pub samples: u64,
    /// RFC 3339 event time of the first observation.
    pub since: String,
    /// Present when the alert's own baseline was too young to judge and a wider one judged
    /// instead (e.g. `every request to gateway `GET /products``): `samples` and `since` are
    /// that one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// Decimal places of an alert's figures (`observed`, `expected`, `threshold` and each
/// contributor's `share`). Detection works at full precision; an alert is rounded once, when
/// it is made from a finding.
pub const FIGURE_DECIMALS: i32 = 3;

/// Decimal places of an alert's `score`.
pub const SCORE_DECIMALS: i32 = 2;

/// `value` rounded to `decimals` places, the way alerts and dashboards show figures.
pub fn rounded(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// One alert message. Serialized as one JSON object per Kafka message / JSON line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Always [`ALERT_SCHEMA`].
    pub schema: String,
    /// Deterministic id: the same evidence gives the same id, so redeliveries can be de-duplicated.
    pub id: String,
    /// The stable identity of what is anomalous (kind, edge, entry class): repeats share it.
    pub fingerprint: String,
    /// What kind of amplification.
    pub kind: AlertKind,
    /// How bad.
    pub severity: Severity,
    /// RFC 3339 wall-clock time the engine made the alert.
    pub detected_at: String,
    /// The event time the evidence spans.
    pub window: AlertWindow,
    /// The entry point (root class) of the request, or the class that contributed most.
    pub entry: Option<AlertNode>,
    /// The edge it happened on; absent for request totals and name floods.
    pub edge: Option<AlertEdge>,
    /// The value seen, in `unit` ([`FIGURE_DECIMALS`] decimals).
    pub observed: f64,
    /// The baseline's typical value.
    pub expected: f64,
    /// The limit that was crossed.
    pub threshold: f64,
    /// The unit of `observed`, `expected` and `threshold` (`calls_per_parent`, ...).
    pub unit: String,
    /// `observed / threshold` ([`SCORE_DECIMALS`] decimals); comparable within a kind.
    pub score: f64,
    /// Occurrences this message stands for: 1 for the first, more for a throttled summary.
    pub count: u64,
    /// Traces that show it, strongest first: open them in a tracing UI.
    pub exemplar_trace_ids: Vec<String>,
    /// Window-level kinds: who caused the excess.
    pub contributors: Vec<Contributor>,
    /// What happened, in one sentence with the limits it broke.
    pub explanation: String,
    /// The baseline that judged.
    pub baseline: AlertBaseline,
}

impl Alert {
    /// One JSON line, without the trailing newline.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and finite numbers cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|error| format!("{{\"schema\":\"{ALERT_SCHEMA}\",\"error\":\"{error}\"}}"))
    }
}
