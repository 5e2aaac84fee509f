//! `stormwatch serve`: receivers -> queue -> engine thread -> sink, plus the admin API.

mod host;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use std::sync::atomic::{AtomicBool, Ordering};

use stormwatch_baseline::BaselineStore;
use stormwatch_io::admin::{serve_admin, AdminApi, AdminQueries, LiveEvents};

use crate::admin::AdminView;
use stormwatch_io::kafka::source::{GroupState, InputEncoding, KafkaSource, SourceConfig};
use stormwatch_io::otlp::{serve_grpc, serve_http, Ingest};
use stormwatch_io::server::body::Intake;
use stormwatch_io::server::host::AllowedHosts;
use stormwatch_io::server::ConnectionLimits;
use stormwatch_io::sink::AlertSink;
use stormwatch_io::spool::AlertSpool;
use stormwatch_io::{bind, SourcePosition};
use stormwatch_io::{Metrics, SourceTopic, SpanQueue};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::sharing::restore_shared;
use crate::tuning::TuningWatch;
use crate::{open_sink, restore, EngineOptions, EngineReport, Pipeline, SharingOptions, TuningOptions};
use host::{admin_token, fit_connections, ShutdownSignals};

/// Serves with `config` (validated, limits and attribution applied) until SIGINT or SIGTERM,
/// then drains and stops within `server.shutdown_timeout`.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::listen()?;
    stormwatch_io::kafka::set_client_settings(config.kafka.client.clone().into_iter().collect());
    // Everything that can fail on bad settings fails here, before any data is accepted.
    let start = Start::prepare(&config).await?;
    let sink = alert_sink(&config).await?;
    let listeners = Listeners::bind(&config).await?;
    listeners.announce(&config, &sink)?;
    let group = Arc::new(GroupState::default());
    let sharing = sharing_options(&config, &start.engine_id, &group).await?;
    let (commits_tx, commits_rx) = std::sync::mpsc::channel();
    let (queries_tx, queries_rx) = std::sync::mpsc::channel();
    let live = stormwatch_io::admin::live_events();
    let tuning_path = start.tuning.watch.as_ref().map(|watch| watch.path().to_path_buf());
    let view = Arc::new(AdminView::new(tuning_path, &start.tuning.initial));
    let options = EngineOptions {
        idle_fallback: Some(config.assemble.trace_idle),
        snapshot: Some((config.baseline.models_dir.clone(), Some(config.baseline.snapshot_interval))),
        commits: config.kafka.input.then_some(commits_tx),
        sharing,
        share_baselines: config.baselines_topic().map(|topic| (topic, start.engine_id.clone())),
        queries: Some(queries_rx),
        view: Some(view.clone()),
        tuning: start.tuning,
        deliver_until_acknowledged: true,
        spool: open_spool(&config)?,
        metrics_top_edges: config.server.metrics_top_edges,
        live: Some(live.clone()),
    };
    let queue_bounds = (config.server.queue_capacity, config.server.queue_max_spans);
    let (pipeline, queue) = Pipeline::start(config.engine(), start.store, sink, queue_bounds, options);
    let metrics = pipeline.metrics.clone();
    let sources = match config.kafka.input {
        true => start_kafka_input(&config, &queue, &metrics, &group, commits_rx).await?,
        false => Vec::new(),
    };
    let mut served =
        Served::spawn(&config, listeners, queue, &metrics, start.tls, (start.admin_token, queries_tx, view, live))?;
    let failure = served.wait(&mut signals).await;
    // A second Ctrl-C (or SIGTERM) skips the flush, e.g. when the alert broker is down and
    // delivery is still being retried.
    tokio::spawn(async move {
        signals.recv().await;
        eprintln!("stormwatch: second signal: exiting without flushing");
        std::process::exit(130);
    });
    let report = served.shut_down(config.server.shutdown_timeout, pipeline, sources).await?;
    tracing::info!(
        spans = report.spans_accepted,
        traces = report.stats.traces_checked,
        alerts = report.stats.alerts.iter().sum::<u64>(),
        edges = report.edges_tracked,
        "stopped"
    );
    if let Some(error) = report.snapshot_error {
        anyhow::bail!("the final baseline snapshot was not written: {error}");
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// What `serve` reads before it binds a port: the baselines (local, or the group's shared
/// ones), the admin token, TLS, the tuning, and this engine's name in its group.
struct Start {
    store: BaselineStore,
    admin_token: String,
    tls: Option<[Arc<rustls::ServerConfig>; 3]>,
    tuning: TuningOptions,
    engine_id: String,
}

impl Start {
    async fn prepare(config: &Config) -> anyhow::Result<Start> {
        let mut store = restore(&config.baseline.models_dir, config.baseline.max_keys)?;
        let admin_token = admin_token(config)?;
        let tls = config.server.tls.server_configs()?;
        // The security engineers' tuning: a bad file stops the start; a bad edit later is refused.
        let tuning_path = config.baseline.models_dir.join(crate::tuning::TUNING_FILE);
        let initial = crate::tuning::load(&tuning_path)?.unwrap_or_default();
        tracing::info!(path = %tuning_path.display(), tuning = %crate::tuning::describe(&initial), "tuning in force");
        let tuning = TuningOptions { initial, watch: Some(TuningWatch::new(tuning_path)), reload: reload_on_hangup()? };
        let engine_id = if config.kafka.instance_id.is_empty() {
            format!("engine-{}-{:x}", std::process::id(), stormwatch_model::wall_clock_nanos())
        } else {
            config.kafka.instance_id.clone()
        };
        if let Some(topic) = &config.baselines_topic() {
            let settings = &stormwatch_io::kafka::baselines::TOPIC_SETTINGS;
            stormwatch_io::kafka::ensure_topic(&config.kafka.brokers, topic, 1, settings)
                .await
                .context("kafka.baselines_topic")?;
            if store.edges_tracked() == 0 && store.window_samples() == 0 {
                let (brokers, topic, max_keys) =
                    (config.kafka.brokers.clone(), topic.clone(), config.baseline.max_keys);
                let shared = tokio::task::spawn_blocking(move || restore_shared(&brokers, &topic, max_keys)).await?;
                store = shared.unwrap_or(store);
            }
        }
        Ok(Start { store, admin_token, tls, tuning, engine_id })
    }
}

/// Where alerts go: the Kafka alerts topic, or stdout and the alerts file.
async fn alert_sink(config: &Config) -> anyhow::Result<AlertSink> {
    let alerts_file = (!config.output.alerts_file.is_empty()).then(|| Path::new(&config.output.alerts_file));
    Ok(open_sink(&config.kafka.brokers, &config.kafka.alert_topic, config.output.stdout, alerts_file).await?)
}

/// SIGHUP sets the returned flag: the engine thread reloads the tuning file.
fn reload_on_hangup() -> anyhow::Result<Arc<AtomicBool>> {
    let reload = Arc::new(AtomicBool::new(false));
    #[cfg(unix)]
    {
        let reload = reload.clone();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the tuning");
                reload.store(true, Ordering::Relaxed);
            }
        });
    }
    Ok(reload)
}

/// With Kafka, alerts the broker does not take wait on disk.
fn open_spool(config: &Config) -> anyhow::Result<Option<AlertSpool>> {
    if config.kafka.brokers.is_empty() {
        return Ok(None);
    }
    let dir = match &config.output.spool_dir {
        dir if dir.as_os_str().is_empty() => config.baseline.models_dir.join("alert-spool"),
        dir => dir.clone(),
    };
    let spool = AlertSpool::open(&dir, config.output.spool_max_bytes)
        .with_context(|| format!("cannot open the alert spool {} (output.spool_dir)", dir.display()))?;
    Ok(Some(spool))
}

/// In a Kafka group that shares windows: this engine's part in it (the topic is created when
/// missing).
async fn sharing_options(
    config: &Config,
    engine_id: &str,
    group: &Arc<GroupState>,
) -> anyhow::Result<Option<SharingOptions>> {
    let Some(topic) = config.windows_topic() else { return Ok(None) };
    stormwatch_io::kafka::ensure_topic(&config.kafka.brokers, &topic, 1, &[]).await.context("kafka.windows_topic")?;
    Ok(Some(SharingOptions {
        sender: engine_id.to_string(),
        group: group.clone(),
        topic,
        merge_timeout: config.kafka.window_merge_timeout,
        top_k: config.engine().window.top_k,
    }))
}

/// The three listeners, bound before any data is accepted.
struct Listeners {
    grpc: TcpListener,
    http: TcpListener,
    admin: TcpListener,
}

impl Listeners {
    async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let grpc_addr: SocketAddr = config.server.otlp_grpc.parse()?;
        let http_addr: SocketAddr = config.server.otlp_http.parse()?;
        let admin_addr: SocketAddr = config.server.admin.parse()?;
        Ok(Listeners {
            grpc: bind(grpc_addr, "OTLP/gRPC", "--otlp-grpc").await?,
            http: bind(http_addr, "OTLP/HTTP", "--otlp-http").await?,
            admin: bind(admin_addr, "the admin API", "--admin").await?,
        })
    }

    /// The "stormwatch serving" log line: where everything is.
    fn announce(&self, config: &Config, sink: &AlertSink) -> anyhow::Result<()> {
        let scheme = if config.server.tls.enabled() && config.server.tls.admin { "https" } else { "http" };
        tracing::info!(
            otlp_grpc = %self.grpc.local_addr()?,
            otlp_http = %self.http.local_addr()?,
            admin = %self.admin.local_addr()?,
            console = %format!("{scheme}://{}/", self.admin.local_addr()?),
            alerts = %sink.describe(),
            learning_min_samples = config.baseline.learning_min_samples,
            "stormwatch serving"
        );
        Ok(())
    }
}

/// The Kafka input (and the windows topic, when windows are shared): consumers feeding the
/// span queue, with a thread that routes settled positions from the sink to the source of
/// their topic.
async fn start_kafka_input(
    config: &Config,
    queue: &SpanQueue,
    metrics: &Arc<Metrics>,
    group: &Arc<GroupState>,
    commits: std::sync::mpsc::Receiver<Vec<SourcePosition>>,
) -> anyhow::Result<Vec<KafkaSource>> {
    let input_config = SourceConfig {
        brokers: config.kafka.brokers.clone(),
        topic: config.kafka.input_topic.clone(),
        group_id: config.kafka.group_id.clone(),
        encoding: InputEncoding::parse(&config.kafka.input_encoding).context("kafka.input_encoding")?,
        dead_letter_topic: (!config.kafka.dead_letter_topic.is_empty()).then(|| config.kafka.dead_letter_topic.clone()),
        instance_id: (!config.kafka.instance_id.is_empty()).then(|| config.kafka.instance_id.clone()),
        role: SourceTopic::Input,
        baselines_topic: config.baselines_topic(),
    };
    let (input_tx, input_rx) = std::sync::mpsc::channel();
    let (windows_tx, windows_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("stormwatch-commits".into()).spawn(move || {
        for positions in commits {
            let (input, windows): (Vec<SourcePosition>, Vec<SourcePosition>) =
                positions.into_iter().partition(|p: &SourcePosition| p.topic == SourceTopic::Input);
            for (positions, to) in [(input, &input_tx), (windows, &windows_tx)] {
                if !positions.is_empty() {
                    let _ = to.send(positions);
                }
            }
        }
    })?;
    let start = |config: SourceConfig, commits| {
        let (queue, metrics, group) = (queue.clone(), metrics.clone(), group.clone());
        tokio::task::spawn_blocking(move || KafkaSource::start(config, queue, commits, metrics, group))
    };
    let windows_topic = config.windows_topic();
    let mut sources = Vec::new();
    if let Some(topic) = &windows_topic {
        // Read by the owner of input partition 0; offsets committed under `<group>.windows`.
        let windows_config = SourceConfig {
            topic: topic.clone(),
            group_id: format!("{}.windows", config.kafka.group_id),
            dead_letter_topic: None,
            role: SourceTopic::Windows,
            instance_id: None,
            ..input_config.clone()
        };
        sources.push(start(windows_config, windows_rx).await??);
    }
    sources.push(start(input_config, input_rx).await??);
    tracing::info!(
        topic = %config.kafka.input_topic,
        group = %config.kafka.group_id,
        encoding = %config.kafka.input_encoding,
        windows = windows_topic.as_deref().unwrap_or("not shared"),
        "consuming spans from Kafka"
    );
    Ok(sources)
}

/// The receivers and the admin API, serving.
struct Served {
    receivers: JoinSet<anyhow::Result<()>>,
    receivers_stop: CancellationToken,
    admin: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    admin_stop: CancellationToken,
}

impl Served {
    fn spawn(
        config: &Config,
        listeners: Listeners,
        queue: SpanQueue,
        metrics: &Arc<Metrics>,
        tls: Option<[Arc<rustls::ServerConfig>; 3]>,
        (admin_token, queries, view, live): (String, AdminQueries, Arc<AdminView>, LiveEvents),
    ) -> anyhow::Result<Served> {
        let (receivers_stop, admin_stop) = (CancellationToken::new(), CancellationToken::new());
        let server = &config.server;
        let intake =
            Intake::new(server.max_receiving_bytes, server.body_timeout, server.min_body_rate, metrics.clone());
        let ingest = Ingest {
            queue,
            metrics: metrics.clone(),
            max_message_bytes: server.max_message_bytes,
            token: (!server.ingest_token.is_empty()).then(|| server.ingest_token.as_str().into()),
            intake,
        };
        let limits = ConnectionLimits {
            max_connections: fit_connections(server.max_connections)?,
            header_timeout: server.header_timeout,
            idle_timeout: server.idle_timeout,
            max_streams: server.max_concurrent_streams,
        };
        let hosts = AllowedHosts::new(&server.allowed_hosts);
        let [grpc_tls, http_tls, admin_tls] = match tls {
            Some([grpc, http, admin]) => [Some(grpc), Some(http), server.tls.admin.then_some(admin)],
            None => [None, None, None],
        };
        let mut receivers = JoinSet::new();
        receivers.spawn({
            let (ingest, limits, stop) = (ingest.clone(), limits.clone(), receivers_stop.clone());
            let listener = listeners.grpc;
            async move { serve_grpc(listener, grpc_tls, ingest, &limits, stop).await.context("OTLP/gRPC receiver failed") }
        });
        receivers.spawn({
            let (hosts, limits, stop, listener) =
                (hosts.clone(), limits.clone(), receivers_stop.clone(), listeners.http);
            async move {
                serve_http(listener, http_tls, ingest, hosts, &limits, stop).await.context("OTLP/HTTP receiver failed")
            }
        });
        let api = AdminApi {
            metrics: metrics.clone(),
            queries: Some(queries),
            reads: Some(view),
            token: Some(admin_token),
            trace_url_template: server.trace_url_template.clone(),
            live: Some(live),
            hosts,
            max_import_bytes: server.max_import_bytes,
            max_event_streams: server.max_event_streams,
            body_timeout: server.body_timeout,
            min_body_rate: server.min_body_rate,
        };
        let admin = tokio::spawn({
            let (stop, listener) = (admin_stop.clone(), listeners.admin);
            async move { serve_admin(listener, admin_tls, api, &limits, stop).await }
        });
        Ok(Served { receivers, receivers_stop, admin, admin_stop })
    }

    /// Until a signal asks to stop (`None`) or a receiver fails (its error).
    async fn wait(&mut self, signals: &mut ShutdownSignals) -> Option<anyhow::Error> {
        tokio::select! {
            _ = signals.recv() => {
                tracing::info!("shutting down: flushing traces, alerts and the baseline snapshot");
                None
            }
            Some(result) = self.receivers.join_next() => Some(match result {
                Ok(Ok(())) => anyhow::anyhow!("a receiver stopped unexpectedly"),
                Ok(Err(error)) => error,
                Err(join) => anyhow::anyhow!("a receiver panicked: {join}"),
            }),
        }
    }

    /// The shutdown is bounded (`timeout`): a second before its deadline the sink stops waiting
    /// on the broker (what it holds goes to the spool, nothing unsettled is committed), and what
    /// has not closed by the deadline is left behind.
    async fn shut_down(
        mut self,
        timeout: Duration,
        pipeline: Pipeline,
        sources: Vec<KafkaSource>,
    ) -> anyhow::Result<EngineReport> {
        let deadline = tokio::time::Instant::now() + timeout;
        let give_up_at = deadline - Duration::from_secs(1).min(timeout / 4);
        // Stop accepting; once the receivers (and the Kafka source) are gone the queue closes and
        // the engine drains it.
        self.receivers_stop.cancel();
        let receivers = &mut self.receivers;
        let closed =
            tokio::time::timeout_at(give_up_at, async { while receivers.join_next().await.is_some() {} }).await;
        if closed.is_err() {
            tracing::warn!("connections still open at the shutdown deadline were dropped");
            self.receivers.abort_all();
            while self.receivers.join_next().await.is_some() {}
        }
        for source in &sources {
            source.stop();
        }
        let report = pipeline.finish(Some(give_up_at)).await?;
        // The sink is done, so the source has received the last settled positions: it commits
        // them, unless the broker does not answer by the deadline (they are read again at the
        // next start).
        for source in sources {
            let closed = tokio::task::spawn_blocking(move || source.join());
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                tracing::warn!(
                    "the Kafka input did not close by the shutdown deadline (server.shutdown_timeout); what it did \
                     not commit is read again at the next start"
                );
            }
        }
        self.admin_stop.cancel();
        let _ = tokio::time::timeout_at(deadline.max(tokio::time::Instant::now() + Duration::from_secs(1)), self.admin)
            .await;
        Ok(report)
    }
}
