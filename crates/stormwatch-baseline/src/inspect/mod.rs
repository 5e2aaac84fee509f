//! What a store learned, as rows a person can read: one per baseline, with its median, p99,
//! p99.9, sample count and first observation. Filtered, sorted and compared between two
//! snapshots (`stormwatch baseline list | show | diff`, the admin API's `/api/baselines`).
//! Pure: stores in, rows out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stormwatch_model::{rounded, Edge, NodeKind, PayloadUnit, RootClass, SCORE_DECIMALS};

use crate::{BaselineStore, Changed, ClassScope, Distribution, EdgeScope, RequestMetric, WindowMetric};

mod kept;

pub use kept::KeptRow;

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
    /// Identity of the baseline, for diffs.
    pub fn key(&self) -> String {
        key_of(&self.table, self.entry.as_deref(), self.edge.as_deref())
    }
}

/// A row's identity: `table entry edge`, `-` for either absent.
fn key_of(table: &str, entry: Option<&str>, edge: Option<&str>) -> String {
    format!("{table} {} {}", entry.unwrap_or("-"), edge.unwrap_or("-"))
}

/// A baseline's names as text, and the row as shown: what queries filter on, whether the row
/// is a [`BaselineRow`] or a [`KeptRow`] (its figures and names, rendered when shown).
pub trait RowNames {
    /// [`BaselineRow::table`].
    fn table(&self) -> &str;
    /// [`BaselineRow::edge`].
    fn edge(&self) -> Option<&str>;
    /// [`BaselineRow::entry`].
    fn entry(&self) -> Option<&str>;
    /// [`BaselineRow::to_kind`].
    fn to_kind(&self) -> Option<&str>;
    /// The row as shown.
    fn shown(&self) -> BaselineRow;

    /// Whether `service` is the caller, the callee or the entry's service.
    fn involves(&self, service: &str) -> bool {
        let edge = self.edge().unwrap_or("");
        let entry = self.entry().unwrap_or("");
        edge.starts_with(&format!("{service} `"))
            || edge.contains(&format!("-> {service} `"))
            // The scopes above edges: `caller -> callee`, `caller -> any <kind>`.
            || edge.starts_with(&format!("{service} -> "))
            || edge.ends_with(&format!(" -> {service}"))
            || entry.starts_with(&format!("{service} `"))
    }
}

impl RowNames for BaselineRow {
    fn table(&self) -> &str {
        &self.table
    }
    fn edge(&self) -> Option<&str> {
        self.edge.as_deref()
    }
    fn entry(&self) -> Option<&str> {
        self.entry.as_deref()
    }
    fn to_kind(&self) -> Option<&str> {
        self.to_kind.as_deref()
    }
    fn shown(&self) -> BaselineRow {
        self.clone()
    }
}

/// Which baseline a row is: its table and key there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowKey {
    /// `calls_per_parent`.
    Fanout(Edge),
    /// `calls_per_request`.
    RequestEdge(RootClass, Edge),
    /// `work_ms_per_request`.
    RequestWork(RootClass, Edge),
    /// `bytes_per_request` or `rows_per_request`.
    RequestBytes(RootClass, Edge),
    /// `per_request:<metric>`.
    RequestTotal(RootClass, RequestMetric),
    /// `<scope>_per_request:<metric>`.
    ClassScope(ClassScope, RequestMetric),
    /// `<scope>_per_parent`.
    EdgeScope(EdgeScope),
    /// `window:<metric>`.
    Window(WindowMetric, Edge),
    /// `window_share`.
    WindowClass(RootClass, Edge),
}

impl RowKey {
    pub(crate) fn request_edge((class, edge): (RootClass, Edge)) -> RowKey {
        RowKey::RequestEdge(class, edge)
    }
    pub(crate) fn request_work((class, edge): (RootClass, Edge)) -> RowKey {
        RowKey::RequestWork(class, edge)
    }
    pub(crate) fn request_bytes((class, edge): (RootClass, Edge)) -> RowKey {
        RowKey::RequestBytes(class, edge)
    }
    pub(crate) fn request_total((class, metric): (RootClass, RequestMetric)) -> RowKey {
        RowKey::RequestTotal(class, metric)
    }
    pub(crate) fn class_scope((scope, metric): (ClassScope, RequestMetric)) -> RowKey {
        RowKey::ClassScope(scope, metric)
    }
    pub(crate) fn window((metric, edge): (WindowMetric, Edge)) -> RowKey {
        RowKey::Window(metric, edge)
    }
    pub(crate) fn window_class((class, edge): (RootClass, Edge)) -> RowKey {
        RowKey::WindowClass(class, edge)
    }

    /// The callee's kind, for the rows per edge or edge scope.
    fn callee_kind(&self) -> Option<NodeKind> {
        match self {
            RowKey::Fanout(edge)
            | RowKey::RequestEdge(_, edge)
            | RowKey::RequestWork(_, edge)
            | RowKey::RequestBytes(_, edge)
            | RowKey::Window(_, edge)
            | RowKey::WindowClass(_, edge) => Some(edge.to.kind),
            RowKey::EdgeScope(scope) => Some(scope.kind()),
            RowKey::RequestTotal(..) | RowKey::ClassScope(..) => None,
        }
    }

    /// What the table's stored values are divided by to be shown in its unit: time per request
    /// is learned in microseconds and shown in milliseconds, window values in thousandths.
    fn scale(&self) -> f64 {
        match self {
            RowKey::RequestWork(..) | RowKey::Window(..) | RowKey::WindowClass(..) => 1000.0,
            _ => 1.0,
        }
    }
}

/// A row's figures as learned (quantiles in the table's stored unit), without its names: cheap
/// to take on the engine thread, rendered as a [`BaselineRow`] by whoever shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowFigures {
    /// Which baseline.
    pub key: RowKey,
    median: u64,
    p99: u64,
    p999: u64,
    samples: u64,
    since_unix_nano: u64,
    learned_p999: Option<u64>,
    held: u64,
}

impl RowFigures {
    /// The figures of `d`, the baseline `key` names.
    pub fn of(key: RowKey, d: &Distribution) -> RowFigures {
        RowFigures {
            key,
            median: d.quantile(0.5),
            p99: d.quantile(0.99),
            p999: d.quantile(0.999),
            samples: d.samples(),
            since_unix_nano: d.since_unix_nano(),
            learned_p999: d.tail_held().then(|| d.raw_quantile(0.999)),
            held: d.held(),
        }
    }

    /// Observations learned.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The row as people read it: named, in the measured unit.
    pub fn render(&self) -> BaselineRow {
        let (table, edge, entry): (String, Option<&Edge>, Option<&RootClass>) = match &self.key {
            RowKey::Fanout(edge) => ("calls_per_parent".into(), Some(edge), None),
            RowKey::RequestEdge(class, edge) => ("calls_per_request".into(), Some(edge), Some(class)),
            RowKey::RequestWork(class, edge) => ("work_ms_per_request".into(), Some(edge), Some(class)),
            RowKey::RequestBytes(class, edge) => {
                let metric = match edge.to.kind.payload_unit() {
                    PayloadUnit::Bytes => "bytes_per_request",
                    PayloadUnit::Rows => "rows_per_request",
                };
                (metric.into(), Some(edge), Some(class))
            }
            RowKey::RequestTotal(class, metric) => (format!("per_request:{}", metric.as_str()), None, Some(class)),
            RowKey::ClassScope(scope, metric) => {
                let mut row = self.named(format!("{}_per_request:{}", scope.level(), metric.as_str()), None, None);
                row.entry = match scope {
                    ClassScope::Route { service, operation } => Some(format!("{service} `{operation}`")),
                    ClassScope::Service(service) => Some(service.to_string()),
                    ClassScope::System => None,
                };
                return row;
            }
            RowKey::EdgeScope(scope) => {
                let mut row = self.named(format!("{}_per_parent", scope.level()), None, None);
                row.edge = Some(scope.name());
                row.to_kind = Some(scope.kind().as_str().into());
                return row;
            }
            RowKey::Window(metric, edge) => (format!("window:{}", metric.as_str()), Some(edge), None),
            RowKey::WindowClass(class, edge) => ("window_share".into(), Some(edge), Some(class)),
        };
        self.named(table, edge, entry)
    }

    fn named(&self, table: String, edge: Option<&Edge>, entry: Option<&RootClass>) -> BaselineRow {
        let to_kind = edge.map(|e| e.to.kind.as_str().to_string());
        self.row(table, edge.map(|e| e.to_string()), to_kind, entry.map(|c| c.to_string()))
    }

    /// The row with these names and these figures.
    fn row(&self, table: String, edge: Option<String>, to_kind: Option<String>, entry: Option<String>) -> BaselineRow {
        let mut row = BaselineRow {
            table,
            edge,
            to_kind,
            entry,
            median: 0.0,
            p99: 0.0,
            p999: 0.0,
            samples: 0,
            since_unix_nano: 0,
            learned_p999: None,
            held: 0,
            recent: Vec::new(),
            score: None,
        };
        self.refresh(&mut row);
        row
    }

    /// Brings `row`, this baseline's row as rendered before, to these figures: the names stay,
    /// the numbers change (nothing is allocated).
    pub fn refresh(&self, row: &mut BaselineRow) {
        let scale = self.key.scale();
        row.median = self.median as f64 / scale;
        row.p99 = self.p99 as f64 / scale;
        row.p999 = self.p999 as f64 / scale;
        row.samples = self.samples;
        row.since_unix_nano = self.since_unix_nano;
        row.learned_p999 = self.learned_p999.map(|v| v as f64 / scale);
        row.held = self.held;
    }
}

/// The figures of every baseline of `store`, table by table.
pub fn figures(store: &BaselineStore) -> Vec<RowFigures> {
    figures_of(store, store.row_keys())
}

/// The figures of the baselines `keys` name (those still there).
fn figures_of(store: &BaselineStore, keys: impl IntoIterator<Item = RowKey>) -> Vec<RowFigures> {
    keys.into_iter().filter_map(|key| Some(RowFigures::of(key, store.distribution(&key)?))).collect()
}

/// The figures of the baselines of `store` that changed since the last call (every one the
/// first time, or after a whole table changed: then `true`), and forgets them.
pub fn take_changed(store: &mut BaselineStore) -> (bool, Vec<RowFigures>) {
    match store.take_changes() {
        Changed::All => (true, figures(store)),
        Changed::Keys(keys) => (false, figures_of(store, keys)),
    }
}

/// Every baseline of `store`, ordered by table and key.
pub fn rows(store: &BaselineStore) -> Vec<BaselineRow> {
    let mut rows: Vec<BaselineRow> = figures(store).iter().map(RowFigures::render).collect();
    rows.sort_by_cached_key(BaselineRow::key);
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
    /// Whether `row` passes the filters (service, to_kind, table, match).
    pub fn matches(&self, row: &(impl RowNames + ?Sized)) -> bool {
        self.service.as_deref().is_none_or(|s| row.involves(s))
            && self.to_kind.as_deref().is_none_or(|k| row.to_kind() == Some(k))
            && self.table.as_deref().is_none_or(|t| row.table().starts_with(t))
            && self
                .matching
                .as_deref()
                .is_none_or(|m| row.edge().is_some_and(|e| e.contains(m)) || row.entry().is_some_and(|e| e.contains(m)))
    }

    /// Whether the query keeps every row in the default order (most samples first, then by
    /// key): then its answer is the first `limit` rows of a list kept in that order.
    pub fn is_everything_by_samples(&self) -> bool {
        self.service.is_none()
            && self.to_kind.is_none()
            && self.table.is_none()
            && self.matching.is_none()
            && matches!(self.sort.as_deref(), None | Some("samples"))
    }

    /// The rows that match, sorted and cut to the limit; `Err` names a sort key that does not
    /// exist.
    pub fn apply(&self, mut rows: Vec<BaselineRow>) -> Result<Vec<BaselineRow>, UnknownSortKey> {
        rows.retain(|row| self.matches(row));
        self.order(rows)
    }

    /// `rows` (already filtered) sorted and cut to the limit; `Err` names a sort key that does
    /// not exist.
    pub fn order(&self, rows: Vec<BaselineRow>) -> Result<Vec<BaselineRow>, UnknownSortKey> {
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
        // Each row's key made once, not at every comparison.
        let mut keyed: Vec<(f64, String, BaselineRow)> = rows.into_iter().map(|r| (by(&r), r.key(), r)).collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        keyed.truncate(self.limit.unwrap_or(usize::MAX));
        Ok(keyed.into_iter().map(|(_, _, row)| row).collect())
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
mod tests;
