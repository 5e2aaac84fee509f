//! The sink task: alerts, settled Kafka positions, window partials and shared snapshots from
//! the engine thread, delivered in order to the alert sink (stdout and a file, or Kafka).
//! A failed delivery is retried with backoff; with a spool, what the broker does not take
//! waits on disk and is delivered oldest first once it is back. Kafka positions are committed
//! only after everything before them was delivered.

use std::sync::Arc;
use std::time::Duration;

use stormwatch_io::sink::AlertSink;
use stormwatch_io::spool::AlertSpool;
use stormwatch_io::{Metrics, SourcePosition};
use stormwatch_model::{wall_clock_nanos, Alert};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the engine hands the sink task, in order.
pub(crate) enum SinkItem {
    Alerts(Vec<Alert>),
    /// Kafka input positions whose spans are settled; committable once everything before this
    /// item is delivered.
    Settled(Vec<SourcePosition>),
    /// This engine's window partials, for `topic` (keyed by the sending engine).
    Partials {
        topic: String,
        key: String,
        payload: Vec<u8>,
    },
    /// This engine's baseline snapshot, for the group's compacted baselines topic. Not part
    /// of the at-least-once chain: a lost one is replaced by the next.
    Snapshot {
        topic: String,
        key: String,
        payload: Vec<u8>,
    },
}

/// Writes alert batches to the sink until the engine closes the channel. A failed delivery
/// is retried with backoff; after the last retry it is logged and counted, and the engine
/// goes on. With a spool, an alert the broker does not take is written to disk instead, and
/// so is every alert after it until the spool is delivered (oldest first, with backoff).
pub(crate) async fn run_sink(
    sink: AlertSink,
    mut items: mpsc::Receiver<SinkItem>,
    commits: Option<std::sync::mpsc::Sender<Vec<SourcePosition>>>,
    attempts: u32,
    spool: Option<AlertSpool>,
    metrics: Arc<Metrics>,
    give_up: CancellationToken,
) {
    let drain = SpoolDrain::new(spool.as_ref(), &metrics, &give_up);
    let mut task = SinkTask {
        sink,
        spool,
        drain,
        commits,
        attempts,
        metrics: &metrics,
        give_up: &give_up,
        delivery_failed: false,
        dropped_at_deadline: 0,
    };
    while let Some(item) = task.next_item(&mut items).await {
        let Some(batch) = task.internal(item).await else { continue };
        if !task.spooled(&batch).await {
            task.emit(&batch).await;
        }
    }
    task.finish().await;
}

/// The sink task's state.
struct SinkTask<'a> {
    sink: AlertSink,
    spool: Option<AlertSpool>,
    drain: SpoolDrain<'a>,
    commits: Option<std::sync::mpsc::Sender<Vec<SourcePosition>>>,
    attempts: u32,
    metrics: &'a Metrics,
    give_up: &'a CancellationToken,
    /// After an alert was given up on, nothing more is committed: the spans behind it are
    /// re-read after a restart rather than lost.
    delivery_failed: bool,
    /// Internal messages not sent because the shutdown deadline had passed.
    dropped_at_deadline: usize,
}

impl SinkTask<'_> {
    /// The next item from the engine (`None` once it closed the channel), trying the spool's
    /// oldest batch whenever its backoff allows meanwhile.
    async fn next_item(&mut self, items: &mut mpsc::Receiver<SinkItem>) -> Option<SinkItem> {
        loop {
            let pending = self.spool.as_ref().is_some_and(|s| !s.is_empty());
            if !pending {
                return items.recv().await;
            }
            let full = self.spool.as_ref().is_some_and(|s| s.is_full());
            tokio::select! {
                // A full spool takes nothing more: back-pressure, as without one.
                item = items.recv(), if !full => return item,
                _ = tokio::time::sleep_until(self.drain.next_try), if !self.give_up.is_cancelled() => {
                    if let Some(spool) = &mut self.spool {
                        self.drain.try_front(&mut self.sink, spool, self.metrics).await;
                    }
                }
            }
        }
    }

    /// Settled positions, window partials and snapshots are handled here; alerts are returned.
    async fn internal(&mut self, item: SinkItem) -> Option<Vec<Alert>> {
        match item {
            SinkItem::Alerts(batch) => return Some(batch),
            // Past the shutdown deadline, internal messages are not tried: their input is read
            // again at the next start (nothing after them is committed).
            SinkItem::Partials { .. } | SinkItem::Snapshot { .. } if self.give_up.is_cancelled() => {
                self.delivery_failed |= matches!(item, SinkItem::Partials { .. });
                self.dropped_at_deadline += 1;
            }
            SinkItem::Partials { topic, key, payload } => {
                let backoff = Backoff::new("window partials", self.attempts, self.metrics, self.give_up);
                if !deliver(&mut self.sink, &topic, &key, &payload, backoff).await {
                    self.delivery_failed = true;
                }
            }
            SinkItem::Snapshot { topic, key, payload } => {
                // A lost snapshot is replaced by the next one.
                let backoff = Backoff::new("baseline snapshot", 5, self.metrics, self.give_up);
                deliver(&mut self.sink, &topic, &key, &payload, backoff).await;
            }
            SinkItem::Settled(positions) => {
                if let (Some(commits), false) = (&self.commits, self.delivery_failed) {
                    let _ = commits.send(positions);
                }
            }
        }
        None
    }

    /// With a spool: the batch delivered now when nothing waits before it, else spooled (in
    /// order). `false` when there is no spool or it cannot be written: the batch is to be
    /// retried in memory.
    async fn spooled(&mut self, batch: &[Alert]) -> bool {
        let Some(spool) = &mut self.spool else { return false };
        // Behind what is spooled, or refused now: to the spool, in order.
        let refused = if spool.is_empty() {
            match until_given_up(self.give_up, self.sink.emit(batch, self.metrics)).await {
                Ok(()) => return true,
                Err(error) => Some(error),
            }
        } else {
            None
        };
        match tokio::task::block_in_place(|| spool.push(batch)) {
            Ok(()) => {
                if let Some(error) = refused {
                    self.drain.started(&error, spool);
                    if !self.give_up.is_cancelled() {
                        self.sink.renew();
                    }
                }
                self.drain.publish(spool, self.metrics);
                true
            }
            Err(error) => {
                tracing::error!(%error, dir = %spool.dir().display(), "cannot spool alerts; holding them in memory");
                false
            }
        }
    }

    /// The batch delivered with retries and backoff; given up on (logged and counted) after the
    /// last attempt.
    async fn emit(&mut self, batch: &[Alert]) {
        let mut backoff = Backoff::new("alert", self.attempts, self.metrics, self.give_up);
        let delivered = loop {
            match until_given_up(self.give_up, self.sink.emit(batch, self.metrics)).await {
                Ok(()) => {
                    backoff.succeeded();
                    break true;
                }
                Err(error) => {
                    if !backoff.failed(&error).await {
                        break false;
                    }
                    self.sink.renew();
                }
            }
        };
        if !delivered {
            self.delivery_failed = true;
            Metrics::add(&self.metrics.alert_delivery_failures_total, batch.len() as u64);
            tracing::error!(alerts = batch.len(), "alert delivery failed; gave up on this batch");
        }
    }

    /// Shutting down: a last while to deliver what is spooled (up to 10 s, and never past the
    /// shutdown deadline); the rest waits on disk. Then the sink is closed.
    async fn finish(mut self) {
        let give_up = self.give_up;
        if let Some(spool) = &mut self.spool {
            let until = tokio::time::Instant::now() + Duration::from_secs(10);
            while !spool.is_empty() && tokio::time::Instant::now() < until && !give_up.is_cancelled() {
                tokio::select! {
                    _ = tokio::time::sleep_until(self.drain.next_try.min(until)) => {}
                    _ = give_up.cancelled() => break,
                }
                self.drain.try_front(&mut self.sink, spool, self.metrics).await;
            }
            if !spool.is_empty() {
                tracing::warn!(
                    alerts = spool.alerts(),
                    dir = %spool.dir().display(),
                    "undelivered alerts stay in the spool; they are delivered at the next start"
                );
            }
        }
        if self.dropped_at_deadline > 0 {
            tracing::warn!(
                messages = self.dropped_at_deadline,
                "window partials and shared snapshots not sent by the shutdown deadline; the input behind them is \
                 not committed and is read again at the next start"
            );
        }
        let flush = if give_up.is_cancelled() { Duration::ZERO } else { Duration::from_secs(10) };
        self.sink.close(flush).await;
    }
}

/// `delivery`, unless the shutdown deadline passes first: then an error, and what it was
/// sending is the caller's to spool.
async fn until_given_up(
    give_up: &CancellationToken,
    delivery: impl std::future::Future<Output = Result<(), stormwatch_io::IoError>>,
) -> Result<(), stormwatch_io::IoError> {
    if give_up.is_cancelled() {
        return Err(stormwatch_io::IoError::ShutdownDeadline);
    }
    tokio::select! {
        delivered = delivery => delivered,
        _ = give_up.cancelled() => Err(stormwatch_io::IoError::ShutdownDeadline),
    }
}

/// Delivery of the spool, oldest batch first, with [`Backoff`] between failed tries (timed by
/// the sink's loop, which keeps taking alerts meanwhile, rather than slept).
struct SpoolDrain<'a> {
    next_try: tokio::time::Instant,
    backoff: Backoff<'a>,
}

impl<'a> SpoolDrain<'a> {
    fn new(spool: Option<&AlertSpool>, metrics: &'a Metrics, give_up: &'a CancellationToken) -> SpoolDrain<'a> {
        if let Some(spool) = spool.filter(|s| !s.is_empty()) {
            tracing::info!(
                alerts = spool.alerts(),
                dir = %spool.dir().display(),
                "alerts held in the spool by an earlier run; delivering them first"
            );
        }
        let drain = SpoolDrain { next_try: tokio::time::Instant::now(), backoff: Backoff::spool(metrics, give_up) };
        if let Some(spool) = spool {
            drain.publish(spool, metrics);
        }
        drain
    }

    fn publish(&self, spool: &AlertSpool, metrics: &Metrics) {
        Metrics::set(&metrics.alert_spool_alerts, spool.alerts() as u64);
        Metrics::set(&metrics.alert_spool_bytes, spool.bytes());
    }

    /// The broker refused an alert: it was spooled, and delivery of the spool is retried.
    fn started(&mut self, error: &dyn std::fmt::Display, spool: &AlertSpool) {
        if self.backoff.give_up.is_cancelled() {
            tracing::warn!(dir = %spool.dir().display(), "alert not confirmed by the shutdown deadline; spooled for the next start");
        } else {
            tracing::warn!(%error, dir = %spool.dir().display(), "alert delivery failed; spooling alerts to disk and retrying");
        }
        self.backoff = Backoff::spool(self.backoff.metrics, self.backoff.give_up);
        self.backoff.mark_failing();
        self.next_try = tokio::time::Instant::now() + self.backoff.delay;
    }

    /// Tries to deliver the oldest spooled batch once.
    async fn try_front(&mut self, sink: &mut AlertSink, spool: &mut AlertSpool, metrics: &Metrics) {
        let front = match tokio::task::block_in_place(|| spool.front()) {
            Ok(Some(front)) => front,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(%error, "a spooled batch was set aside");
                Metrics::add(&metrics.alert_delivery_failures_total, 1);
                self.publish(spool, metrics);
                return;
            }
        };
        match until_given_up(self.backoff.give_up, sink.emit(&front, metrics)).await {
            Ok(()) => {
                if let Err(error) = tokio::task::block_in_place(|| spool.pop()) {
                    tracing::error!(%error, "cannot remove a delivered batch from the spool; it may be sent twice");
                }
                self.next_try = tokio::time::Instant::now();
                if spool.is_empty() {
                    self.backoff.succeeded();
                    self.backoff = Backoff::spool(self.backoff.metrics, self.backoff.give_up);
                } else {
                    self.backoff.delay = Backoff::FIRST_DELAY;
                }
            }
            Err(error) => {
                // Spooled alerts are never given up: the delay is always there.
                let delay = self.backoff.note_failure(&error).unwrap_or(Backoff::MOST_DELAY);
                sink.renew();
                self.next_try = tokio::time::Instant::now() + delay;
            }
        }
        self.publish(spool, metrics);
    }
}

/// Retry state of one delivery: exponential backoff (200 ms doubling, at most 30 s between
/// tries) up to `attempts` tries, with the sink's state kept on `/metrics` (and `/healthz`).
struct Backoff<'a> {
    what: &'static str,
    attempts: u32,
    tried: u32,
    delay: Duration,
    metrics: &'a Metrics,
    /// The shutdown deadline passed: no more tries, no more waiting.
    give_up: &'a CancellationToken,
}

impl<'a> Backoff<'a> {
    const FIRST_DELAY: Duration = Duration::from_millis(200);
    const MOST_DELAY: Duration = Duration::from_secs(30);

    fn new(what: &'static str, attempts: u32, metrics: &'a Metrics, give_up: &'a CancellationToken) -> Self {
        Backoff { what, attempts, tried: 0, delay: Self::FIRST_DELAY, metrics, give_up }
    }

    /// The spool's: retried without end (until the shutdown deadline: it stays on disk).
    fn spool(metrics: &'a Metrics, give_up: &'a CancellationToken) -> Self {
        Backoff::new("spooled alert", u32::MAX, metrics, give_up)
    }

    /// The sink is failing (`/metrics`, `/healthz`, `/readyz`), since now unless already.
    fn mark_failing(&self) {
        if Metrics::get(&self.metrics.alert_sink_failing_since_seconds) == 0 {
            Metrics::set(&self.metrics.alert_sink_failing_since_seconds, wall_clock_nanos() / 1_000_000_000);
        }
    }

    fn succeeded(&self) {
        if self.tried > 0 {
            tracing::info!(retries = self.tried, "{} delivered again", self.what);
        }
        Metrics::set(&self.metrics.alert_sink_failing_since_seconds, 0);
    }

    /// After a failed try: waits and returns `true` to try again, or `false` when given up
    /// (out of attempts, or past the shutdown deadline).
    async fn failed(&mut self, error: &(dyn std::fmt::Display + Sync)) -> bool {
        if self.give_up.is_cancelled() {
            tracing::warn!(%error, "{} delivery given up at the shutdown deadline (server.shutdown_timeout)", self.what);
            return false;
        }
        match self.note_failure(error) {
            Some(delay) => tokio::select! {
                _ = tokio::time::sleep(delay) => true,
                _ = self.give_up.cancelled() => false,
            },
            None => false,
        }
    }

    /// Counts and logs a failed try; the delay before the next one, or `None` when given up.
    fn note_failure(&mut self, error: &(dyn std::fmt::Display + Sync)) -> Option<Duration> {
        self.tried += 1;
        if self.tried >= self.attempts {
            tracing::error!(%error, attempts = self.tried, "{} delivery failed; giving up", self.what);
            return None;
        }
        self.mark_failing();
        Metrics::add(&self.metrics.alert_sink_retries_total, 1);
        // Every try at first, then every tenth: an outage does not flood the log.
        if self.tried <= 5 || self.tried.is_multiple_of(10) {
            tracing::warn!(%error, attempt = self.tried, "{} delivery failed; held and retried", self.what);
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MOST_DELAY);
        Some(delay)
    }
}

/// Sends one message to an internal topic (Kafka sinks only).
/// `true` once delivered, `false` when given up.
async fn deliver(sink: &mut AlertSink, topic: &str, key: &str, payload: &[u8], mut backoff: Backoff<'_>) -> bool {
    loop {
        let AlertSink::Kafka(kafka) = &*sink else { return true };
        let sent = until_given_up(backoff.give_up, async { Ok(kafka.send_to(topic, key, payload).await?) }).await;
        match sent {
            Ok(()) => {
                backoff.succeeded();
                return true;
            }
            Err(error) => {
                if !backoff.failed(&error).await {
                    return false;
                }
                sink.renew();
            }
        }
    }
}
