use stormwatch_model::builder::TraceBuilder;
use stormwatch_model::Span;

use super::*;

const SEC: u64 = NANOS_PER_SEC;
const T0: u64 = 1_700_000_000 * SEC;

fn small_trace(seed: u64, start: u64) -> Vec<Span> {
    let mut t = TraceBuilder::new(seed, start);
    let root = t.server("gateway", "GET /", None);
    let call = t.client("gateway", "GET", root);
    t.server("catalog", "GET /items", Some(call));
    t.build()
}

fn push_all(assembler: &mut Assembler, spans: Vec<Span>) -> Vec<CompletedTrace> {
    let mut out = Vec::new();
    for span in spans {
        assembler.push(span, &mut out);
    }
    out
}

#[test]
fn completes_after_idle_event_time_not_before() {
    let mut a = Assembler::new(AssemblerConfig::default());
    assert!(push_all(&mut a, small_trace(1, T0)).is_empty());
    // 4 s of event time later: still waiting.
    assert!(push_all(&mut a, small_trace(2, T0 + 4 * SEC)).is_empty());
    // 6 s later: the first trace is quiet for 5 s and completes; the second is not yet.
    let done = push_all(&mut a, small_trace(3, T0 + 6 * SEC));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].trace_id, TraceBuilder::new(1, 0).trace_id());
    assert_eq!(done[0].spans.len(), 3);
    assert!(done[0].is_complete());
    assert_eq!(done[0].completion, Completion::Idle);
}

#[test]
fn order_of_spans_does_not_matter() {
    let mut a = Assembler::new(AssemblerConfig::default());
    let mut spans = small_trace(1, T0);
    spans.reverse();
    assert!(push_all(&mut a, spans).is_empty());
    let mut out = Vec::new();
    a.advance_to(T0 + 10 * SEC, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].spans.len(), 3);
}

#[test]
fn trace_without_root_waits_for_max_wait() {
    let mut a = Assembler::new(AssemblerConfig::default());
    let spans: Vec<Span> = small_trace(1, T0).into_iter().filter(|s| s.parent_span_id.is_some()).collect();
    push_all(&mut a, spans);
    let mut out = Vec::new();
    a.advance_to(T0 + 30 * SEC, &mut out);
    assert!(out.is_empty());
    a.advance_to(T0 + 61 * SEC, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].completion, Completion::MaxWait);
    assert!(!out[0].is_complete());
    assert_eq!(a.stats().traces_without_root, 1);
}

#[test]
fn late_spans_are_counted_not_reassembled() {
    let mut a = Assembler::new(AssemblerConfig::default());
    let mut spans = small_trace(1, T0);
    let late = spans.pop().unwrap();
    push_all(&mut a, spans);
    let mut out = Vec::new();
    a.advance_to(T0 + 10 * SEC, &mut out);
    assert_eq!(out.len(), 1);
    a.push(late, &mut out);
    a.advance_to(T0 + 20 * SEC, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((a.stats().late_spans, a.stats().late_spans_dropped), (1, 1));
    assert_eq!(a.in_flight_spans(), 0);
}

/// A message consumed after its sender's trace completed: the consumer's part of the trace
/// (its spans in any order) is handed over as a continuation, rooted at the consumer span.
#[test]
fn a_late_consumer_part_is_a_continuation() {
    let mut a = Assembler::new(AssemblerConfig::default());
    let mut t = TraceBuilder::new(1, T0);
    let root = t.server("api", "POST /orders", None);
    let send = t.publish("api", "kafka:orders", root);
    let consumer = t.consume("worker", "process orders", Some(send), &[]);
    t.db("worker", "postgresql:shop", "INSERT INTO lines VALUES (?)", consumer);
    let mut spans = t.build();
    let late: Vec<Span> = spans.drain(2..).rev().collect();
    let mut out = push_all(&mut a, spans);
    a.advance_to(T0 + 10 * SEC, &mut out);
    assert_eq!(out.len(), 1);
    for span in late {
        a.push(span, &mut out);
    }
    a.advance_to(T0 + 20 * SEC, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].spans.len(), 2);
    assert!(out[1].is_complete(), "a continuation is whole once it went quiet");
    assert_eq!((a.stats().continuations, a.stats().late_spans_dropped), (1, 0));
}

#[test]
fn full_buffer_evicts_oldest_as_incomplete() {
    let config = AssemblerConfig { max_in_flight_spans: 5, ..AssemblerConfig::default() };
    let mut a = Assembler::new(config);
    push_all(&mut a, small_trace(1, T0));
    let out = push_all(&mut a, small_trace(2, T0));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].trace_id, TraceBuilder::new(1, 0).trace_id());
    assert_eq!(out[0].completion, Completion::Evicted);
    assert!(!out[0].is_complete());
    assert_eq!(a.stats().traces_evicted, 1);
    assert!(a.in_flight_spans() <= 5);
}

#[test]
fn absurd_timestamps_are_counted_and_do_not_move_time() {
    let mut a = Assembler::new(AssemblerConfig::default());
    push_all(&mut a, small_trace(1, T0));
    let watermark = a.watermark();
    let mut future = small_trace(2, T0 + 365 * 24 * 3600 * SEC);
    let mut zero = small_trace(3, 0);
    zero[0].end_unix_nano = 0;
    future.append(&mut zero);
    let out = push_all(&mut a, future);
    assert!(out.is_empty(), "a far-future span must not complete everything");
    assert_eq!(a.watermark(), watermark);
    assert_eq!(a.stats().clock_skew_spans, 3);
    assert!(a.stats().bad_timestamp_spans >= 1);
}

#[test]
fn flush_completes_everything_in_creation_order() {
    let mut a = Assembler::new(AssemblerConfig::default());
    push_all(&mut a, small_trace(1, T0));
    push_all(&mut a, small_trace(2, T0));
    let mut out = Vec::new();
    a.flush(&mut out);
    let ids: Vec<_> = out.iter().map(|t| t.trace_id).collect();
    assert_eq!(ids, vec![TraceBuilder::new(1, 0).trace_id(), TraceBuilder::new(2, 0).trace_id()]);
    assert!(out.iter().all(|t| t.completion == Completion::Flushed));
    assert_eq!(a.in_flight_traces(), 0);
}

proptest::proptest! {
    /// Any mix of spans, timestamps and time jumps: no panic, the bound holds, and every
    /// accepted span is either still buffered or handed out exactly once.
    #[test]
    fn spans_are_conserved_and_bounded(
        events in proptest::collection::vec((0u64..20, 0u64..4, 0u64..120, proptest::bool::ANY), 1..300),
        max_in_flight in 1usize..40,
    ) {
        let config = AssemblerConfig { max_in_flight_spans: max_in_flight, remembered_traces: 8, ..AssemblerConfig::default() };
        let mut a = Assembler::new(config);
        let mut out = Vec::new();
        for (i, (trace, parent, second, jump)) in events.into_iter().enumerate() {
            if jump {
                a.advance_to(T0 + second * SEC, &mut out);
                continue;
            }
            let mut t = TraceBuilder::new(trace, T0 + second * SEC);
            let root = t.server("svc", "op", None);
            let mut spans = t.build();
            let mut span = spans.remove(0);
            span.span_id = stormwatch_model::SpanId((i as u64 + 1).to_be_bytes());
            if parent > 0 {
                span.parent_span_id = Some(root);
            }
            a.push(span, &mut out);
            proptest::prop_assert!(a.in_flight_spans() <= max_in_flight);
        }
        // Late spans are gathered too, and dropped unless they continue a send.
        let taken = |stats: &AssemblerStats| (stats.spans_accepted + stats.late_spans) as usize;
        let handed_out: usize = out.iter().map(|t| t.spans.len()).sum();
        let stats = a.stats().clone();
        proptest::prop_assert_eq!(taken(&stats), handed_out + a.in_flight_spans() + stats.late_spans_dropped as usize);
        a.flush(&mut out);
        let handed_out: usize = out.iter().map(|t| t.spans.len()).sum();
        let stats = a.stats().clone();
        proptest::prop_assert_eq!(taken(&stats), handed_out + stats.late_spans_dropped as usize);
        proptest::prop_assert_eq!(a.in_flight_traces(), 0);
    }
}

#[test]
fn a_trace_whose_spans_came_from_two_partitions_is_counted_once_and_still_assembled() {
    let mut a = Assembler::new(AssemblerConfig::default());
    let mut out = Vec::new();
    // Trace 1: its three spans from partitions 0, 2 and 1 (a collector that does not key its
    // messages by trace id); trace 2 from partition 1 only; trace 3 from a source that names
    // none (an OTLP receiver) and then partition 0.
    for (span, source) in small_trace(1, T0).into_iter().zip([0, 2, 1]) {
        a.push_from(span, Some(source), &mut out);
    }
    for span in small_trace(2, T0) {
        a.push_from(span, Some(1), &mut out);
    }
    for (span, source) in small_trace(3, T0).into_iter().zip([None, Some(0), Some(0)]) {
        a.push_from(span, source, &mut out);
    }
    assert_eq!(a.stats().traces_split, 1);
    let split = a.last_split().expect("a split trace");
    assert_eq!(split.trace_id, TraceBuilder::new(1, 0).trace_id());
    assert_eq!(split.sources, [0, 2]);
    // One engine reading every partition still assembles the split trace whole.
    a.advance_to(T0 + 10 * SEC, &mut out);
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|trace| trace.spans.len() == 3 && trace.is_complete()));

    // A partition read behind the others: trace 2's last span from partition 0 arrives after
    // the trace completed. Late, and split too: counted once, however many such spans come.
    let mut late = small_trace(2, T0);
    let (last, another) = (late.pop().unwrap(), late.pop().unwrap());
    a.push_from(last, Some(0), &mut out);
    a.push_from(another, Some(2), &mut out);
    assert_eq!(a.stats().traces_split, 2);
    assert_eq!(a.stats().late_spans, 2);
    assert_eq!(a.last_split().unwrap().sources, [1, 0]);
    // A late span from the partition the whole trace came from is late, not split.
    let mut trace_3 = small_trace(3, T0);
    a.push_from(trace_3.pop().unwrap(), Some(0), &mut out);
    assert_eq!(a.stats().traces_split, 2);
}
