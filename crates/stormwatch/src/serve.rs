//! `stormwatch serve`: receivers -> queue -> engine thread -> sink, plus the admin API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stormwatch_io::admin::{serve_admin, AdminApi};
use stormwatch_io::kafka::source::GroupState;
use stormwatch_io::otlp::{serve_grpc, serve_http, Ingest};
use stormwatch_io::server::body::Intake;
use stormwatch_io::server::host::AllowedHosts;
use stormwatch_io::server::ConnectionLimits;
use stormwatch_io::{bind, SourcePosition};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::{open_sink, restore, EngineOptions, Pipeline};
use crate::sharing::SharingOptions;
use crate::ServeArgs;

/// SIGINT (Ctrl-C) and SIGTERM, listened for from the first moment of `serve`: a signal that
/// arrives while the engine is still starting (restoring baselines, joining a group) asks it to
/// stop like any other, instead of killing it with nothing flushed.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn listen() -> anyhow::Result<ShutdownSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
            let terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
            Ok(ShutdownSignals { interrupt, terminate })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignals {})
    }

    /// The next SIGINT or SIGTERM (one that came before this call included).
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Descriptors kept beyond the listeners' connections: snapshots, the alert spool, the tuning
/// file, Kafka clients, the runtime's own.
const FD_RESERVE: u64 = 256;

/// Connections per listener that the open-files limit leaves room for, with [`FD_RESERVE`]
/// descriptors kept aside: `max_connections`, or fewer (with a warning) when the limit is
/// lower than they need. The soft limit is raised to the hard one first, as servers do.
fn fit_connections(max_connections: usize) -> anyhow::Result<usize> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-files limit; assuming 1024");
            1024
        }
    };
    let listeners = stormwatch_io::server::Listener::ALL.len() as u64;
    let per_listener = limit.saturating_sub(FD_RESERVE) / listeners;
    let room = per_listener.saturating_sub(stormwatch_io::server::MOST_CLOSING as u64) as usize;
    if room >= max_connections {
        return Ok(max_connections);
    }
    if room < 16 {
        anyhow::bail!(
            "the open-files limit ({limit}) leaves room for {room} connections per listener after {FD_RESERVE} kept \
             in reserve: raise it (ulimit -n, or LimitNOFILE= in a systemd unit)"
        );
    }
    tracing::warn!(
        open_files_limit = limit,
        server.max_connections = max_connections,
        connections = room,
        "the open-files limit does not leave room for server.max_connections on each listener; serving fewer \
         (raise it with ulimit -n, or lower server.max_connections)"
    );
    Ok(room)
}

/// The token admin API writes need: configured, or read from (first generated into)
/// `<models>/admin.token`, readable by its owner only. Its value is never logged.
fn admin_token(config: &Config) -> anyhow::Result<String> {
    if !config.server.admin_token.is_empty() {
        return Ok(config.server.admin_token.clone());
    }
    let path = config.baseline.models_dir.join(crate::admin::TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            #[cfg(unix)]
            if let Ok(metadata) = std::fs::metadata(&path) {
                let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = %format!("{mode:o}"),
                        "the admin token file can be read by other users: chmod 600 it (or set server.admin_token)"
                    );
                }
            }
            return Ok(token.trim().to_string());
        }
        Ok(_) => anyhow::bail!("{} is empty: delete it to generate a new token", path.display()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)
        .context("cannot read /dev/urandom for the admin token")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(&config.baseline.models_dir)
        .with_context(|| format!("cannot create {}", config.baseline.models_dir.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())?;
    tracing::info!(path = %path.display(), "admin token generated for API writes (stormwatch baseline reads it from there)");
    Ok(token)
}

/// A new engine (nothing learned locally): the group's newest shared snapshot, with the window
/// baselines of the one that has the most window history. `None` when there is none (or it
/// cannot be read: the engine then learns from scratch, and says so).
fn restore_shared(brokers: &str, topic: &str, max_keys: usize) -> Option<stormwatch_baseline::BaselineStore> {
    let snapshots = match stormwatch_io::kafka::baselines::read_snapshots(brokers, topic, Duration::from_secs(60)) {
        Ok(snapshots) => snapshots,
        Err(error) => {
            tracing::warn!(%error, "the group's shared baselines were not read; learning from scratch");
            return None;
        }
    };
    let mut stores = crate::sharing::decode_shared(&snapshots, max_keys, topic);
    let windows_from = stores.iter().enumerate().max_by_key(|(_, (_, s))| s.window_samples()).map(|(i, _)| i)?;
    let windows = stores.remove(windows_from);
    let newest = stores.iter().enumerate().max_by_key(|(_, (_, s))| s.watermark_unix_nano).map(|(i, _)| i);
    let (from, mut store) = match newest {
        Some(i) if stores[i].1.watermark_unix_nano > windows.1.watermark_unix_nano => stores.swap_remove(i),
        _ => return Some(log_restored(topic, windows)),
    };
    tracing::info!(from = %windows.0, "window baselines restored from the group's topic");
    store.adopt_windows(windows.1);
    Some(log_restored(topic, (from, store)))
}

fn log_restored(
    topic: &str,
    (from, store): (String, stormwatch_baseline::BaselineStore),
) -> stormwatch_baseline::BaselineStore {
    tracing::info!(
        %topic,
        from = %from,
        edges = store.edges_tracked(),
        windows = store.window_samples(),
        "no local snapshot: baselines restored from the group's shared snapshots"
    );
    store
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::listen()?;
    let mut config = Config::load(&args.common)?;
    if let Some(addr) = &args.otlp_grpc {
        config.server.otlp_grpc = addr.clone();
    }
    if let Some(addr) = &args.otlp_http {
        config.server.otlp_http = addr.clone();
    }
    if let Some(addr) = &args.admin {
        config.server.admin = addr.clone();
    }
    if let Some(dir) = &args.models {
        config.baseline.models_dir = dir.clone();
    }
    if let Some(file) = &args.alerts_file {
        config.output.alerts_file = file.clone();
    }
    if args.kafka_input {
        config.kafka.input = true;
    }
    if let Some(id) = &args.kafka_instance_id {
        config.kafka.instance_id = id.clone();
    }
    config.validate()?;
    config.limits.apply();
    config.attribution.apply()?;
    if let Ok(token) = std::env::var("STORMWATCH_ADMIN_TOKEN") {
        config.server.admin_token = token;
    }
    if let Ok(token) = std::env::var("STORMWATCH_INGEST_TOKEN") {
        config.server.ingest_token = token;
    }
    if args.print_config {
        let mut shown = config.clone();
        for secret in [&mut shown.server.admin_token, &mut shown.server.ingest_token] {
            if !secret.is_empty() {
                *secret = "<set; not shown>".into();
            }
        }
        for (key, value) in shown.kafka.client.iter_mut() {
            if ["password", "secret", "key", "token"].iter().any(|s| key.contains(s)) && !key.ends_with(".location") {
                *value = "<set; not shown>".into();
            }
        }
        print!("{}", toml::to_string(&shown).context("cannot print the configuration")?);
        return Ok(());
    }

    stormwatch_io::kafka::set_client_settings(config.kafka.client.clone().into_iter().collect());
    // Everything that can fail on bad settings fails here, before any data is accepted.
    let grpc_addr: SocketAddr = config.server.otlp_grpc.parse()?;
    let http_addr: SocketAddr = config.server.otlp_http.parse()?;
    let admin_addr: SocketAddr = config.server.admin.parse()?;
    let mut store = restore(&config.baseline.models_dir, &config)?;
    let admin_token = admin_token(&config)?;
    let tls = config.server.tls.server_configs()?;
    // The security engineers' tuning: a bad file stops the start; a bad edit later is refused.
    let tuning_path = config.baseline.models_dir.join(crate::tuning::TUNING_FILE);
    let tuning = crate::tuning::load(&tuning_path).map_err(anyhow::Error::msg)?.unwrap_or_default();
    tracing::info!(path = %tuning_path.display(), tuning = %crate::tuning::describe(&tuning), "tuning in force");
    let engine_id = if config.kafka.instance_id.is_empty() {
        format!("engine-{}-{:x}", std::process::id(), stormwatch_model::wall_clock_nanos())
    } else {
        config.kafka.instance_id.clone()
    };
    let baselines_topic = config.baselines_topic();
    if let Some(topic) = &baselines_topic {
        stormwatch_io::kafka::ensure_topic(
            &config.kafka.brokers,
            topic,
            1,
            &stormwatch_io::kafka::baselines::TOPIC_SETTINGS,
        )
        .await
        .context("kafka.baselines_topic")?;
        if store.edges_tracked() == 0 && store.window_samples() == 0 {
            let (brokers, topic, max_keys) = (config.kafka.brokers.clone(), topic.clone(), config.baseline.max_keys);
            if let Some(shared) =
                tokio::task::spawn_blocking(move || restore_shared(&brokers, &topic, max_keys)).await?
            {
                store = shared;
            }
        }
    }
    let alerts_file = (!config.output.alerts_file.is_empty()).then(|| Path::new(&config.output.alerts_file));
    let sink = open_sink(&config, config.output.stdout, alerts_file).await?;
    let grpc_listener = bind(grpc_addr, "OTLP/gRPC", "--otlp-grpc").await?;
    let http_listener = bind(http_addr, "OTLP/HTTP", "--otlp-http").await?;
    let admin_listener = bind(admin_addr, "the admin API", "--admin").await?;
    tracing::info!(
        otlp_grpc = %grpc_listener.local_addr()?,
        otlp_http = %http_listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        console = %format!(
            "{}://{}/",
            if config.server.tls.enabled() && config.server.tls.admin { "https" } else { "http" },
            admin_listener.local_addr()?
        ),
        alerts = %sink.describe(),
        learning_min_samples = config.baseline.learning_min_samples,
        "stormwatch serving"
    );

    let group = Arc::new(GroupState::default());
    let windows_topic = config.windows_topic();
    let sharing = if let Some(topic) = &windows_topic {
        stormwatch_io::kafka::ensure_topic(&config.kafka.brokers, topic, 1, &[])
            .await
            .context("kafka.windows_topic")?;
        Some(SharingOptions {
            sender: engine_id.clone(),
            group: group.clone(),
            topic: topic.clone(),
            merge_timeout: config.kafka.window_merge_timeout,
            top_k: config.engine().window.top_k,
        })
    } else {
        None
    };
    let reload = Arc::new(std::sync::atomic::AtomicBool::new(false));
    #[cfg(unix)]
    {
        let reload = reload.clone();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the tuning");
                reload.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    // With Kafka, alerts the broker does not take wait on disk.
    let spool = if config.kafka.brokers.is_empty() {
        None
    } else {
        let dir = match &config.output.spool_dir {
            dir if dir.as_os_str().is_empty() => config.baseline.models_dir.join("alert-spool"),
            dir => dir.clone(),
        };
        let spool = stormwatch_io::spool::AlertSpool::open(&dir, config.output.spool_max_bytes)
            .with_context(|| format!("cannot open the alert spool {} (output.spool_dir)", dir.display()))?;
        Some(spool)
    };
    let (commits_tx, commits_rx) = std::sync::mpsc::channel();
    let (queries_tx, queries_rx) = std::sync::mpsc::channel();
    let live = stormwatch_io::admin::live_events();
    let (pipeline, queue) = Pipeline::start(
        config.engine(),
        store,
        sink,
        (config.server.queue_capacity, config.server.queue_max_spans),
        EngineOptions {
            idle_fallback: Some(config.assemble.trace_idle),
            snapshot: Some((config.baseline.models_dir.clone(), Some(config.baseline.snapshot_interval))),
            commits: config.kafka.input.then_some(commits_tx),
            sharing,
            share_baselines: baselines_topic.clone().map(|topic| (topic, engine_id.clone())),
            queries: Some(queries_rx),
            tuning: crate::runtime::TuningOptions {
                initial: tuning,
                watch: Some(crate::tuning::TuningWatch::new(tuning_path)),
                reload,
            },
            deliver_until_acknowledged: true,
            spool,
            metrics_top_edges: config.server.metrics_top_edges,
            live: Some(live.clone()),
        },
    );
    let metrics = pipeline.metrics.clone();
    let mut sources = Vec::new();
    if config.kafka.input {
        use stormwatch_io::kafka::source::{KafkaSource, SourceConfig};
        use stormwatch_io::SourceTopic;
        let input_config = SourceConfig {
            brokers: config.kafka.brokers.clone(),
            topic: config.kafka.input_topic.clone(),
            group_id: config.kafka.group_id.clone(),
            encoding: stormwatch_io::kafka::source::InputEncoding::parse(&config.kafka.input_encoding)
                .context("kafka.input_encoding")?,
            dead_letter_topic: (!config.kafka.dead_letter_topic.is_empty())
                .then(|| config.kafka.dead_letter_topic.clone()),
            instance_id: (!config.kafka.instance_id.is_empty()).then(|| config.kafka.instance_id.clone()),
            role: SourceTopic::Input,
            baselines_topic: baselines_topic.clone(),
        };
        // Settled positions from the sink, to the source of their topic.
        let (input_tx, input_rx) = std::sync::mpsc::channel();
        let (windows_tx, windows_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("stormwatch-commits".into()).spawn(move || {
            for positions in commits_rx {
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
    }

    let receivers_stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let server = &config.server;
    let intake = Intake::new(server.max_receiving_bytes, server.body_timeout, server.min_body_rate, metrics.clone());
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
        Some([grpc, http, admin]) => [Some(grpc), Some(http), config.server.tls.admin.then_some(admin)],
        None => [None, None, None],
    };
    let mut receivers = tokio::task::JoinSet::new();
    receivers.spawn({
        let (ingest, limits, stop) = (ingest.clone(), limits.clone(), receivers_stop.clone());
        async move {
            serve_grpc(grpc_listener, grpc_tls, ingest, &limits, stop).await.context("OTLP/gRPC receiver failed")
        }
    });
    receivers.spawn({
        let (hosts, limits, stop) = (hosts.clone(), limits.clone(), receivers_stop.clone());
        async move {
            serve_http(http_listener, http_tls, ingest, hosts, &limits, stop).await.context("OTLP/HTTP receiver failed")
        }
    });
    let api = AdminApi {
        metrics: metrics.clone(),
        queries: Some(queries_tx),
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
        let stop = admin_stop.clone();
        async move { serve_admin(admin_listener, admin_tls, api, &limits, stop).await }
    });

    let mut failure = None;
    tokio::select! {
        _ = signals.recv() => tracing::info!("shutting down: flushing traces, alerts and the baseline snapshot"),
        Some(result) = receivers.join_next() => {
            failure = Some(match result {
                Ok(Ok(())) => anyhow::anyhow!("a receiver stopped unexpectedly"),
                Ok(Err(error)) => error,
                Err(join) => anyhow::anyhow!("a receiver panicked: {join}"),
            });
        }
    }
    // A second Ctrl-C (or SIGTERM) skips the flush, e.g. when the alert broker is down and
    // delivery is still being retried.
    tokio::spawn(async move {
        signals.recv().await;
        eprintln!("stormwatch: second signal: exiting without flushing");
        std::process::exit(130);
    });
    // The shutdown is bounded (server.shutdown_timeout): a second before its deadline the sink
    // stops waiting on the broker (what it holds goes to the spool, nothing unsettled is
    // committed), and what has not closed by the deadline is left behind.
    let timeout = config.server.shutdown_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let give_up_at = deadline - Duration::from_secs(1).min(timeout / 4);
    // Stop accepting; once the receivers (and the Kafka source) are gone the queue closes and
    // the engine drains it.
    receivers_stop.cancel();
    let closed = tokio::time::timeout_at(give_up_at, async { while receivers.join_next().await.is_some() {} }).await;
    if closed.is_err() {
        tracing::warn!("connections still open at the shutdown deadline were dropped");
        receivers.abort_all();
        while receivers.join_next().await.is_some() {}
    }
    for source in &sources {
        source.stop();
    }
    let report = pipeline.finish(Some(give_up_at)).await?;
    // The sink is done, so the source has received the last settled positions: it commits them,
    // unless the broker does not answer by the deadline (they are read again at the next start).
    for source in sources {
        let closed = tokio::task::spawn_blocking(move || source.join());
        if tokio::time::timeout_at(deadline, closed).await.is_err() {
            tracing::warn!(
                "the Kafka input did not close by the shutdown deadline (server.shutdown_timeout); what it did not \
                 commit is read again at the next start"
            );
        }
    }
    admin_stop.cancel();
    let _ = tokio::time::timeout_at(deadline.max(tokio::time::Instant::now() + Duration::from_secs(1)), admin).await;
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
