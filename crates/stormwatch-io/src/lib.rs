//! Everything of stormwatch that touches a socket or a file: the OTLP gRPC and HTTP
//! receivers, the bounded queue into the engine, alert sinks (Kafka, JSON lines), OTLP files
//! for replay, and the admin HTTP API (`/healthz`, `/metrics`).
//!
//! Receivers never run detection and never block the async runtime: decoding runs on blocking
//! worker threads, and spans go to the engine through a bounded queue whose "full" answer
//! becomes a retryable OTLP error (`UNAVAILABLE` / HTTP 503).

#![warn(missing_docs)]

pub mod admin;
pub mod files;
pub mod kafka;
mod metrics;
pub mod otlp;
mod private_file;
mod queue;
pub mod server;
pub mod sink;
pub mod spool;
mod throttled;
pub mod tls;

pub use metrics::{EdgeSeries, Metrics};
pub use private_file::{create_private_file, write_private_file};
pub use queue::{span_queue, Batch, Disconnected, QueueFull, SourcePosition, SourceTopic, SpanQueue, SpanReceiver};
pub use throttled::Throttled;

/// I/O errors that the binary reports to the user.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A listener could not bind its address.
    #[error("cannot listen on {addr} for {what}: {source} (choose another address with {flag})")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// What listens there.
        what: &'static str,
        /// The flag that sets it.
        flag: &'static str,
        /// The error binding it.
        source: std::io::Error,
    },
    /// Kafka could not take the alerts.
    #[error("{0}")]
    Kafka(#[from] kafka::KafkaError),
    /// The alerts file could not be written.
    #[error("cannot write alerts to {path}: {source}")]
    AlertFile {
        /// The file.
        path: std::path::PathBuf,
        /// The error writing it.
        source: std::io::Error,
    },
    /// Stdout could not be written.
    #[error("cannot write alerts to stdout: {0}")]
    Stdout(std::io::Error),
    /// Shutdown ran out of time before the sink confirmed delivery.
    #[error("the shutdown deadline (server.shutdown_timeout) passed before the delivery was confirmed")]
    ShutdownDeadline,
}

/// The I/O layer's result.
pub type Result<T, E = IoError> = std::result::Result<T, E>;

/// Binds a TCP listener, with an error that names the address, its purpose and the flag.
pub async fn bind(
    addr: std::net::SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| IoError::Bind { addr, what, flag, source })
}
