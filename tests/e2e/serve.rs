//! `stormwatch serve` against real OTLP exporters and the real broker.

use std::time::Duration;

use serde_json::Value;

use crate::support::{
    assert_valid_alert, consume_alerts_until, create_topic, http_get, http_post, kafka_bootstrap, repo_path,
    wait_until, Serve, Services, Transport,
};

/// 60 normal product requests (1-3 author lookups), a pause so they complete and train, then
/// one amplified request. Returns the amplified request's trace id.
fn learn_then_attack(services: &Services, authors: usize, catalog_calls: usize) -> String {
    for i in 0..60 {
        services.product_request(1 + i % 3, 1);
    }
    services.flush();
    // Event time must pass trace_idle (1 s) for the normal traces to complete and train.
    std::thread::sleep(Duration::from_millis(2_500));
    let trace_id = services.product_request(authors, catalog_calls);
    services.flush();
    trace_id
}

/// An attack sent over `transport`, its alert read from Kafka. Over HTTP the alert topic does
/// not exist yet: `serve` creates it at start.
async fn attack_over(transport: Transport, authors: usize, catalog_calls: usize) -> (Value, String, String) {
    let bootstrap = kafka_bootstrap();
    let created_at_start = matches!(transport, Transport::Http);
    let topic = if created_at_start {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        format!("stormwatch-alerts-created-{}-{now}", std::process::id())
    } else {
        create_topic(&bootstrap, "stormwatch-alerts-e2e").await
    };
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--kafka-brokers", &bootstrap, "--alert-topic", &topic]);
    let services = Services::new(&serve, transport, &["frontend", "catalog"]);
    let trace_id = tokio::task::block_in_place(|| learn_then_attack(&services, authors, catalog_calls));
    let alerts = consume_alerts_until(&bootstrap, &topic, Duration::from_secs(30), |alert| {
        alert["exemplar_trace_ids"].as_array().is_some_and(|ids| ids.iter().any(|id| id == trace_id.as_str()))
    })
    .await;
    // Counted as emitted only once the broker acknowledged it.
    let emitted = alerts
        .iter()
        .find(|(_, a)| {
            a["exemplar_trace_ids"].as_array().is_some_and(|ids| ids.iter().any(|id| id == trace_id.as_str()))
        })
        .map(|(_, a)| format!("stormwatch_alerts_emitted_total{{kind=\"{}\"}} 1\n", a["kind"].as_str().unwrap()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut metrics = serve.metrics();
    while emitted.as_ref().is_some_and(|line| !metrics.contains(line.as_str())) && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = serve.metrics();
    }
    if let Some(line) = &emitted {
        assert!(metrics.contains(line.as_str()), "expected {line:?} in\n{metrics}");
    }
    tokio::task::block_in_place(|| services.shutdown());
    let log = serve.log();
    serve.stop();
    if created_at_start {
        assert!(log.contains("created topic") && log.contains(&topic), "the alert topic was not created:\n{log}");
    }
    let (key, alert) = alerts
        .into_iter()
        .find(|(_, a)| {
            a["exemplar_trace_ids"].as_array().is_some_and(|ids| ids.iter().any(|id| id == trace_id.as_str()))
        })
        .unwrap_or_else(|| panic!("no alert for {trace_id} on {topic}\nmetrics:\n{metrics}\nlog:\n{log}"));
    assert_valid_alert(&alert);
    assert_eq!(key, alert["fingerprint"].as_str().unwrap(), "Kafka key is the fingerprint");
    (alert, trace_id, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_plus_one_over_grpc_reaches_kafka() {
    let (alert, trace_id, metrics) = attack_over(Transport::Grpc, 400, 1).await;
    assert_eq!(alert["kind"], "n_plus_one", "{alert:#}");
    assert_eq!(alert["edge"]["from"]["service"], "catalog");
    assert_eq!(alert["edge"]["from"]["operation"], "GET /items/{id}");
    assert_eq!(alert["edge"]["to"]["service"], "postgresql:shop");
    assert_eq!(alert["edge"]["to"]["operation"], "SELECT name FROM users WHERE id = ?");
    assert_eq!(alert["entry"]["service"], "frontend");
    assert_eq!(alert["entry"]["operation"], "GET /product/{id}");
    assert_eq!(alert["exemplar_trace_ids"][0], trace_id.as_str());
    assert_eq!(alert["observed"], 400.0);
    assert!(metrics.contains("stormwatch_spans_received_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_http_reaches_kafka() {
    let (alert, trace_id, _) = attack_over(Transport::Http, 1, 80).await;
    assert_eq!(alert["kind"], "fanout_amplification", "{alert:#}");
    assert_eq!(alert["edge"]["from"]["service"], "frontend");
    assert_eq!(alert["edge"]["to"]["service"], "catalog");
    assert_eq!(alert["edge"]["to"]["operation"], "GET /items/{id}");
    assert_eq!(alert["entry"]["operation"], "GET /product/{id}");
    assert_eq!(alert["exemplar_trace_ids"][0], trace_id.as_str());
    assert_eq!(alert["observed"], 80.0);
}

/// Learn, stop, start again: the restored baseline detects without a new learning period.
/// Alerts go to stdout and the JSONL file here (no broker), the engine's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learning_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let models_arg = models.to_str().unwrap().to_string();

    let serve = Serve::start(dir.path(), &["--models", &models_arg]);
    let services = Services::new(&serve, Transport::Grpc, &["frontend", "catalog"]);
    tokio::task::block_in_place(|| {
        for i in 0..60 {
            services.product_request(1 + i % 3, 1);
        }
        services.flush();
        std::thread::sleep(Duration::from_millis(2_500));
    });
    tokio::task::block_in_place(|| services.shutdown());
    let stdout = serve.stop();
    assert!(stdout.trim().is_empty(), "normal traffic alerted: {stdout}");
    let snapshot = std::fs::read_to_string(models.join("baselines.json")).expect("snapshot written on shutdown");
    assert!(snapshot.contains("\"format\":\"stormwatch.baselines\""));

    // A fresh process: only the restored baselines know what normal is.
    let serve = Serve::start(dir.path(), &["--models", &models_arg]);
    assert!(serve.log().contains("baselines restored"), "{}", serve.log());
    let services = Services::new(&serve, Transport::Grpc, &["frontend", "catalog"]);
    let trace_id = tokio::task::block_in_place(|| {
        let id = services.product_request(300, 1);
        services.flush();
        std::thread::sleep(Duration::from_millis(2_500));
        id
    });
    tokio::task::block_in_place(|| services.shutdown());
    let stdout = serve.stop();
    let alerts: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(alerts.len(), 1, "{stdout}");
    assert_valid_alert(&alerts[0]);
    assert_eq!(alerts[0]["kind"], "n_plus_one");
    assert_eq!(alerts[0]["exemplar_trace_ids"][0], trace_id.as_str());
    // The same alert was appended to the JSONL file.
    let file = std::fs::read_to_string(dir.path().join("stormwatch-alerts.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 1);
}

/// A corrupt snapshot stops the engine with an error naming the file, never a silent restart
/// from zero.
#[test]
fn corrupt_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::write(dir.path().join("models/baselines.json"), "{\"format\":\"stormwatch.baselines\",").unwrap();
    let output = std::process::Command::new(crate::support::binary())
        .current_dir(dir.path())
        .args(["serve", "--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("baselines.json") && stderr.contains("corrupt"), "{stderr}");
}

/// Bad configuration is refused at start, naming the field.
#[test]
fn bad_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[detect]\nratio = 0.5\n").unwrap();
    let output =
        std::process::Command::new(crate::support::binary()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("detect.ratio"));
    std::fs::write(&config, "[attribution]\ntrusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]\n").unwrap();
    let output =
        std::process::Command::new(crate::support::binary()).args(["serve", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("attribution.trusted_proxies") && stderr.contains("\"lb.internal\""), "{stderr}");
    let output =
        std::process::Command::new(crate::support::binary()).args(["serve", "--print-config"]).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("otlp_grpc = \"127.0.0.1:4317\"") && text.contains("trace_idle = \"5s\""), "{text}");
    assert!(text.contains("[attribution]") && text.contains("\"192.168.0.0/16\""), "{text}");
}

/// The README's first command: `stormwatch serve` with no arguments listens on the default
/// ports, accepts OTLP/JSON, reports it in /metrics and snapshots to ./models on Ctrl-C.
#[test]
fn serve_runs_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with_defaults(dir.path());
    let body = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web"}}]},
        "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "name":"GET /","kind":"SPAN_KIND_SERVER","startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000001000000"}]}]}]}"#;
    let (status, response) = http_post(serve.http, "/v1/traces", "application/json", body.as_bytes());
    assert!(status.contains("200"), "{status} {response}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !serve.metrics().contains("stormwatch_spans_received_total 1\n") {
        assert!(std::time::Instant::now() < deadline, "{}", serve.metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(serve.log().contains("stormwatch serving"), "{}", serve.log());
    serve.stop();
    assert!(dir.path().join("models/baselines.json").exists(), "snapshot in ./models");
    assert!(dir.path().join("stormwatch-alerts.jsonl").exists(), "alerts file in ./");
}

/// Per-edge series on /metrics: the top `server.metrics_top_edges` edges by load and as many by
/// anomaly, so at most twice that many series per edge metric; and every metric the Grafana
/// dashboard in `dashboards/` queries is one the engine exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_metrics_are_bounded_and_the_dashboard_queries_real_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let sections = "[assemble]\ntrace_idle = \"1s\"\ntrace_max_wait = \"20s\"\n\
                    [detect]\nwindow = \"1s\"\nwindow_min_requests = 5\n\
                    [server]\nmetrics_top_edges = 1\n";
    let serve = Serve::start_with(dir.path(), sections, &[]);
    let services = Services::new(&serve, Transport::Grpc, &["frontend", "catalog"]);
    let edge_lines = |name: &str| {
        let prefix = format!("{name}{{");
        serve.metrics().lines().filter(|l| l.starts_with(&prefix)).map(str::to_string).collect::<Vec<_>>()
    };
    tokio::task::block_in_place(|| {
        for round in 0..4 {
            for i in 0..20 {
                services.product_request(1 + (i + round) % 3, 1);
            }
            services.flush();
            std::thread::sleep(Duration::from_millis(600));
        }
        wait_until("per-edge series", Duration::from_secs(30), || {
            !edge_lines("stormwatch_edge_calls_per_second").is_empty()
        });
    });
    // With a top 1 of each ranking (by load, by score), at most two series per metric.
    for name in [
        "stormwatch_edge_calls_per_second",
        "stormwatch_edge_calls_per_entry",
        "stormwatch_edge_baseline_p99_per_entry",
        "stormwatch_edge_anomaly_score",
    ] {
        let lines = edge_lines(name);
        assert!((1..=2).contains(&lines.len()), "{name}: {lines:#?}");
        assert!(lines[0].contains("from_service=\"") && lines[0].contains("to_kind=\""), "{lines:?}");
    }
    let busiest = &edge_lines("stormwatch_edge_calls_per_second")[0];
    assert!(busiest.contains("to_kind=\"database\""), "the author lookups are the busiest edge: {busiest}");

    // The console's graph: services and the database, the lookups busiest, an N+1 counted on
    // its edge; bounded by limit; bad parameters named.
    tokio::task::block_in_place(|| {
        services.product_request(300, 1);
        services.flush();
        wait_until("the N+1 alert", Duration::from_secs(30), || {
            serve.metric("stormwatch_alerts_emitted_total{kind=\"n_plus_one\"} ") == 1
        });
    });
    let graph: Value = serde_json::from_str(&http_get(serve.admin, "/api/graph").expect("/api/graph")).unwrap();
    let nodes: Vec<(&str, &str)> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n["kind"].as_str().unwrap()))
        .collect();
    assert!(nodes.contains(&("catalog", "service")) && nodes.contains(&("postgresql:shop", "database")), "{graph}");
    let lookups = &graph["edges"][0];
    assert_eq!(
        (lookups["from"].as_str(), lookups["to"].as_str()),
        (Some("catalog"), Some("postgresql:shop")),
        "{graph}"
    );
    assert!(lookups["calls_per_second"].as_f64().unwrap() > 0.0 && lookups["alerts"] == 1, "{graph}");
    assert!(lookups["operations"][0].as_str().unwrap().contains("SELECT name FROM users"), "{graph}");
    assert!(graph["window_end"].as_str().is_some_and(|t| t.ends_with('Z')), "{graph}");
    let one: Value = serde_json::from_str(&http_get(serve.admin, "/api/graph?limit=1").unwrap()).unwrap();
    assert_eq!(one["edges"].as_array().unwrap().len(), 1);
    assert!(one["edges_total"].as_u64().unwrap() >= 2, "{one}");
    let focused: Value = serde_json::from_str(&http_get(serve.admin, "/api/graph?focus=POSTGRES").unwrap()).unwrap();
    let pairs: Vec<(&str, &str)> = focused["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["from"].as_str().unwrap(), e["to"].as_str().unwrap()))
        .collect();
    assert_eq!(pairs, [("catalog", "postgresql:shop")], "{focused}");
    assert_eq!(focused["edges_matching"], 1, "{focused}");
    let bad = crate::support::http_status(serve.admin, "/api/graph?limit=0");
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let bad = crate::support::http_status(serve.admin, "/api/graph?depth=2");
    assert!(bad.starts_with("HTTP/1.1 400") && bad.contains("depth"), "{bad}");

    let dashboard = std::fs::read_to_string(repo_path("dashboards/stormwatch.json")).unwrap();
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert_eq!(parsed["uid"], "stormwatch");
    let metrics = serve.metrics();
    let mut queried: Vec<&str> = dashboard
        .match_indices("stormwatch_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
        })
        .filter(|name| name.len() > "stormwatch_".len())
        .collect();
    queried.sort_unstable();
    queried.dedup();
    assert!(queried.len() >= 20, "{queried:?}");
    for name in queried {
        assert!(metrics.contains(&format!("# TYPE {name} ")), "the dashboard queries {name}, which /metrics lacks");
    }
    // The alert feed reads every partition of the default alert topic: alerts are keyed by
    // fingerprint, so they spread over the partitions.
    let panels = parsed["panels"].as_array().unwrap();
    let feed = panels.iter().find(|p| p["datasource"]["type"] == "hamedkarbasi93-kafka-datasource");
    let feed = &feed.expect("the alert-feed panel")["targets"][0];
    assert_eq!((&feed["topicName"], &feed["partition"]), (&Value::from("stormwatch.alerts"), &Value::from("all")));
    services.shutdown();
    serve.stop();
}

/// Sampled traffic from a real SDK: spans whose sampler wrote a consistent-sampling threshold
/// (`ot=th:c`, 25%) into their `tracestate` are counted as sampled on `/metrics` and in the
/// console's settings, each standing for four traces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_traces_count_the_traffic_they_stand_for() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let services = Services::sampled(&serve, Transport::Grpc, &["frontend", "catalog"], "th:c");
    tokio::task::block_in_place(|| {
        for i in 0..10 {
            services.product_request(1 + i % 3, 1);
        }
        services.flush();
        wait_until("ten sampled traces judged", Duration::from_secs(60), || {
            let metrics = serve.metrics();
            metrics.contains("stormwatch_traces_sampled_total 10\n")
                && metrics.contains("stormwatch_traces_represented_total 40\n")
        });
        let console: Value = serde_json::from_str(&http_get(serve.admin, "/api/console").unwrap()).unwrap();
        assert_eq!(console["sampling"]["sampled"], 10, "{console}");
        assert_eq!(console["sampling"]["represented"], 40, "{console}");
        services.shutdown();
    });
    serve.stop();
}

/// Consumers instrumented by the OpenTelemetry SDK, linking to their producers (batch-receive
/// style): their traces are tied back to the request that sent the messages, over OTLP/HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn consumer_traces_linking_to_their_producer_are_tied_back() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let services = Services::new(&serve, Transport::Http, &["api", "worker"]);
    tokio::task::block_in_place(|| {
        for _ in 0..3 {
            services.order_with_linked_consumers(2);
        }
        services.flush();
        wait_until("six consumer traces tied back to their orders", Duration::from_secs(60), || {
            serve.metrics().contains("stormwatch_consumer_traces_tied_total 6\n")
        });
        services.shutdown();
    });
    serve.stop();
}
