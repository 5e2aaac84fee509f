//! `serve --kafka-input` against the real test broker: spans as the OpenTelemetry Collector's
//! kafka exporter writes them (`otlp_json`, one export request per message), a malformed
//! message among them, alerts on the alert topic, the malformed message in the dead-letter
//! topic, and the consumer group's offsets committed to the end once everything settled.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::support::{assert_valid_alert, consume_alerts_until, create_topic, kafka_bootstrap, repo_path, Serve};

fn fixture_lines() -> Vec<String> {
    let file = std::fs::File::open(repo_path("tests/fixtures/flask-amplified.otlp.jsonl.gz")).unwrap();
    BufReader::new(flate2::read::GzDecoder::new(file)).lines().map(|l| l.unwrap()).collect()
}

/// The group's committed offsets, summed over the topic's partitions.
fn committed(bootstrap: &str, group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().unwrap();
    let mut list = TopicPartitionList::new();
    for partition in 0..3 {
        list.add_partition(topic, partition);
    }
    match consumer.committed_offsets(list, Duration::from_secs(5)) {
        Ok(list) => list
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(offset) => offset,
                _ => 0,
            })
            .sum(),
        Err(_) => 0,
    }
}

/// Produces `(key, payload)` messages to `topic` in order, each confirmed; returns how many.
async fn produce(bootstrap: &str, topic: &str, messages: &[(String, String)]) -> i64 {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    for (key, payload) in messages {
        let record = FutureRecord::to(topic).key(key.as_str()).payload(payload.as_str());
        producer.send(record, Duration::from_secs(10)).await.expect("produce");
    }
    messages.len() as i64
}

/// Fixture lines keyed as a Collector spreads export requests over partitions.
fn keyed(lines: &[String]) -> Vec<(String, String)> {
    lines.iter().enumerate().map(|(i, line)| (format!("{}", i % 7), line.clone())).collect()
}

/// The test engines' config: fast completion, short windows and throttle, Kafka in and out,
/// plus `kafka` lines (instance id, dead letters).
fn sections(bootstrap: &str, alerts: &str, input: &str, group: &str, kafka: &str) -> String {
    format!(
        "[assemble]\ntrace_idle = \"1s\"\ntrace_max_wait = \"3s\"\n\n[detect]\nwindow = \"2s\"\nthrottle = \"5s\"\n\n\
         [kafka]\nbrokers = \"{bootstrap}\"\nalert_topic = \"{alerts}\"\ninput_topic = \"{input}\"\n\
         input_encoding = \"otlp_json\"\ngroup_id = \"{group}\"\n{kafka}"
    )
}

/// `stormwatch_kafka_messages_total` of an engine.
fn messages_consumed(engine: &Serve) -> i64 {
    engine.metric("stormwatch_kafka_messages_total ") as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_from_kafka_alert_dead_letter_and_commit_once_settled() {
    let bootstrap = kafka_bootstrap();
    let input = create_topic(&bootstrap, "otlp-spans").await;
    let alerts = create_topic(&bootstrap, "alerts").await;
    let dead_letters = create_topic(&bootstrap, "dead-letters").await;
    let group = format!("stormwatch-{input}");

    // The recorded Flask traffic with three amplified requests, one message per export
    // request, keyed as the Collector keys by trace id; one message that is not OTLP at all.
    let mut messages = keyed(&fixture_lines());
    messages.insert(messages.len() / 2, ("garbage".into(), "{this is not OTLP".into()));
    let sent = produce(&bootstrap, &input, &messages).await;

    let dir = tempfile::tempdir().unwrap();
    let config = sections(&bootstrap, &alerts, &input, &group, &format!("dead_letter_topic = \"{dead_letters}\"\n"));
    let serve = Serve::start_with(dir.path(), &config, &["--kafka-input", "--models", "models"]);

    let kinds_seen = std::cell::RefCell::new(std::collections::HashSet::new());
    let seen = consume_alerts_until(&bootstrap, &alerts, Duration::from_secs(90), |alert| {
        kinds_seen.borrow_mut().insert(alert["kind"].as_str().unwrap_or_default().to_string());
        let kinds = kinds_seen.borrow();
        kinds.contains("n_plus_one") && kinds.contains("fanout_amplification")
    })
    .await;
    let kinds: Vec<&str> = seen.iter().filter_map(|(_, alert)| alert["kind"].as_str()).collect();
    assert!(kinds.contains(&"n_plus_one") && kinds.contains(&"fanout_amplification"), "{kinds:?}\n{}", serve.log());
    for (key, alert) in &seen {
        assert_valid_alert(alert);
        assert_eq!(key, alert["fingerprint"].as_str().unwrap());
    }

    // The malformed message: skipped, counted, logged with its position, dead-lettered.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("e2e-{dead_letters}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&dead_letters]).unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("a dead letter").unwrap();
    assert_eq!(letter.payload(), Some(&b"{this is not OTLP"[..]));
    let headers = letter.headers().expect("headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).to_string())
            .unwrap_or_else(|| panic!("header {name}"))
    };
    assert!(!header("stormwatch.error").is_empty());
    assert_eq!(header("stormwatch.source.topic"), input);
    assert!(serve.log().contains("malformed message skipped"), "{}", serve.log());

    // Everything settles (traces complete, windows judged, incidents summarised, alerts
    // acknowledged): the group's offsets reach the end of the topic while the engine runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let offsets = committed(&bootstrap, &group, &input);
        if offsets == sent {
            break;
        }
        assert!(Instant::now() < deadline, "committed {offsets} of {sent} messages\n{}", serve.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metrics = serve.metrics();
    assert!(metrics.contains(&format!("stormwatch_kafka_messages_total {sent}\n")), "{metrics}");
    assert!(metrics.contains("stormwatch_kafka_malformed_messages_total 1\n"), "{metrics}");
    assert!(metrics.contains("stormwatch_kafka_dead_letters_total 1\n"), "{metrics}");
    serve.stop();
}

/// `--kafka-input` without brokers, a bad encoding, or a missing topic: clear errors at start.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_input_misconfigurations_are_named() {
    let run = |args: &[&str], config: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, config).unwrap();
        let output = std::process::Command::new(crate::support::binary())
            .args(["serve", "--config", path.to_str().unwrap(), "--print-config"])
            .args(args)
            .env_remove("STORMWATCH_KAFKA_BROKERS")
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    assert!(run(&["--kafka-input"], "").contains("kafka.input (--kafka-input): needs kafka.brokers"));
    let bad = run(&["--kafka-input"], "[kafka]\nbrokers = \"127.0.0.1:1\"\ninput_encoding = \"avro\"\n");
    assert!(bad.contains("kafka.input_encoding") && bad.contains("avro"), "{bad}");

    // A topic that does not exist is named, with what to do.
    let bootstrap = kafka_bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let alerts = create_topic(&bootstrap, "alerts").await;
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("[kafka]\nbrokers = \"{bootstrap}\"\nalert_topic = \"{alerts}\"\ninput_topic = \"no-such-topic-{alerts}\"\n"),
    )
    .unwrap();
    let output = std::process::Command::new(crate::support::binary())
        .current_dir(dir.path())
        .args(["serve", "--kafka-input", "--config", config.to_str().unwrap()])
        .args(["--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("STORMWATCH_KAFKA_BROKERS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("input topic") && stderr.contains("does not exist") && stderr.contains("--partitions"),
        "{stderr}"
    );

    // Client settings reach librdkafka unchanged: a property it does not know is named by it.
    std::fs::write(
        &config,
        format!("[kafka]\nbrokers = \"{bootstrap}\"\nalert_topic = \"{alerts}\"\n\n[kafka.client]\n\"no.such.property\" = \"1\"\n"),
    )
    .unwrap();
    let output = std::process::Command::new(crate::support::binary())
        .current_dir(dir.path())
        .args(["serve", "--config", config.to_str().unwrap()])
        .args(["--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("STORMWATCH_KAFKA_BROKERS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("no.such.property"), "{stderr}");

    // ... and secrets among them are not printed.
    std::fs::write(
        &config,
        "[kafka.client]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = \"hunter2\"\n\
         \"ssl.ca.location\" = \"/etc/ca.pem\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(crate::support::binary())
        .args(["serve", "--print-config", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && !printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("\"sasl.password\" = \"<set; not shown>\"") && printed.contains("/etc/ca.pem"),
        "{printed}"
    );
}

/// kill -9 while spans are in flight: nothing that was not settled was committed, so a new
/// engine in the same group re-reads it from the last snapshot's baselines and raises the
/// alerts the killed one never acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_engine_loses_no_alert() {
    let bootstrap = kafka_bootstrap();
    let input = create_topic(&bootstrap, "otlp-spans").await;
    let alerts = create_topic(&bootstrap, "alerts").await;
    let group = format!("stormwatch-{input}");
    // First the normal traffic and, at its end, the amplified requests (the fixture's last
    // lines); the rest of the normal traffic comes after the crash.
    let lines = fixture_lines();
    let (normal, attacks) = lines.split_at(lines.len() - 3);
    let (before, after) = normal.split_at(normal.len() * 3 / 4);
    let first_lines: Vec<String> = before.iter().chain(attacks).cloned().collect();
    let first = produce(&bootstrap, &input, &keyed(&first_lines)).await;

    let dir = tempfile::tempdir().unwrap();
    let config = sections(&bootstrap, &alerts, &input, &group, "instance_id = \"engine-0\"\n");
    let mut killed = Serve::start_with(dir.path(), &config, &["--kafka-input", "--models", "models"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while messages_consumed(&killed) != first {
        assert!(Instant::now() < deadline, "the first engine did not consume:\n{}", killed.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.kill();
    let committed_at_crash = committed(&bootstrap, &group, &input);
    assert!(committed_at_crash < first, "the last messages were not settled yet, so not committed");

    let second = produce(&bootstrap, &input, &keyed(after)).await;
    let restarted = Serve::start_with(dir.path(), &config, &["--kafka-input", "--models", "models"]);
    let seen =
        consume_alerts_until(&bootstrap, &alerts, Duration::from_secs(90), |alert| alert["kind"] == "n_plus_one").await;
    assert!(
        seen.iter().any(|(_, alert)| alert["kind"] == "n_plus_one"),
        "no n_plus_one after the restart: {:?}\n{}",
        seen.iter().map(|(_, a)| a["kind"].clone()).collect::<Vec<_>>(),
        restarted.log()
    );
    // The restarted engine re-read what was not committed, then the rest.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if committed(&bootstrap, &group, &input) == first + second {
            break;
        }
        assert!(Instant::now() < deadline, "offsets did not reach the end after the restart:\n{}", restarted.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        messages_consumed(&restarted),
        first + second - committed_at_crash,
        "re-read exactly what was not committed"
    );
    restarted.stop();
}

/// The fixture re-cut as the Collector's kafka exporter with `partition_traces_by_id` writes
/// it: one message per trace, keyed by its trace id.
fn messages_per_trace() -> Vec<(String, String)> {
    use serde_json::{json, Value};
    let mut order: Vec<String> = Vec::new();
    let mut traces: std::collections::HashMap<String, Vec<Value>> = std::collections::HashMap::new();
    for line in fixture_lines() {
        let request: Value = serde_json::from_str(&line).unwrap();
        for resource in request["resourceSpans"].as_array().unwrap() {
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    let trace = span["traceId"].as_str().unwrap().to_string();
                    let one = json!({"resource": resource["resource"], "scopeSpans": [{"scope": scope["scope"], "spans": [span]}]});
                    if !traces.contains_key(&trace) {
                        order.push(trace.clone());
                    }
                    traces.entry(trace).or_default().push(one);
                }
            }
        }
    }
    order
        .into_iter()
        .map(|trace| {
            let body = json!({ "resourceSpans": traces.remove(&trace).unwrap() }).to_string();
            (trace, body)
        })
        .collect()
}

/// Three engines in one group share the partitions; one is killed with -9 mid-stream and
/// comes back under its static id. Together they raise the alerts one engine raises on the
/// same traffic (same kinds and fingerprints, every exemplar of the single engine's alerts),
/// and the group's offsets reach the end.
#[tokio::test(flavor = "multi_thread")]
async fn three_engines_in_a_group_alert_like_one_and_survive_a_kill() {
    let bootstrap = kafka_bootstrap();
    let input = create_topic(&bootstrap, "otlp-spans").await;
    let alerts = create_topic(&bootstrap, "alerts").await;
    let group = format!("stormwatch-{input}");
    let messages = messages_per_trace();
    // The amplified requests are the last traces; the first two thirds go before the kill.
    let (before, after) = messages.split_at(messages.len() * 2 / 3);
    let first = produce(&bootstrap, &input, before).await;

    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = |i: usize| sections(&bootstrap, &alerts, &input, &group, &format!("instance_id = \"engine-{i}\"\n"));
    let start = |i: usize| Serve::start_with(dirs[i].path(), &config(i), &["--kafka-input", "--models", "models"]);
    let mut engines: Vec<Serve> = (0..3).map(start).collect();
    let consumed = |engines: &[Serve]| -> i64 { engines.iter().map(messages_consumed).sum() };
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed(&engines) < first {
        assert!(Instant::now() < deadline, "the group did not consume the first messages");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for engine in &engines {
        let assigned = engine.log().lines().rfind(|l| l.contains("partitions assigned")).unwrap_or("").to_string();
        assert!(!assigned.contains("partitions=[]"), "every engine owns a partition: {assigned}");
    }
    engines[1].kill();
    let second = produce(&bootstrap, &input, after).await;
    engines[1] = start(1);

    // One engine on the same traffic, for reference: the golden replay alerts.
    let golden: Vec<serde_json::Value> =
        std::fs::read_to_string(repo_path("tests/golden/flask-amplified.alerts.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let wanted: std::collections::BTreeSet<(String, String)> = golden
        .iter()
        .map(|a| (a["kind"].as_str().unwrap().to_string(), a["fingerprint"].as_str().unwrap().to_string()))
        .collect();
    let exemplars: std::collections::BTreeSet<String> = golden
        .iter()
        .flat_map(|a| a["exemplar_trace_ids"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()))
        .collect();
    let collected = std::cell::RefCell::new((std::collections::BTreeSet::new(), std::collections::BTreeSet::new()));
    let seen = consume_alerts_until(&bootstrap, &alerts, Duration::from_secs(120), |alert| {
        let mut c = collected.borrow_mut();
        c.0.insert((alert["kind"].as_str().unwrap().to_string(), alert["fingerprint"].as_str().unwrap().to_string()));
        for t in alert["exemplar_trace_ids"].as_array().unwrap() {
            c.1.insert(t.as_str().unwrap().to_string());
        }
        wanted.is_subset(&c.0) && exemplars.is_subset(&c.1)
    })
    .await;
    let (kinds, traces) = collected.into_inner();
    let logs: Vec<String> = engines.iter().map(|e| e.log()).collect();
    assert!(wanted.is_subset(&kinds), "missing alerts: want {wanted:?}, got {kinds:?}\n{}", logs.join("\n---\n"));
    assert!(exemplars.is_subset(&traces), "missing exemplars: want {exemplars:?}, got {traces:?}");
    for (_, alert) in &seen {
        assert_valid_alert(alert);
    }
    // No kinds beyond the single engine's, but for per-trace ones judged by a wider baseline:
    // an engine that sees a third of the traffic has younger baselines, and may judge an
    // attacked request or loop against a wider one (saying what judged it) where one engine
    // had the key's own.
    for (_, alert) in &seen {
        let kind = alert["kind"].as_str().unwrap();
        if !wanted.iter().any(|(k, _)| k == kind) {
            assert!(
                ["request_amplification", "fanout_amplification", "n_plus_one"].contains(&kind)
                    && alert["baseline"]["from"].is_string(),
                "an alert beyond the single engine's: {alert}"
            );
        }
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&bootstrap, &group, &input) < first + second {
        assert!(Instant::now() < deadline, "offsets did not reach the end:\n{}", logs.join("\n---\n"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The window detectors judged the group's merged windows: the owner of input partition 0
    // received every engine's partials and merged them.
    let merged: Vec<u64> = engines.iter().map(|e| e.metric("stormwatch_windows_merged_total ")).collect();
    assert_eq!(merged.iter().filter(|m| **m > 0).count(), 1, "one merger: {merged:?}");
    for (engine, merged) in engines.iter().zip(&merged) {
        assert!(engine.metric("stormwatch_window_partials_sent_total ") > 0, "{}", engine.log());
        // Only merged windows are judged: no engine judges its own share alone.
        assert_eq!(engine.metric("stormwatch_windows_closed_total "), *merged);
    }
    for engine in engines {
        engine.stop();
    }
}

/// Messages not keyed by trace id, as rotel's Kafka exporter writes them (batches of spans
/// from any traces, each to a partition of the partitioner's choosing): every other trace's
/// spans go half to partition 0 and half to partition 1. One engine reading every partition
/// counts each such trace once as split across partitions, on `/metrics` and in its log, with
/// the remedy; the others (one partition each) are not counted. In every fourth trace's second
/// half, every other span comes with an empty resource, as rotel sends the part of a request it
/// cuts off to fill a batch: those spans are counted, told, and most are given their process's
/// service by the spans of that process that kept theirs.
#[tokio::test(flavor = "multi_thread")]
async fn traces_split_across_partitions_are_counted_and_told() {
    let bootstrap = kafka_bootstrap();
    let input = create_topic(&bootstrap, "otlp-spans").await;
    let alerts = create_topic(&bootstrap, "alerts").await;
    let group = format!("stormwatch-{input}");
    let mut messages: Vec<(i32, String)> = Vec::new();
    let (mut split, mut spans, mut lost) = (0, 0, 0);
    for (i, (_, body)) in messages_per_trace().into_iter().enumerate() {
        let request: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut parts = request["resourceSpans"].as_array().unwrap().clone();
        spans += parts.len();
        if i % 2 == 0 && parts.len() >= 2 {
            let half = parts.len() / 2;
            if i % 4 == 0 {
                for part in parts[half..].iter_mut().step_by(2) {
                    part["resource"] = serde_json::json!({ "attributes": [] });
                    lost += 1;
                }
            }
            let (first, second) = parts.split_at(half);
            messages.push((0, serde_json::json!({ "resourceSpans": first }).to_string()));
            messages.push((1, serde_json::json!({ "resourceSpans": second }).to_string()));
            split += 1;
        } else {
            messages.push(((i % 3) as i32, body));
        }
    }
    assert!(split >= 5 && lost >= 5, "the fixture has traces of several spans");
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    for (partition, payload) in &messages {
        let record = FutureRecord::<(), str>::to(&input).partition(*partition).payload(payload.as_str());
        producer.send(record, Duration::from_secs(10)).await.expect("produce");
    }

    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(dir.path(), &sections(&bootstrap, &alerts, &input, &group, ""), &["--kafka-input"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    // /metrics publishes the engine's counts every 200 ms while the engine thread works
    // through what the consumer decoded: wait for every count, then check none went past.
    while serve.metric("stormwatch_spans_processed_total ") < spans as u64
        || serve.metric("stormwatch_traces_split_across_partitions_total ") < split
        || !serve.log().contains("arrived on more than one partition")
        || serve.metric("stormwatch_spans_service_filled_total ")
            + serve.metric("stormwatch_spans_service_unknown_total ")
            < lost
    {
        assert!(Instant::now() < deadline, "{}\n{}", serve.metrics(), serve.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(serve.metric("stormwatch_traces_split_across_partitions_total "), split, "{}", serve.metrics());
    assert_eq!(serve.metric("stormwatch_kafka_malformed_messages_total "), 0);
    let filled = serve.metric("stormwatch_spans_service_filled_total ");
    assert_eq!(filled + serve.metric("stormwatch_spans_service_unknown_total "), lost, "{}", serve.metrics());
    assert!(filled * 2 >= lost, "most lost services are found in their traces: {filled} of {lost}");
    let log = serve.log();
    let told = log.lines().find(|l| l.contains("arrived on more than one partition")).unwrap();
    assert!(told.contains("partition_traces_by_id") && told.contains("example_trace"), "{told}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serve.log().contains("whose resource named no service") {
        assert!(Instant::now() < deadline, "spans without a service are told:\n{}", serve.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    serve.stop();
}
