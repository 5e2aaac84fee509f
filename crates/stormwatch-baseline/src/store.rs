//! The baselines of one engine, keyed by edge and root class, with a bound on how many keys
//! it holds so that an attacker who invents operations cannot exhaust memory.

use std::collections::{HashMap, HashSet};

use stormwatch_model::{Edge, RootClass};

use crate::{DailyProfile, Distribution, SubspaceModel};

/// Per-request totals learned for each root class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestMetric {
    Spans,
    DbCalls,
    Services,
}

impl RequestMetric {
    pub const ALL: [RequestMetric; 3] = [RequestMetric::Spans, RequestMetric::DbCalls, RequestMetric::Services];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestMetric::Spans => "spans",
            RequestMetric::DbCalls => "db_calls",
            RequestMetric::Services => "services",
        }
    }

    pub fn parse(text: &str) -> Option<RequestMetric> {
        RequestMetric::ALL.into_iter().find(|metric| metric.as_str() == text)
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
}

impl WindowMetric {
    pub const ALL: [WindowMetric; 3] =
        [WindowMetric::WorkPerEntry, WindowMetric::RetryRatio, WindowMetric::CacheMissRatio];

    pub fn as_str(self) -> &'static str {
        match self {
            WindowMetric::WorkPerEntry => "work_per_entry",
            WindowMetric::RetryRatio => "retry_ratio",
            WindowMetric::CacheMissRatio => "cache_miss_ratio",
        }
    }

    pub fn parse(text: &str) -> Option<WindowMetric> {
        WindowMetric::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

/// Counters of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Observations not learned because the store was at its key limit.
    pub capped_observations: u64,
}

/// All baselines. Keys beyond `max_keys` (per table) are not created; the observations are
/// counted in [`StoreStats::capped_observations`] instead.
#[derive(Clone, Debug)]
pub struct BaselineStore {
    /// Calls per parent span, per edge.
    pub fanout: HashMap<Edge, Distribution>,
    /// Calls per root request, per (root class, edge).
    pub request_edges: HashMap<(RootClass, Edge), Distribution>,
    /// Spans, DB calls and services per root request, per root class.
    pub request_totals: HashMap<(RootClass, RequestMetric), Distribution>,
    /// Window level, per edge: work per entry request, retry ratio, cache miss ratio
    /// (thousandths).
    pub windows: HashMap<(WindowMetric, Edge), Distribution>,
    /// Window level: calls on an edge caused by one root class, per thousand entry requests
    /// of all classes. Its mean is the expected contribution when attributing an excess.
    pub window_classes: HashMap<(RootClass, Edge), Distribution>,
    /// Window level, per metric and edge: the usual level at each hour of the day.
    pub seasonal: HashMap<(WindowMetric, Edge), DailyProfile>,
    /// The correlated-storm detector's normal subspace, once fitted.
    pub correlated: Option<SubspaceModel>,
    /// Event time the store has learned up to.
    pub watermark_unix_nano: u64,
    /// Learning frozen everywhere (tuning): no baseline moves.
    pub freeze_all: bool,
    /// Edges whose baselines are frozen, as `Edge` displays them (tuning).
    pub frozen_edges: HashSet<String>,
    max_keys: usize,
    stats: StoreStats,
}

impl BaselineStore {
    pub fn new(max_keys: usize) -> BaselineStore {
        BaselineStore {
            fanout: HashMap::new(),
            request_edges: HashMap::new(),
            request_totals: HashMap::new(),
            windows: HashMap::new(),
            window_classes: HashMap::new(),
            seasonal: HashMap::new(),
            correlated: None,
            watermark_unix_nano: 0,
            freeze_all: false,
            frozen_edges: HashSet::new(),
            max_keys,
            stats: StoreStats::default(),
        }
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
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
        self.windows = other.windows;
        self.window_classes = other.window_classes;
        self.seasonal = other.seasonal;
        self.correlated = other.correlated;
    }

    /// Whether learning on `edge` is frozen.
    pub fn is_frozen(&self, edge: &Edge) -> bool {
        self.freeze_all || (!self.frozen_edges.is_empty() && self.frozen_edges.contains(&edge.to_string()))
    }

    pub fn observe_fanout(&mut self, edge: Edge, calls: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        observe(&mut self.fanout, edge, calls, at, self.max_keys, &mut self.stats);
    }

    pub fn observe_request_edge(&mut self, class: RootClass, edge: Edge, calls: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        observe(&mut self.request_edges, (class, edge), calls, at, self.max_keys, &mut self.stats);
    }

    pub fn observe_request_total(&mut self, class: RootClass, metric: RequestMetric, value: u64, at: u64) {
        if self.freeze_all {
            return;
        }
        observe(&mut self.request_totals, (class, metric), value, at, self.max_keys, &mut self.stats);
    }

    pub fn observe_window(&mut self, metric: WindowMetric, edge: Edge, thousandths: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        observe(&mut self.windows, (metric, edge), thousandths, at, self.max_keys, &mut self.stats);
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
        } else if self.seasonal.len() < self.max_keys {
            self.seasonal.entry((metric, edge)).or_default().observe(thousandths as f64, at);
        } else {
            self.stats.capped_observations += 1;
        }
    }

    pub fn observe_window_class(&mut self, class: RootClass, edge: Edge, per_thousand: u64, at: u64) {
        if self.is_frozen(&edge) {
            return;
        }
        observe(&mut self.window_classes, (class, edge), per_thousand, at, self.max_keys, &mut self.stats);
    }
}

fn observe<K: std::hash::Hash + Eq>(
    table: &mut HashMap<K, Distribution>,
    key: K,
    value: u64,
    at: u64,
    max_keys: usize,
    stats: &mut StoreStats,
) {
    if let Some(distribution) = table.get_mut(&key) {
        distribution.observe(value, at);
    } else if table.len() < max_keys {
        table.entry(key).or_default().observe(value, at);
    } else {
        stats.capped_observations += 1;
    }
}
