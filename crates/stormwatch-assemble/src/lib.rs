//! Trace assembly on event time.
//!
//! Spans arrive in any order, from many services, in many batches. This crate buffers them by
//! trace id and decides when a trace is complete, following span timestamps (a watermark), not
//! the wall clock, so a replay at any speed completes the same traces as live traffic.
//!
//! A trace completes when its root span has arrived and no span of it arrived for
//! `trace_idle` of event time, or at `trace_max_wait` whatever else. The buffer is bounded:
//! past `max_in_flight_spans` the oldest traces are completed early, marked evicted, and
//! counted. Spans for a trace that already completed are late: counted, and gathered like a
//! trace of their own; when that late part starts with a consumer span whose producer span was
//! in the earlier part (a message consumed after its sender's trace completed), it is handed
//! to detection as a *continuation*, else dropped.
//! Spans can say where they came from (a Kafka input partition): a trace whose spans came
//! from more than one is counted as *split*, the sign of an input topic not partitioned by
//! trace id, whose traces engines sharing the partitions would each see in part.
//! A span whose resource named no service (a collector lost it) takes the service of the
//! process it ran in, from its trace, or else of the one service seen serving its process's
//! entry operation ([`AssemblerStats::services_filled`]).
//! Nothing is dropped without a counter saying so, and no input can make this code panic.
//! It must never do I/O or read the clock; callers advance time explicitly.

#![warn(missing_docs)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// Keyed by trace ids the sender chose: a hasher seeded per process (as the baseline store's),
/// several times faster than `std`'s SipHash on 16-byte keys.
type Hasher = foldhash::fast::RandomState;

use stormwatch_model::{Span, SpanKind, Sym, TraceId, UNKNOWN_SERVICE};

mod services;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Assembly limits. All durations are event time in nanoseconds.
#[derive(Clone, Debug)]
pub struct AssemblerConfig {
    /// Quiet time after the last span of a trace (once its root arrived) before it completes.
    pub trace_idle_nanos: u64,
    /// Longest a trace is buffered, root or not.
    pub trace_max_wait_nanos: u64,
    /// Most spans buffered at once; past it the oldest traces are evicted as incomplete.
    pub max_in_flight_spans: usize,
    /// Spans ending further than this ahead of the watermark do not move it (clock skew).
    pub max_future_skew_nanos: u64,
    /// How many completed trace ids are remembered to recognise late spans.
    pub remembered_traces: usize,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        AssemblerConfig {
            trace_idle_nanos: 5 * NANOS_PER_SEC,
            trace_max_wait_nanos: 60 * NANOS_PER_SEC,
            max_in_flight_spans: 6_000_000,
            max_future_skew_nanos: 15 * 60 * NANOS_PER_SEC,
            remembered_traces: 200_000,
        }
    }
}

/// Why a trace left the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Root arrived and the trace went quiet for `trace_idle`.
    Idle,
    /// `trace_max_wait` passed.
    MaxWait,
    /// The buffer was full and this was the oldest trace.
    Evicted,
    /// Shutdown or end of a replay flushed it.
    Flushed,
}

/// A trace handed to detection.
#[derive(Debug)]
pub struct CompletedTrace {
    /// Its id.
    pub trace_id: TraceId,
    /// Its spans, in arrival order.
    pub spans: Vec<Span>,
    /// Why it was handed over when it was.
    pub completion: Completion,
    /// Whether a span without a parent arrived.
    pub has_root: bool,
}

impl CompletedTrace {
    /// Whether the trace is trusted to be whole: a root arrived and it was not cut short by
    /// eviction. Incomplete traces are still checked, but never train baselines.
    pub fn is_complete(&self) -> bool {
        self.has_root && self.completion != Completion::Evicted
    }
}

/// Counters, cumulative since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Spans taken in.
    pub spans_accepted: u64,
    /// Spans for a trace that had already completed.
    pub late_spans: u64,
    /// Spans with a zero timestamp or an end before their start.
    pub bad_timestamp_spans: u64,
    /// Spans ending implausibly far ahead of the watermark (kept, but not moving time).
    pub clock_skew_spans: u64,
    /// Traces handed to detection.
    pub traces_completed: u64,
    /// Traces completed at `trace_max_wait` (typically no root arrived).
    pub traces_max_wait: u64,
    /// Traces completed early because the buffer was full.
    pub traces_evicted: u64,
    /// Traces completed without a root span.
    pub traces_without_root: u64,
    /// Late parts of traces handed to detection: consumers of messages sent in an earlier,
    /// already completed part.
    pub continuations: u64,
    /// Late spans dropped: their part of the trace was no continuation (a redelivery, a span
    /// that missed its trace).
    pub late_spans_dropped: u64,
    /// Traces whose spans came from more than one source (Kafka input partitions).
    pub traces_split: u64,
    /// Spans whose resource named no service, given the service of the process they ran in
    /// (from their trace).
    pub services_filled: u64,
    /// Spans whose resource named no service and whose trace did not say which it was: judged
    /// as `unknown_service`.
    pub services_unknown: u64,
}

/// A trace whose spans came from two sources: the first split seen, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitTrace {
    /// The trace.
    pub trace_id: TraceId,
    /// The source of its first span, and the other source one of its spans came from.
    pub sources: [i32; 2],
}

struct Pending {
    spans: Vec<Span>,
    /// Watermark when the first span arrived.
    first_seen: u64,
    /// Watermark when the latest span arrived.
    last_seen: u64,
    has_root: bool,
    /// Creation number, to recognise stale entries in the eviction queue.
    generation: u64,
    /// Spans of a trace that had already completed: handed over only as a continuation.
    late: bool,
    /// The sources its spans came from.
    sources: Sources,
}

/// The sources a trace's spans came from, as far as splitting goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sources {
    /// None named yet.
    Unknown,
    /// Every span that named one came from this one.
    One(i32),
    /// More than one (counted).
    Split,
}

impl Sources {
    /// Takes in a span from `source`; the two sources when this span split the trace.
    fn add(&mut self, source: Option<i32>) -> Option<[i32; 2]> {
        match (*self, source) {
            (Sources::One(first), Some(other)) if first != other => {
                *self = Sources::Split;
                Some([first, other])
            }
            (Sources::Unknown, Some(source)) => {
                *self = Sources::One(source);
                None
            }
            _ => None,
        }
    }
}

impl Pending {
    fn due(&self, config: &AssemblerConfig) -> u64 {
        let max_wait = self.first_seen.saturating_add(config.trace_max_wait_nanos);
        if self.has_root {
            max_wait.min(self.last_seen.saturating_add(config.trace_idle_nanos))
        } else {
            max_wait
        }
    }
}

/// The trace buffer.
pub struct Assembler {
    config: AssemblerConfig,
    pending: HashMap<TraceId, Pending, Hasher>,
    /// (earliest time the trace might be due, trace). Entries are checked when popped and
    /// pushed again if the trace became due later; stale ones are skipped.
    timers: BinaryHeap<Reverse<(u64, TraceId)>>,
    /// Traces in creation order, for eviction of the oldest.
    creation: VecDeque<(TraceId, u64)>,
    next_generation: u64,
    in_flight_spans: usize,
    watermark: u64,
    /// Completed traces, with the sources their spans came from.
    recent: HashMap<TraceId, Sources, Hasher>,
    recent_order: VecDeque<TraceId>,
    stats: AssemblerStats,
    last_split: Option<SplitTrace>,
    unknown_service: Sym,
    entry_services: services::EntryServices,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler").finish_non_exhaustive()
    }
}

impl Assembler {
    /// An empty assembler.
    pub fn new(config: AssemblerConfig) -> Assembler {
        Assembler {
            config,
            pending: HashMap::default(),
            timers: BinaryHeap::new(),
            creation: VecDeque::new(),
            next_generation: 0,
            in_flight_spans: 0,
            watermark: 0,
            recent: HashMap::default(),
            recent_order: VecDeque::new(),
            stats: AssemblerStats::default(),
            last_split: None,
            unknown_service: Sym::new(UNKNOWN_SERVICE),
            entry_services: services::EntryServices::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> &AssemblerStats {
        &self.stats
    }

    /// Its configuration.
    pub fn config(&self) -> &AssemblerConfig {
        &self.config
    }

    /// Event time reached so far (Unix nanoseconds; 0 before the first span).
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Spans held in traces not yet complete.
    pub fn in_flight_spans(&self) -> usize {
        self.in_flight_spans
    }

    /// Traces not yet complete.
    pub fn in_flight_traces(&self) -> usize {
        self.pending.len()
    }

    /// The latest trace seen split across sources.
    pub fn last_split(&self) -> Option<SplitTrace> {
        self.last_split
    }

    /// Adds one span; traces that became complete are appended to `out`.
    pub fn push(&mut self, span: Span, out: &mut Vec<CompletedTrace>) {
        self.push_from(span, None, out);
    }

    /// Adds one span that came from `source` (a Kafka input partition; `None`: a source that
    /// splits no trace, such as an OTLP receiver). Traces that became complete are appended to
    /// `out`.
    pub fn push_from(&mut self, mut span: Span, source: Option<i32>, out: &mut Vec<CompletedTrace>) {
        if span.start_unix_nano == 0 || span.end_unix_nano < span.start_unix_nano {
            self.stats.bad_timestamp_spans += 1;
            span.end_unix_nano = span.end_unix_nano.max(span.start_unix_nano);
        }
        // A completed trace's sources, when this span is late for it: one lookup for both.
        let earlier = self.recent.get(&span.trace_id).copied();
        let late = earlier.is_some();
        if late {
            self.stats.late_spans += 1;
        } else {
            self.stats.spans_accepted += 1;
        }
        let event_time = span.end_unix_nano;
        let mut advanced = false;
        if event_time > self.watermark {
            if self.watermark != 0 && event_time - self.watermark > self.config.max_future_skew_nanos {
                self.stats.clock_skew_spans += 1;
            } else {
                self.watermark = event_time;
                advanced = true;
            }
        }
        let now = self.watermark;
        let trace_id = span.trace_id;
        let is_root = span.parent_span_id.is_none();
        match self.pending.get_mut(&trace_id) {
            Some(pending) => {
                pending.last_seen = now;
                pending.has_root |= is_root;
                pending.spans.push(span);
                if let Some(sources) = pending.sources.add(source) {
                    self.count_split(trace_id, sources);
                }
            }
            None => {
                let generation = self.next_generation;
                self.next_generation += 1;
                // A late part completes when it goes quiet, as a trace with its root does.
                let has_root = is_root || late;
                // A late part continues the sources of the trace's earlier part.
                let mut sources = earlier.unwrap_or(Sources::Unknown);
                if let Some(split) = sources.add(source) {
                    self.count_split(trace_id, split);
                }
                if late {
                    if let Some(remembered) = self.recent.get_mut(&trace_id) {
                        *remembered = sources;
                    }
                }
                let pending =
                    Pending { spans: vec![span], first_seen: now, last_seen: now, has_root, generation, late, sources };
                self.timers.push(Reverse((now.saturating_add(self.config.trace_idle_nanos), trace_id)));
                self.creation.push_back((trace_id, generation));
                self.pending.insert(trace_id, pending);
            }
        }
        self.in_flight_spans += 1;
        while self.in_flight_spans > self.config.max_in_flight_spans {
            if !self.evict_oldest(out) {
                break;
            }
        }
        if advanced {
            self.complete_due(out);
        }
    }

    /// Moves event time forward without a span (the live wall-clock idle fallback) and
    /// completes what became due. Never moves time backwards.
    pub fn advance_to(&mut self, watermark: u64, out: &mut Vec<CompletedTrace>) {
        if watermark > self.watermark {
            self.watermark = watermark;
            self.complete_due(out);
        }
    }

    /// Completes every buffered trace (shutdown, end of replay), oldest first.
    pub fn flush(&mut self, out: &mut Vec<CompletedTrace>) {
        while let Some((trace_id, generation)) = self.creation.pop_front() {
            if self.pending.get(&trace_id).is_some_and(|p| p.generation == generation) {
                self.finish(trace_id, Completion::Flushed, out);
            }
        }
        self.timers.clear();
    }

    fn complete_due(&mut self, out: &mut Vec<CompletedTrace>) {
        let now = self.watermark;
        while let Some(Reverse((due, trace_id))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(pending) = self.pending.get(&trace_id) else {
                continue; // completed earlier (evicted or flushed)
            };
            let actual_due = pending.due(&self.config);
            if actual_due > now {
                self.timers.push(Reverse((actual_due, trace_id)));
                continue;
            }
            let reached_max_wait = pending.first_seen.saturating_add(self.config.trace_max_wait_nanos) <= now;
            let idle_due = pending.has_root && pending.last_seen.saturating_add(self.config.trace_idle_nanos) <= now;
            let completion = if reached_max_wait && !idle_due { Completion::MaxWait } else { Completion::Idle };
            self.finish(trace_id, completion, out);
        }
    }

    fn evict_oldest(&mut self, out: &mut Vec<CompletedTrace>) -> bool {
        while let Some((trace_id, generation)) = self.creation.pop_front() {
            if self.pending.get(&trace_id).is_some_and(|p| p.generation == generation) {
                self.finish(trace_id, Completion::Evicted, out);
                return true;
            }
        }
        false
    }

    fn finish(&mut self, trace_id: TraceId, completion: Completion, out: &mut Vec<CompletedTrace>) {
        let Some(pending) = self.pending.remove(&trace_id) else {
            return;
        };
        self.in_flight_spans -= pending.spans.len();
        self.stats.traces_completed += 1;
        match completion {
            Completion::MaxWait => self.stats.traces_max_wait += 1,
            Completion::Evicted => self.stats.traces_evicted += 1,
            Completion::Idle | Completion::Flushed => {}
        }
        if pending.late && !continues_a_send(&pending.spans) {
            self.stats.late_spans_dropped += pending.spans.len() as u64;
            return;
        }
        self.stats.continuations += u64::from(pending.late);
        if !pending.has_root {
            self.stats.traces_without_root += 1;
        }
        self.remember(trace_id, pending.sources);
        let mut spans = pending.spans;
        let (filled, unknown) =
            services::fill_missing_services(&mut spans, self.unknown_service, &mut self.entry_services);
        self.stats.services_filled += filled;
        self.stats.services_unknown += unknown;
        out.push(CompletedTrace { trace_id, spans, completion, has_root: pending.has_root });
    }

    fn count_split(&mut self, trace_id: TraceId, sources: [i32; 2]) {
        self.stats.traces_split += 1;
        self.last_split = Some(SplitTrace { trace_id, sources });
    }

    fn remember(&mut self, trace_id: TraceId, sources: Sources) {
        if self.config.remembered_traces == 0 {
            return;
        }
        if self.recent_order.len() >= self.config.remembered_traces {
            if let Some(oldest) = self.recent_order.pop_front() {
                self.recent.remove(&oldest);
            }
        }
        if self.recent.insert(trace_id, sources).is_none() {
            self.recent_order.push_back(trace_id);
        }
    }
}

/// Whether late spans of a trace hold a consumer span whose producer span is not among them:
/// the handling of a message sent in the trace's earlier part.
fn continues_a_send(spans: &[Span]) -> bool {
    spans.iter().any(|span| {
        span.kind == SpanKind::Consumer
            && span.parent_span_id.is_some_and(|parent| spans.iter().all(|other| other.span_id != parent))
    })
}

#[cfg(test)]
mod tests;
