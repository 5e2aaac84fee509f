//! The engine thread: one [`Engine`] that owns assembly, detection and the baselines (so
//! learning needs no locks and is deterministic), fed by the bounded span queue. Each turn of
//! [`EngineLoop::run`] drains what waits in the queue, then does the periodic work in named
//! steps: the idle fallback, the group's windows, alerts to the sink, settled positions,
//! tuning reloads, admin questions, `/metrics` and snapshots.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stormwatch_baseline::BaselineStore;
use stormwatch_detect::{Engine, EngineConfig};
use stormwatch_io::admin::{AdminRequest, LiveEvent};
use stormwatch_io::{Batch, EdgeSeries, Metrics, SourcePosition, SourceTopic, SpanReceiver};
use stormwatch_model::{wall_clock_nanos, Alert};
use tokio::sync::mpsc;

use crate::delivery::SinkItem;
use crate::pipeline::{EngineOptions, EngineReport, TuningOptions};
use crate::saving::{Destinations, Saver};
use crate::sharing::WindowSharing;
use crate::tuning::TuningWatch;

/// How long the engine waits for a batch before doing its periodic work anyway.
const POLL: Duration = Duration::from_millis(100);
/// Batches drained after the first before the periodic work runs.
const DRAIN_MAX: usize = 64;
/// How often the tuning file is checked for changes.
const TUNING_CHECK: Duration = Duration::from_secs(2);
/// How often `/metrics` gauges are refreshed from the engine.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// How often a problem of the input (traces split across partitions, spans without a
/// service) is logged, at most.
const TOLD_EVERY: Duration = Duration::from_secs(60);

/// Starts the engine thread.
pub(crate) fn spawn(
    config: EngineConfig,
    store: BaselineStore,
    receiver: SpanReceiver,
    alerts: mpsc::Sender<SinkItem>,
    metrics: Arc<Metrics>,
    options: EngineOptions,
) -> std::thread::JoinHandle<EngineReport> {
    std::thread::Builder::new()
        .name("stormwatch-engine".into())
        .spawn(move || EngineLoop::new(config, store, receiver, alerts, metrics, options).run())
        .expect("cannot start the engine thread")
}

/// The engine thread's state between turns.
struct EngineLoop {
    engine: Engine,
    receiver: SpanReceiver,
    sink: mpsc::Sender<SinkItem>,
    metrics: Arc<Metrics>,
    options: EngineOptions,
    sharing: Option<WindowSharing>,
    tuning_watch: Option<TuningWatch>,
    reload: Arc<AtomicBool>,
    /// Alerts found this turn, not yet handed to the sink.
    alerts: Vec<Alert>,
    /// Kafka input positions in processing order, with the watermark they were processed at.
    pending: VecDeque<(SourcePosition, u64)>,
    last_activity: Instant,
    watermark_at_activity: u64,
    last_tuning_check: Instant,
    last_snapshot: Instant,
    last_publish: Instant,
    /// Snapshots (periodic, the last, exports) are encoded and written on its thread.
    saver: Saver,
    /// The last judged window the live streams were told of.
    window_told: u64,
    /// Traces split across input partitions already logged.
    splits_told: Told,
    /// Spans without a service already logged.
    services_told: Told,
}

impl EngineLoop {
    fn new(
        config: EngineConfig,
        store: BaselineStore,
        receiver: SpanReceiver,
        sink: mpsc::Sender<SinkItem>,
        metrics: Arc<Metrics>,
        mut options: EngineOptions,
    ) -> EngineLoop {
        let window_nanos = config.window.window_nanos;
        let mut engine = Engine::new(config, store, wall_clock_nanos);
        let TuningOptions { initial, watch, reload } = std::mem::take(&mut options.tuning);
        if let Some(view) = &options.view {
            view.set_tuning(&initial);
            view.attach(&metrics);
        }
        engine.set_tuning(initial);
        let sharing = options.sharing.take().map(|sharing| WindowSharing::new(sharing, window_nanos));
        let now = Instant::now();
        let saver = Saver::new(Destinations {
            dir: options.snapshot.as_ref().map(|(dir, _)| dir.clone()),
            share: options.share_baselines.clone(),
            sink: sink.clone(),
            metrics: metrics.clone(),
        });
        EngineLoop {
            engine,
            receiver,
            sink,
            metrics,
            options,
            sharing,
            tuning_watch: watch,
            reload,
            alerts: Vec::new(),
            pending: VecDeque::new(),
            last_activity: now,
            watermark_at_activity: 0,
            last_tuning_check: now,
            last_snapshot: now,
            last_publish: now,
            saver,
            window_told: 0,
            splits_told: Told::default(),
            services_told: Told::default(),
        }
    }

    /// Turns until every queue sender is gone, then flushes and reports.
    fn run(mut self) -> EngineReport {
        let horizon = self.engine.settle_horizon();
        loop {
            match self.receiver.recv_timeout(POLL) {
                Ok(Some(first)) => self.drain_input(first),
                Ok(None) => {}
                Err(_disconnected) => break,
            }
            self.tick_idle();
            if let Some(sharing) = &mut self.sharing {
                sharing.judge(&mut self.engine, &mut self.alerts, &self.metrics);
            }
            let idle = self.engine.assembler().in_flight_traces() == 0
                && self.engine.open_windows() == 0
                && self.options.idle_fallback.is_some_and(|idle| self.last_activity.elapsed() >= idle);
            self.ship(idle);
            self.engine.note_cardinality(&stormwatch_model::Cardinality::global().state(), &mut self.alerts);
            self.send_alerts();
            self.tell_window();
            self.settle(horizon);
            self.reload_tuning();
            self.answer_queries();
            self.periodic();
        }
        self.finish()
    }

    /// `first` and what else is already waiting (up to [`DRAIN_MAX`] more), pushed through the
    /// engine before the periodic work.
    fn drain_input(&mut self, first: Batch) {
        let (mut processed, mut input) = (0, false);
        let receiver = &self.receiver;
        let waiting = std::iter::from_fn(|| receiver.try_recv()).take(DRAIN_MAX);
        for batch in std::iter::once(first).chain(waiting) {
            let (spans, position) = match batch {
                Batch::Snapshots(snapshots) => {
                    adopt_window_baselines(&mut self.engine, &snapshots);
                    continue;
                }
                Batch::Windows { payload, position } => match &mut self.sharing {
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
            let partition = position.filter(|p| p.topic == SourceTopic::Input).map(|p| p.partition);
            self.engine.push_from(spans, partition, &mut self.alerts);
            if let Some(position) = position {
                self.pending.push_back((position, self.engine.assembler().watermark()));
            }
        }
        Metrics::add(&self.metrics.spans_processed_total, processed);
        // Other engines' partials are not input: the idle fallback still runs.
        if input {
            self.last_activity = Instant::now();
            self.watermark_at_activity = self.engine.assembler().watermark();
        }
    }

    /// Live mode: when no span arrived for the idle fallback, event time advances by the wall
    /// time that passed, so a quiet stream still completes its traces. Also while incidents or
    /// windows are open, so a throttled summary or a window's verdict is not held back until
    /// the next span arrives.
    fn tick_idle(&mut self) {
        let Some(idle) = self.options.idle_fallback else { return };
        let quiet = self.last_activity.elapsed();
        let engine = &self.engine;
        let waiting = engine.assembler().in_flight_traces() > 0
            || engine.open_incidents() > 0
            || engine.open_windows() > 0
            || !self.pending.is_empty();
        if quiet >= idle && waiting {
            self.engine.advance_to(self.watermark_at_activity + quiet.as_nanos() as u64, &mut self.alerts);
        }
    }

    /// In a Kafka group: this engine's closed windows (or a heartbeat) to the windows topic.
    fn ship(&mut self, idle: bool) {
        let Some(sharing) = &mut self.sharing else { return };
        if let Some(payload) = sharing.ship(&mut self.engine, idle, &self.metrics) {
            let (topic, key) = (sharing.topic().to_string(), sharing.sender().to_string());
            let _ = self.sink.blocking_send(SinkItem::Partials { topic, key, payload });
        }
    }

    /// This turn's alerts, kept for the admin API, told to the live streams and handed to the
    /// sink. Blocks when the sink is behind: back-pressure reaches the span queue, then the
    /// receivers, which answer "retry later".
    fn send_alerts(&mut self) {
        if let Some(view) = &self.options.view {
            view.add_alerts(&self.alerts);
        }
        if let Some(live) = self.options.live.as_ref().filter(|live| live.receiver_count() > 0) {
            for alert in &self.alerts {
                let data = serde_json::to_value(alert).unwrap_or_default().to_string();
                let _ = live.send(LiveEvent { name: "alert", data });
            }
        }
        if !self.alerts.is_empty() {
            let _ = self.sink.blocking_send(SinkItem::Alerts(std::mem::take(&mut self.alerts)));
        }
    }

    /// Tells the live streams when a new window was judged.
    fn tell_window(&mut self) {
        let Some(live) = &self.options.live else { return };
        let end = self.engine.last_window_end();
        if end != self.window_told {
            self.window_told = end;
            let data = serde_json::json!({ "window_end": stormwatch_model::rfc3339(end) }).to_string();
            let _ = live.send(LiveEvent { name: "window", data });
        }
    }

    /// Settled positions to the sink, behind the alerts just sent: everything they fed has
    /// completed and been judged, and no open incident may still summarise evidence from them.
    fn settle(&mut self, horizon: u64) {
        let watermark = self.engine.assembler().watermark();
        let incidents_from = self.engine.oldest_open_incident().unwrap_or(u64::MAX);
        let mut settled = Vec::new();
        while let Some((position, at)) = self.pending.front() {
            let done = at.saturating_add(horizon);
            if done > watermark || incidents_from <= done {
                break;
            }
            settled.push(*position);
            self.pending.pop_front();
        }
        if let Some(sharing) = &mut self.sharing {
            settled.extend(sharing.settled(incidents_from));
        }
        if !settled.is_empty() {
            let _ = self.sink.blocking_send(SinkItem::Settled(settled));
        }
    }

    /// The tuning file, reloaded when it changed (checked every [`TUNING_CHECK`]) or on SIGHUP;
    /// a bad edit is refused and the previous tuning stays in force.
    fn reload_tuning(&mut self) {
        let Some(watch) = &mut self.tuning_watch else { return };
        let forced = self.reload.swap(false, Ordering::Relaxed);
        if !forced && self.last_tuning_check.elapsed() < TUNING_CHECK {
            return;
        }
        self.last_tuning_check = Instant::now();
        match watch.poll(forced) {
            Some(Ok(tuning)) => {
                tracing::info!(path = %watch.path().display(), tuning = %crate::tuning::describe(&tuning), "tuning reloaded");
                if let Some(view) = &self.options.view {
                    view.set_tuning(&tuning);
                }
                self.engine.set_tuning(tuning);
                Metrics::add(&self.metrics.tuning_reloads_total, 1);
            }
            Some(Err(error)) => {
                tracing::error!(%error, "tuning edit refused; the previous tuning stays in force");
                Metrics::add(&self.metrics.tuning_reload_failures_total, 1);
            }
            None => {}
        }
    }

    /// The admin API's writes, answered between batches, and exports, copied for the snapshot
    /// thread; then what the readers of the published view asked for.
    fn answer_queries(&mut self) {
        let view = self.options.view.as_deref();
        if let Some(queries) = &self.options.queries {
            while let Ok(query) = queries.try_recv() {
                if query.request == AdminRequest::Snapshot {
                    self.saver.export(self.engine.store(), query.reply);
                    continue;
                }
                crate::admin::answer(&mut self.engine, query, self.tuning_watch.as_mut(), view);
            }
        }
        if let Some(view) = view {
            view.publish_if_asked(&mut self.engine);
        }
    }

    /// `/metrics` gauges and the periodic snapshot, when due.
    fn periodic(&mut self) {
        if self.last_publish.elapsed() >= PUBLISH_EVERY {
            publish(&self.engine, &self.receiver, &self.metrics, self.options.metrics_top_edges);
            self.last_publish = Instant::now();
            self.tell_input_problems();
        }
        if let Some((_, Some(interval))) = &self.options.snapshot {
            // While the last snapshots are still being written, tried again next turn.
            if self.last_snapshot.elapsed() >= *interval && self.saver.save(self.engine.store()) {
                self.last_snapshot = Instant::now();
            }
        }
    }

    /// What the input's collector got wrong, each logged at most once a minute: spans whose
    /// resource named no service (the collector lost it), and traces split across input
    /// partitions, with an example (the input topic is not partitioned by trace id: rotel's
    /// Kafka exporter, a Collector without `partition_traces_by_id`).
    fn tell_input_problems(&mut self) {
        let stats = self.engine.assembler_stats();
        let lost = stats.services_filled + stats.services_unknown;
        if let Some(since_last) = self.services_told.due(lost) {
            tracing::warn!(
                spans = lost,
                since_last,
                given_their_process_service = stats.services_filled,
                left_unknown = stats.services_unknown,
                "spans arrived whose resource named no service (no service.name): the collector in front lost \
                 their resource (rotel 0.0.1a15 sends the part of an export request it cuts off to fill a batch \
                 of --traces-batch-max-size spans without it; a batch size above what arrives in one batch \
                 timeout avoids the cuts). Each took the service of the process it ran in, from its trace, where \
                 the trace said (left_unknown: the others); see the README's \"Spans without a service\""
            );
        }
        let split = stats.traces_split;
        let Some(since_last) = self.splits_told.due(split) else { return };
        let Some(example) = self.engine.assembler().last_split() else { return };
        tracing::warn!(
            traces_split = split,
            since_last,
            example_trace = %example.trace_id,
            partitions = ?example.sources,
            "Kafka input: spans of one trace arrived on more than one partition, so the input topic is not \
             partitioned by trace id. This engine reads those partitions and assembles such traces whole, but \
             engines sharing the partitions in a group would each judge a part. Key the topic's messages by \
             trace id (the OpenTelemetry Collector's kafka exporter with partition_traces_by_id: true) or give \
             it one partition; see the README's \"Traces split across partitions\""
        );
    }

    /// Every sender is gone: flush traces, windows and incidents, settle what is left, write
    /// the last snapshot.
    fn finish(mut self) -> EngineReport {
        self.engine.flush(&mut self.alerts);
        // The last windows, and "closed through the end": the merger need not wait for this engine.
        self.ship(true);
        self.send_alerts();
        // Flushed: every trace completed, every window judged, every incident summarised.
        if !self.pending.is_empty() {
            let settled = self.pending.drain(..).map(|(position, _)| position).collect();
            let _ = self.sink.blocking_send(SinkItem::Settled(settled));
        }
        let snapshot_error = self.saver.finish(self.engine.store()).and_then(Result::err);
        publish(&self.engine, &self.receiver, &self.metrics, self.options.metrics_top_edges);
        let assembler = self.engine.assembler_stats();
        EngineReport {
            stats: self.engine.stats().clone(),
            spans_accepted: assembler.spans_accepted,
            late_spans: assembler.late_spans,
            traces_evicted: assembler.traces_evicted,
            edges_tracked: self.engine.store().edges_tracked(),
            snapshot_error,
        }
    }
}

/// A count logged at most once a [`TOLD_EVERY`].
#[derive(Default)]
struct Told {
    count: u64,
    at: Option<Instant>,
}

impl Told {
    /// How much `count` grew since it was last told, when that is to be told now.
    fn due(&mut self, count: u64) -> Option<u64> {
        if count == self.count || self.at.is_some_and(|at| at.elapsed() < TOLD_EVERY) {
            return None;
        }
        let since_last = count - self.count;
        *self = Told { count, at: Some(Instant::now()) };
        Some(since_last)
    }
}

/// Refreshes the `/metrics` gauges from the engine.
fn publish(engine: &Engine, receiver: &SpanReceiver, metrics: &Metrics, top_edges: usize) {
    for (counter, count) in metrics.findings.iter().zip(engine.stats().findings) {
        Metrics::set(counter, count);
    }
    // The dashboard's edges, when a new window was judged.
    if top_edges > 0 && engine.last_window_end() != Metrics::get(&metrics.edges_window_end) {
        let series = engine.edge_gauges(top_edges).into_iter().map(edge_series).collect();
        *metrics.edges.lock().unwrap_or_else(|e| e.into_inner()) = series;
        Metrics::set(&metrics.edges_window_end, engine.last_window_end());
    }
    Metrics::set(&metrics.queue_depth, receiver.depth() as u64);
    Metrics::set(&metrics.queue_spans, receiver.spans() as u64);
    let a = engine.assembler_stats();
    Metrics::set(&metrics.late_spans_total, a.late_spans);
    Metrics::set(&metrics.late_spans_dropped_total, a.late_spans_dropped);
    Metrics::set(&metrics.trace_continuations_total, a.continuations);
    Metrics::set(&metrics.consumer_traces_tied_total, engine.stats().consumer_traces_tied);
    Metrics::set(&metrics.lone_slow_requests_total, engine.stats().lone_slow_requests);
    Metrics::set(&metrics.queue_senders, engine.queue_senders() as u64);
    Metrics::set(&metrics.bad_timestamp_spans_total, a.bad_timestamp_spans);
    Metrics::set(&metrics.clock_skew_spans_total, a.clock_skew_spans);
    Metrics::set(&metrics.traces_completed_total, a.traces_completed);
    Metrics::set(&metrics.traces_evicted_total, a.traces_evicted);
    Metrics::set(&metrics.traces_max_wait_total, a.traces_max_wait);
    Metrics::set(&metrics.traces_without_root_total, a.traces_without_root);
    Metrics::set(&metrics.traces_split_across_partitions_total, a.traces_split);
    Metrics::set(&metrics.spans_service_filled_total, a.services_filled);
    Metrics::set(&metrics.spans_service_unknown_total, a.services_unknown);
    Metrics::set(&metrics.windows_closed_total, engine.stats().windows_closed);
    Metrics::set(&metrics.window_late_traces_total, engine.stats().window_late_traces);
    Metrics::set(&metrics.traces_sampled_total, engine.stats().traces_sampled);
    Metrics::set(&metrics.traces_represented_total, engine.stats().traces_represented);
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

/// One edge of the dashboard's top edges, rounded for display.
fn edge_series(gauge: stormwatch_detect::EdgeGauge) -> EdgeSeries {
    let round = |value: f64| stormwatch_model::rounded(value, stormwatch_model::FIGURE_DECIMALS);
    EdgeSeries {
        from_service: gauge.edge.from.service.to_string(),
        from_operation: gauge.edge.from.operation.to_string(),
        to_service: gauge.edge.to.service.to_string(),
        to_operation: gauge.edge.to.operation.to_string(),
        to_kind: gauge.edge.to.kind.as_str().to_string(),
        calls_per_second: round(gauge.calls_per_second),
        calls_per_entry: round(gauge.calls_per_entry),
        p99_per_entry: round(gauge.p99_per_entry),
        score: round(gauge.score),
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
