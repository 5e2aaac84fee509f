//! OTLP/gRPC receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).

use stormwatch_otlp::collector::trace_service_server::{TraceService, TraceServiceServer};
use stormwatch_otlp::collector::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::{Ingest, QUEUE_FULL_MESSAGE};
use crate::Metrics;

struct Receiver {
    ingest: Ingest,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let message = request.into_inner();
        // Mapping to the model (interning, statement normalisation) is CPU work: keep it off
        // the async runtime.
        let decoded = tokio::task::spawn_blocking(move || stormwatch_otlp::from_request(&message))
            .await
            .map_err(|error| Status::internal(format!("decoding failed: {error}")))?;
        match self.ingest.submit(decoded) {
            Ok((rejected_spans, error_message)) => {
                let partial_success = (rejected_spans > 0 || !error_message.is_empty())
                    .then_some(ExportTracePartialSuccess { rejected_spans, error_message });
                Ok(Response::new(ExportTraceServiceResponse { partial_success }))
            }
            Err(_queue_full) => Err(Status::unavailable(QUEUE_FULL_MESSAGE)),
        }
    }
}

/// Serves OTLP/gRPC on `listener` until `shutdown` is cancelled. Requests may be gzip
/// compressed; larger than `max_message_bytes` they are refused with `RESOURCE_EXHAUSTED`.
pub async fn serve_grpc(
    listener: TcpListener,
    ingest: Ingest,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let max = ingest.max_message_bytes;
    let metrics = ingest.metrics.clone();
    let service = TraceServiceServer::new(Receiver { ingest })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let result = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.cancelled_owned())
        .await;
    tracing::debug!(refused = Metrics::get(&metrics.requests_refused_total), "OTLP/gRPC receiver stopped");
    result
}
