//! The per-trace detectors and the learning rule.
//!
//! * `fanout_amplification`: calls per parent span on a service edge far beyond its baseline.
//! * `n_plus_one`: the same normalised statement repeated under one parent far beyond its
//!   baseline (the fan-out of an edge into a database or cache).
//! * `request_amplification`: work per root request (calls on an edge, or spans, DB calls,
//!   services in total) far beyond its root class's baseline.
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
//! when no per-parent finding explains the trace, and totals only when no edge does. Within a
//! tier, an edge whose caller is the callee of another anomalous edge is a consequence and is
//! left out.

use std::collections::{HashMap, HashSet};

use stormwatch_baseline::{BaselineStore, ClassScope, Distribution, EdgeScope, RequestMetric, HOLD_FROM_SAMPLES};
use stormwatch_model::{AlertKind, Contributor, Edge, Node, RootClass, Severity, TraceId};

use crate::features::TraceFeatures;

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
        }
    }
}

/// One anomaly found in one trace, before throttling turns it into an alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub kind: AlertKind,
    pub edge: Option<Edge>,
    pub entry: Option<RootClass>,
    /// For request totals: which total.
    pub metric: Option<RequestMetric>,
    pub observed: f64,
    pub expected: f64,
    pub threshold: f64,
    pub unit: &'static str,
    pub score: f64,
    pub severity: Severity,
    /// Traces that show it (the first is the strongest evidence).
    pub exemplars: Vec<TraceId>,
    /// Window-level kinds: who caused the excess.
    pub contributors: Vec<Contributor>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub baseline_samples: u64,
    pub baseline_since_unix_nano: u64,
    /// Judged against a scope above a young key: which (the baseline numbers are its).
    pub baseline_from: Option<String>,
    pub explanation: String,
}

pub(crate) struct Judgement {
    pub(crate) expected: f64,
    pub(crate) threshold: f64,
    pub(crate) samples: u64,
    pub(crate) since: u64,
    /// Which baseline judged.
    pub(crate) basis: Basis,
}

/// Which baseline a judgement was made against.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Basis {
    /// The key's own.
    Own,
    /// An ancestor's, the key being young: which, and how many samples the key has itself.
    Borrowed(Ancestor, u64),
    /// The whole system's: a request total beyond [`NEVER_SEEN_FACTOR`] times its largest.
    Unprecedented,
}

/// The wider baseline a young key is judged against: above a root class, or above an edge.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ancestor {
    Class(ClassScope),
    Edge(EdgeScope),
}

impl std::fmt::Display for Ancestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ancestor::Class(scope) => scope.fmt(f),
            Ancestor::Edge(scope) => scope.fmt(f),
        }
    }
}

/// A young root class or edge (under `learning_min_samples`) judged against a scope above it
/// alerts only beyond this multiple of that scope's threshold (at its p99.9): a class that is
/// merely rarer or a bit heavier than its route, or an edge that loops a little more than its
/// caller's other calls, stays quiet; a storm does not.
pub const BORROWED_FACTOR: f64 = 2.0;

/// A per-trace baseline with this many samples, under `learning_min_samples` and judged by no
/// wider baseline either (the whole system being young), holds back a value beyond
/// [`YOUNG_HOLD_FACTOR`] times the largest it learned (and `min_excess` beyond it): a storm in
/// the system's first minutes is not learned, though nothing can judge it yet.
pub const YOUNG_HOLD_FROM_SAMPLES: u64 = 30;
/// See [`YOUNG_HOLD_FROM_SAMPLES`]. Per-trace counts are heavy-tailed: a few dozen samples'
/// largest value lies well below their p99, so only a value far beyond it is held.
pub const YOUNG_HOLD_FACTOR: u64 = 4;

/// The limit beyond which a young key that nothing judges holds a value back, if `observed`
/// is beyond it (see [`YOUNG_HOLD_FROM_SAMPLES`]).
fn far_beyond_young(own: Option<&Distribution>, observed: u64, config: &DetectConfig) -> Option<f64> {
    let own = own?;
    if !(YOUNG_HOLD_FROM_SAMPLES..config.learning_min_samples).contains(&own.samples()) {
        return None;
    }
    let largest = own.max() as f64;
    let limit = (largest * YOUNG_HOLD_FACTOR as f64).max(largest + config.min_excess);
    (observed as f64 > limit).then_some(limit)
}

/// A request total beyond this multiple of the largest the whole system has learned (spans,
/// database calls or services per request, over every class) alerts whatever its class's own
/// baseline allows: a heavy-tailed class extrapolates its threshold far out, and nothing the
/// system ever did normally comes near this.
pub const NEVER_SEEN_FACTOR: f64 = 4.0;

pub(crate) fn judge(distribution: Option<&Distribution>, observed: u64, config: &DetectConfig) -> Option<Judgement> {
    let distribution = distribution?;
    // Values a young baseline held back count as history it has been through (a surge that
    // started before the baseline could judge must not keep it from judging), as long as what
    // it judges by, what it learned, is more than a handful.
    if distribution.samples() + distribution.held() < config.learning_min_samples
        || distribution.samples() < HOLD_FROM_SAMPLES.min(config.learning_min_samples)
    {
        return None;
    }
    let threshold = threshold_of(distribution, config);
    (observed as f64 > threshold).then(|| Judgement {
        expected: distribution.quantile(0.5) as f64,
        threshold,
        samples: distribution.samples(),
        since: distribution.since_unix_nano(),
        basis: Basis::Own,
    })
}

/// The threshold a young key is held to by a wider baseline: `max(q * ratio, q + min_excess)`
/// at the wider one's p99.9 (or `quantile`, if higher), times [`BORROWED_FACTOR`]. A wider
/// baseline mixes classes, so its tail is their mix, not a power law to extrapolate; its p99.9
/// is the heaviest of what it has seen often enough.
fn borrowed_threshold(distribution: &Distribution, config: &DetectConfig) -> f64 {
    let high = distribution.quantile(config.quantile.max(0.999)) as f64;
    (high * config.ratio).max(high + config.min_excess) * BORROWED_FACTOR
}

/// `max(q * ratio, q + min_excess, tail)` of a baseline (see the module's documentation).
fn threshold_of(distribution: &Distribution, config: &DetectConfig) -> f64 {
    let high = distribution.quantile(config.quantile) as f64;
    (high * config.ratio).max(high + config.min_excess).max(tail_threshold(distribution, high, config))
}

/// A request total of `class` judged against its own baseline, or, while that is young,
/// against the nearest scope above it (its route, its service, the system).
fn judge_total(
    store: &BaselineStore,
    class: RootClass,
    metric: RequestMetric,
    observed: u64,
    config: &DetectConfig,
) -> (Option<Judgement>, bool) {
    let ancestors = ClassScope::above(&class)
        .into_iter()
        .map(|scope| (Ancestor::Class(scope), store.class_scopes.get(&(scope, metric))));
    match judge_young(store.request_totals.get(&(class, metric)), observed, ancestors, config) {
        (None, false) => (unprecedented(store, metric, observed, config), false),
        judged => judged,
    }
}

/// A request total beyond [`NEVER_SEEN_FACTOR`] times the largest the whole system learned,
/// once the system-wide baseline has `learning_min_samples`.
fn unprecedented(
    store: &BaselineStore,
    metric: RequestMetric,
    observed: u64,
    config: &DetectConfig,
) -> Option<Judgement> {
    let system = store.class_scopes.get(&(ClassScope::System, metric))?;
    if system.samples() < config.learning_min_samples {
        return None;
    }
    let threshold = NEVER_SEEN_FACTOR * system.max() as f64;
    (observed as f64 > threshold).then(|| Judgement {
        expected: system.quantile(0.5) as f64,
        threshold,
        samples: system.samples(),
        since: system.since_unix_nano(),
        basis: Basis::Unprecedented,
    })
}

/// The largest calls per parent span of one trace on `edge`, judged against the edge's own
/// baseline or, while that is young, against the scopes above it (every call from its
/// caller's service to its callee's service, then to any callee of its kind).
fn judge_fanout(store: &BaselineStore, edge: Edge, observed: u64, config: &DetectConfig) -> (Option<Judgement>, bool) {
    let ancestors =
        EdgeScope::above(&edge).into_iter().map(|scope| (Ancestor::Edge(scope), store.edge_scopes.get(&scope)));
    judge_young(store.fanout.get(&edge), observed, ancestors, config)
}

/// A key judged against its own baseline once it has `learning_min_samples`; until then
/// against the nearest of `ancestors` (looked up lazily: a mature key costs no lookup of
/// them) that has ([`borrowed_threshold`]), unless the key has
/// already learned as much itself. The judgement is `None` when nothing judges the value or
/// it is within bounds; the flag says whether the key was young and judged by an ancestor
/// (so a value beyond the bounds is held back rather than dropped).
fn judge_young<'a>(
    own: Option<&Distribution>,
    observed: u64,
    ancestors: impl IntoIterator<Item = (Ancestor, Option<&'a Distribution>)>,
    config: &DetectConfig,
) -> (Option<Judgement>, bool) {
    let own_samples = own.map_or(0, Distribution::samples);
    if own_samples >= config.learning_min_samples {
        return (judge(own, observed, config), false);
    }
    // Within what the key itself learned (its ordinary values, and what it held back and
    // learned once it recurred over hours): its own level, not a storm.
    if own.is_some_and(|own| own_samples > 0 && observed <= own.max()) {
        return (None, true);
    }
    for (ancestor, distribution) in ancestors {
        let Some(distribution) = distribution else { continue };
        if distribution.samples() < config.learning_min_samples {
            continue;
        }
        let threshold = borrowed_threshold(distribution, config);
        let judged = (observed as f64 > threshold).then(|| Judgement {
            expected: distribution.quantile(0.5) as f64,
            threshold,
            samples: distribution.samples(),
            since: distribution.since_unix_nano(),
            basis: Basis::Borrowed(ancestor, own_samples),
        });
        return (judged, true);
    }
    (None, false)
}

/// The value the baseline's own tail reaches with probability `false_alarm_rate`: the tail
/// exponent is measured between p90 and `quantile` and extrapolated beyond `quantile`,
/// as for a power law. Capped at one decade of value per decade of probability.
fn tail_threshold(distribution: &Distribution, high: f64, config: &DetectConfig) -> f64 {
    let reference = 0.9_f64.min(config.quantile);
    let low = (distribution.quantile(reference) as f64).max(1.0);
    if high <= low || config.quantile >= 1.0 || config.false_alarm_rate <= 0.0 {
        return high;
    }
    let measured_decades = ((1.0 - reference) / (1.0 - config.quantile)).log10();
    if measured_decades <= 0.0 {
        return high;
    }
    let exponent = ((high / low).log10() / measured_decades).min(1.0);
    let remaining_decades = ((1.0 - config.quantile) / config.false_alarm_rate).log10().max(0.0);
    high * 10f64.powf(exponent * remaining_decades)
}

/// Where the request came in, unless the caller itself is the entry point.
fn entry_suffix(entry: Option<RootClass>, caller: &Node) -> String {
    match entry {
        Some(class) if class.service == caller.service && class.operation == caller.operation => String::new(),
        Some(class) => format!(", in a request entering at {class}"),
        None => ", in a request with no known entry point".into(),
    }
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

struct Pending {
    kind: AlertKind,
    edge: Option<Edge>,
    metric: Option<RequestMetric>,
    observed: u64,
    unit: &'static str,
    judgement: Judgement,
}

impl Pending {
    fn finish(self, features: &TraceFeatures, config: &DetectConfig) -> Finding {
        let Judgement { expected, threshold, samples, since, basis } = self.judgement;
        let observed = self.observed as f64;
        let entry = features.root_class;
        let limits = match basis {
            Basis::Own => format!("normally {}, alert above {}", number(expected), number(threshold)),
            Basis::Unprecedented => format!(
                "never seen in the whole system: every request of the system, normally {}, never more than {} in {} \
                 requests; alert above {NEVER_SEEN_FACTOR}x that",
                number(expected),
                number(threshold / NEVER_SEEN_FACTOR),
                samples
            ),
            Basis::Borrowed(scope, own) => format!(
                "judged against {scope}, as this {} has only {own} {} of history: normally {}, alert above {} \
                 ({BORROWED_FACTOR}x its threshold)",
                match scope {
                    Ancestor::Class(_) => "entry",
                    Ancestor::Edge(_) => "edge",
                },
                match scope {
                    Ancestor::Class(_) => "requests",
                    Ancestor::Edge(_) => "parent spans",
                },
                number(expected),
                number(threshold)
            ),
        };
        let explanation = match (self.kind, self.edge, self.metric) {
            (AlertKind::NPlusOne, Some(edge), _) => format!(
                "{} ran `{}` on {} {} times under one `{}` span ({limits}){}.",
                edge.from.service,
                edge.to.operation,
                edge.to.service,
                self.observed,
                edge.from.operation,
                entry_suffix(entry, &edge.from)
            ),
            (AlertKind::FanoutAmplification, Some(edge), _) => format!(
                "{} called {} {} times under one parent span ({limits}){}.",
                edge.from,
                edge.to,
                self.observed,
                entry_suffix(entry, &edge.from)
            ),
            (_, Some(edge), _) => format!(
                "One request entering at {} made {} calls from {} to {} ({limits}).",
                entry.map_or_else(|| "an unknown entry point".into(), |c| c.to_string()),
                self.observed,
                edge.from,
                edge.to
            ),
            (_, None, metric) => format!(
                "One request entering at {} caused {} {} ({limits}).",
                entry.map_or_else(|| "an unknown entry point".into(), |c| c.to_string()),
                self.observed,
                match metric {
                    Some(RequestMetric::DbCalls) => "database calls",
                    Some(RequestMetric::Services) => "distinct services",
                    _ => "spans",
                }
            ),
        };
        let severity = config.severity(observed, threshold);
        Finding {
            kind: self.kind,
            edge: self.edge,
            entry,
            metric: self.metric,
            observed,
            expected,
            // Extrapolated thresholds are not round; hundredths are plenty for people.
            threshold: (threshold * 100.0).round() / 100.0,
            unit: self.unit,
            score: (observed / threshold * 100.0).round() / 100.0,
            severity,
            exemplars: vec![features.trace_id],
            contributors: Vec::new(),
            start_unix_nano: features.start_unix_nano,
            end_unix_nano: features.end_unix_nano,
            baseline_samples: samples,
            baseline_since_unix_nano: since,
            baseline_from: match basis {
                Basis::Own => None,
                Basis::Borrowed(scope, _) => Some(scope.to_string()),
                Basis::Unprecedented => Some(ClassScope::System.to_string()),
            },
            explanation,
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
    let mut per_parent = Vec::new();
    for edge in &features.edges {
        let (judged, young) = judge_fanout(store, edge.edge, edge.max_calls_per_parent, config);
        if let (None, false) = (&judged, young) {
            if let Some(limit) = far_beyond_young(store.fanout.get(&edge.edge), edge.max_calls_per_parent, config) {
                anomalies.fanout_held.insert(edge.edge, limit);
            }
        }
        if let Some(judgement) = judged {
            if young {
                anomalies.fanout_held.insert(edge.edge, judgement.threshold);
            } else {
                anomalies.fanout.insert(edge.edge);
            }
            let kind =
                if edge.edge.to.kind.is_datastore() { AlertKind::NPlusOne } else { AlertKind::FanoutAmplification };
            per_parent.push(Pending {
                kind,
                edge: Some(edge.edge),
                metric: None,
                observed: edge.max_calls_per_parent,
                unit: "calls_per_parent",
                judgement,
            });
        }
    }
    let mut per_request = Vec::new();
    let mut totals = Vec::new();
    if let Some(class) = features.root_class {
        for edge in &features.edges {
            if let Some(judgement) = judge(store.request_edges.get(&(class, edge.edge)), edge.calls, config) {
                anomalies.request_edges.insert(edge.edge);
                per_request.push(Pending {
                    kind: AlertKind::RequestAmplification,
                    edge: Some(edge.edge),
                    metric: None,
                    observed: edge.calls,
                    unit: "calls_per_request",
                    judgement,
                });
            }
        }
        for metric in RequestMetric::ALL {
            let observed = total(features, metric);
            let (judged, borrowed) = judge_total(store, class, metric, observed, config);
            if borrowed {
                anomalies.borrowed.insert(metric);
            } else if judged.is_none()
                && far_beyond_young(store.request_totals.get(&(class, metric)), observed, config).is_some()
            {
                // Nothing judges it, and the young class never saw anything like it: held.
                anomalies.totals.insert(metric);
                anomalies.borrowed.insert(metric);
            }
            if let Some(judgement) = judged {
                // A request-wide total made large only by edges that sit in their own learned
                // tails (a heavy-tailed loop doing what it now and then does) is not an
                // anomaly: remove that tail work and judge again.
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
                    judgement,
                });
            }
        }
    }
    // A request a borrowed baseline found beyond its bounds (or that went far beyond young
    // keys nothing judges yet) is held back from its young keys on every edge it did more on
    // than they ever learned: the storm teaches none of them.
    let borrowed_storm =
        !anomalies.fanout_held.is_empty() || anomalies.totals.iter().any(|m| anomalies.borrowed.contains(m));
    if let (true, Some(class)) = (borrowed_storm, features.root_class) {
        for edge in &features.edges {
            let own = store.request_edges.get(&(class, edge.edge));
            if own.is_none_or(|own| own.samples() < config.learning_min_samples && edge.calls > own.max()) {
                anomalies.request_edges_held.insert(edge.edge);
            }
        }
    }
    let chosen = if !per_parent.is_empty() {
        root_causes(per_parent)
    } else if !per_request.is_empty() {
        root_causes(per_request)
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

/// `new_edge`: a root class past its learning minimum reaches an edge it never reached
/// before. Info for a call or a few (a deploy adding a call); a warning when the request makes
/// `min_excess` calls or more on it, a real load on a path the class never used. Learning then
/// knows the pair, so it is reported once (then throttled by fingerprint). Not while the store
/// is full: a pair it cannot learn would be new forever.
fn new_edges(features: &TraceFeatures, store: &BaselineStore, config: &DetectConfig) -> Vec<Finding> {
    let Some(class) = features.root_class else { return Vec::new() };
    let Some(history) = store.request_totals.get(&(class, RequestMetric::Spans)) else { return Vec::new() };
    if !features.complete
        || history.samples() < config.learning_min_samples
        || store.request_edges.len() >= store.max_keys()
    {
        return Vec::new();
    }
    features
        .edges
        .iter()
        .filter(|edge| !store.request_edges.contains_key(&(class, edge.edge)))
        .map(|edge| {
            let heavy = edge.calls as f64 >= config.min_excess;
            Finding {
            kind: AlertKind::NewEdge,
            edge: Some(edge.edge),
            entry: Some(class),
            metric: None,
            observed: edge.calls as f64,
            expected: 0.0,
            threshold: 0.0,
            unit: "calls_per_request",
            score: 1.0,
            severity: if heavy { Severity::Warning } else { Severity::Info },
            exemplars: vec![features.trace_id],
            contributors: Vec::new(),
            start_unix_nano: features.start_unix_nano,
            end_unix_nano: features.end_unix_nano,
            baseline_samples: history.samples(),
            baseline_since_unix_nano: history.since_unix_nano(),
            baseline_from: None,
            explanation: format!(
                "Requests entering at {class} reached {} -> {} for the first time in {} requests ({} calls in this one{}).",
                edge.edge.from,
                edge.edge.to,
                history.samples(),
                edge.calls,
                if heavy { ": a real load on a path this entry never used" } else { "" }
            ),
        }
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
            let baseline = store.request_edges.get(&(class, edge.edge))?;
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
    /// Young per-request edge counts of a request beyond a borrowed threshold: held back.
    request_edges_held: HashSet<Edge>,
    totals: HashSet<RequestMetric>,
    /// Totals of a young class judged against a scope above it (or, nothing judging them,
    /// checked against its own few dozen values): beyond that, held back rather than dropped.
    borrowed: HashSet<RequestMetric>,
}

/// Learns a complete trace's observations, except the anomalous ones.
pub fn learn(features: &TraceFeatures, store: &mut BaselineStore, anomalies: &Anomalies) {
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
    store.watermark_unix_nano = store.watermark_unix_nano.max(at);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distribution(values: impl Iterator<Item = u64>) -> Distribution {
        let mut distribution = Distribution::default();
        for value in values {
            distribution.observe(value, 0);
        }
        distribution
    }

    #[test]
    fn light_tails_keep_the_plain_threshold() {
        let config = DetectConfig::default();
        let loop_1_to_5 = distribution((0..1_000).map(|i| 1 + i % 5));
        let high = loop_1_to_5.quantile(0.99) as f64;
        assert!(tail_threshold(&loop_1_to_5, high, &config) <= 15.0);
        assert!(judge(Some(&loop_1_to_5), 16, &config).is_some());
        assert!(judge(Some(&loop_1_to_5), 15, &config).is_none());
    }

    #[test]
    fn heavy_tails_raise_the_threshold_to_their_own_rare_values() {
        let config = DetectConfig::default();
        // A Pareto(1, 1.8) call count, by its quantile function over an even grid, in a
        // scrambled order (a learned tail held by the ceiling is not what this is about).
        let pareto = distribution(
            (1..=10_000u64)
                .map(|i| i * 7_919 % 10_000 + 1)
                .map(|i| (1.0 / (1.0 - i as f64 / 10_001.0)).powf(1.0 / 1.8) as u64),
        );
        let plain = (pareto.quantile(0.99) as f64 * 3.0).max(pareto.quantile(0.99) as f64 + 10.0);
        let tail = tail_threshold(&pareto, pareto.quantile(0.99) as f64, &config);
        assert!(tail > 5.0 * plain, "tail {tail} vs plain {plain}");
        // Values the edge produces now and then do not fire; a storm far past them does.
        assert!(judge(Some(&pareto), 61, &config).is_none());
        assert!(judge(Some(&pareto), 5_000, &config).is_some());
    }

    #[test]
    fn a_request_far_beyond_anything_the_system_did_alerts_whatever_its_class_allows() {
        let config = DetectConfig::default();
        let class = RootClass {
            service: stormwatch_model::Sym::new("gateway"),
            operation: stormwatch_model::Sym::new("GET /search"),
            query_shape: None,
        };
        let mut store = BaselineStore::new(100);
        // A heavy-tailed class (Pareto spans per request, the system's only traffic): its own
        // threshold is extrapolated far beyond its largest request.
        for i in 1..=10_000u64 {
            let quantile = (i * 7_919 % 10_000 + 1) as f64 / 10_001.0;
            let spans = (1.0 / (1.0 - quantile)).powf(1.0 / 1.8) as u64;
            store.observe_request_total(class, RequestMetric::Spans, spans, i);
        }
        let largest = store.class_scopes[&(ClassScope::System, RequestMetric::Spans)].max();
        let beyond = (NEVER_SEEN_FACTOR * largest as f64) as u64 + 1;
        let own = store.request_totals.get(&(class, RequestMetric::Spans));
        assert!(judge(own, beyond, &config).is_none(), "its own tail allows {beyond}");
        let (judged, young) = judge_total(&store, class, RequestMetric::Spans, beyond, &config);
        let judged = judged.expect("never seen in the system");
        assert!(!young && matches!(judged.basis, Basis::Unprecedented), "{:?}", judged.basis);
        assert_eq!(judged.threshold, NEVER_SEEN_FACTOR * largest as f64);
        let (within, _) = judge_total(&store, class, RequestMetric::Spans, beyond - 2, &config);
        assert!(within.is_none());
    }
}
