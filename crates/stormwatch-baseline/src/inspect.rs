//! What a store learned, as rows a person can read: one per baseline, with its median, p99,
//! p99.9, sample count and first observation. Filtered, sorted and compared between two
//! snapshots (`stormwatch baseline list | show | diff`, the admin API's `/api/baselines`).
//! Pure: stores in, rows out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stormwatch_model::{rounded, Edge, PayloadUnit, RootClass, SCORE_DECIMALS};

use crate::{BaselineStore, ClassScope, Distribution};

/// One learned baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineRow {
    /// What is measured: `calls_per_parent` (per edge), `calls_per_request` (per entry and
    /// edge), `per_request:<metric>` (per entry), `route_per_request:<metric>`,
    /// `service_per_request:<metric>` and `system_per_request:<metric>` (every request to a
    /// route, to a service, of the system: what a young entry is judged against),
    /// `pair_per_parent` and `kind_per_parent` (calls per parent span from a service to
    /// another, and to any callee of a kind: what a young edge is judged against),
    /// `window:<metric>` (per edge, per window), `window_share` (an entry's calls on an edge per
    /// entry request, per window).
    pub table: String,
    /// `caller service `operation` -> callee service `operation``, when per edge; `caller ->
    /// callee` or `caller -> any <kind>` for the scopes above edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
    /// The callee's kind (`service`, `database`, `cache`, `queue`, `peer`), when per edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_kind: Option<String>,
    /// The root class, `service `operation``, when per entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Window baselines count in thousandths; the values here are in the measured unit.
    pub median: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The 99.9th percentile.
    pub p999: f64,
    /// Observations learned.
    pub samples: u64,
    /// Event time of the first, Unix nanoseconds.
    pub since_unix_nano: u64,
    /// Present when the learned p99.9 is being pushed up faster than the tail guard lets the
    /// baseline follow (twice a day): what was learned, while the quantiles above are what is
    /// judged. A sign of poisoning, or of a lasting change that will be accepted within days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_p999: Option<f64>,
    /// Values this young baseline held back, not learned: beyond anything it learned, they
    /// wait to recur in four different hours (absent when none are).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held: u64,
    /// Window calls per entry request: the last judged windows' values, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<f64>,
    /// The last window's value over the p99 (1.0 = at the p99); window calls per entry
    /// request only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl BaselineRow {
    fn new(table: String, edge: Option<&Edge>, entry: Option<&RootClass>, d: &Distribution, scale: f64) -> Self {
        BaselineRow {
            table,
            edge: edge.map(|e| e.to_string()),
            to_kind: edge.map(|e| e.to.kind.as_str().to_string()),
            entry: entry.map(|c| c.to_string()),
            median: d.quantile(0.5) as f64 / scale,
            p99: d.quantile(0.99) as f64 / scale,
            p999: d.quantile(0.999) as f64 / scale,
            samples: d.samples(),
            since_unix_nano: d.since_unix_nano(),
            learned_p999: d.tail_held().then(|| d.raw_quantile(0.999) as f64 / scale),
            held: d.held(),
            recent: Vec::new(),
            score: None,
        }
    }

    /// Identity of the baseline, for diffs.
    pub fn key(&self) -> String {
        format!("{} {} {}", self.table, self.entry.as_deref().unwrap_or("-"), self.edge.as_deref().unwrap_or("-"))
    }

    /// Whether `service` is the caller, the callee or the entry's service.
    fn involves(&self, service: &str) -> bool {
        let edge = self.edge.as_deref().unwrap_or("");
        let entry = self.entry.as_deref().unwrap_or("");
        edge.starts_with(&format!("{service} `"))
            || edge.contains(&format!("-> {service} `"))
            // The scopes above edges: `caller -> callee`, `caller -> any <kind>`.
            || edge.starts_with(&format!("{service} -> "))
            || edge.ends_with(&format!(" -> {service}"))
            || entry.starts_with(&format!("{service} `"))
    }
}

/// Every baseline of `store`, ordered by table and key.
pub fn rows(store: &BaselineStore) -> Vec<BaselineRow> {
    let mut rows = Vec::new();
    for (edge, d) in &store.fanout {
        rows.push(BaselineRow::new("calls_per_parent".into(), Some(edge), None, d, 1.0));
    }
    for ((class, edge), d) in &store.request_edges {
        rows.push(BaselineRow::new("calls_per_request".into(), Some(edge), Some(class), d, 1.0));
    }
    for ((class, edge), d) in &store.request_work {
        rows.push(BaselineRow::new("work_ms_per_request".into(), Some(edge), Some(class), d, 1000.0));
    }
    for ((class, edge), d) in &store.request_bytes {
        let metric = match edge.to.kind.payload_unit() {
            PayloadUnit::Bytes => "bytes_per_request",
            PayloadUnit::Rows => "rows_per_request",
        };
        rows.push(BaselineRow::new(metric.into(), Some(edge), Some(class), d, 1.0));
    }
    for ((class, metric), d) in &store.request_totals {
        rows.push(BaselineRow::new(format!("per_request:{}", metric.as_str()), None, Some(class), d, 1.0));
    }
    for ((scope, metric), d) in &store.class_scopes {
        let mut row =
            BaselineRow::new(format!("{}_per_request:{}", scope.level(), metric.as_str()), None, None, d, 1.0);
        row.entry = match scope {
            ClassScope::Route { service, operation } => Some(format!("{service} `{operation}`")),
            ClassScope::Service(service) => Some(service.to_string()),
            ClassScope::System => None,
        };
        rows.push(row);
    }
    for (scope, d) in &store.edge_scopes {
        let mut row = BaselineRow::new(format!("{}_per_parent", scope.level()), None, None, d, 1.0);
        row.edge = Some(scope.name());
        row.to_kind = Some(scope.kind().as_str().into());
        rows.push(row);
    }
    for ((metric, edge), d) in &store.windows {
        rows.push(BaselineRow::new(format!("window:{}", metric.as_str()), Some(edge), None, d, 1000.0));
    }
    for ((class, edge), d) in &store.window_classes {
        rows.push(BaselineRow::new("window_share".into(), Some(edge), Some(class), d, 1000.0));
    }
    rows.sort_by_key(|row| row.key());
    rows
}

/// Adds the last windows' calls per entry request (`recent`: per window, the edge's value,
/// keyed by the edge's name) to the `window:work_per_entry` rows, and their score against the
/// p99: what sorting by anomaly shows.
pub fn annotate(rows: &mut [BaselineRow], recent: &[BTreeMap<String, f64>]) {
    for row in rows.iter_mut().filter(|r| r.table == "window:work_per_entry") {
        let Some(edge) = &row.edge else { continue };
        row.recent = recent.iter().map(|w| w.get(edge).copied().unwrap_or(0.0)).collect();
        row.score = row.recent.last().map(|last| rounded(last / row.p99.max(1e-3), SCORE_DECIMALS));
    }
}

/// How to narrow and order rows.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Rows whose caller, callee or entry is this service.
    pub service: Option<String>,
    /// Rows whose callee is of this kind (`database`, `cache`, ...).
    pub to_kind: Option<String>,
    /// Rows of this table, or tables starting with it (`window` matches every window table).
    pub table: Option<String>,
    /// Rows whose edge or entry contains this text.
    pub matching: Option<String>,
    /// `samples` (default), `p99`, `median`, `since` (newest first) or `score` (the last
    /// window against the p99), descending.
    pub sort: Option<String>,
    /// At most this many rows.
    pub limit: Option<usize>,
}

/// A sort key [`Query::apply`] does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown sort key {0:?}: use samples, p99, median, since or score")]
pub struct UnknownSortKey(pub String);

impl Query {
    /// The rows that match, sorted and cut to the limit; `Err` names a sort key that does not
    /// exist.
    pub fn apply(&self, mut rows: Vec<BaselineRow>) -> Result<Vec<BaselineRow>, UnknownSortKey> {
        rows.retain(|row| {
            self.service.as_deref().is_none_or(|s| row.involves(s))
                && self.to_kind.as_deref().is_none_or(|k| row.to_kind.as_deref() == Some(k))
                && self.table.as_deref().is_none_or(|t| row.table.starts_with(t))
                && self.matching.as_deref().is_none_or(|m| {
                    row.edge.as_deref().is_some_and(|e| e.contains(m))
                        || row.entry.as_deref().is_some_and(|e| e.contains(m))
                })
        });
        let by = |row: &BaselineRow| -> f64 {
            match self.sort.as_deref() {
                Some("p99") => row.p99,
                Some("median") => row.median,
                Some("since") => row.since_unix_nano as f64,
                Some("score") => row.score.unwrap_or(-1.0),
                _ => row.samples as f64,
            }
        };
        match self.sort.as_deref() {
            None | Some("samples" | "p99" | "median" | "since" | "score") => {}
            Some(other) => return Err(UnknownSortKey(other.to_string())),
        }
        rows.sort_by(|a, b| by(b).total_cmp(&by(a)).then_with(|| a.key().cmp(&b.key())));
        if let Some(limit) = self.limit {
            rows.truncate(limit);
        }
        Ok(rows)
    }
}

/// One baseline that differs between two snapshots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    /// The baseline's table, edge and entry, as one text.
    pub key: String,
    /// Absent when the baseline is new.
    pub before: Option<BaselineRow>,
    /// Absent when the baseline is gone.
    pub after: Option<BaselineRow>,
}

/// What changed from `before` to `after`: baselines added, removed, or whose median, p99 or
/// p99.9 moved (sample counts alone growing is learning, not change).
pub fn diff(before: &[BaselineRow], after: &[BaselineRow]) -> Vec<RowChange> {
    let mut keyed: BTreeMap<String, (Option<&BaselineRow>, Option<&BaselineRow>)> = BTreeMap::new();
    for row in before {
        keyed.entry(row.key()).or_default().0 = Some(row);
    }
    for row in after {
        keyed.entry(row.key()).or_default().1 = Some(row);
    }
    keyed
        .into_iter()
        .filter(|(_, (b, a))| match (b, a) {
            (Some(b), Some(a)) => (b.median, b.p99, b.p999) != (a.median, a.p99, a.p999),
            _ => true,
        })
        .map(|(key, (b, a))| RowChange { key, before: b.cloned(), after: a.cloned() })
        .collect()
}

#[cfg(test)]
mod tests {
    use stormwatch_model::{Node, NodeKind, Sym};

    use super::*;
    use crate::WindowMetric;

    fn edge(from: &str, to: &str, kind: NodeKind) -> Edge {
        Edge {
            from: Node { service: Sym::new(from), operation: Sym::new("GET /x"), kind: NodeKind::Service },
            to: Node { service: Sym::new(to), operation: Sym::new("SELECT ?"), kind },
        }
    }

    fn store() -> BaselineStore {
        let mut store = BaselineStore::new(100);
        let db = edge("reviews", "postgresql", NodeKind::Database);
        let svc = edge("gateway", "reviews", NodeKind::Service);
        for i in 0..200 {
            store.observe_fanout(db, &[1 + i % 5], 1_000 + i);
            store.observe_fanout(svc, &[1], 1_000 + i);
        }
        for i in 0..40 {
            store.observe_window(WindowMetric::WorkPerEntry, db, 2_500 + i % 10, 5_000 + i);
        }
        // Beyond anything the young window baseline learned: held back.
        store.observe_window(WindowMetric::WorkPerEntry, db, 9_000, 5_100);
        store
    }

    #[test]
    fn rows_say_what_was_learned_in_its_unit() {
        let rows = rows(&store());
        assert_eq!(rows.len(), 7, "2 edges, a window and each edge's 2 scopes: {rows:#?}");
        let pair = rows.iter().find(|r| r.table == "pair_per_parent" && r.to_kind.as_deref() == Some("database"));
        assert_eq!(pair.unwrap().edge.as_deref(), Some("reviews -> postgresql"));
        let kind = rows.iter().find(|r| r.table == "kind_per_parent" && r.to_kind.as_deref() == Some("service"));
        assert_eq!((kind.unwrap().edge.as_deref(), kind.unwrap().samples), (Some("gateway -> any service"), 200));
        let window = rows.iter().find(|r| r.table == "window:work_per_entry").unwrap();
        assert_eq!(window.edge.as_deref(), Some("reviews `GET /x` -> postgresql `SELECT ?`"));
        assert_eq!(window.to_kind.as_deref(), Some("database"));
        assert!((2.5..=2.6).contains(&window.median), "thousandths are shown as calls: {window:?}");
        assert_eq!((window.samples, window.held), (40, 1));
        let fanout = rows.iter().find(|r| r.table == "calls_per_parent" && r.to_kind.as_deref() == Some("database"));
        let fanout = fanout.unwrap();
        assert_eq!((fanout.median, fanout.p99, fanout.samples, fanout.since_unix_nano), (3.0, 5.0, 200, 1_000));
    }

    #[test]
    fn queries_filter_sort_and_limit_and_name_bad_sort_keys() {
        let rows = rows(&store());
        let q = |query: Query| query.apply(rows.clone()).unwrap();
        // The edge, its window and its service pair; the other scope names no callee.
        assert_eq!(q(Query { service: Some("postgresql".into()), ..Query::default() }).len(), 3);
        assert_eq!(q(Query { service: Some("gateway".into()), ..Query::default() }).len(), 3);
        assert_eq!(q(Query { to_kind: Some("database".into()), ..Query::default() }).len(), 4);
        assert_eq!(q(Query { table: Some("window".into()), ..Query::default() }).len(), 1);
        assert_eq!(q(Query { matching: Some("-> reviews".into()), ..Query::default() }).len(), 2);
        let by_p99 = q(Query { sort: Some("p99".into()), limit: Some(1), ..Query::default() });
        assert_eq!(by_p99[0].p99, 5.0);
        let by_samples = q(Query::default());
        assert_eq!(by_samples[0].samples, 200);
        let error = Query { sort: Some("size".into()), ..Query::default() }.apply(rows).unwrap_err().to_string();
        assert!(error.contains("\"size\"") && error.contains("p99"), "{error}");
    }

    #[test]
    fn recent_windows_score_against_the_p99_and_sort_first() {
        let mut rows = rows(&store());
        let edge = "reviews `GET /x` -> postgresql `SELECT ?`".to_string();
        let windows = vec![BTreeMap::from([(edge.clone(), 2.5)]), BTreeMap::from([(edge, 7.8)])];
        annotate(&mut rows, &windows);
        let window = rows.iter().find(|r| r.table == "window:work_per_entry").unwrap();
        assert_eq!(window.recent, vec![2.5, 7.8]);
        assert!(window.score.unwrap() > 2.9, "{window:?}");
        let sorted = Query { sort: Some("score".into()), ..Query::default() }.apply(rows).unwrap();
        assert_eq!(sorted[0].table, "window:work_per_entry");
    }

    #[test]
    fn a_diff_lists_new_gone_and_moved_baselines_but_not_mere_learning() {
        let before = store();
        let mut after = before.clone();
        let db = edge("reviews", "postgresql", NodeKind::Database);
        after.observe_fanout(edge("gateway", "reviews", NodeKind::Service), &[1], 9_000);
        for i in 0..400 {
            after.observe_fanout(db, &[40], 9_000 + i);
        }
        after.observe_fanout(edge("gateway", "redis", NodeKind::Cache), &[2], 9_000);
        after.windows.clear();
        // The scopes above the edges move with them; this is about the edges' own rows.
        let own = |store: &BaselineStore| {
            let mut rows = rows(store);
            rows.retain(|row| !["pair_per_parent", "kind_per_parent"].contains(&row.table.as_str()));
            rows
        };
        let changes = diff(&own(&before), &own(&after));
        let summary: Vec<(bool, bool, &str)> =
            changes.iter().map(|c| (c.before.is_some(), c.after.is_some(), c.key.split(' ').next().unwrap())).collect();
        assert_eq!(
            summary,
            vec![
                (false, true, "calls_per_parent"),
                (true, true, "calls_per_parent"),
                (true, false, "window:work_per_entry")
            ],
            "{changes:#?}"
        );
        assert!(changes[1].after.as_ref().unwrap().p99 > changes[1].before.as_ref().unwrap().p99);
    }
}
