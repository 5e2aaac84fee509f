//! `[server]`: the listeners, their TLS, and the bounds they hold connections, requests and
//! bodies to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[server]`: the listeners, their bounds, the admin API and the engine thread's queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// OTLP/gRPC listen address.
    pub otlp_grpc: String,
    /// OTLP/HTTP listen address (`POST /v1/traces`).
    pub otlp_http: String,
    /// Admin HTTP listen address (`/healthz`, `/metrics`).
    pub admin: String,
    /// Largest accepted export request in bytes, after decompression.
    pub max_message_bytes: usize,
    /// Span batches waiting for the engine before receivers answer "retry later".
    pub queue_capacity: usize,
    /// Spans waiting for the engine before OTLP receivers answer "retry later" (a request
    /// larger than this is still taken when the queue is empty).
    pub queue_max_spans: usize,
    /// `/metrics` shows per-edge series for this many edges with the most calls and as many
    /// with the highest anomaly score (of the last judged window): at most twice this many
    /// series per edge metric. 0 turns them off.
    pub metrics_top_edges: usize,
    /// The console links exemplar trace ids to the tracing UI with this, `{trace_id}` replaced
    /// (e.g. `http://jaeger:16686/trace/{trace_id}`). Empty: ids are shown as text.
    pub trace_url_template: String,
    /// Bearer token for admin API writes (or env STORMWATCH_ADMIN_TOKEN). Empty: the token in
    /// `<models>/admin.token`, generated at first start.
    pub admin_token: String,
    /// Bearer token OTLP exporters must send (or env STORMWATCH_INGEST_TOKEN). Empty: any
    /// client that reaches the OTLP ports may export.
    pub ingest_token: String,
    /// Most connections open at once on each listener (OTLP gRPC, OTLP HTTP, admin). At the
    /// limit a new connection closes the longest-idle one, or is closed when all are busy.
    /// Lowered at start to fit the open-files limit, keeping descriptors in reserve.
    pub max_connections: usize,
    /// HTTP/1.1: the time a request's head may take, from the connection or from the previous
    /// response (so also how long a keep-alive connection may sit idle).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection on which nothing moves this long is closed (gracefully where it can be).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The time a request body may take, from its headers; a slower one is refused (408).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Bytes per second a request body must keep up after its first 5 s.
    pub min_body_rate: u64,
    /// HTTP/2 (OTLP gRPC): concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Bytes of export bodies being received and decoded at once, over both OTLP receivers;
    /// past it exports are refused as retryable (UNAVAILABLE / 503).
    pub max_receiving_bytes: u64,
    /// Largest snapshot `POST /api/snapshot` (`stormwatch baseline import --engine`) takes.
    pub max_import_bytes: usize,
    /// Most `/api/events` streams open at once.
    pub max_event_streams: usize,
    /// Host names the OTLP/HTTP port and the admin API answer besides IP addresses and
    /// `localhost` (exact, or `.example.com` for a domain and its subdomains; "*": any).
    pub allowed_hosts: Vec<String>,
    /// The most a shutdown (SIGTERM, Ctrl-C) takes: what cannot be delivered by then is
    /// spooled, and nothing unsettled is committed.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// TLS for the OTLP receivers and the admin API.
    pub tls: TlsConfig,
}

/// TLS (rustls). Off unless `cert_file` and `key_file` are set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// When set, OTLP clients must present a certificate signed by a CA in this PEM file
    /// (mutual TLS). The admin API does not ask for client certificates.
    pub client_ca_file: PathBuf,
    /// Whether the admin API is served over TLS too (with the same certificate).
    pub admin: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig { cert_file: PathBuf::new(), key_file: PathBuf::new(), client_ca_file: PathBuf::new(), admin: true }
    }
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    /// The rustls configurations: (OTLP gRPC, OTLP HTTP, admin). Errors name the file.
    pub fn server_configs(&self) -> Result<Option<[Arc<rustls::ServerConfig>; 3]>, ConfigError> {
        if !self.enabled() {
            return Ok(None);
        }
        let client_ca = (!self.client_ca_file.as_os_str().is_empty()).then_some(self.client_ca_file.as_path());
        let otlp = stormwatch_io::tls::TlsFiles { cert: &self.cert_file, key: &self.key_file, client_ca };
        let admin = stormwatch_io::tls::TlsFiles { client_ca: None, ..otlp.clone() };
        let config = stormwatch_io::tls::server_config;
        Ok(Some([config(&otlp, &[b"h2"])?, config(&otlp, &[b"http/1.1"])?, config(&admin, &[b"http/1.1"])?]))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            otlp_grpc: "127.0.0.1:4317".into(),
            otlp_http: "127.0.0.1:4318".into(),
            admin: "127.0.0.1:9464".into(),
            max_message_bytes: stormwatch_io::otlp::DEFAULT_MAX_MESSAGE_BYTES,
            queue_capacity: 1024,
            queue_max_spans: 1_000_000,
            metrics_top_edges: 20,
            trace_url_template: String::new(),
            admin_token: String::new(),
            ingest_token: String::new(),
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            min_body_rate: 16 * 1024,
            max_concurrent_streams: 64,
            max_receiving_bytes: 64 * 1024 * 1024,
            max_import_bytes: 256 * 1024 * 1024,
            max_event_streams: 32,
            allowed_hosts: Vec::new(),
            shutdown_timeout: Duration::from_secs(30),
            tls: TlsConfig::default(),
        }
    }
}

/// A validated listen address.
fn address(field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|error| {
        ConfigError::Invalid(format!("{field}: {value:?} is not a listen address like 127.0.0.1:4317: {error}"))
    })
}

impl ServerConfig {
    /// Checks every field of `[server]`; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        address("server.otlp_grpc", &self.otlp_grpc)?;
        address("server.otlp_http", &self.otlp_http)?;
        address("server.admin", &self.admin)?;
        if self.max_message_bytes < 1024 {
            invalid!("server.max_message_bytes: must be at least 1024, got {}", self.max_message_bytes);
        }
        if self.queue_capacity == 0 {
            invalid!("server.queue_capacity: must be at least 1");
        }
        if self.queue_max_spans == 0 {
            invalid!("server.queue_max_spans: must be at least 1");
        }
        let tls = &self.tls;
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if set(&tls.cert_file) != set(&tls.key_file) {
            invalid!("server.tls: set both cert_file and key_file (or neither, for no TLS)");
        }
        if set(&tls.client_ca_file) && !tls.enabled() {
            invalid!(
                "server.tls.client_ca_file needs cert_file and key_file: client certificates are checked over TLS"
            );
        }
        let server = self;
        for (field, value) in [
            ("server.max_connections", server.max_connections as u64),
            ("server.max_concurrent_streams", u64::from(server.max_concurrent_streams)),
            ("server.max_event_streams", server.max_event_streams as u64),
            ("server.min_body_rate", server.min_body_rate),
        ] {
            if value == 0 {
                invalid!("{field}: must be at least 1");
            }
        }
        for (field, value) in [
            ("server.header_timeout", server.header_timeout),
            ("server.idle_timeout", server.idle_timeout),
            ("server.body_timeout", server.body_timeout),
            ("server.shutdown_timeout", server.shutdown_timeout),
        ] {
            if value < Duration::from_secs(1) {
                invalid!("{field}: must be at least 1s, got {}", humantime::format_duration(value));
            }
        }
        if server.max_receiving_bytes < server.max_message_bytes as u64 {
            invalid!(
                "server.max_receiving_bytes ({}) must be at least server.max_message_bytes ({}): one export of the \
             largest size must fit",
                server.max_receiving_bytes,
                server.max_message_bytes
            );
        }
        if let Some(bad) = server
            .allowed_hosts
            .iter()
            .find(|h| h.trim().is_empty() || h.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control()))
        {
            invalid!("server.allowed_hosts: {bad:?} is not a host name (e.g. \"stormwatch.internal\", \".corp.example\" or \"*\")");
        }
        Ok(())
    }
}
