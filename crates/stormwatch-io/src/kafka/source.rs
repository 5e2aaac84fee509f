//! The Kafka span source: `otlp_spans` as the OpenTelemetry Collector's kafka exporter writes
//! it (one `ExportTraceServiceRequest` per message, `otlp_proto` or `otlp_json`), consumed by
//! a consumer group on a dedicated thread (rdkafka's poll loop stays off the async runtime).
//!
//! At least once: offsets are committed only for messages the engine reports settled — their
//! traces completed, their windows judged, and every alert they caused acknowledged by the
//! alert sink (the engine sends the positions through the sink, behind those alerts). A crash
//! re-reads what was not settled; the duplicate alerts this may cause carry the same
//! fingerprints. On a rebalance, revoked partitions keep their last committed offsets and the
//! new owner re-reads from there; positions of partitions no longer assigned are not
//! committed. A malformed message is counted, logged with its partition and offset, sent to
//! the dead-letter topic when one is configured, and its offset committed in turn; it never
//! stops the consumer.
//!
//! A second source of the same kind reads the group's windows topic ([`SourceTopic::Windows`],
//! one partition). The engine the group assigned input partition 0 is the window merger: its
//! windows source assigns itself the windows partition (from the offset committed under
//! `<group>.windows`) and lets it go when partition 0 moves, so Kafka's rebalancing elects and
//! fails over the merger, with no group of its own. Its messages reach the engine undecoded
//! ([`Batch::Windows`]). What this engine holds is shared with the engine thread through
//! [`GroupState`].

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::KafkaError;
use stormwatch_model::Span;

use crate::{Batch, Metrics, SourcePosition, SourceTopic, SpanQueue};

/// Default input topic: the OpenTelemetry Collector kafka exporter's.
pub const DEFAULT_INPUT_TOPIC: &str = "otlp_spans";
/// Default consumer group.
pub const DEFAULT_GROUP_ID: &str = "stormwatch";

/// What this member of the group holds, as the last rebalance left it.
#[derive(Debug, Default)]
pub struct GroupState {
    input_partitions: Mutex<Vec<i32>>,
    partitions_total: AtomicU32,
    merges_windows: AtomicBool,
}

impl GroupState {
    /// Input partitions assigned to this engine.
    pub fn input_partitions(&self) -> Vec<i32> {
        self.input_partitions.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Partitions of the input topic.
    pub fn partitions_total(&self) -> u32 {
        self.partitions_total.load(Ordering::Relaxed)
    }

    /// Whether this engine holds the windows topic: it merges and judges the group's windows.
    pub fn merges_windows(&self) -> bool {
        self.merges_windows.load(Ordering::Relaxed)
    }
}

/// How messages on the input topic are encoded (the Collector's `encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputEncoding {
    /// OTLP protobuf `ExportTraceServiceRequest`s (`otlp_proto`, the Collector's default).
    OtlpProto,
    /// OTLP/JSON (`otlp_json`).
    OtlpJson,
}

impl InputEncoding {
    /// The encoding named `text` (`otlp_proto`, `otlp_json`), if any.
    pub fn parse(text: &str) -> Option<InputEncoding> {
        match text {
            "otlp_proto" => Some(InputEncoding::OtlpProto),
            "otlp_json" => Some(InputEncoding::OtlpJson),
            _ => None,
        }
    }
}

/// Settings of the source.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// The bootstrap brokers.
    pub brokers: String,
    /// The input topic.
    pub topic: String,
    /// The consumer group.
    pub group_id: String,
    /// How messages are encoded.
    pub encoding: InputEncoding,
    /// Malformed messages are copied here (with `stormwatch.error`, `stormwatch.source.*`
    /// headers) when set.
    pub dead_letter_topic: Option<String>,
    /// Static group membership (`group.instance.id`): an engine restarted with the same id
    /// takes its partitions back at once instead of waiting for a rebalance.
    pub instance_id: Option<String>,
    /// Spans (`Input`), or the engines' window partials (`Windows`).
    pub role: SourceTopic,
    /// With `Windows`: the group's shared baselines, read when this engine becomes the merger.
    pub baselines_topic: Option<String>,
}

struct Context {
    state: Arc<GroupState>,
    role: SourceTopic,
}

/// The input partition whose owner merges the group's windows.
const MERGER_PARTITION: i32 = 0;

impl ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::quiet_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::quiet_error(&error, reason);
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            if self.role == SourceTopic::Windows {
                return;
            }
            if let Ok(mut held) = self.state.input_partitions.lock() {
                held.clear();
            }
            tracing::info!(
                partitions = ?partitions.elements().iter().map(|p| p.partition()).collect::<Vec<_>>(),
                "Kafka input: partitions revoked; their unsettled messages will be re-read by the new owner"
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let held: Vec<i32> = partitions.elements().iter().map(|p| p.partition()).collect();
            if self.role == SourceTopic::Windows {
                return;
            }
            if let Ok(mut input) = self.state.input_partitions.lock() {
                *input = held;
            }
            tracing::info!(
                partitions = ?partitions.elements().iter().map(|p| p.partition()).collect::<Vec<_>>(),
                "Kafka input: partitions assigned"
            );
        }
    }
}

/// The running source: stop it, then wait for it once the engine and sink are done.
pub struct KafkaSource {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Connects, checks that the topic exists, subscribes and starts consuming into `queue`.
    /// `commits` delivers settled positions (from the alert sink); the source keeps committing
    /// them after [`KafkaSource::stop`] until that channel closes.
    pub fn start(
        config: SourceConfig,
        queue: SpanQueue,
        commits: Receiver<Vec<SourcePosition>>,
        metrics: Arc<Metrics>,
        state: Arc<GroupState>,
    ) -> Result<KafkaSource, Box<KafkaError>> {
        let brokers = config.brokers.clone();
        let mut client = super::client_config();
        if let Some(instance) = &config.instance_id {
            client.set("group.instance.id", instance);
        }
        let consumer: BaseConsumer<Context> = client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("client.id", if config.role == SourceTopic::Windows { "stormwatch-windows" } else { "stormwatch" })
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // A killed engine's partitions move to the others after 10 s, not librdkafka's 45.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "3000")
            // Brokers that hold a fetch for its whole wait even when data is there (tansu does)
            // would cap a consumer at two fetches a second: 20 ms costs little when idle.
            .set("fetch.wait.max.ms", "20")
            .create_with_context(Context { state: state.clone(), role: config.role })
            .map_err(|source| Box::new(KafkaError::Client { brokers: brokers.clone(), source }))?;
        let metadata = consumer.fetch_metadata(Some(&config.topic), Duration::from_secs(10)).map_err(|source| {
            KafkaError::Unreachable { brokers: brokers.clone(), topic: config.topic.clone(), source }
        })?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == config.topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            return Err(Box::new(KafkaError::MissingInputTopic { brokers, topic: config.topic.clone() }));
        }
        if config.role == SourceTopic::Input {
            state.partitions_total.store(partitions as u32, Ordering::Relaxed);
        }
        let dead_letters = match &config.dead_letter_topic {
            Some(_) => Some(
                super::client_config()
                    .set("bootstrap.servers", &config.brokers)
                    .set("client.id", "stormwatch-dead-letters")
                    .set("acks", "all")
                    .create_with_context::<_, BaseProducer<super::QuietContext>>(super::QuietContext)
                    .map_err(|source| Box::new(KafkaError::Client { brokers: brokers.clone(), source }))?,
            ),
            None => None,
        };
        if config.role == SourceTopic::Input {
            consumer.subscribe(&[&config.topic]).map_err(|source| KafkaError::Unreachable {
                brokers,
                topic: config.topic.clone(),
                source,
            })?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("stormwatch-kafka-input".into())
            .spawn({
                let stop = stop.clone();
                move || run(config, consumer, dead_letters, queue, commits, metrics, stop)
            })
            .expect("cannot start the Kafka input thread");
        Ok(KafkaSource { stop, thread })
    }

    /// Stops consuming (the queue sender is dropped, so the engine can drain and finish).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits until the last settled offsets are committed (after the sink closed the channel).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// The source thread: polls the topic and hands each message to the engine's queue (blocking
/// while the engine is behind), applying settled positions as commits between polls; at stop,
/// commits what the engine settles while it drains.
fn run(
    config: SourceConfig,
    consumer: BaseConsumer<Context>,
    dead_letters: Option<BaseProducer<super::QuietContext>>,
    queue: SpanQueue,
    commits: Receiver<Vec<SourcePosition>>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    loop {
        apply_commits(&consumer, &config, &commits, &metrics);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if config.role == SourceTopic::Windows
            && follow_merger_partition(&consumer, &config.topic)
            && !hand_over_window_baselines(&config, &queue)
        {
            break;
        }
        let Some(result) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = match result {
            Ok(message) => message,
            Err(error) => {
                if let Some(held_back) = super::quiet(&format!("consumer {:?}", error.rdkafka_error_code())) {
                    tracing::warn!(%error, topic = %config.topic, held_back, "Kafka input: consumer error; retrying");
                }
                continue;
            }
        };
        let payload = message.payload().unwrap_or_default();
        let partition = message.partition();
        let batch = if config.role == SourceTopic::Windows {
            Metrics::add(&metrics.window_partials_received_total, 1);
            let position = SourcePosition { topic: SourceTopic::Windows, partition, offset: message.offset() };
            Batch::Windows { payload: payload.to_vec(), position }
        } else {
            Metrics::add(&metrics.kafka_messages_total, 1);
            let position = SourcePosition { topic: SourceTopic::Input, partition, offset: message.offset() };
            let spans = decode_input(&config, &message, position, &metrics, dead_letters.as_ref());
            Batch::Spans { spans, position: Some(position) }
        };
        // Waits while the engine is behind: back-pressure, and the poll loop keeps going.
        if queue.send_batch(batch).is_err() {
            break;
        }
    }
    // No more input: let the engine drain and finish, then commit what it settles.
    drop(queue);
    if let Some(producer) = &dead_letters {
        let _ = producer.flush(Duration::from_secs(10));
    }
    loop {
        match commits.recv_timeout(Duration::from_millis(100)) {
            Ok(positions) => commit(&consumer, &config, &positions, &metrics, CommitMode::Sync),
            Err(RecvTimeoutError::Timeout) => {
                // Keep the group membership alive while the engine drains.
                let _ = consumer.poll(Duration::ZERO);
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    consumer.unsubscribe();
}

/// This engine just became the window merger: the window baselines the previous merger learned
/// (from the group's baselines topic), for the engine to continue from. `false` when the
/// engine's queue is closed.
fn hand_over_window_baselines(config: &SourceConfig, queue: &SpanQueue) -> bool {
    let Some(topic) = &config.baselines_topic else { return true };
    match super::baselines::read_snapshots(&config.brokers, topic, Duration::from_secs(30)) {
        Ok(snapshots) if !snapshots.is_empty() => queue.send_batch(Batch::Snapshots(snapshots)).is_ok(),
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, "Kafka input: the group's window baselines were not read; \
                the window detectors learn from scratch");
            true
        }
    }
}

/// The spans of an input message; a malformed one is counted, logged, sent to the dead-letter
/// topic when there is one, and gives no spans (its position still settles in order).
fn decode_input(
    config: &SourceConfig,
    message: &BorrowedMessage<'_>,
    position: SourcePosition,
    metrics: &Metrics,
    dead_letters: Option<&BaseProducer<super::QuietContext>>,
) -> Vec<Span> {
    let payload = message.payload().unwrap_or_default();
    let decoded = match config.encoding {
        InputEncoding::OtlpProto => stormwatch_otlp::decode_protobuf(payload),
        InputEncoding::OtlpJson => stormwatch_otlp::decode_json(payload),
    };
    match decoded {
        Ok(decoded) => {
            Metrics::add(&metrics.spans_received_total, decoded.spans.len() as u64);
            Metrics::add(&metrics.spans_rejected_total, decoded.rejected_spans);
            decoded.spans
        }
        Err(error) => {
            Metrics::add(&metrics.kafka_malformed_messages_total, 1);
            tracing::warn!(
                topic = %config.topic,
                partition = position.partition,
                offset = position.offset,
                %error,
                "Kafka input: malformed message skipped"
            );
            if let (Some(producer), Some(topic)) = (dead_letters, &config.dead_letter_topic) {
                dead_letter(producer, topic, config, message, position, &error.to_string(), metrics);
            }
            Vec::new()
        }
    }
}

/// A malformed message to the dead-letter topic, as it was, with headers saying why and where
/// it came from.
fn dead_letter(
    producer: &BaseProducer<super::QuietContext>,
    topic: &str,
    config: &SourceConfig,
    message: &BorrowedMessage<'_>,
    position: SourcePosition,
    reason: &str,
    metrics: &Metrics,
) {
    let (partition, offset) = (position.partition.to_string(), position.offset.to_string());
    let headers = OwnedHeaders::new()
        .insert(Header { key: "stormwatch.error", value: Some(reason) })
        .insert(Header { key: "stormwatch.source.topic", value: Some(config.topic.as_str()) })
        .insert(Header { key: "stormwatch.source.partition", value: Some(partition.as_str()) })
        .insert(Header { key: "stormwatch.source.offset", value: Some(offset.as_str()) });
    let payload = message.payload().unwrap_or_default();
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    match producer.send(record) {
        Ok(()) => Metrics::add(&metrics.kafka_dead_letters_total, 1),
        Err((error, _)) => tracing::error!(%error, %topic, "Kafka input: dead letter not sent"),
    }
    producer.poll(Duration::ZERO);
}

/// The windows source holds the windows partition exactly while this engine holds input
/// partition 0 (which the input consumer's rebalance callbacks record). `true` when this
/// engine just became the merger.
fn follow_merger_partition(consumer: &BaseConsumer<Context>, topic: &str) -> bool {
    let state = &consumer.context().state;
    let wanted = state.input_partitions().contains(&MERGER_PARTITION);
    if wanted == state.merges_windows() {
        return false;
    }
    let mut list = TopicPartitionList::new();
    if wanted && list.add_partition_offset(topic, 0, Offset::Stored).is_err() {
        return false;
    }
    match consumer.assign(&list) {
        Ok(()) => {
            state.merges_windows.store(wanted, Ordering::Relaxed);
            if wanted {
                tracing::info!(%topic, "Kafka input: this engine merges and judges the group's windows");
            } else {
                tracing::info!(%topic, "Kafka input: no longer merging the group's windows");
            }
            wanted
        }
        Err(error) => {
            tracing::warn!(%error, %topic, "Kafka input: cannot (un)assign the windows partition; retrying");
            false
        }
    }
}

/// Commits (asynchronously) every settled position received since the last call.
fn apply_commits(
    consumer: &BaseConsumer<Context>,
    config: &SourceConfig,
    commits: &Receiver<Vec<SourcePosition>>,
    metrics: &Metrics,
) {
    let mut latest = Vec::new();
    while let Ok(positions) = commits.try_recv() {
        latest.extend(positions);
    }
    if !latest.is_empty() {
        commit(consumer, config, &latest, metrics, CommitMode::Async);
    }
}

/// Commits the highest settled offset (+1) of every partition still assigned here.
fn commit(
    consumer: &BaseConsumer<Context>,
    config: &SourceConfig,
    positions: &[SourcePosition],
    metrics: &Metrics,
    mode: CommitMode,
) {
    let topic = config.topic.as_str();
    let assigned: Vec<i32> = consumer
        .assignment()
        .map(|list| list.elements().iter().filter(|e| e.topic() == topic).map(|e| e.partition()).collect())
        .unwrap_or_default();
    let mut highest: Vec<(i32, i64)> = Vec::new();
    for position in positions.iter().filter(|p| p.topic == config.role && assigned.contains(&p.partition)) {
        match highest.iter_mut().find(|(partition, _)| *partition == position.partition) {
            Some(entry) => entry.1 = entry.1.max(position.offset),
            None => highest.push((position.partition, position.offset)),
        }
    }
    if highest.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in &highest {
        if list.add_partition_offset(topic, *partition, Offset::Offset(offset + 1)).is_err() {
            return;
        }
    }
    match consumer.commit(&list, mode) {
        Ok(()) => Metrics::add(&metrics.kafka_commits_total, 1),
        Err(error) => tracing::warn!(%error, "Kafka input: offset commit failed; the messages may be re-read"),
    }
}
