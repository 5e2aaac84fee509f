//! OTLP/gRPC receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
//!
//! The generated tonic server decodes protobuf inside the request task, on the async runtime.
//! This receiver instead reads the request body whole within the bounds of
//! [`crate::server::body`] (the receive budget, the body timeouts), lets tonic deframe, inflate
//! and size-check it, and decodes the message on a blocking worker thread, so a burst of large
//! exports cannot stall the I/O threads.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use prost::Message;
use stormwatch_otlp::collector::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::{Ingest, MESSAGE_LIMIT_SETTING, QUEUE_FULL_MESSAGE, UNAUTHENTICATED_MESSAGE};
use crate::server::body::{BodyError, Lease};
use crate::server::{ConnectionLimits, Listener};
use crate::Metrics;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Requests as raw bytes, responses as prost messages.
#[derive(Clone, Copy, Default)]
struct RawRequestCodec;

struct RawDecoder;
struct ResponseEncoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;
    fn encode(&mut self, item: ExportTraceServiceResponse, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst).map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

impl Codec for RawRequestCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[derive(Clone)]
struct Export {
    ingest: Ingest,
}

impl UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<ExportTraceServiceResponse>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let ingest = self.ingest.clone();
        Box::pin(async move {
            // The body's share of the receive budget, held until it is decoded; a compressed
            // message's inflated bytes are charged to it too.
            let lease = request.extensions().get::<Arc<Lease>>().cloned();
            let compressed = request.metadata().get("grpc-encoding").is_some_and(|e| e != "identity");
            let body = request.into_inner();
            if let (Some(lease), true) = (&lease, compressed) {
                lease.charge(body.len() as u64).map_err(|error| {
                    Metrics::add(&ingest.metrics.requests_busy_total, 1);
                    retry_later(&error.to_string())
                })?;
            }
            let decoded = tokio::task::spawn_blocking(move || {
                let decoded = stormwatch_otlp::decode_protobuf(&body);
                drop(lease);
                decoded
            })
            .await
            .map_err(|error| Status::internal(format!("decoding failed: {error}")))?
            .map_err(|error| {
                Metrics::add(&ingest.metrics.requests_invalid_total, 1);
                Status::invalid_argument(error.to_string())
            })?;
            match ingest.submit(decoded) {
                Ok((rejected_spans, error_message)) => {
                    let partial_success = (rejected_spans > 0 || !error_message.is_empty())
                        .then_some(ExportTracePartialSuccess { rejected_spans, error_message });
                    Ok(Response::new(ExportTraceServiceResponse { partial_success }))
                }
                Err(_queue_full) => Err(retry_later(QUEUE_FULL_MESSAGE)),
            }
        })
    }
}

/// The `TraceService` as a tower service.
#[derive(Clone)]
struct TraceServer {
    export: Export,
    max_message_bytes: usize,
}

impl NamedService for TraceServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> Service<http::Request<B>> for TraceServer
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != EXPORT_PATH {
            return Box::pin(
                async move { Ok(Status::unimplemented("only TraceService/Export is served").into_http()) },
            );
        }
        let authorization = request.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        if !self.export.ingest.authorized(authorization) {
            return Box::pin(async move { Ok(Status::unauthenticated(UNAUTHENTICATED_MESSAGE).into_http()) });
        }
        let export = self.export.clone();
        let max = self.max_message_bytes;
        Box::pin(async move {
            // Read whole first, within the receive budget and the body's time limits; tonic
            // then deframes, inflates and checks the size of what is already here.
            let (parts, body) = request.into_parts();
            let wire_limit = max.saturating_add(GRPC_FRAME_HEADER);
            let (bytes, lease) = match export.ingest.intake.read(body, wire_limit, MESSAGE_LIMIT_SETTING).await {
                Ok(read) => read,
                Err(error) => return Ok(body_refused(&export.ingest, error).into_http()),
            };
            let mut request = http::Request::from_parts(parts, http_body_util::Full::new(bytes));
            request.extensions_mut().insert(Arc::new(lease));
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(RawRequestCodec)
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(export, request).await)
        })
    }
}

/// `google.rpc.Status` with one `google.rpc.RetryInfo`: the retry hint the OTLP
/// specification asks throttling servers for (the HTTP receiver sends `Retry-After`).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub(crate) code: i32,
    #[prost(string, tag = "2")]
    pub(crate) message: String,
    #[prost(message, repeated, tag = "3")]
    pub(crate) details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct ProtoAny {
    #[prost(string, tag = "1")]
    pub(crate) type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub(crate) retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub(crate) seconds: i64,
    #[prost(int32, tag = "2")]
    pub(crate) nanos: i32,
}

pub(crate) const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// UNAVAILABLE, retry in a second: the engine's queue is full, or its receive budget spent.
fn retry_later(message: &str) -> Status {
    let retry = RetryInfo { retry_delay: Some(ProtoDuration { seconds: 1, nanos: 0 }) };
    let details = RpcStatus {
        code: tonic::Code::Unavailable as i32,
        message: message.into(),
        details: vec![ProtoAny { type_url: RETRY_INFO_TYPE.into(), value: retry.encode_to_vec() }],
    };
    Status::with_details(tonic::Code::Unavailable, message, Bytes::from(details.encode_to_vec()))
}

/// The 5 bytes before a gRPC message: compressed flag and length.
const GRPC_FRAME_HEADER: usize = 5;

/// The status of a request whose body was not read: `OUT_OF_RANGE` when too large (as tonic
/// says it), `UNAVAILABLE` with a retry hint when the receive budget is spent,
/// `DEADLINE_EXCEEDED` when too slow, `INVALID_ARGUMENT` otherwise.
fn body_refused(ingest: &Ingest, error: BodyError) -> Status {
    match &error {
        BodyError::Busy { .. } => retry_later(&error.to_string()),
        BodyError::TooLarge { .. } => {
            Metrics::add(&ingest.metrics.requests_invalid_total, 1);
            Status::out_of_range(error.to_string())
        }
        BodyError::TooSlow { .. } => {
            Metrics::add(&ingest.metrics.requests_invalid_total, 1);
            Status::deadline_exceeded(error.to_string())
        }
        BodyError::Broken(_) => {
            Metrics::add(&ingest.metrics.requests_invalid_total, 1);
            Status::invalid_argument(error.to_string())
        }
    }
}

/// Serves OTLP/gRPC on `listener` until `shutdown` is cancelled. Requests may be gzip
/// compressed; larger than `max_message_bytes` they are refused with `OUT_OF_RANGE` naming
/// the limit. With `tls` (offering `h2`), connections are TLS.
pub async fn serve_grpc(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    ingest: Ingest,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let metrics = ingest.metrics.clone();
    let server = TraceServer { max_message_bytes: ingest.max_message_bytes, export: Export { ingest } };
    crate::server::serve(listener, tls, Listener::OtlpGrpc, server, limits, metrics, shutdown).await;
    Ok(())
}
