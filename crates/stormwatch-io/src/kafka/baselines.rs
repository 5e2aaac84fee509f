//! Learned baselines shared through Kafka: every engine of a group publishes its snapshot (the
//! `models/baselines.json` document) to the group's compacted topic `<group_id>.baselines`,
//! keyed by the engine, at every snapshot interval. Compaction keeps the newest per engine. A
//! new engine (no local snapshot) starts from the newest one instead of from zero, and an engine
//! that becomes its group's window merger takes the window baselines of the engine that merged
//! before it.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Largest snapshot shared (the topic is created with this `max.message.bytes`).
pub const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// Settings of the baselines topic when it is created.
pub const TOPIC_SETTINGS: [(&str, &str); 2] = [("cleanup.policy", "compact"), ("max.message.bytes", "67108864")];

/// Why the shared snapshots could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotsError {
    /// No consumer could be made for the brokers.
    #[error("cannot reach Kafka at {brokers}: {source}")]
    Client {
        /// The bootstrap brokers.
        brokers: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// The topic's offsets could not be read.
    #[error("cannot read the offsets of {topic:?} on {brokers}: {source}")]
    Offsets {
        /// The bootstrap brokers.
        brokers: String,
        /// The baselines topic.
        topic: String,
        /// The client's error (boxed: the error stays small).
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The topic could not be read.
    #[error("cannot read {topic:?}: {source}")]
    Read {
        /// The baselines topic.
        topic: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// The end of the topic was not reached in time.
    #[error("reading {topic:?} did not reach its end within {timeout:?}")]
    Timeout {
        /// The baselines topic.
        topic: String,
        /// How long it was read.
        timeout: Duration,
    },
}

/// The newest snapshot of every engine on `topic` (key, document), read from the beginning to
/// the end the broker reports. Empty when nothing was published yet.
pub fn read_snapshots(brokers: &str, topic: &str, timeout: Duration) -> Result<Vec<(String, Vec<u8>)>, SnapshotsError> {
    let read = |source| SnapshotsError::Read { topic: topic.to_string(), source };
    let consumer: BaseConsumer = super::client_config()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}.reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.message.max.bytes", MAX_SNAPSHOT_BYTES.to_string())
        .set("receive.message.max.bytes", (MAX_SNAPSHOT_BYTES + 1_000_000).to_string())
        .set("fetch.wait.max.ms", "20")
        .create()
        .map_err(|source| SnapshotsError::Client { brokers: brokers.to_string(), source })?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).map_err(|source| {
        SnapshotsError::Offsets { brokers: brokers.to_string(), topic: topic.to_string(), source: Box::new(source) }
    })?;
    if high <= low {
        return Ok(Vec::new());
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning).map_err(read)?;
    consumer.assign(&list).map_err(read)?;
    let deadline = Instant::now() + timeout;
    let mut newest: Vec<(String, Vec<u8>)> = Vec::new();
    while Instant::now() < deadline {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = result.map_err(read)?;
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).to_string();
        let payload = message.payload().unwrap_or_default().to_vec();
        match newest.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = payload,
            None => newest.push((key, payload)),
        }
        if message.offset() + 1 >= high {
            return Ok(newest);
        }
    }
    Err(SnapshotsError::Timeout { topic: topic.to_string(), timeout })
}
