//! OTLP receivers: gRPC `TraceService/Export` and HTTP `POST /v1/traces`.
//!
//! Both decode off the async runtime, hand spans to the engine queue, and answer as the OTLP
//! specification says: `partial_success` for individually rejected spans, `INVALID_ARGUMENT`
//! / 400 for undecodable payloads, `UNAVAILABLE` / 503 (retryable) when the queue is full, and
//! a clear error for payloads over the configured size.

pub mod client;
mod grpc;
mod http;
pub mod reference;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use stormwatch_otlp::Decoded;

pub use grpc::serve_grpc;
pub use http::{http_router, serve_http};

use crate::{Metrics, QueueFull, SpanQueue};

/// Default largest accepted export request, after decompression.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// What both receivers share: the queue into the engine, the metrics, and the budget of bytes
/// being received.
#[derive(Clone)]
pub struct Ingest {
    /// The queue into the engine thread.
    pub queue: SpanQueue,
    /// Where receive counters go.
    pub metrics: Arc<Metrics>,
    /// The largest export request body taken (`server.max_message_bytes`).
    pub max_message_bytes: usize,
    /// When set, export requests must carry `Authorization: Bearer <token>`.
    pub token: Option<Arc<str>>,
    /// Bodies being received and decoded, by both receivers (`server.max_receiving_bytes`).
    pub intake: Arc<crate::server::body::Intake>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

/// What an exporter without the right token is told (never the token itself).
pub(crate) const UNAUTHENTICATED_MESSAGE: &str = "stormwatch needs the ingest token: send the header \
    `authorization: Bearer <token>` (the exporter's headers, or the collector's bearertokenauth extension; \
    the engine's server.ingest_token)";

/// The setting a too-large export request is refused by.
pub(crate) const MESSAGE_LIMIT_SETTING: &str = "server.max_message_bytes";

/// The engine's queue is full: the client should retry with backoff.
pub(crate) const QUEUE_FULL_MESSAGE: &str =
    "stormwatch is behind: its span queue is full; retry with backoff (no data of this request was kept)";

impl Ingest {
    /// Whether a request with this `authorization` header may export (always, without a
    /// token configured). Compared in constant time.
    pub(crate) fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.token else { return true };
        let presented = authorization.and_then(|v| v.strip_prefix(b"Bearer ")).unwrap_or(b"");
        let ok = crate::admin::same(presented, token.as_bytes());
        if !ok {
            Metrics::add(&self.metrics.requests_unauthenticated_total, 1);
        }
        ok
    }

    /// Hands decoded spans to the engine. On success returns what `partial_success` reports:
    /// (rejected spans, message).
    pub(crate) fn submit(&self, decoded: Decoded) -> Result<(i64, String), QueueFull> {
        let accepted = decoded.spans.len() as u64;
        let message = decoded.rejection_message();
        let rejected = decoded.rejected_spans;
        if let Err(full) = self.queue.try_send(decoded.spans) {
            Metrics::add(&self.metrics.requests_refused_total, 1);
            return Err(full);
        }
        Metrics::add(&self.metrics.spans_received_total, accepted);
        Metrics::add(&self.metrics.spans_rejected_total, rejected);
        Ok((rejected as i64, message))
    }
}
