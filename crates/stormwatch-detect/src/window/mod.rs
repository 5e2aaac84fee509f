//! Window-level detection: what no single trace shows.
//!
//! Completed traces are folded into tumbling event-time windows (default 10 s). Per edge a
//! window counts calls, errors, retries and payload bytes, and attributes every call to the
//! root class, the client population (/16 for IPv4, /64 for IPv6) and the authenticated user
//! (`enduser.id`) of the request that caused it, in bounded heavy-hitter sketches. Per cache it counts lookups and the database reads beside
//! them. When event time has passed a window (plus the time traces need to complete), it is
//! judged against window baselines:
//!
//! * `aggregate_amplification`: calls on an edge **per entry request** far beyond baseline.
//!   Normalising by entry requests keeps a flash crowd with the usual mix quiet: every edge
//!   rises in proportion. The alert names the root classes whose calls exceed their learned
//!   share, and the client populations and users that made a large part of the calls.
//! * `retry_storm`: the share of calls on an edge that are retries far beyond baseline.
//! * `cache_bypass`: database reads per cache lookup (the miss ratio) far beyond baseline.
//! * `cost_amplification`, `egress_amplification`: the callee's time, and the bytes it
//!   returned, on an edge per entry request far beyond baseline (`cost`), unless a count
//!   finding on the same edge explains them.
//!
//! Work per entry request also has a daily profile: once an hour of the day has two whole days
//! of history, its usual level there lifts the edge's baseline (at most threefold), so a mix
//! that is normal every morning is not an incident every morning, while a storm beyond it is.
//!
//! An alert also needs an absolute excess (`min_excess` calls in the window), so low-volume
//! noise does not fire. Aggregate amplification also needs breadth and significance: calls of
//! traces a per-trace detector reported are not its evidence, the excess must stand without
//! the three heaviest traces, and it must exceed the compound-Poisson noise of the window. Windows with too few entry requests are neither judged nor learned;
//! metrics judged anomalous are not learned (whether they alerted, were throttled, or were
//! dropped as the consequence of another edge), and a young window baseline holds back what
//! it has never seen the like of ([`stormwatch_baseline::Distribution::observe_guarded`]), so
//! a surge cannot teach itself. Pure: values in, values out.
//!
//! * `data`: what a window counts per edge and per cache, merging windows, open windows;
//! * `sketch`: the space-saving heavy-hitter sketch attribution counts with;
//! * `aggregate`, `retry`, `cache`, `cost`: one detector each (`cost` two);
//! * `attribution`: who caused an excess; `wording`: findings as the engine reports them.

use stormwatch_baseline::{BaselineStore, WindowMetric};
use stormwatch_model::{AlertKind, Contributor, Edge, RootClass, TraceId};

use crate::detectors::{DetectConfig, Judgement};
use crate::Finding;

mod aggregate;
mod attribution;
mod cache;
mod cost;
mod data;
mod retry;
mod sketch;
mod wording;

use data::{CacheWindow, EdgeWindow};
pub use data::{Window, Windows};
pub use sketch::SpaceSaving;
/// The client population of an address (decoders already intern populations; spans built
/// otherwise may carry addresses).
pub use stormwatch_model::client_population;
pub(crate) use wording::correlated_finding;

const NANOS_PER_SEC: u64 = 1_000_000_000;
pub(crate) const MAX_EXEMPLARS: usize = 5;
/// Heaviest traces per edge left out of aggregate evidence.
const HEAVIEST_TRACES: usize = 3;

/// Window settings.
#[derive(Clone, Debug)]
pub struct WindowConfig {
    /// Window length, nanoseconds of event time.
    pub window_nanos: u64,
    /// How long after a window ends its traces may still complete (set from `trace_idle`).
    pub close_delay_nanos: u64,
    /// Windows with fewer entry requests are neither judged nor learned.
    pub min_entry_requests: u64,
    /// Windows a baseline needs before it judges.
    pub min_windows: u64,
    /// Smallest absolute excess (calls, retries, database reads) in one window that alerts.
    pub min_excess: u64,
    /// Alert above `p99 x ratio` (and the tail guard of the per-trace detectors).
    pub ratio: f64,
    /// Root classes, client populations and users kept per edge per window.
    pub top_k: usize,
    /// The most traces one sampled trace may stand for in window counts (its adjusted count
    /// is capped here): a sender cannot make one request weigh more than this many.
    pub max_adjusted_count: u64,
    /// Smallest excess of the callees' time on one edge in one window that alerts
    /// (microseconds).
    pub min_excess_work_micros: u64,
    /// Smallest excess of payload bytes on one edge in one window that alerts.
    pub min_excess_bytes: u64,
    /// Smallest excess of rows returned on one edge into a database in one window that alerts.
    pub min_excess_rows: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            window_nanos: 10 * NANOS_PER_SEC,
            close_delay_nanos: 6 * NANOS_PER_SEC,
            min_entry_requests: 20,
            min_windows: 30,
            min_excess: 20,
            ratio: 2.0,
            top_k: 16,
            max_adjusted_count: 1000,
            min_excess_work_micros: 250_000,
            min_excess_bytes: 10_000_000,
            min_excess_rows: 100_000,
        }
    }
}

/// The per-trace judging rules with window parameters: thousandths, `min_windows` history.
fn window_judging(detect: &DetectConfig, config: &WindowConfig) -> DetectConfig {
    DetectConfig {
        learning_min_samples: config.min_windows,
        quantile: 0.99,
        ratio: config.ratio,
        // 0.05 calls per entry request, or five percentage points of a ratio.
        min_excess: 50.0,
        critical_factor: detect.critical_factor,
        false_alarm_rate: (detect.false_alarm_rate * 10.0).min(0.5),
        min_excess_work_ms: detect.min_excess_work_ms,
        min_excess_bytes: detect.min_excess_bytes,
        min_excess_rows: detect.min_excess_rows,
    }
}

/// `numerator` per thousand `denominator` (window baselines count in thousandths); 0 for none.
fn thousandths(numerator: u64, denominator: u64) -> u64 {
    numerator.saturating_mul(1000).checked_div(denominator).unwrap_or(0)
}

/// Count beyond what the baseline's median ratio predicts for `denominator`.
fn excess(count: u64, judgement: &Judgement, denominator: u64) -> u64 {
    let expected = (judgement.expected * denominator as f64 / 1000.0).round() as u64;
    count.saturating_sub(expected)
}

/// A finding of one window detector, before the one-incident rule and its wording.
struct Pending {
    kind: AlertKind,
    edge: Edge,
    metric: WindowMetric,
    value: u64,
    judgement: Judgement,
    exemplars: Vec<TraceId>,
    contributors: Vec<Contributor>,
    top_class: Option<RootClass>,
    sentence: String,
    /// Cache bypass: the database edge the misses fell back to.
    fallback: Option<Edge>,
    /// Judged against the level usual at this hour of the day.
    hourly: bool,
}

/// What judging a window found, and what it learns once judged.
#[derive(Default)]
struct Judged {
    pending: Vec<Pending>,
    /// Window metrics within bounds, to be learned.
    learn: Vec<(WindowMetric, Edge, u64)>,
    /// Each root class's calls per thousand entry requests on edges within bounds.
    learn_classes: Vec<(RootClass, Edge, u64)>,
    /// Every edge's work per entry request: the hour-of-day profile learns it.
    seasonal: Vec<(Edge, u64)>,
}

/// What every window detector judges with.
struct Judging<'a> {
    window: &'a Window,
    store: &'a BaselineStore,
    /// The per-trace rules with window parameters ([`window_judging`]).
    rules: DetectConfig,
    config: &'a WindowConfig,
}

impl Judging<'_> {
    /// The window's length in whole seconds, for explanations.
    fn seconds(&self) -> u64 {
        (self.window.end - self.window.start) / NANOS_PER_SEC
    }
}

/// Judges a closed window; learns what was normal. Returns the findings.
pub fn judge_window(
    window: &Window,
    store: &mut BaselineStore,
    detect: &DetectConfig,
    config: &WindowConfig,
) -> Vec<Finding> {
    if window.entry_requests < config.min_entry_requests {
        return Vec::new();
    }
    let judging = Judging { window, store, rules: window_judging(detect, config), config };
    let mut judged = Judged::default();
    let mut edges: Vec<(&Edge, &EdgeWindow)> = window.edges.iter().collect();
    edges.sort_by(|a, b| a.0.cmp(b.0));
    for (edge, counts) in edges {
        aggregate::judge(&judging, *edge, counts, &mut judged);
        retry::judge(&judging, *edge, counts, &mut judged);
        cost::judge(&judging, *edge, counts, &mut judged);
    }
    let mut caches: Vec<(&Edge, &CacheWindow)> = window.caches.iter().collect();
    caches.sort_by(|a, b| a.0.cmp(b.0));
    for (database, counts) in caches {
        cache::judge(&judging, *database, counts, &mut judged);
    }
    let Judged { pending, learn, learn_classes, seasonal } = judged;
    for (metric, edge, value) in learn {
        store.observe_window(metric, edge, value, window.end);
    }
    for (edge, value) in seasonal {
        store.observe_seasonal(WindowMetric::WorkPerEntry, edge, value, window.end);
    }
    let pending = root_causes(pending, window);
    for (class, edge, value) in learn_classes {
        store.observe_window_class(class, edge, value, window.end);
    }
    pending.into_iter().map(|p| p.finish(window, detect)).collect()
}

/// One incident, one alert. A retry storm explains the extra calls on its edge and everything
/// downstream of its callee; a cache bypass explains the extra reads on its fallback edge and
/// the caller's extra calls to the same cache (cache-aside writes back every miss);
/// among the remaining amplifications, an edge whose caller is another anomalous edge's
/// callee is a consequence of it (a consumer's, of the edge into the queue it takes messages
/// off).
fn root_causes(pending: Vec<Pending>, window: &Window) -> Vec<Pending> {
    use std::collections::HashSet;
    let mut explained_callees: HashSet<stormwatch_model::Node> = HashSet::new();
    let mut explained_edges: HashSet<Edge> = HashSet::new();
    // (caller, cache) of each cache bypass.
    let mut bypassed: HashSet<(stormwatch_model::Node, stormwatch_model::Sym)> = HashSet::new();
    for p in &pending {
        match p.kind {
            AlertKind::RetryStorm => {
                explained_edges.insert(p.edge);
                explained_callees.insert(p.edge.to);
            }
            AlertKind::CacheBypass => {
                if let Some(fallback) = p.fallback {
                    explained_edges.insert(fallback);
                }
                bypassed.insert((p.edge.from, p.edge.to.service));
            }
            _ => {}
        }
    }
    let explained = |edge: &Edge| {
        explained_edges.contains(edge)
            || (edge.to.kind == stormwatch_model::NodeKind::Cache && bypassed.contains(&(edge.from, edge.to.service)))
    };
    // Calls explain the time and bytes they took on their edge.
    let counted: HashSet<Edge> = pending
        .iter()
        .filter(|p| matches!(p.kind, AlertKind::AggregateAmplification | AlertKind::RetryStorm))
        .map(|p| p.edge)
        .chain(pending.iter().filter_map(|p| p.fallback))
        .collect();
    let amplified: HashSet<stormwatch_model::Node> = pending
        .iter()
        .filter(|p| p.kind == AlertKind::AggregateAmplification && !explained(&p.edge))
        .map(|p| p.edge.to)
        .collect();
    pending
        .into_iter()
        .filter(|p| {
            !matches!(p.kind, AlertKind::CostAmplification | AlertKind::EgressAmplification)
                || !counted.contains(&p.edge)
        })
        .filter(|p| {
            p.kind != AlertKind::AggregateAmplification
                || !(explained(&p.edge)
                    || explained_callees.contains(&p.edge.from)
                    || amplified.contains(&p.edge.from)
                    || window.queue_feeding(&p.edge.from).is_some_and(|queue| amplified.contains(&queue)))
        })
        .collect()
}

#[cfg(test)]
mod tests;
