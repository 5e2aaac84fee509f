//! Golden scenario: recorded Python SDK traffic with labelled amplified requests appended
//! (`scripts/make_amplified_fixture.py`). Expected alerts live in
//! `tests/golden/flask-amplified.alerts.jsonl`; regenerate with `UPDATE_GOLDEN=1` and review
//! the diff like code.

use std::process::Command;

use serde_json::Value;

use crate::support::{assert_valid_alert, binary, repo_path};

/// Runs `stormwatch replay`, returning (alerts, stderr).
fn replay(files: &[&str]) -> (Vec<Value>, String) {
    let output = Command::new(binary())
        .arg("replay")
        .args(files.iter().map(|f| repo_path(f)))
        .env_remove("STORMWATCH_KAFKA_BROKERS")
        .output()
        .expect("run stormwatch replay");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "replay failed: {stderr}");
    let alerts = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    (alerts, stderr)
}

/// Alerts without the wall-clock field, for comparison across runs.
fn comparable(alerts: &[Value]) -> Vec<Value> {
    alerts
        .iter()
        .map(|alert| {
            let mut alert = alert.clone();
            alert.as_object_mut().unwrap().remove("detected_at");
            alert
        })
        .collect()
}

#[test]
fn normal_recorded_traffic_is_quiet() {
    let (alerts, stderr) = replay(&["tests/fixtures/python-sdk-flask-sqlite.otlp.jsonl.gz"]);
    assert!(alerts.is_empty(), "normal traffic alerted: {alerts:#?}");
    assert!(stderr.contains("replayed 7209 spans"), "{stderr}");
    assert!(stderr.contains("rejected spans 0"), "{stderr}");
}

#[test]
fn amplified_requests_are_caught_with_the_right_edges_and_exemplars() {
    let labels: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("tests/fixtures/flask-amplified.labels.json")).unwrap(),
    )
    .unwrap();
    let trace_of = |name: &str| -> String {
        labels["requests"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["trace_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (alerts, stderr) = replay(&["tests/fixtures/flask-amplified.otlp.jsonl.gz"]);
    for alert in &alerts {
        assert_valid_alert(alert);
    }
    assert_eq!(alerts.len(), 3, "{alerts:#?}\n{stderr}");

    // 1. The N+1 at 400: the author lookup under reviews, attributed to the product page.
    let n_plus_one = &alerts[0];
    assert_eq!(n_plus_one["kind"], "n_plus_one");
    assert_eq!(n_plus_one["edge"]["from"]["service"], "reviews");
    assert_eq!(n_plus_one["edge"]["to"]["kind"], "database");
    assert_eq!(n_plus_one["edge"]["to"]["operation"], "SELECT name FROM users WHERE id = ?");
    assert_eq!(n_plus_one["entry"]["operation"], "GET /product/<int:pid>");
    assert_eq!(n_plus_one["observed"], 400.0);
    assert_eq!(n_plus_one["exemplar_trace_ids"], serde_json::json!([trace_of("n_plus_one_400")]));

    // 2. The gateway's fan-out to reviews, reported at its source, not as downstream N+1s.
    let fanout = &alerts[1];
    assert_eq!(fanout["kind"], "fanout_amplification");
    assert_eq!(fanout["edge"]["from"]["service"], "gateway");
    assert_eq!(fanout["edge"]["to"]["service"], "reviews");
    assert_eq!(fanout["observed"], 60.0);
    assert_eq!(fanout["exemplar_trace_ids"], serde_json::json!([trace_of("fanout_60")]));

    // 3. The second N+1 is the same incident: folded into a summary with its count.
    let summary = &alerts[2];
    assert_eq!(summary["fingerprint"], n_plus_one["fingerprint"]);
    assert_eq!(summary["count"], 1);
    assert_eq!(summary["exemplar_trace_ids"], serde_json::json!([trace_of("n_plus_one_250")]));

    // No alert points at the normal requests.
    let normal = trace_of("normal");
    assert!(alerts.iter().all(|a| !a["exemplar_trace_ids"].as_array().unwrap().iter().any(|t| t == normal.as_str())));

    // Golden file.
    let golden_path = repo_path("tests/golden/flask-amplified.alerts.jsonl");
    let actual: String = comparable(&alerts).iter().map(|a| format!("{a}\n")).collect();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_path.parent().unwrap()).unwrap();
        std::fs::write(&golden_path, &actual).unwrap();
    }
    let golden = std::fs::read_to_string(&golden_path).expect("golden file (create it with UPDATE_GOLDEN=1)");
    assert_eq!(actual, golden, "alerts differ from {}; review and UPDATE_GOLDEN=1 if intended", golden_path.display());
}

#[test]
fn replaying_twice_gives_the_same_alerts() {
    let (first, _) = replay(&["tests/fixtures/flask-amplified.otlp.jsonl.gz"]);
    let (second, _) = replay(&["tests/fixtures/flask-amplified.otlp.jsonl.gz"]);
    assert!(!first.is_empty());
    assert_eq!(comparable(&first), comparable(&second));
}

#[test]
fn bad_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.jsonl");
    std::fs::write(&bad, "{\"resourceSpans\": []}\n{not json\n").unwrap();
    let output = Command::new(binary()).arg("replay").arg(&bad).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.jsonl:2"), "{stderr}");
    let output = Command::new(binary()).args(["replay", "does-not-exist.jsonl"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("does-not-exist.jsonl"));
}
