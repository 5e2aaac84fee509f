//! The engine's span: only what assembly and detection need, with strings interned.
//! Decoders (stormwatch-otlp) fill it from OTLP, mapping old and new semantic conventions.

use crate::{SpanId, Sym, TraceId};

/// OTLP span kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SpanKind {
    /// Not set by the instrumentation.
    #[default]
    Unspecified,
    /// Work inside one process.
    Internal,
    /// The handling of a request from another process.
    Server,
    /// A request to another process.
    Client,
    /// A message sent to a queue.
    Producer,
    /// A message received from a queue.
    Consumer,
}

impl SpanKind {
    /// From the OTLP enum number; unknown numbers are treated as unspecified.
    pub fn from_otlp(number: i32) -> SpanKind {
        match number {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }

    /// Spans that receive work from another process (the callee side of an edge).
    pub fn is_entry(self) -> bool {
        matches!(self, SpanKind::Server | SpanKind::Consumer)
    }

    /// Spans that send work to another process (the caller side of an edge).
    pub fn is_outgoing(self) -> bool {
        matches!(self, SpanKind::Client | SpanKind::Producer)
    }
}

/// The service of a span whose resource named none (`service.name` missing or empty). The
/// OpenTelemetry SDKs never send that (they default to `unknown_service:<process>`); a
/// collector that lost a resource does.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// One decoded span. Attributes that the detectors do not use are not kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// The trace it belongs to.
    pub trace_id: TraceId,
    /// Its own id.
    pub span_id: SpanId,
    /// The span that caused it; `None` for a root.
    pub parent_span_id: Option<SpanId>,
    /// `service.name` of the resource.
    pub service: Sym,
    /// The operation: the span name, or `METHOD route` when the name lacks the route.
    pub operation: Sym,
    /// OTLP span kind.
    pub kind: SpanKind,
    /// Start, Unix nanoseconds (event time).
    pub start_unix_nano: u64,
    /// End, Unix nanoseconds.
    pub end_unix_nano: u64,
    /// Status code ERROR.
    pub is_error: bool,
    /// A resend of an earlier attempt (`http.request.resend_count` > 0).
    pub retry: bool,
    /// Sorted, `&`-joined query-parameter keys of the request (`expand&page`), never values.
    pub query_shape: Option<Sym>,
    /// Where a client span goes when no server span answers it: a database, cache, queue or
    /// uninstrumented peer.
    pub remote: Option<Remote>,
    /// Client of an entry span (`client.address`, `net.peer.ip`, ...): decoders keep its
    /// population ([`crate::client_population`]).
    pub client_address: Option<Sym>,
    /// Authenticated user of an entry span (`enduser.id`, `user.id`).
    pub user: Option<Sym>,
    /// Payload the span reports, in its callee's [`crate::PayloadUnit`]. Bytes: the response
    /// body of a call (`http.response.body.size`), the message body of a send
    /// (`messaging.message.body.size`), or else the RPC messages its events say it received (a
    /// client) or sent (a server) (`rpc.message.uncompressed_size`). For a database call, the
    /// rows it returned (`db.response.returned_rows`). Saturated at 4 GiB (rows), 0 when not
    /// reported.
    pub bytes: u32,
    /// Request payload bytes the span reports (`http.request.body.size`, or else its RPC
    /// message events); saturated at 4 GiB, 0 when not reported: with `bytes`, how much a
    /// request amplified.
    pub request_bytes: u32,
    /// How many spans this one stands for under probability sampling: the reciprocal of the
    /// sampling probability its `tracestate` carries (`ot=th:...`), 1 when it carries none.
    pub adjusted_count: f32,
    /// Traces the span links to (a consumer's span links to the producers of the messages it
    /// handles): kept for entry spans only, at most [`Links::MAX`] distinct traces.
    pub links: Option<Box<Links>>,
}

/// The other traces an entry span links to, with how many of its links named each: the
/// producers of the messages a consumer handled. Bounded: the first [`Links::MAX`] distinct
/// traces are kept, the links to any other are counted in `dropped`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Links {
    traces: [(TraceId, u32); Links::MAX],
    len: u8,
    /// Links not kept: to traces past the first [`Links::MAX`], or with an unreadable id.
    pub dropped: u32,
}

impl Default for Links {
    fn default() -> Links {
        Links { traces: [(TraceId([0; 16]), 0); Links::MAX], len: 0, dropped: 0 }
    }
}

impl Links {
    /// Most distinct linked traces kept per span.
    pub const MAX: usize = 8;

    /// Counts one link to `trace`.
    pub fn add(&mut self, trace: TraceId) {
        let len = usize::from(self.len);
        if let Some(known) = self.traces[..len].iter_mut().find(|(id, _)| *id == trace) {
            known.1 = known.1.saturating_add(1);
        } else if len < Links::MAX {
            self.traces[len] = (trace, 1);
            self.len += 1;
        } else {
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// The linked traces, each with how many links named it, in the order first seen.
    pub fn traces(&self) -> &[(TraceId, u32)] {
        &self.traces[..usize::from(self.len)]
    }

    /// Whether no link was kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The virtual callee described by a client span's attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Remote {
    /// What the callee is.
    pub kind: crate::NodeKind,
    /// `db.system`+`db.namespace`, `messaging.system`+destination, `peer.service` or
    /// `server.address`.
    pub name: Sym,
    /// Normalised statement, `db.operation.name`, or the span name.
    pub operation: Sym,
}

impl Span {
    /// The traces the span links to; empty when it has none.
    pub fn linked_traces(&self) -> &[(TraceId, u32)] {
        self.links.as_deref().map_or(&[], Links::traces)
    }

    /// Duration in nanoseconds; zero when the end precedes the start.
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(n: u8) -> TraceId {
        TraceId([n; 16])
    }

    #[test]
    fn links_are_counted_per_trace_and_bounded() {
        let mut links = Links::default();
        for n in 1..=20u8 {
            links.add(trace(n));
            links.add(trace(1));
        }
        assert_eq!(links.traces().len(), Links::MAX);
        assert_eq!(links.traces()[0], (trace(1), 21));
        assert_eq!(links.traces()[1], (trace(2), 1));
        assert_eq!(links.dropped, 12);
        // The heap part of a linked span is one small allocation, the span itself one pointer.
        assert!(size_of::<Links>() <= 200);
        assert_eq!(size_of::<Option<Box<Links>>>(), 8);
    }
}
