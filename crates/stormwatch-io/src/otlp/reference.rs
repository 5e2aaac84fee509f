//! The decode-and-drop reference of `stormwatch bench`: OTLP receivers on the same runtime,
//! transport settings and size limit as the engine's, whose handlers decode each export
//! request into opentelemetry-proto's prost types and drop it. gRPC is the generated tonic
//! `TraceService`; HTTP is axum with `POST /v1/traces` (protobuf). The engine's throughput is
//! reported as a ratio to these, measured in the same run on the same traffic.

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::Router;
use prost::Message;
use stormwatch_otlp::collector::trace_service_server::{TraceService, TraceServiceServer};
use stormwatch_otlp::collector::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;

struct DecodeAndDrop;

#[tonic::async_trait]
impl TraceService for DecodeAndDrop {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        // Decoded by the codec; dropped here.
        drop(std::hint::black_box(request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the gRPC reference on `listener` until `shutdown` is cancelled.
pub async fn serve_reference_grpc(
    listener: TcpListener,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let service = TraceServiceServer::new(DecodeAndDrop)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message_bytes);
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.cancelled_owned())
        .await
}

async fn export(body: Bytes) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let content_type = [(header::CONTENT_TYPE, "application/x-protobuf")];
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            drop(std::hint::black_box(request));
            (StatusCode::OK, content_type, ExportTraceServiceResponse::default().encode_to_vec())
        }
        Err(_) => (StatusCode::BAD_REQUEST, content_type, Vec::new()),
    }
}

/// Serves the HTTP reference (`POST /v1/traces`, protobuf) on `listener` until `shutdown`.
pub async fn serve_reference_http(
    listener: TcpListener,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new().route("/v1/traces", post(export)).layer(DefaultBodyLimit::max(max_message_bytes));
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
