//! OTLP/HTTP receiver: `POST /v1/traces` with `application/x-protobuf` or `application/json`
//! bodies, optionally `Content-Encoding: gzip`. Answers in the request's content type, errors
//! included. The host, the token and the headers are checked before any of the body is read;
//! the body is read within the bounds of [`crate::server::body`].

use std::io::Read;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;
use stormwatch_otlp::collector::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{Ingest, MESSAGE_LIMIT_SETTING, QUEUE_FULL_MESSAGE, UNAUTHENTICATED_MESSAGE};
use crate::server::body::{BodyError, Lease};
use crate::server::host::AllowedHosts;
use crate::server::{ConnectionLimits, Listener};
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

fn error_response(encoding: Encoding, status: StatusCode, code: Code, message: String) -> Response {
    let grpc_code = code as i32;
    let body = match encoding {
        Encoding::Protobuf => RpcStatus { code: grpc_code, message }.encode_to_vec(),
        Encoding::Json => serde_json::json!({ "code": grpc_code, "message": message }).to_string().into_bytes(),
    };
    reply(encoding, status, body)
}

/// Why a request was refused after its headers were accepted.
enum Refusal {
    Body(BodyError),
    /// Not a valid export request: 400 / `INVALID_ARGUMENT`.
    Invalid(String),
}

impl From<BodyError> for Refusal {
    fn from(error: BodyError) -> Self {
        Refusal::Body(error)
    }
}

/// The answer to a refused body, in the request's encoding: 413 for too large, 503 with a retry
/// hint when the receive budget is spent, 408 (and the connection closed) when it came too
/// slowly, 400 otherwise.
fn body_refused(encoding: Encoding, refusal: Refusal) -> Response {
    let (status, code, message) = match refusal {
        Refusal::Invalid(message) => (StatusCode::BAD_REQUEST, Code::InvalidArgument, message),
        Refusal::Body(error) => match &error {
            BodyError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted, error.to_string()),
            BodyError::Busy { .. } => {
                let mut response =
                    error_response(encoding, StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, error.to_string());
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
            BodyError::TooSlow { .. } => {
                let mut response =
                    error_response(encoding, StatusCode::REQUEST_TIMEOUT, Code::DeadlineExceeded, error.to_string());
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return response;
            }
            BodyError::Broken(_) => (StatusCode::BAD_REQUEST, Code::InvalidArgument, error.to_string()),
        },
    };
    error_response(encoding, status, code, message)
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes (a gzip bomb), and
/// charging what it inflates to the request's lease (the receive budget).
fn gunzip(body: &[u8], limit: usize, lease: &Lease) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut decoder = flate2::read::GzDecoder::new(body);
    loop {
        let read = decoder.read(&mut chunk).map_err(|e| Refusal::Invalid(format!("body is not valid gzip: {e}")))?;
        if read == 0 {
            return Ok(out);
        }
        if out.len() + read > limit {
            return Err(BodyError::TooLarge { limit, setting: MESSAGE_LIMIT_SETTING }.into());
        }
        lease.charge(read as u64)?;
        out.extend_from_slice(&chunk[..read]);
    }
}

/// The encoding a request asks to be answered in: its `Content-Type`'s.
fn encoding_of(headers: &HeaderMap) -> Result<Encoding, String> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(format!(
            "unsupported Content-Type {:?}: send application/x-protobuf or application/json",
            stormwatch_model::clean_name(content_type, 100).0
        )),
    }
}

/// `POST /v1/traces`. The token and the headers are checked before a byte of the body is read.
async fn export(State(ingest): State<Ingest>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let (encoding, gzip) = match checked_headers(&ingest, &parts.headers) {
        Ok(checked) => checked,
        Err(refused) => return *refused,
    };
    let limit = ingest.max_message_bytes;
    let (body, lease) = match ingest.intake.read(body, limit, MESSAGE_LIMIT_SETTING).await {
        Ok(read) => read,
        Err(error) => {
            if !matches!(error, BodyError::Busy { .. }) {
                Metrics::add(&ingest.metrics.requests_invalid_total, 1);
            }
            return body_refused(encoding, error.into());
        }
    };
    let decoded = tokio::task::spawn_blocking(move || {
        let body = if gzip { gunzip(&body, limit, &lease)?.into() } else { body };
        let decoded = match encoding {
            Encoding::Protobuf => stormwatch_otlp::decode_protobuf(&body),
            Encoding::Json => stormwatch_otlp::decode_json(&body),
        };
        // The budget is held until the body is decoded.
        drop(lease);
        decoded.map_err(|e| Refusal::Invalid(e.to_string()))
    })
    .await;
    match decoded {
        Ok(Ok(decoded)) => submitted(&ingest, decoded, encoding),
        Ok(Err(refusal)) => {
            let counter = match refusal {
                Refusal::Body(BodyError::Busy { .. }) => &ingest.metrics.requests_busy_total,
                _ => &ingest.metrics.requests_invalid_total,
            };
            Metrics::add(counter, 1);
            body_refused(encoding, refusal)
        }
        Err(join) => error_response(
            encoding,
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            format!("decoding failed: {join}"),
        ),
    }
}

/// The token, the body's encoding and its compression (whether it is gzipped), or the answer
/// refusing them: answered in the request's encoding wherever it can be told.
fn checked_headers(ingest: &Ingest, headers: &HeaderMap) -> Result<(Encoding, bool), Box<Response>> {
    let encoding = encoding_of(headers);
    let answer_in = *encoding.as_ref().unwrap_or(&Encoding::Json);
    if !ingest.authorized(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        let message = UNAUTHENTICATED_MESSAGE.into();
        let mut response = error_response(answer_in, StatusCode::UNAUTHORIZED, Code::Unauthenticated, message);
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(Box::new(response));
    }
    let encoding = encoding.map_err(|message| {
        Metrics::add(&ingest.metrics.requests_invalid_total, 1);
        Box::new(error_response(Encoding::Json, StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::InvalidArgument, message))
    })?;
    match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None | Some("identity") => Ok((encoding, false)),
        Some("gzip") => Ok((encoding, true)),
        Some(other) => {
            Metrics::add(&ingest.metrics.requests_invalid_total, 1);
            let other = stormwatch_model::clean_name(other, 100).0;
            let message = format!("unsupported Content-Encoding {other:?}: send gzip or no encoding");
            Err(Box::new(error_response(encoding, StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::InvalidArgument, message)))
        }
    }
}

/// The decoded spans to the queue: 200 (with a partial success naming what was rejected), or
/// 503 with `Retry-After` when the queue is full.
fn submitted(ingest: &Ingest, decoded: stormwatch_otlp::Decoded, encoding: Encoding) -> Response {
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
            let message = QUEUE_FULL_MESSAGE.into();
            let mut response = error_response(encoding, StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, message);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// Every route, the unknown ones included, answers only the hosts it serves.
async fn check_host(
    State((hosts, metrics)): State<(AllowedHosts, std::sync::Arc<Metrics>)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match hosts.refusal(request.headers()) {
        None => next.run(request).await,
        Some(refusal) => {
            Metrics::add(&metrics.requests_misdirected_total, 1);
            let encoding = encoding_of(request.headers()).unwrap_or(Encoding::Json);
            error_response(encoding, StatusCode::FORBIDDEN, Code::PermissionDenied, refusal)
        }
    }
}

/// The OTLP/HTTP routes, for embedding or testing: `POST /v1/traces`, for the hosts `hosts`
/// allows.
pub fn http_router(ingest: Ingest, hosts: AllowedHosts) -> Router {
    let metrics = ingest.metrics.clone();
    Router::new()
        .route("/v1/traces", post(export))
        .with_state(ingest)
        .layer(axum::middleware::from_fn_with_state((hosts, metrics), check_host))
}

/// Serves OTLP/HTTP on `listener` until `shutdown` is cancelled; with `tls` (offering
/// `http/1.1`), over TLS.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    ingest: Ingest,
    hosts: AllowedHosts,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let metrics = ingest.metrics.clone();
    let router = http_router(ingest, hosts);
    crate::server::serve(listener, tls, Listener::OtlpHttp, router, limits, metrics, shutdown).await;
    Ok(())
}
