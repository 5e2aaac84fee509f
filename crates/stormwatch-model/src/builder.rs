//! Builds small traces in a few lines, for tests and examples across the workspace.

use crate::{NodeKind, Remote, Span, SpanId, SpanKind, Sym, TraceId};

/// Builds one trace span by span. Timestamps advance by a microsecond a span; the root ends
/// after everything else, as real roots do.
pub struct TraceBuilder {
    trace_id: TraceId,
    start_unix_nano: u64,
    spans: Vec<Span>,
}

impl std::fmt::Debug for TraceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceBuilder").finish_non_exhaustive()
    }
}

impl TraceBuilder {
    /// A trace whose id is derived from `seed` and which starts at `start_unix_nano`.
    pub fn new(seed: u64, start_unix_nano: u64) -> TraceBuilder {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&seed.wrapping_add(1).to_be_bytes());
        id[8..].copy_from_slice(&0x5eed_u64.to_be_bytes());
        TraceBuilder { trace_id: TraceId(id), start_unix_nano, spans: Vec::new() }
    }

    /// The id every span of the trace carries.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    fn add(&mut self, service: &str, operation: &str, kind: SpanKind, parent: Option<SpanId>) -> SpanId {
        let index = self.spans.len() as u64 + 1;
        let span_id = SpanId(index.to_be_bytes());
        let start = self.start_unix_nano + index * 1_000;
        self.spans.push(Span {
            trace_id: self.trace_id,
            span_id,
            parent_span_id: parent,
            service: Sym::new(service),
            operation: Sym::new(operation),
            kind,
            start_unix_nano: start,
            end_unix_nano: start + 500,
            is_error: false,
            retry: false,
            query_shape: None,
            remote: None,
            client_address: None,
            user: None,
            bytes: 0,
            request_bytes: 0,
            adjusted_count: 1.0,
            links: None,
        });
        span_id
    }

    /// An entry (server) span; `parent` is the caller's client span, `None` for the root.
    pub fn server(&mut self, service: &str, operation: &str, parent: Option<SpanId>) -> SpanId {
        self.add(service, operation, SpanKind::Server, parent)
    }

    /// A root server span with a query shape (sorted query keys, `&`-joined).
    pub fn root_with_query(&mut self, service: &str, operation: &str, query_shape: &str) -> SpanId {
        let id = self.server(service, operation, None);
        if let Some(span) = self.spans.last_mut() {
            span.query_shape = Some(Sym::new(query_shape));
        }
        id
    }

    /// An outgoing HTTP/RPC client span, to be answered by a `server` span of the callee.
    pub fn client(&mut self, service: &str, operation: &str, parent: SpanId) -> SpanId {
        self.add(service, operation, SpanKind::Client, Some(parent))
    }

    /// A database call: a client span with a virtual database callee.
    pub fn db(&mut self, service: &str, database: &str, statement: &str, parent: SpanId) -> SpanId {
        let id = self.add(service, statement, SpanKind::Client, Some(parent));
        if let Some(span) = self.spans.last_mut() {
            span.remote =
                Some(Remote { kind: NodeKind::Database, name: Sym::new(database), operation: Sym::new(statement) });
        }
        id
    }

    /// Marks the last added span as failed (status ERROR).
    pub fn fail_last(&mut self) {
        if let Some(span) = self.spans.last_mut() {
            span.is_error = true;
        }
    }

    /// Marks the last added span as a resend of an earlier attempt.
    pub fn retry_last(&mut self) {
        if let Some(span) = self.spans.last_mut() {
            span.retry = true;
        }
    }

    /// Sets the client address of the last added span (entry spans carry it).
    pub fn client_last(&mut self, address: &str) {
        if let Some(span) = self.spans.last_mut() {
            span.client_address = Some(Sym::new(address));
        }
    }

    /// Sets the authenticated user of the last added span (entry spans carry it).
    pub fn user_last(&mut self, user: &str) {
        if let Some(span) = self.spans.last_mut() {
            span.user = Some(Sym::new(user));
        }
    }

    /// Sets the payload bytes the last added span reports.
    pub fn bytes_last(&mut self, bytes: u32) {
        if let Some(span) = self.spans.last_mut() {
            span.bytes = bytes;
        }
    }

    /// Sets the request payload bytes the last added span reports.
    pub fn request_bytes_last(&mut self, bytes: u32) {
        if let Some(span) = self.spans.last_mut() {
            span.request_bytes = bytes;
        }
    }

    /// Sets how long the last added span took.
    pub fn duration_last(&mut self, nanos: u64) {
        if let Some(span) = self.spans.last_mut() {
            span.end_unix_nano = span.start_unix_nano + nanos;
        }
    }

    /// A cache lookup: a client span with a virtual cache callee.
    pub fn cache(&mut self, service: &str, cache: &str, parent: SpanId) -> SpanId {
        self.cache_command(service, cache, "GET", parent)
    }

    /// A cache call of `command` (`SET ? ?`): a client span with a virtual cache callee.
    pub fn cache_command(&mut self, service: &str, cache: &str, command: &str, parent: SpanId) -> SpanId {
        let id = self.add(service, command, SpanKind::Client, Some(parent));
        if let Some(span) = self.spans.last_mut() {
            span.remote = Some(Remote { kind: NodeKind::Cache, name: Sym::new(cache), operation: Sym::new(command) });
        }
        id
    }

    /// A message sent to a queue: a producer span with a virtual queue callee (`destination`
    /// names the queue, as `system:destination`).
    pub fn publish(&mut self, service: &str, destination: &str, parent: SpanId) -> SpanId {
        let id = self.add(service, "publish", SpanKind::Producer, Some(parent));
        if let Some(span) = self.spans.last_mut() {
            span.remote =
                Some(Remote { kind: NodeKind::Queue, name: Sym::new(destination), operation: Sym::new("publish") });
        }
        id
    }

    /// A consumer span handling messages: under the producer span `parent` (parentage), or a
    /// root linking to the producers' traces `links` (batch receive).
    pub fn consume(&mut self, service: &str, operation: &str, parent: Option<SpanId>, links: &[TraceId]) -> SpanId {
        let id = self.add(service, operation, SpanKind::Consumer, parent);
        if let (Some(span), false) = (self.spans.last_mut(), links.is_empty()) {
            let mut kept = crate::Links::default();
            for link in links {
                kept.add(*link);
            }
            span.links = Some(Box::new(kept));
        }
        id
    }

    /// An internal span (a function inside a service).
    pub fn internal(&mut self, service: &str, operation: &str, parent: SpanId) -> SpanId {
        self.add(service, operation, SpanKind::Internal, Some(parent))
    }

    /// The spans, the root's end moved after every other span's.
    pub fn build(mut self) -> Vec<Span> {
        let last_end = self.spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(self.start_unix_nano);
        for span in &mut self.spans {
            if span.parent_span_id.is_none() {
                span.end_unix_nano = last_end + 1_000;
            }
        }
        self.spans
    }
}
