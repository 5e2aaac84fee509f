use stormwatch_baseline::BaselineStore;
use stormwatch_model::builder::TraceBuilder;
use stormwatch_model::{Alert, AlertKind, Span, TraceId};

use crate::{Engine, EngineConfig};

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * SEC;

fn engine() -> Engine {
    Engine::new(EngineConfig::default(), BaselineStore::new(10_000), || 42)
}

/// api `POST /orders` sending `messages` to `kafka:orders`; the consumers are not in it.
fn order(seed: u64, at: u64, messages: usize) -> Vec<Span> {
    let mut t = TraceBuilder::new(seed, at);
    let root = t.server("api", "POST /orders", None);
    t.db("api", "postgresql:shop", "INSERT INTO orders VALUES (?)", root);
    for _ in 0..messages {
        t.publish("api", "kafka:orders", root);
    }
    t.build()
}

/// The worker's trace for one message of `origin` (linked), with its two queries.
fn consumer(seed: u64, at: u64, origin: TraceId) -> Vec<Span> {
    let mut t = TraceBuilder::new(seed, at);
    let process = t.consume("worker", "process orders", None, &[origin]);
    t.db("worker", "postgresql:shop", "INSERT INTO lines VALUES (?)", process);
    t.db("worker", "postgresql:shop", "UPDATE stock SET n = n - ?", process);
    t.build()
}

/// `count` orders of one message each, every 100 ms, each consumed 200 ms later.
fn learn_orders(engine: &mut Engine, count: u64) -> Vec<Alert> {
    let mut out = Vec::new();
    for seed in 0..count {
        let at = T0 + seed * SEC / 10;
        let spans = order(seed, at, 1);
        let origin = spans[0].trace_id;
        engine.push(spans, &mut out);
        engine.push(consumer(1_000_000 + seed, at + SEC / 5, origin), &mut out);
    }
    out
}

#[test]
fn a_request_flooding_a_queue_is_one_alert_with_its_consumers_work() {
    let mut engine = engine();
    let alerts = learn_orders(&mut engine, 400);
    assert!(alerts.is_empty(), "ordinary orders alerted: {alerts:#?}");
    assert!(engine.stats().consumer_traces_tied >= 340, "{:?}", engine.stats());

    let mut out = Vec::new();
    let at = T0 + 41 * SEC;
    let flood = order(9_000, at, 500);
    let origin = flood[0].trace_id;
    engine.push(flood, &mut out);
    // Completed and judged, but held: the consumers' work is not in yet.
    engine.advance_to(at + 8 * SEC, &mut out);
    assert!(out.is_empty(), "raised before its consumers' work was in: {out:#?}");
    for i in 0..500 {
        engine.push(consumer(2_000_000 + i, at + 8 * SEC + i * SEC / 100, origin), &mut out);
    }
    engine.advance_to(at + 30 * SEC, &mut out);
    assert_eq!(out.len(), 1, "one flood, one alert: {out:#?}");
    let alert = &out[0];
    assert_eq!(alert.kind, AlertKind::QueueAmplification);
    let edge = alert.edge.as_ref().expect("the edge into the queue");
    assert_eq!((edge.from.operation.as_str(), edge.to.service.as_str()), ("POST /orders", "kafka:orders"));
    assert_eq!(alert.entry.as_ref().map(|e| e.operation.as_str()), Some("POST /orders"));
    assert_eq!(alert.observed, 500.0);
    assert!(alert.explanation.contains("500 messages sent"), "{}", alert.explanation);
    assert!(alert.explanation.contains("made 1000 calls"), "{}", alert.explanation);
    assert!(alert.explanation.contains("in 500 traces of their own"), "{}", alert.explanation);
    assert!(alert.explanation.contains("in 500 traces"), "{}", alert.explanation);
    assert_eq!(alert.exemplar_trace_ids[0], origin.to_string());
    assert_eq!(alert.exemplar_trace_ids.len(), 4, "the request, then three of its consumers");
    assert!(alert.contributors.iter().any(|c| c.name == "entry api `POST /orders`"), "{:?}", alert.contributors);

    // A trace linking to the flood after its 500 messages were all consumed is not its
    // consumer: its work is its own, for the windows too.
    let tied = engine.stats().consumer_traces_tied;
    engine.push(consumer(3_000_000, at + 31 * SEC, origin), &mut out);
    engine.advance_to(at + 40 * SEC, &mut out);
    assert_eq!(engine.stats().consumer_traces_tied, tied);
}

/// Single-message consumers under the producer span (parentage): the part of the trace that
/// arrives after the request's own part completed is tied back to it, and its work counted.
#[test]
fn a_late_consumer_under_its_producer_span_is_tied_back() {
    let mut engine = engine();
    learn_orders(&mut engine, 400);
    let mut out = Vec::new();
    let at = T0 + 41 * SEC;
    let mut t = TraceBuilder::new(9_001, at);
    let root = t.server("api", "POST /orders", None);
    t.db("api", "postgresql:shop", "INSERT INTO orders VALUES (?)", root);
    let sends: Vec<_> = (0..300).map(|_| t.publish("api", "kafka:orders", root)).collect();
    for send in &sends {
        let process = t.consume("worker", "process orders", Some(*send), &[]);
        t.db("worker", "postgresql:shop", "INSERT INTO lines VALUES (?)", process);
    }
    let spans = t.build();
    let (sender, consumers): (Vec<Span>, Vec<Span>) = spans.into_iter().partition(|s| s.service.as_str() == "api");
    let mut consumers = consumers;
    for span in &mut consumers {
        // Consumed 20 s later, long after the request's part completed.
        span.start_unix_nano += 20 * SEC;
        span.end_unix_nano += 20 * SEC;
    }
    engine.push(sender, &mut out);
    engine.advance_to(at + 10 * SEC, &mut out);
    engine.push(consumers, &mut out);
    engine.advance_to(at + 40 * SEC, &mut out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].kind, AlertKind::QueueAmplification);
    assert!(out[0].explanation.contains("made 300 calls"), "{}", out[0].explanation);
    // The continuation's own loop (300 inserts in one trace of the worker) is the flood's.
    assert!(
        out[0].explanation.contains("a finding in a consumer's trace is part of this alert"),
        "{}",
        out[0].explanation
    );
    assert_eq!(engine.assembler_stats().continuations, 1);
}

/// Consumers that never report: the flood is raised when the request is forgotten, saying
/// so; and the requests remembered stay within their bound.
#[test]
fn unanswered_floods_are_raised_and_senders_are_bounded() {
    let mut engine = engine();
    learn_orders(&mut engine, 400);
    let mut out = Vec::new();
    let at = T0 + 41 * SEC;
    engine.push(order(9_002, at, 400), &mut out);
    engine.advance_to(at + 30 * SEC, &mut out);
    assert!(out.is_empty(), "{out:#?}");
    engine.advance_to(at + 70 * SEC, &mut out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(out[0].explanation.contains("no consumer's work was seen"), "{}", out[0].explanation);

    let mut queues = super::Queues::with_capacity(SEC, 60 * SEC, 10);
    let mut raised = Vec::new();
    for seed in 0..50 {
        let spans = order(seed, T0, 1);
        let trace = stormwatch_assemble::CompletedTrace {
            trace_id: spans[0].trace_id,
            spans,
            completion: stormwatch_assemble::Completion::Idle,
            has_root: true,
        };
        queues.sent(&crate::extract(&trace), None, &mut raised);
    }
    assert_eq!(queues.len(), 10);
}

/// A queue whose consumers are not traced (none was ever tied back): nothing to wait for, so
/// its flood is raised at once, as the call counts judge it.
#[test]
fn a_queue_without_traced_consumers_is_not_held() {
    let mut engine = engine();
    let mut out = Vec::new();
    for seed in 0..400 {
        engine.push(order(seed, T0 + seed * SEC / 10, 1), &mut out);
    }
    assert!(out.is_empty(), "{out:#?}");
    let at = T0 + 41 * SEC;
    engine.push(order(9_003, at, 400), &mut out);
    engine.advance_to(at + 8 * SEC, &mut out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].kind, AlertKind::FanoutAmplification);
}
