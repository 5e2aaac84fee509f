//! Window-level detection across a consumer group, against the real test broker: the shop
//! scenario's traffic (loadgen, one `otlp_proto` export request per trace, as the Collector's
//! kafka exporter writes it) spread over three partitions and three engines raises the same
//! window-level alerts (aggregate amplification, retry storm, cache bypass: same kinds, edges
//! and windows) as one engine judging all of it (`stormwatch eval`).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use crate::support::{
    assert_valid_alert, binary, consume_alerts_until, create_topic, kafka_bootstrap, repo_path, Serve,
};

const WINDOW_KINDS: [&str; 4] = ["aggregate_amplification", "retry_storm", "cache_bypass", "correlated_storm"];

/// (kind, edge, window start) of the window-level alerts.
fn window_alerts<'a>(alerts: impl IntoIterator<Item = &'a Value>) -> BTreeSet<(String, String, String)> {
    alerts
        .into_iter()
        .filter(|a| WINDOW_KINDS.contains(&a["kind"].as_str().unwrap_or("")))
        .map(|a| (a["kind"].as_str().unwrap().to_string(), a["edge"].to_string(), a["window"]["start"].to_string()))
        .collect()
}

fn run(args: &[&str]) {
    let output = Command::new(binary()).args(args).output().expect("run stormwatch");
    assert!(output.status.success(), "stormwatch {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// Length-prefixed export requests, as `loadgen --output X.binpb` writes them.
fn requests(path: &std::path::Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut requests = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let length = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        requests.push(bytes[at + 4..at + 4 + length].to_vec());
        at += 4 + length;
    }
    requests
}

#[tokio::test(flavor = "multi_thread")]
async fn three_engines_judge_the_merged_windows_like_one_engine() {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // The shop, with 6 more minutes of ordinary traffic: event time then passes the end of the
    // last incident's throttle, so its summary is due without waiting for wall-clock time.
    let shop = std::fs::read_to_string(repo_path("tests/scenarios/shop.toml")).unwrap();
    assert!(shop.contains("duration = \"30m\""));
    let scenario = dir.path().join("shop.toml");
    std::fs::write(&scenario, shop.replacen("duration = \"30m\"", "duration = \"36m\"", 1)).unwrap();
    let (traffic, reference) = (dir.path().join("shop.binpb"), dir.path().join("reference.jsonl"));
    run(&["loadgen", scenario.to_str().unwrap(), "--output", traffic.to_str().unwrap(), "--quiet"]);
    let picture = dir.path().join("shop.svg");
    run(&[
        "eval",
        scenario.to_str().unwrap(),
        "--alerts",
        reference.to_str().unwrap(),
        "--picture",
        picture.to_str().unwrap(),
        "--quiet",
    ]);
    let reference: Vec<Value> =
        std::fs::read_to_string(&reference).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let wanted = window_alerts(&reference);
    let kinds: BTreeSet<&str> = wanted.iter().map(|(kind, _, _)| kind.as_str()).collect();
    assert!(kinds.len() >= 3, "the shop's window-level attacks, judged by one engine: {wanted:#?}");

    eprintln!("traffic and reference ready after {:?}", began.elapsed());
    let bootstrap = kafka_bootstrap();
    let input = create_topic(&bootstrap, "otlp-spans").await;
    let alerts = create_topic(&bootstrap, "alerts").await;
    let group = format!("stormwatch-{input}");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .set("message.max.bytes", "16000000")
        .create()
        .unwrap();
    let messages = requests(&traffic);
    for (chunk, requests) in messages.chunks(500).enumerate() {
        let keys: Vec<String> = (0..requests.len()).map(|i| (chunk * 500 + i).to_string()).collect();
        let sends = requests.iter().zip(&keys).map(|(payload, key)| {
            producer.send(FutureRecord::to(&input).key(key).payload(payload), Duration::from_secs(30))
        });
        for result in futures::future::join_all(sends).await {
            result.expect("produce");
        }
    }

    eprintln!("{} messages produced after {:?}", messages.len(), began.elapsed());
    // The scenario's evaluation settings (`[eval]` in shop.toml), as `eval` used them.
    let config = |i: usize| {
        format!(
            "[assemble]\ntrace_idle = \"5s\"\n\n[baseline]\nlearning_min_samples = 200\n\n[detect]\nwindow = \"30s\"\n\n\
             [kafka]\nbrokers = \"{bootstrap}\"\nalert_topic = \"{alerts}\"\ninput_topic = \"{input}\"\n\
             group_id = \"{group}\"\ninstance_id = \"engine-{i}\"\n"
        )
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let engines: Vec<Serve> = (0..3)
        .map(|i| Serve::start_with(dirs[i].path(), &config(i), &["--kafka-input", "--models", "models"]))
        .collect();

    let got = std::cell::RefCell::new(BTreeSet::new());
    let seen = consume_alerts_until(&bootstrap, &alerts, Duration::from_secs(240), |alert| {
        got.borrow_mut().extend(window_alerts([alert]));
        wanted.is_subset(&got.borrow())
    })
    .await;
    eprintln!("window alerts complete after {:?}", began.elapsed());
    let got = got.into_inner();
    let logs = || engines.iter().map(|e| e.log()).collect::<Vec<_>>().join("\n---\n");
    assert!(wanted.is_subset(&got), "missing window alerts: want {wanted:#?}\ngot {got:#?}\n{}", logs());
    for (_, alert) in &seen {
        assert_valid_alert(alert);
    }
    let merged: u64 = engines.iter().map(|e| e.metric("stormwatch_windows_merged_total ")).sum();
    let timeouts: u64 = engines.iter().map(|e| e.metric("stormwatch_window_merge_timeouts_total ")).sum();
    assert!(merged >= 50, "windows merged: {merged}");
    assert_eq!(timeouts, 0, "every window was whole");
    for engine in engines {
        engine.stop();
    }
    // Everything the group raised, once stopped: no window alert beyond one engine's.
    let everything = consume_alerts_until(&bootstrap, &alerts, Duration::from_secs(5), |_| false).await;
    assert_eq!(window_alerts(everything.iter().map(|(_, alert)| alert)), wanted, "window alerts beyond one engine's");

    // A new engine in the group, with nothing learned locally, starts from the group's shared
    // snapshots (the compacted `<group>.baselines`), window baselines included.
    let fresh = tempfile::tempdir().unwrap();
    let newcomer = Serve::start_with(fresh.path(), &config(3), &["--kafka-input", "--models", "models"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let restored = loop {
        let log = newcomer.log();
        if let Some(line) = log.lines().find(|l| l.contains("baselines restored from the group's shared snapshots")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "the new engine did not restore the shared baselines:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let number = |field: &str| -> u64 {
        let at = restored.find(&format!("{field}=")).unwrap_or_else(|| panic!("{field} in {restored}"));
        restored[at + field.len() + 1..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    assert!(number("edges") >= 10 && number("windows") >= 100, "{restored}");
    eprintln!("new engine: {restored}");
    newcomer.stop();
}
