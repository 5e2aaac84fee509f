//! A minimal OTLP trace exporter for pre-encoded requests, used by `loadgen --send`: protobuf
//! bodies go out as they are, over gRPC (tonic, raw-bytes codec) or HTTP/1.1 keep-alive
//! (`POST /v1/traces`), so the sender spends its time on the wire, not in encoding.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

/// Why an export could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not `grpc://HOST:PORT` or `http://HOST:PORT`.
    #[error("OTLP endpoint {0:?}: use grpc://HOST:PORT or http://HOST:PORT")]
    Endpoint(String),
    /// The connection could not be made.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The receiver refused the export.
    #[error("{endpoint} answered {status}: {message}")]
    Rejected {
        /// The endpoint.
        endpoint: String,
        /// Its status (gRPC code or HTTP status).
        status: String,
        /// Its message.
        message: String,
    },
    /// The connection failed while exporting.
    #[error("{endpoint}: {reason}")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// How an export went.
#[derive(Debug, PartialEq, Eq)]
pub enum Export {
    /// The receiver took every span.
    Accepted,
    /// The receiver is full (`UNAVAILABLE` / 503 / 429): retry after the pause.
    RetryLater(Duration),
}

#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct DiscardDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for DiscardDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = DiscardDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> DiscardDecoder {
        DiscardDecoder
    }
}

/// One connection to an OTLP receiver.
pub enum OtlpClient {
    /// OTLP/gRPC.
    Grpc {
        /// The endpoint, as given.
        endpoint: String,
        /// The gRPC client.
        client: tonic::client::Grpc<Channel>,
    },
    /// OTLP/HTTP protobuf, on one kept-alive connection.
    Http {
        /// The endpoint, as given.
        endpoint: String,
        /// The `Host` header sent.
        authority: String,
        /// The connection.
        stream: BufReader<TcpStream>,
    },
}

impl std::fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpClient").finish_non_exhaustive()
    }
}

impl OtlpClient {
    /// Connects to `grpc://HOST:PORT` or `http://HOST:PORT`.
    pub async fn connect(endpoint: &str) -> Result<OtlpClient, ClientError> {
        let connect_error = |reason: String| ClientError::Connect { endpoint: endpoint.into(), reason };
        if let Some(authority) = endpoint.strip_prefix("grpc://") {
            let channel = Endpoint::from_shared(format!("http://{authority}"))
                .map_err(|_| ClientError::Endpoint(endpoint.into()))?
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(16 << 20))
                .connect()
                .await
                .map_err(|e| connect_error(e.to_string()))?;
            return Ok(OtlpClient::Grpc { endpoint: endpoint.into(), client: tonic::client::Grpc::new(channel) });
        }
        if let Some(authority) = endpoint.strip_prefix("http://") {
            let authority = authority.trim_end_matches('/').trim_end_matches("/v1/traces").to_string();
            let stream = TcpStream::connect(&authority).await.map_err(|e| connect_error(e.to_string()))?;
            stream.set_nodelay(true).map_err(|e| connect_error(e.to_string()))?;
            return Ok(OtlpClient::Http { endpoint: endpoint.into(), authority, stream: BufReader::new(stream) });
        }
        Err(ClientError::Endpoint(endpoint.into()))
    }

    /// Sends one protobuf-encoded `ExportTraceServiceRequest`.
    pub async fn export(&mut self, body: Bytes) -> Result<Export, ClientError> {
        match self {
            OtlpClient::Grpc { endpoint, client } => {
                client
                    .ready()
                    .await
                    .map_err(|e| ClientError::Io { endpoint: endpoint.clone(), reason: e.to_string() })?;
                let path =
                    http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
                match client.unary(tonic::Request::new(body), path, RawCodec).await {
                    Ok(_) => Ok(Export::Accepted),
                    Err(status)
                        if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted) =>
                    {
                        Ok(Export::RetryLater(Duration::from_millis(100)))
                    }
                    Err(status) => Err(ClientError::Rejected {
                        endpoint: endpoint.clone(),
                        status: format!("{:?}", status.code()),
                        message: status.message().into(),
                    }),
                }
            }
            OtlpClient::Http { endpoint, authority, stream } => {
                let io = |e: std::io::Error| ClientError::Io { endpoint: endpoint.clone(), reason: e.to_string() };
                let head = format!(
                    "POST /v1/traces HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let socket = stream.get_mut();
                socket.write_all(head.as_bytes()).await.map_err(io)?;
                socket.write_all(&body).await.map_err(io)?;
                // Status line and headers.
                let mut line = String::new();
                stream.read_line(&mut line).await.map_err(io)?;
                let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
                    ClientError::Io { endpoint: endpoint.clone(), reason: format!("not an HTTP response: {line:?}") }
                })?;
                let (mut length, mut retry_after) = (0usize, None);
                loop {
                    line.clear();
                    stream.read_line(&mut line).await.map_err(io)?;
                    let header = line.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        match name.trim().to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            "retry-after" => retry_after = value.trim().parse::<u64>().ok(),
                            _ => {}
                        }
                    }
                }
                let mut response = vec![0u8; length];
                stream.read_exact(&mut response).await.map_err(io)?;
                match status {
                    200..=299 => Ok(Export::Accepted),
                    429 | 502 | 503 | 504 => Ok(Export::RetryLater(
                        Duration::from_secs(retry_after.unwrap_or(1)).min(Duration::from_secs(5)),
                    )),
                    _ => Err(ClientError::Rejected {
                        endpoint: endpoint.clone(),
                        status: status.to_string(),
                        message: String::from_utf8_lossy(&response).into(),
                    }),
                }
            }
        }
    }
}
