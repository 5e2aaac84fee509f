//! The runtime shared by `serve` and `replay`: one engine thread (`engine_loop.rs`) that owns
//! assembly, detection and the baselines, fed by the bounded span queue, sending alerts to one
//! sink task (`delivery.rs`).
//!
//! Shutdown follows the pipeline: when every queue sender is gone the engine thread drains
//! the queue, flushes buffered traces and open incidents, writes the snapshot and closes the
//! alert channel; the sink task then writes what is left and ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use stormwatch_baseline::{load_snapshot, BaselineStore, SnapshotError};
use stormwatch_detect::tuning::Tuning;
use stormwatch_detect::{EngineConfig, EngineStats};
use stormwatch_io::admin::{AdminQuery, LiveEvents};
use stormwatch_io::kafka::KafkaAlertSink;
use stormwatch_io::sink::AlertSink;
use stormwatch_io::spool::AlertSpool;
use stormwatch_io::{span_queue, IoError, Metrics, SourcePosition, SpanQueue};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::delivery::run_sink;
use crate::sharing::SharingOptions;
use crate::tuning::TuningWatch;

/// The running engine thread and sink task. Spans go in through the [`SpanQueue`] returned
/// with it; once every clone of that queue is dropped, [`Pipeline::finish`] drains and stops.
pub struct Pipeline {
    /// The engine's counters and gauges (`/metrics`).
    pub metrics: Arc<Metrics>,
    engine: std::thread::JoinHandle<EngineReport>,
    sink: tokio::task::JoinHandle<()>,
    /// Cancelled when a shutdown's deadline passes: the sink stops waiting on the broker.
    give_up: CancellationToken,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Starts the engine thread and the sink task: the engine is `config` over `store`, alerts
    /// go to `sink`, the span queue holds `queue_capacity` batches and `queue_max_spans` spans.
    pub fn start(
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
        let engine = crate::engine_loop::spawn(config, store, receiver, alerts_tx, metrics.clone(), options);
        let give_up = CancellationToken::new();
        let sink = tokio::spawn(run_sink(sink, alerts_rx, commits, attempts, spool, metrics.clone(), give_up.clone()));
        (Pipeline { metrics, engine, sink, give_up }, queue)
    }

    /// Waits until the engine drained the queue (every sender must be gone), flushed and
    /// snapshotted, and the sink wrote the last alerts. With `give_up_at`, the sink stops
    /// waiting on the broker then: alerts it does not hold confirmed go to the spool (or are
    /// counted as failed without one), window partials and shared snapshots are dropped, and
    /// nothing after them is committed.
    pub async fn finish(self, give_up_at: Option<tokio::time::Instant>) -> Result<EngineReport, PipelineError> {
        if let Some(at) = give_up_at {
            let give_up = self.give_up.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                give_up.cancel();
            });
        }
        let engine = self.engine;
        let report = tokio::task::spawn_blocking(move || engine.join())
            .await
            .map_err(PipelineError::Join)?
            .map_err(|_| PipelineError::EnginePanicked)?;
        self.sink.await.map_err(PipelineError::Join)?;
        Ok(report)
    }
}

/// Why the pipeline did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The engine thread panicked: its last alerts and snapshot may be lost (the panic is in
    /// the log).
    #[error("the engine thread panicked")]
    EnginePanicked,
    /// The sink task, or the task waiting for the engine thread, failed.
    #[error("{0}")]
    Join(tokio::task::JoinError),
}

/// Kafka when `brokers` are configured (alerts to `alert_topic`), else JSON lines to stdout
/// and/or `file`.
pub async fn open_sink(
    brokers: &str,
    alert_topic: &str,
    stdout: bool,
    file: Option<&Path>,
) -> Result<AlertSink, IoError> {
    if brokers.is_empty() {
        return AlertSink::lines(stdout, file).await;
    }
    let kafka = KafkaAlertSink::connect(brokers, alert_topic).await?;
    Ok(AlertSink::Kafka(kafka))
}

/// The baselines restored from `dir`, or empty ones; a corrupt or old snapshot is an error.
/// At most `max_keys` keys per table.
pub fn restore(dir: &Path, max_keys: usize) -> Result<BaselineStore, SnapshotError> {
    match load_snapshot(dir, max_keys)? {
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
            Ok(BaselineStore::new(max_keys))
        }
    }
}

/// How the engine thread runs. The default is a replay's: no idle fallback, no snapshot, no
/// Kafka, no admin queries, delivery that gives up after a few attempts.
#[derive(Debug, Default)]
pub struct EngineOptions {
    /// Live mode: when no span arrived for this long (wall clock), event time is advanced by
    /// the wall time that passed, so a quiet stream still completes its traces.
    pub idle_fallback: Option<Duration>,
    /// Where and how often to snapshot the baselines; also written at the end.
    pub snapshot: Option<(PathBuf, Option<Duration>)>,
    /// Kafka input: where the sink sends settled positions, once the alerts before them are
    /// acknowledged.
    pub commits: Option<std::sync::mpsc::Sender<Vec<SourcePosition>>>,
    /// Kafka consumer group: ship closed windows to the windows topic and, while this engine
    /// holds it, merge and judge the group's windows.
    pub sharing: Option<SharingOptions>,
    /// Kafka consumer group: publish every snapshot to this compacted topic, keyed by this
    /// engine (topic, key).
    pub share_baselines: Option<(String, String)>,
    /// Writes (and exports) from the admin API, answered between batches.
    pub queries: Option<std::sync::mpsc::Receiver<AdminQuery>>,
    /// What the admin API reads, published here.
    pub view: Option<Arc<crate::admin::AdminView>>,
    /// The tuning in force at start, and the file to reload it from.
    pub tuning: TuningOptions,
    /// Retry a failing alert delivery until it succeeds (serve: nothing accepted is lost, the
    /// back-pressure reaches the inputs), rather than give up after a few attempts (replay).
    pub deliver_until_acknowledged: bool,
    /// Alerts the broker does not take go to this spool on disk (serve with Kafka), so the
    /// engine keeps judging through an outage and a restart delivers them.
    pub spool: Option<AlertSpool>,
    /// `/metrics` shows this many top edges by load and as many by anomaly (0: none).
    pub metrics_top_edges: usize,
    /// Each alert and each judged window, for the admin API's `/api/events` streams.
    pub live: Option<LiveEvents>,
}

/// The tuning at start, and how it is reloaded.
#[derive(Debug, Default)]
pub struct TuningOptions {
    /// The tuning in force at start.
    pub initial: Tuning,
    /// Reloaded when it changes (checked every 2 s) or when `reload` is set (SIGHUP).
    pub watch: Option<TuningWatch>,
    /// Set (by SIGHUP) to reload the tuning at once.
    pub reload: Arc<AtomicBool>,
}

/// What the engine did, for the replay summary and the shutdown log.
#[derive(Debug)]
pub struct EngineReport {
    /// Detection's counters.
    pub stats: EngineStats,
    /// Spans taken in.
    pub spans_accepted: u64,
    /// Spans of traces already complete.
    pub late_spans: u64,
    /// Traces completed early because the buffer was full.
    pub traces_evicted: u64,
    /// Baseline keys held.
    pub edges_tracked: usize,
    /// Why the last snapshot could not be written, if it could not.
    pub snapshot_error: Option<String>,
}

#[cfg(test)]
mod tests;
