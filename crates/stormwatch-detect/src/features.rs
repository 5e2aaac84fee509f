//! Per-trace features: which edges a trace used, how often under each parent span, and how
//! much work the root request caused in total.
//!
//! Pairing: a client (or producer) span is the caller side of an edge. Its callee is the
//! server span that answers it when that service is instrumented, else the virtual node
//! described by its attributes (database, cache, queue, peer). The caller node is the entry
//! span of the caller's own service that the client span runs under. A server span whose
//! parent lives in another service and is not a client span is paired with that parent too.
//! Cycles in parent links, duplicate span ids, missing roots and orphans are tolerated.

use std::collections::BTreeMap;

use stormwatch_assemble::CompletedTrace;

mod consumed;

pub use consumed::{Consumed, Tie};
use stormwatch_model::{Edge, Node, NodeKind, RootClass, Span, SpanId, SpanKind, Sym, TraceId};

/// What one edge did in one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeFeatures {
    /// The edge.
    pub edge: Edge,
    /// Calls on this edge in the whole trace (work per root request).
    pub calls: u64,
    /// Calls under each parent span, one entry per parent.
    pub calls_per_parent: Vec<u64>,
    /// The largest value in `calls_per_parent`.
    pub max_calls_per_parent: u64,
    /// Calls that failed (the client span or the server span that answered it).
    pub errors: u64,
    /// Calls that repeat an attempt: marked as resends, or following a failed call on the same
    /// edge under the same parent.
    pub retries: u64,
    /// Payload bytes the calls reported (response bodies, message bodies); 0 when unreported.
    pub bytes: u64,
    /// Time the calls took in the callee, summed, in microseconds: work, not wall time
    /// (concurrent calls each count in full). A call takes its caller's client span's duration
    /// (the callee's server span's where no client span stands for it), less the time of the
    /// calls the callee made in turn while answering it: each edge carries its callee's own
    /// time, and a slow database shows on the edge into it, not on every edge above it.
    pub work_micros: u64,
}

/// Cache lookups and the calls on one database edge made beside them (under the same parent
/// span): the fallback reads of cache misses. Keyed by the pair, so a database call added
/// next to a cache later (a deploy) is a new pair, not a sudden miss storm.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheUse {
    /// Caller -> cache.
    pub cache: Edge,
    /// Caller -> database, under the same parents as the lookups.
    pub database: Edge,
    /// Calls on `database` under parents that also looked the cache up.
    pub database_calls: u64,
}

/// Everything detection needs from one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceFeatures {
    /// The trace.
    pub trace_id: TraceId,
    /// A root arrived and the trace was not evicted; only complete traces train baselines.
    pub complete: bool,
    /// The entry point; for a trace without a root, the earliest orphan's.
    pub root_class: Option<RootClass>,
    /// Event time the trace's first span starts.
    pub start_unix_nano: u64,
    /// Event time its last span ends.
    pub end_unix_nano: u64,
    /// Spans in the trace.
    pub spans: u64,
    /// Database calls in the trace.
    pub db_calls: u64,
    /// Distinct services in the trace.
    pub services: u64,
    /// Sorted by edge, so processing order is the same in every run.
    pub edges: Vec<EdgeFeatures>,
    /// Sorted by edge.
    pub caches: Vec<CacheUse>,
    /// Client address of the request (`client.address`, `net.peer.ip`, ...), when known.
    pub client: Option<Sym>,
    /// Authenticated user of the request (`enduser.id`, `user.id`), when known.
    pub user: Option<Sym>,
    /// Spans whose parent is not in the trace (besides the root).
    pub orphan_spans: u64,
    /// Parent links that loop back on themselves.
    pub has_cycle: bool,
    /// Payload bytes the entry span sent back to the client (`http.response.body.size`); 0
    /// when unreported.
    pub response_bytes: u64,
    /// Payload bytes of the request the entry span received (`http.request.body.size`); 0 when
    /// unreported.
    pub request_bytes: u64,
    /// How many traces this one stands for under probability sampling: its root span's
    /// adjusted count (without a root, its first span's); 1 when unsampled.
    pub adjusted_count: f32,
    /// The work this trace did for messages taken off a queue: in consumer spans and below.
    pub consumed: Consumed,
}

/// The caller-side node of a span: its service's entry span it runs under.
struct EntryResolver<'t> {
    spans: &'t [Span],
    parent_index: &'t [Option<usize>],
    memo: Vec<Option<usize>>,
    has_cycle: bool,
}

impl EntryResolver<'_> {
    fn entry_of(&mut self, start: usize) -> usize {
        let mut path = Vec::new();
        let mut current = start;
        let result = loop {
            if let Some(known) = self.memo[current] {
                break known;
            }
            let span = &self.spans[current];
            if span.kind.is_entry() {
                break current;
            }
            match self.parent_index[current] {
                Some(parent) if self.spans[parent].service == span.service => {
                    if path.len() > self.spans.len() {
                        self.has_cycle = true;
                        break current;
                    }
                    path.push(current);
                    current = parent;
                }
                _ => break current,
            }
        };
        for index in path {
            self.memo[index] = Some(result);
        }
        self.memo[start] = Some(result);
        result
    }
}

fn service_node(span: &Span) -> Node {
    Node::service(span.service, span.operation)
}

fn edge_key(edge: &Edge) -> [u32; 6] {
    [
        edge.from.service.id(),
        edge.from.operation.id(),
        edge.from.kind as u32,
        edge.to.service.id(),
        edge.to.operation.id(),
        edge.to.kind as u32,
    ]
}

/// One call on an edge, as recorded while walking the spans.
#[derive(Clone, Copy)]
pub(crate) struct Call {
    edge: Edge,
    parent: SpanId,
    start: u64,
    failed: bool,
    resend: bool,
    bytes: u32,
    nanos: u64,
    /// The span of the caller's service the call was made under (its entry span).
    caller_entry: u32,
    /// The server span that answered the call, when the callee is instrumented.
    answer: Option<u32>,
}

/// Extracts the features of one completed trace.
///
/// Allocation-light on purpose (it runs for every trace): span ids are looked up in a sorted
/// vector rather than a hash map (no hashing, and no hash-flooding by chosen span ids), the
/// children of each span are one flat array, and calls are grouped by sorting one vector.
pub fn extract(trace: &CompletedTrace) -> TraceFeatures {
    let spans = &trace.spans;
    let tree = SpanTree::build(spans);
    let root = tree.root(spans);
    let orphan_spans = tree
        .parent_index
        .iter()
        .enumerate()
        .filter(|(i, p)| p.is_none() && spans[*i].parent_span_id.is_some() && Some(*i) != root)
        .count() as u64;
    let root_class = root.map(|i| RootClass {
        service: spans[i].service,
        operation: spans[i].operation,
        query_shape: spans[i].query_shape,
    });
    let mut resolver =
        EntryResolver { spans, parent_index: &tree.parent_index, memo: vec![None; spans.len()], has_cycle: false };
    let mut calls = calls_of(spans, &tree, &mut resolver);
    let consumed = consumed::consumed(trace.trace_id, spans, &tree, &calls);
    // Group by edge (interning keys: no string comparisons), then parent, in time order.
    calls.sort_unstable_by_key(|call| (edge_key(&call.edge), call.parent, call.start));
    let (edges, groups) = edges_of(&calls);
    let caches = caches_of(&edges, &groups);
    let db_calls = edges.iter().filter(|e| e.edge.to.kind.is_datastore()).map(|e| e.calls).sum();
    let mut services: Vec<u32> = spans.iter().map(|s| s.service.id()).collect();
    services.sort_unstable();
    services.dedup();
    TraceFeatures {
        trace_id: trace.trace_id,
        complete: trace.is_complete(),
        root_class,
        start_unix_nano: spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0),
        end_unix_nano: spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(0),
        spans: tree.duplicate.iter().filter(|d| !**d).count() as u64,
        db_calls,
        services: services.len() as u64,
        edges,
        caches,
        client: root.and_then(|i| spans[i].client_address),
        response_bytes: root.map_or(0, |i| u64::from(spans[i].bytes)),
        request_bytes: root.map_or(0, |i| u64::from(spans[i].request_bytes)),
        user: root.and_then(|i| spans[i].user),
        orphan_spans,
        has_cycle: resolver.has_cycle,
        adjusted_count: root.or((!spans.is_empty()).then_some(0)).map_or(1.0, |i| spans[i].adjusted_count),
        consumed,
    }
}

/// The parent-child structure of a trace's spans, by index.
pub(crate) struct SpanTree {
    /// A span whose id appeared earlier in the trace (a redelivery).
    duplicate: Vec<bool>,
    /// Each span's parent, when it is in the trace (and is not the span itself).
    parent_index: Vec<Option<usize>>,
    /// Children of span i: `child_list[child_start[i]..child_start[i + 1]]`.
    child_start: Vec<usize>,
    child_list: Vec<usize>,
}

impl SpanTree {
    fn build(spans: &[Span]) -> SpanTree {
        // Span id -> first index with that id.
        let mut by_id: Vec<(SpanId, usize)> = spans.iter().enumerate().map(|(i, span)| (span.span_id, i)).collect();
        by_id.sort_unstable();
        // A span id seen before in the trace is a redelivery (an exporter's retry after a
        // timeout, a Kafka message read again after a rebalance): it must not count as another
        // call.
        let mut duplicate = vec![false; spans.len()];
        for pair in by_id.windows(2) {
            if pair[0].0 == pair[1].0 {
                duplicate[pair[1].1] = true;
            }
        }
        let lookup = |id: SpanId| -> Option<usize> {
            let first = by_id.partition_point(|(other, _)| *other < id);
            by_id.get(first).filter(|(other, _)| *other == id).map(|(_, i)| *i)
        };
        let parent_index: Vec<Option<usize>> = spans
            .iter()
            .enumerate()
            .map(|(i, span)| span.parent_span_id.and_then(lookup).filter(|p| *p != i))
            .collect();
        let mut child_start = vec![0usize; spans.len() + 1];
        for parent in parent_index.iter().flatten() {
            child_start[*parent + 1] += 1;
        }
        for i in 0..spans.len() {
            child_start[i + 1] += child_start[i];
        }
        let mut child_list = vec![0usize; child_start[spans.len()]];
        let mut fill = child_start.clone();
        for (i, parent) in parent_index.iter().enumerate() {
            if let Some(parent) = parent {
                child_list[fill[*parent]] = i;
                fill[*parent] += 1;
            }
        }
        SpanTree { duplicate, parent_index, child_start, child_list }
    }

    fn children(&self, i: usize) -> &[usize] {
        &self.child_list[self.child_start[i]..self.child_start[i + 1]]
    }

    /// The root: a span without a parent (earliest if several); failing that the earliest span
    /// whose parent is missing.
    fn root(&self, spans: &[Span]) -> Option<usize> {
        spans
            .iter()
            .enumerate()
            .filter(|(_, s)| s.parent_span_id.is_none())
            .min_by_key(|(i, s)| (s.start_unix_nano, *i))
            .or_else(|| {
                spans
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| self.parent_index[*i].is_none())
                    .min_by_key(|(i, s)| (s.start_unix_nano, *i))
            })
            .map(|(i, _)| i)
    }
}

/// Every call the trace made: each outgoing span (to the service whose entry span answered
/// it, or to its remote node), and each entry span called directly from another service's
/// non-client span. Redelivered spans are left out.
fn calls_of(spans: &[Span], tree: &SpanTree, resolver: &mut EntryResolver<'_>) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::with_capacity(spans.len());
    for (i, span) in spans.iter().enumerate() {
        if tree.duplicate[i] {
            continue;
        }
        if span.kind.is_outgoing() {
            let caller_entry = resolver.entry_of(i);
            let caller = service_node(&spans[caller_entry]);
            // A message sent to a named queue goes to the queue, whoever consumes it (and
            // whenever: a consumer under the producer span is the start of its own work).
            let to_queue = span.kind == SpanKind::Producer && span.remote.is_some();
            let answered_index = tree
                .children(i)
                .iter()
                .copied()
                .filter(|c| !to_queue && (spans[*c].kind.is_entry() || spans[*c].service != span.service))
                .min_by_key(|c| spans[*c].start_unix_nano);
            let answered_by = answered_index.map(|c| &spans[c]);
            let callee = match (answered_by, span.remote) {
                (Some(server), _) => service_node(server),
                (None, Some(remote)) => Node { service: remote.name, operation: remote.operation, kind: remote.kind },
                (None, None) => Node { service: Sym::new("unknown"), operation: span.operation, kind: NodeKind::Peer },
            };
            calls.push(Call {
                edge: Edge { from: caller, to: callee },
                parent: span.parent_span_id.unwrap_or(span.span_id),
                start: span.start_unix_nano,
                failed: span.is_error || answered_by.is_some_and(|server| server.is_error),
                resend: span.retry,
                // Either side may report the payload; they describe the same response.
                bytes: span.bytes.max(answered_by.map_or(0, |server| server.bytes)),
                nanos: span.duration_nanos(),
                caller_entry: caller_entry as u32,
                answer: answered_index.map(|index| index as u32),
            });
        } else if span.kind.is_entry() {
            // Entry span called directly from another service's non-client span.
            let Some(parent) = tree.parent_index[i] else { continue };
            let parent_span = &spans[parent];
            if parent_span.service != span.service && !parent_span.kind.is_outgoing() {
                let caller_entry = resolver.entry_of(parent);
                let caller = service_node(&spans[caller_entry]);
                calls.push(Call {
                    edge: Edge { from: caller, to: service_node(span) },
                    parent: parent_span.span_id,
                    start: span.start_unix_nano,
                    failed: span.is_error,
                    resend: span.retry,
                    bytes: span.bytes,
                    nanos: span.duration_nanos(),
                    caller_entry: caller_entry as u32,
                    answer: Some(i as u32),
                });
            }
        }
    }
    own_time(&mut calls, spans.len());
    calls
}

/// Leaves each call to an instrumented service with the time its callee spent itself: its
/// duration less the calls the answering span's service made under it (at least zero; calls
/// made concurrently may add up to more than the answer took).
fn own_time(calls: &mut [Call], spans: usize) {
    let mut downstream = vec![0u64; spans];
    for call in calls.iter() {
        downstream[call.caller_entry as usize] = downstream[call.caller_entry as usize].saturating_add(call.nanos);
    }
    for call in calls.iter_mut() {
        if let Some(answer) = call.answer {
            call.nanos = call.nanos.saturating_sub(downstream[answer as usize]);
        }
    }
}

/// Calls on an edge under one parent span: (edge, parent, calls, when the first began).
type Group = (Edge, SpanId, u64, u64);

/// The features of each edge (sorted by text, the same in every run), and the calls per
/// (edge, parent span), from calls sorted by edge, parent and time.
fn edges_of(calls: &[Call]) -> (Vec<EdgeFeatures>, Vec<Group>) {
    let mut groups: Vec<Group> = Vec::new();
    let mut edges: Vec<EdgeFeatures> = Vec::new();
    let mut previous_failed = false;
    for (k, call) in calls.iter().enumerate() {
        let same_edge = k > 0 && calls[k - 1].edge == call.edge;
        let same_parent = same_edge && calls[k - 1].parent == call.parent;
        if !same_edge {
            edges.push(EdgeFeatures {
                edge: call.edge,
                calls: 0,
                calls_per_parent: Vec::new(),
                max_calls_per_parent: 0,
                errors: 0,
                retries: 0,
                bytes: 0,
                work_micros: 0,
            });
        }
        if !same_parent {
            groups.push((call.edge, call.parent, 0, call.start));
            previous_failed = false;
        }
        if let Some(group) = groups.last_mut() {
            group.2 += 1;
        }
        let edge = edges.last_mut().expect("pushed above");
        edge.bytes += u64::from(call.bytes);
        edge.work_micros = edge.work_micros.saturating_add(call.nanos / 1_000);
        edge.errors += u64::from(call.failed);
        edge.retries += u64::from(call.resend || previous_failed);
        previous_failed = call.failed;
    }
    let mut group_iter = groups.iter().peekable();
    for edge in &mut edges {
        while let Some((_, _, count, _)) = group_iter.next_if(|(e, _, _, _)| *e == edge.edge) {
            edge.calls_per_parent.push(*count);
        }
        edge.calls = edge.calls_per_parent.iter().sum();
        edge.max_calls_per_parent = edge.calls_per_parent.iter().copied().max().unwrap_or(0);
    }
    // Output order by text, the same in every run.
    edges.sort_unstable_by_key(|a| a.edge);
    (edges, groups)
}

/// Cache lookups and database calls under the same parent span, paired. A lookup comes before
/// the reads it falls back to: a cache call first made after them writes the result back or
/// invalidates it (cache-aside's `SET`, write-through's `DEL`), and is not a lookup.
fn caches_of(edges: &[EdgeFeatures], groups: &[Group]) -> Vec<CacheUse> {
    if !edges.iter().any(|e| e.edge.to.kind == NodeKind::Cache) {
        return Vec::new();
    }
    let mut by_parent: Vec<(SpanId, Edge, u64, u64)> = groups
        .iter()
        .filter(|(edge, _, _, _)| matches!(edge.to.kind, NodeKind::Cache | NodeKind::Database))
        .map(|(edge, parent, count, first)| (*parent, *edge, *count, *first))
        .collect();
    by_parent.sort_unstable();
    let mut pairs: BTreeMap<(Edge, Edge), u64> = BTreeMap::new();
    for parent_calls in by_parent.chunk_by(|a, b| a.0 == b.0) {
        let of = |kind: NodeKind| parent_calls.iter().filter(move |(_, e, _, _)| e.to.kind == kind);
        for (_, cache, _, looked_up) in of(NodeKind::Cache) {
            for (_, database, calls, _) in of(NodeKind::Database).filter(|(_, _, _, read)| looked_up <= read) {
                *pairs.entry((*cache, *database)).or_default() += calls;
            }
        }
    }
    pairs.into_iter().map(|((cache, database), database_calls)| CacheUse { cache, database, database_calls }).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use stormwatch_assemble::Completion;
    use stormwatch_model::builder::TraceBuilder;

    use super::*;

    pub(crate) fn completed(spans: Vec<Span>) -> CompletedTrace {
        let has_root = spans.iter().any(|s| s.parent_span_id.is_none());
        CompletedTrace { trace_id: spans[0].trace_id, spans, completion: Completion::Idle, has_root }
    }

    /// gateway `GET /product` -> catalog `GET /items/{id}` (1 SELECT) and
    /// -> reviews `GET /reviews` (1 SELECT + an N+1 of `authors` author lookups).
    pub(crate) fn product_trace(seed: u64, start: u64, authors: usize) -> Vec<Span> {
        let mut t = TraceBuilder::new(seed, start);
        let root = t.server("gateway", "GET /product/<int:pid>", None);
        let call = t.client("gateway", "GET", root);
        let items = t.server("catalog", "GET /items/<int:pid>", Some(call));
        t.db("catalog", "sqlite", "SELECT * FROM items WHERE id = ?", items);
        let call = t.client("gateway", "GET", root);
        let reviews = t.server("reviews", "GET /reviews", Some(call));
        t.db("reviews", "sqlite", "SELECT * FROM reviews WHERE product_id = ?", reviews);
        for _ in 0..authors {
            t.db("reviews", "sqlite", "SELECT name FROM users WHERE id = ?", reviews);
        }
        t.build()
    }

    fn edge_named<'f>(features: &'f TraceFeatures, to_operation: &str) -> &'f EdgeFeatures {
        features.edges.iter().find(|e| e.edge.to.operation.as_str() == to_operation).expect("edge")
    }

    #[test]
    fn pairs_client_and_server_spans_and_virtual_databases() {
        let features = extract(&completed(product_trace(1, 1_000, 3)));
        assert!(features.complete);
        let class = features.root_class.unwrap();
        assert_eq!((class.service.as_str(), class.operation.as_str()), ("gateway", "GET /product/<int:pid>"));
        assert_eq!(features.edges.len(), 5);
        let to_catalog = edge_named(&features, "GET /items/<int:pid>");
        assert_eq!(to_catalog.edge.from.operation.as_str(), "GET /product/<int:pid>");
        assert_eq!(to_catalog.edge.to.service.as_str(), "catalog");
        let authors = edge_named(&features, "SELECT name FROM users WHERE id = ?");
        assert_eq!(authors.edge.from.service.as_str(), "reviews");
        assert_eq!(authors.edge.to.kind, NodeKind::Database);
        assert_eq!((authors.calls, authors.max_calls_per_parent), (3, 3));
        assert_eq!(features.db_calls, 5);
        assert_eq!(features.services, 3);
        assert_eq!(features.spans, 10);
    }

    #[test]
    fn retries_errors_and_cache_misses() {
        let mut t = TraceBuilder::new(9, 1_000);
        let root = t.server("api", "GET /item", None);
        t.client_last("10.0.0.7");
        // Two failed attempts, then a success: two retries (after errors), one marked resend.
        for attempt in 0..3 {
            let call = t.client("api", "GET", root);
            if attempt > 0 {
                t.retry_last();
            }
            t.server("stock", "GET /stock", Some(call));
            if attempt < 2 {
                t.fail_last();
            }
        }
        // A cache miss: a lookup, a database read beside it, and the result written back (not a
        // lookup: the read does not fall back from it).
        t.cache("api", "redis", root);
        t.db("api", "postgresql", "SELECT * FROM items WHERE id = ?", root);
        t.cache_command("api", "redis", "SET ? ? ? ?", root);
        let features = extract(&completed(t.build()));
        let stock = edge_named(&features, "GET /stock");
        assert_eq!((stock.calls, stock.errors, stock.retries), (3, 2, 2));
        assert_eq!(features.caches.len(), 1);
        assert_eq!(features.caches[0].cache.to.operation.as_str(), "GET");
        assert_eq!(features.caches[0].database_calls, 1);
        assert_eq!(features.caches[0].database.to.operation.as_str(), "SELECT * FROM items WHERE id = ?");
        assert_eq!(features.client.unwrap().as_str(), "10.0.0.7");
    }

    /// Spans delivered twice (an exporter retrying after a timeout, a Kafka message read again)
    /// are one call, not two: a redelivered trace must look like the original.
    #[test]
    fn redelivered_spans_are_counted_once() {
        let original = product_trace(4, 1_000, 3);
        let mut redelivered = original.clone();
        redelivered.extend(original.iter().filter(|s| s.remote.is_some()).cloned());
        redelivered.extend(original.iter().take(2).cloned());
        let (once, twice) = (extract(&completed(original)), extract(&completed(redelivered)));
        assert_eq!(once.edges, twice.edges);
        assert_eq!((once.spans, once.db_calls), (twice.spans, twice.db_calls));
    }

    #[test]
    fn internal_spans_keep_the_service_entry_as_caller() {
        let mut t = TraceBuilder::new(2, 1_000);
        let root = t.server("api", "POST /orders", None);
        let work = t.internal("api", "validate", root);
        t.db("api", "postgresql", "SELECT 1", work);
        t.db("api", "postgresql", "SELECT 1", work);
        t.db("api", "postgresql", "SELECT 1", root);
        let features = extract(&completed(t.build()));
        let edge = &features.edges[0];
        assert_eq!(edge.edge.from.operation.as_str(), "POST /orders");
        let mut per_parent = edge.calls_per_parent.clone();
        per_parent.sort_unstable();
        assert_eq!(per_parent, vec![1, 2]);
    }

    #[test]
    fn cycles_and_orphans_do_not_hang_or_panic() {
        let mut spans = product_trace(3, 1_000, 2);
        // Make catalog's server span and its client parent point at each other.
        let (a, b) = (spans[1].span_id, spans[2].span_id);
        spans[1].parent_span_id = Some(b);
        spans[2].parent_span_id = Some(a);
        // And drop the root.
        spans.remove(0);
        let features = extract(&completed(spans));
        assert!(!features.complete);
        // The earliest span whose parent is missing stands in for the root.
        assert_eq!(features.root_class.unwrap().service.as_str(), "gateway");
        assert!(!features.edges.is_empty());

        // Two internal spans of one service that are each other's parent.
        let mut t = TraceBuilder::new(4, 1_000);
        let root = t.server("api", "GET /", None);
        let a = t.internal("api", "a", root);
        let b = t.internal("api", "b", a);
        t.db("api", "postgresql", "SELECT 1", b);
        let mut spans = t.build();
        spans[1].parent_span_id = Some(b);
        let features = extract(&completed(spans));
        assert!(features.has_cycle);
        assert_eq!(features.edges.len(), 1);
    }
}
