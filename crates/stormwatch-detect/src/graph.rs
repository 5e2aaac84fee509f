//! The call graph as the engine saw it in its last judged window, for the console and
//! `/api/graph`: services and virtual nodes (databases, caches, queues, peers) as nodes, and
//! the edges between them with their load and anomaly score.
//!
//! Per-operation edges are folded into one edge per (caller service, callee, callee kind):
//! calls add up, the score is the highest of the folded operations. A large system is never
//! drawn whole: the `limit` edges kept are half the busiest and half the most anomalous, and
//! the rest are counted, so a thousand services stay readable. A focus narrows the graph to the
//! edges of the services whose name contains it, before the limit, so any part of a large
//! system can be looked at.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::EdgeGauge;

/// A node: a service, or a database, cache, queue or peer it calls.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GraphNode {
    /// The service, or the database, cache, queue or peer name.
    pub id: String,
    /// `service`, `database`, `cache`, `queue` or `peer`.
    pub kind: String,
}

/// The calls from one service to one node, folded over operations.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GraphEdge {
    /// The calling service.
    pub from: String,
    /// The called node.
    pub to: String,
    /// The called node's kind.
    pub to_kind: String,
    /// Calls per second of event time.
    pub calls_per_second: f64,
    /// Calls per entry request, network-wide.
    pub calls_per_entry: f64,
    /// The highest score of its operations (calls per entry request over the learned p99).
    pub score: f64,
    /// The operation edges folded into it, busiest first: `caller operation -> callee operation`.
    pub operations: Vec<String>,
    /// Recent alerts on it (filled in by the engine's API, which keeps the alerts).
    pub alerts: usize,
}

/// What `/api/graph` answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Graph {
    /// The nodes the edges connect.
    pub nodes: Vec<GraphNode>,
    /// The edges kept: past the limit, the most anomalous half of it, then the busiest.
    pub edges: Vec<GraphEdge>,
    /// Edges in the window, before the focus and the limit.
    pub edges_total: usize,
    /// Edges the focus selected, before the limit (`edges_total` without a focus).
    pub edges_matching: usize,
}

/// Most operations listed per folded edge.
const OPERATIONS_LISTED: usize = 5;

/// A caller service, a callee and its kind.
type ServiceEdge = (String, String, String);

/// Folds `gauges` (every edge of the window) into service-level edges and keeps at most
/// `limit`: the busiest half and the most anomalous half. With a `focus`, only the edges from
/// or to a node whose name contains it (ignoring case) are considered.
pub fn service_graph(gauges: &[EdgeGauge], limit: usize, focus: Option<&str>) -> Graph {
    // Each folded edge with its operations' (calls per second, name).
    let mut folded: BTreeMap<ServiceEdge, (GraphEdge, Vec<(f64, String)>)> = BTreeMap::new();
    for gauge in gauges {
        let (from, to) = (gauge.edge.from.service.to_string(), gauge.edge.to.service.to_string());
        let kind = gauge.edge.to.kind.as_str().to_string();
        let (edge, operations) = folded.entry((from.clone(), to.clone(), kind.clone())).or_insert_with(|| {
            let edge = GraphEdge {
                from,
                to,
                to_kind: kind,
                calls_per_second: 0.0,
                calls_per_entry: 0.0,
                score: 0.0,
                operations: Vec::new(),
                alerts: 0,
            };
            (edge, Vec::new())
        });
        edge.calls_per_second += gauge.calls_per_second;
        edge.calls_per_entry += gauge.calls_per_entry;
        edge.score = edge.score.max(gauge.score);
        let name = format!("{} -> {}", gauge.edge.from.operation, gauge.edge.to.operation);
        operations.push((gauge.calls_per_second, name));
    }
    let mut edges: Vec<GraphEdge> = folded
        .into_values()
        .map(|(mut edge, mut operations)| {
            operations.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            edge.operations = operations.into_iter().take(OPERATIONS_LISTED).map(|(_, name)| name).collect();
            edge
        })
        .collect();
    let edges_total = edges.len();
    if let Some(focus) = focus.map(str::to_lowercase).filter(|f| !f.is_empty()) {
        edges.retain(|e| e.from.to_lowercase().contains(&focus) || e.to.to_lowercase().contains(&focus));
    }
    let edges_matching = edges.len();
    if edges.len() > limit {
        let by = |key: fn(&GraphEdge) -> f64, edges: &mut Vec<GraphEdge>| {
            edges.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| (&a.from, &a.to).cmp(&(&b.from, &b.to))));
        };
        by(|e| e.score, &mut edges);
        let anomalous: Vec<GraphEdge> = edges.drain(..limit / 2).collect();
        by(|e| e.calls_per_second, &mut edges);
        edges.truncate(limit - anomalous.len());
        edges.extend(anomalous);
    }
    edges.sort_by(|a, b| b.calls_per_second.total_cmp(&a.calls_per_second).then_with(|| a.from.cmp(&b.from)));
    let mut nodes: BTreeMap<String, String> = BTreeMap::new();
    for edge in &edges {
        nodes.entry(edge.from.clone()).or_insert_with(|| "service".into());
        // A node both called as a service and as something else stays a service.
        let kind = nodes.entry(edge.to.clone()).or_insert_with(|| edge.to_kind.clone());
        if edge.to_kind == "service" {
            *kind = "service".into();
        }
    }
    let nodes = nodes.into_iter().map(|(id, kind)| GraphNode { id, kind }).collect();
    Graph { nodes, edges, edges_total, edges_matching }
}

#[cfg(test)]
mod tests {
    use stormwatch_model::{Edge, Node, NodeKind, Sym};

    use super::*;

    fn gauge(from: (&str, &str), to: (&str, &str, NodeKind), calls: f64, score: f64) -> EdgeGauge {
        let node = |s: &str, o: &str, kind| Node { service: Sym::new(s), operation: Sym::new(o), kind };
        EdgeGauge {
            edge: Edge { from: node(from.0, from.1, NodeKind::Service), to: node(to.0, to.1, to.2) },
            calls_per_second: calls,
            calls_per_entry: calls / 10.0,
            p99_per_entry: 1.0,
            score,
        }
    }

    #[test]
    fn operations_fold_into_service_edges() {
        let graph = service_graph(
            &[
                gauge(("catalog", "GET /items"), ("postgresql:shop", "SELECT a", NodeKind::Database), 30.0, 0.5),
                gauge(("catalog", "GET /items/{id}"), ("postgresql:shop", "SELECT b", NodeKind::Database), 10.0, 2.0),
                gauge(("gateway", "GET /"), ("catalog", "GET /items", NodeKind::Service), 5.0, 0.1),
            ],
            100,
            None,
        );
        assert_eq!((graph.edges_total, graph.edges_matching), (2, 2));
        let db = &graph.edges[0];
        assert_eq!((db.from.as_str(), db.to.as_str(), db.to_kind.as_str()), ("catalog", "postgresql:shop", "database"));
        assert_eq!((db.calls_per_second, db.score), (40.0, 2.0));
        assert_eq!(db.operations, ["GET /items -> SELECT a", "GET /items/{id} -> SELECT b"]);
        let kinds: Vec<(&str, &str)> = graph.nodes.iter().map(|n| (n.id.as_str(), n.kind.as_str())).collect();
        assert_eq!(kinds, [("catalog", "service"), ("gateway", "service"), ("postgresql:shop", "database")]);
    }

    #[test]
    fn a_large_graph_keeps_the_busiest_and_the_most_anomalous() {
        // 1,000 services each calling the next; load falls with the index, one quiet edge is
        // the anomaly.
        let mut gauges: Vec<EdgeGauge> = (0..1_000)
            .map(|i| {
                let (from, to) = (format!("svc{i:04}"), format!("svc{:04}", i + 1));
                gauge((&from, "op"), (&to, "op", NodeKind::Service), 1_000.0 - i as f64, 0.5)
            })
            .collect();
        gauges[900].score = 9.0;
        let graph = service_graph(&gauges, 10, None);
        assert_eq!((graph.edges_total, graph.edges.len()), (1_000, 10));
        assert_eq!(graph.edges[0].from, "svc0000", "busiest first");
        assert!(graph.edges.iter().any(|e| e.from == "svc0900" && e.score == 9.0), "the anomaly is kept");
        assert!(graph.nodes.len() <= 20);
        // A focus finds a quiet service the limit left out: its edge in and its edge out.
        let focused = service_graph(&gauges, 10, Some("SVC0500"));
        assert_eq!((focused.edges_total, focused.edges_matching), (1_000, 2));
        let pairs: Vec<(&str, &str)> = focused.edges.iter().map(|e| (e.from.as_str(), e.to.as_str())).collect();
        assert_eq!(pairs, [("svc0499", "svc0500"), ("svc0500", "svc0501")]);
    }
}
