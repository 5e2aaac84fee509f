//! OTLP/gRPC receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
//!
//! The generated tonic server decodes protobuf inside the request task, on the async runtime.
//! This receiver instead takes the (decompressed, size-checked) message as raw bytes and
//! decodes it on a blocking worker thread, so a burst of large exports cannot stall the I/O
//! threads. Framing, compression and the size limit are still tonic's.

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
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::{Ingest, QUEUE_FULL_MESSAGE, UNAUTHENTICATED_MESSAGE};
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
            let body = request.into_inner();
            let decoded = tokio::task::spawn_blocking(move || stormwatch_otlp::decode_protobuf(&body))
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
                Err(_queue_full) => Err(retry_later()),
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
    B: Body + Send + 'static,
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

/// UNAVAILABLE, retry in a second: the engine's queue is full.
fn retry_later() -> Status {
    let retry = RetryInfo { retry_delay: Some(ProtoDuration { seconds: 1, nanos: 0 }) };
    let details = RpcStatus {
        code: tonic::Code::Unavailable as i32,
        message: QUEUE_FULL_MESSAGE.into(),
        details: vec![ProtoAny { type_url: RETRY_INFO_TYPE.into(), value: retry.encode_to_vec() }],
    };
    Status::with_details(tonic::Code::Unavailable, QUEUE_FULL_MESSAGE, Bytes::from(details.encode_to_vec()))
}

/// Serves OTLP/gRPC on `listener` until `shutdown` is cancelled. Requests may be gzip
/// compressed; larger than `max_message_bytes` they are refused with `OUT_OF_RANGE` naming
/// the limit.
///
/// With `tls` (offering `h2`), connections are TLS ([`crate::tls`]).
pub async fn serve_grpc(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    ingest: Ingest,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let metrics = ingest.metrics.clone();
    let server = TraceServer { max_message_bytes: ingest.max_message_bytes, export: Export { ingest } };
    // Export requests are often hundreds of kilobytes: HTTP/2's default 64 KiB windows would
    // cost several round trips per request.
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_service(server);
    match tls {
        None => router.serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.cancelled_owned()).await,
        Some(config) => {
            let incoming = crate::tls::TlsListener::new(listener, config, metrics)
                .expect("a bound listener has an address")
                .into_stream();
            router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await
        }
    }
}
