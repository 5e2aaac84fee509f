//! `stormwatch serve`: receivers -> queue -> engine thread -> sink, plus the admin API.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use stormwatch_io::admin::serve_admin;
use stormwatch_io::bind;
use stormwatch_io::otlp::{serve_grpc, serve_http, Ingest};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::{open_sink, restore, EngineOptions, Pipeline};
use crate::ServeArgs;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
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
    config.validate()?;
    if args.print_config {
        print!("{}", toml::to_string(&config).context("cannot print the configuration")?);
        return Ok(());
    }

    // Everything that can fail on bad settings fails here, before any data is accepted.
    let grpc_addr: SocketAddr = config.server.otlp_grpc.parse()?;
    let http_addr: SocketAddr = config.server.otlp_http.parse()?;
    let admin_addr: SocketAddr = config.server.admin.parse()?;
    let store = restore(&config.baseline.models_dir, &config)?;
    let alerts_file = (!config.output.alerts_file.is_empty()).then(|| Path::new(&config.output.alerts_file));
    let sink = open_sink(&config, config.output.stdout, alerts_file).await?;
    let grpc_listener = bind(grpc_addr, "OTLP/gRPC", "--otlp-grpc").await?;
    let http_listener = bind(http_addr, "OTLP/HTTP", "--otlp-http").await?;
    let admin_listener = bind(admin_addr, "the admin API", "--admin").await?;
    tracing::info!(
        otlp_grpc = %grpc_listener.local_addr()?,
        otlp_http = %http_listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        alerts = %sink.describe(),
        learning_min_samples = config.baseline.learning_min_samples,
        "stormwatch serving"
    );

    let (commits_tx, commits_rx) = std::sync::mpsc::channel();
    let (pipeline, queue) = Pipeline::start(
        config.engine(),
        store,
        sink,
        config.server.queue_capacity,
        EngineOptions {
            idle_fallback: Some(config.assemble.trace_idle),
            snapshot: Some((config.baseline.models_dir.clone(), Some(config.baseline.snapshot_interval))),
            commits: config.kafka.input.then_some(commits_tx),
        },
    );
    let metrics = pipeline.metrics.clone();
    let source = if config.kafka.input {
        let source_config = stormwatch_io::kafka::source::SourceConfig {
            brokers: config.kafka.brokers.clone(),
            topic: config.kafka.input_topic.clone(),
            group_id: config.kafka.group_id.clone(),
            encoding: stormwatch_io::kafka::source::InputEncoding::parse(&config.kafka.input_encoding)
                .context("kafka.input_encoding")?,
            dead_letter_topic: (!config.kafka.dead_letter_topic.is_empty())
                .then(|| config.kafka.dead_letter_topic.clone()),
            instance_id: (!config.kafka.instance_id.is_empty()).then(|| config.kafka.instance_id.clone()),
        };
        let (queue, metrics) = (queue.clone(), metrics.clone());
        let source = tokio::task::spawn_blocking(move || {
            stormwatch_io::kafka::source::KafkaSource::start(source_config, queue, commits_rx, metrics)
        })
        .await??;
        tracing::info!(
            topic = %config.kafka.input_topic,
            group = %config.kafka.group_id,
            encoding = %config.kafka.input_encoding,
            "consuming spans from Kafka"
        );
        Some(source)
    } else {
        None
    };

    let receivers_stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let ingest = Ingest { queue, metrics: metrics.clone(), max_message_bytes: config.server.max_message_bytes };
    let mut receivers = tokio::task::JoinSet::new();
    receivers.spawn({
        let (ingest, stop) = (ingest.clone(), receivers_stop.clone());
        async move { serve_grpc(grpc_listener, ingest, stop).await.context("OTLP/gRPC receiver failed") }
    });
    receivers.spawn({
        let stop = receivers_stop.clone();
        async move { serve_http(http_listener, ingest, stop).await.context("OTLP/HTTP receiver failed") }
    });
    let admin = tokio::spawn(serve_admin(admin_listener, metrics.clone(), admin_stop.clone()));

    let mut failure = None;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down: flushing traces, alerts and the baseline snapshot"),
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
    tokio::spawn(async {
        shutdown_signal().await;
        eprintln!("stormwatch: second signal: exiting without flushing");
        std::process::exit(130);
    });
    // Stop accepting; once the receivers (and the Kafka source) are gone the queue closes and
    // the engine drains it.
    receivers_stop.cancel();
    while receivers.join_next().await.is_some() {}
    if let Some(source) = &source {
        source.stop();
    }
    let report = pipeline.finish().await?;
    // The sink is done, so the source has received the last settled positions.
    if let Some(source) = source {
        tokio::task::spawn_blocking(move || source.join()).await?;
    }
    admin_stop.cancel();
    let _ = admin.await;
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
