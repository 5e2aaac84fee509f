//! OTLP traces (protobuf and the OTLP/JSON mapping) to stormwatch [`Span`]s.
//!
//! This crate owns decoding, the mapping of old and current semantic conventions onto the
//! model, and statement normalisation. It is pure: bytes in, spans out. It must never do I/O
//! or block; callers run it on worker threads, off the async runtime.

#![warn(missing_docs)]

pub mod client;
mod conventions;
mod intern;
mod json;
mod normalize;
mod proto;
pub mod sampling;
mod wire;

use stormwatch_model::Span;

pub use client::{RangeError, TrustedProxies};
pub use conventions::query_shape;
pub use json::decode_json;
pub use normalize::normalize_statement;
pub use proto::from_request;
pub use wire::decode_protobuf;

/// The OTLP protobuf types, re-exported so receivers use the same version.
pub use opentelemetry_proto::tonic::collector::trace::v1 as collector;
pub use opentelemetry_proto::tonic::trace::v1 as trace;

/// Why a whole payload could not be decoded (answered with `INVALID_ARGUMENT` / HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not an `ExportTraceServiceRequest` (the decoder's reason).
    #[error("not a valid OTLP protobuf ExportTraceServiceRequest: {0}")]
    Wire(String),
    /// The text is not OTLP/JSON.
    #[error("not a valid OTLP/JSON ExportTraceServiceRequest: {0}")]
    Json(#[from] serde_json::Error),
}

/// Decoding's result.
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;

/// Spans decoded from one export request, and the spans that could not be used.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The spans that could be used.
    pub spans: Vec<Span>,
    /// Spans rejected individually (reported through OTLP `partial_success`).
    pub rejected_spans: u64,
    /// The first rejection reason, for the `partial_success` error message.
    pub first_rejection: Option<String>,
}

impl Decoded {
    fn reject(&mut self, reason: impl FnOnce() -> String) {
        self.rejected_spans += 1;
        if self.first_rejection.is_none() {
            self.first_rejection = Some(reason());
        }
    }

    /// The `partial_success.error_message`: empty when nothing was rejected.
    pub fn rejection_message(&self) -> String {
        match &self.first_rejection {
            None => String::new(),
            Some(first) if self.rejected_spans == 1 => format!("1 span rejected: {first}"),
            Some(first) => format!("{} spans rejected; first: {first}", self.rejected_spans),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives on the wire, decoding answers with spans or an error, never a panic.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = crate::decode_protobuf(&bytes);
            let _ = crate::decode_json(&bytes);
        }

        /// Near-valid JSON: a real request with one byte changed.
        #[test]
        fn mutated_json_never_panics(position in 0usize..400, byte in any::<u8>()) {
            let mut json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"a"}}]},"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","parentSpanId":"","name":"x","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":[{"key":"db.system","value":{"stringValue":"redis"}}],"status":{"code":2}}]}]}]}"#.to_vec();
            let position = position % json.len();
            json[position] = byte;
            let _ = crate::decode_json(&json);
        }
    }
}
