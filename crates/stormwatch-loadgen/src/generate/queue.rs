//! Queue hops: every message a request sends to a queue with a consumer is taken off it a
//! little later and handled under a CONSUMER span, which the consumer exports when it is done —
//! in the sender's trace under the producer span (`parentage`, as single-message
//! instrumentations do), or as the root of a trace of its own linking to the producer span
//! (`links`, as batch receivers do). One hop: what a consumer sends in turn is not consumed.

use opentelemetry_proto::tonic::trace::v1::span::Link;

use super::*;
use crate::scenario::Delivery;

/// A message sent, waiting for its consumer.
pub(super) struct Sent<'s> {
    /// The queue call that sent it.
    pub(super) call: &'s Call,
    /// The producer span.
    pub(super) producer: [u8; 8],
    /// When the send ended.
    pub(super) at: u64,
}

impl<'s> Generator<'s> {
    /// The consumers' traces of the messages `origin` sent, each exported on its own.
    pub(super) fn consume_all(&mut self, origin: &mut Build<'s>) -> Vec<GeneratedTrace> {
        let sent = std::mem::take(&mut origin.sent);
        sent.into_iter().filter_map(|message| self.consume(origin, &message)).collect()
    }

    /// Consumers' traces from now on export in the order they end.
    pub(super) fn schedule(&mut self, consumed: Vec<GeneratedTrace>) {
        for trace in consumed {
            self.sequence += 1;
            self.pending.insert((trace.end_unix_nano, self.sequence), trace);
        }
    }

    fn consume(&mut self, origin: &Build<'s>, message: &Sent<'s>) -> Option<GeneratedTrace> {
        let scenario = self.scenario;
        let (service, operation) = Scenario::split_target(message.call.consumer.as_deref()?)?;
        let behaviour = scenario.operation(service, operation)?;
        let queue = message.call.queue.as_deref()?;
        let (system, destination) = queue.split_once(':').unwrap_or((queue, queue));
        let trace_id = match message.call.delivery {
            Delivery::Parentage => origin.trace_id,
            Delivery::Links => {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&self.rng.next_u64().to_be_bytes());
                id[8..].copy_from_slice(&self.rng.next_u64().to_be_bytes());
                id
            }
        };
        let mut build = Build {
            trace_id,
            entry_index: origin.entry_index,
            spans: BTreeMap::new(),
            service_order: Vec::new(),
            active: origin.active.clone(),
            // Its work is part of the request's: what changed the request labels it too.
            touched: origin.touched.clone(),
            client_address: origin.client_address.clone(),
            user: origin.user.clone(),
            span_count: 0,
            sent: Vec::new(),
        };
        let start = message.at + self.lag_ms(&mut build, message.call).saturating_mul(1_000_000);
        let span_id = self.new_span_id();
        let end = self.handle(&mut build, service, behaviour, span_id, start);
        let (parent, links) = match message.call.delivery {
            Delivery::Parentage => (message.producer.to_vec(), Vec::new()),
            Delivery::Links => (
                Vec::new(),
                vec![Link {
                    trace_id: origin.trace_id.to_vec(),
                    span_id: message.producer.to_vec(),
                    flags: 0x100,
                    ..Default::default()
                }],
            ),
        };
        let span = Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent,
            name: format!("process {destination}"),
            kind: span::SpanKind::Consumer as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes: vec![
                attribute("messaging.system", system),
                attribute("messaging.destination.name", destination),
                attribute("messaging.operation.type", "process"),
                attribute("messaging.consumer.group.name", service),
            ],
            links,
            flags: 0x100,
            ..Default::default()
        };
        self.push(&mut build, service, span);
        build.touched.sort_unstable();
        build.touched.dedup();
        for index in &build.touched {
            self.labels.changes[*index].record(trace_id);
        }
        let (resource_spans, spans) = resource_spans(build);
        Some(GeneratedTrace {
            trace_id,
            request: ExportTraceServiceRequest { resource_spans },
            start_unix_nano: start,
            end_unix_nano: end,
            spans,
        })
    }

    /// Runs the consumer's operation for one message under its span `span_id` from `start`;
    /// returns when it ended.
    fn handle(
        &mut self,
        build: &mut Build<'s>,
        service: &str,
        behaviour: &'s Operation,
        span_id: [u8; 8],
        start: u64,
    ) -> u64 {
        let mut cursor = start + 40_000;
        for call in &behaviour.calls {
            let count = self.count_of(build, call);
            for _ in 0..count {
                if build.span_count >= MAX_SPANS_PER_TRACE {
                    break;
                }
                cursor = self.perform(build, service, call, span_id, cursor, 1);
            }
        }
        cursor + (behaviour.duration_ms * 1e6 * (0.5 + self.rng.unit())) as u64
    }

    /// How long a message of `call` waits, in milliseconds, under an active consumer lag.
    fn lag_ms(&mut self, build: &mut Build<'s>, call: &Call) -> u64 {
        let label = call.label();
        for (index, change, _) in &build.active {
            if let (ChangeKind::ConsumerLag, Some(lag)) = (change.kind, &change.duration_ms) {
                if change.call.as_deref() == Some(label.as_str()) {
                    build.touched.push(*index);
                    return lag.sample(&mut self.rng);
                }
            }
        }
        call.lag_ms.sample(&mut self.rng)
    }
}
