//! The runtime shared by `serve` and `replay`: one engine thread that owns assembly,
//! detection and the baselines (so learning needs no locks and is deterministic), fed by the
//! bounded span queue, sending alerts to one sink task (`delivery.rs`).
//!
//! Shutdown follows the pipeline: when every queue sender is gone the engine thread drains
//! the queue, flushes buffered traces and open incidents, writes the snapshot and closes the
//! alert channel; the sink task then writes what is left and ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::Path;

use stormwatch_baseline::{encode_snapshot, load_snapshot, write_snapshot_document, BaselineStore};
use stormwatch_detect::{Engine, EngineConfig, EngineStats};
use stormwatch_io::kafka::KafkaAlertSink;
use stormwatch_io::sink::AlertSink;
use stormwatch_io::{span_queue, Batch, Metrics, SourcePosition, SpanQueue, SpanReceiver};
use stormwatch_model::{wall_clock_nanos, Alert};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::{run_sink, SinkItem};
use crate::sharing::{SharingOptions, WindowSharing};

/// The running engine thread and sink task. Spans go in through the [`SpanQueue`] returned
/// with it; once every clone of that queue is dropped, [`Pipeline::finish`] drains and stops.
pub(crate) struct Pipeline {
    pub(crate) metrics: Arc<Metrics>,
    engine: std::thread::JoinHandle<EngineReport>,
    sink: tokio::task::JoinHandle<()>,
    /// Cancelled when a shutdown's deadline passes: the sink stops waiting on the broker.
    give_up: CancellationToken,
}

impl Pipeline {
    pub(crate) fn start(
        mut config: EngineConfig,
        store: BaselineStore,
        sink: AlertSink,
        (queue_capacity, queue_max_spans): (usize, usize),
        mut options: EngineOptions,
    ) -> (Pipeline, SpanQueue) {
        let metrics = Arc::new(Metrics::default());
        config.share_windows = options.sharing.is_some();
        let (queue, receiver) = span_queue(queue_capacity, queue_max_spans);
        let (alerts_tx, alerts_rx) = mpsc::channel(256);
        let commits = options.commits.clone();
        let attempts = if options.deliver_until_acknowledged { u32::MAX } else { 5 };
        let spool = options.spool.take();
        let engine = spawn_engine(config, store, receiver, alerts_tx, metrics.clone(), options);
        let give_up = CancellationToken::new();
        let sink = tokio::spawn(run_sink(sink, alerts_rx, commits, attempts, spool, metrics.clone(), give_up.clone()));
        (Pipeline { metrics, engine, sink, give_up }, queue)
    }

    /// Waits until the engine drained the queue (every sender must be gone), flushed and
    /// snapshotted, and the sink wrote the last alerts. With `give_up_at`, the sink stops
    /// waiting on the broker then: alerts it does not hold confirmed go to the spool (or are
    /// counted as failed without one), window partials and shared snapshots are dropped, and
    /// nothing after them is committed.
    pub(crate) async fn finish(self, give_up_at: Option<tokio::time::Instant>) -> anyhow::Result<EngineReport> {
        if let Some(at) = give_up_at {
            let give_up = self.give_up.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                give_up.cancel();
            });
        }
        let engine = self.engine;
        let report = tokio::task::spawn_blocking(move || engine.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
        self.sink.await?;
        Ok(report)
    }
}

/// Kafka when brokers are configured, else JSON lines to stdout and/or `file`.
pub(crate) async fn open_sink(config: &Config, stdout: bool, file: Option<&Path>) -> anyhow::Result<AlertSink> {
    if config.kafka.brokers.is_empty() {
        return Ok(AlertSink::lines(stdout, file).await?);
    }
    let kafka = KafkaAlertSink::connect(&config.kafka.brokers, &config.kafka.alert_topic).await?;
    Ok(AlertSink::Kafka(kafka))
}

/// The baselines restored from `dir`, or empty ones; a corrupt or old snapshot is an error.
pub(crate) fn restore(dir: &Path, config: &Config) -> anyhow::Result<BaselineStore> {
    match load_snapshot(dir, config.baseline.max_keys)? {
        Some(store) => {
            tracing::info!(
                path = %dir.join(stormwatch_baseline::SNAPSHOT_FILE).display(),
                edges = store.edges_tracked(),
                "baselines restored"
            );
            Ok(store)
        }
        None => {
            tracing::info!(dir = %dir.display(), "no baseline snapshot yet; learning from scratch");
            Ok(BaselineStore::new(config.baseline.max_keys))
        }
    }
}

/// How the engine thread runs. The default is a replay's: no idle fallback, no snapshot, no
/// Kafka, no admin queries, delivery that gives up after a few attempts.
#[derive(Default)]
pub(crate) struct EngineOptions {
    /// Live mode: when no span arrived for this long (wall clock), event time is advanced by
    /// the wall time that passed, so a quiet stream still completes its traces.
    pub(crate) idle_fallback: Option<Duration>,
    /// Where and how often to snapshot the baselines; also written at the end.
    pub(crate) snapshot: Option<(PathBuf, Option<Duration>)>,
    /// Kafka input: where the sink sends settled positions, once the alerts before them are
    /// acknowledged.
    pub(crate) commits: Option<std::sync::mpsc::Sender<Vec<SourcePosition>>>,
    /// Kafka consumer group: ship closed windows to the windows topic and, while this engine
    /// holds it, merge and judge the group's windows.
    pub(crate) sharing: Option<SharingOptions>,
    /// Kafka consumer group: publish every snapshot to this compacted topic, keyed by this
    /// engine (topic, key).
    pub(crate) share_baselines: Option<(String, String)>,
    /// Questions from the admin API, answered between batches.
    pub(crate) queries: Option<std::sync::mpsc::Receiver<stormwatch_io::admin::AdminQuery>>,
    /// The tuning in force at start, and the file to reload it from.
    pub(crate) tuning: TuningOptions,
    /// Retry a failing alert delivery until it succeeds (serve: nothing accepted is lost, the
    /// back-pressure reaches the inputs), rather than give up after a few attempts (replay).
    pub(crate) deliver_until_acknowledged: bool,
    /// Alerts the broker does not take go to this spool on disk (serve with Kafka), so the
    /// engine keeps judging through an outage and a restart delivers them.
    pub(crate) spool: Option<stormwatch_io::spool::AlertSpool>,
    /// `/metrics` shows this many top edges by load and as many by anomaly (0: none).
    pub(crate) metrics_top_edges: usize,
    /// Each alert and each judged window, for the admin API's `/api/events` streams.
    pub(crate) live: Option<stormwatch_io::admin::LiveEvents>,
}

/// The tuning at start, and how it is reloaded.
#[derive(Default)]
pub(crate) struct TuningOptions {
    pub(crate) initial: stormwatch_detect::tuning::Tuning,
    /// Reloaded when it changes (checked every 2 s) or when `reload` is set (SIGHUP).
    pub(crate) watch: Option<crate::tuning::TuningWatch>,
    pub(crate) reload: Arc<std::sync::atomic::AtomicBool>,
}

/// What the engine did, for the replay summary and the shutdown log.
pub(crate) struct EngineReport {
    pub(crate) stats: EngineStats,
    pub(crate) spans_accepted: u64,
    pub(crate) late_spans: u64,
    pub(crate) traces_evicted: u64,
    pub(crate) edges_tracked: usize,
    pub(crate) snapshot_error: Option<String>,
}

fn publish(engine: &Engine, receiver: &SpanReceiver, metrics: &Metrics, top_edges: usize) {
    for (counter, count) in metrics.findings.iter().zip(engine.stats().findings) {
        Metrics::set(counter, count);
    }
    // The dashboard's edges, when a new window was judged.
    if top_edges > 0 && engine.last_window_end() != Metrics::get(&metrics.edges_window_end) {
        let series = engine
            .edge_gauges(top_edges)
            .into_iter()
            .map(|g| stormwatch_io::EdgeSeries {
                from_service: g.edge.from.service.to_string(),
                from_operation: g.edge.from.operation.to_string(),
                to_service: g.edge.to.service.to_string(),
                to_operation: g.edge.to.operation.to_string(),
                to_kind: g.edge.to.kind.as_str().to_string(),
                calls_per_second: (g.calls_per_second * 1000.0).round() / 1000.0,
                calls_per_entry: (g.calls_per_entry * 1000.0).round() / 1000.0,
                p99_per_entry: (g.p99_per_entry * 1000.0).round() / 1000.0,
                score: (g.score * 1000.0).round() / 1000.0,
            })
            .collect();
        *metrics.edges.lock().unwrap_or_else(|e| e.into_inner()) = series;
        Metrics::set(&metrics.edges_window_end, engine.last_window_end());
    }
    Metrics::set(&metrics.queue_depth, receiver.depth() as u64);
    Metrics::set(&metrics.queue_spans, receiver.spans() as u64);
    let a = engine.assembler_stats();
    Metrics::set(&metrics.late_spans_total, a.late_spans);
    Metrics::set(&metrics.bad_timestamp_spans_total, a.bad_timestamp_spans);
    Metrics::set(&metrics.clock_skew_spans_total, a.clock_skew_spans);
    Metrics::set(&metrics.traces_completed_total, a.traces_completed);
    Metrics::set(&metrics.traces_evicted_total, a.traces_evicted);
    Metrics::set(&metrics.traces_max_wait_total, a.traces_max_wait);
    Metrics::set(&metrics.traces_without_root_total, a.traces_without_root);
    Metrics::set(&metrics.windows_closed_total, engine.stats().windows_closed);
    Metrics::set(&metrics.window_late_traces_total, engine.stats().window_late_traces);
    Metrics::set(&metrics.in_flight_spans, engine.assembler().in_flight_spans() as u64);
    Metrics::set(&metrics.in_flight_traces, engine.assembler().in_flight_traces() as u64);
    Metrics::set(&metrics.edges_tracked, engine.store().edges_tracked() as u64);
    Metrics::set(&metrics.baseline_capped_observations_total, engine.store().stats().capped_observations);
    Metrics::set(&metrics.baseline_evicted_total, engine.store().stats().evicted_young);
    Metrics::set(&metrics.watermark_seconds, engine.assembler().watermark() / 1_000_000_000);
    Metrics::set(&metrics.findings_suppressed_total, engine.stats().suppressed);
    for (gauge, count) in metrics.alerts_shadowed.iter().zip(engine.stats().shadowed) {
        Metrics::set(gauge, count);
    }
}

/// Writes an encoded snapshot of `engine`'s baselines to the models directory.
fn snapshot(engine: &Engine, document: &[u8], dir: &std::path::Path, metrics: &Metrics) -> Result<(), String> {
    match write_snapshot_document(dir, document) {
        Ok(path) => {
            Metrics::add(&metrics.snapshots_written_total, 1);
            tracing::debug!(path = %path.display(), edges = engine.store().edges_tracked(), "baseline snapshot written");
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, "baseline snapshot failed");
            Err(error.to_string())
        }
    }
}

/// This engine became its group's window merger: continue from the window baselines of the
/// shared snapshot with the most window history, when it has more than this engine's own.
fn adopt_window_baselines(engine: &mut Engine, snapshots: &[(String, Vec<u8>)]) {
    let best = crate::sharing::decode_shared(snapshots, engine.store().max_keys(), "the group's baselines topic")
        .into_iter()
        .max_by_key(|(_, store)| store.window_samples());
    if let Some((from, store)) = best {
        if store.window_samples() > engine.store().window_samples() {
            tracing::info!(from = %from, windows = store.window_samples(), "window baselines adopted from the previous merger");
            engine.adopt_windows(store);
        }
    }
}

/// Starts the engine thread.
fn spawn_engine(
    config: EngineConfig,
    store: BaselineStore,
    receiver: SpanReceiver,
    alerts: mpsc::Sender<SinkItem>,
    metrics: Arc<Metrics>,
    options: EngineOptions,
) -> std::thread::JoinHandle<EngineReport> {
    std::thread::Builder::new()
        .name("stormwatch-engine".into())
        .spawn(move || run_engine(config, store, receiver, alerts, metrics, options))
        .expect("cannot start the engine thread")
}

fn run_engine(
    config: EngineConfig,
    store: BaselineStore,
    receiver: SpanReceiver,
    alerts_tx: mpsc::Sender<SinkItem>,
    metrics: Arc<Metrics>,
    options: EngineOptions,
) -> EngineReport {
    let window_nanos = config.window.window_nanos;
    let mut engine = Engine::new(config, store, wall_clock_nanos);
    let TuningOptions { initial, watch: mut tuning_watch, reload } = options.tuning;
    engine.set_tuning(initial);
    let mut last_tuning_check = Instant::now();
    let mut sharing = options.sharing.map(|sharing| WindowSharing::new(sharing, window_nanos));
    let ship = |engine: &mut Engine, sharing: &mut Option<WindowSharing>, idle: bool| {
        if let Some(sharing) = sharing {
            if let Some(payload) = sharing.ship(engine, idle, &metrics) {
                let (topic, key) = (sharing.topic().to_string(), sharing.sender().to_string());
                let _ = alerts_tx.blocking_send(SinkItem::Partials { topic, key, payload });
            }
        }
    };
    // The baselines encoded once, then written to the models directory and, in a Kafka group,
    // shared. `None` when neither is configured.
    let save = |engine: &Engine, dir: Option<&std::path::Path>| -> Option<Result<(), String>> {
        if dir.is_none() && options.share_baselines.is_none() {
            return None;
        }
        let document = encode_snapshot(engine.store());
        let written = dir.map(|dir| snapshot(engine, &document, dir, &metrics));
        if let Some((topic, key)) = &options.share_baselines {
            let (topic, key) = (topic.clone(), key.clone());
            let _ = alerts_tx.blocking_send(SinkItem::Snapshot { topic, key, payload: document });
        }
        written
    };
    let mut alerts = Vec::new();
    // The last alerts, for the admin API's /api/alerts and /api/explain.
    let mut recent: std::collections::VecDeque<serde_json::Value> = std::collections::VecDeque::new();
    let mut last_activity = Instant::now();
    let mut watermark_at_activity = 0;
    let mut last_snapshot = Instant::now();
    let mut last_publish = Instant::now();
    let mut snapshot_error = None;
    let keep = options.queries.is_some();
    let live = options.live.clone();
    // The last judged window the live streams were told of.
    let mut window_told = 0;
    let send = |alerts: &mut Vec<Alert>, recent: &mut std::collections::VecDeque<serde_json::Value>| {
        if keep {
            for alert in alerts.iter() {
                if recent.len() == crate::admin::RECENT_ALERTS {
                    recent.pop_front();
                }
                let value = serde_json::to_value(alert).unwrap_or_default();
                if let Some(live) = live.as_ref().filter(|l| l.receiver_count() > 0) {
                    let _ = live.send(stormwatch_io::admin::LiveEvent { name: "alert", data: value.to_string() });
                }
                recent.push_back(value);
            }
        }
        if !alerts.is_empty() {
            // Blocks when the sink is behind: back-pressure reaches the span queue, then the
            // receivers, which answer "retry later".
            let _ = alerts_tx.blocking_send(SinkItem::Alerts(std::mem::take(alerts)));
        }
    };
    // Kafka input positions in processing order, with the watermark they were processed at.
    let mut pending: std::collections::VecDeque<(SourcePosition, u64)> = std::collections::VecDeque::new();
    let horizon = engine.settle_horizon();
    loop {
        match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(first)) => {
                let (mut processed, mut input) = (0, false);
                // Drain what is already waiting (up to 64 more) before doing periodic work.
                let waiting = std::iter::from_fn(|| receiver.try_recv()).take(64);
                for batch in std::iter::once(first).chain(waiting) {
                    let (spans, position) = match batch {
                        Batch::Snapshots(snapshots) => {
                            adopt_window_baselines(&mut engine, &snapshots);
                            continue;
                        }
                        Batch::Windows { payload, position } => match &mut sharing {
                            Some(sharing) => {
                                sharing.receive(&payload, position);
                                continue;
                            }
                            // Not sharing windows: settled in order like an empty input message.
                            None => (Vec::new(), Some(position)),
                        },
                        Batch::Spans { spans, position } => (spans, position),
                    };
                    input = true;
                    processed += spans.len() as u64;
                    engine.push(spans, &mut alerts);
                    if let Some(position) = position {
                        pending.push_back((position, engine.assembler().watermark()));
                    }
                }
                Metrics::add(&metrics.spans_processed_total, processed);
                // Other engines' partials are not input: the idle fallback still runs.
                if input {
                    last_activity = Instant::now();
                    watermark_at_activity = engine.assembler().watermark();
                }
            }
            Ok(None) => {}
            Err(_disconnected) => break,
        }
        if let Some(idle) = options.idle_fallback {
            let quiet = last_activity.elapsed();
            // Also while incidents or windows are open, so a throttled summary or a window's
            // verdict is not held back until the next span arrives.
            let waiting = engine.assembler().in_flight_traces() > 0
                || engine.open_incidents() > 0
                || engine.open_windows() > 0
                || !pending.is_empty();
            if quiet >= idle && waiting {
                engine.advance_to(watermark_at_activity + quiet.as_nanos() as u64, &mut alerts);
            }
        }
        if let Some(sharing) = &mut sharing {
            sharing.judge(&mut engine, &mut alerts, &metrics);
        }
        let idle = engine.assembler().in_flight_traces() == 0
            && engine.open_windows() == 0
            && options.idle_fallback.is_some_and(|idle| last_activity.elapsed() >= idle);
        ship(&mut engine, &mut sharing, idle);
        engine.note_cardinality(&stormwatch_model::Cardinality::global().state(), &mut alerts);
        send(&mut alerts, &mut recent);
        if let Some(live) = &live {
            let end = engine.last_window_end();
            if end != window_told {
                window_told = end;
                let data = serde_json::json!({ "window_end": stormwatch_model::rfc3339(end) }).to_string();
                let _ = live.send(stormwatch_io::admin::LiveEvent { name: "window", data });
            }
        }
        // Settled: everything they fed has completed and been judged, and no open incident
        // may still summarise evidence from them. Behind the alerts just sent.
        let watermark = engine.assembler().watermark();
        let incidents_from = engine.oldest_open_incident().unwrap_or(u64::MAX);
        let mut settled = Vec::new();
        while let Some((position, at)) = pending.front() {
            let done = at.saturating_add(horizon);
            if done > watermark || incidents_from <= done {
                break;
            }
            settled.push(*position);
            pending.pop_front();
        }
        if let Some(sharing) = &mut sharing {
            settled.extend(sharing.settled(incidents_from));
        }
        if !settled.is_empty() {
            let _ = alerts_tx.blocking_send(SinkItem::Settled(settled));
        }
        if let Some(watch) = &mut tuning_watch {
            let forced = reload.swap(false, std::sync::atomic::Ordering::Relaxed);
            if forced || last_tuning_check.elapsed() >= Duration::from_secs(2) {
                last_tuning_check = Instant::now();
                match watch.poll(forced) {
                    Some(Ok(tuning)) => {
                        tracing::info!(path = %watch.path().display(), tuning = %crate::tuning::describe(&tuning), "tuning reloaded");
                        engine.set_tuning(tuning);
                        Metrics::add(&metrics.tuning_reloads_total, 1);
                    }
                    Some(Err(error)) => {
                        tracing::error!(%error, "tuning edit refused; the previous tuning stays in force");
                        Metrics::add(&metrics.tuning_reload_failures_total, 1);
                    }
                    None => {}
                }
            }
        }
        if let Some(queries) = &options.queries {
            while let Ok(query) = queries.try_recv() {
                crate::admin::answer(&mut engine, query, tuning_watch.as_mut(), &recent);
            }
        }
        if last_publish.elapsed() >= Duration::from_millis(200) {
            publish(&engine, &receiver, &metrics, options.metrics_top_edges);
            last_publish = Instant::now();
        }
        if let Some((dir, Some(interval))) = &options.snapshot {
            if last_snapshot.elapsed() >= *interval {
                snapshot_error = save(&engine, Some(dir)).and_then(Result::err);
                last_snapshot = Instant::now();
            }
        }
    }
    engine.flush(&mut alerts);
    // The last windows, and "closed through the end": the merger need not wait for this engine.
    ship(&mut engine, &mut sharing, true);
    send(&mut alerts, &mut recent);
    // Flushed: every trace completed, every window judged, every incident summarised.
    if !pending.is_empty() {
        let _ = alerts_tx.blocking_send(SinkItem::Settled(pending.drain(..).map(|(p, _)| p).collect()));
    }
    let dir = options.snapshot.as_ref().map(|(dir, _)| dir.as_path());
    if let Some(written) = save(&engine, dir) {
        snapshot_error = written.err();
    }
    publish(&engine, &receiver, &metrics, options.metrics_top_edges);
    let assembler = engine.assembler_stats();
    EngineReport {
        stats: engine.stats().clone(),
        spans_accepted: assembler.spans_accepted,
        late_spans: assembler.late_spans,
        traces_evicted: assembler.traces_evicted,
        edges_tracked: engine.store().edges_tracked(),
        snapshot_error,
    }
}
