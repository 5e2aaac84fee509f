//! The Kafka alert sink: one JSON alert per message on `stormwatch.alerts`, keyed by
//! fingerprint (so one incident stays in one partition, in order), produced with `acks=all`
//! and idempotence. An alert counts as emitted only once the broker confirmed it.

use std::time::Duration;

pub mod baselines;
pub mod source;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use stormwatch_model::Alert;

/// librdkafka properties every Kafka client of this process gets (`[kafka.client]`: SASL, SSL,
/// timeouts...), set once at start, before any client is created.
static CLIENT_SETTINGS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Passes `settings` to every Kafka client created from now on, unchanged. Call once, first.
pub fn set_client_settings(settings: Vec<(String, String)>) {
    let _ = CLIENT_SETTINGS.set(settings);
}

/// A client configuration with the process's `[kafka.client]` settings applied; callers then
/// set what their role needs.
pub fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in CLIENT_SETTINGS.get().map(Vec::as_slice).unwrap_or_default() {
        config.set(key, value);
    }
    config
}

/// librdkafka's own logs and errors, for every Kafka client of the process: a broker that is
/// down makes each client log a failed connect every few hundred milliseconds, so each kind of
/// line (a log facility, an error code) goes through at most once per [`QUIET_PERIOD`], saying
/// how many like it were held back.
pub const QUIET_PERIOD: Duration = Duration::from_secs(30);

fn quiet_kinds() -> &'static std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<crate::Throttled>>> {
    static KINDS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<crate::Throttled>>>,
    > = std::sync::OnceLock::new();
    KINDS.get_or_init(Default::default)
}

/// `Some(lines held back)` when a line of `kind` may be logged now.
pub(crate) fn quiet(kind: &str) -> Option<u64> {
    let throttled = {
        let mut kinds = quiet_kinds().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A bounded set: librdkafka's facilities and error codes are few.
        if kinds.len() > 256 && !kinds.contains_key(kind) {
            kinds.clear();
        }
        kinds
            .entry(kind.to_string())
            .or_insert_with(|| std::sync::Arc::new(crate::Throttled::new(QUIET_PERIOD)))
            .clone()
    };
    throttled.allow()
}

/// librdkafka's log line, through [`quiet`].
pub(crate) fn quiet_log(level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as Level;
    let Some(held_back) = quiet(&format!("log {facility} {}", level as i32)) else { return };
    match level {
        Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
            tracing::error!(target: "librdkafka", held_back, "{facility} {message}")
        }
        Level::Warning => tracing::warn!(target: "librdkafka", held_back, "{facility} {message}"),
        Level::Notice | Level::Info => tracing::info!(target: "librdkafka", held_back, "{facility} {message}"),
        Level::Debug => tracing::debug!(target: "librdkafka", held_back, "{facility} {message}"),
    }
}

/// librdkafka's global error, through [`quiet`].
pub(crate) fn quiet_error(error: &rdkafka::error::KafkaError, reason: &str) {
    let kind = format!("error {:?}", error.rdkafka_error_code());
    if let Some(held_back) = quiet(&kind) {
        tracing::error!(target: "librdkafka", held_back, "{error}: {reason}");
    }
}

/// The context of the engine's Kafka clients: librdkafka's logs and errors through `quiet`.
#[derive(Clone, Copy, Debug, Default)]
pub struct QuietContext;

impl rdkafka::ClientContext for QuietContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        quiet_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        quiet_error(&error, reason);
    }
}

/// Delivery reports are awaited where messages are sent, not here.
impl rdkafka::producer::ProducerContext for QuietContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Default alert topic.
pub const DEFAULT_ALERT_TOPIC: &str = "stormwatch.alerts";

/// Why alerts could not be sent to Kafka, or its topics are not ready.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The producer could not be created.
    #[error("cannot create a Kafka producer for {brokers}: {source}")]
    Client {
        /// The bootstrap brokers.
        brokers: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "cannot reach Kafka at {brokers} to check topic {topic:?}: {source} (check --kafka-brokers / \
         STORMWATCH_KAFKA_BROKERS, or leave it unset to write alerts to stdout and a file)"
    )]
    /// The brokers did not answer the topic check.
    Unreachable {
        /// The bootstrap brokers.
        brokers: String,
        /// The alert topic.
        topic: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "alert topic {topic:?} does not exist on {brokers} and could not be created ({reason}): create it \
         (e.g. kafka-topics.sh --create --topic {topic}) or choose another with --alert-topic"
    )]
    /// The alert topic does not exist, and the broker refused to create it.
    MissingTopic {
        /// The bootstrap brokers.
        brokers: String,
        /// The alert topic.
        topic: String,
        /// Why it could not be created.
        reason: String,
    },
    #[error(
        "input topic {topic:?} does not exist on {brokers}: create it with as many partitions as engines \
         you will run (e.g. kafka-topics.sh --create --topic {topic} --partitions 6), or choose another with \
         kafka.input_topic"
    )]
    /// The input topic does not exist.
    MissingInputTopic {
        /// The bootstrap brokers.
        brokers: String,
        /// The input topic.
        topic: String,
    },
    /// The broker did not acknowledge a message.
    #[error("Kafka did not confirm alert {id} on {topic:?}: {source}")]
    Delivery {
        /// The alert's id (or the sender, for window partials).
        id: String,
        /// The topic.
        topic: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
}

/// Producer of alerts.
pub struct KafkaAlertSink {
    producer: FutureProducer<QuietContext>,
    brokers: String,
    topic: String,
    delivery_timeout: Duration,
}

impl std::fmt::Debug for KafkaAlertSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAlertSink").finish_non_exhaustive()
    }
}

impl KafkaAlertSink {
    /// Connects and checks that `topic` exists, creating it when it is missing (one partition,
    /// the broker's default replication) as Kafka Streams creates its topics. When the broker
    /// refuses (no permission, a policy, an old broker), the error says how to create it by
    /// hand, so a typo or a missing grant fails at start, not at the first alert.
    pub async fn connect(brokers: &str, topic: &str) -> Result<KafkaAlertSink, KafkaError> {
        Self::connect_with_timeout(brokers, topic, Duration::from_secs(30)).await
    }

    /// [`KafkaAlertSink::connect`], a send failing after `delivery_timeout` (librdkafka's
    /// `message.timeout.ms`; it retries within it).
    pub async fn connect_with_timeout(
        brokers: &str,
        topic: &str,
        delivery_timeout: Duration,
    ) -> Result<KafkaAlertSink, KafkaError> {
        let producer = Self::producer(brokers, delivery_timeout).map_err(|e| *e)?;
        let check = producer.clone();
        let topic_owned = topic.to_string();
        let metadata = tokio::task::spawn_blocking(move || {
            check.client().fetch_metadata(Some(&topic_owned), Duration::from_secs(10))
        })
        .await
        .expect("metadata task panicked")
        .map_err(|source| KafkaError::Unreachable { brokers: brokers.into(), topic: topic.into(), source })?;
        if !topic_exists(&metadata, topic) {
            // Alerts are few and keyed by fingerprint: one partition keeps each incident in order.
            ensure_topic(brokers, topic, 1, &[]).await.map_err(|refused| KafkaError::MissingTopic {
                brokers: brokers.into(),
                topic: topic.into(),
                reason: refused.cause(),
            })?;
        }
        Ok(KafkaAlertSink { producer, brokers: brokers.into(), topic: topic.into(), delivery_timeout })
    }

    fn producer(brokers: &str, delivery_timeout: Duration) -> Result<FutureProducer<QuietContext>, Box<KafkaError>> {
        client_config()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .set("client.id", "stormwatch")
            // A missing topic is created by `ensure_topic` (logged, one partition), not by the
            // broker's auto-creation on a metadata request (its defaults, silently).
            .set("allow.auto.create.topics", "false")
            // Baseline snapshots shared with the group can be large.
            .set("message.max.bytes", baselines::MAX_SNAPSHOT_BYTES.to_string())
            .create_with_context(QuietContext)
            .map_err(|source| Box::new(KafkaError::Client { brokers: brokers.into(), source }))
    }

    /// Replaces the producer with a new one (a new idempotent producer id). After a broker
    /// restart, a broker that lost the producer's sequence state may refuse it for good; held
    /// messages are re-sent by the caller.
    pub fn renew(&mut self) -> Result<(), Box<KafkaError>> {
        let producer = Self::producer(&self.brokers, self.delivery_timeout)?;
        let old = std::mem::replace(&mut self.producer, producer);
        // Dropping purges and flushes for up to 500 ms: not on the async runtime.
        std::thread::spawn(move || drop(old));
        Ok(())
    }

    /// The alert topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends alerts and waits until the broker acknowledged every one of them.
    pub async fn send(&self, alerts: &[Alert]) -> Result<(), KafkaError> {
        let payloads: Vec<(String, &Alert)> = alerts.iter().map(|a| (a.to_json(), a)).collect();
        let deliveries = payloads.iter().map(|(payload, alert)| {
            let record = FutureRecord::to(&self.topic).key(&alert.fingerprint).payload(payload);
            self.producer.send(record, self.delivery_timeout)
        });
        for (result, (_, alert)) in futures::future::join_all(deliveries).await.into_iter().zip(&payloads) {
            if let Err((source, _)) = result {
                return Err(KafkaError::Delivery { id: alert.id.clone(), topic: self.topic.clone(), source });
            }
        }
        Ok(())
    }

    /// Sends one message to another topic (the engines' window partials) and waits for the
    /// broker's acknowledgement.
    pub async fn send_to(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), KafkaError> {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        match self.producer.send(record, self.delivery_timeout).await {
            Ok(_) => Ok(()),
            Err((source, _)) => Err(KafkaError::Delivery { id: format!("from {key}"), topic: topic.into(), source }),
        }
    }

    /// Waits for in-flight messages (shutdown), at most `timeout`.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// Why a topic could not be made ready ([`ensure_topic`]).
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The admin client could not be created.
    #[error("cannot reach Kafka at {brokers}: {source}")]
    Client {
        /// The bootstrap brokers.
        brokers: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// The brokers did not answer the topic check.
    #[error("cannot reach Kafka at {brokers} to check topic {topic:?}: {source}")]
    Unreachable {
        /// The bootstrap brokers.
        brokers: String,
        /// The topic.
        topic: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// The request to create the topic failed.
    #[error("cannot create topic {topic:?} on {brokers}: {source}")]
    Request {
        /// The bootstrap brokers.
        brokers: String,
        /// The topic.
        topic: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "cannot create topic {topic:?} on {brokers}: {code}; create it yourself (kafka-topics.sh --create \
         --topic {topic} --partitions {partitions})"
    )]
    /// The broker refused to create the topic.
    Refused {
        /// The bootstrap brokers.
        brokers: String,
        /// The topic.
        topic: String,
        /// The partitions asked for.
        partitions: i32,
        /// The broker's answer.
        code: rdkafka::types::RDKafkaErrorCode,
    },
    /// The producer could not be created.
    #[error("cannot create a producer for {brokers}: {source}")]
    Producer {
        /// The bootstrap brokers.
        brokers: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// A message could not be produced.
    #[error("cannot produce to {topic}: {source}")]
    Produce {
        /// The topic.
        topic: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
}

impl TopicError {
    /// The broker's or the client's answer alone, without the advice around it.
    pub fn cause(&self) -> String {
        match self {
            TopicError::Refused { code, .. } => code.to_string(),
            TopicError::Client { source, .. }
            | TopicError::Unreachable { source, .. }
            | TopicError::Request { source, .. }
            | TopicError::Producer { source, .. }
            | TopicError::Produce { source, .. } => source.to_string(),
        }
    }
}

/// Whether `metadata` (fetched for `topic`) shows the topic with its partitions.
fn topic_exists(metadata: &rdkafka::metadata::Metadata, topic: &str) -> bool {
    metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

/// Creates a topic when it is missing (as Kafka Streams creates its own), with
/// `partitions` partitions, the broker's default replication and `settings` (e.g.
/// `cleanup.policy=compact`). A topic that already exists is left as it is.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> Result<(), TopicError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<QuietContext> = client_config()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create_with_context(QuietContext)
        .map_err(|source| TopicError::Client { brokers: brokers.into(), source })?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|source| TopicError::Unreachable { brokers: brokers.into(), topic: topic.into(), source })?;
    if topic_exists(&metadata, topic) {
        return Ok(());
    }
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    for (key, value) in settings {
        new = new.set(key, value);
    }
    let results = admin
        .create_topics(
            &[new],
            &AdminOptions::new()
                .operation_timeout(Some(Duration::from_secs(10)))
                .request_timeout(Some(Duration::from_secs(15))),
        )
        .await
        .map_err(|source| TopicError::Request { brokers: brokers.into(), topic: topic.into(), source })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(TopicError::Refused { brokers: brokers.into(), topic: name, partitions, code })
            }
        }
    }
    tracing::info!(%topic, partitions, "created topic");
    Ok(())
}

/// Creates `topic` with `partitions` partitions (replication 1) and fills it with `payloads`,
/// message `i` keyed `i`: what `stormwatch bench --kafka` measures the Kafka input on.
pub async fn create_and_fill_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    payloads: &[bytes::Bytes],
) -> Result<(), TopicError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = client_config()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|source| TopicError::Client { brokers: brokers.into(), source })?;
    let results = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .map_err(|source| TopicError::Request { brokers: brokers.into(), topic: topic.into(), source })?;
    for result in results {
        result.map_err(|(topic, code)| TopicError::Refused { brokers: brokers.into(), topic, partitions, code })?;
    }
    let producer: FutureProducer = client_config()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "16000000")
        .set("linger.ms", "5")
        .create()
        .map_err(|source| TopicError::Producer { brokers: brokers.into(), source })?;
    for chunk in payloads.chunks(256).enumerate() {
        let keys: Vec<String> = (0..chunk.1.len()).map(|i| (chunk.0 * 256 + i).to_string()).collect();
        let sends = chunk.1.iter().zip(&keys).map(|(payload, key)| {
            producer.send(FutureRecord::to(topic).key(key).payload(payload.as_ref()), Duration::from_secs(60))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(source, _)| TopicError::Produce { topic: topic.into(), source })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
