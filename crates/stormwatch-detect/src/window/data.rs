//! Window data: what a tumbling window counts per edge and per cache, how windows of several
//! engines merge, and the open windows of one engine.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use stormwatch_model::{client_population, Edge, Node, RootClass, Sym, TraceId};

use super::{SpaceSaving, WindowConfig, HEAVIEST_TRACES, MAX_EXEMPLARS};
use crate::features::TraceFeatures;

/// One edge's counts in a window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct EdgeWindow {
    pub(super) calls: u64,
    /// Calls from traces a per-trace detector already reported: not window-level evidence.
    pub(super) flagged_calls: u64,
    /// The largest per-trace call counts (unflagged traces): aggregate amplification needs
    /// breadth, so these few heaviest traces are not counted as its evidence.
    pub(super) heaviest: [u64; HEAVIEST_TRACES],
    /// Unflagged traces that used the edge.
    pub(super) traces: u64,
    pub(super) retries: u64,
    pub(super) errors: u64,
    /// Payload bytes the calls reported.
    pub(super) bytes: u64,
    /// Payload bytes of calls from traces a per-trace detector already reported.
    #[serde(default)]
    pub(super) flagged_bytes: u64,
    /// Time the callee spent on the calls of traces no per-trace detector reported
    /// (microseconds; see `EdgeFeatures::work_micros`): the window's evidence of time.
    #[serde(default)]
    pub(super) work_micros: u64,
    /// Time of the unflagged calls, each divided by how much slower than usual its callee
    /// answered everyone when the trace was counted: what the time would have been at the
    /// usual pace.
    #[serde(default)]
    pub(super) paced_work_micros: u64,
    /// The largest per-trace time and bytes on the edge (unflagged traces): the excess of
    /// time or bytes per call must stand without them.
    #[serde(default)]
    pub(super) heaviest_work: [u64; HEAVIEST_TRACES],
    #[serde(default)]
    pub(super) heaviest_bytes: [u64; HEAVIEST_TRACES],
    /// Time and bytes of the unflagged calls by root class (at most `top_k` classes).
    #[serde(default)]
    pub(super) cost_by_class: Vec<(RootClass, u64, u64)>,
    pub(super) by_class: SpaceSaving<RootClass>,
    pub(super) by_client: SpaceSaving<Sym>,
    /// Authenticated users (`enduser.id`) of the requests that made the calls.
    pub(super) by_user: SpaceSaving<Sym>,
    /// A few traces per class, for exemplars of the contributing class.
    pub(super) examples: Vec<(RootClass, TraceId)>,
    pub(super) retry_examples: Vec<TraceId>,
}

impl EdgeWindow {
    /// A few traces of `class` that used the edge, for an alert's exemplars.
    pub(super) fn exemplars_of(&self, class: Option<RootClass>) -> Vec<TraceId> {
        self.examples.iter().filter(|(c, _)| Some(*c) == class).map(|(_, trace)| *trace).take(MAX_EXEMPLARS).collect()
    }

    fn new(top_k: usize) -> EdgeWindow {
        EdgeWindow {
            calls: 0,
            flagged_calls: 0,
            heaviest: [0; HEAVIEST_TRACES],
            traces: 0,
            retries: 0,
            errors: 0,
            bytes: 0,
            flagged_bytes: 0,
            work_micros: 0,
            paced_work_micros: 0,
            heaviest_work: [0; HEAVIEST_TRACES],
            heaviest_bytes: [0; HEAVIEST_TRACES],
            cost_by_class: Vec::new(),
            by_class: SpaceSaving::new(top_k),
            by_client: SpaceSaving::new(top_k),
            by_user: SpaceSaving::new(top_k),
            examples: Vec::new(),
            retry_examples: Vec::new(),
        }
    }

    /// Counts one trace's time and bytes on the edge; `unflagged`: its root class and the
    /// callee's slowdown, when no per-trace detector reported the trace.
    fn add_cost(&mut self, (work, bytes): (u64, u64), unflagged: Option<(Option<RootClass>, f64)>, top_k: usize) {
        self.bytes += bytes;
        let Some((class, slowdown)) = unflagged else {
            self.flagged_bytes += bytes;
            return;
        };
        self.work_micros += work;
        self.paced_work_micros += (work as f64 / slowdown.max(1.0)) as u64;
        keep_heaviest(&mut self.heaviest_work, work);
        keep_heaviest(&mut self.heaviest_bytes, bytes);
        if let Some(class) = class {
            add_cost(&mut self.cost_by_class, class, work, bytes, top_k);
        }
    }
}

/// The database reads beside one cache in a window, keyed by the fallback database edge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct CacheWindow {
    /// Caller -> cache (the alert's edge).
    pub(super) cache: Edge,
    pub(super) database_calls: u64,
    pub(super) miss_examples: Vec<TraceId>,
    pub(super) by_class: Vec<(RootClass, u64)>,
}

/// One tumbling window of traffic. Serialisable, so engines sharing a consumer group can ship
/// their share of a window to the one that judges the merged whole.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Window {
    /// Event time the window starts at, Unix nanoseconds.
    pub start: u64,
    /// Event time it ends at (exclusive).
    pub end: u64,
    /// Requests that entered the system in it.
    pub entry_requests: u64,
    #[serde(with = "pairs")]
    pub(super) edges: EdgeMap<EdgeWindow>,
    #[serde(with = "pairs")]
    pub(super) caches: EdgeMap<CacheWindow>,
    /// Consumers seen taking messages off queues, (consumer's entry node, queue node): the
    /// consumer's calls are downstream of the calls into the queue. At most
    /// [`MAX_QUEUE_FEEDS`].
    #[serde(default)]
    pub(super) feeds: Vec<(Node, Node)>,
}

/// Most (consumer, queue) pairs a window keeps.
pub(super) const MAX_QUEUE_FEEDS: usize = 64;

/// A map keyed by edges, with the baseline store's hasher (seeded per process; faster than
/// `std`'s SipHash on the engine thread).
pub(super) type EdgeMap<V> = HashMap<Edge, V, foldhash::fast::RandomState>;

/// Maps keyed by edges as lists of `[key, value]` pairs (JSON keys must be strings).
mod pairs {
    use std::collections::HashMap;
    use std::hash::{BuildHasher, Hash};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// In key order, so one window always encodes to the same bytes.
    pub(super) fn serialize<K: Serialize + Ord, V: Serialize, H, S: Serializer>(
        map: &HashMap<K, V, H>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut pairs: Vec<(&K, &V)> = map.iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        serializer.collect_seq(pairs)
    }

    pub(super) fn deserialize<'de, K, V, H, D>(deserializer: D) -> Result<HashMap<K, V, H>, D::Error>
    where
        K: Deserialize<'de> + Eq + Hash,
        H: BuildHasher + Default,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?.into_iter().collect())
    }
}

impl Window {
    fn new(start: u64, length: u64) -> Window {
        Window {
            start,
            end: start.saturating_add(length),
            entry_requests: 0,
            edges: EdgeMap::default(),
            caches: EdgeMap::default(),
            feeds: Vec::new(),
        }
    }

    /// Notes that `consumer` takes messages off `queue`.
    fn feed(&mut self, consumer: Node, queue: Node) {
        if self.feeds.len() < MAX_QUEUE_FEEDS && !self.feeds.contains(&(consumer, queue)) {
            self.feeds.push((consumer, queue));
        }
    }

    /// The queue `node` takes messages off, when it is a consumer this window saw.
    pub(super) fn queue_feeding(&self, node: &Node) -> Option<Node> {
        self.feeds.iter().find(|(consumer, _)| consumer == node).map(|(_, queue)| *queue)
    }

    /// Folds in the same window as seen by another engine (its share of the partitions), so
    /// window detectors can judge the whole of the traffic: counts add, the heaviest traces of
    /// both compete, sketches merge, exemplars are kept up to their limits.
    pub fn merge(&mut self, other: Window, top_k: usize) {
        debug_assert_eq!((self.start, self.end), (other.start, other.end), "merging different windows");
        self.entry_requests += other.entry_requests;
        for (consumer, queue) in other.feeds {
            self.feed(consumer, queue);
        }
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
            ours.flagged_bytes += theirs.flagged_bytes;
            ours.work_micros += theirs.work_micros;
            ours.paced_work_micros += theirs.paced_work_micros;
            for (class, work, bytes) in theirs.cost_by_class {
                add_cost(&mut ours.cost_by_class, class, work, bytes, top_k);
            }
            merge_heaviest(&mut ours.heaviest, &theirs.heaviest);
            merge_heaviest(&mut ours.heaviest_work, &theirs.heaviest_work);
            merge_heaviest(&mut ours.heaviest_bytes, &theirs.heaviest_bytes);
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

    /// Counts one trace that stands for `weight` traces (probability sampling); `slowdown`:
    /// how much slower than usual each edge's callee answers lately.
    fn add(
        &mut self,
        features: &TraceFeatures,
        flagged: bool,
        (top_k, weight): (usize, u64),
        slowdown: &dyn Fn(&Edge) -> f64,
    ) {
        match features.consumed.tied_back {
            Some(tie) => self.feed(tie.consumer, tie.queue),
            None => self.entry_requests += weight,
        }
        let class = features.root_class;
        let population = features.client.map(|c| Sym::new(&client_population(c.as_str())));
        for edge in &features.edges {
            let window = self.edges.entry(edge.edge).or_insert_with(|| EdgeWindow::new(top_k));
            let calls = edge.calls.saturating_mul(weight);
            window.calls += calls;
            if flagged {
                window.flagged_calls += calls;
            } else {
                window.traces += weight;
                // Keep the largest per-trace counts seen (with the traces a sampled one
                // stands for).
                keep_heaviest(&mut window.heaviest, calls);
            }
            window.retries += edge.retries.saturating_mul(weight);
            window.errors += edge.errors.saturating_mul(weight);
            let cost = (edge.work_micros.saturating_mul(weight), edge.bytes.saturating_mul(weight));
            let paced = (!flagged).then(|| (class, if cost.0 > 0 { slowdown(&edge.edge) } else { 1.0 }));
            window.add_cost(cost, paced, top_k);
            // Attribution sees the same evidence as the judgement: unflagged traces only.
            if let (Some(class), false) = (class, flagged) {
                window.by_class.add(&class, calls);
                let known = window.examples.iter().filter(|(c, _)| *c == class).count();
                if known < MAX_EXEMPLARS && window.examples.len() < top_k * MAX_EXEMPLARS {
                    window.examples.push((class, features.trace_id));
                }
            }
            if let (Some(population), false) = (population, flagged) {
                window.by_client.add(&population, calls);
            }
            if let (Some(user), false) = (features.user, flagged) {
                window.by_user.add(&user, calls);
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

            let database_calls = cache.database_calls.saturating_mul(weight);
            window.database_calls += database_calls;
            if cache.database_calls > 0 && window.miss_examples.len() < MAX_EXEMPLARS {
                window.miss_examples.push(features.trace_id);
            }
            if let Some(class) = class {
                if let Some(entry) = window.by_class.iter_mut().find(|(c, _)| *c == class) {
                    entry.1 += database_calls;
                } else if window.by_class.len() < top_k {
                    window.by_class.push((class, database_calls));
                }
            }
        }
    }
}

/// Keeps `value` among the largest if it is larger than the smallest of them.
fn keep_heaviest(heaviest: &mut [u64; HEAVIEST_TRACES], value: u64) {
    if let Some(lightest) = heaviest.iter_mut().min() {
        *lightest = (*lightest).max(value);
    }
}

/// The largest of both windows' largest values.
fn merge_heaviest(ours: &mut [u64; HEAVIEST_TRACES], theirs: &[u64; HEAVIEST_TRACES]) {
    let mut all: Vec<u64> = ours.iter().chain(theirs).copied().collect();
    all.sort_unstable_by(|a, b| b.cmp(a));
    ours.copy_from_slice(&all[..HEAVIEST_TRACES]);
}

/// Adds time and bytes to a class's row, or a row for it while there are fewer than `top_k`.
fn add_cost(rows: &mut Vec<(RootClass, u64, u64)>, class: RootClass, work: u64, bytes: u64, top_k: usize) {
    if let Some(row) = rows.iter_mut().find(|(c, _, _)| *c == class) {
        row.1 += work;
        row.2 += bytes;
    } else if rows.len() < top_k {
        rows.push((class, work, bytes));
    }
}

/// How many traces `features` stands for in window counts: its adjusted count, at least 1 and
/// at most `most`, rounded up or down at random (by its trace id) so that the sum over many
/// traces has no bias (a 30% sampler's 3.33 counts 3 two times in three, else 4).
fn weight(features: &TraceFeatures, most: u64) -> u64 {
    let count = f64::from(features.adjusted_count);
    let count = if count.is_finite() { count.clamp(1.0, most.max(1) as f64) } else { 1.0 };
    let whole = count.floor();
    if whole == count {
        // Unsampled traffic (1), and the powers of two and round counts most samplers give.
        return whole as u64;
    }
    let draw = stormwatch_model::stable_hash(&[&features.trace_id.0]) as f64 / u64::MAX as f64;
    whole as u64 + u64::from(draw < count - whole)
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

impl std::fmt::Debug for Windows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Windows").finish_non_exhaustive()
    }
}

impl Windows {
    /// No windows open yet.
    pub fn new(config: WindowConfig) -> Windows {
        Windows { config, open: BTreeMap::new(), late_traces: 0, closed_before: 0 }
    }

    /// The window settings.
    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    /// Windows open (not yet closed by event time).
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Adds a completed trace to the window its root ended in. `flagged`: a per-trace
    /// detector reported it, so its work is already explained. Returns how many traces it
    /// stands for under probability sampling (counted too when its window was already judged).
    pub fn add(&mut self, features: &TraceFeatures, flagged: bool) -> u64 {
        self.add_paced(features, flagged, &|_| 1.0)
    }

    /// [`Windows::add`], with how much slower than usual each edge's callee answers lately
    /// (the engine's [`stormwatch_baseline::BaselineStore::slowdown`]): window time is judged
    /// at the usual pace.
    pub fn add_paced(&mut self, features: &TraceFeatures, flagged: bool, slowdown: &dyn Fn(&Edge) -> f64) -> u64 {
        let weight = weight(features, self.config.max_adjusted_count);
        let length = self.config.window_nanos.max(1);
        let start = features.end_unix_nano / length * length;
        if start < self.closed_before {
            self.late_traces += 1;
            return weight;
        }
        let top_k = self.config.top_k;
        self.open.entry(start).or_insert_with(|| Window::new(start, length)).add(
            features,
            flagged,
            (top_k, weight),
            slowdown,
        );
        weight
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
