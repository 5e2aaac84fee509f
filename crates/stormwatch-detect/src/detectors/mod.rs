//! The per-trace detectors and the learning rule.
//!
//! * `fanout_amplification`: calls per parent span on a service edge far beyond its baseline.
//! * `n_plus_one`: the same normalised statement repeated under one parent far beyond its
//!   baseline (the fan-out of an edge into a database or cache).
//! * `request_amplification`: work per root request (calls on an edge, or spans, DB calls,
//!   services in total) far beyond its root class's baseline.
//! * `cost_amplification`: work in time per root request on an edge (its calls' durations,
//!   summed) far beyond its root class's baseline (`cost`).
//! * `egress_amplification`: payload bytes (rows from a database) per root request, sent back
//!   to the client or returned on an edge, far beyond its root class's baseline (`egress`).
//!
//! A value is anomalous when it exceeds `max(q * ratio, q + min_excess, tail)`, `q` being the
//! baseline's `quantile` (p99 by default): a loop that is normally 1-5 stays quiet, the same
//! loop at 400 fires. `tail` guards heavy-tailed edges (a call count that is usually 1 but
//! follows a power law): the steepness of the baseline's own tail, measured between p90 and
//! p99, is extrapolated to the value that normal traffic exceeds with probability
//! `false_alarm_rate` per observation. For light tails (p90 close to p99) it stays below the
//! other two terms; for a Pareto tail it rises as far as the tail does, and no further. A baseline judges only after `learning_min_samples` observations.
//! Until then a root class's request totals are judged against the nearest wider baseline
//! that has them (every request to its route, its service, the system; [`BORROWED_FACTOR`]),
//! and what is beyond that is held back from the young class, not learned.
//! Anomalous observations never train the baseline, so an attacker cannot teach it the attack;
//! incomplete traces never train it either.
//!
//! One incident, one alert: per-parent findings are reported first; request-level ones only
//! when no per-parent finding explains the trace; bytes only when no call count does (a loop
//! of calls also returns more), then time (moving bytes takes time); totals only when no edge
//! does. Within a count tier, an edge whose caller is the callee of another anomalous edge is
//! a consequence and is left out; time is each callee's own, so it does not nest; of bytes,
//! what left the system speaks for the request, else the deepest edge (`egress`).
//!
//! `judge` holds the thresholds and which baseline judges (own, borrowed, the system's);
//! `wording` the findings' sentences.

use std::collections::{HashMap, HashSet};

use stormwatch_baseline::{BaselineStore, RequestMetric};
use stormwatch_model::{AlertKind, Edge, Node, RootClass, Severity};

use crate::features::TraceFeatures;
use crate::Finding;

mod cost;
mod egress;
mod judge;
mod wording;

pub(crate) use wording::{number, requester};

pub(crate) use judge::{judge, Judgement};
use judge::{judge_fanout, judge_total, Outcome};
pub use judge::{BORROWED_FACTOR, NEVER_SEEN_FACTOR, YOUNG_HOLD_FACTOR, YOUNG_HOLD_FROM_SAMPLES};
use wording::Pending;

/// Detection thresholds.
#[derive(Clone, Debug)]
pub struct DetectConfig {
    /// Observations a baseline needs before it judges.
    pub learning_min_samples: u64,
    /// The baseline quantile thresholds are built on.
    pub quantile: f64,
    /// Alert above `quantile * ratio` ...
    pub ratio: f64,
    /// ... and above `quantile + min_excess` (both must be exceeded).
    pub min_excess: f64,
    /// Critical at this multiple of the threshold; warning below.
    pub critical_factor: f64,
    /// Per-observation probability of a false alarm that heavy-tailed baselines are
    /// extrapolated to.
    pub false_alarm_rate: f64,
    /// `min_excess` of work in time (`cost_amplification`), milliseconds per request.
    pub min_excess_work_ms: f64,
    /// `min_excess` of payload bytes (`egress_amplification`), bytes per request.
    pub min_excess_bytes: f64,
    /// `min_excess` of rows a database returned (`egress_amplification` on an edge into a
    /// database), rows per request.
    pub min_excess_rows: f64,
}

impl DetectConfig {
    /// The severity of an anomaly: critical at `critical_factor` times its threshold or more,
    /// a warning below. The one rule every detector uses.
    pub fn severity(&self, observed: f64, threshold: f64) -> Severity {
        if observed >= threshold * self.critical_factor {
            Severity::Critical
        } else {
            Severity::Warning
        }
    }
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            learning_min_samples: 200,
            quantile: 0.99,
            ratio: 3.0,
            min_excess: 10.0,
            critical_factor: 4.0,
            false_alarm_rate: 1e-5,
            min_excess_work_ms: 20.0,
            min_excess_bytes: 1_000_000.0,
            min_excess_rows: 10_000.0,
        }
    }
}

/// Drops findings on edges whose caller is the callee of another finding's edge: the
/// downstream consequence of an amplification already reported.
fn root_causes(pending: Vec<Pending>) -> Vec<Pending> {
    let callees: HashSet<Node> = pending.iter().filter_map(|p| p.edge.map(|e| e.to)).collect();
    pending.into_iter().filter(|p| p.edge.is_none_or(|e| !callees.contains(&e.from))).collect()
}

/// Judges a trace against the baselines. Returns findings in a stable order, and which
/// observations were anomalous (so that learning skips them).
pub fn detect(features: &TraceFeatures, store: &BaselineStore, config: &DetectConfig) -> (Vec<Finding>, Anomalies) {
    let mut anomalies = Anomalies::default();
    let per_parent = judge_per_parent(features, store, config, &mut anomalies);
    let (per_request, egress, cost, mut totals) = match features.root_class {
        Some(class) => (
            judge_request_edges(features, class, store, config, &mut anomalies),
            egress::judge_egress(features, class, store, config, &mut anomalies),
            cost::judge_cost(features, class, store, config, &mut anomalies),
            judge_totals(features, class, store, config, &mut anomalies),
        ),
        None => (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
    };
    hold_young_request_edges(features, store, config, &mut anomalies);
    let chosen = if !per_parent.is_empty() {
        root_causes(per_parent)
    } else if !per_request.is_empty() {
        root_causes(per_request)
    } else if !egress.is_empty() {
        // Already one finding per path (`egress`).
        egress
    } else if !cost.is_empty() {
        cost
    } else {
        // The largest relative excess speaks for the request; the other totals follow from it.
        totals.sort_by(|a, b| {
            let ratio = |p: &Pending| p.observed as f64 / p.judgement.threshold;
            ratio(b).total_cmp(&ratio(a))
        });
        totals.truncate(1);
        totals
    };
    let mut findings: Vec<Finding> = chosen.into_iter().map(|p| p.finish(features, config)).collect();
    findings.extend(new_edges(features, store, config));
    (findings, anomalies)
}

/// Calls per parent span on each edge (`n_plus_one` into a datastore, `fanout_amplification`
/// otherwise), against the edge's baseline or, while it is young, a scope above it.
fn judge_per_parent(
    features: &TraceFeatures,
    store: &BaselineStore,
    config: &DetectConfig,
    anomalies: &mut Anomalies,
) -> Vec<Pending> {
    let mut per_parent = Vec::new();
    for edge in &features.edges {
        let judgement = match judge_fanout(store, edge.edge, edge.max_calls_per_parent, config) {
            Outcome::Own(Some(judgement)) => {
                anomalies.fanout.insert(edge.edge);
                judgement
            }
            Outcome::Borrowed(Some(judgement)) => {
                anomalies.fanout_held.insert(edge.edge, judgement.threshold);
                judgement
            }
            // Nothing judges it, and the young edge never saw anything like it: held.
            Outcome::Unjudged(Some(limit)) => {
                anomalies.fanout_held.insert(edge.edge, limit);
                continue;
            }
            Outcome::Own(None) | Outcome::Borrowed(None) | Outcome::Unjudged(None) => continue,
        };
        let kind = if edge.edge.to.kind.is_datastore() { AlertKind::NPlusOne } else { AlertKind::FanoutAmplification };
        per_parent.push(Pending {
            kind,
            edge: Some(edge.edge),
            metric: None,
            observed: edge.max_calls_per_parent,
            unit: "calls_per_parent",
            scale: 1.0,
            allowance: None,
            judgement,
        });
    }
    per_parent
}

/// Calls on each edge per root request, against the root class's baseline for that edge.
fn judge_request_edges(
    features: &TraceFeatures,
    class: RootClass,
    store: &BaselineStore,
    config: &DetectConfig,
    anomalies: &mut Anomalies,
) -> Vec<Pending> {
    let mut per_request = Vec::new();
    for edge in &features.edges {
        if let Some(judgement) = judge(store.request_edges().get(&(class, edge.edge)), edge.calls, config) {
            anomalies.request_edges.insert(edge.edge);
            per_request.push(Pending {
                kind: AlertKind::RequestAmplification,
                edge: Some(edge.edge),
                metric: None,
                observed: edge.calls,
                unit: "calls_per_request",
                scale: 1.0,
                allowance: None,
                judgement,
            });
        }
    }
    per_request
}

/// Spans, database calls and services per request, against the class's baselines (or a
/// scope above it while it is young, or the whole system's for what it never did).
fn judge_totals(
    features: &TraceFeatures,
    class: RootClass,
    store: &BaselineStore,
    config: &DetectConfig,
    anomalies: &mut Anomalies,
) -> Vec<Pending> {
    let mut totals = Vec::new();
    for metric in RequestMetric::ALL {
        let observed = total(features, metric);
        let judged = match judge_total(store, class, metric, observed, config) {
            Outcome::Own(judged) => judged,
            Outcome::Borrowed(judged) => {
                anomalies.borrowed.insert(metric);
                judged
            }
            // Nothing judges it, and the young class never saw anything like it: held.
            Outcome::Unjudged(Some(_)) => {
                anomalies.totals.insert(metric);
                anomalies.borrowed.insert(metric);
                None
            }
            Outcome::Unjudged(None) => None,
        };
        let Some(judgement) = judged else { continue };
        // A request-wide total made large only by edges that sit in their own learned tails (a
        // heavy-tailed loop doing what it now and then does) is not an anomaly: remove that
        // tail work and judge again.
        let ordinary = observed.saturating_sub(tail_excess(features, class, metric, store, config));
        if ordinary as f64 <= judgement.threshold {
            continue;
        }
        anomalies.totals.insert(metric);
        totals.push(Pending {
            kind: AlertKind::RequestAmplification,
            edge: None,
            metric: Some(metric),
            observed,
            unit: match metric {
                RequestMetric::Spans => "spans_per_request",
                RequestMetric::DbCalls => "db_calls_per_request",
                RequestMetric::Services => "services_per_request",
            },
            scale: 1.0,
            allowance: None,
            judgement,
        });
    }
    totals
}

/// A request a borrowed baseline found beyond its bounds (or that went far beyond young keys
/// nothing judges yet) is held back from its young keys on every edge it did more on than they
/// ever learned: the storm teaches none of them.
fn hold_young_request_edges(
    features: &TraceFeatures,
    store: &BaselineStore,
    config: &DetectConfig,
    anomalies: &mut Anomalies,
) {
    let borrowed_storm =
        !anomalies.fanout_held.is_empty() || anomalies.totals.iter().any(|m| anomalies.borrowed.contains(m));
    let Some(class) = features.root_class.filter(|_| borrowed_storm) else { return };
    for edge in &features.edges {
        let own = store.request_edges().get(&(class, edge.edge));
        if own.is_none_or(|own| own.samples() < config.learning_min_samples && edge.calls > own.max()) {
            anomalies.request_edges_held.insert(edge.edge);
        }
    }
}

/// `new_edge`: a root class past its learning minimum reaches an edge it never reached
/// before. Info for a call or a few (a deploy adding a call); a warning when the request makes
/// `min_excess` calls or more on it, a real load on a path the class never used. Learning then
/// knows the pair, so it is reported once (then throttled by fingerprint). Not while the store
/// is full: a pair it cannot learn would be new forever.
fn new_edges(features: &TraceFeatures, store: &BaselineStore, config: &DetectConfig) -> Vec<Finding> {
    let Some(class) = features.root_class else { return Vec::new() };
    let Some(history) = store.request_totals().get(&(class, RequestMetric::Spans)) else { return Vec::new() };
    if !features.complete
        || history.samples() < config.learning_min_samples
        || store.request_edges().len() >= store.max_keys()
    {
        return Vec::new();
    }
    features
        .edges
        .iter()
        .filter(|edge| !store.request_edges().contains_key(&(class, edge.edge)))
        .map(|edge| {
            let heavy = edge.calls as f64 >= config.min_excess;
            let severity = if heavy { Severity::Warning } else { Severity::Info };
            Finding::notice(AlertKind::NewEdge, edge.calls as f64, "calls_per_request", severity)
                .on(Some(edge.edge))
                .entering(Some(class))
                .shown_by(vec![features.trace_id])
                .during(features.start_unix_nano, features.end_unix_nano)
                .against(history.samples(), history.since_unix_nano(), None)
                .explained(format!(
                    "Requests entering at {class} reached {} -> {} for the first time in {} requests ({} calls in this \
                     one{}).",
                    edge.edge.from,
                    edge.edge.to,
                    history.samples(),
                    edge.calls,
                    if heavy { ": a real load on a path this entry never used" } else { "" }
                ))
        })
        .collect()
}

/// Work in `metric` units that edges did beyond their typical per-request count while staying
/// within their own thresholds (their learned tail). Distinct services are not additive and
/// get none.
fn tail_excess(
    features: &TraceFeatures,
    class: RootClass,
    metric: RequestMetric,
    store: &BaselineStore,
    config: &DetectConfig,
) -> u64 {
    features
        .edges
        .iter()
        .filter_map(|edge| {
            let spans_per_call = match (metric, edge.edge.to.kind.is_datastore()) {
                (RequestMetric::Services, _) | (RequestMetric::DbCalls, false) => return None,
                (RequestMetric::DbCalls, true) => 1,
                // A call to a service is a CLIENT and a SERVER span; to anything else, one span.
                (RequestMetric::Spans, _) if edge.edge.to.kind == stormwatch_model::NodeKind::Service => 2,
                (RequestMetric::Spans, _) => 1,
            };
            let baseline = store.request_edges().get(&(class, edge.edge))?;
            if baseline.samples() < config.learning_min_samples
                || edge.calls <= baseline.quantile(config.quantile)
                || judge(Some(baseline), edge.calls, config).is_some()
            {
                return None;
            }
            Some(edge.calls.saturating_sub(baseline.quantile(0.5)) * spans_per_call)
        })
        .sum()
}

fn total(features: &TraceFeatures, metric: RequestMetric) -> u64 {
    match metric {
        RequestMetric::Spans => features.spans,
        RequestMetric::DbCalls => features.db_calls,
        RequestMetric::Services => features.services,
    }
}

/// Which observations of a trace were judged anomalous.
#[derive(Debug, Default)]
pub struct Anomalies {
    fanout: HashSet<Edge>,
    /// Young edges beyond a borrowed threshold (or far beyond their own few dozen values when
    /// nothing judges them), with it: their parent spans beyond it are held back, the others
    /// learned.
    fanout_held: HashMap<Edge, f64>,
    request_edges: HashSet<Edge>,
    /// Edges whose work per request was beyond its threshold: not learned.
    request_work: HashSet<Edge>,
    /// Edges (and the entry's pseudo-edge) whose bytes per request were beyond their
    /// threshold: not learned.
    request_bytes: HashSet<Edge>,
    /// Young per-request edge counts of a request beyond a borrowed threshold: held back.
    request_edges_held: HashSet<Edge>,
    totals: HashSet<RequestMetric>,
    /// Totals of a young class judged against a scope above it (or, nothing judging them,
    /// checked against its own few dozen values): beyond that, held back rather than dropped.
    borrowed: HashSet<RequestMetric>,
}

/// Learns a complete trace's observations, except the anomalous ones.
pub fn learn(features: &TraceFeatures, store: &mut BaselineStore, config: &DetectConfig, anomalies: &Anomalies) {
    if !features.complete {
        return;
    }
    let at = features.end_unix_nano;
    for edge in &features.edges {
        if anomalies.fanout.contains(&edge.edge) {
            continue;
        }
        match anomalies.fanout_held.get(&edge.edge) {
            None => store.observe_fanout(edge.edge, &edge.calls_per_parent, at),
            // Beyond a borrowed threshold: the young edge holds it back.
            Some(&threshold) => {
                let (held, learned): (Vec<u64>, Vec<u64>) =
                    edge.calls_per_parent.iter().partition(|&&calls| calls as f64 > threshold);
                store.observe_fanout(edge.edge, &learned, at);
                for calls in held {
                    store.hold_fanout(edge.edge, calls, at);
                }
            }
        }
    }
    if let Some(class) = features.root_class {
        for edge in &features.edges {
            if anomalies.request_edges_held.contains(&edge.edge) {
                store.hold_request_edge(class, edge.edge, edge.calls, at);
            } else if !anomalies.request_edges.contains(&edge.edge) {
                store.observe_request_edge(class, edge.edge, edge.calls, at);
            }
        }
        cost::learn_cost(features, class, store, config, anomalies);
        egress::learn_egress(features, class, store, config, anomalies);
        for metric in RequestMetric::ALL {
            let value = total(features, metric);
            match (anomalies.totals.contains(&metric), anomalies.borrowed.contains(&metric)) {
                (false, _) => store.observe_request_total(class, metric, value, at),
                // Beyond a borrowed threshold: the young class holds it back (learned only if the
                // same recurs over hours: it may be the class's own level, not an incident).
                (true, true) => store.hold_request_total(class, metric, value, at),
                // Beyond its own threshold: never learned.
                (true, false) => {}
            }
        }
    }
    store.advance_watermark(at);
}

/// Judges a trace, then learns it as the engine does: what a test of a detector runs per trace.
#[cfg(test)]
fn judged(store: &mut BaselineStore, features: &TraceFeatures) -> Vec<Finding> {
    let config = DetectConfig::default();
    let (findings, anomalies) = detect(features, store, &config);
    learn(features, store, &config, &anomalies);
    findings
}

#[cfg(test)]
mod tests;
