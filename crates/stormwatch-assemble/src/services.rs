//! Spans that lost their service: a resource with no `service.name` reached the engine. The
//! SDKs never send one (they default to `unknown_service:<process>`), but a collector can lose
//! a resource: rotel 0.0.1a15 sends the part of an export request it cuts off to fill a batch
//! (`--traces-batch-max-size`) with an empty resource. Such spans would make a service of
//! their own, `unknown_service`, and every edge through them new.
//!
//! A complete trace says which process each span ran in: a span that is not a process's entry
//! (internal, client, producer) ran in its parent's process, so spans joined that way are one
//! process, and a span of unknown service takes the service of a span it shares a process with.
//! A process none of whose spans kept its resource (a cut that took a whole request's spans in
//! one service) is named by its entry span's operation, when one service alone was seen serving
//! it ([`EntryServices`]).

use std::collections::HashMap;

use stormwatch_model::{Span, SpanId, Sym};

/// Operations remembered with the service that served them, at most.
pub(crate) const ENTRY_OPERATIONS_MAX: usize = 65_536;

/// Which service served each entry operation (server and consumer spans), learned from the
/// spans that named theirs; an operation served by several is no evidence.
#[derive(Default)]
pub(crate) struct EntryServices {
    served: HashMap<Sym, Served, foldhash::fast::RandomState>,
}

#[derive(Clone, Copy)]
enum Served {
    By(Sym),
    Several,
}

impl EntryServices {
    fn learn(&mut self, operation: Sym, service: Sym) {
        let full = self.served.len() >= ENTRY_OPERATIONS_MAX;
        match self.served.get_mut(&operation) {
            Some(served) => {
                if matches!(*served, Served::By(by) if by != service) {
                    *served = Served::Several;
                }
            }
            None if !full => {
                self.served.insert(operation, Served::By(service));
            }
            None => {}
        }
    }

    fn service_of(&self, operation: Sym) -> Option<Sym> {
        match self.served.get(&operation) {
            Some(Served::By(service)) => Some(*service),
            _ => None,
        }
    }
}

/// Gives each span of service `unknown` in `spans` (one whole trace) the service of a span
/// that ran in the same process, or else the service `entries` knows for its process's entry
/// operation; learns the entry operations of the spans that named their service. Returns how
/// many were given a service, and how many are left `unknown`. Linear in the trace's spans;
/// nothing is allocated unless a span's service is `unknown`.
pub(crate) fn fill_missing_services(spans: &mut [Span], unknown: Sym, entries: &mut EntryServices) -> (u64, u64) {
    let mut lost = false;
    for span in spans.iter() {
        if span.service == unknown {
            lost = true;
        } else if span.kind.is_entry() {
            entries.learn(span.operation, span.service);
        }
    }
    if !lost {
        return (0, 0);
    }
    let index: HashMap<SpanId, usize> = spans.iter().enumerate().map(|(i, span)| (span.span_id, i)).collect();
    let mut processes = Processes::new(spans.len());
    for (child, span) in spans.iter().enumerate() {
        if span.kind.is_entry() {
            continue;
        }
        if let Some(&parent) = span.parent_span_id.as_ref().and_then(|parent| index.get(parent)) {
            processes.join(child, parent);
        }
    }
    // Each process's service, from any of its spans that named one.
    let mut service: Vec<Option<Sym>> = vec![None; spans.len()];
    for (i, span) in spans.iter().enumerate() {
        if span.service != unknown {
            let root = processes.root(i);
            service[root].get_or_insert(span.service);
        }
    }
    // A process that lost every span's resource: named by its entry's operation.
    for (i, span) in spans.iter().enumerate() {
        if span.service == unknown && span.kind.is_entry() {
            let root = processes.root(i);
            if service[root].is_none() {
                service[root] = entries.service_of(span.operation);
            }
        }
    }
    let (mut filled, mut left) = (0, 0);
    for i in 0..spans.len() {
        if spans[i].service == unknown {
            match service[processes.root(i)] {
                Some(known) => {
                    spans[i].service = known;
                    filled += 1;
                }
                None => left += 1,
            }
        }
    }
    (filled, left)
}

/// Union-find over span indices, by size, with path halving.
struct Processes {
    parent: Vec<usize>,
    size: Vec<u32>,
}

impl Processes {
    fn new(spans: usize) -> Processes {
        Processes { parent: (0..spans).collect(), size: vec![1; spans] }
    }

    fn root(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.root(a), self.root(b));
        if a == b {
            return;
        }
        let (big, small) = if self.size[a] >= self.size[b] { (a, b) } else { (b, a) };
        self.parent[small] = big;
        self.size[big] += self.size[small];
    }
}

#[cfg(test)]
mod tests {
    use stormwatch_model::builder::TraceBuilder;
    use stormwatch_model::UNKNOWN_SERVICE;

    use super::*;

    #[test]
    fn spans_without_a_service_take_their_process_s() {
        // web GET /products -> (client) inventory GET /stock/:id -> (client) postgres; the
        // collector lost the resource of web's client span and of two of inventory's spans.
        let mut t = TraceBuilder::new(1, 1_700_000_000_000_000_000);
        let root = t.server("web", "GET /products", None);
        let middleware = t.internal("web", "middleware", root);
        let call = t.client("web", "GET", middleware);
        let served = t.server("inventory", "GET /stock/:id", Some(call));
        let handler = t.internal("inventory", "request handler", served);
        t.client("inventory", "SELECT", handler);
        let mut spans = t.build();
        let unknown = Sym::new(UNKNOWN_SERVICE);
        for span in &mut spans {
            if ["GET", "GET /stock/:id", "request handler"].contains(&span.operation.as_str()) {
                span.service = unknown;
            }
        }
        assert_eq!(fill_missing_services(&mut spans, unknown, &mut EntryServices::default()), (3, 0));
        let service = |operation: &str| spans.iter().find(|s| s.operation.as_str() == operation).unwrap().service;
        assert_eq!(service("GET").as_str(), "web");
        // The server span ran where its (non-entry) children did.
        assert_eq!(service("GET /stock/:id").as_str(), "inventory");
        assert_eq!(service("request handler").as_str(), "inventory");
    }

    fn served(seed: u64, callee: &str, operation: &str) -> Vec<Span> {
        let mut t = TraceBuilder::new(seed, 1_700_000_000_000_000_000);
        let root = t.server("web", "GET /", None);
        let call = t.client("web", "GET", root);
        let served = t.server(callee, operation, Some(call));
        t.internal(callee, "middleware", served);
        t.build()
    }

    #[test]
    fn a_process_that_lost_every_resource_is_named_by_its_entry_operation_when_one_service_serves_it() {
        let unknown = Sym::new(UNKNOWN_SERVICE);
        let mut entries = EntryServices::default();
        let lose = |spans: &mut Vec<Span>| {
            for span in &mut spans[2..] {
                span.service = unknown;
            }
        };
        // Unseen: nothing says which service served GET /stock/:id.
        let mut first = served(1, "inventory", "GET /stock/:id");
        lose(&mut first);
        assert_eq!(fill_missing_services(&mut first, unknown, &mut entries), (0, 2));
        // A trace that named it teaches it (costing nothing else: no span lost).
        assert_eq!(fill_missing_services(&mut served(2, "inventory", "GET /stock/:id"), unknown, &mut entries), (0, 0));
        let mut lost = served(3, "inventory", "GET /stock/:id");
        lose(&mut lost);
        assert_eq!(fill_missing_services(&mut lost, unknown, &mut entries), (2, 0));
        assert!(lost.iter().all(|span| span.service.as_str() != UNKNOWN_SERVICE));
        assert_eq!(lost[3].service.as_str(), "inventory");
        // An operation two services serve is no evidence.
        fill_missing_services(&mut served(4, "catalog", "GET /health"), unknown, &mut entries);
        fill_missing_services(&mut served(5, "reviews", "GET /health"), unknown, &mut entries);
        let mut ambiguous = served(6, "catalog", "GET /health");
        lose(&mut ambiguous);
        assert_eq!(fill_missing_services(&mut ambiguous, unknown, &mut entries), (0, 2));
    }
}
