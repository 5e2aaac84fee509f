//! Helpers for end-to-end tests: the real binary, real sockets, the real broker.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use serde_json::Value;

pub(crate) fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_stormwatch")
}

pub(crate) fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(relative)
}

/// A port nobody listens on right now.
pub(crate) fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The test broker: `KAFKA_BOOTSTRAP`, which `scripts/test.sh` sets after starting tansu.
pub(crate) fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BOOTSTRAP is not set: run the tests with scripts/test.sh, which starts a tansu broker, \
             or point KAFKA_BOOTSTRAP at a Kafka-compatible broker"
        )
    })
}

/// Creates a topic (tansu does not auto-create), unique per test.
pub(crate) async fn create_topic(bootstrap: &str, prefix: &str) -> String {
    let topic = format!("{prefix}-{}-{}", std::process::id(), unique_suffix());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let results = admin
        .create_topics(&[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("create_topics request");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("cannot create topic {name}: {code:?}"));
    }
    topic
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// Reads alerts from `topic` until `wanted` returns true for one, or `timeout` passes.
/// Returns every alert read (payload) with its key.
pub(crate) async fn consume_alerts_until(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<(String, Value)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("e2e-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Ok(Ok(message)) => {
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).to_string();
                let value: Value =
                    serde_json::from_slice(message.payload().unwrap_or_default()).expect("alert is JSON");
                let done = wanted(&value);
                seen.push((key, value));
                if done {
                    break;
                }
            }
            Ok(Err(error)) => panic!("consumer error: {error}"),
            Err(_) => {}
        }
    }
    consumer.unsubscribe();
    seen
}

/// Validates an alert against `schemas/alert.v1.schema.json`.
pub(crate) fn assert_valid_alert(alert: &Value) {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_path("schemas/alert.v1.schema.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(alert).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "alert violates the schema: {errors:#?}\n{alert:#}");
}

/// A running `stormwatch serve`.
pub(crate) struct Serve {
    child: Child,
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) stderr_path: PathBuf,
}

impl Serve {
    /// Starts serve with test-speed settings and `extra` flags, and waits for /healthz.
    pub(crate) fn start(work_dir: &Path, extra: &[&str]) -> Serve {
        Serve::start_with(work_dir, "[assemble]\ntrace_idle = \"1s\"\ntrace_max_wait = \"20s\"\n", extra)
    }

    /// Like [`Serve::start`] with `sections` of TOML (including an `[assemble]` section) in
    /// the config file.
    pub(crate) fn start_with(work_dir: &Path, sections: &str, extra: &[&str]) -> Serve {
        Serve::start_checked(work_dir, sections, extra, &|admin| http_get(admin, "/healthz").is_some())
    }

    /// Like [`Serve::start_with`], ready when `ready(admin address)` says so (e.g. /healthz
    /// over TLS).
    pub(crate) fn start_checked(
        work_dir: &Path,
        sections: &str,
        extra: &[&str],
        ready: &dyn Fn(SocketAddr) -> bool,
    ) -> Serve {
        Serve::start_bound(work_dir, sections, extra, ready, false)
    }

    /// Like [`Serve::start_with`], the admin API listening on every interface (off loopback:
    /// API reads need the token); `admin` is still its loopback address, for the tests.
    pub(crate) fn start_with_public_admin(work_dir: &Path, sections: &str) -> Serve {
        Serve::start_bound(work_dir, sections, &[], &|admin| http_get(admin, "/healthz").is_some(), true)
    }

    fn start_bound(
        work_dir: &Path,
        sections: &str,
        extra: &[&str],
        ready: &dyn Fn(SocketAddr) -> bool,
        public_admin: bool,
    ) -> Serve {
        let config = work_dir.join("stormwatch.toml");
        // Quick learning unless the sections set their own baseline settings.
        let baseline = if sections.contains("[baseline]") {
            ""
        } else {
            "\n[baseline]\nlearning_min_samples = 30\nsnapshot_interval = \"2s\"\n"
        };
        std::fs::write(&config, format!("{sections}{baseline}")).unwrap();
        // A port found free can be taken by a parallel test before serve binds it: try again
        // with other ports then.
        for attempt in 1..=5 {
            let (grpc, http, admin) = (free_addr(), free_addr(), free_addr());
            let mut args = vec!["serve".to_string(), "--config".into(), config.to_str().unwrap().into()];
            let admin_bind = match public_admin {
                true => SocketAddr::from(([0, 0, 0, 0], admin.port())),
                false => admin,
            };
            for (flag, addr) in [("--otlp-grpc", grpc), ("--otlp-http", http), ("--admin", admin_bind)] {
                args.extend([flag.to_string(), addr.to_string()]);
            }
            args.extend(extra.iter().map(|a| a.to_string()));
            match Serve::try_spawn(work_dir, &args, grpc, http, admin, ready) {
                Ok(serve) => return serve,
                Err(log) if attempt < 5 && log.contains("Address already in use") => continue,
                Err(log) => panic!("serve did not start:\n{log}"),
            }
        }
        unreachable!()
    }

    /// `stormwatch serve` with no arguments at all: the embedded defaults and default ports.
    pub(crate) fn start_with_defaults(work_dir: &Path) -> Serve {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Serve::spawn(work_dir, &["serve".to_string()], addr(4317), addr(4318), addr(9464))
    }

    fn spawn(work_dir: &Path, args: &[String], grpc: SocketAddr, http: SocketAddr, admin: SocketAddr) -> Serve {
        Serve::try_spawn(work_dir, args, grpc, http, admin, &|admin| http_get(admin, "/healthz").is_some())
            .unwrap_or_else(|log| panic!("serve did not start:\n{log}"))
    }

    /// Starts serve and waits for /healthz; `Err(its log)` when it exits or never gets healthy.
    fn try_spawn(
        work_dir: &Path,
        args: &[String],
        grpc: SocketAddr,
        http: SocketAddr,
        admin: SocketAddr,
        ready: &dyn Fn(SocketAddr) -> bool,
    ) -> Result<Serve, String> {
        let stderr_path = work_dir.join(format!("serve-{}.log", grpc.port()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut command = Command::new(binary());
        for (name, _) in std::env::vars() {
            if name.starts_with("STORMWATCH_") {
                command.env_remove(name);
            }
        }
        let child = command
            .current_dir(work_dir)
            .env("RUST_LOG", "info")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start stormwatch serve");
        let mut serve = Serve { child, grpc, http, admin, stderr_path };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(admin) {
            if let Ok(Some(status)) = serve.child.try_wait() {
                return Err(format!("serve exited with {status}:\n{}", serve.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("serve did not become healthy:\n{}", serve.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(serve)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Resident memory now and at its peak (VmRSS, VmHWM), in MiB.
    pub(crate) fn memory_mib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
                .unwrap_or(0)
                / 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub(crate) fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").unwrap_or_default()
    }

    /// The value of the metric line starting with `line_start` (name and labels, then a
    /// space), 0 when absent.
    pub(crate) fn metric(&self, line_start: &str) -> u64 {
        self.metrics().lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok()).unwrap_or(0)
    }

    /// kill -9: no flush, no snapshot, no commit.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (up to 120 s) for a clean exit: how long it took, and the log.
    pub(crate) fn terminate(mut self) -> (Duration, String) {
        let started = Instant::now();
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "serve exited with {status}:\n{}", self.log());
                return (started.elapsed(), self.log());
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM within 120 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ctrl-C, then waits for a clean exit; returns what it wrote to stdout.
    pub(crate) fn stop(mut self) -> String {
        let status = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "serve exited with {status}:\n{}", self.log());
                break;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGINT:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out).unwrap();
        }
        out
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 POST; (status line, body).
pub(crate) fn http_post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// A plain HTTP/1.1 GET; the body on 200.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let response = http_status(addr, path);
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// A plain HTTP/1.1 GET: the whole response, status line first (empty when unreachable).
pub(crate) fn http_status(addr: SocketAddr, path: &str) -> String {
    let get = || -> Option<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    };
    get().unwrap_or_default()
}

/// Which OTLP transport the SDK exports with.
#[derive(Clone, Copy)]
pub(crate) enum Transport {
    Grpc,
    Http,
}

/// A sampler that keeps every span and writes `ot=<threshold>` into the `tracestate` of each
/// root (children inherit their parent's), as a consistent probability sampler does.
#[derive(Clone, Debug)]
struct WritesThreshold(&'static str);

impl opentelemetry_sdk::trace::ShouldSample for WritesThreshold {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        _trace_id: opentelemetry::trace::TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        let inherited =
            parent_context.filter(|cx| cx.has_active_span()).map(|cx| cx.span().span_context().trace_state().clone());
        let trace_state = inherited.unwrap_or_else(|| {
            opentelemetry::trace::TraceState::from_key_value([("ot", self.0)]).expect("a valid tracestate")
        });
        opentelemetry_sdk::trace::SamplingResult {
            decision: opentelemetry_sdk::trace::SamplingDecision::RecordAndSample,
            attributes: Vec::new(),
            trace_state,
        }
    }
}

/// One tracer provider per service, exporting with the official OTLP exporter.
pub(crate) struct Services {
    providers: Vec<(&'static str, SdkTracerProvider)>,
}

impl Services {
    /// Services exporting through exporters built by the caller (TLS, headers, ...).
    pub(crate) fn with_exporters(exporters: Vec<(&'static str, opentelemetry_otlp::SpanExporter)>) -> Services {
        Services::built(exporters, None)
    }

    fn built(
        exporters: Vec<(&'static str, opentelemetry_otlp::SpanExporter)>,
        sampler: Option<WritesThreshold>,
    ) -> Services {
        let providers = exporters
            .into_iter()
            .map(|(name, exporter)| {
                let builder = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(name).build());
                let provider = match &sampler {
                    Some(sampler) => builder.with_sampler(sampler.clone()).build(),
                    None => builder.build(),
                };
                (name, provider)
            })
            .collect();
        Services { providers }
    }

    /// Services whose SDK sampler writes the consistent-sampling threshold `ot=<threshold>`
    /// (e.g. `th:c`, 25%) into every root's `tracestate`, children inheriting it, as
    /// OpenTelemetry's probability samplers do. It keeps every trace: what the engine sees is
    /// what such a sampler exported.
    pub(crate) fn sampled(
        serve: &Serve,
        transport: Transport,
        names: &[&'static str],
        threshold: &'static str,
    ) -> Services {
        Services::built(Services::exporters(serve, transport, names), Some(WritesThreshold(threshold)))
    }

    pub(crate) fn new(serve: &Serve, transport: Transport, names: &[&'static str]) -> Services {
        Services::with_exporters(Services::exporters(serve, transport, names))
    }

    fn exporters(
        serve: &Serve,
        transport: Transport,
        names: &[&'static str],
    ) -> Vec<(&'static str, opentelemetry_otlp::SpanExporter)> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
        names
            .iter()
            .map(|name| {
                let exporter = match transport {
                    Transport::Grpc => opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(format!("http://{}", serve.grpc))
                        .with_compression(opentelemetry_otlp::Compression::Gzip)
                        .build(),
                    Transport::Http => opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                        .with_endpoint(format!("http://{}/v1/traces", serve.http))
                        .with_headers(Default::default())
                        .build(),
                }
                .expect("OTLP exporter");
                (*name, exporter)
            })
            .collect()
    }

    fn tracer(&self, name: &str) -> opentelemetry_sdk::trace::SdkTracer {
        self.providers.iter().find(|(n, _)| *n == name).expect("service").1.tracer("stormwatch-e2e")
    }

    /// `frontend GET /product/{id}` -> `catalog GET /items/{id}` -> `authors` lookups on
    /// postgresql, one per author, and optionally `fanout` extra calls to catalog. Returns
    /// the trace id.
    pub(crate) fn product_request(&self, authors: usize, catalog_calls: usize) -> String {
        let frontend = self.tracer("frontend");
        let catalog = self.tracer("catalog");
        let root = frontend
            .span_builder("GET /product/{id}")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.route", "/product/{id}"),
                KeyValue::new("url.path", "/product/7"),
                KeyValue::new("client.address", "10.1.2.3"),
            ])
            .start(&frontend);
        let root_cx = Context::current_with_span(root);
        for _ in 0..catalog_calls.max(1) {
            let client = frontend
                .span_builder("GET")
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("http.request.method", "GET"),
                    KeyValue::new("server.address", "catalog"),
                ])
                .start_with_context(&frontend, &root_cx);
            let client_cx = root_cx.with_span(client);
            let server = catalog
                .span_builder("GET /items/{id}")
                .with_kind(SpanKind::Server)
                .with_attributes([
                    KeyValue::new("http.request.method", "GET"),
                    KeyValue::new("http.route", "/items/{id}"),
                ])
                .start_with_context(&catalog, &client_cx);
            let server_cx = client_cx.with_span(server);
            for author in 0..authors {
                let span = catalog
                    .span_builder("SELECT shop.users")
                    .with_kind(SpanKind::Client)
                    .with_attributes([
                        KeyValue::new("db.system.name", "postgresql"),
                        KeyValue::new("db.namespace", "shop"),
                        KeyValue::new("db.query.text", format!("SELECT name FROM users WHERE id = {}", author + 1)),
                    ])
                    .start_with_context(&catalog, &server_cx);
                drop(span); // ends it
            }
            server_cx.span().end();
            client_cx.span().end();
        }
        let trace_id = root_cx.span().span_context().trace_id().to_string();
        root_cx.span().end();
        trace_id
    }

    /// A `frontend` entry request without a route, named by its raw `path` (as an
    /// uninstrumented router or a 404 handler reports it), with one catalog lookup.
    pub(crate) fn unrouted_request(&self, path: &str) -> String {
        let frontend = self.tracer("frontend");
        let root = frontend
            .span_builder(format!("GET {path}"))
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", "GET"), KeyValue::new("url.path", path.to_string())])
            .start(&frontend);
        let root_cx = Context::current_with_span(root);
        let lookup = frontend
            .span_builder("SELECT shop.pages")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.query.text", "SELECT body FROM pages WHERE path = $1"),
            ])
            .start_with_context(&frontend, &root_cx);
        drop(lookup);
        let trace_id = root_cx.span().span_context().trace_id().to_string();
        root_cx.span().end();
        trace_id
    }

    /// An `api` order that sends `messages` to Kafka's `orders`, each taken by `worker` in a
    /// trace of its own whose CONSUMER span links to the producer span (batch-receive style),
    /// with one database write; returns the order's trace id.
    pub(crate) fn order_with_linked_consumers(&self, messages: usize) -> String {
        use opentelemetry::trace::{Link, Span as _};
        let api = self.tracer("api");
        let worker = self.tracer("worker");
        let root = api
            .span_builder("POST /orders")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", "/orders"),
                KeyValue::new("client.address", "10.1.2.3"),
            ])
            .start(&api);
        let root_cx = Context::current_with_span(root);
        let mut producers = Vec::new();
        for _ in 0..messages {
            let send = api
                .span_builder("send orders")
                .with_kind(SpanKind::Producer)
                .with_attributes([
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.destination.name", "orders"),
                    KeyValue::new("messaging.operation.type", "send"),
                ])
                .start_with_context(&api, &root_cx);
            producers.push(send.span_context().clone());
            drop(send);
        }
        let trace_id = root_cx.span().span_context().trace_id().to_string();
        root_cx.span().end();
        for producer in producers {
            let process = worker
                .span_builder("process orders")
                .with_kind(SpanKind::Consumer)
                .with_attributes([
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.destination.name", "orders"),
                    KeyValue::new("messaging.operation.type", "process"),
                ])
                .with_links(vec![Link::with_context(producer)])
                .start_with_context(&worker, &Context::new());
            let process_cx = Context::current_with_span(process);
            let write = worker
                .span_builder("INSERT shop.lines")
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("db.system.name", "postgresql"),
                    KeyValue::new("db.namespace", "shop"),
                    KeyValue::new("db.query.text", "INSERT INTO lines (order_id) VALUES ($1)"),
                ])
                .start_with_context(&worker, &process_cx);
            drop(write);
            process_cx.span().end();
        }
        trace_id
    }

    pub(crate) fn flush(&self) {
        for (name, provider) in &self.providers {
            provider.force_flush().unwrap_or_else(|e| panic!("flushing {name}: {e}"));
        }
    }

    pub(crate) fn shutdown(self) {
        for (_, provider) in self.providers {
            let _ = provider.shutdown();
        }
    }
}

/// Polls `done` every 200 ms; fails naming `what` after `timeout`.
pub(crate) fn wait_until(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Test certificates: a CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate, all signed by the CA; and a client certificate from another CA. PEM files in
/// `dir`: ca.pem, server.pem, server.key, client.pem, client.key, rogue.pem, rogue.key.
pub(crate) fn make_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "stormwatch test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let signed = |names: Vec<String>, name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    };
    signed(vec!["127.0.0.1".into(), "localhost".into()], "server");
    signed(vec!["collector.fleet".into()], "client");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let rogue_key = KeyPair::generate().unwrap();
    let rogue = CertificateParams::new(vec!["collector.fleet".to_string()]).unwrap().self_signed(&rogue_key).unwrap();
    std::fs::write(dir.join("rogue.pem"), rogue.pem()).unwrap();
    std::fs::write(dir.join("rogue.key"), rogue_key.serialize_pem()).unwrap();
}

/// One HTTP/1.1 request over TLS, trusting the CA in `ca_pem`, presenting `client` (a
/// certificate and key PEM pair) when given. The whole response, or the error.
pub(crate) fn https_request(
    addr: SocketAddr,
    ca_pem: &Path,
    client: Option<(&Path, &Path)>,
    request: &str,
    body: &[u8],
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    let server_name = ServerName::from(addr.ip());
    let connection =
        rustls::ClientConnection::new(std::sync::Arc::new(config), server_name).map_err(|e| e.to_string())?;
    let socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    let head = format!("{request}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
    tls.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    tls.write_all(body).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // Some servers close without close_notify; what arrived is the response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}
