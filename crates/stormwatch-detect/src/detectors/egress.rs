//! `egress_amplification`: payload bytes per root request far beyond its root class's
//! baseline.
//!
//! Two places are judged: what the request sent back to its client (the entry span's
//! `http.response.body.size`, learned on the pseudo-edge [`Edge::entering`]), and what each
//! edge's callee returned inside the system (the calls' response sizes, summed per request).
//! A small request that makes a service return a huge response is the microservice form of
//! DNS amplification, and bulk exfiltration through a legitimate endpoint looks the same from
//! here: the same call, the same count, a thousand times the bytes.
//!
//! The threshold is the per-trace rule with the absolute excess in bytes
//! ([`DetectConfig::min_excess_bytes`], 1 MB), so pages a little larger than usual are not an
//! incident. Sizes under a quarter of it are counted, not learned (as time is, see `cost`): the
//! requests are counted by the class's spans per request at the entry and by the edge's calls
//! per request on an edge, which assumes that a callee reports its sizes for every call or
//! none. Where the request's own size is known (`http.request.body.size`), the explanation
//! gives the amplification factor, bytes out per byte in. Only spans that report a size are
//! judged or learned: an instrumentation that reports none is not a response of 0 bytes.
//!
//! A database's payload is the rows it returned (`db.response.returned_rows`), judged with an
//! absolute excess in rows ([`DetectConfig::min_excess_rows`], 10,000): a query that reads a
//! whole table and leaves the filtering to the service shows in its rows, whatever the
//! response's bytes.
//!
//! Bytes nest: what left the system came from the callees. What left the system speaks for the
//! request when it is anomalous; otherwise the deepest anomalous edge does.

use std::collections::HashSet;

use stormwatch_baseline::{BaselineStore, RequestMetric};
use stormwatch_model::{AlertKind, Edge, Node, PayloadUnit, RootClass};

use super::judge::judge_floored;
use super::wording::Pending;
use super::{Anomalies, DetectConfig};
use crate::features::TraceFeatures;

/// Every (edge, bytes) of the request that reported a size, the entry's pseudo-edge first.
fn sizes(features: &TraceFeatures, class: RootClass) -> impl Iterator<Item = (Edge, u64)> + '_ {
    let entry = (features.response_bytes > 0).then(|| (Edge::entering(&class), features.response_bytes));
    entry.into_iter().chain(features.edges.iter().filter(|e| e.bytes > 0).map(|e| (e.edge, e.bytes)))
}

/// Bytes per request into the entry and on each edge, against the class's baselines.
pub(super) fn judge_egress(
    features: &TraceFeatures,
    class: RootClass,
    store: &BaselineStore,
    config: &DetectConfig,
    anomalies: &mut Anomalies,
) -> Vec<Pending> {
    let mut pending = Vec::new();
    for (edge, bytes) in sizes(features, class) {
        let unit = edge.to.kind.payload_unit();
        // Every threshold is at least `min_excess`: sizes within it need no lookup.
        let least = min_excess(unit, config);
        if bytes as f64 <= least {
            continue;
        }
        let rules = DetectConfig { min_excess: least, ..config.clone() };
        // Every request of the class passes its entry; every request that made the calls, the edge.
        let requests = if edge.from.is_clients() {
            store.request_totals().get(&(class, RequestMetric::Spans))
        } else {
            store.request_edges().get(&(class, edge))
        };
        let Some(requests) = requests else { continue };
        let learned = store.request_bytes().get(&(class, edge));
        let Some(judgement) = judge_floored(requests, learned, floor(unit, config), bytes, &rules) else { continue };
        anomalies.request_bytes.insert(edge);
        let factor = (edge.from.is_clients() && features.request_bytes > 0)
            .then(|| format!("{:.0} bytes out per byte in", bytes as f64 / features.request_bytes as f64));
        pending.push(Pending {
            kind: AlertKind::EgressAmplification,
            edge: Some(edge),
            metric: None,
            observed: bytes,
            unit: unit.per("request"),
            scale: unit.scale(),
            allowance: factor,
            judgement,
        });
    }
    if pending.iter().any(|p| p.edge.is_some_and(|e| e.from.is_clients())) {
        pending.retain(|p| p.edge.is_some_and(|e| e.from.is_clients()));
        return pending;
    }
    let callers: HashSet<Node> = pending.iter().filter_map(|p| p.edge.map(|e| e.from)).collect();
    pending.into_iter().filter(|p| p.edge.is_none_or(|e| !callers.contains(&e.to))).collect()
}

/// The absolute excess a request's payload must stand above the baseline's quantile.
fn min_excess(unit: PayloadUnit, config: &DetectConfig) -> f64 {
    match unit {
        PayloadUnit::Bytes => config.min_excess_bytes,
        PayloadUnit::Rows => config.min_excess_rows,
    }
}

/// The payload under which a request's is not learned (a quarter of the excess).
fn floor(unit: PayloadUnit, config: &DetectConfig) -> u64 {
    (min_excess(unit, config) / 4.0) as u64
}

/// Learns the bytes per request of each size the request reported, unless judged anomalous or
/// under the floor.
pub(super) fn learn_egress(
    features: &TraceFeatures,
    class: RootClass,
    store: &mut BaselineStore,
    config: &DetectConfig,
    anomalies: &Anomalies,
) {
    let at = features.end_unix_nano;
    let learned = |(edge, bytes): &(Edge, u64)| {
        *bytes >= floor(edge.to.kind.payload_unit(), config) && !anomalies.request_bytes.contains(edge)
    };
    for (edge, bytes) in sizes(features, class).filter(learned) {
        store.observe_request_bytes(class, edge, bytes, at);
    }
}

#[cfg(test)]
mod tests {
    use stormwatch_assemble::{CompletedTrace, Completion};
    use stormwatch_model::builder::TraceBuilder;

    use super::*;
    use crate::detectors::judged;
    use crate::features::extract;

    /// gateway `POST /export` (a 200-byte request) -> files `GET /files/{id}`, which returns
    /// `file_bytes`; the gateway sends `file_bytes` plus 500 back to the client.
    fn export(seed: u64, file_bytes: u32) -> TraceFeatures {
        let mut t = TraceBuilder::new(seed, seed * 10_000_000);
        let root = t.server("gateway", "POST /export", None);
        t.client_last("10.9.0.0/16");
        t.bytes_last(if file_bytes > 0 { file_bytes + 500 } else { 0 });
        t.request_bytes_last(200);
        let call = t.client("gateway", "GET", root);
        let files = t.server("files", "GET /files/{id}", Some(call));
        t.bytes_last(file_bytes);
        t.db("files", "postgresql", "SELECT path FROM files WHERE id = ?", files);
        let spans = t.build();
        extract(&CompletedTrace { trace_id: spans[0].trace_id, spans, completion: Completion::Idle, has_root: true })
    }

    fn trained() -> BaselineStore {
        let mut store = BaselineStore::new(1_000);
        for i in 0..400u64 {
            // 5 to 60 kB files.
            let bytes = 5_000 + (i * 7_919 % 55_000) as u32;
            assert!(judged(&mut store, &export(i, bytes)).is_empty(), "learning, request {i}");
        }
        store
    }

    #[test]
    fn a_request_that_exports_a_whole_table_is_one_alert_on_what_left_the_system() {
        let mut store = trained();
        let findings = judged(&mut store, &export(1_000, 50_000_000));
        assert_eq!(findings.len(), 1, "{findings:?}");
        let finding = &findings[0];
        assert_eq!(finding.kind, AlertKind::EgressAmplification);
        assert!(finding.edge.is_some_and(|e| e.from.is_clients() && e.to.operation.as_str() == "POST /export"));
        assert_eq!(finding.unit, "kilobytes_per_request");
        assert!((finding.observed - 50_000.5).abs() < 1e-9, "{}", finding.observed);
        assert!(finding.explanation.contains("250002 bytes out per byte in"), "{}", finding.explanation);
        assert!(finding.explanation.contains("sent 50000.5 kB back to its client"), "{}", finding.explanation);
        let names: Vec<&str> = finding.contributors.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["entry gateway `POST /export`", "clients 10.9.0.0/16"]);
        // Not learned: the same export again is judged the same.
        assert_eq!(judged(&mut store, &export(1_001, 50_000_000)).len(), 1);
    }

    /// gateway `GET /search` -> search `GET /search` -> a LIKE query returning `rows`.
    fn search(seed: u64, rows: u32) -> TraceFeatures {
        let mut t = TraceBuilder::new(seed, seed * 10_000_000);
        let root = t.server("gateway", "GET /search", None);
        let call = t.client("gateway", "GET", root);
        let search = t.server("search", "GET /search", Some(call));
        t.db("search", "postgresql", "SELECT id, body FROM notes WHERE body LIKE ?", search);
        t.bytes_last(rows);
        let spans = t.build();
        extract(&CompletedTrace { trace_id: spans[0].trace_id, spans, completion: Completion::Idle, has_root: true })
    }

    #[test]
    fn a_query_that_returns_a_whole_table_is_an_alert_in_rows() {
        let mut store = BaselineStore::new(1_000);
        for i in 0..400u64 {
            assert!(judged(&mut store, &search(i, 1 + (i % 40) as u32)).is_empty(), "learning, request {i}");
        }
        // Rows under a quarter of the excess are counted by the edge's calls, not learned.
        assert!(store.request_bytes().is_empty());
        // Five thousand rows: within the 10,000-row excess.
        assert!(judged(&mut store, &search(1_000, 5_000)).is_empty());
        let findings = judged(&mut store, &search(1_001, 300_000));
        assert_eq!(findings.len(), 1, "{findings:?}");
        let finding = &findings[0];
        assert_eq!(finding.kind, AlertKind::EgressAmplification);
        assert_eq!(finding.unit, "rows_per_request");
        assert_eq!(finding.observed, 300_000.0);
        assert!(finding.edge.is_some_and(|e| e.to.kind == stormwatch_model::NodeKind::Database));
        assert!(
            finding.explanation.contains("return 300000 rows to search `GET /search` (normally under 2500,"),
            "{}",
            finding.explanation
        );
    }

    #[test]
    fn larger_pages_within_the_absolute_excess_and_unreported_sizes_are_not_incidents() {
        let mut store = trained();
        // Ten times the largest file, still under 1 MB beyond the baseline.
        assert!(judged(&mut store, &export(2_000, 600_000)).is_empty());
        // A response that reports no size is not a response of 0 bytes, and is not learned.
        let before = store.request_bytes().values().map(|d| d.samples()).sum::<u64>();
        assert!(judged(&mut store, &export(2_001, 0)).is_empty());
        assert_eq!(store.request_bytes().values().map(|d| d.samples()).sum::<u64>(), before);
    }
}
