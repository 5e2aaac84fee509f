//! The pipeline on tokio's runtime: spans in through the queue, alerts out to a real file, the
//! snapshot written at the end, admin reads answered from the published view and tuning
//! reloads handled between batches.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use stormwatch_io::admin::{AdminReads, AdminRequest};
use stormwatch_model::builder::TraceBuilder;
use stormwatch_model::Span;

use crate::admin::AdminView;

use super::*;

const SECOND: u64 = 1_000_000_000;
const START: u64 = 1_800_000_000 * SECOND;

/// A page that reads `reads` rows one query at a time, at second `i`.
fn page(i: u64, reads: usize) -> Vec<Span> {
    let mut trace = TraceBuilder::new(i, START + i * SECOND);
    let root = trace.server("shop", "GET /orders", None);
    for _ in 0..reads {
        trace.db("shop", "postgresql:orders", "SELECT * FROM items WHERE id = ?", root);
    }
    trace.build()
}

fn config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.detect.learning_min_samples = 20;
    config
}

/// Polls `done` every 10 ms, for at most a minute of a busy machine's time.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..6_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within a minute");
}

/// A read of the admin API, answered by the published view (off the engine thread, as the
/// API does).
async fn read(view: &Arc<AdminView>, request: AdminRequest) -> (u16, serde_json::Value) {
    let view = view.clone();
    let (status, body) = tokio::task::spawn_blocking(move || view.answer(&request).expect("a read")).await.unwrap();
    (status, serde_json::from_str(&body).unwrap())
}

/// Learned pages, then one that reads 400 rows: the alert reaches the file and the admin API,
/// and when the queue closes the engine drains it, flushes the open traces and writes the
/// snapshot before `finish` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_in_alerts_out_and_a_snapshot_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let alerts_file = dir.path().join("alerts.jsonl");
    let sink = AlertSink::lines(false, Some(&alerts_file)).await.unwrap();
    let view = Arc::new(AdminView::new(None, &Default::default()));
    let options = EngineOptions {
        snapshot: Some((dir.path().to_path_buf(), None)),
        view: Some(view.clone()),
        ..EngineOptions::default()
    };
    let (pipeline, queue) = Pipeline::start(config(), BaselineStore::new(10_000), sink, (64, 100_000), options);
    let mut spans = 0;
    for i in 0..200 {
        let trace = page(i, 3);
        spans += trace.len() as u64;
        queue.send_blocking(trace).unwrap();
    }
    let attack = page(200, 400);
    spans += attack.len() as u64;
    queue.send_blocking(attack).unwrap();
    // Later traffic completes the attack's trace on event time.
    for i in 201..240 {
        let trace = page(i, 3);
        spans += trace.len() as u64;
        queue.send_blocking(trace).unwrap();
    }
    let mut alerts = serde_json::Value::Null;
    for _ in 0..6_000 {
        let (status, body) = read(&view, AdminRequest::Alerts { limit: 10, kind: None, matching: None }).await;
        assert_eq!(status, 200);
        if body["alerts"].as_array().is_some_and(|a| !a.is_empty()) {
            alerts = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let alert = &alerts["alerts"][0];
    assert_eq!(alert["edge"]["to"]["service"], "postgresql:orders", "{alerts}");
    drop(queue);
    let report = pipeline.finish(None).await.unwrap();
    assert_eq!(report.spans_accepted, spans);
    assert_eq!(report.stats.traces_checked, 240);
    assert!(report.snapshot_error.is_none());
    assert!(dir.path().join(stormwatch_baseline::SNAPSHOT_FILE).exists());
    let written = std::fs::read_to_string(&alerts_file).unwrap();
    assert!(written.lines().any(|line| line.contains(alert["id"].as_str().unwrap())), "{written}");
}

/// A tuning edit is reloaded when asked (SIGHUP's flag); a bad one is refused and counted, and
/// the admin API still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuning_edits_are_reloaded_on_request_and_bad_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(crate::tuning::TUNING_FILE);
    std::fs::write(&path, "").unwrap();
    let reload = Arc::new(AtomicBool::new(false));
    let view = Arc::new(AdminView::new(Some(path.clone()), &Default::default()));
    let options = EngineOptions {
        view: Some(view.clone()),
        tuning: TuningOptions {
            watch: Some(TuningWatch::new(path.clone())),
            reload: reload.clone(),
            ..Default::default()
        },
        ..EngineOptions::default()
    };
    let sink = AlertSink::lines(false, None).await.unwrap();
    let (pipeline, queue) = Pipeline::start(config(), BaselineStore::new(100), sink, (4, 1_000), options);
    let metrics = pipeline.metrics.clone();
    std::fs::write(&path, "[detectors]\nretry_storm = \"shadow\"\n").unwrap();
    reload.store(true, Ordering::Relaxed);
    eventually("the reload", || Metrics::get(&metrics.tuning_reloads_total) >= 1).await;
    let (status, body) = read(&view, AdminRequest::Tuning).await;
    assert_eq!(status, 200);
    assert!(body["summary"].as_str().unwrap().contains("1 detectors in shadow"), "{body}");
    std::fs::write(&path, "[detectors]\nretry_storms = \"shadow\"\n").unwrap();
    reload.store(true, Ordering::Relaxed);
    eventually("the refusal", || Metrics::get(&metrics.tuning_reload_failures_total) >= 1).await;
    let (_, body) = read(&view, AdminRequest::Tuning).await;
    assert!(body["summary"].as_str().unwrap().contains("1 detectors in shadow"), "the previous tuning stays: {body}");
    let (status, _) = read(&view, AdminRequest::Baselines(BTreeMap::new())).await;
    assert_eq!(status, 200);
    drop(queue);
    pipeline.finish(None).await.unwrap();
}
