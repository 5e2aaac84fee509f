//! The work a trace did for messages taken off a queue, and whose messages they were: what ties
//! a consumer's trace (or the late part of a trace) back to the request that sent them.

use stormwatch_model::{Node, Span, SpanKind, TraceId};

use super::{Call, SpanTree};

/// Work done in a trace for messages taken off a queue, and the traces that sent them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Consumed {
    /// Consumer spans in the trace.
    pub messages: u64,
    /// Calls made under consumer spans.
    pub calls: u64,
    /// Time those calls took in their callees, in microseconds (as [`super::EdgeFeatures::work_micros`]).
    pub work_micros: u64,
    /// The traces whose messages this trace consumed, with how many links named each: the
    /// consumer spans' links, and this trace's own id when a consumer span's producer span is
    /// missing (its messages were sent in an earlier part of the trace, already judged).
    /// At most [`stormwatch_model::Links::MAX`].
    pub origins: Vec<(TraceId, u32)>,
    /// The consumer's entry the work ran under: the caller of the first call made under a
    /// consumer span. Not always the trace's root: Python's confluent-kafka instrumentation
    /// roots each poll in an empty `recv` span and processes the message in a `process` span
    /// under it (the one linked to the producer), whose calls the window sees.
    pub entry: Option<Node>,
    /// Set by the engine once the trace was tied back to the request that sent its messages:
    /// windows then count its work as that request's, and not as an entry request of its own.
    pub tied_back: Option<Tie>,
}

/// A consumer trace tied back to the request that sent its messages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tie {
    /// The queue the request sent the most messages to.
    pub queue: Node,
    /// The consumer's entry ([`Consumed::entry`], else its trace's root).
    pub consumer: Node,
}

/// The work a trace did under its consumer spans, and whose messages they were.
pub(super) fn consumed(trace_id: TraceId, spans: &[Span], tree: &SpanTree, calls: &[Call]) -> Consumed {
    let mut consumed = Consumed::default();
    if !spans.iter().any(|span| span.kind == SpanKind::Consumer) {
        return consumed;
    }
    // Whether each span runs under a consumer span, walking up parents (memoised; cycles end
    // at the first repeat).
    let mut under: Vec<Option<bool>> = vec![None; spans.len()];
    let mut path = Vec::new();
    for start in 0..spans.len() {
        let mut current = start;
        let result = loop {
            if let Some(known) = under[current] {
                break known;
            }
            if spans[current].kind == SpanKind::Consumer {
                break true;
            }
            match tree.parent_index[current] {
                Some(parent) if path.len() <= spans.len() => {
                    path.push(current);
                    current = parent;
                }
                _ => break false,
            }
        };
        for index in path.drain(..) {
            under[index] = Some(result);
        }
        under[start] = Some(result);
    }
    let mut origins = stormwatch_model::Links::default();
    for (i, span) in spans.iter().enumerate().filter(|(i, s)| s.kind == SpanKind::Consumer && !tree.duplicate[*i]) {
        consumed.messages += 1;
        for (trace, links) in span.linked_traces() {
            for _ in 0..*links {
                origins.add(*trace);
            }
        }
        if span.parent_span_id.is_some() && tree.parent_index[i].is_none() {
            origins.add(trace_id);
        }
    }
    for call in calls.iter().filter(|call| under[call.caller_entry as usize] == Some(true)) {
        consumed.calls += 1;
        consumed.entry.get_or_insert(call.edge.from);
        consumed.work_micros = consumed.work_micros.saturating_add(call.nanos / 1_000);
    }
    consumed.origins = origins.traces().to_vec();
    consumed
}

#[cfg(test)]
mod tests {
    use stormwatch_model::builder::TraceBuilder;
    use stormwatch_model::NodeKind;

    use super::super::extract;
    use super::super::tests::completed;

    /// api `POST /orders` publishes two messages; the worker consumes one under its producer
    /// span (parentage) and queries the database twice for it.
    #[test]
    fn a_message_goes_to_its_queue_and_its_consumer_work_is_counted() {
        let mut t = TraceBuilder::new(1, 1_000);
        let root = t.server("api", "POST /orders", None);
        let first = t.publish("api", "kafka:orders", root);
        t.publish("api", "kafka:orders", root);
        let process = t.consume("worker", "process orders", Some(first), &[]);
        t.db("worker", "postgresql:shop", "INSERT INTO lines VALUES (?)", process);
        t.db("worker", "postgresql:shop", "UPDATE stock SET n = n - ?", process);
        let features = extract(&completed(t.build()));
        let queue = features.edges.iter().find(|e| e.edge.to.kind == NodeKind::Queue).expect("edge into the queue");
        assert_eq!((queue.edge.to.service.as_str(), queue.calls), ("kafka:orders", 2));
        assert_eq!(features.edges.len(), 3, "no edge from api into the worker: {:?}", features.edges);
        assert_eq!((features.consumed.messages, features.consumed.calls), (1, 2));
        assert!(features.consumed.origins.is_empty(), "its producer is in the trace");
    }

    /// A batch consumer's trace links to its producers' traces; the late part of a trace
    /// (a consumer whose producer span was judged with an earlier part) names its own trace.
    #[test]
    fn consumer_traces_name_the_traces_they_continue() {
        let producers = [TraceBuilder::new(7, 0).trace_id(), TraceBuilder::new(8, 0).trace_id()];
        let mut t = TraceBuilder::new(2, 1_000);
        let batch = t.consume("worker", "process orders", None, &[producers[0], producers[1], producers[0]]);
        t.db("worker", "postgresql:shop", "INSERT INTO lines VALUES (?)", batch);
        let features = extract(&completed(t.build()));
        assert_eq!(features.consumed.origins, vec![(producers[0], 2), (producers[1], 1)]);
        assert_eq!((features.consumed.messages, features.consumed.calls), (1, 1));

        let mut t = TraceBuilder::new(3, 1_000);
        let own = t.trace_id();
        let missing_producer = stormwatch_model::SpanId([9; 8]);
        let late = t.consume("worker", "process orders", Some(missing_producer), &[]);
        t.db("worker", "postgresql:shop", "INSERT INTO lines VALUES (?)", late);
        let features = extract(&completed(t.build()));
        assert_eq!(features.consumed.origins, vec![(own, 1)]);
    }

    /// Python's confluent-kafka instrumentation: each poll is an empty `recv` root, the message
    /// is processed in a `process` span under it, linked to its producer; the consumer's entry
    /// is the `process` span, whose calls the windows see.
    #[test]
    fn a_message_processed_under_a_poll_span_is_the_process_spans_work() {
        let producer = TraceBuilder::new(7, 0).trace_id();
        let mut t = TraceBuilder::new(4, 1_000);
        let recv = t.consume("mailer", "recv", None, &[]);
        let process = t.consume("mailer", "shares process", Some(recv), &[producer]);
        t.db("mailer", "postgresql:shop", "INSERT INTO shares VALUES (?)", process);
        let features = extract(&completed(t.build()));
        assert_eq!(features.consumed.origins, vec![(producer, 1)]);
        let entry = features.consumed.entry.expect("the calls' consumer entry");
        assert_eq!((entry.service.as_str(), entry.operation.as_str()), ("mailer", "shares process"));
        assert_eq!(features.edges[0].edge.from, entry, "the entry the windows see the calls from");
        assert_eq!(features.root_class.unwrap().operation.as_str(), "recv");
    }

    #[test]
    fn traces_without_consumers_consumed_nothing() {
        let features = extract(&completed(super::super::tests::product_trace(1, 1_000, 3)));
        assert_eq!(features.consumed, super::Consumed::default());
    }
}
