//! The receivers over real loopback sockets: a raw HTTP/1.1 client for OTLP/HTTP and the
//! generated tonic client for OTLP/gRPC.

use std::io::Write;
use std::sync::Arc;

use prost::Message;
use stormwatch_otlp::collector::trace_service_client::TraceServiceClient;
use stormwatch_otlp::collector::ExportTraceServiceRequest;
use stormwatch_otlp::trace::{ResourceSpans, ScopeSpans, Span};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{span_queue, SpanReceiver};

fn request(trace_ids: &[Vec<u8>]) -> ExportTraceServiceRequest {
    let spans = trace_ids
        .iter()
        .enumerate()
        .map(|(i, trace_id)| Span {
            trace_id: trace_id.clone(),
            span_id: vec![i as u8 + 1; 8],
            name: format!("span{i}"),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

async fn start(
    capacity: usize,
    max_message_bytes: usize,
) -> (std::net::SocketAddr, std::net::SocketAddr, SpanReceiver, Arc<Metrics>, CancellationToken) {
    let (queue, receiver) = span_queue(capacity, 1_000_000);
    let metrics = Arc::new(Metrics::default());
    let intake = crate::server::body::Intake::new(64 << 20, std::time::Duration::from_secs(30), 1024, metrics.clone());
    let ingest = Ingest { queue, metrics: metrics.clone(), max_message_bytes, token: None, intake };
    let shutdown = CancellationToken::new();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let limits = crate::server::ConnectionLimits::default();
    let hosts = crate::server::host::AllowedHosts::default();
    tokio::spawn({
        let (ingest, limits, shutdown) = (ingest.clone(), limits.clone(), shutdown.clone());
        async move { serve_http(http, None, ingest, hosts, &limits, shutdown).await }
    });
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move { serve_grpc(grpc, None, ingest, &limits, shutdown).await }
    });
    (http_addr, grpc_addr, receiver, metrics, shutdown)
}

/// One HTTP/1.1 request; returns (status, headers, body).
async fn post(addr: std::net::SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading a large body; ignore a reset while writing.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("no HTTP head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, response[split + 4..].to_vec())
}

const JSON: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web"}}]},"scopeSpans":[{"spans":[
  {"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"GET /","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2"},
  {"traceId":"0102","spanId":"0102030405060709","name":"bad","startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;

#[tokio::test]
async fn http_json_with_partial_success() {
    let (http, _, receiver, metrics, shutdown) = start(8, 1 << 20).await;
    let (status, _, body) = post(http, &[("Content-Type", "application/json")], JSON.as_bytes()).await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["partialSuccess"]["rejectedSpans"], "1");
    assert!(body["partialSuccess"]["errorMessage"].as_str().unwrap().contains("traceId"));
    let Some(crate::Batch::Spans { spans, .. }) = receiver.try_recv() else { panic!("no spans batch") };
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].service.as_str(), "web");
    assert_eq!(Metrics::get(&metrics.spans_received_total), 1);
    assert_eq!(Metrics::get(&metrics.spans_rejected_total), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn http_protobuf_gzip() {
    let (http, _, receiver, _, shutdown) = start(8, 1 << 20).await;
    let body = request(&[vec![7; 16], vec![8; 16]]).encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&body).unwrap();
    let gz = gz.finish().unwrap();
    let headers = [("Content-Type", "application/x-protobuf"), ("Content-Encoding", "gzip")];
    let (status, head, body) = post(http, &headers, &gz).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/x-protobuf"));
    let response = stormwatch_otlp::collector::ExportTraceServiceResponse::decode(body.as_slice()).unwrap();
    assert!(response.partial_success.is_none());
    assert_eq!(receiver.try_recv().unwrap().span_count(), 2);
    shutdown.cancel();
}

#[tokio::test]
async fn http_bad_input_gets_clear_errors() {
    let (http, _, receiver, metrics, shutdown) = start(8, 4096).await;
    let (status, _, body) = post(http, &[("Content-Type", "application/json")], b"{\"resourceSpans\": [").await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not a valid OTLP/JSON"));
    let (status, _, body) = post(http, &[("Content-Type", "text/plain")], b"hello").await;
    assert_eq!(status, 415);
    assert!(String::from_utf8_lossy(&body).contains("application/x-protobuf or application/json"));
    let big = vec![b' '; 10_000];
    let (status, _, body) = post(http, &[("Content-Type", "application/json")], &big).await;
    assert_eq!(status, 413);
    assert!(String::from_utf8_lossy(&body).contains("4096-byte limit"), "{}", String::from_utf8_lossy(&body));
    // A small gzip body that inflates past the limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 100_000]).unwrap();
    let gz = gz.finish().unwrap();
    let (status, _, _) = post(http, &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")], &gz).await;
    assert_eq!(status, 413);
    // A protobuf client is told in protobuf (google.rpc.Status), as OTLP/HTTP asks.
    let (status, head, body) = post(http, &[("Content-Type", "application/x-protobuf")], &big).await;
    assert_eq!(status, 413);
    assert!(head.to_ascii_lowercase().contains("content-type: application/x-protobuf"), "{head}");
    let status_message = grpc::RpcStatus::decode(body.as_slice()).unwrap();
    assert!(status_message.message.contains("4096-byte limit"), "{status_message:?}");
    // A foreign Host (DNS rebinding) is refused on every route, before anything else.
    for path in ["/v1/traces", "/v1/metrics", "/"] {
        let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        assert!(response.starts_with("HTTP/1.1 403"), "{path}: {response}");
        assert!(response.contains("server.allowed_hosts"), "{response}");
    }
    assert!(receiver.try_recv().is_none());
    assert_eq!(Metrics::get(&metrics.requests_invalid_total), 5);
    assert_eq!(Metrics::get(&metrics.requests_misdirected_total), 3);
    shutdown.cancel();
}

#[tokio::test]
async fn full_queue_is_retryable_on_both_transports() {
    let (http, grpc, receiver, metrics, shutdown) = start(1, 1 << 20).await;
    let body = request(&[vec![7; 16]]).encode_to_vec();
    let (status, _, _) = post(http, &[("Content-Type", "application/x-protobuf")], &body).await;
    assert_eq!(status, 200);
    let (status, head, _) = post(http, &[("Content-Type", "application/x-protobuf")], &body).await;
    assert_eq!(status, 503);
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"));
    let mut client = TraceServiceClient::connect(format!("http://{grpc}")).await.unwrap();
    let error = client.export(request(&[vec![9; 16]])).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(error.message().contains("retry"));
    // With the retry hint the OTLP specification asks for: RetryInfo, 1 s.
    let details = grpc::RpcStatus::decode(error.details()).unwrap();
    assert_eq!(details.details[0].type_url, grpc::RETRY_INFO_TYPE);
    let retry = grpc::RetryInfo::decode(details.details[0].value.as_slice()).unwrap();
    assert_eq!(retry.retry_delay.unwrap().seconds, 1);
    assert_eq!(Metrics::get(&metrics.requests_refused_total), 2);
    // Once the engine catches up, the retry is accepted.
    assert!(receiver.try_recv().is_some());
    let response = client.export(request(&[vec![9; 16]])).await.unwrap().into_inner();
    assert!(response.partial_success.is_none());
    shutdown.cancel();
}

#[tokio::test]
async fn grpc_partial_success_and_size_limit() {
    let (_, grpc, receiver, _, shutdown) = start(8, 2048).await;
    let mut client = TraceServiceClient::connect(format!("http://{grpc}")).await.unwrap();
    let response = client.export(request(&[vec![1; 16], vec![1; 4]])).await.unwrap().into_inner();
    let partial = response.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("trace_id: expected 16 bytes, found 4"));
    assert_eq!(receiver.try_recv().unwrap().span_count(), 1);
    let huge: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8 + 1; 16]).collect();
    let error = client.export(request(&huge)).await.unwrap_err();
    assert!(matches!(error.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted), "{error:?}");
    assert!(error.message().contains("too large") || error.message().contains("limit"), "{error:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn grpc_garbage_is_invalid_argument() {
    let (_, grpc, receiver, _, shutdown) = start(8, 1 << 20).await;
    // The load-test client sends bodies as they are: here, as a broken exporter would.
    let mut client = client::OtlpClient::connect(&format!("grpc://{grpc}")).await.unwrap();
    let garbage = bytes::Bytes::from_static(b"\xff\xff\xff\xff\x0f not protobuf");
    match client.export(garbage).await {
        Err(client::ClientError::Rejected { status, message, .. }) => {
            assert_eq!(status, "InvalidArgument");
            assert!(message.contains("not a valid OTLP protobuf"), "{message}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    assert!(receiver.try_recv().is_none());
    // A valid body through the same client is accepted.
    let body = bytes::Bytes::from(request(&[vec![3; 16]]).encode_to_vec());
    assert_eq!(client.export(body).await.unwrap(), client::Export::Accepted);
    assert_eq!(receiver.try_recv().unwrap().span_count(), 1);
    shutdown.cancel();
}
