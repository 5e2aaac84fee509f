//! OTLP/HTTP receiver: `POST /v1/traces` with `application/x-protobuf` or `application/json`
//! bodies, optionally `Content-Encoding: gzip`. Answers in the request's content type.

use std::io::Read;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;
use stormwatch_otlp::collector::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Ingest, QUEUE_FULL_MESSAGE, UNAUTHENTICATED_MESSAGE};
use crate::Metrics;

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

fn reply(encoding: Encoding, status: StatusCode, body: Vec<u8>) -> Response {
    let content_type = match encoding {
        Encoding::Protobuf => "application/x-protobuf",
        Encoding::Json => "application/json",
    };
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
}

fn error(encoding: Encoding, status: StatusCode, grpc_code: i32, message: String) -> Response {
    let body = match encoding {
        Encoding::Protobuf => RpcStatus { code: grpc_code, message }.encode_to_vec(),
        Encoding::Json => serde_json::json!({ "code": grpc_code, "message": message }).to_string().into_bytes(),
    };
    reply(encoding, status, body)
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes (a gzip bomb).
fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    decoder.read_to_end(&mut out).map_err(|e| format!("body is not valid gzip: {e}"))?;
    if out.len() > limit {
        return Err(format!("decompressed body exceeds the {limit}-byte limit (server.max_message_bytes)"));
    }
    Ok(out)
}

async fn export(State(ingest): State<Ingest>, headers: HeaderMap, body: Bytes) -> Response {
    if !ingest.authorized(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        let mut response = error(Encoding::Json, StatusCode::UNAUTHORIZED, 16, UNAUTHENTICATED_MESSAGE.into());
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let encoding = match media_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        _ => {
            Metrics::add(&ingest.metrics.requests_invalid_total, 1);
            return error(
                Encoding::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                3,
                format!("unsupported Content-Type {content_type:?}: send application/x-protobuf or application/json"),
            );
        }
    };
    let gzip = match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            Metrics::add(&ingest.metrics.requests_invalid_total, 1);
            return error(
                encoding,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                3,
                format!("unsupported Content-Encoding {other:?}: send gzip or no encoding"),
            );
        }
    };
    let limit = ingest.max_message_bytes;
    let decoded = tokio::task::spawn_blocking(move || {
        let body = if gzip { gunzip(&body, limit)?.into() } else { body };
        match encoding {
            Encoding::Protobuf => stormwatch_otlp::decode_protobuf(&body),
            Encoding::Json => stormwatch_otlp::decode_json(&body),
        }
        .map_err(|e| e.to_string())
    })
    .await;
    let decoded = match decoded {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(message)) => {
            Metrics::add(&ingest.metrics.requests_invalid_total, 1);
            let status =
                if message.contains("limit") { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
            return error(encoding, status, 3, message);
        }
        Err(join) => return error(encoding, StatusCode::INTERNAL_SERVER_ERROR, 13, format!("decoding failed: {join}")),
    };
    match ingest.submit(decoded) {
        Ok((rejected_spans, error_message)) => {
            let partial_success = (rejected_spans > 0 || !error_message.is_empty())
                .then_some(ExportTracePartialSuccess { rejected_spans, error_message });
            let body = match encoding {
                Encoding::Protobuf => ExportTraceServiceResponse { partial_success }.encode_to_vec(),
                Encoding::Json => match partial_success {
                    Some(p) => serde_json::json!({"partialSuccess": {
                        "rejectedSpans": p.rejected_spans.to_string(), "errorMessage": p.error_message}})
                    .to_string()
                    .into_bytes(),
                    None => b"{}".to_vec(),
                },
            };
            reply(encoding, StatusCode::OK, body)
        }
        Err(_queue_full) => {
            let mut response = error(encoding, StatusCode::SERVICE_UNAVAILABLE, 14, QUEUE_FULL_MESSAGE.into());
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

async fn too_large_or_other(status: StatusCode, limit: usize) -> Response {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return error(
            Encoding::Json,
            status,
            8,
            format!("request body exceeds the {limit}-byte limit (server.max_message_bytes)"),
        );
    }
    error(Encoding::Json, status, 3, format!("request failed: {status}"))
}

/// The OTLP/HTTP routes, for embedding or testing.
pub fn http_router(ingest: Ingest) -> Router {
    let limit = ingest.max_message_bytes;
    Router::new().route("/v1/traces", post(export)).with_state(ingest).layer(DefaultBodyLimit::max(limit)).layer(
        axum::middleware::map_response(move |response: Response| async move {
            // axum answers an oversized body with a bare 413; give it an OTLP error body.
            if response.status() == StatusCode::PAYLOAD_TOO_LARGE
                && response.headers().get(header::CONTENT_TYPE).is_none_or(|v| v.as_bytes().starts_with(b"text/plain"))
            {
                return too_large_or_other(response.status(), limit).await;
            }
            response
        }),
    )
}

/// Serves OTLP/HTTP on `listener` until `shutdown` is cancelled; with `tls` (offering
/// `http/1.1`), over TLS.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    ingest: Ingest,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = http_router(ingest.clone());
    match tls {
        None => axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await,
        Some(config) => {
            let listener = crate::tls::TlsListener::new(listener, config, ingest.metrics)?;
            axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
        }
    }
}
