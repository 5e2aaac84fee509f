//! The baselines of one engine, keyed by edge and root class, with a bound on how many keys
//! it holds so that an attacker who invents operations cannot exhaust memory.
//!
//! A table at its bound makes room for a new key by evicting young baselines (fewer samples
//! than the learning minimum, so never judged on) that have been idle for an hour of event
//! time: a flood of invented names that stops cannot keep the store full for ever, and
//! nothing a detector relies on is ever evicted.

use std::collections::{HashMap, HashSet};

use stormwatch_model::{Edge, NodeKind, NodeName, RootClass, Sym};

use crate::inspect::RowKey;
use crate::{DailyProfile, Distribution, Pace, PaceLane, SubspaceModel};

mod changes;
mod learn;
mod read;

use learn::{observe, observe_all};

pub use changes::Changed;
pub(crate) use changes::Changes;

/// The store's tables. Keys are interned ids ([`Sym`]s, numbered in order of first sight),
/// which a sender cannot choose to collide, so the fast seeded hash of `foldhash` serves
/// instead of SipHash: learning looks up several tables for every edge of every trace.
pub type Table<K, V = Distribution> = HashMap<K, V, foldhash::fast::RandomState>;

/// Per-request totals learned for each root class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestMetric {
    /// Spans per request.
    Spans,
    /// Database calls per request.
    DbCalls,
    /// Distinct services per request.
    Services,
}

impl RequestMetric {
    /// Every total.
    pub const ALL: [RequestMetric; 3] = [RequestMetric::Spans, RequestMetric::DbCalls, RequestMetric::Services];

    /// The total's name in the API and snapshots (`db_calls`).
    pub fn as_str(self) -> &'static str {
        match self {
            RequestMetric::Spans => "spans",
            RequestMetric::DbCalls => "db_calls",
            RequestMetric::Services => "services",
        }
    }

    /// The total named `text`, if any.
    pub fn parse(text: &str) -> Option<RequestMetric> {
        RequestMetric::ALL.into_iter().find(|metric| metric.as_str() == text)
    }
}

/// What a young root class is judged against until it has its own history, nearest first:
/// its entry route (every query shape), its entry service (every route), the whole system.
/// Each learns every request of the classes under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClassScope {
    /// Every request to one route, whatever its query shape.
    Route {
        /// The entry service.
        service: Sym,
        /// The route.
        operation: Sym,
    },
    /// Every request to one service.
    Service(Sym),
    /// Every request to the system.
    System,
}

impl ClassScope {
    /// The scopes above `class`, nearest first.
    pub fn above(class: &RootClass) -> [ClassScope; 3] {
        [
            ClassScope::Route { service: class.service, operation: class.operation },
            ClassScope::Service(class.service),
            ClassScope::System,
        ]
    }

    /// `route`, `service` or `system` (snapshots, `baseline list`).
    pub fn level(&self) -> &'static str {
        match self {
            ClassScope::Route { .. } => "route",
            ClassScope::Service(_) => "service",
            ClassScope::System => "system",
        }
    }
}

impl std::fmt::Display for ClassScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassScope::Route { service, operation } => write!(f, "every request to {service} `{operation}`"),
            ClassScope::Service(service) => write!(f, "every request to {service}"),
            ClassScope::System => f.write_str("every request of the system"),
        }
    }
}

/// What a young edge's calls per parent span are judged against until it has its own
/// history, nearest first: every call from its caller's service to its callee's (any
/// operations), then every call from its caller's service to any callee of its kind (any
/// database, any cache, any service). Each learns every call of the edges under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeScope {
    /// Every call from one service to another, any operations.
    ServicePair {
        /// The caller's service.
        from: Sym,
        /// The callee's service.
        to: Sym,
        /// The callee's kind.
        kind: NodeKind,
    },
    /// Every call from one service to any callee of a kind.
    CallerToKind {
        /// The caller's service.
        from: Sym,
        /// The callees' kind.
        kind: NodeKind,
    },
}

impl EdgeScope {
    /// The scopes above `edge`, nearest first.
    pub fn above(edge: &Edge) -> [EdgeScope; 2] {
        [
            EdgeScope::ServicePair { from: edge.from.service, to: edge.to.service, kind: edge.to.kind },
            EdgeScope::CallerToKind { from: edge.from.service, kind: edge.to.kind },
        ]
    }

    /// `pair` or `kind` (snapshots, `baseline list`).
    pub fn level(&self) -> &'static str {
        match self {
            EdgeScope::ServicePair { .. } => "pair",
            EdgeScope::CallerToKind { .. } => "kind",
        }
    }

    /// The caller's service and what it calls: `from -> to`, `from -> any database`.
    pub fn name(&self) -> String {
        match self {
            EdgeScope::ServicePair { from, to, .. } => format!("{from} -> {to}"),
            EdgeScope::CallerToKind { from, kind } => format!("{from} -> any {}", kind.as_str()),
        }
    }

    /// The callee's kind.
    pub fn kind(&self) -> NodeKind {
        match self {
            EdgeScope::ServicePair { kind, .. } | EdgeScope::CallerToKind { kind, .. } => *kind,
        }
    }
}

impl std::fmt::Display for EdgeScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EdgeScope::ServicePair { from, to, .. } => write!(f, "every call from {from} to {to}"),
            EdgeScope::CallerToKind { from, kind } => write!(f, "every call from {from} to a {}", kind.as_str()),
        }
    }
}

/// What window-level baselines measure, per edge, per window (in thousandths, so the
/// integer histograms keep three decimals).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WindowMetric {
    /// Calls on the edge per entry request, network-wide.
    WorkPerEntry,
    /// Retries per call on the edge.
    RetryRatio,
    /// Database calls per cache lookup beside a cache edge (the miss ratio).
    CacheMissRatio,
    /// Time the callee spent per call on the edge (microseconds).
    TimePerCall,
    /// Payload bytes the callee returned per call on the edge.
    BytesPerCall,
}

impl WindowMetric {
    /// Every window metric.
    pub const ALL: [WindowMetric; 5] = [
        WindowMetric::WorkPerEntry,
        WindowMetric::RetryRatio,
        WindowMetric::CacheMissRatio,
        WindowMetric::TimePerCall,
        WindowMetric::BytesPerCall,
    ];

    /// The metric's name in the API and snapshots (`retry_ratio`).
    pub fn as_str(self) -> &'static str {
        match self {
            WindowMetric::WorkPerEntry => "work_per_entry",
            WindowMetric::RetryRatio => "retry_ratio",
            WindowMetric::CacheMissRatio => "cache_miss_ratio",
            WindowMetric::TimePerCall => "time_per_call",
            WindowMetric::BytesPerCall => "bytes_per_call",
        }
    }

    /// The metric named `text`, if any.
    pub fn parse(text: &str) -> Option<WindowMetric> {
        WindowMetric::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

/// Counters of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Observations not learned because the store was at its key limit.
    pub capped_observations: u64,
    /// Young, idle baselines evicted to make room for new keys.
    pub evicted_young: u64,
}

/// A young baseline idle this long (event time) may be evicted from a full table.
pub const EVICT_IDLE_NANOS: u64 = 3_600 * 1_000_000_000;

/// A full table is swept for young, idle baselines at most this often (event time), so a
/// flood of new keys costs one scan a minute, not one per key.
const SWEEP_EVERY_NANOS: u64 = 60 * 1_000_000_000;

/// The key bound of every table, what may be evicted to keep within it, when each table
/// with distributions (fanout, request_edges, request_totals, windows, window_classes,
/// class_scopes, edge_scopes, request_work, request_bytes, in that order) was last swept,
/// and what the bound refused and evicted.
#[derive(Clone, Debug)]
struct Room {
    max_keys: usize,
    /// Baselines with fewer samples are young (the learning minimum); 0: never evict.
    young_below: u64,
    last_sweeps_unix_nano: [u64; 9],
    stats: StoreStats,
}

/// All baselines. Keys beyond `max_keys` (per table) are not created; the observations are
/// counted in [`StoreStats::capped_observations`] instead.
#[derive(Clone, Debug)]
pub struct BaselineStore {
    /// Calls per parent span, per edge.
    pub(crate) fanout: Table<Edge>,
    /// Calls per root request, per (root class, edge).
    pub(crate) request_edges: Table<(RootClass, Edge)>,
    /// Work per root request on an edge: the time its calls took, summed (microseconds), per
    /// (root class, edge).
    pub(crate) request_work: Table<(RootClass, Edge)>,
    /// Payload bytes per root request on an edge (the callee's responses), and on the
    /// pseudo-edge into the entry point ([`Edge::entering`]: what the request sent back to its
    /// client), per (root class, edge).
    pub(crate) request_bytes: Table<(RootClass, Edge)>,
    /// How fast each callee (a service, or a database, cache, queue or peer by name; a
    /// database's reads and writes apart) answers lately against how fast it usually does. Not
    /// in snapshots: it is about the last calls.
    pub(crate) pace: Table<PaceLane, Pace>,
    /// Spans, DB calls and services per root request, per root class.
    pub(crate) request_totals: Table<(RootClass, RequestMetric)>,
    /// The same per entry route, entry service and for the whole system: what a young root
    /// class is judged against.
    pub(crate) class_scopes: Table<(ClassScope, RequestMetric)>,
    /// Calls per parent span from a service to another, and to any callee of a kind: what a
    /// young edge is judged against.
    pub(crate) edge_scopes: Table<EdgeScope>,
    /// Window level, per edge: work per entry request, retry ratio, cache miss ratio
    /// (thousandths).
    pub(crate) windows: Table<(WindowMetric, Edge)>,
    /// Window level: calls on an edge caused by one root class, per thousand entry requests
    /// of all classes. Its mean is the expected contribution when attributing an excess.
    pub(crate) window_classes: Table<(RootClass, Edge)>,
    /// Window level, per metric and edge: the usual level at each hour of the day.
    pub(crate) seasonal: Table<(WindowMetric, Edge), DailyProfile>,
    /// The correlated-storm detector's normal subspace, once fitted.
    pub(crate) correlated: Option<SubspaceModel>,
    /// Event time the store has learned up to.
    pub(crate) watermark_unix_nano: u64,
    /// Learning frozen everywhere (tuning): no baseline moves.
    pub(crate) freeze_all: bool,
    /// Edges whose baselines are frozen, by caller and callee name, any callee kind (tuning).
    pub(crate) frozen_edges: HashSet<(NodeName, NodeName)>,
    room: Room,
    /// The baselines learned since a reader last asked ([`BaselineStore::take_changes`]).
    pub(crate) changes: Changes,
}

impl BaselineStore {
    /// An empty store that keeps at most `max_keys` keys per table.
    pub fn new(max_keys: usize) -> BaselineStore {
        BaselineStore {
            fanout: Table::default(),
            request_edges: Table::default(),
            request_work: Table::default(),
            request_bytes: Table::default(),
            pace: Table::default(),
            request_totals: Table::default(),
            class_scopes: Table::default(),
            edge_scopes: Table::default(),
            windows: Table::default(),
            window_classes: Table::default(),
            seasonal: Table::default(),
            correlated: None,
            watermark_unix_nano: 0,
            freeze_all: false,
            frozen_edges: HashSet::new(),
            room: Room { max_keys, young_below: 0, last_sweeps_unix_nano: [0; 9], stats: StoreStats::default() },
            changes: Changes::default(),
        }
    }

    /// Lets a full table evict baselines with fewer than `samples` samples (the learning
    /// minimum) idle for [`EVICT_IDLE_NANOS`]; 0 (the default) never evicts.
    pub fn evict_young_below(&mut self, samples: u64) {
        self.room.young_below = samples;
    }

    /// What the store capped and evicted.
    pub fn stats(&self) -> &StoreStats {
        &self.room.stats
    }

    /// The most keys a table keeps.
    pub fn max_keys(&self) -> usize {
        self.room.max_keys
    }

    /// Distinct edges with a fan-out baseline.
    pub fn edges_tracked(&self) -> usize {
        self.fanout.len()
    }

    /// Windows learned, summed over the window baselines: how much window history a store has.
    pub fn window_samples(&self) -> u64 {
        self.windows.values().map(Distribution::samples).sum()
    }

    /// Takes the window-level baselines (window distributions, class shares, daily profiles,
    /// the correlated model) of `other`, keeping this store's per-trace ones: an engine that
    /// becomes its group's window merger continues from the previous merger's history.
    pub fn adopt_windows(&mut self, other: BaselineStore) {
        self.changes.all = true;
        self.windows = other.windows;
        self.window_classes = other.window_classes;
        self.seasonal = other.seasonal;
        self.correlated = other.correlated;
    }

    /// Whether learning on `edge` is frozen.
    pub fn is_frozen(&self, edge: &Edge) -> bool {
        self.freeze_all
            || (!self.frozen_edges.is_empty()
                && self.frozen_edges.contains(&(NodeName::from(edge.from), NodeName::from(edge.to))))
    }

    /// Learns the calls of each parent span of one trace on `edge` (`calls`: one value per
    /// parent span), and in the scopes above it; each table is looked up once.
    pub fn observe_fanout(&mut self, edge: Edge, calls: &[u64], at: u64) {
        if calls.is_empty() || self.is_frozen(&edge) {
            return;
        }
        observe_all(&mut self.fanout, edge, calls, at, (&mut self.room, &mut self.changes), (0, RowKey::Fanout));
        for scope in EdgeScope::above(&edge) {
            observe_all(
                &mut self.edge_scopes,
                scope,
                calls,
                at,
                (&mut self.room, &mut self.changes),
                (6, RowKey::EdgeScope),
            );
        }
    }

    /// Holds back the calls of one parent span on a young `edge` (see [`Distribution::hold`]):
    /// beyond what it was judged against, they are learned nowhere until they recur over hours.
    pub fn hold_fanout(&mut self, edge: Edge, calls: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        let room = (&mut self.room, &mut self.changes);
        observe(&mut self.fanout, edge, calls, at, room, (0, RowKey::Fanout), Distribution::hold);
    }

    /// Learns the calls one request of `class` made on `edge` (`at`: event time).
    pub fn observe_request_edge(&mut self, class: RootClass, edge: Edge, calls: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        let room = (&mut self.room, &mut self.changes);
        observe(
            &mut self.request_edges,
            (class, edge),
            calls,
            at,
            room,
            (1, RowKey::request_edge),
            Distribution::observe,
        );
    }

    /// Holds back the calls of one request of a young `class` on `edge` (see
    /// [`Distribution::hold`]): a request found beyond a borrowed threshold.
    pub fn hold_request_edge(&mut self, class: RootClass, edge: Edge, calls: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        let room = (&mut self.room, &mut self.changes);
        observe(&mut self.request_edges, (class, edge), calls, at, room, (1, RowKey::request_edge), Distribution::hold);
    }

    /// Learns the work (microseconds of call time) one request of `class` caused on `edge`.
    pub fn observe_request_work(&mut self, class: RootClass, edge: Edge, micros: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        let room = (&mut self.room, &mut self.changes);
        observe(
            &mut self.request_work,
            (class, edge),
            micros,
            at,
            room,
            (7, RowKey::request_work),
            Distribution::observe,
        );
    }

    /// Learns the payload bytes one request of `class` moved on `edge`.
    pub fn observe_request_bytes(&mut self, class: RootClass, edge: Edge, bytes: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        let room = (&mut self.room, &mut self.changes);
        observe(
            &mut self.request_bytes,
            (class, edge),
            bytes,
            at,
            room,
            (8, RowKey::request_bytes),
            Distribution::observe,
        );
    }

    /// Learns how long one call to `callee` took (microseconds; the mean of a trace's calls on
    /// one edge) at event time `at`, whatever the call was judged: a callee slowing for
    /// everyone shows here.
    pub fn observe_pace(&mut self, callee: PaceLane, micros_per_call: f64, at: u64) {
        if let Some(pace) = self.pace.get_mut(&callee) {
            pace.observe(micros_per_call, at);
        } else if self.pace.len() < self.room.max_keys {
            self.pace.entry(callee).or_default().observe(micros_per_call, at);
        }
    }

    /// Learns a request total of `class`, and of the scopes above it.
    pub fn observe_request_total(&mut self, class: RootClass, metric: RequestMetric, value: u64, at: u64) {
        if self.freeze_all {
            return;
        }
        self.learn_total(class, metric, (value, at), Distribution::observe);
        for scope in ClassScope::above(&class) {
            let (room, of) = ((&mut self.room, &mut self.changes), (5, RowKey::class_scope as _));
            observe(&mut self.class_scopes, (scope, metric), value, at, room, of, Distribution::observe);
        }
    }

    /// Holds back a request total of a young `class` (see [`Distribution::hold`]): beyond
    /// what it was judged against, it is learned nowhere until it recurs over hours.
    pub fn hold_request_total(&mut self, class: RootClass, metric: RequestMetric, value: u64, at: u64) {
        if self.freeze_all {
            return;
        }
        self.learn_total(class, metric, (value, at), Distribution::hold);
    }

    /// `learn`s a request total of `class` (observes or holds it), in its own table only.
    fn learn_total(
        &mut self,
        class: RootClass,
        metric: RequestMetric,
        (value, at): (u64, u64),
        learn: fn(&mut Distribution, u64, u64),
    ) {
        let room = (&mut self.room, &mut self.changes);
        observe(&mut self.request_totals, (class, metric), value, at, room, (2, RowKey::request_total), learn);
    }

    /// Learns an edge's window value (`thousandths` of the measured unit) at event time `at`,
    /// and the hour-of-day profile of `work_per_entry`.
    pub fn observe_window(&mut self, metric: WindowMetric, edge: Edge, thousandths: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        let evicted = self.room.stats.evicted_young;
        let room = (&mut self.room, &mut self.changes);
        observe(
            &mut self.windows,
            (metric, edge),
            thousandths,
            at,
            room,
            (3, RowKey::window),
            Distribution::observe_guarded,
        );
        if self.room.stats.evicted_young > evicted {
            // The hour-of-day profiles go with their window baselines.
            let windows = &self.windows;
            self.seasonal.retain(|key, _| windows.contains_key(key));
        }
    }

    /// Learns a window metric's value into its hour-of-day profile (thousandths, as the
    /// window baselines). Unlike them it sees every judged window, anomalous or not: a daily
    /// rhythm alarms on its first days and is learned as one; how far it may raise a threshold
    /// is bounded by the detector.
    pub fn observe_seasonal(&mut self, metric: WindowMetric, edge: Edge, thousandths: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        if let Some(profile) = self.seasonal.get_mut(&(metric, edge)) {
            profile.observe(thousandths as f64, at);
        } else if self.seasonal.len() < self.room.max_keys {
            self.seasonal.entry((metric, edge)).or_default().observe(thousandths as f64, at);
        } else {
            self.room.stats.capped_observations += 1;
        }
    }

    /// Learns the calls per thousand entry requests that `class` made on `edge` in a window.
    pub fn observe_window_class(&mut self, class: RootClass, edge: Edge, per_thousand: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        let room = (&mut self.room, &mut self.changes);
        observe(
            &mut self.window_classes,
            (class, edge),
            per_thousand,
            at,
            room,
            (4, RowKey::window_class),
            Distribution::observe,
        );
    }
}

#[cfg(test)]
mod tests;
