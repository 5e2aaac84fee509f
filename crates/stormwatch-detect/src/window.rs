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

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use stormwatch_baseline::{BaselineStore, Distribution, WindowMetric};
use stormwatch_model::{AlertKind, Contributor, Edge, RootClass, Severity, Sym, TraceId};

use crate::detectors::{judge, DetectConfig, Finding, Judgement};
use crate::features::TraceFeatures;

const NANOS_PER_SEC: u64 = 1_000_000_000;
pub(crate) const MAX_EXEMPLARS: usize = 5;
/// Heaviest traces per edge left out of aggregate evidence.
const HEAVIEST_TRACES: usize = 3;

/// Window settings.
#[derive(Clone, Debug)]
pub struct WindowConfig {
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
        }
    }
}

/// The space-saving heavy-hitter sketch (Metwally et al.): at most `capacity` keys; a new key
/// evicts the smallest and inherits its count, so heavy hitters are never missed and counts
/// are overestimated by at most the smallest count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpaceSaving<K> {
    capacity: usize,
    entries: Vec<(K, u64)>,
}

impl<K: Eq + Clone> SpaceSaving<K> {
    pub fn new(capacity: usize) -> Self {
        SpaceSaving { capacity: capacity.max(1), entries: Vec::new() }
    }

    pub fn add(&mut self, key: &K, count: u64) {
        if let Some(entry) = self.entries.iter_mut().find(|(k, _)| k == key) {
            entry.1 += count;
        } else if self.entries.len() < self.capacity {
            self.entries.push((key.clone(), count));
        } else if let Some(smallest) = self.entries.iter_mut().min_by_key(|(_, c)| *c) {
            *smallest = (key.clone(), smallest.1 + count);
        }
    }

    /// Folds another sketch in (space-saving summaries merge by adding counts: heavy hitters of
    /// either stay, counts stay overestimates).
    pub fn merge(&mut self, other: &SpaceSaving<K>) {
        for (key, count) in &other.entries {
            self.add(key, *count);
        }
    }

    /// Keys by count, largest first.
    pub fn top(&self) -> Vec<(K, u64)> {
        let mut entries = self.entries.clone();
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        entries
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct EdgeWindow {
    calls: u64,
    /// Calls from traces a per-trace detector already reported: not window-level evidence.
    flagged_calls: u64,
    /// The largest per-trace call counts (unflagged traces): aggregate amplification needs
    /// breadth, so these few heaviest traces are not counted as its evidence.
    heaviest: [u64; HEAVIEST_TRACES],
    /// Unflagged traces that used the edge.
    traces: u64,
    retries: u64,
    errors: u64,
    /// Payload bytes the calls reported.
    bytes: u64,
    by_class: SpaceSaving<RootClass>,
    by_client: SpaceSaving<Sym>,
    /// Authenticated users (`enduser.id`) of the requests that made the calls.
    by_user: SpaceSaving<Sym>,
    /// A few traces per class, for exemplars of the contributing class.
    examples: Vec<(RootClass, TraceId)>,
    retry_examples: Vec<TraceId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CacheWindow {
    /// Caller -> cache (the alert's edge).
    cache: Edge,
    database_calls: u64,
    miss_examples: Vec<TraceId>,
    by_class: Vec<(RootClass, u64)>,
}

/// One tumbling window of traffic. Serialisable, so engines sharing a consumer group can ship
/// their share of a window to the one that judges the merged whole.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Window {
    pub start: u64,
    pub end: u64,
    pub entry_requests: u64,
    #[serde(with = "pairs")]
    edges: HashMap<Edge, EdgeWindow>,
    #[serde(with = "pairs")]
    caches: HashMap<Edge, CacheWindow>,
}

/// Maps keyed by edges as lists of `[key, value]` pairs (JSON keys must be strings).
mod pairs {
    use std::collections::HashMap;
    use std::hash::Hash;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// In key order, so one window always encodes to the same bytes.
    pub(super) fn serialize<K: Serialize + Ord, V: Serialize, S: Serializer>(
        map: &HashMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut pairs: Vec<(&K, &V)> = map.iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        serializer.collect_seq(pairs)
    }

    pub(super) fn deserialize<'de, K, V, D>(deserializer: D) -> Result<HashMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Eq + Hash,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?.into_iter().collect())
    }
}

/// The client population of an address (decoders already intern populations; spans built
/// otherwise may carry addresses).
pub use stormwatch_model::client_population;

impl Window {
    fn new(start: u64, length: u64) -> Window {
        Window {
            start,
            end: start.saturating_add(length),
            entry_requests: 0,
            edges: HashMap::new(),
            caches: HashMap::new(),
        }
    }

    /// Folds in the same window as seen by another engine (its share of the partitions), so
    /// window detectors can judge the whole of the traffic: counts add, the heaviest traces of
    /// both compete, sketches merge, exemplars are kept up to their limits.
    pub fn merge(&mut self, other: Window, top_k: usize) {
        debug_assert_eq!((self.start, self.end), (other.start, other.end), "merging different windows");
        self.entry_requests += other.entry_requests;
        for (edge, theirs) in other.edges {
            let Some(ours) = self.edges.get_mut(&edge) else {
                self.edges.insert(edge, theirs);
                continue;
            };
            ours.calls += theirs.calls;
            ours.flagged_calls += theirs.flagged_calls;
            ours.traces += theirs.traces;
            ours.retries += theirs.retries;
            ours.errors += theirs.errors;
            ours.bytes += theirs.bytes;
            let mut heaviest: Vec<u64> = ours.heaviest.iter().chain(&theirs.heaviest).copied().collect();
            heaviest.sort_unstable_by(|a, b| b.cmp(a));
            ours.heaviest.copy_from_slice(&heaviest[..HEAVIEST_TRACES]);
            ours.by_class.merge(&theirs.by_class);
            ours.by_client.merge(&theirs.by_client);
            ours.by_user.merge(&theirs.by_user);
            for (class, trace) in theirs.examples {
                let known = ours.examples.iter().filter(|(c, _)| *c == class).count();
                if known < MAX_EXEMPLARS && ours.examples.len() < top_k * MAX_EXEMPLARS {
                    ours.examples.push((class, trace));
                }
            }
            let room = MAX_EXEMPLARS.saturating_sub(ours.retry_examples.len());
            ours.retry_examples.extend(theirs.retry_examples.into_iter().take(room));
        }
        for (database, theirs) in other.caches {
            let Some(ours) = self.caches.get_mut(&database) else {
                self.caches.insert(database, theirs);
                continue;
            };
            ours.database_calls += theirs.database_calls;
            let room = MAX_EXEMPLARS.saturating_sub(ours.miss_examples.len());
            ours.miss_examples.extend(theirs.miss_examples.into_iter().take(room));
            for (class, calls) in theirs.by_class {
                if let Some(entry) = ours.by_class.iter_mut().find(|(c, _)| *c == class) {
                    entry.1 += calls;
                } else if ours.by_class.len() < top_k {
                    ours.by_class.push((class, calls));
                }
            }
        }
    }

    fn add(&mut self, features: &TraceFeatures, flagged: bool, top_k: usize) {
        self.entry_requests += 1;
        let class = features.root_class;
        let population = features.client.map(|c| Sym::new(&client_population(c.as_str())));
        for edge in &features.edges {
            let window = self.edges.entry(edge.edge).or_insert_with(|| EdgeWindow {
                calls: 0,
                flagged_calls: 0,
                heaviest: [0; HEAVIEST_TRACES],
                traces: 0,
                retries: 0,
                errors: 0,
                bytes: 0,
                by_class: SpaceSaving::new(top_k),
                by_client: SpaceSaving::new(top_k),
                by_user: SpaceSaving::new(top_k),
                examples: Vec::new(),
                retry_examples: Vec::new(),
            });
            window.calls += edge.calls;
            if flagged {
                window.flagged_calls += edge.calls;
            } else {
                window.traces += 1;
                // Keep the largest per-trace counts seen.
                if let Some(lightest) = window.heaviest.iter_mut().min() {
                    *lightest = (*lightest).max(edge.calls);
                }
            }
            window.retries += edge.retries;
            window.errors += edge.errors;
            window.bytes += edge.bytes;
            // Attribution sees the same evidence as the judgement: unflagged traces only.
            if let (Some(class), false) = (class, flagged) {
                window.by_class.add(&class, edge.calls);
                let known = window.examples.iter().filter(|(c, _)| *c == class).count();
                if known < MAX_EXEMPLARS && window.examples.len() < top_k * MAX_EXEMPLARS {
                    window.examples.push((class, features.trace_id));
                }
            }
            if let (Some(population), false) = (population, flagged) {
                window.by_client.add(&population, edge.calls);
            }
            if let (Some(user), false) = (features.user, flagged) {
                window.by_user.add(&user, edge.calls);
            }
            if edge.retries > 0 && window.retry_examples.len() < MAX_EXEMPLARS {
                window.retry_examples.push(features.trace_id);
            }
        }
        for cache in &features.caches {
            let window = self.caches.entry(cache.database).or_insert_with(|| CacheWindow {
                cache: cache.cache,
                database_calls: 0,
                miss_examples: Vec::new(),
                by_class: Vec::new(),
            });

            window.database_calls += cache.database_calls;
            if cache.database_calls > 0 && window.miss_examples.len() < MAX_EXEMPLARS {
                window.miss_examples.push(features.trace_id);
            }
            if let Some(class) = class {
                if let Some(entry) = window.by_class.iter_mut().find(|(c, _)| *c == class) {
                    entry.1 += cache.database_calls;
                } else if window.by_class.len() < top_k {
                    window.by_class.push((class, cache.database_calls));
                }
            }
        }
    }
}

/// Open windows and the ones due to be judged.
pub struct Windows {
    config: WindowConfig,
    open: BTreeMap<u64, Window>,
    /// Traces whose window had already been judged.
    pub late_traces: u64,
    /// Start of the newest window judged; traces before it are late.
    closed_before: u64,
}

impl Windows {
    pub fn new(config: WindowConfig) -> Windows {
        Windows { config, open: BTreeMap::new(), late_traces: 0, closed_before: 0 }
    }

    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Adds a completed trace to the window its root ended in. `flagged`: a per-trace
    /// detector reported it, so its work is already explained.
    pub fn add(&mut self, features: &TraceFeatures, flagged: bool) {
        let length = self.config.window_nanos.max(1);
        let start = features.end_unix_nano / length * length;
        if start < self.closed_before {
            self.late_traces += 1;
            return;
        }
        let top_k = self.config.top_k;
        self.open.entry(start).or_insert_with(|| Window::new(start, length)).add(features, flagged, top_k);
    }

    /// Windows whose traces have all had time to complete by event time `watermark`.
    pub fn close_due(&mut self, watermark: u64) -> Vec<Window> {
        let delay = self.config.close_delay_nanos;
        let due: Vec<u64> =
            self.open.values().filter(|w| w.end.saturating_add(delay) <= watermark).map(|w| w.start).collect();
        self.take(due)
    }

    /// Every open window (shutdown, end of a replay).
    pub fn close_all(&mut self) -> Vec<Window> {
        let all: Vec<u64> = self.open.keys().copied().collect();
        self.take(all)
    }

    fn take(&mut self, starts: Vec<u64>) -> Vec<Window> {
        let mut closed = Vec::with_capacity(starts.len());
        for start in starts {
            if let Some(window) = self.open.remove(&start) {
                self.closed_before = self.closed_before.max(window.end);
                closed.push(window);
            }
        }
        closed
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
    }
}

/// How far the level usual at one hour of the day may lift an edge's window baseline. A daily
/// rhythm is learned even from windows that alarmed (on its first days it is new), so this
/// bound is what keeps an attack repeated at the same hour from teaching itself: a 10x storm
/// still alarms against a lifted threshold.
const MAX_HOURLY_LIFT: f64 = 3.0;

/// Work per entry request judged against the edge's window baseline, scaled to the level
/// usual at the hour of `at` once the edge's daily profile has history for that hour (never
/// below the all-day baseline, at most [`MAX_HOURLY_LIFT`] above it). `true` when lifted.
fn judge_hourly(
    store: &BaselineStore,
    edge: Edge,
    work: u64,
    at: u64,
    rules: &DetectConfig,
) -> (Option<Judgement>, bool) {
    let distribution = store.windows.get(&(WindowMetric::WorkPerEntry, edge));
    let lift = distribution
        .filter(|d| d.samples() >= rules.learning_min_samples)
        .zip(store.seasonal.get(&(WindowMetric::WorkPerEntry, edge)).and_then(|p| p.level_at(at)))
        .map_or(1.0, |(d, level)| (level / (d.quantile(0.5) as f64).max(1.0)).clamp(1.0, MAX_HOURLY_LIFT));
    if lift <= 1.0 {
        return (judge(distribution, work, rules), false);
    }
    let scaled = judge(distribution, (work as f64 / lift) as u64, rules).map(|j| Judgement {
        expected: j.expected * lift,
        threshold: j.threshold * lift,
        ..j
    });
    (scaled, true)
}

fn thousandths(numerator: u64, denominator: u64) -> u64 {
    numerator.saturating_mul(1000).checked_div(denominator).unwrap_or(0)
}

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
    let rules = window_judging(detect, config);
    let entries = window.entry_requests;
    let mut pending = Vec::new();
    let mut learn: Vec<(WindowMetric, Edge, u64)> = Vec::new();
    let mut learn_classes: Vec<(RootClass, Edge, u64)> = Vec::new();
    let mut seasonal: Vec<(Edge, u64)> = Vec::new();

    let mut edges: Vec<(&Edge, &EdgeWindow)> = window.edges.iter().collect();
    edges.sort_by(|a, b| a.0.cmp(b.0));
    for (edge, counts) in edges {
        // Work per entry request, without the traces per-trace detectors already reported: this
        // detector is for amplification no single trace shows.
        let calls = counts.calls.saturating_sub(counts.flagged_calls);
        // Breadth: the excess must stand without the few heaviest traces.
        let heaviest: u64 = counts.heaviest.iter().sum();
        let work = thousandths(calls, entries);
        seasonal.push((*edge, work));
        let (judged, hourly) = judge_hourly(store, *edge, work, window.end, &rules);
        match judged {
            Some(judgement)
                if excess(calls, &judgement, entries).saturating_sub(heaviest) >= config.min_excess
                    && significant(calls, &judgement, entries, counts) =>
            {
                let (contributors, top_class) = attribute(counts, *edge, entries, store);
                let exemplars: Vec<TraceId> = counts
                    .examples
                    .iter()
                    .filter(|(class, _)| Some(*class) == top_class)
                    .map(|(_, trace)| *trace)
                    .take(MAX_EXEMPLARS)
                    .collect();
                let leader =
                    contributors.first().map(|c| format!("; {} caused {:.0}% of the excess", c.name, c.share * 100.0));
                let payload = if counts.bytes > 0 {
                    format!(" ({} of responses)", human_bytes(counts.bytes))
                } else {
                    String::new()
                };
                pending.push(Pending {
                    kind: AlertKind::AggregateAmplification,
                    edge: *edge,
                    metric: WindowMetric::WorkPerEntry,
                    value: work,
                    sentence: format!(
                        "{} made {} calls to {}{} in {} s for {} entry requests: {:.2} per request",
                        edge.from,
                        calls,
                        edge.to,
                        payload,
                        (window.end - window.start) / NANOS_PER_SEC,
                        entries,
                        work as f64 / 1000.0
                    ) + &leader.unwrap_or_default(),
                    judgement,
                    exemplars,
                    contributors,
                    top_class,
                    fallback: None,
                    hourly,
                });
            }
            // Beyond the ratio but too few calls (or within chance) to alert: not learned either.
            // An attack's first, thin windows must not teach the baseline the attack; the cost
            // is that a low-volume edge that legitimately shifted keeps its old baseline until
            // its volume makes the shift significant, and then alerts once.
            Some(_) => {}
            // Normal for this hour of day only: the daily profile learned it; the all-day
            // baseline does not, or every hour's tail would widen by the busiest hour's mix.
            None if hourly => {}
            None => {
                learn.push((WindowMetric::WorkPerEntry, *edge, work));
                for (class, calls) in counts.by_class.top() {
                    learn_classes.push((class, *edge, thousandths(calls, entries)));
                }
            }
        }
        // Retries.
        if counts.calls > 0 {
            let ratio = thousandths(counts.retries, counts.calls);
            match judge(store.windows.get(&(WindowMetric::RetryRatio, *edge)), ratio, &rules) {
                Some(judgement) if excess(counts.retries, &judgement, counts.calls) >= config.min_excess => {
                    let (contributors, top_class) = attribute(counts, *edge, entries, store);
                    pending.push(Pending {
                        kind: AlertKind::RetryStorm,
                        edge: *edge,
                        metric: WindowMetric::RetryRatio,
                        value: ratio,
                        sentence: format!(
                            "{} retried {} of its {} calls to {} in {} s after {} failures",
                            edge.from,
                            counts.retries,
                            counts.calls,
                            edge.to,
                            (window.end - window.start) / NANOS_PER_SEC,
                            counts.errors
                        ),
                        judgement,
                        exemplars: counts.retry_examples.clone(),
                        contributors,
                        top_class,
                        fallback: None,
                        hourly: false,
                    });
                }
                Some(_) => {}
                None => learn.push((WindowMetric::RetryRatio, *edge, ratio)),
            }
        }
    }
    let mut caches: Vec<(&Edge, &CacheWindow)> = window.caches.iter().collect();
    caches.sort_by(|a, b| a.0.cmp(b.0));
    for (database, counts) in caches {
        // Every lookup of the cache in the window, hits included: the cache edge's calls.
        let lookups = window.edges.get(&counts.cache).map_or(0, |edge| edge.calls);
        if lookups == 0 {
            continue;
        }
        let ratio = thousandths(counts.database_calls, lookups);
        match judge(store.windows.get(&(WindowMetric::CacheMissRatio, *database)), ratio, &rules) {
            Some(judgement) if excess(counts.database_calls, &judgement, lookups) >= config.min_excess => {
                let total: u64 = counts.by_class.iter().map(|(_, n)| n).sum();
                let mut by_class = counts.by_class.clone();
                by_class.sort_by_key(|entry| std::cmp::Reverse(entry.1));
                let contributors = by_class
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .take(3)
                    .map(|(class, n)| Contributor { name: format!("entry {class}"), share: share(*n, total) })
                    .collect();
                pending.push(Pending {
                    kind: AlertKind::CacheBypass,
                    edge: counts.cache,
                    metric: WindowMetric::CacheMissRatio,
                    value: ratio,
                    sentence: format!(
                        "{} fell back to {} `{}` {} times for {} {} lookups in {} s",
                        counts.cache.from,
                        database.to.service,
                        database.to.operation,
                        counts.database_calls,
                        lookups,
                        counts.cache.to.service,
                        (window.end - window.start) / NANOS_PER_SEC
                    ),
                    judgement,
                    exemplars: counts.miss_examples.clone(),
                    contributors,
                    top_class: by_class.first().map(|(class, _)| *class),
                    fallback: Some(*database),
                    hourly: false,
                });
            }
            Some(_) => {}
            None => learn.push((WindowMetric::CacheMissRatio, *database, ratio)),
        }
    }

    for (metric, edge, value) in learn {
        store.observe_window(metric, edge, value, window.end);
    }
    for (edge, value) in seasonal {
        store.observe_seasonal(WindowMetric::WorkPerEntry, edge, value, window.end);
    }
    let pending = root_causes(pending);
    for (class, edge, value) in learn_classes {
        store.observe_window_class(class, edge, value, window.end);
    }
    pending.into_iter().map(|p| p.finish(window, detect)).collect()
}

impl Window {
    /// Calls per entry request on every edge, without traces a per-trace detector reported:
    /// the row of this window in the correlated detector's matrix.
    /// Every edge's calls in this window, flagged ones included: its load.
    pub(crate) fn calls(&self) -> impl Iterator<Item = (Edge, u64)> + '_ {
        self.edges.iter().map(|(edge, counts)| (*edge, counts.calls))
    }

    pub(crate) fn rates(&self) -> Vec<(Edge, f64)> {
        let entries = self.entry_requests.max(1) as f64;
        let mut rates: Vec<(Edge, f64)> = self
            .edges
            .iter()
            .map(|(edge, counts)| (*edge, counts.calls.saturating_sub(counts.flagged_calls) as f64 / entries))
            .collect();
        rates.sort_by_key(|(edge, _)| *edge);
        rates
    }
}

/// A `correlated_storm` finding from the PCA residual of a window.
pub(crate) fn correlated_finding(
    window: &Window,
    residual: crate::correlated::Residual,
    detect: &DetectConfig,
) -> Finding {
    let top = residual.contributions.first().map(|(edge, _)| *edge);
    let exemplars: Vec<TraceId> = top
        .and_then(|edge| window.edges.get(&edge))
        .map(|counts| counts.examples.iter().map(|(_, trace)| *trace).take(MAX_EXEMPLARS).collect())
        .unwrap_or_default();
    let contributors: Vec<Contributor> = residual
        .contributions
        .iter()
        .take(3)
        .map(|(edge, share)| Contributor { name: format!("edge {edge}"), share: (share * 1000.0).round() / 1000.0 })
        .collect();
    let named: Vec<String> =
        residual.contributions.iter().take(3).map(|(edge, share)| format!("{edge} ({:.0}%)", share * 100.0)).collect();
    let severity = if residual.spe >= residual.threshold * detect.critical_factor {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Finding {
        kind: AlertKind::CorrelatedStorm,
        edge: top,
        entry: None,
        metric: None,
        observed: (residual.spe * 100.0).round() / 100.0,
        expected: (residual.typical * 100.0).round() / 100.0,
        threshold: (residual.threshold * 100.0).round() / 100.0,
        unit: "residual_spe",
        score: ((residual.spe / residual.threshold) * 100.0).round() / 100.0,
        severity,
        exemplars,
        contributors,
        start_unix_nano: window.start,
        end_unix_nano: window.end,
        baseline_samples: residual.samples as u64,
        baseline_since_unix_nano: window.start,
        baseline_from: None,
        explanation: format!(
            "Edges moved together in a way no learned traffic pattern explains (residual {:.1}, normally {:.1}, alert above {:.1}); most off-pattern: {}.",
            residual.spe,
            residual.typical,
            residual.threshold,
            named.join(", ")
        ),
    }
}

/// One incident, one alert. A retry storm explains the extra calls on its edge and everything
/// downstream of its callee; a cache bypass explains the extra reads on its fallback edge;
/// among the remaining amplifications, an edge whose caller is another anomalous edge's
/// callee is a consequence of it.
fn root_causes(pending: Vec<Pending>) -> Vec<Pending> {
    use std::collections::HashSet;
    let mut explained_callees: HashSet<stormwatch_model::Node> = HashSet::new();
    let mut explained_edges: HashSet<Edge> = HashSet::new();
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
            }
            _ => {}
        }
    }
    let amplified: HashSet<stormwatch_model::Node> = pending
        .iter()
        .filter(|p| p.kind == AlertKind::AggregateAmplification && !explained_edges.contains(&p.edge))
        .map(|p| p.edge.to)
        .collect();
    pending
        .into_iter()
        .filter(|p| {
            p.kind != AlertKind::AggregateAmplification
                || !(explained_edges.contains(&p.edge)
                    || explained_callees.contains(&p.edge.from)
                    || amplified.contains(&p.edge.from))
        })
        .collect()
}

/// Whether an excess of calls is beyond chance. Calls arrive in clumps (one trace makes `c`
/// of them), so the window's count is compound-Poisson: its noise is about `sqrt(E * c)` for
/// `E` expected calls. Four of those is the bar; a rare class whose every request makes many
/// calls needs far more than one lucky extra request to alarm.
fn significant(calls: u64, judgement: &Judgement, entries: u64, counts: &EdgeWindow) -> bool {
    let expected = (judgement.expected * entries as f64 / 1000.0).max(1.0);
    let per_trace = (calls as f64 / counts.traces.max(1) as f64).max(1.0);
    (calls as f64 - expected) >= 4.0 * (expected * per_trace).sqrt()
}

/// Count beyond what the baseline's median ratio predicts for `denominator`.
fn excess(count: u64, judgement: &Judgement, denominator: u64) -> u64 {
    let expected = (judgement.expected * denominator as f64 / 1000.0).round() as u64;
    count.saturating_sub(expected)
}

fn share(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        ((part as f64 / total as f64) * 1000.0).round() / 1000.0
    }
}

/// `12.3 MB`-style payload sizes (decimal units, as network tools print them).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Root classes whose calls exceed their learned share (with their share of the excess), then
/// the client populations and the authenticated users that made at least a tenth of the calls.
fn attribute(
    counts: &EdgeWindow,
    edge: Edge,
    entries: u64,
    store: &BaselineStore,
) -> (Vec<Contributor>, Option<RootClass>) {
    let mut excesses: Vec<(RootClass, u64)> = counts
        .by_class
        .top()
        .into_iter()
        .map(|(class, calls)| {
            let expected = store
                .window_classes
                .get(&(class, edge))
                .map_or(0.0, |d: &Distribution| d.mean() * entries as f64 / 1000.0);
            (class, calls.saturating_sub(expected.round() as u64))
        })
        .filter(|(_, excess)| *excess > 0)
        .collect();
    excesses.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: u64 = excesses.iter().map(|(_, e)| e).sum();
    let top_class = excesses.first().map(|(class, _)| *class);
    let mut contributors: Vec<Contributor> = excesses
        .iter()
        .take(3)
        .map(|(class, excess)| Contributor { name: format!("entry {class}"), share: share(*excess, total) })
        .collect();
    let unflagged = counts.calls.saturating_sub(counts.flagged_calls);
    for (population, calls) in counts.by_client.top().into_iter().take(3) {
        let part = share(calls, unflagged);
        if part >= 0.1 {
            contributors.push(Contributor { name: format!("clients {population}"), share: part });
        }
    }
    for (user, calls) in counts.by_user.top().into_iter().take(3) {
        let part = share(calls, unflagged);
        if part >= 0.1 {
            contributors.push(Contributor { name: format!("user {user}"), share: part });
        }
    }
    (contributors, top_class)
}

impl Pending {
    fn finish(self, window: &Window, detect: &DetectConfig) -> Finding {
        let Judgement { expected, threshold, samples, since, .. } = self.judgement;
        let observed = self.value as f64 / 1000.0;
        let (expected, threshold) = (expected / 1000.0, threshold / 1000.0);
        let unit = match self.metric {
            WindowMetric::WorkPerEntry => "calls_per_entry_request",
            WindowMetric::RetryRatio => "retry_ratio",
            WindowMetric::CacheMissRatio => "cache_miss_ratio",
        };
        let at_this_hour = if self.hourly { " at this hour of day" } else { "" };
        let limits = match self.metric {
            WindowMetric::WorkPerEntry => format!("normally {expected:.2}{at_this_hour}, alert above {threshold:.2}"),
            _ => format!(
                "{:.0}% against normally {:.0}%, alert above {:.0}%",
                observed * 100.0,
                expected * 100.0,
                threshold * 100.0
            ),
        };
        let severity =
            if observed >= threshold * detect.critical_factor { Severity::Critical } else { Severity::Warning };
        Finding {
            kind: self.kind,
            edge: Some(self.edge),
            entry: self.top_class,
            metric: None,
            observed: (observed * 1000.0).round() / 1000.0,
            expected: (expected * 1000.0).round() / 1000.0,
            threshold: (threshold * 1000.0).round() / 1000.0,
            unit,
            score: ((observed / threshold.max(1e-9)) * 100.0).round() / 100.0,
            severity,
            exemplars: self.exemplars,
            contributors: self.contributors,
            start_unix_nano: window.start,
            end_unix_nano: window.end,
            baseline_samples: samples,
            baseline_since_unix_nano: since,
            baseline_from: None,
            explanation: format!("{} ({limits}).", self.sentence),
        }
    }
}

#[cfg(test)]
mod tests;
