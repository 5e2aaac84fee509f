//! The alert producer against rdkafka's MockCluster: errors injected into produce requests,
//! and a broker taken down and brought back.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::Message;
use stormwatch_model::Alert;

use super::KafkaAlertSink;
use crate::spool::{test_alert as alert, AlertSpool};

/// Every alert id on `topic`, in the order read.
fn ids_on(bootstrap: &str, topic: &str) -> Vec<String> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "mock-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut ids = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline && ids.len() < 3 {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let alert: Alert = serde_json::from_slice(message.payload().unwrap()).unwrap();
            ids.push(alert.id);
        }
    }
    ids
}

/// Retriable produce errors are retried inside the delivery timeout; a broker that is down
/// fails the send, the alert waits in the spool, and once the broker is back the spooled alert
/// is delivered with a new producer. Every alert arrives exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn injected_errors_and_a_broker_outage_lose_no_alert() {
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    mock.create_topic("alerts", 3, 1).unwrap();
    let mut sink = KafkaAlertSink::connect_with_timeout(&bootstrap, "alerts", Duration::from_secs(3)).await.unwrap();

    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3]);
    sink.send(&[alert("a1")]).await.expect("retriable errors are retried");

    mock.broker_down(1).unwrap();
    let refused = sink.send(&[alert("a2")]).await;
    assert!(refused.is_err(), "a send to a broker that is down fails after the delivery timeout");
    let dir = tempfile::tempdir().unwrap();
    let mut spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
    spool.push(&[alert("a2")]).unwrap();
    sink.send(&[alert("a3")]).await.expect_err("still down");
    spool.push(&[alert("a3")]).unwrap();

    mock.broker_up(1).unwrap();
    sink.renew().unwrap();
    while let Some(batch) = spool.front().unwrap() {
        sink.send(&batch).await.expect("the broker is back");
        spool.pop().unwrap();
    }
    let mut ids = tokio::task::spawn_blocking(move || ids_on(&bootstrap, "alerts")).await.unwrap();
    ids.sort();
    assert_eq!(ids, ["a1", "a2", "a3"]);
}

/// A missing alert topic that the broker will not create (the mock cluster answers no
/// CreateTopics request) stops the start with the broker's answer and how to create it by
/// hand; the creation itself is tested against tansu (`tests/e2e/serve.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_alert_topic_the_broker_will_not_create_says_how_to_create_it() {
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let error = KafkaAlertSink::connect_with_timeout(&bootstrap, "no-such-alerts", Duration::from_secs(3))
        .await
        .expect_err("the mock cluster creates no topic");
    let message = error.to_string();
    assert!(
        message.contains("\"no-such-alerts\" does not exist")
            && message.contains("could not be created (")
            && message.contains("kafka-topics.sh --create --topic no-such-alerts")
            && message.contains("--alert-topic"),
        "{message}"
    );
}
