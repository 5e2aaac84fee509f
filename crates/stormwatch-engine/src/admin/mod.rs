//! The admin API's answers: `/api/baselines` (what `stormwatch baseline list` shows),
//! `/api/graph`, `/api/alerts`, `/api/explain` and `/api/tuning`, read off the engine thread
//! from what it publishes ([`AdminView`]); tuning changes and snapshot imports, answered on
//! the engine thread between batches. The snapshot export is a copy of the store the engine
//! thread makes, encoded off it (`crate::saving`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

mod view;

pub use view::AdminView;

use stormwatch_baseline::inspect::{self, BaselineRow, Query, RowNames};
use stormwatch_baseline::{decode_snapshot, BaselineStore};
use stormwatch_detect::tuning::Tuning;
use stormwatch_detect::{EdgeGauge, Engine};
use stormwatch_io::admin::{AdminQuery, AdminRequest};
use stormwatch_model::{Alert, AlertKind};

use crate::tuning::{Change, TuningWatch};

/// Parameters `/api/baselines` (and `baseline list`) take.
const PARAMS: [&str; 6] = ["service", "to_kind", "table", "match", "sort", "limit"];

fn query_of(params: &BTreeMap<String, String>) -> Result<Query, String> {
    if let Some(unknown) = params.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return Err(format!("unknown parameter {unknown:?}: use {}", PARAMS.join(", ")));
    }
    let limit = match params.get("limit") {
        Some(text) => Some(text.parse().map_err(|_| format!("limit={text:?} is not a number of rows"))?),
        None => None,
    };
    Ok(Query {
        service: params.get("service").cloned(),
        to_kind: params.get("to_kind").cloned(),
        table: params.get("table").cloned(),
        matching: params.get("match").cloned(),
        sort: params.get("sort").cloned(),
        limit,
    })
}

/// Most rows one `/api/baselines` answer holds, and how many without `limit`.
const API_MAX_ROWS: usize = 10_000;
const API_DEFAULT_ROWS: usize = 1_000;

/// The rows of `store` that `params` select (at most `max_rows`: `API_MAX_ROWS`, 10,000, for the
/// API), as the API's JSON body, or a 400 naming the parameter.
pub fn list(
    store: &BaselineStore,
    recent: &[BTreeMap<String, f64>],
    params: &BTreeMap<String, String>,
    max_rows: usize,
) -> (u16, String) {
    let rows = inspect::rows(store);
    let (status, body) = select(params, max_rows, (rows.len(), rows.iter(), false), recent);
    (status, body.to_string())
}

/// The rows among `total` `candidates` that `params` select, annotated with the `recent`
/// windows, as the API's JSON body, or a 400 naming the parameter. `by_samples`: the candidates
/// come most samples first (the default order), so an unfiltered query takes the first rows.
pub(crate) fn select<'a, R: RowNames + 'a>(
    params: &BTreeMap<String, String>,
    max_rows: usize,
    (total, candidates, by_samples): (usize, impl Iterator<Item = &'a R>, bool),
    recent: &[BTreeMap<String, f64>],
) -> (u16, serde_json::Value) {
    let mut params = params.clone();
    match params.get("limit").map(|text| text.parse::<usize>()) {
        Some(Ok(limit)) if (1..=max_rows).contains(&limit) => {}
        Some(_) => {
            let message = format!(
                "limit must be a number of rows from 1 to {max_rows} (total says how many match; narrow with \
                 service, to_kind, table or match)"
            );
            return (400, serde_json::json!({ "error": message }));
        }
        None => {
            params.insert("limit".into(), API_DEFAULT_ROWS.to_string());
        }
    }
    let query = match query_of(&params) {
        Ok(query) => query,
        Err(error) => return (400, serde_json::json!({ "error": error })),
    };
    let limit = query.limit.unwrap_or(API_DEFAULT_ROWS);
    let answer = if by_samples && query.is_everything_by_samples() {
        let mut rows: Vec<BaselineRow> = candidates.take(limit).map(R::shown).collect();
        inspect::annotate(&mut rows, recent);
        Ok(rows)
    } else {
        let mut rows: Vec<BaselineRow> = candidates.filter(|row| query.matches(*row)).map(R::shown).collect();
        inspect::annotate(&mut rows, recent);
        query.order(rows)
    };
    match answer {
        Ok(rows) => (200, serde_json::json!({ "total": total, "rows": rows })),
        Err(error) => (400, serde_json::json!({ "error": error.to_string() })),
    }
}

/// What each detector compares, in a sentence (a match on every kind, so a new detector
/// cannot go unexplained).
fn rule_of(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::NPlusOne => {
            "calls of one statement under one parent span, against that edge's learned calls per parent: \
            above p99 x detect.ratio (and the distribution's tail), by at least detect.min_excess calls"
        }
        AlertKind::FanoutAmplification => {
            "calls to one service under one parent span, against that edge's learned calls per \
            parent: above p99 x detect.ratio, by at least detect.min_excess calls"
        }
        AlertKind::RequestAmplification => {
            "work one request from this entry point caused (calls on the edge, database calls, \
            spans or services), against what requests of that entry point learned"
        }
        AlertKind::AggregateAmplification => {
            "calls on the edge per entry request in one window, against the edge's window \
            baseline (and its level at this hour of day): above p99 x detect.ratio, broad (not a few heavy traces) \
            and beyond chance"
        }
        AlertKind::RetryStorm => {
            "the share of calls on the edge that were retries in one window, against its window baseline"
        }
        AlertKind::CacheBypass => {
            "database reads per cache lookup in one window (the miss ratio), against its window baseline"
        }
        AlertKind::CorrelatedStorm => {
            "the window's calls per entry request on every edge, projected off the learned normal \
            traffic patterns (PCA): a residual beyond the fitted threshold"
        }
        AlertKind::NewEdge => "an edge no trace had used before, with enough calls to matter",
        AlertKind::CardinalityFlood => {
            "new names (services, operations, statements, clients, ...) past the cardinality limits \
            (limits.*), folded into one overflow name"
        }
        AlertKind::CostAmplification => {
            "the callee's own time on the edge, per request against what requests of that entry point \
            learned (above p99 x detect.ratio and by at least detect.min_excess_work), or per call in one \
            window against the edge's window baseline (by at least detect.window_min_excess_work); \
            thresholds stretched by how much slower the callee answers every caller lately"
        }
        AlertKind::EgressAmplification => {
            "bytes (or a database's rows) returned on the edge, per request against what requests of that \
            entry point learned (by at least detect.min_excess_bytes or detect.min_excess_rows), or per call in \
            one window against the edge's window baseline"
        }
        AlertKind::QueueAmplification => {
            "messages one request sent to a queue and the work its consumers did for them, against the \
            edge's learned messages per parent and per request, raised once the consumers went quiet"
        }
    }
}

/// An alert's node as baselines name it (`service `operation``).
fn node_name(service: &str, operation: &str) -> String {
    format!("{service} `{operation}`")
}

/// Why an alert fired: the alert, the rule, the baselines of its edge and entry as they are
/// now, and the tuning that applies to it.
pub fn explanation<'a, R: RowNames + 'a>(
    alert: &Alert,
    rows: impl IntoIterator<Item = &'a R>,
    tuning: &Tuning,
) -> serde_json::Value {
    let edge = alert.edge.as_ref().map(|e| {
        format!("{} -> {}", node_name(&e.from.service, &e.from.operation), node_name(&e.to.service, &e.to.operation))
    });
    // The entry as baselines name it: with its query shape (`service `operation?keys``).
    let entry = alert.entry.as_ref().map(|e| match e.query_keys.is_empty() {
        true => node_name(&e.service, &e.operation),
        false => format!("{} `{}?{}`", e.service, e.operation, e.query_keys.join("&")),
    });
    let kind = alert.kind.as_str();
    // A young entry's totals or a young edge's calls per parent were judged against a wider
    // baseline (or a request against the whole system's): `baseline.from` says which.
    let from = alert.baseline.from.as_deref();
    let (edge_is, entry_is) = (edge.as_deref(), entry.as_deref());
    let baselines: Vec<BaselineRow> = rows
        .into_iter()
        .filter(|r| {
            let on_edge = edge.is_some() && r.edge() == edge_is && (r.entry().is_none() || r.entry() == entry_is);
            let on_entry = edge.is_none() && r.edge().is_none() && entry.is_some() && r.entry() == entry_is;
            on_edge || on_entry || from.is_some_and(|from| judged_by(*r, from))
        })
        .map(R::shown)
        .collect();
    let rules: Vec<String> = tuning
        .rules
        .iter()
        .filter(|r| r.edge.as_ref().is_none_or(|e| Some(e.as_str()) == edge.as_deref()))
        .filter(|r| r.entry.is_none() || r.entry == entry)
        .filter(|r| r.kind.is_none_or(|k| k == alert.kind))
        .map(|r| format!("{r:?}"))
        .collect();
    let mode = tuning.detectors.get(&alert.kind).map_or("on".to_string(), |m| format!("{m:?}").to_lowercase());
    let frozen = edge.as_ref().is_some_and(|e| tuning.frozen_edges.iter().any(|f| f.as_str() == e));
    let why = format!(
        "{kind}: observed {} {} against an expected {} and a threshold of {} (score {}), from a baseline of {} samples{}.",
        serde_json::json!(alert.observed),
        alert.unit,
        serde_json::json!(alert.expected),
        serde_json::json!(alert.threshold),
        serde_json::json!(alert.score),
        alert.baseline.samples,
        borrowed(alert, from),
    );
    serde_json::json!({
        "why": why,
        "rule": rule_of(alert.kind),
        "explanation": alert.explanation,
        "edge": edge,
        "entry": entry,
        "exemplar_trace_ids": alert.exemplar_trace_ids,
        "baselines_now": baselines,
        "tuning": { "detector_mode": mode, "edge_frozen": frozen, "overrides": rules },
        "alert": alert,
    })
}

/// Whether row `r` is the wider baseline an alert's `baseline.from` names.
fn judged_by(r: &impl RowNames, from: &str) -> bool {
    match (r.table().split(':').next(), r.entry(), r.edge()) {
        (Some("route_per_request" | "service_per_request"), Some(scope), _) => {
            from == format!("every request to {scope}")
        }
        (Some("system_per_request"), None, _) => from == "every request of the system",
        (Some("pair_per_parent"), _, Some(pair)) => pair
            .split_once(" -> ")
            .is_some_and(|(caller, callee)| from == format!("every call from {caller} to {callee}")),
        (Some("kind_per_parent"), _, Some(scope)) => scope
            .split_once(" -> any ")
            .is_some_and(|(caller, kind)| from == format!("every call from {caller} to a {kind}")),
        _ => false,
    }
}

/// What `explain` says of a wider baseline that judged: empty when the alert's own did.
fn borrowed(alert: &Alert, from: Option<&str>) -> String {
    let unprecedented = alert.explanation.contains("never seen in the whole system");
    let young = if alert.unit == "calls_per_parent" { "edge" } else { "entry" };
    from.map_or(String::new(), |from| match unprecedented {
        true => {
            format!(" of {from} (far beyond anything the whole system did, whatever the entry's own baseline allows)")
        }
        false => format!(
            " of {from} (the {young}'s own baseline was too young to judge; a wider one judges at half the sensitivity)"
        ),
    })
}

/// Finds an alert by id or fingerprint (the newest with that fingerprint).
pub fn find<'a>(alerts: impl DoubleEndedIterator<Item = &'a Alert>, wanted: &str) -> Option<&'a Alert> {
    alerts.rev().find(|a| a.id == wanted || a.fingerprint == wanted)
}

/// Alerts an engine keeps for `/api/alerts` and `/api/explain`.
pub(crate) const RECENT_ALERTS: usize = 1000;

/// The admin token file in a models directory.
pub const TOKEN_FILE: &str = "admin.token";

/// `GET /api/graph`: the last judged window's call graph at service level (from its edges'
/// `gauges`), at most `limit` edges (the busiest half and the most anomalous half), each with
/// the recent alerts on it; with `focus`, only the edges of the nodes whose name contains it.
fn graph(
    (gauges, window_end): (&[EdgeGauge], u64),
    limit: usize,
    focus: Option<&str>,
    recent: &[Arc<Alert>],
) -> serde_json::Value {
    let mut graph = stormwatch_detect::graph::service_graph(gauges, limit, focus);
    for edge in &mut graph.edges {
        edge.alerts = recent
            .iter()
            .filter_map(|a| a.edge.as_ref())
            .filter(|e| e.from.service == edge.from && e.to.service == edge.to && e.to.kind == edge.to_kind)
            .count();
    }
    let window_end = match window_end {
        0 => serde_json::Value::Null,
        end => stormwatch_model::rfc3339(end).into(),
    };
    let mut body = serde_json::to_value(&graph).unwrap_or_default();
    body["window_end"] = window_end;
    body
}

/// `GET /api/alerts`: the newest first, of `kind`, whose edge or entry contains `matching`.
fn alerts(recent: &[Arc<Alert>], limit: usize, kind: Option<&str>, matching: Option<&str>) -> (u16, String) {
    let contains = |alert: &Alert, text: &str| {
        let edge = serde_json::to_string(&alert.edge).unwrap_or_default();
        let entry = serde_json::to_string(&alert.entry).unwrap_or_default();
        edge.contains(text) || entry.contains(text)
    };
    let matching: Vec<&Alert> = recent
        .iter()
        .map(Arc::as_ref)
        .rev()
        .filter(|a| kind.is_none_or(|k| a.kind.as_str() == k))
        .filter(|a| matching.is_none_or(|m| contains(a, m)))
        .take(limit)
        .collect();
    (200, serde_json::json!({ "alerts": matching }).to_string())
}

fn error(status: u16, message: String) -> (u16, String) {
    (status, serde_json::json!({ "error": message }).to_string())
}

/// Answers an admin API write on the engine thread, in order with the traffic. Reads are
/// answered off it, from the [`AdminView`]; the export of the whole store is encoded off it too
/// (`crate::saving`).
pub(crate) fn answer(
    engine: &mut Engine,
    query: AdminQuery,
    watch: Option<&mut TuningWatch>,
    view: Option<&AdminView>,
) {
    let response = match (query.request, watch) {
        (AdminRequest::Import { document }, _) => import(engine, &document, &query.who),
        (AdminRequest::ChangeTuning { .. }, None) => error(503, "this engine has no tuning file".into()),
        (AdminRequest::ChangeTuning { change }, Some(watch)) => {
            let answer = change_tuning(engine, watch, &change, &query.who);
            if let Some(view) = view {
                view.set_tuning(engine.tuning());
            }
            answer
        }
        (read, _) => error(500, format!("{read:?} is not answered by the engine thread")),
    };
    let _ = query.reply.send(response);
}

/// `POST /api/snapshot`: the baselines replaced by an imported snapshot.
fn import(engine: &mut Engine, document: &str, who: &str) -> (u16, String) {
    let origin = Path::new("the imported snapshot");
    match decode_snapshot(document.as_bytes(), engine.store().max_keys(), origin) {
        Ok(store) => {
            let edges = store.edges_tracked();
            tracing::info!(who = %who, edges, "baselines replaced by an imported snapshot");
            engine.replace_store(store);
            (200, serde_json::json!({ "summary": format!("{edges} edges imported") }).to_string())
        }
        Err(e) => error(400, e.to_string()),
    }
}

/// `POST /api/tuning`: one change appended to the file (with who made it) and put in force.
fn change_tuning(engine: &mut Engine, watch: &mut TuningWatch, body: &str, who: &str) -> (u16, String) {
    let change = match serde_json::from_str::<Change>(body) {
        Ok(change) => change,
        Err(e) => return error(400, format!("not a tuning change: {e}")),
    };
    match crate::tuning::append(watch.path(), &change, who, stormwatch_model::wall_clock_nanos()) {
        Ok(tuning) => {
            let summary = crate::tuning::describe(&tuning);
            tracing::info!(who = %who, change = ?change, tuning = %summary, "tuning changed through the admin API");
            watch.mark_seen();
            engine.set_tuning(tuning);
            (200, serde_json::json!({ "summary": summary }).to_string())
        }
        Err(refused) => error(400, refused.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use stormwatch_baseline::RequestMetric;
    use stormwatch_model::{RootClass, Sym};

    use super::*;

    /// An alert with the fields a test names, the others filled in.
    fn alert_of(fields: serde_json::Value) -> Alert {
        let mut alert = serde_json::json!({
            "schema": stormwatch_model::ALERT_SCHEMA, "id": "a1", "fingerprint": "f1", "severity": "warning",
            "detected_at": "2027-01-15T09:00:00.000Z",
            "window": {"start": "2027-01-15T08:59:50.000Z", "end": "2027-01-15T09:00:00.000Z"},
            "count": 1, "exemplar_trace_ids": [], "contributors": [],
        });
        for (key, value) in fields.as_object().unwrap() {
            alert[key] = value.clone();
        }
        serde_json::from_value(alert).unwrap()
    }

    /// A young entry judged against its route: `explain` says what judged it and lists that
    /// baseline with the entry's own.
    #[test]
    fn a_borrowed_judgement_names_the_baseline_that_judged() {
        let class = |shape: &str| RootClass {
            service: Sym::new("gateway"),
            operation: Sym::new("GET /products"),
            query_shape: Some(Sym::new(shape)),
        };
        let mut store = BaselineStore::new(100);
        for i in 0..300 {
            store.observe_request_total(class("page"), RequestMetric::Spans, 10, i);
        }
        for i in 0..40 {
            store.observe_request_total(class("expand"), RequestMetric::Spans, 40, 300 + i);
        }
        let alert = alert_of(serde_json::json!({
            "kind": "request_amplification", "observed": 900.0, "unit": "spans_per_request", "expected": 10.0,
            "threshold": 180.0, "score": 5.0, "edge": null,
            "entry": {"service": "gateway", "operation": "GET /products", "query_keys": ["expand"]},
            "baseline": {"samples": 340, "since": "2027-01-15T08:00:00.000Z", "from": "every request to gateway `GET /products`"},
            "explanation": "One request ...",
        }));
        let explained = explanation(&alert, &inspect::rows(&store), &Tuning::default());
        let why = explained["why"].as_str().unwrap();
        assert!(why.contains("340 samples of every request to gateway `GET /products` (the entry's own"), "{why}");
        let tables: Vec<&str> =
            explained["baselines_now"].as_array().unwrap().iter().map(|r| r["table"].as_str().unwrap()).collect();
        assert!(tables.contains(&"route_per_request:spans"), "{tables:?}");
        assert!(tables.contains(&"per_request:spans"), "the entry's own: {tables:?}");
        assert!(!tables.contains(&"service_per_request:spans"), "{tables:?}");
    }

    /// Every kind of alert is explained by its rule: none is an unknown detector.
    #[test]
    fn every_kind_has_a_rule() {
        for kind in AlertKind::ALL {
            let rule = rule_of(kind);
            assert!(rule.len() > 40 && !rule.contains("unknown"), "{kind:?}: {rule}");
        }
    }

    /// A young edge judged against every call its caller makes to that kind of callee.
    #[test]
    fn a_young_edge_names_the_scope_that_judged_it() {
        use stormwatch_model::{Edge, Node, NodeKind};
        let node = |s: &str, o: &str, kind| Node { service: Sym::new(s), operation: Sym::new(o), kind };
        let catalog = Edge {
            from: node("gateway", "GET /products", NodeKind::Service),
            to: node("catalog", "GET /items", NodeKind::Service),
        };
        let reviews = Edge { from: catalog.from, to: node("reviews", "GET /reviews", NodeKind::Service) };
        let mut store = BaselineStore::new(100);
        for i in 0..300 {
            store.observe_fanout(catalog, &[1], i);
        }
        for i in 0..40 {
            store.observe_fanout(reviews, &[20], 300 + i);
        }
        let alert = alert_of(serde_json::json!({
            "kind": "fanout_amplification", "observed": 200.0, "unit": "calls_per_parent", "expected": 1.0,
            "threshold": 22.0, "score": 9.09,
            "edge": {"from": {"service": "gateway", "operation": "GET /products"},
                     "to": {"service": "reviews", "operation": "GET /reviews", "kind": "service"}},
            "entry": null,
            "baseline": {"samples": 340, "since": "2027-01-15T08:00:00.000Z", "from": "every call from gateway to a service"},
            "explanation": "gateway `GET /products` called reviews `GET /reviews` 200 times ...",
        }));
        let explained = explanation(&alert, &inspect::rows(&store), &Tuning::default());
        let why = explained["why"].as_str().unwrap();
        assert!(
            why.contains("of every call from gateway to a service (the edge's own baseline was too young"),
            "{why}"
        );
        let tables: Vec<&str> =
            explained["baselines_now"].as_array().unwrap().iter().map(|r| r["table"].as_str().unwrap()).collect();
        assert_eq!(tables, ["calls_per_parent", "kind_per_parent"], "the edge's own and the scope that judged");
    }
}
