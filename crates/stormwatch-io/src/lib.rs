//! Everything of stormwatch that touches a socket or a file: the OTLP gRPC and HTTP
//! receivers, the bounded queue into the engine, alert sinks (Kafka, JSON lines), OTLP files
//! for replay, and the admin HTTP API (`/healthz`, `/metrics`).
//!
//! Receivers never run detection and never block the async runtime: decoding runs on blocking
//! worker threads, and spans go to the engine through a bounded queue whose "full" answer
//! becomes a retryable OTLP error (`UNAVAILABLE` / HTTP 503).

pub mod admin;
pub mod files;
pub mod kafka;
mod metrics;
pub mod otlp;
mod queue;
pub mod server;
pub mod sink;
pub mod spool;
pub mod tls;

pub use metrics::{EdgeSeries, Metrics};
pub use queue::{span_queue, Batch, Disconnected, QueueFull, SourcePosition, SourceTopic, SpanQueue, SpanReceiver};

/// I/O errors that the binary reports to the user.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("cannot listen on {addr} for {what}: {source} (choose another address with {flag})")]
    Bind { addr: std::net::SocketAddr, what: &'static str, flag: &'static str, source: std::io::Error },
    #[error("{0}")]
    Kafka(#[from] kafka::KafkaError),
    #[error("cannot write alerts to {path}: {source}")]
    AlertFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot write alerts to stdout: {0}")]
    Stdout(std::io::Error),
    #[error("the shutdown deadline (server.shutdown_timeout) passed before the delivery was confirmed")]
    ShutdownDeadline,
}

pub type Result<T, E = IoError> = std::result::Result<T, E>;

/// Binds a TCP listener, with an error that names the address, its purpose and the flag.
pub async fn bind(
    addr: std::net::SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| IoError::Bind { addr, what, flag, source })
}

/// Creates (or truncates) `path` readable and writable by its owner only (mode 0600): the
/// engine's files hold what it learned, the tuning and its alerts.
pub fn create_private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    // An existing file keeps its mode through `open`: set it.
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(file)
}

/// Writes `bytes` to a new private file at `path` ([`create_private_file`]) and syncs it.
pub fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = create_private_file(path)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()
}

/// Lets a repeated log line through at most once per period, saying how many it held back:
/// an outage or a flood does not flood the log.
#[derive(Debug)]
pub struct Throttled {
    period: std::time::Duration,
    /// Milliseconds since `epoch` of the last line let through, plus one (0: none yet).
    last_ms: std::sync::atomic::AtomicU64,
    held_back: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

impl Throttled {
    pub fn new(period: std::time::Duration) -> Throttled {
        Throttled {
            period,
            last_ms: std::sync::atomic::AtomicU64::new(0),
            held_back: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// `Some(lines held back since the last one)` when this line may be logged.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.period.as_millis() as u64;
        if due && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod throttled_tests {
    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let throttled = super::Throttled::new(std::time::Duration::from_millis(200));
        assert_eq!(throttled.allow(), Some(0));
        assert_eq!((0..5).filter_map(|_| throttled.allow()).count(), 0);
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(throttled.allow(), Some(5));
    }
}
